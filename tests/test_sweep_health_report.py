"""Run health in sweep reports (kdjax.health): tables, CSV, report and plots show each run's verdict,
and means, paired differences and plotted means leave unhealthy runs out unless asked (synthetic records)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from test_sweep_report import assert_png, make_record

from kdjax.health import problem, verdict
from kdjax.sweep.plots import plot_against, plot_curves, plot_final
from kdjax.sweep.records import healthy_runs
from kdjax.sweep.report import (
  CSV_COLUMNS,
  format_markdown,
  summarize,
  write_csv,
  write_report,
)

COLLAPSED = verdict([problem("collapsed", "test accuracy 11.35%, chance (the commonest class) 11.35%")])
DIVERGED = verdict([problem("diverged", "training loss 8.32e+25 in epoch 3, 2.3e+24x the first step's 36.8")])
OK = verdict([])
TEACHER = {"accuracy": 0.975, "errors": 250, "loss": 0.1}


def rec(values: dict, seed: int, accuracy: float, health=OK, teacher=None, **extra) -> dict:
  r = make_record(values, seed, [accuracy - 0.01, accuracy])
  return {**r, "health": health, "teacher": teacher, "skipped_steps": 0, **extra}


def sweep(teacher=TEACHER) -> list[dict]:
  """A baseline (teacher-free) and two distilled variants over 3 seeds; hinton's seed 0 collapsed."""
  base = {0: 0.960, 1: 0.962, 2: 0.964}
  hinton = {0: 0.113, 1: 0.972, 2: 0.970}
  dkd = {0: 0.968, 1: 0.969, 2: 0.971}
  records = [rec({"method": "supervised"}, s, a) for s, a in base.items()]
  records += [rec({"method": "hinton"}, s, a, COLLAPSED if s == 0 else OK, teacher) for s, a in hinton.items()]
  records += [rec({"method": "dkd"}, s, a, teacher=teacher) for s, a in dkd.items()]
  return records


def rows_by_variant(rows):
  return {r["variant"]: r for r in rows}


def md_lines(md):
  return {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| method")}


def test_healthy_runs_helper():
  runs = {0: {"health": COLLAPSED}, 1: {"health": OK}, 2: {}}  # a record without a verdict counts as healthy
  assert list(healthy_runs(runs)) == [1, 2]
  assert list(healthy_runs(runs, include_unhealthy=True)) == [0, 1, 2]


def test_unhealthy_seed_left_out_of_mean_and_delta():
  rows = rows_by_variant(summarize(sweep(), baseline="method=supervised"))
  row = rows["method=hinton"]
  assert (row["n_total"], row["n"], row["excluded"]) == (3, 2, 1)
  assert row["seeds"] == [0, 1, 2]
  assert row["unhealthy"] == [{"seed": 0, "health": "collapsed to a constant predictor"}]
  assert row["health"] == "seed 0: collapsed to a constant predictor"
  assert row["accuracy_mean"] == pytest.approx(97.1)
  assert row["accuracy_std"] == pytest.approx(np.std([97.2, 97.0], ddof=1))
  # Δ pairs only seeds 1 and 2 (seed 0 unhealthy in the variant): 1.0 and 0.6 points.
  assert row["pairs"] == 2 and row["pairs_excluded"] == 1
  assert row["delta_mean"] == pytest.approx(0.8)
  assert row["delta_std"] == pytest.approx(np.std([1.0, 0.6], ddof=1))
  assert rows["method=dkd"]["excluded"] == 0 and rows["method=dkd"]["health"] == "ok"
  assert rows["method=dkd"]["pairs"] == 3 and rows["method=dkd"]["pairs_excluded"] == 0
  # An unhealthy baseline seed drops that pair from every variant.
  records = [dict(r, health=DIVERGED) if (r["variant"], r["seed"]) == ("method=supervised", 2) else r
             for r in sweep()]
  rows = rows_by_variant(summarize(records, baseline="method=supervised"))
  assert rows["method=dkd"]["pairs"] == 2 and rows["method=dkd"]["pairs_excluded"] == 1
  assert rows["method=hinton"]["pairs"] == 1 and rows["method=hinton"]["delta_mean"] == pytest.approx(1.0)
  assert rows["method=supervised"]["n"] == 2 and rows["method=supervised"]["accuracy_mean"] == pytest.approx(96.1)


def test_include_unhealthy_brings_it_back():
  row = rows_by_variant(summarize(sweep(), baseline="method=supervised", include_unhealthy=True))["method=hinton"]
  assert (row["n_total"], row["n"], row["excluded"]) == (3, 3, 0)
  assert row["unhealthy"] == [{"seed": 0, "health": "collapsed to a constant predictor"}]  # still marked
  assert row["accuracy_mean"] == pytest.approx(np.mean([11.3, 97.2, 97.0]))
  assert row["pairs"] == 3 and row["pairs_excluded"] == 0
  assert row["delta_mean"] == pytest.approx(np.mean([11.3 - 96.0, 1.0, 0.6]))
  md = format_markdown([row], metric="final", baseline=None)
  assert "1 of 3 unhealthy, kept: seed 0 collapsed to a constant predictor" in md
  assert "1 unhealthy run kept in the means" in md and "left out" not in md


def test_markdown_shows_health_and_left_out_note():
  md = format_markdown(summarize(sweep(), baseline="method=supervised"), metric="final",
                       baseline="method=supervised")
  header = next(line for line in md.splitlines() if line.startswith("| variant"))
  assert header.startswith("| variant | seeds | health | test accuracy (%) |")
  lines = md_lines(md)
  hinton = lines["method=hinton"]
  assert "| 2 of 3 | 1 of 3 left out: seed 0 collapsed to a constant predictor | 97.10 ± 0.14 |" in hinton
  assert "| +0.80 |" in lines["method=hinton"] and "| 2 (1 left out) |" in lines["method=hinton"]
  assert "| 3 | ok | 96.93 ± 0.15 |" in lines["method=dkd"]
  assert "1 unhealthy run left out of the means and Δ (kdjax.health; docs/health.md)" in md
  assert "†" not in md  # the teacher (97.5%) beats the student alone (96.2% ± 0.2%)
  clean = [dict(r, health=OK) for r in sweep()]
  assert "unhealthy" not in format_markdown(summarize(clean, baseline="method=supervised"), metric="final",
                                            baseline="method=supervised")


def test_variant_with_no_healthy_run_is_not_a_result(tmp_path):
  records = [dict(r, health=DIVERGED) if r["variant"] == "method=dkd" else r for r in sweep()]
  rows = rows_by_variant(summarize(records, baseline="method=supervised"))
  row = rows["method=dkd"]
  assert row["n"] == 0 and row["excluded"] == 3 and row["n_total"] == 3
  assert row["accuracy_mean"] is None and row["errors_mean"] is None and row["delta_mean"] is None
  assert row["pairs"] == 0
  md = format_markdown(list(rows.values()), metric="final", baseline="method=supervised")
  line = md_lines(md)["method=dkd"]
  assert "| 0 of 3 | 3 of 3 left out: seed 0 diverged; seed 1 diverged; seed 2 diverged |" in line
  assert line.count("not a result") == 3  # accuracy, errors and Δ
  assert "4 unhealthy runs left out of the means and Δ" in md
  with write_csv(list(rows.values()), tmp_path / "t.csv").open() as f:
    table = {r["variant"]: r for r in csv.DictReader(f)}
  assert table["method=dkd"]["accuracy_mean"] == "" and table["method=dkd"]["n"] == "0"
  assert table["method=dkd"]["health"] == "seed 0: diverged; seed 1: diverged; seed 2: diverged"


def test_weak_teacher_is_marked():
  weak = {"accuracy": 0.961, "errors": 390, "loss": 0.2}  # below the student alone's 96.2% ± 0.2%
  rows = rows_by_variant(summarize(sweep(teacher=weak), baseline="method=supervised"))
  assert rows["method=supervised"]["weak_teacher"] is None
  detail = rows["method=hinton"]["weak_teacher"]
  assert detail == "teacher 96.10% against the student alone's 96.20% ± 0.20% over 3 seed(s)"
  assert rows["method=dkd"]["weak_teacher"] == detail
  md = format_markdown(list(rows.values()), metric="final", baseline="method=supervised")
  lines = md_lines(md)
  assert "method=hinton †" in lines and "method=dkd †" in lines and "method=supervised" in lines
  assert f"† teacher no better than the student alone: {detail}." in md
  # Not judged against a baseline that itself distils, or without a baseline.
  records = [dict(r, teacher=weak) if r["variant"] == "method=supervised" else r for r in sweep(teacher=weak)]
  assert all(r["weak_teacher"] is None for r in summarize(records, baseline="method=supervised"))
  assert all(r["weak_teacher"] is None for r in summarize(sweep(teacher=weak), baseline=None))


def test_csv_has_health_columns(tmp_path):
  rows = summarize(sweep(), baseline="method=supervised")
  path = write_csv(rows, tmp_path / "t.csv")
  header = path.read_text().splitlines()[0].split(",")
  assert {"n_total", "excluded", "health"} <= set(header) and tuple(header) == CSV_COLUMNS
  with path.open() as f:
    table = {r["variant"]: r for r in csv.DictReader(f)}
  assert table["method=hinton"]["n"] == "2" and table["method=hinton"]["n_total"] == "3"
  assert table["method=hinton"]["excluded"] == "1"
  assert table["method=hinton"]["health"] == "seed 0: collapsed to a constant predictor"
  assert table["method=dkd"]["health"] == "ok" and table["method=dkd"]["excluded"] == "0"


def test_records_without_health_count_as_healthy():
  records = [{k: v for k, v in r.items() if k not in ("health", "teacher")} for r in sweep()]
  row = rows_by_variant(summarize(records, baseline="method=supervised"))["method=hinton"]
  assert row["n"] == 3 and row["excluded"] == 0 and row["health"] == "ok" and row["weak_teacher"] is None


def test_write_report_lists_unhealthy_runs(tmp_path):
  records = [dict(r, config={**r["config"], "temperature": 1 + 3 * i}) for i, r in enumerate(sweep())]
  paths = write_report(records, tmp_path / "report", baseline="method=supervised", sweep_keys=["method", "seed"])
  md = paths["report"].read_text()
  assert "- unhealthy runs: 1 of 9 (kdjax.health; docs/health.md), left out of the means and Δ" in md
  section = md[md.index("## Unhealthy runs"):md.index("## Plots")]
  assert "`method=hinton` seed 0: **collapsed to a constant predictor** (test accuracy 11.35%" in section
  assert "likely remedy: lower the learning rate" in section
  assert md.count("1 unhealthy run left out of the means and Δ") == 2  # both tables
  with paths["csv_final"].open() as f:
    assert {r["variant"]: r["excluded"] for r in csv.DictReader(f)}["method=hinton"] == "1"
  kept = write_report(records, tmp_path / "kept", baseline="method=supervised", include_unhealthy=True)
  md = kept["report"].read_text()
  assert "unhealthy runs: 1 of 9 (kdjax.health; docs/health.md), kept in the means and Δ" in md
  assert "## Unhealthy runs" in md and "1 unhealthy run kept in the means and Δ" in md
  clean = write_report([dict(r, health=OK) for r in records], tmp_path / "clean", baseline="method=supervised")
  md = clean["report"].read_text()
  assert "unhealthy runs: 0 of 9" in md and "## Unhealthy runs" not in md


def test_write_report_lists_unhealthy_teacher(tmp_path):
  teacher_health = verdict([problem("not_trained", "test accuracy 10.00% (best epoch 10.00%) against 9.80% before")])
  records = [dict(r, teacher_health=teacher_health if r["teacher"] else None,
                  config={**r["config"], "study": {"teacher": {"model": "mlp1200", "epochs": 1}}}) for r in sweep()]
  md = write_report(records, tmp_path, baseline="method=supervised")["report"].read_text()
  assert "unhealthy teachers: 1" in md
  assert "- teacher mlp1200: **not trained** (test accuracy 10.00%" in md


def test_plots_with_unhealthy_seeds(tmp_path):
  rng = np.random.default_rng(0)
  records = []
  for s in range(3):
    records.append(rec({"method": "none", "temperature": 1}, s, rng.uniform(0.90, 0.96)))
    for t in (1, 4, 8):
      health = COLLAPSED if (t == 4 and s == 0) else OK
      records.append(rec({"method": "hinton", "temperature": t}, s, 0.113 if health is COLLAPSED else
                         rng.uniform(0.92, 0.98), health))
      # dkd at T=8: no healthy seed at all (no mean point, only red crosses)
      records.append(rec({"method": "dkd", "temperature": t}, s, rng.uniform(0.92, 0.98),
                         DIVERGED if t == 8 else OK))
  for include in (False, True):
    tag = "all" if include else "healthy"
    assert_png(plot_curves(records, tmp_path / f"curves_{tag}.png", include_unhealthy=include))
    assert_png(plot_final(records, tmp_path / f"final_{tag}.png", include_unhealthy=include))
    assert_png(plot_final(records, tmp_path / f"best_{tag}.png", metric="best", include_unhealthy=include))
    assert_png(plot_against(records, "temperature", tmp_path / f"t_{tag}.png", include_unhealthy=include))
  short = [dict(r, variant=r["variant"].replace("method=dkd temperature=", "T")) for r in records
           if r["variant"].startswith("method=dkd")]  # short labels: the vertical layout
  assert_png(plot_final(short, tmp_path / "short.png"))
  every_bad = [dict(r, health=DIVERGED) for r in records]  # nothing healthy anywhere
  assert_png(plot_final(every_bad, tmp_path / "none.png"), min_bytes=2_000)
  assert_png(plot_curves(every_bad, tmp_path / "none_curves.png"), min_bytes=2_000)
  assert_png(plot_against(every_bad, "temperature", tmp_path / "none_t.png"), min_bytes=2_000)


def test_plot_labels_say_what_was_left_out(tmp_path, monkeypatch):
  from kdjax import plotting
  from kdjax.sweep import plots
  figures = []
  monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or plotting.save(fig, path))
  records = sweep()
  plot_final(records, tmp_path / "final.png")
  ax = figures[-1].axes[0]
  ticks = [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels()]
  assert any("method=hinton" in t and "(n=2, 1 unhealthy left out)" in t for t in ticks), ticks
  assert "1 unhealthy run left out" in ax.get_title()
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "unhealthy seed (left out)" in legend
  plot_curves(records, tmp_path / "curves.png")
  legend = [t.get_text() for t in figures[-1].axes[0].get_legend().get_texts()]
  assert "method=hinton (n=2, 1 unhealthy left out)" in legend and "method=dkd (n=3)" in legend
  plot_final(records, tmp_path / "kept.png", include_unhealthy=True)
  ax = figures[-1].axes[0]
  assert "unhealthy seed (kept)" in [t.get_text() for t in ax.get_legend().get_texts()]
  assert "left out" not in ax.get_title()
