"""The reference workload: MNIST, Simple-CNN, SGD with a constant learning rate.

Learning-rate search, goal validation error 0.02, budget 40,000 steps, on the paper's grid
(dps_jax.config.paper_study_config: sparsities 0 / 0.5 / 0.7 / 0.9, batch sizes 2 .. 16384,
100 trials, checks every 100 steps, every trial to its end).

  python launch.py --config=configs/mnist_simple_cnn_sgd.py --workdir=runs/mnist_sgd

Every field is documented in dps_jax/config.py (base_study_config).
"""

from dps_jax.config import paper_study_config


def get_config():
    return paper_study_config(
        dataset='mnist', model='simple_cnn', optimizer='sgd', schedule='constant',
        search_names=('learning_rate',),          # 100 Sobol points, lr in [1e-4, 1] log (search_space)
        goal_error=0.02, max_steps=40000,
    )
