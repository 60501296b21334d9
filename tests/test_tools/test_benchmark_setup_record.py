"""What tools/benchmark.py records of the step it timed (the checkpointing a config
builds, its micro-batches), its TFLOP/s column at any size, and tools/estimate_memory.py's
check of a DeepSpeed JSON's train_batch_size against --gpus."""
import json

import pytest

from mmsora.utils.cli import UserError
from tests.tiny_models import tiny_dit_config
from tools import benchmark, estimate_memory

pytestmark = pytest.mark.usefixtures('malloc_calls')

ACCUMULATION = ("optim_wrapper = dict(type='OptimWrapper', accumulative_counts=3, "
                "optimizer=dict(type='AdamW', lr=1e-4))\n")


@pytest.fixture
def timed(monkeypatch):
    """benchmark.main's workers replaced by fixed results."""
    monkeypatch.setattr(benchmark, 'spawn', lambda impl, argv: dict(
        impl=impl, params_m=0.1, step_ms=10.0, samples_per_s=200.0, peak_mem_mb=100.0))


def _run(tmp_path, capsys, config, *argv):
    out_json = tmp_path / 'b.json'
    benchmark.main([config, '--device', 'cpu', '--batch-size', '2', '--json',
                    str(out_json), *argv])
    header = capsys.readouterr().out.splitlines()[0].split()
    return header, json.loads(out_json.read_text())['setup']


@pytest.mark.parametrize('extra, text, counted', [
    (', grad_checkpointing=True', '', 1),  # as the 24 GB preset: no option given
    (', grad_checkpointing=2', ACCUMULATION, 2),
    ('', '', 0)])  # left to DiT's default (none)
def test_the_checkpointing_the_config_builds_is_recorded(tmp_path, capsys, timed, extra,
                                                         text, counted):
    """Without --grad-checkpointing the header left the config's setting out and the
    JSON said null; "micro_batches" was null without accumulation."""
    config = tiny_dit_config(tmp_path, text, extra)
    header, setup = _run(tmp_path, capsys, config)
    assert setup['grad_checkpointing'] == counted
    assert f'grad_checkpointing={counted}' in header
    micro = 3 if text else 1
    assert setup['micro_batches'] == micro
    # one micro-batch is not said in the header line
    assert ('micro_batches=3' in header) == bool(text)
    assert not any(word.startswith('micro_batches=1') for word in header)
    header, setup = _run(tmp_path, capsys, config, '--grad-checkpointing', 'selective')
    assert setup['grad_checkpointing'] == 'selective' and (
        'grad_checkpointing=selective' in header)


def test_small_tflops_keep_their_digits():
    """'{:.4f}' printed a tiny model's 3.2e-05 TFLOP/s as 0.0000 beside its MFU."""
    table = benchmark.format_table([dict(impl='ours', tflops_per_s=3.21e-5, mfu=5.91e-5),
                                    dict(impl='diffusers', tflops_per_s=0.1022, mfu=0.5)])
    rows = [line.split() for line in table.splitlines()]
    column = rows[0].index('tflops_per_s')
    assert [row[column] for row in rows[1:3]] == ['3.21e-05', '0.1022']


def test_estimate_checks_a_deepspeed_train_batch_size_against_gpus(tmp_path):
    """tools/train.py refuses a DeepSpeed JSON whose train_batch_size is not the
    micro-batch x accumulation x processes; the estimate counted it over --gpus
    without a word."""
    config = tiny_dit_config(tmp_path, 'train_dataloader = dict(batch_size=2)\n')
    ds = tmp_path / 'ds.json'
    ds.write_text(json.dumps(dict(
        train_batch_size=2, train_micro_batch_size_per_gpu='auto',
        gradient_accumulation_steps='auto', gradient_clipping='auto',
        zero_optimization=dict(stage=2), bf16=dict(enabled='auto'))))
    with pytest.raises(UserError, match=r'^strategy\.config\.train_batch_size=2 \(the '
                       r'DeepSpeed config\) is not the samples per optimizer step, 2 .* x 2 '
                       r'process\(es\) = 4: set strategy\.config\.train_batch_size=4'):
        estimate_memory.main([config, '--deepspeed', str(ds), '--gpus', '2'])
    assert estimate_memory.main([config, '--deepspeed', str(ds), '--gpus', '1'])['estimates']
