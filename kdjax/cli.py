"""The ``kdjax`` command line.

    kdjax distill [--config NAME|FILE.toml] [--method NAME] [--data SPEC] [--seeds 0,1,2] [--set key=value ...]
                  [--checkpoint-every N] [--resume | --resume-or-start] [--teacher-checkpoint DIR] [--distributed ...]
                  [--teacher-weights FILE [--teacher-input-norm imagenet|cifar100]]
                  [--tensorboard]
    kdjax sweep [CONFIG] --grid key=v1,v2 [--grid ...] [--set key=value ...] [--max-parallel K]
    kdjax list
    kdjax bench [--teacher T --student S] [--batch 64,256,1024] [--precision fp32,bf16]
                [--steps-per-call 1,16] [--mode step,epoch,cached] [--students 1,4] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from kdjax.bench import add_ratios, bench_kd, bench_lm, check_config, format_lm_table, to_jsonl, write_jsonl
from kdjax.bench import format_table as format_bench_table
from kdjax.config import StudyConfig, override, validate_study
from kdjax.config_file import dumps_toml, load_toml, locate_problem
from kdjax.health import EXIT_UNHEALTHY, warning_block
from kdjax.lm_study import LM_PRESETS, LMStudyConfig, run_lm_study, unhealthy_lm_runs, validate_lm_study
from kdjax.methods import REGISTRY, format_hparams, method_hparams, method_spec
from kdjax.models import get_model_spec, model_names
from kdjax.parallel import initialize_distributed, is_primary
from kdjax.presets import PRESETS
from kdjax.study import format_table, run_study, unhealthy_runs
from kdjax.sweep import run_sweep
from kdjax.train import NonFiniteLossError


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="kdjax", description="Knowledge distillation in JAX.")
  sub = p.add_subparsers(dest="command", required=True)
  d = sub.add_parser("distill", help="teacher, student alone and distilled student, over seeds")
  d.add_argument("--config", default="hinton_mnist", type=_config_arg, metavar="NAME|FILE.toml",
                 help="the study to run: a preset (" + ", ".join(sorted(PRESETS) + sorted(LM_PRESETS)) + "; default: "
                      "hinton_mnist, Hinton et al. 2015 on the built-in subset; lm_*: language-model distillation, "
                      "docs/language_models.md) or a study file, e.g. one --show-config wrote (docs/study_files.md)")
  d.add_argument("--method", help="the distilled run's method (kdjax list), default the config's (hinton); its "
                                  "hyperparameters: --set method.NAME=VALUE, e.g. --method dkd --set method.beta=4")
  d.add_argument("--data", help="dataset: builtin, idx:PATH or tfds:NAME; text: negation, rotten_tomatoes, tfds:imdb_reviews (overrides the config)")
  d.add_argument("--download", action="store_true", help="let TFDS download a missing dataset")
  d.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
  d.add_argument("--workdir", help="where metrics.jsonl, results.json and table.md go (default: runs)")
  d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set temperature=4 --set teacher.epochs=20, or a hyperparameter "
                      "of the method, --set method.beta=4")
  d.add_argument("--no-progress", action="store_true", help="no progress bars")
  d.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
  d.add_argument("--checkpoint-every", type=int, metavar="N",
                 help="Orbax checkpoints of every run every N steps and at each epoch's end (0: epoch ends only), "
                      "under WORKDIR/NAME/checkpoints")
  d.add_argument("--resume", action="store_true",
                 help="continue each run from its newest complete checkpoint (finished runs are restored)")
  d.add_argument("--resume-or-start", action="store_true",
                 help="--resume, but start the study when nothing is saved yet (for a job that may be restarted)")
  d.add_argument("--teacher-checkpoint", metavar="DIR",
                 help="restore the teacher from a run's checkpoint folder (e.g. WORKDIR/NAME/checkpoints/"
                      "teacher_seed0) instead of training it; its architecture must be the config's")
  d.add_argument("--teacher-weights", metavar="FILE",
                 help="import the teacher from PyTorch weights (.pth/.pt/.safetensors: torchvision's resnet18/34/50, "
                      "RepDistiller's CIFAR zoo) instead of training it; they must be of the config's teacher.model, "
                      "checked tensor by tensor; an lm_ study takes a local Hugging Face GPT-2 folder or file whose "
                      "vocabulary is the study's tokenizer's; nothing is downloaded (docs/pretrained.md)")
  d.add_argument("--teacher-input-norm", choices=("none", "imagenet", "cifar100"),
                 help="with --teacher-weights: the per-channel normalization the weights were trained with, put in "
                      "front of the teacher (kdjax feeds pixels in [0, 1]); default none")
  d.add_argument("--tensorboard", action="store_true",
                 help="also write TensorBoard event files of every run under WORKDIR/NAME/tensorboard (metrics.jsonl "
                      "stays the record; needs pip install 'kdjax[track]'; docs/tracking.md)")
  _health_args(d)
  d.add_argument("--distributed", action="store_true",
                 help="join a multi-process run (jax.distributed.initialize): on TPU pods, Slurm and Kubernetes "
                      "the arguments come from the environment, elsewhere give the three below")
  d.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: process 0's address")
  d.add_argument("--num-processes", type=int, metavar="N", help="with --distributed: how many processes")
  d.add_argument("--process-id", type=int, metavar="I", help="with --distributed: this process's index")
  d.add_argument("--distributed-timeout", type=float, metavar="SECONDS",
                 help="with --distributed: how long to wait for every process to join before failing with one line "
                      "and exit status 2 (default 300)")
  w = sub.add_parser("sweep", help="a grid over methods, hyperparameters and seeds; vmapped groups, a report",
                     description="Trains every run of a grid over a study preset (runs differing only in seed, "
                                 "temperature, alpha, learning rate or DKD/DIST's beta train together as one vmapped "
                                 "program), stores one JSON line per run (re-running resumes), and writes report.md, "
                                 "CSV tables and PNG plots.")
  w.add_argument("config", nargs="?", default="hinton_mnist", type=_sweep_config_arg, metavar="NAME|FILE.toml",
                 help="the study the grid varies: a preset (" + ", ".join(sorted(PRESETS)) + "; default: hinton_mnist) "
                      "or a study file (docs/study_files.md)")
  w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                 help="a grid axis: method, seed, temperature, alpha, method.<hparam> or a study key such as "
                      "distilled.learning_rate (repeatable)")
  w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a preset field for every run, e.g. --set distilled.epochs=5")
  w.add_argument("--data", help="dataset: builtin, idx:PATH or tfds:NAME; text: negation, rotten_tomatoes, tfds:imdb_reviews (overrides the config)")
  w.add_argument("--subset", type=int, metavar="N", help="train on the first N training images only")
  w.add_argument("--max-parallel", type=int, metavar="K", help="at most K students in memory at once (default: a whole group)")
  w.add_argument("--baseline", help="the variant to compare against (default: method=supervised if in the grid)")
  w.add_argument("--data-seed", type=int, default=0, help="the batch order and augmentation shared by all runs")
  w.add_argument("--out", help="output directory (default: runs/sweep_<config>)")
  w.add_argument("--no-progress", action="store_true", help="no progress bars")
  w.add_argument("--tensorboard", action="store_true",
                 help="also write TensorBoard event files of every run under OUT/tensorboard (docs/tracking.md)")
  _health_args(w)
  sub.add_parser("list", help="list the study configs, models, methods and datasets")
  b = sub.add_parser("bench", help="time the distillation train step: images/s, compile time, FLOPs, MFU, memory",
                     description="Times the KD train step on random data already on the device (median of timed "
                                 "windows after warm-up) and prints a Markdown table; comma lists give one row per "
                                 "combination. See kdjax.bench.")
  b.add_argument("--teacher", help="teacher model (default: resnet32x4; lm_small for a language-model student)")
  b.add_argument("--student", default="resnet8x4", help="student model (default: resnet8x4)")
  b.add_argument("--method", help="distillation method (default: hinton, alpha 0.5, T 4; lm_kd for a language-model "
                                  "student)")
  b.add_argument("--batch", default="64", metavar="B[,B...]", help="batch sizes (default: 64)")
  b.add_argument("--precision", default="fp32", metavar="P[,P...]", help="fp32 and/or bf16 (default: fp32)")
  b.add_argument("--steps-per-call", default="1", metavar="S[,S...]",
                 help="steps per dispatch, run as one lax.scan over S stacked batches (default: 1)")
  b.add_argument("--mode", default="step", metavar="M[,M...]",
                 help="step (the train step alone), epoch (fit over a device-resident dataset, augmented on the "
                      "device) or cached (the teacher's outputs precomputed); default: step")
  b.add_argument("--students", default="1", metavar="K[,K...]", help="students trained at once with vmap (default: 1)")
  b.add_argument("--steps", type=int, default=60, help="steps per timed window (default: 60)")
  b.add_argument("--windows", type=int, default=3, help="timed windows; the median is reported (default: 3)")
  b.add_argument("--epoch-size", type=int, metavar="N",
                 help="epoch mode: training images per epoch (default: steps x batch; CIFAR's is 50000)")
  b.add_argument("--warmup", type=int, help="untimed calls after the first (default: 5; epoch mode: epochs, 1)")
  b.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                 help="random crop (padding 4) and flips on the device (default: only in epoch mode)")
  b.add_argument("--backend", help="cpu, gpu or tpu (default: JAX's default backend)")
  b.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s for the MFU (default: a table of "
                                                   "known accelerators; none on the CPU)")
  b.add_argument("--classes", type=int, default=100, help="number of classes (default: 100)")
  b.add_argument("--input-shape", metavar="H,W,C", help="image shape (default: the student's, 32,32,3 for CIFAR)")
  b.add_argument("--json", metavar="PATH", help="append one JSON line per row to PATH (default: print them)")
  b.add_argument("--seq-len", type=int, default=128,
                 help="language models (a student named lm_*): tokens per sequence (default: 128); tokens/s")
  return p


# The kinds of study file (kdjax.config_file): a file says which with `kind = "..."`, or by its `preset`; neither:
# the first, the teacher / student / distilled study of image or text classification.
STUDY_KINDS = {"study": (StudyConfig, PRESETS), "lm_study": (LMStudyConfig, LM_PRESETS)}


def _config_arg(text: str) -> str:
  """``--config``: a preset's name, or a study file (a path ending in .toml)."""
  if text in PRESETS or text in LM_PRESETS or text.endswith(".toml"):
    return text
  names = ", ".join(map(repr, sorted(PRESETS) + sorted(LM_PRESETS)))
  raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {names}, or a study file PATH.toml)")


def _sweep_config_arg(text: str) -> str:
  """``kdjax sweep CONFIG``: an image or text study's preset, or a study file."""
  if text in PRESETS or text.endswith(".toml"):
    return text
  names = ", ".join(map(repr, sorted(PRESETS)))
  raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {names}, or a study file PATH.toml; "
                                   "language-model studies do not sweep)")


def _study_config(config: str):
  """``(kind, config)`` of ``--config``: a preset, or the study file it names (a StudyFileError, each
  problem as FILE:LINE: key: problem, if it cannot be read)."""
  if config.endswith(".toml"):
    return load_toml(config, STUDY_KINDS)
  return ("lm_study", LM_PRESETS[config]) if config in LM_PRESETS else ("study", PRESETS[config])


def _located(config: str, e: Exception, overrides=()) -> str:
  """A config check's error, with the study file's line of the key it names when ``--config`` is a file
  and the key's value is the file's (not one of ``overrides``, the command's ``key=value`` assignments)."""
  if not config.endswith(".toml"):
    return str(e)
  return locate_problem(config, str(e), overridden={item.partition("=")[0].strip() for item in overrides})


def _print_error(e: Exception) -> None:
  """``kdjax: error: ...`` on stderr, one line each for an error of several lines (a study file's problems)."""
  for line in str(e).splitlines() or [""]:
    print(f"kdjax: error: {line}", file=sys.stderr)


def _health_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--allow-unhealthy", action="store_true",
                 help=f"exit 0 even when a run is unhealthy (default: exit {EXIT_UNHEALTHY}; docs/health.md)")
  p.add_argument("--include-unhealthy", action="store_true",
                 help="keep unhealthy runs in the means and comparisons (they stay marked)")


def _end_with_health(unhealthy, args) -> int:
  """Prints the warning block naming each unhealthy run; the exit status (docs/health.md)."""
  if not unhealthy:
    return 0
  print("\n" + warning_block(unhealthy, excluded=not args.include_unhealthy), file=sys.stderr)
  if args.allow_unhealthy:
    return 0
  print(f"kdjax: exit status {EXIT_UNHEALTHY}: unhealthy runs (--allow-unhealthy exits 0)", file=sys.stderr)
  return EXIT_UNHEALTHY


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.command == "list":
    print("study configs (kdjax distill --config NAME):")
    for name, cfg in sorted(PRESETS.items()):
      print(f"  {name:20s} {cfg.dataset}: {cfg.teacher.model} -> {cfg.student.model}")
    print("models:")
    for name in model_names():
      print(f"  {name:20s} {get_model_spec(name).description}")
    _list_methods()
    print("datasets: builtin | idx:PATH | tfds:mnist|fashion_mnist|cifar10|cifar100")
    print("language-model studies (kdjax distill --config NAME):")
    for name, cfg in sorted(LM_PRESETS.items()):
      print(f"  {name:20s} {cfg.corpus}: {cfg.teacher.model} -> {cfg.student.model}, recipes {', '.join(cfg.recipes)}")
    print("study files: kdjax distill --config PATH.toml; kdjax distill --config NAME --show-config > PATH.toml writes "
          "one (docs/study_files.md)")
    return 0

  if args.command == "sweep":
    return _sweep(args)
  if args.command == "bench":
    return _bench(args)

  if not args.distributed and any(v is not None for v in (args.coordinator, args.num_processes, args.process_id,
                                                          args.distributed_timeout)):
    print("kdjax: error: --coordinator, --num-processes, --process-id and --distributed-timeout go with --distributed",
          file=sys.stderr)
    return 2
  if args.checkpoint_every is not None and args.checkpoint_every < 0:
    print(f"kdjax: error: --checkpoint-every must be >= 0, got {args.checkpoint_every}", file=sys.stderr)
    return 2
  try:
    kind, cfg = _study_config(args.config)
  except ValueError as e:  # a study file's problems, one a line: FILE:LINE: key: problem
    _print_error(e)
    return 2
  if kind == "lm_study":
    return _lm_distill(args, cfg)
  extra = ([f"method={args.method}"] if args.method else []) + _study_overrides(args)
  try:
    cfg = override(cfg, extra)
    validate_study(cfg)
    _check_study_keys_reach_method(cfg, args.overrides)
  except ValueError as e:
    print(f"kdjax: error: {_located(args.config, e, extra)}", file=sys.stderr)
    return 2
  if args.show_config:
    print(dumps_toml(cfg, kind="study"), end="")
    return 0

  try:
    if args.distributed:
      initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                             timeout_s=300 if args.distributed_timeout is None else args.distributed_timeout)
    result = run_study(cfg, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
                       resume=args.resume or args.resume_or_start, start_if_nothing=args.resume_or_start,
                       teacher_checkpoint=args.teacher_checkpoint, teacher_weights=args.teacher_weights,
                       teacher_input_norm=args.teacher_input_norm,
                       include_unhealthy=args.include_unhealthy, tensorboard=args.tensorboard)
  except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # a disk that filled up or went read-only mid-run: the checkpoints before it are kept
    print(f"kdjax: error: {_os_error(e)}", file=sys.stderr)
    return 1
  if not is_primary():
    return 0
  print(format_table(result, include_unhealthy=args.include_unhealthy))
  if result.out_dir:
    print(f"\nwritten: {result.out_dir}/metrics.jsonl, results.json, table.md"
          + (", checkpoints/" if args.checkpoint_every is not None or args.resume or args.resume_or_start else "")
          + (", tensorboard/" if args.tensorboard else ""))
  return _end_with_health(unhealthy_runs(result), args)


def _study_overrides(args) -> list[str]:
  """``kdjax distill``'s --set assignments, then its --data, --seeds, --workdir and --download as config keys
  (a language-model study refuses --data before it gets here)."""
  return [*args.overrides, *([f"dataset={args.data}"] if args.data else []),
          *([f"seeds={args.seeds}"] if args.seeds else []),
          *([f"workdir={args.workdir}"] if args.workdir else []), *(["download=true"] if args.download else [])]


def _lm_distill(args, base) -> int:
  """``kdjax distill --config lm_...`` (or a study file of kind lm_study): a language-model study
  (:mod:`kdjax.lm_study`) of config ``base`` with the command's overrides."""
  unsupported = [flag for flag, given in (("--method", args.method), ("--data", args.data),
                                          ("--checkpoint-every", args.checkpoint_every is not None),
                                          ("--resume", args.resume), ("--resume-or-start", args.resume_or_start),
                                          ("--teacher-checkpoint", args.teacher_checkpoint),
                                          ("--teacher-input-norm", args.teacher_input_norm),
                                          ("--distributed", args.distributed),
                                          ("--include-unhealthy", args.include_unhealthy)) if given]
  if unsupported:
    print(f"kdjax: error: {', '.join(unsupported)} do not apply to a language-model study yet; set its recipes, "
          "corpus and runs with --set (e.g. --set recipes=sft,word_kd --set corpus=files:'docs/*.md')",
          file=sys.stderr)
    return 2
  overrides = _study_overrides(args)
  try:
    cfg = override(base, overrides)
    validate_lm_study(cfg)
  except ValueError as e:
    print(f"kdjax: error: {_located(args.config, e, overrides)}", file=sys.stderr)
    return 2
  if args.show_config:
    print(dumps_toml(cfg, kind="lm_study"), end="")
    return 0
  try:
    payload = run_lm_study(cfg, progress=not args.no_progress, log=lambda line: print(line, file=sys.stderr),
                           teacher_weights=args.teacher_weights, tensorboard=args.tensorboard)
  except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"kdjax: error: {_os_error(e)}", file=sys.stderr)
    return 1
  print(payload["table"])
  print(f"\nwritten: {cfg.workdir}/{cfg.name}/metrics.jsonl, results.json, table.md")
  unhealthy = unhealthy_lm_runs(payload)
  if unhealthy and not args.allow_unhealthy:
    print(f"kdjax: exit status {EXIT_UNHEALTHY}: unhealthy runs (--allow-unhealthy exits 0)", file=sys.stderr)
    return EXIT_UNHEALTHY
  return 0


def _os_error(e: OSError) -> str:
  """An I/O error in one line (it names the file) and what becomes of the finished work."""
  return f"{e}; what was saved before it is kept (checkpoints, results.jsonl): fix the disk and run again"


def _check_study_keys_reach_method(cfg, overrides: list[str]) -> None:
  """``--set temperature=`` / ``alpha=`` set the study's T and alpha, which only Hinton-style KD takes
  (the registry's ``label_weight``); for any other method they would be recorded but not used."""
  given = sorted({item.partition("=")[0].strip() for item in overrides} & {"temperature", "alpha"})
  if given and method_spec(cfg.method).label_weight is None:
    raise ValueError(f"method {cfg.method!r} does not take the study's {' and '.join(given)}: it keeps its own "
                     f"defaults; set its hyperparameters as --set method.NAME=VALUE ({format_hparams(cfg.method)})")


def _list_methods() -> None:
  """The method registry: name, family and paper, then each hyperparameter with its default."""
  print("methods (kdjax distill --method NAME --set method.HPARAM=V; kdjax sweep --grid method=NAME; "
        "kdjax.methods.make_method):")
  for name, spec in sorted(REGISTRY.items()):
    print(f"  {name:20s} {spec.family:12s} {spec.paper}")
    study = {spec.temperature: "the study's temperature", spec.label_weight: "the study's alpha"} \
        if spec.label_weight is not None else {}
    hparams = [f"{k}=" + (f"<{study[k]}>" if k in study else "<required>" if p.default is p.empty else repr(p.default))
               for k, p in method_hparams(name).items()]
    print(f"  {'':20s} {'':12s} {', '.join(hparams) or '(no hyperparameters)'}")


def _sweep(args) -> int:
  extra = list(args.overrides) + ([f"dataset={args.data}"] if args.data else [])
  try:
    kind, base = _study_config(args.config)
  except ValueError as e:  # a study file's problems, one a line
    _print_error(e)
    return 2
  if kind != "study":
    print(f"kdjax: error: {args.config} is a {kind} file: kdjax sweep varies image and text studies (kind = "
          "\"study\"); compare language-model recipes with kdjax distill", file=sys.stderr)
    return 2
  try:
    try:
      cfg = override(base, extra)
      validate_study(cfg)
    except ValueError as e:
      raise ValueError(_located(args.config, e, extra)) from None
    name = Path(args.config).stem if args.config.endswith(".toml") else args.config
    result = run_sweep(cfg, args.grid, out_dir=args.out or f"runs/sweep_{name}", max_parallel=args.max_parallel,
                       subset=args.subset, data_seed=args.data_seed, baseline=args.baseline,
                       progress=not args.no_progress, include_unhealthy=args.include_unhealthy,
                       tensorboard=args.tensorboard)
  except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:  # a teacher's training; a student's bad steps are skipped and recorded
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # the runs stored before it stay in results.jsonl; re-running resumes after them
    print(f"kdjax: error: {_os_error(e)}", file=sys.stderr)
    return 1
  print((result.out_dir / "report.md").read_text())
  print(f"written: {', '.join(str(p) for p in result.reports.values())}")
  return _end_with_health(result.unhealthy(), args)


def _int_list(flag: str, text: str) -> list[int]:
  try:
    values = [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise ValueError(f"{flag}: {text!r} is not a comma-separated list of integers") from None
  if not values:
    raise ValueError(f"{flag}: no values given")
  return values


def _str_list(flag: str, text: str) -> list[str]:
  values = [t.strip() for t in text.split(",") if t.strip()]
  if not values:
    raise ValueError(f"{flag}: no values given")
  return values


def _bench_lm(args) -> int:
  """``kdjax bench --student lm_tiny --teacher lm_small``: the language-model step, tokens/s."""
  teacher, method = args.teacher or "lm_small", args.method or "lm_kd"
  try:
    reports = []
    for batch, precision, students in itertools.product(_int_list("--batch", args.batch),
                                                        _str_list("--precision", args.precision),
                                                        _int_list("--students", args.students)):
      r = bench_lm(teacher, args.student, method=method, batch=batch, seq_len=args.seq_len, students=students,
                   precision=precision, steps=min(args.steps, 20) if args.steps == 60 else args.steps,
                   windows=args.windows, backend=args.backend, peak_tflops=args.peak_tflops)
      reports.append(r)
      print(f"batch={batch}, precision={precision}, students={students}: {r['tokens_per_s']:,.0f} tokens/s",
            file=sys.stderr, flush=True)
  except ValueError as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 2
  print(format_lm_table(reports))
  if args.json:
    write_jsonl(reports, args.json)
  return 0


def _bench(args) -> int:
  if args.student.startswith("lm_"):
    return _bench_lm(args)
  args.teacher, args.method = args.teacher or "resnet32x4", args.method or "hinton"
  try:
    axes = {"mode": _str_list("--mode", args.mode), "batch": _int_list("--batch", args.batch),
            "precision": _str_list("--precision", args.precision),
            "steps_per_call": _int_list("--steps-per-call", args.steps_per_call),
            "students": _int_list("--students", args.students)}
    shape = None if args.input_shape is None else tuple(_int_list("--input-shape", args.input_shape))
    if shape is not None and len(shape) != 3:
      raise ValueError(f"--input-shape: expected H,W,C, got {args.input_shape!r}")
    common = dict(method=args.method, num_classes=args.classes, input_shape=shape, steps=args.steps,
                  windows=args.windows, warmup=args.warmup, epoch_size=args.epoch_size, augment=args.augment,
                  backend=args.backend, peak_tflops=args.peak_tflops)
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    for combo in combos:  # every row checked before the first compiles
      try:
        check_config(args.teacher, args.student, **common, **combo)
      except ValueError as e:
        raise ValueError(f"{e} ({', '.join(f'{k}={v}' for k, v in combo.items())})" if len(combos) > 1 else e) from None
    reports = []
    for i, combo in enumerate(combos, 1):
      r = bench_kd(args.teacher, args.student, **common, **combo)
      reports.append(r)
      print(f"[{i}/{len(combos)}] {', '.join(f'{k}={v}' for k, v in combo.items())}: {r['images_per_s']:,.0f} "
            f"images/s, compile {r['compile_s']:.1f} s", file=sys.stderr, flush=True)
  except ValueError as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 2
  add_ratios(reports)
  print(format_bench_table(reports))
  if args.json:
    write_jsonl(reports, args.json)
    print(f"\nwritten: {args.json}")
  else:
    print("\n" + to_jsonl(reports), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
