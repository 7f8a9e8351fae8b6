"""The fit loop: device-resident data, a progress bar, metrics one step late, JSONL logs."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from kdjax.data.dataset import ArrayDataset
from kdjax.train.checkpoint import Checkpointing, checkpoint_steps, restore_run, save_run
from kdjax.train.state import TrainState
from kdjax.train.steps import evaluate


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/Inf loss or gradient; ``.state`` is the last good state."""

  def __init__(self, message: str, *, step: int, metric: str, state: TrainState):
    super().__init__(message)
    self.step, self.metric, self.state = step, metric, state


@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list[dict[str, Any]]  # one record per epoch
  test: dict[str, float]  # final test metrics
  wall_s: float


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


def fit(state: TrainState, train_step: Callable, eval_step: Callable | None, data: ArrayDataset, *,
        epochs: int, batch_size: int, teacher_vars=None, seed: int = 0, desc: str = "train",
        log_path: str | Path | None = None, log_fields: dict[str, Any] | None = None,
        progress: bool = True, evaluate_fn: Callable[..., dict[str, Any]] | None = None,
        steps_per_call: int = 1, teacher_cache: dict[str, Any] | None = None,
        resident_bytes: int | None = None, mesh=None, checkpointing: Checkpointing | None = None) -> FitResult:
  """Trains for ``epochs`` epochs; evaluates on the test split after each epoch.

  The training set lives on the device as uint8 (with ``teacher_cache``, the teacher's cached
  outputs beside it); each epoch is a fresh permutation drawn from ``seed``, gathered on the
  device, and the step augments on the device, so with ``steps_per_call=S`` the host only
  dispatches one call per ``S`` steps (``train_step`` built with the same ``steps_per_call``,
  see :func:`kdjax.train.make_train_step`; an epoch's last ``n mod S`` steps go as one shorter
  stack, compiled once more). The teacher runs on a whole stack at once (``S·B`` images), so ``S``
  is bounded by the teacher's activation memory; 16 to 64 at batch 64 is the intended range. A
  training set larger than ``resident_bytes`` (default: half the device's memory) streams
  from the host instead, batch stack by batch stack, in the same order, with a warning.
  Metrics of call ``i`` are fetched to the host
  after call ``i + 1`` is dispatched, so the device never waits for the host; each epoch's record
  holds their means (a vector metric, one entry per stacked student, as a list).
  A non-finite loss, gradient or update stops training with :class:`NonFiniteLossError`
  naming the step, and no checkpoint is written after it. The state it carries is finite (a bad
  step leaves the state as it was) but, since metrics are read one call late, may include the
  steps of one more call; the last checkpoint is the last good state exactly.

  Devices: every step runs data-parallel over ``mesh`` (default: :func:`kdjax.parallel.make_mesh`,
  every device; one device is the trivial case): the state and teacher replicated, each batch
  split over the ``"data"`` axis (``batch_size`` must divide by its size). With several
  processes each feeds only its own rows of every batch (streamed from the host), and only
  process 0 logs and shows progress.

  Extras of ``data`` travel with the batches: ``teacher_train_images`` row for row (as
  ``batch["teacher_image"]``), and ``unlabelled_images`` as ``batch["unlabelled"]``, ``batch_size``
  of them per step, drawn by their own permutation each epoch (cycling when there are fewer
  than an epoch takes); see :func:`kdjax.train.make_train_step`.

  ``checkpointing`` (:class:`kdjax.train.checkpoint.Checkpointing`) writes Orbax checkpoints of
  the state with the loop's position and history every ``every_steps`` steps and at the end of
  every epoch; with ``resume`` the run continues from the newest complete one (the same seed gives
  the same batches, augmentation and result as a run never interrupted; a run already finished
  trains nothing).

  ``evaluate_fn(state, test_images, test_labels) -> dict``, when given, replaces the default
  evaluation (``eval_step`` on ``state.params``, ``state.rest``; it may then be ``None``), e.g.
  for a stacked cohort of students (:mod:`kdjax.train.online`). The images and labels are the
  device-resident test split; the dict must hold ``"accuracy"``, ``"errors"`` and ``"loss"``
  and may add more (each logged as ``test_<key>``).
  """
  from kdjax import parallel
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  if not isinstance(steps_per_call, int) or steps_per_call < 1:
    raise ValueError(f"steps_per_call must be an integer >= 1, got {steps_per_call!r}")
  n_steps = steps_per_epoch(len(data.train_labels), batch_size)
  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch(batch_size, mesh)
  primary = jax.process_index() == 0
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
    gathered += n_steps * batch_size * unlabelled["unlabelled"][0].nbytes
  resident = jax.process_count() == 1 and fits_on_device(nbytes + gathered, resident_bytes)
  if resident:
    source, unlabelled = parallel.replicate((source, unlabelled), mesh)
  elif jax.process_count() == 1:
    warnings.warn(f"{desc}: the training set ({nbytes / 2**20:,.1f} MiB) does not fit the device-resident "
                  f"pipeline's budget ({(resident_bytes if resident_bytes is not None else device_memory_bytes() // 2) / 2**20:,.1f} MiB); "
                  f"streaming its batches from the host instead (same order, slower)", stacklevel=2)
  test_x, test_y = parallel.replicate((np.asarray(data.test_images), np.asarray(data.test_labels)), mesh)
  # The default evaluation splits each test batch over the data axis itself, from the host's copy.
  eval_x, eval_y = (test_x, test_y) if parallel.trivial(mesh) else (data.test_images, data.test_labels)
  teacher_vars = None if teacher_vars is None else parallel.replicate(teacher_vars, mesh)

  def stack(a, perm, lo, hi):  # batches lo..hi-1 of the epoch in their order: [hi - lo, B, ...]
    return a[perm[lo * batch_size:hi * batch_size]].reshape(hi - lo, batch_size, *a.shape[1:])

  # The epoch's order gathered on the device once, each batch split over the data axis.
  gather_epoch = jax.jit(lambda src, perm: jax.tree.map(lambda a: stack(a, perm, 0, n_steps), src),
                         out_shardings=None if parallel.trivial(mesh) else parallel.batch_sharding(mesh, stacked=True))

  history: list[dict[str, Any]] = []
  start, partial_sums, wall_before = 0, None, 0.0
  if checkpointing is not None and not checkpointing.resume and checkpoint_steps(checkpointing.directory):
    raise ValueError(f"{checkpointing.directory} already holds checkpoints (steps "
                     f"{sorted(checkpoint_steps(checkpointing.directory))}): resume that run (--resume), or use "
                     "another directory")
  if checkpointing is not None and checkpointing.resume:
    restored = restore_run(checkpointing, state)
    if restored is not None:
      state, meta = restored
      _check_position(meta, checkpointing, n_steps=n_steps, batch_size=batch_size, seed=seed, epochs=epochs)
      start, history, wall_before = meta["step"], meta["history"], meta["wall_s"]
      if start > epochs * n_steps:
        raise ValueError(f"checkpoint in {checkpointing.directory} is at step {start}, past this run's "
                         f"{epochs * n_steps} steps ({epochs} epochs): it cannot resume it (use another directory)")
      partial_sums = {k: np.asarray(v, np.float64) for k, v in meta["sums"].items()}
      if primary and progress:
        print(f"{desc}: resumed from step {start} ({checkpointing.directory})", flush=True)
  state = parallel.replicate(state, mesh)
  log_file = open(log_path, "a") if log_path and primary else None
  shuffle_key = jax.random.key(seed)
  unlabelled_key = jax.random.fold_in(shuffle_key, 2**31 - 1)  # a stream apart from the epochs' shuffles
  t0 = time.perf_counter()

  def save(step_no, sums):
    if checkpointing is not None:
      save_run(checkpointing, step_no, state, {
          "step": step_no, "history": history, "sums": {k: np.asarray(v).tolist() for k, v in sums.items()},
          "wall_s": wall_before + time.perf_counter() - t0, "n_steps": n_steps, "batch_size": batch_size,
          "seed": seed, "epochs": epochs})

  # disable=None: tqdm hides the bar when stderr is not a terminal (logs, CI).
  bar = tqdm(total=epochs * n_steps, initial=min(start, epochs * n_steps), desc=desc,
             disable=None if progress and primary else True, leave=False, dynamic_ncols=True)
  try:
    for epoch in range(start // n_steps + 1, epochs + 1):
      first = start - (epoch - 1) * n_steps if start > (epoch - 1) * n_steps else 0  # steps already done
      calls = [(lo, min(lo + steps_per_call, n_steps)) for lo in range(first, n_steps, steps_per_call)]
      perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)[:n_steps * batch_size]
      if unlabelled is not None:  # as many as the epoch's batches take, cycling through a permutation
        m = len(data.unlabelled_images)
        perm_u = jax.random.permutation(jax.random.fold_in(unlabelled_key, epoch), m)
        perm_u = perm_u[np.arange(n_steps * batch_size) % m]
      if resident:
        epoch_data = None  # the last epoch's copy goes before the next is gathered
        epoch_data = gather_epoch(source, perm)
        if unlabelled is not None:
          epoch_data = {**epoch_data, **gather_epoch(unlabelled, perm_u)}
      else:
        perm = np.asarray(perm)
        perm_u = None if unlabelled is None else np.asarray(perm_u)
      sums: dict[str, Any] = partial_sums if first else {}
      pending = None  # (global step of the call's first step, device metrics) of the previous call

      def consume(item):
        first_step, m = item
        m = jax.device_get(m)
        finite = np.atleast_1d(m["finite"])
        if not finite.all():
          i = int(np.argmin(finite))  # the first non-finite step of the call
          m_i = {k: (np.asarray(v)[i] if steps_per_call > 1 else v) for k, v in m.items()}
          bad = next((k for k in ("loss", "grad_norm", "update_norm")
                      if k in m_i and not math.isfinite(float(m_i[k]))), "loss")
          raise NonFiniteLossError(
              f"{desc}: {bad} became {float(m_i[bad])} at step {first_step + i} (epoch {epoch}); training "
              f"stopped, the last good state is kept", step=first_step + i, metric=bad, state=state)
        for k, v in m.items():
          if k != "finite":
            v = np.asarray(v, np.float64)
            sums[k] = sums.get(k, 0.0) + (v.sum(0) if steps_per_call > 1 else v)
        return m

      for c, (lo, hi) in enumerate(calls):
        if resident:
          batch = jax.tree.map(lambda a: a[lo] if steps_per_call == 1 else a[lo:hi], epoch_data)
        else:
          def host_stack(src, order):
            return jax.tree.map(lambda a: stack(a, order, lo, hi)[0] if steps_per_call == 1
                                else stack(a, order, lo, hi), src)
          parts = {**host_stack(source, perm), **(host_stack(unlabelled, perm_u) if unlabelled is not None else {})}
          batch = parallel.host_batch(parts, mesh, stacked=steps_per_call > 1)
        state, metrics = train_step(state, teacher_vars, batch)
        current = ((epoch - 1) * n_steps + lo + 1, metrics)
        if pending is not None:
          m = consume(pending)
          bar.update(calls[c - 1][1] - calls[c - 1][0])
          if c % 20 == 1:
            bar.set_postfix(epoch=epoch, loss=f"{float(np.mean(m['loss'])):.4f}",
                            acc=f"{float(np.mean(m['accuracy'])):.3f}")
        pending = current
        done = (epoch - 1) * n_steps + hi
        every = checkpointing.every_steps if checkpointing is not None else 0
        if every and hi < n_steps and done // every > (done - (hi - lo)) // every:
          consume(pending)  # checked before it is saved: a checkpoint is always a good state
          bar.update(hi - lo)
          pending = None
          save(done, sums)
      if pending is not None:
        consume(pending)
        bar.update(calls[-1][1] - calls[-1][0])
      if evaluate_fn is not None:
        test = evaluate_fn(state, test_x, test_y)
      else:
        test = evaluate(eval_step, state.params, state.rest, eval_x, eval_y, mesh=mesh)
      record = {**(log_fields or {}), "epoch": epoch, "step": epoch * n_steps,
                **{f"train_{k}": _plain(v / n_steps) for k, v in sums.items()},
                **{f"test_{k}": v for k, v in test.items()},
                "wall_s": round(wall_before + time.perf_counter() - t0, 3)}
      history.append(record)
      save(epoch * n_steps, {})  # before the log line: a crash between them logs no epoch twice on resume
      if log_file:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
      bar.set_postfix(epoch=epoch, loss=f"{record['train_loss']:.4f}", test_acc=f"{test['accuracy']:.4f}")
  finally:
    bar.close()
    if log_file:
      log_file.close()
  test = {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")}
  return FitResult(state=state, history=history, test=test, wall_s=wall_before + time.perf_counter() - t0)


def _check_position(meta: dict[str, Any], checkpointing: Checkpointing, **expected) -> None:
  """A checkpoint resumes only the same data order and schedule: same steps per epoch, batch size,
  seed and epochs (the learning-rate schedule spans them)."""
  for key, value in expected.items():
    if meta.get(key) != value:
      raise ValueError(f"checkpoint in {checkpointing.directory} was written with {key} {meta.get(key)}, but this "
                       f"run has {key} {value}: it cannot resume it (use another directory)")
