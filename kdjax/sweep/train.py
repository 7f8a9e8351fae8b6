"""Training a group of sweep runs as one vmapped program.

K runs that differ only in seed and scalar hyperparameters (see :data:`kdjax.sweep.grid.VMAPPED`)
are K students stacked along a leading axis: parameters, batch statistics, optimizer and method
state, step and key. One jitted step draws the batch's augmentation once, runs the teacher once,
then applies :func:`kdjax.train.steps.update_student` to every student under ``jax.vmap`` with its
own T, α, β and learning rate (traced values, so one program serves any values).

All runs of a sweep see the same batches in the same order with the same augmentation, drawn
from ``data_seed``; a run's own ``seed`` draws its initial weights, dropout and method keys. So
a run's result does not depend on which runs it was grouped with (up to float rounding of
batched matmuls), and the teacher's forward pass is shared by the group.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from kdjax.config import refuse_compression
from kdjax.data.augment import augment
from kdjax.data.dataset import ArrayDataset
from kdjax.methods import init_method, make_method
from kdjax.models import create_model, feature_shapes, split_model
from kdjax.models.functional import apply_model, compute_dtype
from kdjax.sweep.grid import KD_ALPHA, KD_TEMPERATURE, VMAPPED_METHOD_HPARAMS, Run
from kdjax.train.api import TrainedModel
from kdjax.train.loop import fit, steps_per_epoch
from kdjax.train.online import evaluate_online, make_online_eval_step
from kdjax.train.state import TrainState, make_optimizer, trainables
from kdjax.train.steps import update_student
from kdjax.train.teachers import stack_trees

TRACED = ("temperature", "alpha", "beta")  # method hyperparameters that may be traced (see traced_hparams)


def traced_hparams(method: str, hparams) -> list[str]:
  """The hyperparameters of ``method`` passed as traced per-student values: the KD T and α of the
  logit methods and DKD's/DIST's β (plain factors there). Others, e.g. CRD's contrastive
  ``temperature``, stay Python values: their checks need concrete numbers."""
  names = dict(hparams)
  allowed = {"temperature": KD_TEMPERATURE, "alpha": KD_ALPHA, **VMAPPED_METHOD_HPARAMS}
  return [k for k in TRACED if k in names and method in allowed.get(k, ())]


def check_group(runs: Sequence[Run]) -> None:
  if not runs:
    raise ValueError("a group needs at least one run")
  first = runs[0]
  if any(r.group_key != first.group_key for r in runs):
    raise ValueError("these runs differ in more than seeds and scalar hyperparameters; train them in separate groups")
  cfg = first.cfg.distilled
  if cfg.steps_per_call != 1 or cfg.teacher_cache != "off":
    raise ValueError("sweeps run one step per call with a live teacher: leave distilled.steps_per_call at 1 and "
                     "distilled.teacher_cache off")


def make_sweep_step(graphdef, tx, method_name: str, static_hparams: dict[str, Any], num_students: int, *,
                    teacher_graphdef=None, jitter_pixels: int = 0, hflip: bool = False, data_seed: int = 0,
                    precision: str = "fp32"):
  """Jitted ``step(state, teacher_vars, batch, hparams) -> (state, metrics)`` for ``num_students``
  stacked students (computing in ``precision``, see :func:`kdjax.train.make_train_step`); ``hparams`` maps each of :data:`TRACED` the method takes, and
  ``"learning_rate"``, to a ``[K]`` array. Metrics are ``[K]`` vectors (``loss/students``,
  ``accuracy/students``, ..., ``skipped/students`` = 1 where a student's step was not finite and
  was skipped, its state kept) and their means; ``finite`` is always true: one student's bad step
  never stops the others."""
  dtype = compute_dtype(precision)

  def one(state, teacher, x, batch, hp):
    rng, k_drop, k_method = jax.random.split(state.rng, 3)
    method = make_method(method_name, **static_hparams, **{k: v for k, v in hp.items() if k != "learning_rate"})
    return update_student(graphdef, tx, method, state, teacher, x, batch, rng=rng, k_drop=k_drop, k_method=k_method,
                          lr_scale=hp["learning_rate"], dtype=dtype)

  def step(state: TrainState, teacher_vars, batch, hparams):
    k_aug = jax.random.fold_in(jax.random.key(data_seed), state.step[0])  # one draw for the whole group
    x = augment(k_aug, batch["image"], jitter_pixels, hflip)
    teacher = None
    if teacher_graphdef is not None:
      t_logits, t_feats, _ = apply_model(teacher_graphdef, teacher_vars["params"], teacher_vars["rest"], x,
                                         train=False, dtype=dtype)
      teacher = jax.lax.stop_gradient((t_logits, t_feats))
    new_state, m = jax.vmap(one, in_axes=(0, None, None, None, 0))(state, teacher, x, batch, hparams)
    # Means for the progress bar, and one [K] vector per metric: a few arrays to fetch per step, not K·M scalars.
    metrics = {name: jnp.mean(v) for name, v in m.items() if name != "finite"}
    metrics.update({f"{name}/students": v for name, v in m.items() if name != "finite"})
    metrics["skipped/students"] = 1.0 - m["finite"].astype(jnp.float32)
    metrics["finite"] = jnp.array(True)
    return new_state, metrics

  return jax.jit(step, donate_argnums=0)


def init_group(runs: Sequence[Run], tx, num_classes: int, input_shape, teacher_shapes, num_examples: int):
  """``(graphdef, stacked state)`` of a group's students: run k's model initialized from its seed,
  its method's parts and state, its optimizer state, key and step, stacked along a leading axis."""
  cfg = runs[0].cfg.distilled
  graphdef, states = None, []
  for run in runs:
    model = create_model(cfg.model, num_classes=num_classes, input_shape=input_shape, seed=run.seed,
                         **cfg.model_options())
    g, params, rest = split_model(model)
    graphdef = g if graphdef is None else graphdef
    key = jax.random.key(run.seed)
    method = make_method(run.method, **dict(run.hparams))
    m_params, m_state = init_method(method, jax.random.fold_in(key, 2), feature_shapes(g, params, rest, input_shape),
                                    teacher_shapes, num_examples)
    states.append(TrainState(params, rest, tx.init(trainables(params, m_params)), jnp.zeros((), jnp.int32),
                             jax.random.fold_in(key, 1), m_params, m_state))
  return graphdef, stack_trees(states)


def group_hparams(runs: Sequence[Run]) -> dict[str, jax.Array]:
  """The group's per-student hyperparameters as ``[K]`` arrays: the traced ones
  (:func:`traced_hparams`), and ``"learning_rate"``."""
  traced = traced_hparams(runs[0].method, runs[0].hparams)
  hp = {k: jnp.asarray([dict(r.hparams)[k] for r in runs], jnp.float32) for k in traced}
  hp["learning_rate"] = jnp.asarray([r.cfg.distilled.learning_rate for r in runs], jnp.float32)
  return hp


def train_group(data: ArrayDataset, runs: Sequence[Run], teacher: TrainedModel | None, *, data_seed: int = 0,
                progress: bool = True, desc: str = "sweep") -> list[dict[str, Any]]:
  """Trains ``runs`` (one group, see :func:`kdjax.sweep.grid.group_runs`) together; returns one
  result per run, in order: ``{"history": [per-epoch dicts], "wall_s", "skipped_steps"}``, where
  ``wall_s`` is the group's wall time divided by its size (each run's share)."""
  check_group(runs)
  data.require_plain_images("sweeps")
  first = runs[0]
  cfg = first.cfg.distilled
  refuse_compression(cfg, "sweeps")
  k_students = len(runs)
  traced = traced_hparams(first.method, first.hparams)
  static = {k: v for k, v in first.hparams if k not in traced}
  per_epoch = steps_per_epoch(len(data.train_labels), cfg.batch_size)
  # Learning rate 1: each student scales its update by its own rate (SGD's and AdamW's updates are linear in it).
  tx = make_optimizer(cfg.optimizer, learning_rate=1.0, total_steps=cfg.epochs * per_epoch, momentum=cfg.momentum,
                      weight_decay=cfg.weight_decay, schedule=cfg.schedule, decay_epochs=cfg.decay_epochs,
                      steps_per_epoch=per_epoch)
  t_graphdef = teacher.graphdef if teacher is not None else None
  t_shapes = feature_shapes(teacher.graphdef, teacher.params, teacher.rest, data.image_shape) if teacher else {}
  graphdef, state = init_group(runs, tx, data.num_classes, data.image_shape, t_shapes, len(data.train_labels))
  hp = group_hparams(runs)
  step = make_sweep_step(graphdef, tx, first.method, static, k_students, teacher_graphdef=t_graphdef,
                         jitter_pixels=cfg.jitter, hflip=cfg.hflip, data_seed=data_seed, precision=cfg.precision)
  eval_step = make_online_eval_step(graphdef)
  t0 = time.perf_counter()
  result = fit(state, lambda s, t, b: step(s, t, b, hp), None, data, epochs=cfg.epochs, batch_size=cfg.batch_size,
               teacher_vars=teacher.variables if teacher is not None else None, seed=data_seed, desc=desc,
               progress=progress, evaluate_fn=lambda s, x, y: evaluate_online(eval_step, s.params, s.rest, x, y))
  wall = time.perf_counter() - t0
  out = []
  for k in range(k_students):
    history = [{"epoch": rec["epoch"], "test_accuracy": rec[f"test_accuracy/{k}"], "test_errors": rec[f"test_errors/{k}"],
                "test_loss": rec[f"test_loss/{k}"], "train_loss": rec["train_loss/students"][k],
                "train_accuracy": rec["train_accuracy/students"][k],
                "skipped_steps": round(rec["train_skipped/students"][k] * per_epoch)} for rec in result.history]
    out.append({"history": history, "wall_s": wall / k_students,
                "skipped_steps": sum(h["skipped_steps"] for h in history)})
  return out
