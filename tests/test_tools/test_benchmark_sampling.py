"""tools/benchmark_sampling.py: sampling timed at each precision, on the CPU here
(tools/gpu_benchmarks.py runs it on a GPU)."""
import json
import os.path as osp

import pytest

from mmsora.utils.cli import UserError
from tools import benchmark_sampling

# main() runs in this process: the CPU allocator's settings are put back after
pytestmark = pytest.mark.usefixtures('malloc_calls')

TEXT_CONFIG = 'configs/video_dit/video_dit_tiny4_1xb2_t5_two_clips.py'
CLASS_CONFIG = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'


def test_each_precision_is_timed_and_compared(repo_root, tmp_path, capsys):
    out = tmp_path / 'r.json'
    results = benchmark_sampling.main([
        osp.join(repo_root, CLASS_CONFIG), '--batch-size', '3', '--steps', '3',
        '--repeats', '2', '--precision', 'fp32', 'tf32', 'bf16', '--threads', '1',
        '--device', 'cpu', '--json', str(out)])
    assert [r['precision'] for r in results] == ['fp32', 'tf32', 'bf16']
    for r in results:
        assert r['nfe'] == 3 and len(r['runs_s']) == 2 and r['s_per_batch'] > 0
        assert r['samples_per_s'] == pytest.approx(3 / r['s_per_batch'])
        assert r['tflops_per_s'] > 0 and r['peak_mem_mb'] > 0
    # tf32 is float32 on the CPU: the same samples; bf16 near, not equal
    assert results[0]['rel_max_diff'] == 0 and results[1]['rel_max_diff'] == 0
    assert 0 < results[2]['rel_max_diff'] < 0.1
    text = capsys.readouterr().out
    # the config's sample_cfg gives the sampler and the guidance (cfg_scale 2.0)
    assert 'batch_size=3 sampler=ddim num_steps=3 cfg_scale=2 device=cpu' in text
    assert 'rel. max|diff| vs fp32' in text
    saved = json.load(open(out))
    assert saved['settings'] == dict(sampler='ddim', num_steps=3, cfg_scale=2.0)
    assert [r['precision'] for r in saved['results']] == ['fp32', 'tf32', 'bf16']


def test_a_text_model_samples_from_random_embeddings(repo_root, capsys):
    """The text config's encoder (a local folder) is left out: random embeddings of the
    null caption's length stand for the prompts; guidance doubles the FLOPs counted."""
    plain = benchmark_sampling.main([osp.join(repo_root, TEXT_CONFIG), '--batch-size', '2',
                                     '--steps', '2', '--repeats', '1', '--precision',
                                     'fp32', '--threads', '1', '--cfg-scale', '1',
                                     '--device', 'cpu'])
    guided = benchmark_sampling.main([osp.join(repo_root, TEXT_CONFIG), '--batch-size', '2',
                                      '--steps', '2', '--repeats', '1', '--precision',
                                      'fp32', '--threads', '1', '--cfg-scale', '3',
                                      '--device', 'cpu'])
    flops = [r['tflops_per_s'] * r['s_per_batch'] for r in (plain[0], guided[0])]
    assert flops[1] == pytest.approx(2 * flops[0])


def test_the_samplers_defaults_are_the_objectives_and_dits(capsys):
    """Without a config: DiT's guidance 4 and the objective's own sampler (DDPM)."""
    benchmark_sampling.main(['--model', 'DiT-S/2', '--input-size', '8', '--batch-size', '1',
                             '--steps', '2', '--repeats', '1', '--precision', 'fp32',
                             '--threads', '1', '--device', 'cpu'])
    assert 'batch_size=1 num_steps=2 cfg_scale=4 sampler=ddpm device=cpu' in \
        capsys.readouterr().out


@pytest.mark.parametrize('argv,expected', [
    (['--steps', '0'], '--steps must be >= 1, got 0'),
    (['--precision', 'bf16', 'bf16'], '--precision names one twice: bf16 bf16'),
    (['--model', 'DiT-M/2'], "--model 'DiT-M/2': choose from DiT-S/2"),
    (['--cfg-options', 'a=1'], '--cfg-options overrides a config: give CONFIG'),
    (['--model', 'DiT-S/2', '--input-size', '8', '--sampler', 'dpm', '--precision', 'fp32'],
     "unknown sampler 'dpm' for GaussianDiffusion"),
])
def test_mistakes_are_one_line(argv, expected):
    with pytest.raises(UserError, match='^' + expected.replace('(', r'\(').replace(
            ')', r'\)').replace('[', r'\[')):
        benchmark_sampling.main(argv + ['--threads', '1', '--device', 'cpu'])
