"""Decoder LM: causality, packed-document masks, attention probabilities, the KV cache against the
full forward, cached vs reference sampling, tied embeddings, errors, vmap over stacked parameters
and the registry entries.

Models are tiny (V=17, dim 16, depth 2, 2 heads, L <= 12); their parameters are perturbed with
noise so no bias or LayerNorm offset is exactly zero.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kdjax.models import (DecoderLM, apply_model, create_model, document_positions, generate, get_model_spec,
                          lm_apply, sequence_logprobs, split_model)
from kdjax.models.decoder import _sample

V, D, DEPTH, H, MAX_LEN = 17, 16, 2, 2, 12


@functools.cache
def _model(positions="rope", seed=0):
  """``(graphdef, params, rest)`` with numpy-drawn parameters on the abstract model (no initializer
  is compiled): matrices N(0, 1 / rows), biases N(0, 0.1^2), LayerNorm scales 1 + N(0, 0.1^2)."""
  graphdef, abstract, rest = split_model(nnx.eval_shape(lambda: DecoderLM(
      V, dim=D, depth=DEPTH, num_heads=H, mlp_dim=32, max_len=MAX_LEN, positions=positions, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(path, a):
    x = rng.standard_normal(a.shape).astype(np.float32)
    if len(a.shape) == 2:
      return jnp.asarray(x / np.sqrt(a.shape[0]))
    return jnp.asarray(0.1 * x + ("scale" in jax.tree_util.keystr(path)))

  return graphdef, jax.tree.map_with_path(draw, abstract), rest


def _tokens(b=2, length=10, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, length)), jnp.int32)


# One compiled program per (graphdef, shapes, options), shared by the tests and by both seeds.
_apply = jax.jit(lm_apply, static_argnums=0, static_argnames=("train", "dtype"))
_generate = jax.jit(generate, static_argnums=0, static_argnames=("steps", "temperature", "top_k", "use_cache"))


def _forward(positions="rope"):
  graphdef, params, rest = _model(positions)
  return lambda tokens, segments=None, pos=None: _apply(graphdef, params, rest, tokens, segments=segments,
                                                        positions=pos)


def test_logits_and_features_shapes():
  graphdef, params, rest = _model()
  model = nnx.merge(graphdef, params, rest)
  assert (model.num_layers, model.depth, model.dim, model.num_heads, model.vocab_size, model.max_len) == \
      (DEPTH, DEPTH, D, H, V, MAX_LEN)
  logits, feats = _forward()(_tokens())
  assert logits.shape == (2, 10, V) and logits.dtype == jnp.float32
  names = {"embed", "final"} | {f"{k}_{i}" for i in (1, 2) for k in ("hidden", "attn", "queries", "keys", "values")}
  assert set(feats) == names
  for name, x in feats.items():
    assert x.dtype == jnp.float32
    assert x.shape == ((2, H, 10, 10) if name.startswith("attn") else (2, 10, D)), name


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_changing_a_token_changes_no_earlier_logit(positions):
  a = _tokens()
  b = a.at[0, 6].set((a[0, 6] + 1) % V)
  la, lb = _forward(positions)(a)[0], _forward(positions)(b)[0]
  np.testing.assert_array_equal(la[0, :6], lb[0, :6])
  np.testing.assert_array_equal(la[1], lb[1])
  assert not np.allclose(la[0, 6:], lb[0, 6:])


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_packed_documents_match_each_document_alone(positions):
  tokens = _tokens(1, 6, seed=3)
  seg = jnp.array([[1, 1, 1, 2, 2, 2]], jnp.int32)
  pos = document_positions(seg)
  np.testing.assert_array_equal(pos, [[0, 1, 2, 0, 1, 2]])
  packed, _ = _forward(positions)(tokens, seg, pos)
  for lo, hi in ((0, 3), (3, 6)):
    alone, _ = _forward(positions)(tokens[:, lo:hi])
    np.testing.assert_allclose(packed[:, lo:hi], alone, atol=1e-5)
  if positions == "rope":  # rotary scores depend on i - j only: restarting positions changes nothing
    np.testing.assert_allclose(_forward(positions)(tokens, seg)[0], packed, atol=1e-5)


def test_attention_rows_are_distributions_over_visible_keys_and_padding_is_safe():
  tokens = _tokens(1, 6, seed=4)
  seg = jnp.array([[1, 1, 1, 2, 0, 0]], jnp.int32)
  logits, feats = _forward()(tokens, seg, document_positions(seg))
  assert np.isfinite(logits).all() and all(np.isfinite(x).all() for x in feats.values())
  s = np.asarray(seg[0])
  visible = np.tril(np.ones((6, 6), bool)) & (s[:, None] == s[None, :]) & (s[:, None] > 0)
  visible |= np.eye(6, dtype=bool) & (s[:, None] == 0)  # a padding query reads itself
  for i in (1, 2):
    probs = np.asarray(feats[f"attn_{i}"])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert (probs[:, :, ~visible] == 0).all()
    assert (probs[:, :, np.triu(np.ones((6, 6), bool), 1)] == 0).all()
  # the real tokens ignore the padding behind them
  np.testing.assert_allclose(logits[:, :3], _forward()(tokens[:, :3])[0], atol=1e-5)


@pytest.mark.parametrize("positions", ["rope", "learned"])
def test_decode_prefill_then_steps_matches_the_full_forward(positions):
  graphdef, params, rest = _model(positions)
  tokens = _tokens(seed=5)

  @jax.jit
  def run(params, tokens):
    model = nnx.merge(graphdef, params, rest)
    cache = model.init_cache(2, MAX_LEN)
    out, cache = model.decode(tokens[:, :5], cache)
    outs = [out]
    for t in range(5, 10):
      out, cache = model.decode(tokens[:, t:t + 1], cache)
      outs.append(out)
    return jnp.concatenate(outs, axis=1), cache["index"]

  cached, index = run(params, tokens)
  assert int(index) == 10
  np.testing.assert_allclose(cached, _forward(positions)(tokens)[0], atol=1e-5)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.0, None)])
def test_generate_with_and_without_cache_gives_identical_tokens(temperature, top_k):
  graphdef, params, rest = _model()
  prompt = _tokens(3, 4, seed=6)
  gen = lambda key, use_cache: _generate(graphdef, params, rest, prompt, key, steps=8, temperature=temperature,
                                         top_k=top_k, use_cache=use_cache)
  key = jax.random.key(0)
  cached, reference = gen(key, True), gen(key, False)
  assert cached.shape == (3, 12) and cached.dtype == jnp.int32
  np.testing.assert_array_equal(cached[:, :4], prompt)
  np.testing.assert_array_equal(cached, reference)
  np.testing.assert_array_equal(gen(key, True), cached)  # deterministic for a key
  if temperature == 0:  # greedy: each token is the argmax of the full forward at the previous position
    np.testing.assert_array_equal(cached[:, 4:], jnp.argmax(_forward()(cached)[0][:, 3:-1], axis=-1))
  else:
    assert not np.array_equal(gen(jax.random.key(1), True), cached)


def test_top_k_draws_only_among_the_k_largest_logits():
  logits = jnp.asarray(np.random.default_rng(0).standard_normal((4, V)), jnp.float32)
  draw = jax.jit(jax.vmap(lambda s: _sample(logits, jax.random.key(s), 2.0, 3)))(jnp.arange(64))
  top3 = np.argsort(np.asarray(logits), axis=-1)[:, -3:]
  assert all(set(np.asarray(draw[:, b])) == set(top3[b]) for b in range(4))
  np.testing.assert_array_equal(_sample(logits, None, 0.0, None), jnp.argmax(logits, axis=-1))


def test_embeddings_are_tied():
  _, params, _ = _model()
  assert [a.shape for a in jax.tree.leaves(params) if V in a.shape] == [(V, D)]  # the embedding only
  logits, feats = _forward()(_tokens())
  np.testing.assert_allclose(logits, feats["final"] @ params["embed"]["embedding"][...].T, atol=1e-5)


def test_errors_name_the_numbers():
  graphdef, params, rest = _model()
  model = nnx.merge(graphdef, params, rest)
  with pytest.raises(ValueError, match="length 13 is longer than the model's context max_len 12"):
    model(_tokens(1, 13))
  with pytest.raises(ValueError, match=r"segments must have the tokens' shape \(1, 6\), got \(1, 5\)"):
    model(_tokens(1, 6), segments=jnp.ones((1, 5), jnp.int32))
  with pytest.raises(ValueError, match=r"prompt length 5 \+ steps 8 = 13 .* max_len 12"):
    generate(graphdef, params, rest, _tokens(1, 5), jax.random.key(0), steps=8)
  with pytest.raises(ValueError, match="vocab_size"):
    DecoderLM(1, dim=D, depth=1, num_heads=H, mlp_dim=8, max_len=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"dim \(10\) must be a multiple of num_heads \(4\)"):
    DecoderLM(V, dim=10, depth=1, num_heads=4, mlp_dim=8, max_len=4, rngs=nnx.Rngs(0))


def test_lm_apply_and_generate_vmap_over_stacked_params():
  graphdef, p0, rest = _model(seed=0)
  _, p1, _ = _model(seed=1)
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), p0, p1)
  tokens, prompt, key = _tokens(), _tokens(3, 4, seed=6), jax.random.key(2)
  logits = jax.jit(jax.vmap(lambda p: lm_apply(graphdef, p, rest, tokens)[0]))(stacked)
  samples = jax.jit(jax.vmap(lambda p: generate(graphdef, p, rest, prompt, key, steps=8)))(stacked)
  assert not np.array_equal(samples[0], samples[1])
  for i, p in enumerate((p0, p1)):
    np.testing.assert_allclose(logits[i], _apply(graphdef, p, rest, tokens)[0], atol=1e-5)
    np.testing.assert_array_equal(samples[i], _generate(graphdef, p, rest, prompt, key, steps=8, temperature=1.0,
                                                        top_k=None, use_cache=True))


def test_sequence_logprobs_dropout_and_bf16():
  graphdef, params, rest = _model()
  tokens = _tokens()
  logits, _ = _forward()(tokens)
  lp = jax.jit(sequence_logprobs, static_argnums=0)(graphdef, params, rest, tokens)
  ref = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], axis=-1)[..., 0]
  np.testing.assert_allclose(lp, ref, atol=1e-5)
  low, feats = _apply(graphdef, params, rest, tokens, dtype=jnp.bfloat16)
  assert low.dtype == jnp.float32 and all(x.dtype == jnp.float32 for x in feats.values())
  np.testing.assert_allclose(low, logits, atol=0.25)
  g, p, r = split_model(DecoderLM(V, dim=D, depth=1, num_heads=H, mlp_dim=8, max_len=MAX_LEN, dropout_rate=0.5,
                                  rngs=nnx.Rngs(0)))
  train = lambda key: _apply(g, p, r, tokens, train=True, rngs=key)[0]
  np.testing.assert_array_equal(train(jax.random.key(0)), train(jax.random.key(0)))
  assert not np.allclose(train(jax.random.key(0)), train(jax.random.key(1)))


def test_registered_sizes_build_from_num_classes_and_input_length():
  for name in ("lm_tiny", "lm_small", "lm_base"):
    spec = get_model_spec(name)
    assert (spec.family, spec.inputs) == ("lm", "text")
  build = lambda **kw: nnx.eval_shape(lambda: create_model("lm_tiny", **kw))
  model = build(num_classes=V, input_shape=(MAX_LEN,), seed=3, dim=16, num_heads=2, mlp_dim=32)
  assert (model.vocab_size, model.max_len, model.dim, model.depth, model.position_encoding) == \
      (V, MAX_LEN, 16, 2, "rope")
  assert build(num_classes=V, input_shape=(8,), max_len=20, positions="learned").max_len == 20
  full = build(num_classes=1000, input_shape=(128,))
  assert full.num_params == 1000 * 64 + 2 * (4 * (64 * 64 + 64) + 4 * 64 + 64 * 256 + 256 + 256 * 64 + 64) + 2 * 64
  graphdef, params, rest = split_model(model)
  logits, feats, _ = jax.eval_shape(lambda p: apply_model(graphdef, p, rest, _tokens(2, 5), train=False), params)
  assert logits.shape == (2, 5, V) and feats["final"].shape == (2, 5, 16)  # the generic path
