"""Sweep reports: per-variant statistics over seeds, paired comparisons with a baseline, tables and plots.

The records are those of :mod:`kdjax.sweep.store` (read through :mod:`kdjax.sweep.records`). Every number is over seeds: the mean and sample
standard deviation of a variant's test accuracy and errors, and against the baseline variant the
*paired* difference (same seed, so the same initialization and data order where the training
allows) with a Student-t confidence interval. A (variant, seed) recorded twice counts once, with
its last record: a re-run replaces the earlier result.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdjax.stats import mean_std, paired_difference
from kdjax.sweep import plots
from kdjax.sweep.records import METRICS, accuracy_pct, by_variant, check_metric

METRIC_LABELS = {
    "final": "last-epoch test accuracy",
    "best": "best-epoch test accuracy (the epoch chosen on the test set, as several papers report; optimistic)",
}
CSV_COLUMNS = ("variant", "n", "seeds", "accuracy_mean", "accuracy_std", "errors_mean", "errors_std",
               "wall_s_mean", "baseline", "delta_mean", "delta_std", "delta_ci_low", "delta_ci_high", "pairs",
               "confidence")


def summarize(records: Sequence[dict[str, Any]], *, baseline: str | None, metric: str = "final",
              confidence: float = 0.95) -> list[dict[str, Any]]:
  """One row per variant (first-seen order) of ``metric``'s test results over seeds.

  ``metric`` is ``"final"`` (the last epoch) or ``"best"`` (the epoch with the best test accuracy).
  A row holds ``variant``, ``n`` (seeds), ``seeds``, ``accuracy_mean``/``accuracy_std`` (percent;
  sample std, 0 for one seed), ``errors_mean``/``errors_std``, ``wall_s_mean``, ``baseline`` (True
  on the baseline's row) and, against the baseline, the paired difference in accuracy points over
  the seeds both have: ``delta_mean``, ``delta_std``, ``delta_ci_low``/``delta_ci_high`` (the
  ``confidence`` t-interval, None with fewer than 2 pairs) and ``pairs``. Those are None on the
  baseline's row and when ``baseline`` is None. A (variant, seed) recorded twice uses its last record.
  """
  check_metric(metric)
  groups = by_variant(records)
  if baseline is not None and baseline not in groups:
    raise ValueError(f"unknown baseline variant {baseline!r}; the variants are: "
                     + "; ".join(repr(v) for v in groups))
  base = groups.get(baseline) if baseline is not None else None
  rows = []
  for variant, runs in groups.items():
    seeds = list(runs)
    acc_m, acc_s = mean_std([accuracy_pct(r, metric) for r in runs.values()])
    err_m, err_s = mean_std([r[metric]["errors"] for r in runs.values()])
    walls = [r["wall_s"] for r in runs.values() if isinstance(r.get("wall_s"), (int, float))]
    row = {"variant": variant, "n": len(runs), "seeds": seeds, "accuracy_mean": acc_m, "accuracy_std": acc_s,
           "errors_mean": err_m, "errors_std": err_s, "wall_s_mean": mean_std(walls)[0] if walls else None,
           "baseline": variant == baseline, "delta_mean": None, "delta_std": None, "delta_ci_low": None,
           "delta_ci_high": None, "pairs": None, "confidence": confidence,
           "skipped_steps": sum(int(r.get("skipped_steps") or 0) for r in runs.values()),
           "seeds_with_skips": sum(1 for r in runs.values() if r.get("skipped_steps"))}
    if base is not None and variant != baseline:
      shared = [s for s in base if s in runs]
      diff = paired_difference([accuracy_pct(runs[s], metric) for s in shared],
                               [accuracy_pct(base[s], metric) for s in shared], confidence)
      row.update(delta_mean=diff["mean"], delta_std=diff["std"], delta_ci_low=diff["ci_low"],
                 delta_ci_high=diff["ci_high"], pairs=diff["n"])
    rows.append(row)
  return rows


def _pm(mean: float, std: float, n: int, fmt: str) -> str:
  return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def format_markdown(rows: Sequence[dict[str, Any]], *, metric: str, baseline: str | None) -> str:
  """A Markdown table of :func:`summarize`'s rows under a title line naming the accuracy shown
  (last-epoch, or best-epoch chosen on the test set) and, with a baseline, the paired-difference columns."""
  check_metric(metric)
  confidence = rows[0]["confidence"] if rows else 0.95
  level = f"{100 * confidence:g}%"
  title = f"Sweep, {METRIC_LABELS[metric]}: mean ± sample std over seeds"
  if baseline is not None:
    title += f"; Δ vs baseline `{baseline}`: paired over shared seeds, {level} t-interval"
  header = "| variant | seeds | test accuracy (%) | test errors | wall s / run |"
  rule = "|---|---:|---:|---:|---:|"
  if baseline is not None:
    header += " Δ accuracy (points) | " + level + " CI | pairs |"
    rule += "---:|---:|---:|"
  lines = [title, "", header, rule]
  for r in rows:
    wall = f"{r['wall_s_mean']:.1f}" if r["wall_s_mean"] is not None else ""
    line = (f"| {r['variant']} | {r['n']} | {_pm(r['accuracy_mean'], r['accuracy_std'], r['n'], '.2f')} | "
            f"{_pm(r['errors_mean'], r['errors_std'], r['n'], '.1f')} | {wall} |")
    if baseline is not None:
      if r["baseline"]:
        line += " baseline | | |"
      else:
        delta = "n/a" if r["delta_mean"] is None else f"{r['delta_mean']:+.2f}"
        ci = ("n/a" if r["delta_ci_low"] is None
              else f"[{r['delta_ci_low']:+.2f}, {r['delta_ci_high']:+.2f}]")
        line += f" {delta} | {ci} | {r['pairs']} |"
    lines.append(line)
  lines.append("")
  notes = ["accuracy in percent, errors as counts of test images; mean ± sample std over seeds (one seed: its value)"]
  if baseline is not None:
    notes.append("Δ: the variant's accuracy minus the baseline's on the same seed, averaged over the seeds both "
                 "ran; CI: Student-t interval of that mean (n/a with fewer than 2 pairs)")
  if metric == "best":
    notes.append("the best epoch is picked by test accuracy, so these numbers are biased upwards")
  lines.append("; ".join(notes) + ".")
  skipped = [r for r in rows if r.get("skipped_steps")]
  if skipped:
    lines += ["", "Skipped (non-finite) steps, the run's state kept: " + "; ".join(
        f"{r['variant']}: {r['skipped_steps']} steps in {r['seeds_with_skips']} of {r['n']} seeds" for r in skipped)
        + "."]
  return "\n".join(lines)


def _csv_cell(value: Any) -> Any:
  if value is None:
    return ""
  if isinstance(value, (list, tuple)):
    return " ".join(map(str, value))
  return value


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
  """Writes :func:`summarize`'s rows to ``path`` as CSV with a header (:data:`CSV_COLUMNS`); seeds are
  space-separated, None is an empty cell. Returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
      writer.writerow([_csv_cell(r.get(c)) for c in CSV_COLUMNS])
  return path


def safe_name(text: str) -> str:
  """``text`` reduced to characters that are safe in a file name."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "key"


def _provenance(records: Sequence[dict[str, Any]]) -> list[str]:
  groups = by_variant(records)
  kept = sum(len(g) for g in groups.values())
  seeds = sorted({r["seed"] for r in records}, key=lambda s: (str(type(s)), s))
  lines = [f"{len(records)} records: {len(groups)} variants, seeds {', '.join(map(str, seeds))}"
           + (f"; {len(records) - kept} superseded by re-runs (the last record of a variant and seed counts)"
              if kept < len(records) else "")]
  for field, label in (("kdjax", "kdjax"), ("device", "device")):
    values = sorted({str(r[field]) for r in records if field in r})
    if values:
      lines.append(f"{label}: {', '.join(values)}")
  dates = sorted(str(r["date"]) for r in records if "date" in r)
  if dates:
    lines.append(f"runs finished {dates[0]} to {dates[-1]}" if dates[0] != dates[-1] else f"run finished {dates[0]}")
  return lines


def write_report(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, baseline: str | None,
                 sweep_keys: Sequence[str] = ()) -> dict[str, Path]:
  """Writes a sweep's report to ``out_dir`` and returns the paths written, by name.

  ``report.md`` (provenance, the last-epoch table, then the best-epoch one, and the plots),
  ``report_final.csv`` and ``report_best.csv`` (:func:`summarize`'s rows), ``curves.png`` (test
  accuracy per epoch), ``accuracy_final.png`` and ``accuracy_best.png`` (per variant), and for
  every numeric key of ``sweep_keys`` (the grid's keys; ``seed`` is left out) with at least two
  values ``accuracy_vs_<key>.png`` (last-epoch accuracy against it). Keys of the result:
  ``report``, ``csv_final``, ``csv_best``, ``curves``, ``accuracy_final``, ``accuracy_best`` and
  ``vs_<key>``.
  """
  if not records:
    raise ValueError("no records to report")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths: dict[str, Path] = {}
  tables = {}
  for metric in METRICS:
    rows = summarize(records, baseline=baseline, metric=metric)
    tables[metric] = format_markdown(rows, metric=metric, baseline=baseline)
    paths[f"csv_{metric}"] = write_csv(rows, out / f"report_{metric}.csv")
  paths["curves"] = plots.plot_curves(records, out / "curves.png")
  for metric in METRICS:
    paths[f"accuracy_{metric}"] = plots.plot_final(records, out / f"accuracy_{metric}.png", metric=metric)
  for key in sweep_keys:
    if key == "seed":
      continue
    written = plots.plot_against(records, key, out / f"accuracy_vs_{safe_name(key)}.png", metric="final")
    if written is not None:
      paths[f"vs_{key}"] = written

  md = ["# Sweep report", "", *(f"- {line}" for line in _provenance(records)), "",
        "## Last-epoch test accuracy", "", tables["final"], "",
        "## Best-epoch test accuracy", "", tables["best"], "", "## Plots", ""]
  captions = {"curves": "test accuracy per epoch", "accuracy_final": "last-epoch test accuracy per variant",
              "accuracy_best": "best-epoch test accuracy per variant (chosen on the test set)"}
  for name, p in paths.items():
    if p.suffix == ".png":
      caption = captions.get(name, f"last-epoch test accuracy against {name[len('vs_'):]}")
      md.append(f"![{caption}]({p.name})")
      md.append("")
  paths["report"] = out / "report.md"
  paths["report"].write_text("\n".join(md))
  return {"report": paths.pop("report"), **paths}
