"""A teacher's top-k next-token log-probabilities, cached on disk in shards.

For every training row the LM trainer keeps the teacher's ``k`` largest log-probabilities and their
token ids, ``[N, L, K]`` each, so a teacher costs ``k·L`` numbers per sequence instead of ``V·L``.

On disk, a folder of

- ``shard-00000.npz``, ``shard-00001.npz``, ...: ``rows_per_shard`` rows each (the last may have
  fewer), arrays ``"logprobs"`` (float32 by default: the log-probabilities round-trip exactly, and a
  loss that re-tempers or exponentiates them loses nothing; float16, if asked, keeps about three
  digits, e.g. a spacing of 0.016 near -20, for half the size) and ``"ids"`` (int32);
- ``manifest.json``: the format, the caller's ``identity`` (teacher, tokenizer, corpus fingerprint,
  ``k``, temperature, ...), ``N``, ``L``, ``K``, ``rows_per_shard``, the dtypes, and each shard's file
  name, rows, size and SHA-256.

Each shard is written to ``<name>.tmp``, synced and renamed; the manifest is written last
(:func:`kdjax.workdir.write_atomic`), and a new write first removes an old manifest. A cache without a
manifest does not exist (:func:`topk_cache_exists`), so a crash never leaves a cut cache that reads as
whole. :func:`open_topk_cache` refuses another identity (naming every field that differs), a missing
shard, and a damaged one (its SHA-256, checked when it is first read).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.identity import differences, flatten, plain
from kdjax.workdir import check_writable, write_atomic

FORMAT = "kdjax-topk-cache-1"
MANIFEST = "manifest.json"
_SHARD = re.compile(r"shard-(\d{5,})\.npz")
_LOGPROB_DTYPES = ("float32", "float16")


def _shard_name(i: int) -> str:
  return f"shard-{i:05d}.npz"


def _sha256_file(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      h.update(chunk)
  return h.hexdigest()


def topk_cache_exists(directory: str | os.PathLike) -> bool:
  """Whether ``directory`` holds a finished top-k cache (a readable manifest of this format)."""
  try:
    return json.loads((Path(directory) / MANIFEST).read_text()).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


class TopkCacheWriter:
  """Writes a top-k cache batch by batch: :meth:`append` rows ``[n, L, K]`` (any ``n``), then
  :meth:`close` writes the last shard and the manifest. Holds at most one shard of rows in memory.

  Used as a context manager, an exception in the body writes no manifest (no cache) and removes the
  temporary file. Opening a writer removes an old manifest in ``directory`` first (the old cache ends).
  """

  def __init__(self, directory: str | os.PathLike, *, identity: Mapping[str, Any], rows_per_shard: int = 4096,
               logprob_dtype: str = "float32"):
    if rows_per_shard < 1:
      raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    if str(np.dtype(logprob_dtype)) not in _LOGPROB_DTYPES:
      raise ValueError(f"logprob_dtype must be one of {_LOGPROB_DTYPES}, got {logprob_dtype!r}")
    self.directory = Path(directory)
    self.identity = plain(dict(identity), strict=True)
    self.rows_per_shard = int(rows_per_shard)
    self.logprob_dtype = np.dtype(logprob_dtype)
    self.shape: tuple[int, int] | None = None  # (L, K)
    self.num_rows = 0
    self._shards: list[dict[str, Any]] = []
    self._pending: list[tuple[np.ndarray, np.ndarray]] = []
    self._pending_rows = 0
    self._closed = False
    check_writable(self.directory)
    with contextlib.suppress(FileNotFoundError):
      (self.directory / MANIFEST).unlink()

  def append(self, logprobs, ids) -> None:
    """Adds rows: ``logprobs`` ``[n, L, K]`` (float32 or float16, no NaN) and ``ids`` ``[n, L, K]``
    (non-negative integers), the same ``L`` and ``K`` for every call."""
    if self._closed:
      raise ValueError("this top-k cache writer is closed")
    logprobs, ids = np.asarray(logprobs), np.asarray(ids)
    if logprobs.ndim != 3 or logprobs.shape != ids.shape:
      raise ValueError(f"logprobs and ids must both have shape [n, L, K]; got {logprobs.shape} and {ids.shape}")
    if not np.issubdtype(logprobs.dtype, np.floating):
      raise ValueError(f"logprobs must be floats, got {logprobs.dtype}")
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"ids must be integers, got {ids.dtype}")
    if self.shape is None:
      self.shape = logprobs.shape[1:]
      if min(self.shape) < 1:
        raise ValueError(f"L and K must be >= 1, got shape {logprobs.shape}")
    elif logprobs.shape[1:] != self.shape:
      raise ValueError(f"rows of shape [L, K] = {list(logprobs.shape[1:])} after rows of {list(self.shape)}")
    if len(logprobs) == 0:
      return
    if np.isnan(logprobs).any():
      raise ValueError(f"logprobs hold NaN (rows from {self.num_rows + self._pending_rows}): the teacher's outputs "
                       "are broken; nothing of them is cached")
    if ids.min() < 0 or ids.max() > np.iinfo(np.int32).max:
      raise ValueError(f"ids span [{ids.min()}, {ids.max()}]; token ids are non-negative int32")
    self._pending.append((logprobs.astype(self.logprob_dtype), ids.astype(np.int32)))
    self._pending_rows += len(logprobs)
    while self._pending_rows >= self.rows_per_shard:
      self._flush(self.rows_per_shard)

  def _flush(self, n: int) -> None:
    lp = np.concatenate([p[0] for p in self._pending]) if len(self._pending) > 1 else self._pending[0][0]
    ids = np.concatenate([p[1] for p in self._pending]) if len(self._pending) > 1 else self._pending[0][1]
    rest = len(lp) - n
    self._pending = [(lp[n:], ids[n:])] if rest else []
    self._pending_rows = rest
    self._write_shard(lp[:n], ids[:n])

  def _write_shard(self, lp: np.ndarray, ids: np.ndarray) -> None:
    name = _shard_name(len(self._shards))
    path = self.directory / name
    tmp = path.with_name(name + ".tmp")
    try:
      with open(tmp, "wb") as f:
        np.savez(f, logprobs=lp, ids=ids)
        f.flush()
        os.fsync(f.fileno())
      digest = _sha256_file(tmp)
      os.replace(tmp, path)
    except OSError as e:
      with contextlib.suppress(OSError):
        tmp.unlink()
      raise OSError(e.errno, f"could not write {path}: {e.strerror or e}") from None
    self._shards.append({"file": name, "rows": len(lp), "bytes": path.stat().st_size, "sha256": digest})
    self.num_rows += len(lp)

  def close(self) -> Path:
    """Writes the last shard and the manifest; returns the folder. A cache needs at least one row."""
    if self._closed:
      return self.directory
    if self._pending_rows:
      self._flush(self._pending_rows)
    if self.num_rows == 0:
      raise ValueError(f"no rows were appended: the top-k cache in {self.directory} would be empty")
    for old in self.directory.glob("shard-*.npz"):  # an older, longer cache's shards
      m = _SHARD.fullmatch(old.name)
      if m and int(m.group(1)) >= len(self._shards):
        old.unlink()
    L, K = self.shape
    manifest = {"format": FORMAT, "identity": self.identity, "num_rows": self.num_rows, "seq_len": L, "k": K,
                "rows_per_shard": self.rows_per_shard, "logprobs_dtype": str(self.logprob_dtype),
                "ids_dtype": "int32", "shards": self._shards}
    write_atomic(self.directory / MANIFEST, json.dumps(manifest, indent=1))
    self._closed = True
    return self.directory

  def abort(self) -> None:
    """Ends the writer without a manifest (no cache); the shards written so far stay, unused."""
    self._closed = True
    self._pending, self._pending_rows = [], 0

  def __enter__(self) -> TopkCacheWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def write_topk_cache(directory: str | os.PathLike, logprobs, ids, *, identity: Mapping[str, Any],
                     rows_per_shard: int = 4096, logprob_dtype: str = "float32") -> Path:
  """Writes ``logprobs`` and ``ids`` (``[N, L, K]`` each) as a top-k cache in ``directory`` (see the
  module docstring) through :class:`TopkCacheWriter`; returns the folder."""
  logprobs, ids = np.asarray(logprobs), np.asarray(ids)
  if logprobs.ndim != 3 or logprobs.shape != ids.shape:
    raise ValueError(f"logprobs and ids must both have shape [N, L, K]; got {logprobs.shape} and {ids.shape}")
  with TopkCacheWriter(directory, identity=identity, rows_per_shard=rows_per_shard,
                       logprob_dtype=logprob_dtype) as writer:
    for start in range(0, len(logprobs), rows_per_shard):
      writer.append(logprobs[start:start + rows_per_shard], ids[start:start + rows_per_shard])
  return writer.directory


def _npz_memmap(path: Path, member: str) -> np.ndarray:
  """Array ``member`` of an uncompressed ``.npz``, memory-mapped (read-only)."""
  with zipfile.ZipFile(path) as zf:
    info = zf.getinfo(member + ".npy")
  if info.compress_type != zipfile.ZIP_STORED:
    with np.load(path) as z:
      return z[member]
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    head = f.read(30)
    sig, *_, name_len, extra_len = struct.unpack("<4s5H3L2H", head)
    if sig != b"PK\x03\x04":
      raise ValueError("bad zip entry")
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    offset = f.tell()
  return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class TopkCache:
  """A finished top-k cache (open it with :func:`open_topk_cache`). Shards are read lazily: the first
  read of a shard checks its SHA-256, then memory-maps its arrays."""

  def __init__(self, directory: Path, manifest: dict[str, Any]):
    self.directory = directory
    self.manifest = manifest
    self.identity: dict[str, Any] = manifest["identity"]
    self.num_rows: int = int(manifest["num_rows"])
    self.seq_len: int = int(manifest["seq_len"])
    self.k: int = int(manifest["k"])
    self.rows_per_shard: int = int(manifest["rows_per_shard"])
    self._shards: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def __len__(self) -> int:
    return self.num_rows

  def _shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    if i not in self._shards:
      entry = self.manifest["shards"][i]
      path = self.directory / entry["file"]
      if not path.is_file():
        raise FileNotFoundError(f"the top-k cache in {self.directory} lacks its shard {entry['file']}; delete the "
                                "folder and cache the teacher again")
      if _sha256_file(path) != entry["sha256"]:
        raise ValueError(f"the top-k cache's shard {path} is damaged (its SHA-256 is not the manifest's); delete "
                         f"{self.directory} and cache the teacher again")
      try:
        lp, ids = _npz_memmap(path, "logprobs"), _npz_memmap(path, "ids")
      except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"the top-k cache's shard {path} cannot be read ({e}); delete {self.directory} and cache "
                         "the teacher again") from None
      want = (entry["rows"], self.seq_len, self.k)
      if lp.shape != want or ids.shape != want:
        raise ValueError(f"the top-k cache's shard {path} holds arrays of shape {lp.shape} and {ids.shape}, "
                         f"the manifest says {want}; delete {self.directory} and cache the teacher again")
      self._shards[i] = (lp, ids)
    return self._shards[i]

  def rows(self, indices) -> tuple[np.ndarray, np.ndarray]:
    """The cached rows ``indices`` (any order, repeats allowed): ``(logprobs [n, L, K] float32,
    ids [n, L, K] int32)``."""
    indices = np.asarray(indices)
    if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
      raise ValueError(f"indices must be a 1-D array of integers, got shape {indices.shape} of {indices.dtype}")
    indices = indices.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_rows):
      raise IndexError(f"rows [{indices.min()}, {indices.max()}] asked of a top-k cache of {self.num_rows} rows")
    lp = np.empty((len(indices), self.seq_len, self.k), np.float32)
    ids = np.empty((len(indices), self.seq_len, self.k), np.int32)
    shard, offset = np.divmod(indices, self.rows_per_shard)
    for s in np.unique(shard):
      where = np.flatnonzero(shard == s)
      slp, sids = self._shard(int(s))
      order = offset[where]
      lp[where] = slp[order]
      ids[where] = sids[order]
    return lp, ids


def open_topk_cache(directory: str | os.PathLike, *, identity: Mapping[str, Any]) -> TopkCache:
  """The finished top-k cache in ``directory``, made for ``identity``.

  Refuses (``FileNotFoundError``) a folder with no manifest (no finished cache) or with a shard
  missing, and (``ValueError``) a damaged manifest or a cache made for another identity, naming every
  field that differs. A damaged shard is refused, naming its file, when it is first read.
  """
  directory = Path(directory)
  path = directory / MANIFEST
  try:
    text = path.read_text()
  except FileNotFoundError:
    raise FileNotFoundError(f"no finished top-k cache in {directory} (no {MANIFEST}: never written, or its writing "
                            "was cut short)") from None
  try:
    manifest = json.loads(text)
    if manifest.get("format") != FORMAT:
      raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
    for key in ("identity", "num_rows", "seq_len", "k", "rows_per_shard", "shards"):
      if key not in manifest:
        raise ValueError(f"no {key!r}")
  except (ValueError, AttributeError) as e:
    raise ValueError(f"{path} is not a top-k cache manifest ({e}); delete {directory} and cache the teacher "
                     "again") from None
  diff = differences(flatten(manifest["identity"]), flatten(plain(dict(identity), strict=True)))
  if diff:
    raise ValueError(f"the top-k cache in {directory} was made for another teacher/tokenizer/corpus: "
                     f"{'; '.join(diff)}; delete it or cache this teacher elsewhere")
  missing = [s["file"] for s in manifest["shards"] if not (directory / s["file"]).is_file()]
  if missing:
    raise FileNotFoundError(f"the top-k cache in {directory} lacks {len(missing)} shard(s): {', '.join(missing[:5])}"
                            f"{'...' if len(missing) > 5 else ''}; delete the folder and cache the teacher again")
  wrong = [s["file"] for s in manifest["shards"] if (directory / s["file"]).stat().st_size != s["bytes"]]
  if wrong:
    raise ValueError(f"the top-k cache in {directory} has damaged shard(s) (size differs from the manifest's): "
                     f"{', '.join(wrong[:5])}; delete the folder and cache the teacher again")
  return TopkCache(directory, manifest)


__all__ = ["FORMAT", "MANIFEST", "TopkCache", "TopkCacheWriter", "open_topk_cache", "topk_cache_exists",
           "write_topk_cache"]
