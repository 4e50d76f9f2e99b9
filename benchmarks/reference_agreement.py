"""Agreement with the reference: SNIP per-layer kept fractions and one trial's steps-to-result.

Runs the package's side of the two comparisons in README.md's "Agreement with the reference",
on real Fashion-MNIST with Simple-CNN, over several initialization seeds:

  python benchmarks/reference_agreement.py --part=snip  --seeds=8   # sparsity 0.9 and 0.98
  python benchmarks/reference_agreement.py --part=steps --seeds=5   # SNIP 0.9, SGD lr 0.1, batch 64, goal 0.12

Each part writes a JSON file (--out) and prints a table; --reference=FILE puts the reference
code's numbers, in the same JSON layout, beside the package's. --initial_weights=NPZ prunes the
reference's own initial weights (arrays named '<seed>_w1' .. '<seed>_b3', read out of its TF
graph) instead of drawing them, which separates the pruning computation from the random draws.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from dps_jax import data, masks, models, optim, store, trial  # noqa: E402

# The reference names Simple-CNN's parameters w1..w3 (kernels) and b1..b3 (biases).
LAYER_NAMES = {'conv1/kernel': 'w1', 'conv2/kernel': 'w2', 'dense/kernel': 'w3',
               'conv1/bias': 'b1', 'conv2/bias': 'b2', 'dense/bias': 'b3'}
LAYERS = ('w1', 'w2', 'w3', 'b1', 'b2', 'b3')


def reference_params(weights: Mapping[str, np.ndarray], seed: int) -> dict:
    """Simple-CNN parameters (flax names) from the reference's arrays '<seed>_w1' .. '<seed>_b3'."""
    by_layer = {name: (layer, kind) for layer_kind, name in LAYER_NAMES.items() for layer, kind in [layer_kind.split('/')]}
    params: dict = {}
    for name, (layer, kind) in by_layer.items():
        params.setdefault(layer, {})[kind] = jnp.asarray(weights[f'{seed}_{name}'], jnp.float32)
    return params


def snip_fractions(dataset, seeds, sparsities, num_examples=None, initial_weights=None) -> dict:
    """{sparsity: {seed: {layer: {'kept', 'total', 'fraction'}}}} from SNIP over the training split
    (its first `num_examples`; all by default), from the package's initializer or `initial_weights`."""
    model = models.get_model('simple_cnn', dataset.num_classes)
    apply_fn = lambda params, images: model.apply({'params': params}, images)
    num_examples = num_examples or dataset.train.images.shape[0]
    images = jnp.asarray(dataset.train.images[:num_examples])
    labels = jnp.asarray(dataset.train.labels[:num_examples])
    shape = tuple(dataset.train.images.shape[1:])
    scores_from = jax.jit(lambda params: masks.snip_scores(apply_fn, params, images, labels, batch_size=100))
    result = {str(sparsity): {} for sparsity in sparsities}
    for seed in seeds:
        started = time.perf_counter()
        params = (reference_params(initial_weights, seed) if initial_weights is not None
                  else jax.jit(trial.init_params, static_argnums=(0, 1))(model, shape, seed))
        scores = scores_from(params)
        for sparsity in sparsities:  # one SNIP pass serves every sparsity of the same initialization
            rows = masks.density_report(masks.top_k_mask(scores, sparsity))
            result[str(sparsity)][str(seed)] = {
                LAYER_NAMES[row.name]: {'kept': row.kept, 'total': row.total, 'fraction': row.density} for row in rows}
        print(f'seed {seed}: SNIP scores in {time.perf_counter() - started:.1f} s', flush=True)
    return result


def steps_to_result(dataset, seeds, goal_error, learning_rate, batch_size, max_steps, check_every,
                    out: str) -> dict:
    """Steps-to-result of one SNIP-0.9 SGD trial per initialization seed, one trial after another
    (trial.run_trial), the results file rewritten after each so a long run reports as it goes."""
    model = models.get_model('simple_cnn', dataset.num_classes)
    apply_fn = lambda params, images: model.apply({'params': params}, images)
    optimizer = optim.make_optimizer('sgd', 'constant')
    images, labels = jnp.asarray(dataset.train.images), jnp.asarray(dataset.train.labels)
    init_trial = jax.jit(trial.make_init_trial(model, optimizer, tuple(dataset.train.images.shape[1:]),
                                               pruning='snip', sparsity=0.9, snip_batch_size=100))
    hyperparameters = {'learning_rate': learning_rate, 'momentum': 0.9, 'decay_steps': 30000,
                       'end_learning_rate_factor': 0.01}
    result = {'seeds': [], 'steps_to_result': [], 'status': [], 'wall_seconds': [],
              'settings': {'goal_error': goal_error, 'learning_rate': learning_rate, 'batch_size': batch_size,
                           'check_every': check_every, 'max_steps': max_steps, 'sparsity': 0.9}}
    for seed in seeds:
        started = time.perf_counter()
        ended = trial.run_trial(
            state=init_trial(seed, hyperparameters, images, labels), train_step=trial.make_train_step(apply_fn, optimizer),
            val_error=trial.make_val_error_count(apply_fn, 1000), train_images=images, train_labels=labels,
            val_images=jnp.asarray(dataset.val.images), val_labels=jnp.asarray(dataset.val.labels),
            batch_size=batch_size, goal_error=goal_error, max_steps=max_steps, check_every=check_every, data_seed=0)
        result['seeds'].append(seed)
        result['steps_to_result'].append(ended.steps_to_result)
        result['status'].append(ended.status)
        result['wall_seconds'].append(round(time.perf_counter() - started, 1))
        print(f'seed {seed}: {ended.status}, steps-to-result {ended.steps_to_result} '
              f'(best validation error {ended.best_val_error:.4f}, {time.perf_counter() - started:.0f} s)', flush=True)
        store.atomic_write_json(out, result)
    return result


def print_snip_table(ours: dict, reference: dict | None) -> None:
    for sparsity, by_seed in ours.items():
        print(f'\nSNIP kept fraction per layer at sparsity {sparsity} (mean [min, max], std over seeds)')
        sources = [('dps_jax', by_seed)] + ([('reference', reference[sparsity])] if reference else [])
        print('layer  ' + '  '.join(f'{name:>35}' for name, _ in sources))
        for layer in LAYERS:
            cells = []
            for _, seeds in sources:
                values = np.array([seeds[seed][layer]['fraction'] for seed in seeds])
                cells.append(f'{values.mean():.4f} [{values.min():.4f}, {values.max():.4f}] '
                             f'{values.std(ddof=1) if len(values) > 1 else 0.0:.4f} n={len(values)}')
            print(f'{layer:<6} ' + '  '.join(f'{cell:>35}' for cell in cells))


def print_steps_table(ours: dict, reference: dict | None) -> None:
    print(f'\nsteps-to-result, {ours["settings"]}')
    for name, result in [('dps_jax', ours)] + ([('reference', reference)] if reference else []):
        steps = [s for s in result['steps_to_result'] if s is not None]
        summary = f'mean {np.mean(steps):.0f}, median {np.median(steps):.0f}' if steps else 'none reached'
        print(f'{name:>9}: {result["steps_to_result"]}  ({summary})')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--part', choices=('snip', 'steps'), required=True)
    parser.add_argument('--seeds', type=int, default=8, help='how many initialization seeds')
    parser.add_argument('--first_seed', type=int, default=0, help='the first seed (seeds first_seed, first_seed + 1, ...)')
    parser.add_argument('--sparsities', default='0.9,0.98', help='--part=snip: comma-separated')
    parser.add_argument('--snip_examples', type=int, default=0, help='--part=snip: first n training images (0: all)')
    parser.add_argument('--initial_weights', default=None,
                        help="--part=snip: NPZ of the reference's initial weights, '<seed>_w1' .. '<seed>_b3'")
    parser.add_argument('--goal_error', type=float, default=0.12)
    parser.add_argument('--learning_rate', type=float, default=0.1)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--max_steps', type=int, default=40000)
    parser.add_argument('--check_every', type=int, default=100)
    parser.add_argument('--data_dir', default=None)
    parser.add_argument('--reference', default=None, help="the reference's numbers (JSON, same layout)")
    parser.add_argument('--out', default=None, help='JSON output (default runs/agreement/<part>.json)')
    args = parser.parse_args()

    dataset = data.load('fashion_mnist', args.data_dir)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    out = args.out or os.path.join('runs', 'agreement', f'{args.part}.json')
    if args.part == 'snip':
        ours = snip_fractions(dataset, seeds, [float(s) for s in args.sparsities.split(',')], args.snip_examples,
                              np.load(args.initial_weights) if args.initial_weights else None)
    else:
        ours = steps_to_result(dataset, seeds, args.goal_error, args.learning_rate, args.batch_size,
                               args.max_steps, args.check_every, out)
    store.atomic_write_json(out, ours)
    reference = json.load(open(args.reference)) if args.reference else None
    (print_snip_table if args.part == 'snip' else print_steps_table)(ours, reference)
    print(f'\nwritten to {out}')


if __name__ == '__main__':
    main()
