"""One trial: Simple-CNN on Fashion-MNIST, SNIP at 90% sparsity, SGD lr 0.1, batch 64, goal 0.15.

  python launch.py --config=configs/fashion_mnist_trial.py --workdir=/tmp/dps_trial
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Data.
    config.dataset = 'fashion_mnist'      # 'mnist' | 'fashion_mnist' | 'cifar10' | 'tfds:NAME[:SPLIT]'
    config.data_dir = ''                  # '' searches $DPS_DATA_DIR, then /usr/share/datasets/<name>
    config.data_source = 'files'          # 'files' (IDX .gz / CIFAR batches) | 'tfds' (prepared TFDS data)
    # Model and pruning at initialization.
    config.model = 'simple_cnn'           # 'simple_cnn' | 'resnet8' | 'package.module:attribute' | 'file.py:attribute'
    config.sparsity = 0.9                 # fraction of parameters pruned, in [0, 1)
    config.pruning = 'snip'               # 'snip' | 'random' | 'magnitude'
    config.prune_kernels_only = False     # False: weights and biases compete (as the reference)
    config.snip_batch_size = 100          # SNIP sums mask gradients over its examples in batches of this
    config.snip_examples = 0              # 0 = the whole training split (the reference); n = its first n examples
    # Optimizer (TF1 semantics) and learning-rate schedule.
    config.optimizer = 'sgd'              # 'sgd' | 'momentum' | 'nesterov'
    config.schedule = 'constant'          # 'constant' | 'linear' (lr -> lr * end factor over decay_steps)
    config.learning_rate = 0.1            # > 0
    config.momentum = 0.9                 # in [0, 1); unused by 'sgd'
    config.decay_steps = 30000            # >= 1; used by schedule 'linear'
    config.end_learning_rate_factor = 0.01  # in [0, 1]; used by schedule 'linear'
    # Training and the goal.
    config.batch_size = 64                # examples per step, <= training split size
    config.goal_error = 0.15              # reached when whole-validation-split error <= this, in (0, 1)
    config.max_steps = 40000              # budget in steps, a multiple of check_every
    config.check_every = 100              # steps between validation checks
    config.exact_val_errors = True        # False: a check stops counting once the goal is missed (errors recorded
                                          # above the goal are then lower bounds; the same steps-to-result)
    config.eval_chunk_size = 0            # examples per evaluation chunk (speed and memory, not results); 0 = the
                                          # engine.eval_chunk_size of one trial without a memory
                                          # estimate: 48 on CPU, 1000 on an accelerator
    config.compute_dtype = 'float32'      # 'float32' | 'bfloat16' (training and evaluation; float32 master weights)
    config.batch_in_passes = True         # on a CPU, batches in passes of <= 32 examples, and on any device in passes
                                          # that fit its memory; False: whole (README)
    config.convolution = 'im2col'         # 'im2col' | 'pallas' (Triton kernels, GPU only) | 'xla' (README, "Performance")
    config.eval_convolution = 'auto'      # the validation checks': 'auto' (built-in models 'xla', else as convolution)
                                          # | '' (as convolution) | 'im2col' | 'pallas' | 'xla'
    config.matmul_precision = 'default'   # 'default' (TF32 on NVIDIA GPUs) | 'high' | 'highest' (full float32)
    config.compilation_cache_dir = 'auto'  # JAX's persistent compilation cache: 'auto' = ~/.cache/dps_jax/...; '' = off
    # Seeds.
    config.seed = 0                       # initialization (and random-mask) seed: the trial index; in [0, 2^32)
    config.data_seed = 0                  # data order seed, in [0, 2^32) (an endless stream, batches span epoch
                                          # ends), as the reference
    return config
