"""Sweep plots (PNG): learning curves, accuracy per variant, accuracy against a numeric grid key.

matplotlib is imported only when a plot is drawn, and through its object API (a ``Figure`` drawn by
the Agg canvas, see :mod:`kdjax.plotting`), so plotting needs no display and leaves pyplot's global
state and backend alone.
Records are grouped as in :func:`kdjax.sweep.records.by_variant`: the last record of a variant and
seed counts. Means, bands and error bars use the healthy runs only (:mod:`kdjax.health`; all of them
with ``include_unhealthy``), and labels say how many were left out; the per-variant and against-key
plots still draw each unhealthy seed, as a red cross.
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
from kdjax.sweep.records import (
  METRIC_SHORT_LABELS,
  accuracy_pct,
  by_variant,
  check_metric,
  config_value,
  count_label,
  healthy_runs,
  unhealthy_runs,
)

LONG_LABEL = 14  # characters: longer variant names put the variants on the y axis
UNHEALTHY_STYLE = {"marker": "x", "color": "red", "s": 36, "linewidths": 1.5, "zorder": 4}


def _unhealthy_label(include_unhealthy: bool) -> str:
  return "unhealthy seed (kept)" if include_unhealthy else "unhealthy seed (left out)"


def _left_out_note(left_out: int) -> str:
  """A title's note of the unhealthy runs left out of the means (empty when none were)."""
  return f"; {left_out} unhealthy run{'' if left_out == 1 else 's'} left out" if left_out else ""


def _value(record: dict[str, Any], metric: str) -> float | None:
  """A record's accuracy in percent, or None when it is not a finite number (a diverged run's)."""
  acc = record.get(metric, {}).get("accuracy")
  if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
    return None
  return accuracy_pct(record, metric)


def _groups(records: Sequence[dict[str, Any]]) -> dict[str, dict[Any, dict[str, Any]]]:
  groups = by_variant(records)
  if not groups:
    raise ValueError("no records to plot")
  return groups


def plot_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike, *,
                include_unhealthy: bool = False) -> Path:
  """Test accuracy (%) per epoch, one line per variant: the mean over its healthy seeds (all of them
  with ``include_unhealthy``) at each epoch, with a band of mean ± sample std (3 or more seeds) or
  min–max (2 seeds; no band for one). An epoch only some seeds reached is averaged over those. A
  variant's label says how many unhealthy seeds were left out; one with no healthy seed has no line,
  only its legend entry. Returns the path written."""
  from matplotlib.ticker import MaxNLocator
  groups = _groups(records)
  fig = figure(9.0, 5.5)
  ax = fig.add_subplot()
  bands = set()
  total_left_out = 0
  for color, (variant, every) in zip(colors(len(groups)), groups.items()):
    runs = healthy_runs(every, include_unhealthy)
    left_out = len(every) - len(runs)
    total_left_out += left_out
    if not runs:
      ax.plot([], [], color=color, linestyle=":", label=f"{variant} (no healthy seed: {left_out} left out)")
      continue
    per_epoch: dict[int, list[float]] = {}
    for r in runs.values():
      for h in r.get("history", []):
        if h.get("test_accuracy") is not None:
          per_epoch.setdefault(h["epoch"], []).append(100.0 * h["test_accuracy"])
    if not per_epoch:
      continue
    epochs = sorted(per_epoch)
    means = [statistics.fmean(per_epoch[e]) for e in epochs]
    ax.plot(epochs, means, color=color, marker="." if len(epochs) <= 30 else None,
            label=f"{variant} {count_label(len(runs), left_out)}")
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
  over = "seeds" if include_unhealthy else "healthy seeds"
  ax.set_title(f"Test accuracy per epoch (mean over {over}{band}{_left_out_note(total_left_out)})")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(True, alpha=0.3)
  legend(ax, len(groups))
  return save(fig, path)


def plot_final(records: Sequence[dict[str, Any]], path: str | os.PathLike, metric: str = "final", *,
               include_unhealthy: bool = False) -> Path:
  """Mean test accuracy (%) per variant at the last (``"final"``) or best (``"best"``) epoch, with error
  bars of ± sample std over seeds and each seed's value as a small dot.

  The means and error bars use the healthy seeds only (all of them with ``include_unhealthy``); each
  unhealthy seed is drawn as a red cross ("unhealthy seed (left out)"), and a variant's label says
  how many were left out. A variant with no healthy seed has no mean, only its red crosses.
  Drawn as points rather than bars from zero, since accuracies of a sweep differ by fractions of a
  point; the variants lie along the y axis (horizontal layout) when their names are long or many.
  Returns the path written.
  """
  check_metric(metric)
  groups = _groups(records)
  names = list(groups)
  used = [healthy_runs(runs, include_unhealthy) for runs in groups.values()]
  bad = [unhealthy_runs(runs) for runs in groups.values()]
  left_out = [len(runs) - len(u) for runs, u in zip(groups.values(), used)]
  horizontal = max(map(len, names)) > LONG_LABEL or len(names) > 8
  labels = [name if not k else f"{name}{' ' if horizontal else chr(10)}{count_label(len(u), k)}"
            for name, u, k in zip(names, used, left_out)]
  if horizontal:
    fig = figure(9.0, max(3.0, 1.2 + 0.4 * len(names)))
  else:
    fig = figure(max(5.0, 1.5 + 0.9 * len(names)), 5.0)
  ax = fig.add_subplot()
  positions, means, stds = [], [], []
  dot_label, cross_label = "one seed", _unhealthy_label(include_unhealthy)
  for i, (runs, unhealthy) in enumerate(zip(used, bad)):
    values = [v for v in (_value(r, metric) for s, r in runs.items() if s not in unhealthy) if v is not None]
    if values:
      xy = ([i] * len(values), values)
      ax.scatter(*(xy[::-1] if horizontal else xy), s=12, color="0.55", zorder=2, label=dot_label)
      dot_label = None
    crosses = [v for v in (_value(r, metric) for r in unhealthy.values()) if v is not None]
    if crosses:
      xy = ([i] * len(crosses), crosses)
      ax.scatter(*(xy[::-1] if horizontal else xy), label=cross_label, **UNHEALTHY_STYLE)
      cross_label = None
    counted = [v for v in (_value(r, metric) for r in runs.values()) if v is not None]
    if counted:
      m, sd = mean_std(counted)
      positions.append(i)
      means.append(m)
      stds.append(sd)
  ticks = list(range(len(names)))
  if horizontal:
    if positions:
      ax.errorbar(means, positions, xerr=stds, fmt="o", color="C0", capsize=4, zorder=3, label="mean ± std")
    ax.set_yticks(ticks, labels)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first variant on top, as in the table
    ax.set_xlabel(f"{METRIC_SHORT_LABELS[metric]} (%)")
    ax.grid(True, axis="x", alpha=0.3)
  else:
    if positions:
      ax.errorbar(positions, means, yerr=stds, fmt="o", color="C0", capsize=4, zorder=3, label="mean ± std")
    ax.set_xticks(ticks, labels)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel(f"{METRIC_SHORT_LABELS[metric]} (%)")
    ax.grid(True, axis="y", alpha=0.3)
  label = METRIC_SHORT_LABELS[metric]
  over = "seeds" if include_unhealthy else "healthy seeds"
  ax.set_title(f"{label[0].upper()}{label[1:]} per variant\n(mean ± sample std over {over}"
               f"{_left_out_note(sum(left_out))})")
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
                 metric: str = "final", *, include_unhealthy: bool = False) -> Path | None:
  """Mean test accuracy (%) against the numeric config value ``key`` (e.g. ``"temperature"``), one line
  per combination of the variant's other grid values (e.g. per method), error bars ± sample std over
  seeds; a log x axis when the values are positive and span two decades or more. Lines are drawn
  side by side, shifted by up to ±1.5% of the x range (of its log on a log axis), so that their error
  bars at one x do not hide each other.

  The means use the healthy seeds only (all of them with ``include_unhealthy``); each unhealthy seed
  is drawn as a red cross at its line's x, and a line's label says how many were left out; an x
  where no seed is healthy has no mean.

  Returns the path written, or None (nothing written) when no record has ``key``, a value of it is not
  a number, or it takes fewer than two values. Records without the key are left out.
  """
  check_metric(metric)
  groups = _groups(records)
  lines: dict[str, dict[float, list[float]]] = {}
  crosses: dict[str, dict[float, list[float]]] = {}
  left_out: dict[str, int] = {}
  for variant, runs in groups.items():
    others = " ".join(tok for tok in variant.split() if tok.split("=", 1)[0] != key) or "all runs"
    used = healthy_runs(runs, include_unhealthy)
    unhealthy = unhealthy_runs(runs)
    for seed, r in runs.items():
      raw = config_value(r, key)
      if raw is None:
        continue
      x = _number(raw)
      if x is None or math.isnan(x):
        return None
      points = lines.setdefault(others, {})
      crosses.setdefault(others, {})
      left_out[others] = left_out.get(others, 0) + (seed not in used)
      value = _value(r, metric)
      if seed in unhealthy and value is not None:
        crosses[others].setdefault(x, []).append(value)
      if seed in used and value is not None:
        points.setdefault(x, []).append(value)
      else:
        points.setdefault(x, [])
  xs = {x for line in lines.values() for x in line}
  if len(xs) < 2:
    return None
  log = min(xs) > 0 and max(xs) / min(xs) >= 100
  span = math.log(max(xs) / min(xs)) if log else max(xs) - min(xs)
  fig = figure(8.0, 5.0)
  ax = fig.add_subplot()
  cross_label = _unhealthy_label(include_unhealthy)
  for i, (color, (label, points)) in enumerate(zip(colors(len(lines)), lines.items())):
    shift = 0.03 * span * ((i / (len(lines) - 1) - 0.5) if len(lines) > 1 else 0.0)

    def moved(x, shift=shift):
      return x * math.exp(shift) if log else x + shift

    x_sorted = sorted(x for x in points if points[x])
    stats = [mean_std(points[x]) for x in x_sorted]
    ns = sorted({len(points[x]) for x in x_sorted}) or [0]
    seeds = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"
    if left_out[label]:
      seeds += f", {left_out[label]} unhealthy left out"
    if x_sorted:
      ax.errorbar([moved(x) for x in x_sorted], [m for m, _ in stats], yerr=[s for _, s in stats], fmt="o-",
                  color=color, capsize=4, label=f"{label} ({seeds})")
    else:
      ax.plot([], [], "o-", color=color, label=f"{label} (no healthy seed: {left_out[label]} left out)")
    bad = [(moved(x), v) for x, values in crosses[label].items() for v in values]
    if bad:
      ax.scatter([x for x, _ in bad], [v for _, v in bad], label=cross_label, **UNHEALTHY_STYLE)
      cross_label = None
  if log:
    ax.set_xscale("log")
  if len(xs) <= 12:  # the grid's values as the ticks
    from matplotlib.ticker import NullFormatter
    ax.set_xticks(sorted(xs), [f"{x:g}" for x in sorted(xs)])
    ax.xaxis.set_minor_formatter(NullFormatter())
  label = METRIC_SHORT_LABELS[metric]
  over = "seeds" if include_unhealthy else "healthy seeds"
  ax.set_title(f"{label[0].upper()}{label[1:]} against {key} (mean ± sample std over {over}"
               f"{_left_out_note(sum(left_out.values()))})")
  ax.set_xlabel(key)
  ax.set_ylabel(f"{label} (%)")
  ax.grid(True, alpha=0.3)
  legend(ax, len(lines) + (cross_label is None))
  return save(fig, path)
