"""An evaluation researcher's walk-through of the tools: a missing evaluation section or
metrics gave tracebacks; a tools/test.py --out run stopped in the scoring could not be
scored again (its .npz 'of a finished run' refused); test.py never said the sampler
settings; Ctrl-C said only 'interrupted'; sampler and prompt mistakes came after the
weights had loaded; make_reference.py upsampled small pictures and wrote a 1-clip
reference without a word; infer.py --out NAME.npz ignored --gif / --nrow / --upscale
and wrote no prompts.txt for a text model."""
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

import mmsora.apis
from mmsora.utils.cli import run_cli
from tests.cli_helpers import refused
from tools import infer
from tools import make_reference
from tools import test as test_tool

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
SIT = 'configs/sit/sit_tiny2_1xb32_1500_shapes16.py'
TEXT = 'configs/video_dit/video_dit_tiny4_1xb2_t5_two_clips.py'
MISSING = '/nonexistent/iter_10.pth'  # never read: refused before
SHIPPED = ('configs/_base_/evaluation/clip_score_t2v.py, configs/_base_/evaluation/'
           'fid50k_imagenet256.py, configs/_base_/evaluation/fvd2048_ucf101.py')

# The tools run here keep glibc's freed memory on the CPU: recorded, not made.
# They set LOCAL_RANK: the environment is put back after each test.
pytestmark = pytest.mark.usefixtures('malloc_calls', 'kept_environ')


def tiny_config(repo_root, path, evaluation=''):
    """The demo shrunk to a random 8x8 model (as tests/test_evaluation/test_cli.py)."""
    path.write_text(f"""
_base_ = [{osp.join(repo_root, DEMO)!r}]
custom_imports = dict(imports=['tests.test_evaluation.tiny_extractors'],
                      allow_failed_imports=False)
model = dict(denoiser=dict(hidden_size=32, depth=2, num_heads=2, input_size=8),
             latent_shape=(3, 8, 8))
sample_cfg = dict(sampler='ddim', num_steps=2, cfg_scale=2.0)
{evaluation}
""")
    return str(path)


@pytest.fixture
def tiny_run(repo_root, tmp_path):
    return make_tiny_run(repo_root, tmp_path)


def make_tiny_run(repo_root, tmp_path):
    """A config with an evaluation section (FID of 6 samples, batches of 4), one
    without, and a checkpoint of the random model."""
    from mmsora.registry import MODELS
    from mmsora.utils.config_loading import load_config
    rng = np.random.default_rng(0)
    np.savez(tmp_path / 'ref.npz', arr_0=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    config = tiny_config(repo_root, tmp_path / 'tiny_eval.py', f"""evaluation = dict(
    num_samples=6, batch_size=4, seed=3,
    metrics=[dict(type='FID', extractor=dict(type='TinyImageExtractor'),
                  reference={str(tmp_path / 'ref.npz')!r})])""")
    bare = tiny_config(repo_root, tmp_path / 'tiny_bare.py')
    torch.manual_seed(0)
    model = MODELS.build(load_config(config).model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'ckpt.pth')
    return config, bare, str(tmp_path / 'ckpt.pth')


@pytest.fixture
def not_loaded(monkeypatch):
    """Building a model fails: what is refused here is refused before the weights."""
    def built(*args, **kwargs):
        raise AssertionError('the model was built')
    monkeypatch.setattr(mmsora.apis, 'init_model', built)


# --------------------------------------------------------------------------- #
#  1. No evaluation section, or one without metrics                           #
# --------------------------------------------------------------------------- #
def test_a_section_without_metrics_is_one_line_before_loading(tiny_run, tmp_path,
                                                             not_loaded):
    """evaluate_model's TypeError (missing 'metrics') and mmengine's KeyError (a
    metrics dict made by --cfg-options) after the weights had loaded."""
    config, bare, ckpt = tiny_run
    none = (f"evaluation.metrics: none in the evaluation section of the config (what to "
            f"score): give one with --evaluation FILE ({SHIPPED}) or inherit one, see "
            'docs/evaluation.md')
    assert refused(test_tool.main, [bare, MISSING, '--num-samples', '8', '--cfg-options',
                                    'evaluation.num_samples=4']) == none
    (tmp_path / 'nometric.py').write_text('evaluation = dict(num_samples=4)\n')
    assert refused(test_tool.main, [bare, MISSING, '--evaluation',
                                    str(tmp_path / 'nometric.py')]) == none.replace(
        'the config', str(tmp_path / 'nometric.py'))
    message = refused(test_tool.main, [bare, MISSING, '--cfg-options',
                                       'evaluation.metrics.0.reference=x.npz'])
    assert message.startswith("evaluation.metrics: a list of metric configs, each with a "
                              "type (dict(type='FID', ...)), got {'0': {'reference': "
                              "'x.npz'}} in the config: give one with --evaluation FILE (")


def test_no_section_names_the_shipped_ones(tiny_run, capsys, monkeypatch):
    config, bare, ckpt = tiny_run
    import mmsora.apis  # refused before the model loads (it was after)
    monkeypatch.setattr(mmsora.apis, 'init_model', None)
    assert run_cli(lambda: test_tool.main([bare, ckpt])) == 2
    assert capsys.readouterr().err.strip().endswith(
        'error: the config has no `evaluation` section (metrics and number of samples): '
        f'give one with --evaluation FILE ({SHIPPED}) or inherit one, see docs/evaluation.md')


# --------------------------------------------------------------------------- #
#  2-4. Stopped in the scoring or in the sampling; the settings said            #
# --------------------------------------------------------------------------- #
def stop_scoring(monkeypatch, error):
    """mmengine's Evaluator.evaluate raises ``error`` (Ctrl-C, out of memory reading
    a big reference) once, after all the sampling."""
    from mmengine.evaluator import Evaluator
    evaluate = Evaluator.evaluate

    def stopped(self, size):
        monkeypatch.setattr(Evaluator, 'evaluate', evaluate)
        raise error
    monkeypatch.setattr(Evaluator, 'evaluate', stopped)


def no_sampling(monkeypatch):
    from mmsora.models.latent_diffusion import LatentDiffusion

    def sample(*args, **kwargs):
        raise AssertionError('sampled again')
    monkeypatch.setattr(LatentDiffusion, 'sample', sample)


def test_a_run_stopped_in_the_scoring_is_scored_without_sampling(tiny_run, tmp_path,
                                                                 monkeypatch, capsys):
    config, bare, ckpt = tiny_run
    out = str(tmp_path / 't.npz')
    stop_scoring(monkeypatch, KeyboardInterrupt())
    assert run_cli(lambda: test_tool.main([config, ckpt, '--out', out])) == 130
    printed = capsys.readouterr()
    # the sampler settings the metrics are scored at, as infer.py says them
    assert 'sampling 6 samples with sampler=ddim, num_steps=2, cfg_scale=2.0\n' in printed.out
    assert printed.err.endswith(f'interrupted (6 samples kept in {out}: run the same '
                                'command to score them)\n')
    with np.load(out) as data:
        samples = data['arr_0']
    no_sampling(monkeypatch)
    test_tool.main([config, ckpt, '--out', out])
    printed = capsys.readouterr().out
    assert f'{out} holds the 6 samples of this run: scoring them' in printed
    fid = float(printed.split('FID: ')[1].split()[0])
    assert not osp.exists(out + '.parts')
    with np.load(out) as data:
        np.testing.assert_array_equal(data['arr_0'], samples)
    # the score of those samples, as a run that was not stopped gives it
    monkeypatch.undo()
    test_tool.main([config, ckpt, '--out', str(tmp_path / 'whole.npz')])
    assert f'FID: {fid:.4f}' in capsys.readouterr().out
    # once scored, the file is a finished run's again
    assert refused(test_tool.main, [config, ckpt, '--out', out]).startswith(
        f'--out {out} exists: the samples of a finished run are not sampled over')


def test_samples_of_another_run_are_not_scored_as_this_ones(tiny_run, tmp_path,
                                                            monkeypatch):
    config, bare, ckpt = tiny_run
    out = str(tmp_path / 't.npz')
    stop_scoring(monkeypatch, MemoryError('cannot allocate the reference features'))
    with pytest.raises(MemoryError):
        test_tool.main([config, ckpt, '--out', out])
    before = open(out, 'rb').read()
    no_sampling(monkeypatch)
    assert refused(test_tool.main, [config, ckpt, '--out', out, '--seed', '4']) == (
        f'{out} holds the samples of another run (seed 3 -> 4): they are not sampled '
        f'over; delete it and {out}.parts, or give another --out')
    assert open(out, 'rb').read() == before


def test_ctrl_c_while_sampling_says_what_is_kept(tiny_run, tmp_path, monkeypatch, capsys):
    from mmsora.models.latent_diffusion import LatentDiffusion
    config, bare, ckpt = tiny_run
    sample = LatentDiffusion.sample

    def ctrl_c_in_second_batch(self, *args, seeds=None, **kwargs):
        if seeds[0] >= 4:
            raise KeyboardInterrupt
        return sample(self, *args, seeds=seeds, **kwargs)
    monkeypatch.setattr(LatentDiffusion, 'sample', ctrl_c_in_second_batch)
    out = str(tmp_path / 'x.npz')
    argv = [config, '--checkpoint', ckpt, '--num-samples', '6', '--batch-size', '4',
            '--out', out]
    assert run_cli(lambda: infer.main(argv)) == 130
    assert capsys.readouterr().err.endswith(
        f'interrupted (1 of 2 batches kept in {out}.parts: run the same command to go '
        'on)\n')
    assert run_cli(lambda: test_tool.main([config, ckpt, '--out', str(tmp_path / 't.npz')])
                   ) == 130
    assert capsys.readouterr().err.endswith(
        f'interrupted (1 of 2 batches kept in {tmp_path / "t.npz"}.parts: run the same '
        'command to go on)\n')
    assert run_cli(lambda: test_tool.main([config, ckpt])) == 130
    assert capsys.readouterr().err.endswith(
        'interrupted (the samples were held in memory only: a rerun samples them all '
        'again; give --out NAME.npz to keep them)\n')
    monkeypatch.undo()
    infer.main(argv)
    assert f'resuming: 1 of 2 batches of 4 already sampled in {out}.parts' in \
        capsys.readouterr().out


def test_the_settings_line_is_one_function():
    from mmsora.apis.mass_sampling import sampling_line
    assert sampling_line(1, dict(sampler='ode_dopri5', num_steps=50, cfg_scale=1.0,
                                 last_step=None, eta=None), True) == (
        'sampling 1 sample with sampler=ode_dopri5, num_steps=adaptive, cfg_scale=1.0, '
        'last_step=None; classes drawn at random from --seed')
    assert not hasattr(infer, '_shown_settings')  # (not a copy of its own)


# --------------------------------------------------------------------------- #
#  5. Sampler and prompt mistakes before the weights load                      #
# --------------------------------------------------------------------------- #
def test_sampler_and_prompt_mistakes_stop_before_loading(repo_root, tiny_run, tmp_path,
                                                         not_loaded):
    config, bare, ckpt = tiny_run
    assert refused(test_tool.main, [config, MISSING, '--cfg-options',
                                    'evaluation.sample_cfg.sampler=ddmi']).startswith(
        "the evaluation's sampler settings (evaluation.sample_cfg over the config's "
        "sample_cfg): unknown sampler 'ddmi' for GaussianDiffusion; choose one of ")
    fid = osp.join(repo_root, 'configs/_base_/evaluation/fid50k_imagenet256.py')
    message = refused(test_tool.main, [osp.join(repo_root, SIT), MISSING, '--evaluation',
                                       fid])
    assert "unknown sampler 'ddpm' for Transport" in message
    assert message.endswith('set them with --cfg-options evaluation.sample_cfg.KEY=VALUE')
    text, clip = (osp.join(repo_root, p) for p in (
        TEXT, 'configs/_base_/evaluation/clip_score_t2v.py'))
    assert refused(test_tool.main, [text, MISSING, '--evaluation', clip]) == (
        'this model is text-conditioned: give the prompts to sample and score with '
        '--prompt-file FILE (one a line) or evaluation.prompts')
    (tmp_path / 'p.txt').write_text('a cat runs\n')
    assert refused(test_tool.main, [text, MISSING, '--evaluation', clip, '--prompt-file',
                                    str(tmp_path / 'p.txt'), '--cfg-options',
                                    'model.text_encoder=None']).startswith(
        'this text-conditioned model has no text encoder to read the prompts: set '
        'model.text_encoder.pretrained_path=DIR')
    # right settings go on, to the weights (not built here)
    with pytest.raises(AssertionError, match='the model was built'):
        test_tool.main([config, MISSING, '--cfg-options', 'evaluation.sample_cfg.sampler=ddpm'])


# --------------------------------------------------------------------------- #
#  6. make_reference.py                                                        #
# --------------------------------------------------------------------------- #
def test_make_reference_says_what_it_enlarged_and_refuses_a_file(tmp_path, capsys):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(folder / 'a.png')
    out = str(tmp_path / 'ref.npz')
    make_reference.main(['--images', str(folder), '--out', out, '--image-size', '16'])
    printed = capsys.readouterr()
    assert printed.out.startswith('wrote 1 picture (16, 16, 3) to ')
    assert (f'note: 1 of 1 picture are smaller than --image-size 16 on their shorter side '
            f'and were enlarged to it: {folder / "a.png"} (8x6)') in printed.err
    assert (f'warning: {out} holds 1 picture: FID and FVD need at least 2 reference '
            'samples; add pictures') in printed.err
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / 'b.png')
    make_reference.main(['--images', str(folder), '--out', out, '--image-size', '16'])
    printed = capsys.readouterr()
    assert '1 of 2 pictures are smaller' in printed.err and 'warning' not in printed.err
    assert refused(make_reference.main, ['--images', str(folder / 'a.png'), '--out', out]) == (
        f'--images takes a folder of pictures (searched recursively), got the file '
        f'{folder / "a.png"}: give its folder, or put the pictures in one')


def test_a_one_clip_reference_is_warned_of(tmp_path, capsys):
    from mmsora.datasets.manifest import write_manifest
    from mmsora.utils.video_io import write_video
    paths = []
    for name, frames in (('long', 12), ('short', 5)):
        paths.append(str(tmp_path / f'{name}.mp4'))
        write_video(paths[-1], torch.rand(3, frames, 16, 16) * 2 - 1, 8)
    write_manifest([dict(path=p) for p in paths], str(tmp_path / 'v.csv'))
    out = str(tmp_path / 'clips.npz')
    make_reference.main(['--videos', str(tmp_path / 'v.csv'), '--out', out, '--num-frames',
                         '4', '--frame-stride', '3', '--image-size', '8'])
    printed = capsys.readouterr()
    assert 'wrote 1 clip (4, 8, 8, 3) to ' in printed.out  # (after the skipped one)
    assert (f'warning: {out} holds 1 clip: FID and FVD need at least 2 reference samples; '
            'add videos or ask for shorter clips (--num-frames, --frame-stride)') in printed.err


# --------------------------------------------------------------------------- #
#  7. infer.py --out NAME.npz                                                  #
# --------------------------------------------------------------------------- #
def test_grid_and_gif_options_with_npz_are_refused(repo_root, tmp_path, not_loaded):
    config = osp.join(repo_root, DEMO)
    out = str(tmp_path / 'x.npz')
    for given, flags in (('--nrow', ['--nrow', '4']), ('--upscale', ['--upscale', '2']),
                         ('--nrow / --gif', ['--nrow', '4', '--gif'])):
        assert refused(infer.main, [config, '--checkpoint', MISSING, '--out', out,
                                    *flags]) == (
            f'{given}: --out {out} writes the samples as they are, no grid or GIFs; for one '
            'file per sample give --sample-dir DIR (PNGs, mp4s for clips)')


def test_a_text_model_sample_dir_gets_its_prompts(repo_root, tmp_path):
    from mmsora.registry import MODELS
    from mmsora.utils.config_loading import load_config
    from mmsora.utils.training_inputs import training_model_cfg
    from tests.tiny_models import make_tiny_text_encoder
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5', width=32)
    config = tmp_path / 'text.py'
    config.write_text(f"""_base_ = [{osp.join(repo_root, TEXT)!r}]
model = dict(denoiser=dict(input_size=8, hidden_size=16, depth=1, num_heads=2, num_frames=2,
                           text_dim=32),
             text_encoder=dict(pretrained_path={t5!r}), latent_shape=(3, 2, 8, 8))
""")
    torch.manual_seed(0)
    model = MODELS.build(training_model_cfg(load_config(str(config))))
    torch.save(model.denoiser.state_dict(), tmp_path / 'w.pt')
    files = tmp_path / 'files'
    infer.main([str(config), '--checkpoint', str(tmp_path / 'w.pt'), '--steps', '1',
                '--prompt', 'a cat runs', 'a dog\nsits', '--num-samples', '3',
                '--out', str(tmp_path / 'x.npz'), '--sample-dir', str(files)])
    assert (files / 'prompts.txt').read_text() == 'a cat runs\na dog sits\na cat runs\n'
    assert sorted(p.name for p in files.iterdir()) == [
        '000000.mp4', '000001.mp4', '000002.mp4', 'prompts.txt']
