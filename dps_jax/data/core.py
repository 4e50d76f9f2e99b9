"""What every dataset becomes: the split types, the validation rule, standardization, and arrays from Python.

Whatever the source (built-in files, TFDS, numpy arrays), the official splits end up as a RawData
and go through the same two rules here:

* validation is a fixed 10% of the training set, chosen by `np.random.RandomState(0).permutation`;
  both index sets are kept sorted;
* pixels (uint8 divided by 255; floating pixels as they are) are standardized with the per-channel
  mean and std of ALL training images (before the validation split).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

VALIDATION_SEED = 0
VALIDATION_DIVISOR = 10  # validation gets n_train // 10 of the official training images

# Pixels processed per block: keeps temporary copies (bincount's int64, float64 images) small.
_BLOCK_PIXELS = 1 << 21


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
    origin: str = ''  # where it was read from (RawData.origin); '' for arrays given in Python


class RawData(NamedTuple):
    """Official splits as decoded: images (n, H, W, C) uint8 (or floating, taken as they are),
    labels int32 (n,); arrays may be read-only."""
    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    origin: str = ''  # where it was read from (a folder, an archive, a TFDS data dir); '' for arrays


class PixelStats(NamedTuple):
    """Per-channel mean and std (population, ddof=0) of the pixels (uint8 / 255), float64 arrays (C,)."""
    mean: np.ndarray
    std: np.ndarray


def pixel_stats(train_images: np.ndarray) -> PixelStats:
    """Per-channel mean / std of images (n, H, W, C), uint8 after dividing by 255, in float64."""
    images = _require_nhwc_pixels(train_images)
    if images.dtype != np.uint8:
        return _float_pixel_stats(images)
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


def _float_pixel_stats(images: np.ndarray) -> PixelStats:
    """Per-channel mean / std of floating images (n, H, W, C), in float64, two passes over blocks."""
    num_channels = images.shape[-1]
    chunk = _rows_per_block(images)
    total = np.zeros(num_channels)
    for start in range(0, images.shape[0], chunk):
        total += images[start:start + chunk].astype(np.float64).reshape(-1, num_channels).sum(axis=0)
    count = images.size // num_channels
    mean = total / count
    # Deviations from the mean, not E[x^2] - E[x]^2: no cancellation for data far from zero.
    squares = np.zeros(num_channels)
    for start in range(0, images.shape[0], chunk):
        block = images[start:start + chunk].astype(np.float64).reshape(-1, num_channels)
        squares += ((block - mean) ** 2).sum(axis=0)
    return PixelStats(mean=mean, std=np.sqrt(squares / count))


def validation_split_indices(num_train: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train_indices, val_indices), both sorted int arrays, of the official training set."""
    permutation = np.random.RandomState(VALIDATION_SEED).permutation(num_train)
    num_val = num_train // VALIDATION_DIVISOR
    return np.sort(permutation[num_val:]), np.sort(permutation[:num_val])


def standardize(images: np.ndarray, stats: PixelStats, indices: np.ndarray | None = None) -> np.ndarray:
    """Maps images (n, H, W, C) (optionally only rows `indices`) to float32 ((x - mean) / std),
    x = uint8 / 255 or the floating pixels."""
    images = _require_nhwc_pixels(images)
    num_channels = images.shape[-1]
    if stats.mean.shape != (num_channels,) or stats.std.shape != (num_channels,):
        raise DataError(f'pixel statistics have shape {stats.mean.shape}, images have {num_channels} channels')
    rows = np.arange(images.shape[0]) if indices is None else np.asarray(indices)
    out = np.empty((rows.shape[0],) + images.shape[1:], dtype=np.float32)
    chunk = _rows_per_block(images)
    if images.dtype != np.uint8:
        for start in range(0, rows.shape[0], chunk):
            block = images[rows[start:start + chunk]].astype(np.float64)
            out[start:start + chunk] = (block - stats.mean) / stats.std
        return out
    # Every uint8 value maps to one float: a 256-entry table computed in float64 gives exactly the
    # float64-then-cast result, with a single float32 output array and no float64 image copy.
    table = ((np.arange(256, dtype=np.float64)[:, None] / 255.0 - stats.mean[None, :])
             / stats.std[None, :]).astype(np.float32)
    channel_ids = np.arange(num_channels)
    for start in range(0, rows.shape[0], chunk):
        out[start:start + chunk] = table[images[rows[start:start + chunk]], channel_ids]
    return out


def standardize_and_split(raw: RawData) -> Dataset:
    """Standardizes with training-set statistics and carves the fixed 10% validation split."""
    stats = pixel_stats(raw.train_images)
    constant = np.flatnonzero(stats.std == 0)
    if constant.size:
        # Dividing by a zero std would fill the channel with nan.
        raise DataError(f'{raw.name}: channel(s) {", ".join(map(str, constant))} of the training images '
                        f'are constant (std 0), so they cannot be standardized.')
    train_indices, val_indices = validation_split_indices(raw.train_images.shape[0])
    labels = np.asarray(raw.train_labels, dtype=np.int32)
    return Dataset(
        name=raw.name,
        train=Split(standardize(raw.train_images, stats, train_indices), labels[train_indices]),
        val=Split(standardize(raw.train_images, stats, val_indices), labels[val_indices]),
        test=Split(standardize(raw.test_images, stats), np.asarray(raw.test_labels, dtype=np.int32)),
        num_classes=raw.num_classes,
        origin=raw.origin,
    )


def describe(dataset: Dataset) -> str:
    """One-line summary: name, where it was read from, split sizes, image shape (H x W x C) and class count."""
    shape = 'x'.join(str(d) for d in dataset.train.images.shape[1:])
    origin = f' (from {dataset.origin})' if dataset.origin else ''
    return (f'{dataset.name}{origin}: train {dataset.train.labels.shape[0]}, val {dataset.val.labels.shape[0]}, '
            f'test {dataset.test.labels.shape[0]}, images {shape} float32, {dataset.num_classes} classes')


# ----------------------------------------------------------------------------------------------
# Arrays from Python
# ----------------------------------------------------------------------------------------------

def from_arrays(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray | None = None,
                test_labels: np.ndarray | None = None, *, num_classes: int | None = None,
                name: str = 'arrays') -> Dataset:
    """A Dataset from numpy arrays: images (N, H, W, C) or (N, H, W), uint8 (divided by 255) or
    floating (as they are); labels integers (N,) in [0, num_classes). The built-in datasets' rules
    apply: 10% validation split of the training arrays, standardization with their statistics.
    Without test arrays the test split is empty. num_classes defaults to the largest label + 1."""
    train_images = _array_images(train_images, 'train_images')
    train_labels = _array_labels(train_labels, 'train_labels', train_images.shape[0])
    if (test_images is None) != (test_labels is None):
        raise DataError('from_arrays: give both test_images and test_labels, or neither.')
    if test_images is None:
        test_images = np.zeros((0,) + train_images.shape[1:], dtype=train_images.dtype)
        test_labels = np.zeros((0,), dtype=np.int64)
    else:
        test_images = _array_images(test_images, 'test_images')
        test_labels = _array_labels(test_labels, 'test_labels', test_images.shape[0])
        if test_images.shape[1:] != train_images.shape[1:]:
            raise DataError(f'from_arrays: test_images have shape (N, {", ".join(map(str, test_images.shape[1:]))}), '
                            f'train_images (N, {", ".join(map(str, train_images.shape[1:]))}).')
        if (test_images.dtype == np.uint8) != (train_images.dtype == np.uint8):
            # uint8 pixels are divided by 255 and floating ones are not: mixing them would mis-scale one split.
            raise DataError(f'from_arrays: train_images are {train_images.dtype} and test_images {test_images.dtype}; '
                            'both must be uint8 or both floating.')
    if train_images.shape[0] < VALIDATION_DIVISOR:
        raise DataError(f'from_arrays: {train_images.shape[0]} training examples; at least {VALIDATION_DIVISOR} '
                        f'are needed for a non-empty validation split (1 in {VALIDATION_DIVISOR}).')
    largest = max(int(train_labels.max()), int(test_labels.max()) if test_labels.size else -1)
    if num_classes is None:
        num_classes = largest + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DataError(f'from_arrays: num_classes={num_classes!r} must be a positive integer.')
    for labels, what in ((train_labels, 'train_labels'), (test_labels, 'test_labels')):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f'from_arrays: {what} range over [{labels.min()}, {labels.max()}], '
                            f'outside [0, {num_classes}) (num_classes={num_classes}).')
    raw = RawData(name, train_images, train_labels.astype(np.int32), test_images, test_labels.astype(np.int32),
                  int(num_classes))
    return standardize_and_split(raw)


def _array_images(images, what: str) -> np.ndarray:
    """Checked images (N, H, W, C) from a (N, H, W[, C]) uint8 or floating array with finite values."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]  # grayscale (N, H, W): one channel
    if images.ndim != 4 or 0 in images.shape[1:]:
        raise DataError(f'from_arrays: {what} have shape {images.shape}; expected (N, H, W, C) or (N, H, W).')
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DataError(f'from_arrays: {what} are {images.dtype}; expected uint8 (0..255, divided by 255) '
                        'or floating (taken as they are).')
    if images.dtype != np.uint8 and not np.all(np.isfinite(images)):
        raise DataError(f'from_arrays: {what} hold {np.count_nonzero(~np.isfinite(images))} non-finite pixels '
                        '(nan or inf).')
    return images


def _array_labels(labels, what: str, count: int) -> np.ndarray:
    """Checked integer labels (count,)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f'from_arrays: {what} are {labels.dtype} of shape {labels.shape}; expected integers (N,).')
    if labels.shape[0] != count:
        raise DataError(f'from_arrays: {labels.shape[0]} {what} for {count} images.')
    return labels


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

def _require_nhwc_pixels(images: np.ndarray) -> np.ndarray:
    """Checks images are a uint8 or floating (n, H, W, C) array."""
    images = np.asarray(images)
    if images.ndim != 4 or (images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating)):
        raise DataError(f'expected uint8 or floating images of shape (n, H, W, C), got {images.dtype} {images.shape}')
    return images


def _rows_per_block(images: np.ndarray) -> int:
    """Images per block so that one block holds about _BLOCK_PIXELS values."""
    return max(1, _BLOCK_PIXELS // max(1, int(np.prod(images.shape[1:]))))
