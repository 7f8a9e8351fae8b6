"""Hinton et al. (2015)'s MNIST multilayer perceptrons.

Teacher: 784-1200-1200-10 with dropout (the paper's strongly regularised net);
student: 784-800-800-10 with no regulariser of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx


class MLP(nnx.Module):
  """ReLU MLP over flattened images, returning ``(logits, feats)``.

  ``feats`` holds ``"block{i}"`` for each hidden layer's activation and
  ``"pre_logits"`` (the last hidden activation, the input of the classifier).
  """

  def __init__(
      self,
      input_shape: Sequence[int],
      hidden: Sequence[int],
      num_classes: int,
      *,
      dropout_rate: float = 0.0,
      input_dropout_rate: float = 0.0,
      rngs: nnx.Rngs,
  ):
    self.input_shape = tuple(input_shape)
    sizes = [math.prod(self.input_shape), *hidden]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)
    self.input_dropout = nnx.Dropout(input_dropout_rate)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    x = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1)
    key_in, key_hidden = jax.random.split(rngs) if rngs is not None else (None, None)
    x = self.input_dropout(x, deterministic=not train, rngs=key_in)
    feats = {}
    for i, layer in enumerate(self.hidden):
      x = jax.nn.relu(layer(x))
      feats[f"block{i + 1}"] = x
      if key_hidden is not None:
        key_hidden, key = jax.random.split(key_hidden)
      else:
        key = None
      x = self.dropout(x, deterministic=not train, rngs=key)
    feats["pre_logits"] = feats[f"block{len(self.hidden)}"]
    return self.head(x), feats
