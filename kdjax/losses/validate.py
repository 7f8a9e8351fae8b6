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
