"""tools/train.py, tools/dist_train.sh and tools/infer.py as a user runs them:
bad input stops with one clear line; 2-process gloo training; sampling to PNG."""
import os.path as osp
import re
import sys

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import error_line
from tests.launch import free_port, run_tool
from tests.tiny_models import DEMO, TINY_TRAIN

# The shrunk demo of the training tests (TINY_TRAIN) with half its batch and samples:
# the two processes of the torchrun tests train on its batch of 8 together.
TINY = [*TINY_TRAIN, 'train_dataloader.dataset.num_samples=32',
        'train_dataloader.batch_size=4']


def run(args, repo_root, timeout=300, **env):
    return run_tool(args, repo_root, timeout=timeout, **env)


def train(repo_root, *args, timeout=300):
    return run([sys.executable, 'tools/train.py', *args], repo_root, timeout=timeout)


@pytest.mark.parametrize('args, expected', [
    (['configs/nope.py'], 'config file not found: configs/nope.py'),
    ([DEMO, '--cfg-options', 'train_cfg.max_iters'],
     "malformed --cfg-options entry 'train_cfg.max_iters'"),
    ([DEMO, '--cfg-options', 'model.denoiser.type=DiTT'], "unknown type 'DiTT'.*did you mean DiT"),
    ([DEMO, '--cfg-options', 'train_dataloader.dataset.type=SyntheticShapeDataset'],
     "unknown type 'SyntheticShapeDataset'.*SyntheticShapesDataset"),
    ([DEMO, '--cfg-options', 'train_dataloader.dataset.num_sample=8'],
     "unknown config key 'num_sample' for SyntheticShapesDataset; did you mean num_samples"),
    ([DEMO, '--cfg-options', 'model.denoiser.hiden_size=8'],
     "unknown config key 'hiden_size' for DiT; did you mean hidden_size"),
    # refused before training: mmengine's hook took it and failed at the first save
    ([DEMO, '--cfg-options', 'default_hooks.checkpoint.intervall=2'],
     "default_hooks.checkpoint: unknown config key 'intervall' for CheckpointHook; did "
     "you mean interval"),
])
def test_bad_input_gives_one_line(repo_root, tmp_path, args, expected):
    result = train(repo_root, *args, '--work-dir', str(tmp_path))
    line = error_line(result)
    if expected is not None:
        import re
        assert re.search(expected, line), line


@pytest.mark.parametrize('option, expected', [
    ('model.denoiser.hiden_size=8', "unknown config key 'hiden_size' for DiT; did you mean "
     'hidden_size'),
    ('model.denoiser.type=DiTT', "unknown type 'DiTT'.*did you mean DiT"),
    ('train_cfg.max_iter=5', "train_cfg: unknown config key 'max_iter' for "
     'IterBasedTrainLoop; did you mean max_iters'),
    ('train_dataloader.dataset.num_sample=8', "train_dataloader.dataset: unknown config key "
     "'num_sample' for SyntheticShapesDataset; did you mean num_samples"),
    ('optim_wrapper.optimizer.weight_decy=0.1', "optim_wrapper.optimizer: unknown config "
     "key 'weight_decy' for AdamW; did you mean weight_decay"),
    ('train_dataloader.sampler.shufle=False', "train_dataloader.sampler: unknown config key "
     "'shufle' for InfiniteSampler; did you mean shuffle"),
    ('param_scheduler.0.star_factor=0.1', r"param_scheduler\[0\]: unknown config key "
     "'star_factor' for LinearLR; did you mean start_factor"),
    ('custom_hooks.0.momentm=0.001', r"custom_hooks\[0\]: unknown config key 'momentm' "
     'for EMAHook; did you mean momentum'),
    # the model's own consistency checks (a ValueError at its build)
    ('model.latent_shape=[4,16,16]', r'model.latent_shape \[4, 16, 16\] has 4 channels but '
     'model.denoiser.in_channels is 3'),
])
def test_model_and_loop_mistakes_stop_before_the_runner_starts(repo_root, tmp_path, option,
                                                                expected):
    """The one-line error came after mmengine's ~140 lines of environment and config,
    and left a work dir with a log behind."""
    import re
    result = train(repo_root, DEMO, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                   option)
    assert re.search(expected, error_line(result))
    assert not (tmp_path / 'w').exists() or not any((tmp_path / 'w').iterdir())
    assert 'Environment' not in result.stdout + result.stderr


def test_missing_feature_folder_is_named(repo_root, tmp_path):
    config = tmp_path / 'npy.py'
    config.write_text(
        f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
        "train_dataloader = dict(dataset=dict(_delete_=True, type='NpyLatentDataset', "
        f"features_dir='{tmp_path}/feats', labels_dir='{tmp_path}/labels'))\n")
    result = train(repo_root, str(config), '--work-dir', str(tmp_path))
    assert 'feats' in error_line(result)
    unparsable = train(repo_root, DEMO, '--cfg-options', 'model.latent_shape=[3,8')
    assert 'cannot parse the value of --cfg-options model.latent_shape' in error_line(unparsable)


def test_latent_shape_and_label_range_are_checked(repo_root, tmp_path):
    shape = train(repo_root, DEMO, '--work-dir', str(tmp_path / 'a'), '--cfg-options', *TINY,
                  'train_dataloader.dataset.size=16')
    assert 'do not fit the config' in error_line(shape)
    labels = train(repo_root, DEMO, '--work-dir', str(tmp_path / 'b'), '--cfg-options', *TINY,
                   'model.num_classes=2', 'model.denoiser.num_classes=2')
    assert 'labels must lie in [0, 2)' in error_line(labels)


def test_a_config_mistake_under_torchrun_is_said_once(repo_root, tmp_path):
    """Every process of a launch checks the same config: the first of the machine says
    what is wrong (each process printed the same error line), the others stop."""
    result = run(['bash', 'tools/dist_train.sh', DEMO, '2', '--work-dir', str(tmp_path / 'w'),
                  '--cfg-options', 'train_cfg.max_iter=3'], repo_root, timeout=300,
                 PORT=str(free_port()))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert lines == ["error: train_cfg: unknown config key 'max_iter' for "
                     'IterBasedTrainLoop; did you mean max_iters, val_interval?'], \
        result.stderr[-3000:]


def group_alive(pgid) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies left unreaped by
    a container's first process do not count)."""
    import glob
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            fields = open(stat).read().rsplit(')', 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != 'Z':
            return True
    return False


def signalled_run(repo_root, tmp_path, args, signum, ready, repeat=1, launch=None):
    """Start a training run (``tools/train.py DEMO args``, or ``launch`` + args), wait
    until ``ready(stdout_text)``, send ``signum`` to the whole process group, as a
    terminal or a scheduler does (``repeat - 1`` more times to the first process) and
    wait for the end.
    Returns (return code, stderr text)."""
    import os
    import signal
    import subprocess
    import time
    env = {**os.environ, 'OMP_NUM_THREADS': '1',
           'PATH': osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')}
    command = launch or [sys.executable, 'tools/train.py', DEMO]
    out_file, err_file = tmp_path / 'out.txt', tmp_path / 'err.txt'
    with open(out_file, 'w') as stdout, open(err_file, 'w') as stderr:  # (a pipe could
        proc = subprocess.Popen(  # fill and block the run)
            [*command, *args], cwd=repo_root, env=env, stdout=stdout, stderr=stderr,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 240
        while not ready(out_file.read_text()) and time.time() < deadline:
            assert proc.poll() is None, err_file.read_text()[-3000:]
            time.sleep(0.2)
        assert ready(out_file.read_text()), 'not ready within 240 s'
        os.killpg(proc.pid, signum)
        for _ in range(repeat - 1):  # as a launcher passes on one its process got too
            time.sleep(0.05)
            os.kill(proc.pid, signum)
        proc.wait(timeout=120)
        deadline = time.time() + 120  # the launcher's processes too (bash dies of the
        while group_alive(proc.pid):  # signal at once; torchrun and its processes go
            assert time.time() < deadline, 'the processes did not end within 120 s'
            time.sleep(0.2)  # on to their end)
    return proc.returncode, err_file.read_text()


def stopped_at(line, work, by=''):
    """(iteration stopped after, iteration of the last checkpoint) from the line a
    stopped run ends with; fails unless it is exactly that line."""
    found = re.fullmatch(rf'interrupted{by} after iteration (\d+); the last checkpoint is '
                         rf'{work}/iter_(\d+)\.pth(?: \(iterations? [\d-]+ (?:is|are) not in '
                         rf'it(?:; SIGTERM saves the iteration it stops at)?\))?: continue '
                         rf'with --resume \(--work-dir {work}\)', line)
    assert found, line
    return tuple(map(int, found.groups()))


def test_ctrl_c_is_one_line_naming_the_checkpoint_to_resume_from(repo_root, tmp_path):
    """Ctrl-C printed an 86-line KeyboardInterrupt traceback and no hint of where to
    continue from; during a checkpoint's save it broke the save off. The first Ctrl-C
    now ends the iteration under way, its checkpoint included, then stops."""
    import signal
    work = tmp_path / 'w'
    code, err = signalled_run(
        repo_root, tmp_path, ['--work-dir', str(work), '--cfg-options', *TINY,
                              'train_cfg.max_iters=100000', 'default_hooks.checkpoint.interval=2'],
        signal.SIGINT, lambda _: bool(list(work.glob('iter_*.pth'))))
    assert code == 130, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    assert err.count('Ctrl-C: stopping after this iteration') == 1, err[-3000:]
    stopped, saved = stopped_at(err.strip().splitlines()[-1], work)
    assert saved == stopped - stopped % 2  # the iteration's checkpoint, where one was due


ITERATING = re.compile(r'Iter\(train\) \[\s*[3-9]/')  # a few iterations logged


def test_sigterm_saves_the_iteration_and_stops(repo_root, tmp_path):
    """SIGTERM (a scheduler's time limit or preemption) ended the run at once: every
    iteration since the last due checkpoint was lost. It now saves the iteration under
    way and stops with exit 143; more SIGTERMs change nothing; --resume continues."""
    import signal
    work = tmp_path / 'w'
    options = ['--cfg-options', *TINY, 'default_hooks.checkpoint.interval=1000',
               'default_hooks.logger.interval=1', 'train_dataloader.num_workers=2',
               'train_dataloader.persistent_workers=True']
    code, err = signalled_run(
        repo_root, tmp_path, ['--work-dir', str(work), *options,
                              'train_cfg.max_iters=100000'],
        signal.SIGTERM, lambda out: bool(ITERATING.search(out)), repeat=3)
    assert code == 143, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]
    assert err.count('SIGTERM: saving a checkpoint and stopping after this iteration') \
        == 1, err[-3000:]
    stopped, saved = stopped_at(err.strip().splitlines()[-1], work, by=' by SIGTERM')
    assert saved == stopped >= 3  # saved although no checkpoint was due
    resumed = train(repo_root, DEMO, '--work-dir', str(work), '--resume', *options,
                    f'train_cfg.max_iters={stopped + 1}')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f'Iter(train) [{stopped + 1}/{stopped + 1}]' in log, log[-3000:]
    assert f'Iter(train) [{stopped}/' not in log, log[-3000:]  # continued, not redone
    assert osp.isfile(work / f'iter_{stopped + 1}.pth')


def test_sigterm_stops_two_processes_after_the_same_iteration(repo_root, tmp_path):
    """Under torchrun every process gets SIGTERM at its own point (and torchrun passes
    its own on): they agree on the iteration to stop after, save it together (each
    process's RNG states in it) and one of them says where the run stands."""
    import signal

    import torch
    work = tmp_path / 'w'
    code, err = signalled_run(
        repo_root, tmp_path, ['--work-dir', str(work), '--cfg-options', *TINY,
                              'train_cfg.max_iters=100000',
                              'default_hooks.checkpoint.interval=1000',
                              'default_hooks.logger.interval=1'],
        signal.SIGTERM, lambda out: bool(ITERATING.search(out)),
        launch=['env', f'PORT={free_port()}', 'bash', 'tools/dist_train.sh', DEMO, '2'])
    assert code != 0, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith('interrupted')]
    assert len(lines) == 1, err[-3000:]
    stopped, saved = stopped_at(lines[0], work, by=' by SIGTERM')
    assert saved == stopped
    meta = torch.load(work / f'iter_{saved}.pth', map_location='cpu',
                      weights_only=False)['meta']
    assert meta['iter'] == stopped and len(meta['rng_states']) == 2


def test_two_process_gloo_training_then_infer(repo_root, tmp_path):
    work = tmp_path / 'work'
    result = run(['bash', 'tools/dist_train.sh', DEMO, '2', '--work-dir', str(work),
                  '--cfg-options', *TINY, 'train_cfg.max_iters=4',
                  'default_hooks.logger.interval=1'], repo_root, timeout=600,
                 PORT=str(free_port()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log and 'Iter(train) [4/4]' in log, log[-3000:]
    assert osp.isfile(work / 'iter_4.pth')

    out = tmp_path / 'grid.png'
    result = run([sys.executable, 'tools/infer.py', str(work), '--labels', '0', '1', '2',
                  '--steps', '5', '--sampler', 'ddim', '--out', str(out), '--nrow', '3'],
                 repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 + 8 + 2, 2 + 3 * (8 + 2), 3)

    bad = run([sys.executable, 'tools/infer.py', str(work), '--labels', '7'], repo_root)
    assert 'out of range' in error_line(bad)
    bad = run([sys.executable, 'tools/infer.py', str(work), '--steps', '0'], repo_root)
    assert '--steps must be >= 1' in error_line(bad)
    bad = run([sys.executable, 'tools/infer.py', str(work), '--sampler', 'nope', '--steps', '2'],
              repo_root)
    assert "unknown sampler 'nope'" in error_line(bad)


def test_corrupt_npy_in_a_worker_is_named(repo_root, tmp_path):
    # fast-DiT layout with one corrupt feature file, read by 2 data-loader workers.
    feats, labels = tmp_path / 'features', tmp_path / 'labels'
    feats.mkdir()
    labels.mkdir()
    for i in range(8):
        np.save(feats / f'{i}.npy', np.random.randn(1, 4, 8, 8).astype(np.float32))
        np.save(labels / f'{i}.npy', np.array([i % 3]))
    (feats / '5.npy').write_bytes(b'not a numpy file')
    config = tmp_path / 'npy.py'
    config.write_text(
        f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
        "train_dataloader = dict(num_workers=2, batch_size=8, dataset=dict(_delete_=True, "
        f"type='NpyLatentDataset', features_dir='{feats}', labels_dir='{labels}'))\n")
    result = train(repo_root, str(config), '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                   *[o for o in TINY if 'dataset' not in o], 'model.denoiser.in_channels=4',
                   'model.latent_shape=[4,8,8]',
                   'train_dataloader.batch_size=8', 'train_dataloader.num_workers=2')
    line = error_line(result)
    assert '5.npy' in line, line


def test_missing_vae_folder_is_named_before_sampling(repo_root, tmp_path):
    """The VAE loads on first use, after the sampling: a wrong folder was named only
    after every denoising step had run (250 by default). tools/infer.py names it
    before, with one line."""
    config = tmp_path / 'latent.py'
    config.write_text(f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
                      "model = dict(vae=dict(_delete_=True, type='AutoencoderKLWrapper', "
                      f"pretrained_path={str(tmp_path / 'no_vae')!r}, scale_factor=0.18215))\n")
    result = run([sys.executable, 'tools/infer.py', str(config), '--checkpoint',
                  str(tmp_path / 'never_read.pth'), '--num-samples', '1'], repo_root)
    assert error_line(result) == (
        f"error: AutoencoderKLWrapper folder {str(tmp_path / 'no_vae')!r} does not exist "
        '(give a local folder: --cfg-options model.vae.pretrained_path=DIR; nothing is '
        'downloaded)')
