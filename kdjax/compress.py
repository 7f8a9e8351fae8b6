"""Compression for deployment: post-training int8 weight quantization and export of a trained model
as serialized StableHLO (``jax.export``).

Quantization is symmetric and per output channel: each kernel ``W[..., c]`` is stored as int8
``q = round(W / s_c)`` in ``[-127, 127]`` with one float32 scale ``s_c = max |W[..., c]| / 127``,
so ``|W − q·s_c| <= s_c / 2``. Kernels (``kernel``: Linear, Conv, the recurrent cells' Linear
layers) and embeddings are quantized; biases and normalization parameters (1-D) stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.models.functional import apply_model, input_dtype

QUANTIZABLE = ("kernel", "embedding")  # the names of the weight matrices and filters that take int8


def quantize(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(q_int8, scale)`` of a kernel, one scale per output channel (the last axis)."""
  w = jnp.asarray(w, jnp.float32)
  if w.ndim < 2:
    raise ValueError(f"per-channel quantization takes a kernel of 2 or more dimensions, got shape {w.shape}")
  amax = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)))
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)  # an all-zero channel keeps scale 1 (q = 0)
  q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
  return q, scale.astype(jnp.float32)


def dequantize(q: jax.Array, scale: jax.Array) -> jax.Array:
  return q.astype(jnp.float32) * scale


def _names(path) -> list[str]:
  """The keys of a parameter's path (an NNX ``Param``'s ``.value`` skipped)."""
  return [n for n in (str(getattr(k, "key", getattr(k, "name", k))) for k in path) if n != "value"] or [""]


def _is_matrix(leaf) -> bool:
  """A float parameter of 2 or more dimensions: a weight matrix or filter of some layer."""
  return jnp.ndim(leaf) >= 2 and jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)


def quantize_params(params: Any) -> Any:
  """The parameter pytree with every kernel and embedding replaced by ``{"q": int8, "scale": f32}``.
  A float parameter of 2 or more dimensions under any other name belongs to a layer this
  quantizer does not know: an error naming its path."""
  def one(path, w):
    if not _is_matrix(w):
      return w
    if _names(path)[-1] not in QUANTIZABLE:
      raise ValueError(f"cannot quantize parameter {jax.tree_util.keystr(path)} of shape {jnp.shape(w)}: only "
                       f"{' and '.join(QUANTIZABLE)} weights (Linear, Conv, Embed layers) are supported")
    q, scale = quantize(w)
    return {"q": q, "scale": scale}

  return jax.tree_util.tree_map_with_path(one, params)


def _is_quantized(x) -> bool:
  return isinstance(x, dict) and set(x) == {"q", "scale"}


def dequantize_params(qparams: Any) -> Any:
  """Float32 parameters back from :func:`quantize_params`, for running the model."""
  return jax.tree.map(lambda x: dequantize(x["q"], x["scale"]) if _is_quantized(x) else x, qparams,
                      is_leaf=_is_quantized)


def size_bytes(tree: Any) -> int:
  """Bytes the arrays of a pytree take (int8 weights count 1 byte each)."""
  return int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree)))


def export_model(graphdef, params, rest, input_shape: Sequence[int] | None) -> bytes:
  """The model's inference function ``x -> logits`` for inputs of ``input_shape`` (one example's
  shape; any batch size) with its weights, as serialized StableHLO (``jax.export``): it runs with
  :func:`load_exported` and JAX alone, without kdjax or the model's code."""
  if input_shape is None or any(d is None or int(d) < 1 for d in input_shape):
    raise ValueError(f"export needs the model's input shape (one example, e.g. (28, 28, 1)), got {input_shape!r}")
  input_shape = tuple(int(d) for d in input_shape)

  def logits(x):
    return apply_model(graphdef, params, rest, x, train=False)[0]

  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, *input_shape), input_dtype(input_shape))
  return bytes(jax.export.export(jax.jit(logits))(spec).serialize())


def load_exported(blob: bytes):
  """``x -> logits`` from :func:`export_model`'s bytes."""
  exported = jax.export.deserialize(bytearray(blob))
  return exported.call


# --- Magnitude pruning ----------------------------------------------------------------------------

def _prunable(path, leaf) -> bool:
  """Kernels and embeddings of the model (not a distillation method's own parts: a path under a
  ``"method"`` key), like the quantizer's."""
  names = _names(path)
  return _is_matrix(leaf) and names[-1] in QUANTIZABLE and names[0] != "method"


def check_sparsity(sparsity: float) -> None:
  if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
    raise ValueError(f"sparsity must lie in [0, 1) (the fraction of weights set to zero), got {sparsity!r}")


def magnitude_masks(params: Any, sparsity, *, scope: str = "global") -> Any:
  """Boolean masks (``True`` = kept) that zero the fraction ``sparsity`` of smallest-magnitude weights
  of every kernel and embedding: over all of them together (``scope="global"``) or within each
  (``"layer"``); exactly ``floor(sparsity·n)`` weights, ties broken by position. Other parameters
  keep everything. ``sparsity`` may be traced (a schedule inside a jitted step)."""
  if scope not in ("global", "layer"):
    raise ValueError(f"unknown pruning scope {scope!r}; use 'global' or 'layer'")
  if not isinstance(sparsity, jax.Array):
    check_sparsity(sparsity)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  prunable = [_prunable(p, w) for p, w in leaves]

  def keep(magnitudes):  # True for all but the floor(sparsity * n) smallest, exactly
    n = magnitudes.size
    k = jnp.floor(sparsity * n).astype(jnp.int32)
    rank = jnp.zeros(n, jnp.int32).at[jnp.argsort(magnitudes.ravel(), stable=True)].set(jnp.arange(n, dtype=jnp.int32))
    return (rank >= k).reshape(magnitudes.shape)

  masks = [jnp.ones(jnp.shape(w), bool) for _, w in leaves]
  chosen = [i for i, p in enumerate(prunable) if p]
  if scope == "layer":
    for i in chosen:
      masks[i] = keep(jnp.abs(leaves[i][1]))
  elif chosen:
    flat = keep(jnp.concatenate([jnp.abs(leaves[i][1]).ravel() for i in chosen]))
    start = 0
    for i in chosen:
      size = leaves[i][1].size
      masks[i] = flat[start:start + size].reshape(leaves[i][1].shape)
      start += size
  return jax.tree_util.tree_unflatten(treedef, masks)


def sparsity_of(params: Any) -> float:
  """The fraction of zeros among the kernels and embeddings."""
  leaves = [w for p, w in jax.tree_util.tree_flatten_with_path(params)[0] if _prunable(p, w)]
  total = sum(w.size for w in leaves)
  return float(sum(int(jnp.sum(w == 0)) for w in leaves)) / max(total, 1)


class PruningState(NamedTuple):
  inner: Any
  masks: Any
  count: jax.Array


def pruning(tx, *, final_sparsity: float, start_step: int = 0, end_step: int = 0, every: int = 1,
            scope: str = "global"):
  """``tx`` with magnitude pruning: the optimizer state keeps a mask per weight, pruned weights get
  no gradient and an update that sets them to exactly zero, so they stay zero through any optimizer
  (momentum, weight decay). The sparsity follows Zhu & Gupta (2017)'s schedule
  ``s_t = s_f·(1 − (1 − (t − t0)/(t1 − t0))³)`` from ``start_step`` t0 to ``end_step`` t1, with the
  masks recomputed from the weights' magnitudes every ``every`` steps; ``end_step == start_step``
  is one-shot pruning at ``start_step``."""
  import optax
  check_sparsity(final_sparsity)
  if end_step < start_step or start_step < 0 or every < 1:
    raise ValueError(f"pruning needs 0 <= start_step <= end_step and every >= 1, got start_step {start_step}, "
                     f"end_step {end_step}, every {every}")

  def target(count):
    if end_step == start_step:
      return jnp.where(count >= start_step, final_sparsity, 0.0)
    frac = jnp.clip((count - start_step) / (end_step - start_step), 0.0, 1.0)
    return jnp.where(count >= start_step, final_sparsity * (1.0 - (1.0 - frac) ** 3), 0.0)

  def init(params):
    return PruningState(tx.init(params), jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params),
                        jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pruning needs the parameters in update(updates, state, params)")
    count = state.count
    due = (count >= start_step) & (count <= end_step) & ((count - start_step) % every == 0)
    due = due | ((count == end_step) & (count >= start_step))
    masks = jax.lax.cond(due, lambda: magnitude_masks(jax.tree.map(lambda w, m: w * m, params, state.masks),
                                                       target(count), scope=scope),
                         lambda: state.masks)
    updates = jax.tree.map(lambda u, m: jnp.where(m, u, 0), updates, masks)
    inner_updates, inner = tx.update(updates, state.inner, params)
    # A pruned weight moves to exactly zero and stays there.
    final = jax.tree.map(lambda u, w, m: jnp.where(m, u, -w), inner_updates, params, masks)
    return final, PruningState(inner, masks, count + 1)

  return optax.GradientTransformation(init, update)
