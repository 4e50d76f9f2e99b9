"""Three ways to write the engine's convolution, in the vmapped Simple-CNN chunk (N = 8, batch 64):
bytes the compiled chunk moves and trial-steps/s, each form against im2col in the same run.

- im2col (dps_jax.models.conv2d): all kh x kw shifted windows concatenated, one matmul;
- rows: the windows of one kernel row concatenated, kh matmuls summed;
- shifted: one matmul per window (kh x kw of them, K = input channels), summed; no patches.

Bytes are XLA's cost analysis of the scan body and the same with fusions that only slice one
operand charged what they move (hlo_traffic.py). Every form is first checked against
lax.conv_general_dilated on a small input.

    python benchmarks/conv_forms.py [--trials 8] [--batch 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dps_jax import engine, models, optim, trial  # noqa: E402
import common  # noqa: E402
import hlo_traffic  # noqa: E402


def _prepared(x, kernel, stride, padding):
    """(x padded as TensorFlow pads it, stride pair, output height, output width)."""
    kernel_h, kernel_w = kernel.shape[:2]
    stride_h, stride_w = models._pair(stride)
    if padding.upper() == 'SAME':
        x = jnp.pad(x, ((0, 0), models.same_padding(x.shape[1], kernel_h, stride_h),
                        models.same_padding(x.shape[2], kernel_w, stride_w), (0, 0)))
    return (x, (stride_h, stride_w), (x.shape[1] - kernel_h) // stride_h + 1,
            (x.shape[2] - kernel_w) // stride_w + 1)


def _window(x, i, j, strides, out_h, out_w):
    """The input pixels kernel tap (i, j) meets: (B, out_h, out_w, C)."""
    stride_h, stride_w = strides
    return lax.slice(x, (0, i, j, 0), (x.shape[0], i + (out_h - 1) * stride_h + 1,
                                       j + (out_w - 1) * stride_w + 1, x.shape[3]), (1, stride_h, stride_w, 1))


def conv2d_rows(x, kernel, bias=None, stride=1, padding='SAME'):
    """conv2d as one im2col matmul per kernel row, summed."""
    x, strides, out_h, out_w = _prepared(x, kernel, stride, padding)
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    y = sum(jnp.dot(jnp.concatenate([_window(x, i, j, strides, out_h, out_w) for j in range(kernel_w)], axis=-1),
                    kernel[i].reshape(kernel_w * in_features, out_features)) for i in range(kernel_h))
    return y if bias is None else y + bias


def conv2d_shifted(x, kernel, bias=None, stride=1, padding='SAME'):
    """conv2d as one matmul per kernel tap on its shifted window, summed: no patch array."""
    x, strides, out_h, out_w = _prepared(x, kernel, stride, padding)
    kernel_h, kernel_w = kernel.shape[:2]
    y = sum(jnp.dot(_window(x, i, j, strides, out_h, out_w), kernel[i, j])
            for i in range(kernel_h) for j in range(kernel_w))
    return y if bias is None else y + bias


FORMS = {'im2col': models.conv2d, 'rows': conv2d_rows, 'shifted': conv2d_shifted}


def check_against_lax(form) -> None:
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 12, 8))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 8, 16))
    for padding, stride in (('VALID', 1), ('SAME', 2)):
        want = lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision='highest')
        with jax.default_matmul_precision('highest'):
            got = form(x, kernel, stride=stride, padding=padding)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def measure(num_trials: int, batch_size: int, steps: int) -> tuple[float, float, float]:
    """(MB per example-step as XLA counts, as moved, trial-steps/s) of the chunk with models.conv2d as set."""
    model, optimizer = models.SimpleCNN(), optim.make_optimizer('sgd')
    apply_fn = lambda params, x: model.apply({'params': params}, x)
    images, labels = common.synthetic_split(4096)
    trials = common.make_trials(model, optimizer, num_trials, images, labels)
    programs = engine.cell_programs(trial.make_train_step(apply_fn, optimizer), trial.make_val_error_count(apply_fn),
                                    batch_size, steps, False)
    order, active = trial.init_data_order(0, 4096), jnp.ones(num_trials, bool)
    compiled = programs.train_chunk.lower(trials, active, order, images, labels).compile()
    examples = num_trials * batch_size
    counted = hlo_traffic.cost_analysis_bytes(compiled) / examples
    parts = hlo_traffic.breakdown(compiled.as_text())
    moved = counted * (parts['charged'] - parts['slicing_charged'] + parts['slicing_read']) / parts['charged']
    rate = num_trials * steps / common.seconds(lambda: programs.train_chunk(trials, active, order, images, labels))
    return counted / 1e6, moved / 1e6, rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=8)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--steps', type=int, default=10)
    args = parser.parse_args()
    print(f'jax {jax.__version__}, {jax.devices()[0].platform}; Simple-CNN chunk, N = {args.trials}, '
          f'batch {args.batch}, {args.steps} steps, best of 2')
    print('| form | MB per example-step, as XLA counts | as moved | trial-steps/s | vs im2col |')
    print('| --- | --- | --- | --- | --- |')
    baseline = None
    for name, form in FORMS.items():
        check_against_lax(form)
        models.conv2d = form  # SimpleCNN's layers call models.conv2d
        try:
            counted, moved, rate = measure(args.trials, args.batch, args.steps)
        finally:
            models.conv2d = FORMS['im2col']
        baseline = baseline or rate
        print(f'| {name} | {counted:.2f} | {moved:.2f} | {rate:,.1f} | {rate / baseline:.2f}x |', flush=True)


if __name__ == '__main__':
    main()
