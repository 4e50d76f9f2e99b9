"""Cost of the smoothness measurements, as ratios against training steps timed in the same run.

1. one Lipschitz estimate (ten exact gradients over `--examples` training examples) for N trials
   vmapped, in training steps of the same N trials at batch size 64 (Simple-CNN);
2. one gradient noise scale estimate (16 draws of batches 64 and 1024), in training steps;
3. the Lipschitz estimate's chunk size (examples per trial and point per chunk): example-gradients/s;
4. the price the engine pays with measurements OFF: its training chunk always carries the
   parameters before the last step (so that the program is the same on and off); against the
   same chunk without that carry.

    python benchmarks/smoothness.py [--examples 5400] [--full] [--quick]

The data are synthetic (the cost does not depend on the pixel values); --full also times one
estimate over a whole Fashion-MNIST-sized split (54,000 examples), N = 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import chunk_rate, seconds, simple_cnn_trials as setup  # noqa: E402

from dps_jax import engine, smoothness, trial  # noqa: E402

BATCH_SIZE = 64


def training_step_seconds(apply_fn, optimizer, trials, images, labels, steps):
    """Seconds per step of the engine's chunk for all trials at BATCH_SIZE."""
    programs = engine.cell_programs(trial.make_train_step(apply_fn, optimizer), trial.make_val_error_count(apply_fn),
                                    BATCH_SIZE, steps, False)
    num_trials = jax.tree.leaves(trials)[0].shape[0]
    return num_trials / chunk_rate(programs, trials, steps, images, labels)  # from fresh copies: donated states


def measurement_costs(num_trials, num_examples, steps):
    images, labels, apply_fn, optimizer, trials = setup(num_trials, max(num_examples, 2048))
    step_seconds = training_step_seconds(apply_fn, optimizer, trials, images, labels, steps)
    measurements = smoothness.Measurements(smoothness.make_example_losses(apply_fn), lipschitz_every=1,
                                           noise_scale_every=1)
    programs = smoothness.measurement_programs(measurements)
    moved = jax.tree.map(lambda leaf: leaf * 1.001, trials.params)
    lipschitz = seconds(lambda: programs.lipschitz(trials.params, moved, trials.mask, images[:num_examples],
                                                   labels[:num_examples]), repeats=1)
    noise = seconds(lambda: programs.noise_scale(trials.params, trials.mask, images, labels,
                                                 jax.random.PRNGKey(0)), repeats=1)
    print(f'  N={num_trials:>2d}: training step {step_seconds * 1e3:7.1f} ms '
          f'({num_trials * BATCH_SIZE / step_seconds:6.0f} examples/s); '
          f'L over {num_examples:,d} examples {lipschitz:6.1f} s = {lipschitz / step_seconds:7.0f} steps '
          f'({num_trials * 10 * num_examples / lipschitz:6.0f} example-gradients/s); '
          f'B_simple {noise:5.1f} s = {noise / step_seconds:5.0f} steps', flush=True)


def chunk_sizes(num_examples):
    images, labels, apply_fn, _, trials = setup(1, num_examples)
    one = jax.tree.map(lambda leaf: leaf[:1], trials)
    moved = jax.tree.map(lambda leaf: leaf * 1.001, one.params)
    for chunk_size in (10, 25, 50, 100):
        measurements = smoothness.Measurements(smoothness.make_example_losses(apply_fn), lipschitz_every=1,
                                               chunk_size=chunk_size)
        program = smoothness.measurement_programs(measurements).lipschitz
        taken = seconds(lambda: program(one.params, moved, one.mask, images, labels), repeats=1)
        print(f'  chunk {chunk_size:>3d}: {10 * num_examples / taken:6.0f} example-gradients/s', flush=True)


def carry_overhead(num_trials, steps):
    """The engine's chunk against the same scan without the previous-parameters carry."""
    images, labels, apply_fn, optimizer, trials = setup(num_trials, 2048)
    train_step = trial.make_train_step(apply_fn, optimizer)
    batched_step = jax.vmap(train_step, in_axes=(0, None))

    @jax.jit
    def without_carry(states, active, order, step):
        def body(carry, _):
            states, order, step, finite = carry
            order, indices = trial.next_batch_indices(order, BATCH_SIZE)
            stepped, metrics = batched_step(states, (images[indices], labels[indices]))
            states = jax.tree.map(
                lambda new, old: jnp.where(active.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), stepped, states)
            return (states, order, step + 1, finite & jnp.isfinite(metrics.loss)), None

        (states, order, _, finite), _ = jax.lax.scan(body, (states, order, step, jnp.ones(active.shape, bool)),
                                                     None, length=steps)
        return states, order, finite

    order = trial.init_data_order(0, images.shape[0])
    active = jnp.ones(num_trials, bool)
    # Alternating best-of-5: the two differ by less than this machine's run-to-run noise (~10%).
    with_carry, plain = float('inf'), float('inf')
    for _ in range(5):
        with_carry = min(with_carry, training_step_seconds(apply_fn, optimizer, trials, images, labels, steps))
        plain = min(plain, seconds(lambda: without_carry(trials, active, order, jnp.int32(0)), repeats=1) / steps)
    print(f'  N={num_trials:>2d}: with carry {with_carry * 1e3:6.1f} ms/step, without {plain * 1e3:6.1f} ms/step, '
          f'ratio {with_carry / plain:.3f}', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--examples', type=int, default=5400, help='examples of the Lipschitz estimate')
    parser.add_argument('--full', action='store_true', help='also one estimate over 54,000 examples, N = 1')
    parser.add_argument('--quick', action='store_true', help='fewer steps and examples')
    arguments = parser.parse_args()
    steps = 10 if arguments.quick else 40
    print(f'backend {jax.default_backend()}, {jax.device_count()} device(s)')
    print('1-2. one measurement in training steps (batch 64) of the same trials:')
    for num_trials in (1, 4):
        measurement_costs(num_trials, 1000 if arguments.quick else arguments.examples, steps)
    if arguments.full:
        measurement_costs(1, 54000, steps)
    print('3. Lipschitz estimate chunk size, N = 1:')
    chunk_sizes(500 if arguments.quick else 2000)
    print('4. training with measurements off: the previous-parameters carry')
    for num_trials in (1, 8):
        carry_overhead(num_trials, steps)


if __name__ == '__main__':
    main()
