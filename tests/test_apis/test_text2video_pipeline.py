"""Text to narrated video: a 3-sentence text becomes an mp4 whose audio lasts as long as
the spoken segments, whose picture changes at the segment boundaries and whose
subtitle band shows text, all read back with PyAV. Also segmentation (English and
Chinese), the eSpeak NG library against its own program, the pan/zoom box, and the
clear errors for a missing speech engine or API key."""
import av
import numpy as np
import pytest

from mmsora.apis.text2video import (Composer, Segment, Shot, build_pictures, build_prompt,
                                    build_speech, detect_language, group_shots,
                                    ken_burns_box, parse_resolution, split_segments,
                                    split_sentences, text_to_video)
from mmsora.apis.text2video import speech as speech_module
from mmsora.utils.cli import UserError
from mmsora.utils.video_io import read_video_frames

STORY = ('A small robot wakes up in an empty workshop. It finds a map of the stars, '
         'folded inside an old toolbox! Then it climbs to the roof and waits for night.')
SIZE, FPS = (192, 108), 12


def decoded_audio_seconds(path):
    with av.open(path) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate, float(stream.duration *
                                                                   stream.time_base)


def test_split_sentences_english_and_chinese():
    assert split_sentences('Mr. Smith paid 3.14 dollars. J. R. R. Tolkien wrote, e.g. '
                           'The Hobbit! Did he? "Yes."\nA heading\n\nLast one') == [
        'Mr. Smith paid 3.14 dollars.', 'J. R. R. Tolkien wrote, e.g. The Hobbit!',
        'Did he?', '"Yes."', 'A heading', 'Last one']
    assert split_sentences('他说：“你好。”今天天气很好！我们去公园吧？好的…Then English. 完') == [
        '他说：“你好。”', '今天天气很好！', '我们去公园吧？', '好的…', 'Then English.', '完']
    assert detect_language('今天天气很好 OK') == 'zh' and detect_language(STORY) == 'en'


def test_wrapped_lines_join_and_paragraphs_list_items_headings_end():
    """A single line break used to end a segment: text wrapped at a width was cut
    mid-sentence. Lines are now read as Markdown reads them."""
    wrapped = ('A small robot wakes up in an empty workshop. Dust floats in the morning\n'
               '  light, and every machine is silent.\n'
               'It finds a map.')
    assert split_sentences(wrapped) == [
        'A small robot wakes up in an empty workshop.',
        'Dust floats in the morning light, and every machine is silent.',
        'It finds a map.']
    assert split_sentences('The Map\n\nIt shows a path\nhome.\n- first item\n'
                           '* second\n3) third\nstill third\n# Part two\n今天天气\n很好。') == [
        'The Map', 'It shows a path home.', 'first item', 'second',
        '3) third still third', 'Part two', '今天天气很好。']
    assert split_sentences(wrapped.replace('\n', '\r\n')) == split_sentences(wrapped)


def test_split_segments_cuts_long_sentences_at_commas():
    long_en = 'One two three, four five six, seven eight nine, ten eleven twelve.'
    assert split_segments([long_en], max_chars=30) == [
        'One two three, four five six,', 'seven eight nine,', 'ten eleven twelve.']
    long_zh = '这是一个很长的句子，它有好几个分句，应该在逗号处切开。'  # 27 chars = 54
    pieces = split_segments([long_zh], max_chars=40)
    assert ''.join(pieces) == long_zh and len(pieces) == 2
    assert split_segments(['Short.'], max_chars=30) == ['Short.']


def test_group_shots_by_spoken_length_and_prompts():
    segments = [Segment(str(i), np.zeros(n), 10) for i, n in enumerate([15, 10, 30, 5])]
    shots = group_shots(segments, target_seconds=2.0)       # 1.5+1.0 | 3.0 | 0.5
    assert [[s.text for s in shot.segments] for shot in shots] == [['0', '1'], ['2'], ['3']]
    assert [shot.duration for shot in shots] == [2.5, 3.0, 0.5]
    assert len(group_shots(segments, 0)) == 4
    assert build_prompt('A cat sat.', '{text}, watercolor') == 'A cat sat, watercolor'
    assert build_prompt('猫。', rewriter=lambda t: 'cat ' + t) == 'cat 猫。'
    with pytest.raises(ValueError, match='non-empty'):
        build_prompt('x', rewriter=lambda t: '')
    with pytest.raises(ValueError, match='{text}'):
        build_prompt('x', 'no placeholder')


def test_espeak_library_matches_its_program(tmp_path):
    """The ctypes binding and the espeak-ng program speak the same samples. The
    library's first synthesis in a fresh process is compared: its output also depends
    on what the process synthesized before (another test's voices), the program's
    never does."""
    import subprocess
    import sys
    out = tmp_path / 'first.npy'
    subprocess.run([sys.executable, '-c', (
        'import sys, numpy as np; from mmsora.apis.text2video.speech import build_speech; '
        "a, r = build_speech('espeak').synthesize('Hello world, this is a test.', 'en'); "
        'assert r == 22050; np.save(sys.argv[1], a)'), str(out)], check=True, timeout=120)
    audio, rate = np.load(out), 22050
    speech = build_speech('espeak')
    assert rate == 22050 and 1.0 < len(audio) / rate < 4.0
    assert 0.05 < np.abs(audio).max() <= 1.0
    zh, _ = speech.synthesize('今天天气很好。', 'zh')             # Mandarin voice
    assert len(zh) / rate > 0.8
    if speech_module.shutil.which('espeak-ng') is None:
        pytest.skip('no espeak-ng program to compare with (apt-get install espeak-ng)')
    program, program_rate = build_speech(dict(type='EspeakSpeech', engine='program')) \
        .synthesize('Hello world, this is a test.', 'en')
    assert program_rate == rate
    # Same engine, same voice: the same voiced span and waveform (the program only
    # adds a longer trailing pause, which speak() normalises).
    span, program_span = (np.flatnonzero(np.abs(a) > 0.01)[[0, -1]] for a in (audio, program))
    assert np.abs(span - program_span).max() / rate < 0.02
    n = min(span[1], program_span[1])
    assert np.corrcoef(audio[:n], program[:n])[0, 1] > 0.9


def test_ken_burns_box_stays_inside_with_the_output_aspect():
    src, out = (300, 200), (160, 90)
    for index in range(4):
        boxes = [ken_burns_box(src, out, p, index, zoom=1.2) for p in (0, 0.5, 1)]
        for x0, y0, x1, y1 in boxes:
            assert -1e-6 <= x0 < x1 <= 300 + 1e-6 and -1e-6 <= y0 < y1 <= 200 + 1e-6
            assert (x1 - x0) / (y1 - y0) == pytest.approx(16 / 9)
        assert boxes[0] != boxes[2]                                  # it moves
    full = (0, 15.625, 300, 184.375)              # the widest 16:9 box, centred
    assert ken_burns_box(src, out, 0.3, 0, zoom=1.0) == pytest.approx(full)
    assert parse_resolution('720p') == (1280, 720) and parse_resolution('64x36') == (64, 36)
    with pytest.raises(UserError, match='even'):
        parse_resolution('65x36')


def test_three_sentences_to_narrated_mp4(tmp_path):
    out = str(tmp_path / 'story.mp4')
    composer = Composer(SIZE, fps=FPS, fade=0.5, zoom=1.0)           # still pictures
    result = text_to_video(STORY, out, composer=composer, shot_seconds=0, progress=False)
    shots = result.shots
    assert [shot.text for shot in shots] == split_sentences(STORY)
    spoken = sum(seg.duration for shot in shots for seg in shot.segments)
    assert all(shot.duration > 0.8 for shot in shots)

    # Audio: as long as the spoken segments; AAC pads to whole 1024-sample packets.
    decoded, stream_seconds = decoded_audio_seconds(out)
    assert spoken <= decoded + 1e-3 and decoded - spoken < 1024 / 44100 + 1e-3
    assert stream_seconds == pytest.approx(spoken, abs=1 / FPS)
    frames = read_video_frames(out).astype(np.float32)
    assert len(frames) == int(np.ceil(spoken * FPS - 1e-6))
    assert frames.shape[1:] == (SIZE[1], SIZE[0], 3)

    # Picture: still within a segment, different across each boundary (outside the fade).
    upper = frames[:, :SIZE[1] // 2]
    for i, (start, end) in enumerate(result.timeline['shots']):
        inside = [k for k in range(len(frames)) if start + 0.3 < k / FPS < end - 0.3]
        assert len(inside) >= 3
        assert np.abs(upper[inside[0]] - upper[inside[-1]]).mean() < 2.0, i
        if i:
            before, after = int((start - 0.3) * FPS), int(np.ceil((start + 0.3) * FPS))
            assert np.abs(upper[before] - upper[after]).mean() > 15, i

    # Subtitles: the band differs from the same video composed without them, shows
    # bright (white) text pixels, and the rest of the frame is unchanged.
    blank = str(tmp_path / 'blank.mp4')
    plain_composer = Composer(SIZE, fps=FPS, fade=0.5, zoom=1.0, subtitles=False)
    # (the result keeps no pictures: each was dropped once the video had passed it)
    pictures = build_pictures('titlecard').render_all(shots, plain_composer.picture_size,
                                                      progress=False)
    plain_composer.compose(shots, pictures, blank, progress=False)
    plain = read_video_frames(blank).astype(np.float32)
    for start, end in result.timeline['segments']:
        k = int((start + end) / 2 * FPS)
        band = slice(int(0.7 * SIZE[1]), SIZE[1])
        assert np.abs(frames[k, band] - plain[k, band]).mean() > 10
        bright = (frames[k, band] > 220).all(-1).mean()
        assert bright > 0.01 and (plain[k, band] > 220).all(-1).mean() < 0.002
        assert np.abs(frames[k, :SIZE[1] // 2] - plain[k, :SIZE[1] // 2]).mean() < 2.0


def test_chinese_text_gets_mandarin_speech_and_subtitles(tmp_path):
    out = str(tmp_path / 'zh.mp4')
    result = text_to_video('小机器人醒来了。它找到了一张星图！', out, shot_seconds=0,
                           composer=Composer((128, 72), fps=8, zoom=1.0), progress=False)
    assert result.language == 'zh' and [s.text for s in result.shots] == [
        '小机器人醒来了。', '它找到了一张星图！']
    spoken = sum(shot.duration for shot in result.shots)
    decoded, _ = decoded_audio_seconds(out)
    assert 0 <= decoded - spoken < 1024 / 44100 + 1e-3


def test_missing_engine_or_key_names_the_option_to_use(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__('sys').modules, 'espeakng_loader', None)
    monkeypatch.setattr(speech_module.ctypes.util, 'find_library', lambda name: None)
    monkeypatch.setattr(speech_module.shutil, 'which', lambda name: None)
    with pytest.raises(UserError, match=r'pip install espeakng-loader.*--speech none'):
        build_speech('espeak')
    monkeypatch.delenv('OPENAI_API_KEY', raising=False)
    with pytest.raises(UserError, match='OPENAI_API_KEY.*--pictures titlecard'):
        build_pictures('openai')
    for name in ('AZURE_SPEECH_KEY', 'SPEECH_KEY', 'AZURE_SPEECH_REGION', 'SPEECH_REGION'):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match='AZURE_SPEECH_KEY.*--speech espeak'):
        build_speech('azure')
    with pytest.raises(UserError, match='piper voice model not found'):
        build_speech(f'piper:{tmp_path}/missing.onnx')
    with pytest.raises(UserError, match=r'diffusers:DIR'):
        build_pictures(f'diffusers:{tmp_path}/nothing')
    with pytest.raises(UserError, match=r"unknown --speech 'espeek'.*espeak\[:VOICE\]"):
        build_speech('espeek')
    with pytest.raises(UserError, match='write it as mmsora:RUN'):
        build_pictures('mmsora')
    # Silent subtitles need no engine at all.
    audio, rate = build_speech('none').synthesize('one two three four', 'en')
    assert not audio.any() and len(audio) / rate == pytest.approx(1.5)


def test_clips_play_forward_then_back(tmp_path):
    """A video model's clip (T, H, W, 3) plays at clip_fps, ping-pong, for the shot."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
    clip = np.broadcast_to(colours[:, None, None], (4, 8, 8, 3)).copy()
    shot = Shot([Segment('clip', np.zeros(16000), 8000)])           # 2 s
    out = str(tmp_path / 'clip.mp4')
    timeline = Composer((32, 32), fps=8, zoom=1.0, subtitles=False).compose(
        [shot], [clip], out, clip_fps=4, progress=False)
    assert timeline['num_frames'] == 16
    frames = read_video_frames(out).astype(np.float32).mean(axis=(1, 2))  # (T, 3)
    shown = [int(np.abs(colours - f).sum(1).argmin()) for f in frames[::2]]
    assert shown == [0, 1, 2, 3, 2, 1, 0, 1]


def test_cjk_font_draws_distinct_glyphs_or_warns_with_the_fix(capsys):
    from PIL import Image, ImageDraw

    from mmsora.apis.text2video import text_layout

    def glyph(font, char):
        image = Image.new('L', (40, 40))
        ImageDraw.Draw(image).text((4, 4), char, font=font, fill=255)
        return np.asarray(image)

    text_layout._font_path.cache_clear()
    if any(map(text_layout.osp.isfile, text_layout.CJK_FONTS)) or text_layout._fontconfig_cjk():
        font = text_layout.find_font('中文', 24)
        # Missing glyphs all draw as the same box; real ones differ.
        assert glyph(font, '中').any() and (glyph(font, '中') != glyph(font, '文')).any()
    else:
        capsys.readouterr()
        text_layout.find_font('中文', 24)
        err = capsys.readouterr().err
        assert err.startswith('warning: no CJK font found') and 'fonts-wqy-microhei' in err
        assert err.count('\n') == 1  # one line
    text_layout._font_path.cache_clear()
