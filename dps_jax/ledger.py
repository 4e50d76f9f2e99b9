"""The host-side record of trials, and the reference's rule for what one check means to a trial.

The device reports per check, for each live trial, a validation error count and whether its loss
and weights stayed finite. `Ledger.after_check` turns that into statuses, steps-to-result and
errors with numpy over the trials, in the reference's order: the goal first, then a non-finite
loss, weights or error (diverged), then the step budget (exhausted). The engine keeps a ledger of
a cell's N trials, `trial.run_trial` a ledger of one, so both decide alike.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

RUNNING, REACHED, DIVERGED, EXHAUSTED = range(4)
STATUSES = ('running', 'reached', 'diverged', 'exhausted')  # index = code above


# Cached: the engine asks at every check with the same split size and goal.
@functools.lru_cache(maxsize=64)
def max_errors_at_goal(num_examples: int, goal_error: float) -> int:
    """The most errors of `num_examples` that the reference counts as reaching `goal_error` (-1: none).

    The reference's rule: err = 1 - a, with a the float32 mean of the float32 per-example
    accuracies (correctly rounded: the sum of 0/1 values is exact below 2^24 examples), then
    err <= goal in float64. So 720 errors of 6,000 (err 0.12000000477) miss goal 0.12, while
    120 of 6,000 (err 0.01999998) reach goal 0.02. err grows with the count, so a threshold suffices.
    """
    errors = np.arange(num_examples + 1)
    accuracy = (np.float32(num_examples) - errors.astype(np.float32)) / np.float32(num_examples)
    reached = np.flatnonzero(1.0 - accuracy.astype(np.float64) <= float(goal_error))
    return int(reached[-1]) if reached.size else -1


def reached_goal(errors, num_examples: int, goal_error: float) -> np.ndarray:
    """Whether each validation result reaches the goal (bool array, host-side numpy).

    Integer `errors` are error counts over a split of `num_examples`, decided exactly as the
    reference does (max_errors_at_goal); float `errors` are error values of another metric (a
    loss, say), compared as error <= goal_error.
    """
    errors = np.asarray(errors)
    if errors.dtype.kind in 'iu':
        return errors <= max_errors_at_goal(num_examples, goal_error)
    return errors.astype(np.float64) <= float(goal_error)


def error_rate(errors, num_examples: int) -> np.ndarray:
    """Validation error as a float64 fraction: count / num_examples for integer counts, else as given."""
    errors = np.asarray(errors)
    return errors / num_examples if errors.dtype.kind in 'iu' else errors.astype(np.float64)


class Rule(NamedTuple):
    """What a check's results are judged against."""
    goal_error: float      # a trial reaches the goal at validation error <= this (see reached_goal)
    num_val_examples: int  # the validation split's size: error counts -> rates
    max_steps: int         # the step budget of every trial


def _float_list(values) -> list:
    """JSON floats; inf and nan as strings, which float() reads back."""
    return [float(v) if np.isfinite(v) else str(float(v)) for v in values]


class Ledger(NamedTuple):
    """Per-trial record of N trials (arrays indexed by trial); immutable: each update returns a new one."""
    status: np.ndarray           # int64 (N,): RUNNING, REACHED, DIVERGED or EXHAUSTED
    steps_to_result: np.ndarray  # int64 (N,): step of the first check at the goal, -1 if none
    best_val_error: np.ndarray   # float64 (N,): lowest validation error seen (inf before any check)
    last_val_error: np.ndarray   # float64 (N,): validation error at the trial's last check (nan before)
    steps: np.ndarray            # int64 (N,): steps the trial trained
    lipschitz: tuple             # per trial: ((step, L), ...)
    noise_scale: tuple           # per trial: ((step, B_simple, |G|^2, tr Sigma), ...)

    @classmethod
    def new(cls, num_trials: int) -> Ledger:
        """N running trials that have not trained."""
        return cls(np.full(num_trials, RUNNING, np.int64), np.full(num_trials, -1, np.int64),
                   np.full(num_trials, np.inf), np.full(num_trials, np.nan), np.zeros(num_trials, np.int64),
                   ((),) * num_trials, ((),) * num_trials)

    @property
    def running(self) -> np.ndarray:
        """bool (N,): trials that have not ended."""
        return self.status == RUNNING

    def after_check(self, trials: np.ndarray, errors: np.ndarray, finite: np.ndarray, step: int,
                    rule: Rule) -> Ledger:
        """The ledger after a check at `step` of the running `trials` (int (k,), distinct).

        errors (k,): their validation error counts (or float error values, see reached_goal);
        finite bool (k,): whether each one's loss and weights stayed finite through the chunk.
        """
        reached = reached_goal(errors, rule.num_val_examples, rule.goal_error)
        rates = error_rate(errors, rule.num_val_examples)
        # The reference's order: the goal first (a trial at the goal with a NaN loss has reached
        # it), then a non-finite loss, weights or error, then the budget.
        diverged = ~reached & ~(np.asarray(finite, bool) & np.isfinite(rates))
        exhausted = ~reached & ~diverged & (step >= rule.max_steps)
        status, steps_to_result = self.status.copy(), self.steps_to_result.copy()
        status[trials] = np.select([reached, diverged, exhausted], [REACHED, DIVERGED, EXHAUSTED], RUNNING)
        steps_to_result[trials[reached]] = step
        best, last, steps = self.best_val_error.copy(), self.last_val_error.copy(), self.steps.copy()
        # `rates < best`, not np.minimum: a nan error leaves the best as it was (as Python's min does).
        best[trials] = np.where(rates < best[trials], rates, best[trials])
        last[trials] = rates
        steps[trials] = step
        return self._replace(status=status, steps_to_result=steps_to_result, best_val_error=best,
                             last_val_error=last, steps=steps)

    def with_measurements(self, trials: np.ndarray, step: int, lipschitz: np.ndarray | None = None,
                          noise_scale: np.ndarray | None = None) -> Ledger:
        """The ledger with the measurements at `step` of `trials` (int (k,)) appended to their series.

        lipschitz (k,): L per trial; noise_scale (k, 3): B_simple, |G|^2, tr Sigma per trial.
        """
        return self._replace(
            lipschitz=self.lipschitz if lipschitz is None else _appended(
                self.lipschitz, trials, [(int(step), float(value)) for value in lipschitz]),
            noise_scale=self.noise_scale if noise_scale is None else _appended(
                self.noise_scale, trials, [(int(step),) + tuple(float(v) for v in row) for row in noise_scale]))

    def to_json(self) -> dict:
        """The ledger as JSON (a checkpoint's host part); inf and nan as strings."""
        return {'status': self.status.tolist(), 'steps_to_result': self.steps_to_result.tolist(),
                'best_val_error': _float_list(self.best_val_error),
                'last_val_error': _float_list(self.last_val_error), 'steps': self.steps.tolist(),
                'lipschitz': [[[s] + _float_list([v]) for s, v in series] for series in self.lipschitz],
                'noise_scale': [[[row[0]] + _float_list(row[1:]) for row in series] for series in self.noise_scale]}

    @classmethod
    def from_json(cls, saved: dict) -> Ledger:
        """The ledger that to_json wrote."""
        floats = lambda values: np.array([float(v) for v in values], np.float64)
        return cls(np.asarray(saved['status'], np.int64), np.asarray(saved['steps_to_result'], np.int64),
                   floats(saved['best_val_error']), floats(saved['last_val_error']),
                   np.asarray(saved['steps'], np.int64),
                   tuple(tuple((s, float(v)) for s, v in series) for series in saved['lipschitz']),
                   tuple(tuple((row[0],) + tuple(float(v) for v in row[1:]) for row in series)
                         for series in saved['noise_scale']))


def _appended(series: tuple, trials: np.ndarray, entries: list) -> tuple:
    """Per-trial `series` with entries[i] appended to the series of trials[i]."""
    series = list(series)
    for index, entry in zip(trials, entries):
        series[index] = series[index] + (entry,)
    return tuple(series)
