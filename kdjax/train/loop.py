"""The fit loop: device-resident data, a progress bar, metrics one step late, JSONL logs.

:func:`fit` places the data, finds where the run starts (step 0 or a checkpoint), then runs
epochs: :func:`_train_epoch` dispatches the steps and hands each call's metrics to the hooks one
call late, :func:`_end_epoch` evaluates, builds the epoch's record and hands it to the hooks.
Checkpoints, the JSONL log, the progress bar and the non-finite stop are hooks
(:mod:`kdjax.train.hooks`), as are any passed to ``fit(..., hooks=[...])``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import numpy as np

from kdjax import parallel
from kdjax.data.dataset import ArrayDataset
from kdjax.train.checkpoint import Checkpointing, checkpoint_steps, restore_run
from kdjax.train.hooks import (EpochEnd, Hook, NonFiniteLossError, SavePoint, StepMetrics, jsonl_log, progress_bar,
                               save_checkpoints, stop_on_non_finite)
from kdjax.train.state import TrainState
from kdjax.train.evaluation import evaluate

__all__ = ["FitResult", "Hook", "NonFiniteLossError", "device_memory_bytes", "fit", "fits_on_device",
           "steps_per_epoch"]


@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list[dict[str, Any]]  # one record per epoch
  test: dict[str, float]  # final test metrics
  wall_s: float
  # Before training: test_* metrics of the initial state, and train_* metrics of the first step (the
  # levels a health verdict compares with, kdjax.health); empty where the run was not started by fit.
  initial: dict[str, Any] = dataclasses.field(default_factory=dict)


def _plain(value: np.ndarray):
  """A float for a scalar metric, a list for a vector one (one entry per stacked student)."""
  return float(value) if value.ndim == 0 else value.tolist()


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if batch_size > num_examples:
    raise ValueError(f"batch_size {batch_size} is larger than the training set ({num_examples} examples)")
  return num_examples // batch_size  # the remainder is dropped; it changes with every shuffle


def device_memory_bytes() -> int | None:
  """The default device's memory (``bytes_limit`` of its memory statistics), or ``None`` where
  the backend reports none (the CPU, whose device memory is the host's)."""
  stats = jax.devices()[0].memory_stats()
  return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def fits_on_device(nbytes: int, resident_bytes: int | None = None) -> bool:
  """Whether ``nbytes`` of training data may stay resident on the device: at most
  ``resident_bytes``, by default half the device's memory (always, where it reports none)."""
  if resident_bytes is None:
    limit = device_memory_bytes()
    resident_bytes = None if limit is None else limit // 2
  return resident_bytes is None or nbytes <= resident_bytes


class _Schedule(NamedTuple):
  """The run's data order and length: a checkpoint resumes only the same."""
  epochs: int
  n_steps: int  # per epoch
  batch_size: int
  steps_per_call: int
  seed: int


class _Start(NamedTuple):
  """Where the run begins: step 0, or a checkpoint's position."""
  step: int
  history: list[dict[str, Any]]
  sums: dict[str, np.ndarray]  # the partial epoch's metric sums
  wall_s: float
  initial: dict[str, Any]  # FitResult.initial, as far as the run has come


@dataclasses.dataclass(frozen=True, eq=False)
class _Feed:
  """The training set, on the device (``resident``) or streamed from the host."""
  source: dict[str, Any]  # image, label, index, and teacher outputs or images where given
  unlabelled: dict[str, Any] | None
  resident: bool
  gather: Callable  # (source, perm) -> the epoch's batches stacked [n_steps, B, ...], on the device
  mesh: Any
  num_examples: int
  num_unlabelled: int


@dataclasses.dataclass(frozen=True, eq=False)
class _Run:
  """What the epochs of one fit call share."""
  train_step: Callable  # (state, batch) -> (state, metrics)
  feed: _Feed
  schedule: _Schedule
  evaluate: Callable  # state -> test metrics
  hooks: tuple[Hook, ...]
  log_fields: Mapping[str, Any]
  elapsed: Callable[[], float]  # training seconds so far, over every resumed part
  initial: dict[str, Any]  # filled in as the run starts (FitResult.initial)


def fit(state: TrainState, train_step: Callable, eval_step: Callable | None, data: ArrayDataset, *,
        epochs: int, batch_size: int, teacher_vars=None, seed: int = 0, desc: str = "train",
        log_path: str | Path | None = None, log_fields: dict[str, Any] | None = None,
        progress: bool = True, evaluate_fn: Callable[..., dict[str, Any]] | None = None,
        steps_per_call: int = 1, teacher_cache: dict[str, Any] | None = None,
        resident_bytes: int | None = None, mesh=None, checkpointing: Checkpointing | None = None,
        hooks: Sequence[Hook] = ()) -> FitResult:
  """Trains for ``epochs`` epochs; evaluates on the test split after each epoch.

  Data: the training set lives on the device as uint8 (with ``teacher_cache``, the teacher's
  cached outputs beside it; ``data.teacher_train_images`` row for row as
  ``batch["teacher_image"]``; ``data.unlabelled_images`` as ``batch["unlabelled"]``, by their own
  permutation); each epoch is a permutation drawn from ``seed``, gathered on the device. With
  ``steps_per_call=S`` (``train_step`` built the same, :func:`kdjax.train.make_train_step`) the
  host dispatches one call per ``S`` steps; an epoch's last ``n mod S`` steps go as one shorter
  stack. A set larger than ``resident_bytes`` (default: half the device's memory) streams from the
  host instead, in the same order, with a warning.

  Metrics of call ``i`` are fetched after call ``i + 1`` is dispatched; each epoch's record holds
  their means (a vector metric, one entry per stacked student, as a list). A non-finite loss,
  gradient or update stops training with :class:`NonFiniteLossError` naming the step; no
  checkpoint is written after it, so the last checkpoint is the last good state exactly.

  Devices: data-parallel over ``mesh`` (default every device, :func:`kdjax.parallel.make_mesh`):
  state and teacher replicated, each batch split over ``"data"``. With several processes each
  feeds its own rows, and only process 0 logs and shows progress.

  ``checkpointing`` (:class:`kdjax.train.checkpoint.Checkpointing`) writes Orbax checkpoints of
  the state, the loop's position and history every ``every_steps`` steps and at every epoch's
  end; with ``resume`` the run continues from the newest complete one, exactly as a run never
  interrupted (a finished run trains nothing).

  ``evaluate_fn(state, test_images, test_labels) -> dict`` replaces the default evaluation
  (``eval_step`` on ``state.params`` and ``state.rest``), e.g. for stacked students; the dict
  holds ``"accuracy"``, ``"errors"`` and ``"loss"`` and may add more (logged as ``test_<key>``).
  A run started at step 0 is evaluated once before its first step; that and the first step's
  metrics are the result's ``initial`` (kept in checkpoints), what its health is judged against.

  ``hooks`` (:class:`kdjax.train.hooks.Hook`) see each call's metrics, each epoch's record (and
  may add fields to it) and the state, after the built-in ones; any may stop training by raising.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  if not isinstance(steps_per_call, int) or steps_per_call < 1:
    raise ValueError(f"steps_per_call must be an integer >= 1, got {steps_per_call!r}")
  schedule = _Schedule(epochs, steps_per_epoch(len(data.train_labels), batch_size), batch_size, steps_per_call, seed)
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch(batch_size, mesh)
  feed = _place_data(data, teacher_cache, schedule, mesh, resident_bytes, desc)
  evaluate_state = _evaluator(eval_step, evaluate_fn, data, mesh)
  teacher_vars = None if teacher_vars is None else parallel.replicate(teacher_vars, mesh)
  primary = jax.process_index() == 0
  state, start = _starting_point(state, checkpointing, schedule, desc, verbose=primary and progress)
  state = parallel.replicate(state, mesh)
  initial = dict(start.initial)
  if start.step == 0:  # the levels a run's health is judged against: the test metrics before any step
    initial.update({f"test_{k}": v for k, v in evaluate_state(state).items()})
  t0 = time.perf_counter()
  resumed = checkpointing is not None and checkpointing.resume  # its log is rewound to the checkpoint's epochs
  built_in = _built_in_hooks(desc, schedule, start.step, checkpointing, log_path if primary else None,
                             progress and primary, log_fields or {}, len(start.history) if resumed else None)
  run = _Run(lambda s, batch: train_step(s, teacher_vars, batch), feed, schedule, evaluate_state,
             (*built_in, *hooks), log_fields or {}, lambda: start.wall_s + time.perf_counter() - t0, initial)
  history = start.history
  with contextlib.ExitStack() as closing:  # every hook's close, in reverse order, however the run ends
    for hook in run.hooks:
      if hook.close is not None:
        closing.callback(hook.close)
    for epoch in range(start.step // schedule.n_steps + 1, epochs + 1):
      first = max(start.step - (epoch - 1) * schedule.n_steps, 0)  # the epoch's steps already done
      sums = start.sums if first else {}
      state = _train_epoch(run, state, epoch, first, sums, history)
      _end_epoch(run, state, epoch, sums, history)
  test = {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")}
  return FitResult(state=state, history=history, test=test, wall_s=run.elapsed(), initial=dict(initial))


def _built_in_hooks(desc: str, schedule: _Schedule, start: int, checkpointing: Checkpointing | None,
                    log_path: str | Path | None, show_progress: bool, log_fields: Mapping[str, Any],
                    kept_epochs: int | None) -> list[Hook]:
  """The non-finite stop (first: the others see finite metrics only), the JSONL log, then
  checkpoints (so an epoch's line is written before its checkpoint: a crash between them leaves a
  line past the checkpoint, which the resumed run's log drops and writes again, never a checkpoint
  without its line), and the progress bar."""
  hooks = [stop_on_non_finite(desc)]
  if log_path:
    hooks.append(jsonl_log(log_path, run=log_fields, kept_epochs=kept_epochs))
  if checkpointing is not None:
    hooks.append(save_checkpoints(checkpointing, n_steps=schedule.n_steps, batch_size=schedule.batch_size,
                                  seed=schedule.seed, epochs=schedule.epochs))
  total = schedule.epochs * schedule.n_steps
  hooks.append(progress_bar(desc, total=total, initial=min(start, total), enabled=show_progress))
  return hooks


def _train_epoch(run: _Run, state, epoch: int, first: int, sums: dict[str, Any], history: list) -> TrainState:
  """Runs epoch ``epoch`` from its step ``first`` on, adding its metrics to ``sums``. A call's
  metrics go to the hooks after the next call is dispatched, so the device never waits for the
  host; at a hook's mid-epoch save point, at once (checked before it is saved)."""
  n_steps, before = run.schedule.n_steps, (epoch - 1) * run.schedule.n_steps
  pending = None  # the previous call, its metrics still on the device
  for call, (lo, hi, batch) in enumerate(_epoch_batches(run.feed, run.schedule, epoch, first)):
    state, metrics = run.train_step(state, batch)
    if pending is not None:
      _hand_over(run, pending, state, sums)
    pending = StepMetrics(epoch, call, before + lo + 1, hi - lo, run.schedule.steps_per_call > 1, metrics, None)
    due = [h for h in run.hooks if h.on_save_point is not None and hi < n_steps
           and _crosses(h.every_steps, before + hi, hi - lo)]
    if due:
      _hand_over(run, pending, state, sums)
      pending = None
      point = SavePoint(before + hi, epoch, state, list(history), dict(sums), run.elapsed(), None, dict(run.initial))
      for hook in due:
        hook.on_save_point(point)
  if pending is not None:
    _hand_over(run, pending, state, sums)
  return state


def _crosses(every: int, done: int, num_steps: int) -> bool:
  """Whether the call of ``num_steps`` steps ending at step ``done`` reaches a multiple of ``every``."""
  return every > 0 and done // every > (done - num_steps) // every


def _hand_over(run: _Run, call: StepMetrics, state, sums: dict[str, Any]) -> None:
  """Fetches ``call``'s metrics, hands them to the hooks (the non-finite stop first), adds them to ``sums``."""
  call = call._replace(metrics=jax.device_get(call.metrics), state=state)
  if call.first_step == 1:  # the run's first step: its loss and gradient norm are the early levels
    run.initial.update({f"train_{k}": _plain(np.asarray(v)[0] if call.stacked else np.asarray(v))
                        for k, v in call.metrics.items() if k != "finite"})
  for hook in run.hooks:
    if hook.on_step is not None:
      hook.on_step(call)
  for k, v in call.metrics.items():
    if k != "finite":
      v = np.asarray(v, np.float64)
      sums[k] = sums.get(k, 0.0) + (v.sum(0) if call.stacked else v)


def _end_epoch(run: _Run, state, epoch: int, sums: dict[str, Any], history: list) -> None:
  """Evaluates, builds the epoch's record (the hooks add their fields), keeps it, then hands the
  save point to the hooks: the checkpoint, then the log line."""
  n_steps, test = run.schedule.n_steps, run.evaluate(state)
  record = {**run.log_fields, "epoch": epoch, "step": epoch * n_steps,
            **{f"train_{k}": _plain(v / n_steps) for k, v in sums.items()},
            **{f"test_{k}": v for k, v in test.items()},
            "wall_s": round(run.elapsed(), 3)}
  end = EpochEnd(epoch, epoch * n_steps, MappingProxyType(record), state, tuple(history),
                 MappingProxyType(run.initial))
  for hook in run.hooks:
    if hook.on_epoch is not None:
      _add_fields(record, hook.on_epoch(end), hook)
  history.append(record)
  point = SavePoint(epoch * n_steps, epoch, state, list(history), {}, run.elapsed(), MappingProxyType(record),
                    dict(run.initial))
  for hook in run.hooks:
    if hook.on_save_point is not None:
      hook.on_save_point(point)


def _add_fields(record: dict[str, Any], fields: Mapping[str, Any] | None, hook: Hook) -> None:
  if not fields:
    return
  clash = sorted(set(fields) & set(record))
  if clash:
    raise ValueError(f"hook {hook.on_epoch!r} returned fields the epoch's record already has: {clash}")
  try:
    json.dumps(dict(fields))
  except TypeError as e:
    raise TypeError(f"hook {hook.on_epoch!r} returned fields that JSON cannot store ({e}): the record goes to "
                    "checkpoints and metrics.jsonl; return plain numbers, strings, lists or dicts") from None
  record.update(fields)


def _evaluator(eval_step: Callable | None, evaluate_fn: Callable | None, data: ArrayDataset, mesh) -> Callable:
  """``state -> test metrics``: ``evaluate_fn`` on the device-resident test split, or ``eval_step``
  over it (over the host's copy on a non-trivial mesh, each batch split over the data axis)."""
  test_x, test_y = parallel.replicate((np.asarray(data.test_images), np.asarray(data.test_labels)), mesh)
  if evaluate_fn is not None:
    return lambda state: evaluate_fn(state, test_x, test_y)
  eval_x, eval_y = (test_x, test_y) if parallel.trivial(mesh) else (data.test_images, data.test_labels)
  return lambda state: evaluate(eval_step, state.params, state.rest, eval_x, eval_y, mesh=mesh)


def _starting_point(state, checkpointing: Checkpointing | None, schedule: _Schedule, desc: str,
                    verbose: bool) -> tuple[Any, _Start]:
  """``(state, start)``: step 0, or with ``checkpointing.resume`` the newest complete checkpoint's
  state and position. A fresh run refuses a directory that already holds checkpoints."""
  fresh = _Start(0, [], {}, 0.0, {})
  if checkpointing is None:
    return state, fresh
  if not checkpointing.resume:
    if steps := checkpoint_steps(checkpointing.directory):
      raise ValueError(f"{checkpointing.directory} already holds checkpoints (steps {sorted(steps)}): resume "
                       "that run (--resume), or use another directory")
    return state, fresh
  restored = restore_run(checkpointing, state)
  if restored is None:
    return state, fresh
  state, meta = restored
  _check_position(meta, checkpointing, n_steps=schedule.n_steps, batch_size=schedule.batch_size, seed=schedule.seed,
                  epochs=schedule.epochs)
  if meta["step"] > schedule.epochs * schedule.n_steps:
    raise ValueError(f"checkpoint in {checkpointing.directory} is at step {meta['step']}, past this run's "
                     f"{schedule.epochs * schedule.n_steps} steps ({schedule.epochs} epochs): it cannot resume it "
                     "(use another directory)")
  if verbose:
    print(f"{desc}: resumed from step {meta['step']} ({checkpointing.directory})", flush=True)
  sums = {k: np.asarray(v, np.float64) for k, v in meta["sums"].items()}
  return state, _Start(meta["step"], meta["history"], sums, meta["wall_s"], meta.get("initial", {}))


def _check_position(meta: dict[str, Any], checkpointing: Checkpointing, **expected) -> None:
  """A checkpoint resumes only the same data order and schedule: same steps per epoch, batch size,
  seed and epochs (the learning-rate schedule spans them)."""
  for key, value in expected.items():
    if meta.get(key) != value:
      raise ValueError(f"checkpoint in {checkpointing.directory} was written with {key} {meta.get(key)}, but this "
                       f"run has {key} {value}: it cannot resume it (use another directory)")


def _place_data(data: ArrayDataset, teacher_cache, schedule: _Schedule, mesh, resident_bytes: int | None,
                desc: str) -> _Feed:
  """The training set on the device if it fits (with one epoch gathered from it) and there is one
  process; otherwise left on the host, to stream from (with a warning, on one process)."""
  n = len(data.train_labels)
  source = {"image": np.asarray(data.train_images), "label": np.asarray(data.train_labels),
            "index": np.arange(n, dtype=np.int32)}
  if teacher_cache is not None:
    source["teacher"] = teacher_cache  # already on the device (or on the host) as it was made
  if data.teacher_train_images is not None:
    source["teacher_image"] = np.asarray(data.teacher_train_images)
  # Unlabelled images are paired with the batches afresh each epoch, by their own permutation.
  unlabelled = None if data.unlabelled_images is None else {"unlabelled": np.asarray(data.unlabelled_images)}
  nbytes = sum(a.nbytes for a in jax.tree.leaves((source, unlabelled)))
  # On the device: the set and one epoch gathered from it (the unlabelled images as many as an epoch takes).
  gathered = sum(a.nbytes for a in jax.tree.leaves(source))
  if unlabelled is not None:
    gathered += schedule.n_steps * schedule.batch_size * unlabelled["unlabelled"][0].nbytes
  resident = jax.process_count() == 1 and fits_on_device(nbytes + gathered, resident_bytes)
  if resident:
    source, unlabelled = parallel.replicate((source, unlabelled), mesh)
  elif jax.process_count() == 1:
    warnings.warn(f"{desc}: the training set ({nbytes / 2**20:,.1f} MiB) does not fit the device-resident "
                  f"pipeline's budget ({(resident_bytes if resident_bytes is not None else device_memory_bytes() // 2) / 2**20:,.1f} MiB); "
                  f"streaming its batches from the host instead (same order, slower)", stacklevel=3)
  n_steps, batch_size = schedule.n_steps, schedule.batch_size
  # The epoch's order gathered on the device once, each batch split over the data axis.
  gather = jax.jit(lambda src, perm: jax.tree.map(lambda a: _stack(a, perm, 0, n_steps, batch_size), src),
                   out_shardings=None if parallel.trivial(mesh) else parallel.batch_sharding(mesh, stacked=True))
  return _Feed(source, unlabelled, resident, gather, mesh, n,
               0 if data.unlabelled_images is None else len(data.unlabelled_images))


def _stack(a, perm, lo: int, hi: int, batch_size: int):
  """Batches ``lo..hi-1`` of the epoch ``perm`` orders, in their order: ``[hi - lo, B, ...]``."""
  return a[perm[lo * batch_size:hi * batch_size]].reshape(hi - lo, batch_size, *a.shape[1:])


def _epoch_batches(feed: _Feed, schedule: _Schedule, epoch: int, first: int):
  """The epoch's calls from step ``first`` on, as ``(lo, hi, batch)``: steps ``lo..hi-1``, stacked
  when ``steps_per_call > 1``. Each epoch's order is a permutation drawn from the seed and the
  epoch (the unlabelled images', from a stream apart), so a resumed run sees the same batches."""
  n_steps, batch_size, per_call = schedule.n_steps, schedule.batch_size, schedule.steps_per_call
  shuffle_key = jax.random.key(schedule.seed)
  perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), feed.num_examples)[:n_steps * batch_size]
  perm_u = None
  if feed.unlabelled is not None:  # as many as the epoch's batches take, cycling through a permutation
    unlabelled_key = jax.random.fold_in(shuffle_key, 2**31 - 1)
    perm_u = jax.random.permutation(jax.random.fold_in(unlabelled_key, epoch), feed.num_unlabelled)
    perm_u = perm_u[np.arange(n_steps * batch_size) % feed.num_unlabelled]
  if feed.resident:
    epoch_data = feed.gather(feed.source, perm)
    if feed.unlabelled is not None:
      epoch_data = {**epoch_data, **feed.gather(feed.unlabelled, perm_u)}
  else:
    perm, perm_u = np.asarray(perm), None if perm_u is None else np.asarray(perm_u)
  for lo in range(first, n_steps, per_call):
    hi = min(lo + per_call, n_steps)
    if feed.resident:
      yield lo, hi, jax.tree.map(lambda a: a[lo] if per_call == 1 else a[lo:hi], epoch_data)
    else:
      def host(src, order):
        return jax.tree.map(lambda a: _stack(a, order, lo, hi, batch_size)[0] if per_call == 1
                            else _stack(a, order, lo, hi, batch_size), src)
      parts = {**host(feed.source, perm), **(host(feed.unlabelled, perm_u) if feed.unlabelled is not None else {})}
      yield lo, hi, parallel.host_batch(parts, feed.mesh, stacked=per_call > 1)
