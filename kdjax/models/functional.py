"""Functional use of NNX models: split once into pytrees, merge inside jit."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx


def split_model(model: nnx.Module):
  """Returns ``(graphdef, params, rest)``: the static structure, the trainable
  ``nnx.Param`` state and every other variable (e.g. batch statistics)."""
  return nnx.split(model, nnx.Param, ...)


def apply_model(graphdef, params, rest, x: jax.Array, *, train: bool, rngs: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array], Any]:
  """Pure forward pass: ``(logits, feats, new_rest)``.

  ``new_rest`` is the non-parameter state after the call (batch statistics in
  training mode); models without such state return it unchanged.
  """
  model = nnx.merge(graphdef, params, rest, copy=True)  # never mutates the caller's ``rest``, even outside jit
  logits, feats = model(x, train=train, rngs=rngs)
  _, _, new_rest = nnx.split(model, nnx.Param, ...)
  return logits, feats, new_rest


def feature_shapes(graphdef, params, rest, input_shape, batch_size: int = 2) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of the named features for images of ``input_shape``, without data or FLOPs
  (``jax.eval_shape``): what a method needs to size its connectors at init."""
  x = jax.ShapeDtypeStruct((batch_size, *input_shape), jax.numpy.float32)
  _, feats, _ = jax.eval_shape(lambda p, r, x: apply_model(graphdef, p, r, x, train=False), params, rest, x)
  return feats
