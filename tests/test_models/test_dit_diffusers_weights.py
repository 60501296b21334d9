"""DiT weights saved by diffusers (the hub's facebook/DiT-XL-2-256 is a diffusers
pipeline folder) read as the original DiT: the same outputs as diffusers' model, in
every tool that takes a DiT file, and one line for what cannot be loaded exactly."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import DiTTransformer2DModel

from mmsora.models import DiT
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.weight_loading import load_dit_checkpoint
from tests.test_models.test_dit import build_reference, inputs, rekey_reference, tiny_cfg


def save_pipeline(ref, folder, safe=True):
    """``ref`` as a diffusers DiT pipeline folder (its transformer part, the
    model_index.json that names it), as ``huggingface-cli download`` leaves it."""
    ref.save_pretrained(osp.join(folder, 'transformer'), safe_serialization=safe)
    with open(osp.join(folder, 'model_index.json'), 'w') as f:
        json.dump({'_class_name': 'DiTPipeline',
                   'transformer': ['diffusers', 'DiTTransformer2DModel']}, f)
    return str(folder)


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory):
    cfg = tiny_cfg()
    ref = build_reference(cfg, seed=5)
    return cfg, ref, save_pipeline(ref, tmp_path_factory.mktemp('dit'))


def same_as_reference(cfg, ref, model):
    x, t, y = inputs(cfg)
    with torch.no_grad():
        theirs = ref(x, timestep=t, class_labels=y).sample
        assert theirs.abs().mean() > 1e-2  # a dead reference would prove nothing
        torch.testing.assert_close(model(x, t, y), theirs, atol=1e-5, rtol=1e-5)


def test_a_diffusers_folder_or_file_loads_as_the_original(pipeline, tmp_path):
    cfg, ref, folder = pipeline
    weights = osp.join(folder, 'transformer', 'diffusion_pytorch_model.safetensors')
    # the pickled .bin of older diffusers versions (the hub's DiT files) too
    bin_folder = save_pipeline(ref, tmp_path / 'bin', safe=False)
    expected = rekey_reference(ref)
    for path in (folder, osp.join(folder, 'transformer'), weights, bin_folder):
        state = load_checkpoint_file(path)
        assert sorted(state) == sorted(expected), path
        for key, value in expected.items():  # position table computed from sample_size
            torch.testing.assert_close(state[key], value, atol=1e-6, rtol=0, msg=key)
        model = DiT(**cfg).eval()
        load_dit_checkpoint(model, path)
        same_as_reference(cfg, ref, model)


def test_sampling_and_export_take_the_folder(pipeline, tmp_path):
    from types import SimpleNamespace

    from mmsora.apis.inference import load_weights
    from tools.export_denoiser import main as export
    cfg, ref, folder = pipeline
    holder = SimpleNamespace(denoiser=DiT(**cfg).eval())
    load_weights(holder, folder)  # tools/infer.py's and tools/test.py's loader
    assert holder.loaded_from == folder
    same_as_reference(cfg, ref, holder.denoiser)
    # exported as a plain DiT file, which DiT's own sample.py could read
    export([folder, '--out', str(tmp_path / 'dit.pt')])
    model = DiT(**cfg).eval()
    model.load_state_dict(torch.load(tmp_path / 'dit.pt', weights_only=True))
    same_as_reference(cfg, ref, model)


def test_what_cannot_be_loaded_exactly_is_one_line(pipeline, tmp_path):
    cfg, ref, folder = pipeline
    # a model trained in diffusers: each block's embedder its own
    other = build_reference(cfg, seed=5)
    with torch.no_grad():
        other.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1)
    path = save_pipeline(other, tmp_path / 'own_embedders')
    with pytest.raises(ValueError, match=r"block 1's timestep / class embedder \(transformer_"
                                         r"blocks\.1\.norm1\.emb\.class_embedder\..*differs "
                                         r"from block 0's: a DiT trained in diffusers"):
        load_checkpoint_file(path)
    # the weights file without its config.json: the size it was trained at is unknown
    alone = tmp_path / 'alone.safetensors'
    shutil.copy(osp.join(folder, 'transformer', 'diffusion_pytorch_model.safetensors'), alone)
    with pytest.raises(ValueError, match=rf'^{alone}: diffusers DiT weights without the '
                                         r'config\.json beside them'):
        load_checkpoint_file(alone)
    # LayerNorms with weights (norm_elementwise_affine=True): not the original's
    affine = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16,
                                   in_channels=4, out_channels=8, num_layers=2, sample_size=8,
                                   patch_size=2, num_embeds_ada_norm=10,
                                   norm_elementwise_affine=True)
    with pytest.raises(ValueError, match=r"holds 4 weight\(s\) the original DiT has not "
                                         r"\(e\.g\. transformer_blocks\.0\.norm3\.bias\)"):
        load_checkpoint_file(save_pipeline(affine, tmp_path / 'affine'))


def test_a_model_of_another_size_is_named_by_its_sample_size(tmp_path):
    # The table is not in diffusers' files: it comes from config.json's sample_size,
    # so a 512 px DiT in a 256 px config is refused as such, not sampled wrongly.
    cfg = tiny_cfg()
    ref = build_reference(dict(cfg, input_size=16))
    path = save_pipeline(ref, tmp_path / 'big')
    with pytest.raises(ValueError, match=r'pos_embed has shape \(1, 64, 64\) but the model\'s '
                                         r'is \(1, 16, 64\): it is a model for 64 tokens, a '
                                         r'8x8 grid: set model\.denoiser\.input_size=16'):
        load_dit_checkpoint(DiT(**cfg), path)


def test_infer_samples_from_a_diffusers_folder(repo_root, tmp_path):
    # the main demo's DiT size (configs/dit/dit_tiny2_1xb32_1500_shapes16.py)
    cfg = dict(input_size=16, patch_size=2, in_channels=3, hidden_size=128, depth=4,
               num_heads=4, num_classes=4, learn_sigma=True)
    folder = save_pipeline(build_reference(cfg), tmp_path / 'DiT-tiny')
    out = tmp_path / 'samples.png'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, 'tools/infer.py', 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py',
         '--checkpoint', folder, '--labels', '0', '3', '--steps', '2', '--out', str(out)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.is_file() and out.stat().st_size > 0
    assert folder in result.stdout + result.stderr  # the weights sampled are named


def test_train_load_from_a_diffusers_folder_to_new_classes(repo_root, tmp_path,
                                                           tiny_vae_dir):
    # tools/train.py --load-from the folder (it said 'checkpoint not found' of any
    # folder), fine-tuning the 10-class model on the demo's 4 classes: the label table
    # starts afresh, said in a warning; the rest is the diffusers model's
    from unittest import mock

    from mmsora.registry import MODELS
    from tests.tiny_models import tiny_cfg as train_cfg
    cfg = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2,
               num_heads=2, num_classes=10, learn_sigma=True)
    ref = build_reference(cfg)
    folder = save_pipeline(ref, tmp_path / 'DiT-10')
    run = train_cfg(repo_root, tmp_path / 'work', 1, load_from=folder)
    assert run.load_from is None and run.model.pretrained_denoiser == folder
    model = MODELS.build(run.model)
    fresh = model.denoiser.y_embedder.embedding_table.weight.detach().clone()
    with mock.patch('mmengine.logging.print_log') as log:
        model.init_weights()
    expected = rekey_reference(ref)
    for key, value in model.denoiser.state_dict().items():
        if key != 'y_embedder.embedding_table.weight':
            torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=0, msg=key)
    assert torch.equal(model.denoiser.y_embedder.embedding_table.weight, fresh)
    assert fresh.shape == (5, 32)  # the demo's 4 classes and the null class
    warned = [c for c in log.call_args_list if "a label table of another length" in c[0][0]]
    assert len(warned) == 1 and "(5, 32) (the file's: (11, 32))" in warned[0][0][0]
    # a folder of another kind is named (it was 'checkpoint not found'): a VAE's by its
    # config.json, any other as what it is not; a work dir gives its newest checkpoint
    from mmsora.utils.cli import UserError
    with pytest.raises(UserError, match=rf'^--load-from {tmp_path}: a folder that is neither '
                                        r'a work dir with a checkpoint'):
        train_cfg(repo_root, tmp_path / 'work2', 1, load_from=str(tmp_path))
    with pytest.raises(UserError, match=rf"^--load-from {tiny_vae_dir} holds a diffusers "
                                        r"AutoencoderKL \(its config.json\), not a denoiser's "
                                        r'weights'):
        train_cfg(repo_root, tmp_path / 'work2', 1, load_from=tiny_vae_dir)
    run = tmp_path / 'run'
    run.mkdir()
    torch.save(dict(meta=dict(iter=2), state_dict=MODELS.build(
        train_cfg(repo_root, tmp_path / 'w3', 1).model).state_dict()), run / 'iter_2.pth')
    assert train_cfg(repo_root, tmp_path / 'w4', 1, load_from=str(run)).load_from == str(
        run / 'iter_2.pth')


def test_a_dit_exported_for_diffusers_is_diffusers_dit(pipeline, tmp_path, capsys):
    # tools/export_denoiser.py --diffusers: a folder DiTTransformer2DModel reads with
    # no weight missing or left over, giving the same outputs (with the original's
    # timestep frequencies: diffusers' own DiT shifts them), and read back exactly
    from mmsora.utils.cli import UserError
    from tools.export_denoiser import main as export
    cfg, ref, folder = pipeline
    dit = DiT(**cfg).eval()
    load_dit_checkpoint(dit, folder)
    torch.save(dit.state_dict(), tmp_path / 'dit.pt')
    out = tmp_path / 'mine' / 'transformer'
    export([str(tmp_path / 'dit.pt'), '--diffusers', '--num-heads', '4', '--out', str(out)])
    assert 'as diffusers\' DiTTransformer2DModel (2 blocks, 4 heads, sample_size 8, 10 ' \
        'classes)' in capsys.readouterr().out
    theirs, info = DiTTransformer2DModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    from diffusers.models.embeddings import Timesteps
    for m in theirs.modules():
        if isinstance(m, Timesteps):
            m.downscale_freq_shift = 0  # the original's frequencies, as build_reference
    same_as_reference(cfg, theirs.eval(), dit)
    back = DiT(**cfg).eval()
    load_dit_checkpoint(back, str(out))
    for key, value in dit.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    # what diffusers cannot hold, or where the heads are unknown, is one line
    video = {**dit.state_dict(), 'temp_embed': torch.zeros(1, 4, 64)}
    torch.save(video, tmp_path / 'video.pt')
    with pytest.raises(UserError, match=r"video\.pt: a video DiT; diffusers' "):
        export([str(tmp_path / 'video.pt'), '--diffusers', '--num-heads', '4', '--out',
                str(tmp_path / 'v')])
    with pytest.raises(UserError, match=r'a DiT of width 64, not one of the paper\'s and with '
                                        r'no run config to say its heads: give --num-heads'):
        export([str(tmp_path / 'dit.pt'), '--diffusers', '--out', str(tmp_path / 'h')])
    # an earlier export is replaced whole, as a .pt is (it was refused as 'not empty')
    with torch.no_grad():
        dit.final_layer.linear.bias.add_(1.0)
    torch.save(dit.state_dict(), tmp_path / 'dit2.pt')
    export([str(tmp_path / 'dit2.pt'), '--diffusers', '--num-heads', '4', '--out', str(out)])
    load_dit_checkpoint(back, str(out))
    assert torch.equal(back.final_layer.linear.bias, dit.final_layer.linear.bias)
    assert sorted(os.listdir(tmp_path / 'mine')) == ['transformer']  # nothing else left
    # any other folder that is not empty is refused
    (out / 'notes.txt').write_text('mine')
    with pytest.raises(UserError, match=r'mine/transformer: a folder that is not empty and '
                                        r'not an earlier export'):
        export([str(tmp_path / 'dit.pt'), '--diffusers', '--num-heads', '4', '--out', str(out)])
    assert sorted(os.listdir(tmp_path / 'mine')) == ['transformer']  # no partial left
    # a run's checkpoint says its heads, and whether its table has the null class's row
    for dropout, name in ((0.1, 'run'), (0.0, 'no_null')):
        torch.save({'meta': {'cfg': "model = dict(type='LatentDiffusion', denoiser=dict("
                                    f"type='DiT', num_heads=4, class_dropout_prob={dropout}))"},
                    'state_dict': {f'denoiser.{k}': v for k, v in dit.state_dict().items()}},
                   tmp_path / f'{name}.pth')
    export([str(tmp_path / 'run.pth'), '--diffusers', '--out', str(tmp_path / 'from_run')])
    assert DiTTransformer2DModel.from_pretrained(tmp_path / 'from_run').config[
        'num_attention_heads'] == 4
    with pytest.raises(UserError, match=r'no_null\.pth: trained with class_dropout_prob=0, so '
                                        r'its label table has no null-class row'):
        export([str(tmp_path / 'no_null.pth'), '--diffusers', '--out', str(tmp_path / 'n')])
    # a run of another denoiser (one's own): it asked for --num-heads, then said 'not a
    # class-conditional DiT's weights'
    torch.save({'meta': {'cfg': "model = dict(type='LatentDiffusion', denoiser=dict("
                                "type='MyMixer', width=64))"},
                'state_dict': {f'denoiser.{k}': v for k, v in dit.state_dict().items()}},
               tmp_path / 'mixer.pth')
    with pytest.raises(UserError, match=r"mixer\.pth: --diffusers writes an image DiT as "
                                        r"diffusers' DiTTransformer2DModel; this run's denoiser "
                                        r'is a MyMixer: export it without --diffusers'):
        export([str(tmp_path / 'mixer.pth'), '--diffusers', '--out', str(tmp_path / 'm')])
    # a 2x8 grid has the 16 tokens of a 4x4 one: it was written as sample_size 8
    wide = DiT(**dict(cfg, input_size=(4, 16))).eval()
    torch.save(wide.state_dict(), tmp_path / 'wide.pt')
    with pytest.raises(UserError, match=r"16-token position table is not a square grid's"):
        export([str(tmp_path / 'wide.pt'), '--diffusers', '--num-heads', '4', '--out',
                str(tmp_path / 'w')])
    # DiT's update_ema averages the frozen pos_embed too: EMA weights (every released
    # DiT file, a fast-DiT 'ema') hold a table 1e-4 off the sin-cos one, which was
    # refused as 'not a square grid's'
    drifted = {k: v.clone() for k, v in dit.state_dict().items()}
    table = drifted['pos_embed']
    for _ in range(2000):  # update_ema(decay=0.9999) of a table in float32
        table.mul_(0.9999).add_(table * 1.0001, alpha=1e-4)
    assert 5e-5 < (table - dit.state_dict()['pos_embed']).abs().max() < 1e-3
    torch.save(drifted, tmp_path / 'ema.pt')
    capsys.readouterr()
    export([str(tmp_path / 'ema.pt'), '--diffusers', '--num-heads', '4', '--out',
            str(tmp_path / 'from_ema')])
    # diffusers' DiTPipeline takes class 1000 as the null class: with guidance, an
    # IndexError for any other class count (walk-through p)
    rows = dit.y_embedder.embedding_table.weight.shape[0]
    assert (f"ema.pt: {rows - 1} classes: diffusers' DiTPipeline takes class 1000 as the "
            'null class') in capsys.readouterr().err
    assert DiTTransformer2DModel.from_pretrained(tmp_path / 'from_ema').config[
        'sample_size'] == dit.x_embedder.num_patches ** 0.5 * dit.patch_size


def test_sharded_weights_and_the_hub_cache_layout(pipeline, tmp_path):
    # weights in several files (an index naming the shards; .bin too), and the
    # Hugging Face cache folder itself (models--org--name/snapshots/HASH)
    cfg, ref, _ = pipeline
    expected = rekey_reference(ref)
    for safe in (True, False):
        folder = tmp_path / f'sharded_{safe}'
        ref.save_pretrained(folder, safe_serialization=safe, max_shard_size='20KB')
        assert len(list(folder.glob('diffusion_pytorch_model-*'))) > 1
        state = load_checkpoint_file(str(folder))
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, atol=1e-6, rtol=0, msg=key)
    cache = tmp_path / 'models--facebook--DiT-tiny'
    save_pipeline(ref, cache / 'snapshots' / 'abc123')
    (cache / 'refs').mkdir()
    (cache / 'refs' / 'main').write_text('abc123')
    model = DiT(**cfg).eval()
    load_dit_checkpoint(model, str(cache))
    same_as_reference(cfg, ref, model)
    # a Transformer2DModel that is not a DiT (PixArt's norm) is named from its
    # config.json before any weight is read
    other = tmp_path / 'pixart'
    other.mkdir()
    (other / 'config.json').write_text(json.dumps({'_class_name': 'Transformer2DModel',
                                                   'norm_type': 'ada_norm_single'}))
    with pytest.raises(ValueError, match=r"pixart: a diffusers Transformer2DModel with "
                                         r"norm_type='ada_norm_single', not a DiT"):
        load_checkpoint_file(str(other))


def test_infer_says_which_weights_it_samples(pipeline, tmp_path):
    # a plain state dict (a diffusers folder, a released file) does not say whether its
    # weights are the EMA ones: infer and test said 'EMA weights where it has them' of
    # every file
    from types import SimpleNamespace

    from mmsora.apis.inference import load_weights
    cfg, ref, folder = pipeline
    holder = SimpleNamespace(denoiser=DiT(**cfg).eval())
    load_weights(holder, folder)
    assert holder.loaded_weights == 'one set of weights, EMA or not: the file does not say'
    state = {f'denoiser.{k}': v for k, v in holder.denoiser.state_dict().items()}
    torch.save({'meta': {'iter': 1}, 'state_dict': state,
                'ema_state_dict': {f'module.{k}': v for k, v in state.items()}},
               tmp_path / 'run.pth')
    for use_ema, said in ((True, 'EMA weights'), (False, 'trained weights')):
        load_weights(holder, str(tmp_path / 'run.pth'), use_ema=use_ema)
        assert holder.loaded_weights == said


@pytest.mark.parametrize('weights', ['diffusion_pytorch_model.safetensors',
                                     'diffusion_pytorch_model.bin'])
def test_a_folder_of_diffusers_weights_without_config_or_of_another_pipeline(
        pipeline, tmp_path, weights):
    """A transformer folder whose config.json is lost says so (it said 'give a
    checkpoint file', and the file then 'give the transformer folder'); a pipeline of
    another model (PixArt's) is named by its model_index.json."""
    from mmsora.utils.checkpoint_choice import resolve_checkpoint
    _, ref, _ = pipeline
    folder = tmp_path / 'transformer'
    ref.save_pretrained(folder, safe_serialization=weights.endswith('.safetensors'))
    os.remove(folder / 'config.json')
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint(str(folder))
    assert str(info.value) == (f'{folder}: diffusers weights ({weights}) without the '
                               'config.json they were saved with: put it back beside them '
                               '(save_pretrained writes both)')
    other = tmp_path / 'pixart'
    other.mkdir()
    with open(other / 'model_index.json', 'w') as f:
        json.dump({'_class_name': 'PixArtAlphaPipeline',
                   'transformer': ['diffusers', 'PixArtTransformer2DModel']}, f)
    with pytest.raises(FileNotFoundError, match=(
            rf"^{other} holds a diffusers PixArtAlphaPipeline \(its model_index.json\), "
            r"not a DiT's: give .* \(a DiTPipeline, or its transformer/\)$")):
        resolve_checkpoint(str(other))


def test_a_dit_folder_given_as_the_vae_says_what_to_give(pipeline):
    """It said what the folder holds and 'not a VAE this wrapper loads', not what to
    give (walk-through ah)."""
    from mmsora.models.vaes import AutoencoderKLWrapper
    folder = osp.join(pipeline[2], 'transformer')
    with pytest.raises(ValueError) as info:
        AutoencoderKLWrapper(pretrained_path=folder).check_folder()
    assert str(info.value) == (
        f"VAE folder {folder!r} holds DiTTransformer2DModel weights (its config.json), not "
        "AutoencoderKL ones: not a VAE: give a diffusers AutoencoderKL folder (its "
        "config.json names AutoencoderKL; a pipeline's is its vae/)")


# what a diffusers DiT folder without its weights lacks: the names every diffusers
# folder (a VAE's, a Stable Cascade prior's) is judged by
NO_WEIGHTS = ('no weights (diffusion_pytorch_model.safetensors or .bin, sharded with its '
              '.index.json, or a variant such as diffusion_pytorch_model.fp16.safetensors)')


def test_a_dit_pipeline_folder_missing_part_of_its_transformer_says_which(pipeline,
                                                                          tmp_path):
    """A DiTPipeline folder whose transformer/ lost its config.json was told it held 'a
    diffusers DiTPipeline, not a DiT's: give ... (a DiTPipeline, or its transformer/)'."""
    from mmsora.utils.checkpoint_choice import resolve_checkpoint
    folder = tmp_path / 'pipe'
    shutil.copytree(pipeline[2], folder)
    transformer = folder / 'transformer'

    def message():
        with pytest.raises(FileNotFoundError) as info:
            resolve_checkpoint(str(folder))
        return str(info.value)
    where = f'{folder} holds a diffusers DiTPipeline (its model_index.json)'
    put_back = ': put back what save_pretrained wrote there (config.json beside the weights)'
    config = (transformer / 'config.json').read_text()
    os.remove(transformer / 'config.json')
    assert message() == f'{where} whose transformer/ has no config.json{put_back}'
    (transformer / 'config.json').write_text('{"_class_name": ')  # cut short
    assert message() == f'{where} whose transformer/ has a config.json that is not a JSON ' \
        f'object{put_back}'
    (transformer / 'config.json').write_text(config.replace('DiTTransformer2DModel',
                                                            'PixArtTransformer2DModel'))
    assert message() == (f'{where} whose transformer/ holds a diffusers '
                         'PixArtTransformer2DModel (its config.json), not a diffusers '
                         "DiTTransformer2DModel: give a DiT's pipeline or checkpoint")
    os.remove(transformer / 'config.json')
    os.remove(transformer / 'diffusion_pytorch_model.safetensors')
    assert message() == (f'{where} whose transformer/ has no config.json and {NO_WEIGHTS}'
                         f'{put_back}')
    shutil.rmtree(transformer)
    assert message() == (f"{where} without its transformer/ folder (the DiT's config.json "
                         "and weights): copy it back, or give the DiT's checkpoint file")


@pytest.mark.parametrize('class_name', ['DiTTransformer2DModel', 'Transformer2DModel'])
def test_a_dit_folder_without_weights_says_they_are_missing(pipeline, tmp_path, capsys,
                                                            class_name):
    """A DiT transformer folder (or a DiTPipeline's transformer/) that kept its
    config.json but not its weights is read as a DiT folder by every tool
    (resolve_checkpoint takes it), which then said 'a diffusers DiT folder (config.json)
    without its weights (one of ..., or a shard index)'; a second wording, in a branch
    of not_a_checkpoint_folder no tool reached, said another list. One line now, from
    where the weights load, naming every file they are read from."""
    from types import SimpleNamespace

    from mmsora.apis.inference import load_weights
    from mmsora.utils.checkpoint_choice import resolve_checkpoint
    from mmsora.utils.cli import run_cli
    from tools.export_denoiser import main as export
    folder = tmp_path / 'pipe'
    shutil.copytree(pipeline[2], folder)
    transformer = folder / 'transformer'
    config = (transformer / 'config.json').read_text()
    (transformer / 'config.json').write_text(config.replace('DiTTransformer2DModel',
                                                            class_name))
    weights = transformer / 'diffusion_pytorch_model.safetensors'
    kept = weights.read_bytes()
    os.remove(weights)
    said = (f"{transformer} holds a diffusers {class_name}'s config.json but {NO_WEIGHTS}: "
            'copy them in beside it (save_pretrained writes both), or give the folder '
            'that holds them')
    for path in (str(folder), str(transformer)):
        assert resolve_checkpoint(path) == path  # (a DiT folder: read, not refused)
        with pytest.raises(FileNotFoundError) as info:
            load_checkpoint_file(path)  # --load-from, pretrained_denoiser, export
        assert str(info.value) == said
        holder = SimpleNamespace(denoiser=DiT(**pipeline[0]).eval())
        with pytest.raises(FileNotFoundError) as info:
            load_weights(holder, path)  # tools/infer.py's and tools/test.py's loader
        assert str(info.value) == said
        assert run_cli(lambda: export([path, '--out', str(tmp_path / 'dit.pt')])) == 2
        assert capsys.readouterr().err == f'error: {said}\n'
    # a variant alone, or a shard index alone, of those it names is read
    variant = transformer / 'diffusion_pytorch_model.fp16.safetensors'
    variant.write_bytes(kept)
    expected = sorted(rekey_reference(pipeline[1]))
    assert sorted(load_checkpoint_file(str(folder))) == expected
    shard = 'diffusion_pytorch_model.fp16-00001-of-00001.safetensors'
    os.rename(variant, transformer / shard)
    from safetensors.torch import load_file
    (transformer / 'diffusion_pytorch_model.safetensors.index.fp16.json').write_text(
        json.dumps({'weight_map': {k: shard for k in load_file(transformer / shard)}}))
    assert sorted(load_checkpoint_file(str(folder))) == expected
