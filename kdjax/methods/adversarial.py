"""Adversarial methods: the model learns on adversarial examples of itself, made inside the step.

A method here has ``method.adversary``, an :class:`Adversary` (L∞ budget ``eps``, PGD
``steps`` and ``step_size``). The train step (:func:`kdjax.train.step.student_step`) then makes
PGD examples of each batch against the student as it is before the update (inference mode,
cross-entropy on the labels, random start, projected onto the ε-ball and ``[0, 1]``; no gradient
flows through the attack), runs the student on the adversarial images in a training-mode pass of
their own after the clean one (their own batch statistics, as ARD's reference code), and gives the
method the adversarial outputs as ``batch["adversarial_student"] = (logits, feats)``.
The teacher sees the clean images only.

- :func:`adversarial_training` (Madry et al. 2018): ``CE(s(x_adv), y)``; no teacher. Trains a
  robust teacher for ARD, or the robust student-alone baseline.
- :func:`ard` (Goldblum et al. 2020, adversarially robust distillation):
  ``α·T²·KL(softmax(t(x)/T) ‖ softmax(s(x_adv)/T)) + (1−α)·CE(s(x), y)``: the student matches the
  teacher's soft labels on clean images from inside the ε-ball around them. The reference code's
  ``nn.KLDivLoss()`` averages over batch *and* classes; this KL is summed over classes (the
  divergence itself), so its α = 1 loss is C times theirs at the same T.
"""

from __future__ import annotations

from typing import NamedTuple

from kdjax.losses import check_alpha, check_pgd, check_temperature, hard_cross_entropy, kl_divergence
from kdjax.methods.base import Method, as_method


class Adversary(NamedTuple):
  """How the step attacks the student: PGD with L∞ budget ``eps`` (pixel units of ``[0, 1]``),
  ``steps`` signed steps of ``step_size``, from a uniform random start in the ball."""

  eps: float
  steps: int
  step_size: float


def make_adversary(eps: float, steps: int, step_size: float | None) -> Adversary:
  step_size = check_pgd(eps, steps, step_size)
  return Adversary(float(eps), steps, float(step_size))


def adversarial_outputs(batch, name: str):
  """The student's ``(logits, feats)`` on its adversarial examples, put in the batch by the step."""
  if "adversarial_student" not in batch:
    raise ValueError(f"{name} needs the train step to attack the student (batch['adversarial_student']): use "
                     "it as the step's method, alone or through combine or per_teacher, which pass the attack on")
  return batch["adversarial_student"]


def adversarial_training(*, eps: float = 8 / 255, steps: int = 10, step_size: float | None = None) -> Method:
  """Madry et al. (2018): cross-entropy on PGD examples of the model itself (``eps``, ``steps``,
  ``step_size``, default ``2.5·ε/steps``). Logs ``adv_ce``.

  Defaults: ε = 8/255, 10 steps of 2/255 (``2.5·ε/steps`` at these defaults), random start: the
  CIFAR-10 reference, MadryLab/cifar10_challenge ``config.json`` (``epsilon 8.0``, ``num_steps 10``,
  ``step_size 2.0`` on the 0-255 scale, read by ``train.py``; the paper's text trains with 7
  steps). Was ε = 0.1, 7 steps. On MNIST Madry et al. use ε = 0.3, 40 steps of 0.01
  (MadryLab/mnist_challenge).
  """
  adversary = make_adversary(eps, steps, step_size)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_logits, student_feats, teacher, params
    adv_ce = hard_cross_entropy(adversarial_outputs(batch, "adversarial_training")[0], batch["label"])
    return adv_ce, {"adv_ce": adv_ce}

  return as_method(method, needs_teacher=False, adversary=adversary)


def ard(*, alpha: float = 1.0, temperature: float = 30.0, eps: float = 8 / 255, steps: int = 10,
        step_size: float | None = None) -> Method:
  """Adversarially robust distillation (Goldblum et al. 2020):
  ``α·T²·KL(softmax(t(x)/T) ‖ softmax(s(x_adv)/T)) + (1−α)·CE(s(x), y)``, with ``x_adv`` PGD
  examples of the student (``eps``, ``steps``, ``step_size``) and ``t(x)`` the teacher on the
  clean images. Logs ``ce`` (clean), ``adv_kl`` (before the ``T²`` factor) and ``adv_ce`` (the
  student's cross-entropy on its adversarial examples, a robustness gauge outside the loss).

  Defaults: α = 1, T = 30, ε = 8/255, 10 PGD steps of 2/255 (``2.5·ε/steps`` at these
  defaults): goldblum/AdversariallyRobustDistillation ``main.py`` (``--alpha 1.0``,
  ``--temp 30.0``, its ``config`` for ``AttackPGD``). Was ε = 0.1, 7 steps.
  """
  check_alpha(alpha)
  check_temperature(temperature)
  adversary = make_adversary(eps, steps, step_size)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    adv_logits = adversarial_outputs(batch, "ard")[0]
    ce = hard_cross_entropy(student_logits, batch["label"])
    adv_kl = kl_divergence(adv_logits, teacher[0], temperature)
    loss = alpha * temperature**2 * adv_kl + (1.0 - alpha) * ce
    return loss, {"ce": ce, "adv_kl": adv_kl, "adv_ce": hard_cross_entropy(adv_logits, batch["label"])}

  return as_method(method, needs_teacher=True, adversary=adversary)

