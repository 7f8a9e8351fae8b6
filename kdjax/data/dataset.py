"""The in-memory dataset every kdjax loader returns, and its validation."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """Images as uint8 ``[N, H, W, C]`` and integer labels ``[N]``, host memory."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  def __post_init__(self):
    validate_split(self.name, "train", self.train_images, self.train_labels, self.num_classes)
    validate_split(self.name, "test", self.test_images, self.test_labels, self.num_classes)
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(
          f"dataset {self.name!r}: train images have shape {self.train_images.shape[1:]} but "
          f"test images {self.test_images.shape[1:]}")

  def summary(self) -> str:
    return (f"{self.name}: {len(self.train_labels)} train / {len(self.test_labels)} test images "
            f"of shape {self.image_shape}, {self.num_classes} classes")


def validate_split(name: str, split: str, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
  where = f"dataset {name!r}, {split} split"
  if images.dtype != np.uint8:
    raise ValueError(f"{where}: images must be uint8, got {images.dtype}")
  if images.ndim != 4:
    raise ValueError(f"{where}: images must have shape [N, H, W, C], got {images.shape}")
  if labels.ndim != 1 or len(labels) != len(images):
    raise ValueError(f"{where}: {len(images)} images but labels of shape {labels.shape}")
  if len(labels) == 0:
    raise ValueError(f"{where} is empty")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{where}: labels must be integers, got {labels.dtype}")
  lo, hi = int(labels.min()), int(labels.max())
  if lo < 0 or hi >= num_classes:
    raise ValueError(f"{where}: labels span [{lo}, {hi}], outside [0, {num_classes - 1}]")
