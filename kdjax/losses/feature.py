"""Feature- and relation-level distillation losses.

Spatial features are NHWC (``[B, H, W, C]``), embeddings ``[B, D]`` (anything
else is flattened per example). All math runs in float32 and the teacher's
argument is under ``stop_gradient``. Each function follows the reference
implementation collected in RepDistiller (Tian et al. 2020), which the
docstrings cite; where a loss couples the examples of a batch (SP, RKD, PKT,
CC) it returns a batch scalar, otherwise per-example values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _f32(x: Array) -> Array:
  return jnp.asarray(x).astype(jnp.float32)


def _teacher(x: Array) -> Array:
  return jax.lax.stop_gradient(_f32(x))


def l2_normalize(x: Array, axis: int = -1, eps: float = 1e-12) -> Array:
  """``x / max(‖x‖, eps)``, as torch's ``F.normalize``, with a finite gradient at ``x = 0``."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


def _flat(x: Array) -> Array:
  return x.reshape(x.shape[0], -1)


def _check_spatial(name: str, s: Array, t: Array) -> None:
  if s.ndim != 4 or t.ndim != 4:
    raise ValueError(f"{name} needs NHWC feature maps, got shapes {s.shape} and {t.shape}")
  if s.shape[1:3] != t.shape[1:3]:
    raise ValueError(f"{name} needs equal spatial sizes: student {s.shape[1]}x{s.shape[2]}, "
                     f"teacher {t.shape[1]}x{t.shape[2]} (pool one of them, or pick other layers)")


def hint_loss(student_regressed: Array, teacher_feat: Array) -> Array:
  r"""FitNets hint loss (Romero et al., ICLR 2015), per example: the mean squared error

  .. math::
      L_i = \frac{1}{|F|}\sum (r(F^s_i) - F^t_i)^2

  between the student's regressed features and the teacher's hint, over every
  non-batch axis (torch's ``MSELoss`` is the batch mean of this). The regressor
  is the method's learnable part (:func:`kdjax.methods.fitnet`).
  """
  s, t = _f32(student_regressed), _teacher(teacher_feat)
  if s.shape != t.shape:
    raise ValueError(f"hint loss needs equal shapes after the regressor: {s.shape} and {t.shape}")
  return jnp.mean(((s - t) ** 2).reshape(s.shape[0], -1), axis=-1)


def attention_map(feat: Array, p: int = 2) -> Array:
  r"""Spatial attention map of Zagoruyko & Komodakis (ICLR 2017), ``[B, H·W]``:
  the channel mean of ``f^p``, flattened and L2-normalized per example."""
  return l2_normalize(_flat(jnp.mean(_f32(feat) ** p, axis=-1)))


def attention_transfer_loss(student_feat: Array, teacher_feat: Array, p: int = 2) -> Array:
  r"""Attention transfer (AT, Zagoruyko & Komodakis 2017), per example.

  .. math::
      L_i = \frac{1}{HW}\big\|a(F^s_i) - a(F^t_i)\big\|_2^2,\quad
      a(F) = \frac{\mathrm{vec}(\tfrac1C\sum_c F_c^{p})}{\|\mathrm{vec}(\tfrac1C\sum_c F_c^{p})\|_2}

  Channel counts may differ; spatial sizes must match. RepDistiller weights it
  by β=1000.
  """
  _check_spatial("attention transfer", student_feat, teacher_feat)
  diff = attention_map(student_feat, p) - attention_map(_teacher(teacher_feat), p)
  return jnp.mean(diff**2, axis=-1)


def similarity_preserving_loss(student_feat: Array, teacher_feat: Array) -> Array:
  r"""Similarity-preserving KD (SP, Tung & Mori, ICCV 2019), batch scalar.

  .. math::
      G = \mathrm{rownorm}(F F^\top),\quad L = \frac{1}{B^2}\|G^t - G^s\|_F^2

  with ``F`` the ``[B, ·]`` flattened features. RepDistiller weights it by γ=3000.
  """
  s, t = _flat(_f32(student_feat)), _flat(_teacher(teacher_feat))
  g_s, g_t = l2_normalize(s @ s.T), l2_normalize(t @ t.T)
  b = s.shape[0]
  return jnp.sum((g_t - g_s) ** 2) / (b * b)


def _pdist(e: Array, eps: float = 1e-12) -> Array:
  sq = jnp.sum(e * e, axis=1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * e @ e.T, eps)
  return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, jnp.sqrt(d2))


def _mean_positive(x: Array) -> Array:
  pos = x > 0
  return jnp.sum(jnp.where(pos, x, 0.0)) / jnp.maximum(jnp.sum(pos), 1)


def _smooth_l1(a: Array, b: Array) -> Array:
  d = jnp.abs(a - b)
  return jnp.mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5))


def _angles(e: Array, d: Array, eps: float = 1e-12) -> Array:
  """``cos ∠(e_j − e_i, e_k − e_i)`` for all ``(i, j, k)``, flattened; 0 where ``e_j = e_i`` or ``e_k = e_i``.

  From the Gram matrix, ``(e_j − e_i)·(e_k − e_i) = G_jk − G_ij − G_ik + G_ii``,
  and the pairwise distances ``d``: O(B²D + B³) time and O(B³) memory instead of
  the O(B³D) of normalizing every difference vector. Equal rows (not just
  ``j = i``) are masked: their exact ``dots`` is 0, but the Gram form's rounding
  divided by the clamped distance would not be.
  """
  g = e @ e.T
  diag = jnp.diagonal(g)
  dots = g[None, :, :] - g[:, :, None] - g[:, None, :] + diag[:, None, None]
  norm = jnp.maximum(d, eps)
  same = jnp.all(e[:, None, :] == e[None, :, :], axis=-1)  # [i, j]: e_j == e_i, j == i included
  degenerate = same[:, :, None] | same[:, None, :]  # [i, j, k]: e_j == e_i or e_k == e_i
  cos = dots / (norm[:, :, None] * norm[:, None, :])
  return jnp.where(degenerate, 0.0, cos).reshape(-1)


def rkd_loss(student_emb: Array, teacher_emb: Array, *, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> Array:
  r"""Relational KD (RKD, Park et al., CVPR 2019): distance and angle terms, batch scalar.

  .. math::
      L = w_d\,\ell_\delta\big(\tfrac{d^s}{\mu^s}, \tfrac{d^t}{\mu^t}\big)
        + w_a\,\ell_\delta\big(\cos\angle^s_{ijk}, \cos\angle^t_{ijk}\big)

  ``d`` the pairwise Euclidean distances (``μ`` their mean over distinct
  pairs), ``∠_{ijk}`` the angle at ``e_i`` between ``e_j`` and ``e_k``,
  ``ℓ_δ`` the smooth-L1 (Huber, δ=1) mean. Invariant to translating or
  rescaling either embedding. Defaults: the paper's ``w_d=25, w_a=50``.

  Both embeddings are first centred on their batch mean, which leaves the loss
  unchanged (it is translation invariant) but keeps the Gram-matrix forms of the
  distances and angles from losing float32 precision to a large common offset.
  """
  s, t = _flat(_f32(student_emb)), _flat(_teacher(teacher_emb))
  s, t = s - jnp.mean(s, axis=0), t - jnp.mean(t, axis=0)
  d_s, d_t = _pdist(s), _pdist(t)
  loss_d = _smooth_l1(d_s / _mean_positive(d_s), d_t / _mean_positive(d_t))
  loss_a = _smooth_l1(_angles(s, d_s), _angles(t, d_t))
  return distance_weight * loss_d + angle_weight * loss_a


def pkt_loss(student_emb: Array, teacher_emb: Array, eps: float = 1e-7) -> Array:
  r"""Probabilistic knowledge transfer (PKT, Passalis & Tefas, ECCV 2018), batch scalar.

  Cosine similarities mapped to ``[0, 1]`` and normalized per row into
  conditional probabilities ``P(j | i)``; the loss is the mean over ``(i, j)``
  of ``p^t log((p^t + ε) / (p^s + ε))`` (a KL divergence, divided by ``B²``).
  """
  def conditional(x):
    x = x / (jnp.linalg.norm(x, axis=1, keepdims=True) + eps)
    x = jnp.nan_to_num(x)
    sim = (x @ x.T + 1.0) / 2.0
    return sim / jnp.sum(sim, axis=1, keepdims=True)

  p_s, p_t = conditional(_flat(_f32(student_emb))), conditional(_flat(_teacher(teacher_emb)))
  return jnp.mean(p_t * jnp.log((p_t + eps) / (p_s + eps)))


def correlation_congruence_loss(student_emb: Array, teacher_emb: Array, *, teacher_grad: bool = False) -> Array:
  r"""Correlation congruence (CC, Peng et al., ICCV 2019), as in RepDistiller, batch scalar.

  RepDistiller's version (from the authors): with ``δ_i = |f^s_i − f^t_i|``,
  ``L = \frac{1}{B-1}\sum_{i<B} δ_i · δ_{i+1}``, a cheap proxy for matching
  the correlation between consecutive samples. Needs equal embedding sizes
  (put a connector in front of the student otherwise). ``teacher_grad=True``
  lets the gradient reach the teacher argument, for a learnable teacher-side
  embedding (the teacher network's own features are stopped by the step).
  """
  s = _flat(_f32(student_emb))
  t = _flat(_f32(teacher_emb) if teacher_grad else _teacher(teacher_emb))
  if s.shape != t.shape:
    raise ValueError(f"correlation congruence needs equal embedding sizes: student {s.shape[1]}, "
                     f"teacher {t.shape[1]}")
  delta = jnp.abs(s - t)
  return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=1))


def nst_loss(student_feat: Array, teacher_feat: Array) -> Array:
  r"""Neuron selectivity transfer (NST, Huang & Wang 2017), per example.

  The squared MMD with the polynomial kernel ``k(a, b) = (a·b)²`` between the
  sets of channels, each channel's spatial map L2-normalized:

  .. math::
      L_i = \overline{k(t, t)} + \overline{k(s, s)} - 2\,\overline{k(s, t)}

  (means over all channel pairs). Spatial sizes must match; channel counts may differ.
  """
  _check_spatial("NST", student_feat, teacher_feat)

  def channels(f):  # [B, H, W, C] -> [B, C, H*W], each channel unit-norm
    b, h, w, c = f.shape
    return l2_normalize(jnp.transpose(f.reshape(b, h * w, c), (0, 2, 1)), axis=2)

  s, t = channels(_f32(student_feat)), channels(_teacher(teacher_feat))

  def kernel_mean(a, b):
    return jnp.mean(jnp.einsum("bcx,bdx->bcd", a, b) ** 2, axis=(1, 2))

  return kernel_mean(t, t) + kernel_mean(s, s) - 2.0 * kernel_mean(s, t)


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``[n_out, n_in]`` averaging weights of torch's ``adaptive_avg_pool``: output ``i``
  averages inputs ``floor(i·n_in/n_out) … ceil((i+1)·n_in/n_out) − 1``."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: Array, size: int | tuple[int, int]) -> Array:
  """torch's ``adaptive_avg_pool2d`` on an NHWC map, any sizes (overlapping bins where ``h``
  does not divide ``H``; the mean of each ``H/h × W/w`` tile where it does):
  ``[B, H, W, C] -> [B, h, w, C]``."""
  h, w = (size, size) if isinstance(size, int) else size
  ph, pw = _pool_matrix(x.shape[1], h), _pool_matrix(x.shape[2], w)
  return jnp.einsum("ih,bhwc,jw->bijc", ph, _f32(x), pw)


def common_spatial_size(name: str, a_shape, b_shape) -> tuple[int, int]:
  """The spatial size two NHWC maps meet at when the larger is average-pooled onto the smaller
  (RepDistiller's VID, FT and FSP); a clear error where the ratio is not an integer."""
  if len(a_shape) != 4 or len(b_shape) != 4:
    raise ValueError(f"{name} needs NHWC feature maps, got shapes {tuple(a_shape)} and {tuple(b_shape)}")
  h, w = min(a_shape[1], b_shape[1]), min(a_shape[2], b_shape[2])
  for shape in (a_shape, b_shape):
    if shape[1] % h or shape[2] % w:
      raise ValueError(f"{name}: cannot average-pool a {shape[1]}x{shape[2]} map onto {h}x{w} "
                       f"(maps of shapes {tuple(a_shape)} and {tuple(b_shape)}; only integer ratios are supported)")
  return h, w


def match_spatial(name: str, a: Array, b: Array) -> tuple[Array, Array]:
  """``a`` and ``b`` with the larger map average-pooled onto the smaller one's size."""
  size = common_spatial_size(name, a.shape, b.shape)
  pool = lambda x: x if x.shape[1:3] == size else adaptive_avg_pool(x, size)
  return pool(a), pool(b)


def vid_loss(student_mean: Array, teacher_feat: Array, variance: Array) -> Array:
  r"""Variational information distillation (VID, Ahn et al., CVPR 2019), per example.

  The negative log-likelihood (without the constant ``½ log 2π``) of the teacher's
  features under a Gaussian whose mean ``μ`` the student predicts (through the
  method's regressor) and whose variance ``σ²`` is a learnable per-channel vector:

  .. math::
      L_i = \frac{1}{|F|}\sum_{h,w,c} \frac12\Big(\frac{(\mu_{ihwc} - t_{ihwc})^2}{\sigma_c^2} + \log\sigma_c^2\Big)

  ``variance`` broadcasts against the last (channel) axis; RepDistiller's
  ``VIDLoss`` uses ``σ² = softplus(log_scale) + 1e-5`` and takes ``torch.mean``
  (the batch mean of this). Minimal in ``μ`` at ``μ = t``, where it is ``½ log σ²``.
  """
  mu, t = _f32(student_mean), _teacher(teacher_feat)
  if mu.shape != t.shape:
    raise ValueError(f"VID needs the regressed student mean and the teacher feature to have equal shapes: "
                     f"{mu.shape} and {t.shape}")
  var = _f32(variance)
  nll = 0.5 * ((mu - t) ** 2 / var + jnp.log(var))
  return jnp.mean(nll.reshape(nll.shape[0], -1), axis=-1)


def ft_factor(factor: Array, p: int | None = 2) -> Array:
  r"""The normalized factor FT compares, ``[B, ·]``: RepDistiller's
  ``F.normalize(f.pow(p).mean(channel).view(B, -1))`` for an integer ``p`` (the
  default, ``p1=2``), or the paper's ``vec(F) / ‖vec(F)‖₂`` for ``p=None``."""
  f = _f32(factor)
  if p is not None:
    f = jnp.mean(f**p, axis=-1)
  return l2_normalize(_flat(f))


def factor_transfer_loss(student_factor: Array, teacher_factor: Array, p: int | None = 2) -> Array:
  r"""Factor transfer (FT, Kim et al., NeurIPS 2018), per example.

  .. math::
      L_i = \frac{1}{D}\Big\|\frac{x(F^s_i)}{\|x(F^s_i)\|_2} - \frac{x(F^t_i)}{\|x(F^t_i)\|_2}\Big\|_1

  between the student's translated factor and the teacher's paraphrased factor
  (``p_2 = 1`` in the paper and RepDistiller). ``x`` is RepDistiller's
  ``FactorTransfer.factor``: the channel mean of ``F^p`` (``p1 = 2``) flattened
  over space (:func:`ft_factor`); ``p=None`` gives the paper's ``vec(F)`` (channel
  counts must then match). The larger map is first average-pooled onto the
  smaller one, as in RepDistiller. Zero when the factors are equal up to a
  positive scale. RepDistiller weights it by β=200.
  """
  s, t = match_spatial("factor transfer", _f32(student_factor), _teacher(teacher_factor))
  if p is None and s.shape != t.shape:
    raise ValueError(f"factor transfer with p=None needs equal factor shapes: {s.shape} and {t.shape}")
  return jnp.mean(jnp.abs(ft_factor(s, p) - ft_factor(t, p)), axis=-1)


def activation_boundary_loss(student_feat: Array, teacher_feat: Array, margin: float = 1.0) -> Array:
  r"""Activation-boundary transfer (AB, Heo et al., AAAI 2019), per example.

  The paper's alternative (hinge-squared) loss, summed over every element of the
  connected student pre-activation ``s`` and the teacher's activation ``t``:

  .. math::
      L_i = \sum (s + m)^2\,\mathbb 1[s > -m \wedge t \le 0] + (s - m)^2\,\mathbb 1[s \le m \wedge t > 0]

  zero once every student neuron is beyond the margin ``m`` on the teacher's side
  of the boundary. RepDistiller's ``ABLoss.criterion_alternative_l2`` sums over
  the batch too; :func:`kdjax.methods.activation_boundary` applies its
  normalization (``/B · 3/1000`` and layer weights).
  """
  s, t = _f32(student_feat), _teacher(teacher_feat)
  if s.shape != t.shape:
    raise ValueError(f"activation boundary needs equal shapes after the connector: {s.shape} and {t.shape}")
  loss = ((s + margin) ** 2 * ((s > -margin) & (t <= 0)) + (s - margin) ** 2 * ((s <= margin) & (t > 0)))
  return jnp.sum(loss.reshape(loss.shape[0], -1), axis=-1)


def fsp_matrix(feat_a: Array, feat_b: Array) -> Array:
  r"""Flow-of-solution-procedure matrix of Yim et al. (CVPR 2017), ``[B, C_a, C_b]``:

  .. math::
      G_{jk} = \frac{1}{HW}\sum_{h,w} F^a_{hwj} F^b_{hwk}

  after average-pooling the larger map onto the smaller one (RepDistiller)."""
  a, b = match_spatial("FSP", _f32(feat_a), _f32(feat_b))
  bsz, h, w = a.shape[:3]
  return jnp.einsum("bxj,bxk->bjk", a.reshape(bsz, h * w, -1), b.reshape(bsz, h * w, -1)) / (h * w)


def fsp_loss(student_feats, teacher_feats) -> Array:
  r"""FSP (Yim et al., CVPR 2017), per example: for each consecutive pair of layers
  ``(l, l+1)`` the mean squared difference of the student's and the teacher's FSP
  matrices (:func:`fsp_matrix`), summed over the pairs:

  .. math::
      L_i = \sum_l \frac{1}{C_l C_{l+1}}\big\|G(F^s_l, F^s_{l+1})_i - G(F^t_l, F^t_{l+1})_i\big\|_F^2

  (RepDistiller's ``FSP.compute_loss`` is the batch mean of each term). The
  student and the teacher need equal channel counts at every layer.
  """
  student_feats, teacher_feats = list(student_feats), list(teacher_feats)
  if len(student_feats) != len(teacher_feats) or len(student_feats) < 2:
    raise ValueError(f"FSP needs the same number (at least 2) of student and teacher layers, got "
                     f"{len(student_feats)} and {len(teacher_feats)}")
  for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
    if s.ndim != 4 or t.ndim != 4:
      raise ValueError(f"FSP needs NHWC feature maps, got shapes {s.shape} and {t.shape} at layer {i}")
    if s.shape[-1] != t.shape[-1]:
      raise ValueError(f"FSP needs equal channel counts: layer {i} has {s.shape[-1]} student and "
                       f"{t.shape[-1]} teacher channels")
  total = 0.0
  for l in range(len(student_feats) - 1):
    g_s = fsp_matrix(student_feats[l], student_feats[l + 1])
    g_t = jax.lax.stop_gradient(fsp_matrix(teacher_feats[l], teacher_feats[l + 1]))
    total = total + jnp.mean((g_s - g_t) ** 2, axis=(1, 2))
  return total
