"""Where the real Fashion-MNIST files are, as the package itself looks for them; a skip mark when absent."""

import os
from pathlib import Path

import pytest

IDX_NAMES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
             't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def fashion_mnist_dir() -> Path | None:
    """The first folder holding the four IDX .gz files: under $DPS_DATA_DIR, then the Debian path."""
    roots = [Path(os.environ['DPS_DATA_DIR']) for _ in [0] if os.environ.get('DPS_DATA_DIR')]
    candidates = [root / name for root in roots for name in ('fashion-mnist', 'fashion_mnist')]
    candidates.append(Path('/usr/share/datasets/fashion-mnist'))
    for folder in candidates:
        if all((folder / (name + '.gz')).is_file() for name in IDX_NAMES):
            return folder
    return None


FASHION_MNIST_DIR = fashion_mnist_dir()
needs_fashion_mnist = pytest.mark.skipif(
    FASHION_MNIST_DIR is None,
    reason='real Fashion-MNIST not found in $DPS_DATA_DIR or /usr/share/datasets/fashion-mnist '
           '(apt-get install dataset-fashion-mnist)')
