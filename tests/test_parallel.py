"""Trials over several devices: the same per-trial results as one device, on 8 forced CPU devices
(a 'trial' axis, a 'data' x 'trial' mesh, padding) and over two processes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dps_jax import engine, parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(*arguments, devices=8, timeout=600):
    # The mesh tests are about host devices: on a GPU or TPU machine JAX would otherwise pick the
    # accelerator (one device) and ignore the forced host device count.
    env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}', 'PYTHONPATH': ROOT,
           'JAX_PLATFORMS': 'cpu'}
    completed = subprocess.run([sys.executable, '-m', 'tests.devices_worker', *arguments], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def runs():
    return worker('meshes')


def assert_same_trials(got, want, exact_params=True):
    assert got['status'] == want['status']
    assert got['steps_to_result'] == want['steps_to_result']
    assert got['steps'] == want['steps']
    for got_leaf, want_leaf in zip(got['params'], want['params']):
        np.testing.assert_allclose(np.asarray(got_leaf, np.float64), np.asarray(want_leaf, np.float64),
                                   rtol=0 if exact_params else 1e-4, atol=0 if exact_params else 1e-5)


@pytest.mark.slow
@pytest.mark.xdist_group('mesh_runs')
def test_eight_devices_on_the_trial_axis_give_the_one_device_results(runs):
    assert runs['trial_8']['devices'] == 8 and len(runs['trial_8_devices']) == 8
    assert {'reached', 'diverged'} <= {engine.STATUS_NAMES[code] for code in runs['one_device']['status']}
    assert_same_trials(runs['trial_8'], runs['one_device'], exact_params=False)
    np.testing.assert_allclose(runs['trial_8']['last_val_error'], runs['one_device']['last_val_error'], atol=1e-6)


@pytest.mark.slow
@pytest.mark.xdist_group('mesh_runs')
def test_checks_that_stop_counting_decide_alike_with_trials_sharded_over_devices(runs):
    # The vmapped count runs until every trial on every device is decided: an all-reduce of the
    # loop's condition. Oracle: the one-device cell counting whole splits.
    got, want = runs['trial_8_stopping'], runs['one_device']
    for field in ('status', 'steps_to_result', 'steps'):
        assert got[field] == want[field], field
    missed = [index for index, steps in enumerate(want['steps_to_result'])
              if steps < 0 and np.isfinite(want['last_val_error'][index])]
    assert missed and all(got['last_val_error'][i] <= want['last_val_error'][i] + 1e-12 for i in missed)
    assert any(got['last_val_error'][i] < want['last_val_error'][i] - 1e-12 for i in missed)  # it did stop


@pytest.mark.slow
@pytest.mark.xdist_group('mesh_runs')
def test_a_step_in_passes_keeps_a_data_sharded_batch_on_its_devices(runs):
    # Pass i takes examples i, i + P, ...: each device runs its half of every pass, and the gradients
    # are summed across devices, instead of gathering the whole batch onto each device.
    passes = runs['passes_on_a_data_axis']
    assert passes['per_pass'] == 32
    assert passes['all_reduce'] and not passes['all_gather']
    assert 512 not in passes['example_rows'] and 256 in passes['example_rows'], passes['example_rows']


@pytest.mark.slow
@pytest.mark.xdist_group('mesh_runs')
def test_a_data_by_trial_mesh_gives_the_one_device_results(runs):
    # The batch is split over 2 devices and the gradient summed across them: float order changes.
    assert_same_trials(runs['data_2_trial_4'], runs['one_device'], exact_params=False)


@pytest.mark.slow
@pytest.mark.xdist_group('mesh_runs')
def test_padding_trials_never_appear_in_results(runs):
    padded, alone = runs['trial_8_5'], runs['one_device_5']
    assert len(padded['status']) == 5 and len(padded['params'][0]) == 5
    assert_same_trials(padded, alone, exact_params=False)
    # 5 trials occupy 8 slots (one per device): the 3 inert copies cost compute but never count.
    assert padded['trial_steps_computed'] > alone['trial_steps_computed']


def free_port():
    with socket.socket() as probe:
        probe.bind(('localhost', 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.xdist_group('mesh_runs')
def test_two_processes_give_the_one_process_results(runs):
    port = str(free_port())
    env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}  # host devices, also on a GPU machine
    env.pop('XLA_FLAGS', None)
    processes = [subprocess.Popen([sys.executable, '-m', 'tests.devices_worker', 'process', str(index), port],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for index in range(2)]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, errors) in zip(processes, outputs):
        assert process.returncode == 0, errors[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [result['process_index'] for result in results] == [0, 1]
    assert [result['main'] for result in results] == [True, False]
    for result in results:
        assert result['devices'] == 8
        assert result['status'] == runs['one_device']['status']
        assert result['steps_to_result'] == runs['one_device']['steps_to_result']


@pytest.mark.parametrize('live, group_size, multiple, layout', [
    (5, 8, 8, (1, 8)),      # padded to one slot per device
    (3, 16, 8, (1, 8)),
    (9, 16, 8, (1, 16)),
    (20, 8, 8, (3, 8)),
    (5, 2, 4, (2, 4)),      # a group smaller than the trial axis is raised to it
    (100, 33, 1, (4, 28)),  # unchanged without devices
])
def test_bucket_layout_makes_slots_a_multiple_of_the_trial_axis(live, group_size, multiple, layout):
    assert engine.bucket_layout(live, group_size, multiple) == layout
    groups, per_group = layout
    assert per_group % multiple == 0 and groups * per_group >= live


def test_make_mesh_names_the_field_that_does_not_fit():
    import jax
    devices = jax.devices()
    mesh = parallel.make_mesh(devices=devices)
    assert dict(mesh.shape) == {'data': 1, 'trial': len(devices)}
    with pytest.raises(ValueError, match='mesh.trial=3 x mesh.data=1'):
        parallel.make_mesh(trial=3, devices=devices * 2)
    with pytest.raises(ValueError, match='mesh.data=3 does not divide'):
        parallel.make_mesh(data=3, devices=devices * 2)


@pytest.mark.parametrize('environ, expected', [
    ({}, False), ({'SLURM_NTASKS': '1', 'SLURM_STEP_ID': '0'}, False),
    ({'SLURM_NTASKS': '4', 'SLURM_STEP_ID': '0'}, True),
    ({'SLURM_NTASKS': '4'}, False),  # an sbatch script outside srun
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True), ({'JAX_COORDINATOR_ADDRESS': 'host:1234'}, True),
])
def test_cluster_environment_detection(environ, expected):
    assert parallel.in_cluster(environ) is expected


def test_distributed_off_or_no_cluster_never_initializes_and_bad_modes_are_named():
    assert parallel.initialize_distributed('off', environ={'SLURM_NTASKS': '4', 'SLURM_STEP_ID': '0'}) is False
    assert parallel.initialize_distributed('auto', environ={}) is False
    with pytest.raises(ValueError, match="distributed='maybe' is not accepted"):
        parallel.initialize_distributed('maybe')
