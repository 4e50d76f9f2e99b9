"""A study: every (sparsity, batch size) cell of a grid run with the engine, into a results store.

workdir/
  config.json                          the resolved config
  provenance.json                      one record per run: versions, git commit, backend, devices, numerics
  plan.json                            cells, trials with their metaparameters, budget
  cells/<sparsity>_<batch>/trials.jsonl  one line per trial
  cells/<sparsity>_<batch>/summary.json  steps-to-result, best trial, counts (written last: the
                                         cell is finished iff it exists)
  summary.csv                          one row per finished cell
Every file is written atomically. Re-running the same command skips finished cells and redoes
an unfinished one; a workdir made with a different config is refused unless config.overwrite.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import shlex
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dps_jax import config as config_lib
from dps_jax import (analysis, checkpoints, compilation_cache, data, engine, masks, optim, parallel, plots,
                     provenance, search, smoothness, store, trial, workload)
from dps_jax import network as network_lib

# Neither wall time nor trial-steps computed (which depend on grouping and so on the machine):
# summary.csv is a function of the config and seeds only, so a resumed study reproduces it byte
# for byte. summary.json keeps both.
CSV_FIELDS = ('sparsity', 'batch_size', 'steps_to_result', 'best_trial', 'reached', 'diverged',
              'exhausted', 'running')


cell_name = analysis.cell_name  # the cell's folder name, e.g. '0.9_64', '0_1024'


def grid_cells(config: ml_collections.ConfigDict) -> list[tuple[float, int]]:
    """The (sparsity, batch size) cells to run, in order; config.cells selects a subset."""
    cells = [(float(s), int(b)) for s in config.sparsities for b in config.batch_sizes]
    names = [cell_name(*cell) for cell in cells]
    if len(set(names)) != len(names):
        raise config_lib.ConfigError(f'config.sparsities={tuple(config.sparsities)!r} has values that print alike '
                                     f'(cell folders {sorted(set(n for n in names if names.count(n) > 1))})')
    if not config.cells:
        return cells
    by_name = {cell_name(*cell): cell for cell in cells}
    chosen = [name.strip() for name in config.cells.split(',') if name.strip()]
    if len(set(chosen)) != len(chosen):
        raise config_lib.ConfigError(f'config.cells={config.cells!r} names a cell twice')
    unknown = [name for name in chosen if name not in by_name]
    if unknown:
        raise config_lib.ConfigError(f'config.cells names {", ".join(unknown)}, not in the grid; '
                                     f'accepted: {", ".join(by_name)}')
    return [by_name[name] for name in chosen]


def trial_metaparameters(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """Every optimizer hyperparameter per trial (num_trials,): Sobol points in config.search_space for
    the searched names, the config's value for the others."""
    points = search.search_points(list(config.search_names), config.num_trials, search.study_space(config))
    values = {}
    for name in optim.HYPERPARAMETERS:
        values[name] = np.asarray(points[name]) if name in points else np.full(config.num_trials, config[name])
    values['decay_steps'] = values['decay_steps'].astype(np.int64)
    return values


def make_plan(config: ml_collections.ConfigDict) -> dict:
    """What a study will run, as JSON: cells, trials and their metaparameters, budget. The whole grid,
    whatever config.cells, since the jobs of a split study each write it."""
    values = trial_metaparameters(config)
    whole = ml_collections.ConfigDict(config.to_dict())
    whole.cells = ''
    cells = grid_cells(whole)
    space = search.study_space(config)
    return {
        'cells': [{'name': cell_name(*cell), 'sparsity': cell[0], 'batch_size': cell[1]} for cell in cells],
        'trials': [{'trial': i, 'seed': i, **{name: values[name][i].item() for name in values}}
                   for i in range(config.num_trials)],
        'searched': list(config.search_names),
        'search_space': search.space_as_dict({name: space[name] for name in config.search_names}),
        'budget': {'max_steps_per_trial': config.max_steps, 'check_every': config.check_every,
                   'max_trial_steps': len(cells) * config.num_trials * config.max_steps,
                   'until': config.until},
    }


def _comparable(config_dict: dict) -> dict:
    """The fields of a config (as a dict) that make a study what it is, as JSON would give them back."""
    normalized = json.loads(json.dumps(config_dict))
    # What the checks convolve by ('' and 'auto' resolved), so that two names for the same checks are one study.
    normalized['eval_convolution'] = workload.eval_convolution(normalized)
    return {key: value for key, value in normalized.items() if key not in config_lib.RUN_FIELDS}


def _with_defaults(config_dict: dict, model_digest: str = '') -> dict:
    """A stored config as this version compares it: a field it lacks was added to dps_jax later, and
    the study ran as that field's config.VALUES_BEFORE_THE_FIELD value says, else as its default; one
    without a model digest (written by plan_only, or before the field existed) takes `model_digest`,
    the study's."""
    merged = {**config_lib.base_study_config().to_dict(), **config_lib.VALUES_BEFORE_THE_FIELD, **config_dict}
    merged['model_digest'] = merged['model_digest'] or model_digest
    return _comparable(merged)


def _checkpoint_identity(identity: dict, model_digest: str = '') -> dict:
    """A mid-cell checkpoint's identity with its config as this version compares it (_with_defaults)."""
    return {**identity, 'config': _with_defaults(identity['config'], model_digest)} if 'config' in identity else identity


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print,
                    write: bool = True) -> None:
    """Writes config.json, or checks that an existing one is the same study.

    A config.json that cannot be read, or results without one, is refused too: whose results they
    are cannot be checked. With config.overwrite, in either case, the old results (RESULT_NAMES)
    are moved aside to a new replaced-<time>-<suffix>/ so they cannot mix with the new. write=False
    only checks (the other processes of a multi-host run, so that they refuse a workdir together
    with process 0 instead of waiting for it).
    """
    path = os.path.join(workdir, 'config.json')
    digest = config.get('model_digest', '')
    previous, unreadable = _stored_config(workdir)
    if unreadable:
        if not config.overwrite:
            raise config_lib.ConfigError(
                f'{unreadable}, so whether its results belong to this study cannot be checked; restore it, use '
                f'another --workdir, or --config.overwrite=True to move the old results aside')
        if not write:
            return
        log(f'{unreadable}: previous results moved to {_move_results_aside(workdir)}')
    elif previous is not None:
        stored_digest = previous.get('model_digest', '')
        if stored_digest and not digest:  # plan_only, with the model's file not found
            digest = stored_digest
        elif digest and not stored_digest:
            log(f'{path} records no digest of the model code (written by plan_only or by an older dps_jax): '
                f'recording {digest} for {config.model}; cells finished before now are not checked against it')
        previous, current = _with_defaults(previous, digest), _identity(config, digest)
        if previous != current:
            differing = sorted(key for key in set(previous) | set(current) if previous.get(key) != current.get(key))
            changed_code = (f'; the file of config.model={config.model!r} changed since the study began (digest '
                            f'{previous["model_digest"]}, now {digest}): restore it, or, if the change leaves the '
                            f'model as it was, put the new digest in {path};' if 'model_digest' in differing else ';')
            if not config.overwrite:
                raise config_lib.ConfigError(
                    f'{workdir} holds a study made with a different config (fields differ: {", ".join(differing)})'
                    f'{_resume_flags(previous, differing)}{changed_code} use another --workdir, or '
                    f'--config.overwrite=True to reuse it')
            if not write:
                return
            log(f'config differs ({", ".join(differing)}): previous results moved to {_move_results_aside(workdir)}')
    if write:
        store.atomic_write_json(path, {**config.to_dict(), 'model_digest': digest})


# What a study writes in its workdir: moved aside together when another study takes the workdir over.
RESULT_NAMES = ('cells', 'checkpoints', 'summary.csv', 'analysis.json', 'figures', 'config.json', 'plan.json',
                provenance.FILE_NAME)


def _identity(config: ml_collections.ConfigDict, model_digest: str) -> dict:
    """What a stored config (_with_defaults) must equal for `config` to be the same study."""
    return {**_comparable(config.to_dict()), 'model_digest': model_digest}


def _lock_file(workdir: str, name: str) -> str:
    """workdir/.locks/<name>.lock: kept apart from the results, so moving them aside moves no lock."""
    return os.path.join(workdir, '.locks', f'{name}.lock')


def workdir_lock(workdir: str) -> str:
    """The lock file of a workdir's shared files (config.json, provenance.json, plan.json, summary.csv,
    analysis.json, figures/, a cell's results): jobs that split a study change them one at a time."""
    return _lock_file(workdir, 'workdir')


@contextlib.contextmanager
def claimed_cell(workdir: str, sparsity: float, batch_size: int) -> Iterator[bool]:
    """True while this process holds the cell, False when another job of the study runs it (a
    split study's jobs may list a cell twice). A multi-host run's processes run every cell together:
    they claim nothing."""
    if jax.process_count() > 1:
        yield True
        return
    with store.locked(_lock_file(workdir, cell_name(sparsity, batch_size)), wait=False) as held:
        yield held


def require_same_study(config: ml_collections.ConfigDict, workdir: str, cell: str) -> None:
    """ConfigError when workdir/config.json no longer holds this study (another run took the workdir
    over with config.overwrite while this one computed `cell`): its results must not join another study's."""
    stored, unreadable = _stored_config(workdir)
    digest = config.get('model_digest', '')
    if unreadable or stored is None or _with_defaults(stored, digest) != _identity(config, digest):
        raise config_lib.ConfigError(
            f'{workdir}/config.json changed while this run computed cell {cell} (another run with '
            f'--config.overwrite=True?): its results are not written there')


def remove_checkpoints_of_finished_cells(workdir: str, cells: Sequence[tuple[float, int]]) -> None:
    """Deletes the mid-cell checkpoints left by a run killed between writing a cell's results and
    deleting them."""
    for cell in cells:
        folder = os.path.join(workdir, 'checkpoints', cell_name(*cell))
        if is_finished(workdir, *cell) and os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)


def _stored_config(workdir: str) -> tuple[dict | None, str | None]:
    """(the config.json of `workdir` as stored, or None when there is none; why it cannot be trusted,
    or None): a config.json that is not a JSON object, or results (cells/, checkpoints/) without one."""
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        if any(os.path.exists(os.path.join(workdir, name)) for name in ('cells', 'checkpoints')):
            return None, f'{workdir} holds results (cells/ or checkpoints/) but no config.json'
        return None, None
    try:
        with open(path) as file:
            stored = json.load(file)
    except (OSError, ValueError) as error:  # a JSONDecodeError is a ValueError
        return None, f'{path} is damaged ({" ".join(str(error).split())})'
    if not isinstance(stored, dict):
        return None, f'{path} is damaged (not a JSON object)'
    return stored, None


def _move_results_aside(workdir: str) -> str:
    """Moves what a study wrote in `workdir` (RESULT_NAMES) to a new workdir/replaced-<time>-<suffix>/;
    returns that folder."""
    aside = tempfile.mkdtemp(prefix=time.strftime('replaced-%Y%m%d-%H%M%S-'), dir=workdir)
    for name in RESULT_NAMES:
        if os.path.exists(os.path.join(workdir, name)):
            os.replace(os.path.join(workdir, name), os.path.join(aside, name))
    return aside


def _resume_flags(previous: dict, differing: list[str]) -> str:
    """'; to resume it as it was made: --config.FIELD=VALUE ...' when every differing config field held
    a plain value (a default that changed since, or a config file that did: e.g. eval_convolution's
    default, or the quickstart's exact_val_errors); else ''."""
    fields = [field for field in differing if field != 'model_digest']
    if not fields or not all(isinstance(previous.get(field), (bool, int, float, str)) for field in fields):
        return ''
    arrays = str(previous.get('dataset', '')).startswith(config_lib.ARRAYS_PREFIX) and 'dataset' in fields
    flags = ' '.join(f'--config.{field}={shlex.quote(str(previous[field]))}' for field in fields
                     if not (arrays and field == 'dataset'))
    if arrays:  # a Dataset given to the Python API cannot be named by a flag: only the same arrays resume it
        return (f'; to resume it as it was made, give run_study the same Dataset ({previous["dataset"]!r})'
                + (f' and the fields {flags}' if flags else ''))
    return f'; to resume it as it was made: {flags}'


def with_model_digest(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config, or a copy with model_digest set to the code of its import-path model
    (network.import_path_digest). Refuses a config that names another."""
    digest = network_lib.import_path_digest(config.model)
    given = config.get('model_digest', '')
    if given and given != digest:
        raise config_lib.ConfigError(
            f'config.model_digest={given!r}, but config.model={config.model!r} '
            + (f'now digests to {digest!r}: its code changed' if digest else 'is not an import path: leave it \'\''))
    if given == digest:
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    config.model_digest = digest
    return config


def planned_config(config: ml_collections.ConfigDict, model: Any = None) -> ml_collections.ConfigDict:
    """config.plan_only's config as a run would record it, without loading the model or the data: the
    checks' convolution resolved ('auto', ''), and the digest of an import-path model whose file is
    found (a model_digest pin it no longer matches is refused, as a run refuses it). model: the
    Module given to dps_jax.run_study, if any."""
    checks = workload.eval_convolution(config, built_in=model is None and workload.is_built_in(config))
    if config.get('eval_convolution') != checks:
        config = ml_collections.ConfigDict(config.to_dict())
        config.eval_convolution = checks
    return with_model_digest(config) if network_lib.import_path_digest(config.model) else config


def study_mesh(config: ml_collections.ConfigDict):
    """The device mesh of config.mesh; None on a single device."""
    try:
        mesh = parallel.make_mesh(config.mesh.trial, config.mesh.data)
    except ValueError as error:
        raise config_lib.ConfigError(f'config.{error}') from None
    for batch_size in config.batch_sizes:
        if batch_size % config.mesh.data:
            raise config_lib.ConfigError(f'config.batch_sizes has {batch_size}, which config.mesh.data='
                                         f'{config.mesh.data} devices cannot split evenly')
    field = workload.pallas_field(config)
    if mesh.size > 1 and field:
        # A Triton pallas_call has no partitioning rule: on a mesh every device would compute every
        # trial's convolutions.
        raise config_lib.ConfigError(f"config.{field}='pallas' runs on one device; this mesh has {mesh.size} "
                                     f"(config.mesh.trial={config.mesh.trial}, config.mesh.data={config.mesh.data}): "
                                     f"use 'im2col', or make one device visible")
    return None if mesh.size == 1 else mesh


def cell_dir(workdir: str, sparsity: float, batch_size: int) -> str:
    return os.path.join(workdir, 'cells', cell_name(sparsity, batch_size))


def is_finished(workdir: str, sparsity: float, batch_size: int) -> bool:
    return os.path.exists(os.path.join(cell_dir(workdir, sparsity, batch_size), 'summary.json'))


def trial_records(result: engine.CellResult, values: dict[str, np.ndarray]) -> list[dict]:
    """One JSON-able record per trial; with measurements, its series as columns (non-finite: null)."""
    records = []
    for i in range(len(result.status)):
        series = {}
        if result.lipschitz:
            series['lipschitz'] = {'step': [int(step) for step, _ in result.lipschitz[i]],
                                   'value': [analysis.finite_or_none(value) for _, value in result.lipschitz[i]]}
        if result.noise_scale:
            rows = result.noise_scale[i]
            series['noise_scale'] = {
                'step': [int(row[0]) for row in rows],
                **{name: [analysis.finite_or_none(row[column]) for row in rows] for column, name in
                   enumerate(('b_simple', 'gradient_norm_squared', 'trace_covariance'), start=1)}}
        records.append({
            'trial': i, 'seed': i,
            **{name: values[name][i].item() for name in values},
            'status': engine.STATUS_NAMES[result.status[i]],
            'steps_to_result': int(result.steps_to_result[i]) if result.steps_to_result[i] >= 0 else None,
            'steps': int(result.steps[i]),
            'best_val_error': float(result.best_val_error[i]) if np.isfinite(result.best_val_error[i]) else None,
            'last_val_error': float(result.last_val_error[i]) if np.isfinite(result.last_val_error[i]) else None,
            **series,
        })
    return records


def _lipschitz_stats(series: list[list]) -> dict | None:
    values = np.array([value for trial_series in series for _, value in trial_series], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    return {'mean': float(values.mean()), 'max': float(values.max()), 'measurements': int(values.size)}


def smoothness_summary(result: engine.CellResult) -> dict:
    """Per cell: L over training (mean, max) of the best trial and of all reached trials; B_simple at
    step 0 (over trials: a prediction before any training) and over the best trial's training, each
    as mean tr(Sigma) / mean |G|^2."""
    summary = {}
    best = result.best_trial
    if result.lipschitz:
        reached = np.flatnonzero(result.status == engine.REACHED)
        summary['lipschitz'] = {
            'best_trial': None if best is None else _lipschitz_stats([result.lipschitz[best]]),
            'reached_trials': _lipschitz_stats([result.lipschitz[i] for i in reached]),
            'num_reached_trials': int(reached.size)}
    if result.noise_scale:
        initial = [rows[0] for rows in result.noise_scale if rows and rows[0][0] == 0]
        along = [] if best is None else list(result.noise_scale[best])
        # Rows are (step, B_simple, |G|^2, tr Sigma).
        summary['noise_scale'] = {'initial': analysis.b_simple_from_pairs([row[2:4] for row in initial]),
                                  'best_trial': analysis.b_simple_from_pairs([row[2:4] for row in along])}
    return summary


def cell_summary(result: engine.CellResult, sparsity: float, batch_size: int, until: str) -> dict:
    counts = {name: int((result.status == code).sum()) for code, name in enumerate(engine.STATUS_NAMES)}
    return {'sparsity': sparsity, 'batch_size': batch_size, 'steps_to_result': result.min_steps_to_result,
            'best_trial': result.best_trial, 'counts': counts, 'until': until,
            'trial_steps_computed': int(result.trial_steps_computed),
            'trial_steps_needed': int(result.trial_steps_needed), 'checks': int(result.checks),
            'wall_seconds': round(result.wall_seconds, 3), **smoothness_summary(result)}


def write_cell(workdir: str, records: list[dict], summary: dict) -> None:
    """trials.jsonl then summary.json (the cell counts as finished only once both are there)."""
    folder = cell_dir(workdir, summary['sparsity'], summary['batch_size'])
    store.atomic_write_text(os.path.join(folder, 'trials.jsonl'),
                            ''.join(json.dumps(record, sort_keys=True) + '\n' for record in records))
    store.atomic_write_json(os.path.join(folder, 'summary.json'), summary)


def read_summaries(workdir: str) -> list[dict]:
    """summary.json of every finished cell, sorted by (sparsity, batch size)."""
    root = os.path.join(workdir, 'cells')
    summaries = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name, 'summary.json')
        if os.path.exists(path):
            try:
                with open(path) as file:
                    summaries.append(json.load(file))
            except ValueError as error:  # not JSON, or not UTF-8
                raise config_lib.ConfigError(f'{path} is damaged ({" ".join(str(error).split())}); move its cell '
                                             f'folder aside to run that cell again') from None
    return sorted(summaries, key=lambda summary: (summary['sparsity'], summary['batch_size']))


def write_summary_csv(workdir: str) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator='\n')
    writer.writeheader()
    for summary in read_summaries(workdir):
        row = {field: summary.get(field) for field in CSV_FIELDS}
        row.update({name: summary['counts'][name] for name in ('reached', 'diverged', 'exhausted', 'running')})
        row['steps_to_result'] = '' if summary['steps_to_result'] is None else summary['steps_to_result']
        row['best_trial'] = '' if summary['best_trial'] is None else summary['best_trial']
        writer.writerow(row)
    store.atomic_write_text(os.path.join(workdir, 'summary.csv'), buffer.getvalue())


def report(workdir: str, log: Callable[[str], None] = print) -> None:
    """The steps-to-result table, analysis.json and the figures of the finished cells."""
    finished = analysis.load_study(workdir)
    log(analysis.steps_table(finished))
    result = analysis.write_analysis(workdir)
    log(analysis.describe_curves(result))
    if result.get('smoothness'):
        log(analysis.describe_smoothness(result))
    paths = plots.plot_all(workdir)
    log(f'{len(paths)} figures in {os.path.join(workdir, "figures")}')


def run(config: ml_collections.ConfigDict, workdir: str, log: Callable[[str], None] = print, *,
        model: Any = None, dataset: data.Dataset | None = None) -> None:
    """Runs (or resumes) the study of `config` in `workdir` and writes the results store.

    model / dataset: a flax Module and a data.Dataset used instead of config.model and
    config.dataset (dps_jax.run_study records what they are in the config). In a multi-host run
    every process computes and only process 0 writes and logs.
    """
    main = parallel.is_main_process()
    log = log if main else (lambda line: None)
    config_lib.validate_study_config(config)
    cells = grid_cells(config)
    config_lib.require_folder(workdir, '--workdir')
    cache = None if config.plan_only else compilation_cache.use_compilation_cache(config.compilation_cache_dir)
    mesh = study_mesh(config)
    work = memory = None
    if not config.plan_only:
        # Checks against the training split come before config.json is written, so a refused
        # value does not lock the workdir to it.
        work = workload.load_workload(config, model, dataset)
        config_lib.validate_study_config(config, work.num_train_examples)
        check_measurable(config, work)
        # The checks' convolution as resolved for the model actually loaded (a Module given as model= is one's own).
        config = with_model_digest(workload.with_resolved_checks(config, work))
        memory = workload.memory_estimate(config, work, mesh)
    else:
        # No data is loaded, but a built-in dataset's (or a given Dataset's) training split size is
        # known: a plan refuses what the run would.
        config_lib.validate_study_config(config, data.known_train_examples(config.dataset) if dataset is None
                                         else int(dataset.train.labels.shape[0]))
        config = planned_config(config, model)
    # Jobs that split a study (config.cells) share the workdir: its files change one job at a time.
    with store.locked(workdir_lock(workdir)):
        prepare_workdir(config, workdir, log, write=main)
        if not config.plan_only:
            runs, current = provenance.read_runs(workdir), provenance.collect(
                config.matmul_precision, workload.compute_dtype(config),
                **workload.resolved_numerics(config, work, config.batch_sizes, memory))
            note = provenance.check_resume(workdir, runs, current, config.allow_environment_change)
            if note:
                log(note)
            if main:
                provenance.record_run(workdir, runs, current)
        if main:
            store.atomic_write_json(os.path.join(workdir, 'plan.json'), make_plan(config))
            if not config.plan_only:
                remove_checkpoints_of_finished_cells(workdir, cells)
    parallel.barrier('workdir prepared')  # the other processes read which cells are finished
    if config.plan_only:
        log(f'plan: {len(cells)} cells x {config.num_trials} trials, written to {os.path.join(workdir, "plan.json")}')
        return
    remaining = [cell for cell in cells if not is_finished(workdir, *cell)]
    log(f'{len(cells)} cells, {len(cells) - len(remaining)} already finished, {len(remaining)} to run')
    if remaining:
        log(f'devices: {parallel.describe(mesh)}')
        log(compilation_cache.describe(cache))
        _run_cells(config, work, workdir, remaining, cells, log, mesh, memory)
    if main:
        with store.locked(workdir_lock(workdir)):
            write_summary_csv(workdir)
            report(workdir, log)


def smoothness_measurements(config: ml_collections.ConfigDict, apply_fn) -> smoothness.Measurements | None:
    """What the engine measures along training, from the config (None when nothing is)."""
    if not (config.lipschitz_every or config.noise_scale_every):
        return None
    return smoothness.Measurements(
        smoothness.make_example_losses(apply_fn), lipschitz_every=config.lipschitz_every,
        noise_scale_every=config.noise_scale_every,
        noise_scale_batch_sizes=tuple(int(b) for b in config.noise_scale_batch_sizes),
        noise_scale_draws=config.noise_scale_draws, lipschitz_examples=config.lipschitz_examples,
        chunk_size=config.smoothness_chunk_size, seed=config.data_seed)


def check_measurable(config: ml_collections.ConfigDict, work: workload.Workload) -> None:
    """Refuses smoothness measurements of a network with mutable collections (the estimators
    take a network of its parameters alone)."""
    if (config.lipschitz_every or config.noise_scale_every) and work.network.has_state:
        raise config_lib.ConfigError(
            f'config.lipschitz_every / config.noise_scale_every must be 0 for a model with mutable collections '
            f'({", ".join(work.network.collections)}): the smoothness estimators take a network of its parameters '
            f'alone')


class CellContext(NamedTuple):
    """What every cell of a study shares, made once: the trials at step 0 before masking, their
    pruning scores, and the jitted pieces the engine runs."""
    config: ml_collections.ConfigDict
    work: workload.Workload
    values: dict             # metaparameter -> numpy (num_trials,) (trial_metaparameters)
    train_step: Callable
    val_error: Callable
    params: Any              # initial parameters, leading trial axis
    model_state: Any         # initial mutable collections ({} if none), leading trial axis
    dropout_keys: jax.Array  # uint32 (num_trials, 2)
    scores: Any              # pruning scores like params; None when every cell is dense
    measurements: smoothness.Measurements | None
    mesh: Any
    group_sizes: dict        # batch size -> trials per group, filled as cells run
    memory: workload.MemoryEstimate  # one trial's memory figures, measured once per study


def cell_context(config: ml_collections.ConfigDict, work: workload.Workload, sparsities, mesh=None,
                 log: Callable[[str], None] = print, memory: workload.MemoryEstimate | None = None) -> CellContext:
    """Initializes every trial and, when a sparsity > 0 is among `sparsities`, its pruning scores
    (the config was checked against the workload: validate_study_config, check_measurable);
    memory: workload.memory_estimate's figures when already measured."""
    network = work.network
    num_trials = config.num_trials
    memory = workload.memory_estimate(config, work, mesh) if memory is None else memory
    train_step = workload.make_train_step(config, work, memory)
    values = trial_metaparameters(config)
    seeds = jnp.arange(num_trials, dtype=jnp.int32)
    params, model_state = jax.jit(jax.vmap(lambda seed: trial.init_variables(network, work.example_shape, seed)))(
        seeds)
    dropout_keys = jax.jit(jax.vmap(trial.dropout_key))(seeds)
    backend = jax.default_backend()
    eval_chunk = config.eval_chunk_size or engine.eval_chunk_size(
        num_trials, int(work.val_images.shape[0]), backend, memory.bytes_per_example, memory.budget_bytes)
    val_error = trial.make_val_error_count(
        work.eval_network, eval_chunk, trial.configured_stop_above(config, int(work.val_images.shape[0])))
    scores = None
    if any(sparsity > 0 for sparsity in sparsities):
        started = time.perf_counter()
        images, labels = work.snip_split(config.snip_examples)
        scoring = work.network_at(config.matmul_precision)  # float32, whatever config.compute_dtype

        def score_one(args):
            params, model_state, seed = args
            return trial.initial_scores(scoring, config.pruning, seed, params, model_state, images, labels,
                                        config.snip_batch_size)

        scores = jax.jit(lambda params, model_state, seeds: jax.lax.map(
            score_one, (params, model_state, seeds), batch_size=engine.default_trials_at_once(num_trials)))(
                params, model_state, seeds)
        jax.block_until_ready(scores)
        log(f'{config.pruning} scores of {num_trials} trials ({len(images)} examples) in '
            f'{time.perf_counter() - started:.1f} s (once; every sparsity uses them)')
    # The estimators set their own precision (precision.ESTIMATOR_PRECISION): a network without one.
    unset = work.network_at(None)
    measurements = smoothness_measurements(config, lambda params, images: unset.eval_apply(params, {}, images))
    if measurements is not None:
        examples = config.lipschitz_examples or work.train_images.shape[0]
        log('measuring every live trial: ' + ', '.join(
            ([f'L every {config.lipschitz_every} steps (10 gradients over {examples:,d} examples each)']
             if config.lipschitz_every else []) +
            ([f'B_simple at step 0 and every {config.noise_scale_every} steps ({config.noise_scale_draws} draws '
              f'of batches {tuple(config.noise_scale_batch_sizes)})'] if config.noise_scale_every else [])))
    return CellContext(config, work, values, train_step, val_error, params, model_state,
                       dropout_keys, scores, measurements, mesh, {}, memory)


def sparsity_mask(context: CellContext, sparsity: float) -> Any:
    """Every trial's mask at `sparsity` (leading trial axis) from the shared scores."""
    config = context.config
    return jax.jit(jax.vmap(lambda scores, params: masks.mask_from_scores(
        scores, params, sparsity, config.prune_kernels_only)))(
            context.scores if context.scores is not None else context.params, context.params)


def cell_checkpoints(config: ml_collections.ConfigDict, workdir: str, sparsity: float, batch_size: int,
                     log: Callable[[str], None] = print, passes_from_memory: int | None = None
                     ) -> checkpoints.CellCheckpoints | None:
    """The mid-cell checkpoints of a cell in workdir/checkpoints/<cell>; None when config.checkpoint_every is 0.

    passes_from_memory: workload.passes_from_memory, part of the checkpoints' identity when set (a
    run on a device with other memory, or with another memory_fraction, does not resume them)."""
    if not config.checkpoint_every:
        return None
    identity = {'cell': cell_name(sparsity, batch_size), 'config': _comparable(config.to_dict())}
    if passes_from_memory is not None:
        identity['examples_per_pass'] = passes_from_memory
    return checkpoints.CellCheckpoints(
        os.path.join(workdir, 'checkpoints', cell_name(sparsity, batch_size)), config.checkpoint_every,
        identity=identity, log=log,
        normalize=functools.partial(_checkpoint_identity, model_digest=config.get('model_digest', '')))


def run_one_cell(context: CellContext, sparsity: float, batch_size: int, mask: Any = None,
                 saved: checkpoints.CellCheckpoints | None = None,
                 log: Callable[[str], None] | None = print) -> engine.CellResult:
    """One cell's trials from step 0 (or from the newest of `saved`) to the cell's end; mask: the
    trials' masks at `sparsity` when already made (sparsity_mask)."""
    config, work, mesh = context.config, context.work, context.mesh
    if mask is None:
        mask = sparsity_mask(context, sparsity)
    optimizer = work.optimizer
    hyperparameters = {name: jnp.asarray(column) for name, column in context.values.items()}
    states = jax.jit(jax.vmap(lambda p, m, h, s, k: trial.new_trial_state(p, m, optimizer, h, s, k)))(
        context.params, mask, hyperparameters, context.model_state, context.dropout_keys)
    group_size = context.group_sizes.get(batch_size)
    if group_size is None:  # the first cell at this batch size
        in_pass = workload.examples_per_pass(config, work, batch_size, context.memory)
        passes = workload.describe_passes(context.memory, batch_size, in_pass, work.network.has_state)
        if passes and log is not None:
            log(passes)
        # The estimate is per device: each of the mesh's 'trial' devices holds its share of a group,
        # each trial one pass of its step, or its smoothness measurement, at a time.
        group_size = config.trials_per_group or min(config.num_trials, parallel.trial_count(mesh) * (
            engine.estimate_group_size(
                context.train_step, jax.tree.map(lambda leaf: leaf[0], states), work.example_shape,
                max(1, in_pass // parallel.data_count(mesh)), context.memory.budget_bytes, config.num_trials,
                context.memory.bytes_per_example, engine.trials_stepped_in_turn(mesh),
                context.measurements.examples_at_once if context.measurements is not None else 0)))
        context.group_sizes[batch_size] = group_size
        if not config.trials_per_group and group_size < config.num_trials and log is not None:
            log(f'  memory: {group_size} trials at a time')
    return engine.run_cell(
        states, train_step=context.train_step, val_error=context.val_error, train_images=work.train_images,
        train_labels=work.train_labels, val_images=work.val_images, val_labels=work.val_labels,
        batch_size=batch_size, goal_error=config.goal_error, max_steps=config.max_steps,
        check_every=config.check_every, data_seed=config.data_seed, until=config.until,
        compaction=config.compaction, group_size=group_size, per_trial_order=config.per_trial_data_order,
        measurements=context.measurements, mesh=mesh, checkpoints=saved, log=log,
        log_every_seconds=config.progress_every_seconds)


def _run_cells(config, work: workload.Workload, workdir, remaining, cells, log, mesh=None, memory=None) -> None:
    log(workload.describe(config, work))
    context = cell_context(config, work, [sparsity for sparsity, _ in remaining], mesh, log, memory)
    num_trials = config.num_trials
    for sparsity in dict.fromkeys(s for s, _ in remaining):
        mask = sparsity_mask(context, sparsity)
        log(f'sparsity {sparsity:g}: trial 0 keeps {sum(int(l[0].sum()) for l in jax.tree.leaves(mask)):,d} '
            f'of {sum(int(l[0].size) for l in jax.tree.leaves(mask)):,d} parameters')
        for batch_size in [b for s, b in remaining if s == sparsity]:
            position = cells.index((sparsity, batch_size)) + 1
            with claimed_cell(workdir, sparsity, batch_size) as claimed:
                if not claimed or is_finished(workdir, sparsity, batch_size):
                    log(f'cell {position}/{len(cells)}: sparsity {sparsity:g}, batch size {batch_size} '
                        f'{"is being run by another job" if not claimed else "was finished by another job"}: '
                        f'skipped')
                    continue
                log(f'cell {position}/{len(cells)}: sparsity {sparsity:g}, batch size {batch_size}, '
                    f'{num_trials} trials, until {config.until!r}')
                saved = cell_checkpoints(config, workdir, sparsity, batch_size, log,
                                         workload.passes_from_memory(config, work, batch_size, context.memory))
                result = run_one_cell(context, sparsity, batch_size, mask, saved, log)
                summary = cell_summary(result, sparsity, batch_size, config.until)
                if parallel.is_main_process():
                    with store.locked(workdir_lock(workdir)):
                        require_same_study(config, workdir, cell_name(sparsity, batch_size))
                        write_cell(workdir, trial_records(result, context.values), summary)
                        write_summary_csv(workdir)
                if saved is not None:
                    saved.remove()  # after the results: a kill in between resumes, not restarts
            steps = summary['steps_to_result']
            outcome = f'{steps} (trial {summary["best_trial"]})' if steps is not None else 'not reached'
            log(f'  -> steps-to-result {outcome}, {summary["trial_steps_computed"]:,d} trial-steps '
                f'in {summary["wall_seconds"]:.1f} s')
