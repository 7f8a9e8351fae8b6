"""Multi-teacher methods: the student learns from a dict of teachers at once.

A multi-teacher method gets ``teacher`` as ``{name: (logits, feats)}`` (the step runs teachers of
the same architecture stacked under one ``jax.vmap``) and is marked ``multi_teacher=True``; its
``init`` gets ``teacher_shapes`` as ``{name: feature shapes}``.

- :func:`multi_teacher_kd`: Hinton KD against an aggregate of the teachers (see
  :mod:`kdjax.losses.multi_teacher` for the weightings and the three ways to combine).
- :func:`per_teacher`: any single-teacher method once per teacher, each with its own learnable
  parts (e.g. one FitNet regressor per teacher), weighted and summed; terms ``<teacher>/<term>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp

from kdjax.losses import check_alpha, check_temperature, hard_cross_entropy, kl_divergence
from kdjax.losses.multi_teacher import (COMBINES, best_teacher_weights, confidence_weights, entropy_weights,
                                        fixed_weights, multi_teacher_kl, uniform_weights)
from kdjax.methods.base import Method, as_method
from kdjax.methods.combine import check_parts, combine

WEIGHTINGS = ("mean", "fixed", "confidence", "entropy", "best")


def check_teacher_names(names, teacher_shapes: Mapping, who: str) -> None:
  """The teachers a method was built for must be the teachers it is given."""
  if not teacher_shapes:
    raise ValueError(f"{who} needs a dict of teachers; none was given")
  if sorted(names) != sorted(teacher_shapes):
    raise ValueError(f"{who} was given weights or methods for teachers {sorted(names)}, but the teachers "
                     f"are {sorted(teacher_shapes)} ({len(names)} against {len(teacher_shapes)})")


def teacher_weights(weighting: str, teacher_logits_KxBxC, labels_B, *, weights=None, temperature: float = 1.0):
  """``[K, B]`` weights of the teachers for each example under ``weighting`` (see :data:`WEIGHTINGS`)."""
  if weighting == "mean":
    return uniform_weights(teacher_logits_KxBxC)
  if weighting == "fixed":
    return fixed_weights(teacher_logits_KxBxC, weights)
  if weighting == "confidence":
    return confidence_weights(teacher_logits_KxBxC, labels_B)
  if weighting == "entropy":
    return entropy_weights(teacher_logits_KxBxC, temperature)
  if weighting == "best":
    return best_teacher_weights(teacher_logits_KxBxC, labels_B)
  raise ValueError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")


def multi_teacher_kd(*, alpha: float = 0.5, temperature: float = 4.0, weighting: str = "mean",
                     combine: str = "probs", weights: Mapping[str, float] | None = None) -> Method:
  """``α·CE(y, s) + (1−α)·T²·D``, D the divergence of the student from the teachers'
  aggregate (:func:`kdjax.losses.multi_teacher.multi_teacher_kl`).

  - ``weighting``: ``"mean"``, ``"fixed"`` (``weights={teacher: w}``, one per teacher),
    ``"confidence"`` (CA-MKD), ``"entropy"`` (EBKD) or ``"best"`` (the teacher with the lowest
    cross-entropy on each example's label).
  - ``combine``: ``"probs"`` (mean of probabilities: the ensemble's distribution), ``"logits"``
    (mean of logits) or ``"loss"`` (weighted sum of per-teacher KLs, as CA-MKD and EBKD).

  Teachers are stacked in sorted name order. Logs ``ce``, ``kd`` (D), ``kl/<teacher>`` (each
  teacher's own KL to the student) and, for the adaptive weightings, ``weight/<teacher>``.
  With one teacher, every setting is :func:`kdjax.methods.hinton_kd`.
  """
  check_alpha(alpha)
  check_temperature(temperature)
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
  if combine not in COMBINES:
    raise ValueError(f"unknown combine {combine!r}; use one of {', '.join(COMBINES)}")
  if (weighting == "fixed") != (weights is not None):
    raise ValueError("weights={teacher: weight} go with weighting='fixed', and only with it")
  if weights is not None:
    if not isinstance(weights, Mapping):
      raise ValueError(f"weights must map teacher names to weights, got {weights!r}")
    fixed_weights(jnp.zeros((len(weights), 1, 1)), list(weights.values()))  # >= 0, not all zero

  def init(key, student_shapes, teacher_shapes):
    del key, student_shapes
    check_teacher_names(weights if weights is not None else teacher_shapes, teacher_shapes, "multi_teacher_kd")
    return {}

  def method(student_logits, student_feats, teacher, batch, params):
    del student_feats, params
    names = sorted(teacher)
    if not names:
      raise ValueError("multi_teacher_kd: the teacher dict is empty")
    t = jnp.stack([teacher[n][0] for n in names])
    w = teacher_weights(weighting, t, batch["label"],
                        weights=[weights[n] for n in names] if weights is not None else None)
    ce = hard_cross_entropy(student_logits, batch["label"])
    kd = multi_teacher_kl(student_logits, t, w, temperature, combine)
    terms = {"ce": ce, "kd": kd}
    per = kl_divergence(student_logits[None], t, temperature)
    terms.update({f"kl/{n}": per[i] for i, n in enumerate(names)})
    if weighting in ("confidence", "entropy", "best"):
      terms.update({f"weight/{n}": w[i] for i, n in enumerate(names)})
    return alpha * ce + (1.0 - alpha) * temperature**2 * kd, terms

  return as_method(method, needs_teacher=True, multi_teacher=True, init=init)


def _routed(name: str, m: Method) -> Method:
  """``m`` applied to teacher ``name`` of a teacher dict."""

  def method(student_logits, student_feats, teacher, batch, params):
    return m(student_logits, student_feats, teacher[name], batch, params)

  def init(key, student_shapes, teacher_shapes):
    return m.init(key, student_shapes, teacher_shapes[name])

  def init_state(key, student_shapes, teacher_shapes, num_examples):
    return m.init_state(key, student_shapes, teacher_shapes[name], num_examples)

  # An adversary (ARD from each teacher) goes with it: combine attacks once for all.
  return as_method(method, needs_teacher=True, init=init if m.init is not None else None,
                   init_state=init_state if m.init_state is not None else None, adversary=m.adversary)


def per_teacher(parts: Mapping[str, tuple[float, Method]]) -> Method:
  """``Σ_teacher weight·method(student, teacher)``: each teacher's features reach the student
  through its own method and learnable parts, e.g. one FitNet regressor per teacher::

      per_teacher({"resnet56": (1.0, fitnet(hint_weight=100.0, ce_weight=0.0)),
                   "wrn_40_2": (1.0, fitnet(hint_weight=100.0, ce_weight=0.0))})

  Keys are teacher names (all of them, no others); parts must be single-teacher methods.
  Terms are logged as ``<teacher>/<term>``. Combine it with :func:`multi_teacher_kd` through
  :func:`kdjax.methods.combine` for logits and features together.
  """
  if not parts:
    raise ValueError("per_teacher needs at least one (teacher name: (weight, method)) entry")
  check_parts("per_teacher", parts)
  for name, (_, m) in parts.items():
    if m.multi_teacher:
      raise ValueError(f"per_teacher: the method for {name!r} already takes several teachers")
  inner = combine({name: (w, _routed(name, m)) for name, (w, m) in parts.items()})

  def init(key, student_shapes, teacher_shapes):
    check_teacher_names(parts, teacher_shapes, "per_teacher")
    return inner.init(key, student_shapes, teacher_shapes)

  return dataclasses.replace(inner, init=init, multi_teacher=True)


__all__ = ["WEIGHTINGS", "multi_teacher_kd", "per_teacher", "teacher_weights"]
