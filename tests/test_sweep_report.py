"""Sweep results store, statistics, report tables and plots (no training: synthetic records)."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest

from kdjax.stats import betainc, paired_difference, t_cdf, t_quantile
from kdjax.sweep.plots import plot_against, plot_curves, plot_final
from kdjax.sweep.report import format_markdown, summarize, write_csv, write_report
from kdjax.sweep.store import (
  append_record,
  best_and_final,
  finished_ids,
  load_records,
  run_id,
)

TEST_SIZE = 10_000


def make_record(values: dict, seed: int, accuracies: list[float], wall_s: float = 1.0) -> dict:
  """A record as the sweep writes it, for a run with these grid values, seed and per-epoch test accuracies."""
  config = {**values, "seed": seed, "epochs": len(accuracies)}
  history = [{"epoch": i + 1, "test_accuracy": a, "test_errors": round((1 - a) * TEST_SIZE),
              "test_loss": 1 - a, "train_loss": 1.1 - a} for i, a in enumerate(accuracies)]
  best, final = best_and_final(history)
  return {"run_id": run_id(config), "variant": " ".join(f"{k}={v}" for k, v in values.items()), "seed": seed,
          "config": config, "history": history, "final": final, "best": best, "wall_s": wall_s,
          "kdjax": "0.1.0", "device": "cpu:cpu x1", "date": f"2026-11-28T01:0{seed}:00+00:00"}


# --- statistics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("df, expected", [(1, 12.706), (4, 2.776), (9, 2.262), (30, 2.042)])
def test_t_quantile_table_values(df, expected):
  assert round(t_quantile(0.975, df), 3) == expected
  assert t_quantile(0.025, df) == pytest.approx(-t_quantile(0.975, df), rel=1e-12)


def test_t_quantile_more_values():
  # Reference values (R's qt): the 99.5% quantile, df = 1 (closed form tan), 2 (closed form) and large df.
  assert t_quantile(0.995, 1) == pytest.approx(math.tan(math.pi * 0.495), rel=1e-9)
  assert t_quantile(0.9, 2) == pytest.approx(0.8 / math.sqrt(2 * 0.9 * 0.1), rel=1e-9)
  assert t_quantile(0.995, 5) == pytest.approx(4.032142983557536, rel=1e-9)
  assert t_quantile(0.975, 100_000) == pytest.approx(1.959963984540054, abs=1e-4)  # the normal's
  assert t_quantile(0.5, 3) == 0.0
  for p in (0.6, 0.9, 0.999, 1 - 1e-9):
    for df in (0.7, 1, 3, 17.5, 250):
      assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, rel=1e-10, abs=1e-15)
  assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, rel=1e-12)  # I_x(2, 3) = 6x²/2 - 8x³/3 + 3x⁴
  with pytest.raises(ValueError):
    t_quantile(1.0, 3)
  with pytest.raises(ValueError):
    t_quantile(0.9, 0)


def test_paired_difference_hand_example():
  d = paired_difference([97.0, 96.5, 97.5], [96.0, 96.0, 96.5])  # differences 1.0, 0.5, 1.0
  std = math.sqrt(((1 / 6) ** 2 * 2 + (1 / 3) ** 2) / 2)
  half = 4.302652729749464 * std / math.sqrt(3)
  assert d["n"] == 3
  assert d["mean"] == pytest.approx(0.8333333333, rel=1e-9)
  assert d["std"] == pytest.approx(0.2886751346, rel=1e-9)
  assert std == pytest.approx(0.2886751346, rel=1e-9)
  assert d["ci_low"] == pytest.approx(0.8333333333 - half, rel=1e-9)
  assert d["ci_high"] == pytest.approx(0.8333333333 + half, rel=1e-9)
  assert d["ci_low"] == pytest.approx(0.1162, abs=1e-4)
  wider = paired_difference([97.0, 96.5, 97.5], [96.0, 96.0, 96.5], confidence=0.99)
  assert wider["ci_low"] < d["ci_low"] and wider["ci_high"] > d["ci_high"]


def test_paired_difference_few_pairs():
  one = paired_difference([97.0], [96.0])
  assert (one["n"], one["mean"], one["ci_low"], one["ci_high"]) == (1, 1.0, None, None)
  none = paired_difference([], [])
  assert none == {"mean": None, "std": None, "n": 0, "ci_low": None, "ci_high": None}
  with pytest.raises(ValueError):
    paired_difference([1.0, 2.0], [1.0])


# --- summaries ----------------------------------------------------------------------------------

def test_summarize_means_and_stds_match_numpy():
  rng = np.random.default_rng(0)
  grid = [{"method": m, "temperature": t} for m in ("hinton", "dkd") for t in (2, 4)]
  accs = {(i, s): rng.uniform(0.95, 0.99, size=3) for i in range(len(grid)) for s in range(4)}
  records = [make_record(grid[i], s, list(accs[i, s])) for s in range(4) for i in range(len(grid))]
  rows = summarize(records, baseline=None)
  assert [r["variant"] for r in rows] == [f"method={g['method']} temperature={g['temperature']}" for g in grid]
  for i, row in enumerate(rows):
    final = np.array([100 * accs[i, s][-1] for s in range(4)])
    errors = np.array([round((1 - accs[i, s][-1]) * TEST_SIZE) for s in range(4)])
    assert row["n"] == 4 and row["seeds"] == [0, 1, 2, 3]
    assert row["accuracy_mean"] == pytest.approx(final.mean(), rel=1e-12)
    assert row["accuracy_std"] == pytest.approx(final.std(ddof=1), rel=1e-12)
    assert row["errors_mean"] == pytest.approx(errors.mean(), rel=1e-12)
    assert row["errors_std"] == pytest.approx(errors.std(ddof=1), rel=1e-12)
    assert row["delta_mean"] is None and row["pairs"] is None
    best = np.array([100 * accs[i, s].max() for s in range(4)])
    best_row = summarize(records, baseline=None, metric="best")[i]
    assert best_row["accuracy_mean"] == pytest.approx(best.mean(), rel=1e-12)
    assert best_row["accuracy_std"] == pytest.approx(best.std(ddof=1), rel=1e-12)


def test_best_and_final_pick_epochs():
  history = make_record({"method": "x"}, 0, [0.90, 0.97, 0.95, 0.97, 0.96])["history"]
  best, final = best_and_final(history)
  assert best == {"epoch": 2, "accuracy": 0.97, "errors": 300, "loss": pytest.approx(0.03)}  # first of the tie
  assert final["epoch"] == 5 and final["accuracy"] == 0.96 and final["errors"] == 400
  history[0]["test_accuracy"] = float("nan")
  assert best_and_final(history)[0]["epoch"] == 2
  with pytest.raises(ValueError):
    best_and_final([])


def test_summarize_best_and_final_differ():
  records = [make_record({"method": "a"}, s, [0.90, 0.98, 0.96]) for s in range(2)]
  assert summarize(records, baseline=None, metric="final")[0]["accuracy_mean"] == pytest.approx(96.0)
  assert summarize(records, baseline=None, metric="best")[0]["accuracy_mean"] == pytest.approx(98.0)
  assert summarize(records, baseline=None, metric="best")[0]["errors_mean"] == 200
  with pytest.raises(ValueError, match="metric"):
    summarize(records, baseline=None, metric="last")


def test_summarize_pairs_by_seed():
  base = {0: 0.960, 1: 0.962, 2: 0.965}
  var = {2: 0.975, 0: 0.970, 3: 0.990}  # seed 1 missing, seed 3 has no baseline; shuffled order
  records = [make_record({"method": "hinton"}, s, [a]) for s, a in var.items()]
  records += [make_record({"method": "none"}, s, [a]) for s, a in reversed(base.items())]
  rows = {r["variant"]: r for r in summarize(records, baseline="method=none")}
  row = rows["method=hinton"]
  diffs = [100 * (var[s] - base[s]) for s in (0, 2)]  # 1.0, 1.0: paired by position it would not be
  assert row["pairs"] == 2 and row["n"] == 3
  assert row["delta_mean"] == pytest.approx(np.mean(diffs), abs=1e-9)
  assert row["delta_std"] == pytest.approx(np.std(diffs, ddof=1), abs=1e-9)
  assert row["delta_ci_low"] == pytest.approx(1.0, abs=1e-9) and row["delta_ci_high"] == pytest.approx(1.0, abs=1e-9)
  assert rows["method=none"]["baseline"] and rows["method=none"]["delta_mean"] is None
  assert not row["baseline"]
  # Mean of the variant over its 3 seeds vs the paired Δ over 2 seeds: different numbers.
  assert row["accuracy_mean"] - rows["method=none"]["accuracy_mean"] != pytest.approx(row["delta_mean"])
  with pytest.raises(ValueError, match="method=hinton"):
    summarize(records, baseline="method=dkd")


def test_summarize_last_record_wins():
  records = [make_record({"method": "a"}, 0, [0.90]), make_record({"method": "a"}, 1, [0.92]),
             make_record({"method": "a"}, 0, [0.96])]  # seed 0 re-run
  row, = summarize(records, baseline=None)
  assert row["n"] == 2 and row["seeds"] == [0, 1]
  assert row["accuracy_mean"] == pytest.approx(94.0)


def test_markdown_and_csv(tmp_path):
  records = [make_record({"method": m}, s, [0.95, a]) for s in range(3)
             for m, a in (("none", 0.96 + 0.001 * s), ("hinton", 0.97 - 0.002 * s))]
  records.append(make_record({"method": "dkd"}, 0, [0.95, 0.97]))  # one seed: one pair, no CI
  final = summarize(records, baseline="method=none", metric="final")
  md = format_markdown(final, metric="final", baseline="method=none")
  title = md.splitlines()[0]
  assert "last-epoch test accuracy" in title and "best-epoch" not in md
  lines = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| method")}
  assert "baseline" in lines["method=none"]
  assert "n/a" in lines["method=dkd"] and "n/a" not in lines["method=hinton"]
  # hinton − none per seed: 1.0, 0.7, 0.4 points → 0.7 ± 4.303 · 0.3 / √3
  assert "| 96.80 ± 0.20 | 320.0 ± 20.0 |" in lines["method=hinton"]
  assert "| +0.70 | [-0.05, +1.45] | 3 |" in lines["method=hinton"]
  best_md = format_markdown(summarize(records, baseline=None, metric="best"), metric="best", baseline=None)
  assert "best-epoch test accuracy" in best_md.splitlines()[0] and "optimistic" in best_md.splitlines()[0]
  assert "last-epoch" not in best_md and "Δ" not in best_md
  with (path := write_csv(final, tmp_path / "t.csv")).open() as f:
    table = list(csv.DictReader(f))
  assert [r["variant"] for r in table] == ["method=none", "method=hinton", "method=dkd"]
  assert float(table[1]["accuracy_mean"]) == pytest.approx(96.8) and table[1]["seeds"] == "0 1 2"
  assert table[2]["delta_ci_low"] == "" and table[2]["pairs"] == "1"
  assert path.read_text().splitlines()[0].startswith("variant,n,seeds,accuracy_mean")


# --- store --------------------------------------------------------------------------------------

def test_run_id_is_canonical():
  a = {"method": "hinton", "temperature": 4, "seed": 0, "student": {"model": "mlp", "widths": (800, 800)}}
  b = {"student": {"widths": [800.0, 800], "model": "mlp"}, "seed": 0.0, "temperature": 4.0, "method": "hinton"}
  assert run_id(a) == run_id(b)
  assert len(run_id(a)) == 12 and all(c in "0123456789abcdef" for c in run_id(a))
  assert run_id(a) == run_id(json.loads(json.dumps(a)))
  assert run_id({**a, "temperature": 4.5}) != run_id(a)
  assert run_id({**a, "seed": 1}) != run_id(a)
  assert run_id({"flag": True}) != run_id({"flag": 1})
  assert run_id({"x": np.float32(4.0), "y": np.int64(2)}) == run_id({"x": 4, "y": 2})
  # Pinned: the id of a finished run must not change between versions, or resumed sweeps redo it.
  assert run_id({"method": "hinton", "temperature": 4.0, "seed": 0}) == "7e1061807297"


def test_store_round_trip_and_finished_ids(tmp_path):
  path = tmp_path / "deep" / "sweep" / "results.jsonl"
  assert load_records(path) == [] and finished_ids(path) == set()
  records = [make_record({"method": m}, s, [0.9, 0.95]) for m in ("a", "b") for s in range(2)]
  for r in records:
    append_record(path, r)
  assert load_records(path) == records
  assert finished_ids(path) == {r["run_id"] for r in records}
  assert len(path.read_text().splitlines()) == 4


def test_store_truncated_last_line(tmp_path):
  path = tmp_path / "results.jsonl"
  records = [make_record({"method": "a"}, s, [0.9]) for s in range(3)]
  for r in records[:2]:
    append_record(path, r)
  line = json.dumps(records[2])
  with path.open("a") as f:
    f.write(line[: len(line) // 2])  # a crash in the middle of the third write
  with pytest.warns(UserWarning, match=":3: skipped"):
    assert load_records(path) == records[:2]
  with pytest.warns(UserWarning, match="skipped"):
    assert finished_ids(path) == {r["run_id"] for r in records[:2]}
  with pytest.warns(UserWarning, match="incomplete last line"):
    append_record(path, records[2])  # the resumed sweep redoes the run; the fragment is cut off
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert load_records(path) == records


def test_store_corrupt_middle_line_raises(tmp_path):
  path = tmp_path / "results.jsonl"
  records = [make_record({"method": "a"}, s, [0.9]) for s in range(3)]
  text = [json.dumps(r) for r in records]
  path.write_text("\n".join([text[0], text[1][:40], text[2]]) + "\n")
  with pytest.raises(ValueError, match=r"results\.jsonl:2"):
    load_records(path)
  path.write_text("\n".join([text[0], "[1, 2]", text[2], "{garbage"]) + "\n")
  with pytest.raises(ValueError, match=":2: corrupt"):
    load_records(path)


# --- plots and the report -----------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep_records(seeds=range(3)) -> list[dict]:
  rng = np.random.default_rng(1)
  records = []
  for s in seeds:
    records.append(make_record({"method": "none", "temperature": 1}, s, list(rng.uniform(0.90, 0.96, 4))))
    for m in ("hinton", "dkd"):
      for t in (1, 4, 8):
        records.append(make_record({"method": m, "temperature": t}, s, list(rng.uniform(0.92, 0.98, 4))))
  return records


def assert_png(path, min_bytes=5_000):
  assert path.exists()
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC and len(data) > min_bytes, (path, len(data))


def test_write_report(tmp_path):
  records = sweep_records()
  paths = write_report(records, tmp_path / "report", baseline="method=none temperature=1",
                       sweep_keys=["method", "temperature", "seed"])
  assert set(paths) == {"report", "csv_final", "csv_best", "curves", "accuracy_final", "accuracy_best",
                        "vs_temperature"}
  for p in paths.values():
    if p.suffix == ".png":
      assert_png(p)
  md = paths["report"].read_text()
  assert md.index("last-epoch test accuracy") < md.index("best-epoch test accuracy (the epoch chosen")
  assert "](curves.png)" in md and "](accuracy_vs_temperature.png)" in md
  for metric in ("final", "best"):
    rows = list(csv.reader(paths[f"csv_{metric}"].open()))
    assert rows[0][0] == "variant" and len(rows) == 1 + 7
  with pytest.raises(ValueError, match="unknown baseline"):
    write_report(records, tmp_path / "bad", baseline="method=nope", sweep_keys=[])


def test_plots_two_seeds_and_skips(tmp_path):
  records = sweep_records(seeds=(0, 1))  # two seeds: min–max bands
  assert_png(plot_curves(records, tmp_path / "curves.png"))
  assert_png(plot_final(records, tmp_path / "best.png", metric="best"))
  short = [r for r in records if r["variant"].startswith("method=dkd")]
  for r in short:
    r["variant"] = r["variant"].replace("method=dkd temperature=", "T")  # short labels: vertical layout
  assert_png(plot_final(short, tmp_path / "short.png"))
  assert plot_against(records, "alpha", tmp_path / "alpha.png") is None  # no such key
  assert plot_against(records, "method", tmp_path / "method.png") is None  # not numeric
  one_t = [r for r in records if r["config"]["temperature"] == 4]
  assert plot_against(one_t, "temperature", tmp_path / "t.png") is None  # one value
  assert not (tmp_path / "alpha.png").exists() and not (tmp_path / "t.png").exists()
  assert_png(plot_against(records, "temperature", tmp_path / "t.png", metric="best"))


def test_skipped_steps_are_named_under_the_table():
  from kdjax.sweep.report import format_markdown, summarize
  hist = [{"epoch": 1, "test_accuracy": 0.5, "test_errors": 50, "test_loss": 1.0}]
  recs = [{"run_id": str(s), "variant": v, "seed": s, "final": {"epoch": 1, "accuracy": 0.5, "errors": 50},
           "best": {"epoch": 1, "accuracy": 0.5, "errors": 50}, "history": hist, "wall_s": 1.0,
           "skipped_steps": 3 if (v == "b" and s == 1) else 0} for v in ("a", "b") for s in (0, 1)]
  text = format_markdown(summarize(recs, baseline="a"), metric="final", baseline="a")
  assert "Skipped (non-finite) steps, the run's state kept: b: 3 steps in 1 of 2 seeds." in text
  clean = [dict(r, skipped_steps=0) for r in recs]
  assert "Skipped" not in format_markdown(summarize(clean, baseline="a"), metric="final", baseline="a")
