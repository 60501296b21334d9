"""SkipCorruptDataset's max_skipped as a config file may write it, '1' (the config
check leaves a str that reads as a number to the class): it is compared as a number
(it was kept as the str, and the first skip raised '>' not supported between int and
str)."""
import pytest

from mmsora.datasets.skip_corrupt import SkipCorruptDataset


class TwoBad:
    """Items 0 and 1 cannot be read; item 2 can."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        if i < 2:
            raise OSError(f'cannot read item {i}')
        return i


def test_a_max_skipped_given_as_text_counts_as_a_number():
    dataset = SkipCorruptDataset(TwoBad(), max_skipped='1')
    assert dataset.max_skipped == 1
    with pytest.raises(ValueError, match=r'^more than max_skipped=1 unreadable items'):
        dataset[0]
    assert SkipCorruptDataset(TwoBad(), max_skipped='2')[0] == 2
