"""The single-trial train step, whole-split validation error and data order."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import optim, trial

RNG = np.random.default_rng(1)


@pytest.fixture(autouse=True)
def fresh_rng():
    """Every test draws from RNG as if it ran first: with pytest-xdist the tests a worker ran before
    depend on the split, and a drawn problem must not (a 1e38 learning rate on one draw 'reached')."""
    global RNG
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


# Oracle: numpy in float64, on the whole batch at once. At batch 96 a CPU takes the batch in 3
# passes of 32 (trial.examples_per_pass); per_pass=8 in 12, per_pass=96 in one; a memory limit
# of 7 examples in 16 passes of 6 (on any backend), of 96 or more in the backend's passes.
@pytest.mark.matmul_precision('highest')
@pytest.mark.parametrize('batch_size, per_pass, limit', [(8, None, None), (96, None, None), (96, 8, None),
                                                         (96, 96, None), (96, None, 7), (96, None, 96)])
def test_train_step_is_one_sgd_step_on_the_batch_cross_entropy(batch_size, per_pass, limit):
    state, tx = make_state()
    x = RNG.normal(size=(batch_size, 5)).astype(np.float32)
    y = RNG.integers(0, 3, size=batch_size)
    step = jax.jit(trial.make_train_step(linear_apply, tx, per_pass=per_pass, limit=limit))
    new_state, metrics = step(state, (jnp.asarray(x), jnp.asarray(y)))
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


def running_errors(wrong, chunk_size):
    """Where each chunk (and the remainder) of a split ends, and numpy's count of `wrong` up to there."""
    ends = [*range(chunk_size, len(wrong) + 1, chunk_size), *([len(wrong)] if len(wrong) % chunk_size else [])]
    return ends, [int(wrong[:end].sum()) for end in ends]


def split_with_numpy_errors(num_examples=1037):
    """A state, a random split, and which of its examples numpy's float64 argmax gets wrong."""
    state, _ = make_state()
    images = jnp.asarray(RNG.normal(size=(num_examples, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 3, size=num_examples))
    logits = np.asarray(images, np.float64) @ np.asarray(state.params['dense']['kernel'], np.float64) + np.asarray(
        state.params['dense']['bias'], np.float64)
    return state, images, labels, logits.argmax(1) != np.asarray(labels)


# Oracle: numpy argmax of float64 logits; TF32 could flip a near tie.
@pytest.mark.matmul_precision('highest')
@pytest.mark.parametrize('chunk_size', [1, 3, 12, 100, 333, 1037, 5000])
def test_val_error_counts_every_example_of_the_split(chunk_size):
    state, images, labels, wrong = split_with_numpy_errors()
    expected = wrong.sum()
    got = jax.jit(trial.make_val_error_count(linear_apply, chunk_size))(state, images, labels)
    assert got.dtype == jnp.int32 and int(got) == expected


# Oracle: numpy's count of wrong float64 argmaxes (its running count, chunk by chunk, for the limits
# at the remainder). Where the count stops is checked by the chunks it evaluates, below.
@pytest.mark.matmul_precision('highest')
@pytest.mark.parametrize('chunk_size', [1, 50, 333, 1037, 5000])
def test_a_count_that_may_stop_decides_as_the_whole_count_and_reports_the_least_miss(chunk_size):
    state, images, labels, wrong = split_with_numpy_errors()
    total = int(wrong.sum())
    _, running = running_errors(wrong, chunk_size)
    # Also the limits at the last whole chunk's count, where the remainder is counted or not.
    at_remainder = {running[-2], running[-2] - 1} if 1037 % chunk_size and len(running) > 1 else set()
    for stop_above in sorted({0, 7, total // 3, total - 1, total, total + 5} | at_remainder):
        count = jax.jit(trial.make_val_error_count(linear_apply, chunk_size, stop_above))
        got = int(count(state, images, labels))
        # A miss is reported as stop_above + 1 whatever chunk it was found in, so that the recorded
        # bound does not depend on the chunk size.
        assert got == (stop_above + 1 if total > stop_above else total), stop_above
        # The goal decision is the whole count's: at most stop_above errors exactly when the whole split has.
        assert (got <= stop_above) == (total <= stop_above)
    assert 0 < total // 3 and total > 7
    with pytest.raises(ValueError, match='stop_above must be None or >= 0'):
        trial.make_val_error_count(linear_apply, chunk_size, -1)


def counting_chunks(apply_fn):
    """A Network whose evaluation records each chunk it runs (a host callback), and that record."""
    from dps_jax import network as network_lib
    chunks = []

    def eval_apply(params, model_state, images):
        jax.debug.callback(lambda: chunks.append(1))
        return apply_fn(params, images)

    return network_lib.Network(init=None, train_apply=None, eval_apply=eval_apply, collections=()), chunks


# Oracle: numpy's running count says after which chunk the count passes its limit.
@pytest.mark.matmul_precision('highest')
@pytest.mark.parametrize('chunk_size', [50, 333])
def test_a_count_that_may_stop_evaluates_no_chunk_after_the_one_that_passes_its_limit(chunk_size):
    state, images, labels, wrong = split_with_numpy_errors()
    ends, running = running_errors(wrong, chunk_size)
    assert 1037 % chunk_size  # a remainder
    network, chunks = counting_chunks(linear_apply)
    for stop_above in sorted({0, running[0], running[-2] - 1, running[-2], running[-1]}):
        chunks.clear()
        jax.block_until_ready(jax.jit(trial.make_val_error_count(network, chunk_size, stop_above))(
            state, images, labels))
        jax.effects_barrier()
        assert len(chunks) == next((index + 1 for index, errors in enumerate(running) if errors > stop_above),
                                   len(ends)), stop_above


# Oracle: numpy argmax of float64 logits.
@pytest.mark.matmul_precision('highest')
def test_val_error_uses_the_masked_network():
    state, _ = make_state()
    images = jnp.asarray(RNG.normal(size=(64, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 3, size=64))
    unpruned = {'dense': {'kernel': state.params['dense']['kernel'] + 1.0, 'bias': state.params['dense']['bias']}}
    nothing_kept = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, bool), state.mask)
    error = trial.make_val_error_count(linear_apply, 10)(state._replace(params=unpruned, mask=nothing_kept), images,
                                                           labels)
    # All logits zero: argmax is class 0 everywhere.
    assert int(error) == int(np.sum(np.asarray(labels) != 0))


def test_a_non_finite_network_counts_every_example_as_an_error():
    state, _ = make_state()
    broken = jax.tree.map(lambda leaf: leaf * jnp.nan, state.params)
    images = jnp.ones((10, 5))
    error = trial.make_val_error_count(linear_apply, 4)(state._replace(params=broken), images, jnp.zeros(10, jnp.int32))
    assert int(error) == 10


def reference_stream(seed, num_examples, num_epochs):
    """The reference's endless stream, written out: epoch permutations one after another."""
    key = jax.random.PRNGKey(seed)
    return np.concatenate([np.asarray(trial.epoch_permutation(key, epoch, num_examples))
                           for epoch in range(num_epochs)])


def test_batches_run_across_epoch_boundaries_and_nothing_is_dropped():
    # 4 does not divide 10: batches 2, 4, 7 span two permutations.
    num_examples, batch_size, steps = 10, 4, 10
    stream = reference_stream(3, num_examples, 5)
    order = trial.init_data_order(seed=3, num_examples=num_examples, batch_size=batch_size)
    next_indices = jax.jit(trial.next_batch_indices, static_argnums=1)
    batches = []
    for step in range(steps):
        order, indices = next_indices(order, batch_size)
        np.testing.assert_array_equal(indices, stream[step * batch_size:(step + 1) * batch_size], err_msg=f'step {step}')
        batches.append(np.asarray(indices))
    seen = np.concatenate(batches)
    for epoch in range(steps * batch_size // num_examples):  # every example once per epoch, none dropped
        np.testing.assert_array_equal(np.sort(seen[epoch * num_examples:(epoch + 1) * num_examples]),
                                      np.arange(num_examples))
    assert not np.array_equal(seen[:10], seen[10:20])  # a fresh permutation each epoch


def test_batch_equal_to_the_split_is_one_whole_epoch_per_step():
    order = trial.init_data_order(seed=1, num_examples=6, batch_size=6)
    stream = reference_stream(1, 6, 3)
    for step in range(3):
        order, indices = trial.next_batch_indices(order, 6)
        np.testing.assert_array_equal(indices, stream[6 * step:6 * step + 6])


@pytest.mark.parametrize('step', [2, 5, 9])
def test_resume_inside_a_batch_that_spans_two_epochs(step):
    # At batch 4 of 18 examples, step 2 starts at 8 (within epoch 0), step 5 at 20 (epoch 1, after
    # a batch that spanned 16..19), step 9 at 36 (exactly epoch 2): the batches that follow match.
    batch_size, num_examples = 4, 18
    order = trial.init_data_order(5, num_examples, batch_size=batch_size)
    for _ in range(step):
        order, _ = trial.next_batch_indices(order, batch_size)
    resumed = trial.init_data_order(5, num_examples, step=step, batch_size=batch_size)
    chex.assert_trees_all_equal(order, resumed)
    stream = reference_stream(5, num_examples, 5)
    for later in range(step, step + 6):
        order, indices = trial.next_batch_indices(order, batch_size)
        np.testing.assert_array_equal(indices, stream[later * batch_size:(later + 1) * batch_size])


def test_resume_position_is_exact_beyond_int32_example_counts():
    # 100,000 steps at batch 32,768 is 3.3e9 examples, past int32: the position is still exact.
    order = trial.init_data_order(0, 54000, step=100000, batch_size=32768)
    epoch, offset = divmod(100000 * 32768, 54000)
    assert (int(order.epoch), int(order.offset)) == (epoch, offset)


def test_per_trial_streams_each_follow_their_own_seed():
    orders = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                          *[trial.init_data_order(seed, 10, batch_size=4) for seed in (7, 8)])
    streams = [reference_stream(seed, 10, 4) for seed in (7, 8)]
    for step in range(8):
        orders, indices = trial.next_batch_indices_per_trial(orders, 4)
        for row, stream in enumerate(streams):
            np.testing.assert_array_equal(indices[row], stream[4 * step:4 * step + 4])


def test_batch_larger_than_the_split_is_refused():
    with pytest.raises(ValueError, match='batch_size=11 must be in \\[1, 10\\]'):
        trial.init_data_order(0, 10, batch_size=11)


def reference_error(errors, num_examples):
    """The reference's err: 1 - numpy mean of float32 per-example accuracies, then a Python float."""
    accuracies = np.ones(num_examples, np.float32)
    accuracies[:errors] = 0.0
    return 1 - np.mean(accuracies).astype(float)


def test_goal_at_exact_equality_is_decided_as_the_reference_does():
    # REFERENCE.md's two edge cases: 720 of 6,000 misses goal 0.12, 120 of 6,000 reaches 0.02.
    assert reference_error(720, 6000) == pytest.approx(0.12000000477, abs=1e-11)
    assert reference_error(720, 6000) > 0.12 and reference_error(120, 6000) <= 0.02
    np.testing.assert_array_equal(trial.reached_goal(np.array([719, 720]), 6000, 0.12), [True, False])
    np.testing.assert_array_equal(trial.reached_goal(np.array([120, 121]), 6000, 0.02), [True, False])
    assert trial.max_errors_at_goal(6000, 0.12) == 719
    assert trial.max_errors_at_goal(6000, 0.02) == 120


@pytest.mark.parametrize('num_examples, goal_error', [(6000, 0.12), (6000, 0.15), (6000, 0.1), (5000, 0.4),
                                                      (5000, 0.3), (6000, 0.01), (600, 0.14)])
def test_goal_threshold_equals_the_reference_for_every_error_count(num_examples, goal_error):
    counts = np.arange(num_examples + 1)
    expected = np.array([reference_error(count, num_examples) <= goal_error for count in counts])
    np.testing.assert_array_equal(trial.reached_goal(counts, num_examples, goal_error), expected)


def test_an_unreachable_goal_has_no_threshold():
    assert trial.max_errors_at_goal(100, -0.5) == -1
    assert not trial.reached_goal(np.array([0]), 100, -0.5).any()


def test_float_errors_are_compared_directly():
    np.testing.assert_array_equal(trial.reached_goal(np.array([0.5, 0.25]), 1, 0.25), [False, True])
    np.testing.assert_array_equal(trial.error_rate(np.array([3, 60]), 600), [0.005, 0.1])


# Two compilations of the same steps compared at 1e-5: full float32.
@pytest.mark.matmul_precision('highest')
def test_a_scanned_chunk_equals_a_python_loop_of_steps():
    state, tx = make_state('momentum', {'learning_rate': 0.1, 'momentum': 0.9})
    images = jnp.asarray(RNG.normal(size=(40, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 3, size=40))
    train_step = trial.make_train_step(linear_apply, tx)
    chunk = jax.jit(trial.make_train_chunk(train_step, batch_size=8, num_steps=12))
    chunked, _, metrics = chunk(state, trial.init_data_order(0, 40, batch_size=8), images, labels)
    looped, order = state, trial.init_data_order(0, 40, batch_size=8)
    for _ in range(12):
        order, indices = trial.next_batch_indices(order, 8)
        looped, _ = jax.jit(train_step)(looped, (images[indices], labels[indices]))
    chex.assert_trees_all_close(chunked.params, looped.params, rtol=1e-5, atol=1e-6)
    assert metrics.loss.shape == (12,)


def separable_problem(num_examples=600):
    centres = np.array([[3.0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0], [0, 0, 3.0, 0, 0]])
    labels = RNG.integers(0, 3, size=num_examples)
    images = centres[labels] + RNG.normal(size=(num_examples, 5)) * 0.5
    return jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)


def run(learning_rate, goal_error=0.05, random_val_labels=False, val_error=None, log=None, problem=None,
        state_and_optimizer=None):
    state, tx = state_and_optimizer or make_state('sgd', {'learning_rate': learning_rate})
    images, labels = problem or separable_problem()
    if random_val_labels:  # nothing can be learned about these: the goal is out of reach
        labels = labels.at[500:].set(jnp.asarray(RNG.integers(0, 3, size=100)))
    return trial.run_trial(
        state=state, train_step=trial.make_train_step(linear_apply, tx),
        val_error=val_error or trial.make_val_error_count(linear_apply, 100), train_images=images[:500],
        train_labels=labels[:500], val_images=images[500:], val_labels=labels[500:], batch_size=10,
        goal_error=goal_error, max_steps=200, check_every=10, data_seed=0, log=log)


def test_a_trial_reports_the_first_check_at_or_below_the_goal():
    result = run(0.5)
    assert result.status == 'reached'
    errors = [error for _, error, _ in result.history]
    assert errors[-1] <= 0.05 and all(error > 0.05 for error in errors[:-1])
    assert result.steps_to_result == result.history[-1][0] and result.steps_to_result % 10 == 0


# Oracle: the same trial with every check counting the whole split.
def test_a_trial_whose_checks_stop_counting_above_the_goal_reaches_it_alike_and_logs_its_bounds():
    problem, state_and_optimizer = separable_problem(), make_state('sgd', {'learning_rate': 0.02})
    exact = run(0.02, problem=problem, state_and_optimizer=state_and_optimizer)
    lines = []
    # 5 of 100 validation examples is the goal (1 - float32(0.95) = 0.0500000119 misses 0.05, so at most 4).
    stopping = run(0.02, problem=problem, state_and_optimizer=state_and_optimizer, log=lines.append,
                   val_error=trial.make_val_error_count(linear_apply, 10, stop_above=4))
    assert (stopping.status, stopping.steps_to_result, stopping.steps) == (exact.status, exact.steps_to_result,
                                                                           exact.steps)
    assert exact.status == 'reached' and len(exact.history) > 2
    (*missed, reached), (*exact_missed, exact_reached) = stopping.history, exact.history
    assert reached == exact_reached
    assert all(4 < round(error * 100) and error <= exact_error
               for (_, error, _), (_, exact_error, _) in zip(missed, exact_missed))
    assert any(error < exact_error for (_, error, _), (_, exact_error, _) in zip(missed, exact_missed))
    assert [' val error >= ' in line for line in lines] == [True] * len(missed) + [False]


def test_a_huge_learning_rate_diverges_at_the_first_check():
    result = run(1e38)
    assert result.status == 'diverged' and result.steps == 10 and result.steps_to_result is None


def test_an_unreachable_goal_exhausts_the_budget():
    result = run(0.5, goal_error=0.1, random_val_labels=True)
    assert result.status == 'exhausted' and result.steps == 200 and len(result.history) == 20


# --- the step in passes (XLA:CPU) ------------------------------------------------------------

def test_examples_per_pass_on_a_cpu_is_the_largest_divisor_up_to_32():
    expected = {8: 8, 32: 32, 40: 20, 64: 32, 96: 32, 100: 25, 512: 32, 1000: 25, 97: 97, 2 * 101: 202}
    assert {batch: trial.examples_per_pass(batch, linear_apply, 'cpu') for batch in expected} == expected
    assert trial.examples_per_pass(512, linear_apply, 'gpu') == 512
    assert trial.examples_per_pass(512, linear_apply, 'tpu') == 512


def test_a_batch_over_the_memory_limit_is_taken_in_passes_of_its_largest_divisor_within_it():
    # By hand: 16384 = 2^14, so 4096 is its largest divisor up to 5000; 6000 = 2 x 3000.
    cases = {('gpu', 16384, 5000): 4096, ('gpu', 6000, 5000): 3000, ('tpu', 4096, 4096): 4096,
             ('gpu', 4096, None): 4096, ('gpu', 97, 50): 1, ('gpu', 12, 5): 4, ('gpu', 8, 1): 1,
             # A CPU's own passes of up to 32 stand below a larger limit and give way to a smaller one.
             ('cpu', 512, 5000): 32, ('cpu', 512, 32): 32, ('cpu', 512, 20): 16, ('cpu', 100, 20): 20,
             ('cpu', 16, 3): 2, ('cpu', 97, 50): 1}
    assert {case: trial.examples_per_pass(case[1], linear_apply, case[0], case[2]) for case in cases} == cases
    # Over a mesh's 'data' axis of 4 devices each pass is a multiple of 4 when the batch is: batch 36 in
    # 9 passes of 4 (not 4 of 9, which would split unevenly); 16384 in 4 passes of 4096; batch 30 as before.
    sharded = {(36, 10): 4, (16384, 5000): 4096, (48, 14): 12, (30, 10): 10, (8, 4): 4}
    assert {case: trial.examples_per_pass(case[0], linear_apply, 'gpu', case[1], data_devices=4)
            for case in sharded} == sharded
    for number in (1, 2, 12, 97, 360, 1024, 6000):
        for limit in (1, 5, 31, 64, 10_000):
            brute_force = max(d for d in range(1, number + 1) if number % d == 0 and d <= limit)
            assert trial.largest_divisor_up_to(number, limit) == brute_force


def test_the_pass_limit_is_what_the_budget_holds_beside_the_trials_state():
    # 10 GB less 4 x 1 GB of state, at 1.5 GB per example: 4 examples (6 GB); per device of a 'data' axis.
    assert trial.pass_limit(1.5e9, 10 * 10 ** 9, 10 ** 9) == 4
    assert trial.pass_limit(1.5e9, 10 * 10 ** 9, 10 ** 9, data_devices=8) == 32
    assert trial.pass_limit(1.5e9, 10 ** 9, 10 ** 9) == 1  # nothing fits: one example at a time
    assert trial.pass_limit(None, 10 ** 9) is None and trial.pass_limit(0.0, 10 ** 9) is None


def test_a_network_with_batch_statistics_takes_its_batch_in_one_pass():
    from dps_jax import network as network_lib
    stateful = network_lib.Network(init=None, train_apply=None, eval_apply=None, collections=('batch_stats',))
    assert trial.examples_per_pass(512, stateful, 'cpu') == 512
    assert trial.examples_per_pass(512, stateful, 'gpu', limit=8) == 512  # even over the memory limit
    state, tx = make_state()
    batch = (jnp.zeros((8, 5)), jnp.zeros(8, jnp.int32))
    with pytest.raises(ValueError, match=r"per_pass=4 must divide .* \('batch_stats',\)"):
        trial.make_train_step(stateful, tx, per_pass=4)(state, batch)
    with pytest.raises(ValueError, match='per_pass=3 must divide the batch'):
        trial.make_train_step(linear_apply, tx, per_pass=3)(state, batch)
    with pytest.raises(ValueError, match='per_pass must be >= 1'):
        trial.make_train_step(linear_apply, tx, per_pass=0)(state, batch)


@pytest.mark.matmul_precision('highest')
def test_each_pass_draws_its_dropout_from_the_steps_key_folded_with_its_index():
    # Oracle: the mean of the passes' gradients, each computed here with its own key; with 2 passes,
    # pass i takes examples i, i + 2, i + 4, ...
    import flax.linen as nn
    from dps_jax import losses, network as network_lib

    class DropoutNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(x.reshape((x.shape[0], -1))))

    network = network_lib.from_module(DropoutNet(), (5,))
    params, model_state = network.init(jax.random.PRNGKey(0), (5,))
    tx = optim.make_optimizer('sgd')
    mask = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params)
    state = trial.TrainState(params, mask, optim.init_optimizer_state(tx, params, {'learning_rate': 0.5}),
                             jnp.asarray(3, jnp.int32), model_state, trial.dropout_key(7))
    x, y = jnp.asarray(RNG.normal(size=(8, 5)), jnp.float32), jnp.asarray(RNG.integers(0, 3, size=8))
    new_state, _ = jax.jit(trial.make_train_step(network, tx, per_pass=4))(state, (x, y))
    step_key = jax.random.fold_in(state.dropout_key, 3)
    pass_gradient = lambda index: jax.grad(lambda p: losses.cross_entropy(network.train_apply(
        p, model_state, x[index::2], jax.random.fold_in(step_key, index))[0], y[index::2]))(params)
    mean_gradient = jax.tree.map(lambda a, b: (a + b) / 2, pass_gradient(0), pass_gradient(1))
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, params, mean_gradient)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.params, expected)
    whole_batch, _ = jax.jit(trial.make_train_step(network, tx, per_pass=8))(state, (x, y))
    assert not np.allclose(whole_batch.params['Dense_0']['kernel'], new_state.params['Dense_0']['kernel'])
