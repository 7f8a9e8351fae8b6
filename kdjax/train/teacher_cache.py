"""Offline KD: the teacher's outputs computed once and reused every epoch.

A frozen teacher in inference mode gives the same outputs for the same image every time, so for a
fixed view of the training set (no random augmentation) its logits, and any features a method
reads, can be computed once, kept on the device (or on disk, :func:`save_teacher_cache`) and
gathered with each batch: the train step (``make_train_step(..., cached_teacher=True)``) then runs
no teacher at all. Under random augmentation the cache holds the teacher's outputs on the
un-augmented images while the student sees augmented ones: that is a different method (the
student no longer matches the teacher on its own view), and :func:`cache_teacher_outputs` warns.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.data.augment import padded_batches, to_float
from kdjax.methods.base import pick_feature
from kdjax.models.functional import apply_model, compute_dtype


def cache_teacher_outputs(graphdef, teacher_vars: dict[str, Any], images_uint8, *, features: Sequence[str] = (),
                          batch_size: int = 1000, precision: str = "fp32", augmented: bool = False
                          ) -> dict[str, Any]:
  """The teacher's float32 outputs on every image, in order: ``{"logits": [N, C], "feats":
  {name: [N, ...]}}`` for the named ``features``, on the device.

  ``augmented=True`` says the student will train on randomly augmented views; the cache is of
  the fixed, un-augmented view, so a warning says that this changes the method.
  """
  dtype = compute_dtype(precision)
  if augmented:
    _warn_augmented()
  features = tuple(features)

  @jax.jit
  def forward(params, rest, x):
    logits, feats, _ = apply_model(graphdef, params, rest, to_float(x), train=False, dtype=dtype)
    return logits.astype(jnp.float32), {n: pick_feature(feats, n, "teacher").astype(jnp.float32) for n in features}

  n = len(images_uint8)
  labels = np.zeros(n, np.int32)
  parts = [forward(teacher_vars["params"], teacher_vars["rest"], xb)
           for xb, _, _ in padded_batches(images_uint8, labels, min(batch_size, n))]
  logits, feats = jax.tree.map(lambda *a: jnp.concatenate(a)[:n], *parts)
  return {"logits": logits, "feats": feats}


def _warn_augmented() -> None:
  warnings.warn("teacher outputs are cached for the un-augmented images while the student trains on randomly "
                "augmented ones: the student then matches the teacher's view of another image (offline KD), "
                "which changes the method; turn augmentation off for an exact cache", stacklevel=3)


def teacher_fingerprint(teacher_vars: dict[str, Any], images_uint8, precision: str = "fp32") -> str:
  """A short hash of the teacher's variables, the images and the precision: a cache on disk is
  reused only for the same teacher on the same data at the same precision."""
  h = hashlib.sha1(precision.encode())
  for leaf in jax.tree.leaves(teacher_vars):
    h.update(np.asarray(leaf).tobytes())
  images = np.asarray(images_uint8)
  h.update(str(images.shape).encode())
  h.update(images.tobytes())
  return h.hexdigest()[:16]


def save_teacher_cache(path: str | Path, cache: dict[str, Any], fingerprint: str) -> Path:
  """Writes ``cache`` to ``path`` (``.npz``), atomically (a temporary file, then a rename)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {"logits": np.asarray(cache["logits"]), **{f"feats/{k}": np.asarray(v) for k, v in cache["feats"].items()}}
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, fingerprint=np.array(fingerprint), **arrays)
  tmp.replace(path)
  return path


def load_teacher_cache(path: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
  """Reads a cache written by :func:`save_teacher_cache` onto the device; with ``fingerprint``,
  fails if it was made by another teacher or on other images."""
  with np.load(path) as f:
    if fingerprint is not None and str(f["fingerprint"]) != fingerprint:
      raise ValueError(f"the teacher cache {path} was made by another teacher or on other images "
                       f"(fingerprint {str(f['fingerprint'])}, expected {fingerprint}); delete it to recompute")
    return jax.device_put({"logits": f["logits"],
                           "feats": {k[6:]: f[k] for k in f.files if k.startswith("feats/")}})


def cached_teacher_outputs(graphdef, teacher_vars, images_uint8, *, path: str | Path | None = None,
                           **kwargs) -> dict[str, Any]:
  """:func:`cache_teacher_outputs`, kept on disk at ``path`` when given: loaded if a cache of
  the same teacher and images is there, else computed and saved."""
  if path is None:
    return cache_teacher_outputs(graphdef, teacher_vars, images_uint8, **kwargs)
  fingerprint = teacher_fingerprint(teacher_vars, images_uint8, kwargs.get("precision", "fp32"))
  path = Path(path)
  if path.exists():
    with np.load(path) as f:
      usable = (str(f["fingerprint"]) == fingerprint
                and {f"feats/{n}" for n in kwargs.get("features", ())} <= set(f.files))
    if usable:
      if kwargs.get("augmented"):
        _warn_augmented()
      return load_teacher_cache(path, fingerprint)
  cache = cache_teacher_outputs(graphdef, teacher_vars, images_uint8, **kwargs)
  if jax.process_index() == 0:  # every process computed the same cache; one writes it
    save_teacher_cache(path, cache, fingerprint)
  return cache
