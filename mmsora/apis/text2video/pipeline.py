"""text -> segments -> speech -> shots and prompts -> pictures -> narrated mp4."""
import math
import os
import os.path as osp
import re
import unicodedata
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import numpy as np
from tqdm import tqdm

from mmsora.utils.atomic_io import make_folders, remove_made_folders
from mmsora.utils.cli import Interrupted, UserError, check_output_path
from .compose import Composer, not_written
from .pictures import PictureBackend, build_pictures
from .segmentation import (DEFAULT_PROMPT_TEMPLATE, Segment, Shot, build_prompt,
                           detect_language, group_shots, script_language, split_segments,
                           split_sentences)
from .speech import SpeechBackend, build_speech

__all__ = ['Text2VideoResult', 'plan_segments', 'speak', 'text_to_video', 'check_options',
           'drawn_from']


@dataclass
class Text2VideoResult:
    """What :func:`text_to_video` made.

    Attributes:
        path: The mp4.
        language: The language code the text was spoken in (``'en'``, ``'zh'``, ``'ru'``...).
        shots: The spoken shots (segments with audio, and prompts; their pictures
            are not kept: each is made when the video reaches its shot and dropped
            once the video has passed it).
        timeline: ``Composer.compose``'s answer: ``duration``, ``num_frames``, and the
            start/end times of ``shots`` and ``segments``.
    """
    path: str
    language: str
    shots: List[Shot]
    timeline: dict


def plan_segments(text: str, max_chars: int = 90) -> List[Segment]:
    """Sentences of ``text`` cut into subtitle-sized segments (not yet spoken).

    Raises:
        UserError: a text with nothing to say: empty, or no words (no letter or digit:
            only punctuation or symbols such as emoji; before, a text such as '...'
            became a 0.3 s silent video, and '🙂🎉' was said to be punctuation).
    """
    pieces = split_segments(split_sentences(text), max_chars)
    if not pieces:
        raise UserError('the text is empty: nothing to say')
    if not any(c.isalnum() for c in text):
        what = ('only punctuation or symbols' if all(map(_no_word_mark, text))
                else 'no letters or digits')
        raise UserError(f'the text holds no words, {what} ({_excerpt(text)}): nothing '
                        'to say')
    return [Segment(p) for p in pieces]


# What joins or styles emoji without being one: the zero-width joiner (👩‍💻), the
# keycap mark (#️⃣), variation selectors (❤️) and tag characters (subdivision flags).
_EMOJI_PARTS = re.compile('[\u200d\u20e3\ufe00-\ufe0f\U000e0020-\U000e007f'
                          '\U000e0100-\U000e01ef]')


def _no_word_mark(c: str) -> bool:
    """``c`` is punctuation (P*), a symbol (S*: emoji, their skin-tone modifiers), a
    space or a part of an emoji (:data:`_EMOJI_PARTS`)."""
    return (unicodedata.category(c)[0] in 'PS' or c.isspace()
            or _EMOJI_PARTS.match(c) is not None)


def check_options(out: Optional[Union[str, os.PathLike]] = None, shot_seconds: float = 4.0,
                  pause: float = 0.3, prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                  language: str = 'auto') -> None:
    """Refuse, before any speech or sampling, settings that would fail after them.

    Before, ``--shot-seconds -1`` and a template without ``{text}`` were refused once
    all the speech was made, and an ``--out`` that cannot be written (a folder, a path
    through a file, /proc/x.mp4) once the pictures were too, some with a traceback.

    Raises:
        UserError: naming the option and what it needs.
    """
    # (NaN compares false and passed; NaN and inf then failed with a traceback)
    for option, value in (('--shot-seconds', shot_seconds), ('--pause', pause)):
        if not math.isfinite(value):
            raise UserError(f'{option} must be a finite number of seconds >= 0, got {value}')
    if shot_seconds < 0:
        raise UserError(f'--shot-seconds must be >= 0 (0: one picture per segment), '
                        f'got {shot_seconds:g}')
    if pause < 0:
        raise UserError(f'--pause must be >= 0, got {pause:g}')
    if language != 'auto' and not re.fullmatch(r'[a-z]{2,3}(-[a-z0-9]+)*',
                                               str(language).lower()):
        raise UserError(f"--language must be auto or a language code (en, zh, ru, de, ...), "
                        f"got {language!r}")
    if '{text}' not in prompt_template:
        raise UserError(f'--prompt-template must contain {{text}} (where the shot\'s text '
                        f"goes, e.g. '{{text}}, watercolor'), got {prompt_template!r}")
    if out is None:
        return
    out = os.fspath(out)  # (a pathlib.Path had no lower)
    if not out.lower().endswith('.mp4'):
        raise UserError(f'--out must name an .mp4 file, got {out!r}')
    check_output_path(out, '--out')


def drawn_from(pictures: PictureBackend, shot: Shot) -> str:
    """What ``shot``'s picture was drawn from, for the summary: its prompt, or, where
    the model is class-conditional, the class label (the model never sees the prompt),
    with the start of the shot's text."""
    params = getattr(pictures, 'params', None)  # a diffusers pipeline's arguments
    if params is not None:
        by_label = 'prompt' not in params and 'class_labels' in params
    else:  # MMSoraPictures
        by_label = getattr(pictures, 'text_conditioned', True) is False
    labels = getattr(pictures, 'labels', None)
    if not by_label or not labels:
        return shot.prompt
    return f'class label {labels[shot.index % len(labels)]} for {_excerpt(shot.text, 60)}'


def _excerpt(text: str, limit: int = 20) -> str:
    """``text`` on one line, cut to ``limit`` characters, quoted."""
    flat = ' '.join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + '...')


def speak(segments: List[Segment], backend: SpeechBackend, language: str,
          pause: float = 0.3, progress: bool = True) -> List[Segment]:
    """Give every segment its audio (in place); returns the segments.

    Engines end an utterance with different amounts of silence (eSpeak's library
    almost none, its program a paragraph pause), so trailing silence is cut and
    ``pause`` seconds of silence end every segment instead.
    """
    with tqdm(segments, desc='speech', disable=not progress) as bar:
        for segment in bar:  # (the with block ends the bar's line on an error)
            _speak_one(segment, backend, language, pause)
    return segments


def _speak_one(segment: Segment, backend: SpeechBackend, language: str,
               pause: float) -> None:
    """``segment.audio``: its speech, trailing silence cut, ``pause`` s appended."""
    audio, rate = backend.synthesize(segment.text, language)
    audio = np.asarray(audio, np.float32)
    if len(audio) == 0:
        raise UserError(f'the speech backend returned no audio for {segment.text!r}')
    voiced = np.flatnonzero(np.abs(audio) > 1e-3)
    if len(voiced):  # a silent backend's track is all pause: keep it
        audio = audio[:voiced[-1] + 1]
    silence = np.zeros(int(round(pause * rate)), np.float32)
    segment.audio, segment.sample_rate = np.concatenate([audio, silence]), int(rate)


def text_to_video(text: str, out: Union[str, os.PathLike],
                  speech: Union[str, dict, SpeechBackend] = 'espeak',
                  pictures: Union[str, dict, PictureBackend] = 'titlecard',
                  language: str = 'auto', composer: Optional[Composer] = None,
                  shot_seconds: float = 4.0, max_chars: int = 90, pause: float = 0.3,
                  prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
                  prompt_rewriter: Optional[Callable[[str], str]] = None,
                  progress: bool = True) -> Text2VideoResult:
    """Turn ``text`` into a narrated mp4 at ``out``; offline with the defaults.

    Args:
        text: The story (English or Chinese).
        out: The mp4 to write (a str or a pathlib.Path; ``result.path`` is a str).
        speech: Speech backend, or its spec (``espeak``, ``piper:VOICE.onnx``, ``edge``,
            ``azure``, ``none``) or config.
        pictures: Picture backend, or its spec (``titlecard``, ``mmsora:RUN``,
            ``diffusers:DIR``, ``openai``) or config. (``'titlecard'`` draws the shot's
            text on the card; the command line turns that off under subtitles:
            ``TitleCardPictures(show_text=False)``.)
        language: ``'auto'`` (from the text's script: :func:`script_language`, else
            ``'en'`` or ``'zh'``) or a language code for the speech backend's voice.
        composer: Output settings (default: 480p, 24 fps).
        shot_seconds: A shot (one picture) takes segments until it lasts at least this
            long (the last may be shorter); 0 gives one picture per segment.
        max_chars: Sentences longer than this are cut at commas (CJK counts double).
        pause: Seconds of silence after each segment.
        prompt_template: Image prompt with ``{text}``.
        prompt_rewriter: ``text -> prompt`` (e.g. an LLM call) used instead of the
            template.
        progress: Show progress bars.
    """
    out = os.fspath(out)
    check_options(out, shot_seconds, pause, prompt_template, language)
    if language == 'auto':  # (Russian text was said to be 'en', and --language ru refused:
        # the speech backends pick a voice for each script's language)
        language = script_language(text) or detect_language(text)
    composer = composer or Composer()
    speech = speech if isinstance(speech, SpeechBackend) else build_speech(speech)
    pictures = pictures if isinstance(pictures, PictureBackend) else build_pictures(pictures)
    try:
        segments = speak(plan_segments(text, max_chars), speech, language, pause, progress)
        shots = group_shots(segments, shot_seconds)
        for shot in shots:
            shot.prompt = build_prompt(shot.text, prompt_template, prompt_rewriter)
    except KeyboardInterrupt as e:  # (the composer says it while writing)
        if isinstance(e, Interrupted):
            raise
        raise Interrupted(not_written(out), exit_code=getattr(e, 'exit_code', 130)) \
            from None
    from mmsora.apis.video import DEFAULT_FPS
    made = make_folders(osp.dirname(osp.abspath(out)))
    # Each shot's picture is made when the composer reaches the shot (a model samples
    # a batch of shots at a time) and dropped once the video has passed it: made all
    # before the video and held to its end, they grew the peak by 1.8 MiB a shot at
    # 480p (docs/text2video.md, Measured). An error or Ctrl-C while they are made is
    # the composer's: no part file is left, and the 'interrupted' line says so.
    try:
        with closing(pictures.iter_pictures(shots, composer.picture_size,
                                            progress=progress)) as images:
            timeline = composer.compose(shots, images, out, progress=progress,
                                        clip_fps=getattr(pictures, 'fps', DEFAULT_FPS))
    except BaseException:
        remove_made_folders(made)  # the folders made for ``out`` (as before: none made)
        raise
    return Text2VideoResult(out, language, shots, timeline)
