"""The method interface, and the one place the step calls a method through.

A method is a small immutable value, :class:`Method` (in the spirit of optax's
``GradientTransformation``): its loss, what it needs, and its learnable parts and
state, all fixed when it is built. Its loss is a pure function

    method.loss(student_logits, student_feats, teacher, batch, params) -> (loss_B, terms)

and the method itself is callable the same way (``method(...)`` calls ``method.loss``).

- ``teacher`` is ``None`` (no teacher) or ``(teacher_logits, teacher_feats)``,
  computed in inference mode with the gradient stopped; for a multi-teacher method
  (``method.multi_teacher``), a dict ``{name: (teacher_logits, teacher_feats)}``.
- ``batch`` holds ``"label"``, ``"step"`` (the student's step count before this
  update, for schedules), ``"index"`` (each example's position in the training
  set, for memory banks), ``"key"`` (a fresh PRNG key for this step) and, where the
  step knows the run's length, ``"epoch"`` (epochs done before this step, a float)
  and ``"epochs"`` (the run's length, a Python int), for schedules in epochs.
- ``loss_B`` is the per-example loss; ``terms`` maps each named term to its
  per-example value (or a batch scalar where a loss couples the batch, as DIST),
  so every term is logged separately.
- ``params`` are the method's own learnable parts (connectors, embeddings),
  differentiated and updated with the student: ``{}`` for most methods. A method
  with some has ``method.init(key, student_shapes, teacher_shapes) -> params``,
  sized from :func:`kdjax.models.feature_shapes` before any data is seen.

A method with non-differentiated state (CRD's memory bank, a queue) also has
``method.init_state(key, student_shapes, teacher_shapes, num_examples) -> state``;
its loss then finds the state in ``batch["method_state"]`` and returns
``(loss_B, terms, new_state)``. :func:`call_method` hides that difference from
the step.

``Method`` is a frozen dataclass, not a NamedTuple: a NamedTuple would be a JAX pytree, and a
method is configuration, never traced data. Build one with :func:`as_method`; change a built one
with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Method:
  """A distillation method: its loss and everything the step needs to know about it.

  Attributes:
    loss: ``(student_logits, student_feats, teacher, batch, params) -> (loss_B, terms)``, or
      ``(loss_B, terms, new_state)`` when ``init_state`` is set (the state in
      ``batch["method_state"]``).
    needs_teacher: the step insists on a teacher.
    multi_teacher: ``teacher`` is a dict of teachers (see :mod:`kdjax.methods.multi_teacher`).
    init: ``(key, student_shapes, teacher_shapes) -> params``, the learnable parts; ``None``: none.
    init_state: ``(key, student_shapes, teacher_shapes, num_examples) -> state``; ``None``: none.
    adversary: an :class:`kdjax.methods.adversarial.Adversary` for adversarial methods (the step
      attacks the student, see :mod:`kdjax.methods.adversarial`), else ``None``.
    head_logits: ``(params, student_feats, mask=None) -> {name: logits}``, shallow classifiers
      evaluated as early exits (BYOT's, :mod:`kdjax.train.heads`), else ``None``.
    main_stage: ``(epochs) -> float``, for a staged method, the epochs done when its last
      objective starts in a run of ``epochs`` (its earlier stages minimise another loss, so the
      training loss jumps there by design; :func:`kdjax.health.judge_run` judges divergence from
      the first epoch after it); ``None``: one objective throughout.
  """

  loss: Callable[..., tuple]
  needs_teacher: bool = False
  multi_teacher: bool = False
  init: Callable | None = None
  init_state: Callable | None = None
  adversary: Any = None
  head_logits: Callable | None = None
  main_stage: Callable[[int], float] | None = None

  def __call__(self, *args):
    return self.loss(*args)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Method))


def as_method(fn: Callable, needs_teacher: bool, multi_teacher: bool = False, **fields) -> Method:
  """``Method(fn, needs_teacher, multi_teacher, **fields)``: ``fn`` as a method;
  ``needs_teacher`` makes the step insist on a teacher, ``multi_teacher`` says it takes a dict of
  teachers, ``fields`` are the other :class:`Method` fields (``init``, ``init_state``,
  ``adversary``, ``head_logits``, ``main_stage``)."""
  if isinstance(fn, Method):
    raise TypeError("as_method: this is already a Method; change it with dataclasses.replace")
  try:
    stale = sorted(_FIELDS & set(vars(fn)))
  except TypeError:  # no __dict__ (a builtin, a partial with slots)
    stale = []
  if stale:  # the old interface set these as attributes of the function: they would be lost silently
    raise ValueError(f"as_method: pass {', '.join(stale)} as keyword arguments (as_method(fn, ..., "
                     f"{stale[0]}=...)), not as attributes of the loss function")
  return Method(fn, needs_teacher=needs_teacher, multi_teacher=multi_teacher, **fields)


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
  params = method.init(k_params, student_shapes, teacher_shapes) if method.init is not None else {}
  state = (method.init_state(k_state, student_shapes, teacher_shapes, num_examples)
           if method.init_state is not None else {})
  return params, state


def call_method(method: Method, student_logits, student_feats, teacher, batch, params, state):
  """``(loss_B, terms, new_state)`` for any method, stateful or not."""
  if method.init_state is not None:
    return method.loss(student_logits, student_feats, teacher, {**batch, "method_state": state}, params)
  loss_B, terms = method.loss(student_logits, student_feats, teacher, batch, params)
  return loss_B, terms, state
