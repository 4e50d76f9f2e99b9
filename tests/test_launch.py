"""launch.py end to end: one-line errors for bad configs, and a real single-trial run."""

import json
import os
import subprocess
import sys

import pytest

from tests.real_data import needs_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 'fashion_mnist_trial.py')


def launch(workdir, *overrides, timeout=900):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), f'--config={CONFIG}',
                           f'--workdir={workdir}', *overrides], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def error_lines(completed):
    return [line for line in completed.stderr.splitlines() if line and not line.startswith('WARNING')]


@pytest.mark.parametrize('override, named', [
    ('--config.sparsity=1.0', 'config.sparsity=1.0 is outside [0, 1)'),
    ('--config.sparsity=-0.5', 'config.sparsity=-0.5 is outside [0, 1)'),
    ('--config.optimizer=adam', "config.optimizer='adam' is not accepted; choose one of: sgd, momentum, nesterov"),
    ('--config.dataset=imagenet', "config.dataset='imagenet'"),
    ('--config.goal_error=0', 'config.goal_error=0.0 is outside (0, 1)'),
    ('--config.max_steps=150', 'config.max_steps=150 must be a multiple of config.check_every=100'),
    ('--config.sparsity=abc', "could not convert string to float: 'abc'"),
    ('--config.seed=4294967296', 'config.seed=4294967296 must be <= 4294967295'),
    ('--config.no_such_field=3', "no such config field 'no_such_field'; overrides given: --config.no_such_field"),
    ('--config.sparsities=(0.5,)', 'no such config field \'sparsities\'; Did you mean "sparsity" instead of '
                                   '"sparsities"?; overrides given: --config.sparsities'),
])
def test_a_bad_config_value_is_one_line_naming_the_field(tmp_path, override, named):
    completed = launch(tmp_path, override, timeout=120)
    assert completed.returncode != 0
    lines = error_lines(completed)
    assert len(lines) == 1 and named in lines[0], completed.stderr
    assert not os.path.exists(tmp_path / 'trial.json')


@pytest.mark.parametrize('flag', [['--config=configs/no_such.py'], ['--config', 'configs/no_such.py']])
def test_a_config_file_that_is_not_there_is_one_line_naming_it(tmp_path, flag):
    completed = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'), *flag, f'--workdir={tmp_path}'],
                               capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert completed.returncode != 0
    assert error_lines(completed) == ['launch.py: error: cannot load --config=configs/no_such.py: no such file']


@pytest.mark.parametrize('config_name', ['fashion_mnist_trial.py', 'quickstart.py'])
def test_a_workdir_or_cache_folder_that_cannot_hold_files_is_one_line_before_any_work(tmp_path, config_name):
    (tmp_path / 'a_file').write_text('')
    for flags, named in (([f'--workdir={tmp_path}/a_file'], f'--workdir={tmp_path}/a_file'),
                         ([f'--workdir={tmp_path}/a_file/below'], f'--workdir={tmp_path}/a_file/below'),
                         ([f'--workdir={tmp_path}/run', f'--config.compilation_cache_dir={tmp_path}/a_file'],
                          f'config.compilation_cache_dir={tmp_path}/a_file')):
        completed = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'),
                                    f'--config={os.path.join(ROOT, "configs", config_name)}', *flags],
                                   capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert completed.returncode != 0
        reason = 'Not a directory' if flags[0].endswith('below') else 'a file of that name exists'
        assert error_lines(completed) == [f'launch.py: error: {named} cannot hold files: {reason}']
        assert completed.stdout == ''  # before any work: nothing was loaded or trained


@needs_fashion_mnist
def test_a_batch_larger_than_the_training_split_is_refused(tmp_path):
    completed = launch(tmp_path, '--config.batch_size=54001', timeout=120)
    assert error_lines(completed) == [
        'launch.py: error: config.batch_size=54001 is larger than the training split (54000 examples)']


@pytest.mark.slow
@needs_fashion_mnist
def test_simple_cnn_at_sparsity_09_reaches_the_goal_on_real_fashion_mnist(tmp_path):
    # The README's single trial with a nearer goal (0.15 takes 1,100 steps): a few hundred steps; SNIP scores
    # from 10% of the split (the whole split's scores take ~25 s of this CPU).
    completed = launch(tmp_path, '--config.goal_error=0.2', '--config.snip_examples=5400')
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert 'snip mask at sparsity 0.9 (5400 examples) in' in completed.stdout
    assert 'steps-to-result:' in completed.stdout
    assert 'convolutions: training im2col, checks xla' in completed.stdout  # eval_convolution 'auto'
    result = json.loads((tmp_path / 'trial.json').read_text())
    assert result['status'] == 'reached' and result['config']['eval_convolution'] == 'xla'
    # Batch 64 on this CPU: two passes of 32 (trial.examples_per_pass).
    assert {key: result['provenance']['numerics'][key] for key in ('convolution', 'eval_convolution',
            'examples_per_pass')} == {'convolution': 'im2col', 'eval_convolution': 'xla', 'examples_per_pass': {'64': 32}}
    assert result['steps_to_result'] % 100 == 0 and result['steps_to_result'] >= 200
    assert result['history'][-1]['val_error'] <= 0.2
    assert all(check['val_error'] > 0.2 for check in result['history'][:-1])
    assert 'total             6,235 /    62,346   10.00%' in completed.stdout
    # Oracle for checks that stop counting above the goal: the exact run above.
    stopping = launch(tmp_path / 'stopping', '--config.goal_error=0.2', '--config.snip_examples=5400',
                      '--config.exact_val_errors=False')
    assert stopping.returncode == 0, stopping.stderr[-2000:]
    stopped = json.loads((tmp_path / 'stopping' / 'trial.json').read_text())
    assert (stopped['status'], stopped['steps_to_result']) == (result['status'], result['steps_to_result'])
    assert stopped['history'][-1] == result['history'][-1]
    assert all(0.2 < check['val_error'] <= exact['val_error']
               for check, exact in zip(stopped['history'][:-1], result['history'][:-1]))
    assert stopping.stdout.count(' val error >= ') == len(result['history']) - 1


@needs_fashion_mnist
def test_a_single_trials_batch_too_large_for_the_memory_is_taken_in_passes(tmp_path, monkeypatch):
    import importlib.util

    from dps_jax import engine, single_trial
    spec = importlib.util.spec_from_file_location('fashion_mnist_trial', CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(dict(snip_examples=500, max_steps=20, check_every=10, goal_error=0.01))
    # 1 GB per example in a 20.5 GB budget: at most 20 examples per pass beside the trial's state, so
    # batch 64 takes 4 passes of 16 (its largest divisor up to 20).
    monkeypatch.setattr(engine, 'train_bytes_per_example', lambda *args: 1e9)
    monkeypatch.setattr(engine, 'default_memory_bytes', lambda fraction=0.5: int(20.5e9))
    lines = []
    single_trial.train_and_evaluate(config, str(tmp_path), log=lines.append)
    assert ("  memory: one trial's step at batch 64 needs about 64.0 GB per device, over the 20.5 GB budget (half "
            "of the device memory): it takes the batch in 4 passes of 16 examples (the mean gradient)") in lines
    result = json.loads((tmp_path / 'trial.json').read_text())
    assert result['provenance']['numerics']['examples_per_pass'] == {'64': 16}
