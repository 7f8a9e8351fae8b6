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
  """Jitted ``eval_step(params, rest, images_uint8, labels, mask) -> (correct, loss_sum)``; with
  ``fake_quant``, of the model with its weights rounded to int8 (what
  :func:`kdjax.compress.quantize_params` stores)."""

  def eval_step(params, rest, images, labels, mask):
    params = fake_quantize(params) if fake_quant else params
    logits, _, _ = apply_model(graphdef, params, rest, to_float(images), train=False)
    logits = logits.astype(jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & mask)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return correct, jnp.sum(jnp.where(mask, nll, 0.0))

  return jax.jit(eval_step)


def evaluate(eval_step: Callable, params, rest, images, labels, batch_size: int = 1000, *,
             mesh=None) -> dict[str, float]:
  """Accuracy, error count and mean loss over a whole split, in fixed-size padded batches; with a
  ``mesh``, each batch is split over its ``"data"`` axis (the batch size rounded up to a multiple
  of it) and the counts are reduced over every device."""

  n = len(labels)
  if mesh is not None:
    k = parallel.data_size(mesh)
    batch_size = -(-min(batch_size, n) // k) * k
  correct = jnp.zeros((), jnp.int32)
  loss_sum = jnp.zeros((), jnp.float32)
  for xb, yb, mask in padded_batches(images, labels, batch_size):
    if mesh is not None and not parallel.trivial(mesh):
      xb, yb, mask = parallel.host_batch((xb, yb, mask), mesh)
    c, l = eval_step(params, rest, xb, yb, mask)
    correct, loss_sum = correct + c, loss_sum + l
  correct, loss_sum = jax.device_get((correct, loss_sum))
  return {"accuracy": float(correct) / n, "errors": int(n - correct), "loss": float(loss_sum) / n}
