"""Run health (kdjax.health): each unhealthy case built on purpose, and its verdict, table mark,
warning and exit status; a healthy run is ok; a verdict marks a result and never changes it."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.cli import main
from kdjax.config import TrainConfig, override
from kdjax.health import (EXIT_UNHEALTHY, HealthThresholds, is_healthy, judge_run, judge_teacher, majority_share,
                          warning_block)
from kdjax.losses import hard_cross_entropy
from kdjax.methods import as_method
from kdjax.presets import HINTON_MNIST
from kdjax.train import train_student

STUDENT = TrainConfig(model="mlp800", epochs=2, batch_size=100, learning_rate=0.05)


def _epochs(*rows):
  """Epoch records from (train_loss, grad_norm, test_accuracy[, top_class_share]) rows."""
  out = []
  for e, (loss, grad, acc, *share) in enumerate(rows, start=1):
    out.append({"epoch": e, "train_loss": loss, "train_grad_norm": grad, "test_accuracy": acc, "test_loss": 0.5,
                **({"test_top_class_share": share[0]} if share else {})})
  return out


INITIAL = {"train_loss": 2.3, "train_grad_norm": 1.0, "test_accuracy": 0.10}


def _kinds(health):
  return [p["kind"] for p in health["problems"]]


# --- The verdicts on recorded histories ---------------------------------------------------------------

def test_a_healthy_history_is_ok():
  health = judge_run(_epochs((0.9, 1.2, 0.90, 0.12), (0.4, 1.1, 0.95, 0.11)), INITIAL, majority=0.11)
  assert health["ok"] and health["problems"] == [] and health["loss_rise"] == pytest.approx(0.9 / 2.3, abs=1e-3)


@pytest.mark.parametrize("rows,kind,detail", [
    # the loss rising above twice the first step's (the paper's T=20 run on full MNIST: 28 against ~2.3)
    (((28.0, 21.0, 0.60), (9.0, 5.0, 0.58)), "diverged", "training loss 28 in epoch 1, 12.2x"),
    # the gradient norm exploding while the epoch-mean loss stays low
    (((0.9, 40.0, 0.90), (0.5, 1.0, 0.92)), "diverged", "gradient norm 40 in epoch 1, 40.0x"),
    # a loss that is not finite
    (((0.9, 1.0, 0.90), (float("inf"), 1.0, 0.92)), "diverged", "training loss not finite in epoch 2"),
    # learnt, then fell to chance
    (((0.9, 1.0, 0.80), (2.2, 1.0, 0.113)), "collapsed", "test accuracy 11.30%, chance (the commonest class) 11.35%"),
    # one class takes nearly every prediction, accuracy above the margin
    (((0.9, 1.0, 0.80), (1.2, 1.0, 0.30, 0.95)), "collapsed", "one class takes 95.0% of the test predictions"),
    # never left its initial accuracy
    (((2.29, 1.0, 0.105), (2.28, 1.0, 0.11)), "not_trained", "best epoch 11.00%) against 10.00%"),
])
def test_each_problem_is_found_and_named(rows, kind, detail):
  health = judge_run(_epochs(*rows), INITIAL, majority=0.1135)
  assert not health["ok"] and kind in _kinds(health), health
  assert any(detail in p["detail"] for p in health["problems"]), health["problems"]
  assert all(p["remedy"] for p in health["problems"])


def test_a_staged_method_is_judged_from_its_last_stage():
  # FSP in the method zoo (docs/method_zoo.md, resnet14 -> resnet8, 4 epochs): the init stage
  # (0.44 epochs) minimises the FSP loss alone (first step 0.60), the main stage cross-entropy.
  rows = _epochs((1.41, 0.63, 0.15), (1.97, 0.64, 0.12), (1.76, 0.64, 0.24), (1.68, 0.62, 0.44))
  assert _kinds(judge_run(rows, {"train_loss": 0.60, "train_grad_norm": 0.67, "test_accuracy": 0.10},
                          majority=0.1135)) == ["diverged"]  # against the init stage's first step
  staged = judge_run(rows, {"train_loss": 0.60, "train_grad_norm": 0.67, "test_accuracy": 0.10},
                     majority=0.1135, main_stage=4 / 9)
  assert staged["ok"] and staged["loss_rise"] == 1.0  # epoch 2 is the reference, the loss falls after it
  rising = _epochs((1.41, 0.6, 0.15), (1.9, 0.6, 0.5), (4.0, 0.6, 0.5), (4.2, 0.6, 0.5))
  health = judge_run(rising, INITIAL, majority=0.1135, main_stage=4 / 9)  # the main stage itself diverging
  assert _kinds(health) == ["diverged"]
  assert "4.2 in epoch 4, 2.2x epoch 2's (the first after the init stage) 1.9" in health["problems"][0]["detail"]


@pytest.mark.parametrize("name", ["ft", "ab", "fsp"])
def test_two_stage_methods_say_where_their_last_stage_starts(name):
  from kdjax.methods import make_method
  assert make_method(name).main_stage(270) == 30.0 and make_method(name).main_stage(9) == pytest.approx(1.0)
  assert make_method(name, init_epochs=2).main_stage(10) == 2.0 and make_method(name, init_epochs=0).main_stage(10) == 0
  assert make_method("hinton", alpha=0.5, temperature=4.0).main_stage is None and make_method("dkd").main_stage is None


def test_skipped_steps_are_a_problem_and_counted():
  health = judge_run(_epochs((0.9, 1.2, 0.90)), INITIAL, majority=0.11, skipped_steps=367)
  assert _kinds(health) == ["non_finite"] and health["problems"][0]["detail"] == "367 non-finite steps skipped"


def test_thresholds_are_configurable_and_checked():
  rows = _epochs((5.0, 1.0, 0.9))  # 2.2x the first step's loss
  assert _kinds(judge_run(rows, INITIAL, majority=0.1)) == ["diverged"]
  assert judge_run(rows, INITIAL, majority=0.1, thresholds=HealthThresholds(loss_rise=3.0))["ok"]
  for bad, message in [({"loss_rise": 0.5}, "health.loss_rise must be a finite factor > 1"),
                       ({"grad_rise": float("nan")}, "health.grad_rise"),
                       ({"chance_margin": 1.5}, r"health.chance_margin must lie in \[0, 1\)"),
                       ({"top_class_share": 0.0}, r"health.top_class_share must lie in \(0, 1\]"),
                       ({"teacher_spread": -1.0}, "health.teacher_spread")]:
    with pytest.raises(ValueError, match=message):
      HealthThresholds(**bad)
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=message):  # from the command line's --set, before any training
      override(HINTON_MNIST, [f"health.{key}={value}"])


def test_a_teacher_no_better_than_the_student_alone_is_weak():
  assert judge_teacher(0.95, [0.90, 0.91, 0.92]) is None
  weak = judge_teacher(0.915, [0.90, 0.91, 0.92])  # within one std of the students' mean
  assert weak["kind"] == "weak_teacher" and "teacher 91.50% against the student alone's 91.00% ± 1.00%" in weak["detail"]
  assert judge_teacher(0.915, [0.90, 0.91, 0.92], HealthThresholds(teacher_spread=0.0)) is None


def test_majority_share_and_the_warning_block():
  assert majority_share([0, 1, 1, 2]) == 0.5
  health = judge_run(_epochs((0.9, 1.0, 0.80), (2.2, 1.0, 0.10)), INITIAL, majority=0.1)
  block = warning_block([("student distilled seed 0", health)])
  assert block.startswith("WARNING: 1 unhealthy run(s) — left out of the means and comparisons above:")
  assert "student distilled seed 0: collapsed to a constant predictor (test accuracy 10.00%" in block
  assert "likely remedy: lower the learning rate" in block
  assert warning_block([]) == "" and is_healthy({"accuracy": 0.9}) and not is_healthy({"health": health})


# --- Runs that go wrong on purpose ---------------------------------------------------------------------

def _constant_predictor():
  """A loss that teaches every input to be class 0: a constant predictor, after a real start."""
  def loss(student_logits, student_feats, teacher, batch, params):
    del student_feats, teacher, params
    ce = hard_cross_entropy(student_logits, batch["label"])
    to_zero = hard_cross_entropy(student_logits, jnp.zeros_like(batch["label"]))
    late = (batch["step"] >= 10).astype(jnp.float32)  # the first epoch learns the labels, the second forgets them
    return (1 - late) * ce + late * 20.0 * to_zero, {"ce": ce}
  return as_method(loss, needs_teacher=False)


def test_deliberate_runs_get_their_verdicts(small_mnist):
  data = dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:1000],
                             train_labels=small_mnist.train_labels[:1000])
  healthy = train_student(data, STUDENT, progress=False)
  assert healthy.health["ok"], healthy.health
  assert healthy.fit.initial["test_accuracy"] < 0.3 < healthy.test["accuracy"]
  assert [r["health"] for r in healthy.fit.history] == [[], []]  # each epoch's record carries the verdict so far
  frozen = train_student(data, dataclasses.replace(STUDENT, learning_rate=1e-7), progress=False)
  assert _kinds(frozen.health) == ["not_trained"]
  collapsed = train_student(data, STUDENT, method=_constant_predictor(), progress=False)
  assert "collapsed" in _kinds(collapsed.health), collapsed.health
  assert collapsed.test["top_class_share"] > 0.9 and "collapsed" in collapsed.fit.history[-1]["health"]
  # The verdict marks the run; its numbers are what the loop measured.
  assert collapsed.test == {k[5:]: v for k, v in collapsed.fit.history[-1].items() if k.startswith("test_")}


def test_a_sweep_student_of_a_nan_teacher_skips_its_steps_and_is_marked(small_mnist, tmp_path):
  from kdjax.sweep import run_sweep
  from kdjax.sweep.train import train_group
  from kdjax.sweep.grid import expand, parse_grid
  from kdjax.train.api import untrained
  cfg = override(HINTON_MNIST, ["distilled.epochs=1", "teacher.epochs=1", "distilled.batch_size=100"])
  runs = expand(parse_grid(["method=hinton", "seed=0"], cfg), cfg)
  # Every weight is overwritten with NaN: the teacher's model, untrained, is all the sweep needs (no training).
  teacher = untrained(small_mnist, cfg.teacher)
  nan_teacher = dataclasses.replace(teacher, params=jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), teacher.params))
  (result,) = train_group(small_mnist, runs, nan_teacher, progress=False)
  assert result["skipped_steps"] == 20 and "non_finite" in _kinds(result["health"])
  # An exploding learning rate in a sweep: its student diverges; the supervised baseline stays ok.
  sweep = run_sweep(override(cfg, ["distilled.jitter=0"]), ["method=supervised", "distilled.learning_rate=0.05,40",
                                                            "seed=0"], out_dir=tmp_path, data=small_mnist,
                    progress=False)
  health = {r["variant"]: r["health"] for r in sweep.records}
  assert health["method=supervised distilled.learning_rate=0.05"]["ok"]
  bad = health["method=supervised distilled.learning_rate=40"]
  assert not bad["ok"] and "diverged" in _kinds(bad), bad
  assert [name for name, _ in sweep.unhealthy()] == ["method=supervised distilled.learning_rate=40 seed 0"]
  row = next(line for line in (tmp_path / "report.md").read_text().splitlines()
             if line.startswith("| method=supervised distilled.learning_rate=40 "))
  assert "not a result" in row and "left out: seed 0 " in row and "diverged" in row, row  # the table's mark
  stored = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert [r["health"] for r in stored] == [r["health"] for r in sweep.records]


def _idx_dir(path, data, n_train):
  from kdjax.data import write_idx
  from kdjax.data.idx import IDX_FILES
  path.mkdir()
  arrays = {"train_images": data.train_images[:n_train], "train_labels": data.train_labels[:n_train],
            "test_images": data.test_images[:500], "test_labels": data.test_labels[:500]}
  for key, name in IDX_FILES.items():
    a = np.asarray(arrays[key])
    write_idx(path / name, (a.reshape(a.shape[:3]) if key.endswith("images") else a).astype(np.uint8))
  return path


def test_cli_marks_a_teacher_equal_to_the_student_and_exits_non_zero(mnist, capsys, tmp_path):
  # The teacher is the student alone of seed 0 exactly (same model, config and seed): no better than it.
  data_dir = _idx_dir(tmp_path / "mnist", mnist, 1000)
  argv = ["distill", "--no-progress", "--workdir", str(tmp_path), "--seeds", "0,1", "--data", f"idx:{data_dir}",
          "--set", "teacher.model=mlp800", "--set", "teacher.epochs=1", "--set", "teacher.learning_rate=0.05",
          "--set", "teacher.jitter=0", "--set", "teacher.dropout=none", "--set", "teacher.input_dropout=none",
          "--set", "student.epochs=1", "--set", "distilled.epochs=1", "--set", "distilled.jitter=0"]
  code = main(argv)
  captured = capsys.readouterr()
  assert code == EXIT_UNHEALTHY == 3
  assert "| teacher | mlp800 |" in captured.out and "seed 0 teacher no better than the student alone" in captured.out
  assert "WARNING: 1 unhealthy run(s)" in captured.err
  assert "teacher seed 0: teacher no better than the student alone (teacher " in captured.err
  assert "likely remedy: train the teacher longer" in captured.err and "exit status 3" in captured.err
  results = json.loads((tmp_path / "hinton_mnist" / "results.json").read_text())
  (teacher,) = results["runs"]["teacher"]
  assert [p["kind"] for p in teacher["health"]["problems"]] == ["weak_teacher"]
  assert teacher["accuracy"] == results["runs"]["student"][0]["accuracy"]  # marked, not changed
  assert all(r["health"]["ok"] for r in results["runs"]["student"] + results["runs"]["distilled"])
  # --allow-unhealthy keeps the status 0 and still warns (on seed 0 alone, without the control: the same
  # teacher, again no better than that seed's student, in 3 runs instead of 7)
  assert main([*argv, "--workdir", str(tmp_path / "again"), "--allow-unhealthy", "--seeds", "0",
               "--set", "augmented_control=false"]) == 0
  assert "WARNING: 1 unhealthy run(s)" in capsys.readouterr().err
