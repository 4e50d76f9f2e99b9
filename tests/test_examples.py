"""The examples run as a user runs them: a user model from a file path on `tfds:` data through launch.py
and through the Python API (the same store), and the notebook-style script."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.tiny_tfds import prepare_tiny_image_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(workdir, data_dir, *extra):
    return subprocess.run([sys.executable, 'launch.py', '--config=examples/bn_net_tfds.py',
                           f'--config.data_dir={data_dir}', f'--workdir={workdir}', *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope='module')
def tiny_tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp('tfds')
    # The dataset examples/bn_net_tfds.py names.
    assert prepare_tiny_image_dataset(str(data_dir), noise=0.4) == 'tfds:dps_tiny_shapes/h8_w8_c1_k4_n1024_t256_z40_s0'
    return data_dir


@pytest.fixture(scope='module')
def launched_store(tiny_tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp('bn_net')
    run = launch(workdir, tiny_tfds_dir)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir, run.stdout


@pytest.mark.slow
@pytest.mark.xdist_group('launched_store')
def test_a_user_model_on_tfds_data_runs_from_a_config_and_resumes(launched_store, tiny_tfds_dir):
    workdir, output = launched_store
    assert (f'tfds:dps_tiny_shapes/h8_w8_c1_k4_n1024_t256_z40_s0 (from {tiny_tfds_dir}/dps_tiny_shapes/'
            f'h8_w8_c1_k4_n1024_t256_z40_s0/1.0.0): train 922, val 102, test 256') in output
    assert 'steps to result (goal validation error 0.1)' in output
    for name in ('summary.csv', 'analysis.json', 'plan.json', 'provenance.json', 'figures/steps_vs_batch.png',
                 'cells/0.8_16/trials.jsonl', 'figures/trials/0.8_16.png'):
        assert (workdir / name).is_file(), name
    rows = (workdir / 'summary.csv').read_text().splitlines()
    assert len(rows) == 7 and all(row.split(',')[2] for row in rows[1:])  # every cell reached the goal
    # The study recorded the model file's code, against which a resume is checked.
    digest = hashlib.sha1(pathlib.Path(ROOT, 'examples', 'bn_net.py').read_bytes()).hexdigest()[:12]
    assert json.loads((workdir / 'config.json').read_text())['model_digest'] == digest
    again = launch(workdir, tiny_tfds_dir)
    assert again.returncode == 0 and '6 cells, 6 already finished, 0 to run' in again.stdout, again.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.xdist_group('launched_store')
def test_the_python_api_writes_the_same_store_as_launch(launched_store, tiny_tfds_dir, tmp_path, monkeypatch):
    import dps_jax
    sys.path.insert(0, os.path.join(ROOT, 'examples'))
    try:
        import bn_net_tfds
    finally:
        sys.path.remove(os.path.join(ROOT, 'examples'))
    monkeypatch.chdir(ROOT)  # the config's model path is relative to the repository root
    config = bn_net_tfds.get_config()
    config.data_dir = str(tiny_tfds_dir)
    study = dps_jax.run_study(config, str(tmp_path), log=None)
    launched, _ = launched_store
    assert (tmp_path / 'summary.csv').read_text() == (launched / 'summary.csv').read_text()
    for cell in ('0_4', '0.8_64'):
        assert (tmp_path / 'cells' / cell / 'trials.jsonl').read_text() == (
            launched / 'cells' / cell / 'trials.jsonl').read_text()
    assert study.cells.keys() == dps_jax.load_results(str(launched)).cells.keys()
    # In memory (no workdir): the same records and summary as the store's (but the wall time).
    config.sparsities, config.batch_sizes = (0.8,), (16,)
    cell = dps_jax.run_study(config, log=None).cells[(0.8, 16)]
    stored = study.cells[(0.8, 16)]
    assert cell.trials == stored.trials
    without_time = lambda summary: {key: value for key, value in summary.items() if key != 'wall_seconds'}
    assert without_time(cell.summary) == without_time(stored.summary)


def test_the_python_api_refuses_what_it_cannot_record():
    import dps_jax
    config = dps_jax.base_study_config()
    with pytest.raises(dps_jax.ConfigError, match=r'model= must be a flax Module instance \(e.g. MyNet\(10\)\)'):
        dps_jax.run_cell(config, 0.0, 8, model=dict)
    with pytest.raises(dps_jax.ConfigError, match='dataset must be a dps_jax.data.Dataset'):
        dps_jax.run_cell(config, 0.0, 8, dataset=(1, 2))
    config.plan_only = True
    with pytest.raises(dps_jax.ConfigError, match='give run_study a workdir'):
        dps_jax.run_study(config)


def test_the_python_api_refuses_cell_arguments_it_would_have_to_coerce():
    import dps_jax
    config = dps_jax.base_study_config()
    config.num_trials = 0  # so that a cell the checks let through fails at once rather than training
    for sparsity, batch_size, problem in ((0.0, 8.9, 'config.batch_sizes[0]=8.9 must be an integer'),
                                          (0.0, True, 'config.batch_sizes[0]=True must be an integer'),
                                          ('x', 8, "config.sparsities[0]='x' must be a number"),
                                          (1.0, 8, 'config.sparsities[0]=1.0 is outside [0, 1)')):
        with pytest.raises(dps_jax.ConfigError) as refused:
            dps_jax.run_cell(config, sparsity, batch_size)
        assert str(refused.value) == f'run_cell(sparsity={sparsity!r}, batch_size={batch_size!r}): {problem}'
    # numpy and JAX whole numbers are whole numbers: the checks pass them (on to num_trials=0).
    import jax.numpy as jnp
    for batch_size in (np.int64(64), np.array(64), jnp.int32(64)):
        with pytest.raises(dps_jax.ConfigError, match=r'\): config.num_trials=0 must be >= 1$'):
            dps_jax.run_cell(config, np.float32(0.9), batch_size)
    with pytest.raises(dps_jax.ConfigError, match='config must be an ml_collections.ConfigDict .* got a list'):
        dps_jax.run_study([('sparsities', (0.0,))])


def test_the_python_api_stores_numpy_numbers_in_a_config_as_plain_json(tmp_path):
    import dps_jax
    config = dps_jax.base_study_config()
    config.batch_sizes, config.sparsities = tuple(2 ** np.arange(4, 7)), tuple(np.array([0.0, 0.9], np.float32))
    config.num_trials, config.plan_only = 3, True  # (a ConfigDict itself refuses np.int64 for an int field)
    for given in (config, config.to_dict()):  # a ConfigDict or a dict of its fields
        dps_jax.run_study(given, str(tmp_path), log=lambda line: None)
        stored = json.loads((tmp_path / 'config.json').read_text())
        # float32 0.9 as the 0.9 it was typed as, not 0.8999999761581421, so the same study typed in Python resumes.
        assert (stored['batch_sizes'], stored['sparsities'], stored['num_trials']) == ([16, 32, 64], [0.0, 0.9], 3)


def test_a_datasets_identity_digests_its_arrays_and_a_class_count_other_than_its_labels():
    import dps_jax
    from dps_jax import api  # a submodule: loaded by its own import, not by dps_jax's lazy names
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(40, 4, 4, 1)).astype(np.float32), np.arange(40) % 3
    default = dps_jax.from_arrays(images, labels, name='mine')
    # By hand: the digest of every split's dtype, shape and bytes, what a study begun earlier recorded.
    by_hand = hashlib.sha1()
    for split in (default.train, default.val, default.test):
        for array in (split.images, split.labels):
            by_hand.update(f'{array.dtype}{array.shape}'.encode() + np.ascontiguousarray(array).tobytes())
    assert api.dataset_identity(default) == f'arrays:mine#{by_hand.hexdigest()[:12]}'
    assert api.dataset_identity(dps_jax.from_arrays(images, labels, name='mine', num_classes=3)) == (
        api.dataset_identity(default))
    wider = api.dataset_identity(dps_jax.from_arrays(images, labels, name='mine', num_classes=7))
    assert wider.startswith('arrays:mine#') and wider != api.dataset_identity(default)


def test_a_bad_model_path_is_one_line(tiny_tfds_dir, tmp_path):
    run = launch(tmp_path, tiny_tfds_dir, '--config.model=examples/bn_net.py:NoSuchNet')
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == (
        "launch.py: error: config.model='examples/bn_net.py:NoSuchNet': examples/bn_net.py has no attribute "
        "'NoSuchNet'")


@pytest.mark.slow
def test_the_notebook_example_runs_a_cell_and_a_grid_and_draws_them(tmp_path):
    run = subprocess.run([sys.executable, 'examples/notebook_cell.py', str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert 'sparsity 0.5, batch 32: steps-to-result' in run.stdout
    assert 'steps to result (goal validation error 0.1)' in run.stdout
    for name in ('steps_vs_batch.png', 'steps_vs_batch.pdf', 'trials_0.5_32.png'):
        assert (tmp_path / name).is_file(), name
