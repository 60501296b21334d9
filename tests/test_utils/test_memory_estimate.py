"""The memory estimate of a training step (fake tensors) against torch's CPU allocator
on the same step with real tensors, its parts against closed forms, the batch search
against brute force, and tools/estimate_memory.py."""
import json
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config

from mmsora.utils.cli import UserError
from mmsora.utils.memory_estimate import (GiB, LiveTensorBytes, estimate_training_memory,
                                          largest_batch, largest_fitting_batch,
                                          usable_bytes)
from tools import estimate_memory

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

DIT = dict(type='DiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
           depth=2, num_heads=2, num_classes=10)


def tiny_cfg(ema=True, accumulate=1, **denoiser):
    size = denoiser.get('input_size', DIT['input_size'])
    return Config(dict(
        model=dict(type='LatentDiffusion', denoiser=dict(DIT, **denoiser),
                   diffusion=dict(type='GaussianDiffusion', learn_sigma=True),
                   latent_shape=(4, size, size), num_classes=10),
        optim_wrapper=dict(type='OptimWrapper', accumulative_counts=accumulate,
                           optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0)),
        custom_hooks=[dict(type='EMAHook', momentum=1e-4)] if ema else [],
        train_dataloader=dict(batch_size=4)))


def allocator_peak(fn, tmp_path):
    """Peak bytes torch's CPU allocator held while ``fn`` ran, above what it held
    before (the profiler's memory events: each has the allocator's running total)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    prof.export_chrome_trace(str(tmp_path / 'trace.json'))
    events = [e['args'] for e in json.loads((tmp_path / 'trace.json').read_text())[
        'traceEvents'] if e.get('name') == '[memory]' and e['args']['Device Type'] == 0]
    before = events[0]['Total Allocated'] - events[0]['Bytes']
    return max(e['Total Allocated'] for e in events) - before


def frozen_stable_cascade_toy():
    """The Stable Cascade toy with the spatial part frozen, as the lite config trains
    (whose sizing is this count)."""
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py'))
    cfg.model.denoiser.freeze_spatial = True
    return cfg


CASES = {
    'dit_fp32_ema': (tiny_cfg(), {}),
    'dit_bf16_checkpointed': (tiny_cfg(ema=False, hidden_size=64, input_size=16, depth=4),
                              dict(amp='bf16', grad_checkpointing=True)),
    'dit_fp32_ema_accumulated': (tiny_cfg(accumulate=2), {}),
    'sit_demo': (Config.fromfile(osp.join(ROOT, 'configs/sit/sit_tiny2_1xb32_1500_shapes16.py')),
                 {}),
    'video_text': (Config.fromfile(osp.join(
        ROOT, 'configs/video_dit/video_dit_tiny4_1xb2_t5_two_clips.py')), dict(text_len=7)),
    'stable_cascade_frozen': (frozen_stable_cascade_toy(),
                              dict(amp='bf16', grad_checkpointing=True)),
    # selective checkpointing: the products kept across the forward, the rest recomputed
    'dit_bf16_selective': (tiny_cfg(ema=False, hidden_size=64, input_size=16, depth=4),
                           dict(amp='bf16', grad_checkpointing='selective')),
    'stable_cascade_selective': (frozen_stable_cascade_toy(),
                                 dict(amp='bf16', grad_checkpointing='selective')),
}


@pytest.mark.parametrize('case', list(CASES))
def test_fake_estimate_is_the_cpu_allocators_peak(case, tmp_path):
    cfg, options = CASES[case]
    fake = estimate_training_memory(cfg, 3, **options)
    real = {}
    peak = allocator_peak(lambda: real.setdefault(
        'estimate', estimate_training_memory(cfg, 3, fake=False, **options)), tmp_path)
    assert fake == real['estimate']  # fake tensors count what real ones allocate
    # ... which is what the allocator saw, but for buffers kernels allocate inside
    # themselves (at most ~110 KiB, seen in bf16 attention backward on the CPU).
    assert 0 <= peak - fake.peak <= 128 * 1024 + 0.001 * peak
    assert fake.peak > fake.weights + fake.ema + fake.optimizer_states + fake.step / 2



def test_estimate_is_a_real_accumulated_runs_peak(tmp_path):
    """tools/train.py with two micro-batches per step, every tensor storage counted
    (tests/count_train_memory.py): the second micro-batch runs its forward over the
    first one's gradients, which the estimate counts; its peak is the run's."""
    import subprocess

    from tests.launch import fresh_run_env
    from tests.memory_runs import DEMO, FUSED, demo_cfg, demo_model
    options = ['train_dataloader.batch_size=8', 'optim_wrapper.optimizer.fused=True',
               'optim_wrapper.accumulative_counts=2']
    cmd = [sys.executable, osp.join(ROOT, 'tests/count_train_memory.py'), DEMO,
           '--work-dir', str(tmp_path / 'work'), '--cfg-options', 'train_cfg.max_iters=4',
           'default_hooks.checkpoint.interval=100',
           'default_hooks.checkpoint.save_last=False', 'train_dataloader.num_workers=0',
           *options]
    proc = subprocess.run(cmd, env=fresh_run_env(COUNT_MEMORY_OUT=str(tmp_path / 'm'),
                                                 PYTHONPATH=ROOT),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads((tmp_path / 'm.0.json').read_text())
    cfg = demo_cfg(8, FUSED, accumulate=2)
    est = estimate_training_memory(cfg, 8)
    real = max(r['peak'] for r in records)  # iteration 4: the 2nd micro-batch of step 2
    assert records[3]['peak'] == real
    assert 0 <= real - est.peak <= 1024, (records, est)  # a few scalars
    # Against one micro-batch per step: the peak grows by the float32 gradients (but
    # for the few a plain step already holds at its peak, early in the backward).
    grads = sum(4 * p.numel() for p in demo_model().parameters() if p.requires_grad)
    cfg.optim_wrapper.accumulative_counts = 1
    without = estimate_training_memory(cfg, 8)
    assert 0.95 * grads <= est.peak - without.peak <= grads


def test_parts_are_the_closed_forms():
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    cfg = tiny_cfg()
    est = estimate_training_memory(cfg, 4)
    model = MODELS.build(dict(cfg.model))
    weight_bytes = sum(t.numel() * t.element_size()
                       for t in list(model.parameters()) + list(model.buffers()))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert est.weights == weight_bytes
    assert est.ema == weight_bytes  # EMAHook's averaged copy
    # fused AdamW: exp_avg and exp_avg_sq per trainable parameter, and a float32 step
    assert est.optimizer_states == sum(2 * p.numel() * 4 + 4 for p in trainable)
    assert estimate_training_memory(tiny_cfg(ema=False), 4).ema == 0


@pytest.mark.parametrize('hook', ['FP32EMAHook', 'ShardedEMAHook', 'mmengine.EMAHook',
                                  'class', 'built'])
def test_every_ema_hook_is_counted(hook):
    """The averaged copy is counted whichever EMA hook the config names: mmengine's
    EMAHook, one of its subclasses, by scope, the class itself (a pure-Python config)
    or the hook built."""
    from mmengine.hooks import EMAHook
    cfg = tiny_cfg()
    if hook == 'built':
        cfg.custom_hooks = [EMAHook(momentum=1e-4, update_buffers=True)]
    else:
        cfg.custom_hooks = [dict(type=EMAHook if hook == 'class' else hook, momentum=1e-4)]
    assert estimate_training_memory(cfg, 4).ema == estimate_training_memory(
        tiny_cfg(), 4).ema > 0


@pytest.mark.parametrize('kind, message', [
    ('EMAHok', "unknown type 'EMAHok' in the hook registry; did you mean EMAHook"),
    (print, 'is neither a hook class nor the name of one')])
def test_a_wrong_hook_type_is_a_one_line_error(kind, message):
    cfg = tiny_cfg()
    cfg.custom_hooks = [dict(type=kind, momentum=1e-4)]
    with pytest.raises(UserError, match=message):
        estimate_training_memory(cfg, 4)


def test_memory_follows_batch_precision_and_checkpointing():
    cfg = tiny_cfg(depth=4)
    fp32 = {n: estimate_training_memory(cfg, n) for n in (2, 4, 8)}
    assert fp32[2].step < fp32[4].step < fp32[8].step
    assert fp32[2].weights == fp32[8].weights
    bf16 = estimate_training_memory(cfg, 8, amp='bf16')
    assert bf16.step < fp32[8].step
    checkpointed = estimate_training_memory(cfg, 8, grad_checkpointing=True)
    assert checkpointed.step < fp32[8].step
    with pytest.raises(ValueError, match='amp must be'):
        estimate_training_memory(cfg, 2, amp='int8')


class LossStep(torch.nn.Module):
    """The estimator's step as a module, so that DDP can wrap it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        m = self.model
        return m.diffusion.loss(m.denoiser, x, model_kwargs=dict(y=y))['loss'].mean()


def test_ddp_adds_one_bucket_buffer_of_the_weights(tmp_path):
    import torch.distributed as dist

    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    cfg = tiny_cfg(ema=False, hidden_size=64, input_size=16)
    est = estimate_training_memory(cfg, 3, gpus=2)
    trainable = [p for p in MODELS.build(dict(cfg.model)).parameters() if p.requires_grad]
    assert est.ddp_buckets == sum(4 * p.numel() for p in trainable)  # not pos_embed
    assert est.peak == estimate_training_memory(cfg, 3).peak + est.ddp_buckets
    # A real DDP step (one gloo process: DDP's reducer allocates the same buckets).
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0,
                            world_size=1)
    try:
        with LiveTensorBytes() as mem:
            model = MODELS.build(dict(cfg.model)).train()
            step = torch.nn.parallel.DistributedDataParallel(LossStep(model))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0,
                                          fused=True)
            x, y = torch.randn(3, 4, 16, 16), torch.zeros(3, dtype=torch.long)
            for _ in range(2):
                step(x, y).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        dist.destroy_process_group()
    assert mem.peak == pytest.approx(est.peak, rel=0.01)


def test_live_bytes_follow_frees():
    with LiveTensorBytes() as mem:
        a = torch.empty(1000, dtype=torch.float32)
        b = a.view(10, 100)  # a view: same storage
        c = torch.empty(500, dtype=torch.float16)
        assert mem.current == 4000 + 1000
        del a, b
        assert mem.current == 1000
        d = c.add_(1)  # in place: same storage
        assert mem.current == 1000 and mem.peak == 5000
        del c, d
        assert mem.current == 0
        # meta tensors have shapes only (DeepSpeed keeps meta copies of the weights)
        e = torch.zeros(10 ** 6, device='meta')
        assert mem.current == 0 and mem.peak == 5000 and e.numel() == 10 ** 6


@pytest.mark.parametrize('limit', [1, 2, 7, 64])
def test_largest_batch_matches_brute_force(limit):
    for threshold in range(0, limit + 3):
        for guess in (None, 1, 2, threshold, threshold + 1, max(threshold - 1, 1), 5 * limit):
            calls = []

            def fits_at(n):
                calls.append(n)
                assert 1 <= n <= limit
                return n <= threshold
            assert largest_batch(fits_at, limit, guess) == min(threshold, limit)
            if guess == threshold and 0 < threshold < limit:
                assert len(calls) == 2  # a right guess settles it at once


def test_largest_fitting_batch_on_a_curved_peak():
    # Fixed part, then a slope that steepens with the batch (as checkpointed models').
    def peak_at(n):
        return 10 * GiB + n * GiB // 4 + (n * n * GiB) // 400
    for budget in (10.3, 12, 21.6, 72):
        best = largest_fitting_batch(peak_at, budget * GiB, limit=500)
        assert peak_at(best) <= budget * GiB < peak_at(best + 1)
    assert largest_fitting_batch(peak_at, 9 * GiB) == 0
    assert largest_fitting_batch(peak_at, 1e6 * GiB, limit=32) == 32
    assert usable_bytes(24, 0.1) == pytest.approx(21.6 * GiB)


def test_tool_prints_the_table_and_the_largest_batch(tmp_path, capsys):
    cfg_file = tmp_path / 'tiny.py'
    tiny_cfg().dump(str(cfg_file))
    out = estimate_memory.main([str(cfg_file), '--batch-size', '2', '4',
                                '--grad-checkpointing', '0', '1', 'selective',
                                '--budget-gb', '0.001',
                                '--headroom', '0', '--max-batch', '64', '--measure', 'cpu',
                                '--json', str(tmp_path / 'm.json')])
    text = capsys.readouterr().out
    assert 'every block' in text and 'selective' in text and 'largest batch per GPU' in text
    assert len(out['estimates']) == 6
    for row in out['estimates']:  # the real step on the CPU counts the same
        assert row['measured'] == row['peak']
    peak = {(row['grad_checkpointing'], row['batch_size']): row['peak']
            for row in out['estimates']}
    assert peak[1, 4] < peak['selective', 4] < peak[0, 4]
    assert json.loads((tmp_path / 'm.json').read_text())['largest_batch'] == out['largest_batch']
    budget = 0.001 * GiB  # 1 MiB: a small batch of this tiny model
    for row in out['largest_batch']:
        k, n = row['grad_checkpointing'], row['batch_size']
        assert 1 <= n < 64
        assert estimate_training_memory(tiny_cfg(), n, grad_checkpointing=k).peak <= budget
        assert estimate_training_memory(tiny_cfg(), n + 1, grad_checkpointing=k).peak > budget


def test_tool_refuses_bad_input(tmp_path, capsys):
    with pytest.raises(UserError, match='config file not found'):
        estimate_memory.main([str(tmp_path / 'missing.py')])
    cfg_file = tmp_path / 'tiny.py'
    tiny_cfg().dump(str(cfg_file))
    with pytest.raises(UserError, match='headroom'):
        estimate_memory.main([str(cfg_file), '--headroom', '1.5'])
    with pytest.raises(UserError, match='batch sizes must be'):
        estimate_memory.main([str(cfg_file), '--batch-size', '0'])
    with pytest.raises(UserError, match='--gpus must be'):
        estimate_memory.main([str(cfg_file), '--gpus', '0'])
    with pytest.raises(UserError, match='--budget-gb: a card holds more than 0 GiB, got -1'):
        estimate_memory.main([str(cfg_file), '--budget-gb', '24', '-1'])
    with pytest.raises(UserError, match='tiny.py is a file, not a folder'):  # before counting
        estimate_memory.main([str(cfg_file), '--json', str(cfg_file / 'e.json')])
    for bad in ('-1', 'selected'):
        with pytest.raises(SystemExit):  # argparse's usage error
            estimate_memory.main([str(cfg_file), '--grad-checkpointing', bad])
        assert "expected 'selective' or a block interval K >= 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match='no CUDA device'):
            estimate_memory.main([str(cfg_file), '--measure', 'cuda'])
    # A config's own DeepSpeed strategy is counted (tests/test_utils/test_zero_memory.py,
    # test_zero3_memory.py); stage 0 (plain DeepSpeed data parallelism) is not modelled.
    for stage, expected in ((0, 'ZeRO stage 0 is not modelled'), (2, None)):
        ds = Config(dict(tiny_cfg().to_dict(), strategy=dict(
            type='DeepSpeedStrategy', config=dict(zero_optimization=dict(stage=stage)))))
        ds.dump(str(tmp_path / 'ds.py'))
        if expected:
            with pytest.raises(UserError, match=expected):
                estimate_memory.main([str(tmp_path / 'ds.py')])
        else:
            out = estimate_memory.main([str(tmp_path / 'ds.py'), '--gpus', '2'])
            # DeepSpeed's defaults: one float32 bucket of 5e8 elements (no overlap_comm)
            assert 2e9 / 2 ** 30 < out['estimates'][0]['zero_buffers'] < 2.001e9 / 2 ** 30


# card preset -> (card GiB, its checkpointing, the settings that recompute less, none
# of which may fit). Selective checkpointing would fit 48 GB too, but its step was
# slower than every 2nd block's on an H200 (docs/benchmarks.md, "GPU").
PRESETS = {'24gb': (24, True, (2, 'selective')), '48gb': (48, 2, (False,)),
           '80gb': (80, False, ())}


@pytest.mark.parametrize('name', list(PRESETS))
def test_card_presets_fit_their_cards_with_the_least_recompute(name):
    from mmsora.engine.strategies import amp_dtype_of
    card, checkpointing, lighter = PRESETS[name]
    cfg = Config.fromfile(osp.join(
        ROOT, f'configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_{name}.py'))
    assert amp_dtype_of(cfg.optim_wrapper) == 'bfloat16'
    assert cfg.model.denoiser.grad_checkpointing == checkpointing
    n = cfg.train_dataloader.batch_size
    assert n == 5  # Latte's recipe, whatever the card
    # With DDP (8 GPUs), leaving 10% of the card free.
    assert estimate_training_memory(cfg, n, amp='bf16', gpus=8).peak <= usable_bytes(card)
    for other in lighter:  # less recomputation would not fit
        assert estimate_training_memory(cfg, n, amp='bf16', gpus=8,
                                        grad_checkpointing=other).peak > usable_bytes(card)


def test_text_stdit_24gb_preset_fits_with_zero2_and_not_with_ddp():
    from mmsora.engine.strategies import apply_strategy
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256_24gb.py'))
    n, card = cfg.train_dataloader.batch_size, usable_bytes(24)
    assert n == 5
    zero2 = cfg.strategy.config.to_dict()
    assert zero2['zero_optimization']['stage'] == 2
    fits = estimate_training_memory(cfg, n, amp='bf16', gpus=8, deepspeed=zero2)
    assert fits.peak <= card
    # less recomputation (every 2nd block, or selective: STDiT's three attentions keep
    # mostly products), or DDP even at one clip per GPU, would not fit
    for lighter in (2, 'selective'):
        assert estimate_training_memory(cfg, n, amp='bf16', gpus=8, deepspeed=zero2,
                                        grad_checkpointing=lighter).peak > card
    assert estimate_training_memory(cfg, 1, amp='bf16', gpus=8).peak > card
    # tools/train.py runs it through DeepSpeed in bf16, 5 clips per GPU
    cfg.launcher = 'pytorch'
    ds = apply_strategy(cfg).strategy['config']
    assert ds['bf16']['enabled'] and ds['train_micro_batch_size_per_gpu'] == 5


def test_480p_config_fits_80gb_with_ddp_and_smaller_cards_with_zero2():
    """The 480p, 5 s config (63,600 tokens per clip) at its 2 clips per GPU, every
    block checkpointed, on 8 GPUs: DDP fits an 80 GB card and not a 48 GB one;
    ZeRO-2 fits 48 GB, and 24 GB at one clip (docs/distributed.md, "480p")."""
    from mmsora.engine.strategies import load_strategy
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/video_dit/video_dit_xl2_8xb2_t5_480p_5s.py'))
    n = cfg.train_dataloader.batch_size
    assert n == 2 and cfg.model.denoiser.grad_checkpointing is True
    ddp = estimate_training_memory(cfg, n, amp='bf16', gpus=8).peak
    assert usable_bytes(48) < ddp <= usable_bytes(80)
    zero2 = load_strategy('deepspeed_zero2')['config']
    assert usable_bytes(24) < estimate_training_memory(
        cfg, n, amp='bf16', gpus=8, deepspeed=zero2).peak <= usable_bytes(48)
    assert estimate_training_memory(cfg, 1, amp='bf16', gpus=8,
                                    deepspeed=zero2).peak <= usable_bytes(24)


def test_480p_config_fits_one_24gb_card_with_zero2_offload(tmp_path):
    """docs/distributed.md's one-card 480p command: DeepSpeed ZeRO-2 with the optimizer
    offloaded, 2 clips per micro-batch, 8 micro-batches per step; the card keeps the
    bf16 module, the buckets and the activations."""
    from mmsora.engine.strategies import load_strategy
    from tools.train import build_train_config, parse_args
    path = osp.join(ROOT, 'configs/video_dit/video_dit_xl2_8xb2_t5_480p_5s.py')
    cfg = build_train_config(parse_args([
        path, '--work-dir', str(tmp_path), '--deepspeed', 'deepspeed_zero2_offload',
        '--cfg-options', 'global_batch_size=16', 'optim_wrapper.accumulative_counts=8',
        'train_cfg.max_iters=8000000']))
    ds = cfg.strategy.config
    assert ds['bf16']['enabled'] and ds['train_micro_batch_size_per_gpu'] == 2
    assert ds['gradient_accumulation_steps'] == 8
    assert ds['zero_optimization']['offload_optimizer']['device'] == 'cpu'
    cfg = Config.fromfile(path)
    cfg.optim_wrapper.accumulative_counts = 8
    offload = load_strategy('deepspeed_zero2_offload')['config']
    est = estimate_training_memory(cfg, 2, amp='bf16', gpus=1, deepspeed=offload)
    # 20.05 GiB of host memory without accumulation; ZeRO-2 accumulates on the host
    assert est.peak <= usable_bytes(24) and est.host > 21.5 * GiB


def test_stable_cascade_lite_fits_one_24gb_card():
    """The lite config's sizing (its comments, docs/stable_cascade.md): bf16 autocast,
    spatial part frozen, every block recomputed, one clip: within a 24 GB card."""
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/stable_cascade/stable_cascade_video_lite_1xb1_100k_clips1024.py'))
    assert cfg.model.denoiser.freeze_spatial and cfg.model.denoiser.grad_checkpointing
    n = cfg.train_dataloader.batch_size
    assert n == 1
    est = estimate_training_memory(cfg, n, amp='bf16')
    assert est.ema == 0  # no EMAHook: it would copy all 1.33 B parameters
    # the largest batches the docs give: 3 clips on a 24 GB card, 8 on a 48 GB one
    for card, largest in ((24, 3), (48, 8)):
        assert estimate_training_memory(cfg, largest, amp='bf16').peak <= usable_bytes(card)
        assert estimate_training_memory(cfg, largest + 1, amp='bf16').peak > usable_bytes(card)


def test_tool_splits_a_global_batch_as_train_does(tmp_path, capsys):
    """A config's global_batch_size (or --cfg-options global_batch_size=40) is divided
    over --gpus and the accumulation steps, as tools/train.py divides it: the tool
    counted train_dataloader.batch_size instead (5: 30 GiB where train.py trained 10
    per GPU, 46 GiB)."""
    cfg_file = tmp_path / 'tiny.py'
    tiny_cfg().dump(str(cfg_file))  # train_dataloader.batch_size=4

    def counted(*options):
        out = estimate_memory.main([str(cfg_file), *options])
        return [row['batch_size'] for row in out['estimates']], out, capsys.readouterr().out

    assert counted('--gpus', '4')[0] == [4]
    batches, out, text = counted('--gpus', '4', '--cfg-options', 'global_batch_size=40')
    assert batches == [10]
    assert text.splitlines()[0] == ('global_batch_size=40: a batch of 10 per GPU on each '
                                    'of --gpus 4, as tools/train.py trains it')
    assert out['estimates'][0]['peak'] == counted('--gpus', '4', '--batch-size', '10')[1][
        'estimates'][0]['peak']
    from mmsora.engine.strategies import apply_global_batch  # train.py's own split
    cfg = Config(dict(tiny_cfg(accumulate=2).to_dict(), global_batch_size=40))
    assert apply_global_batch(cfg, 4) == 5
    cfg.dump(str(cfg_file))
    batches, _, text = counted('--gpus', '4')
    assert batches == [5] and text.startswith(
        'global_batch_size=40: a batch of 5 per GPU on each of --gpus 4 x 2 accumulation '
        'steps, as tools/train.py trains it\n')
    assert counted('--gpus', '1')[0] == [20]
    batches, _, text = counted('--gpus', '4', '--batch-size', '3', '7')  # asked for: counted
    assert batches == [3, 7] and text.startswith(
        "note: --batch-size 3 7 is counted, not the config's global_batch_size=40\n")
    with pytest.raises(UserError, match=r'global_batch_size=40 does not split evenly over 3 '
                       r'process\(es\) x 2 accumulation step\(s\)'):
        counted('--gpus', '3')


def test_a_model_reading_a_tensor_value_is_named_in_one_line(tmp_path):
    """A denoiser of one's own reading a value in forward (float(t.mean())) ended in a
    fake-tensor traceback (DataDependentOutputException): the line is named, and a
    real step's measurement suggested (walk-through w)."""
    from mmsora.models.denoisers.dit import DiT
    from mmsora.registry import MODELS

    class ReadsValueDiT(DiT):
        def forward(self, x, t, y):
            if float(t.float().mean()) > 1e9:  # a value read: no fake tensor has one
                t = t * 0
            return super().forward(x, t, y)

    MODELS.register_module(name='ReadsValueDiT', module=ReadsValueDiT, force=True)
    try:
        cfg = tiny_cfg()
        cfg.model.denoiser.type = 'ReadsValueDiT'
        cfg_file = tmp_path / 'reads.py'
        cfg.dump(str(cfg_file))
        with pytest.raises(UserError, match=r'^the step is counted on fake tensors \(shapes, '
                                            r'no values\), and the model reads a tensor\'s '
                                            rf'value at {__file__}:\d+ \(DataDependentOutput'
                                            r'Exception\): measure a real step instead'):
            estimate_memory.main([str(cfg_file), '--batch-size', '2'])
    finally:
        MODELS._module_dict.pop('ReadsValueDiT', None)
