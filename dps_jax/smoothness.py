"""Smoothness along training and the gradient noise scale, for ONE trial (vmap them for N).

- `lipschitz_estimate`: the reference estimator of the Lipschitz constant of the gradient from
  two consecutive iterates, L = max over gamma of |g(w_prev + gamma D) - g(w_prev)| / |gamma D|,
  with g the exact gradient of the masked network over a whole split (summed in chunks). The
  ten gradients (gamma = 0 and the nine gammas) are taken in ONE pass over the data: every chunk
  is pushed through the network at the ten points at once (a vmap over points).
- `noise_scale_estimate`: McCandlish et al.'s B_simple = tr(Sigma) / |G|^2 from the squared norms
  of mini-batch gradients at two batch sizes, with their unbiased estimators; the two norms are
  averaged over several draws before the estimators divide.

`Measurements` says what the engine measures and how often; the engine calls the vmapped
programs of `measurement_programs` between training chunks, on copies of the trial states, so a
trial's trajectory is the same with the measurements on or off.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dps_jax import precision, trial

GAMMAS = tuple(k / 10 for k in range(1, 10))  # 0.1, ..., 0.9: the reference's interpolation points

ExampleLosses = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, images, labels) -> (batch,)


def make_example_losses(apply_fn: trial.ApplyFn) -> ExampleLosses:
    """Per-example softmax cross-entropy of a network: (params, images, labels) -> losses (batch,).

    Traced at precision.ESTIMATOR_PRECISION whatever the training precision: both estimates are
    differences of nearly equal numbers. Give an `apply_fn` that sets no precision of its own
    (an inner setting would win).
    """

    def example_losses(params, images, labels):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, images), labels)

    return precision.at_matmul_precision(example_losses, precision.ESTIMATOR_PRECISION)


def chunk_layout(num_examples: int, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions (chunks, chunk), weights (chunks, chunk)) covering 0..num_examples-1 once.

    The last chunk is padded with position 0 at weight 0, so every chunk has one static shape.
    """
    if num_examples < 1 or chunk_size < 1:
        raise ValueError(f'need num_examples >= 1 and chunk_size >= 1, got {num_examples} and {chunk_size}')
    chunk_size = min(chunk_size, num_examples)
    num_chunks = math.ceil(num_examples / chunk_size)
    positions = np.zeros(num_chunks * chunk_size, np.int32)
    positions[:num_examples] = np.arange(num_examples)
    weights = np.zeros(num_chunks * chunk_size, np.float32)
    weights[:num_examples] = 1.0
    return positions.reshape(num_chunks, chunk_size), weights.reshape(num_chunks, chunk_size)


def gradient_sums(example_losses: ExampleLosses, points: Any, mask: Any, images: jax.Array,
                  labels: jax.Array, indices: jax.Array, weights: jax.Array) -> Any:
    """Sum over examples of the masked network's loss gradient, at every point of `points`.

    points: params pytree with a leading axis P; indices, weights: (chunks, chunk) example
    indices into images/labels and their weights (0 = padding). Returns a pytree like `points`.
    One pass over the chunks; each chunk is evaluated at all P points at once.
    """

    def weighted_loss_sum(params, chunk_images, chunk_labels, chunk_weights):
        per_example = example_losses(trial.apply_mask(params, mask), chunk_images, chunk_labels)
        # where, not a product: a padded example of a broken network must not turn the sum into nan.
        return jnp.sum(jnp.where(chunk_weights > 0, per_example * chunk_weights, 0.0))

    gradient_at_points = jax.vmap(jax.grad(weighted_loss_sum), in_axes=(0, None, None, None))

    def add_chunk(total, chunk):
        chunk_indices, chunk_weights = chunk
        gradients = gradient_at_points(points, images[chunk_indices], labels[chunk_indices], chunk_weights)
        return jax.tree.map(jnp.add, total, gradients), None

    total, _ = jax.lax.scan(add_chunk, jax.tree.map(jnp.zeros_like, points), (indices, weights))
    return total


def _squared_norms(tree: Any) -> jax.Array:
    """Squared Euclidean norm of each row of a pytree with a leading axis P: (P,)."""
    return sum(jnp.sum(jnp.square(leaf).reshape(leaf.shape[0], -1), axis=1) for leaf in jax.tree.leaves(tree))


class LipschitzEstimate(NamedTuple):
    """The reference smoothness estimate at one pair of iterates."""
    lipschitz: jax.Array  # float32: max over gammas of `ratios`
    ratios: jax.Array     # float32 (9,): |g(w_prev + gamma D) - g(w_prev)| / |gamma D| per gamma


def lipschitz_estimate(example_losses: ExampleLosses, previous_params: Any, params: Any, mask: Any,
                       images: jax.Array, labels: jax.Array, chunk_size: int,
                       gammas: tuple[float, ...] = GAMMAS) -> LipschitzEstimate:
    """L between the iterates w_prev = previous_params and w = params, with the gradient over ALL
    of images/labels (the mean loss, exactly, summed in chunks of `chunk_size` examples).

    D = w - w_prev; the ten gradients (at w_prev and at w_prev + gamma D) share one pass over the
    data. If D = 0 (a trial that did not move) the ratios are nan.
    """
    num_examples = int(images.shape[0])
    positions, weights = chunk_layout(num_examples, chunk_size)
    gamma = jnp.asarray((0.0,) + tuple(gammas), jnp.float32)
    direction = jax.tree.map(jnp.subtract, params, previous_params)
    points = jax.tree.map(
        lambda start, step: start[None] + gamma.reshape((-1,) + (1,) * start.ndim) * step[None],
        previous_params, direction)
    sums = gradient_sums(example_losses, points, mask, images, labels, jnp.asarray(positions), jnp.asarray(weights))
    gradients = jax.tree.map(lambda total: total / num_examples, sums)
    changes = jax.tree.map(lambda g: g[1:] - g[:1], gradients)
    direction_norm = jnp.sqrt(_squared_norms(jax.tree.map(lambda leaf: leaf[None], direction))[0])
    ratios = jnp.sqrt(_squared_norms(changes)) / (gamma[1:] * direction_norm)
    return LipschitzEstimate(jnp.max(ratios), ratios)


class NoiseScale(NamedTuple):
    """Gradient noise scale from mini-batch gradient norms at a small and a big batch size."""
    b_simple: jax.Array               # tr(Sigma) / |G|^2 (meaningless when |G|^2 <= 0: noise dominates)
    gradient_norm_squared: jax.Array  # unbiased |G|^2 of the mean gradient over the split
    trace_covariance: jax.Array       # unbiased tr(Sigma), Sigma the per-example gradient covariance
    small_norm_squared: jax.Array     # mean over draws of |G_small|^2
    big_norm_squared: jax.Array       # mean over draws of |G_big|^2


def noise_scale_from_norms(small_norm_squared, big_norm_squared, small_batch: int, big_batch: int) -> NoiseScale:
    """The unbiased estimators of REFERENCE.md from mean squared gradient norms at B_s < B_b."""
    gradient_norm_squared = (big_batch * big_norm_squared - small_batch * small_norm_squared) / (big_batch - small_batch)
    trace_covariance = (small_norm_squared - big_norm_squared) / (1.0 / small_batch - 1.0 / big_batch)
    return NoiseScale(trace_covariance / gradient_norm_squared, gradient_norm_squared, trace_covariance,
                      small_norm_squared, big_norm_squared)


def noise_scale_estimate(example_losses: ExampleLosses, params: Any, mask: Any, images: jax.Array,
                         labels: jax.Array, key: jax.Array, small_batch: int, big_batch: int, draws: int,
                         chunk_size: int) -> NoiseScale:
    """B_simple of the masked network at `params` over the split images/labels.

    Each draw takes a small and a big batch, examples drawn uniformly WITH replacement (so that
    E|G_B|^2 = |G|^2 + tr(Sigma) / B holds exactly for the split's empirical distribution), and
    takes each batch's mean gradient in chunks of `chunk_size`. The squared norms are averaged
    over the `draws` before the estimators combine them.
    """
    if not 1 <= small_batch < big_batch:
        raise ValueError(f'need 1 <= small batch < big batch, got {small_batch} and {big_batch}')
    num_examples = int(images.shape[0])
    layouts = {size: tuple(jnp.asarray(a) for a in chunk_layout(size, chunk_size)) for size in (small_batch, big_batch)}
    one_point = jax.tree.map(lambda leaf: leaf[None], params)

    def batch_norm_squared(key, size):
        examples = jax.random.randint(key, (size,), 0, num_examples)
        positions, weights = layouts[size]
        sums = gradient_sums(example_losses, one_point, mask, images, labels, examples[positions], weights)
        return _squared_norms(sums)[0] / float(size) ** 2  # a float: size ** 2 passes int32 from 46,341

    def one_draw(key):
        small_key, big_key = jax.random.split(key)
        return batch_norm_squared(small_key, small_batch), batch_norm_squared(big_key, big_batch)

    small, big = jax.lax.map(one_draw, jax.random.split(key, draws))
    return noise_scale_from_norms(small.mean(), big.mean(), small_batch, big_batch)


class Measurements(NamedTuple):
    """What the engine measures along training; every interval is in steps, 0 = off.

    L uses the gradient over the first `lipschitz_examples` examples of the training split (0:
    all of it, as the reference does); the noise scale draws its batches from the whole split.
    Hashable, so the compiled programs are cached on it.
    """
    example_losses: ExampleLosses
    lipschitz_every: int = 0
    noise_scale_every: int = 0
    noise_scale_batch_sizes: tuple[int, int] = (64, 1024)
    noise_scale_draws: int = 16
    lipschitz_examples: int = 0
    chunk_size: int = 100
    seed: int = 0

    @property
    def active(self) -> bool:
        return bool(self.lipschitz_every or self.noise_scale_every)

    @property
    def examples_at_once(self) -> int:
        """Examples one trial's measurement takes through a forward and backward pass at once: a
        chunk at each of the Lipschitz estimate's ten points, or one chunk of a noise-scale batch."""
        if self.lipschitz_every:
            return (len(GAMMAS) + 1) * self.chunk_size
        return self.chunk_size if self.noise_scale_every else 0

    def noise_scale_key(self, step: int) -> jax.Array:
        """The draws' key at `step`: the same batches for every trial of the cell at that step."""
        return jax.random.fold_in(jax.random.PRNGKey(self.seed), step)


class MeasurementPrograms(NamedTuple):
    lipschitz: Callable    # (previous_params, params, mask, images, labels) -> LipschitzEstimate per slot
    noise_scale: Callable  # (params, mask, images, labels, key) -> NoiseScale per slot


@functools.lru_cache(maxsize=16)
def measurement_programs(measurements: Measurements) -> MeasurementPrograms:
    """The jitted measurements vmapped over the leading slot axis of params and mask."""
    lipschitz = jax.vmap(
        lambda previous, params, mask, images, labels: lipschitz_estimate(
            measurements.example_losses, previous, params, mask, images, labels, measurements.chunk_size),
        in_axes=(0, 0, 0, None, None))
    small, big = measurements.noise_scale_batch_sizes
    noise_scale = jax.vmap(
        lambda params, mask, images, labels, key: noise_scale_estimate(
            measurements.example_losses, params, mask, images, labels, key, small, big,
            measurements.noise_scale_draws, measurements.chunk_size),
        in_axes=(0, 0, None, None, None))
    return MeasurementPrograms(jax.jit(lipschitz), jax.jit(noise_scale))


def validate_measurements(measurements: Measurements, check_every: int, num_train_examples: int) -> None:
    """ValueError naming the field if the measurements cannot run with this engine setup."""
    for field in ('lipschitz_every', 'noise_scale_every'):
        every = getattr(measurements, field)
        if every < 0 or every % check_every:
            raise ValueError(f'{field}={every} must be 0 (off) or a positive multiple of check_every={check_every}')
    small, big = measurements.noise_scale_batch_sizes
    if measurements.noise_scale_every and not 1 <= small < big:
        raise ValueError(f'noise_scale_batch_sizes={measurements.noise_scale_batch_sizes} must be (small, big) '
                         f'with 1 <= small < big')
    if measurements.noise_scale_draws < 1:
        raise ValueError(f'noise_scale_draws={measurements.noise_scale_draws} must be >= 1')
    if not 0 <= measurements.lipschitz_examples <= num_train_examples:
        raise ValueError(f'lipschitz_examples={measurements.lipschitz_examples} must be in [0, {num_train_examples}] '
                         f'(the training split)')
    if measurements.chunk_size < 1:
        raise ValueError(f'chunk_size={measurements.chunk_size} must be >= 1')
