"""Combining methods: a weighted sum of named methods, every term logged separately."""

from __future__ import annotations

import jax

from kdjax.methods.base import Method, as_method, call_method


def check_parts(who: str, parts: dict) -> None:
  """Every part is ``(weight >= 0, Method)``."""
  for name, part in parts.items():
    if not (isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], Method)):
      raise ValueError(f"{who}: part {name!r} must be (weight, method), a kdjax.methods.Method, got {part!r}")
    if not part[0] >= 0:
      raise ValueError(f"{who}: the weight of {name!r} must be >= 0, got {part[0]}")


def combine(parts: dict[str, tuple[float, Method]]) -> Method:
  """``Σ_name weight·method_name``: e.g. Hinton KD plus a feature method,

      combine({"kd": (1.0, hinton_kd(alpha=0.1, temperature=4.0)),
               "crd": (0.8, crd(ce_weight=0.0))})

  Each part keeps its own learnable parts and state under its name and logs
  its terms as ``name/term``. Most methods include the label cross-entropy
  (``ce_weight``): set it to 0 in all parts but one, or CE counts several times.
  """
  if not parts:
    raise ValueError("combine needs at least one method")
  check_parts("combine", parts)

  def init(key, student_shapes, teacher_shapes):
    return {name: m.init(jax.random.fold_in(key, i), student_shapes, teacher_shapes) if m.init is not None else {}
            for i, (name, (_, m)) in enumerate(parts.items())}

  def init_state(key, student_shapes, teacher_shapes, num_examples):
    return {name: m.init_state(jax.random.fold_in(key, i), student_shapes, teacher_shapes, num_examples)
            if m.init_state is not None else {} for i, (name, (_, m)) in enumerate(parts.items())}

  def method(student_logits, student_feats, teacher, batch, params):
    total, terms, new_state = 0.0, {}, {}
    for i, (name, (weight, m)) in enumerate(parts.items()):
      part_batch = {**batch, "key": jax.random.fold_in(batch["key"], i)} if "key" in batch else batch
      loss_B, part_terms, new_state[name] = call_method(m, student_logits, student_feats, teacher, part_batch,
                                                        params[name], batch["method_state"][name])
      total = total + weight * loss_B
      terms.update({f"{name}/{k}": v for k, v in part_terms.items()})
    return total, terms, new_state

  multi = {m.multi_teacher for _, m in parts.values() if m.needs_teacher}
  if len(multi) > 1:
    raise ValueError("combine: some parts take one teacher and some several; wrap the single-teacher parts "
                     "in kdjax.methods.per_teacher")
  # An adversarial part (kdjax.methods.adversarial) makes the step attack the student once for all parts.
  adversaries = {m.adversary for _, m in parts.values() if m.adversary is not None}
  if len(adversaries) > 1:
    raise ValueError(f"combine: the parts attack the student in different ways ({sorted(adversaries)}); "
                     "give every adversarial part the same eps, steps and step_size")
  return as_method(method, needs_teacher=any(m.needs_teacher for _, m in parts.values()),
                   multi_teacher=multi == {True}, init=init, init_state=init_state,
                   adversary=adversaries.pop() if adversaries else None)
