"""Devices: a jax.sharding Mesh over ('data', 'trial'), where trial-stacked states and the
resident data live on it, host reads that work across processes, and multi-host start-up.

Trials are independent, so the 'trial' axis needs no communication: each device trains its
share of the slots. The 'data' axis shards each training batch over its devices; XLA's SPMD
partitioner inserts the all-reduce of the gradient (data parallelism, the subject of the study).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TRIAL, DATA = 'trial', 'data'

# Environment variables that say a process is one of several (the launchers JAX itself detects).
CLUSTER_VARIABLES = ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES')
DISTRIBUTED = ('auto', 'on', 'off')


def make_mesh(trial: int = 0, data: int = 1, devices: Any = None) -> Mesh:
    """A Mesh of shape (data, trial) over `devices` (default: every device of every process).

    trial = 0 takes all devices left after `data`. Raises ValueError naming mesh.trial /
    mesh.data when the product does not match the devices.
    """
    devices = jax.devices() if devices is None else list(devices)
    if data < 1 or trial < 0:
        raise ValueError(f'mesh.data={data} must be >= 1 and mesh.trial={trial} >= 0 (0 = the rest)')
    if trial == 0:
        if len(devices) % data:
            raise ValueError(f'mesh.data={data} does not divide the {len(devices)} devices')
        trial = len(devices) // data
    if trial * data != len(devices):
        raise ValueError(f'mesh.trial={trial} x mesh.data={data} = {trial * data} devices, but there are '
                         f'{len(devices)}; use mesh.trial=0 to take the rest')
    return Mesh(np.asarray(devices, dtype=object).reshape(data, trial), (DATA, TRIAL))


def trial_count(mesh: Mesh | None) -> int:
    """Devices along 'trial': slot counts are made multiples of it."""
    return 1 if mesh is None else int(mesh.shape[TRIAL])


def data_count(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(mesh.shape[DATA])


def trial_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (slot) axis over 'trial', replicated over 'data'."""
    return NamedSharding(mesh, PartitionSpec(TRIAL))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis over 'data', replicated over 'trial'."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _put(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """`leaf` with `sharding`; across processes every process must hold the same values."""
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
        return leaf
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.jit(lambda value: value, out_shardings=sharding)(leaf)  # a global array: reshard
    host = np.asarray(leaf)  # a process-local copy: each process fills its own devices' shards
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def place_trials(tree: Any, mesh: Mesh | None) -> Any:
    """Every leaf's leading (slot) axis sharded over 'trial' (unchanged without a mesh)."""
    return tree if mesh is None else jax.tree.map(lambda leaf: _put(leaf, trial_sharding(mesh)), tree)


def place_replicated(tree: Any, mesh: Mesh | None) -> Any:
    """A copy of every leaf on every device of the mesh (the resident splits, a shared data order)."""
    return tree if mesh is None else jax.tree.map(lambda leaf: _put(leaf, replicated(mesh)), tree)


def to_host(tree: Any) -> Any:
    """numpy copies of every leaf, also of arrays spread over several processes (gathered)."""
    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))
    return jax.tree.map(fetch, tree)


def is_main_process() -> bool:
    """Only process 0 writes results; every process computes."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits for every process (a no-op in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def in_cluster(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment says this process is one of several."""
    for name in CLUSTER_VARIABLES:
        value = environ.get(name)
        if not value:
            continue
        if name == 'SLURM_NTASKS' and 'SLURM_STEP_ID' not in environ:
            continue  # the batch script itself, not one of srun's tasks: no peers will join
        if name in ('JAX_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES') or value.strip() != '1':
            return True
    return False


def initialize_distributed(mode: str = 'auto', coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           environ: Mapping[str, str] = os.environ) -> bool:
    """jax.distributed.initialize() for a multi-host run; returns whether it was called.

    'auto': when the cluster environment is present (Slurm, Open MPI, TPU pods, or
    JAX_COORDINATOR_ADDRESS) or an address is given; 'on': always; 'off': never. Must run
    before any computation.
    """
    if mode not in DISTRIBUTED:
        raise ValueError(f'distributed={mode!r} is not accepted; choose one of: {", ".join(DISTRIBUTED)}')
    if mode == 'off' or (mode == 'auto' and not coordinator_address and not in_cluster(environ)):
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def describe(mesh: Mesh | None) -> str:
    if mesh is None:
        return f'1 device ({jax.devices()[0].platform})'
    return (f'{mesh.size} {jax.devices()[0].platform} device(s) in {jax.process_count()} process(es): '
            f'mesh trial={trial_count(mesh)} x data={data_count(mesh)}')
