"""The one update core: its guard, the pieces around it, the shape of the code (a run inside a sweep being
the run `distill` makes is in tests/test_sweep.py)."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.methods import make_method
from kdjax.optim import scale_updates
from kdjax.train import TrainState, update


def _state(w):
  params = {"w": jnp.asarray(w, jnp.float32)}
  tx = optax.sgd(0.5)
  return TrainState(params, {"bn": jnp.zeros(())}, tx.init({"student": params, "method": {}}), jnp.zeros((), jnp.int32),
                    jax.random.key(0), {}, {}), tx


def test_update_takes_one_gradient_step_and_reports_its_norms():
  state, tx = _state([1.0, -2.0])

  def loss_fn(trainable):  # 0.5·|w|², gradient w
    w = trainable["student"]["w"]
    return 0.5 * jnp.sum(w**2), ({"bn": jnp.ones(())}, {}, {"extra": jnp.sum(w)})

  new, metrics = update(tx, state, loss_fn)
  np.testing.assert_allclose(new.params["w"], [0.5, -1.0])
  np.testing.assert_allclose(metrics["grad_norm"], np.sqrt(5.0), rtol=1e-6)
  np.testing.assert_allclose(metrics["update_norm"], 0.5 * np.sqrt(5.0), rtol=1e-6)
  assert metrics["loss"] == 2.5 and metrics["extra"] == -1.0 and bool(metrics["finite"])
  assert float(new.rest["bn"]) == 1.0 and int(new.step) == 0  # step and keys are the caller's


@pytest.mark.parametrize("bad", ["loss", "grad", "update"])
def test_update_refuses_a_non_finite_step_whole(bad):
  state, tx = _state([1.0, 2.0])
  if bad == "update":
    tx = scale_updates(tx, jnp.float32(jnp.inf))

  def loss_fn(trainable):
    w = trainable["student"]["w"]
    loss = jnp.sum(w**2) * (jnp.nan if bad == "loss" else 1.0)
    if bad == "grad":
      loss = loss + jnp.sqrt(jnp.abs(w[0] - 1.0))  # infinite gradient at w[0] = 1, finite value
    return loss, ({"bn": jnp.full((), 2.0)}, {}, {})

  new, metrics = update(tx, state, loss_fn)
  assert not bool(metrics["finite"])
  np.testing.assert_array_equal(new.params["w"], state.params["w"])
  assert float(new.rest["bn"]) == 0.0 and jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new.opt_state,
                                                       state.opt_state))


def test_scale_updates_is_the_learning_rate_of_sgd():
  state, _ = _state([1.0, -2.0])
  loss_fn = lambda t: (0.5 * jnp.sum(t["student"]["w"] ** 2), (state.rest, {}, {}))  # noqa: E731
  a, _ = update(optax.sgd(0.3), state, loss_fn)
  b, _ = update(scale_updates(optax.sgd(1.0), 0.3), state, loss_fn)
  np.testing.assert_allclose(a.params["w"], b.params["w"], rtol=1e-7)


TRAIN = pathlib.Path(__file__).parent.parent / "kdjax" / "train"


def test_no_function_of_the_train_step_or_loop_is_long():
  """The step core and the loop stay readable: no function (nested ones included) over 80 lines."""
  long = []
  for path in sorted(TRAIN.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
        long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
  assert not long, long


def test_the_finite_guard_and_the_gradient_exist_once():
  """Gradients, the optimizer update and the finite check are written in one place, step.update."""
  hits = {}
  for path in sorted(TRAIN.glob("*.py")):
    text = path.read_text()
    for needle in ("value_and_grad(", "apply_updates(", "isfinite(loss"):
      if needle in text:
        hits.setdefault(needle, []).append(path.name)
  assert hits == {"value_and_grad(": ["step.py"], "apply_updates(": ["step.py"], "isfinite(loss": ["step.py"]}


def test_a_checkpoint_from_before_the_data_stream_restores_with_its_stream_its_own_key(tmp_path):
  """States gained ``data_rng`` on 2026-12-05; a checkpoint written before (eight fields, the same
  signature as the old TrainState's: checked against one the old code wrote) still resumes."""
  from kdjax.models import create_model, split_model
  from kdjax.train import init_train_state
  from kdjax.train.checkpoint import (
    Checkpointing,
    _before_data_stream,
    restore_run,
    save_run,
  )
  _, p, r = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  old = init_train_state(p, r, optax.sgd(0.1), jax.random.key(3))
  save_run(Checkpointing(tmp_path), 5, _before_data_stream(old), {"step": 5})
  like = init_train_state(p, r, optax.sgd(0.1), jax.random.key(9))
  state, meta = restore_run(Checkpointing(tmp_path), like)
  assert meta["step"] == 5 and isinstance(state, TrainState)
  np.testing.assert_array_equal(jax.random.key_data(state.data_rng), jax.random.key_data(old.rng))
  np.testing.assert_array_equal(jax.random.key_data(state.rng), jax.random.key_data(old.rng))


def test_stacked_steps_equal_single_steps_with_more_unlabelled_images_than_labelled():
  from kdjax.models import create_model, split_model
  from kdjax.train import init_train_state, make_train_step
  key = jax.random.key(0)
  images = jax.random.randint(key, (2, 4, 28, 28, 1), 0, 256).astype(jnp.uint8)
  unlabelled = jax.random.randint(jax.random.fold_in(key, 1), (2, 8, 28, 28, 1), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.fold_in(key, 2), (2, 4), 0, 10)
  batches = {"image": images, "label": labels, "index": jnp.zeros((2, 4), jnp.int32), "unlabelled": unlabelled}
  tg, tp, tr = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=1))
  g, p, r = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=2))
  tx = optax.sgd(0.1)
  method = make_method("domain_kd", align="coral", target_kd_weight=0.5)
  kwargs = dict(teacher_graphdef=tg, jitter_pixels=1)
  fresh = lambda: init_train_state(*jax.tree.map(jnp.copy, (p, r)), tx, jax.random.key(4))  # noqa: E731 (donated)
  state = fresh()
  stacked, _ = make_train_step(g, tx, method, steps_per_call=2, **kwargs)(state, {"params": tp, "rest": tr}, batches)
  single = make_train_step(g, tx, method, **kwargs)
  state = fresh()
  for i in range(2):
    state, _ = single(state, {"params": tp, "rest": tr}, jax.tree.map(lambda a: a[i], batches))
  for a, b in zip(jax.tree.leaves(stacked.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
