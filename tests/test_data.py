"""Tests for dps_jax.data: decoding, standardization, splits, errors, download and TFDS reading."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dps_jax import data
from tests.real_data import FASHION_MNIST_DIR, IDX_NAMES, needs_fashion_mnist

REAL_FASHION_DIR = FASHION_MNIST_DIR or Path('/usr/share/datasets/fashion-mnist')
needs_real_fashion = needs_fashion_mnist

SMALL_TRAIN, SMALL_TEST = 50, 12
SMALL_MNIST = data.files.SPECS['mnist']._replace(num_train=SMALL_TRAIN, num_test=SMALL_TEST)
CIFAR_PER_BATCH, CIFAR_TEST = 4, 6
SMALL_CIFAR = data.files.SPECS['cifar10']._replace(num_train=5 * CIFAR_PER_BATCH, num_test=CIFAR_TEST)


# ----------------------------------------------------------------------------------------------
# Helpers: independent writers of the on-disk formats and independent expectations
# ----------------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, magic: int | None = None, count: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: big-endian magic, dims, raw bytes (overridable magic/count)."""
    magic = 0x0800 + array.ndim if magic is None else magic
    dims = list(array.shape)
    dims[0] = dims[0] if count is None else count
    header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in dims)
    return header + array.astype(np.uint8).tobytes()


def write_file(path: Path, content: bytes, compress: bool = True) -> Path:
    """Writes content, gzipped when `compress` (then the name gets .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + '.gz')
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def make_idx_dataset(directory: Path, seed: int = 0, compress: bool = True,
                     n_train: int = SMALL_TRAIN, n_test: int = SMALL_TEST) -> dict[str, np.ndarray]:
    """Writes four small random IDX files into directory and returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        'train-images-idx3-ubyte': rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        'train-labels-idx1-ubyte': rng.integers(0, 10, (n_train,), dtype=np.uint8),
        't10k-images-idx3-ubyte': rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        't10k-labels-idx1-ubyte': rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_file(directory / name, idx_bytes(array), compress)
    return arrays


def load_spec(spec, data_dir: str | None, source: str = 'files') -> data.Dataset:
    """`data.load` of a built-in dataset with a spec of its own (small test files, their own counts)."""
    return data.standardize_and_split(data.load_raw_spec(spec, data_dir, source))


def expected_standardized(train_uint8: np.ndarray, per_channel_axes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent numpy standardization: returns (standardized float32, mean, std) from float64 math."""
    x = train_uint8.astype(np.float64) / 255.0
    mean = x.mean(axis=per_channel_axes)
    std = x.std(axis=per_channel_axes)
    return ((x - mean) / std).astype(np.float32), mean, std


def independent_split(n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented rule: first n//10 of RandomState(0).permutation are validation; both sorted."""
    perm = np.random.RandomState(0).permutation(n_train)
    n_val = n_train // 10
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No system datasets, no $DPS_DATA_DIR, cache under tmp: only what a test creates is found."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(data.DATA_URL_BASE_ENV, raising=False)
    monkeypatch.setattr(data.files, 'SYSTEM_DATA_ROOT', str(tmp_path / 'system'))
    monkeypatch.setattr(data.files, 'DEFAULT_CACHE_ROOT', str(tmp_path / 'cache'))
    return tmp_path


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture
def http_root(tmp_path):
    """Serves tmp_path/'www' over loopback HTTP in a thread; yields (root dir, base URL)."""
    root = tmp_path / 'www'
    root.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


# ----------------------------------------------------------------------------------------------
# IDX decoding, standardization, split
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('compress', [True, False])
def test_idx_values_decoded_exactly(isolated, compress):
    arrays = make_idx_dataset(isolated / 'd', compress=compress)
    raw = data.load_raw_spec(SMALL_MNIST, str(isolated / 'd'), 'files')
    assert raw.train_images.shape == (SMALL_TRAIN, 28, 28, 1) and raw.train_images.dtype == np.uint8
    np.testing.assert_array_equal(raw.train_images[..., 0], arrays['train-images-idx3-ubyte'])
    np.testing.assert_array_equal(raw.test_images[..., 0], arrays['t10k-images-idx3-ubyte'])
    assert raw.train_labels.dtype == np.int32
    np.testing.assert_array_equal(raw.train_labels, arrays['train-labels-idx1-ubyte'])
    np.testing.assert_array_equal(raw.test_labels, arrays['t10k-labels-idx1-ubyte'])


def test_idx_standardization_and_split_match_independent_numpy(isolated):
    arrays = make_idx_dataset(isolated / 'd')
    ds = load_spec(SMALL_MNIST, str(isolated / 'd'))
    train_uint8 = arrays['train-images-idx3-ubyte'][..., None]
    full, mean, std = expected_standardized(train_uint8, None)  # ONE global mean/std
    test_full = ((arrays['t10k-images-idx3-ubyte'][..., None] / 255.0 - mean) / std).astype(np.float32)
    train_idx, val_idx = independent_split(SMALL_TRAIN)

    assert (ds.train.images.shape[0], ds.val.images.shape[0], ds.test.images.shape[0]) == (45, 5, SMALL_TEST)
    assert ds.train.images.dtype == np.float32 and ds.train.labels.dtype == np.int32
    np.testing.assert_allclose(ds.train.images, full[train_idx], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.val.images, full[val_idx], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.test.images, test_full, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ds.train.labels, arrays['train-labels-idx1-ubyte'][train_idx])
    np.testing.assert_array_equal(ds.val.labels, arrays['train-labels-idx1-ubyte'][val_idx])
    # Mean 0 / std 1 holds over the FULL training set (train + val), not over train alone.
    both = np.concatenate([ds.train.images, ds.val.images]).astype(np.float64)
    assert abs(both.mean()) < 1e-6 and abs(both.std() - 1) < 1e-6
    stats = data.pixel_stats(train_uint8)
    np.testing.assert_allclose(stats.mean, [mean], rtol=1e-12)
    np.testing.assert_allclose(stats.std, [std], rtol=1e-12)
    assert ds.num_classes == 10 and ds.name == 'mnist'


def test_validation_indices_follow_randomstate_rule():
    for n in (10, 60000, 50000):
        train_idx, val_idx = data.validation_split_indices(n)
        expected_train, expected_val = independent_split(n)
        np.testing.assert_array_equal(train_idx, expected_train)
        np.testing.assert_array_equal(val_idx, expected_val)
        assert len(val_idx) == n // 10 and np.intersect1d(train_idx, val_idx).size == 0
        assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)


def test_load_is_deterministic(isolated):
    make_idx_dataset(isolated / 'd', seed=3)
    first = load_spec(SMALL_MNIST, str(isolated / 'd'))
    second = load_spec(SMALL_MNIST, str(isolated / 'd'))
    for a, b in zip((first.train, first.val, first.test), (second.train, second.val, second.test)):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_describe_one_line(isolated):
    make_idx_dataset(isolated / 'd')
    text = data.describe(load_spec(SMALL_MNIST, str(isolated / 'd')))
    assert '\n' not in text
    assert text.startswith(f'mnist (from {isolated / "d"}): ') and 'train 45' in text and 'val 5' in text
    assert 'test 12' in text and '28x28x1' in text


def test_a_data_dir_that_is_a_file_is_refused_rather_than_searched_past(isolated):
    make_idx_dataset(isolated / 'system' / 'mnist')  # a copy the search would otherwise fall back to
    (isolated / 'not_a_folder').write_text('')
    with pytest.raises(data.DataError, match=r"data_dir='.*not_a_folder' is a file, not a folder"):
        data.load('mnist', str(isolated / 'not_a_folder'))


# ----------------------------------------------------------------------------------------------
# Search order
# ----------------------------------------------------------------------------------------------

def test_search_order_data_dir_subfolder_env_then_system(isolated, monkeypatch):
    env_dir, system_root = isolated / 'env', isolated / 'system'
    in_dashed_sub = make_idx_dataset(isolated / 'given' / 'fashion-mnist', seed=1)
    in_env = make_idx_dataset(env_dir / 'fashion_mnist', seed=2)
    in_system = make_idx_dataset(system_root / 'fashion-mnist', seed=3)
    spec = data.files.SPECS['fashion_mnist']._replace(num_train=SMALL_TRAIN, num_test=SMALL_TEST)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(env_dir))

    def first_label_file(data_dir):
        return data.load_raw_spec(spec, data_dir, 'files').train_labels

    np.testing.assert_array_equal(first_label_file(str(isolated / 'given')), in_dashed_sub['train-labels-idx1-ubyte'])
    np.testing.assert_array_equal(first_label_file(None), in_env['train-labels-idx1-ubyte'])
    monkeypatch.delenv(data.DATA_DIR_ENV)
    np.testing.assert_array_equal(first_label_file(None), in_system['train-labels-idx1-ubyte'])


def test_files_directly_in_data_dir(isolated):
    arrays = make_idx_dataset(isolated / 'flat', compress=False)
    raw = data.load_raw_spec(SMALL_MNIST, str(isolated / 'flat'), 'files')
    np.testing.assert_array_equal(raw.test_labels, arrays['t10k-labels-idx1-ubyte'])


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

def test_unknown_name_lists_accepted():
    with pytest.raises(data.DataError, match='unknown dataset') as info:
        data.load('imagenet')
    assert all(name in str(info.value) for name in data.DATASETS)


def test_unknown_source_lists_accepted():
    with pytest.raises(data.DataError, match='unknown data source') as info:
        data.load('mnist', source='s3')
    assert all(source in str(info.value) for source in data.SOURCES)


def _corrupt_one(directory: Path, name: str, content: bytes, compress: bool = True) -> Path:
    for old in directory.glob(name + '*'):
        old.unlink()
    return write_file(directory / name, content, compress)


@pytest.mark.parametrize('case, pattern', [
    ('wrong_magic', 'magic number 0x00000804'),
    ('header_count', 'header says 49 items, expected 50'),
    ('short_payload', 'truncated: header promises 50 items'),
    ('labels_count', 'header says 11 items, expected 12'),
    ('truncated_gzip', 'truncated: the gzip stream ends early'),
    ('bad_gzip', 'not a valid gzip file'),
    ('label_range', 'outside 0..9'),
])
def test_corrupt_idx_files_raise_dataerror_naming_file(isolated, case, pattern):
    directory = isolated / 'd'
    arrays = make_idx_dataset(directory)
    images = arrays['train-images-idx3-ubyte']
    if case == 'wrong_magic':
        bad = _corrupt_one(directory, 'train-images-idx3-ubyte', idx_bytes(images, magic=0x0804))
    elif case == 'header_count':
        bad = _corrupt_one(directory, 'train-images-idx3-ubyte', idx_bytes(images[:49]))
    elif case == 'short_payload':
        bad = _corrupt_one(directory, 'train-images-idx3-ubyte', idx_bytes(images)[:-100])
    elif case == 'labels_count':
        bad = _corrupt_one(directory, 't10k-labels-idx1-ubyte', idx_bytes(arrays['t10k-labels-idx1-ubyte'][:11]))
    elif case == 'truncated_gzip':
        bad = directory / 'train-images-idx3-ubyte.gz'
        bad.write_bytes(bad.read_bytes()[:2000])
    elif case == 'bad_gzip':
        bad = directory / 'train-labels-idx1-ubyte.gz'
        bad.write_bytes(b'this is not gzip data at all')
    else:
        labels = arrays['train-labels-idx1-ubyte'].copy()
        labels[7] = 12
        bad = _corrupt_one(directory, 'train-labels-idx1-ubyte', idx_bytes(labels))
    with pytest.raises(data.DataError, match=pattern) as info:
        load_spec(SMALL_MNIST, str(directory))
    assert str(bad) in str(info.value)


def test_public_load_checks_official_counts(isolated):
    make_idx_dataset(isolated / 'd')  # 50 training images, not 60000
    with pytest.raises(data.DataError, match='header says 50 items, expected 60000') as info:
        data.load('mnist', data_dir=str(isolated / 'd'))
    assert 'train-images-idx3-ubyte.gz' in str(info.value)


def test_incomplete_idx_set_names_missing_file(isolated):
    make_idx_dataset(isolated / 'd')
    (isolated / 'd' / 't10k-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(data.DataError, match='t10k-labels-idx1-ubyte') as info:
        load_spec(SMALL_MNIST, str(isolated / 'd'))
    assert 'incomplete' in str(info.value) and str(isolated / 'd') in str(info.value)


def test_missing_everywhere_offline_message(isolated, monkeypatch):
    env_dir = isolated / 'env'
    env_dir.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(env_dir))
    monkeypatch.setenv(data.DATA_URL_BASE_ENV, f'http://127.0.0.1:{closed_port()}')
    start = time.perf_counter()
    with pytest.raises(data.DataError) as info:
        data.load('fashion_mnist', data_dir=str(isolated / 'given'))
    assert time.perf_counter() - start < 30  # offline is detected quickly, without minutes of retries
    message = str(info.value)
    for name in IDX_NAMES:
        assert name + '.gz' in message
    for place in (isolated / 'given' / 'fashion_mnist', isolated / 'given' / 'fashion-mnist', isolated / 'given',
                  env_dir / 'fashion_mnist', env_dir / 'fashion-mnist', env_dir,
                  isolated / 'system' / 'fashion-mnist', isolated / 'cache' / 'fashion_mnist'):
        assert str(place) in message
    assert 'apt-get install dataset-fashion-mnist' in message
    assert 'DPS_DATA_DIR' in message and 'cannot reach' in message
    assert '/fashion_mnist/train-images-idx3-ubyte.gz' in message  # the URLs to fetch


# ----------------------------------------------------------------------------------------------
# Downloading over loopback HTTP
# ----------------------------------------------------------------------------------------------

def _remote_for(path: Path, url: str, sha256: str | None = None) -> data.RemoteFile:
    content = path.read_bytes()
    return data.RemoteFile(url=url, filename=path.name, num_bytes=len(content),
                           sha256=sha256 or hashlib.sha256(content).hexdigest())


def test_fetch_verifies_checksum(isolated, http_root):
    root, base = http_root
    served = write_file(root / 'blob', os.urandom(5000))
    good = _remote_for(served, f'{base}/blob.gz')
    data.download.fetch([good], isolated / 'ok')
    assert (isolated / 'ok' / 'blob.gz').read_bytes() == served.read_bytes()
    assert sorted(p.name for p in (isolated / 'ok').iterdir()) == ['blob.gz']  # staging cleaned up

    wrong = good._replace(sha256='0' * 64)
    with pytest.raises(data.DataError, match='checksum') as info:
        data.download.fetch([wrong], isolated / 'bad')
    assert good.url in str(info.value)
    assert not (isolated / 'bad' / 'blob.gz').exists()


def test_fetch_http_404_is_download_failure(isolated, http_root):
    _, base = http_root
    with pytest.raises(data.download.DownloadUnavailable, match='404'):
        data.download.fetch([data.RemoteFile(f'{base}/nothing.gz', 'nothing.gz', 1, '0' * 64)], isolated / 'x')


def test_remote_files_use_tfds_registered_checksums(monkeypatch):
    files = data.remote_files('mnist')
    assert [f.filename for f in files] == [n + '.gz' for n in IDX_NAMES]
    # Independent expectation: the published MNIST train-images size and sha256.
    assert files[0].url == 'https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz'
    assert files[0].num_bytes == 9912422
    assert files[0].sha256 == '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609'
    mirrored = data.remote_files('fashion_mnist', 'http://mirror.example/data/')
    assert mirrored[3].url == 'http://mirror.example/data/fashion_mnist/t10k-labels-idx1-ubyte.gz'
    (cifar,) = data.remote_files('cifar10')
    assert cifar.filename == 'cifar-10-python.tar.gz' and cifar.num_bytes == 170498071


@needs_real_fashion
def test_download_then_load_real_files(isolated, http_root, monkeypatch):
    root, base = http_root
    (root / 'fashion_mnist').mkdir()
    for name in IDX_NAMES:
        shutil.copy(REAL_FASHION_DIR / (name + '.gz'), root / 'fashion_mnist')
    monkeypatch.setenv(data.DATA_URL_BASE_ENV, base)
    given = isolated / 'given'

    # Debian re-compressed these files, so TFDS's registered checksums (of the upstream .gz) reject them.
    with pytest.raises(data.DataError, match='checksum'):
        data.load('fashion_mnist', data_dir=str(given))
    assert not (given / 'fashion_mnist' / 'train-images-idx3-ubyte.gz').exists()

    # With checksums of the served files the download is accepted and loads.
    original = data.remote_files
    monkeypatch.setattr(data.download, 'remote_files', lambda name, url_base=None: tuple(
        _remote_for(root / name / f.filename, f.url) for f in original(name, url_base)))
    downloaded = data.load_raw('fashion_mnist', data_dir=str(given))
    for name in IDX_NAMES:
        assert (given / 'fashion_mnist' / (name + '.gz')).read_bytes() == (REAL_FASHION_DIR / (name + '.gz')).read_bytes()
    reference = data.load_raw('fashion_mnist', data_dir=str(REAL_FASHION_DIR))
    np.testing.assert_array_equal(downloaded.train_images, reference.train_images)
    np.testing.assert_array_equal(downloaded.test_labels, reference.test_labels)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# ----------------------------------------------------------------------------------------------

def make_cifar(directory: Path, seed: int = 0, protocol: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Writes a small cifar-10-batches-py dir; returns HWC (train images, train labels, test images, labels)."""
    rng = np.random.default_rng(seed)
    n_train = 5 * CIFAR_PER_BATCH
    train_hwc = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    # Distinct per-channel levels make the per-channel statistics clearly different.
    train_hwc[..., 0] //= 4
    train_hwc[..., 2] = 128 + train_hwc[..., 2] // 2
    test_hwc = rng.integers(0, 256, (CIFAR_TEST, 32, 32, 3), dtype=np.uint8)
    train_labels = rng.integers(0, 10, n_train)
    test_labels = rng.integers(0, 10, CIFAR_TEST)
    batch_dir = directory / 'cifar-10-batches-py'
    batch_dir.mkdir(parents=True)

    def dump(name, hwc, labels):
        rows = hwc.transpose(0, 3, 1, 2).reshape(len(hwc), 3 * 32 * 32)  # CHW rows as in the real files
        batch = {b'batch_label': name.encode(), b'labels': [int(v) for v in labels], b'data': rows,
                 b'filenames': [b'x.png'] * len(hwc)}
        (batch_dir / name).write_bytes(pickle.dumps(batch, protocol=protocol))

    for i in range(5):
        part = slice(i * CIFAR_PER_BATCH, (i + 1) * CIFAR_PER_BATCH)
        dump(f'data_batch_{i + 1}', train_hwc[part], train_labels[part])
    dump('test_batch', test_hwc, test_labels)
    return train_hwc, train_labels, test_hwc, test_labels


def make_cifar_archive(batch_parent: Path, archive: Path) -> None:
    with tarfile.open(archive, 'w:gz') as tar:
        tar.add(batch_parent / 'cifar-10-batches-py', arcname='cifar-10-batches-py')


@pytest.mark.parametrize('protocol', [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_layout_and_per_channel_standardization(isolated, protocol):
    train_hwc, train_labels, test_hwc, test_labels = make_cifar(isolated / 'c', protocol=protocol)
    raw = data.load_raw_spec(SMALL_CIFAR, str(isolated / 'c'), 'files')
    np.testing.assert_array_equal(raw.train_images, train_hwc)  # CHW rows became HWC images
    np.testing.assert_array_equal(raw.test_images, test_hwc)
    np.testing.assert_array_equal(raw.train_labels, train_labels)
    np.testing.assert_array_equal(raw.test_labels, test_labels)

    ds = load_spec(SMALL_CIFAR, str(isolated / 'c'))
    full, mean, std = expected_standardized(train_hwc, (0, 1, 2))
    assert mean.shape == (3,) and np.ptp(mean) > 0.2  # per channel, not global
    train_idx, val_idx = independent_split(5 * CIFAR_PER_BATCH)
    assert ds.train.images.shape == (18, 32, 32, 3) and ds.val.images.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(ds.train.images, full[train_idx], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.val.images, full[val_idx], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.test.images, ((test_hwc / 255.0 - mean) / std).astype(np.float32), atol=1e-6)
    both = np.concatenate([ds.train.images, ds.val.images]).astype(np.float64)
    np.testing.assert_allclose(both.mean(axis=(0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(both.std(axis=(0, 1, 2)), 1, atol=1e-6)


def test_cifar_archive_equals_directory(isolated):
    make_cifar(isolated / 'c')
    (isolated / 'a').mkdir()
    make_cifar_archive(isolated / 'c', isolated / 'a' / 'cifar-10-python.tar.gz')
    from_dir = data.load_raw_spec(SMALL_CIFAR, str(isolated / 'c'), 'files')
    from_archive = data.load_raw_spec(SMALL_CIFAR, str(isolated / 'a'), 'files')
    for a, b in zip(from_dir[1:5], from_archive[1:5]):
        np.testing.assert_array_equal(a, b)


def test_cifar_missing_batch_named(isolated):
    make_cifar(isolated / 'c')
    (isolated / 'c' / 'cifar-10-batches-py' / 'data_batch_3').unlink()
    with pytest.raises(data.DataError, match='missing data_batch_3'):
        load_spec(SMALL_CIFAR, str(isolated / 'c'))
    (isolated / 'a').mkdir()
    make_cifar_archive(isolated / 'c', isolated / 'a' / 'cifar-10-python.tar.gz')
    with pytest.raises(data.DataError, match='cifar-10-batches-py/data_batch_3') as info:
        load_spec(SMALL_CIFAR, str(isolated / 'a'))
    assert 'cifar-10-python.tar.gz' in str(info.value)


def test_cifar_truncated_archive_and_count(isolated):
    make_cifar(isolated / 'c')
    (isolated / 'a').mkdir()
    archive = isolated / 'a' / 'cifar-10-python.tar.gz'
    make_cifar_archive(isolated / 'c', archive)
    with pytest.raises(data.DataError, match='expected 50000 / 10000'):
        data.load('cifar10', data_dir=str(isolated / 'a'))
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(data.DataError, match='not a readable tar.gz') as info:
        load_spec(SMALL_CIFAR, str(isolated / 'a'))
    assert str(archive) in str(info.value)


def test_cifar_pickle_cannot_run_code(isolated):
    make_cifar(isolated / 'c')
    evil = isolated / 'c' / 'cifar-10-batches-py' / 'data_batch_2'
    evil.write_bytes(pickle.dumps(io.BytesIO(b'x')))  # any non-array class
    with pytest.raises(data.DataError, match='refusing to load') as info:
        load_spec(SMALL_CIFAR, str(isolated / 'c'))
    assert str(evil) in str(info.value)


# ----------------------------------------------------------------------------------------------
# Real Fashion-MNIST
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def real_fashion():
    """Real Fashion-MNIST (tests/real_data.py finds it), with the load time in seconds."""
    start = time.perf_counter()
    dataset = data.load('fashion_mnist', data_dir=str(REAL_FASHION_DIR))
    return dataset, time.perf_counter() - start


@needs_real_fashion
def test_real_fashion_mnist(real_fashion):
    ds, seconds = real_fashion
    # Speed is a benchmark's business, not a test's: with two test workers on two cores a time bound
    # here would fail by load, not by a regression. The time is printed for the record.
    print(f'Fashion-MNIST load from .gz files: {seconds:.2f} s')
    assert (len(ds.train.labels), len(ds.val.labels), len(ds.test.labels)) == (54000, 6000, 10000)
    assert ds.train.images.shape == (54000, 28, 28, 1) and ds.test.images.shape == (10000, 28, 28, 1)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int32
    both_labels = np.concatenate([ds.train.labels, ds.val.labels])
    assert both_labels.min() == 0 and both_labels.max() == 9
    np.testing.assert_array_equal(np.bincount(both_labels, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test.labels, minlength=10), [1000] * 10)
    both = np.concatenate([ds.train.images, ds.val.images])
    assert abs(float(both.mean(dtype=np.float64))) < 1e-4
    assert abs(float(both.std(dtype=np.float64)) - 1) < 1e-4


@needs_real_fashion
def test_real_fashion_statistics_before_standardization():
    raw = data.load_raw('fashion_mnist', data_dir=str(REAL_FASHION_DIR))
    stats = data.pixel_stats(raw.train_images)
    assert stats.mean.shape == (1,)
    assert abs(stats.mean[0] - 0.2860) < 5e-4 and abs(stats.std[0] - 0.3530) < 5e-4
    x = raw.train_images[:5000].astype(np.float64) / 255  # an independent partial check
    assert abs(x.mean() - stats.mean[0]) < 0.01


# ----------------------------------------------------------------------------------------------
# TFDS array_record source
# ----------------------------------------------------------------------------------------------

def _png(image: np.ndarray) -> bytes:
    import PIL.Image
    buffer = io.BytesIO()
    PIL.Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format='png')
    return buffer.getvalue()


def _read_idx_gz(path: Path, header: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


def _local_builders():
    """TFDS builders for the registered datasets whose generators read local data, not the network.

    TFDS's own fashion_mnist / cifar10 generation extracts and reads files through tf.io.gfile,
    which needs TensorFlow; only `_split_generators` is replaced, so name, version, features and
    example keys (the example's index) stay those of the registered builders.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar, mnist

    class LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
        name = 'fashion_mnist'

        def _split_generators(self, dl_manager):
            return {'train': self._examples('train'), 'test': self._examples('t10k')}

        def _examples(self, prefix):
            images = _read_idx_gz(REAL_FASHION_DIR / f'{prefix}-images-idx3-ubyte.gz', 16).reshape(-1, 28, 28, 1)
            labels = _read_idx_gz(REAL_FASHION_DIR / f'{prefix}-labels-idx1-ubyte.gz', 8)
            for index in range(len(labels)):
                yield index, {'image': _png(images[index]), 'label': int(labels[index])}

    class LocalCifar10(cifar.Cifar10, skip_registration=True):
        name = 'cifar10'
        arrays: dict = {}

        def _split_generators(self, dl_manager):
            return {split: self._examples(split) for split in ('train', 'test')}

        def _examples(self, split):
            images, labels = self.arrays[split]
            for index in range(len(labels)):
                yield index, {'id': f'{split}_{index:05d}', 'image': _png(images[index]), 'label': int(labels[index])}

    return tfds, LocalFashionMNIST, LocalCifar10


@pytest.fixture(scope='module')
def tfds_fashion_dir(tmp_path_factory):
    """A real array_record TFDS fashion_mnist prepared from the local IDX files (no TensorFlow)."""
    tfds, local_fashion, _ = _local_builders()
    root = tmp_path_factory.mktemp('tfds')
    builder = local_fashion(data_dir=str(root), file_format='array_record')
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return root


@pytest.mark.slow
@needs_real_fashion
def test_tfds_source_equals_files_source(tfds_fashion_dir, real_fashion):
    from_files, _ = real_fashion
    from_tfds = data.load('fashion_mnist', data_dir=str(tfds_fashion_dir), source='tfds')
    assert from_tfds.name == from_files.name and from_tfds.num_classes == from_files.num_classes
    for a, b in zip((from_files.train, from_files.val, from_files.test), (from_tfds.train, from_tfds.val, from_tfds.test)):
        assert a.images.dtype == b.images.dtype and a.labels.dtype == b.labels.dtype
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_tfds_cifar_small_order_and_values(isolated):
    tfds, _, local_cifar = _local_builders()
    train_hwc, train_labels, test_hwc, test_labels = make_cifar(isolated / 'c')
    local_cifar.arrays = {'train': (train_hwc, train_labels), 'test': (test_hwc, test_labels)}
    builder = local_cifar(data_dir=str(isolated / 'tfds'), file_format='array_record')
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    raw = data.load_raw_spec(SMALL_CIFAR, str(isolated / 'tfds'), 'tfds')
    np.testing.assert_array_equal(raw.train_images, train_hwc)
    np.testing.assert_array_equal(raw.train_labels, train_labels)
    np.testing.assert_array_equal(raw.test_images, test_hwc)
    from_files = load_spec(SMALL_CIFAR, str(isolated / 'c'))
    from_tfds = load_spec(SMALL_CIFAR, str(isolated / 'tfds'), 'tfds')
    np.testing.assert_array_equal(from_files.val.images, from_tfds.val.images)
    with pytest.raises(data.DataError, match='has 20 examples, expected 50000'):
        data.load('cifar10', data_dir=str(isolated / 'tfds'), source='tfds')


def test_tfds_not_prepared(isolated):
    with pytest.raises(data.DataError, match='not prepared') as info:
        data.load('mnist', data_dir=str(isolated / 'empty'), source='tfds')
    assert str(isolated / 'empty') in str(info.value)
