"""Mid-cell checkpoints: the whole trial-batched engine state of one cell, with orbax.

A checkpoint holds the device arrays (every group's stacked TrainState, the data orders) and
the host bookkeeping (statuses, steps-to-result, errors, slot layout, measurement series) as
JSON. Two are kept. On restore the newest that reads back intact is used; one that fails to
read, or whose arrays do not match the fingerprint saved with them, is reported, deleted, and
the previous one is tried; with none left the cell starts over. Never a crash loop.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import parallel
from dps_jax.analysis import finite_or_none

# Bump when the saved layout changes: older checkpoints are then ignored, not misread.
# 3: trial states carry model_state and dropout_key.
FORMAT = 3


_leaf_sums = jax.jit(lambda leaves: [jnp.sum(leaf.astype(jnp.float32)) for leaf in leaves])


def fingerprint(tree: Any) -> list[float]:
    """One float per leaf (the sum of its entries as float32), to check arrays read back intact."""
    return [float(value) for value in parallel.to_host(_leaf_sums(jax.tree.leaves(tree)))]


def _same_fingerprint(saved: list, restored: list) -> bool:
    return len(saved) == len(restored) and all(
        (a is None and not np.isfinite(b)) or (a is not None and (a == b)) for a, b in zip(saved, restored))


def _uncommitted(tree: Any) -> Any:
    """The tree with its single-device arrays uncommitted, as a fresh run's arrays are.

    orbax returns arrays committed to their device, and jit compiles a program for committed
    arguments apart from the one for uncommitted ones: a resumed cell would compile its chunk and
    evaluation again instead of reusing what a fresh run left in the compilation cache. Arrays on
    a mesh are committed in a fresh run too and are left as they are.
    """
    def uncommit(array):
        if isinstance(array, jax.Array) and isinstance(array.sharding, jax.sharding.SingleDeviceSharding):
            return jax.device_put(np.asarray(array))  # from the host: uncommitted, on the default device
        return array
    return jax.tree.map(uncommit, tree)


class CellCheckpoints:
    """Checkpoints of one cell in `directory` every `every_checks` checks (orbax CheckpointManager).

    `identity` (JSON) names the cell's setup; a checkpoint with another identity is not used.
    `normalize` maps an identity to the form compared (e.g. fills fields an older version did not
    write); by default identities are compared as they are.
    """

    def __init__(self, directory: str, every_checks: int, identity: dict,
                 log: Callable[[str], None] | None = None, normalize: Callable[[dict], dict] | None = None):
        import orbax.checkpoint as ocp  # heavy; only when checkpoints are on

        logging.getLogger('absl').setLevel(logging.WARNING)  # orbax logs ~60 INFO lines per save
        self._ocp = ocp
        self.directory = os.path.abspath(directory)  # orbax refuses relative paths
        self.every_checks = every_checks
        self.identity = json.loads(json.dumps({'format': FORMAT, **identity}))
        self.log = log or (lambda line: None)
        self._normalize = normalize or (lambda identity: identity)
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, cleanup_tmp_directories=True))

    def require(self, identity: dict) -> None:
        """Adds `identity` (JSON-able) to what a checkpoint must match to be used."""
        self.identity = json.loads(json.dumps({**self.identity, **identity}))

    def due(self, checks: int) -> bool:
        return self.every_checks > 0 and checks % self.every_checks == 0

    def save(self, checks: int, arrays: Any, host: dict) -> None:
        """Saves `arrays` (a pytree of jax arrays) and `host` (JSON) as the checkpoint after `checks` checks.

        The write runs in the background; the next save, restore or close waits for it.
        """
        meta = {'identity': self.identity, 'host': host, 'fingerprint': [finite_or_none(value) for value in fingerprint(arrays)]}
        self.manager.save(checks, args=self._ocp.args.Composite(
            arrays=self._ocp.args.StandardSave(arrays), meta=self._ocp.args.JsonSave(meta)))

    def restore(self, abstract_arrays: Callable[[dict], Any]) -> tuple[Any, dict] | None:
        """(arrays, host) of the newest intact checkpoint of this identity, or None.

        abstract_arrays(host) gives the target pytree (jax.ShapeDtypeStruct with shardings) of
        the arrays saved with `host`.
        """
        self.manager.wait_until_finished()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.manager.restore(step, args=self._ocp.args.Composite(meta=self._ocp.args.JsonRestore())).meta
            except Exception as error:
                self._unusable(step, error)
                continue
            if self._normalize(meta.get('identity') or {}) != self._normalize(self.identity):
                # Deleted rather than kept: orbax keeps the highest steps, so an old run's
                # checkpoints would crowd out this run's new ones.
                self.log(f'  warning: checkpoint {self.directory}/{step} was made by another setup of this cell '
                         f'(a different config, engine settings or mesh); deleting it')
                self._delete(step)
                continue
            try:
                arrays = _uncommitted(self.manager.restore(step, args=self._ocp.args.Composite(
                    arrays=self._ocp.args.StandardRestore(abstract_arrays(meta['host'])))).arrays)
                if not _same_fingerprint(meta['fingerprint'], fingerprint(arrays)):
                    raise ValueError('its arrays do not match the fingerprint saved with them')
            except Exception as error:  # orbax raises bare Exception for unreadable array data
                self._unusable(step, error)
                continue
            return arrays, meta['host']
        return None

    def _unusable(self, step: int, error: Exception) -> None:
        self.log(f'  warning: checkpoint {self.directory}/{step} is unusable '
                 f'({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}); '
                 f'deleting it and trying an older one')
        self._delete(step)

    def _delete(self, step: int) -> None:
        try:
            self.manager.delete(step)
        except Exception:  # a half-deleted directory must not stop the cell either
            shutil.rmtree(f'{self.directory}/{step}', ignore_errors=True)
            self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def remove(self) -> None:
        """Deletes every checkpoint of the cell (once its results are written)."""
        self.close()
        parallel.barrier('checkpoints closed')  # no process may still be writing into it
        if parallel.is_main_process():
            shutil.rmtree(self.directory, ignore_errors=True)
            try:
                os.rmdir(os.path.dirname(self.directory))  # DIR/checkpoints, once no cell has any
            except OSError:
                pass
