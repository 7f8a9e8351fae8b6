"""The language-model study through the CLI (kdjax distill --config lm_...): its errors before training,
and a small study end to end (teacher, top-k cache on disk, paired comparisons, health, reuse)."""

import json

import pytest

from kdjax.cli import main


@pytest.mark.parametrize("args, message", [
    (["--set", "recipes=sft,distil_everything"], "unknown recipe"),
    (["--set", "recipes=word_kd"], "recipes must include 'sft'"),
    (["--set", "prompt_len=64"], r"prompt_len must lie in 1\.\.seq_len-1 \(63\)"),
    (["--set", "student.model=mlp100"], "is not a language model"),
    (["--method", "hinton"], "--method do not apply to a language-model study"),
    (["--set", "topk=0"], "topk must be >= 1"),
    (["--set", "topk=300"], r"k=300 must lie in 1\.\.259"),  # found with the data, before the teacher trains
])
def test_a_bad_lm_study_is_refused_before_training(args, message, capsys, tmp_path):
  assert main(["distill", "--config", "lm_stdlib", "--workdir", str(tmp_path), *args]) == 2
  assert __import__("re").search(message, capsys.readouterr().err)
  assert not list(tmp_path.iterdir())


def test_lm_show_config_prints_the_resolved_study(capsys):
  assert main(["distill", "--config", "lm_tiny", "--set", "student.epochs=3", "--seeds", "4,5", "--show-config"]) == 0
  cfg = __import__("tomllib").loads(capsys.readouterr().out)  # a study file (TOML)
  assert cfg["kind"] == "lm_study" and cfg["student"]["epochs"] == 3 and cfg["seeds"] == [4, 5] and cfg["student"]["model"] == "lm_tiny"


def test_a_small_lm_study_end_to_end(tmp_path, capsys):
  argv = ["distill", "--config", "lm_tiny", "--workdir", str(tmp_path), "--no-progress", "--allow-unhealthy",
          "--set", "recipes=sft,topk_kd", "--set", "max_rows=32"]
  assert main(argv) == 0
  captured = capsys.readouterr()
  out = tmp_path / "lm_tiny"
  results = json.loads((out / "results.json").read_text())
  assert set(results["runs"]) == {"sft", "topk_kd"} and [r["seed"] for r in results["runs"]["sft"]] == [0, 1]
  assert results["corpus"]["licence"].startswith("Python Software Foundation License")
  for r in results["runs"]["topk_kd"]:
    assert {"perplexity", "test_accuracy", "teacher_agreement"} <= set(r["final"]) and "ok" in r["health"]
    assert r["method"]["name"] == "lm_kd"
  assert set(results["comparisons"]) == {"topk_kd"}
  samples = results["samples"]  # continuations of validation prompts, decoded, by the teacher and each recipe
  assert len(samples["prompts"]) == 3 and all(len(samples[k]) == 3 for k in ("teacher", "sft", "topk_kd"))
  assert all(isinstance(t, str) and t for t in samples["teacher"])
  assert "| topk_kd |" in captured.out and "Δ perplexity vs sft" in (out / "table.md").read_text()
  lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert [(r["run"], r["seed"]) for r in lines] == [("teacher", 0), ("sft", 0), ("sft", 1), ("topk_kd", 0),
                                                    ("topk_kd", 1)]
  caches = [p for p in out.iterdir() if p.name.endswith("-top4")]
  assert len(caches) == 1 and (caches[0] / "manifest.json").exists()
  # A second run reuses the saved teacher and its cache, and gives the same numbers.
  assert main(argv) == 0
  assert "restored from" in capsys.readouterr().err
  again = json.loads((out / "results.json").read_text())
  assert again["runs"]["topk_kd"][1]["final"] == results["runs"]["topk_kd"][1]["final"]
