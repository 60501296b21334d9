"""mmsora.utils.cli: reading a config (its custom_imports, its _base_ files, a folder
given for it) and the values and keys of --cfg-options, as a user meets them."""
import os
import subprocess
import sys

import pytest
from mmengine.config import Config

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import UserError
from mmsora.utils.config_loading import load_config

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root as the working directory, not on sys.path (tools/train.py puts
    tools/ there, not it), with a package ``PKG`` of modules written by ``add``;
    sys.path is restored and the package forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'path', [p for p in sys.path
                                      if os.path.abspath(p or '.') != str(tmp_path)])
    package = f'mymods_{tmp_path.name}'.replace('-', '_')
    (tmp_path / package).mkdir()
    (tmp_path / package / '__init__.py').write_text('')

    def add(module, code, allow_failed=False):
        (tmp_path / package / f'{module}.py').write_text(code)
        config = tmp_path / f'{module}_cfg.py'
        config.write_text(f"custom_imports = dict(imports=['{package}.{module}'], "
                          f'allow_failed_imports={allow_failed})\nmodel = dict(type="X")\n')
        return str(config), f'{package}.{module}'
    yield add
    for name in [name for name in sys.modules if name.split('.')[0] == package]:
        del sys.modules[name]


def test_custom_imports_are_found_from_the_working_directory(project):
    """mmengine imported them from sys.path only: run from the project root holding
    the package, tools/train.py failed with 8 lines telling to set PYTHONPATH."""
    config, module = project('scaled', 'LOADED = True\n')
    cfg = load_config(config)
    assert sys.modules[module].LOADED and cfg.model.type == 'X'
    assert os.getcwd() in sys.path


def test_a_custom_import_not_found_is_one_line(project):
    config, module = project('scaled', '')
    os.remove(f'{module.replace(".", "/")}.py')
    with pytest.raises(UserError, match=rf'^custom_imports: no module named {module} '
                                        rf'\(looked for from {os.getcwd()} and PYTHONPATH; '
                                        r'give its dotted path from a folder on '
                                        r'PYTHONPATH\)$'):
        load_config(config)


def test_a_custom_import_that_fails_inside_names_the_real_error(project):
    """A module found but failing while imported gave the same 'set PYTHONPATH' text;
    its own error showed with MMSORA_DEBUG=1 only."""
    config, module = project('broken', 'import numpy_not_here\n')
    path = f'{module.replace(".", "/")}.py'
    with pytest.raises(UserError, match=rf"^custom_imports: importing {module} failed: "
                                        r"ModuleNotFoundError: No module named "
                                        rf"'numpy_not_here' \({path}, line 1\)$"):
        load_config(config)
    config, module = project('typo', 'x = 1\ndef f(:\n')
    with pytest.raises(UserError, match=rf'importing {module} failed: SyntaxError: .*'
                                        r'line 2\)$'):
        load_config(config)


def test_allowed_failed_custom_imports_warn_and_go_on(project):
    config, module = project('broken', 'import numpy_not_here\n', allow_failed=True)
    with pytest.warns(UserWarning, match=f'{module} failed to import and is ignored'):
        cfg = load_config(config)
    assert cfg.model.type == 'X'


def test_train_imports_custom_modules_from_where_it_is_run(repo_root, tmp_path):
    """tools/train.py, run from a project root (not the repository): the module of
    custom_imports is imported (it says so), and the run then stops at a mistake."""
    (tmp_path / 'myproj').mkdir()
    (tmp_path / 'myproj' / '__init__.py').write_text('')
    (tmp_path / 'myproj' / 'ext.py').write_text(
        "import sys\nprint('myproj.ext imported', file=sys.stderr)\n")
    (tmp_path / 'cfg.py').write_text(
        f"_base_ = [{os.path.join(repo_root, DEMO)!r}]\n"
        "custom_imports = dict(imports=['myproj.ext'], allow_failed_imports=False)\n")
    result = subprocess.run(
        [sys.executable, os.path.join(repo_root, 'tools/train.py'), 'cfg.py',
         '--work-dir', str(tmp_path / 'w'), '--cfg-options', 'model.denoiser.type=DiTT'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'myproj.ext imported' in result.stderr
    assert "error: model.denoiser: unknown type 'DiTT'" in result.stderr, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr


def test_an_error_in_a_base_file_names_the_base(tmp_path):
    """A SyntaxError in a _base_ file was given against the child, with the base's
    line number and '<unknown>' for its file; a base with another suffix got mmengine's
    'Only py/yml/yaml/json type are supported', naming no file."""
    (tmp_path / 'base.py').write_text("x = 1\nmodel = dict(type='X'\n")
    (tmp_path / 'child.py').write_text("_base_ = ['base.py']\n")
    with pytest.raises(UserError, match=rf'^cannot load config {tmp_path}/child.py: its base '
                                        rf".*base.py: SyntaxError: '\(' was never closed "
                                        r'\(line 2\)$'):
        load_config(str(tmp_path / 'child.py'))
    (tmp_path / 'base.txt').write_text('x = 1\n')
    (tmp_path / 'child.py').write_text("_base_ = ['base.txt']\n")
    with pytest.raises(UserError, match=r'child.py: its base .*base.txt: not a .py, .yml, '
                                        r'.yaml or .json file$'):
        load_config(str(tmp_path / 'child.py'))
    # an error of the file given is still its own
    with pytest.raises(UserError, match=rf"^cannot load config {tmp_path}/base.py: "
                                        r"SyntaxError: '\(' was never closed \(line 2\)$"):
        load_config(str(tmp_path / 'base.py'))


def test_a_child_variable_that_its_base_spent_is_noted(tmp_path, capsys):
    """OpenMMLab's trap: a child's data_root = '/mine' over a base whose dataset
    entry was built from the base's own data_root left the entry at the base's path,
    without a word (the run read the base's data, or failed after the Runner's
    start-up on a path the child never names)."""
    (tmp_path / 'base.py').write_text(
        "data_root = '/base/latents'\nmax_iters = 100\n"
        "train_dataloader = dict(dataset=dict(data_root=data_root, "
        "ann_file=data_root + '/index.json'))\n"
        "train_cfg = dict(max_iters=max_iters)\n"
        "param_scheduler = [dict(type='LinearLR', end=max_iters)]\n")
    (tmp_path / 'child.py').write_text("_base_ = ['base.py']\ndata_root = '/mine'\n"
                                       "max_iters = 20\ntrain_cfg = dict(max_iters=20)\n")
    load_config(str(tmp_path / 'child.py'))
    err = capsys.readouterr().err
    assert (f"note: {tmp_path}/child.py sets data_root='/mine', but "
            'train_dataloader.dataset.data_root, train_dataloader.dataset.ann_file still '
            f"hold the value of data_root in {tmp_path}/base.py ('/base/latents')") in err
    # the child set train_cfg.max_iters itself: only the schedule is left behind
    assert ("sets max_iters=20, but param_scheduler.0.end still holds the value of "
            'max_iters') in err
    assert err.count('param_scheduler.0.end') == 1  # (not noted again for train_cfg)
    # a child that sets the entries too, or the same value, gets no note
    (tmp_path / 'child.py').write_text(
        "_base_ = ['base.py']\ndata_root = '/mine'\nmax_iters = 100\n"
        "train_dataloader = dict(dataset=dict(data_root=data_root, "
        "ann_file=data_root + '/index.json'))\n")
    load_config(str(tmp_path / 'child.py'))
    assert 'note:' not in capsys.readouterr().err


def test_an_entry_of_another_type_than_its_base_names_what_it_kept(tmp_path, capsys):
    """mmengine merges a child's entry into its base's: a dataset turned into another
    class kept the base's keys and failed with an unknown key naming no base (no
    _delete_ hint). Only keys the new class does not take are named."""
    (tmp_path / 'base.py').write_text(
        "train_dataloader = dict(dataset=dict(type='PackedLatentDataset', data_root='d', "
        "sample_posterior=False, random_flip=False))\n"
        "optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.95)))\n")
    (tmp_path / 'child.py').write_text(
        "_base_ = ['base.py']\n"
        "train_dataloader = dict(dataset=dict(type='NpyLatentDataset', features_dir='f', "
        "labels_dir='l'))\n"
        "optim_wrapper = dict(optimizer=dict(type='SGD', lr=1e-4))\n")
    load_config(str(tmp_path / 'child.py'))
    err = capsys.readouterr().err
    assert (f'note: {tmp_path}/child.py changes train_dataloader.dataset from '
            f'PackedLatentDataset (in {tmp_path}/base.py) to NpyLatentDataset and keeps the '
            "base entry's "
            'sample_posterior, random_flip, which NpyLatentDataset does not take: mmengine '
            "merges an entry into the base's; to start it afresh, give it _delete_=True"
            ) in err
    # lr is SGD's too: only betas is named
    assert "changes optim_wrapper.optimizer from AdamW (in" in err
    assert "keeps the base entry's betas, which SGD does not take" in err
    (tmp_path / 'child.py').write_text(
        "_base_ = ['base.py']\n"
        "train_dataloader = dict(dataset=dict(_delete_=True, type='NpyLatentDataset', "
        "features_dir='f', labels_dir='l', data_root='d'))\n"
        "optim_wrapper = dict(optimizer=dict(_delete_=True, type='SGD', lr=1e-4))\n")
    load_config(str(tmp_path / 'child.py'))
    assert 'note:' not in capsys.readouterr().err


def test_notes_of_base_entries_stay_quiet_where_nothing_is_kept(project, tmp_path, capsys):
    """Review of the notes: a list replaced whole (mmengine merges dicts only), keys the
    Runner reads beside a class (an optimizer wrapper's paramwise_cfg), an interval that
    happens to equal a base's max_iters are not 'kept'; a dataset class of one's own
    (custom_imports, imported before the notes) is; a config loaded twice notes once."""
    config, module = project('myds', (
        'from mmsora.registry import DATASETS\n'
        f'@DATASETS.register_module(name="Ds_{tmp_path.name}")\n'
        'class MyDataset:\n'
        '    def __init__(self, data_root, split="train"):\n'
        '        pass\n'))
    (tmp_path / 'base.py').write_text(
        "max_iters = 100\ntrain_cfg = dict(max_iters=max_iters)\n"
        "default_hooks = dict(logger=dict(type='LoggerHook', interval=100))\n"
        "custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]\n"
        "optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4), "
        "paramwise_cfg=dict(norm_decay_mult=0.0))\n"
        "train_dataloader = dict(dataset=dict(type='PackedLatentDataset', data_root='d', "
        "sample_posterior=False))\n")
    (tmp_path / 'child.py').write_text(
        "_base_ = ['base.py']\n"
        f"custom_imports = dict(imports=['{module}'], allow_failed_imports=False)\n"
        "max_iters = 200\ntrain_cfg = dict(max_iters=max_iters)\n"
        "custom_hooks = [dict(type='RNGStateHook', priority='ABOVE_NORMAL')]\n"
        "optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16')\n"
        f"train_dataloader = dict(dataset=dict(type='Ds_{tmp_path.name}'))\n")
    load_config(str(tmp_path / 'child.py'))
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]
    assert len(notes) == 1, notes
    assert (f'changes train_dataloader.dataset from PackedLatentDataset (in base.py) to '
            f"Ds_{tmp_path.name} and keeps the base entry's sample_posterior") in notes[0]
    load_config(str(tmp_path / 'child.py'))  # (tools/infer.py loads it twice)
    assert 'note:' not in capsys.readouterr().err


def test_a_folder_given_for_the_config_is_named(tmp_path):
    """A work dir given to tools/train.py was 'config file not found: WORK_DIR'."""
    with pytest.raises(UserError, match=rf'^{tmp_path} is a folder, not a config file: '
                                        r'give the config file$'):
        load_config(str(tmp_path))
    (tmp_path / 'dit_tiny.py').write_text('x = 1\n')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    (tmp_path / 'iter_4.pth').write_bytes(b'')
    with pytest.raises(UserError, match=rf"give the config file \(this work dir's is "
                                        rf'{tmp_path}/dit_tiny.py\)$'):
        load_config(str(tmp_path))


def test_a_config_path_not_found_gets_close_names(tmp_path, monkeypatch):
    """A config path not found was named alone: a file of configs/dit/ given under
    configs/, or a typo in its name, gets the config meant."""
    (tmp_path / 'configs' / 'dit').mkdir(parents=True)
    (tmp_path / 'configs' / 'dit' / 'dit_s2_8xb32_400k_imagenet256.py').write_text('x = 1\n')
    (tmp_path / 'configs' / 'dit_xl2_video.py').write_text('x = 1\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r'^config file not found: configs/dit_s2_8xb32_400k_'
                                        r'imagenet256\.py; did you mean configs/dit/dit_s2_'
                                        r'8xb32_400k_imagenet256\.py\?$'):
        load_config('configs/dit_s2_8xb32_400k_imagenet256.py')
    with pytest.raises(UserError, match=r'; did you mean configs/dit_xl2_video\.py\?$'):
        load_config('configs/dit_xl2_vidoe.py')
    with pytest.raises(UserError, match=r'^config file not found: nothing_like_it\.py$'):
        load_config('nothing_like_it.py')
    # a config to run, not a fragment under _base_ (unless a _base_ path was given)
    (tmp_path / 'configs' / '_base_' / 'models').mkdir(parents=True)
    (tmp_path / 'configs' / '_base_' / 'models' / 'video_dit_xl2.py').write_text('x = 1\n')
    (tmp_path / 'configs' / 'video_dit').mkdir()
    (tmp_path / 'configs' / 'video_dit' / 'video_dit_xl2_8xb5_24gb.py').write_text('x = 1\n')
    with pytest.raises(UserError, match=r'; did you mean configs/video_dit/video_dit_xl2_8xb5_'
                                        r'24gb\.py\?$'):
        load_config('configs/video_dit/video_dit_xl2_24gb.py')
    with pytest.raises(UserError, match=r'; did you mean configs/_base_/models/video_dit_xl2'
                                        r'\.py\?$'):
        load_config('configs/_base_/models/video_dit_xl2.pu')


def _set(option, **config):
    cfg = Config(config or dict(train_dataloader=dict(dataset=dict(data_root='/old')),
                                model=dict(latent_shape=(3, 8, 8))))
    apply_cfg_options(cfg, [option])
    return cfg


def test_quoted_and_spaced_strings_are_kept():
    """mmengine's parsing deleted every space (``/a/feat copy`` became ``/a/featcopy``)
    and split at commas, quoted or not: a path with either could not be given."""
    key = 'train_dataloader.dataset.data_root'
    for value, expected in [('/a/feat copy', '/a/feat copy'), ('"/a/feat,copy"', '/a/feat,copy'),
                            ("'/a b,c'", '/a b,c'), ('" x "', ' x ')]:
        assert _set(f'{key}={value}').train_dataloader.dataset.data_root == expected, value
    assert _set('x=["a,b", c d]').x == ['a,b', 'c d']
    # an apostrophe inside an entry is no quote (a prompt list: the first version of
    # this parser refused it)
    assert _set("x=[a dog's ball,a cat's toy]").x == ["a dog's ball", "a cat's toy"]
    assert _set("x=O'Brien,D'Arcy").x == ["O'Brien", "D'Arcy"]
    # a quoted number, True / False / None or bracketed list keeps mmengine's reading
    # (its help writes key="[a,b]"; launchers pass the quotes on)
    for value, expected in [('"[1,2]"', [1, 2]), ('"1000"', 1000), ('"1e-4"', 1e-4),
                            ('"None"', None), ('"(1,2)"', (1, 2))]:
        assert _set(f'x={value}').x == expected, value


@pytest.mark.parametrize('value, expected', [
    ('[3,8,8]', [3, 8, 8]), ('3,8,8', [3, 8, 8]), ('[3, 8, 8]', [3, 8, 8]),
    ('(1,2)', (1, 2)), ('[(1,2),[a,b],c]', [(1, 2), ['a', 'b'], 'c']), ('[]', []),
    ('None', None), ('True', True), ('false', False), ('2', 2), ('1e-4', 1e-4),
    ('/a/feat,copy', ['/a/feat', 'copy']), ('sdpa', 'sdpa'), ('1,2,', [1, 2])])
def test_values_parse_as_before(value, expected):
    got = _set(f'x={value}').x
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize('value', ['[3,8', 'dict(type=EMAHook,momentum=1)', 'dict(a=1)'])
def test_values_that_are_not_values_are_refused(value):
    with pytest.raises(UserError, match='cannot parse the value of --cfg-options x'):
        _set(f'x={value}')


def test_a_name_where_a_list_index_belongs_is_named(repo_root):
    """``param_scheduler.first.end=2`` said 'the config has no param_scheduler.first;
    did you mean param_scheduler.first?'; ``param_scheduler.-1.end`` was malformed."""
    cfg = load_config(os.path.join(repo_root, DEMO))
    with pytest.raises(UserError, match=r'^--cfg-options param_scheduler.first.end: '
                                        r'param_scheduler is a list: give an index, e\.g\. '
                                        r'param_scheduler.0.end$'):
        apply_cfg_options(cfg, ['param_scheduler.first.end=2'])
    apply_cfg_options(cfg, ['param_scheduler.-1.end=2', 'param_scheduler.-2.begin=1'])
    assert cfg.param_scheduler[-1].end == 2 and cfg.param_scheduler[0].begin == 1
    with pytest.raises(UserError, match=r'param_scheduler has 2 entries, no \[-3\]'):
        apply_cfg_options(cfg, ['param_scheduler.-3.end=2'])
    with pytest.raises(UserError, match='-1 is an index, but train_cfg is not a list'):
        apply_cfg_options(cfg, ['train_cfg.-1=2'])


def test_an_index_into_a_tuple_of_values_says_give_it_whole(repo_root):
    """``model.latent_shape.0=4`` gave mmengine's 'cannot inherit from base ... You may
    set `_delete_=True`'; ``custom_hooks.0=5`` "'int' object has no attribute 'items'"."""
    cfg = Config(dict(model=dict(latent_shape=(3, 8, 8)), custom_hooks=[dict(type='H')]))
    with pytest.raises(UserError, match=r'^--cfg-options model.latent_shape.0: '
                                        r'model.latent_shape is a tuple \(3, 8, 8\): give it '
                                        r'whole, e\.g\. model.latent_shape=\[4,8,8\]$'):
        apply_cfg_options(cfg, ['model.latent_shape.0=4'])
    with pytest.raises(UserError, match=r'custom_hooks.0 is a dict: set its keys'):
        apply_cfg_options(cfg, ['custom_hooks.0=5'])
    apply_cfg_options(cfg, ['model.latent_shape=[4,8,8]', 'custom_hooks.0.priority=1'])
    assert cfg.model.latent_shape == [4, 8, 8] and cfg.custom_hooks[0].priority == 1


def test_a_string_for_a_number_is_left_to_its_class(repo_root):
    """``train_cfg.max_iters=ten`` is set as the string 'ten': a key may take a number
    or a word (``grad_checkpointing``: K or 'selective'), so the class built from it
    (mmengine's IterBasedTrainLoop: ``int(max_iters)``) is the one to refuse it."""
    cfg = load_config(os.path.join(repo_root, DEMO))
    apply_cfg_options(cfg, ['train_cfg.max_iters=ten'])
    assert cfg.train_cfg.max_iters == 'ten'



def test_an_unknown_type_says_where_it_is_registered_or_how_to_register_it():
    """Without a close name the line said nothing more: a class registered in another
    registry (a dataset in MODELS) or one whose module was never imported."""
    from mmsora.utils.error_messages import unknown_type_message
    import mmsora.datasets  # noqa: F401  (fills the registries: with the models, a
    import mmsora.models  # noqa: F401  close name, VideoDiT, is there too)
    assert unknown_type_message('VideoDataset', 'model') == (
        "unknown type 'VideoDataset' in the model registry; it is registered in the "
        'dataset registry')
    assert unknown_type_message('ScaledDiT', 'model').endswith(
        "a class of your own is registered when its module is imported: list the module "
        "in the config's custom_imports (README, \"Your own modules\")")


def test_a_child_run_length_over_a_base_schedule_is_noted(tmp_path, capsys):
    """A child's own train_cfg.max_iters (in its file, not --cfg-options) left the
    base's learning-rate schedule ending at the base's length without a word (walk-
    through m); --cfg-options had the note already."""
    (tmp_path / 'base.py').write_text(
        "train_cfg = dict(by_epoch=False, max_iters=1500)\n"
        "param_scheduler = [dict(type='LinearLR', start_factor=0.1, end=1500), "
        "dict(type='CosineAnnealingLR', begin=1500, T_max=3000)]\n")
    (tmp_path / 'child.py').write_text("_base_ = ['base.py']\n"
                                       "train_cfg = dict(max_iters=200)\n")
    load_config(str(tmp_path / 'child.py'))
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]
    assert notes == [f'note: {tmp_path}/child.py sets train_cfg.max_iters=200, but the '
                     f'schedule of {tmp_path}/base.py still ends at 1500, its length; for one '
                     'that ends with the run set param_scheduler.0.end=200 in your config too '
                     '(or a param_scheduler of your own)']
    # A schedule of the child's own, or the base's length: no note. (Other file names:
    # a note is said once a process.)
    for i, child in enumerate(("train_cfg = dict(max_iters=200)\n"
                               "param_scheduler = [dict(type='LinearLR', end=1500)]\n",
                               "train_cfg = dict(max_iters=1500)\n")):
        (tmp_path / f'own{i}.py').write_text("_base_ = ['base.py']\n" + child)
        load_config(str(tmp_path / f'own{i}.py'))
        assert 'note:' not in capsys.readouterr().err
