"""One trial's training step against the reference's TF1 step, side by side on this machine's CPU.

The reference's part runs the reference's own code (a checkout of namhoonlee/effect-dps-public):
its Model (Simple-CNN, SGD, constant learning rate, mask variables in the graph, as in its
training runs) in a tf.InteractiveSession, one `sess.run([outputs, train_op], feed_dict)` per
step, as its train loop does. TensorFlow 2.x runs this TF1 graph code through tf.compat.v1. It
runs in a separate Python with TensorFlow (--tf_python), so that neither framework shares a
process with the other. Our part is the single-trial `lax.scan` chunk that `trial.run_trial`
runs, with the batches gathered on the device. Both draw batches from the same kind of data
(random pixels and labels: the timings do not depend on them).

Each round times the reference, then ours, at every batch size. A ratio is ours over the
reference's, both the best of their rounds, in steps per second:

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    git clone https://github.com/namhoonlee/effect-dps-public /tmp/effect-dps-public
    python benchmarks/tf1_reference.py --reference_dir /tmp/effect-dps-public --tf_python /tmp/tfenv/bin/python

Without --tf_python, the reference runs in this Python, which then needs TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
POOL = 2048  # examples the batches are drawn from, on both sides


def synthetic_pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (POOL, 28, 28, 1) float32, labels (POOL,) int32) of random values."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(POOL, 28, 28, 1)).astype(np.float32),
            rng.integers(0, 10, size=POOL).astype(np.int32))


def reference_steps_per_second(reference_dir: str, batch_size: int, steps: int) -> float:
    """The reference's training steps per second (best of 2 timed runs of `steps`, after a warm-up)."""
    import tensorflow
    compat = tensorflow.compat.v1
    compat.disable_v2_behavior()
    # The reference's modules say `import tensorflow as tf` and use the TF1 names.
    sys.modules['tensorflow'] = compat
    sys.path.insert(0, os.path.join(reference_dir, 'edps'))
    from model import Model  # the reference's own
    compat.reset_default_graph()
    model = Model(datasource='fashion-mnist', arch='simple-cnn', target_sparsity=0.9, optimizer='sgd',
                  learning_rate=0.01, decay_type='constant', decay_steps=None, end_learning_rate_factor=None,
                  momentum=0.9, check_lipschitz=False)
    model.construct_model()
    session = compat.InteractiveSession()
    session.run(compat.global_variables_initializer())
    images, labels = synthetic_pool()
    rng = np.random.default_rng(1)

    def run(count):
        for _ in range(count):
            rows = rng.integers(0, POOL, size=batch_size)
            session.run([model.outputs, model.train_op], {
                model.inputs['image']: images[rows], model.inputs['label']: labels[rows], model.is_train: True})

    run(max(3, steps // 10))
    best = float('inf')
    for _ in range(2):
        started = time.perf_counter()
        run(steps)
        best = min(best, time.perf_counter() - started)
    session.close()
    return steps / best


def our_steps_per_second(batch_size: int, steps: int) -> float:
    """Our single-trial training steps per second (benchmarks/common.py: one_trial_rate)."""
    import jax.numpy as jnp
    sys.path.insert(0, HERE)
    import common
    images, labels = (jnp.asarray(array) for array in synthetic_pool())
    return common.one_trial_rate(batch_size, steps, images, labels)


def reference_in_subprocess(args, batch_size: int, steps: int) -> float:
    command = [args.tf_python or sys.executable, os.path.abspath(__file__), '--reference_worker',
               '--reference_dir', args.reference_dir, '--batch_sizes', str(batch_size), '--steps', str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
    if done.returncode != 0:
        sys.exit(f'the reference run failed ({" ".join(command)}):\n{done.stderr[-3000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])['steps_per_second']


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--reference_dir', required=True, help='a checkout of namhoonlee/effect-dps-public')
    parser.add_argument('--tf_python', default='', help='a Python with TensorFlow; default: this one')
    parser.add_argument('--batch_sizes', type=int, nargs='+', default=[8, 64, 512])
    parser.add_argument('--steps', type=int, default=0, help='steps per timed run; 0 = 16384 / batch, in [20, 400]')
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--reference_worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.reference_dir, 'edps', 'model.py')):
        parser.error(f'--reference_dir={args.reference_dir!r} has no edps/model.py: give a checkout of '
                     'namhoonlee/effect-dps-public')
    steps_for = lambda batch: args.steps or int(np.clip(16384 // batch, 20, 400))
    if args.reference_worker:
        batch = args.batch_sizes[0]
        print(json.dumps({'steps_per_second': reference_steps_per_second(args.reference_dir, batch, steps_for(batch))}))
        return
    import jax
    version = subprocess.run([args.tf_python or sys.executable, '-c', 'import tensorflow as t; print(t.__version__)'],
                             capture_output=True, text=True, env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
    print(f'TensorFlow {version.stdout.strip()} (the reference, tf.compat.v1) against jax {jax.__version__} '
          f'on {jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores; {args.rounds} rounds', flush=True)
    best = {}
    for round_index in range(args.rounds):
        for batch in args.batch_sizes:
            reference = reference_in_subprocess(args, batch, steps_for(batch))
            ours = our_steps_per_second(batch, steps_for(batch))
            print(f'  round {round_index + 1}, batch {batch}: reference {reference:.1f} steps/s, ours {ours:.1f} '
                  f'({ours / reference:.2f}x)', flush=True)
            previous = best.get(batch, (0.0, 0.0))
            best[batch] = (max(previous[0], reference), max(previous[1], ours))
    print('| batch | reference TF1 steps/s | ours steps/s | ours / reference |')
    print('| --- | --- | --- | --- |')
    for batch, (reference, ours) in best.items():
        print(f'| {batch} | {reference:.1f} | {ours:.1f} | {ours / reference:.2f}x |')


if __name__ == '__main__':
    main()
