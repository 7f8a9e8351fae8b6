"""Text classifiers: shapes, padding invariance, the BiLSTM's backward direction, masking in the
gradients, dropout, and the registry's input checks.

Models are tiny (vocab 50, dims 12-24) and each is compiled a handful of times. Their biases
are random, not Flax's zeros: with zero biases, an LSTM or GRU that reads zero (masked)
embeddings stays exactly at its zero state, so a recurrence that ran over padding would still
look padding-invariant at init.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kdjax.models import PAD_ID, apply_model, create_model, feature_shapes, get_model_spec, model_names, split_model
from kdjax.models.registry import check_input_shape, check_model_options

VOCAB, CLASSES, B, L, EXTRA = 50, 3, 6, 12, 7
SMALL = {"bilstm": dict(embed_dim=16, hidden=12), "gru_small": dict(embed_dim=16, hidden=12),
         "transformer_small": dict(embed_dim=16, mlp_dim=24)}
TEXT = sorted(SMALL)
# feats: (embed, sequence, pre_logits) widths at the SMALL sizes.
WIDTHS = {"bilstm": (16, 24, 24), "gru_small": (16, 12, 12), "transformer_small": (16, 16, 16)}


@functools.cache
def _model(name):
  """``(graphdef, params, rest)`` of a tiny model with random weights and nonzero biases.

  The parameters are drawn with numpy onto the model's abstract structure (``nnx.eval_shape``),
  so no initializer is compiled: weights N(0, 0.3^2), biases N(0, 0.2^2), LayerNorm scales
  1 + N(0, 0.2^2).
  """
  graphdef, abstract, rest = split_model(nnx.eval_shape(lambda: create_model(
      name, num_classes=CLASSES, input_shape=(L,), vocab_size=VOCAB, **SMALL[name])))
  rng = np.random.default_rng(7)

  def draw(path, a):
    noise = rng.standard_normal(a.shape).astype(np.float32)
    kind = next(k.key for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
    return jnp.asarray({"scale": 1.0 + 0.2 * noise, "bias": 0.2 * noise}.get(kind, 0.3 * noise))

  return graphdef, jax.tree.map_with_path(draw, abstract), rest


@functools.cache
def _forward(name, dtype=None):
  """Jitted inference pass ``params, tokens -> (logits, feats)``."""
  graphdef, _, rest = _model(name)
  return jax.jit(lambda params, x: apply_model(graphdef, params, rest, x, train=False, dtype=dtype)[:2])


def _tokens(lengths, length=L, seed=0, high=VOCAB):
  """Right-padded random sequences ``[len(lengths), length]`` of real ids in ``[1, high)``."""
  rng = np.random.default_rng(seed)
  x = np.full((len(lengths), length), PAD_ID, np.int32)
  for i, n in enumerate(lengths):
    x[i, :n] = rng.integers(1, high, n)
  return x


LENGTHS = [L, 7, 1, 3, 10, 5]


@pytest.mark.parametrize("name", TEXT)
def test_logits_and_features_have_their_shapes_and_are_zero_at_padding(name):
  graphdef, params, rest = _model(name)
  x = _tokens([*LENGTHS[:-1], 0])  # the last row is all padding: finite, not NaN
  logits, feats = _forward(name)(params, x)
  e, d, p = WIDTHS[name]
  assert logits.shape == (B, CLASSES) and logits.dtype == jnp.float32
  assert {k: v.shape for k, v in feats.items()} == {"embed": (B, L, e), "sequence": (B, L, d), "pre_logits": (B, p)}
  for v in (logits, *feats.values()):
    assert np.isfinite(v).all()
  pad = x == PAD_ID
  for k in ("embed", "sequence"):
    assert np.all(feats[k][pad] == 0) and np.all(np.abs(feats[k][~pad]).sum(-1) > 0)
  np.testing.assert_array_equal(feats["pre_logits"][-1], 0)
  shapes = feature_shapes(graphdef, params, rest, (L + EXTRA,), batch_size=2)
  assert {k: v.shape for k, v in shapes.items()} == {"embed": (2, L + EXTRA, e), "sequence": (2, L + EXTRA, d),
                                                     "pre_logits": (2, p)}


@pytest.mark.parametrize("name", TEXT)
def test_padding_never_changes_a_prediction_but_a_real_token_does(name):
  _, params, _ = _model(name)
  forward = _forward(name)
  x = _tokens(LENGTHS)
  logits, feats = forward(params, x)
  longer, feats_longer = forward(params, np.pad(x, ((0, 0), (0, EXTRA)), constant_values=PAD_ID))
  np.testing.assert_allclose(longer, logits, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(feats_longer["sequence"][:, :L], feats["sequence"], atol=1e-5, rtol=1e-5)
  # The check can fail: changing one real token (the first of a row) changes that row only.
  changed = x.copy()
  changed[1, 0] = x[1, 0] % (VOCAB - 1) + 1
  other, _ = forward(params, changed)
  assert np.abs(other[1] - logits[1]).max() > 1e-4
  np.testing.assert_allclose(np.delete(other, 1, 0), np.delete(logits, 1, 0), atol=1e-6, rtol=1e-6)


def test_bilstm_backward_direction_starts_at_the_last_real_token():
  _, params, _ = _model("bilstm")
  forward = _forward("bilstm")
  x = _tokens([0, 0, 0, 0, 9, L])  # the same batch shape as the other tests: one compile
  x[0, :3] = [5, 17, 23]
  x[1, :4] = [5, 17, 23, 9]
  x[2, :1] = [9]
  x[3, :2] = [5, 40]
  logits, feats = forward(params, x)
  unpadded, feats_unpadded = forward(params, x[:1, :3])
  np.testing.assert_allclose(feats["pre_logits"][0], feats_unpadded["pre_logits"][0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(logits[0], unpadded[0], atol=1e-5, rtol=1e-5)
  # Per direction: rows [a, b, c, z] and [z] share their last real token, so the backward half
  # (which has read only z there) agrees at it, while the forward half (which has read a, b, c
  # first) does not. A backward pass starting at the padding would have read 8 and 11 pads.
  seq, h = feats["sequence"], WIDTHS["bilstm"][1] // 2
  np.testing.assert_allclose(seq[1, 3, h:], seq[2, 0, h:], atol=1e-6, rtol=1e-6)
  assert np.abs(seq[1, 3, :h] - seq[2, 0, :h]).max() > 1e-3
  # ... and the forward half at a first token has read only that token.
  np.testing.assert_allclose(seq[0, 0, :h], seq[3, 0, :h], atol=1e-6, rtol=1e-6)
  assert np.abs(seq[0, 0, h:] - seq[3, 0, h:]).max() > 1e-3


def test_gru_reads_left_to_right():
  """The student's state at position t depends on tokens up to t only."""
  _, params, _ = _model("gru_small")
  x = _tokens([L] * B)
  x[1, :4] = x[0, :4]
  _, feats = _forward("gru_small")(params, x)
  np.testing.assert_allclose(feats["sequence"][0, :4], feats["sequence"][1, :4], atol=1e-6, rtol=1e-6)
  assert np.abs(feats["sequence"][0, 4:] - feats["sequence"][1, 4:]).max() > 1e-3


@pytest.mark.parametrize("name", TEXT)
def test_gradients_reach_used_tokens_only_and_stay_finite_on_all_padding_rows(name):
  graphdef, params, rest = _model(name)
  x = _tokens([*LENGTHS[:-1], 0], high=30)  # ids 30..49 never occur; the last row is all padding
  onehot = jax.nn.one_hot(np.arange(B) % CLASSES, CLASSES)

  def loss(params):
    logits = apply_model(graphdef, params, rest, x, train=False)[0]
    return -(onehot * jax.nn.log_softmax(logits)).sum()

  grads = jax.jit(jax.grad(loss))(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  rows = np.abs(np.asarray(grads["embed"]["embedding"][...])).sum(-1)
  used = np.unique(x[x != PAD_ID])
  assert np.all(rows[used] > 0)
  assert np.all(np.delete(rows, used) == 0)  # unused tokens and the padding row
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", TEXT)
def test_bf16_compute_returns_float32_close_to_fp32(name):
  _, params, _ = _model(name)
  x = _tokens(LENGTHS)
  ref, _ = _forward(name)(params, x)
  logits, feats = _forward(name, jnp.bfloat16)(params, x)
  assert logits.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in feats.values())
  assert np.isfinite(logits).all()
  np.testing.assert_allclose(logits, ref, atol=0.05 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("name", TEXT)
def test_dropout_acts_only_in_training(name):
  graphdef, params, rest = _model(name)
  x = _tokens(LENGTHS)
  train = jax.jit(lambda params, key: apply_model(graphdef, params, rest, x, train=True, rngs=key)[0])
  ref, _ = _forward(name)(params, x)
  a, b = train(params, jax.random.key(0)), train(params, jax.random.key(1))
  if name == "gru_small":  # the student has no dropout by default
    np.testing.assert_allclose(a, ref, atol=1e-6)
  else:
    assert not np.allclose(a, ref) and not np.allclose(a, b)
  np.testing.assert_array_equal(_forward(name)(params, x)[0], ref)


def test_registered_with_the_text_family_and_their_options():
  for name in TEXT:
    spec = get_model_spec(name)
    assert (spec.family, spec.inputs, spec.input_shape, spec.total_stride) == ("text", "text", (64,), None)
    check_model_options(name, {"vocab_size": 10, "embed_dim": 8, "dropout_rate": 0.0})
  check_model_options("bilstm", {"hidden": 8})
  check_model_options("transformer_small", {"mlp_dim": 8, "num_heads": 2, "depth": 1})
  assert {get_model_spec(n).inputs for n in model_names()} == {"image", "text"}
  assert get_model_spec("mlp800").inputs == "image" and get_model_spec("resnet8").inputs == "image"


def test_parameter_counts_at_vocab_10000():
  def count(name):
    model = nnx.eval_shape(lambda: create_model(name, num_classes=2, input_shape=(64,), vocab_size=10_000))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(split_model(model)[1]))
  lstm = 4 * (128 * 128 + 128 * 128 + 128)  # one direction: input and recurrent kernels, one bias
  gru = 3 * (64 * 64 + 64) + 3 * 64 * 64  # input kernel and bias, recurrent kernel
  block = 4 * (64 * 64 + 64) + 2 * 2 * 64 + (64 * 128 + 128) + (128 * 64 + 64)  # q k v out, 2 LayerNorms, MLP
  assert count("bilstm") == 10_000 * 128 + 2 * lstm + 256 * 2 + 2
  assert count("gru_small") == 10_000 * 64 + gru + 64 * 2 + 2
  assert count("transformer_small") == 10_000 * 64 + 2 * block + 2 * 64 + 64 * 2 + 2


def test_input_shape_errors_name_the_model_and_the_data():
  with pytest.raises(ValueError, match=r"model 'gru_small' reads token sequences of shape \(L,\).*"
                                       r"images of shape \(28, 28, 1\)"):
    create_model("gru_small", num_classes=10, input_shape=(28, 28, 1), vocab_size=VOCAB)
  with pytest.raises(ValueError, match=r"model 'mlp800' reads images \(H, W, C\), but the data has token "
                                       r"sequences of length 64"):
    create_model("mlp800", num_classes=10, input_shape=(64,))
  with pytest.raises(ValueError, match=r"model 'resnet8' reads images"):
    check_input_shape(get_model_spec("resnet8"), (32,))
  with pytest.raises(ValueError, match=r"model 'bilstm' reads token sequences.*length 0"):
    check_input_shape(get_model_spec("bilstm"), (0,))
  check_input_shape(get_model_spec("bilstm"), (7,))  # any length, not only the designed 64


def test_vocab_size_is_required_and_checked():
  with pytest.raises(ValueError, match="model 'gru_small' needs the option vocab_size"):
    create_model("gru_small", num_classes=10, input_shape=(64,))
  for bad in (1, 0, 2.5, True):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
      create_model("transformer_small", num_classes=10, input_shape=(64,), vocab_size=bad, embed_dim=8)
  with pytest.raises(ValueError, match="num_classes must be at least 2"):
    create_model("bilstm", num_classes=1, input_shape=(64,), vocab_size=VOCAB)
  with pytest.raises(ValueError, match=r"embed_dim \(10\) must be a multiple of num_heads \(4\)"):
    create_model("transformer_small", num_classes=2, input_shape=(64,), vocab_size=VOCAB, embed_dim=10)
