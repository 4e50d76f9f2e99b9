"""The built-in datasets' own files: MNIST / Fashion-MNIST IDX files, CIFAR-10 python batches, and
where on disk they are looked for.

Search order (first directory holding the files wins): `data_dir`/<name>, `data_dir`/<name with - for _>,
`data_dir` itself; the same three under $DPS_DATA_DIR; /usr/share/datasets/<name with - for _>
(Debian's dataset packages); ~/.cache/dps_jax/<name>. A directory holding only some of a dataset's
files is an error, not skipped. `download.locate_or_download` adds the download when nothing is found.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dps_jax.data.core import DataError, RawData

DATASETS = ('mnist', 'fashion_mnist', 'cifar10')

# Environment variable naming a directory searched for dataset files (and used as the download cache).
DATA_DIR_ENV = 'DPS_DATA_DIR'
# Where Debian's dataset packages install their files (e.g. `apt-get install dataset-fashion-mnist`).
SYSTEM_DATA_ROOT = '/usr/share/datasets'
# Download cache used when neither data_dir nor $DPS_DATA_DIR is given.
DEFAULT_CACHE_ROOT = '~/.cache/dps_jax'

IDX_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
             't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
CIFAR_DIR = 'cifar-10-batches-py'
CIFAR_ARCHIVE = 'cifar-10-python.tar.gz'
CIFAR_TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
CIFAR_TEST_BATCH = 'test_batch'


class BuiltinSpec(NamedTuple):
    """What a built-in dataset looks like on disk and in memory; counts are per official split."""
    name: str
    layout: str  # 'idx' (four IDX files) or 'cifar' (python pickle batches)
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    num_classes: int


SPECS = {
    'mnist': BuiltinSpec('mnist', 'idx', (28, 28, 1), 60000, 10000, 10),
    'fashion_mnist': BuiltinSpec('fashion_mnist', 'idx', (28, 28, 1), 60000, 10000, 10),
    'cifar10': BuiltinSpec('cifar10', 'cifar', (32, 32, 3), 50000, 10000, 10),
}


def spec_for_name(name: str) -> BuiltinSpec:
    """The spec of a built-in name, or DataError listing the accepted names."""
    if name not in SPECS:
        raise DataError(f'unknown dataset {name!r}; accepted names: {", ".join(DATASETS)}, '
                        "or 'tfds:NAME[:SPLIT]' for a prepared TFDS image classification dataset.")
    return SPECS[name]


def read_located(spec: BuiltinSpec, located: Located) -> RawData:
    """RawData from the files `located` found for `spec`."""
    if spec.layout == 'idx':
        return _read_idx_dataset(spec, located)
    return _read_cifar_dataset(spec, located)


# ----------------------------------------------------------------------------------------------
# Finding files on disk
# ----------------------------------------------------------------------------------------------

class Located(NamedTuple):
    """Where a dataset's files are: for 'idx' four file paths; for 'cifar' a batch dir or an archive."""
    paths: tuple[Path, ...]


def _dir_names(name: str) -> tuple[str, ...]:
    """Subfolder names a dataset may live in, e.g. ('fashion_mnist', 'fashion-mnist')."""
    dashed = name.replace('_', '-')
    return (name,) if dashed == name else (name, dashed)


def default_cache_dir(name: str) -> Path:
    """~/.cache/dps_jax/<name>: download target when no data_dir or $DPS_DATA_DIR is given."""
    return Path(os.path.expanduser(DEFAULT_CACHE_ROOT)) / name


def search_dirs(name: str, data_dir: str | None) -> list[Path]:
    """Directories searched for `name`, in order, without duplicates."""
    candidates = []
    for base in (data_dir, os.environ.get(DATA_DIR_ENV)):
        if base:
            base_path = Path(os.path.expanduser(base))
            # The dataset's own subfolder first: MNIST and Fashion-MNIST share file names.
            candidates += [base_path / sub for sub in _dir_names(name)] + [base_path]
    candidates.append(Path(SYSTEM_DATA_ROOT) / name.replace('_', '-'))
    candidates.append(default_cache_dir(name))
    unique = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def download_dir(name: str, data_dir: str | None) -> Path:
    """Where downloads of `name` go: <data_dir or $DPS_DATA_DIR>/<name>, else ~/.cache/dps_jax/<name>."""
    base = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(os.path.expanduser(base)) / name if base else default_cache_dir(name)


def _find_idx_files(directory: Path) -> tuple[Path, ...] | None:
    """The four IDX files in `directory` (.gz preferred), None if none is there; DataError if some are."""
    found, missing = [], []
    for stem in IDX_FILES:
        path = next((p for p in (directory / (stem + '.gz'), directory / stem) if p.is_file()), None)
        (found if path else missing).append(path or stem)
    if not missing:
        return tuple(found)
    if found:
        raise DataError(
            f'incomplete IDX dataset in {directory}: found {", ".join(p.name for p in found)} but not '
            f'{", ".join(s + "[.gz]" for s in missing)}. All four files are needed: '
            f'{", ".join(s + ".gz" for s in IDX_FILES)}.')
    return None


def _check_cifar_batches(directory: Path) -> None:
    """DataError naming every batch file missing from a cifar-10-batches-py directory."""
    missing = [b for b in CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,) if not (directory / b).is_file()]
    if missing:
        raise DataError(
            f'CIFAR-10 directory {directory} is missing {", ".join(missing)}; it must hold '
            f'{", ".join(CIFAR_TRAIN_BATCHES)} and {CIFAR_TEST_BATCH} (from {CIFAR_ARCHIVE}).')


def _find_cifar_files(directory: Path) -> tuple[Path, ...] | None:
    """A complete cifar-10-batches-py dir or cifar-10-python.tar.gz in `directory`, else None."""
    batch_dir = directory / CIFAR_DIR
    if batch_dir.is_dir():
        _check_cifar_batches(batch_dir)
        return (batch_dir,)
    if any((directory / b).is_file() for b in CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,)):
        _check_cifar_batches(directory)  # `directory` is itself an extracted cifar-10-batches-py
        return (directory,)
    archive = directory / CIFAR_ARCHIVE
    return (archive,) if archive.is_file() else None


def find_in(spec: BuiltinSpec, directory: Path) -> Located | None:
    """The dataset's files in one directory, or None."""
    if not directory.is_dir():
        return None
    paths = _find_idx_files(directory) if spec.layout == 'idx' else _find_cifar_files(directory)
    return Located(paths) if paths else None


def expected_files_text(spec: BuiltinSpec) -> str:
    """Human description of the files a dataset needs."""
    if spec.layout == 'idx':
        return ', '.join(f + '.gz' for f in IDX_FILES) + ' (or the same names without .gz)'
    return (f'a {CIFAR_DIR}/ directory ({", ".join(CIFAR_TRAIN_BATCHES)}, {CIFAR_TEST_BATCH}) '
            f'or the archive {CIFAR_ARCHIVE}')


def locate(spec: BuiltinSpec, data_dir: str | None) -> Located | None:
    """The dataset's files in the first searched directory that holds them, or None."""
    for directory in search_dirs(spec.name, data_dir):
        located = find_in(spec, directory)
        if located:
            return located
    return None


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


def _read_idx_split(images_path: Path, labels_path: Path, spec: BuiltinSpec, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (count, H, W, 1) and labels int32 (count,) of one official split."""
    height, width, channels = spec.image_shape
    images = _parse_idx(_read_file_bytes(images_path), (height, width), count, images_path)
    labels = _parse_idx(_read_file_bytes(labels_path), (), count, labels_path)
    if labels.size and labels.max() >= spec.num_classes:
        raise DataError(f'{labels_path} has label {labels.max()}, outside 0..{spec.num_classes - 1}.')
    return images.reshape(count, height, width, channels), labels.astype(np.int32)


def _read_idx_dataset(spec: BuiltinSpec, located: Located) -> RawData:
    """RawData from the four IDX files (train images, train labels, test images, test labels)."""
    train_images_path, train_labels_path, test_images_path, test_labels_path = located.paths
    train_images, train_labels = _read_idx_split(train_images_path, train_labels_path, spec, spec.num_train)
    test_images, test_labels = _read_idx_split(test_images_path, test_labels_path, spec, spec.num_test)
    return RawData(spec.name, train_images, train_labels, test_images, test_labels, spec.num_classes,
                   origin=str(train_images_path.parent))


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


def _parse_cifar_batch(content: bytes, spec: BuiltinSpec, where: str) -> tuple[np.ndarray, np.ndarray]:
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


def _read_cifar_members(spec: BuiltinSpec, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every batch (by file name) from a cifar-10-batches-py directory or a cifar-10-python.tar.gz."""
    wanted = CIFAR_TRAIN_BATCHES + (CIFAR_TEST_BATCH,)
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
                if member.isfile() and base in wanted and member.name == f'{CIFAR_DIR}/{base}':
                    content = archive.extractfile(member).read()
                    batches[base] = _parse_cifar_batch(content, spec, f'{path}:{member.name}')
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f'{path} is not a readable tar.gz archive ({type(error).__name__}: {error}). '
                        'Delete it and fetch it again.') from None
    missing = [name for name in wanted if name not in batches]
    if missing:
        raise DataError(f'{path} lacks {", ".join(f"{CIFAR_DIR}/{m}" for m in missing)}.')
    return batches


def _read_cifar_dataset(spec: BuiltinSpec, located: Located) -> RawData:
    """RawData from CIFAR-10 python batches: 5 training batches in order, then the test batch."""
    (path,) = located.paths
    batches = _read_cifar_members(spec, path)
    train_count = sum(batches[b][1].shape[0] for b in CIFAR_TRAIN_BATCHES)
    test_count = batches[CIFAR_TEST_BATCH][1].shape[0]
    if train_count != spec.num_train or test_count != spec.num_test:
        raise DataError(f'{path} holds {train_count} training / {test_count} test images, '
                        f'expected {spec.num_train} / {spec.num_test}.')
    train_images = np.empty((train_count,) + spec.image_shape, dtype=np.uint8)
    train_labels = np.empty((train_count,), dtype=np.int32)
    start = 0
    for name in CIFAR_TRAIN_BATCHES:
        images, labels = batches.pop(name)  # pop: drop each batch once copied
        train_images[start:start + labels.shape[0]] = images
        train_labels[start:start + labels.shape[0]] = labels
        start += labels.shape[0]
    test_images, test_labels = batches.pop(CIFAR_TEST_BATCH)
    return RawData(spec.name, train_images, train_labels, np.ascontiguousarray(test_images), test_labels,
                   spec.num_classes, origin=str(path))

