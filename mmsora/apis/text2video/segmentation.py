"""Text -> sentences -> subtitle-sized segments -> shots, and one image prompt per shot.

English and Chinese punctuation both end sentences; a sentence too long to read as one
subtitle is cut again at its commas. Each segment is spoken on its own, and consecutive
segments are grouped into shots (one picture each) until a shot lasts about a target
duration, so short sentences do not flash past as single pictures.
"""
import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

__all__ = ['Segment', 'Shot', 'detect_language', 'split_sentences', 'split_segments',
           'group_shots', 'build_prompt', 'DEFAULT_PROMPT_TEMPLATE']

DEFAULT_PROMPT_TEMPLATE = '{text}, digital illustration, cinematic lighting, detailed'

# CJK ideographs, kana and CJK punctuation / full-width forms.
_CJK = re.compile(r'[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]')
# A sentence ends at 。！？；… anywhere, and at !?; or a '.' followed by a space, the
# end or a CJK character; closing quotes and brackets stay with the sentence they close.
_CLOSERS = r'[”’"\'」』）)\]]*'
_SENTENCE_END = re.compile(
    r'[。！？；…]+' + _CLOSERS + '|'
    r'(?:[!?;]+|\.{3}|(?<!\b[A-Z])(?<!\b(?:Mr|Ms|Dr|St|vs|No))(?<!\be\.g)(?<!\bi\.e)\.)'
    + _CLOSERS + r'(?=\s|$|[^\x00-\x7f])')
# A line that starts a list item or a Markdown heading: not joined to the line above
# (group 2: a numbered item).
_BLOCK_START = re.compile(r'([-*•+]|(\d+[.)])|#+)\s+')
# Where a long sentence may be cut: after commas, colons, dashes (both scripts).
_CLAUSE_END = re.compile(r'(?<=[，、,：:—])\s*')


@dataclass
class Segment:
    """One subtitle-sized piece of text, spoken on its own.

    Attributes:
        text: What is spoken and shown.
        audio: Mono float32 samples in [-1, 1] once spoken, else None.
        sample_rate: Rate of ``audio``.
    """
    text: str
    audio: Optional[np.ndarray] = None
    sample_rate: int = 0

    @property
    def duration(self) -> float:
        """Spoken length in seconds (0 before speech)."""
        return 0.0 if self.audio is None else len(self.audio) / self.sample_rate


@dataclass
class Shot:
    """Consecutive segments shown over one picture.

    Attributes:
        segments: The segments, in reading order.
        prompt: The image prompt built from their text.
        index: Position of the shot in the video.
    """
    segments: List[Segment]
    prompt: str = ''
    index: int = 0
    picture: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return _join([s.text for s in self.segments])

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)


def _is_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def _join(parts: Sequence[str]) -> str:
    """Join pieces with a space between Latin words and nothing between CJK ones."""
    out = ''
    for part in parts:
        if out and not (_is_cjk(out[-1]) or _is_cjk(part[:1])):
            out += ' '
        out += part
    return out


def detect_language(text: str) -> str:
    """``'zh'`` when at least a fifth of the letters are CJK, else ``'en'``."""
    letters = [c for c in text if c.isalnum()]
    if not letters:
        return 'en'
    cjk = sum(1 for c in letters if _CJK.match(c))
    return 'zh' if cjk >= 0.2 * len(letters) else 'en'


def split_sentences(text: str) -> List[str]:
    """Split text into sentences at English and Chinese sentence punctuation.

    Line breaks are read as Markdown reads them: a blank line ends a paragraph (and
    its sentence: a heading), a line starting a list item (``-``, ``*``, ``•``,
    ``1.``, ``1)``) or a ``#`` heading starts a new one, and any other line break
    joins the lines (text wrapped at a width), with a space between Latin words and
    nothing between CJK characters. Decimal points, initials ("J. R. R.") and a few
    abbreviations ("Mr.", "e.g.") do not end a sentence.
    """
    sentences = []
    for line in _logical_lines(text):
        start = 0
        for match in _SENTENCE_END.finditer(line, _item_number_end(line)):
            sentences.append(line[start:match.end()].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if s]


def _item_number_end(line: str) -> int:
    """Where the number of a numbered list item (``1. walk``, ``10) rest``) ends, else
    0: the sentence search starts after it.

    Before, the '.' of ``1. walk north`` ended a sentence like any '.' before a space:
    the item became two segments, '1.' (spoken and shown alone) and 'walk north',
    while ``2) rest`` stayed whole.
    """
    start = _BLOCK_START.match(line)
    return start.end() if start and start.group(2) else 0


def _logical_lines(text: str) -> List[str]:
    """The text's paragraphs, headings and list items, each joined into one line;
    heading marks and bullets are dropped (they would be spoken), numbers kept."""
    lines = []
    for paragraph in re.split(r'\n\s*\n', text.strip()):
        block, heading = [], False
        for line in (part.strip() for part in paragraph.splitlines()):
            start = _BLOCK_START.match(line)
            if block and line and not start and not heading:
                block[-1] = _join([block[-1], line])
            elif line:
                block.append(line[start.end():] if start and not start.group(2)
                             else line)
            heading = bool(start and start.group(1).startswith('#'))
        lines += block
    return lines


def _text_length(text: str) -> float:
    """Reading length: a CJK character counts as two Latin characters."""
    return sum(2 if _CJK.match(c) else 1 for c in text)


def split_segments(sentences: Sequence[str], max_chars: int = 90) -> List[str]:
    """Cut sentences longer than ``max_chars`` at their commas into subtitle pieces.

    Clauses are merged back greedily while they fit, so pieces stay as long as allowed;
    a clause that alone exceeds ``max_chars`` is kept whole (it is wrapped on screen).
    A CJK character counts as two.
    """
    if max_chars < 1:
        raise ValueError(f'max_chars must be >= 1, got {max_chars}')
    pieces = []
    for sentence in sentences:
        if _text_length(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        current = ''
        for clause in (c for c in _CLAUSE_END.split(sentence) if c):
            joined = _join([current, clause]) if current else clause
            if current and _text_length(joined) > max_chars:
                pieces.append(current)
                current = clause
            else:
                current = joined
        if current:
            pieces.append(current)
    return pieces


def group_shots(segments: Sequence[Segment], target_seconds: float = 0.0) -> List[Shot]:
    """Group spoken segments into shots lasting about ``target_seconds`` each.

    A shot takes segments until its spoken length reaches the target; 0 gives one shot
    per segment. A paragraph's last short sentence may make a shot shorter.
    """
    if target_seconds < 0:
        raise ValueError(f'target_seconds must be >= 0, got {target_seconds}')
    shots, current = [], []
    for segment in segments:
        current.append(segment)
        if sum(s.duration for s in current) >= target_seconds:
            shots.append(Shot(current, index=len(shots)))
            current = []
    if current:
        shots.append(Shot(current, index=len(shots)))
    return shots


def build_prompt(text: str, template: str = DEFAULT_PROMPT_TEMPLATE,
                 rewriter: Optional[Callable[[str], str]] = None) -> str:
    """The image prompt of a shot: ``rewriter(text)`` if given (e.g. an LLM), else the
    template with ``{text}`` filled in."""
    if rewriter is not None:
        prompt = rewriter(text)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f'the prompt rewriter returned {prompt!r} for {text!r}; '
                             'it must return a non-empty string')
        return prompt.strip()
    if '{text}' not in template:
        raise ValueError(f'the prompt template must contain {{text}}, got {template!r}')
    return template.replace('{text}', text.rstrip('。.!！?？;；'))
