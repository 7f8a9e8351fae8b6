"""Robustness of a trained model: accuracy under Gaussian noise, common corruptions and adversarial
attacks (FGSM, PGD with an L∞ budget).

Every perturbation is a pure function of float images in ``[0, 1]`` (``[B, H, W, C]``); the
attacks take ``logits_fn(x) -> logits``, so they work on any model (:func:`model_logits` makes one
from a kdjax model's pytrees) and are differentiated with ``jax.grad`` under ``jit``. Adversarial
examples always stay in the valid range ``[0, 1]`` and within ``ε`` of the clean image in L∞.

- FGSM (Goodfellow et al. 2015): ``x + ε·sign(∇ₓ CE(f(x), y))``, clipped to ``[0, 1]``.
- PGD (Madry et al. 2018): from a uniform random start in the ε-ball (or the clean image), ``steps``
  signed-gradient steps of ``step_size``, each projected back onto the ε-ball and the valid range.
  One step from the clean image with ``step_size = ε`` is FGSM exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.data.augment import padded_batches, shift_crop, to_float
from kdjax.models.functional import apply_model

LogitsFn = Callable[[jax.Array], jax.Array]


def model_logits(graphdef, params, rest) -> LogitsFn:
  """``x -> logits`` of a kdjax model in inference mode (float images in ``[0, 1]``)."""
  return lambda x: apply_model(graphdef, params, rest, x, train=False)[0]


def check_epsilon(eps: float) -> None:
  if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
    raise ValueError(f"the attack budget epsilon must be a finite number >= 0 (in pixel units of [0, 1]), got {eps!r}")


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
  check_epsilon(eps)
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"PGD needs steps >= 1, got {steps!r}")
  step_size = 2.5 * eps / steps if step_size is None else step_size
  if eps > 0 and not (math.isfinite(step_size) and step_size > 0):
    raise ValueError(f"PGD's step_size must be > 0, got {step_size!r}")
  lo, hi = jnp.clip(x - eps, 0.0, 1.0), jnp.clip(x + eps, 0.0, 1.0)
  start = jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), lo, hi) if random_start else x

  def body(_, x_adv):
    return jnp.clip(x_adv + step_size * jnp.sign(_input_grad(logits_fn, x_adv, labels)), lo, hi)

  return jax.lax.fori_loop(0, steps, body, start)


# --- Noise and common corruptions -----------------------------------------------------------------

def gaussian_noise(key: jax.Array, x: jax.Array, sigma: float) -> jax.Array:
  """``x`` plus Gaussian noise of standard deviation ``sigma``, clipped to ``[0, 1]``."""
  if not sigma >= 0:
    raise ValueError(f"noise sigma must be >= 0, got {sigma!r}")
  return jnp.clip(x + sigma * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


def box_blur(x: jax.Array, size: int) -> jax.Array:
  """Each pixel the mean of the ``size × size`` window around it (zeros beyond the border): a
  defocus-like blur; ``size`` odd, 1 is no blur."""
  if size < 1 or size % 2 == 0:
    raise ValueError(f"blur size must be an odd integer >= 1, got {size!r}")
  k = size // 2
  padded = jnp.pad(x, ((0, 0), (k, k), (k, k), (0, 0)))
  out = sum(padded[:, i:i + x.shape[1], j:j + x.shape[2], :] for i in range(size) for j in range(size))
  return out / size**2


def contrast(x: jax.Array, factor: float) -> jax.Array:
  """Contrast scaled by ``factor`` around each image's mean (``factor < 1`` lowers it)."""
  if not factor >= 0:
    raise ValueError(f"contrast factor must be >= 0, got {factor!r}")
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return jnp.clip(mean + factor * (x - mean), 0.0, 1.0)


def translate(x: jax.Array, pixels: int) -> jax.Array:
  """Every image shifted right and down by ``pixels`` (zeros shifted in)."""
  if pixels < 0:
    raise ValueError(f"translation must be >= 0 pixels, got {pixels!r}")
  if pixels == 0:
    return x
  offsets = jnp.zeros((x.shape[0], 2), jnp.int32)  # offset 0 into the padded image: shifted by +pixels
  return shift_crop(x, offsets, pixels)


CORRUPTIONS = {
    "blur": (box_blur, (3, 5)),
    "contrast": (contrast, (0.5, 0.25)),
    "translate": (translate, (2, 4)),
}


def robustness_report(graphdef, params, rest, images, labels, *, noise: Sequence[float] = (0.1, 0.2, 0.3),
                      corruptions: dict[str, Sequence[Any]] | None = None, fgsm_eps: Sequence[float] = (0.05, 0.1),
                      pgd_eps: Sequence[float] = (0.05, 0.1), pgd_steps: int = 10, seed: int = 0,
                      batch_size: int = 500) -> dict[str, float]:
  """Test accuracy of a model clean and under every perturbation: ``{"clean": acc, "noise σ":
  acc, "blur 3": acc, ..., "fgsm ε": acc, "pgd ε": acc}`` (images uint8, labels int). Each
  perturbation is one jitted function over fixed-size padded batches; draws come from ``seed``."""
  for eps in (*fgsm_eps, *pgd_eps):
    check_epsilon(eps)
  corruptions = {k: v[1] for k, v in CORRUPTIONS.items()} if corruptions is None else corruptions
  for name in corruptions:
    if name not in CORRUPTIONS:
      raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")

  def accuracy_under(perturb: Callable[..., jax.Array]) -> float:
    """``perturb(logits_fn, key, x, y) -> x'``; the model's variables are arguments of the jitted
    function, never constants baked into it."""
    @jax.jit
    def correct(params, rest, key, xb, yb, mask):
      logits_fn = model_logits(graphdef, params, rest)
      x = perturb(logits_fn, key, to_float(xb), yb)
      return jnp.sum((jnp.argmax(logits_fn(x), -1) == yb) & mask)

    total, key = jnp.zeros((), jnp.int32), jax.random.key(seed)
    for i, (xb, yb, mask) in enumerate(padded_batches(images, labels, min(batch_size, len(labels)))):
      total = total + correct(params, rest, jax.random.fold_in(key, i), xb, yb, mask)  # summed on the device
    return int(total) / len(labels)

  report = {"clean": accuracy_under(lambda f, k, x, y: x)}
  for s in noise:
    report[f"noise {s:g}"] = accuracy_under(lambda f, k, x, y, s=s: gaussian_noise(k, x, s))
  for name, levels in corruptions.items():
    fn = CORRUPTIONS[name][0]
    for level in levels:
      report[f"{name} {level:g}"] = accuracy_under(lambda f, k, x, y, fn=fn, level=level: fn(x, level))
  for eps in fgsm_eps:
    report[f"fgsm {eps:g}"] = accuracy_under(lambda f, k, x, y, eps=eps: fgsm(f, x, y, eps))
  for eps in pgd_eps:
    report[f"pgd {eps:g}"] = accuracy_under(lambda f, k, x, y, eps=eps: pgd(f, k, x, y, eps, steps=pgd_steps))
  return {k: float(np.round(v, 6)) for k, v in report.items()}
