"""Throughput of kdjax's jitted steps for the Hinton MNIST MLP pair, on whatever JAX sees.

    python benchmarks/mlp_step.py [--batch 128] [--steps 50] [--windows 3]

For each step kind (teacher training, student training, distillation) it
reports the compile time and the steady-state images per second: the median
of ``--windows`` timed windows of ``--steps`` steps after warm-up, each ended by
``block_until_ready``. The batch is random data already on the device, so only
the step is timed. Prints a Markdown table and one JSON line per step kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from kdjax.methods import hinton_kd, supervised
from kdjax.models import create_model, split_model
from kdjax.study import environment
from kdjax.train import init_train_state, make_train_step


def bench(step, state, teacher_vars, batch, steps: int, windows: int) -> tuple[float, list[float]]:
  t0 = time.perf_counter()
  state, m = step(state, teacher_vars, batch)
  jax.block_until_ready((state, m))
  compile_s = time.perf_counter() - t0
  for _ in range(5):
    state, m = step(state, teacher_vars, batch)
  jax.block_until_ready(state)
  rates = []
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, teacher_vars, batch)
    jax.block_until_ready(state)
    rates.append(steps * batch["label"].shape[0] / (time.perf_counter() - t0))
  return compile_s, rates


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--windows", type=int, default=3)
  args = p.parse_args()
  key = jax.random.key(0)
  batch = {"image": jax.random.randint(key, (args.batch, 28, 28, 1), 0, 256).astype(jnp.uint8),
           "label": jax.random.randint(key, (args.batch,), 0, 10)}

  def student_state(name, **opts):
    graphdef, params, rest = split_model(create_model(name, num_classes=10, input_shape=(28, 28, 1), **opts))
    tx = optax.sgd(0.05, momentum=0.9, nesterov=True)
    return graphdef, tx, init_train_state(params, rest, tx, jax.random.key(1))  # a fresh key: it is donated

  t_graphdef, _, t_state = student_state("mlp1200")
  teacher_vars = {"params": t_state.params, "rest": t_state.rest}
  cases = {}
  g, tx, s = student_state("mlp1200")
  cases["teacher training (mlp1200, dropout, jitter 2)"] = (make_train_step(g, tx, supervised(), jitter_pixels=2), s, None)
  g, tx, s = student_state("mlp800")
  cases["student training (mlp800)"] = (make_train_step(g, tx, supervised()), s, None)
  g, tx, s = student_state("mlp800")
  cases["distillation (mlp1200 -> mlp800, T=20, jitter 2)"] = (
      make_train_step(g, tx, hinton_kd(alpha=0.5, temperature=20.0), teacher_graphdef=t_graphdef, jitter_pixels=2),
      s, teacher_vars)
  env = environment()
  print(f"device {env['device']}, jax {env['jax']}, batch {args.batch}, {args.windows} windows of {args.steps} steps\n")
  print("| step | compile s | images/s (median) | min | max |\n|---|---|---|---|---|")
  records = []
  for name, (step, state, tv) in cases.items():
    compile_s, rates = bench(step, state, tv, batch, args.steps, args.windows)
    print(f"| {name} | {compile_s:.2f} | {statistics.median(rates):,.0f} | {min(rates):,.0f} | {max(rates):,.0f} |")
    records.append(json.dumps({
        "step": name, "batch": args.batch, "compile_s": round(compile_s, 3),
        "images_per_s": round(statistics.median(rates)), "windows": [round(r) for r in rates], **env}))
  print("\n" + "\n".join(records))


if __name__ == "__main__":
  main()
