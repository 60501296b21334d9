"""tools/test.py and tools/infer.py mass sampling end to end on a tiny model: the same
samples and metric values from 1 and 2 processes (gloo on CPU); the evaluation hook
during a short training run."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests import cli_helpers

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'


# The tools run here keep glibc's freed memory on the CPU: recorded, not made.
pytestmark = pytest.mark.usefixtures('malloc_calls')


def config_text(repo_root, reference):
    return f"""
_base_ = [{osp.join(repo_root, DEMO)!r}]
custom_imports = dict(imports=['tests.test_evaluation.tiny_extractors'],
                      allow_failed_imports=False)
model = dict(denoiser=dict(hidden_size=32, depth=2, num_heads=2, input_size=8),
             latent_shape=(3, 8, 8))
train_dataloader = dict(batch_size=4, dataset=dict(size=8, num_samples=16))
param_scheduler = []
sample_cfg = dict(sampler='ddim', num_steps=2, cfg_scale=2.0)
evaluation = dict(
    num_samples=6, batch_size=4, seed=3,
    metrics=[dict(type='FID', extractor=dict(type='TinyImageExtractor'),
                  reference={reference!r}, inception_score=True, split_size=3)])
"""


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, repo_root=osp.dirname(osp.dirname(osp.dirname(
        osp.abspath(__file__))))):
    """A config with an evaluation section, and a checkpoint of its random model."""
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    from mmsora.utils.config_loading import load_config
    root = tmp_path_factory.mktemp('run')
    rng = np.random.default_rng(0)
    np.savez(root / 'ref.npz', arr_0=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    config = root / 'tiny_eval.py'
    config.write_text(config_text(repo_root, str(root / 'ref.npz')))
    cfg = load_config(str(config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict()), root / 'ckpt.pth')
    return repo_root, root, str(config), str(root / 'ckpt.pth')


def run(args, repo_root, cwd, nproc=1, port=None):
    """Run a tool from ``cwd`` (mmengine collects results in ``cwd/.dist_test``)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': repo_root}
    launch = ([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc),
               '--master_port', str(port)] if nproc > 1 else [sys.executable])
    extra = ['--launcher', 'pytorch'] if nproc > 1 else []
    result = subprocess.run(launch + args + extra, cwd=cwd, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_one_and_two_processes_give_the_same_samples_and_metrics(tiny_run, capsys,
                                                                malloc_calls):
    """(The in-process test.py and infer.py runs also check that both keep glibc's
    freed memory when they sample on the CPU.)"""
    repo_root, root, config, ckpt = tiny_run
    # Two processes (torchrun, gloo); then one, in this process (no second start-up).
    run([osp.join(repo_root, 'tools', 'test.py'), config, ckpt, '--out', str(root / 'two.npz'),
         '--json', str(root / 'two.json')], repo_root, root, nproc=2, port=29651)
    cli_helpers.load_tool('test').main([config, ckpt, '--out', str(root / 'one.npz'),
                                        '--json', str(root / 'one.json')])
    printed = capsys.readouterr().out
    assert 'FID: ' in printed and 'IS: ' in printed
    cli_helpers.load_tool('infer').main([
        config, '--checkpoint', ckpt, '--num-samples', '6', '--batch-size', '4', '--seed',
        '3', '--out', str(root / 'infer.npz'), '--sample-dir', str(root / 'files')])
    assert malloc_calls == ([] if torch.cuda.is_available() else [1, 1])
    metrics = [json.load(open(root / f'{n}.json'))['metrics'] for n in ('one', 'two')]
    assert metrics[0] == metrics[1] and metrics[0]['FID'] > 0 and metrics[0]['IS'] >= 1
    arrays = [np.load(root / f'{n}.npz') for n in ('one', 'two', 'infer')]
    assert arrays[0]['arr_0'].shape == (6, 8, 8, 3) and arrays[0]['arr_0'].dtype == np.uint8
    for other in arrays[1:]:
        np.testing.assert_array_equal(other['arr_0'], arrays[0]['arr_0'])
        np.testing.assert_array_equal(other['arr_1'], [0, 1, 2, 3, 0, 1])
    assert sorted(os.listdir(root / 'files')) == [f'{i:06d}.png' for i in range(6)] + [
        'labels.txt']

    # The metric recomputed here from the saved samples: the CLI feeds what it saved.
    from mmsora.evaluation import FID
    fid = FID(extractor=dict(type='TinyImageExtractor'), reference=str(root / 'ref.npz'))
    fid.process(None, [dict(index=i, sample=s) for i, s in enumerate(arrays[0]['arr_0'])])
    assert fid.evaluate(6)['FID'] == pytest.approx(metrics[0]['FID'], rel=1e-9)


def test_test_tool_errors_are_one_line(tiny_run, capsys, monkeypatch):
    from mmsora.utils.cli import run_cli
    _, root, config, ckpt = tiny_run
    tool = cli_helpers.load_tool('test')
    bare = root / 'no_evaluation.py'
    bare.write_text(f'_base_ = [{config!r}]\nevaluation = None\n')
    assert run_cli(lambda: tool.main([str(bare), ckpt])) == 2
    assert 'no `evaluation` section' in capsys.readouterr().err
    # a config without a checkpoint: test.py takes it after the config (the error said
    # --checkpoint, infer.py's option, which test.py does not have)
    assert run_cli(lambda: tool.main([config])) == 2
    assert capsys.readouterr().err.rstrip().endswith(
        'none found for ' f'{config}: pass the checkpoint after the config (test.py CONFIG '
        'CKPT)')
    # --evaluation brings the section from another file; evaluation.* options apply to it.
    tool.main([str(bare), ckpt, '--evaluation', config, '--json', str(root / 'e.json'),
               '--cfg-options', 'evaluation.num_samples=3', 'model.num_classes=4'])
    # which file was scored, as infer.py says which it samples
    assert (f'weights: {ckpt} (one set of weights, EMA or not: the file does not say)'
            in capsys.readouterr().out)  # ({'state_dict': ...} alone: not a run's)
    result = json.load(open(root / 'e.json'))
    assert result['num_samples'] == 3 and result['metrics']['FID'] > 0
    # (use_ema: None, the file does not say which weights it holds)
    assert (result['checkpoint'], result['use_ema'], result['seed']) == (ckpt, None, 3)
    assert result['sample_cfg'] == dict(sampler='ddim', num_steps=2, cfg_scale=2.0)
    assert run_cli(lambda: tool.main([config, ckpt, '--out', 'x.png'])) == 2
    assert "--out is an .npz file" in capsys.readouterr().err
    assert run_cli(lambda: tool.main([config, ckpt, '--cfg-options',
                                      'evaluation.num_sample=4'])) == 2
    assert ('error: evaluation.num_sample: not a setting of the evaluation section; did '
            'you mean num_samples?') in capsys.readouterr().err
    # --prompt-file: read as infer reads it, before the weights load, into
    # evaluation.prompts (before: a config line open()-ing the file, blank lines kept)
    assert run_cli(lambda: tool.main([config, '/nonexistent.pth', '--prompt-file',
                                      str(root / 'none.txt')])) == 2
    assert 'error: --prompt-file: cannot read ' in capsys.readouterr().err
    (root / 'prompts.txt').write_text('\ufeffa cat runs\n\n# not this\na dog sits\n')
    import functools

    import mmsora.apis
    seen = {}

    @functools.wraps(mmsora.apis.evaluate_model)  # (test.py checks keys by its signature)
    def evaluate(model, **kw):
        seen.update(kw)
        return {'FID': 1.0}
    monkeypatch.setattr(mmsora.apis, 'evaluate_model', evaluate)
    tool.main([config, ckpt, '--prompt-file', str(root / 'prompts.txt'), '--json',
               str(root / 'p.json')])
    assert seen['prompts'] == ['a cat runs', 'a dog sits']
    assert json.load(open(root / 'p.json'))['prompts'] == ['a cat runs', 'a dog sits']


def hooked_config(tmp_path, config, num_samples, batch_size):
    """``config`` with the demo's EMA and an evaluation every 2 iterations."""
    hooked = tmp_path / 'hooked.py'
    hooked.write_text(f"""_base_ = [{config!r}]
custom_hooks = [
    dict(type='EMAHook', momentum=0.01, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='RNGStateHook'),
    dict(type='SampleEvaluationHook', interval=2, num_samples={num_samples},
         batch_size={batch_size}, metrics={{{{_base_.evaluation.metrics}}}}),
]
""")
    return hooked


def test_evaluation_hook_logs_the_metric_during_training(tiny_run, tmp_path,
                                                         malloc_calls):
    """(Its two training runs also check that tools/train.py keeps glibc's freed memory
    without a GPU, and logs it, unless --default-malloc.)"""
    _, root, config, ckpt = tiny_run
    hooked = hooked_config(tmp_path, config, num_samples=4, batch_size=4)
    train = cli_helpers.load_tool('train')

    def train_losses(config, work, *flags):
        train.main([str(config), '--work-dir', str(work), *flags, '--cfg-options',
                    'train_cfg.max_iters=3', 'default_hooks.logger.interval=1'])
        logs = [osp.join(dp, f) for dp, _, fs in os.walk(work) for f in fs]
        scalars = [json.loads(line) for p in logs if p.endswith('scalars.json')
                   for line in open(p)]
        text = ''.join(open(p).read() for p in logs if p.endswith('.log'))
        return [s['loss'] for s in scalars if 'loss' in s], scalars, text

    losses, scalars, text = train_losses(hooked, tmp_path / 'work')
    assert 'Iter(eval) [2] 4 samples  FID: ' in text and 'Iter(eval) [3]' in text, text[-3000:]
    fids = [s['eval/FID'] for s in scalars if 'eval/FID' in s]
    assert len(fids) == 2 and all(f > 0 for f in fids)
    malloc_log = 'No GPU: glibc malloc keeps freed memory'
    gpu = torch.cuda.is_available()
    assert malloc_calls == ([] if gpu else [1]) and (malloc_log in text) != gpu
    # Sampling leaves the training noise alone: the same losses as without the hook.
    plain, _, plain_text = train_losses(config, tmp_path / 'plain', '--default-malloc')
    assert plain == losses and len(losses) == 3
    assert len(malloc_calls) == (0 if gpu else 1) and malloc_log not in plain_text


def test_evaluation_hook_sharded_scores_like_one_process(tiny_run, tmp_path):
    """SampleEvaluationHook under --fsdp and under ZeRO-3: each process samples its
    share of the batches through the sharded model's forward (3 batches of 2 over 2
    processes: rank 1 draws one batch again and drops it, as the sharded forwards
    need both), and the logged FID is a one-process run's from the same start (the
    weights agree to 1e-5)."""
    from tests.launch import RUN, free_port, run_tool
    repo_root, root, config, ckpt = tiny_run
    hooked = hooked_config(tmp_path, config, num_samples=6, batch_size=2)
    options = ['--cfg-options', 'randomness.seed=0', 'train_cfg.max_iters=2',
               'default_hooks.logger.interval=1', 'global_batch_size=4',
               'model.train_noise_seed=0']

    def fids(work):
        scalars = [json.loads(line) for dp, _, fs in os.walk(work) for f in fs
                   if f == 'scalars.json' for line in open(osp.join(dp, f))]
        return [s['eval/FID'] for s in scalars if 'eval/FID' in s]

    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                '--master_port', str(free_port()), '--no-python', sys.executable, '-c',
                RUN]  # DeepSpeed's op build skipped
    runs = {'one': ([sys.executable, 'tools/train.py', str(hooked)], {}),
            'fsdp': (['bash', 'tools/dist_train.sh', str(hooked), '2', '--fsdp'],
                     dict(PORT=str(free_port()))),
            'zero3': ([*torchrun, 'tools/train.py', str(hooked), '--deepspeed',
                       'deepspeed_zero3', '--launcher', 'pytorch'], {})}
    # ZeRO-3 keeps parameters under 1e5 elements whole by default (all of these)
    partitioned = ['strategy.config.zero_optimization.stage3_param_persistence_threshold=0']
    for name, (args, env) in runs.items():
        result = run_tool([*args, '--work-dir', str(tmp_path / name), *options,
                           *(partitioned if name == 'zero3' else [])],
                          repo_root, PYTHONPATH=repo_root, **env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = fids(tmp_path / 'one')
    assert len(one) == 1 and one[0] > 0, one
    for name in ('fsdp', 'zero3'):
        two = fids(tmp_path / name)
        assert len(two) == 1 and two[0] == pytest.approx(one[0], rel=1e-3), (name, one, two)


def test_missing_inputs_stop_before_any_sampling(tiny_run, tmp_path, capsys, monkeypatch):
    """A wrong FID reference or extractor weights path was found after all the
    sampling (hours at 50K samples), and by SampleEvaluationHook at its first
    evaluation, after training; now tools/test.py stops before sampling and the hook
    before the first training step."""
    from mmsora.apis import evaluation
    from mmsora.utils.cli import run_cli
    _, root, config, ckpt = tiny_run

    def no_sampling(*args, **kwargs):
        raise AssertionError('sampled before checking the metric inputs')

    monkeypatch.setattr(evaluation, 'mass_sample', no_sampling)
    tool = cli_helpers.load_tool('test')
    missing = str(tmp_path / 'nope.npz')
    assert run_cli(lambda: tool.main([config, ckpt, '--cfg-options',
                                      f'evaluation.metrics.0.reference={missing}'])) == 2
    assert f'FID reference not found: {missing}' in capsys.readouterr().err
    assert run_cli(lambda: tool.main([config, ckpt, '--cfg-options',
                                      f'evaluation.metrics.0.extractor.weights={missing}'])) == 2
    assert (f"FID: the extractor TinyImageExtractor's weights not found: {missing}"
            in capsys.readouterr().err)

    hooked = hooked_config(tmp_path, config, num_samples=4, batch_size=4)
    train = cli_helpers.load_tool('train')
    work = tmp_path / 'work'
    assert run_cli(lambda: train.main([str(hooked), '--work-dir', str(work), '--cfg-options',
                                       'train_cfg.max_iters=3',
                                       f'custom_hooks.2.metrics.0.reference={missing}'])) == 2
    assert f'FID reference not found: {missing}' in capsys.readouterr().err
    logs = ''.join(open(osp.join(dp, f)).read() for dp, _, fs in os.walk(work) for f in fs
                   if f.endswith('.log'))
    assert 'Iter(train)' not in logs and not list(work.glob('*.pth'))


def test_reference_mistakes_stop_before_any_sampling(tiny_run, tmp_path, capsys,
                                                     monkeypatch):
    """A reference of another size was scored (FID printed, rc 0); one of another key
    or of 1 picture, or --num-samples 1, failed after all the sampling, with a
    traceback or without naming the culprit. Now each is one line, before sampling."""
    from mmsora.apis import evaluation
    from mmsora.utils.cli import run_cli
    _, root, config, ckpt = tiny_run

    def no_sampling(*args, **kwargs):
        raise AssertionError('sampled before checking the metric inputs')

    monkeypatch.setattr(evaluation, 'mass_sample', no_sampling)
    tool = cli_helpers.load_tool('test')
    references = dict(big=dict(arr_0=np.zeros((4, 16, 16, 3), np.uint8)),
                      other_key=dict(images=np.zeros((4, 8, 8, 3), np.uint8)),
                      one=dict(arr_0=np.zeros((1, 8, 8, 3), np.uint8)))
    expected = dict(
        big='big.npz holds 16x16 pictures, but the samples are 8x8 ones: make the '
            'reference at that size (tools/make_reference.py --image-size 8)',
        other_key="other_key.npz has neither statistics (mu, sigma) nor samples (arr_0); "
                  "it has ['images']: save the samples as arr_0",
        one='one.npz holds 1 sample(s); FID needs at least 2')
    for name, arrays in references.items():
        np.savez(tmp_path / f'{name}.npz', **arrays)
        assert run_cli(lambda: tool.main([config, ckpt, '--cfg-options',
                                          'evaluation.metrics.0.reference='
                                          f'{tmp_path / name}.npz'])) == 2
        err = capsys.readouterr().err
        assert expected[name] in err and len(err.strip().splitlines()) == 1, err
    assert run_cli(lambda: tool.main([config, ckpt, '--num-samples', '1'])) == 2
    assert ('error: FID needs at least 2 samples (a covariance), got num_samples=1: '
            'raise --num-samples') in capsys.readouterr().err


def test_clip_reference_of_another_size_stops_before_sampling(tmp_path, monkeypatch):
    """A 16-frame 32x32 reference against a model making 4-frame 16x16 clips gave an
    FVD; now refused before sampling, naming both sizes."""
    import mmsora.models  # noqa: F401
    from mmsora.apis import evaluation
    from mmsora.registry import MODELS
    from mmsora.utils.config_loading import load_config

    def no_sampling(*args, **kwargs):
        raise AssertionError('sampled before checking the metric inputs')

    monkeypatch.setattr(evaluation, 'mass_sample', no_sampling)
    repo_root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = load_config(f'{repo_root}/configs/video_dit/'
                      'video_dit_tiny2_1xb8_1500_moving_shapes16.py')
    cfg.model.denoiser.update(hidden_size=16, depth=2, num_heads=2)
    model = MODELS.build(cfg.model)
    assert evaluation.output_size(model) == (4, 16, 16)
    np.savez(tmp_path / 'clips.npz', arr_0=np.zeros((3, 16, 32, 32, 3), np.uint8))
    metric = dict(type='FVD', extractor=dict(type='TinyVideoExtractor'),
                  reference=str(tmp_path / 'clips.npz'))
    with pytest.raises(ValueError, match=r'clips.npz holds 16-frame 32x32 clips, but the '
                                         r'samples are 4-frame 16x16 ones: make the '
                                         r'reference at that size \(tools/make_reference.py '
                                         r'--num-frames 4 --image-size 16\)'):
        evaluation.evaluate_model(model, [metric], num_samples=4)


def test_output_size_follows_the_vae():
    from types import SimpleNamespace

    from mmsora.apis.evaluation import output_size

    class TimeVAE:
        downsample_factor = 8

        def latent_shape(self, *args):
            pass

    sd_vae = SimpleNamespace(downsample_factor=8)
    assert output_size(SimpleNamespace(latent_shape=(4, 32, 32), vae=sd_vae)) == (256, 256)
    assert output_size(SimpleNamespace(latent_shape=(4, 5, 8, 6), vae=sd_vae)) == (5, 64, 48)
    assert output_size(SimpleNamespace(latent_shape=(4, 5, 8, 8), vae=TimeVAE())) == (
        None, 64, 64)  # frames known after decoding only: checked at the first batch
    cascade = SimpleNamespace(downsample_factor=42.67, latent_size=None)
    assert output_size(SimpleNamespace(latent_shape=(16, 24, 24), vae=cascade)) == (
        None, None)


def test_infer_draws_random_classes_as_fid_does(tiny_run, capsys, malloc_calls):
    """tools/infer.py --out NAME.npz cycled the classes (DiT's sample_ddp.py draws them
    at random) and said nothing of the settings it sampled with (the config's cfg 4.0
    where sample_ddp.py takes 1.5): --labels random draws them as tools/test.py's
    labels='random' does, and the settings are printed (walk-through p)."""
    _, root, config, ckpt = tiny_run
    infer = cli_helpers.load_tool('infer')
    infer.main([config, '--checkpoint', ckpt, '--num-samples', '6', '--batch-size', '4',
                '--seed', '3', '--labels', 'random', '--out', str(root / 'random.npz')])
    printed = capsys.readouterr().out
    assert ('sampling 6 samples with sampler=ddim, num_steps=2, cfg_scale=2.0; '
            'classes drawn at random from --seed') in printed
    cli_helpers.load_tool('test').main([config, ckpt, '--out', str(root / 'test_random.npz'),
                                        '--cfg-options', 'evaluation.labels=random'])
    ours, theirs = (np.load(root / f'{n}.npz') for n in ('random', 'test_random'))
    from mmsora.apis.mass_sampling import random_labels
    np.testing.assert_array_equal(ours['arr_1'], random_labels(4, 6, 3))
    np.testing.assert_array_equal(ours['arr_1'], theirs['arr_1'])
    np.testing.assert_array_equal(ours['arr_0'], theirs['arr_0'])
    from mmsora.utils.cli import UserError
    with pytest.raises(UserError, match="--labels random draws every sample's class: give it "
                                        'alone'):
        infer.main([config, '--checkpoint', ckpt, '--labels', 'random', '2'])
    with pytest.raises(UserError, match=(
            r"^--labels 'rand': class names need the class names of the latent store the "
            r'run trains on, and this run trains on no latent store '
            r"\(train_dataloader.dataset\): give class ids \(or 'random'\)")):
        infer.main([config, '--checkpoint', ckpt, '--labels', 'rand'])
