"""Robustness of a trained model: accuracy under Gaussian noise, common corruptions and adversarial
attacks (FGSM, PGD with an L∞ budget; the attacks live in :mod:`kdjax.attacks`).

Every perturbation is a pure function of float images in ``[0, 1]`` (``[B, H, W, C]``); the
attacks take ``logits_fn(x) -> logits``, so they work on any model (:func:`model_logits` makes one
from a kdjax model's pytrees) and are differentiated with ``jax.grad`` under ``jit``. Adversarial
examples always stay in the valid range ``[0, 1]`` and within ``ε`` of the clean image in L∞.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.attacks import LogitsFn, fgsm, model_logits, pgd  # all four re-exported (see __all__)
from kdjax.data.augment import padded_batches, shift_crop, to_float
from kdjax.losses.validate import check_epsilon, check_pgd, is_traced
from kdjax.plotting import colors, figure, legend, save
from kdjax.stats import mean_std

__all__ = ["CORRUPTIONS", "LogitsFn", "box_blur", "contrast", "fgsm", "gaussian_noise", "model_logits", "pgd",
           "plot_attack_curves", "robustness_report", "translate"]


# --- Noise and common corruptions -----------------------------------------------------------------

def gaussian_noise(key: jax.Array, x: jax.Array, sigma: float) -> jax.Array:
  """``x`` plus Gaussian noise of standard deviation ``sigma``, clipped to ``[0, 1]``."""
  if not is_traced(sigma) and not sigma >= 0:
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
  if not is_traced(factor) and not factor >= 0:
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


# The perturbations ``robustness_report`` applies: those with a traced strength compile once for
# every level; blur sizes and translations change shapes or loops, so each is its own program.
_TRACED = ("clean", "noise", "contrast", "fgsm", "pgd")


@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "static"))
def _correct(graphdef, kind: str, static, params, rest, key, level, xb, yb, mask):
  """Correct predictions of a batch under one perturbation; the model's variables and the
  perturbation's strength are arguments, never constants baked into the program."""
  logits_fn = model_logits(graphdef, params, rest)
  x = to_float(xb)
  if kind == "noise":
    x = gaussian_noise(key, x, level)
  elif kind == "contrast":
    x = contrast(x, level)
  elif kind == "fgsm":
    x = fgsm(logits_fn, x, yb, level)
  elif kind == "pgd":
    x = pgd(logits_fn, key, x, yb, level, steps=static)
  elif kind != "clean":
    x = CORRUPTIONS[kind][0](x, static)
  return jnp.sum((jnp.argmax(logits_fn(x), -1) == yb) & mask)


def robustness_report(graphdef, params, rest, images, labels, *, noise: Sequence[float] = (0.1, 0.2, 0.3),
                      corruptions: dict[str, Sequence[Any]] | None = None, fgsm_eps: Sequence[float] = (0.05, 0.1),
                      pgd_eps: Sequence[float] = (0.05, 0.1), pgd_steps: int = 10, seed: int = 0,
                      batch_size: int = 500) -> dict[str, float]:
  """Test accuracy of a model clean and under every perturbation: ``{"clean": acc, "noise σ":
  acc, "blur 3": acc, ..., "fgsm ε": acc, "pgd ε": acc}`` (images uint8, labels int). Each kind of
  perturbation is one jitted program over fixed-size padded batches, shared by every strength and by
  every model of the same architecture; random draws come from ``seed``."""
  for eps in fgsm_eps:
    check_epsilon(eps)
  for eps in pgd_eps:
    check_pgd(eps, pgd_steps, None)
  probe = jnp.zeros((1, 1, 1, 1))
  for s in noise:
    gaussian_noise(jax.random.key(0), probe, s)  # checks sigma before anything runs
  corruptions = {k: v[1] for k, v in CORRUPTIONS.items()} if corruptions is None else corruptions
  for name, levels in corruptions.items():
    if name not in CORRUPTIONS:
      raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    for level in levels:  # every level checked in Python, before the traced runs
      CORRUPTIONS[name][0](jnp.zeros((1, 3, 3, 1)), level)
  batches = list(padded_batches(images, labels, min(batch_size, len(labels))))

  def accuracy_under(kind: str, level=0.0, static=None) -> float:
    if kind in _TRACED:
      level = jnp.float32(level)
    total, key = jnp.zeros((), jnp.int32), jax.random.key(seed)
    for i, (xb, yb, mask) in enumerate(batches):  # summed on the device, fetched once
      total = total + _correct(graphdef, kind, static, params, rest, jax.random.fold_in(key, i),
                               level, xb, yb, mask)
    return int(total) / len(labels)

  report = {"clean": accuracy_under("clean")}
  for s in noise:
    report[f"noise {s:g}"] = accuracy_under("noise", s)
  for name, levels in corruptions.items():
    for level in levels:
      report[f"{name} {level:g}"] = (accuracy_under(name, level) if name in _TRACED
                                     else accuracy_under(name, static=level))
  for eps in fgsm_eps:
    report[f"fgsm {eps:g}"] = accuracy_under("fgsm", eps)
  for eps in pgd_eps:
    report[f"pgd {eps:g}"] = accuracy_under("pgd", eps, static=pgd_steps)
  return {k: float(np.round(v, 6)) for k, v in report.items()}


def plot_attack_curves(eps: Sequence[float], curves: dict[str, Sequence[Sequence[float]]], path, *,
                       title: str = "") -> Any:
  """Accuracy (%) against the attack budget, one line per model: ``curves[name][i]`` holds the
  accuracies (one per seed) at ``eps[i]``; the line is their mean, with error bars of one sample
  standard deviation where there are several. Writes a PNG to ``path`` and returns the path."""
  fig = figure(6.4, 4.2)
  ax = fig.add_subplot()
  for color, (name, values) in zip(colors(len(curves)), curves.items()):
    means, stds = zip(*(mean_std(list(v)) for v in values))
    ax.errorbar(list(eps), means, yerr=stds if any(len(v) > 1 for v in values) else None, label=name,
                color=color, marker="o", markersize=3, capsize=2)
  ax.set_xlabel("ε (L∞, pixel units of [0, 1])")
  ax.set_ylabel("test accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.set_title(title, fontsize="medium")
  legend(ax, len(curves))
  return save(fig, path)
