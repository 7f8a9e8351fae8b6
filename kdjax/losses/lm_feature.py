"""Feature-level distillation losses for decoder language models: MiniLM's self-attention relations
and TinyBERT's hidden-state and attention matching.

Conventions as the other losses: pure, float32, the teacher under stop_gradient, per-sequence values
``[B]`` (the masked mean over the sequence's positions). Which positions count, and which keys a
query may see, come from the packed batch's ``segments`` (document ids, 0 = padding): query ``i``
sees key ``j`` when ``j <= i`` in the same document, as the model's own attention does, so a
relation never compares a position with text the model could not read.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def visible_keys(segments_BxL: Array) -> Array:
  """``[B, L, L]`` bool: query ``i`` sees key ``j`` (``j <= i``, same document, not padding)."""
  seg = jnp.asarray(segments_BxL)
  length = seg.shape[1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
  return causal[None] & same


def _sequence_mean(values_BxL: Array, mask_BxL: Array) -> Array:
  mask = _f32(mask_BxL)
  total = jnp.sum(jnp.where(mask > 0, values_BxL, 0.0), axis=-1)
  return total / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def _check_relation(student: Array, teacher: Array, heads: int, what: str) -> None:
  if student.shape[:2] != teacher.shape[:2]:
    raise ValueError(f"{what}: student and teacher features must share [B, L], got {student.shape} and "
                     f"{teacher.shape}")
  for who, x in (("student", student), ("teacher", teacher)):
    if x.shape[-1] % heads:
      raise ValueError(f"{what}: the {who}'s width {x.shape[-1]} is not a multiple of relation_heads={heads}")


def self_relation_logprobs(x_BxLxD: Array, visible_BxLxL: Array, heads: int) -> Array:
  """``[B, R, L, L]``: MiniLM-v2's self-attention relation of one kind of vector (queries, keys or
  values), split into ``R = heads`` relation heads, ``log softmax(X_r X_rᵀ / sqrt(d_r))`` over the
  keys each query sees (others get probability 0)."""
  b, length, d = x_BxLxD.shape
  x = _f32(x_BxLxD).reshape(b, length, heads, d // heads).transpose(0, 2, 1, 3)
  scores = jnp.einsum("brid,brjd->brij", x, x) / jnp.sqrt(d // heads)
  scores = jnp.where(visible_BxLxL[:, None], scores, -jnp.inf)
  return jax.nn.log_softmax(scores, axis=-1)


def attention_relation_loss(student_x: Array, teacher_x: Array, segments_BxL: Array, mask_BxL: Array, *,
                            heads: int) -> Array:
  r"""MiniLM-v2's relation loss for one kind of vector (Wang et al., 2021, "MiniLMv2: Multi-Head
  Self-Attention Relation Distillation", eq. 3–5):

  .. math::
      \frac{1}{R}\sum_{r=1}^{R} \mathrm{KL}\big(\mathrm{softmax}(T_r T_r^\top/\sqrt{d_r})_i
      \,\|\,\mathrm{softmax}(S_r S_r^\top/\sqrt{d_s})_i\big)

  per query position ``i``, averaged over the positions in ``mask_BxL``. Student and teacher may
  have different widths: both are split into the same number of relation heads ``R``, which is
  what lets MiniLM-v2 distil without projections. Returns ``[B]``."""
  _check_relation(student_x, teacher_x, heads, "MiniLM relation")
  visible = visible_keys(segments_BxL)
  log_s = self_relation_logprobs(student_x, visible, heads)
  log_t = jax.lax.stop_gradient(self_relation_logprobs(teacher_x, visible, heads))
  p_t = jnp.exp(log_t)
  kl = jnp.sum(jnp.where(p_t > 0, p_t * (log_t - jnp.where(p_t > 0, log_s, 0.0)), 0.0), axis=-1)  # [B, R, L]
  return _sequence_mean(jnp.mean(kl, axis=1), mask_BxL)


def hidden_mse(student_h: Array, teacher_h: Array, mask_BxL: Array) -> Array:
  """TinyBERT's hidden-state loss (Jiao et al., 2020, eq. 8) after the caller's projection: the
  squared error per position averaged over the width, then over the masked positions. ``[B]``."""
  if student_h.shape != teacher_h.shape:
    raise ValueError(f"hidden-state matching needs equal shapes after the projection, got {student_h.shape} and "
                     f"{teacher_h.shape}")
  err = jnp.mean(jnp.square(_f32(student_h) - jax.lax.stop_gradient(_f32(teacher_h))), axis=-1)
  return _sequence_mean(err, mask_BxL)


def attention_mse(student_attn: Array, teacher_attn: Array, segments_BxL: Array, mask_BxL: Array) -> Array:
  """TinyBERT's attention loss (Jiao et al., 2020, eq. 7) on attention probabilities ``[B, H, L, L]``:
  the squared error per visible (query, key) pair, summed over the keys, averaged over the heads and
  the masked query positions. TinyBERT matches head to head; where the head counts differ, each
  side's heads are averaged first (a kdjax choice, so that a narrower student can still be matched).
  TinyBERT's reference compares the pre-softmax scores; the probabilities used here are bounded,
  which keeps this term on the scale of the others. ``[B]``."""
  s, t = _f32(student_attn), jax.lax.stop_gradient(_f32(teacher_attn))
  if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
    raise ValueError(f"attention matching needs equal [B, ., L, L], got {s.shape} and {t.shape}")
  if s.shape[1] != t.shape[1]:
    s, t = jnp.mean(s, axis=1, keepdims=True), jnp.mean(t, axis=1, keepdims=True)
  visible = visible_keys(segments_BxL)[:, None]
  err = jnp.sum(jnp.where(visible, jnp.square(s - t), 0.0), axis=-1)  # [B, H, L]
  return _sequence_mean(jnp.mean(err, axis=1), mask_BxL)
