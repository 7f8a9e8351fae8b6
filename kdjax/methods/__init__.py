"""Methods: which losses apply to which model outputs.

A method is a pure function

    method(student_logits, student_feats, teacher, batch) -> (loss_B, terms)

where ``teacher`` is ``None`` (no teacher) or ``(teacher_logits, teacher_feats)``
computed in inference mode with the gradient stopped, ``batch`` holds at least
``"label"``, ``loss_B`` is the per-example loss and ``terms`` maps each named
term to its per-example value, so every term is logged separately.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from kdjax.losses import check_alpha, check_temperature, hard_cross_entropy, hinton_kd_loss, kl_divergence

Method = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def supervised() -> Method:
  """Plain cross-entropy on the labels; needs no teacher."""

  def method(student_logits, student_feats, teacher, batch):
    del student_feats, teacher
    ce = hard_cross_entropy(student_logits, batch["label"])
    return ce, {"ce": ce}

  method.needs_teacher = False
  return method


def hinton_kd(*, alpha: float, temperature: float) -> Method:
  """Hinton et al. (2015): ``α·CE(y, s) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T))``.

  Logs ``ce`` and ``kl`` (the KL at temperature T, before the ``T²`` factor).
  """
  check_alpha(alpha)
  check_temperature(temperature)

  def method(student_logits, student_feats, teacher, batch):
    del student_feats
    teacher_logits, _ = teacher
    loss = hinton_kd_loss(student_logits, teacher_logits, batch["label"],
                          alpha=alpha, temperature=temperature)
    # The logged terms repeat sub-expressions of the loss; XLA computes them once.
    terms = {"ce": hard_cross_entropy(student_logits, batch["label"]),
             "kl": kl_divergence(student_logits, teacher_logits, temperature)}
    return loss, terms

  method.needs_teacher = True
  return method


_METHODS = {"supervised": supervised, "hinton": hinton_kd}


def make_method(name: str, **hparams) -> Method:
  """Builds a registered method by name with its hyperparameters."""
  if name not in _METHODS:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}")
  return _METHODS[name](**hparams)


__all__ = ["Method", "hinton_kd", "make_method", "supervised"]
