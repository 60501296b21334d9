"""tools/soak.py: a real two-process run, its memory sampled and summarised."""
import json
import os
import subprocess
import sys

from tests.launch import free_port, fresh_run_env


def test_two_processes_with_workers_are_sampled(repo_root, tmp_path):
    out = tmp_path / 'soak.json'
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
