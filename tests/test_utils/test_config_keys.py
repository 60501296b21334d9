"""mmsora.utils.config_keys: a training config's entries checked against the classes
they build, before the Runner starts (tools/train.py)."""
import copy
import glob
import os.path as osp

import pytest

from mmsora.utils.cli import UserError
from mmsora.utils.config_loading import load_config
from mmsora.utils.config_keys import accepted_arguments, check_training_keys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(REPO, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO, 'configs/**/*.py'), recursive=True)
                 if '_base_' not in p)


def refused(cfg) -> str:
    with pytest.raises(UserError) as info:
        check_training_keys(cfg)
    return str(info.value)


def test_arguments_passed_on_to_the_bases_are_collected():
    """LinearLR's own __init__ is a mixin's (optimizer, *args, **kwargs); the names
    are its base's. An EMA hook's **kwargs go to no base: not complete."""
    from mmengine.hooks import EMAHook
    from mmengine.optim import AmpOptimWrapper, LinearLR
    names, complete = accepted_arguments(LinearLR)
    assert complete and {'start_factor', 'end_factor', 'begin', 'end', 'by_epoch'} <= set(
        names)
    names, complete = accepted_arguments(AmpOptimWrapper)
    assert complete and {'loss_scale', 'dtype', 'optimizer', 'accumulative_counts',
                         'clip_grad'} <= set(names)
    names, complete = accepted_arguments(EMAHook)
    assert not complete and 'ema_type' in names
    from collections import namedtuple  # no __init__ of its own: its __new__'s
    names, complete = accepted_arguments(namedtuple('Pair', 'a b'))
    assert complete and set(names) == {'a', 'b'}


@pytest.mark.parametrize('edit, expected', [
    (lambda c: c.param_scheduler[0].update(star_factor=0.1),
     "param_scheduler[0]: unknown config key 'star_factor' for LinearLR; did you mean "
     'start_factor'),
    (lambda c: c.param_scheduler[1].update(type='CosineAnealingLR'),
     "param_scheduler[1]: unknown type 'CosineAnealingLR' in the parameter scheduler "
     'registry; did you mean CosineAnnealingLR'),
    (lambda c: c.optim_wrapper.update(clip_grads=dict(max_norm=1.0)),
     "optim_wrapper: unknown config key 'clip_grads' for OptimWrapper; did you mean "
     'clip_grad'),
    (lambda c: c.optim_wrapper.update(type='AmpOptimWraper'),
     "optim_wrapper: unknown type 'AmpOptimWraper' in the optim_wrapper registry; did you "
     'mean AmpOptimWrapper'),
    (lambda c: c.custom_hooks[0].update(momentm=1e-4),
     "custom_hooks[0]: unknown config key 'momentm' for EMAHook; did you mean momentum?"),
    (lambda c: c.custom_hooks.append(dict(type='RNGStateHok')),
     "custom_hooks[2]: unknown type 'RNGStateHok' in the hook registry; did you mean "
     'RNGStateHook'),
    (lambda c: c.default_hooks.logger.update(intervall=10),
     "default_hooks.logger: unknown config key 'intervall' for LoggerHook; did you mean "
     'interval'),
    (lambda c: c.default_hooks.checkpoint.update(max_keep_ckpt=1),
     "default_hooks.checkpoint: unknown config key 'max_keep_ckpt' for CheckpointHook; "
     'did you mean max_keep_ckpts'),
    (lambda c: c.train_dataloader.collate_fn.update(type='default_colate'),
     "train_dataloader.collate_fn: unknown type 'default_colate' in the function registry; "
     'did you mean default_collate'),
    (lambda c: c.train_cfg.update(type='IterBasedTrainLop'),
     "train_cfg: unknown type 'IterBasedTrainLop' in the loop registry; did you mean "
     'IterBasedTrainLoop'),
])
def test_a_typo_is_one_line_naming_the_entry(edit, expected):
    """Each failed only when the Runner built it (after ~140 lines of start-up output),
    and the hooks' kwargs later still: the checkpoint hook's at the first save."""
    cfg = load_config(DEMO)
    check_training_keys(cfg)
    edit(cfg)
    assert refused(cfg).startswith(expected)


@pytest.mark.parametrize('edit, expected', [
    # mmengine's by_epoch=True default in an iteration-based run: a schedule that never
    # stepped, a checkpoint hook that saved only at the end (both without a word)
    (lambda c: c.param_scheduler[1].pop('by_epoch'),
     "param_scheduler[1]: by_epoch=True (mmengine's default) in an iteration-based run: "
     'it would never step; set by_epoch=False'),
    # a schedule that ends before it begins: mmengine's error after the Runner's start,
    # its work dir left (docs/reliability.md says before)
    (lambda c: c.param_scheduler[1].update(end=c.param_scheduler[1].begin - 40),
     'param_scheduler[1]: end=60 is not after begin=100: a schedule runs from begin to '
     'end; raise end or lower begin'),
    (lambda c: c.default_hooks.checkpoint.pop('by_epoch'),
     "default_hooks.checkpoint: by_epoch=True (mmengine's default) in an iteration-based "
     'run: it would save only at the end; set by_epoch=False'),
    # TypeError / KeyError / AttributeError tracebacks before
    (lambda c: c.optim_wrapper.update(clip_grad=dict(max_nrom=1.0)),
     "optim_wrapper.clip_grad: unknown config key 'max_nrom' for clip_grad_norm_; did you "
     'mean max_norm'),
    (lambda c: c.optim_wrapper.update(clip_grad=dict(type='value', max_norm=1.0)),
     "optim_wrapper.clip_grad: unknown config key 'max_norm' for clip_grad_value_"),
    (lambda c: c.optim_wrapper.update(clip_grad=dict(type='nrom', max_norm=1.0)),
     "optim_wrapper.clip_grad: type 'nrom' is 'norm'"),
    (lambda c: c.default_hooks.update(chekpoint=dict(interval=2)),
     'default_hooks.chekpoint: no type (not one of the default hooks that '
     'configs/_base_/default_runtime.py gives); did you mean default_hooks.checkpoint?'),
    (lambda c: c.custom_hooks[0].update(priority='ABOVE_NORMALL'),
     "custom_hooks[0]: priority 'ABOVE_NORMALL' is none of mmengine's (HIGHEST, "),
    (lambda c: c.custom_hooks[0].update(priority=101), 'custom_hooks[0]: priority 101'),
    (lambda c: c.update(randomness=dict(sed=1)),
     "randomness: unknown config key 'sed' for set_randomness; did you mean seed"),
    (lambda c: c.update(env_cfg=dict(cudnn_benchmrk=True)),
     "env_cfg: unknown config key 'cudnn_benchmrk' for the Runner's env_cfg; did you mean "
     'cudnn_benchmark'),
    (lambda c: c.train_dataloader.update(batch_sise=4),
     "train_dataloader: unknown config key 'batch_sise' for DataLoader; did you mean "
     'batch_size'),
    (lambda c: c.pop('optim_wrapper'),
     'the config has no optim_wrapper: inherit a schedule from configs/_base_/schedules/'),
    (lambda c: c.pop('train_dataloader'), 'the config has no train_dataloader'),
    (lambda c: c.train_cfg.update(max_iters=4.5),
     'train_cfg.max_iters=4.5: a whole number (at least 1)'),  # an AssertionError
    (lambda c: c.train_cfg.update(max_iters='ten'),
     "train_cfg.max_iters='ten': a number of iterations (at least 1)"),
    (lambda c: c.custom_hooks.append(dict(momentum=1e-4)),
     "custom_hooks[2]: no type; give it, e.g. dict(type='EMAHook', ...)"),
    # mmengine's assertion when the hook built its average: a traceback
    (lambda c: c.custom_hooks[0].update(momentum=2),
     'custom_hooks[0].momentum=2: the EMA moves that fraction of the way to the weights '
     "each step, in (0, 1); DiT's decay 0.9999 is momentum=1e-4"),
    (lambda c: c.custom_hooks[0].update(momentum='1e-4'), "custom_hooks[0].momentum='1e-4'"),
    # sample_cfg: met when samples were first drawn (a sampling hook's interval in)
    (lambda c: c.update(sample_cfg=dict(sampler='ddim', num_step=10)),
     "sample_cfg: sampler 'ddim' takes no option num_step (its options: clip_denoised, eta, "
     'spacing; the '
     'sampling settings: sampler, num_steps, cfg_scale, guidance_channels, precision); did '
     'you mean '
     'num_steps?'),
    (lambda c: c.update(sample_cfg=dict(sampler='ddim', precision='bfloat16')),
     "sample_cfg: precision='bfloat16': sampling precisions are fp32, tf32, bf16, fp16"),
    (lambda c: c.update(sample_cfg=dict(sampler='dpm')),
     "sample_cfg: unknown sampler 'dpm' for GaussianDiffusion; choose one of"),
    (lambda c: c.custom_hooks.append(dict(type='SampleVisualizationHook', interval=100,
                                          sample_cfg=dict(etta=0.5))),
     "custom_hooks[2].sample_cfg: sampler 'ddim' takes no option etta"),
    # what the hooks pass themselves (a TypeError 'got multiple values' at sampling)
    (lambda c: c.update(sample_cfg=dict(sampler='ddim', progress=True)),
     "sample_cfg: sampler 'ddim' takes no option progress"),
])
def test_mistakes_the_runner_met_late_or_never_are_refused(edit, expected):
    cfg = load_config(DEMO)
    edit(cfg)
    assert refused(cfg).startswith(expected)


def test_what_the_runner_and_wrappers_take_is_not_refused():
    """Keys read beside the class (priority, convert_to_iter_based, paramwise_cfg),
    those a subclass passes on (AmpOptimWrapper's to OptimWrapper), an EMA hook's
    average's, a scheduler dict of one entry, a custom optimizer constructor's own."""
    cfg = load_config(DEMO)
    cfg.optim_wrapper.update(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic',
                             accumulative_counts=2, paramwise_cfg=dict(norm_decay_mult=0.0))
    cfg.custom_hooks[0].update(interval=2, strict_load=True, begin_iter=10)
    cfg.param_scheduler = dict(type='LinearLR', start_factor=0.1, by_epoch=True, end=2,
                               convert_to_iter_based=True)
    cfg.custom_hooks.append(dict(type='EMAHook', ema_type='StochasticWeightAverage',
                                 priority='ABOVE_NORMAL'))
    cfg.custom_hooks[0]['priority'] = 49  # a number, as mmengine takes it
    cfg.optim_wrapper.clip_grad = dict(type='value', clip_value=0.5)
    cfg.update(randomness=dict(seed=1, diff_rank_seed=True, deterministic=False),
               env_cfg=dict(cudnn_benchmark=True, dist_cfg=dict(backend='gloo')))
    cfg.train_dataloader.update(pin_memory=True, prefetch_factor=2,
                                num_batch_per_epoch=10)
    cfg.update(num_frames=16, data_root='data/x', train_cfgs_note='mine')  # own variables
    cfg.train_cfg.max_iters = 4e5  # a float whole number, as mmengine takes it
    check_training_keys(cfg)
    # our EMA hooks (ShardedEMAHook builds its average itself), and an optimizer whose
    # **kwargs go to the optimizer it builds, not to a base (review of this check)
    cfg.custom_hooks += [dict(type='ShardedEMAHook', momentum=1e-4, begin_iter=3),
                         dict(type='FP32EMAHook', momentum=1e-4, strict_load=True)]
    saved = cfg.optim_wrapper.optimizer
    cfg.optim_wrapper.optimizer = dict(type='ZeroRedundancyOptimizer',
                                       optimizer_type='AdamW', lr=1e-4)
    check_training_keys(cfg)
    cfg.optim_wrapper.optimizer = saved
    cfg.custom_hooks = cfg.custom_hooks[:-2]
    cfg.optim_wrapper.update(constructor='MyConstructor', anything=1)
    check_training_keys(cfg)  # a constructor of its own reads keys of its own
    cfg.custom_hooks[-1]['momentum'] = 0.1  # StochasticWeightAverage takes no momentum
    assert "unknown config key 'momentum' for EMAHook" in refused(cfg)


def built_entries(cfg) -> list:
    """The entries of a config that the Runner builds from a registry."""
    loader = cfg.train_dataloader
    schedulers = cfg.get('param_scheduler') or []
    return ([cfg.train_cfg, cfg.optim_wrapper, cfg.optim_wrapper.optimizer, loader.dataset]
            + [loader[k] for k in ('sampler', 'collate_fn') if isinstance(loader.get(k), dict)]
            + ([schedulers] if isinstance(schedulers, dict) else list(schedulers))
            + [h for h in (cfg.get('default_hooks') or {}).values() if isinstance(h, dict)]
            + list(cfg.get('custom_hooks') or []))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_every_entry_of_every_config_is_checked(path):
    """Every shipped config passes, and a key added to any entry the Runner builds
    from a registry is refused: no entry is passed over (a class whose keyword
    arguments cannot be followed would be)."""
    cfg = load_config(path)
    check_training_keys(cfg)
    for i, entry in enumerate(built_entries(cfg)):
        typo = copy.deepcopy(cfg)
        built_entries(typo)[i]['zz_typo'] = 1
        assert "unknown config key 'zz_typo'" in refused(typo), entry


def test_pipeline_transforms_and_the_visualizer_are_checked():
    """A transform's or the visualizer's typo failed after the Runner's start-up
    output (about 240 lines), leaving a work dir behind."""
    cfg = load_config(osp.join(REPO, 'configs/video_dit/video_dit_tiny4_1xb1_overfit_bikes.py'))
    check_training_keys(cfg)
    cfg.train_dataloader.dataset.pipeline[0]['frame_strid'] = 2
    assert refused(cfg).startswith(
        "train_dataloader.dataset.pipeline[0]: unknown config key 'frame_strid' for "
        'SampleClipIndices; did you mean frame_stride')
    cfg.train_dataloader.dataset.pipeline[0].pop('frame_strid')
    cfg.train_dataloader.dataset.pipeline[1]['type'] = 'DecodeFrame'
    assert refused(cfg).startswith("train_dataloader.dataset.pipeline[1]: unknown type "
                                   "'DecodeFrame' in the transform registry; did you mean "
                                   'DecodeFrames')
    cfg = load_config(DEMO)
    cfg.visualizer.vis_backends[0]['type'] = 'LocalVisBackendd'
    assert refused(cfg).startswith("visualizer.vis_backends[0]: unknown type "
                                   "'LocalVisBackendd'")
    cfg = load_config(DEMO)
    cfg.visualizer['vis_backend'] = []
    assert refused(cfg).startswith("visualizer: unknown config key 'vis_backend' for "
                                   'Visualizer; did you mean vis_backends')
    # a backend whose package is missing: an ImportError traceback after start-up
    import importlib.util
    from unittest import mock
    cfg = load_config(DEMO)
    cfg.visualizer.vis_backends[0]['type'] = 'TensorboardVisBackend'
    real = importlib.util.find_spec
    with mock.patch('importlib.util.find_spec',
                    lambda name, *a: None if name == 'tensorboard' else real(name, *a)):
        assert refused(cfg) == ('visualizer.vis_backends[0]: TensorboardVisBackend needs the '
                                'tensorboard package, which is not installed: pip install '
                                'tensorboard')


def test_a_top_level_key_one_letter_off_a_section_is_noted(capsys):
    """trian_cfg was taken as a variable of the config's own and left unused without a
    word; a note, since a variable of one's own may be that close (vae_cfg)."""
    cfg = load_config(DEMO)
    cfg.update(trian_cfg=dict(max_iters=10), vae_cfg=dict(type='X'), data_root='d')
    check_training_keys(cfg)
    err = capsys.readouterr().err
    assert 'note: trian_cfg is not a section the Runner or the tools read; if it stands ' \
           'for train_cfg, rename it' in err
    assert 'note: vae_cfg' in err and 'data_root' not in err


def test_sample_cfg_of_an_objective_with_loss_and_sample_alone_is_left_to_it():
    """An objective of one's own needs loss and sample only: the sample_cfg check read
    its samplers() and sample's sampler argument (KeyError / AttributeError)."""
    class LossAndSampleOnly:  # (given as the class itself: nothing registered)
        def loss(self, model, x0, model_kwargs=None):
            return {}

        def sample(self, model_fn, noise, model_kwargs, num_steps=10, **kwargs):
            return noise
    cfg = load_config(DEMO)
    cfg.model.diffusion = dict(type=LossAndSampleOnly)
    cfg.sample_cfg = dict(num_steps=10, sampler='euler')
    check_training_keys(cfg)


def test_a_sampling_hook_guiding_a_denoiser_without_forward_with_cfg_is_refused():
    """A denoiser of one's own without forward_with_cfg and a sampling hook under the
    config's sample_cfg.cfg_scale=2: the run stopped at the hook's first interval, with
    advice to give --cfg-scale 1, which train.py does not have. (The class is given
    itself: nothing is registered, so nothing leaks into later tests.)"""
    import torch

    class NoGuidanceDenoiser31(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
    cfg = load_config(DEMO)
    cfg.model.denoiser = dict(type=NoGuidanceDenoiser31)
    cfg.sample_cfg = dict(sampler='ddim', num_steps=4, cfg_scale=2.0)
    cfg.custom_hooks.append(dict(type='SampleVisualizationHook', interval=10))
    assert refused(cfg).startswith(
        'custom_hooks[2] (SampleVisualizationHook) samples with guidance '
        '(sample_cfg.cfg_scale=2) but model.denoiser NoGuidanceDenoiser31 has no '
        'forward_with_cfg: set sample_cfg.cfg_scale=1')
    cfg.custom_hooks[-1]['sample_cfg'] = dict(cfg_scale=1.0)
    check_training_keys(cfg)


def _own_visualization_hook():
    """A subclass of SampleVisualizationHook (given as the class: nothing registered)."""
    from mmsora.engine.hooks import SampleVisualizationHook

    class OwnVisualizationHookF2(SampleVisualizationHook):
        pass
    return OwnVisualizationHookF2


@pytest.mark.parametrize('hook, name', [
    ('mmsora.SampleVisualizationHook', 'SampleVisualizationHook'),
    ('SampleVisualizationHook', 'SampleVisualizationHook'),
    ('class', 'SampleVisualizationHook'),
    ('subclass', 'OwnVisualizationHookF2'),
], ids=['scoped', 'name', 'class', 'subclass'])
def test_a_sampling_hook_is_found_as_its_build_finds_it(hook, name):
    """The guidance check read the hook's exact type name: a scoped
    'mmsora.SampleVisualizationHook', the class or a subclass sampled with guidance a
    denoiser without forward_with_cfg, and the run stopped at the hook's first interval."""
    import torch

    from mmsora.engine.hooks import SampleVisualizationHook

    class NoGuidanceDenoiserF2(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
    kind = dict(zip(('class', 'subclass'), (SampleVisualizationHook,
                                            _own_visualization_hook()))).get(hook, hook)
    cfg = load_config(DEMO)
    cfg.model.denoiser = dict(type=NoGuidanceDenoiserF2)
    cfg.sample_cfg = dict(sampler='ddim', num_steps=4, cfg_scale=2.0)
    cfg.custom_hooks.append(dict(type=kind, interval=10))
    i = len(cfg.custom_hooks) - 1
    assert refused(cfg) == (
        f'custom_hooks[{i}] ({name}) samples with guidance (sample_cfg.cfg_scale=2) but '
        'model.denoiser NoGuidanceDenoiserF2 has no forward_with_cfg: set '
        'sample_cfg.cfg_scale=1, or add forward_with_cfg as DiT has it (README, "Your own '
        'modules")')
    cfg.custom_hooks[i]['sample_cfg'] = dict(cfg_scale=1.0)
    check_training_keys(cfg)


def test_the_model_is_left_to_a_caller_that_checked_it():
    """tools/train.py checks the model (its types too) before its build on the meta
    device, then the rest with check_model=False: the model was checked twice a start."""
    cfg = load_config(DEMO)
    cfg.model.denoiser['depth'] = 'three'
    assert refused(cfg) == ("model.denoiser.depth must be a whole number (int), got "
                            "'three' (a str)")
    check_training_keys(cfg, check_model=False)


@pytest.fixture
def no_guidance_denoiser():
    """A denoiser of one's own without forward_with_cfg, in the model registry for the
    test (removed after it); its name."""
    import torch

    from mmsora.registry import MODELS

    class NoGuidanceDenoiserF7(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
    MODELS.register_module(module=NoGuidanceDenoiserF7)
    yield 'NoGuidanceDenoiserF7'
    MODELS._module_dict.pop('NoGuidanceDenoiserF7', None)


@pytest.mark.parametrize('section, base, where, scale', [
    (dict(sample_cfg=dict(cfg_scale=1.5)), None, 'evaluation.sample_cfg.cfg_scale', '1.5'),
    (dict(sample_cfg=dict(num_steps=4)), 4.0, 'sample_cfg.cfg_scale', '4'),
    (dict(seed=3), 4.0, 'sample_cfg.cfg_scale', '4'),
], ids=['its-own', 'the-base-under-its-own', 'the-base'])
def test_an_evaluation_section_guiding_a_denoiser_without_forward_with_cfg_is_refused(
        no_guidance_denoiser, section, base, where, scale):
    """The config's evaluation section (tools/test.py's: evaluation.sample_cfg over the
    config's sample_cfg) sampling with guidance a denoiser without forward_with_cfg:
    the sampling hooks alone were judged, and tools/test.py stopped at its first
    batch, once the weights had loaded."""
    cfg = load_config(DEMO)
    cfg.model.denoiser = dict(type=no_guidance_denoiser)
    cfg.sample_cfg = dict(sampler='ddim', num_steps=4,
                          cfg_scale=1.0 if base is None else base)
    cfg.evaluation = dict(num_samples=8, metrics=[dict(type='InceptionScore')], **section)
    assert refused(cfg) == (
        f'evaluation (tools/test.py) samples with guidance ({where}={scale}) but '
        f'model.denoiser NoGuidanceDenoiserF7 has no forward_with_cfg: set {where}=1, or '
        'add forward_with_cfg as DiT has it (README, "Your own modules")')
    cfg.evaluation.sample_cfg = dict(cfg.evaluation.get('sample_cfg') or {},
                                     cfg_scale=1.0)  # without guidance
    check_training_keys(cfg)


def test_an_evaluation_section_guiding_a_denoiser_with_forward_with_cfg_passes():
    """DiT has forward_with_cfg: the demo's evaluation may guide it."""
    cfg = load_config(DEMO)
    cfg.evaluation = dict(num_samples=8, metrics=[dict(type='InceptionScore')],
                          sample_cfg=dict(cfg_scale=1.5))
    check_training_keys(cfg)


@pytest.mark.parametrize('where, value', [
    ('sample_cfg', 'ddim'), ('sample_cfg', 5),
    ('custom_hooks[0].sample_cfg', 'ddim'), ('evaluation.sample_cfg', ['ddim'])])
def test_a_sample_cfg_that_is_no_dict_is_refused_at_the_start(where, value):
    """Taken as {} by the start's checks, it stopped the run at a sampling hook's first
    samples (review aq)."""
    cfg = load_config(DEMO)
    if where == 'sample_cfg':
        cfg.sample_cfg = value
    elif where.startswith('custom_hooks'):
        cfg.custom_hooks = [dict(type='SampleVisualizationHook', sample_cfg=value)]
    else:
        cfg.evaluation = dict(sample_cfg=value)
    assert refused(cfg).startswith(f'{where} must be a dict of sampling settings')
