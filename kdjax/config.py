"""Typed, serializable configs (frozen dataclasses) and command-line overrides."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import optax

from kdjax.compress import check_sparsity
from kdjax.data import check_num_classes
from kdjax.health import HealthThresholds
from kdjax.losses import check_alpha, check_temperature
from kdjax.methods import make_method, method_spec, parse_hparam, study_hparams
from kdjax.models.functional import compute_dtype
from kdjax.models.registry import check_model_options
from kdjax.optim import make_optimizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run of one model."""

  model: str
  epochs: int = 10
  batch_size: int = 128
  optimizer: str = "sgd"  # "sgd" (momentum, Nesterov) or "adam"
  learning_rate: float = 0.05
  momentum: float = 0.9
  weight_decay: float = 0.0
  schedule: str = "cosine"  # "cosine", "constant" or "step" (x0.1 at each of decay_epochs)
  decay_epochs: tuple[int, ...] = ()  # for schedule="step", e.g. (150, 180, 210)
  clip_norm: float = 0.0  # clip each step's gradient to this global norm (before the optimizer); 0 = off
  warmup_epochs: float = 0.0  # linear learning-rate warm-up from 0 over this many epochs (kdjax.optim); 0 = off
  jitter: int = 0  # random translation of up to this many pixels, on the device; 0 = off
  hflip: bool = False  # random horizontal flips, on the device
  dropout: float | None = None  # hidden-layer dropout rate; None = the model's default
  input_dropout: float | None = None  # input dropout rate (MLPs); None = the model's default
  # Speed switches (results unchanged beyond floating-point precision):
  precision: str = "fp32"  # "fp32", or "bf16": bfloat16 compute, float32 parameters and loss
  steps_per_call: int = 1  # steps run per dispatch as one lax.scan (the teacher's forward hoisted out)
  # Offline KD (distilled runs): "off", "device" (the teacher's outputs on the training images computed
  # once, kept on the device) or a path ending in .npz (also kept on disk there and reused).
  teacher_cache: str = "off"
  cache_features: tuple[str, ...] = ()  # the teacher features to cache besides its logits
  # Compression while training (kdjax.compress): int8 fake quantization of the weights in the forward
  # pass with straight-through gradients (quantization-aware training/distillation; evaluated as int8),
  # and magnitude pruning to prune_sparsity (0 = off) along Zhu & Gupta's cubic schedule from epoch
  # prune_start to epoch prune_end (equal: one shot; both 0: the initial weights are pruned before the
  # first step), the masks recomputed every prune_every steps. A fake_quant run's params stay the float
  # weights it trains; its test accuracy is the int8 model's, which kdjax.compress.quantize_params stores.
  fake_quant: bool = False
  prune_sparsity: float = 0.0
  prune_start: int = 0
  prune_end: int = 0
  prune_every: int = 10
  prune_scope: str = "global"  # "global" (one threshold over all weights) or "layer"

  def model_options(self) -> dict[str, float]:
    """Options for :func:`kdjax.models.create_model` that this config sets."""
    opts = {"dropout_rate": self.dropout, "input_dropout_rate": self.input_dropout}
    return {k: v for k, v in opts.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Teacher, student alone and distilled student, over several seeds."""

  name: str
  dataset: str = "builtin"  # "builtin", "idx:PATH" or "tfds:NAME"
  tfds_data_dir: str | None = None
  download: bool = False
  # The data's class count. None: inferred from the data (a fixed source's own count; an idx directory's
  # largest label + 1). Stated: a label outside [0, num_classes) is refused, and so is data of another count.
  num_classes: int | None = None
  teacher: TrainConfig = TrainConfig(model="mlp1200")
  student: TrainConfig = TrainConfig(model="mlp800")  # the student trained alone
  distilled: TrainConfig = TrainConfig(model="mlp800")  # the same student, distilled
  alpha: float = 0.5
  temperature: float = 4.0
  # The distilled run's method (`kdjax list`; `kdjax distill --method NAME`) and its hyperparameters as
  # sorted (name, value) pairs (`--set method.NAME=VALUE`). A method with a label weight (Hinton-style
  # KD) takes `temperature` and `alpha` above unless its hyperparameters set them (see study_method_hparams).
  method: str = "hinton"
  method_hparams: tuple[tuple[str, Any], ...] = ()
  seeds: tuple[int, ...] = (0, 1, 2)
  # Also train the student alone with the distilled run's augmentation, so the
  # table separates the gain from the teacher from the gain from augmentation.
  augmented_control: bool = True
  workdir: str = "runs"
  # The thresholds of every run's health verdict (kdjax.health; docs/health.md), e.g. --set health.loss_rise=3.
  health: HealthThresholds = HealthThresholds()


def check_teacher_cache(value: str, role: str = "distilled") -> None:
  if value not in ("off", "device") and not value.endswith(".npz"):
    raise ValueError(f"{role}.teacher_cache must be 'off', 'device' or a path ending in .npz, got {value!r}")


def validate_study(cfg: StudyConfig) -> None:
  """Fails before any training on a config that cannot run."""
  check_temperature(cfg.temperature)
  check_alpha(cfg.alpha)
  if not cfg.seeds:
    raise ValueError("seeds is empty: give at least one seed")
  if method_spec(cfg.method).family == "lm":
    raise ValueError(f"method {cfg.method!r} distils language models: run it with an lm_ study "
                     "(kdjax distill --config lm_stdlib), not an image or text-classification one")
  if len(set(cfg.seeds)) != len(cfg.seeds):
    raise ValueError(f"seeds must be distinct, got {cfg.seeds}")
  if cfg.num_classes is not None:
    try:
      check_num_classes(cfg.num_classes)
    except ValueError as e:
      raise ValueError(f"{e} (or none, to infer it from the data)") from None
  for role in ("teacher", "student", "distilled"):  # the StudyConfig fields that are TrainConfigs
    run: TrainConfig = getattr(cfg, role)
    check_model_options(run.model, run.model_options())  # also rejects an unknown model
    for field in ("epochs", "batch_size"):
      if getattr(run, field) < 1:
        raise ValueError(f"{role}.{field} must be >= 1, got {getattr(run, field)}")
    if run.jitter < 0:
      raise ValueError(f"{role}.jitter must be >= 0, got {run.jitter}")
    for field in ("dropout", "input_dropout"):
      rate = getattr(run, field)
      if rate is not None and not 0.0 <= rate < 1.0:
        raise ValueError(f"{role}.{field} must lie in [0, 1), got {rate}")
    compute_dtype(run.precision)
    if run.steps_per_call < 1:
      raise ValueError(f"{role}.steps_per_call must be >= 1, got {run.steps_per_call}")
    if run.teacher_cache != "off" and role != "distilled":
      raise ValueError(f"{role}.teacher_cache: only the distilled run has a teacher to cache")
    check_teacher_cache(run.teacher_cache, role)
    if any(e > run.epochs for e in run.decay_epochs):
      raise ValueError(f"{role}.decay_epochs {run.decay_epochs} go past its {run.epochs} epochs")
    if not math.isfinite(run.clip_norm) or run.clip_norm < 0:
      raise ValueError(f"{role}.clip_norm must be a finite number >= 0 (0 = off), got {run.clip_norm}")
    if not math.isfinite(run.warmup_epochs) or run.warmup_epochs < 0:
      raise ValueError(f"{role}.warmup_epochs must be a finite number >= 0 (0 = off), got {run.warmup_epochs}")
    if run.warmup_epochs >= run.epochs:
      raise ValueError(f"{role}.warmup_epochs {run.warmup_epochs:g} is not shorter than its {run.epochs} epochs")
    run_optimizer(run, _CHECK_STEPS_PER_EPOCH)
    check_compression(run, role)
  if cfg.student.model != cfg.distilled.model:
    raise ValueError(f"student ({cfg.student.model}) and distilled ({cfg.distilled.model}) must be "
                     "the same model for the comparison to mean anything")
  if not study_method(cfg).needs_teacher:
    raise ValueError(f"method {cfg.method!r} uses no teacher, but the study's distilled run learns from one: "
                     "pick a method that distills (kdjax list)")


# The epoch length validate_study builds each run's optimizer with (the data, so the real one, is not known
# yet): long enough that a fractional warm-up rounds to steps as in a real run.
_CHECK_STEPS_PER_EPOCH = 1000


def run_optimizer(cfg: TrainConfig, steps_per_epoch: int, *,
                  learning_rate: float | None = None) -> optax.GradientTransformation:
  """The optimizer of a run of ``cfg`` with ``steps_per_epoch`` steps an epoch
  (:func:`kdjax.optim.make_optimizer`): ``cfg.epochs · steps_per_epoch`` steps in all, the warm-up
  ``round(cfg.warmup_epochs · steps_per_epoch)`` steps long, the gradient clipped to ``cfg.clip_norm``.
  ``learning_rate`` replaces ``cfg.learning_rate`` (a sweep builds with 1 and scales each student's
  updates by its own rate, :func:`kdjax.optim.scale_updates`)."""
  return make_optimizer(cfg.optimizer, learning_rate=cfg.learning_rate if learning_rate is None else learning_rate,
                        total_steps=cfg.epochs * steps_per_epoch, momentum=cfg.momentum,
                        weight_decay=cfg.weight_decay, schedule=cfg.schedule, decay_epochs=cfg.decay_epochs,
                        steps_per_epoch=steps_per_epoch, clip_norm=cfg.clip_norm,
                        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch))


def study_method_hparams(cfg: StudyConfig) -> dict[str, Any]:
  """The hyperparameters the distilled run's method gets: ``cfg.method_hparams``, with the study's
  ``temperature`` and ``alpha`` where the method takes them from the study
  (:func:`kdjax.methods.study_hparams`)."""
  return study_hparams(cfg.method, dict(cfg.method_hparams), temperature=cfg.temperature, alpha=cfg.alpha)


def study_method(cfg: StudyConfig):
  """The distilled run's :class:`kdjax.methods.Method`: ``make_method(cfg.method, **hparams)`` with the
  hyperparameters of :func:`study_method_hparams`. An unknown method or hyperparameter, or a value the
  method refuses, is a ValueError."""
  try:
    return make_method(cfg.method, **study_method_hparams(cfg))
  except ValueError as e:
    given = ", ".join(f"method.{k}={v}" for k, v in cfg.method_hparams) or "its defaults"
    raise ValueError(f"method {cfg.method!r} with {given}: {e}") from None


def check_compression(run: TrainConfig, role: str = "run") -> None:
  """The pruning settings of a run must describe a schedule inside it (``prune_sparsity`` 0 is off)."""
  try:
    check_sparsity(run.prune_sparsity)
  except ValueError as e:
    raise ValueError(f"{role}.prune_sparsity: {e}") from None
  if run.prune_sparsity:
    for field in ("prune_start", "prune_end", "prune_every"):
      if not isinstance(getattr(run, field), int) or isinstance(getattr(run, field), bool):
        raise ValueError(f"{role}.{field} must be an integer, got {getattr(run, field)!r}")
    if not 0 <= run.prune_start <= run.prune_end <= run.epochs:
      raise ValueError(f"{role}: pruning needs 0 <= prune_start <= prune_end <= epochs ({run.epochs}), got "
                       f"prune_start {run.prune_start}, prune_end {run.prune_end}")
    if run.prune_every < 1:
      raise ValueError(f"{role}.prune_every must be >= 1 step, got {run.prune_every}")
    if run.prune_scope not in ("global", "layer"):
      raise ValueError(f"{role}.prune_scope must be 'global' or 'layer', got {run.prune_scope!r}")


def refuse_compression(run: TrainConfig, what: str) -> None:
  """For the trainers that build their own optimizer and step (sweeps, online cohorts)."""
  if run.fake_quant or run.prune_sparsity:
    raise ValueError(f"{what} do not prune or fake-quantize while training (got prune_sparsity "
                     f"{run.prune_sparsity}, fake_quant {run.fake_quant}): compress with kdjax.train.distill or "
                     "train_student, or afterwards with kdjax.compress")


def to_dict(cfg) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def _convert(text: str, tp, key: str):
  origin = typing.get_origin(tp)
  if origin in (types.UnionType, typing.Union):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if text.lower() in ("none", "null"):
      return None
    return _convert(text, args[0], key)
  if origin is tuple:
    (elem, *_) = typing.get_args(tp)
    return tuple(_convert(t, elem, key) for t in text.split(",") if t.strip())
  if tp is bool:
    if text.lower() in ("1", "true", "yes", "on"):
      return True
    if text.lower() in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"{key}: expected true or false, got {text!r}")
  if tp in (int, float):
    try:
      value = tp(text)
    except ValueError:
      raise ValueError(f"{key}: expected {tp.__name__}, got {text!r}") from None
    if tp is float and not math.isfinite(value):
      raise ValueError(f"{key}: expected a finite number, got {text!r}")
    return value
  if tp is str:
    return text
  raise ValueError(f"{key}: cannot set a field of type {tp} from the command line")


def override(cfg, assignments: list[str]):
  """Applies ``key=value`` overrides (dotted keys reach nested configs, e.g.
  ``teacher.epochs=20``) and returns a new config. Unknown keys and values of
  the wrong type raise ``ValueError``."""
  items = []
  for assignment in assignments:
    key, sep, value = assignment.partition("=")
    if not sep:
      raise ValueError(f"override {assignment!r} is not of the form key=value")
    items.append((key.strip(), value.strip()))
  # A study's method first: its hyperparameters (method.NAME=VALUE) are typed after its factory's defaults.
  items.sort(key=lambda item: item[0] != "method")
  for key, value in items:
    if isinstance(cfg, StudyConfig) and key.startswith("method."):
      cfg = _set_method_hparam(cfg, key.split(".", 1)[1], value, key)
    else:
      cfg = _set(cfg, key.split("."), value, key)
  return cfg


def _set_method_hparam(cfg: StudyConfig, hparam: str, text: str, full_key: str) -> StudyConfig:
  """``cfg`` with hyperparameter ``hparam`` of its method set from ``text`` (typed after the factory's
  default for it; a list's items joined by commas)."""
  try:
    value = parse_hparam(cfg.method, hparam, text, sep=",")
  except ValueError as e:
    raise ValueError(f"config key {full_key!r}: {e}") from None
  hparams = {**dict(cfg.method_hparams), hparam: value}
  return dataclasses.replace(cfg, method_hparams=tuple(sorted(hparams.items())))


def _set(cfg, path: list[str], value: str, full_key: str):
  hints = typing.get_type_hints(type(cfg))
  name = path[0]
  if name not in hints:
    known = ", ".join(f.name for f in dataclasses.fields(cfg))
    raise ValueError(f"unknown config key {full_key!r}; {type(cfg).__name__} has: {known}")
  if len(path) > 1:
    inner = getattr(cfg, name)
    if not dataclasses.is_dataclass(inner):
      raise ValueError(f"config key {full_key!r}: {name} has no sub-keys")
    return dataclasses.replace(cfg, **{name: _set(inner, path[1:], value, full_key)})
  if dataclasses.is_dataclass(getattr(cfg, name)):
    raise ValueError(f"config key {full_key!r} is a group; set one of its fields, e.g. {full_key}.epochs=5")
  if isinstance(cfg, StudyConfig) and name == "method_hparams":
    raise ValueError(f"config key {full_key!r}: set the method's hyperparameters one by one, as "
                     "method.NAME=VALUE (e.g. method.beta=4)")
  return dataclasses.replace(cfg, **{name: _convert(value, hints[name], full_key)})
