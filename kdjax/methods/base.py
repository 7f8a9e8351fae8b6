"""The method interface, and the one place the step calls a method through.

A method is a pure function

    method(student_logits, student_feats, teacher, batch, params) -> (loss_B, terms)

- ``teacher`` is ``None`` (no teacher) or ``(teacher_logits, teacher_feats)``,
  computed in inference mode with the gradient stopped; for a multi-teacher method
  (``method.multi_teacher``), a dict ``{name: (teacher_logits, teacher_feats)}``.
- ``batch`` holds ``"label"``, ``"step"`` (the student's step count before this
  update, for schedules), ``"index"`` (each example's position in the training
  set, for memory banks) and ``"key"`` (a fresh PRNG key for this step).
- ``loss_B`` is the per-example loss; ``terms`` maps each named term to its
  per-example value (or a batch scalar where a loss couples the batch, as DIST),
  so every term is logged separately.
- ``params`` are the method's own learnable parts (connectors, embeddings),
  differentiated and updated with the student: ``{}`` for most methods. A method
  with some carries ``method.init(key, student_shapes, teacher_shapes) -> params``,
  sized from :func:`kdjax.models.feature_shapes` before any data is seen.

A method with non-differentiated state (CRD's memory bank, a queue) also
carries ``method.init_state(key, student_shapes, teacher_shapes, num_examples)
-> state``; it then finds its state in ``batch["method_state"]`` and returns
``(loss_B, terms, new_state)``. :func:`call_method` hides that difference from
the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Method = Callable[..., tuple]


def as_method(fn, needs_teacher: bool, multi_teacher: bool = False) -> Method:
  """Marks ``fn`` as a method; ``needs_teacher`` makes the step insist on a teacher;
  ``multi_teacher`` says it takes a dict of teachers (see :mod:`kdjax.methods.multi_teacher`)."""
  fn.needs_teacher = needs_teacher
  fn.multi_teacher = multi_teacher
  return fn


def pick_feature(feats: dict[str, Any], name: str, who: str):
  """``feats[name]``, or an error that lists the features ``who`` exposes."""
  if name not in feats:
    raise ValueError(f"unknown feature {name!r} for the {who}; available: {', '.join(sorted(feats))}")
  return feats[name]


def init_method(method: Method, key: jax.Array, student_shapes, teacher_shapes, num_examples: int):
  """``(params, state)`` of ``method``: its learnable parts and its non-differentiated state
  (``{}`` where it has none). Shapes are :func:`kdjax.models.feature_shapes` dicts
  (``teacher_shapes`` is ``{}`` without a teacher)."""
  k_params, k_state = jax.random.split(key)
  params = method.init(k_params, student_shapes, teacher_shapes) if hasattr(method, "init") else {}
  state = (method.init_state(k_state, student_shapes, teacher_shapes, num_examples)
           if hasattr(method, "init_state") else {})
  return params, state


def call_method(method: Method, student_logits, student_feats, teacher, batch, params, state):
  """``(loss_B, terms, new_state)`` for any method, stateful or not."""
  if hasattr(method, "init_state"):
    return method(student_logits, student_feats, teacher, {**batch, "method_state": state}, params)
  loss_B, terms = method(student_logits, student_feats, teacher, batch, params)
  return loss_B, terms, state
