"""The ledger: one check's update in the reference's order, and its JSON round trip."""

import json

import jax.numpy as jnp
import numpy as np

from dps_jax import engine, trial
from dps_jax.ledger import DIVERGED, EXHAUSTED, REACHED, RUNNING, Ledger, Rule

# 6,000 validation examples at goal 0.12: 719 errors reach it, 720 (err 0.12000000477) do not.
RULE = Rule(goal_error=0.12, num_val_examples=6000, max_steps=20)


def two_checks():
    """Six trials: a check at step 10 (trial 5 reaches the goal), then one at the budget, step 20."""
    first = Ledger.new(6).after_check(np.arange(6), np.array([800, 800, 800, 800, 800, 100], np.int32),
                                      np.ones(6, bool), 10, RULE)
    # Slot order need not be trial order; trial 5 has ended and is not in the check.
    trials = np.array([3, 0, 4, 1, 2])
    errors = np.array([900, 719, 900, 720, 700], np.int32)
    finite = np.array([False, True, True, True, False])  # trials 3 and 2: a NaN loss
    return first, first.after_check(trials, errors, finite, 20, RULE)


def test_a_check_decides_goal_then_divergence_then_budget():
    first, second = two_checks()
    np.testing.assert_array_equal(first.status, [RUNNING] * 5 + [REACHED])
    # 0: 719 reaches the goal exactly at the threshold; 1: 720 misses it and the budget is spent;
    # 2: a NaN loss below the goal counts as reached; 3: a NaN loss above it diverged; 4: exhausted.
    np.testing.assert_array_equal(second.status, [REACHED, EXHAUSTED, REACHED, DIVERGED, EXHAUSTED, REACHED])
    np.testing.assert_array_equal(second.steps_to_result, [20, -1, 20, -1, -1, 10])
    np.testing.assert_array_equal(second.steps, [20, 20, 20, 20, 20, 10])
    np.testing.assert_array_equal(second.last_val_error, np.array([719, 720, 700, 900, 900, 100]) / 6000)
    np.testing.assert_array_equal(second.best_val_error, np.array([719, 720, 700, 800, 800, 100]) / 6000)
    assert second.status.dtype == second.steps.dtype == second.steps_to_result.dtype == np.int64
    # Updates return a new ledger; the earlier one is unchanged.
    np.testing.assert_array_equal(first.steps, [10] * 6)


def test_a_non_finite_error_value_diverges_and_leaves_the_best_error():
    ledger = Ledger.new(4).after_check(np.arange(4), np.array([0.7, 0.7, 0.7, 0.7]), np.ones(4, bool), 10,
                                       Rule(0.5, 1, 100))
    ledger = ledger.after_check(np.arange(4), np.array([np.nan, 0.4, np.inf, 0.6]), np.ones(4, bool), 20,
                                Rule(0.5, 1, 100))
    np.testing.assert_array_equal(ledger.status, [DIVERGED, REACHED, DIVERGED, RUNNING])
    np.testing.assert_array_equal(ledger.best_val_error, [0.7, 0.4, 0.7, 0.6])
    np.testing.assert_array_equal(ledger.last_val_error, [np.nan, 0.4, np.inf, 0.6])


def test_measurements_append_to_the_given_trials_series():
    ledger = Ledger.new(3).with_measurements(np.array([2, 0]), 0, noise_scale=np.array([[1.0, 2, 3], [4, 5, 6]]))
    ledger = ledger.with_measurements(np.array([0]), 20, lipschitz=np.array([np.float32(0.5)]))
    assert ledger.noise_scale == (((0, 4.0, 5.0, 6.0),), (), ((0, 1.0, 2.0, 3.0),))
    assert ledger.lipschitz == (((20, 0.5),), (), ())
    assert all(type(value) is float for value in ledger.noise_scale[0][0][1:])


def same(got, want) -> bool:
    """Equal with nan == nan, of the same types (floats stay floats)."""
    if isinstance(want, np.ndarray):
        return got.dtype == want.dtype and np.array_equal(got, want, equal_nan=want.dtype.kind == 'f')
    if isinstance(want, tuple):
        return isinstance(got, tuple) and len(got) == len(want) and all(map(same, got, want))
    return type(got) is type(want) and (got == want or (got != got and want != want))


def test_json_round_trip_keeps_inf_and_nan():
    _, ledger = two_checks()
    ledger = ledger._replace(best_val_error=np.array([np.inf, 0.1, np.nan, 0.2, 0.3, -np.inf]))
    ledger = ledger.with_measurements(np.array([0, 3]), 20, lipschitz=np.array([np.nan, 2.5]),
                                      noise_scale=np.array([[np.inf, -1.0, np.nan], [0.5, 0.25, 0.125]]))
    saved = ledger.to_json()
    text = json.dumps(saved, allow_nan=False)  # strict JSON: inf and nan are strings
    restored = Ledger.from_json(json.loads(text))
    for field in Ledger._fields:
        assert same(getattr(restored, field), getattr(ledger, field)), field
    assert saved['best_val_error'][0] == 'inf' and saved['lipschitz'][0] == [[20, 'nan']]


def test_slots_are_padded_with_copies_that_never_count_and_regroup():
    spec = engine.CellSpec(num_trials=5, batch_size=1, goal_error=0.1, max_steps=10, check_every=10, data_seed=0,
                           until='all', compaction=True, group_size=2, per_trial_order=False, mesh=None,
                           measurements=None)
    rows = {'w': jnp.arange(5.0) * 10}
    source = engine.Group(trial.TrainState(rows, rows, rows, rows), None)
    slots = engine.lay_out(np.array([4, 1, 3]), source, np.arange(5), spec)
    np.testing.assert_array_equal(slots.trial, [4, 1, 3, -1])  # 2 groups of 2
    assert len(slots.groups) == 2 and slots.fits(spec)
    np.testing.assert_array_equal(np.concatenate([g.states.params['w'] for g in slots.groups]), [40, 10, 30, 40])
    np.testing.assert_array_equal(slots.slot_of_trial(), [-1, 1, -1, 2, 0])
    ledger = Ledger.new(5)._replace(status=np.array([RUNNING, RUNNING, RUNNING, REACHED, RUNNING]))
    np.testing.assert_array_equal(slots.running(ledger), [True, True, False, False])
    assert not slots.fits(engine.CellSpec(**{**spec.__dict__, 'group_size': 4}))
    assert 'group_size' not in spec.identity() and spec.identity()['num_trials'] == 5
