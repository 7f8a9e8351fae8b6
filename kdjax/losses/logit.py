"""Logit-level distillation losses (Hinton et al. 2015).

Conventions (optax style): pure functions, per-example values of shape ``[...]``
(the logits' leading dimensions), no reduction; the caller takes the mean.
All math runs in float32 whatever the dtype of the logits, so a bf16 model
still gets an accurate loss and gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses.validate import check_alpha, check_temperature

Array = jax.Array


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def soft_target_cross_entropy(
    student_logits: Array,
    teacher_logits: Array,
    temperature: float | Array = 1.0,
) -> Array:
  r"""Cross-entropy of the student against the teacher's softened distribution.

  .. math::
      H(p^T_t, p^T_s) = -\sum_c \mathrm{softmax}(t/T)_c \log \mathrm{softmax}(s/T)_c

  It differs from :func:`kl_divergence` only by the teacher's entropy, which
  does not depend on the student, so both give the same student gradient.

  Args:
    student_logits: ``[..., C]`` student logits ``s``.
    teacher_logits: ``[..., C]`` teacher logits ``t`` (treated as constants).
    temperature: softening temperature ``T > 0``.

  Returns:
    ``[...]`` per-example cross-entropy, float32.
  """
  check_temperature(temperature)
  s = _f32(student_logits) / temperature
  t = jax.lax.stop_gradient(_f32(teacher_logits)) / temperature
  p_teacher = jax.nn.softmax(t, axis=-1)
  return -jnp.sum(p_teacher * jax.nn.log_softmax(s, axis=-1), axis=-1)


def kl_divergence(
    student_logits: Array,
    teacher_logits: Array,
    temperature: float | Array = 1.0,
) -> Array:
  r"""Per-example KL divergence from the student to the teacher at temperature T.

  .. math::
      \mathrm{KL}\big(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T)\big)
      = \sum_c p^T_{t,c}\,(\log p^T_{t,c} - \log p^T_{s,c})

  Computed from log-softmaxes (stable for large logit gaps); classes where the
  teacher's probability underflows to 0 contribute exactly 0. The result is
  non-negative and zero when ``s`` and ``t`` differ by a constant per row.
  No ``T²`` factor here: :func:`hinton_kd_loss` applies it.

  Args:
    student_logits: ``[..., C]`` student logits ``s``.
    teacher_logits: ``[..., C]`` teacher logits ``t`` (gradient is stopped).
    temperature: softening temperature ``T > 0``.

  Returns:
    ``[...]`` per-example KL divergence, float32.
  """
  check_temperature(temperature)
  log_p_s = jax.nn.log_softmax(_f32(student_logits) / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(
      jax.lax.stop_gradient(_f32(teacher_logits)) / temperature, axis=-1)
  p_t = jnp.exp(log_p_t)
  kl = jnp.sum(jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1)
  # Rounding can give tiny negatives (~-1e-7) when p_s == p_t.
  return jnp.maximum(kl, 0.0)


def hard_cross_entropy(logits: Array, labels: Array) -> Array:
  """Per-example cross-entropy with integer labels, float32: ``-log softmax(s)_y``."""
  logits = _f32(logits)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def hinton_kd_loss(
    student_logits: Array,
    teacher_logits: Array,
    labels: Array,
    *,
    alpha: float | Array = 0.5,
    temperature: float | Array = 4.0,
) -> Array:
  r"""The classic distillation loss of Hinton, Vinyals & Dean (2015).

  "Distilling the Knowledge in a Neural Network", arXiv:1503.02531:

  .. math::
      L = \alpha\,\mathrm{CE}(y, s)
          + (1-\alpha)\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T)\big)

  The ``T²`` factor keeps the soft term's gradient magnitude roughly independent
  of ``T`` (the gradient of the KL w.r.t. ``s`` scales as ``1/T``; see the paper,
  section 2.1). ``alpha=1`` is plain supervised training, ``alpha=0`` pure
  distillation.

  Args:
    student_logits: ``[B, C]`` student logits.
    teacher_logits: ``[B, C]`` teacher logits (gradient is stopped).
    labels: ``[B]`` integer labels.
    alpha: weight of the hard-label term, in ``[0, 1]``.
    temperature: ``T > 0``.

  Returns:
    ``[B]`` per-example loss, float32.
  """
  check_alpha(alpha)
  check_temperature(temperature)
  if student_logits.shape[-1] != teacher_logits.shape[-1]:
    raise ValueError(
        f"student and teacher disagree on the number of classes: student logits "
        f"have {student_logits.shape[-1]}, teacher logits {teacher_logits.shape[-1]}")
  ce = hard_cross_entropy(student_logits, labels)
  kl = kl_divergence(student_logits, teacher_logits, temperature)
  t = jnp.asarray(temperature, jnp.float32)
  return alpha * ce + (1.0 - alpha) * t * t * kl
