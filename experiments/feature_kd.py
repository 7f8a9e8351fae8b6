"""One teacher, one student, every method kdjax has, same seeds: one comparison table.

    python experiments/feature_kd.py                      # built-in MNIST subset, MLP pair
    python experiments/feature_kd.py --data idx:DIR --seeds 0,1,2,3,4 --epochs 20
    python experiments/feature_kd.py --config cifar100_resnet32x4_resnet8x4   # RepDistiller's recipe

The teacher is trained once (the preset's teacher config, first seed); every
student run uses the preset's distilled config (same student, optimizer, epochs
and augmentation), so the only difference between rows is the method. Hyperparameters are the
published defaults (RepDistiller's and mdistiller's CIFAR-100 settings; Hinton
KD at the preset's alpha and T), untuned for this data. Methods that do not fit
the pair (feature-map methods on an MLP), or that diverge with their published
settings, are listed with the reason instead of a number. Results go to ``WORKDIR/feature_kd/``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from kdjax.data import load_dataset
from kdjax.methods import PAPERS, make_method
from kdjax.config import override, to_dict, validate_study
from kdjax.presets import PRESETS
from kdjax.study import environment, mean_std
from kdjax.train import NonFiniteLossError, distill, train_student, train_teacher
from kdjax.train.loop import steps_per_epoch

# The table's rows: every registered method, the student alone, and Hinton KD with logit
# standardization.
ROWS = {"supervised": "student alone (same augmentation)",
        **{name: paper for name, paper in PAPERS.items() if name != "supervised"},
        "hinton+ls": "Hinton KD + logit standardization (Sun et al. 2024)"}


def method_for(name: str, cfg, steps: int, num_examples: int):
  """The method ``name`` at its published defaults; Hinton KD at the preset's alpha and T."""
  epochs = cfg.distilled.epochs
  if name in ("hinton", "hinton+ls"):
    return make_method("hinton", alpha=cfg.alpha, temperature=cfg.temperature, standardize=name == "hinton+ls")
  if name == "dkd":
    # mdistiller ramps DKD in over 20 of 240 epochs. On the MLP pair (built-in subset, seed 0) a
    # one-epoch ramp diverged at step 67 (gradient norm inf); ramping over half the run trained
    # (50 test errors), so the ramp here spans half the student's epochs.
    return make_method("dkd", warmup_steps=steps * max(epochs // 2, 1))
  if name == "crd":  # RepDistiller draws 16384 negatives from CIFAR's 50,000; 4096 on smaller sets
    return make_method("crd", nce_k=16384 if num_examples >= 50_000 else min(4096, num_examples - 1))
  return make_method(name)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="hinton_mnist", choices=sorted(PRESETS),
                 help="the study preset whose teacher, student and data to use")
  p.add_argument("--data", help="dataset instead of the preset's: builtin, idx:DIR or tfds:NAME")
  p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
  p.add_argument("--epochs", type=int, help="student epochs (default: the preset's)")
  p.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: the preset's)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a preset field, e.g. --set distilled.learning_rate=0.1 (repeatable)")
  p.add_argument("--methods", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
  p.add_argument("--workdir", default="runs")
  args = p.parse_args(argv)
  methods = args.methods.split(",")
  unknown = [m for m in methods if m not in ROWS]
  if unknown:
    raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(ROWS)}")
  shortcuts = [f"dataset={args.data}"] if args.data else []
  shortcuts += [f"seeds={args.seeds}"] if args.seeds else []
  shortcuts += [f"distilled.epochs={args.epochs}"] if args.epochs else []
  shortcuts += [f"teacher.epochs={args.teacher_epochs}"] if args.teacher_epochs else []
  try:
    cfg = override(PRESETS[args.config], shortcuts + args.set)
    validate_study(cfg)
  except ValueError as e:
    raise SystemExit(f"feature_kd: {e}") from None
  seeds = list(cfg.seeds)
  data = load_dataset(cfg.dataset, tfds_data_dir=cfg.tfds_data_dir, download=cfg.download)
  out = Path(args.workdir) / "feature_kd"
  out.mkdir(parents=True, exist_ok=True)
  # Every row, the student alone included, uses the distilled run's config and augmentation.
  student_cfg, teacher_cfg = cfg.distilled, cfg.teacher
  steps = steps_per_epoch(len(data.train_labels), student_cfg.batch_size)

  t0 = time.perf_counter()
  teacher = train_teacher(data, teacher_cfg, seed=seeds[0], progress=False)
  print(f"teacher {teacher_cfg.model}: {teacher.test['errors']} test errors, {teacher.fit.wall_s:.0f} s",
        flush=True)
  rows = {}
  for name in methods:
    runs, skipped = [], None
    for seed in seeds:
      try:
        if name == "supervised":
          r = train_student(data, student_cfg, seed=seed, progress=False)
        else:
          r = distill(data, student_cfg, teacher, method=method_for(name, cfg, steps, len(data.train_labels)), seed=seed, progress=False)
      except ValueError as e:  # the method does not fit this teacher/student pair
        skipped = str(e).splitlines()[0]
        break
      except NonFiniteLossError as e:  # kept in the table: a published default that diverges here
        skipped = f"diverged, seed {seed}: {e.metric} not finite at step {e.step}"
        break
      extra = sum(x.size for x in jax.tree.leaves(r.method_params or {}))
      runs.append({"seed": seed, **r.test, "wall_s": r.fit.wall_s, "extra_params": extra})
      print(f"{name:12s} seed {seed}: {r.test['errors']} test errors, {r.fit.wall_s:.1f} s", flush=True)
    rows[name] = {"runs": runs, "skipped": skipped}

  lines = [f"{data.name} ({len(data.test_labels)} test images), teacher {teacher_cfg.model} "
           f"({teacher.test['errors']} errors) -> student {student_cfg.model}, {student_cfg.epochs} epochs, "
           f"jitter {student_cfg.jitter}, hflip {student_cfg.hflip}, seeds {','.join(map(str, seeds))}, "
           f"{environment()['device']}",
           "", "| method | paper | test errors | test accuracy (%) | runs | wall s / run | extra params |",
           "|---|---|---|---|---|---|---|"]
  for name, row in rows.items():
    if row["skipped"]:
      lines.append(f"| `{name}` | {ROWS[name]} | n/a: {row['skipped']} | | 0 | | |")
      continue
    err, err_sd = mean_std([r["errors"] for r in row["runs"]])
    acc, acc_sd = mean_std([100 * r["accuracy"] for r in row["runs"]])
    wall, _ = mean_std([r["wall_s"] for r in row["runs"]])
    pm = (lambda sd, fmt: f" ± {sd:{fmt}}") if len(row["runs"]) > 1 else (lambda sd, fmt: "")  # no spread from one run
    lines.append(f"| `{name}` | {ROWS[name]} | {err:.1f}{pm(err_sd, '.1f')} | {acc:.2f}{pm(acc_sd, '.2f')} | "
                 f"{len(row['runs'])} | {wall:.1f} | {row['runs'][0]['extra_params']:,} |")
  lines += ["", f"mean ± sample std over seeds; total wall time {time.perf_counter() - t0:.0f} s"]
  table = "\n".join(lines)
  print("\n" + table)
  (out / "table.md").write_text(table + "\n")
  (out / "results.json").write_text(json.dumps({"args": vars(args), "config": to_dict(cfg), "environment": environment(),
                                                "teacher": teacher.test, "rows": rows}, indent=2))


if __name__ == "__main__":
  main()
