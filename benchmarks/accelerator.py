"""The engine on an accelerator, every figure a ratio against a baseline measured in the same run.

1. a float32 matmul (8192^3 at the default precision): the chip's practical peak in this run;
2. the engine's vmapped training chunk (Simple-CNN, SGD, synthetic data, 50-step chunks, best of
   2 after a warm-up) for batch 8 / 64 / 512 / 4096 and several trial counts N, in trial-steps/s
   and model TFLOP/s (22.5 MFLOP per example), against ONE trial run alone with the single-trial
   scan chunk at the same batch;
3. the same chunk with config.compute_dtype='bfloat16' (bfloat16 compute, float32 master weights)
   against float32 at batch 64, N = 100 and batch 4096, N = 8;
4. a vmapped flax nn.Conv model in lax.scan (what a user would write), batch 64;
5. a real cell (Fashion-MNIST, 100 SGD trials, SNIP 0.9 from 5,400 images, batch 64, goal 0.15,
   a whole-validation check every 100 steps) with until='first' and 'all': wall time,
   trial-steps/s, and the share of the wall time that is not bare training chunks (checks, host
   reads, compaction).

    python benchmarks/accelerator.py [--quick] [--skip_real_cell] [--batch_sizes 64 ...] [--cases 64x100 ...]
        [--convolutions im2col pallas] [--eval_convolutions pallas xla] [--skip_dtype] [--real_cell_modes first all ...]
        [--stopping_checks]

--convolutions times parts 2 and 5 once per config.convolution value (part 2's rows with their
ratio to the first; part 3 runs at the first only); --eval_convolutions adds, for each, a real cell that
trains by the first and checks by that one (config.eval_convolution); --stopping_checks runs each of
those cells' modes a second time with checks that stop counting a trial above the goal
(config.exact_val_errors = False: the same steps-to-result, fewer forward passes).

Sized to finish in about 6 minutes on an H100; --quick shrinks every part (a smoke test on a CPU).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dps_jax import engine, models, optim, search, trial  # noqa: E402
import common  # noqa: E402
from models import (FlaxConvSimpleCNN, make_scan, make_train_step as make_sgd_step,  # noqa: E402
                    simple_cnn_training_flops_per_example)

# (batch size, trial counts) of part 2, as in the table.
CHUNK_CASES = ((8, (100, 1000)), (64, (8, 32, 100, 1000)), (512, (16, 100)), (4096, (1, 8)))
QUICK_CASES = ((8, (4,)), (64, (2, 8)), (512, (2,)))  # --quick: includes N = 2 and 8 at batch 64
# (batch size, trials N) of part 3, bfloat16 against float32.
DTYPE_CASES, QUICK_DTYPE_CASES = ((64, 100), (4096, 8)), ((64, 8),)
FLOPS_PER_EXAMPLE = simple_cnn_training_flops_per_example()


def matmul_tflops(size: int) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    matmul = jax.jit(jnp.dot)
    return 2 * size ** 3 / common.seconds(lambda: matmul(a, a), repeats=3) / 1e12


REAL_CELL_GOAL = 0.15  # part 5's goal validation error
# Part 5's runs: (until, dispatch_ahead); None is the engine's default (on for accelerators).
REAL_CELL_MODES = {'first': ('first', None), 'all': ('all', None), 'all_serial': ('all', False)}


def chunk_rate(num_trials: int, batch_size: int, steps: int, images, labels, compute_dtype: str = 'float32',
               convolution: str = 'im2col') -> float:
    """Trial-steps/s of the engine's Simple-CNN chunk (all trials active, one shared data order)."""
    programs, trials, _, _ = common.engine_chunk('simple_cnn', num_trials, batch_size, steps, (images, labels),
                                                 compute_dtype, convolution)
    return common.chunk_rate(programs, trials, steps, images, labels)


def flax_conv_rate(num_trials: int, batch_size: int, steps: int) -> float:
    """Trial-steps/s of flax nn.Conv + nn.max_pool trials, vmapped, in lax.scan over pre-drawn batches."""
    model = FlaxConvSimpleCNN()
    keys = jax.random.split(jax.random.PRNGKey(0), num_trials)
    params = jax.jit(jax.vmap(lambda key: model.init(key, jnp.zeros((1, 28, 28, 1)))['params']))(keys)
    batches = (jax.random.normal(jax.random.PRNGKey(1), (steps, batch_size, 28, 28, 1)),
               jax.random.randint(jax.random.PRNGKey(2), (steps, batch_size), 0, 10))
    scan = make_scan(make_sgd_step(model), num_trials)
    return num_trials * steps / common.seconds(lambda: scan(params, batches))


def real_cell(num_trials: int, max_steps: int, snip_examples: int, bare_rate: float, convolution: str = 'im2col',
              modes=tuple(REAL_CELL_MODES), eval_convolution: str | None = None,
              stopping_checks: bool = False) -> None:
    """Times the real cell, training by `convolution` and checking by `eval_convolution` (None: the
    same); `bare_rate` is the bare chunk's trial-steps/s at `convolution`. With `stopping_checks`,
    each mode runs a second time with checks that stop counting above the goal (exact_val_errors False)."""
    from dps_jax import data
    dataset = data.load('fashion_mnist')
    model, optimizer = models.SimpleCNN(convolution=convolution), optim.make_optimizer('sgd')
    apply_fn = lambda params, x: model.apply({'params': params}, x)
    eval_model = models.SimpleCNN(convolution=eval_convolution or convolution)
    eval_apply_fn = lambda params, x: eval_model.apply({'params': params}, x)
    label = convolution if eval_convolution in (None, convolution) else f'{convolution}, checks {eval_convolution}'
    train_images, train_labels = jnp.asarray(dataset.train.images), jnp.asarray(dataset.train.labels)
    val_images, val_labels = jnp.asarray(dataset.val.images), jnp.asarray(dataset.val.labels)
    rates = search.search_points(['learning_rate'], num_trials)['learning_rate']
    init_trial = trial.make_init_trial(model, optimizer, (28, 28, 1), pruning='snip', sparsity=0.9)
    started = time.perf_counter()
    trials = engine.init_trials(init_trial, np.arange(num_trials), {'learning_rate': rates},
                                train_images[:snip_examples], train_labels[:snip_examples])
    jax.block_until_ready(trials)
    print(f'  convolution {label}: SNIP of {num_trials} trials on {snip_examples} examples: {time.perf_counter() - started:.1f} s',
          flush=True)
    # Built once: the engine caches its programs on these functions, so the warm-up run below
    # compiles what the timed run uses.
    train_step = trial.make_train_step(apply_fn, optimizer)
    # The study's rule for the evaluation chunk (study.cell_context): from the device's memory.
    one = jax.tree.map(lambda leaf: leaf[0], trials)
    eval_chunk = engine.eval_chunk_size(num_trials, int(val_images.shape[0]), jax.default_backend(),
                                        engine.train_bytes_per_example(train_step, one, (28, 28, 1)),
                                        engine.default_memory_bytes())
    print(f'  evaluation chunk: {eval_chunk} validation examples per trial', flush=True)
    checks = [('', trial.make_val_error_count(eval_apply_fn, eval_chunk))]
    if stopping_checks:
        checks.append((', checks stop above the goal', trial.make_val_error_count(
            eval_apply_fn, eval_chunk, trial.max_errors_at_goal(int(val_images.shape[0]), REAL_CELL_GOAL))))
    for (until, ahead), (counting, val_error) in itertools.product((REAL_CELL_MODES[mode] for mode in modes), checks):
        run = lambda: engine.run_cell(
            trials, train_step=train_step, val_error=val_error,
            train_images=train_images, train_labels=train_labels, val_images=val_images, val_labels=val_labels,
            batch_size=64, goal_error=REAL_CELL_GOAL, max_steps=max_steps, check_every=100, until=until,
            dispatch_ahead=ahead)
        run()  # compiles every bucket's programs
        result = run()
        rate = result.trial_steps_computed / result.wall_seconds
        bare = result.trial_steps_computed / bare_rate
        mode = 'default' if ahead is None else ('on' if ahead else 'off')
        print(f'| real cell, {label}{counting}, until={until!r}, dispatch ahead {mode} | {result.wall_seconds:.1f} s | '
              f'{rate:,.0f} trial-steps/s | steps-to-result {result.min_steps_to_result} | '
              f'{result.trial_steps_computed:,d} trial-steps | '
              f'not bare chunks: {max(0.0, 1 - bare / result.wall_seconds):.0%} of the wall time |', flush=True)


def chunk_case(text: str) -> tuple[int, int]:
    """'64x100' -> (64, 100), for argparse."""
    try:
        batch_size, num_trials = (int(part) for part in text.split('x'))
        return batch_size, num_trials
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: expected BATCHxTRIALS, e.g. 64x100') from None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small sizes: a smoke test, not a measurement')
    parser.add_argument('--skip_real_cell', action='store_true')
    parser.add_argument('--batch_sizes', type=int, nargs='*', help='only these batch sizes of part 2 (and part 3 '
                        'only with 64 among them)')
    parser.add_argument('--cases', type=chunk_case, nargs='*', help='instead of the issue table\'s chunks, these '
                        '(batch x N, e.g. 64x100 4096x8), in this order; part 3 keeps those of its cases among them')
    parser.add_argument('--convolutions', nargs='+', choices=models.CONVOLUTIONS, default=['im2col'],
                        help="config.convolution values to time in parts 2 and 5 ('pallas': GPU only)")
    parser.add_argument('--eval_convolutions', nargs='*', choices=models.CONVOLUTIONS, default=[],
                        help='part 5 also runs the cell training by the first --convolutions value and checking '
                        "by each of these (config.eval_convolution; 'pallas': GPU only)")
    parser.add_argument('--skip_dtype', action='store_true', help='skip part 3 (bfloat16 against float32)')
    parser.add_argument('--real_cell_modes', nargs='+', choices=tuple(REAL_CELL_MODES), default=list(REAL_CELL_MODES),
                        help="part 5's runs: until='first', until='all', until='all' without dispatch ahead")
    parser.add_argument('--stopping_checks', action='store_true',
                        help='part 5 also runs each mode of each --eval_convolutions cell with checks that stop '
                        'counting a trial above the goal (config.exact_val_errors=False)')
    args = parser.parse_args()
    cases = QUICK_CASES if args.quick else CHUNK_CASES
    if args.cases:
        cases = tuple((batch_size, tuple(n for b, n in args.cases if b == batch_size))
                      for batch_size in dict.fromkeys(b for b, _ in args.cases))
    wanted = lambda batch_size, num_trials: ((not args.batch_sizes or batch_size in args.batch_sizes)
                                             and num_trials in dict(cases).get(batch_size, ()))
    device = jax.devices()[0]
    print(f'jax {jax.__version__}, {device.platform} {device.device_kind} x {jax.device_count()}')
    steps = 2 if args.quick else 50
    peak = matmul_tflops(512 if args.quick else 8192)
    print(f'float32 matmul at the default precision: {peak:.1f} TFLOP/s', flush=True)
    images, labels = common.synthetic_split(512 if args.quick else 8192)
    first = args.convolutions[0]
    print('| batch | trials N | convolution | engine trial-steps/s | vs one trial alone | model TFLOP/s | '
          f'share of the matmul | vs {first} |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- |')
    rates = {}
    for batch_size, trial_counts in cases:
        trial_counts = [num_trials for num_trials in trial_counts if wanted(batch_size, num_trials)]
        if not trial_counts:
            continue
        alone = common.one_trial_rate(batch_size, steps, images, labels)
        for num_trials in trial_counts:
            for convolution in args.convolutions:
                row = f'| {batch_size} | {num_trials} | {convolution} |'
                try:
                    rate = chunk_rate(num_trials, batch_size, steps, images, labels, convolution=convolution)
                except Exception as error:  # noqa: BLE001 (memory: batch 64, N = 1000 fits an H200, not an
                    # H100; or a compiler refusal of one convolution): the other rows go on
                    print(f'{row} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]} | | | | |',
                          flush=True)
                    continue
                rates[batch_size, num_trials, convolution] = rate
                model_tflops = rate * batch_size * FLOPS_PER_EXAMPLE / 1e12
                baseline = rates.get((batch_size, num_trials, first))
                print(f'{row} {rate:,.0f} | {rate / alone:.1f}x | {model_tflops:.3g} | {model_tflops / peak:.0%} | '
                      f'{f"{rate / baseline:.2f}x" if baseline else ""} |', flush=True)
        print(f'| {batch_size} | one trial alone | im2col | {alone:,.0f} | 1.0x | '
              f'{alone * batch_size * FLOPS_PER_EXAMPLE / 1e12:.3g} | | |', flush=True)
    dtype_cases = [case for case in (QUICK_DTYPE_CASES if args.quick else DTYPE_CASES) if wanted(*case)]
    if dtype_cases and not args.skip_dtype:
        print(f'| batch | trials N | float32 trial-steps/s | bfloat16 trial-steps/s | bfloat16 / float32 | '
              f'({first}) |')
        print('| --- | --- | --- | --- | --- | --- |')
        for batch_size, num_trials in dtype_cases:
            try:
                float32 = (rates.get((batch_size, num_trials, first))
                           or chunk_rate(num_trials, batch_size, steps, images, labels, convolution=first))
                bfloat16 = chunk_rate(num_trials, batch_size, steps, images, labels, compute_dtype='bfloat16',
                                      convolution=first)
            except Exception as error:  # noqa: BLE001 (as above)
                print(f'| {batch_size} | {num_trials} | failed: {type(error).__name__}: '
                      f'{str(error).splitlines()[0][:200]} | | | |', flush=True)
                continue
            print(f'| {batch_size} | {num_trials} | {float32:,.0f} | {bfloat16:,.0f} | {bfloat16 / float32:.2f}x | |',
                  flush=True)
    flax_trials = 2 if args.quick else 100
    measured = [convolution for convolution in args.convolutions if (64, flax_trials, convolution) in rates]
    if measured:
        flax_rate = flax_conv_rate(flax_trials, 64, steps)
        print(f'vmapped flax nn.Conv in lax.scan, batch 64, N = {flax_trials}: {flax_rate:,.0f} trial-steps/s; '
              + '; '.join(f'the engine ({convolution}) at the same N: '
                          f'{rates[64, flax_trials, convolution] / flax_rate:.2f}x' for convolution in measured),
              flush=True)
    if not args.skip_real_cell:
        cell_trials = 8 if args.quick else 100
        sizes = (cell_trials, 300 if args.quick else 3000, 540 if args.quick else 5400)  # trials, max steps, SNIP
        runs = [(name, None) for name in args.convolutions] + [(first, name) for name in args.eval_convolutions
                                                               if name != first]
        for convolution, eval_convolution in runs:
            if (64, cell_trials, convolution) in rates:
                real_cell(*sizes, rates[64, cell_trials, convolution], convolution, args.real_cell_modes,
                          eval_convolution, args.stopping_checks and eval_convolution is not None)

if __name__ == '__main__':
    main()
