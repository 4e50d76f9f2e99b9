"""Reading results stores, steps tables, bootstrap bands, S(B) fits, perfect scaling and edge flags."""

import json
import math
import os

import numpy as np
import pytest

from dps_jax import analysis

CONFIG = {'goal_error': 0.02, 'dataset': 'mnist', 'model': 'lenet300', 'optimizer': 'momentum',
          'search_names': ['learning_rate', 'momentum'], 'sparsities': [0.0, 0.9],
          'batch_sizes': [16, 32, 64, 128]}


def trial(index, status, steps=None, learning_rate=0.01, momentum=0.99):
    """One trials.jsonl record; steps_to_result only for reached trials."""
    return {'trial': index, 'seed': index, 'learning_rate': learning_rate, 'momentum': momentum,
            'decay_steps': 45000, 'end_learning_rate_factor': 0.003, 'status': status,
            'steps_to_result': steps if status == 'reached' else None, 'steps': steps or 5000,
            'best_val_error': 0.01 if status == 'reached' else 0.5, 'last_val_error': 0.3}


def write_cell(workdir, sparsity, batch_size, trials, finished=True):
    """Writes cells/<cell>/trials.jsonl and, if finished, a summary.json consistent with the trials."""
    folder = os.path.join(workdir, 'cells', f'{sparsity:g}_{batch_size}')
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'trials.jsonl'), 'w') as file:
        file.writelines(json.dumps(record) + '\n' for record in trials)
    if not finished:
        return
    reached = [t for t in trials if t['status'] == 'reached']
    best = min(reached, key=lambda t: t['steps_to_result']) if reached else None
    counts = {status: sum(t['status'] == status for t in trials)
              for status in ('reached', 'diverged', 'exhausted', 'running')}
    summary = {'sparsity': sparsity, 'batch_size': batch_size,
               'steps_to_result': best and best['steps_to_result'], 'best_trial': best and best['trial'],
               'counts': counts, 'until': 'all', 'trial_steps_computed': 100, 'wall_seconds': 1.0}
    with open(os.path.join(folder, 'summary.json'), 'w') as file:
        json.dump(summary, file)


def write_store(workdir, config=CONFIG):
    """A small store: sparsity 0 at four batch sizes, 0.9 at three (64 unreached), one unfinished cell."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as file:
        json.dump(config, file)
    for batch_size, steps in [(16, 4000), (32, 2100), (64, 1200), (128, 1000)]:
        write_cell(workdir, 0.0, batch_size, [trial(0, 'reached', steps + 500), trial(1, 'reached', steps),
                                              trial(2, 'diverged', learning_rate=0.5),
                                              trial(3, 'exhausted')])
    write_cell(workdir, 0.9, 16, [trial(0, 'reached', 6000), trial(1, 'exhausted')])
    write_cell(workdir, 0.9, 32, [trial(0, 'exhausted'), trial(1, 'reached', 3000, learning_rate=1.0)])
    write_cell(workdir, 0.9, 64, [trial(0, 'exhausted'), trial(1, 'diverged')])
    write_cell(workdir, 0.9, 128, [trial(0, 'reached', 10)], finished=False)
    return workdir


def test_load_round_trip_skips_unfinished_cells(tmp_path):
    study = analysis.load_study(write_store(str(tmp_path)))
    assert study.config == CONFIG
    assert sorted(study.cells) == [(0.0, 16), (0.0, 32), (0.0, 64), (0.0, 128), (0.9, 16), (0.9, 32), (0.9, 64)]
    cell = study.cells[(0.9, 32)]
    assert cell.name == '0.9_32'
    assert cell.summary['best_trial'] == 1
    assert [t['status'] for t in cell.trials] == ['exhausted', 'reached']


def test_missing_config_or_cells_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match='config.json'):
        analysis.load_study(str(tmp_path))
    (tmp_path / 'config.json').write_text(json.dumps(CONFIG))
    with pytest.raises(ValueError, match='no finished cells'):
        analysis.load_study(str(tmp_path))


def test_a_later_line_for_the_same_trial_replaces_the_earlier(tmp_path):
    write_store(str(tmp_path))
    write_cell(str(tmp_path), 0.0, 16, [trial(0, 'running'), trial(1, 'reached', 900), trial(0, 'reached', 800)])
    cell = analysis.load_study(str(tmp_path)).cells[(0.0, 16)]
    assert [t['trial'] for t in cell.trials] == [0, 1]
    assert analysis.cell_steps(cell) == 800


def test_best_steps_is_the_minimum_over_reached_trials(tmp_path):
    steps = analysis.best_steps(analysis.load_study(write_store(str(tmp_path))))
    assert steps == {(0.0, 16): 4000, (0.0, 32): 2100, (0.0, 64): 1200, (0.0, 128): 1000,
                     (0.9, 16): 6000, (0.9, 32): 3000, (0.9, 64): None}


def test_steps_table_has_dashes_for_unreached_and_not_run(tmp_path):
    table = analysis.steps_table(analysis.load_study(write_store(str(tmp_path))))
    lines = table.splitlines()
    assert 'goal validation error 0.02' in lines[0]
    assert lines[1].split() == ['sparsity', '\\', 'batch', '16', '32', '64', '128']
    assert lines[2].split() == ['0', '4000', '2100', '1200', '1000']
    assert lines[3].split() == ['0.9', '6000', '3000', '-', '-']


def test_bootstrap_band_collapses_when_every_trial_has_the_same_steps():
    assert analysis.bootstrap_band(np.full(8, 700.0)) == (700.0, 700.0, 700.0)


def test_bootstrap_band_with_one_reaching_trial_in_ten():
    # A resample of 10 misses the one reaching trial with probability (9/10)^10 ~ 0.35 > 0.1,
    # so the 0.9 quantile is inf while the 0.1 quantile and the median are that trial's steps.
    steps = np.array([-1, -1, 1200, -1, np.nan, -1, -1, -1, -1, -1], dtype=np.float64)
    low, median, high = analysis.bootstrap_band(steps)
    assert (low, median, high) == (1200.0, 1200.0, math.inf)


def test_bootstrap_band_of_no_reaching_trial_is_infinite():
    assert analysis.bootstrap_band(np.array([-1.0, np.nan])) == (math.inf, math.inf, math.inf)


def test_bootstrap_band_spans_the_trials_and_is_reproducible():
    steps = np.arange(100.0, 2100.0, 100.0)  # 20 trials
    band = analysis.bootstrap_band(steps, subset_size=3, seed=4)
    assert band == analysis.bootstrap_band(steps, subset_size=3, seed=4)
    low, median, high = band
    assert 100.0 <= low < median < high <= 2000.0
    # With all 20 drawn, the best trial (100) is in a resample with probability 1 - 0.95^20 ~ 0.64.
    assert analysis.bootstrap_band(steps)[0] == 100.0


BATCH_SIZES = np.array([8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=np.float64)


@pytest.mark.parametrize('s_min, b_crit', [(1000.0, 300.0), (250.0, 40.0), (5000.0, 2000.0)])
def test_fit_recovers_a_noiseless_curve(s_min, b_crit):
    fit = analysis.fit_steps_vs_batch(BATCH_SIZES, s_min * (1 + b_crit / BATCH_SIZES))
    assert fit.s_min == pytest.approx(s_min, rel=0.01)
    assert fit.b_crit == pytest.approx(b_crit, rel=0.01)
    assert fit.s_min_std < 1e-6 * s_min and fit.b_crit_std < 1e-6 * b_crit


def test_fit_with_five_percent_noise_is_within_its_stated_uncertainty():
    s_min, b_crit = 1000.0, 300.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        noise = np.exp(rng.normal(0.0, 0.05, BATCH_SIZES.size))
        fit = analysis.fit_steps_vs_batch(BATCH_SIZES, s_min * (1 + b_crit / BATCH_SIZES) * noise)
        # 5% noise on 10 points: both parameters land within 20% and within 4 stated sigmas.
        assert fit.s_min == pytest.approx(s_min, rel=0.2)
        assert fit.b_crit == pytest.approx(b_crit, rel=0.2)
        assert abs(fit.s_min - s_min) < 4 * fit.s_min_std
        assert abs(fit.b_crit - b_crit) < 4 * fit.b_crit_std


def test_fit_needs_three_positive_points():
    with pytest.raises(ValueError, match='>= 3 points'):
        analysis.fit_steps_vs_batch([16, 32], [100, 50])
    with pytest.raises(ValueError, match='positive'):
        analysis.fit_steps_vs_batch([16, 32, 64], [100, 50, -1])


@pytest.mark.parametrize('steps, bound, side', [
    ([8000, 4000, 2000, 1000], 128, 'lower'),   # S = 128000 / B: perfect scaling at every batch size
    ([8000, 4100, 2000, 1000], 128, 'lower'),   # the same with one point 2.5% off: still no bend
    ([1000, 1000, 1010, 1000], 16, 'upper'),    # flat: no data parallelism to speak of
])
def test_a_curve_without_a_finite_best_fit_reports_only_a_bound_on_b_crit(tmp_path, monkeypatch, steps, bound, side):
    """S(B) = S_min (1 + B_crit / B) approaches S = c / B as B_crit -> inf and a constant as B_crit -> 0:
    points on (or nearly on) either limit have no finite least-squares B_crit, and the optimizer stops
    at an arbitrary huge or tiny value with an infinite uncertainty."""
    os.makedirs(tmp_path, exist_ok=True)
    (tmp_path / 'config.json').write_text(json.dumps(CONFIG))
    for batch_size, cell_steps in zip((16, 32, 64, 128), steps):
        write_cell(str(tmp_path), 0.0, batch_size, [
            with_series(trial(0, 'reached', cell_steps), [(100, 2.0)], [(0, 1.0, 40.0)])])
    result = analysis.analyze(analysis.load_study(str(tmp_path)), num_resamples=10)
    curve, = result['curves']
    other = 'upper' if side == 'lower' else 'lower'
    assert curve['fit'] is None and curve[f'b_crit_{side}_bound'] == bound and curve[f'b_crit_{other}_bound'] is None
    line = analysis.describe_curves(result)
    assert line.startswith(f'sparsity 0: B_crit {">" if side == "lower" else "<"} {bound} (')
    assert 'S(B) has no finite best fit' in line
    row, = result['smoothness']
    assert row['b_crit'] is None and row[f'b_crit_{side}_bound'] == bound
    assert analysis.describe_smoothness(result).splitlines()[-1].endswith(('>' if side == 'lower' else '<') + str(bound))
    from dps_jax import plots  # the noise-scale figure marks the bound, not a made-up value
    figures = []
    monkeypatch.setattr(plots, '_save', lambda figure, path_stem, formats: figures.append(figure) or [])
    plots.plot_noise_scale(result, CONFIG, str(tmp_path / 'noise_scale'))
    marked = [line for line in figures[0].axes[0].get_lines() if line.get_marker() == ('^' if side == 'lower' else 'v')]
    assert len(marked) == 1 and list(marked[0].get_ydata()) == [bound]


def test_a_curve_that_bends_past_its_batch_sizes_still_gets_its_finite_fit(tmp_path):
    """1% above perfect scaling at the last point: the least-squares B_crit is finite (about 10,800, far
    beyond batch 128, found by a profile of the loss over B_crit), so it is reported, not a bound."""
    os.makedirs(tmp_path, exist_ok=True)
    (tmp_path / 'config.json').write_text(json.dumps(CONFIG))
    for batch_size, cell_steps in zip((16, 32, 64, 128), (8000, 4000, 2000, 1010)):
        write_cell(str(tmp_path), 0.0, batch_size, [trial(0, 'reached', cell_steps)])
    curve, = analysis.analyze(analysis.load_study(str(tmp_path)), num_resamples=10)['curves']
    assert curve['b_crit_lower_bound'] is None and curve['b_crit_upper_bound'] is None
    # Profile: for each B_crit, S_min in closed form (the mean log offset); the best B_crit on a fine grid.
    b, s = np.array([16.0, 32, 64, 128]), np.array([8000.0, 4000, 2000, 1010])
    grid = np.exp(np.linspace(np.log(1e3), np.log(1e5), 20001))
    shapes = np.log1p(grid[:, None] / b[None, :])
    offsets = (np.log(s)[None, :] - shapes).mean(axis=1)
    losses = ((offsets[:, None] + shapes - np.log(s)[None, :]) ** 2).sum(axis=1)
    assert curve['fit']['b_crit'] == pytest.approx(grid[losses.argmin()], rel=1e-3)


def test_perfect_scaling_end_on_a_hand_curve():
    batch_sizes = [16, 32, 64, 128, 256]
    # Reference 1000, 500, 250, 125, 62.5: ratios 1, 1.04, 1.2, 1.6, 3.04 -> the 0.25 tolerance ends at 64.
    assert analysis.perfect_scaling_end(batch_sizes, [1000, 520, 300, 200, 190]) == 64
    assert analysis.perfect_scaling_end(batch_sizes, [1000, 520, 300, 200, 190], tolerance=0.7) == 128
    # Order does not matter; faster than perfect counts as within.
    assert analysis.perfect_scaling_end([64, 16, 32], [200, 1000, 400]) == 64
    # The walk starts at the smallest reached batch size and stops at an unreached one.
    assert analysis.perfect_scaling_end(batch_sizes, [None, 500, 250, None, 60]) == 64
    assert analysis.perfect_scaling_end(batch_sizes, [1000, 900, 250, 125, 60]) == 16
    assert analysis.perfect_scaling_end(batch_sizes, [None] * 5) is None


def test_edge_flags_name_the_searched_parameters_at_the_edge(tmp_path):
    flags = analysis.edge_flags(analysis.load_study(write_store(str(tmp_path))))
    assert flags[(0.9, 32)] == ['learning_rate']  # best trial has learning rate 1.0, the top of the range
    assert flags[(0.0, 16)] == []  # the diverged trial at 0.5 is not the best one
    assert flags[(0.9, 64)] == []  # nothing reached


def test_edge_flags_use_the_studys_own_search_space(tmp_path):
    # Learning rate 1.0 tops the reference's range [1e-4, 1] (CONFIG has no search_space: an old
    # store), is inside [1e-4, 10]; 0.01 is inside the reference's range, the bottom of [0.01, 1].
    space = {'learning_rate': {'low': 1e-4, 'high': 10.0, 'scale': 'log'},
             'momentum': {'low': 0.9, 'high': 0.9999, 'scale': 'reverse_log'}}
    wider = analysis.edge_flags(analysis.load_study(write_store(str(tmp_path / 'wider'),
                                                                dict(CONFIG, search_space=space))))
    assert wider[(0.9, 32)] == [] and wider[(0.0, 16)] == []
    space['learning_rate'] = {'low': 0.01, 'high': 1.0, 'scale': 'log'}
    higher = analysis.edge_flags(analysis.load_study(write_store(str(tmp_path / 'higher'),
                                                                 dict(CONFIG, search_space=space))))
    assert higher[(0.9, 32)] == ['learning_rate'] and higher[(0.0, 16)] == ['learning_rate']


def test_analysis_records_the_searched_ranges(tmp_path):
    space = {'learning_rate': {'low': 0.01, 'high': 1.0, 'scale': 'linear'},
             'momentum': {'low': 0.9, 'high': 0.9999, 'scale': 'reverse_log'},
             'decay_steps': {'low': 100, 'high': 200, 'scale': 'int'}}
    result = analysis.analyze(analysis.load_study(write_store(str(tmp_path / 'new'), dict(CONFIG, search_space=space))),
                              num_resamples=10)
    assert result['search_space'] == {name: space[name] for name in ('learning_rate', 'momentum')}
    old = analysis.analyze(analysis.load_study(write_store(str(tmp_path / 'old'))), num_resamples=10)
    assert old['search_space'] == {'learning_rate': {'low': 1e-4, 'high': 1.0, 'scale': 'log'},
                                   'momentum': {'low': 0.9, 'high': 0.9999, 'scale': 'reverse_log'}}


def test_edge_flags_only_for_searched_names(tmp_path):
    config = dict(CONFIG, search_names=['momentum'])
    write_store(str(tmp_path), config)
    assert analysis.edge_flags(analysis.load_study(str(tmp_path)))[(0.9, 32)] == []


def test_analyze_is_json_and_write_analysis_round_trips(tmp_path):
    workdir = write_store(str(tmp_path))
    # Three more points on S_min (1 + B_crit / B) for sparsity 0 give it a well-posed fit.
    for batch_size in (256, 512, 1024):
        write_cell(workdir, 0.0, batch_size, [trial(0, 'reached', round(1000 * (1 + 30 / batch_size)))])
    analysis.write_analysis(workdir)
    path = os.path.join(workdir, 'analysis.json')
    with open(path) as file:
        result = json.loads(file.read(), parse_constant=lambda name: pytest.fail(f'{name} in JSON'))
    dense, sparse = result['curves']
    assert dense['sparsity'] == 0.0 and sparse['sparsity'] == 0.9
    assert dense['batch_sizes'] == [16, 32, 64, 128, 256, 512, 1024]
    assert dense['steps'][:4] == [4000, 2100, 1200, 1000]
    assert dense['bootstrap_low'][0] == 4000 and dense['bootstrap_high'][0] in (4500, None)
    assert dense['fit'] is not None and dense['fit_reason'] is None
    assert dense["perfect_scaling_end"] == 64  # 1200 is 1.2x the reference 1000, 1000 is 2x 500
    assert sparse['steps'] == [6000, 3000, None]
    assert sparse['fit'] is None and '>= 3' in sparse['fit_reason']
    assert sparse['edge_flags'] == [[], ['learning_rate'], []]
    assert sparse['best_trial'] == [0, 1, None]
    assert sparse['bootstrap_low'][2] is None
    assert result['dataset'] == 'mnist' and result['goal_error'] == 0.02


def with_series(record, lipschitz=None, noise=None):
    """A trial record with stored series: lipschitz [(step, L)], noise [(step, |G|^2, tr Sigma)]."""
    record = dict(record)
    if lipschitz is not None:
        record['lipschitz'] = {'step': [s for s, _ in lipschitz], 'value': [v for _, v in lipschitz]}
    if noise is not None:
        record['noise_scale'] = {'step': [s for s, _, _ in noise], 'b_simple': [t / g for _, g, t in noise],
                                 'gradient_norm_squared': [g for _, g, _ in noise],
                                 'trace_covariance': [t for _, _, t in noise]}
    return record


def test_smoothness_by_sparsity_pools_best_and_reached_trials_next_to_b_crit(tmp_path):
    workdir = str(tmp_path)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as file:
        json.dump(CONFIG, file)
    for batch_size, steps in [(16, 3000), (32, 2000), (64, 1500)]:  # S(B) = 1000 (1 + 32 / B)
        write_cell(workdir, 0.0, batch_size, [
            with_series(trial(0, 'reached', steps), [(100, 2.0), (200, 4.0)], [(0, 1.0, 40.0), (100, 0.5, 30.0)]),
            with_series(trial(1, 'reached', steps + 100), [(100, 9.0), (200, None)], [(0, 2.0, 40.0)]),
            with_series(trial(2, 'exhausted'), [(100, 100.0)], [(0, -0.1, 100.0)])])
    write_cell(workdir, 0.9, 16, [trial(0, 'reached', 500)])  # measured nothing
    result = analysis.analyze(analysis.load_study(workdir), num_resamples=10)
    row, = result['smoothness']
    assert row['sparsity'] == 0.0
    assert row['lipschitz_best_mean'] == 3.0 and row['lipschitz_best_max'] == 4.0
    assert row['lipschitz_reached_mean'] == 5.0 and row['lipschitz_reached_max'] == 9.0  # 2, 4, 9 per cell
    assert row['lipschitz_measurements'] == 9
    # Numerator and denominator averaged separately: the -0.1 estimate of |G|^2 does not blow up.
    assert row['b_simple_initial'] == pytest.approx((40 + 40 + 100) / (1.0 + 2.0 - 0.1))
    assert row['b_simple_training'] == pytest.approx((40 + 30) / (1.0 + 0.5))
    assert row['b_crit'] == pytest.approx(32.0, rel=1e-3)
    table = analysis.describe_smoothness(result)
    assert 'B_crit' in table and '32' in table.splitlines()[-1]


def test_a_study_without_measurements_has_no_smoothness_section(tmp_path):
    result = analysis.analyze(analysis.load_study(write_store(str(tmp_path))), num_resamples=10)
    assert 'smoothness' not in result and analysis.describe_smoothness(result) == ''
