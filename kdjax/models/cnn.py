"""A small CNN pair for 32x32 colour images (CIFAR-sized inputs).

Two blocks of ``conv 3x3 -> ReLU -> 2x2 max-pool`` (``width`` then ``2*width``
channels), a 256-unit dense layer and the classifier. The teacher has
``width=64``, the student ``width=16``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx


class SmallCNN(nnx.Module):
  """Returns ``(logits, feats)`` with ``feats`` = ``block1``, ``block2``, ``pre_logits``."""

  def __init__(
      self,
      input_shape: Sequence[int],
      num_classes: int,
      *,
      width: int = 64,
      dense: int = 256,
      dropout_rate: float = 0.0,
      rngs: nnx.Rngs,
  ):
    self.input_shape = tuple(input_shape)
    h, w, c = self.input_shape
    if h % 4 or w % 4:
      raise ValueError(f"SmallCNN needs image sides divisible by 4, got {self.input_shape}")
    self.conv1 = nnx.Conv(c, width, (3, 3), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), padding="SAME", rngs=rngs)
    self.fc = nnx.Linear((h // 4) * (w // 4) * 2 * width, dense, rngs=rngs)
    self.head = nnx.Linear(dense, num_classes, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  def __call__(self, x_BxHxWxC: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    b1 = nnx.max_pool(jax.nn.relu(self.conv1(x_BxHxWxC)), (2, 2), strides=(2, 2))
    b2 = nnx.max_pool(jax.nn.relu(self.conv2(b1)), (2, 2), strides=(2, 2))
    pre = jax.nn.relu(self.fc(b2.reshape(b2.shape[0], -1)))
    x = self.dropout(pre, deterministic=not train, rngs=rngs)
    return self.head(x), {"block1": b1, "block2": b2, "pre_logits": pre}
