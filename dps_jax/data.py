"""Image classification data: MNIST, Fashion-MNIST and CIFAR-10 as standardized NHWC arrays.

`load(name)` returns train / validation / test splits held in memory:

* pixels are divided by 255 and standardized with the mean and std of ALL
  official training images (before the validation split); one mean/std per
  channel, which for the single-channel MNIST-likes is one global value;
* validation is a fixed 10% of the official training set, chosen by
  `np.random.RandomState(0).permutation`; both index sets are kept sorted;
* test is the official test set.

Sources: `'files'` reads the datasets' original distribution files (IDX .gz
files, CIFAR-10 python pickles) found on disk, downloading them with checksum
verification when they are nowhere to be found; `'tfds'` reads a prepared
TensorFlow Datasets `array_record` dataset through `tfds.data_source`, which
works without TensorFlow.

Search order for 'files' (first directory holding the files wins): `data_dir`/<name>,
`data_dir`/<name with - for _>, `data_dir` itself; the same three under $DPS_DATA_DIR;
/usr/share/datasets/<name with - for _> (Debian's dataset packages); ~/.cache/dps_jax/<name>.
A directory holding only some of a dataset's files is an error, not skipped. When nothing is
found, the files are downloaded (sizes and sha256 from TFDS's registry) into
<data_dir or $DPS_DATA_DIR>/<name>, else ~/.cache/dps_jax/<name>; $DPS_DATA_URL_BASE replaces the
servers with <base>/<name>/<file>. For 'tfds', `data_dir` is the TFDS data dir (None: TFDS's default).

Every problem a user can fix (name, source, missing or corrupt file) raises DataError.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import socket
import struct
import tarfile
import urllib.parse
import zlib
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

DATASETS = ('mnist', 'fashion_mnist', 'cifar10')
SOURCES = ('files', 'tfds')

# Environment variable naming a directory searched for dataset files (and used as the download cache).
DATA_DIR_ENV = 'DPS_DATA_DIR'
# Environment variable replacing the download servers: files are fetched from <base>/<dataset name>/<file name>.
DATA_URL_BASE_ENV = 'DPS_DATA_URL_BASE'
# Where Debian's dataset packages install their files (e.g. `apt-get install dataset-fashion-mnist`).
SYSTEM_DATA_ROOT = '/usr/share/datasets'
# Download cache used when neither data_dir nor $DPS_DATA_DIR is given.
DEFAULT_CACHE_ROOT = '~/.cache/dps_jax'

VALIDATION_SEED = 0
VALIDATION_DIVISOR = 10  # validation gets n_train // 10 of the official training images

# Seconds to wait for the download server before deciding we are offline.
CONNECT_TIMEOUT_S = 10.0

_IDX_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
              't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
_CIFAR_DIR = 'cifar-10-batches-py'
_CIFAR_ARCHIVE = 'cifar-10-python.tar.gz'
_CIFAR_TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
_CIFAR_TEST_BATCH = 'test_batch'

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


class DataError(ValueError):
    """A dataset could not be found, fetched or decoded; the message says which file and why."""


class Split(NamedTuple):
    """One split: images float32 (n, H, W, C) standardized; labels int32 (n,)."""
    images: np.ndarray
    labels: np.ndarray


class Dataset(NamedTuple):
    """A dataset ready for training: train / val / test splits and the number of classes."""
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int


class RawData(NamedTuple):
    """Official splits as decoded: images uint8 (n, H, W, C), labels int32 (n,); arrays may be read-only."""
    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int


class PixelStats(NamedTuple):
    """Per-channel mean and std (population, ddof=0) of pixels / 255, float64 arrays of shape (C,)."""
    mean: np.ndarray
    std: np.ndarray


class RemoteFile(NamedTuple):
    """A file to download: its URL, the local file name, expected size in bytes and sha256 hex digest."""
    url: str
    filename: str
    num_bytes: int
    sha256: str


class _Spec(NamedTuple):
    """What a dataset looks like on disk and in memory; counts are per official split."""
    name: str
    layout: str  # 'idx' (four IDX files) or 'cifar' (python pickle batches)
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    num_classes: int


_SPECS = {
    'mnist': _Spec('mnist', 'idx', (28, 28, 1), 60000, 10000, 10),
    'fashion_mnist': _Spec('fashion_mnist', 'idx', (28, 28, 1), 60000, 10000, 10),
    'cifar10': _Spec('cifar10', 'cifar', (32, 32, 3), 50000, 10000, 10),
}


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------

def load(name: str, data_dir: str | None = None, source: str = 'files') -> Dataset:
    """Loads dataset `name` as standardized float32 NHWC train / val / test splits."""
    return standardize_and_split(load_raw(name, data_dir, source))


def load_raw(name: str, data_dir: str | None = None, source: str = 'files') -> RawData:
    """Loads the official train / test splits of `name` as uint8 NHWC images and int32 labels."""
    return _load_raw_spec(_spec_for(name), data_dir, source)


def pixel_stats(train_images: np.ndarray) -> PixelStats:
    """Per-channel mean / std of uint8 images (n, H, W, C) after dividing by 255, in float64."""
    images = _require_uint8_nhwc(train_images)
    num_channels = images.shape[-1]
    counts = np.zeros((num_channels, 256), dtype=np.int64)
    # A histogram of the 256 byte values gives exact moments without a float64 copy of the images;
    # chunks keep bincount's internal int64 copy small.
    chunk = max(1, (1 << 22) // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, images.shape[0], chunk):
        block = images[start:start + chunk]
        for channel in range(num_channels):
            counts[channel] += np.bincount(block[..., channel].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    totals = counts.sum(axis=1).astype(np.float64)
    mean = counts @ values / totals
    variance = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / totals
    return PixelStats(mean=mean, std=np.sqrt(variance))


def validation_split_indices(num_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train_indices, val_indices), both sorted int arrays, of the official training set."""
    permutation = np.random.RandomState(VALIDATION_SEED).permutation(num_train)
    num_val = num_train // VALIDATION_DIVISOR
    return np.sort(permutation[num_val:]), np.sort(permutation[:num_val])


def standardize(images: np.ndarray, stats: PixelStats, indices: np.ndarray | None = None) -> np.ndarray:
    """Maps uint8 images (n, H, W, C) (optionally only rows `indices`) to float32 ((x/255 - mean) / std)."""
    images = _require_uint8_nhwc(images)
    num_channels = images.shape[-1]
    if stats.mean.shape != (num_channels,) or stats.std.shape != (num_channels,):
        raise DataError(f'pixel statistics have shape {stats.mean.shape}, images have {num_channels} channels')
    # Every uint8 value maps to one float: a 256-entry table computed in float64 gives exactly the
    # float64-then-cast result, with a single float32 output array and no float64 image copy.
    table = ((np.arange(256, dtype=np.float64)[:, None] / 255.0 - stats.mean[None, :])
             / stats.std[None, :]).astype(np.float32)
    channel_ids = np.arange(num_channels)
    rows = np.arange(images.shape[0]) if indices is None else np.asarray(indices)
    out = np.empty((rows.shape[0],) + images.shape[1:], dtype=np.float32)
    chunk = max(1, (1 << 21) // int(np.prod(images.shape[1:])))
    for start in range(0, rows.shape[0], chunk):
        out[start:start + chunk] = table[images[rows[start:start + chunk]], channel_ids]
    return out


def standardize_and_split(raw: RawData) -> Dataset:
    """Standardizes with training-set statistics and carves the fixed 10% validation split."""
    stats = pixel_stats(raw.train_images)
    train_indices, val_indices = validation_split_indices(raw.train_images.shape[0])
    labels = np.asarray(raw.train_labels, dtype=np.int32)
    return Dataset(
        name=raw.name,
        train=Split(standardize(raw.train_images, stats, train_indices), labels[train_indices]),
        val=Split(standardize(raw.train_images, stats, val_indices), labels[val_indices]),
        test=Split(standardize(raw.test_images, stats), np.asarray(raw.test_labels, dtype=np.int32)),
        num_classes=raw.num_classes,
    )


def describe(dataset: Dataset) -> str:
    """One-line summary: name, split sizes, image shape (H x W x C) and class count."""
    shape = 'x'.join(str(d) for d in dataset.train.images.shape[1:])
    return (f'{dataset.name}: train {dataset.train.labels.shape[0]}, val {dataset.val.labels.shape[0]}, '
            f'test {dataset.test.labels.shape[0]}, images {shape} float32, {dataset.num_classes} classes')


def remote_files(name: str, url_base: str | None = None) -> tuple[RemoteFile, ...]:
    """Files to download for `name` with TFDS-registered sizes/checksums; `url_base` replaces the server."""
    spec = _spec_for(name)
    filenames = [f + '.gz' for f in _IDX_FILES] if spec.layout == 'idx' else [_CIFAR_ARCHIVE]
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
                            f'fetch it yourself and put it in ${DATA_DIR_ENV}/{name}/.')
        url = canonical_url if not url_base else f'{url_base.rstrip("/")}/{name}/{filename}'
        files.append(RemoteFile(url=url, filename=filename, num_bytes=num_bytes, sha256=sha256))
    return tuple(files)


# ----------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------

def _spec_for(name: str) -> _Spec:
    """The dataset spec for a public name, or DataError listing the accepted names."""
    if name not in _SPECS:
        raise DataError(f'unknown dataset {name!r}; accepted names: {", ".join(DATASETS)}.')
    return _SPECS[name]


def _load_raw_spec(spec: _Spec, data_dir: str | None, source: str) -> RawData:
    """Loads the official splits described by `spec` (counts included) from `source`."""
    if source not in SOURCES:
        raise DataError(f'unknown data source {source!r}; accepted sources: {", ".join(SOURCES)}.')
    if source == 'tfds':
        return _read_tfds(spec, data_dir)
    located = _locate_or_download(spec, data_dir)
    if spec.layout == 'idx':
        return _read_idx_dataset(spec, located)
    return _read_cifar_dataset(spec, located)


def _load_spec(spec: _Spec, data_dir: str | None = None, source: str = 'files') -> Dataset:
    """`load` for an explicit spec; lets tests use small files with their own expected counts."""
    return standardize_and_split(_load_raw_spec(spec, data_dir, source))


def _require_uint8_nhwc(images: np.ndarray) -> np.ndarray:
    """Checks images are a uint8 (n, H, W, C) array."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(f'expected uint8 images of shape (n, H, W, C), got {images.dtype} {images.shape}')
    return images


# ----------------------------------------------------------------------------------------------
# Finding files on disk
# ----------------------------------------------------------------------------------------------

class _Located(NamedTuple):
    """Where a dataset's files are: for 'idx' four file paths; for 'cifar' a batch dir or an archive."""
    paths: tuple[Path, ...]


def _dir_names(name: str) -> tuple[str, ...]:
    """Subfolder names a dataset may live in, e.g. ('fashion_mnist', 'fashion-mnist')."""
    dashed = name.replace('_', '-')
    return (name,) if dashed == name else (name, dashed)


def _default_cache_dir(name: str) -> Path:
    """~/.cache/dps_jax/<name>: download target when no data_dir or $DPS_DATA_DIR is given."""
    return Path(os.path.expanduser(DEFAULT_CACHE_ROOT)) / name


def _search_dirs(name: str, data_dir: str | None) -> list[Path]:
    """Directories searched for `name`, in order, without duplicates."""
    candidates = []
    for base in (data_dir, os.environ.get(DATA_DIR_ENV)):
        if base:
            base_path = Path(os.path.expanduser(base))
            # The dataset's own subfolder first: MNIST and Fashion-MNIST share file names.
            candidates += [base_path / sub for sub in _dir_names(name)] + [base_path]
    candidates.append(Path(SYSTEM_DATA_ROOT) / name.replace('_', '-'))
    candidates.append(_default_cache_dir(name))
    unique = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def _download_dir(name: str, data_dir: str | None) -> Path:
    """Where downloads of `name` go: <data_dir or $DPS_DATA_DIR>/<name>, else ~/.cache/dps_jax/<name>."""
    base = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(os.path.expanduser(base)) / name if base else _default_cache_dir(name)


def _find_idx_files(directory: Path) -> tuple[Path, ...] | None:
    """The four IDX files in `directory` (.gz preferred), None if none is there; DataError if some are."""
    found, missing = [], []
    for stem in _IDX_FILES:
        path = next((p for p in (directory / (stem + '.gz'), directory / stem) if p.is_file()), None)
        (found if path else missing).append(path or stem)
    if not missing:
        return tuple(found)
    if found:
        raise DataError(
            f'incomplete IDX dataset in {directory}: found {", ".join(p.name for p in found)} but not '
            f'{", ".join(s + "[.gz]" for s in missing)}. All four files are needed: '
            f'{", ".join(s + ".gz" for s in _IDX_FILES)}.')
    return None


def _check_cifar_batches(directory: Path) -> None:
    """DataError naming every batch file missing from a cifar-10-batches-py directory."""
    missing = [b for b in _CIFAR_TRAIN_BATCHES + (_CIFAR_TEST_BATCH,) if not (directory / b).is_file()]
    if missing:
        raise DataError(
            f'CIFAR-10 directory {directory} is missing {", ".join(missing)}; it must hold '
            f'{", ".join(_CIFAR_TRAIN_BATCHES)} and {_CIFAR_TEST_BATCH} (from {_CIFAR_ARCHIVE}).')


def _find_cifar_files(directory: Path) -> tuple[Path, ...] | None:
    """A complete cifar-10-batches-py dir or cifar-10-python.tar.gz in `directory`, else None."""
    batch_dir = directory / _CIFAR_DIR
    if batch_dir.is_dir():
        _check_cifar_batches(batch_dir)
        return (batch_dir,)
    if any((directory / b).is_file() for b in _CIFAR_TRAIN_BATCHES + (_CIFAR_TEST_BATCH,)):
        _check_cifar_batches(directory)  # `directory` is itself an extracted cifar-10-batches-py
        return (directory,)
    archive = directory / _CIFAR_ARCHIVE
    return (archive,) if archive.is_file() else None


def _find_in(spec: _Spec, directory: Path) -> _Located | None:
    """The dataset's files in one directory, or None."""
    if not directory.is_dir():
        return None
    paths = _find_idx_files(directory) if spec.layout == 'idx' else _find_cifar_files(directory)
    return _Located(paths) if paths else None


def _expected_files_text(spec: _Spec) -> str:
    """Human description of the files a dataset needs."""
    if spec.layout == 'idx':
        return ', '.join(f + '.gz' for f in _IDX_FILES) + ' (or the same names without .gz)'
    return (f'a {_CIFAR_DIR}/ directory ({", ".join(_CIFAR_TRAIN_BATCHES)}, {_CIFAR_TEST_BATCH}) '
            f'or the archive {_CIFAR_ARCHIVE}')


def _locate_or_download(spec: _Spec, data_dir: str | None) -> _Located:
    """Finds the dataset's files in the search path, downloading them if they are nowhere."""
    searched = _search_dirs(spec.name, data_dir)
    for directory in searched:
        located = _find_in(spec, directory)
        if located:
            return located
    target = _download_dir(spec.name, data_dir)
    files = remote_files(spec.name, os.environ.get(DATA_URL_BASE_ENV) or None)
    try:
        _fetch(files, target)
    except _DownloadUnavailable as error:
        hint = _INSTALL_HINTS.get(spec.name)
        raise DataError(
            f'{spec.name} files not found and could not be downloaded ({error}). Expected '
            f'{_expected_files_text(spec)}. Searched: {"; ".join(str(d) for d in searched)}. '
            f'To fix: {hint + "; or " if hint else ""}download {", ".join(f.url for f in files)} into '
            f'{target} (or any searched directory); or set ${DATA_DIR_ENV} to a directory holding them '
            f'(directly or in a subfolder named {spec.name!r}).') from None
    located = _find_in(spec, target)
    if not located:
        raise DataError(f'downloaded {spec.name} into {target} but its files are not there afterwards.')
    return located


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------

class _DownloadUnavailable(Exception):
    """The download server could not be reached or did not deliver (offline, HTTP error)."""


def _check_reachable(url: str) -> None:
    """Raises _DownloadUnavailable fast when the URL's server cannot be connected to."""
    # TFDS's downloader retries a refused connection for minutes; one plain connect tells offline quickly.
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise _DownloadUnavailable(f'cannot reach {parts.hostname}:{port}: {error}') from None


def _fetch(files: Sequence[RemoteFile], target_dir: Path) -> None:
    """Downloads `files` into target_dir/<filename> with TFDS's DownloadManager, verifying size+sha256."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums as tfds_checksums
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    for url in sorted({f.url for f in files}):
        _check_reachable(url)
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
            raise _DownloadUnavailable(f'{type(error).__name__}: {error}') from None
        for f in files:
            # Canonical names let the directory search find the files next time.
            os.replace(downloaded[f.filename], target_dir / f.filename)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ----------------------------------------------------------------------------------------------

def _read_file_bytes(path: Path) -> bytes:
    """Whole content of a file, gunzipped when it ends in .gz; DataError naming the file on failure."""
    try:
        if path.suffix == '.gz':
            with gzip.open(path, 'rb') as stream:
                return stream.read()
        return path.read_bytes()
    except EOFError:
        raise DataError(f'{path} is truncated: the gzip stream ends early. Delete it and fetch it again.') from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f'{path} is not a valid gzip file ({error}). Delete it and fetch it again.') from None
    except OSError as error:
        raise DataError(f'cannot read {path}: {error}') from None


def _parse_idx(content: bytes, item_shape: tuple[int, ...], expected_count: int, path: Path) -> np.ndarray:
    """Decodes an unsigned-byte IDX file into uint8 (count, *item_shape); `path` only names errors."""
    ndim = 1 + len(item_shape)
    header_bytes = 4 + 4 * ndim
    expected_magic = 0x0800 + ndim  # 0x08 = unsigned byte items, low byte = number of dimensions
    if len(content) < header_bytes:
        raise DataError(f'{path} is truncated: {len(content)} bytes, shorter than its {header_bytes}-byte IDX header.')
    magic = int.from_bytes(content[:4], 'big')
    if magic != expected_magic:
        raise DataError(f'{path} has IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} '
                        f'(unsigned bytes, {ndim} dimensions); it is not the expected IDX file or is corrupt.')
    dims = struct.unpack(f'>{ndim}I', content[4:header_bytes])
    if tuple(dims[1:]) != tuple(item_shape):
        raise DataError(f'{path} holds items of shape {tuple(dims[1:])}, expected {tuple(item_shape)}.')
    if dims[0] != expected_count:
        raise DataError(f'{path} header says {dims[0]} items, expected {expected_count}.')
    payload = len(content) - header_bytes
    needed = int(np.prod(dims))
    if payload != needed:
        state = 'truncated' if payload < needed else 'followed by extra bytes'
        raise DataError(f'{path} is {state}: header promises {dims[0]} items ({needed} bytes), file holds {payload} bytes.')
    # A view on the decompressed bytes: no copy (the array is read-only).
    return np.frombuffer(content, dtype=np.uint8, offset=header_bytes).reshape(dims)


def _read_idx_split(images_path: Path, labels_path: Path, spec: _Spec, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (count, H, W, 1) and labels int32 (count,) of one official split."""
    height, width, channels = spec.image_shape
    images = _parse_idx(_read_file_bytes(images_path), (height, width), count, images_path)
    labels = _parse_idx(_read_file_bytes(labels_path), (), count, labels_path)
    if labels.size and labels.max() >= spec.num_classes:
        raise DataError(f'{labels_path} has label {labels.max()}, outside 0..{spec.num_classes - 1}.')
    return images.reshape(count, height, width, channels), labels.astype(np.int32)


def _read_idx_dataset(spec: _Spec, located: _Located) -> RawData:
    """RawData from the four IDX files (train images, train labels, test images, test labels)."""
    train_images_path, train_labels_path, test_images_path, test_labels_path = located.paths
    train_images, train_labels = _read_idx_split(train_images_path, train_labels_path, spec, spec.num_train)
    test_images, test_labels = _read_idx_split(test_images_path, test_labels_path, spec, spec.num_test)
    return RawData(spec.name, train_images, train_labels, test_images, test_labels, spec.num_classes)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 python pickles
# ----------------------------------------------------------------------------------------------

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and plain containers but never runs other code."""
    _ALLOWED = {
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
        ('copyreg', '_reconstructor'), ('builtins', 'object'),
        ('_codecs', 'encode'),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name}')
        return super().find_class(module, name)


def _parse_cifar_batch(content: bytes, spec: _Spec, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes one pickled CIFAR batch into images uint8 (n, H, W, C) and labels int32 (n,)."""
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(content), encoding='bytes').load()
    except Exception as error:  # a damaged pickle can fail in many ways; all mean "corrupt file"
        raise DataError(f'{where} is not a readable CIFAR-10 python batch ({type(error).__name__}: {error}).') from None
    if not isinstance(batch, dict) or b'data' not in batch or b'labels' not in batch:
        raise DataError(f"{where} is not a CIFAR-10 python batch: expected a dict with b'data' and b'labels'.")
    height, width, channels = spec.image_shape
    data = np.asarray(batch[b'data'])
    labels = np.asarray(batch[b'labels'])
    row_size = channels * height * width
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row_size:
        raise DataError(f"{where}: b'data' is {data.dtype} {data.shape}, expected uint8 (n, {row_size}).")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{where}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images.")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f'{where}: labels outside 0..{spec.num_classes - 1}.')
    # Rows store the red plane, then green, then blue (CHW); models want HWC.
    images = data.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def _read_cifar_members(spec: _Spec, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every batch (by file name) from a cifar-10-batches-py directory or a cifar-10-python.tar.gz."""
    wanted = _CIFAR_TRAIN_BATCHES + (_CIFAR_TEST_BATCH,)
    batches = {}
    if path.is_dir():
        for name in wanted:
            member = path / name
            try:
                content = member.read_bytes()
            except OSError as error:
                raise DataError(f'cannot read {member}: {error}') from None
            batches[name] = _parse_cifar_batch(content, spec, str(member))
        return batches
    try:
        # One sequential pass: random access into a .tar.gz would decompress it again per member.
        with tarfile.open(path, 'r:gz') as archive:
            for member in archive:
                base = member.name.rsplit('/', 1)[-1]
                if member.isfile() and base in wanted and member.name == f'{_CIFAR_DIR}/{base}':
                    content = archive.extractfile(member).read()
                    batches[base] = _parse_cifar_batch(content, spec, f'{path}:{member.name}')
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f'{path} is not a readable tar.gz archive ({type(error).__name__}: {error}). '
                        'Delete it and fetch it again.') from None
    missing = [name for name in wanted if name not in batches]
    if missing:
        raise DataError(f'{path} lacks {", ".join(f"{_CIFAR_DIR}/{m}" for m in missing)}.')
    return batches


def _read_cifar_dataset(spec: _Spec, located: _Located) -> RawData:
    """RawData from CIFAR-10 python batches: 5 training batches in order, then the test batch."""
    (path,) = located.paths
    batches = _read_cifar_members(spec, path)
    train_count = sum(batches[b][1].shape[0] for b in _CIFAR_TRAIN_BATCHES)
    test_count = batches[_CIFAR_TEST_BATCH][1].shape[0]
    if train_count != spec.num_train or test_count != spec.num_test:
        raise DataError(f'{path} holds {train_count} training / {test_count} test images, '
                        f'expected {spec.num_train} / {spec.num_test}.')
    train_images = np.empty((train_count,) + spec.image_shape, dtype=np.uint8)
    train_labels = np.empty((train_count,), dtype=np.int32)
    start = 0
    for name in _CIFAR_TRAIN_BATCHES:
        images, labels = batches.pop(name)  # pop: drop each batch once copied
        train_images[start:start + labels.shape[0]] = images
        train_labels[start:start + labels.shape[0]] = labels
        start += labels.shape[0]
    test_images, test_labels = batches.pop(_CIFAR_TEST_BATCH)
    return RawData(spec.name, train_images, train_labels, np.ascontiguousarray(test_images), test_labels,
                   spec.num_classes)


# ----------------------------------------------------------------------------------------------
# TFDS array_record datasets
# ----------------------------------------------------------------------------------------------

_TFDS_READ_CHUNK = 8192


def _tfds_record_keys(split: str, num_records: int, disable_shuffling: bool) -> np.ndarray:
    """Original example index of each stored record; TFDS stores records sorted by md5(split, key)."""
    if disable_shuffling:
        return np.arange(num_records)
    from tensorflow_datasets.core import hashing
    # These builders key example i of a split by i; TFDS's writer orders records by the salted hash
    # of the key, so sorting the keys by that hash gives the key of every stored position.
    hasher = hashing.Hasher(salt=split)
    hashes = [hasher.hash_key(key) for key in range(num_records)]
    return np.array(sorted(range(num_records), key=hashes.__getitem__), dtype=np.int64)


def _read_tfds_split(builder, spec: _Spec, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """One split of a prepared TFDS dataset in original order: uint8 (n, H, W, C), int32 (n,)."""
    where = f'TFDS {spec.name} split {split!r} in {builder.data_dir}'
    try:
        source = builder.as_data_source(split=split)
    except Exception as error:
        raise DataError(f'cannot open {where}: {type(error).__name__}: {error}') from None
    if len(source) != count:
        raise DataError(f'{where} has {len(source)} examples, expected {count}.')
    keys = _tfds_record_keys(split, count, bool(builder.info.disable_shuffling))
    images = np.empty((count,) + spec.image_shape, dtype=np.uint8)
    labels = np.empty((count,), dtype=np.int32)
    for start in range(0, count, _TFDS_READ_CHUNK):
        positions = list(range(start, min(count, start + _TFDS_READ_CHUNK)))
        try:
            records = source.__getitems__(positions)
        except Exception as error:
            raise DataError(f'cannot decode {where}: {type(error).__name__}: {error}') from None
        chunk_keys = keys[start:start + len(positions)]
        for key, record in zip(chunk_keys, records):
            if 'id' in record:  # CIFAR records name their source index; check the hash-order recovery
                record_id = record['id'].decode() if isinstance(record['id'], bytes) else str(record['id'])
                if record_id != f'{split}_{key:05d}':
                    raise DataError(f'{where}: record order not recognised (record {record_id} at key {key}).')
            image = np.asarray(record['image'])
            if image.shape != spec.image_shape:
                raise DataError(f'{where}: image of shape {image.shape}, expected {spec.image_shape}.')
            images[key] = image
            labels[key] = record['label']
    return images, labels


def _read_tfds(spec: _Spec, data_dir: str | None) -> RawData:
    """RawData from a prepared TFDS array_record dataset (data_dir or TFDS's default data dir)."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(spec.name, data_dir=data_dir)
    except Exception as error:
        raise DataError(f'TFDS cannot open dataset {spec.name!r} (data_dir={data_dir}): '
                        f'{type(error).__name__}: {error}') from None
    if not builder.is_prepared():
        raise DataError(
            f'TFDS dataset {spec.name!r} is not prepared in {builder.data_dir}. Prepare it as array_record '
            f"with tfds.builder({spec.name!r}, data_dir=..., file_format='array_record').download_and_prepare() "
            "(TFDS's own preparation of this dataset needs TensorFlow), or use source='files'.")
    file_format = str(getattr(builder.info, 'file_format', ''))
    if 'array_record' not in file_format.lower():
        raise DataError(f'TFDS dataset in {builder.data_dir} is stored as {file_format or "unknown format"}; '
                        "tfds.data_source needs file_format='array_record'.")
    train_images, train_labels = _read_tfds_split(builder, spec, 'train', spec.num_train)
    test_images, test_labels = _read_tfds_split(builder, spec, 'test', spec.num_test)
    return RawData(spec.name, train_images, train_labels, test_images, test_labels, spec.num_classes)
