"""K students trained as one program: the single run's step under ``jax.vmap``.

A cohort is K :class:`~kdjax.train.state.TrainState` stacked along a leading axis (parameters,
batch statistics, optimizer and method state, step and keys). They share one data stream: the
views of each batch are drawn once, from the stream the students hold in common
(``state.data_rng``, the same key in every slice), and a fixed teacher runs once per batch for
the whole cohort. Each student then takes :func:`kdjax.train.step.student_step` with its own
keys, its own hyperparameters (traced values: one program serves any T, α, β or learning rate)
and its own finite guard. So student k of a cohort is, up to float rounding of batched matmuls,
the single run :func:`kdjax.train.distill` makes with that student's seed and the cohort's data
seed: a sweep compares exactly the runs ``kdjax distill`` would make.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from kdjax.methods import Method
from kdjax.models.functional import compute_dtype
from kdjax.train.inputs import Inputs, make_views, split_keys
from kdjax.optim import scale_updates
from kdjax.train.state import TrainState
from kdjax.train.step import Recipe, check_teachers, student_step
from kdjax.train.teachers import stack_trees, teacher_outputs


def make_cohort_step(graphdef, tx: optax.GradientTransformation, make: Callable[[dict], Method], *,
                     teacher_graphdef=None, jitter_pixels: int = 0, hflip: bool = False,
                     precision: str = "fp32", steps_per_epoch: int | None = None,
                     epochs: int | None = None) -> Callable:
  """Jitted ``step(state, teacher_vars, batch, hparams) -> (state, metrics)`` for stacked students.

  ``make(hp)`` builds student k's method from its hyperparameters ``hp`` (student k's slice of
  ``hparams``, a dict of ``[K]`` arrays; ``hparams["learning_rate"]`` scales the updates of ``tx``,
  built with learning rate 1). Metrics are ``[K]`` vectors (``loss/students``, ...,
  ``skipped/students`` = 1 where a student's step was not finite and was refused) and their
  means; ``finite`` is always true: one student's bad step never stops the others.
  ``steps_per_epoch`` and ``epochs`` are the run's length, as :func:`kdjax.train.make_train_step` takes them.
  """
  dtype = compute_dtype(precision)
  views = make_views(jitter_pixels, hflip)

  def one(state: TrainState, inputs: Inputs, batch, hp):
    method = make({k: v for k, v in hp.items() if k != "learning_rate"})
    recipe = Recipe(graphdef, method, dtype, steps_per_epoch=steps_per_epoch, epochs=epochs)
    return student_step(recipe, scale_updates(tx, hp["learning_rate"]), state, inputs, batch)

  def step(state: TrainState, teacher_vars, batch, hparams):
    keys = split_keys(state.data_rng[0])  # the cohort's one data stream
    inputs = views(keys[1], batch)
    if teacher_graphdef is not None:
      teacher, teacher_u = teacher_outputs(teacher_graphdef, teacher_vars, inputs.x_t, inputs.x_u, dtype=dtype)
      inputs = inputs._replace(teacher=teacher, teacher_u=teacher_u)
    new_state, m = jax.vmap(one, in_axes=(0, None, None, 0))(state, inputs, batch, hparams)
    new_state = new_state._replace(data_rng=jnp.broadcast_to(keys[0], state.data_rng.shape))
    # Means for the progress bar, and one [K] vector per metric: a few arrays to fetch per step, not K·M scalars.
    metrics = {name: jnp.mean(v) for name, v in m.items() if name != "finite"}
    metrics.update({f"{name}/students": v for name, v in m.items() if name != "finite"})
    metrics["skipped/students"] = 1.0 - m["finite"].astype(jnp.float32)
    metrics["finite"] = jnp.array(True)
    return new_state, metrics

  return jax.jit(step, donate_argnums=0)


def stack_states(states: Sequence[TrainState]) -> TrainState:
  """K single-run states (of one architecture and method) as one cohort state."""
  return stack_trees(list(states))


def check_cohort_teacher(method: Method, teacher_graphdef) -> None:
  """A cohort's students share one fixed teacher, or none."""
  if isinstance(teacher_graphdef, dict):
    raise ValueError("a cohort's students share one teacher; several teachers train one run at a time")
  check_teachers(method, teacher_graphdef, ema_decay=None, cached_teacher=False)


