"""On-device augmentation (pure, jittable functions over float image batches), and fixed-size
evaluation batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float(images_uint8: jax.Array) -> jax.Array:
  """uint8 ``[B, H, W, C]`` in [0, 255] -> float32 in [0, 1]."""
  return images_uint8.astype(jnp.float32) / 255.0


def jitter(key: jax.Array, images_BxHxWxC: jax.Array, max_shift: int = 2) -> jax.Array:
  """Random translation of each image by up to ``max_shift`` pixels along each axis.

  Shifts are drawn uniformly from ``{-max_shift, ..., max_shift}`` per image and
  axis; pixels shifted in are zero (background), as in Hinton et al. (2015)'s
  "jittered by up to two pixels in any direction".
  """
  if max_shift == 0:
    return images_BxHxWxC
  if max_shift < 0:
    raise ValueError(f"max_shift must be >= 0, got {max_shift}")
  b, h, w, c = images_BxHxWxC.shape
  s = max_shift
  padded = jnp.pad(images_BxHxWxC, ((0, 0), (s, s), (s, s), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * s + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_hflip(key: jax.Array, images_BxHxWxC: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2 (the CIFAR recipe's flip)."""
  flip = jax.random.bernoulli(key, 0.5, (images_BxHxWxC.shape[0], 1, 1, 1))
  return jnp.where(flip, images_BxHxWxC[:, :, ::-1, :], images_BxHxWxC)


def augment(key: jax.Array, images_uint8: jax.Array, jitter_pixels: int = 0, hflip: bool = False) -> jax.Array:
  """uint8 images as float in [0, 1], jittered by up to ``jitter_pixels`` and randomly flipped
  when asked: the train steps' augmentation, one key for all of it."""
  x = to_float(images_uint8)
  k_jitter, k_flip = jax.random.split(key)
  if jitter_pixels:
    x = jitter(k_jitter, x, jitter_pixels)
  if hflip:
    x = random_hflip(k_flip, x)
  return x


def padded_batches(images, labels, batch_size: int):
  """``(images, labels, mask)`` batches of exactly ``batch_size`` over a split: the last one is
  padded with zeros and masked, so an evaluation compiles once."""
  n = len(labels)
  for start in range(0, n, batch_size):
    xb, yb = images[start:start + batch_size], labels[start:start + batch_size]
    pad = batch_size - len(yb)
    mask = jnp.arange(batch_size) < len(yb)
    if pad:
      xb = jnp.concatenate([xb, jnp.zeros((pad, *xb.shape[1:]), xb.dtype)])
      yb = jnp.concatenate([yb, jnp.zeros((pad,), yb.dtype)])
    yield xb, yb, mask
