"""The KD train step of ../shared/PERFORMANCE.md (resnet32x4 -> resnet8x4, CIFAR-100 shapes), on whatever JAX sees.

    python benchmarks/kd_step.py [--json PATH] [--steps 60] [--windows 3] [--time-budget SECONDS]
    python benchmarks/kd_step.py --teacher mlp800 --student mlp100 --batches 8,32 --scan 4 --steps 4 \
        --windows 2 --epoch-size 256   # a CPU smoke run

Rows (``kdjax.bench.bench_kd``; B = the smallest and largest of ``--batches``, S = ``--scan``):

- the train step alone at every batch, bf16;
- bf16 at batch B_min with S steps per call (one ``lax.scan``, the teacher hoisted out of it);
- cached teacher outputs (offline KD), bf16: batch B_min with S, batch B_max with 1;
- a whole epoch (``--epoch-size`` random images, default 50,000 as CIFAR-100's training set) through
  ``kdjax.train.fit`` with the data resident on the device and augmentation (crop with padding 4,
  flips) on the device, bf16: batch B_min with S, batch B_max with 1;
- the train step alone at every batch, fp32 (last: the targets are bf16 ones).

Each row: compile time, images per second (median of ``--windows`` windows of ``--steps``
steps after warm-up, random data already on the device), XLA's FLOPs per image, TFLOP/s, MFU
against the device's spec-sheet peak, peak device memory. The epoch and cached rows also give
their rate over the step-only row of the same batch, precision and S (targets: at least 0.9
and 2.5). Prints the Markdown table at the end; each row's JSON line is written (``--json``,
appended) or printed as soon as it is measured, so a run cut short keeps what it measured.
``--time-budget`` skips the rows not yet started once that many seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kdjax.bench import add_ratios, bench_kd, check_config, format_table, write_jsonl


def rows(batches: list[int], scan: int) -> list[dict]:
  lo, hi = min(batches), max(batches)
  # The targets' rows first (bf16), fp32 last: on a short device lease the budget may end the run early.
  out = [dict(mode="step", batch=b, precision="bf16", steps_per_call=1) for b in batches]
  if scan > 1:
    out.append(dict(mode="step", batch=lo, precision="bf16", steps_per_call=scan))
  out += [dict(mode="cached", batch=lo, precision="bf16", steps_per_call=scan),
          dict(mode="cached", batch=hi, precision="bf16", steps_per_call=1),
          dict(mode="epoch", batch=lo, precision="bf16", steps_per_call=scan),
          dict(mode="epoch", batch=hi, precision="bf16", steps_per_call=1)]
  out += [dict(mode="step", batch=b, precision="fp32", steps_per_call=1) for b in batches]
  unique = []
  for r in out:  # e.g. a single batch size makes some rows coincide
    if r not in unique:
      unique.append(r)
  return unique


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--teacher", default="resnet32x4")
  p.add_argument("--student", default="resnet8x4")
  p.add_argument("--batches", default="64,256,1024", help="batch sizes of the step-only rows")
  p.add_argument("--scan", type=int, default=16, help="steps per call of the scanned rows (S)")
  p.add_argument("--steps", type=int, default=60, help="steps per timed window")
  p.add_argument("--windows", type=int, default=3)
  p.add_argument("--epoch-size", type=int, default=50_000,
                 help="training images per epoch of the epoch rows (default: 50000, CIFAR-100's training set)")
  p.add_argument("--classes", type=int, default=100)
  p.add_argument("--input-shape", help="H,W,C (default: the student's)")
  p.add_argument("--backend", help="cpu, gpu or tpu (default: JAX's default)")
  p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s (default: the spec-sheet table)")
  p.add_argument("--json", help="append one JSON line per row here (default: print them)")
  p.add_argument("--time-budget", type=float, help="skip the rows not started after this many seconds")
  args = p.parse_args()
  common = dict(num_classes=args.classes, steps=args.steps, windows=args.windows, backend=args.backend,
                peak_tflops=args.peak_tflops, epoch_size=args.epoch_size,
                input_shape=None if not args.input_shape else tuple(int(d) for d in args.input_shape.split(",")))
  todo = rows([int(b) for b in args.batches.split(",")], args.scan)
  try:
    for r in todo:
      check_config(args.teacher, args.student, **common, **r)
  except ValueError as e:
    print(f"kd_step.py: error: {e}", file=sys.stderr)
    return 2
  t0 = time.perf_counter()
  reports = []
  for i, r in enumerate(todo, 1):
    if args.time_budget is not None and time.perf_counter() - t0 > args.time_budget:
      print(f"time budget of {args.time_budget:.0f} s spent: skipping {len(todo) - i + 1} rows", file=sys.stderr)
      break
    rep = bench_kd(args.teacher, args.student, **common, **r)
    reports.append(rep)
    if args.json:
      write_jsonl([rep], args.json)
    else:
      print(json.dumps(rep), flush=True)
    print(f"[{i}/{len(todo)}] {r}: {rep['images_per_s']:,.0f} images/s, compile {rep['compile_s']:.1f} s, "
          f"{time.perf_counter() - t0:.0f} s so far", file=sys.stderr, flush=True)
  add_ratios(reports)
  print("\n" + format_table(reports))
  return 0


if __name__ == "__main__":
  sys.exit(main())
