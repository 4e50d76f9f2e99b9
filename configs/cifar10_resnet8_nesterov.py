"""The reference CIFAR-10 workload: ResNet-8, Nesterov momentum, linear learning-rate decay.

All four metaparameters searched in the reference's ranges (config.search_space: learning rate,
momentum, decay steps in [30000, 60000], end learning-rate factor in [1e-4, 0.1]), goal validation
error 0.4, budget 100,000 steps, on the paper's grid (dps_jax.config.paper_study_config).

  python launch.py --config=configs/cifar10_resnet8_nesterov.py --workdir=runs/cifar10_resnet8

Needs cifar-10-batches-py/ or cifar-10-python.tar.gz (data_dir, $DPS_DATA_DIR or a download).
Every field is documented in dps_jax/config.py (base_study_config).
"""

from dps_jax.config import paper_study_config


def get_config():
    return paper_study_config(
        dataset='cifar10', model='resnet8', optimizer='nesterov',
        schedule='linear',                         # lr -> lr * end_learning_rate_factor over decay_steps
        search_names=('learning_rate', 'momentum', 'decay_steps', 'end_learning_rate_factor'),
        goal_error=0.4, max_steps=100000,
    )
