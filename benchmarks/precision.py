"""The cost and the effect of config.matmul_precision on one real cell, each setting in its own process.

Runs the same cell (Simple-CNN on Fashion-MNIST, SNIP 0.9, N SGD learning-rate trials, batch 64,
goal 0.15, a check every 100 steps, until='all') once per setting through launch.py, then prints
each run's cell wall time, steps-to-result and reached trials, and which trials' steps-to-result
differ from the first setting's. --deterministic_ops adds a run of the first setting under
XLA_FLAGS=--xla_gpu_deterministic_ops=true (GPU only).

    python benchmarks/precision.py [--settings default,highest] [--trials 32] [--max_steps 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cell(workdir: str, precision: str, args, xla_flags: str | None = None) -> dict:
    """Runs the cell in a fresh process; its summary and per-trial steps-to-result from the store."""
    overrides = ['--config.sparsities=(0.9,)', '--config.batch_sizes=(64,)', '--config.until=all',
                 f'--config.num_trials={args.trials}', '--config.goal_error=0.15', '--config.check_every=100',
                 f'--config.max_steps={args.max_steps}', f'--config.snip_examples={args.snip_examples}',
                 '--config.checkpoint_every=0', '--config.progress_every_seconds=1000',
                 f'--config.matmul_precision={precision}']
    env = dict(os.environ)
    if xla_flags:
        env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} {xla_flags}'.strip()
    completed = subprocess.run([sys.executable, os.path.join(ROOT, 'launch.py'),
                                f'--config={os.path.join(ROOT, "configs", "quickstart.py")}', f'--workdir={workdir}',
                                *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    if completed.returncode:
        sys.exit(f'the {precision} run failed:\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}')
    cell = os.path.join(workdir, 'cells', '0.9_64')
    with open(os.path.join(cell, 'summary.json')) as file:
        summary = json.load(file)
    with open(os.path.join(cell, 'trials.jsonl')) as file:
        trials = [json.loads(line) for line in file]
    return {'summary': summary, 'steps': [row['steps_to_result'] for row in trials],
            'rows': [{k: v for k, v in row.items() if 'second' not in k} for row in trials]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--settings', default='default,highest', help='matmul precisions, comma-separated')
    parser.add_argument('--trials', type=int, default=32)
    parser.add_argument('--max_steps', type=int, default=2000)
    parser.add_argument('--snip_examples', type=int, default=5400)
    parser.add_argument('--deterministic_ops', action='store_true', help='also the first setting with '
                        'XLA_FLAGS=--xla_gpu_deterministic_ops=true')
    args = parser.parse_args()
    runs = [(name, name, None) for name in args.settings.split(',')]
    if args.deterministic_ops:
        runs.append((f'{runs[0][0]} + deterministic ops', runs[0][0], '--xla_gpu_deterministic_ops=true'))
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for index, (label, precision, flags) in enumerate(runs):
            results[label] = run_cell(os.path.join(root, str(index)), precision, args, flags)
    first_label = runs[0][0]
    first = results[first_label]
    print(f'| setting | cell wall | trial-steps/s | steps-to-result (best trial) | reached | '
          f'trials whose steps-to-result differ from {first_label!r} | identical trials.jsonl |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for label, result in results.items():
        summary = result['summary']
        changed = [f'{i}: {a} -> {b}' for i, (a, b) in enumerate(zip(first['steps'], result['steps'])) if a != b]
        print(f'| {label} | {summary["wall_seconds"]:.1f} s | '
              f'{summary["trial_steps_computed"] / summary["wall_seconds"]:,.0f} | '
              f'{summary["steps_to_result"]} ({summary["best_trial"]}) | {summary["counts"]["reached"]} of '
              f'{args.trials} | {", ".join(changed) or "none"} | {result["rows"] == first["rows"]} |')


if __name__ == '__main__':
    main()
