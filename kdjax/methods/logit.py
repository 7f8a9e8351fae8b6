"""Logit-level methods: KD with a divergence between softened outputs (KL, reverse KL, JS, GKD's
skewed JS), DKD, DIST."""

from __future__ import annotations

import functools

import jax.numpy as jnp

from kdjax.losses import (check_alpha, check_skew, check_temperature, dist_loss, dkd_loss, generalized_js_divergence,
                          hard_cross_entropy, js_divergence, kl_divergence, reverse_kl_divergence, standardize_logits)
from kdjax.methods.base import Method, as_method


def _logits(student_logits, teacher, standardize: bool):
  teacher_logits = teacher[0]
  if standardize:
    return standardize_logits(student_logits), standardize_logits(teacher_logits)
  return student_logits, teacher_logits


def supervised() -> Method:
  """Plain cross-entropy on the labels; needs no teacher."""

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, teacher, params
    ce = hard_cross_entropy(student_logits, batch["label"])
    return ce, {"ce": ce}

  return as_method(method, needs_teacher=False)


def hinton_kd(*, alpha: float, temperature: float, standardize: bool = False) -> Method:
  """Hinton et al. (2015): ``α·CE(y, s) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T))``,
  as :func:`kdjax.losses.hinton_kd_loss`.

  Logs ``ce`` and ``kl`` (the KL at temperature T, before the ``T²`` factor).
  ``standardize=True`` applies logit standardization (Sun et al. 2024) to both
  logits inside the KL term (the CE term keeps the raw student logits).
  """
  return _divergence_kd(kl_divergence, "kl", alpha=alpha, temperature=temperature, standardize=standardize)


def _divergence_kd(divergence, term: str, *, alpha: float, temperature: float, standardize: bool) -> Method:
  check_alpha(alpha)
  check_temperature(temperature)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    s, t = _logits(student_logits, teacher, standardize)
    ce = hard_cross_entropy(student_logits, batch["label"])
    div = divergence(s, t, temperature)
    return alpha * ce + (1.0 - alpha) * temperature**2 * div, {"ce": ce, term: div}

  return as_method(method, needs_teacher=True)


def reverse_kd(*, alpha: float = 0.5, temperature: float = 4.0, standardize: bool = False) -> Method:
  """``α·CE + (1−α)·T²·KL(softmax(s/T) ‖ softmax(t/T))``: KD with the reverse KL."""
  return _divergence_kd(reverse_kl_divergence, "reverse_kl", alpha=alpha, temperature=temperature,
                        standardize=standardize)


def js_kd(*, alpha: float = 0.5, temperature: float = 4.0, standardize: bool = False) -> Method:
  """``α·CE + (1−α)·T²·JS(softmax(s/T), softmax(t/T))``: KD with the Jensen–Shannon divergence."""
  return _divergence_kd(js_divergence, "js", alpha=alpha, temperature=temperature, standardize=standardize)


def gkd(*, alpha: float = 0.5, temperature: float = 4.0, beta: float = 0.5, standardize: bool = False) -> Method:
  """``α·CE + (1−α)·T²·JSD(β)(softmax(t/T) ‖ softmax(s/T))``: KD with the generalized
  Jensen–Shannon divergence of GKD (Agarwal et al., ICLR 2024), skew ``β`` in ``(0, 1)``, the
  teacher's weight in the mixture (:func:`kdjax.losses.generalized_js_divergence`; ``β = 0.5`` is
  :func:`js_kd`, small ``β`` behaves as forward KL and ``β`` near 1 as reverse KL, scaled by ``β``
  and ``1 − β``). GKD's on-policy part (training on the student's own samples) is for sequence
  models and is not here: this is its divergence on the training inputs. Logs ``ce`` and
  ``gjsd`` (before the ``T²`` factor)."""
  check_skew(beta)
  return _divergence_kd(functools.partial(generalized_js_divergence, beta=beta), "gjsd", alpha=alpha,
                        temperature=temperature, standardize=standardize)


def dkd(*, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, ce_weight: float = 1.0,
        warmup_steps: int = 0, standardize: bool = False) -> Method:
  """Decoupled KD (Zhao et al. 2022): ``ce_weight·CE + w(step)·DKD``.

  ``w(step) = min(step / warmup_steps, 1)``, the linear ramp of the reference
  code (20 epochs there: pass 20 × steps per epoch); 0 turns it off. Defaults
  are the paper's CIFAR-100 ones (α=1, β=8, T=4). Logs ``ce`` and ``dkd``.
  """
  check_temperature(temperature)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    s, t = _logits(student_logits, teacher, standardize)
    ce = hard_cross_entropy(student_logits, batch["label"])
    d = dkd_loss(s, t, batch["label"], alpha=alpha, beta=beta, temperature=temperature)
    ramp = jnp.minimum(batch["step"] / warmup_steps, 1.0) if warmup_steps else 1.0
    return ce_weight * ce + ramp * d, {"ce": ce, "dkd": d}

  return as_method(method, needs_teacher=True)


def dist_kd(*, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0, ce_weight: float = 1.0,
            standardize: bool = False) -> Method:
  """DIST (Huang et al. 2022): ``ce_weight·CE + DIST``; DIST is a batch-level scalar,
  spread evenly over the examples so that the batch mean is ``mean(CE) + DIST``."""
  check_temperature(temperature)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    s, t = _logits(student_logits, teacher, standardize)
    ce = hard_cross_entropy(student_logits, batch["label"])
    d = dist_loss(s, t, beta=beta, gamma=gamma, temperature=temperature)
    return ce_weight * ce + d, {"ce": ce, "dist": d}

  return as_method(method, needs_teacher=True)

