"""Contrastive representation distillation (CRD, Tian et al., ICLR 2020) and two
variants that scale past a per-example memory bank.

================  ==========================================  =====================  ==============
method            negatives                                   state                  needs indices
================  ==========================================  =====================  ==============
``crd``           ``nce_k`` rows of a memory bank of all N    2 banks ``[N, D]``     yes
                  examples (RepDistiller)                     and ``Z_s, Z_t``
``crd_queue``     the last ``queue_size`` embeddings (MoCo)   2 queues ``[Q, D]``    no
``crd_inbatch``   the other examples of the batch (CLIP)      none                   no
================  ==========================================  =====================  ==============

Each embeds the student's and the teacher's features (``"pre_logits"`` by
default) with its own learnable ``Embed`` (RepDistiller's: a linear map to
``feat_dim`` and L2 normalization), trained with the student, and returns
``ce_weight·CE + weight·L`` with ``L`` the contrastive term (logged as ``crd``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kdjax.losses import hard_cross_entropy, l2_normalize
from kdjax.losses.contrastive import (contrast_loss, crd_normalizer, crd_scores, inbatch_info_nce_loss,
                                      queue_info_nce_loss)
from kdjax.methods.base import Method, as_method, pick_feature
from kdjax.methods.connectors import embed


def _check_positive(name: str, *, weight: float, ce_weight: float, **values) -> None:
  for key, value in values.items():
    if not value > 0:
      raise ValueError(f"{name}: {key} must be > 0, got {value}")
  for key, value in (("weight", weight), ("ce_weight", ce_weight)):
    if not value >= 0:
      raise ValueError(f"{name}: {key} must be >= 0, got {value}")


def _embed_init(key, student_shapes, teacher_shapes, student_layer: str, teacher_layer: str, feat_dim: int):
  """RepDistiller's ``Embed`` for each side: ``{"student": dense, "teacher": dense}``."""
  d_s = math.prod(pick_feature(student_shapes, student_layer, "student").shape[1:])
  d_t = math.prod(pick_feature(teacher_shapes, teacher_layer, "teacher").shape[1:])

  def draw(key):  # dense_init's LeCun-normal kernels and zero biases, from one normal draw
    z = jax.random.normal(key, ((d_s + d_t) * feat_dim,), jnp.float32)
    dense = lambda x, d: {"kernel": x.reshape(d, feat_dim) / math.sqrt(d), "bias": jnp.zeros((feat_dim,), jnp.float32)}
    return {"student": dense(z[:d_s * feat_dim], d_s), "teacher": dense(z[d_s * feat_dim:], d_t)}

  return jax.jit(draw)(key)


def _embeddings(params, student_feats, teacher, student_layer: str, teacher_layer: str):
  s = embed(params["student"], pick_feature(student_feats, student_layer, "student"))
  t = embed(params["teacher"], pick_feature(teacher[1], teacher_layer, "teacher"))
  return s, t


def init_memory(key: jax.Array, num_examples: int, feat_dim: int, banks: int | None = None) -> jax.Array:
  """A memory bank ``[N, feat_dim]`` (``[banks, N, feat_dim]`` if given): RepDistiller's
  uniform draw in ``[−stdv, stdv]``, ``stdv = 1/sqrt(feat_dim/3)`` (rows of expected norm 1),
  then each row L2-normalized (RepDistiller leaves the initial rows unnormalized; their
  norms are ≈ 1)."""
  stdv = 1.0 / math.sqrt(feat_dim / 3)
  shape = (num_examples, feat_dim) if banks is None else (banks, num_examples, feat_dim)
  return l2_normalize(jax.random.uniform(key, shape, jnp.float32, -stdv, stdv))


def update_memory(memory: jax.Array, index: jax.Array, emb: jax.Array, momentum: float) -> jax.Array:
  """RepDistiller's momentum update of the positives: rows ``index`` become
  ``normalize(m·memory[index] + (1 − m)·emb)``; every other row is unchanged."""
  rows = momentum * memory[index] + (1.0 - momentum) * jax.lax.stop_gradient(emb.astype(jnp.float32))
  return memory.at[index].set(l2_normalize(rows))


def crd(*, student_layer: str = "pre_logits", teacher_layer: str = "pre_logits", feat_dim: int = 128,
        nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5, weight: float = 0.8,
        ce_weight: float = 1.0) -> Method:
  r"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020),
  RepDistiller's ``CRDLoss`` with its ``ContrastMemory``.

  The embeddings ``f^s, f^t`` of an example (index ``i`` in the training set)
  are scored against ``K = nce_k`` rows of the *other* side's memory bank: its
  own row ``i`` (the positive) and ``K`` rows drawn uniformly from the ``N``
  examples. Scores ``P = exp(⟨m, f⟩/τ)/Z`` feed CRD's NCE loss with noise
  ``P_n = 1/N`` (:func:`kdjax.losses.contrast_loss`):

  .. math::
      L_i = -\Big[\log\frac{P_{i0}}{P_{i0} + K P_n}
            + \sum_{k=1}^{K}\log\frac{K P_n}{P_{ik} + K P_n}\Big],

  summed over the two directions (student anchor against the teacher's bank,
  teacher anchor against the student's). Then each bank's row ``i`` moves
  towards the new embedding: ``normalize(m·M_i + (1 − m)·f_i)`` with
  ``m = nce_m``. The constants ``Z_s, Z_t = mean(exp(⟨m, f⟩/τ))·N`` are
  estimated on the first batch and then kept fixed, as in RepDistiller.

  Defaults are RepDistiller's (``feat_dim=128, nce_k=16384, nce_t=0.07,
  nce_m=0.5``, ``-a 0 -b 0.8``: ``weight=0.8, ce_weight=1``), the same as
  mdistiller's ``CFG.CRD``.

  Differences from RepDistiller: negatives are drawn uniformly from all ``N``
  examples with ``batch["key"]`` (they may include the example itself or its
  class, as in ``ContrastMemory``'s own sampler); RepDistiller's CIFAR-100
  loader instead draws them from the other classes. The initial bank rows are
  normalized. ``nce_k`` must be below ``N`` (an error otherwise, no clamping).

  Cost: the state holds two banks of ``N × feat_dim`` float32 (2·N·feat_dim
  floats: 1.3 GB for ImageNet's 1.28 M images), the step gathers
  ``2·B·(K+1)·feat_dim`` floats, and the batches must carry the examples'
  training-set positions (``batch["index"]``): it does not scale to very large
  or streamed datasets. :func:`crd_queue` (a FIFO queue of recent embeddings)
  and :func:`crd_inbatch` (the batch's other examples as negatives) need
  neither the bank nor the indices.

  Defaults: ``feat_dim=128``, ``nce_k=16384``, ``nce_t=0.07``, ``nce_m=0.5``, weight 0.8,
  ce_weight 1, ``pre_logits`` (``feat[-1]``): RepDistiller ``train_student.py``,
  ``scripts/run_cifar_distill.sh`` (``-a 0 -b 0.8``), ``crd/criterion.py``, ``crd/memory.py``;
  mdistiller ``mdistiller/engine/cfg.py`` (``CFG.CRD``).
  """
  _check_positive("crd", feat_dim=feat_dim, nce_k=nce_k, nce_t=nce_t, weight=weight, ce_weight=ce_weight)
  if not 0.0 <= nce_m < 1.0:
    raise ValueError(f"crd: nce_m (the memory momentum) must be in [0, 1), got {nce_m}")

  def check_k(num_examples: int) -> None:
    if nce_k >= num_examples:
      raise ValueError(f"crd: nce_k={nce_k} negatives need more training examples than that, but the "
                       f"memory bank has N={num_examples}; use nce_k <= {num_examples - 1}, or crd_queue / "
                       f"crd_inbatch, which need no bank")

  def init(key, student_shapes, teacher_shapes):
    return _embed_init(key, student_shapes, teacher_shapes, student_layer, teacher_layer, feat_dim)

  def init_state(key, student_shapes, teacher_shapes, num_examples):
    check_k(num_examples)

    def draw(key):
      memory = init_memory(key, num_examples, feat_dim, banks=2)
      return {"memory_student": memory[0], "memory_teacher": memory[1],
              "z_student": jnp.zeros((), jnp.float32), "z_teacher": jnp.zeros((), jnp.float32),
              "z_fixed": jnp.zeros((), bool)}

    return jax.jit(draw)(key)

  def method(student_logits, student_feats, teacher, batch, params):
    state = batch["method_state"]
    if "index" not in batch:
      raise ValueError("crd needs batch['index'], the examples' positions in the training set")
    index = batch["index"]
    n = state["memory_student"].shape[0]
    check_k(n)
    s, t = _embeddings(params, student_feats, teacher, student_layer, teacher_layer)
    negatives = jax.random.randint(batch["key"], (index.shape[0], nce_k), 0, n)
    sample = jnp.concatenate([index[:, None].astype(negatives.dtype), negatives], axis=1)  # [B, K+1]
    out_s = crd_scores(s, state["memory_teacher"][sample], nce_t)  # student anchor, teacher bank
    out_t = crd_scores(t, state["memory_student"][sample], nce_t)  # teacher anchor, student bank
    fixed = state["z_fixed"]
    z_s = jnp.where(fixed, state["z_student"], crd_normalizer(out_s, n))
    z_t = jnp.where(fixed, state["z_teacher"], crd_normalizer(out_t, n))
    loss = contrast_loss(out_s / z_s, n) + contrast_loss(out_t / z_t, n)
    ce = hard_cross_entropy(student_logits, batch["label"])
    new_state = {"memory_student": update_memory(state["memory_student"], index, s, nce_m),
                 "memory_teacher": update_memory(state["memory_teacher"], index, t, nce_m),
                 "z_student": z_s, "z_teacher": z_t, "z_fixed": jnp.ones((), bool)}
    return ce_weight * ce + weight * loss, {"ce": ce, "crd": loss}, jax.lax.stop_gradient(new_state)

  return as_method(method, needs_teacher=True, init=init, init_state=init_state)


def crd_queue(*, student_layer: str = "pre_logits", teacher_layer: str = "pre_logits", feat_dim: int = 128,
              queue_size: int = 4096, temperature: float = 0.07, weight: float = 0.8,
              ce_weight: float = 1.0) -> Method:
  r"""CRD with a MoCo-style queue (He et al., CVPR 2020) in place of the memory bank.

  The state keeps the last ``queue_size`` student and teacher embeddings (FIFO,
  initialized with random unit vectors as MoCo does). With ``Q^s, Q^t`` the
  queues before this batch is added, the contrastive term is InfoNCE at
  temperature ``τ`` in both directions (:func:`kdjax.losses.queue_info_nce_loss`):

  .. math::
      L_i = -\log\frac{e^{⟨f^s_i, f^t_i⟩/τ}}{e^{⟨f^s_i, f^t_i⟩/τ} + \sum_q e^{⟨f^s_i, Q^t_q⟩/τ}}
            -\log\frac{e^{⟨f^t_i, f^s_i⟩/τ}}{e^{⟨f^t_i, f^s_i⟩/τ} + \sum_q e^{⟨f^t_i, Q^s_q⟩/τ}}

  then the batch's embeddings replace the oldest queue entries. Unlike CRD's
  bank it needs no dataset indices and its state does not grow with the
  dataset. The positive is the other side's current embedding (differentiated
  on both sides, both heads being learnable); queued negatives are constants.
  ``weight`` defaults to CRD's 0.8 (not tuned for this variant).

  Defaults: no reference implementation (a kdjax variant). ``feat_dim``, ``temperature=0.07``
  (also MoCo v1's τ) and ``weight=0.8`` are CRD's (RepDistiller ``train_student.py``,
  ``scripts/run_cifar_distill.sh``); ``queue_size=4096`` is kdjax's, smaller than MoCo's 65536
  (facebookresearch/moco ``main_moco.py`` ``--moco-k``) to suit small datasets.
  """
  _check_positive("crd_queue", feat_dim=feat_dim, queue_size=queue_size, temperature=temperature, weight=weight,
                  ce_weight=ce_weight)

  def init(key, student_shapes, teacher_shapes):
    return _embed_init(key, student_shapes, teacher_shapes, student_layer, teacher_layer, feat_dim)

  def init_state(key, student_shapes, teacher_shapes, num_examples):
    def draw(key):
      queues = l2_normalize(jax.random.normal(key, (2, queue_size, feat_dim), jnp.float32))
      return {"queue_student": queues[0], "queue_teacher": queues[1], "pointer": jnp.zeros((), jnp.int32)}

    return jax.jit(draw)(key)

  def method(student_logits, student_feats, teacher, batch, params):
    state = batch["method_state"]
    s, t = _embeddings(params, student_feats, teacher, student_layer, teacher_layer)
    b, q = s.shape[0], state["queue_student"].shape[0]
    if b > q:
      raise ValueError(f"crd_queue: the batch ({b}) is larger than the queue (queue_size={q}); "
                       f"use queue_size >= batch size")
    loss = queue_info_nce_loss(s, t, state["queue_student"], state["queue_teacher"], temperature)
    ce = hard_cross_entropy(student_logits, batch["label"])
    slots = (state["pointer"] + jnp.arange(b, dtype=jnp.int32)) % q
    new_state = {"queue_student": state["queue_student"].at[slots].set(s),
                 "queue_teacher": state["queue_teacher"].at[slots].set(t),
                 "pointer": (state["pointer"] + b) % q}
    return ce_weight * ce + weight * loss, {"ce": ce, "crd": loss}, jax.lax.stop_gradient(new_state)

  return as_method(method, needs_teacher=True, init=init, init_state=init_state)


def crd_inbatch(*, student_layer: str = "pre_logits", teacher_layer: str = "pre_logits", feat_dim: int = 128,
                temperature: float = 0.07, weight: float = 0.8, ce_weight: float = 1.0) -> Method:
  r"""Contrastive distillation with in-batch negatives: InfoNCE over the ``B × B``
  similarities ``S = f^s (f^t)^\top / τ`` in both directions
  (:func:`kdjax.losses.inbatch_info_nce_loss`),

  .. math::
      L_i = -\log\mathrm{softmax}(S_{i,:})_i - \log\mathrm{softmax}(S_{:,i})_i,

  the CLIP objective (Radford et al. 2021) on CRD's embeddings. Stateless,
  needs no indices; the number of negatives is ``B − 1``, so it wants large
  batches. ``weight`` defaults to CRD's 0.8 (not tuned for this variant).

  Defaults: no reference implementation (a kdjax variant); ``feat_dim=128``, ``temperature=0.07``
  and ``weight=0.8`` are CRD's (RepDistiller ``train_student.py``, ``scripts/run_cifar_distill.sh``);
  CLIP learns its temperature from the same 0.07.
  """
  _check_positive("crd_inbatch", feat_dim=feat_dim, temperature=temperature, weight=weight, ce_weight=ce_weight)

  def init(key, student_shapes, teacher_shapes):
    return _embed_init(key, student_shapes, teacher_shapes, student_layer, teacher_layer, feat_dim)

  def method(student_logits, student_feats, teacher, batch, params):
    s, t = _embeddings(params, student_feats, teacher, student_layer, teacher_layer)
    loss = inbatch_info_nce_loss(s, t, temperature)
    ce = hard_cross_entropy(student_logits, batch["label"])
    return ce_weight * ce + weight * loss, {"ce": ce, "crd": loss}

  return as_method(method, needs_teacher=True, init=init)

