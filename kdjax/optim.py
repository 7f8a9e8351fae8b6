"""The optimizer a run's config names: SGD (Nesterov momentum) or AdamW with a learning-rate schedule.

It sits below :mod:`kdjax.config` (whose ``validate_study`` builds one to check a config's
optimizer settings before any training) and below :mod:`kdjax.train`, which trains with it.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import optax


def make_optimizer(name: str, *, learning_rate: float, total_steps: int, momentum: float = 0.9,
                   weight_decay: float = 0.0, schedule: str = "cosine", decay_epochs: tuple[int, ...] = (),
                   steps_per_epoch: int = 1, clip_norm: float = 0.0,
                   warmup_steps: int = 0) -> optax.GradientTransformation:
  """SGD (Nesterov momentum, optional L2 weight decay added to the gradient) or AdamW, with a
  learning-rate schedule: ``"cosine"`` decay to 0 over ``total_steps``, ``"constant"``, or
  ``"step"``: times 0.1 at the start of each epoch in ``decay_epochs`` (RepDistiller's CIFAR-100
  recipe decays at 150, 180 and 210 of 240 epochs).

  ``clip_norm > 0`` first clips the gradient to that global norm (:func:`optax.clip_by_global_norm`,
  chained before the weight decay and the optimizer, so it acts on the loss's gradient alone and does
  not depend on the learning rate); 0 is off.

  ``warmup_steps = w > 0`` adds a linear warm-up from 0: with ``t`` the 0-based step (the number of
  updates applied before this one; the first update is zero), the learning rate is

  - ``"cosine"``: ``learning_rate · t / w`` for ``t < w``, then the cosine over the remaining steps,
    ``learning_rate · (1 + cos(π (t - w) / (total_steps - w))) / 2``: ``learning_rate`` at ``w``, 0 at
    ``total_steps`` (:func:`optax.warmup_cosine_decay_schedule`; the convention of optax and
    big_vision, not the unwarmed cosine's clock cut short);
  - ``"constant"``: ``learning_rate · min(1, t / w)``;
  - ``"step"``: the step schedule's value times ``min(1, t / w)``: its decays keep their absolute
    steps ``epoch · steps_per_epoch`` (one inside the warm-up lowers the rest of the ramp tenfold).

  A warm-up must be shorter than the run: ``w >= total_steps`` is a ValueError. The learning rate
  multiplies the whole update (clipping comes before it), so :func:`scale_updates` by ``lr`` of an
  optimizer built with ``learning_rate=1`` is this optimizer built with ``learning_rate=lr``, warm-up
  and clipping included.
  """
  if learning_rate <= 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  if not math.isfinite(clip_norm) or clip_norm < 0:
    raise ValueError(f"clip_norm must be a finite number >= 0 (0 = off), got {clip_norm}")
  if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral):
    raise TypeError(f"warmup_steps must be a whole number of steps, got {warmup_steps!r}")
  if warmup_steps < 0:
    raise ValueError(f"warmup_steps must be >= 0 (0 = off), got {warmup_steps}")
  if warmup_steps and warmup_steps >= total_steps:
    raise ValueError(f"a warm-up longer than the run: warmup_steps {warmup_steps} must be fewer than the "
                     f"run's total_steps {total_steps}")
  if decay_epochs and schedule != "step":
    raise ValueError(f"decay_epochs {tuple(decay_epochs)} only apply to schedule 'step', not {schedule!r}")
  warmup_steps = int(warmup_steps)
  if schedule == "cosine":
    if warmup_steps:
      lr = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps=warmup_steps,
                                              decay_steps=total_steps, end_value=0.0)
    else:
      lr = optax.cosine_decay_schedule(learning_rate, decay_steps=max(total_steps, 1))
  elif schedule == "constant":
    lr = optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else learning_rate
  elif schedule == "step":
    if not decay_epochs or any(e < 1 for e in decay_epochs) or list(decay_epochs) != sorted(set(decay_epochs)):
      raise ValueError(f"schedule 'step' needs increasing positive decay_epochs, got {tuple(decay_epochs)}")
    lr = optax.piecewise_constant_schedule(learning_rate, {e * steps_per_epoch: 0.1 for e in decay_epochs})
    if warmup_steps:
      lr = _ramped(lr, warmup_steps)
  else:
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine', 'constant' or 'step'")
  if name == "sgd":
    tx = optax.chain(optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                     optax.sgd(lr, momentum=momentum or None, nesterov=bool(momentum)))
  elif name == "adam":
    tx = optax.adamw(lr, weight_decay=weight_decay)
  else:
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'")
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm else tx


def _ramped(schedule: optax.Schedule, warmup_steps: int) -> optax.Schedule:
  """``schedule`` times ``min(1, step / warmup_steps)``, on the schedule's own clock."""
  return lambda count: schedule(count) * jnp.minimum(count / warmup_steps, 1.0)


def scale_updates(tx: optax.GradientTransformation, factor) -> optax.GradientTransformation:
  """``tx`` with its updates multiplied by ``factor`` (a traced value may do): a per-student
  learning rate for an optimizer built with ``learning_rate=1`` (SGD's and AdamW's updates are
  linear in it)."""

  def update(updates, opt_state, params=None):
    updates, opt_state = tx.update(updates, opt_state, params)
    return jax.tree.map(lambda u: factor * u, updates), opt_state

  return optax.GradientTransformation(tx.init, update)
