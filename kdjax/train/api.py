"""Library entry points: ``train_teacher``, ``train_student``, ``distill`` (one teacher or a dict of
teachers) and ``mean_teacher``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from kdjax.compress import fake_quantize, pruning
from kdjax.config import TrainConfig, check_compression, check_teacher_cache, run_optimizer
from kdjax.data.dataset import ArrayDataset
from kdjax.data.text import check_saved_vocab, save_vocab, vocab_fingerprint
from kdjax.health import HealthThresholds, judge_run, majority_share
from kdjax.identity import array_digest, fingerprint, identity
from kdjax.methods import Method, hinton_kd, init_method, method_identity, multi_teacher_kd, supervised
from kdjax.models import create_model, feature_shapes, split_model
from kdjax.pretrained import load_state_dict, state_dict_digest
from kdjax.pretrained.vision import import_weights, weights_num_classes, with_input_normalization
from kdjax.train.checkpoint import Checkpointing, restore_run
from kdjax.train.evaluation import evaluate, make_eval_step
from kdjax.train.hooks import Hook, judge_health
from kdjax.train.inputs import run_keys
from kdjax.train.loop import FitResult, fit, steps_per_epoch
from kdjax.train.state import init_train_state
from kdjax.train.step import make_train_step
from kdjax.train.teacher_cache import cached_teacher_outputs
from kdjax.train.teachers import teacher_variables


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
  ema: Any = None  # a mean-teacher run's moving average of the student, {"params", "rest"}
  vocabulary: str | None = None  # text models: the fingerprint of the vocabulary its token ids index
  health: dict[str, Any] | None = None  # kdjax.health.judge_run's verdict on its training (None: not judged)
  identity: str | None = None  # the hash of the run that trained it (kdjax.identity; None: not known)
  # Imported weights (import_trained): {"path", "sha256" of the tensors, "input_norm"}; None: trained by kdjax.
  source: dict[str, Any] | None = None

  @property
  def variables(self) -> dict[str, Any]:
    return teacher_variables(self.params, self.rest)

  @property
  def test(self) -> dict[str, float]:
    return self.fit.test


Teachers = TrainedModel | dict[str, TrainedModel] | None


def _teacher_args(teacher: Teachers, input_shape) -> tuple[Any, Any, Any]:
  """``(graphdef, variables, feature shapes)`` of one teacher, or dicts of them for several."""
  if teacher is None:
    return None, None, {}
  if isinstance(teacher, dict):
    parts = {n: _teacher_args(t, input_shape) for n, t in teacher.items()}
    return ({n: p[0] for n, p in parts.items()}, {n: p[1] for n, p in parts.items()},
            {n: p[2] for n, p in parts.items()})
  return (teacher.graphdef, teacher.variables,
          feature_shapes(teacher.graphdef, teacher.params, teacher.rest, input_shape))


def _initial_state(data: ArrayDataset, cfg: TrainConfig, method: Method, *, seed: int, teacher_shapes,
                   ema: bool = False, data_seed: int | None = None):
  """``(graphdef, tx, state)`` of a run before its first step: the model from
  ``seed``, the optimizer and its state, the method's parts sized from the feature shapes, the
  data stream (augmentation) from ``data_seed`` (default ``seed``)."""
  model = create_model(cfg.model, num_classes=data.num_classes, input_shape=data.image_shape, seed=seed,
                       **model_options(cfg, data))
  graphdef, params, rest = split_model(model)
  per_epoch = steps_per_epoch(len(data.train_labels), cfg.batch_size)
  tx = run_optimizer(cfg, per_epoch)
  check_compression(cfg)
  if cfg.fake_quant:  # a layer the quantizer does not know is an error now, not at the first step
    jax.eval_shape(fake_quantize, params)
  if cfg.prune_sparsity:  # the masks live in the optimizer state, so in every checkpoint
    # The last update is step total - 1: a schedule ending with the run reaches its sparsity there.
    last = cfg.epochs * per_epoch - 1
    tx = pruning(tx, final_sparsity=cfg.prune_sparsity, start_step=min(cfg.prune_start * per_epoch, last),
                 end_step=min(cfg.prune_end * per_epoch, last), every=cfg.prune_every, scope=cfg.prune_scope)
  keys = run_keys(seed, data_seed)
  s_shapes = feature_shapes(graphdef, params, rest, data.image_shape)
  # The method's learnable parts and state, sized from the feature shapes before any data is seen.
  method_params, method_state = init_method(method, keys.method_init, s_shapes,
                                            s_shapes if ema else teacher_shapes, len(data.train_labels))
  state = init_train_state(params, rest, tx, keys.rng, method_params, method_state, ema=ema, data_rng=keys.data_rng)
  return graphdef, tx, state


def model_options(cfg: TrainConfig, data: ArrayDataset) -> dict[str, Any]:
  """The config's model options, and the vocabulary size for a text model on text data."""
  options = cfg.model_options()
  if data.is_text:
    options["vocab_size"] = len(data.vocab)
  return options


def _identity(cfg: TrainConfig, data: ArrayDataset) -> dict[str, Any]:
  """What a checkpoint of this run must have been made by: the model, its classes and input (and
  for text, the vocabulary: the same ids must mean the same words)."""
  identity = {"model": cfg.model, "num_classes": data.num_classes, "input_shape": list(data.image_shape)}
  if data.is_text:
    identity["vocabulary"] = _vocabulary(data)
  if cfg.fake_quant or cfg.prune_sparsity:  # resuming must not switch to another compression schedule
    identity["compression"] = {k: getattr(cfg, k) for k in ("fake_quant", "prune_sparsity", "prune_start",
                                                            "prune_end", "prune_every", "prune_scope")}
  return identity


def teacher_identity(teacher: Teachers) -> str | dict[str, str] | None:
  """What stands for a teacher in a student's run identity: the hash of the run that trained it, or
  for a model of unknown origin a hash of its variables (a dict of them for several teachers)."""
  if teacher is None:
    return None
  if isinstance(teacher, dict):
    return {name: teacher_identity(t) for name, t in teacher.items()}
  if teacher.identity is not None:
    return teacher.identity
  return "variables:" + array_digest(*(np.asarray(a) for a in jax.tree.leaves(teacher.variables)))


def run_identity(data: ArrayDataset, cfg: TrainConfig, method: Method, *, seed: int, data_seed: int | None = None,
                 teacher: str | dict[str, str] | None = None, ema_decay: float | None = None) -> dict[str, Any]:
  """The identity (:func:`kdjax.identity.identity`: fields and hash) of the run of ``cfg`` and
  ``method`` on ``data`` with these seeds, distilling from the teacher(s) of identity ``teacher``
  (:func:`teacher_identity`): what its checkpoints and results are stored with, and what a resume
  must match."""
  config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _SAME_RESULT}
  data_fields = {k: v for k, v in fingerprint(data).items() if k != "name"}  # its bytes, wherever it is kept
  return identity(config=config, method=method_identity(method), seed=seed,
                  data_seed=seed if data_seed is None else data_seed, ema_decay=ema_decay, teacher=teacher,
                  data=data_fields)


# TrainConfig fields that change how fast a run goes, not what it computes (kdjax.config documents them so):
# a run may be resumed with other values.
_SAME_RESULT = ("steps_per_call", "teacher_cache")


def _vocabulary(data: ArrayDataset) -> str | None:
  """The fingerprint of the vocabulary the data's token ids index (``None`` for images)."""
  if not data.is_text:
    return None
  return vocab_fingerprint(data.vocab)


def _setup(data: ArrayDataset, cfg: TrainConfig, method: Method, teacher: Teachers, *, seed: int,
           ema_decay: float | None = None, data_seed: int | None = None):
  """``(graphdef, state, train_step, teacher graphdef, teacher variables)`` of a run, after the checks
  that need no training: the method against its teachers and the data, the teacher source."""
  t_graphdef, t_vars, t_shapes = _teacher_args(teacher, teacher_input_shape(data))
  check_teacher_cache(cfg.teacher_cache)
  if ema_decay is not None and data.teacher_train_images is not None:
    raise ValueError("a mean teacher is the student's own average and sees the student's images: give data "
                     "without teacher_train_images")
  if method.adversary is not None and data.is_text:
    raise ValueError("adversarial methods perturb pixels within an L∞ ball: they take image data, not token ids")
  cached = cfg.teacher_cache != "off"
  if cached and (isinstance(t_graphdef, dict) or t_graphdef is None):
    raise ValueError("teacher_cache caches one fixed teacher's outputs: give one teacher (not several, not the "
                     "student's moving average, not none)")
  if cached and data.unlabelled_images is not None:
    raise ValueError("teacher_cache covers the training images only, not unlabelled_images: turn it off")
  graphdef, tx, state = _initial_state(data, cfg, method, seed=seed, teacher_shapes=t_shapes,
                                       ema=ema_decay is not None, data_seed=data_seed)
  train_step = make_train_step(graphdef, tx, method, jitter_pixels=cfg.jitter, hflip=cfg.hflip,
                               teacher_graphdef=None if cached else t_graphdef, ema_decay=ema_decay,
                               precision=cfg.precision, steps_per_call=cfg.steps_per_call, cached_teacher=cached,
                               fake_quant=cfg.fake_quant,
                               steps_per_epoch=steps_per_epoch(len(data.train_labels), cfg.batch_size),
                               epochs=cfg.epochs)
  return graphdef, state, train_step, t_graphdef, t_vars


def check_run(data: ArrayDataset, cfg: TrainConfig, method: Method, teacher: Teachers = None) -> None:
  """Fails now, naming the problem, on a run that could not train: ``method`` with ``teacher`` on
  ``data`` (a feature the models lack, inputs the method needs and the data does not have, ...).
  Its step is traced once on shapes alone (``jax.eval_shape``: nothing is computed), so a study can
  check its last run before its first one trains. ``teacher`` may be untrained (:func:`untrained`)."""
  cfg = dataclasses.replace(cfg, teacher_cache="off", steps_per_call=1)  # the same method checks, a live teacher
  _, state, train_step, _, t_vars = _setup(data, cfg, method, teacher, seed=0)

  def rows(a, n):
    return jax.ShapeDtypeStruct((n, *np.shape(a)[1:]), np.asarray(a[:1]).dtype)

  b = cfg.batch_size
  batch = {"image": rows(data.train_images, b), "label": jax.ShapeDtypeStruct((b,), np.int32),
           "index": jax.ShapeDtypeStruct((b,), np.int32)}
  if data.teacher_train_images is not None:
    batch["teacher_image"] = rows(data.teacher_train_images, b)
  if data.unlabelled_images is not None:
    batch["unlabelled"] = rows(data.unlabelled_images, b)
  jax.eval_shape(train_step, state, t_vars, batch)


def untrained(data: ArrayDataset, cfg: TrainConfig, *, seed: int = 0) -> TrainedModel:
  """``cfg``'s model as initialized for ``data``, untrained: a stand-in teacher for :func:`check_run`."""
  model = create_model(cfg.model, num_classes=data.num_classes, input_shape=teacher_input_shape(data), seed=seed,
                       **model_options(cfg, data))
  graphdef, params, rest = split_model(model)
  return TrainedModel(cfg.model, data.num_classes, teacher_input_shape(data), graphdef, params, rest, None,
                      vocabulary=_vocabulary(data))


def _train(data: ArrayDataset, cfg: TrainConfig, method: Method, *, seed: int, desc: str,
           teacher: Teachers = None, ema_decay: float | None = None, log_path: str | Path | None = None,
           log_fields: dict[str, Any] | None = None, progress: bool = True,
           checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0, resume: bool = False,
           mesh=None, data_seed: int | None = None, health: HealthThresholds | None = None,
           hooks: Sequence[Hook] = ()) -> TrainedModel:
  graphdef, state, train_step, t_graphdef, t_vars = _setup(data, cfg, method, teacher, seed=seed,
                                                           ema_decay=ema_decay, data_seed=data_seed)
  cached = cfg.teacher_cache != "off"
  majority = majority_share(np.asarray(data.test_labels).tolist())
  main_stage = 0.0 if method.main_stage is None else float(method.main_stage(cfg.epochs))
  teacher_cache = None
  if cached:  # offline KD: the teacher's outputs on the training images, once
    teacher_cache = cached_teacher_outputs(
        t_graphdef, t_vars, teacher_images(data), path=None if cfg.teacher_cache == "device" else cfg.teacher_cache,
        features=cfg.cache_features, precision=cfg.precision, augmented=bool(cfg.jitter or cfg.hflip))
    t_vars = None
  run = run_identity(data, cfg, method, seed=seed, data_seed=data_seed, teacher=teacher_identity(teacher),
                     ema_decay=ema_decay)
  checkpointing = None if checkpoint_dir is None else Checkpointing(
      checkpoint_dir, every_steps=checkpoint_every, resume=resume, identity=_identity(cfg, data), run=run)
  if checkpoint_dir is not None and data.is_text:
    vocab_file = Path(checkpoint_dir) / "vocab.json"
    if vocab_file.exists():  # another run's: never overwritten, and it must be this data's
      check_saved_vocab(vocab_file, data.vocab)
    elif jax.process_index() == 0:
      save_vocab(vocab_file, data.vocab)  # the ids' words, beside the weights
  result = fit(state, train_step, make_eval_step(graphdef, fake_quant=cfg.fake_quant), data, epochs=cfg.epochs,
               batch_size=cfg.batch_size, teacher_vars=t_vars, seed=seed if data_seed is None else data_seed,
               desc=desc, log_path=log_path,
               log_fields=log_fields, progress=progress, steps_per_call=cfg.steps_per_call,
               teacher_cache=teacher_cache, mesh=mesh, checkpointing=checkpointing,
               hooks=[judge_health(majority, health, main_stage), *hooks])
  verdict = judge_run(result.history, result.initial, majority=majority, main_stage=main_stage,
                      thresholds=HealthThresholds() if health is None else health)
  return TrainedModel(cfg.model, data.num_classes, data.image_shape, graphdef,
                      result.state.params, result.state.rest, result, result.state.method_params,
                      result.state.ema, _vocabulary(data), verdict, run["hash"])


def restore_trained(checkpoint_dir: str | Path, cfg: TrainConfig, data: ArrayDataset, *,
                    method: Method | None = None) -> TrainedModel:
  """A model trained with ``checkpoint_dir`` (e.g. a teacher), from its newest complete
  checkpoint, for use without training again: ``cfg`` and ``data`` must be what it was trained
  with (the model, its classes and input shape are checked, and a checkpoint of another
  architecture is an error naming both); ``method`` the teacher-free method it was trained with
  (default: cross-entropy)."""
  method = supervised() if method is None else method
  graphdef, _, like = _initial_state(data, cfg, method, seed=0, teacher_shapes={})
  if data.is_text:
    check_saved_vocab(Path(checkpoint_dir) / "vocab.json", data.vocab)
  restored = restore_run(Checkpointing(checkpoint_dir, identity=_identity(cfg, data)), like)
  if restored is None:
    raise FileNotFoundError(f"no complete checkpoint in {checkpoint_dir}")
  state, meta = restored
  history = meta["history"]
  total = cfg.epochs * steps_per_epoch(len(data.train_labels), cfg.batch_size)
  if meta["step"] != total or meta.get("batch_size") != cfg.batch_size:
    raise ValueError(f"the newest checkpoint in {checkpoint_dir} is at step {meta['step']} (batch size "
                     f"{meta.get('batch_size')}), not the end of the run this config describes ({total} steps of "
                     f"{cfg.batch_size}); finish that run (resume it) or give its config")
  test = {k[5:]: v for k, v in history[-1].items() if k.startswith("test_")}
  fit_result = FitResult(state=state, history=history, test=test, wall_s=meta["wall_s"])
  stored = meta.get("run_identity") or {}
  return TrainedModel(cfg.model, data.num_classes, data.image_shape, graphdef, state.params, state.rest,
                      fit_result, state.method_params, state.ema, _vocabulary(data), identity=stored.get("hash"))


def import_trained(weights: str | Path, cfg: TrainConfig, data: ArrayDataset, *,
                   input_norm: str | None = None) -> TrainedModel:
  """A model of ``cfg.model`` with the weights of a PyTorch or safetensors file (torchvision's ImageNet
  ResNets, RepDistiller's CIFAR zoo: :mod:`kdjax.pretrained.vision`), evaluated on ``data``'s test split,
  for use as a teacher without training. The weights must be of ``cfg.model`` and predict ``data``'s
  classes; every tensor is checked by name and shape before any is used (a ``ValueError`` names what
  does not fit). ``input_norm`` (``"imagenet"``, ``"cifar100"``; None: none) puts the per-channel
  normalization the weights were trained with in front of the model, which kdjax feeds pixels in [0, 1].
  Its identity is ``weights:`` and the SHA-256 of the tensors (:func:`kdjax.pretrained.state_dict_digest`),
  what a student distilled from it records; ``source`` says where it came from."""
  if data.is_text:
    raise ValueError(f"imported weights are for image models; {data.name} is text")
  state_dict = load_state_dict(weights)
  classes = weights_num_classes(state_dict, cfg.model)  # a model without an importer fails here, naming those with one
  if classes is not None and classes != data.num_classes:
    raise ValueError(f"the teacher weights {weights} predict {classes} classes, but {data.name} has "
                     f"{data.num_classes}: give weights of a {cfg.model} trained on these classes")
  t0 = time.perf_counter()
  model = import_weights(state_dict, cfg.model, input_shape=teacher_input_shape(data), **model_options(cfg, data))
  model = with_input_normalization(model, input_norm, channels=teacher_input_shape(data)[-1])
  graphdef, params, rest = split_model(model)
  test = evaluate(make_eval_step(graphdef), params, rest, data.test_images, data.test_labels)
  history = [{"epoch": 0, "step": 0, **{f"test_{k}": v for k, v in test.items()}}]
  digest = state_dict_digest(state_dict)
  norm = None if input_norm in (None, "none") else input_norm
  return TrainedModel(cfg.model, data.num_classes, teacher_input_shape(data), graphdef, params, rest,
                      FitResult(state=None, history=history, test=test, wall_s=time.perf_counter() - t0),
                      identity=f"weights:{digest}" + (f"+input_norm:{norm}" if norm else ""),
                      source={"path": str(weights), "sha256": digest, "input_norm": norm})


def train_teacher(data: ArrayDataset, cfg: TrainConfig, *, seed: int = 0, **kwargs) -> TrainedModel:
  """Trains a teacher on the labels (cross-entropy)."""
  kwargs.setdefault("desc", f"teacher {cfg.model} seed {seed}")
  return _train(data, cfg, supervised(), seed=seed, **kwargs)


def train_student(data: ArrayDataset, cfg: TrainConfig, *, seed: int = 0, method: Method | None = None,
                  **kwargs) -> TrainedModel:
  """Trains a student with no teacher: on the labels (cross-entropy), the baseline that distillation
  must beat, or with a teacher-free ``method`` (e.g. ``make_method("tf_kd")`` or
  ``make_method("byot", num_classes=10)``)."""
  if method is not None and method.needs_teacher:
    raise ValueError("this method needs a teacher: use distill (or mean_teacher for the student's own average)")
  kwargs.setdefault("desc", f"student {cfg.model} seed {seed}")
  return _train(data, cfg, supervised() if method is None else method, seed=seed, **kwargs)


def teacher_images(data: ArrayDataset):
  """What the teacher sees of the training examples: ``data.teacher_train_images`` where the data
  has them (cross-modal distillation), else the training images."""
  return data.train_images if data.teacher_train_images is None else data.teacher_train_images


def teacher_input_shape(data: ArrayDataset) -> tuple[int, ...]:
  return tuple(teacher_images(data).shape[1:])


def check_teacher(teacher: TrainedModel, data: ArrayDataset, name: str = "teacher") -> None:
  """The teacher must predict the data's classes from inputs of the shape it will be shown."""
  if teacher.num_classes != data.num_classes:
    raise ValueError(
        f"teacher and student have different class counts: the {name} ({teacher.model}) predicts "
        f"{teacher.num_classes} classes, the student is built for {data.num_classes} ({data.name})")
  vocabulary = _vocabulary(data)
  if teacher.vocabulary != vocabulary:
    raise ValueError(f"the {name} ({teacher.model}) reads token ids of vocabulary {teacher.vocabulary}, but "
                     f"{data.name}'s ids index vocabulary {vocabulary}: build the student's data with the "
                     "teacher's vocabulary (kdjax.data.text.load_vocab)")
  shape = teacher_input_shape(data)
  if tuple(teacher.input_shape) != shape:
    raise ValueError(f"the {name} ({teacher.model}) takes inputs of shape {teacher.input_shape}, "
                     f"but {data.name} would show it inputs of shape {shape}")


def distill(data: ArrayDataset, cfg: TrainConfig, teacher: TrainedModel | dict[str, TrainedModel], *,
            alpha: float | None = None, temperature: float | None = None, method: Method | None = None,
            seed: int = 0, **kwargs) -> TrainedModel:
  """Trains a student from ``teacher``: Hinton KD with ``alpha`` and ``temperature``
  (see :func:`kdjax.losses.hinton_kd_loss`), or any teacher-using ``method`` from
  :mod:`kdjax.methods` (e.g. ``make_method("dkd", beta=8.0)``).

  ``teacher`` may be a dict ``{name: TrainedModel}`` for a multi-teacher method
  (:func:`kdjax.methods.multi_teacher_kd`, :func:`kdjax.methods.per_teacher`); with
  ``alpha`` and ``temperature`` alone, several teachers get ``multi_teacher_kd`` with the mean
  of their probabilities.
  """
  teachers = teacher if isinstance(teacher, dict) else {"teacher": teacher}
  if not teachers:
    raise ValueError("the teacher dict is empty: give at least one teacher")
  for name, t in teachers.items():
    check_teacher(t, data, name if isinstance(teacher, dict) else "teacher")
  if method is None:
    if alpha is None or temperature is None:
      raise ValueError("distill needs alpha and temperature (Hinton KD), or a method")
    name, make = ("multi_teacher", multi_teacher_kd) if isinstance(teacher, dict) else ("hinton", hinton_kd)
    method = dataclasses.replace(make(alpha=alpha, temperature=temperature),
                                 identity=(("name", name), ("alpha", alpha), ("temperature", temperature)))
  elif alpha is not None or temperature is not None:
    raise ValueError("give either a method or alpha and temperature, not both: the method carries its own")
  kwargs.setdefault("desc", f"distill {cfg.model} seed {seed}")
  return _train(data, cfg, method, seed=seed, teacher=teacher, **kwargs)


def mean_teacher(data: ArrayDataset, cfg: TrainConfig, *, decay: float = 0.99, alpha: float | None = None,
                 temperature: float | None = None, method: Method | None = None, seed: int = 0,
                 **kwargs) -> TrainedModel:
  """Self-distillation from the student's own exponential moving average (mean teacher, Tarvainen &
  Valpola 2017): the teacher is ``ema ← decay·ema + (1 − decay)·student`` after every step, run in
  inference mode, and the student learns by Hinton KD (``alpha``, ``temperature``) or ``method``.
  The result's ``ema`` holds the average's variables too (often the better model to deploy)."""
  if method is None:
    if alpha is None or temperature is None:
      raise ValueError("mean_teacher needs alpha and temperature (Hinton KD), or a method")
    method = hinton_kd(alpha=alpha, temperature=temperature)
  elif alpha is not None or temperature is not None:
    raise ValueError("give either a method or alpha and temperature, not both: the method carries its own")
  kwargs.setdefault("desc", f"mean teacher {cfg.model} seed {seed}")
  return _train(data, cfg, method, seed=seed, ema_decay=decay, **kwargs)


def chain(data: ArrayDataset, cfgs: list[TrainConfig], *, teacher: TrainedModel | None = None,
          alpha: float | None = None, temperature: float | None = None, method: Method | None = None,
          seed: int = 0, seeds: list[int] | None = None, **kwargs) -> list[TrainedModel]:
  """A distillation chain: every model is distilled from the one before it (Hinton KD with
  ``alpha`` and ``temperature``, or ``method``). Without ``teacher``, ``cfgs[0]`` is trained on
  the labels first; with one, ``cfgs[0]`` is distilled from it.

  - Teacher-assistant KD (TAKD, Mirzadeh et al. 2020): ``chain(data, [assistant, student],
    teacher=teacher)``, the models shrinking step by step so each gap is small.
  - Born-again networks (Furlanello et al. 2018): the same config repeated; generation k + 1
    learns from generation k (evaluate the generations' ensemble with
    :func:`kdjax.train.evaluate_ensemble`).

  Returns the models this call trained, in order. Run i uses ``seeds[i]``, by default
  ``seed + i``, so born-again generations differ in their initialization and data order; give
  ``seeds`` to compare a chain's last student with other runs of the same seed.
  """
  if len(cfgs) + (teacher is not None) < 2:
    raise ValueError(f"a chain needs at least two models (a teacher and a student), got {len(cfgs)} config(s) "
                     f"{'and a teacher' if teacher is not None else 'and no teacher'}")
  seeds = [seed + i for i in range(len(cfgs))] if seeds is None else list(seeds)
  if len(seeds) != len(cfgs):
    raise ValueError(f"chain: {len(seeds)} seeds for {len(cfgs)} models")
  desc = kwargs.pop("desc", "chain")
  models = [teacher] if teacher is not None else [
      train_teacher(data, cfgs[0], seed=seeds[0], desc=f"{desc} 1/{len(cfgs)}: {cfgs[0].model} seed {seeds[0]}",
                    **kwargs)]
  first = 0 if teacher is not None else 1
  for i, cfg in enumerate(cfgs[first:], start=first):
    models.append(distill(data, cfg, models[-1], alpha=alpha, temperature=temperature, method=method,
                          seed=seeds[i], desc=f"{desc} {i + 1}/{len(cfgs)}: {cfg.model} seed {seeds[i]}", **kwargs))
  return models[1:] if teacher is not None else models
