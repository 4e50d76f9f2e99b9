"""Runs small engine cells (and compiles one step in passes) on forced CPU devices and prints the
results as JSON (last line).

Started by tests/test_parallel.py in a subprocess, because the device count is fixed when JAX
starts:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.devices_worker meshes
    python -m tests.devices_worker process PROCESS_ID PORT   # one of two processes, 4 devices each
"""

import json
import os
import sys


def cell(mesh=None, num_trials=7, keep_final_state=True, **overrides):
    import jax
    import numpy as np

    from dps_jax import parallel
    from tests.test_engine import RATES, cell_setup, run

    rates = np.resize(RATES, num_trials)
    trials, tx, _, _ = cell_setup(rates=rates)
    settings = dict(max_steps=100, check_every=10, goal_error=0.14, until='all', compaction=True,
                    keep_final_state=keep_final_state, mesh=mesh)
    settings.update(overrides)
    result = run(trials, tx, **settings)
    record = {'status': result.status.tolist(), 'steps_to_result': result.steps_to_result.tolist(),
              'steps': result.steps.tolist(), 'last_val_error': result.last_val_error.tolist(),
              'trial_steps_computed': int(result.trial_steps_computed), 'devices': jax.device_count()}
    if keep_final_state:
        record['params'] = [leaf.tolist() for leaf in jax.tree.leaves(parallel.to_host(result.final_state.params))]
    return record


def passes_on_a_data_axis(batch_size=512):
    """What the compiled single-trial step in passes does with a batch sharded over a 2-device 'data'
    axis: its collectives, and the per-device shapes of its examples."""
    import re

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from dps_jax import optim, parallel, trial

    def apply_fn(params, images):
        return images.reshape(images.shape[0], -1) @ params['dense']['kernel'] + params['dense']['bias']

    tx = optim.make_optimizer('sgd')
    params = {'dense': {'kernel': jnp.zeros((5, 3)), 'bias': jnp.zeros(3)}}
    state = trial.TrainState(params, jax.tree.map(lambda leaf: jnp.ones(leaf.shape, bool), params),
                             optim.init_optimizer_state(tx, params, {'learning_rate': 0.1}), jnp.asarray(0, jnp.int32))
    mesh = parallel.make_mesh(trial=4, data=2)  # the batch split over 'data', copied over 'trial'
    sharded, replicated = NamedSharding(mesh, PartitionSpec('data')), NamedSharding(mesh, PartitionSpec())
    batch = (jax.device_put(jnp.ones((batch_size, 5)), sharded),
             jax.device_put(jnp.zeros(batch_size, jnp.int32), sharded))
    hlo = jax.jit(trial.make_train_step(apply_fn, tx)).lower(jax.device_put(state, replicated), batch).compile().as_text()
    return {'per_pass': trial.examples_per_pass(batch_size, apply_fn), 'all_gather': 'all-gather' in hlo,
            'all_reduce': 'all-reduce' in hlo,
            'example_rows': sorted({int(rows) for rows in re.findall(r'f32\[(\d+),5\]', hlo)})}


def stopping_count():
    """The cells' error count, stopping once a trial has missed their goal (0.14 of the split)."""
    from dps_jax import trial
    from tests.test_engine import APPLY, VAL_IMAGES

    return trial.make_val_error_count(APPLY, 16, trial.max_errors_at_goal(int(VAL_IMAGES.shape[0]), 0.14))


def meshes():
    import jax

    from dps_jax import parallel

    devices = jax.devices()
    return {
        'one_device': cell(None),
        'trial_8': cell(parallel.make_mesh(trial=8)),
        'data_2_trial_4': cell(parallel.make_mesh(trial=4, data=2)),
        'one_device_5': cell(None, num_trials=5),
        'trial_8_5': cell(parallel.make_mesh(trial=8), num_trials=5),
        'trial_8_stopping': cell(parallel.make_mesh(trial=8), keep_final_state=False, val_error=stopping_count()),
        'trial_8_devices': [str(device) for device in devices],
        'passes_on_a_data_axis': passes_on_a_data_axis(),
    }


def process(process_id, port):
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    from dps_jax import parallel

    parallel.initialize_distributed('on', f'localhost:{port}', 2, process_id)
    result = cell(parallel.make_mesh(), keep_final_state=False)
    result['process_index'] = parallel.jax.process_index()
    result['main'] = parallel.is_main_process()
    return result


if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if sys.argv[1] == 'meshes':
        # The five cells share programs: keep them in the test session's folder (tests/conftest.py
        # sets XDG_CACHE_HOME; by hand, nothing is cached). Not in the two-process run, whose
        # processes would write the same entries at once.
        if os.environ.get('XDG_CACHE_HOME'):
            from dps_jax import compilation_cache
            compilation_cache.use_compilation_cache('auto')
        output = meshes()
    else:
        output = process(int(sys.argv[2]), sys.argv[3])
    print(json.dumps(output))
