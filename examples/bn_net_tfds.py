"""A study of your own network on your own TFDS dataset, from a config: examples/bn_net.py on a prepared
TFDS image dataset (here the tiny one of examples/tiny_tfds_dataset.py).

    python examples/tiny_tfds_dataset.py /tmp/dps_tiny --noise 0.4  # prepares it (offline, ~2 s)
    python launch.py --config=examples/bn_net_tfds.py --config.data_dir=/tmp/dps_tiny --workdir=runs/bn_net

Run from the repository root: config.model is a file path relative to the working directory
('package.module:attribute' works too for a model on the Python path). For your own data, set
config.dataset = 'tfds:NAME' (any prepared TFDS image-classification dataset, e.g.
'tfds:cifar100' or 'tfds:cifar100:train[:50%]') and config.data_dir = your TFDS data dir.
"""

from dps_jax import config as config_lib


def get_config():
    config = config_lib.base_study_config()
    config.model = 'examples/bn_net.py:SmallBatchNormNet'
    config.dataset = 'tfds:dps_tiny_shapes/h8_w8_c1_k4_n1024_t256_z40_s0'
    config.data_dir = ''  # the TFDS data dir: give it with --config.data_dir
    config.sparsities = (0.0, 0.8)
    config.batch_sizes = (4, 16, 64)
    config.optimizer = 'momentum'
    config.search_names = ('learning_rate',)
    config.search_space.learning_rate.low = 1e-3
    config.momentum = 0.9
    config.num_trials = 8
    config.goal_error = 0.1
    config.check_every = 5
    config.max_steps = 300
    config.until = 'first'
    config.checkpoint_every = 0
    return config
