"""Sweep plots (PNG): learning curves, accuracy per variant, accuracy against a numeric grid key.

matplotlib is imported only when a plot is drawn, and through its object API (a ``Figure`` drawn by
the Agg canvas, see :mod:`kdjax.plotting`), so plotting needs no display and leaves pyplot's global
state and backend alone.
Records are grouped as in :func:`kdjax.sweep.records.by_variant`: the last record of a variant and
seed counts.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdjax.plotting import colors, figure, legend, save
from kdjax.stats import mean_std
from kdjax.sweep.records import METRIC_SHORT_LABELS, accuracy_pct, by_variant, check_metric, config_value

LONG_LABEL = 14  # characters: longer variant names put the variants on the y axis


def _groups(records: Sequence[dict[str, Any]]) -> dict[str, dict[Any, dict[str, Any]]]:
  groups = by_variant(records)
  if not groups:
    raise ValueError("no records to plot")
  return groups


def plot_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
  """Test accuracy (%) per epoch, one line per variant: the mean over its seeds at each epoch, with a
  band of mean ± sample std (3 or more seeds) or min–max (2 seeds; no band for one). An epoch only
  some seeds reached is averaged over those. Returns the path written."""
  from matplotlib.ticker import MaxNLocator
  groups = _groups(records)
  fig = figure(9.0, 5.5)
  ax = fig.add_subplot()
  bands = set()
  for color, (variant, runs) in zip(colors(len(groups)), groups.items()):
    per_epoch: dict[int, list[float]] = {}
    for r in runs.values():
      for h in r.get("history", []):
        if h.get("test_accuracy") is not None:
          per_epoch.setdefault(h["epoch"], []).append(100.0 * h["test_accuracy"])
    if not per_epoch:
      continue
    epochs = sorted(per_epoch)
    means = [statistics.fmean(per_epoch[e]) for e in epochs]
    ax.plot(epochs, means, color=color, marker="." if len(epochs) <= 30 else None, label=f"{variant} (n={len(runs)})")
    lows, highs = [], []
    for e, m in zip(epochs, means):
      v = per_epoch[e]
      if len(v) >= 3:
        sd = statistics.stdev(v)
        lo, hi = m - sd, m + sd
        bands.add("± std")
      else:
        lo, hi = min(v), max(v)
        if len(v) == 2:
          bands.add("min–max")
      lows.append(lo)
      highs.append(hi)
    if any(lo != hi for lo, hi in zip(lows, highs)):
      ax.fill_between(epochs, lows, highs, color=color, alpha=0.2 if len(groups) <= 4 else 0.1, linewidth=0)
  band = {frozenset(): "", frozenset({"± std"}): "; band: ± sample std",
          frozenset({"min–max"}): "; band: min–max of 2 seeds"}.get(
              frozenset(bands), "; band: ± sample std (min–max with 2 seeds)")
  ax.set_title(f"Test accuracy per epoch (mean over seeds{band})")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(True, alpha=0.3)
  legend(ax, len(groups))
  return save(fig, path)


def plot_final(records: Sequence[dict[str, Any]], path: str | os.PathLike, metric: str = "final") -> Path:
  """Mean test accuracy (%) per variant at the last (``"final"``) or best (``"best"``) epoch, with error
  bars of ± sample std over seeds and each seed's value as a small dot.

  Drawn as points rather than bars from zero, since accuracies of a sweep differ by fractions of a
  point; the variants lie along the y axis (horizontal layout) when their names are long or many.
  Returns the path written.
  """
  check_metric(metric)
  groups = _groups(records)
  names = list(groups)
  stats = [mean_std([accuracy_pct(r, metric) for r in runs.values()]) for runs in groups.values()]
  horizontal = max(map(len, names)) > LONG_LABEL or len(names) > 8
  if horizontal:
    fig = figure(9.0, max(3.0, 1.2 + 0.4 * len(names)))
  else:
    fig = figure(max(5.0, 1.5 + 0.9 * len(names)), 5.0)
  ax = fig.add_subplot()
  positions = list(range(len(names)))
  means = [m for m, _ in stats]
  stds = [s for _, s in stats]
  for i, runs in enumerate(groups.values()):
    values = [accuracy_pct(r, metric) for r in runs.values()]
    xy = ([i] * len(values), values)
    ax.scatter(*(xy[::-1] if horizontal else xy), s=12, color="0.55", zorder=2,
               label="one seed" if i == 0 else None)
  if horizontal:
    ax.errorbar(means, positions, xerr=stds, fmt="o", color="C0", capsize=4, zorder=3, label="mean ± std")
    ax.set_yticks(positions, names)
    ax.invert_yaxis()  # first variant on top, as in the table
    ax.set_xlabel(f"{METRIC_SHORT_LABELS[metric]} (%)")
    ax.grid(True, axis="x", alpha=0.3)
  else:
    ax.errorbar(positions, means, yerr=stds, fmt="o", color="C0", capsize=4, zorder=3, label="mean ± std")
    ax.set_xticks(positions, names)
    ax.set_ylabel(f"{METRIC_SHORT_LABELS[metric]} (%)")
    ax.grid(True, axis="y", alpha=0.3)
  label = METRIC_SHORT_LABELS[metric]
  ax.set_title(f"{label[0].upper()}{label[1:]} per variant\n(mean ± sample std over seeds)")
  ax.legend(fontsize="small", loc="best")
  return save(fig, path)


def _number(value: Any) -> float | None:
  if isinstance(value, bool) or value is None:
    return None
  if isinstance(value, (int, float)):
    return float(value)
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def plot_against(records: Sequence[dict[str, Any]], key: str, path: str | os.PathLike,
                 metric: str = "final") -> Path | None:
  """Mean test accuracy (%) against the numeric config value ``key`` (e.g. ``"temperature"``), one line
  per combination of the variant's other grid values (e.g. per method), error bars ± sample std over
  seeds; a log x axis when the values are positive and span two decades or more. Lines are drawn
  side by side, shifted by up to ±1.5% of the x range (of its log on a log axis), so that their error
  bars at one x do not hide each other.

  Returns the path written, or None (nothing written) when no record has ``key``, a value of it is not
  a number, or it takes fewer than two values. Records without the key are left out.
  """
  check_metric(metric)
  groups = _groups(records)
  lines: dict[str, dict[float, list[float]]] = {}
  for variant, runs in groups.items():
    others = " ".join(tok for tok in variant.split() if tok.split("=", 1)[0] != key) or "all runs"
    for r in runs.values():
      raw = config_value(r, key)
      if raw is None:
        continue
      x = _number(raw)
      if x is None or math.isnan(x):
        return None
      lines.setdefault(others, {}).setdefault(x, []).append(accuracy_pct(r, metric))
  xs = {x for line in lines.values() for x in line}
  if len(xs) < 2:
    return None
  log = min(xs) > 0 and max(xs) / min(xs) >= 100
  span = math.log(max(xs) / min(xs)) if log else max(xs) - min(xs)
  fig = figure(8.0, 5.0)
  ax = fig.add_subplot()
  for i, (color, (label, points)) in enumerate(zip(colors(len(lines)), lines.items())):
    x_sorted = sorted(points)
    stats = [mean_std(points[x]) for x in x_sorted]
    ns = sorted({len(points[x]) for x in x_sorted})
    seeds = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    shift = 0.03 * span * ((i / (len(lines) - 1) - 0.5) if len(lines) > 1 else 0.0)
    drawn = [x * math.exp(shift) for x in x_sorted] if log else [x + shift for x in x_sorted]
    ax.errorbar(drawn, [m for m, _ in stats], yerr=[s for _, s in stats], fmt="o-", color=color, capsize=4,
                label=f"{label} ({seeds})")
  if log:
    ax.set_xscale("log")
  if len(xs) <= 12:  # the grid's values as the ticks
    from matplotlib.ticker import NullFormatter
    ax.set_xticks(sorted(xs), [f"{x:g}" for x in sorted(xs)])
    ax.xaxis.set_minor_formatter(NullFormatter())
  label = METRIC_SHORT_LABELS[metric]
  ax.set_title(f"{label[0].upper()}{label[1:]} against {key} (mean ± sample std over seeds)")
  ax.set_xlabel(key)
  ax.set_ylabel(f"{label} (%)")
  ax.grid(True, alpha=0.3)
  legend(ax, len(lines))
  return save(fig, path)
