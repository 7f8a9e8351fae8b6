"""A small decoder-only Transformer language model with a functional KV cache and sampling.

:class:`DecoderLM` maps int32 token ids ``[B, L]`` to next-token logits ``[B, L, V]``: token
embedding (plus learned absolute positions, or rotary positions on queries and keys), pre-LN
blocks ``x + attn(ln(x))``, ``x + mlp(ln(x))`` (GELU MLP), a final LayerNorm and the tied output
``logits = h @ Eᵀ`` (``nnx.Embed.attend``; there is no separate output matrix).

Two options exist to express GPT-2 exactly (:mod:`kdjax.pretrained.gpt2`) and keep every other model
as it was: ``norm_eps``, the LayerNorms' epsilon (1e-6, Flax's default; GPT-2 uses 1e-5), and
``activation``, the MLP's GELU: ``"gelu_tanh"`` (the tanh approximation, ``jax.nn.gelu``'s default and
GPT-2's ``gelu_new``) or ``"gelu_erf"`` (the exact erf form, PyTorch's ``nn.GELU()``).

Packed sequences: ``segments`` ``[B, L]`` holds document ids (0 = padding). Query ``i`` reads key
``j`` iff ``j <= i``, ``segments[j] == segments[i]`` and ``segments[i] != 0``; a padding query reads
only itself, so every attention row is a proper distribution. ``positions`` ``[B, L]`` is each
token's position within its document (:func:`document_positions` derives it from ``segments``).
RoPE depends only on ``i - j`` within a document, so it gives the same logits with or without
restarted positions; learned positions need them.

RoPE is the half-split ("rotate half", GPT-NeoX / LLaMA) form with base 10000: per head, the
first ``dh / 2`` channels pair with the last ``dh / 2``.

``feats`` (all float32): ``"embed"`` ``[B, L, D]`` (token embedding, plus the learned positions),
``"hidden_1".."hidden_N"`` ``[B, L, D]`` (each block's output), ``"final"`` ``[B, L, D]`` (after
the final LayerNorm), ``"attn_1".."attn_N"`` ``[B, H, L, L]`` (attention probabilities), and
``"queries_i"``, ``"keys_i"``, ``"values_i"`` ``[B, L, D]``: block ``i``'s q, k, v projections
before the head split and BEFORE RoPE (the linear layers' outputs; head ``h`` is channels
``h * dh : (h + 1) * dh``).

The KV cache is an explicit pytree ``{"k", "v": [N, B, H, S, dh], "index": int32 scalar}`` (keys
stored after RoPE); :meth:`DecoderLM.decode` appends to it. :func:`generate` samples with it (or
without it, by full forward passes over a fixed buffer, the reference path) under ``lax.scan``.

Token ids must lie in ``[0, vocab_size)``: JAX's embedding lookup returns NaN for ids outside.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.models.functional import _set_compute_dtype
from kdjax.models.text import _check_vocab_size, _dropout_keys

POSITION_ENCODINGS = ("rope", "learned")
# The MLP activations: name -> function. "gelu_tanh" is what DecoderLM has always used.
ACTIVATIONS = {"gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
               "gelu_erf": lambda x: jax.nn.gelu(x, approximate=False)}
ROPE_BASE = 10000.0
_NEG = jnp.finfo(jnp.float32).min


def document_positions(segments_BxL: jax.Array) -> jax.Array:
  """``[B, L]`` int32: each token's position within its run of equal document ids (restarting at
  0 wherever ``segments`` changes), e.g. ``[1, 1, 1, 2, 2, 0]`` -> ``[0, 1, 2, 0, 1, 0]``."""
  seg = jnp.asarray(segments_BxL)
  idx = jnp.broadcast_to(jnp.arange(seg.shape[1], dtype=jnp.int32), seg.shape)
  starts = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)


def causal_document_mask(segments_BxL: jax.Array) -> jax.Array:
  """``[B, 1, L, L]`` bool: query ``i`` reads key ``j`` iff ``j <= i`` in the same (non-padding)
  document; a padding query reads only itself."""
  seg = jnp.asarray(segments_BxL)
  length = seg.shape[1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  real = (seg != 0)[:, :, None]
  same = seg[:, :, None] == seg[:, None, :]
  mask = (causal[None] & same & real) | (jnp.eye(length, dtype=bool)[None] & ~real)
  return mask[:, None]


def rope_angles(positions_BxL: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array]:
  """``(cos, sin)`` ``[B, 1, L, dh / 2]`` float32 for the half-split rotary embedding."""
  half = head_dim // 2
  freqs = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions_BxL.astype(jnp.float32)[..., None] * freqs
  return jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]


def apply_rope(x_BxHxLxd: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotates channel ``c`` with channel ``c + dh / 2`` by the position's angle, in float32."""
  cos, sin = rope
  x = x_BxHxLxd.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BxHxLxd.dtype)


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention with separate q, k, v, out projections; softmax in float32."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.query = nnx.Linear(dim, dim, rngs=rngs)
    self.key = nnx.Linear(dim, dim, rngs=rngs)
    self.value = nnx.Linear(dim, dim, rngs=rngs)
    self.out = nnx.Linear(dim, dim, rngs=rngs)

  def _heads(self, x_BxLxD: jax.Array) -> jax.Array:
    b, length, _ = x_BxLxD.shape
    return x_BxLxD.reshape(b, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

  def __call__(self, x_BxLxD: jax.Array, mask: jax.Array, rope, *, cache=None):
    """``mask`` ``[B or 1, 1, L, K]`` bool over the keys; ``rope`` None or ``(cos, sin)``.

    ``cache``: None, or ``(k, v, index)`` with ``k, v`` ``[B, H, S, dh]``: the new keys and values
    are written at slots ``index .. index + L - 1`` and the queries read all ``S`` slots (``K = S``).
    Returns ``(out, feats, new_kv)``; ``new_kv`` is None without a cache."""
    q, k, v = self.query(x_BxLxD), self.key(x_BxLxD), self.value(x_BxLxD)
    feats = {"queries": q, "keys": k, "values": v}
    qh, kh, vh = self._heads(q), self._heads(k), self._heads(v)
    if rope is not None:
      qh, kh = apply_rope(qh, rope), apply_rope(kh, rope)
    new_kv = None
    if cache is not None:
      ck, cv, index = cache
      ck = jax.lax.dynamic_update_slice(ck, kh.astype(ck.dtype), (0, 0, index, 0))
      cv = jax.lax.dynamic_update_slice(cv, vh.astype(cv.dtype), (0, 0, index, 0))
      new_kv = (ck, cv)
      kh, vh = ck.astype(qh.dtype), cv.astype(qh.dtype)
    scores = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32)
    scores = jnp.where(mask, scores / jnp.sqrt(jnp.float32(self.head_dim)), _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    h = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(vh.dtype), vh)
    b, _, length, _ = h.shape
    out = self.out(h.transpose(0, 2, 1, 3).reshape(b, length, -1))
    feats["attn"] = probs
    return out, feats, new_kv


class DecoderBlock(nnx.Module):
  """Pre-LayerNorm decoder block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))`` (GELU MLP; ``activation``
  names one of :data:`ACTIVATIONS`)."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, dropout_rate: float, norm_eps: float = 1e-6,
               activation: str = "gelu_tanh", rngs: nnx.Rngs):
    self.activation = activation
    self.ln1 = nnx.LayerNorm(dim, epsilon=norm_eps, rngs=rngs)
    self.attn = CausalSelfAttention(dim, num_heads, rngs=rngs)
    self.ln2 = nnx.LayerNorm(dim, epsilon=norm_eps, rngs=rngs)
    self.fc1 = nnx.Linear(dim, mlp_dim, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, dim, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  def __call__(self, x_BxLxD: jax.Array, mask: jax.Array, rope, *, train: bool = False,
               rngs: jax.Array | None = None, cache=None):
    key_attn, key_mlp = _dropout_keys(rngs, 2)
    h, feats, new_kv = self.attn(self.ln1(x_BxLxD), mask, rope, cache=cache)
    x = x_BxLxD + self.dropout(h, deterministic=not train, rngs=key_attn)
    h = self.fc2(ACTIVATIONS[self.activation](self.fc1(self.ln2(x))))
    return x + self.dropout(h, deterministic=not train, rngs=key_mlp), feats, new_kv


class DecoderLM(nnx.Module):
  """Decoder-only Transformer LM: ``__call__(tokens, *, segments, positions, train, rngs)`` returns
  ``(logits [B, L, V], feats)``, all float32; see the module docstring for masks and features.

  Dropout (``train=True`` with a key in ``rngs``) acts on the embeddings and on each block's attention
  and MLP outputs. ``norm_eps`` is every LayerNorm's epsilon; ``activation`` the MLP's, one of
  :data:`ACTIVATIONS`."""

  def __init__(self, vocab_size: int, *, dim: int, depth: int, num_heads: int, mlp_dim: int, max_len: int,
               positions: str = "rope", dropout_rate: float = 0.0, norm_eps: float = 1e-6,
               activation: str = "gelu_tanh", rngs: nnx.Rngs):
    vocab_size = _check_vocab_size(vocab_size)
    if num_heads < 1 or dim % num_heads:
      raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
    if positions not in POSITION_ENCODINGS:
      raise ValueError(f"unknown positions {positions!r}; use one of: {', '.join(POSITION_ENCODINGS)}")
    if positions == "rope" and (dim // num_heads) % 2:
      raise ValueError(f"rotary positions need an even head dimension, got dim {dim} / num_heads {num_heads} "
                       f"= {dim // num_heads}")
    if depth < 1 or max_len < 1:
      raise ValueError(f"depth and max_len must be at least 1, got depth {depth} and max_len {max_len}")
    if activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {activation!r}; use one of: {', '.join(ACTIVATIONS)}")
    if not norm_eps > 0:
      raise ValueError(f"norm_eps must be > 0, got {norm_eps}")
    self.vocab_size = vocab_size
    self.dim = dim
    self.depth = depth
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.mlp_dim = mlp_dim
    self.max_len = max_len
    self.position_encoding = positions
    self.norm_eps = float(norm_eps)
    self.activation = activation
    self.embed = nnx.Embed(vocab_size, dim, rngs=rngs)
    self.pos_embed = nnx.Embed(max_len, dim, rngs=rngs) if positions == "learned" else None
    self.blocks = nnx.List([DecoderBlock(dim, num_heads, mlp_dim, dropout_rate=dropout_rate, norm_eps=norm_eps,
                                         activation=activation, rngs=rngs)
                            for _ in range(depth)])
    self.ln_final = nnx.LayerNorm(dim, epsilon=norm_eps, rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate)

  @property
  def num_layers(self) -> int:
    return self.depth

  @property
  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(self, nnx.Param)))

  def _check_length(self, length: int, what: str = "sequence") -> None:
    if length > self.max_len:
      raise ValueError(f"{what} of length {length} is longer than the model's context max_len {self.max_len}")

  def _inputs(self, tokens_BxL: jax.Array, positions_BxL: jax.Array, train: bool, key):
    """Embeddings (+ learned positions) before dropout, and the rotary angles (or None)."""
    x = self.embed(tokens_BxL)
    rope = None
    if self.pos_embed is not None:
      x = x + self.pos_embed(positions_BxL)
    else:
      rope = rope_angles(positions_BxL, self.head_dim)
    return x, self.dropout(x, deterministic=not train, rngs=key), rope

  def __call__(self, tokens_BxL: jax.Array, *, segments: jax.Array | None = None,
               positions: jax.Array | None = None, train: bool = False, rngs: jax.Array | None = None):
    if tokens_BxL.ndim != 2:
      raise ValueError(f"tokens must be [B, L] token ids, got shape {tokens_BxL.shape}")
    b, length = tokens_BxL.shape
    self._check_length(length)
    for name, arr in (("segments", segments), ("positions", positions)):
      if arr is not None and tuple(arr.shape) != (b, length):
        raise ValueError(f"{name} must have the tokens' shape {(b, length)}, got {tuple(arr.shape)}")
    if segments is None:
      segments = jnp.ones((b, length), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    keys = _dropout_keys(rngs, self.depth + 1)
    embed, x, rope = self._inputs(tokens_BxL, positions, train, keys[0])
    mask = causal_document_mask(segments)
    f32 = lambda a: a.astype(jnp.float32)
    feats = {"embed": f32(embed)}
    for i, (block, key) in enumerate(zip(self.blocks, keys[1:]), start=1):
      x, f, _ = block(x, mask, rope, train=train, rngs=key)
      feats[f"hidden_{i}"] = f32(x)
      feats[f"attn_{i}"] = f32(f["attn"])
      for kind in ("queries", "keys", "values"):
        feats[f"{kind}_{i}"] = f32(f[kind])
    h = self.ln_final(x)
    feats["final"] = f32(h)
    return f32(self.embed.attend(h)), feats

  def init_cache(self, batch_size: int, length: int, dtype=jnp.float32) -> dict:
    """An empty cache for ``length`` positions: ``{"k", "v": [depth, B, H, length, dh], "index": 0}``."""
    if length < 1:
      raise ValueError(f"cache length must be at least 1, got {length}")
    self._check_length(length, "cache")
    shape = (self.depth, batch_size, self.num_heads, length, self.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "index": jnp.zeros((), jnp.int32)}

  def decode(self, tokens_BxT: jax.Array, cache: dict, *, positions: jax.Array | None = None):
    """Processes ``T`` new tokens at cache slots ``index .. index + T - 1`` (causal among them, reading
    every earlier slot); returns ``(logits [B, T, V] float32, new_cache)`` with ``index += T``.

    ``positions`` ``[B, T]`` defaults to the slots. Writing past the cache's end is not checked
    (``dynamic_update_slice`` clamps): size the cache for the whole generation."""
    b, t = tokens_BxT.shape
    size = cache["k"].shape[3]
    if t > size:
      raise ValueError(f"decode got {t} tokens but the cache holds only {size} positions")
    index = cache["index"]
    slots = index + jnp.arange(t, dtype=jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(slots, (b, t))
    elif tuple(positions.shape) != (b, t):
      raise ValueError(f"positions must have the tokens' shape {(b, t)}, got {tuple(positions.shape)}")
    _, x, rope = self._inputs(tokens_BxT, positions, False, None)
    mask = (jnp.arange(size)[None, :] <= slots[:, None])[None, None]  # [1, 1, T, S]
    ks, vs = cache["k"], cache["v"]
    for i, block in enumerate(self.blocks):
      x, _, (k, v) = block(x, mask, rope, cache=(ks[i], vs[i], index))
      ks = jax.lax.dynamic_update_index_in_dim(ks, k, i, axis=0)
      vs = jax.lax.dynamic_update_index_in_dim(vs, v, i, axis=0)
    logits = self.embed.attend(self.ln_final(x)).astype(jnp.float32)
    return logits, {"k": ks, "v": vs, "index": index + t}


def _merge(graphdef, params, rest, dtype=None) -> DecoderLM:
  model = nnx.merge(graphdef, params, rest, copy=True)
  if dtype is not None:
    _set_compute_dtype(model, dtype)
  return model


def lm_apply(graphdef, params, rest, tokens: jax.Array, *, segments: jax.Array | None = None,
             positions: jax.Array | None = None, train: bool = False, rngs: jax.Array | None = None, dtype=None):
  """Pure forward pass ``(logits [B, L, V], feats)``, both float32; ``dtype`` (e.g. ``jnp.bfloat16``)
  is the compute dtype, as in :func:`kdjax.models.functional.apply_model`."""
  model = _merge(graphdef, params, rest, dtype)
  logits, feats = model(tokens, segments=segments, positions=positions, train=train, rngs=rngs)
  return jax.tree.map(lambda a: a.astype(jnp.float32), (logits, feats))


def sequence_logprobs(graphdef, params, rest, tokens_BxL: jax.Array, *, segments: jax.Array | None = None,
                      positions: jax.Array | None = None, dtype=None) -> jax.Array:
  """``[B, L - 1]`` float32: ``log p(token[l + 1] | tokens[<= l])`` for each ``l``. With ``segments``,
  the first token of each document is scored from the previous document's context; mask it out."""
  logits, _ = lm_apply(graphdef, params, rest, tokens_BxL, segments=segments, positions=positions, dtype=dtype)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  return jnp.take_along_axis(logp, tokens_BxL[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]


def _sample(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
  """One token per row: argmax at ``temperature == 0``, else a categorical draw over the ``top_k``
  largest logits (all when None) divided by ``temperature``."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = logits_BxV.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(graphdef, params, rest, prompt_BxP: jax.Array, key: jax.Array, *, steps: int,
             temperature: float = 1.0, top_k: int | None = None, use_cache: bool = True) -> jax.Array:
  """``[B, P + steps]`` int32: the prompt followed by ``steps`` sampled tokens.

  Step ``s`` draws with ``jax.random.fold_in(key, s)``, so the cached path (prefill the prompt with
  :meth:`DecoderLM.decode`, then one token per ``lax.scan`` step) and the reference path
  (``use_cache=False``: a full forward over a fixed ``P + steps`` buffer each step, reading the logits
  at the last filled position) give the same tokens, up to floating-point near-ties.
  ``temperature`` (a Python float, 0 = greedy) and ``top_k`` are static."""
  model = _merge(graphdef, params, rest)
  b, p = prompt_BxP.shape
  total = p + steps
  if p < 1 or steps < 0:
    raise ValueError(f"generate needs a prompt of length >= 1 and steps >= 0, got {p} and {steps}")
  if total > model.max_len:
    raise ValueError(f"prompt length {p} + steps {steps} = {total} is longer than the model's context "
                     f"max_len {model.max_len}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k is not None and not 1 <= top_k <= model.vocab_size:
    raise ValueError(f"top_k must lie in [1, vocab_size {model.vocab_size}], got {top_k}")
  prompt = prompt_BxP.astype(jnp.int32)
  if steps == 0:
    return prompt
  sample = lambda logits, s: _sample(logits, jax.random.fold_in(key, s), temperature, top_k)

  if use_cache:
    logits, cache = model.decode(prompt, model.init_cache(b, total))
    first = sample(logits[:, -1], 0)

    def step(carry, s):
      tok, cache = carry
      logits, cache = _merge(graphdef, params, rest).decode(tok[:, None], cache)
      nxt = sample(logits[:, -1], s)
      return (nxt, cache), nxt

    _, rest_toks = jax.lax.scan(step, (first, cache), jnp.arange(1, steps))
    return jnp.concatenate([prompt, first[:, None], rest_toks.T], axis=1)

  buf = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt)

  def full_step(buf, s):
    logits, _ = _merge(graphdef, params, rest)(buf)
    last = jax.lax.dynamic_index_in_dim(logits, p - 1 + s, axis=1, keepdims=False)
    tok = sample(last, s)
    return jax.lax.dynamic_update_slice(buf, tok[:, None], (0, p + s)), None

  buf, _ = jax.lax.scan(full_step, buf, jnp.arange(steps))
  return buf
