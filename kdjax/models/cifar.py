"""The CIFAR model zoo of RepDistiller (Tian et al. 2020, github.com/HobbitLong/RepDistiller, ``models/``).

Every model returns ``(logits, feats)``; ``feats`` holds the taps RepDistiller's
``is_feat=True`` returns (``preact=False``), under common names:

- ``"stem"``: the first layer's output (RepDistiller's ``f0``);
- ``"block1"``, ``"block2"``, ... in order of depth: the stage outputs (``f1``, ``f2``, ...);
- ``"pre_logits"``: the globally average-pooled vector fed to the classifier (RepDistiller's last tap).

Convolutions are initialised as RepDistiller's (He-normal, fan-out), padded
symmetrically as PyTorch's, and every BatchNorm has PyTorch's defaults (flax
momentum 0.9 = torch 0.1, epsilon 1e-5): batch statistics with ``train=True``
(updated in the returned state), running averages with ``train=False``. All
models end in global average pooling, so they accept any image size that their
total stride (``TOTAL_STRIDE``) divides; RepDistiller's fixed-size pools equal a
global pool on 32x32 images.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.models.resnet import BasicBlock, batch_norm, bn, classify_stages, conv, global_avg_pool, make_stage

# Total stride of each family: H and W of the input must be multiples of it.
TOTAL_STRIDE = {"resnet": 4, "wrn": 4, "vgg": 8, "mobilenet": 16, "shufflenet": 8}


# --------------------------------------------------------------------------------------------
# ResNet for CIFAR (He et al. 2016, Sec. 4.2), RepDistiller's models/resnet.py.


class CifarResNet(nnx.Module):
  """He et al. (2016)'s CIFAR ResNet: a 3x3 stem, three stages of ``(depth - 2) / 6``
  BasicBlocks (strides 1, 2, 2) with ``filters[1:]`` channels, global pooling, linear.

  Taps: ``stem`` (stem conv-BN-ReLU), ``block1``..``block3`` (each stage's output after
  its last ReLU; strides 1, 2, 4), ``pre_logits``.
  """

  def __init__(self, depth: int, filters: Sequence[int], num_classes: int, *, in_channels: int = 3,
               rngs: nnx.Rngs):
    if (depth - 2) % 6:
      raise ValueError(f"a CIFAR ResNet with BasicBlocks has depth 6n+2, got {depth}")
    n = (depth - 2) // 6
    self.conv1 = conv(in_channels, filters[0], 3, rngs=rngs)
    self.bn1 = batch_norm(filters[0], rngs=rngs)
    stages, ch = [], filters[0]
    for planes, stride in zip(filters[1:], (1, 2, 2)):
      stage, ch = make_stage(BasicBlock, ch, planes, n, stride, rngs=rngs)
      stages.append(stage)
    self.stages = nnx.List(stages)
    self.fc = nnx.Linear(ch, num_classes, rngs=rngs)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    x = jax.nn.relu(bn(self.bn1, self.conv1(x_BxHxWxC), train))
    feats = {"stem": x}
    return classify_stages(self.stages, self.fc, x, feats, train)


# --------------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis 2016), RepDistiller's models/wrn.py.


class _WideBlock(nnx.Module):
  """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the input
  (or a 1x1 projection of the activated input where the width changes)."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, dropout_rate: float, *, rngs: nnx.Rngs):
    self.bn1 = batch_norm(in_ch, rngs=rngs)
    self.conv1 = conv(in_ch, out_ch, 3, stride=stride, rngs=rngs)
    self.bn2 = batch_norm(out_ch, rngs=rngs)
    self.conv2 = conv(out_ch, out_ch, 3, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)
    self.equal_in_out = in_ch == out_ch
    if self.equal_in_out and stride != 1:
      raise ValueError("a wide-ResNet block that keeps the width cannot be strided")
    self.shortcut = None if self.equal_in_out else conv(in_ch, out_ch, 1, stride=stride, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool, key: jax.Array | None) -> jax.Array:
    act = jax.nn.relu(bn(self.bn1, x, train))
    out = jax.nn.relu(bn(self.bn2, self.conv1(act), train))
    out = self.dropout(out, deterministic=not train, rngs=key)
    out = self.conv2(out)
    return out + (x if self.equal_in_out else self.shortcut(act))


class WideResNet(nnx.Module):
  """WRN-``depth``-``widen``: a 3x3 stem (16 channels), three stages of ``(depth - 4) / 6``
  pre-activation blocks with 16k, 32k, 64k channels (strides 1, 2, 2), BN-ReLU, global pooling.

  Taps (as RepDistiller's): ``stem`` (the stem conv), ``block1``..``block3`` (each stage's
  output, the residual sum before the next BN-ReLU), ``pre_logits`` (after the final BN-ReLU
  and pooling).
  """

  def __init__(self, depth: int, widen: int, num_classes: int, *, dropout_rate: float = 0.0,
               in_channels: int = 3, rngs: nnx.Rngs):
    if (depth - 4) % 6:
      raise ValueError(f"a wide ResNet has depth 6n+4, got {depth}")
    n = (depth - 4) // 6
    channels = (16, 16 * widen, 32 * widen, 64 * widen)
    self.conv1 = conv(in_channels, channels[0], 3, rngs=rngs)
    stages, ch = [], channels[0]
    for out_ch, stride in zip(channels[1:], (1, 2, 2)):
      stages.append(nnx.List([_WideBlock(ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, dropout_rate,
                                         rngs=rngs) for i in range(n)]))
      ch = out_ch
    self.stages = nnx.List(stages)
    self.bn1 = batch_norm(ch, rngs=rngs)
    self.fc = nnx.Linear(ch, num_classes, rngs=rngs)
    self.uses_dropout = dropout_rate > 0

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    x = self.conv1(x_BxHxWxC)
    feats = {"stem": x}
    key = rngs if (train and self.uses_dropout) else None
    for i, stage in enumerate(self.stages):
      for block in stage:
        sub = None
        if key is not None:
          key, sub = jax.random.split(key)
        x = block(x, train, sub)
      feats[f"block{i + 1}"] = x
    pre = global_avg_pool(jax.nn.relu(bn(self.bn1, x, train)))
    feats["pre_logits"] = pre
    return self.fc(pre), feats


# --------------------------------------------------------------------------------------------
# VGG with BatchNorm (Simonyan & Zisserman 2015), RepDistiller's models/vgg.py (FC layers removed).

VGG_CFG = {
    "S": ((64,), (128,), (256,), (512,), (512,)),  # vgg8
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),  # vgg13
}


class VGG(nnx.Module):
  """Five groups of conv3x3(+bias)-BN-ReLU layers, 2x2 max-pools after groups 0, 1, 2 (and
  after group 3 for 64-pixel-high images, as RepDistiller), global pooling, one linear layer.

  Taps: ``stem`` (group 0's output), ``block1``..``block4`` (groups 1-4, after their last
  ReLU, before pooling), ``pre_logits``.
  """

  def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int, *, in_channels: int = 3,
               rngs: nnx.Rngs):
    groups, ch = [], in_channels
    for widths in cfg:
      layers = []
      for w in widths:
        layers.append(nnx.List([conv(ch, w, 3, bias=True, rngs=rngs), batch_norm(w, rngs=rngs)]))
        ch = w
      groups.append(nnx.List(layers))
    self.groups = nnx.List(groups)
    self.classifier = nnx.Linear(ch, num_classes, rngs=rngs)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    h = x_BxHxWxC.shape[1]
    x, feats = x_BxHxWxC, {}
    for g, layers in enumerate(self.groups):
      if g in (1, 2, 3) or (g == 4 and h == 64):
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      for conv_layer, bn_layer in layers:
        x = jax.nn.relu(bn(bn_layer, conv_layer(x), train))
      feats["stem" if g == 0 else f"block{g}"] = x
    pre = global_avg_pool(x)
    feats["pre_logits"] = pre
    return self.classifier(pre), feats


# --------------------------------------------------------------------------------------------
# MobileNetV2 (Sandler et al. 2018), RepDistiller's models/mobilenetv2.py.


class _InvertedResidual(nnx.Module):
  """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 linear projection-BN; residual when shapes
  match. (As RepDistiller's, the expansion conv exists even for expansion 1.)"""

  def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int, *, rngs: nnx.Rngs):
    hidden = in_ch * expansion
    self.conv1 = conv(in_ch, hidden, 1, rngs=rngs)
    self.bn1 = batch_norm(hidden, rngs=rngs)
    self.conv2 = conv(hidden, hidden, 3, stride=stride, groups=hidden, rngs=rngs)
    self.bn2 = batch_norm(hidden, rngs=rngs)
    self.conv3 = conv(hidden, out_ch, 1, rngs=rngs)
    self.bn3 = batch_norm(out_ch, rngs=rngs)
    self.residual = stride == 1 and in_ch == out_ch

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = jax.nn.relu(bn(self.bn1, self.conv1(x), train))
    out = jax.nn.relu(bn(self.bn2, self.conv2(out), train))
    out = bn(self.bn3, self.conv3(out), train)
    return x + out if self.residual else out


class MobileNetV2(nnx.Module):
  """MobileNetV2 for 32x32 images (total stride 16): a 3x3 stride-2 stem, seven groups of
  inverted residuals (t, c, n, s) = (1,16,1,1), (t,24,2,1), (t,32,3,2), (t,64,4,2), (t,96,3,1),
  (t,160,3,2), (t,320,1,1) with widths scaled by ``width_mult``, a 1x1 conv to 1280 channels,
  global pooling, linear. RepDistiller's ``mobile_half`` is ``expansion=6, width_mult=0.5``.

  Taps (as RepDistiller's): ``stem``, ``block1`` (after group 1), ``block2`` (group 2),
  ``block3`` (group 4), ``block4`` (group 6; these are linear-bottleneck outputs, with no
  ReLU), ``pre_logits`` (the pooled 1280-vector).
  """

  SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
             (None, 160, 3, 2), (None, 320, 1, 1))
  TAPS = {1: "block1", 2: "block2", 4: "block3", 6: "block4"}

  def __init__(self, num_classes: int, *, expansion: int = 6, width_mult: float = 0.5, in_channels: int = 3,
               rngs: nnx.Rngs):
    ch = int(32 * width_mult)
    self.conv1 = conv(in_channels, ch, 3, stride=2, rngs=rngs)
    self.bn1 = batch_norm(ch, rngs=rngs)
    groups = []
    for t, c, n, s in self.SETTING:
      out_ch = int(c * width_mult)
      blocks = []
      for i in range(n):
        blocks.append(_InvertedResidual(ch, out_ch, s if i == 0 else 1, expansion if t is None else t, rngs=rngs))
        ch = out_ch
      groups.append(nnx.List(blocks))
    self.groups = nnx.List(groups)
    last = int(1280 * width_mult) if width_mult > 1.0 else 1280
    self.conv2 = conv(ch, last, 1, rngs=rngs)
    self.bn2 = batch_norm(last, rngs=rngs)
    self.classifier = nnx.Linear(last, num_classes, rngs=rngs)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    x = jax.nn.relu(bn(self.bn1, self.conv1(x_BxHxWxC), train))
    feats = {"stem": x}
    for g, blocks in enumerate(self.groups):
      for block in blocks:
        x = block(x, train)
      if g in self.TAPS:
        feats[self.TAPS[g]] = x
    x = jax.nn.relu(bn(self.bn2, self.conv2(x), train))
    pre = global_avg_pool(x)
    feats["pre_logits"] = pre
    return self.classifier(pre), feats


# --------------------------------------------------------------------------------------------
# ShuffleNet v1 (Zhang et al. 2018) and v2 (Ma et al. 2018), RepDistiller's ShuffleNetv1.py / v2.py.


def channel_shuffle(x_BxHxWxC: jax.Array, groups: int) -> jax.Array:
  """torch's ``view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)`` in NHWC."""
  b, h, w, c = x_BxHxWxC.shape
  return x_BxHxWxC.reshape(b, h, w, groups, c // groups).swapaxes(3, 4).reshape(b, h, w, c)


class _ShuffleV1Block(nnx.Module):
  """Grouped 1x1 (ungrouped in the first block) - shuffle - 3x3 depthwise - grouped 1x1; strided
  blocks concatenate a 3x3 average-pooled shortcut, others add the input; then ReLU."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first: bool, *, rngs: nnx.Rngs):
    mid = out_ch // 4
    self.g1 = 1 if first else groups
    self.conv1 = conv(in_ch, mid, 1, groups=self.g1, rngs=rngs)
    self.bn1 = batch_norm(mid, rngs=rngs)
    self.conv2 = conv(mid, mid, 3, stride=stride, groups=mid, rngs=rngs)
    self.bn2 = batch_norm(mid, rngs=rngs)
    self.conv3 = conv(mid, out_ch, 1, groups=groups, rngs=rngs)
    self.bn3 = batch_norm(out_ch, rngs=rngs)
    self.stride = stride

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = jax.nn.relu(bn(self.bn1, self.conv1(x), train))
    if self.g1 > 1:
      out = channel_shuffle(out, self.g1)
    out = jax.nn.relu(bn(self.bn2, self.conv2(out), train))
    out = bn(self.bn3, self.conv3(out), train)
    if self.stride == 2:
      # torch's AvgPool2d(3, stride=2, padding=1) counts the padding.
      res = nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
      return jax.nn.relu(jnp.concatenate([out, res], axis=-1))
    return jax.nn.relu(out + x)


class ShuffleNetV1(nnx.Module):
  """ShuffleNet v1 for CIFAR: a 1x1 stem (24 channels), three stages of bottlenecks (the first
  strided, concatenating), global pooling, linear. RepDistiller's ``ShuffleV1``: groups 3,
  widths (240, 480, 960), blocks (4, 8, 4); total stride 8.

  Taps: ``stem``, ``block1``..``block3`` (each stage's output after its last ReLU), ``pre_logits``.
  """

  def __init__(self, num_classes: int, *, widths=(240, 480, 960), blocks=(4, 8, 4), groups: int = 3,
               in_channels: int = 3, rngs: nnx.Rngs):
    self.conv1 = conv(in_channels, 24, 1, rngs=rngs)
    self.bn1 = batch_norm(24, rngs=rngs)
    stages, ch = [], 24
    for s, (width, n) in enumerate(zip(widths, blocks)):
      stage = []
      for i in range(n):
        # The strided first block's output is concatenated with its pooled input.
        stage.append(_ShuffleV1Block(ch, width - (ch if i == 0 else 0), 2 if i == 0 else 1, groups,
                                     first=(s == 0 and i == 0), rngs=rngs))
        ch = width
      stages.append(nnx.List(stage))
    self.stages = nnx.List(stages)
    self.fc = nnx.Linear(ch, num_classes, rngs=rngs)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    x = jax.nn.relu(bn(self.bn1, self.conv1(x_BxHxWxC), train))
    feats = {"stem": x}
    return classify_stages(self.stages, self.fc, x, feats, train)


class _ShuffleV2Basic(nnx.Module):
  """Channel split in halves; one half through 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU;
  concatenation with the other half; channel shuffle (2 groups)."""

  def __init__(self, ch: int, *, rngs: nnx.Rngs):
    self.split = ch // 2
    half = ch - self.split
    self.conv1 = conv(half, half, 1, rngs=rngs)
    self.bn1 = batch_norm(half, rngs=rngs)
    self.conv2 = conv(half, half, 3, groups=half, rngs=rngs)
    self.bn2 = batch_norm(half, rngs=rngs)
    self.conv3 = conv(half, half, 1, rngs=rngs)
    self.bn3 = batch_norm(half, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x1, x2 = x[..., :self.split], x[..., self.split:]
    out = jax.nn.relu(bn(self.bn1, self.conv1(x2), train))
    out = bn(self.bn2, self.conv2(out), train)
    out = jax.nn.relu(bn(self.bn3, self.conv3(out), train))
    return channel_shuffle(jnp.concatenate([x1, out], axis=-1), 2)


class _ShuffleV2Down(nnx.Module):
  """Two strided branches (3x3 depthwise-BN, 1x1-BN-ReLU | 1x1-BN-ReLU, 3x3 depthwise-BN,
  1x1-BN-ReLU), concatenated and shuffled."""

  def __init__(self, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
    mid = out_ch // 2
    self.conv1 = conv(in_ch, in_ch, 3, stride=2, groups=in_ch, rngs=rngs)
    self.bn1 = batch_norm(in_ch, rngs=rngs)
    self.conv2 = conv(in_ch, mid, 1, rngs=rngs)
    self.bn2 = batch_norm(mid, rngs=rngs)
    self.conv3 = conv(in_ch, mid, 1, rngs=rngs)
    self.bn3 = batch_norm(mid, rngs=rngs)
    self.conv4 = conv(mid, mid, 3, stride=2, groups=mid, rngs=rngs)
    self.bn4 = batch_norm(mid, rngs=rngs)
    self.conv5 = conv(mid, mid, 1, rngs=rngs)
    self.bn5 = batch_norm(mid, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    left = bn(self.bn1, self.conv1(x), train)
    left = jax.nn.relu(bn(self.bn2, self.conv2(left), train))
    right = jax.nn.relu(bn(self.bn3, self.conv3(x), train))
    right = bn(self.bn4, self.conv4(right), train)
    right = jax.nn.relu(bn(self.bn5, self.conv5(right), train))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nnx.Module):
  """ShuffleNet v2 for CIFAR: a 1x1 stem (24 channels), three stages of a down-sampling unit and
  ``blocks[i]`` basic units, a 1x1 conv-BN-ReLU to ``widths[3]`` channels, global pooling,
  linear. RepDistiller's ``ShuffleV2`` (net size 1): widths (116, 232, 464, 1024), blocks
  (3, 7, 3); total stride 8.

  Taps: ``stem``, ``block1``..``block3`` (each stage's output, after the last unit's shuffle),
  ``pre_logits`` (the pooled output of the final 1x1 conv).
  """

  def __init__(self, num_classes: int, *, widths=(116, 232, 464, 1024), blocks=(3, 7, 3), in_channels: int = 3,
               rngs: nnx.Rngs):
    self.conv1 = conv(in_channels, 24, 1, rngs=rngs)
    self.bn1 = batch_norm(24, rngs=rngs)
    stages, ch = [], 24
    for width, n in zip(widths[:3], blocks):
      stages.append(nnx.List([_ShuffleV2Down(ch, width, rngs=rngs)]
                             + [_ShuffleV2Basic(width, rngs=rngs) for _ in range(n)]))
      ch = width
    self.stages = nnx.List(stages)
    self.conv2 = conv(ch, widths[3], 1, rngs=rngs)
    self.bn2 = batch_norm(widths[3], rngs=rngs)
    self.fc = nnx.Linear(widths[3], num_classes, rngs=rngs)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    x = jax.nn.relu(bn(self.bn1, self.conv1(x_BxHxWxC), train))
    feats = {"stem": x}
    for i, stage in enumerate(self.stages):
      for block in stage:
        x = block(x, train)
      feats[f"block{i + 1}"] = x
    x = jax.nn.relu(bn(self.bn2, self.conv2(x), train))
    pre = global_avg_pool(x)
    feats["pre_logits"] = pre
    return self.fc(pre), feats
