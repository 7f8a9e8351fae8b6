"""Contrastive representation distillation losses (CRD, Tian et al., ICLR 2020).

Three forms of the same idea: make the student's embedding of an example
identify the teacher's embedding of the same example among negatives.

* :func:`crd_loss` / :func:`contrast_loss`: the paper's NCE objective against a
  memory bank of past embeddings of every training example (RepDistiller's
  ``crd/criterion.py``, ``ContrastLoss``, and ``crd/memory.py``, ``ContrastMemory``).
* :func:`queue_info_nce_loss`: InfoNCE against a FIFO queue of recent embeddings
  (MoCo style); needs no dataset indices.
* :func:`inbatch_info_nce_loss`: InfoNCE where the other examples of the batch
  are the negatives; stateless.

Arguments are embeddings ``[B, D]`` (L2-normalized by the caller) and, for the
memory and queue forms, rows of the bank or queue. All math runs in float32.
Unlike the other feature losses, *both* embeddings are differentiated: in CRD
each side has its own learnable embedding head (the teacher network itself is
frozen upstream, by the train step). Bank and queue rows are constants
(``stop_gradient``), as in the references. Values are per example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

_EPS = 1e-7  # RepDistiller's ContrastLoss eps


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def _const(x: Array) -> Array:
  return jax.lax.stop_gradient(_f32(x))


def crd_scores(anchor: Array, rows: Array, temperature: float = 0.07) -> Array:
  r"""Unnormalized CRD scores ``exp(⟨m_{ik}, v_i⟩ / τ)``, ``[B, K+1]``.

  ``anchor`` ``[B, D]`` is one side's embedding, ``rows`` ``[B, K+1, D]`` the
  other side's memory rows for the positive (column 0) and the ``K`` negatives
  (constants). RepDistiller's ``ContrastMemory`` divides these by a normalizer
  ``Z`` (:func:`crd_normalizer`) to approximate ``P(positive | pair)``.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  v, m = _f32(anchor), _const(rows)
  if m.ndim != 3 or v.ndim != 2 or m.shape[0] != v.shape[0] or m.shape[2] != v.shape[1]:
    raise ValueError(f"CRD scores need anchors [B, D] and rows [B, K+1, D], got {v.shape} and {m.shape}")
  return jnp.exp(jnp.einsum("bkd,bd->bk", m, v) / temperature)


def crd_normalizer(scores: Array, num_examples: int) -> Array:
  r"""RepDistiller's normalization constant ``Z = mean(scores) · N``, estimated once
  from the first batch (the caller keeps it fixed afterwards); no gradient."""
  return jax.lax.stop_gradient(jnp.mean(_f32(scores)) * num_examples)


def contrast_loss(probs: Array, num_examples: int) -> Array:
  r"""CRD's NCE loss (RepDistiller ``ContrastLoss``), per example.

  ``probs`` ``[B, K+1]`` are the normalized scores ``P = exp(s/τ)/Z``, the
  positive in column 0. With the noise distribution ``P_n = 1/N``:

  .. math::
      L_i = -\Big[\log\frac{P_{i0}}{P_{i0} + K P_n + ε}
            + \sum_{k=1}^{K}\log\frac{K P_n}{P_{ik} + K P_n + ε}\Big]

  (``ε = 1e-7`` as in RepDistiller, whose loss is the batch mean of this).
  """
  p = _f32(probs)
  if p.ndim != 2 or p.shape[1] < 2:
    raise ValueError(f"contrast loss needs [B, K+1] probabilities with K >= 1, got {p.shape}")
  k = p.shape[1] - 1
  m_pn = k / float(num_examples)
  log_d1 = jnp.log(p[:, 0] / (p[:, 0] + m_pn + _EPS))
  log_d0 = jnp.log(m_pn / (p[:, 1:] + m_pn + _EPS))
  return -(log_d1 + jnp.sum(log_d0, axis=1))


def crd_loss(student_emb: Array, teacher_emb: Array, student_rows: Array, teacher_rows: Array, *,
             z_student: Array, z_teacher: Array, num_examples: int, temperature: float = 0.07) -> Array:
  r"""CRD (Tian et al., ICLR 2020) against memory banks, both directions, per example.

  .. math::
      L_i = \mathrm{NCE}\big(e^{⟨M^t_{ik}, f^s_i⟩/τ} / Z_s\big)
          + \mathrm{NCE}\big(e^{⟨M^s_{ik}, f^t_i⟩/τ} / Z_t\big)

  with :func:`contrast_loss` as NCE: the student's embedding ``f^s`` is scored
  against the *teacher's* memory rows ``teacher_rows`` (and ``Z_s`` normalizes
  those scores), the teacher's embedding against the student's memory rows.
  Rows ``[B, K+1, D]`` hold the example's own slot in column 0.
  """
  p_s = crd_scores(student_emb, teacher_rows, temperature) / z_student
  p_t = crd_scores(teacher_emb, student_rows, temperature) / z_teacher
  return contrast_loss(p_s, num_examples) + contrast_loss(p_t, num_examples)


def info_nce_loss(anchor: Array, positive: Array, negatives: Array, temperature: float = 0.07) -> Array:
  r"""InfoNCE (van den Oord et al. 2018) with a shared set of negatives, per example.

  .. math::
      L_i = -\log\frac{e^{⟨a_i, p_i⟩/τ}}{e^{⟨a_i, p_i⟩/τ} + \sum_{q} e^{⟨a_i, n_q⟩/τ}}

  ``anchor`` and ``positive`` ``[B, D]`` are differentiated; ``negatives``
  ``[Q, D]`` (a queue) are constants.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  a, p, n = _f32(anchor), _f32(positive), _const(negatives)
  if a.shape != p.shape or n.ndim != 2 or n.shape[1] != a.shape[1]:
    raise ValueError(f"InfoNCE needs anchors and positives [B, D] and negatives [Q, D], got "
                     f"{a.shape}, {p.shape} and {n.shape}")
  pos = jnp.sum(a * p, axis=1, keepdims=True)
  logits = jnp.concatenate([pos, a @ n.T], axis=1) / temperature
  return -jax.nn.log_softmax(logits, axis=1)[:, 0]


def queue_info_nce_loss(student_emb: Array, teacher_emb: Array, student_queue: Array, teacher_queue: Array,
                        temperature: float = 0.07) -> Array:
  r"""CRD with a MoCo-style queue instead of a memory bank, both directions, per example:
  ``InfoNCE(f^s_i, f^t_i; Q^t) + InfoNCE(f^t_i, f^s_i; Q^s)`` (:func:`info_nce_loss`),
  the queues holding earlier batches' embeddings of the other side."""
  return (info_nce_loss(student_emb, teacher_emb, teacher_queue, temperature)
          + info_nce_loss(teacher_emb, student_emb, student_queue, temperature))


def inbatch_info_nce_loss(student_emb: Array, teacher_emb: Array, temperature: float = 0.07) -> Array:
  r"""Contrastive distillation with in-batch negatives (CLIP-style), per example.

  .. math::
      S = f^s (f^t)^\top / τ,\quad
      L_i = -\log\mathrm{softmax}(S_{i,:})_i - \log\mathrm{softmax}(S_{:,i})_i

  the student's ``i``-th embedding picks the teacher's ``i``-th among the
  batch's, and vice versa. Couples the batch (the other examples are the
  negatives) but returns each example's two terms.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  s, t = _f32(student_emb), _f32(teacher_emb)
  if s.shape != t.shape or s.ndim != 2:
    raise ValueError(f"in-batch InfoNCE needs equal [B, D] embeddings, got {s.shape} and {t.shape}")
  logits = s @ t.T / temperature
  diag = jnp.diagonal(logits)
  return (jax.nn.logsumexp(logits, axis=1) - diag) + (jax.nn.logsumexp(logits, axis=0) - diag)
