"""What one step shows the student and the teacher: augmented views, unlabelled images, and the
keys each step draws.

A step's randomness comes from two streams held in the state: the data stream
(``state.data_rng``: augmentation) and the run's own (``state.rng``: dropout and the method's
draws). Both advance by the same split, so a single run, which starts them from the same key, is
one stream; a sweep's students share the data stream and keep their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from kdjax.data.augment import augment


class Inputs(NamedTuple):
  """One step's inputs after the input transforms: the student's images ``x``, the teacher's
  ``x_t`` (the same array unless the teacher sees its own view), unlabelled images ``x_u``
  (or ``None``), and the teacher's outputs on ``x_t`` and ``x_u`` once a teacher source has run."""

  x: jax.Array
  x_t: jax.Array | None = None
  x_u: jax.Array | None = None
  teacher: Any = None  # (logits, feats), {name: (logits, feats)} for several teachers, or None
  teacher_u: Any = None


class RunKeys(NamedTuple):
  """A run's starting keys: its own stream (``rng``), its method's initialization, its data stream."""

  rng: jax.Array
  method_init: jax.Array
  data_rng: jax.Array


def run_keys(seed: int, data_seed: int | None = None) -> RunKeys:
  """The keys a run with ``seed`` starts from, its data stream from ``data_seed`` (default ``seed``):
  one scheme for single runs and a sweep's students, so that a sweep's run is the single run."""
  key = jax.random.key(seed)
  data_key = key if data_seed is None else jax.random.key(data_seed)
  return RunKeys(jax.random.fold_in(key, 1), jax.random.fold_in(key, 2), jax.random.fold_in(data_key, 1))


def split_keys(rng: jax.Array) -> jax.Array:
  """``[next, augmentation, dropout, method]``: the four keys a step draws from a stream."""
  return jax.random.split(rng, 4)


def data_stream(state) -> jax.Array:
  """The state's data-stream key (``state.rng`` where the state keeps none of its own)."""
  return state.rng if state.data_rng is None else state.data_rng


def advance_data(state, keys: jax.Array):
  """``state`` with its data stream moved on past ``keys`` (a :func:`split_keys` result)."""
  return state if state.data_rng is None else state._replace(data_rng=keys[0])


def make_views(jitter_pixels: int = 0, hflip: bool = False, *, teacher_draw: bool = False
               ) -> Callable[[jax.Array, dict], Inputs]:
  """``views(k_aug, batch) -> Inputs``: the augmentation (random shift by up to ``jitter_pixels``,
  ``hflip``) of ``batch["image"]`` for the student; the teacher sees the same view, or with
  ``batch["teacher_image"]`` the same draws of its own images (cross-modal distillation), or with
  ``teacher_draw`` a draw of its own (a mean teacher's second noise draw); unlabelled images
  (``batch["unlabelled"]``) get a draw of their own."""

  def views(k_aug: jax.Array, batch: dict) -> Inputs:
    x = augment(k_aug, batch["image"], jitter_pixels, hflip)
    if "teacher_image" in batch:  # the same draws: the same crop and flip of each example
      x_t = augment(k_aug, batch["teacher_image"], jitter_pixels, hflip)
    elif teacher_draw:
      x_t = augment(jax.random.fold_in(k_aug, 1), batch["image"], jitter_pixels, hflip)
    else:
      x_t = x
    x_u = (augment(jax.random.fold_in(k_aug, 2), batch["unlabelled"], jitter_pixels, hflip)
           if "unlabelled" in batch else None)
    return Inputs(x, x_t, x_u)

  return views


def method_batch(batch: dict) -> dict:
  """What the method sees of the batch: labels, indices and the like, not the raw images."""
  return {k: v for k, v in batch.items() if k not in ("image", "unlabelled", "teacher_image", "teacher")}


def chain_keys(rng: jax.Array, n: int) -> jax.Array:
  """``[n, 4]``: the :func:`split_keys` of ``n`` steps in a row from ``rng`` (what ``n`` single
  steps would draw)."""

  def one(r, _):
    keys = split_keys(r)
    return keys[0], keys

  return jax.lax.scan(one, rng, None, length=n)[1]
