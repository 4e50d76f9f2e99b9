"""Test-wide fixtures: the matmul precision a numerics test states with @pytest.mark.matmul_precision."""

import jax
import pytest


@pytest.fixture(autouse=True)
def stated_matmul_precision(request):
    """Runs a test marked matmul_precision('highest') (or another name) under that JAX precision.

    On NVIDIA GPUs 'default' is TF32 (~3e-4 relative error), so a test that compares float32
    matmuls or convolutions with a float64 or full-float32 oracle at tighter tolerances states
    'highest'. The package's own precision settings (config.matmul_precision, the estimators'
    ESTIMATOR_PRECISION) are set inside the traced functions and win over this one.
    """
    marker = request.node.get_closest_marker('matmul_precision')
    if marker is None:
        yield
        return
    with jax.default_matmul_precision(marker.args[0]):
        yield
