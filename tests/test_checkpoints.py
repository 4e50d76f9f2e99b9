"""Mid-cell checkpoints: a resumed cell gives the uninterrupted result; a damaged checkpoint is
reported and the previous one (or a fresh start) is used instead."""

import os

import numpy as np
import pytest

from dps_jax import checkpoints, smoothness
from tests.test_engine import APPLY, cell_setup, run

SETTINGS = dict(max_steps=120, check_every=10, goal_error=0.12, until='all')


def assert_same_result(got, want):
    for field in ('status', 'steps_to_result', 'steps', 'best_val_error', 'last_val_error'):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    assert got.lipschitz == want.lipschitz and got.noise_scale == want.noise_scale


def newest_step_dir(directory):
    return os.path.join(directory, str(max(int(name) for name in os.listdir(directory) if name.isdigit())))


def damage(step_dir):
    """Truncates every array data file of a saved step (what a full disk or a kill can leave)."""
    damaged = 0
    for folder, _, files in os.walk(os.path.join(step_dir, 'arrays')):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.getsize(path) > 32 and os.path.basename(folder) == 'd':  # OCDBT data files
                with open(path, 'r+b') as file:
                    file.truncate(16)
                damaged += 1
    assert damaged, f'no array data found under {step_dir}'


@pytest.fixture(scope='module')
def uninterrupted():
    trials, tx, _, _ = cell_setup()
    return run(trials, tx, **SETTINGS)


def cell_checkpoints(directory, lines, every=1):
    return checkpoints.CellCheckpoints(str(directory), every, identity={'cell': 'test'}, log=lines.append)


def test_checkpointing_does_not_change_the_result_and_keeps_two(tmp_path, uninterrupted):
    trials, tx, _, _ = cell_setup()
    lines = []
    result = run(trials, tx, checkpoints=cell_checkpoints(tmp_path, lines), **SETTINGS)
    assert_same_result(result, uninterrupted)
    kept = sorted(int(name) for name in os.listdir(tmp_path) if name.isdigit())
    assert len(kept) == 2 and kept[1] < result.checks  # no checkpoint of the finished cell


@pytest.mark.parametrize('options', [dict(compaction=True), dict(compaction=False),
                                     dict(per_trial_order=True, group_size=4)])
def test_a_cell_resumed_from_its_last_checkpoint_ends_as_the_uninterrupted_run(tmp_path, options):
    trials, tx, _, _ = cell_setup()
    uninterrupted = run(trials, tx, **{**SETTINGS, **options})
    # A first run leaves its last two checkpoints behind, as a killed one would.
    run(trials, tx, checkpoints=cell_checkpoints(tmp_path, []), **{**SETTINGS, **options})
    lines = []
    resumed = run(trials, tx, checkpoints=cell_checkpoints(tmp_path, lines), log=lines.append, **{**SETTINGS, **options})
    assert any('resumed from checkpoint at step' in line for line in lines), lines
    assert_same_result(resumed, uninterrupted)


def test_a_cell_that_raises_mid_run_finishes_its_checkpoint_saves_first(tmp_path, uninterrupted, monkeypatch):
    trials, tx, _, _ = cell_setup()
    saved = cell_checkpoints(tmp_path, [])
    closed = []
    close = saved.close
    monkeypatch.setattr(saved, 'close', lambda: closed.append(1) or close())

    class Interrupted(Exception):
        pass

    def log(line):  # a progress line after every check; the fourth raises, as a Ctrl-C in a notebook would
        if 'step      40/' in line:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(trials, tx, checkpoints=saved, log=log, log_every_seconds=0.0, **SETTINGS)
    assert closed == [1]  # saves finished before the error left run_cell
    # The same cell started again in the same process resumes from what was saved.
    lines = []
    resumed = run(trials, tx, checkpoints=cell_checkpoints(tmp_path, lines), log=lines.append, **SETTINGS)
    assert any('resumed from checkpoint at step 30' in line for line in lines), lines
    assert_same_result(resumed, uninterrupted)


def test_an_early_checkpoint_in_a_relative_directory_resumes_to_the_same_result(tmp_path, uninterrupted, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trials, tx, _, _ = cell_setup()
    # Checkpoints every 3 checks; of the two kept, resume from the older one (6 checks before the end).
    run(trials, tx, checkpoints=cell_checkpoints('relative/cell', [], every=3), **SETTINGS)
    steps = sorted(int(name) for name in os.listdir('relative/cell') if name.isdigit())
    assert steps == [6, 9]
    cell_checkpoints('relative/cell', []).manager.delete(9)
    lines = []
    resumed = run(trials, tx, checkpoints=cell_checkpoints('relative/cell', lines, every=3), log=lines.append,
                  **SETTINGS)
    assert any('resumed from checkpoint at step 60 (6 checks)' in line for line in lines), lines
    assert_same_result(resumed, uninterrupted)


def test_a_checkpoint_saved_with_another_group_size_is_regrouped(tmp_path, uninterrupted):
    trials, tx, _, _ = cell_setup()
    run(trials, tx, checkpoints=cell_checkpoints(tmp_path, []), group_size=2, **SETTINGS)
    lines = []
    resumed = run(trials, tx, checkpoints=cell_checkpoints(tmp_path, lines), log=lines.append, **SETTINGS)
    assert any('resumed from checkpoint' in line for line in lines), lines
    assert_same_result(resumed, uninterrupted)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
    trials, tx, _, _ = cell_setup()
    run(trials, tx, checkpoints=cell_checkpoints(tmp_path, []), **SETTINGS)
    newest = newest_step_dir(tmp_path)
    damage(newest)
    lines = []
    resumed = run(trials, tx, checkpoints=cell_checkpoints(tmp_path, lines), log=lines.append, **SETTINGS)
    warnings = [line for line in lines if 'warning: checkpoint' in line]
    assert len(warnings) == 1 and os.path.basename(newest) in warnings[0] and 'unusable' in warnings[0]
    resumed_at = [line for line in lines if 'resumed from checkpoint' in line]
    assert resumed_at and f'({int(os.path.basename(newest)) - 1} checks)' in resumed_at[0]
    assert_same_result(resumed, uninterrupted)


def test_with_every_checkpoint_damaged_the_cell_starts_over(tmp_path, uninterrupted):
    trials, tx, _, _ = cell_setup()
    run(trials, tx, checkpoints=cell_checkpoints(tmp_path, []), **SETTINGS)
    for name in os.listdir(tmp_path):
        if name.isdigit():
            damage(os.path.join(tmp_path, name))
    lines = []
    resumed = run(trials, tx, checkpoints=cell_checkpoints(tmp_path, lines), log=lines.append, **SETTINGS)
    assert sum('warning: checkpoint' in line for line in lines) == 2
    assert not any('resumed from checkpoint' in line for line in lines)
    assert_same_result(resumed, uninterrupted)


def test_a_checkpoint_of_another_setup_is_not_used(tmp_path):
    trials, tx, _, _ = cell_setup()
    run(trials, tx, checkpoints=cell_checkpoints(tmp_path, []), **SETTINGS)
    lines = []
    other = {**SETTINGS, 'goal_error': 0.2}
    run(trials, tx, checkpoints=cell_checkpoints(tmp_path, lines), log=lines.append, **other)
    assert not any('resumed from checkpoint' in line for line in lines)
    assert any('another setup' in line for line in lines)


def test_measurement_series_survive_a_resume(tmp_path):
    trials, tx, _, _ = cell_setup(rates=np.array([0.05, 0.2, 0.01]))
    measurements = smoothness.Measurements(smoothness.make_example_losses(APPLY), lipschitz_every=20,
                                           noise_scale_every=40, chunk_size=128, noise_scale_batch_sizes=(8, 32),
                                           noise_scale_draws=2)
    settings = {**SETTINGS, 'max_steps': 80, 'goal_error': 1e-6, 'measurements': measurements}
    whole = run(trials, tx, **settings)
    run(trials, tx, checkpoints=cell_checkpoints(tmp_path, []), **settings)
    lines = []
    resumed = run(trials, tx, checkpoints=cell_checkpoints(tmp_path, lines), log=lines.append, **settings)
    assert any('resumed from checkpoint' in line for line in lines)
    assert_same_result(resumed, whole)
    assert all(len(series) == 4 for series in resumed.lipschitz)


def test_checkpoints_refuse_keep_final_state(tmp_path):
    trials, tx, _, _ = cell_setup(rates=np.array([0.1]))
    with pytest.raises(ValueError, match='keep_final_state'):
        run(trials, tx, keep_final_state=True, checkpoints=cell_checkpoints(tmp_path, []))



def test_a_checkpoint_whose_identity_normalizes_to_this_setup_is_used(tmp_path):
    """CellCheckpoints(normalize=...) compares identities in that form: a checkpoint written without
    a field that this setup has at its default resumes."""
    trials, tx, _, _ = cell_setup()
    older = checkpoints.CellCheckpoints(str(tmp_path), 1, identity={'cell': 'test', 'config': {}})
    run(trials, tx, checkpoints=older, **SETTINGS)
    older.close()
    lines = []
    fill = lambda identity: {**identity, 'config': {'field': 'default', **identity.get('config', {})}}
    newer = checkpoints.CellCheckpoints(str(tmp_path), 1, identity={'cell': 'test', 'config': {'field': 'default'}},
                                        log=lines.append, normalize=fill)
    run(trials, tx, checkpoints=newer, log=lines.append, **SETTINGS)
    assert any('resumed from checkpoint' in line for line in lines), lines
    assert not any('another setup' in line for line in lines), lines
