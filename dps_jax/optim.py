"""Optimizers with TensorFlow 1 semantics and per-trial hyperparameters held in the state.

Heavy-ball momentum is v <- m v + g; w <- w - lr v, and Nesterov is w <- w - lr (g + m v_new),
exactly TF1's MomentumOptimizer (optax.trace implements both). The learning rate, momentum and
decay settings live in the optimizer state (optax.inject_hyperparams), so one compiled step
serves any number of trials with different values: vmap over the state's leading axis.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('sgd', 'momentum', 'nesterov')
SCHEDULES = ('constant', 'linear')
HYPERPARAMETERS = ('learning_rate', 'momentum', 'decay_steps', 'end_learning_rate_factor')

# Values stored before a trial's own are set; they only fix dtypes and shapes of the state.
_PLACEHOLDER_HYPERPARAMETERS = {
    'learning_rate': 0.1,
    'momentum': 0.9,
    'decay_steps': 1,
    'end_learning_rate_factor': 1.0,
}


def linear_decay(step, learning_rate, end_learning_rate_factor, decay_steps):
    """TF1 polynomial_decay (power 1, no cycle): lr to lr * end_factor over decay_steps, then held.

    All arguments may be traced arrays (decay_steps differs per trial), so this is plain jnp.
    """
    step = jnp.minimum(step, decay_steps)
    end_learning_rate = learning_rate * end_learning_rate_factor
    fraction_left = 1.0 - step / decay_steps
    return (learning_rate - end_learning_rate) * fraction_left + end_learning_rate


def _tf1_optimizer(learning_rate, momentum, decay_steps, end_learning_rate_factor, *,
                   optimizer: str, schedule: str) -> optax.GradientTransformation:
    """The optimizer for given (possibly traced) hyperparameters; rebuilt by inject_hyperparams each step."""
    if schedule == 'constant':
        step_size = lambda count: -learning_rate
    else:
        step_size = lambda count: -linear_decay(count, learning_rate, end_learning_rate_factor,
                                                decay_steps)
    transforms = []
    if optimizer != 'sgd':
        transforms.append(optax.trace(decay=momentum, nesterov=optimizer == 'nesterov'))
    transforms.append(optax.scale_by_schedule(step_size))
    return optax.chain(*transforms)


class MaskUpdatesState(NamedTuple):
    """mask_updates keeps no state."""


def mask_updates() -> optax.GradientTransformationExtraArgs:
    """Zeroes the updates of pruned entries; the mask (same pytree as params, bool or 0/1) comes
    as the extra argument `mask` of update, so one transformation serves every trial's mask.

    `where` rather than a product: a non-finite gradient in a pruned entry must not leak (nan * 0).
    """

    def init_fn(params):
        del params
        return MaskUpdatesState()

    def update_fn(updates, state, params=None, *, mask, **extra_args):
        del params, extra_args
        masked = jax.tree.map(lambda update, keep: jnp.where(keep, update, jnp.zeros_like(update)),
                              updates, mask)
        return masked, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(optimizer: str, schedule: str = 'constant') -> optax.GradientTransformationExtraArgs:
    """A masked TF1-style optimizer; call `init_optimizer_state` to set a trial's hyperparameters.

    The gradient is masked on the way in (so momentum buffers of pruned entries stay zero) and
    the update on the way out (so pruned weights never move). update needs `mask=`.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f'unknown optimizer {optimizer!r}; accepted: {", ".join(OPTIMIZERS)}')
    if schedule not in SCHEDULES:
        raise ValueError(f'unknown schedule {schedule!r}; accepted: {", ".join(SCHEDULES)}')
    inner = optax.inject_hyperparams(_tf1_optimizer, static_args=('optimizer', 'schedule'))(
        **_PLACEHOLDER_HYPERPARAMETERS, optimizer=optimizer, schedule=schedule)
    return optax.chain(mask_updates(), inner, mask_updates())


def init_optimizer_state(optimizer: optax.GradientTransformation, params: Any,
                         hyperparameters: Mapping[str, Any]) -> optax.OptState:
    """The optimizer state for `params` with a trial's hyperparameters (scalars or traced arrays).

    Hyperparameters not given keep neutral placeholders (e.g. decay settings under 'constant').
    """
    unknown = set(hyperparameters) - set(HYPERPARAMETERS)
    if unknown:
        raise ValueError(f'unknown hyperparameters {sorted(unknown)}; accepted: {", ".join(HYPERPARAMETERS)}')
    state = optimizer.init(params)
    values = {}
    # Every value is set with a fixed dtype, so the state has the same types whatever was given.
    for name, value in {**_PLACEHOLDER_HYPERPARAMETERS, **hyperparameters}.items():
        dtype = jnp.int32 if name == 'decay_steps' else jnp.float32
        values[name] = jnp.asarray(value, dtype=dtype)
    return optax.tree_utils.tree_set(state, **values)


def hyperparameters_of(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """The hyperparameters held in an optimizer state made by `make_optimizer`."""
    return {name: optax.tree_utils.tree_get(opt_state, name) for name in HYPERPARAMETERS}
