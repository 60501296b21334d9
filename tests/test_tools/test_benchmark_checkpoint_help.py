"""tools/benchmark_checkpoint.py's --help says what a bare --writers / --readers does
(an empty list: that half left out). docs/reliability.md's commands rely on it, and the
help said only '(default: both)', so `--readers` read as 'also the loads' (walk-through
ai). A peak it cannot reset stops a child rather than being printed."""
import pytest

from tools import benchmark_checkpoint


def test_the_help_says_what_a_bare_flag_does(capsys):
    with pytest.raises(SystemExit):
        benchmark_checkpoint.parse_args(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert 'a bare --writers: no saves measured, one made for the loads to read' in text
    assert 'a bare --readers: no loads' in text
    args = benchmark_checkpoint.parse_args(['--readers'])
    assert (args.readers, args.writers) == ([], ['ours', 'mmengine'])


def test_a_peak_that_cannot_be_reset_stops_the_child(monkeypatch):
    """Where /proc/self/clear_refs is not writable the peak during a save or load
    would be the child's whole life's (the model's build too): it stops instead."""
    monkeypatch.setattr(benchmark_checkpoint, 'reset_peak_rss', lambda: False)
    with pytest.raises(SystemExit, match='cannot reset the peak RSS'):
        benchmark_checkpoint.reset_peak()
    monkeypatch.setattr(benchmark_checkpoint, 'reset_peak_rss', lambda: True)
    benchmark_checkpoint.reset_peak()
