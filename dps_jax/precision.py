"""Matmul precision: the arithmetic float32 matmuls and convolutions run in, per computation.

On NVIDIA GPUs JAX's 'default' runs float32 matmuls and convolutions in TF32 (about 3e-4
relative error); 'highest' runs them in full float32. XLA:CPU runs float32 at every setting.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

MATMUL_PRECISIONS = ('default', 'high', 'highest')  # jax.default_matmul_precision's names

# config.compute_dtype: what training and evaluation compute in. float32 is the reference's; with
# bfloat16 the float32 parameters stay the master copy and are cast for each forward pass.
COMPUTE_DTYPES = ('float32', 'bfloat16')

# The Lipschitz and gradient-noise-scale estimates subtract nearly equal numbers (gradients at two
# nearby points, squared norms of two batch sizes): TF32's error would be of the size of the result.
ESTIMATOR_PRECISION = 'highest'


def at_matmul_precision(function: Callable, precision: str | None) -> Callable:
    """`function` with every matmul and convolution it traces at `precision` (None: the ambient one).

    The setting is read while JAX traces, so it holds inside jit, vmap, scan and grad, and an
    inner setting wins over an outer one.
    """
    if precision is None:
        return function
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f'matmul precision {precision!r} is not one of {", ".join(MATMUL_PRECISIONS)}')

    @functools.wraps(function)
    def at_precision(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return function(*args, **kwargs)

    return at_precision


def cast_floating(tree, dtype):
    """`tree` with every floating-point leaf cast to `dtype` (integer and boolean leaves unchanged)."""
    return jax.tree.map(lambda leaf: leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf, tree)
