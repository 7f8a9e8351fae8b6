"""Distillation across domains: a teacher trained on a source domain distils into a student that
also sees unlabelled images of a target domain, with and without a feature-alignment term, against
the source-only student; and cross-modal distillation, a full-image teacher teaching a student
that sees only a low-resolution view.

    python experiments/domain_transfer.py                       # built-in MNIST -> MNIST rotated 45 degrees
    python experiments/domain_transfer.py --target invert --seeds 0
    python experiments/domain_transfer.py --data idx:data/mnist --target idx:data/fashion_mnist

With a transform as the target (``invert``, ``rotate:DEG``, ``noise:SIGMA``), the training set is
split in halves so that no image is seen in both domains: the first half, labelled, is the source;
the second half, transformed and without labels, the target's unlabelled images; the transformed
test set is the target test set every row is judged on (the source test set is reported too). A
dataset spec as the target (e.g. ``idx:DIR`` of Fashion-MNIST) uses its training images unlabelled
and its test set.

Rows (every student: the preset's distilled config, model and augmentation; α, T the preset's):

- ``source_only``: the student on the source labels alone;
- ``kd``: Hinton KD from the teacher on source images only;
- ``kd_target``: KD, plus the teacher's soft labels on the unlabelled target images
  (``target_kd_weight``);
- ``kd_mmd`` / ``kd_coral`` / ``kd_dann``: ``kd_target`` plus aligning the student's ``pre_logits``
  features on source and target batches with multi-kernel MMD (Long et al. 2015), CORAL (Sun &
  Saenko 2016) or a domain discriminator behind gradient reversal (Ganin et al. 2016);
- ``mmd``: KD on source plus MMD alignment, no soft labels on the target;
- ``view_alone`` / ``view_kd`` (cross-modal): a student that sees only ``--view`` of each source
  image (default ``lowres:4``, 7×7 pixels of information) trained alone, or distilled from the
  full-image teacher shown the full image of the same example. Judged on the view of the source
  test set.

Results go to ``WORKDIR/domain_transfer/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from kdjax.config import to_dict
from kdjax.data.domains import cross_modal_pair, domain_pair
from kdjax.methods import make_method
from kdjax.study import add_experiment_args, environment, experiment_config, experiment_data, mean_pm, select, write_results
from kdjax.train import NonFiniteLossError, distill, evaluate, make_eval_step, train_student, train_teacher

ROWS = {
    "source_only": "student on the source labels alone",
    "kd": "Hinton KD on source images",
    "kd_target": "KD + the teacher's soft labels on target images",
    "kd_mmd": "KD + target soft labels + MMD alignment",
    "kd_coral": "KD + target soft labels + CORAL alignment",
    "kd_dann": "KD + target soft labels + domain-adversarial alignment (DANN)",
    "mmd": "KD + MMD alignment (no target soft labels)",
    "view_alone": "student on the view alone",
    "view_kd": "student on the view, distilled from the full-image teacher",
}
CROSS_MODAL = ("view_alone", "view_kd")


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_experiment_args(p)
  p.add_argument("--target", default="rotate:45",
                 help="the target domain: a transform (invert, rotate:DEG, noise:SIGMA) or a dataset spec")
  p.add_argument("--view", default="lowres:4", help="the cross-modal rows' student view (a transform)")
  p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows: {', '.join(ROWS)}")
  p.add_argument("--align-weight", type=float, default=1.0, help="weight of the alignment term")
  p.add_argument("--target-kd-weight", type=float,
                 help="weight of the target soft-label term (default 1 - alpha, the source soft term's)")
  args = p.parse_args(argv)
  rows = select(args.rows, ROWS)
  cfg = experiment_config(args, "domain_transfer")
  seeds = list(cfg.seeds)
  try:
    source, transfer = domain_pair(experiment_data(cfg, args.subset), args.target)
    _, view_data = cross_modal_pair(source, args.view)
  except ValueError as e:
    raise SystemExit(f"domain_transfer: {e}") from None
  kd = dict(alpha=cfg.alpha, temperature=cfg.temperature)
  if args.target_kd_weight is None:
    args.target_kd_weight = 1.0 - cfg.alpha
  methods = {
      "kd_target": dict(align="none", target_kd_weight=args.target_kd_weight),
      "kd_mmd": dict(align="mmd", align_weight=args.align_weight, target_kd_weight=args.target_kd_weight),
      "kd_coral": dict(align="coral", align_weight=args.align_weight, target_kd_weight=args.target_kd_weight),
      "kd_dann": dict(align="dann", align_weight=args.align_weight, target_kd_weight=args.target_kd_weight),
      "mmd": dict(align="mmd", align_weight=args.align_weight, target_kd_weight=0.0),
  }
  for name, hp in methods.items():  # bad hyperparameters fail here, before any training
    methods[name] = make_method("domain_kd", **kd, **hp)
  out = Path(args.workdir) / "domain_transfer"
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  print(transfer.summary(), flush=True)

  teacher = train_teacher(source, cfg.teacher, seed=seeds[0], progress=False)
  t_eval = make_eval_step(teacher.graphdef)
  teacher_target = evaluate(t_eval, teacher.params, teacher.rest, transfer.test_images, transfer.test_labels)
  teacher_view = evaluate(t_eval, teacher.params, teacher.rest, view_data.test_images, view_data.test_labels)
  print(f"teacher {cfg.teacher.model}: source {teacher.test['errors']} / target {teacher_target['errors']} test "
        f"errors, {teacher.fit.wall_s:.0f} s", flush=True)

  source_only = dataclasses.replace(transfer, unlabelled_images=None)  # the target test set, no target images

  def train_row(row, seed):
    if row == "source_only":
      return train_student(source_only, cfg.distilled, seed=seed, progress=False)
    if row == "kd":
      return distill(source_only, cfg.distilled, teacher, seed=seed, progress=False, **kd)
    if row == "view_alone":
      return train_student(dataclasses.replace(view_data, teacher_train_images=None), cfg.distilled, seed=seed,
                           progress=False)
    if row == "view_kd":
      return distill(view_data, cfg.distilled, teacher, seed=seed, progress=False, **kd)
    return distill(transfer, cfg.distilled, teacher, method=methods[row], seed=seed, progress=False)

  results: dict[str, list[dict]] = {}
  diverged: dict[str, str] = {}
  for row in rows:
    for seed in seeds:
      try:
        r = train_row(row, seed)
      except NonFiniteLossError as e:  # kept in the table, not hidden
        diverged[row] = f"diverged, seed {seed}: {e.metric} not finite at step {e.step}"
        print(f"{row:12s} seed {seed}: {diverged[row]}", flush=True)
        break
      src = None if row in CROSS_MODAL else evaluate(make_eval_step(r.graphdef), r.params, r.rest,
                                                     source.test_images, source.test_labels)
      results.setdefault(row, []).append({"seed": seed, **r.test, "source": src, "wall_s": r.fit.wall_s})
      print(f"{row:12s} seed {seed}: {r.test['errors']} test errors"
            + (f" (source {src['errors']})" if src else "") + f", {r.fit.wall_s:.1f} s", flush=True)

  def line(row, *columns):
    if row in diverged:
      return f"| `{row}` | {ROWS[row]} | n/a: {diverged[row]} |" + " |" * (len(columns) - 1)
    return f"| `{row}` | {ROWS[row]} | " + " | ".join(mean_pm([c(r) for r in results[row]], f)
                                                       for c, f in columns) + " |"

  errors, accuracy = (lambda r: r["errors"], ".1f"), (lambda r: 100 * r["accuracy"], ".2f")
  source_accuracy, wall = (lambda r: 100 * r["source"]["accuracy"], ".2f"), (lambda r: r["wall_s"], ".1f")
  n_test = len(transfer.test_labels)
  lines = [f"{transfer.name}: {len(source.train_labels)} labelled source / {len(transfer.unlabelled_images)} unlabelled "
           f"target training images, {n_test} target test images; teacher {cfg.teacher.model}, student "
           f"{cfg.distilled.model} ({cfg.distilled.epochs} epochs, jitter {cfg.distilled.jitter}), alpha={cfg.alpha:g}, "
           f"T={cfg.temperature:g}, align weight {args.align_weight:g}, target KD weight {args.target_kd_weight:g}, "
           f"seeds {','.join(map(str, seeds))}, {environment()['device']}", "",
           "| row | what | target test errors | target accuracy (%) | source accuracy (%) | wall s / run |",
           "|---|---|---|---|---|---|",
           f"| teacher | {cfg.teacher.model} trained on the source | {teacher_target['errors']} | "
           f"{100 * teacher_target['accuracy']:.2f} | {100 * teacher.test['accuracy']:.2f} | {teacher.fit.wall_s:.1f} |"]
  lines += [line(row, errors, accuracy, source_accuracy, wall) for row in rows if row not in CROSS_MODAL]
  if any(row in CROSS_MODAL for row in rows):
    lines += ["", f"Cross-modal: the student sees `{args.view}` of each image ({source.name}, "
              f"{len(view_data.test_labels)} test images); "
              f"the teacher sees the full image (its errors on the view: {teacher_view['errors']}).", "",
              "| row | what | test errors (view) | test accuracy (%) | wall s / run |", "|---|---|---|---|---|",
              f"| teacher | {cfg.teacher.model}, full images | {teacher.test['errors']} | "
              f"{100 * teacher.test['accuracy']:.2f} | {teacher.fit.wall_s:.1f} |"]
    lines += [line(row, errors, accuracy, wall) for row in rows if row in CROSS_MODAL]
  lines += ["", f"mean ± sample std over seeds; total wall time {time.perf_counter() - t0:.0f} s"]
  write_results(out, "\n".join(lines), {
      "args": vars(args), "config": to_dict(cfg), "environment": environment(),
      "teacher": {"source": teacher.test, "target": teacher_target, "view": teacher_view}, "rows": results,
      "diverged": diverged})


if __name__ == "__main__":
  main()
