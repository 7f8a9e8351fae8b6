"""``run_sweep``: a grid of runs, trained group by group, stored run by run, reported at the end.

Every finished run is appended to ``OUT/results.jsonl`` at once (see :mod:`kdjax.sweep.store`),
so an interrupted sweep loses at most the group in flight; run it again with the same grid and it
skips the finished runs (matched by :func:`kdjax.sweep.store.run_id` of their config) and trains
the rest. Teachers are trained once per teacher config (seed ``teacher_seed``) and shared by every
run that distills from them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from kdjax.config import StudyConfig, TrainConfig, refuse_compression
from kdjax.data import ArrayDataset, load_dataset
from kdjax.methods import make_method
from kdjax.runs import check_models_fit_data, environment, subset_data
from kdjax.sweep.grid import Run, expand, group_runs, parse_grid
from kdjax.sweep.report import write_report
from kdjax.sweep.store import append_record, best_and_final, finished_ids, load_records, run_id
from kdjax.sweep.train import check_group, train_group
from kdjax.health import is_healthy, short
from kdjax.identity import fingerprint
from kdjax.tracking import require_tensorboardx, run_name, write_run
from kdjax.train import TrainedModel, check_run, train_teacher, untrained
from kdjax.train.loop import steps_per_epoch
from kdjax.workdir import check_writable, exclusive, remove_leftovers

# Study fields that do not change what a run computes: left out of a run's identity. (A run's method and
# hyperparameters are its own fields, "method" and "hparams"; a sweep's study config keeps the default ones.)
_NOT_IN_IDENTITY = ("name", "workdir", "seeds", "student", "augmented_control", "method", "method_hparams", "health",
                    "num_classes")


@dataclasses.dataclass
class SweepResult:
  out_dir: Path
  records: list[dict[str, Any]]  # this sweep's runs, finished now or earlier
  trained: int  # runs trained by this call
  skipped: int  # runs found finished in the store
  reports: dict[str, Path]
  wall_s: float

  def unhealthy(self) -> list[tuple[str, dict[str, Any]]]:
    """``(name, health)`` of every unhealthy run of the sweep (kdjax.health), in the store's order."""
    runs = [(f"{r['variant']} seed {r['seed']}", r["health"]) for r in self.records if not is_healthy(r)]
    teachers = {json.dumps(r["config"]["study"]["teacher"], sort_keys=True): r["teacher_health"] for r in self.records
                if r.get("teacher_health") and not r["teacher_health"].get("ok", True)}
    return [(f"teacher {json.loads(k)['model']}", h) for k, h in teachers.items()] + runs


def run_config(run: Run, *, data_seed: int, teacher_seed: int, subset: int | None) -> dict[str, Any]:
  """What identifies a run in the store: its study config (less bookkeeping fields), method,
  hyperparameters, seed, grid values, and the sweep-level seeds and data subset."""
  config = run.config()
  config["study"] = {k: v for k, v in config["study"].items() if k not in _NOT_IN_IDENTITY}
  return {**config, "data_seed": data_seed, "teacher_seed": teacher_seed, "subset": subset}


def _data_identity(data: ArrayDataset) -> dict[str, Any]:
  """The data's part of a run's id: name, sizes, shape, classes and a hash of its arrays
  (:func:`kdjax.identity.fingerprint`), so another dataset of the same size is another run."""
  return {"name": data.name, "train": len(data.train_labels), "test": len(data.test_labels),
          "image_shape": list(data.image_shape), "num_classes": data.num_classes, "sha256": fingerprint(data)["sha256"]}


def _json_safe(value):
  """NaN and infinities as null (JSON has no such numbers), everywhere in a record."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def run_sweep(base: StudyConfig, grid_items: list[str], *, out_dir: str | Path, max_parallel: int | None = None,
              data: ArrayDataset | None = None, subset: int | None = None, data_seed: int = 0, teacher_seed: int = 0,
              baseline: str | None = None, progress: bool = True, include_unhealthy: bool = False,
              tensorboard: bool | str | Path = False) -> SweepResult:
  """Runs every run of the grid ``grid_items`` over the preset ``base`` (see
  :mod:`kdjax.sweep.grid` for the keys); runs differing only in seed and scalar hyperparameters
  train together, at most ``max_parallel`` at once. Writes ``results.jsonl``, ``report.md``, CSV
  tables and plots under ``out_dir``. ``baseline`` is the variant the paired comparison is
  against (default: ``method=supervised`` when the grid has it, else the first variant).

  Each run's health (:mod:`kdjax.health`, thresholds ``base.health``) is stored with it; the
  report leaves unhealthy runs out of its means and comparisons unless ``include_unhealthy``.
  Every distinct run is traced on shapes before the first one trains (:func:`kdjax.train.check_run`),
  so a run that cannot train fails before any does. ``tensorboard`` (True: under ``OUT/tensorboard``, or a
  folder) also writes each stored run to TensorBoard event files, ``VARIANT_seedS`` (:mod:`kdjax.tracking`)."""
  if tensorboard:
    require_tensorboardx()  # missing: fails before any training
  grid = parse_grid(grid_items, base)
  runs = expand(grid, base)
  for r in runs:  # before any training: sweeps do not take these switches yet
    check_group([r])
  if max_parallel is not None and max_parallel < 1:
    raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
  variants = list(dict.fromkeys(r.variant for r in runs))
  if baseline is not None and baseline not in variants:
    raise ValueError(f"baseline {baseline!r} is not a variant of this grid; variants: {variants}")
  if baseline is None:
    baseline = next((v for v in variants if "method=supervised" in v.split()), variants[0])
  if data is None:  # a given dataset is used as it is; `subset` then only records how it was cut
    data = subset_data(load_dataset(base.dataset, tfds_data_dir=base.tfds_data_dir, download=base.download,
                                     num_classes=base.num_classes), subset)
  data.require_plain_images("sweeps")  # before any teacher trains
  teaching = {r.cfg for r in runs if make_method(r.method, **dict(r.hparams)).needs_teacher}
  for cfg in dict.fromkeys(r.cfg for r in runs):  # every teacher and student of the grid takes this data
    # a sweep trains no cfg.student, and a teacher only for the runs that distill from one
    check_models_fit_data(cfg, data, trains=("teacher", "distilled") if cfg in teaching else ("distilled",))
    refuse_compression(cfg.distilled, "sweeps")
  for r in {(r.method, r.hparams, r.cfg.distilled, r.cfg.teacher): r for r in runs}.values():
    method = make_method(r.method, **dict(r.hparams))
    try:
      check_run(data, r.cfg.distilled, method, untrained(data, r.cfg.teacher) if method.needs_teacher else None)
    except ValueError as e:
      raise ValueError(f"run {r.variant!r}: {e}") from None
  out_dir = Path(out_dir)
  with exclusive(out_dir, "kdjax sweep"):  # one writer per output folder; it must take the results before any run
    check_writable(out_dir)
    for path in remove_leftovers(out_dir):
      print(f"removed {path}, left by an interrupted write", flush=True)
    return _run_grid(base, grid, runs, variants, data, out_dir, subset=subset, data_seed=data_seed,
                     teacher_seed=teacher_seed, baseline=baseline, progress=progress,
                     include_unhealthy=include_unhealthy, max_parallel=max_parallel,
                     track=None if not tensorboard else out_dir / "tensorboard" if tensorboard is True else tensorboard)


def _run_grid(base: StudyConfig, grid, runs: list[Run], variants: list[str], data: ArrayDataset, out_dir: Path, *,
              subset: int | None, data_seed: int, teacher_seed: int, baseline: str, progress: bool,
              include_unhealthy: bool, max_parallel: int | None, track: str | Path | None = None) -> SweepResult:
  store = out_dir / "results.jsonl"
  configs = {id(r): {**run_config(r, data_seed=data_seed, teacher_seed=teacher_seed, subset=subset),
                     "data": _data_identity(data)} for r in runs}
  ids = {key: run_id(config) for key, config in configs.items()}
  done = finished_ids(store)
  todo = [r for r in runs if ids[id(r)] not in done]
  groups = group_runs(todo, max_parallel)
  if progress:
    print(f"sweep: {len(runs)} runs ({len(variants)} variants), {len(runs) - len(todo)} already finished in {store}, "
          f"{len(todo)} to train in {len(groups)} vmapped group(s)", flush=True)
  env = environment()
  teachers: dict[TrainConfig, TrainedModel] = {}
  t0 = time.perf_counter()
  for i, group in enumerate(groups, start=1):
    first = group[0]
    teacher = None
    if make_method(first.method, **dict(first.hparams)).needs_teacher:
      if first.cfg.teacher not in teachers:
        teachers[first.cfg.teacher] = train_teacher(data, first.cfg.teacher, seed=teacher_seed, progress=progress,
                                                    desc=f"teacher {first.cfg.teacher.model}")
      teacher = teachers[first.cfg.teacher]
    results = train_group(data, group, teacher, data_seed=data_seed, progress=progress,
                          desc=f"group {i}/{len(groups)}: {first.method} x{len(group)}", health=base.health)
    for run, res in zip(group, results):
      best, final = best_and_final(res["history"])
      append_record(store, _json_safe({"run_id": ids[id(run)], "variant": run.variant, "seed": run.seed,
                            "config": configs[id(run)],
                            "history": res["history"], "final": final, "best": best, "wall_s": round(res["wall_s"], 3),
                            "skipped_steps": res["skipped_steps"], "health": res["health"],
                            "initial": res["initial"], "group_size": len(group),
                            "teacher": teacher.test if teacher is not None else None,
                            "teacher_health": teacher.health if teacher is not None else None, "dataset": data.name,
                            "kdjax": env["kdjax"], "jax": env["jax"], "device": env["device"], "date": env["date"]}))
      if track is not None:  # the stored run to TensorBoard too; results.jsonl stays the truth
        write_run(track, run_name(run.variant, run.seed), res["history"], config=configs[id(run)], health=res["health"],
                  steps_per_epoch=steps_per_epoch(len(data.train_labels), run.cfg.distilled.batch_size))
    if progress:
      print(f"group {i}/{len(groups)} ({first.method}, {len(group)} runs): "
            + ", ".join(f"{r.variant} seed {r.seed}: {res['history'][-1]['test_errors']} errors"
                        + ("" if res["health"]["ok"] else f" [UNHEALTHY: {short(res['health'])}]")
                        for r, res in zip(group, results)), flush=True)
  # This grid's runs, labelled as this grid names them (a resumed sweep may list its keys in another order).
  label = {ids[id(r)]: r.variant for r in runs}
  records = [{**r, "variant": label[r["run_id"]]} for r in load_records(store) if r["run_id"] in label]
  reports = write_report(records, out_dir, baseline=baseline, sweep_keys=list(grid),
                         include_unhealthy=include_unhealthy)
  return SweepResult(out_dir, records, len(todo), len(runs) - len(todo), reports, time.perf_counter() - t0)
