"""Online distillation: DML (Zhang et al. 2018) and co-distillation (Anil et al. 2018)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.config import TrainConfig
from kdjax.losses import hard_cross_entropy, kl_divergence, mutual_kl, online_kd_loss
from kdjax.methods import as_method, supervised
from kdjax.models import apply_model, create_model, split_model
from kdjax.train import (create_students, evaluate, init_online_state, make_eval_step,
                         make_online_step, make_optimizer, make_train_step, student_state, train_online)
from kdjax.train.online import student_seeds, unstack_tree

TINY = TrainConfig(model="mlp800", epochs=1, batch_size=50, learning_rate=0.05)


def _np(tree):
  """Copies of every leaf (the steps donate the state): NumPy arrays, keys as fresh keys."""
  def copy(a):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(np.array(jax.random.key_data(a)))
    return np.array(a)
  return jax.tree.map(copy, tree)


def _mutual_kl_reference(logits, temperature):
  """float64 NumPy: for each k, the mean over l != k of KL(softmax(s_l/T) || softmax(s_k/T))."""
  z = np.asarray(logits, np.float64) / temperature
  log_p = z - z.max(-1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
  k_students = len(z)
  out = np.zeros(z.shape[:-1])
  for k in range(k_students):
    for l in range(k_students):
      if l != k:
        out[k] += np.sum(np.exp(log_p[l]) * (log_p[l] - log_p[k]), -1) / (k_students - 1)
  return out


@pytest.mark.parametrize("k_students,temperature", [(2, 1.0), (3, 4.0), (4, 0.5)])
def test_mutual_kl_matches_a_float64_reference(k_students, temperature):
  logits = 3.0 * jax.random.normal(jax.random.key(k_students), (k_students, 6, 7))
  got = mutual_kl(logits.astype(jnp.bfloat16), temperature)
  assert got.shape == (k_students, 6) and got.dtype == jnp.float32
  want = _mutual_kl_reference(np.asarray(logits.astype(jnp.bfloat16).astype(jnp.float32)), temperature)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_mutual_kl_of_two_students_is_each_ones_kl_to_the_other_and_zero_when_they_agree():
  s0, s1 = jax.random.normal(jax.random.key(0), (2, 5, 10)) * 2
  got = mutual_kl(jnp.stack([s0, s1]), 3.0)
  np.testing.assert_allclose(got[0], kl_divergence(s0, s1, 3.0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got[1], kl_divergence(s1, s0, 3.0), rtol=1e-5, atol=1e-7)
  assert not np.allclose(got[0], got[1])  # KL is not symmetric: student and peer must not be swapped
  same = jnp.stack([s0, s0 + 5.0, s0 - 1.0])  # a constant shift per row leaves softmax unchanged
  np.testing.assert_allclose(mutual_kl(same, 2.0), 0.0, atol=1e-6)


def test_mutual_kl_gradient_reaches_only_the_student_itself():
  logits = jax.random.normal(jax.random.key(1), (3, 4, 5))
  for k in range(3):
    grad = jax.grad(lambda z: jnp.sum(mutual_kl(z, 2.0)[k]))(logits)
    for l in range(3):
      if l != k:
        assert np.all(np.asarray(grad[l]) == 0.0)
    assert np.abs(np.asarray(grad[k])).max() > 1e-3


def test_online_kd_loss_weights_ce_and_t_squared_kl():
  logits = jax.random.normal(jax.random.key(2), (3, 4, 10)) * 2
  labels = jnp.array([0, 3, 9, 1])
  loss, terms = online_kd_loss(logits, labels, alpha=0.3, temperature=4.0, mimic_weight=0.7)
  ce = np.stack([np.asarray(hard_cross_entropy(s, labels)) for s in logits])
  np.testing.assert_allclose(terms["ce"], ce, rtol=1e-6)
  np.testing.assert_allclose(loss, 0.3 * ce + 0.7 * 16.0 * _mutual_kl_reference(logits, 4.0), rtol=1e-4)


def test_stacked_vmapped_forward_equals_each_student_alone(mnist):
  x = jnp.asarray(mnist.train_images[:8], jnp.float32) / 255.0
  seeds = student_seeds(0, 3)
  graphdef, params, rest = create_students("mlp800", num_classes=10, input_shape=(28, 28, 1), seeds=seeds)
  stacked = jax.vmap(lambda p, r: apply_model(graphdef, p, r, x, train=False)[0])(params, rest)
  assert stacked.shape == (3, 8, 10)
  for k, seed in enumerate(seeds):
    g, p, r = split_model(create_model("mlp800", num_classes=10, input_shape=(28, 28, 1), seed=seed))
    np.testing.assert_allclose(stacked[k], apply_model(g, p, r, x, train=False)[0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(stacked[0], stacked[1])  # different seeds, different students


def _cohort(k_students, tx, seed=0):
  graphdef, params, rest = create_students("mlp800", num_classes=10, input_shape=(28, 28, 1),
                                           seeds=student_seeds(seed, k_students))
  return graphdef, init_online_state(params, rest, tx, jax.random.key(seed))


def _batch(data, n=32, start=0):
  return {"image": jnp.asarray(data.train_images[start:start + n]),
          "label": jnp.asarray(data.train_labels[start:start + n])}


def test_dml_gradient_of_each_students_loss_is_zero_for_its_peers(mnist):
  x = jnp.asarray(mnist.train_images[:16], jnp.float32) / 255.0
  labels = jnp.asarray(mnist.train_labels[:16])
  graphdef, params, rest = create_students("mlp800", num_classes=10, input_shape=(28, 28, 1),
                                           seeds=student_seeds(0, 3))

  def loss_of_student(params, k):
    logits = jax.vmap(lambda p, r: apply_model(graphdef, p, r, x, train=True)[0])(params, rest)
    return jnp.mean(online_kd_loss(logits, labels)[0][k])

  grad_of_student = jax.jit(jax.grad(loss_of_student))  # k traced: one compile, not three op-by-op passes
  for k in range(3):
    grads = grad_of_student(params, k)
    for l in range(3):
      norm = float(optax.tree.norm(unstack_tree(grads, l)))
      assert (norm > 1e-3) if l == k else (norm == 0.0), (k, l, norm)


def test_dml_step_is_each_student_distilled_from_its_fixed_peer(mnist):
  """K = 2: student k's DML update is a single-model step of CE + KL(p_peer ‖ p_k) with the
  peer's weights before the step as a frozen teacher; every student changes."""
  tx = optax.sgd(0.1)
  graphdef, state = _cohort(2, tx)
  before = _np(state)
  batch = _batch(mnist)
  new, metrics = make_online_step(graphdef, tx, 2, rule="dml")(state, None, batch)
  assert bool(metrics["finite"])
  assert {"loss", "accuracy", "ce", "kl", "grad_norm", "finite", "loss/0", "loss/1", "accuracy/1"} <= set(metrics)
  np.testing.assert_allclose(metrics["loss"], metrics["ce"] + metrics["kl"], rtol=1e-5)

  def ce_plus_kl(student_logits, student_feats, teacher, batch, params):
    ce = hard_cross_entropy(student_logits, batch["label"])
    kl = kl_divergence(student_logits, teacher[0], 1.0)
    return ce + kl, {"ce": ce, "kl": kl}

  single = make_train_step(graphdef, tx, as_method(ce_plus_kl, needs_teacher=True), teacher_graphdef=graphdef)
  for k in range(2):
    peer = unstack_tree(before.params, 1 - k), unstack_tree(before.rest, 1 - k)
    own = student_state(_np(before), k)  # a fresh copy: the step donates it
    want, m = single(own, {"params": peer[0], "rest": peer[1]}, batch)
    np.testing.assert_allclose(metrics[f"loss/{k}"], m["loss"], rtol=1e-5)
    got = unstack_tree(new.params, k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want.params)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), got, unstack_tree(before.params, k))
    assert all(jax.tree.leaves(changed))


def test_cohort_without_peers_term_is_independent_supervised_training(mnist):
  """Co-distillation with distill_weight = 0 is plain CE: two Adam steps of the stacked cohort equal two
  independent supervised steps per student (catches optimizer states mixed across students)."""
  tx = make_optimizer("adam", learning_rate=1e-3, total_steps=10)
  graphdef, state = _cohort(3, tx)
  before = _np(state)
  step = make_online_step(graphdef, tx, 3, rule="codistill", distill_weight=0.0, temperature=2.0)
  batches = [_batch(mnist, 24, 0), _batch(mnist, 24, 24)]
  for b in batches:
    state, metrics = step(state, None, b)
  single = make_train_step(graphdef, tx, supervised())
  for k in range(3):
    own = student_state(_np(before), k)  # a fresh copy: the step donates it
    for b in batches:
      own, m = single(own, None, b)
    np.testing.assert_allclose(metrics[f"loss/{k}"], m["loss"], rtol=1e-5)
    # Adam's steps are ~lr = 1e-3 per weight; rounding differences between the batched and the
    # single-model matmuls move a near-zero gradient's update by ~1e-6 at most.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 unstack_tree(state.params, k), own.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7),
                 unstack_tree(state.opt_state, k), own.opt_state)
  assert int(state.step) == 2


def test_codistillation_burn_in_switches_the_peers_term_on_and_a_nan_keeps_the_whole_cohort(mnist):
  tx = optax.sgd(0.05)
  graphdef, state = _cohort(2, tx)
  step = make_online_step(graphdef, tx, 2, rule="codistill", distill_weight=0.75, temperature=3.0, burn_in_steps=1)
  state, m0 = step(state, None, _batch(mnist))
  np.testing.assert_allclose(m0["loss"], m0["ce"], rtol=1e-5)  # burn-in: CE only
  assert float(m0["kl"]) > 0
  state, m1 = step(state, None, _batch(mnist, start=32))
  np.testing.assert_allclose(m1["loss"], m1["ce"] + 0.75 * 9.0 * m1["kl"], rtol=1e-5)
  # A non-finite loss in one student keeps every student's state, and reports it.
  leaf = jax.tree.leaves(state.params)[0]
  poisoned = jax.tree.map(lambda a: a.at[1].set(jnp.nan) if a is leaf else a, state.params)
  state = state._replace(params=poisoned)
  before = _np(state)
  state, m2 = step(state, None, _batch(mnist))
  assert not bool(m2["finite"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), _np(state.params), before.params)
  assert int(state.step) == 3


@pytest.mark.parametrize("kwargs,match", [
    ({"num_students": 1}, "num_students >= 2"),
    ({"rule": "kd"}, "unknown online distillation rule"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -2.0}, "temperature"),
    ({"rule": "codistill", "distill_weight": -0.1}, "distill_weight"),
    ({"rule": "codistill", "distill_weight": float("nan")}, "distill_weight"),
    ({"rule": "dml", "distill_weight": 0.5}, "takes no distill_weight"),
    ({"rule": "codistill", "burn_in_steps": -1}, "burn_in_steps"),
])
def test_bad_online_settings_fail_early(kwargs, match):
  with pytest.raises(ValueError, match=match):  # no data: validation comes before any model or data is touched
    train_online(None, TINY, **kwargs)
  k = kwargs.pop("num_students", 2)
  with pytest.raises(ValueError, match=match):
    make_online_step(None, optax.sgd(0.1), k, **kwargs)


def test_mutual_kl_needs_two_students():
  with pytest.raises(ValueError, match="at least 2"):
    mutual_kl(jnp.zeros((1, 4, 10)))


def test_train_online_one_epoch_reports_students_and_their_ensemble(small_mnist):
  # 1,000 training images (20 steps): each student reaches about 0.67 test accuracy; the test split is kept
  train = dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:1000],
                              train_labels=small_mnist.train_labels[:1000])
  result = train_online(train, TINY, num_students=2, rule="dml", seed=0, progress=False)
  assert len(result.students) == 2 and len(result.fit.history) == 1
  record = result.fit.history[0]
  assert all(np.isfinite(v) for k, v in record.items() if isinstance(v, float))
  assert {"test_accuracy/0", "test_errors/1", "test_ensemble_errors", "train_kl", "train_accuracy/1"} <= set(record)
  n = len(small_mnist.test_labels)
  eval_step = make_eval_step(result.students[0].graphdef)
  probs = []
  for student in result.students:
    own = evaluate(eval_step, student.params, student.rest, small_mnist.test_images, small_mnist.test_labels)
    assert own == pytest.approx(student.test, rel=1e-5)  # each student's numbers are its own
    assert student.test["accuracy"] > 0.5  # chance is 0.1
    logits = apply_model(student.graphdef, student.params, student.rest,
                         jnp.asarray(small_mnist.test_images, jnp.float32) / 255.0, train=False)[0]
    probs.append(jax.nn.softmax(logits))
  assert result.mean_student["errors"] == pytest.approx(np.mean([s.test["errors"] for s in result.students]))
  ensemble_errors = int(np.sum(np.argmax(np.mean(probs, 0), -1) != small_mnist.test_labels))
  assert result.ensemble["errors"] == ensemble_errors
  assert result.ensemble["accuracy"] == pytest.approx(1 - ensemble_errors / n)
  mean_prob_of_label = np.mean(probs, 0)[np.arange(n), small_mnist.test_labels]
  assert result.ensemble["loss"] == pytest.approx(-np.mean(np.log(mean_prob_of_label)), rel=1e-4)
