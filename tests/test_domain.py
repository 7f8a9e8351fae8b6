"""Domain-alignment losses (MMD², Deep CORAL) against float64 NumPy references and their
defining properties, and the domain_kd method composed from them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax.losses import coral_loss, mmd2
from kdjax.methods import call_method, grad_reverse, init_method, make_method
from kdjax.methods.domain import _dann_loss, _discriminate

RTOL, ATOL = 1e-4, 1e-6

mmd = jax.jit(mmd2, static_argnames=("scales", "unbiased"))
coral = jax.jit(coral_loss)


def rand(rng, shape, scale=1.0, shift=0.0):
  return (shift + scale * rng.normal(size=shape)).astype(np.float32)


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------

def np_mmd2(x, y, scales=(0.25, 0.5, 1.0, 2.0, 4.0), bandwidth=None, unbiased=False):
  """Gretton et al. 2012 with k = mean_s exp(-d² / (2 s² σ²)); σ² the mean squared distance
  over the distinct pairs of the pooled sample, from explicit differences (no Gram trick)."""
  x, y = np.float64(x).reshape(len(x), -1), np.float64(y).reshape(len(y), -1)
  z = np.concatenate([x, y])
  d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
  p, n = len(z), len(x)
  sigma2 = d2.sum() / (p * (p - 1)) if bandwidth is None else bandwidth
  k = np.mean([np.exp(-d2 / (2 * s * s * sigma2)) for s in scales], axis=0)
  kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
  if unbiased:
    off = lambda a: (a.sum() - np.trace(a)) / (len(a) * (len(a) - 1))
    return off(kxx) + off(kyy) - 2 * kxy.mean()
  return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def np_log_softmax(z):
  z = np.float64(z)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(s, t, temp):
  """KL(softmax(t/T) || softmax(s/T)) per row."""
  log_p_s, log_p_t = np_log_softmax(np.float64(s) / temp), np_log_softmax(np.float64(t) / temp)
  return (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1)


def np_hinton(s, t, labels, alpha, temp):
  ce = -np_log_softmax(s)[np.arange(len(s)), labels]
  return alpha * ce + (1 - alpha) * temp**2 * np_kl(s, t, temp)


def np_cov(x):
  x = np.float64(x).reshape(len(x), -1)
  xc = x - x.mean(0)
  return xc.T @ xc / (len(x) - 1)


def np_coral(x, y):
  d = np.prod(np.shape(x)[1:])
  return ((np_cov(x) - np_cov(y)) ** 2).sum() / (4 * d * d)


# ---------------------------------------------------------------------------
# MMD²
# ---------------------------------------------------------------------------

def test_mmd_is_exactly_zero_for_identical_samples_and_flattens_extra_dims():
  x = rand(np.random.default_rng(0), (6, 2, 2, 3), 2.0, 5.0)
  assert float(mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
  y = rand(np.random.default_rng(1), (5, 2, 2, 3))
  np.testing.assert_allclose(mmd(x, y), mmd(x.reshape(6, -1), y.reshape(5, -1)), rtol=1e-6)
  np.testing.assert_allclose(mmd(x, y), np_mmd2(x, y), rtol=RTOL, atol=ATOL)


def test_mmd_is_positive_and_grows_with_a_mean_shift():
  rng = np.random.default_rng(2)
  x, y = rand(rng, (16, 4)), rand(rng, (16, 4))
  values = [float(mmd(x, y + s)) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
  assert values[0] > 0 and all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("scales", [(0.25, 0.5, 1.0, 2.0, 4.0), (1.0,), (0.3, 3.0)])
def test_mmd_matches_reference(scales, unbiased):
  rng = np.random.default_rng(3)
  x, y = rand(rng, (7, 5)), rand(rng, (9, 5), 1.5, 0.4)
  out = mmd(x, y, scales=scales, unbiased=unbiased)
  assert out.shape == () and out.dtype == np.float32
  np.testing.assert_allclose(out, np_mmd2(x, y, scales, unbiased=unbiased), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_with_a_fixed_bandwidth_matches_reference(unbiased):
  """``bandwidth`` is the base σ²; a traced value works as well as a Python number."""
  rng = np.random.default_rng(4)
  x, y = rand(rng, (7, 5)), rand(rng, (9, 5), 1.5, 0.4)
  for bw in (0.5, 3.0, jnp.float32(20.0)):
    np.testing.assert_allclose(mmd(x, y, bandwidth=bw, unbiased=unbiased),
                               np_mmd2(x, y, bandwidth=float(bw), unbiased=unbiased), rtol=RTOL, atol=ATOL)
  # A bandwidth far from the heuristic's gives a different value: it is used.
  assert abs(np_mmd2(x, y, bandwidth=0.5) - np_mmd2(x, y)) > 1e-2


def test_mmd_is_accurate_for_features_with_a_large_common_offset():
  """Post-ReLU features share a large mean; the distances must not cancel away in float32."""
  rng = np.random.default_rng(5)
  x, y = rand(rng, (8, 16), 0.1, 300.0), rand(rng, (8, 16), 0.1, 300.05)
  np.testing.assert_allclose(mmd(x, y), np_mmd2(x, y), rtol=1e-3, atol=ATOL)


def test_mmd_is_symmetric_and_invariant_to_row_order():
  rng = np.random.default_rng(6)
  x, y = rand(rng, (7, 5)), rand(rng, (9, 5), 1.2, 0.3)
  for unbiased in (False, True):
    ref = mmd(x, y, unbiased=unbiased)
    np.testing.assert_allclose(mmd(y, x, unbiased=unbiased), ref, rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(mmd(x[rng.permutation(7)], y[rng.permutation(9)], unbiased=unbiased), ref,
                               rtol=1e-5, atol=ATOL)


def test_unbiased_mmd_is_near_zero_for_one_distribution_where_the_biased_is_not():
  """MMD²_u has expectation 0 for two draws of one distribution; the V-statistic is biased
  upwards by about (1 − k̄)(1/N + 1/M). Averaged over 32 pairs of independent draws."""
  rng = np.random.default_rng(7)
  xs, ys = rand(rng, (32, 32, 4)), rand(rng, (32, 32, 4))
  both = jax.jit(jax.vmap(lambda x, y: (mmd2(x, y), mmd2(x, y, unbiased=True))))
  biased, unbiased = map(np.asarray, both(xs, ys))
  assert (biased > 0).all()
  assert abs(unbiased.mean()) < 0.1 * biased.mean(), (unbiased.mean(), biased.mean())
  assert (unbiased < 0).any()  # an unbiased estimate of 0 must be able to go negative


def test_mmd_gradients_match_finite_differences():
  rng = np.random.default_rng(8)
  x, y = rand(rng, (4, 3)), rand(rng, (5, 3), 1.0, 0.5)
  for unbiased in (False, True):
    f = jax.jit(lambda a, b, u=unbiased: mmd2(a, b, scales=(0.5, 1.0, 2.0), bandwidth=2.0, unbiased=u))
    check_grads(f, (x, y), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_mmd_heuristic_bandwidth_is_under_stop_gradient():
  """With σ² from the data, the gradient is the one at that σ² held fixed."""
  rng = np.random.default_rng(9)
  x, y = rand(rng, (6, 3)), rand(rng, (5, 3), 1.0, 0.7)
  z = np.float64(np.concatenate([x, y]))
  sigma2 = ((z[:, None] - z[None]) ** 2).sum(-1).sum() / (11 * 10)
  grad = jax.jit(jax.grad(lambda a, b, bw: mmd2(a, b, bandwidth=bw), argnums=(0, 1)))
  for g, g_fixed in zip(grad(x, y, None), grad(x, y, jnp.float32(sigma2))):
    np.testing.assert_allclose(g, g_fixed, rtol=1e-4, atol=1e-6)
    assert np.abs(g).max() > 1e-3


def test_mmd_of_a_single_repeated_point_is_finite():
  x = np.ones((4, 3), np.float32)
  val, g = jax.jit(jax.value_and_grad(lambda a: mmd2(a, a)))(x)
  assert float(val) == 0.0 and np.isfinite(np.asarray(g)).all()


def test_mmd_errors():
  x, y = np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32)
  with pytest.raises(ValueError, match="equal feature sizes"):
    mmd2(x, np.zeros((5, 4), np.float32))
  with pytest.raises(ValueError, match="at least 2 example"):
    mmd2(x[:1], y, unbiased=True)
  with pytest.raises(ValueError, match="at least 2 example"):
    mmd2(x, y[:1], unbiased=True)
  with pytest.raises(ValueError, match="scales must be"):
    mmd2(x, y, scales=(1.0, 0.0))
  with pytest.raises(ValueError, match="scales must be"):
    mmd2(x, y, scales=(-1.0,))
  with pytest.raises(ValueError, match="at least one kernel scale"):
    mmd2(x, y, scales=())
  with pytest.raises(ValueError, match="bandwidth"):
    mmd2(x, y, bandwidth=0.0)
  with pytest.raises(ValueError, match="bandwidth"):
    mmd2(x, y, bandwidth=-2.0)


# ---------------------------------------------------------------------------
# CORAL
# ---------------------------------------------------------------------------

def test_coral_is_zero_for_the_same_sample_and_ignores_the_mean():
  x = rand(np.random.default_rng(10), (9, 4))
  assert float(coral(x, x)) == 0.0
  assert float(coral(x, x + 3.0)) == pytest.approx(0.0, abs=1e-6)
  assert float(coral(x, x[::-1])) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shapes", [((7, 5), (9, 5)), ((4, 2, 2, 3), (6, 2, 2, 3))])
def test_coral_matches_reference(shapes):
  rng = np.random.default_rng(11)
  x, y = rand(rng, shapes[0]), rand(rng, shapes[1], 1.7, 0.5)
  out = coral(x, y)
  assert out.shape == () and out.dtype == np.float32
  np.testing.assert_allclose(out, np_coral(x, y), rtol=RTOL, atol=ATOL)


def test_coral_scaling_one_side_by_c_scales_its_covariance_by_c_squared():
  x = rand(np.random.default_rng(12), (8, 3))
  c_x = np_cov(x)
  for c in (0.5, 2.0, 3.0):
    expected = (c * c - 1.0) ** 2 * (c_x**2).sum() / (4 * 9)
    np.testing.assert_allclose(coral(c * x, x), expected, rtol=RTOL, atol=ATOL)


def test_coral_errors():
  with pytest.raises(ValueError, match="equal feature sizes"):
    coral_loss(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="at least 2 example"):
    coral_loss(np.zeros((1, 3)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="at least 2 example"):
    coral_loss(np.zeros((4, 3)), np.zeros((1, 3)))


# ---------------------------------------------------------------------------
# domain_kd
# ---------------------------------------------------------------------------

B, BU, C, D = 6, 5, 7, 4


def _outputs(seed=13):
  rng = np.random.default_rng(seed)
  logits, t_logits = rand(rng, (B, C)), rand(rng, (B, C), 2.0)
  feats = {"pre_logits": rand(rng, (B, D)), "block1": rand(rng, (B, 2, 2, 3))}
  t_feats = {"pre_logits": rand(rng, (B, 3))}
  u_logits, u_t_logits = rand(rng, (BU, C), 1.0, 0.2), rand(rng, (BU, C), 2.0)
  u_feats = {"pre_logits": rand(rng, (BU, D), 1.3, 0.6), "block1": rand(rng, (BU, 2, 2, 3))}
  u_t_feats = {"pre_logits": rand(rng, (BU, 3))}
  batch = {"label": rng.integers(0, C, B), "step": 0, "key": jax.random.key(0),
           "unlabelled_student": (u_logits, u_feats), "unlabelled_teacher": (u_t_logits, u_t_feats)}
  return logits, feats, (t_logits, t_feats), batch


def _run(method, logits, feats, teacher, batch, params=None):
  return jax.jit(lambda l, f, t, b, p: method(l, f, t, b, p))(logits, feats, teacher, batch, params or {})


@pytest.mark.parametrize("align,feature", [("mmd", "pre_logits"), ("coral", "pre_logits"), ("mmd", "block1"),
                                           ("none", "pre_logits")])
def test_domain_kd_loss_is_the_composed_formula(align, feature):
  logits, feats, teacher, batch = _outputs()
  alpha, temp, w_a, w_t = 0.3, 3.0, 2.5, 0.7
  method = make_method("domain_kd", alpha=alpha, temperature=temp, align=align, align_weight=w_a, feature=feature,
                       target_kd_weight=w_t)
  loss, terms = _run(method, logits, feats, teacher, batch)
  u_logits, u_feats = batch["unlabelled_student"]
  align_fn = {"mmd": np_mmd2, "coral": np_coral}.get(align)
  a = align_fn(feats[feature], u_feats[feature]) if align_fn else 0.0
  target_kl = np_kl(u_logits, batch["unlabelled_teacher"][0], temp).mean()
  expected = np_hinton(logits, teacher[0], batch["label"], alpha, temp) + w_a * a + w_t * temp**2 * target_kl
  assert loss.shape == (B,)
  np.testing.assert_allclose(loss, expected, rtol=RTOL, atol=ATOL)
  assert set(terms) == ({"ce", "kl", "target_kl"} | ({"align"} if align_fn else set()))
  np.testing.assert_allclose(terms["target_kl"], target_kl, rtol=RTOL, atol=ATOL)
  if align_fn:
    np.testing.assert_allclose(terms["align"], a, rtol=RTOL, atol=ATOL)
    assert float(terms["align"]) > 1e-3


def test_domain_kd_align_is_zero_for_identical_features_and_target_kl_off_by_default():
  logits, feats, teacher, batch = _outputs()
  batch = {**batch, "unlabelled_student": (batch["unlabelled_student"][0], feats)}
  method = make_method("domain_kd", alpha=0.5, temperature=4.0)
  loss, terms = _run(method, logits, feats, teacher, batch)
  assert float(terms["align"]) == pytest.approx(0.0, abs=1e-6)
  assert "target_kl" not in terms
  np.testing.assert_allclose(loss, np_hinton(logits, teacher[0], batch["label"], 0.5, 4.0), rtol=RTOL, atol=1e-5)


def test_domain_kd_alignment_reaches_the_students_target_pass():
  logits, feats, teacher, batch = _outputs()
  method = make_method("domain_kd", target_kd_weight=1.0)

  def mean_loss(u_logits, u_feats):
    b = {**batch, "unlabelled_student": (u_logits, u_feats)}
    return jnp.mean(method(logits, feats, teacher, b, {})[0])

  g_logits, g_feats = jax.jit(jax.grad(mean_loss, argnums=(0, 1)))(*batch["unlabelled_student"])
  assert np.abs(np.asarray(g_feats["pre_logits"])).max() > 1e-4
  assert np.abs(np.asarray(g_logits)).max() > 1e-4  # the target KD term
  assert not np.asarray(g_feats["block1"]).any()  # only the chosen feature is aligned


def test_domain_kd_needs_unlabelled_target_images():
  logits, feats, teacher, batch = _outputs()
  del batch["unlabelled_student"]
  method = make_method("domain_kd")
  assert method.needs_teacher
  with pytest.raises(ValueError, match=r"give the dataset unlabelled_images \(kdjax.data.ArrayDataset\)"):
    method(logits, feats, teacher, batch, {})
  with pytest.raises(ValueError, match=r"give the dataset unlabelled_images \(kdjax.data.ArrayDataset\)"):
    method(logits, feats, teacher, {**batch, "unlabelled_student": None}, {})


def test_domain_kd_validates_its_hyperparameters():
  logits, feats, teacher, batch = _outputs()
  with pytest.raises(ValueError, match="unknown align 'wasserstein'; choices: mmd, coral, dann, none"):
    make_method("domain_kd", align="wasserstein")
  with pytest.raises(ValueError, match="align_weight"):
    make_method("domain_kd", align_weight=-1.0)
  with pytest.raises(ValueError, match="target_kd_weight"):
    make_method("domain_kd", target_kd_weight=-0.1)
  with pytest.raises(ValueError, match="alpha"):
    make_method("domain_kd", alpha=1.5)
  with pytest.raises(ValueError, match="temperature"):
    make_method("domain_kd", temperature=0.0)
  with pytest.raises(ValueError, match="unknown feature 'block9' for the student; available: block1, pre_logits"):
    make_method("domain_kd", feature="block9")(logits, feats, teacher, batch, {})
  with pytest.raises(ValueError, match="unlabelled_teacher"):
    make_method("domain_kd", target_kd_weight=1.0)(logits, feats, teacher, {**batch, "unlabelled_teacher": None}, {})


# ---------------------------------------------------------------------------
# DANN (gradient reversal, discriminator)
# ---------------------------------------------------------------------------

def test_grad_reverse_is_the_identity_forward_and_negates_the_gradient():
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  w = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
  f = jax.jit(jax.value_and_grad(lambda a, scale: jnp.sum(grad_reverse(a, scale) * w)))
  val, g = f(x, 2.0)
  np.testing.assert_allclose(val, np.sum(x * w), rtol=1e-6)
  np.testing.assert_allclose(g, -2.0 * w)
  _, g = f(x.astype(jnp.bfloat16), 1.0)
  assert g.dtype == jnp.bfloat16


def np_discriminate(p, x):
  h = np.maximum(np.float64(x) @ np.float64(p["hidden"]["kernel"]) + np.float64(p["hidden"]["bias"]), 0.0)
  return (h @ np.float64(p["out"]["kernel"]) + np.float64(p["out"]["bias"]))[:, 0]


def test_domain_kd_dann_trains_a_discriminator_against_the_features():
  logits, feats, teacher, batch = _outputs()
  method = make_method("domain_kd", align="dann", align_weight=1.0, dann_hidden=8)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in feats.items()}
  params, state = init_method(method, jax.random.key(1), shapes, {}, 10)
  assert state == {} and params["discriminator"]["hidden"]["kernel"].shape == (D, 8)
  loss, terms, _ = jax.jit(lambda b, p: call_method(method, logits, feats, teacher, b, p, state))(batch, params)
  source, target = feats["pre_logits"], batch["unlabelled_student"][1]["pre_logits"]
  softplus = lambda z: np.logaddexp(0.0, z)
  disc = params["discriminator"]
  bce = 0.5 * (softplus(-np_discriminate(disc, source)).mean() + softplus(np_discriminate(disc, target)).mean())
  np.testing.assert_allclose(terms["align"], bce, rtol=RTOL)
  np.testing.assert_allclose(loss, np_hinton(logits, teacher[0], batch["label"], 0.5, 4.0) + bce, rtol=RTOL)

  # The discriminator descends the BCE; the features get the BCE's gradient reversed.
  plain = lambda p, s, t: 0.5 * (jnp.mean(jax.nn.softplus(-_discriminate(p, s)))
                                 + jnp.mean(jax.nn.softplus(_discriminate(p, t))))
  both = jax.jit(lambda p, s, t: (jax.grad(_dann_loss, argnums=(0, 1, 2))(p, s, t),
                                  jax.grad(plain, argnums=(0, 1, 2))(p, s, t)))
  g, g_plain = both(disc, source, target)
  for a, b in zip(jax.tree.leaves(g[0]), jax.tree.leaves(g_plain[0])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g[1], -g_plain[1], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g[2], -g_plain[2], rtol=1e-5, atol=1e-7)
  assert np.abs(np.asarray(g[2])).max() > 1e-4
