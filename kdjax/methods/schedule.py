"""Schedules in epochs: the linear warm-up of DKD's and ReviewKD's distillation term, and
RepDistiller's init stage of its two-stage methods (AB, FSP, FT).

A method reads where the run stands from ``batch["epoch"]`` (epochs done before this step, a traced
float) and ``batch["epochs"]`` (the run's length, a Python int), which the step adds where it was
built with ``steps_per_epoch`` and ``epochs`` (:meth:`kdjax.train.step.Recipe.progress`). The
lengths below are resolved while tracing, from the Python int, so a bad one fails before the first
step, and the schedules themselves work under ``jit`` and ``vmap`` (the step count is traced).
"""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp

# RepDistiller (train_student.py): ``--init_epochs 30`` before the main ``--epochs 240``, so the
# init stage is 30 of 270 epochs, a ninth of the whole.
REPDISTILLER_INIT_EPOCHS = 30.0
REPDISTILLER_INIT_SHARE = 30.0 / 270.0


def check_epochs(method: str, hparam: str, value) -> None:
  """``value`` is ``None`` (the reference's) or a finite number of epochs ``>= 0`` (0 = off)."""
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
    raise ValueError(f"{method}: {hparam} must be None (the reference's) or a finite number of epochs >= 0 "
                     f"(0 turns it off), got {value!r}")


def run_length(batch, method: str, hparam: str) -> int:
  """The run's length in epochs, ``batch["epochs"]``; a ValueError saying how to build the step
  where the step does not know it."""
  if "epoch" not in batch or "epochs" not in batch:
    raise ValueError(f"{method}: {hparam} is a schedule in epochs, but this train step does not know the run's "
                     f"length (batch['epoch'] and batch['epochs'] are missing): build the step with "
                     f"make_train_step(..., steps_per_epoch=, epochs=) (distill, train_student and sweeps do), "
                     f"or pass {hparam}=0 to turn the schedule off")
  return int(batch["epochs"])


def warmup_length(method: str, warmup_epochs: float | None, reference: float, batch) -> float:
  """The warm-up's length in epochs for this run: ``warmup_epochs``, or for ``None`` the
  reference's ``reference`` epochs, shortened to the whole run where the run is shorter
  (``min(reference, epochs)``); 0: no warm-up. An explicit one longer than the run is a ValueError."""
  if warmup_epochs is not None and warmup_epochs == 0:
    return 0.0
  epochs = run_length(batch, method, "warmup_epochs")
  if warmup_epochs is None:
    return float(min(reference, epochs))
  if warmup_epochs > epochs:
    raise ValueError(f"{method}: warmup_epochs={warmup_epochs:g} is longer than the run ({epochs} epochs): the "
                     f"distillation term would never reach its full weight. Pass --set "
                     f"method.warmup_epochs=N with N <= {epochs} (0 turns the warm-up off), or leave it unset "
                     f"for min({reference:g}, epochs)")
  return float(warmup_epochs)


def warmup_weight(batch, warmup: float):
  """mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epoch counter (``epoch = 1`` in the
  first epoch): ``min(k / warmup, 1)`` throughout the k-th epoch, ``k = floor(batch["epoch"]) + 1``;
  ``1.0`` where ``warmup`` is 0."""
  if not warmup:
    return 1.0
  return jnp.minimum((jnp.floor(batch["epoch"]) + 1.0) / warmup, 1.0)


def init_length(method: str, init_epochs: float | None, batch) -> float:
  """The init stage's length in epochs for this run: ``init_epochs``, or for ``None``
  RepDistiller's 30 epochs, or its share of the run where the run is shorter than its 270
  (``min(30, epochs / 9)``); 0: no init stage. An explicit one that leaves no main stage
  (``>= epochs``) is a ValueError."""
  if init_epochs is not None and init_epochs == 0:
    return 0.0
  epochs = run_length(batch, method, "init_epochs")
  if init_epochs is None:
    return min(REPDISTILLER_INIT_EPOCHS, epochs * REPDISTILLER_INIT_SHARE)
  if init_epochs >= epochs:
    raise ValueError(f"{method}: init_epochs={init_epochs:g} leaves no main stage in a run of {epochs} epochs. "
                     f"Pass --set method.init_epochs=N with N < {epochs} (0 trains in one stage, jointly), or "
                     f"leave it unset for RepDistiller's min(30, epochs / 9)")
  return float(init_epochs)


def in_init_stage(batch, init: float):
  """Whether this step is in the init stage (``batch["epoch"] < init``), a traced bool."""
  return batch["epoch"] < init


def init_stage_end(method: str, init_epochs: float | None):
  """A two-stage method's :attr:`~kdjax.methods.Method.main_stage`: ``epochs -> init_length``."""
  return lambda epochs: init_length(method, init_epochs, {"epoch": 0.0, "epochs": int(epochs)})
