"""SampleVisualizationHook's prompts follow the one prompts rule (prompt_list): one
str was cut into its characters (prompts='a red bike' sampled 'a', ' ', 'r', ...) and
a set was taken (its order, and so sample i's caption, changes between processes)."""
import pytest

from mmsora.engine.hooks import SampleVisualizationHook


def test_one_string_is_one_prompt():
    hook = SampleVisualizationHook(interval=1, prompts='a red bike', num_samples=2)
    assert hook.prompts == ['a red bike']

    class TextModel:
        text_conditioned = True
    assert hook._conditions(TextModel()) == (None, ['a red bike', 'a red bike'])
    assert SampleVisualizationHook(interval=1, prompts=('a', 'b')).prompts == ['a', 'b']
    assert SampleVisualizationHook(interval=1).prompts is None


@pytest.mark.parametrize('prompts, said', [
    ({'a red bike', 'a cat'}, 'prompts is a set, whose order changes'),
    (frozenset({'a cat'}), 'prompts is a frozenset, whose order changes'),
    ([], 'prompts is empty'),
    (['a cat', 3], 'prompts[1] is 3, not a caption'),
    (3, 'prompts must be a list of captions'),
])
def test_other_prompts_are_refused_at_construction(prompts, said):
    with pytest.raises(ValueError) as info:
        SampleVisualizationHook(interval=1, prompts=prompts)
    message = str(info.value)
    assert message.startswith(f'SampleVisualizationHook: {said}'), message
    assert '\n' not in message
