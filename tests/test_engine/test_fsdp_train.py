"""Real FSDP runs on CPU: ``tools/dist_train.sh CONFIG 2 --fsdp`` (two gloo processes,
each block its own FSDP unit) trains like one plain process on the same global batch
(losses, clipped gradient norm, weights and the sharded EMA), resumes to exactly the
weights, EMA, optimizer state and RNG-driven draws of an uninterrupted run, and writes
checkpoints that tools/infer.py's loader reads."""
import glob
import json
import os.path as osp
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config

from tests.launch import counted_train_run, free_port, run_tool
from tests.runner_probes import block_runs, probed_config
from tests.tiny_models import TINY_DEMO_OPTIONS

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
TINY = [
    *TINY_DEMO_OPTIONS, 'default_hooks.checkpoint.interval=2',
    # below the gradient norms of these steps (0.6-0.7): clipping acts on every step
    'optim_wrapper.clip_grad.max_norm=0.3',
]


def tiny_cfg():
    cfg = Config.fromfile(DEMO)
    cfg.model.denoiser.update(hidden_size=32, depth=2, num_heads=2, input_size=8,
                              class_dropout_prob=0.5)
    cfg.model.latent_shape = (3, 8, 8)
    return cfg


@pytest.fixture(scope='module')
def start_weights(tmp_path_factory):
    """Both runs start from these: DiT's initial weights with adaLN-Zero's zeros
    perturbed, so that every weight gets a gradient from the first step."""
    from mmsora.registry import MODELS
    torch.manual_seed(123)
    model = MODELS.build(tiny_cfg().model)
    for p in model.parameters():  # leave adaLN-Zero's zeros: every weight gets a gradient
        if p.requires_grad:
            p.data.add_(torch.randn_like(p), alpha=0.02)
    path = tmp_path_factory.mktemp('init') / 'init.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)


def run(args, repo_root, **env):
    result = run_tool(args, repo_root, **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def fsdp(repo_root, work, *options, preset='fsdp', config=DEMO):
    return run(['bash', 'tools/dist_train.sh', str(config), '2', '--fsdp', preset,
                '--work-dir', str(work), *options], repo_root, PORT=str(free_port()))


def logged(work):
    scalars = glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))
    assert len(scalars) == 1, scalars
    with open(scalars[-1]) as f:
        rows = [json.loads(line) for line in f]
    return {row['step']: (row['loss'], row['grad_norm']) for row in rows if 'loss' in row}


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def assert_same_weights(a, b):
    """Two checkpoints hold the same weights and EMA weights, bit for bit."""
    for key in ('state_dict', 'ema_state_dict'):
        assert a[key].keys() == b[key].keys(), key
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_two_fsdp_processes_train_like_one_and_infer_loads(repo_root, tmp_path,
                                                           start_weights):
    one, two = tmp_path / 'one', tmp_path / 'two'
    options = ['--load-from', start_weights, '--cfg-options', *TINY,
               'model.train_noise_seed=0']
    run([sys.executable, 'tools/train.py', DEMO, '--work-dir', str(one), *options],
        repo_root)
    result = fsdp(repo_root, two, *options)
    dumped = Config.fromfile(two / 'dit_tiny2_1xb32_1500_shapes16.py')
    assert dumped.runner_type == 'FlexibleRunner'
    assert dumped.strategy.type == 'FSDPStrategy'
    assert dumped.strategy.model_wrapper.device_id == 'cpu'
    assert [h.type for h in dumped.custom_hooks if 'EMA' in h.type] == ['ShardedEMAHook']
    assert 'Iter(train) [3/3]' in result.stdout + result.stderr

    # The same losses and (clipped) whole-gradient norms, logged to 4 decimals.
    log1, log2 = logged(one), logged(two)
    assert sorted(log1) == sorted(log2) == [1, 2, 3]
    for step in log1:
        assert log2[step] == pytest.approx(log1[step], rel=2e-4, abs=2e-4), (log1, log2)
        assert log1[step][1] > 0.3  # clipping acted
    # The full checkpoints: mmengine's layout, EMA weights in state_dict.
    ckpt1, ckpt2 = load(one / 'iter_3.pth'), load(two / 'iter_3.pth')
    for key in ('state_dict', 'ema_state_dict'):
        assert ckpt1[key].keys() == ckpt2[key].keys()
        for name, value in ckpt1[key].items():
            torch.testing.assert_close(ckpt2[key][name], value, rtol=1e-4, atol=1e-5,
                                       msg=f'{key} {name}')
    assert int(ckpt2['ema_state_dict']['steps']) == 3
    name = 'denoiser.final_layer.linear.weight'
    raw, ema = ckpt2['ema_state_dict']['module.' + name], ckpt2['state_dict'][name]
    assert (raw - ema).abs().max() > 1e-3  # momentum 0.01: the EMA trails

    from mmsora.apis.inference import load_weights
    from mmsora.registry import MODELS
    model = MODELS.build(tiny_cfg().model)
    load_weights(model, str(two / 'iter_3.pth'))  # EMA weights, strictly
    torch.testing.assert_close(model.denoiser.state_dict()[name.split('.', 1)[1]], ema)
    load_weights(model, str(two / 'iter_3.pth'), use_ema=False)
    torch.testing.assert_close(model.denoiser.state_dict()[name.split('.', 1)[1]], raw)


def test_fsdp_bf16_computes_in_bf16_from_fp32_shards(repo_root, tmp_path, start_weights):
    """--fsdp fsdp_bf16 (FSDP's MixedPrecision, docs/distributed.md): the units compute
    in bf16, gathered from float32 shards, and reduce gradients in float32; the batch,
    noise and loss stay float32. From the same start as a float32 FSDP run it logs the
    same losses to 3e-4 (casting the batch to bf16 moved them by 4e-4 to 7e-4) and
    ends near the same weights, but not the same ones (the
    float32 run matches one process to 1e-5: the bf16 arithmetic did run); the
    checkpoint's weights, EMA and AdamW states stay float32, infer's loader reads
    them, and a resumed run ends where the uninterrupted one does. With --amp on top
    it logs and ends the same, bit for bit."""
    fp32, bf16 = tmp_path / 'fp32', tmp_path / 'bf16'
    options = ['--load-from', start_weights, '--cfg-options', *TINY,
               'model.train_noise_seed=0']
    mixed = dict(param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32',
                 cast_root_forward_inputs=False)
    fsdp(repo_root, fp32, *options)
    fsdp(repo_root, bf16, *options, preset='fsdp_bf16')
    dumped = Config.fromfile(bf16 / 'dit_tiny2_1xb32_1500_shapes16.py')
    assert dumped.strategy.model_wrapper.mixed_precision == mixed
    assert dumped.strategy.model_wrapper.backward_prefetch == 'BACKWARD_PRE'
    log32, log16 = logged(fp32), logged(bf16)
    for step in log32:
        (loss32, norm32), (loss16, norm16) = log32[step], log16[step]
        assert loss16 == pytest.approx(loss32, abs=3e-4), (log32, log16)
        assert norm16 == pytest.approx(norm32, rel=2e-3), (log32, log16)
    a, b = load(fp32 / 'iter_3.pth'), load(bf16 / 'iter_3.pth')
    for key in ('state_dict', 'ema_state_dict'):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert b[key][name].dtype == value.dtype, (key, name)
    moved = max((b['state_dict'][name] - value).abs().max().item()
                for name, value in a['state_dict'].items() if value.is_floating_point())
    # 3 AdamW steps at lr 2e-3 move a weight by up to 6e-3
    assert 1e-4 < moved < 1e-2, moved
    assert {t.dtype for state in b['optimizer']['state'].values()
            for t in state.values()} == {torch.float32}
    # --amp on top: autocast over units that already compute in bf16 changes nothing
    # here (the objective's float32 parts are not on autocast's bf16 list)
    amp = tmp_path / 'amp'
    fsdp(repo_root, amp, '--amp', *options, preset='fsdp_bf16')
    wrapper = Config.fromfile(amp / 'dit_tiny2_1xb32_1500_shapes16.py').optim_wrapper
    assert wrapper.type == ('AmpOptimWrapper' if torch.cuda.is_available()
                            else 'AutocastOptimWrapper')
    assert logged(amp) == log16
    with_amp = load(amp / 'iter_3.pth')['state_dict']
    for name, value in b['state_dict'].items():
        assert torch.equal(with_amp[name], value), name

    from mmsora.apis.inference import load_weights
    from mmsora.registry import MODELS
    load_weights(MODELS.build(tiny_cfg().model), str(bf16 / 'iter_3.pth'))
    # resumed from its step-2 checkpoint, it ends where it did, bit for bit
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    shutil.copy(bf16 / 'iter_2.pth', resumed / 'iter_2.pth')
    fsdp(repo_root, resumed, '--resume', str(resumed / 'iter_2.pth'), '--cfg-options',
         *TINY, 'model.train_noise_seed=0', preset='fsdp_bf16')
    assert_same_weights(b, load(resumed / 'iter_3.pth'))
    assert logged(resumed)[3] == log16[3]


def test_fsdp_samples_the_sharded_ema_like_one_process(repo_root, tmp_path,
                                                      start_weights):
    """SampleVisualizationHook under --fsdp: every process samples through the FSDP
    root's forward (ShardedSampler) with the sharded EMA swapped in, rank 0 logs. The
    pictures are those a one-process run draws from the same EMA (to 1/255: the
    weights agree to 1e-5), and training goes on as without the hook; with
    use_ema=False too."""
    config = tmp_path / 'with_samples.py'
    config.write_text(
        f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
        "custom_hooks = [\n"
        "    dict(type='EMAHook', momentum=0.01, update_buffers=True,\n"
        "         priority='ABOVE_NORMAL'),\n"
        "    dict(type='RNGStateHook'),\n"
        "    dict(type='SampleVisualizationHook', interval=2, num_samples=4,\n"
        "         sample_cfg=dict(num_steps=5))]\n")
    one, two = tmp_path / 'one', tmp_path / 'two'
    options = ['--load-from', start_weights, '--cfg-options', *TINY,
               'model.train_noise_seed=0']
    run([sys.executable, 'tools/train.py', str(config), '--work-dir', str(one), *options],
        repo_root)
    result = fsdp(repo_root, two, *options, config=config)
    assert result.stdout.count('Iter(sample) [2] 4 samples') == 1  # rank 0 logs
    for step in (2, 3):  # every 2nd iteration and at the end
        a, b = pictures(one, step), pictures(two, step)
        assert a.shape == b.shape and a.std() > 10, (a.shape, a.std())
        assert np.abs(a - b).max() <= 1, np.abs(a - b).max()
    # The hook leaves the training as it was: FSDP keeps the root's gathered weights
    # after a forward, and the next step used the sampled EMA's (the loss at step 3
    # moved from 0.9731 to 0.9794) until ShardedEMA's swap freed them. Also in bf16
    # (MixedPrecision inside the root's forward) with SHARD_GRAD_OP.
    grad_op = 'strategy.model_wrapper.sharding_strategy=SHARD_GRAD_OP'
    fsdp(repo_root, tmp_path / 'bf16', *options, grad_op, preset='fsdp_bf16',
         config=config)
    for preset, extra, hooked in (('fsdp', [], two),
                                  ('fsdp_bf16', [grad_op], tmp_path / 'bf16')):
        plain = tmp_path / f'plain_{preset}'
        fsdp(repo_root, plain, *options, *extra, preset=preset)
        assert logged(hooked) == logged(plain), preset
        assert_same_weights(load(plain / 'iter_3.pth'), load(hooked / 'iter_3.pth'))
    assert glob.glob(str(tmp_path / 'bf16' / '*' / 'vis_data' / 'vis_image' /
                         'samples_2.png'))

    # use_ema=False: the trained weights, gathered by the root's forward (no swap,
    # nothing freed after): one process's pictures, and the training unchanged.
    raw = tmp_path / 'raw.py'
    raw.write_text(config.read_text().replace('num_samples=4,', 'num_samples=4, '
                                              'use_ema=False,'))
    run([sys.executable, 'tools/train.py', str(raw), '--work-dir', str(tmp_path / 'one_raw'),
         *options], repo_root)
    fsdp(repo_root, tmp_path / 'two_raw', *options, config=raw)
    assert logged(tmp_path / 'two_raw') == logged(tmp_path / 'plain_fsdp')
    for step in (2, 3):
        a, b = pictures(tmp_path / 'one_raw', step), pictures(tmp_path / 'two_raw', step)
        assert np.abs(a - b).max() <= 1, np.abs(a - b).max()
        assert np.abs(a - pictures(one, step)).max() > 10  # not the EMA's pictures
    assert_same_weights(load(tmp_path / 'plain_fsdp' / 'iter_3.pth'),
                        load(tmp_path / 'two_raw' / 'iter_3.pth'))


def pictures(work, step):
    """The SampleVisualizationHook's picture of ``step`` in ``work``, as int16."""
    from PIL import Image
    path, = glob.glob(str(work / '*' / 'vis_data' / 'vis_image' / f'samples_{step}.png'))
    return np.asarray(Image.open(path), dtype=np.int16)


def test_fsdp_resume_continues_exactly(repo_root, tmp_path, start_weights):
    """Without train_noise_seed the draws come from the processes' RNG streams: the
    resumed run must restore those (RNGStateHook), the sharded EMA and the sharded
    optimizer state to end bit for bit where the uninterrupted run ends."""
    full, resumed = tmp_path / 'full', tmp_path / 'resumed'
    options = ['--cfg-options', *TINY]
    fsdp(repo_root, full, '--load-from', start_weights, *options)
    resumed.mkdir()
    shutil.copy(full / 'iter_2.pth', resumed / 'iter_2.pth')
    fsdp(repo_root, resumed, '--resume', str(resumed / 'iter_2.pth'), *options)
    a, b = load(full / 'iter_3.pth'), load(resumed / 'iter_3.pth')
    assert_same_weights(a, b)
    assert a['optimizer']['state'].keys() == b['optimizer']['state'].keys()
    for name, state in a['optimizer']['state'].items():
        for k, v in state.items():
            assert torch.equal(v, b['optimizer']['state'][name][k]), (name, k)
    assert logged(full)[3] == logged(resumed)[3]


def test_fsdp_and_one_process_start_from_the_same_weights(repo_root, tmp_path):
    """Without --load-from: model.init_seed (tools/train.py sets it from
    randomness.seed) gives every FSDP process, and a one-process run, the same initial
    model, though mmengine's FlexibleRunner builds it later than its Runner does and
    diff_rank_seed gives each process its own stream."""
    one, two = tmp_path / 'one', tmp_path / 'two'
    options = ['--cfg-options', *TINY, 'model.train_noise_seed=0', 'train_cfg.max_iters=1',
               'default_hooks.checkpoint.interval=1']
    run([sys.executable, 'tools/train.py', DEMO, '--work-dir', str(one), *options],
        repo_root)
    fsdp(repo_root, two, *options)
    assert Config.fromfile(two / 'dit_tiny2_1xb32_1500_shapes16.py').model.init_seed == 0
    a, b = load(one / 'iter_1.pth')['state_dict'], load(two / 'iter_1.pth')['state_dict']
    assert a.keys() == b.keys()
    for name, value in a.items():  # one step from the same start, on the same batch
        torch.testing.assert_close(b[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp_with_a_seed_drawn_at_run_time_starts_from_that_seeds_weights(repo_root,
                                                                          tmp_path):
    """randomness.seed=None: mmengine draws the seed when the runner starts, after
    tools/train.py has looked for one; the FSDP processes then build the model of rank
    0's drawn seed (seed_model_at_run_time), the start a one-process run with that
    seed has (before, the FlexibleRunner built from wherever the global stream
    stood: not that start). With diff_rank_seed each process's seed is the drawn one
    plus its rank; rank 0's build is the start, as mmengine broadcasts its weights
    (the sampler's seed is fixed, as diff_rank_seed would give each process its own
    order)."""
    one, two = tmp_path / 'one', tmp_path / 'two'
    options = ['--cfg-options', *TINY, 'model.train_noise_seed=0', 'train_cfg.max_iters=1',
               'default_hooks.checkpoint.interval=1', 'randomness.diff_rank_seed=True',
               'train_dataloader.sampler.seed=0']
    result = fsdp(repo_root, two, *options, 'randomness.seed=None')
    seeds = set(re.findall(r'model\.init_seed=(\d+): the seed drawn at run time',
                           result.stdout + result.stderr))
    assert len(seeds) == 1, seeds
    seed = seeds.pop()
    run([sys.executable, 'tools/train.py', DEMO, '--work-dir', str(one), *options,
         f'randomness.seed={seed}'], repo_root)
    a, b = load(one / 'iter_1.pth')['state_dict'], load(two / 'iter_1.pth')['state_dict']
    assert a.keys() == b.keys()
    for name, value in a.items():  # one step from the same start, on the same batch
        torch.testing.assert_close(b[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp_with_accumulation_trains_like_one_process(repo_root, tmp_path, start_weights):
    """Two micro-batches per step (optim_wrapper.accumulative_counts=2; each one's
    gradients reduce-scattered, see the next test): two FSDP processes end like one
    plain process on the same global batch, and the sharded EMA moved once per
    optimizer step (2 updates in 4 iterations), from the weights after each step."""
    one, two = tmp_path / 'one', tmp_path / 'two'
    options = ['--load-from', start_weights, '--cfg-options', *TINY,
               'model.train_noise_seed=0', 'train_cfg.max_iters=4',
               'optim_wrapper.accumulative_counts=2']
    run([sys.executable, 'tools/train.py', DEMO, '--work-dir', str(one), *options],
        repo_root)
    fsdp(repo_root, two, *options)
    assert Config.fromfile(two / 'dit_tiny2_1xb32_1500_shapes16.py'
                           ).train_dataloader.batch_size == 2  # 8 = 2 x 2 x 2
    ckpt1, ckpt2 = load(one / 'iter_4.pth'), load(two / 'iter_4.pth')
    for key in ('state_dict', 'ema_state_dict'):
        for name, value in ckpt1[key].items():
            torch.testing.assert_close(ckpt2[key][name], value, rtol=1e-4, atol=1e-5,
                                       msg=f'{key} {name}')
    assert int(ckpt1['ema_state_dict']['steps']) == int(ckpt2['ema_state_dict']['steps']) == 2
    first = load(two / 'iter_2.pth')['ema_state_dict']  # module.*: the trained weights
    for name, ema in ckpt2['state_dict'].items():
        if ema.is_floating_point():
            expected = first['module.' + name].float().lerp(
                ckpt2['ema_state_dict']['module.' + name].float(), 0.01)
            torch.testing.assert_close(ema, expected, rtol=0, atol=1e-7, msg=name)


def test_fsdp_accumulation_keeps_the_gradients_sharded(repo_root, tmp_path):
    """mmengine's optimizer wrapper enters the model's no_sync() around the forward
    only (enough for DDP, which reads the flag there); FSDP reads it in the backward,
    after the context has restored it. So every micro-batch's gradients are
    reduce-scattered and what the first micro-batch of a step leaves for the second is
    this process's shard of the gradient (4 bytes per parameter / 2 processes), not
    the whole gradient that torch's FSDP.no_sync() would keep (docs/distributed.md,
    "FSDP"). Counted with every tensor storage (tests/count_train_memory.py): the
    second micro-batch's peak is the first's plus that shard."""
    from mmsora.registry import MODELS
    from mmsora.utils.training_inputs import training_model_cfg
    cfg = Config.fromfile(osp.join(repo_root, DEMO))
    trainable = sum(p.numel() for p in MODELS.build(training_model_cfg(cfg)).parameters()
                    if p.requires_grad)
    runs = counted_train_run(tmp_path, [
        DEMO, '--launcher', 'pytorch', '--fsdp', '--work-dir', str(tmp_path / 'work'),
        '--cfg-options', 'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=100',
        'default_hooks.checkpoint.save_last=False', 'train_dataloader.batch_size=8',
        'optim_wrapper.accumulative_counts=2'])
    for rank, iters in enumerate(runs):
        assert [i['iter'] for i in iters] == [1, 2, 3, 4]  # counted after the call
        # iterations 3 and 4: the second step's micro-batches (optimizer states exist)
        kept = iters[3]['peak'] - iters[2]['peak']
        shard = 4 * trainable / 2  # 2.55 MB; the whole gradient would be 5.1 MB
        assert shard <= kept < shard * 1.02, (rank, kept, shard)


def test_fsdp_with_activation_checkpointing_trains_the_same(repo_root, tmp_path,
                                                            start_weights):
    """Each block is an FSDP unit and the checkpoint wraps the unit: FSDP gathers its
    weights inside the checkpointed call, and again for the recomputation in the
    backward. With every block checkpointed, and selectively (only the elementwise ops
    recomputed), two FSDP processes end with the weights and EMA of two without
    checkpointing, bit for bit. Each process's blocks run twice per step (the forward
    and the recomputation; once without checkpointing), counted by tests.runner_probes'
    BlockRuns hook inside the launched processes."""
    config = probed_config(DEMO, tmp_path / 'config')
    options = ['--load-from', start_weights, '--cfg-options', *TINY,
               'model.train_noise_seed=0']
    fsdp(repo_root, tmp_path / 'plain', *options, config=config)
    plain = load(tmp_path / 'plain' / 'iter_3.pth')
    steps_blocks = 3 * 2  # 3 steps of the 2-block DiT
    assert block_runs(tmp_path / 'plain', 2) == [
        dict(block_runs=steps_blocks, checkpoint_calls=0, selective=0)] * 2
    for option, value in (('selective', 'selective'), ('True', True)):
        work = tmp_path / option
        fsdp(repo_root, work, *options, f'model.denoiser.grad_checkpointing={option}',
             config=config)
        assert Config.fromfile(work / 'dit_tiny2_1xb32_1500_shapes16.py'
                               ).model.denoiser.grad_checkpointing == value
        assert block_runs(work, 2) == [dict(
            block_runs=2 * steps_blocks, checkpoint_calls=steps_blocks,
            selective=steps_blocks if value == 'selective' else 0)] * 2, option
        assert_same_weights(plain, load(work / 'iter_3.pth'))
