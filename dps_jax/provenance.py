"""What a result was computed with: package versions, git commit, backend, devices, numerics.

A study appends one record per run to DIR/provenance.json, and refuses to resume a workdir
made under another JAX / jaxlib version, PRNG setting or backend: initializations, data orders
and arithmetic may differ, so the resumed trials would not continue the recorded ones.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from typing import Any

import jax

import dps_jax
from dps_jax import config as config_lib
from dps_jax import store

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'numpy', 'scipy',
            'tensorflow-datasets')
FILE_NAME = 'provenance.json'


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(folder: str | None = None) -> str | None:
    """The commit of the git checkout holding dps_jax ('+dirty' when it has changes), or None."""
    folder = folder or os.path.dirname(os.path.dirname(os.path.abspath(dps_jax.__file__)))
    try:
        commit = subprocess.run(['git', '-C', folder, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changes = subprocess.run(['git', '-C', folder, 'status', '--porcelain', '--untracked-files=no'],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed package), or no git
    return commit + ('+dirty' if changes else '') if commit else None


def collect(matmul_precision: str | None = None, compute_dtype: str = 'float32', **numerics: Any) -> dict[str, Any]:
    """This process's record: versions, backend, devices, numerics settings, time. numerics: more
    of what decides the arithmetic, as resolved for this run (workload.resolved_numerics)."""
    device = jax.devices()[0]
    return {
        'recorded_at': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        'dps_jax': {'version': dps_jax.__version__, 'git_commit': git_commit()},
        'python': platform.python_version(),
        'packages': {name: package_version(name) for name in PACKAGES},
        'backend': jax.default_backend(),
        'devices': {'kind': device.device_kind, 'count': jax.device_count(),
                    'process_count': jax.process_count(),
                    'platform_version': getattr(device.client, 'platform_version', None)},
        'numerics': {'matmul_precision': matmul_precision, 'dtype': compute_dtype,
                     'jax_default_matmul_precision': jax.config.jax_default_matmul_precision,
                     'jax_enable_x64': bool(jax.config.jax_enable_x64),
                     'xla_flags': os.environ.get('XLA_FLAGS', ''), **numerics},
        'prng': {'default_prng_impl': str(jax.config.jax_default_prng_impl),
                 'threefry_partitionable': bool(jax.config.jax_threefry_partitionable)},
    }


def environment(record: dict[str, Any]) -> dict[str, Any]:
    """What decides a trial's initialization, data order and arithmetic, from a record."""
    packages = record.get('packages', {})
    return {'jax': packages.get('jax'), 'jaxlib': packages.get('jaxlib'), 'backend': record.get('backend'),
            'prng': record.get('prng')}


def describe_environment(record: dict[str, Any], with_prng: bool = False) -> str:
    """'jax 0.10.2 / jaxlib 0.10.2 on cpu', and the PRNG settings when asked."""
    env = environment(record)
    prng = f' with PRNG {env["prng"]}' if with_prng else ''
    return f'jax {env["jax"]} / jaxlib {env["jaxlib"]} on {env["backend"]}{prng}'


def read_runs(workdir: str) -> list[dict[str, Any]]:
    """The records of every earlier run in `workdir` (empty for a new workdir or an older dps_jax)."""
    path = os.path.join(workdir, FILE_NAME)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as file:
            return list(json.load(file)['runs'])
    except (ValueError, KeyError, TypeError) as error:  # not JSON (a ValueError), not UTF-8, not its shape
        raise config_lib.ConfigError(f'{path} is damaged ({error}); move it aside to resume') from error


def check_resume(workdir: str, runs: list[dict[str, Any]], current: dict[str, Any], allowed: bool) -> str | None:
    """ConfigError when `workdir` was made under another environment than `current`, unless `allowed`.

    Returns a one-line note when it differs and is allowed, else None.
    """
    differing = [run for run in runs if environment(run) != environment(current)]
    if not differing:
        return None
    with_prng = environment(differing[0])['prng'] != environment(current)['prng']
    before, now = describe_environment(differing[0], with_prng), describe_environment(current, with_prng)
    if not allowed:
        raise config_lib.ConfigError(
            f'{workdir} was made under {before}, this is {now}: initializations and data orders may differ, so '
            f'resuming is refused; use another --workdir, or --config.allow_environment_change=True to resume anyway')
    return f'resuming {workdir}, made under {before}, under {now} (config.allow_environment_change)'


def record_run(workdir: str, runs: list[dict[str, Any]], current: dict[str, Any]) -> None:
    """Appends `current` to DIR/provenance.json, atomically."""
    store.atomic_write_json(os.path.join(workdir, FILE_NAME), {'runs': [*runs, current]})
