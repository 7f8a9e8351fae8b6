"""Logit-level distillation losses (Hinton et al. 2015).

Conventions (optax style): pure functions, per-example values of shape ``[...]``
(the logits' leading dimensions), no reduction; the caller takes the mean.
All math runs in float32 whatever the dtype of the logits, so a bf16 model
still gets an accurate loss and gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses.validate import check_alpha, check_skew, check_temperature

Array = jax.Array


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def _log_probs(student_logits: Array, teacher_logits: Array, temperature) -> tuple[Array, Array]:
  """``log softmax(s/T)`` and ``log softmax(t/T)`` in float32, the teacher's under stop_gradient."""
  check_temperature(temperature)
  log_p_s = jax.nn.log_softmax(_f32(student_logits) / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(_f32(teacher_logits)) / temperature, axis=-1)
  return log_p_s, log_p_t


def _kl_from_logs(log_p: Array, log_q: Array) -> Array:
  """``KL(p ‖ q)`` over the last axis from log-probabilities; classes with ``p = 0`` add exactly 0,
  and a NaN anywhere stays NaN (a teacher gone NaN must not read as a perfect match)."""
  p = jnp.exp(log_p)
  return jnp.sum(jnp.where(p == 0, 0.0, p * (log_p - log_q)), axis=-1)


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
  log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
  return -jnp.sum(jnp.exp(log_p_t) * log_p_s, axis=-1)


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
  log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
  # Rounding can give tiny negatives (~-1e-7) when p_s == p_t.
  return jnp.maximum(_kl_from_logs(log_p_t, log_p_s), 0.0)


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


def reverse_kl_divergence(
    student_logits: Array,
    teacher_logits: Array,
    temperature: float | Array = 1.0,
) -> Array:
  r"""Per-example reverse KL, from the teacher to the student, at temperature T.

  .. math::
      \mathrm{KL}\big(\mathrm{softmax}(s/T)\,\|\,\mathrm{softmax}(t/T)\big)

  Mode-seeking where the forward KL of :func:`kl_divergence` is mass-covering
  (see e.g. Gu et al. 2024, "MiniLLM"). No ``T²`` factor.

  Returns:
    ``[...]`` per-example reverse KL, float32.
  """
  log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
  return jnp.maximum(_kl_from_logs(log_p_s, log_p_t), 0.0)


def js_divergence(
    student_logits: Array,
    teacher_logits: Array,
    temperature: float | Array = 1.0,
) -> Array:
  r"""Per-example Jensen–Shannon divergence between softened distributions.

  .. math::
      \mathrm{JS} = \tfrac12\mathrm{KL}(p_t\,\|\,m) + \tfrac12\mathrm{KL}(p_s\,\|\,m),
      \quad m = \tfrac12(p_s + p_t),\ p = \mathrm{softmax}(z/T)

  Symmetric, bounded by ``log 2``. No ``T²`` factor.

  Returns:
    ``[...]`` per-example JS divergence, float32.
  """
  log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
  # log m = log((p_s + p_t) / 2), computed stably in log space.
  log_m = jnp.logaddexp(log_p_s, log_p_t) - jnp.log(2.0)
  return jnp.maximum(0.5 * (_kl_from_logs(log_p_t, log_m) + _kl_from_logs(log_p_s, log_m)), 0.0)


def generalized_js_divergence(
    student_logits: Array,
    teacher_logits: Array,
    temperature: float | Array = 1.0,
    beta: float | Array = 0.5,
) -> Array:
  r"""Per-example generalized Jensen–Shannon divergence with skew ``β`` (GKD: Agarwal et al.,
  ICLR 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes",
  eq. 1), between softened distributions, with the teacher as ``P`` and the student as ``Q``:

  .. math::
      \mathrm{JSD}(\beta)(p_t\,\|\,p_s) = \beta\,\mathrm{KL}(p_t\,\|\,m) + (1-\beta)\,\mathrm{KL}(p_s\,\|\,m),
      \quad m = \beta\,p_t + (1-\beta)\,p_s,\ p = \mathrm{softmax}(z/T)

  the convention of TRL's ``GKDTrainer.generalized_jsd_loss`` (its mixture is
  ``β·teacher + (1−β)·student``). ``β = 0.5`` is :func:`js_divergence`. It is bounded by the
  binary entropy ``−β log β − (1−β) log(1−β)``.

  The endpoints are degenerate: at ``β = 0`` or ``1`` the mixture is one of the two
  distributions and the divergence is identically 0. Near them it is a *scaled* KL:
  ``JSD(β) ≈ β·KL(p_t ‖ p_s)`` (forward KL, :func:`kl_divergence`) as ``β → 0`` and
  ``JSD(β) ≈ (1−β)·KL(p_s ‖ p_t)`` (reverse KL, :func:`reverse_kl_divergence`) as ``β → 1``.
  TRL special-cases ``β = 0`` and ``β = 1`` to return those KLs unscaled (a jump at the
  endpoints); here a concrete ``β`` outside the open interval ``(0, 1)`` is rejected instead:
  use the KL losses themselves for the limits. The mixture is formed in log space
  (``log m = logaddexp(log β + log p_t, log(1−β) + log p_s)``), so large logit gaps stay finite.
  No ``T²`` factor.

  Args:
    student_logits: ``[..., C]`` student logits ``s``.
    teacher_logits: ``[..., C]`` teacher logits ``t`` (gradient is stopped).
    temperature: softening temperature ``T > 0``.
    beta: the skew ``β`` in ``(0, 1)``, the teacher's weight in the mixture.

  Returns:
    ``[...]`` per-example divergence, float32.
  """
  check_skew(beta)
  log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
  b = jnp.asarray(beta, jnp.float32)
  log_m = jnp.logaddexp(log_p_t + jnp.log(b), log_p_s + jnp.log1p(-b))
  return jnp.maximum(b * _kl_from_logs(log_p_t, log_m) + (1.0 - b) * _kl_from_logs(log_p_s, log_m), 0.0)


def dkd_loss(
    student_logits: Array,
    teacher_logits: Array,
    labels: Array,
    *,
    alpha: float | Array = 1.0,
    beta: float | Array = 8.0,
    temperature: float | Array = 4.0,
) -> Array:
  r"""Decoupled knowledge distillation (Zhao et al., CVPR 2022, "Decoupled KD").

  KD's KL splits into a target-class part (TCKD) and a non-target part (NCKD):

  .. math::
      \mathrm{KL}(p_t\|p_s) = \mathrm{KL}(b_t\|b_s) + (1 - p_{t,y})\,\mathrm{KL}(\hat p_t\|\hat p_s)

  with ``b = [p_y, 1 - p_y]`` and ``p̂`` the softmax over the non-target
  classes. DKD drops the ``(1 - p_{t,y})`` coupling and weights the parts freely:

  .. math::
      L_\mathrm{DKD} = \alpha\,T^2\,\mathrm{KL}(b_t\|b_s) + \beta\,T^2\,\mathrm{KL}(\hat p_t\|\hat p_s)

  Defaults are the paper's CIFAR-100 ones (α=1, β=8, T=4). The reference code
  (mdistiller) adds CE and ramps this term up linearly over the first 20
  epochs; both are the caller's (see :func:`kdjax.methods.dkd`).

  Returns:
    ``[B]`` per-example loss, float32.
  """
  check_temperature(temperature)
  s = _f32(student_logits) / temperature
  t = jax.lax.stop_gradient(_f32(teacher_logits)) / temperature
  num_classes = s.shape[-1]  # with 2 classes NCKD is 0 and DKD is alpha x KD, as in mdistiller
  is_target = jax.nn.one_hot(labels, num_classes, dtype=bool)
  neg = jnp.finfo(jnp.float32).min

  def parts(z):
    # log p_y and log(1 - p_y), both in log space so confident predictions stay finite
    log_p = jax.nn.log_softmax(z, -1)
    log_target = jnp.sum(jnp.where(is_target, log_p, 0.0), -1)
    log_rest = jax.nn.logsumexp(jnp.where(is_target, neg, log_p), axis=-1)
    # softmax over the non-target classes: the target is masked out exactly
    log_q = jax.nn.log_softmax(jnp.where(is_target, neg, z), -1)
    return log_target, log_rest, log_q

  s_y, s_rest, log_q_s = parts(s)
  t_y, t_rest, log_q_t = parts(t)
  tckd = jnp.exp(t_y) * (t_y - s_y) + jnp.exp(t_rest) * (t_rest - s_rest)
  nckd = _kl_from_logs(log_q_t, log_q_s)  # the masked target has q_t = 0 exactly
  t2 = jnp.asarray(temperature, jnp.float32) ** 2
  return t2 * (alpha * tckd + beta * nckd)


def _norm(x: Array) -> Array:
  """L2 norm over the last axis whose gradient at 0 is 0 (as torch's), not NaN."""
  sq = jnp.sum(x * x, -1)
  return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def _pearson_rows(a: Array, b: Array, eps: float = 1e-8) -> Array:
  """Pearson correlation of matching rows, as the DIST reference: centred cosine, ``+eps``."""
  a = a - a.mean(-1, keepdims=True)
  b = b - b.mean(-1, keepdims=True)
  return jnp.sum(a * b, -1) / (_norm(a) * _norm(b) + eps)


def dist_loss(
    student_logits: Array,
    teacher_logits: Array,
    *,
    beta: float | Array = 1.0,
    gamma: float | Array = 1.0,
    temperature: float | Array = 1.0,
) -> Array:
  r"""DIST: distillation from a stronger teacher (Huang et al., NeurIPS 2022).

  Matches relations rather than values, with Pearson correlation ``ρ`` on the
  softened predictions ``Y = softmax(Z/T)`` (``B × C``):

  .. math::
      L = T^2\Big[\beta\,\big(1 - \tfrac1B\sum_i \rho(Y^s_{i,:}, Y^t_{i,:})\big)
              + \gamma\,\big(1 - \tfrac1C\sum_c \rho(Y^s_{:,c}, Y^t_{:,c})\big)\Big]

  the inter-class relation (per example, across classes) and the intra-class
  relation (per class, across the batch). The intra term couples the examples
  of a batch, so this loss is a **scalar for the batch**, not per example.

  Returns:
    scalar loss, float32.
  """
  check_temperature(temperature)
  y_s = jax.nn.softmax(_f32(student_logits) / temperature, -1)
  y_t = jax.nn.softmax(jax.lax.stop_gradient(_f32(teacher_logits)) / temperature, -1)
  inter = 1.0 - jnp.mean(_pearson_rows(y_s, y_t))
  intra = 1.0 - jnp.mean(_pearson_rows(y_s.T, y_t.T))
  t2 = jnp.asarray(temperature, jnp.float32) ** 2
  return t2 * (beta * inter + gamma * intra)


def standardize_logits(logits: Array, eps: float = 1e-7) -> Array:
  r"""Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in KD").

  .. math::
      \mathcal{Z}(z) = \frac{z - \bar z}{\sigma(z) + \epsilon}

  along the class axis, with the **unbiased** standard deviation (``ddof=1``),
  as the reference code's ``torch.std`` computes. Apply it to both student and
  teacher logits before any logit loss (the temperature then acts on
  standardized logits). Returns float32.
  """
  z = _f32(logits)
  mean = z.mean(-1, keepdims=True)
  std = jnp.std(z, axis=-1, keepdims=True, ddof=1)
  return (z - mean) / (std + eps)
