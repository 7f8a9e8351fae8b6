"""TFDS catalog datasets through ``tfds.data_source`` (random access, no TensorFlow).

tensorflow-datasets is imported here only, when a TFDS dataset is asked for.
Nothing is downloaded unless ``download=True``: an offline download attempt can
hang for minutes, so a dataset that is not prepared fails at once instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kdjax.data.dataset import ArrayDataset

SUPPORTED = ("mnist", "fashion_mnist", "cifar10", "cifar100")


def _default_data_dir() -> Path:
  return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _read_split(source) -> tuple[np.ndarray, np.ndarray]:
  n = len(source)
  records = [source[i] for i in range(n)]
  images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
  labels = np.asarray([int(r["label"]) for r in records], np.int32)
  return images, labels


def data_sources(name: str, splits, data_dir: str | os.PathLike | None = None, *, download: bool = False):
  """``(tfds, sources, data_dir)``: tensorflow_datasets (imported here, optional at import time of
  kdjax), a random-access ``tfds.data_source`` per split of ``splits``, and the folder read; a clear
  error where the dataset is not prepared and downloads are off."""
  import tensorflow_datasets as tfds  # optional at import time of kdjax

  data_dir = Path(data_dir).expanduser() if data_dir else _default_data_dir()
  kwargs = dict(data_dir=str(data_dir), download=download)
  if download:
    kwargs["builder_kwargs"] = {"file_format": "array_record"}
  try:
    sources = tuple(tfds.data_source(name, split=split, **kwargs) for split in splits)
  except Exception as e:  # tfds raises several types here; all mean "not readable"
    if download:
      raise
    raise FileNotFoundError(
        f"TFDS dataset {name!r} ({', '.join(splits)}) is not prepared (in array_record format) under {data_dir}, "
        f"and downloads are off. Prepare it where there is network access (tfds build {name} "
        f"--file_format=array_record --data_dir {data_dir}), or ask kdjax to download it "
        f"(--download, or download=True). TFDS said: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    ) from e
  return tfds, sources, data_dir


def open_tfds(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False):
  """``(train, test, info)`` of TFDS dataset ``name``: random-access sources of both splits and
  the dataset's info, or a clear error where it is not prepared and downloads are off."""
  tfds, (train, test), data_dir = data_sources(name, ("train", "test"), data_dir, download=download)
  return train, test, tfds.builder(name, data_dir=str(data_dir)).info


def load_tfds(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False) -> ArrayDataset:
  """Reads TFDS image dataset ``name`` (train and test splits) into host memory."""
  if name not in SUPPORTED:
    raise ValueError(f"unsupported TFDS dataset {name!r}; kdjax reads {', '.join(SUPPORTED)} "
                     "(and imdb_reviews as text: kdjax.data.text)")
  train, test, info = open_tfds(name, data_dir, download=download)
  train_images, train_labels = _read_split(train)
  test_images, test_labels = _read_split(test)
  return ArrayDataset(name=name, train_images=train_images, train_labels=train_labels,
                      test_images=test_images, test_labels=test_labels,
                      num_classes=int(info.features["label"].num_classes))
