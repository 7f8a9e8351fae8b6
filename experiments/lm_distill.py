"""Language-model distillation recipes side by side: a byte-level decoder teacher (lm_small) distilled
into a smaller one (lm_tiny) on the Python standard library's source, every recipe against the student
alone over paired seeds (kdjax.lm_study), then the validation perplexity per epoch of each recipe.

    python experiments/lm_distill.py                              # the lm_stdlib study, ~40 min on 2 CPU cores
    python experiments/lm_distill.py --config lm_tiny             # a smoke run in about a minute
    python experiments/lm_distill.py --set recipes=sft,word_kd,gkd --seeds 0,1,2,3,4

Writes WORKDIR/NAME/{results.json,table.md,metrics.jsonl} (kdjax.lm_study.run_lm_study) and
perplexity.png beside them (matplotlib, if installed): each recipe's mean validation perplexity over
its healthy seeds after each epoch, the teacher's as a line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from kdjax.config import override
from kdjax.lm_study import LM_PRESETS, run_lm_study, validate_lm_study


def plot(out: Path, payload: dict) -> Path | None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  healthy = {(recipe, r["seed"]) for recipe, rs in payload["runs"].items() for r in rs if r["health"]["ok"]}
  curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
  for line in (out / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if r["run"] != "teacher" and (r["run"], r["seed"]) in healthy:
      curves[r["run"]][r["epoch"]].append(r["perplexity"])
  fig, ax = plt.subplots(figsize=(6, 4))
  for recipe, by_epoch in curves.items():
    epochs = sorted(by_epoch)
    ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], marker="o", label=recipe)
  ax.axhline(payload["teacher"]["final"]["perplexity"], color="k", ls="--", label="teacher")
  ax.set_xticks(sorted({e for by_epoch in curves.values() for e in by_epoch}))
  ax.set_xlabel("epoch")
  ax.set_ylabel("validation perplexity (bytes)")
  ax.set_title(f"{payload['config']['student']['model']} from {payload['config']['teacher']['model']}")
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = out / "perplexity.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="lm_stdlib", choices=sorted(LM_PRESETS))
  p.add_argument("--seeds", help="comma-separated seeds")
  p.add_argument("--workdir")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  extra = list(args.overrides) + ([f"seeds={args.seeds}"] if args.seeds else []) + (
      [f"workdir={args.workdir}"] if args.workdir else [])
  try:
    cfg = override(LM_PRESETS[args.config], extra)
    validate_lm_study(cfg)
  except ValueError as e:
    print(f"lm_distill: error: {e}", file=sys.stderr)
    return 2
  payload = run_lm_study(cfg, progress=not args.no_progress)
  out = Path(cfg.workdir) / cfg.name
  print(payload["table"])
  png = plot(out, payload)
  print(f"\nwritten: {out}/results.json, table.md, metrics.jsonl" + (f", {png.name}" if png else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
