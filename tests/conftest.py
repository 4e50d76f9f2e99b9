"""Test-wide fixtures: the matmul precision a numerics test states with @pytest.mark.matmul_precision
and a compilation cache of the test session's own."""

import os

# Parallel workers (pytest-xdist, -n 2) share one accelerator: neither may take most of its memory
# up front, as JAX does by default. Set before any JAX backend starts.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope='session')
def session_cache_home(tmp_path_factory):
    """Every program this test process (one xdist worker) and the studies it launches compile is kept
    in a folder of its own: 'auto' resolves under $XDG_CACHE_HOME, set here, not the user's ~/.cache.

    The cache is on from the first test, as it is for a user's study ('auto' is the default), so a
    program that several tests compile from the same computation (each run builds its jitted
    functions anew) is compiled once: tests/test_checkpoints.py alone ran in 75 s instead of 162 s.
    """
    from dps_jax import compilation_cache
    previous = os.environ.get('XDG_CACHE_HOME')
    os.environ['XDG_CACHE_HOME'] = str(tmp_path_factory.mktemp('cache_home'))
    compilation_cache.use_compilation_cache('auto')
    yield
    if previous is None:
        os.environ.pop('XDG_CACHE_HOME')
    else:
        os.environ['XDG_CACHE_HOME'] = previous


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


@pytest.fixture
def step_trials(monkeypatch):
    """step_trials(in_turn): makes the engine step and check its trials in turn (lax.map, as on one
    CPU device) or vmapped (as on accelerators and meshes), whatever the backend, for one test."""
    from dps_jax import engine

    def step(in_turn: bool) -> None:
        monkeypatch.setattr(engine, 'trials_stepped_in_turn', lambda mesh=None: in_turn)
    return step
