"""What the benchmarks share: a best-of timer and a cell of Simple-CNN trials on synthetic data."""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from dps_jax import engine, models, optim, search, trial  # noqa: E402


def seconds(run, repeats=2):
    """Best of `repeats` timed runs after one warm-up (compile) run."""
    jax.block_until_ready(run())
    best = float('inf')
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run())
        best = min(best, time.perf_counter() - started)
    return best


def synthetic_split(num_examples, seed=0):
    """(images (n, 28, 28, 1), labels (n,)) of random values: the timings do not depend on pixels."""
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(num_examples, 28, 28, 1)), jnp.float32),
            jnp.asarray(rng.integers(0, 10, size=num_examples), jnp.int32))


def make_trials(model, optimizer, num_trials, images, labels, sparsity=0.5):
    """N trials of `model` with random masks (the compute is dense either way) and Sobol learning rates."""
    init_trial = trial.make_init_trial(model, optimizer, (28, 28, 1), pruning='random', sparsity=sparsity)
    rates = search.search_points(['learning_rate'], num_trials)['learning_rate']
    return engine.init_trials(init_trial, np.arange(num_trials), {'learning_rate': rates}, images, labels)


def one_trial_rate(batch_size, steps, images, labels):
    """Steps/s of ONE Simple-CNN SGD trial run alone with the single-trial scan chunk (what
    trial.run_trial runs), best of 2 after a warm-up."""
    model, optimizer = models.SimpleCNN(), optim.make_optimizer('sgd')
    apply_fn = lambda params, x: model.apply({'params': params}, x)
    single = jax.tree.map(lambda leaf: leaf[0], make_trials(model, optimizer, 1, images, labels))
    chunk = jax.jit(trial.make_train_chunk(trial.make_train_step(apply_fn, optimizer), batch_size, steps))
    order = trial.init_data_order(0, int(images.shape[0]))
    return steps / seconds(lambda: chunk(single, order, images, labels))


def simple_cnn_trials(num_trials, num_examples, sparsity=0.5):
    """(images, labels, apply_fn, optimizer, trials): N SGD Simple-CNN trials on a synthetic split."""
    images, labels = synthetic_split(num_examples)
    model = models.SimpleCNN()
    apply_fn = lambda params, batch: model.apply({'params': params}, batch)
    optimizer = optim.make_optimizer('sgd')
    return images, labels, apply_fn, optimizer, make_trials(model, optimizer, num_trials, images, labels, sparsity)
