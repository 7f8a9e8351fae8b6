"""Checks for loss hyperparameters that fail early with a clear message.

A hyperparameter given as a Python number is checked at once; a traced value
(for example a temperature swept under ``vmap``) cannot be checked inside
``jit`` and is left to the config layer, which validates it before training.
"""

from __future__ import annotations

import math
import numbers


def _concrete(x):
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_temperature(temperature) -> None:
  if _concrete(temperature) and not (math.isfinite(temperature) and temperature > 0):
    raise ValueError(f"temperature must be a finite number > 0, got T={temperature!r}")


def check_alpha(alpha) -> None:
  if _concrete(alpha) and not (0.0 <= alpha <= 1.0):
    raise ValueError(f"alpha (weight of the hard-label term) must lie in [0, 1], got {alpha!r}")


def check_skew(beta) -> None:
  """The skew of the generalized Jensen–Shannon divergence: strictly between 0 and 1."""
  if _concrete(beta) and not (0.0 < beta < 1.0):
    raise ValueError(f"beta (the skew of the generalized Jensen-Shannon divergence) must lie strictly between 0 "
                     f"and 1, got {beta!r}; its limits are forward KL (beta -> 0, method hinton) and reverse KL "
                     f"(beta -> 1, method reverse_kd), each scaled towards 0")


def is_traced(x) -> bool:
  """A value traced under ``jit`` or ``vmap`` (checked by whoever chose it, not here)."""
  import jax
  return isinstance(x, jax.core.Tracer)


def _number(x):
  """A NumPy or JAX scalar (or one-element array) as a Python float; anything else as it is."""
  if hasattr(x, "shape") and hasattr(x, "dtype") and getattr(x, "size", 0) == 1 and not is_traced(x):
    return float(x)
  return x


def check_epsilon(eps) -> None:
  """An L∞ attack budget, in pixel units of ``[0, 1]``."""
  if is_traced(eps):
    return
  value = _number(eps)
  if not (_concrete(value) and math.isfinite(value) and value >= 0):
    raise ValueError(f"the attack budget epsilon must be a finite number >= 0 (in pixel units of [0, 1]), got {eps!r}")


def check_pgd(eps, steps, step_size) -> float:
  """Checks a PGD attack's budget, step count and step size; returns the step size
  (``None``: ``2.5·ε/steps``, Madry et al.'s choice)."""
  check_epsilon(eps)
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
    raise ValueError(f"PGD needs steps >= 1, got {steps!r}")
  step_size = 2.5 * eps / steps if step_size is None else step_size
  if is_traced(eps) or is_traced(step_size) or _number(eps) == 0:
    return step_size
  value = _number(step_size)
  if not (_concrete(value) and math.isfinite(value) and value > 0):
    raise ValueError(f"PGD's step_size must be > 0, got {step_size!r}")
  return step_size
