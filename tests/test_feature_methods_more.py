"""VID, FT, AB and FSP: their losses against float64 NumPy transcriptions of RepDistiller
(HobbitLong/RepDistiller, distiller_zoo/{VID,FT,AB,FSP}.py), their defining properties, and
one epoch of each method on the CNN pair.

RepDistiller is PyTorch and NCHW; kdjax is NHWC, so the references take channels from the last
axis, and return per-example values (RepDistiller's batch means / sums are the batch reductions).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import harness
from harness import smoke
from numeric import numerical_grad

from kdjax.losses import activation_boundary_loss, factor_transfer_loss, fsp_loss, fsp_matrix, vid_loss
from kdjax.methods import init_method, make_method

vid = jax.jit(vid_loss)
ft = jax.jit(factor_transfer_loss, static_argnames="p")
ab = jax.jit(activation_boundary_loss, static_argnames="margin")
fsp = jax.jit(fsp_loss)


def rand(rng, shape, scale=1.0, shift=0.0):
  return (shift + scale * rng.normal(size=shape)).astype(np.float32)


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------

def np_pool(f, h, w):
  """adaptive_avg_pool2d for integer ratios, NHWC."""
  b, H, W, c = f.shape
  return f.reshape(b, h, H // h, w, W // w, c).mean((2, 4))


def np_match(a, b):
  h, w = min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2])
  return np_pool(a, h, w), np_pool(b, h, w)


def np_normalize(x, eps=1e-12):
  return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), eps)


def np_vid(mu, t, var):
  """VIDLoss.forward after the regressor: 0.5 * ((mu - t)^2 / var + log var), mean per example."""
  nll = 0.5 * ((np.float64(mu) - t) ** 2 / var + np.log(var))
  return nll.reshape(len(nll), -1).mean(-1)


def np_ft(s, t, p=2):
  """FactorTransfer.factor_loss (p2 = 1): pool, F.normalize(f.pow(p1).mean(1).view(B, -1)), |.|.mean()."""
  s, t = np_match(np.float64(s), np.float64(t))

  def factor(f):
    f = (f**p).mean(-1) if p is not None else f
    return np_normalize(f.reshape(len(f), -1))

  return np.abs(factor(s) - factor(t)).mean(-1)


def np_ab(s, t, m=1.0):
  """ABLoss.criterion_alternative_l2, summed per example."""
  s = np.float64(s)
  loss = (s + m) ** 2 * ((s > -m) & (t <= 0)) + (s - m) ** 2 * ((s <= m) & (t > 0))
  return loss.reshape(len(s), -1).sum(-1)


def np_fsp_matrix(bot, top):
  """FSP.compute_fsp for one pair: [B, C_bot, C_top] (RepDistiller's is its transpose)."""
  bot, top = np_match(np.float64(bot), np.float64(top))
  b, h, w = bot.shape[:3]
  return np.einsum("bxj,bxk->bjk", bot.reshape(b, h * w, -1), top.reshape(b, h * w, -1)) / (h * w)


def np_fsp(gs, gt):
  return sum(((np_fsp_matrix(gs[i], gs[i + 1]) - np_fsp_matrix(gt[i], gt[i + 1])) ** 2).mean((1, 2))
             for i in range(len(gs) - 1))


# ---------------------------------------------------------------------------
# 1. values and student gradients against the references
# ---------------------------------------------------------------------------

def check_grad(fn, ref_fn, x, rng):
  """Gradient of a per-example loss (weighted per example) against float64 finite differences."""
  w = rng.uniform(0.5, 1.5, size=x.shape[0])
  g = np.asarray(jax.grad(lambda x_: jnp.sum(jnp.asarray(w, jnp.float32) * fn(x_)))(x))
  assert g.dtype == np.float32
  ref = numerical_grad(lambda x_: np.sum(w * ref_fn(x_)), x)
  assert np.abs(ref).max() > 1e-4
  np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


def test_vid_loss_matches_reference_in_value_and_gradients():
  rng = np.random.default_rng(0)
  mu, t = rand(rng, (3, 2, 2, 4)), rand(rng, (3, 2, 2, 4))
  var = rng.uniform(0.5, 5.0, size=4).astype(np.float32)
  np.testing.assert_allclose(vid(mu, t, var), np_vid(mu, t, np.float64(var)), rtol=1e-5)
  check_grad(lambda x: vid(x, t, var), lambda x: np_vid(x, t, np.float64(var)), mu, rng)
  check_grad(lambda v: vid(mu[:1], t[:1], v[0]), lambda v: np_vid(mu[:1], t[:1], v[0]), var[None], rng)


@pytest.mark.parametrize("s_shape,t_shape,p", [
    ((3, 4, 4, 3), (3, 4, 4, 5), 2),  # RepDistiller's factor: channel mean of f^2
    ((3, 4, 4, 3), (3, 2, 2, 6), 2),  # the larger (student) map is pooled
    ((3, 2, 2, 4), (3, 4, 4, 4), None),  # the paper's vec(F), the teacher pooled
])
def test_factor_transfer_loss_matches_reference_in_value_and_gradient(s_shape, t_shape, p):
  rng = np.random.default_rng(1)
  s, t = rand(rng, s_shape), rand(rng, t_shape)
  np.testing.assert_allclose(ft(s, t, p=p), np_ft(s, t, p), rtol=1e-4)
  check_grad(lambda x: ft(x, t, p=p), lambda x: np_ft(x, t, p), s, rng)


def test_activation_boundary_loss_matches_reference_in_value_and_gradient():
  rng = np.random.default_rng(2)
  s, t = rand(rng, (3, 3, 3, 4), 2.0), rand(rng, (3, 3, 3, 4))
  t[0, 0, 0] = 0.0  # the teacher's zeros (a ReLU's output) lie on the inactive side
  np.testing.assert_allclose(ab(s, t), np_ab(s, t), rtol=1e-5)
  np.testing.assert_allclose(ab(s, t, margin=0.5), np_ab(s, t, 0.5), rtol=1e-5)
  check_grad(lambda x: ab(x, t), lambda x: np_ab(x, t), s, rng)


def test_fsp_loss_matches_reference_in_value_and_gradient():
  rng = np.random.default_rng(3)
  shapes = [(2, 4, 4, 2), (2, 4, 4, 3), (2, 2, 2, 3)]  # the last pair pools 4x4 onto 2x2
  gs, gt = [rand(rng, sh) for sh in shapes], [rand(rng, sh) for sh in shapes]
  np.testing.assert_allclose(fsp(gs, gt), np_fsp(gs, gt), rtol=1e-5)
  np.testing.assert_allclose(fsp_matrix(gs[0], gs[1]), np_fsp_matrix(gs[0], gs[1]), rtol=1e-5, atol=1e-7)
  check_grad(lambda x: fsp([gs[0], x, gs[2]], gt), lambda x: np_fsp([gs[0], x, gs[2]], gt), gs[1], rng)


def test_no_gradient_reaches_the_teacher():
  rng = np.random.default_rng(4)
  s, t = rand(rng, (2, 4, 4, 3)), rand(rng, (2, 4, 4, 3))
  grads = [jax.grad(lambda x: jnp.sum(vid(s, x, jnp.ones(3))))(t),
           jax.grad(lambda x: jnp.sum(ft(s, x)))(t),
           jax.grad(lambda x: jnp.sum(ab(s, x)))(t),
           jax.grad(lambda x: jnp.sum(fsp([s, s], [x, x])))(t)]
  assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


# ---------------------------------------------------------------------------
# 2. defining properties
# ---------------------------------------------------------------------------

def test_vid_is_minimal_at_the_teacher_where_it_is_half_the_log_variance():
  rng = np.random.default_rng(5)
  t = rand(rng, (2, 3, 3, 4))
  var = np.float32([0.5, 1.0, 2.0, 5.0])
  at_t = vid(t, t, var)
  np.testing.assert_allclose(at_t, np.full(2, 0.5 * np.log(np.float64(var)).mean()), rtol=1e-5)
  g = jax.grad(lambda m: jnp.sum(vid(m, t, var)))(t)
  assert float(jnp.abs(g).max()) == 0.0
  for _ in range(3):
    assert np.all(np.asarray(vid(t + rand(rng, t.shape, 0.1), t, var)) > np.asarray(at_t))


@pytest.mark.parametrize("p", [2, None])
def test_factor_transfer_vanishes_for_factors_equal_up_to_a_positive_scale(p):
  s = rand(np.random.default_rng(6), (3, 4, 4, 5))
  np.testing.assert_allclose(ft(s, 3.7 * s, p=p), 0.0, atol=1e-6)
  assert np.all(np.asarray(ft(s, s + rand(np.random.default_rng(7), s.shape), p=p)) > 1e-3)


def test_activation_boundary_vanishes_beyond_the_margin_on_the_teachers_side():
  rng = np.random.default_rng(8)
  t = np.maximum(rand(rng, (3, 4, 4, 5)), 0.0)  # post-ReLU: zeros are inactive
  beyond = np.where(t > 0, 1.0 + np.abs(rand(rng, t.shape)) + 1e-3, -1.0 - np.abs(rand(rng, t.shape)))
  np.testing.assert_allclose(ab(beyond, t), 0.0)
  inside = beyond.copy()
  inside[0, 0, 0, 0] = 0.5 if t[0, 0, 0, 0] > 0 else -0.5  # within the margin: penalized
  assert float(ab(inside, t)[0]) > 0 and float(ab(inside, t)[1]) == 0.0


def test_fsp_vanishes_for_identical_features_and_ignores_a_shared_spatial_permutation():
  rng = np.random.default_rng(9)
  gs, gt = [rand(rng, (2, 4, 4, 3)), rand(rng, (2, 4, 4, 5))], [rand(rng, (2, 4, 4, 3)), rand(rng, (2, 4, 4, 5))]
  np.testing.assert_allclose(fsp(gs, gs), 0.0, atol=1e-12)
  perm = rng.permutation(16)
  shuffle = lambda f: f.reshape(2, 16, -1)[:, perm].reshape(f.shape)
  np.testing.assert_allclose(fsp([shuffle(f) for f in gs], gt), fsp(gs, gt), rtol=1e-5)
  assert np.all(np.asarray(fsp(gs, gt)) > 0)


def _staged_setup(name, seed=10):
  rng = np.random.default_rng(seed)
  feats = lambda c1, c2: {"block1": jnp.asarray(rand(rng, (4, 4, 4, c1))),
                          "block2": jnp.asarray(rand(rng, (4, 2, 2, c2)))}
  s = feats(3, 5)
  t = feats(3, 5) if name == "fsp" else feats(6, 8)  # FSP needs the student's widths
  if name == "ft":
    s, t = {"block2": s["block2"]}, {"block2": t["block2"]}
  logits, y = jnp.asarray(rand(rng, (4, 10))), jnp.arange(4)
  shapes = lambda f: {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in f.items()}
  params, _ = init_method(make_method(name, init_epochs=0), jax.random.key(0), shapes(s), shapes(t), 4)

  def at(method, epoch=None, epochs=None):
    """The method's ``(loss, terms)`` with the run at ``epoch`` of ``epochs`` (none: no length)."""
    if epoch is None:
      return jax.jit(lambda: method(logits, s, (logits, t), {"label": y, "step": jnp.asarray(0)}, params))()
    batch = lambda e: {"label": y, "step": jnp.asarray(0), "epoch": e, "epochs": epochs}  # epochs: a Python int
    return jax.jit(lambda e: method(logits, s, (logits, t), batch(e), params))(jnp.float32(epoch))

  return at


@pytest.mark.parametrize("name", ["ab", "fsp"])
def test_ab_and_fsp_init_epochs_switch_from_the_term_alone_to_ce_alone(name):
  at = _staged_setup(name)
  loss, terms = at(make_method(name, weight=2.0, init_epochs=0))  # one stage: no run length needed
  term = terms[name]
  np.testing.assert_allclose(loss, terms["ce"] + 2.0 * term, rtol=1e-5)
  staged = make_method(name, weight=2.0, init_epochs=5)
  np.testing.assert_allclose(at(staged, 4.9, 10)[0], 2.0 * term, rtol=1e-5)
  np.testing.assert_allclose(at(staged, 5.0, 10)[0], terms["ce"], rtol=1e-5)
  # The default: RepDistiller's 30 epochs, or a ninth of a run shorter than its 270 (30 + 240).
  default = make_method(name, weight=2.0)
  for epoch, epochs, init in ((29.9, 300, True), (30.0, 300, False), (1.0, 10, True), (1.2, 10, False),
                              (26.6, 240, True), (26.7, 240, False)):
    expected = 2.0 * term if init else terms["ce"]
    np.testing.assert_allclose(at(default, epoch, epochs)[0], expected, rtol=1e-5, err_msg=f"{epoch} of {epochs}")


def test_ft_init_epochs_train_the_paraphraser_alone_then_the_student_on_ce_and_ft():
  at = _staged_setup("ft", seed=13)
  loss, terms = at(make_method("ft", init_epochs=0))
  np.testing.assert_allclose(loss, terms["ce"] + 200.0 * terms["ft"] + terms["ft_recon"], rtol=1e-5)
  staged = make_method("ft", recon_weight=0.5, init_epochs=2)
  np.testing.assert_allclose(at(staged, 1.5, 10)[0], 0.5 * terms["ft_recon"], rtol=1e-5)
  np.testing.assert_allclose(at(staged, 2.0, 10)[0], terms["ce"] + 200.0 * terms["ft"], rtol=1e-5)


@pytest.mark.parametrize("name", ["ab", "fsp", "ft"])
def test_init_stage_longer_than_the_run_or_without_the_runs_length_is_named(name):
  at = _staged_setup(name)
  label = name.upper()
  with pytest.raises(ValueError, match=rf"{label}: init_epochs=10 leaves no main stage in a run of 10 epochs.*"
                                       r"--set method\.init_epochs=N with N < 10"):
    at(make_method(name, init_epochs=10), 0.0, 10)
  for hparams in ({}, {"init_epochs": 3}):
    with pytest.raises(ValueError, match=rf"{label}: init_epochs is a schedule in epochs.*"
                                         r"make_train_step\(\.\.\., steps_per_epoch=, epochs=\).*init_epochs=0"):
      at(make_method(name, **hparams))
  for bad in (-1, float("inf")):
    with pytest.raises(ValueError, match=rf"{label}: init_epochs must be None"):
      make_method(name, init_epochs=bad)


def test_ft_paraphraser_learns_only_to_reconstruct_and_the_translator_only_to_transfer():
  rng = np.random.default_rng(12)
  s, t = {"block2": jnp.asarray(rand(rng, (4, 4, 4, 3)))}, {"block2": jnp.asarray(rand(rng, (4, 2, 2, 8)))}
  logits, y = jnp.asarray(rand(rng, (4, 10))), jnp.arange(4)
  method = make_method("ft", init_epochs=0)  # one stage: the paraphraser trains jointly
  params, _ = init_method(method, jax.random.key(0), {"block2": jax.ShapeDtypeStruct((2, 4, 4, 3), jnp.float32)},
                          {"block2": jax.ShapeDtypeStruct((2, 2, 2, 8), jnp.float32)}, 4)
  assert params["block2"]["paraphraser"]["encoder"][2]["kernel"].shape == (3, 3, 4, 4)  # rate 0.5 of 8 channels

  def terms(p):
    out = method(logits, s, (logits, t), {"label": y, "step": 0}, p)[1]
    return jnp.mean(out["ft"]), jnp.mean(out["ft_recon"])

  g_ft, g_recon = jax.jit(jax.jacrev(terms))(params)
  norm = lambda tree: float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(tree)))
  assert norm(g_ft["block2"]["paraphraser"]) == 0.0 and norm(g_ft["block2"]["translator"]) > 0
  assert norm(g_recon["block2"]["translator"]) == 0.0 and norm(g_recon["block2"]["paraphraser"]) > 0


# ---------------------------------------------------------------------------
# 3. one epoch of each method on the CNN pair
# ---------------------------------------------------------------------------

def _smoke(method, student="cnn16", teacher_name="cnn64"):
  """The shared one-epoch run (64 examples, 4 steps of 16) with the teacher seeded apart from the
  student (so a cnn16 teacher differs from the student), the step told the run's length (for the
  init stages): ``(step, last record, initial method params, final method params)``."""
  with pytest.MonkeyPatch.context() as mp:  # harness.smoke builds its step without the run's length
    mp.setattr(harness, "make_train_step", functools.partial(harness.make_train_step, steps_per_epoch=4, epochs=1))
    step, record, initial, result = smoke(method, student, teacher_name, teacher_seed=1)
  return step, record, initial, result.state.method_params


def _moved(before, after):
  """Whether each learnable leaf moved, but for the biases of ``ConvReg``'s convolution (AB's
  connector), which the batch norm after it removes: their gradient is exactly zero."""
  leaves = zip(jax.tree.leaves_with_path(before), jax.tree.leaves(after))
  return [not np.allclose(a, b) for (path, a), b in leaves
          if jax.tree_util.keystr(path[-2:]) not in ("['valid']['bias']", "['down']['bias']", "['up']['bias']")]


@pytest.mark.parametrize("name,hparams,teacher,terms", [
    ("vid", {}, "cnn64", ["vid"]),
    ("ft", {}, "cnn64", ["ft", "ft_recon"]),  # init stage: the first step (a ninth of the epoch)
    ("ft", {"init_epochs": 0}, "cnn64", ["ft", "ft_recon"]),  # one stage
    ("ab", {"init_epochs": 0.5}, "cnn64", ["ab"]),  # 4 steps: two AB-only steps, then CE alone
    ("fsp", {}, "cnn16", ["fsp"]),  # FSP needs the teacher's widths
])
def test_method_trains_one_epoch_with_one_compiled_step(name, hparams, teacher, terms):
  step, record, before, after = _smoke(make_method(name, **hparams), teacher_name=teacher)
  assert step._cache_size() == 1
  for term in ["loss", "ce", *terms]:
    assert np.isfinite(record[f"train_{term}"]), term
  for term in terms:
    assert record[f"train_{term}"] > 0  # a random teacher and student do not agree
  moved = _moved(before, after)
  if name == "fsp":
    assert moved == []  # no learnable parts
  else:
    assert moved and all(moved), f"{name}: some learnable parts did not move"
  if name == "vid":
    assert before["block2"]["regressor"]["conv1"]["kernel"].shape == (32, 128)
    np.testing.assert_allclose(jax.nn.softplus(before["block1"]["log_scale"]) + 1e-5, 5.0, rtol=1e-6)
  if name == "ft":
    p = before["block2"]
    assert p["paraphraser"]["encoder"][1]["kernel"].shape == (3, 3, 128, 64)  # rate 0.5 of the teacher's 128
    assert p["translator"]["encoder"][2]["kernel"].shape == (3, 3, 64, 64)
  if name == "ab":
    assert before["block1"]["valid"]["kernel"].shape == (1, 1, 16, 64)  # conv1x1 + batch norm


# ---------------------------------------------------------------------------
# 4. what does not fit is named
# ---------------------------------------------------------------------------

def _shapes(**feats):
  return {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in feats.items()}


CNN16 = _shapes(block1=(2, 16, 16, 16), block2=(2, 8, 8, 32), pre_logits=(2, 256))
CNN64 = _shapes(block1=(2, 16, 16, 64), block2=(2, 8, 8, 128), pre_logits=(2, 256))


def test_fsp_names_the_layers_whose_channel_counts_differ():
  with pytest.raises(ValueError, match=r"FSP needs equal student and teacher channel counts at every layer: block1 "
                                       r"has 16 \(student\) vs 64 \(teacher\); block2 has 32 \(student\) vs 128"):
    init_method(make_method("fsp"), jax.random.key(0), CNN16, CNN64, 4)
  with pytest.raises(ValueError, match="FSP needs equal channel counts: layer 0 has 2 student and 3 teacher"):
    fsp_loss([jnp.ones((1, 2, 2, 2))] * 2, [jnp.ones((1, 2, 2, 3))] * 2)
  with pytest.raises(ValueError, match="FSP needs at least two layers"):
    make_method("fsp", layers=("block2",))


@pytest.mark.parametrize("name,message", [
    ("vid", r"VID: student block2 \(8, 8, 32\) and teacher block2 \(256,\) must both be NHWC maps or both vectors"),
    ("ab", r"AB: student block2 \(8, 8, 32\) and teacher block2 \(256,\) must both be NHWC maps or both vectors"),
    ("ft", r"FT needs NHWC feature maps: student block2 is \(8, 8, 32\), teacher block2 is \(256,\)"),
    ("fsp", r"FSP needs NHWC feature maps: student block2 is \(8, 8, 32\), teacher block2 is \(256,\)"),
])
def test_maps_against_vectors_are_named(name, message):
  teacher = {**CNN64, "block2": CNN64["pre_logits"]}
  with pytest.raises(ValueError, match=message):
    init_method(make_method(name, layers=("block1", "block2")), jax.random.key(0), CNN16, teacher, 4)


def test_vid_and_ft_name_spatial_sizes_they_cannot_pool():
  teacher = {**CNN64, "block2": jax.ShapeDtypeStruct((2, 6, 6, 128), jnp.float32)}
  for name in ("vid", "ft"):
    with pytest.raises(ValueError, match=r"at block2: cannot average-pool a 8x8 map onto 6x6"):
      init_method(make_method(name, layers=("block2",)), jax.random.key(0), CNN16, teacher, 4)


def test_vid_and_ab_work_on_vectors():
  for name, term in (("vid", "vid"), ("ab", "ab")):
    method = make_method(name, layers=("pre_logits",), **({"init_epochs": 0} if name == "ab" else {}))
    s_shapes = {"pre_logits": jax.ShapeDtypeStruct((2, 6), jnp.float32)}
    t_shapes = {"pre_logits": jax.ShapeDtypeStruct((2, 9), jnp.float32)}
    params, _ = init_method(method, jax.random.key(0), s_shapes, t_shapes, 4)
    rng = np.random.default_rng(11)
    s, t = {"pre_logits": rand(rng, (4, 6))}, {"pre_logits": rand(rng, (4, 9))}
    loss, terms = jax.jit(method)(rand(rng, (4, 10)), s, (rand(rng, (4, 10)), t), {"label": np.arange(4), "step": 0},
                                  params)
    assert loss.shape == (4,) and np.all(np.isfinite(terms[term]))
