"""Smoothness along training: the Lipschitz constant L of the gradient for sparsities 0 / 0.5 / 0.7 / 0.9.

Simple-CNN on real Fashion-MNIST, SNIP masks (scores from 5,400 training images), batch size 64,
two SGD learning-rate trials per cell (Sobol points 0.01 and 0.1), stopped at the first trial that
reaches validation error 0.2. Every 40 steps each live trial's L is estimated from its last two
iterates, and every 80 steps (and at step 0) its gradient noise scale B_simple.

  python launch.py --config=configs/fashion_mnist_smoothness.py --workdir=runs/smoothness

One L estimate takes ten exact gradients over the examples it uses; over the whole 54,000-image
split that is ~140 s per trial on 2 CPU cores, so this config uses the first 2,000 (set
--config.lipschitz_examples=0 for the reference's whole split). Under 10 minutes on 2 CPU cores.
Every field is documented in dps_jax/config.py (base_study_config).
"""

from dps_jax.config import base_study_config


def get_config():
    config = base_study_config()
    config.dataset = 'fashion_mnist'
    config.model = 'simple_cnn'
    config.sparsities = (0.0, 0.5, 0.7, 0.9)
    config.snip_examples = 5400             # SNIP scores from 10% of the split (see configs/quickstart.py)
    config.batch_sizes = (64,)
    config.optimizer = 'sgd'
    config.schedule = 'constant'
    config.search_names = ('learning_rate',)
    config.num_trials = 2                   # learning rates 0.01 and 0.1
    config.goal_error = 0.2
    config.max_steps = 4000
    config.check_every = 20
    config.until = 'first'
    config.lipschitz_every = 40
    config.lipschitz_examples = 2000        # of 54,000: one estimate ~5 s per trial instead of ~140 s
    config.noise_scale_every = 80
    config.noise_scale_batch_sizes = (64, 1024)
    config.noise_scale_draws = 16
    return config
