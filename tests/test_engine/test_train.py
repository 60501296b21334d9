"""Training through mmengine's Runner: loss falls, exact resume, --load-from,
--amp on CPU, and the tools/train.py command line."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

import mmsora.datasets  # noqa: F401
import mmsora.diffusion  # noqa: F401
import mmsora.engine  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.utils.cli import UserError
from tests.runner_probes import StateAtTrainStart
from tests.tiny_models import DEMO, tiny_cfg
from tests.tiny_models import TINY_TRAIN as TINY
from tools.train import build_train_config, parse_args


def losses_of(runner):
    return list(runner.message_hub.get_scalar('train/loss').data[0])


def test_loss_falls(repo_root, tmp_path):
    cfg = tiny_cfg(repo_root, tmp_path, 60, 'optim_wrapper.optimizer.lr=2e-3')
    runner = Runner.from_cfg(cfg)
    runner.train()
    losses = losses_of(runner)
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    # Every module resolves in mmsora's registries: no scope fall-back warnings.
    import glob
    log = open(glob.glob(str(tmp_path / '*' / '*.log'))[0]).read()
    assert 'Iter(train) [60/60]' in log
    assert 'registry with scope' not in log and 'not found in' not in log


def test_logged_loss_terms_are_averaged_like_the_loss(repo_root, tmp_path):
    """The log showed ``loss`` as mmengine's mean over its window beside ``mse`` and
    ``vb`` of the last step alone, so they did not add up; all three are means now."""
    import glob
    import json
    cfg = tiny_cfg(repo_root, tmp_path, 4, 'default_hooks.logger.interval=4')
    runner = Runner.from_cfg(cfg)
    runner.train()
    scalars = glob.glob(str(tmp_path / '*' / 'vis_data' / 'scalars.json'))[0]
    row = [json.loads(line) for line in open(scalars)][-1]
    assert row['iter'] == 4
    for key in ('loss', 'mse', 'vb'):
        steps = list(runner.message_hub.get_scalar(f'train/{key}').data[0])
        assert len(steps) == 4 and row[key] == pytest.approx(sum(steps) / 4, abs=1e-4)
    assert row['loss'] == pytest.approx(row['mse'] + row['vb'], abs=2e-4)


def test_resume_continues_exactly(repo_root, tmp_path):
    every = 'default_hooks.checkpoint.interval=4'
    full = Runner.from_cfg(tiny_cfg(repo_root, tmp_path / 'full', 10, every))
    full.train()
    ref_losses = losses_of(full)
    ref_params = copy.deepcopy(full.model.state_dict())

    half = Runner.from_cfg(tiny_cfg(repo_root, tmp_path / 'half', 4, every))
    half.train()
    ckpt = str(tmp_path / 'half' / 'iter_4.pth')
    assert osp.isfile(ckpt)
    resumed = Runner.from_cfg(tiny_cfg(repo_root, tmp_path / 'half', 10, every, resume=ckpt))
    resumed.train()
    # Same timesteps, noise and data order: the losses after the resume point equal
    # the uninterrupted run's, and so do the final weights (EMA included).
    assert losses_of(resumed)[4:] == ref_losses[4:]
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, ref_params[key]), key
    # and mmengine's loader no longer warns of a hub key saved as 'not resumed'
    import glob
    logs = glob.glob(str(tmp_path / 'half' / '*' / '*.log'))
    assert logs and not any('resumed key' in open(p).read() for p in logs)


def test_load_from_takes_weights_only(repo_root, tmp_path):
    src = Runner.from_cfg(tiny_cfg(repo_root, tmp_path / 'src', 3))
    src.train()
    ckpt = str(tmp_path / 'src' / 'iter_3.pth')
    cfg = tiny_cfg(repo_root, tmp_path / 'dst', 2, load_from=ckpt)
    assert cfg.resume is False and cfg.load_from == ckpt
    dst = Runner.from_cfg(cfg)
    start = StateAtTrainStart()
    dst.register_hook(start)
    dst.train()
    # The checkpoint's trained weights (in its ema_state_dict: the EMA hook swaps the
    # average into state_dict to save), and nothing else: no optimizer state, and a
    # new iteration count.
    saved = torch.load(ckpt, weights_only=False)
    trained = {k[len('module.'):]: v for k, v in saved['ema_state_dict'].items()
               if k.startswith('module.')}
    assert trained.keys() == start.weights.keys() == saved['state_dict'].keys()
    start.assert_weights(trained)
    assert start.optimizer_state == {}
    assert dst.iter == 2  # a new run: the iteration counter starts from 0


def test_amp_on_cpu_trains_in_bf16(repo_root, tmp_path):
    cfg = tiny_cfg(repo_root, tmp_path, 2)
    args = parse_args([osp.join(repo_root, DEMO), '--amp'])
    amp_cfg = build_train_config(args)
    assert amp_cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    cfg.optim_wrapper = amp_cfg.optim_wrapper
    runner = Runner.from_cfg(cfg)
    seen = []
    runner.model.denoiser.blocks[0].attn.qkv.register_forward_hook(
        lambda m, i, o: seen.extend(t.dtype for t in o))  # q, k, v
    runner.train()
    assert seen and all(d == torch.bfloat16 for d in seen)
    # fp32 master weights
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())
    # A preset that trains with mmengine's AmpOptimWrapper (a GPU's) runs --amp on the
    # CPU without the GPU wrapper's loss scale (AutocastOptimWrapper refused it).
    preset = osp.join(repo_root, 'configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_24gb.py')
    wrapper = build_train_config(parse_args([preset, '--amp'])).optim_wrapper
    assert wrapper.type == 'AutocastOptimWrapper' and 'loss_scale' not in wrapper
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    init_default_scope('mmsora')
    assert type(build_optim_wrapper(torch.nn.Linear(2, 2), wrapper)).__name__ == (
        'AutocastOptimWrapper')


def test_resume_and_load_from_exclude_each_other(repo_root, tmp_path):
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    # UserError: one line and exit code 2 from run_cli, as every other mistake
    with pytest.raises(UserError, match='^--resume and --load-from exclude each other: '
                       '.*; to continue a run begun with --load-from, drop --load-from'):
        build_train_config(parse_args([DEMO, '--resume', str(ckpt), '--load-from', str(ckpt)]))
    with pytest.raises(UserError, match='^--resume checkpoint not found: nope.pth'):
        build_train_config(parse_args([DEMO, '--resume', 'nope.pth']))
    # a work dir given to --resume was 'not found' too
    with pytest.raises(UserError, match=rf'^--resume {tmp_path}: a folder, not a checkpoint '
                                        r'file \(to continue the run in a work dir: '):
        build_train_config(parse_args([DEMO, '--resume', str(tmp_path)]))
    with pytest.raises(UserError, match='^--load-from checkpoint not found: nope.pth'):
        build_train_config(parse_args([DEMO, '--load-from', 'nope.pth']))


def test_load_from_an_original_dit_file(repo_root, tmp_path):
    # A released DiT / fast-DiT file is a bare denoiser state dict: --load-from puts
    # it into the denoiser (strict) when the run starts, and trains from there.
    from mmsora.registry import MODELS
    cfg = tiny_cfg(repo_root, tmp_path / 'a', 1)
    source = MODELS.build(cfg.model).denoiser
    with torch.no_grad():  # weights no fresh initialisation could give
        for param in source.parameters():
            param.add_(0.5)
    torch.save({'model': source.state_dict(), 'ema': source.state_dict(), 'args': None},
               tmp_path / 'fastdit.pt')
    cfg = tiny_cfg(repo_root, tmp_path / 'b', 1, load_from=str(tmp_path / 'fastdit.pt'))
    assert cfg.load_from is None and cfg.model.pretrained_denoiser.endswith('fastdit.pt')
    model = MODELS.build(cfg.model)
    model.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(model.denoiser.state_dict()[key], value), key
    # An mmsora run's checkpoint works too: its denoiser keys sit under 'denoiser.'.
    torch.save({'state_dict': {f'denoiser.{k}': v for k, v in source.state_dict().items()},
                'meta': {}}, tmp_path / 'run.pth')
    cfg.model.pretrained_denoiser = str(tmp_path / 'run.pth')
    model = MODELS.build(cfg.model)
    model.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(model.denoiser.state_dict()[key], value), key


def test_no_workers_turns_persistent_workers_off(repo_root):
    """The ImageNet configs keep their loader workers (persistent_workers=True);
    --cfg-options train_dataloader.num_workers=0 stopped them with torch's
    'persistent_workers option needs num_workers > 0'. Now the loader builds."""
    from torch.utils.data import DataLoader
    config = osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py')
    loader = build_train_config(parse_args([config])).train_dataloader
    assert loader.persistent_workers and loader.num_workers > 0  # kept as configured
    loader = build_train_config(parse_args(
        [config, '--cfg-options', 'train_dataloader.num_workers=0'])).train_dataloader
    assert loader.persistent_workers is False
    DataLoader(range(4), num_workers=loader.num_workers,
               persistent_workers=loader.persistent_workers)


def test_pin_memory_is_off_without_a_gpu(repo_root, monkeypatch):
    """The ImageNet and video recipes pin loader memory for the GPU; on a machine
    without one, torch warned at every start that nothing can be pinned."""
    import warnings
    config = osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert build_train_config(parse_args([config])).train_dataloader.pin_memory is True
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    loader = build_train_config(parse_args([config])).train_dataloader
    assert loader.pin_memory is False
    from torch.utils.data import DataLoader
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        next(iter(DataLoader(range(4), batch_size=2, pin_memory=loader.pin_memory)))


def test_a_dataset_missing_its_arguments_stops_before_the_runner(repo_root, tmp_path):
    """A _delete_=True NpyLatentDataset without its folders: a TypeError traceback at
    the Runner's dataset build, after its start-up output."""
    config = tmp_path / 'npy.py'
    config.write_text(f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
                      "train_dataloader = dict(dataset=dict(_delete_=True, "
                      "type='NpyLatentDataset', data_root='features'))\n")
    with pytest.raises(UserError, match=r'^train_dataloader.dataset: NpyLatentDataset needs '
                                        "'features_dir' and 'labels_dir' in its config; they are "
                                        'missing$'):
        build_train_config(parse_args([str(config), '--work-dir', str(tmp_path / 'w')]))


def test_resume_refuses_another_model_weights_alone_and_a_finished_run(repo_root, tmp_path,
                                                                       capsys):
    """--resume of a checkpoint of another model failed in the EMA hook's strict load
    (a 60-line traceback, after the Runner's start-up output); of a denoiser's weights
    alone, in mmengine's resume; of a run saved at or past max_iters, it trained
    nothing and said nothing."""
    from mmsora.registry import MODELS
    cfg = tiny_cfg(repo_root, tmp_path / 'a', 4)
    model = MODELS.build(cfg.model)
    run = tmp_path / 'iter_4.pth'
    torch.save(dict(meta=dict(iter=4), state_dict=model.state_dict()), run)
    weights = tmp_path / 'weights.pt'
    torch.save(model.denoiser.state_dict(), weights)
    with pytest.raises(UserError, match=rf'^--resume {run}: its denoiser is not the '
                                        r"config's: .*build the model with the settings it was trained"):
        tiny_cfg(repo_root, tmp_path / 'b', 8, 'model.denoiser.hidden_size=64',
                 resume=str(run))
    with pytest.raises(UserError, match=rf'^--resume {weights}: a state dict of weights '
                                        rf'alone, .*--load-from {weights}$'):
        tiny_cfg(repo_root, tmp_path / 'b', 8, resume=str(weights))
    # a fast-DiT training file holds an optimizer ('opt'): 'no optimizer' was untrue
    # (walk-through p); --load-from it says which weights it takes
    fast = tmp_path / '0000050.pt'
    state = model.denoiser.state_dict()
    torch.save(dict(model=state, ema=state, opt=dict(state={}, param_groups=[]),
                    args=dict(model='DiT-XL/2')), fast)
    with pytest.raises(UserError, match=rf"^--resume {fast}: a DiT / fast-DiT training "
                                        r"checkpoint \(model, ema, opt\): its optimizer state "
                                        rf"and step are not mmsora's to resume; start from its "
                                        rf"weights with --load-from {fast} \(the model from its "
                                        r"'model' weights, the EMA from its 'ema'\)$"):
        tiny_cfg(repo_root, tmp_path / 'b', 8, resume=str(fast))
    capsys.readouterr()
    tiny_cfg(repo_root, tmp_path / 'c', 8, load_from=str(fast))
    assert (f"--load-from {fast}: a DiT / fast-DiT training file: its training continues: "
            "the model starts from its 'model' weights, the EMA from its 'ema' weights"
            ) in capsys.readouterr().err
    # the same asked by the config (resume = True with its load_from): named so (it
    # said '--resume', an option not given)
    with pytest.raises(UserError, match=rf'^resume = True, load_from {weights}: a state '
                                        r'dict of weights alone, .*start from it with '
                                        r'resume = False \(load_from then starts a run '
                                        r'from it\)$'):
        tiny_cfg(repo_root, tmp_path / 'b', 8, 'resume=True', f'load_from={weights}')
    with pytest.raises(UserError, match=rf'^resume = True, load_from {run}: its denoiser '
                                        r"is not the config's"):
        tiny_cfg(repo_root, tmp_path / 'b', 8, 'model.denoiser.hidden_size=64',
                 'resume=True', f'load_from={run}')
    # a config typo is said first: its check reads no file (the checkpoint's checks map
    # it), and the typo stands whatever the checkpoint
    with pytest.raises(UserError, match=r"^optim_wrapper.optimizer: unknown config key "
                                        r"'weight_decy'"):
        tiny_cfg(repo_root, tmp_path / 'b', 8, 'optim_wrapper.optimizer.weight_decy=0.1',
                 resume=str(weights))
    with pytest.raises(UserError, match=rf'^--resume {run}: saved at iteration 4, past '
                                        r'train_cfg.max_iters=3: give a larger'):
        tiny_cfg(repo_root, tmp_path / 'b', 3, resume=str(run))
    capsys.readouterr()
    tiny_cfg(repo_root, tmp_path / 'b', 8, resume=str(run))  # iterations left
    assert 'the run is complete' not in capsys.readouterr().out
    # at the end: said; the Runner still runs the hooks' ends (a final evaluation)
    cfg = tiny_cfg(repo_root, tmp_path / 'c', 4, resume=str(run))
    assert cfg.resume and 'saved at iteration 4, which is train_cfg.max_iters: the run ' \
        'is complete' in capsys.readouterr().out
    # mmengine's resume=True without a file (its own auto-resume): left to mmengine (an
    # os.path TypeError traceback in the first version of this check)
    tiny_cfg(repo_root, tmp_path / 'd', 4, 'resume=True')


def test_resume_says_when_it_keeps_the_checkpoints_learning_rate(repo_root, tmp_path,
                                                                  capsys):
    """mmengine resumes the optimizer's state, its learning rate included: a changed
    optim_wrapper.optimizer.lr went unused without a word."""
    from mmsora.registry import MODELS
    cfg = tiny_cfg(repo_root, tmp_path / 'a', 4)
    run = tmp_path / 'iter_4.pth'
    groups = [dict(lr=0.25, initial_lr=0.5, params=[0])]  # (0.25: where a schedule was)
    torch.save(dict(meta=dict(iter=4), state_dict=MODELS.build(cfg.model).state_dict(),
                    optimizer=dict(state={}, param_groups=groups)), run)
    capsys.readouterr()
    tiny_cfg(repo_root, tmp_path / 'b', 8, 'optim_wrapper.optimizer.lr=1e-6',
             resume=str(run))
    out, err = capsys.readouterr()  # a note on stderr, as the others (it was on stdout)
    assert (f'note: --resume {run} keeps its learning rate (0.5); the config\'s '
            'optim_wrapper.optimizer.lr=1e-06 is not used') in err
    assert 'keeps its learning rate' not in out
    tiny_cfg(repo_root, tmp_path / 'b', 8, 'optim_wrapper.optimizer.lr=0.5',
             resume=str(run))
    assert 'keeps its learning rate' not in ''.join(capsys.readouterr())


def test_a_checkpoint_of_another_objective_is_named(repo_root, tmp_path, capsys):
    """A SiT run's checkpoint resumed under a DDPM config resumed and trained on as
    DDPM without a word; --load-from across objectives (a DiT fine-tuned into SiT) is
    said, not refused."""
    from mmengine.config import Config

    from mmsora.registry import MODELS
    cfg = tiny_cfg(repo_root, tmp_path / 'a', 4)
    saved = Config(dict(model=dict(cfg.model, diffusion=dict(type='Transport'))))
    run = tmp_path / 'iter_4.pth'
    torch.save(dict(meta=dict(iter=4, cfg=saved.pretty_text),
                    state_dict=MODELS.build(cfg.model).state_dict()), run)
    with pytest.raises(UserError, match=rf'^--resume {run}: saved by a run of the Transport '
                                        r'objective, this config trains GaussianDiffusion: '
                                        r'resume with the config it was trained with'):
        tiny_cfg(repo_root, tmp_path / 'b', 8, resume=str(run))
    capsys.readouterr()
    tiny_cfg(repo_root, tmp_path / 'c', 8, load_from=str(run))
    assert (f'note: --load-from {run}: trained with the Transport objective, this run '
            'trains GaussianDiffusion from its weights') in capsys.readouterr().err
    # docs/sit.md's recipe, a DiT run into SiT with DiT's timesteps: meant, no note
    dit_run = tmp_path / 'dit.pth'
    torch.save(dict(meta=dict(iter=4, cfg=Config(dict(model=cfg.model)).pretty_text),
                    state_dict=MODELS.build(cfg.model).state_dict()), dit_run)
    sit = osp.join(repo_root, 'configs/sit/sit_tiny2_1xb32_1500_shapes16.py')
    for convention, noted in (('sit', True), ('dit', False)):
        build_train_config(parse_args([
            sit, '--work-dir', str(tmp_path / f'sit_{convention}'), '--load-from', str(dit_run),
            '--cfg-options', *TINY, 'model.denoiser.learn_sigma=True',
            f'model.diffusion.timestep_convention={convention}']))
        assert ('trained with the GaussianDiffusion objective, this run trains Transport'
                in capsys.readouterr().err) == noted


def test_load_from_at_another_input_size_keeps_the_configs_position_table(repo_root,
                                                                           tmp_path):
    """DiT's pos_embed is a fixed sin-cos table of the config's grid: a fine-tune from
    8x8 latents to 16x16 (DiT-256 -> 512 style) was refused as another model, from a
    run checkpoint and from a DiT file alike."""
    from mmsora.registry import MODELS
    small = tiny_cfg(repo_root, tmp_path / 'a', 4)
    model = MODELS.build(small.model)
    run, dit = tmp_path / 'iter_4.pth', tmp_path / 'dit.pt'
    torch.save(dict(meta=dict(iter=4), state_dict=model.state_dict()), run)
    torch.save(model.denoiser.state_dict(), dit)
    bigger = ('model.denoiser.input_size=16', 'model.latent_shape=[3,16,16]',
              'train_dataloader.dataset.size=16')
    cfg = tiny_cfg(repo_root, tmp_path / 'b', 2, *bigger, load_from=str(run))
    assert cfg.load_from == str(run)
    cfg = tiny_cfg(repo_root, tmp_path / 'c', 2, *bigger, load_from=str(dit))
    large = MODELS.build(cfg.model)
    large.init_weights()  # the DiT file loads; its blocks are the file's
    state = large.denoiser.state_dict()
    for key, value in model.denoiser.state_dict().items():
        if key != 'pos_embed':
            assert torch.equal(state[key], value), key
    assert state['pos_embed'].shape == (1, 64, 32)
    # a learned weight of another shape is still refused, from a DiT file too before
    # the Runner (its strict load refused it after about 240 lines of start-up)
    with pytest.raises(UserError, match='its denoiser is not the config'):
        tiny_cfg(repo_root, tmp_path / 'd', 2, 'model.denoiser.hidden_size=64',
                 load_from=str(run))
    with pytest.raises(UserError, match=r"dit.pt: its weights are not the config's "
                                        r'denoiser: \d+ of another shape'):
        tiny_cfg(repo_root, tmp_path / 'e', 2, 'model.denoiser.hidden_size=64',
                 load_from=str(dit))


def test_load_from_a_run_of_another_class_count(repo_root, tmp_path):
    """--load-from an mmengine run of 10 classes into the demo's 4: mmengine's loader
    keeps the config's label table (its 'size mismatch' lines alone said so); the
    warning names both lengths. One row apart (the null-class row, class_dropout_prob)
    is refused, naming the setting: the same classes would have started afresh."""
    from unittest import mock

    from mmsora.registry import MODELS
    ten = tiny_cfg(repo_root, tmp_path / 'a', 4, 'model.denoiser.num_classes=10',
                   'model.num_classes=10', 'train_dataloader.dataset.num_classes=10')
    run = tmp_path / 'iter_4.pth'
    torch.save(dict(meta=dict(iter=4), state_dict=MODELS.build(ten.model).state_dict()), run)
    with mock.patch('mmengine.logging.print_log') as log:
        cfg = tiny_cfg(repo_root, tmp_path / 'b', 2, load_from=str(run))
    assert cfg.load_from == str(run)
    (message,), kwargs = log.call_args
    assert message.startswith(
        f"--load-from {run}: a label table of another length: the config's y_embedder."
        "embedding_table.weight (5, 32) (the file's: (11, 32)) starts from its "
        'initialisation'), message
    with pytest.raises(UserError, match=r"one row apart: the file's 11 rows are 10 classes "
                                        r'and the null-class row for guidance'):
        tiny_cfg(repo_root, tmp_path / 'c', 2, 'model.denoiser.num_classes=10',
                 'model.num_classes=10', 'model.denoiser.class_dropout_prob=0',
                 'train_dataloader.dataset.num_classes=10', load_from=str(run))


def test_resume_says_when_it_keeps_the_checkpoints_schedule(repo_root, tmp_path, capsys):
    """mmengine restores the schedulers' states, end included: a run extended with
    train_cfg.max_iters=200 param_scheduler.1.end=200 went on along the old cosine to
    1500 without a word, and the max_iters note had advised setting that end."""
    from mmsora.registry import MODELS
    cfg = tiny_cfg(repo_root, tmp_path / 'a', 4)
    run = tmp_path / 'iter_4.pth'
    states = [dict(begin=0, end=100, start_factor=0.01, last_step=4),
              dict(begin=100, end=1500, eta_min=1e-5, T_max=1400, last_step=4)]
    torch.save(dict(meta=dict(iter=4), state_dict=MODELS.build(cfg.model).state_dict(),
                    param_schedulers=states), run)
    capsys.readouterr()

    def resume(*extra):  # the demo's own schedule (TINY drops it)
        build_train_config(parse_args([
            osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'b'), '--resume',
            str(run), '--cfg-options', 'train_cfg.max_iters=200',
            *[o for o in TINY if not o.startswith('param_scheduler')], *extra]))
    resume('param_scheduler.1.end=200')
    err = capsys.readouterr().err
    assert (f'note: --resume {run} keeps its schedule: param_scheduler.1.end=1500 (config: '
            "200) (mmengine resumes the schedulers' state). To train on a new schedule, "
            'start a run from these weights: --load-from') in err
    assert 'the schedule still ends at' not in err  # (the advice that did not work)
    resume()
    assert 'keeps its schedule' not in capsys.readouterr().err


def test_a_config_without_env_cfg_or_collate_fn_trains(repo_root, tmp_path):
    """A config written from scratch without env_cfg failed with an AttributeError in
    tools/train.py; a training loader without collate_fn got mmengine's pseudo_collate
    (the batch left a list: an AttributeError in the model)."""
    cfg = tiny_cfg(repo_root, tmp_path, 2, 'env_cfg=None', 'train_dataloader.collate_fn=None')
    assert cfg.train_dataloader.collate_fn == dict(type='default_collate')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert len(losses_of(runner)) == 2


def test_a_configs_load_from_and_a_dumped_pretrained_denoiser(repo_root, tmp_path):
    """A config's load_from (OpenMMLab's way; --cfg-options load_from=F) of a DiT file
    reached mmengine's loader, whose EMA hook failed with a KeyError traceback: it goes
    the way --load-from goes. A work dir's dumped config keeps its run's --load-from as
    model.pretrained_denoiser: a --resume (or --load-from a run) read it for nothing,
    and stopped once that file was gone."""
    from unittest import mock

    from mmsora.registry import MODELS
    small = tiny_cfg(repo_root, tmp_path / 'a', 1)
    model = MODELS.build(small.model)
    torch.save(model.denoiser.state_dict(), tmp_path / 'dit.pt')
    cfg = tiny_cfg(repo_root, tmp_path / 'b', 1, f'load_from={tmp_path / "dit.pt"}')
    assert cfg.load_from is None and cfg.model.pretrained_denoiser == str(tmp_path / 'dit.pt')
    # with --resume and nothing saved yet (a requeued job's first start) it was dropped:
    # the run trained from scratch
    cfg = tiny_cfg(repo_root, tmp_path / 'b2', 1, f'load_from={tmp_path / "dit.pt"}',
                   resume='auto')
    assert not cfg.resume and cfg.model.pretrained_denoiser == str(tmp_path / 'dit.pt')
    with pytest.raises(UserError, match=r'^load_from checkpoint not found: .*nope.pt$'):
        tiny_cfg(repo_root, tmp_path / 'b3', 1, f'load_from={tmp_path / "nope.pt"}')
    run = tmp_path / 'iter_1.pth'
    torch.save(dict(meta=dict(iter=1), state_dict=model.state_dict()), run)
    gone = f'model.pretrained_denoiser={tmp_path / "gone.pt"}'
    for option in (dict(resume=str(run)), dict(load_from=str(run))):
        cfg = tiny_cfg(repo_root, tmp_path / 'c', 2, gone, **option)
        assert cfg.load_from == str(run) and not cfg.model.pretrained_denoiser
    # a run of another input size: the kept table is said (mmengine's 'size mismatch'
    # lines alone said it)
    with mock.patch('mmengine.logging.print_log') as log:
        tiny_cfg(repo_root, tmp_path / 'd', 2, 'model.denoiser.input_size=16',
                 'model.latent_shape=[3,16,16]', 'train_dataloader.dataset.size=16',
                 load_from=str(run))
    assert [c for c in log.call_args_list if c[0][0].startswith(
        f"--load-from {run}: kept the model's own pos_embed (1, 64, 32) (the file's: "
        '(1, 16, 32))')], log.call_args_list


def test_load_from_a_deepspeed_folder_names_the_way(repo_root, tmp_path):
    # it was 'checkpoint not found' of a folder that exists
    folder = tmp_path / 'iter_6.pth'
    folder.mkdir()
    for f in ('mp_rank_00_model_states.pt', 'bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt'):
        (folder / f).write_bytes(b'')
    with pytest.raises(UserError, match=rf'^--load-from {folder}: a DeepSpeed checkpoint '
                                        r'folder: convert it with tools/zero_to_state_dict.py'):
        tiny_cfg(repo_root, tmp_path / 'w', 1, load_from=str(folder))


def test_a_config_named_for_more_processes_notes_the_global_batch(repo_root, tmp_path,
                                                                   capsys):
    """DiT's recipe config (8xb32: a global batch of 256) trained on one process ran
    a global batch of 32 at the recipe's learning rate, without a word (config audit)."""
    config = osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py')
    build_train_config(parse_args([config, '--work-dir', str(tmp_path / 'a')]))
    assert ('note: dit_s2_8xb32_400k_imagenet256.py is named for 8 processes x 32 (a global '
            'batch of 256); this run has 1: a global batch of 32 at the same learning rate. '
            "For the recipe's: --cfg-options global_batch_size=256") in capsys.readouterr().err
    # (one named for 1 process, run on 2: no accumulation to suggest)
    from mmsora.engine.run_config_checks import note_named_layout
    note_named_layout('video_dit_tiny4_1xb2_t5_two_clips.py',
                      dict(train_dataloader=dict(batch_size=2)), 2)
    assert ('named for 1 process x 2 (a global batch of 2); this run has 2: a global batch '
            "of 4 at the same learning rate. For the recipe's: --cfg-options "
            'global_batch_size=2\n') in capsys.readouterr().err
    # a layout that ends the name (walk-through q's t2v_tiny_4xb2.py had no note)
    note_named_layout('t2v_tiny_4xb2.py', dict(train_dataloader=dict(batch_size=2)), 2)
    assert 't2v_tiny_4xb2.py is named for 4 processes x 2' in capsys.readouterr().err
    for kept in (['train_dataloader.batch_size=256'], ['global_batch_size=256']):
        build_train_config(parse_args([config, '--work-dir', str(tmp_path / 'b'),
                                       '--cfg-options', *kept]))
        assert 'is named for' not in capsys.readouterr().err
