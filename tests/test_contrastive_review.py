"""CRD (and its queue and in-batch variants) and ReviewKD: the pure losses against float64
NumPy transcriptions of the references (RepDistiller ``crd/criterion.py`` / ``crd/memory.py``,
mdistiller ``distillers/ReviewKD.py``), their properties, the memory bank and queue updates,
and each method for one epoch on the small CNN pair."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harness import smoke
from numeric import numerical_grad

from kdjax.losses import (contrast_loss, crd_loss, hcl_level_loss, hcl_loss, inbatch_info_nce_loss, info_nce_loss,
                          queue_info_nce_loss)
from kdjax.losses import adaptive_avg_pool
from kdjax.methods import init_method, make_method
from kdjax.methods.contrastive import init_memory, update_memory
from kdjax.models import create_model, feature_shapes, split_model

RTOL, ATOL = 1e-4, 1e-6

contrast = jax.jit(contrast_loss, static_argnames="num_examples")
crd = jax.jit(crd_loss, static_argnames=("num_examples", "temperature"))
info_nce = jax.jit(info_nce_loss, static_argnames="temperature")
queue_nce = jax.jit(queue_info_nce_loss, static_argnames="temperature")
inbatch = jax.jit(inbatch_info_nce_loss, static_argnames="temperature")
hcl_level = jax.jit(hcl_level_loss)


def _unit(rng, *shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------

def np_contrast(p, n_data, eps=1e-7):
  """RepDistiller ContrastLoss, per example (its loss is the batch mean)."""
  p = np.float64(p)
  m = p.shape[1] - 1
  pn = 1.0 / n_data
  log_d1 = np.log(p[:, 0] / (p[:, 0] + m * pn + eps))
  log_d0 = np.log((m * pn) / (p[:, 1:] + m * pn + eps))
  return -(log_d1 + log_d0.sum(1))


def np_crd(s, t, rows_s, rows_t, z_s, z_t, n_data, temp):
  """ContrastMemory's outputs (v1 = student, memory_v2 = the teacher's bank) and CRDLoss."""
  out_s = np.exp(np.einsum("bkd,bd->bk", rows_t, s) / temp) / z_s
  out_t = np.exp(np.einsum("bkd,bd->bk", rows_s, t) / temp) / z_t
  return np_contrast(out_s, n_data) + np_contrast(out_t, n_data)


def np_log_softmax(x, axis):
  x = x - x.max(axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis, keepdims=True))


def np_info_nce(a, p, negs, temp):
  logits = np.concatenate([(a * p).sum(1, keepdims=True), a @ negs.T], 1) / temp
  return -np_log_softmax(logits, 1)[:, 0]


def np_inbatch(s, t, temp):
  logits = s @ t.T / temp
  idx = np.arange(len(s))
  return -np_log_softmax(logits, 1)[idx, idx] - np_log_softmax(logits, 0)[idx, idx]


def np_adaptive_pool(x, l):
  """torch adaptive_avg_pool2d (NHWC): bin i spans floor(i*H/l) .. ceil((i+1)*H/l)."""
  b, h, w, c = x.shape
  out = np.zeros((b, l, l, c))
  for i in range(l):
    for j in range(l):
      h0, h1 = (i * h) // l, int(np.ceil((i + 1) * h / l))
      w0, w1 = (j * w) // l, int(np.ceil((j + 1) * w / l))
      out[:, i, j] = x[:, h0:h1, w0:w1].mean((1, 2))
  return out


def np_hcl_level(fs, ft):
  """mdistiller hcl_loss for one level, per example (F.mse_loss 'mean' is the batch mean)."""
  mse = lambda a, b: ((a - b) ** 2).reshape(len(a), -1).mean(1)
  loss, cnt, tot = mse(fs, ft), 1.0, 1.0
  for l in [4, 2, 1]:
    if l >= fs.shape[1]:
      continue
    cnt /= 2.0
    loss = loss + mse(np_adaptive_pool(fs, l), np_adaptive_pool(ft, l)) * cnt
    tot += cnt
  return loss / tot


# ---------------------------------------------------------------------------
# CRD's NCE loss
# ---------------------------------------------------------------------------

def test_contrast_loss_matches_repdistiller_values_and_gradients():
  rng = np.random.default_rng(0)
  p = rng.uniform(0.01, 2.0, size=(3, 6))  # positive in column 0, K = 5
  np.testing.assert_allclose(contrast(p.astype(np.float32), num_examples=20), np_contrast(p, 20), rtol=RTOL)
  g = jax.jit(jax.grad(lambda x: contrast_loss(x, 20).sum()))(p.astype(np.float32))
  np.testing.assert_allclose(g, numerical_grad(lambda x: np_contrast(x, 20).sum(), p, h=1e-6), rtol=1e-3, atol=1e-5)


def test_contrast_loss_falls_as_the_positive_rises_and_the_negatives_fall():
  base = np.full((1, 9), 0.5, np.float32)
  losses = [float(contrast(np.r_[p, [0.5] * 8][None].astype(np.float32), num_examples=100)[0])
            for p in (0.1, 0.5, 1.0, 5.0)]
  assert np.all(np.diff(losses) < 0)
  lower_negs = base.copy()
  lower_negs[:, 1:] = 0.1
  assert float(contrast(lower_negs, num_examples=100)[0]) < float(contrast(base, num_examples=100)[0])


def test_crd_loss_matches_the_reference_memory_and_loss_with_gradients_to_both_embeddings():
  rng = np.random.default_rng(1)
  b, k, d, n = 3, 4, 5, 30
  s, t = _unit(rng, b, d), _unit(rng, b, d)
  rows_s, rows_t = _unit(rng, b, k + 1, d), _unit(rng, b, k + 1, d)
  z_s, z_t, temp = 7.0, 11.0, 0.5
  ref = np_crd(s, t, rows_s, rows_t, z_s, z_t, n, temp)
  f32 = lambda x: np.float32(x)
  out = crd(f32(s), f32(t), f32(rows_s), f32(rows_t), z_student=z_s, z_teacher=z_t, num_examples=n, temperature=temp)
  np.testing.assert_allclose(out, ref, rtol=RTOL)
  # the paper's temperature, too
  np.testing.assert_allclose(
      crd(f32(s), f32(t), f32(rows_s), f32(rows_t), z_student=z_s, z_teacher=z_t, num_examples=n, temperature=0.07),
      np_crd(s, t, rows_s, rows_t, z_s, z_t, n, 0.07), rtol=1e-3)
  loss = lambda a, c: crd_loss(a, c, f32(rows_s), f32(rows_t), z_student=z_s, z_teacher=z_t, num_examples=n,
                               temperature=temp).sum()
  gs, gt = jax.jit(jax.grad(loss, argnums=(0, 1)))(f32(s), f32(t))
  np.testing.assert_allclose(gs, numerical_grad(lambda x: np_crd(x, t, rows_s, rows_t, z_s, z_t, n, temp).sum(), s),
                             rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(gt, numerical_grad(lambda x: np_crd(s, x, rows_s, rows_t, z_s, z_t, n, temp).sum(), t),
                             rtol=1e-3, atol=1e-5)
  # the memory rows are constants
  g_rows = jax.jit(jax.grad(lambda r: crd_loss(f32(s), f32(t), r, r, z_student=z_s, z_teacher=z_t, num_examples=n,
                                               temperature=temp).sum()))(f32(rows_s))
  assert float(jnp.abs(g_rows).max()) == 0.0


# ---------------------------------------------------------------------------
# InfoNCE: queue and in-batch
# ---------------------------------------------------------------------------

def test_info_nce_and_queue_loss_match_the_reference_with_gradients():
  rng = np.random.default_rng(2)
  s, t = _unit(rng, 4, 6), _unit(rng, 4, 6)
  qs, qt = _unit(rng, 7, 6), _unit(rng, 7, 6)
  f32 = np.float32
  np.testing.assert_allclose(info_nce(f32(s), f32(t), f32(qt), temperature=0.07), np_info_nce(s, t, qt, 0.07),
                             rtol=RTOL, atol=ATOL)
  ref = lambda a, c: np_info_nce(a, c, qt, 0.2) + np_info_nce(c, a, qs, 0.2)
  np.testing.assert_allclose(queue_nce(f32(s), f32(t), f32(qs), f32(qt), temperature=0.2), ref(s, t), rtol=RTOL)
  gs, gt = jax.jit(jax.grad(lambda a, c: queue_info_nce_loss(a, c, qs, qt, 0.2).sum(), argnums=(0, 1)))(f32(s), f32(t))
  np.testing.assert_allclose(gs, numerical_grad(lambda x: ref(x, t).sum(), s), rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(gt, numerical_grad(lambda x: ref(s, x).sum(), t), rtol=1e-3, atol=1e-5)
  g_queue = jax.jit(jax.grad(lambda q: queue_info_nce_loss(s, t, q, q, 0.2).sum()))(f32(qs))
  assert float(jnp.abs(g_queue).max()) == 0.0


def test_inbatch_info_nce_matches_the_reference_with_gradients():
  rng = np.random.default_rng(3)
  s, t = _unit(rng, 5, 4), _unit(rng, 5, 4)
  np.testing.assert_allclose(inbatch(np.float32(s), np.float32(t), temperature=0.07), np_inbatch(s, t, 0.07),
                             rtol=RTOL, atol=ATOL)
  gs, gt = jax.jit(jax.grad(lambda a, c: inbatch_info_nce_loss(a, c, 0.3).sum(), argnums=(0, 1)))(np.float32(s),
                                                                                           np.float32(t))
  np.testing.assert_allclose(gs, numerical_grad(lambda x: np_inbatch(x, t, 0.3).sum(), s), rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(gt, numerical_grad(lambda x: np_inbatch(s, x, 0.3).sum(), t), rtol=1e-3, atol=1e-5)


def test_inbatch_info_nce_properties():
  rng = np.random.default_rng(4)
  b = 8
  # every embedding the same: each direction is a uniform choice among B, log B
  same = np.tile(_unit(rng, 1, 16), (b, 1)).astype(np.float32)
  np.testing.assert_allclose(inbatch(same, same, temperature=0.07), np.full(b, 2 * np.log(b)), rtol=1e-5)
  # orthonormal embeddings, aligned: softmax of (1/τ on the diagonal, 0 elsewhere)
  eye = np.eye(b, dtype=np.float32)
  np.testing.assert_allclose(inbatch(eye, eye, temperature=0.5), np.full(b, 2 * np.log1p((b - 1) * np.exp(-2.0))),
                             rtol=1e-5)
  # permuting the batch consistently permutes the per-example values
  s, t = _unit(rng, b, 16).astype(np.float32), _unit(rng, b, 16).astype(np.float32)
  perm = rng.permutation(b)
  np.testing.assert_allclose(inbatch(s[perm], t[perm], temperature=0.07), inbatch(s, t, temperature=0.07)[perm],
                             rtol=1e-5)
  # aligned pairs cost less than shuffled ones
  noisy = (s + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
  noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
  aligned = float(inbatch(s, noisy, temperature=0.07).mean())
  shuffled = float(inbatch(s, noisy[np.roll(np.arange(b), 1)], temperature=0.07).mean())
  assert aligned < shuffled


# ---------------------------------------------------------------------------
# HCL
# ---------------------------------------------------------------------------

def test_adaptive_avg_pool_is_torchs_including_overlapping_bins():
  x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
  out = adaptive_avg_pool(x, 2)[0, ..., 0]  # bins rows/cols {0,1} and {1,2}
  np.testing.assert_allclose(out, [[(0 + 1 + 3 + 4) / 4, (1 + 2 + 4 + 5) / 4],
                                  [(3 + 4 + 6 + 7) / 4, (4 + 5 + 7 + 8) / 4]])
  y = np.random.default_rng(5).normal(size=(2, 6, 6, 3))
  np.testing.assert_allclose(adaptive_avg_pool(np.float32(y), 4), np_adaptive_pool(y, 4), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("h", [1, 2, 6, 8])
def test_hcl_matches_mdistiller_with_gradients(h):
  rng = np.random.default_rng(h)
  fs, ft = rng.normal(size=(2, h, h, 3)), rng.normal(size=(2, h, h, 3))
  np.testing.assert_allclose(hcl_level(np.float32(fs), np.float32(ft)), np_hcl_level(fs, ft), rtol=RTOL, atol=ATOL)
  g_s, g_t = jax.jit(jax.grad(lambda a, b: hcl_level_loss(a, b).sum(), argnums=(0, 1)))(np.float32(fs), np.float32(ft))
  np.testing.assert_allclose(g_s, numerical_grad(lambda x: np_hcl_level(x, ft).sum(), fs), rtol=1e-3, atol=1e-6)
  assert float(jnp.abs(g_t).max()) == 0.0


def test_hcl_sums_levels_and_is_zero_for_equal_features():
  rng = np.random.default_rng(6)
  a, b = rng.normal(size=(2, 8, 8, 4)).astype(np.float32), rng.normal(size=(2, 1, 1, 5)).astype(np.float32)
  c, d = rng.normal(size=a.shape).astype(np.float32), rng.normal(size=b.shape).astype(np.float32)
  np.testing.assert_allclose(hcl_loss([a, b], [c, d]), np_hcl_level(a, c) + np_hcl_level(b, d), rtol=RTOL)
  np.testing.assert_array_equal(hcl_loss([a, b], [a, b]), np.zeros(2))
  with pytest.raises(ValueError, match="HCL needs NHWC maps of equal shapes"):
    hcl_loss([a], [a[:, :4]])


# ---------------------------------------------------------------------------
# memory bank and queue
# ---------------------------------------------------------------------------

def _call(method, params, state, s_feat, t_feat, index, step=0, seed=0):
  y = np.zeros(len(index), np.int32)
  batch = {"label": y, "index": jnp.asarray(index, jnp.int32), "step": jnp.asarray(step),
           "key": jax.random.key(seed), "method_state": state}
  logits = jnp.zeros((len(index), 10))
  return method(logits, {"pre_logits": s_feat}, (logits, {"pre_logits": t_feat}), batch, params)


def _shapes(d):
  return {"pre_logits": jax.ShapeDtypeStruct((2, d), jnp.float32)}


def test_memory_update_is_a_normalized_momentum_step_of_the_positives_only():
  rng = np.random.default_rng(7)
  memory = init_memory(jax.random.key(0), 10, 8)
  np.testing.assert_allclose(jnp.linalg.norm(memory, axis=1), 1.0, rtol=1e-5)
  emb = _unit(rng, 3, 8).astype(np.float32)
  index = np.array([4, 0, 7])
  new = np.asarray(update_memory(memory, jnp.asarray(index), emb, 0.5))
  ref = 0.5 * np.asarray(memory)[index] + 0.5 * emb
  np.testing.assert_allclose(new[index], ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5)
  others = np.setdiff1d(np.arange(10), index)
  np.testing.assert_array_equal(new[others], np.asarray(memory)[others])


def test_crd_step_updates_the_banks_at_the_batch_index_and_fixes_z_after_the_first_step():
  method = make_method("crd", nce_k=8, feat_dim=16)
  params, state = init_method(method, jax.random.key(0), _shapes(12), _shapes(20), 32)
  assert state["memory_student"].shape == state["memory_teacher"].shape == (32, 16)
  assert not bool(state["z_fixed"])
  call = jax.jit(lambda p, st, s, t, i, seed: _call(method, p, st, s, t, i, seed=seed))
  rng = np.random.default_rng(8)
  index = np.array([3, 17, 30, 5])
  loss, terms, new = call(params, state, rng.normal(size=(4, 12)).astype(np.float32),
                          rng.normal(size=(4, 20)).astype(np.float32), index, 0)
  assert np.all(np.isfinite(loss)) and np.all(np.isfinite(terms["crd"]))
  others = np.setdiff1d(np.arange(32), index)
  for bank in ("memory_student", "memory_teacher"):
    old_b, new_b = np.asarray(state[bank]), np.asarray(new[bank])
    assert np.all(np.abs(new_b[index] - old_b[index]).max(axis=1) > 1e-3)
    np.testing.assert_allclose(np.linalg.norm(new_b, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(new_b[others], old_b[others])
  assert bool(new["z_fixed"]) and float(new["z_student"]) > 0 and float(new["z_teacher"]) > 0
  _, _, newer = call(params, new, rng.normal(size=(4, 12)).astype(np.float32),
                     rng.normal(size=(4, 20)).astype(np.float32), np.array([0, 1, 2, 3]), 1)
  assert float(newer["z_student"]) == float(new["z_student"]) and float(newer["z_teacher"]) == float(new["z_teacher"])
  # the bank rows and Z are constants for the gradient; the embeddings are learned on both sides
  loss_of = lambda p: _call(method, p, new, jnp.ones((4, 12)), jnp.ones((4, 20)), index)[0].sum()
  grads = jax.jit(jax.grad(loss_of))(params)
  assert float(jnp.abs(grads["student"]["kernel"]).max()) > 0 and float(jnp.abs(grads["teacher"]["kernel"]).max()) > 0


def test_crd_queue_replaces_the_oldest_entries_and_wraps_around():
  method = make_method("crd_queue", queue_size=6, feat_dim=4)
  params, state = init_method(method, jax.random.key(0), _shapes(5), _shapes(7), 100)
  rng = np.random.default_rng(9)
  s1, t1 = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 7)).astype(np.float32)
  call = jax.jit(lambda p, st, s, t: _call(method, p, st, s, t, np.arange(4)))
  _, terms, st1 = call(params, state, s1, t1)
  assert int(st1["pointer"]) == 4 and np.all(np.isfinite(terms["crd"]))
  np.testing.assert_allclose(jnp.linalg.norm(st1["queue_student"][:4], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(st1["queue_teacher"][4:], state["queue_teacher"][4:])
  _, _, st2 = call(params, st1, s1[::-1], t1[::-1])
  assert int(st2["pointer"]) == 2  # slots 4, 5, 0, 1
  np.testing.assert_array_equal(st2["queue_student"][2:4], st1["queue_student"][2:4])
  q1, q2 = np.asarray(st1["queue_student"]), np.asarray(st2["queue_student"])
  np.testing.assert_allclose(q2[[4, 5, 0, 1]], q1[[3, 2, 1, 0]], rtol=1e-6)


# ---------------------------------------------------------------------------
# each method for one epoch on the CNN pair (the _smoke pattern of test_methods.py)
# ---------------------------------------------------------------------------

def _smoke(method, student="cnn16", teacher_name="cnn64", data=None):
  """One epoch of ``method`` from a random teacher; ``(step, last record, method params, fit result)``."""
  return smoke(method, student, teacher_name, data=data)


@pytest.mark.parametrize("name,hparams,term", [
    ("crd", dict(nce_k=32), "crd"),
    ("crd_queue", dict(queue_size=32), "crd"),
    ("crd_inbatch", {}, "crd"),
    ("reviewkd", dict(warmup_epochs=0, max_mid_channels=32), "reviewkd"),  # the smoke step has no run length
])
def test_methods_run_on_the_cnn_pair_with_one_compiled_step(name, hparams, term):
  step, record, method_params, result = _smoke(make_method(name, **hparams))
  assert step._cache_size() == 1
  assert np.isfinite(record["train_loss"]) and np.isfinite(record["train_ce"])
  assert np.isfinite(record[f"train_{term}"]) and record[f"train_{term}"] > 0
  if name == "reviewkd":  # block1, block2 and the 1x1 pre_logits level, mid = min(32, 256) channels
    abf = method_params["abf"]
    assert [a["conv2"]["kernel"].shape for a in abf] == [(3, 3, 32, 64), (3, 3, 32, 128), (3, 3, 32, 256)]
    assert abf[0]["conv1"]["kernel"].shape == (1, 1, 16, 32) and abf[0]["att"]["kernel"].shape == (1, 1, 64, 2)
    assert "att" not in abf[2]  # the deepest level has no residual to fuse
  else:
    assert method_params["student"]["kernel"].shape == (256, 128)
  if name == "crd":
    state = result.state.method_state
    assert bool(state["z_fixed"]) and state["memory_student"].shape == (64, 128)
    np.testing.assert_allclose(jnp.linalg.norm(state["memory_teacher"], axis=1), 1.0, rtol=1e-5)


def test_reviewkd_sizes_its_abfs_as_mdistiller():
  shapes = {name: feature_shapes(*split_model(create_model(name, num_classes=10, input_shape=(32, 32, 3))),
                                 (32, 32, 3)) for name in ("cnn16", "cnn64")}
  params = make_method("reviewkd").init(jax.random.key(0), shapes["cnn16"], shapes["cnn64"])
  abf = params["abf"]  # mid = min(512, 256): the deepest student tap's channels
  assert [a["conv1"]["kernel"].shape for a in abf] == [(1, 1, 16, 256), (1, 1, 32, 256), (1, 1, 256, 256)]
  assert [a["conv2"]["kernel"].shape for a in abf] == [(3, 3, 256, 64), (3, 3, 256, 128), (3, 3, 256, 256)]


def test_reviewkd_warmup_ramps_the_review_term_per_epoch_and_names_bad_lengths():
  rng = np.random.default_rng(10)
  s_feats = {"block1": jnp.asarray(rng.normal(size=(4, 4, 4, 3)), jnp.float32),
             "pre_logits": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}
  t_feats = {"block1": jnp.asarray(rng.normal(size=(4, 4, 4, 5)), jnp.float32),
             "pre_logits": jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)}
  shapes = lambda f: {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in f.items()}
  layers = ("block1", "pre_logits")
  params, _ = init_method(make_method("reviewkd", layers=layers), jax.random.key(0), shapes(s_feats),
                          shapes(t_feats), 4)
  logits, y = jnp.asarray(rng.normal(size=(4, 10)), jnp.float32), np.arange(4)

  def at(method, epoch=None, epochs=None):
    if epoch is None:
      return jax.jit(lambda: method(logits, s_feats, (logits, t_feats), {"label": y}, params))()
    batch = lambda e: {"label": y, "epoch": e, "epochs": epochs}  # the epoch traced, the run's length a Python int
    return jax.jit(lambda e: method(logits, s_feats, (logits, t_feats), batch(e), params))(jnp.float32(epoch))

  method = make_method("reviewkd", layers=layers, weight=1.0, warmup_epochs=10)
  _, terms = at(method, 0.0, 40)
  ce, hcl = terms["ce"], terms["reviewkd"]
  assert np.all(hcl > 0)
  # mdistiller's min(epoch / warmup, 1), epoch counted from 1: 1/10 in the first epoch, half in the 5th
  for epoch, w in ((0.0, 0.1), (4.5, 0.5), (9.0, 1.0), (20.0, 1.0)):
    np.testing.assert_allclose(at(method, epoch, 40)[0], ce + w * hcl, rtol=1e-5, err_msg=f"epoch {epoch}")
  default = make_method("reviewkd", layers=layers)  # weight 5, warm-up min(20, epochs)
  np.testing.assert_allclose(at(default, 0.0, 5)[0], ce + 5.0 * hcl / 5, rtol=1e-5)
  np.testing.assert_allclose(at(default, 0.0, 40)[0], ce + 5.0 * hcl / 20, rtol=1e-5)
  np.testing.assert_allclose(at(default, 19.0, 40)[0], ce + 5.0 * hcl, rtol=1e-5)
  with pytest.raises(ValueError, match=r"reviewkd: warmup_epochs=50 is longer than the run \(40 epochs\).*"
                                       r"--set method\.warmup_epochs=N with N <= 40"):
    at(make_method("reviewkd", layers=layers, warmup_epochs=50), 0.0, 40)
  with pytest.raises(ValueError, match=r"reviewkd: warmup_epochs is a schedule in epochs.*steps_per_epoch=, epochs="):
    at(default)
  np.testing.assert_allclose(at(make_method("reviewkd", layers=layers, warmup_epochs=0))[0], ce + 5.0 * hcl,
                             rtol=1e-5)
  with pytest.raises(ValueError, match="reviewkd: warmup_epochs must be None"):
    make_method("reviewkd", warmup_epochs=-2)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def test_crd_names_k_and_n_when_the_bank_is_too_small():
  method = make_method("crd")  # nce_k = 16384
  with pytest.raises(ValueError, match=r"nce_k=16384 .* N=64; use nce_k <= 63"):
    init_method(method, jax.random.key(0), _shapes(8), _shapes(8), 64)
  with pytest.raises(ValueError, match="nce_m"):
    make_method("crd", nce_m=1.0)


def test_crd_queue_names_a_batch_larger_than_the_queue():
  method = make_method("crd_queue", queue_size=2, feat_dim=4)
  params, state = init_method(method, jax.random.key(0), _shapes(5), _shapes(5), 10)
  with pytest.raises(ValueError, match=r"batch \(4\) is larger than the queue \(queue_size=2\)"):
    _call(method, params, state, jnp.ones((4, 5)), jnp.ones((4, 5)), np.arange(4))


def test_reviewkd_names_mismatched_spatial_sizes_and_layer_counts():
  with pytest.raises(ValueError, match="ReviewKD needs equal spatial sizes per level: student block1 is 16x16, "
                                       "teacher block2 is 8x8"):
    _smoke(make_method("reviewkd", layers=("block1", "pre_logits"), teacher_layers=("block2", "pre_logits"),
                       warmup_epochs=0))
  with pytest.raises(ValueError, match="2 student layers .* but 1 teacher"):
    make_method("reviewkd", layers=("block1", "block2"), teacher_layers=("block1",))
