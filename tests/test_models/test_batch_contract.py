"""What a dataset and an objective of one's own hand to LatentDiffusion (README, "Your
own modules"): a batch key it does not take, items of different shapes and an
objective's loss() that returns a tensor are one line each. Before: "forward() got an
unexpected keyword argument 'x'", torch's stack error under a DataLoader traceback,
and an IndexError inside LatentDiffusion.loss."""
import pytest
import torch
from mmengine.optim import OptimWrapper
from torch.utils.data import DataLoader, Dataset, default_collate

from mmsora.diffusion import GaussianDiffusion
from mmsora.models import LatentDiffusion
from mmsora.utils.error_messages import explain_error


def tiny_model(**kwargs):
    return LatentDiffusion(denoiser=dict(type='DiT', input_size=8, depth=1, hidden_size=32,
                                         num_heads=2, in_channels=4, num_classes=3),
                           latent_shape=(4, 8, 8), num_classes=3, **kwargs)


def train_step(model, batch):
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0))
    return model.train_step(batch, optim)


def test_a_batch_key_the_model_does_not_take():
    model = tiny_model()
    batch = dict(x=torch.randn(2, 4, 8, 8), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError) as info:
        train_step(model, batch)
    assert explain_error(info.value) == (
        "the batch holds 'x', which LatentDiffusion does not take: a dataset's items "
        "give 'latents' (or 'images' with a model.vae) with 'labels', or 'text_embeds' / "
        "'text_mask' (/ 'pooled_text_embeds') or 'caption' for a text model (README: "
        "'A dataset ... returns dict items')")
    # The keys it takes (and sample_idx, which the loss guard may leave) train.
    losses = train_step(model, dict(latents=batch['x'], labels=batch['labels'],
                                    sample_idx=torch.tensor([0, 1])))
    assert torch.isfinite(losses['loss'])


class Uneven(Dataset):
    """Items of two sizes."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return dict(latents=torch.zeros(4, 8 if i % 2 == 0 else 6, 8), labels=0)


@pytest.mark.parametrize('workers', [0, 1])
def test_items_of_different_shapes(workers):
    loader = DataLoader(Uneven(), batch_size=2, num_workers=workers, collate_fn=default_collate)
    with pytest.raises(RuntimeError) as info:
        next(iter(loader))
    found = ('([4, 8, 8] at entry 0 and [4, 6, 8] at entry 1 of a batch)' if workers == 0
             else "(a DataLoader worker could not stack a batch: 'Trying to resize storage "
                  "that is not resizable')")
    assert explain_error(info.value) == (
        f"the dataset's items differ in shape {found}: a batch stacks them, so each key "
        'needs one shape in every item (crop or resize them to one size)')


def test_a_stack_of_ones_own_is_not_blamed_on_the_dataset():
    with pytest.raises(RuntimeError) as info:
        torch.stack([torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)])
    assert explain_error(info.value) is None  # a traceback: a bug, not the data's


class TensorLoss(GaussianDiffusion):
    """An objective of one's own whose loss returns the loss tensor itself."""

    def loss(self, model, x0, model_kwargs=None):
        return super().loss(model, x0, model_kwargs)['loss']


def test_an_objective_loss_that_returns_a_tensor():
    model = tiny_model()
    model.diffusion = TensorLoss(learn_sigma=True)
    with pytest.raises(ValueError, match=r"^TensorLoss.loss returned a Tensor: it returns a "
                                         r"dict whose 'loss' is the per-sample loss \(N,\) "
                                         r'\(other entries are logged\)$'):
        model.loss(latents=torch.randn(2, 4, 8, 8), labels=torch.tensor([0, 1]))
