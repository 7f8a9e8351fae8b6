"""Compression for deployment: post-training int8 weight quantization and export of a trained model
as serialized StableHLO (``jax.export``).

Quantization is symmetric and per output channel: each kernel ``W[..., c]`` is stored as int8
``q = round(W / s_c)`` in ``[-127, 127]`` with one float32 scale ``s_c = max |W[..., c]| / 127``,
so ``|W − q·s_c| <= s_c / 2``. Kernels (``kernel``: Linear, Conv, the recurrent cells' Linear
layers) and embeddings are quantized; biases and normalization parameters (1-D) stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def _name(path) -> str:
  """The parameter's own name: the last key of its path (an NNX ``Param``'s ``.value`` skipped)."""
  names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
  names = [n for n in names if n != "value"]
  return names[-1] if names else ""


def quantize_params(params: Any) -> Any:
  """The parameter pytree with every kernel and embedding replaced by ``{"q": int8, "scale": f32}``.
  A float parameter of 2 or more dimensions under any other name belongs to a layer this
  quantizer does not know: an error naming its path."""
  def one(path, w):
    if not jnp.issubdtype(jnp.asarray(w).dtype, jnp.floating) or jnp.ndim(w) < 2:
      return w
    if _name(path) not in QUANTIZABLE:
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
