"""Feature- and relation-level methods: which feature loss on which named layers, plus
the learnable parts some of them train with the student."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from kdjax.losses import (activation_boundary_loss, attention_transfer_loss, correlation_congruence_loss,
                          factor_transfer_loss, fsp_loss, hard_cross_entropy, hint_loss, nst_loss,
                          pkt_loss, rkd_loss, similarity_preserving_loss, vid_loss)
from kdjax.losses.feature import common_spatial_size, match_spatial
from kdjax.methods.base import Method, as_method, pick_feature
from kdjax.methods.connectors import (batch_norm, batch_norm_init, conv, conv_init, conv_transpose, dense, dense_init,
                                       embed, normal_draws)
from kdjax.methods.schedule import check_epochs, in_init_stage, init_length, init_stage_end


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
#
# Default layers: the references tap every stage output for AT, NST, VID and AB (RepDistiller's
# feat[1:-1], mdistiller's feats[1:]), the last stage for SP and FT (feat[-2]), the second stage
# for FitNet (hint_layer=2) and the pooled vector for RKD, PKT, CC and CRD (feat[-1]). Layer names
# depend on the model: the defaults below name them on kdjax's two-stage CNNs and MLPs (block1,
# block2, pre_logits); on a three-stage CIFAR ResNet or WRN pass e.g. layers=("block1", "block2",
# "block3") for the references' choice.

def attention(*, layers=("block1", "block2"), weight: float = 1000.0, p: int = 2, ce_weight: float = 1.0) -> Method:
  """Attention transfer (Zagoruyko & Komodakis 2017) on NHWC feature maps:
  ``ce_weight·CE + weight·Σ_layers AT_p``. Logs ``ce`` and ``at``.

  ``layers`` are every stage output, as the references' (``feat[1:-1]``), on a two-stage model;
  pass ``("block1", "block2", "block3")`` on a three-stage CIFAR ResNet or WRN.

  Defaults: β=1000, p=2, ce_weight=1 (``-a 0 -b 1000``): RepDistiller ``scripts/run_cifar_distill.sh``,
  ``distiller_zoo/AT.py``, ``helper/loops.py``; mdistiller ``mdistiller/engine/cfg.py`` (``CFG.AT``).
  """
  return _feature_method("at", lambda s, t: attention_transfer_loss(s, t, p), layers=layers, weight=weight,
                         ce_weight=ce_weight)


def nst(*, layers=("block1", "block2"), weight: float = 50.0, ce_weight: float = 1.0) -> Method:
  """Neuron selectivity transfer (Huang & Wang 2017) on NHWC feature maps:
  ``ce_weight·CE + weight·Σ_layers NST``. Logs ``ce`` and ``nst``. ``layers``: every stage
  output, as :func:`attention`.

  Defaults: weight 50, ce_weight=1 (``-a 0 -b 50``): RepDistiller ``scripts/run_cifar_distill.sh``,
  ``distiller_zoo/NST.py``; mdistiller ``mdistiller/engine/cfg.py`` (``CFG.NST``).
  """
  return _feature_method("nst", nst_loss, layers=layers, weight=weight, ce_weight=ce_weight)


def similarity_preserving(*, layers=("block2",), weight: float = 3000.0, ce_weight: float = 1.0) -> Method:
  """Similarity-preserving KD (Tung & Mori 2019): ``ce_weight·CE + weight·SP``. Logs ``ce`` and
  ``sp``. RepDistiller uses the last stage's output (``feat[-2]``): ``block2`` on a two-stage
  model, pass ``("block3",)`` on a three-stage CIFAR ResNet or WRN.

  Defaults: γ=3000, ce_weight=1 (``-a 0 -b 3000``): RepDistiller ``scripts/run_cifar_distill.sh``,
  ``distiller_zoo/SP.py``, ``helper/loops.py``; mdistiller ``mdistiller/engine/cfg.py`` (``CFG.SP``).
  """
  return _feature_method("sp", similarity_preserving_loss, layers=layers, weight=weight, ce_weight=ce_weight)


def rkd(*, layers=("pre_logits",), weight: float = 1.0, distance_weight: float = 25.0,
        angle_weight: float = 50.0, ce_weight: float = 1.0) -> Method:
  """Relational KD (Park et al. 2019), distance and angle, on the penultimate embedding:
  ``ce_weight·CE + weight·(w_d·distance + w_a·angle)``. Logs ``ce`` and ``rkd``.

  Defaults: weight 1, w_d=25, w_a=50, ``pre_logits`` (``feat[-1]``): RepDistiller
  ``scripts/run_cifar_distill.sh`` (``-a 0 -b 1``), ``distiller_zoo/RKD.py``; mdistiller
  ``mdistiller/engine/cfg.py`` (``CFG.RKD``).
  """
  return _feature_method(
      "rkd", lambda s, t: rkd_loss(s, t, distance_weight=distance_weight, angle_weight=angle_weight),
      layers=layers, weight=weight, ce_weight=ce_weight)


def pkt(*, layers=("pre_logits",), weight: float = 30000.0, ce_weight: float = 1.0) -> Method:
  """Probabilistic knowledge transfer (Passalis & Tefas 2018) on the penultimate embedding:
  ``ce_weight·CE + weight·PKT``. Logs ``ce`` and ``pkt``.

  Defaults: weight 30000, ``pre_logits`` (``feat[-1]``): RepDistiller ``scripts/run_cifar_distill.sh``
  (``-a 0 -b 30000``), ``distiller_zoo/PKT.py``; mdistiller ``mdistiller/engine/cfg.py`` (``CFG.PKT``).
  """
  return _feature_method("pkt", pkt_loss, layers=layers, weight=weight, ce_weight=ce_weight)


def correlation_congruence(*, layers=("pre_logits",), weight: float = 0.02, embed_dim: int | None = 128,
                           ce_weight: float = 1.0) -> Method:
  """Correlation congruence (Peng et al., ICCV 2019), RepDistiller's loss (from the authors) on
  learnable embeddings ``e(x) = normalize(W x + b)`` of size ``embed_dim`` on the student's and the
  teacher's penultimate features (both trained with the student), then
  :func:`kdjax.losses.correlation_congruence_loss`. ``embed_dim=None`` drops the
  embeddings; the features must then have equal sizes. Logs ``ce`` and ``cc``.

  Departure from the reference: RepDistiller's ``train_student.py`` builds CC's embeddings as
  ``models/util.py``'s ``LinearEmbed`` (a linear map, no normalization), not the L2-normalized
  ``Embed`` used here (CRD's); the weight 0.02 was set for the unnormalized embeddings.

  Defaults: weight 0.02, ``embed_dim=128`` (``--feat_dim``), ``pre_logits`` (``feat[-1]``):
  RepDistiller ``scripts/run_cifar_distill.sh`` (``-a 0 -b 0.02``), ``train_student.py``,
  ``distiller_zoo/CC.py``.
  """
  layers = _layers("cc", layers)
  if embed_dim is None:
    return _feature_method("cc", correlation_congruence_loss, layers=layers, weight=weight, ce_weight=ce_weight)
  # The teacher-side embedding is learnable, so the gradient must reach it.
  loss = _feature_method("cc", functools.partial(correlation_congruence_loss, teacher_grad=True), layers=layers,
                         weight=weight, ce_weight=ce_weight)

  def init(key, student_shapes, teacher_shapes):
    params = {}
    for i, layer in enumerate(layers):
      ks, kt = jax.random.split(jax.random.fold_in(key, i))
      s, t = pick_feature(student_shapes, layer, "student"), pick_feature(teacher_shapes, layer, "teacher")
      params[layer] = {"student": dense_init(ks, _size(s), embed_dim), "teacher": dense_init(kt, _size(t), embed_dim)}
    return params

  def method(student_logits, student_feats, teacher, batch, params):
    s_feats = {l: embed(params[l]["student"], pick_feature(student_feats, l, "student")) for l in layers}
    t_feats = {l: embed(params[l]["teacher"], pick_feature(teacher[1], l, "teacher")) for l in layers}
    return loss(student_logits, s_feats, (teacher[0], t_feats), batch, {})

  return as_method(method, needs_teacher=True, init=init)


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


def _regress(params, x, *, relu: bool = True):
  """``ConvReg`` forward; ``relu=False`` is its ``use_relu=False`` (AB's connector)."""
  if "dense" in params:
    return dense(params["dense"], x)
  if "down" in params:
    y = conv(params["down"], x, stride=2, padding=1)
  elif "up" in params:
    y = conv_transpose(params["up"], x, stride=2, padding=1)
  else:
    y = conv(params["valid"], x, padding="VALID")
  y = batch_norm(params["bn"], y)
  return jax.nn.relu(y) if relu else y


def fitnet(*, student_layer: str = "block2", teacher_layer: str = "block2", weight: float = 100.0,
           ce_weight: float = 1.0) -> Method:
  """FitNets (Romero et al., ICLR 2015): a learnable regressor ``r`` maps the student's
  guided layer onto the teacher's hint layer, ``ce_weight·CE + weight·MSE(r(F^s), F^t)``,
  trained with the student in one stage (RepDistiller's β=100).

  On NHWC maps ``r`` is RepDistiller's ``ConvReg``: a 3x3 stride-2 convolution when
  the student's map is twice the teacher's, a 4x4 stride-2 transposed convolution
  when it is half, a valid convolution when it is larger, then batch norm and
  ReLU; on vectors it is a linear map. Logs ``ce`` and ``hint``.

  Defaults: β=100, ce_weight=1, the second stage on both sides (``--hint_layer 2``: ``block2``):
  RepDistiller ``scripts/run_cifar_distill.sh`` (``-a 0 -b 100``), ``train_student.py``,
  ``distiller_zoo/FitNet.py``, ``models/util.py`` (``ConvReg``); mdistiller
  ``mdistiller/engine/cfg.py`` (``CFG.FITNET``: ``HINT_LAYER 2``, ``FEAT_WEIGHT 100``).
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

  return as_method(method, needs_teacher=True, init=init)


def _pair(name: str, layer: str, student_shapes, teacher_shapes, *, maps_only: bool = False, pooled: bool = True):
  """The student's and the teacher's shapes at ``layer``: both NHWC maps (whose spatial sizes
  average pooling can match, if ``pooled``), or (unless ``maps_only``) both vectors; else a
  clear error."""
  s, t = pick_feature(student_shapes, layer, "student"), pick_feature(teacher_shapes, layer, "teacher")
  both_maps = len(s.shape) == 4 and len(t.shape) == 4
  both_vectors = len(s.shape) == 2 and len(t.shape) == 2
  if maps_only and not both_maps:
    raise ValueError(f"{name} needs NHWC feature maps: student {layer} is {tuple(s.shape[1:])}, teacher {layer} "
                     f"is {tuple(t.shape[1:])}")
  if not (both_maps or both_vectors):
    raise ValueError(f"{name}: student {layer} {tuple(s.shape[1:])} and teacher {layer} {tuple(t.shape[1:])} "
                     f"must both be NHWC maps or both vectors")
  if both_maps and pooled:
    common_spatial_size(f"{name} at {layer}", s.shape, t.shape)
  return s, t


def _jitted_init(init):
  """``init`` traced as one program: eager draws compile one kernel per parameter shape, which
  dominates a small run's start on a CPU. Shape errors still raise while tracing."""

  def wrapped(key, student_shapes, teacher_shapes):
    return jax.jit(lambda k: init(k, student_shapes, teacher_shapes))(key)

  return wrapped


# RepDistiller's two-stage methods (AB, FSP, FT) share one schedule, in epochs
# (kdjax.methods.schedule.init_length): ``init_epochs=None`` (default) is RepDistiller's 30-epoch
# init stage (train_student.py ``--init_epochs 30``, helper/pretrain.py), or its share of the run
# where the run is shorter than RepDistiller's 270 epochs (30 init + 240 main): min(30, epochs/9);
# ``N > 0`` is N epochs (N >= the run's epochs is a ValueError when the step is traced); ``0``
# trains in one stage, jointly (kdjax's form, no reference). The init stage needs the run's length
# in the batch (make_train_step(..., steps_per_epoch=, epochs=)), as DKD's ramp.
def _staged(name: str, ce, term, batch, *, init_epochs: float | None, weight: float, ce_weight: float):
  """``ce_weight·CE + weight·term`` (no init stage), or RepDistiller's two stages in one run:
  ``weight·term`` while ``epoch < init``, then ``ce_weight·CE`` alone."""
  init = init_length(name, init_epochs, batch)
  if not init:
    return ce_weight * ce + weight * term
  return jnp.where(in_init_stage(batch, init), weight * term, ce_weight * ce)


def vid(*, layers=("block1", "block2"), weight: float = 1.0, init_pred_var: float = 5.0, eps: float = 1e-5,
        ce_weight: float = 1.0) -> Method:
  r"""Variational information distillation (VID, Ahn et al., CVPR 2019), as RepDistiller's
  ``distiller_zoo/VID.py`` (from the authors' code):

  .. math::
      L = \mathrm{ce\_weight}\cdot CE + \mathrm{weight}\cdot\sum_{l}
          \operatorname{mean}\tfrac12\Big(\frac{(\mu_l(F^s_l) - F^t_l)^2}{\sigma_l^2} + \log\sigma_l^2\Big)

  (:func:`kdjax.losses.vid_loss`). Per layer, the mean ``μ`` is a regressor
  conv1x1(C_s→C_t)–ReLU–conv1x1(C_t→C_t)–ReLU–conv1x1(C_t→C_t), without biases,
  and the variance ``σ² = softplus(log_scale) + eps`` a learnable per-channel
  vector initialized to ``init_pred_var`` (5, eps 1e-5); both train with the
  student. Where the spatial sizes differ, the larger map is average-pooled onto
  the smaller (integer ratios only); on vectors the 1x1 convolutions are linear
  maps. Logs ``ce`` and ``vid``. ``layers``: every stage output, as :func:`attention`.

  Defaults: β=1, ``init_pred_var=5``, ``eps=1e-5``, every intermediate block: RepDistiller
  ``scripts/run_cifar_distill.sh`` (``-a 0 -b 1``), ``distiller_zoo/VID.py``, ``helper/loops.py``;
  mdistiller ``mdistiller/engine/cfg.py`` (``CFG.VID``).
  """
  layers = _layers("vid", layers)
  if not init_pred_var > eps:
    raise ValueError(f"VID: init_pred_var must exceed eps={eps}, got {init_pred_var}")

  def init(key, student_shapes, teacher_shapes):
    pairs = [_pair("VID", layer, student_shapes, teacher_shapes) for layer in layers]  # all checked first
    convs = [(i, o) for s, t in pairs for i, o in ((s.shape[-1], t.shape[-1]), (t.shape[-1],) * 2, (t.shape[-1],) * 2)]
    # LeCun-normal kernels, as dense_init draws them, from one draw.
    kernels = normal_draws(key, convs, [1.0 / math.sqrt(i) for i, _ in convs])
    params = {}
    for n, (layer, (_, t)) in enumerate(zip(layers, pairs)):
      params[layer] = {
          "regressor": {f"conv{j + 1}": {"kernel": kernels[3 * n + j]} for j in range(3)},  # bias-free, as RepDistiller
          # softplus(log_scale) + eps = init_pred_var, as RepDistiller's log(exp(v - eps) - 1).
          "log_scale": jnp.full((t.shape[-1],), math.log(math.expm1(init_pred_var - eps)), jnp.float32)}
    return params

  def method(student_logits, student_feats, teacher, batch, params):
    ce = hard_cross_entropy(student_logits, batch["label"])
    total = 0.0
    for layer in layers:
      s, t = pick_feature(student_feats, layer, "student"), pick_feature(teacher[1], layer, "teacher")
      if s.ndim == 4 and t.ndim == 4:
        s, t = match_spatial(f"VID at {layer}", s, t)
      p = params[layer]
      r = p["regressor"]
      mean = dense(r["conv3"], jax.nn.relu(dense(r["conv2"], jax.nn.relu(dense(r["conv1"], s)))))
      total = total + vid_loss(mean, t, jax.nn.softplus(p["log_scale"]) + eps)
    return ce_weight * ce + weight * total, {"ce": ce, "vid": total}

  return as_method(method, needs_teacher=True, init=_jitted_init(init))


def _leaky(x):
  return jax.nn.leaky_relu(x, 0.1)


def _ft_convs(c_t: int, k: int, c_s: int) -> list[tuple[int, int]]:
  """``(c_in, c_out)`` of FT's nine 3x3 convolutions at one layer: RepDistiller's
  ``Paraphraser(use_bn=False)`` encoder C_t→C_t→k→k and decoder (stride-1 transposed
  convolutions) k→k→C_t→C_t, each followed by LeakyReLU(0.1), then its
  ``Translator(use_bn=True)`` C_s→C_s→k→k, each followed by batch norm and LeakyReLU(0.1)."""
  return [(c_t, c_t), (c_t, k), (k, k), (k, k), (k, c_t), (c_t, c_t), (c_s, c_s), (c_s, k), (k, k)]


def _ft_parts(kernels):
  """The paraphraser and translator of one layer from its nine kernels. The translator's
  convolutions have no bias: batch norm removes it (torch's default biases there never
  receive a gradient)."""
  with_bias = lambda w: {"kernel": w, "bias": jnp.zeros((w.shape[-1],), jnp.float32)}
  return {"paraphraser": {"encoder": [with_bias(w) for w in kernels[0:3]],
                          "decoder": [with_bias(w) for w in kernels[3:6]]},
          "translator": {"encoder": [{"kernel": w} for w in kernels[6:9]],
                         "bn": [batch_norm_init(w.shape[-1]) for w in kernels[6:9]]}}


def _encode(params, x):
  for i, p in enumerate(params["encoder"]):
    x = conv(p, x, padding=1)
    if "bn" in params:
      x = batch_norm(params["bn"][i], x)
    x = _leaky(x)
  return x


def _decode(params, x):
  for p in params["decoder"]:
    x = _leaky(conv_transpose(p, x, stride=1, padding=1))
  return x


def factor_transfer(*, layers=("block2",), weight: float = 200.0, rate: float = 0.5, p: int | None = 2,
                    recon_weight: float = 1.0, init_epochs: float | None = None, ce_weight: float = 1.0) -> Method:
  r"""Factor transfer (FT, Kim et al., NeurIPS 2018), as RepDistiller's
  ``distiller_zoo/FT.py`` with ``models/util.py``'s ``Paraphraser`` and ``Translator``:

  .. math::
      L = \mathrm{ce\_weight}\cdot CE + \mathrm{weight}\cdot\sum_l
          \operatorname{mean}\big|\hat x(T_l(F^s_l)) - \hat x(\mathrm{sg}[P_l(F^t_l)])\big|
        + \mathrm{recon\_weight}\cdot\sum_l \operatorname{MSE}(D_l(P_l(F^t_l)), F^t_l)

  with ``x̂`` the L2-normalized factor of :func:`kdjax.losses.factor_transfer_loss`
  (RepDistiller's: the channel mean of the squared factor, ``p=2``; ``p=None``
  is the paper's normalized ``vec(F)``), ``P``/``D`` the teacher-side
  paraphraser's encoder (to ``rate·C_t`` channels, k=0.5) and decoder, ``T`` the
  student-side translator, and ``sg`` a stopped gradient. Needs NHWC maps; their
  spatial sizes may differ by an integer ratio (the larger factor is average-pooled
  onto the smaller). Logs ``ce``, ``ft`` and ``ft_recon`` in either form below.

  RepDistiller trains the paraphraser to reconstruct the teacher's features in a
  separate init stage (``init_epochs`` 30), then freezes it and trains the student
  and the translator on ``CE + 200·FT``. With an init stage (the default) this is
  one run: ``recon_weight·recon`` alone in the init stage (only the paraphraser
  learns), then ``ce_weight·CE + weight·FT`` (the paraphraser gets no gradient
  any more: the FT term stops it). With ``init_epochs=0`` the paraphraser trains
  jointly on its reconstruction loss while the student and translator chase its
  (moving) factor from the first step: ``ce_weight·CE + weight·FT +
  recon_weight·recon``. RepDistiller's init stage has its own optimizer (SGD at
  lr 0.01 for ResNet and WRN students, no schedule); here both stages share the
  run's optimizer and schedule.

  ``init_epochs``: the init stage's length, shared by AB, FSP and FT (see the note above
  ``_staged``): ``None`` (default) is RepDistiller's ``min(30, epochs / 9)``, ``N > 0`` N epochs
  (fewer than the run's), ``0`` one joint stage. Health judges divergence from the main stage on
  (``Method.main_stage``).

  Defaults: β=200, k=0.5, p=2, the last stage (``feat[-2]``: ``block2`` on a two-stage model,
  pass ``("block3",)`` on a three-stage CIFAR ResNet), recon weight 1 (the init stage's plain
  MSE), a 30-epoch init stage: RepDistiller ``scripts/run_cifar_distill.sh`` (``-a 0 -b 200``),
  ``train_student.py`` (``--init_epochs 30``), ``helper/pretrain.py``, ``distiller_zoo/FT.py``,
  ``models/util.py`` (``Paraphraser``, ``Translator``).
  """
  layers = _layers("ft", layers)
  if not 0 < rate <= 1:
    raise ValueError(f"FT: rate must be in (0, 1], got {rate}")
  check_epochs("FT", "init_epochs", init_epochs)

  def init(key, student_shapes, teacher_shapes):
    pairs = [_pair("FT", layer, student_shapes, teacher_shapes, maps_only=True) for layer in layers]
    convs = []
    for layer, (s, t) in zip(layers, pairs):
      k = int(t.shape[-1] * rate)
      if k < 1:
        raise ValueError(f"FT: rate={rate} leaves no factor channels for the teacher's {t.shape[-1]}-channel {layer}")
      convs += _ft_convs(t.shape[-1], k, s.shape[-1])
    # He-normal 3x3 kernels, as conv_init draws them, from one draw.
    kernels = normal_draws(key, [(3, 3, i, o) for i, o in convs], [math.sqrt(2.0 / (9 * i)) for i, _ in convs])
    return {layer: _ft_parts(kernels[9 * n:9 * n + 9]) for n, layer in enumerate(layers)}

  def method(student_logits, student_feats, teacher, batch, params):
    ce = hard_cross_entropy(student_logits, batch["label"])
    ft, recon = 0.0, 0.0
    for layer in layers:
      s, t = pick_feature(student_feats, layer, "student"), pick_feature(teacher[1], layer, "teacher")
      parts = params[layer]
      t_factor = _encode(parts["paraphraser"], t)
      recon = recon + hint_loss(_decode(parts["paraphraser"], t_factor), t)
      ft = ft + factor_transfer_loss(_encode(parts["translator"], s), t_factor, p)  # stops t_factor's gradient
    terms = {"ce": ce, "ft": ft, "ft_recon": recon}
    init = init_length("FT", init_epochs, batch)
    if not init:
      return ce_weight * ce + weight * ft + recon_weight * recon, terms
    return jnp.where(in_init_stage(batch, init), recon_weight * recon, ce_weight * ce + weight * ft), terms

  return as_method(method, needs_teacher=True, init=_jitted_init(init), main_stage=init_stage_end("FT", init_epochs))


def activation_boundary(*, layers=("block1", "block2"), weight: float = 1.0, margin: float = 1.0,
                        init_epochs: float | None = None, ce_weight: float = 1.0) -> Method:
  r"""Activation-boundary transfer (AB, Heo et al., AAAI 2019), as RepDistiller's
  ``distiller_zoo/AB.py`` with ``models/util.py``'s ``Connector``:

  .. math::
      \mathrm{AB} = \frac{3}{1000}\sum_{l=1}^{n} 2^{\,l-n}\sum
          (c_l(s_l) + m)^2\,\mathbb 1[c_l(s_l) > -m \wedge t_l \le 0]
        + (c_l(s_l) - m)^2\,\mathbb 1[c_l(s_l) \le m \wedge t_l > 0]

  per example (:func:`kdjax.losses.activation_boundary_loss`; the batch mean gives
  RepDistiller's ``/ bsz``), margin ``m = 1``; the last layer weighs 1, each
  earlier one half the next. The connector ``c_l`` is the identity where the
  shapes already match, else ``ConvReg`` without its ReLU (a 1x1 convolution and
  batch norm at equal spatial sizes, a stride-2 (transposed) convolution and
  batch norm across a factor 2); on vectors a linear map. It trains with the
  student.

  RepDistiller uses AB only in a 30-epoch init stage (its plain AB sum, training
  the connector and the student's feature layers), and then CE alone (its ``-b 1``
  is unused). With an init stage (the default) this is one run: ``weight·AB``
  alone in the init stage, then ``ce_weight·CE`` alone; with ``init_epochs=0`` it
  trains jointly, ``ce_weight·CE + weight·AB``. Logs ``ce`` and ``ab`` either way.
  RepDistiller's init stage has its own optimizer (no schedule) and keeps the
  student's batch-norm statistics in inference mode; here both stages share the
  run's optimizer and schedule.

  ``init_epochs``: the init stage's length, shared by AB, FSP and FT (see the note above
  ``_staged``): ``None`` (default) is RepDistiller's ``min(30, epochs / 9)``, ``N > 0`` N epochs
  (fewer than the run's), ``0`` one joint stage. Health judges divergence from the main stage on
  (``Method.main_stage``).

  RepDistiller compares pre-activations (``preact=True``); kdjax models expose
  post-ReLU features. The teacher's side of each boundary (``t > 0``) is the same
  for both, the student's connected value is a pre-activation either way.
  ``layers``: every stage output, as :func:`attention`.

  Defaults: weight 1 (the init stage's plain sum), margin 1, a 30-epoch init stage:
  RepDistiller ``scripts/run_cifar_distill.sh`` (``-a 0 -b 1``), ``train_student.py``
  (``--init_epochs 30``), ``helper/pretrain.py``, ``helper/loops.py``, ``distiller_zoo/AB.py``,
  ``models/util.py`` (``Connector``).
  """
  layers = _layers("ab", layers)
  check_epochs("AB", "init_epochs", init_epochs)
  n = len(layers)

  def init(key, student_shapes, teacher_shapes):
    pairs = [_pair("AB", layer, student_shapes, teacher_shapes, pooled=False) for layer in layers]
    params = {}
    for i, (layer, (s, t)) in enumerate(zip(layers, pairs)):
      same = tuple(s.shape[1:]) == tuple(t.shape[1:])
      params[layer] = {} if same else _regressor_init(jax.random.fold_in(key, i), s, t, "AB", layer, layer)
    return params

  def method(student_logits, student_feats, teacher, batch, params):
    ce = hard_cross_entropy(student_logits, batch["label"])
    ab = 0.0
    for i, layer in enumerate(layers):
      s, t = pick_feature(student_feats, layer, "student"), pick_feature(teacher[1], layer, "teacher")
      connected = _regress(params[layer], s, relu=False) if params[layer] else s
      ab = ab + 2.0 ** (i + 1 - n) * activation_boundary_loss(connected, t, margin)
    ab = ab * (3.0 / 1000.0)
    loss = _staged("AB", ce, ab, batch, init_epochs=init_epochs, weight=weight, ce_weight=ce_weight)
    return loss, {"ce": ce, "ab": ab}

  return as_method(method, needs_teacher=True, init=_jitted_init(init), main_stage=init_stage_end("AB", init_epochs))


def _check_fsp_shapes(layers, student, teacher) -> None:
  """Maps at every layer, and equal student and teacher channel counts (any dict of arrays or
  shapes)."""
  bad = []
  for layer in layers:
    s, t = _pair("FSP", layer, student, teacher, maps_only=True)
    if s.shape[-1] != t.shape[-1]:
      bad.append(f"{layer} has {s.shape[-1]} (student) vs {t.shape[-1]} (teacher)")
  if bad:
    raise ValueError("FSP needs equal student and teacher channel counts at every layer: " + "; ".join(bad)
                     + " (pick layers whose widths match, or another distillation method)")
  for who, shapes in (("student", student), ("teacher", teacher)):
    for a, b in zip(layers, layers[1:]):
      common_spatial_size(f"FSP between the {who}'s {a} and {b}", shapes[a].shape, shapes[b].shape)


def fsp(*, layers=("block1", "block2"), weight: float = 1.0, init_epochs: float | None = None,
        ce_weight: float = 1.0) -> Method:
  r"""Flow of solution procedure (FSP, Yim et al., CVPR 2017), as RepDistiller's
  ``distiller_zoo/FSP.py``:

  .. math::
      \mathrm{FSP} = \sum_{l} \operatorname{mean}_{jk}\big(G(F^s_l, F^s_{l+1}) - G(F^t_l, F^t_{l+1})\big)_{jk}^2,
      \quad G(F_1, F_2) = \frac{F_1^\top F_2}{HW}

  over consecutive pairs of ``layers`` (:func:`kdjax.losses.fsp_loss`), the larger
  map of a pair average-pooled onto the smaller. Needs at least two layers, all
  NHWC maps, with equal student and teacher channel counts at each (a
  ``ValueError`` names the layers that differ, at ``init``). No learnable parts.

  RepDistiller uses FSP only in a 30-epoch init stage, on its plain FSP sum
  (training the student's feature layers), and then CE alone: its ``-b 50`` is
  never used. With an init stage (the default) this is one run: ``weight·FSP``
  alone in the init stage (``weight=1``: RepDistiller's plain sum), then
  ``ce_weight·CE`` alone; with ``init_epochs=0`` it trains jointly,
  ``ce_weight·CE + weight·FSP`` (kdjax's form, no reference weight: RepDistiller's
  unused β=50 is one choice). Logs ``ce`` and ``fsp`` either way. RepDistiller's
  init stage has its own optimizer (no schedule); here both stages share the run's.

  ``init_epochs``: the init stage's length, shared by AB, FSP and FT (see the note above
  ``_staged``): ``None`` (default) is RepDistiller's ``min(30, epochs / 9)``, ``N > 0`` N epochs
  (fewer than the run's), ``0`` one joint stage. Health judges divergence from the main stage on
  (``Method.main_stage``).

  RepDistiller relates the stem and every stage (``feat[:-1]``); kdjax's two-stage CNNs have no
  stem tap, so the default relates their two stages; on a CIFAR ResNet pass e.g.
  ``("stem", "block1", "block2", "block3")`` (the channel counts must match the teacher's).

  Defaults: weight 1 (the init stage's plain sum; was 50, RepDistiller's unused ``-b``), a
  30-epoch init stage: RepDistiller ``scripts/run_cifar_distill.sh``, ``train_student.py``
  (``--init_epochs 30``), ``helper/pretrain.py``, ``helper/loops.py``, ``distiller_zoo/FSP.py``.
  """
  layers = _layers("fsp", layers)
  if len(layers) < 2:
    raise ValueError(f"FSP needs at least two layers (it relates consecutive ones), got {layers}")
  check_epochs("FSP", "init_epochs", init_epochs)

  def init(key, student_shapes, teacher_shapes):
    _check_fsp_shapes(layers, student_shapes, teacher_shapes)
    return {}

  def method(student_logits, student_feats, teacher, batch, params):
    _check_fsp_shapes(layers, student_feats, teacher[1])
    ce = hard_cross_entropy(student_logits, batch["label"])
    term = fsp_loss([student_feats[l] for l in layers], [teacher[1][l] for l in layers])
    loss = _staged("FSP", ce, term, batch, init_epochs=init_epochs, weight=weight, ce_weight=ce_weight)
    return loss, {"ce": ce, "fsp": term}

  return as_method(method, needs_teacher=True, init=init, main_stage=init_stage_end("FSP", init_epochs))

