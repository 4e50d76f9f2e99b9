"""What a config trains: the data (resident on the device), the model and the optimizer."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from dps_jax import data, models, optim, precision


class Workload(NamedTuple):
    """A config's data, network and optimizer, loaded once and shared by every trial and cell."""
    dataset: data.Dataset        # host copy (numpy), for sizes and descriptions
    model: Any                   # flax Module
    apply_fn: Callable           # (params, images) -> logits, at the config's matmul precision
    optimizer: Any               # optim.make_optimizer(...)
    train_images: jax.Array      # device-resident splits
    train_labels: jax.Array
    val_images: jax.Array
    val_labels: jax.Array

    def apply_at(self, matmul_precision: str | None) -> Callable:
        """The model's (params, images) -> logits at another matmul precision (None: the ambient one)."""
        return model_apply(self.model, matmul_precision)

    @property
    def example_shape(self) -> tuple:
        return tuple(self.dataset.train.images.shape[1:])

    @property
    def num_train_examples(self) -> int:
        return int(self.dataset.train.images.shape[0])


def model_apply(model: Any, matmul_precision: str | None = None) -> Callable:
    """(params, images) -> logits of a flax Module, traced at `matmul_precision` (dps_jax.precision)."""
    return precision.at_matmul_precision(lambda params, images: model.apply({'params': params}, images),
                                         matmul_precision)


def load_workload(config: ml_collections.ConfigDict) -> Workload:
    """Loads the config's dataset, puts its train and validation splits on the device, builds the
    model and the (masked, TF1-style) optimizer. Training, evaluation and SNIP run at
    config.matmul_precision."""
    dataset = data.load(config.dataset, config.data_dir or None, config.data_source)
    model = models.get_model(config.model, dataset.num_classes)
    return Workload(
        dataset=dataset, model=model, apply_fn=model_apply(model, config.matmul_precision),
        optimizer=optim.make_optimizer(config.optimizer, config.schedule),
        train_images=jnp.asarray(dataset.train.images), train_labels=jnp.asarray(dataset.train.labels),
        val_images=jnp.asarray(dataset.val.images), val_labels=jnp.asarray(dataset.val.labels))
