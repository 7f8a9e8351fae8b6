"""The distillation study: teacher, student alone and distilled student over seeds.

``run_study(cfg)`` trains the teacher once (first seed), then for every seed the
student alone and the same student distilled from that teacher, and returns the
per-run test metrics; ``format_table`` prints them as mean ± std over seeds.
Everything is written under ``cfg.workdir/cfg.name``: ``metrics.jsonl`` (one
line per epoch per run), ``results.json`` (the config, versions, device and the
final numbers), ``table.md`` and the teacher's variables (``teacher.npz``).
A run stopped by a NaN leaves its last good state in ``<run>_seed<k>_last_good.npz``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
from typing import Any

from kdjax.config import (StudyConfig, TrainConfig, override, study_method, study_method_hparams, to_dict,
                          validate_study)
from kdjax.data import ArrayDataset, load_dataset
from kdjax.health import (HealthThresholds, add_problem, is_healthy, judge_run, judge_teacher, majority_share,
                          short)
from kdjax.parallel import check_batch, is_primary, make_mesh
from kdjax.presets import PRESETS
from kdjax.runs import check_models_fit_data, environment, subset_data  # re-exported, as before
from kdjax.stats import mean_std  # noqa: F401  (re-exported, as before)
from kdjax.identity import fingerprint
from kdjax.methods import supervised
from kdjax.pretrained.vision import supported_models
from kdjax.tracking import require_tensorboardx, run_name, run_writers, write_health
from kdjax.train import (NonFiniteLossError, TrainedModel, check_run, distill, import_trained, restore_trained,
                         run_identity, train_student, train_teacher, untrained)
from kdjax.train.checkpoint import checkpoint_steps, read_meta, run_mismatch, save_pytree
from kdjax.train.hooks import tensorboard_log
from kdjax.train.loop import steps_per_epoch
from kdjax.train.teacher_cache import check_teacher_cache_file
from kdjax.workdir import check_writable, exclusive, remove_leftovers, write_atomic

ROLES = ("teacher", "student", "control", "distilled")
ROLE_LABELS = {"teacher": "teacher", "student": "student alone",
               "control": "student alone + jitter (control)", "distilled": "student distilled"}


def control_config(cfg: StudyConfig) -> TrainConfig | None:
  """The student alone with the distilled run's augmentation, or None when it adds nothing."""
  augment = {"jitter": cfg.distilled.jitter, "hflip": cfg.distilled.hflip}
  if not cfg.augmented_control or all(getattr(cfg.student, k) == v for k, v in augment.items()):
    return None
  return dataclasses.replace(cfg.student, **augment)


def role_config(cfg: StudyConfig, role: str) -> TrainConfig | None:
  return control_config(cfg) if role == "control" else getattr(cfg, role)


@dataclasses.dataclass
class StudyResult:
  cfg: StudyConfig
  dataset: str
  test_size: int
  runs: dict[str, list[dict[str, Any]]]  # role -> one record per seed
  wall_s: float
  device: str
  out_dir: Path | None = None


def run_study(cfg: StudyConfig, *, data: ArrayDataset | None = None, progress: bool = True,
              write: bool = True, checkpoint_every: int | None = None, resume: bool = False,
              teacher_checkpoint: str | Path | None = None, teacher_weights: str | Path | None = None,
              teacher_input_norm: str | None = None, include_unhealthy: bool = False,
              start_if_nothing: bool = False, tensorboard: bool | str | Path = False) -> StudyResult:
  """Trains the teacher, the student alone (and its augmented control) and the distilled student
  over the seeds, and writes the table and results. ``checkpoint_every`` (steps; 0 = at epoch ends
  only) checkpoints every run under ``WORKDIR/NAME/checkpoints/ROLE_seedS``; ``resume`` continues
  each run from its newest checkpoint there (a finished run is restored, not trained again; with
  nothing saved it is an error, unless ``start_if_nothing``: then the study starts);
  ``teacher_checkpoint`` restores the teacher from a run's checkpoint folder instead of training
  it (its architecture is checked against ``cfg.teacher``); ``teacher_weights`` imports it from a PyTorch
  or safetensors file of ``cfg.teacher.model`` instead (:func:`kdjax.train.import_trained`; torchvision's
  ImageNet ResNets, RepDistiller's CIFAR zoo), behind the input normalization ``teacher_input_norm``
  (``"imagenet"``, ``"cifar100"``), and evaluates it on the test split. With several processes only process
  0 prints and writes files. Every run's health (:mod:`kdjax.health`, thresholds ``cfg.health``) is
  kept with its numbers; the table leaves unhealthy runs out of its means unless ``include_unhealthy``.
  ``tensorboard`` (True: under ``WORKDIR/NAME/tensorboard``, or a folder) mirrors every run to TensorBoard
  event files, one folder per run, ``ROLE_seedS`` (:mod:`kdjax.tracking`, docs/tracking.md); it changes
  no result, so it is no part of a run's identity."""
  validate_study(cfg)
  if teacher_weights is not None and teacher_checkpoint is not None:
    raise ValueError("the teacher comes from a checkpoint folder (--teacher-checkpoint) or from imported weights "
                     "(--teacher-weights), not both")
  if teacher_input_norm not in (None, "none") and teacher_weights is None:
    raise ValueError("--teacher-input-norm goes with --teacher-weights: a teacher kdjax trains sees pixels in [0, 1]")
  if teacher_weights is not None and cfg.teacher.model not in supported_models():  # before any data loads
    raise ValueError(f"--teacher-weights: no weight import for the teacher model {cfg.teacher.model!r}; importable: "
                     f"{', '.join(supported_models())} (torchvision's ImageNet ResNets, RepDistiller's CIFAR zoo)")
  primary = is_primary()
  checkpoints = checkpoint_every is not None or resume
  if checkpoints and not write:
    raise ValueError("checkpoints go under the workdir: they need write=True")
  if tensorboard is True and not write:
    raise ValueError("tensorboard=True writes under the workdir (WORKDIR/NAME/tensorboard): it needs write=True, "
                     "or give the folder")
  if tensorboard:
    require_tensorboardx()  # missing: fails before any data loads
  if data is None:
    data = load_dataset(cfg.dataset, tfds_data_dir=cfg.tfds_data_dir, download=cfg.download,
                        num_classes=cfg.num_classes)
  # An imported teacher does not train: its batch size need not fit the data.
  check_models_fit_data(cfg, data, trains=("student", "distilled") if teacher_weights is not None else
                        ("teacher", "student", "distilled"))
  method = study_method(cfg)  # make_method(cfg.method, ...), the study's T and alpha filled in where it takes them
  # The distilled run traced on shapes (an untrained stand-in teacher) before anything is written: a method
  # that does not fit the models or the data fails before the teacher and the students alone have trained.
  check_run(data, cfg.distilled, method, untrained(data, cfg.teacher))
  if cfg.distilled.teacher_cache not in ("off", "device"):  # a damaged cache fails now, not after three runs trained
    check_teacher_cache_file(cfg.distilled.teacher_cache)
  # Imported weights checked name by name, placed and evaluated before anything is written: a wrong file fails here.
  imported = None if teacher_weights is None else import_trained(teacher_weights, cfg.teacher, data,
                                                                  input_norm=teacher_input_norm)
  mesh = make_mesh()
  for role in ROLES:  # every global batch must split over the devices, checked before the first run
    if (role_cfg := role_config(cfg, role)) is not None:
      try:
        check_batch(role_cfg.batch_size, mesh)
      except ValueError as e:
        raise ValueError(f"{role}.{e}") from None
  env = environment()
  out_dir = Path(cfg.workdir) / cfg.name if write else None
  if out_dir:  # reads only: a refused resume leaves no trace
    check_resume(cfg, data, method, out_dir / "checkpoints", resume=resume, teacher_checkpoint=teacher_checkpoint,
                 start_if_nothing=start_if_nothing, imported=None if imported is None else imported.identity)
  with contextlib.ExitStack() as held:
    if out_dir and primary:  # one writer at a time; a folder that cannot take the results fails now
      held.enter_context(exclusive(out_dir, "kdjax distill"))
      check_writable(out_dir)
      for path in remove_leftovers(out_dir):
        print(f"removed {path}, left by an interrupted write", flush=True)
    track = None if not tensorboard or not primary else out_dir / "tensorboard" if tensorboard is True else tensorboard
    writers = held.enter_context(run_writers(track, config=to_dict(cfg), fresh=not resume))  # closed however it ends
    return _run_study(cfg, data, method, out_dir, env, primary=primary, progress=progress, checkpoints=checkpoints,
                      checkpoint_every=checkpoint_every, resume=resume, teacher_checkpoint=teacher_checkpoint,
                      imported=imported,
                      include_unhealthy=include_unhealthy, writers=writers)


def study_runs(cfg: StudyConfig) -> list[tuple[str, int]]:
  """``(role, seed)`` of every run a study trains, in order (the teacher once, on the first seed)."""
  per_seed = ["student"] + (["control"] if control_config(cfg) else []) + ["distilled"]
  return [("teacher", cfg.seeds[0])] + [(role, seed) for seed in cfg.seeds for role in per_seed]


def check_resume(cfg: StudyConfig, data: ArrayDataset, method, checkpoints: Path, *, resume: bool,
                 teacher_checkpoint: str | Path | None = None, start_if_nothing: bool = False,
                 imported: str | None = None) -> None:
  """Before anything trains: without ``resume``, no run may have checkpoints under ``checkpoints``
  (they are another run's results); with it, there must be something to resume, and every run's
  newest checkpoint must be of the run this config makes (:func:`kdjax.train.run_identity`: config,
  method, seeds, teacher, data), else a ``ValueError`` naming the run and the settings that differ
  (with nothing saved, ``start_if_nothing`` lets the study start)."""
  saved = {(role, seed): checkpoints / f"{role}_seed{seed}" for role, seed in study_runs(cfg)}
  saved = {k: d for k, d in saved.items() if checkpoint_steps(d)}
  if not resume:
    if saved:
      names = ", ".join(f"{role} seed {seed}" for role, seed in saved)
      raise ValueError(f"{checkpoints} already holds checkpoints ({names}): resume that study (--resume), or use "
                       "another workdir or name; nothing was changed")
    return
  if not saved and not start_if_nothing:
    raise ValueError(f"--resume: nothing to resume, {checkpoints} holds no checkpoint of this study; run it without "
                     "--resume to start it (or with --resume-or-start, as a job that may be restarted would)")
  if teacher_checkpoint is not None:
    meta = read_meta(teacher_checkpoint) or {}
    teacher = (meta.get("run_identity") or {}).get("hash")  # None (an older checkpoint): checked when it restores
  elif imported is not None:  # the identity of imported weights (kdjax.train.import_trained)
    teacher = imported
  else:
    teacher = run_identity(data, cfg.teacher, supervised(), seed=cfg.seeds[0])["hash"]
  for (role, seed), directory in saved.items():
    if role == "distilled" and teacher is None:
      continue
    identity = run_identity(data, role_config(cfg, role), method if role == "distilled" else supervised(), seed=seed,
                            teacher=teacher if role == "distilled" else None)
    meta = read_meta(directory)
    why = None if meta is None else run_mismatch(directory, meta, identity)
    if why is not None:  # the run's config fields as the command line names them: distilled.learning_rate
      raise ValueError(f"--resume: {ROLE_LABELS[role]} seed {seed}: " + why.replace(" config.", f" {role}."))


def _run_study(cfg: StudyConfig, data: ArrayDataset, method, out_dir: Path | None, env: dict[str, Any], *,
               primary: bool, progress: bool, checkpoints: bool, checkpoint_every: int | None, resume: bool,
               teacher_checkpoint: str | Path | None, include_unhealthy: bool, writers=None,
               imported: TrainedModel | None = None) -> StudyResult:
  # A teacher restored from a checkpoint folder before any file changes: a wrong folder fails with nothing lost.
  restored = imported if teacher_checkpoint is None else restore_trained(teacher_checkpoint, cfg.teacher, data)
  log_path = None
  if out_dir:
    log_path = out_dir / "metrics.jsonl"
    if primary and not resume:  # every check passed: this run replaces the folder's last one
      log_path.write_text("")
  t0 = time.perf_counter()
  runs: dict[str, list[dict[str, Any]]] = {r: [] for r in ROLES}

  def run(role, seed, train_fn, *args, **kwargs):
    if checkpoints:
      kwargs.update(checkpoint_dir=out_dir / "checkpoints" / f"{role}_seed{seed}",
                    checkpoint_every=checkpoint_every or 0, resume=resume)
    if writers is not None:  # every epoch's record and step's metrics to TensorBoard too
      kwargs["hooks"] = [tensorboard_log(writers(run_name(role, seed)))]
    try:
      trained = train_fn(data, *args, seed=seed, log_path=log_path, progress=progress and primary,
                         log_fields={"run": role, "seed": seed}, health=cfg.health, **kwargs)
    except NonFiniteLossError as e:
      if out_dir and primary:  # keep the last good state on disk before giving up
        saved = save_pytree(out_dir / f"{role}_seed{seed}_last_good.npz", e.state)
        e.args = (f"{e.args[0]}; saved to {saved}",)
      raise
    runs[role].append({"seed": seed, **trained.test, "wall_s": round(trained.fit.wall_s, 2),
                       "health": trained.health, "identity": trained.identity})
    if progress and primary:
      print(f"{ROLE_LABELS[role]:<32} seed {seed}: {trained.test['errors']:>5} test errors "
            f"({100 * trained.test['accuracy']:.2f}%), {trained.fit.wall_s:.1f} s"
            + ("" if trained.health["ok"] else f"  [UNHEALTHY: {short(trained.health)}]"), flush=True)
    return trained

  if restored is not None:
    teacher = restored
    health = judge_run(teacher.fit.history, teacher.fit.initial, thresholds=cfg.health,
                       majority=majority_share(np.asarray(data.test_labels).tolist()))
    runs["teacher"].append({"seed": cfg.seeds[0], **teacher.test, "wall_s": round(teacher.fit.wall_s, 2),
                            **({"restored_from": str(teacher_checkpoint)} if imported is None
                               else {"imported_from": teacher.source}), "health": health,
                            "identity": teacher.identity})
  else:
    teacher = run("teacher", cfg.seeds[0], train_teacher, cfg.teacher)
  if out_dir and primary:
    save_pytree(out_dir / "teacher.npz", teacher.variables)
  control = control_config(cfg)
  for seed in cfg.seeds:
    run("student", seed, train_student, cfg.student)
    if control:
      run("control", seed, train_student, control, desc=f"student+jitter {control.model} seed {seed}")
    run("distilled", seed, distill, cfg.distilled, teacher, method=method)
  judge_study_teacher(runs, cfg.health)
  if writers is not None:  # each run's verdict at its last step, the teacher's judged against the students too
    for role in ROLES:
      for r in runs[role]:
        run_cfg = role_config(cfg, role)  # an imported teacher never trained: its verdict goes at step 0
        last = 0 if role == "teacher" and imported is not None else \
            run_cfg.epochs * steps_per_epoch(len(data.train_labels), run_cfg.batch_size)
        write_health(writers(run_name(role, r["seed"])), r["health"], last)
  result = StudyResult(cfg, data.name, len(data.test_labels), runs, time.perf_counter() - t0,
                       env["device"], out_dir)
  if out_dir and primary:
    write_atomic(out_dir / "results.json", json.dumps(
        {"config": to_dict(cfg), "method": {"name": cfg.method, "hparams": study_method_hparams(cfg)},
         "environment": env, "dataset": data.summary(), "data": fingerprint(data), "runs": runs,
         "wall_s": round(result.wall_s, 1)}, indent=2))
    write_atomic(out_dir / "table.md", format_table(result, include_unhealthy=include_unhealthy) + "\n")
  return result


def judge_study_teacher(runs: dict[str, list[dict[str, Any]]], thresholds: HealthThresholds) -> None:
  """Marks the teacher's record ``weak_teacher`` when it is no better than the healthy students
  trained alone (:func:`kdjax.health.judge_teacher`)."""
  alone = [r["accuracy"] for r in runs["student"] if is_healthy(r)]
  for record in runs["teacher"]:
    found = judge_teacher(record["accuracy"], alone, thresholds)
    if found is not None:
      record["health"] = add_problem(record.get("health"), found)


def unhealthy_runs(result: StudyResult) -> list[tuple[str, dict[str, Any]]]:
  """``(name, health)`` of every unhealthy run of a study, in the table's order."""
  return [(f"{ROLE_LABELS[role]} seed {r['seed']}", r["health"]) for role in ROLES for r in result.runs[role]
          if not is_healthy(r)]


def add_experiment_args(parser, default_config: str = "hinton_mnist") -> None:
  """The options every experiment script shares: the preset, the data, seeds, epochs, overrides."""
  parser.add_argument("--config", default=default_config, choices=sorted(PRESETS),
                      help="the study preset whose teacher, student and data to use")
  parser.add_argument("--data", help="dataset instead of the preset's: builtin, idx:DIR, tfds:NAME; text: negation, rotten_tomatoes, tfds:imdb_reviews")
  parser.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
  parser.add_argument("--epochs", type=int, help="student epochs (default: the preset's)")
  parser.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: the preset's)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a preset field, e.g. --set distilled.learning_rate=0.1 (repeatable)")
  parser.add_argument("--subset", type=int, metavar="N",
                      help="train on the first N training images only (quick checks; the test split is kept)")
  parser.add_argument("--workdir", default="runs")


def teacher_checkpoint(out: Path, data: ArrayDataset, name: str, seed: int) -> Path:
  """Where an experiment keeps a teacher it restores on a second run, not trains again:
  ``out/teachers/DATA_NAME_seedS`` (one folder per dataset, so two datasets never share one)."""
  slug = re.sub(r"[^A-Za-z0-9.-]+", "_", data.name).strip("_")  # negation[:300] -> negation_300
  return out / "teachers" / f"{slug}_{name}_seed{seed}"


def select(text: str, known, what: str = "row") -> list[str]:
  """The comma-separated names in ``text``; an unknown one exits naming it and the known ones."""
  names = text.split(",")
  unknown = [n for n in names if n not in known]
  if unknown:
    raise SystemExit(f"unknown {what}(s) {unknown}; choose from {', '.join(known)}")
  return names


def write_results(out: Path, table: str, payload: dict[str, Any]) -> None:
  """Prints an experiment's table and writes it to ``out/table.md``, with ``payload`` (the
  arguments, config, environment and per-run numbers) in ``out/results.json``."""
  print("\n" + table)
  write_atomic(out / "table.md", table + "\n")
  write_atomic(out / "results.json", json.dumps(payload, indent=2))


def experiment_data(cfg: StudyConfig, subset: int | None = None, *, inputs: str | None = None,
                    prog: str = "experiment") -> ArrayDataset:
  """The config's dataset, cut to its first ``subset`` training images when given; a bad subset,
  or data that is not ``inputs`` ("image" or "text") where the experiment needs one kind, exits
  with a message naming ``prog`` (for the experiment scripts)."""
  data = load_dataset(cfg.dataset, tfds_data_dir=cfg.tfds_data_dir, download=cfg.download,
                      num_classes=cfg.num_classes)
  if inputs is not None and data.is_text != (inputs == "text"):
    raise SystemExit(f"{prog}: {data.name} is {'text' if data.is_text else 'images'}, but this experiment takes "
                     + ("text (negation, rotten_tomatoes or tfds:imdb_reviews)" if inputs == "text" else "images"))
  try:
    return subset_data(data, subset)
  except ValueError as e:
    raise SystemExit(str(e)) from None


def experiment_config(args, prog: str) -> StudyConfig:
  """The preset of :func:`add_experiment_args`'s options with the overrides applied, validated;
  a bad value exits with a message naming it, before any training."""
  shortcuts = [f"dataset={args.data}"] if args.data else []
  shortcuts += [f"seeds={args.seeds}"] if args.seeds else []
  shortcuts += [f"distilled.epochs={args.epochs}"] if args.epochs else []
  shortcuts += [f"teacher.epochs={args.teacher_epochs}"] if args.teacher_epochs else []
  try:
    cfg = override(PRESETS[args.config], shortcuts + args.set)
    validate_study(cfg)
  except ValueError as e:
    raise SystemExit(f"{prog}: {e}") from None
  if cfg.method != PRESETS[args.config].method or cfg.method_hparams != PRESETS[args.config].method_hparams:
    raise SystemExit(f"{prog}: this script builds its own methods; --set method=... and method.<name>=... apply to "
                     "kdjax distill (and kdjax sweep --grid method=...)")
  return cfg


def mean_pm(values: list[float], fmt: str = ".1f") -> str:
  """``"mean ± std"`` over runs, or just the value for a single run (one run has no spread)."""
  m, sd = mean_std(values)
  return f"{m:{fmt}} ± {sd:{fmt}}" if len(values) > 1 else f"{m:{fmt}}"


def method_label(cfg: StudyConfig) -> str:
  """The distilled run's method for a table's title: ``"T=20, alpha=0.5"`` for Hinton KD at the study's
  T and alpha, else ``"method dkd (beta=4)"``, with the hyperparameters it is given (the study's T and
  alpha included where it takes them; the others are the method's defaults)."""
  if cfg.method == "hinton" and not cfg.method_hparams:
    return f"T={cfg.temperature:g}, alpha={cfg.alpha:g}"
  hparams = study_method_hparams(cfg)
  shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items()))
  return f"method {cfg.method} ({shown or 'defaults'})"


def format_table(result: StudyResult, extra: dict[str, dict[str, str]] | None = None, *,
                 include_unhealthy: bool = False) -> str:
  """Markdown table, mean ± std over the healthy seeds (all of them with ``include_unhealthy``),
  with each row's health: ``ok``, or the unhealthy seeds and their problems
  (:mod:`kdjax.health`); ``extra`` adds columns: {header: {role: text}}."""
  cfg = result.cfg
  extra = extra or {}
  lines = [
      f"{cfg.name} on {result.dataset} ({result.test_size} test images), {method_label(cfg)}, "
      f"seeds {','.join(map(str, cfg.seeds))}, {result.device}",
      "",
      "| run | model | test errors | test accuracy (%) | runs | health | wall s / run |"
      + "".join(f" {h} |" for h in extra),
      "|---|---|---|---|---|---|---|" + "---|" * len(extra),
  ]
  left_out = 0
  for role in ROLES:
    every = result.runs[role]
    if not every:
      continue
    bad = [r for r in every if not is_healthy(r)]
    recs = every if include_unhealthy else [r for r in every if is_healthy(r)]
    left_out += len(every) - len(recs)
    health = "ok" if not bad else "; ".join(f"seed {r['seed']} {short(r['health'])}" for r in bad)
    if not recs:
      lines.append(f"| {ROLE_LABELS[role]} | {role_config(cfg, role).model} | not a result | not a result | "
                   f"0 of {len(every)} | {health} | |" + "".join(f" {col.get(role, '')} |" for col in extra.values()))
      continue
    err_m, err_s = mean_std([r["errors"] for r in recs])
    acc_m, acc_s = mean_std([100 * r["accuracy"] for r in recs])
    wall = statistics.fmean(r["wall_s"] for r in recs)
    spread = (f" ± {err_s:.1f}", f" ± {acc_s:.2f}") if len(recs) > 1 else ("", "")
    runs = f"{len(recs)}" if len(recs) == len(every) else f"{len(recs)} of {len(every)}"
    lines.append(f"| {ROLE_LABELS[role]} | {role_config(cfg, role).model} | {err_m:.1f}{spread[0]} | "
                 f"{acc_m:.2f}{spread[1]} | {runs} | {health} | {wall:.1f} |"
                 + "".join(f" {col.get(role, '')} |" for col in extra.values()))
  lines.append("")
  note = f"mean ± sample std over runs; total wall time {result.wall_s:.0f} s"
  if left_out:
    note += f"; {left_out} unhealthy run(s) left out of the means (docs/health.md)"
  elif include_unhealthy and any(not is_healthy(r) for recs in result.runs.values() for r in recs):
    note += "; unhealthy runs kept in the means (include_unhealthy)"
  lines.append(note)
  return "\n".join(lines)
