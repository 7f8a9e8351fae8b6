"""Text classifiers over right-padded token ids: a BiLSTM teacher, a GRU student, a small Transformer.

Inputs are int32 token ids ``[B, L]`` (any ``L >= 1``), right-padded with ``PAD_ID``. Every
model masks the padding so that it never changes a prediction: the recurrent models pass each
sequence's real length to Flax's ``nnx.RNN`` (``seq_lengths``: the backward direction starts at
the last real token), the Transformer masks padded keys out of attention, and all of them pool
with a masked mean. ``feats`` holds ``"embed"`` ``[B, L, E]`` (what the sequence layers read),
``"sequence"`` ``[B, L, D]`` (the last sequence layer's output) and ``"pre_logits"`` ``[B, D]``
(the pooled vector the classifier reads); per-position features are zero at padding.

Token ids must lie in ``[0, vocab_size)``: JAX's embedding lookup returns NaN for ids outside.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PAD_ID = 0


def _check_vocab_size(vocab_size) -> int:
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
    raise ValueError(f"vocab_size must be an int >= 2 (padding id {PAD_ID} plus at least one token), "
                     f"got {vocab_size!r}")
  return int(vocab_size)


def padding_mask(tokens_BxL: jax.Array) -> jax.Array:
  """``True`` at real tokens, ``False`` at padding."""
  return tokens_BxL != PAD_ID


def masked_mean(x_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """Mean over the real positions, reduced in float32; an all-padding row gives zeros, not NaN."""
  m = mask_BxL[..., None].astype(jnp.float32)
  total = (x_BxLxD.astype(jnp.float32) * m).sum(axis=1)
  return (total / jnp.maximum(m.sum(axis=1), 1.0)).astype(x_BxLxD.dtype)


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """Vaswani et al. (2017)'s fixed position encodings ``[length, dim]``: sines then cosines over
  geometrically spaced frequencies. A constant for any length, so padding never shifts them."""
  half = (dim + 1) // 2
  freqs = np.exp(-math.log(10000.0) * np.arange(half) / max(half, 1))
  angles = np.arange(length)[:, None] * freqs[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)[:, :dim].astype(np.float32)


def _dropout_keys(rngs: jax.Array | None, n: int):
  return list(jax.random.split(rngs, n)) if rngs is not None else [None] * n


class RecurrentClassifier(nnx.Module):
  """Embedding -> (bi)directional LSTM or GRU -> masked mean over time -> dropout -> linear.

  The recurrence is Flax's ``nnx.RNN`` (wrapped in ``nnx.Bidirectional`` when ``bidirectional``)
  called with ``seq_lengths``, the number of real tokens: the backward direction flips only the
  real prefix of each row (``flax.nnx.nn.recurrent.flip_sequences``), so it starts at the last real
  token. Outputs at padded positions are computed but zeroed and left out of the pooled mean.
  """

  def __init__(self, vocab_size: int, num_classes: int, *, embed_dim: int, hidden: int, cell: str = "lstm",
               bidirectional: bool = False, dropout_rate: float = 0.0, rngs: nnx.Rngs):
    vocab_size = _check_vocab_size(vocab_size)
    cells = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}
    if cell not in cells:
      raise ValueError(f"unknown recurrent cell {cell!r}; use one of: {', '.join(cells)}")
    self.cell_kind = cell
    self.hidden = hidden
    self.bidirectional = bidirectional
    self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    # rngs=False: no RNG state (the carries start at zero, passed in explicitly), so the split
    # model's non-parameter state stays empty and a call never mutates it.
    make_rnn = lambda: nnx.RNN(cells[cell](embed_dim, hidden, rngs=rngs), rngs=False)
    if bidirectional:
      self.rnn = nnx.Bidirectional(make_rnn(), make_rnn(), rngs=False)
    else:
      self.rnn = make_rnn()
    self.dropout = nnx.Dropout(dropout_rate)
    self.head = nnx.Linear(hidden * (2 if bidirectional else 1), num_classes, rngs=rngs)

  def _zero_carry(self, batch: int):
    """Float32 even under bf16 compute: the cells' updates promote to it, so the state accumulates
    in float32 while the matmuls run in the compute dtype."""
    h = jnp.zeros((batch, self.hidden), jnp.float32)
    return (h, h) if self.cell_kind == "lstm" else h

  def __call__(self, tokens_BxL: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    mask = padding_mask(tokens_BxL)
    lengths = mask.sum(axis=-1).astype(jnp.int32)
    m = mask[..., None]
    x = jnp.where(m, self.embed(tokens_BxL), 0)
    carry = self._zero_carry(tokens_BxL.shape[0])
    if self.bidirectional:
      seq = self.rnn(x, initial_carry=(carry, carry), seq_lengths=lengths)
    else:
      seq = self.rnn(x, initial_carry=carry, seq_lengths=lengths)
    seq = jnp.where(m, seq, 0).astype(x.dtype)
    pooled = masked_mean(seq, mask)
    out = self.dropout(pooled, deterministic=not train, rngs=rngs)
    return self.head(out), {"embed": x, "sequence": seq, "pre_logits": pooled}


class EncoderBlock(nnx.Module):
  """Pre-LayerNorm Transformer encoder block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, dropout_rate: float, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads, dim, decode=False, keep_rngs=False, rngs=rngs)
    self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1 = nnx.Linear(dim, mlp_dim, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, dim, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  def __call__(self, x_BxLxD: jax.Array, attn_mask: jax.Array, *, train: bool, rngs: jax.Array | None):
    key_attn, key_mlp = _dropout_keys(rngs, 2)
    h = self.attn(self.ln1(x_BxLxD), mask=attn_mask, deterministic=True)
    x = x_BxLxD + self.dropout(h, deterministic=not train, rngs=key_attn)
    h = self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))
    return x + self.dropout(h, deterministic=not train, rngs=key_mlp)


class TransformerClassifier(nnx.Module):
  """Embedding (scaled by sqrt(dim)) + sinusoidal positions -> pre-LN encoder blocks -> LayerNorm
  -> masked mean -> linear.

  Attention masks padded keys for every query (a key-padding mask from ``nnx.make_attention_mask``),
  so a real token never reads padding; padded positions are never read by a real one, and their
  own outputs are zeroed and left out of the pooled mean.
  """

  def __init__(self, vocab_size: int, num_classes: int, *, embed_dim: int, num_heads: int, mlp_dim: int,
               depth: int, dropout_rate: float = 0.0, rngs: nnx.Rngs):
    vocab_size = _check_vocab_size(vocab_size)
    if num_heads < 1 or embed_dim % num_heads:
      raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
    self.embed_dim = embed_dim
    self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    self.blocks = nnx.List([EncoderBlock(embed_dim, num_heads, mlp_dim, dropout_rate=dropout_rate, rngs=rngs)
                            for _ in range(depth)])
    self.ln_final = nnx.LayerNorm(embed_dim, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)
    self.head = nnx.Linear(embed_dim, num_classes, rngs=rngs)

  def __call__(self, tokens_BxL: jax.Array, *, train: bool = False, rngs: jax.Array | None = None):
    mask = padding_mask(tokens_BxL)
    m = mask[..., None]
    keys = _dropout_keys(rngs, len(self.blocks) + 1)
    x = self.embed(tokens_BxL) * math.sqrt(self.embed_dim)
    x = x + jnp.asarray(sinusoidal_positions(tokens_BxL.shape[1], self.embed_dim), x.dtype)
    x = jnp.where(m, x, 0)
    feats = {"embed": x}
    x = self.dropout(x, deterministic=not train, rngs=keys[0])
    attn_mask = nnx.make_attention_mask(jnp.ones_like(mask), mask, dtype=jnp.bool_)  # [B, 1, L, L]
    for block, key in zip(self.blocks, keys[1:]):
      x = block(x, attn_mask, train=train, rngs=key)
    seq = jnp.where(m, self.ln_final(x), 0)
    pooled = masked_mean(seq, mask)
    feats.update(sequence=seq, pre_logits=pooled)
    return self.head(pooled), feats
