"""SimpleCNN and ResNet8 (no batch norm) written for fast trials on XLA:CPU and under vmap.

Convolutions are im2col + one matmul and pooling is reshape + reduce, so that
`jax.vmap` over a leading axis of per-trial parameters (the engine on accelerators)
lowers to batched matmuls instead of grouped convolutions (feature_group_count = N),
and one trial's step inside `lax.scan` (the engine on a CPU steps trials in turn)
avoids XLA:CPU's convolution, whose backward pass there falls back to a slow layout.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

MODELS = ('simple_cnn', 'resnet8')
PADDINGS = ('SAME', 'VALID')
# How the built-in models convolve (config.convolution): 'im2col' (conv2d below, any backend),
# 'pallas' (dps_jax.pallas_conv: Triton kernels on a GPU, Pallas' interpret mode elsewhere, im2col
# for the layers its kernels do not cover) or 'xla' (xla_conv2d below: XLA's own convolution,
# cuDNN on NVIDIA GPUs; grouped under vmap, which XLA:CPU runs far slower than im2col).
CONVOLUTIONS = ('im2col', 'pallas', 'xla')

# TF1's default weight init: fan-in variance scaling, truncated at two stddevs
# (the stddev is corrected so that the truncated draw has variance 1/fan_in).
kernel_init = jax.nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
bias_init = jax.nn.initializers.zeros


def _pair(value: Union[int, Sequence[int]]) -> tuple[int, int]:
    """(value, value) for an int, else the 2-sequence as a tuple."""
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) of one spatial axis; extra pad goes after."""
    out_size = -(-size // stride)
    total = max((out_size - 1) * stride + window - size, 0)
    return (total // 2, total - total // 2)


def tf_pads(x_shape: Sequence[int], window: Sequence[int], stride: Sequence[int], padding: str
            ) -> list[tuple[int, int]]:
    """[(top, bottom), (left, right)] TensorFlow pads of a (B, H, W, C) input for a (kh, kw) window
    at (sh, sw) strides: 'SAME' (extra pad after) or 'VALID' (none)."""
    padding = padding.upper()
    if padding not in PADDINGS:
        raise ValueError(f'padding must be one of {PADDINGS}, got {padding!r}')
    if padding == 'VALID':
        return [(0, 0), (0, 0)]
    return [same_padding(x_shape[1], window[0], stride[0]), same_padding(x_shape[2], window[1], stride[1])]


def tf_padded(x: jax.Array, window: Sequence[int], stride: Sequence[int], padding: str) -> jax.Array:
    """x (B, H, W, C) padded as TensorFlow pads (tf_pads)."""
    pads = tf_pads(x.shape, window, stride, padding)
    return x if pads == [(0, 0), (0, 0)] else jnp.pad(x, ((0, 0), *pads, (0, 0)))


def kernel_windows(x: jax.Array, kernel_shape: Sequence[int], stride: Union[int, Sequence[int]] = 1,
                   padding: str = 'SAME') -> list[list[jax.Array]]:
    """The input pixels each kernel tap meets: windows[i][j] (B, H', W', Cin) for tap (i, j) of an
    HWIO kernel of `kernel_shape`, with TensorFlow padding semantics ('SAME' or 'VALID')."""
    kernel_h, kernel_w, in_features = kernel_shape[:3]
    stride_h, stride_w = _pair(stride)
    batch, channels = x.shape[0], x.shape[3]
    if channels != in_features:
        raise ValueError(f'input has {channels} channels, kernel expects {in_features}')
    x = tf_padded(x, (kernel_h, kernel_w), (stride_h, stride_w), padding)
    padded_h, padded_w = x.shape[1], x.shape[2]
    out_h = (padded_h - kernel_h) // stride_h + 1
    out_w = (padded_w - kernel_w) // stride_w + 1
    return [[lax.slice(x, (0, i, j, 0),
                       (batch, i + (out_h - 1) * stride_h + 1, j + (out_w - 1) * stride_w + 1, channels),
                       (1, stride_h, stride_w, 1))
             for j in range(kernel_w)] for i in range(kernel_h)]


# How im2col_patches can build its patch matrix (the same values every way; patch_form_default picks).
PATCH_FORMS = ('one_stage', 'two_stage', 'major_axis')
# XLA:CPU's fusion pass (xla/service/cpu/cpu_instruction_fusion.cc) leaves a concatenation of more
# than 8 operands, or one on the minor axis, unfused, and copies it operand by operand, row by row;
# for windows of fewer channels than this the copies are tiny, and a CPU stacks them instead.
NARROW_WINDOW_CHANNELS = 16


def patch_form_default(in_features: int) -> str:
    """The form (PATCH_FORMS) in which conv2d builds the patches of an input with `in_features`
    channels on the default backend.

    GPU: 'two_stage'. On an H200 the one-stage build (a single concatenation of kh x kw windows, 25
    for a 5x5 kernel) wrote its patches at under 1 TB/s and took a third of the vmapped Simple-CNN
    chunk; the two stages trained that chunk 1.17x faster (benchmarks/conv_forms.py --forms
    two_stage, batch 64, N = 100).
    CPU: 'major_axis' below NARROW_WINDOW_CHANNELS (Simple-CNN's one-channel first layer: its
    single-trial step ran 1.07-1.09x faster; ResNet-8's 3-channel stem: the same within noise), else
    'one_stage' (stacking ResNet-8's 16-64-channel windows ran its chunk 0.87-0.90x, Simple-CNN's
    32-channel conv2 0.96-0.99x; README, "Performance"; measured in float32). TPU: 'one_stage'.
    """
    backend = jax.default_backend()
    if backend == 'gpu':
        return 'two_stage'
    if backend == 'cpu' and in_features < NARROW_WINDOW_CHANNELS:
        return 'major_axis'
    return 'one_stage'


def im2col_patches(x: jax.Array, kernel_shape: Sequence[int], stride: Union[int, Sequence[int]] = 1,
                   padding: str = 'SAME', form: str | None = None) -> tuple[jax.Array, tuple[int, int, int]]:
    """(patches (B * H' * W', kh * kw * Cin), (B, H', W')): every output pixel's input window of an
    HWIO kernel of `kernel_shape`, in the row-major (i, j, channel) order in which the kernel
    flattens to (kh * kw * Cin, Cout), with TensorFlow padding semantics ('SAME' or 'VALID').

    form (PATCH_FORMS; None: patch_form_default for x's channels):
    'one_stage': all kh x kw windows, each flattened to (pixels, Cin), in one concatenation;
    'two_stage': the kw column shifts of every padded input row concatenated and materialized
    (B, H, W', kw * Cin), then its kh row shifts concatenated;
    'major_axis': the kw column shifts stacked on an axis before the channels (B, H, W', kw, Cin), then
    its kh row shifts stacked the same way (B, H', W', kh, kw, Cin): concatenations on a major axis,
    which XLA:CPU fuses with their slices when kh, kw <= 8.
    The patches are the same in every form.
    """
    kernel_h, kernel_w, in_features = kernel_shape[:3]
    if form is None:
        form = patch_form_default(in_features)
    if form not in PATCH_FORMS:
        raise ValueError(f'form must be one of {PATCH_FORMS} (or None), got {form!r}')
    if form == 'one_stage':
        windows = kernel_windows(x, kernel_shape, stride, padding)
        batch, out_h, out_w = windows[0][0].shape[:3]
        # Each window is flattened to (pixels, Cin) before the concatenation, so that the backward pass
        # cuts each window's gradient out of the 2-D patch gradient directly: cut from its 4-D view
        # instead, XLA fuses every cut behind a reshape and charges it the whole patch gradient (8.54 ->
        # 3.62 MB per example-step of the vmapped Simple-CNN chunk on XLA:CPU, benchmarks/conv_forms.py
        # --forms im2col im2col_4d).
        patches = jnp.concatenate([window.reshape(batch * out_h * out_w, in_features)
                                   for row in windows for window in row], axis=-1)
        return patches, (batch, out_h, out_w)
    stride_h, stride_w = _pair(stride)
    x = tf_padded(x, (kernel_h, kernel_w), (stride_h, stride_w), padding)
    column_shifts = kernel_windows(x, (1, kernel_w, in_features), (1, stride_w), 'VALID')[0]
    if form == 'major_axis':
        columns = jnp.stack(column_shifts, axis=3)  # (B, H, W', kw, Cin)
        rows = [lax.slice_in_dim(columns, i, i + (columns.shape[1] - kernel_h) // stride_h * stride_h + 1,
                                 stride_h, axis=1) for i in range(kernel_h)]
        patches = jnp.stack(rows, axis=3)  # (B, H', W', kh, kw, Cin)
        batch, out_h, out_w = patches.shape[:3]
        return patches.reshape(batch * out_h * out_w, kernel_h * kernel_w * in_features), (batch, out_h, out_w)
    columns = jnp.concatenate(column_shifts, axis=-1)
    # Materialized on purpose: fused into the second concatenation, the two stages are one again.
    columns = lax.optimization_barrier(columns)  # (B, H, W', kw * Cin)
    rows = [row[0] for row in kernel_windows(columns, (kernel_h, 1, kernel_w * in_features), (stride_h, 1), 'VALID')]
    batch, out_h, out_w = rows[0].shape[:3]
    patches = jnp.concatenate([row.reshape(batch * out_h * out_w, kernel_w * in_features) for row in rows], axis=-1)
    return patches, (batch, out_h, out_w)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None,
           stride: Union[int, Sequence[int]] = 1, padding: str = 'SAME', form: str | None = None) -> jax.Array:
    """2-D convolution as im2col + matmul: x (B, H, W, Cin), kernel HWIO -> (B, H', W', Cout).

    Same values as lax.conv_general_dilated with NHWC/HWIO dimension numbers and
    TensorFlow padding semantics ('SAME' or 'VALID'). form: how the patches are built
    (im2col_patches, PATCH_FORMS; None: patch_form_default).
    """
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    patches, (batch, out_h, out_w) = im2col_patches(x, kernel.shape, stride, padding, form)
    y = jnp.dot(patches, kernel.reshape(kernel_h * kernel_w * in_features, out_features))
    y = y.reshape(batch, out_h, out_w, out_features)
    return y if bias is None else y + bias


def xla_conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None,
               stride: Union[int, Sequence[int]] = 1, padding: str = 'SAME') -> jax.Array:
    """2-D convolution as XLA's own (lax.conv_general_dilated) with TensorFlow's padding ('SAME' or
    'VALID'): x (B, H, W, Cin), kernel HWIO -> (B, H', W', Cout)."""
    stride = _pair(stride)
    y = lax.conv_general_dilated(x, kernel, stride, tf_pads(x.shape, kernel.shape[:2], stride, padding),
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y if bias is None else y + bias


def _crop_to_multiple(x: jax.Array, window: int) -> jax.Array:
    """Drops trailing rows/columns of (B, H, W, C) that do not fill a window (VALID pooling)."""
    height, width = x.shape[1] // window * window, x.shape[2] // window * window
    return x[:, :height, :width, :]


def _windows(x: jax.Array, window: int) -> jax.Array:
    """(B, H, W, C) -> (B, H/window, window, W/window, window, C) of non-overlapping windows."""
    x = _crop_to_multiple(x, window)
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // window, window, width // window, window, channels)


def _window_corners(x: jax.Array) -> tuple[jax.Array, ...]:
    """The four elements of every 2x2 window of (B, H, W, C) (VALID): four (B, H//2, W//2, C)."""
    windows = _windows(x, 2)
    return tuple(windows[:, :, i, :, j] for i in range(2) for j in range(2))


@jax.custom_jvp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """Max pool, window = stride = 2, VALID: (B, H, W, C) -> (B, H//2, W//2, C).

    Ties: the gradient is split evenly among the tied maxima of a window (jnp.max's
    rule), whereas nn.max_pool gives it all to one element; equal otherwise.
    """
    return jnp.max(_windows(x, 2), axis=(2, 4))


# The even split written over the four corners, elementwise: autodiff of a reduce over the window
# counts the ties with a second reduce and a broadcast, which took about a tenth of Simple-CNN's
# single-trial step on XLA:CPU (README, "Performance").
@max_pool_2x2.defjvp
def _max_pool_2x2_jvp(primals, tangents):
    """(pooled, tangent): each window's tangent is its tied maxima's tangents summed, over their count."""
    (x,), (x_tangent,) = primals, tangents
    pooled = max_pool_2x2(x)
    hits = [(corner == pooled).astype(x.dtype) for corner in _window_corners(x)]
    tangent = sum(hit * corner for hit, corner in zip(hits, _window_corners(x_tangent)))
    return pooled, tangent / sum(hits)


def avg_pool(x: jax.Array, window: int = 2) -> jax.Array:
    """Average pool, window = stride, TensorFlow SAME: (B, H, W, C) -> (B, ceil(H/window), ceil(W/window), C).

    A window that runs past the edge averages only the pixels inside (TF's rule: padding is not
    counted); for sizes divisible by `window` this is the plain VALID average.
    """
    height, width = x.shape[1], x.shape[2]
    pad_h, pad_w = same_padding(height, window, window), same_padding(width, window, window)
    if pad_h == (0, 0) and pad_w == (0, 0):
        return jnp.mean(_windows(x, window), axis=(2, 4))
    padding = ((0, 0), pad_h, pad_w, (0, 0))
    sums = jnp.sum(_windows(jnp.pad(x, padding), window), axis=(2, 4))
    counts = jnp.sum(_windows(jnp.pad(jnp.ones((1, height, width, 1), x.dtype), padding), window), axis=(2, 4))
    return sums / counts


def pad_channels(x: jax.Array, features: int) -> jax.Array:
    """Zero channels appended at the end: (B, H, W, C) -> (B, H, W, features)."""
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f'cannot pad {x.shape[-1]} channels down to {features}')
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


def residual_shortcut(x: jax.Array, features: int, stride: int) -> jax.Array:
    """Parameter-free shortcut: avg pool by stride (TF SAME), then zero-pad channels to features."""
    if stride > 1:
        x = avg_pool(x, stride)
    return pad_channels(x, features)


class Conv2D(nn.Module):
    """Convolution layer with 'kernel' (HWIO) and 'bias', by im2col unless `convolution` says otherwise:
    (B, H, W, Cin) -> (B, H', W', features)."""
    features: int
    kernel_size: Union[int, Sequence[int]]
    stride: Union[int, Sequence[int]] = 1
    padding: str = 'SAME'
    convolution: str = 'im2col'  # one of CONVOLUTIONS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_shape = _pair(self.kernel_size) + (x.shape[-1], self.features)
        kernel = self.param('kernel', kernel_init, kernel_shape, jnp.float32)
        bias = self.param('bias', bias_init, (self.features,), jnp.float32)
        if self.convolution == 'pallas':
            from dps_jax import pallas_conv  # it imports this module
            return pallas_conv.conv2d(x, kernel, bias, self.stride, self.padding,
                                      interpret=jax.default_backend() != 'gpu')
        if self.convolution == 'xla':
            return xla_conv2d(x, kernel, bias, self.stride, self.padding)
        if self.convolution != 'im2col':
            raise ValueError(f'convolution must be one of {CONVOLUTIONS}, got {self.convolution!r}')
        return conv2d(x, kernel, bias, self.stride, self.padding)


def dense(features: int, name: str | None = None) -> nn.Dense:
    """nn.Dense with the shared weight init ('kernel' (in, out), 'bias')."""
    return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init, name=name)


class SimpleCNN(nn.Module):
    """Two 5x5 conv + max-pool layers and a dense layer: (B, 28, 28, C) -> logits (B, num_classes)."""
    num_classes: int = 10
    convolution: str = 'im2col'  # one of CONVOLUTIONS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # relu(max_pool(x)) is max_pool(relu(x)), the reference's order, in values and (with
        # max_pool_2x2's tie rule and relu's zero gradient at 0) in gradients; the ReLU on the
        # pooled quarter made the single-trial step 1.15-1.45x faster on XLA:CPU (README, "Performance").
        x = nn.relu(max_pool_2x2(Conv2D(32, 5, padding='VALID', convolution=self.convolution, name='conv1')(x)))
        x = nn.relu(max_pool_2x2(Conv2D(64, 5, padding='VALID', convolution=self.convolution, name='conv2')(x)))
        x = x.reshape(x.shape[0], -1)
        return dense(self.num_classes, name='dense')(x)


class PreActBlock(nn.Module):
    """Pre-activation residual block without norm: (B, H, W, Cin) -> (B, H/stride, W/stride, features).

    out = conv2(relu(conv1(relu(x)))) + shortcut, shortcut = x when neither width nor size
    changes, else avg_pool_stride(relu(x)) with zero channels appended.
    """
    features: int
    stride: int = 1
    convolution: str = 'im2col'  # one of CONVOLUTIONS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        activated = nn.relu(x)
        residual = Conv2D(self.features, 3, self.stride, convolution=self.convolution, name='conv1')(activated)
        residual = Conv2D(self.features, 3, 1, convolution=self.convolution, name='conv2')(nn.relu(residual))
        # As the reference: only an identity shortcut keeps the pre-ReLU input; a shortcut that
        # pools or widens takes the activated input.
        if self.stride == 1 and x.shape[-1] == self.features:
            return residual + x
        return residual + residual_shortcut(activated, self.features, self.stride)


class ResNet8(nn.Module):
    """Stem conv + three pre-activation blocks (16, 32, 64): (B, H, W, C) -> logits (B, num_classes)."""
    num_classes: int = 10
    convolution: str = 'im2col'  # one of CONVOLUTIONS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Conv2D(16, 3, convolution=self.convolution, name='stem')(x)
        x = PreActBlock(16, 1, self.convolution, name='block1')(x)
        x = PreActBlock(32, 2, self.convolution, name='block2')(x)
        x = PreActBlock(64, 2, self.convolution, name='block3')(x)
        x = jnp.mean(nn.relu(x), axis=(1, 2))
        return dense(self.num_classes, name='dense')(x)


def get_model(name: str, num_classes: int = 10, convolution: str = 'im2col') -> nn.Module:
    """The model registered under name ('simple_cnn' or 'resnet8'), convolving by `convolution` (CONVOLUTIONS)."""
    if convolution not in CONVOLUTIONS:
        raise ValueError(f'convolution must be one of {CONVOLUTIONS}, got {convolution!r}')
    if name == 'simple_cnn':
        return SimpleCNN(num_classes=num_classes, convolution=convolution)
    if name == 'resnet8':
        return ResNet8(num_classes=num_classes, convolution=convolution)
    raise ValueError(f'unknown model {name!r}; expected one of {MODELS}')


def count_parameters(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))
