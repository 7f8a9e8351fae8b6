"""The jitted train and eval steps.

``train_step(state, teacher_vars, batch) -> (state, metrics)`` is compiled once:
the teacher's variables are an argument (never closed over, so they are not
baked into the program as constants), run in inference mode under
``stop_gradient``; only the student state is differentiated, updated and donated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kdjax.compress import fake_quantize
from kdjax.data.augment import augment, padded_batches, to_float
from kdjax.methods import Method, call_method
from kdjax.models.functional import apply_model, compute_dtype
from kdjax.robustness import pgd
from kdjax.train.state import TrainState, trainables
from kdjax.train.teachers import run_teachers, teacher_groups


def teacher_variables(params, rest) -> dict[str, Any]:
  """The teacher's variables as the step takes them."""
  return {"params": params, "rest": rest}


def update_student(graphdef, tx: optax.GradientTransformation, method: Method, state: TrainState, teacher, x,
                   batch, *, rng, k_drop, k_method, lr_scale=None, ema_update=None, dtype=None,
                   x_u=None, teacher_u=None, fake_quant: bool = False) -> tuple[TrainState, dict]:
  """One optimizer step of the student and the method's own parts on the augmented images ``x``,
  given the teacher's outputs: the body every train step shares (:func:`make_train_step`, and
  the sweep's vmapped step, which runs it once per student).

  ``lr_scale`` multiplies the optimizer's update (the learning rate, for an optimizer built with
  ``learning_rate=1``; SGD's and AdamW's updates are linear in it). ``ema_update(ema, new)`` gives
  the new moving average from the updated ``{"params", "rest"}``. Returns ``(state, metrics)``; a
  non-finite loss, gradient or update keeps the old state (step and key still advance),
  ``finite = False``. ``dtype`` is the student's compute dtype (mixed precision, see
  :func:`kdjax.models.functional.apply_model`).

  ``x_u`` are unlabelled images (another domain's, see ``ArrayDataset.unlabelled_images``): the
  student runs on ``x`` and ``x_u`` as one batch (batch statistics over both), and the method
  finds its outputs on them in ``batch["unlabelled_student"]`` and the teacher's (``teacher_u``)
  in ``batch["unlabelled_teacher"]``; loss, accuracy and the method's main inputs stay ``x``'s.

  A method with an ``adversary`` (:mod:`kdjax.methods.adversarial`) gets PGD examples of ``x``
  against the student before this update (inference mode, cross-entropy on the labels, no gradient
  through the attack; its random start drawn from ``k_method``); the student runs on them in a
  training-mode pass of its own after the clean one (as ARD's reference code: a BatchNorm student
  normalizes them with their own batch statistics, and its running statistics see both), and the
  method finds its outputs on them in
  ``batch["adversarial_student"]``.

  ``fake_quant`` runs the student with its kernels and embeddings rounded to int8 per output
  channel in the forward pass and straight-through gradients to the float weights
  (:func:`kdjax.compress.fake_quantize`): quantization-aware training.
  """
  b = x.shape[0]
  as_run = fake_quantize if fake_quant else (lambda p: p)  # the weights the student computes with
  x_adv = None
  adversary = getattr(method, "adversary", None)
  if adversary is not None:
    def student_logits(z):
      return apply_model(graphdef, as_run(state.params), state.rest, z, train=False, dtype=dtype)[0]
    x_adv = jax.lax.stop_gradient(pgd(student_logits, jax.random.fold_in(k_method, 1 << 20), x, batch["label"],
                                      adversary.eps, steps=adversary.steps, step_size=adversary.step_size))

  def loss_fn(trainable):
    params = as_run(trainable["student"])
    inputs = x if x_u is None else jnp.concatenate([x, x_u])
    logits, feats, new_rest = apply_model(graphdef, params, state.rest, inputs, train=True, rngs=k_drop, dtype=dtype)
    extra = {}
    if x_u is not None:
      extra = {"unlabelled_student": jax.tree.map(lambda a: a[b:], (logits, feats)), "unlabelled_teacher": teacher_u}
      logits, feats = jax.tree.map(lambda a: a[:b], (logits, feats))
    if x_adv is not None:  # a pass of its own, as the references: batch statistics of the attacked images alone
      adv_logits, adv_feats, new_rest = apply_model(graphdef, params, new_rest, x_adv, train=True,
                                                    rngs=jax.random.fold_in(k_drop, 1), dtype=dtype)
      extra["adversarial_student"] = (adv_logits, adv_feats)
    loss_B, terms, method_state = call_method(method, logits, feats, teacher,
                                              {**batch, **extra, "step": state.step, "key": k_method},
                                              trainable["method"], state.method_state)
    return jnp.mean(loss_B), (logits, terms, new_rest, jax.lax.stop_gradient(method_state))

  trainable = trainables(state.params, state.method_params)
  (loss, (logits, terms, new_rest, method_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
  updates, opt_state = tx.update(grads, state.opt_state, trainable)
  if lr_scale is not None:
    updates = jax.tree.map(lambda u: lr_scale * u, updates)
  new_trainable = optax.apply_updates(trainable, updates)
  grad_norm = optax.tree.norm(grads)
  # A finite loss and gradient can still make an update that overflows (a huge learning rate).
  update_norm = optax.tree.norm(updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
  ema = state.ema if ema_update is None else ema_update(state.ema, teacher_variables(new_trainable["student"], new_rest))
  updated = TrainState(new_trainable["student"], new_rest, opt_state, state.step + 1, rng,
                       new_trainable["method"], method_state, ema)
  kept = state._replace(step=state.step + 1, rng=rng)
  new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), updated, kept)
  predicted = jnp.argmax(logits, -1)
  metrics = {
      "loss": loss,
      "accuracy": jnp.mean(predicted == batch["label"]),
      "grad_norm": grad_norm,
      "update_norm": update_norm,
      "finite": finite,
      **{k: jnp.mean(v) for k, v in terms.items()},
  }
  if isinstance(teacher, dict):
    metrics.update({f"agreement/{n}": jnp.mean(predicted == jnp.argmax(t[0], -1)) for n, t in teacher.items()})
  elif teacher is not None:
    metrics["teacher_agreement"] = jnp.mean(predicted == jnp.argmax(teacher[0], -1))
  return new_state, metrics


def make_train_step(graphdef, tx: optax.GradientTransformation, method: Method, *,
                    teacher_graphdef=None, jitter_pixels: int = 0, hflip: bool = False,
                    ema_decay: float | None = None, precision: str = "fp32", steps_per_call: int = 1,
                    cached_teacher: bool = False, fake_quant: bool = False) -> Callable:
  """Builds the jitted student step for ``method``.

  The method's own learnable parts (``state.method_params``) are differentiated
  and updated with the student. Augmentation (``jitter_pixels`` > 0, ``hflip``) runs on the device; the
  teacher sees the same augmented view as the student (a mean teacher its own). A step whose loss, gradient or update is not
  finite leaves the state unchanged and reports ``finite = False``, so the last
  good state survives for the loop to keep.

  Teachers: ``teacher_graphdef`` is one graphdef (``teacher_vars`` one teacher's variables), a
  dict ``{name: graphdef}`` for a multi-teacher method (``teacher_vars`` the same names' variables;
  same-architecture teachers run stacked under one ``vmap``, see :mod:`kdjax.train.teachers`), or
  ``None``. ``ema_decay`` makes the teacher the exponential moving average of the student itself
  (mean teacher, Tarvainen & Valpola 2017): kept in ``state.ema``, updated after every step as
  ``ema ← d·ema + (1 − d)·student``, and shown its own augmentation draw of the batch (the
  paper's two noise draws; with augmentation off both see the same images); ``teacher_vars`` is
  then ``None``. ``cached_teacher=True`` takes the teacher's outputs from the batch instead
  (``batch["teacher"] = {"logits", "feats"}``, see :mod:`kdjax.train.teacher_cache`: offline KD)
  and runs no teacher; ``teacher_vars`` is then ``None``.

  Speed switches (none changes the result beyond floating-point precision):

  - ``precision="bf16"``: the student and teacher compute in bfloat16; parameters, optimizer
    state and the loss stay float32 (:func:`kdjax.models.functional.apply_model`).
  - ``steps_per_call=S > 1``: the step takes ``S`` stacked batches (every leaf of ``batch`` with a
    leading axis of ``S``; a shorter stack compiles once more) and runs them as one ``lax.scan``,
    returning metrics with that leading axis. The teacher does not depend on the student, so its
    forward pass for all ``S`` batches runs first, as one batch of ``S·B`` images (not for a mean
    teacher, which changes with every step). After a non-finite step the rest of the stack leaves
    the state as it was, so the state returned is the last good one.
  - The state is donated to the step (its buffers are reused for the new state).

  ``fake_quant=True`` trains the student as its int8 version would compute (quantization-aware
  training or distillation, see :func:`update_student`); evaluate it with
  ``make_eval_step(graphdef, fake_quant=True)``, and store it with
  :func:`kdjax.compress.quantize_params`.

  Returns ``step(state, teacher_vars, batch) -> (state, metrics)``, jitted with
  the state donated; ``batch`` holds ``"image"``, ``"label"`` and, for methods with a memory bank,
  ``"index"`` (the examples' positions in the training set); optionally ``"unlabelled"`` (images
  with no labels, e.g. of a target domain: the student and teacher also run on them, see
  :func:`update_student`) and ``"teacher_image"`` (what the teacher sees of each example instead
  of ``"image"``: cross-modal distillation).
  """
  dtype = compute_dtype(precision)
  if not isinstance(steps_per_call, int) or steps_per_call < 1:
    raise ValueError(f"steps_per_call must be an integer >= 1, got {steps_per_call!r}")
  if cached_teacher:
    if teacher_graphdef is not None or ema_decay is not None:
      raise ValueError("cached_teacher takes the teacher's outputs from the batch: give no teacher_graphdef "
                       "or ema_decay")
    if not getattr(method, "needs_teacher", False) or getattr(method, "multi_teacher", False):
      raise ValueError("cached_teacher needs a single-teacher method")
  multi = isinstance(teacher_graphdef, dict)
  method_multi = getattr(method, "multi_teacher", False)
  if multi:
    teacher_groups(teacher_graphdef)  # names and emptiness, checked before anything is traced
  if teacher_graphdef is not None and not getattr(method, "needs_teacher", False):
    raise ValueError("this method uses no teacher, but a teacher was given (train it with train_student)")
  if multi and not method_multi:
    raise ValueError(f"this method takes one teacher, but {len(teacher_graphdef)} teachers were given; for several "
                     "teachers use kdjax.methods.multi_teacher_kd, or per_teacher to apply a single-teacher method "
                     "to each")
  if method_multi and not multi and (teacher_graphdef is not None or ema_decay is not None):
    raise ValueError("this method takes several teachers: give them as a dict {name: teacher}"
                     + (", not a moving average of the student" if ema_decay is not None else ""))
  if ema_decay is not None:
    if teacher_graphdef is not None:
      raise ValueError("ema_decay makes the student its own teacher; do not also give a teacher")
    if not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
    teacher_graphdef = graphdef
  if getattr(method, "needs_teacher", False) and teacher_graphdef is None and not cached_teacher:
    raise ValueError("this method needs a teacher, but no teacher was given")

  def ema_update(ema, new):  # ema <- d·ema + (1 - d)·student, on the floating-point variables
    return jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p
                        if jnp.issubdtype(p.dtype, jnp.floating) else p, ema, new)

  def run_teacher(teacher_vars, x):
    """The teacher's outputs on ``x``: inference mode, gradient stopped."""
    if multi:
      return run_teachers(teacher_graphdef, teacher_vars, x, dtype=dtype)
    t_logits, t_feats, _ = apply_model(teacher_graphdef, teacher_vars["params"], teacher_vars["rest"], x,
                                       train=False, dtype=dtype)
    return jax.lax.stop_gradient((t_logits, t_feats))

  def split_keys(rng):  # the next state's key, then augmentation, dropout and the method's keys
    return jax.random.split(rng, 4)

  def update(state, teacher, x, batch, rng, k_drop, k_method, x_u=None, teacher_u=None):
    batch = {k: v for k, v in batch.items() if k not in ("unlabelled", "teacher_image")}
    return update_student(graphdef, tx, method, state, teacher, x, batch, rng=rng, k_drop=k_drop,
                          k_method=k_method, ema_update=ema_update if ema_decay is not None else None,
                          dtype=dtype, x_u=x_u, teacher_u=teacher_u, fake_quant=fake_quant)

  def views(k_aug, batch):
    """The student's augmented images, the teacher's (its own images of the same examples where
    the batch has them; a mean teacher's own draw) and the unlabelled ones (or None)."""
    x = augment(k_aug, batch["image"], jitter_pixels, hflip)
    if "teacher_image" in batch:  # the same draws: the same crop and flip of each example
      x_t = augment(k_aug, batch["teacher_image"], jitter_pixels, hflip)
    elif ema_decay is not None:  # mean teacher's consistency: the average sees its own draw
      x_t = augment(jax.random.fold_in(k_aug, 1), batch["image"], jitter_pixels, hflip)
    else:
      x_t = x
    x_u = (augment(jax.random.fold_in(k_aug, 2), batch["unlabelled"], jitter_pixels, hflip)
           if "unlabelled" in batch else None)
    return x, x_t, x_u

  def teacher_on(teacher_vars, x_t, x_u):
    """The teacher's outputs on ``x_t`` and on ``x_u`` (None without), in one call."""
    if x_u is None:
      return run_teacher(teacher_vars, x_t), None
    both = run_teacher(teacher_vars, jnp.concatenate([x_t, x_u]))
    b = x_t.shape[0]
    return jax.tree.map(lambda a: a[:b], both), jax.tree.map(lambda a: a[b:], both)

  def step(state: TrainState, teacher_vars, batch):
    rng, k_aug, k_drop, k_method = split_keys(state.rng)
    x, x_t, x_u = views(k_aug, batch)
    teacher = teacher_u = None
    if cached_teacher:
      teacher = (batch["teacher"]["logits"], batch["teacher"]["feats"])
    elif teacher_graphdef is not None:
      teacher, teacher_u = teacher_on(state.ema if ema_decay is not None else teacher_vars, x_t, x_u)
    return update(state, teacher, x, batch, rng, k_drop, k_method, x_u, teacher_u)

  def one_step(state: TrainState, teacher_vars, batch):
    if batch["label"].ndim != 1:
      raise ValueError(f"this step takes one batch (labels [B]), got labels of shape {batch['label'].shape}; "
                       "build the step with steps_per_call > 1 for stacked batches")
    return step(state, teacher_vars, batch)

  def stacked_steps(state: TrainState, teacher_vars, batches):
    if batches["label"].ndim != 2:
      raise ValueError(f"this step takes stacked batches (labels [S, B], steps_per_call={steps_per_call}), got "
                       f"labels of shape {batches['label'].shape}")
    s, b = batches["label"].shape
    hoist = teacher_graphdef is not None and ema_decay is None and not cached_teacher

    def guarded(body):
      """Runs ``body`` only while every step so far was finite; afterwards the state stands still."""

      def wrapped(carry, inp):
        state, ok = carry
        new_state, metrics = body(state, inp)
        new_state = jax.tree.map(lambda a, b_: jnp.where(ok, a, b_), new_state, state)
        return (new_state, ok & metrics["finite"]), metrics

      return wrapped

    if not hoist:
      (state, _), metrics = jax.lax.scan(guarded(lambda st, batch: step(st, teacher_vars, batch)),
                                         (state, jnp.array(True)), batches)
      return state, metrics

    # The same keys, in the same order, as ``s`` single steps would split from ``state.rng``.
    def chain(rng, _):
      keys = split_keys(rng)
      return keys[0], keys

    _, keys = jax.lax.scan(chain, state.rng, None, length=s)
    x, x_t, x_u = jax.vmap(views)(keys[:, 1], batches)
    # The teacher's work for the whole stack as one large batch, before the student's steps.
    flat = lambda a: None if a is None else a.reshape(-1, *a.shape[2:])  # noqa: E731
    teacher, teacher_u = teacher_on(teacher_vars, flat(x_t), flat(x_u))
    teacher, teacher_u = jax.tree.map(lambda a: a.reshape(s, -1, *a.shape[1:]), (teacher, teacher_u))

    def body(st, inp):
      teacher_i, teacher_u_i, x_i, x_u_i, batch_i, k = inp
      return update(st, teacher_i, x_i, batch_i, k[0], k[2], k[3], x_u_i, teacher_u_i)

    (state, _), metrics = jax.lax.scan(guarded(body), (state, jnp.array(True)),
                                       (teacher, teacher_u, x, x_u, batches, keys))
    return state, metrics

  return jax.jit(one_step if steps_per_call == 1 else stacked_steps, donate_argnums=0)


def make_eval_step(graphdef, *, fake_quant: bool = False) -> Callable:
  """Jitted ``eval_step(params, rest, images_uint8, labels, mask) -> (correct, loss_sum)``; with
  ``fake_quant``, of the model with its weights rounded to int8 (what
  :func:`kdjax.compress.quantize_params` stores)."""

  def eval_step(params, rest, images, labels, mask):
    params = fake_quantize(params) if fake_quant else params
    logits, _, _ = apply_model(graphdef, params, rest, to_float(images), train=False)
    logits = logits.astype(jnp.float32)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & mask)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return correct, jnp.sum(jnp.where(mask, nll, 0.0))

  return jax.jit(eval_step)


def evaluate(eval_step: Callable, params, rest, images, labels, batch_size: int = 1000, *,
             mesh=None) -> dict[str, float]:
  """Accuracy, error count and mean loss over a whole split, in fixed-size padded batches; with a
  ``mesh``, each batch is split over its ``"data"`` axis (the batch size rounded up to a multiple
  of it) and the counts are reduced over every device."""
  from kdjax import parallel
  n = len(labels)
  if mesh is not None:
    k = parallel.data_size(mesh)
    batch_size = -(-min(batch_size, n) // k) * k
  correct = jnp.zeros((), jnp.int32)
  loss_sum = jnp.zeros((), jnp.float32)
  for xb, yb, mask in padded_batches(images, labels, batch_size):
    if mesh is not None and not parallel.trivial(mesh):
      xb, yb, mask = parallel.host_batch((xb, yb, mask), mesh)
    c, l = eval_step(params, rest, xb, yb, mask)
    correct, loss_sum = correct + c, loss_sum + l
  correct, loss_sum = jax.device_get((correct, loss_sum))
  return {"accuracy": float(correct) / n, "errors": int(n - correct), "loss": float(loss_sum) / n}
