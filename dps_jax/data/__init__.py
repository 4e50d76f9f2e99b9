"""Image classification data as standardized NHWC numpy splits: the built-in MNIST, Fashion-MNIST and
CIFAR-10, any prepared TFDS image-classification dataset ('tfds:NAME[:SPLIT]'), or arrays from Python.

`load(name)` returns train / validation / test splits held in memory:

* pixels (uint8 divided by 255) are standardized with the per-channel mean and std of ALL
  training images (before the validation split); the single-channel MNIST-likes have one value;
* validation is a fixed 10% of the training set, chosen by `np.random.RandomState(0).permutation`;
  both index sets are kept sorted;
* test is the official test set ('tfds:' datasets without a 'test' split: empty).

Built-in names read from `source`: 'files' (the original distribution files found on disk, or
downloaded with verified checksums: see `files` and `download`) or 'tfds' (a prepared TFDS
array_record copy, in the original example order). A 'tfds:' name always reads through TFDS,
whatever `source` says (see `tfds` for the name's rules); `data_dir` is then the TFDS data dir.
`from_arrays` applies the same split and standardization to arrays a user already holds.

Modules: core (types, split and standardization rules, from_arrays), files (file formats and the
search on disk), download (remote files, checksums), tfds (TFDS reading). Every problem a user can
fix (name, source, missing, unprepared or corrupt data, bad arrays) raises DataError.
"""

from __future__ import annotations

import os

from dps_jax.data import core, download, files, tfds
from dps_jax.data.core import (VALIDATION_DIVISOR, VALIDATION_SEED, DataError, Dataset, PixelStats, RawData, Split,
                               describe, from_arrays, pixel_stats, standardize, standardize_and_split,
                               validation_split_indices)
from dps_jax.data.download import DATA_URL_BASE_ENV, RemoteFile, remote_files
from dps_jax.data.files import DATA_DIR_ENV, DATASETS, BuiltinSpec
from dps_jax.data.tfds import TfdsName, is_tfds_name, parse_tfds_name

SOURCES = ('files', 'tfds')

__all__ = [
    'load', 'load_raw', 'load_raw_spec', 'from_arrays', 'check_dataset_name',
    'Dataset', 'Split', 'RawData', 'PixelStats', 'DataError', 'BuiltinSpec', 'RemoteFile', 'TfdsName',
    'DATASETS', 'SOURCES', 'DATA_DIR_ENV', 'DATA_URL_BASE_ENV', 'VALIDATION_SEED', 'VALIDATION_DIVISOR',
    'describe', 'known_train_examples', 'pixel_stats', 'validation_split_indices', 'standardize',
    'standardize_and_split', 'remote_files', 'is_tfds_name', 'parse_tfds_name',
    'core', 'files', 'download', 'tfds',
]


def load(name: str, data_dir: str | None = None, source: str = 'files') -> Dataset:
    """Loads dataset `name` (a built-in name or 'tfds:NAME[:SPLIT]') as standardized float32 NHWC
    train / val / test splits."""
    return standardize_and_split(load_raw(name, data_dir, source))


def load_raw(name: str, data_dir: str | None = None, source: str = 'files') -> RawData:
    """The official train / test splits of `name`: images (n, H, W, C) uint8 (floating for a 'tfds:'
    dataset with floating images), labels int32 (n,). `source` applies to built-in names only."""
    if data_dir and os.path.isfile(os.path.expanduser(data_dir)):
        raise DataError(f'data_dir={data_dir!r} is a file, not a folder.')
    if is_tfds_name(name):
        _check_source(source)
        return tfds.load_raw_tfds(name, data_dir)
    return load_raw_spec(files.spec_for_name(name), data_dir, source)


def load_raw_spec(spec: BuiltinSpec, data_dir: str | None = None, source: str = 'files') -> RawData:
    """`load_raw` of a built-in dataset described by `spec` (its counts are checked against the data)."""
    _check_source(source)
    if source == 'tfds':
        return tfds.read_builtin(spec, data_dir)
    return files.read_located(spec, download.locate_or_download(spec, data_dir))


def known_train_examples(name: str) -> int | None:
    """The training split's size of a built-in dataset, known without reading it (54,000 for the
    MNIST-likes, 45,000 for CIFAR-10); None for any other name."""
    spec = files.SPECS.get(name)
    return None if spec is None else spec.num_train - spec.num_train // VALIDATION_DIVISOR


def check_dataset_name(name: str) -> None:
    """DataError unless `name` is a built-in name or a syntactically valid 'tfds:NAME[:SPLIT]'."""
    if is_tfds_name(name):
        parse_tfds_name(name)
    else:
        files.spec_for_name(name)


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise DataError(f'unknown data source {source!r}; accepted sources: {", ".join(SOURCES)}.')
