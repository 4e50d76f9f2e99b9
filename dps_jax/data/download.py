"""Downloading the built-in datasets' files when they are nowhere on disk: where from, the sizes and
sha256 digests they must have, and the fetch itself (TFDS's download manager verifies them).

Files go into <data_dir or $DPS_DATA_DIR>/<name>, else ~/.cache/dps_jax/<name>; $DPS_DATA_URL_BASE
replaces the servers with <base>/<name>/<file>.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.parse
from pathlib import Path
from typing import NamedTuple, Sequence

from dps_jax.data import files as files_lib
from dps_jax.data.core import DataError

# Environment variable replacing the download servers: files are fetched from <base>/<dataset name>/<file name>.
DATA_URL_BASE_ENV = 'DPS_DATA_URL_BASE'

# Seconds to wait for the download server before deciding we are offline.
CONNECT_TIMEOUT_S = 10.0

# Canonical download locations; the MNIST-like ones are the URLs TFDS registers checksums for.
_CANONICAL_URL_BASES = {
    'mnist': 'https://storage.googleapis.com/cvdf-datasets/mnist/',
    'fashion_mnist': 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
    'cifar10': 'https://www.cs.toronto.edu/~kriz/',
}
# TFDS registers only the binary CIFAR-10 archive, so the python archive's published size/sha256 live here.
_CHECKSUMS_NOT_IN_TFDS = {
    'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz':
        (170498071, '6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce'),
}
_INSTALL_HINTS = {
    'fashion_mnist': 'on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (installs /usr/share/datasets/fashion-mnist)',
}


class RemoteFile(NamedTuple):
    """A file to download: its URL, the local file name, expected size in bytes and sha256 hex digest."""
    url: str
    filename: str
    num_bytes: int
    sha256: str


def remote_files(name: str, url_base: str | None = None) -> tuple[RemoteFile, ...]:
    """Files to download for `name` with TFDS-registered sizes/checksums; `url_base` replaces the server."""
    spec = files_lib.spec_for_name(name)
    filenames = ([f + '.gz' for f in files_lib.IDX_FILES] if spec.layout == 'idx'
                 else [files_lib.CIFAR_ARCHIVE])
    from tensorflow_datasets.core.download import checksums as tfds_checksums
    registered = tfds_checksums.get_all_url_infos()
    files = []
    for filename in filenames:
        canonical_url = _CANONICAL_URL_BASES[name] + filename
        if canonical_url in registered:
            info = registered[canonical_url]
            num_bytes, sha256 = int(info.size), info.checksum
        elif canonical_url in _CHECKSUMS_NOT_IN_TFDS:
            num_bytes, sha256 = _CHECKSUMS_NOT_IN_TFDS[canonical_url]
        else:
            raise DataError(f'no checksum is known for {canonical_url}, so it will not be downloaded; '
                            f'fetch it yourself and put it in ${files_lib.DATA_DIR_ENV}/{name}/.')
        url = canonical_url if not url_base else f'{url_base.rstrip("/")}/{name}/{filename}'
        files.append(RemoteFile(url=url, filename=filename, num_bytes=num_bytes, sha256=sha256))
    return tuple(files)


def locate_or_download(spec: files_lib.BuiltinSpec, data_dir: str | None) -> files_lib.Located:
    """Finds the dataset's files in the search path, downloading them if they are nowhere."""
    located = files_lib.locate(spec, data_dir)
    if located:
        return located
    searched = files_lib.search_dirs(spec.name, data_dir)
    target = files_lib.download_dir(spec.name, data_dir)
    files = remote_files(spec.name, os.environ.get(DATA_URL_BASE_ENV) or None)
    try:
        fetch(files, target)
    except DownloadUnavailable as error:
        hint = _INSTALL_HINTS.get(spec.name)
        raise DataError(
            f'{spec.name} files not found and could not be downloaded ({error}). Expected '
            f'{files_lib.expected_files_text(spec)}. Searched: {"; ".join(str(d) for d in searched)}. '
            f'To fix: {hint + "; or " if hint else ""}download {", ".join(f.url for f in files)} into '
            f'{target} (or any searched directory); or set ${files_lib.DATA_DIR_ENV} to a directory holding them '
            f'(directly or in a subfolder named {spec.name!r}).') from None
    located = files_lib.find_in(spec, target)
    if not located:
        raise DataError(f'downloaded {spec.name} into {target} but its files are not there afterwards.')
    return located


# ----------------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------------

class DownloadUnavailable(Exception):
    """The download server could not be reached or did not deliver (offline, HTTP error)."""


def check_reachable(url: str) -> None:
    """Raises DownloadUnavailable fast when the URL's server cannot be connected to."""
    # TFDS's downloader retries a refused connection for minutes; one plain connect tells offline quickly.
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise DownloadUnavailable(f'cannot reach {parts.hostname}:{port}: {error}') from None


def fetch(files: Sequence[RemoteFile], target_dir: Path) -> None:
    """Downloads `files` into target_dir/<filename> with TFDS's DownloadManager, verifying size+sha256."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums as tfds_checksums
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    for url in sorted({f.url for f in files}):
        check_reachable(url)
    target_dir.mkdir(parents=True, exist_ok=True)
    staging = target_dir / '.dps_jax_download'
    url_infos = {f.url: tfds_checksums.UrlInfo(size=f.num_bytes, checksum=f.sha256, filename=f.filename)
                 for f in files}
    try:
        manager = tfds.download.DownloadManager(
            download_dir=staging, url_infos=url_infos, force_checksums_validation=True)
        try:
            downloaded = manager.download({f.filename: f.url for f in files})
        except NonMatchingChecksumError as error:
            raise DataError(f'download rejected: checksum mismatch, the file was discarded. {error}') from None
        except Exception as error:  # requests / TFDS raise many types; all mean "did not get the file"
            raise DownloadUnavailable(f'{type(error).__name__}: {error}') from None
        for f in files:
            # Canonical names let the directory search find the files next time.
            os.replace(downloaded[f.filename], target_dir / f.filename)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
