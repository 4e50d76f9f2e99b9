"""One trial from a config: load data, build and prune the network, train to the goal error."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import ml_collections

from dps_jax import config as config_lib
from dps_jax import compilation_cache, engine, masks, optim, provenance, store, trial, workload


def trial_hyperparameters(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The optimizer hyperparameters named in the config."""
    return {name: config[name] for name in optim.HYPERPARAMETERS}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       log: Callable[[str], None] = print) -> trial.TrialResult:
    """Runs the config's single trial, prints progress per check and writes workdir/trial.json."""
    config_lib.require_folder(workdir, '--workdir')  # before the work that trial.json would record
    cache = compilation_cache.use_compilation_cache(config.compilation_cache_dir)
    work = workload.load_workload(config)
    config = workload.with_resolved_checks(config, work)  # trial.json records what the checks ran
    config_lib.validate_trial_config(config, work.num_train_examples)
    log(compilation_cache.describe(cache))
    log(workload.describe(config, work))
    network, optimizer = work.network, work.optimizer
    train_images, train_labels = work.train_images, work.train_labels

    started = time.perf_counter()
    init_trial = trial.make_init_trial(  # its pruning scores in float32, whatever config.compute_dtype
        work.network_at(config.matmul_precision), optimizer, work.example_shape, pruning=config.pruning,
        sparsity=config.sparsity, kernels_only=config.prune_kernels_only,
        snip_batch_size=config.snip_batch_size)
    snip_images, snip_labels = work.snip_split(config.get('snip_examples', 0))  # absent from older configs
    state = jax.jit(init_trial)(config.seed, trial_hyperparameters(config), snip_images, snip_labels)
    jax.block_until_ready(state)
    log(f'{config.pruning} mask at sparsity {config.sparsity:g} ({len(snip_images)} examples) in '
        f'{time.perf_counter() - started:.1f} s:')
    log(masks.format_density_report(state.mask))

    memory = workload.memory_estimate(config, work, groups=False)
    in_pass = workload.examples_per_pass(config, work, config.batch_size, memory)
    line = workload.describe_passes(memory, config.batch_size, in_pass, network.has_state,
                                    budget='half of the device memory')
    if line:
        log(line)
    stop_above = trial.configured_stop_above(config, int(work.val_images.shape[0]))
    result = trial.run_trial(
        state=state, train_step=workload.make_train_step(config, work, memory),
        val_error=trial.make_val_error_count(
            work.eval_network,
            config.eval_chunk_size or engine.eval_chunk_size(1, int(work.val_images.shape[0]), jax.default_backend()),
            stop_above),
        train_images=train_images, train_labels=train_labels, val_images=work.val_images,
        val_labels=work.val_labels, batch_size=config.batch_size, goal_error=config.goal_error,
        max_steps=config.max_steps, check_every=config.check_every, data_seed=config.data_seed,
        log=log)
    if result.status == 'reached':
        log(f'steps-to-result: {result.steps_to_result} (validation error <= {config.goal_error:g}) '
            f'in {result.wall_seconds:.1f} s')
    else:
        at_least = '>= ' if stop_above is not None else ''  # a lower bound (config.exact_val_errors)
        log(f'goal {config.goal_error:g} not reached: {result.status} after {result.steps} steps '
            f'(best validation error {at_least}{result.best_val_error:.4f})')
    store.atomic_write_json(os.path.join(workdir, 'trial.json'), {
        'config': config.to_dict(),
        'provenance': provenance.collect(config.matmul_precision, workload.compute_dtype(config),
                                         **workload.resolved_numerics(config, work, (config.batch_size,), memory)),
        'status': result.status,
        'steps_to_result': result.steps_to_result, 'steps': result.steps,
        'best_val_error': result.best_val_error, 'wall_seconds': result.wall_seconds,
        'history': [{'step': s, 'val_error': e, 'train_loss': l} for s, e, l in result.history]})
    return result
