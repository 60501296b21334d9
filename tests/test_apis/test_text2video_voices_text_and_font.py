"""Fixes from a walk-through of tools/text2video.py: eSpeak language codes as voices,
numbered list items kept whole, a UTF-8 byte order mark dropped, a text of only
punctuation refused, ``--voice`` pointed at ``--speech``, and a bad ``--font`` refused
before any progress bar (a stage's error printed after its bar's line is ended)."""
import re

import numpy as np
import pytest

from mmsora.apis.text2video import (Composer, build_pictures, build_speech, plan_segments,
                                    speak, split_sentences)
from mmsora.apis.text2video import speech as speech_module
from mmsora.apis.text2video.pictures import PictureBackend
from mmsora.apis.text2video.segmentation import Segment, Shot
from mmsora.utils.cli import UserError
from tests.cli_helpers import load_tool


@pytest.fixture(scope='module')
def espeak_library():
    kind, path, data = speech_module.find_espeak()
    if kind != 'library':
        pytest.skip('no eSpeak NG library (pip install espeakng-loader)')
    return speech_module._EspeakLibrary.get(path, data)


def test_espeak_takes_language_codes_as_the_espeak_ng_command_does(espeak_library):
    """``en-gb`` was refused by espeak_SetVoiceByName (and the message suggested it)."""
    audio = {}
    for voice in ('en-gb', 'en-GB', 'English_(Great_Britain)', 'en-gb+f3', 'en-us', 'de'):
        samples, rate = build_speech(f'espeak:{voice}').synthesize('Good morning.', 'en')
        assert len(samples) / rate > 0.3, voice
        audio[voice] = samples
    # en-gb is the British voice, not the default (American) one
    n = min(len(audio['en-gb']), len(audio['en-us']))
    assert not np.allclose(audio['en-gb'][:n], audio['en-us'][:n], atol=1e-2)
    # and the voice file's name still works as before
    assert espeak_library._voice_file('en-gb') == 'gmw/en'


def test_unknown_espeak_voice_suggests_only_voices_that_work(espeak_library):
    with pytest.raises(UserError) as error:
        build_speech('espeak:en-bg')  # refused when built, before any stage
    message = str(error.value)
    assert '\n' not in message and "no voice 'en-bg'" in message
    suggested = re.findall(r'did you mean ([^?]+)\?', message)[0].split(', ')
    examples = re.findall(r'e\.g\. ([^)]+)\)', message)[0].split(', ')
    assert 'en-gb' in suggested and len(examples) >= 3
    for voice in suggested + examples:
        espeak_library.check_voice(voice)  # raises if it does not work
    with pytest.raises(UserError, match="no voice 'qq-zz'"):
        build_speech('espeak:qq-zz')


def test_numbered_list_items_stay_one_segment():
    """'1. walk north' was cut into '1.' and 'walk north'; '2) rest' was whole."""
    assert split_sentences('Steps:\n1. walk north\n2) rest\n10. Sleep. Wake up.') == [
        'Steps:', '1. walk north', '2) rest', '10. Sleep.', 'Wake up.']
    assert split_sentences('It was 1999. Then we left. We had 2. Not 3.') == [
        'It was 1999.', 'Then we left.', 'We had 2.', 'Not 3.']


def test_a_byte_order_mark_is_not_read_into_the_text(tmp_path, monkeypatch):
    tool = load_tool('text2video')
    story = tmp_path / 'story.txt'
    story.write_bytes('\ufeffHello there. Bye.'.encode('utf-8'))
    assert tool.read_text(str(story)) == 'Hello there. Bye.'
    assert plan_segments(tool.read_text(str(story)))[0].text == 'Hello there.'
    import io
    monkeypatch.setattr('sys.stdin', io.StringIO('\ufeffHello.'))
    assert tool.read_text('-') == 'Hello.'


def test_a_text_of_only_punctuation_has_nothing_to_say():
    """'...' became a 0.3 s silent video."""
    for text in ('...', ' ?! \n\n— …', ''):
        with pytest.raises(UserError, match='nothing to say'):
            plan_segments(text)
    assert [s.text for s in plan_segments('Wait... what?')] == ['Wait...', 'what?']


def test_voice_option_points_at_speech(capsys):
    """--voice got '(did you mean --device for --voice?)'."""
    tool = load_tool('text2video')
    for args, meant in [(['--voice', 'en-gb'], '--speech espeak:VOICE for --voice'),
                        (['--voice=en-gb'], '--speech espeak:en-gb for --voice'),
                        (['--tts', 'espeak'], '--speech for --tts'),
                        (['--cfg_scale', '2'], '--cfg-scale for --cfg_scale')]:
        with pytest.raises(SystemExit):
            tool.parse_args(['story.txt', *args])
        err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the usage)
        assert meant in err and '--device' not in err, err


def test_a_missing_font_is_refused_before_any_stage():
    """--font /nope.ttf failed inside the pictures stage, after its half-drawn bar."""
    with pytest.raises(UserError, match="no such font file '/nope.ttf'"):
        Composer(font='/nope.ttf')
    with pytest.raises(UserError, match="no such font file '/nope.ttf'"):
        build_pictures('titlecard', font='/nope.ttf')


class FailingPictures(PictureBackend):
    def render(self, shot, size):
        raise UserError('no picture')


class FailingSpeech:
    def synthesize(self, text, language):
        raise UserError('no speech')


def stderr_while_handling(capsys, run):
    """What ``run()`` wrote to stderr, read while its UserError is handled (as
    run_cli prints the error: the traceback still holds the stage's frames)."""
    try:
        run()
    except UserError:
        return capsys.readouterr().err
    raise AssertionError('expected a UserError')


def test_a_stage_error_comes_after_its_progress_bar_line(capsys):
    """The bar's line was left open: the one-line error was printed on it."""
    err = stderr_while_handling(capsys, lambda: FailingPictures().render_all(
        [Shot([Segment('Hi.')])], (64, 36)))
    assert 'pictures' in err and err.endswith('\n'), repr(err)
    err = stderr_while_handling(capsys, lambda: speak([Segment('Hi.')], FailingSpeech(), 'en'))
    assert 'speech' in err and err.endswith('\n'), repr(err)
