"""A user's network for dps_jax: convolution, BatchNorm and dropout, written as any flax model.

dps_jax imports it from config.model = 'examples/bn_net.py:SmallBatchNormNet' (or, with
examples/ on the path, 'bn_net:SmallBatchNormNet') and calls it with the number of classes.
The `train` argument of __call__ is how dps_jax tells training from evaluation: in training
BatchNorm normalizes with the batch's statistics and updates its running averages (kept per
trial), and dropout draws a fresh key per trial and step; in evaluation the running averages
are used and dropout is off.
"""

import flax.linen as nn
import jax.numpy as jnp


class SmallBatchNormNet(nn.Module):
    """3x3 conv (16) -> BatchNorm -> ReLU -> 2x2 max pool -> dropout -> dense: (B, H, W, C) -> (B, classes)."""
    num_classes: int
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = nn.Conv(16, (3, 3), name='conv')(images)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='norm')(x)
        x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x.reshape((x.shape[0], -1)))
        return nn.Dense(self.num_classes, name='logits')(x)
