"""The optimizer a run's config names: SGD (Nesterov momentum) or AdamW with a learning-rate schedule.

It sits below :mod:`kdjax.config` (whose ``validate_study`` builds one to check a config's
optimizer settings before any training) and below :mod:`kdjax.train`, which trains with it.
"""

from __future__ import annotations

import jax
import optax


def make_optimizer(name: str, *, learning_rate: float, total_steps: int, momentum: float = 0.9,
                   weight_decay: float = 0.0, schedule: str = "cosine", decay_epochs: tuple[int, ...] = (),
                   steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """SGD (Nesterov momentum, optional L2 weight decay added to the gradient) or AdamW, with a
  learning-rate schedule: ``"cosine"`` decay to 0 over ``total_steps``, ``"constant"``, or
  ``"step"``: times 0.1 at the start of each epoch in ``decay_epochs`` (RepDistiller's CIFAR-100
  recipe decays at 150, 180 and 210 of 240 epochs)."""
  if learning_rate <= 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  if decay_epochs and schedule != "step":
    raise ValueError(f"decay_epochs {tuple(decay_epochs)} only apply to schedule 'step', not {schedule!r}")
  if schedule == "cosine":
    lr = optax.cosine_decay_schedule(learning_rate, decay_steps=max(total_steps, 1))
  elif schedule == "constant":
    lr = learning_rate
  elif schedule == "step":
    if not decay_epochs or any(e < 1 for e in decay_epochs) or list(decay_epochs) != sorted(set(decay_epochs)):
      raise ValueError(f"schedule 'step' needs increasing positive decay_epochs, got {tuple(decay_epochs)}")
    lr = optax.piecewise_constant_schedule(learning_rate, {e * steps_per_epoch: 0.1 for e in decay_epochs})
  else:
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine', 'constant' or 'step'")
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                       optax.sgd(lr, momentum=momentum or None, nesterov=bool(momentum)))
  if name == "adam":
    return optax.adamw(lr, weight_decay=weight_decay)
  raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'")


def scale_updates(tx: optax.GradientTransformation, factor) -> optax.GradientTransformation:
  """``tx`` with its updates multiplied by ``factor`` (a traced value may do): a per-student
  learning rate for an optimizer built with ``learning_rate=1`` (SGD's and AdamW's updates are
  linear in it)."""

  def update(updates, opt_state, params=None):
    updates, opt_state = tx.update(updates, opt_state, params)
    return jax.tree.map(lambda u: factor * u, updates), opt_state

  return optax.GradientTransformation(tx.init, update)
