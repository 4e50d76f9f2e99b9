"""Provenance: what is recorded about the environment, and resumes refused under another JAX.

The study-level test (a launched study refusing a faked JAX version) is in test_study.py, beside
the study it resumes."""

import subprocess

import jax
import pytest

from dps_jax import config as config_lib
from dps_jax import provenance


def test_git_commit_names_the_checkout_head_and_marks_changes(tmp_path):
    git = lambda *args: subprocess.run(['git', '-C', str(tmp_path), *args], capture_output=True, text=True,
                                       check=True).stdout.strip()
    git('init', '-q')
    (tmp_path / 'file.txt').write_text('one\n')
    git('add', 'file.txt')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'first')
    head = git('rev-parse', 'HEAD')
    assert len(head) == 40
    assert provenance.git_commit(str(tmp_path)) == head
    (tmp_path / 'file.txt').write_text('two\n')
    assert provenance.git_commit(str(tmp_path)) == head + '+dirty'


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert provenance.git_commit(str(tmp_path)) is None


def test_the_record_names_versions_backend_devices_and_precision():
    record = provenance.collect('highest')
    assert record['packages']['jax'] == jax.__version__
    assert record['packages']['flax'] is not None and record['packages']['orbax-checkpoint'] is not None
    assert record['backend'] == jax.default_backend()
    assert record['devices'] == {**record['devices'], 'kind': jax.devices()[0].device_kind,
                                 'count': jax.device_count()}
    assert record['numerics']['matmul_precision'] == 'highest'
    assert record['prng']['threefry_partitionable'] == bool(jax.config.jax_threefry_partitionable)


def test_the_record_names_the_convolutions_and_training_passes_as_this_backend_resolves_them():
    import types
    from dps_jax import network as network_lib
    from dps_jax import workload
    stateless = network_lib.Network(init=None, train_apply=None, eval_apply=None, collections=())
    work = types.SimpleNamespace(network=stateless, eval_convolution='xla')
    config = config_lib.base_study_config()
    numerics = workload.resolved_numerics(config, work, (8, 64, 100, 97))
    # By hand: the largest divisor of the batch in [8, 32] on a CPU, else the whole batch.
    by_hand = {'8': 8, '64': 32, '100': 25, '97': 97} if jax.default_backend() == 'cpu' else {
        '8': 8, '64': 64, '100': 100, '97': 97}
    assert numerics == {'convolution': 'im2col', 'eval_convolution': 'xla', 'examples_per_pass': by_hand}
    config.batch_in_passes = False
    assert workload.resolved_numerics(config, work, (64, 100))['examples_per_pass'] == {'64': 64, '100': 100}
    stateful = types.SimpleNamespace(network=stateless._replace(collections=('batch_stats',)), eval_convolution='im2col')
    config.batch_in_passes, config.convolution = True, 'xla'
    assert workload.resolved_numerics(config, stateful, (64,)) == {
        'convolution': 'xla', 'eval_convolution': 'im2col', 'examples_per_pass': {'64': 64}}
    record = provenance.collect('default', 'float32', **numerics)
    assert record['numerics'] == {**record['numerics'], **numerics, 'matmul_precision': 'default', 'dtype': 'float32'}


def faked(record, **packages):
    return {**record, 'packages': {**record['packages'], **packages}}


def test_a_resume_under_another_jax_version_is_refused_in_one_line_naming_both(tmp_path):
    current = provenance.collect('default')
    old = faked(current, jax='0.4.1', jaxlib='0.4.1')
    with pytest.raises(config_lib.ConfigError) as error:
        provenance.check_resume(str(tmp_path), [old], current, allowed=False)
    message = str(error.value)
    assert '\n' not in message
    assert 'jax 0.4.1 / jaxlib 0.4.1' in message and f'jax {jax.__version__} / jaxlib' in message
    assert 'allow_environment_change' in message
    note = provenance.check_resume(str(tmp_path), [old], current, allowed=True)
    assert 'jax 0.4.1' in note and jax.__version__ in note


def test_backend_and_prng_setting_count_but_devices_and_time_do_not(tmp_path):
    current = provenance.collect('default')
    assert provenance.check_resume(str(tmp_path), [], current, allowed=False) is None
    same_elsewhere = {**current, 'recorded_at': 'earlier', 'devices': {**current['devices'], 'count': 8},
                      'dps_jax': {'version': '0.0.9', 'git_commit': None}}
    assert provenance.check_resume(str(tmp_path), [same_elsewhere], current, allowed=False) is None
    other_backend = {**current, 'backend': 'tpu' if current['backend'] != 'tpu' else 'cpu'}
    with pytest.raises(config_lib.ConfigError, match=f'on {other_backend["backend"]}, this is'):
        provenance.check_resume(str(tmp_path), [other_backend], current, allowed=False)
    other_prng = {**current, 'prng': {**current['prng'], 'threefry_partitionable':
                                      not current['prng']['threefry_partitionable']}}
    with pytest.raises(config_lib.ConfigError, match='with PRNG'):
        provenance.check_resume(str(tmp_path), [other_prng], current, allowed=False)


def test_a_damaged_provenance_file_is_named(tmp_path):
    (tmp_path / provenance.FILE_NAME).write_text('{"runs": [')
    with pytest.raises(config_lib.ConfigError, match='provenance.json is damaged'):
        provenance.read_runs(str(tmp_path))
