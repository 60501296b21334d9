"""Real ZeRO runs on CPU: tools/train.py --deepspeed deepspeed_zero2 trains the demo
model (one process, gloo), saves ZeRO checkpoint folders with the EMA weights and RNG
states, resumes to the same weights as an uninterrupted run, and
tools/zero_to_state_dict.py turns a folder into a file tools/infer.py's loader reads.
ZeRO-2 and ZeRO-3 on two processes keep their EMA partitioned (ShardedEMAHook): the
same EMA and weights as the one-process ZeRO-2 run, and an exact resume; the sampling
hook draws from the gathered EMA."""
import os.path as osp
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config

pytest.importorskip('deepspeed')

from mmsora.engine.strategies import zero_model_states  # noqa: E402
from tests.launch import RUN, free_port, fresh_run_env  # noqa: E402
from tests.runner_probes import block_runs, probed_config  # noqa: E402
from tests.tiny_models import TINY_DEMO_OPTIONS  # noqa: E402
from tools import zero_to_state_dict  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')


def train(work, *args, preset='deepspeed_zero2', processes=1, options=(
        'train_dataloader.batch_size=4', 'model.denoiser.depth=1'), config=DEMO, iters=3):
    cmd = [sys.executable, '-c', RUN, osp.join(ROOT, 'tools/train.py'), str(config),
           '--deepspeed', preset, '--work-dir', str(work), *args,
           '--cfg-options', f'train_cfg.max_iters={iters}',
           'default_hooks.checkpoint.interval=2',
           'default_hooks.logger.interval=1', 'train_dataloader.num_workers=0', *options]
    env = fresh_run_env(PYTHONPATH=ROOT)
    if processes > 1:  # torchrun starts the same command (DeepSpeed's op build skipped)
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
               str(processes), '--master_port', str(free_port()), '--no-python', *cmd,
               '--launcher', 'pytorch']
    proc = subprocess.run(cmd, env=env, cwd=work.parent, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f'Iter(train) [{iters}/{iters}]' in proc.stdout + proc.stderr
    return torch.load(zero_model_states(str(work / f'iter_{iters}.pth')),
                      map_location='cpu', weights_only=False)  # DeepSpeed's own file


def test_zero2_trains_on_cpu_resumes_exactly_and_converts(tmp_path):
    work, resumed = tmp_path / 'run', tmp_path / 'resumed'
    full = train(work)  # 3 steps, checkpoints at 2 and 3
    # DeepSpeed's gradient norm is logged every step, as under DDP and FSDP
    import glob
    import json
    rows = [json.loads(line) for path in glob.glob(str(work / '*' / 'vis_data' /
                                                       'scalars.json'))
            for line in open(path)]
    norms = [row['grad_norm'] for row in rows if 'loss' in row]
    assert len(norms) == 3 and all(0 < n < float('inf') for n in norms), rows
    resumed.mkdir()
    shutil.copytree(work / 'iter_2.pth', resumed / 'iter_2.pth')
    again = train(resumed, '--resume', str(resumed / 'iter_2.pth'))  # steps 3
    # The same weights, EMA weights and RNG states as the uninterrupted run.
    for key in ('module', 'state_dict', 'ema_state_dict'):
        assert full[key].keys() == again[key].keys()
        for name, value in full[key].items():
            assert torch.equal(value, again[key][name]), (key, name)
    assert full['meta']['rng_states']['torch'].equal(again['meta']['rng_states']['torch'])

    zero_to_state_dict.main([str(work)])  # the work dir: its last checkpoint
    out = work / 'iter_3_state_dict.pth'
    # --out into a folder not made yet (it failed after the conversion, with a
    # traceback), and the same file as the default
    zero_to_state_dict.main([str(work), '--out', str(tmp_path / 'new' / 'x.pth')])
    assert [p.name for p in (tmp_path / 'new').iterdir()] == ['x.pth']  # no partial file
    from mmsora.apis.inference import load_weights
    from mmsora.registry import MODELS
    from mmsora.utils.checkpoint import load_checkpoint_file
    ckpt = load_checkpoint_file(str(out))  # weights-only, as tools/infer.py
    other = load_checkpoint_file(str(tmp_path / 'new' / 'x.pth'))['state_dict']
    assert all(torch.equal(v, other[k]) for k, v in ckpt['state_dict'].items())
    assert ckpt['meta']['iter'] == 3
    cfg = Config.fromfile(DEMO)
    cfg.model.denoiser.depth = 1
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    init = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    load_weights(model, str(out), use_ema=False)  # strict
    trained = {k: v.clone() for k, v in model.denoiser.state_dict().items()}
    load_weights(model, str(out))  # the EMA weights (EMAHook ran under DeepSpeed)
    ema = model.denoiser.state_dict()
    assert all(torch.isfinite(v).all() for v in [*trained.values(), *ema.values()])
    key = 'final_layer.linear.weight'  # adaLN-Zero: starts at zero
    # three AdamW steps moved it; the EMA (momentum 0.01) trails behind
    moved, ema_moved = (trained[key] - init[key]).norm(), (ema[key] - init[key]).norm()
    assert 0 < ema_moved < 0.5 * moved
    torch.testing.assert_close(trained['pos_embed'], init['pos_embed'])  # frozen

    # tools/infer.py's loader reads the run without conversion: the work dir's last
    # checkpoint is the folder; the EMA weights come from its client state alone,
    # the trained ones as the converter gathers them.
    from mmsora.apis.inference import init_model
    for use_ema, expected in ((True, ema), (False, trained)):
        direct, _ = init_model(str(work), use_ema=use_ema)
        for key, value in direct.denoiser.state_dict().items():
            assert torch.equal(value, expected[key]), (use_ema, key)
    with pytest.raises(FileNotFoundError, match='neither a work dir with a checkpoint'):
        load_weights(model, str(tmp_path))
    load_weights(model, str(work))  # a work dir as the checkpoint: its newest
    assert all(torch.equal(v, ema[k]) for k, v in model.denoiser.state_dict().items())
    with pytest.raises(FileNotFoundError, match='is a DeepSpeed checkpoint folder: give'):
        init_model(str(work / 'iter_3.pth'))
    under_torchrun_rank0_reads_the_folder(tmp_path, work, trained)


# Two processes of tools/test.py load a ZeRO folder: count who reads it, keep the
# weights each ends up with, then load a folder that process 0 cannot read.
TORCHRUN_LOAD = """
import sys, torch
import mmsora.utils.zero_checkpoint as zc
from mmengine.dist import get_rank
from mmsora.apis import init_model, init_sampling_processes
reads, read = [], zc.read_zero_checkpoint
zc.read_zero_checkpoint = lambda *a, **k: reads.append(a[0]) or read(*a, **k)
init_sampling_processes('pytorch', 'cpu')
model, _ = init_model(sys.argv[1], use_ema=False)
try:
    init_model(sys.argv[2], checkpoint=sys.argv[3], use_ema=False)
    error = None
except Exception as e:
    error = f'{type(e).__name__}: {e}'
torch.save(dict(reads=reads, state=model.denoiser.state_dict(), error=error),
           f'{sys.argv[4]}/rank{get_rank()}.pt')
"""


def under_torchrun_rank0_reads_the_folder(tmp_path, work, trained):
    """tools/test.py --no-ema under torchrun: process 0 gathers the folder's partitions
    and sends the weights; the others read nothing (each process converted the whole
    folder before). A folder process 0 cannot read fails every process, none waits."""
    broken = tmp_path / 'broken' / 'iter_3.pth'
    shutil.copytree(work / 'iter_3.pth', broken)
    optim = next(broken.glob('*optim_states.pt'))
    optim.write_bytes(optim.read_bytes()[:100])  # truncated
    probe, out = tmp_path / 'probe.py', tmp_path / 'ranks'
    probe.write_text(TORCHRUN_LOAD)
    out.mkdir()
    config = next(p for p in work.glob('*.py') if not p.name.startswith('zero_to'))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(free_port()), '--no-python', sys.executable, '-c', RUN,
           str(probe), str(work), str(config), str(broken), str(out)]
    proc = subprocess.run(cmd, env=fresh_run_env(PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(out / f'rank{r}.pt', weights_only=False) for r in (0, 1)]
    assert [len(r['reads']) for r in ranks] == [2, 0]
    for r in ranks:
        assert r['state'].keys() == trained.keys()
        assert all(torch.equal(v, trained[k]) for k, v in r['state'].items())
    assert 'iter_3.pth' in ranks[0]['error'] and 'process 0' not in ranks[0]['error']
    assert ranks[1]['error'].startswith('RuntimeError: process 0 could not read')


def test_converter_refuses_what_is_not_a_zero_folder(tmp_path):
    from mmsora.utils.cli import UserError
    plain = tmp_path / 'iter_1.pth'
    torch.save({'state_dict': {}}, plain)
    with pytest.raises(UserError, match='needs no conversion'):
        zero_to_state_dict.resolve_folder(str(plain))
    with pytest.raises(UserError, match='not a DeepSpeed checkpoint folder'):
        (tmp_path / 'empty').mkdir()
        zero_to_state_dict.resolve_folder(str(tmp_path / 'empty'))
    with pytest.raises(UserError, match=r'gone\.pth does not exist$'):
        zero_to_state_dict.resolve_folder(str(tmp_path / 'gone.pth'))
    # an --out that cannot be written is refused before the conversion (it failed
    # after it, with a traceback): the folder here is not read at all
    folder = tmp_path / 'iter_2.pth'
    folder.mkdir()
    (folder / 'mp_rank_00_model_states.pt').write_bytes(b'')
    for out, message in ((tmp_path, r'is a folder; give a file name'),
                         (plain / 'x.pth', r'iter_1.pth is a file, not a folder')):
        with pytest.raises(UserError, match=message):
            zero_to_state_dict.main([str(folder), '--out', str(out)])


def test_zero2_bf16_trains_with_a_float32_ema(tmp_path):
    """--deepspeed with --amp: DeepSpeed turns the module to bf16; the denoiser is
    called in its weights' dtype (it failed on its first step before) and the EMA
    stays float32 (FP32ExponentialMovingAverage)."""
    ckpt = train(tmp_path / 'run', '--amp')
    assert ckpt['ds_config']['bf16']['enabled'] is True
    floats = [v for v in ckpt['module'].values() if v.is_floating_point()]
    assert floats and {v.dtype for v in floats} == {torch.bfloat16}
    ema = [v for v in ckpt['state_dict'].values() if v.is_floating_point()]  # EMA weights
    assert {v.dtype for v in ema} == {torch.float32}


def test_zero2_with_accumulation_averages_once_per_optimizer_step(tmp_path):
    """Two micro-batches per step (accumulative_counts -> DeepSpeed's
    gradient_accumulation_steps): the EMA of the fp32 masters (ZeroPartitionEMA)
    copies them after the first optimizer step (iteration 2) and moves once after the
    second (iteration 4), not at every micro-batch."""
    config = tmp_path / 'momentum.py'
    config.write_text(f"_base_ = ['{DEMO}']\ncustom_hooks = [dict(type='EMAHook', "
                      "momentum=0.3, update_buffers=True, priority='ABOVE_NORMAL')]\n")
    work = tmp_path / 'run'
    last = train(work, config=config, iters=4, options=(
        'train_dataloader.batch_size=4', 'model.denoiser.depth=1',
        'optim_wrapper.accumulative_counts=2'))
    assert last['ds_config']['gradient_accumulation_steps'] == 2
    first = torch.load(zero_model_states(str(work / 'iter_2.pth')), map_location='cpu',
                       weights_only=False)
    assert int(last['ema_state_dict']['steps']) == 2
    name = 'denoiser.final_layer.linear.weight'
    assert not torch.equal(first['module'][name], last['module'][name])
    for name, value in last['module'].items():
        if value.is_floating_point():
            expected = first['module'][name].lerp(value, 0.3)
            assert torch.equal(last['state_dict'][name], expected), name


def converted(work):
    zero_to_state_dict.main([str(work)])
    return torch.load(work / 'iter_3_state_dict.pth', map_location='cpu', weights_only=False)


def test_zero3_two_processes_keep_the_ema_and_resume_exactly(tmp_path):
    """Before ShardedEMAHook, EMAHook under ZeRO-3 stopped at the first step (its copy
    of the module holds empty placeholders) and no hook state was saved. Now: the
    same global batch on one ZeRO-2 process, two ZeRO-2 processes (each averaging
    half the master weights, ZeroPartitionEMA) and two ZeRO-3 processes gives the
    same EMA and weights; a ZeRO-3 run resumed from step 2 (RNG-driven draws) ends bit
    for bit as the uninterrupted one, EMA and RNG states included."""
    same = [*TINY_DEMO_OPTIONS, 'model.train_noise_seed=0']
    train(tmp_path / 'zero2', options=same)
    train(tmp_path / 'zero2x2', processes=2, options=same)
    client = train(tmp_path / 'zero3', preset='deepspeed_zero3', processes=2, options=same)
    assert len(client['meta']['rng_states']) == 2  # both ranks' streams
    one = converted(tmp_path / 'zero2')
    for other in ('zero2x2', 'zero3'):
        two = converted(tmp_path / other)
        for key in ('state_dict', 'ema_state_dict'):  # EMA, trained (fp32 masters)
            assert one[key].keys() == two[key].keys()
            for name, value in one[key].items():
                torch.testing.assert_close(two[key][name], value, rtol=1e-5, atol=1e-6,
                                           msg=f'{other} {key} {name}')
        name = 'denoiser.final_layer.linear.weight'
        assert (two['ema_state_dict']['module.' + name]
                - two['state_dict'][name]).abs().max() > 1e-3

    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    train(full, preset='deepspeed_zero3', processes=2, options=TINY_DEMO_OPTIONS)
    resumed.mkdir()
    shutil.copytree(full / 'iter_2.pth', resumed / 'iter_2.pth')
    train(resumed, '--resume', str(resumed / 'iter_2.pth'), preset='deepspeed_zero3',
          processes=2, options=TINY_DEMO_OPTIONS)
    a, b = converted(full), converted(resumed)
    for key in ('state_dict', 'ema_state_dict'):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    for rank in (0, 1):  # each process's own EMA partitions and RNG streams
        file = f'iter_3.pth/zero_pp_rank_{rank}_mp_rank_00_model_states.pt'
        ca, cb = (torch.load(w / file, map_location='cpu', weights_only=False)
                  for w in (full, resumed))
        for x, y in zip(ca['ema_state_dict']['local_average'],
                        cb['ema_state_dict']['local_average']):
            assert torch.equal(x, y)
        if rank == 0:
            assert len(ca['meta']['rng_states']) == 2
            for x, y in zip(ca['meta']['rng_states'], cb['meta']['rng_states']):
                assert torch.equal(x['torch'], y['torch'])


def test_zero3_one_process_resumes_exactly(tmp_path):
    """ZeRO-3 on one process: a run resumed from step 2 ends bit for bit as the
    uninterrupted one, EMA included. The two-process tests need two devices on a GPU
    machine; this one runs where there is one GPU (tools/gpu_benchmarks.py's
    gpu_tests) as on the CPU."""
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    train(full, preset='deepspeed_zero3', options=TINY_DEMO_OPTIONS)
    resumed.mkdir()
    shutil.copytree(full / 'iter_2.pth', resumed / 'iter_2.pth')
    train(resumed, '--resume', str(resumed / 'iter_2.pth'), preset='deepspeed_zero3',
          options=TINY_DEMO_OPTIONS)
    a, b = converted(full), converted(resumed)
    for key in ('state_dict', 'ema_state_dict'):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    name = 'denoiser.final_layer.linear.weight'  # the EMA trails the trained weights
    assert (a['ema_state_dict']['module.' + name] - a['state_dict'][name]).abs().max() > 1e-3


def hooked(tmp_path, *hooks):
    """The demo with an EMA, RNGStateHook and ``hooks``."""
    config = tmp_path / f'hooked_{len(hooks)}.py'
    config.write_text(
        f"_base_ = ['{DEMO}']\ncustom_hooks = [dict(type='EMAHook', momentum=0.01, "
        "update_buffers=True, priority='ABOVE_NORMAL'), dict(type='RNGStateHook'), "
        + ''.join(f'{hook}, ' for hook in hooks) + "]\n")
    return config


def test_zero2_bf16_two_processes_sample_the_partitioned_ema_and_resume_exactly(tmp_path):
    """ZeRO-2 in bf16 on two processes: each holds half of the float32 EMA
    (ZeroPartitionEMA); SampleVisualizationHook gathers it into the module on every
    process and samples on rank 0 (a collective: it hung or failed before if a rank
    skipped it); a run resumed from step 2 ends bit for bit as the uninterrupted one,
    EMA included, and the EMA stays float32 after sampling."""
    config = hooked(tmp_path, "dict(type='SampleVisualizationHook', interval=2, "
                    "num_samples=2, labels=[1], sample_cfg=dict(num_steps=2))")
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    client = train(full, '--amp', processes=2, options=TINY_DEMO_OPTIONS, config=config)
    assert {v.dtype for v in client['module'].values() if v.is_floating_point()} == {
        torch.bfloat16}
    # mmengine's layout: the EMA weights (float32) in state_dict, the module's trained
    # ones under ema_state_dict's module.* (the fp32 masters: zero_to_state_dict.py)
    assert {v.dtype for v in client['state_dict'].values() if v.is_floating_point()} == {
        torch.float32}
    assert {v.dtype for k, v in client['ema_state_dict'].items()
            if k.startswith('module.') and v.is_floating_point()} == {torch.bfloat16}
    pngs = list(full.glob('*/vis_data/vis_image/samples_2.png'))
    assert len(pngs) == 1  # rank 0 sampled the gathered EMA at step 2
    resumed.mkdir()
    shutil.copytree(full / 'iter_2.pth', resumed / 'iter_2.pth')
    train(resumed, '--amp', '--resume', str(resumed / 'iter_2.pth'), processes=2,
          options=TINY_DEMO_OPTIONS, config=config)
    a, b = converted(full), converted(resumed)
    for key in ('state_dict', 'ema_state_dict'):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_zero3_samples_the_partitioned_ema_like_one_process(tmp_path):
    """SampleVisualizationHook under ZeRO-3 (it was refused): every process samples
    through the engine's forward (ShardedSampler), which gathers each module's
    partitions as it runs, with the EMA swapped into the partitions; rank 0 logs. The
    pictures are those one ZeRO-2 process draws from its gathered EMA (to 1/255: the
    weights agree to 1e-5), and training goes on bit for bit as without the hook."""
    same = [*TINY_DEMO_OPTIONS, 'model.train_noise_seed=0']
    sampling = hooked(tmp_path, "dict(type='SampleVisualizationHook', interval=2, "
                      "num_samples=4, sample_cfg=dict(num_steps=5))")
    one, two, plain = tmp_path / 'one', tmp_path / 'two', tmp_path / 'plain'
    train(one, options=same, config=sampling)
    # Every parameter partitioned and gathered as its module runs: DeepSpeed keeps
    # those under 1e5 elements whole by default, which is all of this tiny model's.
    zero3 = [*same, 'strategy.config.zero_optimization.stage3_param_persistence_threshold=0']
    train(two, preset='deepspeed_zero3', processes=2, options=zero3, config=sampling)
    train(plain, preset='deepspeed_zero3', processes=2, options=zero3,
          config=hooked(tmp_path))
    from PIL import Image
    for step in (2, 3):  # every 2nd iteration and at the end
        found = [list(work.glob(f'*/vis_data/vis_image/samples_{step}.png'))
                 for work in (one, two)]
        assert [len(f) for f in found] == [1, 1], found  # rank 0 logs
        a, b = (np.asarray(Image.open(f[0]), dtype=np.int16) for f in found)
        assert a.shape == b.shape and a.std() > 10, (a.shape, a.std())
        assert np.abs(a - b).max() <= 1, np.abs(a - b).max()
    with_hook, without = converted(two), converted(plain)
    for key in ('state_dict', 'ema_state_dict'):
        assert with_hook[key].keys() == without[key].keys()
        for name, value in without[key].items():
            assert torch.equal(with_hook[key][name], value), (key, name)


def test_zero3_with_activation_checkpointing_trains_the_same(tmp_path):
    """ZeRO-3 gathers each module's partitions as it runs: inside the checkpointed
    block, and again for the recomputation in the backward. With every block
    checkpointed, and selectively (only the elementwise ops recomputed), two ZeRO-3
    processes end with the weights and EMA of two without checkpointing, bit for bit.
    Each process's blocks run twice per step (the forward and the recomputation; once
    without checkpointing), counted by tests.runner_probes' BlockRuns hook."""
    config = probed_config(DEMO, tmp_path / 'config')
    zero3 = [*TINY_DEMO_OPTIONS, 'model.train_noise_seed=0',
             'strategy.config.zero_optimization.stage3_param_persistence_threshold=0']
    train(tmp_path / 'plain', preset='deepspeed_zero3', processes=2, options=zero3,
          config=config)
    plain = converted(tmp_path / 'plain')
    steps_blocks = 3 * 2  # 3 steps of the 2-block DiT
    assert block_runs(tmp_path / 'plain', 2) == [
        dict(block_runs=steps_blocks, checkpoint_calls=0, selective=0)] * 2
    for option, value in (('selective', 'selective'), ('True', True)):
        train(tmp_path / option, preset='deepspeed_zero3', processes=2,
              options=[*zero3, f'model.denoiser.grad_checkpointing={option}'], config=config)
        dumped = Config.fromfile(tmp_path / option / 'dit_tiny2_1xb32_1500_shapes16.py')
        assert dumped.model.denoiser.grad_checkpointing == value
        assert block_runs(tmp_path / option, 2) == [dict(
            block_runs=2 * steps_blocks, checkpoint_calls=steps_blocks,
            selective=steps_blocks if value == 'selective' else 0)] * 2, option
        checkpointed = converted(tmp_path / option)
        for key in ('state_dict', 'ema_state_dict'):
            assert plain[key].keys() == checkpointed[key].keys()
            for name, value in plain[key].items():
                assert torch.equal(value, checkpointed[key][name]), (option, key, name)


def test_zero1_folder_gives_the_frozen_weights_too(tmp_path):
    """ZeRO-1 checkpoints hold no fragments of frozen parameters (DeepSpeed writes them
    from stage 2 on): the trained weights of a folder (--no-ema, the converter) took
    DiT's frozen pos_embed from nowhere and failed to load ("Missing key(s)")."""
    from mmsora.apis.inference import init_model
    work = tmp_path / 'run'
    client = train(work, preset='deepspeed_zero1')
    model, _ = init_model(str(work), use_ema=False)  # strict
    assert torch.equal(model.denoiser.pos_embed, client['module']['denoiser.pos_embed'])
    assert converted(work)['meta']['iter'] == 3


class _Payload:
    """Stands for an object whose unpickling could run code."""


def test_a_folder_with_other_objects_is_refused_before_unpickling(tmp_path):
    """tools/infer.py reads a work dir's last checkpoint implicitly: a DeepSpeed
    folder goes through the weights-only loader like every other checkpoint."""
    import pickle

    from mmsora.utils.zero_checkpoint import read_zero_checkpoint
    folder = tmp_path / 'iter_1.pth'
    folder.mkdir()
    torch.save({'module': {}, 'state_dict': {}, 'ema_state_dict': {'x': _Payload()}},
               folder / 'mp_rank_00_model_states.pt')
    with pytest.raises(pickle.UnpicklingError, match='refuses to unpickle'):
        read_zero_checkpoint(str(folder), trained=False)
