"""An evaluation researcher's walk-through: an Inception without weights scored
'FID: 0.0000' with random features; the reference statistics came after all the
sampling; --sample-dir clips at 8 fps whatever sample_cfg.fps said; the --json record
said use_ema for trained weights; a metric key typo was named against SampleMetric."""
import json
import os.path as osp
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tests.test_evaluation.tiny_extractors  # noqa: F401  (registers them)
from mmsora.utils.error_messages import explain_error
from tests.tiny_models import TINY_DEMO_OPTIONS

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
VIDEO_DEMO = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'


def no_sampling(*args, **kwargs):
    raise AssertionError('sampled before the metrics were checked')


@pytest.fixture
def tiny_model(repo_root):
    """The image demo shrunk to 8x8 pictures, random, no checkpoint."""
    from mmsora.apis import init_model
    model, _ = init_model(f'{repo_root}/{DEMO}', checkpoint=False,
                          cfg_options=TINY_DEMO_OPTIONS)
    return model


def reference(tmp_path, n=6, shape=(8, 8)):
    path = str(tmp_path / 'ref.npz')
    np.savez(path, arr_0=np.random.default_rng(0).integers(0, 256, (n, *shape, 3),
                                                           dtype=np.uint8))
    return path


# --------------------------------------------------------------------------- #
#  1. Extractors without weights                                               #
# --------------------------------------------------------------------------- #
def test_an_extractor_without_weights_is_refused_before_sampling(tmp_path, tiny_model,
                                                                 monkeypatch):
    """FID with dict(type='InceptionV3FID') built a random Inception and reported
    'FID: 0.0000' (IS 1.0), exit 0; I3D and CLIP failed with a TypeError only at the
    first batch. Each is refused by the check before the sampling, naming the key."""
    from mmsora.apis import evaluation
    from mmsora.evaluation.extractors.i3d import I3D_FILE
    from mmsora.evaluation.extractors.inception import INCEPTION_FILE
    monkeypatch.setattr(evaluation, 'mass_sample', no_sampling)
    ref = reference(tmp_path)
    cases = [
        (dict(type='FID', reference=ref, extractor=dict(type='InceptionV3FID')),
         f"metrics[0].extractor.weights: FID's extractor InceptionV3FID has no weights "
         f"(a random network's values mean nothing): give {INCEPTION_FILE}"),
        (dict(type='InceptionScore', extractor=dict(type='InceptionV3FID', weights=None)),
         "metrics[0].extractor.weights: InceptionScore's extractor InceptionV3FID has no "
         'weights'),
        (dict(type='FVD', reference=ref, extractor=dict(type='I3DTorchScript')),
         f"metrics[0].extractor.weights: FVD's extractor I3DTorchScript has no weights "
         f"(a random network's values mean nothing): give {I3D_FILE}"),
        (dict(type='CLIPScore', extractor=dict(type='CLIPEmbedder')),
         "metrics[0].extractor.pretrained_path: CLIPScore's extractor CLIPEmbedder has no "
         'pretrained_path (a random network\'s values mean nothing): give a local '
         'transformers CLIP folder'),
    ]
    for metric, message in cases:
        with pytest.raises(ValueError) as info:
            evaluation.evaluate_model(tiny_model, [metric], num_samples=4, batch_size=4)
        assert explain_error(info.value).startswith(message), explain_error(info.value)
        assert '\n' not in explain_error(info.value)
    # the second metric of a list is named by its place
    with pytest.raises(ValueError, match=r'^metrics\[1\]\.extractor\.weights: FID'):
        evaluation.evaluate_model(tiny_model, [
            dict(type='InceptionScore', extractor=dict(type='TinyImageExtractor')),
            dict(type='FID', reference=ref, extractor=dict(type='InceptionV3FID'))],
            num_samples=4)
    # a misspelt weights key is named as such, not as missing weights
    with pytest.raises(ValueError, match=r"^metrics\[0\]\.extractor of FID: unknown config "
                                         r"key 'weigths' for InceptionV3FID; did you mean "
                                         r'weights\?'):
        evaluation.evaluate_model(tiny_model, [dict(
            type='FID', reference=ref,
            extractor=dict(type='InceptionV3FID', weigths='pt_inception.pth'))],
            num_samples=4)


def test_the_training_hook_refuses_an_extractor_without_weights(tmp_path):
    """SampleEvaluationHook's check before the first training step is the same one."""
    from mmsora.engine.hooks import SampleEvaluationHook
    hook = SampleEvaluationHook(metrics=[dict(type='FID', reference=reference(tmp_path),
                                              extractor=dict(type='InceptionV3FID'))])
    with pytest.raises(ValueError, match=r"^metrics\[0\]\.extractor\.weights: FID's "
                                         r'extractor InceptionV3FID has no weights'):
        hook.before_train(SimpleNamespace(model=SimpleNamespace(), cfg={}))


def test_a_random_inception_only_when_asked_for(tmp_path, caplog):
    from mmsora.apis import build_evaluator, check_metric_inputs
    from mmsora.evaluation import InceptionV3FID
    with pytest.raises(ValueError, match=r"^InceptionV3FID needs weights: give pytorch-fid's "
                                         r'pt_inception-2015-12-05-6726825d.pth .*'
                                         r'random_weights=True gives a random network'):
        InceptionV3FID()
    weights = tmp_path / 'pt_inception.pth'
    with pytest.raises(ValueError, match='weights and random_weights=True exclude each other'):
        InceptionV3FID(weights=str(weights), random_weights=True)
    torch.manual_seed(0)
    net = InceptionV3FID(random_weights=True)
    assert net(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))['features'].shape == (1, 2048)
    # a config asking for it is let through the check, with a warning
    evaluator = build_evaluator([dict(type='InceptionScore', extractor=dict(
        type='InceptionV3FID', random_weights=True))])
    import mmsora.evaluation.metrics.base as base
    said = []
    original = base.print_log
    base.print_log = lambda msg, **kw: said.append(msg)
    try:
        check_metric_inputs(evaluator, 4, (8, 8))
    finally:
        base.print_log = original
    assert said == ['InceptionScore: its extractor InceptionV3FID has random weights '
                    '(random_weights=True, for tests): the values are not comparable with '
                    'anything']


# --------------------------------------------------------------------------- #
#  2. Reference statistics before the sampling                                 #
# --------------------------------------------------------------------------- #
def test_reference_statistics_are_computed_and_cached_before_sampling(tmp_path, tiny_model,
                                                                      monkeypatch):
    """They were computed in compute_metrics, after all the sampling (and after the
    --out .npz was assembled and its shards deleted): a reference that failed there
    (out of memory reading a compressed 50K reference) lost every sample."""
    from mmsora.apis import evaluation
    from mmsora.evaluation import FID
    from mmsora.evaluation.metrics import frechet
    ref = reference(tmp_path)
    cache = tmp_path / 'ref_TinyImageExtractor_stats.npz'
    metric = dict(type='FID', reference=ref, extractor=dict(type='TinyImageExtractor'))
    real_mass_sample = evaluation.mass_sample
    seen = []

    def read_after_sampling(self):
        raise AssertionError('the reference was read after the sampling')

    def mass_sample(*args, **kwargs):
        seen.append(cache.is_file())  # the statistics are there before any sample
        # and the metric does not read the reference again after the sampling
        monkeypatch.setattr(FID, 'reference_stats', read_after_sampling)
        return real_mass_sample(*args, **kwargs)

    monkeypatch.setattr(evaluation, 'mass_sample', mass_sample)
    value = evaluation.evaluate_model(tiny_model, [metric], num_samples=4, batch_size=4,
                                      sample_cfg=dict(sampler='ddim', num_steps=2))
    assert seen == [True] and np.isfinite(value['FID']) and value['FID'] > 0
    monkeypatch.undo()
    # a reference pass that fails stops the run before the sampling
    cache.unlink()

    def out_of_memory(features):
        raise MemoryError('cannot allocate the reference features')

    monkeypatch.setattr(frechet, 'feature_stats', out_of_memory)
    monkeypatch.setattr(evaluation, 'mass_sample', no_sampling)
    with pytest.raises(MemoryError, match='cannot allocate the reference features'):
        evaluation.evaluate_model(tiny_model, [metric], num_samples=4, batch_size=4)


# --------------------------------------------------------------------------- #
#  3. The frame rate of --sample-dir clips                                     #
# --------------------------------------------------------------------------- #
def test_sample_dir_clips_get_the_configs_fps(repo_root, tmp_path):
    """tools/test.py --sample-dir wrote the video demo's clips at mass_sample's 8 fps,
    not its sample_cfg's 4 (tools/infer.py --sample-dir gives 4)."""
    import av

    import mmsora.models  # noqa: F401
    from mmsora.apis import evaluate_model
    from mmsora.registry import MODELS
    from mmsora.utils.config_loading import load_config
    cfg = load_config(f'{repo_root}/{VIDEO_DEMO}')
    assert cfg.sample_cfg.fps == 4
    cfg.model.denoiser.update(hidden_size=16, depth=2, num_heads=2)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    ref = str(tmp_path / 'clips.npz')
    np.savez(ref, arr_0=np.random.default_rng(0).integers(0, 256, (3, 4, 16, 16, 3),
                                                          dtype=np.uint8))
    samples = tmp_path / 'samples'
    metrics = evaluate_model(
        model, [dict(type='FVD', reference=ref, extractor=dict(type='TinyVideoExtractor'))],
        num_samples=2, batch_size=2, sample_cfg=dict(num_steps=2), progress=False,
        sample_dir=str(samples), default_sample_cfg=cfg.sample_cfg)
    assert np.isfinite(metrics['FVD'])
    for name in ('000000.mp4', '000001.mp4'):
        with av.open(str(samples / name)) as container:
            assert container.streams.video[0].average_rate == 4, name


# --------------------------------------------------------------------------- #
#  4. What the --json record says was scored                                   #
# --------------------------------------------------------------------------- #
def test_the_record_says_which_weights_reference_and_labels_were_scored(repo_root, tmp_path):
    """A run without EMAHook scored its trained weights ('weights: ... (trained
    weights)') but the JSON said use_ema: true; it left out the reference, the
    extractor's weights and how the classes were chosen, and listed fps (of saved
    clips) as a sampler setting."""
    from mmsora.apis import init_model
    from mmsora.apis.evaluation import evaluation_record
    from mmsora.registry import MODELS
    from mmsora.utils.config_loading import load_config
    cfg = load_config(f'{repo_root}/{DEMO}')
    model = MODELS.build(cfg.model)
    ckpt = str(tmp_path / 'iter_10.pth')  # a run's checkpoint, without EMA weights
    torch.save(dict(state_dict=model.state_dict(), meta=dict(cfg="model = dict()")), ckpt)
    model, _ = init_model(f'{repo_root}/{DEMO}', checkpoint=ckpt)
    assert model.loaded_weights == 'trained weights'
    metrics = [dict(type='FID', reference='data/ref16.npz', extractor=dict(
        type='InceptionV3FID', weights='checkpoints/pt_inception-2015-12-05-6726825d.pth'),
        inception_score=True)]
    evaluation = dict(num_samples=16, seed=3, labels='random', metrics=metrics)
    record = evaluation_record(model, {'FID': 1.5}, evaluation,
                               sample_cfg=dict(sampler='ddim', num_steps=2, fps=4),
                               run='work_dirs/run')
    record = json.loads(json.dumps(record))  # (what --json writes)
    assert record['use_ema'] is False and record['weights'] == 'trained weights'
    assert record['checkpoint'] == ckpt and record['run'] == 'work_dirs/run'
    assert record['metrics'] == {'FID': 1.5} and record['num_samples'] == 16
    assert record['seed'] == 3 and record['labels'] == 'random' and 'classes' not in record
    assert record['sample_cfg'] == dict(sampler='ddim', num_steps=2)
    assert record['metric_configs'] == metrics
    assert record['metric_configs'][0]['reference'] == 'data/ref16.npz'
    assert record['metric_configs'][0]['extractor']['weights'].endswith('6726825d.pth')
    # cycled classes; EMA weights; a file that does not say which
    model.loaded_weights = 'EMA weights'
    record = evaluation_record(model, {}, dict(labels=(1, 2), metrics=metrics[0]))
    assert record['use_ema'] is True and record['labels'] == 'cycled'
    assert record['classes'] == [1, 2] and len(record['metric_configs']) == 1
    model.loaded_weights = 'one set of weights, EMA or not: the file does not say'
    record = evaluation_record(model, {}, dict(metrics=metrics))
    assert record['use_ema'] is None and record['labels'] == 'cycled'
    record = evaluation_record(model, {}, dict(metrics=metrics, prompts=['a cat']))
    assert record['prompts'] == ['a cat'] and 'labels' not in record


# --------------------------------------------------------------------------- #
#  5. A metric key typo, named against the metric written                      #
# --------------------------------------------------------------------------- #
def test_a_metric_key_typo_names_the_metric_in_the_tool_and_the_hook(repo_root, tmp_path):
    """tools/test.py said "unknown config key 'refrence' for FID", tools/train.py's
    hook "... for SampleMetric; did you mean reference, reference_cache?"."""
    from mmsora.apis import build_evaluator
    from tests.test_engine.test_sample_evaluation_hook import hooked_config
    from tools import train
    ref = reference(tmp_path)
    expected = ("metrics[0]: unknown config key 'refrence' for FID; did you mean "
                'reference, reference_cache?')
    for metric in (dict(type='FID', refrence=ref, extractor=dict(type='TinyImageExtractor')),
                   dict(type='FID', reference=ref, refrence=ref,
                        extractor=dict(type='TinyImageExtractor'))):
        with pytest.raises(ValueError) as info:
            build_evaluator([metric])
        assert explain_error(info.value) == expected
    with pytest.raises(ValueError) as info:
        build_evaluator([dict(type='FVD', reference=ref, extractor=dict(type='TinyImageExtractor'),
                              refrence_cache='x.npz')])
    assert "unknown config key 'refrence_cache' for FVD; did you mean reference_cache" in (
        explain_error(info.value))
    # under tools/train.py's SampleEvaluationHook
    config = hooked_config(tmp_path, repo_root)
    text = open(config).read().replace(f'reference={ref!r})])', f'refrence={ref!r})])')
    assert text.count('refrence=') == 1
    with open(config, 'w') as f:
        f.write(text)
    with pytest.raises(ValueError) as info:
        train.main([config, '--work-dir', str(tmp_path / 'work')])
    assert explain_error(info.value) == expected
    assert not osp.exists(tmp_path / 'work' / 'iter_2.pth')
