"""The tiny learnable TFDS dataset of examples/tiny_tfds_dataset.py, for tests.

examples/ is put on sys.path and the module imported as `tiny_tfds_dataset`, the name a script in
examples/ imports it by, so the builder classes exist once whichever imports first.
"""

import sys
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / 'examples'
if str(EXAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLES_DIR))

from tiny_tfds_dataset import (DEFAULT_NAME, TinyShapes, TinyShapesConfig, builder_class,  # noqa: E402
                               prepare_tiny_image_dataset, tiny_shapes_arrays)

__all__ = ['DEFAULT_NAME', 'TinyShapes', 'TinyShapesConfig', 'builder_class', 'prepare_tiny_image_dataset',
           'tiny_shapes_arrays']
