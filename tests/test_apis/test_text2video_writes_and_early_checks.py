"""Fixes from a walk-through of tools/text2video.py: the mp4 written under a part name
and renamed when complete (Ctrl-C or an error kept the video there before), --out and
other options checked before any speech, title cards without the subtitle's text,
portrait subtitles sized from the short side, class labels in the summary, and
--resolution 480P / 1080p."""
import os
import os.path as osp

import numpy as np
import pytest

import mmsora.apis.text2video as t2v
from mmsora.apis.text2video import (Composer, Shot, build_pictures, parse_resolution,
                                    text_to_video)
from mmsora.apis.text2video.segmentation import Segment
from mmsora.utils.cli import Interrupted, UserError, run_cli
from mmsora.utils.video_io import probe_video
from tests.cli_helpers import load_tool
from tests.tiny_models import tiny_shapes_dit_run

STORY = 'The red disk rolls away. A green square waits for it.'


def spoken_shot(text='Hello.', seconds=1.0, index=0):
    segment = Segment(text)
    segment.audio, segment.sample_rate = np.zeros(int(seconds * 16000), np.float32), 16000
    return Shot([segment], prompt=text, index=index)


class StoppedComposer(Composer):
    """Stops with ``error`` at the 4th frame, as Ctrl-C in the middle of the frames."""

    def __init__(self, error, **kwargs):
        super().__init__((64, 36), fps=8, zoom=1.0, **kwargs)
        self.error, self.calls = error, 0

    def _shot_frame(self, *args):
        self.calls += 1
        if self.calls == 4:
            raise self.error
        return super()._shot_frame(*args)


class StoppedPictures(t2v.PictureBackend):
    def render(self, shot, size):
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- #
#                     1. a part file, renamed when complete                   #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('error', [KeyboardInterrupt(), RuntimeError('boom')])
def test_a_stopped_write_keeps_the_video_there_before(tmp_path, error):
    """Ctrl-C while frames were written replaced a finished story.mp4 with a stub."""
    out = tmp_path / 'story.mp4'
    out.write_bytes(b'the finished video')
    composer = StoppedComposer(error)
    with pytest.raises(type(error)) as stopped:
        composer.compose([spoken_shot()], [np.zeros((36, 64, 3), np.uint8)], str(out),
                         progress=False)
    assert composer.calls == 4  # (stopped while writing, not before)
    assert out.read_bytes() == b'the finished video'
    assert os.listdir(tmp_path) == ['story.mp4']  # no part file left
    if isinstance(error, KeyboardInterrupt):
        assert isinstance(stopped.value, Interrupted)  # (with what became of the file)
        assert 'not written' in str(stopped.value) and 'kept' in str(stopped.value)


def test_the_interrupted_line_says_nothing_was_written(tmp_path, capsys):
    out = tmp_path / 'new.mp4'
    composer = StoppedComposer(KeyboardInterrupt())
    assert run_cli(lambda: text_to_video(STORY, str(out), speech='none', composer=composer,
                                         progress=False)) == 130
    assert capsys.readouterr().err.strip() == f'interrupted (nothing written to {out})'
    assert os.listdir(tmp_path) == []
    # Ctrl-C before the composition (here in the pictures) is said the same way
    with pytest.raises(KeyboardInterrupt) as stopped:
        text_to_video(STORY, str(out), speech='none', pictures=StoppedPictures(),
                      composer=Composer((64, 36)), progress=False)
    assert isinstance(stopped.value, Interrupted) and 'nothing written' in str(stopped.value)


def test_a_complete_write_replaces_the_old_video(tmp_path):
    out = tmp_path / 'story.mp4'
    out.write_bytes(b'the old video')
    Composer((64, 36), fps=8, zoom=1.0).compose(
        [spoken_shot()], [np.zeros((36, 64, 3), np.uint8)], str(out), progress=False)
    info = probe_video(str(out))
    assert (info['width'], info['height']) == (64, 36)
    assert os.listdir(tmp_path) == ['story.mp4']


# --------------------------------------------------------------------------- #
#                    2, 5, 7. options checked before the work                 #
# --------------------------------------------------------------------------- #
@pytest.fixture
def no_speech_allowed(monkeypatch):
    """Fail the test if the tool gets as far as building the speech backend."""
    def build_speech(*args, **kwargs):
        raise AssertionError('the speech backend was built before the error')
    monkeypatch.setattr(t2v, 'build_speech', build_speech)


def run_main(tool, argv, capsys):
    code = run_cli(lambda: tool.main(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def test_out_is_checked_before_any_speech(tmp_path, capsys, no_speech_allowed):
    """A folder for --out was a traceback from PyAV after all the work; a path
    through a file 'File exists'; /proc/x.mp4 an FFmpeg error without the path."""
    tool = load_tool('text2video')
    story = tmp_path / 'story.txt'
    story.write_text(STORY)
    (tmp_path / 'dir.mp4').mkdir()
    cases = [(tmp_path / 'dir.mp4', 'is a folder; give a file name'),
             (story / 'x.mp4', f'{story} is a file, not a folder'),
             (tmp_path / 'story.gif', 'must name an .mp4 file')]
    if osp.isdir('/proc/self'):  # a folder where no file can be made
        cases.append(('/proc/x.mp4', 'cannot write in /proc'))
    for out, expected in cases:
        code, err = run_main(tool, [str(story), '--out', str(out)], capsys)
        assert code == 2 and len(err) == 1 and expected in err[0], (out, err)
        assert f'--out {out}' in err[0] or expected.startswith('must'), err


@pytest.mark.parametrize('args, expected', [
    (['--shot-seconds', '-1'], '--shot-seconds must be >= 0'),
    (['--prompt-template', 'watercolor'], '--prompt-template must contain {text}'),
    (['--cfg-scale', '-3'], '--cfg-scale must be >= 0'),
    (['--pause', '-0.5'], '--pause must be >= 0'),
    # (after the picture model had loaded: it was argparse's choices before)
    (['--language', 'english'], '--language must be auto or a language code')])
def test_options_are_checked_before_any_speech(tmp_path, capsys, no_speech_allowed, args,
                                               expected):
    tool = load_tool('text2video')
    story = tmp_path / 'story.txt'
    story.write_text(STORY)
    code, err = run_main(tool, [str(story), *args], capsys)
    assert code == 2 and len(err) == 1 and expected in err[0], err


def test_resolution_names_in_any_case_and_1080p(tmp_path):
    assert parse_resolution('480P') == (854, 480) == parse_resolution('480p')
    assert parse_resolution('1080p') == (1920, 1080) == parse_resolution('1080P')
    out = tmp_path / 'full_hd.mp4'
    Composer(parse_resolution('1080p'), fps=4, zoom=1.0, subtitles=False).compose(
        [spoken_shot(seconds=0.5)], [np.zeros((54, 96, 3), np.uint8)], str(out),
        progress=False)
    info = probe_video(str(out))
    assert (info['width'], info['height']) == (1920, 1080)
    with pytest.raises(UserError, match='1080p'):
        parse_resolution('1080i')


# --------------------------------------------------------------------------- #
#                       3. title cards leave the text to subtitles            #
# --------------------------------------------------------------------------- #
def test_title_cards_show_the_text_only_without_subtitles():
    """Every frame showed the shot's text twice: on the card and in the subtitle."""
    tool = load_tool('text2video')
    shot = spoken_shot('A small robot wakes up in an empty workshop.')
    plain = build_pictures('titlecard', show_text=False).render(shot, (160, 90))
    lettered = build_pictures('titlecard', show_text=True).render(shot, (160, 90))
    for argv, expected in [([], plain), (['--no-subtitles'], lettered)]:
        options = tool.picture_options(tool.parse_args(['story.txt', *argv]))
        card = build_pictures('titlecard', **options).render(shot, (160, 90))
        np.testing.assert_array_equal(card, expected)
    assert np.abs(plain.astype(int) - lettered).mean() > 1  # (the text is visible)


# --------------------------------------------------------------------------- #
#                   4. portrait subtitles sized from the short side           #
# --------------------------------------------------------------------------- #
def test_portrait_subtitles_are_sized_like_landscape_ones():
    """At 480x854 the font was h // 18 = 47 px: three lines covered a fifth of it."""
    text = 'A small robot wakes up.'
    landscape, _ = Composer((854, 480)).subtitle_overlay(text)
    portrait, top = Composer((480, 854)).subtitle_overlay(text)
    assert portrait.shape[0] == landscape.shape[0]  # one line, the same font size
    assert top + portrait.shape[0] > 0.9 * 854
    long = ('Dust floats in the morning light, and every machine around it is silent, '
            'as it has been for years.')
    band, _ = Composer((480, 854)).subtitle_overlay(long)
    assert band.shape[0] < 0.13 * 854


# --------------------------------------------------------------------------- #
#               6. the summary names the labels of class-conditional models   #
# --------------------------------------------------------------------------- #
def test_summary_gives_class_labels_not_unseen_prompts(tmp_path, capsys, malloc_calls):
    """A class-conditional model's summary printed prompts the model never saw."""
    _, checkpoint, _ = tiny_shapes_dit_run(tmp_path)
    story = tmp_path / 'story.txt'
    story.write_text(STORY + ' It does not move.')
    tool = load_tool('text2video')
    tool.main([str(story), '--out', str(tmp_path / 'story.mp4'), '--speech', 'none',
               '--pictures', f'mmsora:{checkpoint}', '--device', 'cpu', '--labels', '1',
               '0', '--resolution', '64x36', '--fps', '4', '--shot-seconds', '0'])
    shown = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith('  shot ')]
    assert [line.split(': ', 1)[1].split(' for ')[0] for line in shown] == [
        'class label 1', 'class label 0', 'class label 1']
    assert "for 'The red disk rolls away.'" in shown[0]
    assert not any('illustration' in line for line in shown), shown


# --------------------------------------------------------------------------- #
#     stdin, --seed and --language (changes the other fixes named in tools/)   #
# --------------------------------------------------------------------------- #
def test_stdin_that_is_not_utf8_is_one_line(tmp_path, capsys, monkeypatch, no_speech_allowed):
    """`cat latin1.txt | text2video.py -` ended in an encode traceback of the speech
    backend (stdin's surrogates); the same file by path was one line."""
    import io
    tool = load_tool('text2video')
    stdin = io.TextIOWrapper(io.BytesIO('Un café noir.'.encode('latin-1')))
    monkeypatch.setattr('sys.stdin', stdin)
    code, err = run_main(tool, ['-', '--out', str(tmp_path / 'x.mp4')], capsys)
    assert code == 2 and err == ['error: standard input is not UTF-8 text (invalid '
                                 'continuation byte at byte 6): save it as UTF-8'], err


def test_seed_is_refused_where_pictures_take_none(tmp_path, capsys, no_speech_allowed):
    """--seed with title cards was taken without a word (its default 0 hid it)."""
    tool = load_tool('text2video')
    story = tmp_path / 'story.txt'
    story.write_text(STORY)
    code, err = run_main(tool, [str(story), '--seed', '3'], capsys)
    assert code == 2 and err == ['error: --seed is for --pictures mmsora / diffusers, not '
                                 'titlecard'], err


def test_language_follows_the_texts_script(tmp_path):
    """Russian text was said to be 'en' (and --language ru refused): the summary's
    language is the script's, and a language code is taken."""
    composer = Composer((64, 36), fps=4, zoom=1.0, subtitles=False)
    result = text_to_video('Привет, мир. Как дела?', str(tmp_path / 'ru.mp4'),
                           speech='none', composer=composer, progress=False)
    assert result.language == 'ru'
    result = text_to_video(STORY, str(tmp_path / 'de.mp4'), speech='none', language='de',
                           composer=composer, progress=False)
    assert result.language == 'de'
    with pytest.raises(UserError, match=r"^--language must be auto or a language code"):
        text_to_video(STORY, str(tmp_path / 'x.mp4'), speech='none', language='Deutsch!',
                      composer=composer, progress=False)
