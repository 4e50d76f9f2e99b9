"""Training-step time of SimpleCNN: im2col form (dps_jax.models) vs flax nn.Conv + nn.max_pool.

Measured in one run: (a, b) a Python loop of jitted steps, (c) lax.scan of steps, (d) the
scan vmapped over N trials that share each batch (as the engine runs them). Prints
ms/step, ratios against the nn.Conv Python-loop baseline, and achieved model FLOP/s as a
share of a 2048^3 matmul measured in the same run.

    python benchmarks/models.py [--batch 64] [--scan_steps 50] [--trials 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from dps_jax import models  # noqa: E402

LEARNING_RATE = 0.01


class FlaxConvSimpleCNN(nn.Module):
    """SimpleCNN from nn.Conv and nn.max_pool, parameter names as models.SimpleCNN: (B, 28, 28, 1) -> (B, 10)."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        conv = lambda features, name: nn.Conv(features, (5, 5), padding='VALID',
                                              kernel_init=models.kernel_init, name=name)
        pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        x = pool(nn.relu(conv(32, 'conv1')(x)))
        x = pool(nn.relu(conv(64, 'conv2')(x)))
        return models.dense(self.num_classes, name='dense')(x.reshape(x.shape[0], -1))


def make_train_step(model: nn.Module):
    """(params, (images, labels)) -> (params after one SGD step, loss) for ONE trial."""
    def loss_fn(params, images, labels):
        logits = model.apply({'params': params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def train_step(params, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        params = jax.tree_util.tree_map(lambda w, g: w - LEARNING_RATE * g, params, grads)
        return params, loss
    return train_step


def make_scan(train_step, num_trials: int | None):
    """Jitted (params, batches with a leading step axis) -> params after all steps; vmapped if num_trials."""
    step = train_step if num_trials is None else jax.vmap(train_step, in_axes=(0, None))
    return jax.jit(lambda params, batches: jax.lax.scan(step, params, batches))


def median_seconds(run, repeats: int, warm_up: bool = True) -> float:
    """Median wall time of run() (which must block on its result), after one warm-up call if warm_up."""
    if warm_up:
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_python_loop(train_step, params, batches, repeats) -> float:
    """Seconds per step of a Python loop over a jitted step."""
    step = jax.jit(train_step)
    num_steps = batches[0].shape[0]

    def run():
        p = params
        for i in range(num_steps):
            p, loss = step(p, (batches[0][i], batches[1][i]))
        jax.block_until_ready((p, loss))
    return median_seconds(run, repeats) / num_steps


def time_scan(train_step, params, batches, repeats, num_trials=None) -> float:
    """Seconds per scan step (one step of all num_trials trials when vmapped)."""
    # Compiled ahead of time, so no warm-up run is needed: the slow forms take many seconds a run.
    scan = make_scan(train_step, num_trials).lower(params, batches).compile()
    run = lambda: jax.block_until_ready(scan(params, batches))
    return median_seconds(run, repeats, warm_up=False) / batches[0].shape[0]


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """Achieved FLOP/s of a jitted size^3 float32 matmul, the machine's practical peak."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    matmul = jax.jit(jnp.dot)
    return 2 * size ** 3 / median_seconds(lambda: matmul(a, a).block_until_ready(), repeats)


def simple_cnn_training_flops_per_example() -> float:
    """Multiply-adds x 2 of the forward pass, x 3 for forward + backward (input and weight grads)."""
    conv1 = 24 * 24 * (5 * 5 * 1) * 32
    conv2 = 8 * 8 * (5 * 5 * 32) * 64
    dense = 1024 * 10
    return 3 * 2 * (conv1 + conv2 + dense)


def random_batches(num_steps: int, batch_size: int, seed: int = 0):
    """(images (steps, B, 28, 28, 1), labels (steps, B)) of standard-normal pixels."""
    image_key, label_key = jax.random.split(jax.random.PRNGKey(seed))
    images = jax.random.normal(image_key, (num_steps, batch_size, 28, 28, 1), jnp.float32)
    labels = jax.random.randint(label_key, (num_steps, batch_size), 0, 10)
    return images, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--loop_steps', type=int, default=20)
    parser.add_argument('--scan_steps', type=int, default=50)
    parser.add_argument('--trials', type=int, default=8)
    parser.add_argument('--vmap_scan_steps', type=int, default=10)
    # nn.Conv inside lax.scan runs ~1 s/step here; its per-step time does not depend on the
    # scan length, so a short scan, timed once, keeps the whole run under three minutes.
    parser.add_argument('--slow_scan_steps', type=int, default=4)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()

    im2col_model, flax_model = models.SimpleCNN(), FlaxConvSimpleCNN()
    params = jax.jit(im2col_model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))['params']
    trial_keys = jax.random.split(jax.random.PRNGKey(1), args.trials)
    trial_params = jax.jit(jax.vmap(
        lambda key: im2col_model.init(key, jnp.zeros((1, 28, 28, 1)))['params']))(trial_keys)
    steps = {'im2col': make_train_step(im2col_model), 'nn.Conv': make_train_step(flax_model)}

    # Same parameters, same batch: both forms must agree before their times mean anything.
    batch = jax.tree_util.tree_map(lambda a: a[0], random_batches(1, args.batch))
    losses = {name: float(jax.jit(step)(params, batch)[1]) for name, step in steps.items()}
    assert abs(losses['im2col'] - losses['nn.Conv']) < 1e-5, losses

    print(f'jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, '
          f'batch {args.batch}, median of {args.repeats}')
    peak = matmul_flops_per_second()  # first, before the long runs heat or share the cores
    loop_batches = random_batches(args.loop_steps, args.batch)
    scan_steps = {'im2col': args.scan_steps, 'nn.Conv': args.slow_scan_steps}
    vmap_scan_steps = {'im2col': args.vmap_scan_steps, 'nn.Conv': args.slow_scan_steps}
    scan_repeats = {'im2col': max(args.repeats // 2, 1), 'nn.Conv': 1}
    results = {}  # label -> seconds per single-trial step
    for name, step in steps.items():
        results[f'(a/b) {name}, Python loop of jitted steps'] = time_python_loop(
            step, params, loop_batches, args.repeats)
        results[f'(c) {name}, lax.scan of {scan_steps[name]} steps'] = time_scan(
            step, params, random_batches(scan_steps[name], args.batch), scan_repeats[name])
        label = f'(d) {name}, vmap {args.trials} trials, scan of {vmap_scan_steps[name]}, per trial-step'
        results[label] = time_scan(step, trial_params, random_batches(vmap_scan_steps[name], args.batch),
                                   scan_repeats[name], args.trials) / args.trials
        print(f'  measured {name}', flush=True)

    baseline = results['(a/b) nn.Conv, Python loop of jitted steps']
    flops_per_step = simple_cnn_training_flops_per_example() * args.batch
    print(f'2048^3 matmul: {peak / 1e9:.0f} GFLOP/s; SimpleCNN training '
          f'{simple_cnn_training_flops_per_example() / 1e6:.1f} MFLOP/example')
    print(f'{"configuration":62s} {"ms/step":>8s} {"vs (b)":>7s} {"share of matmul":>16s}')
    for label, seconds in sorted(results.items(), key=lambda item: item[0][:3]):
        print(f'{label:62s} {1e3 * seconds:8.2f} {baseline / seconds:6.2f}x '
              f'{flops_per_step / seconds / peak:15.1%}')
    print('"vs (b)" = speed relative to nn.Conv in a Python loop (higher is faster); '
          '(d) rows are ms per trial-step (scan step time / trials).')


if __name__ == '__main__':
    main()
