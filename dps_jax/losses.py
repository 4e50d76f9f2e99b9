"""Losses and error counts shared by training, evaluation and pruning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy; logits (batch, classes), int labels (batch,), optional 0/1 weights."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def error_count(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Number of examples whose arg-max prediction differs from the label (int32 scalar).

    A non-finite logit row counts as an error, so a diverged network never looks accurate.
    """
    wrong = jnp.argmax(logits, axis=-1) != labels
    non_finite = ~jnp.all(jnp.isfinite(logits), axis=-1)
    return jnp.sum(wrong | non_finite, dtype=jnp.int32)
