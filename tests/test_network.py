"""Any flax Module as a trial's network: import paths, BatchNorm statistics, dropout keys."""

import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dps_jax import config as config_lib
from dps_jax import engine, masks, models, network, optim, trial

RNG = np.random.default_rng(11)


class BatchNormNet(nn.Module):
    """Dense -> BatchNorm -> ReLU -> Dropout -> Dense, with a `train` argument."""
    num_classes: int = 3
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.reshape((x.shape[0], -1))
        x = nn.Dense(8, name='hidden')(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='norm')(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.num_classes, name='out')(x)


def problem(num_examples=600, noise=0.8):
    centres = np.eye(3, 6) * 2.0
    labels = RNG.integers(0, 3, size=num_examples)
    images = centres[labels] + RNG.normal(size=(num_examples, 6)) * noise
    return jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)


IMAGES, LABELS = problem()


def relu(x):
    return np.maximum(x, 0.0)


# --- Which Module a config names --------------------------------------------------------------

def test_built_in_names_give_the_built_in_models():
    assert isinstance(network.resolve_module('simple_cnn', 10), models.SimpleCNN)
    assert network.resolve_module('resnet8', 7).num_classes == 7


def test_an_import_path_names_a_class_a_factory_or_an_instance(tmp_path, monkeypatch):
    (tmp_path / 'my_nets.py').write_text(textwrap.dedent('''
        import flax.linen as nn

        class Net(nn.Module):
            num_classes: int

            @nn.compact
            def __call__(self, x):
                return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))

        def make_net(num_classes):
            return Net(num_classes * 2)

        ready = Net(5)
        not_a_model = 3
        def not_a_module(num_classes):
            return 'a string'
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert network.resolve_module('my_nets:Net', 4).num_classes == 4
    assert network.resolve_module('my_nets:make_net', 4).num_classes == 8
    assert network.resolve_module('my_nets:ready', 4).num_classes == 5
    by_file = network.resolve_module(f'{tmp_path / "my_nets.py"}:Net', 3)
    assert type(by_file).__name__ == 'Net' and by_file.num_classes == 3
    for path, message in [('my_nets:missing', "has no attribute 'missing'"),
                          ('my_nets:not_a_model', 'is a int, not a flax Module class'),
                          ('my_nets:not_a_module', 'returned a str, not a flax Module'),
                          ('no_such_package.nets:Net', "cannot import 'no_such_package.nets': ModuleNotFoundError"),
                          (f'{tmp_path / "absent.py"}:Net', 'no file'),
                          ('resnet_9000', "choose one of: simple_cnn, resnet8, or an import path")]:
        with pytest.raises(network.ModelError, match=message):
            network.resolve_module(path, 4)


def test_a_bad_model_field_is_one_config_error():
    config = config_lib.base_study_config()
    config.model = 'not a path'
    with pytest.raises(config_lib.ConfigError, match=r"config.model='not a path' is not accepted"):
        config_lib.validate_study_config(config)
    config.model = 'package.module:Attribute'  # imported only when the workload loads
    config_lib.validate_study_config(config)


def test_logits_of_the_wrong_width_are_refused_by_name():
    net = network.from_module(BatchNormNet(num_classes=4), (6,))
    with pytest.raises(network.ModelError, match=r'shape \(4,\) per example; the dataset has 3 classes'):
        network.check_logits(net, (6,), 3, 'BatchNormNet')


def test_a_model_that_fails_on_the_data_or_draws_another_random_stream_is_one_line():
    class Reshaping(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape((x.shape[0], 7, -1, 5)).sum((1, 2)))

    with pytest.raises(network.ModelError, match=r'^model Reshaping fails on images of shape \(6,\): TypeError: '):
        network.from_module(Reshaping(), (6,))

    class Noisy(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            if train:
                x = x + jax.random.normal(self.make_rng('noise'), x.shape)
            return nn.Dense(3)(x)

    with pytest.raises(network.ModelError, match=r"^model Noisy fails on images of shape \(6,\): .*noise"):
        network.check_logits(network.from_module(Noisy(), (6,)), (6,), 3, 'Noisy')


def test_a_model_file_imports_its_neighbours_and_is_read_afresh(tmp_path):
    (tmp_path / 'layers.py').write_text('WIDTH = 4\n')
    model_file = tmp_path / 'net.py'
    source = 'import flax.linen as nn\nimport layers\n\ndef make(num_classes):\n    return nn.Dense({})\n'
    model_file.write_text(source.format('layers.WIDTH'))
    assert network.resolve_module(f'{model_file}:make', 3).features == 4
    assert str(tmp_path) not in __import__('sys').path  # the folder was on the path for the import only
    model_file.write_text(source.format('num_classes * 5'))
    assert network.resolve_module(f'{model_file}:make', 3).features == 15


def test_mutable_collections_need_a_mode_argument():
    class NoMode(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=False)(x)

    with pytest.raises(network.ModelError, match=r'mutable collections \(batch_stats\) but its __call__ takes none'):
        network.from_module(NoMode(), (6,))


# --- Built-in models are unchanged ------------------------------------------------------------

def test_built_in_networks_train_and_prune_bit_for_bit_as_a_plain_apply_function():
    """The Module path (network.from_module) against the stateless (params, images) -> logits path
    the built-in models used before networks had state: the same init, SNIP scores and steps."""
    model = models.SimpleCNN()
    shape = (16, 16, 1)  # the smallest Simple-CNN takes: compiles fastest
    net = network.from_module(model, shape)
    plain = lambda params, images: model.apply({'params': params}, images)
    params, model_state = trial.init_variables(net, shape, 3)
    assert model_state == {}
    jax.tree.map(np.testing.assert_array_equal, params,
                 model.init(trial.trial_keys(3)[0], jnp.zeros((1,) + shape))['params'])
    images = jnp.asarray(RNG.normal(size=(24,) + shape), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 10, size=24), jnp.int32)
    mask_key = trial.trial_keys(3)[1]
    scores = jax.jit(lambda p: masks.snip_scores(trial.scoring_apply(net, {}), p, images, labels, 8, mask_key))(params)
    plain_scores = jax.jit(lambda p: masks.snip_scores(plain, p, images, labels, 8))(params)
    jax.tree.map(np.testing.assert_array_equal, scores, plain_scores)
    tx = optim.make_optimizer('momentum')
    mask = masks.mask_from_scores(scores, params, 0.9)
    state = trial.new_trial_state(params, mask, tx, {'learning_rate': 0.05, 'momentum': 0.9}, {}, trial.dropout_key(3))
    stepped, plain_stepped = state, state._replace(dropout_key=None)
    step, plain_step = jax.jit(trial.make_train_step(net, tx)), jax.jit(trial.make_train_step(plain, tx))
    for index in range(3):
        batch = (images[8 * index:8 * index + 8], labels[8 * index:8 * index + 8])
        stepped, _ = step(stepped, batch)
        plain_stepped, _ = plain_step(plain_stepped, batch)
    jax.tree.map(np.testing.assert_array_equal, stepped.params, plain_stepped.params)


def test_the_dropout_key_is_neither_the_initialization_nor_the_mask_key():
    for seed in (0, 1, 4):
        root = jax.random.PRNGKey(seed)
        others = [*trial.trial_keys(seed), *jax.random.split(root, 8), jax.random.fold_in(root, 1)]
        assert not any(np.array_equal(trial.dropout_key(seed), other) for other in others)
    assert not np.array_equal(trial.dropout_key(4), trial.dropout_key(5))


# --- BatchNorm and dropout against hand computations -------------------------------------------

def test_a_training_step_updates_batch_statistics_as_numpy_computes_them():
    net = network.from_module(BatchNormNet(), (6,), 'highest')
    params, model_state = net.init(jax.random.PRNGKey(0), (6,))
    assert set(model_state) == {'batch_stats'}
    tx = optim.make_optimizer('sgd')
    keep = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params)
    state = trial.new_trial_state(params, keep, tx, {'learning_rate': 0.1}, model_state, trial.dropout_key(0))
    batch = (IMAGES[:32], LABELS[:32])
    stepped, _ = jax.jit(trial.make_train_step(net, tx))(state, batch)
    hidden = np.asarray(batch[0], np.float64) @ np.asarray(params['hidden']['kernel'], np.float64)
    hidden += np.asarray(params['hidden']['bias'])
    # flax: running = momentum * running + (1 - momentum) * batch statistic (variance biased).
    np.testing.assert_allclose(stepped.model_state['batch_stats']['norm']['mean'], 0.1 * hidden.mean(0), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(stepped.model_state['batch_stats']['norm']['var'], 0.9 + 0.1 * hidden.var(0),
                               rtol=1e-5)
    assert int(stepped.step) == 1


@pytest.mark.matmul_precision('highest')
def test_evaluation_uses_the_running_statistics():
    net = network.from_module(BatchNormNet(), (6,))
    params, model_state = net.init(jax.random.PRNGKey(1), (6,))
    stats = {'mean': jnp.asarray(RNG.normal(size=8), jnp.float32),
             'var': jnp.asarray(RNG.uniform(0.5, 2.0, size=8), jnp.float32)}
    model_state = {'batch_stats': {'norm': stats}}
    logits = net.eval_apply(params, model_state, IMAGES[:16])
    x = np.asarray(IMAGES[:16], np.float64)
    hidden = x @ np.asarray(params['hidden']['kernel']) + np.asarray(params['hidden']['bias'])
    normed = (hidden - np.asarray(stats['mean'])) / np.sqrt(np.asarray(stats['var']) + 1e-5)
    normed = normed * np.asarray(params['norm']['scale']) + np.asarray(params['norm']['bias'])
    expected = relu(normed) @ np.asarray(params['out']['kernel']) + np.asarray(params['out']['bias'])
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_dropout_draws_from_the_trial_key_folded_with_the_step():
    module = BatchNormNet(dropout_rate=0.5)
    net = network.from_module(module, (6,))
    params, model_state = net.init(jax.random.PRNGKey(2), (6,))
    key = trial.dropout_key(4)
    tx = optim.make_optimizer('sgd')
    keep = jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params)
    state = trial.new_trial_state(params, keep, tx, {'learning_rate': 0.0}, model_state, key)._replace(
        step=jnp.asarray(7, jnp.int32))
    batch = (IMAGES[:32], LABELS[:32])
    _, metrics = trial.make_train_step(net, tx)(state, batch)
    # flax's own training pass with the key of step 7 gives the same loss; step 8's key does not.
    for step, same in ((7, True), (8, False)):
        logits, _ = module.apply({'params': params, **model_state}, batch[0], train=True, mutable=['batch_stats'],
                                 rngs={'dropout': jax.random.fold_in(key, step)})
        loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(32), batch[1]])
        assert bool(jnp.isclose(loss, metrics.loss, rtol=1e-6)) == same


# --- The engine with state: vmapped trials equal trials run alone -------------------------------

# Batched vs single matmuls compared at 1e-5: full float32.
@pytest.mark.matmul_precision('highest')
# The engine steps trials in turn on a CPU and vmapped on accelerators: both, whatever the backend.
@pytest.mark.parametrize('in_turn', [False, True], ids=['vmapped', 'in_turn'])
def test_batchnorm_dropout_trials_of_the_engine_equal_each_trial_run_alone(step_trials, in_turn):
    step_trials(in_turn)
    net = network.from_module(BatchNormNet(dropout_rate=0.2), (6,))
    tx = optim.make_optimizer('momentum')
    rates = np.array([0.3, 1e30, 0.01])
    hyper = {'learning_rate': rates, 'momentum': np.full(len(rates), 0.5)}
    init_trial = trial.make_init_trial(net, tx, (6,), pruning='snip', sparsity=0.5, snip_batch_size=100)
    train, val = (IMAGES[:500], LABELS[:500]), (IMAGES[500:], LABELS[500:])
    trials = engine.init_trials(init_trial, np.arange(len(rates)), hyper, *train)
    settings = dict(train_step=trial.make_train_step(net, tx), val_error=trial.make_val_error_count(net, 32),
                    train_images=train[0], train_labels=train[1], val_images=val[0], val_labels=val[1],
                    batch_size=16, goal_error=0.12, max_steps=100, check_every=10, data_seed=0)
    result = engine.run_cell(trials, until='all', compaction=False, keep_final_state=True, **settings)
    assert set(result.status_names()) >= {'reached', 'diverged'}
    for index, rate in enumerate(rates):
        single = jax.jit(init_trial)(index, {'learning_rate': rate, 'momentum': 0.5}, *train)
        alone = trial.run_trial(state=single, **settings)
        assert engine.STATUS_NAMES[result.status[index]] == alone.status, index
        assert result.steps_to_result[index] == (alone.steps_to_result or -1)
        assert result.steps[index] == alone.steps
    final = jax.tree.map(lambda leaf: leaf[0], result.final_state)
    # Pruned entries stay exactly zero; the statistics moved away from their initial values.
    for param, keep in zip(jax.tree.leaves(final.params), jax.tree.leaves(final.mask)):
        assert np.all(np.asarray(param)[~np.asarray(keep)] == 0)
    assert not np.allclose(final.model_state['batch_stats']['norm']['var'], 1.0)


def test_a_batchnorm_dropout_cell_resumed_from_a_checkpoint_ends_as_the_uninterrupted_run(tmp_path):
    """The statistics and dropout keys are part of the checkpointed trial state."""
    from dps_jax import checkpoints

    net = network.from_module(BatchNormNet(dropout_rate=0.3), (6,))
    tx = optim.make_optimizer('sgd')
    rates = np.array([0.2, 0.05, 0.01, 0.5])
    init_trial = trial.make_init_trial(net, tx, (6,), pruning='random', sparsity=0.3)
    trials = engine.init_trials(init_trial, np.arange(4), {'learning_rate': rates}, IMAGES[:500], LABELS[:500])
    settings = dict(train_step=trial.make_train_step(net, tx), val_error=trial.make_val_error_count(net, 50),
                    train_images=IMAGES[:500], train_labels=LABELS[:500], val_images=IMAGES[500:],
                    val_labels=LABELS[500:], batch_size=8, goal_error=0.1, max_steps=80, check_every=10,
                    until='all')
    uninterrupted = engine.run_cell(trials, **settings)
    saved = lambda lines: checkpoints.CellCheckpoints(str(tmp_path), 1, identity={'cell': 'bn'}, log=lines.append)
    engine.run_cell(trials, checkpoints=saved([]), **settings)  # leaves its last two checkpoints, as a kill would
    lines = []
    resumed = engine.run_cell(trials, checkpoints=saved(lines), log=lines.append, **settings)
    assert any('resumed from checkpoint at step' in line for line in lines), lines
    for field in ('status', 'steps_to_result', 'steps', 'best_val_error', 'last_val_error'):
        np.testing.assert_array_equal(getattr(resumed, field), getattr(uninterrupted, field), err_msg=field)
    assert len(set(uninterrupted.steps.tolist())) > 1  # trials ended at different steps: the test can tell
