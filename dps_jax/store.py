"""Results files, always written atomically (a temp file in the same folder, then os.replace)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from typing import IO, Any, Callable, Iterator


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Calls write(file) on a temporary file beside `path`, then puts it at `path`, so that a reader
    (or a kill) sees the old file or the new, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(handle, 'wb' if binary else 'w') as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file private (0600); results should have the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (atomic_write)."""
    atomic_write(path, lambda file: file.write(text))


def atomic_write_json(path: str, value: Any) -> None:
    """`value` as indented JSON at `path`, atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def make_writable_folder(path: str) -> None:
    """Creates folder `path` (and its parents) if needed and checks that a file can be written in it;
    OSError when not (a file of that name, no permission, a read-only filesystem)."""
    os.makedirs(path, exist_ok=True)
    handle, probe = tempfile.mkstemp(dir=path, prefix='.write-check.')
    os.close(handle)
    os.unlink(probe)


@contextlib.contextmanager
def locked(path: str, wait: bool = True) -> Iterator[bool]:
    """Holds an exclusive advisory lock on the file `path` (created if needed) for the duration:
    yields True, or, with wait=False, False at once when another process holds it. The operating
    system releases the lock when its process ends, killed or not, so a crash leaves no stale lock.
    (fcntl.flock: local filesystems and NFSv4; between the processes of one machine or, on NFSv4,
    of several.)"""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a') as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
