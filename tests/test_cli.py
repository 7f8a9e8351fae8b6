import json

import numpy as np
import pytest

from kdjax.cli import main
from kdjax.config import TrainConfig, override, validate_study
from kdjax.presets import HINTON_MNIST, PRESETS


def test_override_sets_nested_typed_fields():
  cfg = override(HINTON_MNIST, ["temperature=4", "teacher.epochs=3", "seeds=1,2", "distilled.jitter=0",
                                "tfds_data_dir=none", "download=true"])
  assert cfg.temperature == 4.0 and isinstance(cfg.temperature, float)
  assert cfg.teacher.epochs == 3 and cfg.seeds == (1, 2) and cfg.distilled.jitter == 0
  assert cfg.tfds_data_dir is None and cfg.download is True
  assert HINTON_MNIST.teacher.epochs != 3  # configs are immutable


@pytest.mark.parametrize("assignment,message", [
    ("temprature=4", "unknown config key 'temprature'"),
    ("teacher.epoch=3", "unknown config key 'teacher.epoch'"),
    ("teacher.epochs=three", "teacher.epochs: expected int, got 'three'"),
    ("temperature=nan", "expected a finite number"),
    ("teacher=3", "is a group"),
    ("download=maybe", "expected true or false"),
    ("temperature", "not of the form key=value"),
])
def test_bad_overrides_are_named(assignment, message):
  with pytest.raises(ValueError, match=message):
    override(HINTON_MNIST, [assignment])


@pytest.mark.parametrize("changes,message", [
    ({"temperature": 0.0}, "temperature must be"),
    ({"temperature": -2.0}, "temperature must be"),
    ({"alpha": 1.2}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"seeds": ()}, "seeds is empty"),
    ({"teacher": TrainConfig(model="resnet9000")}, "unknown model 'resnet9000'"),
    ({"student": TrainConfig(model="mlp800", epochs=0)}, "student.epochs must be >= 1"),
    ({"distilled": TrainConfig(model="mlp800", optimizer="lion")}, "unknown optimizer 'lion'"),
    ({"distilled": TrainConfig(model="cnn16")}, "must be the same model"),
])
def test_validate_study_rejects_bad_configs(changes, message):
  import dataclasses
  with pytest.raises(ValueError, match=message):
    validate_study(dataclasses.replace(HINTON_MNIST, **changes))


@pytest.mark.parametrize("argv,message", [
    (["--set", "temperature=0"], "temperature must be"),
    (["--set", "alpha=2"], "alpha"),
    (["--set", "teacher.model=nope"], "unknown model 'nope'"),
    (["--data", "idx:/no/such/dir"], "does not exist"),
    (["--data", "mnist"], "unknown dataset 'mnist'"),
    (["--set", "student.model=cnn16", "--set", "distilled.model=cnn16"],
     r"student: model 'cnn16' expects images of shape \(32, 32, 3\).*\(28, 28, 1\)"),
    (["--set", "teacher.model=cnn64"], "model 'cnn64' has no option input_dropout_rate"),
])
def test_cli_bad_input_fails_before_training(argv, message, capsys, tmp_path):
  code = main(["distill", "--no-progress", "--workdir", str(tmp_path), *argv])
  err = capsys.readouterr().err
  assert code == 2 and "kdjax: error:" in err
  assert __import__("re").search(message, err), err
  assert not (tmp_path / "hinton_mnist" / "metrics.jsonl").exists() or \
      (tmp_path / "hinton_mnist" / "metrics.jsonl").read_text() == ""


def test_cli_idx_dir_without_idx_files(capsys, tmp_path):
  (tmp_path / "d").mkdir()
  assert main(["distill", "--data", f"idx:{tmp_path / 'd'}", "--workdir", str(tmp_path)]) == 2
  assert "holds no complete IDX dataset" in capsys.readouterr().err


def _idx_dir(path, data, n_train):
  """``data``'s first ``n_train`` training images and its whole test split, written as an MNIST IDX directory."""
  from kdjax.data import write_idx
  from kdjax.data.idx import IDX_FILES
  path.mkdir()
  arrays = {"train_images": data.train_images[:n_train], "train_labels": data.train_labels[:n_train],
            "test_images": data.test_images, "test_labels": data.test_labels}
  for key, name in IDX_FILES.items():
    a = np.asarray(arrays[key])
    write_idx(path / name, (a.reshape(a.shape[:3]) if key.endswith("images") else a).astype(np.uint8))
  return path


# 15 s on 2 cores: in the slow set (`pytest -m slow`); the README's first command runs the same
# study in full, run_study is tested on mocked CIFAR-10 below, and `distill`'s flags and its NaN
# path in the default run.
@pytest.mark.slow
def test_cli_runs_the_study_end_to_end(mnist, capsys, tmp_path):
  # The preset's study on half the built-in training set (5,000 images; all 2,000 test images), given
  # as an IDX directory: `distill` has no --subset. One epoch on it trains the student alone to
  # 0.87-0.88 test accuracy over seeds 0-4 (0.90 on all 10,000).
  data_dir = _idx_dir(tmp_path / "mnist_half", mnist, 5000)
  code = main(["distill", "--no-progress", "--workdir", str(tmp_path), "--seeds", "0", "--data", f"idx:{data_dir}",
               "--set", "teacher.epochs=1", "--set", "student.epochs=1", "--set", "distilled.epochs=1"])
  out = capsys.readouterr().out
  assert code == 0
  for row in ("| teacher | mlp1200 |", "| student alone | mlp800 |", "| student alone + jitter (control) | mlp800 |",
              "| student distilled | mlp800 |"):
    assert row in out
  run_dir = tmp_path / "hinton_mnist"
  results = json.loads((run_dir / "results.json").read_text())
  assert results["config"]["seeds"] == [0] and results["environment"]["kdjax"]
  assert len(results["runs"]["distilled"]) == 1 and all(r["accuracy"] > 0.8 for r in results["runs"]["student"])
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 4  # teacher + (student, control, distilled), one epoch each
  assert sorted({json.loads(x)["run"] for x in lines}) == ["control", "distilled", "student", "teacher"]
  assert (run_dir / "table.md").read_text().strip() in out


def test_cli_list(capsys):
  assert main(["list"]) == 0
  out = capsys.readouterr().out
  assert "hinton_mnist" in out and "mlp1200" in out
  # the method registry: name, family, paper, then every hyperparameter with its default
  assert __import__("re").search(r"\n  gkd +logit +Agarwal et al. 2024 .*\n +alpha=<the study's alpha>, "
                                 r"temperature=<the study's temperature>, beta=0.5, standardize=False\n", out), out
  assert __import__("re").search(r"\n  dkd +logit +Zhao et al. 2022 \(DKD\)\n +alpha=1.0, beta=8.0, ", out)
  assert "crd_queue" in out and "queue_size=4096" in out


def test_cli_nan_stops_names_the_step_and_keeps_the_last_good_state(capsys, tmp_path):
  code = main(["distill", "--no-progress", "--workdir", str(tmp_path), "--seeds", "0",
               "--set", "teacher.epochs=1", "--set", "teacher.learning_rate=1e12"])
  err = capsys.readouterr().err
  assert code == 1
  assert __import__("re").search(r"teacher mlp1200 seed 0: (loss|grad_norm) became (nan|inf) at step \d+", err), err
  saved = tmp_path / "hinton_mnist" / "teacher_seed0_last_good.npz"
  assert saved.exists() and str(saved) in err
  with np.load(saved) as z:
    assert all(np.isfinite(z[k]).all() for k in z.files if "params" in k)


def test_model_options_are_checked_before_training():
  import dataclasses
  with pytest.raises(ValueError, match="model 'cnn16' has no option input_dropout_rate"):
    validate_study(dataclasses.replace(HINTON_MNIST, student=TrainConfig("cnn16", input_dropout=0.1),
                                       distilled=TrainConfig("cnn16")))
  with pytest.raises(ValueError, match=r"teacher.dropout must lie in \[0, 1\)"):
    validate_study(override(HINTON_MNIST, ["teacher.dropout=1.0"]))


def test_cnn_study_runs_on_mocked_cifar10():
  tfds = pytest.importorskip("tensorflow_datasets")
  from kdjax.presets import CNN_CIFAR10
  from kdjax.study import run_study
  cfg = override(CNN_CIFAR10, ["seeds=0", "augmented_control=false", "teacher.epochs=1", "student.epochs=1",
                               "distilled.epochs=1", "teacher.batch_size=32", "student.batch_size=32",
                               "distilled.batch_size=32"])
  with tfds.testing.mock_data(num_examples=64):
    result = run_study(cfg, progress=False, write=False)
  assert result.dataset == "cifar10" and result.test_size == 64
  assert {r: len(v) for r, v in result.runs.items()} == {"teacher": 1, "student": 1, "control": 0, "distilled": 1}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_study(name):
  validate_study(PRESETS[name])


def test_cli_distills_with_any_registered_method(mnist, capsys, tmp_path):
  # DKD with one hyperparameter set, on 256 training and 200 test images (one epoch per run, no control):
  # the "student distilled" row trains make_method("dkd", beta=4.0), and the table and results say so.
  import dataclasses
  tiny = dataclasses.replace(mnist, test_images=mnist.test_images[:200], test_labels=mnist.test_labels[:200])
  data_dir = _idx_dir(tmp_path / "mnist_tiny", tiny, 256)
  code = main(["distill", "--no-progress", "--workdir", str(tmp_path), "--seeds", "0", "--data", f"idx:{data_dir}",
               "--method", "dkd", "--set", "method.beta=4", "--set", "augmented_control=false",
               "--set", "teacher.epochs=1", "--set", "student.epochs=1", "--set", "distilled.epochs=1",
               "--allow-unhealthy"])  # one epoch on 256 images: not a healthy teacher, and not the point here
  out = capsys.readouterr().out
  assert code == 0, out
  assert "method dkd (beta=4), seeds 0" in out and "T=20" not in out
  assert "| student distilled | mlp800 |" in out
  run_dir = tmp_path / "hinton_mnist"
  results = json.loads((run_dir / "results.json").read_text())
  assert results["config"]["method"] == "dkd" and results["config"]["method_hparams"] == [["beta", 4.0]]
  assert results["method"] == {"name": "dkd", "hparams": {"beta": 4.0}}  # DKD keeps its own T and alpha
  distilled = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
               if json.loads(x)["run"] == "distilled"]
  assert len(distilled) == 1 and np.isfinite(distilled[0]["train_dkd"])


@pytest.mark.parametrize("argv,message", [
    (["--method", "ofa"], r"unknown method 'ofa'; known methods: ab, .*dkd, .*gkd, hinton, .*vid"),
    (["--method", "dkd", "--set", "method.foo=1"],
     r"config key 'method.foo': method 'dkd' has no hyperparameter 'foo'; its hyperparameters: alpha=1.0, beta=8.0, "
     r"temperature=4.0, ce_weight=1.0, warmup_epochs=None, standardize=False"),
    (["--set", "method.beta=4"], r"method 'hinton' has no hyperparameter 'beta'; its hyperparameters: alpha="),
    (["--method", "dkd", "--set", "method.beta=big"], r"config key 'method.beta': expected a number, got 'big'"),
    (["--method", "gkd", "--set", "method.beta=1"], r"strictly between 0 and 1"),
    (["--method", "tf_kd"], r"method 'tf_kd' uses no teacher"),
    (["--set", "method_hparams=beta"], r"set the method's hyperparameters one by one, as method.NAME=VALUE"),
    (["--method", "dkd", "--set", "temperature=8"],
     r"method 'dkd' does not take the study's temperature.*--set method.NAME=VALUE \(alpha=1.0, beta=8.0, temperature"),
    # traced on shapes before the teacher trains: a feature the student lacks, inputs the data lacks
    (["--method", "fitnet", "--set", "method.student_layer=conv1"], r"unknown feature 'conv1' for the student"),
    (["--method", "domain_kd"], r"domain_kd needs unlabelled target-domain images"),
    # a schedule in epochs longer than the run: found when the step is traced, before the teacher trains
    (["--method", "dkd", "--set", "method.warmup_epochs=30"],
     r"dkd: warmup_epochs=30 is longer than the run \(10 epochs\)"),
    (["--set", "distilled.warmup_epochs=10"], r"distilled.warmup_epochs 10 is not shorter than its 10 epochs"),
    (["--set", "health.top_class_share=2"], r"health.top_class_share must lie in \(0, 1\]"),
])
def test_cli_bad_method_fails_before_training(argv, message, capsys, tmp_path):
  code = main(["distill", "--no-progress", "--workdir", str(tmp_path), *argv])
  err = capsys.readouterr().err
  assert code == 2 and __import__("re").search(message, err), err
  assert not (tmp_path / "hinton_mnist").exists()


def test_cli_show_config_round_trips_the_method(capsys):
  import tomllib  # --show-config prints a study file (TOML; tests/test_config_file.py reads it back whole)
  assert main(["distill", "--set", "method.beta=0.9", "--method", "gkd", "--set", "method.temperature=2",
               "--show-config"]) == 0
  shown = tomllib.loads(capsys.readouterr().out)
  assert shown["method"] == "gkd" and shown["method_hparams"] == {"beta": 0.9, "temperature": 2.0}
  # the printed config is the config the run would use
  expected = override(HINTON_MNIST, ["method=gkd", "method.temperature=2", "method.beta=0.9"])
  assert override(HINTON_MNIST, [f"method={shown['method']}"] + [f"method.{k}={v}" for k, v in
                                                                   shown["method_hparams"].items()]) == expected
  # the default run is Hinton KD at the study's T and alpha, and shows no method hyperparameters
  assert main(["distill", "--show-config"]) == 0
  default = tomllib.loads(capsys.readouterr().out)
  assert default["method"] == "hinton" and default["method_hparams"] == {}


def test_the_table_title_names_the_method():
  import dataclasses

  from kdjax.config import study_method_hparams
  from kdjax.study import method_label
  assert method_label(HINTON_MNIST) == "T=20, alpha=0.5"  # the main job's title, as before
  assert study_method_hparams(HINTON_MNIST) == {"alpha": 0.5, "temperature": 20.0}
  assert method_label(override(HINTON_MNIST, ["method=dkd"])) == "method dkd (defaults)"
  gkd = override(HINTON_MNIST, ["method=gkd", "method.beta=0.2"])
  assert method_label(gkd) == "method gkd (alpha=0.5, beta=0.2, temperature=20)"  # the study's T and alpha
  assert method_label(override(HINTON_MNIST, ["method.temperature=4"])) == \
      "method hinton (alpha=0.5, temperature=4)"
  assert dataclasses.replace(HINTON_MNIST, method="hinton") == HINTON_MNIST


@pytest.mark.parametrize("item", ["method=dkd", "method.temperature=2"])
def test_experiment_scripts_refuse_a_method_they_would_ignore(item):
  import argparse

  from kdjax.study import add_experiment_args, experiment_config
  parser = argparse.ArgumentParser()
  add_experiment_args(parser)
  with pytest.raises(SystemExit, match="feature_kd: this script builds its own methods"):
    experiment_config(parser.parse_args(["--set", item]), "feature_kd")
  assert experiment_config(parser.parse_args(["--set", "temperature=4"]), "feature_kd").temperature == 4.0
