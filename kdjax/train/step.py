"""The one update core, and the student's step composed around it.

    state, metrics = update(tx, state, loss_fn)

:func:`update` is the only place where gradients are taken, the optimizer is applied and a
non-finite step is refused (:func:`keep_if_finite`). Everything else is a piece around it:

- :func:`student_step` — one student's step given its inputs: the attack of an adversarial
  method, the student's forward passes (clean, unlabelled, attacked), the method's loss, then
  :func:`update`. A single run (:func:`kdjax.train.make_train_step`), a sweep's vmapped students
  (:mod:`kdjax.train.cohort`) all run it; an online cohort runs :func:`update` around its stacked
  students (:mod:`kdjax.train.online`).
- :class:`Recipe` — what a step compiles in: the student's graphdef, the method, the compute
  dtype (precision) and the parameter transform (fake quantization).
- input transforms and keys (:mod:`kdjax.train.inputs`), teacher sources
  (:mod:`kdjax.train.teachers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kdjax.attacks import pgd
from kdjax.compress import fake_quantize
from kdjax.methods import Method, call_method
from kdjax.models.functional import apply_model, compute_dtype
from kdjax.train.inputs import (Inputs, advance_data, chain_keys, data_stream, make_views, method_batch,
                                split_keys)
from kdjax.train.state import TrainState, trainables
from kdjax.train.teachers import cached_outputs, teacher_groups, teacher_outputs, teacher_variables


def keep_if_finite(new, old, finite: jax.Array):
  """``new`` where ``finite`` holds, else ``old``, leaf by leaf: the finite guard."""
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


def update(tx: optax.GradientTransformation, state: TrainState, loss_fn: Callable) -> tuple[TrainState, dict]:
  """One optimizer step of ``state``'s trainables (the student's parameters and the method's own,
  :func:`kdjax.train.state.trainables`).

  ``loss_fn(trainable) -> (loss, (rest, method_state, metrics))``: the scalar to minimise, the
  student's new non-trainable variables (batch statistics), the method's new state, and metrics
  to report (they may override ``loss``). A loss, gradient or update that is not finite leaves the
  state as it was and reports ``finite = False``. Step count and keys are the caller's to advance.
  Returns ``(state, metrics)`` with ``loss``, ``grad_norm``, ``update_norm`` and ``finite``.
  """
  trainable = trainables(state.params, state.method_params)
  (loss, (rest, method_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  new = optax.apply_updates(trainable, updates)
  grad_norm = optax.tree.norm(grads)
  update_norm = optax.tree.norm(updates)  # a finite gradient can still make an update that overflows
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
  updated = state._replace(params=new["student"], rest=rest, opt_state=opt_state, method_params=new["method"],
                           method_state=jax.lax.stop_gradient(method_state))
  metrics = {"loss": loss, "grad_norm": grad_norm, "update_norm": update_norm, **metrics, "finite": finite}
  return keep_if_finite(updated, state, finite), metrics


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a student's step compiles in. ``as_run`` maps the trainable parameters to the weights
  the forward pass computes with (e.g. :func:`kdjax.compress.fake_quantize`: quantization-aware
  training, straight-through gradients); ``dtype`` is the compute dtype (mixed precision, see
  :func:`kdjax.models.functional.apply_model`)."""

  graphdef: Any
  method: Method
  dtype: Any = None
  as_run: Callable | None = None
  steps_per_epoch: int | None = None  # the run's length, for schedules in epochs (None: not known)
  epochs: int | None = None

  def weights(self, params):
    return params if self.as_run is None else self.as_run(params)

  def progress(self, step: jax.Array) -> dict[str, Any]:
    """What the method sees of the run's length: ``"epoch"``, the epochs done before this step (a
    float: 2.5 is half-way through the third), and ``"epochs"``, the run's length (a Python int);
    nothing where the step was built without them."""
    if self.steps_per_epoch is None or self.epochs is None:
      return {}
    return {"epoch": step / self.steps_per_epoch, "epochs": self.epochs}


def attacked_images(recipe: Recipe, state: TrainState, x: jax.Array, labels: jax.Array, key: jax.Array):
  """PGD examples of ``x`` against the student as it is before this update (inference mode,
  cross-entropy on the labels, no gradient through the attack), for a method with an
  ``adversary``; ``None`` for any other."""
  adversary = recipe.method.adversary
  if adversary is None:
    return None

  def student_logits(z):
    return apply_model(recipe.graphdef, recipe.weights(state.params), state.rest, z, train=False,
                       dtype=recipe.dtype)[0]

  return jax.lax.stop_gradient(pgd(student_logits, jax.random.fold_in(key, 1 << 20), x, labels, adversary.eps,
                                   steps=adversary.steps, step_size=adversary.step_size))


def student_outputs(recipe: Recipe, params, rest, inputs: Inputs, x_adv, k_drop):
  """The student's training-mode outputs ``(logits, feats, rest, extra)``: on ``x`` and the
  unlabelled ``x_u`` as one batch (batch statistics over both; their outputs go to the method as
  ``extra["unlabelled_student"]`` with the teacher's as ``extra["unlabelled_teacher"]``), then on
  the attacked images in a pass of their own (as ARD's reference code: their own batch statistics),
  as ``extra["adversarial_student"]``."""
  b = inputs.x.shape[0]
  x = inputs.x if inputs.x_u is None else jnp.concatenate([inputs.x, inputs.x_u])
  logits, feats, rest = apply_model(recipe.graphdef, params, rest, x, train=True, rngs=k_drop, dtype=recipe.dtype)
  extra = {}
  if inputs.x_u is not None:
    extra = {"unlabelled_student": jax.tree.map(lambda a: a[b:], (logits, feats)),
             "unlabelled_teacher": inputs.teacher_u}
    logits, feats = jax.tree.map(lambda a: a[:b], (logits, feats))
  if x_adv is not None:
    adv_logits, adv_feats, rest = apply_model(recipe.graphdef, params, rest, x_adv, train=True,
                                              rngs=jax.random.fold_in(k_drop, 1), dtype=recipe.dtype)
    extra["adversarial_student"] = (adv_logits, adv_feats)
  return logits, feats, rest, extra


def agreement(predicted: jax.Array, teacher) -> dict[str, jax.Array]:
  """How often the student's top class is each teacher's."""
  if isinstance(teacher, dict):
    return {f"agreement/{n}": jnp.mean(predicted == jnp.argmax(t[0], -1)) for n, t in teacher.items()}
  return {} if teacher is None else {"teacher_agreement": jnp.mean(predicted == jnp.argmax(teacher[0], -1))}


def student_step(recipe: Recipe, tx: optax.GradientTransformation, state: TrainState, inputs: Inputs,
                 batch: dict) -> tuple[TrainState, dict]:
  """One step of one student on ``inputs`` (its views and its teacher's outputs): the method's
  loss on the student's outputs, then :func:`update`. Its own keys (dropout, the method's draws,
  the attack's start) come from ``state.rng``; the step count and that key advance even when the
  step is refused as non-finite."""
  rng, _, k_drop, k_method = split_keys(state.rng)
  x_adv = attacked_images(recipe, state, inputs.x, batch["label"], k_method)
  context = {**method_batch(batch), "step": state.step, "key": k_method, **recipe.progress(state.step)}

  def loss_fn(trainable):
    logits, feats, rest, extra = student_outputs(recipe, recipe.weights(trainable["student"]), state.rest,
                                                 inputs, x_adv, k_drop)
    loss_B, terms, method_state = call_method(recipe.method, logits, feats, inputs.teacher, {**context, **extra},
                                              trainable["method"], state.method_state)
    predicted = jnp.argmax(logits, -1)
    metrics = {"accuracy": jnp.mean(predicted == batch["label"]), **{k: jnp.mean(v) for k, v in terms.items()},
               **agreement(predicted, inputs.teacher)}
    return jnp.mean(loss_B), (rest, method_state, metrics)

  new_state, metrics = update(tx, state, loss_fn)
  return new_state._replace(step=state.step + 1, rng=rng), metrics


def check_teachers(method: Method, teacher_graphdef, *, ema_decay: float | None, cached_teacher: bool) -> None:
  """The method, its teachers and the teacher source agree, before anything is traced."""
  if not isinstance(method, Method):
    raise TypeError(f"a train step takes a kdjax.methods.Method (make_method(name, ...), or Method(loss_fn) for a "
                    f"loss function of your own), got {type(method).__name__}")
  multi = isinstance(teacher_graphdef, dict)
  if cached_teacher:
    if teacher_graphdef is not None or ema_decay is not None:
      raise ValueError("cached_teacher takes the teacher's outputs from the batch: give no teacher_graphdef "
                       "or ema_decay")
    if not method.needs_teacher or method.multi_teacher:
      raise ValueError("cached_teacher needs a single-teacher method")
  if multi:
    teacher_groups(teacher_graphdef)  # names and emptiness
  if teacher_graphdef is not None and not method.needs_teacher:
    raise ValueError("this method uses no teacher, but a teacher was given (train it with train_student)")
  if multi and not method.multi_teacher:
    raise ValueError(f"this method takes one teacher, but {len(teacher_graphdef)} teachers were given; for several "
                     "teachers use kdjax.methods.multi_teacher_kd, or per_teacher to apply a single-teacher method "
                     "to each")
  if method.multi_teacher and not multi and (teacher_graphdef is not None or ema_decay is not None):
    raise ValueError("this method takes several teachers: give them as a dict {name: teacher}"
                     + (", not a moving average of the student" if ema_decay is not None else ""))
  if ema_decay is not None:
    if teacher_graphdef is not None:
      raise ValueError("ema_decay makes the student its own teacher; do not also give a teacher")
    if not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
  elif method.needs_teacher and teacher_graphdef is None and not cached_teacher:
    raise ValueError("this method needs a teacher, but no teacher was given")


def follow_ema(decay: float, old: TrainState, new: TrainState, finite: jax.Array) -> TrainState:
  """``new`` with the moving average moved on, ``ema ← d·ema + (1 − d)·student`` on the
  floating-point variables, after a finite step (a refused step leaves it as it was)."""
  moved = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p if jnp.issubdtype(p.dtype, jnp.floating) else p,
                       old.ema, teacher_variables(new.params, new.rest))
  return new._replace(ema=keep_if_finite(moved, old.ema, finite))


def make_train_step(graphdef, tx: optax.GradientTransformation, method: Method, *,
                    teacher_graphdef=None, jitter_pixels: int = 0, hflip: bool = False,
                    ema_decay: float | None = None, precision: str = "fp32", steps_per_call: int = 1,
                    cached_teacher: bool = False, fake_quant: bool = False, steps_per_epoch: int | None = None,
                    epochs: int | None = None) -> Callable:
  """The jitted single-run step ``step(state, teacher_vars, batch) -> (state, metrics)``, the
  state donated: views of the batch (augmentation on the device, ``jitter_pixels`` and ``hflip``),
  the teacher source, then :func:`student_step`.

  Teacher sources: ``teacher_graphdef`` is one graphdef (``teacher_vars`` that teacher's
  variables) or a dict ``{name: graphdef}`` for a multi-teacher method (same-architecture teachers
  run stacked under one ``vmap``, :mod:`kdjax.train.teachers`), or ``None``; ``ema_decay`` makes
  the teacher the student's own moving average (mean teacher, Tarvainen & Valpola 2017; kept in
  ``state.ema`` and shown its own augmentation draw); ``cached_teacher`` reads the teacher's
  outputs from ``batch["teacher"]`` (offline KD, :mod:`kdjax.train.teacher_cache`). ``batch`` holds
  ``"image"``, ``"label"``, ``"index"`` and optionally ``"unlabelled"`` and ``"teacher_image"``
  (:func:`kdjax.train.inputs.make_views`).

  Switches that change nothing but floating-point precision and speed: ``precision="bf16"``
  (bfloat16 compute; parameters, optimizer state and loss stay float32), and
  ``steps_per_call=S > 1``: ``S`` stacked batches per call run as one ``lax.scan`` (metrics with a
  leading axis ``S``); a fixed teacher's forward pass for all ``S`` batches runs first, as one batch
  of ``S·B``. After a non-finite step the rest of the stack leaves the state as it was.
  ``fake_quant`` trains the student as its int8 version computes (:func:`kdjax.compress.fake_quantize`;
  evaluate it with ``make_eval_step(graphdef, fake_quant=True)``).
  ``steps_per_epoch`` and ``epochs`` tell a method whose schedule is in epochs (DKD's ramp) where the
  run stands (``batch["epoch"]``, ``batch["epochs"]``, :meth:`Recipe.progress`).
  """
  if not isinstance(steps_per_call, int) or steps_per_call < 1:
    raise ValueError(f"steps_per_call must be an integer >= 1, got {steps_per_call!r}")
  check_teachers(method, teacher_graphdef, ema_decay=ema_decay, cached_teacher=cached_teacher)
  recipe = Recipe(graphdef, method, compute_dtype(precision), fake_quantize if fake_quant else None,
                  steps_per_epoch, epochs)
  views = make_views(jitter_pixels, hflip, teacher_draw=ema_decay is not None)
  t_graphdef = graphdef if ema_decay is not None else teacher_graphdef

  def teach(state, teacher_vars, inputs: Inputs, batch) -> Inputs:
    if cached_teacher:
      return inputs._replace(teacher=cached_outputs(batch))
    if t_graphdef is None:
      return inputs
    teacher, teacher_u = teacher_outputs(t_graphdef, state.ema if ema_decay is not None else teacher_vars,
                                         inputs.x_t, inputs.x_u, dtype=recipe.dtype)
    return inputs._replace(teacher=teacher, teacher_u=teacher_u)

  def learn(state, inputs: Inputs, batch, keys):
    new_state, metrics = student_step(recipe, tx, state, inputs, batch)
    if ema_decay is not None:
      new_state = follow_ema(ema_decay, state, new_state, metrics["finite"])
    return advance_data(new_state, keys), metrics

  def one_step(state, teacher_vars, batch):
    if batch["label"].ndim != 1:
      raise ValueError(f"this step takes one batch (labels [B]), got labels of shape {batch['label'].shape}; "
                       "build the step with steps_per_call > 1 for stacked batches")
    keys = split_keys(data_stream(state))
    return learn(state, teach(state, teacher_vars, views(keys[1], batch), batch), batch, keys)

  def stacked_steps(state, teacher_vars, batches):
    if batches["label"].ndim != 2:
      raise ValueError(f"this step takes stacked batches (labels [S, B], steps_per_call={steps_per_call}), got "
                       f"labels of shape {batches['label'].shape}")
    keys = chain_keys(data_stream(state), batches["label"].shape[0])
    inputs = jax.vmap(views)(keys[:, 1], batches)
    hoist = t_graphdef is not None and ema_decay is None  # a fixed teacher: its work for the stack at once
    if hoist:  # [S, B, ...] flattened to one batch of S·B images for the teacher, then back
      flat = teach(state, teacher_vars, jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), inputs), batches)
      inputs = jax.tree.map(lambda a: a.reshape(batches["label"].shape[0], -1, *a.shape[1:]), flat)

    def body(carry, inp):
      state, ok = carry
      inputs_i, batch_i, keys_i = inp
      inputs_i = inputs_i if hoist else teach(state, teacher_vars, inputs_i, batch_i)
      new_state, metrics = learn(state, inputs_i, batch_i, keys_i)
      return (keep_if_finite(new_state, state, ok), ok & metrics["finite"]), metrics

    (state, _), metrics = jax.lax.scan(body, (state, jnp.array(True)), (inputs, batches, keys))
    return state, metrics

  return jax.jit(one_step if steps_per_call == 1 else stacked_steps, donate_argnums=0)
