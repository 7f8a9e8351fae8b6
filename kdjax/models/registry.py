"""Model registry: a config names a model, the registry builds it.

Every registered model is a Flax NNX module whose ``__call__(x, *, train, rngs)``
returns ``(logits, feats)``; ``feats`` is a dict of named intermediate tensors.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence

from flax import nnx

from kdjax.models.cnn import SmallCNN
from kdjax.models.mlp import MLP


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  build: Callable[..., nnx.Module]  # build(input_shape, num_classes, rngs=..., **options) -> module
  input_shape: tuple[int, ...]  # the image shape (H, W, C) the model is designed for
  description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
  if spec.name in _REGISTRY:
    raise ValueError(f"model {spec.name!r} is already registered")
  _REGISTRY[spec.name] = spec


def model_names() -> list[str]:
  return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}") from None


def check_model_options(name: str, options: dict) -> None:
  """Fails if model ``name`` has no such option (e.g. ``input_dropout_rate`` on a CNN)."""
  spec = get_model_spec(name)
  accepted = set(inspect.signature(spec.build).parameters) - {"input_shape", "num_classes", "rngs"}
  unknown = sorted(set(options) - accepted)
  if unknown:
    raise ValueError(f"model {name!r} has no option {', '.join(unknown)}; it takes: "
                     f"{', '.join(sorted(accepted)) or 'none'}")


def create_model(name: str, *, num_classes: int, input_shape: Sequence[int], seed: int = 0,
                 **options) -> nnx.Module:
  """Builds registered model ``name`` for images of ``input_shape`` (H, W, C).

  ``options`` override the model's defaults (e.g. ``dropout_rate=0.2``); an
  option the model does not have is an error.
  """
  spec = get_model_spec(name)
  input_shape = tuple(int(d) for d in input_shape)
  if input_shape != spec.input_shape:
    raise ValueError(
        f"model {name!r} expects images of shape {spec.input_shape} (H, W, C), "
        f"but the data has images of shape {input_shape}")
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}")
  check_model_options(name, options)
  return spec.build(input_shape, num_classes, rngs=nnx.Rngs(params=seed), **options)


def _mlp_teacher(input_shape, num_classes, *, rngs, dropout_rate=0.5, input_dropout_rate=0.2):
  return MLP(input_shape, (1200, 1200), num_classes, dropout_rate=dropout_rate,
             input_dropout_rate=input_dropout_rate, rngs=rngs)


def _mlp_student(input_shape, num_classes, *, rngs, dropout_rate=0.0, input_dropout_rate=0.0):
  return MLP(input_shape, (800, 800), num_classes, dropout_rate=dropout_rate,
             input_dropout_rate=input_dropout_rate, rngs=rngs)


def _cnn(width, default_dropout):
  def build(input_shape, num_classes, *, rngs, dropout_rate=default_dropout):
    return SmallCNN(input_shape, num_classes, width=width, dropout_rate=dropout_rate, rngs=rngs)
  return build


register_model(ModelSpec(
    "mlp1200", _mlp_teacher, (28, 28, 1),
    "Hinton et al. 2015 MNIST teacher: 784-1200-1200-10, dropout 0.2 (input) / 0.5 (hidden) by default"))
register_model(ModelSpec(
    "mlp800", _mlp_student, (28, 28, 1), "Hinton et al. 2015 MNIST student: 784-800-800-10, no dropout"))
register_model(ModelSpec(
    "cnn64", _cnn(64, 0.5), (32, 32, 3),
    "small CNN teacher for 32x32 colour images: conv3x3 64/128 + pooling + dense 256, dropout 0.5"))
register_model(ModelSpec(
    "cnn16", _cnn(16, 0.0), (32, 32, 3),
    "small CNN student for 32x32 colour images: conv3x3 16/32 + pooling + dense 256"))
