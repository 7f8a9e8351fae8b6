"""Self-distillation without a teacher: Tf-KD_reg (Yuan et al. 2020) and BYOT (Zhang et al. 2019).

Tf-KD against a float64 NumPy transcription of the reference ``loss_kd_regularization``
(yuanli2333/Teacher-free-Knowledge-Distillation, my_loss_function.py); BYOT's loss against a
float64 NumPy forward of its shallow classifiers, its gradient paths (the deepest classifier
and feature are targets only), and one epoch of each method with the early exits evaluated.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from harness import synthetic_data
from numeric import numerical_grad

from kdjax.losses import tf_kd_reg_loss, virtual_teacher_probs
from kdjax.methods import init_method, make_method
from kdjax.models import create_model, feature_shapes, split_model
from kdjax.models.functional import apply_model
from kdjax.train import evaluate, fit, init_train_state, make_eval_step, make_train_step
from kdjax.train.heads import evaluate_heads


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(z, y):
  return -np_log_softmax(z)[np.arange(len(y)), y]


# ---------------------------------------------------------------------------
# Tf-KD_reg
# ---------------------------------------------------------------------------

def np_tf_kd_reg(outputs, labels, T, correct_prob, multiplier):
  """loss_kd_regularization's soft term, per example: nn.KLDivLoss()(log_softmax(outputs),
  softmax(teacher_soft / T)) * multiplier, whose 'mean' reduction averages over all B*K elements."""
  outputs = np.float64(outputs)
  b, k = outputs.shape
  teacher_soft = np.ones_like(outputs) * (1 - correct_prob) / (k - 1)
  teacher_soft[np.arange(b), labels] = correct_prob
  q = np.exp(np_log_softmax(teacher_soft / T))
  elementwise = q * (np.log(q) - np_log_softmax(outputs))  # torch's KLDivLoss pointwise term
  return elementwise.sum(-1) / k * multiplier  # batch mean of this == elementwise.mean() * multiplier


def test_virtual_teacher_is_a_distribution_peaked_at_the_label():
  labels = jnp.array([0, 3, 6, 6, 2])
  for cp in (0.99, 0.5, 0.3):
    p = np.asarray(virtual_teacher_probs(labels, 7, cp))
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(-1), labels)
    np.testing.assert_allclose(p[np.arange(5), labels], cp, rtol=1e-6)
    np.testing.assert_allclose(np.sort(p, -1)[:, :-1], (1 - cp) / 6, rtol=1e-6)
  np.testing.assert_allclose(virtual_teacher_probs(labels, 7, 1 / 7), 1 / 7, rtol=1e-6)
  np.testing.assert_array_equal(virtual_teacher_probs(labels, 7, 1.0), np.eye(7)[np.asarray(labels)])
  for bad in (0.0, -0.1, 1.01, 0.1):  # 0.1 < 1/7: the label would be the least likely class
    with pytest.raises(ValueError, match="correct_prob"):
      virtual_teacher_probs(labels, 7, bad)


@pytest.mark.parametrize("k,T,cp,multiplier", [(10, 20.0, 0.99, 100.0), (7, 4.0, 0.9, 1.0), (3, 1.0, 0.5, 2.5)])
def test_tf_kd_reg_loss_and_method_match_the_reference_in_value_and_gradient(k, T, cp, multiplier):
  rng = np.random.default_rng(k)
  s = (3 * rng.normal(size=(6, k))).astype(np.float32)
  y = rng.integers(0, k, 6)
  ref = np_tf_kd_reg(s, y, T, cp, multiplier)
  reg = jax.jit(lambda s_: tf_kd_reg_loss(s_, y, temperature=T, correct_prob=cp, multiplier=multiplier))
  np.testing.assert_allclose(reg(s), ref, rtol=1e-5)
  # The whole method is the reference's (1 - alpha) * CE + alpha * loss_soft_regu, as batch means.
  alpha = 0.3
  loss_B, terms = make_method("tf_kd", alpha=alpha, temperature=T, correct_prob=cp, multiplier=multiplier)(
      s, {}, None, {"label": jnp.asarray(y)}, {})
  np.testing.assert_allclose(float(jnp.mean(loss_B)), (1 - alpha) * np_ce(s, y).mean() + alpha * ref.mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(terms["reg"], ref, rtol=1e-5)
  # Student gradient against float64 finite differences of the reference.
  w = rng.uniform(0.5, 1.5, size=6)
  g = np.asarray(jax.grad(lambda s_: jnp.sum(jnp.asarray(w, jnp.float32) * reg(s_)))(s))
  g_ref = numerical_grad(lambda s_: np.sum(w * np_tf_kd_reg(s_, y, T, cp, multiplier)), s)
  np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-4 * np.abs(g_ref).max())


def test_tf_kd_validates_its_arguments():
  for kwargs, match in [(dict(alpha=1.5), "alpha"), (dict(alpha=-0.1), "alpha"), (dict(temperature=0.0), "temperature"),
                        (dict(correct_prob=0.0), "correct_prob"), (dict(correct_prob=1.2), "correct_prob"),
                        (dict(multiplier=-1.0), "multiplier")]:
    with pytest.raises(ValueError, match=match):
      make_method("tf_kd", **kwargs)
  assert make_method("tf_kd").needs_teacher is False


# ---------------------------------------------------------------------------
# BYOT: the loss against a float64 forward of the heads
# ---------------------------------------------------------------------------

K = 5
TAPS = ("block1", "block2", "hidden")


def _feats(seed=0, b=6):
  rng = np.random.default_rng(seed)
  return {"block1": jnp.asarray(rng.normal(size=(b, 8, 8, 3)), jnp.float32),  # one halving: a 3x3/2 conv
          "block2": jnp.asarray(rng.normal(size=(b, 4, 4, 4)), jnp.float32),  # the smallest map: a 1x1 conv
          "hidden": jnp.asarray(rng.normal(size=(b, 5)), jnp.float32),  # a vector tap
          "pre_logits": jnp.asarray(np.abs(rng.normal(size=(b, 6))), jnp.float32)}


def _shapes(feats):
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in feats.items()}


def np_conv(x, w, stride, pad):
  """NHWC cross-correlation with an HWIO kernel, as lax.conv_general_dilated."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = w.shape[:2]
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = 0.0
  for i in range(kh):
    for j in range(kw):
      out = out + x[:, i:i + stride * oh:stride, j:j + stride * ow:stride] @ w[i, j]
  return out


def np_head(p, x):
  """A shallow classifier in float64: (F_i, logits_i)."""
  p = jax.tree.map(np.float64, p)
  x = np.float64(x)
  if "fc" in p:
    f = np.maximum(x @ p["fc"]["kernel"] + p["fc"]["bias"], 0)
  else:
    for layer in p["convs"]:
      k = layer["conv"]["kernel"]
      x = np_conv(x, k, 1, 0) if k.shape[0] == 1 else np_conv(x, k, 2, 1)
      mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
      x = np.maximum((x - mean) / np.sqrt(var + 1e-5) * layer["bn"]["scale"] + layer["bn"]["bias"], 0)
    f = x.mean((1, 2))
  return f, f @ p["classifier"]["kernel"] + p["classifier"]["bias"]


def np_byot(logits, feats, y, params, alpha, lam, T, w_deep):
  zc, fc = np.float64(logits), np.float64(feats["pre_logits"])
  total = w_deep * np_ce(zc, y)
  p_t = np.exp(np_log_softmax(zc / T))
  for tap in TAPS:
    f, z = np_head(params[tap], feats[tap])
    kl = (p_t * (np.log(p_t) - np_log_softmax(z / T))).sum(-1)
    total = total + (1 - alpha) * np_ce(z, y) + alpha * T**2 * kl + lam * ((f - fc) ** 2).sum(-1)
  return total


def _byot(**kw):
  method = make_method("byot", taps=TAPS, num_classes=K, **kw)
  feats = _feats()
  params = method.init(jax.random.key(0), _shapes(feats), {})
  logits = jnp.asarray(2 * np.random.default_rng(1).normal(size=(6, K)), jnp.float32)
  return method, params, logits, feats, jnp.array([0, 1, 2, 3, 4, 0])


@pytest.mark.parametrize("alpha,lam,T,w_deep", [(0.3, 0.03, 3.0, None), (0.7, 0.5, 1.5, 1.0)])
def test_byot_loss_matches_a_float64_reference(alpha, lam, T, w_deep):
  method, params, logits, feats, y = _byot(alpha=alpha, feature_weight=lam, temperature=T, deepest_ce_weight=w_deep)
  assert [len(params[t].get("convs", [])) for t in TAPS] == [1, 1, 0]
  assert params["block1"]["convs"][0]["conv"]["kernel"].shape == (3, 3, 3, 6)
  assert params["block2"]["convs"][0]["conv"]["kernel"].shape == (1, 1, 4, 6)
  loss_B, terms = jax.jit(method)(logits, feats, None, {"label": y}, params)
  ref = np_byot(logits, feats, np.asarray(y), params, alpha, lam, T, 1 - alpha if w_deep is None else w_deep)
  np.testing.assert_allclose(loss_B, ref, rtol=2e-5)
  assert set(terms) == {"ce"} | {f"{n}/{t}" for n in ("ce", "kl", "feat") for t in TAPS}
  np.testing.assert_allclose(terms["ce"], np_ce(np.float64(logits), np.asarray(y)), rtol=1e-5)
  heads = method.head_logits(params, feats)
  for tap in TAPS:
    np.testing.assert_allclose(heads[tap], np_head(params[tap], feats[tap])[1], rtol=1e-4, atol=1e-5)


def test_byot_gradient_paths_treat_the_deepest_classifier_and_feature_as_targets():
  method, params, logits, feats, y = _byot()

  def term(name, logits, pre_logits, params=params, feats=feats):
    _, terms = method(logits, {**feats, "pre_logits": pre_logits}, None, {"label": y}, params)
    return jnp.sum(sum(v for k, v in terms.items() if k.split("/")[0] == name))

  @jax.jit
  def grads(logits, pre, params, feats):
    targets = {name: jax.grad(term, argnums=(1, 2))(name, logits, pre) for name in ("ce", "kl", "feat")}
    total = lambda params, feats: jnp.sum(method(logits, feats, None, {"label": y}, params)[0])
    taps = {(tap, name): jax.grad(lambda f: term(name, logits, pre, feats={**feats, tap: f}))(feats[tap])
            for tap in TAPS for name in ("ce", "kl", "feat")}
    return targets, jax.grad(total)(params, feats), taps

  targets, g_params, g_taps = grads(logits, feats["pre_logits"], params, feats)
  for name in ("kl", "feat"):
    assert all(float(jnp.abs(g).max()) == 0.0 for g in targets[name]), name
  assert float(jnp.abs(targets["ce"][0]).max()) > 1e-3
  # ... while each shallow classifier's terms train every one of its parameters and reach its tap.
  for path, g in jax.tree_util.tree_flatten_with_path(g_params)[0]:
    assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
  for key, g in g_taps.items():
    assert float(jnp.abs(g).max()) > 0, key


def test_byot_heads_on_a_padded_batch_use_the_real_examples_statistics():
  method, params, _, feats, _ = _byot()
  padded = {k: jnp.concatenate([v, 7.0 + jnp.zeros((3, *v.shape[1:]))]) for k, v in feats.items()}
  mask = jnp.arange(9) < 6
  plain, masked = method.head_logits(params, feats), method.head_logits(params, padded, mask)
  for tap in TAPS:
    np.testing.assert_allclose(masked[tap][:6], plain[tap], rtol=1e-4, atol=1e-5)


def test_byot_rejects_unknown_taps_at_init_and_validates_its_arguments():
  shapes = _shapes(_feats())
  with pytest.raises(ValueError, match=r"'block7'.*available: block1, block2, hidden, pre_logits"):
    make_method("byot", taps=("block1", "block7"), num_classes=K).init(jax.random.key(0), shapes, {})
  with pytest.raises(ValueError, match="num_classes"):
    make_method("byot", taps=("block1",)).init(jax.random.key(0), shapes, {})
  for kwargs, match in [(dict(taps=()), "tap"), (dict(taps=("block1", "block1")), "distinct"),
                        (dict(taps=("pre_logits",)), "pre_logits"), (dict(alpha=1.5), "alpha"),
                        (dict(temperature=-1.0), "temperature"), (dict(feature_weight=-1.0), "feature_weight"),
                        (dict(num_classes=1), "num_classes")]:
    with pytest.raises(ValueError, match=match):
      make_method("byot", **kwargs)
  method, params, logits, feats, y = _byot()
  with pytest.raises(ValueError, match="num_classes=4"):
    method(logits[:, :4], feats, None, {"label": y}, params)


# ---------------------------------------------------------------------------
# BYOT and Tf-KD on a real model
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn():
  return split_model(create_model("cnn16", num_classes=10, input_shape=(32, 32, 3)))


def test_byot_head_on_block1_trains_only_the_backbone_below_block1(cnn):
  graphdef, params, rest = cnn
  method = make_method("byot", num_classes=10)
  method_params = method.init(jax.random.key(0), feature_shapes(graphdef, params, rest, (32, 32, 3)), {})
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 32, 32, 3)), jnp.float32)
  y = jnp.arange(8) % 10

  @jax.jit
  def grads(params):
    def term(params, name):
      logits, feats, _ = apply_model(graphdef, params, rest, x, train=True)
      return jnp.mean(method(logits, feats, None, {"label": y}, method_params)[1][name])
    return {name: jax.grad(term)(params, name) for name in ("kl/block1", "feat/block1", "ce")}

  for name, g in grads(params).items():
    norms = {jax.tree_util.keystr(path): float(jnp.abs(leaf).max())
             for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]}
    below = {k: v for k, v in norms.items() if "conv1" in k}
    above = {k: v for k, v in norms.items() if "conv1" not in k}
    assert len(below) == 2 and all(v > 0 for v in below.values()), (name, below)
    if name == "ce":  # the deepest classifier's CE trains everything
      assert all(v > 0 for v in above.values()), above
    else:  # conv2, fc and head only make the (stopped) targets
      assert all(v == 0 for v in above.values()), (name, above)


@pytest.mark.parametrize("name", ["byot", "tf_kd"])
def test_self_distillation_trains_one_epoch_without_a_teacher_and_the_heads_evaluate(name, cnn):
  graphdef, params, rest = cnn
  params, rest = jax.tree.map(jnp.copy, (params, rest))  # copies: the step donates the state
  data = synthetic_data(n=64, n_test=30)
  method = make_method(name, **({"num_classes": 10} if name == "byot" else {}))
  assert method.needs_teacher is False
  shapes = feature_shapes(graphdef, params, rest, (32, 32, 3))
  method_params, method_state = init_method(method, jax.random.key(1), shapes, {}, len(data.train_labels))
  initial = jax.tree.map(np.array, method_params)
  tx = optax.sgd(0.01, momentum=0.9)
  step = make_train_step(graphdef, tx, method)
  state = init_train_state(params, rest, tx, jax.random.key(0), method_params, method_state)
  result = fit(state, step, make_eval_step(graphdef), data, epochs=1, batch_size=16, progress=False)
  record = result.history[-1]
  terms = ["ce", "reg"] if name == "tf_kd" else ["ce"] + [f"{n}/{t}" for n in ("ce", "kl", "feat") for t in ("block1", "block2")]  # byot's default taps
  assert all(np.isfinite(record[f"train_{t}"]) for t in terms), record
  assert np.isfinite(record["train_loss"])
  if name == "tf_kd":
    return
  state = result.state
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.method_params, initial)
  assert all(v > 0 for v in jax.tree.leaves(moved)), moved
  exits = evaluate_heads(graphdef, state.params, state.rest, method, state.method_params, data.test_images,
                         data.test_labels, batch_size=16)  # 30 = 16 + 14 real examples, the last batch padded
  assert set(exits) == {"block1", "block2", "final"}
  for metrics in exits.values():
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["errors"] == round(30 * (1 - metrics["accuracy"]))
    assert np.isfinite(metrics["loss"])
  final = evaluate(make_eval_step(graphdef), state.params, state.rest, data.test_images, data.test_labels,
                   batch_size=16)
  assert exits["final"]["accuracy"] == final["accuracy"] and exits["final"]["errors"] == final["errors"]
  np.testing.assert_allclose(exits["final"]["loss"], final["loss"], rtol=1e-5)
