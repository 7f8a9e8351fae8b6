"""Robustness after distillation: does the student hold up under noise, corruptions and attack?

    python experiments/robustness.py                    # the built-in MNIST subset, minutes on a CPU
    python experiments/robustness.py --seeds 0,1,2 --rows alone,kd,ard

Rows (the preset's teacher and student configs; pixel units of [0, 1]):

- ``teacher``: the preset's teacher, trained on the labels (seed of the first student seed);
- ``robust teacher``: the same teacher trained adversarially (Madry et al. 2018: PGD examples of
  itself, ``--train-eps``, ``--train-steps``), only when the ``ard_robust`` row runs;
- ``alone``: the student on the labels;
- ``kd``: the student distilled from the teacher (Hinton KD, the preset's α and T);
- ``at``: the student trained adversarially, alone;
- ``ard``: adversarially robust distillation (Goldblum et al. 2020) from the teacher;
- ``ard_robust``: ARD from the robust teacher, the paper's setting.

Every model is evaluated clean, under Gaussian noise, blur, lower contrast, translation, FGSM and
PGD (``--pgd-steps`` steps, random start) at every ε of ``--eps``; the table shows a selection,
``results.json`` all of it, and ``accuracy_vs_eps.png`` plots PGD accuracy against ε. Teachers are
checkpointed under ``WORKDIR/robustness/teachers/`` and restored on a second run, not trained again.
Results go to ``WORKDIR/robustness/``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from kdjax.config import to_dict
from kdjax.losses import check_pgd
from kdjax.methods import adversarial_training, ard
from kdjax.robustness import plot_attack_curves, robustness_report
from kdjax.study import (add_experiment_args, environment, experiment_config, experiment_data, mean_pm, select,
                         teacher_checkpoint, write_results)
from kdjax.train import distill, train_student, train_teacher

ROWS = {"alone": "student alone", "kd": "student, KD", "at": "student, adversarial training",
        "ard": "student, ARD from the teacher", "ard_robust": "student, ARD from the robust teacher"}
COLUMNS = {"clean": "clean", "noise 0.2": "noise σ 0.2", "blur 5": "blur 5×5", "contrast 0.5": "contrast ×0.5",
           "translate 2": "shift 2 px", "fgsm 0.1": "FGSM ε 0.1"}  # then PGD at ε 0.05 and 0.1 (those of --eps)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_experiment_args(p)
  p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated student rows: {', '.join(ROWS)}")
  p.add_argument("--train-eps", type=float, default=0.1, help="the L∞ budget of the attacks trained against")
  p.add_argument("--train-steps", type=int, default=5, help="PGD steps of the attacks trained against")
  p.add_argument("--ard-alpha", type=float, default=1.0, help="ARD's weight of the adversarial KL term")
  p.add_argument("--ard-temperature", type=float, default=30.0, help="ARD's temperature")
  p.add_argument("--eps", default="0,0.025,0.05,0.075,0.1,0.15", help="PGD budgets to evaluate (comma-separated)")
  p.add_argument("--pgd-steps", type=int, default=10, help="PGD steps of the evaluation attacks")
  args = p.parse_args(argv)
  rows = select(args.rows, ROWS)
  cfg = experiment_config(args, "robustness")
  try:  # every attack setting is checked before any training
    eps = [float(e) for e in args.eps.split(",")]
    at_method = adversarial_training(eps=args.train_eps, steps=args.train_steps)
    ard_method = ard(alpha=args.ard_alpha, temperature=args.ard_temperature, eps=args.train_eps,
                     steps=args.train_steps)
    for e in eps:
      check_pgd(e, args.pgd_steps, None)
  except ValueError as e:
    raise SystemExit(f"robustness: {e}") from None
  data = experiment_data(cfg, args.subset, inputs="image", prog="robustness")  # the attacks perturb pixels
  seeds = list(cfg.seeds)
  out = Path(args.workdir) / "robustness"
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  print(data.summary(), flush=True)

  def report(model):
    return robustness_report(model.graphdef, model.params, model.rest, data.test_images, data.test_labels,
                             fgsm_eps=(0.1,), pgd_eps=eps, pgd_steps=args.pgd_steps)

  results: dict[str, list[dict]] = {}
  teacher = train_teacher(data, cfg.teacher, seed=seeds[0], progress=False, resume=True,
                          checkpoint_dir=teacher_checkpoint(out, data, cfg.teacher.model, seeds[0]))
  results["teacher"] = [{"seed": seeds[0], **report(teacher), "wall_s": teacher.fit.wall_s}]
  print(f"teacher {cfg.teacher.model}: {results['teacher'][0]}", flush=True)
  robust = None
  if "ard_robust" in rows:
    robust = train_student(data, cfg.teacher, seed=seeds[0], method=at_method, progress=False, resume=True,
                           checkpoint_dir=teacher_checkpoint(out, data, f"{cfg.teacher.model}_at_eps{args.train_eps:g}_"
                                                             f"steps{args.train_steps}", seeds[0]))
    results["robust teacher"] = [{"seed": seeds[0], **report(robust), "wall_s": robust.fit.wall_s}]
    print(f"robust teacher: {results['robust teacher'][0]}", flush=True)

  for row in rows:
    for seed in seeds:
      if row == "alone":
        r = train_student(data, cfg.distilled, seed=seed, progress=False)
      elif row == "kd":
        r = distill(data, cfg.distilled, teacher, alpha=cfg.alpha, temperature=cfg.temperature, seed=seed,
                    progress=False)
      elif row == "at":
        r = train_student(data, cfg.distilled, seed=seed, method=at_method, progress=False)
      else:
        r = distill(data, cfg.distilled, teacher if row == "ard" else robust, method=ard_method, seed=seed,
                    progress=False)
      results.setdefault(row, []).append({"seed": seed, **report(r), "wall_s": r.fit.wall_s})
      print(f"{row:11s} seed {seed}: {results[row][-1]}", flush=True)

  columns = {**COLUMNS, **{f"pgd {e:g}": f"PGD ε {e:g}" for e in [e for e in eps if e in (0.05, 0.1)] or [max(eps)]}}
  names = {"teacher": f"teacher `{cfg.teacher.model}`", "robust teacher": f"robust teacher `{cfg.teacher.model}`",
           **{row: f"{ROWS[row]} `{cfg.distilled.model}`" for row in rows}}
  lines = [f"{data.name}: {len(data.train_labels)} train / {len(data.test_labels)} test images; students "
           f"{cfg.distilled.epochs} epochs, seeds {','.join(map(str, seeds))}; trained against PGD-{args.train_steps} "
           f"at ε {args.train_eps:g}; ARD α {args.ard_alpha:g}, T {args.ard_temperature:g}; evaluated with "
           f"PGD-{args.pgd_steps}; {environment()['device']}", "", "test accuracy (%):", "",
           "| model | " + " | ".join(columns.values()) + " | wall s / run |", "|---" * (len(columns) + 2) + "|"]
  for name, rs in results.items():
    cells = [mean_pm([100 * r[c] for r in rs], ".2f") for c in columns]
    lines.append(f"| {names[name]} | " + " | ".join(cells) + f" | {mean_pm([r['wall_s'] for r in rs])} |")
  lines += ["", f"mean ± sample std over seeds; total wall time {time.perf_counter() - t0:.0f} s"]
  curves = {names[name]: [[100 * r[f"pgd {e:g}"] for r in rs] for e in eps] for name, rs in results.items()}
  plot = plot_attack_curves(eps, curves, out / "accuracy_vs_eps.png",
                            title=f"{data.name}: PGD-{args.pgd_steps} (L∞), mean over seeds")
  lines.append(f"plot: {plot}")
  write_results(out, "\n".join(lines), {
      "args": vars(args), "config": to_dict(cfg), "environment": environment(), "eps": eps, "rows": results})


if __name__ == "__main__":
  main()
