"""Combining methods, and the non-differentiated method state threaded through the step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import TrainConfig
from kdjax.methods import as_method, combine, fitnet, hinton_kd, init_method, supervised
from kdjax.models import create_model, feature_shapes, split_model
from kdjax.train import distill, train_teacher

TINY = TrainConfig(model="mlp800", epochs=1, batch_size=100, learning_rate=0.05)


@pytest.fixture(scope="module")
def data(small_mnist):
  return dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:600],
                             train_labels=small_mnist.train_labels[:600])


@pytest.fixture(scope="module")
def teacher(data):
  return train_teacher(data, dataclasses.replace(TINY, model="mlp1200"), progress=False)


def _shapes(name):
  g, p, r = split_model(create_model(name, num_classes=10, input_shape=(28, 28, 1)))
  return feature_shapes(g, p, r, (28, 28, 1))


def _inputs(seed=0, b=6):
  rng = np.random.default_rng(seed)
  s_feats = {"block2": jnp.asarray(rng.normal(size=(b, 800)), jnp.float32)}
  t_feats = {"block2": jnp.asarray(rng.normal(size=(b, 1200)), jnp.float32)}
  s, t = (jnp.asarray(rng.normal(size=(b, 10)), jnp.float32) for _ in range(2))
  return s, s_feats, (t, t_feats), {"label": jnp.asarray(rng.integers(0, 10, b)), "step": 0}


def test_combined_loss_is_the_weighted_sum_of_its_parts_with_prefixed_terms():
  kd, fit_ = hinton_kd(alpha=0.5, temperature=4.0), fitnet(ce_weight=0.0)
  method = combine({"kd": (0.7, kd), "fitnet": (2.0, fit_)})
  params, state = init_method(method, jax.random.key(0), _shapes("mlp800"), _shapes("mlp1200"), 600)
  assert set(params) == {"kd", "fitnet"} and params["kd"] == {} and "regressor" in params["fitnet"]
  s, s_feats, teacher, batch = _inputs()
  loss_B, terms, new_state = method(s, s_feats, teacher, {**batch, "method_state": state}, params)
  kd_B, kd_terms = kd(s, s_feats, teacher, batch, {})
  fit_B, fit_terms = fit_(s, s_feats, teacher, batch, params["fitnet"])
  np.testing.assert_allclose(loss_B, 0.7 * kd_B + 2.0 * fit_B, rtol=1e-6)
  assert set(terms) == {"kd/ce", "kd/kl", "fitnet/ce", "fitnet/hint"}
  np.testing.assert_allclose(terms["fitnet/hint"], fit_terms["hint"], rtol=1e-6)
  assert method.needs_teacher and new_state == {"kd": {}, "fitnet": {}}


def test_combine_rejects_malformed_parts():
  with pytest.raises(ValueError, match="at least one"):
    combine({})
  with pytest.raises(ValueError, match=r"part 'kd' must be \(weight, method\)"):
    combine({"kd": hinton_kd(alpha=0.5, temperature=4.0)})
  with pytest.raises(ValueError, match="weight of 'kd' must be >= 0"):
    combine({"kd": (-1.0, hinton_kd(alpha=0.5, temperature=4.0))})


def counting_method():
  """A test method with state: counts its calls, marks every training index it saw, and
  keeps one draw from each step's key."""
  base = supervised()

  def init_state(key, student_shapes, teacher_shapes, num_examples):
    return {"calls": jnp.zeros((), jnp.int32), "seen": jnp.zeros((num_examples,), jnp.int32),
            "draws": jnp.zeros((16,), jnp.float32)}

  def method(student_logits, student_feats, teacher, batch, params):
    loss_B, terms = base(student_logits, student_feats, teacher, batch, params)
    state = batch["method_state"]
    return loss_B, terms, {"calls": state["calls"] + 1, "seen": state["seen"].at[batch["index"]].add(1),
                           "draws": state["draws"].at[state["calls"]].set(jax.random.uniform(batch["key"]))}

  return as_method(method, needs_teacher=False, init_state=init_state)


def test_method_state_is_carried_across_steps_with_dataset_indices_and_fresh_keys(data, teacher):
  method = combine({"kd": (1.0, hinton_kd(alpha=0.5, temperature=4.0)), "count": (0.0, counting_method())})
  result = distill(data, dataclasses.replace(TINY, epochs=2), teacher, method=method, progress=False)
  state = result.fit.state.method_state["count"]
  assert int(state["calls"]) == 12  # 2 epochs x 6 steps
  assert np.all(np.asarray(state["seen"]) == 2)  # every example, once per epoch (600 = 6 x 100)
  draws = np.asarray(state["draws"])[:12]  # one uniform draw per step from batch["key"]: all different
  assert len(set(draws.tolist())) == 12 and np.all(draws > 0)
  assert "train_kd/kl" in result.fit.history[-1] and "train_count/ce" in result.fit.history[-1]
