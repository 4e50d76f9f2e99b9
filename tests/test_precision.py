"""Matmul precision: config.matmul_precision reaches every matmul and convolution of training,
evaluation and SNIP, the smoothness estimators run at full float32 whatever the setting, and a bad
name is refused. Checked in the lowered program (XLA:CPU computes float32 at every precision, so
values cannot tell them apart here; on a GPU 'default' is TF32)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dps_jax import config as config_lib
from dps_jax import masks, models, optim, precision, smoothness, trial, workload
from dps_jax import network as network_lib
from tests.real_data import needs_fashion_mnist

needs_data = needs_fashion_mnist

MODEL = models.SimpleCNN()
PARAMS = jax.jit(MODEL.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))['params']
IMAGES, LABELS = jnp.zeros((8, 28, 28, 1)), jnp.zeros(8, jnp.int32)


def dot_precisions(function, *args) -> list[str]:
    """The precision of every dot_general and convolution in `function`'s lowered program."""
    text = jax.jit(function).lower(*args).as_text()
    found = re.findall(r'stablehlo\.(?:dot_general|convolution).*?precision = \[(\w+), \w+\]', text)
    assert found, 'no matmul in the program'
    return found


def train_step_at(matmul_precision):
    step = trial.make_train_step(workload.model_apply(MODEL, matmul_precision), optim.make_optimizer('sgd'))
    state = trial.new_trial_state(PARAMS, jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), PARAMS),
                                  optim.make_optimizer('sgd'), {name: 0.1 for name in optim.HYPERPARAMETERS})
    return jax.vmap(step, in_axes=(0, None)), jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), state)


@pytest.mark.parametrize('name, expected', [('default', 'DEFAULT'), ('high', 'HIGH'), ('highest', 'HIGHEST')])
def test_every_matmul_of_a_vmapped_training_step_runs_at_the_configured_precision(name, expected):
    step, states = train_step_at(name)
    found = dot_precisions(step, states, (IMAGES, LABELS))
    assert len(found) >= 6  # forward and backward of the convolutions and the dense layer
    assert set(found) == {expected}


def test_the_configured_precision_wins_over_the_ambient_one():
    step, states = train_step_at('default')
    with jax.default_matmul_precision('highest'):
        assert set(dot_precisions(step, states, (IMAGES, LABELS))) == {'DEFAULT'}


def test_evaluation_and_snip_follow_the_apply_function_precision():
    apply_fn = workload.model_apply(MODEL, 'highest')
    keep = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), PARAMS)
    error_count = trial.make_val_error_count(apply_fn, chunk_size=4)
    state = trial.new_trial_state(PARAMS, keep, optim.make_optimizer('sgd'),
                                  {name: 0.1 for name in optim.HYPERPARAMETERS})
    assert set(dot_precisions(error_count, state, IMAGES, LABELS)) == {'HIGHEST'}
    snip = lambda params: masks.snip_scores(apply_fn, params, IMAGES, LABELS, 4)
    assert set(dot_precisions(snip, PARAMS)) == {'HIGHEST'}


@pytest.mark.parametrize('ambient', ['default', 'high'])
def test_smoothness_estimators_run_at_full_float32_whatever_the_ambient_precision(ambient):
    losses = smoothness.make_example_losses(workload.model_apply(MODEL, None))
    keep = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), PARAMS)
    lipschitz = lambda previous, params: smoothness.lipschitz_estimate(losses, previous, params, keep, IMAGES,
                                                                       LABELS, 4).lipschitz
    with jax.default_matmul_precision(ambient):
        assert set(dot_precisions(lipschitz, PARAMS, PARAMS)) == {precision.ESTIMATOR_PRECISION.upper()}


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError, match="'float16' is not one of default, high, highest"):
        precision.at_matmul_precision(lambda: None, 'float16')
    config = config_lib.base_study_config()
    config.matmul_precision = 'tf32'
    with pytest.raises(config_lib.ConfigError, match=r"config.matmul_precision='tf32' is not accepted; choose one "
                                                     r"of: default, high, highest"):
        config_lib.validate_study_config(config)


@needs_data
def test_a_workload_trains_at_its_config_precision():
    config = config_lib.base_study_config()
    config.matmul_precision = 'highest'
    work = workload.load_workload(config)
    assert set(dot_precisions(lambda params, images: work.network.eval_apply(params, {}, images), PARAMS,
                              IMAGES)) == {'HIGHEST'}
    unstated = work.network_at('default')
    assert set(dot_precisions(lambda params, images: unstated.eval_apply(params, {}, images), PARAMS, IMAGES)) == {
        'DEFAULT'}
    # The training pass of the workload's network, too.
    train_pass = lambda params, images: work.network.train_apply(params, {}, images, None)[0]
    assert set(dot_precisions(train_pass, PARAMS, IMAGES)) == {'HIGHEST'}
    # And its checks' network, which by default convolves by XLA's own convolution: at the same precision,
    # in the config's compute dtype.
    assert work.eval_convolution == 'xla'
    check_pass = lambda params, images: work.eval_network.eval_apply(params, {}, images)
    assert set(dot_precisions(check_pass, PARAMS, IMAGES)) == {'HIGHEST'}
    assert 'stablehlo.convolution' in jax.jit(check_pass).lower(PARAMS, IMAGES).as_text()
    config.compute_dtype = 'bfloat16'
    low = workload.load_workload(config)
    assert set(dot_operand_types(lambda params, images: low.eval_network.eval_apply(params, {}, images), PARAMS,
                                 IMAGES)) == {'bf16'}


# --- config.compute_dtype ---------------------------------------------------------------------

def _plain_simple_cnn(params, images):
    """Simple-CNN by lax.conv_general_dilated and lax.reduce_window, in its inputs' dtype."""
    def conv(x, layer):
        return lax.conv_general_dilated(x, params[layer]['kernel'], (1, 1), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params[layer]['bias']

    def pool(x):
        return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')

    x = pool(jax.nn.relu(conv(pool(jax.nn.relu(conv(images, 'conv1'))), 'conv2')))
    return x.reshape(x.shape[0], -1) @ params['dense']['kernel'] + params['dense']['bias']


def dot_operand_types(function, *args) -> list[str]:
    """The element types of every dot_general and convolution result in `function`'s lowered program."""
    text = jax.jit(function).lower(*args).as_text()
    found = re.findall(r'stablehlo\.(?:dot_general|convolution)[^\n]*->\s*tensor<[0-9x]*(\w+)>', text)
    assert found, 'no matmul in the program'
    return found


def test_bfloat16_evaluation_computes_in_bfloat16_and_returns_float32_logits():
    images = jnp.asarray(np.random.default_rng(1).standard_normal((8, 28, 28, 1)), jnp.float32)
    low = network_lib.from_module(MODEL, (28, 28, 1), 'highest', 'bfloat16')
    full = network_lib.from_module(MODEL, (28, 28, 1), 'highest')
    assert set(dot_operand_types(lambda p, x: low.eval_apply(p, {}, x), PARAMS, images)) == {'bf16'}
    assert set(dot_operand_types(lambda p, x: full.eval_apply(p, {}, x), PARAMS, images)) == {'f32'}
    logits, reference = jax.jit(low.eval_apply)(PARAMS, {}, images), jax.jit(full.eval_apply)(PARAMS, {}, images)
    assert logits.dtype == jnp.float32
    # An independent bfloat16 forward pass (plain lax) agrees to bfloat16's precision; float32 is
    # measurably elsewhere, so the cast is really there.
    plain = jax.jit(_plain_simple_cnn)(precision.cast_floating(PARAMS, jnp.bfloat16), images.astype(jnp.bfloat16))
    scale = float(jnp.abs(reference).max())
    assert float(jnp.abs(logits - plain.astype(jnp.float32)).max()) < 0.03 * scale
    assert float(jnp.abs(logits - reference).max()) > 1e-4 * scale


def test_bfloat16_training_keeps_float32_parameters_and_pruned_weights_exactly_zero():
    optimizer = optim.make_optimizer('sgd')
    mask = masks.make_mask('magnitude', key=jax.random.PRNGKey(0), params=PARAMS, sparsity=0.9)
    low = network_lib.from_module(MODEL, (28, 28, 1), None, 'bfloat16')
    state = trial.new_trial_state(PARAMS, mask, optimizer, {name: 0.1 for name in optim.HYPERPARAMETERS})
    step = jax.jit(trial.make_train_step(low, optimizer))
    images = jnp.asarray(np.random.default_rng(2).standard_normal((16, 28, 28, 1)), jnp.float32)
    labels = jax.random.randint(jax.random.PRNGKey(3), (16,), 0, 10)
    for _ in range(3):
        state, metrics = step(state, (images, labels))
    assert bool(jnp.isfinite(metrics.loss)) and metrics.loss.dtype == jnp.float32
    trained = []
    for param, start, kept in zip(jax.tree.leaves(state.params), jax.tree.leaves(PARAMS), jax.tree.leaves(mask)):
        assert param.dtype == jnp.float32
        assert bool(jnp.all(jnp.where(kept, True, param == 0)))
        trained.append(bool(jnp.any(jnp.where(kept, param != start, False))))
    assert sum(trained) >= 3  # the kept kernels trained (magnitude pruning drops the zero biases)


def test_an_unknown_compute_dtype_is_refused_by_name():
    config = config_lib.base_study_config()
    config.compute_dtype = 'float16'
    with pytest.raises(config_lib.ConfigError, match="config.compute_dtype='float16' is not accepted; choose one "
                                                     "of: float32, bfloat16"):
        config_lib.validate_study_config(config)


@pytest.mark.slow
@needs_data
def test_a_real_cell_in_bfloat16_reaches_the_goal_within_one_check_of_float32():
    import dps_jax
    config = config_lib.base_study_config()
    # Trial 1 (learning rate 0.1) reaches 0.25 within a few checks; trials_per_group skips the memory
    # estimate's compiles.
    config.update(dict(sparsities=(0.0,), batch_sizes=(64,), num_trials=2, goal_error=0.25, check_every=20,
                       max_steps=400, until='first', trials_per_group=2, progress_every_seconds=1000.0))
    steps = {}
    for dtype in ('float32', 'bfloat16'):
        config.compute_dtype = dtype
        cell = dps_jax.run_cell(config, 0.0, 64, log=None)
        steps[dtype] = cell.summary['steps_to_result']
    assert steps['float32'] is not None and steps['bfloat16'] is not None, steps
    assert abs(steps['float32'] - steps['bfloat16']) <= config.check_every, steps
