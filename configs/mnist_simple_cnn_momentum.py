"""MNIST, Simple-CNN, momentum (TF1 semantics), constant learning rate.

Goal validation error 0.02, budget 40,000 steps checked every 100; learning rate and momentum
searched (100 Sobol points: lr in [1e-4, 1] log, 1 - momentum in [1e-4, 0.1] log); sparsities
0 / 0.5 / 0.7 / 0.9 (SNIP), batch sizes 2 .. 16384.

  python launch.py --config=configs/mnist_simple_cnn_momentum.py --workdir=runs/mnist_momentum

Every field is documented in dps_jax/config.py (base_study_config); the fields set here are
the workload's.
"""

from dps_jax.config import base_study_config


def get_config():
    config = base_study_config()
    config.dataset = 'mnist'
    config.model = 'simple_cnn'
    config.sparsities = (0.0, 0.5, 0.7, 0.9)
    config.batch_sizes = tuple(2 ** k for k in range(1, 15))
    config.optimizer = 'momentum'
    config.schedule = 'constant'
    config.search_names = ('learning_rate', 'momentum')
    config.num_trials = 100
    config.goal_error = 0.02
    config.max_steps = 40000
    config.check_every = 100
    config.until = 'all'                        # every trial to its own end, as the reference: the full
                                                # per-trial record (scatter plots, bootstrap bands)
    return config
