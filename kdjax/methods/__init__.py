"""Methods: which losses apply to which model outputs.

A method is a pure function

    method(student_logits, student_feats, teacher, batch, params) -> (loss_B, terms)

where ``teacher`` is ``None`` (no teacher) or ``(teacher_logits, teacher_feats)``
computed in inference mode with the gradient stopped, ``batch`` holds at least
``"label"`` (and ``"step"``, the student's step count before this update, for
methods with a schedule), ``loss_B`` is the per-example loss and ``terms`` maps
each named term to its per-example value (or a batch scalar for batch-level
losses such as DIST), so every term is logged separately. ``params`` are the
method's own learnable parts, trained with the student: ``{}`` for most methods;
a method that has some (FitNet's regressor) carries
``method.init(key, student_feature_shapes, teacher_feature_shapes) -> params``,
sized from the models' feature shapes (``kdjax.models.feature_shapes``) before
any data is seen.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from kdjax.losses import (attention_transfer_loss, check_alpha, check_temperature,
                          correlation_congruence_loss, dist_loss, dkd_loss, hard_cross_entropy, hint_loss,
                          js_divergence, kl_divergence, nst_loss, pkt_loss, reverse_kl_divergence,
                          rkd_loss, similarity_preserving_loss, standardize_logits)

Method = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _method(fn, needs_teacher: bool) -> Method:
  fn.needs_teacher = needs_teacher
  return fn


def _logits(student_logits, teacher, standardize: bool):
  teacher_logits = teacher[0]
  if standardize:
    return standardize_logits(student_logits), standardize_logits(teacher_logits)
  return student_logits, teacher_logits


def supervised() -> Method:
  """Plain cross-entropy on the labels; needs no teacher."""

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, teacher, params
    ce = hard_cross_entropy(student_logits, batch["label"])
    return ce, {"ce": ce}

  return _method(method, needs_teacher=False)


def hinton_kd(*, alpha: float, temperature: float, standardize: bool = False) -> Method:
  """Hinton et al. (2015): ``α·CE(y, s) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T))``,
  as :func:`kdjax.losses.hinton_kd_loss`.

  Logs ``ce`` and ``kl`` (the KL at temperature T, before the ``T²`` factor).
  ``standardize=True`` applies logit standardization (Sun et al. 2024) to both
  logits inside the KL term (the CE term keeps the raw student logits).
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

  return _method(method, needs_teacher=True)


def reverse_kd(*, alpha: float = 0.5, temperature: float = 4.0, standardize: bool = False) -> Method:
  """``α·CE + (1−α)·T²·KL(softmax(s/T) ‖ softmax(t/T))``: KD with the reverse KL."""
  return _divergence_kd(reverse_kl_divergence, "reverse_kl", alpha=alpha, temperature=temperature,
                        standardize=standardize)


def js_kd(*, alpha: float = 0.5, temperature: float = 4.0, standardize: bool = False) -> Method:
  """``α·CE + (1−α)·T²·JS(softmax(s/T), softmax(t/T))``: KD with the Jensen–Shannon divergence."""
  return _divergence_kd(js_divergence, "js", alpha=alpha, temperature=temperature, standardize=standardize)


def dkd(*, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, ce_weight: float = 1.0,
        warmup_steps: int = 0, standardize: bool = False) -> Method:
  """Decoupled KD (Zhao et al. 2022): ``ce_weight·CE + w(step)·DKD``.

  ``w(step) = min(step / warmup_steps, 1)``, the linear ramp of the reference
  code (20 epochs there: pass 20 × steps per epoch); 0 turns it off. Defaults
  are the paper's CIFAR-100 ones (α=1, β=8, T=4). Logs ``ce`` and ``dkd``.
  """
  check_temperature(temperature)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    s, t = _logits(student_logits, teacher, standardize)
    ce = hard_cross_entropy(student_logits, batch["label"])
    d = dkd_loss(s, t, batch["label"], alpha=alpha, beta=beta, temperature=temperature)
    ramp = jnp.minimum(batch["step"] / warmup_steps, 1.0) if warmup_steps else 1.0
    return ce_weight * ce + ramp * d, {"ce": ce, "dkd": d}

  return _method(method, needs_teacher=True)


def dist_kd(*, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0, ce_weight: float = 1.0,
            standardize: bool = False) -> Method:
  """DIST (Huang et al. 2022): ``ce_weight·CE + DIST``; DIST is a batch-level scalar,
  spread evenly over the examples so that the batch mean is ``mean(CE) + DIST``."""
  check_temperature(temperature)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    s, t = _logits(student_logits, teacher, standardize)
    ce = hard_cross_entropy(student_logits, batch["label"])
    d = dist_loss(s, t, beta=beta, gamma=gamma, temperature=temperature)
    return ce_weight * ce + d, {"ce": ce, "dist": d}

  return _method(method, needs_teacher=True)


def pick_feature(feats: dict[str, jax.Array], name: str, who: str) -> jax.Array:
  """``feats[name]``, or an error that lists the features ``who`` exposes."""
  if name not in feats:
    raise ValueError(f"unknown feature {name!r} for the {who}; available: {', '.join(sorted(feats))}")
  return feats[name]


def _feature_method(term: str, loss_fn, *, layers, weight: float, ce_weight: float) -> Method:
  """``ce_weight·CE + weight·Σ_layers loss_fn(student_feat, teacher_feat)``."""
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  if not layers:
    raise ValueError(f"{term}: give at least one feature layer")

  def method(student_logits, student_feats, teacher, batch, params):
    teacher_feats = teacher[1]
    ce = hard_cross_entropy(student_logits, batch["label"])
    total = 0.0
    for layer in layers:
      total = total + loss_fn(pick_feature(student_feats, layer, "student"),
                              pick_feature(teacher_feats, layer, "teacher"))
    return ce_weight * ce + weight * total, {"ce": ce, term: total}

  return _method(method, needs_teacher=True)


# Feature and relation methods without learnable parts. Default weights are
# RepDistiller's (scripts/run_cifar_distill.sh): AT β=1000, SP γ=3000, NST 50,
# RKD 1 (its own w_d=25, w_a=50 inside), PKT 30000, CC 0.02.
def attention(*, layers=("block1", "block2"), weight: float = 1000.0, p: int = 2, ce_weight: float = 1.0) -> Method:
  """Attention transfer (Zagoruyko & Komodakis 2017) on NHWC feature maps."""
  return _feature_method("at", lambda s, t: attention_transfer_loss(s, t, p), layers=layers, weight=weight,
                         ce_weight=ce_weight)


def nst(*, layers=("block1", "block2"), weight: float = 50.0, ce_weight: float = 1.0) -> Method:
  """Neuron selectivity transfer (Huang & Wang 2017) on NHWC feature maps."""
  return _feature_method("nst", nst_loss, layers=layers, weight=weight, ce_weight=ce_weight)


def similarity_preserving(*, layers=("block2",), weight: float = 3000.0, ce_weight: float = 1.0) -> Method:
  """Similarity-preserving KD (Tung & Mori 2019); RepDistiller uses the last block's output."""
  return _feature_method("sp", similarity_preserving_loss, layers=layers, weight=weight, ce_weight=ce_weight)


def rkd(*, layers=("pre_logits",), weight: float = 1.0, distance_weight: float = 25.0,
        angle_weight: float = 50.0, ce_weight: float = 1.0) -> Method:
  """Relational KD (Park et al. 2019), distance and angle, on the penultimate embedding."""
  return _feature_method(
      "rkd", lambda s, t: rkd_loss(s, t, distance_weight=distance_weight, angle_weight=angle_weight),
      layers=layers, weight=weight, ce_weight=ce_weight)


def pkt(*, layers=("pre_logits",), weight: float = 30000.0, ce_weight: float = 1.0) -> Method:
  """Probabilistic knowledge transfer (Passalis & Tefas 2018) on the penultimate embedding."""
  return _feature_method("pkt", pkt_loss, layers=layers, weight=weight, ce_weight=ce_weight)


def correlation_congruence(*, layers=("pre_logits",), weight: float = 0.02, ce_weight: float = 1.0) -> Method:
  """Correlation congruence (Peng et al. 2019, RepDistiller's form). Needs equal embedding
  sizes: RepDistiller puts learnable embeddings in front, which kdjax does not have yet."""
  return _feature_method("cc", correlation_congruence_loss, layers=layers, weight=weight, ce_weight=ce_weight)


def _linear_init(key: jax.Array, d_in: int, d_out: int) -> dict[str, jax.Array]:
  """LeCun-normal kernel and zero bias for a connector (a 1x1 convolution on NHWC maps)."""
  return {"kernel": jax.random.normal(key, (d_in, d_out), jnp.float32) / jnp.sqrt(d_in),
          "bias": jnp.zeros((d_out,), jnp.float32)}


def _linear(params, x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32) @ params["kernel"] + params["bias"]


def fitnet(*, student_layer: str = "block2", teacher_layer: str = "block2", weight: float = 100.0,
           ce_weight: float = 1.0) -> Method:
  """FitNets (Romero et al., ICLR 2015): a learnable regressor maps the student's guided
  layer onto the teacher's hint layer, ``ce_weight·CE + weight·MSE(r(F^s), F^t)``.

  The regressor is a 1x1 convolution on NHWC maps (a linear map on vectors),
  ``C_s -> C_t``, trained with the student (single stage, RepDistiller's β=100).
  Spatial sizes must match.
  """

  def init(key, student_shapes, teacher_shapes):
    s = pick_feature(student_shapes, student_layer, "student")
    t = pick_feature(teacher_shapes, teacher_layer, "teacher")
    if s.shape[1:-1] != t.shape[1:-1]:
      raise ValueError(f"FitNet's regressor maps channels only: student {student_layer} {tuple(s.shape[1:])} and "
                       f"teacher {teacher_layer} {tuple(t.shape[1:])} must have the same spatial size")
    return {"regressor": _linear_init(key, s.shape[-1], t.shape[-1])}

  def method(student_logits, student_feats, teacher, batch, params):
    s = pick_feature(student_feats, student_layer, "student")
    t = pick_feature(teacher[1], teacher_layer, "teacher")
    ce = hard_cross_entropy(student_logits, batch["label"])
    hint = hint_loss(_linear(params["regressor"], s), t)
    return ce_weight * ce + weight * hint, {"ce": ce, "hint": hint}

  method.init = init
  return _method(method, needs_teacher=True)


_METHODS = {"supervised": supervised, "hinton": hinton_kd, "reverse_kd": reverse_kd, "js_kd": js_kd,
            "dkd": dkd, "dist": dist_kd, "at": attention, "nst": nst, "sp": similarity_preserving,
            "rkd": rkd, "pkt": pkt, "cc": correlation_congruence, "fitnet": fitnet}


def method_names() -> list[str]:
  return sorted(_METHODS)


def make_method(name: str, **hparams) -> Method:
  """Builds a registered method by name with its hyperparameters."""
  if name not in _METHODS:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
  return _METHODS[name](**hparams)


__all__ = ["Method", "attention", "correlation_congruence", "dist_kd", "dkd", "fitnet", "hinton_kd", "js_kd", "make_method",
           "method_names", "nst", "pick_feature", "pkt", "reverse_kd", "rkd", "similarity_preserving", "supervised"]
