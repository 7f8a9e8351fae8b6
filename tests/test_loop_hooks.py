"""Hooks of the fit loop: what a custom hook sees, the fields it adds, stopping a run from one."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.methods import supervised
from kdjax.models import create_model, split_model
from kdjax.train import fit, init_train_state, make_eval_step, make_train_step
from kdjax.train.checkpoint import Checkpointing, checkpoint_steps
from kdjax.train.hooks import Hook

BATCH, N_STEPS = 100, 4  # 400 training images: 4 steps an epoch


class StopRun(Exception):
  """A hook's own reason to stop."""


@pytest.fixture(scope="module")
def setup(small_mnist):
  """A small MLP's step (one jit for every run here) and 400 training images."""
  graphdef, params, rest = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  tx = optax.sgd(0.05, momentum=0.9)
  data = dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:BATCH * N_STEPS],
                             train_labels=small_mnist.train_labels[:BATCH * N_STEPS])
  return graphdef, tx, (params, rest), make_train_step(graphdef, tx, supervised()), make_eval_step(graphdef), data


def _fit(setup, epochs=2, step=None, **kwargs):
  graphdef, tx, (params, rest), default_step, eval_step, data = setup
  params, rest = jax.tree.map(jnp.copy, (params, rest))  # the step takes over (donates) the state's buffers
  state = init_train_state(params, rest, tx, jax.random.key(0))
  return fit(state, step or default_step, eval_step, data, epochs=epochs, batch_size=BATCH, progress=False, **kwargs)


def test_a_hook_sees_every_call_once_in_order_and_one_record_per_epoch(setup):
  calls, ends = [], []

  def on_step(call):
    calls.append((call.epoch, call.first_step, call.num_steps, int(jax.device_get(call.state.step))))
    assert call.stacked and np.shape(call.metrics["loss"]) == (call.num_steps,)
    assert np.all(call.metrics["finite"]) and np.all(np.isfinite(call.metrics["loss"]))

  def on_epoch(end):
    ends.append((end.epoch, end.step, dict(end.record), len(end.history)))
    with pytest.raises(TypeError):
      end.record["x"] = 1  # read-only: fields are added by returning them

  graphdef, tx = setup[:2]
  stacked = make_train_step(graphdef, tx, supervised(), steps_per_call=3)
  result = _fit(setup, epochs=2, step=stacked, steps_per_call=3, log_fields={"run": "a"},
                hooks=[Hook(on_step=on_step, on_epoch=on_epoch)])
  # 3 + 1 steps an epoch; each call's metrics are handed over after the next call is dispatched
  # (the state already one call further), an epoch's last call at the epoch's end
  assert calls == [(1, 1, 3, 4), (1, 4, 1, 4), (2, 5, 3, 8), (2, 8, 1, 8)]
  assert [(e, s, h) for e, s, _, h in ends] == [(1, 4, 0), (2, 8, 1)]
  record = ends[0][2]
  assert {"run", "epoch", "step", "train_loss", "train_accuracy", "test_accuracy", "test_errors", "test_loss",
          "wall_s"} <= set(record)
  assert "train_finite" not in record
  assert [dict(r) for _, _, r, _ in ends] == result.history


def test_save_points_come_at_every_steps_with_the_exact_state_and_at_each_epoch_end(setup):
  points = []

  def on_save_point(point):
    points.append((point.step, point.epoch, int(jax.device_get(point.state.step)), point.record is None,
                   sorted(point.sums), len(point.history)))

  _fit(setup, epochs=2, hooks=[Hook(on_save_point=on_save_point, every_steps=3)])
  sums = ["accuracy", "grad_norm", "loss"]
  assert [p[:4] for p in points] == [(3, 1, 3, True), (4, 1, 4, False), (6, 2, 6, True), (8, 2, 8, False)]
  assert set(points[0][4]) >= set(sums) and points[1][4] == []  # an epoch's end: its sums are in the record
  assert [p[5] for p in points] == [0, 1, 1, 2]


def test_fields_a_hook_adds_reach_the_history_and_metrics_jsonl(setup, tmp_path):
  log = tmp_path / "metrics.jsonl"

  def verdict(end):
    return {"health": "ok" if end.record["train_loss"] < 10 else "diverged"}

  def after(end):  # a later hook sees the fields of those before it
    return {"verdict_seen": end.record["health"]}

  result = _fit(setup, epochs=2, log_path=log, hooks=[Hook(on_epoch=verdict), Hook(on_epoch=after)])
  lines = [json.loads(line) for line in log.read_text().splitlines()]
  assert [r["health"] for r in result.history] == ["ok", "ok"]
  assert [r["verdict_seen"] for r in result.history] == ["ok", "ok"]
  assert lines == result.history


@pytest.mark.parametrize("fields, error, message", [
    ({"train_loss": 0.0}, ValueError, r"already has: \['train_loss'\]"),
    ({"health": np.zeros(2)}, TypeError, "JSON cannot store"),
])
def test_a_hook_field_that_clashes_or_is_not_json_fails_naming_it(setup, fields, error, message):
  with pytest.raises(error, match=message):
    _fit(setup, epochs=1, hooks=[Hook(on_epoch=lambda end: fields)])


def test_a_hook_stops_the_run_and_the_checkpoint_before_resumes_to_the_uninterrupted_result(setup, tmp_path):
  reference = _fit(setup, epochs=3)
  ckpt, log = tmp_path / "ckpt", tmp_path / "metrics.jsonl"

  def stop_at_epoch_2(end):
    if end.epoch == 2:
      raise StopRun(f"stopped at step {end.step}")

  with pytest.raises(StopRun, match="stopped at step 8"):
    _fit(setup, epochs=3, log_path=log, checkpointing=Checkpointing(ckpt, every_steps=3),
         hooks=[Hook(on_epoch=stop_at_epoch_2)])
  # Stopped before epoch 2's record was kept: its end (step 8) is neither saved nor logged.
  assert checkpoint_steps(ckpt) == [6, 4, 3]
  assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1]

  resumed = _fit(setup, epochs=3, log_path=log, checkpointing=Checkpointing(ckpt, every_steps=3, resume=True))
  for a, b in zip(jax.tree.leaves(reference.state.params), jax.tree.leaves(resumed.state.params), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  assert len(resumed.history) == 3
  for r, s in zip(reference.history, resumed.history, strict=True):
    assert r.keys() == s.keys()
    for key in r:
      if key != "wall_s":
        np.testing.assert_allclose(r[key], s[key], rtol=1e-6, err_msg=key)
  assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]


def test_a_hook_stopping_at_a_save_point_runs_after_the_checkpoint_and_the_log_line(setup, tmp_path):
  ckpt, log = tmp_path / "ckpt", tmp_path / "metrics.jsonl"

  def stop_after_epoch_1(point):
    if point.record is not None:
      assert checkpoint_steps(ckpt)[0] == point.step  # the built-in hooks ran first
      assert len(log.read_text().splitlines()) == point.epoch
      raise StopRun

  with pytest.raises(StopRun):
    _fit(setup, epochs=2, log_path=log, checkpointing=Checkpointing(ckpt),
         hooks=[Hook(on_save_point=stop_after_epoch_1)])
  assert checkpoint_steps(ckpt) == [4]
  resumed = _fit(setup, epochs=2, checkpointing=Checkpointing(ckpt, resume=True))
  assert [r["epoch"] for r in resumed.history] == [1, 2]


def test_every_hook_closes_however_the_run_ends(setup):
  closed = []

  def boom(call):
    raise StopRun

  with pytest.raises(StopRun):
    _fit(setup, epochs=1, hooks=[Hook(close=lambda: closed.append("a")),
                                 Hook(on_step=boom, close=lambda: closed.append("b"))])
  assert closed == ["b", "a"]
  with pytest.raises(ValueError, match="every_steps must be >= 0"):
    Hook(every_steps=-1)
