"""mmsora.utils.cli: the tools' argument types and the --cfg-options key check."""
import argparse
import importlib

import pytest
import torch

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import UserError, check_at_least, device_setting
from mmsora.utils.config_loading import load_config


def test_device_setting(monkeypatch):
    assert device_setting('cpu') == 'cpu'
    with pytest.raises(argparse.ArgumentTypeError,
                       match="expected cpu, cuda or cuda:N, got 'nope'"):
        device_setting('nope')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(argparse.ArgumentTypeError, match='cuda: no cuda device on this machine'):
        device_setting('cuda')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert device_setting('cuda') == 'cuda' and device_setting('cuda:1') == 'cuda:1'
    with pytest.raises(argparse.ArgumentTypeError, match='has 2 CUDA device'):
        device_setting('cuda:2')


@pytest.mark.parametrize('tool, argv', [
    ('infer', ['work_dirs/run']), ('test', ['work_dirs/run']), ('text2video', ['story.txt']),
    ('extract_features', ['--data-path', 'images', '--out', 'store', '--vae', 'vae'])])
def test_tools_refuse_a_bad_device_as_a_usage_error(tool, argv, capsys):
    module = importlib.import_module(f'tools.{tool}')
    with pytest.raises(SystemExit) as info:
        module.parse_args([*argv, '--device', 'nope'])
    assert info.value.code == 2
    assert "argument --device: expected cpu, cuda or cuda:N, got 'nope'" in (
        capsys.readouterr().err)


def test_a_misspelt_top_level_key_is_refused(repo_root):
    """mmengine takes any new top-level key: ``trian_cfg.max_iters=4`` trained the
    config's 1500 iterations. A key two edits from the config's is refused."""
    cfg = load_config(f'{repo_root}/configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
    with pytest.raises(UserError, match="--cfg-options trian_cfg.max_iters: the config has "
                                        "no trian_cfg; did you mean train_cfg"):
        apply_cfg_options(cfg, ['trian_cfg.max_iters=4'])
    with pytest.raises(UserError, match='did you mean randomness'):
        apply_cfg_options(cfg, ['randomnes.seed=1'])
    with pytest.raises(UserError, match='no log_levl; did you mean log_level'):
        apply_cfg_options(cfg, ['log_levl=DEBUG'])  # a top-level leaf
    # keys the tools read that most configs leave out: global_batch_sise=4 trained
    # with the config's batch without a word
    assert 'global_batch_size' not in cfg
    with pytest.raises(UserError, match='no global_batch_sise; did you mean global_batch_size'):
        apply_cfg_options(cfg, ['global_batch_sise=4'])
    # new keys that are not near one of the config's are set as before
    apply_cfg_options(cfg, ['val_dataloader.batch_size=2', 'global_batch_size=8'])
    assert cfg.val_dataloader.batch_size == 2 and cfg.global_batch_size == 8


def test_a_misspelt_key_inside_the_path_is_refused(repo_root):
    """``default_hooks.loss_gaurd.max_consecutive=2`` made a new hook config without a
    type, and the Runner failed with a 150-line KeyError; a new dict in the middle of
    the path two edits from a key there is refused, naming the key."""
    cfg = load_config(f'{repo_root}/configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
    with pytest.raises(UserError, match='the config has no default_hooks.loss_gaurd; did '
                                        'you mean default_hooks.loss_guard'):
        apply_cfg_options(cfg, ['default_hooks.loss_gaurd.max_consecutive=2'])
    with pytest.raises(UserError, match='no model.denoiser.hiden_size; did you mean '
                                        'model.denoiser.hidden_size'):
        apply_cfg_options(cfg, ['model.denoiser.hiden_size.x=3'])
    # a new leaf, or a new dict far from the keys there, is set as before
    apply_cfg_options(cfg, ['default_hooks.loss_guard.max_consecutive=2',
                            'model.denoiser.attn_backend=sdpa', 'env_cfg.extra.a=1'])
    assert cfg.default_hooks.loss_guard.max_consecutive == 2
    assert cfg.model.denoiser.attn_backend == 'sdpa' and cfg.env_cfg.extra.a == 1
    # a key set to None is not taken for a typo of itself: mmengine's own refusal
    from mmengine.config import Config
    cfg = Config(dict(model=dict(text_encoder=None, type='LatentDiffusion')))
    with pytest.raises(UserError, match='model.text_encoder.max_length=3: text_encoder='
                                        ".*cannot inherit from base"):
        apply_cfg_options(cfg, ['model.text_encoder.max_length=3'])


def test_a_spent_path_variable_is_refused(repo_root):
    """--cfg-options data_root=DIR changed nothing (mmengine substitutes the variable
    when the config is read) and the run then named the config's old path."""
    cfg = load_config(f'{repo_root}/configs/dit/dit_s2_8xb32_400k_imagenet256.py')
    with pytest.raises(UserError, match=r'data_root=/x: data_root is a variable the config '
                                        r'used when it was read \(train_dataloader.dataset.'
                                        r'data_root took its value\); .* e\.g\. '
                                        r'train_dataloader.dataset.data_root=/x$'):
        apply_cfg_options(cfg, ['data_root=/x'])
    apply_cfg_options(cfg, ['train_dataloader.dataset.data_root=/x', 'data_root=' +
                            cfg.data_root])  # the entry itself; the same value
    assert cfg.train_dataloader.dataset.data_root == '/x'


def test_a_shorter_run_says_what_its_schedule_keeps(repo_root, capsys):
    """The demo's length is a variable (max_iters) that its loop and its cosine
    schedule took: max_iters=60 changed nothing, and train_cfg.max_iters=60 left the
    schedule at 1500 steps (still warming up at the run's end), without a word."""
    demo = f'{repo_root}/configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'
    cfg = load_config(demo)
    with pytest.raises(UserError, match=r'max_iters=60: max_iters is a variable the config '
                                        r'used when it was read \(param_scheduler.1.end, '
                                        r'train_cfg.max_iters took its value\); .*e\.g\. '
                                        r'train_cfg.max_iters=60$'):
        apply_cfg_options(cfg, ['max_iters=60'])
    capsys.readouterr()
    apply_cfg_options(cfg, ['train_cfg.max_iters=1000'])
    assert capsys.readouterr().err == (
        'note: --cfg-options train_cfg.max_iters=1000: the schedule still ends at 1500, the '
        "config's length; for one that ends with the run set param_scheduler.1.end=1000 "
        'too\n')
    cfg = load_config(demo)  # set with it (or a run shorter than the warm-up): no note
    apply_cfg_options(cfg, ['train_cfg.max_iters=1000', 'param_scheduler.1.end=1000'])
    apply_cfg_options(load_config(demo), ['train_cfg.max_iters=60'])
    assert capsys.readouterr().err == ''


def test_list_entries_are_set_by_index(repo_root):
    """mmengine's ``custom_hooks.0.momentum=0.5`` (an index into a list) was refused
    as 'not a dict'; now it is set, and an index past the end is named."""
    cfg = load_config(f'{repo_root}/configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
    assert cfg.custom_hooks[0].type == 'EMAHook'
    apply_cfg_options(cfg, ['custom_hooks.0.momentum=0.5'])
    assert cfg.custom_hooks[0].momentum == 0.5 and cfg.custom_hooks[0].type == 'EMAHook'
    n = len(cfg.custom_hooks)
    with pytest.raises(UserError, match=f'custom_hooks has {n} entries, no \\[9\\]'):
        apply_cfg_options(cfg, ['custom_hooks.9.momentum=0.5'])
    with pytest.raises(UserError, match='train_cfg.max_iters is not a dict'):
        apply_cfg_options(cfg, ['train_cfg.max_iters.x=1'])


def test_unknown_key_of_a_base_class_suggests_its_subclasses_keys():
    """evaluation.metrics.0.split_sise=3 reached SampleMetric (FID passes its keys
    on), which is not registered: no suggestion was made."""
    import mmsora.evaluation  # noqa: F401  (registers FID and the others)
    from mmsora.utils.error_messages import unknown_key_message
    assert unknown_key_message('SampleMetric', 'split_sise') == (
        "unknown config key 'split_sise' for SampleMetric; did you mean split_size?")


def test_a_config_missing_a_required_argument_is_one_line():
    """A dataset dict without what its class needs (a _delete_=True NpyLatentDataset
    without features_dir / labels_dir) gave a traceback; one line now. The same
    TypeError from a class that is not registered is a bug of ours: traceback."""
    import mmsora.datasets  # noqa: F401  (registers the datasets)
    from mmsora.registry import DATASETS
    from mmsora.utils.error_messages import explain_error
    with pytest.raises(TypeError) as info:
        DATASETS.build(dict(type='NpyLatentDataset', data_root='x'))
    assert explain_error(info.value) == (
        "NpyLatentDataset needs 'features_dir' and 'labels_dir' in its config; they are "
        'missing')

    class Helper:
        def __init__(self, a):
            pass
    with pytest.raises(TypeError) as info:
        Helper()
    assert explain_error(info.value) is None


def test_a_pydantic_error_names_the_field():
    """DeepSpeed's config is pydantic: its errors end with a URL line, which was all
    the one-line error kept."""
    pydantic = pytest.importorskip('pydantic')
    from mmsora.utils.error_messages import explain_error

    class OffloadConfig(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra='forbid')
        device: str = 'cpu'
    with pytest.raises(ValueError) as info:
        OffloadConfig(device='cpu', pin_memroy=True)
    assert explain_error(info.value) == 'OffloadConfig: pin_memroy: Extra inputs are not ' \
        'permitted'


def test_config_key_checks_skip_mmengine_s_own_keys(repo_root):
    """_scope_ is mmengine's (build_from_cfg takes it out): a dataset or loop that
    gives it is not refused; a typo beside it is, with the Runner's own arguments
    (runner, dataloader) left out of the suggestion."""
    from mmsora.utils.config_keys import check_training_keys
    cfg = load_config(f'{repo_root}/configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
    cfg.train_dataloader.dataset['_scope_'] = 'mmsora'
    cfg.train_cfg['_scope_'] = 'mmsora'
    check_training_keys(cfg)
    cfg.train_cfg['val_intervall'] = 2
    with pytest.raises(UserError) as info:
        check_training_keys(cfg)
    assert str(info.value).startswith("train_cfg: unknown config key 'val_intervall' for "
                                      'IterBasedTrainLoop; did you mean val_interval')
    del cfg.train_cfg['val_intervall']
    cfg.train_cfg['loader'] = 1  # no close name: the list, without runner / dataloader
    with pytest.raises(UserError, match=r'; it takes max_iters, val_begin, val_interval, '
                                        r'dynamic_intervals$'):
        check_training_keys(cfg)


def test_unknown_flags_name_the_option_meant(capsys):
    """DiT's and SiT's sample.py flags (--ckpt, --num-sampling-steps), underscores for
    dashes and near misses ended in argparse's bare 'unrecognized arguments'."""
    from mmsora.utils.cli import ArgumentParser
    parser = ArgumentParser(prog='infer.py')
    for flag in ('--checkpoint', '--steps', '--cfg-scale', '--num-samples'):
        parser.add_argument(flag)
    with pytest.raises(SystemExit):
        parser.parse_args(['--ckpt', 'a.pt', '--num-sampling-steps', '10', '--cfg_scale',
                           '2', '--num-smaples', '4', '--unrelated', '1'])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        'infer.py: error: unrecognized arguments: --ckpt a.pt --num-sampling-steps 10 '
        '--cfg_scale 2 --num-smaples 4 --unrelated 1 (did you mean --checkpoint for --ckpt; '
        '--steps for --num-sampling-steps; --cfg-scale for --cfg_scale; --num-samples for '
        '--num-smaples?); see infer.py --help')
    with pytest.raises(SystemExit):  # nothing close: argparse's line as it was
        parser.parse_args(['--zzz', '1'])
    assert capsys.readouterr().err.strip().endswith(
        'unrecognized arguments: --zzz 1; see infer.py --help')


@pytest.mark.parametrize('argv, said', [
    (['run', '--cfg_scale', '2'], 'unrecognized arguments: --cfg_scale 2 (did you mean '
                                  '--cfg-scale for --cfg_scale?)'),
    (['run', '--steps', 'ten'], "argument --steps: invalid int value: 'ten'"),
    ([], 'the following arguments are required: run')])
def test_a_parser_error_is_one_line_without_the_usage_block(argv, said, capsys,
                                                           monkeypatch):
    """Every unknown flag printed argparse's usage block (17 lines on tools/infer.py)
    before its error line; the error is one line, pointing at --help, exit status 2."""
    from tools.infer import parse_args
    monkeypatch.setattr('sys.argv', ['tools/infer.py'])  # (argparse's prog: infer.py)
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    # (the script as it was run: 'infer.py --help' is no command from the repository)
    assert capsys.readouterr().err == (f'infer.py: error: {said}; see python tools/infer.py '
                                       '--help\n')
    # a parser without --help points at none
    from mmsora.utils.cli import ArgumentParser
    bare = ArgumentParser(prog='bare', add_help=False)
    with pytest.raises(SystemExit) as info:
        bare.parse_args(['x'])
    assert info.value.code == 2
    assert capsys.readouterr().err == 'bare: error: unrecognized arguments: x\n'


@pytest.mark.parametrize('run, prog, command', [
    ('tools/infer.py', None, 'python tools/infer.py'),  # (argparse's prog: infer.py)
    ('/work/mmsora/tools/train.py', None, 'python /work/mmsora/tools/train.py'),  # (-m)
    ('/usr/bin/mmsora-infer', None, '/usr/bin/mmsora-infer'),  # (an installed command)
    ('tools/infer.py', 'sample', 'sample'),  # (a prog given: its own)
])
def test_the_help_pointer_names_the_script_as_it_was_run(run, prog, command, capsys,
                                                         monkeypatch):
    """'see infer.py --help' named the file alone (argparse's prog), no command from the
    repository's root: the one that works is 'python tools/infer.py --help'."""
    from mmsora.utils.cli import ArgumentParser
    monkeypatch.setattr('sys.argv', [run])
    parser = ArgumentParser(prog=prog)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(['--zzz'])
    assert info.value.code == 2
    assert capsys.readouterr().err == (f'{prog or run.rsplit("/", 1)[-1]}: error: '
                                       f'unrecognized arguments: --zzz; see {command} --help\n')
    # a subcommand's parser keeps its prog (the script's name and the subcommand)
    sub = parser.add_subparsers(dest='what').add_parser('go')
    with pytest.raises(SystemExit):
        sub.parse_args(['--zzz'])
    assert capsys.readouterr().err.endswith(f'; see {sub.prog} --help\n')


def test_reference_flags_without_one_flag_here_say_what_to_give(capsys):
    """SiT's / fast-DiT's train.py --ckpt, --epochs, --global-batch-size ended in
    argparse's bare line on tools/train.py; infer.py --ema was 'did you mean --eta'."""
    from mmsora.utils.cli import ArgumentParser
    train = ArgumentParser(prog='train.py')
    for flag in ('--resume', '--load-from', '--cfg-options'):
        train.add_argument(flag)
    with pytest.raises(SystemExit):
        train.parse_args(['--ckpt', 'a.pt', '--epochs', '3', '--global-batch-size', '8'])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        '(did you mean --resume CKPT (continue) or --load-from CKPT (new run) for --ckpt; '
        '--cfg-options train_cfg.max_iters=N (iterations: epochs x dataset size / global '
        'batch) for --epochs; --cfg-options '
        'global_batch_size=N for --global-batch-size?); see train.py --help')
    infer = ArgumentParser(prog='infer.py')
    for flag in ('--eta', '--no-ema'):
        infer.add_argument(flag)
    with pytest.raises(SystemExit):
        infer.parse_args(['--ema'])
    assert capsys.readouterr().err.strip().endswith(
        '(did you mean --no-ema (EMA weights are the default) for --ema?); see infer.py '
        '--help')


def test_inf_and_nan_and_custom_imports_in_cfg_options(repo_root, tmp_path, monkeypatch):
    """max_norm=inf trained, and the dumped config (max_norm=inf) could not be loaded
    again by infer or --resume (NameError); a quoted 'nan' became the float. A
    custom_imports given with --cfg-options was dumped with the run but never
    imported: a typo or a failing module passed without a word."""
    cfg = load_config(f'{repo_root}/configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
    for value in ('inf', '-inf', 'nan', '[1,inf]'):
        with pytest.raises(UserError, match=r'^--cfg-options optim_wrapper.clip_grad.max_norm='
                                            r'.*: a config cannot hold inf or nan'):
            apply_cfg_options(cfg, [f'optim_wrapper.clip_grad.max_norm={value}'])
    apply_cfg_options(cfg, ['train_dataloader.dataset.mode="nan"'])
    assert cfg.train_dataloader.dataset.mode == 'nan'
    (tmp_path / 'failing_module_31.py').write_text('raise RuntimeError("boom")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r'^custom_imports: .*failing_module_31.*boom'):
        apply_cfg_options(cfg, ['custom_imports.imports=[failing_module_31]'])
    with pytest.raises(UserError, match=r'^custom_imports: .*no_such_module_31'):
        apply_cfg_options(cfg, ['custom_imports.imports=[no_such_module_31]'])


def test_a_class_of_ones_own_named_like_mmsoras_is_named(repo_root, tmp_path, monkeypatch):
    """A copied DiT registered as 'DiT' by custom_imports: mmsora's own import then
    failed deep inside with 'DiT is already registered' (a traceback)."""
    (tmp_path / 'own_dit_31.py').write_text(
        'import torch\nfrom mmsora.registry import MODELS\n\n\n'
        '@MODELS.register_module()\nclass DiT(torch.nn.Module):\n    pass\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / 'own.py'
    config.write_text(f"_base_ = [{repo_root + '/configs/dit/dit_tiny2_1xb32_1500_shapes16.py'!r}]"
                      "\ncustom_imports = dict(imports=['own_dit_31'])\n")
    with pytest.raises(UserError, match=r"^custom_imports: importing own_dit_31 failed: "
                                        r"KeyError: .*DiT is already registered.*; give your "
                                        r"class another name, or register it under one"):
        load_config(str(config))


def test_a_value_error_of_ones_own_code_says_where(tmp_path, monkeypatch):
    """A ValueError of one's own dataset (or of numpy, called from it) was a bare line
    naming neither the file nor the class; mmsora's own errors keep their one line."""
    from mmsora.utils.error_messages import explain_error
    (tmp_path / 'own_data_31.py').write_text(
        'import numpy as np\n\n\ndef load(path):\n    return np.load(path)\n')
    (tmp_path / 'bad.npy').write_bytes(b'not an npy file at all')
    monkeypatch.syspath_prepend(str(tmp_path))
    import own_data_31
    with pytest.raises(ValueError) as info:
        own_data_31.load(str(tmp_path / 'bad.npy'))
    message = explain_error(info.value)
    assert message.endswith(f'(raised in {tmp_path / "own_data_31.py"}:5; MMSORA_DEBUG=1 '
                            'shows the traceback)'), message
    from mmsora.datasets.manifest import load_manifest
    (tmp_path / 'm.csv').write_text('path\n')
    with pytest.raises(ValueError) as info:
        load_manifest(str(tmp_path / 'm.csv'))
    assert 'raised in' not in explain_error(info.value)


def test_check_at_least_names_the_option_as_spelt():
    args = argparse.Namespace(batch_size=0, steps=None, warmup=0)
    check_at_least(args, ('steps',))  # unset passes
    check_at_least(args, dict(warmup=0))
    with pytest.raises(UserError, match=r'^--batch-size must be >= 1, got 0$'):
        check_at_least(args, ('steps', 'batch_size'))
    with pytest.raises(UserError, match=r'^--warmup must be >= 2, got 0$'):
        check_at_least(args, dict(steps=1, warmup=2))


def test_unknown_key_of_a_class_on_an_inherited_init_names_the_configured_class():
    """A class of one's own without an __init__ of its own: Python's TypeError names
    the base class (``_Base.__init__() got an unexpected keyword argument``), and so
    did the message; it names the class the config's ``type`` built."""
    from mmengine.registry import Registry

    from mmsora.utils.error_messages import explain_error

    class _TinyBase(torch.nn.Module):
        def __init__(self, width=4, depth=2):
            super().__init__()

    registry = Registry('walk-through m models', scope='mmsora_test_inherited_init')

    @registry.register_module()
    class TinyMixer(_TinyBase):
        pass

    with pytest.raises(TypeError) as info:
        registry.build(dict(type='TinyMixer', widht=3))
    assert '_TinyBase.__init__()' in str(info.value)
    assert explain_error(info.value) == (
        "unknown config key 'widht' for TinyMixer; did you mean width?")
    # A class with an __init__ of its own: named as before.
    with pytest.raises(TypeError) as info:
        registry.build(dict(type=_TinyBase, widht=3))
    assert explain_error(info.value).startswith("unknown config key 'widht' for _TinyBase")


def test_a_new_top_level_key_that_a_section_holds_is_refused(repo_root):
    """--cfg-options max_iters=50 on a config without a max_iters variable was set at
    the top and never read: the image demo trained its 1500 steps without a word
    (walk-through n)."""
    import os.path as osp
    cfg = load_config(osp.join(repo_root, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'))
    with pytest.raises(UserError, match=r'^--cfg-options max_iters: the config has no '
                                        r'top-level max_iters \(it would be set and never '
                                        r'read\); did you mean train_cfg.max_iters\?$'):
        apply_cfg_options(cfg, ['max_iters=50'])
    # top-level keys the Runner or the tools read, and new keys no section holds, pass
    apply_cfg_options(cfg, ['load_from=x.pth', 'my_variable=3'])
    assert cfg.load_from == 'x.pth' and cfg.my_variable == 3
