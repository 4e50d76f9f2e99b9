"""Checks on ml-collections configs: every bad value is one clear error naming the field."""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, NamedTuple, Sequence

from dps_jax import masks, optim, precision, store


class ConfigError(ValueError):
    """A config field has a wrong type or value; the message names the field and what is accepted."""


# The largest seed: a JAX key holds 32 bits of it, so a larger seed would repeat a smaller one's stream.
MAX_SEED = 2 ** 32 - 1


def require_folder(path: str, name: str, writable: bool = True) -> str:
    """Creates folder `path` if needed and returns it; ConfigError naming `name` (e.g. '--workdir')
    when it cannot be made or (if `writable`) no file can be written there, before any work is done."""
    try:
        if writable:
            store.make_writable_folder(path)
        else:
            os.makedirs(path, exist_ok=True)
    except OSError as error:
        reason = 'a file of that name exists' if os.path.isfile(path) else (error.strerror or str(error))
        raise ConfigError(f'{name}={path} cannot hold files: {reason}') from None
    return path


def _get(config: Any, field: str) -> Any:
    try:
        return config[field]
    except (KeyError, AttributeError) as error:
        raise ConfigError(f'config.{field} is missing') from error


def require_choice(config: Any, field: str, choices: Sequence[str]) -> str:
    """The value of a string field that must be one of `choices`."""
    value = _get(config, field)
    if value not in choices:
        accepted = ', '.join(choice or "''" for choice in choices)  # '' shown as such
        raise ConfigError(f'config.{field}={value!r} is not accepted; choose one of: {accepted}')
    return value


def require_int(config: Any, field: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """The value of an integer field within [minimum, maximum]."""
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f'config.{field}={value!r} must be an integer')
    if minimum is not None and value < minimum:
        raise ConfigError(f'config.{field}={value} must be >= {minimum}')
    if maximum is not None and value > maximum:
        raise ConfigError(f'config.{field}={value} must be <= {maximum}')
    return int(value)


def require_float(config: Any, field: str, low: float, high: float, *, low_open: bool = False,
                  high_open: bool = False) -> float:
    """The value of a real field within the interval given (open ends where asked)."""
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f'config.{field}={value!r} must be a number')
    value = float(value)
    interval = Interval(low, high, low_open, high_open)
    if not interval.holds(value):
        raise ConfigError(f'config.{field}={value!r} is outside {interval.text()}')
    return value


# How a stored config names objects given to the Python API (dps_jax.api) instead of config fields.
ARRAYS_PREFIX = 'arrays:'  # config.dataset of a Dataset object: 'arrays:<name>#<digest of its arrays>'
OBJECT_PREFIX = 'python:'  # config.model of a flax Module object: 'python:<class>#<digest>' (network.py)


def _require_dataset(config: Any) -> str:
    """config.dataset: a built-in dataset's name, a 'tfds:' name, or a Python API Dataset's identity."""
    from dps_jax import data
    value = _get(config, 'dataset')
    if isinstance(value, str) and value.startswith(ARRAYS_PREFIX):
        return value
    try:  # a built-in name or 'tfds:NAME[:SPLIT]'
        data.check_dataset_name(value)
    except data.DataError as error:
        raise ConfigError(f'config.dataset={value!r}: {error}') from None
    return value


def _require_model(config: Any) -> str:
    """config.model: a built-in model's name or an import path (imported when the workload loads)."""
    from dps_jax import models, network
    value = _get(config, 'model')
    if not isinstance(value, str) or not (value in models.MODELS or network.is_import_path(value)
                                          or value.startswith(OBJECT_PREFIX)):
        raise ConfigError(f"config.model={value!r} is not accepted; choose one of: {', '.join(models.MODELS)}, or an "
                          f"import path 'package.module:attribute' or 'path/to/file.py:attribute'")
    return value


class Interval(NamedTuple):
    """The values a real field accepts: [low, high], either end open where asked."""
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        """Whether `value` lies in the interval (nan never does)."""
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def text(self) -> str:
        return f'{"(" if self.low_open else "["}{self.low:g}, {self.high:g}{")" if self.high_open else "]"}'


# The values the optimizer accepts for each metaparameter: a config's single value, and both
# ends of its range in config.search_space, are checked against these.
METAPARAMETER_INTERVALS = {
    'learning_rate': Interval(0.0, math.inf, low_open=True, high_open=True),
    'momentum': Interval(0.0, 1.0, high_open=True),
    'decay_steps': Interval(1.0, math.inf, high_open=True),  # and an integer
    'end_learning_rate_factor': Interval(0.0, 1.0),
}


def _require_metaparameter(config: Any, name: str) -> float:
    interval = METAPARAMETER_INTERVALS[name]
    return require_float(config, name, interval.low, interval.high, low_open=interval.low_open,
                         high_open=interval.high_open)


def _validate_workload(config: Any) -> None:
    """The fields a single trial and a study share: data, model, pruning, optimizer, goal, budget."""
    from dps_jax import data  # heavy to import: not at module level

    _require_dataset(config)
    require_choice(config, 'data_source', data.SOURCES)
    _require_model(config)
    require_choice(config, 'pruning', masks.METHODS)
    require_int(config, 'snip_batch_size', minimum=1)
    if not isinstance(_get(config, 'prune_kernels_only'), bool):
        raise ConfigError(f'config.prune_kernels_only={config.prune_kernels_only!r} must be True or False')
    require_choice(config, 'optimizer', optim.OPTIMIZERS)
    require_choice(config, 'schedule', optim.SCHEDULES)
    _require_metaparameter(config, 'learning_rate')
    _require_metaparameter(config, 'momentum')
    require_int(config, 'decay_steps', minimum=int(METAPARAMETER_INTERVALS['decay_steps'].low))
    _require_metaparameter(config, 'end_learning_rate_factor')
    require_float(config, 'goal_error', 0.0, 1.0, low_open=True, high_open=True)
    check_every = require_int(config, 'check_every', minimum=1)
    max_steps = require_int(config, 'max_steps', minimum=1)
    if max_steps % check_every:
        raise ConfigError(f'config.max_steps={max_steps} must be a multiple of config.check_every={check_every}')
    require_int(config, 'data_seed', minimum=0, maximum=MAX_SEED)
    require_choice(config, 'matmul_precision', precision.MATMUL_PRECISIONS)
    if 'compute_dtype' in config:  # optional: a config written before the field trains in float32
        require_choice(config, 'compute_dtype', precision.COMPUTE_DTYPES)
    if 'convolution' in config:  # optional: a config written before the field convolves by im2col
        from dps_jax import models  # imports flax: not at module level
        require_choice(config, 'convolution', models.CONVOLUTIONS)
    if 'eval_convolution' in config:  # optional: a config written before the field checks as it trains
        from dps_jax import models
        require_choice(config, 'eval_convolution', ('auto', '', *models.CONVOLUTIONS))
    if 'batch_in_passes' in config and not isinstance(config.batch_in_passes, bool):  # optional: older configs
        raise ConfigError(f'config.batch_in_passes={config.batch_in_passes!r} must be True or False')
    if 'exact_val_errors' in config and not isinstance(config.exact_val_errors, bool):  # optional: older configs
        raise ConfigError(f'config.exact_val_errors={config.exact_val_errors!r} must be True or False')


def _require_cache_dir(config: Any) -> None:
    if not isinstance(_get(config, 'compilation_cache_dir'), str):
        raise ConfigError(f"config.compilation_cache_dir={config.compilation_cache_dir!r} must be a folder, 'auto' "
                          f"or '' (off)")


def _require_snip_examples(config: Any, num_train_examples: int | None) -> None:
    snip_examples = require_int(config, 'snip_examples', minimum=0)
    if num_train_examples is not None and snip_examples > num_train_examples:
        raise ConfigError(f'config.snip_examples={snip_examples} is larger than the training split '
                          f'({num_train_examples} examples)')


def validate_trial_config(config: Any, num_train_examples: int | None = None) -> None:
    """Checks the fields one trial needs; with the training split size, also the batch size."""
    _validate_workload(config)
    require_float(config, 'sparsity', 0.0, 1.0, high_open=True)
    batch_size = require_int(config, 'batch_size', minimum=1)
    if num_train_examples is not None and batch_size > num_train_examples:
        raise ConfigError(f'config.batch_size={batch_size} is larger than the training split '
                          f'({num_train_examples} examples)')
    require_int(config, 'seed', minimum=0, maximum=MAX_SEED)
    require_int(config, 'eval_chunk_size', minimum=0)
    if 'snip_examples' in config:  # optional: a config written before the field scores the whole split
        _require_snip_examples(config, num_train_examples)
    _require_cache_dir(config)


# What a config written before a field existed ran with, where that is not the field's default now:
# a stored config that lacks the field is compared with this value, not the default.
VALUES_BEFORE_THE_FIELD = {'eval_convolution': ''}

# Fields that say how to run, not what to measure: changing them does not invalidate a workdir. Two can
# change float rounding: mesh (the summation order) and, for a batch too large for the device,
# memory_fraction (its passes; README, "Batches larger than the device").
RUN_FIELDS = ('plan_only', 'overwrite', 'cells', 'progress_every_seconds', 'trials_per_group',
              'memory_fraction', 'eval_chunk_size', 'data_dir', 'mesh', 'checkpoint_every',
              'allow_environment_change', 'compilation_cache_dir')


def base_study_config():
    """The fields every study config has, with defaults; workload configs override them.

    Every field is documented here; configs/*.py document what they change.
    """
    import ml_collections

    from dps_jax import search

    config = ml_collections.ConfigDict()
    # --- Data.
    config.dataset = 'fashion_mnist'    # 'mnist' | 'fashion_mnist' | 'cifar10' | 'tfds:NAME[:SPLIT]' (a prepared
                                        # TFDS image dataset, e.g. 'tfds:cifar10:train[:50%]'; data_dir = its data dir);
                                        # a store made by dps_jax.run_study(dataset=...) holds 'arrays:<name>#<digest>'
    config.data_dir = ''                # '' searches $DPS_DATA_DIR, then /usr/share/datasets/<name>
    config.data_source = 'files'        # built-in names: 'files' (IDX .gz / CIFAR-10 batches) | 'tfds' (TFDS copy)
    # --- Model and pruning at initialization.
    config.model = 'simple_cnn'         # 'simple_cnn' | 'resnet8' | 'package.module:attribute' | 'file.py:attribute':
                                        # a flax Module class or function called with the number of classes, or a
                                        # Module. Its __call__ may take `train`/`training` (True in training steps)
                                        # or `deterministic` (True in evaluation); BatchNorm statistics are kept
                                        # per trial, dropout uses the 'dropout' stream. A store made by
                                        # dps_jax.run_study(model=...) holds 'python:<class>#<digest>'
                                        # (README, "Your own workload"; dps_jax/network.py)
    config.model_digest = ''            # an import-path model's file (network.import_path_digest: its bytes),
                                        # filled in by the study and kept in config.json, so that a study resumes
                                        # only with the same model file; '' = fill in; a value = refuse to run
                                        # unless the file digests to it
    config.pruning = 'snip'             # 'snip' | 'random' | 'magnitude'
    config.prune_kernels_only = False   # False: weights and biases compete in one top-k (the reference)
    config.snip_batch_size = 100        # SNIP sums mask gradients over its examples in batches of this
    config.snip_examples = 0            # 0 = the whole training split (the reference); n = its first n examples
    # --- The grid: one cell per (sparsity, batch size).
    config.sparsities = (0.0, 0.5, 0.7, 0.9)      # each in [0, 1)
    config.batch_sizes = tuple(2 ** k for k in range(1, 15))  # each in [1, training split size]
    # --- Optimizer (TF1 semantics) and schedule.
    config.optimizer = 'sgd'            # 'sgd' | 'momentum' | 'nesterov'
    config.schedule = 'constant'        # 'constant' | 'linear' (lr -> lr * end factor over decay_steps, then held)
    # --- Metaparameter search: quasi-random (Sobol) points, the same at every cell.
    config.search_names = ('learning_rate',)  # searched, from: learning_rate, momentum, decay_steps,
                                              # end_learning_rate_factor (names of search_space);
                                              # Sobol dimension i is the i-th name, as the reference
    # The range each metaparameter's Sobol coordinate u in [0, 1) is mapped to, one entry per name,
    # e.g. --config.search_space.learning_rate.low=1e-3 --config.search_space.learning_rate.scale=linear.
    # Default: the reference's space (dps_jax/search.py SEARCH_SPACE): learning_rate [1e-4, 1] log,
    # momentum [0.9, 0.9999] reverse_log, decay_steps [30000, 60000] int, end_learning_rate_factor
    # [1e-4, 0.1] log. Only the searched names are used (plan.json records their ranges); every
    # entry is checked. Changing a range makes another study (a workdir refuses it).
    #   search_space.<name>.low    the range's lower end, a finite number
    #   search_space.<name>.high   its upper end, > low; low and high must both be values the
    #                              optimizer accepts for <name> (the intervals beside the values below)
    #   search_space.<name>.scale  how u maps to [low, high]:
    #                              'log'          low * (high / low) ** u; needs low > 0
    #                              'reverse_log'  1 - value log-uniform, u = 0 at high (momentum
    #                                             0.9999); needs high < 1
    #                              'linear'       low + u * (high - low)
    #                              'int'          low + u * (high - low) truncated; whole-number bounds
    #                              (decay_steps are whole steps on every scale: its values are truncated)
    config.search_space = ml_collections.ConfigDict(search.space_as_dict(search.SEARCH_SPACE))
    config.num_trials = 100             # trials per cell (Sobol points); trial i has seed i
    # Values of the metaparameters that are NOT searched:
    config.learning_rate = 0.1          # > 0
    config.momentum = 0.9               # in [0, 1); unused by 'sgd'
    config.decay_steps = 30000          # >= 1; used by schedule 'linear'
    config.end_learning_rate_factor = 0.01  # in [0, 1]; used by schedule 'linear'
    # --- Goal and budget.
    config.goal_error = 0.1             # a trial reaches the goal when whole-validation error <= this; in (0, 1)
                                        # (decided from the error count as the reference: 720 / 6,000 misses 0.12)
    config.max_steps = 40000            # budget per trial in steps; a multiple of check_every
    config.check_every = 100            # steps between whole-validation-split checks
    config.exact_val_errors = True      # True: every check counts the whole validation split (the reference).
                                        # False: a check stops counting a trial once its errors exceed what the
                                        # goal allows (between evaluation chunks): the same statuses and
                                        # steps-to-result, fewer forward passes, but the errors recorded for
                                        # a check that missed the goal (best/last_val_error, a trial's history)
                                        # are then lower bounds above the goal (README, "Checks that stop early")
    # --- How the engine runs a cell.
    config.until = 'first'              # 'first': stop a cell at the first check where any trial reaches the
                                        # goal (that step is the cell's minimum); 'all': every trial to its end
    config.compaction = True            # drop ended trials into smaller slot buckets ('all' mode)
    config.trials_per_group = 0         # trials on the device at once; 0 = from a memory estimate
    config.memory_fraction = 0.5        # share of device memory (host RAM on CPU) the estimate may use; it
                                        # also bounds the passes of a batch one trial's step cannot hold whole
                                        # (batch_in_passes), which changes float rounding and dropout draws
    config.eval_chunk_size = 0          # validation examples per chunk per trial; 0 = on CPU 48, the trials
                                        # checked in turn (small programs keep a forward pass in cache), on an accelerator
                                        # as many as memory_fraction of its memory holds for every trial at once,
                                        # up to the whole split
    config.batch_in_passes = True       # for a network without mutable collections, a training step takes its
                                        # batch in passes (trial.examples_per_pass): on a CPU of at most 32 examples
                                        # (faster: README, "Performance"), and on any device of at most what
                                        # memory_fraction holds for one trial's step (a batch too large for the
                                        # device; README, "Batches larger than the device"): the batch's gradient
                                        # up to float rounding, dropout drawn per pass. False: the whole batch at
                                        # once, as accelerators take a batch that fits; needed by a model that
                                        # mixes a batch's examples without a mutable collection
    config.per_trial_data_order = False  # False: one shared data order (the reference); True: seed data_seed + i
    config.data_seed = 0                # data order seed, in [0, 2^32): an endless stream of per-epoch
                                        # permutations, batches run across epoch ends (nothing dropped), as the
                                        # reference
    # --- Smoothness and gradient noise scale of every live trial along training (dps_jax/smoothness.py).
    # Measured between training chunks on copies of the states: trajectories are the same on or off.
    config.lipschitz_every = 0          # steps between Lipschitz estimates; 0 = off; else a multiple of check_every
    config.lipschitz_examples = 0       # the estimate's gradients are over the first n training examples;
                                        # 0 = the whole split (the reference); one estimate costs 10 gradient passes
    config.noise_scale_every = 0        # steps between B_simple estimates (and one at step 0); 0 = off;
                                        # else a multiple of check_every
    config.noise_scale_batch_sizes = (64, 1024)  # (small, big) batch sizes of the two-batch estimator, small < big
    config.noise_scale_draws = 16       # batch pairs drawn per estimate; their squared norms are averaged first
    config.smoothness_chunk_size = 25   # examples per gradient chunk, per trial and point (L takes 10 points
                                        # at once; the groups of trials are sized for it): ~25 was fastest on
                                        # XLA:CPU; raise it on accelerators
    # --- Numerics (README, "Numerics and reproducibility").
    config.compute_dtype = 'float32'    # 'float32' (the reference) | 'bfloat16': training and evaluation cast the
                                        # float32 parameters (the master copy, updated in float32) and the images
                                        # to bfloat16 per step; logits, loss, pruning scores and the smoothness
                                        # estimators stay float32. Opt-in, for GPUs/TPUs; slower on XLA:CPU
    config.convolution = 'im2col'       # how the built-in models convolve: 'im2col' (any backend, the fastest
                                        # measured; on a GPU it builds its patches in two stages, 1.17x faster
                                        # there) | 'pallas': Triton kernels that never write im2col patches,
                                        # GPU only, for the stride-1 layers with 16-128 channels in and out
                                        # (im2col for the rest) | 'xla': XLA's own convolution (cuDNN on NVIDIA
                                        # GPUs; much slower than im2col on XLA:CPU); README, "Performance". The
                                        # same values up to the order of float32 sums (TF32 on NVIDIA GPUs at
                                        # matmul_precision 'default')
    config.eval_convolution = 'auto'    # how the validation checks' forward passes convolve: 'auto' (the built-in
                                        # models by 'xla', a model of one's own as it trains) | '' (as
                                        # config.convolution; the default before 2026-11-27) | 'im2col' | 'pallas'
                                        # (GPU only) | 'xla' (XLA's own convolution, cuDNN on NVIDIA GPUs). xla and
                                        # pallas write no im2col patches: checks by xla ran 2.1-2.3x faster than
                                        # by im2col on a 2-core CPU, and a real cell 1.25x faster on an H200 (an
                                        # earlier session's run; README, "Performance"); the same errors up to
                                        # float32 rounding. On a CPU mesh of several devices checks are vmapped,
                                        # where im2col (set '') is faster. Part of the study's identity:
                                        # config.json records the resolved name
    config.matmul_precision = 'default'  # float32 matmuls and convolutions of training, evaluation and SNIP:
                                         # 'default' (TF32 on NVIDIA GPUs: ~3e-4 relative error, fastest) |
                                         # 'high' | 'highest' (full float32 everywhere); XLA:CPU is float32 at
                                         # all three. The smoothness estimators always run at 'highest'.
    # --- Devices and interruptions (dps_jax/parallel.py, dps_jax/checkpoints.py).
    config.mesh = ml_collections.ConfigDict()
    config.mesh.trial = 0               # devices along the 'trial' axis (trials split over them); 0 = all not on 'data'
    config.mesh.data = 1                # devices along the 'data' axis (each batch split over them, gradients all-reduced)
    config.checkpoint_every = 10        # checks between mid-cell checkpoints of every trial's state (orbax, in
                                        # DIR/checkpoints/<cell>); a killed cell resumes from the last one; 0 = off
    # --- The run itself.
    config.cells = ''                   # '' = every cell; else e.g. '0.9_64,0_128' (sparsity_batch) to split jobs
    config.plan_only = False            # write DIR/plan.json (cells, trials, budget) and exit
    config.overwrite = False            # allow a workdir made with a different config to be reused
    config.allow_environment_change = False  # resume a workdir made under another JAX / jaxlib version, PRNG
                                             # setting or backend (cpu / gpu / tpu); refused by default, since
                                             # initializations and data orders may differ (DIR/provenance.json)
    config.progress_every_seconds = 10.0  # progress line interval within a cell
    config.compilation_cache_dir = 'auto'  # JAX's persistent compilation cache, so a second run compiles nothing:
                                          # 'auto' = $XDG_CACHE_HOME (else ~/.cache)/dps_jax/jax_compilation_cache;
                                          # a folder; '' = off
    return config


def paper_study_config(**workload: Any):
    """base_study_config with the reference study's grid and protocol, then `workload` on top.

    Grid: sparsities 0 / 0.5 / 0.7 / 0.9 (SNIP) x batch sizes 2 .. 16384; 100 Sobol trials per
    cell; a whole-validation check every 100 steps; until='all', so that every trial's status and
    steps are recorded, as the reference does.
    """
    config = base_study_config()
    config.sparsities = (0.0, 0.5, 0.7, 0.9)
    config.batch_sizes = tuple(2 ** k for k in range(1, 15))
    config.num_trials = 100
    config.check_every = 100
    config.until = 'all'
    unknown = sorted(set(workload) - set(config.keys()))
    if unknown:
        raise ConfigError(f'unknown config fields {unknown}')
    config.update(workload)
    return config


def _require_sequence(config: Any, field: str, what: str = 'the grid has no cells') -> tuple:
    value = _get(config, field)
    if isinstance(value, (str, bytes)) or not hasattr(value, '__iter__'):
        raise ConfigError(f'config.{field}={value!r} must be a list')
    value = tuple(value)
    if not value:
        raise ConfigError(f'config.{field} is empty: {what}')
    return value


def validate_study_config(config: Any, num_train_examples: int | None = None) -> None:
    """Checks every field of a study config; with the training split size, also the batch sizes."""
    _validate_workload(config)
    _require_snip_examples(config, num_train_examples)
    if 'model_digest' in config and not isinstance(config.model_digest, str):  # optional: older configs lack it
        raise ConfigError(f"config.model_digest={config.model_digest!r} must be a text ('' = filled in by the study)")
    for index, sparsity in enumerate(_require_sequence(config, 'sparsities')):
        require_float({f'sparsities[{index}]': sparsity}, f'sparsities[{index}]', 0.0, 1.0, high_open=True)
    if len(set(config.sparsities)) != len(config.sparsities):
        raise ConfigError(f'config.sparsities={tuple(config.sparsities)!r} has duplicates')
    for index, batch_size in enumerate(_require_sequence(config, 'batch_sizes')):
        field = f'batch_sizes[{index}]'
        require_int({field: batch_size}, field, minimum=1)
        if num_train_examples is not None and batch_size > num_train_examples:
            raise ConfigError(f'config.{field}={batch_size} is larger than the training split '
                              f'({num_train_examples} examples)')
    if len(set(config.batch_sizes)) != len(config.batch_sizes):
        raise ConfigError(f'config.batch_sizes={tuple(config.batch_sizes)!r} has duplicates')
    space = _validate_search_space(config)
    searched = _require_sequence(config, 'search_names', what='nothing is searched')
    for index, name in enumerate(searched):
        require_choice({f'search_names[{index}]': name}, f'search_names[{index}]', tuple(space))
    if len(set(searched)) != len(searched):
        raise ConfigError(f'config.search_names={searched!r} has duplicates')
    unused = {'momentum': config.optimizer == 'sgd', 'decay_steps': config.schedule == 'constant',
              'end_learning_rate_factor': config.schedule == 'constant'}
    for name in searched:
        if unused.get(name):
            raise ConfigError(f"config.search_names searches {name!r}, which optimizer {config.optimizer!r} with "
                              f"schedule {config.schedule!r} does not use")
    require_int(config, 'num_trials', minimum=1)
    require_choice(config, 'until', ('first', 'all'))
    require_int(config, 'trials_per_group', minimum=0)
    require_float(config, 'memory_fraction', 0.0, 1.0, low_open=True)
    require_int(config, 'eval_chunk_size', minimum=0)
    for field in ('compaction', 'per_trial_data_order', 'plan_only', 'overwrite', 'allow_environment_change'):
        if not isinstance(_get(config, field), bool):
            raise ConfigError(f'config.{field}={_get(config, field)!r} must be True or False')
    if config.per_trial_data_order and config.data_seed + config.num_trials - 1 > MAX_SEED:
        raise ConfigError(f'config.data_seed={config.data_seed} must be <= {MAX_SEED - config.num_trials + 1} with '
                          f'config.per_trial_data_order: trial i takes seed data_seed + i, at most {MAX_SEED}')
    require_float(config, 'progress_every_seconds', 0.0, float('inf'), high_open=True)
    _validate_smoothness(config, num_train_examples)
    mesh = _get(config, 'mesh')
    for field, minimum in (('trial', 0), ('data', 1)):
        require_int({f'mesh.{field}': _get(mesh, field)}, f'mesh.{field}', minimum=minimum)
    require_int(config, 'checkpoint_every', minimum=0)
    _require_cache_dir(config)
    if not isinstance(_get(config, 'cells'), str):
        raise ConfigError(f"config.cells={config.cells!r} must be a string like '0.9_64,0_128'")


def _validate_search_space(config: Any) -> tuple[str, ...]:
    """Checks every entry of config.search_space, searched or not; returns its names."""
    from dps_jax import search

    space = _get(config, 'search_space')
    if not hasattr(space, 'items'):
        raise ConfigError(f'config.search_space={space!r} must be a dict of {{name: {{low, high, scale}}}}')
    for name, entry in space.items():
        field = f'search_space.{name}'
        if name not in METAPARAMETER_INTERVALS:
            raise ConfigError(f'config.{field} is not a metaparameter; accepted: {", ".join(METAPARAMETER_INTERVALS)}')
        if not hasattr(entry, 'items'):
            raise ConfigError(f'config.{field}={entry!r} must be a dict with {", ".join(search.PARAMETER_FIELDS)}')
        unknown = sorted(set(entry.keys()) - set(search.PARAMETER_FIELDS))
        if unknown:
            raise ConfigError(f'config.{field} has unknown fields {", ".join(unknown)}; accepted: '
                              f'{", ".join(search.PARAMETER_FIELDS)}')
        missing = [key for key in search.PARAMETER_FIELDS if key not in entry]
        if missing:
            raise ConfigError(f'config.{field}.{missing[0]} is missing')
        parameter = search.Parameter(*(entry[key] for key in search.PARAMETER_FIELDS))
        problem = search.range_problem(parameter)
        if problem is not None:
            key, why = problem
            raise ConfigError(f'config.{field}.{key}={getattr(parameter, key)!r} is not accepted: {why}')
        interval = METAPARAMETER_INTERVALS[name]
        for key in ('low', 'high'):
            if not interval.holds(getattr(parameter, key)):
                raise ConfigError(f'config.{field}.{key}={getattr(parameter, key)!r} is outside {interval.text()}, '
                                  f'the values the optimizer accepts for {name}')
    return tuple(name for name in METAPARAMETER_INTERVALS if name in space)  # in the reference's order


def _validate_smoothness(config: Any, num_train_examples: int | None) -> None:
    """The smoothness and noise-scale fields: intervals on the check grid, batch sizes in order."""
    check_every = config.check_every
    for field in ('lipschitz_every', 'noise_scale_every'):
        every = require_int(config, field, minimum=0)
        if every % check_every:
            raise ConfigError(f'config.{field}={every} must be 0 (off) or a multiple of '
                              f'config.check_every={check_every}')
    examples = require_int(config, 'lipschitz_examples', minimum=0)
    if num_train_examples is not None and examples > num_train_examples:
        raise ConfigError(f'config.lipschitz_examples={examples} is larger than the training split '
                          f'({num_train_examples} examples)')
    sizes = _require_sequence(config, 'noise_scale_batch_sizes', what='it needs (small, big)')
    for index, size in enumerate(sizes):
        require_int({f'noise_scale_batch_sizes[{index}]': size}, f'noise_scale_batch_sizes[{index}]', minimum=1)
    if len(sizes) != 2 or sizes[0] >= sizes[1]:
        raise ConfigError(f'config.noise_scale_batch_sizes={sizes!r} must be two batch sizes (small, big) '
                          f'with small < big')
    require_int(config, 'noise_scale_draws', minimum=1)
    require_int(config, 'smoothness_chunk_size', minimum=1)
