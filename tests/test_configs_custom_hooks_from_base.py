"""The SiT-XL/2 config adds its SampleVisualizationHook to the custom_hooks its base
gives (mmengine's ``_base_.custom_hooks``) instead of restating the base's hooks, a
copy that drifted from the base's list once that changed; the config tools/train.py
dumps into the work dir (read again by --resume, tools/test.py, tools/infer.py) holds
the same list."""
import os.path as osp
import shutil

from mmengine.config import Config

SIT_XL = osp.join('configs', 'sit', 'sit_xl2_8xb32_400k_imagenet256.py')


def hook_types(cfg) -> list:
    return [hook['type'] for hook in cfg.custom_hooks]


def test_a_hook_added_to_the_base_reaches_the_sit_xl_config(repo_root, tmp_path):
    shutil.copytree(osp.join(repo_root, 'configs', '_base_'), tmp_path / 'configs' / '_base_')
    (tmp_path / 'configs' / 'sit').mkdir()
    shutil.copy(osp.join(repo_root, SIT_XL), tmp_path / SIT_XL)
    runtime = tmp_path / 'configs' / '_base_' / 'default_runtime.py'
    runtime.write_text(runtime.read_text() + "custom_hooks = custom_hooks + "
                       "[dict(type='EmptyCacheHook', after_iter=True)]\n")
    cfg = Config.fromfile(str(tmp_path / SIT_XL))
    assert hook_types(cfg) == ['EMAHook', 'RNGStateHook', 'EmptyCacheHook',
                               'SampleVisualizationHook']
    base = Config.fromfile(str(runtime))
    assert [dict(h) for h in cfg.custom_hooks[:-1]] == [dict(h) for h in base.custom_hooks]
    assert cfg.custom_hooks[-1]['interval'] == 10000


def test_the_dumped_sit_xl_config_reads_back_the_same(repo_root, tmp_path):
    cfg = Config.fromfile(osp.join(repo_root, SIT_XL))
    assert hook_types(cfg) == ['EMAHook', 'RNGStateHook', 'SampleVisualizationHook']
    cfg.dump(str(tmp_path / 'sit_xl2_8xb32_400k_imagenet256.py'))  # (as the Runner does)
    dumped = Config.fromfile(str(tmp_path / 'sit_xl2_8xb32_400k_imagenet256.py'))
    assert dumped.to_dict()['custom_hooks'] == cfg.to_dict()['custom_hooks']
    # (mmengine marks a base's variable with a scope where it has one: none here)
    assert all('_scope_' not in hook for hook in dumped.custom_hooks)
