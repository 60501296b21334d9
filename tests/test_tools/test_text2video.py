"""tools/text2video.py end to end, and the model picture backends: an mmsora checkpoint
(class-conditional, labels cycled, config read from the checkpoint) and a diffusers
pipeline from a local folder, each equal to sampling the model directly."""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmsora.apis.text2video import Shot, build_pictures
from mmsora.utils.cli import UserError
from mmsora.utils.video_io import probe_video, read_video_frames
from tests.cli_helpers import load_tool
from tests.tiny_models import tiny_shapes_dit_run

TEXT_CONFIG = 'configs/video_dit/video_dit_tiny4_1xb2_t5_two_clips.py'


def run_tool(args, cwd, **env):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **env}
    return subprocess.run([sys.executable, 'tools/text2video.py', *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope='module')
def tiny_dit(tmp_path_factory):
    """A random tiny DiT: its config, and a checkpoint that also carries the config."""
    return tiny_shapes_dit_run(tmp_path_factory.mktemp('dit'))


def shots(n):
    return [Shot([], prompt=f'prompt {i}', index=i) for i in range(n)]


def test_mmsora_pictures_cycle_labels_like_direct_sampling(tiny_dit):
    config, checkpoint, model = tiny_dit
    backend = build_pictures(f'mmsora:{checkpoint}', labels=[1, 0], seed=5, device='cpu')
    pictures = backend.render_all(shots(3), (64, 36), progress=False)
    assert [p.shape for p in pictures] == [(16, 16, 3)] * 3
    direct = model.eval().sample([1, 0, 1], sampler='ddim', num_steps=2, seeds=[5, 6, 7])
    expected = ((direct.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
    np.testing.assert_array_equal(np.stack(pictures), expected.numpy())
    same = build_pictures(f'mmsora:{config}', checkpoint=checkpoint, labels=[1, 0],
                          seed=5, device='cpu').render_all(shots(1), (64, 36), False)
    np.testing.assert_array_equal(same[0], pictures[0])


def test_diffusers_pipeline_from_a_local_folder(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=('DownBlock2D',) * 2,
                       up_block_types=('UpBlock2D',) * 2, norm_num_groups=8)
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    pipe.save_pretrained(str(tmp_path / 'pipe'))
    backend = build_pictures(f'diffusers:{tmp_path / "pipe"}', num_steps=2, seed=3,
                             device='cpu')
    picture = backend.render(shots(2)[1], (64, 36))
    assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
    direct = pipe(generator=torch.Generator().manual_seed(4), num_inference_steps=2,
                  output_type='np').images[0]
    np.testing.assert_array_equal(picture, (np.clip(direct, 0, 1) * 255).round())


def test_cli_makes_a_video_from_an_mmsora_checkpoint(tiny_dit, repo_root, tmp_path):
    _, checkpoint, _ = tiny_dit
    story = tmp_path / 'story.txt'
    story.write_text('The red disk rolls away. A green square waits for it.\n')
    out = tmp_path / 'story.mp4'
    result = run_tool([str(story), '--out', str(out), '--speech', 'none', '--pictures',
                       f'mmsora:{checkpoint}', '--device', 'cpu', '--resolution', '96x54',
                       '--fps', '8', '--shot-seconds', '0'], repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'saved' in result.stdout and '2 shots' in result.stdout
    # each shot's picture prompt, with its span (the prompts were not shown anywhere)
    shown = [line for line in result.stdout.splitlines() if line.startswith('  shot ')]
    assert [line.split(':')[0] for line in shown] == ['  shot 1, 0.0-2.2 s',
                                                      '  shot 2, 2.2-4.7 s'], shown
    assert 'red disk rolls away' in shown[0] and 'green square waits' in shown[1]
    info = probe_video(str(out))
    # Silent speech lasts 60/160 s per word (5 + 6 words), plus a 0.3 s pause each.
    assert info['duration'] == pytest.approx(11 * 60 / 160 + 2 * 0.3, abs=0.13)
    assert (info['width'], info['height']) == (96, 54)
    # The default pan/zoom moves the picture within a shot.
    frames = read_video_frames(str(out), [1, 12]).astype(np.float32)
    assert np.abs(frames[0, :27] - frames[1, :27]).mean() > 1.0


def test_the_cpu_work_keeps_freed_memory(tiny_dit, tmp_path, malloc_calls):
    """As tools/infer.py: glibc keeps the memory a frame or a sampling step frees for
    the next (recorded, not made: conftest's malloc_calls), unless --default-malloc."""
    tool = load_tool('text2video')
    story = tmp_path / 'story.txt'
    story.write_text('A red disk.')
    common = [str(story), '--speech', 'none', '--resolution', '64x32', '--fps', '4']
    tool.main([*common, '--out', str(tmp_path / 'a.mp4'), '--pictures',
               f'mmsora:{tiny_dit[1]}', '--device', 'cpu', '--steps', '2'])
    assert malloc_calls == [1]
    tool.main([*common, '--out', str(tmp_path / 'b.mp4'), '--pictures',
               f'mmsora:{tiny_dit[1]}', '--device', 'cpu', '--steps', '2',
               '--default-malloc'])
    assert malloc_calls == [1]
    tool.main([*common, '--out', str(tmp_path / 'c.mp4')])  # title cards: composition only
    assert malloc_calls == [1, 1] and (tmp_path / 'c.mp4').is_file()


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    """The tool's main() under run_cli, in this process."""
    from mmsora.utils.cli import run_cli
    tool = load_tool('text2video')
    story = tmp_path / 'story.txt'
    story.write_text('Hello there.')
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    for args, expected in [
            (['--pictures', 'openai'], ['OPENAI_API_KEY', '--pictures titlecard']),
            (['--labels', '3'], ['--labels is for --pictures mmsora / diffusers']),
            (['--resolution', '1080i'], ['480p, 720p or WxH']),
            (['--pause', '-1'], ['--pause must be >= 0'])]:
        assert run_cli(lambda: tool.main([str(story), *args])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(e in err[0] for e in expected), err
    assert run_cli(lambda: tool.main([str(tmp_path / 'missing.txt')])) == 2
    assert 'text file not found' in capsys.readouterr().err


def test_text_conditioned_video_model_draws_each_shot_from_its_prompt(repo_root, tmp_path):
    """A tiny random text VideoDiT with a tiny T5 from a local folder: clips sampled
    from the shots' prompts, equal to sampling the model with those prompts."""
    from mmengine.config import Config

    from mmsora.registry import MODELS
    from tests.tiny_models import make_tiny_text_encoder
    encoder = make_tiny_text_encoder(str(tmp_path / 't5'), width=32)
    config = tmp_path / 'tiny_text.py'
    config.write_text(f'''_base_ = [{osp.join(repo_root, TEXT_CONFIG)!r}]
model = dict(denoiser=dict(input_size=8, hidden_size=32, depth=1, num_heads=2,
                           num_frames=2, text_dim=32),
             text_encoder=dict(pretrained_path={encoder!r}), latent_shape=(3, 2, 8, 8))
sample_cfg = dict(sampler='ddim', num_steps=2, cfg_scale=1.0, fps=4)
''')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    checkpoint = tmp_path / 'text.pth'
    torch.save(dict(state_dict={f'denoiser.{k}': v
                                for k, v in model.denoiser.state_dict().items()}), checkpoint)
    backend = build_pictures(f'mmsora:{config}', checkpoint=str(checkpoint), device='cpu')
    assert backend.text_conditioned and backend.fps == 4
    prompts = ['a red disk', 'a cat runs in the snow']
    scenes = [Shot([], prompt=p, index=i) for i, p in enumerate(prompts)]
    clips = backend.render_all(scenes, (64, 36), progress=False)
    assert [c.shape for c in clips] == [(2, 8, 8, 3)] * 2
    direct = model.eval().sample(prompts=prompts, sampler='ddim', num_steps=2, seeds=[0, 1])
    expected = ((direct.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1)
    np.testing.assert_array_equal(np.stack(clips), expected.numpy())
    with pytest.raises(UserError, match='text-conditioned'):
        build_pictures(f'mmsora:{config}', checkpoint=str(checkpoint), labels=[0],
                       device='cpu')
