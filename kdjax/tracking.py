"""TensorBoard event files beside a run's metrics.jsonl (optional; see docs/tracking.md).

``metrics.jsonl`` (and a sweep's ``results.jsonl``) stays the source of truth; tracking mirrors it,
one folder of event files per run (``ROOT/RUN_seedS``), for TensorBoard's curves. What a run gets:

- each epoch's record, as the JSONL line holds it, at the record's global step: ``test_X`` as
  ``test/X``, every other number ``X`` as ``epoch/X`` (``epoch/train_loss``, ``epoch/wall_s``); a list
  of numbers (one per stacked student) as ``TAG/0``, ``TAG/1``, ...; ``run``, ``seed``, ``epoch`` and
  ``step`` (the run's name and the axis) and anything not a number (the health so far) are left out;
- the training step's own metrics (``loss``, ``accuracy``, ``grad_norm``, ...) as ``train/NAME``, at
  every ``every_steps``-th step, where the loop hands them over (:func:`kdjax.train.hooks.tensorboard_log`);
- the resolved config as text ``config`` (JSON in a code block) at step 0;
- the health verdict as text ``health`` and the scalar ``health/ok`` (1 or 0) at the run's last step.

The writer is tensorboardX's ``SummaryWriter`` (event files TensorBoard reads; no TensorFlow). It is
imported only when a writer opens: with tracking off nothing of TensorBoard is loaded. Tracking never
changes a run's result, so it is no part of a run's identity. Plain Python and NumPy: no JAX, no
other kdjax module.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

INSTALL = "pip install 'kdjax[track]'"
FLUSH_SECS = 10  # how often the writer's thread writes what it holds to disk (and at close)
NOT_SCALARS = ("run", "seed", "epoch", "step")  # a record's name and axis, not curves
EVENT_FILES = "events.out.tfevents.*"


def require_tensorboardx():
  """The ``SummaryWriter`` class; an ``ImportError`` naming the install command when tensorboardX is missing."""
  try:
    from tensorboardX import SummaryWriter
  except ImportError as e:
    raise ImportError(f"TensorBoard tracking needs tensorboardX, which is not installed ({e}): {INSTALL}") from None
  return SummaryWriter


def run_name(run: str, seed: int) -> str:
  """A run's folder under the tracking root: ``"distilled_seed0"`` (as checkpoints/ names it); a sweep's
  variant ``"method=dkd temperature=4"`` as ``"method=dkd_temperature=4_seed0"``."""
  return re.sub(r"[^\w.,=+-]+", "_", run).strip("_") + f"_seed{seed}"


def open_writer(log_dir: str | Path, *, fresh: bool = False):
  """A ``SummaryWriter`` writing event files into ``log_dir`` (created). ``fresh`` first removes the
  event files an earlier run left there (only those: a folder shared with other files keeps them), as
  a new run empties its JSONL log."""
  SummaryWriter = require_tensorboardx()
  log_dir = Path(log_dir)
  if fresh and log_dir.is_dir():
    for old in log_dir.glob(EVENT_FILES):
      old.unlink()
  log_dir.mkdir(parents=True, exist_ok=True)
  # The file is named by the second it opens; the nanoseconds after it keep two writers of one second (a run
  # resumed at once) from sharing a name, and in order (TensorBoard reads a folder's files by name).
  return SummaryWriter(str(log_dir), flush_secs=FLUSH_SECS, filename_suffix=f".{time.time_ns()}")


def flush(writer) -> None:
  """Puts everything ``writer`` was given on disk now. tensorboardX's own ``flush()`` flushes only what
  its background thread has already taken off its queue; here each event file's thread is stopped (it
  writes the whole queue first), the file flushed, and a new thread started on the same file. Where a
  tensorboardX release lays its writers out otherwise, its own ``flush()``."""
  files = [w.event_writer for w in (getattr(writer, "all_writers", None) or {}).values()
           if hasattr(getattr(w, "event_writer", None), "_worker")]
  if not files:
    writer.flush()
    return
  for events in files:
    if events._closed:
      continue
    worker = events._worker
    worker.stop()  # the shutdown signal queues behind every pending event: all of them are written
    events._ev_writer.flush()
    events._worker = type(worker)(events._event_queue, events._ev_writer, events._flush_secs)
    events._worker.start()


@contextlib.contextmanager
def run_writers(root: str | Path | None, *, config: Mapping[str, Any] | None = None,
                fresh: bool = True) -> Iterator[Callable[[str], Any] | None]:
  """Yields ``writer(name)``: the writer of run ``name`` (folder ``root/name``), opened the first time it
  is asked for (its old event files removed first when ``fresh``), then ``config`` written as its
  ``config`` text (not again in a folder a resumed run already wrote to). Every writer opened is closed
  on exit, however the ``with`` body ends, so what a failed run logged is on disk. With ``root`` None
  (tracking off) it yields None and imports nothing."""
  if root is None:
    yield None
    return
  require_tensorboardx()  # missing: fails before any run trains
  writers: dict[str, Any] = {}

  def writer(name: str):
    if name not in writers:
      folder = Path(root) / name
      written = not fresh and folder.is_dir() and any(folder.glob(EVENT_FILES))
      writers[name] = open_writer(folder, fresh=fresh)
      if config is not None and not written:
        write_config(writers[name], config)
    return writers[name]

  try:
    yield writer
  finally:
    for w in writers.values():
      w.close()


def _add(tags: dict[str, float], tag: str, value: Any) -> None:
  """Adds ``value`` under ``tag`` when it is a number (a bool as 0 or 1), or under ``tag/i`` each entry of
  a flat list or an array of numbers; anything else is not a scalar and is left out."""
  if isinstance(value, np.ndarray):
    value = value.item() if value.ndim == 0 else value.ravel().tolist()
  if isinstance(value, numbers.Real):
    tags[tag] = float(value)
  elif isinstance(value, (list, tuple)) and all(isinstance(v, numbers.Real) for v in value):
    for i, v in enumerate(value):
      tags[f"{tag}/{i}"] = float(v)


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
  """``{tag: value}`` of an epoch's JSONL record: ``test_X`` as ``test/X``, other numbers as ``epoch/X``
  (``run``, ``seed``, ``epoch``, ``step`` and non-numbers left out)."""
  tags: dict[str, float] = {}
  for key, value in record.items():
    if key not in NOT_SCALARS:
      _add(tags, f"test/{key[5:]}" if key.startswith("test_") else f"epoch/{key}", value)
  return tags


def step_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """``{tag: value}`` of one train step's metrics: ``NAME`` as ``train/NAME`` (the ``finite`` flag left out)."""
  tags: dict[str, float] = {}
  for key, value in metrics.items():
    if key != "finite":
      _add(tags, f"train/{key}", np.asarray(value))
  return tags


def _write(writer, tags: Mapping[str, float], step: int) -> None:
  for tag, value in tags.items():
    writer.add_scalar(tag, value, step)


def write_record(writer, record: Mapping[str, Any], step: int | None = None) -> None:
  """Writes an epoch's record (:func:`record_scalars`) at ``step``, by default the record's own ``"step"``."""
  if step is None:
    if not isinstance(record.get("step"), int):
      raise ValueError(f"an epoch's record without an integer 'step' needs the step given: {sorted(record)}")
    step = record["step"]
  _write(writer, record_scalars(record), step)


def write_step(writer, step: int, metrics: Mapping[str, Any]) -> None:
  """Writes one train step's metrics (:func:`step_scalars`) at global step ``step``."""
  _write(writer, step_scalars(metrics), step)


def write_config(writer, config: Mapping[str, Any]) -> None:
  """Writes the resolved config as the text ``config`` at step 0: JSON in a Markdown code block."""
  writer.add_text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)


def health_text(health: Mapping[str, Any] | None) -> str:
  """The verdict in Markdown: ``ok``, or ``unhealthy`` and one line per problem, then the verdict as JSON."""
  if not health:
    return "not judged"
  problems: Sequence[Mapping[str, Any]] = health.get("problems", [])
  lines = ["**ok**" if health.get("ok", True) else "**unhealthy**", ""]
  lines += [f"- {p.get('label', p.get('kind'))}: {p.get('detail', '')}" for p in problems]
  return "\n".join([*lines, "", "```json", json.dumps(health, indent=2, default=str), "```"])


def write_health(writer, health: Mapping[str, Any] | None, step: int) -> None:
  """Writes the run's verdict (:mod:`kdjax.health`) at ``step`` (its last): the text ``health`` and the
  scalar ``health/ok``, 1 for a healthy run, 0 for an unhealthy one (none for a run not judged)."""
  writer.add_text("health", health_text(health), step)
  if health:
    writer.add_scalar("health/ok", float(bool(health.get("ok", True))), step)


def restart_at(writer, step: int) -> None:
  """Marks that the run's steps (re)start at ``step`` (a ``SessionLog.START`` event, as tensorboardX's
  ``purge_step`` writes it): for a resumed run, TensorBoard's reader drops the points at ``step`` and
  after that the interrupted run logged past its checkpoint, so each step shows once."""
  from tensorboardX.proto.event_pb2 import Event, SessionLog
  writer.file_writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))


def write_run(root: str | Path, name: str, records: Sequence[Mapping[str, Any]], *, steps_per_epoch: int,
              config: Mapping[str, Any] | None = None, health: Mapping[str, Any] | None = None) -> Path:
  """Writes a finished run at once (a sweep's, from its stored record): ``config``, each epoch's record at
  step ``epoch * steps_per_epoch`` (or its own ``"step"``), and ``health`` at the last. The folder's old
  event files are replaced. Returns the run's folder."""
  folder = Path(root) / name
  with contextlib.closing(open_writer(folder, fresh=True)) as writer:
    if config is not None:
      write_config(writer, config)
    step = 0
    for record in records:
      step = record["step"] if isinstance(record.get("step"), int) else record["epoch"] * steps_per_epoch
      write_record(writer, record, step)
    write_health(writer, health, step)
  return folder
