"""What a config trains: the data (resident on the device), the model and the optimizer."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from dps_jax import config as config_lib
from dps_jax import data, network as network_lib, optim, precision


class Workload(NamedTuple):
    """A config's data, network and optimizer, loaded once and shared by every trial and cell."""
    dataset: data.Dataset        # host copy (numpy), for sizes and descriptions
    model: Any                   # flax Module
    network: network_lib.Network  # the model's pure functions at the config's matmul precision and compute dtype
    eval_network: network_lib.Network  # the same for validation checks, convolving by config.eval_convolution
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


def eval_convolution(config: ml_collections.ConfigDict) -> str:
    """How validation checks convolve: config.eval_convolution, or config.convolution where that
    field is '' or absent."""
    return config.get('eval_convolution', '') or convolution(config)


def describe_convolutions(config: ml_collections.ConfigDict) -> str | None:
    """A log line naming training's and the checks' convolutions; None when both are im2col (the default)."""
    if convolution(config) == eval_convolution(config) == 'im2col':
        return None
    return f'convolutions: training {convolution(config)}, checks {eval_convolution(config)}'


def describe(config: ml_collections.ConfigDict, work: Workload) -> str:
    """What a study or trial logs of its workload: the dataset, and its convolutions where not the default."""
    return '\n'.join(line for line in (data.describe(work.dataset), describe_convolutions(config)) if line)


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
    eval_network = (network if eval_convolution(config) == convolution(config)
                    else built('eval_convolution', eval_convolution(config))[1])
    return Workload(
        dataset=dataset, model=module, network=network, eval_network=eval_network,
        optimizer=optim.make_optimizer(config.optimizer, config.schedule),
        train_images=jnp.asarray(dataset.train.images), train_labels=jnp.asarray(dataset.train.labels),
        val_images=jnp.asarray(dataset.val.images), val_labels=jnp.asarray(dataset.val.labels))
