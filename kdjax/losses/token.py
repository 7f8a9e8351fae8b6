r"""Token-level distillation losses for causal language models.

Shapes: logits ``[B, L, V]`` (batch, sequence positions, vocabulary), a mask ``[B, L]`` (float or
bool; nonzero = the position counts), integer targets ``[B, L]``. Every public loss returns a
per-sequence value ``[B]``, the masked mean over that sequence's positions

.. math::
    \ell_b = \frac{\sum_l m_{bl}\,d_{bl}}{\max(\sum_l m_{bl},\ 1)}

so a sequence whose mask is all zero gives exactly 0. Masked positions add nothing to the value
or to the gradient, even where their logits are inf or NaN: the logits there are replaced by
zeros (``jnp.where``) *before* any arithmetic, so no ``0 · NaN`` reaches the backward pass.

Conventions as in :mod:`kdjax.losses.logit`: pure functions, float32 math whatever the logits'
dtype, the teacher under ``stop_gradient``, and no ``T²`` factor (the method applies it). The
full-vocabulary divergences are the ones of :mod:`kdjax.losses.logit`, applied per token.
Shapes are checked at trace time (:func:`check_token_shapes`); the tokenizers of student and
teacher must be the same (cross-tokenizer distillation is not supported).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.losses.logit import (
    _f32,
    _kl_from_logs,
    _log_probs,
    generalized_js_divergence,
    hard_cross_entropy,
    kl_divergence,
    reverse_kl_divergence,
)
from kdjax.losses.validate import check_skew, check_temperature

Array = jax.Array

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tv")

# The smallest normal float32: the floor of the teacher's tail mass in the top-k buckets, so its
# log (about -87.3) stays finite and the reverse KL of a student with tail mass stays finite.
_TINY = float(np.finfo(np.float32).tiny)


# ---------------------------------------------------------------------------------------------
# checks


def _check_divergence(divergence: str, beta) -> None:
  if divergence not in DIVERGENCES:
    raise ValueError(f"unknown divergence {divergence!r}: expected one of {DIVERGENCES}")
  if divergence == "jsd":
    check_skew(beta)


def _check_logits_3d(name: str, x) -> None:
  if jnp.ndim(x) != 3:
    raise ValueError(f"{name} must have shape [B, L, V] (batch, positions, vocabulary), got shape {jnp.shape(x)}")


def check_token_shapes(student_logits, teacher_logits_or_None, mask, targets=None) -> None:
  """Checks the static shapes of a token-level loss's inputs; raises ``ValueError`` naming both shapes.

  Args:
    student_logits: ``[B, L, V]``.
    teacher_logits_or_None: ``[B, L, V]`` with the student's ``V`` (one shared tokenizer), or
      ``None`` where there is no full teacher distribution (the top-k losses, plain CE).
    mask: ``[B, L]``, or ``None`` to skip its check.
    targets: ``[B, L]`` integer token ids, or ``None``.
  """
  _check_logits_3d("student logits", student_logits)
  s_shape = tuple(jnp.shape(student_logits))
  if teacher_logits_or_None is not None:
    _check_logits_3d("teacher logits", teacher_logits_or_None)
    t_shape = tuple(jnp.shape(teacher_logits_or_None))
    if t_shape[-1] != s_shape[-1]:
      raise ValueError(
          f"student and teacher vocabularies differ: student V={s_shape[-1]} (logits {s_shape}), teacher "
          f"V={t_shape[-1]} (logits {t_shape}); cross-tokenizer distillation is not supported")
    if t_shape[:2] != s_shape[:2]:
      raise ValueError(f"student and teacher logits disagree on [B, L]: student logits {s_shape}, "
                       f"teacher logits {t_shape}")
  if mask is not None and tuple(jnp.shape(mask)) != s_shape[:2]:
    raise ValueError(f"mask must have shape [B, L] = {s_shape[:2]} to match logits of shape {s_shape}, "
                     f"got mask shape {tuple(jnp.shape(mask))}")
  if targets is not None:
    if tuple(jnp.shape(targets)) != s_shape[:2]:
      raise ValueError(f"targets must have shape [B, L] = {s_shape[:2]} to match logits of shape {s_shape}, "
                       f"got targets shape {tuple(jnp.shape(targets))}")
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
      raise ValueError(f"targets must be integer token ids, got dtype {jnp.result_type(targets)}")


def _check_topk(student_logits, topk_logprobs, topk_ids) -> None:
  _check_logits_3d("student logits", student_logits)
  s_shape = tuple(jnp.shape(student_logits))
  lp_shape, id_shape = tuple(jnp.shape(topk_logprobs)), tuple(jnp.shape(topk_ids))
  if lp_shape != id_shape:
    raise ValueError(f"top-k log-probs and ids must have the same shape [B, L, K], got log-probs {lp_shape} "
                     f"and ids {id_shape}")
  if len(id_shape) != 3 or id_shape[:2] != s_shape[:2]:
    raise ValueError(f"top-k log-probs and ids must have shape [B, L, K] with [B, L] = {s_shape[:2]} of the "
                     f"student logits {s_shape}, got {id_shape}")
  k, v = id_shape[-1], s_shape[-1]
  if not 1 <= k <= v:
    raise ValueError(f"the teacher's top-k needs 1 <= k <= V, got k={k} for the student's V={v} "
                     f"(ids {id_shape}, student logits {s_shape})")
  if not jnp.issubdtype(jnp.result_type(topk_ids), jnp.integer):
    raise ValueError(f"top-k ids must be integer token ids, got dtype {jnp.result_type(topk_ids)}")


# ---------------------------------------------------------------------------------------------
# masking


def _mask_f32(mask: Array) -> Array:
  return jnp.asarray(mask).astype(jnp.float32)


def _keep(mask: Array, x: Array, fill=0) -> Array:
  """``x`` where the position counts, ``fill`` elsewhere; ``x`` is ``[B, L, ...]``, mask ``[B, L]``.

  A select, not a product: whatever ``x`` holds at a masked position (inf, NaN) is gone, and so is
  its gradient (the select's backward pass gives the unselected side exactly 0).
  """
  m = jnp.asarray(mask) != 0
  m = m.reshape(m.shape + (1,) * (jnp.ndim(x) - m.ndim))
  return jnp.where(m, x, jnp.asarray(fill, jnp.result_type(x)))


def masked_sequence_mean(values: Array, mask: Array) -> Array:
  r"""Per-sequence masked mean of per-token values.

  .. math::
      \mathrm{out}_b = \frac{\sum_l m_{bl}\,v_{bl}}{\max(\sum_l m_{bl},\ 1)}

  A fully masked sequence gives exactly 0. Masked entries of ``values`` are selected away (not
  multiplied by 0), so an inf or NaN there changes neither the value nor the gradient w.r.t.
  ``values``. (The gradient w.r.t. whatever produced ``values`` is the producer's business:
  the losses of this module also clean their inputs at masked positions.)

  Args:
    values: ``[B, L]`` per-token values.
    mask: ``[B, L]`` float or bool weights, nonzero where the position counts.

  Returns:
    ``[B]`` float32.
  """
  if jnp.ndim(values) != 2 or tuple(jnp.shape(mask)) != tuple(jnp.shape(values)):
    raise ValueError(f"values and mask must both have shape [B, L], got values {tuple(jnp.shape(values))} "
                     f"and mask {tuple(jnp.shape(mask))}")
  m = _mask_f32(mask)
  v = _f32(values)
  total = jnp.sum(jnp.where(m != 0, m * v, 0.0), axis=-1)
  return total / jnp.maximum(jnp.sum(m, axis=-1), 1.0)


# ---------------------------------------------------------------------------------------------
# divergences


def _tv_from_logs(log_p: Array, log_q: Array) -> Array:
  """Total variation ``½ Σ |p − q|`` over the last axis, from log-probabilities."""
  return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)


def _divergence_from_logs(log_p_t: Array, log_p_s: Array, divergence: str, beta) -> Array:
  """The divergence between two distributions over the last axis given as log-probabilities
  (teacher ``p_t``, student ``p_s``), with the formulas of :mod:`kdjax.losses.logit`."""
  if divergence == "forward_kl":
    return jnp.maximum(_kl_from_logs(log_p_t, log_p_s), 0.0)
  if divergence == "reverse_kl":
    return jnp.maximum(_kl_from_logs(log_p_s, log_p_t), 0.0)
  if divergence == "jsd":
    b = jnp.asarray(beta, jnp.float32)
    log_m = jnp.logaddexp(log_p_t + jnp.log(b), log_p_s + jnp.log1p(-b))
    return jnp.maximum(b * _kl_from_logs(log_p_t, log_m) + (1.0 - b) * _kl_from_logs(log_p_s, log_m), 0.0)
  return _tv_from_logs(log_p_t, log_p_s)


def token_divergence(
    student_logits: Array,
    teacher_logits: Array,
    *,
    divergence: str = "forward_kl",
    temperature: float | Array = 1.0,
    beta: float | Array = 0.5,
) -> Array:
  r"""Per-token divergence between the teacher's and the student's next-token distributions.

  With ``p_t = softmax(t/T)`` and ``p_s = softmax(s/T)`` over the vocabulary:

  * ``"forward_kl"``: :math:`\mathrm{KL}(p_t\,\|\,p_s)` (:func:`~kdjax.losses.logit.kl_divergence`;
    word-level KD, Kim & Rush 2016, "Sequence-Level Knowledge Distillation");
  * ``"reverse_kl"``: :math:`\mathrm{KL}(p_s\,\|\,p_t)`
    (:func:`~kdjax.losses.logit.reverse_kl_divergence`; Gu et al. 2024, "MiniLLM");
  * ``"jsd"``: :math:`\beta\,\mathrm{KL}(p_t\|m) + (1-\beta)\,\mathrm{KL}(p_s\|m)`,
    :math:`m = \beta p_t + (1-\beta) p_s`, ``β`` in ``(0, 1)``
    (:func:`~kdjax.losses.logit.generalized_js_divergence`; Agarwal et al. 2024, "GKD");
  * ``"tv"``: total variation :math:`\tfrac12\sum_v |p_{t,v} - p_{s,v}|`
    (Wen et al. 2023, "f-Divergence Minimization for Sequence-Level Knowledge Distillation").

  No mask and no ``T²`` factor; the teacher's gradient is stopped.

  Args:
    student_logits: ``[B, L, V]``.
    teacher_logits: ``[B, L, V]``, the same vocabulary.
    divergence: one of :data:`DIVERGENCES`.
    temperature: ``T > 0``.
    beta: the skew of ``"jsd"`` (ignored otherwise).

  Returns:
    ``[B, L]`` float32.
  """
  check_token_shapes(student_logits, teacher_logits, None)
  _check_divergence(divergence, beta)
  check_temperature(temperature)
  if divergence == "forward_kl":
    return kl_divergence(student_logits, teacher_logits, temperature)
  if divergence == "reverse_kl":
    return reverse_kl_divergence(student_logits, teacher_logits, temperature)
  if divergence == "jsd":
    return generalized_js_divergence(student_logits, teacher_logits, temperature, beta)
  log_p_s, log_p_t = _log_probs(student_logits, teacher_logits, temperature)
  return _tv_from_logs(log_p_t, log_p_s)


def token_kd_loss(
    student_logits: Array,
    teacher_logits: Array,
    mask: Array,
    *,
    divergence: str = "forward_kl",
    temperature: float | Array = 1.0,
    beta: float | Array = 0.5,
) -> Array:
  r"""Token-level distillation loss: the per-sequence masked mean of :func:`token_divergence`.

  .. math::
      \ell_b = \frac{\sum_l m_{bl}\,D\big(p_t^{(bl)},\,p_s^{(bl)}\big)}{\max(\sum_l m_{bl},\ 1)}

  Positions with ``mask = 0`` add nothing to value or gradient, whatever their logits hold.

  Args:
    student_logits: ``[B, L, V]``.
    teacher_logits: ``[B, L, V]`` (gradient stopped).
    mask: ``[B, L]`` float or bool.
    divergence, temperature, beta: as in :func:`token_divergence`.

  Returns:
    ``[B]`` float32.
  """
  check_token_shapes(student_logits, teacher_logits, mask)
  d = token_divergence(_keep(mask, student_logits), _keep(mask, teacher_logits),
                       divergence=divergence, temperature=temperature, beta=beta)
  return masked_sequence_mean(d, mask)


def token_cross_entropy(logits: Array, targets: Array, mask: Array) -> Array:
  r"""Next-token cross-entropy, the per-sequence masked mean of :math:`-\log \mathrm{softmax}(z_{bl})_{y_{bl}}`.

  No shift happens here: ``targets[b, l]`` is the token that ``logits[b, l]`` predicts (for a
  causal LM, ``targets = tokens[:, 1:]`` against ``logits[:, :-1]``, or mask the last position).
  Targets at masked positions may be anything (e.g. ``-100``); an out-of-range target at a
  counted position gives NaN.

  Args:
    logits: ``[B, L, V]``.
    targets: ``[B, L]`` integer token ids.
    mask: ``[B, L]`` float or bool.

  Returns:
    ``[B]`` float32.
  """
  check_token_shapes(logits, None, mask, targets)
  ce = hard_cross_entropy(_keep(mask, logits), _keep(mask, jnp.asarray(targets)))
  return masked_sequence_mean(ce, mask)


# ---------------------------------------------------------------------------------------------
# top-k teacher with a tail bucket


def teacher_topk(teacher_logits: Array, k: int, *, temperature: float | Array = 1.0) -> tuple[Array, Array]:
  r"""The teacher's ``k`` most likely tokens per position, for a sparse (cached) teacher.

  Returns the ``k`` largest entries of :math:`\log\mathrm{softmax}(t/T)`, sorted descending, and
  their token ids (``jax.lax.top_k``; ties go to the smaller id). The log-probs are already at
  temperature ``T``: the top-k losses take them as they are.

  Args:
    teacher_logits: ``[B, L, V]`` (gradient stopped).
    k: how many tokens to keep, ``1 <= k <= V``.
    temperature: ``T > 0``.

  Returns:
    ``(logprobs [B, L, k] float32, ids [B, L, k] int32)``.
  """
  _check_logits_3d("teacher logits", teacher_logits)
  check_temperature(temperature)
  v = jnp.shape(teacher_logits)[-1]
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= v:
    raise ValueError(f"teacher_topk needs an integer k with 1 <= k <= V, got k={k!r} for V={v} "
                     f"(teacher logits {tuple(jnp.shape(teacher_logits))})")
  log_p = jax.nn.log_softmax(jax.lax.stop_gradient(_f32(teacher_logits)) / temperature, axis=-1)
  values, ids = jax.lax.top_k(log_p, int(k))
  return values, ids.astype(jnp.int32)


def _topk_buckets(student_logits: Array, topk_logprobs: Array, topk_ids: Array, temperature) -> tuple[Array, Array]:
  """Teacher and student log-probabilities over the ``K`` top-k tokens plus the tail bucket
  (``[B, L, K+1]``; just ``[B, L, K]`` when ``K = V``, where the tail is empty on both sides)."""
  log_p_s = jax.nn.log_softmax(_f32(student_logits) / temperature, axis=-1)
  log_p_t = jax.lax.stop_gradient(_f32(topk_logprobs))
  ids = topk_ids.astype(jnp.int32)
  log_q = jnp.take_along_axis(log_p_s, ids, axis=-1)
  k, v = ids.shape[-1], log_p_s.shape[-1]
  if k == v:
    # The ids cover the vocabulary: both tails are exactly 0 and the bucket is dropped. (Keeping
    # it would compare the teacher's rounding error 1 - Σp, ~1e-7, against the student's exact 0.)
    return log_p_t, log_q
  # Teacher: p_tail = 1 - Σ p_topk, clipped to [tiny, 1] (the cached log-probs may sum to a hair
  # over 1, or the tail may round to 0 in float32).
  total = jnp.minimum(jnp.sum(jnp.exp(log_p_t), axis=-1, keepdims=True), 1.0)
  log_t_tail = jnp.maximum(jnp.log1p(-total), jnp.log(_TINY))
  # Student: log q_tail = logsumexp of its log-probs outside the top-k ids (no cancellation,
  # unlike log(1 - Σ q)); K < V leaves at least one token outside.
  in_topk = jnp.put_along_axis(jnp.zeros(log_p_s.shape, bool), ids, True, axis=-1, inplace=False)
  log_s_tail = jax.nn.logsumexp(jnp.where(in_topk, -jnp.inf, log_p_s), axis=-1, keepdims=True)
  return jnp.concatenate([log_p_t, log_t_tail], -1), jnp.concatenate([log_q, log_s_tail], -1)


def topk_token_divergence(
    student_logits: Array,
    topk_logprobs: Array,
    topk_ids: Array,
    *,
    divergence: str = "forward_kl",
    temperature: float | Array = 1.0,
    beta: float | Array = 0.5,
) -> Array:
  r"""Per-token divergence against a top-k teacher, with the rest of its mass in one tail bucket.

  The teacher's distribution is reduced to ``K + 1`` buckets: its ``K`` largest probabilities
  ``p_{t,i}`` (at ids ``i ∈ I``) and the tail :math:`p_{t,\mathrm{tail}} = 1 - \sum_{i\in I} p_{t,i}`;
  the student's to the same buckets: :math:`q_i = \mathrm{softmax}(s/T)_i` and its own tail
  :math:`q_\mathrm{tail} = \sum_{v\notin I} q_v`. The divergence of :func:`token_divergence` is
  then taken over the ``K + 1`` buckets. This is the "top-k plus residual bucket" treatment of a
  sparse teacher (e.g. Raman et al. 2023, "For Distillation, Tokens Are Not All You Need"; see also
  Anshumann et al. 2025, "Sparse Logit Sampling"). Renormalising the teacher over its top-k alone
  would be biased (it inflates every kept probability by ``1/Σp_topk`` and lets the student put
  any mass it likes outside the top-k); the tail bucket keeps the sums at 1 and penalises
  misplaced tail mass.

  Properties: with ``K = V`` this equals :func:`token_divergence` exactly (the tail is empty on
  both sides and its bucket is dropped). For ``K < V`` the bucket divergence is a divergence of
  coarse-grained distributions, so for the KLs, the JSD and TV (all f-divergences) it is ``≤``
  the full one (the data-processing inequality), up to float32 rounding in ``1 − Σp_topk``
  (about ``1e-7`` absolute; store the cached log-probs in float32, not bf16/fp16, or the tail
  mass is only as precise as their sum).

  **Temperature**: ``topk_logprobs`` must already be :math:`\log\mathrm{softmax}(t/T)` at the
  run's temperature (what :func:`teacher_topk` returns and the teacher cache stores);
  ``temperature`` here applies only to the student's :math:`\log\mathrm{softmax}(s/T)`.

  Numerics: ``log p_tail = log1p(−min(Σp_topk, 1))``, floored at ``log(float32 tiny) ≈ −87.3``
  so the reverse KL stays finite where the teacher's tail rounds to 0; ``log q_tail`` is a
  ``logsumexp`` over the student's log-probs with the top-k ids set to ``−inf``.

  Args:
    student_logits: ``[B, L, V]``.
    topk_logprobs: ``[B, L, K]`` the teacher's top-k log-probs at temperature ``T`` (gradient
      stopped).
    topk_ids: ``[B, L, K]`` their ids: distinct, in ``[0, V)`` (an out-of-range id gives NaN).
    divergence, temperature, beta: as in :func:`token_divergence`.

  Returns:
    ``[B, L]`` float32.
  """
  _check_topk(student_logits, topk_logprobs, topk_ids)
  _check_divergence(divergence, beta)
  check_temperature(temperature)
  log_t, log_s = _topk_buckets(student_logits, topk_logprobs, topk_ids, temperature)
  return _divergence_from_logs(log_t, log_s, divergence, beta)


def topk_token_kd_loss(
    student_logits: Array,
    topk_logprobs: Array,
    topk_ids: Array,
    mask: Array,
    *,
    divergence: str = "forward_kl",
    temperature: float | Array = 1.0,
    beta: float | Array = 0.5,
) -> Array:
  r"""The per-sequence masked mean of :func:`topk_token_divergence` (see it for the tail bucket
  and for the temperature: the cached log-probs are already at ``T``, the student's get ``T`` here).

  Args:
    student_logits: ``[B, L, V]``.
    topk_logprobs: ``[B, L, K]`` teacher log-probs at temperature ``T``.
    topk_ids: ``[B, L, K]`` their ids.
    mask: ``[B, L]`` float or bool; at masked positions the logits, log-probs and ids may hold
      anything.
    divergence, temperature, beta: as in :func:`token_divergence`.

  Returns:
    ``[B]`` float32.
  """
  _check_topk(student_logits, topk_logprobs, topk_ids)
  check_token_shapes(student_logits, None, mask)
  k, v = jnp.shape(topk_ids)[-1], jnp.shape(student_logits)[-1]
  # Valid stand-ins at masked positions: distinct ids 0..K-1 and probabilities summing to K/V ≤ 1.
  ids = jnp.where((jnp.asarray(mask) != 0)[..., None], topk_ids, jnp.arange(k, dtype=jnp.result_type(topk_ids)))
  logprobs = _keep(mask, _f32(topk_logprobs), -float(np.log(v)))
  d = topk_token_divergence(_keep(mask, student_logits), logprobs, ids,
                            divergence=divergence, temperature=temperature, beta=beta)
  return masked_sequence_mean(d, mask)
