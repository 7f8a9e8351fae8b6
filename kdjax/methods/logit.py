"""Logit-level methods: KD with a divergence between softened outputs (KL, reverse KL, JS, GKD's
skewed JS), DKD, DIST."""

from __future__ import annotations

import functools

from kdjax.losses import (check_alpha, check_skew, check_temperature, dist_loss, dkd_loss, generalized_js_divergence,
                          hard_cross_entropy, js_divergence, kl_divergence, reverse_kl_divergence, standardize_logits)
from kdjax.methods.base import Method, as_method
from kdjax.methods.schedule import check_epochs, warmup_length, warmup_weight


def _logits(student_logits, teacher, standardize: bool):
  teacher_logits = teacher[0]
  if standardize:
    return standardize_logits(student_logits), standardize_logits(teacher_logits)
  return student_logits, teacher_logits


def supervised() -> Method:
  """Plain cross-entropy on the labels; needs no teacher.

  Defaults: none (no hyperparameters); RepDistiller's ``train_teacher.py``, mdistiller's
  ``configs/cifar100/vanilla.yaml``.
  """

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, teacher, params
    ce = hard_cross_entropy(student_logits, batch["label"])
    return ce, {"ce": ce}

  return as_method(method, needs_teacher=False)


def hinton_kd(*, alpha: float, temperature: float, standardize: bool = False) -> Method:
  """Hinton et al. (2015): ``α·CE(y, s) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T))``,
  as :func:`kdjax.losses.hinton_kd_loss`.

  Logs ``ce`` and ``kl`` (the KL at temperature T, before the ``T²`` factor).
  ``standardize=True`` applies logit standardization (Sun et al. 2024) to both
  logits inside the KL term (the CE term keeps the raw student logits).

  ``alpha`` and ``temperature`` have no defaults: Hinton et al. fix no values (there is no
  reference code), and studies and sweeps supply both (the registry's ``label_weight`` and
  ``temperature``; :class:`kdjax.config.StudyConfig`'s α=0.5, T=4). The CIFAR-100 references use
  ``alpha=0.1, temperature=4`` (RepDistiller ``-r 0.1 -a 0.9``, ``--kd_T 4``; mdistiller
  ``KD.LOSS.CE_WEIGHT 0.1``, ``KD_WEIGHT 0.9``, ``TEMPERATURE 4``; its ImageNet configs:
  ``alpha=0.5, temperature=1``).

  Defaults: none (required); the CIFAR-100 values above are RepDistiller
  ``scripts/run_cifar_distill.sh`` and ``train_student.py``, mdistiller
  ``mdistiller/engine/cfg.py`` (``CFG.KD``) and ``configs/imagenet/r34_r18/kd.yaml``.
  """
  return _divergence_kd(kl_divergence, "kl", alpha=alpha, temperature=temperature, standardize=standardize)


def _divergence_kd(divergence, term: str, *, alpha: float, temperature: float, standardize: bool) -> Method:
  check_alpha(alpha)
  check_temperature(temperature)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    s, t = _logits(student_logits, teacher, standardize)
    ce = hard_cross_entropy(student_logits, batch["label"])
    div = divergence(s, t, temperature)
    return alpha * ce + (1.0 - alpha) * temperature**2 * div, {"ce": ce, term: div}

  return as_method(method, needs_teacher=True)


def reverse_kd(*, alpha: float = 0.5, temperature: float = 4.0, standardize: bool = False) -> Method:
  """``α·CE + (1−α)·T²·KL(softmax(s/T) ‖ softmax(t/T))``: KD with the reverse KL.

  Defaults: no reference implementation (reverse KL is a variant of Hinton KD, e.g. MiniLLM's
  objective for sequence models); α=0.5, T=4 are kdjax's study defaults
  (``kdjax/config.py`` ``StudyConfig``), which studies and sweeps apply anyway (the registry's
  ``label_weight``/``temperature``).
  """
  return _divergence_kd(reverse_kl_divergence, "reverse_kl", alpha=alpha, temperature=temperature,
                        standardize=standardize)


def js_kd(*, alpha: float = 0.5, temperature: float = 4.0, standardize: bool = False) -> Method:
  """``α·CE + (1−α)·T²·JS(softmax(s/T), softmax(t/T))``: KD with the Jensen–Shannon divergence.

  Defaults: no reference implementation; α=0.5, T=4 are kdjax's study defaults
  (``kdjax/config.py`` ``StudyConfig``), which studies and sweeps apply anyway.
  """
  return _divergence_kd(js_divergence, "js", alpha=alpha, temperature=temperature, standardize=standardize)


def gkd(*, alpha: float = 0.5, temperature: float = 4.0, beta: float = 0.5, standardize: bool = False) -> Method:
  """``α·CE + (1−α)·T²·JSD(β)(softmax(t/T) ‖ softmax(s/T))``: KD with the generalized
  Jensen–Shannon divergence of GKD (Agarwal et al., ICLR 2024), skew ``β`` in ``(0, 1)``, the
  teacher's weight in the mixture (:func:`kdjax.losses.generalized_js_divergence`; ``β = 0.5`` is
  :func:`js_kd`, small ``β`` behaves as forward KL and ``β`` near 1 as reverse KL, scaled by ``β``
  and ``1 − β``). GKD's on-policy part (training on the student's own samples) is for sequence
  models and is not here: this is its divergence on the training inputs. Logs ``ce`` and
  ``gjsd`` (before the ``T²`` factor).

  Defaults: ``beta=0.5`` is TRL's ``GKDConfig.beta`` (huggingface/trl ``trl/trainer/gkd_config.py``,
  the GKD reference implementation for language models, which has no label term and samples at
  its own temperature 0.9); α=0.5, T=4 are kdjax's study defaults (``kdjax/config.py``
  ``StudyConfig``), which studies and sweeps apply anyway.
  """
  check_skew(beta)
  return _divergence_kd(functools.partial(generalized_js_divergence, beta=beta), "gjsd", alpha=alpha,
                        temperature=temperature, standardize=standardize)


def dkd(*, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, ce_weight: float = 1.0,
        warmup_epochs: float | None = None, standardize: bool = False) -> Method:
  """Decoupled KD (Zhao et al. 2022): ``ce_weight·CE + w(epoch)·DKD``
  (:func:`kdjax.losses.dkd_loss`, ``α·TCKD + β·NCKD`` at temperature T). Logs ``ce`` and ``dkd``.

  ``w`` is the reference's linear warm-up ``min(epoch / warmup, 1)``, in epochs: mdistiller
  evaluates it once per epoch with a 1-based epoch counter, so the k-th epoch (k = 1, 2, …)
  weighs ``min(k / warmup, 1)``: 1/20 in the first epoch, full weight from the 20th
  (:func:`kdjax.methods.schedule.warmup_weight`, reading ``batch["epoch"]``).
  ``warmup_epochs``:

  - ``None`` (default): the reference's 20 epochs, or the whole run where the run is shorter,
    ``min(20, epochs)`` (a 5-epoch run ramps over its 5 epochs, a 40-epoch one over 20);
  - ``N > 0``: N epochs; ``N`` longer than the run is a ValueError when the step is traced
    (the term would never reach its full weight), naming both numbers and the fix
    (``--set method.warmup_epochs=N``);
  - ``0``: no ramp (full weight from the first step).

  A ramp needs the run's length: the step must be built with ``steps_per_epoch`` and ``epochs``
  (``make_train_step(..., steps_per_epoch=, epochs=)``; :func:`kdjax.train.distill`,
  ``train_student`` and sweeps do), else the step fails with a ValueError saying so, unless
  ``warmup_epochs=0``. A negative ``warmup_epochs`` is a ValueError here.

  Other reference settings: CIFAR-100 pairs with β=2 (resnet56→resnet20, resnet110→resnet32) and
  β=6 (vgg13→vgg8, vgg13→MobileNetV2, wrn_40_2→wrn_16_2, wrn_40_2→wrn_40_1); ImageNet:
  ``beta=0.5`` (ResNet-34→18) or ``2`` (ResNet-50→MobileNetV1), ``temperature=1``,
  ``warmup_epochs=1``.

  Defaults: α=1, β=8, T=4, ce_weight=1, warmup 20 epochs: mdistiller ``mdistiller/engine/cfg.py``
  (``CFG.DKD``), ``configs/cifar100/dkd/res32x4_res8x4.yaml`` (and the other
  ``configs/cifar100/dkd/*.yaml``, ``configs/imagenet/*/dkd.yaml``) and
  ``mdistiller/distillers/DKD.py`` (the ramp; the epoch counter in ``mdistiller/engine/trainer.py``).
  """
  check_temperature(temperature)
  check_epochs("dkd", "warmup_epochs", warmup_epochs)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    ramp = warmup_weight(batch, warmup_length("dkd", warmup_epochs, 20.0, batch))
    s, t = _logits(student_logits, teacher, standardize)
    ce = hard_cross_entropy(student_logits, batch["label"])
    d = dkd_loss(s, t, batch["label"], alpha=alpha, beta=beta, temperature=temperature)
    return ce_weight * ce + ramp * d, {"ce": ce, "dkd": d}

  return as_method(method, needs_teacher=True)


def dist_kd(*, beta: float = 2.0, gamma: float = 2.0, temperature: float = 4.0, ce_weight: float = 1.0,
            standardize: bool = False) -> Method:
  """DIST (Huang et al. 2022): ``ce_weight·CE + DIST`` (:func:`kdjax.losses.dist_loss`:
  ``T²·(β·inter + γ·intra)``); DIST is a batch-level scalar, spread evenly over the examples so
  that the batch mean is ``mean(CE) + DIST``. Logs ``ce`` and ``dist``.

  The reference weighs its ``DIST(beta=1, gamma=1, tau)`` by ``kd_loss_weight: 2`` (and CE by
  ``ori_loss_weight: 1``): here that is ``beta = gamma = 2``. On CIFAR-100 its ``kd: dist_t4`` is
  τ = 4; on ImageNet (``configs/strategies/distill/resnet_dist.yaml``, ``kd: 'dist'``) τ = 1, with
  the same weights: pass ``temperature=1`` there.

  Defaults: β=2, γ=2, T=4, ce_weight=1: DIST_KD's classification code (hunto/image_classification_sota)
  ``configs/strategies/distill/dist_cifar.yaml`` and ``lib/models/losses/kd_loss.py`` (``KDLoss``:
  ``dist_t4``, the weights), ``lib/models/losses/dist_kd.py``.
  """
  check_temperature(temperature)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    s, t = _logits(student_logits, teacher, standardize)
    ce = hard_cross_entropy(student_logits, batch["label"])
    d = dist_loss(s, t, beta=beta, gamma=gamma, temperature=temperature)
    return ce_weight * ce + d, {"ce": ce, "dist": d}

  return as_method(method, needs_teacher=True)

