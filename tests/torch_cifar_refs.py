"""PyTorch references of RepDistiller's CIFAR networks, written for kdjax's tests.

Not RepDistiller's code: small modules with the parameter names, shapes and forward computation of
github.com/HobbitLong/RepDistiller's ``models/*.py`` (inference only; no feature taps, no init).
``tests/data/repdistiller_keys.json`` holds what RepDistiller's own models give (their state-dict names
and shapes, and their logits for :func:`seeded_state_dict` weights on a fixed input), and
tests/test_pretrained_vision.py checks these modules and kdjax's importer against it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias)


def _pool(x: torch.Tensor) -> torch.Tensor:
  """RepDistiller's fixed-size average pools (AvgPool2d(8), avg_pool2d(x, 4), ...) on 32x32 inputs."""
  return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
  n, c, h, w = x.shape
  return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# models/resnet.py


class _BasicBlock(nn.Module):
  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = _conv(cin, planes, 3, stride), _bn(planes)
    self.conv2, self.bn2 = _conv(planes, planes, 3), _bn(planes)
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = nn.Sequential(_conv(cin, planes, 1, stride), _bn(planes))

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
  def __init__(self, depth: int, filters, num_classes: int):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1, self.bn1 = _conv(3, filters[0], 3), _bn(filters[0])
    cin = filters[0]
    for i, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), 1):
      blocks = []
      for b in range(n):
        blocks.append(_BasicBlock(cin, planes, stride if b == 0 else 1))
        cin = planes
      setattr(self, f"layer{i}", nn.Sequential(*blocks))
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    return self.fc(_pool(self.layer3(self.layer2(self.layer1(x)))))


# models/wrn.py


class _WideBlock(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1, self.conv1 = _bn(cin), _conv(cin, cout, 3, stride)
    self.bn2, self.conv2 = _bn(cout), _conv(cout, cout, 3)
    self.equal = cin == cout
    self.convShortcut = None if self.equal else _conv(cin, cout, 1, stride)

  def forward(self, x):
    act = F.relu(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(self.conv1(act))))
    return out + (x if self.equal else self.convShortcut(act))


class _NetworkBlock(nn.Module):
  def __init__(self, blocks):
    super().__init__()
    self.layer = nn.Sequential(*blocks)

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  def __init__(self, depth: int, widen: int, num_classes: int):
    super().__init__()
    n = (depth - 4) // 6
    widths = (16, 16 * widen, 32 * widen, 64 * widen)
    self.conv1 = _conv(3, 16, 3)
    for i, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2)), 1):
      setattr(self, f"block{i}", _NetworkBlock([_WideBlock(widths[i - 1] if b == 0 else cout, cout,
                                                           stride if b == 0 else 1) for b in range(n)]))
    self.bn1 = _bn(widths[3])
    self.fc = nn.Linear(widths[3], num_classes)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    return self.fc(_pool(F.relu(self.bn1(x))))


# models/vgg.py (vgg*_bn)


class VGG(nn.Module):
  def __init__(self, cfg, num_classes: int):
    super().__init__()
    cin = 3
    for g, widths in enumerate(cfg):
      layers = []
      for w in widths:
        layers += [_conv(cin, w, 3, bias=True), _bn(w), nn.ReLU()]
        cin = w
      setattr(self, f"block{g}", nn.Sequential(*layers[:-1]))
    self.classifier = nn.Linear(512, num_classes)

  def forward(self, x):
    h = x.shape[2]
    x = F.relu(self.block0(x))
    for g in (1, 2, 3):
      x = F.relu(getattr(self, f"block{g}")(F.max_pool2d(x, 2)))
    if h == 64:
      x = F.max_pool2d(x, 2)
    return self.classifier(_pool(F.relu(self.block4(x))))


# models/mobilenetv2.py (mobile_half: expansion 6, width 0.5)


class _Inverted(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int, t: int):
    super().__init__()
    hidden = cin * t
    self.conv = nn.Sequential(_conv(cin, hidden, 1), _bn(hidden), nn.ReLU(),
                              _conv(hidden, hidden, 3, stride, groups=hidden), _bn(hidden), nn.ReLU(),
                              _conv(hidden, cout, 1), _bn(cout))
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
  def __init__(self, num_classes: int, t: int = 6, width: float = 0.5):
    super().__init__()
    cin = int(32 * width)
    self.conv1 = nn.Sequential(_conv(3, cin, 3, 2), _bn(cin), nn.ReLU())
    self.blocks = nn.ModuleList()
    for expand, c, n, s in ((1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1),
                            (t, 160, 3, 2), (t, 320, 1, 1)):
      layers = []
      for i in range(n):
        layers.append(_Inverted(cin, int(c * width), s if i == 0 else 1, expand))
        cin = int(c * width)
      self.blocks.append(nn.Sequential(*layers))
    self.conv2 = nn.Sequential(_conv(cin, 1280, 1), _bn(1280), nn.ReLU())
    self.classifier = nn.Sequential(nn.Linear(1280, num_classes))

  def forward(self, x):
    x = self.conv1(x)
    for group in self.blocks:
      x = group(x)
    return self.classifier(_pool(self.conv2(x)))


# models/ShuffleNetv1.py (groups 3, widths 240/480/960, blocks 4/8/4)


class _V1Block(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int, groups: int):
    super().__init__()
    mid = cout // 4
    self.g1 = 1 if cin == 24 else groups
    self.conv1, self.bn1 = _conv(cin, mid, 1, groups=self.g1), _bn(mid)
    self.conv2, self.bn2 = _conv(mid, mid, 3, stride, groups=mid), _bn(mid)
    self.conv3, self.bn3 = _conv(mid, cout, 1, groups=groups), _bn(cout)
    self.stride = stride

  def forward(self, x):
    out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
    out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
    if self.stride == 2:
      return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
    return F.relu(out + x)


class ShuffleV1(nn.Module):
  def __init__(self, num_classes: int):
    super().__init__()
    self.conv1, self.bn1 = _conv(3, 24, 1), _bn(24)
    cin = 24
    for i, (width, n) in enumerate(zip((240, 480, 960), (4, 8, 4)), 1):
      blocks = []
      for b in range(n):
        blocks.append(_V1Block(cin, width - (cin if b == 0 else 0), 2 if b == 0 else 1, 3))
        cin = width
      setattr(self, f"layer{i}", nn.Sequential(*blocks))
    self.linear = nn.Linear(960, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    return self.linear(_pool(self.layer3(self.layer2(self.layer1(x)))))


# models/ShuffleNetv2.py (net size 1: widths 116/232/464/1024, blocks 3/7/3)


class _V2Basic(nn.Module):
  def __init__(self, c: int):
    super().__init__()
    self.split = c // 2
    h = c - self.split
    self.conv1, self.bn1 = _conv(h, h, 1), _bn(h)
    self.conv2, self.bn2 = _conv(h, h, 3, groups=h), _bn(h)
    self.conv3, self.bn3 = _conv(h, h, 1), _bn(h)

  def forward(self, x):
    x1, x2 = x[:, :self.split], x[:, self.split:]
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))
    return _shuffle(torch.cat([x1, F.relu(self.bn3(self.conv3(out)))], 1), 2)


class _V2Down(nn.Module):
  def __init__(self, cin: int, cout: int):
    super().__init__()
    mid = cout // 2
    self.conv1, self.bn1 = _conv(cin, cin, 3, 2, groups=cin), _bn(cin)
    self.conv2, self.bn2 = _conv(cin, mid, 1), _bn(mid)
    self.conv3, self.bn3 = _conv(cin, mid, 1), _bn(mid)
    self.conv4, self.bn4 = _conv(mid, mid, 3, 2, groups=mid), _bn(mid)
    self.conv5, self.bn5 = _conv(mid, mid, 1), _bn(mid)

  def forward(self, x):
    left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
    right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
    return _shuffle(torch.cat([left, F.relu(self.bn5(self.conv5(right)))], 1), 2)


class ShuffleV2(nn.Module):
  def __init__(self, num_classes: int):
    super().__init__()
    self.conv1, self.bn1 = _conv(3, 24, 1), _bn(24)
    cin = 24
    for i, (width, n) in enumerate(zip((116, 232, 464), (3, 7, 3)), 1):
      setattr(self, f"layer{i}", nn.Sequential(_V2Down(cin, width), *[_V2Basic(width) for _ in range(n)]))
      cin = width
    self.conv2, self.bn2 = _conv(464, 1024, 1), _bn(1024)
    self.linear = nn.Linear(1024, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.linear(_pool(F.relu(self.bn2(self.conv2(x)))))


_SMALL, _X4 = (16, 16, 32, 64), (32, 64, 128, 256)
# RepDistiller's model_dict name -> builder(num_classes).
REFS = {
    **{f"resnet{d}": functools.partial(CifarResNet, d, _SMALL) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": functools.partial(CifarResNet, 8, _X4),
    "resnet32x4": functools.partial(CifarResNet, 32, _X4),
    "wrn_16_2": functools.partial(WideResNet, 16, 2),
    "wrn_40_1": functools.partial(WideResNet, 40, 1),
    "wrn_40_2": functools.partial(WideResNet, 40, 2),
    "vgg8": functools.partial(VGG, ((64,), (128,), (256,), (512,), (512,))),
    "vgg13": functools.partial(VGG, ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))),
    "MobileNetV2": MobileNetV2,
    "ShuffleV1": ShuffleV1,
    "ShuffleV2": ShuffleV2,
}


def seeded_state_dict(shapes, seed: int) -> dict[str, np.ndarray]:
  """Weights for a state dict of these names and shapes, drawn in name order from ``seed``: convolutions
  and linear layers N(0, 1/fan_in), BatchNorm scales U(0.25, 0.75) (deep networks stay in range), biases
  and running means N(0, 0.1), running variances U(0.5, 1.5); ``num_batches_tracked`` 0.
  The manifest's logits were computed by RepDistiller's models with these weights."""
  rng = np.random.default_rng(seed)
  out = {}
  for name in sorted(shapes):
    shape, leaf = tuple(shapes[name]), name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
      out[name] = np.array(0, np.int64)
    elif leaf == "running_mean":
      out[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    elif leaf == "running_var":
      out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif leaf == "weight" and len(shape) == 1:
      out[name] = rng.uniform(0.25, 0.75, shape).astype(np.float32)
    elif leaf == "bias":
      out[name] = rng.normal(0, 0.1, shape).astype(np.float32)
    else:
      out[name] = rng.normal(0, math.sqrt(1.0 / math.prod(shape[1:])), shape).astype(np.float32)
  return out


def manifest_input() -> np.ndarray:
  """The manifest's input: two 32x32 RGB images, NCHW, float32."""
  return np.random.default_rng(1234).standard_normal((2, 3, 32, 32)).astype(np.float32)


def torch_logits(net: nn.Module, state_dict, x_nchw: np.ndarray) -> np.ndarray:
  """``net``'s logits in eval mode with ``state_dict`` (NumPy arrays) loaded, on ``x_nchw``."""
  net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
  net.eval()
  with torch.no_grad():
    return net(torch.from_numpy(x_nchw)).numpy()
