"""Online and progressive distillation against the student alone and single-teacher KD: two tables.

    python experiments/online.py                              # built-in MNIST subset, 3 seeds
    python experiments/online.py --seeds 0                    # one seed, about a third of the time
    python experiments/online.py --data idx:DIR --seeds 0,1,2 --epochs 30

Online rows, all with the preset's distilled config (student mlp800, its optimizer, epochs and
jitter), so the only difference between them is who teaches whom:

* the student alone (same augmentation);
* Hinton KD (Hinton et al. 2015) from the preset's teacher (mlp1200, trained once, first seed),
  at the preset's alpha and T;
* Deep Mutual Learning (Zhang et al. 2018) with 2 and with 3 students: ``CE + mean KL`` to the
  peers at T = 1, no teacher;
* co-distillation (Anil et al. 2018) with 2 students: ``CE + T²·KL`` to the peer, switched on after
  a burn-in (``--burn-in-epochs``, default 1), T = 1 by default (Anil et al. distill the peers'
  plain predictions). The cohort trains in one step, so the peers' predictions are always current
  (Anil et al. exchange stale checkpoints between workers): it is DML with a burn-in.

For the online rows the table gives the mean student's test errors (what one deployed student
gets) and the ensemble's (the mean of the students' probabilities, K times the inference cost).

Progressive rows (teacher-assistant KD, Mirzadeh et al. 2020): a much smaller student (mlp100,
784-100-100-10, same optimizer and augmentation) alone, distilled straight from the mlp1200
teacher, and distilled from an mlp800 assistant that was itself distilled from the teacher
(``kdjax.train.chain``). Mean ± sample std over seeds; wall seconds per run (a cohort run trains
all its students; a chain run counts the assistant and the student). Results go to
``WORKDIR/online/``: ``table.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from kdjax.config import to_dict
from kdjax.study import add_experiment_args, environment, experiment_config, experiment_data, mean_pm, select, write_results
from kdjax.train import chain, distill, train_online, train_student, train_teacher
from kdjax.train.loop import steps_per_epoch
from kdjax.train.online import check_online

# name -> (label, number of students (1 = a single model), online rule or None)
ROWS = {
    "alone": ("student alone (same augmentation)", 1, None),
    "hinton": ("Hinton KD from the teacher (Hinton et al. 2015)", 1, None),
    "dml2": ("DML, 2 students (Zhang et al. 2018)", 2, "dml"),
    "dml3": ("DML, 3 students (Zhang et al. 2018)", 3, "dml"),
    "codistill2": ("co-distillation, 2 students (Anil et al. 2018)", 2, "codistill"),
}


PROGRESSIVE = {
    "small_alone": "student mlp100 alone",
    "small_kd": "mlp100 distilled from the mlp1200 teacher",
    "small_takd": "mlp100 distilled from an mlp800 assistant distilled from the teacher (TAKD)",
}
SMALL_MODEL = "mlp100"


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_experiment_args(p)
  p.add_argument("--rows", default=",".join([*ROWS, *PROGRESSIVE]),
                 help="comma-separated subset of: " + ", ".join([*ROWS, *PROGRESSIVE]))
  p.add_argument("--codistill-temperature", type=float, default=1.0,
                 help="co-distillation's temperature (default 1: Anil et al. distill the peers' plain predictions)")
  p.add_argument("--burn-in-epochs", type=float, default=1.0,
                 help="co-distillation's burn-in before the peers' term is switched on, in epochs (default 1)")
  args = p.parse_args(argv)
  rows = select(args.rows, [*ROWS, *PROGRESSIVE])
  cfg = experiment_config(args, "online")
  try:
    if args.burn_in_epochs < 0:
      raise ValueError(f"--burn-in-epochs must be >= 0, got {args.burn_in_epochs}")
    check_online(2, "codistill", None, args.codistill_temperature)
  except ValueError as e:
    raise SystemExit(f"online: {e}") from None
  seeds = list(cfg.seeds)
  data = experiment_data(cfg, args.subset)
  out = Path(args.workdir) / "online"
  out.mkdir(parents=True, exist_ok=True)
  student_cfg, teacher_cfg = cfg.distilled, cfg.teacher  # every row uses the distilled run's config
  small_cfg = dataclasses.replace(student_cfg, model=SMALL_MODEL)
  steps = steps_per_epoch(len(data.train_labels), student_cfg.batch_size)
  codistill = {"temperature": args.codistill_temperature, "burn_in_steps": round(args.burn_in_epochs * steps)}
  kd = {"alpha": cfg.alpha, "temperature": cfg.temperature}

  t0 = time.perf_counter()
  teacher = None
  if any(r in rows for r in ("hinton", "small_kd", "small_takd")):
    teacher = train_teacher(data, teacher_cfg, seed=seeds[0], progress=False)
    print(f"teacher {teacher_cfg.model}: {teacher.test['errors']} test errors, {teacher.fit.wall_s:.0f} s", flush=True)
  results = {}
  for name in rows:
    runs = []
    for seed in seeds:
      if name in ("alone", "small_alone"):
        r = train_student(data, student_cfg if name == "alone" else small_cfg, seed=seed, progress=False)
        record = {"seed": seed, **r.test, "wall_s": r.fit.wall_s}
      elif name in ("hinton", "small_kd"):
        r = distill(data, student_cfg if name == "hinton" else small_cfg, teacher, seed=seed, progress=False, **kd)
        record = {"seed": seed, **r.test, "wall_s": r.fit.wall_s}
      elif name == "small_takd":
        # The assistant and the student both use this seed, as the rows they are compared with.
        assistant, r = chain(data, [student_cfg, small_cfg], teacher=teacher, seeds=[seed, seed], progress=False,
                             **kd)
        record = {"seed": seed, **r.test, "assistant": assistant.test, "wall_s": assistant.fit.wall_s + r.fit.wall_s}
      else:
        _, k_students, rule = ROWS[name]
        r = train_online(data, student_cfg, num_students=k_students, rule=rule, seed=seed, progress=False,
                         **(codistill if rule == "codistill" else {}))
        record = {"seed": seed, **r.mean_student, "students": r.student_tests,
                  **{f"ensemble_{k}": v for k, v in r.ensemble.items()}, "wall_s": r.wall_s}
      runs.append(record)
      ens = f", ensemble {record['ensemble_errors']}" if "ensemble_errors" in record else ""
      print(f"{name:11s} seed {seed}: {record['errors']:g} test errors{ens}, {record['wall_s']:.1f} s", flush=True)
    results[name] = runs

  teacher_text = f"teacher {teacher_cfg.model} ({teacher.test['errors']} errors), " if teacher else ""
  lines = [f"{data.name} ({len(data.test_labels)} test images), {teacher_text}{student_cfg.epochs} epochs per student, "
           f"jitter {student_cfg.jitter}, hflip {student_cfg.hflip}, Hinton KD alpha {cfg.alpha:g} T {cfg.temperature:g}, "
           f"co-distillation T {codistill['temperature']:g} burn-in {codistill['burn_in_steps']} steps, "
           f"seeds {','.join(map(str, seeds))}, {environment()['device']}"]
  online = [n for n in results if n in ROWS]
  if online:
    lines += ["", f"Online (student {student_cfg.model}):", "",
              "| row | method | students | test errors (mean student) | test errors (ensemble) | "
              "test accuracy (%), mean student | runs | wall s / run |", "|---|---|---|---|---|---|---|---|"]
    for name in online:
      runs = results[name]
      label, k_students, _ = ROWS[name]
      ensemble = mean_pm([r["ensemble_errors"] for r in runs]) if k_students > 1 else "—"
      lines.append(f"| `{name}` | {label} | {k_students} | {mean_pm([r['errors'] for r in runs])} | {ensemble} | "
                   f"{mean_pm([100 * r['accuracy'] for r in runs], '.2f')} | {len(runs)} | "
                   f"{mean_pm([r['wall_s'] for r in runs])} |")
  progressive = [n for n in results if n in PROGRESSIVE]
  if progressive:
    lines += ["", f"Progressive (student {SMALL_MODEL}):", "",
              "| row | method | test errors | test accuracy (%) | runs | wall s / run |", "|---|---|---|---|---|---|"]
    for name in progressive:
      runs = results[name]
      lines.append(f"| `{name}` | {PROGRESSIVE[name]} | {mean_pm([r['errors'] for r in runs])} | "
                   f"{mean_pm([100 * r['accuracy'] for r in runs], '.2f')} | {len(runs)} | "
                   f"{mean_pm([r['wall_s'] for r in runs])} |")
    if "small_takd" in results:
      lines += ["", "assistants (mlp800 distilled from the teacher): "
                + mean_pm([r["assistant"]["errors"] for r in results["small_takd"]]) + " test errors"]
  lines += ["", f"mean ± sample std over seeds; total wall time {time.perf_counter() - t0:.0f} s"]
  write_results(out, "\n".join(lines), {"args": vars(args), "config": to_dict(cfg), "codistill": codistill,
                                        "environment": environment(), "teacher": teacher.test if teacher else None,
                                        "rows": results})


if __name__ == "__main__":
  main()
