"""Where the device's time goes in the engine's vmapped Simple-CNN chunk and in one check, from a JAX
profiler trace: the heaviest device operations (XLA fusions, cuBLAS/cuDNN calls, Triton kernels) by
total time, and how much of the wall time the device was busy at all.

    python benchmarks/profile_chunk.py [--cases 64x100 8x1000 ...] [--steps 20] [--compute_dtype bfloat16] [--check]
        [--eval_convolutions im2col xla ...] [--top 20] [--keep_traces DIR]

Each case compiles and warms its chunk first, then traces one run of it (`--check`: also one
whole-validation check of the same trials on a synthetic split of 6,000 examples, as the real cell's
checks run). The trace is the profiler's own Chrome-trace export (`*.trace.json.gz`), read with the
standard library; device operations are the events of its '/device:' processes. On a CPU those are
absent, and the host's XLA events are listed instead (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dps_jax import engine, models, network, optim, trial  # noqa: E402
import common  # noqa: E402
from accelerator import chunk_case  # noqa: E402


def newest_trace(log_dir: str) -> pathlib.Path:
    """The newest Chrome-trace export (*.trace.json.gz) the profiler wrote under `log_dir`."""
    found = sorted(pathlib.Path(log_dir).glob('plugins/profile/*/*.trace.json.gz'), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f'no *.trace.json.gz under {log_dir}/plugins/profile')
    return found[-1]


def trace_events(log_dir: str) -> list[dict]:
    """The complete ('X') events of the newest trace the profiler exported under `log_dir`, each
    with its process's and thread's names added as 'process' and 'thread'."""
    with gzip.open(newest_trace(log_dir), 'rt') as file:
        events = json.load(file)['traceEvents']
    names = lambda kind: {key: event['args']['name'] for event in events
                          if event.get('ph') == 'M' and event.get('name') == kind
                          for key in [(event['pid'], event.get('tid')) if kind == 'thread_name' else event['pid']]}
    processes, threads = names('process_name'), names('thread_name')
    return [dict(event, process=processes.get(event.get('pid'), ''),
                 thread=threads.get((event.get('pid'), event.get('tid')), ''))
            for event in events if event.get('ph') == 'X' and 'dur' in event]


def busy_microseconds(events: list[dict]) -> float:
    """The length of the union of the events' [ts, ts + dur) intervals (microseconds)."""
    total, end = 0.0, float('-inf')
    for start, stop in sorted((event['ts'], event['ts'] + event['dur']) for event in events):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def device_operations(events: list[dict]) -> tuple[list[dict], bool]:
    """(the events of the device's kernels, True) from trace_events: those of its streams where the
    trace names streams, else every '/device:' event; (the host's events, False) where it has no
    device events (a CPU's trace)."""
    device = [event for event in events if '/device:' in event['process']]
    # Kernels run on the streams; the trace's other device lanes (XLA modules, ops) span them again.
    streams = [event for event in device if 'stream' in event['thread'].lower()]
    if streams or device:
        return streams or device, True
    return [event for event in events if event['process'].startswith('/host')], False


def operation_totals(events: list[dict]) -> list[tuple[str, int, float]]:
    """(name, count, total microseconds) of each operation (kernel) name, the longest total first."""
    totals = collections.defaultdict(lambda: [0, 0.0])
    for event in events:
        totals[event['name']][0] += 1
        totals[event['name']][1] += event['dur']
    return sorted(((name, count, micros) for name, (count, micros) in totals.items()), key=lambda row: -row[2])


def summarize(events: list[dict], wall_seconds: float, label: str, top: int) -> None:
    """Prints the device's lanes, its busy share of the wall time and its `top` operations by total time."""
    lanes = collections.defaultdict(list)
    for event in events:
        if '/device:' in event['process']:
            lanes[event['process'], event['thread']].append(event)
    for (process, thread), lane in sorted(lanes.items()):
        print(f'  lane {process} / {thread}: {len(lane)} events, busy {busy_microseconds(lane) / 1e3:.1f} ms')
    chosen, on_device = device_operations(events)
    source = 'device' if on_device else 'host (no device events: not a measurement)'
    busy = busy_microseconds(chosen) / 1e6
    total = sum(event['dur'] for event in chosen) / 1e6
    print(f'\n{label}: wall {wall_seconds * 1e3:.1f} ms, {source} busy {busy * 1e3:.1f} ms '
          f'({busy / wall_seconds:.0%}), sum of operation times {total * 1e3:.1f} ms, {len(chosen)} events')
    print('| operation | count | total ms | share of the operations | mean us |')
    print('| --- | --- | --- | --- | --- |')
    for name, count, micros in operation_totals(chosen)[:top]:
        print(f'| {name[:90]} | {count} | {micros / 1e3:.2f} | {micros / 1e6 / total:.1%} | {micros / count:.1f} |')


def profiled(run, label: str, top: int, keep_as: str | None = None) -> None:
    """Warms `run` up (compiles), then traces one run of it and summarizes the trace (copied to
    `keep_as` when given)."""
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir):
            started = time.perf_counter()
            jax.block_until_ready(run())
            wall = time.perf_counter() - started
        summarize(trace_events(log_dir), wall, label, top)
        if keep_as:
            shutil.copyfile(newest_trace(log_dir), keep_as)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', type=chunk_case, nargs='*', default=[(64, 100)],
                        help='batch x trials of each profiled chunk, e.g. 64x100 8x1000')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--check', action='store_true', help='also profile one whole-validation check')
    parser.add_argument('--eval_convolutions', nargs='*', default=['im2col'],
                        help='the convolutions of the profiled checks (config.eval_convolution)')
    parser.add_argument('--compute_dtype', default='float32', help="the chunk's config.compute_dtype")
    parser.add_argument('--top', type=int, default=20)
    parser.add_argument('--keep_traces', help='a folder to copy each trace (*.trace.json.gz) into')
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f'jax {jax.__version__}, {device.platform} {device.device_kind}')
    if args.keep_traces:
        os.makedirs(args.keep_traces, exist_ok=True)
    kept = lambda name: os.path.join(args.keep_traces, f'{name}.trace.json.gz') if args.keep_traces else None
    for batch_size, num_trials in args.cases:
        programs, trials, images, labels = common.engine_chunk('simple_cnn', num_trials, batch_size, args.steps,
                                                               compute_dtype=args.compute_dtype)
        order, active = trial.init_data_order(0, int(images.shape[0])), jnp.ones(num_trials, bool)
        # The chunk donates its states on accelerators: each run trains a fresh copy.
        profiled(lambda: programs.train_chunk(jax.tree.map(jnp.copy, trials), active, order, images, labels),
                 f'chunk, batch {batch_size}, N = {num_trials}, {args.steps} steps, {args.compute_dtype}', args.top,
                 kept(f'chunk_{batch_size}x{num_trials}_{args.compute_dtype}'))
        if not args.check:
            continue
        val_images, val_labels = common.synthetic_split(6000, seed=1)
        one = jax.tree.map(lambda leaf: leaf[0], trials)
        optimizer = optim.make_optimizer('sgd')
        for convolution in args.eval_convolutions:
            net = network.from_module(models.SimpleCNN(convolution=convolution), (28, 28, 1))
            # The study's rule for the evaluation chunk, from the device's memory, but sized from the
            # check's own network's training step (a study sizes it from its training network's).
            chunk = engine.eval_chunk_size(
                num_trials, int(val_images.shape[0]), jax.default_backend(),
                engine.train_bytes_per_example(trial.make_train_step(net, optimizer), one, (28, 28, 1)),
                engine.default_memory_bytes())
            evaluate = jax.jit(engine.evaluated_trials(trial.make_val_error_count(net, chunk),
                                                       engine.trials_stepped_in_turn()))
            profiled(lambda: evaluate(trials, jnp.ones(num_trials, bool), val_images, val_labels),
                     f'check by {convolution}, N = {num_trials}, 6,000 examples, {chunk} per trial per program',
                     args.top, kept(f'check_{convolution}_{num_trials}'))


if __name__ == '__main__':
    main()
