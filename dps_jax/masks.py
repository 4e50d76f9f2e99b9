"""Pruning at initialization: SNIP, random and magnitude masks with one global top-k.

SNIP follows the reference study: the gradient of the mean cross-entropy with respect to an
all-ones mask c on every parameter (so g * w), SUMMED over the whole training split in batches
of 100; score = |sum| normalized by its total; keep the round(N * (1 - sparsity)) best.
Biases start at zero, so their score is exactly zero and they are the first to go.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import losses

METHODS = ('snip', 'random', 'magnitude')

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (params, images) -> logits


def validate_sparsity(sparsity: float) -> None:
    """Raises ValueError unless 0 <= sparsity < 1."""
    if not (isinstance(sparsity, (int, float, np.floating)) and 0.0 <= float(sparsity) < 1.0):
        raise ValueError(f'sparsity must be in [0, 1), got {sparsity!r}')


def num_kept(num_prunable: int, sparsity: float) -> int:
    """How many of `num_prunable` entries a global top-k keeps: round(N * (1 - sparsity)), at least 1."""
    validate_sparsity(sparsity)
    return max(1, int(round(num_prunable * (1.0 - float(sparsity)))))


def is_kernel(path: tuple, leaf: Any) -> bool:
    """Whether a parameter leaf is a weight kernel (named 'kernel'), not a bias."""
    del leaf
    last = path[-1]
    return getattr(last, 'key', getattr(last, 'name', None)) == 'kernel'


def prunable_tree(params: Any, kernels_only: bool = False) -> Any:
    """A pytree of Python bools: which leaves take part in the ranking."""
    if not kernels_only:
        return jax.tree.map(lambda _: True, params)
    return jax.tree_util.tree_map_with_path(is_kernel, params)


def mask_gradient_sum(apply_fn: ApplyFn, params: Any, images: jax.Array, labels: jax.Array,
                      batch_size: int = 100, dropout_key: jax.Array | None = None) -> Any:
    """Sum over batches of d(mean cross-entropy of the network with weights params * c)/dc at c = 1.

    images (n, H, W, C) and labels (n,) are a whole split; a last partial batch is its own mean.
    The result is a pytree like params; analytically it equals sum over batches of g * w.
    With a dropout_key, apply_fn takes (params, images, key) and batch i gets fold_in(key, i), so
    a network with dropout draws a fresh mask per batch, as in training.
    """
    num_examples = images.shape[0]
    if num_examples == 0:
        raise ValueError('SNIP needs at least one training example')
    ones = jax.tree.map(jnp.ones_like, params)

    def batch_mask_gradient(batch_images, batch_labels, batch_index):
        def loss_of_mask(mask):
            masked = jax.tree.map(jnp.multiply, params, mask)
            logits = (apply_fn(masked, batch_images) if dropout_key is None
                      else apply_fn(masked, batch_images, jax.random.fold_in(dropout_key, batch_index)))
            return losses.cross_entropy(logits, batch_labels)
        return jax.grad(loss_of_mask)(ones)

    num_full = num_examples // batch_size
    total = jax.tree.map(jnp.zeros_like, params)
    if num_full:
        full_images = images[:num_full * batch_size].reshape((num_full, batch_size) + images.shape[1:])
        full_labels = labels[:num_full * batch_size].reshape((num_full, batch_size))

        def accumulate(running, batch):
            return jax.tree.map(jnp.add, running, batch_mask_gradient(*batch)), None

        total, _ = jax.lax.scan(accumulate, total, (full_images, full_labels, jnp.arange(num_full)))
    if num_examples % batch_size:
        rest = batch_mask_gradient(images[num_full * batch_size:], labels[num_full * batch_size:], num_full)
        total = jax.tree.map(jnp.add, total, rest)
    return total


def snip_scores(apply_fn: ApplyFn, params: Any, images: jax.Array, labels: jax.Array,
                batch_size: int = 100, dropout_key: jax.Array | None = None) -> Any:
    """|summed mask gradient| normalized to sum 1 over all parameters (pytree like params);
    dropout_key as in mask_gradient_sum."""
    magnitude = jax.tree.map(jnp.abs, mask_gradient_sum(apply_fn, params, images, labels, batch_size, dropout_key))
    total = sum(jnp.sum(leaf) for leaf in jax.tree.leaves(magnitude))
    # An all-zero gradient (e.g. a dead network) would divide by zero; ranking is unchanged.
    total = jnp.where(total > 0, total, 1.0)
    return jax.tree.map(lambda leaf: leaf / total, magnitude)


def top_k_mask(scores: Any, sparsity: float, prunable: Any | None = None) -> Any:
    """Boolean mask keeping the round(N * (1 - sparsity)) highest scores over all prunable leaves.

    One global ranking over the concatenation of the leaves in pytree order; ties go to the lower
    flat index (lax.top_k's rule), so the mask is deterministic. Non-prunable leaves are kept whole.
    """
    if prunable is None:
        prunable = jax.tree.map(lambda _: True, scores)
    leaves, treedef = jax.tree.flatten(scores)
    prunable_leaves = treedef.flatten_up_to(prunable)
    num_prunable = sum(leaf.size for leaf, take in zip(leaves, prunable_leaves) if take)
    if num_prunable == 0:
        raise ValueError('no prunable parameters (kernels_only with a model without kernels?)')
    keep = num_kept(num_prunable, sparsity)
    # Non-prunable entries rank below every real score (scores are >= 0), so top-k never takes them.
    flat = jnp.concatenate([
        jnp.ravel(leaf).astype(jnp.float32) if take else jnp.full((leaf.size,), -1.0, jnp.float32)
        for leaf, take in zip(leaves, prunable_leaves)])
    _, kept_indices = jax.lax.top_k(flat, keep)
    flat_mask = jnp.zeros(flat.shape, dtype=bool).at[kept_indices].set(True)
    masks, offset = [], 0
    for leaf, take in zip(leaves, prunable_leaves):
        piece = flat_mask[offset:offset + leaf.size].reshape(leaf.shape)
        masks.append(piece if take else jnp.ones(leaf.shape, dtype=bool))
        offset += leaf.size
    return jax.tree.unflatten(treedef, masks)


def snip_mask(apply_fn: ApplyFn, params: Any, images: jax.Array, labels: jax.Array,
              sparsity: float, batch_size: int = 100, kernels_only: bool = False) -> Any:
    """SNIP mask over the whole split (bool pytree like params)."""
    scores = snip_scores(apply_fn, params, images, labels, batch_size)
    return top_k_mask(scores, sparsity, prunable_tree(params, kernels_only))


def random_mask(key: jax.Array, params: Any, sparsity: float, kernels_only: bool = False) -> Any:
    """A uniformly random mask with the same global kept count as SNIP."""
    return mask_from_scores(pruning_scores('random', key=key, params=params), params, sparsity, kernels_only)


def magnitude_mask(params: Any, sparsity: float, kernels_only: bool = False) -> Any:
    """Keep the largest |w| globally (at initialization: a data-free baseline)."""
    return mask_from_scores(pruning_scores('magnitude', key=None, params=params), params, sparsity, kernels_only)


def pruning_scores(method: str, *, key: jax.Array, params: Any, apply_fn: ApplyFn | None = None,
                   images: jax.Array | None = None, labels: jax.Array | None = None,
                   batch_size: int = 100, dropout_key: jax.Array | None = None) -> Any:
    """The per-entry scores a global top-k ranks (pytree like params); independent of sparsity,
    so one computation serves every sparsity of a study. dropout_key: see mask_gradient_sum."""
    if method not in METHODS:
        raise ValueError(f'unknown pruning method {method!r}; accepted: {", ".join(METHODS)}')
    if method == 'snip':
        if apply_fn is None or images is None or labels is None:
            raise ValueError("pruning method 'snip' needs apply_fn, images and labels")
        return snip_scores(apply_fn, params, images, labels, batch_size, dropout_key)
    if method == 'random':
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(treedef, [jax.random.uniform(k, leaf.shape) for k, leaf in zip(keys, leaves)])
    return jax.tree.map(jnp.abs, params)


def mask_from_scores(scores: Any, params: Any, sparsity: float, kernels_only: bool = False) -> Any:
    """The global top-k mask of `scores` at `sparsity`; sparsity 0 keeps everything."""
    validate_sparsity(sparsity)
    if float(sparsity) == 0.0:
        return jax.tree.map(lambda leaf: jnp.ones(leaf.shape, dtype=bool), params)
    return top_k_mask(scores, sparsity, prunable_tree(params, kernels_only))


def make_mask(method: str, *, key: jax.Array, params: Any, sparsity: float,
              apply_fn: ApplyFn | None = None, images: jax.Array | None = None,
              labels: jax.Array | None = None, batch_size: int = 100,
              kernels_only: bool = False, dropout_key: jax.Array | None = None) -> Any:
    """The mask of `method` (one of METHODS) at `sparsity`; sparsity 0 keeps everything."""
    validate_sparsity(sparsity)
    if method not in METHODS:
        raise ValueError(f'unknown pruning method {method!r}; accepted: {", ".join(METHODS)}')
    if float(sparsity) == 0.0:
        return mask_from_scores(None, params, sparsity)
    scores = pruning_scores(method, key=key, params=params, apply_fn=apply_fn, images=images,
                            labels=labels, batch_size=batch_size, dropout_key=dropout_key)
    return mask_from_scores(scores, params, sparsity, kernels_only)


class LayerDensity(NamedTuple):
    """Kept entries of one parameter leaf."""
    name: str
    kept: int
    total: int

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else 0.0


def density_report(mask: Any) -> list[LayerDensity]:
    """Per-leaf kept counts of a mask (one trial's, no leading trial axis), in pytree order."""
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
        name = '/'.join(str(getattr(part, 'key', getattr(part, 'name', part))) for part in path)
        leaf = np.asarray(leaf)
        rows.append(LayerDensity(name, int(leaf.sum()), int(leaf.size)))
    return rows


def format_density_report(mask: Any) -> str:
    """A printable table of `density_report`, with the overall density last."""
    rows = density_report(mask)
    width = max([len(row.name) for row in rows] + [5])
    lines = [f'{row.name:<{width}}  {row.kept:>9,d} / {row.total:>9,d}  {row.density:7.2%}' for row in rows]
    kept, total = sum(row.kept for row in rows), sum(row.total for row in rows)
    lines.append(f'{"total":<{width}}  {kept:>9,d} / {total:>9,d}  {kept / total:7.2%}')
    return '\n'.join(lines)
