"""Prepared TensorFlow Datasets read through `builder.as_data_source` (array_record, no TensorFlow).

Two uses:

* `'tfds:NAME[:SPLIT]'` names any prepared image-classification dataset. NAME is what
  `tfds.builder` accepts ('name', 'name/config', 'name:1.2.3', 'name/config:1.2.3'); after
  'tfds:', a final ':'-part that is not a version (digits.digits.digits) is the training split, a
  TFDS split expression such as 'train[:50%]' (default 'train'). ':' inside [...] does not
  separate parts. A namespaced NAME ('kaggle:ds') therefore needs an explicit split
  ('tfds:kaggle:ds:train'). The test split is 'test' when the dataset has one, else empty.
  Records are taken in the order TFDS stores them: deterministic for a prepared dataset, but
  not the order of the original source files (TFDS shuffles by a hash of each example's key).
  The dataset needs an Image feature of static shape (H, W, C) and a ClassLabel
  (`info.supervised_keys` names them, else 'image' and 'label'); uint8 pixels are divided by
  255, floating pixels taken as they are.
* the built-in names with source='tfds' (`read_builtin`): the original example order is
  recovered (`stored_index_order`), so 'tfds' and 'files' give identical splits.

`data_dir` is the TFDS data dir (None: TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets).
Nothing is ever downloaded here: an unprepared dataset is a DataError saying how to prepare it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from dps_jax.data.core import VALIDATION_DIVISOR, DataError, RawData
from dps_jax.data.files import BuiltinSpec

PREFIX = 'tfds:'
DEFAULT_TRAIN_SPLIT = 'train'
TEST_SPLIT = 'test'

_VERSION = re.compile(r'\d+\.\d+\.\d+')
# One ':'-part of a TFDS name: a dataset name, 'name/config', a namespace, a version, builder kwargs.
_NAME_PART = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_./=,\-]*')
# A TFDS split expression: 'train', 'train[:50%]', 'train[10:-10]+test', 'train[:50%](drop)'.
_SPLIT = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_\[\]:%+\-.()]*')
_READ_CHUNK = 8192  # records decoded per call: bounds the memory of one batch of decoded dicts


class TfdsName(NamedTuple):
    """A parsed 'tfds:NAME[:SPLIT]': the name tfds.builder accepts and the training split expression."""
    builder_name: str
    train_split: str


class ImageLabelFeatures(NamedTuple):
    """Where a TFDS dataset keeps its images and labels, and what they look like."""
    image_key: str
    label_key: str
    image_shape: tuple[int, int, int]
    image_dtype: np.dtype
    num_classes: int


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------

def is_tfds_name(name: Any) -> bool:
    """Whether a dataset name asks for a TFDS dataset ('tfds:...'); says nothing of its syntax."""
    return isinstance(name, str) and name.startswith(PREFIX)


def parse_tfds_name(name: str) -> TfdsName:
    """Splits 'tfds:NAME[:SPLIT]' into the TFDS builder name and the training split; DataError on bad syntax."""
    usage = "expected 'tfds:NAME[:SPLIT]', e.g. 'tfds:mnist', 'tfds:cifar10:train[:50%]', 'tfds:ds/config:1.0.0'"
    if not is_tfds_name(name):
        raise DataError(f'{name!r} is not a TFDS dataset name; {usage}.')
    parts = _top_level_parts(name[len(PREFIX):])
    if parts is None:
        raise DataError(f'{name!r} has unbalanced brackets; {usage}.')
    if len(parts) > 1 and not _VERSION.fullmatch(parts[-1]):
        name_parts, split = parts[:-1], parts[-1]
    else:
        name_parts, split = parts, DEFAULT_TRAIN_SPLIT
    bad = [part for part in name_parts if not _NAME_PART.fullmatch(part)]
    if bad:
        raise DataError(f'{name!r}: {bad[0]!r} is not a valid part of a TFDS dataset name; {usage}.')
    if not _SPLIT.fullmatch(split):
        raise DataError(f'{name!r}: {split!r} is not a TFDS split expression; {usage}.')
    return TfdsName(builder_name=':'.join(name_parts), train_split=split)


def _top_level_parts(text: str) -> list[str] | None:
    """`text` cut at every ':' outside [...] (split slices use ':'), or None if brackets do not balance."""
    parts, current, depth = [], [], 0
    for char in text:
        depth += {'[': 1, ']': -1}.get(char, 0)
        if depth < 0:
            return None
        if char == ':' and depth == 0:
            parts.append(''.join(current))
            current = []
        else:
            current.append(char)
    parts.append(''.join(current))
    return parts if depth == 0 else None


# ----------------------------------------------------------------------------------------------
# Any prepared image-classification dataset
# ----------------------------------------------------------------------------------------------

def load_raw_tfds(name: str, data_dir: str | None = None) -> RawData:
    """The training split (and 'test', when there is one) of prepared dataset 'tfds:NAME[:SPLIT]',
    in TFDS's stored order: images (n, H, W, C) uint8 or floating, labels int32 (n,)."""
    parsed = parse_tfds_name(name)
    builder = prepared_builder(parsed.builder_name, data_dir)
    where = f'TFDS dataset {parsed.builder_name!r} in {builder.data_dir}'
    features = image_label_features(builder, where)
    train_images, train_labels = _read_split(builder, parsed.train_split, features, where)
    if train_images.shape[0] < VALIDATION_DIVISOR:
        raise DataError(f'{where}: training split {parsed.train_split!r} has {train_images.shape[0]} examples; '
                        f'at least {VALIDATION_DIVISOR} are needed for a non-empty validation split.')
    if TEST_SPLIT in builder.info.splits:
        test_images, test_labels = _read_split(builder, TEST_SPLIT, features, where)
    else:
        # The study uses train and validation only; an empty test split keeps the Dataset's shape.
        test_images = np.zeros((0,) + features.image_shape, dtype=features.image_dtype)
        test_labels = np.zeros((0,), dtype=np.int32)
    return RawData(name, train_images, train_labels, test_images, test_labels, features.num_classes,
                   origin=str(builder.data_dir))


def prepared_builder(builder_name: str, data_dir: str | None, how_to_prepare: str = ''):
    """tfds.builder(builder_name) of a dataset prepared as array_record in data_dir; DataError otherwise
    (`how_to_prepare` ends the message for an unprepared one)."""
    import tensorflow_datasets as tfds
    root = data_dir or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
    try:
        builder = tfds.builder(builder_name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(f'TFDS knows no dataset {builder_name!r}: no registered builder of that name, and '
                        f'nothing prepared under it in {root}{_prepared_there(root, builder_name)}.') from None
    except Exception as error:  # bad config, version or kwargs: TFDS raises many types
        raise DataError(f'TFDS cannot open dataset {builder_name!r} (data_dir {root}): '
                        f'{type(error).__name__}: {_one_line(error)}') from None
    if not builder.is_prepared():
        how_to_prepare = how_to_prepare or ' (or `tfds build` with --file_format=array_record)'
        raise DataError(
            f'TFDS dataset {builder_name!r} is not prepared in {builder.data_dir}. dps_jax reads prepared data only '
            f"and never downloads it: prepare it with tfds.builder({builder_name!r}, data_dir={str(root)!r}, "
            f"file_format='array_record').download_and_prepare(){how_to_prepare}.")
    formats = [getattr(f, 'value', str(f)) for f in _available_formats(builder.info)]
    if 'array_record' not in formats:
        raise DataError(f'TFDS dataset {builder_name!r} in {builder.data_dir} is stored as '
                        f"{', '.join(formats) or '?'}; reading without TensorFlow needs file_format='array_record' "
                        '(prepare it again so).')
    return builder


def image_label_features(builder, where: str) -> ImageLabelFeatures:
    """The image (static (H, W, C)) and class-label features of a builder; DataError naming what is missing."""
    import tensorflow_datasets as tfds
    keys = builder.info.supervised_keys
    if keys is None:
        image_key, label_key = 'image', 'label'
    elif isinstance(keys, (tuple, list)) and len(keys) >= 2 and all(isinstance(k, str) for k in keys[:2]):
        image_key, label_key = keys[:2]
    else:
        raise DataError(f'{where} is not an image classification dataset: its supervised_keys {keys!r} '
                        'are not (image feature, label feature).')
    features = builder.info.features
    names = sorted(features.keys()) if hasattr(features, 'keys') else []
    for key in (image_key, label_key):
        if key not in names:
            raise DataError(f'{where} is not an image classification dataset: no feature {key!r} '
                            f'(features: {", ".join(names) or "none"}).')
    image, label = features[image_key], features[label_key]
    if not isinstance(image, tfds.features.Image):
        raise DataError(f'{where} is not an image classification dataset: feature {image_key!r} is '
                        f'{type(image).__name__}, not an Image.')
    shape = tuple(image.shape)
    if len(shape) != 3 or any(not isinstance(d, int) for d in shape):
        raise DataError(f'{where}: images of shape {shape}; dps_jax needs one static shape (H, W, C) '
                        'for every image (resize them when preparing the dataset).')
    dtype = np.dtype(image.np_dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise DataError(f'{where}: images are {dtype}; dps_jax reads uint8 (divided by 255) or floating pixels.')
    if not isinstance(label, tfds.features.ClassLabel):
        raise DataError(f'{where} is not an image classification dataset: feature {label_key!r} is '
                        f'{type(label).__name__}, not a ClassLabel.')
    return ImageLabelFeatures(image_key, label_key, shape, dtype, int(label.num_classes))


def _read_split(builder, split: str, features: ImageLabelFeatures, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Every record of split expression `split`, in stored order: images (n, H, W, C), labels int32 (n,)."""
    source = _data_source(builder, split, where)
    count = len(source)
    images = np.empty((count,) + features.image_shape, dtype=features.image_dtype)
    labels = np.empty((count,), dtype=np.int32)
    for position, record in _records(source, f'{where}, split {split!r}'):
        images[position] = _record_image(record[features.image_key], features.image_shape, where)
        labels[position] = record[features.label_key]
    if count and (labels.min() < 0 or labels.max() >= features.num_classes):
        raise DataError(f'{where}, split {split!r}: labels outside 0..{features.num_classes - 1}.')
    return images, labels


def _record_image(image, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """A decoded image as (H, W, C); a grayscale (H, W) decode gets its channel axis back."""
    image = np.asarray(image)
    if image.shape == shape[:2] and shape[2] == 1:
        image = image[..., None]
    if image.shape != shape:
        raise DataError(f'{where}: an image decoded to shape {image.shape}, the dataset declares {shape}.')
    return image


# ----------------------------------------------------------------------------------------------
# The built-in datasets in their original order
# ----------------------------------------------------------------------------------------------

def stored_index_order(split: str, num_examples: int) -> np.ndarray:
    """Original index of the example at each stored position of a TFDS split whose builder keys
    example i by the integer i (as TFDS's mnist, fashion_mnist and cifar10 do), int64 (n,)."""
    # TFDS's writer sorts a split's records by a 128-bit md5 of (split name as salt, key as decimal
    # text), compared as a big-endian integer; digests are big-endian bytes of equal length, so
    # comparing the bytes orders them the same way.
    salt = split.encode('utf-8')
    digests = [hashlib.md5(salt + str(index).encode('ascii')).digest() for index in range(num_examples)]
    return np.array(sorted(range(num_examples), key=digests.__getitem__), dtype=np.int64)


def read_builtin(spec: BuiltinSpec, data_dir: str | None) -> RawData:
    """RawData of a built-in dataset from its prepared TFDS array_record copy, in the original order."""
    builder = prepared_builder(spec.name, data_dir, " (TFDS's own preparation of this dataset needs TensorFlow), "
                               "or use source='files'")
    train_images, train_labels = _read_builtin_split(builder, spec, 'train', spec.num_train)
    test_images, test_labels = _read_builtin_split(builder, spec, 'test', spec.num_test)
    return RawData(spec.name, train_images, train_labels, test_images, test_labels, spec.num_classes,
                   origin=str(builder.data_dir))


def _read_builtin_split(builder, spec: BuiltinSpec, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """One split of a built-in dataset in original order: uint8 (n, H, W, C), int32 (n,)."""
    where = f'TFDS {spec.name} split {split!r} in {builder.data_dir}'
    source = _data_source(builder, split, where)
    if len(source) != count:
        raise DataError(f'{where} has {len(source)} examples, expected {count}.')
    indices = np.arange(count) if builder.info.disable_shuffling else stored_index_order(split, count)
    images = np.empty((count,) + spec.image_shape, dtype=np.uint8)
    labels = np.empty((count,), dtype=np.int32)
    for position, record in _records(source, where):
        index = indices[position]
        if 'id' in record:  # CIFAR records name their source index: a check of the order recovery
            record_id = record['id'].decode() if isinstance(record['id'], bytes) else str(record['id'])
            if record_id != f'{split}_{index:05d}':
                raise DataError(f'{where}: record order not recognised (record {record_id} at key {index}).')
        image = np.asarray(record['image'])
        if image.shape != spec.image_shape:
            raise DataError(f'{where}: image of shape {image.shape}, expected {spec.image_shape}.')
        images[index] = image
        labels[index] = record['label']
    return images, labels


# ----------------------------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------------------------

def _data_source(builder, split: str, where: str):
    """builder.as_data_source(split); DataError (with TFDS's reason) for an unknown or malformed split."""
    try:
        return builder.as_data_source(split=split)
    except Exception as error:  # unknown split, bad slice, unreadable files: TFDS raises many types
        raise DataError(f'cannot read split {split!r} of {where}: {_one_line(error)}') from None


def _records(source, where: str) -> Iterator[tuple[int, dict]]:
    """(stored position, decoded record) for every record of a data source, decoded in chunks."""
    for start in range(0, len(source), _READ_CHUNK):
        positions = list(range(start, min(len(source), start + _READ_CHUNK)))
        try:
            records = source.__getitems__(positions)
        except Exception as error:  # a damaged file fails in the decoder, whatever its type
            raise DataError(f'cannot decode {where}: {type(error).__name__}: {_one_line(error)}') from None
        yield from zip(positions, records)


def _available_formats(info) -> list:
    """The file formats a prepared dataset is stored in (older TFDS: only info.file_format)."""
    if hasattr(info, 'available_file_formats'):
        return list(info.available_file_formats())
    return [info.file_format] if info.file_format else []


def _prepared_there(root: str, builder_name: str) -> str:
    """', where <dir> holds: a, b' listing the configs / versions prepared under the dataset's folder."""
    base = [part for part in builder_name.split(':') if not _VERSION.fullmatch(part)][-1].split('/')[0]
    folder = Path(os.path.expanduser(root)) / base
    if not folder.is_dir():
        return ''
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return f'; {folder} holds: {", ".join(found)}' if found else ''


def _one_line(error: Exception) -> str:
    """An exception's message on one line (TFDS's messages span many)."""
    text = ' '.join(str(error).split())
    return text if len(text) <= 300 else text[:297] + '...'
