"""Reliability (docs/reliability.md): --resume refuses another layout and names
unusable checkpoints, --load-from works across changed data and layouts, crafted
pickles do not run, corrupt samples are skipped and counted when the config asks,
and bad sampler values give one line."""
import os
import os.path as osp
import re

import numpy as np
import pytest
import torch
from mmengine.runner import Runner
from PIL import Image
from torch.utils.data import DataLoader

from mmsora.datasets import (ImageFolderDataset, LatentStore, NpyLatentDataset,
                             SkipCorruptDataset)
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.cli import UserError, check_output_path
from tests.cli_helpers import one_line
from tests.runner_probes import StateAtTrainStart
from tests.tiny_models import DEMO, tiny_cfg
from tests.tiny_models import TINY_TRAIN as TINY
from tools.train import build_train_config, parse_args


@pytest.fixture(scope='module')
def trained(tmp_path_factory, repo_root_module):
    """A 2-iteration tiny run with its checkpoint."""
    work = tmp_path_factory.mktemp('src')
    Runner.from_cfg(tiny_cfg(repo_root_module, work, 2)).train()
    return work, str(work / 'iter_2.pth')


@pytest.fixture(scope='module')
def repo_root_module():
    return osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


# --------------------------------------------------------------------------- #
#                         --resume and --load-from                             #
# --------------------------------------------------------------------------- #
def test_resume_with_another_layout_is_refused(repo_root, tmp_path, trained):
    _, ckpt = trained
    # Another batch size per process: a real second launch.
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path / 'a', 4,
                                      'train_dataloader.batch_size=4', resume=ckpt))
    with pytest.raises(UserError) as info:
        runner.train()
    assert one_line(info.value) == (
        'cannot resume: the checkpoint was saved by a run of 1 process x batch size 8 '
        '(global 8), this run has 1 process x batch size 4 (global 4); exact resume '
        'needs the same layout: relaunch with it, or go on from its weights with '
        '--load-from CKPT and another --work-dir (its trained weights and EMA; the '
        'optimizer state and the data order start afresh, and the learning-rate '
        'schedule restarts from iteration 0)')
    # Another number of processes: the layout as a 2-process run records it.
    two = load_checkpoint_file(ckpt)
    assert two['meta']['run_layout'] == dict(world_size=1, batch_size=8, dataset_size=64,
                                              accumulation=1)
    two['meta']['run_layout']['world_size'] = 2
    torch.save(two, tmp_path / 'two.pth')
    # `two` maps the checkpoint, and this frame outlives the test: `info` holds the
    # exception, whose traceback holds this frame (a cycle only a full collection
    # frees); test_load_from_maps_the_checkpoint_resume_reads_it looks for mappings
    del two
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path / 'b', 4,
                                      resume=str(tmp_path / 'two.pth')))
    with pytest.raises(UserError, match=r'saved by a run of 2 processes x batch size 8 '
                       r'\(global 16\), this run has 1 process'):
        runner.train()


def test_load_from_works_across_data_and_layout(repo_root, tmp_path, trained, capsys):
    _, ckpt = trained
    source = load_checkpoint_file(ckpt)
    source['meta']['run_layout']['world_size'] = 2  # as if a 2-process run wrote it
    torch.save(source, tmp_path / 'two.pth')
    cfg = tiny_cfg(repo_root, tmp_path / 'new', 2, 'train_dataloader.batch_size=4',
                   'train_dataloader.dataset.num_samples=24',
                   'train_dataloader.dataset.seed=7', load_from=str(tmp_path / 'two.pth'))
    assert (f'--load-from {tmp_path / "two.pth"}: the model starts from its trained '
            'weights (iteration 2), the EMA from its EMA; the optimizer state, the '
            'schedule and the data order start afresh (--resume keeps them)'
            ) in capsys.readouterr().err
    runner = Runner.from_cfg(cfg)
    first = StateAtTrainStart()
    runner.register_hook(first)
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    average = {}
    runner.register_hook(type('AverageAtStart', (StateAtTrainStart,), dict(
        before_train=lambda self, r: average.update(
            {k: v.clone() for k, v in ema.ema_model.module.state_dict().items()})))())
    runner.train()
    assert runner.iter == 2  # a new run: fresh iteration counter (and optimizer)
    # the model from the run's trained weights, its EMA from the run's average (the
    # checkpoint's state_dict holds the average: mmengine loaded it into both, and a
    # run continued on another layout went on from its average)
    trained = {k[len('module.'):]: v for k, v in source['ema_state_dict'].items()
               if k.startswith('module.denoiser.')}
    first.assert_weights(trained)
    for key, value in source['state_dict'].items():
        if key.startswith('denoiser.'):
            assert torch.equal(average[key], value), key
    assert any(not torch.equal(trained[k], source['state_dict'][k]) for k in trained)


@pytest.mark.skipif(not osp.exists('/proc/self/maps'), reason='reads /proc/self/maps')
def test_load_from_of_another_model_is_refused(repo_root, tmp_path, trained):
    """mmengine's loader is not strict: --load-from a checkpoint of another size logged
    the mismatches and trained from the initial weights."""
    _, ckpt = trained
    with pytest.raises(UserError) as info:
        tiny_cfg(repo_root, tmp_path / 'w', 2, 'model.denoiser.hidden_size=48',
                 load_from=ckpt)
    assert one_line(info.value) == (
        f"--load-from {ckpt}: its denoiser is not the config's: 31 of another shape "
        '(e.g. denoiser.x_embedder.proj.weight: (32, 3, 2, 2) in the checkpoint, '
        '(48, 3, 2, 2) in the config); it is a model of hidden_size 32 (this one: 48): '
        'build the model with the settings it was trained with')  # (pos_embed named last)
    with pytest.raises(UserError, match=r'\d+ missing \(e.g. denoiser.blocks.2.'):
        tiny_cfg(repo_root, tmp_path / 'w', 2, 'model.denoiser.depth=3', load_from=ckpt)


def test_load_from_maps_the_checkpoint_resume_reads_it(repo_root, tmp_path, trained,
                                                       monkeypatch):
    """--load-from maps the checkpoint (its weights are copied into the model; the
    optimizer state is never read); --resume reads it whole, since the optimizer keeps
    the loaded tensors. Once training runs, nothing of either keeps the file mapped (a
    mapping would hold its disk space after the checkpoint is pruned)."""
    import gc
    import mmsora.utils.checkpoint as checkpoint
    real, modes = checkpoint.load_checkpoint_file, []

    def spy(*args, **kwargs):
        modes.append(kwargs.get('mmap', True))
        return real(*args, **kwargs)

    def mapped():
        # a test that mapped the checkpoint and kept it in a frame caught in a
        # reference cycle (pytest.raises' ExceptionInfo -> traceback -> that frame)
        # holds it until Python's next full collection: take it first
        gc.collect()
        with open('/proc/self/maps') as f:
            return ckpt in f.read()

    monkeypatch.setattr(checkpoint, 'load_checkpoint_file', spy)
    _, ckpt = trained
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path / 'new', 3, load_from=ckpt))
    runner.train()
    assert modes and all(modes) and not mapped(), modes
    modes.clear()
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path / 'resumed', 3, resume=ckpt))
    runner.train()
    assert runner.iter == 3 and False in modes and not mapped(), modes


def test_unusable_checkpoints_are_named(repo_root, tmp_path, trained):
    work, ckpt = trained
    data = open(ckpt, 'rb').read()
    cut = tmp_path / 'cut.pth'
    cut.write_bytes(data[:len(data) // 2])
    early = tmp_path / 'early.pth'  # zip's reader seeks before the start: OSError
    early.write_bytes(data[:5000])
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'hello world')
    cut_short = 'it is truncated (a zip archive without the directory at its end'
    for path, what in ((cut, cut_short), (early, cut_short),
                       (junk, 'it is truncated or not a torch checkpoint')):
        for option in ('--resume', '--load-from'):
            with pytest.raises(ValueError) as info:
                build_train_config(parse_args([DEMO, option, str(path)]))
            assert one_line(info.value).startswith(f'cannot read checkpoint {path}: {what}')
    # --resume without CKPT takes last_checkpoint: a file cut short there is named too
    # (mmengine wrote checkpoints in place; an old work dir may hold one).
    (tmp_path / 'last_checkpoint').write_text(str(cut))
    with pytest.raises(ValueError, match=f'cannot read checkpoint {cut}'):
        build_train_config(parse_args([DEMO, '--resume', '--work-dir', str(tmp_path)]))
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'gone.pth'))
    with pytest.raises(UserError,
                       match="names .*gone.pth, which does not exist; pass --resume CKPT"):
        build_train_config(parse_args([DEMO, '--resume', '--work-dir', str(tmp_path)]))


def test_text_in_place_of_a_checkpoint_is_named_as_such(tmp_path):
    """A Git LFS pointer or an HTML page saved as the checkpoint: named as what it is.
    Text starting with 'v' or 'n' reached the unpickler and came back as objects that
    'could run code'. torch's legacy (pickle) format still loads."""
    lfs = tmp_path / 'lfs.pth'
    lfs.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n')
    with pytest.raises(ValueError, match='is a Git LFS pointer, not the file it stands '
                                         r'for \(fetch it: git lfs pull\)'):
        load_checkpoint_file(str(lfs))
    page = tmp_path / 'page.pth'
    for text in ('<!DOCTYPE html><html>404</html>', 'not found'):
        page.write_text(text)
        with pytest.raises(ValueError, match=r'truncated or not a torch checkpoint '
                                             r'\(neither a zip archive nor a pickle'):
            load_checkpoint_file(str(page))
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint_file(str(legacy))['w'], torch.ones(2))


def test_path_mistakes_are_one_line(tmp_path):
    store = tmp_path / 'store'
    with pytest.raises(FileNotFoundError) as info:
        LatentStore(str(store))
    assert one_line(info.value) == (f"no latent store index {str(store / 'index.json')!r} "
                                    '(no such folder)')
    # a fast-DiT folder or a folder of pictures given as a store: said what it holds
    (store / 'features').mkdir(parents=True)
    np.save(store / 'features' / '0.npy', np.zeros(3))
    with pytest.raises(FileNotFoundError, match="holds .npy files: fast-DiT's per-file "
                                                "features.*NpyLatentDataset"):
        LatentStore(str(store))
    (store / 'features' / '0.npy').unlink()
    Image.new('RGB', (4, 4)).save(store / 'cat.png')
    with pytest.raises(FileNotFoundError, match='holds pictures or videos: encode them into '
                                                'a store first with tools/extract_features'):
        LatentStore(str(store))
    # an error re-raised from a DataLoader worker: its last line, a repr unquoted
    wrapped = ValueError("Caught ValueError in DataLoader worker process 0.\nTraceback "
                         "(most recent call last):\n  ...\nValueError: 'bad item 3'")
    assert one_line(wrapped) == 'bad item 3'
    # an output path that runs into a file (--work-dir, --out, --json)
    afile = tmp_path / 'taken.jpg'
    afile.write_bytes(b'')
    with pytest.raises(FileExistsError) as info:
        os.makedirs(afile)
    assert one_line(info.value) == f'File exists: {afile}'
    with pytest.raises(NotADirectoryError) as info:
        open(afile / 'x.png', 'wb')
    assert one_line(info.value) == f'Not a directory: {afile / "x.png"}'
    # ... refused by the tools before the work (sampling, timing) that ends in writing
    from tools.infer import check_args
    from tools.infer import parse_args as infer_args
    for out, message in [(afile / 'grid.png', f'{afile} is a file, not a folder'),
                         (afile / 'deeper' / 's.npz', f'{afile} is a file, not a folder'),
                         (tmp_path, 'is a folder; give a file name')]:
        with pytest.raises(UserError, match=re.escape(f'--out {out}') + '.*' + message):
            check_args(infer_args(['work_dirs/x', '--out', str(out)]), num_classes=3)
    with pytest.raises(UserError, match=f'--sample-dir {afile}: {afile} is a file'):
        check_args(infer_args(['work_dirs/x', '--out', 's.npz', '--sample-dir', str(afile)]),
                   num_classes=3)
    with pytest.raises(UserError, match=f'--work-dir {afile}/run: {afile} is a file'):
        build_train_config(parse_args([DEMO, '--work-dir', str(afile / 'run')]))
    with pytest.raises(UserError, match=f'^work_dir {afile}: {afile} is a file'):
        build_train_config(parse_args([DEMO, '--cfg-options', f'work_dir={afile}']))
    check_output_path(str(tmp_path / 'new' / 'deeper' / 'x.json'), '--json')  # made later
    check_output_path(str(tmp_path / 'new' / 'clips'), '--out', folder=True)
    # ... and a folder this process cannot write in, before the work too (it failed at
    # the end: an npz of finished samples, a run's first checkpoint)
    if osp.isdir('/proc/self'):  # a folder where no file can be made, even by root
        with pytest.raises(UserError, match='^--out /proc/s.npz: cannot write in /proc '):
            check_args(infer_args(['work_dirs/x', '--out', '/proc/s.npz']), num_classes=3)
        with pytest.raises(UserError, match='^--sample-dir /proc/png: cannot write in /proc'):
            check_args(infer_args(['work_dirs/x', '--out', str(tmp_path / 's.npz'),
                                   '--sample-dir', '/proc/png']), num_classes=3)
        with pytest.raises(UserError, match='^--work-dir /proc/run: cannot write in /proc'):
            build_train_config(parse_args([DEMO, '--work-dir', '/proc/run']))
    if os.geteuid() != 0:  # root writes in a read-only folder
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o555)
        with pytest.raises(UserError, match=f'--json {locked}/a/b.json: cannot write in '):
            check_output_path(str(locked / 'a' / 'b.json'), '--json')


# --------------------------------------------------------------------------- #
#                               Safe loading                                   #
# --------------------------------------------------------------------------- #
class _Pwn:
    """Pickles to a call that creates a folder: what a crafted checkpoint would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_crafted_checkpoint_runs_no_code(repo_root, tmp_path, trained, monkeypatch):
    _, ckpt = trained
    marker = tmp_path / 'pwned'
    evil = load_checkpoint_file(ckpt)
    evil['meta']['payload'] = _Pwn(str(marker))
    torch.save(evil, tmp_path / 'evil.pth')  # a complete, valid-looking checkpoint
    # With this variable a torch.load that leaves weights_only unset (as mmengine's
    # loader does) unpickles anything; ours passes weights_only=True explicitly.
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    refused = (
        f'{tmp_path / "evil.pth"} holds objects that torch.load(weights_only=True) '
        'refuses to unpickle (they could run code): Trying to load unsupported GLOBAL '
        'posix.mkdir whose module posix is blocked; only tensors and plain containers '
        'are accepted')
    # --resume: tools/train.py reads it first (its model and iteration) ...
    with pytest.raises(Exception) as info:
        tiny_cfg(repo_root, tmp_path / 'w', 4, resume=str(tmp_path / 'evil.pth'))
    assert one_line(info.value) == refused
    # ... and mmengine's Runner, which loads it, refuses it too.
    cfg = tiny_cfg(repo_root, tmp_path / 'w', 4, resume=ckpt)
    cfg.load_from = str(tmp_path / 'evil.pth')
    runner = Runner.from_cfg(cfg)
    with pytest.raises(Exception) as info:
        runner.train()
    assert one_line(info.value) == refused
    # --load-from: tools/train.py reads it itself.
    with pytest.raises(Exception) as info:
        build_train_config(parse_args([DEMO, '--load-from', str(tmp_path / 'evil.pth')]))
    assert 'refuses to unpickle' in one_line(info.value)
    assert not marker.exists()


# --------------------------------------------------------------------------- #
#                         Corrupt samples: skip and count                      #
# --------------------------------------------------------------------------- #
def make_npy(root, n=8):
    feats, labels = root / 'features', root / 'labels'
    feats.mkdir(parents=True)
    labels.mkdir()
    for i in range(n):
        np.save(feats / f'{i}.npy', np.full((1, 4, 8, 8), i, np.float32))
        np.save(labels / f'{i}.npy', np.array([i % 3]))
    return feats, labels


def test_corrupt_npy_raises_naming_file_and_item_or_is_skipped(tmp_path):
    feats, labels = make_npy(tmp_path)
    (feats / '3.npy').write_bytes(b'not a numpy file')
    plain = NpyLatentDataset(str(feats), str(labels))
    with pytest.raises(ValueError, match=r"3\.npy' \(item 3\): not a \.npy file$"):
        plain[3]
    np.save(feats / '2.npy', np.array([{}], dtype=object))  # a .npy of pickled objects
    with pytest.raises(ValueError, match=r"2\.npy' \(item 2\): Object arrays cannot be loaded"):
        plain[2]
    np.save(feats / '2.npy', np.full((1, 4, 8, 8), 2, np.float32))
    os.remove(feats / '5.npy')  # vanished after the folder was listed
    ds = SkipCorruptDataset(plain)
    assert len(ds) == 8 and ds.latent_shape == (4, 8, 8)  # wrapped attributes pass
    values = [int(ds[i]['latents'][0, 0, 0]) for i in range(8)]
    assert values == [0, 1, 2, 4, 4, 6, 6, 7]  # each bad item replaced by the next
    assert ds.num_skipped == 2  # counted once per item
    # In data-loader workers each process counts its own; the batches are the same.
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    got = torch.cat([b['latents'][:, 0, 0, 0] for b in loader]).int().tolist()
    assert got == values


def test_too_many_skipped_items_stop(tmp_path):
    feats, labels = make_npy(tmp_path)
    for i in (1, 2, 4):
        (feats / f'{i}.npy').write_bytes(b'')
    ds = SkipCorruptDataset(NpyLatentDataset(str(feats), str(labels)), max_skipped=2)
    assert int(ds[1]['latents'][0, 0, 0]) == 3  # items 1 and 2 skipped: allowed
    with pytest.raises(ValueError, match=r'more than max_skipped=2 unreadable items; the '
                       r"last: cannot read '.*4\.npy' \(item 4\)"):
        ds[4]
    for i in range(8):
        (feats / f'{i}.npy').write_bytes(b'')
    with pytest.raises(ValueError, match='none of the 8 items of NpyLatentDataset'):
        SkipCorruptDataset(ds.dataset, max_skipped=None)[0]


def test_corrupt_jpg_is_named_or_skipped(tmp_path):
    root = tmp_path / 'images'
    (root / 'cat').mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / 'cat' / f'{i}.jpg')
    (root / 'cat' / '1.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated jpeg')
    plain = ImageFolderDataset(str(root), image_size=16, random_flip=False)
    with pytest.raises(ValueError, match=r"cannot read image '.*1\.jpg' \(item 1\)"):
        plain[1]
    ds = SkipCorruptDataset(plain)
    assert ds[1]['images'].mean() == ds[2]['images'].mean() and ds.num_skipped == 1


def test_training_skips_corrupt_samples_when_the_config_asks(repo_root, tmp_path):
    feats, labels = make_npy(tmp_path / 'data')
    (feats / '6.npy').write_bytes(b'garbage')
    config = tmp_path / 'skip.py'
    config.write_text(
        f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
        "train_dataloader = dict(batch_size=4, dataset=dict(_delete_=True, "
        "type='SkipCorruptDataset', dataset=dict(type='NpyLatentDataset', "
        f"features_dir='{feats}', labels_dir='{labels}')))\n")
    cfg = build_train_config(parse_args([
        str(config), '--work-dir', str(tmp_path / 'w'), '--cfg-options',
        'train_cfg.max_iters=4', 'model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.denoiser.in_channels=4', 'model.latent_shape=[4,8,8]', 'param_scheduler=[]']))
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 4 and runner.train_dataloader.dataset.num_skipped == 1
    log = open(next((tmp_path / 'w').glob('*/*.log'))).read()
    assert "skipping unreadable item 6: cannot read '" in log


# --------------------------------------------------------------------------- #
#                         Out-of-range sampler values                          #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('option, message', [
    (['--eta', '1.5'], '--eta must be in [0, 1], got 1.5'),
    (['--cfg-scale', '0.5'], '--cfg-scale must be >= 1 (1 disables guidance), got 0.5'),
    (['--num-samples', '0'], '--num-samples must be >= 1, got 0'),
    (['--batch-size', '-2'], '--batch-size must be >= 1, got -2'),
    (['--labels', '2', '-1'], '--labels [-1] out of range: the model has 3 classes'),
    (['--out', 'grid.gifx'], '--out grid.gifx: pictures are saved as one grid image, e.g. '
                             'samples.png (.png, .jpg, .webp, ...), or as NAME.npz'),
])
def test_sampler_values_are_checked(option, message):
    from tools.infer import check_args
    from tools.infer import parse_args as infer_args
    with pytest.raises(UserError) as info:
        check_args(infer_args(['work_dirs/x', *option]), num_classes=3)
    assert one_line(info.value) == message


def test_a_one_class_model_is_said_in_the_singular():
    from tools.infer import check_args
    from tools.infer import parse_args as infer_args
    with pytest.raises(UserError, match=r'--labels \[1\] out of range: the model has 1 class$'):
        check_args(infer_args(['work_dirs/x', '--labels', '1']), num_classes=1)


def test_a_wrong_out_is_refused_before_the_weights_load(trained, monkeypatch):
    """--out x.gifx (or an .avi for a video model) was named only once the model and
    its weights had loaded: minutes for a large one."""
    import mmsora.apis
    from tools.infer import main as infer
    work, _ = trained

    def loading(*args, **kwargs):
        raise AssertionError('the weights were loaded first')
    monkeypatch.setattr(mmsora.apis, 'init_model', loading)
    with pytest.raises(UserError, match='--out grid.gifx: pictures are saved as one grid'):
        infer([str(work), '--out', 'grid.gifx'])
    with pytest.raises(UserError, match=r'--labels \[7\] out of range: the model has 4 '):
        infer([str(work), '--labels', '7'])


def test_samples_that_are_not_finite_are_warned_about(tmp_path, trained, capsys):
    """A checkpoint damaged in place (a weight's bytes overwritten, the zip intact)
    loads through the mapped read; its samples were NaN and saved black without a
    word."""
    from tools.infer import main as infer
    work, ckpt = trained
    obj = torch.load(ckpt, weights_only=False)
    obj['state_dict']['denoiser.x_embedder.proj.weight'].fill_(3.39e38)  # bytes 0x7F7F7F7F
    damaged = tmp_path / 'damaged.pth'
    torch.save(obj, damaged)
    infer([str(work), '--checkpoint', str(damaged), '--num-samples', '2', '--steps', '2',
           '--out', str(tmp_path / 'x.png')])
    err = capsys.readouterr().err
    assert 'warning: 2 of 2 samples hold NaN or inf (saved black): ' in err
    assert "the checkpoint's weights may be damaged, or the run diverged" in err
    infer([str(work), '--checkpoint', ckpt, '--num-samples', '2', '--steps', '2',
           '--out', str(tmp_path / 'y.png')])
    assert 'hold NaN' not in capsys.readouterr().err  # (a short run's EMA is warned about)
    # a damaged entry header (what --resume's whole read met) is named as damaged, not
    # as truncated: the file is whole
    data = bytearray(open(ckpt, 'rb').read())
    header = data.index(b'PK\x03\x04', len(data) // 2)
    data[header:header + 64] = b'\x7f' * 64
    (tmp_path / 'flipped.pth').write_bytes(bytes(data))
    with pytest.raises(ValueError, match='it is truncated, damaged or not a torch checkpoint'):
        load_checkpoint_file(str(tmp_path / 'flipped.pth'), mmap=False)


def test_weights_of_another_model_are_named_in_one_line(tmp_path, trained):
    """tools/infer.py and tools/test.py gave torch's whole list of mismatches (a
    512 px checkpoint with the 256 px config, another depth); --load-from of an
    original DiT file of another depth too."""
    from mmsora.models import DiT
    from mmsora.utils.weight_loading import load_dit_checkpoint
    from tools.infer import main as infer
    work, ckpt = trained
    for option, found in (('model.denoiser.depth=3', r'\d+ missing \(e\.g\. blocks\.2\.'),
                          ('model.denoiser.input_size=16',
                           r'of another shape \(e\.g\. pos_embed: .*it is a model for 16 '
                           r'tokens, a 4x4 grid: set model.denoiser.input_size=8 at '
                           r'patch_size 2 \(64 px with an SD VAE;')):
        with pytest.raises(ValueError) as info:
            infer([str(work), '--checkpoint', ckpt, '--num-samples', '1', '--steps', '1',
                   '--out', str(tmp_path / 'x.png'), '--cfg-options', option,
                   'model.latent_shape=[3,16,16]' if 'input' in option else 'log_level=INFO'])
        line = one_line(info.value)
        assert line.startswith(f"{ckpt}: its weights are not this model's: ")
        assert re.search(found, line), line
    dit = DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2,
              num_classes=4)
    torch.save(dit.state_dict(), tmp_path / 'dit.pt')
    with pytest.raises(ValueError, match=r"dit.pt: its weights are not this model's: \d+ "
                                         r'not in the model \(e\.g\. blocks\.1\.'):
        load_dit_checkpoint(DiT(input_size=8, patch_size=2, in_channels=3, hidden_size=32,
                                depth=1, num_heads=2, num_classes=4), str(tmp_path / 'dit.pt'))
    # an original DiT file of another resolution (--load-from, --checkpoint): the same
    # hint (it said 'another input_size / patch_size / hidden_size')
    with pytest.raises(ValueError, match=r'dit.pt: checkpoint pos_embed has shape '
                                         r"\(1, 16, 32\) but the model's is \(1, 64, 32\): it "
                                         r'is a model for 16 tokens, a 4x4 grid: set '
                                         r'model.denoiser.input_size=8'):
        load_dit_checkpoint(DiT(input_size=16, patch_size=2, in_channels=3, hidden_size=32,
                                depth=2, num_heads=2, num_classes=4), str(tmp_path / 'dit.pt'))
    # keys under another prefix (no pos_embed in the file): the settings hint, not the
    # input_size one, which is for a pos_embed of another shape
    from mmsora.utils.weight_loading import load_state_dict_checked
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(dit, {f'model.{k}': v for k, v in dit.state_dict().items()},
                                'x.pt')
    assert 'not in the model (e.g. model.pos_embed)' in str(info.value)
    assert str(info.value).endswith('build the model with the settings it was trained with '
                                    '(widths, depth, patch size, learn_sigma, classes)')


def test_a_copied_work_dir_uses_its_own_checkpoints(tmp_path, trained, capsys):
    """mmengine's last_checkpoint holds an absolute path: --resume and tools/infer.py
    in a copy of a work dir took the original's checkpoint."""
    import shutil

    from mmsora.apis.inference import find_run
    work, ckpt = trained
    copy = tmp_path / 'copy'
    shutil.copytree(work, copy)
    assert str(work) in (copy / 'last_checkpoint').read_text()
    cfg = build_train_config(parse_args([DEMO, '--work-dir', str(copy), '--resume',
                                         '--cfg-options', *TINY]))
    assert cfg.resume and cfg.load_from == str(copy / 'iter_2.pth')
    assert find_run(str(copy))[1] == str(copy / 'iter_2.pth')
    from tools.infer import main as infer
    infer([str(copy), '--num-samples', '1', '--steps', '2', '--out', str(tmp_path / 'x.png')])
    assert f"weights: {copy / 'iter_2.pth'} (EMA weights)" in \
        capsys.readouterr().out


def test_resume_with_nothing_saved_says_so(tmp_path, capsys, monkeypatch):
    """--resume in a work dir without a checkpoint starts the run (a requeued job's
    first start), but a wrong --work-dir restarted a run silently: mmengine said only
    'Auto resumed from the latest checkpoint None'."""
    monkeypatch.delenv('RANK', raising=False)
    cfg = build_train_config(parse_args([DEMO, '--work-dir', str(tmp_path / 'w'),
                                         '--resume']))
    assert not cfg.resume and cfg.load_from is None
    assert capsys.readouterr().out == (f"--resume: no checkpoint in {tmp_path / 'w'} yet: "
                                       'the run starts at iteration 0\n')


def test_infer_takes_the_whole_sample_cfg(tmp_path, trained, monkeypatch):
    """tools/infer.py read only sampler, num_steps, cfg_scale and fps of sample_cfg:
    sample_cfg.eta=1.0 made no difference and a typo (num_step) was ignored."""
    from mmsora.diffusion.gaussian import GaussianDiffusion
    from tools.infer import main as infer
    work, ckpt = trained
    common = [str(work), '--num-samples', '2', '--steps', '4']
    # (the eta each DDIM step takes: a 2-step run's samples saturate whatever it is)
    etas, step = [], GaussianDiffusion.ddim_sample
    monkeypatch.setattr(GaussianDiffusion, 'ddim_sample', lambda self, *a, eta=0.0, **kw:
                        etas.append(eta) or step(self, *a, eta=eta, **kw))
    out = {}
    for name, options in (('eta0', []), ('eta1', ['sample_cfg.eta=1.0']),
                          ('cli', ['--eta', '1.0'])):
        path = str(tmp_path / f'{name}.png')
        cfg_options = ['--cfg-options', *options] if options and '=' in options[0] else options
        infer([*common, '--out', path, *cfg_options])
        out[name], etas[:] = set(etas), []
    assert out == dict(eta0={0.0}, eta1={1.0}, cli={1.0})
    with pytest.raises(ValueError) as info:
        infer([*common, '--out', str(tmp_path / 'x.png'), '--cfg-options',
               'sample_cfg.num_step=5'])
    assert one_line(info.value).endswith('did you mean num_steps?')
    with pytest.raises(ValueError) as info:  # a config-only key (the video tools' fps)
        infer([*common, '--out', str(tmp_path / 'x.png'), '--cfg-options',
               'sample_cfg.fsp=3'])
    assert one_line(info.value).endswith('did you mean fps?')
    # the config's DDIM option stays with DDIM when another sampler is asked for
    infer([*common, '--out', str(tmp_path / 'y.png'), '--sampler', 'ddpm', '--cfg-options',
           'sample_cfg.eta=1.0'])


def test_latents_of_another_scale_are_refused(repo_root, tmp_path):
    """extract_features --scale-factor 0.5, then a config whose VAE scales by 0.18215:
    it trained without a word (index.json records the scale, nothing compared it)."""
    from mmsora.datasets import LatentStoreWriter
    writer = LatentStoreWriter(str(tmp_path / 'store'), 2, (4, 32, 32), scale_factor=0.5)
    writer.write_shard(0, np.zeros((2, 1, 2, 4, 32, 32), np.float32), [0, 1])
    writer.finalize()
    config = osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py')
    argv = [config, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
            f'train_dataloader.dataset.data_root={tmp_path / "store"}']
    with pytest.raises(UserError, match=r'index.json: the latents were scaled by 0.5 but '
                                        r'model.vae.scale_factor is 0.18215: set '
                                        r'model.vae.scale_factor=0.5'):
        build_train_config(parse_args(argv))
    build_train_config(parse_args([*argv, 'model.vae.scale_factor=0.5']))


def test_labels_past_the_models_classes_are_refused_before_the_run(repo_root, tmp_path):
    """A store label past model.num_classes stopped the run at the first batch that
    held one (with a rare label, hours in); a row without a label (-1) likewise."""
    from mmsora.datasets import LatentStoreWriter
    config = osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py')

    def store(name, *shards):
        writer = LatentStoreWriter(str(tmp_path / name), sum(map(len, shards)), (4, 32, 32),
                                   scale_factor=0.18215, shard_size=2)
        for i, labels in enumerate(shards):
            writer.write_shard(i, np.zeros((len(labels), 1, 2, 4, 32, 32), np.float32), labels)
        writer.finalize()
        return [config, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                'model.num_classes=4', 'model.denoiser.num_classes=4',
                f'train_dataloader.dataset.data_root={tmp_path / name}']

    argv = store('past', [0, 1], [3, 6])  # the model has 4 classes; 6 in the 2nd shard
    with pytest.raises(UserError, match=r"past: the store's labels go up to 6 but "
                                        r'model.num_classes=4 \(labels 0 to 3\): set '
                                        r'model.num_classes=7 and model.denoiser.num_classes=7$'):
        build_train_config(parse_args(argv))
    with pytest.raises(UserError, match=r'none: the store holds label -1 \(a manifest row '
                                        r'without a label is -1\): add a label column'):
        build_train_config(parse_args(store('none', [0, -1])))
    build_train_config(parse_args(store('fits', [0, 3], [2, 1])))


def test_captions_of_another_length_than_the_samplers_are_noted(repo_root, tmp_path,
                                                               capsys):
    """A store extracted with --max-length 16 trained a model whose config encodes
    prompts to 120 tokens at sampling, without a word (walk-through of text-to-video)."""
    from mmengine.config import Config

    from mmsora.datasets import LatentStoreWriter
    from mmsora.datasets.store_checks import check_latent_store
    writer = LatentStoreWriter(str(tmp_path / 'store'), 1, (4, 2, 4, 4), text_shape=(16, 8))
    writer.write_shard(0, np.zeros((1, 1, 2, 4, 2, 4, 4), np.float32), [0],
                       text=dict(text_embeds=np.zeros((1, 16, 8), np.float32),
                                 text_mask=np.ones((1, 16), bool)))
    writer.finalize()
    cfg = Config.fromfile(osp.join(repo_root,
                                   'configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py'))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'store')
    # the store's sizes: another latent shape or text width is refused before the run
    # (the first batch said so after the Runner's start-up output; walk-through o)
    with pytest.raises(UserError, match=r'store: the store holds latents of shape \(4, 2, 4, '
                                        r'4\) but model.latent_shape is \(4, 16, 32, 32\)'):
        check_latent_store(cfg)
    cfg.model.latent_shape = (4, 2, 4, 4)
    with pytest.raises(UserError, match=r"store: the store's caption embeddings are 8 wide "
                                        r'\(its text encoder\) but model.denoiser.text_dim is '
                                        r'4096: set model.denoiser.text_dim=8'):
        check_latent_store(cfg)
    cfg.model.denoiser.text_dim = 8
    check_latent_store(cfg)
    assert ('the captions were encoded to 16 tokens (extract_features.py --max-length 16) '
            'but model.text_encoder.max_length is 120: prompts are cut to 120 tokens at '
            'sampling; set model.text_encoder.max_length=16') in capsys.readouterr().err
    cfg.model.text_encoder.max_length = 16
    check_latent_store(cfg)
    assert 'captions were encoded' not in capsys.readouterr().err


def test_clips_sampled_at_another_rate_than_the_samples_are_written_are_noted(
        repo_root, tmp_path, capsys):
    """A store extracted with --target-fps 8 trained a config whose clips are written
    at 4 fps (sample_cfg.fps): they played at half the speed, without a word."""
    from mmengine.config import Config

    from mmsora.datasets import LatentStoreWriter
    from mmsora.datasets.store_checks import check_latent_store
    writer = LatentStoreWriter(str(tmp_path / 'store'), 1, (3, 4, 16, 16),
                               meta=dict(num_frames=4, target_fps=8.0))
    writer.write_shard(0, np.zeros((1, 1, 2, 3, 4, 16, 16), np.float32), [0])
    writer.finalize()
    cfg = Config.fromfile(osp.join(
        repo_root, 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'))
    cfg.train_dataloader.dataset = dict(type='PackedLatentDataset',
                                        data_root=str(tmp_path / 'store'))
    cfg.model.num_classes = 1
    check_latent_store(cfg)
    assert ('the clips were sampled at 8 fps (extract_features.py --target-fps 8) but '
            'sample_cfg.fps is 4: the samples play 0.5x as fast as the training clips; set '
            'sample_cfg.fps=8') in capsys.readouterr().err
    cfg.sample_cfg.fps = 8
    check_latent_store(cfg)
    assert 'fps' not in capsys.readouterr().err
    # the rate the videos gave, read from the manifest the store was made from: 25 fps
    # videos asked for 30 give every frame, 25 fps (it said 30; walk-through o)
    manifest = tmp_path / 'clips.csv'
    manifest.write_text('path,fps\na.mp4,25\nb.mp4,25\nc.mp4,24\n')
    writer = LatentStoreWriter(str(tmp_path / 'store30'), 1, (3, 4, 16, 16),
                               meta=dict(num_frames=4, target_fps=30.0, source=str(manifest)))
    writer.write_shard(0, np.zeros((1, 1, 2, 3, 4, 16, 16), np.float32), [0])
    writer.finalize()
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'store30')
    check_latent_store(cfg)
    assert ('the clips were sampled at 25 fps (extract_features.py --target-fps 30, 24 to 25 '
            'across the videos) but sample_cfg.fps is 8: the samples play 0.32x as fast as '
            'the training clips; set sample_cfg.fps=25') in capsys.readouterr().err


def test_clips_decoded_in_training_at_another_rate_are_noted(repo_root, tmp_path, capsys):
    """The same for a VideoDataset (clips decoded during training): 30 fps videos at the
    two-clip config's stride 8 are 3.75 fps clips, written at 3.125 (walk-through o)."""
    from mmengine.config import Config

    from mmsora.datasets.store_checks import note_video_dataset_fps
    (tmp_path / 'captions.csv').write_text('path,caption,fps\na.mp4,a,30\nb.mp4,b,30\n')
    cfg = Config.fromfile(osp.join(repo_root,
                                   'configs/video_dit/video_dit_tiny4_1xb2_t5_two_clips.py'))
    cfg.train_dataloader.dataset.data_root = str(tmp_path)
    note_video_dataset_fps(cfg)
    assert ('captions.csv: the clips were sampled at 3.75 fps (SampleClipIndices '
            'frame_stride=8) but sample_cfg.fps is 3.125: the samples play 0.833x as fast as '
            'the training clips; set sample_cfg.fps=3.75') in capsys.readouterr().err
    (tmp_path / 'captions.csv').write_text('path,caption,fps\na.mp4,a,25\n')
    note_video_dataset_fps(cfg)  # the shared clips: 25 / 8 = 3.125, as written
    assert 'fps' not in capsys.readouterr().err


def test_a_text_encoder_folder_as_the_vae_is_refused_before_the_run(repo_root, tmp_path):
    """The VAE loads only when samples are decoded: a T5 folder given as
    model.vae.pretrained_path trained a whole run, then stopped tools/infer.py."""
    from tests.tiny_models import make_tiny_text_encoder
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    config = osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py')
    argv = [config, '--work-dir', str(tmp_path / 'w'), '--cfg-options']
    with pytest.raises(UserError, match=r"^model.vae.pretrained_path: VAE folder '.*t5' "
                                        r'holds a transformers T5EncoderModel'):
        build_train_config(parse_args([*argv, f'model.vae.pretrained_path={t5}']))
