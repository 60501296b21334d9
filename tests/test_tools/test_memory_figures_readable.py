"""What tools/estimate_memory.py and tools/benchmark.py print reads as it stands: the
figures keep their digits and say their unit at any size, the marks in the tables are
explained under them, the precision counted is named, and benchmark's peak memory is
named for what it is (walk-through F5)."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmsora.utils.config_loading import load_config
from mmsora.utils.memory_estimate import GiB, estimate_training_memory
from tests.tiny_models import BENCH_SMALL, tiny_dit_config
from tools import benchmark, estimate_memory

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LITE = osp.join(ROOT, 'configs', 'stable_cascade',
                'stable_cascade_video_lite_1xb1_100k_clips1024.py')

PLAIN_FP32 = ("precision: fp32, as the config's optim_wrapper (OptimWrapper) trains; "
              'tools/train.py --amp trains it in bf16 (fp16 on GPUs without bf16: V100, T4): '
              'give --precision bf16 (or fp16) to count that')

pytestmark = pytest.mark.usefixtures('malloc_calls')


def tiny_config(tmp_path, extra='', amp=False, name='tiny.py'):
    return tiny_dit_config(tmp_path, 'train_dataloader = dict(batch_size=2)\n', extra, amp,
                           name)


def table(text: str) -> list:
    """The rows of the estimate's first table, header first."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.split()[:2] == ['checkpointing', 'batch'])
    return lines[start:start + 2]


# --------------------------------------------------------------------------- #
#                              estimate_memory.py                              #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('gib, text', [
    (0, '0'), (11.5, '11.50 GiB'), (1.0, '1.00 GiB'), (0.5, '512 MiB'),
    (999.4 / 1024, '999 MiB'), (999.6 / 1024, '0.98 GiB'), (1.5 / 1024, '1.5 MiB'),
    (123.4 / 2 ** 20, '123 KiB'), (200 / GiB, '200 B')])
def test_a_figure_keeps_three_digits_and_says_its_unit(gib, text):
    assert estimate_memory._size(gib) == text


def test_small_figures_are_not_zeros_and_json_keeps_gib(tmp_path, capsys):
    """A tiny model's estimate printed 0.00 in every column; the JSON stays in GiB."""
    config = tiny_config(tmp_path)
    out = estimate_memory.main([config, '--precision', 'fp32'])
    text = capsys.readouterr().out
    header, row = table(text)
    assert 'tensors per GPU at the peak of a training step' in text
    assert '0.00' not in row and 'KiB' in row
    peak = estimate_training_memory(Config.fromfile(config), 2).peak
    assert out['units'] == 'GiB' and out['estimates'][0]['peak'] == peak / GiB
    assert f'{peak / 1024:.3g} KiB' in row


@pytest.mark.parametrize('extra, label', [('', 'none (config)'),
                                          (', grad_checkpointing=1', 'every block (config)'),
                                          (', grad_checkpointing=2',
                                           'every 2nd block (config)')])
def test_the_configs_checkpointing_is_named_and_explained(tmp_path, capsys, extra, label):
    """'as configured' said neither what the config sets nor what the words meant."""
    config = tiny_config(tmp_path, extra=extra)
    estimate_memory.main([config, '--budget-gb', '1', '--max-batch', '4'])
    text = capsys.readouterr().out
    assert table(text)[1].lstrip().startswith(label + '  ')
    assert ("(config): the config's model.denoiser.grad_checkpointing (else the "
            "denoiser's default); --grad-checkpointing K counts another") in text
    assert 'as configured' not in text
    estimate_memory.main([config, '--grad-checkpointing', '0', '1'])  # named: no mark
    text = capsys.readouterr().out
    assert '(config)' not in text
    assert [line.split()[0] for line in text.splitlines()[-4:-1]] == [
        'checkpointing', 'none', 'every']


def test_the_largest_batch_marks_are_explained(tmp_path, capsys):
    """'4+' (the search stopped at --max-batch) and 0 (nothing fits) had no legend."""
    config = tiny_config(tmp_path)
    out = estimate_memory.main([config, '--budget-gb', '1', '1e-7', '--max-batch', '4'])
    lines = capsys.readouterr().out.splitlines()
    assert [row['batch_size'] for row in out['largest_batch']] == [4, 0]  # JSON: numbers
    assert lines[-2].split()[-2:] == ['4+', '0']
    assert lines[-1] == ('4+: --max-batch 4 fits, the largest tried (a larger --max-batch '
                         'searches further); 0: not even one sample fits the card')
    estimate_memory.main([config, '--budget-gb', '1', '--max-batch', '4'])
    assert capsys.readouterr().out.splitlines()[-1].startswith('4+: --max-batch 4 fits')
    estimate_memory.main([config, '--budget-gb', '1e-7'])
    assert capsys.readouterr().out.splitlines()[-1] == '0: not even one sample fits the card'


def test_the_precision_counted_is_said(tmp_path, capsys):
    """Without --precision a config trained with --amp (Stable Cascade lite's) was
    counted in fp32 without a word; one line names the precision counted and, for a
    full-precision optim_wrapper, --precision bf16."""
    plain = tiny_config(tmp_path)
    out = estimate_memory.main([plain])
    assert PLAIN_FP32 in capsys.readouterr().out.splitlines()
    assert out['estimates'][0]['precision'] == 'fp32'
    amp = tiny_config(tmp_path, amp=True, name='amp.py')
    out = estimate_memory.main([amp])
    assert ("precision: bf16, as the config's optim_wrapper (AmpOptimWrapper, bfloat16) "
            'trains; --precision fp32|bf16|fp16 counts another'
            in capsys.readouterr().out.splitlines())
    assert out['estimates'][0]['precision'] == 'bf16'
    bf16 = estimate_training_memory(Config.fromfile(amp), 2, amp='bf16').peak
    assert out['estimates'][0]['peak'] == bf16 / GiB
    assert bf16 != estimate_training_memory(Config.fromfile(amp), 2).peak
    estimate_memory.main([plain, '--precision', 'bf16'])  # given: the header names it
    assert not any(line.startswith('precision:')
                   for line in capsys.readouterr().out.splitlines())
    # the lite config, sized for a 24 GB card with --amp, cannot say so itself
    args = estimate_memory.parse_args([LITE])
    assert estimate_memory._precision(args, load_config(LITE)) == ('fp32', PLAIN_FP32)


# --------------------------------------------------------------------------- #
#                                 benchmark.py                                 #
# --------------------------------------------------------------------------- #
def test_benchmark_names_its_peak_memory_and_unit(tmp_path, capsys, monkeypatch):
    """peak_mem_mb was peak RSS on the CPU and CUDA's peak allocated on a GPU, in MiB:
    the table says which and in what unit; the JSON keeps the key and adds the kind."""
    monkeypatch.setattr(benchmark, 'spawn', lambda impl, argv: benchmark.run_worker(
        benchmark.parse_args(list(argv) + ['--worker', impl])))  # a real step, in-process
    out_json = tmp_path / 'b.json'
    benchmark.main(BENCH_SMALL + ['--json', str(out_json)])
    header = capsys.readouterr().out.splitlines()[1].split()
    assert header[-3:] == ['peak_rss_MiB', 'cpu_ms', 'page_faults']
    result = json.loads(out_json.read_text())['results'][0]
    assert result['peak_mem_kind'] == 'rss'
    assert result['peak_mem_mb'] > result['rss_before_model_mb'] > 0
    cuda = dict(impl='ours', params_m=0.1, step_ms=10.0, peak_mem_mb=100.0,
                peak_mem_kind='cuda_allocated')
    assert 'peak_cuda_allocated_MiB' in benchmark.format_table([cuda]).splitlines()[0]
    assert 'peak_mem_MiB' in benchmark.format_table([dict(cuda, peak_mem_kind=None)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_benchmark_peak_on_cuda_is_the_allocators():
    args = benchmark.parse_args(BENCH_SMALL[:-2] + ['--device', 'cuda', '--worker', 'ours'])
    result = benchmark.run_worker(args)
    assert result['peak_mem_kind'] == 'cuda_allocated' and result['peak_mem_mb'] > 0
    assert 'rss_before_model_mb' not in result
    assert 'peak_cuda_allocated_MiB' in benchmark.format_table([result])
