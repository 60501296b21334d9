"""A SiT user's and a Stable Cascade / diffusers user's first day (walk-throughs): their
flags on tools/train.py and tools/infer.py, their names in --cfg-options, and
top-level keys of theirs that were set and never read."""
import inspect
import os.path as osp
import re

import pytest

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import UserError
from mmsora.utils.config_loading import load_config

SIT = 'configs/sit/sit_xl2_8xb32_400k_imagenet256.py'
CASCADE = 'configs/stable_cascade/stable_cascade_video_lite_1xb1_100k_clips1024.py'


def _hints(capsys, sentences=None):
    """The '(did you mean A for --x; B for --y?)' of the parser's one line, by flag;
    the sentences said after it (hints that are no 'did you mean') go to
    ``sentences``."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # (not argparse's usage block)
    found = re.fullmatch(r'\S+: error: unrecognized arguments: [^(]*'
                         r'(?:\(did you mean (.*)\?\))?((?:; .*)?); see (?:python )?\S+ '
                         r'--help', err.strip())
    meant, said = found.groups()
    if sentences is not None:
        sentences.extend(said.split('; ')[1:])
    return {part.rsplit(' for ', 1)[1]: part.rsplit(' for ', 1)[0]
            for part in (meant or '').split('; ') if part}


def _refused(parse_args, argv, capsys, sentences=None):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    return _hints(capsys, sentences)


def test_sit_sample_flags_say_what_to_give(capsys, repo_root):
    """SiT's sample.py flags on tools/infer.py: the sampler's were argparse's bare
    'unrecognized arguments', --prediction was 'did you mean --precision' and
    --sample-eps 'did you mean --sampler'."""
    from tools.infer import parse_args
    hints = _refused(parse_args, [
        'run', '--atol', '1e-6', '--rtol', '1e-3', '--diffusion-form', 'sigma',
        '--diffusion-norm', '1', '--last-step', 'Mean', '--last-step-size', '0.04'], capsys)
    dopri5 = '--sampler-options atol=1e-6 rtol=1e-3 (--sampler ode_dopri5)'
    sde = '--sampler sde_euler or sde_heun'
    assert hints == {
        '--atol': dopri5, '--rtol': dopri5,
        '--diffusion-form': f'--sampler-options diffusion_form=sigma ({sde})',
        '--diffusion-norm': f'--sampler-options diffusion_norm=1.0 ({sde})',
        '--last-step': f'--sampler-options last_step=Mean (or Tweedie, Euler, None: {sde})',
        '--last-step-size': f'--sampler-options last_step_size=0.04 ({sde})'}
    sentences = []
    hints = _refused(parse_args, [
        'run', '--likelihood', '--reverse', '--path-type', 'Linear', '--prediction',
        'velocity', '--loss-weight', 'velocity', '--train-eps', '0', '--sample-eps', '1e-3'],
        capsys, sentences)
    likelihood = ("model.diffusion.log_likelihood(...) from Python (docs/sit.md, "
                  "'Log-likelihood (ODE)': no tool computes it)")
    trained = 'the one the model was trained with'
    assert hints == {
        '--likelihood': likelihood, '--reverse': likelihood,
        '--path-type': f'--cfg-options model.diffusion.path=Linear (or GVP, VP: {trained})',
        '--prediction': '--cfg-options model.diffusion.prediction=velocity (or score, noise: '
                        f'{trained})',
        '--sample-eps': '--cfg-options model.diffusion.sample_eps=E'}
    # training's alone: a sentence each, not 'did you mean nothing (...) for --loss-weight'
    assert sentences == [
        '--loss-weight is the training setting model.diffusion.loss_weight: give '
        '--cfg-options model.diffusion.loss_weight=velocity where a model trains (sampling '
        'does not read it)',
        '--train-eps is the training setting model.diffusion.train_eps: give --cfg-options '
        'model.diffusion.train_eps=E where a model trains (sampling does not read it)']
    # the names the hints give are Transport's
    from mmsora.diffusion import Transport
    assert '## Log-likelihood (ODE)' in open(osp.join(repo_root, 'docs/sit.md')).read()
    assert callable(Transport.log_likelihood)
    assert {'atol', 'rtol'} == set(Transport.SAMPLER_OPTIONS['ode_dopri5'])
    assert {'diffusion_form', 'diffusion_norm', 'last_step', 'last_step_size'} == set(
        Transport.SAMPLER_OPTIONS['sde_euler'])
    assert {'path', 'prediction', 'loss_weight', 'train_eps', 'sample_eps'} <= set(
        inspect.signature(Transport).parameters)


def test_sit_train_flags_and_model_name_say_what_to_give(capsys, repo_root):
    """SiT's train.py flags on tools/train.py were argparse's bare line; --model
    SiT-XL/2 was pointed to the DiT-XL/2 config."""
    from tools.train import parse_args
    hints = _refused(parse_args, [
        'cfg.py', '--path-type', 'GVP', '--prediction', 'noise', '--loss-weight', 'likelihood',
        '--train-eps', '1e-5', '--sample-eps', '1e-3', '--model', 'SiT-XL/2'], capsys)
    assert hints == {
        '--path-type': '--cfg-options model.diffusion.path=Linear (or GVP, VP)',
        '--prediction': '--cfg-options model.diffusion.prediction=velocity (or score, noise)',
        '--loss-weight': '--cfg-options model.diffusion.loss_weight=velocity (or likelihood: '
                         'with prediction=score or noise only)',
        '--train-eps': '--cfg-options model.diffusion.train_eps=E',
        '--sample-eps': '--cfg-options model.diffusion.sample_eps=E',
        '--model': f'a config ({SIT}: SiT-XL/2)'}
    # another size: the SiT recipe with that DiT's denoiser; DiT names their config
    hints = _refused(parse_args, ['cfg.py', '--model=SiT-B/4'], capsys)
    b4 = 'configs/dit/dit_b4_8xb32_400k_imagenet256.py'
    assert hints == {'--model': f'a config ({SIT} with the model.denoiser of {b4}: SiT-B/4 is '
                                "DiT-B/4 with SiT's objective)"}
    assert _refused(parse_args, ['cfg.py', '--model', 'DiT-L/8'], capsys) == {
        '--model': 'a config (configs/dit/dit_l8_8xb32_400k_imagenet256.py: DiT-L/8)'}
    from mmsora.utils.foreign_flags import model_config
    for size in ('S', 'B', 'L', 'XL'):
        for patch in '248':
            for family in ('DiT', 'SiT'):
                named = re.findall(r'configs/\S+\.py', model_config(f'{family}-{size}/{patch}'))
                assert named and all(osp.isfile(osp.join(repo_root, p)) for p in named)
    # the keys the hints name are the SiT config's
    cfg = load_config(osp.join(repo_root, SIT))
    apply_cfg_options(cfg, ['model.diffusion.path=GVP', 'model.diffusion.prediction=noise',
                            'model.diffusion.loss_weight=likelihood',
                            'model.diffusion.train_eps=1e-5', 'model.diffusion.sample_eps=1e-3'])
    from mmsora.registry import DIFFUSION
    transport = DIFFUSION.build(cfg.model.diffusion)
    assert type(transport.path).__name__ == 'GVPPath'
    assert transport.prediction == 'noise' and transport.train_eps == 1e-5


def test_stable_cascade_and_diffusers_sample_flags_say_what_to_give(capsys):
    """diffusers' pipeline arguments as tools/infer.py flags: argparse's bare line."""
    from tools.infer import parse_args
    hints = _refused(parse_args, [
        'run', '--guidance-scale', '4', '--guidance_scale', '4', '--num-inference-steps', '20',
        '--prior-guidance-scale', '4', '--prior-num-inference-steps', '20',
        '--negative-prompt', 'blurry', '--height', '512', '--width', '512',
        '--num-images-per-prompt', '2'], capsys)
    one_set = ('mmsora samples Stage C with one --cfg-scale and --steps, Stage B with '
               '--cfg-options model.vae.guidance_scale=S model.vae.num_steps=N')
    assert hints == {
        '--guidance-scale': '--cfg-scale', '--guidance_scale': '--cfg-scale',
        '--num-inference-steps': '--steps',
        '--prior-guidance-scale': f'--cfg-scale ({one_set})',
        '--prior-num-inference-steps': f'--steps ({one_set})',
        '--negative-prompt': "--cfg-scale alone (no negative prompts here: guidance pushes "
                             "away from the denoiser's null caption, Stable Cascade's zeroed "
                             "one, VideoDiT's learned one)",
        '--height': '--resolution HxW', '--width': '--resolution HxW',
        '--num-images-per-prompt': '--num-samples N (in all: the prompts are cycled to N)'}
    # Stage B's settings are the decoder's arguments
    from mmsora.models.vaes.stable_cascade_decoder import StableCascadeDecoder
    assert {'guidance_scale', 'num_steps'} <= set(
        inspect.signature(StableCascadeDecoder).parameters)


def test_sit_mode_word_and_the_decoder_guidance_say_what_to_give(capsys, repo_root):
    """SiT's ``sample.py SDE`` as a positional was argparse's bare 'unrecognized
    arguments: SDE'; diffusers' --decoder-guidance-scale had no hint while
    --prior-guidance-scale had one."""
    from tools.infer import parse_args
    assert _refused(parse_args, ['run', 'SDE', '--cfg_scale', '1.5'], capsys) == {
        'SDE': '--sampler sde_euler', '--cfg_scale': '--cfg-scale'}
    assert _refused(parse_args, ['run', 'ODE'], capsys) == {'ODE': '--sampler ode_dopri5'}
    # a flag's value is no mode word
    assert _refused(parse_args, ['run', '--mode', 'SDE'], capsys) == {}
    assert _refused(parse_args, ['run', '--decoder-guidance-scale', '4'], capsys) == {
        '--decoder-guidance-scale': "--cfg-options model.vae.guidance_scale=S (Stage B's "
                                    "guidance: --cfg-scale is Stage C's)"}
    # the samplers docs/sit.md gives for SiT's modes, and tools/train.py (no --sampler)
    # names none
    sit = open(osp.join(repo_root, 'docs/sit.md')).read()
    assert ('`sample.py SDE` = `--sampler sde_euler --steps 250`' in sit
            and '`sample.py ODE` = `--sampler ode_dopri5`' in sit)
    from tools.train import parse_args as train_args
    assert _refused(train_args, ['cfg.py', 'SDE'], capsys) == {}


def test_stable_cascade_train_flags_say_what_to_give(capsys, repo_root):
    """Stable Cascade's training settings as tools/train.py flags: argparse's bare line."""
    from tools.train import parse_args
    hints = _refused(parse_args, [
        'cfg.py', '--lr', '1e-4', '--batch-size', '4', '--updates', '10', '--save-every', '5',
        '--grad-accum-steps', '2', '--model-version', '1B'], capsys)
    assert hints == {
        '--lr': '--cfg-options optim_wrapper.optimizer.lr=LR',
        '--batch-size': '--cfg-options train_dataloader.batch_size=N (per process) or '
                        'global_batch_size=N (all processes)',
        '--updates': '--cfg-options train_cfg.max_iters=N',
        '--save-every': '--cfg-options default_hooks.checkpoint.interval=N',
        '--grad-accum-steps': '--cfg-options optim_wrapper.accumulative_counts=K',
        '--model-version': 'a config under configs/stable_cascade/ (the lite prior, '
                           'stable_cascade_video_lite_1xb1_100k_clips1024.py, or for the full one '
                           'its copy with unet=STAGE_C and pretrained_subfolder=prior)'}
    assert osp.isfile(osp.join(repo_root, CASCADE))
    from mmsora.models.denoisers import stable_cascade_video
    assert isinstance(stable_cascade_video.STAGE_C, dict)
    # the keys the hints name are the lite config's, and its classes take them
    from mmsora.utils.config_keys import check_training_keys
    cfg = load_config(osp.join(repo_root, CASCADE))
    apply_cfg_options(cfg, [
        'optim_wrapper.optimizer.lr=2e-4', 'train_dataloader.batch_size=2',
        'global_batch_size=2', 'train_cfg.max_iters=10', 'default_hooks.checkpoint.interval=5',
        'optim_wrapper.accumulative_counts=2', 'model.diffusion.loss_weight=p2',
        'model.vae.guidance_scale=2.0', 'model.vae.num_steps=4'], schedule_note=False)
    check_training_keys(cfg)
    assert cfg.optim_wrapper.accumulative_counts == 2 and cfg.train_cfg.max_iters == 10


def test_another_projects_sampling_names_in_sample_cfg(repo_root):
    """sample_cfg.guidance_scale=4 (diffusers' name) was taken for a sampler option and
    refused with 'did you mean guidance_channels?'."""
    cfg = load_config(osp.join(repo_root, SIT))
    with pytest.raises(UserError, match=r'^--cfg-options sample_cfg.guidance_scale=4: the '
                                        r'sampling settings have no guidance_scale \(another '
                                        r"project's name\); did you mean sample_cfg.cfg_scale\?$"):
        apply_cfg_options(cfg, ['sample_cfg.guidance_scale=4'])
    with pytest.raises(UserError, match=r'did you mean sample_cfg.num_steps\?$'):
        apply_cfg_options(cfg, ['sample_cfg.num_inference_steps=50'])
    cfg.custom_hooks.append(dict(type='SampleVisualizationHook', interval=10,
                                 sample_cfg=dict(num_steps=5)))
    with pytest.raises(UserError, match=r'did you mean custom_hooks.2.sample_cfg.cfg_scale\?$'):
        apply_cfg_options(cfg, ['custom_hooks.2.sample_cfg.guidance_scale=4'])
    with pytest.raises(UserError, match=r'^--cfg-options guidance_scale: the config has no '
                                        r'top-level guidance_scale \(it would be set and never '
                                        r'read\); did you mean sample_cfg.cfg_scale\?$'):
        apply_cfg_options(cfg, ['guidance_scale=4'])
    # Stage B's guidance_scale is the decoder's own argument: set
    cascade = load_config(osp.join(repo_root, CASCADE))
    apply_cfg_options(cascade, ['model.vae.guidance_scale=2.0', 'sample_cfg.cfg_scale=5'])
    assert cascade.model.vae.guidance_scale == 2.0 and cascade.sample_cfg.cfg_scale == 5


def test_a_new_top_level_key_of_another_project_is_refused(repo_root, capsys):
    """--cfg-options model_version=1B adaptive_loss_weight=True updates=10 ema_beta=0.9
    (Stable Cascade's config keys) were dumped with the run and never read."""
    cfg = load_config(osp.join(repo_root, CASCADE))
    with pytest.raises(UserError, match=r"^--cfg-options updates=10: the config has no "
                                        r"top-level key 'updates' \(it would be set and never "
                                        r"read\); set train_cfg.max_iters=10 instead$"):
        apply_cfg_options(cfg, ['updates=10'])
    for option, hint in [
            ('model_version=1B', 'use a config under configs/stable_cascade/ '),
            ('adaptive_loss_weight=True', 'set model.diffusion.loss_weight=p2 (or none: '),
            ('ema_beta=0.9', 'set custom_hooks.I.momentum=1-beta (the EMAHook'),
            ('save_every=100', 'set default_hooks.checkpoint.interval=100 instead'),
            ('epochs=3', 'set train_cfg.max_iters=N (iterations: epochs')]:
        key = option.partition('=')[0]
        with pytest.raises(UserError, match=rf"^--cfg-options {re.escape(option)}: the config "
                                            rf"has no top-level key '{key}' .*; "
                                            rf'{re.escape(hint)}'):
            apply_cfg_options(cfg, [option])
        assert key not in cfg
    # top-level keys the config has (its variables too), and those the Runner and the
    # tools read, pass
    apply_cfg_options(cfg, [
        'num_frames=16', 'work_dir=/tmp/w', 'randomness.seed=3', 'env_cfg.cudnn_benchmark=True',
        'custom_hooks=[]', 'load_from=a.pth', 'resume=True', 'global_batch_size=2',
        'sample_cfg.num_steps=4', 'evaluation=None', 'log_level=DEBUG', 'launcher=none'])
    assert cfg.global_batch_size == 2 and cfg.randomness.seed == 3 and cfg.custom_hooks == []
    # a new key no table knows is added (code of one's own may read it), with a note
    capsys.readouterr()
    apply_cfg_options(cfg, ['my_hook_setting_sc=3'])
    assert cfg.my_hook_setting_sc == 3
    assert ("note: --cfg-options my_hook_setting_sc=3: the config has no top-level key "
            "'my_hook_setting_sc'; it is added") in capsys.readouterr().err


def test_every_hint_reads_as_one_part_of_the_line(repo_root):
    """The hints are joined with '; ' after 'did you mean': none holds one itself, and
    each names a flag that a tool has."""
    import glob
    from mmsora.utils.foreign_flags import FOREIGN_HINTS
    flags = set()
    for path in glob.glob(osp.join(repo_root, 'tools/*.py')):
        flags.update(re.findall(r"add_argument\('(--[\w-]+)'", open(path).read()))
    for flag, hints in FOREIGN_HINTS.items():
        for needs, text in (hints,) if isinstance(hints[0], str) else hints:
            assert '; ' not in text, flag
            assert needs in flags, (flag, needs)


def test_sit_train_logging_flags_say_what_to_give(capsys):
    """SiT's train.py --sample-every and --wandb on tools/train.py: argparse's bare
    'unrecognized arguments' (walk w2)."""
    from tools.train import parse_args
    hints = _refused(parse_args, ['cfg.py', '--sample-every', '10000', '--wandb'], capsys)
    assert hints == {
        '--sample-every': "dict(type='SampleVisualizationHook', interval=N) in the "
                          "config's custom_hooks (README: Samples during training)",
        '--wandb': '--cfg-options visualizer.vis_backends.0.type=WandbVisBackend (needs '
                   'pip install wandb)'}


def test_sit_train_cfg_scale_says_the_training_samples_guidance(capsys, repo_root):
    """SiT's train.py --cfg-scale (the guidance of its samples during training) on
    tools/train.py: argparse's bare 'unrecognized arguments'."""
    from tools.train import parse_args
    said = ("(the guidance of a SampleVisualizationHook's samples, and the run's default in "
            "tools/infer.py)")
    assert _refused(parse_args, ['cfg.py', '--cfg-scale', '1.5', '--sample-every', '10'],
                    capsys) == {
        '--cfg-scale': f'--cfg-options sample_cfg.cfg_scale=1.5 {said}',
        '--sample-every': "dict(type='SampleVisualizationHook', interval=N) in the config's "
                          "custom_hooks (README: Samples during training)"}
    assert _refused(parse_args, ['cfg.py', '--cfg_scale=4.0'], capsys) == {
        '--cfg_scale': f'--cfg-options sample_cfg.cfg_scale=4.0 {said}'}
    assert _refused(parse_args, ['cfg.py', '--cfg-scale'], capsys) == {
        '--cfg-scale': f'--cfg-options sample_cfg.cfg_scale=S {said}'}
    # the SiT config sets it there, and the hook samples with the option's value
    from types import SimpleNamespace

    from mmsora.engine.hooks.sample_visualization_hook import SampleVisualizationHook
    cfg = load_config(osp.join(repo_root, SIT))
    assert cfg.sample_cfg.cfg_scale == 4.0  # (SiT's --cfg-scale default)
    apply_cfg_options(cfg, ['sample_cfg.cfg_scale=1.5'])
    hook = SampleVisualizationHook(interval=10)
    assert hook._sample_cfg(SimpleNamespace(cfg=cfg))['cfg_scale'] == 1.5


def test_sit_sampling_method_names_the_sampler_of_its_mode(capsys, repo_root):
    """SiT's --sampling-method METHOD was told --sampler (tools/infer.py) or
    sampler=NAME (tools/test.py) whatever the method and the mode word given with it;
    now the sampler here that they pick, or both where no mode word is given."""
    from tools.infer import parse_args
    assert _refused(parse_args, ['run', 'SDE', '--sampling-method', 'Heun'], capsys) == {
        'SDE': '--sampler sde_heun', '--sampling-method': '--sampler sde_heun'}
    assert _refused(parse_args, ['run', 'ODE', '--sampling-method', 'dopri5'], capsys) == {
        'ODE': '--sampler ode_dopri5', '--sampling-method': '--sampler ode_dopri5'}
    assert _refused(parse_args, ['run', 'ODE', '--sampling_method=heun2'], capsys) == {
        'ODE': '--sampler ode_heun', '--sampling_method': '--sampler ode_heun'}
    # no mode word: both modes' samplers where both have the method
    assert _refused(parse_args, ['run', '--sampling-method', 'Euler'], capsys) == {
        '--sampling-method': '--sampler sde_euler (SDE) or ode_euler (ODE)'}
    assert _refused(parse_args, ['run', '--sampling-method', 'dopri5'], capsys) == {
        '--sampling-method': '--sampler ode_dopri5'}
    # a torchdiffeq method with no sampler here: the flag alone
    assert _refused(parse_args, ['run', 'ODE', '--sampling-method', 'rk4'], capsys) == {
        'ODE': '--sampler ode_dopri5', '--sampling-method': '--sampler'}
    # tools/test.py, where the mode word is taken for the checkpoint
    from tests.cli_helpers import load_tool
    test_args = load_tool('test').parse_args
    entry = '--cfg-options evaluation.sample_cfg.sampler='
    assert _refused(test_args, ['cfg.py', 'SDE', '--sampling-method', 'Heun'], capsys) == {
        '--sampling-method': f'{entry}sde_heun'}
    assert _refused(test_args, ['cfg.py', 'ckpt.pt', 'ODE', '--sampling-method', 'Euler'],
                    capsys) == {'ODE': f'{entry}ode_euler',
                                '--sampling-method': f'{entry}ode_euler'}
    assert _refused(test_args, ['cfg.py', '--sampling-method', 'Heun'], capsys) == {
        '--sampling-method': f'{entry}sde_heun (SDE) or ode_heun (ODE)'}
    # the names are Transport's samplers, of the mode each is for
    from mmsora.diffusion import Transport
    from mmsora.utils.foreign_flags import SIT_SAMPLING_METHODS
    for mode, samplers in SIT_SAMPLING_METHODS.items():
        for sampler in samplers.values():
            assert sampler in Transport.SAMPLER_OPTIONS and sampler.startswith(mode.lower())


def test_sampler_options_on_the_evaluation_tool_name_every_entry(capsys, repo_root):
    """``tools/test.py ... --sampler-options atol=1e-6 rtol=1e-3`` (SiT's ODE tolerances)
    was told the entry of atol alone."""
    from tests.cli_helpers import load_tool
    tool = load_tool('test')
    entry = 'evaluation.sample_cfg.'
    assert _refused(tool.parse_args, ['cfg.py', 'ckpt.pt', '--sampler-options', 'atol=1e-6',
                                      'rtol=1e-3', '--cfg_scale', '1.5'], capsys) == {
        '--sampler-options': f'--cfg-options {entry}atol=1e-6 {entry}rtol=1e-3',
        '--cfg_scale': f'--cfg-options {entry}cfg_scale=1.5'}
    assert _refused(tool.parse_args, ['cfg.py', '--sampler-options=atol=1e-5', 'rtol=1e-2'],
                    capsys) == {
        '--sampler-options': f'--cfg-options {entry}atol=1e-5 {entry}rtol=1e-2'}
    # a word after the entries is none of them (it was: evaluation.sample_cfg.SDE)
    assert _refused(tool.parse_args, ['cfg.py', 'ckpt.pt', '--sampler-options', 'atol=1e-6',
                                      'SDE'], capsys)['--sampler-options'] == (
        f'--cfg-options {entry}atol=1e-6')
    # the entries given as said are the settings the evaluation samples with
    from mmsora.utils.config_keys import check_sample_settings_of
    cfg = load_config(osp.join(repo_root, SIT))
    cfg.evaluation = load_config(osp.join(
        repo_root, 'configs/_base_/evaluation/fid50k_imagenet256.py')).evaluation
    apply_cfg_options(cfg, [f'{entry}sampler=ode_dopri5', f'{entry}atol=1e-6',
                            f'{entry}rtol=1e-3'])
    settings = tool.evaluation_sample_cfg(cfg, cfg.evaluation)
    check_sample_settings_of(cfg.model, settings)
    assert (settings['atol'], settings['rtol']) == (1e-6, 1e-3)
