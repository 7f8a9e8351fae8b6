"""Functional building blocks for a method's learnable parts (regressors, embeddings,
paraphrasers): plain parameter dicts and pure functions, NHWC, float32.

Batch normalization here always uses the statistics of the current batch: these
parts only run while training, so no running averages are kept.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kdjax.losses import l2_normalize


def normal_draws(key: jax.Array, shapes, stddevs) -> list[jax.Array]:
  """Independent zero-mean normal arrays of the given ``shapes`` and standard deviations, cut
  from one draw of their total size. On a CPU every distinct ``jax.random.normal`` shape
  compiles its own generator (about a second each); one draw compiles one, so a part with
  many kernels (FT's paraphraser and translator) starts in a fraction of the time."""
  shapes = [tuple(s) for s in shapes]
  sizes = [math.prod(s) for s in shapes]
  flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
  out, start = [], 0
  for shape, size, std in zip(shapes, sizes, stddevs):
    out.append(flat[start:start + size].reshape(shape) * std)
    start += size
  return out


def dense_init(key: jax.Array, d_in: int, d_out: int) -> dict[str, jax.Array]:
  """LeCun-normal kernel ``[d_in, d_out]`` and zero bias."""
  return {"kernel": jax.random.normal(key, (d_in, d_out), jnp.float32) / jnp.sqrt(d_in),
          "bias": jnp.zeros((d_out,), jnp.float32)}


def dense(params, x: jax.Array) -> jax.Array:
  """``x @ kernel + bias`` over the last axis (a 1x1 convolution on NHWC maps); no bias
  where ``params`` has none."""
  y = x.astype(jnp.float32) @ params["kernel"]
  return y + params["bias"] if "bias" in params else y


def embed(params, x: jax.Array) -> jax.Array:
  """RepDistiller's ``Embed``: ``normalize(W·flatten(x) + b)`` per example."""
  return l2_normalize(dense(params, x.reshape(x.shape[0], -1)))


def conv_init(key: jax.Array, c_in: int, c_out: int, kernel: int | tuple[int, int] = 3, *,
              bias: bool = True) -> dict[str, jax.Array]:
  """He-normal HWIO kernel (and a zero bias) for :func:`conv` / :func:`conv_transpose`."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  params = {"kernel": jax.random.normal(key, (kh, kw, c_in, c_out), jnp.float32) * jnp.sqrt(2.0 / (kh * kw * c_in))}
  if bias:
    params["bias"] = jnp.zeros((c_out,), jnp.float32)
  return params


def conv(params, x: jax.Array, *, stride: int = 1, padding: str | int = "SAME") -> jax.Array:
  """2-D convolution on NHWC maps; ``padding`` is ``"SAME"``, ``"VALID"`` or a pixel count."""
  pad = padding if isinstance(padding, str) else [(padding, padding)] * 2
  y = jax.lax.conv_general_dilated(x.astype(jnp.float32), params["kernel"], (stride, stride), pad,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + params["bias"] if "bias" in params else y


def conv_transpose(params, x: jax.Array, *, stride: int = 2, padding: int = 1) -> jax.Array:
  """Transposed convolution as torch's ``ConvTranspose2d(k, stride, padding)``: an
  ``H`` map becomes ``(H − 1)·stride − 2·padding + k``."""
  k = params["kernel"].shape[0]
  y = jax.lax.conv_general_dilated(x.astype(jnp.float32), params["kernel"][::-1, ::-1], (1, 1),
                                   [(k - 1 - padding, k - 1 - padding)] * 2, lhs_dilation=(stride, stride),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + params["bias"] if "bias" in params else y


def batch_norm_init(c: int) -> dict[str, jax.Array]:
  return {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}


def batch_norm(params, x: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Normalizes with the batch's own statistics over every axis but the last."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.var(x, axes)
  return (x - mean) * jax.lax.rsqrt(var + eps) * params["scale"] + params["bias"]

