"""Shared float64 helpers for the reference tests."""

import numpy as np


def numerical_grad(f, x, h=1e-5):
  """Central finite differences of a scalar float64 function ``f`` at ``x``."""
  x = np.float64(x)
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (f(xp) - f(xm)) / (2 * h)
  return g
