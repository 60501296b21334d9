"""tools/gpu_benchmarks.py: its plan is made of commands the tools accept, and a run
records each command's result, exit code and time in two files."""
import importlib
import json
import os.path as osp
import time

import pytest

from tools import benchmark, gpu_benchmarks

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_every_command_parses_with_its_tool(tmp_path):
    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.config_loading import load_config
    plan = gpu_benchmarks.commands(str(tmp_path))
    assert set(plan) == set(gpu_benchmarks.PLAN)
    for name, (argv, limit) in plan.items():
        assert 0 < limit <= 600
        if argv[:2] == ['-m', 'pytest']:  # each test it names exists
            nodes = [a for a in argv if '::' in a]
            assert nodes, name
            for node in nodes:
                path, function = node.split('::')
                module = importlib.import_module(osp.splitext(path)[0].replace('/', '.'))
                assert callable(getattr(module, function, None)), node
            continue
        tool = importlib.import_module(
            'tools.' + osp.splitext(osp.basename(argv[0]))[0])
        args = tool.parse_args(argv[1:])
        if getattr(args, 'config', None):
            apply_cfg_options(load_config(osp.join(ROOT, args.config)), args.cfg_options)
        assert not any('{' in a for a in argv), (name, argv)


def test_the_diagnostic_runs_leave_out_what_they_name(tmp_path):
    """dit_xl2_b32_no_guard times the step of dit_xl2_b32 without LossGuardHook, and
    the no_ema runs without the EMA hook; everything else in their steps is the same."""
    from mmsora.engine import EMAHook  # what type='EMAHook' builds in mmsora's scope
    from mmsora.engine.hooks import LossGuardHook
    plan = gpu_benchmarks.commands(str(tmp_path))

    def step_hook_types(name):
        args = benchmark.parse_args(plan[name][0][1:])
        args.device = 'cpu'  # the config is the same; only where it runs differs
        return [type(h) for h in benchmark.step_hooks(benchmark.benchmark_config(args))]

    full = step_hook_types('dit_xl2_b32')
    assert LossGuardHook in full and EMAHook in full
    assert step_hook_types('dit_xl2_b32_no_guard') == [t for t in full
                                                       if t is not LossGuardHook]
    for name in ('dit_xl2_b32_no_ema', 'dit_xl2_b256_no_ema'):
        assert step_hook_types(name) == [t for t in full if t is not EMAHook]


def test_a_run_records_results_and_failures(tmp_path, monkeypatch, capsys):
    small = ['tools/benchmark.py', '--model', 'DiT-S/8', '--input-size', '16',
             '--num-classes', '10', '--batch-size', '2', '--steps', '1', '--warmup', '1',
             '--json', '{json}']
    monkeypatch.setattr(gpu_benchmarks, 'PLAN', {
        'small': (small, 300), 'missing': (['tools/benchmark.py', 'missing.py'], 60)})
    assert gpu_benchmarks.main([str(tmp_path), '--allow-cpu']) == 1  # (one failed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['log.txt', 'summary.json']
    records = json.loads((tmp_path / 'summary.json').read_text())
    assert records['small']['rc'] == 0 and records['small']['seconds'] > 0
    assert records['small']['result']['results'][0]['impl'] == 'ours'
    assert records['missing']['rc'] == 2
    log = (tmp_path / 'log.txt').read_text()
    assert '=== small' in log and 'config file not found: missing.py' in log
    out = capsys.readouterr().out
    assert 'small: ' in out and 'samples/s' in out and 'missing: rc=2' in out
    assert f'1 of 2 commands failed or timed out: missing (see {tmp_path}/log.txt)' in out


def test_no_cuda_is_refused_and_work_dirs_go(tmp_path, monkeypatch, capsys):
    """Without CUDA every command ran on the CPU (or failed) and the run ended with 0;
    a command's --work-dir (a ZeRO run's checkpoints) stayed in the temp folder."""
    work = tmp_path / 'work'
    made = f'import os; os.makedirs({str(work / "run" / "vis_data")!r}); ' \
           f'open({str(work / "run" / "vis_data" / "scalars.json")!r}, "w").write(' \
           '\'{{"memory": 12}}\\n{{"memory": 34}}\\n\')'  # (PLAN's {} are str.format's)
    monkeypatch.setattr(gpu_benchmarks, 'PLAN', {
        'made': (['-c', made, '--work-dir', str(work)], 60)})
    monkeypatch.setattr(gpu_benchmarks, 'check_imports', lambda: None)
    with pytest.raises(SystemExit, match='^error: no CUDA device: .*--allow-cpu'):
        gpu_benchmarks.main([str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()
    assert gpu_benchmarks.main([str(tmp_path / 'out'), '--allow-cpu']) == 0
    records = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert records['made']['logged_peak_mib'] == 34 and not work.exists()


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting for its (adoptive) parent."""
    try:
        with open(f'/proc/{pid}/status') as f:
            return not any(line.startswith('State:') and 'Z' in line.split()[1]
                           for line in f)
    except FileNotFoundError:
        return False


CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
open(sys.argv[1], 'w').write(str(child.pid))
time.sleep(120)
"""


def test_a_timeout_takes_the_workers_too_and_the_budget_holds(tmp_path, monkeypatch,
                                                               capsys):
    """benchmark.py runs its models in worker processes: a command cut at its limit
    must not leave one holding the GPU while the next command runs."""
    pid_file = tmp_path / 'child.pid'
    monkeypatch.setattr(gpu_benchmarks, 'PLAN', {
        'slow': (['-c', CHILD, str(pid_file)], 3),
        'later': (['-c', 'print(1)'], 60)})
    monkeypatch.setattr(gpu_benchmarks, 'check_imports', lambda: None)
    out = tmp_path / 'out'
    gpu_benchmarks.main([str(out), '--only', 'slow', '--allow-cpu'])
    records = json.loads((out / 'summary.json').read_text())
    assert records['slow']['rc'] == 'timeout'
    child = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.1)
    else:
        pytest.fail('the command\'s own child outlived its timeout')
    assert 'slow: rc=timeout' in capsys.readouterr().out
    # a later --only run keeps the earlier records; a spent budget starts nothing
    gpu_benchmarks.main([str(out), '--only', 'later', '--allow-cpu'])
    assert sorted(json.loads((out / 'summary.json').read_text())) == ['later', 'slow']
    gpu_benchmarks.main([str(out), '--time-budget', '10', '--allow-cpu'])
    assert '=== slow: skipped' in (out / 'log.txt').read_text()
