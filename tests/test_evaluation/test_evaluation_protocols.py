"""What the evaluation claims to match: CLIPImageProcessor's resize on non-square
pictures, the FVD-2048 reference, the batch size's meaning, and the documented
attributions of the CLIP score and the FVD preprocessing."""
import os.path as osp
import re
import shlex

import numpy as np
import pytest
import torch


def read(repo_root, *path):
    with open(osp.join(repo_root, *path)) as f:
        return f.read()


@pytest.mark.parametrize('shape', [(30, 52), (52, 30)])
def test_clip_resize_matches_clip_image_processor_on_non_square_pictures(tmp_path, shape):
    """round(h * scale) made the longer side 28 where transformers' int(size * long /
    short) makes 27 (16 / 30 * 52 = 27.7): the crop moved by a pixel."""
    transformers = pytest.importorskip('transformers')
    from mmsora.evaluation import CLIPEmbedder
    from tests.tiny_models import make_tiny_clip
    embedder = CLIPEmbedder(make_tiny_clip(tmp_path / 'clip'))
    assert embedder.size == 16
    # smooth pictures (noise upsampled 6x), as frames are: the resize kernels agree
    noise = np.random.default_rng(1).integers(0, 256, (2, 3, shape[0] // 6, shape[1] // 6))
    images = torch.nn.functional.interpolate(
        torch.from_numpy(noise).float(), size=shape, mode='bilinear', align_corners=False)
    images = images.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    processor = transformers.CLIPImageProcessor(size={'shortest_edge': 16},
                                                crop_size={'height': 16, 'width': 16})
    reference = processor(images=list(images), return_tensors='pt')['pixel_values']
    ours = embedder.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert ours.shape == reference.shape == (2, 3, 16, 16)
    # torch's antialiased bicubic vs PIL's: within ~1 grey level of 255 (0.014 here;
    # the crop a pixel off gave 0.74)
    assert (ours - reference).abs().max() < 0.03


def test_fvd2048_reference_is_2048_clips_as_documented(repo_root):
    """StyleGAN-V's and Latte's FVD-16 take 2048 real clips; the documented command
    took every training video (~9.5K clips) under the FVD-16 name."""
    from tests.test_evaluation.test_make_reference import tool
    config = read(repo_root, 'configs', '_base_', 'evaluation', 'fvd2048_ucf101.py')
    header = ' '.join(line.lstrip('# ') for line in config.splitlines()
                      if line.startswith('#'))
    assert 'against 2048 real UCF-101 clips' in header
    assert '--max-samples 2048' in header
    docs = read(repo_root, 'docs', 'evaluation.md')
    commands = [c.replace('\\\n', ' ') for c in re.findall(
        r'python tools/make_reference.py --videos (?:[^\n]*\\\n)*[^\n]*', docs)]
    assert commands
    for command in commands:
        args = tool().parse_args(shlex.split(command)[2:])
        assert (args.max_samples, args.num_frames, args.frame_stride) == (2048, 16, 3)
    docstring = tool().__doc__.replace('\\\n', ' ')
    videos = re.findall(r'python tools/make_reference.py --videos [^\n]*', docstring)
    assert videos and all('--max-samples 2048' in v for v in videos)


def test_batch_size_is_described_as_per_process(repo_root, capsys):
    """Each batch is drawn whole by one process: --batch-size is per-process memory,
    not a 'global sampling batch size' split among the processes."""
    from tests.cli_helpers import load_tool
    with pytest.raises(SystemExit):
        load_tool('test').parse_args(['--help'])
    help_text = ' '.join(capsys.readouterr().out.split())
    assert 'global sampling batch size' not in help_text
    assert ('--batch-size BATCH_SIZE samples per batch; each batch is drawn whole by one '
            'process, so this is per-process memory, not split among the processes'
            in help_text)
    docs = ' '.join(read(repo_root, 'docs', 'evaluation.md').split())
    assert ('batch is drawn whole by one process, so `B` (`--batch-size`, '
            '`evaluation.batch_size`) is what one process holds in memory' in docs)


def test_clip_score_and_fvd_preprocessing_are_attributed_rightly(repo_root):
    """The CLIP score is Hessel's per-pair clamp (torchmetrics clamps the mean); the
    FVD centre crop is common_metrics_on_video_quality's, not Latte's (Latte and
    StyleGAN-V resize whole frames in the detector)."""
    import mmsora.evaluation.extractors.i3d as i3d
    from mmsora.evaluation import functional
    docs = ' '.join(read(repo_root, 'docs', 'evaluation.md').split())
    assert "sample (torchmetrics' `CLIPScore`" not in docs
    assert ("torchmetrics' `CLIPScore` code clamps the mean of 100 * cos at 0 instead of "
            "each pair's score" in docs)
    doc = ' '.join(functional.clip_score.__doc__.split())
    assert "torchmetrics' CLIPScore, after" not in doc
    assert "torchmetrics' ``CLIPScore`` instead clamps the mean" in doc
    assert "Latte's `preprocess_single`" not in docs
    assert ('center-cropped (the `preprocess_single` of common_metrics_on_video_quality' in docs
            and 'with `rescale=True, resize=True` instead' in docs)
    doc = ' '.join(i3d.resize_center_crop.__doc__.split())
    assert "Latte's / StyleGAN-V's FVD preprocessing" not in doc
    assert 'common_metrics_on_video_quality' in doc and 'rescale=True, resize=True' in doc
    clip = ' '.join(read(repo_root, 'mmsora', 'evaluation', 'extractors', 'clip.py').split())
    assert 'whose mean, std and crop size are used' not in clip
    assert "``vision_config.image_size``" in clip
