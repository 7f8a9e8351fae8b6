"""Functional use of NNX models: split once into pytrees, merge inside jit."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}


def compute_dtype(precision: str):
  """The compute dtype of a precision name: ``"fp32"`` (None: the parameters' own float32) or
  ``"bf16"`` (bfloat16 compute, float32 parameters)."""
  try:
    return PRECISIONS[precision]
  except (KeyError, TypeError):
    raise ValueError(f"unknown precision {precision!r}; use one of: {', '.join(PRECISIONS)}") from None


def _set_compute_dtype(model: nnx.Module, dtype) -> None:
  """Every Flax layer with a compute ``dtype`` (Linear, Conv, BatchNorm, LayerNorm, Embed, ...)
  computes in ``dtype``; its parameters keep their ``param_dtype``, and normalization statistics
  are still reduced in float32 (Flax's ``_compute_stats``)."""
  for _, module in nnx.iter_modules(model):
    if hasattr(module, "dtype") and hasattr(module, "param_dtype"):
      module.dtype = dtype


def split_model(model: nnx.Module):
  """Returns ``(graphdef, params, rest)``: the static structure, the trainable
  ``nnx.Param`` state and every other variable (e.g. batch statistics)."""
  return nnx.split(model, nnx.Param, ...)


def apply_model(graphdef, params, rest, x: jax.Array, *, train: bool, rngs: jax.Array | None = None,
                dtype=None) -> tuple[jax.Array, dict[str, jax.Array], Any]:
  """Pure forward pass: ``(logits, feats, new_rest)``.

  ``new_rest`` is the non-parameter state after the call (batch statistics in
  training mode); models without such state return it unchanged.

  ``dtype`` (e.g. ``jnp.bfloat16``, see :func:`compute_dtype`) is mixed precision: every layer
  computes in it while the parameters stay float32 (gradients reach them in float32), and the
  logits and features come back as float32 for the losses. BatchNorm's statistics are reduced
  in float32; its running averages stay float32 but are read through ``dtype`` when updated.
  """
  model = nnx.merge(graphdef, params, rest, copy=True)  # never mutates the caller's ``rest``, even outside jit
  if dtype is not None:
    _set_compute_dtype(model, dtype)
    if jnp.issubdtype(x.dtype, jnp.floating):  # images; token ids stay integers
      x = x.astype(dtype)
  logits, feats = model(x, train=train, rngs=rngs)
  _, _, new_rest = nnx.split(model, nnx.Param, ...)
  if dtype is not None:
    logits, feats = jax.tree.map(lambda a: a.astype(jnp.float32), (logits, feats))
  return logits, feats, new_rest


def input_dtype(input_shape):
  """What a model's input holds: ``int32`` token ids for a sequence shape ``(L,)``, ``float32``
  pixels for an image shape ``(H, W, C)``."""
  return jnp.int32 if len(tuple(input_shape)) == 1 else jnp.float32


def feature_shapes(graphdef, params, rest, input_shape, batch_size: int = 2) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of the named features for inputs of ``input_shape`` (images ``(H, W, C)`` or token
  sequences ``(L,)``), without data or FLOPs (``jax.eval_shape``): what a method needs to size
  its connectors at init."""
  x = jax.ShapeDtypeStruct((batch_size, *input_shape), input_dtype(input_shape))
  _, feats, _ = jax.eval_shape(lambda p, r, x: apply_model(graphdef, p, r, x, train=False), params, rest, x)
  return feats
