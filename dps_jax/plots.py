"""Figures of a results store: steps-to-result vs batch size (log2-log2), per-cell trial scatters and,
when the study measured them, L over training and B_simple against the fitted B_crit.

Figures are built as matplotlib.figure.Figure objects rendered by the Agg canvas, so nothing
touches pyplot's global state and no interactive backend is needed.

    python -m dps_jax.plots WORKDIR    # redraws WORKDIR/figures from WORKDIR's results store
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dps_jax import analysis, store
from dps_jax.analysis import Cell, Study

FORMATS = ('png', 'pdf')


def _new_figure(width: float = 6.4, height: float = 4.8) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path_stem: str, formats: Sequence[str]) -> list[str]:
    """Writes `figure` to path_stem.<format> for each format, atomically (a kill, or another job of
    the same study drawing, never leaves half a figure); returns the paths."""
    paths = []
    for extension in formats:
        path = f'{path_stem}.{extension}'
        store.atomic_write(path, lambda file: figure.savefig(file, format=extension, dpi=150, bbox_inches='tight'),
                           binary=True)
        paths.append(path)
    return paths


def _short_name(value: Any) -> str:
    """A config's dataset or model as a title shows it: 'arrays:stripes#d6af..' -> 'stripes',
    'python:__main__.TinyNet#d14f..' -> 'TinyNet', 'examples/net.py:Net' -> 'Net'."""
    text = str(value)
    if text.startswith(('arrays:', 'python:')):
        return text.split(':', 1)[1].split('#')[0].rsplit('.', 1)[-1]
    if not text.startswith('tfds:') and ':' in text:
        return text.rsplit(':', 1)[1]
    return text


def _study_title(config: Mapping[str, Any]) -> str:
    parts = [_short_name(config[key]) for key in ('dataset', 'model', 'optimizer') if config.get(key) is not None]
    goal = config.get('goal_error')
    title = ' / '.join(parts) if parts else 'study'
    return title if goal is None else f'{title} (goal error {goal:g})'


def _as_float_array(values: Sequence[float | None]) -> np.ndarray:
    """None (JSON null: not reached or infinite) becomes nan so matplotlib leaves a gap."""
    return np.array([np.nan if value is None else value for value in values], dtype=np.float64)


def plot_steps_vs_batch(study: Study, analysis_result: Mapping[str, Any] | None, path_stem: str,
                        normalized: bool = False, formats: Sequence[str] = FORMATS) -> list[str]:
    """Steps-to-result vs batch size on log2-log2 axes, one line per sparsity; returns the paths written.

    Each curve has its bootstrap band (where both ends are finite) and a thin dashed
    perfect-scaling line steps0 * B0 / B from its smallest reached batch size B0. With
    `normalized`, every curve and its band are divided by steps0, so curves of different
    sparsities start at 1 and their departures from perfect scaling can be compared.
    """
    if analysis_result is None:
        analysis_result = analysis.analyze(study)
    figure = _new_figure()
    axes = figure.add_subplot()
    drew_anything = False
    for index, curve in enumerate(analysis_result['curves']):
        batch_sizes = np.asarray(curve['batch_sizes'], dtype=np.float64)
        steps = _as_float_array(curve['steps'])
        reached = np.isfinite(steps)
        if not reached.any():
            continue
        first = int(np.argmax(reached))
        scale = steps[first] if normalized else 1.0
        # One colour per sparsity, shared by its line, band and reference.
        colour = f'C{index % 10}'
        label = f'sparsity {curve["sparsity"]:g}'
        axes.plot(batch_sizes[reached], steps[reached] / scale, marker='o', color=colour, label=label)
        low = _as_float_array(curve['bootstrap_low']) / scale
        high = _as_float_array(curve['bootstrap_high']) / scale
        band = np.isfinite(low) & np.isfinite(high)
        if band.any():
            axes.fill_between(batch_sizes, np.where(band, low, np.nan), np.where(band, high, np.nan),
                              where=band, color=colour, alpha=0.2, linewidth=0)
        reference_batches = batch_sizes[first:]
        reference = steps[first] * batch_sizes[first] / reference_batches / scale
        # Normalized references coincide for curves sharing B0, so they are drawn in one neutral grey.
        axes.plot(reference_batches, reference, linestyle='--', linewidth=0.8,
                  color='0.35' if normalized else colour)
        drew_anything = True
    axes.set_xscale('log', base=2)
    axes.set_yscale('log', base=2)
    axes.set_xlabel('batch size')
    axes.set_ylabel('steps to result / steps at its smallest reached batch size' if normalized
                    else 'steps to result')
    axes.set_title(_study_title(study.config))
    axes.grid(True, which='major', alpha=0.3)
    if drew_anything:
        axes.legend(title='dashed: perfect scaling', fontsize='small', title_fontsize='small')
    else:
        axes.text(0.5, 0.5, 'no cell reached the goal', transform=axes.transAxes, ha='center')
    return _save(figure, path_stem, formats)


def _searched(config: Mapping[str, Any]) -> list[str]:
    return list(config.get('search_names', []))


def plot_trial_scatter(cell: Cell, config: Mapping[str, Any], path_stem: str,
                       formats: Sequence[str] = FORMATS) -> list[str]:
    """One cell's trials in metaparameter space, marked by outcome; returns the paths written.

    With momentum searched: learning rate vs 1 - momentum (both log). Otherwise learning rate vs
    steps-to-result (both log), with unreached and diverged trials drawn on the top edge.
    Filled circle: reached; hollow circle: exhausted or still running; x: diverged; star: best.
    """
    trials = cell.trials
    learning_rate = np.array([trial['learning_rate'] for trial in trials], dtype=np.float64)
    status = np.array([trial.get('status') for trial in trials], dtype=object)
    steps = np.array([np.nan if trial.get('steps_to_result') is None or trial.get('status') != 'reached'
                      else trial['steps_to_result'] for trial in trials], dtype=np.float64)
    by_momentum = 'momentum' in _searched(config)
    figure = _new_figure()
    axes = figure.add_subplot()
    if by_momentum:
        y = 1.0 - np.array([trial['momentum'] for trial in trials], dtype=np.float64)
        axes.set_ylabel('1 - momentum')
        top = None
    else:
        # Unreached trials have no steps; put them on a line above every reached one.
        reached_steps = steps[np.isfinite(steps)]
        ceiling = reached_steps.max() if reached_steps.size else max(
            [trial.get('steps') or 1 for trial in trials] + [1])
        top = 2.0 * float(ceiling)
        y = np.where(np.isfinite(steps), steps, top)
        axes.set_ylabel('steps to result (unreached: top edge)')
    groups = [
        ('reached', status == 'reached', dict(marker='o', color='C0')),
        ('not reached (exhausted / running)', (status == 'exhausted') | (status == 'running'),
         dict(marker='o', facecolors='none', edgecolors='C1')),
        ('diverged', status == 'diverged', dict(marker='x', color='C3')),
    ]
    for label, mask, style in groups:
        if mask.any():
            axes.scatter(learning_rate[mask], y[mask], label=f'{label} ({int(mask.sum())})', clip_on=False, **style)
    best = analysis.best_trial(cell)
    if best is not None:
        index = [trial['trial'] for trial in trials].index(best['trial'])
        label = f'best: trial {best["trial"]}, {best["steps_to_result"]} steps'
        axes.scatter(learning_rate[index:index + 1], y[index:index + 1], marker='*', s=250, color='gold',
                     edgecolors='black', zorder=3, label=label)
    if trials:
        axes.set_xscale('log')
        axes.set_yscale('log')
    if top is not None and trials:
        low = np.nanmin(y)
        axes.set_ylim(low / 1.5, top)
    axes.set_xlabel('learning rate')
    summary = cell.summary
    axes.set_title(f'sparsity {float(summary["sparsity"]):g}, batch size {int(summary["batch_size"])}: '
                   f'{len(trials)} trials')
    axes.grid(True, which='major', alpha=0.3)
    if trials:
        axes.legend(fontsize='small')
    return _save(figure, path_stem, formats)


def _shown_trial(cell: Cell, exact_errors: bool = True) -> tuple[dict | None, str]:
    """The trial a cell's smoothness line follows: its best trial, else the lowest validation error;
    none when no trial reached and the errors are lower bounds (exact_errors False: config.exact_val_errors),
    which would make the lowest one an arbitrary pick."""
    best = analysis.best_trial(cell)
    if best is not None:
        return best, f'best trial {best["trial"]}'
    if not exact_errors:
        return None, ''
    measured = [trial for trial in cell.trials if trial.get('best_val_error') is not None]
    if not measured:
        return None, ''
    lowest = min(measured, key=lambda trial: trial['best_val_error'])
    return lowest, f'trial {lowest["trial"]}, not reached'


def plot_lipschitz(study: Study, path_stem: str, formats: Sequence[str] = FORMATS) -> list[str]:
    """L over training steps, one line per sparsity (each cell's best trial), a panel per batch size."""
    batch_sizes = sorted({b for (_, b), cell in study.cells.items() if any('lipschitz' in t for t in cell.trials)})
    columns = min(len(batch_sizes), 3)
    rows = -(-len(batch_sizes) // columns)
    figure = _new_figure(5.0 * columns, 3.8 * rows)
    sparsities = sorted({s for s, _ in study.cells})
    exact_errors = study.config.get('exact_val_errors', True) is not False
    left_out = 0  # cells no trial reached, not drawn because their errors are lower bounds
    for panel, batch_size in enumerate(batch_sizes):
        axes = figure.add_subplot(rows, columns, panel + 1)
        for sparsity in sparsities:
            cell = study.cells.get((sparsity, batch_size))
            if cell is None or not any('lipschitz' in t for t in cell.trials):
                continue
            trial, description = _shown_trial(cell, exact_errors)
            if trial is None or 'lipschitz' not in trial:
                left_out += not exact_errors and trial is None
                continue
            steps = np.asarray(trial['lipschitz']['step'], dtype=np.float64)
            values = _as_float_array(trial['lipschitz']['value'])
            colour = f'C{sparsities.index(sparsity) % 10}'
            axes.plot(steps, values, marker='o', markersize=3, color=colour,
                      label=f'sparsity {sparsity:g} ({description})')
        axes.set_yscale('log')
        axes.set_xlabel('training step')
        axes.set_ylabel('Lipschitz constant L of the gradient')
        axes.set_title(f'batch size {batch_size}')
        axes.grid(True, which='major', alpha=0.3)
        axes.legend(fontsize='small')
    note = (f'\n{left_out} cell(s) no trial reached not drawn: their errors are lower bounds '
            f'(exact_val_errors False)' if left_out else '')
    figure.suptitle(_study_title(study.config) + note)
    return _save(figure, path_stem, formats)


def plot_noise_scale(analysis_result: Mapping[str, Any], config: Mapping[str, Any], path_stem: str,
                     formats: Sequence[str] = FORMATS) -> list[str]:
    """B_simple (at step 0 and along training) against the fitted critical batch size, per sparsity."""
    rows = analysis_result.get('smoothness', [])
    sparsity = np.array([row['sparsity'] for row in rows], dtype=np.float64)
    figure = _new_figure()
    axes = figure.add_subplot()
    axes.plot(sparsity, _as_float_array([row['b_simple_initial'] for row in rows]), marker='o',
              label='B_simple at step 0 (all trials)')
    axes.plot(sparsity, _as_float_array([row['b_simple_training'] for row in rows]), marker='s',
              label='B_simple along training (best trials)')
    b_crit = _as_float_array([row['b_crit'] for row in rows])
    # A sparsity whose steps-vs-batch curve has no finite best fit shows the bound it gives instead.
    bounds = [(key, marker, text) for key, marker, text in (
        ('b_crit_lower_bound', '^', 'B_crit above (no finite fit: perfect scaling throughout)'),
        ('b_crit_upper_bound', 'v', 'B_crit below (no finite fit: steps flat)'))
        if any(row.get(key) for row in rows)]
    if np.isfinite(b_crit).any():
        error = _as_float_array([row['b_crit_std'] for row in rows])
        axes.errorbar(sparsity, b_crit, yerr=np.where(np.isfinite(error), error, 0.0), marker='D', capsize=3,
                      label='fitted B_crit of S(B) = S_min (1 + B_crit / B)')
    for key, marker, text in bounds:
        axes.plot(sparsity, _as_float_array([row.get(key) for row in rows]), linestyle='none', marker=marker,
                  markersize=9, color='C3', label=text)
    if not np.isfinite(b_crit).any() and not bounds:
        axes.text(0.5, 0.05, 'no B_crit fit (needs >= 3 reached batch sizes per sparsity)',
                  transform=axes.transAxes, ha='center', fontsize='small')
    axes.set_yscale('log')
    axes.set_xlabel('sparsity')
    axes.set_ylabel('batch size')
    axes.set_title(_study_title(config))
    axes.grid(True, which='major', alpha=0.3)
    axes.legend(fontsize='small')
    return _save(figure, path_stem, formats)


def plot_all(workdir: str, formats: Sequence[str] = FORMATS) -> list[str]:
    """Draws every figure of the store into workdir/figures (scatters in figures/trials/); returns the paths."""
    study = analysis.load_study(workdir)
    analysis_result = analysis.analyze(study)
    figures = os.path.join(workdir, 'figures')
    paths = plot_steps_vs_batch(study, analysis_result, os.path.join(figures, 'steps_vs_batch'), formats=formats)
    paths += plot_steps_vs_batch(study, analysis_result, os.path.join(figures, 'steps_vs_batch_normalized'),
                                 normalized=True, formats=formats)
    if any('lipschitz' in trial for cell in study.cells.values() for trial in cell.trials):
        paths += plot_lipschitz(study, os.path.join(figures, 'lipschitz'), formats=formats)
    if any('noise_scale' in trial for cell in study.cells.values() for trial in cell.trials):
        paths += plot_noise_scale(analysis_result, study.config, os.path.join(figures, 'noise_scale'), formats=formats)
    for _, cell in sorted(study.cells.items()):
        paths += plot_trial_scatter(cell, study.config, os.path.join(figures, 'trials', cell.name), formats=formats)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: redraws the figures of one results store; exit code 2 with one line on a bad store."""
    parser = argparse.ArgumentParser(prog='python -m dps_jax.plots', description=__doc__.splitlines()[0])
    parser.add_argument('workdir', help='results store (holds config.json and cells/)')
    arguments = parser.parse_args(argv)
    try:
        paths = plot_all(arguments.workdir)
    except (ValueError, OSError) as error:
        print(f'dps_jax.plots: error: {error}', file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
