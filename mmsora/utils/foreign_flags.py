"""Other projects' flags and config keys (DiT's, SiT's, diffusers', Stable Cascade's,
Open-Sora's) and what to give mmsora instead: the hints of the tools' argument parser
(cli.ArgumentParser) and of ``--cfg-options`` (cfg_options.py)."""
import re

__all__ = ['EMA_HOOKS', 'FOREIGN_FLAGS', 'FOREIGN_HINTS', 'FOREIGN_KEYS', 'FOREIGN_VALUES',
           'FOREIGN_WORDS', 'HOOK_FLAGS', 'SIT_SAMPLING_METHODS', 'WHOLE_NUMBER', 'Sentence',
           'model_config', 'foreign_key_hint', 'hook_stand_ins', 'one_minus_decay',
           'sit_sampler', 'steps_between_updates', 'whole_number']


class Sentence(str):
    """A hint that is a sentence of its own (what to do instead of a flag that has
    nothing to stand for it on this tool), said after the line's 'did you mean'."""


# The reference projects' flags (DiT's and SiT's sample.py / train.py, fast-DiT,
# Open-Sora, diffusers' pipelines) with a different name here: suggested where the
# tool has the target.
FOREIGN_FLAGS = {
    '--ckpt': '--checkpoint', '--num-sampling-steps': '--steps',
    '--sampling-method': '--sampler', '--results-dir': '--work-dir',
    '--global-seed': '--seed', '--resume-from': '--resume', '--ckpt-path': '--checkpoint',
    '--save-dir': '--out', '--per-proc-batch-size': '--batch-size',
    '--guidance-scale': '--cfg-scale', '--num-inference-steps': '--steps',
    # Open-Sora's scripts/inference.py: a file of prompts, one a line (argparse's near
    # match was --prompt, which would sample the file's name as the prompt)
    '--prompt-path': '--prompt-file',
}
# tools/train.py's own flag: a hint that needs it is shown on tools/train.py alone (a
# learning rate or a checkpoint interval means nothing to the sampling tools).
_TRAIN = '--load-from'
# SiT's objective (its train.py and sample.py share these flags): the config's
# model.diffusion (KEY, example, other values, what it is when sampling: True, the one
# the model was trained with; False, a sampling setting; None, not read).
_SIT_OBJECTIVE = {
    '--path-type': ('path', 'Linear', 'GVP, VP', True),
    '--prediction': ('prediction', 'velocity', 'score, noise', True),
    '--loss-weight': ('loss_weight', 'velocity', 'likelihood: with prediction=score or '
                      'noise only', None),
    '--train-eps': ('train_eps', 'E', '', None),
    '--sample-eps': ('sample_eps', 'E', '', False),
}


def _sit_objective_hints(flag, key, value, others, sampling):
    """tools/train.py's hint for SiT's ``flag`` of ``model.diffusion.KEY``, then the
    other tools'."""
    setting = f'--cfg-options model.diffusion.{key}={value}'
    if sampling is None:
        return ((_TRAIN, setting + (f' (or {others})' if others else '')),
                ('--cfg-options', Sentence(f'{flag} is the training setting model.diffusion.'
                                           f'{key}: give {setting} where a model trains '
                                           '(sampling does not read it)')))
    trained = ': the one the model was trained with' if sampling else ''
    return ((_TRAIN, setting + (f' (or {others})' if others else '')),
            ('--cfg-options', setting + (f' (or {others}{trained})' if others else '')))


# SiT's sample.py sampler flags (its defaults): options of the sampler here.
_SIT_SAMPLER_OPTIONS = {
    '--atol': 'atol=1e-6 rtol=1e-3 (--sampler ode_dopri5)',
    '--rtol': 'atol=1e-6 rtol=1e-3 (--sampler ode_dopri5)',
    '--diffusion-form': 'diffusion_form=sigma (--sampler sde_euler or sde_heun)',
    '--diffusion-norm': 'diffusion_norm=1.0 (--sampler sde_euler or sde_heun)',
    '--last-step': 'last_step=Mean (or Tweedie, Euler, None: --sampler sde_euler or sde_heun)',
    '--last-step-size': 'last_step_size=0.04 (--sampler sde_euler or sde_heun)',
}
_SIT_LIKELIHOOD = ("model.diffusion.log_likelihood(...) from Python (docs/sit.md, "
                   "'Log-likelihood (ODE)': no tool computes it)")
_STAGE_C_ONE_SET = ('mmsora samples Stage C with one --cfg-scale and --steps, Stage B '
                    'with --cfg-options model.vae.guidance_scale=S model.vae.num_steps=N')
# Their flags with no one flag here: what to give instead, shown where the tool has
# the flag named first (a tuple of such pairs: the first whose flag the tool has).
# Also read for a --cfg-options top-level key of that name (``updates=10``, Stable
# Cascade's config key): :func:`foreign_key_hint`.
FOREIGN_HINTS = {
    '--ckpt': ('--resume', '--resume CKPT (continue) or --load-from CKPT (new run)'),
    '--ema': ('--no-ema', '--no-ema (EMA weights are the default)'),
    '--global-batch-size': ('--cfg-options', '--cfg-options global_batch_size=N'),
    '--epochs': ('--cfg-options', '--cfg-options train_cfg.max_iters=N (iterations: '
                 'epochs x dataset size / global batch)'),
    # mmengine averages the logged loss over log_processor.window_size steps (50 in
    # default_runtime), not over the logger's interval as DiT's --log-every does
    '--log-every': ('--cfg-options', '--cfg-options default_hooks.logger.interval=N '
                    'log_processor.window_size=N'),
    '--global-seed': ('--cfg-options', '--cfg-options randomness.seed=N'),
    '--num-workers': ('--cfg-options', '--cfg-options train_dataloader.num_workers=N'),
    # DiT's sample.py --image-size picks the checkpoint's size; a DiT's position table
    # makes only that one, which --resolution refuses to change
    '--image-size': (
        ('--resolution', '--resolution S (a DiT makes only the size it was trained at: '
                         'give the run or checkpoint of that size)'),
        ('--cfg-options', '--cfg-options model.denoiser.input_size=S/8 '
                          'model.latent_shape=[4,S/8,S/8] (latents extracted at --image-size '
                          'S)')),
    '--ckpt-every': ('--cfg-options', '--cfg-options default_hooks.checkpoint.interval=N'),
    # SiT's train.py: samples every N steps, logs to Weights & Biases
    '--sample-every': (_TRAIN, "dict(type='SampleVisualizationHook', interval=N) in the "
                       "config's custom_hooks (README: Samples during training)"),
    '--wandb': (_TRAIN, '--cfg-options visualizer.vis_backends.0.type=WandbVisBackend '
                '(needs pip install wandb)'),
    '--feature-path': ('--cfg-options', '--cfg-options train_dataloader.dataset.data_root=DIR'),
    '--data-path': ('--cfg-options', '--cfg-options train_dataloader.dataset.data_root=DIR'),
    # (--model NAME of DiT's and SiT's scripts: the config of NAME, model_config)
    '--model': ('--cfg-options', 'a config (configs/dit/dit_xl2_8xb32_400k_imagenet256.py: '
                'DiT-XL/2)'),
    '--vae': ('--cfg-options', '--cfg-options model.vae.pretrained_path=DIR'),
    '--num-classes': ('--cfg-options', '--cfg-options model.num_classes=N '
                      'model.denoiser.num_classes=N'),
    '--tf32': ('--no-tf32', '--no-tf32 (TF32 is on by default)'),
    # SiT: the objective is the config's, and sampling must use the trained one
    **{flag: _sit_objective_hints(flag, *setting)
       for flag, setting in _SIT_OBJECTIVE.items()},
    **{flag: ('--sampler-options', f'--sampler-options {options}')
       for flag, options in _SIT_SAMPLER_OPTIONS.items()},
    '--likelihood': ('--sampler-options', _SIT_LIKELIHOOD),
    '--reverse': ('--sampler-options', _SIT_LIKELIHOOD),
    # diffusers' Stable Cascade pipelines (their prior_* arguments are Stage C's)
    '--prior-guidance-scale': ('--cfg-scale', f'--cfg-scale ({_STAGE_C_ONE_SET})'),
    '--prior-num-inference-steps': ('--steps', f'--steps ({_STAGE_C_ONE_SET})'),
    # (the decoder's, Stage B's: mmsora's StableCascadeDecoder, the config's model.vae)
    '--decoder-guidance-scale': ('--cfg-options', "--cfg-options model.vae.guidance_scale=S "
                                 "(Stage B's guidance: --cfg-scale is Stage C's)"),
    '--negative-prompt': ('--cfg-scale', "--cfg-scale alone (no negative prompts here: "
                          "guidance pushes away from the denoiser's null caption, Stable "
                          "Cascade's zeroed one, VideoDiT's learned one)"),
    '--height': ('--resolution', '--resolution HxW'),
    '--width': ('--resolution', '--resolution HxW'),
    '--num-images-per-prompt': ('--num-samples', '--num-samples N (in all: the prompts are '
                                'cycled to N)'),
    # Stable Cascade's training config keys (train/train_c.py's yaml), given as flags or
    # as top-level --cfg-options keys; diffusers' training scripts' flags
    '--lr': (_TRAIN, '--cfg-options optim_wrapper.optimizer.lr=LR'),
    '--learning-rate': (_TRAIN, '--cfg-options optim_wrapper.optimizer.lr=LR'),
    '--batch-size': (_TRAIN, '--cfg-options train_dataloader.batch_size=N (per process) or '
                     'global_batch_size=N (all processes)'),
    '--train-batch-size': (_TRAIN, '--cfg-options train_dataloader.batch_size=N (per '
                           'process)'),
    '--updates': (_TRAIN, '--cfg-options train_cfg.max_iters=N'),
    '--max-train-steps': (_TRAIN, '--cfg-options train_cfg.max_iters=N'),
    '--save-every': (_TRAIN, '--cfg-options default_hooks.checkpoint.interval=N'),
    '--checkpointing-steps': (_TRAIN, '--cfg-options default_hooks.checkpoint.interval=N'),
    '--grad-accum-steps': (_TRAIN, '--cfg-options optim_wrapper.accumulative_counts=K'),
    '--gradient-accumulation-steps': (_TRAIN,
                                      '--cfg-options optim_wrapper.accumulative_counts=K'),
    '--mixed-precision': (_TRAIN, '--amp (bf16 where the GPU has it, else fp16)'),
    '--model-version': (_TRAIN, 'a config under configs/stable_cascade/ (the lite prior, '
                        'stable_cascade_video_lite_1xb1_100k_clips1024.py, or for the full one '
                        'its copy with unet=STAGE_C and pretrained_subfolder=prior)'),
    '--adaptive-loss-weight': (_TRAIN, '--cfg-options model.diffusion.loss_weight=p2 (or none: '
                               "Stable Cascade's adaptive weight is not implemented)"),
    '--ema-beta': (_TRAIN, '--cfg-options custom_hooks.I.momentum=1-beta (the EMAHook at '
                   "index I of the config's custom_hooks, or in a config without one, "
                   "dict(type='EMAHook', momentum=1-beta) added to its custom_hooks in "
                   "the file: mmengine's momentum is 1 - decay, per update, and the "
                   "hook's interval is Stable Cascade's ema_iters)"),
    '--ema-iters': (_TRAIN, '--cfg-options custom_hooks.I.interval=K (the EMAHook at index '
                    "I of the config's custom_hooks, or in a config without one, "
                    "dict(type='EMAHook', interval=K) added to its custom_hooks in the "
                    "file: the steps between the average's updates)"),
    '--ema-start-iters': (_TRAIN, '--cfg-options custom_hooks.I.begin_iter=N (the EMAHook '
                          "at index I of the config's custom_hooks, or in a config without "
                          "one, dict(type='EMAHook', begin_iter=N) added to its "
                          'custom_hooks in the file: the iteration the average starts '
                          'at, a copy of the weights before it)'),
}
# A stand-in's mark (cli.ArgumentParser's stand_ins): the flag takes a whole number, and
# another word after it (the config, where the flag came first and its number was taken
# as the config) is no value of it.
WHOLE_NUMBER = 'a whole number'


def whole_number(text: str) -> bool:
    """Whether ``text`` is digits 0-9 alone (str.isdigit takes '²', which int()
    refuses): a value of a :data:`WHOLE_NUMBER` stand-in."""
    return text.isascii() and text.isdigit()


def one_minus_decay(text: str) -> str:
    """A stand-in's mark (cli.ArgumentParser's ``stand_ins``, a callable: our value for
    the one given): mmengine's EMA momentum for Stable Cascade's ``--ema-beta`` decay,
    ``1 - beta`` worked out on the text given, so that it prints as one would write it
    (``0.9999``: ``0.0001``, not float's ``9.999999999998899e-05``). Raises ValueError,
    saying what the flag's value is, for one that is no number strictly between 0 and
    1."""
    from decimal import Decimal, InvalidOperation, localcontext
    what = "Stable Cascade's EMA decay, a number strictly between 0 and 1 such as 0.9999"
    try:
        beta = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(what) from None
    if not beta.is_finite() or not 0 < beta < 1:
        raise ValueError(what)
    # (exact: a beta of k decimals gives a momentum of k decimals at most, up to 1000;
    # one a float reads as 0 or 1, 1e-17's 0.99999999999999999, is refused below, as
    # mmengine's average refuses that momentum)
    with localcontext() as context:
        context.prec = min(max(28, -beta.as_tuple().exponent), 1000)
        momentum = (1 - beta).normalize()
    if not 0 < float(momentum) < 1:  # (as the config reads it: 1e-17's is 1.0)
        raise ValueError(what)
    return format(momentum, 'f')


def steps_between_updates(text: str) -> str:
    """A stand-in's mark (a callable, as :func:`one_minus_decay`): Stable Cascade's
    ``--ema-iters K`` as the EMA hook's ``interval``, a whole number of 1 or more
    (mmengine's average divides by it: 0 stopped at its second update)."""
    if not whole_number(text) or int(text) < 1:
        raise ValueError("the steps between Stable Cascade's EMA updates, a whole number "
                         'of 1 or more')
    return str(int(text))


# Their flags that set a hook (flag: the hook's types, its argument, the placeholder of
# its value, what to know of the hook, and the stand-in's marks: WHOLE_NUMBER, or a
# callable giving our value for theirs, see cli.ArgumentParser): where the config given
# already has that hook in its custom_hooks, tools/train.py says the key of that hook's
# argument (:func:`hook_stand_ins`) instead of FOREIGN_HINTS' line, which adds a hook (a
# second SampleVisualizationHook would sample every round twice) or leaves the index
# to find (Stable Cascade's --ema-beta). The EMA hooks: mmsora's EMAHook (mmengine's,
# 'mmengine.EMAHook', too), and those --deepspeed and --fsdp switch it to; each one's
# momentum is mmengine's: averaged = (1 - momentum) * averaged + momentum * weights.
EMA_HOOKS = ('EMAHook', 'FP32EMAHook', 'ShardedEMAHook')
HOOK_FLAGS = {
    '--sample-every': ('SampleVisualizationHook', 'interval', 'N',
                       'a second one would run beside it', WHOLE_NUMBER),
    # (Stable Cascade's train/base.py averages every ema_iters steps with ema_beta, and
    # copies the weights until ema_start_iters: its finetune_c_1b.yaml has ema_iters
    # 100, ema_beta 0.9; the hook's interval and begin_iter are those two)
    '--ema-beta': (EMA_HOOKS, 'momentum', 'M', "mmengine's momentum is 1 - beta, per "
                   "update, and its interval is Stable Cascade's ema_iters, the steps "
                   'between updates: --ema-iters', one_minus_decay),
    '--ema-iters': (EMA_HOOKS, 'interval', 'K', "the steps between the average's updates",
                    steps_between_updates),
    '--ema-start-iters': (EMA_HOOKS, 'begin_iter', 'N', 'the iteration the average starts '
                          'at, a copy of the weights before it', WHOLE_NUMBER),
}


def hook_stand_ins(cfg) -> dict:
    """The stand-ins (cli.ArgumentParser's ``stand_ins``) of :data:`HOOK_FLAGS` for the
    config ``cfg``: ``{'--sample-every': ('--cfg-options custom_hooks.2.interval={} ...',
    'N', WHOLE_NUMBER)}`` where its custom_hooks has a SampleVisualizationHook at index 2
    (the first of that type); nothing for a flag whose hook the config does not have."""
    hooks = cfg.get('custom_hooks') if hasattr(cfg, 'get') else None  # (a Config too)
    found = {}
    for flag, (kinds, argument, placeholder, about, *marks) in HOOK_FLAGS.items():
        kinds = (kinds,) if isinstance(kinds, str) else kinds
        for i, hook in enumerate(hooks if isinstance(hooks, (list, tuple)) else ()):
            name = hook.get('type') if isinstance(hook, dict) else None
            name = getattr(name, '__name__', name)  # (a class, in a lazy-import config)
            kind = name.rpartition('.')[2] if isinstance(name, str) else None  # (mmsora.X)
            if kind in kinds:
                found[flag] = (f"--cfg-options custom_hooks.{i}.{argument}={{}} (the config's "
                               f'{kind}: {about})', placeholder, *marks)
                break
    return found


# SiT's sample.py mode word (``python sample.py SDE``, its first argument), a positional
# here: the sampler it runs with SiT's defaults (docs/sit.md), where the tool has the flag.
FOREIGN_WORDS = {'SDE': ('--sampler', '--sampler sde_euler'),
                 'ODE': ('--sampler', '--sampler ode_dopri5')}
# SiT's sample.py --sampling-method by its mode word: SDE's Euler and Heun, ODE's
# torchdiffeq methods, of which Transport has euler, heun2 and dopri5 (docs/sit.md); the
# sampler here, by the method in lower case (ODE's 'heun' too: torchdiffeq's is heun2).
SIT_SAMPLING_METHODS = {
    'SDE': {'euler': 'sde_euler', 'heun': 'sde_heun'},
    'ODE': {'euler': 'ode_euler', 'heun2': 'ode_heun', 'heun': 'ode_heun',
            'dopri5': 'ode_dopri5'},
}


def sit_sampler(method: str, mode: str = None):
    """The sampler here for SiT's ``--sampling-method METHOD`` in its mode ``mode``
    (``'SDE'``, ``'ODE'``; None where the command line has no mode word): its name,
    both names where the mode is not known and both modes have the method
    (``'sde_euler (SDE) or ode_euler (ODE)'``), or None for a method that no sampler
    here stands for (SiT's other torchdiffeq methods, rk4, bosh3, ...)."""
    modes = [mode] if mode in SIT_SAMPLING_METHODS else list(SIT_SAMPLING_METHODS)
    found = [(each, SIT_SAMPLING_METHODS[each][str(method).lower()]) for each in modes
             if str(method).lower() in SIT_SAMPLING_METHODS[each]]
    if len(found) == 1:
        return found[0][1]
    return ' or '.join(f'{name} ({each})' for each, name in found) or None


# Their flags whose values are not ours: our value for theirs, given the mode word of the
# command line (a FOREIGN_WORDS key, or None), or None where there is none
# (cli.ArgumentParser says the flag's target then, or its stand-in's placeholder).
FOREIGN_VALUES = {'--sampling-method': sit_sampler}
# Other projects' names of the sampling settings (diffusers' pipelines' arguments, DiT's
# sample.py's): a sample_cfg key of theirs is taken for ours, not for a close spelling
# (sample_cfg.guidance_scale was 'did you mean guidance_channels?').
FOREIGN_KEYS = {'guidance_scale': 'cfg_scale', 'num_inference_steps': 'num_steps',
                'num_sampling_steps': 'num_steps', 'sampling_method': 'sampler'}


def model_config(name):
    """The config of DiT's / SiT's ``--model NAME`` (``SiT-XL/2``), or None for a name
    of another kind. SiT's models are DiT's, trained with SiT's objective."""
    match = re.fullmatch(r'(DiT|SiT)-(S|B|L|XL)/([248])', name or '')
    if not match:
        return None
    family, size, patch = match.groups()
    dit = f'configs/dit/dit_{size.lower()}{patch}_8xb32_400k_imagenet256.py'
    if family == 'DiT':
        return f'a config ({dit}: {name})'
    sit = 'configs/sit/sit_xl2_8xb32_400k_imagenet256.py'
    if (size, patch) == ('XL', '2'):
        return f'a config ({sit}: {name})'
    return f"a config ({sit} with the model.denoiser of {dit}: {name} is DiT-{size}/{patch} " \
           "with SiT's objective)"


def foreign_key_hint(key: str, value: str = ''):
    """What to give for another project's setting ``key`` given as a top-level
    --cfg-options key (Stable Cascade's ``updates``, DiT's ``epochs``): the config
    entries of its flag's hint, with ``value`` where the hint is one entry alone
    (``updates=10``: ``set train_cfg.max_iters=10 instead``), or what else to use;
    None where the tables have no such flag."""
    flag = '--' + key.replace('_', '-')
    hints = FOREIGN_HINTS.get(flag, ())
    pairs = [hints] if hints and isinstance(hints[0], str) else list(hints)
    texts = [hint for _, hint in pairs]
    for text in texts:
        if text.startswith('--cfg-options '):
            entries = text[len('--cfg-options '):]
            if value and re.fullmatch(r'[\w.]+=[A-Z]+', entries):  # (one entry, as is)
                entries = f'{entries.partition("=")[0]}={value}'
            return f'set {entries} instead'
    if texts:
        return f'use {texts[0]}'
    return f'use {FOREIGN_FLAGS[flag]}' if flag in FOREIGN_FLAGS else None
