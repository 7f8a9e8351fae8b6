"""Checkpoints.

- Run checkpoints (Orbax): the whole train state (student parameters and batch statistics, the
  method's parameters and state, optimizer state, step, PRNG key) with the fit loop's position
  and history, every N steps and at the end, the last few kept (:class:`Checkpointing`,
  :func:`save_run`, :func:`restore_run`). Orbax writes each checkpoint into a temporary folder and
  renames it when complete, so a run killed mid-write leaves the previous ones intact; a
  checkpoint damaged on disk afterwards (truncated, say) fails to restore, is moved aside (not
  deleted) and the one before it is used.
- Array files (``.npz``, keyed by tree path): the last good state when training stops on a NaN,
  and a quick way to reload parameters into a model of the same architecture.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from kdjax.identity import differences
from kdjax.parallel import is_key


def _flat(tree) -> dict[str, np.ndarray]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {}
  for path, leaf in leaves:
    if is_key(leaf):
      leaf = jax.random.key_data(leaf)
    out[jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def save_pytree(path: str | os.PathLike, tree) -> Path:
  """Writes ``tree``'s arrays to ``path`` atomically (temp file, then rename)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **_flat(tree))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:  # a full or read-only disk: nothing half-written stays behind
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, f"could not write {path}: {e.strerror or e}") from None
  return path


def load_pytree(path: str | os.PathLike, like):
  """Reads arrays saved by :func:`save_pytree` into the structure of ``like``; a damaged file is a
  ``ValueError`` naming it."""
  try:
    with np.load(path) as z:
      stored = dict(z)
  except FileNotFoundError:
    raise
  except Exception as e:  # noqa: BLE001 - BadZipFile, EOFError, OSError, ValueError: a damaged file
    raise ValueError(f"{path} is damaged ({type(e).__name__}: {str(e)[:120]}); delete it and save it again") from None
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


@dataclasses.dataclass(frozen=True)
class Checkpointing:
  """Where and how often the fit loop checkpoints. ``every_steps`` = 0 checkpoints at the end of
  every epoch only; otherwise also after the first call that reaches each multiple of it.
  ``resume`` starts from the newest complete checkpoint in ``directory`` if there is one.
  ``identity`` (e.g. ``{"model": "resnet8x4", "num_classes": 100}``) is stored with each
  checkpoint and must match on restore. ``run`` is the run's whole identity
  (:func:`kdjax.identity.identity`: config, method, seeds, teacher, data), stored with each checkpoint;
  a checkpoint of another run is refused on restore, naming the fields that differ."""

  directory: str | os.PathLike
  every_steps: int = 0
  keep: int = 3
  resume: bool = False
  identity: dict[str, Any] = dataclasses.field(default_factory=dict)
  run: dict[str, Any] | None = None

  def __post_init__(self):
    if self.every_steps < 0:
      raise ValueError(f"checkpoint every_steps must be >= 0, got {self.every_steps}")
    if self.keep < 1:
      raise ValueError(f"checkpoints to keep must be >= 1, got {self.keep}")


def _manager(directory, keep: int):
  import orbax.checkpoint as ocp  # imported where used: plain training needs no Orbax
  return ocp.CheckpointManager(Path(directory).absolute(), options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False))


def _storable(state):
  """PRNG keys as their raw ``uint32`` data (what Orbax stores)."""
  return jax.tree.map(lambda a: jax.random.key_data(a) if is_key(a) else a, state)


def _dtype(a):
  return a.dtype if hasattr(a, "dtype") else np.result_type(a)


def state_signature(state) -> str:
  """A hash of the state's tree structure, shapes and dtypes: a checkpoint restores only into a
  state of the same signature (same model, method and optimizer)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(_storable(state))
  text = str(treedef) + "".join(f"{jax.tree_util.keystr(p)}:{np.shape(a)}:{_dtype(a)}" for p, a in leaves)
  return hashlib.sha1(text.encode()).hexdigest()[:16]


def save_run(checkpointing: Checkpointing, step: int, state, meta: dict[str, Any]) -> None:
  """Writes checkpoint ``step``: ``state`` and the JSON-serializable ``meta`` (the loop's
  position and history), with the identity and state signature. Every process must call it."""
  import orbax.checkpoint as ocp
  manager = _manager(checkpointing.directory, checkpointing.keep)
  meta = {**meta, "identity": checkpointing.identity, "signature": state_signature(state)}
  if checkpointing.run is not None:
    meta["run_identity"] = checkpointing.run
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_storable(state)),
                                             meta=ocp.args.JsonSave(meta)), force=True)
  manager.wait_until_finished()
  manager.close()


def read_meta(directory) -> dict[str, Any] | None:
  """The metadata (position, history, identities) of the newest checkpoint in ``directory`` whose
  metadata reads (``None`` if none)."""
  import orbax.checkpoint as ocp
  for step in checkpoint_steps(directory):
    try:
      return _restore(directory, step, meta=ocp.args.JsonRestore())["meta"]
    except Exception:  # noqa: BLE001 - damaged: an older one may do
      continue
  return None


def read_identity(directory) -> dict[str, Any] | None:
  """The identity stored with the newest checkpoint in ``directory`` (``None`` if none)."""
  meta = read_meta(directory)
  return None if meta is None else meta["identity"]


def run_mismatch(directory, meta: dict[str, Any], run: dict[str, Any] | None) -> str | None:
  """Why the checkpoint whose ``meta`` this is cannot resume the run of identity ``run``: the fields
  that differ, in one line; ``None`` if it can (or either side has no run identity: older checkpoints;
  a field only one side has, one another kdjax version added or dropped, is not a difference)."""
  stored = meta.get("run_identity")
  if run is None or not stored or stored.get("hash") == run["hash"]:
    return None
  # Fields only one side has (a setting a later kdjax added or dropped) do not count: their defaults keep results.
  saved = stored.get("fields", {})
  common = set(saved) & set(run["fields"])
  changed = differences({k: saved[k] for k in common}, {k: run["fields"][k] for k in common})
  if not changed:
    return None
  return (f"the checkpoint in {directory} is of another run, {len(changed)} setting(s) differ (saved -> now): "
          f"{'; '.join(changed)}. Resume it with the settings it was made with, or start afresh in another workdir")


def checkpoint_steps(directory) -> list[int]:
  """The complete checkpoints' steps in ``directory``, newest first."""
  if not Path(directory).exists():
    return []
  manager = _manager(directory, 1 << 30)
  try:
    return sorted(manager.all_steps(), reverse=True)
  finally:
    manager.close()


def restore_run(checkpointing: Checkpointing, like) -> tuple[Any, dict[str, Any]] | None:
  """``(state, meta)`` from the newest complete checkpoint that restores, into the structure of
  ``like`` (a freshly initialized state of the same run), or ``None`` if there is none.

  A checkpoint of another identity or state signature (another model, method or optimizer) is a
  ``ValueError`` naming both. One that fails to read (damaged on disk) is moved aside to
  ``corrupt-<step>`` in the same folder, with a warning, and the previous one is tried.
  """
  import orbax.checkpoint as ocp
  directory = Path(checkpointing.directory).absolute()
  steps = checkpoint_steps(directory)
  for step in steps:
    try:
      meta = _restore(directory, step, meta=ocp.args.JsonRestore())["meta"]
      target = _before_data_stream(like) if meta.get("signature") == _legacy_signature(like) else like
      _check_identity(directory, step, meta, checkpointing.identity, state_signature(target))
      if (why := run_mismatch(directory, meta, checkpointing.run)) is not None:
        raise _Mismatch(why)
      abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), _dtype(a)), _storable(target))
      state = _restore(directory, step, state=ocp.args.StandardRestore(abstract))["state"]
    except _Mismatch as e:
      raise ValueError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - whatever Orbax or TensorStore raise on a damaged file
      aside = directory / f"corrupt-{step}"
      while aside.exists():
        aside = aside.with_name(aside.name + "+")
      if jax.process_index() == 0:
        shutil.move(str(directory / str(step)), str(aside))
      warnings.warn(f"checkpoint {directory / str(step)} could not be read ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:200] if str(e) else ''}); moved to {aside}, trying the previous one",
                    stacklevel=2)
      continue
    state = jax.tree.map(lambda a, ref: jax.random.wrap_key_data(a, impl=jax.random.key_impl(ref)) if is_key(ref)
                         else a, state, target)
    if target is not like:  # its data stream was its own key's, as every single run's was then
      state = like._replace(**state._asdict(), data_rng=jax.numpy.copy(state.rng))
    return state, meta
  return None


# The train state's fields before it held a data stream of its own (``data_rng``, 2026-12-05).
_StateBeforeDataStream = collections.namedtuple("TrainState", ["params", "rest", "opt_state", "step", "rng",
                                                               "method_params", "method_state", "ema"])


def _before_data_stream(like):
  """``like`` as a train state was before it held a data stream of its own (``data_rng``)."""
  if getattr(like, "data_rng", None) is None:
    return like
  return _StateBeforeDataStream(*like[:8])


def _legacy_signature(like) -> str | None:
  """The signature a checkpoint of ``like``'s run had before states held ``data_rng``: such a
  checkpoint restores exactly, its data stream being its own key's (a single run's always was)."""
  old = _before_data_stream(like)
  return None if old is like else state_signature(old)


class _Mismatch(Exception):
  """A readable checkpoint of another run: an error to report, not damage to step over."""


def _restore(directory, step: int, **items):
  import orbax.checkpoint as ocp
  manager = _manager(directory, 1 << 30)
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  finally:
    manager.close()


def _check_identity(directory, step, meta, identity, signature) -> None:
  stored = meta.get("identity", {})
  identity = json.loads(json.dumps(identity))  # as stored: tuples become lists
  if identity and stored != identity:
    raise _Mismatch(f"checkpoint {directory}/{step} holds {_describe(stored)}, but this run builds "
                     f"{_describe(identity)}: restore it into the same architecture, or use another directory")
  if meta.get("signature") != signature:
    raise _Mismatch(f"checkpoint {directory}/{step} holds a train state of another structure (model, method or "
                     f"optimizer) than this run's ({_describe(stored)}); use another directory")


def _describe(identity: dict[str, Any]) -> str:
  if not identity:
    return "an unnamed state"
  return ", ".join(f"{k} {v}" for k, v in identity.items())
