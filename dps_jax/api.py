"""The Python API: a study or one cell of your own model and data, and its results in memory.

    import dps_jax
    config = dps_jax.base_study_config()
    config.sparsities, config.batch_sizes = (0.0, 0.9), (16, 64)
    study = dps_jax.run_study(config, 'runs/mine', model=MyNet(10), dataset=dps_jax.from_arrays(x, y))
    print(dps_jax.steps_table(study))
    dps_jax.plot_steps_vs_batch(study, dps_jax.analyze(study), 'runs/mine/steps')

Every function takes the same ml-collections config as launch.py (dps_jax.config documents
each field). A Module object or a Dataset given here replaces config.model / config.dataset;
the config that is stored names them by class and content digest, so a study resumes only
with the same ones.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import ml_collections
import numpy as np

from dps_jax import analysis, compilation_cache, data, network, parallel, study, workload
from dps_jax import config as config_lib

Log = Callable[[str], None]


def dataset_identity(dataset: data.Dataset) -> str:
    """A text naming a Dataset object for a study's config: its name and a digest of every split and
    of its class count (the width of a built-in model's output)."""
    digest = hashlib.sha1()
    largest_label = -1
    for split in (dataset.train, dataset.val, dataset.test):
        for array in (split.images, split.labels):
            array = np.ascontiguousarray(array)
            digest.update(f'{array.dtype}{array.shape}'.encode())
            digest.update(array.data)
        largest_label = max(largest_label, int(split.labels.max()) if split.labels.size else -1)
    if dataset.num_classes != largest_label + 1:
        # Only a class count other than from_arrays' default enters the digest, so that a study begun
        # before it did resumes under the digest it recorded.
        digest.update(f'num_classes={dataset.num_classes}'.encode())
    return f'{config_lib.ARRAYS_PREFIX}{dataset.name}#{digest.hexdigest()[:12]}'


def resolved_config(config: ml_collections.ConfigDict, model: Any = None,
                    dataset: data.Dataset | None = None) -> ml_collections.ConfigDict:
    """A copy of `config` (a ConfigDict, or a dict of its fields) whose model and dataset fields name
    the objects given (when given), with numpy numbers as Python's (a study stores its config as
    JSON); a string model= is taken as config.model."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    elif not isinstance(config, Mapping):
        raise config_lib.ConfigError(f'config must be an ml_collections.ConfigDict (e.g. dps_jax.base_study_config()) '
                                     f'or a dict of its fields, got a {type(config).__name__}')
    config = ml_collections.ConfigDict(_plain(dict(config)))
    if isinstance(model, str):
        config.model = model
    elif model is not None:
        if not isinstance(model, nn.Module):
            raise config_lib.ConfigError(f'model= must be a flax Module instance (e.g. MyNet(10)) or a config.model '
                                         f'string, got {model!r}')
        config.model = network.module_identity(model)
    if dataset is not None:
        if not isinstance(dataset, data.Dataset):
            raise config_lib.ConfigError(f'dataset must be a dps_jax.data.Dataset (e.g. dps_jax.from_arrays(...)), '
                                         f'got a {type(dataset).__name__}')
        config.dataset = dataset_identity(dataset)
    return config


def _plain(value: Any) -> Any:
    """A config value with numpy (or JAX) scalars and arrays as Python numbers and tuples, as launch.py
    gives them; a float32 as the shortest decimal that is that float32 (np.float32(0.9) -> 0.9)."""
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        return float(np.format_float_positional(value))
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, '__array__') and not isinstance(value, (str, bytes)):  # numpy and JAX arrays
        array = np.asarray(value)
        return _plain(array[()]) if array.ndim == 0 else tuple(_plain(item) for item in array)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def run_study(config: ml_collections.ConfigDict, workdir: str | None = None, *, model: Any = None,
              dataset: data.Dataset | None = None, log: Log | None = print) -> analysis.Study | None:
    """Runs every cell of `config`'s grid and returns the results (analysis.Study).

    With a workdir the results store is written there as launch.py writes it (resumable; the
    same files, analysis and figures); without one the cells run in memory and no file is
    written. model: a flax Module instead of config.model; dataset: a data.Dataset (e.g.
    from_arrays) instead of config.dataset. Returns None for config.plan_only, and in the
    processes other than 0 of a multi-host run (process 0 writes the store).
    """
    log = log or (lambda line: None)
    config = resolved_config(config, model, dataset)
    if workdir is not None:
        study.run(config, workdir, log, model=None if isinstance(model, str) else model, dataset=dataset)
        if config.plan_only or not parallel.is_main_process():
            return None
        return analysis.load_study(workdir)
    config_lib.validate_study_config(config)
    if config.plan_only:
        raise config_lib.ConfigError('config.plan_only=True writes DIR/plan.json: give run_study a workdir')
    cells = study.grid_cells(config)
    context = _context(config, model, dataset, [sparsity for sparsity, _ in cells], log)
    finished = {}
    for sparsity, batch_size in cells:
        log(f'cell {len(finished) + 1}/{len(cells)}: sparsity {sparsity:g}, batch size {batch_size}')
        finished[(sparsity, batch_size)] = _run(context, sparsity, batch_size, log)
    return analysis.Study(config=config.to_dict(), cells=finished)


def run_cell(config: ml_collections.ConfigDict, sparsity: float, batch_size: int, *, model: Any = None,
             dataset: data.Dataset | None = None, log: Log | None = print) -> analysis.Cell:
    """Runs one cell in memory: every trial of `config` at (sparsity, batch_size); no files.

    Returns an analysis.Cell: `summary` (steps-to-result, best trial, counts) and `trials` (one
    record per trial: metaparameters, status, steps_to_result, errors), as a study stores them.
    """
    log = log or (lambda line: None)
    config = resolved_config(config, model, dataset)
    # Checked as the config's one cell, so that 8.9 or True is refused rather than run as batch 8 or 1.
    config.sparsities, config.batch_sizes, config.cells = (_plain(sparsity),), (_plain(batch_size),), ''
    try:
        config_lib.validate_study_config(config)
    except config_lib.ConfigError as error:
        raise config_lib.ConfigError(f'run_cell(sparsity={sparsity!r}, batch_size={batch_size!r}): {error}') from None
    sparsity, batch_size = config.sparsities[0], config.batch_sizes[0]
    context = _context(config, model, dataset, [float(sparsity)], log)
    return _run(context, float(sparsity), int(batch_size), log)


def load_results(workdir: str) -> analysis.Study:
    """The results store in `workdir` (finished cells only), as run_study returns it."""
    return analysis.load_study(workdir)


def _context(config: ml_collections.ConfigDict, model: Any, dataset: data.Dataset | None, sparsities: Sequence[float],
             log: Log) -> study.CellContext:
    compilation_cache.use_compilation_cache(config.compilation_cache_dir)
    work = workload.load_workload(config, None if isinstance(model, str) else model, dataset)
    config_lib.validate_study_config(config, work.num_train_examples)
    study.check_measurable(config, work)
    log(workload.describe(config, work))
    return study.cell_context(config, work, sparsities, study.study_mesh(config), log)


def _run(context: study.CellContext, sparsity: float, batch_size: int, log: Log) -> analysis.Cell:
    result = study.run_one_cell(context, sparsity, batch_size, log=log)
    summary = study.cell_summary(result, sparsity, batch_size, context.config.until)
    steps = summary['steps_to_result']
    log(f'  -> steps-to-result {steps if steps is not None else "not reached"} in {summary["wall_seconds"]:.1f} s')
    return analysis.Cell(name=study.cell_name(sparsity, batch_size), summary=summary,
                         trials=study.trial_records(result, context.values))
