"""tools/extract_features.py on a video manifest: per-frame and video VAEs, captions."""
import numpy as np
import pytest
import torch

from mmsora.datasets import LatentStore, PackedLatentDataset, write_manifest
from mmsora.datasets.extraction_sources import ClipSource
from mmsora.models import HFTextEncoder, VideoVAEWrapper
from mmsora.utils.cli import UserError
from tests.shared_videos import BIKES, BUNNY, needs_videos
from tests.extract_tools import extract
from tests.tiny_models import TINY_WAN_VAE, make_tiny_text_encoder

pytestmark = needs_videos
CAPTIONS = ['people ride bikes on the road', 'a rabbit in the snow', 'broken']


@pytest.fixture
def manifest(tmp_path):
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'\x00\x00\x00\x18ftypmp42 truncated')
    rows = [dict(path=BIKES, caption=CAPTIONS[0], label=1),
            dict(path=str(broken), caption=CAPTIONS[2], label=0),
            dict(path=BUNNY, caption=CAPTIONS[1], label=0)]
    path = str(tmp_path / 'clips.csv')
    write_manifest(rows, path)
    return path


def run(manifest, out, *extra):
    return extract.main(['--manifest', manifest, '--out', out, '--num-frames', '4',
                         '--frame-stride', '3', '--size', '16', '24', '--shard-size', '2',
                         '--batch-size', '2', '--num-workers', '0', '--device', 'cpu',
                         '--dtype', 'float32', *extra])


def test_per_frame_vae_with_t5_captions(manifest, tiny_vae_dir, tmp_path):
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    out = str(tmp_path / 'store')
    summary = run(manifest, out, '--vae', tiny_vae_dir, '--text-encoder', t5,
                  '--max-length', '10', '--flip', '--micro-batch-size', '3')
    assert summary['num_items'] == 2 and summary['skipped_this_run'] == [
        str(tmp_path / 'broken.mp4')]
    store = LatentStore(out)
    assert store.latent_shape == (4, 4, 8, 12)  # (C, T, H/2, W/2) of the tiny VAE
    np.testing.assert_array_equal(store.labels, [1, 0])
    assert store.index['meta']['num_frames'] == 4 and store.text_shape == (10, 32)

    # Reference: the same clip, encoded frame by frame by diffusers directly.
    from diffusers import AutoencoderKL
    clip = ClipSource(manifest, 4, (16, 24), frame_stride=3)[2][0]  # bunny (3, 4, 16, 24)
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    frames = torch.cat([clip, clip.flip(-1)], 0).view(2, 3, 4, 16, 24)
    with torch.no_grad():
        dist = vae.encode(frames.permute(0, 2, 1, 3, 4).flatten(0, 1)).latent_dist
    mean = dist.mean.view(2, 4, 4, 8, 12).permute(0, 2, 1, 3, 4) * 0.18215
    np.testing.assert_allclose(store[1][:, 0], mean.numpy(), atol=1e-5)

    emb, mask, _ = HFTextEncoder(t5, max_length=10).encode([CAPTIONS[1]])
    text = store.text(1)
    np.testing.assert_allclose(text['text_embeds'], emb[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(text['text_mask'], mask[0].numpy())
    item = PackedLatentDataset(out, seed=0)[0]
    assert item['latents'].shape == (4, 4, 8, 12) and item['text_mask'].sum() == 7  # 6 words + </s>


def test_video_vae_compresses_time(manifest, tmp_path):
    from diffusers import AutoencoderKLWan
    torch.manual_seed(0)
    vae_dir = str(tmp_path / 'wan')
    AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(vae_dir)
    out = str(tmp_path / 'store')
    summary = run(manifest, out, '--video-vae', vae_dir, '--num-frames', '5')
    assert summary['latent_shape'] == [4, 3, 4, 6]  # 5 frames -> 3, 16x24 -> 4x6
    clip = ClipSource(manifest, 5, (16, 24), frame_stride=3)[0][0]
    ref, _ = VideoVAEWrapper('AutoencoderKLWan', pretrained_path=vae_dir).encode_moments(
        clip[None])
    np.testing.assert_allclose(LatentStore(out)[0][0, 0], ref[0].numpy(), atol=1e-5)
    assert LatentStore(out).text(0) is None
    # 8 frames: Wan encodes the first, then chunks of 4, and dropped the last 3 frames
    # without a word (the store said num_frames 8)
    with pytest.raises(UserError, match='--num-frames: 8 frames per clip: AutoencoderKLWan '
                                        'encodes the first 5 into 3 latent frames and drops '
                                        'the rest; take 5 or 9 frames'):
        run(manifest, str(tmp_path / 'eight'), '--video-vae', vae_dir, '--num-frames', '8')


def test_a_vae_folder_of_another_kind_is_one_line(manifest, tiny_vae_dir, tmp_path):
    """diffusers loaded a Wan folder into AutoencoderKL (or CogVideoX) and failed with
    dozens of size-mismatch lines; --video-vae now takes the class its folder names."""
    from diffusers import AutoencoderKLWan
    wan = str(tmp_path / 'wan')
    AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(wan)
    with pytest.raises(UserError, match=rf"VAE folder '{wan}' holds AutoencoderKLWan weights "
                                        r'\(its config.json\), not AutoencoderKL ones: a video '
                                        r'VAE: give it as one \(extract_features.py '
                                        r'--video-vae DIR --video-vae-class AutoencoderKLWan'):
        run(manifest, str(tmp_path / 'a'), '--vae', wan)
    with pytest.raises(UserError, match=r'holds AutoencoderKLWan weights .*not '
                                        r'AutoencoderKLCogVideoX ones'):
        run(manifest, str(tmp_path / 'b'), '--video-vae', wan, '--video-vae-class',
            'AutoencoderKLCogVideoX')
    with pytest.raises(UserError, match=rf'--video-vae {tiny_vae_dir}: an image VAE '
                                        r'\(AutoencoderKL, its config.json says\): give it '
                                        r'with --vae'):
        run(manifest, str(tmp_path / 'c'), '--video-vae', tiny_vae_dir)


def test_skipped_inputs_are_listed_with_why(manifest, tiny_vae_dir, tmp_path, capsys):
    """The summary called a readable but short video 'unreadable'; each skipped input
    now comes with its reason."""
    argv = ['--manifest', manifest, '--out', str(tmp_path / 'long'), '--num-frames', '60',
            '--frame-stride', '3', '--size', '16', '24', '--num-workers', '0', '--device',
            'cpu', '--dtype', 'float32', '--vae', tiny_vae_dir]
    for run_ in ('first', 'rerun'):  # a rerun named the skipped inputs without why
        extract.main(argv)
        out = capsys.readouterr().out
        assert 'skipped 2 unreadable or too short inputs: ' in out, run_
        assert f"{tmp_path / 'broken.mp4'} (cannot read video " in out, (run_, out)
        assert f"{BUNNY} (video '{BUNNY}' has 132 frames but a clip of 60 frames at " \
               'stride 3 needs 178; use shorter clips, a smaller stride, or --pad loop ' \
               '(or repeat_last), into another --out)' in out, (run_, out)  # the tool's
        # option, not the pipeline's setting; for another --out (a store is one --pad)
    import json
    index = json.load(open(tmp_path / 'long' / 'index.json'))
    assert any(why.startswith('cannot read video') for sh in index['shards']
               for why in sh['skipped_why'])


def test_errors(manifest, tiny_vae_dir, tmp_path):
    with pytest.raises(UserError, match='not a multiple of the VAE factor 2'):
        extract.main(['--manifest', manifest, '--out', str(tmp_path / 'o'), '--vae',
                      tiny_vae_dir, '--size', '15'])
    with pytest.raises(UserError, match='--size takes H or H W'):
        extract.main(['--manifest', manifest, '--out', str(tmp_path / 'o'), '--vae',
                      tiny_vae_dir, '--size', '8', '8', '8'])
    with pytest.raises(UserError, match='are for videos'):
        extract.main(['--data-path', str(tmp_path), '--out', str(tmp_path / 'o'), '--vae',
                      tiny_vae_dir, '--frame-stride', '2'])
    nocap = str(tmp_path / 'nocap.csv')
    write_manifest([dict(path=BIKES)], nocap)
    with pytest.raises(UserError, match='caption'):
        extract.main(['--manifest', nocap, '--out', str(tmp_path / 'o'), '--vae',
                      tiny_vae_dir, '--text-encoder', str(tmp_path)])


def test_captions_longer_than_max_length_are_counted_first(manifest, tiny_vae_dir, tmp_path,
                                                           capsys):
    """Captions past --max-length tokens were cut without a word (as Open-Sora's T5
    does); the count comes before the encoding, with the longest's length."""
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    run(manifest, str(tmp_path / 'store'), '--vae', tiny_vae_dir, '--text-encoder', t5,
        '--max-length', '6')
    assert ("note: 1 caption of 3 is longer than --max-length 6 tokens (the longest 7, "
            "e.g. 'people ride bikes on the road') and will be cut there; give a larger "
            '--max-length to keep them whole') in capsys.readouterr().err
    run(manifest, str(tmp_path / 'whole'), '--vae', tiny_vae_dir, '--text-encoder', t5,
        '--max-length', '7')
    assert 'longer than --max-length' not in capsys.readouterr().err


def test_several_clips_per_video_spread_over_it(manifest, tiny_vae_dir, tmp_path):
    """--clips-per-video K: K windows of every video (first, last, evenly between), each
    an item (Latte crops a new window each time it reads a video; the store took the
    middle one alone: config audit)."""
    from mmsora.datasets.transforms import SampleClipIndices
    source = ClipSource(manifest, 4, (16, 24), frame_stride=3, clips_per_video=3)
    assert len(source) == 9 and source.labels == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert source.names[4].endswith('broken.mp4 (clip 2 of 3)')
    # the windows' frames: the first, the middle and the last 10-frame spans of bikes
    from mmsora.utils.video_io import probe_video
    total = probe_video(BIKES)['num_frames']
    sampler = SampleClipIndices(4, frame_stride=3, mode='position')
    starts = [int(sampler(dict(path=BIKES, num_frames=total, fps=25.0, clip_position=p))[
        'frame_indices'][0]) for p in (0.0, 0.5, 1.0)]
    assert starts == [0, round((total - 10) / 2), total - 10]
    first, middle, last = (source[i][0] for i in range(3))
    assert not torch.equal(first, last) and not torch.equal(first, middle)
    out = str(tmp_path / 'store')
    summary = run(manifest, out, '--vae', tiny_vae_dir, '--clips-per-video', '3')
    assert summary['num_items'] == 6  # 2 readable videos x 3 clips
    store = LatentStore(out)
    np.testing.assert_array_equal(store.labels, [1, 1, 1, 0, 0, 0])
    assert store.index['meta']['clips_per_video'] == 3
    # a rerun with another count is refused, naming the option
    with pytest.raises(UserError, match=r'clips_per_video=3 .* \(set by --clips-per-video\)'):
        run(manifest, out, '--vae', tiny_vae_dir)


def _set_reader(out, version):
    """Make ``out``'s files say another video reader wrote them (None: from before the
    reader was recorded)."""
    import glob
    import json
    import os.path as osp
    for path in glob.glob(osp.join(out, 'parts', '*.json')) + glob.glob(
            osp.join(out, 'index.json')):
        with open(path) as f:
            data = json.load(f)
        if version is None:
            del data['meta']['video_reader']
        else:
            data['meta']['video_reader'] = version
        with open(path, 'w') as f:
            json.dump(data, f)


def test_the_video_reader_is_recorded_and_a_resume_by_another_is_refused(
        manifest, tiny_vae_dir, tmp_path, capsys):
    """A store begun before the reader turned phone clips upright (widened non-square
    pixels, skipped edit-list frames) resumed silently: its finished shards held clips
    read one way, the rest another."""
    from mmsora.utils.video_io import READER_VERSION
    from tests.extract_tools import interrupted
    out = str(tmp_path / 'store')
    interrupted(lambda: run(manifest, out, '--vae', tiny_vae_dir))
    _set_reader(out, READER_VERSION - 1)
    with pytest.raises(UserError, match=rf'written with video_reader={READER_VERSION - 1} '
                       rf'.*this run has video_reader={READER_VERSION}: .*\(set by the '
                       r'version of mmsora that read the videos: extract into a new --out'):
        run(manifest, out, '--vae', tiny_vae_dir)
    # one from before the reader was recorded resumes, with a note saying what may differ
    _set_reader(out, None)
    capsys.readouterr()
    summary = run(manifest, out, '--vae', tiny_vae_dir)
    assert summary['complete'] and summary['num_items'] == 2
    assert 'was begun by an older mmsora, whose video reader did not turn rotated' in \
        capsys.readouterr().err
    index = LatentStore(out).index  # (its older shards: read by any reader)
    assert 'video_reader' not in index['meta']
    assert [s.get('meta') for s in index['shards']] == [None, dict(video_reader=READER_VERSION)]
    # finished: a rerun has nothing to do and no note
    assert run(manifest, out, '--vae', tiny_vae_dir)['shards_written'] == 0
    assert 'older mmsora' not in capsys.readouterr().err
