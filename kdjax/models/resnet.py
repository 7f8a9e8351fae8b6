"""Residual networks (He et al. 2016, "Deep Residual Learning for Image Recognition").

The ImageNet-style ResNet-18/34/50 of torchvision: a 7x7 stride-2 stem
convolution, a 3x3 stride-2 max-pool, four stages of BasicBlocks (18, 34) or
Bottlenecks (50; stride on the 3x3 convolution, "ResNet v1.5") with 64, 128,
256, 512 planes, global average pooling and a linear classifier. Convolutions
have no bias; every convolution is followed by BatchNorm (flax momentum 0.9 =
torch 0.1, epsilon 1e-5), run on batch statistics when ``train=True`` and on the
running averages otherwise.

The building blocks here (:class:`BasicBlock`, :class:`Bottleneck`) are shared
with the CIFAR ResNets of :mod:`kdjax.models.cifar`.

Feature taps (``feats``): ``"stem"`` (after the stem's conv-BN-ReLU, before the
max-pool), ``"block1"`` ... ``"block4"`` (each stage's output, after its final
ReLU; strides 4, 8, 16, 32) and ``"pre_logits"`` (the globally average-pooled
vector fed to the classifier).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

TOTAL_STRIDE = 32  # of the ImageNet ResNets: H and W of the input must be multiples of it

# torch's kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (k * k * out_channels)).
conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1, bias: bool = False,
         rngs: nnx.Rngs) -> nnx.Conv:
  """A square convolution padded like torch's ``Conv2d(padding=kernel // 2)`` (symmetric, so a
  stride-2 layer sees the same pixels as in PyTorch), without bias unless asked."""
  p = kernel // 2
  return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                  feature_group_count=groups, use_bias=bias, kernel_init=conv_init, rngs=rngs)


def batch_norm(ch: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with PyTorch's defaults (torch momentum 0.1 is flax momentum 0.9, epsilon 1e-5)."""
  return nnx.BatchNorm(ch, momentum=0.9, epsilon=1e-5, rngs=rngs)


def bn(layer: nnx.BatchNorm, x: jax.Array, train: bool) -> jax.Array:
  return layer(x, use_running_average=not train)


def global_avg_pool(x_BxHxWxC: jax.Array) -> jax.Array:
  return x_BxHxWxC.mean(axis=(1, 2))


def classify_stages(stages, fc, x: jax.Array, feats: dict, train: bool):
  """Runs ``stages`` (lists of blocks) on ``x``, recording each stage's output as
  ``feats["block{i}"]``, then global average pooling (``pre_logits``) and the classifier ``fc``:
  ``(logits, feats)``."""
  for i, stage in enumerate(stages):
    for block in stage:
      x = block(x, train)
    feats[f"block{i + 1}"] = x
  feats["pre_logits"] = pre = global_avg_pool(x)
  return fc(pre), feats


def _projection(in_ch: int, out_ch: int, stride: int, rngs: nnx.Rngs):
  """The shortcut's 1x1 conv-BN projection where the block changes size or width, else ``(None, None)``."""
  if stride == 1 and in_ch == out_ch:
    return None, None
  return conv(in_ch, out_ch, 1, stride=stride, rngs=rngs), batch_norm(out_ch, rngs=rngs)


class BasicBlock(nnx.Module):
  """Two 3x3 conv-BN layers and an identity (or 1x1 conv-BN projection) shortcut, then ReLU."""

  expansion = 1

  def __init__(self, in_ch: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
    self.conv1 = conv(in_ch, planes, 3, stride=stride, rngs=rngs)
    self.bn1 = batch_norm(planes, rngs=rngs)
    self.conv2 = conv(planes, planes, 3, rngs=rngs)
    self.bn2 = batch_norm(planes, rngs=rngs)
    self.down_conv, self.down_bn = _projection(in_ch, planes, stride, rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = jax.nn.relu(bn(self.bn1, self.conv1(x), train))
    out = bn(self.bn2, self.conv2(out), train)
    shortcut = x if self.down_conv is None else bn(self.down_bn, self.down_conv(x), train)
    return jax.nn.relu(out + shortcut)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BN; shortcut as in BasicBlock."""

  expansion = 4

  def __init__(self, in_ch: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
    out_ch = planes * self.expansion
    self.conv1 = conv(in_ch, planes, 1, rngs=rngs)
    self.bn1 = batch_norm(planes, rngs=rngs)
    self.conv2 = conv(planes, planes, 3, stride=stride, rngs=rngs)
    self.bn2 = batch_norm(planes, rngs=rngs)
    self.conv3 = conv(planes, out_ch, 1, rngs=rngs)
    self.bn3 = batch_norm(out_ch, rngs=rngs)
    self.down_conv, self.down_bn = _projection(in_ch, out_ch, stride, rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = jax.nn.relu(bn(self.bn1, self.conv1(x), train))
    out = jax.nn.relu(bn(self.bn2, self.conv2(out), train))
    out = bn(self.bn3, self.conv3(out), train)
    shortcut = x if self.down_conv is None else bn(self.down_bn, self.down_conv(x), train)
    return jax.nn.relu(out + shortcut)


def make_stage(block, in_ch: int, planes: int, num_blocks: int, stride: int, *, rngs: nnx.Rngs):
  """``num_blocks`` blocks, the first strided; returns ``(blocks, out_channels)``."""
  blocks = []
  for i in range(num_blocks):
    blocks.append(block(in_ch, planes, stride if i == 0 else 1, rngs=rngs))
    in_ch = planes * block.expansion
  return nnx.List(blocks), in_ch


class ImageNetResNet(nnx.Module):
  """torchvision's ResNet (He et al. 2016), total stride 32; ``(logits, feats)`` as described above."""

  def __init__(self, block, layers: Sequence[int], num_classes: int, *, in_channels: int = 3,
               rngs: nnx.Rngs):
    self.conv1 = conv(in_channels, 64, 7, stride=2, rngs=rngs)
    self.bn1 = batch_norm(64, rngs=rngs)
    stages, ch = [], 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
      stage, ch = make_stage(block, ch, planes, n, 1 if i == 0 else 2, rngs=rngs)
      stages.append(stage)
    self.stages = nnx.List(stages)
    self.fc = nnx.Linear(ch, num_classes, rngs=rngs)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    x = jax.nn.relu(bn(self.bn1, self.conv1(x_BxHxWxC), train))
    feats = {"stem": x}
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return classify_stages(self.stages, self.fc, x, feats, train)


def resnet18(num_classes: int, *, in_channels: int = 3, rngs: nnx.Rngs) -> ImageNetResNet:
  return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels=in_channels, rngs=rngs)


def resnet34(num_classes: int, *, in_channels: int = 3, rngs: nnx.Rngs) -> ImageNetResNet:
  return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels=in_channels, rngs=rngs)


def resnet50(num_classes: int, *, in_channels: int = 3, rngs: nnx.Rngs) -> ImageNetResNet:
  return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels=in_channels, rngs=rngs)
