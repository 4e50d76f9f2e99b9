"""JAX's persistent compilation cache, so that a second run of the same study compiles nothing."""

from __future__ import annotations

import os

import jax
from jax.experimental.compilation_cache import compilation_cache

from dps_jax import config as config_lib


def default_directory() -> str:
    """$XDG_CACHE_HOME/dps_jax/jax_compilation_cache, else ~/.cache/dps_jax/jax_compilation_cache."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'dps_jax', 'jax_compilation_cache')


def resolve(setting: str) -> str | None:
    """The folder a config's compilation_cache_dir names: 'auto' -> default_directory(), '' -> None (off)."""
    if not setting:
        return None
    return default_directory() if setting == 'auto' else os.path.abspath(os.path.expanduser(setting))


def use_compilation_cache(setting: str) -> str | None:
    """Points JAX's persistent compilation cache at the folder `setting` names, or turns it off ('').

    Every compiled program is stored, however fast it compiled: a study compiles dozens of small
    programs (initialization, masks, one chunk per bucket, evaluation) whose times add up.
    Returns the folder in use, or None; ConfigError when the folder cannot be made (a file of that name).
    """
    directory = resolve(setting)
    if directory != jax.config.jax_compilation_cache_dir:
        compilation_cache.reset_cache()  # JAX keeps the first folder it opened otherwise
    if directory is None:
        jax.config.update('jax_enable_compilation_cache', False)
        return None
    # A read-only folder is allowed: a shared cache filled beforehand is read, and JAX only warns when it cannot add.
    config_lib.require_folder(directory, 'config.compilation_cache_dir', writable=False)
    jax.config.update('jax_enable_compilation_cache', True)
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    return directory


def describe(directory: str | None) -> str:
    """One line: where the cache is and how many programs it holds."""
    if directory is None:
        return 'compilation cache: off'
    entries = sum(1 for name in os.listdir(directory) if not name.startswith('.')) if os.path.isdir(directory) else 0
    return f'compilation cache: {directory} ({entries} entries; --config.compilation_cache_dir to move, "" for off)'
