"""The optimizer a config names (kdjax.optim, kdjax.config.run_optimizer): gradient clipping and the
learning-rate warm-up, measured from the updates on known gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import TrainConfig, override, run_optimizer, validate_study
from kdjax.optim import make_optimizer, scale_updates
from kdjax.presets import PRESETS


def _lrs(tx, steps: int) -> list[float]:
  """The learning rate of each of ``steps`` updates: minus the update of a scalar gradient 1 (SGD without
  momentum)."""
  params = jnp.zeros(())
  opt_state = tx.init(params)
  lrs = []
  for _ in range(steps):
    updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
    lrs.append(-float(updates))
  return lrs


def _sgd(**kwargs):
  return make_optimizer("sgd", momentum=0.0, **{"learning_rate": 0.1, "total_steps": 10, **kwargs})


def test_clipping_caps_the_global_norm_of_a_large_gradient():
  tx = _sgd(schedule="constant", clip_norm=2.0)
  params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  grads = {"a": jnp.array([300.0, 400.0]), "b": jnp.array([1200.0])}  # global norm 1300, leaf norms 500 and 1200
  updates, _ = tx.update(grads, tx.init(params), params)
  norm = math.sqrt(sum(float(jnp.sum(u**2)) for u in jax.tree.leaves(updates)))
  np.testing.assert_allclose(norm, 0.1 * 2.0, rtol=1e-5)  # lr · clip_norm
  # One factor for the whole tree (global norm, not per leaf): the direction is the gradient's.
  scale = 2.0 / 1300.0
  np.testing.assert_allclose(updates["a"], -0.1 * scale * grads["a"], rtol=1e-5)
  np.testing.assert_allclose(updates["b"], -0.1 * scale * grads["b"], rtol=1e-5)


def test_clipping_leaves_a_small_gradient_alone():
  tx = _sgd(schedule="constant", clip_norm=2.0)
  params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  grads = {"a": jnp.array([0.3, 0.4]), "b": jnp.array([1.2])}  # norm 1.3 < 2
  updates, _ = tx.update(grads, tx.init(params), params)
  jax.tree.map(lambda u, g: np.testing.assert_allclose(u, -0.1 * g, rtol=1e-6), updates, grads)


def test_clipping_acts_on_the_gradient_before_the_weight_decay():
  tx = _sgd(schedule="constant", clip_norm=1.0, weight_decay=0.5)
  params = jnp.array([2.0, -4.0])
  grads = jnp.array([30.0, 40.0])  # norm 50, clipped to [0.6, 0.8]; the decay 0.5 · params is added after
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates, -0.1 * (np.array([0.6, 0.8]) + 0.5 * np.array([2.0, -4.0])), rtol=1e-5)


def test_constant_schedule_warms_up_linearly_from_zero():
  lrs = _lrs(_sgd(schedule="constant", warmup_steps=4), 8)
  np.testing.assert_allclose(lrs, [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1], rtol=1e-5, atol=1e-8)


def test_cosine_warms_up_then_decays_over_the_remaining_steps_to_zero():
  total, warm = 12, 4
  lrs = _lrs(_sgd(total_steps=total, warmup_steps=warm), total + 1)
  want = [0.1 * t / warm if t < warm else 0.1 * (1 + math.cos(math.pi * (t - warm) / (total - warm))) / 2
          for t in range(total + 1)]
  np.testing.assert_allclose(lrs, want, rtol=1e-5, atol=1e-7)
  assert lrs[0] == 0.0 and lrs[warm] == pytest.approx(0.1) and lrs[warm - 2] == pytest.approx(0.05)
  assert lrs[total] == pytest.approx(0.0, abs=1e-8)  # the cosine still ends at total_steps
  assert lrs[total - 1] < 0.004


def test_step_schedule_warm_up_keeps_the_decays_at_their_epochs():
  # Decays at epochs 2 and 3 of 10 steps each: steps 20 and 30, whatever the 15-step warm-up.
  tx = _sgd(total_steps=40, schedule="step", decay_epochs=(2, 3), steps_per_epoch=10, warmup_steps=15)
  want = [0.1 * min(1.0, t / 15) for t in range(20)] + [0.01] * 10 + [0.001] * 5
  np.testing.assert_allclose(_lrs(tx, 35), want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_scaled_updates_of_a_unit_rate_are_the_optimizer_with_that_rate(name):
  kwargs = {"total_steps": 10, "momentum": 0.9, "weight_decay": 1e-2, "clip_norm": 1.0, "warmup_steps": 3}
  a = make_optimizer(name, learning_rate=0.07, **kwargs)
  b = scale_updates(make_optimizer(name, learning_rate=1.0, **kwargs), 0.07)
  params = jnp.array([0.5, -1.0, 2.0])
  grads = jax.random.normal(jax.random.key(0), (10, 3)) * jnp.array([[0.1], [10.0]] * 5)  # some clipped, some not
  state_a, state_b = a.init(params), b.init(params)
  for g in grads:
    u_a, state_a = a.update(g, state_a, params)
    u_b, state_b = b.update(g, state_b, params)
    np.testing.assert_allclose(u_b, u_a, rtol=1e-5, atol=1e-9)
    params = params + u_a
  assert float(jnp.abs(u_a).max()) > 0  # past the warm-up the updates are not all zero


@pytest.mark.parametrize("kwargs,message", [
    ({"clip_norm": -1.0}, r"clip_norm must be a finite number >= 0 \(0 = off\), got -1.0"),
    ({"clip_norm": float("nan")}, r"clip_norm must be a finite number >= 0"),
    ({"warmup_steps": -1}, r"warmup_steps must be >= 0"),
    ({"warmup_steps": 10}, r"a warm-up longer than the run: warmup_steps 10 .* total_steps 10"),
    ({"warmup_steps": 25}, r"warmup_steps 25 .* total_steps 10"),
])
def test_bad_clipping_or_warm_up_is_an_error(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _sgd(**kwargs)


def test_run_optimizer_counts_the_warm_up_in_epochs():
  cfg = TrainConfig(model="mlp800", epochs=3, learning_rate=0.1, momentum=0.0, schedule="constant",
                    warmup_epochs=0.5, clip_norm=5.0)
  np.testing.assert_allclose(_lrs(run_optimizer(cfg, 4), 4), [0.0, 0.05, 0.1, 0.1], rtol=1e-5)  # 2 warm-up steps
  np.testing.assert_allclose(_lrs(run_optimizer(cfg, 4, learning_rate=1.0), 3), [0.0, 0.5, 1.0], rtol=1e-5)
  cosine = run_optimizer(TrainConfig(model="mlp800", epochs=3, learning_rate=0.1, momentum=0.0, warmup_epochs=1), 4)
  lrs = _lrs(cosine, 13)  # 12 steps in all, the last 8 a cosine
  assert lrs[4] == pytest.approx(0.1) and lrs[8] == pytest.approx(0.05) and lrs[12] == pytest.approx(0, abs=1e-8)


def test_validate_study_names_the_role_and_field():
  base = PRESETS["hinton_mnist"]
  validate_study(override(base, ["distilled.warmup_epochs=0.5", "teacher.clip_norm=1"]))
  with pytest.raises(ValueError, match=r"distilled.warmup_epochs 10 is not shorter than its 10 epochs"):
    validate_study(override(base, ["distilled.warmup_epochs=10"]))
  with pytest.raises(ValueError, match=r"student.warmup_epochs must be a finite number >= 0"):
    validate_study(override(base, ["student.warmup_epochs=-1"]))
  with pytest.raises(ValueError, match=r"teacher.clip_norm must be a finite number >= 0 \(0 = off\), got -0.5"):
    validate_study(override(base, ["teacher.clip_norm=-0.5"]))
