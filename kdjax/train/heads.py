"""Early-exit evaluation: the accuracy of each shallow classifier a method trains with the
student (BYOT's, :func:`kdjax.methods.byot`), next to the model's own output."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from kdjax.data.augment import padded_batches, to_float
from kdjax.methods import Method
from kdjax.models.functional import apply_model


def make_heads_eval_step(graphdef, method: Method) -> Callable:
  """Jitted ``step(params, rest, method_params, images_uint8, labels, mask) -> {exit: (correct, loss_sum)}``
  over one batch: the model in inference mode, then ``method.head_logits`` on its features
  (batch-norm statistics of the examples where ``mask`` is true), plus ``"final"``, the
  model's own logits, computed as :func:`kdjax.train.make_eval_step` does."""
  if method.head_logits is None:
    raise ValueError("this method has no shallow classifiers (no head_logits); evaluate it with make_eval_step")

  def step(params, rest, method_params, images, labels, mask):
    logits, feats, _ = apply_model(graphdef, params, rest, to_float(images), train=False)
    heads = method.head_logits(method_params, feats, mask)
    if "final" in heads:
      raise ValueError("a shallow classifier may not be named 'final' (the model's own output)")
    out = {}
    for name, z in {**heads, "final": logits}.items():
      z = z.astype(jnp.float32)
      correct = jnp.sum((jnp.argmax(z, -1) == labels) & mask)
      nll = optax.softmax_cross_entropy_with_integer_labels(z, labels)
      out[name] = (correct, jnp.sum(jnp.where(mask, nll, 0.0)))
    return out

  return jax.jit(step)


# One compiled step per (model, method) pair, across calls.
_cached_step = functools.lru_cache(maxsize=16)(make_heads_eval_step)


def evaluate_heads(graphdef, params, rest, method: Method, method_params, images, labels,
                   batch_size: int = 1000) -> dict[str, dict[str, float]]:
  """Accuracy, error count and mean cross-entropy of every early exit over a whole split:
  ``{tap: {"accuracy", "errors", "loss"}, ..., "final": {...}}``, ``"final"`` being the
  model's own classifier (what :func:`kdjax.train.evaluate` reports).

  Runs in fixed-size padded batches under one ``jax.jit``, as :func:`kdjax.train.evaluate`.
  The model runs in inference mode; the shallow classifiers' batch norm uses the statistics
  of each batch's real examples (see :func:`kdjax.methods.byot`), so their numbers can move
  slightly with ``batch_size``; ``"final"``'s cannot.
  """
  n = len(labels)
  if n == 0:
    raise ValueError("evaluate_heads needs at least one example")
  step = _cached_step(graphdef, method)
  totals = None
  for xb, yb, mask in padded_batches(images, labels, batch_size):
    out = step(params, rest, method_params, xb, yb, mask)
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  return {name: {"accuracy": float(c) / n, "errors": int(n - c), "loss": float(l) / n}
          for name, (c, l) in totals.items()}
