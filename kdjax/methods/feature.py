"""Feature- and relation-level methods: which feature loss on which named layers, plus
the learnable parts some of them train with the student."""

from __future__ import annotations

import math

import jax

from kdjax.losses import (attention_transfer_loss, l2_normalize, correlation_congruence_loss, hard_cross_entropy, hint_loss,
                          nst_loss, pkt_loss, rkd_loss, similarity_preserving_loss)
from kdjax.methods.base import Method, as_method, pick_feature
from kdjax.methods.connectors import (batch_norm, batch_norm_init, conv, conv_init, conv_transpose, dense,
                                       dense_init)


def _layers(term: str, layers) -> tuple[str, ...]:
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  if not layers:
    raise ValueError(f"{term}: give at least one feature layer")
  return layers


def _feature_method(term: str, loss_fn, *, layers, weight: float, ce_weight: float) -> Method:
  """``ce_weight·CE + weight·Σ_layers loss_fn(student_feat, teacher_feat)``."""
  layers = _layers(term, layers)

  def method(student_logits, student_feats, teacher, batch, params):
    teacher_feats = teacher[1]
    ce = hard_cross_entropy(student_logits, batch["label"])
    total = 0.0
    for layer in layers:
      total = total + loss_fn(pick_feature(student_feats, layer, "student"),
                              pick_feature(teacher_feats, layer, "teacher"))
    return ce_weight * ce + weight * total, {"ce": ce, term: total}

  return as_method(method, needs_teacher=True)


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


def correlation_congruence(*, layers=("pre_logits",), weight: float = 0.02, embed_dim: int | None = 128,
                           ce_weight: float = 1.0) -> Method:
  """Correlation congruence (Peng et al., ICCV 2019), RepDistiller's form: learnable
  embeddings ``e(x) = normalize(W x + b)`` of size ``embed_dim`` on the student's and the
  teacher's penultimate features (both trained with the student), then
  :func:`kdjax.losses.correlation_congruence_loss`. ``embed_dim=None`` drops the
  embeddings; the features must then have equal sizes."""
  layers = _layers("cc", layers)
  loss = _feature_method("cc", correlation_congruence_loss, layers=layers, weight=weight, ce_weight=ce_weight)
  if embed_dim is None:
    return loss

  def init(key, student_shapes, teacher_shapes):
    params = {}
    for i, layer in enumerate(layers):
      ks, kt = jax.random.split(jax.random.fold_in(key, i))
      s, t = pick_feature(student_shapes, layer, "student"), pick_feature(teacher_shapes, layer, "teacher")
      params[layer] = {"student": dense_init(ks, _size(s), embed_dim), "teacher": dense_init(kt, _size(t), embed_dim)}
    return params

  def method(student_logits, student_feats, teacher, batch, params):
    embed = lambda p, x: l2_normalize(dense(p, x.reshape(x.shape[0], -1)))
    s_feats = {l: embed(params[l]["student"], pick_feature(student_feats, l, "student")) for l in layers}
    t_feats = {l: embed(params[l]["teacher"], pick_feature(teacher[1], l, "teacher")) for l in layers}
    return loss(student_logits, s_feats, (teacher[0], t_feats), batch, {})

  method.init = init
  return as_method(method, needs_teacher=True)


def _size(shape) -> int:
  return math.prod(shape.shape[1:])


def _regressor_init(key, s, t, name: str, s_layer: str, t_layer: str):
  """RepDistiller's ``ConvReg`` (conv, batch norm, ReLU) between NHWC maps of any spatial
  sizes it can bridge, or a linear map between vectors."""
  if len(s.shape) == 2 and len(t.shape) == 2:
    return {"dense": dense_init(key, s.shape[1], t.shape[1])}
  if len(s.shape) != 4 or len(t.shape) != 4:
    raise ValueError(f"{name}: student {s_layer} {tuple(s.shape[1:])} and teacher {t_layer} "
                     f"{tuple(t.shape[1:])} must both be NHWC maps or both vectors")
  (sh, sw, sc), (th, tw, tc) = s.shape[1:], t.shape[1:]
  if sh == 2 * th and sw == 2 * tw:
    kind, kernel = "down", 3
  elif 2 * sh == th and 2 * sw == tw:
    kind, kernel = "up", 4
  elif sh >= th and sw >= tw:
    kind, kernel = "valid", (1 + sh - th, 1 + sw - tw)
  else:
    raise ValueError(f"{name}: no regressor maps the student's {sh}x{sw} {s_layer} onto the teacher's "
                     f"{th}x{tw} {t_layer} (it bridges 2x down, 2x up, or a larger student map)")
  return {kind: conv_init(key, sc, tc, kernel), "bn": batch_norm_init(tc)}


def _regress(params, x):
  if "dense" in params:
    return dense(params["dense"], x)
  if "down" in params:
    y = conv(params["down"], x, stride=2, padding=1)
  elif "up" in params:
    y = conv_transpose(params["up"], x, stride=2, padding=1)
  else:
    y = conv(params["valid"], x, padding="VALID")
  return jax.nn.relu(batch_norm(params["bn"], y))


def fitnet(*, student_layer: str = "block2", teacher_layer: str = "block2", weight: float = 100.0,
           ce_weight: float = 1.0) -> Method:
  """FitNets (Romero et al., ICLR 2015): a learnable regressor ``r`` maps the student's
  guided layer onto the teacher's hint layer, ``ce_weight·CE + weight·MSE(r(F^s), F^t)``,
  trained with the student in one stage (RepDistiller's β=100).

  On NHWC maps ``r`` is RepDistiller's ``ConvReg``: a 3x3 stride-2 convolution when
  the student's map is twice the teacher's, a 4x4 stride-2 transposed convolution
  when it is half, a valid convolution when it is larger, then batch norm and
  ReLU; on vectors it is a linear map. Logs ``ce`` and ``hint``.
  """

  def init(key, student_shapes, teacher_shapes):
    s = pick_feature(student_shapes, student_layer, "student")
    t = pick_feature(teacher_shapes, teacher_layer, "teacher")
    return {"regressor": _regressor_init(key, s, t, "FitNet", student_layer, teacher_layer)}

  def method(student_logits, student_feats, teacher, batch, params):
    s = pick_feature(student_feats, student_layer, "student")
    t = pick_feature(teacher[1], teacher_layer, "teacher")
    ce = hard_cross_entropy(student_logits, batch["label"])
    hint = hint_loss(_regress(params["regressor"], s), t)
    return ce_weight * ce + weight * hint, {"ce": ce, "hint": hint}

  method.init = init
  return as_method(method, needs_teacher=True)


METHODS = {"at": attention, "nst": nst, "sp": similarity_preserving, "rkd": rkd, "pkt": pkt,
           "cc": correlation_congruence, "fitnet": fitnet}
