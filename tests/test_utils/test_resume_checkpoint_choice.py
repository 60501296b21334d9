"""Which checkpoint ``--resume`` (no CKPT) continues from, and what it says when it
cannot: a copied work dir never takes the original's checkpoint (it pruned the copy's
own), and a damaged, empty or gone last checkpoint names an intact earlier one."""
import os
import shutil

import pytest
import torch

from mmsora.engine.work_dir import latest_checkpoint
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.checkpoint_choice import (check_checkpoint_complete, last_checkpoint,
                                            resolve_checkpoint, saved_checkpoint)
from mmsora.utils.cli import UserError
from tests.tiny_models import DEMO
from tools.train import build_train_config, parse_args

pytestmark = pytest.mark.usefixtures('kept_environ')


def _run(work, iters=(4, 8, 12)):
    """A work dir as mmengine leaves it: whole ``iter_N.pth`` files (zip archives)
    and ``last_checkpoint`` holding the newest one's absolute path."""
    work.mkdir()
    for i in iters:
        torch.save({'meta': {'iter': i}, 'w': torch.full((64,), float(i))},
                   work / f'iter_{i}.pth')
    (work / 'last_checkpoint').write_text(str(work / f'iter_{max(iters)}.pth'))
    return work


def _resume(work):
    return build_train_config(parse_args([DEMO, '--resume', '--work-dir', str(work)]))


def test_a_copy_missing_its_last_checkpoint_never_takes_the_originals(tmp_path):
    """``cp -r ref refe; rm refe/iter_12.pth; --resume`` went on from ref/iter_12.pth
    (the path the copied last_checkpoint holds), and max_keep_ckpts then pruned the
    copy's own intact iter_8.pth. Now it is refused like a work dir of its own whose
    file is gone, naming the copy's intact earlier checkpoint."""
    ref = _run(tmp_path / 'ref')
    copy = tmp_path / 'refe'
    shutil.copytree(ref, copy)
    os.remove(copy / 'iter_12.pth')
    assert last_checkpoint(str(copy)) == str(copy / 'iter_12.pth')  # never ref's
    said = (f"{copy}/last_checkpoint names {ref}/iter_12.pth, another folder's checkpoint, "
            f"and the work dir's own {copy}/iter_12.pth does not exist (a copied work dir "
            f'resumes from its own checkpoints only); an earlier checkpoint '
            f'{copy}/iter_8.pth is readable: --resume {copy}/iter_8.pth')
    with pytest.raises(FileNotFoundError) as info:
        saved_checkpoint(str(copy))
    assert str(info.value) == said
    with pytest.raises(UserError) as info:  # tools/train.py --resume: before anything
        _resume(copy)
    assert str(info.value) == f'--resume: {said}'  # (not 'pass --resume CKPT' after it)
    assert sorted(os.listdir(copy)) == ['iter_4.pth', 'iter_8.pth', 'last_checkpoint']
    # tools/infer.py WORK_DIR / --load-from WORK_DIR: the same, without '--resume'
    with pytest.raises(FileNotFoundError, match=r"another folder's checkpoint, .* an earlier "
                                                r'checkpoint \S+/refe/iter_8.pth is readable: '
                                                r'give the checkpoint file$'):
        resolve_checkpoint(str(copy))
    # the copy's own file there: taken (not the original's)
    shutil.copy(copy / 'iter_8.pth', copy / 'iter_12.pth')
    assert latest_checkpoint(str(copy)) == str(copy / 'iter_12.pth')


def test_a_gone_last_checkpoint_names_the_intact_earlier_one(tmp_path):
    """last_checkpoint naming a deleted iter_12.pth: 'which does not exist', as
    before, and the newest intact earlier file beside it (a cut-short iter_8.pth is
    passed over)."""
    work = _run(tmp_path / 'w')
    os.remove(work / 'iter_12.pth')
    data = (work / 'iter_8.pth').read_bytes()
    (work / 'iter_8.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError) as info:
        _resume(work)
    assert str(info.value) == (
        f'--resume: {work}/last_checkpoint names {work}/iter_12.pth, which does not exist; '
        f'an earlier checkpoint {work}/iter_4.pth is readable: --resume {work}/iter_4.pth')


@pytest.mark.parametrize('damage', ['truncated', 'empty'])
def test_a_damaged_last_checkpoint_names_the_intact_earlier_one(tmp_path, damage):
    """A last checkpoint cut short (a zip without its directory) or 0 bytes stopped
    --resume naming it alone ('... (neither a zip archive nor a pickle: starts b'')'
    for the empty one)."""
    work = _run(tmp_path / 'w', iters=(2, 4, 6))
    last = work / 'iter_6.pth'
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2] if damage == 'truncated' else b'')
    what = ('it is truncated (a zip archive without the directory at its end: cut short '
            'while written or copied)' if damage == 'truncated' else
            'it is empty (0 bytes: cut short while written or copied)')
    with pytest.raises(ValueError) as info:
        _resume(work)
    assert str(info.value) == (f'cannot read checkpoint {last}: {what}; an earlier checkpoint '
                               f'{work}/iter_4.pth is readable: --resume {work}/iter_4.pth')
    # --resume W/iter_6.pth named: the same
    with pytest.raises(ValueError, match='an earlier checkpoint .*iter_4.pth is readable'):
        build_train_config(parse_args([DEMO, '--resume', str(last)]))
    # every reader says what the file is; only the option-less hint where asked
    with pytest.raises(ValueError, match=f'{what.split(" (")[0]}'):
        load_checkpoint_file(str(last))
    from mmsora.utils.checkpoint_choice import earlier_checkpoint_hint
    assert earlier_checkpoint_hint(str(last), None) == (
        f'; an earlier checkpoint {work}/iter_4.pth is readable')


def test_the_earlier_checkpoint_is_the_newest_intact_one_of_its_kind(tmp_path):
    from mmsora.utils.checkpoint_choice import intact_earlier_checkpoint
    work = _run(tmp_path / 'w', iters=(1, 2, 3, 10))
    (work / 'epoch_9.pth').write_bytes((work / 'iter_1.pth').read_bytes())  # other kind
    (work / 'iter_3.pth').write_bytes(b'')  # empty: passed over
    (work / 'iter_2.pth').write_bytes((work / 'iter_2.pth').read_bytes()[:100])  # cut
    assert intact_earlier_checkpoint(str(work / 'iter_10.pth')) == str(work / 'iter_1.pth')
    assert intact_earlier_checkpoint(str(work / 'iter_1.pth')) is None  # none earlier
    assert intact_earlier_checkpoint(str(work / 'model.pth')) is None  # not numbered
    assert intact_earlier_checkpoint(str(tmp_path / 'gone' / 'iter_5.pth')) is None
    os.mkdir(work / 'iter_5.pth')  # a DeepSpeed folder: DeepSpeed checks those
    assert intact_earlier_checkpoint(str(work / 'iter_10.pth')) == str(work / 'iter_1.pth')
    # nothing earlier intact: the error is as it was
    os.remove(work / 'iter_1.pth')
    with pytest.raises(ValueError) as info:
        check_checkpoint_complete(str(work / 'iter_3.pth'))
    assert str(info.value).endswith('it is empty (0 bytes: cut short while written or copied)')
