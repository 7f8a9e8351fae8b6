"""Reverse KL, Jensen-Shannon, GKD's generalized JSD, DKD, DIST and logit standardization against float64
NumPy references.

References the NumPy code follows:
- GKD's generalized JSD: Agarwal et al., ICLR 2024, eq. 1, with the teacher as P (the mixture is
  beta*teacher + (1-beta)*student), as huggingface/trl, trl/trainer/gkd_trainer.py
  (GKDTrainer.generalized_jsd_loss) for 0 < beta < 1; TRL returns the unscaled forward/reverse KL at
  beta = 0/1 exactly, kdjax refuses those endpoints.
- DKD: Zhao et al., CVPR 2022; megvii-research/mdistiller, mdistiller/distillers/DKD.py (dkd_loss).
  Defaults in mdistiller/engine/cfg.py: ALPHA=1.0, BETA=8.0, T=4.0 (WARMUP=20 is applied by the caller).
- DIST: Huang et al., NeurIPS 2022; hunto/image_classification_sota, lib/models/losses/dist_kd.py
  (Pearson = cosine of mean-centred vectors, eps=1e-8 added to the product of the norms; inter over
  rows, intra over columns of softmax(z); defaults beta=gamma=1). The temperature variant used here,
  softmax(z/tau) with tau² on both terms (tau=1 by default), is the authors' later one, e.g.
  huawei-noah/Efficient-Computing, Distillation/VanillaKD/losses/dist.py.
- Logit standardization: Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD,
  normalize(): (z - mean) / (1e-7 + z.std()), and torch's std is the unbiased one (ddof=1).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jax.test_util import check_grads

from kdjax.losses import (dist_loss, dkd_loss, generalized_js_divergence, js_divergence, kl_divergence,
                          reverse_kl_divergence, standardize_logits)

from numeric import numerical_grad

# Most checks call jitted wrappers: an eager call compiles every primitive anew for each
# shape, which made this file several times slower. Hyperparameters are traced, so a new
# value costs no compilation. test_eager_calls_agree_with_jit covers the eager path, and the
# bad-temperature tests call the functions directly (check_temperature only sees concrete
# numbers).
rkl = jax.jit(reverse_kl_divergence)
js = jax.jit(js_divergence)
kl = jax.jit(kl_divergence)
dkd = jax.jit(dkd_loss)
dist = jax.jit(dist_loss)
standardize = jax.jit(standardize_logits)


def student_grad(f):
  """Gradient of the batch mean w.r.t. the first argument (the student logits), jitted."""
  return jax.jit(jax.grad(lambda s, *args, **kwargs: jnp.mean(f(s, *args, **kwargs))))


def teacher_grad(f):
  return jax.jit(jax.grad(lambda s, t, *args, **kwargs: jnp.sum(f(s, t, *args, **kwargs)), argnums=1))


grad_rkl, grad_js = student_grad(reverse_kl_divergence), student_grad(js_divergence)
grad_dkd, grad_dist = student_grad(dkd_loss), student_grad(dist_loss)

temperatures = st.floats(0.5, 10.0)


# Few distinct shapes: every new shape costs JAX compilations, and the values are what vary.
@st.composite
def logit_pairs(draw, batch_sizes=(1, 5), class_counts=(2, 3, 10), bound=10.0):
  b, c = draw(st.sampled_from(batch_sizes)), draw(st.sampled_from(class_counts))
  elements = st.floats(-bound, bound, width=32)
  s = draw(hnp.arrays(np.float32, (b, c), elements=elements))
  t = draw(hnp.arrays(np.float32, (b, c), elements=elements))
  return s, t


@st.composite
def labelled_logit_pairs(draw):
  s, t = draw(logit_pairs(class_counts=(3, 10)))
  y = np.asarray(draw(st.lists(st.integers(0, s.shape[1] - 1), min_size=len(s), max_size=len(s))))
  return s, t, y


def random_pair(seed, shape, scale=3.0):
  """Student and partly correlated teacher logits, float32."""
  rng = np.random.default_rng(seed)
  s = rng.normal(size=shape) * scale
  t = 0.6 * s + rng.normal(size=shape) * scale
  return s.astype(np.float32), t.astype(np.float32)


# ---------------------------------------------------------------- float64 references


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_softmax(x):
  return np.exp(np_log_softmax(x))


def np_reverse_kl(s, t, T):
  ls, lt = np_log_softmax(np.float64(s) / T), np_log_softmax(np.float64(t) / T)
  return (np.exp(ls) * (ls - lt)).sum(-1)


def np_js(s, t, T):
  ls, lt = np_log_softmax(np.float64(s) / T), np_log_softmax(np.float64(t) / T)
  lm = np.logaddexp(ls, lt) - np.log(2.0)
  return 0.5 * (np.exp(lt) * (lt - lm)).sum(-1) + 0.5 * (np.exp(ls) * (ls - lm)).sum(-1)


def np_kl_terms(p, log_p, log_q):
  """Σ p (log p - log q), with 0·log 0 = 0 as in torch's F.kl_div."""
  return np.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def np_dkd_parts(s, t, y, T, mdistiller_mask=False):
  """(TCKD, NCKD) per example, without the T² factor.

  mdistiller_mask=True reproduces mdistiller's trick (subtract 1000 from the target logit
  before the softmax); otherwise the target column is dropped exactly."""
  s, t = np.float64(s) / T, np.float64(t) / T
  B, C = s.shape
  gt = np.zeros((B, C), bool)
  gt[np.arange(B), y] = True
  p_s, p_t = np_softmax(s), np_softmax(t)
  # Binary [target, sum of the others], summed like mdistiller's cat_mask.
  b_s = np.stack([p_s[gt], np.where(gt, 0.0, p_s).sum(-1)], -1)
  b_t = np.stack([p_t[gt], np.where(gt, 0.0, p_t).sum(-1)], -1)
  with np.errstate(divide="ignore"):
    tckd = np_kl_terms(b_t, np.log(b_t), np.log(b_s))
  if mdistiller_mask:
    lq_s, lq_t = np_log_softmax(s - 1000.0 * gt), np_log_softmax(t - 1000.0 * gt)
  else:
    lq_s = np_log_softmax(s[~gt].reshape(B, C - 1))
    lq_t = np_log_softmax(t[~gt].reshape(B, C - 1))
  nckd = np_kl_terms(np.exp(lq_t), lq_t, lq_s)
  return tckd, nckd


def np_dkd(s, t, y, alpha=1.0, beta=8.0, T=4.0):
  tckd, nckd = np_dkd_parts(s, t, y, T)
  return T * T * (alpha * tckd + beta * nckd)


def np_pearson_rows(a, b, eps=1e-8):
  a = a - a.mean(1, keepdims=True)
  b = b - b.mean(1, keepdims=True)
  return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def np_dist_parts(s, t, T):
  """(inter, intra) without the T² factor."""
  y_s, y_t = np_softmax(np.float64(s) / T), np_softmax(np.float64(t) / T)
  return 1.0 - np_pearson_rows(y_s, y_t).mean(), 1.0 - np_pearson_rows(y_s.T, y_t.T).mean()


def np_dist(s, t, beta=1.0, gamma=1.0, T=1.0):
  inter, intra = np_dist_parts(s, t, T)
  return T * T * (beta * inter + gamma * intra)


def np_standardize(z, eps=1e-7):
  z = np.float64(z)
  return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + eps)


# ---------------------------------------------------------------- 1. values against float64


SHAPES = [(1, 3), (5, 10), (16, 100)]
TEMPS = [0.5, 1.0, 4.0, 20.0]


@pytest.mark.parametrize("shape", SHAPES)
def test_reverse_kl_and_js_match_float64(shape):
  s, t = random_pair(10, shape)
  for T in TEMPS:
    got_rkl, got_js = np.asarray(rkl(s, t, T)), np.asarray(js(s, t, T))
    assert got_rkl.shape == got_js.shape == shape[:1]
    assert got_rkl.dtype == got_js.dtype == np.float32
    np.testing.assert_allclose(got_rkl, np_reverse_kl(s, t, T), rtol=1e-3, atol=1e-5, err_msg=f"T={T}")
    np.testing.assert_allclose(got_js, np_js(s, t, T), rtol=1e-3, atol=1e-5, err_msg=f"T={T}")


def test_default_temperature_of_reverse_kl_and_js_is_one():
  s, t = random_pair(11, (5, 10))
  np.testing.assert_allclose(rkl(s, t), np_reverse_kl(s, t, 1.0), rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(js(s, t), np_js(s, t, 1.0), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_dkd_matches_float64_mdistiller(shape):
  s, t = random_pair(12, shape)
  y = np.random.default_rng(13).integers(0, shape[1], shape[0])
  for T in TEMPS:
    # Sanity of the reference itself: mdistiller's "-1000 on the target logit" and exact
    # exclusion of the target class agree on these inputs.
    for exact, masked in zip(np_dkd_parts(s, t, y, T), np_dkd_parts(s, t, y, T, mdistiller_mask=True)):
      np.testing.assert_allclose(exact, masked, rtol=1e-10, atol=1e-12)
    for alpha, beta in [(1.0, 8.0), (1.0, 1.0), (0.5, 2.0)]:
      got = np.asarray(dkd(s, t, y, alpha=alpha, beta=beta, temperature=T))
      assert got.shape == shape[:1] and got.dtype == np.float32
      np.testing.assert_allclose(got, np_dkd(s, t, y, alpha, beta, T), rtol=1e-3, atol=1e-5 * T * T,
                                 err_msg=f"T={T} alpha={alpha} beta={beta}")


def test_dkd_defaults_are_mdistillers():
  """mdistiller/engine/cfg.py: DKD.ALPHA=1.0, DKD.BETA=8.0, DKD.T=4.0."""
  s, t = random_pair(14, (5, 10))
  y = np.arange(5)
  np.testing.assert_allclose(dkd(s, t, y), np_dkd(s, t, y, 1.0, 8.0, 4.0), rtol=1e-3, atol=1e-5)


def test_dkd_is_linear_in_alpha_and_beta():
  s, t = random_pair(15, (5, 10))
  y = np.arange(5)
  tckd = dkd(s, t, y, alpha=1.0, beta=0.0, temperature=2.0)
  nckd = dkd(s, t, y, alpha=0.0, beta=1.0, temperature=2.0)
  np.testing.assert_allclose(dkd(s, t, y, alpha=0.3, beta=5.0, temperature=2.0), 0.3 * tckd + 5.0 * nckd,
                             rtol=1e-5, atol=1e-6)
  ref_tckd, ref_nckd = np_dkd_parts(s, t, y, 2.0)
  np.testing.assert_allclose(tckd, 4.0 * ref_tckd, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(nckd, 4.0 * ref_nckd, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("who", ["confident_student", "confident_teacher", "confidently_wrong_student"])
def test_dkd_is_accurate_for_confident_predictions(who):
  """T=1 and a target logit 20 above the rest: p[target] rounds to 1.0 in float32, yet the
  non-target mass 1 - p[target] ~ 6e-9 is TCKD's second binary entry. mdistiller sums the
  non-target probabilities (cat_mask) and takes plain logs, which stays finite and accurate
  in float32; forming 1 - p[target] in float32 gives log(0) = -inf for a confident student
  and 0·log(0) = nan for a confident teacher (the common case: a trained teacher is confident
  on the true label). A target probability of ~1e-11 (confidently wrong student) is exact in
  float32 too, so its log must not be biased by an additive epsilon."""
  moderate = np.array([[2.0, 0.0, 1.0, -1.0], [0.0, 1.0, 3.0, 0.5]], np.float32)
  confident = np.array([[20.0, 0.0, 0.0, 0.0], [0.0, -5.0, 25.0, 1.0]], np.float32)
  wrong = np.array([[-25.0, 0.0, 0.0, 0.0], [0.0, -5.0, -22.0, 1.0]], np.float32)
  s, t = {"confident_student": (confident, moderate), "confident_teacher": (moderate, confident),
          "confidently_wrong_student": (wrong, moderate)}[who]
  y = np.array([0, 2])
  got = np.asarray(dkd(s, t, y, alpha=1.0, beta=8.0, temperature=1.0))
  assert np.isfinite(got).all(), got
  np.testing.assert_allclose(got, np_dkd(s, t, y, 1.0, 8.0, 1.0), rtol=1e-3)
  grad = np.asarray(grad_dkd(s, t, y, alpha=1.0, beta=8.0, temperature=1.0))
  assert np.isfinite(grad).all(), grad
  np.testing.assert_allclose(grad, numerical_grad(lambda x: np_dkd(x, t, y, 1.0, 8.0, 1.0).mean(), s),
                             rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3), (5, 10), (16, 100)])
def test_dist_matches_float64_reference(shape):
  s, t = random_pair(16, shape)
  for T in TEMPS:
    got = dist(s, t, beta=1.0, gamma=1.0, temperature=T)
    assert got.shape == () and got.dtype == np.float32
    tol = dict(rtol=1e-3, atol=1e-5 * T * T, err_msg=f"T={T}")
    np.testing.assert_allclose(got, np_dist(s, t, 1.0, 1.0, T), **tol)
    inter, intra = np_dist_parts(s, t, T)
    np.testing.assert_allclose(dist(s, t, beta=1.0, gamma=0.0, temperature=T), T * T * inter, **tol)
    np.testing.assert_allclose(dist(s, t, beta=0.0, gamma=1.0, temperature=T), T * T * intra, **tol)
    np.testing.assert_allclose(dist(s, t, beta=2.0, gamma=0.5, temperature=T), np_dist(s, t, 2.0, 0.5, T), **tol)


def test_dist_defaults_are_beta_gamma_tau_one():
  s, t = random_pair(17, (5, 10))
  np.testing.assert_allclose(dist(s, t), np_dist(s, t, 1.0, 1.0, 1.0), rtol=1e-3, atol=1e-5)


def test_dist_inter_term_on_a_hand_checked_two_class_batch():
  """Two classes, so each row of y is (p, 1-p) and its centred vector is ±(p - ½)(1, -1): the
  row correlation is the sign of (p_s - ½)(p_t - ½)."""
  s = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], np.float32)
  t = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], np.float32)
  # Rows 0 and 2 agree on the more likely class, row 1 does not: mean correlation 1/3.
  np.testing.assert_allclose(dist(s, t, beta=1.0, gamma=0.0), 1.0 - 1.0 / 3.0, rtol=1e-5)
  np.testing.assert_allclose(dist(s, t, beta=0.0, gamma=1.0), np_dist_parts(s, t, 1.0)[1], rtol=1e-4)


def test_dist_with_a_batch_of_one():
  """B = 1: every column is a single value, its centred vector is 0 and the reference's
  Pearson is 0 / (0 + eps) = 0, so intra = 1, a constant. torch's norm has a zero gradient
  at 0, so in the reference the student gradient is that of the inter term alone."""
  s, t = random_pair(18, (1, 10))
  for T in (1.0, 4.0):
    got = dist(s, t, beta=1.0, gamma=2.0, temperature=T)
    np.testing.assert_allclose(got, np_dist(s, t, 1.0, 2.0, T), rtol=1e-4)
    grad = np.asarray(grad_dist(s, t, beta=1.0, gamma=2.0, temperature=T))
    np.testing.assert_allclose(grad, numerical_grad(lambda x: np_dist(x, t, 1.0, 2.0, T), s), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 2), (5, 10), (16, 100)])
def test_standardize_matches_float64_with_unbiased_std(shape):
  rng = np.random.default_rng(18)
  z = (rng.normal(size=shape) * 4 + 2).astype(np.float32)
  got = np.asarray(standardize(z))
  assert got.shape == shape and got.dtype == np.float32
  np.testing.assert_allclose(got, np_standardize(z), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(standardize(z, eps=0.5), np_standardize(z, eps=0.5), rtol=1e-4, atol=1e-5)


def test_standardize_uses_ddof_1_like_torch_std():
  """torch.Tensor.std is unbiased: for z = (0, 2) std = √2, so the output is ±1/√2 (not ±1)."""
  got = standardize(np.array([[0.0, 2.0], [5.0, 9.0]], np.float32))
  np.testing.assert_allclose(got, [[-1 / math.sqrt(2), 1 / math.sqrt(2)]] * 2, rtol=1e-5)


# ---------------------------------------------------------------- 2. gradients w.r.t. the student


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
def test_gradients_of_reverse_kl_and_js_match_float64(T):
  s, t = random_pair(20, (5, 10))
  for name, grad_f, ref in (("reverse_kl", grad_rkl, np_reverse_kl), ("js", grad_js, np_js)):
    expected = numerical_grad(lambda x: ref(x, t, T).mean(), s)
    np.testing.assert_allclose(grad_f(s, t, T), expected, rtol=1e-3, atol=1e-5, err_msg=name)


def test_reverse_kl_gradient_matches_analytic_form():
  """d/ds Σ p_s (log p_s - log p_t) = p_s ⊙ (r - Σ p_s r) / T with r = log p_s - log p_t."""
  s, t = random_pair(21, (5, 10))
  T = 2.0
  ls, lt = np_log_softmax(np.float64(s) / T), np_log_softmax(np.float64(t) / T)
  p, r = np.exp(ls), ls - lt
  ref = p * (r - (p * r).sum(-1, keepdims=True)) / T / len(s)
  np.testing.assert_allclose(grad_rkl(s, t, T), ref, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
def test_dkd_gradient_matches_float64(T):
  s, t = random_pair(22, (5, 10))
  y = np.array([0, 3, 9, 3, 5])
  for alpha, beta in [(1.0, 8.0), (2.0, 0.5)]:
    expected = numerical_grad(lambda x: np_dkd(x, t, y, alpha, beta, T).mean(), s)
    np.testing.assert_allclose(grad_dkd(s, t, y, alpha=alpha, beta=beta, temperature=T), expected,
                               rtol=1e-3, atol=1e-5, err_msg=f"alpha={alpha} beta={beta}")


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_gradient_matches_float64(T):
  s, t = random_pair(23, (5, 10))
  expected = numerical_grad(lambda x: np_dist(x, t, 1.0, 2.0, T), s)
  np.testing.assert_allclose(grad_dist(s, t, beta=1.0, gamma=2.0, temperature=T), expected, rtol=1e-3, atol=1e-5)


def test_standardize_gradient_matches_float64():
  rng = np.random.default_rng(24)
  z = (rng.normal(size=(5, 10)) * 2).astype(np.float32)
  w = rng.normal(size=(5, 10))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(standardize_logits(x) * w.astype(np.float32))))(z)
  expected = numerical_grad(lambda x: (np_standardize(x) * w).sum(), z)
  np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- 3. defining properties


@settings(max_examples=20, deadline=None)
@given(logit_pairs(), temperatures)
def test_reverse_kl_and_js_vanish_at_equality_and_are_non_negative(pair, T):
  s, t = pair
  for name, f in (("reverse_kl", rkl), ("js", js)):
    np.testing.assert_allclose(f(s, s, T), 0.0, atol=1e-6, err_msg=name)
    # A per-row shift leaves the softmax unchanged.
    np.testing.assert_allclose(f(s + 3.0, s, T), 0.0, atol=2e-5, err_msg=name)
    assert (np.asarray(f(s, t, T)) >= 0).all(), name


@settings(max_examples=20, deadline=None)
@given(logit_pairs(), temperatures)
def test_reverse_kl_is_kl_with_roles_swapped(pair, T):
  s, t = pair
  np.testing.assert_allclose(rkl(s, t, T), kl(t, s, T), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(rkl(s, t, T), np_reverse_kl(s, t, T), rtol=1e-3, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(logit_pairs(), temperatures)
def test_js_is_symmetric_and_bounded_by_log_2(pair, T):
  s, t = pair
  got = np.asarray(js(s, t, T))
  np.testing.assert_allclose(got, js(t, s, T), rtol=1e-5, atol=1e-6)
  assert (got <= math.log(2.0) + 1e-6).all()
  np.testing.assert_allclose(got, np_js(s, t, T), rtol=1e-3, atol=1e-4)


def test_js_and_reverse_kl_are_stable_for_huge_logit_gaps():
  s = np.array([[1000.0, -1000.0, 0.0]], np.float32)
  t = np.array([[-1000.0, 1000.0, 0.0]], np.float32)
  # Disjoint supports: JS = log 2 exactly, reverse KL = 2000 (like the forward KL).
  got_js, got_rkl = js(s, t, 1.0), rkl(s, t, 1.0)
  assert np.isfinite(got_js).all() and float(got_js[0]) == pytest.approx(math.log(2.0), rel=1e-5)
  assert np.isfinite(got_rkl).all() and float(got_rkl[0]) == pytest.approx(2000.0, rel=1e-4)
  for name, grad_f in (("reverse_kl", grad_rkl), ("js", grad_js)):
    assert np.isfinite(grad_f(s, t, 1.0)).all(), name


@settings(max_examples=20, deadline=None)
@given(labelled_logit_pairs(), temperatures)
def test_dkd_vanishes_at_equality_and_is_non_negative(data, T):
  s, t, y = data
  np.testing.assert_allclose(dkd(s, s, y, alpha=1.0, beta=8.0, temperature=T), 0.0, atol=1e-5)
  np.testing.assert_allclose(dkd(s + 3.0, s, y, alpha=1.0, beta=8.0, temperature=T), 0.0, atol=2e-5 * 9 * T * T)
  assert (np.asarray(dkd(s, t, y, alpha=1.0, beta=8.0, temperature=T)) >= -1e-5 * T * T).all()


@settings(max_examples=20, deadline=None)
@given(labelled_logit_pairs(), temperatures)
def test_dkd_decomposes_classical_kd(data, T):
  """Zhao et al. 2022, eq. (1)-(3): KL(p_t || p_s) = TCKD + (1 - p_t[target]) · NCKD."""
  s, t, y = data
  tckd = np.asarray(dkd(s, t, y, alpha=1.0, beta=0.0, temperature=T)) / T**2
  nckd = np.asarray(dkd(s, t, y, alpha=0.0, beta=1.0, temperature=T)) / T**2
  p_t_target = np_softmax(np.float64(t) / T)[np.arange(len(y)), y]
  np.testing.assert_allclose(tckd + (1.0 - p_t_target) * nckd, kl(s, t, T), rtol=1e-3, atol=1e-4)
  ref_tckd, ref_nckd = np_dkd_parts(s, t, y, T)
  np.testing.assert_allclose(tckd, ref_tckd, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(nckd, ref_nckd, rtol=1e-3, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([3, 5]), st.sampled_from([3, 10]), st.floats(1.0, 5.0), temperatures)
def test_dist_vanishes_at_equality_and_ignores_per_row_shifts(seed, B, C, scale, T):
  # Well-spread random logits: Pearson correlations of nearly constant vectors are
  # ill-conditioned in float32 (and near the eps=1e-8), which is not what this checks;
  # nor are 2-element vectors, whose correlation is always exactly +-1.
  s, t = random_pair(seed, (B, C), scale)
  ref = np_dist(s, t, 1.0, 1.0, T)
  np.testing.assert_allclose(dist(s, t, temperature=T), ref, rtol=1e-3, atol=1e-4 * T * T)
  # At s == t the loss is 0 up to the eps=1e-8 in the Pearson denominator.
  np.testing.assert_allclose(dist(s, s, temperature=T), np_dist(s, s, 1.0, 1.0, T), atol=1e-4 * T * T)
  shifts = np.random.default_rng(seed + 1).uniform(-5, 5, size=(2, B, 1)).astype(np.float32)
  np.testing.assert_allclose(dist(s + shifts[0], t + shifts[1], temperature=T), ref, rtol=1e-3, atol=1e-4 * T * T)


def test_dist_is_zero_for_identical_well_spread_predictions():
  s, _ = random_pair(31, (5, 10))
  assert abs(float(dist(s, s, beta=1.0, gamma=1.0, temperature=1.0))) < 1e-5


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.sampled_from([1, 5]), st.sampled_from([2, 10])),
                  elements=st.floats(-30, 30, width=32)),
       st.floats(0.5, 10.0), st.floats(-20.0, 20.0))
def test_standardize_gives_zero_mean_unit_unbiased_std_and_is_affine_invariant(z, a, b):
  assume((z.std(-1) > 0.1).all())  # (near-)constant rows have no scale to divide by
  out = np.asarray(standardize(z), np.float64)
  np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(out.std(-1, ddof=1), 1.0, rtol=1e-4)
  np.testing.assert_allclose(out, np_standardize(z), rtol=1e-3, atol=1e-4)
  scaled = (np.float32(a) * z + np.float32(b)).astype(np.float32)
  np.testing.assert_allclose(standardize(scaled), out, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(standardize(-z), -out, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- 4. no gradient to the teacher


def test_no_gradient_reaches_the_teacher_logits():
  s, t = random_pair(40, (5, 10))
  y = np.array([1, 0, 9, 4, 4])
  for name, g in (("reverse_kl", teacher_grad(reverse_kl_divergence)(s, t, 2.0)),
                  ("js", teacher_grad(js_divergence)(s, t, 2.0)),
                  ("dkd", teacher_grad(dkd_loss)(s, t, y, alpha=1.0, beta=8.0, temperature=4.0)),
                  ("dist", teacher_grad(dist_loss)(s, t, beta=1.0, gamma=1.0, temperature=2.0))):
    np.testing.assert_array_equal(g, 0.0, err_msg=name)


# ---------------------------------------------------------------- 5. bf16 in, float32 out


def test_float32_math_for_bfloat16_inputs():
  s, t = random_pair(50, (5, 10), scale=5.0)
  sb, tb = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
  s32, t32 = sb.astype(jnp.float32), tb.astype(jnp.float32)
  y = np.arange(5)
  cases = (("reverse_kl", rkl, grad_rkl, (2.0,), {}),
           ("js", js, grad_js, (2.0,), {}),
           ("dkd", dkd, grad_dkd, (y,), dict(alpha=1.0, beta=8.0, temperature=4.0)),
           ("dist", dist, grad_dist, (), dict(beta=1.0, gamma=1.0, temperature=2.0)))
  for name, f, grad_f, args, kwargs in cases:
    out = f(sb, tb, *args, **kwargs)
    assert out.dtype == jnp.float32, name
    np.testing.assert_allclose(out, f(s32, t32, *args, **kwargs), rtol=1e-6, atol=1e-7, err_msg=name)
    assert grad_f(sb, tb, *args, **kwargs).dtype == jnp.bfloat16, name
  out = standardize(sb)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, standardize(s32), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- 6. eager calls, bad temperatures


def test_eager_calls_agree_with_jit():
  s, t = random_pair(51, (5, 10))
  y = np.array([1, 0, 9, 4, 4])
  for name, eager, jitted in (
      ("reverse_kl", reverse_kl_divergence(s, t, 2.0), rkl(s, t, 2.0)),
      ("js", js_divergence(s, t, 2.0), js(s, t, 2.0)),
      ("dkd", dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
       dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0)),
      ("dist", dist_loss(s, t, beta=1.0, gamma=1.0, temperature=2.0), dist(s, t, beta=1.0, gamma=1.0, temperature=2.0)),
      ("standardize", standardize_logits(s), standardize(s))):
    assert eager.dtype == jnp.float32, name
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(T):
  x = np.zeros((2, 3), np.float32)
  y = np.zeros(2, int)
  with pytest.raises(ValueError, match="temperature"):
    reverse_kl_divergence(x, x, T)
  with pytest.raises(ValueError, match="temperature"):
    js_divergence(x, x, T)
  with pytest.raises(ValueError, match="temperature"):
    dkd_loss(x, x, y, temperature=T)
  with pytest.raises(ValueError, match="temperature"):
    dist_loss(x, x, temperature=T)


# ---------------------------------------------------------------- GKD's generalized JSD


def np_gjsd(s, t, T, beta):
  """JSD(β)(p_t ‖ p_s) = β KL(p_t ‖ m) + (1 − β) KL(p_s ‖ m), m = β p_t + (1 − β) p_s, in float64:
  the GKD paper's eq. 1 with P the teacher, as TRL's GKDTrainer.generalized_jsd_loss for 0 < β < 1."""
  ls, lt = np_log_softmax(np.float64(s) / T), np_log_softmax(np.float64(t) / T)
  p_s, p_t = np.exp(ls), np.exp(lt)
  lm = np.log(beta * p_t + (1.0 - beta) * p_s)
  return beta * np_kl_terms(p_t, lt, lm) + (1.0 - beta) * np_kl_terms(p_s, ls, lm)


gjsd = jax.jit(generalized_js_divergence)
BETAS = [0.1, 0.5, 0.9]


@pytest.mark.parametrize("shape", SHAPES)
def test_generalized_js_matches_float64(shape):
  s, t = random_pair(30, shape)
  for T in TEMPS:
    for beta in BETAS:
      got = np.asarray(gjsd(s, t, T, beta))
      assert got.shape == shape[:1] and got.dtype == np.float32
      np.testing.assert_allclose(got, np_gjsd(s, t, T, beta), rtol=1e-3, atol=1e-5, err_msg=f"T={T} beta={beta}")


def test_generalized_js_at_half_skew_is_js():
  for seed, shape in enumerate(SHAPES):
    s, t = random_pair(31 + seed, shape)
    for T in TEMPS:
      np.testing.assert_allclose(gjsd(s, t, T, 0.5), js(s, t, T), rtol=1e-5, atol=1e-7, err_msg=f"T={T}")
  np.testing.assert_allclose(generalized_js_divergence(s, t), js_divergence(s, t), rtol=1e-5, atol=1e-7)  # defaults


@settings(max_examples=20, deadline=None)
@given(logit_pairs(), temperatures, st.floats(0.01, 0.99))
def test_generalized_js_vanishes_at_equality_is_non_negative_and_bounded(pair, T, beta):
  s, t = pair
  np.testing.assert_allclose(gjsd(s, s, T, beta), 0.0, atol=1e-6)
  np.testing.assert_allclose(gjsd(s + 3.0, s, T, beta), 0.0, atol=2e-5)  # a per-row shift
  got = np.asarray(gjsd(s, t, T, beta))
  assert (got >= 0).all()
  # JSD(β) is the mutual information of a β-coin and a draw from the mixture: at most H(β).
  assert (got <= -beta * math.log(beta) - (1 - beta) * math.log1p(-beta) + 1e-6).all()
  np.testing.assert_allclose(got, np_gjsd(s, t, T, beta), rtol=1e-3, atol=1e-4)


def test_generalized_js_tends_to_scaled_forward_and_reverse_kl_at_the_ends():
  s, t = random_pair(32, (5, 10), scale=1.0)
  for T in (1.0, 4.0):
    eps = 1e-3
    np.testing.assert_allclose(gjsd(s, t, T, eps) / eps, kl(s, t, T), rtol=2e-2)  # β → 0: β·KL(p_t ‖ p_s)
    np.testing.assert_allclose(gjsd(s, t, T, 1 - eps) / eps, rkl(s, t, T), rtol=2e-2)  # β → 1: (1−β)·KL(p_s ‖ p_t)


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5, 1.5])
def test_generalized_js_rejects_a_skew_outside_the_open_unit_interval(beta):
  s, t = random_pair(33, (2, 3))
  with pytest.raises(ValueError, match="strictly between 0 and 1"):
    generalized_js_divergence(s, t, 1.0, beta)
  from kdjax.methods import make_method
  with pytest.raises(ValueError, match="strictly between 0 and 1"):
    make_method("gkd", beta=beta)


@pytest.mark.parametrize("beta", BETAS)
def test_generalized_js_gradients(beta):
  rng = np.random.default_rng(34)
  s, t = (rng.normal(size=(3, 5)) * 2).astype(np.float32), (rng.normal(size=(3, 5)) * 2).astype(np.float32)
  check_grads(lambda x: generalized_js_divergence(x, t, 2.0, beta), (s,), order=2, modes=["rev"],
              atol=1e-2, rtol=1e-2)
  grad = student_grad(generalized_js_divergence)(s, t, 2.0, beta)
  expected = numerical_grad(lambda x: np_gjsd(x, t, 2.0, beta).mean(), s)
  np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)
  assert float(jnp.abs(teacher_grad(generalized_js_divergence)(s, t, 2.0, beta)).max()) == 0.0


def test_generalized_js_is_stable_for_huge_logit_gaps_and_computes_in_float32():
  s = np.array([[1000.0, -1000.0, 0.0]], np.float32)
  t = np.array([[-1000.0, 1000.0, 0.0]], np.float32)
  # Disjoint supports: the mixture separates them, JSD(β) = H(β).
  got = gjsd(s, t, 1.0, 0.2)
  assert float(got[0]) == pytest.approx(-0.2 * math.log(0.2) - 0.8 * math.log(0.8), rel=1e-5)
  assert np.isfinite(student_grad(generalized_js_divergence)(s, t, 1.0, 0.2)).all()
  a, b = random_pair(35, (4, 10))
  low = generalized_js_divergence(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16), 2.0, 0.3)
  assert low.dtype == jnp.float32


def test_gkd_method_is_ce_plus_t_squared_generalized_js():
  s, t = random_pair(36, (6, 10))
  y = np.arange(6) % 10
  from kdjax.methods import make_method
  method = make_method("gkd", alpha=0.3, temperature=3.0, beta=0.8)
  loss_B, terms = method(s, {}, (t, {}), {"label": y, "step": 0}, {})
  ce = -np_log_softmax(np.float64(s))[np.arange(6), y]
  np.testing.assert_allclose(terms["gjsd"], np_gjsd(s, t, 3.0, 0.8), rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(loss_B, 0.3 * ce + 0.7 * 9.0 * np_gjsd(s, t, 3.0, 0.8), rtol=1e-3, atol=1e-5)
  half = make_method("gkd", alpha=0.3, temperature=3.0, beta=0.5)(s, {}, (t, {}), {"label": y, "step": 0}, {})[0]
  np.testing.assert_allclose(half, make_method("js_kd", alpha=0.3, temperature=3.0)(
      s, {}, (t, {}), {"label": y, "step": 0}, {})[0], rtol=1e-5)
