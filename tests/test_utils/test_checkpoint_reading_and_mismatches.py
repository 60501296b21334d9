"""Checkpoint reading fixes (mmsora/utils/checkpoint.py, mmsora/apis/inference.py,
tools/export_denoiser.py): unreadable safetensors named in one line, a safetensors
file named .pt, work dirs without last_checkpoint, EMA asked of a run without one,
mismatch messages that name the kind of model and the patch size, and fine-tunes
that keep the model's own fixed position tables."""
import os
import os.path as osp
import shutil
from types import SimpleNamespace

import mmengine.logging
import pytest
import torch
import torch.nn as nn

from mmsora.apis.inference import denoiser_state_dict, find_run, load_weights
from mmsora.models import DiT, VideoDiT
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.checkpoint_choice import check_checkpoint_complete, last_checkpoint
from mmsora.utils.weight_loading import (load_dit_checkpoint, load_state_dict_checked,
                                         weight_mismatch)
from tests.cli_helpers import one_line
from tools import export_denoiser

IMAGE = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2,
             num_heads=2, num_classes=4)


def video_dit(**kwargs):
    return VideoDiT(**{**IMAGE, 'num_frames': 4, **kwargs})


def run_checkpoint(path, ema=True):
    """A run checkpoint in mmengine's layout, of a denoiser that is one Linear(2, 2):
    the EMA weights (ones) in state_dict, the trained ones (twos) in ema_state_dict."""
    trained = {'denoiser.weight': torch.full((2, 2), 2.), 'denoiser.bias': torch.full((2,), 2.)}
    obj = {'state_dict': trained, 'meta': {'iter': 2, 'cfg': "custom_hooks = []\n"}}
    if ema:
        obj = {'state_dict': {k: torch.ones_like(v) for k, v in trained.items()},
               'ema_state_dict': {f'module.{k}': v for k, v in trained.items()},
               'meta': {'iter': 2, 'cfg': "custom_hooks = [dict(type='EMAHook')]\n"}}
    torch.save(obj, path)
    return str(path)


def linear_model():
    return SimpleNamespace(denoiser=nn.Linear(2, 2))


# --------------------------------------------------------------------------- #
#                  1, 2: safetensors files read through one reader              #
# --------------------------------------------------------------------------- #
@pytest.fixture
def safetensors_file(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / 'dit.safetensors'
    save_file({'a': torch.ones(3, 4), 'b': torch.zeros(2)}, str(path))
    return path


def unreadable_safetensors(tmp_path, whole):
    """{file: what its one line says}: cut short, empty, a torch zip and a legacy
    torch pickle named .safetensors, text."""
    data = whole.read_bytes()
    cases = {}
    for name, content, what in (
            ('cut', data[:-10], 'it is truncated or not a safetensors file (its header '
                                'gives'),
            ('empty', b'', 'it is truncated or not a safetensors file (0 bytes'),
            ('html', b'<!DOCTYPE html><html>404</html>', 'it is truncated or not a '
                                                         'safetensors file (a header of')):
        path = tmp_path / f'{name}.safetensors'
        path.write_bytes(content)
        cases[path] = what
    torch.save({'a': torch.ones(2)}, tmp_path / 'zip.safetensors')
    torch.save({'a': torch.ones(2)}, tmp_path / 'legacy.safetensors',
               _use_new_zipfile_serialization=False)
    for name in ('zip', 'legacy'):
        cases[tmp_path / f'{name}.safetensors'] = ('it is a torch checkpoint, not '
                                                   'safetensors: name it .pt')
    return cases


def test_unreadable_safetensors_are_one_line(tmp_path, safetensors_file):
    """Before: safetensors' SafetensorError ('incomplete metadata, file not fully
    covered', 'header too large/small') in a raw traceback from every tool, and the
    cheap pre-check let every .safetensors pass."""
    assert load_checkpoint_file(str(safetensors_file))['a'].shape == (3, 4)
    check_checkpoint_complete(str(safetensors_file))
    for path, what in unreadable_safetensors(tmp_path, safetensors_file).items():
        for read in (check_checkpoint_complete, load_checkpoint_file):
            with pytest.raises(ValueError) as info:
                read(str(path))
            assert one_line(info.value).startswith(f'cannot read checkpoint {path}: {what}')
        # tools/export_denoiser.py and tools/infer.py (load_weights) read it so too
        with pytest.raises(ValueError, match=f'cannot read checkpoint {path}: '):
            export_denoiser.main([str(path), '--out', str(tmp_path / 'out.pt')])
        with pytest.raises(ValueError, match=f'cannot read checkpoint {path}: '):
            load_weights(linear_model(), str(path))


def test_a_header_safetensors_refuses_is_one_line_too(tmp_path):
    """A whole file whose header safetensors refuses (a byte range that does not fit
    its shape): safetensors' own error, in the same line."""
    import json
    header = json.dumps({'a': {'dtype': 'F32', 'shape': [3, 5], 'data_offsets': [0, 48]}})
    header = header.encode() + b' ' * (-len(header) % 8)
    path = tmp_path / 'odd.safetensors'
    path.write_bytes(len(header).to_bytes(8, 'little') + header + bytes(48))
    with pytest.raises(ValueError) as info:
        load_checkpoint_file(str(path))
    assert one_line(info.value).startswith(f'cannot read checkpoint {path}: it is truncated '
                                           'or not a safetensors file (')


def test_resume_of_a_cut_safetensors_is_refused_before_the_runner(tmp_path, repo_root,
                                                                  safetensors_file):
    """--resume X.safetensors: named by the cheap pre-check, not taken for a state
    dict of weights alone."""
    from tests.tiny_models import DEMO
    from tools.train import build_train_config, parse_args
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(safetensors_file.read_bytes()[:100])
    with pytest.raises(ValueError, match=f'cannot read checkpoint {cut}: it is truncated or '
                                         'not a safetensors file'):
        build_train_config(parse_args([osp.join(repo_root, DEMO), '--resume', str(cut),
                                       '--work-dir', str(tmp_path / 'w')]))


def test_a_safetensors_file_named_pt_is_named_as_such(tmp_path, safetensors_file):
    """It was 'not a torch checkpoint (neither a zip archive nor a pickle: starts
    b'8\\x0b...{"...')'. A header of 384 bytes starts 0x80, as a pickle does."""
    import json
    header = json.dumps({'a': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]}})
    header = header.encode().ljust(384)
    long_header = tmp_path / 'long.pt'
    long_header.write_bytes((384).to_bytes(8, 'little') + header + bytes(8))
    assert long_header.read_bytes()[:1] == b'\x80'
    named_pt = tmp_path / 'dit.pt'
    shutil.copy(safetensors_file, named_pt)
    for path in (named_pt, long_header):
        for read in (check_checkpoint_complete, load_checkpoint_file):
            with pytest.raises(ValueError) as info:
                read(str(path))
            assert one_line(info.value) == (f'cannot read checkpoint {path}: it is a '
                                            'safetensors file: name it .safetensors')
    os.rename(long_header, tmp_path / 'long.safetensors')
    assert torch.equal(load_checkpoint_file(str(tmp_path / 'long.safetensors'))['a'],
                       torch.zeros(2))


# --------------------------------------------------------------------------- #
#                   3: work dirs with iter_N.pth, no last_checkpoint             #
# --------------------------------------------------------------------------- #
def test_the_highest_numbered_checkpoint_stands_in_for_last_checkpoint(tmp_path):
    work = tmp_path / 'copy'
    work.mkdir()
    assert last_checkpoint(str(work)) is None
    assert last_checkpoint(str(tmp_path / 'nope')) is None
    for n in (3, 1):
        run_checkpoint(work / f'epoch_{n}.pth')
    assert last_checkpoint(str(work)) == str(work / 'epoch_3.pth')
    for n in (2, 10, 9):  # by the number (iter_10 after iter_9), not by the name
        run_checkpoint(work / f'iter_{n}.pth')
    (work / 'iter_11.pth').mkdir()  # a folder that is no DeepSpeed checkpoint
    (work / '.iter_12.pth.tmp.5').write_bytes(b'')  # a save under way
    (work / 'iter_13.pth.bak').write_bytes(b'')
    assert last_checkpoint(str(work)) == str(work / 'iter_10.pth')
    zero = work / 'iter_14.pth'  # a DeepSpeed save cut short: the model states alone
    zero.mkdir()
    torch.save({}, zero / 'mp_rank_00_model_states.pt')
    assert last_checkpoint(str(work)) == str(work / 'iter_10.pth')
    torch.save({}, zero / 'bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt')
    assert last_checkpoint(str(work)) == str(zero)
    import shutil
    shutil.rmtree(zero)
    (work / 'last_checkpoint').write_text('')  # written in place and cut short
    assert last_checkpoint(str(work)) == str(work / 'iter_10.pth')
    (work / 'last_checkpoint').write_text('/elsewhere/iter_9.pth')  # the file still rules
    assert last_checkpoint(str(work)) == str(work / 'iter_9.pth')


def test_the_tools_take_it(tmp_path, capsys):
    """infer WORK_DIR said 'no checkpoint given and none found', export 'neither a
    DeepSpeed checkpoint folder nor a work dir with a last_checkpoint'."""
    work = tmp_path / 'copy'
    work.mkdir()
    (work / 'config.py').write_text('model = dict()\n')
    for n in (2, 4):
        run_checkpoint(work / f'iter_{n}.pth')
    newest = str(work / 'iter_4.pth')
    assert find_run(str(work)) == (str(work / 'config.py'), newest)
    model = load_weights(linear_model(), str(work))
    assert model.loaded_from == newest
    assert torch.equal(model.denoiser.weight, torch.ones(2, 2))  # the EMA weights
    export_denoiser.main([str(work), '--out', str(tmp_path / 'd.pt')])
    assert capsys.readouterr().out.startswith(f'{newest} -> {tmp_path / "d.pt"}')


def test_resume_continues_from_it(tmp_path, repo_root):
    """--resume said 'no checkpoint in W yet: the run starts at iteration 0' (and
    pruned the old checkpoints as it saved)."""
    from mmsora.registry import MODELS
    from tests.tiny_models import tiny_cfg
    work = tmp_path / 'copy'
    cfg = tiny_cfg(repo_root, work, 20)
    state = MODELS.build(cfg.model).state_dict()
    work.mkdir(exist_ok=True)
    for n in (4, 8):
        torch.save({'state_dict': state, 'meta': {'iter': n}}, work / f'iter_{n}.pth')
    cfg = tiny_cfg(repo_root, work, 20, resume='auto')
    assert cfg.resume and cfg.load_from == str(work / 'iter_8.pth')


# --------------------------------------------------------------------------- #
#                     4: EMA asked of a run that kept none                      #
# --------------------------------------------------------------------------- #
def test_a_run_without_ema_is_warned_about(tmp_path, capsys):
    plain_run = run_checkpoint(tmp_path / 'plain.pth', ema=False)
    ema_run = run_checkpoint(tmp_path / 'ema.pth')
    model = load_weights(linear_model(), plain_run)  # tools/infer.py, tools/test.py
    assert torch.equal(model.denoiser.weight, torch.full((2, 2), 2.))
    assert capsys.readouterr().err == (f'warning: {plain_run} holds no EMA weights (the run '
                                       'kept none: no EMAHook): taking the trained weights\n')
    out = tmp_path / 'd.pt'
    export_denoiser.main([plain_run, '--out', str(out)])
    captured = capsys.readouterr()
    assert 'holds no EMA weights' in captured.err
    assert f"{plain_run} -> {out}: the denoiser's trained weights (2 tensors" in captured.out
    export_denoiser.main([ema_run, '--out', str(out)])
    captured = capsys.readouterr()
    assert not captured.err and "the denoiser's EMA weights" in captured.out
    # nothing to say: the trained weights asked for, a plain state dict (EMA or not),
    # a run with an EMA hook published without ema_state_dict (CheckpointHook's
    # published_keys: its state_dict holds the EMA weights)
    published = tmp_path / 'published.pth'
    torch.save({'state_dict': torch.load(ema_run)['state_dict'],
                'meta': {'iter': 2, 'cfg': "custom_hooks = [dict(type='EMAHook')]\n"}},
               published)
    load_weights(linear_model(), str(published))
    load_weights(linear_model(), plain_run, use_ema=False)
    denoiser_state_dict({'weight': torch.ones(2)})
    assert not capsys.readouterr().err
    # a DiT / fast-DiT training checkpoint without 'ema' (was a KeyError)
    state = denoiser_state_dict({'model': {'w': torch.ones(2)}}, source='dit.pt')
    assert torch.equal(state['w'], torch.ones(2))
    assert 'warning: dit.pt holds no EMA weights' in capsys.readouterr().err


def test_a_deepspeed_folder_says_whether_it_kept_an_ema(tmp_path):
    """A DeepSpeed folder read for its EMA alone comes with the EMA's entry (its count),
    one without an EMA without it (its trained weights alone): its client state is not
    asked again."""
    from mmsora.apis.inference import ema_kept
    from mmsora.utils.zero_checkpoint import read_zero_checkpoint
    folder = tmp_path / 'iter_2.pth'
    folder.mkdir()
    torch.save({'module': {'denoiser.w': torch.ones(2)},
                'state_dict': {'denoiser.w': torch.ones(2)},
                'ema_state_dict': {'module.denoiser.w': torch.ones(2),
                                   'steps': torch.tensor(2)}},
               folder / 'mp_rank_00_model_states.pt')
    read = read_zero_checkpoint(str(folder), trained=False)
    assert ema_kept(read, str(folder)) is True
    trained = {'state_dict': {'denoiser.w': torch.ones(2)}, 'meta': {}}
    assert ema_kept(trained, str(folder)) is False
    assert ema_kept({'weight': torch.ones(2)}) is None


# --------------------------------------------------------------------------- #
#               5, 6: mismatches that name the model and the patch size          #
# --------------------------------------------------------------------------- #
def test_a_video_file_for_an_image_model_is_named_as_such(tmp_path):
    video = video_dit().state_dict()
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(DiT(**IMAGE), video, 'video.pt')  # tools/infer.py
    line = one_line(info.value)
    assert 'not in the model (e.g. temp_embed)' in line and 'has not' not in line
    assert 'the file is a video DiT (it has temp_embed)' in line
    # tools/train.py --load-from / --resume of a video run into an image config
    ours = {f'denoiser.{k}': v.shape for k, v in DiT(**IMAGE).state_dict().items()}
    theirs = {f'denoiser.{k}': v.shape for k, v in video.items()}
    found = weight_mismatch(ours, theirs, own_name='config')
    assert found.startswith('1 not in the config (e.g. denoiser.temp_embed); the file is a '
                            'video DiT (it has temp_embed)'), found


def test_an_image_file_for_a_video_model_is_named_as_such():
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(video_dit(), DiT(**IMAGE).state_dict(), 'image.pt')
    assert one_line(info.value).endswith(
        'missing (e.g. temp_embed); the file is an image DiT: tools/train.py --load-from '
        'inflates it into a video model; it cannot be sampled as one')


def test_a_frame_table_of_another_length_names_num_frames():
    with pytest.raises(ValueError, match=r'temp_embed: \(1, 4, 32\) in the checkpoint, '
                                         r'\(1, 8, 32\) in the model\); the file has a frame '
                                         r'table for 4 frames \(this one: 8\): set '
                                         r'model.denoiser.num_frames=4'):
        load_state_dict_checked(video_dit(num_frames=8), video_dit().state_dict(), 'v.pt')


def test_the_patch_size_hint_is_the_checkpoints(tmp_path):
    """A patch-2 file in a patch-4 model: 'set model.denoiser.input_size=16 at
    patch_size 4' before, which then failed on x_embedder.proj.weight."""
    path = tmp_path / 'dit.pt'
    torch.save(DiT(**IMAGE).state_dict(), path)
    with pytest.raises(ValueError) as info:
        load_dit_checkpoint(DiT(**{**IMAGE, 'patch_size': 4}), str(path))
    assert 'set model.denoiser.patch_size=2 and model.denoiser.input_size=8' in \
        one_line(info.value)
    load_dit_checkpoint(DiT(**IMAGE), str(path))  # what the hint says loads
    # the same token grid at another patch size: the kernel tells
    with pytest.raises(ValueError) as info:
        load_dit_checkpoint(DiT(**{**IMAGE, 'patch_size': 4, 'input_size': 16}), str(path))
    assert one_line(info.value).endswith('the file is of patch_size 2 (this model of 4): '
                                         'set model.denoiser.patch_size=2')
    # the same patch size: the input size, as before
    with pytest.raises(ValueError, match='set model.denoiser.input_size=8 at patch_size 2'):
        load_dit_checkpoint(DiT(**{**IMAGE, 'input_size': 16}), str(path))


# --------------------------------------------------------------------------- #
#                7: fine-tunes keep the model's fixed position tables           #
# --------------------------------------------------------------------------- #
@pytest.fixture
def logged(monkeypatch):
    lines = []
    monkeypatch.setattr(mmengine.logging, 'print_log', lambda msg, **kw: lines.append(msg))
    return lines


def assert_loaded_keeping(model, state_dict, tables):
    own = {k: v.clone() for k, v in model.state_dict().items()}
    load_state_dict_checked(model, state_dict, 'ckpt.pt', fine_tune=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k] if k in tables else state_dict[k]), k


def test_another_input_size_or_frame_count_loads_the_rest(tmp_path, logged):
    from mmsora.utils.weight_loading import fixed_tables
    assert fixed_tables(DiT(**IMAGE)) == {'pos_embed'}
    assert fixed_tables(video_dit()) == {'pos_embed', 'temp_embed'}
    small = DiT(**IMAGE).state_dict()
    assert_loaded_keeping(DiT(**{**IMAGE, 'input_size': 16}), small, {'pos_embed'})
    assert logged == ["ckpt.pt: kept the model's own pos_embed (1, 64, 32) (the file's: "
                      '(1, 16, 32)): fixed sin-cos tables of the input size / frame count, '
                      'computed from the config; the rest is loaded']
    assert_loaded_keeping(video_dit(num_frames=8, input_size=16), video_dit().state_dict(),
                          {'pos_embed', 'temp_embed'})
    path = tmp_path / 'dit.pt'
    torch.save(small, path)
    load_dit_checkpoint(DiT(**{**IMAGE, 'input_size': 16}), str(path), fine_tune=True)
    # sampling (the default) still refuses another token grid
    with pytest.raises(ValueError, match=r"set model.denoiser.input_size=8 at patch_size 2 "
                                         r"\(.*\), and model.latent_shape's height and width "
                                         r'to 8 alike$'):  # (one round: both keys named)
        load_state_dict_checked(DiT(**{**IMAGE, 'input_size': 16}), small, 'ckpt.pt')


def test_a_fine_tune_to_another_class_count_starts_a_new_label_table(logged):
    # DiT users fine-tune the ImageNet model on their own classes: the label table of
    # another length is the config's (its initialisation), said in a warning; the
    # rest loads (it was refused as another model)
    ten = DiT(**{**IMAGE, 'num_classes': 10}).state_dict()
    model = DiT(**{**IMAGE, 'num_classes': 3})
    assert_loaded_keeping(model, ten, {'y_embedder.embedding_table.weight'})
    assert logged == ["ckpt.pt: a label table of another length: the config's y_embedder."
                      "embedding_table.weight (4, 32) (the file's: (11, 32)) starts from its "
                      "initialisation, the file's is not used (a fine-tune to new classes; to "
                      "keep the file's, set model.denoiser.num_classes and model.num_classes to "
                      '10 with class_dropout_prob > 0 (a null-class row for guidance), or to 11 '
                      'without)']
    # sampling refuses it; a table of another width is another model
    with pytest.raises(ValueError, match='y_embedder.embedding_table.weight: \\(11, 32\\)'):
        load_state_dict_checked(DiT(**{**IMAGE, 'num_classes': 3}), ten, 'ckpt.pt')
    wide = {**ten, 'y_embedder.embedding_table.weight': torch.zeros(4, 16)}
    with pytest.raises(ValueError, match='of another shape'):
        load_state_dict_checked(DiT(**{**IMAGE, 'num_classes': 3}), wide, 'ckpt.pt',
                                fine_tune=True)
    # one row apart is the null-class row (class_dropout_prob), not new classes: the
    # same 10 classes would have started afresh; refused, naming the setting
    for cfg, said in (({'class_dropout_prob': 0.0}, "the file's 11 rows are 10 classes and "
                       'the null-class row for guidance, which this model has not: set '
                       r'model.denoiser.class_dropout_prob > 0 \(DiT: 0.1\)'),
                      ({'num_classes': 11}, "the file's 11 rows hold no null-class row")):
        state = ten if 'class_dropout_prob' in cfg else DiT(
            **{**IMAGE, 'num_classes': 11, 'class_dropout_prob': 0.0}).state_dict()
        with pytest.raises(ValueError, match='the label tables are one row apart: ' + said):
            load_state_dict_checked(DiT(**{**IMAGE, 'num_classes': 10, **cfg}), state,
                                    'ckpt.pt', fine_tune=True)


def test_only_fixed_tables_are_kept(logged):
    small = DiT(**IMAGE).state_dict()
    with pytest.raises(ValueError, match=r'pos_embed: \(1, 16, 32\) in the checkpoint.*'
                                         r'; 10 missing \(e.g. blocks.2.'):
        load_state_dict_checked(DiT(**{**IMAGE, 'input_size': 16, 'depth': 3}), small,
                                'ckpt.pt', fine_tune=True)
    learned = DiT(**{**IMAGE, 'input_size': 16})
    learned.pos_embed.requires_grad_(True)  # a table that trains is the file's to give
    with pytest.raises(ValueError, match='of another shape'):
        load_state_dict_checked(learned, small, 'ckpt.pt', fine_tune=True)
    assert not logged


def test_a_file_that_does_not_say_is_not_warned_about(tmp_path, capsys):
    """``{'state_dict': ...}`` without a run's meta (written by hand or by another
    tool) does not say whether its weights are the EMA ones: no warning, and export
    says so."""
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': {'denoiser.weight': torch.ones(2, 2),
                               'denoiser.bias': torch.ones(2)}}, path)
    load_weights(linear_model(), str(path))
    assert not capsys.readouterr().err
    export_denoiser.main([str(path), '--out', str(tmp_path / 'd.pt')])
    assert "the denoiser's one set of weights, EMA or not: the file does not say" \
        in capsys.readouterr().out


def test_objectives_compare_by_class_name_with_the_default():
    """(review) 'mmsora.GaussianDiffusion' builds GaussianDiffusion: a --resume of a
    run saved with the plain name was refused as another objective; a model config
    without diffusion trains LatentDiffusion's default."""
    from mmengine.config import Config

    from mmsora.utils.trained_settings import config_objective, trained_objective
    assert config_objective(dict(diffusion=dict(type='mmsora.GaussianDiffusion'))) == \
        'GaussianDiffusion'
    assert config_objective(dict(type='LatentDiffusion')) == 'GaussianDiffusion'
    saved = Config(dict(model=dict(type='LatentDiffusion'))).pretty_text
    assert trained_objective(dict(meta=dict(cfg=saved))) == 'GaussianDiffusion'
    assert trained_objective(dict(meta=dict())) is None


def test_the_clip_fingerprint_does_not_depend_on_how_the_data_root_is_written(
        tmp_path, monkeypatch):
    """(review) --data-root data and --data-root $PWD/data name the same files: a
    rerun with the other spelling was refused as 'the manifest changed'."""
    from mmsora.datasets.extraction_sources import ClipSource
    from mmsora.datasets.manifest import write_manifest
    (tmp_path / 'data').mkdir()
    write_manifest([dict(path='a.mp4', num_frames=8, fps=8.0)], str(tmp_path / 'm.csv'))
    monkeypatch.chdir(tmp_path)
    relative = ClipSource(str(tmp_path / 'm.csv'), 4, (8, 8), data_root='data')
    absolute = ClipSource(str(tmp_path / 'm.csv'), 4, (8, 8), data_root=str(tmp_path / 'data'))
    assert relative.fingerprint() == absolute.fingerprint()


def test_the_mismatch_names_the_setting_to_give(tmp_path):
    """A VAE's weights, a file with(out) learned sigma and another class count were
    all told 'build the model with the settings it was trained with (widths, depth,
    ...)': the VAE's is no denoiser at all, and the others have one setting to give."""
    from diffusers import AutoencoderKL

    from tests.tiny_models import TINY_VAE
    vae = AutoencoderKL(**TINY_VAE).state_dict()
    with pytest.raises(ValueError, match=r"the file holds a VAE's weights \(encoder / "
                                         r"decoder\), not a denoiser's"):
        load_state_dict_checked(DiT(**IMAGE), vae, 'vae.safetensors')
    sigma = DiT(**{**IMAGE, 'learn_sigma': True}).state_dict()
    with pytest.raises(ValueError, match=r'the file predicts the variance \(learn_sigma: '
                                         r'24 outputs, this model 12\): set model.denoiser.'
                                         r'learn_sigma=True'):
        load_state_dict_checked(DiT(**{**IMAGE, 'learn_sigma': False}), sigma, 'ckpt.pt')
    ten = DiT(**{**IMAGE, 'num_classes': 10}).state_dict()
    with pytest.raises(ValueError, match=r"the file's label table has 11 rows \(10 classes "
                                         r'and the null-class row, or 11 without one\): set '
                                         r'model.denoiser.num_classes and model.num_classes'):
        load_state_dict_checked(DiT(**{**IMAGE, 'num_classes': 3}), ten, 'ckpt.pt')
    # another in_channels was told 'the file predicts the variance' (its output rows
    # double too)
    eight = DiT(**{**IMAGE, 'in_channels': 6, 'learn_sigma': False}).state_dict()
    with pytest.raises(ValueError, match=r'the file takes 6 input channels \(this model 3\): '
                                         r'set model.denoiser.in_channels=6'):
        load_state_dict_checked(DiT(**{**IMAGE, 'learn_sigma': False}), eight, 'ckpt.pt')
    # in a fine-tune the tables the config may change say nothing: another size and
    # class count with another learn_sigma is named by learn_sigma (it was 'set
    # input_size' / 'set num_classes')
    other = DiT(**{**IMAGE, 'input_size': 16, 'num_classes': 10, 'learn_sigma': False})
    with pytest.raises(ValueError, match='set model.denoiser.learn_sigma=True'):
        load_state_dict_checked(other, sigma, 'ckpt.pt', fine_tune=True)
    # a work dir whose last_checkpoint names a file gone (a moved work dir): named as
    # such (train --load-from called it a DeepSpeed folder)
    from mmsora.utils.checkpoint_choice import resolve_checkpoint
    work = tmp_path / 'moved'
    work.mkdir()
    (work / 'last_checkpoint').write_text('/elsewhere/work/iter_4.pth')
    with pytest.raises(FileNotFoundError, match=r'moved/last_checkpoint names /elsewhere/work/'
                                                r'iter_4.pth, which does not exist'):
        resolve_checkpoint(str(work))
