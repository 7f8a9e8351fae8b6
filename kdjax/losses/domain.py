"""Feature-distribution alignment losses, for distillation across domains.

Each compares two *samples* of features (a source-domain batch ``x`` and a
target-domain batch ``y``, of any sizes ``N`` and ``M``) rather than matched
pairs, so each couples the whole batch and returns a **batch scalar**. Inputs
of more than two dimensions are flattened per example; all math runs in
float32, and the pairwise products run at the highest matmul precision
(differences of large squared norms are cancellation-prone, and TF32/bf16
matmuls on accelerators would swamp a small discrepancy).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def _concrete(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _samples(name: str, x: Array, y: Array, min_examples: int) -> tuple[Array, Array]:
  """``x`` and ``y`` as float32 ``[N, D]`` and ``[M, D]``; a clear error where they cannot be compared."""
  x, y = _f32(x), _f32(y)
  if x.ndim == 0 or y.ndim == 0:
    raise ValueError(f"{name} needs batches of features [N, ...], got shapes {x.shape} and {y.shape}")
  x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"{name} needs equal feature sizes per example: x has {x.shape[1]}, y has {y.shape[1]} "
                     f"(after flattening; shapes {x.shape} and {y.shape})")
  if x.shape[0] < min_examples or y.shape[0] < min_examples:
    raise ValueError(f"{name} needs at least {min_examples} example(s) on each side, got {x.shape[0]} and "
                     f"{y.shape[0]}")
  return x, y


def _pairwise_sq_dists(z: Array) -> Array:
  """``‖z_i − z_j‖²`` for all pairs of rows, ``[P, P]``: non-negative, exactly 0 on the diagonal.

  From the Gram matrix of the rows centred at their (gradient-stopped) mean: distances do not
  change under a shift, and centring keeps ``‖a‖² + ‖b‖² − 2a·b`` from cancelling catastrophically
  when the features share a large offset (post-ReLU features do)."""
  z = z - jax.lax.stop_gradient(jnp.mean(z, axis=0))
  g = jnp.matmul(z, z.T, precision=_HIGHEST)
  sq = jnp.sum(z * z, axis=1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * g, 0.0)
  return jnp.where(jnp.eye(z.shape[0], dtype=bool), 0.0, d2)


def _off_diagonal_mean(k: Array) -> Array:
  n = k.shape[0]
  return jnp.sum(jnp.where(jnp.eye(n, dtype=bool), 0.0, k)) / (n * (n - 1))


def mmd2(
    x: Array,
    y: Array,
    *,
    scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    bandwidth: float | Array | None = None,
    unbiased: bool = False,
) -> Array:
  r"""Squared maximum mean discrepancy with a multi-kernel Gaussian, batch scalar.

  Gretton et al. (JMLR 2012), "A Kernel Two-Sample Test"; the sum over several
  bandwidths is that of Long et al. (ICML 2015, DAN), which keeps the test
  sensitive at more than one length scale without tuning one bandwidth:

  .. math::
      k(a, b) = \frac1S\sum_{s} \exp\Big(-\frac{\|a - b\|^2}{2 (s\sigma)^2}\Big),\qquad
      \mathrm{MMD}^2_b = \overline{K_{xx}} + \overline{K_{yy}} - 2\,\overline{K_{xy}}

  The default is the biased V-statistic ``MMD²_b`` (means over all pairs): ``≥ 0``
  and exactly 0 for identical samples. ``unbiased=True`` gives Gretton's
  U-statistic ``MMD²_u`` (the diagonals of ``K_xx`` and ``K_yy`` dropped): zero in
  expectation when both samples come from one distribution, so it can be
  negative, and it needs at least two examples on each side.

  Bandwidth: ``σ²`` is ``bandwidth`` when given (a squared length, as the
  heuristic's). Otherwise it is the mean squared distance over the *distinct*
  pairs of the pooled sample ``x ∪ y`` (the heuristic of DAN's reference code,
  ``sum(L2) / (n² − n)``; the mean over distinct pairs rather than all pairs,
  because the zero self-distances would shrink ``σ²`` by ``(P−1)/P`` on small
  batches), under ``stop_gradient``: it follows the features' current scale, so
  the loss stays informative as they grow or shrink, without the gradient
  shrinking the loss by inflating the bandwidth. (The median heuristic is the
  classic alternative; the mean is cheaper and smooth in the data.)

  Args:
    x: ``[N, ...]`` features of the first sample (say, the source domain).
    y: ``[M, ...]`` features of the second sample; the same size per example.
    scales: the multipliers ``s > 0`` of the base ``σ``.
    bandwidth: base ``σ² > 0``, or ``None`` for the pooled mean heuristic.
    unbiased: the U-statistic instead of the V-statistic.

  Returns:
    scalar ``MMD²``, float32.
  """
  x, y = _samples("MMD", x, y, 2 if unbiased else 1)
  scales = tuple(scales)
  if not scales:
    raise ValueError("MMD needs at least one kernel scale")
  bad = [s for s in scales if _concrete(s) and not (math.isfinite(s) and s > 0)]
  if bad:
    raise ValueError(f"MMD kernel scales must be finite numbers > 0, got {bad}")
  if bandwidth is not None and _concrete(bandwidth) and not (math.isfinite(bandwidth) and bandwidth > 0):
    raise ValueError(f"MMD bandwidth (the base sigma^2) must be a finite number > 0, got {bandwidth!r}")
  n = x.shape[0]
  d2 = _pairwise_sq_dists(jnp.concatenate([x, y], axis=0))
  if bandwidth is None:
    p = d2.shape[0]
    sigma2 = jax.lax.stop_gradient(jnp.sum(d2) / (p * (p - 1)))
    # All points equal: every distance is 0, so any bandwidth gives the same kernel (and no NaN).
    sigma2 = jnp.where(sigma2 > 0, sigma2, 1.0)
  else:
    sigma2 = _f32(bandwidth)
  s2 = jnp.asarray(scales, jnp.float32) ** 2
  k = jnp.mean(jnp.exp(-d2[None] / (2.0 * s2[:, None, None] * sigma2)), axis=0)
  k_xx, k_yy, k_xy = k[:n, :n], k[n:, n:], k[:n, n:]
  if unbiased:
    return _off_diagonal_mean(k_xx) + _off_diagonal_mean(k_yy) - 2.0 * jnp.mean(k_xy)
  return jnp.mean(k_xx) + jnp.mean(k_yy) - 2.0 * jnp.mean(k_xy)


def _covariance(x: Array) -> Array:
  """Unbiased (``n − 1``) feature covariance of the rows of ``x``, ``[D, D]``."""
  xc = x - jnp.mean(x, axis=0)
  return jnp.matmul(xc.T, xc, precision=_HIGHEST) / (x.shape[0] - 1)


def coral_loss(x: Array, y: Array) -> Array:
  r"""Deep CORAL (Sun & Saenko, ECCV 2016 workshops), batch scalar:

  .. math::
      L = \frac{1}{4d^2}\,\|C_x - C_y\|_F^2

  with ``C`` the unbiased feature covariance of each sample and ``d`` the feature
  size. It aligns second-order statistics only: a shift of either sample's mean
  leaves it unchanged. Needs at least two examples on each side.

  Returns:
    scalar loss, float32.
  """
  x, y = _samples("CORAL", x, y, 2)
  d = x.shape[1]
  return jnp.sum((_covariance(x) - _covariance(y)) ** 2) / (4.0 * d * d)
