"""Temporary files and folders in a checkpoint folder (atomic_io's names
``.NAME.tmp-PID-HOST``), which a save removes where their writers are gone
(``remove_stale_tmp_files``): tools/export_denoiser.py writes a diffusers folder
``--out W/dit`` as ``W/.dit.tmp-PID-HOST`` and ``--out W/dit.pt`` through a temporary
file, into a work dir where training may still run. One of a running process of this
machine is left, one of a killed process removed; one of another machine (a work dir
on a disk that several nodes share), or named by an earlier version without the
machine, is removed only once it has not been modified for an hour."""
import contextlib
import os
import os.path as osp
import subprocess
import sys
import time

import mmsora.utils.atomic_io as atomic_io
from mmsora.engine.atomic_checkpoint import STALE_TMP_AGE_S, remove_stale_tmp_files
from mmsora.utils.atomic_io import host_tag, tmp_target, tmp_writer

OLD = STALE_TMP_AGE_S + 60  # (seconds back: past the age a leftover is taken at)
YOUNG = STALE_TMP_AGE_S - 60


def ended_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen(['true'])
    child.wait()
    return child.pid


def export_folder(work, pid: int, host=None, name='dit'):
    """An export's temporary folder ``--out W/NAME``, of process ``pid`` on ``host``
    (None: this machine; '': a name of an earlier version, which says no machine)."""
    host = host_tag() if host is None else host
    folder = work / f'.{name}.tmp-{pid}{"-" + host if host else ""}'
    (folder / 'transformer').mkdir(parents=True)
    (folder / 'transformer' / 'config.json').write_text('{}')
    assert tmp_target(folder.name) == (name, pid)
    assert tmp_writer(folder.name) == (pid, host or None)
    return folder


def temp_file(work, pid: int, host=None, name='dit', ext='.pt'):
    """A temporary file of process ``pid`` on ``host`` (as :func:`export_folder`)."""
    host = host_tag() if host is None else host
    path = work / f'.{name}.tmp-{pid}{"-" + host if host else ""}{ext}'
    path.write_bytes(b'part')
    assert tmp_target(path.name) == (name + ext, pid)
    return path


def aged(path, seconds: float):
    """``path`` and everything in it last modified ``seconds`` ago."""
    when = time.time() - seconds
    for root, folders, files in os.walk(path):
        for name in folders + files:
            os.utime(osp.join(root, name), (when, when))
    os.utime(path, (when, when))
    return path


# A child process writing a file through atomic_io (atomic_io.py loaded alone: no
# torch to import), which says its temporary name once it has written a first part,
# then holds it, half written, until told to go on.
_WRITER = '''
import importlib.util, sys
spec = importlib.util.spec_from_file_location('atomic_io', sys.argv[1])
atomic_io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic_io)
with atomic_io.atomic_file(sys.argv[2]) as f:
    f.write(b'first part, ')
    f.flush()
    print(atomic_io.tmp_name(sys.argv[2]), flush=True)
    sys.stdin.readline()
    f.write(b'second part')
'''


@contextlib.contextmanager
def writing(path):
    """Inside, another process writes ``path`` through atomic_io, its temporary file
    (yielded) half written; after, it finishes the write, which must land whole."""
    child = subprocess.Popen([sys.executable, '-c', _WRITER, atomic_io.__file__, str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        tmp = child.stdout.readline().strip()
        assert tmp and osp.exists(tmp), child.stderr.read()
        yield tmp
        err = child.communicate('\n', timeout=60)[1]
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == 0, err  # (its temporary file removed: its rename failed)
    assert open(path, 'rb').read() == b'first part, second part'


def test_a_killed_exports_temporary_folder_and_file_are_removed(tmp_path):
    killed = ended_pid()
    folder, file = export_folder(tmp_path, killed), temp_file(tmp_path, killed)
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    remove_stale_tmp_files(str(tmp_path))  # (fresh: a killed process's goes at once)
    assert not folder.exists() and not file.exists()
    assert os.listdir(tmp_path) == ['iter_2.pth']


def test_a_running_exports_temporary_folder_is_left(tmp_path):
    child = subprocess.Popen(['sleep', '60'])  # (not this process: not its own)
    try:
        # (last modified within a minute before it started: a shared disk's clock)
        running = aged(export_folder(tmp_path, child.pid), 30)
        remove_stale_tmp_files(str(tmp_path))
        assert (running / 'transformer' / 'config.json').exists()
    finally:
        child.kill()
        child.wait()


def test_a_running_writers_temporary_file_is_left(tmp_path):
    """tools/export_denoiser.py RUN --out W/dit.pt (any atomic_io write) into a work dir
    W where training saves meanwhile: the save removed its temporary file, and the
    export failed at its rename."""
    with writing(tmp_path / 'dit.pt') as tmp:
        aged(tmp, 30)  # (its process runs: the hour does not apply)
        remove_stale_tmp_files(str(tmp_path))
        assert osp.exists(tmp)
    assert os.listdir(tmp_path) == ['dit.pt']


def test_another_machines_temporary_entries_go_once_unmodified_for_an_hour(tmp_path):
    """A work dir on a shared disk: another node's process id means nothing here
    (neither a dead one nor one that runs here); the entry's age is what tells."""
    dead, alive = ended_pid(), os.getpid()
    young_file = aged(temp_file(tmp_path, dead, 'node-2', 'a'), YOUNG)
    young_folder = aged(export_folder(tmp_path, dead, 'node-2', 'a'), YOUNG)
    old_file = aged(temp_file(tmp_path, alive, 'node-2', 'b'), OLD)
    old_folder = aged(export_folder(tmp_path, alive, 'node-3_example_org', 'b'), OLD)
    # an old folder with a file in it written a moment ago: being written
    written_in = aged(export_folder(tmp_path, alive, 'node-3', 'c'), OLD)
    (written_in / 'transformer' / 'weights.bin').write_bytes(b'')
    # DeepSpeed's staging and aside folders, which every node writes into during a save,
    # are judged by its save (deepspeed_save.remove_leftovers), not here
    deepspeed = [tmp_path / '.iter_4.saving.pth', tmp_path / '.iter_2.old.pth']
    for folder in deepspeed:
        folder.mkdir()
        (folder / 'mp_rank_00_model_states.pt').write_bytes(b'')
        aged(folder, OLD)
    remove_stale_tmp_files(str(tmp_path))
    assert young_file.exists() and young_folder.exists() and written_in.exists()
    assert not old_file.exists() and not old_folder.exists()
    assert all(folder.exists() for folder in deepspeed)


def test_earlier_versions_temporary_names_go_when_gone_and_old(tmp_path):
    """Names without the machine (versions before): removed where their process does
    not run here and they have not been modified for an hour."""
    dead, child = ended_pid(), subprocess.Popen(['sleep', '60'])
    try:
        young_file = aged(temp_file(tmp_path, dead, '', 'a'), YOUNG)
        young_folder = export_folder(tmp_path, dead, '', 'a')
        running = aged(temp_file(tmp_path, child.pid, '', 'b'), OLD)
        (tmp_path / f'.iter_3.pth.tmp-{dead}').write_bytes(b'')  # (the checkpoints' before)
        old = [aged(tmp_path / f'.iter_3.pth.tmp-{dead}', OLD),
               aged(temp_file(tmp_path, dead, '', 'c'), OLD),
               aged(temp_file(tmp_path, 10 ** 30, '', 'd'), OLD),  # (no such process id)
               aged(export_folder(tmp_path, dead, '', 'c'), OLD)]
        remove_stale_tmp_files(str(tmp_path))
        assert young_file.exists() and young_folder.exists() and running.exists()
        assert not [path for path in old if path.exists()]
    finally:
        child.kill()
        child.wait()


def test_a_later_process_given_a_killed_writers_pid_keeps_no_leftover(tmp_path):
    """A leftover whose PID now belongs to another process (started after the entry was
    last modified: PIDs repeat, in containers soon after a restart) was kept for as
    long as that process ran; a zombie counts as ended too."""
    work = tmp_path / 'work'
    work.mkdir()
    later = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],
                             stdin=subprocess.PIPE)
    try:
        leftover = aged(temp_file(work, later.pid), 120)  # written before it started
        folder = aged(export_folder(work, later.pid), 120)
        fresh = temp_file(work, later.pid, name='now')  # (it may be writing this one)
        remove_stale_tmp_files(str(work))
        assert not leftover.exists() and not folder.exists() and fresh.exists()
    finally:
        later.communicate(b'')
    zombie = subprocess.Popen(['true'])
    while open(f'/proc/{zombie.pid}/stat').read().rpartition(')')[2].split()[0] != 'Z':
        time.sleep(0.01)  # (ended, not yet waited for)
    try:
        entry = temp_file(work, zombie.pid, name='z')
        remove_stale_tmp_files(str(work))
        assert not entry.exists()
    finally:
        zombie.wait()


def test_the_host_tag_names_the_pid_namespace(tmp_path):
    """Containers sharing the host's name (Docker's --network host) see other process
    ids: a live writer of another PID namespace, unseen from here, was taken for a
    killed one of this machine and its folder removed; now it is another machine's,
    kept until it is an hour old."""
    namespace = f'{os.stat("/proc/self/ns/pid").st_ino:x}'
    assert host_tag().endswith('_' + namespace) and atomic_io.pid_namespace()
    work = tmp_path / 'work'
    work.mkdir()
    other = host_tag()[:-len(namespace)] + 'abc123'  # (same name, another namespace)
    live = export_folder(work, ended_pid(), host=other)
    remove_stale_tmp_files(str(work))
    assert live.exists()
    aged(live, OLD)
    remove_stale_tmp_files(str(work))
    assert not live.exists()
