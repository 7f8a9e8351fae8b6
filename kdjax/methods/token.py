"""Language-model methods: what a causal LM student learns from its teacher, token by token.

The step (:mod:`kdjax.train.lm`) calls them as any method, ``loss(student_logits, student_feats,
teacher, batch, params) -> (loss_B, terms)``, with

- ``student_logits`` ``[B, L, V]`` (next-token logits) and the decoder's features
  (``hidden_i``, ``attn_i``, ``queries_i``, ... from :class:`kdjax.models.decoder.DecoderLM`);
- ``teacher`` ``(teacher_logits, teacher_feats)``, where ``teacher_logits`` is either the full
  ``[B, L, V]`` logits or a :class:`TopK` (the teacher's ``k`` largest log-probabilities and their
  ids, from a live teacher or the on-disk cache of :mod:`kdjax.data.topk_cache`);
- ``batch`` with ``"targets"`` ``[B, L]`` (the next tokens), ``"mask"`` ``[B, L]`` (which
  positions count) and ``"segments"`` (document ids, for the relation losses).

``loss_B`` is per sequence (the masked mean over its positions). The recipes:

- :func:`lm_sft`: the student alone, next-token cross-entropy (also sequence-level KD, where the
  study replaces the data by the teacher's generations, Kim & Rush 2016);
- :func:`lm_kd`: word-level KD (Kim & Rush 2016; Hinton et al. 2015 per token), with the divergence
  a choice: forward KL, reverse KL (MiniLLM's objective, Gu et al. 2024), generalized JSD (GKD) or
  total variation;
- :func:`lm_gkd`: on-policy distillation (GKD, Agarwal et al. 2024): :func:`lm_kd`'s loss, on the
  student's own samples a fraction ``student_fraction`` (λ) of the steps (:class:`OnPolicy`);
- :func:`lm_minilm`, :func:`lm_tinybert`: feature matching (MiniLM-v2 relations; TinyBERT hidden
  states and attention with learned projections) on top of word-level KD.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kdjax.losses.lm_feature import attention_mse, attention_relation_loss, hidden_mse
from kdjax.losses.token import (
  DIVERGENCES,
  token_cross_entropy,
  token_kd_loss,
  topk_token_kd_loss,
)
from kdjax.losses.validate import check_alpha, check_skew, check_temperature
from kdjax.methods.base import Method, as_method, pick_feature


class TopK(NamedTuple):
  """A teacher reduced to its ``k`` most likely next tokens: ``logprobs`` ``[B, L, K]``
  (``log softmax(t/T)``, sorted descending) and their ``ids`` ``[B, L, K]``."""

  logprobs: jax.Array
  ids: jax.Array


@dataclasses.dataclass(frozen=True)
class OnPolicy:
  """GKD's on-policy data (Agarwal et al. 2024, Algorithm 1): at each step, with probability
  ``fraction`` (λ), the batch is replaced by the student's own continuations of its first
  ``prompt_len`` tokens, sampled at ``temperature`` from the student as it is before the update (no
  gradient through the sampling), and the teacher scores those tokens; the loss counts only the
  sampled positions. ``fraction = 0`` is word-level KD on the data."""

  fraction: float
  temperature: float = 1.0
  prompt_len: int = 32


def _check_divergence(divergence: str, beta: float) -> None:
  if divergence not in DIVERGENCES:
    raise ValueError(f"unknown divergence {divergence!r}; use one of: {', '.join(DIVERGENCES)}")
  if divergence == "jsd":
    check_skew(beta)


def _kd_term(student_logits, teacher, batch, divergence: str, temperature: float, beta: float):
  """The per-sequence divergence to the teacher, full or top-k, at ``temperature``."""
  t_logits = teacher[0]
  if isinstance(t_logits, TopK):
    return topk_token_kd_loss(student_logits, t_logits.logprobs, t_logits.ids, batch["mask"], divergence=divergence,
                              temperature=temperature, beta=beta)
  return token_kd_loss(student_logits, t_logits, batch["mask"], divergence=divergence, temperature=temperature,
                       beta=beta)


def _kd_loss(divergence: str, temperature: float, beta: float, alpha: float):
  """``α·CE + (1−α)·T²·D`` per sequence, logging ``ce`` and the divergence as ``kd``. The ``T²``
  factor keeps the gradient's scale across temperatures (Hinton et al. 2015); at the LM recipes'
  ``T = 1`` it is 1."""

  def loss(student_logits, student_feats, teacher, batch, params):
    ce = token_cross_entropy(student_logits, batch["targets"], batch["mask"])
    kd = _kd_term(student_logits, teacher, batch, divergence, temperature, beta)
    return alpha * ce + (1.0 - alpha) * temperature ** 2 * kd, {"ce": ce, "kd": kd}

  return loss


def lm_sft() -> Method:
  """The student alone: next-token cross-entropy on the data (``ce``). Sequence-level KD (Kim &
  Rush 2016) is this loss on the teacher's generations instead of the corpus (the study builds them,
  :mod:`kdjax.lm_study`).

  Defaults: none (no hyperparameters)."""

  def loss(student_logits, student_feats, teacher, batch, params):
    ce = token_cross_entropy(student_logits, batch["targets"], batch["mask"])
    return ce, {"ce": ce}

  return as_method(loss, needs_teacher=False)


def lm_kd(*, divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5,
          alpha: float = 0.0) -> Method:
  """Word-level KD (Kim & Rush 2016): at every position, ``α·CE(y, s) + (1−α)·T²·D(p_t ‖ p_s)``
  with ``D`` one of ``forward_kl`` (Hinton's KL, mass-covering), ``reverse_kl`` (mode-seeking,
  MiniLLM), ``jsd`` (generalized JSD with skew ``beta``, GKD) or ``tv`` (total variation). Against a
  :class:`TopK` teacher the divergence is taken over its ``k`` tokens plus one bucket for the rest
  (:func:`kdjax.losses.token.topk_token_kd_loss`). Logs ``ce`` and ``kd``.

  Defaults: ``divergence="forward_kl"`` (Kim & Rush's word-level KD), ``alpha=0`` (distillation only)
  and ``T=1``, as TRL's ``GKDTrainer`` and tunix's logit
  strategy at ``alpha=0``; ``beta=0.5`` is TRL's ``GKDConfig.beta``."""
  _check_divergence(divergence, beta)
  check_temperature(temperature)
  check_alpha(alpha)
  return as_method(_kd_loss(divergence, temperature, beta, alpha), needs_teacher=True)


def lm_gkd(*, student_fraction: float = 0.5, divergence: str = "jsd", beta: float = 0.5, temperature: float = 1.0,
           alpha: float = 0.0, sample_temperature: float = 1.0, prompt_len: int = 32) -> Method:
  """On-policy distillation, GKD (Agarwal et al., ICLR 2024): :func:`lm_kd`'s loss, where a fraction
  ``student_fraction`` (λ) of the steps train on the student's own samples (continuations of each
  row's first ``prompt_len`` tokens at ``sample_temperature``) scored by the teacher, the others on
  the data. ``student_fraction=0`` is exactly :func:`lm_kd` with the same divergence.

  Defaults: ``beta=0.5`` (TRL ``GKDConfig.beta``), ``student_fraction=0.5`` (TRL ``GKDConfig.lmbda``),
  sampling at temperature 1 (the paper's; TRL's default is 0.9)."""
  if not 0.0 <= student_fraction <= 1.0:
    raise ValueError(f"student_fraction (λ) must lie in [0, 1], got {student_fraction}")
  check_temperature(sample_temperature)
  if prompt_len < 1:
    raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
  method = lm_kd(divergence=divergence, temperature=temperature, beta=beta, alpha=alpha)
  if student_fraction == 0.0:
    return method
  return dataclasses.replace(method, on_policy=OnPolicy(student_fraction, sample_temperature, prompt_len))


def _layer(feats: dict, kind: str, layer: int, who: str) -> jax.Array:
  """``feats[f"{kind}_{n}"]`` for layer ``layer`` (1-based; negative counts from the last)."""
  depth = sum(1 for k in feats if k.startswith("hidden_"))
  n = layer if layer > 0 else depth + 1 + layer
  return pick_feature(feats, f"{kind}_{n}", who)


def lm_minilm(*, relation_heads: int = 4, layer: int = -1, teacher_layer: int = -1, weight: float = 1.0,
              kd_weight: float = 1.0, divergence: str = "forward_kl") -> Method:
  """MiniLM-v2 (Wang et al., ACL Findings 2021): the student's query–query, key–key and value–value
  self-attention relations of one layer match the teacher's (:func:`kdjax.losses.lm_feature.
  attention_relation_loss`, ``relation_heads`` heads on both sides, so the widths may differ), plus
  ``kd_weight`` times word-level KD. Layers count from 1; ``-1`` is the last (MiniLM-v2 takes an
  upper-middle teacher layer for large teachers and the last for base-size ones). Logs ``kd``,
  ``relation_q``, ``relation_k`` and ``relation_v``.

  Defaults: the last layer on both sides, unit weights, 4 relation heads (the smallest model here has
  4 attention heads; MiniLM-v2 uses 48 for large teachers, and the relation head count is not tied to
  the attention heads)."""
  _check_divergence(divergence, 0.5)
  if relation_heads < 1:
    raise ValueError(f"relation_heads must be >= 1, got {relation_heads}")

  def loss(student_logits, student_feats, teacher, batch, params):
    kd = _kd_term(student_logits, teacher, batch, divergence, 1.0, 0.5)
    terms, total = {"kd": kd}, kd_weight * kd
    for kind, short in (("queries", "q"), ("keys", "k"), ("values", "v")):
      s = _layer(student_feats, kind, layer, "student")
      t = _layer(teacher[1], kind, teacher_layer, "teacher")
      rel = attention_relation_loss(s, t, batch["segments"], batch["mask"], heads=relation_heads)
      terms[f"relation_{short}"] = rel
      total = total + weight * rel
    return total, terms

  return as_method(loss, needs_teacher=True)


def uniform_layer_map(student_depth: int, teacher_depth: int) -> tuple[int, ...]:
  """TinyBERT's uniform layer map: student layer ``m`` learns from teacher layer ``m·N/M``
  (1-based, ``M`` student and ``N`` teacher layers)."""
  if student_depth > teacher_depth:
    raise ValueError(f"the student has more layers ({student_depth}) than the teacher ({teacher_depth}): give a "
                     "layer_map")
  return tuple(m * teacher_depth // student_depth for m in range(1, student_depth + 1))


def _depth(shapes: dict) -> int:
  return sum(1 for k in shapes if k.startswith("hidden_"))


def lm_tinybert(*, layer_map: tuple[int, ...] | None = None, hidden_weight: float = 1.0,
                attention_weight: float = 1.0, kd_weight: float = 1.0, divergence: str = "forward_kl") -> Method:
  """TinyBERT (Jiao et al., Findings of EMNLP 2020): the student's embeddings and each layer's
  hidden states, through learned linear projections ``W`` (student width → teacher width, one per
  matched layer), match the teacher's (MSE), its attention probabilities match the mapped teacher
  layer's (:func:`kdjax.losses.lm_feature.attention_mse`), plus ``kd_weight`` times word-level KD
  (TinyBERT's prediction-layer loss). ``layer_map[m-1]`` is the teacher layer for student layer
  ``m`` (1-based); ``None`` is the uniform map ``m·N/M``. TinyBERT trains the stages one after
  another; here they are summed in one stage. Logs ``kd``, ``hidden`` and ``attention``.

  Defaults: the uniform layer map and unit weights (TinyBERT weighs its terms equally)."""
  _check_divergence(divergence, 0.5)

  def mapping(student_shapes, teacher_shapes) -> tuple[int, ...]:
    m, n = _depth(student_shapes), _depth(teacher_shapes)
    chosen = uniform_layer_map(m, n) if layer_map is None else tuple(layer_map)
    if len(chosen) != m or not all(1 <= t <= n for t in chosen):
      raise ValueError(f"layer_map {chosen} must name a teacher layer in 1..{n} for each of the student's {m} layers")
    return chosen

  def init(key, student_shapes, teacher_shapes):
    chosen = mapping(student_shapes, teacher_shapes)
    ds, dt = student_shapes["embed"].shape[-1], teacher_shapes["embed"].shape[-1]
    keys = jax.random.split(key, len(chosen) + 1)
    init_w = jax.nn.initializers.lecun_normal()
    return {"embed": init_w(keys[0], (ds, dt), jnp.float32),
            **{f"hidden_{m}": init_w(keys[m], (ds, dt), jnp.float32) for m in range(1, len(chosen) + 1)}}

  def loss(student_logits, student_feats, teacher, batch, params):
    t_feats = teacher[1]
    chosen = mapping(student_feats, t_feats)
    kd = _kd_term(student_logits, teacher, batch, divergence, 1.0, 0.5)
    mask, segments = batch["mask"], batch["segments"]
    hidden = hidden_mse(student_feats["embed"] @ params["embed"], t_feats["embed"], mask)
    attention = jnp.zeros_like(hidden)
    for m, t in enumerate(chosen, start=1):
      hidden = hidden + hidden_mse(student_feats[f"hidden_{m}"] @ params[f"hidden_{m}"], t_feats[f"hidden_{t}"], mask)
      attention = attention + attention_mse(student_feats[f"attn_{m}"], t_feats[f"attn_{t}"], segments, mask)
    total = kd_weight * kd + hidden_weight * hidden + attention_weight * attention
    return total, {"kd": kd, "hidden": hidden, "attention": attention}

  return as_method(loss, needs_teacher=True, init=init)
