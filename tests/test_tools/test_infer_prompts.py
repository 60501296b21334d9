"""tools/infer.py's prompts and output options, found by a walk-through of the
text-to-video path: a prompt file with a byte order mark, --prompt and --prompt-file
together, prompt mistakes named before the weights load, prompts or labels left out
by --num-samples, the --out message of a text model, and --num-frames named."""
import os.path as osp

import pytest
import torch

from mmsora.utils.cli import UserError
from tools import infer

TEXT_CONFIG = 'configs/video_dit/video_dit_tiny4_1xb2_t5_two_clips.py'
VIDEO_CONFIG = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'
MISSING = '/nonexistent/iter_10.pth'  # read only after the checks


def refused(argv) -> str:
    with pytest.raises(UserError) as info:
        infer.main(argv)
    return str(info.value)


def test_a_prompt_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / 'prompts.txt'
    path.write_bytes('\ufeff# my prompts\r\na bike on a road\r\n\r\n一只猫\n'.encode('utf-8'))
    args = infer.parse_args(['run', '--prompt-file', str(path)])
    assert infer.read_prompts(args) == ['a bike on a road', '一只猫']
    both = infer.parse_args(['run', '--prompt', 'x', '--prompt-file', str(path)])
    with pytest.raises(UserError, match='^--prompt and --prompt-file exclude each other'):
        infer.read_prompts(both)
    with pytest.raises(UserError, match=r"^--prompt '': an empty prompt is an empty "
                                        r"caption to the text encoder, not the model's null"):
        infer.read_prompts(infer.parse_args(['run', '--prompt', 'a bike', ' ']))
    latin = tmp_path / 'latin.txt'  # (the codec's own words, a position in the file)
    latin.write_bytes('un café\n'.encode('latin-1'))
    with pytest.raises(UserError, match=r"^--prompt-file: .*latin.txt is not UTF-8 text "
                                        r'\(.* at byte 6\): save it as UTF-8$'):
        infer.read_prompts(infer.parse_args(['run', '--prompt-file', str(latin)]))


def test_prompt_mistakes_are_named_before_the_weights_load(repo_root, tmp_path):
    text = osp.join(repo_root, TEXT_CONFIG)
    assert refused([text, '--checkpoint', MISSING, '--prompt-file', str(tmp_path / 'p.txt')]) \
        .startswith("--prompt-file: cannot read ")
    assert refused([text, '--checkpoint', MISSING]).startswith(
        'this model is text-conditioned: give --prompt TEXT')
    assert refused([osp.join(repo_root, VIDEO_CONFIG), '--checkpoint', MISSING, '--prompt',
                    'a dog']).startswith('--prompt / --prompt-file are for text-conditioned')
    # a text model's clips are NAME_000.mp4 (no label), and .npz is offered
    assert refused([text, '--checkpoint', MISSING, '--prompt', 'a', '--out',
                    str(tmp_path / 'x.png')]).startswith(
        '--out for video samples is NAME.mp4 (files NAME_000.mp4, ...), NAME.gif (GIFs '
        'alone), a folder, or NAME.npz')


@pytest.fixture
def video_weights(repo_root, tmp_path):
    """Random weights of the demo video config's denoiser, as a released-style file."""
    import mmsora.diffusion  # noqa: F401
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    from mmsora.utils.config_loading import load_config
    from mmsora.utils.training_inputs import training_model_cfg
    model = MODELS.build(training_model_cfg(load_config(osp.join(repo_root, VIDEO_CONFIG))))
    path = tmp_path / 'video.pt'
    torch.save(model.denoiser.state_dict(), path)
    return str(path)


def test_what_num_samples_leaves_out_and_num_frames_are_named(repo_root, tmp_path,
                                                              video_weights, capsys):
    config = osp.join(repo_root, VIDEO_CONFIG)
    common = [config, '--checkpoint', video_weights, '--steps', '1', '--device', 'cpu']
    assert refused([*common, '--num-frames', '99']).startswith(
        '--num-frames 99: 99 latent frames but the denoiser has a table for at most')
    infer.main([*common, '--labels', '0', '1', '2', '--num-samples', '2', '--out',
                str(tmp_path / 'clips') + '/'])
    assert 'note: --num-samples 2: the last 1 of the 3 labels given are not sampled' \
        in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / 'clips').iterdir()) == [
        'sample_000_label0.mp4', 'sample_001_label1.mp4']


def test_a_long_prompt_is_shortened_in_the_summary(repo_root, tmp_path, capsys):
    """The summary line printed every prompt whole (a 300-word prompt filled it)."""
    import mmsora.diffusion  # noqa: F401
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.config_loading import load_config
    from mmsora.utils.training_inputs import training_model_cfg
    from tests.tiny_models import make_tiny_text_encoder
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5', width=32)
    options = ['model.denoiser.text_dim=32', f'model.text_encoder.pretrained_path={t5}']
    cfg = load_config(osp.join(repo_root, TEXT_CONFIG))
    apply_cfg_options(cfg, options)
    weights = tmp_path / 'text.pt'
    torch.save(MODELS.build(training_model_cfg(cfg)).denoiser.state_dict(), weights)
    long = 'a bike rides on the road ' * 20
    infer.main([osp.join(repo_root, TEXT_CONFIG), '--checkpoint', str(weights), '--prompt',
                long, 'a cat', '--steps', '1', '--device', 'cpu', '--out',
                str(tmp_path / 'clips') + '/', '--cfg-options', *options])
    out = capsys.readouterr().out
    assert f"prompts ['{long[:57]}...', 'a cat']" in out
