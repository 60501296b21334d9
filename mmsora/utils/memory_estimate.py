"""Training memory of a config, counted without a GPU and without computing anything.

One training step (two, so the optimizer states exist) runs on *fake* tensors
(``torch._subclasses.FakeTensorMode``: shapes, dtypes and autograd, no data), while
:class:`LiveTensorBytes` follows every tensor storage the step creates and frees. Its
peak is the peak of live tensor bytes; on the CPU it is what torch's allocator reports
for the same step on real tensors, but for buffers that kernels allocate inside
themselves (``tests/test_utils/test_memory_estimate.py``), so it is what a GPU's
``torch.cuda.max_memory_allocated`` shows, up to the kernels that differ between
devices. Several GPUs add DDP's gradient buckets (counted in closed form). A card needs
a little more: the CUDA context and the caching allocator's unused blocks (the
``headroom`` of :func:`usable_bytes`).

The step is the one ``tools/train.py`` runs: the config's denoiser and objective
(``model.diffusion.loss``), the config's optimizer (fused Adam/AdamW, as on CUDA),
an averaged copy of the model when the config has an ``EMAHook``, and
autocast over fp32 weights for ``--amp``. With gradient accumulation
(``optim_wrapper.accumulative_counts`` > 1) the gradients of the first micro-batch
stay through the forward of the next, which then holds activations and gradients at
once: two micro-batches are counted before each optimizer step (later ones repeat
the second). Latents and text embeddings come from the
batch (pre-extracted), so the VAE and the text encoder are not in the step.

With a DeepSpeed ZeRO-1 / ZeRO-2 config (``tools/train.py --deepspeed``) the step is
DeepSpeed's instead: the module cast to the training dtype, the float32 master
weights and optimizer states of this process's partition, the gradient reduction
buckets allocated at the backward's first gradient, the reduced gradients of the
partition from the first bucket's reduction, and the step's copies of them
(:mod:`mmsora.utils.zero_memory`), all in the same timeline as the activations; the
EMA is a float32 average of the partition (:mod:`mmsora.engine.zero_partition_ema`).
With a ZeRO-3 config DeepSpeed's engine runs the step itself, as one of the processes
would, over fake collectives (:mod:`mmsora.utils.zero3_memory`).

With an FSDP strategy (``tools/train.py --fsdp``) FSDP itself runs the step, as one of
the processes would (:mod:`mmsora.utils.fsdp_memory`): the shards, the units gathered
for their forward and backward, the gradients reduce-scattered into shards, and the
optimizer states and EMA (:class:`~mmsora.engine.sharded_ema.ShardedEMA`) over the
shards.
"""
import copy
import weakref
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Optional, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

from .trained_settings import keyword_defaults
from .training_inputs import denoiser_kwargs, ema_hook_cfg, training_model_cfg

__all__ = ['LiveTensorBytes', 'MemoryEstimate', 'estimate_training_memory',
           'configured_grad_checkpointing',
           'largest_batch', 'largest_fitting_batch', 'secant_guess', 'usable_bytes',
           'GiB', 'build_optimizer']

GiB = 2 ** 30
_AMP_DTYPES = {None: None, 'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
_FSDP_RANKS = {}  # (model config, FSDP strategy, processes) -> the rank counted


class LiveTensorBytes(TorchDispatchMode):
    """Count the bytes of every tensor storage alive, and their peak.

    A storage is counted when an operator first returns a tensor on it, and
    uncounted when it is freed; views and in-place results share their storage.
    A storage resized in place (``UntypedStorage.resize_``: FSDP frees a gathered
    flat parameter by resizing its storage to 0 bytes and gathers into it again) is
    counted at its new size. Works on real and on fake tensors.
    """

    _active = []  # the counters entered (nested ones too), told of storage resizes
    _resize = None  # torch's UntypedStorage.resize_, while one is active
    _resize_is_own = False  # whether the class itself defined it (or inherited it)

    def __init__(self):
        super().__init__()
        self.live = {}  # storage id -> bytes
        self.current = 0
        self.peak = 0

    def __enter__(self):
        if not LiveTensorBytes._active:
            _follow_storage_resizes(True)
        LiveTensorBytes._active.append(self)
        try:
            return super().__enter__()
        except BaseException:
            self._leave()
            raise

    def __exit__(self, *exc):
        self._leave()
        return super().__exit__(*exc)

    def _leave(self) -> None:
        LiveTensorBytes._active.remove(self)
        if not LiveTensorBytes._active:
            _follow_storage_resizes(False)

    def _resized(self, storage, nbytes: int) -> None:
        key = storage._cdata
        if key in self.live:
            self.current += nbytes - self.live[key]
            self.live[key] = nbytes
            self.peak = max(self.peak, self.current)

    def _free(self, key) -> None:
        self.current -= self.live.pop(key)

    def _add(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == 'meta':  # shapes only: no memory anywhere
            return
        storage = tensor.untyped_storage()
        key = storage._cdata  # the C++ storage: stable, unlike the Python wrapper's id
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += self.live[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        return out


def _follow_storage_resizes(on: bool) -> None:
    """Route ``UntypedStorage.resize_`` through the active counters (``on``), or put
    torch's own back as it was (torch 2.13's class inherits it from ``StorageBase``:
    the wrapper set on the class is deleted again)."""
    storage = torch.UntypedStorage
    if not on:
        if LiveTensorBytes._resize_is_own:
            storage.resize_ = LiveTensorBytes._resize
        else:
            del storage.resize_
        return
    LiveTensorBytes._resize_is_own = 'resize_' in vars(storage)
    LiveTensorBytes._resize = resize = storage.resize_

    def counted_resize(self, nbytes):
        out = resize(self, nbytes)
        for counter in LiveTensorBytes._active:
            counter._resized(self, nbytes)
        return out
    storage.resize_ = counted_resize


@dataclass
class MemoryEstimate:
    """Peak tensor memory of one training step, in bytes, and what stays between steps."""
    batch_size: int
    peak: int              # the step's peak of live tensor bytes (all of the below)
    weights: int           # the model's parameters and buffers
    ema: int               # EMAHook's averaged copy (ZeRO-1/2: this process's part)
    # e.g. AdamW's two moments per trainable parameter; under FSDP (use_orig_params)
    # also the gradient shard, which FSDP keeps from the step to the next forward
    optimizer_states: int
    step: int              # gradients, activations and temporaries at the peak
    ddp_buckets: int = 0   # DDP's gradient buckets (several GPUs)
    # DeepSpeed ZeRO-1/2: its reduction buckets and reduced gradients (ZeRO-1 with
    # accumulation: and the whole gradients between micro-batches), held during the
    # backward and to the step (within ``step`` where they meet the peak), and what
    # offload_optimizer keeps in host memory instead of the GPU (not in ``peak``);
    # ZeRO-3: the reduction bucket and gradient partition kept from start-up (not in
    # ``step``)
    zero_buffers: int = 0
    host: int = 0
    # A real step on CUDA: torch.cuda.max_memory_allocated (+ ddp_buckets, counted)
    measured: Optional[int] = None
    # ZeRO-3: the whole module in the training dtype, which DeepSpeed puts on the GPU
    # before partitioning it (not in ``peak``: before the training steps)
    startup: int = 0

    def as_gib(self) -> dict:
        return {k: (v / GiB if k != 'batch_size' and v is not None else v)
                for k, v in asdict(self).items()}


def build_optimizer(cfg, params):
    """The optimizer ``cfg.optim_wrapper.optimizer`` builds for ``params``, as on a GPU."""
    from mmengine.optim import OptimWrapper  # noqa: F401  (fills mmengine's registry)

    from mmsora.engine.strategies.speed import prefer_fused_optimizer
    from mmsora.registry import OPTIMIZERS
    opt_cfg = copy.deepcopy(dict(cfg.optim_wrapper.optimizer))
    prefer_fused_optimizer(opt_cfg, 'cuda')  # what tools/train.py does on a GPU
    return OPTIMIZERS.build(dict(opt_cfg, params=list(params)))


def _cast_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """``module.to(dtype)`` for floating weights (not buffers), in place, as DeepSpeed
    casts a module (fake parameters cannot be swapped, which ``Module.to`` does)."""
    for p in module.parameters():
        if p.is_floating_point():
            p.data = p.data.to(dtype)


def _zero_optimizer_bytes(cfg, numel: int) -> tuple:
    """(states, step temporaries) in bytes of the config's optimizer over one float32
    flat partition of ``numel`` elements, as DeepSpeed hands it the master weights."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(), LiveTensorBytes() as mem:
        master = torch.zeros(numel, requires_grad=True)
        master.grad = torch.zeros(numel)
        optimizer = build_optimizer(cfg, [master])
        before = mem.current
        optimizer.step()
        return mem.current - before, mem.peak - mem.current


class _ZeroTimeline:
    """DeepSpeed ZeRO-1/2's allocations around a fake backward and step
    (:mod:`mmsora.utils.zero_memory`): the buckets at the first gradient; the
    reduced gradients of this process's partition once a bucket's worth has arrived
    (its first reduction), each gradient taken into a bucket and dropped; or, for
    ZeRO-1 without ``overlap_comm``, every gradient kept to the backward's end. With
    gradient accumulation ZeRO-1 reduces only in a step's last micro-batch: before
    it the gradients accumulate whole and the buckets stay (``last_micro_batch``)."""

    def __init__(self, zero, trainable: list, step_bytes: int, temporaries: int):
        self.zero = zero
        self.partition_bytes = zero.gradient_partition([p.numel() for p in trainable])
        self.step_bytes, self.temporaries = step_bytes, temporaries
        self.buckets = self.partition = None
        self.arrived = 0
        self.trainable = trainable
        self.last_micro_batch = True
        for p in trainable:
            p.register_post_accumulate_grad_hook(self._take)

    def _reduces_now(self) -> bool:
        """ZeRO-2 reduces every micro-batch; ZeRO-1 only a step's last."""
        return self.zero.stage == 2 or self.last_micro_batch

    def _empty(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8)

    def _take(self, param):
        if self.buckets is None:
            self.buckets = self._empty(self.zero.buckets())
        # else reduced after the backward, or (ZeRO-1) after a later micro-batch's
        if self._reduces_now() and not self.zero.keeps_whole_gradients():
            self._reduce(param)

    def _reduce(self, param):
        """A gradient into a bucket: dropped; the first full bucket's reduction brings
        the buffer of this process's reduced gradients."""
        self.arrived += param.numel()
        if self.partition is None and self.arrived > self.zero.reduce_bucket_size:
            self.partition = self._empty(self.partition_bytes)
        param.grad = None

    def held(self, accumulation: int = 1) -> int:
        """Bytes of buckets and reduced gradients held from the backward to the step
        (not all of them at the peak, which may come before the first reduction);
        with ZeRO-1 and gradient accumulation also the whole gradients that the
        micro-batches before a step's last one accumulate."""
        whole = 0
        if self.zero.stage == 1 and accumulation > 1:
            whole = sum(p.numel() for p in self.trainable) * self.zero.element_size
        return self.zero.buckets() + self.partition_bytes + whole

    def end_backward(self):
        """The end of a backward: any gradient not reduced yet is (ZeRO-1 without
        overlap_comm reduces all of them here), the buckets go, this process's reduced
        gradients stay (to the step; with gradient accumulation the next micro-batches
        reduce into them). Before a step's last micro-batch ZeRO-1 keeps everything:
        the whole gradients and the buckets."""
        if not self._reduces_now():
            return
        for p in self.trainable:
            if p.grad is not None:
                self._reduce(p)
        if self.partition is None:
            self.partition = self._empty(self.partition_bytes)
        self.buckets = None

    def step(self):
        """The end of the last backward (:meth:`end_backward`) and the optimizer
        step: the reduced gradients are flattened (a copy in the training dtype) and
        cast to float32 and dropped, the optimizer steps."""
        self.end_backward()
        grad32 = self._empty(self.step_bytes)
        if self.zero.element_size != 4:  # in fp32 the flat copy is the float32 one
            self._empty(self.step_bytes // 4 * self.zero.element_size)  # and freed
        self.partition = None  # dropped once they are in float32
        self._empty(self.temporaries)  # the optimizer's, freed as it ends
        del grad32
        self.arrived = 0


def configured_grad_checkpointing(cfg) -> Union[bool, int, str]:
    """The denoiser's ``grad_checkpointing`` as the config builds it: the config's
    ``model.denoiser.grad_checkpointing``, else the denoiser class's default (False
    where it has none); what ``tools/estimate_memory.py``'s '(config)' row counts and
    ``tools/benchmark.py`` records."""
    denoiser = (cfg.get('model') or {}).get('denoiser')
    k = denoiser.get('grad_checkpointing') if hasattr(denoiser, 'get') else None
    if k is None:  # (the class as the build finds it: config_keys.denoiser_class)
        from mmsora.utils.config_keys import denoiser_class
        cls = denoiser_class(cfg.get('model')) if hasattr(denoiser, 'get') else type(denoiser)
        k = keyword_defaults(cls).get('grad_checkpointing') or False
    return k


def estimate_training_memory(cfg, batch_size: int, amp: Optional[str] = None,
                             grad_checkpointing: Union[bool, int, None] = None,
                             text_len: Optional[int] = None, gpus: int = 1,
                             fake: bool = True, device: str = 'cpu',
                             deepspeed: Optional[dict] = None,
                             fsdp: Optional[dict] = None) -> MemoryEstimate:
    """Peak memory of a training step of ``cfg`` at ``batch_size`` per GPU.

    Args:
        cfg (Config): A training config (``model``, ``optim_wrapper``, ``custom_hooks``).
        batch_size (int): Samples per GPU (``train_dataloader.batch_size``).
        amp (str, optional): ``'bf16'`` / ``'fp16'``: autocast over fp32 weights, as
            ``tools/train.py --amp``; None or ``'fp32'``: full precision. With
            ``deepspeed``: the dtype DeepSpeed trains in.
        grad_checkpointing (bool | int, optional): Overrides the denoiser's setting.
        text_len (int, optional): Text tokens per sample of a text-conditioned model;
            defaults to a VideoDiT's ``max_text_len`` (120, T5 in Open-Sora), else 77.
        gpus (int): Data-parallel processes. Above 1, DDP keeps one bucket buffer of
            the trainable weights' size, for the whole run (measured: the peak grows by
            exactly that); with ``gradient_as_bucket_view`` it is less. With
            ``deepspeed``: the processes ZeRO partitions over (a ``train_batch_size``
            number is checked against them); with ``fsdp``: the processes FSDP shards
            over.
        fake (bool): Count on fake tensors (no memory, no compute); False runs the
            step for real on ``device`` (what the tests and ``tools/estimate_memory.py
            --measure`` compare with).
        device (str): Where a real (``fake=False``) step runs: ``'cpu'`` or
            ``'cuda'``; on CUDA the result's ``measured`` is the allocator's peak.
        deepspeed (dict, optional): A DeepSpeed config (a ``--deepspeed`` preset's
            ``strategy.config``; its ``'auto'`` values are filled from ``cfg`` and
            ``amp``): count DeepSpeed ZeRO-1/2's step instead of the Runner's
            (:mod:`mmsora.utils.zero_memory`; fake tensors only), or ZeRO-3's
            (:mod:`mmsora.utils.zero3_memory`: DeepSpeed's engine over fake
            collectives; on fake tensors, or for real on ``device``).
        fsdp (dict, optional): An ``FSDPStrategy`` config (``tools/train.py
            --fsdp``'s ``strategy``): count the step of one of ``gpus`` FSDP
            processes (:mod:`mmsora.utils.fsdp_memory`); on fake tensors, or for real
            on ``device`` with fake collectives. The weights are the process's shard:
            the full model it is built from is not in the peak (the Runner builds it
            on the host).

    Returns:
        MemoryEstimate: the peak and its parts, in bytes.
    """
    import mmsora.diffusion  # noqa: F401  (fill the registries)
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    from torch._subclasses.fake_tensor import FakeTensorMode
    if amp not in _AMP_DTYPES:
        raise ValueError(f'amp must be one of {sorted(k for k in _AMP_DTYPES if k)} or '
                         f'None, got {amp!r}')
    dtype = _AMP_DTYPES[amp]
    zero = None
    if deepspeed is not None and fsdp is not None:
        raise ValueError('deepspeed and fsdp are two strategies: give one')
    if deepspeed is not None:
        from mmsora.engine.strategies import fill_auto
        from mmsora.utils.zero_memory import ZeroLayout
        # (gpus: the processes, so a train_batch_size number is checked against them,
        # as tools/train.py's fill_auto does)
        filled = fill_auto(deepspeed, cfg, {None: None, torch.bfloat16: 'bfloat16',
                                            torch.float16: 'float16'}[dtype],
                           world_size=gpus)
        if int((filled.get('zero_optimization') or {}).get('stage', 0)) != 3:
            if not fake:
                raise ValueError('a ZeRO-1/2 step is counted on fake tensors only')
            zero = ZeroLayout.from_config(filled, gpus)
        dtype = None  # DeepSpeed casts the module instead of autocasting
    from mmsora.engine.strategies.train_options import accumulation_of
    accumulation = (int(filled.get('gradient_accumulation_steps', 1)) if zero is not None
                    else accumulation_of(cfg))
    model_cfg = training_model_cfg(cfg)
    if grad_checkpointing is not None:
        model_cfg['denoiser']['grad_checkpointing'] = grad_checkpointing
    ema_cfg = ema_hook_cfg(cfg)
    if deepspeed is not None and zero is None:  # ZeRO-3: DeepSpeed runs the step
        from .zero3_memory import count_zero3_step
        return count_zero3_step(cfg, model_cfg, ema_cfg, filled, batch_size, text_len,
                                gpus, fake=fake, device=device)

    # Tables built from numpy at construction are real tensors: allowed as inputs.
    tensors = (FakeTensorMode(allow_non_fake_inputs=True) if fake
               else torch.device(device))
    device_type = 'cpu' if fake else torch.device(device).type
    on_cuda = device_type == 'cuda'
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    host = 0
    group = nullcontext()
    if fsdp is not None:
        from .fsdp_memory import check_fsdp_strategy, fake_process_group, worst_rank
        check_fsdp_strategy(fsdp)
        key = (repr(model_cfg), repr(fsdp), gpus)  # a batch-size search asks again
        if key not in _FSDP_RANKS:
            _FSDP_RANKS[key] = worst_rank(lambda: MODELS.build(model_cfg), fsdp, gpus)
        group = fake_process_group(gpus, _FSDP_RANKS[key])
    with group, tensors, LiveTensorBytes() as mem:
        model = MODELS.build(model_cfg).train()
        # the batch (read from the model before FSDP turns its weights into shards)
        x = torch.randn(batch_size, *model.latent_shape)
        kwargs = denoiser_kwargs(model, batch_size, text_len)
        batch_bytes = sum(t.numel() * t.element_size() for t in tree_leaves([x, kwargs])
                          if isinstance(t, torch.Tensor))
        wrapped = None
        if zero is not None:
            _cast_weights(model, zero.dtype)  # as DeepSpeed casts the module
        elif fsdp is not None:  # the full model was built on the host
            from .fsdp_memory import wrap_like_fsdp_strategy
            wrapped = wrap_like_fsdp_strategy(model, fsdp, device_type)
            mem.peak = mem.current
            if on_cuda:
                torch.cuda.reset_peak_memory_stats()
        weights = mem.current - batch_bytes
        trainable = [p for p in (model if wrapped is None else wrapped).parameters()
                     if p.requires_grad]
        if zero is not None:  # this process's partition of the trainable weights
            numel = zero.partition(sum(p.numel() for p in trainable))
        # EMAHook's averaged model: a frozen copy (mmengine deep-copies the model,
        # which fake tensors do not support; building it again allocates the same).
        # Under DeepSpeed ZeRO-1/2, ShardedEMAHook averages this process's partition
        # of the float32 master weights (where they live: the host with offload),
        # and the floating buffers whole with update_buffers.
        ema, ema_partition, sharded_ema = None, [], None
        if ema_cfg is not None and wrapped is not None:  # ShardedEMAHook's
            from mmsora.engine.sharded_ema import ShardedEMA
            sharded_ema = ShardedEMA(wrapped, **{
                k: ema_cfg[k] for k in ('update_buffers',) if k in ema_cfg})
        elif ema_cfg is not None and zero is None:
            from mmengine.model import ExponentialMovingAverage
            ema = MODELS.build(model_cfg).requires_grad_(False)
            momentum = ema_cfg.get('momentum',
                                   keyword_defaults(ExponentialMovingAverage)['momentum'])
        elif ema_cfg is not None:
            from mmsora.engine.sharded_ema import ShardedEMA
            if zero.offload_optimizer:
                host += 4 * numel
            else:
                ema_partition.append(torch.empty(numel, dtype=torch.float32))
            if ema_cfg.get('update_buffers', keyword_defaults(ShardedEMA)['update_buffers']):
                ema_partition += [torch.empty(b.shape, dtype=torch.float32)
                                  for b in model.buffers() if b.is_floating_point()]
        ema_bytes = mem.current - batch_bytes - weights
        if zero is None:
            optimizer = build_optimizer(cfg, trainable)
            loss_fn = model.denoiser
        else:
            loss_fn = model.denoiser_in_weight_dtype()
            with _disable_current_modes():  # its own fake tensors, counted apart
                states, temporaries = _zero_optimizer_bytes(cfg, numel)
            master = 4 * numel  # float32 copy of the partition
            # float32 gradient of the partition at the step (pinned on the host with
            # offload), and the training-dtype copy offload keeps of the partition
            grad32, half_copy = 4 * numel, numel * zero.element_size
            largest = max(p.numel() for p in trainable) * zero.element_size
            if zero.offload_optimizer:  # the GPU keeps a buffer of the largest param
                host += master + states + grad32 + half_copy + largest
                # ZeRO-2 accumulates its reduced gradients between micro-batches on the
                # host; ZeRO-1 keeps the whole gradients on the GPU (the timeline's)
                if accumulation > 1 and zero.stage == 2:
                    host += zero.overlapping_gradients([p.numel() for p in trainable])
                resident = [torch.empty(largest, dtype=torch.uint8)]
                timeline = _ZeroTimeline(zero, trainable, 0, 0)  # the step is the host's
            else:
                resident = [torch.empty(master + states, dtype=torch.uint8)]
                timeline = _ZeroTimeline(zero, trainable, grad32, temporaries)
        objective = partial(model.diffusion.loss, loss_fn, x, model_kwargs=kwargs)
        if wrapped is not None:
            # the root unit's forward (mmengine's train_step's) around the objective:
            # it gathers the root unit and, with MixedPrecision's
            # cast_root_forward_inputs, casts the batch to its param_dtype; the
            # denoiser's inputs follow its gathered weights' dtype, as in
            # LatentDiffusion.forward
            model.forward = lambda x, kwargs: model.diffusion.loss(
                model.denoiser_in_weight_dtype(), x, model_kwargs=kwargs)
            objective = partial(wrapped, x, kwargs)

        def step():
            micro = min(accumulation, 2)  # the 2nd runs over what the 1st left
            for i in range(micro):
                if zero is not None:
                    timeline.last_micro_batch = i == micro - 1
                with torch.autocast(device_type, dtype=dtype or torch.bfloat16,
                                    enabled=dtype is not None):
                    loss = objective()['loss']
                loss.float().mean().backward()
                if zero is not None and i < micro - 1:
                    timeline.end_backward()  # the step comes after the last one
            if zero is None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                timeline.step()
            if sharded_ema is not None:
                sharded_ema.update_parameters()
            if ema is not None:  # mmengine's ExponentialMovingAverage: in place
                with torch.no_grad():
                    for avg, p in zip(ema.parameters(), model.parameters()):
                        avg.lerp_(p.to(avg.dtype), momentum)

        step()  # the optimizer creates its states here
        persistent = mem.current
        step()  # the peak is the larger of the two steps' (the second's, in practice)
        if zero is not None:
            resident.clear()  # ZeRO's master weights and states: counted until here
            ema_partition.clear()
    persistent -= batch_bytes
    ddp_buckets = 0
    if gpus > 1 and zero is None and fsdp is None:
        ddp_buckets = sum(p.numel() * p.element_size() for p in trainable)
    measured = None
    if on_cuda:
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - cuda_before + ddp_buckets
    return MemoryEstimate(batch_size=batch_size, peak=mem.peak + ddp_buckets,
                          weights=weights, ema=ema_bytes,
                          optimizer_states=persistent - weights - ema_bytes,
                          step=mem.peak - persistent, ddp_buckets=ddp_buckets,
                          measured=measured,
                          zero_buffers=(timeline.held(accumulation) if zero is not None
                                        else 0),
                          host=host)


def usable_bytes(budget_gib: float, headroom: float = 0.1) -> float:
    """Bytes of a ``budget_gib`` card that tensors may take, leaving ``headroom`` (a
    fraction of the card) for the CUDA context and the caching allocator's unused
    blocks."""
    return budget_gib * GiB * (1 - headroom)


def largest_batch(fits_at: Callable[[int], bool], limit: int = 1024,
                  guess: Optional[int] = None) -> int:
    """The largest batch size in [1, ``limit``] for which ``fits_at`` holds, assuming
    memory grows with the batch; 0 if even 1 does not fit.

    The search gallops from ``guess`` (default 1) in steps that double, then bisects,
    so a good guess settles it with two calls (``guess`` fits, ``guess + 1`` does not).
    """
    good = min(max(guess or 1, 1), limit)
    if not fits_at(good):  # gallop down to a batch that fits
        bad, step = good, 1
        while True:
            if bad == 1:
                return 0
            good = max(bad - step, 1)
            if fits_at(good):
                break
            bad, step = good, 2 * step
    else:  # gallop up to a batch that does not fit
        step = 1
        while good < limit:
            bad = min(good + step, limit)
            if not fits_at(bad):
                break
            good, step = bad, 2 * step
        else:
            return limit
    while bad - good > 1:  # fits at good, not at bad
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits_at(mid) else (good, mid)
    return good


def secant_guess(a: tuple, b: tuple, budget_bytes: float) -> int:
    """The batch where the line through ``a`` and ``b`` (each ``(batch, peak bytes)``)
    reaches ``budget_bytes``: activations grow (about) linearly with the batch."""
    (n_a, peak_a), (n_b, peak_b) = sorted([a, b])
    per_sample = max((peak_b - peak_a) / max(n_b - n_a, 1), 1)
    return max(int((budget_bytes - peak_a) // per_sample) + n_a, 1)


def largest_fitting_batch(peak_at: Callable[[int], int], budget_bytes: float,
                          limit: int = 1024) -> int:
    """The largest batch in [1, ``limit``] whose ``peak_at`` stays within
    ``budget_bytes``: a few secant steps from batches 1 and 2 find where the peak
    meets the budget (it is not quite linear: what sets the peak changes with the
    batch), then :func:`largest_batch` settles it exactly from there."""
    a, b = (1, peak_at(1)), (2, peak_at(min(2, limit)))
    guess = secant_guess(a, b, budget_bytes)
    for _ in range(3):
        guess = min(max(guess, 1), limit)
        if guess in (a[0], b[0]):
            break
        a, b = b, (guess, peak_at(guess))
        guess = secant_guess(a, b, budget_bytes)
    return largest_batch(lambda n: peak_at(n) <= budget_bytes, limit, guess)
