"""A one-RTX-4090 user's walk-through of tools/benchmark.py and tools/estimate_memory.py:
the batch a CONFIG is timed at, notes that keep figures honest, what --json records,
and refusals made before anything is built."""
import datetime
import json
import os.path as osp
import shlex
import subprocess
import sys

import pytest

from mmsora.utils.cli import UserError
from tests.tiny_models import BENCH_SMALL, tiny_dit_config
from tools import benchmark, estimate_memory

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

pytestmark = pytest.mark.usefixtures('malloc_calls')


def tiny_config(tmp_path, text='', extra='', name='tiny.py'):
    return tiny_dit_config(tmp_path, text, extra, name=name)


def fake_result(impl):
    return dict(impl=impl, params_m=0.1, step_ms=10.0, samples_per_s=200.0,
                peak_mem_mb=100.0, loss=1.0)


@pytest.fixture
def timed(monkeypatch):
    """benchmark.main's workers replaced by fixed results; the impls asked for."""
    asked = []
    monkeypatch.setattr(benchmark, 'spawn',
                        lambda impl, argv: asked.append(impl) or fake_result(impl))
    return asked


# --------------------------------------------------------------------------- #
#                        estimate_memory.py (findings 6, 11)                   #
# --------------------------------------------------------------------------- #
def test_zero_offload_on_one_gpu_says_what_offload_still_does(tmp_path, capsys):
    """docs/distributed.md's one-24-GB-card command (ZeRO-2 offload, --gpus 1) was told
    to give --gpus N, as if ZeRO did nothing on one process; the offload moves the
    master weights and optimizer states to the host."""
    config = tiny_config(tmp_path, 'train_dataloader = dict(batch_size=2)\n')
    out = estimate_memory.main([config, '--gpus', '1', '--deepspeed',
                                'deepspeed_zero2_offload', '--batch-size', '1', '2'])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith('note: ZeRO-2 over --gpus 1 shards nothing, but its offload '
                            'still moves the float32 master weights, optimizer states')
    assert 'offload_optimizer.device=cpu' in first
    assert all(row['host'] > 0 for row in out['estimates'])  # what the note points at
    estimate_memory.main([config, '--gpus', '1', '--deepspeed', 'deepspeed_zero2',
                          '--batch-size', '1'])
    assert capsys.readouterr().out.splitlines()[0] == (
        'note: ZeRO over --gpus 1 shards nothing (the whole model on one process); give '
        '--gpus N for N processes')


def test_estimate_json_names_the_checkpointing_counted_and_its_units(tmp_path, capsys):
    config = tiny_config(tmp_path, 'train_dataloader = dict(batch_size=2)\n',
                         extra=', grad_checkpointing=1')
    out_json = tmp_path / 'e.json'
    estimate_memory.main([config, '--budget-gb', '0.01', '--json', str(out_json)])
    data = json.loads(out_json.read_text())
    assert data['units'] == 'GiB'
    assert [row['grad_checkpointing'] for row in data['estimates']] == [1]  # not null
    assert [row['grad_checkpointing'] for row in data['largest_batch']] == [1]
    data = estimate_memory.main([config, '--grad-checkpointing', '0', 'selective'])
    assert [row['grad_checkpointing'] for row in data['estimates']] == [0, 'selective']
    plain = tiny_config(tmp_path, 'train_dataloader = dict(batch_size=2)\n', name='p.py')
    # left to the denoiser's default: what the table's '(config)' row names, not null
    data = estimate_memory.main([plain, '--budget-gb', '0.01'])
    assert 'none (config)' in capsys.readouterr().out
    assert [row['grad_checkpointing'] for row in data['estimates']] == [0]
    assert [row['grad_checkpointing'] for row in data['largest_batch']] == [0]
    every = tiny_config(tmp_path, 'train_dataloader = dict(batch_size=2)\n',
                        extra=', grad_checkpointing=True', name='t.py')
    data = estimate_memory.main([every])
    assert 'every block (config)' in capsys.readouterr().out
    assert [row['grad_checkpointing'] for row in data['estimates']] == [1]


# --------------------------------------------------------------------------- #
#                          benchmark.py (findings 7, 8)                        #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('text, batch, why', [
    ('train_dataloader = dict(batch_size=4)\n', 4,
     "the config's train_dataloader.batch_size"),
    ('train_dataloader = dict(batch_size=4)\nglobal_batch_size = 12\n'
     'optim_wrapper = dict(type=\'OptimWrapper\', accumulative_counts=3, '
     'optimizer=dict(type=\'AdamW\', lr=1e-4))\n', 4,
     "the config's global_batch_size=12 over 3 accumulation steps on one process"),
    ('train_dataloader = dict(batch_size=4)\nglobal_batch_size = 6\n', 6,
     "the config's global_batch_size=6 on one process")])
def test_a_config_is_timed_at_the_batch_train_py_trains(tmp_path, capsys, timed, text,
                                                        batch, why):
    """With a CONFIG and no --batch-size, the step was timed at 8 samples whatever the
    config trains; now at the per-process micro-batch of tools/train.py on one process,
    and one line says so."""
    config = tiny_config(tmp_path, text)
    out_json = tmp_path / 'b.json'
    benchmark.main([config, '--device', 'cpu', '--json', str(out_json)])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f'batch: {batch} per micro-batch ({why}, as '
                                   'tools/train.py trains it; --batch-size N for another)')
    assert json.loads(out_json.read_text())['setup']['batch_size'] == batch
    # the worker (its own process, the same argv) builds that batch too
    args = benchmark.parse_args([config, '--device', 'cpu', '--steps', '1'])
    model, step, info = benchmark.make_step(args, 'ours')
    assert args.batch_size == batch
    from mmsora.utils.training_inputs import training_batch
    assert training_batch(model, args.batch_size)['latents'].shape[0] == batch


def test_model_and_given_batches_stay(tmp_path, capsys, timed):
    args = benchmark.parse_args(['--model', 'DiT-S/8', '--device', 'cpu'])
    benchmark.benchmark_config(args)
    assert args.batch_size == 8  # the recorded CPU rows were taken at it
    config = tiny_config(tmp_path, 'train_dataloader = dict(batch_size=4)\n')
    benchmark.main([config, '--device', 'cpu', '--batch-size', '3',
                    '--json', str(tmp_path / 'b.json')])
    assert not capsys.readouterr().out.startswith('batch:')
    assert json.loads((tmp_path / 'b.json').read_text())['setup']['batch_size'] == 3
    benchmark.main([tiny_config(tmp_path, name='none.py'), '--device', 'cpu'])
    assert capsys.readouterr().out.splitlines()[0].startswith(
        "batch: 8 per micro-batch (the config gives no train_dataloader.batch_size")


NOTE = ('note: diffusers runs without gradient checkpointing (ours: grad_checkpointing='
        '{}), so the ratio is not like for like')


@pytest.mark.parametrize('extra, value', [(['--grad-checkpointing', '1'], 1),
                                          (['--grad-checkpointing', 'selective'],
                                           'selective'),
                                          ([], None), (['--grad-checkpointing', '0'], None)])
def test_the_ratio_to_diffusers_notes_checkpointing(capsys, timed, extra, value):
    benchmark.main(BENCH_SMALL + ['--baseline', 'diffusers', *extra])
    out = capsys.readouterr().out
    assert timed == ['ours', 'diffusers'] and 'ratio ours/diffusers' in out
    lines = out.splitlines()
    if value is None:
        assert not any(line.startswith('note: diffusers') for line in lines)
    else:
        assert lines[-1].startswith(NOTE.format(value))


def test_the_interleaved_ratio_notes_checkpointing_too(capsys, monkeypatch, tmp_path):
    config = tiny_config(tmp_path, extra=', grad_checkpointing=2')  # the config's own
    record = {key: {'ours': [1.0], 'diffusers': [1.0]}
              for key in ('step_ms', 'cpu_ms', 'page_faults')}
    monkeypatch.setattr(benchmark, 'interleave', lambda args: record)
    benchmark.main([config, '--device', 'cpu', '--baseline', 'diffusers', '--interleave'])
    assert capsys.readouterr().out.splitlines()[-1].startswith(NOTE.format(2))


# --------------------------------------------------------------------------- #
#                    benchmark.py (finding 3b, finding 11)                     #
# --------------------------------------------------------------------------- #
def test_fp16_on_the_cpu_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    """Unscaled fp16 autocast on the CPU (~15x slower than bf16) is no step
    tools/train.py runs: one line, nothing built or timed."""
    monkeypatch.setattr(benchmark, 'spawn', lambda *a: pytest.fail('a model was timed'))
    monkeypatch.setattr(benchmark, 'make_step', lambda *a: pytest.fail('a model was built'))
    monkeypatch.setattr(benchmark, 'benchmark_config',
                        lambda *a: pytest.fail('the config was built'))
    with pytest.raises(UserError, match=r'^--precision fp16 on the CPU is unscaled fp16 '
                       r'autocast, which tools/train.py never runs there \(its --amp is '
                       r'bf16 on the CPU\): give --precision bf16$'):
        benchmark.main(BENCH_SMALL + ['--precision', 'fp16'])
    for interleaved in ([], ['--baseline', 'diffusers', '--interleave']):
        with pytest.raises(UserError, match='--precision fp16 on the CPU'):
            benchmark.main(BENCH_SMALL + ['--precision', 'fp16', *interleaved])


def test_a_config_in_fp16_on_the_cpu_is_refused(tmp_path, timed):
    config = tiny_config(tmp_path, "optim_wrapper = dict(type='AmpOptimWrapper', "
                         "dtype='float16', optimizer=dict(type='AdamW', lr=1e-4))\n")
    with pytest.raises(UserError, match=r"give --precision bf16 \(this config's "
                       r'optim_wrapper trains in fp16\)$'):
        benchmark.main([config, '--device', 'cpu'])
    assert timed == []
    benchmark.main([config, '--device', 'cpu', '--precision', 'bf16'])  # bf16 is timed
    assert timed == ['ours']


def test_json_records_date_machine_command_and_commit(tmp_path, timed, monkeypatch):
    out_json = tmp_path / 'b.json'
    argv = BENCH_SMALL + ['--json', str(out_json)]
    monkeypatch.setattr(sys, 'argv', ['tools/benchmark.py', *argv])
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    benchmark.main(argv)
    data = json.loads(out_json.read_text())
    date = datetime.datetime.fromisoformat(data['date'])
    assert date.utcoffset() == datetime.timedelta(0)  # UTC
    assert before <= date <= datetime.datetime.now(datetime.timezone.utc)
    assert data['command'] == shlex.join(['tools/benchmark.py', *argv])
    machine = data['machine']
    assert machine['cpu'] and machine['cpus'] >= 1 and machine['gpu'] is None  # CPU run
    assert data['hostname']
    git = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                         text=True)
    assert data['git_commit'] == (git.stdout.strip() if git.returncode == 0 else None)
    assert data['setup']['batch_size'] == 2 and data['results'][0]['impl'] == 'ours'


def test_git_commit_is_none_outside_a_checkout(tmp_path, monkeypatch):
    assert benchmark.git_commit(str(tmp_path / 'benchmark.py')) is None
    monkeypatch.setenv('PATH', str(tmp_path))  # no git at all
    assert benchmark.git_commit() is None
