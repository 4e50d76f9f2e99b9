"""Studies: the results store, resume, config checks, and a SIGKILL in the middle of a study."""

import contextlib
import csv
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import dps_jax
from dps_jax import config as config_lib
from dps_jax import data, engine, models, provenance, store, study, trial, workload
from tests.real_data import needs_fashion_mnist
from tests.test_models import ReferenceSimpleCNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_data = needs_fashion_mnist

# A study small enough for a test: 2 cells of one batch size (one compile), 2 trials, a few checks
# (each check evaluates the whole 6,000-image validation split per trial: most of the cost on CPU).
# Two checks per cell and a checkpoint after each, so that a cell can be killed between them.
TINY = ['--config.sparsities=(0.0,0.8)', '--config.batch_sizes=(32,)', '--config.num_trials=2',
        '--config.goal_error=0.2', '--config.check_every=20', '--config.max_steps=40',
        '--config.snip_examples=300', '--config.until=all', '--config.compaction=False',
        '--config.checkpoint_every=1']


def tiny_config(**overrides):
    config = config_lib.base_study_config()
    config.update(dict(sparsities=(0.0, 0.8), batch_sizes=(32, 128), num_trials=3, goal_error=0.5,
                       check_every=10, max_steps=60, snip_examples=300, until='all',
                       progress_every_seconds=1000.0))
    config.update(overrides)
    return config


def fake_result(num_trials=3):
    return engine.CellResult(
        status=np.array([engine.REACHED, engine.DIVERGED, engine.EXHAUSTED][:num_trials]),
        steps_to_result=np.array([40, -1, -1][:num_trials]), best_val_error=np.array([0.1, np.inf, 0.4][:num_trials]),
        last_val_error=np.array([0.1, np.nan, 0.4][:num_trials]), steps=np.array([40, 10, 60][:num_trials]),
        trial_steps_computed=150, trial_steps_needed=110, checks=6, wall_seconds=1.5, final_state=None)


def test_cell_records_round_trip_through_the_store(tmp_path):
    config = tiny_config()
    values = study.trial_metaparameters(config)
    result = fake_result()
    study.write_cell(str(tmp_path), study.trial_records(result, values), study.cell_summary(result, 0.8, 32, 'all'))
    folder = tmp_path / 'cells' / '0.8_32'
    lines = [json.loads(line) for line in (folder / 'trials.jsonl').read_text().splitlines()]
    assert [line['status'] for line in lines] == ['reached', 'diverged', 'exhausted']
    assert [line['steps_to_result'] for line in lines] == [40, None, None]
    assert lines[0]['learning_rate'] == pytest.approx(0.01)  # the Sobol centre
    assert lines[1]['best_val_error'] is None
    summary = json.loads((folder / 'summary.json').read_text())
    assert summary['steps_to_result'] == 40 and summary['best_trial'] == 0
    assert summary['counts'] == {'running': 0, 'reached': 1, 'diverged': 1, 'exhausted': 1}
    assert study.is_finished(str(tmp_path), 0.8, 32) and not study.is_finished(str(tmp_path), 0.8, 128)


def test_smoothness_series_and_their_cell_summary_are_stored(tmp_path):
    result = fake_result()._replace(
        lipschitz=([(20, 2.0), (40, 4.0)], [(20, float('nan'))], [(20, 3.0), (40, 5.0), (60, 7.0)]),
        noise_scale=([(0, 100.0, 0.5, 50.0), (40, 300.0, 0.1, 30.0)], [(0, 50.0, 1.0, 50.0)],
                     [(0, 80.0, 0.5, 40.0)]))
    study.write_cell(str(tmp_path), study.trial_records(result, study.trial_metaparameters(tiny_config())),
                     study.cell_summary(result, 0.8, 32, 'all'))
    folder = tmp_path / 'cells' / '0.8_32'
    lines = [json.loads(line) for line in (folder / 'trials.jsonl').read_text().splitlines()]
    assert lines[0]['lipschitz'] == {'step': [20, 40], 'value': [2.0, 4.0]}
    assert lines[1]['lipschitz'] == {'step': [20], 'value': [None]}  # nan is not JSON
    assert lines[0]['noise_scale'] == {'step': [0, 40], 'b_simple': [100.0, 300.0],
                                       'gradient_norm_squared': [0.5, 0.1], 'trace_covariance': [50.0, 30.0]}
    summary = json.loads((folder / 'summary.json').read_text())
    # Trial 0 is the best and the only reached trial.
    assert summary['lipschitz'] == {'best_trial': {'mean': 3.0, 'max': 4.0, 'measurements': 2},
                                    'reached_trials': {'mean': 3.0, 'max': 4.0, 'measurements': 2},
                                    'num_reached_trials': 1}
    # mean tr(Sigma) / mean |G|^2: step 0 over trials (50+50+40)/(0.5+1+0.5); the best trial's (50+30)/(0.5+0.1)
    assert summary['noise_scale']['initial'] == pytest.approx(70.0)
    assert summary['noise_scale']['best_trial'] == pytest.approx(80 / 0.6)


def test_without_measurements_records_have_no_series(tmp_path):
    records = study.trial_records(fake_result(), study.trial_metaparameters(tiny_config()))
    assert not any('lipschitz' in record or 'noise_scale' in record for record in records)
    assert 'lipschitz' not in study.cell_summary(fake_result(), 0.8, 32, 'all')


def test_a_workdir_from_before_a_config_field_existed_is_the_same_study(tmp_path):
    study.prepare_workdir(tiny_config(), str(tmp_path), log=lambda line: None)
    stored = json.loads((tmp_path / 'config.json').read_text())
    del stored['lipschitz_every'], stored['noise_scale_batch_sizes']  # written by an older dps_jax
    (tmp_path / 'config.json').write_text(json.dumps(stored))
    study.prepare_workdir(tiny_config(), str(tmp_path))
    with pytest.raises(config_lib.ConfigError, match='fields differ: lipschitz_every'):
        study.prepare_workdir(tiny_config(lipschitz_every=20), str(tmp_path))


def test_summary_csv_lists_finished_cells_in_order(tmp_path):
    config = tiny_config()
    values = study.trial_metaparameters(config)
    for sparsity, batch_size in [(0.8, 128), (0.0, 32)]:
        study.write_cell(str(tmp_path), study.trial_records(fake_result(), values),
                         study.cell_summary(fake_result(), sparsity, batch_size, 'all'))
    study.write_summary_csv(str(tmp_path))
    rows = list(csv.DictReader(open(tmp_path / 'summary.csv')))
    assert [(row['sparsity'], row['batch_size'], row['steps_to_result']) for row in rows] == [
        ('0.0', '32', '40'), ('0.8', '128', '40')]


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / 'summary.json'
    store.atomic_write_json(str(path), {'old': True})
    with pytest.raises(TypeError):
        store.atomic_write_json(str(path), {'new': object()})  # not JSON-able: fails mid-write
    assert json.loads(path.read_text()) == {'old': True}
    assert [p.name for p in tmp_path.iterdir()] == ['summary.json']  # no temp file left behind


def test_a_workdir_of_another_config_is_refused_unless_overwrite(tmp_path):
    study.prepare_workdir(tiny_config(), str(tmp_path), log=lambda line: None)
    study.write_cell(str(tmp_path), [], study.cell_summary(fake_result(), 0.0, 32, 'all'))
    study.prepare_workdir(tiny_config(cells='0_32', progress_every_seconds=1.0), str(tmp_path))  # run fields only
    assert study.is_finished(str(tmp_path), 0.0, 32)
    with pytest.raises(config_lib.ConfigError, match='different config.*goal_error'):
        study.prepare_workdir(tiny_config(goal_error=0.3), str(tmp_path))
    study.prepare_workdir(tiny_config(goal_error=0.3, overwrite=True), str(tmp_path), log=lambda line: None)
    # The old cells are moved aside, not mixed into the new study's results.
    assert not study.is_finished(str(tmp_path), 0.0, 32)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith('replaced-')]
    assert len(aside) == 1 and (aside[0] / 'cells' / '0_32' / 'summary.json').exists()
    assert json.loads((tmp_path / 'config.json').read_text())['goal_error'] == 0.3


@pytest.mark.parametrize('damage, why', [
    ('{"goal_error": 0.5,', 'config.json is damaged (Expecting property name'),
    ('[]', 'config.json is damaged (not a JSON object)'),
    (None, 'holds results (cells/ or checkpoints/) but no config.json'),
])
def test_a_workdir_whose_config_cannot_be_read_is_refused_unless_overwrite(tmp_path, damage, why):
    study.prepare_workdir(tiny_config(), str(tmp_path), log=lambda line: None)
    study.write_cell(str(tmp_path), [], study.cell_summary(fake_result(), 0.0, 32, 'all'))
    if damage is None:
        (tmp_path / 'config.json').unlink()
    else:
        (tmp_path / 'config.json').write_text(damage)
    for config in (tiny_config(), tiny_config(goal_error=0.3)):  # the same study or another: it cannot tell
        with pytest.raises(config_lib.ConfigError, match=re.escape(why) + '.*whether its results belong to this '
                           'study cannot be checked; restore it, use another --workdir, or --config.overwrite=True'):
            study.prepare_workdir(config, str(tmp_path))
    assert study.is_finished(str(tmp_path), 0.0, 32)  # nothing moved by a refusal
    lines = []
    study.prepare_workdir(tiny_config(goal_error=0.3, overwrite=True), str(tmp_path), log=lines.append)
    assert not study.is_finished(str(tmp_path), 0.0, 32)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith('replaced-')]
    assert len(aside) == 1 and (aside[0] / 'cells' / '0_32' / 'summary.json').exists()
    assert len(lines) == 1 and why.split(' (')[0] in lines[0]
    assert lines[0].endswith(f': previous results moved to {aside[0]}')
    assert json.loads((tmp_path / 'config.json').read_text())['goal_error'] == 0.3
    # A new workdir is not refused.
    study.prepare_workdir(tiny_config(), str(tmp_path / 'new'), log=lambda line: None)


def test_plan_only_writes_the_plan_and_trains_nothing(tmp_path):
    study.run(tiny_config(plan_only=True), str(tmp_path), log=lambda line: None)
    plan = json.loads((tmp_path / 'plan.json').read_text())
    assert [cell['name'] for cell in plan['cells']] == ['0_32', '0_128', '0.8_32', '0.8_128']
    assert [trial['learning_rate'] for trial in plan['trials']] == pytest.approx([0.01, 0.1, 0.001])
    assert plan['budget']['max_trial_steps'] == 4 * 3 * 60
    assert not (tmp_path / 'cells').exists()
    # Recorded as a run records it: the built-in model's 'auto' checks by XLA's convolution.
    recorded = json.loads((tmp_path / 'config.json').read_text())
    assert recorded['eval_convolution'] == 'xla'
    assert recorded['model_digest'] == ''


def test_plan_only_refuses_what_the_run_would_from_the_known_size_of_the_training_split(tmp_path):
    assert [data.known_train_examples(name) for name in ('mnist', 'fashion_mnist', 'cifar10', 'tfds:mnist')] == [
        54_000, 54_000, 45_000, None]
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            'config.batch_sizes[1]=60000 is larger than the training split (54000 examples)')):
        study.run(tiny_config(plan_only=True, batch_sizes=(32, 60_000)), str(tmp_path), log=lambda line: None)
    dataset = data.from_arrays(np.arange(640, dtype=np.float32).reshape(40, 4, 4, 1), np.arange(40) % 2)  # 36 to train
    with pytest.raises(config_lib.ConfigError, match=re.escape('config.batch_sizes[0]=64 is larger than the '
                                                               'training split (36 examples)')):
        study.run(tiny_config(plan_only=True, batch_sizes=(64,), snip_examples=0), str(tmp_path),
                  log=lambda line: None, dataset=dataset)
    assert not (tmp_path / 'config.json').exists()


def test_cells_selects_a_subset_and_rejects_unknown_names():
    assert study.grid_cells(tiny_config(cells='0.8_128, 0_32')) == [(0.8, 128), (0.0, 32)]
    with pytest.raises(config_lib.ConfigError, match='0.5_32, not in the grid'):
        study.grid_cells(tiny_config(cells='0.5_32'))


@pytest.mark.parametrize('overrides, message', [
    ({'sparsities': ()}, 'config.sparsities is empty'),
    ({'batch_sizes': (32, 0)}, r'config.batch_sizes\[1\]=0 must be >= 1'),
    ({'goal_error': 1.5}, 'config.goal_error=1.5 is outside'),
    ({'search_names': ('learning_rate', 'beta')}, r"config.search_names\[1\]='beta' is not accepted"),
    ({'until': 'never'}, "config.until='never'"),
    ({'sparsities': (0.5, 0.5)}, 'duplicates'),
    ({'search_names': ('learning_rate', 'learning_rate')}, 'config.search_names=.*has duplicates'),
    ({'search_names': ()}, 'config.search_names is empty: nothing is searched'),
    ({'search_names': ('learning_rate', 'momentum')}, "searches 'momentum', which optimizer 'sgd'"),
    ({'cells': '0_32,0_32'}, 'names a cell twice'),
    ({'data_seed': 2 ** 32}, 'config.data_seed=4294967296 must be <= 4294967295'),  # PRNGKey would wrap it to 0
    ({'data_seed': 2 ** 32 - 2, 'per_trial_data_order': True},  # 3 trials: seeds up to data_seed + 2
     r'config.data_seed=4294967294 must be <= 4294967293 with config.per_trial_data_order'),
    ({'lipschitz_every': 15}, 'config.lipschitz_every=15 must be 0 .off. or a multiple of config.check_every=10'),
    ({'noise_scale_every': -10}, 'config.noise_scale_every=-10 must be >= 0'),
    ({'noise_scale_batch_sizes': (256, 64)}, 'must be two batch sizes .small, big. with small < big'),
    ({'noise_scale_batch_sizes': (64,)}, 'must be two batch sizes'),
    ({'noise_scale_draws': 0}, 'config.noise_scale_draws=0 must be >= 1'),
    ({'smoothness_chunk_size': 0}, 'config.smoothness_chunk_size=0 must be >= 1'),
])
def test_bad_study_configs_are_refused_before_training(tmp_path, overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        study.run(tiny_config(**overrides), str(tmp_path), log=lambda line: None)
    assert not (tmp_path / 'config.json').exists()


def test_the_largest_seeds_a_key_holds_are_accepted():
    config_lib.validate_study_config(tiny_config(data_seed=2 ** 32 - 3, per_trial_data_order=True))  # 3 trials
    config_lib.validate_study_config(tiny_config(data_seed=2 ** 32 - 1))


def test_a_batch_size_larger_than_the_training_split_is_named():
    with pytest.raises(config_lib.ConfigError, match=r'config.batch_sizes\[1\]=60000 is larger than the training split'):
        config_lib.validate_study_config(tiny_config(batch_sizes=(32, 60000)), 54000)


def test_mesh_fields_are_checked_against_the_devices():
    config = tiny_config()
    config.mesh.trial = -1
    with pytest.raises(config_lib.ConfigError, match=r'config.mesh.trial=-1 must be >= 0'):
        config_lib.validate_study_config(config)
    config.mesh.trial = 3  # this process has 1 device
    with pytest.raises(config_lib.ConfigError, match=r'config.mesh.trial=3 x mesh.data=1 = 3 devices, but there are 1'):
        study.study_mesh(config)
    config.mesh.trial = 0
    assert study.study_mesh(config) is None  # one device: no mesh


def test_lipschitz_examples_beyond_the_training_split_are_named():
    with pytest.raises(config_lib.ConfigError, match='config.lipschitz_examples=60000 is larger than the training split'):
        config_lib.validate_study_config(tiny_config(lipschitz_examples=60000), 54000)


def launch(workdir, *extra):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch.py'),
                             f'--config={os.path.join(ROOT, "configs", "quickstart.py")}', f'--workdir={workdir}',
                             *TINY, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


class Uninterrupted(NamedTuple):
    workdir: pathlib.Path
    cache: pathlib.Path        # its own compilation cache folder
    cache_entries: list        # what the cache held after the run


@pytest.fixture(scope='module')
def uninterrupted_study(tmp_path_factory):
    whole, cache = tmp_path_factory.mktemp('whole'), tmp_path_factory.mktemp('cache')
    first = launch(whole, f'--config.compilation_cache_dir={cache}')
    output = first.communicate(timeout=900)[0]
    assert first.returncode == 0, output[-3000:]
    assert 'steps to result (goal validation error 0.2)' in output
    assert f'compilation cache: {cache} (' in output
    assert not (whole / 'checkpoints' / '0_32').exists()  # removed once the cell's results are written
    entries = cache_entries(cache)
    assert len(entries) > 5  # data placement, initialization, chunks, evaluation, ...
    return Uninterrupted(whole, cache, entries)


def cache_entries(folder):
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def kill_when(victim, condition, deadline_seconds=900, signal_number=signal.SIGKILL):
    deadline = time.time() + deadline_seconds
    while not condition():
        assert victim.poll() is None and time.time() < deadline, 'the study ended before it could be killed'
        time.sleep(0.02)
    victim.send_signal(signal_number)
    victim.wait()


@pytest.mark.slow
@needs_data
def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path):
    victim = launch(tmp_path)
    checkpoints = tmp_path / 'checkpoints' / '0_32'
    kill_when(victim, lambda: checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()),
              signal_number=signal.SIGINT)
    output = victim.stdout.read()
    assert victim.returncode == 130, output[-3000:]
    assert output.strip().splitlines()[-1] == ('launch.py: interrupted; the same command resumes a study from its '
                                               'last checkpoint')
    assert 'Traceback' not in output


def assert_same_store(got, want):
    assert (got / 'summary.csv').read_text() == (want / 'summary.csv').read_text()
    for cell in ('0_32', '0.8_32'):
        assert (got / 'cells' / cell / 'trials.jsonl').read_text() == (want / 'cells' / cell / 'trials.jsonl').read_text()


@pytest.mark.slow
@pytest.mark.xdist_group('uninterrupted_study')
@needs_data
def test_a_study_killed_inside_its_second_cell_resumes_to_the_same_results(tmp_path, uninterrupted_study):
    """The finished first cell is kept, the second resumes from its checkpoint: the same store. Both runs
    use the uninterrupted run's compilation cache and compile nothing: they add no entry to it."""
    checkpoints = tmp_path / 'checkpoints' / '0.8_32'
    same_cache = f'--config.compilation_cache_dir={uninterrupted_study.cache}'
    victim = launch(tmp_path, same_cache)
    kill_when(victim, lambda: checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()))
    assert (tmp_path / 'cells' / '0_32' / 'summary.json').exists()
    assert not (tmp_path / 'cells' / '0.8_32' / 'summary.json').exists()
    resumed = launch(tmp_path, same_cache)
    output = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert '2 cells, 1 already finished, 1 to run' in output
    assert 'resumed from checkpoint at step' in output
    assert_same_store(tmp_path, uninterrupted_study.workdir)
    # Every program is stored however fast it compiled (with JAX's default 1 s threshold these small
    # programs would leave the cache nearly empty), so no new entry means that no program was compiled.
    assert cache_entries(uninterrupted_study.cache) == uninterrupted_study.cache_entries


@pytest.mark.slow
@pytest.mark.xdist_group('uninterrupted_study')
@needs_data
def test_a_study_records_its_runs_and_refuses_a_resume_under_a_faked_jax_version(tmp_path, uninterrupted_study):
    recorded = json.loads((uninterrupted_study.workdir / 'provenance.json').read_text())['runs']
    assert len(recorded) == 1
    assert recorded[0]['packages']['jax'] == jax.__version__ and recorded[0]['backend'] == jax.default_backend()
    assert recorded[0]['numerics']['matmul_precision'] == 'default'
    assert {key: recorded[0]['numerics'][key] for key in ('convolution', 'eval_convolution', 'examples_per_pass')} == {
        'convolution': 'im2col', 'eval_convolution': 'xla', 'examples_per_pass': {'32': 32}}
    workdir = tmp_path / 'copy'
    shutil.copytree(uninterrupted_study.workdir, workdir)
    fake = {**recorded[0], 'packages': {**recorded[0]['packages'], 'jax': '0.4.1'}}
    (workdir / 'provenance.json').write_text(json.dumps({'runs': [fake]}))

    refused = launch(workdir)
    output = refused.communicate(timeout=900)[0]
    assert refused.returncode != 0
    last = output.strip().splitlines()[-1]
    assert last.startswith('launch.py: error: ') and 'was made under jax 0.4.1 / jaxlib' in last
    assert f'this is jax {jax.__version__} / jaxlib' in last
    assert len(json.loads((workdir / 'provenance.json').read_text())['runs']) == 1  # nothing written

    allowed = launch(workdir, '--config.allow_environment_change=True')
    output = allowed.communicate(timeout=900)[0]
    assert allowed.returncode == 0, output[-3000:]
    assert 'made under jax 0.4.1' in output and '2 cells, 2 already finished, 0 to run' in output
    runs = json.loads((workdir / 'provenance.json').read_text())['runs']
    assert [run['packages']['jax'] for run in runs] == ['0.4.1', jax.__version__]


def test_the_compilation_cache_folder_is_resolved_from_the_config(monkeypatch, tmp_path):
    from dps_jax import compilation_cache
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert compilation_cache.resolve('auto') == str(tmp_path / 'dps_jax' / 'jax_compilation_cache')
    assert compilation_cache.resolve('') is None
    assert compilation_cache.resolve('relative/cache') == os.path.abspath('relative/cache')
    with pytest.raises(config_lib.ConfigError, match='config.compilation_cache_dir=None must be a folder'):
        config_lib.validate_study_config(tiny_config(compilation_cache_dir=None))



class _TwoLayerNet(nn.Module):
    """A small MLP for the grouping test: cheap to compile, and the memory estimate sees real sizes."""
    num_classes: int = 4

    @nn.compact
    def __call__(self, images):
        hidden = nn.relu(nn.Dense(16)(images.reshape(images.shape[0], -1)))
        return nn.Dense(self.num_classes)(hidden)


@pytest.mark.parametrize('batch_in_passes, per_pass', [(True, None), (False, trial.WHOLE_BATCH)])
def test_batch_in_passes_says_how_the_studys_training_step_takes_its_batch(monkeypatch, batch_in_passes, per_pass):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    dataset = dps_jax.from_arrays(rng.normal(size=(200, 6, 6, 1)).astype(np.float32), labels, name='passes')
    config = tiny_config(sparsities=(0.0,), batch_sizes=(64,), num_trials=1, pruning='random', check_every=5,
                         max_steps=5, snip_examples=0, batch_in_passes=batch_in_passes)
    built = []
    make_train_step = trial.make_train_step
    monkeypatch.setattr(trial, 'make_train_step',
                        lambda network, optimizer, per_pass=None, *memory: built.append(per_pass) or make_train_step(
                            network, optimizer, per_pass, *memory))
    dps_jax.run_study(config, model=_TwoLayerNet(), dataset=dataset, log=lambda line: None)
    assert built == [trial.WHOLE_BATCH, per_pass]  # the memory estimate's whole-batch step, then the study's


def test_a_batch_one_trial_cannot_hold_is_taken_in_passes_and_recorded(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    dataset = dps_jax.from_arrays(rng.normal(size=(200, 6, 6, 1)).astype(np.float32), labels, name='passes')
    config = tiny_config(sparsities=(0.0,), batch_sizes=(32,), num_trials=2, pruning='random', check_every=5,
                         max_steps=5, snip_examples=0)
    # 1 GB per example in a 10.5 GB budget: at most 10 examples per pass beside a state of a few KB, so
    # batch 32 takes 4 passes of 8 (its largest divisor up to 10), on a CPU as on an accelerator.
    monkeypatch.setattr(engine, 'train_bytes_per_example', lambda *args: 1e9)
    monkeypatch.setattr(engine, 'default_memory_bytes', lambda fraction=0.5: int(10.5e9))
    limits = []
    make_train_step = trial.make_train_step
    monkeypatch.setattr(trial, 'make_train_step', lambda network, optimizer, per_pass=None, limit=None, data_devices=1: (
        limits.append(limit) or make_train_step(network, optimizer, per_pass, limit, data_devices)))
    lines = []
    dps_jax.run_study(config, str(tmp_path), model=_TwoLayerNet(), dataset=dataset, log=lines.append)
    assert limits == [None, 10]  # the memory estimate's whole-batch step (measured once), then the study's
    assert not any('trials at a time' in line for line in lines)  # groups sized for one pass of 8, not 32
    assert any("step at batch 32 needs about 32.0 GB per device, over the 10.5 GB budget "
               "(config.memory_fraction): it takes the batch in 4 passes of 8 examples" in line for line in lines)
    recorded = json.loads((tmp_path / 'provenance.json').read_text())['runs']
    assert recorded[0]['numerics']['examples_per_pass'] == {'32': 8}
    config.batch_in_passes = False  # the whole batch: no limit, and a warning instead
    limits.clear()
    lines.clear()
    dps_jax.run_study(config, model=_TwoLayerNet(), dataset=dataset, log=lines.append)
    assert limits[-1] is None
    assert any('takes its batch whole (config.batch_in_passes is False): it may run out of memory' in line
               for line in lines)


def test_passes_over_a_meshs_data_axis_are_sized_per_device_and_split_evenly(monkeypatch):
    import types
    from dps_jax import api, workload
    rng = np.random.default_rng(0)
    dataset = dps_jax.from_arrays(rng.normal(size=(200, 6, 6, 1)).astype(np.float32), rng.integers(0, 4, size=200),
                                  name='sharded')
    config = api.resolved_config(tiny_config(sparsities=(0.0,), batch_sizes=(100,), num_trials=1), _TwoLayerNet(),
                                 dataset)
    work = workload.load_workload(config, _TwoLayerNet(), dataset)
    # 1 GB per example in 4.5 GB per device: 4 examples per device, 16 over a 'data' axis of 4.
    monkeypatch.setattr(engine, 'train_bytes_per_example', lambda *args: 1e9)
    monkeypatch.setattr(engine, 'default_memory_bytes', lambda fraction=0.5: int(4.5e9))
    memory = workload.memory_estimate(config, work, types.SimpleNamespace(shape={'data': 4, 'trial': 1}))
    assert (memory.pass_limit, memory.data_devices) == (16, 4)
    # Batch 100 in 25 passes of 4 (one example per device each), not 10 passes of 10 (which 4 devices cannot
    # split evenly); on any backend, as the CPU's own passes of 25 exceed the limit.
    assert workload.examples_per_pass(config, work, 100, memory) == 4
    assert workload.describe_passes(memory, 100, 4, False) == (
        "  memory: one trial's step at batch 100 needs about 25.0 GB per device, over the 4.5 GB budget "
        "(config.memory_fraction): it takes the batch in 25 passes of 4 examples (the mean gradient)")
    params, _ = trial.init_variables(work.network, work.example_shape, 0)
    one = trial.new_trial_state(params, jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params),
                                work.optimizer, {})
    jaxpr = str(jax.make_jaxpr(workload.make_train_step(config, work, memory))(
        one, (work.train_images[:100], work.train_labels[:100])))
    assert 'length=25' in jaxpr  # the step's scan over its passes


def test_a_checkpoint_taken_in_passes_from_memory_is_not_resumed_with_other_passes(monkeypatch, tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=300)
    images = (rng.normal(size=(300, 6, 6, 1)) + labels[:, None, None, None]).astype(np.float32)
    dataset = dps_jax.from_arrays(images, labels, name='passes')
    config = tiny_config(sparsities=(0.0,), batch_sizes=(32,), num_trials=2, pruning='random', check_every=5,
                         max_steps=40, snip_examples=0, goal_error=0.01, checkpoint_every=1)
    monkeypatch.setattr(engine, 'train_bytes_per_example', lambda *args: 1e9)

    class Stop(Exception):
        pass

    def stop_at_step_15(line):
        if 'step      15/' in line:
            raise Stop

    config.progress_every_seconds = 0.0
    monkeypatch.setattr(engine, 'default_memory_bytes', lambda fraction=0.5: int(10.5e9))  # passes of 8
    with pytest.raises(Stop):
        dps_jax.run_study(config, str(tmp_path / 'study'), model=_TwoLayerNet(), dataset=dataset, log=stop_at_step_15)
    assert any(name.isdigit() for name in os.listdir(tmp_path / 'study' / 'checkpoints' / '0_32'))
    monkeypatch.setattr(engine, 'default_memory_bytes', lambda fraction=0.5: 1 << 50)  # the CPU's passes of 32
    lines = []
    resumed = dps_jax.run_study(config, str(tmp_path / 'study'), model=_TwoLayerNet(), dataset=dataset,
                                log=lines.append)
    assert any('was made by another setup of this cell' in line for line in lines), lines
    assert not any('resumed from checkpoint' in line for line in lines)
    fresh = dps_jax.run_study(config, str(tmp_path / 'fresh'), model=_TwoLayerNet(), dataset=dataset,
                              log=lambda line: None)
    assert resumed.cells[(0.0, 32)].trials == fresh.cells[(0.0, 32)].trials


def test_a_study_made_from_other_arrays_says_to_give_the_same_dataset_not_a_flag(tmp_path):
    rng = np.random.default_rng(0)
    make = lambda: dps_jax.from_arrays(rng.normal(size=(120, 6, 6, 1)).astype(np.float32),
                                       rng.integers(0, 4, size=120), name='swap')
    config = tiny_config(sparsities=(0.0,), batch_sizes=(16,), num_trials=1, pruning='random', snip_examples=0,
                         plan_only=True)
    first = make()
    dps_jax.run_study(config, str(tmp_path), model=_TwoLayerNet(), dataset=first, log=lambda line: None)
    with pytest.raises(config_lib.ConfigError,
                       match=r"fields differ: dataset\); to resume it as it was made, give run_study the same "
                             r"Dataset \('arrays:swap#[0-9a-f]{12}'\); use another"):
        dps_jax.run_study(config, str(tmp_path), model=_TwoLayerNet(), dataset=make(), log=lambda line: None)


def test_groups_are_sized_for_the_smoothness_measurements_too(monkeypatch):
    rng = np.random.default_rng(0)
    dataset = dps_jax.from_arrays(rng.normal(size=(200, 6, 6, 1)).astype(np.float32), rng.integers(0, 4, size=200),
                                  name='measured')
    config = tiny_config(sparsities=(0.0,), batch_sizes=(16,), num_trials=2, pruning='random', check_every=5,
                         max_steps=10, snip_examples=0, lipschitz_every=5, lipschitz_examples=50,
                         smoothness_chunk_size=7)
    measured = []
    estimate = engine.estimate_group_size
    monkeypatch.setattr(engine, 'estimate_group_size', lambda *args, **options: measured.append(args[-1]) or estimate(
        *args, **options))
    dps_jax.run_study(config, model=_TwoLayerNet(), dataset=dataset, log=lambda line: None)
    assert measured == [70]  # the Lipschitz estimate's 10 points x 7 examples per trial at once


@pytest.mark.parametrize('exact_val_errors', [True, False])
def test_exact_val_errors_says_whether_a_studys_checks_may_stop_counting(monkeypatch, exact_val_errors):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=300)
    dataset = dps_jax.from_arrays(rng.normal(size=(300, 6, 6, 1)).astype(np.float32), labels, name='stopping')
    config = tiny_config(sparsities=(0.0,), batch_sizes=(16,), num_trials=1, pruning='random', check_every=5,
                         max_steps=5, snip_examples=0, goal_error=0.3, exact_val_errors=exact_val_errors)
    built = []
    make_val_error_count = trial.make_val_error_count
    monkeypatch.setattr(trial, 'make_val_error_count', lambda network, chunk_size, stop_above=None: built.append(
        stop_above) or make_val_error_count(network, chunk_size, stop_above))
    dps_jax.run_study(config, model=_TwoLayerNet(), dataset=dataset, log=lambda line: None)
    # from_arrays keeps 30 of the 300 for validation. By hand, as the reference decides: 9 errors give
    # 1 - float32(21 / 30) = 0.300000012 > 0.3, a miss; 8 give 0.27, a hit. So a count may stop above 8.
    assert built == [None if exact_val_errors else 8]
    with pytest.raises(config_lib.ConfigError, match=re.escape("config.exact_val_errors='no' must be True or False")):
        config_lib.validate_study_config(
            ml_collections.ConfigDict({**tiny_config().to_dict(), 'exact_val_errors': 'no'}))


def test_a_study_split_into_groups_by_its_memory_estimate_gives_every_trial_the_same_numbers(monkeypatch):
    """With room for one trial at a time the cells run in groups of one, and each trial's record equals
    the one-group run's; the memory figure is compiled once per study, not once per batch size."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=400)
    images = (rng.normal(size=(400, 6, 6, 1)) + labels[:, None, None, None]).astype(np.float32)
    dataset = dps_jax.from_arrays(images, labels, name='grouping')
    # The whole batch at once: a budget too small for one trial would otherwise also split its batch into passes.
    config = tiny_config(sparsities=(0.5,), batch_sizes=(8, 16), num_trials=3, pruning='random', goal_error=0.3,
                         check_every=5, max_steps=20, compaction=False, batch_in_passes=False)
    calls = []
    measure = engine.train_bytes_per_example
    monkeypatch.setattr(engine, 'train_bytes_per_example', lambda *args: calls.append(1) or measure(*args))

    def run(memory_bytes):
        monkeypatch.setattr(engine, 'default_memory_bytes', lambda fraction=0.5: memory_bytes)
        lines = []
        result = dps_jax.run_study(config, model=_TwoLayerNet(), dataset=dataset, log=lines.append)
        return result, lines

    whole, whole_lines = run(1 << 40)
    assert len(calls) == 1 and not any('trials at a time' in line for line in whole_lines)
    grouped, grouped_lines = run(1)
    assert len(calls) == 2
    assert sum('memory: 1 trials at a time' in line for line in grouped_lines) == 2  # one per batch size
    for key, cell in whole.cells.items():
        assert cell.trials == grouped.cells[key].trials
        assert {trial['status'] for trial in cell.trials} != {'running'}


MODEL_FILE = '''import flax.linen as nn

WIDTH = 16


def hidden(x):
    return nn.relu(nn.Dense(WIDTH)(x))


class FileNet(nn.Module):
    num_classes: int = 4

    @nn.compact
    def __call__(self, images):
        return nn.Dense(self.num_classes)(hidden(images.reshape(images.shape[0], -1)))
'''


def sha1_12(path):
    return hashlib.sha1(pathlib.Path(path).read_bytes()).hexdigest()[:12]


def test_an_import_path_model_is_digested_by_the_bytes_of_its_file(tmp_path, monkeypatch):
    from dps_jax import network
    path = tmp_path / 'file_net.py'
    path.write_text(MODEL_FILE)
    model = f'{path}:FileNet'
    network.resolve_module(model, 4)
    assert network.import_path_digest(model) == sha1_12(path)
    path.write_text(MODEL_FILE + '# a comment\n')  # any edit counts
    assert network.import_path_digest(model) == sha1_12(path) != hashlib.sha1(MODEL_FILE.encode()).hexdigest()[:12]
    # 'package.module:attribute': the module's own file, as imported.
    (tmp_path / 'user_models').mkdir()
    (tmp_path / 'user_models' / '__init__.py').write_text('')
    (tmp_path / 'user_models' / 'nets.py').write_text(MODEL_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    network.resolve_module('user_models.nets:FileNet', 4)
    assert network.import_path_digest('user_models.nets:FileNet') == sha1_12(tmp_path / 'user_models' / 'nets.py')
    # A module not imported yet (config.plan_only) is found as an import would find it, without running it.
    (tmp_path / 'user_models' / 'unimported.py').write_text(MODEL_FILE + 'raise RuntimeError("ran")\n')
    assert network.import_path_digest('user_models.unimported:FileNet') == sha1_12(
        tmp_path / 'user_models' / 'unimported.py')
    assert 'user_models.unimported' not in sys.modules
    assert network.import_path_digest('user_models.absent:FileNet') == ''
    assert network.import_path_digest(f'{tmp_path}/absent.py:FileNet') == ''
    monkeypatch.delitem(sys.modules, 'user_models.nets')
    monkeypatch.delitem(sys.modules, 'user_models')
    assert network.import_path_digest('simple_cnn') == ''
    assert network.import_path_digest('python:FileNet#0123456789ab') == ''


def test_a_study_resumes_only_with_the_model_file_it_began_with(tmp_path):
    path, workdir = tmp_path / 'file_net.py', tmp_path / 'study'
    path.write_text(MODEL_FILE)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    images = (rng.normal(size=(200, 6, 6, 1)) + labels[:, None, None, None]).astype(np.float32)
    dataset = dps_jax.from_arrays(images, labels, name='digest')
    config = tiny_config(model=f'{path}:FileNet', sparsities=(0.0,), batch_sizes=(8,), num_trials=1,
                         pruning='random', snip_examples=0, goal_error=0.9, check_every=5, max_steps=5,
                         checkpoint_every=0)
    lines = []

    def run(config, **fields):
        config = ml_collections.ConfigDict(config.to_dict())
        config.update(fields)
        lines.clear()
        dps_jax.run_study(config, str(workdir), dataset=dataset, log=lines.append)

    def stored():
        return json.loads((workdir / 'config.json').read_text())

    run(config)
    begun = sha1_12(path)
    assert stored()['model_digest'] == begun and stored()['model'] == config.model and config.model_digest == ''
    run(config, plan_only=True)  # loads no model, but digests its file as a run does
    assert stored()['model_digest'] == begun
    run(config, model_digest=begun)  # a pin that holds
    assert '1 cells, 1 already finished, 0 to run' in lines

    path.write_text(MODEL_FILE.replace('WIDTH = 16', 'WIDTH = 32'))
    edited = sha1_12(path)
    with pytest.raises(config_lib.ConfigError, match=(
            rf"fields differ: model_digest\); the file of config.model='.*file_net.py:FileNet' changed since the "
            rf"study began \(digest {begun}, now {edited}\): restore it, or, if the change leaves the model as it "
            rf"was, put the new digest in {workdir}/config.json; use another --workdir")):
        run(config)
    with pytest.raises(config_lib.ConfigError, match=(
            f"config.model_digest='{begun}', but config.model=.* now digests to '{edited}': its code changed")):
        run(config, model_digest=begun)
    with pytest.raises(config_lib.ConfigError, match=rf'fields differ: model_digest\); the file of .* \(digest {begun}, '
                                                     rf'now {edited}\)'):
        run(config, plan_only=True)
    with pytest.raises(config_lib.ConfigError, match=f"config.model_digest='{begun}', but .* now digests to '{edited}'"):
        run(config, plan_only=True, model_digest=begun)
    with pytest.raises(config_lib.ConfigError, match="config.model='simple_cnn' is not an import path"):
        study.with_model_digest(tiny_config(model_digest=begun))
    assert stored()['model_digest'] == begun  # nothing written by the refused runs

    # A config.json without the digest (an older dps_jax) takes the resuming code's, and says so.
    (workdir / 'config.json').write_text(json.dumps({k: v for k, v in stored().items() if k != 'model_digest'}))
    run(config)
    assert lines[0] == (f'{workdir}/config.json records no digest of the model code (written by plan_only or by an '
                        f'older dps_jax): recording {edited} for {config.model}; cells finished before now are '
                        f'not checked against it')
    assert stored()['model_digest'] == edited


def test_a_checkpoint_saved_before_model_digests_takes_the_studys():
    config = tiny_config(model='nets.py:Net').to_dict()
    older = {'cell': '0_32', 'config': {k: v for k, v in config.items() if k != 'model_digest'}}
    current = study._checkpoint_identity({'cell': '0_32', 'config': {**config, 'model_digest': 'abc'}})
    assert study._checkpoint_identity(older, model_digest='abc') == current
    assert current['config']['model_digest'] == 'abc' and current['cell'] == '0_32'
    other = {'cell': '0_32', 'config': {**config, 'model_digest': 'def'}}
    assert study._checkpoint_identity(other, model_digest='abc') != current


@pytest.mark.parametrize('eval_convolution, check_operation', [('auto', 'conv_general_dilated'),
                                                                ('pallas', 'pallas_call')])
def test_a_study_checks_by_its_eval_convolution_while_it_trains_by_im2col(monkeypatch, eval_convolution,
                                                                          check_operation):
    """config.eval_convolution: by default ('auto') a built-in model's checks convolve by XLA's own
    convolution, with 'pallas' by the Pallas kernels (interpret mode on a CPU); its training step by
    im2col either way; the checks count the errors flax's own nn.Conv Simple-CNN counts. A model of
    one's own is checked by its training network under 'auto'."""
    monkeypatch.setattr(workload, 'require_backend', lambda config: None)  # pallas: interpret mode on a CPU
    rng = np.random.default_rng(0)
    dataset = data.from_arrays(rng.normal(size=(200, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 200),
                               num_classes=10)
    config = config_lib.base_study_config()
    config.num_trials, config.trials_per_group = 2, 2
    config.eval_convolution = eval_convolution
    work = workload.load_workload(config, dataset=dataset)
    checks = 'xla' if eval_convolution == 'auto' else eval_convolution
    assert work.eval_convolution == checks
    assert f'convolutions: training im2col, checks {checks}' in workload.describe(config, work)
    context = study.cell_context(config, work, [0.0])
    state = trial.new_trial_state(jax.tree.map(lambda leaf: leaf[1], context.params),
                                  jax.tree.map(lambda leaf: jnp.ones(leaf.shape[1:], bool), context.params),
                                  work.optimizer, {name: column[1] for name, column in context.values.items()},
                                  {}, context.dropout_keys[1])
    batch = (work.train_images[:8], work.train_labels[:8])
    assert check_operation in str(jax.make_jaxpr(context.val_error)(state, work.val_images, work.val_labels))
    assert check_operation not in str(jax.make_jaxpr(context.train_step)(state, batch))
    logits = ReferenceSimpleCNN().apply({'params': state.params}, work.val_images)  # unpruned: mask all True
    errors = int(np.sum(np.argmax(np.asarray(logits), axis=-1) != np.asarray(work.val_labels)))
    assert int(jax.jit(context.val_error)(state, work.val_images, work.val_labels)) == errors

    if eval_convolution == 'auto':
        mine = workload.load_workload(config, model=models.SimpleCNN(), dataset=dataset)
        assert mine.eval_convolution == 'im2col' and mine.eval_network is mine.network


def test_a_study_records_the_convolution_its_checks_ran_so_a_resume_that_checks_otherwise_is_refused(tmp_path):
    """study.run(model=Module) with config.model still naming a built-in model: the Module is one's own, so
    'auto' checks by its training network; config.json records that (eval_convolution 'im2col'), and a run
    that would check the built-in model by XLA's convolution is refused as another study."""
    rng = np.random.default_rng(0)
    dataset = dps_jax.from_arrays(rng.normal(size=(64, 6, 6, 1)).astype(np.float32), rng.integers(0, 4, size=64),
                                  name='checks')
    config = tiny_config(sparsities=(0.0,), batch_sizes=(16,), num_trials=1, pruning='random', check_every=5,
                         max_steps=5, snip_examples=0)
    assert config.model == 'simple_cnn' and config.eval_convolution == 'auto'
    study.run(config, str(tmp_path), log=lambda line: None, model=_TwoLayerNet(), dataset=dataset)
    assert json.loads((tmp_path / 'config.json').read_text())['eval_convolution'] == 'im2col'
    with pytest.raises(config_lib.ConfigError,
                       match=r"fields differ: eval_convolution\); to resume it as it was made: "
                             r"--config.eval_convolution=im2col;"):
        study.prepare_workdir(config, str(tmp_path), log=lambda line: None, write=False)


# --- Jobs that split a study over one workdir (config.cells) ---------------------------------------

def small_array_study(workdir, log, **overrides):
    """Two cells of a model and data given in Python, a few steps each: seconds on a CPU."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    dataset = dps_jax.from_arrays(rng.normal(size=(200, 6, 6, 1)).astype(np.float32), labels, name='jobs')
    config = tiny_config(sparsities=(0.0,), batch_sizes=(8, 16), num_trials=2, pruning='random', check_every=5,
                         max_steps=10, snip_examples=0, checkpoint_every=0, **overrides)
    dps_jax.run_study(config, str(workdir), model=_TwoLayerNet(), dataset=dataset, log=log)


def test_a_cell_another_job_holds_is_skipped_and_run_once_free(tmp_path):
    lines = []
    with store.locked(str(tmp_path / '.locks' / '0_16.lock')):  # as a job running that cell holds it
        small_array_study(tmp_path, lines.append)
    assert 'cell 2/2: sparsity 0, batch size 16 is being run by another job: skipped' in lines
    assert study.is_finished(str(tmp_path), 0.0, 8) and not study.is_finished(str(tmp_path), 0.0, 16)
    lines.clear()
    small_array_study(tmp_path, lines.append)
    assert '2 cells, 1 already finished, 1 to run' in lines and study.is_finished(str(tmp_path), 0.0, 16)


def test_a_cell_another_job_finished_meanwhile_is_skipped(tmp_path, monkeypatch):
    # The job found both cells unfinished at its start; another job finishes 0_16 before this one reaches it.
    finished_by_other = []
    real_claim = study.claimed_cell

    @contextlib.contextmanager
    def claim_after_the_other_job(workdir, sparsity, batch_size):
        if batch_size == 16:
            study.write_cell(workdir, [], study.cell_summary(fake_result(2), sparsity, batch_size, 'all'))
            finished_by_other.append(batch_size)
        with real_claim(workdir, sparsity, batch_size) as held:
            yield held
    monkeypatch.setattr(study, 'claimed_cell', claim_after_the_other_job)
    lines = []
    small_array_study(tmp_path, lines.append)
    assert finished_by_other == [16]
    assert 'cell 2/2: sparsity 0, batch size 16 was finished by another job: skipped' in lines
    assert json.loads((tmp_path / 'cells' / '0_16' / 'summary.json').read_text())['trial_steps_computed'] == 150


def test_a_job_waits_for_the_workdir_while_another_changes_its_files(tmp_path):
    import threading
    lines = []
    with store.locked(study.workdir_lock(str(tmp_path))):  # another job recording its run, say
        job = threading.Thread(target=small_array_study, args=(tmp_path, lines.append))
        job.start()
        job.join(timeout=3)
        assert job.is_alive() and not (tmp_path / 'provenance.json').exists() and not (tmp_path / 'cells').exists()
    job.join(timeout=600)
    assert len(json.loads((tmp_path / 'provenance.json').read_text())['runs']) == 1
    assert study.is_finished(str(tmp_path), 0.0, 16)


def test_a_cells_results_are_not_written_into_a_study_that_took_the_workdir_over(tmp_path):
    study.prepare_workdir(tiny_config(), str(tmp_path), log=lambda line: None)
    study.require_same_study(tiny_config(cells='0_32', progress_every_seconds=5.0), str(tmp_path), '0_32')  # run fields
    study.prepare_workdir(tiny_config(goal_error=0.3, overwrite=True), str(tmp_path), log=lambda line: None)
    with pytest.raises(config_lib.ConfigError, match=re.escape(
            f'{tmp_path}/config.json changed while this run computed cell 0_32 (another run with '
            f'--config.overwrite=True?): its results are not written there')):
        study.require_same_study(tiny_config(), str(tmp_path), '0_32')


def test_results_moved_aside_twice_in_one_second_go_to_two_folders(tmp_path):
    for goal in (0.3, 0.2, 0.1):
        study.prepare_workdir(tiny_config(goal_error=goal, overwrite=True), str(tmp_path), log=lambda line: None)
    aside = sorted(p for p in tmp_path.iterdir() if p.name.startswith('replaced-'))
    assert len(aside) == 2
    assert sorted(json.loads((p / 'config.json').read_text())['goal_error'] for p in aside) == [0.2, 0.3]


def test_a_resume_removes_the_checkpoints_a_finished_cell_left(tmp_path):
    # A run killed between writing a cell's results and deleting its checkpoints.
    study.prepare_workdir(tiny_config(), str(tmp_path), log=lambda line: None)
    study.write_cell(str(tmp_path), [], study.cell_summary(fake_result(), 0.0, 32, 'all'))
    for cell in ('0_32', '0_128'):
        (tmp_path / 'checkpoints' / cell / '20').mkdir(parents=True)
    study.remove_checkpoints_of_finished_cells(str(tmp_path), study.grid_cells(tiny_config()))
    assert not (tmp_path / 'checkpoints' / '0_32').exists() and (tmp_path / 'checkpoints' / '0_128' / '20').is_dir()


def test_the_plan_is_the_whole_grid_whichever_cells_a_job_runs(tmp_path):
    study.run(tiny_config(plan_only=True, cells='0.8_128'), str(tmp_path), log=lambda line: None)
    plan = json.loads((tmp_path / 'plan.json').read_text())
    assert [cell['name'] for cell in plan['cells']] == ['0_32', '0_128', '0.8_32', '0.8_128']


def test_a_damaged_cell_summary_or_provenance_is_one_line(tmp_path):
    study.write_cell(str(tmp_path), [], study.cell_summary(fake_result(), 0.0, 32, 'all'))
    (tmp_path / 'cells' / '0_32' / 'summary.json').write_text('{"sparsity": 0.0,')
    with pytest.raises(config_lib.ConfigError, match=r'0_32/summary.json is damaged \(Expecting .*\); move its '
                                                     r'cell folder aside to run that cell again$'):
        study.write_summary_csv(str(tmp_path))
    (tmp_path / 'provenance.json').write_bytes(b'\xff\xfe not utf-8')
    with pytest.raises(config_lib.ConfigError, match=r'provenance.json is damaged \(.*utf-8.*\); move it aside'):
        provenance.read_runs(str(tmp_path))
