"""Domain shifts for distillation across domains: fixed image transforms that make a target domain
out of a source one, views for cross-modal distillation, and source/target pairs.

A transform is named by a string: ``"invert"`` (255 − pixel), ``"rotate:DEG"`` (every image turned counter-clockwise by
DEG degrees about its centre, bilinear, zeros shifted in), ``"noise:SIGMA"`` (Gaussian pixel noise
of standard deviation SIGMA·255, fixed seed, clipped) or ``"lowres:K"`` (K×K average pooling,
blown back up to the original size: the image at 1/K resolution).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from kdjax.data.dataset import ArrayDataset
from kdjax.data.sources import load_dataset


def _rotate(images: np.ndarray, degrees: float) -> np.ndarray:
  n, h, w, c = images.shape
  t = -math.radians(degrees)  # counter-clockwise as displayed (rows down), as np.rot90
  yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
  cy, cx = (h - 1) / 2, (w - 1) / 2
  # Each output pixel reads the input at the point the rotation would carry onto it.
  sy = cy + (yy - cy) * math.cos(t) - (xx - cx) * math.sin(t)
  sx = cx + (yy - cy) * math.sin(t) + (xx - cx) * math.cos(t)
  y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
  fy, fx = sy - y0, sx - x0
  src = images.astype(np.float32)
  out = np.zeros_like(src)
  for dy, dx, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
    yi, xi = y0 + dy, x0 + dx
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    vals = src[:, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1), :]
    out += vals * (wgt * inside)[None, :, :, None]
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _lowres(images: np.ndarray, k: int) -> np.ndarray:
  n, h, w, c = images.shape
  if h % k or w % k:
    raise ValueError(f"lowres:{k} needs image sides divisible by {k}, got {h}x{w}")
  pooled = images.astype(np.float32).reshape(n, h // k, k, w // k, k, c).mean(axis=(2, 4))
  return np.clip(np.rint(pooled.repeat(k, 1).repeat(k, 2)), 0, 255).astype(np.uint8)


def transform_images(images: np.ndarray, transform: str, *, seed: int = 0) -> np.ndarray:
  """``images`` (uint8 ``[N, H, W, C]``) under a named transform (see the module docstring)."""
  kind, _, arg = transform.partition(":")
  try:
    value = float(arg) if arg else None
  except ValueError:
    value = float("nan")
  if kind == "invert" and not arg:
    return 255 - images
  if kind == "rotate" and value is not None and math.isfinite(value):
    return _rotate(images, value)
  if kind == "noise" and value is not None and value >= 0:
    noise = np.random.default_rng(seed).normal(0.0, value * 255.0, images.shape)
    return np.clip(np.rint(images.astype(np.float64) + noise), 0, 255).astype(np.uint8)
  if kind == "lowres" and value is not None and value >= 1 and value == int(value):
    return _lowres(images, int(value))
  raise ValueError(f"unknown or malformed transform {transform!r}: use 'invert', 'rotate:DEG', 'noise:SIGMA' "
                   "(SIGMA >= 0) or 'lowres:K' (an integer K >= 1)")


def is_transform(spec: str) -> bool:
  return spec.partition(":")[0] in ("invert", "rotate", "noise", "lowres")


def domain_pair(source: ArrayDataset, target: str | ArrayDataset) -> tuple[ArrayDataset, ArrayDataset]:
  """``(source_data, transfer_data)`` for distillation from a source domain to a target domain.

  ``target`` is a transform of the source (see the module docstring) or another dataset with the
  same classes (e.g. Fashion-MNIST). With a transform, the source's training set is split in two
  halves, so no image is seen in both domains: the first half (labelled) is the source domain's
  training set, the second half, transformed, the target domain's unlabelled images; the target
  test set is the transformed source test set.

  ``source_data`` has the source's labelled training half and its test set (for the teacher and
  the source-only student); ``transfer_data`` the same labelled half, the target domain's
  unlabelled images (``unlabelled_images``) and the target domain's labelled test set, on which
  every run is judged. A target domain whose images do not have the student's input shape is an
  error naming both shapes.
  """
  if isinstance(target, str) and is_transform(target):
    half = len(source.train_labels) // 2
    src = dataclasses.replace(source, name=f"{source.name}[:{half}]", train_images=source.train_images[:half],
                              train_labels=source.train_labels[:half])
    unlabelled = transform_images(source.train_images[half:], target, seed=1)
    test_images, test_labels = transform_images(source.test_images, target, seed=2), source.test_labels
    name = f"{source.name} -> {target}"
  else:
    if isinstance(target, str):
      target = load_dataset(target)
    if target.num_classes != source.num_classes:
      raise ValueError(f"the target domain {target.name!r} has {target.num_classes} classes, the source "
                       f"{source.name!r} {source.num_classes}: distillation across domains needs the same classes")
    if target.image_shape != source.image_shape:
      raise ValueError(f"the target domain {target.name!r} has images of shape {target.image_shape}, but the "
                       f"source {source.name!r} (and so the teacher and student) {source.image_shape}; resize or "
                       "convert the target domain to the student's input shape first")
    src = source
    unlabelled, test_images, test_labels = target.train_images, target.test_images, target.test_labels
    name = f"{source.name} -> {target.name}"
  transfer = ArrayDataset(name=name, train_images=src.train_images, train_labels=src.train_labels,
                          test_images=test_images, test_labels=test_labels, num_classes=src.num_classes,
                          unlabelled_images=unlabelled)
  return src, transfer


def cross_modal_pair(data: ArrayDataset, view: str) -> tuple[ArrayDataset, ArrayDataset]:
  """``(teacher_data, student_data)`` for cross-modal distillation: the teacher trains on the full
  images; the student sees only ``view`` of each image (a transform, e.g. ``"lowres:4"``), in
  training and at test time, while the teacher is shown the full image of the same example
  (``teacher_train_images``)."""
  student = dataclasses.replace(data, name=f"{data.name} ({view})",
                                train_images=transform_images(data.train_images, view, seed=1),
                                test_images=transform_images(data.test_images, view, seed=2),
                                teacher_train_images=data.train_images)
  return data, student
