"""The built-in MNIST subset shipped inside the package (the offline default).

``mnist_subset.npz``: 10,000 training and 2,000 test images drawn uniformly at
random (numpy ``default_rng(0)``, without replacement, kept in original order;
the source indices are stored in the file) from the original MNIST training and
test sets, uint8, 28x28x1. MNIST is by Yann LeCun, Corinna Cortes and
Christopher J.C. Burges (http://yann.lecun.com/exdb/mnist/), made available
under the Creative Commons Attribution-Share Alike 3.0 licence; this subset is
redistributed under the same terms. See ``kdjax/data/MNIST_LICENSE.txt``.
"""

from __future__ import annotations

import hashlib
import importlib.resources

import numpy as np

from kdjax.data.dataset import ArrayDataset

BUILTIN_FILE = "mnist_subset.npz"
BUILTIN_SHA256 = "13b271b3bb5891ac1a91287216b77420068d9894b7c86b424fbe8ee6f2b5047f"


def load_builtin() -> ArrayDataset:
  """Loads the built-in MNIST subset after verifying its SHA-256 checksum."""
  blob = importlib.resources.files("kdjax.data").joinpath(BUILTIN_FILE).read_bytes()
  digest = hashlib.sha256(blob).hexdigest()
  if digest != BUILTIN_SHA256:
    raise RuntimeError(
        f"the built-in dataset {BUILTIN_FILE} is corrupt: sha256 {digest}, expected {BUILTIN_SHA256}; "
        "reinstall kdjax")
  import io
  with np.load(io.BytesIO(blob)) as z:
    return ArrayDataset(
        name="mnist_subset",
        train_images=z["train_images"], train_labels=z["train_labels"].astype(np.int32),
        test_images=z["test_images"], test_labels=z["test_labels"].astype(np.int32),
        num_classes=10)
