"""dps_jax: how data parallelism and sparsity change the steps a network needs to reach a goal error.

The Python API (each name's docstring says more):

    run_study(config, workdir=None, *, model=None, dataset=None) -> Study   every cell of a grid
    run_cell(config, sparsity, batch_size, *, model=None, dataset=None) -> Cell   one cell, in memory
    load_results(workdir) -> Study            a results store written by run_study or launch.py
    base_study_config(), paper_study_config(**fields)   configs with every field documented
    from_arrays(train_images, train_labels, ...) -> Dataset   your own data
    steps_table(study), analyze(study)        the steps-to-result table; S(B) fits, the end of perfect scaling, bands
    plot_steps_vs_batch(study, analyze(study), path_stem), plot_trial_scatter(cell, config, path_stem)

Names load on first use, so `import dps_jax.config` stays light.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    'run_study': 'dps_jax.api', 'run_cell': 'dps_jax.api', 'load_results': 'dps_jax.api',
    'base_study_config': 'dps_jax.config', 'paper_study_config': 'dps_jax.config', 'ConfigError': 'dps_jax.config',
    'from_arrays': 'dps_jax.data', 'Dataset': 'dps_jax.data', 'DataError': 'dps_jax.data',
    'Study': 'dps_jax.analysis', 'Cell': 'dps_jax.analysis', 'steps_table': 'dps_jax.analysis',
    'analyze': 'dps_jax.analysis',
    'plot_steps_vs_batch': 'dps_jax.plots', 'plot_trial_scatter': 'dps_jax.plots',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
