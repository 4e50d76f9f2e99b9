"""Notebook-style use of dps_jax: a model and arrays defined inline, one cell, then a small grid, then plots.

    python examples/notebook_cell.py [OUTPUT_DIR]       # ~30 s on 2 CPU cores; figures in OUTPUT_DIR

Each block below is what a notebook cell would hold. Nothing here is specific to images of this
size or to this model: any flax Module whose __call__ takes (images) or (images, train) works, and
any uint8 or float arrays of shape (N, H, W[, C]) with integer labels.
"""

import os
import sys

import flax.linen as nn
import numpy as np

import dps_jax

# --- The data: two noisy stripe orientations and a blob, as numpy arrays -------------------------
rng = np.random.default_rng(0)


def make_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (count, 12, 12), labels (count,)): class 0 horizontal stripes, 1 vertical, 2 a blob."""
    labels = rng.integers(0, 3, count)
    rows, cols = np.mgrid[:12, :12]
    patterns = np.stack([(rows % 4 < 2), (cols % 4 < 2), ((rows - 6) ** 2 + (cols - 6) ** 2 < 12)]).astype(float)
    images = patterns[labels] * 50 + rng.normal(100, 60, size=(count, 12, 12))
    return np.clip(images, 0, 255).astype(np.uint8), labels


train_images, train_labels = make_images(2000)
test_images, test_labels = make_images(500)
dataset = dps_jax.from_arrays(train_images, train_labels, test_images, test_labels, name='stripes')


# --- The model: any flax Module; `train` tells training (dropout on) from evaluation ---------------
class TinyConvNet(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, images, train: bool):
        x = nn.relu(nn.Conv(8, (3, 3))(images))
        x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape((images.shape[0], -1))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


# --- The measurement's settings: every field is documented in dps_jax/config.py --------------------
config = dps_jax.base_study_config()
config.num_trials = 8                  # learning rates: Sobol points in [1e-3, 1] (log)
config.search_space.learning_rate.low = 1e-3
config.goal_error = 0.1
config.until = 'all'                   # every trial to its end, for the scatter of one cell
config.check_every = 5
config.max_steps = 400
config.checkpoint_every = 0

# --- One cell, in memory: every trial's status and steps ------------------------------------------
cell = dps_jax.run_cell(config, sparsity=0.5, batch_size=32, model=TinyConvNet(), dataset=dataset, log=None)
print(f'sparsity 0.5, batch 32: steps-to-result {cell.summary["steps_to_result"]} '
      f'(best trial {cell.summary["best_trial"]})')
for record in cell.trials:
    print(f'  trial {record["trial"]}: lr {record["learning_rate"]:.4f}  {record["status"]:9s} '
          f'steps {record["steps_to_result"]}')

# --- A small grid, in memory, then the table, the fit and the figure --------------------------------
config.until = 'first'                 # a cell's steps-to-result is its first hit: stop there
config.sparsities = (0.0, 0.9)
config.batch_sizes = (4, 16, 64)
study = dps_jax.run_study(config, model=TinyConvNet(), dataset=dataset, log=None)
print(dps_jax.steps_table(study))
result = dps_jax.analyze(study)
output = sys.argv[1] if len(sys.argv) > 1 else os.path.join('runs', 'notebook_example')
os.makedirs(output, exist_ok=True)
paths = dps_jax.plot_steps_vs_batch(study, result, os.path.join(output, 'steps_vs_batch'))
paths += dps_jax.plot_trial_scatter(cell, study.config, os.path.join(output, 'trials_0.5_32'))
print('figures:', ', '.join(paths))
