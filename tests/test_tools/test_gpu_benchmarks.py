"""tools/gpu_benchmarks.py: its plan is made of commands the tools accept, and a run
records each command's result, exit code and time in two files."""
import importlib
import json
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import gpu_benchmarks  # noqa: E402


def test_every_command_parses_with_its_tool(tmp_path):
    from mmsora.utils.cli import apply_cfg_options, load_config
    plan = gpu_benchmarks.commands(str(tmp_path))
    assert set(plan) == set(gpu_benchmarks.PLAN)
    for name, (argv, limit) in plan.items():
        tool = importlib.import_module(osp.splitext(osp.basename(argv[0]))[0])
        args = tool.parse_args(argv[1:])
        if getattr(args, 'config', None):
            apply_cfg_options(load_config(osp.join(ROOT, args.config)), args.cfg_options)
        assert not any('{' in a for a in argv), (name, argv)
        assert 0 < limit <= 600


def test_a_run_records_results_and_failures(tmp_path, monkeypatch, capsys):
    small = ['tools/benchmark.py', '--model', 'DiT-S/8', '--input-size', '16',
             '--num-classes', '10', '--batch-size', '2', '--steps', '1', '--warmup', '1',
             '--json', '{json}']
    monkeypatch.setattr(gpu_benchmarks, 'PLAN', {
        'small': (small, 300), 'missing': (['tools/benchmark.py', 'missing.py'], 60)})
    gpu_benchmarks.main([str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['log.txt', 'summary.json']
    records = json.loads((tmp_path / 'summary.json').read_text())
    assert records['small']['rc'] == 0 and records['small']['seconds'] > 0
    assert records['small']['result']['results'][0]['impl'] == 'ours'
    assert records['missing']['rc'] == 2
    log = (tmp_path / 'log.txt').read_text()
    assert '=== small' in log and 'config file not found: missing.py' in log
    out = capsys.readouterr().out
    assert 'small: ' in out and 'samples/s' in out and 'missing: rc=2' in out
