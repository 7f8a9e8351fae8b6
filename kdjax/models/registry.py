"""Model registry: a config names a model, the registry builds it.

Every registered model is a Flax NNX module whose ``__call__(x, *, train, rngs)``
returns ``(logits, feats)``; ``feats`` is a dict of named intermediate tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from flax import nnx

from kdjax.models.cnn import SmallCNN
from kdjax.models.mlp import MLP


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  build: Callable[..., nnx.Module]  # build(input_shape, num_classes, rngs=...) -> module
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


def create_model(name: str, *, num_classes: int, input_shape: Sequence[int], seed: int = 0) -> nnx.Module:
  """Builds registered model ``name`` for images of ``input_shape`` (H, W, C)."""
  spec = get_model_spec(name)
  input_shape = tuple(int(d) for d in input_shape)
  if input_shape != spec.input_shape:
    raise ValueError(
        f"model {name!r} expects images of shape {spec.input_shape} (H, W, C), "
        f"but the data has images of shape {input_shape}")
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}")
  return spec.build(input_shape, num_classes, rngs=nnx.Rngs(params=seed))


register_model(ModelSpec(
    "mlp1200", lambda s, n, rngs: MLP(s, (1200, 1200), n, dropout_rate=0.5, input_dropout_rate=0.2, rngs=rngs),
    (28, 28, 1), "Hinton et al. 2015 MNIST teacher: 784-1200-1200-10, dropout 0.2 (input) / 0.5 (hidden)"))
register_model(ModelSpec(
    "mlp800", lambda s, n, rngs: MLP(s, (800, 800), n, rngs=rngs),
    (28, 28, 1), "Hinton et al. 2015 MNIST student: 784-800-800-10, no dropout"))
register_model(ModelSpec(
    "cnn64", lambda s, n, rngs: SmallCNN(s, n, width=64, dropout_rate=0.5, rngs=rngs),
    (32, 32, 3), "small CNN teacher for 32x32 colour images: conv3x3 64/128 + pooling + dense 256"))
register_model(ModelSpec(
    "cnn16", lambda s, n, rngs: SmallCNN(s, n, width=16, rngs=rngs),
    (32, 32, 3), "small CNN student for 32x32 colour images: conv3x3 16/32 + pooling + dense 256"))
