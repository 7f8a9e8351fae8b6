"""Training causal language models: the LM step on the one update core, evaluation, a teacher
sharded over a device mesh.

    step(state, teacher_vars, batch) -> (state, metrics)

:func:`make_lm_step` composes, around :func:`kdjax.train.step.update` (gradients, the optax update,
the finite guard): the student's own samples for an on-policy method (GKD, λ of the steps), the
teacher's scores of the batch (live, full or top-k; or its top-k read from the batch, cached on
disk by :mod:`kdjax.data.topk_cache`), the student's forward pass with its features, and the
method's loss (:mod:`kdjax.methods.token`). ``cohort=True`` vmaps it over students stacked on a
leading axis (seeds): one data order, one teacher, one compiled program.

A batch is a packed one from :func:`kdjax.data.corpus.pack`: ``"tokens"``, ``"targets"``,
``"segments"`` (document ids, 0 = padding), ``"positions"`` and ``"mask"``, all ``[B, L]``; for a
cached teacher also ``"teacher_logprobs"`` and ``"teacher_ids"`` ``[B, L, K]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from kdjax.losses.token import check_token_shapes, teacher_topk, token_divergence
from kdjax.methods import Method, call_method, method_identity
from kdjax.methods.token import TopK
from kdjax.models.decoder import generate, lm_apply
from kdjax.models.functional import compute_dtype
from kdjax.parallel import DATA
from kdjax.train.inputs import split_keys
from kdjax.train.state import TrainState
from kdjax.train.step import update

BATCH_KEYS = ("tokens", "targets", "segments", "positions", "mask")


def method_temperature(method: Method) -> float:
  """The temperature a method's divergence is taken at (1 where it names none): a top-k teacher is
  reduced at it."""
  return float(method_identity(method).get("temperature", 1.0))


def check_lm_batch(batch: dict, *, max_len: int | None = None, vocab_size: int | None = None) -> None:
  """The batch's arrays exist and agree, before anything is traced: every key ``[B, L]``, ``L`` within
  the model's context ``max_len``, token ids below ``vocab_size``."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"an LM batch needs {', '.join(BATCH_KEYS)}; missing: {', '.join(missing)}")
  shape = tuple(np.shape(batch["tokens"]))
  if len(shape) != 2:
    raise ValueError(f"tokens must be [B, L], got shape {shape}")
  for k in BATCH_KEYS[1:]:
    if tuple(np.shape(batch[k])) != shape:
      raise ValueError(f"{k} has shape {tuple(np.shape(batch[k]))}, but tokens are {shape}: every batch key must be "
                       "[B, L]")
  if max_len is not None and shape[1] > max_len:
    raise ValueError(f"sequences of length {shape[1]} are longer than the model's context ({max_len} tokens)")
  if vocab_size is not None:
    for k in ("tokens", "targets"):
      top = int(np.max(batch[k])) if np.size(batch[k]) else 0
      if top >= vocab_size:
        raise ValueError(f"{k} hold token id {top}, outside the model's vocabulary of {vocab_size}")


def check_lm_teacher(method: Method, *, teacher: bool, cached: bool, topk: int | None, vocab_size: int | None = None,
                     teacher_vocab: int | None = None) -> None:
  """The method, its teacher source and the vocabularies agree, before anything is traced (the
  vocabularies where known; the step checks the logits' own at trace time)."""
  if not isinstance(method, Method):
    raise TypeError(f"an LM step takes a kdjax.methods.Method (make_method('lm_kd', ...)), got {type(method).__name__}")
  if method.needs_teacher and not (teacher or cached):
    raise ValueError("this method needs a teacher, but none was given")
  if not method.needs_teacher and (teacher or cached):
    raise ValueError("this method uses no teacher, but a teacher was given")
  if teacher and cached:
    raise ValueError("give a live teacher or a cached one, not both")
  if teacher_vocab is not None and vocab_size is not None and teacher_vocab != vocab_size:
    raise ValueError(f"the teacher's vocabulary has {teacher_vocab} tokens and the student's {vocab_size}: "
                     "cross-tokenizer distillation is not supported (both must use the same tokenizer)")
  if topk is not None and (topk < 1 or (vocab_size is not None and topk > vocab_size)):
    raise ValueError(f"top-k teacher: k={topk} must lie in 1..{vocab_size or 'V'} (the vocabulary)")
  if cached and method.on_policy is not None:
    raise ValueError("an on-policy method (lm_gkd with student_fraction > 0) needs a live teacher to score the "
                     "student's samples; a cached teacher only knows the corpus")
  if (topk is not None or cached) and method.init is not None:
    raise ValueError("this method matches the teacher's features, which a top-k teacher does not keep")


def sampled_rows(tokens_BxL, first_target: int) -> dict:
  """A packed batch of generated rows, one document each: the targets are the next tokens, and the
  loss counts positions ``first_target`` to ``L - 2`` (the last has no next token)."""
  b, length = tokens_BxL.shape
  pos = jnp.arange(length)
  return {"tokens": tokens_BxL,
          "targets": jnp.concatenate([tokens_BxL[:, 1:], jnp.zeros((b, 1), tokens_BxL.dtype)], axis=1),
          "segments": jnp.ones_like(tokens_BxL), "positions": jnp.broadcast_to(pos, (b, length)).astype(jnp.int32),
          "mask": jnp.broadcast_to((pos >= first_target) & (pos < length - 1), (b, length)).astype(jnp.float32)}


def on_policy_batch(graphdef, params, rest, batch: dict, key: jax.Array, on_policy) -> dict:
  """The student's own continuations of each row's first ``prompt_len`` tokens (GKD), as a batch:
  one document per row, the loss on the sampled positions only. Sampling runs in float32."""
  tokens = batch["tokens"]
  length = tokens.shape[1]
  p = on_policy.prompt_len
  if not 1 <= p < length:
    raise ValueError(f"on-policy prompt_len {p} must be shorter than the rows ({length} tokens): the student "
                     "would sample nothing")
  sample = generate(graphdef, jax.lax.stop_gradient(params), rest, tokens[:, :p], key, steps=length - p,
                    temperature=on_policy.temperature)
  return sampled_rows(sample, p - 1)


def _teacher(teacher_graphdef, teacher_vars, batch: dict, *, cached: bool, topk: int | None, temperature: float,
             dtype) -> Any:
  """``(teacher_logits, teacher_feats)``: full logits, or a :class:`TopK`; ``None`` without a teacher."""
  if cached:
    return TopK(batch["teacher_logprobs"], batch["teacher_ids"]), {}
  if teacher_graphdef is None:
    return None
  logits, feats = lm_apply(teacher_graphdef, teacher_vars["params"], teacher_vars["rest"], batch["tokens"],
                           segments=batch["segments"], positions=batch["positions"], train=False, dtype=dtype)
  logits, feats = jax.lax.stop_gradient((logits, feats))
  if topk is not None:
    return TopK(*teacher_topk(logits, topk, temperature=temperature)), {}
  return logits, feats


def _masked_mean(x, mask):
  return jnp.sum(jnp.where(mask > 0, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def make_lm_step(graphdef, tx: optax.GradientTransformation, method: Method, *, teacher_graphdef=None,
                 cached_teacher: bool = False, topk: int | None = None, precision: str = "fp32",
                 cohort: bool = False) -> Callable:
  """The jitted LM step ``step(state, teacher_vars, batch) -> (state, metrics)``, the state donated.

  ``teacher_vars`` is ``{"params": ..., "rest": ...}`` of ``teacher_graphdef`` (``None`` without a
  teacher); place it with :func:`fsdp_shardings` to shard a large teacher over a mesh. ``topk=k``
  reduces a live teacher to its ``k`` most likely tokens (what the cache stores; ``k = V`` is the full
  loss); ``cached_teacher`` reads them from the batch. ``cohort=True``: ``state`` holds students stacked
  on a leading axis, all on the same batch and teacher (seeds of one recipe).

  Metrics: ``loss``, ``grad_norm``, ``update_norm``, ``finite`` (:func:`kdjax.train.step.update`),
  ``accuracy`` (next-token, over the loss's positions), ``teacher_agreement`` (the student's top token
  is the teacher's), ``on_policy`` (1 where the step trained on the student's samples) and the
  method's terms."""
  dtype = compute_dtype(precision)
  temperature = method_temperature(method)
  on_policy = method.on_policy
  check_lm_teacher(method, teacher=teacher_graphdef is not None, cached=cached_teacher, topk=topk)

  def one(state: TrainState, teacher_vars, batch: dict):
    check_lm_batch(batch)  # shapes only (static under jit): every key [B, L]
    rng, k_sample, k_drop, k_method = split_keys(state.rng)
    metrics_extra = {}
    if on_policy is not None:
      k_coin, k_gen = jax.random.split(k_sample)
      use = jax.random.bernoulli(k_coin, on_policy.fraction)
      batch = jax.lax.cond(use, lambda: {**batch, **on_policy_batch(graphdef, state.params, state.rest, batch, k_gen,
                                                                      on_policy)}, lambda: batch)
      metrics_extra["on_policy"] = use.astype(jnp.float32)
    teacher = _teacher(teacher_graphdef, teacher_vars, batch, cached=cached_teacher, topk=topk,
                       temperature=temperature, dtype=dtype)
    context = {"targets": batch["targets"], "mask": batch["mask"], "segments": batch["segments"],
               "step": state.step, "key": k_method}

    def loss_fn(trainable):
      logits, feats = lm_apply(graphdef, trainable["student"], state.rest, batch["tokens"],
                               segments=batch["segments"], positions=batch["positions"], train=True, rngs=k_drop,
                               dtype=dtype)
      check_token_shapes(logits, None if teacher is None or isinstance(teacher[0], TopK) else teacher[0],
                         batch["mask"], batch["targets"])
      loss_B, terms, method_state = call_method(method, logits, feats, teacher, context, trainable["method"],
                                                state.method_state)
      predicted = jnp.argmax(logits, -1)
      mask = batch["mask"]
      metrics = {"accuracy": _masked_mean(predicted == batch["targets"], mask),
                 **{k: jnp.mean(v) for k, v in terms.items()}}
      if teacher is not None:
        t_top = teacher[0].ids[..., 0] if isinstance(teacher[0], TopK) else jnp.argmax(teacher[0], -1)
        metrics["teacher_agreement"] = _masked_mean(predicted == t_top, mask)
      return jnp.mean(loss_B), (state.rest, method_state, metrics)

    new_state, metrics = update(tx, state, loss_fn)
    return new_state._replace(step=state.step + 1, rng=rng), {**metrics, **metrics_extra}

  fn = jax.vmap(one, in_axes=(0, None, None)) if cohort else one
  return jax.jit(fn, donate_argnums=0)


def make_lm_eval(graphdef, teacher_graphdef=None, *, cohort: bool = False, precision: str = "fp32") -> Callable:
  """``evaluate(params, rest, teacher_vars, batch) -> sums``, the jitted sums over one batch's masked
  positions: ``nll`` (next-token negative log-likelihood), ``correct``, ``tokens``, per-token
  ``prediction_counts`` ``[V]`` (how often each token is the top one, for the collapse check), and
  with a teacher ``agree`` (top tokens equal) and ``kl`` (forward KL(p_t ‖ p_s)). ``cohort=True``:
  ``params``/``rest`` stacked on a leading axis (sums per student)."""
  dtype = compute_dtype(precision)

  def one(params, rest, teacher_vars, batch):
    logits, _ = lm_apply(graphdef, params, rest, batch["tokens"], segments=batch["segments"],
                         positions=batch["positions"], train=False, dtype=dtype)
    mask = batch["mask"] > 0
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    nll = -jnp.take_along_axis(log_p, batch["targets"][..., None], -1)[..., 0]
    predicted = jnp.argmax(logits, -1)
    out = {"nll": jnp.sum(jnp.where(mask, nll, 0.0)), "correct": jnp.sum(mask & (predicted == batch["targets"])),
           "tokens": jnp.sum(mask), "prediction_counts": jnp.zeros(logits.shape[-1], jnp.int32).at[
               predicted.reshape(-1)].add(mask.reshape(-1).astype(jnp.int32))}
    if teacher_graphdef is not None:
      t_logits, _ = lm_apply(teacher_graphdef, teacher_vars["params"], teacher_vars["rest"], batch["tokens"],
                             segments=batch["segments"], positions=batch["positions"], train=False, dtype=dtype)
      out["agree"] = jnp.sum(mask & (predicted == jnp.argmax(t_logits, -1)))
      out["kl"] = jnp.sum(jnp.where(mask, token_divergence(logits, t_logits), 0.0))
    return out

  fn = jax.vmap(one, in_axes=(0, 0, None, None)) if cohort else one
  return jax.jit(fn)


def summarize_eval(sums: dict) -> dict[str, Any]:
  """Perplexity, accuracy and agreement from summed :func:`make_lm_eval` results (NumPy, one run)."""
  tokens = max(float(sums["tokens"]), 1.0)
  nll = float(sums["nll"]) / tokens
  out = {"test_loss": nll, "perplexity": float(np.exp(min(nll, 700.0))), "test_accuracy": float(sums["correct"]) / tokens,
         "test_top_class_share": float(np.max(sums["prediction_counts"])) / tokens}
  if "agree" in sums:
    out["teacher_agreement"] = float(sums["agree"]) / tokens
    out["teacher_kl"] = float(sums["kl"]) / tokens
  return out


def evaluate_lm(eval_fn: Callable, params, rest, data: dict, *, batch_size: int, teacher_vars=None,
                num_students: int | None = None) -> list[dict[str, Any]] | dict[str, Any]:
  """:func:`summarize_eval` over every row of ``data`` (a packed split), in batches; for a cohort
  (``num_students``) a list, one summary per student."""
  n = len(data["tokens"])
  totals = None
  for lo in range(0, n, batch_size):
    batch = {k: jnp.asarray(data[k][lo:lo + batch_size]) for k in BATCH_KEYS}
    sums = jax.device_get(eval_fn(params, rest, teacher_vars, batch))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  if num_students is None:
    return summarize_eval(totals)
  return [summarize_eval(jax.tree.map(lambda a, k=k: a[k], totals)) for k in range(num_students)]


def fsdp_shardings(tree, mesh: jax.sharding.Mesh, axis: str = DATA):
  """A ``NamedSharding`` per leaf of ``tree`` that splits it over mesh axis ``axis`` (by default
  :func:`kdjax.parallel.make_mesh`'s data axis, the one :func:`kdjax.parallel.batch_sharding` splits the
  batch over: FSDP shards the weights over the data-parallel devices) along its largest
  dimension that the axis size divides (FSDP: each device keeps ``1/n`` of every large array; XLA
  gathers a layer's weights where the forward pass needs them); leaves with no such dimension (biases
  of odd sizes, scalars) are replicated. Place with ``jax.device_put(tree, fsdp_shardings(tree, mesh))``."""
  n = mesh.shape[axis]

  def spec(leaf):
    shape = np.shape(leaf)
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
      if shape[d] % n == 0 and shape[d] >= n:
        parts = [None] * len(shape)
        parts[d] = axis
        return NamedSharding(mesh, P(*parts))
    return NamedSharding(mesh, P())

  return jax.tree.map(spec, tree)



def epoch_order(num_rows: int, data_seed: int, epoch: int) -> np.ndarray:
  """The rows' order in ``epoch``: one permutation per (data seed, epoch), the same for every recipe
  and seed of a study (paired comparisons see the same batches)."""
  return np.random.default_rng([data_seed, epoch]).permutation(num_rows)


def fit_lm(step: Callable, eval_fn: Callable, state: TrainState, teacher_vars, train: dict, valid: dict, *,
           epochs: int, batch_size: int, data_seed: int, num_students: int, eval_batch_size: int = 64,
           teacher_cache=None, desc: str = "lm", progress: bool = True,
           on_epoch: Callable[[list[dict]], None] | None = None) -> tuple[TrainState, list[list[dict]], list[dict]]:
  """Trains a cohort of ``num_students`` (``state`` stacked, a ``cohort=True`` step and eval) for
  ``epochs`` over ``train`` (full batches in :func:`epoch_order`), evaluating on ``valid`` before the
  first step and after each epoch. ``teacher_cache`` (a :class:`kdjax.data.topk_cache.TopkCache` over
  ``train``'s rows) adds each batch's cached top-k teacher. Returns ``(state, histories, initial)``:
  per student its epoch records (``train_loss``, ``train_grad_norm``, ``skipped_steps``, the method's
  terms as ``train_*``, then :func:`summarize_eval`'s fields) and its initial metrics (the untrained
  evaluation, the first step's loss and gradient norm) for :func:`kdjax.health.judge_run`.
  ``on_epoch(records)`` sees each epoch's records as they are made."""
  from tqdm import tqdm

  n = len(train["tokens"])
  steps = n // batch_size
  if steps < 1:
    raise ValueError(f"batch_size {batch_size} is larger than the training split ({n} rows)")
  initial = evaluate_lm(eval_fn, state.params, state.rest, valid, batch_size=eval_batch_size,
                        teacher_vars=teacher_vars, num_students=num_students)
  initial = [{"test_accuracy": r["test_accuracy"], "test_loss": r["test_loss"]} for r in initial]
  histories: list[list[dict]] = [[] for _ in range(num_students)]
  bar = tqdm(total=epochs * steps, desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True)
  try:
    for epoch in range(1, epochs + 1):
      order = epoch_order(n, data_seed, epoch)
      sums: dict[str, Any] = {}
      for i in range(steps):
        rows = np.sort(order[i * batch_size:(i + 1) * batch_size])
        batch = {k: train[k][rows] for k in BATCH_KEYS}
        if teacher_cache is not None:
          batch["teacher_logprobs"], batch["teacher_ids"] = teacher_cache.rows(rows)
        state, metrics = step(state, teacher_vars, batch)
        if epoch == 1 and i == 0:
          first = jax.device_get(metrics)
          for k in range(num_students):
            initial[k].update(train_loss=float(first["loss"][k]), train_grad_norm=float(first["grad_norm"][k]))
        finite = metrics["finite"]
        for key, value in metrics.items():
          value = (~finite).astype(jnp.int32) if key == "finite" else jnp.where(finite, value, 0.0)
          sums[key] = value if key not in sums else sums[key] + value
        bar.update(1)
        if not bar.disable and i % 20 == 0:  # a host sync: only for a bar that shows
          bar.set_postfix(epoch=epoch, loss=f"{float(jnp.mean(metrics['loss'])):.3f}")
      sums = jax.device_get(sums)
      evals = evaluate_lm(eval_fn, state.params, state.rest, valid, batch_size=eval_batch_size,
                          teacher_vars=teacher_vars, num_students=num_students)
      records = []
      for k in range(num_students):
        skipped = int(sums["finite"][k])
        kept = max(steps - skipped, 1)
        record = {"epoch": epoch, "skipped_steps": skipped,
                  **{f"train_{key}": float(v[k]) / kept for key, v in sums.items()
                     if key not in ("finite", "update_norm")}, **evals[k]}
        histories[k].append(record)
        records.append(record)
      if on_epoch is not None:
        on_epoch(records)
  finally:
    bar.close()
  return state, histories, initial
