"""Throughput of kdjax's language-model step (kdjax.train.lm.make_lm_step), on whatever JAX sees.

    python benchmarks/lm_step.py [--seq-len 64] [--batch 32] [--json PATH]

Rows: the student alone (lm_sft), word-level KD from a live teacher (full logits and top-16), and the
same with K = 3 students vmapped (a study's seeds), for the lm_stdlib study's pair (lm_small teacher,
lm_tiny student); with --large also lm_base -> lm_small (for a GPU). Tokens/s count student tokens
(K·B·L per step): the median of timed windows after warm-up (kdjax.bench.bench_lm). Prints a Markdown
table and, with --json, appends one JSON line per row.
"""

from __future__ import annotations

import argparse

from kdjax.bench import bench_lm, format_lm_table, write_jsonl


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--seq-len", type=int, default=64)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--windows", type=int, default=3)
  p.add_argument("--precision", default="fp32")
  p.add_argument("--large", action="store_true", help="also lm_base -> lm_small")
  p.add_argument("--json", metavar="PATH")
  args = p.parse_args()
  pairs = [("lm_small", "lm_tiny")] + ([("lm_base", "lm_small")] if args.large else [])
  rows = []
  for teacher, student in pairs:
    for method, topk, k in (("lm_sft", None, 1), ("lm_kd", None, 1), ("lm_kd", 16, 1), ("lm_kd", None, 3)):
      rows.append(bench_lm(teacher, student, method=method, topk=topk, students=k, batch=args.batch,
                           seq_len=args.seq_len, steps=args.steps, windows=args.windows, precision=args.precision))
      print(f"{teacher} -> {student} {method} top-k {topk} K={k}: {rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
  print(format_lm_table(rows))
  print(f"device: {rows[0]['device']}, jax {rows[0]['jax']}, {rows[0]['date']}")
  if args.json:
    write_jsonl(rows, args.json)


if __name__ == "__main__":
  main()
