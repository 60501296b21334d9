"""tools/score_samples.py scores an .npz of samples made elsewhere (DiT's sample_ddp.py,
tools/infer.py --out) with an evaluation section: the same numbers tools/test.py gives
for the same samples; every fault of the file or the section in one line."""
import json

import numpy as np
import pytest

from mmsora.utils.cli import UserError, run_cli
from tests.test_evaluation.test_evaluation_tool_checks_and_resume import make_tiny_run
from tools import score_samples
from tools import test as test_tool

pytestmark = pytest.mark.usefixtures('malloc_calls', 'kept_environ')


@pytest.fixture
def tiny_run(repo_root, tmp_path):
    return make_tiny_run(repo_root, tmp_path)


def test_same_numbers_as_test_py(tiny_run, tmp_path, capsys):
    config, _, ckpt = tiny_run  # FID of 6 samples, batches of 4, a tiny extractor
    out, sampled, scored = (str(tmp_path / n) for n in ('s.npz', 'a.json', 'b.json'))
    test_tool.main([config, ckpt, '--out', out, '--json', sampled])
    capsys.readouterr()
    score_samples.main([out, '--evaluation', config, '--json', scored, '--batch-size', '5'])
    printed = capsys.readouterr().out
    expected = json.load(open(sampled))['metrics']
    got = json.load(open(scored))
    assert set(expected) == {'FID'} and got['metrics'] == pytest.approx(expected, rel=1e-6)
    assert f"FID: {expected['FID']:.4f}" in printed and got['num_samples'] == 6
    # the metrics' settings recorded as test.py records them: a list of plain dicts
    assert got['metric_configs'] == json.load(open(sampled))['metric_configs']
    assert [m['type'] for m in got['metric_configs']] == ['FID']
    # the first 4 alone: another value, said as 4
    score_samples.main([out, '--evaluation', config, '--json', scored, '--num-samples', '4'])
    assert json.load(open(scored))['num_samples'] == 4
    assert json.load(open(scored))['metrics']['FID'] != pytest.approx(expected['FID'])


def test_the_section_asks_for_other_counts(tiny_run, tmp_path, capsys):
    config, _, _ = tiny_run
    rng = np.random.default_rng(1)
    np.savez(tmp_path / 'ten.npz', arr_0=rng.integers(0, 256, (10, 8, 8, 3), np.uint8),
             arr_1=np.arange(10))
    score_samples.main([str(tmp_path / 'ten.npz'), '--evaluation', config])
    assert f'note: {config} scores 6 samples; {tmp_path / "ten.npz"} holds 10: scoring 10' \
        in capsys.readouterr().out


def test_faults_are_one_line(tiny_run, tmp_path, capsys):
    config, bare, _ = tiny_run
    rng = np.random.default_rng(2)
    good = tmp_path / 'good.npz'
    np.savez(good, arr_0=rng.integers(0, 256, (6, 8, 8, 3), np.uint8))
    np.savez(tmp_path / 'float.npz', arr_0=np.zeros((6, 8, 8, 3), np.float32))
    np.savez(tmp_path / 'other.npz', mu=np.zeros(3))
    np.savez(tmp_path / 'big.npz', arr_0=np.zeros((6, 16, 16, 3), np.uint8))
    (tmp_path / 'text.npz').write_text('not a zip')

    def refused(*argv):
        with pytest.raises(UserError) as info:
            score_samples.main([str(a) for a in argv])
        return str(info.value)
    assert refused(tmp_path / 'none.npz', '--evaluation', config) == (
        f'{tmp_path / "none.npz"}: no such file')
    assert refused(tmp_path, '--evaluation', config).startswith(
        f'{tmp_path} is a folder; give the .npz of the samples')
    assert refused(tmp_path / 'text.npz', '--evaluation', config).startswith(
        f'{tmp_path / "text.npz"} is not an .npz file (')
    assert refused(tmp_path / 'other.npz', '--evaluation', config) == (
        f"{tmp_path / 'other.npz'} has no arr_0 (the samples); it has ['mu']")
    assert refused(tmp_path / 'float.npz', '--evaluation', config) == (
        f'{tmp_path / "float.npz"}: arr_0 is float32 (6, 8, 8, 3); the samples are uint8 '
        'pictures (N, H, W, 3) or clips (N, T, H, W, 3), as tools/infer.py --out saves them')
    assert refused(good, '--evaluation', bare).startswith(
        f'{bare} has no `evaluation` section with metrics')
    assert refused(good, '--evaluation', config, '--num-samples', '7') == (
        f'--num-samples 7: {good} holds 6 samples')
    # the metric's own checks: a reference of another size, before any scoring
    assert run_cli(lambda: score_samples.main([str(tmp_path / 'big.npz'), '--evaluation',
                                               config])) == 2
    assert capsys.readouterr().err.strip() == (
        f'error: {tmp_path}/ref.npz holds 8x8 pictures, but the samples are 16x16 ones: '
        'make the reference at that size (tools/make_reference.py --image-size 16)')


def test_clip_score_takes_the_prompt_file(tmp_path):
    pytest.importorskip('transformers')
    from mmsora.evaluation.metrics.clip_score import CLIPScore
    from tests.test_evaluation.test_metrics import make_tiny_clip, pictures
    extractor = dict(type='CLIPEmbedder', pretrained_path=make_tiny_clip(tmp_path / 'clip'))
    section = tmp_path / 'clip_section.py'
    section.write_text(f'evaluation = dict(metrics=dict(type="CLIPScore", '  # (one dict)
                       f'extractor={extractor!r}))\n')
    samples = pictures(4, 6, size=20)
    np.savez(tmp_path / 's.npz', arr_0=samples)
    prompts = ['a red disk', 'a green square', 'a blue ring']
    (tmp_path / 'prompts.txt').write_text('\n'.join(prompts) + '\n')
    argv = [str(tmp_path / 's.npz'), '--evaluation', str(section)]
    with pytest.raises(UserError, match='^CLIPScore scores each sample against its prompt: '
                                        'give them with --prompt-file FILE'):
        score_samples.main(argv)
    score_samples.main([*argv, '--prompt-file', str(tmp_path / 'prompts.txt'), '--json',
                        str(tmp_path / 'r.json')])
    metric = CLIPScore(extractor=extractor, device='cpu')  # the metric fed directly
    for i, s in enumerate(samples):
        feed_one = dict(index=i, sample=s, label=None, prompt=prompts[i % 3])
        metric.process(None, [feed_one])
    expected = metric.compute_metrics(metric.results)
    record = json.load(open(tmp_path / 'r.json'))
    assert record['metrics'] == pytest.approx(expected)
    assert [m['type'] for m in record['metric_configs']] == ['CLIPScore']
