"""Several teachers in one compiled program, and the evaluation of teacher ensembles.

Teachers are a dict ``{name: {"params", "rest"}}`` with a dict of graphdefs beside it. Teachers
of the same architecture (equal graphdefs) form a group whose variables are stacked along a new
leading axis and run with one ``jax.vmap``: one batched program instead of K. Different
architectures run side by side in the same program.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.data.augment import padded_batches, to_float
from kdjax.models.functional import apply_model


RESERVED_NAMES = ("ensemble", "student")  # keys of evaluate_ensemble's result


def teacher_variables(params, rest) -> dict[str, Any]:
  """A model's variables as a teacher source takes them."""
  return {"params": params, "rest": rest}


def teacher_groups(graphdefs: Mapping[str, Any]) -> list[tuple[Any, tuple[str, ...]]]:
  """``[(graphdef, names)]``: teachers grouped by architecture, names sorted within and across groups."""
  if not graphdefs:
    raise ValueError("the teacher dict is empty: give at least one teacher")
  reserved = sorted(set(graphdefs) & set(RESERVED_NAMES))
  if reserved or not all(isinstance(n, str) and n and "/" not in n for n in graphdefs):
    raise ValueError(f"teacher names must be non-empty strings without '/', other than {RESERVED_NAMES}; "
                     f"got {sorted(map(repr, graphdefs))}")
  groups: list[tuple[Any, list[str]]] = []
  for name in sorted(graphdefs):
    for graphdef, names in groups:
      if graphdef == graphdefs[name]:
        names.append(name)
        break
    else:
      groups.append((graphdefs[name], [name]))
  return [(g, tuple(names)) for g, names in groups]


def stack_trees(trees: list[Any]) -> Any:
  """Leaves stacked along a new leading axis: K pytrees of one structure become one."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def run_teachers(graphdefs: Mapping[str, Any], teacher_vars: Mapping[str, Any], x: jax.Array, *, dtype=None
                 ) -> dict[str, tuple[jax.Array, dict[str, jax.Array]]]:
  """``{name: (logits, feats)}`` of every teacher on ``x``, in inference mode, gradient stopped;
  ``dtype`` is the compute dtype (mixed precision, see :func:`kdjax.models.functional.apply_model`).

  Inside ``jit`` the stacking of a group's variables is one copy per step, small next to the
  forward passes it batches.
  """
  missing = sorted(set(graphdefs) ^ set(teacher_vars))
  if missing:
    raise ValueError(f"teacher graphdefs and variables name different teachers: {missing}")
  outs = {}
  for graphdef, names in teacher_groups(graphdefs):

    def forward(v, graphdef=graphdef):
      logits, feats, _ = apply_model(graphdef, v["params"], v["rest"], x, train=False, dtype=dtype)
      return logits, feats

    if len(names) == 1:
      outs[names[0]] = forward(teacher_vars[names[0]])
      continue
    logits, feats = jax.vmap(forward)(stack_trees([teacher_vars[n] for n in names]))
    for i, n in enumerate(names):
      outs[n] = (logits[i], jax.tree.map(lambda f, i=i: f[i], feats))
  return jax.lax.stop_gradient(outs)


def teacher_outputs(graphdef, variables, x: jax.Array, x_u: jax.Array | None = None, *, dtype=None):
  """A live teacher source: ``(outputs on x, outputs on x_u or None)`` in one forward pass, in
  inference mode, gradient stopped. ``graphdef`` is one graphdef (``variables`` one teacher's
  ``{"params", "rest"}``: a trained teacher, or a mean teacher's moving average of the student) or
  a dict of them (several teachers, :func:`run_teachers`); outputs are ``(logits, feats)`` or
  ``{name: (logits, feats)}``."""
  both = x if x_u is None else jnp.concatenate([x, x_u])
  if isinstance(graphdef, Mapping):
    out = run_teachers(graphdef, variables, both, dtype=dtype)
  else:
    logits, feats, _ = apply_model(graphdef, variables["params"], variables["rest"], both, train=False, dtype=dtype)
    out = jax.lax.stop_gradient((logits, feats))
  if x_u is None:
    return out, None
  b = x.shape[0]
  return jax.tree.map(lambda a: a[:b], out), jax.tree.map(lambda a: a[b:], out)


def cached_outputs(batch: dict):
  """An offline teacher source: the outputs cached beside the training set
  (:mod:`kdjax.train.teacher_cache`), as the loop hands them over in ``batch["teacher"]``."""
  return batch["teacher"]["logits"], batch["teacher"]["feats"]


def make_ensemble_eval_step(graphdefs: Mapping[str, Any], student_graphdef=None):
  return _ensemble_eval_step(tuple(sorted(graphdefs.items())), student_graphdef)


@functools.lru_cache(maxsize=32)
def _ensemble_eval_step(graphdef_items: tuple, student_graphdef):
  """Jitted ``step(teacher_vars, student_vars | None, images_uint8, labels, mask) -> counts``: each
  teacher's correct count, the ensemble's (mean of softmax probabilities) and, with a student,
  each teacher's agreement count with the student (same top-1 class)."""
  graphdefs = dict(graphdef_items)
  names = [n for _, group in teacher_groups(graphdefs) for n in group]

  def step(teacher_vars, student_vars, images, labels, mask):
    x = to_float(images)
    outs = run_teachers(graphdefs, teacher_vars, x)
    counts = {}
    probs = 0.0
    for n in names:
      logits = outs[n][0].astype(jnp.float32)
      probs = probs + jax.nn.softmax(logits, -1) / len(names)
      counts[f"correct/{n}"] = jnp.sum((jnp.argmax(logits, -1) == labels) & mask)
    counts["correct/ensemble"] = jnp.sum((jnp.argmax(probs, -1) == labels) & mask)
    if student_vars is not None:
      s_logits, _, _ = apply_model(student_graphdef, student_vars["params"], student_vars["rest"], x, train=False)
      s_pred = jnp.argmax(s_logits, -1)
      counts["correct/student"] = jnp.sum((s_pred == labels) & mask)
      counts["agree/ensemble"] = jnp.sum((s_pred == jnp.argmax(probs, -1)) & mask)
      for n in names:
        counts[f"agree/{n}"] = jnp.sum((s_pred == jnp.argmax(outs[n][0], -1)) & mask)
    return counts

  return jax.jit(step)


def evaluate_ensemble(graphdefs: Mapping[str, Any], teacher_vars: Mapping[str, Any], images, labels, *,
                      student_graphdef=None, student_vars=None, batch_size: int = 1000) -> dict[str, dict]:
  """Test accuracy and errors of every teacher and of their ensemble (mean of probabilities) and,
  given a student, the student's and each one's agreement with the student (fraction of images
  where both predict the same class): ``{"ensemble": {...}, name: {...}, "student": {...}}``."""
  step = make_ensemble_eval_step(graphdefs, student_graphdef if student_vars is not None else None)
  n = len(labels)
  totals: dict[str, jax.Array] = {}
  for xb, yb, mask in padded_batches(images, labels, batch_size):
    counts = step(teacher_vars, student_vars, xb, yb, mask)
    totals = {k: totals.get(k, 0) + v for k, v in counts.items()}
  totals = jax.device_get(totals)
  out: dict[str, dict] = {}
  for key, value in totals.items():
    kind, who = key.split("/", 1)
    rec = out.setdefault(who, {})
    if kind == "correct":
      rec.update(accuracy=float(value) / n, errors=int(n - value))
    else:
      rec["agreement"] = float(value) / n
  return out
