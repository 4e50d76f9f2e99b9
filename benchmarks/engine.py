"""Throughput of the vectorized trial engine, as ratios against baselines measured in the same run.

1. engine (N trials vmapped in one lax.scan chunk) vs the same N trials run one after another
   with the single-trial chunk, for N in {1, 8, 64} and batch sizes {8, 64, 512};
2. engine vs a naive JAX baseline: flax nn.Conv + nn.max_pool, vmap over trials, one jitted step
   per Python iteration;
3. achieved model FLOP/s (Simple-CNN training ~22.5 MFLOP per example) as a share of a jitted
   2048^3 float32 matmul;
4. (--real_cell) one real Fashion-MNIST cell, 'first' vs 'all' mode: wall time, trial-steps, and
   the minimum steps-to-result of each;
5. (--bytes, alone) memory traffic per example-step: XLA's cost analysis ('bytes accessed') of
   the compiled vmapped float32 chunk, N = 8, for Simple-CNN and ResNet-8 at batch 8 / 64 / 512,
   beside the vmapped flax nn.Conv Simple-CNN step. XLA counts a loop body ONCE however many
   steps the scan runs (checked: a 1-, 2- and 10-step chunk report the same bytes and FLOPs), so
   the figure is bytes / (N x batch), not / (N x batch x steps). XLA charges a fusion that reaches
   a slice of its operand through a bitcast with the whole operand; hlo_traffic.py also gives the
   figure with those charged what they move, and the chunk's heaviest instructions;
6. (--checks, alone) one whole-validation check (6,000 synthetic examples) of N trials by the study's
   evaluate program (trials in turn on a CPU) with the evaluation chunk engine.eval_chunk_size picks
   on this backend, convolving by XLA's own convolution (the default) against im2col at that chunk
   and at 12 examples per trial (the CPU's checks before), for Simple-CNN at N = 1 / 4 / 16 and
   ResNet-8 at N = 2.

    python benchmarks/engine.py [--real_cell] [--quick] [--bytes] [--checks]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dps_jax import engine, models, network, optim, search, trial  # noqa: E402
import common  # noqa: E402
import hlo_traffic  # noqa: E402
from common import seconds  # noqa: E402
from models import (FlaxConvSimpleCNN, make_train_step as make_sgd_step, matmul_flops_per_second,  # noqa: E402
                    simple_cnn_training_flops_per_example)

EXAMPLES = 4096  # synthetic resident training split for the throughput parts


def synthetic_split(num_examples=EXAMPLES):
    return common.synthetic_split(num_examples)


def make_trials(model, optimizer, num_trials, images, labels):
    """N Simple-CNN trials, random masks at sparsity 0.9."""
    return common.make_trials(model, optimizer, num_trials, images, labels, sparsity=0.9)


def steps_for(num_trials, batch_size, quick):
    """Enough steps for ~1 s of work at ~100 GFLOP/s, at least 2."""
    work = 1.0e11 / (simple_cnn_training_flops_per_example() * num_trials * batch_size)
    return int(max(2, min(50, round(work * (0.3 if quick else 1.0)))))


def engine_vs_sequential(quick):
    model = models.SimpleCNN()
    apply_fn = lambda params, images: model.apply({'params': params}, images)
    optimizer = optim.make_optimizer('sgd')
    train_step = trial.make_train_step(apply_fn, optimizer)
    images, labels = synthetic_split()
    rows = []
    for batch_size in (8, 64, 512):
        for num_trials in (1, 8, 64):
            steps = steps_for(num_trials, batch_size, quick)
            trials = make_trials(model, optimizer, num_trials, images, labels)
            programs = engine.cell_programs(train_step, trial.make_val_error_count(apply_fn), batch_size, steps, False)
            order = trial.init_data_order(0, EXAMPLES)
            # Each run from a fresh copy: the chunk donates its states on accelerators.
            vectorized = num_trials * steps / common.chunk_rate(programs, trials, steps, images, labels)
            single_chunk = jax.jit(trial.make_train_chunk(train_step, batch_size, steps))
            # The sequential baseline runs min(N, 8) trials one after another and scales to N:
            # every trial is the same work, so the sum is N times one trial's time.
            measured = min(num_trials, 8)
            singles = [jax.tree.map(lambda leaf: leaf[i], trials) for i in range(measured)]  # sliced untimed
            one_by_one = lambda: [single_chunk(single, order, images, labels) for single in singles]
            sequential = seconds(one_by_one) * num_trials / measured
            rows.append((num_trials, batch_size, steps, num_trials * steps / vectorized,
                         num_trials * steps / sequential))
            print(f'  N={num_trials:>3d} batch={batch_size:>4d} steps={steps:>3d}: engine '
                  f'{rows[-1][3]:8.1f} trial-steps/s, sequential {rows[-1][4]:8.1f}, '
                  f'ratio {rows[-1][3] / rows[-1][4]:.2f}x', flush=True)
    return rows


def engine_vs_naive(num_trials, batch_size, steps):
    """The naive baseline: nn.Conv model, vmap over trials, one jitted step per Python iteration."""
    images, labels = synthetic_split()
    keys = jax.random.split(jax.random.PRNGKey(0), num_trials)
    naive_model = FlaxConvSimpleCNN()
    params = jax.jit(jax.vmap(lambda key: naive_model.init(key, jnp.zeros((1, 28, 28, 1)))['params']))(keys)
    naive_step = jax.jit(jax.vmap(make_sgd_step(naive_model), in_axes=(0, None)))
    order = trial.init_data_order(0, EXAMPLES)

    def naive():
        state, current = params, order
        for step in range(steps):
            current, indices = trial.next_batch_indices(current, batch_size)
            state, _ = naive_step(state, (images[indices], labels[indices]))
        return state

    model = models.SimpleCNN()
    apply_fn = lambda p, x: model.apply({'params': p}, x)
    optimizer = optim.make_optimizer('sgd')
    trials = make_trials(model, optimizer, num_trials, images, labels)
    programs = engine.cell_programs(trial.make_train_step(apply_fn, optimizer), trial.make_val_error_count(apply_fn),
                                    batch_size, steps, False)
    vectorized = num_trials * steps / common.chunk_rate(programs, trials, steps, images, labels)
    naive_seconds = seconds(naive, repeats=1)
    return num_trials * steps / vectorized, num_trials * steps / naive_seconds


def real_cell(args):
    from dps_jax import data
    dataset = data.load('fashion_mnist')
    model = models.SimpleCNN()
    apply_fn = lambda p, x: model.apply({'params': p}, x)
    optimizer = optim.make_optimizer('sgd')
    train_images, train_labels = jnp.asarray(dataset.train.images), jnp.asarray(dataset.train.labels)
    val_images, val_labels = jnp.asarray(dataset.val.images), jnp.asarray(dataset.val.labels)
    rates = search.search_points(['learning_rate'], args.trials)['learning_rate']
    init_trial = trial.make_init_trial(model, optimizer, (28, 28, 1), pruning='snip', sparsity=0.9)
    started = time.perf_counter()
    trials = engine.init_trials(init_trial, np.arange(args.trials), {'learning_rate': rates},
                                train_images[:args.snip_examples], train_labels[:args.snip_examples])
    jax.block_until_ready(trials)
    print(f'  SNIP of {args.trials} trials on {args.snip_examples} examples: {time.perf_counter() - started:.1f} s')
    results = {}
    for until in ('first', 'all'):
        results[until] = engine.run_cell(
            trials, train_step=trial.make_train_step(apply_fn, optimizer),
            val_error=trial.make_val_error_count(apply_fn, max(50, 8192 // args.trials)),
            train_images=train_images, train_labels=train_labels, val_images=val_images, val_labels=val_labels,
            batch_size=64, goal_error=0.15, max_steps=args.budget, check_every=100, until=until,
            log=lambda line: print(line, flush=True), log_every_seconds=60)
        result = results[until]
        print(f'  until={until!r}: min steps-to-result {result.min_steps_to_result} (trial {result.best_trial}), '
              f'{result.trial_steps_computed:,d} trial-steps computed, wall {result.wall_seconds:.1f} s', flush=True)
    first, everything = results['first'], results['all']
    print(f'  first vs all: wall {everything.wall_seconds / first.wall_seconds:.1f}x less, trial-steps '
          f'{everything.trial_steps_computed / first.trial_steps_computed:.1f}x fewer, minima '
          f'{"agree" if first.min_steps_to_result == everything.min_steps_to_result else "DISAGREE"}')
    reached = everything.steps_to_result[everything.steps_to_result >= 0]
    print(f'  all mode: {len(reached)} of {args.trials} trials reached, {int((everything.status == engine.DIVERGED).sum())} '
          f'diverged; compaction computed {everything.trial_steps_computed:,d} trial-steps for '
          f'{everything.trial_steps_needed:,d} needed')


def chunk_cost(model_name: str, batch_size: int, num_trials: int = 8, steps: int = 10):
    """(hlo_traffic.Traffic, FLOPs) of the engine's compiled vmapped float32 chunk, the batch in one
    pass; the scan body is counted once (see the module docstring), so dividing by N x batch gives
    per example-step."""
    compiled = common.compiled_chunk(*common.engine_chunk(model_name, num_trials, batch_size, steps, in_turn=False,
                                                          per_pass=batch_size))
    return hlo_traffic.traffic(compiled), hlo_traffic.cost_analysis(compiled)['flops']


def flax_conv_cost(batch_size: int, num_trials: int = 8) -> tuple[float, float]:
    """(bytes accessed, FLOPs) per example-step of a vmapped flax nn.Conv Simple-CNN SGD step."""
    model = FlaxConvSimpleCNN()
    keys = jax.random.split(jax.random.PRNGKey(0), num_trials)
    params = jax.vmap(lambda key: model.init(key, jnp.zeros((1, 28, 28, 1)))['params'])(keys)
    batch = (jnp.zeros((batch_size, 28, 28, 1)), jnp.zeros(batch_size, jnp.int32))
    step = jax.jit(jax.vmap(make_sgd_step(model), in_axes=(0, None)))
    cost = hlo_traffic.cost_analysis(step.lower(params, batch).compile())
    return cost['bytes accessed'] / (num_trials * batch_size), cost['flops'] / (num_trials * batch_size)


def memory_traffic(num_trials: int = 8):
    for model_name in ('simple_cnn', 'resnet8'):
        for batch_size in (8, 64, 512):
            traffic, flops = chunk_cost(model_name, batch_size, num_trials)
            parts, mb = traffic.parts, 1e6 * num_trials * batch_size  # MB per example-step
            print(f'  {model_name:10s} batch {batch_size:>3d}: {traffic.counted / mb:6.2f} MB and '
                  f'{flops / mb:5.1f} MFLOP per example-step ({flops / traffic.counted:.1f} FLOP per byte); '
                  f'{parts["slicing_count"]} fusions charged a whole operand they only slice: '
                  f'{parts["slicing_charged"] / mb:.2f} MB charged, {parts["slicing_read"] / mb:.2f} MB moved; '
                  f'{traffic.moved / mb:.2f} MB as moved (the HLO parse adds up to '
                  f'{traffic.parsed / traffic.counted:.1%} of XLA\'s count)', flush=True)
            if (model_name, batch_size) == ('simple_cnn', 64):
                print('    its five heaviest instructions, MB per example-step as charged:', flush=True)
                for item in parts['heaviest']:
                    print(f'      {item.charged / mb:5.2f}  {item.text}', flush=True)
    traffic, flops = flax_conv_cost(64, num_trials)
    print(f'  flax nn.Conv simple_cnn batch  64: {traffic / 1e6:6.2f} MB and {flops / 1e6:5.1f} MFLOP per example-step '
          f'(its convolutions count only their operands and results)', flush=True)


def check_chunks(num_examples: int = 6000):
    """Seconds of one whole-validation check of N trials, best of 2, by the study's evaluate program
    (engine.evaluated_trials: in turn on a CPU) at this backend's chunk: convolving by XLA's own
    convolution (config.eval_convolution 'auto', the default for the built-in models) and by im2col,
    and by im2col at 12 examples per trial (the CPU's checks before 2026-11-27's 'auto')."""
    backend = jax.default_backend()
    in_turn = engine.trials_stepped_in_turn()
    for model_name, num_trials in (('simple_cnn', 1), ('simple_cnn', 4), ('simple_cnn', 16), ('resnet8', 2)):
        chunk = engine.eval_chunk_size(num_trials, num_examples, backend)  # without a memory estimate off a CPU
        example_shape = (28, 28, 1) if model_name == 'simple_cnn' else (32, 32, 3)
        images, labels = common.synthetic_split(num_examples, example_shape=example_shape)
        model = models.get_model(model_name)
        trials = common.make_trials(model, optim.make_optimizer('sgd'), num_trials, images, labels)
        timed, counts = {}, {}
        for convolution, examples in (('xla', chunk), ('im2col', chunk), ('im2col', 12)):
            net = network.from_module(models.get_model(model_name, convolution=convolution), example_shape)
            evaluate = jax.jit(engine.evaluated_trials(trial.make_val_error_count(net, examples), in_turn))
            run = lambda: evaluate(trials, jnp.ones(num_trials, bool), images, labels)
            counts[convolution, examples] = np.asarray(run()).tolist()
            timed[convolution, examples] = seconds(run)
        same = 'the same' if len({tuple(count) for count in counts.values()}) == 1 else f'DIFFERENT {counts}'
        print(f'  {model_name:10s} N={num_trials:>2d}: by xla at {chunk} per trial {timed["xla", chunk]:.2f} s, '
              f'by im2col {timed["im2col", chunk]:.2f} s, by im2col at 12 {timed["im2col", 12]:.2f} s: xla '
              f'{timed["im2col", chunk] / timed["xla", chunk]:.2f}x / {timed["im2col", 12] / timed["xla", chunk]:.2f}x '
              f'faster; {same} errors', flush=True)


def memory_check(num_trials=64, batch_size=4096):
    """One step of 64 Simple-CNN trials at batch 4096, grouped from the memory estimate."""
    import resource
    model = models.SimpleCNN()
    apply_fn = lambda p, x: model.apply({'params': p}, x)
    optimizer = optim.make_optimizer('sgd')
    images, labels = synthetic_split(8192)
    train_step = trial.make_train_step(apply_fn, optimizer)
    trials = make_trials(model, optimizer, num_trials, images, labels)
    memory = engine.default_memory_bytes(0.5)
    group_size = engine.estimate_group_size(train_step, jax.tree.map(lambda leaf: leaf[0], trials), (28, 28, 1),
                                            batch_size, memory, num_trials)
    result = engine.run_cell(trials, train_step=train_step, val_error=trial.make_val_error_count(apply_fn, 25),
                             train_images=images, train_labels=labels, val_images=images[:6000],
                             val_labels=labels[:6000], batch_size=batch_size, goal_error=1e-9, max_steps=1,
                             check_every=1, until='all', group_size=group_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f'  N={num_trials} batch={batch_size}: groups of {group_size} trials (budget {memory / 2 ** 30:.1f} GiB), '
          f'one step + one validation of all trials in {result.wall_seconds:.0f} s, peak RSS {peak:.1f} GiB, '
          f'statuses {sorted(set(result.status_names()))}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='fewer steps per measurement')
    parser.add_argument('--real_cell', action='store_true', help='also run the real Fashion-MNIST cell')
    parser.add_argument('--trials', type=int, default=32, help='trials of the real cell')
    parser.add_argument('--budget', type=int, default=3000, help='max steps of the real cell')
    parser.add_argument('--snip_examples', type=int, default=54000, help='SNIP examples of the real cell')
    parser.add_argument('--memory_check', action='store_true', help='only: 64 trials at batch 4096, one step')
    parser.add_argument('--skip_throughput', action='store_true', help='skip parts 1-3 (with --real_cell)')
    parser.add_argument('--bytes', action='store_true', help='only: memory traffic per example-step (part 5)')
    parser.add_argument('--checks', action='store_true', help='only: the evaluation chunk of a check (part 6)')
    args = parser.parse_args()
    print(f'jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs')
    if args.bytes:
        print('5. memory traffic of the compiled vmapped float32 chunk (N = 8), XLA cost analysis:')
        memory_traffic()
        return
    if args.checks:
        print('6. one whole-validation check (6,000 examples) at the evaluation chunk chosen here, '
              'by XLA\'s convolution (the default) and by im2col:')
        check_chunks()
        return
    if args.memory_check:
        print('memory: a cell of 64 Simple-CNN trials at batch 4096 on this machine:')
        memory_check()
        return
    peak = matmul_flops_per_second()
    print(f'2048^3 float32 matmul: {peak / 1e9:.0f} GFLOP/s')

    if args.skip_throughput:
        if args.real_cell:
            print('4. real Fashion-MNIST cell: Simple-CNN, SNIP 0.9, SGD lr search, batch 64, goal 0.15:')
            real_cell(args)
        return
    print('1. engine vs the same trials one after another (single-trial scan chunk):')
    rows = engine_vs_sequential(args.quick)
    print('2. engine vs naive JAX (nn.Conv + nn.max_pool, vmap, one jitted step per Python iteration):')
    fast, naive = engine_vs_naive(8, 64, 10 if args.quick else 20)
    print(f'  N=8 batch=64: engine {fast:.1f} trial-steps/s, naive {naive:.1f}, ratio {fast / naive:.1f}x')
    print('3. achieved model FLOP/s (22.5 MFLOP per example) as a share of the matmul:')
    flops = simple_cnn_training_flops_per_example()
    for num_trials, batch_size, _, engine_rate, _ in rows:
        if batch_size == 64:
            share = engine_rate * batch_size * flops / peak
            print(f'  N={num_trials:>3d} batch=64: {engine_rate * batch_size * flops / 1e9:.0f} GFLOP/s = {share:.0%}')
    if args.real_cell:
        print('4. real Fashion-MNIST cell: Simple-CNN, SNIP 0.9, SGD lr search, batch 64, goal 0.15:')
        real_cell(args)


if __name__ == '__main__':
    main()
