"""Evaluation: a model's accuracy, errors and loss over a whole split, in fixed-size batches."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from kdjax import parallel
from kdjax.compress import fake_quantize
from kdjax.data.augment import padded_batches, to_float
from kdjax.models.functional import apply_model


def make_eval_step(graphdef, *, fake_quant: bool = False) -> Callable:
  """Jitted ``eval_step(params, rest, images_uint8, labels, mask) -> (correct, loss_sum,
  predicted)`` (``predicted``: how many of the batch's examples each class was predicted for); with
  ``fake_quant``, of the model with its weights rounded to int8 (what
  :func:`kdjax.compress.quantize_params` stores)."""

  def eval_step(params, rest, images, labels, mask):
    params = fake_quantize(params) if fake_quant else params
    logits, _, _ = apply_model(graphdef, params, rest, to_float(images), train=False)
    logits = logits.astype(jnp.float32)
    predicted = jnp.argmax(logits, -1)
    correct = jnp.sum((predicted == labels) & mask)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    counts = jnp.zeros(logits.shape[-1], jnp.int32).at[predicted].add(mask.astype(jnp.int32))
    return correct, jnp.sum(jnp.where(mask, nll, 0.0)), counts

  return jax.jit(eval_step)


def evaluate(eval_step: Callable, params, rest, images, labels, batch_size: int = 1000, *,
             mesh=None) -> dict[str, float]:
  """Accuracy, error count, mean loss and ``top_class_share`` (the share of the examples predicted
  as the most-predicted class: near 1 for a collapsed model) over a whole split, in fixed-size
  padded batches; with a
  ``mesh``, each batch is split over its ``"data"`` axis (the batch size rounded up to a multiple
  of it) and the counts are reduced over every device."""

  n = len(labels)
  if mesh is not None:
    k = parallel.data_size(mesh)
    batch_size = -(-min(batch_size, n) // k) * k
  sums = None
  for xb, yb, mask in padded_batches(images, labels, batch_size):
    if mesh is not None and not parallel.trivial(mesh):
      xb, yb, mask = parallel.host_batch((xb, yb, mask), mesh)
    out = eval_step(params, rest, xb, yb, mask)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  correct, loss_sum, counts = jax.device_get(sums)
  return {"accuracy": float(correct) / n, "errors": int(n - correct), "loss": float(loss_sum) / n,
          "top_class_share": float(counts.max()) / n}
