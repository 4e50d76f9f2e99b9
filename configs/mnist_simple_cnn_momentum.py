"""MNIST, Simple-CNN, heavy-ball momentum (TF1 semantics), constant learning rate.

Learning rate and momentum searched, goal validation error 0.02, budget 40,000 steps, on the
paper's grid (dps_jax.config.paper_study_config).

  python launch.py --config=configs/mnist_simple_cnn_momentum.py --workdir=runs/mnist_momentum

Every field is documented in dps_jax/config.py (base_study_config).
"""

from dps_jax.config import paper_study_config


def get_config():
    return paper_study_config(
        dataset='mnist', model='simple_cnn', optimizer='momentum', schedule='constant',
        search_names=('learning_rate', 'momentum'),  # lr in [1e-4, 1] log; 1 - momentum in [1e-4, 0.1] log
        goal_error=0.02, max_steps=40000,
    )
