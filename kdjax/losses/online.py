"""Online (teacher-free) distillation losses: students of one cohort learn from each other.

Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu 2018, "Deep Mutual Learning",
arXiv:1706.00384) and co-distillation (Anil, Pereyra, Passos, Ormandi, Dahl & Hinton 2018,
"Large scale distributed neural network training through online distillation",
arXiv:1804.03235). Same conventions as :mod:`kdjax.losses.logit`: pure, per-example
values, no reduction, float32 math whatever the logits' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kdjax.losses.logit import hard_cross_entropy
from kdjax.losses.validate import check_alpha, check_temperature

Array = jax.Array


def mutual_kl(logits_KxBxC: Array, temperature: float | Array = 1.0) -> Array:
  r"""Each student's mean KL divergence to its peers' softened distributions.

  For ``K ≥ 2`` students with logits ``s_1 … s_K`` and ``p_k = softmax(s_k / T)``:

  .. math::
      \mathrm{MKL}_k = \frac{1}{K-1} \sum_{l \ne k} \mathrm{KL}\big(p_l \,\|\, p_k\big)
                     = \frac{1}{K-1} \sum_{l \ne k} \sum_c p_{l,c} (\log p_{l,c} - \log p_{k,c})

  Deep Mutual Learning's mimicry term (Zhang et al. 2018, eq. 10 for a cohort of K: the
  average over the other students). The peers' distributions ``p_l`` are under
  ``stop_gradient``: the gradient of ``MKL_k`` reaches student ``k`` only, so summing over
  the cohort and differentiating gives each student exactly the gradient of its own loss.
  Like :func:`kdjax.losses.kl_divergence` there is no ``T²`` factor here: the caller scales
  the term (:func:`online_kd_loss` does).

  Args:
    logits_KxBxC: ``[K, ..., C]`` logits of the K students on the same examples.
    temperature: softening temperature ``T > 0`` (DML uses ``T = 1``).

  Returns:
    ``[K, ...]`` per-student, per-example mean KL to the peers, float32; zero when all
    students agree.
  """
  check_temperature(temperature)
  num_students = logits_KxBxC.shape[0]
  if num_students < 2:
    raise ValueError(f"mutual_kl needs at least 2 students along the leading axis, got {num_students}")
  log_p = jax.nn.log_softmax(jnp.asarray(logits_KxBxC).astype(jnp.float32) / temperature, axis=-1)
  log_q = jax.lax.stop_gradient(log_p)  # the peers' view: constants
  q = jnp.exp(log_q)
  # kl[l, k] = KL(p_l ‖ p_k): peer l's (constant) distribution against student k's.
  # Classes where the peer's probability underflows to 0 contribute exactly 0.
  neg_entropy_L = jnp.sum(jnp.where(q > 0, q * log_q, 0.0), axis=-1)  # [K, ...]
  cross_LxK = jnp.einsum("l...c,k...c->lk...", q, log_p)  # sum_c q_l,c log p_k,c
  kl_LxK = neg_entropy_L[:, None] - cross_LxK
  off_diagonal = ~jnp.eye(num_students, dtype=bool).reshape(num_students, num_students,
                                                              *(1,) * (kl_LxK.ndim - 2))
  mkl = jnp.sum(jnp.where(off_diagonal, kl_LxK, 0.0), axis=0) / (num_students - 1)
  return jnp.maximum(mkl, 0.0)  # rounding can give tiny negatives (~-1e-7) when the students agree


def online_kd_loss(
    logits_KxBxC: Array,
    labels: Array,
    *,
    alpha: float | Array = 1.0,
    temperature: float | Array = 1.0,
    mimic_weight: float | Array = 1.0,
) -> tuple[Array, dict[str, Array]]:
  r"""Every student's online distillation loss: its own labels plus its peers' soft targets.

  .. math::
      L_k = \alpha\,\mathrm{CE}(y, s_k) + \lambda\,T^2\,\mathrm{MKL}_k

  with :func:`mutual_kl` ``MKL_k`` (peers under ``stop_gradient``). The ``T²`` factor is
  Hinton et al. (2015)'s: it keeps the soft term's gradient magnitude roughly independent of
  ``T``, and is 1 at DML's ``T = 1``, so one formula covers both rules:

  * DML (Zhang et al. 2018, eq. 10): ``alpha = 1``, ``mimic_weight = 1``: ``CE + MKL``.
  * Co-distillation (Anil et al. 2018) in Hinton KD's weighting: ``mimic_weight = 1 − alpha``:
    ``α·CE + (1−α)·T²·MKL``; ``mimic_weight = 0`` during the burn-in.

  Args:
    logits_KxBxC: ``[K, B, C]`` logits of the K students on the same batch.
    labels: ``[B]`` integer labels.
    alpha: weight of the cross-entropy term, in ``[0, 1]``.
    temperature: softening temperature ``T > 0`` of the mimicry term.
    mimic_weight: weight ``λ ≥ 0`` of the mimicry term (before ``T²``).

  Returns:
    ``(loss_KxB, {"ce": ce_KxB, "kl": kl_KxB})``, float32; ``kl`` is ``MKL`` before any weight.
  """
  check_alpha(alpha)
  check_temperature(temperature)
  ce = hard_cross_entropy(logits_KxBxC, jnp.broadcast_to(labels, logits_KxBxC.shape[:-1]))
  kl = mutual_kl(logits_KxBxC, temperature)
  return alpha * ce + mimic_weight * jnp.square(temperature) * kl, {"ce": ce, "kl": kl}
