"""A helper module of tests/ given on pytest's command line with a test file importing
it is imported once, under its one name (tests/conftest.py's _HelperModule)."""
import subprocess
import sys


def test_a_helper_module_given_with_its_importer_is_collected(repo_root):
    # pytest imported tests/runner_probes.py as `runner_probes` besides the test
    # file's `tests.runner_probes`: 'BlockRuns is already registered'.
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '--collect-only', '-p', 'no:cacheprovider',
         'tests/runner_probes.py', 'tests/test_engine/test_graceful_stop.py'],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'already registered' not in result.stdout
