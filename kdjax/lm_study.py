"""Language-model distillation studies: one teacher, every recipe against the student alone, over
seeds, with paired confidence intervals and health verdicts.

    kdjax distill --config lm_stdlib

A study packs a corpus (by default the Python standard library's own source, which every Python
installation carries; :mod:`kdjax.data.corpus`) into rows of ``seq_len`` bytes, trains the teacher
(next-token cross-entropy), then trains each recipe's students, its seeds stacked and vmapped as one
program (:func:`kdjax.train.lm.make_lm_step` with ``cohort=True``), all on the same batches in the
same order (:func:`kdjax.train.lm.epoch_order`) from the same initial weights per seed, so each
recipe is compared with the student alone seed by seed (:func:`kdjax.stats.paired_difference`).

Recipes (:data:`RECIPES`): ``sft`` (the student alone), ``word_kd`` (forward KL per token),
``reverse_kd`` (reverse KL), ``jsd_kd`` (generalized JSD), ``tv_kd`` (total variation), ``topk_kd`` (forward KL against the teacher's top-k cached on disk),
``seq_kd`` (cross-entropy on the teacher's samples), ``gkd`` (on-policy, generalized JSD, λ = 0.5),
``minilm`` and ``tinybert`` (feature matching plus word-level KD).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import health as H
from kdjax.config import TrainConfig, run_optimizer, to_dict
from kdjax.data.corpus import (
  ByteTokenizer,
  lm_dataset,
  stdlib_corpus,
  text_files_corpus,
  tfds_corpus,
)
from kdjax.data.topk_cache import TopkCacheWriter, open_topk_cache, topk_cache_exists
from kdjax.health import HealthThresholds
from kdjax.identity import array_digest, digest
from kdjax.losses.token import teacher_topk
from kdjax.methods import init_method, make_method, method_identity
from kdjax.models.decoder import generate, lm_apply
from kdjax.models.functional import feature_shapes, split_model
from kdjax.models.registry import create_model, get_model_spec, model_names
from kdjax.pretrained.gpt2 import load_gpt2
from kdjax.stats import mean_std, paired_difference
from kdjax.tracking import (
  require_tensorboardx,
  run_name,
  run_writers,
  write_health,
  write_record,
)
from kdjax.train.checkpoint import load_pytree, save_pytree
from kdjax.train.cohort import stack_states
from kdjax.train.lm import (
  BATCH_KEYS,
  check_lm_batch,
  check_lm_teacher,
  evaluate_lm,
  fit_lm,
  make_lm_eval,
  make_lm_step,
  method_temperature,
  sampled_rows,
)
from kdjax.train.state import init_train_state
from kdjax.workdir import check_writable, exclusive, write_atomic

# name -> (method, its hyperparameters, the data it trains on, where its teacher comes from)
RECIPES: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "sft": ("lm_sft", {}, "corpus", "none"),
    "word_kd": ("lm_kd", {"divergence": "forward_kl"}, "corpus", "live"),
    "reverse_kd": ("lm_kd", {"divergence": "reverse_kl"}, "corpus", "live"),
    "jsd_kd": ("lm_kd", {"divergence": "jsd"}, "corpus", "live"),
    "tv_kd": ("lm_kd", {"divergence": "tv"}, "corpus", "live"),
    "topk_kd": ("lm_kd", {"divergence": "forward_kl"}, "corpus", "cache"),
    "seq_kd": ("lm_sft", {}, "teacher_samples", "none"),
    "gkd": ("lm_gkd", {"student_fraction": 0.5}, "corpus", "live"),
    "minilm": ("lm_minilm", {}, "corpus", "live"),
    "tinybert": ("lm_tinybert", {}, "corpus", "live"),
}
BASELINE = "sft"
CACHE_TEMPERATURE = 1.0  # the top-k cache holds log softmax(t / 1): recipes reading it take their divergence at T = 1


@dataclasses.dataclass(frozen=True)
class LMStudyConfig:
  """A language-model distillation study."""

  name: str
  corpus: str = "stdlib"  # "stdlib" (Python's own library source), "files:GLOB" or "tfds:NAME"
  corpus_bytes: int | None = None  # read at most this many bytes of the corpus; None = all
  download: bool = False  # let TFDS download a missing corpus
  seq_len: int = 64
  valid_fraction: float = 0.1  # of the documents, held out for perplexity and accuracy
  max_rows: int | None = 8000  # keep at most this many packed rows of each split (the first); None = all
  teacher: TrainConfig = TrainConfig(model="lm_small", epochs=4, batch_size=32, optimizer="adam",
                                     learning_rate=3e-3, warmup_epochs=0.1, clip_norm=1.0)
  student: TrainConfig = TrainConfig(model="lm_tiny", epochs=2, batch_size=32, optimizer="adam",
                                     learning_rate=3e-3, warmup_epochs=0.1, clip_norm=1.0)
  recipes: tuple[str, ...] = ("sft", "word_kd", "reverse_kd", "jsd_kd", "tv_kd", "topk_kd", "seq_kd", "gkd", "minilm",
                              "tinybert")
  seeds: tuple[int, ...] = (0, 1, 2)
  data_seed: int = 0
  teacher_seed: int = 0
  topk: int = 16  # the cached teacher's k (topk_kd)
  prompt_len: int = 16  # GKD's and sequence-level KD's prompts: each row's first prompt_len tokens
  eval_batch_size: int = 64
  workdir: str = "runs"
  health: HealthThresholds = HealthThresholds()


LM_STDLIB = LMStudyConfig(name="lm_stdlib")
LM_TINY = LMStudyConfig(
    name="lm_tiny", corpus_bytes=200_000, seq_len=32, valid_fraction=0.2, max_rows=128,
    teacher=dataclasses.replace(LM_STDLIB.teacher, model="lm_tiny", epochs=1, batch_size=16),
    student=dataclasses.replace(LM_STDLIB.student, epochs=1, batch_size=16),
    recipes=("sft", "word_kd", "topk_kd", "seq_kd", "gkd"), seeds=(0, 1), topk=4, prompt_len=8)
LM_PRESETS = {c.name: c for c in (LM_STDLIB, LM_TINY)}


def validate_lm_study(cfg: LMStudyConfig) -> None:
  """Fails before any training on a config that cannot run."""
  unknown = [r for r in cfg.recipes if r not in RECIPES]
  if unknown or not cfg.recipes:
    raise ValueError(f"unknown recipe(s) {unknown or '(none given)'}; recipes: {', '.join(RECIPES)}")
  if len(set(cfg.recipes)) != len(cfg.recipes):
    raise ValueError(f"recipes repeat a name: {cfg.recipes}")
  if BASELINE not in cfg.recipes:
    raise ValueError(f"recipes must include {BASELINE!r}, the student alone every recipe is compared with")
  if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
    raise ValueError(f"seeds must be distinct and at least one, got {cfg.seeds}")
  if cfg.seq_len < 2:
    raise ValueError(f"seq_len must be >= 2, got {cfg.seq_len}")
  if not 1 <= cfg.prompt_len < cfg.seq_len:
    raise ValueError(f"prompt_len must lie in 1..seq_len-1 ({cfg.seq_len - 1}), got {cfg.prompt_len}")
  if cfg.topk < 1:
    raise ValueError(f"topk must be >= 1, got {cfg.topk}")
  for role in ("teacher", "student"):
    run: TrainConfig = getattr(cfg, role)
    get_model_spec(run.model)  # an unknown model is an error listing the known ones
    if not run.model.startswith("lm_"):
      raise ValueError(f"{role}.model {run.model!r} is not a language model; use one of: {', '.join(_lm_models())}")
    for field in ("epochs", "batch_size"):
      if getattr(run, field) < 1:
        raise ValueError(f"{role}.{field} must be >= 1, got {getattr(run, field)}")
  for r in cfg.recipes:  # each method builds (bad hyperparameters fail here)
    _method(cfg, r)


def _lm_models() -> list[str]:
  return sorted(n for n in model_names() if n.startswith("lm_"))


def _method(cfg: LMStudyConfig, recipe: str):
  name, hparams, _, _ = RECIPES[recipe]
  if name == "lm_gkd":
    hparams = {**hparams, "prompt_len": cfg.prompt_len}
  return make_method(name, **hparams)


def load_corpus(cfg: LMStudyConfig):
  """The study's corpus (nothing is downloaded unless ``download``)."""
  if cfg.corpus == "stdlib":
    return stdlib_corpus(max_bytes=cfg.corpus_bytes)
  kind, _, arg = cfg.corpus.partition(":")
  if kind == "files" and arg:
    return text_files_corpus(arg)
  if kind == "tfds" and arg:
    return tfds_corpus(arg, "train", download=cfg.download)
  raise ValueError(f"unknown corpus {cfg.corpus!r}; use stdlib, files:GLOB or tfds:NAME")


def _model(run: TrainConfig, vocab: int, seq_len: int, seed: int):
  return create_model(run.model, num_classes=vocab, input_shape=(seq_len,), seed=seed, **run.model_options())


def _states(cfg: LMStudyConfig, run: TrainConfig, method, vocab: int, seeds, steps_per_epoch: int, teacher_shapes):
  """Stacked initial states, one per seed: the same weights per seed in every recipe."""
  tx = run_optimizer(run, steps_per_epoch)
  states, graphdef = [], None
  for seed in seeds:
    graphdef, params, rest = split_model(_model(run, vocab, cfg.seq_len, seed))
    shapes = feature_shapes(graphdef, params, rest, (cfg.seq_len,))
    m_params, m_state = init_method(method, jax.random.fold_in(jax.random.key(seed), 3), shapes, teacher_shapes,
                                    num_examples=0)
    states.append(init_train_state(params, rest, tx, jax.random.fold_in(jax.random.key(seed), 1), m_params, m_state))
  return graphdef, tx, stack_states(states)


def _unstack(tree, k: int):
  return jax.tree.map(lambda a: a[k], tree)


def _judge(history, initial, majority: float, thresholds) -> dict[str, Any]:
  skipped = sum(r["skipped_steps"] for r in history)
  return H.judge_run(history, initial, majority=majority, thresholds=thresholds, skipped_steps=skipped)


def _teacher_samples(graphdef, variables, rows: dict, cfg: LMStudyConfig, seed: int) -> dict:
  """Sequence-level KD's data: the teacher's continuations of each training row's first
  ``prompt_len`` tokens (sampled at temperature 1), one document per row, every position but the last
  a target: the prompt's own next tokens (corpus bytes) too, as training on the whole generated row
  does; the prompt is ``prompt_len`` of the row's ``seq_len`` tokens."""
  b_size = cfg.eval_batch_size
  steps = cfg.seq_len - cfg.prompt_len
  gen = jax.jit(lambda p, k: generate(graphdef, variables["params"], variables["rest"], p, k, steps=steps,
                                      temperature=1.0))
  out = []
  key = jax.random.key(seed)
  n = len(rows["tokens"])
  for lo in range(0, n, b_size):
    prompt = rows["tokens"][lo:lo + b_size, :cfg.prompt_len]
    pad = b_size - len(prompt)
    prompt = np.concatenate([prompt, np.repeat(prompt[-1:], pad, 0)]) if pad else prompt
    out.append(np.asarray(gen(jnp.asarray(prompt), jax.random.fold_in(key, lo)))[:b_size - pad])
  sampled = sampled_rows(jnp.asarray(np.concatenate(out), jnp.int32), first_target=0)
  return {k: np.asarray(v) for k, v in sampled.items()}


SAMPLES = 3  # validation prompts whose continuations results.json keeps, by the teacher and each recipe's first seed


def _continuations(graphdef, variables, prompts: np.ndarray, cfg: LMStudyConfig, tokenizer) -> list[str]:
  """What a model writes after each prompt (``seq_len - prompt_len`` tokens at temperature 1, the
  same key for every model), decoded: the samples a study shows beside its numbers."""
  tokens = generate(graphdef, variables["params"], variables["rest"], jnp.asarray(prompts), jax.random.key(0),
                    steps=cfg.seq_len - cfg.prompt_len, temperature=1.0)
  return [tokenizer.decode(np.asarray(t[cfg.prompt_len:])) for t in tokens]


def _fill_topk_cache(directory: Path, identity: dict, graphdef, variables, rows: dict, k: int, batch_size: int):
  """The teacher's top-k log-probabilities (T = 1) over every training row, written shard by shard."""
  @jax.jit
  def topk(batch):
    logits, _ = lm_apply(graphdef, variables["params"], variables["rest"], batch["tokens"],
                         segments=batch["segments"], positions=batch["positions"], train=False)
    return teacher_topk(logits, k)

  writer = TopkCacheWriter(directory, identity=identity)
  for lo in range(0, len(rows["tokens"]), batch_size):
    lp, ids = jax.device_get(topk({key: jnp.asarray(rows[key][lo:lo + batch_size]) for key in BATCH_KEYS}))
    writer.append(np.asarray(lp), np.asarray(ids))
  writer.close()


def imported_lm_teacher(path: str | Path, *, vocab_size: int, seq_len: int, tokenizer: str = "ByteTokenizer"):
  """A local Hugging Face GPT-2 checkpoint (:func:`kdjax.pretrained.gpt2.load_gpt2`: a folder or a weights
  file; nothing is downloaded) as a study's teacher: ``(graphdef, {"params", "rest"}, identity)``, the
  identity a digest of its weights and architecture (heads, widths, context, epsilon, activation).

  Its vocabulary must be the study tokenizer's (``vocab_size`` ids of ``tokenizer``): kdjax does not
  distil across tokenizers, so a teacher with another vocabulary (GPT-2's own 50257 BPE ids) is refused,
  naming both sizes; its context (``n_positions``) must hold ``seq_len`` tokens."""
  model = load_gpt2(path)
  if model.vocab_size != vocab_size:
    raise ValueError(f"the imported teacher {path} has a vocabulary of {model.vocab_size} ids, the study's "
                     f"tokenizer ({tokenizer}) {vocab_size}: kdjax does not distil across tokenizers")
  if model.max_len < seq_len:
    raise ValueError(f"the imported teacher {path} reads at most {model.max_len} tokens (n_positions), fewer than "
                     f"the study's seq_len {seq_len}")
  graphdef, params, rest = split_model(model)
  variables = {"params": params, "rest": rest}
  # The weights and every setting of the function (heads, widths, context, epsilon, activation): a config.json
  # that changes n_head alone changes the logits, so it must change the identity (and the top-k cache's).
  teacher_id = digest({"imported": "gpt2", "weights": array_digest(*jax.tree.leaves(jax.device_get(variables))),
                       "architecture": {k: getattr(model, k) for k in ("vocab_size", "dim", "depth", "num_heads",
                                                                        "mlp_dim", "max_len", "position_encoding",
                                                                        "norm_eps", "activation")}})
  return graphdef, variables, teacher_id


def run_lm_study(cfg: LMStudyConfig, *, progress: bool = True, out_dir: str | Path | None = None,
                 log=print, tensorboard: bool | str | Path = False,
                 teacher_weights: str | Path | None = None) -> dict[str, Any]:
  """Runs the study and writes ``results.json``, ``table.md`` and ``metrics.jsonl`` under
  ``WORKDIR/NAME`` (or ``out_dir``). Returns the results payload (with ``"table"``). ``tensorboard``
  (True: under ``WORKDIR/NAME/tensorboard``, or a folder) mirrors every run's epochs, config and health
  to TensorBoard event files, one folder per run and seed (:mod:`kdjax.tracking`).

  ``teacher_weights``: a local Hugging Face GPT-2 checkpoint to distil from instead of training
  ``cfg.teacher`` (:func:`imported_lm_teacher`; its vocabulary must be the tokenizer's)."""
  validate_lm_study(cfg)
  out = Path(out_dir) if out_dir is not None else Path(cfg.workdir) / cfg.name
  track = None if not tensorboard else out / "tensorboard" if tensorboard is True else Path(tensorboard)
  if track is not None:
    require_tensorboardx()  # missing: fails before the corpus loads
  corpus = load_corpus(cfg)
  tokenizer = ByteTokenizer()
  data = lm_dataset(corpus, tokenizer, seq_len=cfg.seq_len, valid_fraction=cfg.valid_fraction, seed=cfg.data_seed,
                    max_rows=cfg.max_rows)
  vocab = data.vocab_size
  for split in ("train", "valid"):
    check_lm_batch(getattr(data, split), vocab_size=vocab)
  for role in ("teacher", "student"):
    run = getattr(cfg, role)
    if run.batch_size > len(data.train["tokens"]):
      raise ValueError(f"{role}.batch_size {run.batch_size} is larger than the training split "
                       f"({len(data.train['tokens'])} rows of {cfg.seq_len} tokens)")
  for recipe in cfg.recipes:  # every recipe's teacher source, k and vocabulary, before the teacher trains
    kind = RECIPES[recipe][3]
    method = _method(cfg, recipe)
    check_lm_teacher(method, teacher=kind == "live", cached=kind == "cache",
                     topk=cfg.topk if kind == "cache" else None, vocab_size=vocab, teacher_vocab=vocab)
    if kind == "cache" and method_temperature(method) != CACHE_TEMPERATURE:
      raise ValueError(f"recipe {recipe!r} takes its divergence at T={method_temperature(method)}, but the top-k "
                       f"cache holds the teacher's log-probabilities at T={CACHE_TEMPERATURE}")
  imported = None if teacher_weights is None else imported_lm_teacher(teacher_weights, vocab_size=vocab,
                                                                      seq_len=cfg.seq_len)
  valid_targets = data.valid["targets"][data.valid["mask"] > 0]
  majority = float(np.bincount(valid_targets, minlength=vocab).max() / max(len(valid_targets), 1))
  with exclusive(out, "kdjax distill"), run_writers(track, config=to_dict(cfg)) as writers:
    check_writable(out)
    started = time.time()
    log_path = out / "metrics.jsonl"
    log_path.unlink(missing_ok=True)

    def write_log(records, run: str, seeds) -> None:
      with open(log_path, "a") as f:
        for seed, r in zip(seeds, records):
          f.write(json.dumps({"run": run, "seed": seed, **r}) + "\n")
      if writers is not None:  # the same records to TensorBoard, at the epoch's last step
        per_epoch = t_steps if run == "teacher" else s_steps
        for seed, r in zip(seeds, records):
          write_record(writers(run_name(run, seed)), r, r["epoch"] * per_epoch)

    # The teacher: trained once, kept beside the results under its identity.
    t_run = cfg.teacher
    t_name = t_run.model if imported is None else f"gpt2:{teacher_weights}"
    sft = make_method("lm_sft")
    t_steps = len(data.train["tokens"]) // t_run.batch_size
    if imported is None:
      teacher_id = digest({"config": to_dict(t_run), "data": data.fingerprint, "seed": cfg.teacher_seed,
                           "data_seed": cfg.data_seed})
      t_graphdef, t_tx, t_state = _states(cfg, t_run, sft, vocab, [cfg.teacher_seed], t_steps, {})
    else:
      t_graphdef, t_vars, teacher_id = imported
    saved = out / f"teacher-{teacher_id}.npz"
    record = saved.with_suffix(".json")  # written after the weights: both present means a finished teacher
    t_eval = make_lm_eval(t_graphdef, cohort=True, precision=t_run.precision)
    if imported is not None:  # not trained here: judged by its validation numbers (and weak_teacher below)
      stacked = jax.tree.map(lambda a: a[None], t_vars)
      t_final = evaluate_lm(t_eval, stacked["params"], stacked["rest"], data.valid, batch_size=cfg.eval_batch_size,
                            num_students=1)[0]
      t_health = H.verdict([])
      log(f"teacher {t_name}: imported")
    elif saved.exists() and record.exists():
      t_vars = load_pytree(saved, {"params": _unstack(t_state.params, 0), "rest": _unstack(t_state.rest, 0)})
      t_vars = jax.tree.map(jnp.asarray, t_vars)
      stacked = jax.tree.map(lambda a: a[None], t_vars)
      t_final = evaluate_lm(t_eval, stacked["params"], stacked["rest"], data.valid, batch_size=cfg.eval_batch_size,
                            num_students=1)[0]
      stored = json.loads(record.read_text())
      t_health = _judge(stored["history"], stored["initial"], majority, cfg.health)  # today's thresholds
      log(f"teacher {t_run.model}: restored from {saved}")
    else:
      step = make_lm_step(t_graphdef, t_tx, sft, precision=t_run.precision, cohort=True)
      t_state, t_hist, t_init = fit_lm(step, t_eval, t_state, None, data.train, data.valid, epochs=t_run.epochs,
                                       batch_size=t_run.batch_size, data_seed=cfg.data_seed, num_students=1,
                                       eval_batch_size=cfg.eval_batch_size, desc=f"teacher {t_run.model}",
                                       progress=progress, on_epoch=lambda r: write_log(r, "teacher", [cfg.teacher_seed]))
      t_final = t_hist[0][-1]
      t_health = _judge(t_hist[0], t_init[0], majority, cfg.health)
      t_vars = {"params": _unstack(t_state.params, 0), "rest": _unstack(t_state.rest, 0)}
      save_pytree(saved, t_vars)
      write_atomic(record, json.dumps({"identity": teacher_id, "health": t_health, "final": t_final,
                                       "history": t_hist[0], "initial": t_init[0]}, indent=2))
    log(f"teacher {t_name}: perplexity {t_final['perplexity']:.3f}, next-token accuracy "
        f"{100 * t_final['test_accuracy']:.2f}% ({H.short(t_health)})")
    teacher_shapes = feature_shapes(t_graphdef, t_vars["params"], t_vars["rest"], (cfg.seq_len,))
    prompts = data.valid["tokens"][:SAMPLES, :cfg.prompt_len]
    samples = {"prompts": [tokenizer.decode(p) for p in prompts],
               "teacher": _continuations(t_graphdef, t_vars, prompts, cfg, tokenizer)}

    s_run = cfg.student
    s_steps = len(data.train["tokens"]) // s_run.batch_size
    runs: dict[str, list[dict[str, Any]]] = {}
    extra_data: dict[str, Any] = {}
    for recipe in cfg.recipes:
      _, _, source, teacher_kind = RECIPES[recipe]
      method = _method(cfg, recipe)
      train_rows = data.train
      if source == "teacher_samples":
        if "samples" not in extra_data:
          log("sequence-level KD: sampling the teacher's continuations of every training row ...")
          extra_data["samples"] = _teacher_samples(t_graphdef, t_vars, data.train, cfg, cfg.teacher_seed)
        train_rows = extra_data["samples"]
      cache = None
      if teacher_kind == "cache":
        cache_dir = out / f"teacher-{teacher_id}-top{cfg.topk}"
        identity = {"teacher": teacher_id, "teacher_weights": array_digest(*jax.tree.leaves(jax.device_get(t_vars))),
                    "tokenizer": data.tokenizer_identity, "data": data.fingerprint, "k": cfg.topk,
                    "temperature": CACHE_TEMPERATURE}
        if not topk_cache_exists(cache_dir):
          log(f"caching the teacher's top-{cfg.topk} log-probabilities of the training rows in {cache_dir} ...")
          _fill_topk_cache(cache_dir, identity, t_graphdef, t_vars, data.train, cfg.topk, cfg.eval_batch_size)
        cache = open_topk_cache(cache_dir, identity=identity)
      live = teacher_kind == "live"
      graphdef, tx, state = _states(cfg, s_run, method, vocab, cfg.seeds, s_steps, teacher_shapes if live else {})
      step = make_lm_step(graphdef, tx, method, teacher_graphdef=t_graphdef if live else None,
                          cached_teacher=cache is not None, precision=s_run.precision, cohort=True)
      evaluate = make_lm_eval(graphdef, t_graphdef, cohort=True, precision=s_run.precision)
      t0 = time.time()
      state, hists, inits = fit_lm(step, evaluate, state, t_vars, train_rows, data.valid, epochs=s_run.epochs,
                                   batch_size=s_run.batch_size, data_seed=cfg.data_seed, num_students=len(cfg.seeds),
                                   eval_batch_size=cfg.eval_batch_size, teacher_cache=cache,
                                   desc=f"{recipe} x{len(cfg.seeds)} seeds", progress=progress,
                                   on_epoch=lambda r, recipe=recipe: write_log(r, recipe, cfg.seeds))
      wall = time.time() - t0
      runs[recipe] = []
      for seed, hist, init in zip(cfg.seeds, hists, inits):
        runs[recipe].append({"seed": seed, "final": hist[-1], "health": _judge(hist, init, majority, cfg.health),
                             "method": method_identity(method), "wall_s": round(wall, 1)})
      finals = [r["final"]["perplexity"] for r in runs[recipe]]
      log(f"{recipe}: perplexity {' '.join(f'{p:.3f}' for p in finals)} ({wall:.0f} s)")
      first = {"params": _unstack(state.params, 0), "rest": _unstack(state.rest, 0)}
      samples[recipe] = _continuations(graphdef, first, prompts, cfg, tokenizer)

    # A teacher no better than the students alone is not a result to distil from.
    weak = H.judge_teacher(t_final["test_accuracy"], [r["final"]["test_accuracy"] for r in runs[BASELINE]
                                                       if r["health"]["ok"]], cfg.health)
    if weak is not None:
      t_health = H.add_problem(t_health, weak)
    if writers is not None:  # every run's verdict at its last step
      write_health(writers(run_name("teacher", cfg.teacher_seed)), t_health, t_run.epochs * t_steps)
      for recipe, rs in runs.items():
        for r in rs:
          write_health(writers(run_name(recipe, r["seed"])), r["health"], s_run.epochs * s_steps)
    payload = {"config": to_dict(cfg), "corpus": {**data.fingerprint, "source": corpus.source,
                                                  "licence": corpus.licence},
               "teacher": {"model": t_name, "identity": teacher_id, "final": t_final, "health": t_health},
               "runs": runs, "comparisons": compare(runs), "majority_share": majority, "samples": samples,
               "env": {"jax": jax.__version__, "device": str(jax.devices()[0].device_kind),
                       "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "wall_s": round(time.time() - started, 1)}}
    payload["table"] = format_lm_table(payload)
    write_atomic(out / "results.json", json.dumps(payload, indent=2, default=float))
    write_atomic(out / "table.md", payload["table"] + "\n")
  return payload


def compare(runs: dict[str, list[dict[str, Any]]], metric: str = "perplexity") -> dict[str, dict[str, Any]]:
  """Each recipe against the student alone, seed by seed (healthy pairs only): the paired difference
  of ``metric`` with its 95% t-interval."""
  base = {r["seed"]: r for r in runs[BASELINE]}
  out = {}
  for recipe, rs in runs.items():
    if recipe == BASELINE:
      continue
    pairs = [(r["final"][metric], base[r["seed"]]["final"][metric]) for r in rs
             if r["seed"] in base and r["health"]["ok"] and base[r["seed"]]["health"]["ok"]]
    out[recipe] = {**paired_difference([a for a, _ in pairs], [b for _, b in pairs]),
                   "left_out": len(rs) - len(pairs)}
  return out


def _pm(values, fmt: str) -> str:
  if not values:
    return "—"
  mean, std = mean_std(values)
  return f"{mean:{fmt}} ± {std:{fmt}}" if len(values) > 1 else f"{mean:{fmt}}"


def format_lm_table(payload: dict[str, Any]) -> str:
  """The study's table: per recipe, validation perplexity, next-token accuracy, agreement with the
  teacher (means ± sample std over its healthy seeds), the paired difference in perplexity from the
  student alone with its 95% interval, and the health verdicts."""
  t = payload["teacher"]
  lines = [f"teacher {t['model']}: perplexity {t['final']['perplexity']:.3f}, next-token accuracy "
           f"{100 * t['final']['test_accuracy']:.2f}% ({H.short(t['health'])})", "",
           "| recipe | perplexity | Δ perplexity vs sft [95% CI] | next-token acc % | agreement % | health |",
           "|---|---|---|---|---|---|"]
  for recipe, rs in payload["runs"].items():
    ok = [r for r in rs if r["health"]["ok"]]
    ppl = _pm([r["final"]["perplexity"] for r in ok], ".3f")
    acc = _pm([100 * r["final"]["test_accuracy"] for r in ok], ".2f")
    agree = _pm([100 * r["final"].get("teacher_agreement", math.nan) for r in ok], ".2f")
    if recipe == BASELINE:
      delta = "(baseline)"
    else:
      c = payload["comparisons"][recipe]
      delta = "—" if c["mean"] is None else (f"{c['mean']:+.3f}" + (
          f" [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if c["ci_low"] is not None else ""))
    bad = [f"seed {r['seed']}: {H.short(r['health'])}" for r in rs if not r["health"]["ok"]]
    cell = f"{len(ok)}/{len(rs)} ok" + (f" ({'; '.join(bad)})" if bad else "")
    lines.append(f"| {recipe} | {ppl} | {delta} | {acc} | {agree} | {cell} |")
  unhealthy = [(f"{recipe} seed {r['seed']}", r["health"]) for recipe, rs in payload["runs"].items() for r in rs
               if not r["health"]["ok"]]
  if not t["health"].get("ok", True):
    unhealthy.insert(0, ("teacher", t["health"]))
  block = H.warning_block(unhealthy)
  return "\n".join(lines) + ("\n\n" + block if block else "")


def unhealthy_lm_runs(payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
  """``(name, health)`` of each unhealthy run of a finished study, the teacher first."""
  out = [("teacher", payload["teacher"]["health"])] if not payload["teacher"]["health"].get("ok", True) else []
  return out + [(f"{recipe} seed {r['seed']}", r["health"]) for recipe, rs in payload["runs"].items() for r in rs
                if not r["health"]["ok"]]
