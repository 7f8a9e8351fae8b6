"""Distillation across domains: KD on a labelled source domain plus an alignment of the
student's feature distributions on source and unlabelled target images.

The step runs the student (and the teacher) on a second, unlabelled batch from the
target domain and hands the outputs over in the batch dict (see :func:`domain_kd`).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from kdjax.losses import check_alpha, check_temperature, coral_loss, kl_divergence, mmd2
from kdjax.methods.base import Method, as_method, pick_feature
from kdjax.methods.connectors import dense, dense_init
from kdjax.methods.feature import _jitted_init
from kdjax.methods.logit import hinton_kd

ALIGNMENTS = ("mmd", "coral", "dann", "none")

_MISSING_TARGET = ("domain_kd needs unlabelled target-domain images in each batch: give the dataset "
                   "unlabelled_images (kdjax.data.ArrayDataset)")


@jax.custom_vjp
def _reverse(x, scale):
  return x


def _reverse_fwd(x, scale):
  return x, scale


def _reverse_bwd(scale, g):
  return jax.tree.map(lambda t: (-scale * t).astype(t.dtype), g), jnp.zeros_like(scale)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def grad_reverse(x, scale: float | jax.Array = 1.0):
  """The gradient reversal layer of Ganin et al. (JMLR 2016, "Domain-Adversarial Training
  of Neural Networks"): the identity forward, ``−scale ×`` the gradient backward, so one
  minimization trains a discriminator on the features while pushing the features to
  fool it. ``x`` may be any pytree of arrays; ``scale`` gets no gradient."""
  return _reverse(x, jnp.asarray(scale, jnp.float32))


def _discriminator_init(key, d_in: int, hidden: int):
  k1, k2 = jax.random.split(key)
  return {"hidden": dense_init(k1, d_in, hidden), "out": dense_init(k2, hidden, 1)}


def _discriminate(params, feats):
  """One logit per example ("from the source domain")."""
  h = jax.nn.relu(dense(params["hidden"], feats.reshape(feats.shape[0], -1)))
  return dense(params["out"], h)[:, 0]


def _dann_loss(params, source, target):
  """Binary cross-entropy of the discriminator on reversed features (source 1, target 0),
  the mean of the two domains' means (balanced where the batches differ in size)."""
  z_s = _discriminate(params, grad_reverse(source.astype(jnp.float32)))
  z_t = _discriminate(params, grad_reverse(target.astype(jnp.float32)))
  return 0.5 * (jnp.mean(jax.nn.softplus(-z_s)) + jnp.mean(jax.nn.softplus(z_t)))


def _check_weight(name: str, value) -> None:
  if isinstance(value, numbers.Real) and not isinstance(value, bool) and not (math.isfinite(value) and value >= 0):
    raise ValueError(f"domain_kd: {name} must be a finite number >= 0, got {value!r}")


def domain_kd(*, alpha: float = 0.5, temperature: float = 4.0, align: str = "mmd", align_weight: float = 1.0,
              feature: str = "pre_logits", target_kd_weight: float = 0.0, dann_hidden: int = 256) -> Method:
  r"""Hinton KD on the labelled source domain plus feature-distribution alignment with an
  unlabelled target domain, per source example:

  .. math::
      L = \alpha\,\mathrm{CE}(y, s) + (1-\alpha)T^2\,\mathrm{KL}(p^T_t\,\|\,p^T_s)
          + w_a\,A(F^s_{src}, F^s_{tgt}) + w_t\,T^2\,\overline{\mathrm{KL}(p^T_{t,tgt}\,\|\,p^T_{s,tgt})}

  ``A`` compares the student's ``feature`` on the source batch with the same feature
  on the target batch: ``"mmd"`` the multi-kernel MMD² of DAN (Long et al. 2015,
  :func:`kdjax.losses.mmd2`), ``"coral"`` Deep CORAL (Sun & Saenko 2016,
  :func:`kdjax.losses.coral_loss`), ``"dann"`` a domain discriminator behind a gradient
  reversal layer (Ganin et al. 2016, :func:`grad_reverse`; a one-hidden-layer MLP of
  ``dann_hidden`` units, the method's learnable params, trained with the student;
  ``align_weight`` scales both its loss and the reversed gradient), ``"none"`` nothing.
  The last term distils the teacher on the target images too, where there are no labels.
  Both batch-level terms are spread evenly over the source examples.

  The step supplies the target batch as ``batch["unlabelled_student"] = (logits, feats)``
  and ``batch["unlabelled_teacher"]`` (the teacher's, gradient stopped). Logs ``ce``,
  ``kl``, ``align`` (unless ``align="none"``) and ``target_kl`` (the mean KL before ``T²``,
  when ``target_kd_weight > 0``).

  Defaults: no single reference implementation (a kdjax composite). α=0.5, T=4 are kdjax's
  study defaults (``kdjax/config.py`` ``StudyConfig``); ``align_weight=1`` is the trade-off
  the alignment papers start from (DAN's and DANN's λ = 1, e.g. thuml/Transfer-Learning-Library
  ``examples/domain_adaptation/image_classification/dan.py`` and ``dann.py``
  ``--trade-off 1.``). Departures from DANN (Ganin et al. 2016): its discriminator has two hidden
  layers of 1024 units (``dann_hidden=256`` and one layer here), and it ramps the reversal
  coefficient as ``2 / (1 + exp(−10·p)) − 1`` over the run's progress ``p``; here the
  coefficient is ``align_weight`` throughout.
  """
  check_alpha(alpha)
  check_temperature(temperature)
  if align not in ALIGNMENTS:
    raise ValueError(f"domain_kd: unknown align {align!r}; choices: {', '.join(ALIGNMENTS)}")
  _check_weight("align_weight", align_weight)
  _check_weight("target_kd_weight", target_kd_weight)
  if align == "dann" and not (isinstance(dann_hidden, int) and dann_hidden > 0):
    raise ValueError(f"domain_kd: dann_hidden must be a positive integer, got {dann_hidden!r}")
  kd = hinton_kd(alpha=alpha, temperature=temperature)

  use_target_kd = not (isinstance(target_kd_weight, numbers.Real) and target_kd_weight == 0)

  def method(student_logits, student_feats, teacher, batch, params):
    # Every input is checked before any math, so a misconfigured run fails at once.
    target_student = batch.get("unlabelled_student")
    if target_student is None:
      raise ValueError(_MISSING_TARGET)
    target_logits, target_feats = target_student
    if align != "none":
      source = pick_feature(student_feats, feature, "student")
      target = pick_feature(target_feats, feature, "student on the target domain")
    if use_target_kd and batch.get("unlabelled_teacher") is None:
      raise ValueError("domain_kd with target_kd_weight > 0 needs the teacher's outputs on the target "
                       "images (batch['unlabelled_teacher'])")
    loss, terms = kd(student_logits, student_feats, teacher, batch, {})
    if align != "none":
      if align == "mmd":
        a = mmd2(source, target)
      elif align == "coral":
        a = coral_loss(source, target)
      else:
        a = _dann_loss(params["discriminator"], source, target)
      loss = loss + align_weight * a
      terms["align"] = a
    if use_target_kd:
      target_kl = jnp.mean(kl_divergence(target_logits, batch["unlabelled_teacher"][0], temperature))
      loss = loss + target_kd_weight * temperature**2 * target_kl
      terms["target_kl"] = target_kl
    return loss, terms

  def init(key, student_shapes, teacher_shapes):
    del teacher_shapes
    shape = pick_feature(student_shapes, feature, "student").shape
    return {"discriminator": _discriminator_init(key, math.prod(shape[1:]), dann_hidden)}

  return as_method(method, needs_teacher=True, init=_jitted_init(init) if align == "dann" else None)

