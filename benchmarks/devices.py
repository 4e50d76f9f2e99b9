"""Cost of the device mesh and of mid-cell checkpoints, as ratios against baselines of the same run.

1. trial-steps/s of the engine's training chunk (Simple-CNN, 16 trials, batch 64) with the
   'trial' axis over 1, 2 and 8 forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count,
   one subprocess each). The devices share the machine's cores, so this measures the overhead
   of partitioning, not a speed-up.
2. a whole cell (run_cell until 'all' with a budget) with checkpoints every `checkpoint_every`
   checks against the same cell without checkpoints: wall time.

    python benchmarks/devices.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
NUM_TRIALS, BATCH_SIZE = 16, 64


def setup(num_examples=4096):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import simple_cnn_trials
    return simple_cnn_trials(NUM_TRIALS, num_examples)


def throughput(steps: int) -> dict:
    """In a process with forced devices: trial-steps/s of the chunk with all devices on 'trial'."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dps_jax import engine, parallel, trial

    images, labels, apply_fn, optimizer, trials = setup()
    mesh = parallel.make_mesh() if jax.device_count() > 1 else None
    programs = engine.cell_programs(trial.make_train_step(apply_fn, optimizer), trial.make_val_error_count(apply_fn),
                                    BATCH_SIZE, steps, False, mesh)
    trials = parallel.place_trials(trials, mesh)
    images, labels = parallel.place_replicated((images, labels), mesh)
    order = parallel.place_replicated(trial.init_data_order(0, images.shape[0]), mesh)
    active = np.ones(NUM_TRIALS, bool)
    # From a fresh copy each time (its time left out): on accelerators the chunk donates its states.
    fresh = lambda: jax.block_until_ready(jax.tree.map(jnp.copy, trials))
    jax.block_until_ready(programs.train_chunk(fresh(), active, order, images, labels))
    best = float('inf')
    for _ in range(3):
        copied = fresh()
        started = time.perf_counter()
        jax.block_until_ready(programs.train_chunk(copied, active, order, images, labels))
        best = min(best, time.perf_counter() - started)
    return {'devices': jax.device_count(), 'trial_steps_per_second': NUM_TRIALS * steps / best}


def checkpoint_overhead(quick: bool) -> None:
    import jax

    from dps_jax import checkpoints, engine, trial

    images, labels, apply_fn, optimizer, trials = setup()
    settings = dict(train_step=trial.make_train_step(apply_fn, optimizer), val_error=trial.make_val_error_count(apply_fn, 100),
                    train_images=images[:3584], train_labels=labels[:3584], val_images=images[3584:],
                    val_labels=labels[3584:], batch_size=BATCH_SIZE, goal_error=1e-6, check_every=20,
                    max_steps=100 if quick else 200, until='all')
    engine.run_cell(trials, **{**settings, 'max_steps': 20})  # compile outside the timings
    # One save (and its background write) of all 16 trials, timed directly, against one check.
    with tempfile.TemporaryDirectory() as directory:
        saver = checkpoints.CellCheckpoints(directory, 1, identity={'benchmark': True})
        saver.save(0, {'groups': [trials]}, {})  # warm-up (compiles the fingerprint)
        saver.manager.wait_until_finished()
        save_seconds = []
        for step in range(1, 4):
            started = time.perf_counter()
            saver.save(step, {'groups': [trials]}, {})
            saver.manager.wait_until_finished()
            save_seconds.append(time.perf_counter() - started)
        saver.close()
    state_bytes = engine.tree_bytes(trials)
    results = {}
    for every in (0, 1, 0, 1):  # alternated, best of two each: the machine's noise is ~5%
        with tempfile.TemporaryDirectory() as directory:
            saver = checkpoints.CellCheckpoints(directory, every, identity={'benchmark': True}) if every else None
            result = engine.run_cell(trials, **settings, checkpoints=saver)
        results[every] = min(results.get(every, float('inf')), result.wall_seconds)
    check_seconds = results[0] / result.checks
    print(f'  one save of {NUM_TRIALS} trials ({state_bytes / 2**20:.1f} MiB of state): {min(save_seconds):.2f} s, '
          f'{100 * min(save_seconds) / check_seconds:.1f}% of one check ({check_seconds:.1f} s = 20 steps + '
          f'validation); at the default interval (10 checks): {100 * min(save_seconds) / (10 * check_seconds):.1f}%',
          flush=True)
    print(f'  a {settings["max_steps"]}-step cell with a checkpoint after every check: {results[1]:.1f} s vs '
          f'{results[0]:.1f} s without ({100 * (results[1] / results[0] - 1):+.1f}%)', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--child_steps', type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    sys.path.insert(0, ROOT)
    if arguments.child_steps:
        print(json.dumps(throughput(arguments.child_steps)))
        return
    steps = 5 if arguments.quick else 20
    print(f'1. training chunk, {NUM_TRIALS} Simple-CNN trials, batch {BATCH_SIZE}, trial axis over forced CPU devices:')
    baseline = None
    for devices in (1, 2, 8):
        env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
        output = subprocess.run([sys.executable, os.path.abspath(__file__), f'--child_steps={steps}'], env=env,
                                capture_output=True, text=True, check=True).stdout
        rate = json.loads(output.strip().splitlines()[-1])['trial_steps_per_second']
        baseline = baseline or rate
        print(f'  {devices} device(s): {rate:7.1f} trial-steps/s, {rate / baseline:.3f}x of 1 device', flush=True)
    print('2. a whole cell with and without mid-cell checkpoints (1 device):')
    checkpoint_overhead(arguments.quick)


if __name__ == '__main__':
    main()
