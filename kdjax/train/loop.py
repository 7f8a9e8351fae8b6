"""The fit loop: device-resident data, a progress bar, metrics one step late, JSONL logs."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from kdjax.data.dataset import ArrayDataset
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


def fit(state: TrainState, train_step: Callable, eval_step: Callable | None, data: ArrayDataset, *,
        epochs: int, batch_size: int, teacher_vars=None, seed: int = 0, desc: str = "train",
        log_path: str | Path | None = None, log_fields: dict[str, Any] | None = None,
        progress: bool = True, evaluate_fn: Callable[..., dict[str, Any]] | None = None) -> FitResult:
  """Trains for ``epochs`` epochs; evaluates on the test split after each epoch.

  The training set lives on the device as uint8; each epoch is a fresh
  permutation drawn from ``seed``. Metrics of step ``i`` are fetched to the host
  after step ``i + 1`` is dispatched, so the device never waits for the host; each epoch's record
  holds their means (a vector metric, one entry per stacked student, as a list).
  A non-finite loss, gradient or update stops training with :class:`NonFiniteLossError`
  naming the step; the state it carries is the last good one.

  ``evaluate_fn(state, test_images, test_labels) -> dict``, when given, replaces the default
  evaluation (``eval_step`` on ``state.params``, ``state.rest``; it may then be ``None``), e.g.
  for a stacked cohort of students (:mod:`kdjax.train.online`). The images and labels are the
  device-resident test split; the dict must hold ``"accuracy"``, ``"errors"`` and ``"loss"``
  and may add more (each logged as ``test_<key>``).
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  n_steps = steps_per_epoch(len(data.train_labels), batch_size)
  train_x, train_y = jax.device_put(data.train_images), jax.device_put(data.train_labels)
  test_x, test_y = jax.device_put(data.test_images), jax.device_put(data.test_labels)
  log_file = open(log_path, "a") if log_path else None
  history: list[dict[str, Any]] = []
  shuffle_key = jax.random.key(seed)
  t0 = time.perf_counter()
  # disable=None: tqdm hides the bar when stderr is not a terminal (logs, CI).
  bar = tqdm(total=epochs * n_steps, desc=desc, disable=None if progress else True, leave=False,
             dynamic_ncols=True)
  try:
    for epoch in range(1, epochs + 1):
      perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), len(train_y))[:n_steps * batch_size]
      ep_x = train_x[perm].reshape(n_steps, batch_size, *train_x.shape[1:])
      ep_y = train_y[perm].reshape(n_steps, batch_size)
      ep_i = perm.astype(jnp.int32).reshape(n_steps, batch_size)
      sums: dict[str, float] = {}
      pending = None  # (global step, device metrics) of the previous step

      def consume(item):
        step_no, m = item
        m = jax.device_get(m)
        if not bool(m["finite"]):
          bad = next((k for k in ("loss", "grad_norm", "update_norm") if k in m and not math.isfinite(float(m[k]))),
                     "loss")
          raise NonFiniteLossError(
              f"{desc}: {bad} became {float(m[bad])} at step {step_no} (epoch {epoch}); training "
              f"stopped, the last good state is kept", step=step_no, metric=bad, state=state)
        for k, v in m.items():
          if k != "finite":
            sums[k] = sums.get(k, 0.0) + np.asarray(v, np.float64)
        return m

      for i in range(n_steps):
        state, metrics = train_step(state, teacher_vars, {"image": ep_x[i], "label": ep_y[i], "index": ep_i[i]})
        current = ((epoch - 1) * n_steps + i + 1, metrics)
        if pending is not None:
          m = consume(pending)
          bar.update(1)
          if i % 20 == 1:
            bar.set_postfix(epoch=epoch, loss=f"{float(m['loss']):.4f}", acc=f"{float(m['accuracy']):.3f}")
        pending = current
      consume(pending)
      bar.update(1)
      if evaluate_fn is not None:
        test = evaluate_fn(state, test_x, test_y)
      else:
        test = evaluate(eval_step, state.params, state.rest, test_x, test_y)
      record = {**(log_fields or {}), "epoch": epoch, "step": epoch * n_steps,
                **{f"train_{k}": _plain(v / n_steps) for k, v in sums.items()},
                **{f"test_{k}": v for k, v in test.items()},
                "wall_s": round(time.perf_counter() - t0, 3)}
      history.append(record)
      if log_file:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
      bar.set_postfix(epoch=epoch, loss=f"{record['train_loss']:.4f}", test_acc=f"{test['accuracy']:.4f}")
  finally:
    bar.close()
    if log_file:
      log_file.close()
  test = {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")}
  return FitResult(state=state, history=history, test=test, wall_s=time.perf_counter() - t0)
