"""What a config trains: the data (resident on the device), the model and the optimizer."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from dps_jax import config as config_lib
from dps_jax import data, engine, models, network as network_lib, optim, parallel, precision, trial


class Workload(NamedTuple):
    """A config's data, network and optimizer, loaded once and shared by every trial and cell."""
    dataset: data.Dataset        # host copy (numpy), for sizes and descriptions
    model: Any                   # flax Module
    network: network_lib.Network  # the model's pure functions at the config's matmul precision and compute dtype
    eval_network: network_lib.Network  # the same for validation checks, convolving by config.eval_convolution
    eval_convolution: str        # how eval_network convolves (models.CONVOLUTIONS; eval_convolution(config))
    optimizer: Any               # optim.make_optimizer(...)
    train_images: jax.Array      # device-resident splits
    train_labels: jax.Array
    val_images: jax.Array
    val_labels: jax.Array

    def network_at(self, matmul_precision: str | None) -> network_lib.Network:
        """The model's network in float32 at a matmul precision (None: the ambient one): pruning
        scores and the smoothness estimators compute in float32 whatever config.compute_dtype."""
        return network_lib.from_module(self.model, self.example_shape, matmul_precision)

    def snip_split(self, snip_examples: int) -> tuple[jax.Array, jax.Array]:
        """(images, labels) pruning scores are computed on: the training split's first `snip_examples`
        (config.snip_examples; 0 = the whole split, the reference)."""
        count = snip_examples or self.num_train_examples
        return self.train_images[:count], self.train_labels[:count]

    @property
    def example_shape(self) -> tuple:
        return tuple(self.dataset.train.images.shape[1:])

    @property
    def num_train_examples(self) -> int:
        return int(self.dataset.train.images.shape[0])


def model_apply(model: Any, matmul_precision: str | None = None) -> Callable:
    """(params, images) -> logits of a flax Module without state, traced at `matmul_precision` (dps_jax.precision)."""
    return precision.at_matmul_precision(lambda params, images: model.apply({'params': params}, images),
                                         matmul_precision)


def compute_dtype(config: ml_collections.ConfigDict) -> str:
    """config.compute_dtype; 'float32' for a config written before the field existed."""
    return config.get('compute_dtype', 'float32')


def convolution(config: ml_collections.ConfigDict) -> str:
    """config.convolution; 'im2col' for a config written before the field existed."""
    return config.get('convolution', 'im2col')


# How the built-in models' checks convolve under config.eval_convolution = 'auto': XLA's own convolution,
# which writes no im2col patches. A check is a forward pass only; checked by it, trials in turn on a
# 2-core Intel Xeon counted the same errors 2.1-2.3x faster than by im2col, and on an H200 (vmapped, cuDNN;
# an earlier session's run) a real cell ran 1.25x faster end to end (README, "Checks on a CPU" and "Checks
# on an accelerator").
AUTO_EVAL_CONVOLUTION = 'xla'


def is_built_in(config: ml_collections.ConfigDict) -> bool:
    """Whether config.model names one of the built-in models (models.MODELS)."""
    return config.get('model') in models.MODELS


def eval_convolution(config: ml_collections.ConfigDict, built_in: bool | None = None) -> str:
    """How validation checks convolve (models.CONVOLUTIONS), from config.eval_convolution: 'auto' is
    AUTO_EVAL_CONVOLUTION for a built-in model and config.convolution for a model of one's own; ''
    (and a config written before the field) is config.convolution. built_in: whether the model is
    built in (None: is_built_in(config))."""
    chosen = config.get('eval_convolution', '')
    if chosen != 'auto':
        return chosen or convolution(config)
    if built_in is None:
        built_in = is_built_in(config)
    return AUTO_EVAL_CONVOLUTION if built_in else convolution(config)


def with_resolved_checks(config: ml_collections.ConfigDict, work: Workload) -> ml_collections.ConfigDict:
    """config, or a copy whose eval_convolution names the convolution its checks run (work.eval_convolution):
    what 'auto' or '' resolved to, recorded in the results and compared on resume."""
    if config.get('eval_convolution') == work.eval_convolution:
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval_convolution = work.eval_convolution
    return config


class MemoryEstimate(NamedTuple):
    """What ONE trial's training step holds in device memory, and the pass size that fits it."""
    bytes_per_example: float | None  # engine.train_bytes_per_example (None: not measured, or the backend gives none)
    budget_bytes: int                # per device: config.memory_fraction of its memory (engine.default_memory_bytes)
    state_bytes: int                 # one trial's state (params, mask, optimizer state)
    pass_limit: int | None           # trial.pass_limit: the most examples one pass may take (None: no limit)
    data_devices: int = 1            # the mesh's 'data' axis, which every pass is split over


def memory_estimate(config: ml_collections.ConfigDict, work: Workload, mesh: Any = None,
                    groups: bool = True) -> MemoryEstimate:
    """One trial's memory figures, measured once (a dense trial at seed 0 compiled at two batch
    sizes). With config.batch_in_passes they bound the pass size on every backend, so that the
    passes a batch takes do not depend on other settings; they also size the groups of trials
    (`groups`: a study's, when config.trials_per_group is 0) and an accelerator's evaluation chunk,
    and warn of a batch an accelerator must take whole. Not measured where nothing uses them (on a
    CPU with batch_in_passes False: a single trial, or a study with trials_per_group set)."""
    in_passes = trial.configured_per_pass(config) is None
    accelerator = jax.default_backend() != 'cpu'
    budget = engine.default_memory_bytes(config.get('memory_fraction', 0.5))  # absent from single-trial configs
    wanted = in_passes or accelerator or (groups and not config.trials_per_group)
    data_devices = parallel.data_count(mesh)
    if not wanted:
        return MemoryEstimate(None, budget, 0, None, data_devices)
    params, model_state = trial.init_variables(work.network, work.example_shape, 0)
    one = trial.new_trial_state(params, jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params),
                                work.optimizer, {}, model_state, trial.dropout_key(0))
    state_bytes = engine.tree_bytes(one)
    per_example = engine.train_bytes_per_example(
        trial.make_train_step(work.network, work.optimizer, per_pass=trial.WHOLE_BATCH), one, work.example_shape)
    limit = trial.pass_limit(per_example, budget, state_bytes, data_devices) if in_passes else None
    return MemoryEstimate(per_example, budget, state_bytes, limit, data_devices)


def examples_per_pass(config: ml_collections.ConfigDict, work: Workload, batch_size: int,
                      memory: MemoryEstimate | None = None) -> int:
    """The examples each forward and backward pass of the config's training step takes at
    `batch_size` (trial.examples_per_pass within the `memory` estimate's limit; the whole batch
    when config.batch_in_passes is False)."""
    per_pass = trial.configured_per_pass(config)
    if per_pass is not None:
        return min(int(batch_size), per_pass)
    return trial.examples_per_pass(int(batch_size), work.network, limit=memory and memory.pass_limit,
                                   data_devices=memory.data_devices if memory else 1)


def passes_from_memory(config: ml_collections.ConfigDict, work: Workload, batch_size: int,
                       memory: MemoryEstimate | None) -> int | None:
    """The examples per pass at `batch_size` when the memory estimate, rather than the backend's
    own rule, decides them (a batch too large for the device), else None. The pass size then
    depends on the device's memory and memory_fraction, and float rounding and dropout draws with
    it: a mid-cell checkpoint records it, so that a resume does not mix two pass sizes."""
    in_pass = examples_per_pass(config, work, batch_size, memory)
    return in_pass if in_pass != examples_per_pass(config, work, batch_size) else None


def make_train_step(config: ml_collections.ConfigDict, work: Workload, memory: MemoryEstimate | None = None
                    ) -> Callable:
    """The config's training step for one trial (trial.make_train_step), its batches taken in the
    passes examples_per_pass says."""
    return trial.make_train_step(work.network, work.optimizer, trial.configured_per_pass(config),
                                 memory and memory.pass_limit, memory.data_devices if memory else 1)


def describe_passes(memory: MemoryEstimate, batch_size: int, in_pass: int, has_state: bool,
                    budget: str = 'config.memory_fraction') -> str | None:
    """A log line when one trial's step at `batch_size` does not fit the memory budget (named as
    `budget` says): the passes of `in_pass` examples it takes instead, or (a batch it must take
    whole) a warning."""
    if not memory.bytes_per_example:
        return None
    needed = memory.bytes_per_example * batch_size / memory.data_devices + 4 * memory.state_bytes
    if needed <= memory.budget_bytes:
        return None
    what = (f'  memory: one trial\'s step at batch {batch_size} needs about {_bytes(needed)} per device, over the '
            f'{_bytes(memory.budget_bytes)} budget ({budget})')
    if in_pass < batch_size:
        return f'{what}: it takes the batch in {batch_size // in_pass} passes of {in_pass} examples (the mean gradient)'
    why = 'a model with mutable collections' if has_state else 'config.batch_in_passes is False'
    return (f'{what}, and takes its batch whole ({why}): it may run out of memory (a smaller batch size, or '
            f'more devices on the mesh\'s \'data\' axis)')


def _bytes(count: float) -> str:
    """'40.2 GB', '12.9 MB', '3.1 kB' (decimal units)."""
    for unit, size in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if count >= size:
            return f'{count / size:.1f} {unit}'
    return f'{count:.0f} bytes'


def resolved_numerics(config: ml_collections.ConfigDict, work: Workload, batch_sizes: Sequence[int],
                      memory: MemoryEstimate | None = None) -> dict:
    """What decides a run's arithmetic as this backend resolves it, for its provenance: the
    convolutions of training and checks, and the examples each forward and backward pass of a
    training step takes at each batch size (examples_per_pass: passes of at most 32 on a CPU,
    the whole batch on an accelerator unless it exceeds the `memory` estimate's limit; a step's
    gradient is the mean of its passes')."""
    return {'convolution': convolution(config), 'eval_convolution': work.eval_convolution,
            'examples_per_pass': {str(size): examples_per_pass(config, work, size, memory)
                                  for size in batch_sizes}}


def describe_convolutions(training: str, checks: str) -> str | None:
    """A log line naming training's and the checks' convolutions; None when both are im2col."""
    if training == checks == 'im2col':
        return None
    return f'convolutions: training {training}, checks {checks}'


def describe(config: ml_collections.ConfigDict, work: Workload) -> str:
    """What a study or trial logs of its workload: the dataset, and its convolutions unless both are im2col."""
    return '\n'.join(line for line in (data.describe(work.dataset),
                                       describe_convolutions(convolution(config), work.eval_convolution)) if line)


def pallas_field(config: ml_collections.ConfigDict) -> str | None:
    """The first convolution field that makes `config` run the Pallas kernels ('convolution' or
    'eval_convolution'), or None."""
    for field in ('convolution', 'eval_convolution'):
        if config.get(field, '') == 'pallas':
            return field
    return None


def require_backend(config: ml_collections.ConfigDict) -> None:
    """Refuses, naming the field, a config that asks for the Pallas kernels off a GPU."""
    field = pallas_field(config)
    if field and jax.default_backend() != 'gpu':
        raise config_lib.ConfigError(f"config.{field}='pallas' runs Triton kernels on a GPU; this backend is "
                                     f"{jax.default_backend()}: use 'im2col'")


def load_workload(config: ml_collections.ConfigDict, model: Any = None, dataset: data.Dataset | None = None
                  ) -> Workload:
    """Loads the config's dataset, puts its train and validation splits on the device, builds the
    network and the (masked, TF1-style) optimizer. Training, evaluation and SNIP run at
    config.matmul_precision; training and evaluation in config.compute_dtype (float32 if absent).

    model: a flax Module to use instead of config.model; dataset: a data.Dataset (e.g.
    data.from_arrays) to use instead of config.dataset.
    """
    require_backend(config)
    if dataset is None:
        if config.dataset.startswith(config_lib.ARRAYS_PREFIX):
            raise data.DataError(f'config.dataset={config.dataset!r} names a Dataset object given to the Python API; '
                                 f'give it again (dps_jax.run_study(config, workdir, dataset=...))')
        dataset = data.load(config.dataset, config.data_dir or None, config.data_source)
    example_shape = tuple(dataset.train.images.shape[1:])
    def built(field: str, convolution_name: str) -> tuple[Any, network_lib.Network]:
        module = network_lib.resolve_module(config.model if model is None else model, dataset.num_classes,
                                            convolution_name, field)
        return module, network_lib.from_module(module, example_shape, config.matmul_precision, compute_dtype(config))

    module, network = built('convolution', convolution(config))
    name = network_lib.describe_module(module) if model is not None else repr(config.model)
    network_lib.check_logits(network, example_shape, dataset.num_classes, name)
    checks = eval_convolution(config, built_in=model is None and is_built_in(config))
    eval_network = network if checks == convolution(config) else built('eval_convolution', checks)[1]
    return Workload(
        dataset=dataset, model=module, network=network, eval_network=eval_network, eval_convolution=checks,
        optimizer=optim.make_optimizer(config.optimizer, config.schedule),
        train_images=jnp.asarray(dataset.train.images), train_labels=jnp.asarray(dataset.train.labels),
        val_images=jnp.asarray(dataset.val.images), val_labels=jnp.asarray(dataset.val.labels))
