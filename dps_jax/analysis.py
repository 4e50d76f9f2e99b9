"""Reading a finished results store and summarising it: steps-to-result per cell, bootstrap bands,
fits of S(B) = S_min (1 + B_crit / B), the end of perfect scaling, and best trials on the search edge.

Only numpy and scipy are imported here, so analysis runs on a machine without JAX.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import optimize

from dps_jax.search import is_on_edge, space_as_dict, study_space
from dps_jax.store import atomic_write_json

CellKey = tuple[float, int]  # (sparsity, batch size)


class Cell(NamedTuple):
    """One finished (sparsity, batch size) cell: its folder name, summary.json and trials.jsonl lines."""
    name: str
    summary: dict
    trials: list[dict]


class Study(NamedTuple):
    """A results store: the resolved config and the finished cells keyed by (sparsity, batch size)."""
    config: dict
    cells: dict[CellKey, Cell]


class Fit(NamedTuple):
    """Least-squares parameters of S(B) = S_min (1 + B_crit / B) and their one-sigma uncertainties."""
    s_min: float
    b_crit: float
    s_min_std: float
    b_crit_std: float


def cell_name(sparsity: float, batch_size: int) -> str:
    """The folder name of a cell, e.g. '0.9_64' or '0_1024'."""
    return f'{float(sparsity):g}_{int(batch_size)}'


def _read_json(path: str) -> Any:
    with open(path) as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f'{path} is not valid JSON: {error}') from error


def _require_record(value: Any, where: str, fields: Mapping[str, type | tuple[type, ...]]) -> dict:
    """`value` when it is a JSON object whose `fields` hold values of their types, else a ValueError
    naming `where` (a results store written by hand or by another program)."""
    if not isinstance(value, dict):
        raise ValueError(f'{where} is not a JSON object, as dps_jax writes it')
    for field, kind in fields.items():
        if not isinstance(value.get(field), kind) or isinstance(value.get(field), bool):
            what = 'a whole number' if kind is int else 'a number'
            raise ValueError(f'{where}: {field!r} is {value.get(field)!r}, not {what} as dps_jax writes it')
    return value


def _read_trials(path: str, searched: Sequence[str] = ()) -> list[dict]:
    """Trials of one cell in trial order; a later line for the same trial replaces an earlier one.
    Each names its index and its `searched` metaparameters, and a reached one its steps-to-result."""
    if not os.path.exists(path):
        return []
    fields = {'trial': int, **{name: (int, float) for name in searched}}
    by_trial: dict[int, dict] = {}
    with open(path) as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f'{path}:{line_number} is not valid JSON: {error}') from error
            _require_record(record, f'{path}:{line_number}', fields)
            if record.get('status') == 'reached':
                _require_record(record, f'{path}:{line_number} (reached)', {'steps_to_result': int})
            by_trial[record['trial']] = record
    return [by_trial[index] for index in sorted(by_trial)]


def load_study(workdir: str) -> Study:
    """Reads workdir/config.json and every cell folder that has a summary.json (unfinished ones are skipped)."""
    config_path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(config_path):
        raise ValueError(f'{workdir} is not a results store: {config_path} does not exist')
    config = _require_record(_read_json(config_path), config_path, {})
    cells_folder = os.path.join(workdir, 'cells')
    cells: dict[CellKey, Cell] = {}
    if os.path.isdir(cells_folder):
        for name in sorted(os.listdir(cells_folder)):
            summary_path = os.path.join(cells_folder, name, 'summary.json')
            if not os.path.isfile(summary_path):
                continue
            summary = _require_record(_read_json(summary_path), summary_path,
                                      {'sparsity': (int, float), 'batch_size': int})
            # The summary, not the folder name, says which cell this is: '%g' loses nothing we key on.
            key = (float(summary['sparsity']), int(summary['batch_size']))
            trials = _read_trials(os.path.join(cells_folder, name, 'trials.jsonl'), config.get('search_names', []))
            cells[key] = Cell(name=name, summary=summary, trials=trials)
    if not cells:
        raise ValueError(f'{workdir} has no finished cells (no {cells_folder}/<cell>/summary.json)')
    return Study(config=config, cells=cells)


def _reached_steps(trial: Mapping[str, Any]) -> int | None:
    steps = trial.get('steps_to_result')
    if trial.get('status') != 'reached' or steps is None:
        return None
    return int(steps)


def best_trial(cell: Cell) -> dict | None:
    """The reached trial with the fewest steps (the summary's best_trial among ties), or None if none reached."""
    reached = [(steps, trial) for trial in cell.trials if (steps := _reached_steps(trial)) is not None]
    if not reached:
        return None
    fewest = min(steps for steps, _ in reached)
    winners = [trial for steps, trial in reached if steps == fewest]
    named = [trial for trial in winners if trial.get('trial') == cell.summary.get('best_trial')]
    return named[0] if named else winners[0]


def cell_steps(cell: Cell) -> int | None:
    """The cell's steps-to-result: minimum over its reached trials (the summary's value if no trials are stored)."""
    if not cell.trials:
        steps = cell.summary.get('steps_to_result')
        return None if steps is None else int(steps)
    best = best_trial(cell)
    return None if best is None else _reached_steps(best)


def best_steps(study: Study) -> dict[CellKey, int | None]:
    """Steps-to-result of every finished cell; None where no trial reached the goal."""
    return {key: cell_steps(cell) for key, cell in sorted(study.cells.items())}


def grid(study: Study) -> tuple[list[float], list[int]]:
    """Sorted sparsities and batch sizes: those in the config together with those of finished cells."""
    sparsities = {float(s) for s in study.config.get('sparsities', [])} | {s for s, _ in study.cells}
    batch_sizes = {int(b) for b in study.config.get('batch_sizes', [])} | {b for _, b in study.cells}
    return sorted(sparsities), sorted(batch_sizes)


def steps_table(study: Study) -> str:
    """Steps-to-result as text: a row per sparsity, a column per batch size, '-' if not reached or not run."""
    sparsities, batch_sizes = grid(study)
    steps = best_steps(study)
    header = ['sparsity \\ batch'] + [str(b) for b in batch_sizes]
    rows = [[f'{s:g}'] + ['-' if steps.get((s, b)) is None else str(steps[(s, b)]) for b in batch_sizes]
            for s in sparsities]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = [' '.join(text.rjust(width) for text, width in zip(row, widths)) for row in [header] + rows]
    goal = study.config.get('goal_error')
    title = 'steps to result' + ('' if goal is None else f' (goal validation error {goal:g})')
    return '\n'.join([title] + lines)


def bootstrap_band(steps_to_result: np.ndarray, num_resamples: int = 1000, subset_size: int | None = None,
                   seed: int = 0, quantiles: Sequence[float] = (0.1, 0.9)) -> tuple[float, float, float]:
    """(low, median, high) quantiles of the best-of-resample steps; input (trials,), -1 or nan = not reached.

    Following Shallue et al. (2019), each resample draws `subset_size` trials (default: all) with
    replacement and keeps the fewest steps among them, inf if none of them reached. Quantiles use
    numpy's 'inverted_cdf' method, so each is one of the resampled values and no interpolation
    mixes finite and infinite values: a quantile is inf exactly when more than that fraction of
    the resamples missed every reaching trial (e.g. 1 reaching trial in 10: (9/10)^10 ~ 35% of
    resamples miss it, so the 0.9 quantile is inf while the 0.1 quantile is its steps).
    """
    steps = np.asarray(steps_to_result, dtype=np.float64).reshape(-1)
    if steps.size == 0:
        raise ValueError('bootstrap_band needs at least one trial')
    if num_resamples < 1:
        raise ValueError(f'num_resamples must be >= 1, got {num_resamples}')
    subset_size = steps.size if subset_size is None else int(subset_size)
    if subset_size < 1:
        raise ValueError(f'subset_size must be >= 1, got {subset_size}')
    if len(quantiles) != 2 or not 0.0 <= quantiles[0] <= 0.5 <= quantiles[1] <= 1.0:
        raise ValueError(f'quantiles must be (low <= 0.5, high >= 0.5) in [0, 1], got {quantiles}')
    not_reached = np.isnan(steps) | (steps < 0)
    steps = np.where(not_reached, np.inf, steps)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, steps.size, size=(num_resamples, subset_size))
    best_of_resample = steps[picks].min(axis=1)
    low, median, high = np.quantile(best_of_resample, [quantiles[0], 0.5, quantiles[1]], method='inverted_cdf')
    return float(low), float(median), float(high)


def _model_log_steps(batch_sizes: np.ndarray, log_s_min: float, log_b_crit: float) -> np.ndarray:
    return log_s_min + np.log1p(np.exp(log_b_crit) / batch_sizes)


def fit_steps_vs_batch(batch_sizes: Sequence[float], steps: Sequence[float]) -> Fit:
    """Fits S(B) = S_min (1 + B_crit / B) (McCandlish et al. 2018) to (points,) batch sizes and steps.

    The residuals are log S - log model, so every point weighs by its relative error, and the
    parameters are fitted as logs, which keeps both positive. One-sigma uncertainties come from
    the Gauss-Newton covariance s^2 (J^T J)^-1, with s^2 the residual variance (points - 2 degrees
    of freedom), carried to S_min and B_crit by the delta method (std x = x std log x); they are
    inf where the covariance is singular (e.g. B_crit far outside the batch sizes measured).
    Needs >= 3 points with positive, finite values; raises ValueError otherwise.
    """
    batch_sizes = np.asarray(batch_sizes, dtype=np.float64).reshape(-1)
    steps = np.asarray(steps, dtype=np.float64).reshape(-1)
    if batch_sizes.shape != steps.shape:
        raise ValueError(f'{batch_sizes.size} batch sizes but {steps.size} steps')
    if steps.size < 3:
        raise ValueError(f'fitting S_min and B_crit needs >= 3 points, got {steps.size}')
    if not (np.all(np.isfinite(batch_sizes)) and np.all(batch_sizes > 0)
            and np.all(np.isfinite(steps)) and np.all(steps > 0)):
        raise ValueError('batch sizes and steps must be positive and finite (drop unreached cells first)')
    if np.unique(batch_sizes).size < 2:
        raise ValueError('fitting S_min and B_crit needs at least two different batch sizes')
    log_steps = np.log(steps)

    # Start from the best B_crit on a coarse grid, where S_min has a closed form (mean log offset),
    # so the local optimizer begins in the right valley whatever the scale of the data.
    candidate_log_b = np.linspace(np.log(batch_sizes.min()) - 5, np.log(batch_sizes.max()) + 5, 201)
    shapes = np.log1p(np.exp(candidate_log_b)[:, None] / batch_sizes[None, :])  # (candidates, points)
    candidate_log_s = (log_steps[None, :] - shapes).mean(axis=1)
    losses = ((candidate_log_s[:, None] + shapes - log_steps[None, :]) ** 2).sum(axis=1)
    start = np.array([candidate_log_s[losses.argmin()], candidate_log_b[losses.argmin()]])

    def residuals(theta: np.ndarray) -> np.ndarray:
        return _model_log_steps(batch_sizes, theta[0], theta[1]) - log_steps

    def jacobian(theta: np.ndarray) -> np.ndarray:
        b_crit = np.exp(theta[1])
        return np.stack([np.ones_like(batch_sizes), b_crit / (batch_sizes + b_crit)], axis=1)

    result = optimize.least_squares(residuals, start, jac=jacobian, method='lm', xtol=1e-12, ftol=1e-12)
    log_s_min, log_b_crit = result.x
    degrees_of_freedom = steps.size - 2
    residual_variance = float(np.sum(result.fun ** 2)) / degrees_of_freedom
    normal_matrix = result.jac.T @ result.jac
    if np.linalg.cond(normal_matrix) > 1e12:
        log_stds = np.array([np.inf, np.inf])
    else:
        log_stds = np.sqrt(np.diag(np.linalg.inv(normal_matrix)) * residual_variance)
    s_min, b_crit = math.exp(log_s_min), math.exp(log_b_crit)
    return Fit(s_min=s_min, b_crit=b_crit, s_min_std=float(s_min * log_stds[0]),
               b_crit_std=float(b_crit * log_stds[1]))


# A fit counts as finding B_crit when it explains the points better than S(B)'s limits by more than
# this relative loss: the optimizer walking towards a limit stops within about this of it.
LIMIT_TOLERANCE = 1e-6


def b_crit_limit(batch_sizes: Sequence[float], steps: Sequence[float], fit: Fit) -> str | None:
    """Where `fit` (of these points) has no finite B_crit: 'above' when S = c / B (B_crit -> inf:
    perfect scaling at every batch size) fits the points as well as it does, 'below' when a constant
    S (B_crit -> 0) does; its B_crit is then only a bound beyond the batch sizes measured, and its
    value and S_min mean nothing. None when the fit finds B_crit."""
    batch_sizes = np.asarray(batch_sizes, dtype=np.float64)
    log_b, log_s = np.log(batch_sizes), np.log(np.asarray(steps, dtype=np.float64))
    if not (0 < fit.s_min < math.inf and 0 < fit.b_crit < math.inf):  # over- or underflowed towards a limit
        return 'above' if fit.b_crit >= batch_sizes.max() else 'below'
    fitted = float(np.sum((_model_log_steps(batch_sizes, math.log(fit.s_min), math.log(fit.b_crit)) - log_s) ** 2))
    limits = (('above', log_s + log_b), ('below', log_s))  # log c = log S + log B, or log S_min = log S, per point
    for name, constant in limits:
        loss = float(np.sum((constant - constant.mean()) ** 2))
        if loss - fitted <= LIMIT_TOLERANCE * loss + 1e-12:
            return name
    return None


def perfect_scaling_end(batch_sizes: Sequence[float], steps: Sequence[float | None],
                        tolerance: float = 0.25) -> int | None:
    """The largest batch size up to which the curve scales perfectly, within `tolerance`; None if nothing reached.

    Points are sorted by batch size. B0 is the smallest batch size that reached the goal and
    steps0 its steps; the reference is steps0 * B0 / B. Walking up from B0, a point stays in the
    perfect-scaling regime while steps / reference - 1 <= tolerance (one-sided: faster than the
    reference is fine). The first point that fails, including a larger batch size that did not
    reach the goal (None, nan, inf or <= 0), ends the walk; the answer is the last batch size
    before it (B0 itself if the next point already fails). Unreached points below B0 are ignored.
    """
    batch_sizes = np.asarray(batch_sizes, dtype=np.float64).reshape(-1)
    steps = np.array([np.nan if value is None else value for value in steps], dtype=np.float64)
    if batch_sizes.shape != steps.shape:
        raise ValueError(f'{batch_sizes.size} batch sizes but {steps.size} steps')
    order = np.argsort(batch_sizes, kind='stable')
    batch_sizes, steps = batch_sizes[order], steps[order]
    reached = np.isfinite(steps) & (steps > 0)
    if not reached.any():
        return None
    first = int(np.argmax(reached))
    reference = steps[first] * batch_sizes[first] / batch_sizes
    within = reached & (steps / reference - 1.0 <= tolerance)
    end = first
    for index in range(first + 1, batch_sizes.size):
        if not within[index]:
            break
        end = index
    return int(batch_sizes[end])


def edge_flags(study: Study, tolerance: float = 0.05) -> dict[CellKey, list[str]]:
    """Per cell, the searched metaparameters whose value in the best trial is within `tolerance` of the ends
    of the study's own range (config.json's search_space; the reference's space if it has none)."""
    names = list(study.config.get('search_names', []))
    space = study_space(study.config)
    unknown = [name for name in names if name not in space]
    if unknown:
        raise ValueError(f'config search names {unknown} are not in its search space ({", ".join(space)})')
    flags = {}
    for key, cell in sorted(study.cells.items()):
        best = best_trial(cell)
        flags[key] = [] if best is None else [
            name for name in names if is_on_edge(best[name], space[name], tolerance)]
    return flags


def finite_or_none(value: float) -> float | None:
    """JSON has no inf or nan: both become null."""
    return float(value) if math.isfinite(value) else None


def _trial_steps_array(cell: Cell) -> np.ndarray:
    """(trials,) steps-to-result of a cell, nan where the trial did not reach the goal."""
    return np.array([np.nan if (steps := _reached_steps(trial)) is None else steps for trial in cell.trials],
                    dtype=np.float64)


def _curve(study: Study, sparsity: float, flags: Mapping[CellKey, list[str]],
           num_resamples: int, tolerance: float) -> dict:
    batch_sizes = sorted(b for s, b in study.cells if s == sparsity)
    cells = [study.cells[(sparsity, b)] for b in batch_sizes]
    steps = [cell_steps(cell) for cell in cells]
    bands, band_is_upper_bound = [], []
    for cell, cell_best in zip(cells, steps):
        trial_steps = _trial_steps_array(cell)
        if trial_steps.size:
            bands.append(bootstrap_band(trial_steps, num_resamples=num_resamples))
        else:
            value = math.inf if cell_best is None else float(cell_best)
            bands.append((value, value, value))
        # 'running' trials (first-hit mode) count as unreached although they might reach later.
        band_is_upper_bound.append(any(trial.get('status') == 'running' for trial in cell.trials))
    reached = [(b, s) for b, s in zip(batch_sizes, steps) if s is not None]
    fit, fit_reason, lower_bound, upper_bound = None, None, None, None
    if len(reached) < 3:
        fit_reason = f'needs >= 3 batch sizes that reached the goal, has {len(reached)}'
    else:
        points = [b for b, _ in reached], [s for _, s in reached]
        try:
            found = fit_steps_vs_batch(*points)
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as error:
            fit_reason = f'fit failed: {error}'
        else:
            limit = b_crit_limit(*points, found)
            if limit == 'above':
                lower_bound, fit_reason = max(points[0]), 'the steps fall as 1/B over every reached batch size'
            elif limit == 'below':
                upper_bound, fit_reason = min(points[0]), 'the steps do not fall over the reached batch sizes'
            else:
                fit = {name: finite_or_none(value) for name, value in found._asdict().items()}
    best = [best_trial(cell) for cell in cells]
    return {
        'sparsity': sparsity,
        'batch_sizes': batch_sizes,
        'steps': steps,
        'best_trial': [None if trial is None else int(trial['trial']) for trial in best],
        'bootstrap_low': [finite_or_none(band[0]) for band in bands],
        'bootstrap_median': [finite_or_none(band[1]) for band in bands],
        'bootstrap_high': [finite_or_none(band[2]) for band in bands],
        'bootstrap_is_upper_bound': band_is_upper_bound,
        'fit': fit,
        'fit_reason': fit_reason,
        # Where S(B) has no finite best fit (b_crit_limit): B_crit > the largest reached batch size, or <
        # the smallest.
        'b_crit_lower_bound': lower_bound,
        'b_crit_upper_bound': upper_bound,
        'perfect_scaling_end': perfect_scaling_end(batch_sizes, steps, tolerance),
        'edge_flags': [flags[(sparsity, b)] for b in batch_sizes],
    }


def analyze(study: Study, num_resamples: int = 1000, scaling_tolerance: float = 0.25,
            edge_tolerance: float = 0.05) -> dict:
    """A JSON-able summary of the study: one curve per sparsity over its finished batch sizes.

    Per curve the lists are aligned with 'batch_sizes'. null in 'steps' means not reached; null
    in a bootstrap list means that quantile is infinite (too few resamples reached, see
    bootstrap_band). 'bootstrap_is_upper_bound' marks cells with 'running' trials (first-hit
    mode): those count as unreached, so the band is an upper bound, exact only at quantiles
    where a resample contains a reached trial.
    """
    flags = edge_flags(study, edge_tolerance)
    sparsities = sorted({s for s, _ in study.cells})
    config = study.config
    curves = [_curve(study, s, flags, num_resamples, scaling_tolerance) for s in sparsities]
    result = {
        'goal_error': config.get('goal_error'),
        'dataset': config.get('dataset'),
        'model': config.get('model'),
        'optimizer': config.get('optimizer'),
        'search_names': list(config.get('search_names', [])),
        # The ranges the edge flags are measured against (edge_flags has checked that they exist).
        'search_space': space_as_dict({name: study_space(config)[name] for name in config.get('search_names', [])}),
        'settings': {'num_resamples': num_resamples, 'quantiles': [0.1, 0.9],
                     'scaling_tolerance': scaling_tolerance, 'edge_tolerance': edge_tolerance},
        'curves': curves,
    }
    measured = smoothness_by_sparsity(study, curves)
    if measured:
        result['smoothness'] = measured
    return result


def _series_values(trial: Mapping[str, Any] | None, series: str, column: str) -> list[float]:
    """The finite values of one column of a trial's stored series."""
    if trial is None or series not in trial:
        return []
    return [float(value) for value in trial[series][column] if value is not None and math.isfinite(value)]


def _stats(values: Sequence[float], how: str) -> float | None:
    if not values:
        return None
    return float({'mean': np.mean, 'max': np.max, 'median': np.median}[how](values))


def b_simple_from_pairs(pairs: Sequence[tuple[float | None, float | None]]) -> float | None:
    """tr(Sigma) / |G|^2 from (|G|^2, tr Sigma) estimates, numerator and denominator averaged
    separately first (REFERENCE.md); pairs with a missing or non-finite value are skipped. None
    without pairs or when the mean |G|^2 <= 0 (the noise swamps the signal)."""
    kept = np.array([pair for pair in pairs if None not in pair and np.isfinite(pair).all()],
                    dtype=np.float64).reshape(-1, 2)
    if not len(kept) or kept[:, 0].mean() <= 0:
        return None
    return float(kept[:, 1].mean() / kept[:, 0].mean())


def _b_simple(trials: Sequence[Mapping[str, Any] | None], first_step_only: bool = False) -> float | None:
    """b_simple_from_pairs over the trials' stored noise-scale rows (only step 0 if asked)."""
    pairs = []
    for trial in trials:
        if trial is None or 'noise_scale' not in trial:
            continue
        series = trial['noise_scale']
        pairs += [(norm, trace) for step, norm, trace in
                  zip(series['step'], series['gradient_norm_squared'], series['trace_covariance'])
                  if not first_step_only or step == 0]
    return b_simple_from_pairs(pairs)


def smoothness_by_sparsity(study: Study, curves: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per sparsity: L along training and B_simple, next to the fitted critical batch size.

    L: mean and max over the measurements of each cell's best trial, and of every reached trial,
    pooled over the sparsity's batch sizes. B_simple: over all trials at step 0 (before any
    training: a prediction) and over the best trials' training, each as mean tr(Sigma) / mean
    |G|^2. Empty if the study measured neither.
    """
    rows = []
    for curve in curves:
        sparsity = curve['sparsity']
        cells = [study.cells[(sparsity, b)] for b in curve['batch_sizes']]
        if not any('lipschitz' in trial or 'noise_scale' in trial for cell in cells for trial in cell.trials):
            continue
        best = [best_trial(cell) for cell in cells]
        reached = [trial for cell in cells for trial in cell.trials if _reached_steps(trial) is not None]
        best_l = [v for trial in best for v in _series_values(trial, 'lipschitz', 'value')]
        reached_l = [v for trial in reached for v in _series_values(trial, 'lipschitz', 'value')]
        initial = _b_simple([trial for cell in cells for trial in cell.trials], first_step_only=True)
        along = _b_simple(best)
        fit = curve['fit'] or {}
        rows.append({
            'sparsity': sparsity,
            'lipschitz_best_mean': _stats(best_l, 'mean'), 'lipschitz_best_max': _stats(best_l, 'max'),
            'lipschitz_reached_mean': _stats(reached_l, 'mean'), 'lipschitz_reached_max': _stats(reached_l, 'max'),
            'lipschitz_measurements': len(reached_l),
            'b_simple_initial': initial, 'b_simple_training': along,
            'b_crit': fit.get('b_crit'), 'b_crit_std': fit.get('b_crit_std'),
            'b_crit_lower_bound': curve.get('b_crit_lower_bound'),
            'b_crit_upper_bound': curve.get('b_crit_upper_bound'),
        })
    return rows


def describe_smoothness(result: Mapping[str, Any]) -> str:
    """A table of analyze()['smoothness']: L and B_simple per sparsity against the fitted B_crit."""
    rows = result.get('smoothness')
    if not rows:
        return ''
    show = lambda value, spec: '-' if value is None else format(value, spec)
    lines = [f'{"sparsity":>8}  {"L mean":>8}  {"L max":>8}  {"B_simple@0":>10}  {"B_simple":>9}  {"B_crit":>7}']
    for row in rows:
        b_crit = show(row['b_crit'], '.0f')
        if row.get('b_crit_lower_bound'):  # no finite fit (b_crit_limit)
            b_crit = f'>{row["b_crit_lower_bound"]}'
        elif row.get('b_crit_upper_bound'):
            b_crit = f'<{row["b_crit_upper_bound"]}'
        lines.append(f'{row["sparsity"]:>8g}  {show(row["lipschitz_best_mean"], ".3g"):>8}  '
                     f'{show(row["lipschitz_best_max"], ".3g"):>8}  {show(row["b_simple_initial"], ".3g"):>10}  '
                     f'{show(row["b_simple_training"], ".3g"):>9}  {b_crit:>7}')
    return ('smoothness (L of the best trial over training; B_simple at step 0 and along training; '
            'fitted B_crit):\n' + '\n'.join(lines))


def write_analysis(workdir: str) -> dict:
    """Analyses the store at `workdir`, writes workdir/analysis.json atomically and returns the analysis."""
    result = analyze(load_study(workdir))
    atomic_write_json(os.path.join(workdir, 'analysis.json'), result)
    return result


def describe_curves(result: Mapping[str, Any]) -> str:
    """One line per sparsity: the S(B) fit and where perfect scaling ends."""
    lines = []
    for curve in result['curves']:
        fit = curve['fit']
        if fit:
            fitted = (f'S_min {fit["s_min"]:.0f} steps, B_crit {fit["b_crit"]:.0f}'
                      + ('' if fit['b_crit_std'] is None else f' +- {fit["b_crit_std"]:.0f}'))
        elif curve.get('b_crit_lower_bound') or curve.get('b_crit_upper_bound'):
            bound = (f'> {curve["b_crit_lower_bound"]}' if curve.get('b_crit_lower_bound')
                     else f'< {curve["b_crit_upper_bound"]}')
            fitted = f'B_crit {bound} ({curve["fit_reason"]}: S(B) has no finite best fit)'
        else:
            fitted = f'no S(B) fit ({curve["fit_reason"]})'
        end = curve['perfect_scaling_end']
        lines.append(f'sparsity {curve["sparsity"]:g}: {fitted}; perfect scaling up to batch '
                     f'{end if end is not None else "-"}')
    return '\n'.join(lines)
