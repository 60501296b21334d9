"""The temporal layers of StableCascadeVideo learn what a frame-wise model cannot.

Toy: clips whose frames all copy frame 0 (white noise, so nothing in one frame tells
about another pixel). A frame-wise denoiser can do no better than ``E[eps | x_t]`` per
frame, MSE ``alpha_bar(t)`` (the Bayes bound for unit-variance frames); a video model
can average the T noisy copies. First the image model (spatial part, temporal layers
at zero) is trained, then it is frozen and only the temporal layers train.
"""
import torch

from mmsora.diffusion import WuerstchenDiffusion
from mmsora.models import StableCascadeVideo
from tests.tiny_models import TINY_STAGE_C

FRAMES, SIZE, STEPS, BATCH = 4, 4, 50, 8


def copy_frame_zero_clips(n, generator=None):
    frame0 = torch.randn(n, 4, 1, SIZE, SIZE, generator=generator)
    return frame0.expand(n, 4, FRAMES, SIZE, SIZE).contiguous()


def train(model, diffusion, steps, lr=5e-3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = diffusion.loss(model, copy_frame_zero_clips(BATCH))['loss'].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_temporal_layers_learn_to_copy_frame_zero():
    torch.manual_seed(0)
    diffusion = WuerstchenDiffusion()
    g = torch.Generator().manual_seed(123)
    x0 = copy_frame_zero_clips(64, g)
    t, noise = torch.rand(64, generator=g), torch.randn(x0.shape, generator=g)

    def eval_loss(model):
        model.eval()
        with torch.no_grad():
            return (model(diffusion.q_sample(x0, t, noise), t) - noise).square().mean().item()

    # 1. The image model: only the spatial part trains (temporal layers stay zero).
    image = StableCascadeVideo(TINY_STAGE_C, cond_dropout_prob=0.0)
    for module in (image.temporal_down, image.temporal_up):
        module.requires_grad_(False)
    train(image, diffusion, STEPS)
    image_loss = eval_loss(image)
    bound = diffusion.alpha_bar(t).mean().item()  # best any frame-wise model can do

    # 2. Freeze it; train only the temporal layers.
    video = StableCascadeVideo(TINY_STAGE_C, cond_dropout_prob=0.0, freeze_spatial=True)
    video.load_state_dict(image.state_dict())
    spatial = {k: v.clone() for k, v in video.unet.state_dict().items()}
    assert eval_loss(video) == image_loss  # zero temporal layers: the image model
    train(video, diffusion, STEPS)
    video_loss = eval_loss(video)

    assert all(torch.equal(v, video.unet.state_dict()[k]) for k, v in spatial.items())
    assert image_loss > 0.9 * bound  # the image model is near its ceiling ...
    assert video_loss < 0.8 * bound  # ... which the temporal layers break through
    assert video_loss < 0.8 * image_loss, (image_loss, video_loss, bound)
