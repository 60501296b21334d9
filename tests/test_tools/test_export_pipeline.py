"""tools/export_denoiser.py --pipeline: a run's DiT as diffusers' DiTPipeline folder
(model_index.json, transformer/, vae/, scheduler/) that ``DiTPipeline.from_pretrained``
runs with the run's weights, VAE, latent scale and noise schedule."""
import os

import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTPipeline,
                       DiTTransformer2DModel)
from diffusers.models.embeddings import Timesteps

from mmsora.diffusion import GaussianDiffusion
from mmsora.models import DiT
from tests.cli_helpers import refused
from tools.export_denoiser import main as export

DIT = dict(type='DiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
           num_heads=2, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000,
           learn_sigma=True)


def run_checkpoint(path, denoiser=DIT, diffusion=None, vae=None):
    """A run's checkpoint as mmengine saves it (its config text, the denoiser's
    weights under ``denoiser.``) of a random DiT: ``(the DiT, its path)``."""
    torch.manual_seed(0)
    dit = DiT(**{k: v for k, v in denoiser.items() if k != 'type'}).eval()
    with torch.no_grad():  # (DiT zeroes its modulations and output layer: a dead model)
        for name, p in dit.named_parameters():
            if name != 'pos_embed':
                p.normal_(0, 0.1)
    model = dict(type='LatentDiffusion', denoiser=denoiser, diffusion=diffusion, vae=vae)
    torch.save({'meta': {'cfg': f'model = {model!r}'},
                'state_dict': {f'denoiser.{k}': v for k, v in dit.state_dict().items()}},
               path)
    return dit, str(path)


def test_the_pipeline_runs_the_runs_weights_vae_and_schedule(tmp_path, tiny_vae_dir, capsys):
    vae = dict(type='AutoencoderKLWrapper', pretrained_path=tiny_vae_dir, scale_factor=0.5)
    diffusion = dict(type='GaussianDiffusion', num_timesteps=500, learn_sigma=True)
    dit, ckpt = run_checkpoint(tmp_path / 'iter_2.pth', diffusion=diffusion, vae=vae)
    names = tmp_path / 'classes.txt'
    names.write_text(''.join(f'kind {i}, thing {i}\n' for i in range(1000)))
    out = tmp_path / 'DiT-mine'
    export([ckpt, '--pipeline', '--class-names', str(names), '--out', str(out)])
    assert ("as diffusers' DiTPipeline (2 blocks, 2 heads, sample_size 8, 1000 classes; "
            'DDIMScheduler over 500 linear steps)') in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ['model_index.json', 'scheduler', 'transformer', 'vae']
    pipe = DiTPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # diffusers' DiT spaces its timestep frequencies over half the width minus one
    # (the hub's DiT-XL-2-256 alike): the original's, to compare the weights exactly
    for m in pipe.transformer.modules():
        if isinstance(m, Timesteps):
            m.downscale_freq_shift = 0
    calls = []

    def keep(module, args, kwargs, output):
        calls.append((args[0].clone(), kwargs['timestep'].clone(),
                      kwargs['class_labels'].clone(), output.sample.clone()))
    pipe.transformer.register_forward_hook(keep, with_kwargs=True)
    images = pipe(class_labels=pipe.get_label_ids(['thing 3', 'kind 7']), guidance_scale=4.0,
                  num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type='np').images
    assert images.shape == (2, 16, 16, 3) and len(calls) == 2
    # the first step's prediction is our denoiser's on the same input, guidance's null
    # class (diffusers' 1000) included
    x, t, y, theirs = calls[0]
    assert t.tolist() == [250] * 4 and y.tolist() == [3, 7, 1000, 1000]
    with torch.no_grad():
        ours = dit(x, t, y)
    assert theirs.abs().mean() > 1e-2  # (a dead model would prove nothing)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    # the run's process: 500 linear steps, DiT's betas rescaled, epsilon, no clipping
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == 'epsilon'
    assert not pipe.scheduler.config.clip_sample
    torch.testing.assert_close(
        pipe.scheduler.alphas_cumprod.double(),
        torch.from_numpy(GaussianDiffusion(**{k: v for k, v in diffusion.items()
                                              if k != 'type'}).alphas_cumprod),
        atol=1e-6, rtol=0)
    # the run's VAE, with its latent scale (the folder says 0.18215)
    assert pipe.vae.config.scaling_factor == 0.5
    given = AutoencoderKL.from_pretrained(tiny_vae_dir).state_dict()
    assert all(torch.equal(v, given[k]) for k, v in pipe.vae.state_dict().items())
    assert pipe.labels['thing 3'] == 3 and pipe.labels['kind 999'] == 999


def test_another_schedule_and_a_vae_given(tmp_path, tiny_vae_dir, capsys):
    # the cosine schedule (diffusers' squaredcos_cap_v2), x0 prediction, a fixed
    # variance (kept for a DDPMScheduler swapped in), a run that names no VAE
    diffusion = dict(type='GaussianDiffusion', beta_schedule='squaredcos_cap_v2',
                     learn_sigma=False, predict_xstart=True)
    _, ckpt = run_checkpoint(tmp_path / 'iter_2.pth', dict(DIT, learn_sigma=False),
                             diffusion)
    out = tmp_path / 'DiT-cos'
    for _ in range(2):  # (the second time: an earlier export, replaced)
        export([ckpt, '--pipeline', '--vae', tiny_vae_dir, '--out', str(out)])
    assert f"{tiny_vae_dir}'s scaling_factor 0.18215 is taken" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ['DiT-cos', 'iter_2.pth']  # nothing left over
    pipe = DiTPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == 'sample'
    assert 'id2label' not in pipe.config
    torch.testing.assert_close(
        pipe.scheduler.alphas_cumprod.double(),
        torch.from_numpy(GaussianDiffusion(**{k: v for k, v in diffusion.items()
                                              if k != 'type'}).alphas_cumprod),
        atol=1e-6, rtol=0)
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    assert ddpm.config.variance_type == 'fixed_large' and not ddpm.config.clip_sample


def test_what_diffusers_cannot_run_is_one_line(tmp_path, tiny_vae_dir):
    vae = dict(type='AutoencoderKLWrapper', pretrained_path=tiny_vae_dir)
    out = str(tmp_path / 'out')

    def message(ckpt, *extra):
        text = refused(export, [ckpt, '--pipeline', '--out', out, *extra])
        assert '\n' not in text and not os.path.exists(out), text
        return text

    video = run_checkpoint(tmp_path / 'video.pth', dict(DIT, type='VideoDiT'), vae=vae)[1]
    assert message(video).endswith("--pipeline writes an image DiT as diffusers' "
                                   "DiTTransformer2DModel; this run's denoiser is a "
                                   'VideoDiT: export it without --pipeline (a .pt / '
                                   '.safetensors of its own weights)')
    sit = run_checkpoint(tmp_path / 'sit.pth', diffusion=dict(type='Transport'), vae=vae)[1]
    assert message(sit) == (f"{sit}: a Transport run; diffusers' DiTPipeline samples a "
                            "Gaussian diffusion (DiT's) alone: sample it with "
                            'tools/infer.py, or export the transformer alone with --diffusers')
    bare = run_checkpoint(tmp_path / 'bare.pth')[1]
    assert message(bare) == (f'{bare}: --pipeline needs the VAE that decodes its latents '
                             'and it names no VAE folder: give --vae DIR (a local diffusers '
                             'AutoencoderKL folder)')
    assert message(bare, '--vae', str(tmp_path / 'nope')).startswith(
        f"--vae {tmp_path / 'nope'}: VAE folder")
    pixels = run_checkpoint(tmp_path / 'pixels.pth', dict(DIT, in_channels=3), vae=vae)[1]
    assert message(pixels) == (f'{pixels}: a DiT of 3 input channels, and the VAE at '
                               f'{tiny_vae_dir} has 4 latent channels: give the VAE it was '
                               'trained with (--vae DIR)')
    shifted = run_checkpoint(tmp_path / 'shifted.pth', vae=dict(vae, shift_factor=0.1))[1]
    assert 'shift_factor=0.1, which diffusers\' DiTPipeline does not undo' in message(shifted)
    good = run_checkpoint(tmp_path / 'good.pth', vae=vae)[1]
    names = tmp_path / 'names.txt'
    names.write_text('a\nb\n')
    assert message(good, '--class-names', str(names)) == (
        f'--class-names {names}: 2 lines for a model of 1000 classes: give one line per '
        'class')
    assert refused(export, [good, '--vae', tiny_vae_dir, '--out', str(tmp_path / 'a.pt')]) \
        == '--vae is for --pipeline (the DiTPipeline folder holds the VAE and the class names)'
    assert message(good, '--diffusers').startswith('give --diffusers')
    os.makedirs(out)
    (tmp_path / 'out' / 'notes.txt').write_text('mine')
    assert refused(export, [good, '--pipeline', '--out', out]) == (
        f'--out {out}: a folder that is not empty and not an earlier export '
        '(model_index.json, transformer/, vae/ and scheduler/ alone); give a new one')
    assert os.listdir(out) == ['notes.txt']


def test_a_run_whose_vae_has_no_folder_is_told_why(tmp_path):
    """A run whose model.vae is built from a config was told 'its model.vae is a
    AutoencoderKLWrapper': the kind was right; the weights folder is what is missing."""
    from tests.tiny_models import TINY_VAE
    out = str(tmp_path / 'out')
    vae = dict(type='AutoencoderKLWrapper', config=TINY_VAE)
    random = run_checkpoint(tmp_path / 'random.pth', vae=vae)[1]
    assert refused(export, [random, '--pipeline', '--out', out]) == (
        f'{random}: --pipeline needs the VAE that decodes its latents and its model.vae '
        '(AutoencoderKLWrapper) is built from a config, with no weights folder to copy: '
        'give --vae DIR (a local diffusers AutoencoderKL folder)')
    video = dict(type='VideoVAEWrapper', class_name='AutoencoderKLWan', config={})
    wan = run_checkpoint(tmp_path / 'wan.pth', vae=video)[1]
    assert refused(export, [wan, '--pipeline', '--out', out]) == (
        f'{wan}: --pipeline needs the VAE that decodes its latents and its model.vae '
        '(VideoVAEWrapper) is not an AutoencoderKLWrapper, whose diffusers AutoencoderKL '
        'folder --pipeline copies: give --vae DIR (a local diffusers AutoencoderKL folder)')
    assert not os.path.exists(out)


def test_a_scheduler_swapped_in_samples_on_mmsoras_grid(tmp_path, tiny_vae_dir):
    """scheduler_config.json said timestep_spacing='leading' (DDIM's default): a
    DPMSolverMultistepScheduler swapped in with from_config inherited it and sampled on
    [900, 810, ..., 90] where mmsora's sampler of that name samples on diffusers'
    default 'linspace' grid, [999, 899, ..., 100] (samples 395 off on latents of ~56)."""
    import json

    from diffusers import DPMSolverMultistepScheduler

    from mmsora.diffusion import build_noise_scheduler
    vae = dict(type='AutoencoderKLWrapper', pretrained_path=tiny_vae_dir)
    diffusion = dict(type='GaussianDiffusion', num_timesteps=1000, learn_sigma=True)
    _, ckpt = run_checkpoint(tmp_path / 'iter_2.pth', diffusion=diffusion, vae=vae)
    out = tmp_path / 'DiT-mine'
    export([ckpt, '--pipeline', '--out', str(out)])
    # DDIM still steps as DiT's ddim10 respacing (its own default, 'leading')
    ddim = DDIMScheduler.from_pretrained(out, subfolder='scheduler', local_files_only=True)
    ddim.set_timesteps(10)
    assert ddim.timesteps.tolist() == list(range(900, -1, -100))
    # a scheduler swapped in steps as mmsora's sampler of its name for this run
    dpm = DPMSolverMultistepScheduler.from_config(ddim.config)
    dpm.set_timesteps(10)
    objective = GaussianDiffusion(**{k: v for k, v in diffusion.items() if k != 'type'})
    ours = build_noise_scheduler('DPMSolverMultistepScheduler',
                                 **objective.scheduler_overrides('DPMSolverMultistepScheduler'))
    ours.set_timesteps(10)
    assert dpm.timesteps.tolist() == ours.timesteps.tolist()
    assert dpm.timesteps[0] == 999
    with open(out / 'scheduler' / 'scheduler_config.json') as f:
        assert 'timestep_spacing' not in json.load(f)  # (as the hub's DiT-XL-2-256)


def test_heads_that_contradict_the_runs_are_refused(tmp_path, tiny_vae_dir):
    """--num-heads 4 on a run of 2 heads was written (outputs 0.014 off on 0.5)."""
    vae = dict(type='AutoencoderKLWrapper', pretrained_path=tiny_vae_dir)
    _, ckpt = run_checkpoint(tmp_path / 'iter_2.pth', vae=vae)
    for flag in ('--pipeline', '--diffusers'):
        out = tmp_path / flag.strip('-')
        assert refused(export, [ckpt, flag, '--num-heads', '4', '--out', str(out)]) == (
            f"{ckpt}: --num-heads 4, but its run config's model.denoiser.num_heads is 2 (the "
            'heads its weights were trained with): leave --num-heads out')
        assert not out.exists()
        export([ckpt, flag, '--num-heads', '2', '--out', str(out)])  # (the same: taken)
    # where the run does not say them, DiT's default says them, the heads it was built
    # with (tests/test_tools/test_export_default_heads.py): other heads are refused
    _, said = run_checkpoint(tmp_path / 'iter_3.pth', {k: v for k, v in DIT.items()
                                                       if k != 'num_heads'}, vae=vae)
    assert refused(export, [said, '--diffusers', '--num-heads', '4', '--out',
                            str(tmp_path / 'four')]).endswith(
        "model.denoiser.num_heads (not given: DiT's default) is 16 (the heads its weights "
        'were trained with): leave --num-heads out')
    export([said, '--diffusers', '--out', str(tmp_path / 'default')])
    assert DiTTransformer2DModel.from_pretrained(
        tmp_path / 'default').config.num_attention_heads == 16


@pytest.fixture(scope='module')
def diffusers_pipeline(tmp_path_factory, tiny_vae_dir):
    """A tiny random diffusers DiTPipeline folder (width 32, 2 heads: not a DiT
    paper's width), its transformer's embedders shared as the original DiT's are."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
        num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
    with torch.no_grad():
        for p in transformer.parameters():  # (diffusers zeroes the modulations)
            p.normal_(0, 0.1)
    state = transformer.state_dict()
    for key in state:  # (diffusers copies the one embedder into each block)
        if '.norm1.emb.' in key:
            state[key] = state['transformer_blocks.0.' + key.split('.', 2)[2]].clone()
    transformer.load_state_dict(state)
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir)
    vae.register_to_config(scaling_factor=0.3)
    folder = tmp_path_factory.mktemp('diffusers') / 'DiT-theirs'
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).save_pretrained(
        folder)
    return transformer, str(folder)


def test_a_diffusers_dit_is_exported_with_its_own_heads(diffusers_pipeline, tmp_path,
                                                         capsys):
    """A DiTTransformer2DModel or DiTPipeline folder asked for --num-heads: its
    transformer's config.json says num_attention_heads."""
    transformer, folder = diffusers_pipeline
    given = transformer.state_dict()
    transformer_dir = os.path.join(folder, 'transformer')
    for source in (folder, transformer_dir,  # (and its weights file, named alone)
                   os.path.join(transformer_dir, 'diffusion_pytorch_model.safetensors')):
        out = tmp_path / 'tf'
        export([source, '--diffusers', '--out', str(out)])
        assert "as diffusers' DiTTransformer2DModel (2 blocks, 2 heads" in \
            capsys.readouterr().out
        back = DiTTransformer2DModel.from_pretrained(out)
        assert back.config.num_attention_heads == 2
        assert all(torch.equal(v, given[k]) for k, v in back.state_dict().items())
        # its config.json's heads are the heads: other ones are refused
        assert refused(export, [source, '--diffusers', '--num-heads', '4', '--out',
                                str(tmp_path / 'x')]) == (
            f"{source}: --num-heads 4, but its config.json's num_attention_heads is 2 (the "
            'heads its weights were trained with): leave --num-heads out')


def test_a_dit_pipeline_is_exported_with_its_own_vae(diffusers_pipeline, tmp_path, capsys):
    """--pipeline from a DiTPipeline folder asked for --vae: it has its own vae/."""
    _, folder = diffusers_pipeline
    out = tmp_path / 'DiT-again'
    export([folder, '--pipeline', '--out', str(out)])
    assert (f"note: {folder}: its own VAE is written ({os.path.join(folder, 'vae')}, "
            'scaling_factor 0.3; --vae DIR to give another)') in capsys.readouterr().err
    pipe = DiTPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.transformer.config.num_attention_heads == 2
    assert pipe.vae.config.scaling_factor == 0.3
    theirs = AutoencoderKL.from_pretrained(os.path.join(folder, 'vae')).state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in pipe.vae.state_dict().items())


def test_a_run_in_pixel_space_is_refused_at_once(tmp_path, tiny_vae_dir, capsys):
    """A pixel-space run (the README's shapes demo: no model.vae, 3 channels, 4
    classes) was asked for --vae, then any VAE was refused for its channels."""
    _, pixels = run_checkpoint(tmp_path / 'iter_2.pth',
                               dict(DIT, in_channels=3, num_classes=4))
    out = tmp_path / 'out'
    for extra in ([], ['--vae', tiny_vae_dir]):
        assert refused(export, [pixels, '--pipeline', '--out', str(out), *extra]) == (
            f"{pixels}: a run in pixel space (no model.vae) has no VAE for diffusers' "
            'DiTPipeline, which decodes latents with one: export the transformer alone with '
            '--diffusers, or a .pt')
        assert not out.exists()
        assert 'classes' not in capsys.readouterr().err  # (at once: no note of them first)
    export([pixels, '--diffusers', '--out', str(out)])
    assert DiTTransformer2DModel.from_pretrained(out).config.in_channels == 3
