"""float32 accuracy of RKD for embeddings with a large common offset.

RKD's distances and angles come from Gram matrices (``|a|² + |b|² − 2a·b``), which cancel
catastrophically in float32 when every embedding of the batch sits near the same point far
from the origin. The loss is translation invariant, so kdjax centres each embedding on its
batch mean first; these tests compare value and student gradient, at offsets 0, 100 and
1000, with a float64 reference written directly from the definition (difference vectors,
no Gram matrix) and differentiated by central finite differences.
"""

import jax
import numpy as np
import pytest
from numeric import numerical_grad

from kdjax.losses import rkd_loss

B, D = 16, 8
OFFSETS = (0.0, 100.0, 1000.0)
# Measured with the centring: value 2.5e-8, gradient 1.3e-7 at every offset (the centred
# inputs are exact). Without it the gradient error is 2.4e-3 at offset 100 and 9.5e-2 at
# 1000, and the value's 7e-4 and 2e-2.
VALUE_RTOL, GRAD_RTOL = 1e-5, 1e-5

rkd_value_and_grad = jax.jit(jax.value_and_grad(rkd_loss))
rkd = jax.jit(rkd_loss)


def np_rkd(s, t, distance_weight=25.0, angle_weight=50.0):
  """RKD from its definition in float64: distances normalised by their mean over pairs i != j,
  cosines at e_i between e_j and e_k from unit difference vectors (0 where j = i or k = i),
  smooth-L1 (Huber, delta=1) means."""
  s, t = np.float64(s), np.float64(t)

  def dist(e):
    d = np.linalg.norm(e[None, :, :] - e[:, None, :], axis=-1)
    return d / d[~np.eye(len(e), dtype=bool)].mean()

  def cos(e):
    v = e[None, :, :] - e[:, None, :]  # v[i, j] = e_j - e_i
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    u = np.divide(v, n, out=np.zeros_like(v), where=n > 0)
    return np.einsum("ijd,ikd->ijk", u, u)

  def huber(a, b):
    z = np.abs(a - b)
    return np.where(z < 1.0, 0.5 * z * z, z - 0.5).mean()

  return distance_weight * huber(dist(s), dist(t)) + angle_weight * huber(cos(s), cos(t))


@pytest.fixture(scope="module")
def base():
  """Offset-free embeddings on a 2^-10 grid, so ``offset + x`` is exact in float32 for every
  offset here: each offset then holds the same point set, with one float64 reference."""
  rng = np.random.default_rng(0)
  s, t = (np.round(rng.normal(size=(B, D)) * 1024) / 1024 for _ in range(2))
  value = np_rkd(s, t)
  grad = numerical_grad(lambda x: np_rkd(x, t), s)
  return s, t, value, grad


@pytest.mark.parametrize("offset", OFFSETS)
def test_rkd_float32_value_and_gradient_match_float64_at_large_offsets(base, offset):
  s, t, ref_value, ref_grad = base
  s32, t32 = (offset + s).astype(np.float32), (offset + t).astype(np.float32)
  assert np.array_equal(np.float64(s32) - offset, s) and np.array_equal(np.float64(t32) - offset, t)
  value, grad = rkd_value_and_grad(s32, t32)
  assert value.dtype == np.float32 and grad.dtype == np.float32
  np.testing.assert_allclose(float(value), ref_value, rtol=VALUE_RTOL)
  err = np.abs(np.float64(grad) - ref_grad).max() / np.abs(ref_grad).max()
  assert err < GRAD_RTOL, f"gradient max relative error {err:.2e} at offset {offset}"


def test_rkd_value_is_translation_invariant_in_float32(base):
  s, t, ref_value, _ = base
  at_origin = float(rkd(s.astype(np.float32), t.astype(np.float32)))
  np.testing.assert_allclose(at_origin, ref_value, rtol=VALUE_RTOL)
  shift = 250.0 * np.arange(D) - 875.0  # per-feature shifts, integers, so exact in float32
  for s_shift, t_shift in ((shift, 0.0), (0.0, -shift), (shift, 100.0), (1000.0, -1000.0)):
    moved = rkd((s + s_shift).astype(np.float32), (t + t_shift).astype(np.float32))
    np.testing.assert_allclose(float(moved), at_origin, rtol=VALUE_RTOL)
