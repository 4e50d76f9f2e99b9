"""Quickstart: a small real study that finishes in minutes on a 2-core CPU.

Simple-CNN on real Fashion-MNIST, SNIP (scores from 5,400 training images) at sparsities 0 and 0.9, three batch sizes, 16 SGD
learning-rate trials per cell, stopped at the first trial that reaches validation error 0.25.

  python launch.py --config=configs/quickstart.py --workdir=runs/quickstart

Every field is documented in dps_jax/config.py (base_study_config); this file sets the workload.
"""

from dps_jax.config import base_study_config


def get_config():
    config = base_study_config()
    config.dataset = 'fashion_mnist'        # real Fashion-MNIST (apt-get install dataset-fashion-mnist)
    config.model = 'simple_cnn'
    config.sparsities = (0.0, 0.9)          # dense and 90% pruned by SNIP
    config.snip_examples = 5400             # SNIP scores from 10% of the split, not all of it (the reference):
                                            # 16 whole-split SNIPs would take ~10 minutes on 2 CPU cores
    config.batch_sizes = (16, 64, 256)
    config.optimizer = 'sgd'
    config.schedule = 'constant'
    config.search_names = ('learning_rate',)  # Sobol points in config.search_space.learning_rate: [1e-4, 1] log
    config.num_trials = 16
    config.goal_error = 0.25                # reached within ~100 steps at every cell
    config.max_steps = 5000
    config.check_every = 20
    config.exact_val_errors = False         # checks stop counting a trial once it has missed the goal: the same
                                            # table, 1.12-1.17x faster here (errors above 0.25 in trials.jsonl are
                                            # lower bounds; README, "Checks that stop early")
    config.until = 'first'
    return config
