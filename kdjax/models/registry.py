"""Model registry: a config names a model, the registry builds it.

Every registered model is a Flax NNX module whose ``__call__(x, *, train, rngs)``
returns ``(logits, feats)``; ``feats`` is a dict of named intermediate tensors.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence

from flax import nnx

from kdjax.models import cifar, resnet
from kdjax.models.cnn import SmallCNN
from kdjax.models.decoder import DecoderLM
from kdjax.models.mlp import MLP
from kdjax.models.text import RecurrentClassifier, TransformerClassifier


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  build: Callable[..., nnx.Module]  # build(input_shape, num_classes, rngs=..., **options) -> module
  # The input shape the model is designed for: an image (H, W, C), or a token sequence (L,).
  input_shape: tuple[int, ...]
  description: str
  # "mlp", "cnn", "resnet", "wrn", "vgg", "mobilenet", "shufflenet", "resnet_imagenet", "text", "lm"
  family: str
  # Images only. None: the model takes images of ``input_shape`` only. An int: the model is fully
  # convolutional with global pooling and takes any (H, W, C) whose H and W it divides.
  total_stride: int | None = None
  # "image": float pixels (H, W, C). "text": int32 token ids (L,), right-padded with
  # ``text.PAD_ID``, of any length L >= 1 (``input_shape`` is only the designed length).
  inputs: str = "image"


INPUT_KINDS = ("image", "text")
_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
  if spec.name in _REGISTRY:
    raise ValueError(f"model {spec.name!r} is already registered")
  if spec.inputs not in INPUT_KINDS:
    raise ValueError(f"model {spec.name!r}: inputs must be one of {', '.join(INPUT_KINDS)}, got {spec.inputs!r}")
  if spec.inputs == "text" and (len(spec.input_shape) != 1 or spec.total_stride is not None):
    raise ValueError(f"text model {spec.name!r} needs input_shape (L,) and no total_stride")
  _REGISTRY[spec.name] = spec


def model_names() -> list[str]:
  return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}") from None


def _options(spec: ModelSpec) -> dict[str, inspect.Parameter]:
  params = inspect.signature(spec.build).parameters
  return {k: p for k, p in params.items() if k not in ("input_shape", "num_classes", "rngs")}


def check_model_options(name: str, options: dict) -> None:
  """Fails if model ``name`` has no such option (e.g. ``input_dropout_rate`` on a CNN)."""
  spec = get_model_spec(name)
  accepted = set(_options(spec))
  unknown = sorted(set(options) - accepted)
  if unknown:
    raise ValueError(f"model {name!r} has no option {', '.join(unknown)}; it takes: "
                     f"{', '.join(sorted(accepted)) or 'none'}")


def _describe(input_shape: tuple[int, ...]) -> str:
  if len(input_shape) == 1:
    return f"token sequences of length {input_shape[0]}"
  if len(input_shape) == 3:
    return f"images of shape {input_shape}"
  return f"inputs of shape {input_shape}"


def check_input_shape(spec: ModelSpec, input_shape: Sequence[int]) -> None:
  """Fails unless model ``spec`` can take inputs of ``input_shape``: images (H, W, C) for an image
  model, token sequences (L,) with L >= 1 for a text model."""
  input_shape = tuple(int(d) for d in input_shape)
  if spec.inputs == "text":
    if len(input_shape) != 1 or input_shape[0] < 1:
      raise ValueError(f"model {spec.name!r} reads token sequences of shape (L,) with L >= 1, "
                       f"but the data has {_describe(input_shape)}")
    return
  if len(input_shape) == 1:
    raise ValueError(f"model {spec.name!r} reads images (H, W, C), but the data has {_describe(input_shape)}")
  if spec.total_stride is None:
    if input_shape != spec.input_shape:
      raise ValueError(
          f"model {spec.name!r} expects images of shape {spec.input_shape} (H, W, C), "
          f"but the data has images of shape {input_shape}")
    return
  s = spec.total_stride
  if len(input_shape) != 3 or min(input_shape) < 1 or input_shape[0] % s or input_shape[1] % s:
    raise ValueError(
        f"model {spec.name!r} needs images of shape (H, W, C) with H and W multiples of its total "
        f"stride {s} (it is designed for {spec.input_shape}), but the data has images of shape {input_shape}")


def create_model(name: str, *, num_classes: int, input_shape: Sequence[int], seed: int = 0,
                 **options) -> nnx.Module:
  """Builds registered model ``name`` for inputs of ``input_shape``: images (H, W, C) or token
  sequences (L,).

  MLPs and the small CNNs take only their designed ``spec.input_shape``; the
  fully convolutional zoo (``spec.total_stride`` set) takes any channel count and
  any H, W that are multiples of its total stride; text models take any length L >= 1.

  ``options`` override the model's defaults (e.g. ``dropout_rate=0.2``); an
  option the model does not have is an error, and so is a missing required one
  (a text model's ``vocab_size``).
  """
  spec = get_model_spec(name)
  input_shape = tuple(int(d) for d in input_shape)
  check_input_shape(spec, input_shape)
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}")
  check_model_options(name, options)
  missing = [k for k, p in _options(spec).items() if p.default is inspect.Parameter.empty and k not in options]
  if missing:
    raise ValueError(f"model {name!r} needs the option {', '.join(missing)}"
                     + (" (the tokenizer's vocabulary size, padding included)" if missing == ["vocab_size"] else ""))
  return spec.build(input_shape, num_classes, rngs=nnx.Rngs(params=seed), **options)


def _mlp_teacher(input_shape, num_classes, *, rngs, dropout_rate=0.5, input_dropout_rate=0.2):
  return MLP(input_shape, (1200, 1200), num_classes, dropout_rate=dropout_rate,
             input_dropout_rate=input_dropout_rate, rngs=rngs)


def _mlp_plain(width):
  def build(input_shape, num_classes, *, rngs, dropout_rate=0.0, input_dropout_rate=0.0):
    return MLP(input_shape, (width, width), num_classes, dropout_rate=dropout_rate,
               input_dropout_rate=input_dropout_rate, rngs=rngs)
  return build


def _cnn(width, default_dropout):
  def build(input_shape, num_classes, *, rngs, dropout_rate=default_dropout):
    return SmallCNN(input_shape, num_classes, width=width, dropout_rate=dropout_rate, rngs=rngs)
  return build


register_model(ModelSpec(
    "mlp1200", _mlp_teacher, (28, 28, 1),
    "Hinton et al. 2015 MNIST teacher: 784-1200-1200-10, dropout 0.2 (input) / 0.5 (hidden) by default",
    family="mlp"))
register_model(ModelSpec(
    "mlp800", _mlp_plain(800), (28, 28, 1), "Hinton et al. 2015 MNIST student: 784-800-800-10, no dropout",
    family="mlp"))
register_model(ModelSpec(
    "mlp100", _mlp_plain(100), (28, 28, 1),
    "small MNIST student for teacher-assistant chains: 784-100-100-10, no dropout", family="mlp"))
register_model(ModelSpec(
    "cnn64", _cnn(64, 0.5), (32, 32, 3),
    "small CNN teacher for 32x32 colour images: conv3x3 64/128 + pooling + dense 256, dropout 0.5",
    family="cnn"))
register_model(ModelSpec(
    "cnn16", _cnn(16, 0.0), (32, 32, 3),
    "small CNN student for 32x32 colour images: conv3x3 16/32 + pooling + dense 256",
    family="cnn"))


# The CIFAR zoo of RepDistiller (Tian et al. 2020) and torchvision's ImageNet ResNets; see
# kdjax/models/cifar.py and kdjax/models/resnet.py for the architectures and feature taps.
_CIFAR = (32, 32, 3)


def _cifar_resnet(depth, filters):
  def build(input_shape, num_classes, *, rngs):
    return cifar.CifarResNet(depth, filters, num_classes, in_channels=input_shape[-1], rngs=rngs)
  return build


def _wrn(depth, widen):
  def build(input_shape, num_classes, *, rngs, dropout_rate=0.0):
    return cifar.WideResNet(depth, widen, num_classes, dropout_rate=dropout_rate, in_channels=input_shape[-1],
                            rngs=rngs)
  return build


def _vgg(cfg):
  def build(input_shape, num_classes, *, rngs):
    return cifar.VGG(cifar.VGG_CFG[cfg], num_classes, in_channels=input_shape[-1], rngs=rngs)
  return build


def _mobilenetv2(input_shape, num_classes, *, rngs, width_mult=0.5, expansion=6):
  return cifar.MobileNetV2(num_classes, expansion=expansion, width_mult=width_mult, in_channels=input_shape[-1],
                           rngs=rngs)


def _shufflev1(input_shape, num_classes, *, rngs):
  return cifar.ShuffleNetV1(num_classes, in_channels=input_shape[-1], rngs=rngs)


def _shufflev2(input_shape, num_classes, *, rngs):
  return cifar.ShuffleNetV2(num_classes, in_channels=input_shape[-1], rngs=rngs)


def _imagenet_resnet(fn):
  def build(input_shape, num_classes, *, rngs):
    return fn(num_classes, in_channels=input_shape[-1], rngs=rngs)
  return build


for _depth in (8, 14, 20, 32, 44, 56, 110):
  register_model(ModelSpec(
      f"resnet{_depth}", _cifar_resnet(_depth, (16, 16, 32, 64)), _CIFAR,
      f"He et al. 2016 CIFAR ResNet-{_depth} (RepDistiller): BasicBlocks, filters 16/16/32/64",
      family="resnet", total_stride=cifar.TOTAL_STRIDE["resnet"]))
for _depth in (8, 32):
  register_model(ModelSpec(
      f"resnet{_depth}x4", _cifar_resnet(_depth, (32, 64, 128, 256)), _CIFAR,
      f"He et al. 2016 CIFAR ResNet-{_depth}, 4x wider (RepDistiller): BasicBlocks, filters 32/64/128/256",
      family="resnet", total_stride=cifar.TOTAL_STRIDE["resnet"]))
for _depth, _widen in ((16, 2), (40, 1), (40, 2)):
  register_model(ModelSpec(
      f"wrn_{_depth}_{_widen}", _wrn(_depth, _widen), _CIFAR,
      f"Zagoruyko & Komodakis 2016 wide ResNet WRN-{_depth}-{_widen} (RepDistiller), dropout 0 by default",
      family="wrn", total_stride=cifar.TOTAL_STRIDE["wrn"]))
register_model(ModelSpec(
    "vgg8", _vgg("S"), _CIFAR,
    "Simonyan & Zisserman 2015 VGG-8 with BN (RepDistiller cfg 'S'): conv 64/128/256/512/512, one linear layer",
    family="vgg", total_stride=cifar.TOTAL_STRIDE["vgg"]))
register_model(ModelSpec(
    "vgg13", _vgg("B"), _CIFAR,
    "Simonyan & Zisserman 2015 VGG-13 with BN (RepDistiller cfg 'B'): 2x conv 64/128/256/512/512, one linear layer",
    family="vgg", total_stride=cifar.TOTAL_STRIDE["vgg"]))
register_model(ModelSpec(
    "mobilenetv2", _mobilenetv2, _CIFAR,
    "Sandler et al. 2018 MobileNetV2 for CIFAR (RepDistiller's mobile_half): width 0.5, expansion 6",
    family="mobilenet", total_stride=cifar.TOTAL_STRIDE["mobilenet"]))
register_model(ModelSpec(
    "shufflev1", _shufflev1, _CIFAR,
    "Zhang et al. 2018 ShuffleNet v1 for CIFAR (RepDistiller): groups 3, widths 240/480/960, blocks 4/8/4",
    family="shufflenet", total_stride=cifar.TOTAL_STRIDE["shufflenet"]))
register_model(ModelSpec(
    "shufflev2", _shufflev2, _CIFAR,
    "Ma et al. 2018 ShuffleNet v2 for CIFAR (RepDistiller, net size 1): widths 116/232/464/1024, blocks 3/7/3",
    family="shufflenet", total_stride=cifar.TOTAL_STRIDE["shufflenet"]))
for _name, _fn in (("resnet18", resnet.resnet18), ("resnet34", resnet.resnet34), ("resnet50", resnet.resnet50)):
  register_model(ModelSpec(
      _name, _imagenet_resnet(_fn), (224, 224, 3),
      f"He et al. 2016 ImageNet {_name.replace('resnet', 'ResNet-')} (torchvision): 7x7/2 stem, 3x3/2 max-pool, "
      "4 stages", family="resnet_imagenet", total_stride=resnet.TOTAL_STRIDE))


# Text classifiers (kdjax/models/text.py): int32 token ids (L,), right-padded with PAD_ID, any L >= 1.
_TEXT = (64,)


def _bilstm(input_shape, num_classes, *, rngs, vocab_size, embed_dim=128, hidden=128, dropout_rate=0.3):
  return RecurrentClassifier(vocab_size, num_classes, embed_dim=embed_dim, hidden=hidden, cell="lstm",
                             bidirectional=True, dropout_rate=dropout_rate, rngs=rngs)


def _gru_small(input_shape, num_classes, *, rngs, vocab_size, embed_dim=64, hidden=64, dropout_rate=0.0):
  return RecurrentClassifier(vocab_size, num_classes, embed_dim=embed_dim, hidden=hidden, cell="gru",
                             bidirectional=False, dropout_rate=dropout_rate, rngs=rngs)


def _transformer_small(input_shape, num_classes, *, rngs, vocab_size, embed_dim=64, mlp_dim=128, num_heads=4,
                       depth=2, dropout_rate=0.1):
  return TransformerClassifier(vocab_size, num_classes, embed_dim=embed_dim, num_heads=num_heads, mlp_dim=mlp_dim,
                               depth=depth, dropout_rate=dropout_rate, rngs=rngs)


register_model(ModelSpec(
    "bilstm", _bilstm, _TEXT,
    "text teacher: embedding 128, bidirectional LSTM 2x128, masked mean pool, dropout 0.3",
    family="text", inputs="text"))
register_model(ModelSpec(
    "gru_small", _gru_small, _TEXT,
    "text student: embedding 64, GRU 64, masked mean pool, no dropout", family="text", inputs="text"))
register_model(ModelSpec(
    "transformer_small", _transformer_small, _TEXT,
    "text encoder: embedding 64 + sinusoidal positions, 2 pre-LN blocks (4 heads, MLP 128, GELU), "
    "dropout 0.1, masked mean pool", family="text", inputs="text"))


# Decoder-only language models (kdjax/models/decoder.py): int32 token ids (L,) -> next-token logits
# [B, L, V]. The vocabulary is ``num_classes``; the context ``max_len`` is the input length unless given.
_LM = (128,)


def _lm(dim, depth, num_heads, mlp_dim):
  def build(input_shape, num_classes, *, rngs, dim=dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
            max_len=None, positions="rope", dropout_rate=0.0):
    return DecoderLM(num_classes, dim=dim, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
                     max_len=input_shape[0] if max_len is None else max_len, positions=positions,
                     dropout_rate=dropout_rate, rngs=rngs)
  return build


for _name, (_dim, _depth, _heads, _mlp) in (("lm_tiny", (64, 2, 4, 256)), ("lm_small", (128, 4, 4, 512)),
                                            ("lm_base", (256, 6, 8, 1024))):
  register_model(ModelSpec(
      _name, _lm(_dim, _depth, _heads, _mlp), _LM,
      f"decoder-only LM: width {_dim}, {_depth} pre-LN blocks ({_heads} heads, MLP {_mlp}, GELU), RoPE, "
      "tied embeddings; vocabulary = num_classes, context = input length", family="lm", inputs="text"))
