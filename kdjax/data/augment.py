"""On-device augmentation (pure, jittable functions over float image batches), and fixed-size
evaluation batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float(images_uint8: jax.Array) -> jax.Array:
  """A model's input from the stored data: uint8 ``[B, H, W, C]`` images in [0, 255] -> float32
  in [0, 1]; token ids (int32 ``[B, L]``, text) pass through unchanged."""
  if images_uint8.dtype != jnp.uint8 and jnp.issubdtype(images_uint8.dtype, jnp.integer):
    return images_uint8
  return images_uint8.astype(jnp.float32) / 255.0


def jitter_offsets(key: jax.Array, n: int, max_shift: int) -> jax.Array:
  """``[n, 2]`` crop offsets (row, column) in ``{0, ..., 2·max_shift}`` into the zero-padded
  images: offset ``max_shift`` is no shift."""
  return jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)


def flip_draws(key: jax.Array, n: int) -> jax.Array:
  """``[n]`` booleans: which images are mirrored (probability 1/2 each)."""
  return jax.random.bernoulli(key, 0.5, (n, 1, 1, 1)).reshape(n)


def shift_crop(images_BxHxWxC: jax.Array, offsets_Bx2: jax.Array, max_shift: int) -> jax.Array:
  """Pads every image with ``max_shift`` zero pixels on each side and crops it back to its size at
  ``offsets`` (:func:`jitter_offsets`): a translation with zeros shifted in."""
  b, h, w, c = images_BxHxWxC.shape
  s = max_shift
  padded = jnp.pad(images_BxHxWxC, ((0, 0), (s, s), (s, s), (0, 0)))

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets_Bx2)


def jitter(key: jax.Array, images_BxHxWxC: jax.Array, max_shift: int = 2) -> jax.Array:
  """Random translation of each image by up to ``max_shift`` pixels along each axis.

  Shifts are drawn uniformly from ``{-max_shift, ..., max_shift}`` per image and
  axis; pixels shifted in are zero (background), as in Hinton et al. (2015)'s
  "jittered by up to two pixels in any direction". With ``max_shift=4`` this is the CIFAR
  recipe's random crop with zero padding 4 (torchvision's ``RandomCrop(32, padding=4)``).
  """
  if max_shift == 0:
    return images_BxHxWxC
  if max_shift < 0:
    raise ValueError(f"max_shift must be >= 0, got {max_shift}")
  return shift_crop(images_BxHxWxC, jitter_offsets(key, images_BxHxWxC.shape[0], max_shift), max_shift)


def random_hflip(key: jax.Array, images_BxHxWxC: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2 (the CIFAR recipe's flip)."""
  flip = flip_draws(key, images_BxHxWxC.shape[0])[:, None, None, None]
  return jnp.where(flip, images_BxHxWxC[:, :, ::-1, :], images_BxHxWxC)


def augment_draws(key: jax.Array, n: int, jitter_pixels: int = 0, hflip: bool = False) -> dict[str, jax.Array]:
  """The random draws :func:`augment` makes from ``key`` for ``n`` images: ``"offsets"``
  (:func:`jitter_offsets`, when ``jitter_pixels``) and ``"flips"`` (:func:`flip_draws`, when
  ``hflip``). A host reference can replay them to check the device pipeline."""
  k_jitter, k_flip = jax.random.split(key)
  draws = {}
  if jitter_pixels:
    draws["offsets"] = jitter_offsets(k_jitter, n, jitter_pixels)
  if hflip:
    draws["flips"] = flip_draws(k_flip, n)
  return draws


def augment(key: jax.Array, images_uint8: jax.Array, jitter_pixels: int = 0, hflip: bool = False) -> jax.Array:
  """uint8 images as float in [0, 1], jittered (shifted with zero padding, i.e. randomly cropped)
  by up to ``jitter_pixels`` and randomly flipped when asked: the train steps' augmentation, one
  key for all of it (the draws are :func:`augment_draws`)."""
  if jitter_pixels < 0:
    raise ValueError(f"jitter_pixels must be >= 0, got {jitter_pixels}")
  x = to_float(images_uint8)
  if (jitter_pixels or hflip) and x.ndim != 4:
    raise ValueError(f"jitter and flips augment images [B, H, W, C], not inputs of shape {x.shape} "
                     "(token sequences): turn them off (jitter=0, hflip=false)")
  draws = augment_draws(key, x.shape[0], jitter_pixels, hflip)
  if jitter_pixels:
    x = shift_crop(x, draws["offsets"], jitter_pixels)
  if hflip:
    x = jnp.where(draws["flips"][:, None, None, None], x[:, :, ::-1, :], x)
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
