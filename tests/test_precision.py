"""Matmul precision: config.matmul_precision reaches every matmul and convolution of training,
evaluation and SNIP, the smoothness estimators run at full float32 whatever the setting, and a bad
name is refused. Checked in the lowered program (XLA:CPU computes float32 at every precision, so
values cannot tell them apart here; on a GPU 'default' is TF32)."""

import re

import jax
import jax.numpy as jnp
import pytest

from dps_jax import config as config_lib
from dps_jax import masks, models, optim, precision, smoothness, trial, workload
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
