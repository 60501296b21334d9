"""Skip optimizer steps whose loss or gradient is not finite, stop a run that keeps
producing them, log the gradient norm, and, with gradient accumulation, log the loss
once per optimizer step.

One NaN batch (a corrupt latent, an fp16 overflow) would otherwise write NaN into
every weight and the EMA, and the run would go on for days training nothing. The
check runs in ``OptimWrapper.step``, after ``backward``: under DDP the gradients are
already averaged over the ranks, so a NaN on one rank is a NaN on all of them and
every rank skips the same step without an extra collective. Under FSDP each rank
holds a shard of the gradient, so the norm is summed over the ranks (one all-reduce
of a scalar) and again every rank takes the same decision.

Under DeepSpeed (``--deepspeed``, mmengine's ``DeepSpeedOptimWrapper``) the loss is
guarded, before DeepSpeed's backward: each process's loss is its own micro-batch's,
so with several processes one all-reduce of a flag per micro-batch tells every
process whether any loss was not finite, and then every process keeps that
micro-batch out of the weights alike (DeepSpeed's gradient reduction and micro-step
count stay matched over the processes): without gradient accumulation its backward
and step are skipped; with accumulation under ZeRO 1-2 its backward runs on a stand-in
loss whose gradient is zero, so that DeepSpeed's step still falls on the Runner's
k-iteration grid and takes the window's other micro-batches (a window with none
finite is skipped whole). Under ZeRO-3 with accumulation the micro-batch is skipped
and that grid moves by one iteration (its weights are partitions outside the forward;
``LossGuardHook._guard_deepspeed``). What is not guarded there is a finite loss with a
non-finite gradient: under ZeRO each process holds a part of the gradient, and
DeepSpeed's optimizer checks it itself (DeepSpeed 0.19's ZeRO 1-3 skip a step whose
gradient norm is not finite, fp32 and bf16 alike; with fp16 its loss scaler also
lowers the scale, left as it is, as the ``AmpOptimWrapper`` path leaves its scaler).
Before, DeepSpeed runs warned at every start that their steps were not guarded: a
corrupt latent's NaN went through the backward into that overflow check, which threw
away the whole accumulated step, named no item, and never stopped a run producing
nothing but NaN losses.

A skipped step's warning says which of the batch's items hold NaN / inf inputs (the
batch is checked only when the loss was not finite): by dataset index, and file or
store row, where the items carry ``sample_idx``, else by position. Before, it named
the iteration only, and a corrupt item of a latent store could not be found. Under
DDP each rank names the items of its own batch.

With gradient accumulation over k micro-batches (Runner iterations) per optimizer
step, the loss and its terms go to the log once per step, as the mean of its k
micro-batches (what the step optimizes: mmengine divides each micro-batch's loss by
k), as ``grad_norm`` does. Before, the loss went in at every micro-batch and
``grad_norm`` at every step, so a line's loss was a mean over the last 50
micro-batches (one micro-batch's at iteration 1) and its grad_norm over the last 50
steps, k times as many. What is logged is chosen where mmengine's ``RuntimeInfoHook``
puts the iteration's ``outputs`` in the message hub: ``outputs`` itself stays as the
model gave it, so every hook sees each micro-batch's own loss tensor (editing it, as
this hook did until Dec 6 2026, left a hook after it no ``loss`` at k-1 of k
iterations and a float at the k-th). The ``LoggerHook``'s ``interval`` then counts
optimizer steps, so that its lines (and ``vis_data/scalars.json``) fall on iterations
that end a step: with ``interval=1`` the lines between two steps repeated the last
step's loss and grad_norm, k-1 stale points per step on a plotted curve.
"""
import math
import warnings

import torch
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook, LoggerHook, ParamSchedulerHook, RuntimeInfoHook
from mmengine.optim import OptimWrapper

from mmsora.engine.accumulation import accumulation_steps, optimizer_stepped
from mmsora.registry import HOOKS
from mmsora.utils.cli import RunError
from mmsora.utils.dist import collective_device

__all__ = ['LossGuardHook', 'NonFiniteLossError']


class NonFiniteLossError(RunError):
    """Too many consecutive iterations had a non-finite loss or gradient."""


def grad_norm(optim_wrapper, sharded: bool = False, bad_loss: bool = False,
              replicas: int = 1):
    """L2 norm of all gradients of the wrapper's parameters (a float; 0 without any).

    ``sharded``: each process holds a shard of the gradient (FSDP); the norm is the
    whole gradient's, summed over the processes (a collective: every process calls
    it), and a non-finite loss on any process (``bad_loss``) makes it inf on all, so
    every process takes the same decision. ``replicas``: how many processes hold each
    shard (:func:`gradient_replicas`), counted once in the sum."""
    grads = [p.grad for group in optim_wrapper.optimizer.param_groups
             for p in group['params'] if p.grad is not None]
    norm = (torch.nn.utils.get_total_norm(grads, norm_type=2.0) if grads
            else torch.zeros(()))
    if sharded:
        squared = norm.detach().float().square().to(collective_device())
        if bad_loss:
            squared = squared + float('inf')
        torch.distributed.all_reduce(squared)
        norm = (squared / replicas).sqrt()
    return float(norm)


def gradient_replicas(model) -> int:
    """How many processes hold each shard of an FSDP model's gradient: 1 when it is
    sharded over all of them (FULL_SHARD, SHARD_GRAD_OP), all of them with NO_SHARD,
    the number of shard groups with HYBRID_SHARD (sharded within a group, replicated
    across groups)."""
    from torch.distributed.fsdp import ShardingStrategy
    world = torch.distributed.get_world_size()
    if model.sharding_strategy == ShardingStrategy.NO_SHARD:
        return world
    return world // torch.distributed.get_world_size(model.process_group)


def zero_loss(model, factor: float = 0.0) -> torch.Tensor:
    """A stand-in loss for a micro-batch kept out of the weights: ``factor`` times one
    element of each trainable weight of ``model``, whose backward gives every one of
    them a gradient of zeros (NaN in its first element with ``factor=nan``) without
    the micro-batch's graph (a NaN loss's backward makes its gradients NaN even times
    0), and goes through DeepSpeed's reduction as any micro-batch's.
    The weights must be whole on this process (not ZeRO-3 partitions)."""
    parts = [p.reshape(-1)[:1].sum() for p in model.parameters()
             if p.requires_grad and p.numel()]
    if not parts:
        raise ValueError('zero_loss: the model has no trainable weights')
    return torch.stack([part.float() for part in parts]).sum() * factor


def overflow_checked(engine) -> bool:
    """Whether DeepSpeed's optimizer skips a step whose gradient is not finite (and
    clears it): ZeRO 1-2's in DeepSpeed 0.19 with ``check_grad_overflow`` (fp16
    always; bf16 with ``bf16.check_grad_overflow``, its default), or, in fp32, through
    its gradient norm (not computed with ``zero_optimization.compute_grad_norm:
    false``, which a run without clipping may set: its NaN steps were applied). Not
    known of ZeRO-0's optimizers (torch's own in fp32) or another DeepSpeed's: False."""
    if int(engine.zero_optimization_stage()) not in (1, 2):
        return False
    optimizer = getattr(engine, 'optimizer', None)
    if not hasattr(optimizer, 'check_grad_overflow'):
        return False
    return bool(optimizer.check_grad_overflow) or (
        getattr(optimizer, 'dtype', torch.bfloat16) != torch.bfloat16
        and bool(getattr(optimizer, 'compute_grad_norm', False)))


def hooked_like_outputs(engine):
    """A function that puts on a tensor the backward hooks DeepSpeed's engine puts on
    its forward's outputs (in 0.19: ``register_output_backward_hooks`` with its
    ``_backward_prologue``, which starts the backward: the optimizer's accumulation
    boundary, ZeRO's hook state), and returns it; None where this DeepSpeed has no
    such hooks. Called by hand, the prologue raised where the engine takes no
    torch-style backward (an older torch)."""
    try:
        from deepspeed.runtime.utils import register_output_backward_hooks
    except ImportError:
        return None
    once = getattr(engine, '_backward_prologue', None)
    per_tensor = getattr(engine, '_backward_prologue_per_tensor', None)
    if not (callable(once) and callable(per_tensor)):
        return None

    def hook(tensor):
        register_output_backward_hooks(tensor, preprocess_once_fn=once,
                                       preprocess_per_tensor_fn=per_tensor)
        return tensor

    return hook


# Where a dataset's items may carry their index (mmengine's BaseDataset's name for it).
INDEX_KEY = 'sample_idx'
MAX_LISTED = 8  # items a skip message lists (it stays one line)
MAX_NAMED = 3  # items with non-finite inputs it names with their file


def take_indices(data_batch):
    """Take the items' dataset indices (``sample_idx``) out of a batch, a dict of
    batched values (``default_collate``) or a list of item dicts (``pseudo_collate``):
    the model's forward takes the batch's keys as its arguments. Returns a list of
    ints, or None where the items carry none."""
    if isinstance(data_batch, dict):
        value = data_batch.pop(INDEX_KEY, None)
        if value is None:
            return None
        return [int(i) for i in (value.tolist() if torch.is_tensor(value) else value)]
    if (isinstance(data_batch, (list, tuple)) and data_batch
            and all(isinstance(item, dict) for item in data_batch)):
        found = [item.pop(INDEX_KEY, None) for item in data_batch]
        return None if any(i is None for i in found) else [int(i) for i in found]
    return None


def batch_size(data_batch) -> int:
    """Number of items of a batch (0 where it cannot tell)."""
    if isinstance(data_batch, dict):
        for value in data_batch.values():
            if isinstance(value, (torch.Tensor, list, tuple)):
                return len(value)
        return 0
    return len(data_batch) if isinstance(data_batch, (list, tuple)) else 0


def nonfinite_rows(fields, n=None) -> dict:
    """``{row: field}`` of the rows of a dict of batched tensors (``n`` rows, default
    the first tensor's) whose float fields hold NaN or inf, the first such field of
    each (a batch's latents, images, text embeddings; an extraction's, in
    tools/extract_features.py)."""
    found = {}
    for key, value in fields.items():
        if torch.is_tensor(value) and value.is_floating_point() and value.dim() \
                and (n is None or len(value) == n):
            bad = ~torch.isfinite(value.detach().reshape(len(value), -1)).all(1)
            for row in bad.nonzero().flatten().tolist():
                found.setdefault(row, key)
    return found


def nonfinite_items(data_batch):
    """``[(position, field)]`` of a batch's items whose float inputs (latents, images,
    text embeddings) hold NaN or inf, the first such field of each, in batch order."""
    if isinstance(data_batch, dict):
        return sorted(nonfinite_rows(data_batch, batch_size(data_batch)).items())
    items = data_batch if isinstance(data_batch, (list, tuple)) else ()
    out = []
    for pos, item in enumerate(items):
        for key, value in (item.items() if isinstance(item, dict) else ()):
            if torch.is_tensor(value) and value.is_floating_point() \
                    and not bool(torch.isfinite(value).all()):
                out.append((pos, key))
                break
    return out


def item_name(dataset, index):
    """What names item ``index`` of a dataset besides its index, where the dataset
    gives it: a packed store's shard file and row (PackedLatentDataset), a fast-DiT
    feature file (NpyLatentDataset), a manifest row's video (VideoDataset), or the
    dataset's own ``item_name(index)``; None otherwise."""
    try:
        inner = getattr(dataset, 'dataset', None)  # a wrapper (SkipCorruptDataset)
        if inner is not None and not callable(getattr(dataset, 'item_name', None)):
            return item_name(inner, index)
        named = getattr(dataset, 'item_name', None)
        if callable(named):
            return str(named(index))
        store = getattr(dataset, 'store', None)
        if callable(getattr(store, 'item_name', None)):
            return store.item_name(index)
        pairs = getattr(dataset, 'pairs', None)
        if isinstance(pairs, list):
            return str(pairs[index][0])
        rows = getattr(dataset, 'rows', None)
        if isinstance(rows, list):
            return str(rows[index]['path'])
    except (LookupError, TypeError, ValueError, AttributeError):  # not this dataset's
        return None
    return None


def _is_number(value) -> bool:
    """Whether a model output is one number (a loss term the log takes)."""
    if torch.is_tensor(value):
        return value.numel() == 1
    return isinstance(value, (float, int)) and not isinstance(value, bool)


def _value(value) -> float:
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def _class_method(hook, name):
    """A hook's own method ``name`` (its class's, not a wrapper put on the instance)."""
    return getattr(type(hook), name).__get__(hook, type(hook))


def _lines_per_step(hook, accumulation):
    """A ``LoggerHook``'s ``after_train_iter`` with its ``interval`` counted in
    optimizer steps of ``accumulation`` iterations: its lines fall on the iterations
    that end a step (what it logs of the others repeats the last step's loss and
    grad_norm), the run's last one included where it ends a step (a part-filled
    accumulation mmengine steps at the end, off the grid of ``accumulation``
    iterations: that step went without a line). Its val and test lines keep their
    interval."""
    after_train_iter = _class_method(hook, 'after_train_iter')

    def after_train_iter_per_step(runner, batch_idx, data_batch=None, outputs=None):
        interval = hook.interval
        steps = -(-(runner.iter + 1) // accumulation)  # optimizer steps so far
        last = (runner.iter + 1 == runner.max_iters and steps % interval == 0
                and optimizer_stepped(runner))
        hook.interval = 1 if last else interval * accumulation
        try:
            return after_train_iter(runner, batch_idx, data_batch, outputs)
        finally:
            hook.interval = interval

    return after_train_iter_per_step


_NONE = object()  # (an object had no instance attribute of that name)


# mmengine's parameter schedulers (torch's say `lr_scheduler.step()`) at their first
# step, when the optimizer has not stepped yet.
EARLY_SCHEDULER_STEP = (r'Detected call of `(lr_)?scheduler\.step\(\)` before '
                        r'`optimizer\.step\(\)`')


def _listed(values, most):
    """'a, b, c' of the first ``most`` values, with how many there are in all."""
    values = list(values)
    return ', '.join(map(str, values[:most])) + (
        f' ... ({len(values)} in all)' if len(values) > most else '')


def _counted_like(step, former):
    """``step`` (which calls ``former``) marked as mmengine's parameter schedulers mark
    the optimizer step they count: they warned 'optimizer.step() has been overridden'
    at the first scheduler step of every run once the hook had put its own step in."""
    if hasattr(former, '_with_counter'):
        step._with_counter = former._with_counter
    return step


@HOOKS.register_module()
class LossGuardHook(Hook):
    """Skips non-finite steps, stops after ``max_consecutive`` of them in a row.

    A step is skipped (gradients zeroed, weights and optimizer state untouched, a
    warning naming the iteration) when the loss of this rank or the gradient norm is
    NaN or infinite. With fp16 loss scaling (``AmpOptimWrapper``) infinite gradients
    are the scaler's business: only the loss is checked, and the scaler's own step
    (which skips inf/NaN gradients and lowers the scale) still runs. Under DeepSpeed
    (``DeepSpeedOptimWrapper``) the loss is guarded, not the gradient: a micro-batch
    whose loss is not finite on any process is kept out of the weights on every
    process (see the module's docstring). ``OptimWrapperDict`` (several
    optimizers) is left alone, with a warning. The stop clears the gradients (the
    scaler's step does not run), and a later ``runner.train()`` of the same runner
    counts the skips in a row afresh.

    With gradient accumulation it also logs the loss and its terms once per optimizer
    step, averaged over the step's micro-batches, in log lines every ``interval``
    optimizer steps (see the module's docstring), and says so in the log before the
    first iteration. The iteration's ``outputs`` are left as the model gave them.

    Args:
        max_consecutive (int): Stop the run (``NonFiniteLossError``) after this many
            skipped steps in a row (within one ``runner.train()``). Defaults to 5.
        log_grad_norm (bool): Log ``grad_norm`` every step. mmengine already logs it
            when ``optim_wrapper.clip_grad`` is set; then this does nothing more.
            Defaults to True.
    """

    # First: its before_train_iter takes the items' sample_idx out of the batch before
    # any other hook (or the model) reads it.
    priority = 'HIGHEST'

    def __init__(self, max_consecutive=5, log_grad_norm=True):
        if int(max_consecutive) < 1:
            raise ValueError(f'max_consecutive must be >= 1, got {max_consecutive}')
        self.max_consecutive = int(max_consecutive)
        self.log_grad_norm = log_grad_norm
        self.num_skipped = 0
        self._in_a_row = []
        self._guarding = False  # whether this run's optimizer steps are guarded
        # This iteration's batch (checked only after a non-finite loss) and its items'
        # dataset indices; what the micro-batches since the last step held.
        self._batch, self._batch_indices = None, None
        self._accumulation = 1  # micro-batches per optimizer step (set in before_train)
        self._step_values = {}  # logged key -> finite values of the step's micro-batches
        # (object, name, its former instance attribute or _NONE, what this hook put on)
        # of the methods of this run's optimizer wrapper and hooks that it wraps
        self._patched = []
        self._new_step()

    def _new_step(self):
        self._indices = []  # dataset indices of the step's items; None: not all known
        self._seen = 0  # items of the step's micro-batches so far
        self._bad = []  # (position in the step, index or None, field): non-finite inputs
        self._checked = False  # whether the inputs were checked (a non-finite loss)

    def before_train(self, runner):
        # What a run that raised left on (its after_train was not called) comes off
        # first: wrapped over, a later runner.train()'s steps went through two guards,
        # and after a skipped NaN step the inner one, which still held the NaN loss,
        # skipped the next finite step too.
        self._unpatch()
        self._guarding = False
        # Skips in a row are counted within a train(): a run stopped by them, trained
        # again on the same runner, said 'N+1 in a row' of its first skip (a --resume,
        # a new runner, starts at 0 anyway). num_skipped counts all of them.
        self._in_a_row = []
        self._accumulation, self._step_values = accumulation_steps(runner), {}
        self._take_over_logging(runner)
        if self._accumulation > 1:
            runner.logger.info(self._accumulation_line(runner))
        wrapper = runner.optim_wrapper
        if type(wrapper).__name__ == 'DeepSpeedOptimWrapper':
            if self.log_grad_norm:  # as DDP and FSDP runs log it
                self._log_deepspeed_grad_norm(runner, wrapper)
            self._guard_deepspeed(runner, wrapper)  # (over the logging: a skipped
            return  # micro-batch logs no grad_norm)
        if not isinstance(wrapper, OptimWrapper):  # several optimizers (OptimWrapperDict)
            runner.logger.warning(f'LossGuardHook guards an OptimWrapper or DeepSpeed\'s; '
                                  f'this run has {type(wrapper).__name__}: its steps are '
                                  f'not guarded')
            return
        step, backward = wrapper.step, wrapper.backward
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        sharded = isinstance(getattr(runner, 'model', None), FSDP)
        replicas = gradient_replicas(runner.model) if sharded else 1
        losses = []  # of the micro-batches since the last step (gradient accumulation)

        def guarded_backward(loss, **kwargs):
            losses.append(float(loss.detach().float()))
            self._note_batch(bad_loss=not math.isfinite(losses[-1]))
            backward(loss, **kwargs)

        def guarded_step(**kwargs):
            bad = [v for v in losses if not math.isfinite(v)]
            loss = bad[0] if bad else (losses[-1] if losses else 0.0)
            losses.clear()
            scaled = getattr(wrapper, 'loss_scaler', None) is not None
            norm = None if scaled else grad_norm(wrapper, sharded, bool(bad), replicas)
            if bad or (norm is not None and not math.isfinite(norm)):
                try:
                    self._skip(runner, loss, norm)
                except NonFiniteLossError:
                    # The stop skips mmengine's zero_grad after the step: the NaN
                    # gradients stayed, and a later runner.train() added its first
                    # step's to them and skipped it too. A loss scaler's step (its
                    # unscale_ and update) has not run on them: its state is whole.
                    wrapper.zero_grad()
                    raise
                finally:
                    self._new_step()
                if scaled:  # the scaler sees the inf/NaN gradients on every rank,
                    step(**kwargs)  # skips the update and lowers its scale
                return
            self._new_step()
            if norm is not None and self.log_grad_norm and not wrapper.clip_grad_kwargs:
                runner.message_hub.update_scalar('train/grad_norm', norm)
            self._in_a_row = []
            step(**kwargs)

        # Instance attributes shadow the class's methods; update_params calls these.
        self._patch(wrapper, 'backward', guarded_backward)
        self._patch(wrapper, 'step', _counted_like(guarded_step, step))
        self._guarding = True

    def _patch(self, obj, name, value):
        """Put ``value`` on ``obj`` as its ``name`` (an instance attribute: it shadows
        the class's method) until :meth:`_unpatch`."""
        self._patched.append((obj, name, vars(obj).get(name, _NONE), value))
        setattr(obj, name, value)

    def _unpatch(self):
        """Take off what :meth:`_patch` put on, last first, where it is still on top
        (a wrapper put on after it, which calls it, is left as it is)."""
        for obj, name, former, value in reversed(self._patched):
            if vars(obj).get(name) is value:
                if former is _NONE:
                    delattr(obj, name)
                else:
                    setattr(obj, name, former)
        self._patched = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        """Take the items' ``sample_idx`` out of the batch (the model does not take
        it) and keep the batch, for a skipped step's message to name its items."""
        self._batch_indices = take_indices(data_batch)
        self._batch = data_batch

    def _note_batch(self, bad_loss):
        """Count this iteration's items into the step's (at its ``backward``, once);
        after a non-finite loss, find those with non-finite inputs."""
        batch, indices = self._batch, self._batch_indices
        self._batch = None
        if batch is None:  # no Runner iteration (update_params called by hand)
            return
        if bad_loss:
            self._checked = True
            self._bad += [(self._seen + pos, indices[pos] if indices else None, field)
                          for pos, field in nonfinite_items(batch)]
        if indices is None or self._indices is None:
            self._indices = None
        else:
            self._indices += indices
        self._seen += batch_size(batch)

    def after_train(self, runner):
        """Take off this run's wrappers: a later ``runner.train()`` (a notebook, a
        graceful stop's restore) wraps the methods afresh, once."""
        self._unpatch()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        """Let go of the iteration's batch; ``outputs`` is left as the model gave it
        (what goes to the log: :meth:`logged_values`)."""
        self._batch = None  # (not kept beyond its iteration)

    def _take_over_logging(self, runner):
        """Wrap the ``after_train_iter`` of mmengine's hooks of the run: its
        ``RuntimeInfoHook`` puts :meth:`logged_values` of the iteration's ``outputs`` in
        the message hub, not ``outputs`` (which every hook sees as the model gave it);
        with gradient accumulation its ``LoggerHook`` counts its ``interval`` in
        optimizer steps (:func:`_lines_per_step`); its ``ParamSchedulerHook`` steps
        without the warning of :meth:`_scheduling_quietly`. Undone after training."""
        for hook in getattr(runner, 'hooks', ()):  # (tools/benchmark.py's runner: none)
            if isinstance(hook, RuntimeInfoHook):
                wrapped = self._pushing_logged(hook)
            elif isinstance(hook, LoggerHook) and self._accumulation > 1:
                wrapped = _lines_per_step(hook, self._accumulation)
            elif isinstance(hook, ParamSchedulerHook):
                wrapped = self._scheduling_quietly(hook)
            else:
                continue
            self._patch(hook, 'after_train_iter', wrapped)

    def _pushing_logged(self, hook):
        after_train_iter = _class_method(hook, 'after_train_iter')

        def after_train_iter_logged(runner, batch_idx, data_batch=None, outputs=None):
            return after_train_iter(runner, batch_idx, data_batch,
                                    self.logged_values(runner, outputs))

        return after_train_iter_logged

    def _scheduling_quietly(self, hook):
        """A ``ParamSchedulerHook``'s ``after_train_iter`` without mmengine's
        "Detected call of `scheduler.step()` before `optimizer.step()`" warning
        (:data:`EARLY_SCHEDULER_STEP`, no other) while the optimizer has not stepped
        yet with gradient accumulation or after a skipped step: with k micro-batches
        per step the first step is at iteration k while the schedulers step at every
        iteration (a schedule counted in iterations: ``warmup_note`` in
        mmsora/engine/strategies/train_options.py), and a skipped first step did not
        step either. Nothing was called in the wrong order; the warning told the user
        to fix their code."""
        after_train_iter = _class_method(hook, 'after_train_iter')

        def after_train_iter_quiet(runner, batch_idx, data_batch=None, outputs=None):
            # mmengine's schedulers count the optimizer wrapper's steps here (-1: none)
            early = getattr(runner.optim_wrapper, '_global_step', 0) < 0
            if not early or (self._accumulation <= 1 and not self.num_skipped):
                return after_train_iter(runner, batch_idx, data_batch, outputs)
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', EARLY_SCHEDULER_STEP, UserWarning)
                return after_train_iter(runner, batch_idx, data_batch, outputs)

        return after_train_iter_quiet

    def logged_values(self, runner, outputs):
        """What of an iteration's ``outputs`` goes to the message hub (the log), a new
        dict: where the steps are guarded, without its non-finite loss terms (a
        non-finite loss is always skipped, in whichever micro-batch of an accumulated
        step it came: averaged over the log window, 50 iterations, one NaN made every
        line show ``loss: nan`` for the next 50 iterations of a run that had
        recovered). With gradient accumulation, the loss terms are kept back until the
        step's last micro-batch, which gives each one's mean over the step (a value
        non-finite in every micro-batch stays out)."""
        if not isinstance(outputs, dict):
            return outputs
        logged = dict(outputs)
        if self._guarding:
            for key in [k for k, v in logged.items() if _is_number(v)
                        and not math.isfinite(_value(v))]:
                del logged[key]
        if self._accumulation > 1:
            for key in [k for k, v in logged.items() if _is_number(v)]:
                self._step_values.setdefault(key, []).append(_value(logged.pop(key)))
            if optimizer_stepped(runner):
                for key, values in self._step_values.items():
                    logged[key] = math.fsum(values) / len(values)
                self._step_values = {}
        return logged

    def _accumulation_line(self, runner) -> str:
        """What the logged numbers are under gradient accumulation (the log's line
        before the first iteration)."""
        k = self._accumulation
        window = getattr(getattr(runner, 'log_processor', None), 'window_size', None)
        over = (f'the last {window} optimizer steps' if isinstance(window, int)
                else f'log_processor.window_size={window!r}')
        every = ''
        for hook in getattr(runner, 'hooks', ()):
            if isinstance(hook, LoggerHook):
                n = hook.interval
                every = (f' every {n} optimizer step{"s" * (n != 1)} (the logger\'s '
                         f'interval={n} counts steps: {n * k} iterations)')
        return (f'gradient accumulation: {k} micro-batches (iterations) per optimizer '
                f'step; loss and its terms are logged once per step, the mean of its {k} '
                f'micro-batches, and grad_norm once per step: a line{every} shows their '
                f'means over {over} (time and data_time: per iteration)')

    def _log_deepspeed_grad_norm(self, runner, wrapper):
        """Log DeepSpeed's own gradient norm (of the whole gradient, before its
        clipping) after each optimizer step: the grad_norm column DDP and FSDP runs
        have was missing under --deepspeed."""
        step = wrapper.step

        def logged_step(**kwargs):
            engine = wrapper.model
            boundary = engine.is_gradient_accumulation_boundary()
            step(**kwargs)
            norm = engine.get_global_grad_norm() if boundary else None
            if norm is not None and math.isfinite(float(norm)):  # (inf: a step that
                # DeepSpeed skipped for its NaN/inf gradient, as guarded_step's skips)
                runner.message_hub.update_scalar('train/grad_norm', float(norm))

        self._patch(wrapper, 'step', _counted_like(logged_step, step))

    def _guard_deepspeed(self, runner, wrapper):
        """Keep a DeepSpeed micro-batch whose loss is not finite on any process (every
        process alike) out of the weights, before DeepSpeed's backward.

        Each process's loss is its own micro-batch's: with several processes one
        all-reduce of a flag (the count of processes whose loss is not finite) per
        micro-batch makes them agree. Without accumulation (k = 1), under ZeRO-3 or
        without ZeRO, the micro-batch's ``backward`` (where ZeRO reduces the gradient)
        and ``step`` (which counts ``micro_steps`` and steps at each k-th) are skipped
        on every process: the engine is left as if it had not been. Under ZeRO-3 with
        k > 1 a step then ends one iteration later than the Runner's k-iteration grid
        (its weights are partitioned outside the forward: no stand-in backward can
        reach them), as without ZeRO (not tried there: its optimizers, torch's own in
        fp32, are not ZeRO's).
        With k > 1 under ZeRO 1-2 the grid is kept: the micro-batch's backward
        runs on :func:`zero_loss` (a gradient of zeros for every weight, reduced as any
        micro-batch's) and its step runs, so DeepSpeed's step takes the window's other
        micro-batches; where none of them was finite either, the window's last
        backward runs on a NaN stand-in instead, and DeepSpeed's own check of the
        gradient skips the step (a step of zeros would have moved the weights by
        AdamW's momentum and weight decay); where no such check runs
        (:func:`overflow_checked`), that last micro-batch is skipped as under ZeRO-3,
        and the window waits for a finite one. The gradient after a finite loss is not
        checked here (under ZeRO each process holds a part of it); DeepSpeed's
        optimizer (ZeRO, bf16, fp16 loss scaling) checks it."""
        step, backward = wrapper.step, wrapper.backward
        engine = wrapper.model
        dist = torch.distributed
        world = (dist.get_world_size() if dist.is_available() and dist.is_initialized()
                 else 1)
        stage = int(getattr(engine, 'zero_optimization_stage', lambda: 0)())
        # DeepSpeed 0.19 starts a backward (the optimizer's boundary flag, its hook
        # state) from hooks it puts on its forward's outputs, which a stand-in loss
        # does not pass (ZeRO-1 then reduced its gradient twice): the stand-in gets
        # them too (hooked_like_outputs). Without them (another DeepSpeed) the skip.
        hooked = hooked_like_outputs(engine)
        keep_grid = self._accumulation > 1 and stage in (1, 2) and hooked is not None
        skipped = []  # the current micro-batch's backward was skipped: skip its step
        window = dict(finite=False)  # whether a micro-batch of this window was finite

        def guarded_backward(loss, **kwargs):
            value = float(loss.detach().float())
            here = not math.isfinite(value)
            count = int(here)
            if world > 1:  # every process takes part, every micro-batch
                flag = torch.tensor(float(here), device=collective_device())
                dist.all_reduce(flag)
                count = int(flag.item())
            if keep_grid and engine.micro_steps % self._accumulation == 0:
                window['finite'] = False  # (the window's first micro-batch)
            self._note_batch(bad_loss=here)
            if not count:
                window['finite'] = True
                self._new_step()
                self._in_a_row = []
                backward(loss, **kwargs)
                return
            empty = (keep_grid and not window['finite']
                     and engine.is_gradient_accumulation_boundary())
            stand_in = keep_grid and (not empty or overflow_checked(engine))
            if not stand_in:
                what = ('this micro-batch (its backward and step)'
                        if self._accumulation > 1 else None)
            elif empty:
                what = (f'this optimizer step (none of its {self._accumulation} '
                        f'micro-batches was finite)')
            else:
                what = 'this micro-batch (the step takes the others of its window)'
            try:
                self._skip(runner, value, None,
                           elsewhere=(count, world) if world > 1 else None,
                           what_is_skipped=what)
            finally:
                self._new_step()
            if not stand_in:
                skipped.append(True)
                return
            backward(hooked(zero_loss(engine, float('nan') if empty else 0.0)), **kwargs)

        def guarded_step(**kwargs):
            if skipped:
                skipped.clear()
                return
            step(**kwargs)

        self._patch(wrapper, 'backward', guarded_backward)
        self._patch(wrapper, 'step', _counted_like(guarded_step, step))
        self._guarding = True

    def _data_note(self, runner) -> str:
        """What this rank's batch of the step held: its items with non-finite inputs,
        else its items (where they carry their index) and whether the inputs were
        found finite; '' where there is nothing to say."""
        rank, world = get_dist_info()
        whose = f"rank {rank}'s batch" if world > 1 else 'the batch'
        if self._bad:
            loop = getattr(runner, '_train_loop', None)  # (not built by asking)
            dataset = getattr(getattr(loop, 'dataloader', None), 'dataset', None)
            named = []
            for pos, index, _ in self._bad[:MAX_NAMED]:
                name = None if index is None else item_name(dataset, index)
                named.append(f'position {pos}' if index is None else
                             f'item {index}' + (f' ({name})' if name else ''))
            fields = '/'.join(dict.fromkeys(field for _, _, field in self._bad))
            more = len(self._bad) - len(named)
            where = ', '.join(named) + (f' and {more} more' if more > 0 else '')
            if self._indices is None:
                return (f'non-finite {fields} in {whose} of {self._seen} at {where} (its '
                        f'items carry no {INDEX_KEY} to name them by)')
            return f'non-finite {fields} in {whose}: {where}'
        # Under DDP a NaN loss on one rank makes every rank's gradient NaN: the others
        # say their own loss was finite (the rank with the NaNs names its items).
        elsewhere = world > 1 and not self._checked
        if self._indices:
            return (f'{whose}: items {_listed(self._indices, MAX_LISTED)}'
                    + (' (their inputs are finite)' if self._checked else
                       ' (its loss was finite)' if elsewhere else ''))
        if self._checked:
            return f"{whose}'s inputs are finite"
        return f"rank {rank}'s loss was finite" if elsewhere else ''

    def _skip(self, runner, loss, norm, elsewhere=None, what_is_skipped=None):
        """Count and say a skipped step (``loss`` this process's); ``elsewhere``:
        ``(n, world)`` where the processes agreed on it (DeepSpeed: not finite on n of
        them); ``what_is_skipped``: where it is not the optimizer step."""
        iteration = runner.iter + 1  # as the log counts: Iter(train) [i/N]
        self.num_skipped += 1
        self._in_a_row.append(iteration)
        what = f'loss {loss}' + (f', gradient norm {norm}' if norm is not None else '')
        if elsewhere:  # (a process whose own loss was finite says so first)
            here = '' if not math.isfinite(loss) else 'finite here; '
            what += f' ({here}not finite on {elsewhere[0]} of {elsewhere[1]} processes)'
        data = self._data_note(runner)
        if len(self._in_a_row) >= self.max_consecutive:
            from mmsora.utils.checkpoint_choice import last_checkpoint
            n, first = len(self._in_a_row), self._in_a_row[0]
            span = f'{first} to {iteration}' if n > 1 else f'{iteration}'
            then = ('--resume from the last checkpoint' if last_checkpoint(runner.work_dir)
                    else 'start again (no checkpoint was saved yet)')
            raise NonFiniteLossError(
                f'the loss or gradient was not finite in {n} iteration{"s" * (n > 1)} in '
                f'a row ({span}; at {iteration}: {what}' + (f'; {data}' if data else '')
                + f'); stopping. Check the data and the learning rate, then {then}')
        # Other ranks' consoles show errors only (mmengine's logger): a rank whose
        # own items hold the NaNs says so at that level, or no one would see it.
        log = runner.logger.error if self._bad and get_dist_info()[0] else \
            runner.logger.warning
        log(f'iteration {iteration}: {what}; skipping '
            f'{what_is_skipped or "this optimizer step"} '
            f'({len(self._in_a_row)} in a row, {self.num_skipped} in all; the run stops '
            f'after {self.max_consecutive} in a row)' + (f'; {data}' if data else ''))
