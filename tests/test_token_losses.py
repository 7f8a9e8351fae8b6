"""Token-level LM distillation losses (kdjax.losses.token) against float64 NumPy references."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numeric import numerical_grad

from kdjax.losses import (
    DIVERGENCES,
    check_token_shapes,
    masked_sequence_mean,
    teacher_topk,
    token_cross_entropy,
    token_divergence,
    token_kd_loss,
    topk_token_divergence,
    topk_token_kd_loss,
)

B, L, V = 2, 5, 11
BETA = 0.3


def _data(seed=0):
  rng = np.random.default_rng(seed)
  s = rng.normal(size=(B, L, V)).astype(np.float32)
  t = (2.0 * rng.normal(size=(B, L, V))).astype(np.float32)
  mask = (rng.random((B, L)) < 0.6).astype(np.float32)
  mask[0, :2] = 1.0
  mask[1] = 0.0  # a fully masked sequence
  y = rng.integers(0, V, (B, L)).astype(np.int32)
  return s, t, mask, y


# --- float64 references, from the formulas --------------------------------------------------


def np_log_softmax(x):
  x = np.float64(x)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_div_from_probs(pt, ps, div, beta=BETA):
  if div == "forward_kl":
    return (pt * (np.log(pt) - np.log(ps))).sum(-1)
  if div == "reverse_kl":
    return (ps * (np.log(ps) - np.log(pt))).sum(-1)
  if div == "jsd":
    m = beta * pt + (1 - beta) * ps
    return beta * (pt * np.log(pt / m)).sum(-1) + (1 - beta) * (ps * np.log(ps / m)).sum(-1)
  assert div == "tv"
  return 0.5 * np.abs(pt - ps).sum(-1)


def np_token_div(s, t, T, div, beta=BETA):
  pt, ps = np.exp(np_log_softmax(np.float64(t) / T)), np.exp(np_log_softmax(np.float64(s) / T))
  return np_div_from_probs(pt, ps, div, beta)


def np_masked_mean(d, mask):
  mask = np.float64(mask)
  return (mask * d).sum(-1) / np.maximum(mask.sum(-1), 1.0)


def np_kd_loss(s, t, mask, T, div, beta=BETA):
  return np_masked_mean(np_token_div(s, t, T, div, beta), mask)


def np_ce(s, y, mask):
  lp = np_log_softmax(s)
  return np_masked_mean(-np.take_along_axis(lp, y[..., None].astype(np.int64), -1)[..., 0], mask)


def np_topk_token_div(s, t, k, T, div, beta=BETA):
  """Buckets: the teacher's k most likely tokens and one tail holding the rest, on both sides."""
  pt, ps = np.exp(np_log_softmax(np.float64(t) / T)), np.exp(np_log_softmax(np.float64(s) / T))
  order = np.argsort(-pt, axis=-1)[..., :k]
  pt_k, ps_k = np.take_along_axis(pt, order, -1), np.take_along_axis(ps, order, -1)
  pt_b = np.concatenate([pt_k, 1 - pt_k.sum(-1, keepdims=True)], -1)
  ps_b = np.concatenate([ps_k, 1 - ps_k.sum(-1, keepdims=True)], -1)
  return np_div_from_probs(pt_b, ps_b, div, beta)


def _loss_sum(fn):
  return lambda x: jnp.sum(fn(x))


# The checks call the losses through a few jitted programs, each computing all four divergences
# (one compile per temperature and k): on a CPU, compiling is most of the time, and compiling every
# operation eagerly, or one program per divergence, costs several times more.


def _value_and_grad(loss_fn, x):
  """``loss_fn(x)`` (per sequence) and the gradient of its sum w.r.t. ``x``."""

  def total(y):
    v = loss_fn(y)
    return jnp.sum(v), v

  (_, loss), g = jax.value_and_grad(total, has_aux=True)(x)
  return loss, g


@partial(jax.jit, static_argnames="T")
def kd_all(s, t, mask, T):
  """Per divergence: the per-sequence loss, its sum's gradient w.r.t. the student, the per-token divergence."""
  out = {}
  for div in DIVERGENCES:
    kw = {"divergence": div, "temperature": T, "beta": BETA}
    out[div] = (*_value_and_grad(lambda x, kw=kw: token_kd_loss(x, t, mask, **kw), s), token_divergence(s, t, **kw))
  return out


@partial(jax.jit, static_argnames="T")
def topk_all(s, lp, ids, mask, T):
  out = {}
  for div in DIVERGENCES:
    kw = {"divergence": div, "temperature": T, "beta": BETA}
    out[div] = (*_value_and_grad(lambda x, kw=kw: topk_token_kd_loss(x, lp, ids, mask, **kw), s),
                topk_token_divergence(s, lp, ids, **kw))
  return out


@jax.jit
def ce(s, y, mask):
  return _value_and_grad(lambda x: token_cross_entropy(x, y, mask), s)


topk = jax.jit(teacher_topk, static_argnames=("k", "temperature"))


# --- values and gradients against the references ----------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("div", DIVERGENCES)
def test_kd_loss_value_and_grad_match_float64(div, T):
  s, t, mask, _ = _data()
  loss, g, per_token = kd_all(s, t, mask, T)[div]
  assert loss.shape == (B,) and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_kd_loss(s, t, mask, T, div), rtol=1e-5, atol=1e-6)
  assert float(loss[1]) == 0.0  # the fully masked sequence
  assert per_token.shape == (B, L)
  np.testing.assert_allclose(per_token, np_token_div(s, t, T, div), rtol=1e-5, atol=1e-6)
  g_ref = numerical_grad(lambda x: np_kd_loss(x, t, mask, T, div).sum(), s)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(g)[mask == 0] == 0.0)


def test_forward_kl_grad_matches_the_analytic_formula():
  # d/ds KL(p_t || p_s) at temperature T = (p_s - p_t) / T, per position, divided by its sequence's count.
  s, t, mask, _ = _data(1)
  T = 2.0
  g = kd_all(s, t, mask, T)["forward_kl"][1]
  ps, pt = np.exp(np_log_softmax(s / T)), np.exp(np_log_softmax(t / T))
  count = np.maximum(mask.sum(-1), 1.0)[:, None, None]
  np.testing.assert_allclose(g, (ps - pt) / T * mask[..., None] / count, rtol=1e-5, atol=1e-7)


def test_cross_entropy_value_and_grad_match_float64():
  s, _, mask, y = _data(2)
  loss, g = ce(s, y, mask)
  assert loss.shape == (B,) and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_ce(s, y, mask), rtol=1e-6)
  assert float(loss[1]) == 0.0
  np.testing.assert_allclose(g, numerical_grad(lambda x: np_ce(x, y, mask).sum(), s), rtol=1e-4, atol=1e-6)


def test_masked_sequence_mean_accepts_bool_and_float_weights():
  v = np.arange(B * L, dtype=np.float32).reshape(B, L)
  m = np.zeros((B, L), bool)
  m[0, 1:3] = True
  np.testing.assert_allclose(masked_sequence_mean(v, m), [(1 + 2) / 2, 0.0])
  w = np.full((B, L), 0.5, np.float32)
  np.testing.assert_allclose(masked_sequence_mean(v, w), np_masked_mean(v, w), rtol=1e-6)
  v_bad = np.where(m, v, np.nan).astype(np.float32)
  np.testing.assert_allclose(masked_sequence_mean(v_bad, m), [1.5, 0.0])
  g = jax.grad(lambda x: masked_sequence_mean(x, m).sum())(v_bad)
  assert np.isfinite(g).all() and np.all(np.asarray(g)[~m] == 0)


def test_bf16_logits_give_float32_losses():
  s, t, mask, y = _data(3)

  @jax.jit
  def f(s, t):
    lp, ids = teacher_topk(t, 3)
    return token_kd_loss(s, t, mask), token_cross_entropy(s, y, mask), topk_token_kd_loss(s, lp, ids, mask), lp, ids

  out = f(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
  assert [x.dtype for x in out] == [jnp.float32] * 4 + [jnp.int32]


# --- masked positions stay out ----------------------------------------------------------------


def _poison(x, mask, values=(np.inf, -np.inf, np.nan, 1e30)):
  """``x`` with inf / NaN / huge values at the masked positions."""
  x = np.array(x, copy=True)
  bad = np.argwhere(mask == 0)
  for n, (b, l) in enumerate(bad):
    x[b, l] = values[n % len(values)]
    x[b, l, n % x.shape[-1]] = values[(n + 1) % len(values)]
  return x


@pytest.mark.parametrize("div", DIVERGENCES)
def test_masked_positions_add_nothing_even_inf_or_nan(div):
  s, t, mask, _ = _data(4)
  s_bad, t_bad = _poison(s, mask), _poison(t, mask)
  clean, g_clean, _ = kd_all(s, t, mask, 2.0)[div]
  dirty, g_dirty, _ = kd_all(s_bad, t_bad, mask, 2.0)[div]
  assert np.isfinite(dirty).all() and np.isfinite(g_dirty).all()
  np.testing.assert_array_equal(dirty, clean)
  np.testing.assert_array_equal(g_dirty, g_clean)
  # ... the same through the top-k path, with garbage log-probs and out-of-range ids there.
  lp, ids = topk(t, k=3, temperature=2.0)
  lp_bad = _poison(lp, mask)
  ids_bad = np.where((mask == 0)[..., None], np.int32(-100), np.asarray(ids))
  clean, g_clean, _ = topk_all(s, lp, ids, mask, 2.0)[div]
  dirty, g_dirty, _ = topk_all(s_bad, lp_bad, ids_bad, mask, 2.0)[div]
  assert np.isfinite(dirty).all() and np.isfinite(g_dirty).all()
  np.testing.assert_array_equal(dirty, clean)
  np.testing.assert_array_equal(g_dirty, g_clean)


def test_cross_entropy_ignores_masked_logits_and_targets():
  s, _, mask, y = _data(5)
  y_bad = np.where(mask == 0, -100, y).astype(np.int32)
  clean, g_clean = ce(s, y, mask)
  dirty, g_dirty = ce(_poison(s, mask), y_bad, mask)
  assert np.isfinite(g_dirty).all()
  np.testing.assert_array_equal(dirty, clean)
  np.testing.assert_array_equal(g_dirty, g_clean)


# --- top-k with the tail bucket ---------------------------------------------------------------


def test_teacher_topk_is_sorted_with_the_right_ids():
  _, t, _, _ = _data(6)
  for T in (1.0, 2.0):
    lp, ids = topk(t, k=4, temperature=T)
    assert lp.shape == ids.shape == (B, L, 4) and ids.dtype == jnp.int32
    np.testing.assert_array_equal(ids, np.argsort(-t, axis=-1)[..., :4])
    np.testing.assert_allclose(lp, np.take_along_axis(np_log_softmax(t / T), np.asarray(ids), -1), rtol=1e-6)
    assert np.all(np.diff(np.asarray(lp), axis=-1) <= 0)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_topk_with_k_equal_v_is_the_full_loss(div):
  s, t, mask, _ = _data(7)
  T = 2.0
  lp, ids = topk(t, k=V, temperature=T)
  full, g_full, d_full = kd_all(s, t, mask, T)[div]
  loss, g, d = topk_all(s, lp, ids, mask, T)[div]
  np.testing.assert_allclose(loss, full, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(d, d_full, rtol=1e-5, atol=1e-7)
  assert np.isfinite(g).all()
  np.testing.assert_allclose(g, g_full, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("div", DIVERGENCES)
def test_topk_matches_float64_buckets_and_is_below_the_full_divergence(div):
  s, t, mask, _ = _data(8)
  T = 2.0
  full = np.asarray(kd_all(s, t, mask, T)[div][2])
  for k in (1, 3, V - 1):
    lp, ids = topk(t, k=k, temperature=T)
    loss, g, d = topk_all(s, lp, ids, mask, T)[div]
    ref = np_topk_token_div(s, t, k, T, div)
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-6)
    # data-processing inequality: merging tokens into buckets cannot increase an f-divergence
    # (up to float32 rounding in the teacher's tail 1 - sum(top-k))
    assert np.all(np.asarray(d) <= full * (1 + 1e-5) + 1e-6), (k, d - full)
    np.testing.assert_allclose(loss, np_masked_mean(ref, mask), rtol=1e-4, atol=1e-6)
    g_ref = numerical_grad(lambda x, k=k: np_masked_mean(np_topk_token_div(x, t, k, T, div), mask).sum(), s)
    np.testing.assert_allclose(g, g_ref, rtol=1e-3, atol=1e-5)


def test_topk_stays_finite_when_the_teachers_tail_rounds_to_zero():
  s, t, mask, _ = _data(9)
  t = t.copy()
  t[..., 0] += 60.0  # p_t(token 0) = 1 to float32 precision: 1 - sum(top-k) is 0
  lp, ids = topk(t, k=3, temperature=2.0)
  assert float(jnp.max(jnp.sum(jnp.exp(lp), -1))) == 1.0
  out = topk_all(s, lp, ids, mask, 2.0)
  for div in DIVERGENCES:
    loss, g, _ = out[div]
    assert np.isfinite(loss).all() and np.isfinite(g).all(), div


def test_no_gradient_reaches_the_teacher():
  s, t, mask, _ = _data(10)

  @jax.jit
  def grads(t):
    lp, ids = teacher_topk(t, 3, temperature=2.0)
    out = []
    for div in DIVERGENCES:
      kw = {"divergence": div, "temperature": 2.0, "beta": BETA}
      out += [jax.grad(_loss_sum(lambda x, kw=kw: token_kd_loss(s, x, mask, **kw)))(t),
              jax.grad(_loss_sum(lambda x, kw=kw: topk_token_kd_loss(s, *teacher_topk(x, 3, temperature=2.0), mask, **kw)))(t),
              jax.grad(_loss_sum(lambda x, kw=kw: topk_token_kd_loss(s, x, ids, mask, **kw)))(lp)]
    return out

  for g in grads(t):
    np.testing.assert_array_equal(g, np.zeros_like(g))


# --- errors -----------------------------------------------------------------------------------


def test_shape_and_argument_errors():
  s, t, mask, y = _data(12)
  lp, ids = topk(t, k=3)
  t_other = np.zeros((B, L, V + 2), np.float32)
  with pytest.raises(ValueError, match=r"cross-tokenizer distillation is not supported") as e:
    token_kd_loss(s, t_other, mask)
  assert "V=11" in str(e.value) and "V=13" in str(e.value)
  with pytest.raises(ValueError, match=r"cross-tokenizer distillation is not supported"):
    jax.jit(lambda a, b: token_divergence(a, b))(s, t_other)  # at trace time
  with pytest.raises(ValueError, match=r"disagree on \[B, L\].*\(2, 5, 11\).*\(2, 4, 11\)"):
    token_kd_loss(s, t[:, :4], mask)
  with pytest.raises(ValueError, match=r"mask must have shape \[B, L\] = \(2, 5\).*got mask shape \(2, 4\)"):
    token_kd_loss(s, t, mask[:, :4])
  with pytest.raises(ValueError, match=r"mask must have shape .*got mask shape \(2, 5, 1\)"):
    topk_token_kd_loss(s, lp, ids, mask[..., None])
  with pytest.raises(ValueError, match=r"targets must have shape \[B, L\] = \(2, 5\).*got targets shape \(5,\)"):
    token_cross_entropy(s, y[0], mask)
  with pytest.raises(ValueError, match=r"targets must be integer"):
    token_cross_entropy(s, y.astype(np.float32), mask)
  with pytest.raises(ValueError, match=r"student logits must have shape \[B, L, V\]"):
    token_kd_loss(s[0], t[0], mask)
  for k in (0, V + 1):
    with pytest.raises(ValueError, match=rf"1 <= k <= V, got k={k} for V=11"):
      teacher_topk(t, k)
  with pytest.raises(ValueError, match=r"unknown divergence 'kl'.*forward_kl.*reverse_kl.*jsd.*tv"):
    token_kd_loss(s, t, mask, divergence="kl")
  with pytest.raises(ValueError, match=r"unknown divergence"):
    topk_token_kd_loss(s, lp, ids, mask, divergence="kl")
  with pytest.raises(ValueError, match=r"log-probs \(2, 5, 3\) and ids \(2, 5, 2\)"):
    topk_token_kd_loss(s, lp, ids[..., :2], mask)
  with pytest.raises(ValueError, match=r"\[B, L\] = \(2, 5\).*got \(2, 4, 3\)"):
    topk_token_divergence(s, lp[:, :4], ids[:, :4])
  with pytest.raises(ValueError, match=r"1 <= k <= V, got k=3 for the student's V=2"):
    topk_token_divergence(s[..., :2], lp, ids)
  for T in (0.0, -1.0):
    with pytest.raises(ValueError, match=r"temperature"):
      token_kd_loss(s, t, mask, temperature=T)
    with pytest.raises(ValueError, match=r"temperature"):
      topk_token_kd_loss(s, lp, ids, mask, temperature=T)
    with pytest.raises(ValueError, match=r"temperature"):
      teacher_topk(t, 3, temperature=T)
  for beta in (0.0, 1.0):
    with pytest.raises(ValueError, match=r"beta"):
      token_kd_loss(s, t, mask, divergence="jsd", beta=beta)
    with pytest.raises(ValueError, match=r"beta"):
      topk_token_kd_loss(s, lp, ids, mask, divergence="jsd", beta=beta)
  jax.eval_shape(lambda: token_kd_loss(s, t, mask, divergence="tv", beta=1.0))  # beta is the skew of jsd alone
  with pytest.raises(ValueError, match=r"values and mask"):
    masked_sequence_mean(np.zeros((B, L)), np.zeros((B, L + 1)))
  check_token_shapes(s, t, mask, y)
  check_token_shapes(s, None, mask)
