"""The student's train state: a plain pytree of arrays, donated to every step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
  params: Any  # nnx.State of the student's trainable parameters
  rest: Any  # nnx.State of every other variable (batch statistics, ...)
  opt_state: optax.OptState  # over trainables(state): the student and the method's own parts
  step: jax.Array  # int32 scalar
  rng: jax.Array  # typed PRNG key for augmentation and dropout
  method_params: Any = None  # the method's learnable parts (FitNet regressor, ...); {} if none
  method_state: Any = None  # the method's non-differentiated state (CRD memory bank, ...); {} if none


def trainables(params, method_params) -> dict[str, Any]:
  """What the optimizer updates: the student's parameters and the method's own."""
  return {"student": params, "method": method_params}


def init_train_state(params, rest, tx: optax.GradientTransformation, rng: jax.Array,
                     method_params=None, method_state=None) -> TrainState:
  method_params = {} if method_params is None else method_params
  return TrainState(params=params, rest=rest, opt_state=tx.init(trainables(params, method_params)),
                    step=jnp.zeros((), jnp.int32), rng=rng, method_params=method_params,
                    method_state={} if method_state is None else method_state)


def make_optimizer(name: str, *, learning_rate: float, total_steps: int, momentum: float = 0.9,
                   weight_decay: float = 0.0, schedule: str = "cosine") -> optax.GradientTransformation:
  """SGD (momentum, optional decoupled-from-nothing L2 weight decay) or Adam(W), with a schedule."""
  if learning_rate <= 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  if schedule == "cosine":
    lr = optax.cosine_decay_schedule(learning_rate, decay_steps=max(total_steps, 1))
  elif schedule == "constant":
    lr = learning_rate
  else:
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                       optax.sgd(lr, momentum=momentum or None, nesterov=bool(momentum)))
  if name == "adam":
    return optax.adamw(lr, weight_decay=weight_decay)
  raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'")
