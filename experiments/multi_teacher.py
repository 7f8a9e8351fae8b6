"""Multi-teacher distillation: one student, three teachers, every aggregation kdjax has, same seeds.

    python experiments/multi_teacher.py                    # built-in MNIST subset, a few minutes on a CPU
    python experiments/multi_teacher.py --data idx:DIR --seeds 0,1,2 --epochs 30 --teacher-epochs 60

The teachers: two 1200-1200 MLPs (the preset's teacher config, seeds 0 and 1: the same
architecture, run stacked under one ``vmap`` in the student's step) and one 800-800 MLP trained
alone with the student's augmentation (a weaker teacher of another architecture). Every row trains
the same student (the preset's distilled config, same seeds) and differs only in what it learns
from; α and T are the preset's. The table gives the student's test errors, its agreement with the
teachers' ensemble on the test set, and the wall time; the header gives each teacher's and the
ensemble's errors. Results go to ``WORKDIR/multi_teacher/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kdjax.config import to_dict
from kdjax.methods import combine, fitnet, hinton_kd, multi_teacher_kd, per_teacher, supervised
from kdjax.study import add_experiment_args, environment, experiment_config, experiment_data, mean_pm, select, write_results
from kdjax.train import distill, evaluate_ensemble, train_student, train_teacher


ROWS = ("alone", "single", "mean_probs", "mean_logits", "ca_mkd", "ebkd", "best", "mean_probs+hints")


def rows(alpha: float, temperature: float, single: str, teachers: list[str]) -> dict[str, tuple[str, str, object]]:
  """``{key: (row, description, method)}`` for every key of :data:`ROWS`."""
  kd = dict(alpha=alpha, temperature=temperature)
  hints = per_teacher({n: (1.0, fitnet(student_layer="block2", teacher_layer="block2", ce_weight=0.0))
                       for n in teachers})
  return {
      "alone": ("student alone", "cross-entropy only, same augmentation", supervised()),
      "single": ("single teacher", f"Hinton KD from {single}", hinton_kd(**kd)),
      "mean_probs": ("mean of probabilities", "KL to the ensemble's distribution", multi_teacher_kd(**kd)),
      "mean_logits": ("mean of logits", "KL to softmax of the mean logits", multi_teacher_kd(**kd, combine="logits")),
      "ca_mkd": ("CA-MKD weights", "per-sample weights from each teacher's CE on the label (Zhang et al. 2022)",
                 multi_teacher_kd(**kd, weighting="confidence", combine="loss")),
      "ebkd": ("EBKD weights", "per-sample weights from each teacher's entropy (Kwon et al. 2020)",
               multi_teacher_kd(**kd, weighting="entropy", combine="loss")),
      "best": ("best teacher per sample", "the teacher with the lowest CE on each example's label",
               multi_teacher_kd(**kd, weighting="best")),
      "mean_probs+hints": ("mean of probabilities + hints",
                           "plus a FitNet regressor per teacher on block2 (weight 100, RepDistiller's)",
                           combine({"kd": (1.0, multi_teacher_kd(**kd)), "hint": (1.0, hints)})),
  }


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_experiment_args(p)
  p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS))
  args = p.parse_args(argv)
  keys = select(args.rows, ROWS)
  cfg = experiment_config(args, "multi_teacher")
  seeds = list(cfg.seeds)
  data = experiment_data(cfg, args.subset)
  out = Path(args.workdir) / "multi_teacher"
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()

  big = cfg.teacher.model
  teachers = {f"{big}-s0": train_teacher(data, cfg.teacher, seed=0, progress=False),
              f"{big}-s1": train_teacher(data, cfg.teacher, seed=1, progress=False),
              f"{cfg.distilled.model}-alone": train_student(data, cfg.distilled, seed=100, progress=False)}
  graphdefs = {n: t.graphdef for n, t in teachers.items()}
  variables = {n: t.variables for n, t in teachers.items()}
  ensemble = evaluate_ensemble(graphdefs, variables, data.test_images, data.test_labels)
  for n, t in teachers.items():
    print(f"teacher {n}: {ensemble[n]['errors']} test errors, {t.fit.wall_s:.0f} s", flush=True)
  print(f"ensemble of the three: {ensemble['ensemble']['errors']} test errors", flush=True)

  single = f"{big}-s0"
  results = {}
  table_rows = rows(cfg.alpha, cfg.temperature, single, list(teachers))
  for row, what, method in (table_rows[k] for k in keys):
    runs = []
    for seed in seeds:
      if method.needs_teacher:
        given = teachers if method.multi_teacher else teachers[single]
        r = distill(data, cfg.distilled, given, method=method, seed=seed, progress=False)
      else:
        r = train_student(data, cfg.distilled, seed=seed, progress=False)
      ev = evaluate_ensemble(graphdefs, variables, data.test_images, data.test_labels, student_graphdef=r.graphdef,
                             student_vars=r.variables)
      runs.append({"seed": seed, **r.test, "wall_s": r.fit.wall_s, "agreement": ev["ensemble"]["agreement"],
                   "agreement_per_teacher": {n: ev[n]["agreement"] for n in teachers}})
      print(f"{row:30s} seed {seed}: {r.test['errors']} test errors, agreement with the ensemble "
            f"{100 * ev['ensemble']['agreement']:.2f}%, {r.fit.wall_s:.1f} s", flush=True)
    results[row] = {"what": what, "runs": runs}

  teacher_line = ", ".join(f"{n} {ensemble[n]['errors']}" for n in teachers)
  lines = [f"{data.name} ({len(data.test_labels)} test images), student {cfg.distilled.model}, "
           f"{cfg.distilled.epochs} epochs, jitter {cfg.distilled.jitter}, alpha={cfg.alpha:g}, T={cfg.temperature:g}, "
           f"seeds {','.join(map(str, seeds))}, {environment()['device']}",
           f"teachers' test errors: {teacher_line}; their ensemble (mean of probabilities) "
           f"{ensemble['ensemble']['errors']}",
           "", "| student learns from | how | test errors | test accuracy (%) | agreement with ensemble (%) | "
           "wall s / run |", "|---|---|---|---|---|---|"]
  for row, res in results.items():
    rs = res["runs"]
    lines.append(f"| {row} | {res['what']} | {mean_pm([r['errors'] for r in rs])} | "
                 f"{mean_pm([100 * r['accuracy'] for r in rs], '.2f')} | "
                 f"{mean_pm([100 * r['agreement'] for r in rs], '.2f')} | {mean_pm([r['wall_s'] for r in rs])} |")
  lines += ["", f"mean ± sample std over seeds; total wall time {time.perf_counter() - t0:.0f} s"]
  write_results(out, "\n".join(lines), {"args": vars(args), "config": to_dict(cfg), "environment": environment(),
                                        "teachers": ensemble, "rows": results})


if __name__ == "__main__":
  main()
