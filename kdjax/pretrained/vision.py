"""Vision weights from PyTorch: torchvision's ImageNet ResNets and RepDistiller's CIFAR zoo.

:func:`import_weights` is the entry point: a weights file (or a state dict) and a kdjax model name give
that kdjax model with those weights. Each family has an explicit table from PyTorch names to the kdjax
model's variables (:func:`torchvision_resnet_table`, :func:`repdistiller_table`); the state dict is
checked against it, name by name and shape by shape (:func:`kdjax.pretrained.check_state_dict`: one
error naming every missing, mis-shaped and unexpected tensor) before a single weight is placed, and
every variable of the kdjax model must have a source in the table, so none is left at its random
initialization.

Layouts: a convolution's ``weight`` (O, I/groups, kH, kW) becomes the kernel (kH, kW, I/groups, O); a
linear layer's ``weight`` (out, in) becomes (in, out); BatchNorm's ``weight``, ``bias``, ``running_mean``
and ``running_var`` become ``scale`` and ``bias`` (parameters), ``mean`` and ``var`` (batch statistics);
``num_batches_tracked`` is ignored. kdjax's models already use PyTorch's BatchNorm epsilon (1e-5) and
symmetric padding, so the imported model computes what the PyTorch one does (to float tolerance) on the
same input: NHWC here, NCHW there.

Inputs: kdjax feeds images as floats in [0, 1]. A network trained on normalized images (torchvision's
ImageNet weights, RepDistiller's CIFAR-100 teachers) needs that normalization in front of it:
:func:`with_input_normalization` (:data:`INPUT_NORMS`: ``imagenet``, ``cifar100``).

Nothing is downloaded: the user brings the file (docs/pretrained.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.models import cifar, create_model, get_model_spec, model_names
from kdjax.models.resnet import Bottleneck, ImageNetResNet
from kdjax.pretrained.common import check_state_dict, load_state_dict

# The kdjax model family each source covers (kdjax.models.registry's ``family``).
TORCHVISION_FAMILIES = ("resnet_imagenet",)
REPDISTILLER_FAMILIES = ("resnet", "wrn", "vgg", "mobilenet", "shufflenet")
# RepDistiller's ``model_dict`` names (models/__init__.py) of the networks kdjax's zoo has, by kdjax name.
# Not here: RepDistiller's CIFAR ``ResNet50`` (models/resnetv2.py: a 3x3 stem, four stages, ``linear``;
# kdjax's ``resnet50`` is torchvision's ImageNet one), wrn_16_1, vgg11/16/19.
REPDISTILLER_NAMES = {
    **{f"resnet{d}": f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": "resnet8x4", "resnet32x4": "resnet32x4",
    "wrn_16_2": "wrn_16_2", "wrn_40_1": "wrn_40_1", "wrn_40_2": "wrn_40_2",
    "vgg8": "vgg8", "vgg13": "vgg13",
    "mobilenetv2": "MobileNetV2", "shufflev1": "ShuffleV1", "shufflev2": "ShuffleV2",
}
# Per-channel (mean, std) of the images a network was trained on, for with_input_normalization.
INPUT_NORMS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision's ImageNet weights
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),  # RepDistiller's dataset/cifar100.py
}
# Tensors a state dict may hold that no kdjax variable takes.
IGNORED_SUFFIXES = (".num_batches_tracked",)

# One row of a table: (PyTorch name, path of the kdjax variable, layout): "conv" (OIHW -> HWIO),
# "linear" ((out, in) -> (in, out)) or "same".
Row = tuple[str, tuple, str]


def _conv(src: str, dst: tuple, *, bias: bool = False) -> list[Row]:
  return [(f"{src}.weight", (*dst, "kernel"), "conv")] + ([(f"{src}.bias", (*dst, "bias"), "same")] if bias else [])


def _bn(src: str, dst: tuple) -> list[Row]:
  return [(f"{src}.{t}", (*dst, f), "same")
          for t, f in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))]


def _linear(src: str, dst: tuple) -> list[Row]:
  return [(f"{src}.weight", (*dst, "kernel"), "linear"), (f"{src}.bias", (*dst, "bias"), "same")]


def _basic_or_bottleneck(src: str, dst: tuple, block, shortcut: str) -> list[Row]:
  """A ResNet block: ``conv{k}``/``bn{k}`` (k = 1, 2, and 3 in a bottleneck), and the projection
  shortcut ``{shortcut}.0`` (1x1 conv) / ``{shortcut}.1`` (BN) where kdjax's block has one."""
  rows = []
  for k in (1, 2, 3) if isinstance(block, Bottleneck) else (1, 2):
    rows += _conv(f"{src}.conv{k}", (*dst, f"conv{k}")) + _bn(f"{src}.bn{k}", (*dst, f"bn{k}"))
  if block.down_conv is not None:
    rows += _conv(f"{src}.{shortcut}.0", (*dst, "down_conv")) + _bn(f"{src}.{shortcut}.1", (*dst, "down_bn"))
  return rows


def torchvision_resnet_table(model: ImageNetResNet) -> list[Row]:
  """torchvision's ``resnet18/34/50`` names (``conv1``, ``bn1``, ``layer{1-4}.{b}.conv{k}`` / ``bn{k}`` /
  ``downsample.{0,1}``, ``fc``) onto :class:`kdjax.models.resnet.ImageNetResNet`."""
  _expect(model, ImageNetResNet, "torchvision ResNet")
  return _resnet_rows(model)


def _cifar_resnet_table(model) -> list[Row]:
  """RepDistiller's models/resnet.py: torchvision's names with three stages (``layer{1-3}``)."""
  _expect(model, cifar.CifarResNet, "RepDistiller CIFAR ResNet")
  return _resnet_rows(model)


def _resnet_rows(model) -> list[Row]:
  """The names torchvision's and RepDistiller's ResNets share: ``conv1``, ``bn1``, ``layer{s}.{b}.conv{k}`` /
  ``bn{k}`` / ``downsample.{0,1}`` for each of the model's stages, ``fc``."""
  rows = _conv("conv1", ("conv1",)) + _bn("bn1", ("bn1",))
  for s, stage in enumerate(model.stages):
    for b, block in enumerate(stage):
      rows += _basic_or_bottleneck(f"layer{s + 1}.{b}", ("stages", s, b), block, "downsample")
  return rows + _linear("fc", ("fc",))


def _wrn_table(model) -> list[Row]:
  """RepDistiller's models/wrn.py: ``conv1``, ``block{1-3}.layer.{b}.bn1`` / ``conv1`` / ``bn2`` /
  ``conv2`` / ``convShortcut`` (where the width changes), the final ``bn1``, ``fc``."""
  _expect(model, cifar.WideResNet, "RepDistiller wide ResNet")
  rows = _conv("conv1", ("conv1",))
  for s, stage in enumerate(model.stages):
    for b, block in enumerate(stage):
      src, dst = f"block{s + 1}.layer.{b}", ("stages", s, b)
      rows += (_bn(f"{src}.bn1", (*dst, "bn1")) + _conv(f"{src}.conv1", (*dst, "conv1"))
               + _bn(f"{src}.bn2", (*dst, "bn2")) + _conv(f"{src}.conv2", (*dst, "conv2")))
      if block.shortcut is not None:
        rows += _conv(f"{src}.convShortcut", (*dst, "shortcut"))
  return rows + _bn("bn1", ("bn1",)) + _linear("fc", ("fc",))


def _vgg_table(model) -> list[Row]:
  """RepDistiller's models/vgg.py (``vgg*_bn``): group g is ``block{g}``, a Sequential of conv (with
  bias), BN, ReLU per layer (the last ReLU dropped), so layer i is ``block{g}.{3i}`` (conv) and
  ``block{g}.{3i+1}`` (BN); then ``classifier``."""
  _expect(model, cifar.VGG, "RepDistiller VGG")
  rows = []
  for g, layers in enumerate(model.groups):
    for i in range(len(layers)):
      rows += _conv(f"block{g}.{3 * i}", ("groups", g, i, 0), bias=True) + _bn(f"block{g}.{3 * i + 1}",
                                                                                ("groups", g, i, 1))
  return rows + _linear("classifier", ("classifier",))


def _mobilenetv2_table(model) -> list[Row]:
  """RepDistiller's models/mobilenetv2.py: ``conv1.{0,1}`` (conv, BN), ``blocks.{g}.{i}.conv.{0,1}``
  (expand), ``.{3,4}`` (depthwise), ``.{6,7}`` (project), ``conv2.{0,1}``, ``classifier.0``."""
  _expect(model, cifar.MobileNetV2, "RepDistiller MobileNetV2")
  rows = _conv("conv1.0", ("conv1",)) + _bn("conv1.1", ("bn1",))
  for g, blocks in enumerate(model.groups):
    for i in range(len(blocks)):
      src, dst = f"blocks.{g}.{i}.conv", ("groups", g, i)
      for k, (c, n) in enumerate(((0, 1), (3, 4), (6, 7)), 1):
        rows += _conv(f"{src}.{c}", (*dst, f"conv{k}")) + _bn(f"{src}.{n}", (*dst, f"bn{k}"))
  return rows + _conv("conv2.0", ("conv2",)) + _bn("conv2.1", ("bn2",)) + _linear("classifier.0", ("classifier",))


def _shufflenet_table(model) -> list[Row]:
  """RepDistiller's models/ShuffleNetv1.py (``layer{1-3}.{b}.conv{1-3}`` / ``bn{1-3}``) and
  ShuffleNetv2.py (``layer{1-3}.0`` the down-sampling unit, ``conv{1-5}`` / ``bn{1-5}``, then basic units
  ``conv{1-3}`` / ``bn{1-3}``; ``conv2``, ``bn2``): ``conv1``, ``bn1`` first, ``linear`` last."""
  if not isinstance(model, (cifar.ShuffleNetV1, cifar.ShuffleNetV2)):
    _expect(model, cifar.ShuffleNetV1, "RepDistiller ShuffleNet")
  v2 = isinstance(model, cifar.ShuffleNetV2)
  rows = _conv("conv1", ("conv1",)) + _bn("bn1", ("bn1",))
  for s, stage in enumerate(model.stages):
    for b, block in enumerate(stage):
      src, dst = f"layer{s + 1}.{b}", ("stages", s, b)
      for k in range(1, (5 if hasattr(block, "conv5") else 3) + 1):  # ShuffleV2's down-sampling unit: 5
        rows += _conv(f"{src}.conv{k}", (*dst, f"conv{k}")) + _bn(f"{src}.bn{k}", (*dst, f"bn{k}"))
  if v2:
    rows += _conv("conv2", ("conv2",)) + _bn("bn2", ("bn2",))
  return rows + _linear("linear", ("fc",))


_REPDISTILLER_TABLES = {"resnet": _cifar_resnet_table, "wrn": _wrn_table, "vgg": _vgg_table,
                        "mobilenet": _mobilenetv2_table, "shufflenet": _shufflenet_table}


def repdistiller_table(model: nnx.Module, arch: str) -> list[Row]:
  """The table of RepDistiller's network ``arch`` (its name or kdjax's, e.g. ``"MobileNetV2"`` or
  ``"mobilenetv2"``) onto ``model``, kdjax's build of it."""
  name = _kdjax_name(arch)
  return _REPDISTILLER_TABLES[get_model_spec(name).family](model)


def _expect(model, cls, what: str) -> None:
  if not isinstance(model, cls):
    raise TypeError(f"the {what} weights go into a kdjax {cls.__name__}, not a {type(model).__name__}")


def _kdjax_name(arch: str) -> str:
  """kdjax's name of RepDistiller network ``arch`` (RepDistiller's or kdjax's name)."""
  by_repdistiller = {v: k for k, v in REPDISTILLER_NAMES.items()}
  if arch in REPDISTILLER_NAMES:
    return arch
  if arch in by_repdistiller:
    return by_repdistiller[arch]
  if arch == "ResNet50":
    raise ValueError("RepDistiller's CIFAR ResNet50 (models/resnetv2.py) is not in kdjax's zoo (kdjax's resnet50 "
                     "is torchvision's ImageNet ResNet-50: a 7x7 stride-2 stem and a max-pool); its weights cannot "
                     "be imported")
  raise ValueError(f"no RepDistiller network {arch!r} in kdjax's zoo; importable: "
                   f"{', '.join(f'{k} ({v})' if k != v else k for k, v in REPDISTILLER_NAMES.items())}")


# --------------------------------------------------------------------------------------------
# Checking and placing.


def classifier_key(model_name: str) -> str:
  """The name of the classifier's weight in the PyTorch state dict of kdjax model ``model_name``'s source."""
  family = _family(model_name)
  if family in ("resnet_imagenet", "resnet", "wrn"):
    return "fc.weight"
  return {"vgg": "classifier.weight", "mobilenet": "classifier.0.weight", "shufflenet": "linear.weight"}[family]


def weights_num_classes(state_dict: Mapping[str, np.ndarray], model_name: str) -> int | None:
  """How many classes the weights predict (the rows of the classifier's weight, or the length of its
  bias), or ``None`` when the state dict holds neither."""
  weight = classifier_key(model_name)
  bias = weight[:-len("weight")] + "bias"
  for key, axis in ((weight, 0), (bias, 0)):
    if key in state_dict and np.ndim(state_dict[key]) >= 1:
      return int(np.shape(state_dict[key])[axis])
  return None


def _variable(model: nnx.Module, path: tuple) -> nnx.Variable:
  node = model
  for part in path:
    node = node[part] if isinstance(part, int) else getattr(node, part)
  return node


def _source_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The PyTorch shape of a kdjax variable of ``shape``."""
  if layout == "conv":
    kh, kw, i, o = shape
    return (o, i, kh, kw)
  if layout == "linear":
    return tuple(reversed(shape))
  return tuple(shape)


def _to_kdjax(a: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return np.transpose(a, (2, 3, 1, 0))
  if layout == "linear":
    return np.transpose(a)
  return a


def place_weights(state_dict: Mapping[str, np.ndarray], model: nnx.Module, table: Sequence[Row], *,
                  family: str) -> nnx.Module:
  """Checks ``state_dict`` against ``table`` (every missing, mis-shaped and unexpected tensor named in
  one ``ValueError``, ``family`` naming the source in it), then writes each tensor into ``model``'s
  variable (in place; ``model`` is returned). A variable of ``model`` that the table leaves out is an
  error: it would keep its random initialization."""
  variables = {}
  for name, path, layout in table:
    try:
      var = _variable(model, path)
    except (AttributeError, IndexError, KeyError, TypeError):
      raise ValueError(f"the {family} table names {'.'.join(map(str, path))} (for {name}), which the kdjax "
                       f"{type(model).__name__} does not have") from None
    variables[name] = (var, layout)
  # Every parameter and batch statistic is filled, and so is any other state of a model built on shapes alone
  # (nnx.eval_shape): none keeps a random initialization, none stays abstract.
  covered = {id(var) for var, _ in variables.values()}
  left = [".".join(map(str, p)) for p, v in nnx.to_flat_state(nnx.state(model))
          if id(_variable(model, p)) not in covered
          and (isinstance(v, (nnx.Param, nnx.BatchStat)) or isinstance(v.get_value(), jax.ShapeDtypeStruct))]
  if left:
    raise ValueError(f"the {family} table gives no weights for {len(left)} variables of the kdjax "
                     f"{type(model).__name__}: {', '.join(left[:12])}{', ...' if len(left) > 12 else ''}")
  expected = {name: _source_shape(tuple(var.shape), layout) for name, (var, layout) in variables.items()}
  ignore = [k for k in state_dict if k.endswith(IGNORED_SUFFIXES)]
  try:
    check_state_dict(state_dict, expected, family=family, ignore=ignore)
  except ValueError as e:
    hint = _looks_like(state_dict, model)
    raise ValueError(f"{e}" + (f" (the weights look like {hint})" if hint else "")) from None
  for name, (var, layout) in variables.items():
    var.set_value(jnp.asarray(_to_kdjax(np.asarray(state_dict[name]), layout), dtype=var.dtype))
  return model


# Names only one kind of network has, the kdjax class its weights go into, and what to call it (for the hint of
# an error: weights of another kind of network than the model's).
_KINDS = (
    (("layer4.0.conv1.weight", "fc.weight"), ImageNetResNet,
     "a torchvision ImageNet ResNet (kdjax resnet18, resnet34, resnet50)"),
    (("layer4.0.conv1.weight", "linear.weight"), None,
     "RepDistiller's CIFAR ResNet50 (models/resnetv2.py), which kdjax's zoo does not have"),
    (("layer3.0.conv1.weight", "fc.weight"), cifar.CifarResNet,
     "a RepDistiller CIFAR ResNet (kdjax resnet8 ... resnet110, resnet8x4, resnet32x4)"),
    (("block1.layer.0.conv1.weight",), cifar.WideResNet,
     "a RepDistiller wide ResNet (kdjax wrn_16_2, wrn_40_1, wrn_40_2)"),
    (("block0.0.weight", "classifier.weight"), cifar.VGG, "a RepDistiller VGG (kdjax vgg8, vgg13)"),
    (("blocks.0.0.conv.0.weight",), cifar.MobileNetV2, "RepDistiller's MobileNetV2 (kdjax mobilenetv2)"),
    (("layer1.0.conv5.weight", "linear.weight"), cifar.ShuffleNetV2, "RepDistiller's ShuffleV2 (kdjax shufflev2)"),
    (("layer1.0.conv3.weight", "linear.weight"), cifar.ShuffleNetV1, "RepDistiller's ShuffleV1 (kdjax shufflev1)"),
)


def _looks_like(state_dict: Mapping[str, np.ndarray], model: nnx.Module) -> str | None:
  """What kind of network a state dict that does not fit ``model`` seems to be, from names only that kind
  has, where it is not ``model``'s kind (a hint for the error); else None."""
  for names, cls, what in _KINDS:
    if all(n in state_dict for n in names):
      return None if cls is not None and isinstance(model, cls) else what
  return None


def _check_classes(state_dict: Mapping[str, np.ndarray], model_name: str, model: nnx.Module) -> None:
  """The weights' class count must be the model's (one line naming both, before the full check)."""
  classes = weights_num_classes(state_dict, model_name)
  head = _variable(model, _classifier_path(model_name))
  built = int(head.shape[-1])
  if classes is not None and classes != built:
    key = classifier_key(model_name)
    found = f"{key} {tuple(np.shape(state_dict[key]))}" if key in state_dict else f"{key[:-6]}bias"
    raise ValueError(f"the weights predict {classes} classes ({found}), but the kdjax {model_name} is built for "
                     f"{built}: build it with num_classes={classes} (or give weights trained on these classes)")


def _classifier_path(model_name: str) -> tuple[str, str]:
  family = _family(model_name)
  return ("classifier", "kernel") if family in ("vgg", "mobilenet") else ("fc", "kernel")


# --------------------------------------------------------------------------------------------
# The entry points.


def import_torchvision_resnet(state_dict: Mapping[str, np.ndarray], model: ImageNetResNet | None = None, *,
                              model_name: str | None = None, input_shape: Sequence[int] | None = None
                              ) -> ImageNetResNet:
  """torchvision's ``resnet18`` / ``resnet34`` / ``resnet50`` state dict placed into ``model``, a kdjax
  :class:`~kdjax.models.resnet.ImageNetResNet` (``create_model("resnet18", ...)``), which is returned.
  Without ``model``, kdjax's ``model_name`` is built for the weights' classes (``fc.weight``'s rows) and
  ``input_shape`` (default 224x224x3). The class count, then every tensor, is checked before any is
  placed (``num_batches_tracked`` is ignored)."""
  if model is None:
    if model_name is None:
      raise ValueError("give the kdjax model to fill, or model_name (resnet18, resnet34 or resnet50) to build one")
    return import_weights(state_dict, model_name, input_shape=input_shape)
  table = torchvision_resnet_table(model)  # a model of another kind fails here
  name = model_name or _resnet_name(model)
  _check_classes(state_dict, name, model)
  return place_weights(state_dict, model, table, family=f"torchvision {name}")


def _resnet_name(model: ImageNetResNet) -> str:
  depth = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}
  blocks = tuple(len(stage) for stage in model.stages)
  if isinstance(model.stages[0][0], Bottleneck):
    return "resnet50" if blocks == (3, 4, 6, 3) else f"ResNet {blocks}"
  return depth.get(blocks, f"ResNet {blocks}")


def import_repdistiller(state_dict: Mapping[str, np.ndarray], model: nnx.Module | None, arch: str, *,
                        input_shape: Sequence[int] | None = None) -> nnx.Module:
  """A RepDistiller checkpoint's state dict (``torch.load(path)["model"]``; :func:`load_state_dict`
  unwraps it) of network ``arch`` (RepDistiller's name, e.g. ``"resnet32x4"``, ``"MobileNetV2"``, or
  kdjax's, ``"mobilenetv2"``) placed into ``model``, kdjax's build of that network, which is returned.
  With ``model=None`` it is built for the weights' classes and ``input_shape`` (default 32x32x3). The
  class count, then every tensor, is checked before any is placed."""
  name = _kdjax_name(arch)
  if model is None:
    return import_weights(state_dict, name, input_shape=input_shape)
  table = repdistiller_table(model, name)  # a model of another kind fails here
  _check_classes(state_dict, name, model)
  return place_weights(state_dict, model, table, family=f"RepDistiller {REPDISTILLER_NAMES[name]}")


def supported_models() -> list[str]:
  """kdjax model names whose weights :func:`import_weights` imports."""
  return [n for n in model_names() if get_model_spec(n).family in TORCHVISION_FAMILIES
          or n in REPDISTILLER_NAMES]


def _family(model_name: str) -> str:
  if model_name not in supported_models():
    raise ValueError(f"no weight import for kdjax model {model_name!r}; importable: "
                     f"{', '.join(supported_models())} (torchvision's ImageNet ResNets, RepDistiller's CIFAR zoo)")
  return get_model_spec(model_name).family


def import_weights(weights: str | os.PathLike | Mapping[str, np.ndarray], model_name: str,
                   model: nnx.Module | None = None, *, input_shape: Sequence[int] | None = None,
                   **options) -> nnx.Module:
  """kdjax model ``model_name`` with the weights of ``weights`` (a ``.pth`` / ``.pt`` / ``.safetensors``
  file, or a state dict of NumPy arrays or tensors), from the source its family names: torchvision for
  ``resnet18`` / ``resnet34`` / ``resnet50``, RepDistiller for the CIFAR zoo (:func:`supported_models`).

  ``model``: the kdjax model to fill (in place), built for the right classes and input; without it one
  is built (``create_model(model_name, ...)`` with ``options``) for the classes the weights predict and
  ``input_shape`` (default the model's designed one). A wrong model name, another class count, or any
  missing, mis-shaped or unexpected tensor is a ``ValueError`` naming it, raised before any weight is
  placed. The model is in inference mode when called with ``train=False`` (BatchNorm's running
  averages)."""
  family = _family(model_name)
  state_dict = load_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else _numpy(weights)
  if model is None:  # built on shapes alone (no random initialization to pay for); every variable is then placed
    shape = get_model_spec(model_name).input_shape if input_shape is None else tuple(input_shape)
    classes = weights_num_classes(state_dict, model_name) or 2
    model = nnx.eval_shape(lambda: create_model(model_name, num_classes=classes, input_shape=shape, **options))
  if family in TORCHVISION_FAMILIES:
    return import_torchvision_resnet(state_dict, model, model_name=model_name)
  return import_repdistiller(state_dict, model, model_name)


def _numpy(state_dict: Mapping) -> dict[str, np.ndarray]:
  """A state dict of tensors (torch, JAX or NumPy) as NumPy arrays, float tensors as float32."""
  out = {}
  for k, v in state_dict.items():
    if hasattr(v, "detach"):  # a torch tensor
      v = v.detach().cpu()
      v = (v.float() if v.is_floating_point() else v).numpy()
    out[k] = np.asarray(v)
  return out


# --------------------------------------------------------------------------------------------
# Input normalization.


class InputNormalized(nnx.Module):
  """``model`` behind a per-channel input normalization, ``(x - mean) / std`` on the last axis:
  what a network trained on normalized images needs when kdjax feeds it pixels in [0, 1]. Calls
  and returns as ``model`` does (``(logits, feats)``, the same feature taps); ``mean`` and ``std``
  are constants of the graph, not variables."""

  def __init__(self, model: nnx.Module, mean: Sequence[float], std: Sequence[float]):
    self.model = model
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    mean = jnp.asarray(self.mean, x_BxHxWxC.dtype)
    std = jnp.asarray(self.std, x_BxHxWxC.dtype)
    return self.model((x_BxHxWxC - mean) / std, train=train, rngs=rngs)


def with_input_normalization(model: nnx.Module, norm: str | tuple[Sequence[float], Sequence[float]] | None,
                             channels: int | None = None) -> nnx.Module:
  """``model`` behind the input normalization ``norm``: a name of :data:`INPUT_NORMS` (``"imagenet"``,
  ``"cifar100"``), a ``(mean, std)`` pair, or ``None`` / ``"none"`` (``model`` itself). ``channels``,
  when given, must be the length of mean and std."""
  if norm is None or norm == "none":
    return model
  if isinstance(norm, str):
    if norm not in INPUT_NORMS:
      raise ValueError(f"unknown input normalization {norm!r}; use one of none, {', '.join(INPUT_NORMS)}")
    mean, std = INPUT_NORMS[norm]
  else:
    mean, std = norm
  if len(mean) != len(std) or (channels is not None and len(mean) != channels):
    raise ValueError(f"input normalization: mean {tuple(mean)} and std {tuple(std)} must have one value per input "
                     f"channel{f' ({channels})' if channels is not None else ''}")
  if any(s <= 0 for s in std):
    raise ValueError(f"input normalization: every std must be > 0, got {tuple(std)}")
  return InputNormalized(model, mean, std)
