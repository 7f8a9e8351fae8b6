import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # 7-9 s on 2 cores; the script composes parts tested on their own
def test_feature_kd_compares_methods_and_names_the_ones_that_do_not_fit(tmp_path, capsys):
  # The first 1,000 of the 10,000 training images (8 steps of 128): enough for the supervised row to
  # learn far above chance, at a fraction of the time.
  _load("feature_kd").main(["--seeds", "0", "--epochs", "1", "--teacher-epochs", "1", "--subset", "1000",
                            "--methods", "supervised,hinton,at", "--workdir", str(tmp_path)])
  table = (tmp_path / "feature_kd" / "table.md").read_text()
  assert "| `hinton` | Hinton et al. 2015 |" in table
  assert "± 0.0" not in table  # one seed: no spread to show
  assert "| `at` | Zagoruyko & Komodakis 2017 (AT) | n/a: attention transfer needs NHWC feature maps" in table
  rows = json.loads((tmp_path / "feature_kd" / "results.json").read_text())["rows"]
  assert len(rows["hinton"]["runs"]) == 1 and rows["at"]["skipped"]
  # one epoch (8 steps) on 1,000 images reaches 0.34-0.47 over seeds 0-5 (0.43 for seed 0); chance is 0.1
  assert rows["supervised"]["runs"][0]["accuracy"] > 0.3


QUICK = ["--seeds", "0", "--epochs", "1", "--teacher-epochs", "1", "--subset", "300"]


@pytest.mark.slow  # 7-9 s on 2 cores; the script composes parts tested on their own
def test_multi_teacher_compares_every_aggregation(tmp_path):
  _load("multi_teacher").main([*QUICK, "--rows", "alone,ca_mkd", "--workdir", str(tmp_path)])
  table = (tmp_path / "multi_teacher" / "table.md").read_text()
  assert "mnist_subset[:300]" in table and "their ensemble (mean of probabilities)" in table
  results = json.loads((tmp_path / "multi_teacher" / "results.json").read_text())
  assert list(results["rows"]) == ["student alone", "CA-MKD weights"] and {"mlp1200-s0", "mlp1200-s1", "mlp800-alone", "ensemble"} <= set(results["teachers"])
  for row in results["rows"].values():
    (run,) = row["runs"]
    assert 0 <= run["agreement"] <= 1 and set(run["agreement_per_teacher"]) == {"mlp1200-s0", "mlp1200-s1", "mlp800-alone"}
    assert f"| {run['errors']} |" in table or f"| {run['errors']:.1f} |" in table


@pytest.mark.slow  # 13 s on 2 cores; its parts are tested in test_self_kd.py and test_multi_teacher.py
def test_self_distillation_runs_every_variant(tmp_path):
  _load("self_distillation").main([*QUICK, "--workdir", str(tmp_path)])
  rows = json.loads((tmp_path / "self_distillation" / "results.json").read_text())["rows"]
  assert {"born-again generation 3", "tf-KD virtual teacher", "BYOT: early exit after block1",
          "mean teacher (EMA decay 0.99): the average"} <= set(rows)
  assert all(len(runs) == 1 and 0 <= runs[0]["accuracy"] <= 1 for runs in rows.values())
  assert "± 0.0" not in (tmp_path / "self_distillation" / "table.md").read_text()


def test_experiments_reject_a_bad_subset(tmp_path):
  import pytest
  with pytest.raises(SystemExit, match="--subset"):
    _load("self_distillation").main(["--subset", "0", "--workdir", str(tmp_path)])


@pytest.mark.slow  # 7-9 s on 2 cores; the script composes parts tested on their own
def test_online_trains_cohorts_and_a_teacher_assistant_chain(tmp_path):
  _load("online").main([*QUICK, "--rows", "dml2,small_takd", "--workdir", str(tmp_path)])
  table = (tmp_path / "online" / "table.md").read_text()
  assert "| `dml2` | DML, 2 students" in table and "Progressive (student mlp100)" in table
  rows = json.loads((tmp_path / "online" / "results.json").read_text())["rows"]
  assert len(rows["dml2"][0]["students"]) == 2 and 0 <= rows["dml2"][0]["ensemble_accuracy"] <= 1
  assert 0 <= rows["small_takd"][0]["assistant"]["accuracy"] <= 1


@pytest.mark.slow  # 7-9 s on 2 cores; the script composes parts tested on their own
def test_compare_variants_writes_a_report_with_both_accuracies(tmp_path, capsys):
  _load("compare_variants").main(["--seeds", "0,1", "--epochs", "1", "--teacher-epochs", "1", "--subset", "300",
                                  "--methods", "supervised,dkd", "--temperatures", "2,4",
                                  "--workdir", str(tmp_path)])
  report = (tmp_path / "compare_variants" / "report.md").read_text()
  assert "## Last-epoch test accuracy" in report and "## Best-epoch test accuracy" in report
  assert "| method=dkd temperature=4 |" in report
  assert (tmp_path / "compare_variants" / "accuracy_vs_temperature.png").stat().st_size > 5000
  assert "6 runs trained, 0 found finished" in capsys.readouterr().out  # (1 + 2 variants) x 2 seeds


@pytest.mark.slow  # 13 s on 2 cores; the teacher's checkpoint, vocabulary and restore are tested in test_transfer.py
def test_text_distill_trains_saves_restores_and_distils(tmp_path):
  _load("text_distill").main([*QUICK, "--rows", "kd_lstm", "--workdir", str(tmp_path)])
  out = tmp_path / "text_distill"
  table = (out / "table.md").read_text()
  assert "| teacher | bilstm |" in table and "| student distilled from the LSTM teacher | gru_small |" in table
  (saved,) = (out / "teachers").glob("*/vocab.json")  # the vocabulary beside the teacher's checkpoint
  assert saved.parent.name == "negation_300_bilstm_seed0"
  rows = json.loads((out / "results.json").read_text())["rows"]
  assert set(rows) == {"kd_lstm"} and 0 <= rows["kd_lstm"][0]["accuracy"] <= 1


@pytest.mark.slow  # 10 s on 2 cores; the alignment losses and the unlabelled batches are tested in test_domain.py and test_transfer.py
def test_domain_transfer_aligns_and_distils_across_views(tmp_path):
  _load("domain_transfer").main([*QUICK, "--subset", "400", "--rows", "source_only,kd_mmd,view_kd",
                                 "--workdir", str(tmp_path)])
  table = (tmp_path / "domain_transfer" / "table.md").read_text()
  assert "mnist_subset[:400] -> rotate:45: 200 labelled source / 200 unlabelled target" in table
  assert "| `kd_mmd` | KD + target soft labels + MMD alignment |" in table and "| `view_kd` |" in table
  results = json.loads((tmp_path / "domain_transfer" / "results.json").read_text())
  assert results["rows"]["kd_mmd"][0]["source"]["accuracy"] > 0.1 and not results["diverged"]


def test_domain_transfer_names_a_target_of_another_shape_before_training(tmp_path):
  import numpy as np
  import pytest

  from kdjax.data import write_idx
  rng = np.random.default_rng(0)
  for stem, shape in (("train-images-idx3-ubyte", (20, 32, 32)), ("t10k-images-idx3-ubyte", (10, 32, 32))):
    write_idx(tmp_path / stem, rng.integers(0, 256, shape, dtype=np.uint8))
  for stem, n in (("train-labels-idx1-ubyte", 20), ("t10k-labels-idx1-ubyte", 10)):
    write_idx(tmp_path / stem, (np.arange(n) % 10).astype(np.uint8))
  with pytest.raises(SystemExit, match=r"target domain .* has images of shape \(32, 32, 1\), but the source "
                                       r"'mnist_subset\[:300\]' \(and so the teacher and student\) \(28, 28, 1\)"):
    _load("domain_transfer").main([*QUICK, "--target", f"idx:{tmp_path}", "--workdir", str(tmp_path / "w")])
  with pytest.raises(SystemExit, match="unknown dataset 'blur:3'"):
    _load("domain_transfer").main([*QUICK, "--target", "blur:3", "--workdir", str(tmp_path / "w")])


@pytest.mark.slow  # 15 s on 2 cores: every model is attacked; the parts are tested in test_adversarial.py
def test_robustness_compares_kd_and_ard_and_plots_accuracy_against_eps(tmp_path):
  _load("robustness").main([*QUICK, "--rows", "kd,ard_robust", "--eps", "0,0.1", "--pgd-steps", "2",
                            "--train-steps", "1", "--workdir", str(tmp_path)])
  out = tmp_path / "robustness"
  results = json.loads((out / "results.json").read_text())
  assert list(results["rows"]) == ["teacher", "robust teacher", "kd", "ard_robust"]
  for (run,) in results["rows"].values():
    assert run["pgd 0"] == run["clean"] and run["pgd 0.1"] <= run["clean"]
  assert (out / "accuracy_vs_eps.png").stat().st_size > 1000
  assert "| student, ARD from the robust teacher `mlp800` |" in (out / "table.md").read_text()


@pytest.mark.slow  # 15 s on 2 cores; the parts are tested in test_compress.py and test_compress_qwix.py
def test_compress_distils_prunes_quantizes_and_exports(tmp_path):
  _load("compress").main([*QUICK, "--epochs", "2", "--prune-start", "0", "--prune-end", "1", "--sparsity", "0.8",
                          "--workdir", str(tmp_path)])
  rows = json.loads((tmp_path / "compress" / "results.json").read_text())["rows"]
  (aware,), (exported,), (pruned,) = rows["pruned, int8-aware"], rows["exported"], rows["pruned"]
  assert exported["accuracy"] == aware["accuracy"]  # the reloaded StableHLO predicts as the int8 model
  assert pruned["stored_bytes"] < 0.6 * pruned["dense_bytes"] and aware["stored_bytes"] < pruned["stored_bytes"]
  assert (tmp_path / "compress" / "student_seed0.stablehlo").exists()
  if importlib.util.find_spec("qwix") is None:  # the script leaves its qwix rows out
    assert "exported (qwix)" not in rows
    return
  (int8,), (qwix_int8,), (qwix_aware,), (qwix_exported,) = (rows[k] for k in (
      "pruned, int8", "pruned, int8 (qwix)", "pruned, int8-aware (qwix)", "exported (qwix)"))
  assert qwix_int8["accuracy"] == int8["accuracy"]  # qwix's int8 model with kdjax's scale: the same predictions
  assert qwix_exported["accuracy"] == qwix_aware["accuracy"]  # the reloaded qwix int8 StableHLO predicts as it
  assert qwix_exported["dense_bytes"] < 0.3 * exported["dense_bytes"]  # its file keeps the int8 weights


def test_robustness_and_compress_refuse_bad_settings_before_training(tmp_path):
  with pytest.raises(SystemExit, match="epsilon must be a finite number >= 0"):
    _load("robustness").main([*QUICK, "--eps", "0,-0.1", "--workdir", str(tmp_path)])
  with pytest.raises(SystemExit, match=r"sparsity must lie in \[0, 1\)"):
    _load("compress").main([*QUICK, "--sparsity", "1.0", "--workdir", str(tmp_path)])
  assert not (tmp_path / "robustness").exists() and not (tmp_path / "compress").exists()
