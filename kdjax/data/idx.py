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
from pathlib import Path

import numpy as np

from kdjax.data.dataset import ArrayDataset

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


def load_idx_dir(directory: str | os.PathLike, name: str | None = None) -> ArrayDataset:
  """Reads an MNIST-format directory (the four ``*-idx?-ubyte[.gz]`` files)."""
  directory = Path(directory).expanduser()
  if not directory.exists():
    raise FileNotFoundError(f"data path {directory} does not exist")
  if not directory.is_dir():
    raise NotADirectoryError(f"data path {directory} is not a directory")
  found = {key: _find(directory, stem) for key, stem in IDX_FILES.items()}
  missing = [IDX_FILES[k] + "[.gz]" for k, p in found.items() if p is None]
  if missing:
    raise FileNotFoundError(f"{directory} holds no complete IDX dataset: missing {', '.join(missing)}")
  arrays = {k: read_idx(p) for k, p in found.items()}
  for split in ("train", "test"):
    images = arrays[f"{split}_images"]
    if images.ndim == 3:
      arrays[f"{split}_images"] = images[..., None]
    arrays[f"{split}_labels"] = arrays[f"{split}_labels"].astype(np.int32)
  num_classes = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
  return ArrayDataset(name=name or directory.name, num_classes=max(num_classes, 2), **arrays)
