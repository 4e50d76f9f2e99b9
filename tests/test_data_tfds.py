"""Tests for dps_jax.data's open workloads: 'tfds:' names, any prepared TFDS image-classification
dataset, arrays from Python, and the recovery of TFDS's stored order for the built-in names."""

from __future__ import annotations

import numpy as np
import pytest

from dps_jax import config as config_lib
from dps_jax import data
from tests import tiny_tfds

NUM_TRAIN, NUM_TEST = 300, 60


# ----------------------------------------------------------------------------------------------
# Independent expectations
# ----------------------------------------------------------------------------------------------

def independent_split(n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule: first n//10 of RandomState(0).permutation are validation; both sorted."""
    perm = np.random.RandomState(0).permutation(n_train)
    n_val = n_train // 10
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def independent_standardization(train: np.ndarray, others: list[np.ndarray], scale: float):
    """(x / scale - mean) / std in float64 with the per-channel mean / std of all of `train`, cast to float32."""
    x = train.astype(np.float64) / scale
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    return [((a.astype(np.float64) / scale - mean) / std).astype(np.float32) for a in [train] + others]


def read_records_directly(builder_name: str, data_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a split read one record at a time with tfds.data_source, in stored order."""
    import tensorflow_datasets as tfds
    source = tfds.data_source(builder_name, data_dir=str(data_dir), split=split)
    records = [source[i] for i in range(len(source))]
    return np.stack([r['image'] for r in records]), np.array([r['label'] for r in records])


def assert_dataset_matches(dataset: data.Dataset, train_images, train_labels, test_images, test_labels, scale):
    """The dataset equals the documented split + standardization computed with numpy from the raw arrays."""
    train_full, test_full = independent_standardization(train_images, [test_images], scale)
    train_idx, val_idx = independent_split(len(train_labels))
    np.testing.assert_allclose(dataset.train.images, train_full[train_idx], rtol=0, atol=1e-5)
    np.testing.assert_allclose(dataset.val.images, train_full[val_idx], rtol=0, atol=1e-5)
    np.testing.assert_allclose(dataset.test.images, test_full, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(dataset.train.labels, train_labels[train_idx])
    np.testing.assert_array_equal(dataset.val.labels, train_labels[val_idx])
    np.testing.assert_array_equal(dataset.test.labels, test_labels)
    for split in (dataset.train, dataset.val, dataset.test):
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int32


def one_line_error(call) -> str:
    """The DataError message of `call()`, checked to be one line."""
    with pytest.raises(data.DataError) as info:
        call()
    message = str(info.value)
    assert '\n' not in message
    return message


# ----------------------------------------------------------------------------------------------
# Tiny prepared datasets
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('tfds_data')


@pytest.fixture(scope='module')
def tiny_gray(tfds_dir) -> str:
    """'tfds:...' of the tiny 8x8x1, 4-class dataset with train and test splits."""
    return tiny_tfds.prepare_tiny_image_dataset(str(tfds_dir), num_train=NUM_TRAIN, num_test=NUM_TEST)


@pytest.fixture(scope='module')
def tiny_rgb(tfds_dir) -> str:
    """'tfds:...' of a 16x16x3, 10-class tiny dataset without a test split, under another name."""
    return tiny_tfds.prepare_tiny_image_dataset(str(tfds_dir), name='dps_tiny_rgb', num_train=120, num_test=0,
                                                image_shape=(16, 16, 3), num_classes=10)


def prepare_odd_dataset(data_dir, name: str, make_features, supervised_keys, make_example) -> str:
    """Prepares a 12-example array_record dataset with the features given; returns 'tfds:<name>'."""
    import tensorflow_datasets as tfds
    builder_name = name

    class OddDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = builder_name
        VERSION = tfds.core.Version('1.0.0')

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(make_features()),
                                         supervised_keys=supervised_keys)

        def _split_generators(self, dl_manager):
            return {'train': self._generate_examples()}

        def _generate_examples(self):
            for index in range(12):
                yield index, make_example(index)

    OddDataset(data_dir=str(data_dir), file_format='array_record').download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return f'tfds:{name}'


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, builder_name, split', [
    ('tfds:mnist', 'mnist', 'train'),
    ('tfds:mnist/config', 'mnist/config', 'train'),
    ('tfds:mnist:3.0.1', 'mnist:3.0.1', 'train'),
    ('tfds:ds/config:1.2.3', 'ds/config:1.2.3', 'train'),
    ('tfds:mnist:test', 'mnist', 'test'),
    ('tfds:mnist:train[:50%]', 'mnist', 'train[:50%]'),
    ('tfds:ds/config:1.2.3:train[10:-20]+test', 'ds/config:1.2.3', 'train[10:-20]+test'),
    ('tfds:kaggle:ds:train', 'kaggle:ds', 'train'),
    ('tfds:kaggle:ds', 'kaggle', 'ds'),  # the rule: a final part that is not a version is the split
])
def test_tfds_name_rules(name, builder_name, split):
    assert data.parse_tfds_name(name) == (builder_name, split)
    assert data.is_tfds_name(name)
    data.check_dataset_name(name)


@pytest.mark.parametrize('name, problem', [
    ('tfds:', "'' is not a valid part"),
    ('tfds::train', "'' is not a valid part"),
    ('tfds:mnist:', "'' is not a TFDS split"),
    ('tfds:mnist:train[:50%', 'unbalanced brackets'),
    ('tfds:mnist:train]', 'unbalanced brackets'),
    ('tfds:mn ist', "'mn ist' is not a valid part"),
    ('tfds:/config', "'/config' is not a valid part"),
    ('tfds:mnist:train split', "'train split' is not a TFDS split"),
])
def test_malformed_tfds_names_rejected(name, problem):
    assert problem in one_line_error(lambda: data.parse_tfds_name(name))
    assert problem in one_line_error(lambda: data.load(name))


def test_builtin_names_are_not_tfds_names():
    assert not data.is_tfds_name('mnist') and not data.is_tfds_name('TFDS:mnist') and not data.is_tfds_name(None)
    for name in data.DATASETS:
        data.check_dataset_name(name)
    assert "'tfds:NAME[:SPLIT]'" in one_line_error(lambda: data.check_dataset_name('imagenet'))


def test_config_accepts_builtin_and_tfds_names_only():
    config = config_lib.base_study_config()
    for dataset in ('mnist', 'cifar10', 'tfds:any_dataset/config:1.0.0:train[:50%]'):
        config.dataset = dataset
        config_lib.validate_study_config(config, 54000)
    for dataset, problem in (('imagenet', 'unknown dataset'), ('tfds:', 'not a valid part'),
                             ('tfds:mnist:train[', 'unbalanced')):
        config.dataset = dataset
        with pytest.raises(config_lib.ConfigError) as info:
            config_lib.validate_study_config(config, 54000)
        message = str(info.value)
        assert message.startswith(f'config.dataset={dataset!r}') and problem in message and '\n' not in message


# ----------------------------------------------------------------------------------------------
# Loading prepared TFDS datasets
# ----------------------------------------------------------------------------------------------

def test_tfds_dataset_equals_numpy_on_records_read_directly(tiny_gray, tfds_dir):
    builder_name = tiny_gray[len('tfds:'):]
    train_images, train_labels = read_records_directly(builder_name, tfds_dir, 'train')
    test_images, test_labels = read_records_directly(builder_name, tfds_dir, 'test')
    dataset = data.load(tiny_gray, data_dir=str(tfds_dir))
    assert dataset.name == tiny_gray and dataset.num_classes == 4
    assert (len(dataset.train.labels), len(dataset.val.labels), len(dataset.test.labels)) == (270, 30, NUM_TEST)
    assert dataset.train.images.shape[1:] == (8, 8, 1)
    assert_dataset_matches(dataset, train_images, train_labels, test_images, test_labels, 255.0)
    # The records are the generated examples (in TFDS's stored order, which is not the generation order).
    generated, generated_labels = tiny_tfds.tiny_shapes_arrays((8, 8, 1), 4, NUM_TRAIN, (0, 0))
    assert sorted(map(bytes, train_images)) == sorted(map(bytes, generated))
    assert not np.array_equal(train_labels, generated_labels)
    np.testing.assert_array_equal(np.bincount(train_labels), np.bincount(generated_labels))


def test_tfds_train_split_expression(tiny_gray, tfds_dir):
    builder_name = tiny_gray[len('tfds:'):]
    train_images, train_labels = read_records_directly(builder_name, tfds_dir, 'train')
    test_images, test_labels = read_records_directly(builder_name, tfds_dir, 'test')
    half = NUM_TRAIN // 2
    dataset = data.load(tiny_gray + ':train[:50%]', data_dir=str(tfds_dir))
    assert len(dataset.train.labels) + len(dataset.val.labels) == half
    # Statistics, split and records all come from the first half of the stored training records.
    assert_dataset_matches(dataset, train_images[:half], train_labels[:half], test_images, test_labels, 255.0)
    from_test = data.load(tiny_gray + ':test', data_dir=str(tfds_dir))
    assert len(from_test.train.labels) + len(from_test.val.labels) == NUM_TEST


def test_tfds_rgb_per_channel_and_no_test_split(tiny_rgb, tfds_dir):
    train_images, train_labels = read_records_directly(tiny_rgb[len('tfds:'):], tfds_dir, 'train')
    dataset = data.load(tiny_rgb, data_dir=str(tfds_dir))
    assert dataset.num_classes == 10 and dataset.train.images.shape[1:] == (16, 16, 3)
    assert dataset.test.images.shape == (0, 16, 16, 3) and dataset.test.labels.shape == (0,)
    empty = np.zeros((0, 16, 16, 3), np.uint8)
    assert_dataset_matches(dataset, train_images, train_labels, empty, np.zeros(0, np.int32), 255.0)
    # The comparison above tells per-channel from global statistics: they differ by more than its tolerance.
    x = train_images / 255.0
    globally = ((x - x.mean()) / x.std()).astype(np.float32)
    assert np.abs(globally[independent_split(len(train_labels))[1]] - dataset.val.images).max() > 1e-4


def test_source_argument_does_not_apply_to_tfds_names(tiny_gray, tfds_dir):
    via_files = data.load(tiny_gray, data_dir=str(tfds_dir), source='files')
    via_tfds = data.load(tiny_gray, data_dir=str(tfds_dir), source='tfds')
    np.testing.assert_array_equal(via_files.val.images, via_tfds.val.images)


def test_tiny_dataset_is_learnable(tiny_gray, tfds_dir):
    dataset = data.load(tiny_gray, data_dir=str(tfds_dir))
    flat_train = dataset.train.images.reshape(len(dataset.train.labels), -1)
    centroids = np.stack([flat_train[dataset.train.labels == k].mean(axis=0) for k in range(dataset.num_classes)])
    distances = ((dataset.val.images.reshape(len(dataset.val.labels), 1, -1) - centroids[None]) ** 2).sum(-1)
    assert np.mean(distances.argmin(axis=1) != dataset.val.labels) < 0.05  # even nearest-centroid separates it


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_unknown_tfds_dataset(tmp_path):
    message = one_line_error(lambda: data.load('tfds:dps_no_such_dataset', data_dir=str(tmp_path)))
    assert "TFDS knows no dataset 'dps_no_such_dataset'" in message and str(tmp_path) in message


def test_registered_but_unprepared_dataset_says_where_and_how(tmp_path):
    message = one_line_error(lambda: data.load('tfds:mnist', data_dir=str(tmp_path)))
    assert f'not prepared in {tmp_path}' in message
    assert "file_format='array_record').download_and_prepare()" in message and 'never downloads' in message
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created


def test_unprepared_config_lists_the_prepared_ones(tiny_gray, tfds_dir):
    message = one_line_error(lambda: data.load('tfds:dps_tiny_shapes/other_config', data_dir=str(tfds_dir)))
    assert 'TFDS knows no dataset' in message and tiny_gray.split('/')[-1] in message


def test_dataset_not_stored_as_array_record(tmp_path):
    pytest.importorskip('pyarrow')  # TFDS writes parquet with pyarrow (tfrecord would need TensorFlow)
    import tensorflow_datasets as tfds
    config = tiny_tfds.TinyShapesConfig(name='parquet', version='1.0.0', num_train=20, num_test=0)
    tiny_tfds.TinyShapes(data_dir=str(tmp_path), config=config, file_format='parquet').download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    message = one_line_error(lambda: data.load('tfds:dps_tiny_shapes/parquet', data_dir=str(tmp_path)))
    assert 'stored as parquet' in message and "file_format='array_record'" in message


def _image_label_features(image_shape=(4, 4, 1)):
    import tensorflow_datasets as tfds
    return {'image': tfds.features.Image(shape=image_shape, dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=2)}


def _png(height: int, width: int) -> bytes:
    import io

    import PIL.Image
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((height, width), 7, np.uint8)).save(buffer, format='png')
    return buffer.getvalue()


@pytest.mark.parametrize('case, problem', [
    ('label_not_class_label', "feature 'label' is Tensor, not a ClassLabel"),
    ('image_of_any_size', 'needs one static shape (H, W, C)'),
    ('no_image_feature', "no feature 'image' (features: label, pixels)"),
    ('supervised_image_not_image', "feature 'pixels' is Tensor, not an Image"),
])
def test_not_image_classification(tmp_path, case, problem):
    import tensorflow_datasets as tfds
    features, keys, example = _image_label_features, ('image', 'label'), lambda i: {'image': _png(4, 4), 'label': i % 2}
    if case == 'label_not_class_label':
        features = lambda: {'image': tfds.features.Image(shape=(4, 4, 1), dtype=np.uint8),  # noqa: E731
                            'label': tfds.features.Tensor(shape=(), dtype=np.int64)}
    elif case == 'image_of_any_size':
        features = lambda: _image_label_features((None, None, 1))  # noqa: E731
        example = lambda i: {'image': _png(4 + i, 5), 'label': i % 2}  # noqa: E731
    else:
        features = lambda: {'pixels': tfds.features.Tensor(shape=(4, 4), dtype=np.uint8),  # noqa: E731
                            'label': tfds.features.ClassLabel(num_classes=2)}
        example = lambda i: {'pixels': np.full((4, 4), i, np.uint8), 'label': i % 2}  # noqa: E731
        keys = None if case == 'no_image_feature' else ('pixels', 'label')
    name = prepare_odd_dataset(tmp_path, f'dps_odd_{case}', features, keys, example)
    message = one_line_error(lambda: data.load(name, data_dir=str(tmp_path)))
    assert problem in message and name[len('tfds:'):] in message


def test_missing_or_tiny_split(tiny_gray, tfds_dir):
    message = one_line_error(lambda: data.load(tiny_gray + ':validation', data_dir=str(tfds_dir)))
    assert "cannot read split 'validation'" in message and "Unknown split 'validation'" in message
    message = one_line_error(lambda: data.load(tiny_gray + ':train[:5]', data_dir=str(tfds_dir)))
    assert 'has 5 examples; at least 10' in message


# ----------------------------------------------------------------------------------------------
# Arrays from Python
# ----------------------------------------------------------------------------------------------

def test_from_arrays_uint8_grayscale_equals_numpy():
    rng = np.random.default_rng(1)
    train, test = rng.integers(0, 256, (40, 5, 6), np.uint8), rng.integers(0, 256, (7, 5, 6), np.uint8)
    train_labels, test_labels = rng.integers(0, 3, 40), rng.integers(0, 3, 7)
    dataset = data.from_arrays(train, train_labels, test, test_labels, name='mine')
    assert dataset.name == 'mine' and dataset.num_classes == int(max(train_labels.max(), test_labels.max())) + 1
    assert dataset.train.images.shape == (36, 5, 6, 1) and dataset.val.images.shape == (4, 5, 6, 1)
    assert_dataset_matches(dataset, train[..., None], train_labels, test[..., None], test_labels, 255.0)


def test_from_arrays_float_rgb_taken_as_is_and_no_test():
    rng = np.random.default_rng(2)
    train = rng.normal([3.0, -1.0, 100.0], [0.5, 2.0, 10.0], (25, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 5, 25)
    dataset = data.from_arrays(train, labels, num_classes=7)
    assert dataset.num_classes == 7 and dataset.test.images.shape == (0, 4, 4, 3)
    # scale 1: floating pixels are not divided by 255
    assert_dataset_matches(dataset, train, labels, np.zeros((0, 4, 4, 3), np.float32), np.zeros(0, np.int32), 1.0)
    both = np.concatenate([dataset.train.images, dataset.val.images]).astype(np.float64)
    np.testing.assert_allclose(both.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(both.std(axis=(0, 1, 2)), 1, atol=1e-5)


def test_from_arrays_uint8_matches_builtin_rule():
    """uint8 arrays go through exactly the path of the built-in datasets (RawData -> standardize_and_split)."""
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (30, 3, 3, 2), np.uint8), rng.integers(0, 4, 30)
    raw = data.RawData('arrays', images, labels.astype(np.int32), images[:0], np.zeros(0, np.int32), 4)
    expected, got = data.standardize_and_split(raw), data.from_arrays(images, labels, num_classes=4)
    for a, b in zip((expected.train, expected.val), (got.train, got.val)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def _arrays_case(case):
    rng = np.random.default_rng(4)
    train, labels = rng.integers(0, 256, (12, 4, 4, 1), np.uint8), np.arange(12) % 3
    test, test_labels = train[:3], labels[:3]
    if case == 'flat_images':
        return (train.reshape(12, 16), labels), {}
    if case == 'int_images':
        return (train.astype(np.int64), labels), {}
    if case == 'float_labels':
        return (train, labels.astype(np.float32)), {}
    if case == 'length_mismatch':
        return (train, labels[:11]), {}
    if case == 'label_too_large':
        return (train, labels), {'num_classes': 2}
    if case == 'negative_label':
        return (train, labels - 1), {}
    if case == 'too_few':
        return (train[:9], labels[:9]), {}
    if case == 'non_finite':
        images = train.astype(np.float32)
        images[3, 1, 1, 0] = np.nan
        return (images, labels), {}
    if case == 'test_shape':
        return (train, labels, test[:, :3], test_labels), {}
    if case == 'test_without_labels':
        return (train, labels, test), {}
    if case == 'mixed_dtypes':
        return (train, labels, test.astype(np.float32), test_labels), {}
    if case == 'constant_channel':
        return (np.zeros_like(train), labels), {}
    if case == 'bad_num_classes':
        return (train, labels), {'num_classes': 0}
    raise AssertionError(case)


@pytest.mark.parametrize('case, problem', [
    ('flat_images', 'expected (N, H, W, C) or (N, H, W)'),
    ('int_images', 'train_images are int64'),
    ('float_labels', 'train_labels are float32'),
    ('length_mismatch', '11 train_labels for 12 images'),
    ('label_too_large', 'outside [0, 2)'),
    ('negative_label', 'range over [-1, 1]'),
    ('too_few', '9 training examples; at least 10'),
    ('non_finite', '1 non-finite pixels'),
    ('test_shape', 'test_images have shape (N, 3, 4, 1)'),
    ('test_without_labels', 'both test_images and test_labels'),
    ('mixed_dtypes', 'both must be uint8 or both floating'),
    ('constant_channel', 'constant (std 0)'),
    ('bad_num_classes', 'num_classes=0 must be a positive integer'),
])
def test_from_arrays_errors(case, problem):
    args, kwargs = _arrays_case(case)
    assert problem in one_line_error(lambda: data.from_arrays(*args, **kwargs))


# ----------------------------------------------------------------------------------------------
# The built-in names through TFDS: our stored-order recovery pinned to TFDS's hashing
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(data.files.SPECS))
def test_stored_order_equals_tfds_hashing(name):
    """For every dataset source='tfds' serves, both splits: our md5 order = TFDS's own hashing's."""
    from tensorflow_datasets.core import hashing
    spec = data.files.SPECS[name]
    for split, count in (('train', spec.num_train), ('test', spec.num_test)):
        hasher = hashing.Hasher(salt=split)
        expected = sorted(range(count), key=hasher.hash_key)
        np.testing.assert_array_equal(data.tfds.stored_index_order(split, count), expected)
