"""One trial as pure functions: the train step, the whole-split validation error, the data order.

The engine vmaps exactly these functions over a leading trial axis; `run_trial` is the
single-trial loop (one trial to a goal error), used by launch.py and as the engine's reference.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dps_jax import losses, masks, optim

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (params, images) -> logits

STATUSES = ('running', 'reached', 'diverged', 'exhausted')


class TrainState(NamedTuple):
    """One trial's training state; with a leading axis N it is N trials."""
    params: Any
    mask: Any          # bool pytree like params: True = kept
    opt_state: Any     # holds the trial's hyperparameters (optim.init_optimizer_state)
    step: jax.Array    # int32, steps taken


class StepMetrics(NamedTuple):
    """What one training step reports."""
    loss: jax.Array    # mean cross-entropy of the batch, before the update
    error: jax.Array   # error rate of the batch, before the update


def all_finite(params: Any) -> jax.Array:
    """Whether every entry of every leaf is finite (a bool scalar; vmap it for N trials)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(params)]))


def apply_mask(params: Any, mask: Any) -> Any:
    """Pruned entries set to exactly zero (the masked network's weights)."""
    return jax.tree.map(lambda param, keep: jnp.where(keep, param, jnp.zeros_like(param)), params, mask)


def make_train_step(apply_fn: ApplyFn, optimizer: optax.GradientTransformationExtraArgs
                    ) -> Callable[[TrainState, tuple[jax.Array, jax.Array]], tuple[TrainState, StepMetrics]]:
    """train_step(state, (images (B,H,W,C), labels (B,))) -> (state, metrics) for ONE trial.

    The forward pass uses the masked weights, as the reference does (w * c), so the gradient of
    a pruned entry is zero; the optimizer masks again so pruned entries never move.
    """

    def train_step(state: TrainState, batch: tuple[jax.Array, jax.Array]) -> tuple[TrainState, StepMetrics]:
        images, labels = batch

        def loss_fn(params):
            logits = apply_fn(apply_mask(params, state.mask), images)
            return losses.cross_entropy(logits, labels), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, mask=state.mask)
        params = optax.apply_updates(state.params, updates)
        error = losses.error_count(logits, labels) / labels.shape[0]
        return TrainState(params, state.mask, opt_state, state.step + 1), StepMetrics(loss, error)

    return train_step


def make_val_error(apply_fn: ApplyFn, chunk_size: int = 1000
                   ) -> Callable[[Any, Any, jax.Array, jax.Array], jax.Array]:
    """val_error(params, mask, images, labels) -> error rate (float32) over the WHOLE split.

    Evaluated in chunks of `chunk_size` examples (a lax.map, then the remainder), exactly:
    errors are counted as integers and divided once.
    """
    if chunk_size < 1:
        raise ValueError(f'eval chunk_size must be >= 1, got {chunk_size}')

    def val_error(params, mask, images, labels):
        masked = apply_mask(params, mask)
        num_examples = images.shape[0]
        num_full = num_examples // chunk_size
        errors = jnp.zeros((), jnp.int32)
        if num_full:
            chunks = (images[:num_full * chunk_size].reshape((num_full, chunk_size) + images.shape[1:]),
                      labels[:num_full * chunk_size].reshape((num_full, chunk_size)))
            per_chunk = jax.lax.map(lambda chunk: losses.error_count(apply_fn(masked, chunk[0]), chunk[1]),
                                    chunks)
            errors = errors + per_chunk.sum()
        if num_examples % chunk_size:
            rest = slice(num_full * chunk_size, num_examples)
            errors = errors + losses.error_count(apply_fn(masked, images[rest]), labels[rest])
        return errors.astype(jnp.float32) / num_examples

    return val_error


class DataOrder(NamedTuple):
    """Which examples the next batches take: a fresh permutation each epoch, from a data seed.

    Every batch is full: an epoch is num_examples // batch_size steps; the remainder of each
    permutation is skipped. The order is a pure function of (seed, step), so any step can be
    resumed.
    """
    key: jax.Array          # uint32[2] raw key of the data seed
    epoch: jax.Array        # int32, the epoch `permutation` belongs to
    permutation: jax.Array  # int32 (num_examples,)


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order of the examples in `epoch` (int32 (num_examples,))."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples).astype(jnp.int32)


def init_data_order(seed: int, num_examples: int, step: int = 0, batch_size: int = 1) -> DataOrder:
    """The data order positioned for `step` (epoch = step // (num_examples // batch_size))."""
    key = jax.random.PRNGKey(seed)
    epoch = jnp.asarray(step // max(1, num_examples // batch_size), jnp.int32)
    return DataOrder(key, epoch, epoch_permutation(key, epoch, num_examples))


def next_batch_indices(order: DataOrder, step: jax.Array, batch_size: int) -> tuple[DataOrder, jax.Array]:
    """(order, indices (batch_size,) int32) for training step `step`; reshuffles at epoch ends."""
    num_examples = order.permutation.shape[0]
    steps_per_epoch = num_examples // batch_size
    epoch = (step // steps_per_epoch).astype(jnp.int32)
    order = jax.lax.cond(
        epoch == order.epoch,
        lambda: order,
        lambda: DataOrder(order.key, epoch, epoch_permutation(order.key, epoch, num_examples)))
    start = (step % steps_per_epoch) * batch_size
    return order, jax.lax.dynamic_slice(order.permutation, (start,), (batch_size,))


def make_train_chunk(train_step, batch_size: int, num_steps: int):
    """train_chunk(state, order, train_images, train_labels) -> (state, order, metrics (num_steps,)).

    `num_steps` steps in one lax.scan; each batch is gathered on device from the resident split,
    so the host is not involved between checks.
    """

    def train_chunk(state, order, train_images, train_labels):
        def body(carry, _):
            state, order = carry
            order, indices = next_batch_indices(order, state.step, batch_size)
            state, metrics = train_step(state, (train_images[indices], train_labels[indices]))
            return (state, order), metrics

        (state, order), metrics = jax.lax.scan(body, (state, order), None, length=num_steps)
        return state, order, metrics

    return train_chunk


def trial_keys(seed) -> tuple[jax.Array, jax.Array]:
    """(initialization key, mask key) of the trial with this seed (the trial index, as in the reference)."""
    init_key, mask_key = jax.random.split(jax.random.PRNGKey(seed))
    return init_key, mask_key


def init_params(model, example_shape: tuple, seed) -> Any:
    """The model's initial parameters for a trial's seed."""
    return model.init(trial_keys(seed)[0], jnp.zeros((1,) + tuple(example_shape), jnp.float32))['params']


def new_trial_state(params: Any, mask: Any, optimizer, hyperparameters) -> TrainState:
    """Step-0 state: pruned entries zeroed, a fresh optimizer state holding the hyperparameters."""
    params = apply_mask(params, mask)
    opt_state = optim.init_optimizer_state(optimizer, params, hyperparameters)
    return TrainState(params, mask, opt_state, jnp.zeros((), jnp.int32))


def make_init_trial(model, optimizer, example_shape: tuple, *, pruning: str, sparsity: float,
                    kernels_only: bool = False, snip_batch_size: int = 100) -> Callable:
    """init_trial(seed, hyperparameters, train_images, train_labels) -> TrainState, for ONE trial.

    The seed draws the initialization and, for random pruning, the mask; SNIP uses the whole
    training split given. vmap it over seeds and hyperparameters for N trials.
    """
    apply_fn = lambda params, images: model.apply({'params': params}, images)

    def init_trial(seed, hyperparameters, train_images, train_labels):
        params = init_params(model, example_shape, seed)
        mask = masks.make_mask(pruning, key=trial_keys(seed)[1], params=params, sparsity=sparsity,
                               apply_fn=apply_fn, images=train_images, labels=train_labels,
                               batch_size=snip_batch_size, kernels_only=kernels_only)
        return new_trial_state(params, mask, optimizer, hyperparameters)

    return init_trial


def reaches_goal(error, goal_error: float):
    """error <= goal_error, compared in float32 where the error was computed.

    count / n is rounded to float32 once; rounding the goal the same way keeps an error exactly
    at the goal (e.g. 84 / 600 = 0.14) counted as reached. Works on numpy arrays too.
    """
    return np.asarray(error, np.float32) <= np.float32(goal_error)


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

    The host reads two scalars per check (val error, loss finiteness), never per step.
    """
    started = time.perf_counter()
    order = init_data_order(data_seed, train_images.shape[0])
    train_chunk = jax.jit(make_train_chunk(train_step, batch_size, check_every))
    evaluate = jax.jit(val_error)
    history, best = [], float('inf')
    steps, status, steps_to_result = 0, 'exhausted', None
    while steps < max_steps:
        state, order, metrics = train_chunk(state, order, train_images, train_labels)
        steps += check_every
        error = float(evaluate(state.params, state.mask, val_images, val_labels))
        # One host read: losses are taken before each update, so a broken last step shows only
        # in the weights.
        finite = bool(jnp.all(jnp.isfinite(metrics.loss)) & all_finite(state.params))
        last_loss = float(metrics.loss[-1])
        history.append((steps, error, last_loss))
        best = min(best, error)
        if log is not None:
            log(f'step {steps:>7d}  val error {error:.4f}  train loss {last_loss:.4f}  '
                f'({time.perf_counter() - started:.1f} s)')
        if not finite or not np.isfinite(error):
            status = 'diverged'
            break
        if reaches_goal(error, goal_error):
            status, steps_to_result = 'reached', steps
            break
    return TrialResult(status, steps_to_result, steps, best, history, time.perf_counter() - started)
