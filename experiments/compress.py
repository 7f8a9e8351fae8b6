"""Distil, prune, quantize, export: how small does the student get, and what does each stage cost?

    python experiments/compress.py                       # the built-in MNIST subset, a few minutes on a CPU
    python experiments/compress.py --sparsity 0.95 --seeds 0,1,2
    pip install 'kdjax[tflite]' && python experiments/compress.py    # adds the TFLite row

Rows (the preset's teacher and distilled student; Hinton KD with the preset's α and T):

- ``teacher``: trained on the labels (checkpointed under ``WORKDIR/compress/teachers/``, restored on
  a second run);
- ``distilled``: the student, float32;
- ``pruned``: distilled while magnitude pruning raises its sparsity to ``--sparsity`` along Zhu &
  Gupta's cubic schedule, from epoch ``--prune-start`` to ``--prune-end`` (global threshold);
- ``pruned, int8``: that student's weights quantized to int8 after training (per output channel);
- ``pruned, int8-aware``: distilled with the same pruning *and* int8 fake quantization in its
  forward pass (straight-through gradients), then stored as int8: quantization-aware distillation;
- ``exported``: the int8-aware student as serialized StableHLO (``jax.export``), reloaded from the
  bytes and run on the test set; ``tflite``: the same through jax2tf and TFLite, when TensorFlow
  is installed.

Bytes: ``dense`` is every array as stored by the model (int8 kernels count one byte each);
``stored`` keeps each pruned kernel as a bitmask of its nonzeros plus their values
(``kdjax.compress.pack_sparse``); the export rows are the file sizes (the StableHLO and TFLite files
keep dense float32 weights). Results go to ``WORKDIR/compress/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from kdjax.compress import (dequantize_params, export_model, export_tflite, load_exported, load_tflite, pack_sparse,
                            quantize_params, size_bytes, sparsity_of)
from kdjax.config import check_compression, to_dict
from kdjax.data.augment import padded_batches, to_float
from kdjax.study import (add_experiment_args, environment, experiment_config, experiment_data, mean_pm,
                         teacher_checkpoint, write_results)
from kdjax.train import distill, evaluate, make_eval_step, train_teacher


def _count(params) -> tuple[int, int]:
  """(nonzero, total) parameters."""
  leaves = [np.asarray(a) for a in jax.tree.leaves(params)]
  return sum(int(np.count_nonzero(a)) for a in leaves), sum(a.size for a in leaves)


def _accuracy_of(run, images, labels) -> float:
  """Test accuracy of an inference function ``x -> logits`` outside kdjax (an export reloaded)."""
  correct = 0
  for xb, yb, mask in padded_batches(images, labels, 500):
    predicted = np.asarray(run(np.asarray(to_float(xb)))).argmax(-1)
    correct += int(((predicted == yb) & mask).sum())
  return correct / len(labels)


def _tensorflow_installed() -> bool:
  import importlib.util
  return importlib.util.find_spec("tensorflow") is not None


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_experiment_args(p)
  p.add_argument("--sparsity", type=float, default=0.9, help="the pruned students' final sparsity")
  p.add_argument("--prune-start", type=int, default=1, help="the epoch pruning starts")
  p.add_argument("--prune-end", type=int, default=6, help="the epoch the final sparsity is reached")
  args = p.parse_args(argv)
  cfg = experiment_config(args, "compress")
  pruned_cfg = dataclasses.replace(cfg.distilled, prune_sparsity=args.sparsity, prune_start=args.prune_start,
                                   prune_end=args.prune_end)
  aware_cfg = dataclasses.replace(pruned_cfg, fake_quant=True)
  try:  # the pruning schedule is checked before any training
    check_compression(pruned_cfg, "compress")
  except ValueError as e:
    raise SystemExit(str(e)) from None
  data = experiment_data(cfg, args.subset, inputs="image", prog="compress")
  seeds = list(cfg.seeds)
  out = Path(args.workdir) / "compress"
  out.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  print(data.summary(), flush=True)

  def test_accuracy(model, params):
    return evaluate(make_eval_step(model.graphdef), params, model.rest, data.test_images, data.test_labels)["accuracy"]

  def row(model, params, stored, accuracy, dense=None):
    nonzero, total = _count(params)
    return {"nonzero": nonzero, "params": total, "dense_bytes": size_bytes(params) if dense is None else dense,
            "stored_bytes": stored, "accuracy": accuracy}

  teacher = train_teacher(data, cfg.teacher, seed=seeds[0], progress=False, resume=True,
                          checkpoint_dir=teacher_checkpoint(out, data, cfg.teacher.model, seeds[0]))
  rows: dict[str, list[dict]] = {"teacher": [row(teacher, teacher.params, size_bytes(teacher.params),
                                                 teacher.test["accuracy"])]}
  print(f"teacher {cfg.teacher.model}: {teacher.test['errors']} test errors", flush=True)
  tflite = _tensorflow_installed()
  for seed in seeds:
    def add(name, r):
      rows.setdefault(name, []).append(r)
      print(f"{name:20s} seed {seed}: {r}", flush=True)

    kd = distill(data, cfg.distilled, teacher, alpha=cfg.alpha, temperature=cfg.temperature, seed=seed,
                 progress=False)
    add("distilled", row(kd, kd.params, size_bytes(kd.params), kd.test["accuracy"]))
    pruned = distill(data, pruned_cfg, teacher, alpha=cfg.alpha, temperature=cfg.temperature, seed=seed,
                     progress=False)
    add("pruned", row(pruned, pruned.params, size_bytes(pack_sparse(pruned.params)), pruned.test["accuracy"]))
    q = quantize_params(pruned.params)
    add("pruned, int8", row(pruned, dequantize_params(q), size_bytes(pack_sparse(q)),
                            test_accuracy(pruned, dequantize_params(q)), dense=size_bytes(q)))
    aware = distill(data, aware_cfg, teacher, alpha=cfg.alpha, temperature=cfg.temperature, seed=seed,
                    progress=False)
    q = quantize_params(aware.params)
    int8 = dequantize_params(q)
    add("pruned, int8-aware", row(aware, int8, size_bytes(pack_sparse(q)), test_accuracy(aware, int8),
                                  dense=size_bytes(q)))
    blob = export_model(aware.graphdef, int8, aware.rest, data.image_shape)
    (out / f"student_seed{seed}.stablehlo").write_bytes(blob)
    add("exported", row(aware, int8, len(blob), _accuracy_of(load_exported(blob), data.test_images, data.test_labels),
                        dense=len(blob)))
    if tflite:
      blob = export_tflite(aware.graphdef, int8, aware.rest, data.image_shape)
      (out / f"student_seed{seed}.tflite").write_bytes(blob)
      add("tflite", row(aware, int8, len(blob), _accuracy_of(load_tflite(blob), data.test_images, data.test_labels),
                        dense=len(blob)))
    print(f"sparsity reached: {sparsity_of(pruned.params):.4f} (pruned), {sparsity_of(aware.params):.4f} "
          "(int8-aware)", flush=True)

  names = {"teacher": f"teacher `{cfg.teacher.model}`, float32",
           "distilled": f"student `{cfg.distilled.model}` distilled, float32",
           "pruned": f"+ pruned to {args.sparsity:g} while distilled",
           "pruned, int8": "+ int8 weights after training",
           "pruned, int8-aware": "pruned + int8-aware distillation, int8",
           "exported": "↳ exported StableHLO, reloaded", "tflite": "↳ TFLite (jax2tf), reloaded"}
  teacher_acc = 100 * teacher.test["accuracy"]
  lines = [f"{data.name}: {len(data.train_labels)} train / {len(data.test_labels)} test images; students "
           f"{cfg.distilled.epochs} epochs, KD alpha={cfg.alpha:g}, T={cfg.temperature:g}; pruning epochs "
           f"{args.prune_start}-{args.prune_end}; seeds {','.join(map(str, seeds))}; {environment()['device']}", "",
           "| stage | nonzero / parameters | bytes (dense) | bytes (stored) | test accuracy (%) | vs teacher (mean, points) |",
           "|---|---|---|---|---|---|"]
  for name, rs in rows.items():
    r = rs[0]
    lines.append(f"| {names[name]} | {r['nonzero']:,} / {r['params']:,} | {r['dense_bytes']:,} | "
                 f"{r['stored_bytes']:,} | {mean_pm([100 * x['accuracy'] for x in rs], '.2f')} | "
                 f"{100 * np.mean([x['accuracy'] for x in rs]) - teacher_acc:+.2f} |")
  lines += ["", "sizes of the first seed; accuracy mean ± sample std over seeds; "
            f"total wall time {time.perf_counter() - t0:.0f} s"
            + ("" if tflite else "; no TFLite row: TensorFlow is not installed (pip install 'kdjax[tflite]')")]
  write_results(out, "\n".join(lines), {
      "args": vars(args), "config": to_dict(cfg), "environment": environment(), "rows": rows})


if __name__ == "__main__":
  main()
