"""ReviewKD's hierarchical context loss (Chen et al., "Distilling Knowledge via
Knowledge Review", CVPR 2021), following mdistiller's ``hcl_loss``
(``mdistiller/distillers/ReviewKD.py``).

Feature maps are NHWC; math in float32; the teacher's maps are under
``stop_gradient``. Values are per example (mdistiller's ``F.mse_loss(...,
reduction="mean")`` is the batch mean of them, every example having the same size).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from kdjax.losses.feature import adaptive_avg_pool

Array = jax.Array


def _mse(s: Array, t: Array) -> Array:
  return jnp.mean(((s - t) ** 2).reshape(s.shape[0], -1), axis=-1)


def hcl_level_loss(student_feat: Array, teacher_feat: Array, levels: Sequence[int] = (4, 2, 1)) -> Array:
  r"""Hierarchical context loss of one level, per example.

  .. math::
      L_i = \frac{\mathrm{MSE}(F^s_i, F^t_i) + \sum_{l} 2^{-k(l)}\,
            \mathrm{MSE}(\mathrm{pool}_l F^s_i, \mathrm{pool}_l F^t_i)}{1 + \sum_l 2^{-k(l)}}

  over the pyramid sizes ``l ∈ levels`` smaller than the map's height ``H``
  (mdistiller tests ``l >= h`` only), ``pool_l`` the adaptive average pooling
  to ``l×l`` and ``k(l) = 1, 2, …`` the rank of ``l`` among the sizes used:
  weights 1, ½, ¼, ⅛ for the full map and ``4×4``, ``2×2``, ``1×1`` on an 8×8 map.
  """
  s = jnp.asarray(student_feat).astype(jnp.float32)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_feat).astype(jnp.float32))
  if s.ndim != 4 or s.shape != t.shape:
    raise ValueError(f"HCL needs NHWC maps of equal shapes, got student {s.shape} and teacher {t.shape}")
  loss, cnt, tot = _mse(s, t), 1.0, 1.0
  for l in levels:
    if l >= s.shape[1]:
      continue
    cnt /= 2.0
    loss = loss + cnt * _mse(adaptive_avg_pool(s, l), adaptive_avg_pool(t, l))
    tot += cnt
  return loss / tot


def hcl_loss(student_feats: Sequence[Array], teacher_feats: Sequence[Array],
             levels: Sequence[int] = (4, 2, 1)) -> Array:
  r"""ReviewKD's HCL, per example: the sum over the tapped levels ``j`` of
  :func:`hcl_level_loss` ``(F^s_j, F^t_j)``, where ``F^s_j`` is the student's
  reviewed (ABF-fused) map and ``F^t_j`` the teacher's map at that level. Zero
  exactly when every pair is equal."""
  if len(student_feats) != len(teacher_feats) or not student_feats:
    raise ValueError(f"HCL needs as many student as teacher maps (at least one), got "
                     f"{len(student_feats)} and {len(teacher_feats)}")
  return sum(hcl_level_loss(s, t, levels) for s, t in zip(student_feats, teacher_feats))
