"""Stride-1 convolution as Pallas (Triton) GPU kernels that never write im2col patches.

`models.conv2d` builds the kernel_h x kernel_w shifted windows of its input into one patch array
and multiplies it once; on an accelerator that array, and the patch gradient of the backward pass,
are most of a training step's memory traffic. Here every output row is accumulated tap by tap from
windows read straight from the input, in three kernels:
- the forward pass (`_window_sum_kernel`), which the input gradient reuses on the padded output
  gradient with the kernel flipped;
- the kernel gradient (`_kernel_gradient_kernel`), programs per tap that each sum over a run of
  image blocks, added afterwards.

`conv2d` takes `models.conv2d`'s arguments and values; what these kernels do not cover (a stride,
fewer than 16 or more than 128 input or output channels) goes to `models.conv2d`, which is also
the test oracle. Pallas' interpret mode (`interpret=True`) runs the same kernels on a CPU.
"""

from __future__ import annotations

import functools
from typing import Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from dps_jax import models
from dps_jax.models import conv2d as im2col_conv2d

# Triton tensors have power-of-two sizes and its matmuls need every side >= 16.
MIN_DOT_SIDE = 16
# Output pixels per program (images x padded row width): a (128, channels) matmul tile, a usual
# Triton tile, whose window operand and accumulator stay within a warp group's registers.
TILE_PIXELS = 128
# (image block, output row) steps per program of the kernel gradient: 64 steps of (128, channels)
# tiles, so a batch of 4096 splits each tap's sum over 32 programs.
ROWS_PER_PROGRAM = 64
# Wider layers would need their channels tiled: a (128, channels) float32 tile of 256 channels
# and its pipelined copies outgrow a GPU's shared memory.
MAX_CHANNELS = 128
# Triton's launch settings for every kernel here: warps per program and software-pipeline stages.
NUM_WARPS = 8
NUM_STAGES = 2


def _next_power_of_two(size: int) -> int:
    return 1 << max(size - 1, 0).bit_length()


def _compiler_params(interpret: bool):
    """Triton compiler parameters, which select Pallas' Triton GPU backend; None in interpret mode."""
    if interpret:
        return None
    from jax.experimental.pallas import triton as pallas_triton
    return pallas_triton.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def covers(x_shape: Sequence[int], kernel_shape: Sequence[int], stride: Union[int, Sequence[int]]) -> bool:
    """Whether these kernels compute this convolution (stride 1, 16 to 128 channels in and out)."""
    return (models._pair(stride) == (1, 1) and len(x_shape) == 4
            and all(MIN_DOT_SIDE <= channels <= MAX_CHANNELS for channels in kernel_shape[2:4]))


def _pad_channels_to_power_of_two(array: jax.Array, axis: int) -> jax.Array:
    size = array.shape[axis]
    padding = [(0, 0)] * array.ndim
    padding[axis] = (0, _next_power_of_two(size) - size)
    return jnp.pad(array, padding) if padding[axis][1] else array


def _layout(batch: int, out_w: int) -> tuple[int, int, int]:
    """(images per program, padded batch, padded output width) for a (batch, ., out_w, .) output."""
    padded_w = _next_power_of_two(out_w)
    images = min(max(TILE_PIXELS // padded_w, 1), _next_power_of_two(batch))
    images = max(images, _next_power_of_two(-(-MIN_DOT_SIDE // padded_w)))  # a matmul side >= 16
    return images, -(-batch // images) * images, padded_w


def _window_sum_kernel(x_ref, w_ref, y_ref, *, kernel_h, kernel_w, images, padded_w):
    """One (images, 1, padded_w, F) output row block: the sum over taps of window @ w[tap]."""
    block, row = pl.program_id(0), pl.program_id(1)
    channels = x_ref.shape[-1]
    features = w_ref.shape[-1]
    first = block * images
    total = jnp.zeros((images * padded_w, features), jnp.float32)
    for i in range(kernel_h):
        for j in range(kernel_w):
            window = x_ref[pl.ds(first, images), row + i, pl.ds(j, padded_w), :]
            total += jnp.dot(window.reshape(images * padded_w, channels), w_ref[i, j],
                             preferred_element_type=jnp.float32)
    y_ref[pl.ds(first, images), row, :, :] = total.reshape(images, padded_w, features).astype(y_ref.dtype)


def _kernel_gradient_kernel(x_ref, g_ref, dw_ref, *, images, blocks_per_program, out_h, padded_w):
    """Part of d kernel[tap] (one tap, one run of image blocks per program): the sum over those images
    and every output row of window^T @ output gradient."""
    i, j, part = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    channels = x_ref.shape[-1]
    features = g_ref.shape[-1]

    def add_row(step, total):
        block, row = part * blocks_per_program + lax.div(step, out_h), lax.rem(step, out_h)
        first = block * images
        window = x_ref[pl.ds(first, images), row + i, pl.ds(j, padded_w), :].reshape(images * padded_w, channels)
        gradient = g_ref[pl.ds(first, images), row, :, :].reshape(images * padded_w, features)
        return total + lax.dot_general(window, gradient, (((0,), (0,)), ((), ())),
                                       preferred_element_type=jnp.float32)

    total = lax.fori_loop(0, blocks_per_program * out_h, add_row, jnp.zeros((channels, features), jnp.float32))
    dw_ref[part, i, j, :, :] = total


def _valid_forward(x, kernel, interpret):
    """VALID stride-1 convolution, x (B, H, W, C) with C, F powers of two >= 16 -> (B, H', W', F)."""
    batch, height, width, channels = x.shape
    kernel_h, kernel_w, _, features = kernel.shape
    out_h, out_w = height - kernel_h + 1, width - kernel_w + 1
    images, padded_batch, padded_w = _layout(batch, out_w)
    # Padding the batch to whole blocks and the width so every window load stays inside the array;
    # the padded output columns are cut off below.
    x = jnp.pad(x, ((0, padded_batch - batch), (0, 0), (0, padded_w + kernel_w - 1 - width), (0, 0)))
    y = pl.pallas_call(
        functools.partial(_window_sum_kernel, kernel_h=kernel_h, kernel_w=kernel_w, images=images,
                          padded_w=padded_w),
        out_shape=jax.ShapeDtypeStruct((padded_batch, out_h, padded_w, features), jnp.result_type(x, kernel)),
        grid=(padded_batch // images, out_h),
        compiler_params=_compiler_params(interpret), interpret=interpret, name='window_sum_conv',
    )(x, kernel)
    return y[:batch, :, :out_w, :]


def _valid_kernel_gradient(x, gradient, kernel_shape, kernel_dtype, interpret):
    """d loss / d kernel (kh, kw, C, F) of the VALID convolution, from x and d loss / d output."""
    batch, height, width, channels = x.shape
    kernel_h, kernel_w, _, features = kernel_shape
    _, out_h, out_w, _ = gradient.shape
    images, padded_batch, padded_w = _layout(batch, out_w)
    # Each tap's sum is split over programs of at most ROWS_PER_PROGRAM (image block, row) steps, so a
    # large batch keeps the GPU busy (kh x kw programs per trial alone would not); the parts are summed
    # below. The batch is padded to whole runs of blocks.
    blocks = padded_batch // images
    blocks_per_program = min(max(ROWS_PER_PROGRAM // out_h, 1), blocks)
    parts = -(-blocks // blocks_per_program)
    padded_batch = parts * blocks_per_program * images
    x = jnp.pad(x, ((0, padded_batch - batch), (0, 0), (0, padded_w + kernel_w - 1 - width), (0, 0)))
    # Zero gradient in the padded columns and images keeps their garbage windows out of the sum (but
    # an inf or nan in those windows still makes nan: only a diverged trial's inputs hold one).
    gradient = jnp.pad(gradient, ((0, padded_batch - batch), (0, 0), (0, padded_w - out_w), (0, 0)))
    parts_of_gradient = pl.pallas_call(
        functools.partial(_kernel_gradient_kernel, images=images, blocks_per_program=blocks_per_program,
                          out_h=out_h, padded_w=padded_w),
        out_shape=jax.ShapeDtypeStruct((parts, kernel_h, kernel_w, channels, features), jnp.float32),
        grid=(kernel_h, kernel_w, parts),
        compiler_params=_compiler_params(interpret), interpret=interpret, name='window_sum_conv_kernel_gradient',
    )(x, gradient)
    return parts_of_gradient.sum(axis=0).astype(kernel_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _valid_conv(x, kernel, interpret, matmul_precision):
    return _valid_forward(x, kernel, interpret)


def _valid_conv_forward(x, kernel, interpret, matmul_precision):
    return _valid_forward(x, kernel, interpret), (x, kernel)


def _valid_conv_backward(interpret, matmul_precision, saved, gradient):
    x, kernel = saved
    kernel_h, kernel_w = kernel.shape[:2]
    # dps_jax sets config.matmul_precision around the forward function only; this backward pass is
    # traced outside it, so it restores the precision the forward pass was traced at.
    with jax.default_matmul_precision(matmul_precision):
        # The input gradient is the full correlation of the output gradient with the flipped kernel, its
        # in and out channels swapped: the forward kernel on the output gradient padded by kh-1, kw-1.
        padded = jnp.pad(gradient, ((0, 0), (kernel_h - 1, kernel_h - 1), (kernel_w - 1, kernel_w - 1), (0, 0)))
        flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
        return (_valid_forward(padded, flipped, interpret),
                _valid_kernel_gradient(x, gradient, kernel.shape, kernel.dtype, interpret))


_valid_conv.defvjp(_valid_conv_forward, _valid_conv_backward)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None,
           stride: Union[int, Sequence[int]] = 1, padding: str = 'SAME', *, interpret: bool = False) -> jax.Array:
    """models.conv2d's convolution, x (B, H, W, Cin), kernel HWIO -> (B, H', W', Cout), by the window-sum
    kernels where they apply (`covers`), else by im2col (models.conv2d)."""
    if not covers(x.shape, kernel.shape, stride):
        return im2col_conv2d(x, kernel, bias, stride, padding)
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    if x.shape[-1] != in_features:
        raise ValueError(f'input has {x.shape[-1]} channels, kernel expects {in_features}')
    x = _pad_channels_to_power_of_two(models.tf_padded(x, (kernel_h, kernel_w), (1, 1), padding), 3)
    padded_kernel = _pad_channels_to_power_of_two(_pad_channels_to_power_of_two(kernel, 2), 3)
    y = _valid_conv(x, padded_kernel, interpret, jax.config.jax_default_matmul_precision)[..., :out_features]
    return y if bias is None else y + bias
