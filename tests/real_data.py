"""Where the real Fashion-MNIST files are, found by the package's own search; a skip mark when absent."""

from pathlib import Path

import pytest

from dps_jax import data

IDX_NAMES = data.files.IDX_FILES


def fashion_mnist_dir() -> Path | None:
    """The first folder data.load would search that holds the four IDX .gz files (the tests read the .gz)."""
    for folder in data.files.search_dirs('fashion_mnist', None):
        if all((folder / (name + '.gz')).is_file() for name in IDX_NAMES):
            return folder
    return None


FASHION_MNIST_DIR = fashion_mnist_dir()
needs_fashion_mnist = pytest.mark.skipif(
    FASHION_MNIST_DIR is None,
    reason='real Fashion-MNIST not found where dps_jax looks ($DPS_DATA_DIR, /usr/share/datasets/fashion-mnist, '
           '~/.cache/dps_jax) (apt-get install dataset-fashion-mnist)')
