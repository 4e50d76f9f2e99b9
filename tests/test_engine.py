"""The vectorized trial engine against single-trial runs and a closed form."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import engine, optim, trial

RNG = np.random.default_rng(7)


class Linear:
    """Softmax regression with the flax Module interface the trial code expects."""

    def init(self, key, images):
        features = int(np.prod(images.shape[1:]))
        return {'params': {'dense': {'kernel': jax.random.normal(key, (features, 3)) * 0.3, 'bias': jnp.zeros(3)}}}

    def apply(self, variables, images):
        params = variables['params']['dense']
        return images.reshape((images.shape[0], -1)) @ params['kernel'] + params['bias']


MODEL = Linear()
APPLY = lambda params, images: MODEL.apply({'params': params}, images)


def problem(num_examples=700, noise=0.9):
    centres = np.eye(3, 6) * 2.0
    labels = RNG.integers(0, 3, size=num_examples)
    images = centres[labels] + RNG.normal(size=(num_examples, 6)) * noise
    images, labels = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
    return images[:500], labels[:500], images[500:], labels[500:]


TRAIN_IMAGES, TRAIN_LABELS, VAL_IMAGES, VAL_LABELS = problem()
RATES = np.array([0.3, 0.03, 1e38, 0.003, 1.0, 0.1, 0.01])


def cell_setup(optimizer='momentum', sparsity=0.2, rates=RATES, seeds=None):
    tx = optim.make_optimizer(optimizer)
    init_trial = trial.make_init_trial(MODEL, tx, (6,), pruning='random', sparsity=sparsity)
    hyper = {'learning_rate': rates, 'momentum': np.full(len(rates), 0.5)}
    seeds = np.arange(len(rates)) if seeds is None else seeds
    trials = engine.init_trials(init_trial, seeds, hyper, TRAIN_IMAGES, TRAIN_LABELS)
    return trials, tx, init_trial, hyper


def run(trials, tx, **overrides):
    settings = dict(train_step=trial.make_train_step(APPLY, tx), val_error=trial.make_val_error_count(APPLY, 64),
                    train_images=TRAIN_IMAGES, train_labels=TRAIN_LABELS, val_images=VAL_IMAGES,
                    val_labels=VAL_LABELS, batch_size=16, goal_error=0.14, max_steps=300, check_every=10,
                    data_seed=0, until='all')
    settings.update(overrides)
    return engine.run_cell(trials, **settings)


STEPPED = pytest.mark.parametrize('in_turn', [True, False], ids=['in_turn', 'vmapped'])


# Batched vs single matmuls compared at 1e-5: full float32.
@pytest.mark.matmul_precision('highest')
@STEPPED
def test_the_engines_trials_match_each_trial_run_alone(step_trials, in_turn):
    step_trials(in_turn)
    trials, tx, init_trial, hyper = cell_setup()
    result = run(trials, tx, compaction=False, keep_final_state=True)
    for index, rate in enumerate(RATES):
        single = jax.jit(init_trial)(index, {'learning_rate': rate, 'momentum': 0.5}, TRAIN_IMAGES, TRAIN_LABELS)
        alone = trial.run_trial(state=single, train_step=trial.make_train_step(APPLY, tx),
                                val_error=trial.make_val_error_count(APPLY, 64), train_images=TRAIN_IMAGES,
                                train_labels=TRAIN_LABELS, val_images=VAL_IMAGES, val_labels=VAL_LABELS,
                                batch_size=16, goal_error=0.14, max_steps=300, check_every=10, data_seed=0)
        assert engine.STATUS_NAMES[result.status[index]] == alone.status, index
        assert result.steps_to_result[index] == (alone.steps_to_result or -1)
        assert result.steps[index] == alone.steps
    assert set(result.status_names()) >= {'reached', 'diverged'}


# Batched vs single matmuls compared at 1e-5: full float32.
@pytest.mark.matmul_precision('highest')
@STEPPED
def test_the_engines_final_params_equal_single_trial_params(step_trials, in_turn):
    step_trials(in_turn)
    trials, tx, init_trial, _ = cell_setup(rates=np.array([0.05, 0.2, 0.01]))
    result = run(trials, tx, compaction=False, keep_final_state=True, goal_error=1e-6, max_steps=60)
    step = jax.jit(trial.make_train_chunk(trial.make_train_step(APPLY, tx), 16, 60))
    for index, rate in enumerate([0.05, 0.2, 0.01]):
        single = jax.jit(init_trial)(index, {'learning_rate': rate, 'momentum': 0.5}, TRAIN_IMAGES, TRAIN_LABELS)
        single, _, _ = step(single, trial.init_data_order(0, 500), TRAIN_IMAGES, TRAIN_LABELS)
        chex.assert_trees_all_close(jax.tree.map(lambda leaf: leaf[index], result.final_state.params),
                                    single.params, rtol=1e-5, atol=1e-6)


def test_pruned_weights_are_exactly_zero_at_the_end_for_every_trial():
    trials, tx, _, _ = cell_setup('nesterov', sparsity=0.6)
    result = run(trials, tx, compaction=False, keep_final_state=True)
    for params, mask in zip(jax.tree.leaves(result.final_state.params), jax.tree.leaves(result.final_state.mask)):
        params, mask = np.asarray(params), np.asarray(mask)
        # Every trial, the diverged one included: a non-finite gradient never reaches a pruned entry.
        for index in range(len(RATES)):
            assert np.all(params[index][~mask[index]] == 0.0)
        assert (~mask).sum() > 0
    assert (result.status == engine.DIVERGED).any()


def test_a_huge_learning_rate_diverges_at_the_first_check_and_the_others_are_unaffected():
    trials, tx, _, _ = cell_setup()
    result = run(trials, tx)
    assert result.status[2] == engine.DIVERGED and result.steps[2] == 10
    without, tx2, _, _ = cell_setup(rates=np.delete(RATES, 2), seeds=np.delete(np.arange(len(RATES)), 2))
    others = run(without, tx2)
    np.testing.assert_array_equal(np.delete(result.steps_to_result, 2), others.steps_to_result)
    np.testing.assert_array_equal(np.delete(result.status, 2), others.status)


def test_first_mode_gives_the_same_minimum_as_all_mode_for_less_compute():
    trials, tx, _, _ = cell_setup()
    everything = run(trials, tx)
    first = run(trials, tx, until='first')
    assert first.min_steps_to_result == everything.min_steps_to_result is not None
    reached_first = np.flatnonzero(first.status == engine.REACHED)
    np.testing.assert_array_equal(reached_first,
                                  np.flatnonzero(everything.steps_to_result == everything.min_steps_to_result))
    assert first.trial_steps_computed < everything.trial_steps_computed


# Batched matmuls of different trial counts compared at 1e-6: full float32.
@pytest.mark.matmul_precision('highest')
@STEPPED
def test_compaction_gives_identical_results_and_saves_compute(step_trials, in_turn):
    step_trials(in_turn)
    trials, tx, _, _ = cell_setup()
    compacted = run(trials, tx, compaction=True, keep_final_state=True)
    plain = run(trials, tx, compaction=False, keep_final_state=True)
    np.testing.assert_array_equal(compacted.status, plain.status)
    np.testing.assert_array_equal(compacted.steps_to_result, plain.steps_to_result)
    np.testing.assert_array_equal(compacted.steps, plain.steps)
    chex.assert_trees_all_close(compacted.final_state.params, plain.final_state.params, rtol=1e-6, atol=1e-7)
    assert compacted.trial_steps_computed < plain.trial_steps_computed
    assert compacted.trial_steps_needed == plain.trial_steps_needed


# Batched matmuls of different trial counts: full float32.
@pytest.mark.matmul_precision('highest')
@STEPPED
def test_groups_give_the_same_results_as_one_group(step_trials, in_turn):
    step_trials(in_turn)
    trials, tx, _, _ = cell_setup()
    whole = run(trials, tx)
    grouped = run(trials, tx, group_size=3)
    np.testing.assert_array_equal(whole.status, grouped.status)
    np.testing.assert_array_equal(whole.steps_to_result, grouped.steps_to_result)


# Compared with a single-trial run at 1e-5: full float32.
@pytest.mark.matmul_precision('highest')
@STEPPED
def test_per_trial_data_order_changes_the_batches_each_trial_sees(step_trials, in_turn):
    step_trials(in_turn)
    rates = np.array([0.1, 0.1])
    trials, tx, _, _ = cell_setup(rates=rates)
    same_init = jax.tree.map(lambda leaf: jnp.stack([leaf[0], leaf[0]]), trials)
    shared = run(same_init, tx, compaction=False, keep_final_state=True, max_steps=20, goal_error=1e-6)
    separate = run(same_init, tx, compaction=False, keep_final_state=True, max_steps=20, goal_error=1e-6,
                   per_trial_order=True)
    kernel = lambda result: np.asarray(result.final_state.params['dense']['kernel'])
    np.testing.assert_array_equal(kernel(shared)[0], kernel(shared)[1])
    assert not np.allclose(kernel(separate)[0], kernel(separate)[1])
    np.testing.assert_allclose(kernel(separate)[0], kernel(shared)[0], rtol=1e-5, atol=1e-6)  # trial 0 keeps seed 0


@pytest.mark.matmul_precision('highest')
@pytest.mark.parametrize('per_trial_order', [False, True])
@STEPPED
def test_stepped_trials_are_each_trials_own_step(in_turn, per_trial_order):
    trials, tx, _, _ = cell_setup(rates=np.array([0.05, 0.2, 0.01]))
    train_step = trial.make_train_step(APPLY, tx)
    batches = (TRAIN_IMAGES[:48].reshape(3, 16, 6), TRAIN_LABELS[:48].reshape(3, 16))
    batch = batches if per_trial_order else (batches[0][0], batches[1][0])
    active = jnp.array([True, False, True])
    stepped, metrics = jax.jit(engine.stepped_trials(train_step, per_trial_order, in_turn))(trials, batch, active)
    for index in range(3):
        own_batch = (batches[0][index], batches[1][index]) if per_trial_order else batch
        alone, alone_metrics = jax.jit(train_step)(jax.tree.map(lambda leaf: leaf[index], trials), own_batch)
        got = jax.tree.map(lambda leaf: leaf[index], (stepped, metrics))
        if active[index] or not in_turn:
            chex.assert_trees_all_close(got, (alone, alone_metrics), rtol=1e-5, atol=1e-6)
        else:  # in turn an inactive slot skips its step: unchanged, zero metrics
            chex.assert_trees_all_equal(got[0], jax.tree.map(lambda leaf: leaf[index], trials))
            assert all(float(jnp.max(jnp.abs(leaf))) == 0 for leaf in jax.tree.leaves(got[1]))


@STEPPED
def test_evaluated_trials_count_each_trials_own_errors(in_turn):
    trials, _, _, _ = cell_setup(rates=np.array([0.05, 0.2, 0.01]))
    val_error = trial.make_val_error_count(APPLY, 64)
    active = jnp.array([True, True, False])
    counts = jax.jit(engine.evaluated_trials(val_error, in_turn))(trials, active, VAL_IMAGES, VAL_LABELS)
    # Oracle: numpy's count of wrong argmaxes of each trial's own masked logits.
    for index in range(2):
        state = jax.tree.map(lambda leaf: leaf[index], trials)
        logits = np.asarray(APPLY(trial.apply_mask(state.params, state.mask), VAL_IMAGES))
        wrong = int(np.sum(logits.argmax(axis=1) != np.asarray(VAL_LABELS)))
        assert wrong > 0 and int(counts[index]) == wrong
    assert int(counts[2]) == 0  # an inactive slot is not counted


# Oracle: the same cell with every check counting the whole split.
@pytest.mark.matmul_precision('highest')
@pytest.mark.parametrize('until', ['all', 'first'])
@STEPPED
def test_checks_that_stop_counting_above_the_goal_decide_every_trial_alike(step_trials, in_turn, until):
    step_trials(in_turn)
    trials, tx, _, _ = cell_setup()
    allowed = trial.max_errors_at_goal(int(VAL_IMAGES.shape[0]), 0.14)
    exact_lines, lines = [], []
    exact = run(trials, tx, until=until, log=exact_lines.append, log_every_seconds=0.0)
    stopping = run(trials, tx, until=until, val_error=trial.make_val_error_count(APPLY, 16, stop_above=allowed),
                   log=lines.append, log_every_seconds=0.0)
    np.testing.assert_array_equal(stopping.status, exact.status)
    np.testing.assert_array_equal(stopping.steps_to_result, exact.steps_to_result)
    np.testing.assert_array_equal(stopping.steps, exact.steps)
    assert stopping.trial_steps_computed == exact.trial_steps_computed and stopping.checks == exact.checks
    reached = exact.status == engine.REACHED
    assert reached.any() and (~reached).any()
    # A trial that reached is recorded exactly (its earlier checks missed the goal, so they are above it).
    np.testing.assert_array_equal(stopping.best_val_error[reached], exact.best_val_error[reached])
    # The others' last errors are lower bounds above the goal, and some counts did stop early.
    checked = ~reached & np.isfinite(exact.last_val_error)
    assert np.all(stopping.last_val_error[checked] <= exact.last_val_error[checked])
    assert np.all(stopping.last_val_error[checked] * VAL_IMAGES.shape[0] > allowed)
    assert np.any(stopping.last_val_error[checked] < exact.last_val_error[checked])
    # Progress lines mark the best error as a bound until a trial reaches the goal.
    first_hit = int(exact.steps_to_result[reached].min()) // 10
    assert [' best val error >= ' in line for line in lines] == [True] * (first_hit - 1) + [False] * (
        len(lines) - first_hit + 1)
    assert not any('>=' in line for line in exact_lines)


# Oracle: each trial's own count (tests/test_trial.py checks it against numpy).
@pytest.mark.matmul_precision('highest')
@pytest.mark.parametrize('chunk_size', [16, 64, 500])
def test_a_vmapped_count_that_may_stop_is_each_trials_own_count_over_one_shared_chunk(chunk_size):
    trials, _, _, _ = cell_setup(rates=np.array([0.05, 0.2, 0.01, 0.3]))
    active = jnp.array([True, False, True, True])
    exact = trial.make_val_error_count(APPLY, chunk_size)
    totals = [int(exact(jax.tree.map(lambda leaf: leaf[i], trials), VAL_IMAGES, VAL_LABELS)) for i in range(4)]
    for stop_above in sorted({0, min(totals) - 1, min(totals), max(totals) - 1, max(totals)}):
        count = trial.make_val_error_count(APPLY, chunk_size, stop_above)
        stacked = jax.jit(engine.evaluated_trials(count, in_turn=False))
        got = np.asarray(stacked(trials, active, VAL_IMAGES, VAL_LABELS))
        alone = [int(count(jax.tree.map(lambda leaf: leaf[i], trials), VAL_IMAGES, VAL_LABELS)) for i in range(4)]
        np.testing.assert_array_equal(got, np.where(active, alone, 0), err_msg=f'stop_above {stop_above}')
        # One chunk for every trial: no gather of a chunk per trial (which a per-trial loop index needs).
        assert 'gather' not in stacked.lower(trials, active, VAL_IMAGES, VAL_LABELS).as_text()
    assert len(set(totals)) > 1


# Oracle: each active trial's running count (numpy) says after which chunk it passes the limit.
@pytest.mark.matmul_precision('highest')
def test_a_vmapped_count_that_may_stop_ends_with_its_last_undecided_active_trial():
    from tests.test_trial import counting_chunks, running_errors
    trials, _, _, _ = cell_setup(rates=np.array([0.05, 0.2, 0.01, 0.3]))
    network, chunks = counting_chunks(APPLY)
    running = []  # 12 chunks of 16 and a remainder of 8
    for index in range(4):
        state = jax.tree.map(lambda leaf: leaf[index], trials)
        logits = np.asarray(APPLY(trial.apply_mask(state.params, state.mask), VAL_IMAGES))
        ends, counts = running_errors(logits.argmax(axis=1) != np.asarray(VAL_LABELS), 16)
        running.append(counts)
    stop_above = 90  # about half of each untrained trial's errors
    passes_after = [next((chunk + 1 for chunk, errors in enumerate(counts) if errors > stop_above), len(ends))
                    for counts in running]
    last = int(np.argmax(passes_after))
    active = np.arange(4) != last  # the trial that would keep counting longest: inactive, it must not hold the loop
    needed = max(passes_after[index] for index in np.flatnonzero(active))
    assert needed < passes_after[last]
    stacked = jax.jit(engine.evaluated_trials(trial.make_val_error_count(network, 16, stop_above), in_turn=False))
    jax.block_until_ready(stacked(trials, jnp.asarray(active), VAL_IMAGES, VAL_LABELS))
    jax.effects_barrier()
    assert len(chunks) == needed


def test_a_count_that_stops_at_another_goal_than_the_cells_is_refused():
    trials, tx, _, _ = cell_setup(rates=np.array([0.1]))
    # By hand: 28 errors of 200 give 1 - float32(0.86) = 0.13999999 <= 0.14, a hit; so the goal allows 28.
    wrong = trial.make_val_error_count(APPLY, 16, stop_above=48)
    with pytest.raises(ValueError, match=r'stops counting above 48 errors, but goal_error=0.14 of 200 validation '
                                         r'examples allows 28'):
        run(trials, tx, val_error=wrong)


class _Mesh:
    def __init__(self, size):
        self.size = size


@pytest.mark.parametrize('backend, mesh, in_turn', [('cpu', None, True), ('cpu', _Mesh(1), True),
                                                    ('cpu', _Mesh(8), False), ('gpu', None, False),
                                                    ('tpu', None, False)])
def test_trials_are_stepped_in_turn_on_one_cpu_device_only(monkeypatch, backend, mesh, in_turn):
    monkeypatch.setattr(jax, 'default_backend', lambda: backend)
    assert engine.trials_stepped_in_turn(mesh) is in_turn


def test_bucket_sizes():
    assert [engine.bucket_size(n, 64) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    assert engine.bucket_layout(70, 16) == (5, 16)
    assert engine.bucket_layout(100, 33) == (4, 28)
    assert engine.bucket_layout(16, 12) == (2, 8)


def test_bad_arguments_are_named():
    trials, tx, _, _ = cell_setup()
    with pytest.raises(ValueError, match='until'):
        run(trials, tx, until='some')
    with pytest.raises(ValueError, match='multiple of check_every'):
        run(trials, tx, max_steps=15)
    with pytest.raises(ValueError, match='batch_size=501'):
        run(trials, tx, batch_size=501)


# The noisy quadratic model (Zhang et al. 2019): L = 1/2 sum h_i x_i^2, gradient noise of covariance
# C / B with c_i = NOISE * h_i. The 'training split' is a pool of standard normal vectors; a batch's
# mean is noise of covariance I / B. Many dimensions make the loss concentrate, so the mean first
# passage below the target is close to the step where the expected loss crosses it.
DIMENSIONS = 200
CURVATURES = np.geomspace(1.0, 0.1, DIMENSIONS)
NOISE, STEP_SIZE, TARGET = 0.25, 0.25, 3.5
POOL = jnp.asarray(np.random.default_rng(3).normal(size=(20000, DIMENSIONS)), jnp.float32)


def nqm_train_step(state, batch):
    """One SGD step; the learning rate is stored where the optimizer state would be."""
    noise_vectors, _ = batch
    curvatures = jnp.asarray(CURVATURES, jnp.float32)
    x = state.params['x']
    gradient = curvatures * x + jnp.sqrt(NOISE * curvatures) * noise_vectors.mean(0)
    loss = 0.5 * jnp.sum(curvatures * x ** 2)
    return (trial.TrainState({'x': x - state.opt_state * gradient}, state.mask, state.opt_state, state.step + 1),
            trial.StepMetrics(loss))


def nqm_loss(state, images, labels):
    return 0.5 * jnp.sum(jnp.asarray(CURVATURES, jnp.float32) * state.params['x'] ** 2)


def expected_loss(t, batch_size):
    """E L_t from x_0 = 1: E x_t = (1 - a h)^t, Var x_t = (1 - (1 - a h)^(2t)) a c / (B h (2 - a h))."""
    decay = (1 - STEP_SIZE * CURVATURES) ** t
    c = NOISE * CURVATURES
    variance = (1 - decay ** 2) * STEP_SIZE * c / (batch_size * CURVATURES * (2 - STEP_SIZE * CURVATURES))
    return 0.5 * np.sum(CURVATURES * (decay ** 2 + variance))


def test_noisy_quadratic_model_mean_steps_match_the_closed_form():
    num_trials = 16
    trials = trial.TrainState({'x': jnp.ones((num_trials, DIMENSIONS))},
                              {'x': jnp.ones((num_trials, DIMENSIONS), bool)},
                              jnp.full((num_trials,), STEP_SIZE), jnp.zeros((num_trials,), jnp.int32))
    measured, closed_forms = [], []
    for batch_size in (1, 4, 16, 256):
        result = engine.run_cell(trials, train_step=nqm_train_step, val_error=nqm_loss, train_images=POOL,
                                 train_labels=jnp.zeros(POOL.shape[0], jnp.int32), val_images=POOL[:1],
                                 val_labels=jnp.zeros(1, jnp.int32), batch_size=batch_size, goal_error=TARGET,
                                 max_steps=200, check_every=1, until='all', per_trial_order=True)
        assert (result.status == engine.REACHED).all()
        measured.append(np.mean(result.steps_to_result))
        closed_forms.append(next(t for t in range(1, 1000) if expected_loss(t, batch_size) <= TARGET))
    np.testing.assert_allclose(measured, closed_forms, rtol=0.1)
    assert closed_forms[0] > closed_forms[-1]  # the noise costs steps at small batches


def test_group_size_estimate_shrinks_with_batch_size_and_memory():
    trials, tx, _, _ = cell_setup()
    one = jax.tree.map(lambda leaf: leaf[0], trials)
    # The whole batch in one pass, as an accelerator takes it (a CPU's passes hold one pass at a time).
    step = trial.make_train_step(APPLY, tx, per_pass=trial.WHOLE_BATCH)
    roomy = engine.estimate_group_size(step, one, (6,), 64, 1 << 30, 1000)
    small_batch = engine.estimate_group_size(step, one, (6,), 64, 1 << 20, 1000)
    large_batch = engine.estimate_group_size(step, one, (6,), 4096, 1 << 20, 1000)
    assert roomy == 1000  # capped at the number of trials
    assert 1 <= large_batch < small_batch < 1000
    # In turn only one trial's step is in memory: more trials fit, and fewer as the batch grows.
    in_turn = lambda batch_size, memory: engine.estimate_group_size(step, one, (6,), batch_size, memory, 1000,
                                                                    in_turn=True)
    assert large_batch < in_turn(4096, 1 << 20) < in_turn(64, 1 << 20)
    assert in_turn(1 << 20, 1 << 20) == 1  # one trial's step alone overflows: still one at a time


def test_the_group_estimate_by_hand_and_with_the_smoothness_measurements():
    # A state of 1,000 float32 (4,000 bytes; 16,000 with gradient and update), 1,000 bytes per example.
    state = {'weights': jnp.zeros(1000, jnp.float32)}
    group = lambda batch, memory, **options: engine.estimate_group_size(
        None, state, (6,), batch, memory, 1000, bytes_per_example=1000.0, **options)
    assert group(64, 800_000) == 10                     # 800,000 // (64,000 + 16,000)
    assert group(64, 800_000, in_turn=True) == 46       # (800,000 - 64,000) // 16,000
    # The Lipschitz estimate takes 10 points x 25 examples per trial at once, vmapped either way:
    # 800,000 // (250,000 + 16,000) = 3.
    assert group(64, 800_000, measured_examples=250) == 3
    assert group(64, 800_000, in_turn=True, measured_examples=250) == 3
    assert group(64, 800_000, measured_examples=10) == 10  # a smaller measurement leaves training's bound
    assert group(64, 1, measured_examples=250) == 1       # nothing fits: one at a time


def test_goal_is_checked_before_a_non_finite_loss_and_at_the_reference_threshold():
    # Each trial's "network" reports a fixed error count of 6,000 and optionally a NaN loss.
    counts = jnp.array([719, 720, 700, 900], jnp.int32)
    nan_loss = jnp.array([False, False, True, True])

    def step_with_fixed_loss(state, batch):
        loss = jnp.where(state.params['nan_loss'], jnp.nan, 0.0)
        return state._replace(step=state.step + 1), trial.StepMetrics(loss)

    def fixed_error_count(state, images, labels):
        return state.params['errors']

    params = {'errors': counts, 'nan_loss': nan_loss}
    trials = trial.TrainState(params, jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params),
                              jnp.zeros(4), jnp.zeros(4, jnp.int32))
    result = engine.run_cell(trials, train_step=step_with_fixed_loss, val_error=fixed_error_count,
                             train_images=jnp.zeros((20, 1)), train_labels=jnp.zeros(20, jnp.int32),
                             val_images=jnp.zeros((6000, 1)), val_labels=jnp.zeros(6000, jnp.int32),
                             batch_size=8, goal_error=0.12, max_steps=20, check_every=10, until='all')
    # 719 / 6,000 reaches 0.12 and 720 / 6,000 does not (err 0.12000000477); a trial at the goal
    # with a NaN loss counts as reached, one above it as diverged.
    assert result.status_names() == ['reached', 'exhausted', 'reached', 'diverged']
    np.testing.assert_array_equal(result.steps_to_result, [10, -1, 10, -1])
    np.testing.assert_allclose(result.last_val_error, [719 / 6000, 720 / 6000, 700 / 6000, 900 / 6000])


def assert_same_trials(got, want, measurement_rtol=0.0):
    for field in ('status', 'steps_to_result', 'steps', 'best_val_error', 'last_val_error'):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    for series in ('lipschitz', 'noise_scale'):
        got_series, want_series = getattr(got, series), getattr(want, series)
        assert [[row[0] for row in rows] for rows in got_series] == [[row[0] for row in rows] for rows in want_series]
        for got_rows, want_rows in zip(got_series, want_series):
            np.testing.assert_allclose(np.array(got_rows, float), np.array(want_rows, float), rtol=measurement_rtol)


# Batched matmuls of different trial counts (compaction happens one check later ahead): full float32.
@pytest.mark.matmul_precision('highest')
@pytest.mark.parametrize('options', [dict(until='all'), dict(until='all', compaction=False, group_size=3,
                                                                 per_trial_order=True), dict(until='first')])
def test_dispatching_the_next_check_ahead_changes_no_trial(options):
    """The device works on check k+1 before the host reads check k; trials that check k ends train a
    chunk in vain, which is discarded."""
    trials, tx, _, _ = cell_setup()
    plain = run(trials, tx, dispatch_ahead=False, **options)
    ahead = run(trials, tx, dispatch_ahead=True, **options)
    assert_same_trials(ahead, plain)
    if options['until'] == 'all':
        assert len(set(plain.steps.tolist())) > 2  # trials end at different checks: discarded work is exercised
    # The work done ahead shows in the device's count (every slot always computes without compaction):
    # the chunk after the last check read, and the chunks of trials in the check after they ended.
    if options.get('compaction', True):
        assert ahead.trial_steps_computed > plain.trial_steps_computed
    else:
        assert ahead.trial_steps_computed == plain.trial_steps_computed
    assert ahead.trial_steps_needed == plain.trial_steps_needed and ahead.checks == plain.checks


def saved_metadata(folder):
    """{checks: (step, slot layout, fingerprint of the saved states)} of the checkpoints in `folder`."""
    import json
    found = {}
    for step in (name for name in os.listdir(folder) if name.isdigit()):
        for root, _, files in os.walk(os.path.join(folder, step, 'meta')):
            for name in files:
                try:
                    with open(os.path.join(root, name)) as file:
                        meta = json.load(file)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(meta, dict) and 'host' in meta:
                    found[int(step)] = (meta['host']['step'], meta['host']['slot_trial'], meta['fingerprint'])
    return found


def test_dispatching_ahead_with_measurements_and_checkpoints_resumes_to_the_same_trials(tmp_path):
    from dps_jax import checkpoints, smoothness

    trials, tx, _, _ = cell_setup()
    measured = smoothness.Measurements(smoothness.make_example_losses(APPLY), lipschitz_every=20,
                                       noise_scale_every=40, chunk_size=128, noise_scale_batch_sizes=(8, 32),
                                       noise_scale_draws=2)
    settings = dict(max_steps=60, measurements=measured)
    saved = lambda folder: checkpoints.CellCheckpoints(str(folder), 3, identity={'cell': 'ahead'},
                                                       log=lambda line: None)
    plain = run(trials, tx, dispatch_ahead=False, checkpoints=saved(tmp_path / 'plain'), **settings)
    ahead = run(trials, tx, dispatch_ahead=True, checkpoints=saved(tmp_path / 'ahead'), **settings)
    # Measured on the same states, but compaction comes a check later ahead, so the estimators run
    # vmapped over more slots: their float sums agree to rounding, not bit for bit.
    assert_same_trials(ahead, plain, measurement_rtol=1e-4)
    # The same saved states as the plain loop's: no work ahead in them (the slot-steps computed differ,
    # as the discarded work before them counts).
    ahead_saved, plain_saved = saved_metadata(tmp_path / 'ahead'), saved_metadata(tmp_path / 'plain')
    assert ahead_saved.keys() == plain_saved.keys() and plain_saved
    for checks, (step, layout, fingerprint) in plain_saved.items():
        assert ahead_saved[checks][:2] == (step, layout)
        # Compaction ran a check later ahead, so the kept trials' floats agree to rounding; a chunk
        # of work ahead would move them (and their step counts) far more.
        np.testing.assert_allclose(ahead_saved[checks][2], fingerprint, rtol=1e-4)
    lines = []
    resumed = run(trials, tx, dispatch_ahead=True, checkpoints=saved(tmp_path / 'ahead'), log=lines.append,
                  **settings)
    assert any('resumed from checkpoint at step' in line for line in lines), lines
    assert_same_trials(resumed, plain, measurement_rtol=1e-4)


def test_the_eval_chunk_is_cpu_tuned_on_cpu_and_sized_from_memory_on_accelerators():
    # On CPU 48 examples per trial (checked in turn), whatever the trials and the memory.
    assert engine.eval_chunk_size(1, 6000, 'cpu') == 48 and engine.eval_chunk_size(2, 6000, 'cpu', 1e6, 1 << 30) == 48
    assert engine.eval_chunk_size(16, 6000, 'cpu', 1e6, 1 << 30) == 48
    assert engine.eval_chunk_size(100, 6000, 'cpu') == 48
    # 100 trials x 2 KB per example in 40 MB: 200 examples per chunk; more memory: the whole split.
    assert engine.eval_chunk_size(100, 6000, 'gpu', 2000.0, 40_000_000) == 200
    assert engine.eval_chunk_size(100, 6000, 'gpu', 2000.0, 80 << 30) == 6000
    assert engine.eval_chunk_size(1000, 6000, 'tpu', 1e6, 1 << 30) == 25  # at least 25
    # No estimate: 1,600 rows in [25, 1000], not the CPU's small programs.
    assert engine.eval_chunk_size(100, 6000, 'gpu', None, 1 << 30) == 25
    assert engine.eval_chunk_size(1, 6000, 'gpu', None, 1 << 30) == 1000
