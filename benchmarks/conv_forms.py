"""Ways to write the engine's convolution, in the Simple-CNN chunk of N trials (N = 8, batch 64):
bytes the compiled vmapped chunk moves and trial-steps/s of the chunk as the engine runs it here
(vmapped on a GPU, trials in turn on a CPU), each form against im2col in the same run.

- im2col (dps_jax.models.conv2d as the engine runs it on this backend: models.patch_form_default,
  two_stage on a GPU, major_axis for conv1's one channel and one_stage for conv2 on a CPU);
- one_stage: all kh x kw shifted windows, each flattened to (pixels, Cin), in one concatenation,
  one matmul;
- two_stage: the kw column shifts of each input row concatenated (materialized), then kh row
  shifts of those, one matmul (models.im2col_patches);
- major_axis: the kw column shifts stacked on an axis before the channels, then kh row shifts of
  those stacked the same way, one matmul (models.im2col_patches);
- im2col_4d: the same windows concatenated as a (B, H', W', kh x kw x Cin) image, then one matmul:
  the engine's im2col before XLA's count of it was cut (on XLA:CPU 8.54 against 3.62 MB per
  example-step at N = 8, batch 64); kept to compare the two on a GPU;
- dus: the patch array written window by window (dynamic_update_slice into zeros);
- stacked: the windows stacked on a leading tap axis, one dot_general over taps and channels;
- patches_op: lax.conv_general_dilated_patches (a depthwise convolution with a one-hot kernel, cuDNN
  on a GPU, at HIGHEST precision so the patches are exact copies), one matmul;
- rows: the windows of one kernel row concatenated, kh matmuls summed;
- shifted: one matmul per window (kh x kw of them, K = input channels), summed; no patches;
- xla: lax.conv_general_dilated (vmapped over trials, a grouped convolution; cuDNN on a GPU);
- pallas: config.convolution='pallas' (dps_jax.pallas_conv), Triton kernels that sum the windows
  without writing patches (conv2 only: conv1 has one input channel and stays im2col). GPU only;
  on a CPU it is checked in Pallas' interpret mode and not timed.

The default forms are im2col, two_stage, im2col_4d, rows and shifted on a CPU (where xla inside
lax.scan runs ~20x slower than im2col), and all of them on a GPU. A form that fails to compile or run prints why and
the others go on.

Bytes are XLA's cost analysis of the compiled chunk (its scan body counted once), and the same
with the fusions XLA charges a whole operand they only slice charged what they move
(hlo_traffic.py). Every form is first checked against
lax.conv_general_dilated on a small input.

    python benchmarks/conv_forms.py [--trials 8] [--batch 64] [--steps 10] [--forms im2col pallas ...] [--skip_bytes]
        [--pallas_settings warps=8,stages=3 tile=256 ...]

Each --pallas_settings entry adds a pallas row with those Triton settings (pallas_conv's NUM_WARPS,
NUM_STAGES, TILE_PIXELS, ROWS_PER_PROGRAM), to tune them on a GPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dps_jax import models, pallas_conv  # noqa: E402
import common  # noqa: E402
import hlo_traffic  # noqa: E402


def conv2d_4d(x, kernel, bias=None, stride=1, padding='SAME'):
    """conv2d with its windows concatenated as a 4-D image of patches, then one matmul."""
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    windows = models.kernel_windows(x, kernel.shape, stride, padding)
    patches = jnp.concatenate([window for row in windows for window in row], axis=-1)
    y = jnp.dot(patches, kernel.reshape(kernel_h * kernel_w * in_features, out_features))
    return y if bias is None else y + bias


def conv2d_rows(x, kernel, bias=None, stride=1, padding='SAME'):
    """conv2d as one im2col matmul per kernel row, summed."""
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    windows = models.kernel_windows(x, kernel.shape, stride, padding)
    y = sum(jnp.dot(jnp.concatenate(windows[i], axis=-1), kernel[i].reshape(kernel_w * in_features, out_features))
            for i in range(kernel_h))
    return y if bias is None else y + bias


def conv2d_shifted(x, kernel, bias=None, stride=1, padding='SAME'):
    """conv2d as one matmul per kernel tap on its shifted window, summed: no patch array."""
    windows = models.kernel_windows(x, kernel.shape, stride, padding)
    y = sum(jnp.dot(windows[i][j], kernel[i, j]) for i in range(kernel.shape[0]) for j in range(kernel.shape[1]))
    return y if bias is None else y + bias


def conv2d_dus(x, kernel, bias=None, stride=1, padding='SAME'):
    """conv2d with the 2-D patch array written window by window (dynamic_update_slice into zeros)
    instead of one concatenation, then one matmul."""
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    windows = [window for row in models.kernel_windows(x, kernel.shape, stride, padding) for window in row]
    batch, out_h, out_w = windows[0].shape[:3]
    patches = jnp.zeros((batch * out_h * out_w, kernel_h * kernel_w * in_features), x.dtype)
    for tap, window in enumerate(windows):
        patches = jax.lax.dynamic_update_slice(patches, window.reshape(-1, in_features), (0, tap * in_features))
    y = jnp.dot(patches, kernel.reshape(kernel_h * kernel_w * in_features, out_features))
    y = y.reshape(batch, out_h, out_w, out_features)
    return y if bias is None else y + bias


def conv2d_stacked(x, kernel, bias=None, stride=1, padding='SAME'):
    """conv2d with the windows stacked on a leading tap axis, (kh x kw, pixels, Cin), contracted
    with the kernel over taps and channels in one dot_general (XLA picks the layout)."""
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    windows = [window for row in models.kernel_windows(x, kernel.shape, stride, padding) for window in row]
    batch, out_h, out_w = windows[0].shape[:3]
    stacked = jnp.stack([window.reshape(-1, in_features) for window in windows])
    y = jnp.einsum('tpc,tco->po', stacked, kernel.reshape(kernel_h * kernel_w, in_features, out_features))
    y = y.reshape(batch, out_h, out_w, out_features)
    return y if bias is None else y + bias


def conv2d_patches_op(x, kernel, bias=None, stride=1, padding='SAME'):
    """conv2d with the patches from lax.conv_general_dilated_patches (a depthwise convolution with a
    one-hot kernel: cuDNN on a GPU, no concatenation; exact at HIGHEST), then one matmul with the
    kernel's rows in the patches' (channel, i, j) order."""
    kernel_h, kernel_w, in_features, out_features = kernel.shape
    stride = models._pair(stride)
    x = models.tf_padded(x, (kernel_h, kernel_w), stride, padding)
    patches = jax.lax.conv_general_dilated_patches(x, (kernel_h, kernel_w), stride, 'VALID',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                                   precision=jax.lax.Precision.HIGHEST)
    batch, out_h, out_w, features = patches.shape
    y = jnp.dot(patches.reshape(-1, features), kernel.transpose(2, 0, 1, 3).reshape(features, out_features))
    y = y.reshape(batch, out_h, out_w, out_features)
    return y if bias is None else y + bias


conv2d_xla = models.xla_conv2d  # XLA's own convolution


def lax_reference(x, kernel, stride, padding):
    """The checks' oracle, written apart from every form: lax's own 'SAME' pads as TensorFlow's."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def on_gpu() -> bool:
    return jax.default_backend() == 'gpu'


FORMS = {'im2col': models.conv2d, 'one_stage': functools.partial(models.conv2d, form='one_stage'),
         'two_stage': functools.partial(models.conv2d, form='two_stage'),
         'major_axis': functools.partial(models.conv2d, form='major_axis'), 'im2col_4d': conv2d_4d, 'dus': conv2d_dus,
         'stacked': conv2d_stacked, 'patches_op': conv2d_patches_op, 'rows': conv2d_rows, 'shifted': conv2d_shifted,
         'xla': conv2d_xla,
         'pallas': functools.partial(pallas_conv.conv2d, interpret=not on_gpu())}
CPU_FORMS = ('im2col', 'two_stage', 'im2col_4d', 'rows', 'shifted')
# --pallas_settings names: the pallas_conv constants they set.
PALLAS_SETTINGS = {'warps': 'NUM_WARPS', 'stages': 'NUM_STAGES', 'tile': 'TILE_PIXELS', 'rows': 'ROWS_PER_PROGRAM'}


def pallas_setting(text: str) -> dict[str, int]:
    """'warps=8,stages=3' -> {'NUM_WARPS': 8, 'NUM_STAGES': 3}, for argparse."""
    try:
        pairs = [item.split('=') for item in text.split(',')]
        return {PALLAS_SETTINGS[name]: int(value) for name, value in pairs}
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f'{text!r}: expected name=integer pairs joined by commas, names '
                                         f'{", ".join(PALLAS_SETTINGS)}') from None


def check_against_lax(form) -> None:
    """The form's values and input and kernel gradients against lax.conv_general_dilated, at full
    float32 precision (on a GPU this runs the compiled kernels before they are timed)."""
    # 16 input channels: the least that pallas_conv's kernels take (fewer would test its fallback).
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 12, 16))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 16, 32)) / 20
    for padding, stride in (('VALID', 1), ('SAME', 1), ('SAME', 2)):
        def loss(convolution, x, kernel):
            y = convolution(x, kernel, stride=stride, padding=padding)
            return jnp.sum(jnp.tanh(y) * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y

        with jax.default_matmul_precision('highest'):
            (_, want_y), want = jax.value_and_grad(functools.partial(loss, lax_reference), (0, 1), has_aux=True)(x, kernel)
            (_, got_y), got = jax.value_and_grad(functools.partial(loss, form), (0, 1), has_aux=True)(x, kernel)
        for name, wanted, value in (('values', want_y, got_y), ('input gradient', want[0], got[0]),
                                    ('kernel gradient', want[1], got[1])):
            np.testing.assert_allclose(value, wanted, rtol=1e-4, atol=1e-4,
                                       err_msg=f'{name}, {padding} stride {stride}')


def measure(num_trials: int, batch_size: int, steps: int, convolution: str = 'im2col', with_bytes: bool = True
            ) -> tuple[hlo_traffic.Traffic | None, float]:
    """(bytes of the compiled vmapped chunk, trial-steps/s of the engine's chunk) of the model at
    `convolution`, its im2col being models.conv2d as it is set now. The speed is the chunk as the
    engine runs it here (trials in turn on a CPU); the bytes are the vmapped chunk's, whose scan body
    holds every trial's step (in turn, XLA would count one trial's), with the batch in one pass (in
    passes, one pass's). The bytes are None where the
    program's HLO could not be read or not asked for (it compiles the chunk once more)."""
    programs, trials, images, labels = common.engine_chunk('simple_cnn', num_trials, batch_size, steps,
                                                           convolution=convolution)
    rate = common.chunk_rate(programs, trials, steps, images, labels)
    if not with_bytes:
        return None, rate
    compiled = common.compiled_chunk(*common.engine_chunk('simple_cnn', num_trials, batch_size, steps,
                                                          convolution=convolution, in_turn=False, per_pass=batch_size))
    try:
        traffic = hlo_traffic.traffic(compiled)
    except Exception as error:  # noqa: BLE001 (a parse of an unfamiliar HLO must not cost the speed)
        print(f'  (bytes as moved not read: {type(error).__name__}: '
              f'{str(error).splitlines()[0][:200] if str(error) else ""})')
        try:  # XLA's own count needs no parse of the HLO
            traffic = hlo_traffic.Traffic(hlo_traffic.cost_analysis(compiled)['bytes accessed'], 0, float('nan'), {})
        except Exception:  # noqa: BLE001 (as above)
            traffic = None
    return traffic, rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--trials', type=int, default=8)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--forms', nargs='+', choices=tuple(FORMS), default=None,
                        help='default: all on a GPU, ' + ', '.join(CPU_FORMS) + ' elsewhere')
    parser.add_argument('--skip_bytes', action='store_true', help='speed only (saves a compile per form)')
    parser.add_argument('--pallas_settings', nargs='*', type=pallas_setting, default=[],
                        help='extra pallas rows, each with these settings, e.g. warps=8,stages=3 tile=256 '
                        f'(names: {", ".join(PALLAS_SETTINGS)})')
    args = parser.parse_args()
    forms = args.forms or (tuple(FORMS) if on_gpu() else CPU_FORMS)
    if 'im2col' not in forms:
        forms = ('im2col', *forms)  # the baseline of every ratio
    rows = [(name, {}) for name in forms] + [('pallas', settings) for settings in args.pallas_settings]
    print(f'jax {jax.__version__}, {jax.devices()[0].platform}; Simple-CNN chunk, N = {args.trials}, '
          f'batch {args.batch}, {args.steps} steps, best of 2')
    print('| form | MB per example-step, as XLA counts | as moved | trial-steps/s | vs im2col |')
    print('| --- | --- | --- | --- | --- |')
    baseline = None
    for name, settings in rows:
        form = FORMS[name]
        defaults = {attribute: getattr(pallas_conv, attribute) for attribute in settings}
        label = ' '.join([name] + [f'{key}={settings[attribute]}' for key, attribute in PALLAS_SETTINGS.items()
                                   if attribute in settings])
        try:
            for attribute, value in settings.items():
                setattr(pallas_conv, attribute, value)  # read when the kernels are traced
            check_against_lax(form)
            if name == 'pallas' and not on_gpu():
                print(f'| {label} | | | skipped: its Triton kernels need a GPU (checked in interpret mode) | |')
                continue
            if name == 'pallas':  # the model's own switch, as config.convolution sets it
                traffic, rate = measure(args.trials, args.batch, args.steps, 'pallas', not args.skip_bytes)
            else:
                models.conv2d = form  # SimpleCNN's layers call models.conv2d
                traffic, rate = measure(args.trials, args.batch, args.steps, 'im2col', not args.skip_bytes)
        except Exception as error:  # one form's failure (a compiler refusal, memory) must not end the run
            print(f'| {label} | | | failed: {type(error).__name__}: {str(error).splitlines()[0][:300]} | |', flush=True)
            continue
        finally:
            models.conv2d = FORMS['im2col']
            for attribute, value in defaults.items():
                setattr(pallas_conv, attribute, value)
        if name == 'im2col':
            baseline = rate
        mb = 1e6 * args.trials * args.batch
        counted, moved = ('?', '?') if traffic is None else (f'{traffic.counted / mb:.2f}', f'{traffic.moved / mb:.2f}')
        ratio = f'{rate / baseline:.2f}x' if baseline else '(im2col failed)'
        print(f'| {label} | {counted} | {moved} | {rate:,.1f} | {ratio} |', flush=True)


if __name__ == '__main__':
    main()
