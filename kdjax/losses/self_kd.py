"""Self-distillation losses without a separate teacher: Tf-KD's manually designed "virtual
teacher" (Yuan et al., CVPR 2020, "Revisiting Knowledge Distillation via Label Smoothing
Regularization").

Pure functions, float32 math, per-example values (no reduction), as the rest of
:mod:`kdjax.losses`.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from kdjax.losses.validate import check_temperature

Array = jax.Array


def check_correct_prob(correct_prob, num_classes: int | None = None) -> None:
  """Fails unless ``0 < correct_prob <= 1`` (and ``>= 1/K`` when ``num_classes`` K is known: below
  it the label would be the *least* likely class). A traced value is left unchecked."""
  if not (isinstance(correct_prob, numbers.Real) and not isinstance(correct_prob, bool)):
    return
  if not 0.0 < correct_prob <= 1.0:
    raise ValueError(f"correct_prob (the virtual teacher's probability of the label) must lie in (0, 1], "
                     f"got {correct_prob!r}")
  if num_classes is not None and correct_prob < 1.0 / num_classes - 1e-12:
    raise ValueError(f"correct_prob must be at least 1/K = 1/{num_classes} (the uniform distribution) with "
                     f"K={num_classes} classes, got {correct_prob!r}")


def virtual_teacher_probs(labels: Array, num_classes: int, correct_prob: float | Array = 0.99) -> Array:
  r"""Tf-KD's manually designed teacher distribution ``p^d`` (Yuan et al. 2020, eq. 9):

  .. math::
      p^d(k) = \begin{cases} a & k = y \\ (1 - a)/(K - 1) & k \ne y \end{cases}

  with ``a = correct_prob`` (0.99 in the reference code). Rows sum to 1; ``a = 1/K``
  is the uniform distribution, ``a = 1`` the one-hot label. The reference then softens
  these *probabilities* once more, as if they were logits: see :func:`tf_kd_reg_loss`.

  Args:
    labels: ``[...]`` integer labels ``y``.
    num_classes: ``K >= 2``.
    correct_prob: ``a`` in ``[1/K, 1]``.

  Returns:
    ``[..., K]`` float32 probabilities.
  """
  if num_classes < 2:
    raise ValueError(f"the virtual teacher needs at least 2 classes, got num_classes={num_classes}")
  check_correct_prob(correct_prob, num_classes)
  a = jnp.asarray(correct_prob, jnp.float32)
  is_label = jax.nn.one_hot(labels, num_classes, dtype=bool)
  return jnp.where(is_label, a, (1.0 - a) / (num_classes - 1))


def tf_kd_reg_loss(student_logits: Array, labels: Array, *, temperature: float | Array = 20.0,
                   correct_prob: float | Array = 0.99, multiplier: float | Array = 1.0) -> Array:
  r"""Tf-KD_reg's regularization term (Yuan et al., CVPR 2020, section 5), per example.

  As the reference code (github.com/yuanli2333/Teacher-free-Knowledge-Distillation,
  ``my_loss_function.py``, ``loss_kd_regularization``)::

      teacher_soft = p^d                     # virtual_teacher_probs(labels, K, correct_prob)
      loss_soft_regu = nn.KLDivLoss()(F.log_softmax(outputs, dim=1),
                                      F.softmax(teacher_soft / T, dim=1)) * multiplier

  that is, with ``q = softmax(p^d / T)`` (the *probabilities* ``p^d`` divided by ``T``)
  and the student's log-softmax at temperature 1 (its raw logits ``s``, not ``s/T``):

  .. math::
      L_i = \frac{\mathrm{multiplier}}{K}\,\mathrm{KL}\big(q_i\,\|\,\mathrm{softmax}(s_i)\big)
          = \frac{\mathrm{multiplier}}{K}\sum_k q_{ik}\,(\log q_{ik} - \log\mathrm{softmax}(s_i)_k)

  No ``T²`` factor. The ``1/K``: ``nn.KLDivLoss()``'s default reduction (``'mean'``, in the
  PyTorch 1.2 the reference pins) averages over all ``B·K`` elements, so the batch mean
  of ``L_i`` is the reference's value exactly. The reference's CIFAR-100 settings have
  ``multiplier = 100 = K``, which turns this back into the plain KL.

  Args:
    student_logits: ``[B, K]`` student logits.
    labels: ``[B]`` integer labels.
    temperature: ``T > 0`` applied to the virtual teacher only.
    correct_prob: the virtual teacher's probability of the label, in ``[1/K, 1]``.
    multiplier: the reference's extra weight of the term.

  Returns:
    ``[B]`` per-example loss, float32.
  """
  check_temperature(temperature)
  s = jnp.asarray(student_logits).astype(jnp.float32)
  num_classes = s.shape[-1]
  p_d = virtual_teacher_probs(labels, num_classes, correct_prob)
  log_q = jax.nn.log_softmax(p_d / temperature, axis=-1)  # no gradient path: depends on labels only
  log_p_s = jax.nn.log_softmax(s, axis=-1)
  kl = jnp.sum(jnp.exp(log_q) * (log_q - log_p_s), axis=-1)
  return multiplier * jnp.maximum(kl, 0.0) / num_classes
