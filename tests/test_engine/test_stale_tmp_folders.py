"""Temporary folders in a checkpoint folder: tools/export_denoiser.py writes a diffusers
folder ``--out W/dit`` as ``W/.dit.tmp-PID`` (atomic_io's temporary name) and renames
it in place. One a killed export left is removed at the next save, as temporary files
are (``os.remove`` refused it: it stayed for good); one a running export writes is
not."""
import os
import subprocess

from mmsora.engine.atomic_checkpoint import remove_stale_tmp_files
from mmsora.utils.atomic_io import tmp_target


def ended_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen(['true'])
    child.wait()
    return child.pid


def export_folder(work, pid: int):
    folder = work / f'.dit.tmp-{pid}'
    (folder / 'transformer').mkdir(parents=True)
    (folder / 'transformer' / 'config.json').write_text('{}')
    assert tmp_target(folder.name) == ('dit', pid)
    return folder


def test_a_killed_exports_temporary_folder_is_removed(tmp_path):
    killed = export_folder(tmp_path, ended_pid())
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    remove_stale_tmp_files(str(tmp_path))
    assert not killed.exists()
    assert os.listdir(tmp_path) == ['iter_2.pth']


def test_a_running_exports_temporary_folder_is_left(tmp_path):
    child = subprocess.Popen(['sleep', '60'])  # (not this process: not its own)
    try:
        running = export_folder(tmp_path, child.pid)
        remove_stale_tmp_files(str(tmp_path))
        assert (running / 'transformer' / 'config.json').exists()
    finally:
        child.kill()
        child.wait()
