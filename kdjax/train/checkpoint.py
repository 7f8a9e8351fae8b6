"""Minimal array checkpoints: a pytree saved as one ``.npz``, keyed by tree path.

Enough to keep the last good state when training stops on a NaN, and to reload
trained parameters into a fresh model of the same architecture. (Periodic,
resumable checkpoints of the whole run are Orbax's job.)
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np


def _flat(tree) -> dict[str, np.ndarray]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {}
  for path, leaf in leaves:
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def save_pytree(path: str | os.PathLike, tree) -> Path:
  """Writes ``tree``'s arrays to ``path`` atomically (temp file, then rename)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, **_flat(tree))
  os.replace(tmp, path)
  return path


def load_pytree(path: str | os.PathLike, like):
  """Reads arrays saved by :func:`save_pytree` into the structure of ``like``."""
  with np.load(path) as z:
    stored = dict(z)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  out = []
  for p, leaf in leaves:
    key = jax.tree_util.keystr(p)
    if key not in stored:
      raise ValueError(f"checkpoint {path} has no array {key}: it was saved from another architecture")
    if stored[key].shape != np.shape(leaf):
      raise ValueError(f"checkpoint {path}: {key} has shape {stored[key].shape}, the model expects "
                       f"{np.shape(leaf)} (another architecture?)")
    out.append(stored[key])
  return jax.tree_util.tree_unflatten(treedef, out)
