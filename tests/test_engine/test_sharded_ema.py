"""ShardedEMA / ShardedEMAHook (the EMA of --fsdp runs) against mmengine's EMA, on a
plain module (one process: each "shard" is the whole tensor). The sharded case runs
for real in tests/test_engine/test_fsdp_train.py."""
import copy

import pytest
import torch
from mmengine.model import ExponentialMovingAverage

from mmsora.engine import ShardedEMA, ShardedEMAHook


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        self.frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
        self.register_buffer('running', torch.zeros(4))
        self.register_buffer('count', torch.zeros((), dtype=torch.long))


def drive(model, emas, steps=7):
    """Move the weights and buffers; update each EMA after every move."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        with torch.no_grad():
            for t in [*model.parameters(), model.running]:
                t.add_(torch.randn(t.shape, generator=gen))
            model.count += 1
        for ema in emas:
            ema.update_parameters(model)


@pytest.mark.parametrize('update_buffers', [True, False])
@pytest.mark.parametrize('interval', [1, 3])
def test_same_average_and_state_dict_as_mmengines(update_buffers, interval):
    model = Net()
    ours = ShardedEMA(model, momentum=0.1, interval=interval, update_buffers=update_buffers)
    theirs = ExponentialMovingAverage(copy.deepcopy(model), momentum=0.1, interval=interval,
                                      update_buffers=update_buffers)
    drive(model, [ours, theirs])
    state, expected = ours.full_state_dict(model), theirs.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        if key == 'module.count' or (key == 'module.running' and not update_buffers):
            # what is not averaged is saved as the model holds it (mmengine copies
            # buffers at each update, integer ones at its first only)
            assert torch.equal(state[key], model.state_dict()[key[len('module.'):]])
        else:
            torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-6, msg=key)
    # Saving leaves the model's own weights alone.
    assert not torch.equal(state['module.fc.weight'], model.fc.weight)


def test_swap_round_trip_is_exact_and_load_restores_the_average():
    model = Net()
    ema = ShardedEMA(model, momentum=0.1, update_buffers=True)
    drive(model, [ema])
    trained = copy.deepcopy(model.state_dict())
    average = [t.clone() for t in ema.average]
    ema.swap()  # validation: the model holds the average
    index = [name for name, _ in model.named_parameters()].index('fc.weight')
    assert torch.equal(model.fc.weight, average[index])
    ema.swap()
    for key, value in trained.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(torch.equal(a, b) for a, b in zip(ema.average, average))

    state = ema.full_state_dict(model)
    other = ShardedEMA(model, momentum=0.1, update_buffers=True)  # a resumed process
    other.load_full_state_dict(model, state)
    assert other.steps == ema.steps == 7
    assert all(torch.equal(a, b) for a, b in zip(other.average, average))
    for key, value in trained.items():  # the model keeps its trained weights
        assert torch.equal(model.state_dict()[key], value), key


def test_bf16_weights_average_in_float32():
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    ema = ShardedEMA(model, momentum=1e-3)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters()
    for _ in range(50):
        with torch.no_grad():
            model.weight.fill_(2.0)
        ema.update_parameters()
    assert ema.average[0].dtype == torch.float32
    expected = 1.0 + (1 - (1 - 1e-3) ** 50)  # a bf16 average would stay at 1.0
    torch.testing.assert_close(ema.average[0], torch.full((4, 4), expected))


class FakeRunner:
    def __init__(self, model, resume=True):
        self.model, self._resume = model, resume
        self.iter, self.epoch, self.max_iters, self.max_epochs = 0, 0, 10, 1


def test_hook_resumes_before_run_as_flexible_runner_does():
    """FlexibleRunner loads the checkpoint before the hooks' before_run: the hook swaps
    the entries at once (the model loads the trained weights) and loads the average
    when it builds it; the checkpoint keeps mmengine's layout."""
    model = Net()
    hook = ShardedEMAHook(momentum=0.1, update_buffers=True)
    hook.before_run(FakeRunner(model))
    drive(model, [hook.ema_model])
    checkpoint = {'state_dict': copy.deepcopy(model.state_dict())}
    hook.before_save_checkpoint(FakeRunner(model), checkpoint)
    trained = {k[len('module.'):]: v for k, v in checkpoint['ema_state_dict'].items()
               if k.startswith('module.')}
    for key, value in model.state_dict().items():
        assert torch.equal(trained[key], value), key  # the raw weights under module.*
    average = [t.clone() for t in hook.ema_model.average]

    fresh = Net()
    resumed = ShardedEMAHook(momentum=0.1, update_buffers=True)
    loaded = copy.deepcopy(checkpoint)
    resumed.after_load_checkpoint(FakeRunner(fresh), loaded)  # before before_run
    fresh.load_state_dict(loaded['state_dict'])  # what the strategy loads next
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key  # trained, not EMA
    resumed.before_run(FakeRunner(fresh))
    assert resumed.ema_model.steps == 7
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema_model.average, average))


def test_sampling_model_swaps_an_average_that_is_not_a_copy():
    """The sampling hooks draw from the model holding the average inside
    sampling_model() and get the trained weights back, exactly, after it."""
    from mmsora.engine.hooks.sampling_model import sampling_model
    model = Net()
    hook = ShardedEMAHook(momentum=0.1)
    runner = FakeRunner(model)
    hook.before_run(runner)
    drive(model, [hook.ema_model])
    runner.hooks = [hook]
    trained = copy.deepcopy(model.state_dict())
    with sampling_model(runner) as inside:
        assert inside is model
        index = [name for name, _ in model.named_parameters()].index('fc.weight')
        assert torch.equal(model.fc.weight, hook.ema_model.average[index])
    for key, value in trained.items():
        assert torch.equal(model.state_dict()[key], value), key
    with sampling_model(runner, use_ema=False) as inside:
        assert torch.equal(inside.fc.weight, trained['fc.weight'])


def test_hook_refuses_another_average():
    with pytest.raises(ValueError, match='device'):
        ShardedEMAHook(device='cpu')
    with pytest.raises(ValueError, match='ShardedEMA'):
        ShardedEMAHook(ema_type='StochasticWeightAverage')
    with pytest.raises(ValueError, match='momentum'):
        ShardedEMA(Net(), momentum=0.0)


def _validation_worker(rank, world, port, detour, out):
    """Two AdamW steps of an FSDP model (an inner unit and the root's own layer),
    each with an EMA update, then with ``detour`` a validation forward with the
    average swapped in (EMAHook's before / after_val_epoch); keeps the next training
    forward."""
    import os

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        block = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU())
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), block, torch.nn.Linear(8, 2))
        model = FSDP(net, device_id=torch.device('cpu'), use_orig_params=True,
                     auto_wrap_policy=lambda module, recurse, **_: recurse
                     or module is block)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        ema = ShardedEMA(model, momentum=0.5)
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
        for _ in range(2):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            ema.update_parameters()
        if detour:
            ema.swap()
            with torch.no_grad():
                model.eval()
                model(x)
                model.train()
            ema.swap()
        with torch.no_grad():
            out[(detour, rank)] = model(x).clone()
    finally:
        dist.destroy_process_group()


def test_a_validation_with_the_average_swapped_in_leaves_fsdp_training_alone():
    """FSDP keeps the root unit's gathered weights after a forward for the backward;
    after a validation forward with the average swapped in, the next training
    forward found them gathered and ran on the average. The swap frees them."""
    import torch.multiprocessing as mp

    from tests.launch import free_port
    out = mp.Manager().dict()
    for detour in (False, True):
        mp.spawn(_validation_worker, args=(2, free_port(), detour, out), nprocs=2,
                 join=True)
    for rank in (0, 1):
        assert torch.equal(out[(True, rank)], out[(False, rank)]), rank


def test_the_swap_works_before_fsdps_first_forward():
    """FSDP sets its units up at the first forward; a swap before it (a resumed,
    finished run sampling at its end) has nothing gathered to free."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from mmsora.utils.fsdp_memory import fake_process_group
    with fake_process_group(2):
        model = FSDP(torch.nn.Linear(3, 4), device_id=torch.device('cpu'),
                     use_orig_params=True)
        ema = ShardedEMA(model, momentum=0.5)
        shards = [p.detach().clone() for p in model.parameters()]
        ema.swap()
        ema.swap()
        assert all(torch.equal(a, p) for a, p in zip(shards, model.parameters()))
