"""Statistics over seeds, in plain Python (no scipy): mean ± sample std, Student-t quantiles and paired
differences. Used by the sweep reports and plots, and by the robustness plot."""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 10_000


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
  """The continued fraction of the incomplete beta function (modified Lentz's method)."""
  qab, qap, qam = a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > _TINY else _TINY)
  h = d
  for m in range(1, _MAX_TERMS + 1):
    m2 = 2 * m
    for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
               -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
      d = 1.0 + aa * d
      d = 1.0 / (d if abs(d) > _TINY else _TINY)
      c = 1.0 + aa / c
      c = c if abs(c) > _TINY else _TINY
      delta = d * c
      h *= delta
    if abs(delta - 1.0) < _EPS:
      return h
  raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
  """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
  if not (a > 0 and b > 0):
    raise ValueError(f"betainc needs a, b > 0, got a={a}, b={b}")
  if not 0.0 <= x <= 1.0:
    raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
  if x == 0.0 or x == 1.0:
    return x
  log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
  front = math.exp(log_front)
  if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; use the symmetry elsewhere
    return front * _beta_continued_fraction(a, b, x) / a
  return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
  """P(T > t) for Student's t with ``df`` degrees of freedom: ½·I_{df/(df+t²)}(df/2, ½) for t ≥ 0."""
  if not df > 0:
    raise ValueError(f"degrees of freedom must be positive, got {df}")
  if math.isnan(t):
    return math.nan
  if t < 0:
    return 1.0 - t_sf(-t, df)
  if math.isinf(t):
    return 0.0
  x = 1.0 / (1.0 + (t / math.sqrt(df)) ** 2) if t < 1e150 else 0.0
  return 0.5 * betainc(df / 2.0, 0.5, x)


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) for Student's t with ``df`` degrees of freedom."""
  return 1.0 - t_sf(t, df) if t >= 0 else t_sf(-t, df)


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
  """The ``p`` quantile of Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom.

  Solves ``P(T > t) = 1 - p`` by bisection on t (the upper tail is computed directly, so quantiles
  near 0 or 1 keep their precision); ``t_quantile(1 - p, df) == -t_quantile(p, df)``.
  E.g. ``t_quantile(0.975, 4)`` = 2.776, the factor of a 95% interval over 5 values.
  """
  if not 0.0 < p < 1.0:
    raise ValueError(f"quantile level must lie in (0, 1), got {p}")
  if not df > 0:
    raise ValueError(f"degrees of freedom must be positive, got {df}")
  if p == 0.5:
    return 0.0
  if p < 0.5:
    return -t_quantile(1.0 - p, df)
  tail = 1.0 - p
  lo, hi = 0.0, 1.0
  while t_sf(hi, df) > tail:
    lo, hi = hi, 2.0 * hi
    if hi > 1e150:
      return math.inf
  for _ in range(400):
    mid = 0.5 * (lo + hi)
    if mid in (lo, hi) or hi - lo <= 4 * _EPS * hi:
      break
    if t_sf(mid, df) > tail:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def paired_difference(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> dict[str, float | int | None]:
  """The paired comparison of a variant's values ``a`` with the baseline's ``b`` on the same seeds.

  ``a[i]`` and ``b[i]`` must come from the same seed. Returns ``mean`` and ``std`` (sample std, 0
  for one pair) of the differences ``a[i] - b[i]``, their number ``n``, and the t-interval
  ``mean ± t((1 + confidence) / 2, n - 1) · std / √n`` as ``ci_low``/``ci_high``, which is None for
  fewer than two pairs (no spread to estimate); with no pairs the mean and std are None too.
  """
  if len(a) != len(b):
    raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
  n = len(a)
  if n == 0:
    return {"mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None}
  diffs = [float(x) - float(y) for x, y in zip(a, b)]
  mean, std = mean_std(diffs)
  if n < 2:
    return {"mean": mean, "std": std, "n": n, "ci_low": None, "ci_high": None}
  half = t_quantile(1.0 - (1.0 - confidence) / 2.0, n - 1) * std / math.sqrt(n)
  return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}
