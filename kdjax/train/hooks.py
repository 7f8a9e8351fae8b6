"""Hooks: what the fit loop (:func:`kdjax.train.fit`) calls at fixed points of a run.

A :class:`Hook` is a few optional callables; :func:`kdjax.train.fit` calls them in order, the
built-in ones first (non-finite stop, the JSONL log, checkpoints, the progress bar, in that order),
then those passed as ``fit(..., hooks=[...])``:

- ``on_step(StepMetrics)``: each call's metrics, fetched to the host one call late (the device
  never waits for the host), in order. The built-in non-finite stop raises here, so the hooks after
  it see finite metrics only.
- ``on_epoch(EpochEnd) -> fields``: the epoch's record (train means, test metrics) before it is
  kept; the returned fields (new keys, JSON-serializable values) are added to it, and so reach the
  history, the checkpoint and ``metrics.jsonl``. A hook later in the list sees the fields of those
  before it. E.g. a health verdict::

      def verdict(end):
        return {"health": "diverged" if end.record["train_loss"] > 10 else "ok"}
      fit(..., hooks=[Hook(on_epoch=verdict)])

- ``on_save_point(SavePoint)``: the run at a consistent point, every step up to ``point.step``
  done and its metrics checked: at each epoch's end, once its record is kept, and mid-epoch after
  the call that reaches each multiple of the hook's ``every_steps``. Checkpoints are written here,
  and the log line after them.
- ``close()``: once when the run ends, however it ends.

The state a hook sees is the loop's own, whose buffers the next train step takes over (donates):
read from it during the call (``jax.device_get``), keep no reference to it.

Any callable may stop training by raising: the exception leaves ``fit`` (after every ``close``).
Raised in ``on_epoch``, it stops before the epoch's record is saved or logged; raised in
``on_save_point`` (where a hook passed to ``fit`` runs after the built-in ones), after it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from kdjax import tracking
from kdjax.health import HealthThresholds, judge_run
from kdjax.train.checkpoint import Checkpointing, save_run
from kdjax.train.state import TrainState
from kdjax.workdir import write_atomic


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/Inf loss or gradient; ``.state`` is the last good state."""

  def __init__(self, message: str, *, step: int, metric: str, state: TrainState):
    super().__init__(message)
    self.step, self.metric, self.state = step, metric, state


class StepMetrics(NamedTuple):
  """One call's metrics (``num_steps`` train steps), fetched to the host."""
  epoch: int
  call: int  # the call's index among the epoch's calls (from where a resumed run started)
  first_step: int  # the call's first step, counted over the run from 1
  num_steps: int
  stacked: bool  # each metric has a leading axis of num_steps (fit's steps_per_call > 1)
  metrics: dict[str, np.ndarray]  # as the train step returns them, "finite" included
  state: TrainState  # the newest state: past this call, it may hold the steps of one more call


class EpochEnd(NamedTuple):
  """An epoch's record before it is kept (``on_epoch``)."""
  epoch: int
  step: int  # steps done, counted over the run
  record: Mapping[str, Any]  # read-only: add fields by returning them
  state: TrainState
  history: tuple[Mapping[str, Any], ...]  # the records of the epochs before
  initial: Mapping[str, Any] = MappingProxyType({})  # test_* before the first step, train_* of the first step


class SavePoint(NamedTuple):
  """The run after step ``step``, all of whose metrics were checked (``on_save_point``)."""
  step: int
  epoch: int
  state: TrainState  # exactly the state after step ``step``
  history: list[dict[str, Any]]  # the records kept so far (a copy)
  sums: dict[str, np.ndarray]  # the epoch's metric sums so far; empty at an epoch's end
  wall_s: float  # training time so far, over every resumed part of the run
  record: Mapping[str, Any] | None  # the epoch's record at its end; None mid-epoch
  initial: dict[str, Any]  # test_* before the first step, train_* of the first step (FitResult.initial)


@dataclasses.dataclass(frozen=True)
class Hook:
  """Callables the fit loop calls (see the module's docstring); each is optional."""
  on_step: Callable[[StepMetrics], None] | None = None
  on_epoch: Callable[[EpochEnd], Mapping[str, Any] | None] | None = None
  on_save_point: Callable[[SavePoint], None] | None = None
  every_steps: int = 0  # mid-epoch save points: after the call reaching each multiple (0: none)
  close: Callable[[], None] | None = None

  def __post_init__(self):
    if self.every_steps < 0:
      raise ValueError(f"a hook's every_steps must be >= 0, got {self.every_steps}")


def stop_on_non_finite(desc: str) -> Hook:
  """Raises :class:`NonFiniteLossError` at the first call with a non-finite step, naming the step."""

  def check(call: StepMetrics) -> None:
    finite = np.atleast_1d(call.metrics["finite"])
    if finite.all():
      return
    i = int(np.argmin(finite))  # the first non-finite step of the call
    m_i = {k: (np.asarray(v)[i] if call.stacked else v) for k, v in call.metrics.items()}
    bad = next((k for k in ("loss", "grad_norm", "update_norm") if k in m_i and not math.isfinite(float(m_i[k]))),
               "loss")
    raise NonFiniteLossError(
        f"{desc}: {bad} became {float(m_i[bad])} at step {call.first_step + i} (epoch {call.epoch}); training "
        f"stopped, the last good state is kept", step=call.first_step + i, metric=bad, state=call.state)

  return Hook(on_step=check)


def save_checkpoints(checkpointing: Checkpointing, **position: int) -> Hook:
  """Writes an Orbax checkpoint of the state, the history and the epoch's partial sums at every
  save point (every process must run it); ``position`` (``n_steps``, ``batch_size``, ``seed``,
  ``epochs``) is stored beside them, for a resume to check."""

  def save(point: SavePoint) -> None:
    save_run(checkpointing, point.step, point.state, {
        "step": point.step, "history": point.history,
        "sums": {k: np.asarray(v).tolist() for k, v in point.sums.items()}, "wall_s": point.wall_s,
        "initial": point.initial, **position})

  return Hook(on_save_point=save, every_steps=checkpointing.every_steps)


def jsonl_log(path: str | Path, *, run: Mapping[str, Any] | None = None, kept_epochs: int | None = None) -> Hook:
  """Appends each epoch's record to ``path`` as one JSON line. A resumed run passes ``kept_epochs``,
  the epochs its checkpoint holds: its lines past them (those of ``run``'s fields, e.g. ``{"run":
  "student", "seed": 1}``, written after that checkpoint, or before a fall-back to an older one) are
  removed first, so the log reads as the uninterrupted run's, each epoch once."""
  if kept_epochs is not None:
    rewind_log(path, run or {}, kept_epochs)
  log_file = open(path, "a")  # noqa: SIM115 - closed by the hook's close

  def write(point: SavePoint) -> None:
    if point.record is not None:
      log_file.write(json.dumps(dict(point.record)) + "\n")
      log_file.flush()

  return Hook(on_save_point=write, close=log_file.close)


def tensorboard_log(writer, *, every_steps: int = 10) -> Hook:
  """Mirrors the run to TensorBoard through ``writer`` (:func:`kdjax.tracking.open_writer`): each epoch's
  record as the JSONL log writes it, at its step (:func:`kdjax.tracking.write_record`: ``test/*``,
  ``epoch/*``), and the train step's metrics at every ``every_steps``-th step (``train/*``). Its first
  step is marked as a restart (:func:`kdjax.tracking.restart_at`): for a resumed run, the points an
  interrupted one logged past its checkpoint are dropped. The writer's owner closes it; the hook
  flushes it when the run ends, however it ends."""
  if every_steps < 1:
    raise ValueError(f"tensorboard_log's every_steps must be >= 1, got {every_steps}")
  started = False

  def steps(call: StepMetrics) -> None:
    nonlocal started
    if not started:
      started = True
      tracking.restart_at(writer, call.first_step)
    for i in range(call.num_steps):
      if (call.first_step + i) % every_steps == 0:
        tracking.write_step(writer, call.first_step + i,
                            {k: np.asarray(v)[i] if call.stacked else v for k, v in call.metrics.items()})

  def epoch(point: SavePoint) -> None:
    if point.record is not None:
      tracking.write_record(writer, point.record)
    tracking.flush(writer)  # every epoch end and checkpoint: a killed run resumes past nothing it had not written

  return Hook(on_step=steps, on_save_point=epoch, close=lambda: tracking.flush(writer))


def rewind_log(path: str | Path, run: Mapping[str, Any], kept_epochs: int) -> None:
  """Removes from the JSONL log ``path`` the epoch lines of ``run`` (every line whose fields include
  ``run``'s) past epoch ``kept_epochs``; other lines stay as they are, byte for byte. The file is
  replaced whole (written aside, then renamed): a crash leaves the old log or the new one."""
  path = Path(path)
  if not path.exists():
    return
  lines = path.read_bytes().splitlines(keepends=True)

  def stale(line: bytes) -> bool:
    try:
      record = json.loads(line)
    except ValueError:
      return not line.endswith(b"\n")  # a line cut short by a crash
    return (isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] > kept_epochs
            and all(record.get(k) == v for k, v in run.items()))

  kept = [line if line.endswith(b"\n") else line + b"\n" for line in lines if not stale(line)]
  if kept != lines:
    write_atomic(path, b"".join(kept))


def judge_health(majority: float, thresholds: HealthThresholds | None = None, main_stage: float = 0.0) -> Hook:
  """Adds ``"health"`` to each epoch's record: the problems (:func:`kdjax.health.judge_run`'s kinds)
  of the run so far, ``[]`` while it is healthy; ``majority`` is the commonest test class's share,
  ``main_stage`` a staged method's (:attr:`kdjax.methods.Method.main_stage` for this run)."""
  thresholds = HealthThresholds() if thresholds is None else thresholds

  def judge(end: EpochEnd) -> dict[str, Any]:
    health = judge_run([*end.history, end.record], end.initial, majority=majority, thresholds=thresholds,
                       main_stage=main_stage)
    return {"health": [p["kind"] for p in health["problems"]]}

  return Hook(on_epoch=judge)


def progress_bar(desc: str, *, total: int, initial: int, enabled: bool) -> Hook:
  """A tqdm bar over the run's steps, with the loss and accuracy beside it."""
  # disable=None: tqdm hides the bar when stderr is not a terminal (logs, CI).
  bar = tqdm(total=total, initial=initial, desc=desc, disable=None if enabled else True, leave=False,
             dynamic_ncols=True)

  def advance(call: StepMetrics) -> None:
    bar.update(call.num_steps)
    if call.call % 20 == 0:
      bar.set_postfix(epoch=call.epoch, loss=f"{float(np.mean(call.metrics['loss'])):.4f}",
                      acc=f"{float(np.mean(call.metrics['accuracy'])):.3f}")

  def show(point: SavePoint) -> None:
    if point.record is not None:
      bar.set_postfix(epoch=point.epoch, loss=f"{point.record['train_loss']:.4f}",
                      test_acc=f"{point.record['test_accuracy']:.4f}")

  return Hook(on_step=advance, on_save_point=show, close=bar.close)
