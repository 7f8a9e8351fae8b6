"""Adversarial attacks with an L∞ budget: FGSM and PGD, used by :mod:`kdjax.robustness` (accuracy
under attack) and by the adversarial methods' train step (adversarial training, ARD).

Every attack is a pure function of float images in ``[0, 1]`` (``[B, H, W, C]``) that takes
``logits_fn(x) -> logits``, so it works on any model (:func:`model_logits` makes one from a kdjax
model's pytrees) and is differentiated with ``jax.grad`` under ``jit``. Adversarial examples always
stay in the valid range ``[0, 1]`` and within ``ε`` of the clean image in L∞.

- FGSM (Goodfellow et al. 2015): ``x + ε·sign(∇ₓ CE(f(x), y))``, clipped to ``[0, 1]``.
- PGD (Madry et al. 2018): from a uniform random start in the ε-ball (or the clean image), ``steps``
  signed-gradient steps of ``step_size``, each projected back onto the ε-ball and the valid range.
  One step from the clean image with ``step_size = ε`` is FGSM exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from kdjax.losses.validate import check_epsilon, check_pgd
from kdjax.models.functional import apply_model

LogitsFn = Callable[[jax.Array], jax.Array]


def model_logits(graphdef, params, rest) -> LogitsFn:
  """``x -> logits`` of a kdjax model in inference mode (float images in ``[0, 1]``)."""
  return lambda x: apply_model(graphdef, params, rest, x, train=False)[0]


def _input_grad(logits_fn: LogitsFn, x, labels):
  """∇ₓ of the summed cross-entropy: each example's own gradient (the sum keeps them apart)."""
  def loss(x):
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_fn(x).astype(jnp.float32), labels))
  return jax.grad(loss)(x)


def fgsm(logits_fn: LogitsFn, x: jax.Array, labels: jax.Array, eps: float) -> jax.Array:
  """The fast gradient sign method: one step of ``ε`` along the sign of the loss's input gradient,
  clipped to ``[0, 1]``."""
  check_epsilon(eps)
  return jnp.clip(x + eps * jnp.sign(_input_grad(logits_fn, x, labels)), 0.0, 1.0)


def pgd(logits_fn: LogitsFn, key: jax.Array, x: jax.Array, labels: jax.Array, eps: float, *, steps: int = 10,
        step_size: float | None = None, random_start: bool = True) -> jax.Array:
  """Projected gradient descent on the loss (ascent), L∞ budget ``eps``: ``steps`` signed steps of
  ``step_size`` (default ``2.5·ε/steps``, Madry et al.'s choice), each projected onto
  ``[x − ε, x + ε] ∩ [0, 1]``; from a uniform random point of the ball when ``random_start``."""
  step_size = check_pgd(eps, steps, step_size)
  lo, hi = jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0)
  start = jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), lo, hi) if random_start else x

  def body(_, x_adv):
    return jnp.clip(x_adv + step_size * jnp.sign(_input_grad(logits_fn, x_adv, labels)), lo, hi)

  return jax.lax.fori_loop(0, steps, body, start)
