"""``load_dataset``: one string names a dataset source (see :mod:`kdjax.data` for the names).

Every source module imports only the standard library and NumPy at import time; tensorflow-datasets
is imported by :mod:`kdjax.data.tfds_source` only when a TFDS dataset is asked for.
"""

from __future__ import annotations

from kdjax.data.builtin import load_builtin
from kdjax.data.dataset import ArrayDataset, check_num_classes
from kdjax.data.idx import load_idx_dir
from kdjax.data.text import load_text_dataset
from kdjax.data.tfds_source import load_tfds


# The class counts of the sources that have a fixed one, known before anything is read.
KNOWN_CLASSES = {"builtin": 10, "tfds:mnist": 10, "tfds:fashion_mnist": 10, "tfds:cifar10": 10, "tfds:cifar100": 100,
                 "negation": 2, "rotten_tomatoes": 2, "tfds:imdb_reviews": 2}


def known_classes(spec: str) -> int | None:
  """The class count of the source ``spec`` names where it is fixed (not for ``idx:PATH``), else None."""
  return KNOWN_CLASSES.get("rotten_tomatoes" if spec.partition(":")[0] == "rotten_tomatoes" else spec)


def load_dataset(spec: str, *, tfds_data_dir: str | None = None, download: bool = False,
                 num_classes: int | None = None) -> ArrayDataset:
  """Loads a dataset named by ``spec`` (see :mod:`kdjax.data`) into host memory.

  ``num_classes`` states the class count (None: the source's own, or for an IDX directory the one its
  labels imply). An IDX directory's labels are checked against it (:func:`load_idx_dir`); for the
  other sources, whose count is fixed, a different one is an error naming both, before any reading."""
  if num_classes is not None:
    check_num_classes(num_classes)
    _check_count(spec, known_classes(spec), num_classes)
  kind, _, arg = spec.partition(":")
  if kind == "idx" and arg:
    return load_idx_dir(arg, num_classes=num_classes)
  if spec in ("negation", "tfds:imdb_reviews") or kind == "rotten_tomatoes":
    data = load_text_dataset(spec, tfds_data_dir=tfds_data_dir, download=download)
  elif kind == "builtin" and not arg:
    data = load_builtin()
  elif kind == "tfds" and arg:
    data = load_tfds(arg, tfds_data_dir, download=download)
  else:
    raise ValueError(
        f"unknown dataset {spec!r}: use 'builtin', 'idx:PATH' (a directory of MNIST-format "
        f"idx files), 'tfds:NAME' (mnist, fashion_mnist, cifar10, cifar100), or text: 'negation', "
        f"'rotten_tomatoes' or 'tfds:imdb_reviews'")
  if num_classes is not None:
    _check_count(spec, data.num_classes, num_classes)
  return data


def _check_count(spec: str, has: int | None, num_classes: int) -> None:
  """Fails when dataset ``spec``, of ``has`` classes (None: not known), is stated to have ``num_classes``."""
  if has is not None and has != num_classes:
    raise ValueError(f"dataset {spec!r} has {has} classes, but num_classes is {num_classes}: state num_classes={has} "
                     "(or none, to take the data's count)")
