"""Every shipped config loads, validates, and plans the workload REFERENCE.md describes."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest

from dps_jax import config as config_lib
from dps_jax import study

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', '*.py')))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_validates(path):
    config = load(path)
    if 'sparsities' in config:
        config_lib.validate_study_config(config, 45000)
    else:
        config_lib.validate_trial_config(config, 54000)


@pytest.mark.parametrize('name, dataset, optimizer, goal, budget, searched', [
    ('mnist_simple_cnn_sgd', 'mnist', 'sgd', 0.02, 40000, ('learning_rate',)),
    ('mnist_simple_cnn_momentum', 'mnist', 'momentum', 0.02, 40000, ('learning_rate', 'momentum')),
    ('mnist_simple_cnn_nesterov', 'mnist', 'nesterov', 0.02, 40000, ('learning_rate', 'momentum')),
    ('fashion_mnist_simple_cnn_nesterov', 'fashion_mnist', 'nesterov', 0.1, 40000, ('learning_rate', 'momentum')),
    ('cifar10_resnet8_nesterov', 'cifar10', 'nesterov', 0.4, 100000,
     ('learning_rate', 'momentum', 'decay_steps', 'end_learning_rate_factor')),
])
def test_paper_workloads(name, dataset, optimizer, goal, budget, searched):
    config = load(next(path for path in CONFIGS if os.path.basename(path) == name + '.py'))
    assert (config.dataset, config.optimizer, config.goal_error, config.max_steps) == (dataset, optimizer, goal, budget)
    assert tuple(config.search_names) == searched
    assert tuple(config.sparsities) == (0.0, 0.5, 0.7, 0.9)
    assert tuple(config.batch_sizes) == tuple(2 ** k for k in range(1, 15))
    assert config.num_trials == 100 and config.check_every == 100
    assert config.model == ('resnet8' if dataset == 'cifar10' else 'simple_cnn')


def test_cifar_plan_has_every_cell_and_integer_decay_steps(tmp_path):
    config = load(next(path for path in CONFIGS if path.endswith('cifar10_resnet8_nesterov.py')))
    config.plan_only = True
    study.run(config, str(tmp_path), log=lambda line: None)
    plan = json.loads((tmp_path / 'plan.json').read_text())
    assert len(plan['cells']) == 4 * 14 and len(plan['trials']) == 100
    assert all(isinstance(trial['decay_steps'], int) for trial in plan['trials'])
    assert plan['trials'][0]['learning_rate'] == pytest.approx(0.01)


REFERENCE_SEARCHES = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data',
                                                 'reference_metaparameters.json')))['searches']


@pytest.mark.parametrize('name', ['mnist_simple_cnn_sgd', 'mnist_simple_cnn_momentum', 'cifar10_resnet8_nesterov'])
def test_plan_trials_are_the_reference_metaparameters(name, tmp_path):
    config = load(next(path for path in CONFIGS if os.path.basename(path) == name + '.py'))
    config.plan_only = True
    study.run(config, str(tmp_path), log=lambda line: None)
    plan = json.loads((tmp_path / 'plan.json').read_text())
    expected = REFERENCE_SEARCHES[','.join(config.search_names)]['values']
    assert plan['searched'] == list(config.search_names)
    assert [trial['seed'] for trial in plan['trials']] == list(range(100))
    for column, values in expected.items():
        got = [trial[column] for trial in plan['trials']]
        if column == 'decay_steps':
            assert got == values and all(isinstance(v, int) for v in got)
        else:
            np.testing.assert_allclose(got, values, rtol=1e-12, atol=0, err_msg=column)
