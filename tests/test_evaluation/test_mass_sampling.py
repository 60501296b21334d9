"""Mass sampling: the plan, the rank split, the ADM .npz, resuming from shards."""
import numpy as np
import pytest
import torch

from mmsora.apis import mass_sample, rank_batches, sample_plan, to_uint8_samples
from mmsora.utils.cli import UserError


def fake_sample(seeds, labels=None, prompts=None, **kwargs):
    """Pictures that depend only on each sample's seed, like LatentDiffusion's."""
    assert (labels is None) != (prompts is None)
    return torch.stack([torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(s)) * 2 - 1
                        for s in seeds])


def test_rank_batches_cover_every_index_once_for_any_world_size():
    for world in (1, 2, 3, 5):
        got = sorted(i for r in range(world) for _, idx in rank_batches(23, 4, r, world)
                     for i in idx)
        assert got == list(range(23))
    # The batches themselves do not depend on the world size.
    one = [list(idx) for _, idx in rank_batches(23, 4, 0, 1)]
    two = sorted([list(idx) for r in (0, 1) for _, idx in rank_batches(23, 4, r, 2)])
    assert one == two


def test_sample_plan_cycles_labels_and_prompts():
    plan = sample_plan(5, [3, 7], seed=10, prompts=['a', 'b', 'c'])
    assert plan == dict(labels=[3, 7, 3, 7, 3], seeds=[10, 11, 12, 13, 14],
                        prompts=['a', 'b', 'c', 'a', 'b'])
    with pytest.raises(ValueError, match='num_samples'):
        sample_plan(0, [0])


def test_uint8_quantisation_is_dits():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0]).view(1, 3, 1, 2)
    got = to_uint8_samples(x)                                 # (1, 1, 2, 3)
    expected = np.clip(127.5 * x.numpy() + 128.0, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected.transpose(0, 2, 3, 1))
    assert to_uint8_samples(torch.zeros(2, 3, 4, 5, 6)).shape == (2, 4, 5, 6, 3)
    with pytest.raises(ValueError, match='need a VAE'):
        to_uint8_samples(torch.zeros(1, 4, 8, 8))


def test_npz_files_and_resume(tmp_path, capsys):
    out = tmp_path / 'samples.npz'
    calls = []

    def counting(seeds, **kwargs):
        calls.append(list(seeds))
        return fake_sample(seeds, **kwargs)

    mass_sample(None, 7, [0, 1, 2], seed=5, batch_size=3, out=str(out),
                sample_dir=str(tmp_path / 'files'), sample_fn=counting, progress=False)
    with np.load(out) as data:
        arr, labels = data['arr_0'], data['arr_1']
    assert arr.dtype == np.uint8 and arr.shape == (7, 4, 5, 3)
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(arr, to_uint8_samples(fake_sample(range(5, 12), labels)))
    assert calls == [[5, 6, 7], [8, 9, 10], [11]]
    assert sorted(p.name for p in (tmp_path / 'files').iterdir()) == [
        *(f'{i:06d}.png' for i in range(7)), 'labels.txt']
    assert (tmp_path / 'files' / 'labels.txt').read_text() == '0\n1\n2\n0\n1\n2\n0\n'
    # The folder as DiT's create_npz_from_sample_folder reads it (it named files
    # {i:06d}_label{y}.png, which that FileNotFoundError'd on)
    from PIL import Image
    dit_read = np.stack([np.asarray(Image.open(f"{tmp_path / 'files'}/{i:06d}.png"))
                         .astype(np.uint8) for i in range(7)])
    np.testing.assert_array_equal(dit_read, arr)
    assert not (tmp_path / 'samples.npz.parts').exists()

    # A crash after the first batch: the rerun keeps that shard and samples the rest.
    def crashing(seeds, **kwargs):
        if seeds[0] > 5:
            raise RuntimeError('out of memory')
        return fake_sample(seeds, **kwargs)

    out2 = tmp_path / 'again.npz'
    with pytest.raises(RuntimeError):
        mass_sample(None, 7, [0, 1, 2], seed=5, batch_size=3, out=str(out2),
                    sample_fn=crashing, progress=False)
    calls.clear()
    capsys.readouterr()
    mass_sample(None, 7, [0, 1, 2], seed=5, batch_size=3, out=str(out2),
                sample_fn=counting, progress=False)
    assert calls == [[8, 9, 10], [11]]
    assert capsys.readouterr().out == (f'resuming: 1 of 3 batches of 3 already sampled '
                                       f'in {out2}.parts\n')
    with np.load(out2) as data:
        np.testing.assert_array_equal(data['arr_0'], arr)


def test_text_models_get_prompts_not_labels(tmp_path):
    out = tmp_path / 'text.npz'
    mass_sample(None, 3, [0], batch_size=2, prompts=['a cat', 'a dog'], out=str(out),
                sample_dir=str(tmp_path / 'files'), sample_fn=fake_sample, progress=False)
    with np.load(out) as data:
        assert sorted(data.files) == ['arr_0', 'prompts']
        assert list(data['prompts']) == ['a cat', 'a dog', 'a cat']
    assert sorted(p.name for p in (tmp_path / 'files').iterdir()) == [
        '000000.png', '000001.png', '000002.png', 'prompts.txt']
    assert (tmp_path / 'files' / 'prompts.txt').read_text() == 'a cat\na dog\na cat\n'


def test_shards_of_another_run_are_refused(tmp_path):
    out = str(tmp_path / 'x.npz')

    def crashing(seeds, **kwargs):
        raise RuntimeError('killed')

    with pytest.raises(RuntimeError):
        mass_sample(None, 4, [0], batch_size=2, out=out, sample_fn=crashing, progress=False)
    with pytest.raises(UserError, match='shards of a different sampling run'):
        mass_sample(None, 4, [0], seed=1, batch_size=2, out=out, sample_fn=fake_sample,
                    progress=False)
    # A changed weight is a different run too.
    model = torch.nn.Linear(2, 2)
    out2 = str(tmp_path / 'y.npz')
    with pytest.raises(RuntimeError):
        mass_sample(model, 4, [0], batch_size=2, out=out2, sample_fn=crashing, progress=False)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(UserError, match='different sampling run'):
        mass_sample(model, 4, [0], batch_size=2, out=out2, sample_fn=fake_sample,
                    progress=False)


def test_clips_go_to_npz_and_mp4(tmp_path):
    from mmsora.utils.video_io import read_video_frames

    def clips(seeds, labels=None, **kwargs):
        return torch.stack([torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(s))
                            * 2 - 1 for s in seeds])

    out = tmp_path / 'clips.npz'
    mass_sample(None, 2, [0], batch_size=2, out=str(out), sample_dir=str(tmp_path / 'v'),
                sample_fn=clips, fps=4, progress=False)
    with np.load(out) as data:
        assert data['arr_0'].shape == (2, 4, 8, 8, 3)
    assert read_video_frames(str(tmp_path / 'v' / '000001.mp4')).shape == (4, 8, 8, 3)


def counting(calls):
    """fake_sample, recording the seeds of each call."""
    def sample(seeds, **kwargs):
        calls.append(list(seeds))
        return fake_sample(seeds, **kwargs)
    return sample


def crash_at(first_bad_seed):
    """A sampler killed when it reaches a seed."""
    def crashing(seeds, **kwargs):
        if max(seeds) >= first_bad_seed:
            raise RuntimeError('killed')
        return fake_sample(seeds, **kwargs)
    return crashing


def test_damaged_shards_are_sampled_again(tmp_path, capsys, monkeypatch):
    out = tmp_path / 'x.npz'
    parts = tmp_path / 'x.npz.parts'
    with pytest.raises(RuntimeError):  # 6 batches of 3; killed in the last
        mass_sample(None, 18, [0, 1], seed=5, batch_size=3, out=str(out),
                    sample_fn=crash_at(20), progress=False)
    shard = [parts / f'batch_{k:06d}.npz' for k in range(6)]
    shard[1].write_bytes(shard[1].read_bytes()[:300])          # cut short
    shard[2].write_text('not a shard')                          # text
    shard[3].write_bytes(b'')                                   # power loss
    shard[4].write_bytes(shard[0].read_bytes())                 # other samples
    calls, synced = [], []
    monkeypatch.setattr('os.fsync', synced.append)
    capsys.readouterr()
    mass_sample(None, 18, [0, 1], seed=5, batch_size=3, out=str(out), progress=False,
                sample_fn=counting(calls))
    assert calls == [[8, 9, 10], [11, 12, 13], [14, 15, 16], [17, 18, 19], [20, 21, 22]]
    assert len(synced) == 5  # each new shard is on disk before it is renamed
    warnings = capsys.readouterr().err.splitlines()
    assert [w.split(' (')[0] for w in warnings] == [
        f'warning: {shard[k]} cannot be read' for k in (1, 2, 3, 4)]
    assert all(w.endswith('): sampled again') for w in warnings)
    with np.load(out) as data:
        np.testing.assert_array_equal(data['arr_0'],
                                      to_uint8_samples(fake_sample(range(5, 23), [0])))


def test_sample_dir_gets_the_files_of_kept_shards(tmp_path):
    from PIL import Image
    out = str(tmp_path / 'x.npz')
    with pytest.raises(RuntimeError):  # killed after 2 of 5 batches
        mass_sample(None, 10, [0], batch_size=2, out=out, sample_fn=crash_at(4),
                    progress=False)
    mass_sample(None, 10, [0], batch_size=2, out=out, sample_dir=str(tmp_path / 'sd2'),
                sample_fn=fake_sample, progress=False)
    names = sorted(p.name for p in (tmp_path / 'sd2').glob('*.png'))
    assert names == [f'{i:06d}.png' for i in range(10)]
    with np.load(out) as data:
        np.testing.assert_array_equal(
            np.stack([np.asarray(Image.open(tmp_path / 'sd2' / n)) for n in names]),
            data['arr_0'])
    # A file lost from a kept shard's batch (killed while writing) is written again.
    with pytest.raises(RuntimeError):
        mass_sample(None, 4, [0], batch_size=2, out=out, sample_dir=str(tmp_path / 'sd3'),
                    sample_fn=crash_at(2), progress=False)
    (tmp_path / 'sd3' / '000001.png').unlink()
    mass_sample(None, 4, [0], batch_size=2, out=out, sample_dir=str(tmp_path / 'sd3'),
                sample_fn=fake_sample, progress=False)
    assert len(list((tmp_path / 'sd3').glob('*.png'))) == 4


def test_refusal_names_what_differs(tmp_path):
    out = str(tmp_path / 'x.npz')
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError):
        mass_sample(model, 4, [0, 1], batch_size=2, out=out, sample_fn=crash_at(2),
                    progress=False, num_steps=250)
    with pytest.raises(UserError, match=r'different sampling run \(seed 0 -> 1, batch_size 2 '
                       r'-> 1, eta unset -> 0.5, num_steps 250 -> 200, other labels, other '
                       r'weights: another checkpoint, or --no-ema\); delete it'):
        mass_sample(torch.nn.Linear(2, 2), 4, [1, 0], seed=1, batch_size=1, out=out,
                    sample_fn=fake_sample, progress=False, num_steps=200, eta=0.5)
    with pytest.raises(UserError, match=r'run \(num_samples 4 -> 3, other prompts\);'):
        mass_sample(model, 3, [0, 1], batch_size=2, out=out, sample_fn=fake_sample,
                    prompts=['a cat'], progress=False, num_steps=250)
    # A record this code cannot read: the general message.
    (tmp_path / 'x.npz.parts' / 'run.json').write_text('3f2a9c')
    with pytest.raises(UserError, match=r'run \(other settings, labels or weights\);'):
        mass_sample(model, 4, [0, 1], out=out, sample_fn=fake_sample, progress=False)


def test_more_samples_keep_the_full_batches_of_a_killed_run(tmp_path, capsys):
    class KilledAfterLastBatch:  # its shards are all written, the .npz is not
        def process(self, data_samples):
            if data_samples[-1]['index'] == 6:
                raise RuntimeError('killed')

    out = str(tmp_path / 'x.npz')
    with pytest.raises(RuntimeError):  # batches [0, 3), [3, 6) and the short [6, 7)
        mass_sample(None, 7, [0, 1, 2], seed=5, batch_size=3, out=out, sample_fn=fake_sample,
                    evaluator=KilledAfterLastBatch(), progress=False)
    with pytest.raises(UserError, match=r'run \(num_samples 7 -> 12, seed 5 -> 6\)'):
        mass_sample(None, 12, [0, 1, 2], seed=6, batch_size=3, out=out,
                    sample_fn=fake_sample, progress=False)
    calls = []
    capsys.readouterr()
    mass_sample(None, 12, [0, 1, 2], seed=5, batch_size=3, out=out, progress=False,
                sample_fn=counting(calls))
    assert calls == [[11, 12, 13], [14, 15, 16]]  # the short batch is drawn in full
    printed = capsys.readouterr()
    assert printed.out.startswith('resuming: 2 of 4 batches') and not printed.err
    with np.load(out) as data:
        np.testing.assert_array_equal(data['arr_0'],
                                      to_uint8_samples(fake_sample(range(5, 17), [0])))
        np.testing.assert_array_equal(data['arr_1'], [0, 1, 2] * 4)
