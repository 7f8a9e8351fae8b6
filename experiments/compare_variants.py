"""A fair comparison of distillation variants: methods × temperatures × seeds, one sweep, one report.

    python experiments/compare_variants.py                      # built-in MNIST subset, 5 seeds
    python experiments/compare_variants.py --seeds 0,1,2 --temperatures 2,8 --methods supervised,hinton
    python experiments/compare_variants.py --data idx:DIR --epochs 30

Every run trains the preset's distilled student (same optimizer, epochs, augmentation, batches)
from the same teacher; the rows differ only in the method and its temperature. The logit methods
(Hinton KD, DKD, DIST) run at every temperature of the grid; the student alone and a feature
method (SP) have no temperature and run once per seed. Runs that differ only in seed and
temperature train together, one vmapped program per method (``kdjax.sweep``). DKD ramps its loss
in at its default, over min(20, epochs) epochs: the whole of this short run (a short ramp diverged on
this pair; see ``experiments/feature_kd.py``). Unhealthy runs (kdjax.health) are marked and left out.

Writes ``WORKDIR/compare_variants/``: ``results.jsonl`` (one line per run; re-running resumes),
``report.md`` (last-epoch and best-epoch tables, mean ± std over seeds, paired difference against
the student alone with a 95% t-interval), CSV tables and PNG plots.
"""

from __future__ import annotations

import argparse

from kdjax.study import add_experiment_args, experiment_config, experiment_data
from kdjax.sweep import run_sweep


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_experiment_args(p)
  p.add_argument("--methods", default="supervised,hinton,dkd,dist,sp", help="comma-separated method names")
  p.add_argument("--temperatures", default="1,4,16", help="temperatures for the logit methods")
  p.add_argument("--max-parallel", type=int, help="at most this many students at once (default: a whole group)")
  p.set_defaults(seeds="0,1,2,3,4")
  args = p.parse_args(argv)
  cfg = experiment_config(args, "compare_variants")
  methods = args.methods.split(",")
  data = experiment_data(cfg, args.subset)
  grid = [f"method={args.methods}", f"temperature={args.temperatures}", f"seed={','.join(map(str, cfg.seeds))}"]
  try:
    result = run_sweep(cfg, grid, out_dir=f"{args.workdir}/compare_variants", data=data, subset=args.subset,
                       max_parallel=args.max_parallel, baseline="method=supervised" if "supervised" in methods else None)
  except ValueError as e:
    raise SystemExit(f"compare_variants: {e}") from None
  print((result.out_dir / "report.md").read_text())
  print(f"{result.trained} runs trained, {result.skipped} found finished, {result.wall_s:.0f} s")


if __name__ == "__main__":
  main()
