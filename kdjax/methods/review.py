"""ReviewKD (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review",
CVPR 2021), following mdistiller's ``mdistiller/distillers/ReviewKD.py``: the
student's features are reviewed from deep to shallow by attention-based fusion
(ABF) modules, and each fused map is matched to the teacher's map of the same
level by the hierarchical context loss (:func:`kdjax.losses.hcl_loss`).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from kdjax.losses import hard_cross_entropy
from kdjax.losses.review import hcl_loss
from kdjax.methods.base import Method, as_method, pick_feature
from kdjax.methods.connectors import batch_norm, batch_norm_init, conv
from kdjax.methods.schedule import check_epochs, warmup_length, warmup_weight


def _as_map(x):
  """NHWC maps as they are; ``[B, C]`` vectors (the pooled ``pre_logits``) as ``[B, 1, 1, C]``
  maps, as mdistiller feeds its ``pooled_feat``. Works on arrays and shape structs."""
  if len(x.shape) == 2:
    return x.reshape(x.shape[0], 1, 1, x.shape[1]) if hasattr(x, "reshape") else \
        jax.ShapeDtypeStruct((x.shape[0], 1, 1, x.shape[1]), x.dtype)
  if len(x.shape) == 4:
    return x
  raise ValueError(f"ReviewKD needs NHWC maps or [B, C] vectors, got shape {tuple(x.shape)}")


def _levels(layers, teacher_layers, student_feats, teacher_feats):
  """The student's and teacher's maps per level, shallow to deep, checked to pair up."""
  s = [_as_map(pick_feature(student_feats, l, "student")) for l in layers]
  t = [_as_map(pick_feature(teacher_feats, l, "teacher")) for l in teacher_layers]
  for sl, tl, a, b in zip(layers, teacher_layers, s, t):
    if a.shape[1:3] != b.shape[1:3]:
      raise ValueError(f"ReviewKD needs equal spatial sizes per level: student {sl} is {a.shape[1]}x{a.shape[2]}, "
                       f"teacher {tl} is {b.shape[1]}x{b.shape[2]} (pick layers whose sizes match)")
  return s, t


def _abf_init(u, c_in: int, mid: int, c_out: int, fuse: bool):
  """mdistiller's ``ABF`` from uniform draws ``u`` in ``[−1, 1]`` (consumed in order):
  conv1 (1x1, no bias) + BN to ``mid``; conv2 (3x3, no bias) + BN to the teacher's
  ``c_out``; with ``fuse``, att_conv (1x1 with bias) from the concatenation
  ``[x, residual]`` to two attention maps. Kernels follow torch's
  ``kaiming_uniform_``, ``U(±gain·sqrt(3/fan_in))``: ``a = 1`` (gain 1) for conv1
  and conv2 as mdistiller sets, torch's default ``a = √5`` (bound ``1/sqrt(fan_in)``,
  also the bias's) for att_conv."""
  def draw(shape, bound):
    return next(u).reshape(shape) * bound

  params = {"conv1": {"kernel": draw((1, 1, c_in, mid), math.sqrt(3.0 / c_in))}, "bn1": batch_norm_init(mid),
            "conv2": {"kernel": draw((3, 3, mid, c_out), math.sqrt(3.0 / (9 * mid)))}, "bn2": batch_norm_init(c_out)}
  if fuse:
    bound = 1.0 / math.sqrt(2 * mid)
    params["att"] = {"kernel": draw((1, 1, 2 * mid, 2), bound), "bias": draw((2,), bound)}
  return params


def _abf_sizes(c_in: int, mid: int, c_out: int, fuse: bool) -> list[int]:
  """Sizes of the tensors :func:`_abf_init` draws, in order."""
  return [c_in * mid, 9 * mid * c_out] + ([4 * mid, 2] if fuse else [])


def nearest_resize(x: jax.Array, height: int, width: int) -> jax.Array:
  """torch's ``F.interpolate(mode="nearest")`` on NHWC: output ``i`` takes input
  ``floor(i·in/out)``."""
  h, w = x.shape[1:3]
  rows = (jnp.arange(height) * h) // height
  cols = (jnp.arange(width) * w) // width
  return x[:, rows][:, :, cols]


def _abf(params, x, residual):
  """``(output, fused)``: the fused map (mid channels) feeds the next, shallower level."""
  x = batch_norm(params["bn1"], conv(params["conv1"], x))
  if residual is not None:
    residual = nearest_resize(residual, x.shape[1], x.shape[2])
    z = jax.nn.sigmoid(conv(params["att"], jnp.concatenate([x, residual], axis=-1)))
    x = x * z[..., 0:1] + residual * z[..., 1:2]
  return batch_norm(params["bn2"], conv(params["conv2"], x)), x


def reviewkd(*, layers=("block1", "block2", "pre_logits"), teacher_layers=None, weight: float = 5.0,
             ce_weight: float = 1.0, warmup_epochs: float | None = None, max_mid_channels: int = 512) -> Method:
  r"""ReviewKD (Chen et al., CVPR 2021) as in mdistiller.

  ``layers`` are the student's taps from shallow to deep (``teacher_layers``
  the teacher's, the same names by default); a ``[B, C]`` tap such as the
  pooled ``"pre_logits"`` is a ``1×1`` map, as mdistiller's ``pooled_feat``.
  With ``F^s_1 … F^s_n`` the student's maps, the review path runs from deep
  to shallow through one ABF per level:

  .. math::
      (O_n, R_n) = \mathrm{ABF}_n(F^s_n),\quad
      (O_j, R_j) = \mathrm{ABF}_j(F^s_j, R_{j+1}),\ j = n-1, …, 1

  where ``ABF`` projects ``F^s_j`` to ``mid = min(512, C^s_n)`` channels
  (1x1 conv + BN), fuses it with the nearest-upsampled residual ``R_{j+1}``
  by two sigmoid attention maps ``a = σ(conv_{1×1}[x, R])``,
  ``R_j = x·a_0 + R·a_1``, and maps ``R_j`` to the teacher's channels
  (3x3 conv + BN) as ``O_j``. The loss is

  .. math::
      L = ce\_weight·CE + weight·w(epoch)·\sum_j \mathrm{HCL}(O_j, F^t_j)

  with :func:`kdjax.losses.hcl_level_loss` per level. Logs ``ce`` and
  ``reviewkd`` (the unweighted HCL sum).

  ``w`` is the reference's linear warm-up ``min(epoch / warmup, 1)``, in epochs,
  as DKD's (:func:`kdjax.methods.dkd`): mdistiller's 1-based epoch counter gives
  the k-th epoch ``min(k / warmup, 1)`` (the authors' ``CIFAR-100/train.py``
  counts from 0, one epoch later: ``min(1, epoch / 20)`` with ``epoch = 0`` first).
  ``warmup_epochs``: ``None`` (default) is the reference's 20 epochs, or the whole
  run where the run is shorter, ``min(20, epochs)``; ``N > 0`` is N epochs (longer
  than the run is a ValueError when the step is traced, naming both numbers and
  the fix ``--set method.warmup_epochs=N``); ``0`` turns the ramp off. A ramp needs
  the run's length (``make_train_step(..., steps_per_epoch=, epochs=)``; ``distill``,
  ``train_student`` and sweeps do), else the step fails with a ValueError saying
  so. On ImageNet the references use 1 warm-up epoch and ``weight`` 1
  (ResNet-34→18) or 8 (ResNet-50→MobileNetV1); the authors' other CIFAR-100 pairs
  use 5 (wrn_40_2→wrn_16_2/wrn_40_1/ShuffleV1, resnet32x4→ShuffleV1), 8
  (resnet32x4→ShuffleV2), 0.6 (resnet56→resnet20) and 1 (resnet110→resnet32).

  Student and teacher maps must have equal spatial sizes per level (a
  ``ValueError`` otherwise); mdistiller would instead resize the fused map to
  the teacher's size (its ``out_shapes``). mdistiller taps the teacher's
  pre-activation features; kdjax uses whatever the named taps expose. The ABF connectors are trained
  with the student; their batch norms always use batch statistics. ``layers``:
  every stage output and the pooled vector, as the references', on kdjax's
  two-stage CNNs; pass ``("block1", "block2", "block3", "pre_logits")`` on a
  three-stage CIFAR ResNet or WRN.

  Defaults: weight 5 (was 1, mdistiller's ``cfg.py`` default, which no CIFAR-100
  config uses), ce_weight 1, warm-up 20 epochs, ``mid = min(512, C)``: mdistiller
  ``configs/cifar100/reviewkd.yaml`` (resnet32x4→resnet8x4, ``REVIEWKD_WEIGHT: 5.0``),
  ``mdistiller/engine/cfg.py`` (``CFG.REVIEWKD``: ``WARMUP_EPOCHS 20``,
  ``MAX_MID_CHANNEL 512``), ``mdistiller/distillers/ReviewKD.py``; the authors'
  dvlab-research/ReviewKD ``CIFAR-100/script/reviewKD.sh`` (``--kd-loss-weight 5.0``)
  and ``CIFAR-100/train.py`` (``--kd-warm-up 20``).
  """
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  teacher_layers = layers if teacher_layers is None else (
      (teacher_layers,) if isinstance(teacher_layers, str) else tuple(teacher_layers))
  if not layers:
    raise ValueError("reviewkd: give at least one feature layer")
  if len(layers) != len(teacher_layers):
    raise ValueError(f"reviewkd: {len(layers)} student layers {layers} but {len(teacher_layers)} teacher "
                     f"layers {teacher_layers}; give one teacher layer per student layer")
  if weight < 0 or ce_weight < 0 or max_mid_channels < 1:
    raise ValueError(f"reviewkd: weight and ce_weight must be >= 0 and max_mid_channels >= 1, "
                     f"got {weight}, {ce_weight} and {max_mid_channels}")
  check_epochs("reviewkd", "warmup_epochs", warmup_epochs)

  def init(key, student_shapes, teacher_shapes):
    s, t = _levels(layers, teacher_layers, student_shapes, teacher_shapes)
    mid = min(max_mid_channels, s[-1].shape[-1])
    levels = [(a.shape[-1], mid, b.shape[-1], i < len(s) - 1) for i, (a, b) in enumerate(zip(s, t))]
    sizes = [n for level in levels for n in _abf_sizes(*level)]

    def draw(key):  # one uniform draw, split up: one small compile instead of one per shape
      flat = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
      u = iter(jnp.split(flat, list(itertools.accumulate(sizes))[:-1]))
      return {"abf": [_abf_init(u, *level) for level in levels]}

    return jax.jit(draw)(key)

  def method(student_logits, student_feats, teacher, batch, params):
    ramp = warmup_weight(batch, warmup_length("reviewkd", warmup_epochs, 20.0, batch))
    s, t = _levels(layers, teacher_layers, student_feats, teacher[1])
    abfs = params["abf"]
    outputs, residual = [None] * len(s), None
    for j in reversed(range(len(s))):
      outputs[j], residual = _abf(abfs[j], s[j].astype(jnp.float32), residual)
    hcl = hcl_loss(outputs, t)
    ce = hard_cross_entropy(student_logits, batch["label"])
    return ce_weight * ce + weight * ramp * hcl, {"ce": ce, "reviewkd": hcl}

  return as_method(method, needs_teacher=True, init=init)

