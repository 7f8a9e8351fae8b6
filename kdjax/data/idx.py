"""The original MNIST distribution format (IDX), as used by MNIST and Fashion-MNIST.

An IDX file is a big-endian header (two zero bytes, a type code, the number of
dimensions, then one uint32 per dimension) followed by the raw array. The four
files of a dataset are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, optionally gzipped.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from pathlib import Path

import numpy as np

from kdjax.data.dataset import ArrayDataset, check_num_classes

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _open(path: Path):
  return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (plain or ``.gz``) into a numpy array."""
  path = Path(path)
  with _open(path) as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
  dtype = np.dtype(_DTYPES[data[2]])
  ndim = data[3]
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  offset = 4 + 4 * ndim
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - offset != expected:
    raise ValueError(f"{path}: header says shape {shape} ({expected} bytes) but the file holds "
                     f"{len(data) - offset} bytes of data")
  return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` (uint8 or int8) as an IDX file, gzipped if the name ends in ``.gz``."""
  path = Path(path)
  array = np.ascontiguousarray(array)
  if array.dtype not in _CODES:
    raise ValueError(f"write_idx supports uint8 and int8 arrays, got {array.dtype}")
  header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def _find(directory: Path, stem: str) -> Path | None:
  for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
    if (directory / name).is_file():
      return directory / name
  return None


def load_idx_dir(directory: str | os.PathLike, name: str | None = None,
                 num_classes: int | None = None) -> ArrayDataset:
  """Reads an MNIST-format directory (the four ``*-idx?-ubyte[.gz]`` files).

  ``num_classes`` states the class count: a label outside ``[0, num_classes)`` is then an error naming
  the split, how many there are and the first. Without it the count is inferred, the largest label + 1
  (at least 2), with a warning naming the classes that have no training example (usually a wrong label
  file). An empty split is an error naming its files, raised before the labels are read for the count."""
  directory = Path(directory).expanduser()
  if not directory.exists():
    raise FileNotFoundError(f"data path {directory} does not exist")
  if not directory.is_dir():
    raise NotADirectoryError(f"data path {directory} is not a directory")
  if num_classes is not None:
    check_num_classes(num_classes)
  found = {key: _find(directory, stem) for key, stem in IDX_FILES.items()}
  missing = [IDX_FILES[k] + "[.gz]" for k, p in found.items() if p is None]
  if missing:
    raise FileNotFoundError(f"{directory} holds no complete IDX dataset: missing {', '.join(missing)}")
  arrays = {k: read_idx(p) for k, p in found.items()}
  name = name or directory.name
  for split in ("train", "test"):
    empty = [found[f"{split}_{part}"].name for part in ("images", "labels") if len(arrays[f"{split}_{part}"]) == 0]
    if empty:
      raise ValueError(f"{directory}: the {split} split is empty ({' and '.join(empty)} "
                       f"{'holds' if len(empty) == 1 else 'hold'} no examples); an IDX dataset needs examples in "
                       "both splits")
    images = arrays[f"{split}_images"]
    if images.ndim == 3:
      arrays[f"{split}_images"] = images[..., None]
    arrays[f"{split}_labels"] = arrays[f"{split}_labels"].astype(np.int32)
  inferred = num_classes is None
  if inferred:
    num_classes = max(int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1, 2)
  data = ArrayDataset(name=name, num_classes=num_classes, **arrays)  # checks every label against the count
  if inferred:
    _warn_about_classes_without_examples(data)
  return data


def _warn_about_classes_without_examples(data: ArrayDataset) -> None:
  """Warns when some of the classes inferred from ``data``'s labels have no training example."""
  absent = np.setdiff1d(np.arange(data.num_classes), data.train_labels).tolist()
  if absent:
    shown = ", ".join(map(str, absent[:10])) + (", ..." if len(absent) > 10 else "")
    warnings.warn(
        f"dataset {data.name!r}: {'class' if len(absent) == 1 else f'{len(absent)} classes'} {shown} of the "
        f"{data.num_classes} inferred from its labels (the largest label + 1) "
        f"{'has' if len(absent) == 1 else 'have'} no training example; that usually means a wrong label file. "
        "State the class count (num_classes) to have labels outside it refused", UserWarning, stacklevel=3)
