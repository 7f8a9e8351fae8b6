"""The student's train state: a plain pytree of arrays, donated to every step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kdjax.optim import make_optimizer  # noqa: F401  (the train package's optimizer, built from a config)


class TrainState(NamedTuple):
  params: Any  # nnx.State of the student's trainable parameters
  rest: Any  # nnx.State of every other variable (batch statistics, ...)
  opt_state: optax.OptState  # over trainables(state): the student and the method's own parts
  step: jax.Array  # int32 scalar
  rng: jax.Array  # typed PRNG key for augmentation and dropout
  method_params: Any = None  # the method's learnable parts (FitNet regressor, ...); {} if none
  method_state: Any = None  # the method's non-differentiated state (CRD memory bank, ...); {} if none
  ema: Any = None  # {"params", "rest"}: the student's moving average, the teacher of a mean-teacher run
  # The data stream's key (augmentation draws), apart from ``rng`` (dropout, the method's draws). A single
  # run starts both from the same key, so they stay equal; a sweep's students share one data stream and
  # differ in their own. ``None``: the data stream is ``rng`` itself.
  data_rng: Any = None


def trainables(params, method_params) -> dict[str, Any]:
  """What the optimizer updates: the student's parameters and the method's own."""
  return {"student": params, "method": method_params}


def init_train_state(params, rest, tx: optax.GradientTransformation, rng: jax.Array,
                     method_params=None, method_state=None, *, ema: bool = False,
                     data_rng: jax.Array | None = None) -> TrainState:
  """The state before the first step; ``ema=True`` starts a moving average of the student
  (a copy of its variables) for a mean-teacher run. ``data_rng`` starts the data stream
  (augmentation), by default from ``rng`` itself (see :class:`TrainState`)."""
  method_params = {} if method_params is None else method_params
  return TrainState(params=params, rest=rest, opt_state=tx.init(trainables(params, method_params)),
                    step=jnp.zeros((), jnp.int32), rng=rng, method_params=method_params,
                    method_state={} if method_state is None else method_state,
                    ema={"params": jax.tree.map(jnp.copy, params), "rest": jax.tree.map(jnp.copy, rest)} if ema else None,
                    data_rng=jnp.copy(rng) if data_rng is None else data_rng)  # a buffer of its own: the state is donated
