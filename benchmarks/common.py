"""What the benchmarks share: a best-of timer and a cell of Simple-CNN trials on synthetic data."""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from dps_jax import engine, models, network, optim, search, trial  # noqa: E402


def seconds(run, repeats=2):
    """Best of `repeats` timed runs after one warm-up (compile) run."""
    jax.block_until_ready(run())
    best = float('inf')
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(run())
        best = min(best, time.perf_counter() - started)
    return best


def synthetic_split(num_examples, seed=0, example_shape=(28, 28, 1)):
    """(images (n, *example_shape), labels (n,)) of random values: the timings do not depend on pixels."""
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(num_examples,) + tuple(example_shape)), jnp.float32),
            jnp.asarray(rng.integers(0, 10, size=num_examples), jnp.int32))


def make_trials(model, optimizer, num_trials, images, labels, sparsity=0.5):
    """N trials of `model` with random masks (the compute is dense either way) and Sobol learning rates."""
    init_trial = trial.make_init_trial(model, optimizer, tuple(images.shape[1:]), pruning='random',
                                       sparsity=sparsity)
    rates = search.search_points(['learning_rate'], num_trials)['learning_rate']
    return engine.init_trials(init_trial, np.arange(num_trials), {'learning_rate': rates}, images, labels)


def engine_chunk(model_name, num_trials, batch_size, steps, split=None, compute_dtype='float32',
                 convolution='im2col', in_turn=None, per_pass=None):
    """(programs, trials, images, labels): the engine's SGD chunk of N trials of a built-in model
    (engine.cell_programs: the trials vmapped, or stepped in turn where in_turn says so; None: as
    the engine runs them on this backend) through the study's network at `compute_dtype` and
    `convolution` (models.CONVOLUTIONS), on `split` (images, labels), by default a synthetic split
    of 4096 examples of the model's input shape. per_pass: examples per pass of the step
    (trial.make_train_step; None: as this backend takes them). XLA's cost analysis counts a scan's
    body once, so byte counts take the whole batch in one pass (per_pass=batch_size)."""
    model, optimizer = models.get_model(model_name, convolution=convolution), optim.make_optimizer('sgd')
    images, labels = split or synthetic_split(4096, example_shape=(28, 28, 1) if model_name == 'simple_cnn'
                                              else (32, 32, 3))
    net = network.from_module(model, tuple(images.shape[1:]), compute_dtype=compute_dtype)
    trials = make_trials(model, optimizer, num_trials, images, labels)
    programs = engine.cell_programs(trial.make_train_step(net, optimizer, per_pass), trial.make_val_error_count(net),
                                    batch_size, steps, False, in_turn=in_turn)
    return programs, trials, images, labels


def compiled_chunk(programs, trials, images, labels):
    """The compiled train_chunk program of `engine_chunk`'s outputs (for XLA's cost analysis)."""
    num_trials = int(jax.tree.leaves(trials)[0].shape[0])
    return programs.train_chunk.lower(trials, jnp.ones(num_trials, bool), trial.init_data_order(0, int(images.shape[0])),
                                      images, labels).compile()


def chunk_rate(programs, trials, steps, images, labels) -> float:
    """Trial-steps/s of `programs.train_chunk` (engine.cell_programs) over all stacked `trials`, one
    shared data order. The chunk donates its states on accelerators, so each run starts from a
    fresh copy, whose time is subtracted."""
    num_trials = int(jax.tree.leaves(trials)[0].shape[0])
    order, active = trial.init_data_order(0, int(images.shape[0])), jnp.ones(num_trials, bool)
    run = lambda: programs.train_chunk(jax.tree.map(jnp.copy, trials), active, order, images, labels)
    copy_only = seconds(lambda: jax.tree.map(jnp.copy, trials))
    return num_trials * steps / max(seconds(run) - copy_only, 1e-9)


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
