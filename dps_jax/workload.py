"""What a config trains: the data (resident on the device), the model and the optimizer."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from dps_jax import config as config_lib
from dps_jax import data, models, network as network_lib, optim, precision, trial


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


def resolved_numerics(config: ml_collections.ConfigDict, work: Workload, batch_sizes: Sequence[int]) -> dict:
    """What decides a run's arithmetic as this backend resolves it, for its provenance: the
    convolutions of training and checks, and the examples each forward and backward pass of a
    training step takes at each batch size (trial.examples_per_pass: passes of at most 32 on a CPU,
    the whole batch on an accelerator; a step's gradient is the mean of its passes')."""
    per_pass = trial.configured_per_pass(config)
    return {'convolution': convolution(config), 'eval_convolution': work.eval_convolution,
            'examples_per_pass': {str(size): trial.examples_per_pass(size, work.network) if per_pass is None
                                  else min(int(size), per_pass) for size in batch_sizes}}


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
