"""Sweeps: grids, vmapped groups equal to separate runs, resume, the CLI end to end, bad grids."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from kdjax.cli import main as cli
from kdjax.config import override
from kdjax.methods import make_method
from kdjax.presets import PRESETS
from kdjax.sweep import expand, group_runs, load_records, parse_grid, run_sweep
from kdjax.sweep import run as sweep_run
from kdjax.sweep.train import train_group
from kdjax.train import distill, train_teacher

BASE = override(PRESETS["hinton_mnist"], ["distilled.epochs=2", "teacher.epochs=1", "distilled.batch_size=50",
                                          "teacher.batch_size=50"])


@pytest.fixture(scope="module")
def data(small_mnist):
  return dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:400],
                             train_labels=small_mnist.train_labels[:400], test_images=small_mnist.test_images[:200],
                             test_labels=small_mnist.test_labels[:200])


@pytest.fixture(scope="module")
def teacher(data):
  return train_teacher(data, BASE.teacher, progress=False)


def share_teacher(monkeypatch, data, teacher):
  """The teacher ``run_sweep`` trains on ``data`` (BASE's, seed 0) is the module's ``teacher``: same
  config, data and seed, so the same weights, trained once instead of once per sweep."""
  def train_teacher(d, cfg, *, seed, **kwargs):
    assert d is data and cfg == BASE.teacher and seed == 0, (cfg, seed)
    return teacher
  monkeypatch.setattr(sweep_run, "train_teacher", train_teacher)


def test_grid_expands_drops_keys_a_method_does_not_take_and_groups_scalar_variations():
  runs = expand(parse_grid(["method=supervised,hinton,dkd", "temperature=2,8", "seed=0,1", "method.beta=4,8"], BASE),
                BASE)
  variants = list(dict.fromkeys(r.variant for r in runs))
  assert variants == ["method=supervised", "method=hinton temperature=2", "method=hinton temperature=8",
                      "method=dkd temperature=2 method.beta=4", "method=dkd temperature=2 method.beta=8",
                      "method=dkd temperature=8 method.beta=4", "method=dkd temperature=8 method.beta=8"]
  assert len(runs) == 2 * len(variants)
  hinton = next(r for r in runs if r.method == "hinton")
  assert dict(hinton.hparams) == {"alpha": BASE.alpha, "temperature": 2.0}
  # the `temperature` key is DKD's KD temperature too (the registry's MethodSpec.temperature); no alpha for DKD
  assert {tuple(sorted(dict(r.hparams).items())) for r in runs if r.method == "dkd"} == {
      (("beta", b), ("temperature", t)) for b in (4.0, 8.0) for t in (2.0, 8.0)}
  groups = group_runs(runs)
  assert [(g[0].method, len(g)) for g in groups] == [("supervised", 2), ("hinton", 4), ("dkd", 8)]
  assert [len(g) for g in group_runs(runs, max_parallel=3)] == [2, 3, 1, 3, 3, 2]
  # a key that is not vmapped (the student's epochs) splits groups
  runs = expand(parse_grid(["distilled.epochs=1,2", "seed=0,1"], BASE), BASE)
  assert sorted(len(g) for g in group_runs(runs)) == [2, 2]


@pytest.mark.parametrize("items,match", [
    ([], "empty grid"),
    (["temperature"], "not of the form"),
    (["temperature="], "'temperature' has no values"),
    (["temprature=1,2"], "unknown config key 'temprature'"),
    (["temperature=hot"], "'temperature'.*expected float"),
    (["seed=0,one"], "'seed'.*integers"),
    (["method=hinton,kd2"], "unknown method.*kd2"),
    (["method.gamma=1"], "'method.gamma'.*none of the methods"),
    (["method=dkd", "method.beta=big"], "'method.beta'.*expected a number"),
    (["temperature=0"], "temperature must be"),
    (["seed=1", "seed=2"], "given twice"),
])
def test_bad_grids_fail_before_any_training(items, match, monkeypatch, tmp_path):
  def no_training(*args, **kwargs):
    raise AssertionError("training started")
  monkeypatch.setattr(sweep_run, "train_group", no_training)
  monkeypatch.setattr(sweep_run, "load_dataset", no_training)
  with pytest.raises(ValueError, match=match):
    run_sweep(BASE, items, out_dir=tmp_path)


def test_a_vmapped_group_gives_each_run_what_it_gets_alone(data, teacher):
  runs = expand(parse_grid(["temperature=1,4", "distilled.learning_rate=0.05,0.1", "seed=3"], BASE), BASE)
  (group,) = group_runs(runs)
  assert len(group) == 4
  together = train_group(data, group, teacher, progress=False)
  for run, res in zip(group[::3], together[::3]):  # the first and the last, alone
    (alone,) = train_group(data, [run], teacher, progress=False)
    for a, b in zip(res["history"], alone["history"]):
      np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-4)
      assert abs(a["test_errors"] - b["test_errors"]) <= 2  # a borderline image may flip with rounding
  # the hyperparameters reach their students: different T or learning rate, different training
  losses = [r["history"][-1]["train_loss"] for r in together]
  assert len({round(x, 4) for x in losses}) == len(losses)


def test_a_diverging_run_skips_its_steps_and_the_others_train_on(data, teacher):
  runs = expand(parse_grid(["distilled.learning_rate=0.05,1e30", "seed=0"], BASE), BASE)
  good, bad = train_group(data, runs, teacher, progress=False)
  assert good["skipped_steps"] == 0 and bad["skipped_steps"] > 0
  (alone,) = train_group(data, runs[:1], teacher, progress=False)  # the good run trains as if it were alone
  np.testing.assert_allclose([h["train_loss"] for h in good["history"]], [h["train_loss"] for h in alone["history"]],
                             rtol=1e-4)
  assert good["history"][-1]["test_accuracy"] > 0.3  # far above chance (0.1) after 16 steps


def test_sweep_resumes_skipping_exactly_the_finished_runs_and_reports(data, teacher, monkeypatch, tmp_path):
  grid = ["method=supervised,hinton", "temperature=2,8", "seed=0,1"]
  share_teacher(monkeypatch, data, teacher)
  calls = []
  real = sweep_run.train_group

  def crash_on_second_group(d, group, *args, **kwargs):
    calls.append([(r.variant, r.seed) for r in group])
    if len(calls) == 2:
      raise KeyboardInterrupt  # the machine goes down mid-sweep
    return real(d, group, *args, **kwargs)

  monkeypatch.setattr(sweep_run, "train_group", crash_on_second_group)
  with pytest.raises(KeyboardInterrupt):
    run_sweep(BASE, grid, out_dir=tmp_path, data=data, progress=False)
  finished = load_records(tmp_path / "results.jsonl")
  assert [(r["variant"], r["seed"]) for r in finished] == calls[0] == [("method=supervised", 0), ("method=supervised", 1)]

  calls.clear()
  monkeypatch.setattr(sweep_run, "train_group", lambda d, group, *a, **k: calls.append(group) or real(d, group, *a, **k))
  result = run_sweep(BASE, grid, out_dir=tmp_path, data=data, progress=False, max_parallel=3)
  assert (result.trained, result.skipped) == (4, 2)
  assert sorted((r.variant, r.seed) for g in calls for r in g) == [
      ("method=hinton temperature=2", 0), ("method=hinton temperature=2", 1),
      ("method=hinton temperature=8", 0), ("method=hinton temperature=8", 1)]
  assert [len(g) for g in calls] == [3, 1]
  assert len(load_records(tmp_path / "results.jsonl")) == 6
  assert run_sweep(BASE, grid, out_dir=tmp_path, data=data, progress=False).trained == 0
  report = (tmp_path / "report.md").read_text()
  assert "Last-epoch test accuracy" in report and "Best-epoch test accuracy" in report
  # This 2-epoch teacher (46 %) is worse than the student alone (59 %): the distilled rows are marked.
  assert "| method=hinton temperature=8 † | 2 |" in report and "† teacher no better than the student alone" in report
  for name in ("curves.png", "accuracy_final.png", "accuracy_vs_temperature.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  record = load_records(tmp_path / "results.jsonl")[-1]
  assert record["config"]["study"]["distilled"]["epochs"] == 2 and len(record["history"]) == 2
  assert record["final"]["epoch"] == 2 and record["best"]["accuracy"] >= record["final"]["accuracy"]


def test_cli_sweep_runs_and_rejects_a_bad_grid(tmp_path, capsys):
  args = ["sweep", "--grid", "temperature=2,4", "--grid", "seed=0", "--set", "distilled.epochs=1",
          "--set", "teacher.epochs=1", "--subset", "300", "--out", str(tmp_path), "--no-progress"]
  assert cli(args) == 3  # one epoch on 300 images: the runs have not learnt, and the command says so
  captured = capsys.readouterr()
  assert "| temperature=4 |" in captured.out and "WARNING: " in captured.err and "exit status 3" in captured.err
  assert cli([*args, "--allow-unhealthy"]) == 0  # the same sweep, found finished: nothing trains
  assert "WARNING: " in capsys.readouterr().err
  records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
  assert [r["variant"] for r in records] == ["temperature=2", "temperature=4"]
  assert cli(["sweep", "--grid", "temperature=2,4", "--grid", "alpah=0.1", "--out", str(tmp_path)]) == 2
  assert "unknown config key 'alpah'" in capsys.readouterr().err


def test_method_hyperparameters_are_typed_by_their_defaults():
  runs = expand(parse_grid(["method=sp,crd", "method.layers=block1+block2", "method.nce_k=10",
                            "seed=0"], BASE), BASE)
  sp, crd = runs
  assert sp.variant == "method=sp method.layers=block1+block2" and dict(sp.hparams)["layers"] == ("block1", "block2")
  assert dict(crd.hparams)["nce_k"] == 10 and isinstance(dict(crd.hparams)["nce_k"], int)


def test_grid_corner_cases_from_review():
  from kdjax.methods import vmapped_hparams
  # CRD's temperature is its contrastive tau: never traced, different values train apart
  runs = expand(parse_grid(["method=crd_inbatch", "method.temperature=0.05,0.1", "seed=0"], BASE), BASE)
  assert vmapped_hparams("crd_inbatch", runs[0].hparams) == [] and len(group_runs(runs)) == 2
  assert vmapped_hparams("dkd", (("beta", 8.0), ("temperature", 4.0))) == ["temperature", "beta"]
  # groups follow the registry's vmappable hyperparameters, however the grid spells the key
  runs = expand(parse_grid(["method=hinton", "method.temperature=2,4", "seed=0"], BASE), BASE)
  assert [len(g) for g in group_runs(runs)] == [2]
  runs = expand(parse_grid(["method=gkd", "temperature=2,4", "method.beta=0.2,0.8", "seed=0"], BASE), BASE)
  assert [len(g) for g in group_runs(runs)] == [4]  # GKD's skew is a plain factor too: one program
  assert all(dict(r.hparams)["alpha"] == BASE.alpha for r in runs)  # Hinton-style: the study's alpha
  # DKD and DIST keep their own temperature unless the grid sets one; Hinton KD takes the study's
  dkd, hinton = expand(parse_grid(["method=dkd,hinton", "seed=0"], BASE), BASE)
  assert "temperature" not in dict(dkd.hparams) and dict(hinton.hparams)["temperature"] == BASE.temperature
  # the student model and tuple-valued study keys can be grid axes
  assert {r.cfg.distilled.model for r in expand(parse_grid(["distilled.model=mlp800,mlp100"], BASE), BASE)} == {
      "mlp800", "mlp100"}
  step = override(BASE, ["distilled.schedule=step"])
  (run,) = expand(parse_grid(["distilled.decay_epochs=1+2", "seed=0"], step), step)
  assert run.cfg.distilled.decay_epochs == (1, 2) and run.variant == "distilled.decay_epochs=1+2"
  with pytest.raises(ValueError, match="both set the temperature"):
    parse_grid(["temperature=2", "method.temperature=4"], BASE)
  with pytest.raises(ValueError, match="sweeps take the method from the grid"):
    parse_grid(["seed=0"], override(BASE, ["method=dkd"]))


def test_a_resumed_sweep_with_keys_reordered_trains_nothing_and_reports_the_new_labels(data, teacher, monkeypatch,
                                                                                     tmp_path):
  share_teacher(monkeypatch, data, teacher)
  first = run_sweep(BASE, ["distilled.epochs=1", "method=supervised,hinton", "seed=0"], out_dir=tmp_path, data=data,
                    progress=False)
  assert first.trained == 2
  again = run_sweep(BASE, ["seed=0", "method=supervised,hinton", "distilled.epochs=1"], out_dir=tmp_path, data=data,
                    progress=False)
  assert again.trained == 0
  assert [r["variant"] for r in again.records] == ["method=supervised distilled.epochs=1",
                                                   "method=hinton distilled.epochs=1"]
  assert "baseline `method=supervised distilled.epochs=1`" in (tmp_path / "report.md").read_text()


def test_a_run_inside_a_sweep_is_the_run_distill_makes(data, teacher):
  # One vmapped group of four students: two seeds, two temperatures, all on data seed 5.
  runs = expand(parse_grid(["temperature=2,4", "seed=1,2"], BASE), BASE)
  (group,) = group_runs(runs)
  swept = train_group(data, group, teacher, data_seed=5, keep_states=True, progress=False)
  run, res = group[-1], swept[-1]
  assert (run.seed, dict(run.hparams)["temperature"]) == (2, 4.0)
  alone = distill(data, run.cfg.distilled, teacher, method=make_method(run.method, **dict(run.hparams)),
                  seed=run.seed, data_seed=5, progress=False)
  # Same initial weights, batches, augmentation, keys and updates: the same parameters, up to the
  # float rounding of batched matmuls and of the learning rate applied as a factor.
  for a, b in zip(jax.tree.leaves(res["state"].params), jax.tree.leaves(alone.params)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  for h_sweep, h_alone in zip(res["history"], alone.fit.history, strict=True):
    np.testing.assert_allclose(h_sweep["train_loss"], h_alone["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(h_sweep["train_accuracy"], h_alone["train_accuracy"], atol=1e-6)
    assert h_sweep["test_errors"] == h_alone["test_errors"]
    np.testing.assert_allclose(h_sweep["test_loss"], h_alone["test_loss"], rtol=1e-4)
  # and the data seed matters: another one gives another run
  other = distill(data, run.cfg.distilled, teacher, method=make_method(run.method, **dict(run.hparams)),
                  seed=run.seed, data_seed=6, progress=False)
  assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(alone.params)[0])


def test_gkd_skew_is_vmapped_in_a_sweep_group(data, teacher):
  runs = expand(parse_grid(["method=gkd", "method.beta=0.3,0.7", "seed=0"], BASE), BASE)
  (group,) = group_runs(runs)  # one program for both skews
  cfg = override(BASE, ["distilled.epochs=1"])
  group = [dataclasses.replace(r, cfg=cfg) for r in group]
  low, high = train_group(data, group, teacher, progress=False)
  assert low["history"][-1]["train_loss"] != high["history"][-1]["train_loss"]  # each student got its own beta
