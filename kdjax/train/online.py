"""Online distillation: a cohort of K students of one architecture trained together, no teacher.

Deep Mutual Learning (Zhang, Xiang, Hospedales & Lu 2018, "Deep Mutual Learning",
arXiv:1706.00384): each student minimises its cross-entropy plus its mean KL to its peers'
predictions. Co-distillation (Anil, Pereyra, Passos, Ormandi, Dahl & Hinton 2018, "Large
scale distributed neural network training through online distillation", arXiv:1804.03235):
the same idea with a burn-in before the peers' term is switched on; here in Hinton KD's
weighting ``CE + w·T²·KL``. See :func:`kdjax.losses.online_kd_loss`.

The cohort is one pytree: every leaf of the params, the other variables and the optimizer
state carries a leading axis of size K (:func:`kdjax.train.teachers.stack_trees`), and the forward pass, the
optimizer update and the evaluation are ``jax.vmap``-ed over it, so one jitted step trains
all K students. The step counter and the PRNG key are shared, unstacked scalars: every
student sees the same augmented batch and draws its own dropout key from the shared one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kdjax.config import TrainConfig, refuse_compression, run_optimizer
from kdjax.data.augment import padded_batches, to_float
from kdjax.data.dataset import ArrayDataset
from kdjax.losses.online import online_kd_loss
from kdjax.losses.validate import check_temperature
from kdjax.models import create_model, split_model
from kdjax.models.functional import apply_model
from kdjax.train.api import TrainedModel
from kdjax.train.loop import FitResult, fit, steps_per_epoch
from kdjax.train.inputs import make_views
from kdjax.train.state import TrainState, trainables
from kdjax.train.step import update
from kdjax.train.teachers import stack_trees

RULES = ("dml", "codistill")
# Student k of a run with seed s starts from create_model(seed=s + STUDENT_SEED_STRIDE * k): student 0
# from the same weights as train_student(seed=s), the others from seeds no other small run uses.
STUDENT_SEED_STRIDE = 10_000


def check_online(num_students: int, rule: str, distill_weight: float | None, temperature: float,
                 burn_in_steps: int = 0) -> tuple[float, float]:
  """Fails early on a cohort that cannot run; returns ``(ce_weight, mimic_weight)`` of the rule.

  DML weighs cross-entropy and mimicry equally (Zhang et al. 2018, eq. 10) and takes no
  ``distill_weight``; co-distillation (Anil et al. 2018) is ``CE + w·T²·KL`` with
  ``w = distill_weight >= 0`` (default 1).
  """
  if isinstance(num_students, bool) or not isinstance(num_students, int) or num_students < 2:
    raise ValueError(f"online distillation needs num_students >= 2 students, got {num_students!r}")
  if rule not in RULES:
    raise ValueError(f"unknown online distillation rule {rule!r}; use one of {', '.join(RULES)}")
  if temperature is None:
    raise ValueError("temperature must be a finite number > 0, got None")
  check_temperature(temperature)
  if isinstance(burn_in_steps, bool) or not isinstance(burn_in_steps, int) or burn_in_steps < 0:
    raise ValueError(f"burn_in_steps must be an integer >= 0, got {burn_in_steps!r}")
  if rule == "dml":
    if distill_weight is not None:
      raise ValueError(f"rule 'dml' weighs cross-entropy and mimicry equally (Zhang et al. 2018) and takes no "
                       f"distill_weight, got {distill_weight!r}; use rule='codistill' for a weighted loss")
    return 1.0, 1.0
  w = 1.0 if distill_weight is None else distill_weight
  if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
    raise ValueError(f"distill_weight (the weight of the peers' term) must be a finite number >= 0, got {w!r}")
  return 1.0, float(w)


def unstack_tree(tree: Any, k: int) -> Any:
  """The ``k``-th slice of a stacked pytree (a copy)."""
  return jax.tree.map(lambda a: a[k], tree)


def student_seeds(seed: int, num_students: int) -> list[int]:
  """The model seeds of a cohort's students (see ``STUDENT_SEED_STRIDE``)."""
  return [seed + STUDENT_SEED_STRIDE * k for k in range(num_students)]


def create_students(model: str, *, num_classes: int, input_shape: Sequence[int], seeds: Sequence[int],
                    **options) -> tuple[Any, Any, Any]:
  """``(graphdef, params, rest)`` of ``len(seeds)`` students of registered ``model``, one per
  seed, their params and other variables stacked along a leading axis."""
  graphdef, params, rest = None, [], []
  for seed in seeds:
    g, p, r = split_model(create_model(model, num_classes=num_classes, input_shape=input_shape, seed=seed,
                                       **options))
    graphdef = g if graphdef is None else graphdef
    params.append(p)
    rest.append(r)
  return graphdef, stack_trees(params), stack_trees(rest)


def init_online_state(params, rest, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """The cohort's train state: stacked ``params`` and ``rest`` as given, one optimizer state per
  student (``jax.vmap(tx.init)``, stacked the same way), one shared ``step`` and ``rng``.

  Each student's optimizer state is over ``trainables(params_k, {})`` like
  :func:`kdjax.train.init_train_state`'s, so :func:`student_state` is a valid single-model
  state for :func:`kdjax.train.make_train_step`.
  """
  opt_state = jax.vmap(lambda p: tx.init(trainables(p, {})))(params)
  return TrainState(params=params, rest=rest, opt_state=opt_state, step=jnp.zeros((), jnp.int32), rng=rng,
                    method_params={}, method_state={})


def student_state(state: TrainState, k: int) -> TrainState:
  """Student ``k``'s own train state, unstacked (the shared step and key are kept)."""
  return TrainState(unstack_tree(state.params, k), unstack_tree(state.rest, k), unstack_tree(state.opt_state, k),
                    state.step, state.rng, {}, {})


def _num_students(params) -> int:
  return jax.tree.leaves(params)[0].shape[0]


def make_online_step(graphdef, tx: optax.GradientTransformation, num_students: int, *, rule: str = "dml",
                     distill_weight: float | None = None, temperature: float = 1.0, burn_in_steps: int = 0,
                     jitter_pixels: int = 0, hflip: bool = False) -> Callable:
  """Builds the jitted step that trains a cohort of ``num_students`` students together.

  All students see the same augmented batch (``jitter_pixels``, ``hflip``, on the device); each
  gets its own dropout key. Student ``k``'s loss is :func:`kdjax.losses.online_kd_loss`:
  ``CE + mean_l KL(p_l ‖ p_k)`` for DML (T = 1 unless given; ``T²`` scales the KL otherwise),
  ``CE + w·T²·mean_l KL`` for co-distillation (``w = distill_weight``); the peers' term is switched on once
  ``step >= burn_in_steps`` (Anil et al.'s burn-in; 0 = from the start; the CE weight does
  not change). The differentiated total is the sum over students: the peers are under
  ``stop_gradient``, so its gradient gives every student exactly the gradient of its own loss,
  and ``jax.vmap(tx.update)`` keeps each student's optimizer state separate. All students are
  updated at once from the same step's predictions (DML's Algorithm 1 updates them one after
  another, recomputing the predictions in between; the simultaneous update is the common variant). If any loss or
  gradient is not finite the whole cohort's state is kept and ``finite = False``.

  Returns ``step(state, teacher_vars, batch) -> (state, metrics)`` with the signature of
  :func:`kdjax.train.make_train_step` (``teacher_vars`` is ignored), jitted with the state
  donated. Metrics are scalars: ``loss``, ``accuracy``, ``ce``, ``kl`` (means over students;
  ``kl`` before any weight), ``ensemble_accuracy`` (mean of the students' probabilities),
  ``loss/<k>`` and ``accuracy/<k>`` per student, ``grad_norm`` (global, over the cohort) and
  ``finite``.
  """
  ce_weight, mimic_weight = check_online(num_students, rule, distill_weight, temperature, burn_in_steps)

  views = make_views(jitter_pixels, hflip)
  cohort_tx = optax.GradientTransformation(jax.vmap(tx.init), jax.vmap(tx.update))  # one optimizer per student

  def step(state: TrainState, teacher_vars, batch):
    del teacher_vars
    if _num_students(state.params) != num_students:
      raise ValueError(f"the step was built for {num_students} students, the state stacks "
                       f"{_num_students(state.params)}")
    rng, k_aug, k_drop = jax.random.split(state.rng, 3)
    x = views(k_aug, batch).x
    drop_keys = jax.random.split(k_drop, num_students)
    mimic_on = (state.step >= burn_in_steps).astype(jnp.float32)
    labels = batch["label"]

    def loss_fn(trainable):
      logits, _, new_rest = jax.vmap(lambda p, r, k: apply_model(graphdef, p, r, x, train=True, rngs=k))(
          trainable["student"], state.rest, drop_keys)
      loss_KxB, terms = online_kd_loss(logits, labels, alpha=ce_weight, temperature=temperature,
                                       mimic_weight=mimic_weight * mimic_on)
      loss_K = jnp.mean(loss_KxB, axis=1)
      return jnp.sum(loss_K), (new_rest, state.method_state, cohort_metrics(logits, labels, loss_K, terms))

    new_state, metrics = update(cohort_tx, state, loss_fn)
    return new_state._replace(step=state.step + 1, rng=rng), metrics

  return jax.jit(step, donate_argnums=0)


def cohort_metrics(logits_KxBxC, labels, loss_K, terms) -> dict[str, jax.Array]:
  """Means over the students, each student's loss and accuracy, and the ensemble's accuracy (the
  mean of the students' probabilities)."""
  acc_K = jnp.mean(jnp.argmax(logits_KxBxC, -1) == labels, axis=1)
  ensemble_probs = jnp.mean(jax.nn.softmax(logits_KxBxC.astype(jnp.float32), axis=-1), axis=0)
  return {"loss": jnp.mean(loss_K), "accuracy": jnp.mean(acc_K), "ce": jnp.mean(terms["ce"]),
          "kl": jnp.mean(terms["kl"]), "ensemble_accuracy": jnp.mean(jnp.argmax(ensemble_probs, -1) == labels),
          **{f"loss/{k}": loss_K[k] for k in range(len(loss_K))},
          **{f"accuracy/{k}": acc_K[k] for k in range(len(acc_K))}}


def make_online_eval_step(graphdef) -> Callable:
  """Jitted ``eval_step(params, rest, images_uint8, labels, mask)`` over a stacked cohort:
  ``(correct_K, loss_sum_K, ensemble_correct, ensemble_loss_sum, predicted_K)`` (``predicted_K``:
  ``[K, C]``, how many examples each student predicted each class for). The ensemble predicts the
  mean of the students' softmax probabilities; its loss is the NLL of that mean."""

  def eval_step(params, rest, images, labels, mask):
    x = to_float(images)
    logits = jax.vmap(lambda p, r: apply_model(graphdef, p, r, x, train=False)[0])(params, rest)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [K, B, C]
    nll_K = -jnp.take_along_axis(log_p, jnp.broadcast_to(labels, log_p.shape[:-1])[..., None], axis=-1)[..., 0]
    predicted_K = jnp.argmax(log_p, -1)  # [K, B]
    correct_K = jnp.sum((predicted_K == labels) & mask, axis=1)
    counts_K = jax.vmap(lambda p: jnp.zeros(log_p.shape[-1], jnp.int32).at[p].add(mask.astype(jnp.int32)))(
        predicted_K)
    ens_log_p = jax.nn.logsumexp(log_p, axis=0) - jnp.log(log_p.shape[0])  # log of the mean probability
    ens_nll = -jnp.take_along_axis(ens_log_p, labels[:, None], axis=-1)[:, 0]
    return (correct_K, jnp.sum(jnp.where(mask, nll_K, 0.0), axis=1),
            jnp.sum((jnp.argmax(ens_log_p, -1) == labels) & mask), jnp.sum(jnp.where(mask, ens_nll, 0.0)), counts_K)

  return jax.jit(eval_step)


def evaluate_online(eval_step: Callable, params, rest, images, labels, batch_size: int = 1000) -> dict[str, Any]:
  """A cohort's test metrics over a whole split, in fixed-size padded batches.

  ``accuracy``, ``errors`` and ``loss`` are the mean student's (``errors`` is then a mean, not
  necessarily whole); ``accuracy/<k>``, ``errors/<k>``, ``loss/<k>`` and ``top_class_share/<k>``
  (the share of the examples predicted as its most-predicted class) each student's;
  ``ensemble_accuracy``, ``ensemble_errors``, ``ensemble_loss`` the ensemble's.
  """
  n = len(labels)
  sums = None
  for xb, yb, mask in padded_batches(images, labels, batch_size):
    out = eval_step(params, rest, xb, yb, mask)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  correct_K, loss_K, ens_correct, ens_loss, counts_K = jax.device_get(sums)
  k_students = len(correct_K)
  result: dict[str, Any] = {"accuracy": float(correct_K.sum()) / (n * k_students),
                            "errors": float(n * k_students - correct_K.sum()) / k_students,
                            "loss": float(loss_K.sum()) / (n * k_students)}
  for k in range(k_students):
    result |= {f"accuracy/{k}": float(correct_K[k]) / n, f"errors/{k}": int(n - correct_K[k]),
               f"loss/{k}": float(loss_K[k]) / n, f"top_class_share/{k}": float(counts_K[k].max()) / n}
  result |= {"ensemble_accuracy": float(ens_correct) / n, "ensemble_errors": int(n - ens_correct),
             "ensemble_loss": float(ens_loss) / n}
  return result


@dataclasses.dataclass
class OnlineResult:
  """A cohort trained together: each student as a :class:`TrainedModel`, and the cohort's fit."""

  rule: str
  model: str
  num_students: int
  distill_weight: float | None  # co-distillation's; None for DML
  temperature: float
  burn_in_steps: int
  students: list[TrainedModel]  # each with its own params, rest and test metrics; the fit history is shared
  fit: FitResult  # the stacked state; history and test hold per-student, mean and ensemble_ metrics

  @property
  def test(self) -> dict[str, Any]:
    """All final test metrics (see :func:`evaluate_online`)."""
    return self.fit.test

  @property
  def mean_student(self) -> dict[str, float]:
    """The mean student's test accuracy, errors and loss."""
    return {k: self.fit.test[k] for k in ("accuracy", "errors", "loss")}

  @property
  def ensemble(self) -> dict[str, float]:
    """The ensemble's (mean of the students' probabilities) test accuracy, errors and loss."""
    return {k: self.fit.test[f"ensemble_{k}"] for k in ("accuracy", "errors", "loss")}

  @property
  def student_tests(self) -> list[dict[str, float]]:
    return [s.test for s in self.students]

  @property
  def wall_s(self) -> float:
    return self.fit.wall_s


def train_online(data: ArrayDataset, cfg: TrainConfig, *, num_students: int = 2, rule: str = "dml",
                 distill_weight: float | None = None, temperature: float = 1.0, burn_in_steps: int = 0, seed: int = 0,
                 desc: str | None = None, log_path: str | Path | None = None,
                 log_fields: dict[str, Any] | None = None, progress: bool = True) -> OnlineResult:
  """Trains ``num_students`` students of ``cfg.model`` together by online distillation.

  ``rule="dml"``: Deep Mutual Learning (Zhang et al. 2018), ``CE + mean KL to the peers``,
  ``T = 1`` by default. ``rule="codistill"``: co-distillation (Anil et al. 2018),
  ``CE + w·T²·KL`` (``w = distill_weight``, default 1) with the peers' term off for the first
  ``burn_in_steps`` steps. Anil et al. exchange stale checkpoints between workers; here the
  cohort trains in one step, so the peers' predictions are always current.
  Every student uses ``cfg``'s optimizer, schedule, epochs and augmentation; student ``k``
  starts from seed ``seed + STUDENT_SEED_STRIDE·k``; ``seed`` also draws the data order, the
  augmentation and dropout, as in :func:`kdjax.train.train_student`.
  """
  check_online(num_students, rule, distill_weight, temperature, burn_in_steps)
  data.require_plain_images("online cohorts")
  refuse_compression(cfg, "online cohorts")
  graphdef, params, rest = create_students(cfg.model, num_classes=data.num_classes, input_shape=data.image_shape,
                                           seeds=student_seeds(seed, num_students), **cfg.model_options())
  per_epoch = steps_per_epoch(len(data.train_labels), cfg.batch_size)
  tx = run_optimizer(cfg, per_epoch)
  state = init_online_state(params, rest, tx, jax.random.fold_in(jax.random.key(seed), 1))
  step = make_online_step(graphdef, tx, num_students, rule=rule, distill_weight=distill_weight, temperature=temperature,
                          burn_in_steps=burn_in_steps, jitter_pixels=cfg.jitter, hflip=cfg.hflip)
  eval_step = make_online_eval_step(graphdef)
  result = fit(state, step, None, data, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed,
               desc=desc or f"{rule} {num_students}x{cfg.model} seed {seed}", log_path=log_path,
               log_fields=log_fields, progress=progress,
               evaluate_fn=lambda s, x, y: evaluate_online(eval_step, s.params, s.rest, x, y))
  students = []
  for k in range(num_students):
    own = student_state(result.state, k)
    test = {m: result.test[f"{m}/{k}"] for m in ("accuracy", "errors", "loss", "top_class_share")}
    students.append(TrainedModel(cfg.model, data.num_classes, data.image_shape, graphdef, own.params, own.rest,
                                 FitResult(own, result.history, test, result.wall_s), {}))
  return OnlineResult(rule, cfg.model, num_students, distill_weight, temperature, burn_in_steps, students, result)
