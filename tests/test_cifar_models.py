"""The CIFAR model zoo (RepDistiller) and the ImageNet ResNets: sizes, feature taps, BatchNorm state.

Parameter counts and feature shapes come from ``nnx.eval_shape`` / ``jax.eval_shape``: no
weights are allocated and no FLOPs spent. Real forward passes run only for the smallest
member of each family, on small images.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kdjax.models import apply_model, cifar, create_model, feature_shapes, get_model_spec, model_names, split_model

CIFAR_ZOO = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
             "resnet32x4", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "mobilenetv2", "shufflev1",
             "shufflev2"]
IMAGENET_RESNETS = ["resnet18", "resnet34", "resnet50"]
ZOO = CIFAR_ZOO + IMAGENET_RESNETS


# --- PyTorch reference parameter counts --------------------------------------------------------
# Counted as torch counts model.parameters(): conv weights (plus bias only where torch has
# bias=True: RepDistiller's VGG convs), BatchNorm weight + bias (not the running statistics),
# linear weight + bias. The functions below follow RepDistiller's models/*.py (and torchvision's
# resnet.py) module by module; the table under them is what they give, for 100 classes (CIFAR) and
# 1000 (ImageNet). RepDistiller's README / CRD paper quote, as a sanity check: resnet56 0.86M,
# resnet110 1.7M, resnet8x4 1.2M, resnet32x4 7.4M, wrn_40_2 2.2M, vgg13 9.4M, MobileNetV2(half)
# 0.81M, ShuffleV1 0.95M, ShuffleV2 1.35M; torchvision's ResNet-18/34/50 are 11,689,512 /
# 21,797,672 / 25,557,032.

def _conv(i, o, k, groups=1, bias=False):
  return o * (i // groups) * k * k + (o if bias else 0)


def _bn(c):
  return 2 * c


def _linear(i, o):
  return i * o + o


def _torch_resnet_cifar(depth, f, nc=100):  # RepDistiller models/resnet.py, BasicBlock
  n, total, inp = (depth - 2) // 6, _conv(3, f[0], 3) + _bn(f[0]), f[0]
  for planes, stride in zip(f[1:], (1, 2, 2)):
    for i in range(n):
      s = stride if i == 0 else 1
      total += _conv(inp, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
      if s != 1 or inp != planes:  # downsample: 1x1 conv + BN
        total += _conv(inp, planes, 1) + _bn(planes)
      inp = planes
  return total + _linear(inp, nc)


def _torch_wrn(depth, k, nc=100):  # RepDistiller models/wrn.py
  n, ch = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
  total, inp = _conv(3, 16, 3), 16
  for out in ch[1:]:
    for i in range(n):
      total += _bn(inp) + _conv(inp, out, 3) + _bn(out) + _conv(out, out, 3)
      if inp != out:  # convShortcut
        total += _conv(inp, out, 1)
      inp = out
  return total + _bn(inp) + _linear(inp, nc)


def _torch_vgg_bn(cfg, nc=100):  # RepDistiller models/vgg.py, batch_norm=True (conv bias=True)
  total, inp = 0, 3
  for group in cfg:
    for v in group:
      total += _conv(inp, v, 3, bias=True) + _bn(v)
      inp = v
  return total + _linear(512, nc)


def _torch_mobile_half(nc=100, t=6, w=0.5):  # RepDistiller models/mobilenetv2.py, mobile_half
  inp = int(32 * w)
  total = _conv(3, inp, 3) + _bn(inp)
  for tt, c, n, _ in [[1, 16, 1, 1], [t, 24, 2, 1], [t, 32, 3, 2], [t, 64, 4, 2], [t, 96, 3, 1],
                      [t, 160, 3, 2], [t, 320, 1, 1]]:
    out = int(c * w)
    for _ in range(n):
      hid = inp * tt
      total += _conv(inp, hid, 1) + _bn(hid) + _conv(hid, hid, 3, groups=hid) + _bn(hid) + _conv(hid, out, 1) + _bn(out)
      inp = out
  return total + _conv(inp, 1280, 1) + _bn(1280) + _linear(1280, nc)


def _torch_shufflev1(nc=100):  # RepDistiller models/ShuffleNetv1.py, ShuffleV1
  total, inp, groups = _conv(3, 24, 1) + _bn(24), 24, 3
  for out_planes, nb in zip((240, 480, 960), (4, 8, 4)):
    for i in range(nb):
      out = out_planes - (inp if i == 0 else 0)
      mid, g = int(out / 4), (1 if inp == 24 else groups)
      total += (_conv(inp, mid, 1, groups=g) + _bn(mid) + _conv(mid, mid, 3, groups=mid) + _bn(mid)
                + _conv(mid, out, 1, groups=groups) + _bn(out))
      inp = out_planes
  return total + _linear(960, nc)


def _torch_shufflev2(nc=100):  # RepDistiller models/ShuffleNetv2.py, ShuffleV2 (net_size 1)
  total, inp = _conv(3, 24, 1) + _bn(24), 24
  for out, nb in zip((116, 232, 464), (3, 7, 3)):
    mid = out // 2  # DownBlock
    total += (_conv(inp, inp, 3, groups=inp) + _bn(inp) + _conv(inp, mid, 1) + _bn(mid) + _conv(inp, mid, 1)
              + _bn(mid) + _conv(mid, mid, 3, groups=mid) + _bn(mid) + _conv(mid, mid, 1) + _bn(mid))
    half = out // 2  # BasicBlock, split ratio 0.5
    total += nb * (_conv(half, half, 1) + _bn(half) + _conv(half, half, 3, groups=half) + _bn(half)
                   + _conv(half, half, 1) + _bn(half))
    inp = out
  return total + _conv(464, 1024, 1) + _bn(1024) + _linear(1024, nc)


def _torchvision_resnet(block, layers, nc=1000):  # torchvision models/resnet.py
  total, inp, exp = _conv(3, 64, 7) + _bn(64), 64, (1 if block == "basic" else 4)
  for planes, n, stride in zip((64, 128, 256, 512), layers, (1, 2, 2, 2)):
    for i in range(n):
      s = stride if i == 0 else 1
      if block == "basic":
        total += _conv(inp, planes, 3) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
      else:
        total += (_conv(inp, planes, 1) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
                  + _conv(planes, planes * 4, 1) + _bn(planes * 4))
      if s != 1 or inp != planes * exp:
        total += _conv(inp, planes * exp, 1) + _bn(planes * exp)
      inp = planes * exp
  return total + _linear(inp, nc)


_S, _X4 = (16, 16, 32, 64), (32, 64, 128, 256)
TORCH_FORMULA = {
    **{f"resnet{d}": functools.partial(_torch_resnet_cifar, d, _S) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": functools.partial(_torch_resnet_cifar, 8, _X4),
    "resnet32x4": functools.partial(_torch_resnet_cifar, 32, _X4),
    "wrn_16_2": functools.partial(_torch_wrn, 16, 2),
    "wrn_40_1": functools.partial(_torch_wrn, 40, 1),
    "wrn_40_2": functools.partial(_torch_wrn, 40, 2),
    "vgg8": functools.partial(_torch_vgg_bn, [[64], [128], [256], [512], [512]]),
    "vgg13": functools.partial(_torch_vgg_bn, [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]),
    "mobilenetv2": _torch_mobile_half,
    "shufflev1": _torch_shufflev1,
    "shufflev2": _torch_shufflev2,
    "resnet18": functools.partial(_torchvision_resnet, "basic", (2, 2, 2, 2)),
    "resnet34": functools.partial(_torchvision_resnet, "basic", (3, 4, 6, 3)),
    "resnet50": functools.partial(_torchvision_resnet, "bottleneck", (3, 4, 6, 3)),
}

# Exact PyTorch counts (100 classes for CIFAR, 1000 for ImageNet), from the formulas above.
TORCH_PARAMS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756, "resnet44": 667_188,
    "resnet56": 861_620,  # README: 0.86M
    "resnet110": 1_736_564,  # README: 1.7M
    "resnet8x4": 1_233_540,  # README: 1.2M
    "resnet32x4": 7_433_860,  # README: 7.4M
    "wrn_16_2": 703_284, "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,  # README: 2.2M
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,  # README: 9.4M
    "mobilenetv2": 812_836,  # README: 0.81M
    "shufflev1": 949_258,  # README: 0.95M
    "shufflev2": 1_355_528,  # README: 1.35M
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,  # torchvision
}

# (H, W, C) of each feature for 32x32x3 images (CIFAR zoo) or 64x64x3 images (ImageNet ResNets).
def _resnet_feats(f):
  return {"stem": (32, 32, f[0]), "block1": (32, 32, f[1]), "block2": (16, 16, f[2]), "block3": (8, 8, f[3]),
          "pre_logits": (f[3],)}


def _wrn_feats(k):
  return {"stem": (32, 32, 16), "block1": (32, 32, 16 * k), "block2": (16, 16, 32 * k), "block3": (8, 8, 64 * k),
          "pre_logits": (64 * k,)}


_VGG_FEATS = {"stem": (32, 32, 64), "block1": (16, 16, 128), "block2": (8, 8, 256), "block3": (4, 4, 512),
              "block4": (4, 4, 512), "pre_logits": (512,)}


def _imagenet_feats(exp):
  return {"stem": (32, 32, 64), "block1": (16, 16, 64 * exp), "block2": (8, 8, 128 * exp),
          "block3": (4, 4, 256 * exp), "block4": (2, 2, 512 * exp), "pre_logits": (512 * exp,)}


FEATURES = {
    **{f"resnet{d}": _resnet_feats(_S) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _resnet_feats(_X4), "resnet32x4": _resnet_feats(_X4),
    "wrn_16_2": _wrn_feats(2), "wrn_40_1": _wrn_feats(1), "wrn_40_2": _wrn_feats(2),
    "vgg8": _VGG_FEATS, "vgg13": _VGG_FEATS,
    "mobilenetv2": {"stem": (16, 16, 16), "block1": (16, 16, 12), "block2": (8, 8, 16), "block3": (4, 4, 48),
                    "block4": (2, 2, 160), "pre_logits": (1280,)},
    "shufflev1": {"stem": (32, 32, 24), "block1": (16, 16, 240), "block2": (8, 8, 480), "block3": (4, 4, 960),
                  "pre_logits": (960,)},
    "shufflev2": {"stem": (32, 32, 24), "block1": (16, 16, 116), "block2": (8, 8, 232), "block3": (4, 4, 464),
                  "pre_logits": (1024,)},
    "resnet18": _imagenet_feats(1), "resnet34": _imagenet_feats(1), "resnet50": _imagenet_feats(4),
}


def _num_classes(name):
  return 1000 if name in IMAGENET_RESNETS else 100


@functools.cache
def _abstract(name):
  """The model's ``(graphdef, params, rest)`` as shapes only (``nnx.eval_shape``: nothing allocated)."""
  spec = get_model_spec(name)
  model = nnx.eval_shape(lambda: create_model(name, num_classes=_num_classes(name), input_shape=spec.input_shape))
  return split_model(model)


def test_the_whole_zoo_is_registered_with_its_family():
  families = {"resnet": [n for n in CIFAR_ZOO if n.startswith("resnet")], "wrn": ["wrn_16_2", "wrn_40_1", "wrn_40_2"],
              "vgg": ["vgg8", "vgg13"], "mobilenet": ["mobilenetv2"], "shufflenet": ["shufflev1", "shufflev2"],
              "resnet_imagenet": IMAGENET_RESNETS}
  assert set(ZOO) <= set(model_names())
  for family, names in families.items():
    for name in names:
      spec = get_model_spec(name)
      assert spec.family == family and spec.total_stride is not None
      assert spec.input_shape == ((224, 224, 3) if family == "resnet_imagenet" else (32, 32, 3))
  assert {get_model_spec(n).family for n in ("mlp800", "mlp1200", "cnn16", "cnn64")} == {"mlp", "cnn"}


def test_reference_formulas_give_the_tabulated_torch_counts():
  assert {name: f() for name, f in TORCH_FORMULA.items()} == TORCH_PARAMS


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_and_feature_shapes(name):
  graphdef, params, rest = _abstract(name)
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(params)) == TORCH_PARAMS[name]

  size = (64, 64, 3) if name in IMAGENET_RESNETS else (32, 32, 3)
  shapes = feature_shapes(graphdef, params, rest, size, batch_size=2)
  assert {k: v.shape[1:] for k, v in shapes.items()} == FEATURES[name]
  assert all(v.shape[0] == 2 for v in shapes.values())
  blocks = sorted((k for k in shapes if k.startswith("block")), key=lambda k: int(k[5:]))
  assert blocks == [f"block{i + 1}" for i in range(len(blocks))] and len(blocks) >= 3
  sides = [shapes[k].shape[1] for k in blocks]
  assert sides == sorted(sides, reverse=True)  # non-increasing with depth


def test_vgg_pools_once_more_on_64_pixel_images_as_repdistiller():
  shapes = feature_shapes(*_abstract("vgg8"), (64, 64, 3))
  assert shapes["block3"].shape[1:3] == (8, 8) and shapes["block4"].shape[1:3] == (4, 4)


def _materialise(name, input_shape, num_classes=10, **options):
  """``(graphdef, params, rest)`` of ``name`` with numpy-drawn weights (He-normal kernels, BN
  scale 1 / bias 0, running mean 0 / variance 1). A real init compiles one random kernel per
  parameter shape: seconds per model on a 2-core CPU, while these tests only need some weights."""
  graphdef, params, rest = split_model(nnx.eval_shape(
      lambda: create_model(name, num_classes=num_classes, input_shape=input_shape, **options)))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    kind = path[-2].key
    if kind == "kernel":
      return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2 / math.prod(leaf.shape[:-1])), leaf.dtype)
    return (jnp.ones if kind in ("scale", "var") else jnp.zeros)(leaf.shape, leaf.dtype)
  return graphdef, jax.tree.map_with_path(fill, params), jax.tree.map_with_path(fill, rest)


def _quick_jit(fn, *args):
  """``jax.jit(fn)(*args)`` compiled with XLA's cheap settings: these tests check values, not speed,
  and compiling dominates their time on a CPU. (jit also keeps ``apply_model`` from updating the
  caller's batch statistics in place, as the eager call does through ``nnx.merge``.)"""
  compiled = jax.jit(fn).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
  return compiled(*args)


SMALLEST = [("resnet8", 8), ("wrn_16_2", 8), ("vgg8", 16), ("mobilenetv2", 16), ("shufflev1", 8), ("shufflev2", 8),
            ("resnet18", 32)]


# The MobileNet and ShuffleNets compile for 4 to 5 s each on 2 cores: in the slow set
# (`pytest -m slow`); their parameter counts and shapes stay in the default run.
@pytest.mark.parametrize("name,side", [pytest.param(n, s, marks=[pytest.mark.slow] if n.startswith(("shuffle", "mobile"))
                                                    else []) for n, s in SMALLEST])
def test_real_forward_and_batch_statistics(name, side):
  x = jax.random.normal(jax.random.key(0), (4, side, side, 3))
  graphdef, params, rest = _materialise(name, (side, side, 3))
  assert jax.tree.leaves(rest)  # BatchNorm running statistics live outside the parameters

  def train_then_eval(params, rest, x):  # one compilation for both modes
    train_out = apply_model(graphdef, params, rest, x, train=True, rngs=jax.random.key(1))
    return train_out, apply_model(graphdef, params, train_out[2], x, train=False)

  (logits, feats, rest_train), (logits_eval, _, rest_eval) = _quick_jit(train_then_eval, params, rest, x)
  assert logits.shape == (4, 10) and bool(jnp.isfinite(logits).all()) and bool(jnp.isfinite(logits_eval).all())
  assert all(bool(jnp.isfinite(v).all()) for v in feats.values())
  assert feats["pre_logits"].shape[0] == 4
  # Training mode normalises with batch statistics and updates every running mean and variance ...
  assert jax.tree.structure(rest_train) == jax.tree.structure(rest)
  assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rest), jax.tree.leaves(rest_train)))
  # ... inference mode uses the running averages and leaves them alone.
  jax.tree.map(np.testing.assert_array_equal, rest_eval, rest_train)
  assert not np.allclose(logits, logits_eval)


def test_real_init_and_torch_batch_norm_momentum():
  # The one real (random) initialisation of the file, of a narrow ResNet-8 (each parameter shape
  # compiles its own random kernel on the CPU): He-normal (fan-out) kernels as RepDistiller,
  # BN scale 1 / bias 0, running mean 0 / variance 1.
  model = cifar.CifarResNet(8, (16, 16, 16, 16), 10, rngs=nnx.Rngs(params=0))
  kernel = np.asarray(model.stages[1][0].conv1.kernel[...])  # 3x3, 16 -> 16 channels
  assert kernel.shape == (3, 3, 16, 16)
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / (3 * 3 * 16)), rtol=0.1)
  np.testing.assert_array_equal(model.bn1.scale[...], 1.0)
  np.testing.assert_array_equal(model.bn1.var[...], 1.0)
  assert model.bn1.epsilon == 1e-5

  # torch's momentum 0.1: running_mean <- 0.9 * running_mean + 0.1 * batch_mean.
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  batch_mean = model.conv1(x).mean(axis=(0, 1, 2))
  graphdef, params, rest = split_model(model)
  _, _, new_rest = jax.jit(lambda p, r, x: apply_model(graphdef, p, r, x, train=True))(params, rest, x)
  np.testing.assert_allclose(nnx.merge(graphdef, params, new_rest).bn1.mean[...], 0.1 * batch_mean,
                             rtol=1e-5, atol=1e-7)


def test_zoo_takes_any_size_its_stride_divides_and_any_channels():
  shapes = feature_shapes(*split_model(nnx.eval_shape(
      lambda: create_model("resnet8", num_classes=10, input_shape=(12, 20, 1)))), (12, 20, 1))
  assert shapes["block3"].shape == (2, 3, 5, 64)
  nnx.eval_shape(lambda: create_model("resnet18", num_classes=10, input_shape=(32, 64, 3)))  # 32 divides both


@pytest.mark.parametrize("name,shape,stride", [("resnet8", (30, 30, 3), 4), ("mobilenetv2", (24, 24, 3), 16),
                                               ("resnet18", (32, 48, 3), 32), ("vgg8", (32, 32), 8)])
def test_bad_image_size_is_named_with_what_the_model_needs(name, shape, stride):
  with pytest.raises(ValueError, match=rf"model '{name}' needs images .* multiples of its total stride {stride} "
                                       rf".*images of shape \({', '.join(map(str, shape))}\)"):
    create_model(name, num_classes=10, input_shape=shape)


def test_zoo_options_are_checked():
  m = nnx.eval_shape(lambda: create_model("mobilenetv2", num_classes=10, input_shape=(32, 32, 3), width_mult=1.0))
  assert m.conv1.out_features == 32
  with pytest.raises(ValueError, match="model 'resnet8' has no option dropout_rate; it takes: none"):
    create_model("resnet8", num_classes=10, input_shape=(32, 32, 3), dropout_rate=0.3)
  with pytest.raises(ValueError, match="model 'wrn_16_2' has no option width_mult; it takes: dropout_rate"):
    create_model("wrn_16_2", num_classes=10, input_shape=(32, 32, 3), width_mult=2)


def test_wrn_dropout_option_acts_in_training_only():
  graphdef, params, rest = _materialise("wrn_16_2", (8, 8, 3), dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))

  def logits(params, rest):
    run = lambda train, seed: apply_model(graphdef, params, rest, x, train=train, rngs=jax.random.key(seed))[0]
    return run(True, 1), run(True, 2), run(False, 1), run(False, 2)

  train1, train2, eval1, eval2 = _quick_jit(logits, params, rest)
  assert not np.allclose(train1, train2)
  np.testing.assert_array_equal(eval1, eval2)
