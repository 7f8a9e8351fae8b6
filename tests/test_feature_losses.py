"""Feature / relational distillation losses against float64 NumPy transcriptions of
RepDistiller (HobbitLong/RepDistiller, distiller_zoo/{AT,SP,RKD,PKT,CC,NST}.py).

RepDistiller is PyTorch and NCHW; kdjax is NHWC, so the references below take channels
from the last axis. Each reference keeps RepDistiller's eps conventions:
  * torch F.normalize(x) = x / max(||x||_2, 1e-12)  (AT, SP, NST, RKD angles),
  * RKD pdist: sqrt(clamp(|a|^2 + |b|^2 - 2 a.b, min=1e-12)), diagonal set to 0,
  * PKT: x / (||x|| + eps), NaN -> 0, and log((t + eps) / (s + eps)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numeric import numerical_grad

from kdjax.losses import (
    attention_map,
    attention_transfer_loss,
    correlation_congruence_loss,
    nst_loss,
    pkt_loss,
    rkd_loss,
    similarity_preserving_loss,
)

RTOL, ATOL = 1e-3, 1e-5

# The tests call jitted wrappers (one compile per shape) because eager dispatch compiles every
# primitive per shape and is ~8x slower here; the shape checks are also run un-jitted below.
at_map = jax.jit(attention_map, static_argnames="p")
at_loss = jax.jit(attention_transfer_loss, static_argnames="p")
sp_loss = jax.jit(similarity_preserving_loss)
rkd = jax.jit(rkd_loss, static_argnames=("distance_weight", "angle_weight"))
pkt = jax.jit(pkt_loss, static_argnames="eps")
cc = jax.jit(correlation_congruence_loss)
nst = jax.jit(nst_loss)


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------

def np_normalize(x, axis=-1, eps=1e-12):
  """torch.nn.functional.normalize (p=2)."""
  return x / np.maximum(np.sqrt((x * x).sum(axis, keepdims=True)), eps)


def np_at(f, p=2):
  """AT.at: F.normalize(f.pow(p).mean(1).view(B, -1)); NHWC, so the channel mean is axis -1.
  pow, not abs: odd p keeps the sign of negative activations."""
  f = np.float64(f)
  return np_normalize((f ** p).mean(-1).reshape(len(f), -1))


def np_at_loss(s, t, p=2):
  """Per example; RepDistiller's (at(s) - at(t)).pow(2).mean() is the batch mean of this."""
  return ((np_at(s, p) - np_at(t, p)) ** 2).mean(-1)


def np_sp(s, t):
  """SP.similarity_loss: G = f f^T, F.normalize over rows, sum((G_t - G_s)^2) / B^2."""
  B = len(s)

  def gram(f):
    f = np.float64(f).reshape(B, -1)
    return np_normalize(f @ f.T)

  return ((gram(t) - gram(s)) ** 2).sum() / (B * B)


def np_pdist(e, eps=1e-12):
  sq = (e * e).sum(1)
  d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, eps))
  np.fill_diagonal(d, 0.0)
  return d


def np_smooth_l1(a, b):
  """F.smooth_l1_loss, beta=1, reduction='mean'."""
  z = np.abs(a - b)
  return np.where(z < 1.0, 0.5 * z * z, z - 0.5).mean()


def np_rkd_terms(s, t):
  s, t = np.float64(s).reshape(len(s), -1), np.float64(t).reshape(len(t), -1)

  def dist(e):
    d = np_pdist(e)
    return d / d[d > 0].mean()

  def angle(e):
    u = np_normalize(e[None, :, :] - e[:, None, :])  # u[i, j] = unit(e_j - e_i); zero for j == i
    return np.einsum("ijd,ikd->ijk", u, u).reshape(-1)

  return np_smooth_l1(dist(s), dist(t)), np_smooth_l1(angle(s), angle(t))


def np_rkd(s, t, distance_weight=25.0, angle_weight=50.0):
  loss_d, loss_a = np_rkd_terms(s, t)
  return distance_weight * loss_d + angle_weight * loss_a


def np_pkt(s, t, eps=1e-7):
  """PKT.cosine_similarity_loss."""
  def probs(x):
    x = np.float64(x)
    with np.errstate(invalid="ignore"):
      x = x / (np.sqrt((x ** 2).sum(1, keepdims=True)) + eps)
    x = np.where(np.isnan(x), 0.0, x)
    m = (x @ x.T + 1.0) / 2.0
    return m / m.sum(1, keepdims=True)

  ps, pt = probs(s), probs(t)
  return (pt * np.log((pt + eps) / (ps + eps))).mean()


def np_cc(s, t):
  """CC.Correlation: delta = |f_s - f_t|; mean((delta[:-1] * delta[1:]).sum(1))."""
  d = np.abs(np.float64(s) - np.float64(t))
  return (d[:-1] * d[1:]).sum(1).mean()


def np_nst(s, t):
  """NSTLoss.nst_loss per example: [B, C, H*W] channel vectors, F.normalize(dim=2),
  poly kernel (a.b)^2 averaged over all channel pairs: k(t,t) + k(s,s) - 2 k(s,t)."""
  def channels(f):
    f = np.float64(f)
    B, H, W, C = f.shape
    return np_normalize(f.transpose(0, 3, 1, 2).reshape(B, C, H * W))

  fs, ft = channels(s), channels(t)

  def k(a, b):
    return (np.einsum("bcn,bdn->bcd", a, b) ** 2).mean((1, 2))

  return k(ft, ft) + k(fs, fs) - 2 * k(fs, ft)


def rand(rng, shape, scale=1.0, shift=0.0):
  return (shift + scale * rng.normal(size=shape)).astype(np.float32)


# ---------------------------------------------------------------------------
# 1. values
# ---------------------------------------------------------------------------

AT_SHAPES = [((2, 4, 4, 3), (2, 4, 4, 5)), ((3, 2, 5, 8), (3, 2, 5, 8)), ((1, 3, 3, 1), (1, 3, 3, 6))]


@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (3, 2, 5, 1)])
def test_attention_map_matches_reference(shape, p):
  f = rand(np.random.default_rng(10), shape)
  a = np.asarray(at_map(f, p=p))
  assert a.shape == (shape[0], shape[1] * shape[2]) and a.dtype == np.float32
  np.testing.assert_allclose(a, np_at(f, p), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, rtol=1e-5)


def test_attention_map_uses_pow_not_abs_for_odd_p():
  """RepDistiller's at() is f.pow(p): with p=3, negative activations count negatively."""
  f = rand(np.random.default_rng(11), (2, 3, 3, 4))
  a = np.asarray(at_map(f, p=3))
  np.testing.assert_allclose(a, np_at(f, 3), rtol=RTOL, atol=ATOL)
  assert (a < 0).any()
  abs_version = np_normalize((np.abs(np.float64(f)) ** 3).mean(-1).reshape(2, -1))
  assert np.abs(a - abs_version).max() > 0.1


@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("shapes", AT_SHAPES)
def test_attention_transfer_loss_matches_reference(shapes, p):
  rng = np.random.default_rng(12)
  s, t = rand(rng, shapes[0]), rand(rng, shapes[1], 2.0, 0.3)
  out = np.asarray(at_loss(s, t, p=p))
  assert out.shape == (shapes[0][0],) and out.dtype == np.float32
  np.testing.assert_allclose(out, np_at_loss(s, t, p), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shapes", [((4, 3, 3, 2), (4, 3, 3, 5)),   # different channels
                                    ((3, 2, 2, 4), (3, 4, 4, 2)),   # different H, W: flattened anyway
                                    ((5, 6), (5, 9))])              # [B, D] embeddings
def test_similarity_preserving_loss_matches_reference(shapes):
  rng = np.random.default_rng(13)
  s, t = rand(rng, shapes[0]), rand(rng, shapes[1], 1.5, 0.2)
  out = np.asarray(sp_loss(s, t))
  assert out.shape == () and out.dtype == np.float32
  np.testing.assert_allclose(out, np_sp(s, t), rtol=RTOL, atol=ATOL)


RKD_SHAPES = [((5, 4), (5, 7)), ((8, 3), (8, 3)), ((3, 6), (3, 2))]


@pytest.mark.parametrize("shapes", RKD_SHAPES)
def test_rkd_loss_matches_reference(shapes):
  rng = np.random.default_rng(14)
  s, t = rand(rng, shapes[0]), rand(rng, shapes[1], 3.0, 1.0)
  out = np.asarray(rkd(s, t))
  assert out.shape == () and out.dtype == np.float32
  np.testing.assert_allclose(out, np_rkd(s, t), rtol=RTOL, atol=ATOL)


def test_rkd_weights_select_the_distance_and_angle_terms():
  rng = np.random.default_rng(15)
  s, t = rand(rng, (6, 5)), rand(rng, (6, 3))
  loss_d, loss_a = np_rkd_terms(s, t)
  assert loss_d > 1e-3 and loss_a > 1e-3
  np.testing.assert_allclose(rkd(s, t, distance_weight=1.0, angle_weight=0.0), loss_d, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(rkd(s, t, distance_weight=0.0, angle_weight=1.0), loss_a, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(rkd(s, t, distance_weight=2.0, angle_weight=7.0), 2 * loss_d + 7 * loss_a,
                             rtol=RTOL, atol=ATOL)


def test_rkd_huber_uses_both_branches():
  """Normalized-distance gaps above 1 exercise the linear branch of smooth L1 (beta=1)."""
  s = np.array([[0.0], [0.1], [0.2], [10.0]], np.float32)
  t = np.array([[0.0], [5.0], [10.0], [10.1]], np.float32)
  d = np.abs(np_pdist(np.float64(s)) / np_pdist(np.float64(s))[np_pdist(np.float64(s)) > 0].mean()
             - np_pdist(np.float64(t)) / np_pdist(np.float64(t))[np_pdist(np.float64(t)) > 0].mean())
  assert (d > 1).any() and ((d > 0) & (d < 1)).any()
  np.testing.assert_allclose(rkd(s, t), np_rkd(s, t), rtol=RTOL, atol=ATOL)


def test_rkd_with_duplicate_rows_is_finite_and_matches_reference():
  """pdist clamps squared distances at 1e-12 and normalize() maps e_j - e_i = 0 to 0."""
  rng = np.random.default_rng(16)
  s, t = rand(rng, (5, 4)), rand(rng, (5, 4))
  s[3] = s[1]
  t[4] = t[0]
  np.testing.assert_allclose(rkd(s, t), np_rkd(s, t), rtol=RTOL, atol=ATOL)
  g = np.asarray(jax.grad(lambda x: rkd(x, t))(s))
  assert np.isfinite(g).all()


PKT_SHAPES = [((6, 5), (6, 8)), ((4, 3), (4, 3)), ((10, 2), (10, 16))]


@pytest.mark.parametrize("shapes", PKT_SHAPES)
def test_pkt_loss_matches_reference(shapes):
  rng = np.random.default_rng(17)
  s, t = rand(rng, shapes[0]), rand(rng, shapes[1], 2.0, 0.5)
  out = np.asarray(pkt(s, t))
  assert out.shape == () and out.dtype == np.float32
  np.testing.assert_allclose(out, np_pkt(s, t), rtol=RTOL, atol=ATOL)


def test_pkt_eps_enters_the_norm_and_the_log():
  """A large eps makes both places visible: x / (||x|| + eps) and log((t + eps) / (s + eps))."""
  rng = np.random.default_rng(18)
  s, t = rand(rng, (5, 4), 0.1), rand(rng, (5, 6), 0.1)
  out = pkt(s, t, eps=0.05)
  np.testing.assert_allclose(out, np_pkt(s, t, eps=0.05), rtol=RTOL, atol=ATOL)
  assert abs(np_pkt(s, t, eps=0.05) - np_pkt(s, t, eps=1e-7)) > 10 * ATOL
  # A row whose norm equals eps is scaled to length 1/2 (norm + eps), not to unit length.
  s = rand(rng, (5, 4))
  s[2] *= 1e-7 / np.linalg.norm(np.float64(s[2]))
  np.testing.assert_allclose(pkt(s, t), np_pkt(s, t), rtol=RTOL, atol=ATOL)
  unit = s.copy()
  unit[2] = s[2] / np.linalg.norm(np.float64(s[2]))
  assert abs(np_pkt(s, t) - np_pkt(unit, t)) > 10 * ATOL


def test_pkt_zero_and_non_finite_rows_normalize_to_zero():
  """A zero row stays zero (0 / (0 + eps)); a row with inf becomes NaN and is zeroed."""
  rng = np.random.default_rng(19)
  s, t = rand(rng, (5, 4)), rand(rng, (5, 3))
  s[1] = 0.0
  np.testing.assert_allclose(pkt(s, t), np_pkt(s, t), rtol=RTOL, atol=ATOL)
  s[3, 2] = np.inf
  t[0, 1] = -np.inf
  ref = np_pkt(s, t)
  assert np.isfinite(ref)
  np.testing.assert_allclose(pkt(s, t), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shapes", [((5, 4), (5, 4)), ((2, 7), (2, 7)), ((9, 3), (9, 3))])
def test_correlation_congruence_loss_matches_reference(shapes):
  rng = np.random.default_rng(20)
  s, t = rand(rng, shapes[0]), rand(rng, shapes[1], 2.0)
  out = np.asarray(cc(s, t))
  assert out.shape == () and out.dtype == np.float32
  np.testing.assert_allclose(out, np_cc(s, t), rtol=RTOL, atol=ATOL)


def test_correlation_congruence_couples_consecutive_examples_only():
  s = np.zeros((3, 2), np.float32)
  t = np.array([[1.0, 2.0], [3.0, 0.0], [0.0, 5.0]], np.float32)
  # delta rows: (1,2), (3,0), (0,5): pair sums 1*3 + 2*0 = 3 and 3*0 + 0*5 = 0, mean 1.5.
  np.testing.assert_allclose(cc(s, t), 1.5, rtol=1e-6)


NST_SHAPES = [((2, 3, 3, 4), (2, 3, 3, 6)), ((3, 2, 4, 2), (3, 2, 4, 2)), ((1, 4, 4, 5), (1, 4, 4, 1))]


@pytest.mark.parametrize("shapes", NST_SHAPES)
def test_nst_loss_matches_reference(shapes):
  rng = np.random.default_rng(21)
  s, t = rand(rng, shapes[0]), rand(rng, shapes[1], 2.0, 0.5)
  out = np.asarray(nst(s, t))
  assert out.shape == (shapes[0][0],) and out.dtype == np.float32
  np.testing.assert_allclose(out, np_nst(s, t), rtol=RTOL, atol=ATOL)


def test_nst_normalizes_each_channel_over_space_not_each_position_over_channels():
  """A channel-major reshape of NHWC (transpose first) and a plain reshape differ."""
  rng = np.random.default_rng(22)
  s, t = rand(rng, (2, 3, 2, 4)), rand(rng, (2, 3, 2, 4))
  wrong = np_nst(s.reshape(2, 4, 6).transpose(0, 2, 1).reshape(2, 3, 2, 4),
                 t.reshape(2, 4, 6).transpose(0, 2, 1).reshape(2, 3, 2, 4))
  ref = np_nst(s, t)
  assert np.abs(wrong - ref).max() > 10 * ATOL
  np.testing.assert_allclose(nst(s, t), ref, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------
# 2. gradients w.r.t. the student match float64 finite differences of the reference
# ---------------------------------------------------------------------------

def weights(rng, n):
  return rng.uniform(0.5, 1.5, size=n)


GRAD_CASES = {
    "at_p2": (lambda s, t: at_loss(s, t, p=2), lambda s, t: np_at_loss(s, t, 2),
              (2, 3, 3, 2), (2, 3, 3, 4)),
    "at_p3": (lambda s, t: at_loss(s, t, p=3), lambda s, t: np_at_loss(s, t, 3),
              (2, 3, 3, 2), (2, 3, 3, 4)),
    "sp": (sp_loss, np_sp, (3, 2, 2, 2), (3, 2, 2, 3)),
    "rkd": (rkd, np_rkd, (5, 3), (5, 4)),
    "pkt": (pkt, np_pkt, (4, 3), (4, 5)),
    "cc": (cc, np_cc, (4, 3), (4, 3)),
    "nst": (nst, np_nst, (2, 2, 3, 2), (2, 2, 3, 3)),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_student_gradient_matches_float64_finite_differences(name):
  fn, ref_fn, s_shape, t_shape = GRAD_CASES[name]
  rng = np.random.default_rng(30)
  s, t = rand(rng, s_shape), rand(rng, t_shape, 1.5, 0.3)
  w = weights(rng, s_shape[0])
  # Per-example losses ([B]) are weighted so each example's gradient is checked on its own.
  scalar = lambda out, w_: (w_ * out).sum() if np.ndim(out) else out
  g = np.asarray(jax.grad(lambda x: scalar(fn(x, t), jnp.asarray(w, jnp.float32)))(s))
  assert g.dtype == np.float32
  ref = numerical_grad(lambda x: scalar(ref_fn(x, np.float64(t)), w), s)
  assert np.abs(ref).max() > 1e-4
  np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------------------
# 3. defining properties
# ---------------------------------------------------------------------------

ZERO_CASES = [
    (at_loss, (3, 4, 4, 5)),
    (lambda s, t: at_loss(s, t, p=3), (3, 4, 4, 5)),
    (sp_loss, (4, 3, 3, 2)),
    (rkd, (6, 5)),
    (pkt, (6, 5)),
    (cc, (6, 5)),
    (nst, (3, 4, 4, 5)),
]


@pytest.mark.parametrize("fn,shape", ZERO_CASES)
def test_each_loss_vanishes_when_student_equals_teacher(fn, shape):
  x = rand(np.random.default_rng(40), shape, 2.0, 0.5)
  np.testing.assert_allclose(fn(x, x), 0.0, atol=1e-6)


def test_rkd_is_invariant_to_scaling_translating_and_rotating_the_student():
  rng = np.random.default_rng(41)
  s, t = rand(rng, (6, 4)), rand(rng, (6, 5))
  base = float(rkd(s, t))
  np.testing.assert_allclose(base, np_rkd(s, t), rtol=RTOL)
  b = rand(rng, (1, 4))
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  for c in (0.1, 0.5, 7.0):
    np.testing.assert_allclose(rkd(c * s + b, t), base, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(rkd((s @ q).astype(np.float32), t), base, rtol=RTOL, atol=ATOL)
  # ... and likewise for the teacher.
  np.testing.assert_allclose(rkd(s, 3.0 * t - 2.0), base, rtol=RTOL, atol=ATOL)


def test_sp_is_invariant_to_a_positive_scale_of_either_feature():
  rng = np.random.default_rng(42)
  s, t = rand(rng, (5, 3, 3, 2)), rand(rng, (5, 3, 3, 4))
  base = float(sp_loss(s, t))
  assert base > 1e-3
  for c in (0.01, 3.0, 50.0):
    np.testing.assert_allclose(sp_loss(c * s, t), base, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(sp_loss(s, c * t), base, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("p", [2, 3])
def test_attention_map_is_invariant_to_a_positive_scale(p):
  rng = np.random.default_rng(43)
  f = rand(rng, (2, 3, 4, 5))
  a = np.asarray(at_map(f, p=p))
  for c in (0.05, 4.0):
    np.testing.assert_allclose(at_map(c * f, p=p), a, rtol=RTOL, atol=ATOL)
  t = rand(rng, (2, 3, 4, 2))
  np.testing.assert_allclose(at_loss(4.0 * f, t, p=p), at_loss(f, t, p=p),
                             rtol=RTOL, atol=ATOL)


def test_pkt_is_non_negative():
  """sum_j t_ij log(t_ij / s_ij) is a KL between row distributions; eps=1e-7 shifts it by
  at most ~1e-7, so the loss is >= 0 up to that."""
  rng = np.random.default_rng(44)
  for Ds, Dt in ((1, 4), (2, 2), (5, 3)):  # D=1: every cosine is +-1, probabilities hit 0
    for _ in range(4):
      s, t = rand(rng, (6, Ds)), rand(rng, (6, Dt), 2.0, rng.normal())
      out = float(pkt(s, t))
      assert out >= -1e-6
      # Reference check only where float32 can resolve it: once a student probability is
      # ~eps (1e-7), float32 rounding of (cos + 1) / 2 is as large as eps inside the log.
      if min_student_probability(s) > 1e-4:
        np.testing.assert_allclose(out, np_pkt(s, t), rtol=RTOL, atol=ATOL)


def min_student_probability(s):
  x = np_normalize(np.float64(s))
  m = (x @ x.T + 1) / 2
  return (m / m.sum(1, keepdims=True)).min()


def test_nst_is_non_negative():
  """A squared MMD for the kernel (a.b)^2 = <a (x) a, b (x) b>: ||mean phi(t) - mean phi(s)||^2."""
  rng = np.random.default_rng(45)
  for s_shape, t_shape in (((24, 3, 2, 4), (24, 3, 2, 2)), ((24, 2, 2, 1), (24, 2, 2, 3))):
    # Per-example teacher offsets from -2 to 2 vary how far apart the two sets of channels are.
    s = rand(rng, s_shape)
    t = rand(rng, t_shape) + np.linspace(-2, 2, 24, dtype=np.float32)[:, None, None, None]
    out = np.asarray(nst(s, t))
    assert (out >= -1e-6).all()
    assert (np_nst(s, t) >= -1e-12).all()
    np.testing.assert_allclose(out, np_nst(s, t), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------
# 4. no gradient reaches the teacher
# ---------------------------------------------------------------------------

TEACHER_CASES = [
    (at_loss, (2, 3, 3, 2), (2, 3, 3, 4)),
    (lambda s, t: at_loss(s, t, p=3), (2, 3, 3, 2), (2, 3, 3, 4)),
    (sp_loss, (3, 2, 2, 2), (3, 2, 2, 3)),
    (rkd, (5, 3), (5, 4)),
    (pkt, (4, 3), (4, 5)),
    (cc, (4, 3), (4, 3)),
    (nst, (2, 2, 3, 2), (2, 2, 3, 3)),
]


@pytest.mark.parametrize("fn,s_shape,t_shape", TEACHER_CASES)
def test_no_gradient_reaches_the_teacher(fn, s_shape, t_shape):
  rng = np.random.default_rng(50)
  s, t = rand(rng, s_shape), rand(rng, t_shape)
  g = jax.grad(lambda t_: jnp.sum(fn(s, t_)))(t)
  np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------------------
# 5. bfloat16 inputs, float32 math
# ---------------------------------------------------------------------------

BF16_CASES = [
    ("at", at_loss, np_at_loss, (2, 4, 4, 3), (2, 4, 4, 5)),
    ("sp", sp_loss, np_sp, (4, 3, 3, 2), (4, 3, 3, 5)),
    ("rkd", rkd, np_rkd, (6, 4), (6, 7)),
    ("pkt", pkt, np_pkt, (6, 4), (6, 7)),
    ("cc", cc, np_cc, (6, 4), (6, 4)),
    ("nst", nst, np_nst, (2, 4, 4, 3), (2, 4, 4, 5)),
]


@pytest.mark.parametrize("name,fn,ref_fn,s_shape,t_shape", BF16_CASES)
def test_bfloat16_inputs_give_float32_results(name, fn, ref_fn, s_shape, t_shape):
  rng = np.random.default_rng(60)
  sb = jnp.asarray(rand(rng, s_shape), jnp.bfloat16)
  tb = jnp.asarray(rand(rng, t_shape, 2.0, 0.5), jnp.bfloat16)
  out = fn(sb, tb)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, fn(sb.astype(jnp.float32), tb.astype(jnp.float32)), rtol=1e-6, atol=1e-7)
  # float32 accuracy on the bf16-rounded values (bf16 arithmetic would be off by ~1e-2).
  np.testing.assert_allclose(out, ref_fn(np.asarray(sb, np.float64), np.asarray(tb, np.float64)),
                             rtol=RTOL, atol=ATOL)


def test_attention_map_of_bfloat16_is_float32():
  f = jnp.asarray(rand(np.random.default_rng(61), (2, 3, 3, 4)), jnp.bfloat16)
  a = at_map(f)
  assert a.dtype == jnp.float32
  np.testing.assert_allclose(a, np_at(np.asarray(f, np.float64)), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------
# 6. shape errors
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [attention_transfer_loss, nst_loss, at_loss, nst])
@pytest.mark.parametrize("t_shape", [(2, 4, 3, 3), (2, 3, 4, 3), (2, 2, 2, 3)])
def test_spatial_mismatch_is_rejected(fn, t_shape):
  with pytest.raises(ValueError, match="spatial"):
    fn(np.ones((2, 3, 3, 3), np.float32), np.ones(t_shape, np.float32))


@pytest.mark.parametrize("fn", [correlation_congruence_loss, cc])
def test_correlation_congruence_rejects_different_widths(fn):
  with pytest.raises(ValueError):
    fn(np.ones((4, 3), np.float32), np.ones((4, 5), np.float32))
