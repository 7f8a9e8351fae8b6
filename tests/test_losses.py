import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from kdjax.losses import hard_cross_entropy, hinton_kd_loss, kl_divergence, soft_target_cross_entropy

logits = hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(2, 12)),
                    elements=st.floats(-30, 30, width=32))
temperatures = st.floats(0.05, 100.0)
# The two property tests call the loss jitted: each drawn shape compiles one program instead of
# compiling every operation eagerly (a few times faster on a CPU); the tests below call it eagerly.
jit_kl = jax.jit(kl_divergence)


def np_softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def np_kl(s, t, T):
  s, t = np.float64(s) / T, np.float64(t) / T
  log_ps = s - s.max(-1, keepdims=True)
  log_ps = log_ps - np.log(np.exp(log_ps).sum(-1, keepdims=True))
  log_pt = t - t.max(-1, keepdims=True)
  log_pt = log_pt - np.log(np.exp(log_pt).sum(-1, keepdims=True))
  return (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)


@settings(max_examples=40, deadline=None)
@given(logits, temperatures)
def test_kl_of_a_distribution_with_itself_is_zero(x, T):
  np.testing.assert_allclose(jit_kl(x, x, T), 0.0, atol=1e-6)
  # ... and with a per-row shift of the logits, which leaves softmax unchanged.
  np.testing.assert_allclose(jit_kl(x + 3.0, x, T), 0.0, atol=2e-5)


@settings(max_examples=40, deadline=None)
@given(logits, logits, temperatures)
def test_kl_is_non_negative_and_matches_float64(s, t, T):
  n = min(len(s), len(t)), min(s.shape[1], t.shape[1])
  s, t = s[:n[0], :n[1]], t[:n[0], :n[1]]
  kl = np.asarray(jit_kl(s, t, T))
  assert kl.shape == (n[0],) and kl.dtype == np.float32
  assert (kl >= 0).all()
  ref = np_kl(s, t, T)
  np.testing.assert_allclose(kl, ref, rtol=1e-3, atol=1e-4)


def test_hinton_loss_applies_t_squared_to_the_kl_term_only():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(8, 10)).astype(np.float32), 3 * rng.normal(size=(8, 10)).astype(np.float32)
  y = rng.integers(0, 10, 8)
  for T in (1.0, 4.0, 20.0):
    ce = hard_cross_entropy(s, y)
    kl = kl_divergence(s, t, T)
    np.testing.assert_allclose(hinton_kd_loss(s, t, y, alpha=0.0, temperature=T), T * T * kl, rtol=1e-5)
    np.testing.assert_allclose(hinton_kd_loss(s, t, y, alpha=1.0, temperature=T), ce, rtol=1e-6)
    np.testing.assert_allclose(hinton_kd_loss(s, t, y, alpha=0.3, temperature=T),
                               0.3 * ce + 0.7 * T * T * kl, rtol=1e-5)


def test_t_squared_keeps_the_soft_term_finite_at_high_temperature():
  """Hinton et al. 2015, sec. 2.1: for zero-mean logits and large T,
  T²·KL -> (1/2C)·Σ(s_i - t_i)², independent of T. A missing or wrong power of T fails."""
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
  s, t = s - s.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)
  limit = ((s - t) ** 2).sum(-1) / (2 * 10)
  for T in (50.0, 200.0):
    got = hinton_kd_loss(s.astype(np.float32), t.astype(np.float32), np.zeros(4, int), alpha=0.0, temperature=T)
    np.testing.assert_allclose(got, limit, rtol=0.03)


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_gradient_wrt_student_logits_matches_float64_reference(T):
  rng = np.random.default_rng(2)
  B, C = 16, 10
  s, t = rng.normal(size=(B, C)) * 3, rng.normal(size=(B, C)) * 3
  y = np.zeros(B, int)
  mean_kd = lambda s_: jnp.mean(hinton_kd_loss(s_, t.astype(np.float32), y, alpha=0.0, temperature=T))
  grad = np.asarray(jax.grad(mean_kd)(s.astype(np.float32)))
  ref = (np_softmax(s / T) - np_softmax(t / T)) * T / B  # float64
  np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-6)


def test_check_grads_kl_and_soft_ce():
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(3, 5)).astype(np.float32)
  check_grads(lambda x: kl_divergence(x, t, 2.0), (s,), order=2, modes=["rev"], atol=1e-2, rtol=1e-2)
  check_grads(lambda x: soft_target_cross_entropy(x, t, 2.0), (s,), order=1, modes=["rev", "fwd"],
              atol=1e-2, rtol=1e-2)


def test_soft_cross_entropy_is_kl_plus_teacher_entropy():
  rng = np.random.default_rng(4)
  s, t = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(5, 7)).astype(np.float32)
  p = np_softmax(np.float64(t) / 3.0)
  entropy = -(p * np.log(p)).sum(-1)
  np.testing.assert_allclose(soft_target_cross_entropy(s, t, 3.0), kl_divergence(s, t, 3.0) + entropy, rtol=1e-5)


def test_no_gradient_reaches_the_teacher_logits():
  rng = np.random.default_rng(5)
  s, t = rng.normal(size=(4, 10)).astype(np.float32), rng.normal(size=(4, 10)).astype(np.float32)
  y = rng.integers(0, 10, 4)
  for f in (lambda t_: hinton_kd_loss(s, t_, y, alpha=0.2, temperature=4.0).sum(),
            lambda t_: kl_divergence(s, t_, 4.0).sum(),
            lambda t_: soft_target_cross_entropy(s, t_, 4.0).sum()):
    np.testing.assert_array_equal(jax.grad(f)(t), 0.0)


def test_float32_math_for_bfloat16_inputs():
  rng = np.random.default_rng(6)
  s, t = rng.normal(size=(4, 10)) * 5, rng.normal(size=(4, 10)) * 5
  sb, tb = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  y = np.arange(4)
  out = hinton_kd_loss(sb, tb, y, alpha=0.5, temperature=4.0)
  assert out.dtype == jnp.float32
  ref = hinton_kd_loss(sb.astype(jnp.float32), tb.astype(jnp.float32), y, alpha=0.5, temperature=4.0)
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  assert jax.grad(lambda x: hinton_kd_loss(x, tb, y, alpha=0.5, temperature=4.0).sum())(sb).dtype == jnp.bfloat16


def test_kl_is_stable_for_huge_logit_gaps():
  s = np.array([[1000.0, -1000.0, 0.0]], np.float32)
  t = np.array([[-1000.0, 1000.0, 0.0]], np.float32)
  kl = kl_divergence(s, t, 1.0)
  assert np.isfinite(kl).all() and float(kl[0]) == pytest.approx(2000.0, rel=1e-4)


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(T):
  x = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match="temperature"):
    kl_divergence(x, x, T)
  with pytest.raises(ValueError, match="temperature"):
    hinton_kd_loss(x, x, np.zeros(2, int), alpha=0.5, temperature=T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_bad_alpha_is_rejected(alpha):
  x = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match="alpha"):
    hinton_kd_loss(x, x, np.zeros(2, int), alpha=alpha, temperature=2.0)


def test_mismatched_class_counts_are_rejected():
  with pytest.raises(ValueError, match="number of classes"):
    hinton_kd_loss(np.zeros((2, 10)), np.zeros((2, 100)), np.zeros(2, int), alpha=0.5, temperature=2.0)
