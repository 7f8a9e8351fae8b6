import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.config import TrainConfig
from kdjax.methods import Method, hinton_kd, supervised
from kdjax.models import create_model, split_model
from kdjax.train import (NonFiniteLossError, distill, fit, init_train_state, make_eval_step, make_train_step,
                         train_student, train_teacher)

TINY = TrainConfig(model="mlp800", epochs=1, batch_size=100, learning_rate=0.05)


@pytest.fixture(scope="module")
def teacher(small_mnist):
  # 2 epochs (0.82 test accuracy): test_distill_end_to_end_writes_jsonl's student reaches 0.80 accuracy
  # and teacher agreement from it, as from a 3-epoch teacher (0.86)
  return train_teacher(small_mnist, dataclasses.replace(TINY, model="mlp1200", epochs=2, learning_rate=0.1),
                       seed=0, progress=False)


def _student(seed=0, tx=None):
  graphdef, params, rest = split_model(create_model("mlp800", num_classes=10, input_shape=(28, 28, 1), seed=seed))
  tx = tx or optax.sgd(0.05, momentum=0.9)
  return graphdef, tx, init_train_state(params, rest, tx, jax.random.key(seed))


def _batch(data, n=32):
  return {"image": jnp.asarray(data.train_images[:n]), "label": jnp.asarray(data.train_labels[:n])}


def _first(data, n):
  """``data`` with its first ``n`` training images only (the test split is kept)."""
  return dataclasses.replace(data, train_images=data.train_images[:n], train_labels=data.train_labels[:n])


def test_training_on_the_builtin_subset_learns(mnist):
  result = train_student(mnist, dataclasses.replace(TINY, batch_size=128), seed=0, progress=False)
  assert result.test["accuracy"] > 0.85  # chance is 0.1
  assert result.test["errors"] == round((1 - result.test["accuracy"]) * len(mnist.test_labels))


def test_train_step_compiles_once(small_mnist):
  graphdef, tx, state = _student()
  step = make_train_step(graphdef, tx, supervised(), jitter_pixels=2)
  # 4 steps an epoch, 2 epochs: one compile must cover every step and the epoch boundary
  fit(state, step, make_eval_step(graphdef), _first(small_mnist, 400), epochs=2, batch_size=100, progress=False)
  assert step._cache_size() == 1


def test_distill_step_compiles_once_with_the_teacher_as_argument(small_mnist, teacher):
  graphdef, tx, state = _student()
  step = make_train_step(graphdef, tx, hinton_kd(alpha=0.5, temperature=4.0), teacher_graphdef=teacher.graphdef)
  for i in range(3):
    state, metrics = step(state, teacher.variables, _batch(small_mnist))
  assert step._cache_size() == 1
  # The teacher is an argument, not a constant baked into the program.
  hlo = step.lower(state, teacher.variables, _batch(small_mnist)).as_text()
  n_teacher = sum(a.size for a in jax.tree.leaves(teacher.params))
  assert len(hlo) < n_teacher  # a 2.4M-parameter constant would not fit in this text
  assert {"loss", "ce", "kl", "teacher_agreement"} <= set(metrics)


def test_no_gradient_reaches_the_teacher(small_mnist, teacher):
  graphdef, tx, state = _student()
  step = make_train_step(graphdef, tx, hinton_kd(alpha=0.0, temperature=4.0), teacher_graphdef=teacher.graphdef)
  batch = _batch(small_mnist)
  # jitted: the same gradient, compiled once instead of differentiated op by op (seconds on a CPU)
  grads = jax.jit(jax.grad(lambda tv: step.__wrapped__(state, tv, batch)[1]["loss"]))(teacher.variables)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
  # and the step leaves the teacher's variables as they were
  before = jax.tree.map(np.array, teacher.variables)
  state, _ = step(state, teacher.variables, batch)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, teacher.variables))


def test_same_seed_same_result_and_another_seed_differs(small_mnist):
  data = _first(small_mnist, 400)  # 4 steps of 100 each: repeatability needs no more
  a = train_student(data, TINY, seed=5, progress=False)
  b = train_student(data, TINY, seed=5, progress=False)
  c = train_student(data, TINY, seed=6, progress=False)
  chex.assert_trees_all_equal(a.params, b.params)
  assert a.fit.history[-1]["train_loss"] == b.fit.history[-1]["train_loss"]
  assert not np.array_equal(jax.tree.leaves(a.params)[-1], jax.tree.leaves(c.params)[-1])


def test_distill_end_to_end_writes_jsonl(small_mnist, teacher, tmp_path):
  log = tmp_path / "m.jsonl"
  d = distill(small_mnist, dataclasses.replace(TINY, epochs=2, jitter=2), teacher, alpha=0.5, temperature=4.0,
              seed=0, progress=False, log_path=log, log_fields={"run": "distilled"})
  records = [json.loads(line) for line in log.read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert all(r["run"] == "distilled" and "train_kl" in r and "test_accuracy" in r for r in records)
  assert d.test["accuracy"] > 0.7  # 2 epochs on 2,000 images; chance is 0.1
  assert records[-1]["train_teacher_agreement"] > 0.7  # chance is about 0.1


def test_distill_rejects_a_teacher_with_another_class_count(small_mnist, teacher):
  other = dataclasses.replace(teacher, num_classes=100)
  with pytest.raises(ValueError, match="different class counts.*100 classes"):
    distill(small_mnist, TINY, other, alpha=0.5, temperature=4.0, progress=False)


def test_distill_rejects_bad_hyperparameters_before_training(small_mnist, teacher):
  with pytest.raises(ValueError, match="temperature"):
    distill(small_mnist, TINY, teacher, alpha=0.5, temperature=0.0, progress=False)
  with pytest.raises(ValueError, match="alpha"):
    distill(small_mnist, TINY, teacher, alpha=1.5, temperature=4.0, progress=False)


def test_a_non_finite_step_leaves_the_state_unchanged(small_mnist):
  graphdef, tx, state = _student()
  nan_method = Method(lambda logits, feats, teacher, batch, params: (jnp.full(logits.shape[:1], jnp.nan), {}))
  before = jax.tree.map(np.array, state.params)
  step = make_train_step(graphdef, tx, nan_method)
  state, metrics = step(state, None, _batch(small_mnist))
  assert not bool(metrics["finite"])
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, state.params))


def test_nan_during_training_stops_with_the_step_and_keeps_the_last_good_state(small_mnist):
  graphdef, tx, state = _student(tx=optax.sgd(1e8, momentum=0.9))
  step = make_train_step(graphdef, tx, supervised())
  with pytest.raises(NonFiniteLossError, match=r"became (nan|inf) at step \d+ \(epoch 1\)") as err:
    fit(state, step, make_eval_step(graphdef), small_mnist, epochs=3, batch_size=50, progress=False)
  assert 1 <= err.value.step < 40
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(err.value.state.params))


def test_batch_larger_than_the_dataset_is_rejected(small_mnist):
  with pytest.raises(ValueError, match="larger than the training set"):
    train_student(small_mnist, dataclasses.replace(TINY, batch_size=5000), progress=False)


def test_checkpoint_round_trip_and_architecture_check(small_mnist, teacher, tmp_path):
  from kdjax.train.checkpoint import load_pytree, save_pytree
  save_pytree(tmp_path / "t.npz", teacher.variables)
  restored = load_pytree(tmp_path / "t.npz", teacher.variables)
  jax.tree.map(np.testing.assert_array_equal, teacher.variables, restored)
  _, student_params, _ = split_model(create_model("mlp800", num_classes=10, input_shape=(28, 28, 1)))
  with pytest.raises(ValueError, match="another architecture"):
    load_pytree(tmp_path / "t.npz", {"params": student_params, "rest": teacher.rest})


def test_step_schedule_decays_tenfold_at_each_decay_epoch():
  from kdjax.train.state import make_optimizer
  tx = make_optimizer("sgd", learning_rate=0.1, total_steps=40, momentum=0.0, schedule="step", decay_epochs=(2, 3),
                      steps_per_epoch=10)
  params = jnp.zeros(())
  opt_state = tx.init(params)
  lrs = []
  for _ in range(35):
    updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
    lrs.append(-float(updates))
  np.testing.assert_allclose(lrs, [0.1] * 20 + [0.01] * 10 + [0.001] * 5, rtol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(schedule="step"), r"needs increasing positive decay_epochs, got \(\)"),
    (dict(schedule="step", decay_epochs=(3, 2)), r"increasing positive decay_epochs, got \(3, 2\)"),
    (dict(schedule="cosine", decay_epochs=(2,)), r"only apply to schedule 'step'"),
])
def test_step_schedule_names_bad_decay_epochs(kwargs, message):
  from kdjax.train.state import make_optimizer
  with pytest.raises(ValueError, match=message):
    make_optimizer("sgd", learning_rate=0.1, total_steps=10, **kwargs)


def test_random_hflip_mirrors_about_half_the_images_and_nothing_else():
  from kdjax.data.augment import random_hflip
  x = jax.random.uniform(jax.random.key(0), (64, 5, 6, 3))
  y = random_hflip(jax.random.key(1), x)
  mirrored = np.array([np.array_equal(y[i], x[i, :, ::-1]) for i in range(64)])
  same = np.array([np.array_equal(y[i], x[i]) for i in range(64)])
  assert np.all(mirrored ^ same) and 16 < mirrored.sum() < 48
