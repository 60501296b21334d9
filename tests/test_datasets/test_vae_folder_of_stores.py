"""The VAE folder a latent store records (extract_features.py --vae), as training reads
it (store_checks: the VAE's class, the note of another folder) and as a rerun compares
it, each from another working directory than the extraction's."""
import glob
import json
import os.path as osp
import shutil

import pytest
from mmengine.config import Config

from mmsora.datasets import LatentStore
from mmsora.datasets.store_checks import FRAME_VAE, check_store_vae, store_vae
from tests.extract_tools import interrupted, run_extract

pytestmark = pytest.mark.usefixtures('kept_environ')


def set_recorded_vae(out, folder):
    """Write ``folder`` as the VAE a store's records name (as an older mmsora recorded
    the command line's)."""
    for path in glob.glob(osp.join(out, 'parts', '*.json')) + [osp.join(out, 'index.json')]:
        if osp.exists(path):
            with open(path) as f:
                record = json.load(f)
            record['vae'] = folder
            with open(path, 'w') as f:
                json.dump(record, f)


def vae_config(path):
    return Config(dict(model=dict(vae=dict(type=FRAME_VAE, pretrained_path=path))))


def test_training_reads_the_vae_of_a_store_extracted_elsewhere(image_folder, tiny_vae_dir,
                                                               tmp_path, monkeypatch, capsys):
    """Recorded as given (relative), the folder was read from the training run's
    working directory: the VAE's class not found there, or another folder of that
    name taken for the store's (a note that the config's VAE, the very one, differs)."""
    near, name = osp.split(tiny_vae_dir)
    out = str(tmp_path / 'store')
    monkeypatch.chdir(near)
    assert run_extract(image_folder, out, name)['complete']
    index = LatentStore(out).index
    assert index['vae'] == tiny_vae_dir
    (tmp_path / 'empty').mkdir()
    monkeypatch.chdir(tmp_path / 'empty')
    assert store_vae(index) == (FRAME_VAE, 'AutoencoderKL')
    # a folder of the same name (another copy of a VAE) where training runs
    shutil.copytree(tiny_vae_dir, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    check_store_vae(vae_config(tiny_vae_dir), index, out)
    assert 'the latents were encoded by' not in capsys.readouterr().err
    check_store_vae(vae_config(str(tmp_path / name)), index, out)
    assert (f'note: {out}: the latents were encoded by the VAE at {tiny_vae_dir} but '
            f'model.vae.pretrained_path is {tmp_path / name}') in capsys.readouterr().err


def test_a_store_is_resumed_from_another_directory(image_folder, tiny_vae_dir, tmp_path,
                                                   monkeypatch):
    """Begun with a relative --vae, a rerun from elsewhere with the same folder given
    absolute was refused as another VAE; a store that records a relative folder (an
    older mmsora's) is still resumed from its working directory."""
    near, name = osp.split(tiny_vae_dir)
    begun = str(tmp_path / 'begun')
    monkeypatch.chdir(near)
    interrupted(lambda: run_extract(image_folder, begun, name))
    monkeypatch.chdir(tmp_path)
    assert run_extract(image_folder, begun, tiny_vae_dir)['complete']
    assert LatentStore(begun).index['vae'] == tiny_vae_dir

    old = str(tmp_path / 'old')
    monkeypatch.chdir(near)
    interrupted(lambda: run_extract(image_folder, old, name))
    set_recorded_vae(old, name)
    assert run_extract(image_folder, old, name)['complete']


def test_no_note_of_another_vae_for_a_store_from_another_machine_or_its_pipeline(
        tiny_vae_dir, tmp_path, capsys):
    """A store copied from another machine records a folder of that one (not here: no
    note naming it as the folder to set); a pipeline folder recorded and its vae/
    subfolder in the config (or the other way) are one VAE."""
    index = dict(vae=str(tmp_path / 'elsewhere' / 'sd-vae'), latent_shape=[4, 8, 8])
    check_store_vae(vae_config(tiny_vae_dir), index, 'STORE')
    assert 'the latents were encoded by' not in capsys.readouterr().err
    pipe = tmp_path / 'pipe'
    pipe.mkdir()
    shutil.copytree(tiny_vae_dir, pipe / 'vae')
    for recorded, given in [(str(pipe), str(pipe / 'vae')), (str(pipe / 'vae'), str(pipe))]:
        check_store_vae(vae_config(given), dict(vae=recorded, latent_shape=[4, 8, 8]),
                        'STORE')
        assert 'the latents were encoded by' not in capsys.readouterr().err, recorded
