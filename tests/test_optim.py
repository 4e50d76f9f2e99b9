"""Optimizers against updates computed by hand in numpy over several steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import optim

# Gradients of 1/2 w^T A w - b^T w, so they depend on the trajectory.
A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 3.0]])
B = np.array([1.0, -2.0, 0.5])
W0 = np.array([0.3, -0.7, 1.1])
NUM_STEPS = 7


def numpy_gradient(w):
    return A @ w - B


def numpy_run(optimizer, schedule, learning_rate, momentum=0.0, decay_steps=1, end_factor=1.0, mask=None):
    """TF1 semantics written out: v = m v + g; w -= lr v (Nesterov: w -= lr (g + m v))."""
    keep = np.ones(3) if mask is None else mask.astype(float)
    w, v = W0 * keep, np.zeros(3)
    for step in range(NUM_STEPS):
        if schedule == 'linear':
            fraction = min(step, decay_steps) / decay_steps
            rate = (learning_rate - learning_rate * end_factor) * (1 - fraction) + learning_rate * end_factor
        else:
            rate = learning_rate
        g = numpy_gradient(w) * keep
        if optimizer == 'sgd':
            w = w - rate * g
        elif optimizer == 'momentum':
            v = momentum * v + g
            w = w - rate * v
        else:
            v = momentum * v + g
            w = w - rate * (g + momentum * v)
        w = w * keep
    return w


def optax_run(optimizer, schedule, hyperparameters, mask=None):
    mask = {'w': jnp.ones(3, bool) if mask is None else jnp.asarray(mask)}
    tx = optim.make_optimizer(optimizer, schedule)
    params = {'w': jnp.asarray(W0, jnp.float32) * mask['w']}
    state = optim.init_optimizer_state(tx, params, hyperparameters)
    for _ in range(NUM_STEPS):
        grads = {'w': jnp.asarray(numpy_gradient(np.asarray(params['w'], np.float64)), jnp.float32)}
        updates, state = tx.update(grads, state, params, mask=mask)
        params = jax.tree.map(jnp.add, params, updates)
    return np.asarray(params['w']), state


@pytest.mark.parametrize('optimizer', optim.OPTIMIZERS)
def test_constant_schedule_matches_hand_computed_updates(optimizer):
    got, _ = optax_run(optimizer, 'constant', {'learning_rate': 0.1, 'momentum': 0.8})
    np.testing.assert_allclose(got, numpy_run(optimizer, 'constant', 0.1, 0.8), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('optimizer', optim.OPTIMIZERS)
def test_linear_schedule_decays_then_holds(optimizer):
    hyperparameters = {'learning_rate': 0.2, 'momentum': 0.6, 'decay_steps': 4, 'end_learning_rate_factor': 0.1}
    got, _ = optax_run(optimizer, 'linear', hyperparameters)
    np.testing.assert_allclose(got, numpy_run(optimizer, 'linear', 0.2, 0.6, 4, 0.1), rtol=1e-5, atol=1e-6)


def test_linear_decay_values():
    rates = [float(optim.linear_decay(step, 1.0, 0.01, 4)) for step in range(7)]
    np.testing.assert_allclose(rates, [1.0, 0.7525, 0.505, 0.2575, 0.01, 0.01, 0.01], rtol=1e-6)


def test_linear_decay_accepts_a_traced_per_trial_decay_steps():
    rates = jax.jit(jax.vmap(optim.linear_decay, in_axes=(None, None, None, 0)))(
        2, 1.0, 0.0, jnp.array([2, 4, 8]))
    np.testing.assert_allclose(rates, [0.0, 0.5, 0.75])


@pytest.mark.parametrize('optimizer', ['momentum', 'nesterov'])
def test_pruned_entries_never_move_and_their_momentum_stays_zero(optimizer):
    mask = np.array([True, False, True])
    got, state = optax_run(optimizer, 'constant', {'learning_rate': 0.1, 'momentum': 0.9}, mask)
    assert got[1] == 0.0
    trace = jax.tree.leaves(state[1].inner_state[0])[0]
    assert float(trace[1]) == 0.0
    np.testing.assert_allclose(got, numpy_run(optimizer, 'constant', 0.1, 0.9, mask=mask), rtol=1e-5, atol=1e-6)


def test_a_nan_gradient_in_a_pruned_entry_does_not_leak():
    tx = optim.make_optimizer('momentum')
    params = {'w': jnp.zeros(2)}
    state = optim.init_optimizer_state(tx, params, {'learning_rate': 0.1, 'momentum': 0.9})
    updates, _ = tx.update({'w': jnp.array([1.0, jnp.nan])}, state, params, mask={'w': jnp.array([True, False])})
    np.testing.assert_allclose(updates['w'][0], -0.1, rtol=1e-7)
    assert float(updates['w'][1]) == 0.0


def test_hyperparameters_are_held_in_the_state():
    tx = optim.make_optimizer('nesterov', 'linear')
    state = optim.init_optimizer_state(tx, {'w': jnp.zeros(2)}, {'learning_rate': 0.3, 'decay_steps': 123})
    values = optim.hyperparameters_of(state)
    assert float(values['learning_rate']) == pytest.approx(0.3)
    assert int(values['decay_steps']) == 123
    assert values['decay_steps'].dtype == jnp.int32


def test_one_compiled_update_serves_many_trials_with_their_own_hyperparameters():
    tx = optim.make_optimizer('momentum')
    rates, momenta = jnp.array([0.1, 0.01, 0.5]), jnp.array([0.9, 0.5, 0.0])
    params = {'w': jnp.ones((3, 2))}
    states = jax.vmap(lambda p, lr, m: optim.init_optimizer_state(tx, p, {'learning_rate': lr, 'momentum': m}))(
        params, rates, momenta)
    grads = {'w': jnp.ones((3, 2))}
    mask = {'w': jnp.ones((3, 2), bool)}
    step = jax.jit(jax.vmap(lambda g, s, p, m: tx.update(g, s, p, mask=m)))
    updates, states = step(grads, states, params, mask)
    updates, states = step(grads, states, params, mask)
    # Second step: v = m + 1, update = -lr (m + 1).
    np.testing.assert_allclose(updates['w'][:, 0], -np.array([0.1 * 1.9, 0.01 * 1.5, 0.5 * 1.0]), rtol=1e-6)


def test_unknown_optimizer_and_schedule_are_named():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'.*sgd, momentum, nesterov"):
        optim.make_optimizer('adam')
    with pytest.raises(ValueError, match="unknown schedule 'cosine'.*constant, linear"):
        optim.make_optimizer('sgd', 'cosine')
    with pytest.raises(ValueError, match='unknown hyperparameters'):
        optim.init_optimizer_state(optim.make_optimizer('sgd'), {'w': jnp.zeros(1)}, {'beta': 0.1})
