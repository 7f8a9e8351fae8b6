"""The language-model step (kdjax.train.lm) and methods (kdjax.methods.token): the cached top-k teacher,
top-k with k = V, GKD at λ = 0, on-policy batches, cohorts, feature matching, and the errors before
training. The sharded step is checked on 8 simulated devices in tests/test_lm_sharding.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kdjax.data.topk_cache import open_topk_cache, write_topk_cache
from kdjax.losses.lm_feature import attention_mse, attention_relation_loss, hidden_mse
from kdjax.losses.token import teacher_topk
from kdjax.methods import init_method, make_method
from kdjax.models.decoder import DecoderLM, lm_apply
from kdjax.models.functional import feature_shapes, split_model
from kdjax.train.cohort import stack_states
from kdjax.train.lm import (
  check_lm_batch,
  check_lm_teacher,
  make_lm_step,
  on_policy_batch,
)
from kdjax.train.state import init_train_state

V, L, B = 19, 12, 4


def model(seed, dim=16, depth=2, heads=2, max_len=L):
  return DecoderLM(V, dim=dim, depth=depth, num_heads=heads, mlp_dim=2 * dim, max_len=max_len, rngs=nnx.Rngs(seed))


def batch(seed=0, n=B):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, V, (n, L + 1)).astype(np.int32)
  segments = np.ones((n, L), np.int32)
  segments[:, L // 2:] = 2  # two documents per row
  positions = np.concatenate([np.arange(L // 2), np.arange(L - L // 2)])[None].repeat(n, 0).astype(np.int32)
  mask = np.ones((n, L), np.float32)
  mask[:, L // 2 - 1] = 0  # the first document's last input predicts the next one's first token
  mask[0, -3:] = 0
  return {"tokens": tokens[:, :L], "targets": tokens[:, 1:], "segments": segments, "positions": positions,
          "mask": mask}


@pytest.fixture(scope="module")
def teacher():
  graphdef, params, rest = split_model(model(100, dim=24, depth=3, heads=4))
  return graphdef, {"params": params, "rest": rest}


def student_state(method, seed=0, teacher_vars=None, teacher_graphdef=None, tx=optax.sgd(0.5)):
  graphdef, params, rest = split_model(model(seed))
  t_shapes = {} if teacher_vars is None else feature_shapes(teacher_graphdef, teacher_vars["params"],
                                                            teacher_vars["rest"], (L,))
  m_params, m_state = init_method(method, jax.random.key(seed), feature_shapes(graphdef, params, rest, (L,)),
                                  t_shapes, 0)
  return graphdef, tx, init_train_state(params, rest, tx, jax.random.key(seed), m_params, m_state)


def run(method, teacher, steps=2, seed=0, **kw):
  t_graphdef, t_vars = teacher
  live = kw.pop("live", method.needs_teacher and not kw.get("cached_teacher"))
  graphdef, tx, state = student_state(method, seed, t_vars, t_graphdef)
  step = make_lm_step(graphdef, tx, method, teacher_graphdef=t_graphdef if live else None, **kw)
  batches = kw.get("cached_teacher") and kw.pop("cached_teacher")
  metrics = None
  for i in range(steps):
    b = batch(i)
    if batches:
      b["teacher_logprobs"], b["teacher_ids"] = batches.rows(np.arange(i * B, (i + 1) * B))
    state, metrics = step(state, t_vars if live else None, b)
  return state, metrics


def close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_topk_with_k_equal_to_the_vocabulary_is_the_full_loss_step(teacher):
  method = make_method("lm_kd")
  full, m_full = run(method, teacher)
  topk, m_topk = run(method, teacher, topk=V)
  close(full.params, topk.params, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(m_full["kd"], m_topk["kd"], rtol=1e-5)
  partial, _ = run(method, teacher, topk=3)  # and k < V is a different loss
  assert not np.allclose(np.asarray(jax.tree.leaves(partial.params)[0]), np.asarray(jax.tree.leaves(full.params)[0]))


def test_a_cached_topk_teacher_gives_the_same_steps_as_the_live_one(teacher, tmp_path):
  t_graphdef, t_vars = teacher
  k = 5
  lps, ids = [], []
  for i in range(2):
    b = batch(i)
    logits, _ = lm_apply(t_graphdef, t_vars["params"], t_vars["rest"], b["tokens"], segments=b["segments"],
                         positions=b["positions"])
    lp, idx = teacher_topk(logits, k)
    lps.append(np.asarray(lp))
    ids.append(np.asarray(idx))
  identity = {"teacher": "t", "k": k}
  write_topk_cache(tmp_path / "cache", np.concatenate(lps), np.concatenate(ids), identity=identity, rows_per_shard=3)
  cache = open_topk_cache(tmp_path / "cache", identity=identity)
  method = make_method("lm_kd", divergence="reverse_kl")
  live, m_live = run(method, teacher, topk=k)
  cached, m_cached = run(method, teacher, cached_teacher=cache)
  close(live.params, cached.params, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(m_live["loss"], m_cached["loss"], rtol=1e-6)
  with pytest.raises(ValueError, match=r"made for another teacher.*teacher: \"t\" -> \"u\""):
    open_topk_cache(tmp_path / "cache", identity={"teacher": "u", "k": k})


def test_gkd_with_no_student_samples_is_word_level_kd_and_with_all_it_trains_on_them(teacher):
  kd, m_kd = run(make_method("lm_kd", divergence="jsd"), teacher)
  gkd0, m0 = run(make_method("lm_gkd", student_fraction=0.0), teacher)
  close(kd.params, gkd0.params, rtol=0, atol=0)
  np.testing.assert_array_equal(m_kd["loss"], m0["loss"])
  gkd1, m1 = run(make_method("lm_gkd", student_fraction=1.0, prompt_len=4), teacher)
  assert float(m1["on_policy"]) == 1.0 and np.isfinite(float(m1["loss"]))
  assert not np.allclose(np.asarray(jax.tree.leaves(gkd1.params)[0]), np.asarray(jax.tree.leaves(kd.params)[0]))


def test_an_on_policy_batch_keeps_the_prompt_and_counts_only_the_samples():
  graphdef, params, rest = split_model(model(0))
  b = {k: jnp.asarray(v) for k, v in batch().items()}
  method = make_method("lm_gkd", student_fraction=1.0, prompt_len=5)
  out = on_policy_batch(graphdef, params, rest, b, jax.random.key(1), method.on_policy)
  assert set(out) == set(b) and all(out[k].shape == b[k].shape for k in b)
  np.testing.assert_array_equal(out["tokens"][:, :5], b["tokens"][:, :5])
  np.testing.assert_array_equal(out["targets"][:, :-1], out["tokens"][:, 1:])
  expected = (np.arange(L) >= 4) & (np.arange(L) < L - 1)
  np.testing.assert_array_equal(out["mask"], np.broadcast_to(expected, (B, L)).astype(np.float32))


def test_a_cohort_of_seeds_is_each_seed_trained_alone(teacher):
  t_graphdef, t_vars = teacher
  method = make_method("lm_kd")
  singles = [run(method, teacher, seed=s)[0] for s in (0, 1)]
  graphdef, tx, s0 = student_state(method, 0)
  _, _, s1 = student_state(method, 1)
  step = make_lm_step(graphdef, tx, method, teacher_graphdef=t_graphdef, cohort=True)
  state = stack_states([s0, s1])
  for i in range(2):
    state, _ = step(state, t_vars, batch(i))
  for k in range(2):
    close(jax.tree.map(lambda a, k=k: a[k], state.params), singles[k].params, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", ["lm_minilm", "lm_tinybert"])
def test_feature_methods_train_their_parts_and_log_their_terms(teacher, name):
  method = make_method(name, **({"relation_heads": 2} if name == "lm_minilm" else {}))
  _, _, before = student_state(method, 0, teacher[1], teacher[0])
  after, metrics = run(method, teacher)
  terms = ("relation_q", "relation_k", "relation_v") if name == "lm_minilm" else ("hidden", "attention")
  assert all(np.isfinite(float(metrics[t])) and float(metrics[t]) > 0 for t in terms)
  if name == "lm_tinybert":  # the projections learn with the student
    assert not np.allclose(np.asarray(before.method_params["hidden_1"]), np.asarray(after.method_params["hidden_1"]))


def test_feature_losses_vanish_on_identical_features_and_not_otherwise():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(2, 6, 12)), jnp.float32)
  seg = jnp.asarray([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0]])
  mask = (seg > 0).astype(jnp.float32)
  np.testing.assert_allclose(attention_relation_loss(x, x, seg, mask, heads=2), 0.0, atol=1e-6)
  assert np.all(np.asarray(attention_relation_loss(x, y, seg, mask, heads=2)) > 1e-3)  # widths may differ
  np.testing.assert_allclose(hidden_mse(x, x, mask), 0.0)
  a = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 2, 6, 6)), jnp.float32))
  np.testing.assert_allclose(attention_mse(a, a, seg, mask), 0.0)
  # A key the query cannot see (another document, the future) adds nothing.
  b = a.at[:, :, 0, 5].add(1.0)
  np.testing.assert_allclose(attention_mse(a, b, seg, mask), 0.0)
  with pytest.raises(ValueError, match="not a multiple of relation_heads=3"):
    attention_relation_loss(x, y, seg, mask, heads=3)


def test_errors_before_training():
  method = make_method("lm_kd")
  with pytest.raises(ValueError, match="cross-tokenizer distillation is not supported"):
    check_lm_teacher(method, teacher=True, cached=False, topk=None, vocab_size=259, teacher_vocab=50257)
  with pytest.raises(ValueError, match=r"k=300 must lie in 1\.\.259"):
    check_lm_teacher(method, teacher=True, cached=False, topk=300, vocab_size=259, teacher_vocab=259)
  with pytest.raises(ValueError, match="needs a live teacher to score the student's samples"):
    check_lm_teacher(make_method("lm_gkd"), teacher=False, cached=True, topk=None, vocab_size=259, teacher_vocab=259)
  with pytest.raises(ValueError, match="which a top-k teacher does not keep"):
    check_lm_teacher(make_method("lm_tinybert"), teacher=True, cached=False, topk=8, vocab_size=259,
                     teacher_vocab=259)
  b = batch()
  with pytest.raises(ValueError, match=r"length 12 are longer than the model's context \(8 tokens\)"):
    check_lm_batch(b, max_len=8)
  with pytest.raises(ValueError, match=r"mask has shape \(4, 11\), but tokens are \(4, 12\)"):
    check_lm_batch({**b, "mask": b["mask"][:, :-1]})
  with pytest.raises(ValueError, match="token id 19, outside the model's vocabulary of 19"):
    check_lm_batch({**b, "tokens": np.full_like(b["tokens"], V)}, vocab_size=V)
  # The step checks the same before it is traced, and the batch when it is.
  graphdef, tx, _ = student_state(make_method("lm_sft"))
  with pytest.raises(ValueError, match="needs a live teacher to score the student's samples"):
    make_lm_step(graphdef, tx, make_method("lm_gkd"), cached_teacher=True)
  t_graphdef = split_model(model(1))[0]
  step = make_lm_step(graphdef, tx, make_method("lm_gkd", student_fraction=1.0, prompt_len=L), teacher_graphdef=t_graphdef)
  _, _, state = student_state(make_method("lm_sft"))
  t_params, t_rest = split_model(model(1))[1:]
  with pytest.raises(ValueError, match=r"prompt_len 12 must be shorter than the rows \(12 tokens\)"):
    step(state, {"params": t_params, "rest": t_rest}, b)
  _, _, state = student_state(make_method("lm_sft"))
  with pytest.raises(ValueError, match=r"mask has shape \(4, 11\), but tokens are \(4, 12\)"):
    make_lm_step(graphdef, tx, make_method("lm_sft"))(state, None, {**b, "mask": b["mask"][:, :-1]})
  with pytest.raises(ValueError, match="unknown divergence 'kl'"):
    make_method("lm_kd", divergence="kl")
  with pytest.raises(ValueError, match="student_fraction"):
    make_method("lm_gkd", student_fraction=1.5)


def test_image_studies_and_sweeps_refuse_language_model_methods():
  from kdjax.config import validate_study
  from kdjax.presets import HINTON_MNIST
  from kdjax.sweep.grid import parse_grid
  with pytest.raises(ValueError, match="distils language models"):
    validate_study(dataclasses.replace(HINTON_MNIST, method="lm_kd"))
  with pytest.raises(ValueError, match="distil language models"):
    parse_grid(["method=hinton,lm_gkd"], HINTON_MNIST)
