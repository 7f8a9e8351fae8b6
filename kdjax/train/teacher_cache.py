"""Offline KD: the teacher's outputs computed once and reused every epoch.

A frozen teacher in inference mode gives the same outputs for the same image every time, so for a
fixed view of the training set (no random augmentation) its logits, and any features a method
reads, can be computed once, kept on the device (or on disk, :func:`save_teacher_cache`) and
gathered with each batch: the train step (``make_train_step(..., cached_teacher=True)``) then runs
no teacher at all. Under random augmentation the cache holds the teacher's outputs on the
un-augmented images while the student sees augmented ones: that is a different method (the
student no longer matches the teacher on its own view), and :func:`cache_teacher_outputs` warns.

A cache file on disk is an ``.npz`` of ``fingerprint`` (:func:`teacher_fingerprint`), ``logits``
and ``feats/<name>`` arrays. It is written atomically (a temporary ``<name>.<pid>.tmp.npz`` next to
it, then a rename), so a crash leaves either the old file or the new one, and at worst a stale
temporary file, which the next write or :func:`check_teacher_cache_file` removes (never a live
writer's). A file that cannot be read as
a cache (truncated, damaged, not an ``.npz``) raises a ``ValueError`` that names it and says to delete
it; :func:`check_teacher_cache_file` finds that (and a directory the cache cannot be written to)
before any training, so a run fails before the teacher trains rather than after.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from glob import escape as glob_escape
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


_WHAT_TO_DO = "delete it and it will be recomputed, or point teacher_cache elsewhere"


def _tmp_path(path: Path, pid: int | None = None) -> Path:
  """The temporary file :func:`save_teacher_cache` writes before renaming it to ``path``: named after
  the writing process (``<name>.<pid>.tmp.npz``), so two writers of one cache never share one."""
  return path.with_name(f"{path.name}.{os.getpid() if pid is None else pid}.tmp.npz")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove_stale_tmp(path: Path) -> None:
  """Removes the temporary files of interrupted writes of ``path`` (a crash between write and rename):
  those of processes that are gone, never a live writer's."""
  for tmp in path.parent.glob(f"{glob_escape(path.name)}.*tmp.npz"):
    pid = tmp.name[len(path.name) + 1:-len(".tmp.npz")]
    if tmp.is_file() and (not pid.isdigit() or not _pid_alive(int(pid)) or int(pid) == os.getpid()):
      tmp.unlink(missing_ok=True)
      warnings.warn(f"removed {tmp}, left by an interrupted write of the teacher cache", stacklevel=3)


def _write_error(path: Path, e: OSError) -> OSError:
  """An ``OSError`` of ``e``'s errno whose message names the cache file ``path`` and what to do."""
  message = (f"cannot write the teacher cache {path} ({type(e).__name__}: {e.strerror or e}): free some space or "
             f"make its directory writable, point teacher_cache elsewhere, or set it to 'device' to keep the "
             f"cache in memory only")
  return OSError(e.errno, message) if e.errno is not None else OSError(message)


def _unreadable(path: Path, e: BaseException | str) -> ValueError:
  """The one-line ``ValueError`` for a cache file that cannot be read: it names the file, the
  underlying error and what to do."""
  if isinstance(e, str):
    what, detail = "is damaged or not a teacher cache", e
  else:
    what = "cannot be read" if isinstance(e, OSError) else "is damaged or not a teacher cache"
    detail = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"  # on one line
  return ValueError(f"the teacher cache {path} {what} ({detail}); {_WHAT_TO_DO}")


def _member(f, path: Path, name: str) -> np.ndarray:
  """The array ``name`` of the open cache ``f``; a bad CRC, a member cut short, ... raise :func:`_unreadable`."""
  try:
    return f[name]
  except MemoryError:
    raise
  except Exception as e:  # noqa: BLE001 - a bad CRC, a member cut short, ...: a damaged file
    raise _unreadable(path, e) from None


def _read_cache(path: Path, arrays: str = "keep") -> tuple[str, list[str], dict[str, np.ndarray]]:
  """``(fingerprint, names, arrays)`` of the cache file ``path``, read on the host.

  ``names`` are those of its arrays, ``"logits"`` first, then the ``"feats/<name>"``. ``arrays``
  says what to read: ``"none"`` only the fingerprint and the names; ``"check"`` each array once
  (which checks its CRC and its shape), then drops it; ``"keep"`` every array, returned by name.
  A file that cannot be read as a cache raises a one-line ``ValueError`` naming it
  (:func:`_unreadable`), whatever went wrong underneath.
  """
  try:
    f = np.load(path)
  except MemoryError:
    raise
  except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, OSError, ValueError (pickled), ...: a damaged file
    raise _unreadable(path, e) from None
  if not isinstance(f, np.lib.npyio.NpzFile):
    raise _unreadable(path, "a single .npy array, not an .npz archive")
  with f:
    missing = [k for k in ("fingerprint", "logits") if k not in f.files]
    if missing:
      raise _unreadable(path, f"it has no {missing[0]!r} array")
    names = ["logits", *(k for k in f.files if k.startswith("feats/"))]
    fingerprint = _member(f, path, "fingerprint")
    if fingerprint.shape != () or fingerprint.dtype.kind != "U":
      raise _unreadable(path, f"its fingerprint is a {fingerprint.dtype} array of shape {fingerprint.shape}, "
                              f"not a string")
    out = {}
    for name in names if arrays != "none" else ():
      a = _member(f, path, name)
      if name == "logits" and a.ndim != 2:
        raise _unreadable(path, f"its logits have shape {a.shape}, not [N, classes]")
      if name != "logits" and (a.ndim == 0 or a.shape[0] != out["logits"].shape[0]):
        raise _unreadable(path, f"its {name!r} has shape {a.shape}, not {out['logits'].shape[0]} rows like the logits")
      if arrays == "keep" or name == "logits":
        out[name] = a
  return str(fingerprint), names, out if arrays == "keep" else {}


def save_teacher_cache(path: str | Path, cache: dict[str, Any], fingerprint: str) -> Path:
  """Writes ``cache`` to ``path`` (``.npz``), atomically: a temporary ``<name>.<pid>.tmp.npz``, synced, then a
  rename.

  A stale temporary file of an earlier, interrupted write is removed first. When writing fails
  (a full disk, a read-only directory) the temporary file is removed, ``path`` is left as it was,
  and an ``OSError`` of the same errno naming ``path`` and what to do is raised.
  """
  path = Path(path)
  arrays = {"logits": np.asarray(cache["logits"]), **{f"feats/{k}": np.asarray(v) for k, v in cache["feats"].items()}}
  tmp = _tmp_path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    with open(tmp, "wb") as f:
      np.savez(f, fingerprint=np.array(fingerprint), **arrays)
      f.flush()
      os.fsync(f.fileno())
    tmp.replace(path)
  except BaseException as e:
    try:
      tmp.unlink(missing_ok=True)
    except OSError:
      pass
    if isinstance(e, OSError):
      raise _write_error(path, e) from None
    raise
  return path


def load_teacher_cache(path: str | Path, fingerprint: str | None = None) -> dict[str, Any]:
  """Reads a cache written by :func:`save_teacher_cache` onto the device; with ``fingerprint``,
  fails if it was made by another teacher or on other images.

  A file that cannot be read as a cache (truncated, damaged, not an ``.npz``, unreadable) raises a
  one-line ``ValueError`` that names it and says to delete it, never the underlying error.
  """
  path = Path(path)
  stored, _, arrays = _read_cache(path, "keep")
  if fingerprint is not None and stored != fingerprint:
    raise ValueError(f"the teacher cache {path} was made by another teacher or on other images "
                     f"(fingerprint {stored}, expected {fingerprint}); delete it to recompute")
  return jax.device_put({"logits": arrays["logits"],
                         "feats": {k[6:]: v for k, v in arrays.items() if k.startswith("feats/")}})


def check_teacher_cache_file(path: str | Path) -> bool:
  """Checks, before any training, that the teacher cache ``path`` can be used; returns whether it exists.

  An existing file must be a readable cache (an ``.npz`` with a string ``fingerprint``, 2-D
  ``logits`` and ``feats/<name>`` arrays of as many rows), read through once to find truncation and
  bad CRCs: else a one-line ``ValueError`` names it and says to delete it. Whether it was made by the
  same teacher is not known until the teacher has trained (a cache of another teacher is recomputed
  and rewritten then). A missing file is fine (it will be written), provided the directory it would
  be written to (or, when that does not exist yet, its nearest existing ancestor) is writable: that
  is probed with a temporary file, removed at once, and a failure raises an ``OSError`` naming
  ``path``. A stale temporary file left by an interrupted write is removed, with a warning.
  """
  path = Path(path)
  try:
    _remove_stale_tmp(path)
  except OSError as e:
    raise _write_error(path, e) from None
  if os.path.lexists(path):
    _read_cache(path, "check")
    return True
  try:
    parent = path.parent
    while not parent.exists():
      parent = parent.parent
    if not parent.is_dir():
      raise OSError(errno.ENOTDIR, f"{parent} is not a directory")
    fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=parent)
    try:
      os.write(fd, b"kdjax")
    finally:
      os.close(fd)
      os.unlink(probe)
  except OSError as e:
    raise _write_error(path, e) from None
  return False


def cached_teacher_outputs(graphdef, teacher_vars, images_uint8, *, path: str | Path | None = None,
                           **kwargs) -> dict[str, Any]:
  """:func:`cache_teacher_outputs`, kept on disk at ``path`` when given: loaded if a cache of
  the same teacher and images is there, else computed and saved (:func:`save_teacher_cache`).

  A file at ``path`` that cannot be read as a cache raises a one-line ``ValueError`` naming it
  rather than being overwritten (it may be another file given by mistake);
  :func:`check_teacher_cache_file` finds that before the teacher trains."""
  if path is None:
    return cache_teacher_outputs(graphdef, teacher_vars, images_uint8, **kwargs)
  fingerprint = teacher_fingerprint(teacher_vars, images_uint8, kwargs.get("precision", "fp32"))
  path = Path(path)
  if path.exists():
    stored, names, _ = _read_cache(path, "none")  # a damaged file raises a ValueError naming it
    if stored == fingerprint and {f"feats/{n}" for n in kwargs.get("features", ())} <= set(names):
      if kwargs.get("augmented"):
        _warn_augmented()
      return load_teacher_cache(path, fingerprint)
  cache = cache_teacher_outputs(graphdef, teacher_vars, images_uint8, **kwargs)
  if jax.process_index() == 0:  # every process computed the same cache; one writes it
    save_teacher_cache(path, cache, fingerprint)
  return cache
