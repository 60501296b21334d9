"""Text -> sentences -> subtitle-sized segments -> shots, and one image prompt per shot.

English, Chinese, Japanese, Devanagari and Arabic punctuation end sentences; a sentence
too long to read as one subtitle is cut again at its commas, and a clause still too long
between words (or CJK characters), so every segment fits a three-line subtitle. Each
segment is spoken on its own, and consecutive segments are grouped into shots (one
picture each) until a shot lasts about a target duration, so short sentences do not
flash past as single pictures.
"""
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

from mmsora.utils.cli import UserError

__all__ = ['Segment', 'Shot', 'detect_language', 'script_language', 'check_unicode',
           'split_sentences', 'split_segments', 'group_shots', 'build_prompt',
           'DEFAULT_PROMPT_TEMPLATE', 'SCRIPTS', 'CJK']

DEFAULT_PROMPT_TEMPLATE = '{text}, digital illustration, cinematic lighting, detailed'

# CJK ideographs, kana and CJK punctuation / full-width forms.
CJK = re.compile(r'[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]')
# A sentence ends at 。！？；… (and Japanese ｡, Devanagari । ॥, Arabic ؟ ؛, Urdu ۔)
# anywhere, and at !?; or a '.' followed by a space, the end or a CJK character;
# closing quotes and brackets stay with the sentence they close.
_CLOSERS = r'[”’"\'」』）)\]]*'
_SENTENCE_END = re.compile(
    r'[。！？；…｡।॥؟؛۔]+' + _CLOSERS + '|'
    r'(?:[!?;]+|\.{3}|(?<!\b[A-Z])(?<!\b(?:Mr|Ms|Dr|St|vs|No))(?<!\be\.g)(?<!\bi\.e)\.)'
    + _CLOSERS + r'(?=\s|$|[^\x00-\x7f])')
# A line that starts a list item or a Markdown heading: not joined to the line above
# (group 2: a numbered item).
_BLOCK_START = re.compile(r'([-*•+]|(\d+[.)])|#+)\s+')
# A line that Markdown does not show as text: a thematic break (3 or more of one of
# - * _, spaces allowed: ``---``, ``* * *``), or a setext heading's underline under a
# text line (``===``; ``---`` is one too: the lines above are a heading either way).
_THEMATIC_BREAK = re.compile(r'([-*_])(?:\s*\1){2,}')
_SETEXT_UNDERLINE = re.compile(r'=+|-+')
# Where a long sentence may be cut: after commas, colons, dashes (also CJK and Arabic).
_CLAUSE_END = re.compile(r'(?<=[，、,：:—،])\s*')
# Lone surrogates: what Python makes of bytes that are not UTF-8 (surrogateescape).
_SURROGATE = re.compile('[\ud800-\udfff]')

# Scripts that name the language to speak them in (a voice other than the English or
# Chinese one): language -> (script, its letters). eSpeak NG has a voice for each.
SCRIPTS = {
    'ja': ('Japanese kana', re.compile('[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]')),
    'ko': ('Korean Hangul', re.compile('[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]')),
    'ru': ('Cyrillic', re.compile('[\u0400-\u052f]')),
    'el': ('Greek', re.compile('[\u0370-\u03ff\u1f00-\u1fff]')),
    'hy': ('Armenian', re.compile('[\u0530-\u058f]')),
    'he': ('Hebrew', re.compile('[\u0590-\u05ff]')),
    'ar': ('Arabic', re.compile('[\u0600-\u06ff\u0750-\u077f]')),
    'hi': ('Devanagari', re.compile('[\u0900-\u097f]')),
    'bn': ('Bengali', re.compile('[\u0980-\u09ff]')),
    'ta': ('Tamil', re.compile('[\u0b80-\u0bff]')),
    'th': ('Thai', re.compile('[\u0e00-\u0e7f]')),
    'ka': ('Georgian', re.compile('[\u10a0-\u10ff]')),
}


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

    @property
    def text(self) -> str:
        return _join([s.text for s in self.segments])

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)


def _is_cjk(text: str) -> bool:
    return bool(CJK.search(text))


def _join(parts: Sequence[str]) -> str:
    """Join pieces with a space between Latin words and nothing between CJK ones."""
    out = ''
    for part in parts:
        if out and not (_is_cjk(out[-1]) or _is_cjk(part[:1])):
            out += ' '
        out += part
    return out


def detect_language(text: str) -> str:
    """``'zh'`` when at least a fifth of the letters are CJK, else ``'en'``.

    Other scripts (Cyrillic, kana, Devanagari, ...) are not told apart here:
    :func:`script_language` names their language, and the speech backends use it to
    pick the voice of each segment.
    """
    letters = [c for c in text if c.isalnum()]
    if not letters:
        return 'en'
    cjk = sum(1 for c in letters if CJK.match(c))
    return 'zh' if cjk >= 0.2 * len(letters) else 'en'


def script_language(text: str) -> Optional[str]:
    """The language a script of ``text`` other than Latin and Chinese names (``'ru'``
    for Cyrillic, ``'ja'`` for kana, ``'hi'`` for Devanagari, ...: :data:`SCRIPTS`),
    when at least half the letters are in it (a Latin name in a Russian sentence
    leaves it Russian, a Russian name in an English one English); else None.

    Japanese writes with Chinese ideographs and kana, and Chinese never with kana, so
    CJK text with any kana is Japanese.
    """
    letters = [c for c in text if c.isalnum()]
    counts = {language: sum(1 for c in letters if letters_of.match(c))
              for language, (_, letters_of) in SCRIPTS.items()}
    if counts['ja']:
        counts['ja'] += sum(1 for c in letters if CJK.match(c))
    language = max(counts, key=counts.get, default=None)
    return language if letters and counts[language] >= 0.5 * len(letters) else None


def check_unicode(text: str) -> None:
    """Refuse text that holds lone surrogates: the bytes that were not UTF-8 of a text
    read with Python's ``surrogateescape`` (standard input under a UTF-8 locale).

    Before, such text went through segmentation and failed deep inside the speech
    engine ('utf-8' codec can't encode character '\\udce9' ...).

    Raises:
        UserError: naming the byte and where it is.
    """
    bad = _SURROGATE.search(text)
    if bad is None:
        return
    code = ord(bad.group())
    what = (f'the byte 0x{code - 0xdc00:02x}' if 0xdc80 <= code <= 0xdcff
            else f'a lone surrogate U+{code:04X}')
    before = ' '.join(text[max(0, bad.start() - 20):bad.start()].split())
    raise UserError(f'the text is not UTF-8: it holds {what} at character {bad.start()}'
                    f'{f" (after {before!r})" if before else ""}; save it as UTF-8')


def split_sentences(text: str) -> List[str]:
    """Split text into sentences at English and Chinese sentence punctuation.

    Line breaks are read as Markdown reads them: a blank line ends a paragraph (and
    its sentence: a heading), a line starting a list item (``-``, ``*``, ``•``,
    ``1.``, ``1)``) or a ``#`` heading starts a new one, a thematic break (``---``,
    ``***``, ``___``) or a setext heading's underline is dropped, and any other line break
    joins the lines (text wrapped at a width), with a space between Latin words and
    nothing between CJK characters. Decimal points, initials ("J. R. R.") and a few
    abbreviations ("Mr.", "e.g.") do not end a sentence.

    Raises:
        UserError: text that is not Unicode (:func:`check_unicode`).
    """
    check_unicode(text)
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
    heading marks and bullets are dropped (they would be spoken), numbers kept.

    A thematic break (``---``, ``***``, ``___``) and a setext heading's underline
    (``===`` or ``---`` under a text line) are dropped and end the line above, as a
    ``#`` heading's line ends. Before, a break between paragraphs was a segment of its
    own, the subtitle '---' (and put into the prompt), and an underline was joined to
    its heading ('Title ---').
    """
    lines = []
    for paragraph in re.split(r'\n\s*\n', text.strip()):
        block, heading = [], False
        for line in (part.strip() for part in paragraph.splitlines()):
            if _THEMATIC_BREAK.fullmatch(line) or (
                    block and _SETEXT_UNDERLINE.fullmatch(line)):
                heading = True  # (the next line starts a new one)
                continue
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
    return sum(2 if CJK.match(c) else 1 for c in text)


def _word_tokens(text: str) -> List[str]:
    """Where a clause may be cut: CJK characters one by one, other words with the
    spaces after them; punctuation stays with the word before it, an opening bracket
    or quote with the word after it."""
    tokens = []
    for char in text:
        prev = tokens[-1] if tokens else ''
        if not prev or (prev[-1].isspace() and not char.isspace()):
            new = True
        elif char.isspace() or all(unicodedata.category(c) in ('Ps', 'Pi') for c in prev):
            new = False
        else:
            new = (unicodedata.category(char) in ('Ps', 'Pi') or char.isalnum()
                   and bool(CJK.match(char) or CJK.match(prev[-1])))
        if new:
            tokens.append(char)
        else:
            tokens[-1] += char
    return tokens


def _cut_clause(clause: str, max_chars: int) -> List[str]:
    """Cut a clause longer than ``max_chars`` into pieces of about equal length between
    words (any two CJK characters); a word longer than ``max_chars`` (no spaces: a
    URL, Thai) is cut between its characters."""
    tokens = []
    for token in _word_tokens(clause.strip()):
        while _text_length(token.strip()) > max_chars:
            cut = _fit(token, max_chars)
            tokens.append(token[:cut])
            token = token[cut:]
        tokens.append(token)
    # Fewest, evenest pieces (not 90 + 10): least sum of squared room left, as
    # minimum-raggedness line breaking does. ends[k]: reading length of tokens[:k].
    ends = [0.0]
    for token in tokens:
        ends.append(ends[-1] + _text_length(token))
    spaces = [_text_length(t) - _text_length(t.rstrip()) for t in tokens]
    cost, start = [0.0] + [math.inf] * len(tokens), [0] * (len(tokens) + 1)
    for j in range(1, len(tokens) + 1):
        for i in range(j - 1, -1, -1):
            length = ends[j] - ends[i] - spaces[j - 1]
            if length > max_chars and i < j - 1:
                break
            if cost[i] + (max_chars - length) ** 2 < cost[j]:
                cost[j], start[j] = cost[i] + (max_chars - length) ** 2, i
    pieces, j = [], len(tokens)
    while j:
        pieces.insert(0, ''.join(tokens[start[j]:j]).strip())
        j = start[j]
    return [p for p in pieces if p]


def _fit(word: str, max_chars: int) -> int:
    """How many characters of ``word`` fit ``max_chars``; not before a combining
    mark (it belongs to the letter before it)."""
    cut = 1
    while cut < len(word) and _text_length(word[:cut + 1]) <= max_chars:
        cut += 1
    while 1 < cut < len(word) and unicodedata.category(word[cut])[0] == 'M':
        cut -= 1
    return cut


def split_segments(sentences: Sequence[str], max_chars: int = 90) -> List[str]:
    """Cut sentences longer than ``max_chars`` at their commas into subtitle pieces.

    Clauses are merged back greedily while they fit, so pieces stay as long as allowed;
    a clause that alone exceeds ``max_chars`` is cut between words (CJK characters) into
    pieces of about equal length. A CJK character counts as two.

    Before, such a clause was kept whole: a 400-word sentence without commas became one
    125 s segment, a 16-line subtitle over half the picture.
    """
    if max_chars < 1:
        raise ValueError(f'max_chars must be >= 1, got {max_chars}')
    pieces = []
    for sentence in sentences:
        if _text_length(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        current = ''
        clauses = [piece for c in _CLAUSE_END.split(sentence) if c
                   for piece in (_cut_clause(c, max_chars)
                                 if _text_length(c) > max_chars else [c])]
        for clause in clauses:
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
    return template.replace('{text}', text.rstrip('。.!！?？;；｡।॥؟؛۔'))
