"""Smoothness (Lipschitz) and gradient noise scale estimators against known answers, and their
place in the engine: measured for every live trial without touching any trajectory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import engine, smoothness, trial
from tests.test_engine import APPLY, TRAIN_IMAGES, TRAIN_LABELS, cell_setup, run

# Known answers in float64 at 1e-4..2e-5, and differences of nearly equal gradients: every test
# here runs at full float32 (make_example_losses sets it itself; the hand-made losses need it too).
pytestmark = pytest.mark.matmul_precision('highest')

CURVATURES = {'a': np.array([1.0, 2.0, 3.0], np.float32), 'b': np.array([[4.0, 5.0]], np.float32)}


def quadratic_losses(params, images, labels):
    """f(w) = 1/2 w^T H w with H = diag(CURVATURES), the same for every example."""
    value = sum(0.5 * jnp.sum(h * w ** 2) for h, w in zip(jax.tree.leaves(CURVATURES), jax.tree.leaves(params)))
    return jnp.full(images.shape[0], value)


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)])


def keep_all(tree):
    return jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), tree)


PREVIOUS = {'a': jnp.array([1.0, -1.0, 0.5]), 'b': jnp.array([[2.0, 1.0]])}
DUMMY_IMAGES, DUMMY_LABELS = jnp.zeros((7, 1)), jnp.zeros(7, jnp.int32)


@pytest.mark.parametrize('chunk_size', [1, 3, 7, 50])
def test_lipschitz_on_a_diagonal_quadratic_is_norm_of_h_d_over_norm_of_d(chunk_size):
    direction = {'a': jnp.array([0.1, 0.2, -0.3]), 'b': jnp.array([[0.05, 0.4]])}
    params = jax.tree.map(jnp.add, PREVIOUS, direction)
    estimate = smoothness.lipschitz_estimate(quadratic_losses, PREVIOUS, params, keep_all(PREVIOUS),
                                             DUMMY_IMAGES, DUMMY_LABELS, chunk_size)
    step = flat(params) - flat(PREVIOUS)  # D as float32 arithmetic made it
    expected = np.linalg.norm(flat(CURVATURES) * step) / np.linalg.norm(step)
    np.testing.assert_allclose(np.asarray(estimate.ratios), np.full(9, expected), rtol=2e-5)
    np.testing.assert_allclose(float(estimate.lipschitz), expected, rtol=2e-5)


def test_lipschitz_along_an_eigenvector_is_its_eigenvalue():
    direction = {'a': jnp.zeros(3), 'b': jnp.array([[0.0, 0.25]])}  # eigenvector of eigenvalue 5
    params = jax.tree.map(jnp.add, PREVIOUS, direction)
    estimate = smoothness.lipschitz_estimate(quadratic_losses, PREVIOUS, params, keep_all(PREVIOUS),
                                             DUMMY_IMAGES, DUMMY_LABELS, 2)
    np.testing.assert_allclose(float(estimate.lipschitz), 5.0, rtol=1e-5)


def test_lipschitz_sees_only_the_masked_network():
    # The pruned entry (curvature 5) sits at zero and gets no gradient, so only kept entries count.
    previous = {'a': jnp.array([1.0, -1.0, 0.5]), 'b': jnp.array([[2.0, 0.0]])}
    mask = {'a': jnp.array([True, True, True]), 'b': jnp.array([[True, False]])}
    direction = {'a': jnp.array([0.1, 0.2, -0.3]), 'b': jnp.array([[0.05, 0.0]])}
    params = jax.tree.map(jnp.add, previous, direction)
    estimate = smoothness.lipschitz_estimate(quadratic_losses, previous, params, mask, DUMMY_IMAGES, DUMMY_LABELS, 3)
    kept = flat(mask).astype(bool)
    step = (flat(params) - flat(previous))[kept]
    expected = np.linalg.norm(flat(CURVATURES)[kept] * step) / np.linalg.norm(step)
    np.testing.assert_allclose(float(estimate.lipschitz), expected, rtol=2e-5)


def test_one_pass_over_the_data_equals_nine_separate_full_gradients():
    """On a real (softmax regression) loss, each ratio equals the one computed from jax.grad of the
    whole-split mean loss at that gamma alone."""
    trials, _, _, _ = cell_setup(rates=np.array([0.1, 0.2]))
    previous = jax.tree.map(lambda leaf: leaf[0], trials.params)
    mask = jax.tree.map(lambda leaf: leaf[0], trials.mask)
    params = jax.tree.map(lambda leaf, keep: jnp.where(keep, leaf + 0.3 * jnp.sin(3.0 * leaf + 1.0), 0.0),
                          previous, mask)
    losses = smoothness.make_example_losses(APPLY)
    estimate = smoothness.lipschitz_estimate(losses, previous, params, mask, TRAIN_IMAGES, TRAIN_LABELS, 64)

    def full_gradient(point):
        return flat(jax.grad(lambda p: losses(trial.apply_mask(p, mask), TRAIN_IMAGES, TRAIN_LABELS).mean())(point))

    direction = jax.tree.map(jnp.subtract, params, previous)
    start = full_gradient(previous)
    expected = []
    for gamma in smoothness.GAMMAS:
        point = jax.tree.map(lambda w, d: w + gamma * d, previous, direction)
        expected.append(np.linalg.norm(full_gradient(point) - start) / (gamma * np.linalg.norm(flat(direction))))
    np.testing.assert_allclose(np.asarray(estimate.ratios), expected, rtol=2e-3)
    assert np.ptp(expected) > 1e-3 * np.max(expected), 'the loss should not be quadratic along D'


# Least squares: loss_i = 1/2 (x_i . w - y_i)^2, per-example gradient x_i (x_i . w - y_i).
LSQ_RNG = np.random.default_rng(3)
LSQ_X = LSQ_RNG.normal(size=(400, 5)).astype(np.float32)
LSQ_Y = (LSQ_X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + LSQ_RNG.normal(size=400)).astype(np.float32)
LSQ_W = {'w': jnp.array([0.4, -1.0, 0.0, 0.7, 2.0])}


def least_squares_losses(params, images, targets):
    return 0.5 * (images @ params['w'] - targets) ** 2


def exact_gradient_statistics():
    residual = LSQ_X.astype(np.float64) @ np.asarray(LSQ_W['w'], np.float64) - LSQ_Y
    per_example = LSQ_X * residual[:, None]
    mean = per_example.mean(axis=0)
    trace = np.mean(np.sum((per_example - mean) ** 2, axis=1))  # population covariance of the split
    return float(mean @ mean), float(trace)


def noise_scale(key, draws, small=8, big=64, chunk_size=16):
    return smoothness.noise_scale_estimate(least_squares_losses, LSQ_W, keep_all(LSQ_W), jnp.asarray(LSQ_X),
                                           jnp.asarray(LSQ_Y), key, small, big, draws, chunk_size)


def test_noise_scale_estimators_converge_to_exact_values_as_draws_grow():
    gradient_norm_squared, trace = exact_gradient_statistics()
    # The spread of one draw's estimates, from 400 independent single draws.
    single = jax.vmap(lambda key: noise_scale(key, 1))(jax.random.split(jax.random.PRNGKey(0), 400))
    spread_g, spread_t = float(np.std(single.gradient_norm_squared)), float(np.std(single.trace_covariance))
    for draws in (50, 5000):
        estimate = noise_scale(jax.random.PRNGKey(draws), draws)
        # Four standard errors: the estimators are unbiased, so the error shrinks as 1/sqrt(draws).
        assert abs(float(estimate.gradient_norm_squared) - gradient_norm_squared) < 4 * spread_g / np.sqrt(draws)
        assert abs(float(estimate.trace_covariance) - trace) < 4 * spread_t / np.sqrt(draws)
    assert 4 * spread_t / np.sqrt(5000) < 0.15 * trace  # tight enough to mean something
    np.testing.assert_allclose(float(estimate.b_simple), trace / gradient_norm_squared, rtol=0.25)


def test_noise_scale_averages_norms_before_dividing():
    """Two draws replayed in numpy: the estimate is the estimators of the MEAN norms, not a mean of
    per-draw ratios (which differ here by more than the tolerance)."""
    key, small, big = jax.random.PRNGKey(11), 4, 16
    estimate = noise_scale(key, 2, small=small, big=big, chunk_size=5)
    x, y, w = LSQ_X.astype(np.float64), LSQ_Y.astype(np.float64), np.asarray(LSQ_W['w'], np.float64)

    def norm_squared(draw_key, size):
        rows = np.asarray(jax.random.randint(draw_key, (size,), 0, len(x)))
        gradient = (x[rows] * (x[rows] @ w - y[rows])[:, None]).mean(axis=0)
        return gradient @ gradient

    norms = []
    for draw_key in jax.random.split(key, 2):
        small_key, big_key = jax.random.split(draw_key)
        norms.append((norm_squared(small_key, small), norm_squared(big_key, big)))
    mean_small, mean_big = np.mean(norms, axis=0)
    gradient_norm_squared = (big * mean_big - small * mean_small) / (big - small)
    trace = (mean_small - mean_big) / (1 / small - 1 / big)
    np.testing.assert_allclose(float(estimate.gradient_norm_squared), gradient_norm_squared, rtol=1e-4)
    np.testing.assert_allclose(float(estimate.trace_covariance), trace, rtol=1e-4)
    np.testing.assert_allclose(float(estimate.b_simple), trace / gradient_norm_squared, rtol=1e-4)
    per_draw = [((s - b) / (1 / small - 1 / big)) / ((big * b - small * s) / (big - small)) for s, b in norms]
    assert abs(np.mean(per_draw) - trace / gradient_norm_squared) > 1e-2 * abs(trace / gradient_norm_squared)


def test_a_big_batch_whose_square_passes_int32_is_averaged_right():
    """46,341^2 > 2^31: the big batch's mean gradient replayed in numpy (draws are with replacement, so
    the batch may exceed the 400 examples)."""
    key, small, big = jax.random.PRNGKey(5), 8, 50_000
    estimate = noise_scale(key, 1, small=small, big=big, chunk_size=10_000)
    x, y, w = LSQ_X.astype(np.float64), LSQ_Y.astype(np.float64), np.asarray(LSQ_W['w'], np.float64)
    rows = np.asarray(jax.random.randint(jax.random.split(jax.random.split(key, 1)[0])[1], (big,), 0, len(x)))
    gradient = (x[rows] * (x[rows] @ w - y[rows])[:, None]).mean(axis=0)
    np.testing.assert_allclose(float(estimate.big_norm_squared), gradient @ gradient, rtol=1e-4)


def test_noise_scale_rejects_batch_sizes_out_of_order():
    with pytest.raises(ValueError, match='small batch < big batch'):
        noise_scale(jax.random.PRNGKey(0), 2, small=64, big=8)


def measurements(**fields):
    return smoothness.Measurements(smoothness.make_example_losses(APPLY), **fields)


@pytest.mark.parametrize('layout', [dict(), dict(group_size=2, per_trial_order=True)])
def test_measuring_leaves_every_trajectory_bit_exact(layout):
    trials, tx, _, _ = cell_setup()
    plain = run(trials, tx, keep_final_state=True, max_steps=100, **layout)
    measured = run(trials, tx, keep_final_state=True, max_steps=100, **layout,
                   measurements=measurements(lipschitz_every=20, noise_scale_every=40, chunk_size=128,
                                             noise_scale_batch_sizes=(8, 32), noise_scale_draws=2))
    np.testing.assert_array_equal(measured.status, plain.status)
    np.testing.assert_array_equal(measured.steps_to_result, plain.steps_to_result)
    np.testing.assert_array_equal(measured.last_val_error, plain.last_val_error)
    for got, want in zip(jax.tree.leaves(measured.final_state), jax.tree.leaves(plain.final_state)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert plain.lipschitz == () and plain.noise_scale == ()
    # Each trial is measured at the multiples of the interval it trained through, and no further.
    for index in range(len(measured.status)):
        steps = int(measured.steps[index])
        if measured.status[index] == engine.DIVERGED:
            continue  # its last measurement is of a broken network
        assert [s for s, _ in measured.lipschitz[index]] == list(range(20, steps + 1, 20))
        assert [s for s, *_ in measured.noise_scale[index]] == list(range(0, steps + 1, 40))
        assert all(np.isfinite(value) and value > 0 for _, value in measured.lipschitz[index])


def test_engine_lipschitz_is_the_estimate_between_the_last_two_iterates():
    trials, tx, init_trial, hyper = cell_setup(rates=np.array([0.05, 0.2]))
    result = run(trials, tx, max_steps=30, check_every=10, goal_error=1e-6,
                 measurements=measurements(lipschitz_every=30, chunk_size=100, lipschitz_examples=300))
    train_step = trial.make_train_step(APPLY, tx)

    @jax.jit
    def one_step(state, order, step):
        order, indices = trial.next_batch_indices(order, 16)
        return train_step(state, (TRAIN_IMAGES[indices], TRAIN_LABELS[indices]))[0], order

    losses = smoothness.make_example_losses(APPLY)
    for index in range(2):
        state = jax.tree.map(lambda leaf: leaf[index], trials)
        order = trial.init_data_order(0, TRAIN_IMAGES.shape[0])
        for step in range(30):
            previous = state.params
            state, order = one_step(state, order, jnp.int32(step))
        expected = smoothness.lipschitz_estimate(losses, previous, state.params, state.mask, TRAIN_IMAGES[:300],
                                                 TRAIN_LABELS[:300], 100)
        (step, value), = result.lipschitz[index]
        assert step == 30
        np.testing.assert_allclose(value, float(expected.lipschitz), rtol=1e-4)


@pytest.mark.parametrize('fields, message', [
    (dict(lipschitz_every=15), 'lipschitz_every=15 must be 0'),
    (dict(noise_scale_every=-10), 'noise_scale_every=-10'),
    (dict(noise_scale_every=10, noise_scale_batch_sizes=(32, 32)), 'noise_scale_batch_sizes'),
    (dict(lipschitz_every=10, lipschitz_examples=501), 'lipschitz_examples=501'),
])
def test_engine_rejects_measurements_it_cannot_run(fields, message):
    trials, tx, _, _ = cell_setup(rates=np.array([0.1]))
    with pytest.raises(ValueError, match=message):
        run(trials, tx, measurements=measurements(**fields))


def test_a_measurement_takes_ten_chunks_for_the_lipschitz_estimate_and_one_for_the_noise_scale():
    measured = lambda **fields: smoothness.Measurements(None, chunk_size=25, **fields).examples_at_once
    assert measured(lipschitz_every=100) == 250 and measured(lipschitz_every=100, noise_scale_every=100) == 250
    assert measured(noise_scale_every=100) == 25 and measured() == 0
