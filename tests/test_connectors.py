"""The functional connectors methods build their learnable parts from, against NumPy."""

import jax
import numpy as np
import pytest

from kdjax.methods.connectors import batch_norm, batch_norm_init, conv, conv_init, conv_transpose


def _np_conv(x, k, stride, pad):
  """Cross-correlation as torch's Conv2d: NHWC input, HWIO kernel, zero padding."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, _, co = k.shape
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, co))
  for y in range(oh):
    for z in range(ow):
      patch = x[:, y * stride:y * stride + kh, z * stride:z * stride + kw, :]
      out[:, y, z] = np.einsum("bhwi,hwio->bo", patch, k)
  return out


def _np_conv_transpose(x, k, stride, pad):
  """torch's ConvTranspose2d by its definition: every input pixel scatters ``x·W`` onto
  ``[h·stride − pad + ky, w·stride − pad + kx]``."""
  b, h, w, _ = x.shape
  kh, kw, _, co = k.shape
  full = np.zeros((b, (h - 1) * stride + kh, (w - 1) * stride + kw, co))
  for i in range(h):
    for j in range(w):
      full[:, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum("bi,hwio->bhwo", x[:, i, j], k)
  return full[:, pad:full.shape[1] - pad, pad:full.shape[2] - pad]


@pytest.mark.parametrize("stride,pad,size", [(1, 1, 3), (2, 1, 3), (1, 0, 2)])
def test_conv_is_torchs_cross_correlation(stride, pad, size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  params = conv_init(jax.random.key(0), 3, 4, size)
  params["bias"] = rng.normal(size=4).astype(np.float32)
  ref = _np_conv(x.astype(np.float64), np.asarray(params["kernel"], np.float64), stride, pad) + params["bias"]
  np.testing.assert_allclose(conv(params, x, stride=stride, padding=pad), ref, rtol=1e-4, atol=1e-5)


def test_conv_transpose_is_torchs_and_doubles_the_map():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
  params = conv_init(jax.random.key(1), 3, 2, 4, bias=False)
  y = conv_transpose(params, x, stride=2, padding=1)
  assert y.shape == (2, 8, 10, 2)  # (H - 1)·2 − 2 + 4 = 2H
  ref = _np_conv_transpose(x.astype(np.float64), np.asarray(params["kernel"], np.float64), 2, 1)
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_batch_norm_uses_the_batch_statistics_per_channel():
  x = np.random.default_rng(2).normal(3.0, 2.0, size=(8, 3, 3, 4)).astype(np.float32)
  params = {"scale": np.array([1.0, 2.0, 0.5, 1.0], np.float32), "bias": np.array([0.0, 1.0, -1.0, 0.0], np.float32)}
  y = np.asarray(batch_norm(params, x), np.float64)
  np.testing.assert_allclose(y.mean((0, 1, 2)), params["bias"], atol=1e-5)
  np.testing.assert_allclose(y.std((0, 1, 2)), params["scale"], rtol=1e-3)
  assert batch_norm_init(4)["scale"].shape == (4,)
