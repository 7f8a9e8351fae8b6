"""Library entry points: ``train_teacher``, ``train_student`` and ``distill``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from kdjax.config import TrainConfig
from kdjax.data.dataset import ArrayDataset
from kdjax.methods import Method, hinton_kd, init_method, supervised
from kdjax.models import create_model, feature_shapes, split_model
from kdjax.train.loop import FitResult, fit, steps_per_epoch
from kdjax.train.state import init_train_state, make_optimizer
from kdjax.train.steps import make_eval_step, make_train_step, teacher_variables


@dataclasses.dataclass
class TrainedModel:
  """A trained model as pytrees, with what it takes to run it again."""

  model: str
  num_classes: int
  input_shape: tuple[int, ...]
  graphdef: Any
  params: Any
  rest: Any
  fit: FitResult
  method_params: Any = None  # the distillation method's learnable parts after training, if any

  @property
  def variables(self) -> dict[str, Any]:
    return teacher_variables(self.params, self.rest)

  @property
  def test(self) -> dict[str, float]:
    return self.fit.test


def _train(data: ArrayDataset, cfg: TrainConfig, method: Method, *, seed: int, desc: str,
           teacher: TrainedModel | None = None, log_path: str | Path | None = None,
           log_fields: dict[str, Any] | None = None, progress: bool = True) -> TrainedModel:
  model = create_model(cfg.model, num_classes=data.num_classes, input_shape=data.image_shape, seed=seed,
                       **cfg.model_options())
  graphdef, params, rest = split_model(model)
  per_epoch = steps_per_epoch(len(data.train_labels), cfg.batch_size)
  tx = make_optimizer(cfg.optimizer, learning_rate=cfg.learning_rate, total_steps=cfg.epochs * per_epoch,
                      momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
                      decay_epochs=cfg.decay_epochs, steps_per_epoch=per_epoch)
  key = jax.random.key(seed)
  # The method's learnable parts and state, sized from the feature shapes before any data is seen.
  method_params, method_state = init_method(
      method, jax.random.fold_in(key, 2), feature_shapes(graphdef, params, rest, data.image_shape),
      feature_shapes(teacher.graphdef, teacher.params, teacher.rest, data.image_shape) if teacher else {},
      len(data.train_labels))
  state = init_train_state(params, rest, tx, jax.random.fold_in(key, 1), method_params, method_state)
  train_step = make_train_step(graphdef, tx, method, jitter_pixels=cfg.jitter, hflip=cfg.hflip,
                               teacher_graphdef=teacher.graphdef if teacher else None)
  result = fit(state, train_step, make_eval_step(graphdef), data, epochs=cfg.epochs,
               batch_size=cfg.batch_size, teacher_vars=teacher.variables if teacher else None,
               seed=seed, desc=desc, log_path=log_path, log_fields=log_fields, progress=progress)
  return TrainedModel(cfg.model, data.num_classes, data.image_shape, graphdef,
                      result.state.params, result.state.rest, result, result.state.method_params)


def train_teacher(data: ArrayDataset, cfg: TrainConfig, *, seed: int = 0, **kwargs) -> TrainedModel:
  """Trains a teacher on the labels (cross-entropy)."""
  kwargs.setdefault("desc", f"teacher {cfg.model} seed {seed}")
  return _train(data, cfg, supervised(), seed=seed, **kwargs)


def train_student(data: ArrayDataset, cfg: TrainConfig, *, seed: int = 0, **kwargs) -> TrainedModel:
  """Trains a student alone on the labels: the baseline that distillation must beat."""
  kwargs.setdefault("desc", f"student {cfg.model} seed {seed}")
  return _train(data, cfg, supervised(), seed=seed, **kwargs)


def check_teacher(teacher: TrainedModel, data: ArrayDataset) -> None:
  """The teacher must predict the data's classes from images of the data's shape."""
  if teacher.num_classes != data.num_classes:
    raise ValueError(
        f"teacher and student have different class counts: the teacher ({teacher.model}) predicts "
        f"{teacher.num_classes} classes, the student is built for {data.num_classes} ({data.name})")
  if tuple(teacher.input_shape) != tuple(data.image_shape):
    raise ValueError(f"the teacher ({teacher.model}) takes images of shape {teacher.input_shape}, "
                     f"but {data.name} has images of shape {data.image_shape}")


def distill(data: ArrayDataset, cfg: TrainConfig, teacher: TrainedModel, *, alpha: float | None = None,
            temperature: float | None = None, method: Method | None = None, seed: int = 0,
            **kwargs) -> TrainedModel:
  """Trains a student from ``teacher``: Hinton KD with ``alpha`` and ``temperature``
  (see :func:`kdjax.losses.hinton_kd_loss`), or any teacher-using ``method`` from
  :mod:`kdjax.methods` (e.g. ``make_method("dkd", beta=8.0)``)."""
  check_teacher(teacher, data)
  if method is None:
    if alpha is None or temperature is None:
      raise ValueError("distill needs alpha and temperature (Hinton KD), or a method")
    method = hinton_kd(alpha=alpha, temperature=temperature)
  elif alpha is not None or temperature is not None:
    raise ValueError("give either a method or alpha and temperature, not both: the method carries its own")
  kwargs.setdefault("desc", f"distill {cfg.model} seed {seed}")
  return _train(data, cfg, method, seed=seed, teacher=teacher, **kwargs)
