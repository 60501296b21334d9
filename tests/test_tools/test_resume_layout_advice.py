"""tools/train.py's refusal of a --resume on another layout names a way on from the
checkpoint's weights: followed as said, that run starts (it named --load-from the
checkpoint into the same work dir, which the next launch refused in turn)."""
import os.path as osp

import pytest

from mmsora.utils.cli import UserError
from tests.tiny_models import DEMO
from tests.tiny_models import TINY_TRAIN as TINY
from tools import train

pytestmark = pytest.mark.usefixtures('kept_environ', 'malloc_calls')


def main(repo_root, work, *args, name, options=()):
    """tools/train.py's main in this process: the tiny demo for 2 iterations, a
    checkpoint at the end, a visualizer and logger of its own (``name``)."""
    train.main([osp.join(repo_root, DEMO), '--work-dir', str(work), *args, '--cfg-options',
                *TINY, 'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2',
                f'experiment_name={name}-{work.parent.name}', *options])


def test_the_advice_of_a_refused_resume_is_taken(repo_root, tmp_path):
    work = tmp_path / 'w'
    main(repo_root, work, name='first')
    assert (work / 'iter_2.pth').is_file()
    with pytest.raises(UserError) as info:  # another batch size per process
        main(repo_root, work, '--resume', name='resume',
             options=['train_dataloader.batch_size=4'])
    said = str(info.value)
    assert said.count('--load-from') == 1, said
    advice = said.split('go on from its weights with ', 1)[1].split(' (its trained')[0]
    # as said: that file, into a work dir of its own
    load_from = advice.split()[1]
    other = tmp_path / 'w2' if 'another --work-dir' in advice else work
    main(repo_root, other, '--load-from', load_from, name='load',
         options=['train_dataloader.batch_size=4'])
    assert (other / 'iter_2.pth').is_file()
    assert advice == f'--load-from {work}/iter_2.pth and another --work-dir'
