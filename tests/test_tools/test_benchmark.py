"""tools/benchmark.py times tools/train.py's training step of ours and diffusers' DiT
and derives its throughput figures from the counted FLOPs."""
import json
import os.path as osp
import sys

import pytest

from mmsora.models import DiT, dit_flops, dit_preset
from tools import benchmark

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

SMALL = ['--model', 'DiT-S/8', '--input-size', '16', '--num-classes', '10',
         '--batch-size', '2', '--steps', '2', '--warmup', '1']


# In-process runs keep glibc's freed memory on the CPU: recorded, not made (conftest).
pytestmark = pytest.mark.usefixtures('malloc_calls')


def test_every_model_gets_the_cpu_malloc_train_sets(malloc_calls):
    benchmark._setup(benchmark.parse_args(SMALL))
    assert malloc_calls == [1]
    benchmark._setup(benchmark.parse_args(SMALL + ['--default-malloc']))
    assert malloc_calls == [1]


@pytest.mark.parametrize('gpu', [True, False])
def test_the_device_is_the_gpu_when_there_is_one(monkeypatch, gpu):
    monkeypatch.setattr(benchmark.torch.cuda, 'is_available', lambda: gpu)
    assert benchmark.parse_args(SMALL).device == ('cuda' if gpu else 'cpu')
    assert benchmark.parse_args(SMALL + ['--device', 'cpu']).device == 'cpu'


@pytest.mark.parametrize('impl', ['ours', 'diffusers'])
def test_worker_times_steps_and_counts_flops(impl):
    result = benchmark.run_worker(benchmark.parse_args(SMALL + ['--worker', impl]))
    assert result['impl'] == impl and result['step_ms'] > 0
    assert result['samples_per_s'] == pytest.approx(2 / (result['step_ms'] / 1e3))
    arch = dit_preset('DiT-S/8', input_size=16, num_classes=10)
    # The counted forward FLOPs are the DiT paper's MACs times 2; diffusers' DiT adds
    # its per-block timestep embedder MLP (256 -> D -> D) to that.
    macs = dit_flops(**arch)
    if impl == 'diffusers':
        d = arch['hidden_size']
        macs += arch['depth'] * (256 * d + d * d)
    assert result['fwd_gflops_per_sample'] == pytest.approx(2 * macs / 1e9, rel=1e-12)
    # A training step is 3 forward passes.
    assert result['tflops_per_s'] == pytest.approx(
        3 * result['fwd_gflops_per_sample'] * 1e9 * 2 / (result['step_ms'] / 1e3) / 1e12)
    assert result['tokens_per_s'] == pytest.approx(result['samples_per_s'] * (16 // 8) ** 2)
    assert result['peak_mem_mb'] > result['rss_before_model_mb'] > 0
    assert 'mfu' not in result  # no peak known for a CPU
    # ours is the original DiT (one shared conditioning embedder); diffusers gives every
    # block its own, so it has more parameters at the same size.
    original = sum(p.numel() for p in DiT(**arch).parameters()) / 1e6
    if impl == 'ours':
        assert result['params_m'] == pytest.approx(original)
    else:
        assert result['params_m'] > original


def test_step_is_the_runners_train_step(monkeypatch):
    """A step is LatentDiffusion.train_step with the config's optimizer wrapper (DiT's
    objective: MSE + VLB with learned sigma), then the EMA hook, then .item()."""
    from mmengine.model import BaseModel
    calls = []
    train_step = BaseModel.train_step

    def recording(self, data, optim_wrapper):
        log_vars = train_step(self, data, optim_wrapper)
        calls.append((sorted(data), data['latents'].shape, type(optim_wrapper).__name__,
                      sorted(log_vars)))
        return log_vars
    monkeypatch.setattr(BaseModel, 'train_step', recording)
    model, step, info = benchmark.make_step(benchmark.parse_args(SMALL), 'ours')
    loss = step()
    assert calls == [(['labels', 'latents'], (2, 4, 16, 16), 'OptimWrapper',
                      ['loss', 'mse', 'vb'])]
    assert isinstance(loss, float) and loss > 0 and step.ema is None
    # guarded as the default runtime guards every step: the gradient norm was logged
    from mmengine.logging import MessageHub
    hooks = benchmark.step_hooks(benchmark.benchmark_config(benchmark.parse_args(SMALL)))
    assert [type(h).__name__ for h in hooks] == ['LossGuardHook']
    assert MessageHub.get_current_instance().get_scalar('train/grad_norm').current() > 0
    assert info['tokens_per_sample'] == 4


def test_a_step_with_accumulation_is_every_micro_batch_and_one_optimizer_step(monkeypatch):
    """optim_wrapper.accumulative_counts=3: a timed step runs three micro-batches (three
    Runner iterations) and the optimizer once; samples/s counts all three."""
    from mmengine.optim import OptimWrapper
    stepped = []
    optimizer_step = OptimWrapper.step
    monkeypatch.setattr(OptimWrapper, 'step', lambda self, **kw: (
        stepped.append(True), optimizer_step(self, **kw))[1])
    args = benchmark.parse_args(SMALL + ['--ema', '0.5', '--cfg-options',
                                         'optim_wrapper.accumulative_counts=3'])
    model, step, info = benchmark.make_step(args, 'ours')
    assert info['micro_batches'] == 3
    step()
    step()
    assert len(stepped) == 2  # once per step, after its third micro-batch
    assert step.ema.steps == 2  # the EMA moved once per optimizer step too
    rates = benchmark.throughput(args, info, 1.0)
    assert rates['samples_per_s'] == 3 * 2


def test_config_optimizer_wrapper_clips(tmp_path):
    """The config's optim_wrapper is the one stepped: SGD with lr 1 moves the weights
    by exactly the clipped gradient's norm."""
    import torch
    cfg_file = tmp_path / 'clip.py'
    cfg_file.write_text(TINY + "optim_wrapper = dict(optimizer=dict(type='SGD', lr=1.0), "
                        'clip_grad=dict(max_norm=1e-3))\n')
    args = benchmark.parse_args([str(cfg_file), '--batch-size', '2'])
    model, step, _ = benchmark.make_step(args, 'ours')
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    step()
    moved = torch.stack([(p.detach() - b).norm() for p, b in zip(trainable, before)])
    assert moved.norm().item() == pytest.approx(1e-3, rel=1e-3)


TINY = ("model = dict(type='LatentDiffusion', denoiser=dict(type='DiT', input_size=8, "
        "patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, "
        "num_classes=10), latent_shape=(4, 8, 8), num_classes=10)\n")


def test_ema_follows_the_config_and_the_options(tmp_path):
    """The config's EMA hook averages after every step (mmengine's rule: the first step
    copies, then lerp by the momentum); --ema sets its momentum, --no-ema drops it."""
    import torch
    cfg_file = tmp_path / 'ema.py'
    cfg_file.write_text(TINY + "custom_hooks = [dict(type='FP32EMAHook', momentum=0.5), "
                        "dict(type='CheckpointHook')]\n")
    base = [str(cfg_file), '--batch-size', '2']
    model, step, _ = benchmark.make_step(benchmark.parse_args(base), 'ours')
    assert type(step.ema).__name__ == 'FP32ExponentialMovingAverage'
    assert step.ema.momentum == 0.5
    model, step, _ = benchmark.make_step(benchmark.parse_args(base + ['--ema', '0.25']),
                                         'ours')
    step()
    first = [p.detach().clone() for p in model.parameters()]
    step()
    for avg, a, b in zip(step.ema.module.parameters(), first, model.parameters()):
        torch.testing.assert_close(avg, a.lerp(b.detach(), 0.25))
    assert benchmark.make_step(benchmark.parse_args(base + ['--no-ema']),
                               'ours')[1].ema is None
    # --ema adds an EMAHook where the config has none
    added = benchmark.benchmark_config(benchmark.parse_args(SMALL + ['--ema', '1e-4']))
    assert [h['type'] for h in added.custom_hooks] == ['EMAHook']


def test_precision_is_train_py_amp(tmp_path):
    """--precision bf16 on the CPU: tools/train.py --amp's AutocastOptimWrapper."""
    args = benchmark.parse_args(SMALL + ['--precision', 'bf16'])
    cfg = benchmark.benchmark_config(args)
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    assert (cfg.optim_wrapper.dtype, cfg.optim_wrapper.device_type) == ('bfloat16', 'cpu')
    model, step, info = benchmark.make_step(args, 'ours')
    assert step() > 0
    # A config's own mixed precision (the 24 GB video preset's AmpOptimWrapper) is the
    # default, moved to this device; --precision fp32 takes it off.
    preset = osp.join(ROOT, 'configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_24gb.py')
    args = benchmark.parse_args([preset])
    cfg = benchmark.benchmark_config(args)
    assert args.precision == 'bf16' and cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    cfg = benchmark.benchmark_config(benchmark.parse_args([preset, '--precision', 'fp32']))
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'dtype' not in cfg.optim_wrapper
    assert 'loss_scale' not in cfg.optim_wrapper
    # and its step runs as the preset has it (EMAHook with a priority, checkpointing,
    # 16-frame latents), narrowed to a small width
    args = benchmark.parse_args([preset, '--batch-size', '1', '--cfg-options',
                                 'model.denoiser.depth=2', 'model.denoiser.hidden_size=32',
                                 'model.denoiser.num_heads=2'])
    model, step, info = benchmark.make_step(args, 'ours')
    assert step() > 0 and step.ema is not None and model.denoiser.grad_checkpointing
    assert info['tokens_per_sample'] == 16 * 16 * 16


def test_text_video_config_and_compile_hook(tmp_path):
    """A text-conditioned VideoDiT config: text embeddings in the batch (no text
    encoder is built), tokens counted over frames, FLOPs counted; the config's
    CompileDenoiserHook compiles the denoiser before the first step."""
    config = tmp_path / 'video.py'
    config.write_text(f"_base_ = ['{ROOT}/configs/video_dit/video_dit_tiny4_1xb2_t5_"
                      "two_clips.py']\ncustom_hooks = [dict(type='CompileDenoiserHook', "
                      "backend='eager')]\n")
    config = str(config)
    args = benchmark.parse_args([config, '--batch-size', '2'])
    model, step, info = benchmark.make_step(args, 'ours')
    assert model.text_encoder is None
    assert model.denoiser._compiled_call_impl is not None
    assert info['tokens_per_sample'] == 4 * (32 // 4) ** 2
    assert info['fwd_flops_per_sample'] > 0 and info['attn_kernel'] == 'sdpa'
    assert step() > 0
    result = benchmark.throughput(
        benchmark.parse_args([config, '--batch-size', '2', '--peak-tflops', '2']),
        info, 0.5)
    assert result['tokens_per_s'] == 2 * 4 * 64 / 0.5
    assert result['mfu'] == pytest.approx(result['tflops_per_s'] / 2)


def test_driver_runs_both_in_their_own_processes(tmp_path, capsys):
    # --threads applies in the worker processes only; --json's folder is made.
    out_json = tmp_path / 'new' / 'results' / 'b.json'
    benchmark.main(SMALL + ['--baseline', 'diffusers', '--threads', '1',
                            '--json', str(out_json)])
    out = capsys.readouterr().out
    assert 'ratio ours/diffusers' in out
    data = json.loads(out_json.read_text())
    ours, base = data['results']
    assert (ours['impl'], base['impl']) == ('ours', 'diffusers')
    assert data['setup']['batch_size'] == 2 and data['setup']['threads'] == 1
    assert ours['params_m'] < base['params_m']


def test_profile_writes_each_models_operators(tmp_path):
    """--profile: after its timed steps each model's process profiles two more and
    writes the operators by their own host time (and device time on a GPU)."""
    from mmsora.utils.cli import UserError
    out = tmp_path / 'profile'
    benchmark.main(SMALL + ['--baseline', 'diffusers', '--threads', '1', '--profile',
                            str(out), '--json', str(tmp_path / 'b.json')])
    results = json.loads((tmp_path / 'b.json').read_text())['results']
    for r in results:
        assert r['profile'] == str(out / f"{r['impl']}.txt")
        text = open(r['profile']).read()
        assert text.startswith('2 steps profiled on cpu')
        host = text.split('== by self time on the host')[1]
        assert 'aten::addmm' in host and '_scaled_dot_product' in host  # both use SDPA
    with pytest.raises(UserError, match='--profile looks at one model in its own process'):
        benchmark.main(SMALL + ['--baseline', 'diffusers', '--interleave', '--profile',
                                str(out)])
    (tmp_path / 'file').write_text('x')
    with pytest.raises(UserError, match='exists and is not a directory'):
        benchmark.main(SMALL + ['--profile', str(tmp_path / 'file')])


def test_a_hook_given_built(tmp_path, monkeypatch):
    """A config may hold its EMA hook built: the step runs that hook, and --ema, which
    would have to rewrite its settings, refuses with one line."""
    from mmengine.hooks import EMAHook

    import mmsora.utils.config_loading
    from mmsora.utils.cli import UserError
    hook = EMAHook(momentum=0.5)
    cfg = benchmark.benchmark_config(benchmark.parse_args(SMALL))
    cfg.custom_hooks = [hook]
    assert hook in benchmark.step_hooks(cfg)
    cfg_file = tmp_path / 'built.py'
    cfg_file.write_text(TINY)
    loaded = mmsora.utils.config_loading.load_config(str(cfg_file))
    loaded.custom_hooks = [hook]
    monkeypatch.setattr(mmsora.utils.config_loading, 'load_config', lambda path: loaded)
    with pytest.raises(UserError, match='gives its EMA hook built'):
        benchmark.benchmark_config(benchmark.parse_args([str(cfg_file), '--ema', '1e-4']))


def test_bad_input_is_one_line(tmp_path):
    from mmsora.utils.cli import UserError
    with pytest.raises(UserError, match='--memory-budget caps CUDA memory'):
        benchmark.main(SMALL + ['--memory-budget', '24'])
    with pytest.raises(UserError, match='config file not found'):
        benchmark.main([str(tmp_path / 'missing.py')])
    cfg_file = tmp_path / 'hook.py'
    cfg_file.write_text(TINY + "custom_hooks = [dict(type='EMAHok')]\n")
    with pytest.raises(UserError, match="unknown type 'EMAHok' in the hook registry; did "
                                        'you mean EMAHook'):
        benchmark.main([str(cfg_file)])
    for extra, message in [
            (['--steps', '0'], '--steps must be >= 1, got 0'),
            (['--repeats', '0'], '--repeats must be >= 1'),
            (['--batch-size', '0'], '--batch-size must be >= 1'),
            (['--threads', '0'], '--threads must be >= 1'),
            (['--input-size', '0'], '--input-size must be >= 1'),
            (['--ema', '2'], r'--ema is a momentum in \(0, 1\)'),
            (['--peak-tflops', '-1'], '--peak-tflops must be > 0'),
            (['--model', 'DiT-Q/2'], "--model 'DiT-Q/2': choose from DiT-S/2, "),
            (['--interleave'], '--interleave alternates two models\' steps: add --baseline'),
            (['--json', str(cfg_file / 'x.json')], 'hook.py is a file, not a folder'),
            (['--json', str(tmp_path)], 'is a folder; give a file name')]:
        with pytest.raises(UserError, match=message):
            benchmark.main(SMALL + extra)


def test_baseline_diffusers_needs_a_dit_before_anything_is_timed(monkeypatch):
    """--baseline diffusers on a VideoDiT config timed ours for a while, then failed in
    the baseline's worker and discarded ours. Refused before any model is built."""
    from mmsora.utils.cli import UserError
    monkeypatch.setattr(benchmark, 'spawn', lambda *a: pytest.fail('a model was timed'))
    monkeypatch.setattr(benchmark, 'make_step', lambda *a: pytest.fail('a model was built'))
    preset = osp.join(ROOT, 'configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_24gb.py')
    argv = [preset, '--batch-size', '1', '--baseline', 'diffusers', '--cfg-options',
            'model.denoiser.depth=2', 'model.denoiser.hidden_size=32',
            'model.denoiser.num_heads=2']
    for extra in ([], ['--interleave']):
        with pytest.raises(UserError, match="--baseline diffusers times diffusers' DiT at "
                           "the size of a DiT denoiser; this config's model.denoiser is a "
                           'VideoDiT: drop --baseline, or give a DiT config'):
            benchmark.main(argv + extra)


def test_a_workers_own_error_is_the_only_line():
    """A mistake only the worker process finds (a size its denoiser refuses) is the one
    line the user reads, not followed by "benchmark worker for ours failed"."""
    import subprocess
    result = subprocess.run(
        [sys.executable, 'tools/benchmark.py', *SMALL, '--input-size', '33'], cwd=ROOT,
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        'error: input_size 33x33 is not a multiple of patch_size 8: set patch_size to one '
        'that divides it (1, 3 or 11), or input_size to multiples of 8 (32x32)']


@pytest.mark.parametrize('option, value', [('1', 1), ('selective', 'selective')])
def test_config_denoiser_and_checkpointing(tmp_path, option, value):
    cfg_file = tmp_path / 'tiny.py'
    cfg_file.write_text(TINY)
    args = benchmark.parse_args([str(cfg_file), '--batch-size', '2', '--steps', '1',
                                 '--warmup', '1', '--grad-checkpointing', option,
                                 '--worker', 'ours'])
    assert benchmark.benchmark_config(args).model.denoiser.grad_checkpointing == value
    result = benchmark.run_worker(args)
    assert result['params_m'] < 0.1 and result['loss'] > 0
    assert result['cpu_ms'] > 0 and 'page_faults' in result  # counted: test_usage_...


def test_interleave_takes_turns_in_one_process(tmp_path, capsys, monkeypatch):
    order = []
    make_step = benchmark.make_step

    def recording(args, impl):  # the real step, noting who ran
        model, step, info = make_step(args, impl)

        def noted():
            order.append(impl)
            return step()
        return model, noted, info
    monkeypatch.setattr(benchmark, 'make_step', recording)
    benchmark.main(SMALL + ['--baseline', 'diffusers', '--interleave', '--steps', '3',
                            '--json', str(tmp_path / 'i.json')])
    out = capsys.readouterr().out
    # ABBA: one warm-up pair, then three timed ones
    assert order == ['ours', 'diffusers', 'diffusers', 'ours', 'ours', 'diffusers',
                     'diffusers', 'ours']
    assert 'samples/s ratio ours/diffusers: best' in out and 'step pairs' in out
    record = json.loads((tmp_path / 'i.json').read_text())
    times = record['step_ms']
    assert len(times['ours']) == len(times['diffusers']) == 3
    assert all(v > 0 for v in times['ours'] + times['diffusers'])
    assert all(v > 0 for v in record['cpu_ms']['ours'] + record['cpu_ms']['diffusers'])
    assert all(isinstance(v, int) and v >= 0 for v in record['page_faults']['ours'])
    assert 'minor page faults' in out


USAGE_PROBE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import benchmark
faults, cpu = benchmark._usage()
block = torch.ones(64 * 2 ** 20, dtype=torch.uint8)
spin = 0
while benchmark._usage()[1] - cpu < 0.2:
    spin += 1
end_faults, end_cpu = benchmark._usage()
print(end_faults - faults, end_cpu - cpu, int(block.sum()))
"""


def test_usage_counts_fresh_pages_and_cpu_time():
    """benchmark.py's page_faults and cpu_ms columns: first touches of fresh memory
    and the process's CPU time. In a fresh process, as benchmark.py's workers are: in
    a long-lived one, the allocator may hand back pages it already touched."""
    import subprocess
    nbytes, page = 64 * 2 ** 20, 4096
    try:  # with transparent huge pages always on, a fault maps 2 MiB
        with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
            page = 2 ** 21 if '[always]' in f.read() else page
    except OSError:
        pass
    # A fresh mapping (above glibc's mmap threshold), written page by page, by torch's
    # CPU allocator as in the steps benchmark.py times (numpy would advise huge pages
    # for it: 32 faults).
    out = subprocess.run([sys.executable, '-c', USAGE_PROBE, osp.join(ROOT, 'tools')],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # (the CPU time is process_time's: the probe ends once it has grown by 0.2 s)
    faults, _, total = out.stdout.split()
    assert int(faults) >= 0.5 * nbytes / page and int(total) == nbytes
