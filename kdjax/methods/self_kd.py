"""Self-distillation methods: the student is its own teacher, so neither needs a teacher model.

- :func:`tf_kd`: Tf-KD_reg (Yuan et al., CVPR 2020), a manually designed "virtual teacher".
- :func:`byot`: "Be Your Own Teacher" (Zhang et al., ICCV 2019), shallow classifiers on
  intermediate features distilled from the model's own deepest classifier. The shallow
  classifiers are this method's learnable parts; :func:`kdjax.train.heads.evaluate_heads`
  evaluates them as early exits.

(Tf-KD_self, the other Tf-KD variant, is Hinton KD from a pre-trained copy of the student:
:func:`kdjax.methods.hinton_kd` with that copy as the teacher.)
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from kdjax.losses import check_temperature, hard_cross_entropy, kl_divergence
from kdjax.losses.self_kd import check_correct_prob, tf_kd_reg_loss
from kdjax.methods.base import Method, as_method, pick_feature
from kdjax.methods.connectors import batch_norm, batch_norm_init, conv, conv_init, dense, dense_init


def _check_unit(name: str, what: str, x) -> None:
  if isinstance(x, numbers.Real) and not isinstance(x, bool) and not 0.0 <= x <= 1.0:
    raise ValueError(f"{name}: {what} must lie in [0, 1], got {x!r}")


def _check_nonnegative(name: str, what: str, x) -> None:
  if isinstance(x, numbers.Real) and not isinstance(x, bool) and not (math.isfinite(x) and x >= 0):
    raise ValueError(f"{name}: {what} must be a finite number >= 0, got {x!r}")


# ---------------------------------------------------------------------------
# Tf-KD_reg
# ---------------------------------------------------------------------------

def tf_kd(*, alpha: float = 0.1, temperature: float = 20.0, correct_prob: float = 0.99,
          multiplier: float = 100.0) -> Method:
  r"""Teacher-free KD with a manually designed teacher, Tf-KD_reg (Yuan et al., CVPR 2020,
  "Revisiting Knowledge Distillation via Label Smoothing Regularization", section 5):

  .. math::
      L = (1 - \alpha)\,\mathrm{CE}(y, s) + \alpha\,\frac{\mathrm{multiplier}}{K}\,
          \mathrm{KL}\big(\mathrm{softmax}(p^d/T)\,\|\,\mathrm{softmax}(s)\big)

  with the virtual teacher ``p^d`` (``correct_prob`` on the label, the rest spread evenly),
  as the reference code's ``loss_kd_regularization``; see
  :func:`kdjax.losses.tf_kd_reg_loss` for the exact form and its reduction. Note that
  ``alpha`` weights the *regularizer* here, as in the reference, where
  :func:`~kdjax.methods.hinton_kd`'s ``alpha`` weights the hard-label term.

  Defaults are the reference's CIFAR-100 ResNet-18 settings
  (``experiments/base_experiments/base_resnet18/params.json``: ``reg_alpha`` 0.1,
  ``reg_temperature`` 20, ``multiplier`` 100; ``correct_prob`` 0.99 is fixed in
  ``my_loss_function.py``). Its other CIFAR-100 students use MobileNetV2: α=0.95, T=40,
  multiplier 1; ShuffleNetV2: α=0.95, T=10, multiplier 1; GoogLeNet: α=0.1, T=40,
  multiplier 50. Needs no teacher. Logs ``ce`` and ``reg`` (the regularizer with its
  multiplier, before ``α``).

  Defaults: α=0.1, T=20, multiplier 100, correct_prob 0.99: yuanli2333/Teacher-free-Knowledge-Distillation
  ``experiments/base_experiments/base_resnet18/params.json`` and ``my_loss_function.py``
  (``loss_kd_regularization``).
  """
  _check_unit("tf_kd", "alpha (the weight of the regularization term)", alpha)
  check_temperature(temperature)
  check_correct_prob(correct_prob)
  _check_nonnegative("tf_kd", "multiplier", multiplier)

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, teacher, params
    labels = batch["label"]
    ce = hard_cross_entropy(student_logits, labels)
    reg = tf_kd_reg_loss(student_logits, labels, temperature=temperature, correct_prob=correct_prob,
                         multiplier=multiplier)
    return (1.0 - alpha) * ce + alpha * reg, {"ce": ce, "reg": reg}

  return as_method(method, needs_teacher=False)


# ---------------------------------------------------------------------------
# BYOT: shallow classifiers (the method's parameters) and their loss
# ---------------------------------------------------------------------------

def _downsamplings(h: int, w: int, deep_h: int, deep_w: int) -> int:
  """How many 3x3 stride-2 convolutions (padding 1, ``h -> ceil(h/2)``) bring ``h x w`` down to
  ``deep_h x deep_w`` or below."""
  n = 0
  while h > deep_h or w > deep_w:
    h, w, n = -(-h // 2), -(-w // 2), n + 1
  return n


def _head_init(key: jax.Array, tap: str, shape, deep_hw: tuple[int, int] | None, d_feat: int,
               num_classes: int) -> dict:
  """One shallow classifier for a tap of ``shape`` (see :func:`byot`)."""
  k_body, k_cls = jax.random.split(key)
  dims = tuple(shape.shape[1:])
  if len(dims) == 1:
    return {"fc": dense_init(k_body, dims[0], d_feat), "classifier": dense_init(k_cls, d_feat, num_classes)}
  if len(dims) != 3:
    raise ValueError(f"BYOT: tap {tap!r} has shape {dims}; a shallow classifier needs an NHWC map or a vector")
  h, w, c = dims
  n = _downsamplings(h, w, *deep_hw)
  if n == 0:  # already at the deepest map's size: a 1x1 convolution to the feature width
    layers = [{"conv": conv_init(k_body, c, d_feat, 1, bias=False), "bn": batch_norm_init(d_feat)}]
  else:  # channels grow geometrically from c to d_feat, one stride-2 convolution per halving
    widths = [c] + [max(1, round(c * (d_feat / c) ** ((j + 1) / n))) for j in range(n - 1)] + [d_feat]
    keys = jax.random.split(k_body, n)
    layers = [{"conv": conv_init(keys[j], widths[j], widths[j + 1], 3, bias=False),
               "bn": batch_norm_init(widths[j + 1])} for j in range(n)]
  return {"convs": layers, "classifier": dense_init(k_cls, d_feat, num_classes)}


def _masked_batch_norm(params, x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """:func:`kdjax.methods.connectors.batch_norm`, with the statistics of the examples where
  ``mask`` is true only (padding in an evaluation batch must not shift them)."""
  if mask is None:
    return batch_norm(params, x)
  w = jnp.broadcast_to(mask.astype(jnp.float32).reshape(-1, *([1] * (x.ndim - 1))), x.shape[:-1] + (1,))
  axes = tuple(range(x.ndim - 1))
  count = jnp.maximum(jnp.sum(w, axes), 1.0)
  mean = jnp.sum(w * x, axes) / count
  var = jnp.sum(w * (x - mean) ** 2, axes) / count
  return (x - mean) * jax.lax.rsqrt(var + 1e-5) * params["scale"] + params["bias"]


def _head(params, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(F_i, logits_i)`` of one shallow classifier."""
  if "fc" in params:
    f = jax.nn.relu(dense(params["fc"], x.reshape(x.shape[0], -1)))
  else:
    for layer in params["convs"]:
      one_by_one = layer["conv"]["kernel"].shape[0] == 1
      x = conv(layer["conv"], x, stride=1 if one_by_one else 2, padding=0 if one_by_one else 1)
      x = jax.nn.relu(_masked_batch_norm(layer["bn"], x, mask))
    f = jnp.mean(x, axis=(1, 2))
  return f, dense(params["classifier"], f)


def byot(*, taps=("block1", "block2"), num_classes: int | None = None, alpha: float = 0.3,
         feature_weight: float = 0.03, temperature: float = 3.0, deepest_ce_weight: float | None = None) -> Method:
  r"""Be Your Own Teacher (Zhang et al., ICCV 2019, "Be Your Own Teacher: Improve the
  Performance of Convolutional Neural Networks via Self Distillation"), eq. 4: a shallow
  classifier on each of ``taps`` learns from the labels, from the model's own deepest
  classifier and from its deepest feature,

  .. math::
      L = w\,\mathrm{CE}(y, z_C) + \sum_{i \in \mathrm{taps}} \Big[(1-\alpha)\,\mathrm{CE}(y, z_i)
          + \alpha\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(\bar z_C/T)\,\|\,\mathrm{softmax}(z_i/T)\big)
          + \lambda\,\|F_i - \bar F_C\|_2^2\Big]

  where ``z_C`` are the student's logits (the deepest classifier), ``F_C`` its
  ``"pre_logits"`` (the deepest feature), ``z_i`` and ``F_i`` the shallow classifier's
  logits and feature, ``λ = feature_weight``, and a bar is a stop-gradient: the deepest
  classifier teaches but learns only from its own CE; each shallow classifier's three
  terms train its head and, through the tap, the backbone below it. ``w =
  deepest_ce_weight`` defaults to ``1 − α`` (the paper's eq. 4, whose sum includes the
  deepest classifier, whose KL and feature terms vanish).

  Defaults (α=0.3, λ=0.03, T=3) are those of the authors' code,
  github.com/ArchipLab-LinfengZhang/pytorch-self-distillation-final ``train.py``
  (``--loss_coefficient 0.3 --feature_loss_coefficient 0.03 --temperature 3.0``). That code
  differs in places where this follows the paper: it weights the deepest CE by 1 (pass
  ``deepest_ce_weight=1.0``), has no ``T²`` on the soft term, and its journal-version
  feature term is ``torch.dist`` (the unsquared norm over the whole batch) between a linear
  map of ``F_i`` and ``F_C``, skipping the shallowest classifier; its comments give the
  conference version's ``‖F_i − F_C‖²``, used here per example. Its soft term is the
  cross-entropy ``H(softmax(z_C/T), softmax(z_i/T))``, which differs from the KL by the
  teacher's entropy, a constant for the gradient. The PyTorch re-implementation
  github.com/luanyunteng/pytorch-be-your-own-teacher has the ``T²`` and the ``1 − α`` on
  the deepest CE, as here, but other defaults (α=0.1, feature weight 1e-6 on a batch sum).

  Shallow classifiers (:meth:`init`, sized from the student's feature shapes): on an NHWC
  tap, one 3x3 stride-2 convolution + batch norm + ReLU per halving down to the spatial
  size of the model's smallest feature map (the deepest stage; a 1x1 convolution if the
  tap is already there), widening geometrically to the width of ``"pre_logits"``, then
  global average pooling gives ``F_i`` and a linear layer the logits: the paper's
  bottleneck (its code uses separable convolutions). On a vector tap, linear + ReLU gives
  ``F_i``, then a linear layer. Batch norm uses the statistics of the current batch
  (training mode only, as :mod:`kdjax.methods.connectors`); so do the early exits in
  evaluation (:meth:`head_logits` with a ``mask``: the real examples of each evaluation
  batch), so an early exit's accuracy depends slightly on the evaluation batch size.

  Args:
    taps: the student features with a shallow classifier (``"block1"``, ...); the default
      suits a three-stage CIFAR ResNet; pass e.g. ``("block1", "block2", "block3")`` for a
      four-stage one, as the paper's ResNets.
    num_classes: the classifiers' output size (the student's number of classes); needed
      at :meth:`init`, since feature shapes do not carry it.
    alpha: weight of the soft term, ``1 − alpha`` the shallow CE's (``loss_coefficient``).
    feature_weight: ``λ`` (``feature_loss_coefficient``).
    temperature: ``T > 0``.
    deepest_ce_weight: weight of the deepest classifier's CE; ``None`` is ``1 − alpha``.

  Returns a method that needs no teacher, with ``method.init`` and
  ``method.head_logits(params, student_feats, mask=None) -> {tap: logits}`` (the early
  exits, for :func:`kdjax.train.heads.evaluate_heads`). Logs ``ce`` (the deepest
  classifier's) and, per tap, ``ce/<tap>``, ``kl/<tap>`` (before ``T²``) and
  ``feat/<tap>``.

  Defaults: α=0.3, λ=0.03, T=3: ArchipLab-LinfengZhang/pytorch-self-distillation-final
  ``train.py`` (its argparse defaults); the loss's form (``1 − α`` on the deepest CE, ``T²``,
  the squared feature distance) follows the paper's eq. 4 where that code departs, as above.
  """
  taps = (taps,) if isinstance(taps, str) else tuple(taps)
  if not taps:
    raise ValueError("BYOT: give at least one tap (a feature with a shallow classifier)")
  if len(set(taps)) != len(taps):
    raise ValueError(f"BYOT: taps must be distinct, got {taps}")
  if "pre_logits" in taps:
    raise ValueError("BYOT: 'pre_logits' is the deepest classifier's own feature (the target); tap earlier features")
  if num_classes is not None and (int(num_classes) != num_classes or num_classes < 2):
    raise ValueError(f"BYOT: num_classes must be an integer >= 2, got {num_classes!r}")
  _check_unit("BYOT", "alpha (the weight of the distillation term)", alpha)
  check_temperature(temperature)
  _check_nonnegative("BYOT", "feature_weight", feature_weight)
  if deepest_ce_weight is not None:
    _check_nonnegative("BYOT", "deepest_ce_weight", deepest_ce_weight)
  w_deep = 1.0 - alpha if deepest_ce_weight is None else deepest_ce_weight

  def init(key, student_shapes, teacher_shapes):
    del teacher_shapes
    shapes = {tap: pick_feature(student_shapes, tap, "student") for tap in taps}  # unknown taps fail here
    pre = pick_feature(student_shapes, "pre_logits", "student")
    if num_classes is None:
      raise ValueError("BYOT: give num_classes (the student's number of classes) to size the shallow classifiers")
    maps = [s.shape[1:3] for s in student_shapes.values() if len(s.shape) == 4]
    deep_hw = tuple(min(maps, key=lambda hw: hw[0] * hw[1])) if maps else None
    d_feat = math.prod(pre.shape[1:])

    def build(k):
      return {tap: _head_init(jax.random.fold_in(k, i), tap, shapes[tap], deep_hw, d_feat, int(num_classes))
              for i, tap in enumerate(taps)}

    return jax.jit(build)(key)  # one program: eager draws compile one kernel per shape on a CPU

  def heads(params, student_feats, mask=None):
    return {tap: _head(params[tap], pick_feature(student_feats, tap, "student"), mask) for tap in taps}

  def head_logits(params, student_feats, mask=None):
    """``{tap: logits}`` of the shallow classifiers; batch-norm statistics over the examples where
    ``mask`` (``[B]`` bool) is true, or the whole batch."""
    return {tap: z for tap, (_, z) in heads(params, student_feats, mask).items()}

  def method(student_logits, student_feats, teacher, batch, params):
    del teacher
    labels = batch["label"]
    ce = hard_cross_entropy(student_logits, labels)
    target_logits = jax.lax.stop_gradient(student_logits)
    pre = pick_feature(student_feats, "pre_logits", "student")
    target_feat = jax.lax.stop_gradient(pre.reshape(pre.shape[0], -1).astype(jnp.float32))
    total, terms = w_deep * ce, {"ce": ce}
    for tap, (f, z) in heads(params, student_feats).items():
      if z.shape[-1] != student_logits.shape[-1]:
        raise ValueError(f"BYOT: the shallow classifier on {tap!r} has {z.shape[-1]} classes, the student "
                         f"{student_logits.shape[-1]}: give num_classes={student_logits.shape[-1]}")
      ce_i = hard_cross_entropy(z, labels)
      kl_i = kl_divergence(z, target_logits, temperature)
      feat_i = jnp.sum((f - target_feat) ** 2, axis=-1)
      total = total + (1.0 - alpha) * ce_i + alpha * temperature**2 * kl_i + feature_weight * feat_i
      terms.update({f"ce/{tap}": ce_i, f"kl/{tap}": kl_i, f"feat/{tap}": feat_i})
    return total, terms

  return as_method(method, needs_teacher=False, init=init, head_logits=head_logits)

