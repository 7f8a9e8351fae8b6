"""K students trained at once (a sweep's vmapped group) against one student at a time.

    python benchmarks/sweep_throughput.py                          # MNIST MLPs, batch 64, K = 1, 2, 4, 8
    python benchmarks/sweep_throughput.py --preset cifar100_resnet32x4_resnet8x4 --ks 1,4,8 --batch 64

A sweep's group of K runs (Hinton KD at the preset's T and α, seeds 0..K-1) is
one jitted step (:func:`kdjax.train.cohort.make_cohort_step`) that runs the teacher once and the K
students under ``jax.vmap``. Running the same K runs one after another goes at one student's
rate, so the figure of merit is the group's student-images per second over one student's
(``speedup``; K sequential runs have speedup 1). The target (../shared/PERFORMANCE.md) is at least
0.7·K at batch 64. Batches are random data already on the device, so only the step is timed:
median of ``--windows`` windows of ``--steps`` steps after warm-up, each ended by
``block_until_ready``. Prints a Markdown table and one JSON line per K.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from kdjax.models import create_model, feature_shapes, split_model
from kdjax.presets import PRESETS
from kdjax.study import environment
from kdjax.sweep import expand, parse_grid
from kdjax.sweep.train import group_hparams, group_step, init_group
from kdjax.train import make_optimizer


def bench(step, state, teacher_vars, batch, hp, steps: int, windows: int) -> tuple[float, list[float]]:
  t0 = time.perf_counter()
  state, m = step(state, teacher_vars, batch, hp)
  jax.block_until_ready((state, m))
  compile_s = time.perf_counter() - t0
  for _ in range(3):
    state, m = step(state, teacher_vars, batch, hp)
  jax.block_until_ready(state)
  times = []
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, teacher_vars, batch, hp)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  return compile_s, times


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="hinton_mnist", choices=sorted(PRESETS), help="teacher and student models")
  p.add_argument("--ks", default="1,2,4,8", help="group sizes to time")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--windows", type=int, default=3)
  p.add_argument("--classes", type=int, help="number of classes (default: 10, or 100 for a CIFAR-100 preset)")
  args = p.parse_args()
  base = PRESETS[args.preset]
  classes = args.classes or (100 if "cifar100" in base.dataset else 10)
  shape = (28, 28, 1) if base.distilled.model.startswith("mlp") else (32, 32, 3)
  key = jax.random.key(0)
  batch = {"image": jax.random.randint(key, (args.batch, *shape), 0, 256).astype(jnp.uint8),
           "label": jax.random.randint(key, (args.batch,), 0, classes),
           "index": jnp.arange(args.batch)}
  t_graphdef, t_params, t_rest = split_model(create_model(base.teacher.model, num_classes=classes, input_shape=shape))
  teacher_vars = {"params": t_params, "rest": t_rest}
  t_shapes = feature_shapes(t_graphdef, t_params, t_rest, shape)
  tx = make_optimizer("sgd", learning_rate=1.0, total_steps=10_000, weight_decay=base.distilled.weight_decay)
  env = environment()
  print(f"{base.teacher.model} -> {base.distilled.model}, Hinton KD, batch {args.batch}, device {env['device']}, "
        f"jax {env['jax']}, {args.windows} windows of {args.steps} steps\n")
  print("| K students | compile s | steps/s | student-images/s (median) | speedup over one student | "
        "target 0.7·K |\n|---|---|---|---|---|---|")
  one_rate, records = None, []
  for k in [int(x) for x in args.ks.split(",")]:
    runs = expand(parse_grid(["seed=" + ",".join(str(s) for s in range(k))], base), base)  # K seeds of Hinton KD
    graphdef, state = init_group(runs, tx, classes, shape, t_shapes, 1024)
    step = group_step(graphdef, tx, runs, t_graphdef, jitter_pixels=base.distilled.jitter, hflip=base.distilled.hflip)
    compile_s, times = bench(step, state, teacher_vars, batch, group_hparams(runs), args.steps, args.windows)
    rate = len(runs) * args.batch * args.steps / statistics.median(times)
    one_rate = rate if len(runs) == 1 else one_rate
    speedup = rate / one_rate if one_rate else float("nan")
    print(f"| {len(runs)} | {compile_s:.2f} | {args.steps / statistics.median(times):,.1f} | {rate:,.0f} | "
          f"{speedup:.2f} | {0.7 * len(runs):.1f} |", flush=True)
    records.append(json.dumps({"k": len(runs), "batch": args.batch, "teacher": base.teacher.model,
                               "student": base.distilled.model, "compile_s": round(compile_s, 3),
                               "student_images_per_s": round(rate), "speedup": round(speedup, 3), **env}))
  print("\n" + "\n".join(records))


if __name__ == "__main__":
  main()
