"""Training a group of sweep runs as one vmapped program.

K runs that differ only in seed and the hyperparameters the method registry marks vmappable
are one cohort (:mod:`kdjax.train.cohort`): the single run's step under ``jax.vmap``, each
student with its own T, α, β and learning rate (traced values, so one program serves any values).

All runs of a sweep see the same batches in the same order with the same augmentation, drawn
from ``data_seed``; a run's own ``seed`` draws its initial weights, dropout and method keys. So
a run's result does not depend on which runs it was grouped with (up to float rounding of
batched matmuls), and it is the run ``kdjax distill`` makes with that seed and data seed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.config import refuse_compression, run_optimizer
from kdjax.data.dataset import ArrayDataset
from kdjax.health import HealthThresholds, judge_run, majority_share
from kdjax.methods import init_method, make_method, vmapped_hparams
from kdjax.models import create_model, feature_shapes, split_model
from kdjax.sweep.grid import Run
from kdjax.train.api import TrainedModel
from kdjax.train.cohort import check_cohort_teacher, make_cohort_step, stack_states
from kdjax.train.inputs import run_keys
from kdjax.train.loop import fit, steps_per_epoch
from kdjax.train.online import evaluate_online, make_online_eval_step
from kdjax.train.state import init_train_state


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


def init_group(runs: Sequence[Run], tx, num_classes: int, input_shape, teacher_shapes, num_examples: int,
               data_seed: int = 0):
  """``(graphdef, stacked state)`` of a group's students: run k's model, method parts and state,
  optimizer state and keys as :func:`kdjax.train.distill` would start it with seed ``run.seed``
  and data seed ``data_seed`` (the data stream every student shares), stacked along a leading axis."""
  cfg = runs[0].cfg.distilled
  graphdef, states = None, []
  for run in runs:
    model = create_model(cfg.model, num_classes=num_classes, input_shape=input_shape, seed=run.seed,
                         **cfg.model_options())
    g, params, rest = split_model(model)
    graphdef = g if graphdef is None else graphdef
    keys = run_keys(run.seed, data_seed)  # as distill(seed=run.seed, data_seed=data_seed) starts
    method = make_method(run.method, **dict(run.hparams))
    m_params, m_state = init_method(method, keys.method_init, feature_shapes(g, params, rest, input_shape),
                                    teacher_shapes, num_examples)
    states.append(init_train_state(params, rest, tx, keys.rng, m_params, m_state, data_rng=keys.data_rng))
  return graphdef, stack_states(states)


def group_step(graphdef, tx, runs: Sequence[Run], teacher_graphdef=None, *, jitter_pixels: int = 0,
               hflip: bool = False, precision: str = "fp32", steps_per_epoch: int | None = None,
               epochs: int | None = None):
  """The group's jitted cohort step (:func:`kdjax.train.cohort.make_cohort_step`): each student's
  method built from the group's method, its fixed hyperparameters and the student's traced ones;
  ``steps_per_epoch`` and ``epochs``, the run's length, for methods with schedules in epochs."""
  first = runs[0]
  traced = vmapped_hparams(first.method, first.hparams)
  static = {k: v for k, v in first.hparams if k not in traced}
  check_cohort_teacher(make_method(first.method, **dict(first.hparams)), teacher_graphdef)
  return make_cohort_step(graphdef, tx, lambda h: make_method(first.method, **static, **h),
                          teacher_graphdef=teacher_graphdef, jitter_pixels=jitter_pixels, hflip=hflip,
                          precision=precision, steps_per_epoch=steps_per_epoch, epochs=epochs)


def group_hparams(runs: Sequence[Run]) -> dict[str, jax.Array]:
  """The group's per-student hyperparameters as ``[K]`` arrays: the traced ones
  (:func:`kdjax.methods.vmapped_hparams`), and ``"learning_rate"``."""
  traced = vmapped_hparams(runs[0].method, runs[0].hparams)
  hp = {k: jnp.asarray([dict(r.hparams)[k] for r in runs], jnp.float32) for k in traced}
  hp["learning_rate"] = jnp.asarray([r.cfg.distilled.learning_rate for r in runs], jnp.float32)
  return hp


def _student_initial(initial: dict[str, Any], k: int) -> dict[str, Any]:
  """Student ``k``'s part of a cohort's ``FitResult.initial``: its test metrics before the first
  step, and its loss and gradient norm at the first step."""
  out = {name: initial[f"test_{name}/{k}"] for name in ("accuracy", "errors", "loss")
         if f"test_{name}/{k}" in initial}
  out = {f"test_{name}": v for name, v in out.items()}
  for name in ("loss", "grad_norm"):
    if f"train_{name}/students" in initial:
      out[f"train_{name}"] = initial[f"train_{name}/students"][k]
  return out


def train_group(data: ArrayDataset, runs: Sequence[Run], teacher: TrainedModel | None, *, data_seed: int = 0,
                keep_states: bool = False, progress: bool = True, desc: str = "sweep",
                health: HealthThresholds | None = None) -> list[dict[str, Any]]:
  """Trains ``runs`` (one group, see :func:`kdjax.sweep.grid.group_runs`) together; returns one
  result per run, in order: ``{"history": [per-epoch dicts], "wall_s", "skipped_steps", "initial",
  "health"}`` (``initial``: its test metrics before the first step and the first step's loss and
  gradient norm; ``health``: :func:`kdjax.health.judge_run`'s verdict, with ``health`` thresholds)
  (and with ``keep_states``, ``"state"``: the run's own final :class:`~kdjax.train.state.TrainState`), where
  ``wall_s`` is the group's wall time divided by its size (each run's share)."""
  check_group(runs)
  data.require_plain_images("sweeps")
  first = runs[0]
  cfg = first.cfg.distilled
  refuse_compression(cfg, "sweeps")
  k_students = len(runs)
  per_epoch = steps_per_epoch(len(data.train_labels), cfg.batch_size)
  # Learning rate 1: each student scales its update by its own rate (SGD's and AdamW's updates are linear in it).
  tx = run_optimizer(cfg, per_epoch, learning_rate=1.0)
  t_graphdef = teacher.graphdef if teacher is not None else None
  t_shapes = feature_shapes(teacher.graphdef, teacher.params, teacher.rest, data.image_shape) if teacher else {}
  graphdef, state = init_group(runs, tx, data.num_classes, data.image_shape, t_shapes, len(data.train_labels),
                               data_seed)
  hp = group_hparams(runs)
  step = group_step(graphdef, tx, runs, t_graphdef, jitter_pixels=cfg.jitter, hflip=cfg.hflip, precision=cfg.precision,
                    steps_per_epoch=per_epoch, epochs=cfg.epochs)
  eval_step = make_online_eval_step(graphdef)
  t0 = time.perf_counter()
  result = fit(state, lambda s, t, b: step(s, t, b, hp), None, data, epochs=cfg.epochs, batch_size=cfg.batch_size,
               teacher_vars=teacher.variables if teacher is not None else None, seed=data_seed, desc=desc,
               progress=progress, evaluate_fn=lambda s, x, y: evaluate_online(eval_step, s.params, s.rest, x, y))
  wall = time.perf_counter() - t0
  majority = majority_share(np.asarray(data.test_labels).tolist())
  out = []
  for k in range(k_students):
    history = [{"epoch": rec["epoch"], "test_accuracy": rec[f"test_accuracy/{k}"], "test_errors": rec[f"test_errors/{k}"],
                "test_loss": rec[f"test_loss/{k}"], "test_top_class_share": rec[f"test_top_class_share/{k}"],
                "train_loss": rec["train_loss/students"][k], "train_accuracy": rec["train_accuracy/students"][k],
                "train_grad_norm": rec["train_grad_norm/students"][k],
                "skipped_steps": round(rec["train_skipped/students"][k] * per_epoch)} for rec in result.history]
    initial = _student_initial(result.initial, k)
    skipped = sum(h["skipped_steps"] for h in history)
    stage = make_method(runs[k].method, **dict(runs[k].hparams)).main_stage
    out.append({"history": history, "wall_s": wall / k_students, "skipped_steps": skipped, "initial": initial,
                "health": judge_run(history, initial, majority=majority, skipped_steps=skipped,
                                    thresholds=HealthThresholds() if health is None else health,
                                    main_stage=0.0 if stage is None else stage(cfg.epochs))})
    if keep_states:
      out[-1]["state"] = jax.tree.map(lambda a: a[k], result.state)
  return out
