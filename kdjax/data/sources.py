"""``load_dataset``: one string names a dataset source (see :mod:`kdjax.data` for the names).

Every source module imports only the standard library and NumPy at import time; tensorflow-datasets
is imported by :mod:`kdjax.data.tfds_source` only when a TFDS dataset is asked for.
"""

from __future__ import annotations

from kdjax.data.builtin import load_builtin
from kdjax.data.dataset import ArrayDataset
from kdjax.data.idx import load_idx_dir
from kdjax.data.text import load_text_dataset
from kdjax.data.tfds_source import load_tfds


def load_dataset(spec: str, *, tfds_data_dir: str | None = None, download: bool = False) -> ArrayDataset:
  """Loads a dataset named by ``spec`` (see :mod:`kdjax.data`) into host memory."""
  kind, _, arg = spec.partition(":")
  if spec in ("negation", "tfds:imdb_reviews") or kind == "rotten_tomatoes":
    return load_text_dataset(spec, tfds_data_dir=tfds_data_dir, download=download)
  if kind == "builtin" and not arg:
    return load_builtin()
  if kind == "idx" and arg:
    return load_idx_dir(arg)
  if kind == "tfds" and arg:
    return load_tfds(arg, tfds_data_dir, download=download)
  raise ValueError(
      f"unknown dataset {spec!r}: use 'builtin', 'idx:PATH' (a directory of MNIST-format "
      f"idx files), 'tfds:NAME' (mnist, fashion_mnist, cifar10, cifar100), or text: 'negation', "
      f"'rotten_tomatoes' or 'tfds:imdb_reviews'")
