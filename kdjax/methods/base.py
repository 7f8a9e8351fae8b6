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
    on_policy: for a language-model method, a :class:`kdjax.methods.token.OnPolicy` (GKD: the step
      trains on the student's own samples a fraction of the time, :mod:`kdjax.train.lm`), else ``None``.
    identity: ``(("name", NAME), (HPARAM, VALUE), ...)``, what names this method in a run's identity
      (:func:`method_identity`); :func:`kdjax.methods.make_method` fills it in with every
      hyperparameter, defaults included. ``()``: read from the loss function instead.
  """

  loss: Callable[..., tuple]
  needs_teacher: bool = False
  multi_teacher: bool = False
  init: Callable | None = None
  init_state: Callable | None = None
  adversary: Any = None
  head_logits: Callable | None = None
  main_stage: Callable[[int], float] | None = None
  on_policy: Any = None
  identity: tuple = ()

  def __call__(self, *args):
    return self.loss(*args)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Method))


def method_identity(method: Method) -> dict[str, Any]:
  """What determines ``method``'s effect on a run, for the run's identity (:mod:`kdjax.identity`):
  its ``identity`` (name and hyperparameters) where it was built by name; otherwise its loss
  function's qualified name with the values it closes over (a factory's hyperparameters, by name)."""
  if method.identity:
    return dict(method.identity)
  return {"loss": _function_identity(method.loss, depth=2), "needs_teacher": method.needs_teacher,
          "multi_teacher": method.multi_teacher}


def _function_identity(fn, depth: int) -> Any:
  """``{"function": module.qualname, NAME: value, ...}``: a function and the plain values (numbers,
  strings, tuples of them) and functions (``depth`` levels down) it closes over or defaults to."""
  if isinstance(fn, Method):
    return method_identity(fn)
  code = getattr(fn, "__code__", None)
  if code is None:
    return type(fn).__qualname__
  out: dict[str, Any] = {"function": f"{fn.__module__}.{fn.__qualname__}"}
  cells = zip(code.co_freevars, fn.__closure__ or ())
  values = [(name, cell.cell_contents) for name, cell in cells if _has_contents(cell)]
  values += list((fn.__kwdefaults__ or {}).items())
  for name, value in values:
    out[name] = _value_identity(value, depth)
  return out


def _value_identity(value, depth: int) -> Any:
  """A value a method closes over, for its identity: numbers and strings as they are, methods and
  functions (``depth`` levels down) by :func:`_function_identity`, dicts, lists and tuples item by
  item (combine's weights, a multi-teacher's), arrays by shape and sum, anything else by its type."""
  if isinstance(value, (bool, int, float, str, type(None))):
    return value
  if isinstance(value, Method) or callable(value):
    return _function_identity(value, depth - 1) if depth > 0 else getattr(value, "__qualname__", type(value).__name__)
  if isinstance(value, dict):
    return {str(k): _value_identity(v, depth) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_value_identity(v, depth) for v in value]
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    return {"shape": list(value.shape), "dtype": str(value.dtype), "sum": float(value.sum())}
  return type(value).__qualname__


def _has_contents(cell) -> bool:
  try:
    cell.cell_contents  # noqa: B018 - an empty cell raises
  except ValueError:
    return False
  return True


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
