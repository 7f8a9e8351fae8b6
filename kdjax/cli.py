"""The ``kdjax`` command line.

    kdjax distill [--config NAME] [--data SPEC] [--seeds 0,1,2] [--set key=value ...]
    kdjax sweep [CONFIG] --grid key=v1,v2 [--grid ...] [--set key=value ...] [--max-parallel K]
    kdjax list
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from kdjax.config import override, validate_study
from kdjax.presets import PRESETS


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="kdjax", description="Knowledge distillation in JAX.")
  sub = p.add_subparsers(dest="command", required=True)
  d = sub.add_parser("distill", help="teacher, student alone and distilled student, over seeds")
  d.add_argument("--config", default="hinton_mnist", choices=sorted(PRESETS),
                 help="the study to run (default: hinton_mnist, Hinton et al. 2015 on the built-in subset)")
  d.add_argument("--data", help="dataset: builtin, idx:PATH or tfds:NAME (overrides the config)")
  d.add_argument("--download", action="store_true", help="let TFDS download a missing dataset")
  d.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
  d.add_argument("--workdir", help="where metrics.jsonl, results.json and table.md go (default: runs)")
  d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set temperature=4 --set teacher.epochs=20")
  d.add_argument("--no-progress", action="store_true", help="no progress bars")
  d.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
  w = sub.add_parser("sweep", help="a grid over methods, hyperparameters and seeds; vmapped groups, a report",
                     description="Trains every run of a grid over a study preset (runs differing only in seed, "
                                 "temperature, alpha, learning rate or DKD/DIST's beta train together as one vmapped "
                                 "program), stores one JSON line per run (re-running resumes), and writes report.md, "
                                 "CSV tables and PNG plots.")
  w.add_argument("config", nargs="?", default="hinton_mnist", choices=sorted(PRESETS),
                 help="the study preset the grid varies (default: hinton_mnist)")
  w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                 help="a grid axis: method, seed, temperature, alpha, method.<hparam> or a study key such as "
                      "distilled.learning_rate (repeatable)")
  w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a preset field for every run, e.g. --set distilled.epochs=5")
  w.add_argument("--data", help="dataset: builtin, idx:PATH or tfds:NAME (overrides the config)")
  w.add_argument("--subset", type=int, metavar="N", help="train on the first N training images only")
  w.add_argument("--max-parallel", type=int, metavar="K", help="at most K students in memory at once (default: a whole group)")
  w.add_argument("--baseline", help="the variant to compare against (default: method=supervised if in the grid)")
  w.add_argument("--data-seed", type=int, default=0, help="the batch order and augmentation shared by all runs")
  w.add_argument("--out", help="output directory (default: runs/sweep_<config>)")
  w.add_argument("--no-progress", action="store_true", help="no progress bars")
  sub.add_parser("list", help="list the study configs, models and datasets")
  return p


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.command == "list":
    from kdjax.methods import PAPERS, method_names
    from kdjax.models import get_model_spec, model_names
    print("study configs (kdjax distill --config NAME):")
    for name, cfg in sorted(PRESETS.items()):
      print(f"  {name:20s} {cfg.dataset}: {cfg.teacher.model} -> {cfg.student.model}")
    print("models:")
    for name in model_names():
      print(f"  {name:20s} {get_model_spec(name).description}")
    print("methods (kdjax.methods.make_method):")
    for name in method_names():
      print(f"  {name:20s} {PAPERS[name]}")
    print("datasets: builtin | idx:PATH | tfds:mnist|fashion_mnist|cifar10|cifar100")
    return 0

  if args.command == "sweep":
    return _sweep(args)

  cfg = PRESETS[args.config]
  extra = list(args.overrides)
  if args.data:
    extra.append(f"dataset={args.data}")
  if args.seeds:
    extra.append(f"seeds={args.seeds}")
  if args.workdir:
    extra.append(f"workdir={args.workdir}")
  if args.download:
    extra.append("download=true")
  try:
    cfg = override(cfg, extra)
    validate_study(cfg)
  except ValueError as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 2
  if args.show_config:
    import json
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    return 0

  from kdjax.study import format_table, run_study
  from kdjax.train import NonFiniteLossError
  try:
    result = run_study(cfg, progress=not args.no_progress)
  except (ValueError, FileNotFoundError, NotADirectoryError) as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 1
  print(format_table(result))
  if result.out_dir:
    print(f"\nwritten: {result.out_dir}/metrics.jsonl, results.json, table.md")
  return 0


def _sweep(args) -> int:
  from kdjax.sweep import run_sweep
  from kdjax.train import NonFiniteLossError
  extra = list(args.overrides) + ([f"dataset={args.data}"] if args.data else [])
  try:
    cfg = override(PRESETS[args.config], extra)
    validate_study(cfg)
    result = run_sweep(cfg, args.grid, out_dir=args.out or f"runs/sweep_{args.config}", max_parallel=args.max_parallel,
                       subset=args.subset, data_seed=args.data_seed, baseline=args.baseline,
                       progress=not args.no_progress)
  except (ValueError, FileNotFoundError, NotADirectoryError) as e:
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 2
  except NonFiniteLossError as e:  # a teacher's training; a student's bad steps are skipped and recorded
    print(f"kdjax: error: {e}", file=sys.stderr)
    return 1
  print((result.out_dir / "report.md").read_text())
  print(f"written: {', '.join(str(p) for p in result.reports.values())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
