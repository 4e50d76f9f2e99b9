"""MNIST, Simple-CNN, Nesterov momentum (TF1 semantics), constant learning rate.

Learning rate and momentum searched, goal validation error 0.02, budget 40,000 steps, on the
paper's grid (dps_jax.config.paper_study_config).

  python launch.py --config=configs/mnist_simple_cnn_nesterov.py --workdir=runs/mnist_nesterov

Every field is documented in dps_jax/config.py (base_study_config).
"""

from dps_jax.config import paper_study_config


def get_config():
    return paper_study_config(
        dataset='mnist', model='simple_cnn', optimizer='nesterov', schedule='constant',
        search_names=('learning_rate', 'momentum'),
        goal_error=0.02, max_steps=40000,
    )
