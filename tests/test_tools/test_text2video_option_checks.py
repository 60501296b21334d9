"""Fixes from a walk-through of tools/text2video.py: number options that are not finite
(--fps nan failed after the pictures without naming the option, --zoom inf with a
traceback, --shot-seconds nan made one shot), a --prompt-rewriter module in the current
folder ('No module named' without saying why), a text with nothing to say refused only
after the backends were built, and Markdown thematic breaks read as segments."""
import sys

import pytest

import mmsora.apis.text2video as t2v
from mmsora.apis.text2video.pipeline import plan_segments
from mmsora.apis.text2video.segmentation import split_sentences
from mmsora.utils.cli import run_cli
from tests.cli_helpers import load_tool

STORY = 'The red disk rolls away. A green square waits for it.'


@pytest.fixture
def no_backend_allowed(monkeypatch):
    """Fail the test if the tool builds the speech or the picture backend."""
    def build(*args, **kwargs):
        raise AssertionError('a backend was built before the error')
    monkeypatch.setattr(t2v, 'build_speech', build)
    monkeypatch.setattr(t2v, 'build_pictures', build)


@pytest.fixture
def story(tmp_path):
    path = tmp_path / 'story.txt'
    path.write_text(STORY)
    return path


def run_main(argv, capsys):
    tool = load_tool('text2video')
    code = run_cli(lambda: tool.main(argv))
    return code, capsys.readouterr().err.strip().splitlines()


# --------------------------------------------------------------------------- #
#     number options                                                          #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('option, value', [
    ('--fps', 'nan'), ('--fps', 'inf'), ('--zoom', 'nan'), ('--zoom', 'inf'),
    ('--pause', 'nan'), ('--shot-seconds', 'nan'), ('--shot-seconds', 'inf'),
    ('--fade', '-inf'), ('--cfg-scale', 'nan')])
def test_numbers_that_are_not_finite_are_refused_naming_the_option(
        story, tmp_path, capsys, no_backend_allowed, option, value):
    tool = load_tool('text2video')
    with pytest.raises(SystemExit) as info:
        tool.main([str(story), '--out', str(tmp_path / 'x.mp4'), f'{option}={value}'])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1, err
    assert f'argument {option}: expected a finite number, got {value!r}' in err[0], err
    assert not (tmp_path / 'x.mp4').exists()


def test_a_word_for_a_number_is_refused_naming_the_option(story, capsys):
    tool = load_tool('text2video')
    with pytest.raises(SystemExit):
        tool.main([str(story), '--zoom', 'big'])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --zoom: expected a number, got 'big'" in err[0], err


@pytest.mark.parametrize('args, expected', [
    (['--zoom', '0.5'], '--zoom must be >= 1 (1: still pictures), got 0.5'),
    (['--fade', '-1'], '--fade must be >= 0 (0: cuts), got -1')])
def test_zoom_and_fade_out_of_range_name_the_option(story, capsys, no_backend_allowed,
                                                    args, expected):
    """They were 'need fps > 0, fade >= 0 and zoom >= 1; got fps=24, ...'."""
    code, err = run_main([str(story), *args], capsys)
    assert code == 2 and err == [f'error: {expected}'], err


# --------------------------------------------------------------------------- #
#     --prompt-rewriter                                                       #
# --------------------------------------------------------------------------- #
@pytest.fixture
def rewriter_folder(tmp_path, monkeypatch):
    """A folder, made the current one, holding rewriter modules that are not on
    sys.path (python puts the script's folder there, tools/, not the current one)."""
    folder = tmp_path / 'here'
    folder.mkdir()
    (folder / 'w4_rewriter.py').write_text(
        'def rewrite(text):\n    return "A watercolor of " + text\n')
    (folder / 'w4_rewriter_needs.py').write_text('import w4_no_such_module\n')
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path
                                      if p not in ('', '.', str(folder))])
    yield folder
    for name in ('w4_rewriter', 'w4_rewriter_needs'):
        sys.modules.pop(name, None)


def test_rewriter_not_importable_says_to_use_pythonpath(story, capsys, no_backend_allowed,
                                                        rewriter_folder):
    code, err = run_main([str(story), '--prompt-rewriter', 'w4_rewriter:rewrite'], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: --prompt-rewriter 'w4_rewriter:rewrite': No module "
                             "named 'w4_rewriter'; the module must be importable: put its "
                             'folder on PYTHONPATH (e.g. PYTHONPATH=. '), err


def test_rewriter_on_the_path_is_used(rewriter_folder, monkeypatch):
    tool = load_tool('text2video')
    monkeypatch.syspath_prepend(str(rewriter_folder))
    assert tool.load_rewriter('w4_rewriter:rewrite')('a cat') == 'A watercolor of a cat'


def test_rewriter_missing_its_own_import_gets_no_pythonpath_hint(rewriter_folder,
                                                                monkeypatch):
    """The module was found: what it imports is missing, not its folder on the path."""
    tool = load_tool('text2video')
    monkeypatch.syspath_prepend(str(rewriter_folder))
    with pytest.raises(Exception) as info:
        tool.load_rewriter('w4_rewriter_needs:rewrite')
    assert str(info.value) == ("--prompt-rewriter 'w4_rewriter_needs:rewrite': No module "
                               "named 'w4_no_such_module'")


# --------------------------------------------------------------------------- #
#     a text with nothing to say                                              #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('text, expected', [
    ('', 'the text is empty: nothing to say'),
    ('\n \n', 'the text is empty: nothing to say'),
    ('... !', "the text holds no words, only punctuation or symbols ('... !'): "
              'nothing to say')])
def test_nothing_to_say_is_refused_before_any_backend(tmp_path, capsys, no_backend_allowed,
                                                      text, expected):
    """With --pictures mmsora:RUN the model loaded (and eSpeak started) first."""
    path = tmp_path / 'empty.txt'
    path.write_text(text)
    code, err = run_main([str(path), '--pictures', f'mmsora:{tmp_path / "run"}',
                          '--out', str(tmp_path / 'x.mp4')], capsys)
    assert code == 2 and err == [f'error: {expected}'], err


def test_rewriter_is_checked_before_any_backend(story, capsys, no_backend_allowed):
    code, err = run_main([str(story), '--prompt-rewriter', 'w4_no_such_module:f'], capsys)
    assert code == 2 and len(err) == 1 and 'PYTHONPATH' in err[0], err


# --------------------------------------------------------------------------- #
#     Markdown thematic breaks and setext headings                            #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('rule', ['---', '***', '___', '* * *', '- - -', ' _ _ _ ',
                                  '-----', '***   '])
def test_a_thematic_break_is_a_paragraph_break(rule):
    """It was a segment of its own: the subtitle '---', spoken and put into a prompt
    ('* * *' a list item '* *')."""
    text = f'Hello there.\n\n{rule}\n\nGoodbye now.'
    assert split_sentences(text) == ['Hello there.', 'Goodbye now.']
    assert split_sentences(f'Hello there\n{rule}\nGoodbye now') == [
        'Hello there', 'Goodbye now']
    assert [s.text for s in plan_segments(text)] == ['Hello there.', 'Goodbye now.']


def test_a_setext_underline_makes_a_heading_like_a_hash():
    """The lines above ``===`` or ``---`` are a heading: they end at the underline, as
    a '#' heading ends at its line (the underline was joined: 'Title ---')."""
    for underline in ('===', '---', '=', '-----  '):
        text = f'The long\ntitle\n{underline}\nThe body goes\non here.'
        assert split_sentences(text) == ['The long title', 'The body goes on here.']
    assert split_sentences('# The long title\nThe body.') == ['The long title', 'The body.']


def test_what_markdown_shows_as_text_stays():
    """'===' with no text above, '--', and '***bold***' are text in Markdown."""
    assert split_sentences('===\nx') == ['=== x']
    assert split_sentences('A -- B\n\n--\n\n***bold*** text') == ['A -- B', '--',
                                                                   '***bold*** text']
    assert split_sentences('- a\n- b') == ['a', 'b']
