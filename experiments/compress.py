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

The same stages through qwix (Google's JAX quantization library, ``kdjax.compress.qwix_*``):

- ``pruned, int8 (qwix)``: the pruned student quantized by qwix's post-training quantization with
  kdjax's scale (``max|W|/127``: the same int8 values as ``pruned, int8``) and run as qwix's int8
  model; ``pruned, int8 (qwix scale)``: with qwix's own scale (``max|W|/127.5``, values in [-128, 127]);
- ``pruned, int8-aware (qwix)``: distilled with the same pruning while qwix's quantized training
  rounds every kernel to int8 in the forward pass (the student registered as a qwix model), then
  stored by qwix's post-training quantization; ``exported (qwix)``: that int8 model as StableHLO,
  whose file keeps the int8 weights.

Agreement of qwix's int8 values with kdjax's (the pruned student's) is printed and kept in
``results.json``.

Bytes: ``dense`` is every array as stored by the model (int8 kernels count one byte each);
``stored`` keeps each pruned kernel as a bitmask of its nonzeros plus their values
(``kdjax.compress.pack_sparse``); the export rows are the file sizes (the StableHLO and TFLite files
keep dense float32 weights). Results go to ``WORKDIR/compress/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path

import jax
import numpy as np

from kdjax.compress import (dequantize_params, export_model, export_tflite, load_exported, load_tflite, pack_sparse,
                            quantize_params, qwix_fake_quant_model, qwix_int8_weights, qwix_quantize, size_bytes,
                            sparsity_of)
from kdjax.config import check_compression, to_dict
from kdjax.data.augment import padded_batches, to_float
from kdjax.models import apply_model, get_model_spec, model_names, register_model
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


def _register_qwix_student(name: str) -> str:
  """``name``'s model trained as its int8 version computes through qwix's quantized training,
  registered as ``{name}_qwix_int8`` (kdjax's train step builds models from the registry)."""
  base = get_model_spec(name)
  qname = f"{name}_qwix_int8"
  if qname not in model_names():
    @functools.wraps(base.build)  # the same signature: the same options
    def build(shape, num_classes, *, rngs, **options):
      return qwix_fake_quant_model(base.build(shape, num_classes, rngs=rngs, **options), shape)

    register_model(dataclasses.replace(base, name=qname, build=build,
                                       description=f"{base.description}; int8 weights in the forward pass (qwix)"))
  return qname


def _int8_agreement(params, qwix_params, graphdef, qgraphdef, rest, qrest, images) -> dict:
  """How far qwix's int8 model is from kdjax's: int8 values that differ (and by how much), the
  largest scale difference (relative), and the largest logit difference on ``images`` (for a student with
  convolutions this includes them being int8 in kdjax's model and float in qwix's)."""
  ours = jax.tree.leaves(quantize_params(params), is_leaf=lambda x: isinstance(x, dict) and "q" in x)
  theirs = jax.tree.leaves(qwix_int8_weights(qwix_params), is_leaf=lambda x: isinstance(x, dict) and "q" in x)
  # Only the kernels both quantize: qwix leaves convolutions and embeddings float (kdjax quantizes them).
  pairs = [(a, b) for a, b in zip(ours, theirs) if isinstance(a, dict) and isinstance(b, dict)]
  diff = [np.abs(np.asarray(a["q"], np.int32) - np.asarray(b["q"], np.int32)) for a, b in pairs]
  scale = max(float(np.max(np.abs(np.asarray(b["scale"]) / np.asarray(a["scale"]) - 1))) for a, b in pairs)
  x = np.asarray(to_float(images[:1000]))
  kdjax_logits = apply_model(graphdef, dequantize_params(quantize_params(params)), rest, x, train=False)[0]
  qwix_logits = apply_model(qgraphdef, qwix_params, qrest, x, train=False)[0]
  return {"int8_values_differing": int(sum(int(np.count_nonzero(d)) for d in diff)),
          "int8_values": int(sum(d.size for d in diff)), "max_int8_difference": int(max(int(d.max()) for d in diff)),
          "max_scale_relative_difference": scale,
          "max_logit_difference": float(np.max(np.abs(np.asarray(qwix_logits) - np.asarray(kdjax_logits)))),
          "max_logit": float(np.max(np.abs(np.asarray(kdjax_logits))))}


def _installed(package: str) -> bool:
  import importlib.util
  return importlib.util.find_spec(package) is not None


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
  use_qwix = _installed("qwix")
  if use_qwix:
    qwix_aware_cfg = dataclasses.replace(pruned_cfg, model=_register_qwix_student(cfg.distilled.model))
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

  def qwix_row(model, scheme="kdjax"):
    """qwix's int8 model of ``model`` (kdjax's or qwix's own scale) and its row."""
    graphdef, qparams, rest = qwix_quantize(model.graphdef, model.params, model.rest, data.image_shape, scheme=scheme)
    stored = qwix_int8_weights(qparams)
    accuracy = evaluate(make_eval_step(graphdef), qparams, rest, data.test_images, data.test_labels)["accuracy"]
    return (graphdef, qparams, rest), row(model, dequantize_params(stored), size_bytes(pack_sparse(stored)),
                                          accuracy, dense=size_bytes(qparams))

  teacher = train_teacher(data, cfg.teacher, seed=seeds[0], progress=False, resume=True,
                          checkpoint_dir=teacher_checkpoint(out, data, cfg.teacher.model, seeds[0]))
  rows: dict[str, list[dict]] = {"teacher": [row(teacher, teacher.params, size_bytes(teacher.params),
                                                 teacher.test["accuracy"])]}
  print(f"teacher {cfg.teacher.model}: {teacher.test['errors']} test errors", flush=True)
  tflite = _installed("tensorflow")
  agreement = []
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
    if not use_qwix:
      continue
    # The same stages through qwix: post-training int8 (kdjax's scale, then qwix's own), and
    # quantization-aware distillation with qwix's quantized training, stored and exported as qwix's int8 model.
    (graphdef, qparams, rest), r = qwix_row(pruned)
    add("pruned, int8 (qwix)", r)
    agreement.append(_int8_agreement(pruned.params, qparams, pruned.graphdef, graphdef, pruned.rest, rest,
                                     data.test_images))
    print(f"qwix vs kdjax int8, seed {seed}: {agreement[-1]}", flush=True)
    add("pruned, int8 (qwix scale)", qwix_row(pruned, "qwix")[1])
    qwix_aware = distill(data, qwix_aware_cfg, teacher, alpha=cfg.alpha, temperature=cfg.temperature, seed=seed,
                         progress=False)
    (graphdef, qparams, rest), r = qwix_row(qwix_aware)
    add("pruned, int8-aware (qwix)", r)
    add("pruned, int8-aware (qwix) trained", {"accuracy": qwix_aware.test["accuracy"]})
    blob = export_model(graphdef, qparams, rest, data.image_shape)
    (out / f"student_seed{seed}_qwix_int8.stablehlo").write_bytes(blob)
    add("exported (qwix)", row(qwix_aware, dequantize_params(qwix_int8_weights(qparams)), len(blob),
                               _accuracy_of(load_exported(blob), data.test_images, data.test_labels), dense=len(blob)))
    print(f"sparsity reached: {sparsity_of(qwix_aware.params):.4f} (int8-aware, qwix)", flush=True)

  names = {"teacher": f"teacher `{cfg.teacher.model}`, float32",
           "distilled": f"student `{cfg.distilled.model}` distilled, float32",
           "pruned": f"+ pruned to {args.sparsity:g} while distilled",
           "pruned, int8": "+ int8 weights after training",
           "pruned, int8-aware": "pruned + int8-aware distillation, int8",
           "exported": "↳ exported StableHLO, reloaded", "tflite": "↳ TFLite (jax2tf), reloaded",
           "pruned, int8 (qwix)": "+ int8 weights after training, qwix (kdjax's scale max\\|W\\|/127)",
           "pruned, int8 (qwix scale)": "+ int8 weights after training, qwix (its own scale max\\|W\\|/127.5)",
           "pruned, int8-aware (qwix)": "pruned + int8-aware distillation with qwix's quantized training, qwix int8",
           "exported (qwix)": "↳ exported StableHLO of qwix's int8 model, reloaded"}
  teacher_acc = 100 * teacher.test["accuracy"]
  lines = [f"{data.name}: {len(data.train_labels)} train / {len(data.test_labels)} test images; students "
           f"{cfg.distilled.epochs} epochs, KD alpha={cfg.alpha:g}, T={cfg.temperature:g}; pruning epochs "
           f"{args.prune_start}-{args.prune_end}; seeds {','.join(map(str, seeds))}; {environment()['device']}", "",
           "| stage | nonzero / parameters | bytes (dense) | bytes (stored) | test accuracy (%) | vs teacher (mean, points) |",
           "|---|---|---|---|---|---|"]
  for name, rs in rows.items():
    if name not in names:  # kept in results.json only
      continue
    r = rs[0]
    lines.append(f"| {names[name]} | {r['nonzero']:,} / {r['params']:,} | {r['dense_bytes']:,} | "
                 f"{r['stored_bytes']:,} | {mean_pm([100 * x['accuracy'] for x in rs], '.2f')} | "
                 f"{100 * np.mean([x['accuracy'] for x in rs]) - teacher_acc:+.2f} |")
  lines += ["", "sizes of the first seed; accuracy mean ± sample std over seeds; "
            f"total wall time {time.perf_counter() - t0:.0f} s"
            + ("" if tflite else "; no TFLite row: TensorFlow is not installed (pip install 'kdjax[tflite]')")
            + ("" if use_qwix else "; no qwix rows: qwix is not installed (pip install qwix)")]
  if use_qwix:
    lines += ["", "qwix's int8 values against kdjax's (the pruned students, kdjax's scale): "
              + "; ".join(f"seed {s}: {a['int8_values_differing']} of {a['int8_values']:,} differ (by at most "
                          f"{a['max_int8_difference']}), scales within {a['max_scale_relative_difference']:.1e} "
                          f"(relative), logits within {a['max_logit_difference']:.1e} (largest {a['max_logit']:.1f})"
                          for s, a in zip(seeds, agreement)),
              "", "the qwix int8-aware students' test accuracy as their runs report it (qwix's quantized training's "
              "forward pass): " + mean_pm([100 * x["accuracy"] for x in rows["pruned, int8-aware (qwix) trained"]],
                                          ".2f") + " %"]
  write_results(out, "\n".join(lines), {
      "args": vars(args), "config": to_dict(cfg), "environment": environment(), "rows": rows,
      "qwix_agreement": dict(zip(map(str, seeds), agreement))})


if __name__ == "__main__":
  main()
