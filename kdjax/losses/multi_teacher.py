"""Multi-teacher aggregation: per-sample teacher weights, and the distillation target or loss they give.

Teachers' logits come stacked, ``[K, B, C]`` (K teachers, B examples, C classes). A weighting
returns ``[K, B]`` weights, non-negative and summing to one over the teachers for every example,
so that one teacher, or K identical teachers, always reduce to plain single-teacher KD:

- :func:`uniform_weights`: ``1/K`` (the ensemble mean).
- :func:`fixed_weights`: given per-teacher weights, normalized to sum to one.
- :func:`confidence_weights`: CA-MKD (Zhang, Chen & Wang, ICASSP 2022): a teacher whose
  cross-entropy on the true label is low gets a high weight, ``(1 − softmax_k(CE_k)) / (K − 1)``.
- :func:`entropy_weights`: EBKD (Kwon et al., ICASSP 2020): a confident (low-entropy) teacher gets a
  high weight, ``(1 − H_k / Σ_j H_j) / (K − 1)``, entropies of the plain ``softmax(t)`` as in the
  reference code (at a high distillation temperature every teacher looks uncertain and the
  weights would flatten to ``1/K``).
- :func:`best_teacher_weights`: all weight on the teacher with the lowest cross-entropy on the
  true label, per example (ties go to the first).

:func:`multi_teacher_kl` turns logits and weights into a per-example divergence in one of three
ways: ``"probs"`` (KL to the weighted mean of the teachers' softened probabilities),
``"logits"`` (KL to the softmax of the weighted mean of their logits) or ``"loss"`` (the weighted
sum of the per-teacher KLs, as CA-MKD's and EBKD's reference code computes it).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from kdjax.losses.logit import _kl_from_logs, hard_cross_entropy, kl_divergence
from kdjax.losses.validate import check_temperature

Array = jax.Array

COMBINES = ("probs", "logits", "loss")


def _teacher_logits(teacher_logits_KxBxC: Array) -> Array:
  t = jnp.asarray(teacher_logits_KxBxC)
  if t.ndim != 3:
    raise ValueError(f"teacher logits must be stacked as [teachers, batch, classes], got shape {t.shape}")
  if t.shape[0] < 1:
    raise ValueError("no teachers: the stacked teacher logits have 0 rows")
  return jax.lax.stop_gradient(t.astype(jnp.float32))


def uniform_weights(teacher_logits_KxBxC: Array) -> Array:
  """``[K, B]`` weights ``1/K``: every teacher counts the same."""
  k, b, _ = jnp.shape(teacher_logits_KxBxC)
  return jnp.full((k, b), 1.0 / k, jnp.float32)


def fixed_weights(teacher_logits_KxBxC: Array, weights: Sequence[float]) -> Array:
  """``[K, B]``: the given per-teacher ``weights`` (non-negative, not all zero), normalized to sum to one."""
  k, b, _ = jnp.shape(teacher_logits_KxBxC)
  w = [float(x) for x in weights]
  if len(w) != k:
    raise ValueError(f"{len(w)} teacher weights given for {k} teachers")
  if any(not x >= 0 for x in w) or sum(w) <= 0:
    raise ValueError(f"teacher weights must be >= 0 and not all zero, got {w}")
  return jnp.broadcast_to(jnp.asarray(w, jnp.float32)[:, None] / sum(w), (k, b))


def teacher_cross_entropy(teacher_logits_KxBxC: Array, labels_B: Array) -> Array:
  """``[K, B]``: each teacher's cross-entropy on the true labels."""
  t = _teacher_logits(teacher_logits_KxBxC)
  return hard_cross_entropy(t, jnp.broadcast_to(labels_B, t.shape[:2]))


def confidence_weights(teacher_logits_KxBxC: Array, labels_B: Array) -> Array:
  """CA-MKD's per-example weights: ``(1 − softmax_k(CE_k)) / (K − 1)`` over the teachers' cross-entropies
  on the true label (``1`` for a single teacher)."""
  ce = teacher_cross_entropy(teacher_logits_KxBxC, labels_B)
  k = ce.shape[0]
  if k == 1:
    return jnp.ones_like(ce)
  return (1.0 - jax.nn.softmax(ce, axis=0)) / (k - 1)


def entropy_weights(teacher_logits_KxBxC: Array, temperature: float = 1.0) -> Array:
  """EBKD's per-example weights: ``(1 − H_k / Σ_j H_j) / (K − 1)``, ``H_k`` the entropy of teacher k's
  ``softmax(t/T)`` (``1`` for a single teacher; uniform when every teacher is fully certain)."""
  t = _teacher_logits(teacher_logits_KxBxC)
  k = t.shape[0]
  if k == 1:
    return jnp.ones(t.shape[:2], jnp.float32)
  log_p = jax.nn.log_softmax(t / temperature, axis=-1)
  p = jnp.exp(log_p)
  h = -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)  # [K, B]
  total = jnp.sum(h, axis=0, keepdims=True)
  share = jnp.where(total > 0, h / jnp.where(total > 0, total, 1.0), 1.0 / k)
  return (1.0 - share) / (k - 1)


def best_teacher_weights(teacher_logits_KxBxC: Array, labels_B: Array) -> Array:
  """``[K, B]`` one-hot on the teacher with the lowest cross-entropy on each example's label."""
  ce = teacher_cross_entropy(teacher_logits_KxBxC, labels_B)
  return jax.nn.one_hot(jnp.argmin(ce, axis=0), ce.shape[0], axis=0, dtype=jnp.float32)


def aggregate_log_probs(teacher_logits_KxBxC: Array, weights_KxB: Array, temperature: float = 1.0) -> Array:
  """``[B, C]`` log of the weighted mean of the teachers' ``softmax(t/T)``; a zero weight drops a teacher."""
  t = _teacher_logits(teacher_logits_KxBxC)
  log_p = jax.nn.log_softmax(t / temperature, axis=-1)
  return jax.nn.logsumexp(log_p, axis=0, b=jnp.asarray(weights_KxB, jnp.float32)[..., None])


def aggregate_logits(teacher_logits_KxBxC: Array, weights_KxB: Array) -> Array:
  """``[B, C]`` weighted mean of the teachers' logits."""
  return jnp.sum(jnp.asarray(weights_KxB, jnp.float32)[..., None] * _teacher_logits(teacher_logits_KxBxC), axis=0)


def multi_teacher_kl(student_logits_BxC: Array, teacher_logits_KxBxC: Array, weights_KxB: Array,
                     temperature: float = 1.0, combine: str = "probs") -> Array:
  r"""``[B]`` divergence of the student from K weighted teachers at temperature T (no ``T²``).

  - ``"probs"``: :math:`\mathrm{KL}\big(\sum_k w_k\,\mathrm{softmax}(t_k/T)\,\|\,\mathrm{softmax}(s/T)\big)`;
  - ``"logits"``: :math:`\mathrm{KL}\big(\mathrm{softmax}(\sum_k w_k t_k/T)\,\|\,\mathrm{softmax}(s/T)\big)`;
  - ``"loss"``: :math:`\sum_k w_k\,\mathrm{KL}\big(\mathrm{softmax}(t_k/T)\,\|\,\mathrm{softmax}(s/T)\big)`.

  All three equal :func:`kdjax.losses.kl_divergence` for one teacher or identical teachers. By
  convexity of the KL, ``"loss"`` is never below ``"probs"``. CA-MKD's and EBKD's reference code
  divides the ``"loss"`` sum by K once more (their weights sum to one, or to K − 1 for EBKD); here
  the weights sum to one and nothing else is rescaled.
  """
  check_temperature(temperature)
  if combine not in COMBINES:
    raise ValueError(f"unknown combine {combine!r}; use one of {', '.join(COMBINES)}")
  t = _teacher_logits(teacher_logits_KxBxC)
  s = jnp.asarray(student_logits_BxC).astype(jnp.float32)
  if s.shape != t.shape[1:]:
    raise ValueError(f"student logits {s.shape} do not match the teachers' {t.shape[1:]} "
                     "(teachers and student must predict the same classes)")
  w = jnp.asarray(weights_KxB, jnp.float32)
  if combine == "loss":
    return jnp.sum(w * kl_divergence(s[None], t, temperature), axis=0)
  if combine == "logits":
    return kl_divergence(s, aggregate_logits(t, w), temperature)
  log_target = aggregate_log_probs(t, w, temperature)
  log_s = jax.nn.log_softmax(s / temperature, axis=-1)
  return jnp.maximum(_kl_from_logs(log_target, log_s), 0.0)
