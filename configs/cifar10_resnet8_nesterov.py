"""The reference CIFAR-10 workload: ResNet-8, Nesterov momentum, linear learning-rate decay.

Goal validation error 0.4, budget 100,000 steps checked every 100; all four metaparameters
searched (100 Sobol points: learning rate, momentum, decay steps in [30000, 60000], end
learning-rate factor in [1e-4, 0.1]); sparsities 0 / 0.5 / 0.7 / 0.9 (SNIP), batch sizes
2 .. 16384.

  python launch.py --config=configs/cifar10_resnet8_nesterov.py --workdir=runs/cifar10_resnet8

Needs cifar-10-batches-py/ or cifar-10-python.tar.gz (data_dir, $DPS_DATA_DIR or a download).
Every field is documented in dps_jax/config.py (base_study_config); the fields set here are
the workload's.
"""

from dps_jax.config import base_study_config


def get_config():
    config = base_study_config()
    config.dataset = 'cifar10'
    config.model = 'resnet8'
    config.sparsities = (0.0, 0.5, 0.7, 0.9)
    config.batch_sizes = tuple(2 ** k for k in range(1, 15))
    config.optimizer = 'nesterov'
    config.schedule = 'linear'                  # lr -> lr * end_learning_rate_factor over decay_steps
    config.search_names = ('learning_rate', 'momentum', 'decay_steps', 'end_learning_rate_factor')
    config.num_trials = 100
    config.goal_error = 0.4
    config.max_steps = 100000
    config.check_every = 100
    config.until = 'all'                        # every trial to its own end, as the reference: the full
                                                # per-trial record (scatter plots, bootstrap bands)
    return config
