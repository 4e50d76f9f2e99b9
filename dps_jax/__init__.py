"""dps_jax: how data parallelism and sparsity change the steps a network needs to reach a goal error."""

__version__ = "0.1.0"
