"""README.md and docs/sit.md give the SiT-XL/2 config's sampling interval as
``--cfg-options custom_hooks.2.interval=N``: the index is the one tools/train.py names
for SiT's --sample-every (foreign_flags.hook_stand_ins), so a change of the base's
custom_hooks that moves the SampleVisualizationHook fails here instead of leaving the
docs pointing at another hook."""
import os.path as osp
import re

import pytest
from mmengine.config import Config

from mmsora.utils.foreign_flags import hook_stand_ins

SIT_XL = 'configs/sit/sit_xl2_8xb32_400k_imagenet256.py'


@pytest.mark.parametrize('doc', ['README.md', 'docs/sit.md'])
def test_the_docs_index_is_the_sample_hooks(repo_root, doc):
    template = hook_stand_ins(Config.fromfile(osp.join(repo_root, SIT_XL),
                                              import_custom_modules=False))['--sample-every'][0]
    index = re.match(r'--cfg-options custom_hooks\.(\d+)\.interval=\{\} ', template).group(1)
    text = open(osp.join(repo_root, doc), encoding='utf-8').read()
    found = list(re.finditer(r'custom_hooks\.(\d+)\.interval=N', text))
    assert found, f'{doc} no longer gives the interval key'
    for match in found:
        # (the paragraph, or list, the key is said in names the SiT-XL/2 config)
        start = text.rfind('\n\n', 0, match.start())
        end = text.find('\n\n', match.end())
        paragraph = text[start + 1:end if end >= 0 else len(text)]
        assert re.search(r'SiT-XL/2|sit_xl2_8xb32_400k_imagenet256', paragraph), paragraph
        assert match.group(1) == index, (
            f'{doc} says custom_hooks.{match.group(1)}.interval, and the config\'s '
            f'SampleVisualizationHook is custom_hooks[{index}]: change the doc')
