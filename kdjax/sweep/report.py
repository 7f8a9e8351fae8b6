"""Sweep reports: per-variant statistics over seeds, paired comparisons with a baseline, tables and plots.

The records are those of :mod:`kdjax.sweep.store` (read through :mod:`kdjax.sweep.records`). Every number is over seeds: the mean and sample
standard deviation of a variant's test accuracy and errors, and against the baseline variant the
*paired* difference (same seed, so the same initialization and data order where the training
allows) with a Student-t confidence interval. A (variant, seed) recorded twice counts once, with
its last record: a re-run replaces the earlier result.

Every table shows each run's health (:mod:`kdjax.health`) next to its numbers; the means and the
paired differences leave unhealthy runs out (a paired difference uses the seeds healthy in both
the variant and the baseline) unless ``include_unhealthy``, and say how many were left out.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdjax.health import judge_teacher
from kdjax.stats import mean_std, paired_difference
from kdjax.sweep import plots
from kdjax.sweep.records import (
  METRICS,
  accuracy_pct,
  by_variant,
  check_metric,
  health_text,
  healthy_runs,
  unhealthy_runs,
)

METRIC_LABELS = {
    "final": "last-epoch test accuracy",
    "best": "best-epoch test accuracy (the epoch chosen on the test set, as several papers report; optimistic)",
}
CSV_COLUMNS = ("variant", "n", "seeds", "accuracy_mean", "accuracy_std", "errors_mean", "errors_std",
               "wall_s_mean", "baseline", "delta_mean", "delta_std", "delta_ci_low", "delta_ci_high", "pairs",
               "confidence", "n_total", "excluded", "health", "weak_teacher")
NOT_A_RESULT = "not a result"


def _teacher_accuracy(record: dict[str, Any]) -> float | None:
  teacher = record.get("teacher")
  if not isinstance(teacher, dict):
    return None
  acc = teacher.get("accuracy")
  return float(acc) if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None


def weak_teacher(runs: dict[Any, dict[str, Any]], base: dict[Any, dict[str, Any]] | None) -> str | None:
  """Why the teacher of a variant's runs (``{seed: record}``) is no better than the baseline's runs
  (:func:`kdjax.health.judge_teacher`: its test accuracy against the last-epoch test accuracies of
  the baseline's healthy seeds), or None: also when the runs used no teacher, or the baseline is
  not teacher-free (every baseline record's ``teacher`` None) or has no healthy run."""
  if not base or any(r.get("teacher") is not None for r in base.values()):
    return None
  alone = [r["final"]["accuracy"] for r in healthy_runs(base).values()
           if isinstance(r["final"].get("accuracy"), (int, float))]
  if not alone:
    return None
  details = []
  for acc in dict.fromkeys(a for a in map(_teacher_accuracy, runs.values()) if a is not None):
    found = judge_teacher(acc, alone)
    if found is not None:
      details.append(found["detail"])
  return "; ".join(details) or None


def summarize(records: Sequence[dict[str, Any]], *, baseline: str | None, metric: str = "final",
              confidence: float = 0.95, include_unhealthy: bool = False) -> list[dict[str, Any]]:
  """One row per variant (first-seen order) of ``metric``'s test results over seeds.

  ``metric`` is ``"final"`` (the last epoch) or ``"best"`` (the epoch with the best test accuracy).
  A row holds ``variant``, ``n_total`` (the seeds recorded), ``seeds`` (their list), ``n`` (the
  seeds in the means: the healthy ones, :func:`kdjax.health.is_healthy`, or all of them with
  ``include_unhealthy``), ``excluded`` (``n_total - n``), ``unhealthy`` (``[{"seed", "health"}]``
  of every unhealthy seed, kept or not, ``health`` as :func:`kdjax.health.short` gives it),
  ``health`` (``"ok"`` or ``"seed 0: collapsed to a constant predictor; ..."``),
  ``accuracy_mean``/``accuracy_std`` (percent; sample std, 0 for one seed),
  ``errors_mean``/``errors_std`` (all four None, "not a result", when no seed counts),
  ``wall_s_mean`` (over every seed recorded: a cost, whatever the result), ``baseline`` (True on the
  baseline's row), ``weak_teacher`` (:func:`weak_teacher`'s text or None), ``skipped_steps`` and
  ``seeds_with_skips`` (over every seed recorded) and, against the baseline, the paired difference
  in accuracy points over the seeds both have and that count in both (healthy in both, unless
  ``include_unhealthy``): ``delta_mean``, ``delta_std``, ``delta_ci_low``/``delta_ci_high`` (the
  ``confidence`` t-interval, None with fewer than 2 pairs), ``pairs`` and ``pairs_excluded`` (shared
  seeds left out for health). Those are None on the baseline's row and when ``baseline`` is None.
  A (variant, seed) recorded twice uses its last record.
  """
  check_metric(metric)
  groups = by_variant(records)
  if baseline is not None and baseline not in groups:
    raise ValueError(f"unknown baseline variant {baseline!r}; the variants are: "
                     + "; ".join(repr(v) for v in groups))
  base = groups.get(baseline) if baseline is not None else None
  base_used = healthy_runs(base, include_unhealthy) if base is not None else None
  rows = []
  for variant, runs in groups.items():
    used = healthy_runs(runs, include_unhealthy)
    bad = unhealthy_runs(runs)
    if used:
      acc_m, acc_s = mean_std([accuracy_pct(r, metric) for r in used.values()])
      err_m, err_s = mean_std([r[metric]["errors"] for r in used.values()])
    else:
      acc_m = acc_s = err_m = err_s = None
    walls = [r["wall_s"] for r in runs.values() if isinstance(r.get("wall_s"), (int, float))]
    unhealthy = [{"seed": seed, "health": health_text(r)} for seed, r in bad.items()]
    row = {"variant": variant, "n": len(used), "n_total": len(runs), "seeds": list(runs),
           "excluded": len(runs) - len(used), "unhealthy": unhealthy,
           "health": "; ".join(f"seed {u['seed']}: {u['health']}" for u in unhealthy) or "ok",
           "accuracy_mean": acc_m, "accuracy_std": acc_s,
           "errors_mean": err_m, "errors_std": err_s, "wall_s_mean": mean_std(walls)[0] if walls else None,
           "baseline": variant == baseline, "delta_mean": None, "delta_std": None, "delta_ci_low": None,
           "delta_ci_high": None, "pairs": None, "pairs_excluded": None, "confidence": confidence,
           "weak_teacher": weak_teacher(runs, base) if variant != baseline else None,
           "skipped_steps": sum(int(r.get("skipped_steps") or 0) for r in runs.values()),
           "seeds_with_skips": sum(1 for r in runs.values() if r.get("skipped_steps"))}
    if base is not None and variant != baseline:
      shared = [s for s in base if s in runs]
      paired = [s for s in shared if s in used and s in base_used]
      diff = paired_difference([accuracy_pct(runs[s], metric) for s in paired],
                               [accuracy_pct(base[s], metric) for s in paired], confidence)
      row.update(delta_mean=diff["mean"], delta_std=diff["std"], delta_ci_low=diff["ci_low"],
                 delta_ci_high=diff["ci_high"], pairs=diff["n"], pairs_excluded=len(shared) - len(paired))
    rows.append(row)
  return rows


def _pm(mean: float | None, std: float | None, n: int, fmt: str) -> str:
  if mean is None:
    return NOT_A_RESULT
  return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def _plural(n: int, word: str) -> str:
  return f"{n} {word}" + ("" if n == 1 else "s")


def _health_cell(row: dict[str, Any]) -> str:
  """``ok``, or e.g. ``1 of 2 left out: seed 0 collapsed to a constant predictor``."""
  if not row.get("unhealthy"):
    return "ok"
  bad = "; ".join(f"seed {u['seed']} {u['health']}" for u in row["unhealthy"])
  n_total = row.get("n_total", row["n"])
  if row.get("excluded"):
    return f"{row['excluded']} of {n_total} left out: {bad}"
  return f"{len(row['unhealthy'])} of {n_total} unhealthy, kept: {bad}"


def format_markdown(rows: Sequence[dict[str, Any]], *, metric: str, baseline: str | None) -> str:
  """A Markdown table of :func:`summarize`'s rows under a title line naming the accuracy shown
  (last-epoch, or best-epoch chosen on the test set) and, with a baseline, the paired-difference columns.

  Each row shows its health (``ok``, or its unhealthy seeds and whether they were left out); a
  variant with no seed in its means reads "not a result"; a variant whose teacher is no better than
  the (teacher-free) baseline is marked † and named under the table."""
  check_metric(metric)
  confidence = rows[0]["confidence"] if rows else 0.95
  level = f"{100 * confidence:g}%"
  title = f"Sweep, {METRIC_LABELS[metric]}: mean ± sample std over seeds"
  if baseline is not None:
    title += f"; Δ vs baseline `{baseline}`: paired over shared seeds, {level} t-interval"
  header = "| variant | seeds | health | test accuracy (%) | test errors | wall s / run |"
  rule = "|---|---:|---|---:|---:|---:|"
  if baseline is not None:
    header += " Δ accuracy (points) | " + level + " CI | pairs |"
    rule += "---:|---:|---:|"
  lines = [title, "", header, rule]
  for r in rows:
    wall = f"{r['wall_s_mean']:.1f}" if r["wall_s_mean"] is not None else ""
    n_total = r.get("n_total", r["n"])
    seeds = f"{r['n']}" if r["n"] == n_total else f"{r['n']} of {n_total}"
    name = r["variant"] + (" †" if r.get("weak_teacher") else "")
    line = (f"| {name} | {seeds} | {_health_cell(r)} | {_pm(r['accuracy_mean'], r['accuracy_std'], r['n'], '.2f')} | "
            f"{_pm(r['errors_mean'], r['errors_std'], r['n'], '.1f')} | {wall} |")
    if baseline is not None:
      if r["baseline"]:
        line += " baseline | | |"
      elif r["accuracy_mean"] is None:
        line += f" {NOT_A_RESULT} | | {r['pairs']} |"
      else:
        delta = "n/a" if r["delta_mean"] is None else f"{r['delta_mean']:+.2f}"
        ci = ("n/a" if r["delta_ci_low"] is None
              else f"[{r['delta_ci_low']:+.2f}, {r['delta_ci_high']:+.2f}]")
        pairs = f"{r['pairs']}" + (f" ({r['pairs_excluded']} left out)" if r.get("pairs_excluded") else "")
        line += f" {delta} | {ci} | {pairs} |"
    lines.append(line)
  lines.append("")
  notes = ["accuracy in percent, errors as counts of test images; mean ± sample std over seeds (one seed: its value)"]
  if baseline is not None:
    notes.append("Δ: the variant's accuracy minus the baseline's on the same seed, averaged over the seeds both "
                 "ran; CI: Student-t interval of that mean (n/a with fewer than 2 pairs)")
  if metric == "best":
    notes.append("the best epoch is picked by test accuracy, so these numbers are biased upwards")
  excluded = sum(r.get("excluded") or 0 for r in rows)
  kept = sum(len(r.get("unhealthy") or ()) for r in rows) - excluded
  where = "the means and Δ" if baseline is not None else "the means"
  if excluded:
    notes.append(f"{_plural(excluded, 'unhealthy run')} left out of {where} (kdjax.health; docs/health.md)")
  if kept:
    notes.append(f"{_plural(kept, 'unhealthy run')} kept in {where} (include_unhealthy; kdjax.health; "
                 "docs/health.md)")
  lines.append("; ".join(notes) + ".")
  weak = {}
  for r in rows:
    if r.get("weak_teacher"):
      weak.setdefault(r["weak_teacher"], []).append(r["variant"])
  for detail, variants in weak.items():
    lines += ["", "† teacher no better than the student alone: " + detail
              + (f" ({', '.join(variants)})" if len(weak) > 1 else "") + "."]
  skipped = [r for r in rows if r.get("skipped_steps")]
  if skipped:
    lines += ["", "Skipped (non-finite) steps, the run's state kept: " + "; ".join(
        f"{r['variant']}: {r['skipped_steps']} steps in {r['seeds_with_skips']} of {r.get('n_total', r['n'])} seeds"
        for r in skipped) + "."]
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


def _provenance(records: Sequence[dict[str, Any]], *, include_unhealthy: bool = False) -> list[str]:
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
  bad = sum(len(unhealthy_runs(g)) for g in groups.values())
  line = f"unhealthy runs: {bad} of {kept} (kdjax.health; docs/health.md)"
  if bad:
    line += (", kept in the means and Δ (include_unhealthy)" if include_unhealthy
             else ", left out of the means and Δ")
  teachers = _unhealthy_teachers(records)
  if teachers:
    line += f"; unhealthy teachers: {len(teachers)}"
  lines.append(line)
  return lines


def _unhealthy_teachers(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """``{name: health}`` of each distinct teacher (by its config) whose stored verdict,
  ``teacher_health``, is unhealthy."""
  found: dict[str, dict[str, Any]] = {}
  seen: set[str] = set()
  for r in records:
    health = r.get("teacher_health")
    if not health or health.get("ok", True):
      continue
    teacher = ((r.get("config") or {}).get("study") or {}).get("teacher")
    key = json.dumps(teacher, sort_keys=True, default=str) if isinstance(teacher, dict) else r["variant"]
    if key in seen:
      continue
    seen.add(key)
    name = f"teacher {teacher.get('model', '?')}" if isinstance(teacher, dict) else f"teacher of `{r['variant']}`"
    if name in found:
      name = f"{name} (#{len(seen)})"
    found[name] = health
  return found


def _unhealthy_section(records: Sequence[dict[str, Any]], *, include_unhealthy: bool) -> list[str]:
  """The report's "Unhealthy runs" section: every unhealthy run (and teacher) with each problem's
  label, what was measured and a likely remedy; empty when every run is healthy."""
  groups = by_variant(records)
  runs = [(f"`{variant}` seed {seed}", r.get("health") or {}) for variant, g in groups.items()
          for seed, r in unhealthy_runs(g).items()]
  teachers = list(_unhealthy_teachers(records).items())
  if not runs and not teachers:
    return []
  lines = ["## Unhealthy runs", "",
           ("Kept in the means and Δ above (include_unhealthy), marked in the health column."
            if include_unhealthy else "Left out of the means and Δ above, shown in the health column and as red "
            "crosses in the plots; their numbers stay in results.jsonl."), ""]
  for name, health in [*teachers, *runs]:
    problems = health.get("problems") or [{"label": "unhealthy", "detail": "no problem recorded", "remedy": ""}]
    for p in problems:
      lines.append(f"- {name}: **{p.get('label', p.get('kind', '?'))}** ({p.get('detail', '')})"
                   + (f"; likely remedy: {p['remedy']}" if p.get("remedy") else ""))
  lines.append("")
  return lines


def write_report(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike, *, baseline: str | None,
                 sweep_keys: Sequence[str] = (), include_unhealthy: bool = False) -> dict[str, Path]:
  """Writes a sweep's report to ``out_dir`` and returns the paths written, by name.

  ``report.md`` (provenance with the count of unhealthy runs, the last-epoch table, then the
  best-epoch one, a section listing every unhealthy run with its problems and a likely remedy, and
  the plots),
  ``report_final.csv`` and ``report_best.csv`` (:func:`summarize`'s rows), ``curves.png`` (test
  accuracy per epoch), ``accuracy_final.png`` and ``accuracy_best.png`` (per variant), and for
  every numeric key of ``sweep_keys`` (the grid's keys; ``seed`` is left out) with at least two
  values ``accuracy_vs_<key>.png`` (last-epoch accuracy against it). Keys of the result:
  ``report``, ``csv_final``, ``csv_best``, ``curves``, ``accuracy_final``, ``accuracy_best`` and
  ``vs_<key>``. Unhealthy runs (:mod:`kdjax.health`) are left out of every mean, paired
  difference and plotted mean unless ``include_unhealthy``; they are shown either way.
  """
  if not records:
    raise ValueError("no records to report")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths: dict[str, Path] = {}
  tables = {}
  for metric in METRICS:
    rows = summarize(records, baseline=baseline, metric=metric, include_unhealthy=include_unhealthy)
    tables[metric] = format_markdown(rows, metric=metric, baseline=baseline)
    paths[f"csv_{metric}"] = write_csv(rows, out / f"report_{metric}.csv")
  paths["curves"] = plots.plot_curves(records, out / "curves.png", include_unhealthy=include_unhealthy)
  for metric in METRICS:
    paths[f"accuracy_{metric}"] = plots.plot_final(records, out / f"accuracy_{metric}.png", metric=metric,
                                                       include_unhealthy=include_unhealthy)
  for key in sweep_keys:
    if key == "seed":
      continue
    written = plots.plot_against(records, key, out / f"accuracy_vs_{safe_name(key)}.png", metric="final",
                                 include_unhealthy=include_unhealthy)
    if written is not None:
      paths[f"vs_{key}"] = written

  md = ["# Sweep report", "", *(f"- {line}" for line in _provenance(records, include_unhealthy=include_unhealthy)),
        "", "## Last-epoch test accuracy", "", tables["final"], "",
        "## Best-epoch test accuracy", "", tables["best"], "",
        *_unhealthy_section(records, include_unhealthy=include_unhealthy), "## Plots", ""]
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
