"""tools/soak.py: a real two-process run, its memory sampled and summarised."""
import json
import os
import subprocess
import sys

import pytest

from tests.cli_helpers import load_tool
from tests.launch import free_port, fresh_run_env


def test_two_processes_with_workers_are_sampled(repo_root, tmp_path):
    out = tmp_path / 'results' / 'soak.json'  # its folder is made
    # Not through an activated environment: dist_train.sh's `python` must still be
    # this interpreter (soak puts its folder first on PATH).
    env = fresh_run_env(PATH=os.defpath)
    result = subprocess.run(
        [sys.executable, 'tools/soak.py', '--iters', '60', '--nproc', '2', '--workers', '1',
         '--items', '64', '--interval', '0.05', '--port', str(free_port()),
         '--work-dir', str(tmp_path / 'soak'), '--out', str(out)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record['nproc'] == 2 and len(record['ranks']) == 2
    # logged every 10 iterations; the first 20% are warm-up: 20, 30, ..., 60 counted
    assert all(n >= 3 for n in record['iters_counted']), record['iters_counted']
    assert record['total_pss']['pss_mib_first'] > 100
    assert record['total_pss']['pss_slope'] is not None
    for rank in record['ranks']:  # each rank and its data-loader worker were read
        assert rank['rss_mib_first'] > 100 and rank['workers_pss_mib_first'] > 10
    # a run too short to be sampled: said, not an IndexError traceback
    # run twice into one --work-dir: the second removes the first's run (its
    # checkpoints made tools/train.py refuse a new run there)
    for again in (False, True):
        short = subprocess.run(
            [sys.executable, 'tools/soak.py', '--iters', '2', '--nproc', '2', '--workers',
             '0', '--items', '16', '--interval', '0.05', '--port', str(free_port()),
             '--work-dir', str(tmp_path / 'short')],
            cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
        assert short.returncode == 1 and short.stderr.strip().endswith(
            'soak.py: error: no memory sample after the warm-up of 2 iterations (--warmup '
            '0.2; the log names an iteration every 10): give more --iters, e.g. 100'), \
            short.stdout[-2000:] + short.stderr
        assert ('soak.py: removed the earlier soak run' in short.stdout) == again
    bad = subprocess.run([sys.executable, 'tools/soak.py', '--interval', '-1'],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and '--interval must be > 0 seconds, got -1.0' in bad.stderr
    (tmp_path / 'taken').write_text('')
    into_a_file = subprocess.run(
        [sys.executable, 'tools/soak.py', '--work-dir', str(tmp_path / 'taken' / 'soak')],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert into_a_file.returncode == 1 and into_a_file.stderr.strip() == (
        f"soak.py: error: --work-dir {tmp_path / 'taken' / 'soak'}: Not a directory: "
        f"{tmp_path / 'taken' / 'soak'}")
    # an --out it could not write is refused before the run, not after it
    for out_path, message in [(out / 'x.json', f'{out} is a file, not a folder'),
                              (tmp_path, f'--out {tmp_path} is a folder; give a file name')]:
        refused = subprocess.run(
            [sys.executable, 'tools/soak.py', '--iters', '1', '--work-dir',
             str(tmp_path / 'unused'), '--out', str(out_path)],
            cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and refused.stderr.splitlines()[-1].startswith(
            f'soak.py: error: --out {out_path}') and message in refused.stderr
    assert not (tmp_path / 'unused').exists()


def test_the_default_port_is_a_free_one_and_workers_are_checked():
    """A fixed default port (29741) made two soaks at once on one machine collide;
    --workers -1 failed in torch's DataLoader inside each training process."""
    import socket
    soak = load_tool('soak')
    with socket.socket() as held:  # the old fixed default, taken by another soak
        try:
            held.bind(('127.0.0.1', 29741))
        except OSError:
            pass  # held already
        port = soak.parse_args([]).port
    assert port != 29741
    with socket.socket() as s:
        s.bind(('127.0.0.1', port))  # free: nothing holds it
    assert soak.parse_args(['--port', '29999']).port == 29999
    with pytest.raises(SystemExit):
        soak.parse_args(['--workers', '-1'])
