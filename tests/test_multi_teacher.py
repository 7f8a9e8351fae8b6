"""Multi-teacher distillation: aggregation against float64 references, stacked teachers, the step, errors;
and the mean teacher (the student's moving average as its teacher)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdjax.config import TrainConfig
from kdjax.losses import hinton_kd_loss, kl_divergence
from kdjax.losses.multi_teacher import (aggregate_log_probs, best_teacher_weights, confidence_weights,
                                        entropy_weights, fixed_weights, multi_teacher_kl, uniform_weights)
from kdjax.methods import fitnet, hinton_kd, init_method, multi_teacher_kd, per_teacher, supervised
from kdjax.methods.multi_teacher import WEIGHTINGS
from kdjax.models import create_model, split_model
from kdjax.models.functional import apply_model
from kdjax.train import (TrainedModel, chain, distill, evaluate, evaluate_ensemble, init_train_state, make_eval_step,
                         make_train_step, mean_teacher, run_teachers, teacher_groups, teacher_variables)

COMBINES = ("probs", "logits", "loss")


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _np_kl(p, q):
  return np.sum(p * (np.log(p) - np.log(q)), -1)


def _np_ce(logits, labels):
  p = _np_softmax(logits)
  return -np.log(np.take_along_axis(p, labels[..., None], -1)[..., 0])


def _logits(seed, k=3, b=5, c=7, scale=3.0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(b, c)) * scale, rng.normal(size=(k, b, c)) * scale, rng.integers(0, c, b)


# ---- weightings against float64 references -------------------------------------------------------------

def test_confidence_weights_match_ca_mkd():
  _, t, y = _logits(0)
  ce = np.stack([_np_ce(tk, y) for tk in t])
  expected = (1.0 - np.exp(ce) / np.exp(ce).sum(0)) / (len(t) - 1)  # CA-MKD's (1 - softmax(CE)) / (K - 1)
  np.testing.assert_allclose(confidence_weights(jnp.asarray(t, jnp.float32), jnp.asarray(y)), expected, rtol=1e-5, atol=1e-6)


def test_entropy_weights_match_ebkd():
  _, t, _ = _logits(1)
  p = _np_softmax(t / 2.0)
  h = -(p * np.log(p)).sum(-1)
  expected = (1.0 - h / h.sum(0)) / (len(t) - 1)
  np.testing.assert_allclose(entropy_weights(jnp.asarray(t, jnp.float32), 2.0), expected, rtol=1e-5)


def test_best_teacher_is_the_lowest_cross_entropy():
  _, t, y = _logits(2)
  ce = np.stack([_np_ce(tk, y) for tk in t])
  w = np.asarray(best_teacher_weights(jnp.asarray(t, jnp.float32), jnp.asarray(y)))
  np.testing.assert_array_equal(w.argmax(0), ce.argmin(0))
  np.testing.assert_array_equal(np.sort(w, 0)[:-1], 0.0)


def test_fixed_weights_are_normalized():
  _, t, _ = _logits(3)
  w = fixed_weights(jnp.asarray(t), [2.0, 1.0, 1.0])
  np.testing.assert_allclose(w[:, 0], [0.5, 0.25, 0.25])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), scale=st.floats(0.01, 30.0))
def test_every_weighting_is_a_distribution_over_teachers(seed, k, scale):
  _, t, y = _logits(seed, k=k, scale=scale)
  t, y = jnp.asarray(t, jnp.float32), jnp.asarray(y)
  for w in (uniform_weights(t), fixed_weights(t, list(range(1, k + 1))), confidence_weights(t, y),
            entropy_weights(t), best_teacher_weights(t, y)):
    assert w.shape == t.shape[:2]
    assert np.all(np.asarray(w) >= 0)
    np.testing.assert_allclose(np.sum(w, 0), 1.0, rtol=1e-5)


# ---- the three combinations against float64 references ------------------------------------------------

@pytest.mark.parametrize("combine", COMBINES)
def test_multi_teacher_kl_matches_float64(combine):
  s, t, _ = _logits(4)
  rng = np.random.default_rng(5)
  w = rng.uniform(size=t.shape[:2])
  w /= w.sum(0)
  temp = 3.0
  q = _np_softmax(s / temp)
  if combine == "probs":
    expected = _np_kl(np.einsum("kb,kbc->bc", w, _np_softmax(t / temp)), q)
  elif combine == "logits":
    expected = _np_kl(_np_softmax(np.einsum("kb,kbc->bc", w, t) / temp), q)
  else:
    expected = np.sum(w * np.stack([_np_kl(_np_softmax(tk / temp), q) for tk in t]), 0)
  got = multi_teacher_kl(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32),
                         temp, combine)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_multi_teacher_kl_gradient_matches_float64():
  s, t, _ = _logits(6, b=2, c=4)
  w = np.full(t.shape[:2], 1 / 3)
  temp = 2.0

  def np_loss(s64):
    target = np.einsum("kb,kbc->bc", w, _np_softmax(t / temp))
    return _np_kl(target, _np_softmax(s64 / temp)).sum()

  # d/ds KL(p || softmax(s/T)) = (softmax(s/T) - p) / T, summed over the batch
  expected = (_np_softmax(s / temp) - np.einsum("kb,kbc->bc", w, _np_softmax(t / temp))) / temp
  got = jax.grad(lambda s_: jnp.sum(multi_teacher_kl(s_, jnp.asarray(t, jnp.float32), jnp.asarray(w, jnp.float32),
                                                     temp, "probs")))(jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  assert np.isfinite(np_loss(s))


def test_zero_weight_drops_a_teacher():
  s, t, _ = _logits(7)
  w = np.zeros(t.shape[:2], np.float32)
  w[1] = 1.0
  got = aggregate_log_probs(jnp.asarray(t, jnp.float32), jnp.asarray(w), 2.0)
  np.testing.assert_allclose(got, jax.nn.log_softmax(jnp.asarray(t[1], jnp.float32) / 2.0), atol=1e-5)
  np.testing.assert_allclose(multi_teacher_kl(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), w, 2.0),
                             kl_divergence(jnp.asarray(s, jnp.float32), jnp.asarray(t[1], jnp.float32), 2.0),
                             rtol=1e-5, atol=1e-6)


def test_loss_combination_bounds_the_ensemble_kl():  # convexity of the KL in its first argument
  s, t, _ = _logits(8)
  w = uniform_weights(jnp.asarray(t))
  args = (jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), w, 4.0)
  assert np.all(np.asarray(multi_teacher_kl(*args, "loss")) >= np.asarray(multi_teacher_kl(*args, "probs")) - 1e-6)


# ---- reductions to single-teacher KD --------------------------------------------------------------------

def _method_loss(method, s, teachers, y):
  params = method.init(jax.random.key(0), {}, {n: {} for n in teachers})
  loss, terms = method(jnp.asarray(s, jnp.float32), {}, {n: (jnp.asarray(t, jnp.float32), {}) for n, t in teachers.items()},
                       {"label": jnp.asarray(y)}, params)
  return np.asarray(loss), terms


@pytest.mark.parametrize("weighting,combine", list(itertools.product(WEIGHTINGS, COMBINES)))
def test_one_teacher_and_identical_teachers_reduce_to_plain_kd(weighting, combine):
  s, t, y = _logits(9)
  plain = hinton_kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t[0], jnp.float32), jnp.asarray(y), alpha=0.3,
                         temperature=4.0)
  for k in (1, 3):
    names = [f"t{i}" for i in range(k)]
    weights = {n: float(i + 1) for i, n in enumerate(names)} if weighting == "fixed" else None
    m = multi_teacher_kd(alpha=0.3, temperature=4.0, weighting=weighting, combine=combine, weights=weights)
    loss, terms = _method_loss(m, s, {n: t[0] for n in names}, y)
    np.testing.assert_allclose(loss, plain, rtol=2e-5, atol=1e-6)
    assert set(f"kl/{n}" for n in names) <= set(terms)


def test_teacher_order_does_not_matter():
  s, t, y = _logits(10)
  m = multi_teacher_kd(weighting="fixed", weights={"a": 1.0, "b": 2.0, "c": 3.0})
  one, _ = _method_loss(m, s, {"a": t[0], "b": t[1], "c": t[2]}, y)
  two, _ = _method_loss(m, s, {"c": t[2], "a": t[0], "b": t[1]}, y)
  np.testing.assert_array_equal(one, two)
  wrong, _ = _method_loss(m, s, {"a": t[1], "b": t[0], "c": t[2]}, y)  # weights follow the names
  assert not np.allclose(one, wrong)


# ---- stacked teachers ------------------------------------------------------------------------------------

def _model(name, seed, classes=10, shape=(28, 28, 1)):
  return split_model(create_model(name, num_classes=classes, input_shape=shape, seed=seed))


def test_vmapped_teachers_equal_one_by_one():
  models = {"a": _model("mlp800", 0), "b": _model("mlp800", 1), "c": _model("mlp1200", 2), "d": _model("mlp800", 3)}
  graphdefs = {n: m[0] for n, m in models.items()}
  groups = teacher_groups(graphdefs)
  assert [names for _, names in groups] == [("a", "b", "d"), ("c",)]
  variables = {n: teacher_variables(m[1], m[2]) for n, m in models.items()}
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)), jnp.float32)
  together = jax.jit(lambda v, x: run_teachers(graphdefs, v, x))(variables, x)
  for n, (g, p, r) in models.items():
    logits, feats, _ = apply_model(g, p, r, x, train=False)
    np.testing.assert_allclose(together[n][0], logits, rtol=1e-5, atol=1e-5)
    for key in feats:
      np.testing.assert_allclose(together[n][1][key], feats[key], rtol=1e-5, atol=1e-5)
  assert not np.allclose(together["a"][0], together["b"][0])  # each teacher keeps its own weights


# ---- the step, the library entry point, the evaluator ----------------------------------------------------

TINY = TrainConfig(model="mlp800", epochs=1, batch_size=100, learning_rate=0.05)


@pytest.fixture(scope="module")
def data(small_mnist):
  return dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:400],
                             train_labels=small_mnist.train_labels[:400], test_images=small_mnist.test_images[:300],
                             test_labels=small_mnist.test_labels[:300])


def _untrained(name, seed, data, classes=None):
  g, p, r = _model(name, seed, classes or data.num_classes, data.image_shape)
  return TrainedModel(name, classes or data.num_classes, data.image_shape, g, p, r, fit=None)


@pytest.fixture(scope="module")
def teachers(data):
  return {"a": _untrained("mlp800", 10, data), "b": _untrained("mlp800", 11, data), "c": _untrained("mlp1200", 12, data)}


def test_distill_from_several_teachers_logs_each(data, teachers):
  r = distill(data, TINY, teachers, method=multi_teacher_kd(weighting="confidence", combine="loss"), progress=False)
  rec = r.fit.history[-1]
  for n in teachers:
    assert np.isfinite(rec[f"train_kl/{n}"]) and 0 <= rec[f"train_agreement/{n}"] <= 1
    assert 0 <= rec[f"train_weight/{n}"] <= 1
  np.testing.assert_allclose(sum(rec[f"train_weight/{n}"] for n in teachers), 1.0, rtol=1e-5)
  assert np.isfinite(rec["train_loss"])


def test_per_teacher_gives_each_teacher_its_own_connector(data, teachers):
  two = {n: teachers[n] for n in ("a", "c")}
  method = per_teacher({n: (1.0, fitnet(student_layer="block1", teacher_layer="block1" if n == "a" else "block2",
                                        ce_weight=0.0)) for n in two})
  r = distill(data, TINY, two, method=method, progress=False)
  assert set(r.method_params) == {"a", "c"}
  assert r.method_params["a"] and r.method_params["c"]
  assert {"train_a/hint", "train_c/hint"} <= set(r.fit.history[-1])


def test_evaluate_ensemble_counts_match_numpy(data, teachers):
  graphdefs = {n: t.graphdef for n, t in teachers.items()}
  variables = {n: t.variables for n, t in teachers.items()}
  student = _untrained("mlp800", 13, data)
  out = evaluate_ensemble(graphdefs, variables, data.test_images, data.test_labels, student_graphdef=student.graphdef,
                          student_vars=student.variables, batch_size=128)
  x = jnp.asarray(data.test_images, jnp.float32) / 255.0
  y = np.asarray(data.test_labels)
  logits = {n: np.asarray(apply_model(t.graphdef, t.params, t.rest, x, train=False)[0]) for n, t in teachers.items()}
  s_pred = np.asarray(apply_model(student.graphdef, student.params, student.rest, x, train=False)[0]).argmax(-1)
  ens = np.mean([_np_softmax(v.astype(np.float64)) for v in logits.values()], 0).argmax(-1)
  np.testing.assert_allclose(out["ensemble"]["accuracy"], np.mean(ens == y))
  np.testing.assert_allclose(out["ensemble"]["agreement"], np.mean(ens == s_pred))
  for n, v in logits.items():
    assert out[n]["errors"] == int(np.sum(v.argmax(-1) != y))
    np.testing.assert_allclose(out[n]["agreement"], np.mean(v.argmax(-1) == s_pred))
  assert out["student"]["errors"] == int(np.sum(s_pred != y))


# ---- clear errors before training ------------------------------------------------------------------------

def test_teachers_with_another_class_count_are_rejected(data, teachers):
  bad = {**teachers, "five": _untrained("mlp800", 14, data, classes=5)}
  with pytest.raises(ValueError, match="different class counts.*five"):
    distill(data, TINY, bad, alpha=0.5, temperature=4.0, progress=False)


def test_empty_teacher_dict_is_rejected(data):
  with pytest.raises(ValueError, match="empty"):
    distill(data, TINY, {}, alpha=0.5, temperature=4.0, progress=False)


def test_weights_must_match_the_teachers(data, teachers):
  with pytest.raises(ValueError, match="2 against 3"):
    distill(data, TINY, teachers, method=multi_teacher_kd(weighting="fixed", weights={"a": 1.0, "b": 1.0}),
            progress=False)
  with pytest.raises(ValueError, match="weights"):
    multi_teacher_kd(weighting="fixed")
  with pytest.raises(ValueError, match=">= 0"):
    multi_teacher_kd(weighting="fixed", weights={"a": -1.0, "b": 2.0})
  with pytest.raises(ValueError, match="unknown weighting"):
    multi_teacher_kd(weighting="vote")
  with pytest.raises(ValueError, match="per_teacher was given"):
    distill(data, TINY, teachers, method=per_teacher({"a": (1.0, hinton_kd(alpha=0.5, temperature=4.0))}),
            progress=False)


def test_single_teacher_method_with_several_teachers_is_rejected(data, teachers):
  with pytest.raises(ValueError, match="one teacher.*3 teachers were given"):
    distill(data, TINY, teachers, method=hinton_kd(alpha=0.5, temperature=4.0), progress=False)


# ---- mean teacher ----------------------------------------------------------------------------------------

def test_mean_teacher_step_keeps_the_moving_average():
  g, p, r = _model("mlp800", 0)
  tx = optax.sgd(0.1)
  decay = 0.9
  method = hinton_kd(alpha=0.5, temperature=2.0)
  step = make_train_step(g, tx, method, ema_decay=decay)
  state = init_train_state(p, r, tx, jax.random.key(0), *init_method(method, jax.random.key(1), {}, {}, 1), ema=True)
  before = jax.tree.map(np.array, state.params)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (8, 28, 28, 1)), jnp.uint8), "label": jnp.arange(8) % 10,
           "index": jnp.arange(8)}
  state, metrics = step(state, None, batch)
  assert bool(metrics["finite"]) and 0 <= float(metrics["teacher_agreement"]) <= 1
  jax.tree.map(lambda e, b, a: np.testing.assert_allclose(e, decay * b + (1 - decay) * np.asarray(a), rtol=1e-5, atol=1e-7),
               state.ema["params"], before, state.params)
  assert not np.allclose(jax.tree.leaves(state.ema["params"])[0], jax.tree.leaves(state.params)[0])


def test_mean_teacher_runs_and_rejects_a_bad_decay(data):
  r = mean_teacher(data, TINY, decay=0.9, alpha=0.5, temperature=4.0, progress=False)
  acc = evaluate(make_eval_step(r.graphdef), r.params, r.rest, data.test_images, data.test_labels)["accuracy"]
  assert acc == r.test["accuracy"] and 0 <= acc <= 1
  with pytest.raises(ValueError, match="ema_decay"):
    make_train_step(r.graphdef, optax.sgd(0.1), supervised(), ema_decay=1.0)


# ---- chains: teacher-assistant KD and born-again generations ----------------------------------------------

def test_chain_distills_each_model_from_the_one_before(data):
  cfgs = [dataclasses.replace(TINY, model="mlp1200"), TINY, TINY]
  models = chain(data, cfgs, alpha=0.5, temperature=4.0, seed=3, progress=False)
  assert [m.model for m in models] == ["mlp1200", "mlp800", "mlp800"]
  again = distill(data, TINY, models[1], alpha=0.5, temperature=4.0, seed=5, progress=False)
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(models[2].params)):
    np.testing.assert_array_equal(a, b)  # the last generation learned from the second model, not the first
  with pytest.raises(ValueError, match="at least two"):
    chain(data, cfgs[:1], alpha=0.5, temperature=4.0)
  with pytest.raises(ValueError, match="1 seeds for 3 models"):
    chain(data, cfgs, alpha=0.5, temperature=4.0, seeds=[1])


def test_chain_from_a_trained_teacher_distills_the_first_config(data, teachers):
  (student,) = chain(data, [TINY], teacher=teachers["a"], alpha=0.5, temperature=4.0, seed=7, progress=False)
  direct = distill(data, TINY, teachers["a"], alpha=0.5, temperature=4.0, seed=7, progress=False)
  for a, b in zip(jax.tree.leaves(direct.params), jax.tree.leaves(student.params)):
    np.testing.assert_array_equal(a, b)


def test_misplaced_teachers_get_a_clear_error():
  g, p, r = _model("mlp800", 0)
  tx = optax.sgd(0.1)
  with pytest.raises(ValueError, match="uses no teacher"):
    make_train_step(g, tx, supervised(), teacher_graphdef={"a": g})
  with pytest.raises(ValueError, match=r"several teachers: give them as a dict"):
    make_train_step(g, tx, multi_teacher_kd(), teacher_graphdef=g)
  with pytest.raises(ValueError, match="not a moving average"):
    make_train_step(g, tx, multi_teacher_kd(), ema_decay=0.9)
  with pytest.raises(ValueError, match="teacher names"):
    make_train_step(g, tx, multi_teacher_kd(), teacher_graphdef={"ensemble": g})
