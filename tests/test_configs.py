"""Every shipped config loads, validates, and plans the workload REFERENCE.md describes."""

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from dps_jax import config as config_lib
from dps_jax import study, workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def test_a_single_trial_scores_at_most_its_training_split_for_snip():
    config = load(next(path for path in CONFIGS if path.endswith('fashion_mnist_trial.py')))
    config.snip_examples = 54001
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            'config.snip_examples=54001 is larger than the training split (54000 examples)')):
        config_lib.validate_trial_config(config, 54000)
    del config.snip_examples  # a config from before the field: the whole split
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


def test_gpu_study_is_a_real_grid_of_the_size_it_was_timed_at():
    """configs/fashion_mnist_gpu.py was timed on an H100 (401 s) at this size: a change re-times it."""
    config = load(next(path for path in CONFIGS if path.endswith('fashion_mnist_gpu.py')))
    assert (config.dataset, config.model, config.optimizer, config.pruning) == (
        'fashion_mnist', 'simple_cnn', 'sgd', 'snip')
    assert len(config.sparsities) >= 4 and len(config.batch_sizes) >= 8 and config.num_trials >= 32
    assert (tuple(config.sparsities), tuple(config.batch_sizes), config.num_trials) == (
        (0.0, 0.5, 0.7, 0.9), tuple(2 ** k for k in range(3, 11)), 32)
    assert (config.goal_error, config.max_steps, config.check_every, config.until) == (0.12, 20000, 100, 'first')
    assert config.snip_examples == 0  # the whole split, as timed
    assert config.eval_convolution == 'xla'  # checks by cuDNN: the faster real cell on an H200


def test_cifar_plan_has_every_cell_and_integer_decay_steps(tmp_path):
    config = load(next(path for path in CONFIGS if path.endswith('cifar10_resnet8_nesterov.py')))
    config.plan_only = True
    study.run(config, str(tmp_path), log=lambda line: None)
    plan = json.loads((tmp_path / 'plan.json').read_text())
    assert len(plan['cells']) == 4 * 14 and len(plan['trials']) == 100
    assert all(isinstance(trial['decay_steps'], int) for trial in plan['trials'])
    assert plan['trials'][0]['learning_rate'] == pytest.approx(0.01)


# REFERENCE.md, "Metaparameter search".
REFERENCE_SPACE = {
    'learning_rate': {'low': 1e-4, 'high': 1.0, 'scale': 'log'},
    'momentum': {'low': 0.9, 'high': 0.9999, 'scale': 'reverse_log'},
    'decay_steps': {'low': 30000, 'high': 60000, 'scale': 'int'},
    'end_learning_rate_factor': {'low': 1e-4, 'high': 0.1, 'scale': 'log'},
}
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
    assert plan['search_space'] == {name: REFERENCE_SPACE[name] for name in config.search_names}
    assert [trial['seed'] for trial in plan['trials']] == list(range(100))
    for column, values in expected.items():
        got = [trial[column] for trial in plan['trials']]
        if column == 'decay_steps':
            assert got == values and all(isinstance(v, int) for v in got)
        else:
            np.testing.assert_allclose(got, values, rtol=1e-12, atol=0, err_msg=column)


# --- config.search_space.

def test_the_default_search_space_is_the_reference_space():
    assert config_lib.base_study_config().search_space.to_dict() == REFERENCE_SPACE


DROP = object()  # a field to remove from an entry


def with_entry(name, **fields):
    """The base study config with search_space[name] updated by `fields` (DROP removes one)."""
    config = config_lib.base_study_config()
    entry = config.search_space[name].to_dict() if name in config.search_space else {}
    entry = {key: value for key, value in {**entry, **fields}.items() if value is not DROP}
    config.search_space[name] = ml_collections.ConfigDict(entry)
    return config


# The default search is learning_rate alone: the other entries are unsearched, and checked all the same.
@pytest.mark.parametrize('name, fields, message', [
    ('weight_decay', dict(low=1e-5, high=1e-3, scale='log'),
     'config.search_space.weight_decay is not a metaparameter; accepted: learning_rate, momentum, decay_steps, '
     'end_learning_rate_factor'),
    ('learning_rate', dict(low=DROP), 'config.search_space.learning_rate.low is missing'),
    ('momentum', dict(high=DROP), 'config.search_space.momentum.high is missing'),
    ('decay_steps', dict(scale=DROP), 'config.search_space.decay_steps.scale is missing'),
    ('learning_rate', dict(lwo=1e-3), 'config.search_space.learning_rate has unknown fields lwo; accepted: low, high, '
                                      'scale'),
    ('learning_rate', dict(low='small'),
     "config.search_space.learning_rate.low='small' is not accepted: low must be a finite number"),
    ('learning_rate', dict(high=True), 'config.search_space.learning_rate.high=True is not accepted: high must be a '
                                       'finite number'),
    ('learning_rate', dict(high=float('inf')),
     'config.search_space.learning_rate.high=inf is not accepted: high must be a finite number'),
    ('end_learning_rate_factor', dict(low=float('nan')),
     'config.search_space.end_learning_rate_factor.low=nan is not accepted: low must be a finite number'),
    ('learning_rate', dict(low=1.0), 'config.search_space.learning_rate.low=1.0 is not accepted: low must be below '
                                     'high=1.0'),
    ('momentum', dict(low=0.99, high=0.95), 'config.search_space.momentum.low=0.99 is not accepted: low must be below '
                                            'high=0.95'),
    ('learning_rate', dict(scale='cubic'), "config.search_space.learning_rate.scale='cubic' is not accepted: the scale "
                                           "must be one of: log, reverse_log, linear, int"),
    ('learning_rate', dict(low=0),
     'config.search_space.learning_rate.low=0 is not accepted: a log scale needs low > 0'),
    ('end_learning_rate_factor', dict(low=0.0),
     'config.search_space.end_learning_rate_factor.low=0.0 is not accepted: a log scale needs low > 0'),
    ('momentum', dict(high=1.0), 'config.search_space.momentum.high=1.0 is not accepted: a reverse_log scale needs '
                                 'high < 1'),
    ('decay_steps', dict(low=30000.5), 'config.search_space.decay_steps.low=30000.5 is not accepted: an int scale '
                                       'needs whole-number bounds'),
    ('learning_rate', dict(low=1.0, high=2.5, scale='int'),
     'config.search_space.learning_rate.high=2.5 is not accepted: an int scale needs whole-number bounds'),
    ('learning_rate', dict(low=0.0, scale='linear'), 'config.search_space.learning_rate.low=0.0 is outside (0, inf), '
                                                     'the values the optimizer accepts for learning_rate'),
    ('momentum', dict(low=-0.5, scale='linear'), 'config.search_space.momentum.low=-0.5 is outside [0, 1), the values '
                                                 'the optimizer accepts for momentum'),
    ('momentum', dict(high=1.0, scale='linear'), 'config.search_space.momentum.high=1.0 is outside [0, 1), the values '
                                                 'the optimizer accepts for momentum'),
    ('decay_steps', dict(low=0), 'config.search_space.decay_steps.low=0 is outside [1, inf), the values the optimizer '
                                 'accepts for decay_steps'),
    ('end_learning_rate_factor', dict(high=1.5, scale='linear'),
     'config.search_space.end_learning_rate_factor.high=1.5 is outside [0, 1], the values the optimizer accepts for '
     'end_learning_rate_factor'),
])
def test_a_bad_search_space_entry_is_one_error_naming_the_field(name, fields, message):
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate_study_config(with_entry(name, **fields))
    assert str(error.value) == message


def test_each_range_rule_admits_its_edge_cases():
    # The closed ends the optimizer accepts, on scales that allow them.
    config = config_lib.base_study_config()
    for name, entry in {'momentum': dict(low=0.0, high=0.5, scale='linear'),
                        'decay_steps': dict(low=1, high=2, scale='int'),
                        'end_learning_rate_factor': dict(low=0.0, high=1.0, scale='linear'),
                        'learning_rate': dict(low=1.0, high=3.0, scale='int')}.items():
        config.search_space[name] = ml_collections.ConfigDict(entry)
    config_lib.validate_study_config(config)


def test_a_search_space_that_is_not_a_dict_is_refused():
    config = ml_collections.ConfigDict({**config_lib.base_study_config().to_dict(), 'search_space': 'log'})
    with pytest.raises(config_lib.ConfigError, match=r"^config\.search_space='log' must be a dict"):
        config_lib.validate_study_config(config)


def test_searched_names_must_be_names_of_the_search_space():
    config = config_lib.base_study_config()
    config.optimizer, config.search_names = 'nesterov', ('learning_rate', 'momentum')
    del config.search_space['momentum']
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate_study_config(config)
    assert str(error.value) == ("config.search_names[1]='momentum' is not accepted; choose one of: learning_rate, "
                                "decay_steps, end_learning_rate_factor")


def test_a_search_space_may_leave_out_the_unsearched_names(tmp_path):
    config = config_lib.base_study_config()
    for name in ('momentum', 'decay_steps', 'end_learning_rate_factor'):
        del config.search_space[name]
    config_lib.validate_study_config(config)
    assert study.make_plan(config)['search_space'] == {'learning_rate': REFERENCE_SPACE['learning_rate']}


def launch_plan(workdir, *overrides):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'),
                           f'--config={os.path.join(ROOT, "configs", "quickstart.py")}', '--config.plan_only=True',
                           f'--workdir={workdir}', *overrides], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_a_range_overridden_on_the_command_line_changes_the_trials(tmp_path):
    completed = launch_plan(tmp_path, '--config.search_space.learning_rate.low=1e-3',
                            '--config.search_space.learning_rate.scale=linear')
    assert completed.returncode == 0, completed.stderr
    plan = json.loads((tmp_path / 'plan.json').read_text())
    assert plan['search_space'] == {'learning_rate': {'low': 1e-3, 'high': 1.0, 'scale': 'linear'}}
    unit = np.array(REFERENCE_SEARCHES['learning_rate']['unit']['learning_rate'][:16])
    np.testing.assert_allclose([trial['learning_rate'] for trial in plan['trials']], 1e-3 + unit * (1.0 - 1e-3),
                               rtol=1e-15, atol=0)
    stored = json.loads((tmp_path / 'config.json').read_text())
    assert stored['search_space']['learning_rate'] == {'low': 1e-3, 'high': 1.0, 'scale': 'linear'}


def test_a_bad_range_on_the_command_line_is_one_line_naming_the_field(tmp_path):
    completed = launch_plan(tmp_path, '--config.search_space.momentum.high=1.5')
    assert completed.returncode != 0
    lines = [line for line in completed.stderr.splitlines() if line and not line.startswith('WARNING')]
    assert lines == ['launch.py: error: config.search_space.momentum.high=1.5 is not accepted: a reverse_log scale '
                     'needs high < 1'], completed.stderr
    assert not (tmp_path / 'config.json').exists()


# --- A study's identity: its search space is part of it.

def test_a_changed_range_is_refused_on_an_existing_workdir(tmp_path):
    study.prepare_workdir(config_lib.base_study_config(), str(tmp_path), log=lambda line: None)
    changed = with_entry('learning_rate', high=0.5)
    with pytest.raises(config_lib.ConfigError, match=re.escape('(fields differ: search_space)')):
        study.prepare_workdir(changed, str(tmp_path), log=lambda line: None)
    study.prepare_workdir(config_lib.base_study_config(), str(tmp_path), log=lambda line: None)  # the same study


def test_a_refusal_names_the_flags_that_resume_a_study_as_it_was_made(tmp_path):
    # A quickstart workdir made before exact_val_errors existed: it counted whole splits.
    quickstart = os.path.join(ROOT, 'configs', 'quickstart.py')
    old = load(quickstart).to_dict()
    del old['exact_val_errors']
    (tmp_path / 'config.json').write_text(json.dumps(old))
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            '(fields differ: exact_val_errors); to resume it as it was made: --config.exact_val_errors=True;')):
        study.prepare_workdir(load(quickstart), str(tmp_path), log=lambda line: None, write=False)
    resumed = load(quickstart)
    resumed.exact_val_errors = True
    study.prepare_workdir(resumed, str(tmp_path), log=lambda line: None, write=False)
    # A difference that no plain flag restores (a search range) gets no such line.
    with pytest.raises(config_lib.ConfigError) as refused:
        changed = load(quickstart)
        changed.exact_val_errors = True
        changed.search_space.learning_rate.high = 0.5
        study.prepare_workdir(changed, str(tmp_path), log=lambda line: None, write=False)
    assert '(fields differ: search_space)' in str(refused.value) and 'to resume it' not in str(refused.value)


def test_a_config_json_without_search_space_is_the_reference_space(tmp_path):
    # A workdir made before config.search_space existed.
    old = config_lib.base_study_config().to_dict()
    del old['search_space']
    (tmp_path / 'config.json').write_text(json.dumps(old))
    study.prepare_workdir(config_lib.base_study_config(), str(tmp_path), log=lambda line: None, write=False)
    with pytest.raises(config_lib.ConfigError, match=re.escape('(fields differ: search_space)')):
        study.prepare_workdir(with_entry('learning_rate', scale='linear'), str(tmp_path), log=lambda line: None,
                              write=False)


def test_checks_by_the_same_convolution_are_one_study_however_written(tmp_path):
    """eval_convolution '' follows config.convolution ('' and 'im2col' are one study) and 'auto' is 'xla'
    for a built-in model (the default and 'xla' are one study, another than im2col's checks); for a
    model of one's own 'auto' checks as it trains; a stored config without the field checked as it trained."""
    as_training = config_lib.base_study_config()
    as_training.eval_convolution = ''
    study.prepare_workdir(as_training, str(tmp_path / 'im2col'), log=lambda line: None)
    explicit = config_lib.base_study_config()
    explicit.eval_convolution = 'im2col'
    study.prepare_workdir(explicit, str(tmp_path / 'im2col'), log=lambda line: None, write=False)
    for checks in ('auto', 'xla'):
        explicit.eval_convolution = checks
        with pytest.raises(config_lib.ConfigError, match=re.escape('(fields differ: eval_convolution)')):
            study.prepare_workdir(explicit, str(tmp_path / 'im2col'), log=lambda line: None, write=False)
    assert config_lib.base_study_config().eval_convolution == 'auto'
    study.prepare_workdir(config_lib.base_study_config(), str(tmp_path / 'xla'), log=lambda line: None)
    study.prepare_workdir(explicit, str(tmp_path / 'xla'), log=lambda line: None, write=False)  # 'xla'

    stored = json.loads((tmp_path / 'im2col' / 'config.json').read_text())
    del stored['eval_convolution']  # written before the field existed: checked by im2col
    (tmp_path / 'older').mkdir()
    (tmp_path / 'older' / 'config.json').write_text(json.dumps(stored))
    study.prepare_workdir(as_training, str(tmp_path / 'older'), log=lambda line: None, write=False)
    # How it checked, as the stored config resolves: the flag that resumes it (asserted just above with '').
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            '(fields differ: eval_convolution); to resume it as it was made: --config.eval_convolution=im2col')):
        study.prepare_workdir(config_lib.base_study_config(), str(tmp_path / 'older'), log=lambda line: None,
                              write=False)

    mine = config_lib.base_study_config()
    mine.model = 'my_models.py:Net'
    assert workload.eval_convolution(mine) == 'im2col'
    assert workload.eval_convolution(config_lib.base_study_config()) == 'xla'
    assert study._comparable(mine.to_dict()) == study._comparable({**mine.to_dict(), 'eval_convolution': ''})


def test_a_mid_cell_checkpoint_written_before_a_field_existed_is_this_setup(tmp_path):
    """A checkpoint identity whose config lacks fields added since (convolution, eval_convolution)
    matches the identity this version writes for the same study, and not another study's."""
    config = config_lib.base_study_config()
    config.checkpoint_every, config.eval_convolution = 1, ''  # before the field, checks convolved as training
    saved = study.cell_checkpoints(config, str(tmp_path), 0.5, 64, log=lambda line: None)
    older = json.loads(json.dumps(saved.identity))
    del older['config']['convolution'], older['config']['eval_convolution']
    assert older != saved.identity
    assert study._checkpoint_identity(older) == study._checkpoint_identity(saved.identity)
    config.eval_convolution = 'auto'  # today's default checks by 'xla': another setup
    checked_by_xla = study.cell_checkpoints(config, str(tmp_path / 'xla'), 0.5, 64, log=lambda line: None)
    assert study._checkpoint_identity(older) != study._checkpoint_identity(checked_by_xla.identity)
    older['config']['learning_rate_high'] = 1.0  # no such field: another version's other study
    assert study._checkpoint_identity(older) != study._checkpoint_identity(saved.identity)
