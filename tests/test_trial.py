"""The single-trial train step, whole-split validation error and data order."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import optim, trial

RNG = np.random.default_rng(1)


def linear_apply(params, images):
    flat = images.reshape((images.shape[0], -1))
    return flat @ params['dense']['kernel'] + params['dense']['bias']


def make_state(optimizer='sgd', hyperparameters=None, mask=None, features=5, classes=3):
    params = {'dense': {'kernel': jnp.asarray(RNG.normal(size=(features, classes)), jnp.float32),
                        'bias': jnp.asarray(RNG.normal(size=classes) * 0.1, jnp.float32)}}
    if mask is None:
        mask = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params)
    params = trial.apply_mask(params, mask)
    tx = optim.make_optimizer(optimizer)
    opt_state = optim.init_optimizer_state(tx, params, hyperparameters or {'learning_rate': 0.5})
    return trial.TrainState(params, mask, opt_state, jnp.zeros((), jnp.int32)), tx


def numpy_softmax_regression_step(kernel, bias, x, y, learning_rate):
    logits = x @ kernel + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    loss = -np.mean(np.log(probabilities[np.arange(len(y)), y]))
    delta = (probabilities - np.eye(kernel.shape[1])[y]) / len(y)
    return kernel - learning_rate * x.T @ delta, bias - learning_rate * delta.sum(0), loss


def test_train_step_is_one_sgd_step_on_the_batch_cross_entropy():
    state, tx = make_state()
    x = RNG.normal(size=(8, 5)).astype(np.float32)
    y = RNG.integers(0, 3, size=8)
    new_state, metrics = jax.jit(trial.make_train_step(linear_apply, tx))(state, (jnp.asarray(x), jnp.asarray(y)))
    kernel, bias, loss = numpy_softmax_regression_step(
        np.asarray(state.params['dense']['kernel'], np.float64), np.asarray(state.params['dense']['bias'], np.float64),
        x.astype(np.float64), y, 0.5)
    np.testing.assert_allclose(new_state.params['dense']['kernel'], kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state.params['dense']['bias'], bias, rtol=1e-5, atol=1e-6)
    assert float(metrics.loss) == pytest.approx(loss, rel=1e-5)
    assert int(new_state.step) == 1


def test_pruned_weights_stay_exactly_zero_under_momentum():
    mask = {'dense': {'kernel': jnp.asarray(RNG.random((5, 3)) < 0.5), 'bias': jnp.array([False, True, False])}}
    state, tx = make_state('nesterov', {'learning_rate': 0.3, 'momentum': 0.9}, mask)
    step = jax.jit(trial.make_train_step(linear_apply, tx))
    for _ in range(30):
        batch = (jnp.asarray(RNG.normal(size=(16, 5)), jnp.float32), jnp.asarray(RNG.integers(0, 3, size=16)))
        state, _ = step(state, batch)
    for param, keep in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)):
        pruned = np.asarray(param)[~np.asarray(keep)]
        assert np.all(pruned == 0.0) and not np.any(np.signbit(pruned))
        assert np.all(np.asarray(param)[np.asarray(keep)] != 0.0)


@pytest.mark.parametrize('chunk_size', [1, 100, 333, 1037, 5000])
def test_val_error_counts_every_example_of_the_split(chunk_size):
    state, _ = make_state()
    images = jnp.asarray(RNG.normal(size=(1037, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 3, size=1037))
    logits = np.asarray(images, np.float64) @ np.asarray(state.params['dense']['kernel'], np.float64) + np.asarray(
        state.params['dense']['bias'], np.float64)
    expected = np.mean(logits.argmax(1) != np.asarray(labels))
    got = jax.jit(trial.make_val_error(linear_apply, chunk_size))(state.params, state.mask, images, labels)
    assert float(got) == pytest.approx(expected, abs=1e-7)


def test_val_error_uses_the_masked_network():
    state, _ = make_state()
    images = jnp.asarray(RNG.normal(size=(64, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 3, size=64))
    unpruned = {'dense': {'kernel': state.params['dense']['kernel'] + 1.0, 'bias': state.params['dense']['bias']}}
    nothing_kept = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, bool), state.mask)
    error = trial.make_val_error(linear_apply, 10)(unpruned, nothing_kept, images, labels)
    # All logits zero: argmax is class 0 everywhere.
    assert float(error) == pytest.approx(float(np.mean(np.asarray(labels) != 0)))


def test_a_non_finite_network_counts_every_example_as_an_error():
    state, _ = make_state()
    broken = jax.tree.map(lambda leaf: leaf * jnp.nan, state.params)
    images = jnp.ones((10, 5))
    error = trial.make_val_error(linear_apply, 4)(broken, state.mask, images, jnp.zeros(10, jnp.int32))
    assert float(error) == 1.0


def test_each_epoch_is_a_fresh_permutation_of_full_batches():
    order = trial.init_data_order(seed=3, num_examples=10)
    seen = []
    next_indices = jax.jit(trial.next_batch_indices, static_argnums=2)
    for step in range(9):  # 3 steps of 3 per epoch, the 10th example skipped each epoch
        order, indices = next_indices(order, jnp.int32(step), 3)
        seen.append(np.asarray(indices))
    epochs = [np.concatenate(seen[i:i + 3]) for i in (0, 3, 6)]
    for epoch in epochs:
        assert len(set(epoch.tolist())) == 9 and epoch.min() >= 0 and epoch.max() < 10
    assert not np.array_equal(epochs[0], epochs[1])


def test_data_order_is_a_pure_function_of_seed_and_step():
    batch_size, step = 4, 7
    order = trial.init_data_order(5, 18)
    for s in range(step):
        order, _ = trial.next_batch_indices(order, jnp.int32(s), batch_size)
    _, continued = trial.next_batch_indices(order, jnp.int32(step), batch_size)
    resumed_order = trial.init_data_order(5, 18, step=step, batch_size=batch_size)
    _, resumed = trial.next_batch_indices(resumed_order, jnp.int32(step), batch_size)
    np.testing.assert_array_equal(continued, resumed)


def test_a_scanned_chunk_equals_a_python_loop_of_steps():
    state, tx = make_state('momentum', {'learning_rate': 0.1, 'momentum': 0.9})
    images = jnp.asarray(RNG.normal(size=(40, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 3, size=40))
    train_step = trial.make_train_step(linear_apply, tx)
    chunk = jax.jit(trial.make_train_chunk(train_step, batch_size=8, num_steps=12))
    chunked, _, metrics = chunk(state, trial.init_data_order(0, 40), images, labels)
    looped, order = state, trial.init_data_order(0, 40)
    for _ in range(12):
        order, indices = trial.next_batch_indices(order, looped.step, 8)
        looped, _ = jax.jit(train_step)(looped, (images[indices], labels[indices]))
    chex.assert_trees_all_close(chunked.params, looped.params, rtol=1e-5, atol=1e-6)
    assert metrics.loss.shape == (12,)


def separable_problem(num_examples=600):
    centres = np.array([[3.0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0], [0, 0, 3.0, 0, 0]])
    labels = RNG.integers(0, 3, size=num_examples)
    images = centres[labels] + RNG.normal(size=(num_examples, 5)) * 0.5
    return jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)


def run(learning_rate, goal_error=0.05, random_val_labels=False):
    state, tx = make_state('sgd', {'learning_rate': learning_rate})
    images, labels = separable_problem()
    if random_val_labels:  # nothing can be learned about these: the goal is out of reach
        labels = labels.at[500:].set(jnp.asarray(RNG.integers(0, 3, size=100)))
    return trial.run_trial(
        state=state, train_step=trial.make_train_step(linear_apply, tx),
        val_error=trial.make_val_error(linear_apply, 100), train_images=images[:500],
        train_labels=labels[:500], val_images=images[500:], val_labels=labels[500:], batch_size=10,
        goal_error=goal_error, max_steps=200, check_every=10, data_seed=0)


def test_a_trial_reports_the_first_check_at_or_below_the_goal():
    result = run(0.5)
    assert result.status == 'reached'
    errors = [error for _, error, _ in result.history]
    assert errors[-1] <= 0.05 and all(error > 0.05 for error in errors[:-1])
    assert result.steps_to_result == result.history[-1][0] and result.steps_to_result % 10 == 0


def test_a_huge_learning_rate_diverges_at_the_first_check():
    result = run(1e38)
    assert result.status == 'diverged' and result.steps == 10 and result.steps_to_result is None


def test_an_unreachable_goal_exhausts_the_budget():
    result = run(0.5, goal_error=0.1, random_val_labels=True)
    assert result.status == 'exhausted' and result.steps == 200 and len(result.history) == 20
