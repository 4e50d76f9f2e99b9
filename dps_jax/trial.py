"""One trial as pure functions: the train step, the whole-split validation error, the data order.

The engine runs exactly these functions over a leading trial axis (vmapped, or in turn on a
CPU); `run_trial` is the single-trial loop (one trial to a goal error), used by launch.py and
as the engine's reference.
Both judge a check with the same ledger (dps_jax.ledger: the reference's goal decision).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dps_jax import losses, masks, network as network_lib, optim
from dps_jax.ledger import RUNNING, STATUSES, Ledger, Rule
# The reference's goal decision lives with the ledger that applies it; importable here as before.
from dps_jax.ledger import error_rate, max_errors_at_goal, reached_goal  # noqa: F401

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (params, images) -> logits
DROPOUT_KEY_TAG = 0x64726F70  # 'drop': folded into the seed's key for the trial's dropout key
# What the step and evaluation builders take: a dps_jax.network.Network, or a plain ApplyFn for a
# network without state or dropout.
NetworkLike = Union[network_lib.Network, ApplyFn]


class TrainState(NamedTuple):
    """One trial's training state; with a leading axis N it is N trials."""
    params: Any
    mask: Any          # bool pytree like params: True = kept
    opt_state: Any     # holds the trial's hyperparameters (optim.init_optimizer_state)
    step: jax.Array    # int32, steps taken
    model_state: Any = {}     # the network's mutable collections, e.g. {'batch_stats': ...}; {} if none
    dropout_key: Any = None   # uint32[2]: the trial's dropout key; step s draws from fold_in(key, s)


class StepMetrics(NamedTuple):
    """What one training step reports."""
    loss: jax.Array    # mean cross-entropy of the batch, before the update


def all_finite(params: Any) -> jax.Array:
    """Whether every entry of every leaf is finite (a bool scalar; vmap it for N trials)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(params)]))


def apply_mask(params: Any, mask: Any) -> Any:
    """Pruned entries set to exactly zero (the masked network's weights)."""
    return jax.tree.map(lambda param, keep: jnp.where(keep, param, jnp.zeros_like(param)), params, mask)


# On XLA:CPU the training step takes its batch this many examples at a time at most (examples_per_pass).
CPU_EXAMPLES_PER_PASS = 32
WHOLE_BATCH = 1 << 62  # a make_train_step per_pass that takes any batch in one pass


def examples_per_pass(batch_size: int, network: NetworkLike, backend: str | None = None,
                      limit: int | None = None, data_devices: int = 1) -> int:
    """How many of a batch's examples one forward and backward pass of the training step takes.

    For a network without mutable collections: on XLA:CPU, the largest divisor of `batch_size`
    that is at most CPU_EXAMPLES_PER_PASS (and at least 8; else the whole batch); elsewhere the
    whole batch, which fills an accelerator; on either, at most `limit` examples (the largest
    divisor of the batch up to it, a multiple of `data_devices` when the batch is, so that each
    pass splits evenly over a mesh's 'data' axis; pass_limit: what one trial's step may hold in
    device memory), so that a batch too large for the device trains as the mean of its passes'
    gradients. The network must then treat the examples of a batch independently in training, as
    the built-in models do (a model that mixes examples without a mutable collection, e.g. its own
    normalization over the batch axis, would train differently in passes: config.batch_in_passes =
    False, or per_pass=WHOLE_BATCH, gives it the whole batch). XLA:CPU runs each operation over the whole
    batch, whose patches and activations fall out of the caches at large batches (the Simple-CNN
    step ran 1.28x faster at batch 512 in passes of 32; README, "Performance"). A network with
    mutable collections (BatchNorm statistics) must see the whole batch at once, whatever `limit`.
    """
    backend = backend or jax.default_backend()
    if network_lib.as_network(network).has_state:
        return batch_size
    size = batch_size
    if backend == 'cpu' and batch_size > CPU_EXAMPLES_PER_PASS:
        size = next((divisor for divisor in range(CPU_EXAMPLES_PER_PASS, 7, -1) if batch_size % divisor == 0),
                    batch_size)
    if limit is not None and size > limit:
        share = data_devices if batch_size % data_devices == 0 else 1
        size = share * largest_divisor_up_to(batch_size // share, max(1, limit // share))
    return size


def largest_divisor_up_to(number: int, limit: int) -> int:
    """The largest divisor of `number` that is at most `limit` (>= 1)."""
    return max(divisor for small in range(1, math.isqrt(number) + 1) if number % small == 0
               for divisor in (small, number // small) if divisor <= limit)


def pass_limit(bytes_per_example: float | None, memory_bytes: int, state_bytes: int = 0,
               data_devices: int = 1) -> int | None:
    """The most examples one pass of ONE trial's training step may take (examples_per_pass's
    limit): what `memory_bytes` per device holds beside the trial's state, gradient and update
    (4 x `state_bytes`), at `bytes_per_example` (engine.train_bytes_per_example), times the
    `data_devices` a batch is split over; None without an estimate (no limit)."""
    if not bytes_per_example:
        return None
    return data_devices * max(1, int((memory_bytes - 4 * state_bytes) // bytes_per_example))


def configured_per_pass(config: Any) -> int | None:
    """make_train_step's per_pass for a config: None (examples_per_pass) unless
    config.batch_in_passes is False (WHOLE_BATCH); a config without the field takes passes."""
    return None if config.get('batch_in_passes', True) else WHOLE_BATCH


def make_train_step(network: NetworkLike, optimizer: optax.GradientTransformationExtraArgs,
                    per_pass: int | None = None, limit: int | None = None, data_devices: int = 1
                    ) -> Callable[[TrainState, tuple[jax.Array, jax.Array]], tuple[TrainState, StepMetrics]]:
    """train_step(state, (images (B,H,W,C), labels (B,))) -> (state, metrics) for ONE trial.

    The forward pass uses the masked weights, as the reference does (w * c), so the gradient of
    a pruned entry is zero; the optimizer masks again so pruned entries never move. The network
    runs in training mode: its mutable collections (BatchNorm statistics) are updated, and
    dropout draws from the trial's key folded with the step.

    per_pass: examples per forward and backward pass (None: examples_per_pass(B, limit=limit,
    data_devices=data_devices), where `limit` is pass_limit's bound from device memory or None; at
    least B, e.g. WHOLE_BATCH: the whole batch at once). With P passes, pass i takes examples i, i + P, i + 2P, ...
    (so a batch sharded over a mesh's data axis keeps every device busy in every pass); the
    gradient and loss are the means of the passes' (the batch's, up to float rounding), and pass i
    draws its dropout from the step's key folded with i.
    """
    network = network_lib.as_network(network)

    def train_step(state: TrainState, batch: tuple[jax.Array, jax.Array]) -> tuple[TrainState, StepMetrics]:
        images, labels = batch
        step_key = None if state.dropout_key is None else jax.random.fold_in(state.dropout_key, state.step)

        def loss_fn(params, images, labels, key):
            logits, model_state = network.train_apply(apply_mask(params, state.mask), state.model_state, images, key)
            return losses.cross_entropy(logits, labels), model_state

        batch_size = images.shape[0]
        size = examples_per_pass(batch_size, network, limit=limit, data_devices=data_devices) if per_pass is None \
            else per_pass
        if size < 1:
            raise ValueError(f'per_pass must be >= 1 (or None), got {size}')
        if size >= batch_size:
            (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, images, labels,
                                                                                   step_key)
        else:
            if batch_size % size or network.has_state:
                raise ValueError(f'per_pass={size} must divide the batch ({batch_size}) of a network without '
                                 f'mutable collections (this one has {network.collections})')
            passes = batch_size // size
            split = lambda array: jnp.swapaxes(array.reshape((size, passes) + array.shape[1:]), 0, 1)

            def one_pass(totals, pass_batch):
                index, pass_images, pass_labels = pass_batch
                key = None if step_key is None else jax.random.fold_in(step_key, index)
                (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, pass_images,
                                                                             pass_labels, key)
                return jax.tree.map(jnp.add, totals, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            totals, _ = jax.lax.scan(one_pass, zeros, (jnp.arange(passes), split(images), split(labels)))
            loss, grads = jax.tree.map(lambda total: total / passes, totals)
            model_state = state.model_state
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, mask=state.mask)
        params = optax.apply_updates(state.params, updates)
        return state._replace(params=params, opt_state=opt_state, step=state.step + 1,
                              model_state=model_state), StepMetrics(loss)

    return train_step


def configured_stop_above(config: Any, num_val_examples: int) -> int | None:
    """make_val_error_count's stop_above for a config: None (count the whole split) unless
    config.exact_val_errors is False (absent from older configs: True)."""
    if config.get('exact_val_errors', True):
        return None
    return max_errors_at_goal(num_val_examples, config.goal_error)


def _count_in_chunks(count: Callable, errors: jax.Array, images, labels, chunk_size: int,
                     stop_above: int | None, counting: jax.Array | None = None) -> jax.Array:
    """`errors` plus count(chunk_images, chunk_labels) over the split's chunks, then its remainder.

    errors: int32 () for one trial or (N,) for stacked trials, the shape `count` returns. Without
    stop_above, a map over every chunk. With it, a while loop: an entry stops growing after the
    chunk that takes it above stop_above, and the loop ends once no entry of `counting` (bool like
    errors; None: every entry) can still grow. The chunk index is shared by every entry either way,
    so stacked trials evaluate one common chunk per iteration. An entry above stop_above comes back
    as stop_above + 1, the least count that misses the goal: a lower bound that does not depend on
    where the chunks end (the chunk size, so the device's memory).
    """
    num_examples = images.shape[0]
    num_full = num_examples // chunk_size
    if stop_above is None:  # every chunk: a map over them, the program every check ran before stop_above
        if num_full:
            chunks = (images[:num_full * chunk_size].reshape((num_full, chunk_size) + images.shape[1:]),
                      labels[:num_full * chunk_size].reshape((num_full, chunk_size) + labels.shape[1:]))
            errors = errors + jax.lax.map(lambda chunk: count(*chunk), chunks).sum(axis=0, dtype=jnp.int32)
        if num_examples % chunk_size:
            errors = errors + count(images[num_full * chunk_size:], labels[num_full * chunk_size:])
        return errors

    def growing(errors):
        undecided = errors <= stop_above
        return undecided if counting is None else undecided & counting

    def added(errors, chunk_images, chunk_labels):
        return errors + jnp.where(growing(errors), count(chunk_images, chunk_labels), 0)

    if num_full:
        def going_on(carry):
            chunks_done, errors = carry
            return (chunks_done < num_full) & jnp.any(growing(errors))

        def next_chunk(carry):
            chunks_done, errors = carry
            start = chunks_done * chunk_size
            return chunks_done + 1, added(errors, jax.lax.dynamic_slice_in_dim(images, start, chunk_size),
                                          jax.lax.dynamic_slice_in_dim(labels, start, chunk_size))

        _, errors = jax.lax.while_loop(going_on, next_chunk, (jnp.zeros((), jnp.int32), errors))
    if num_examples % chunk_size:
        rest = slice(num_full * chunk_size, num_examples)
        errors = jax.lax.cond(jnp.any(growing(errors)), lambda e: added(e, images[rest], labels[rest]),
                              lambda e: e, errors)
    return jnp.minimum(errors, stop_above + 1)


@dataclasses.dataclass(frozen=True)
class ValErrorCount:
    """val_error(state, images, labels) -> misclassified examples (int32) of the WHOLE split, one trial.

    The network runs in evaluation mode on the trial's masked weights and model state, over chunks
    of `chunk_size` examples (a loop over the chunks, then the remainder). The count, not a rate,
    goes to the host, where `reached_goal` decides as the reference does. `stacked` counts a leading
    axis of trials at once (the engine's vmapped check).

    stop_above: None counts every example. With a count (the most errors at which a trial still
    reaches the goal: max_errors_at_goal), a trial's counting stops after the chunk that takes it
    above that: the goal decision is the same, and the count is then stop_above + 1, a lower bound
    just above the goal whatever the chunk size (config.exact_val_errors = False). The engine and
    run_trial check it against their goal.
    """
    network: network_lib.Network
    chunk_size: int = 1000
    stop_above: int | None = None

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f'eval chunk_size must be >= 1, got {self.chunk_size}')
        if self.stop_above is not None and self.stop_above < 0:
            raise ValueError(f'stop_above must be None or >= 0 (errors a trial may make and still reach the goal), '
                             f'got {self.stop_above}')

    def _count(self, params, model_state, images, labels) -> jax.Array:
        return losses.error_count(self.network.eval_apply(params, model_state, images), labels)

    def __call__(self, state: TrainState, images, labels) -> jax.Array:
        masked = apply_mask(state.params, state.mask)
        return _count_in_chunks(lambda chunk_images, chunk_labels: self._count(
            masked, state.model_state, chunk_images, chunk_labels), jnp.zeros((), jnp.int32), images, labels,
            self.chunk_size, self.stop_above)

    def stacked(self, states: TrainState, active: jax.Array, images, labels) -> jax.Array:
        """Error counts (trials,) of stacked `states`, 0 where not `active`; an inactive slot never
        keeps a check that stops counting going."""
        masked = jax.vmap(apply_mask)(states.params, states.mask)
        count = jax.vmap(self._count, in_axes=(0, 0, None, None))
        errors = _count_in_chunks(lambda chunk_images, chunk_labels: count(
            masked, states.model_state, chunk_images, chunk_labels), jnp.zeros(active.shape, jnp.int32), images,
            labels, self.chunk_size, self.stop_above, counting=active)
        return jnp.where(active, errors, 0)


def make_val_error_count(network: NetworkLike, chunk_size: int = 1000, stop_above: int | None = None
                         ) -> ValErrorCount:
    """The whole-split error count of one trial (ValErrorCount) for a Network or a plain apply function."""
    return ValErrorCount(network_lib.as_network(network), chunk_size, stop_above)


def errors_may_be_bounds(val_error: Callable) -> bool:
    """Whether `val_error` may stop counting above the goal (ValErrorCount.stop_above), so that an
    error recorded for a check that missed the goal is a lower bound."""
    return isinstance(val_error, ValErrorCount) and val_error.stop_above is not None


def require_goal_limit(val_error: Callable, num_val_examples: int, goal_error: float) -> None:
    """ValueError when `val_error` stops counting at another limit than `goal_error` allows: it would
    decide the goal wrongly."""
    if not errors_may_be_bounds(val_error):
        return
    allowed = max_errors_at_goal(num_val_examples, goal_error)
    if val_error.stop_above != allowed:
        raise ValueError(f'val_error stops counting above {val_error.stop_above} errors, but goal_error={goal_error:g} '
                         f'of {num_val_examples} validation examples allows {allowed}: build it with '
                         f'stop_above=max_errors_at_goal({num_val_examples}, {goal_error:g})')


class DataOrder(NamedTuple):
    """An endless shuffled stream of training-example indices, positioned at one step.

    A fresh permutation per epoch, and a batch that runs past the end of one permutation
    continues into the next, as the reference's stream: nothing is dropped. `window` holds the
    permutations of `epoch` and `epoch + 1`; the next batch starts at `offset` in it. With a
    leading trial axis it is one stream per trial (all at the same position).
    """
    key: jax.Array     # uint32[2] raw key of the data seed
    epoch: jax.Array   # int32, the epoch of the window's first half
    offset: jax.Array  # int32 in [0, num_examples): where the next batch starts
    window: jax.Array  # int32 (2 * num_examples,): permutations of epoch and epoch + 1


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order of the examples in `epoch` (int32 (num_examples,))."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples).astype(jnp.int32)


def _epoch_window(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    return jnp.concatenate([epoch_permutation(key, epoch, num_examples),
                            epoch_permutation(key, epoch + 1, num_examples)])


def init_data_order(seed: int, num_examples: int, step: int = 0, batch_size: int = 1) -> DataOrder:
    """The stream of data seed `seed` positioned for training step `step` at `batch_size`.

    The position is step * batch_size examples into the stream (Python integers: exact at any
    step), so the order is a pure function of (seed, step, batch_size) and any step can resume.
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f'batch_size={batch_size} must be in [1, {num_examples}] (the training split)')
    key = jax.random.PRNGKey(seed)
    epoch, offset = divmod(int(step) * int(batch_size), int(num_examples))
    epoch = jnp.asarray(epoch, jnp.int32)
    return DataOrder(key, epoch, jnp.asarray(offset, jnp.int32), _epoch_window(key, epoch, num_examples))


def _advance(order: DataOrder, batch_size: int, permutation_of: Callable) -> DataOrder:
    """The order after one batch: once the offset passes the first permutation, the window
    moves on by one epoch (a cond, so new permutations are drawn only at epoch ends)."""
    num_examples = order.window.shape[-1] // 2
    offset = order.offset + batch_size
    # All streams are at the same position: one test (outside any vmap) for all of them.
    crossed = jnp.reshape(offset, (-1,))[0] >= num_examples

    def next_epoch():
        epoch = order.epoch + 1
        window = jnp.concatenate([order.window[..., num_examples:], permutation_of(order.key, epoch + 1)], axis=-1)
        return DataOrder(order.key, epoch, offset - num_examples, window)

    return jax.lax.cond(crossed, next_epoch, lambda: order._replace(offset=offset))


def next_batch_indices(order: DataOrder, batch_size: int) -> tuple[DataOrder, jax.Array]:
    """(order, indices (batch_size,) int32) of the next batch of the stream."""
    num_examples = order.window.shape[-1] // 2
    if batch_size > num_examples:
        raise ValueError(f'batch_size={batch_size} is larger than the training split ({num_examples})')
    indices = jax.lax.dynamic_slice(order.window, (order.offset,), (batch_size,))
    return _advance(order, batch_size, lambda key, epoch: epoch_permutation(key, epoch, num_examples)), indices


def next_batch_indices_per_trial(orders: DataOrder, batch_size: int) -> tuple[DataOrder, jax.Array]:
    """next_batch_indices for stacked per-trial streams: indices (trials, batch_size)."""
    num_examples = orders.window.shape[-1] // 2
    if batch_size > num_examples:
        raise ValueError(f'batch_size={batch_size} is larger than the training split ({num_examples})')
    indices = jax.vmap(lambda window, offset: jax.lax.dynamic_slice(window, (offset,), (batch_size,)))(
        orders.window, orders.offset)
    permutations = jax.vmap(epoch_permutation, in_axes=(0, 0, None))
    return _advance(orders, batch_size, lambda keys, epochs: permutations(keys, epochs, num_examples)), indices


def next_batch(order: DataOrder, train_images: jax.Array, train_labels: jax.Array, batch_size: int,
               per_trial: bool = False) -> tuple[DataOrder, tuple[jax.Array, jax.Array]]:
    """(order, (images, labels)) of the stream's next batch, gathered on device from the resident split.

    Shapes (batch_size, ...) from one stream; with per_trial, stacked streams give (trials, batch_size, ...).
    """
    order, indices = (next_batch_indices_per_trial if per_trial else next_batch_indices)(order, batch_size)
    return order, (train_images[indices], train_labels[indices])


def make_train_chunk(train_step, batch_size: int, num_steps: int):
    """train_chunk(state, order, train_images, train_labels) -> (state, order, metrics (num_steps,)).

    `num_steps` steps in one lax.scan; each batch is gathered on device from the resident split,
    so the host is not involved between checks.
    """

    def train_chunk(state, order, train_images, train_labels):
        def body(carry, _):
            state, order = carry
            order, batch = next_batch(order, train_images, train_labels, batch_size)
            state, metrics = train_step(state, batch)
            return (state, order), metrics

        (state, order), metrics = jax.lax.scan(body, (state, order), None, length=num_steps)
        return state, order, metrics

    return train_chunk


def trial_keys(seed) -> tuple[jax.Array, jax.Array]:
    """(initialization key, mask key) of the trial with this seed (the trial index, as in the reference)."""
    init_key, mask_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, mask_key


def dropout_key(seed) -> jax.Array:
    """The trial's dropout key (uint32[2]); not its initialization or mask key (a plain fold_in(key, 1)
    would equal the mask key where threefry is partitionable)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), DROPOUT_KEY_TAG)


def init_params(model, example_shape: tuple, seed) -> Any:
    """The model's initial parameters for a trial's seed."""
    return model.init(trial_keys(seed)[0], jnp.zeros((1,) + tuple(example_shape), jnp.float32))['params']


def init_variables(network: network_lib.Network, example_shape: tuple, seed) -> tuple[Any, Any]:
    """(params, model_state) of a trial's seed; the params equal init_params of the same Module."""
    return network.init(trial_keys(seed)[0], example_shape)


def scoring_apply(network: NetworkLike, model_state: Any) -> Callable:
    """(params, images, key) -> logits for pruning scores: the network at initialization in training
    mode, as common SNIP implementations score it (BatchNorm on the batch's statistics, their updates
    discarded; dropout drawn from `key`, which masks.mask_gradient_sum folds with the batch index)."""
    network = network_lib.as_network(network)
    return lambda params, images, key: network.train_apply(params, model_state, images, key)[0]


def initial_scores(network: NetworkLike, pruning: str, seed, params: Any, model_state: Any, images: jax.Array,
                   labels: jax.Array, batch_size: int = 100) -> Any:
    """A trial's pruning scores at initialization (masks.pruning_scores, like params): its mask key
    draws random scores and SNIP's dropout (scoring_apply); SNIP sums over `images` in batches."""
    mask_key = trial_keys(seed)[1]
    return masks.pruning_scores(pruning, key=mask_key, params=params, apply_fn=scoring_apply(network, model_state),
                                images=images, labels=labels, batch_size=batch_size, dropout_key=mask_key)


def new_trial_state(params: Any, mask: Any, optimizer, hyperparameters, model_state: Any = None,
                    dropout_key: jax.Array | None = None) -> TrainState:
    """Step-0 state: pruned entries zeroed, a fresh optimizer state holding the hyperparameters."""
    params = apply_mask(params, mask)
    opt_state = optim.init_optimizer_state(optimizer, params, hyperparameters)
    return TrainState(params, mask, opt_state, jnp.zeros((), jnp.int32), {} if model_state is None else model_state,
                      dropout_key)


def make_init_trial(network, optimizer, example_shape: tuple, *, pruning: str, sparsity: float,
                    kernels_only: bool = False, snip_batch_size: int = 100) -> Callable:
    """init_trial(seed, hyperparameters, train_images, train_labels) -> TrainState, for ONE trial.

    `network`: a dps_jax.network.Network, or a flax Module (run at the ambient matmul precision).
    The seed draws the initialization, the dropout key and the mask key (random pruning's scores;
    SNIP's dropout, see scoring_apply); SNIP uses the whole training split given. vmap it over seeds and
    hyperparameters for N trials.
    """
    if not isinstance(network, network_lib.Network):
        network = network_lib.from_module(network, example_shape)

    def init_trial(seed, hyperparameters, train_images, train_labels):
        params, model_state = init_variables(network, example_shape, seed)
        mask_key = trial_keys(seed)[1]
        mask = masks.make_mask(pruning, key=mask_key, params=params, sparsity=sparsity,
                               apply_fn=scoring_apply(network, model_state), images=train_images,
                               labels=train_labels, batch_size=snip_batch_size, kernels_only=kernels_only,
                               dropout_key=mask_key)
        return new_trial_state(params, mask, optimizer, hyperparameters, model_state, dropout_key(seed))

    return init_trial


class TrialResult(NamedTuple):
    """How one trial ended."""
    status: str                  # one of STATUSES except 'running'
    steps_to_result: int | None  # the step of the first check with val error <= goal
    steps: int                   # steps trained
    best_val_error: float
    history: list                # [(step, val_error, last train loss)] per check
    wall_seconds: float


def run_trial(*, state: TrainState, train_step, val_error, train_images, train_labels,
              val_images, val_labels, batch_size: int, goal_error: float, max_steps: int,
              check_every: int, data_seed: int, log: Callable[[str], None] | None = None) -> TrialResult:
    """Trains one trial until its validation error <= goal_error, it diverges, or max_steps.

    val_error(state, images, labels) gives the split's error count (make_val_error_count;
    a float error value also works, see reached_goal). The host reads a few scalars per check,
    never per step.
    """
    started = time.perf_counter()
    order = init_data_order(data_seed, train_images.shape[0], batch_size=batch_size)
    train_chunk = jax.jit(make_train_chunk(train_step, batch_size, check_every))
    evaluate = jax.jit(val_error)
    rule, ledger, only = Rule(goal_error, int(val_images.shape[0]), max_steps), Ledger.new(1), np.zeros(1, np.int64)
    require_goal_limit(val_error, int(val_images.shape[0]), goal_error)
    history, steps, bounds = [], 0, errors_may_be_bounds(val_error)
    while steps < max_steps and ledger.running[0]:
        state, order, metrics = train_chunk(state, order, train_images, train_labels)
        steps += check_every
        # One host read: losses are taken before each update, so a broken last step shows only
        # in the weights.
        errors, finite, last_loss = jax.device_get((
            evaluate(state, val_images, val_labels),
            jnp.all(jnp.isfinite(metrics.loss)) & all_finite((state.params, state.model_state)), metrics.loss[-1]))
        ledger = ledger.after_check(only, np.reshape(errors, 1), np.reshape(finite, 1), steps, rule)
        error, last_loss = float(ledger.last_val_error[0]), float(last_loss)
        history.append((steps, error, last_loss))
        if log is not None:
            at_least = '>= ' if bounds and ledger.steps_to_result[0] < 0 else ''
            log(f'step {steps:>7d}  val error {at_least}{error:.4f}  train loss {last_loss:.4f}  '
                f'({time.perf_counter() - started:.1f} s)')
    status = int(ledger.status[0])
    return TrialResult(STATUSES[status] if status != RUNNING else 'exhausted',  # running: a budget of 0 steps
                       int(ledger.steps_to_result[0]) if ledger.steps_to_result[0] >= 0 else None, steps,
                       float(ledger.best_val_error[0]), history, time.perf_counter() - started)
