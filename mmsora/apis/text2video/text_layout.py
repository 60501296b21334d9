"""Fonts and wrapped text for subtitles and title cards (PIL).

Chinese text needs a CJK font. One is looked for among the usual system fonts
(WenQuanYi, Noto CJK, Droid Sans Fallback, AR PL, PingFang, Microsoft YaHei, and
whatever ``fc-match :lang=zh`` names); ``--font PATH`` picks one. Without any, CJK
characters would draw as empty boxes, so :func:`find_font` warns once, naming the fix.
Korean Hangul is drawn with a CJK font too (they cover it). A font that lacks glyphs for
the text of any script (Devanagari in DejaVu Sans, Chinese in a ``--font`` of Latin
letters) is warned about once, naming how many and a few of them.
"""
import os.path as osp
import re
import shutil
import subprocess
import sys
import unicodedata
from functools import lru_cache
from typing import List, Optional

from PIL import ImageDraw, ImageFont

from mmsora.utils.cli import UserError
from .segmentation import CJK, SCRIPTS

__all__ = ['find_font', 'check_font', 'wrap_lines', 'draw_lines', 'CJK_FONTS', 'LATIN_FONTS']

CJK_FONTS = (
    '/usr/share/fonts/truetype/wqy/wqy-microhei.ttc',
    '/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc',
    '/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc',
    '/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc',
    '/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc',
    '/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf',
    '/usr/share/fonts/truetype/arphic/uming.ttc',
    '/System/Library/Fonts/PingFang.ttc',
    '/System/Library/Fonts/STHeiti Medium.ttc',
    'C:/Windows/Fonts/msyh.ttc',
    'C:/Windows/Fonts/simhei.ttf',
)
LATIN_FONTS = (
    '/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf',
    '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf',
    '/usr/share/fonts/TTF/DejaVuSans.ttf',
    '/System/Library/Fonts/Helvetica.ttc',
    'C:/Windows/Fonts/arial.ttf',
)

# Text that needs a CJK font: CJK characters and kana, and Hangul.
_NEEDS_CJK_FONT = re.compile(f'{CJK.pattern}|{SCRIPTS["ko"][1].pattern}')
# Fonts already warned about for missing glyphs (None: Pillow's own font).
_WARNED_FONTS = set()
# A character no font has (the last private-use one): drawn as the missing-glyph box.
_NO_GLYPH = '\U0010fffd'


@lru_cache(maxsize=None)
def _fontconfig_cjk() -> Optional[str]:
    """The file ``fc-match`` gives for Chinese, if it really covers Chinese."""
    if shutil.which('fc-match') is None:
        return None
    try:
        out = subprocess.run(['fc-match', '-f', '%{file}\n%{lang}', ':lang=zh-cn'],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path, _, langs = out.partition('\n')
    return path if path and 'zh-cn' in langs.split('|') else None


@lru_cache(maxsize=None)
def _font_path(cjk: bool, font: Optional[str]) -> Optional[str]:
    if font is not None:
        if not osp.isfile(font):
            raise UserError(f'--font: no such font file {font!r}')
        return font
    candidates = (CJK_FONTS + ((_fontconfig_cjk(),) if _fontconfig_cjk() else ())
                  if cjk else LATIN_FONTS + CJK_FONTS)
    for path in candidates:
        if osp.isfile(path):
            return path
    if cjk:
        # one line of its own, between progress bars (a warnings.warn came out on the
        # bar's line, followed by a line of this file's source)
        from tqdm import tqdm
        tqdm.write('warning: no CJK font found: Chinese, Japanese and Korean subtitles will '
                   'show as boxes. Install one (apt-get install fonts-wqy-microhei, or '
                   'fonts-noto-cjk) or pass --font PATH', file=sys.stderr)
    return None


def find_font(text: str, size: int, font: Optional[str] = None):
    """A font of ``size`` pixels able to draw ``text`` (a CJK font when it has CJK).

    Warns once per font that has no glyphs for some of the text's characters.

    Args:
        text: What will be drawn (decides whether a CJK font is needed).
        size: Font size in pixels.
        font: A font file that overrides the search.
    """
    cjk = bool(_NEEDS_CJK_FONT.search(text))
    path = _font_path(cjk, font)
    if not (path is None and cjk):  # (no CJK font at all: _font_path said so)
        _warn_missing_glyphs(path, text)
    if path is None:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font
    return _load(path, size)


def _load(path: str, size: int):
    try:
        return ImageFont.truetype(path, size=size)
    except OSError as e:
        raise UserError(f'cannot read font {path!r}: {e}') from None


@lru_cache(maxsize=None)
def _has_glyph(path: Optional[str], char: str) -> bool:
    """Whether the font at ``path`` (None: Pillow's own) draws ``char`` as something
    other than its missing-glyph box (PIL draws what the font maps, box or not)."""
    font = ImageFont.load_default(size=32) if path is None else _load(path, 32)

    def drawn(c):
        mask = font.getmask(c)
        return mask.size, bytes(mask)

    return drawn(char) != drawn(_NO_GLYPH)


def _warn_missing_glyphs(path: Optional[str], text: str) -> None:
    """Warn, once per font, when it lacks glyphs for characters of ``text``.

    Before, only a missing CJK font was warned about: Hindi subtitles and title cards
    in DejaVu Sans, or Chinese in a ``--font`` of Latin letters, were empty boxes
    without a word.
    """
    if path in _WARNED_FONTS:
        return
    # letters, digits, punctuation, symbols; not spaces, controls or combining marks
    # (drawn with the letter before them)
    chars = [c for c in dict.fromkeys(text) if unicodedata.category(c)[0] in 'LNPS'][:400]
    missing = [c for c in chars if not _has_glyph(path, c)]
    if missing:
        _WARNED_FONTS.add(path)
        from tqdm import tqdm
        name = "Pillow's built-in font" if path is None else f'the font {path}'
        tqdm.write(f'warning: {name} has no glyphs for {len(missing)} of the '
                   f'{len(chars)} characters of {_excerpt(text)} (e.g. '
                   f'{" ".join(missing[:5])}): they show as boxes; give --font a font '
                   'that has them', file=sys.stderr)


def _excerpt(text: str, limit: int = 24) -> str:
    flat = ' '.join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + '...')


def check_font(font: Optional[str]) -> None:
    """Refuse a font file given (``--font``) that is missing or not a font, when the
    backend that draws with it is made.

    Before, the file was first opened while drawing, inside a stage: the one-line error
    came out on the same line as that stage's half-drawn progress bar.

    Raises:
        UserError: naming the file.
    """
    if font is not None:
        find_font('', 12, font)


def _tokens(text: str) -> List[str]:
    """Wrapping units: CJK characters one by one, Latin words with their spaces."""
    tokens, word = [], ''
    for char in text:
        if CJK.match(char):
            if word:
                tokens.append(word)
                word = ''
            tokens.append(char)
        else:
            word += char
            if char == ' ':
                tokens.append(word)
                word = ''
    if word:
        tokens.append(word)
    return tokens


def wrap_lines(text: str, font, max_width: float) -> List[str]:
    """Greedy line wrap to ``max_width`` pixels; a word longer than a line is kept whole.

    CJK text breaks between any two characters, Latin text between words.
    """
    lines, line = [], ''
    for token in _tokens(text):
        if line and font.getlength((line + token).rstrip()) > max_width:
            lines.append(line.rstrip())
            line = token.lstrip()
        else:
            line += token
    if line.strip():
        lines.append(line.rstrip())
    return lines


def draw_lines(draw: ImageDraw.ImageDraw, lines: List[str], font, center_x: float,
               top: float, fill=(255, 255, 255), stroke=(0, 0, 0), line_gap=0.25):
    """Draw centred lines from ``top`` down, with a dark outline; returns the bottom."""
    size = font.size if hasattr(font, 'size') else 12
    stroke_width = max(1, size // 14)
    y = top
    for line in lines:
        draw.text((center_x, y), line, font=font, fill=fill, anchor='ma',
                  stroke_width=stroke_width, stroke_fill=stroke)
        y += size * (1 + line_gap)
    return y
