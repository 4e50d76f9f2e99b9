"""The Pallas window-sum convolution against lax.conv_general_dilated, run in Pallas' interpret mode on
the CPU, and lowered (not run) for a CUDA GPU."""

import functools
import re
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dps_jax import config as config_lib
from dps_jax import data, models, network, pallas_conv, precision, study, trial, workload

pytestmark = pytest.mark.matmul_precision('highest')

conv2d = functools.partial(pallas_conv.conv2d, interpret=True)


def lax_conv(x, kernel, bias, padding, stride=1):
    """The oracle: XLA's own convolution, NHWC / HWIO, at full float32 precision."""
    y = lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                 precision='highest')
    return y + bias


def normal(rng, shape, scale=1.0):
    """float32 standard normal draws times scale (numpy's: jax.random.normal compiles for 1-2 s per shape)."""
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


def random_case(batch, size, in_features, out_features, window, seed=0):
    rng = np.random.default_rng(seed)
    height, width = size
    window_h, window_w = (window, window) if isinstance(window, int) else window
    return (normal(rng, (batch, height, width, in_features)),
            normal(rng, (window_h, window_w, in_features, out_features), 1 / np.sqrt(window_h * window_w * in_features)),
            normal(rng, (out_features,)))


# Simple-CNN's conv2 (12x12x32 -> 8x8x64), a SAME 3x3 as in ResNet-8, and sizes that are not powers of two
# (odd batch, 9-pixel width, 24 in and 20 out channels), which the kernels pad and cut.
CASES = [((2, (12, 12), 32, 64, 5), 'VALID'), ((2, (8, 8), 16, 16, 3), 'SAME'), ((3, (10, 9), 24, 20, 3), 'VALID'),
         ((2, (9, 11), 16, 16, (3, 5)), 'SAME')]  # a 3x5 kernel: height and width must not be swapped


def values_and_gradients(convolution, padding, x, kernel, bias):
    """The convolution and the gradients of a nonlinear loss of it, in one jitted program (interpret mode
    compiles each kernel's body, most of these tests' time; once per case)."""
    def loss(x, kernel, bias):
        y = convolution(x, kernel, bias, padding=padding)
        # tanh and a sign pattern: the output gradient differs from pixel to pixel.
        return jnp.sum(jnp.tanh(y) * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y
    return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(x, kernel, bias)


@pytest.mark.parametrize('shape, padding', CASES)
def test_values_and_gradients_match_lax(shape, padding):
    x, kernel, bias = random_case(*shape)
    assert pallas_conv.covers(x.shape, kernel.shape, 1)
    (_, want_y), want = values_and_gradients(lax_conv, padding, x, kernel, bias)
    (_, got_y), got = values_and_gradients(conv2d, padding, x, kernel, bias)
    # float32 sums of up to 800 products in another order: 1e-4 of values of order 1-10.
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-4)
    for name, wanted, value in zip(('input', 'kernel', 'bias'), want, got):
        np.testing.assert_allclose(value, wanted, rtol=1e-4, atol=1e-4, err_msg=name)


def test_vmapped_over_trials_each_trial_gets_its_own_kernel():
    """As the engine calls it: per-trial inputs and kernels under vmap, values and gradients per trial."""
    x, kernel, bias = random_case(2, (10, 10), 16, 32, 3)
    xs = jnp.stack([x, 2 * x, -x])
    kernels = jnp.stack([kernel, 0.5 * kernel, jnp.flip(kernel, 0)])

    def gradients(convolution, x, kernel):
        return jax.grad(lambda x, kernel: jnp.sum(jnp.tanh(convolution(x, kernel, bias, padding='VALID')) ** 2),
                        (0, 1))(x, kernel)

    got = jax.jit(jax.vmap(functools.partial(gradients, conv2d)))(xs, kernels)
    want = jax.jit(jax.vmap(functools.partial(gradients, lax_conv)))(xs, kernels)
    assert not np.allclose(got[1][0], got[1][1], atol=1e-3)  # the trials' gradients differ ...
    for wanted, value in zip(want, got):  # ... and each is its own trial's
        np.testing.assert_allclose(value, wanted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride, in_features', [(2, 16), (1, 1), (1, 256)])
def test_what_the_kernels_do_not_cover_goes_to_im2col(stride, in_features, monkeypatch):
    x, kernel, bias = random_case(2, (12, 12), in_features, 16, 3)
    assert not pallas_conv.covers(x.shape, kernel.shape, stride)
    monkeypatch.setattr(pallas_conv.pl, 'pallas_call', None)  # would fail if called
    np.testing.assert_allclose(conv2d(x, kernel, bias, stride, 'SAME'), lax_conv(x, kernel, bias, 'SAME', stride),
                               rtol=1e-5, atol=1e-5)


def test_a_training_step_lowers_to_triton_kernels_for_a_cuda_gpu():
    """The vmapped gradient of Simple-CNN's conv2 at N = 100, batch 64 lowers on this machine for CUDA:
    three Triton kernels (forward, input gradient, kernel gradient), each over a grid with the trials."""
    pytest.importorskip('jax._src.pallas.triton.lowering')

    def loss(x, kernel):
        return jnp.sum(pallas_conv.conv2d(x, kernel, None, 1, 'VALID') ** 2)

    shapes = (jax.ShapeDtypeStruct((100, 64, 12, 12, 32), jnp.float32),
              jax.ShapeDtypeStruct((100, 5, 5, 32, 64), jnp.float32))
    text = jax.jit(jax.vmap(jax.grad(loss, (0, 1)))).trace(*shapes).lower(lowering_platforms=('cuda',)).as_text()
    assert text.count('xla.gpu.triton') == 3
    assert text.count('grid_z = 100') == 3
    assert 'x800x' not in text  # no (., 800) im2col patch array of conv2


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='the compiled Triton kernels need a GPU')
@pytest.mark.parametrize('shape, padding', CASES)
def test_on_a_gpu_the_compiled_kernels_match_lax(shape, padding):
    x, kernel, bias = random_case(*shape)
    (_, want_y), want = values_and_gradients(lax_conv, padding, x, kernel, bias)
    (_, got_y), got = values_and_gradients(pallas_conv.conv2d, padding, x, kernel, bias)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-4)
    for name, wanted, value in zip(('input', 'kernel', 'bias'), want, got):
        np.testing.assert_allclose(value, wanted, rtol=1e-4, atol=1e-4, err_msg=name)


def test_simple_cnn_with_pallas_convolutions_equals_im2col_in_values_and_gradients():
    """config.convolution='pallas' as the engine runs it: vmapped over trials' parameters, logits and
    loss gradients of the built-in model equal the im2col model's (conv1, 1 input channel, stays im2col)."""
    images = normal(np.random.default_rng(0), (4, 28, 28, 1))
    labels = jnp.arange(4) % 10
    im2col, pallas = models.get_model('simple_cnn'), models.get_model('simple_cnn', convolution='pallas')
    params = jax.vmap(lambda key: im2col.init(key, images)['params'])(jax.random.split(jax.random.PRNGKey(1), 2))

    def loss_and_gradients(model):
        def loss(params):
            logits = model.apply({'params': params}, images)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), logits
        return jax.jit(jax.vmap(jax.value_and_grad(loss, has_aux=True)))(params)

    traced = str(jax.make_jaxpr(lambda p: pallas.apply({'params': p}, images))(jax.tree.map(lambda x: x[0], params)))
    assert traced.count('pallas_call') == 1  # conv2 by the kernels; conv1 (1 input channel) by im2col
    (want_loss, want_logits), want = loss_and_gradients(im2col)
    (got_loss, got_logits), got = loss_and_gradients(pallas)
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)


def test_pallas_convolutions_are_refused_off_a_gpu_and_for_models_of_ones_own():
    config = config_lib.base_study_config()
    config.convolution = 'pallas'
    if jax.default_backend() != 'gpu':
        with pytest.raises(config_lib.ConfigError, match=re.escape(
                f"config.convolution='pallas' runs Triton kernels on a GPU; this backend is {jax.default_backend()}")):
            workload.load_workload(config)
    with pytest.raises(network.ModelError, match="config.convolution='pallas' applies to the built-in models"):
        network.resolve_module('my_nets:Net', 10, 'pallas')
    assert isinstance(network.resolve_module('resnet8', 10, 'pallas'), models.ResNet8)


def test_the_gradient_kernels_run_at_the_precision_of_the_forward_pass():
    """dps_jax sets config.matmul_precision around the forward function only (precision.at_matmul_precision);
    the custom VJP's backward pass is traced outside it and must carry the same precision."""
    x, kernel, _ = random_case(2, (8, 8), 16, 16, 3)
    apply = precision.at_matmul_precision(lambda kernel, x: conv2d(x, kernel, None, 1, 'VALID'), 'highest')
    with jax.default_matmul_precision('default'):  # the ambient precision, under this module's 'highest'
        text = jax.jit(jax.grad(lambda k, x: jnp.sum(apply(k, x) ** 2), (0, 1))).lower(kernel, x).as_text()
    found = re.findall(r'stablehlo\.dot_general.*?precision = \[(\w+), \w+\]', text)
    assert len(found) >= 3 and set(found) == {'HIGHEST'}, found  # forward, input and kernel gradients


def test_pallas_convolutions_are_refused_on_a_mesh_of_several_devices(monkeypatch):
    """A Triton pallas_call has no partitioning rule: a study on a mesh must not run it."""
    config = config_lib.base_study_config()
    config.convolution = 'pallas'
    monkeypatch.setattr(study.parallel, 'make_mesh', lambda trial, data: types.SimpleNamespace(size=8))
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            "config.convolution='pallas' runs on one device; this mesh has 8 "
            "(config.mesh.trial=0, config.mesh.data=1)")):
        study.study_mesh(config)
    config.convolution = 'im2col'
    assert study.study_mesh(config).size == 8


def test_a_kernel_gradient_split_over_programs_sums_to_the_whole(monkeypatch):
    """Large batches split each tap's sum over several programs (one block of images each here)."""
    monkeypatch.setattr(pallas_conv, 'ROWS_PER_PROGRAM', 1)
    monkeypatch.setattr(pallas_conv, 'TILE_PIXELS', 16)  # 4-pixel rows: blocks of 4 images
    x, kernel, bias = random_case(9, (6, 6), 16, 16, 3)  # 3 blocks (the last padded): 3 programs per tap
    (_, _), want = values_and_gradients(lax_conv, 'VALID', x, kernel, bias)
    (_, _), got = values_and_gradients(conv2d, 'VALID', x, kernel, bias)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
    text = jax.jit(jax.grad(lambda k: jnp.sum(conv2d(x, k, None, 1, 'VALID') ** 2))).lower(kernel).as_text()
    assert 'tensor<3x3x3x16x16xf32>' in text  # (parts, kh, kw, C, F)


def test_eval_convolution_is_refused_by_name_off_a_gpu_for_models_of_ones_own_and_on_a_mesh(monkeypatch):
    config = config_lib.base_study_config()
    config.eval_convolution = 'pallas'
    if jax.default_backend() != 'gpu':
        with pytest.raises(config_lib.ConfigError, match=re.escape("config.eval_convolution='pallas' runs Triton")):
            workload.load_workload(config)
    mine = config_lib.base_study_config()
    mine.eval_convolution = 'xla'  # any backend: the refusal is the model's
    rng = np.random.default_rng(0)
    dataset = data.from_arrays(rng.normal(size=(20, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 20),
                               num_classes=10)
    with pytest.raises(network.ModelError, match="config.eval_convolution='xla' applies to the built-in models"):
        workload.load_workload(mine, model=models.SimpleCNN(), dataset=dataset)
    monkeypatch.setattr(study.parallel, 'make_mesh', lambda trial, data: types.SimpleNamespace(size=8))
    with pytest.raises(config_lib.ConfigError, match=re.escape("config.eval_convolution='pallas' runs on one device")):
        study.study_mesh(config)
    config.convolution, config.eval_convolution = 'pallas', 'im2col'
    with pytest.raises(config_lib.ConfigError, match=re.escape("config.convolution='pallas' runs on one device")):
        study.study_mesh(config)
    config.eval_convolution = 'cudnn'
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            "config.eval_convolution='cudnn' is not accepted; choose one of: auto, '', im2col, pallas, xla")):
        config_lib.validate_study_config(config)
