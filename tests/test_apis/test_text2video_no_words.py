"""A text with no words is refused naming what it holds: an emoji-only text was said to
hold 'only punctuation'."""
import pytest

from mmsora.apis.text2video import plan_segments
from mmsora.utils.cli import UserError


@pytest.mark.parametrize('text', [
    '🙂🎉',
    '... !',
    '∑ ≠ → ©',                            # symbols that are no emoji (Sm, So)
    '👩\u200d💻 ❤\ufe0f #\ufe0f\u20e3 👍🏽',   # joiner, variation selector, keycap, skin tone
    '🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f',  # a tagged flag
])
def test_only_punctuation_or_symbols_hold_no_words(text):
    with pytest.raises(UserError) as info:
        plan_segments(text)
    assert str(info.value).startswith('the text holds no words, only punctuation or '
                                      'symbols (')
    assert str(info.value).endswith('): nothing to say')


def test_no_letters_nor_symbols_say_so():
    """Marks alone (combining accents, a control character) are no punctuation."""
    with pytest.raises(UserError, match=r"^the text holds no words, no letters or digits "
                                        r"\('\\x07 \.'\): nothing to say$"):
        plan_segments('\x07 .')
    with pytest.raises(UserError, match='holds no words, no letters or digits'):
        plan_segments('\u0301\u0301')


@pytest.mark.parametrize('text', ['🙂 ok', '1\ufe0f\u20e3', 'café 🎉', '今天🙂'])
def test_a_letter_or_digit_is_something_to_say(text):
    assert [s.text for s in plan_segments(text)] == [text]
