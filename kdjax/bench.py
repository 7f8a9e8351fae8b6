"""Benchmarks of the distillation train step: ``kdjax bench`` and ``benchmarks/kd_step.py``.

:func:`bench_kd` times one configuration on whatever backend JAX sees (or the one named) and
returns a report dict; :func:`format_table` prints reports as Markdown, :func:`write_jsonl`
appends them as JSON lines, :func:`add_ratios` relates rows of one run to each other (epoch and
cached rates against the step-only rate, K students against one).

What is measured, per configuration:

- ``compile_s``: lowering and compiling the jitted step (``jit(...).lower(...).compile()``);
  ``first_call_s`` is the first call after that (the executable is reused, so this is dispatch
  and the first run, not a second compile).
- ``images_per_s``: the median of ``windows`` timed windows after warm-up, each ended by
  ``jax.block_until_ready`` on the train state. The data is random uint8 images already on the
  device (one batch, reused every call), so only the step is timed. With ``steps_per_call=S``
  one call runs ``S`` steps on ``S`` stacked batches (one ``lax.scan``) and counts ``S·batch``
  images; with ``students=K`` the rate counts student-images (``K·batch`` per step).
- ``flops_per_image``: XLA's own count (``cost_analysis()["flops"]``) of the compiled step,
  divided by the images it processes. XLA counts a ``while`` loop's body once whatever its trip
  count, so for ``S > 1`` the count comes from the same step built with ``S = 1`` (lowered, not
  compiled: ``flops_source`` says which).
- ``tflops_per_s`` = ``flops_per_image · images_per_s``, and ``mfu`` = that over the device's
  peak dense matrix rate for the precision (:data:`PEAK_TFLOPS`, or ``peak_tflops`` given);
  ``None`` on the CPU and unknown devices unless ``peak_tflops`` is given.
- ``peak_memory_bytes``: the device's ``memory_stats()["peak_bytes_in_use"]`` (``None`` where
  the backend reports none, e.g. the CPU). It is the process's peak so far, so in a run of
  several configurations it is never below an earlier row's; ``program_memory_bytes`` is the
  compiled step's own footprint from XLA's memory analysis (arguments + outputs + temporaries −
  donated aliases).

Modes: ``"step"`` is the train step alone (:func:`kdjax.train.make_train_step`); ``"epoch"``
runs :func:`kdjax.train.fit` over a random uint8 training set resident on the device
(``epoch_size`` images, by default ``steps·batch``; one warm-up epoch, then ``windows`` timed
epochs; evaluation skipped), with
augmentation on the device by default (random crop with 4-pixel padding and horizontal flips);
``"cached"`` is offline KD: the step takes the teacher's logits from the batch
(``cached_teacher=True``; random float32 logits here) and runs no teacher. ``students=K > 1``
trains K students at once with the sweep's vmapped step
(:func:`kdjax.train.cohort.make_cohort_step`, K seeds), as ``benchmarks/sweep_throughput.py`` does.

The optimizer is SGD with momentum 0.9 (Nesterov, kdjax's SGD), weight decay 5e-4, constant
learning rate 0.05; Hinton KD runs at ``alpha=0.5``, ``T=4`` (the peer's ``CE + T²·KL`` up to a
factor of 2, the same work).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

import kdjax
from kdjax.data import ArrayDataset
from kdjax.methods import init_method, make_method, method_spec
from kdjax.models import check_input_shape, create_model, feature_shapes, get_model_spec, split_model
from kdjax.models.functional import compute_dtype
from kdjax.optim import make_optimizer
from kdjax.parallel import make_mesh
from kdjax.presets import PRESETS
from kdjax.sweep.grid import Run
from kdjax.sweep.train import group_hparams, group_step, init_group
from kdjax.train import fit, init_train_state, make_train_step
from kdjax.train.cohort import stack_states
from kdjax.train.lm import make_lm_step

MODES = ("step", "epoch", "cached")

# Peak dense (no structured sparsity) matrix TFLOP/s from the vendors' spec sheets: NVIDIA's
# H100 / H200 / A100 / L40S / L4 datasheets and Google Cloud's TPU v4, v5e, v5p and v6e pages.
# Rows: (regular expression searched in ``device.device_kind``, lower case; bf16; fp32); the
# first match wins, so the more specific names come first. The fp32 column is the rate at which XLA runs float32 matmuls
# and convolutions at JAX's default precision (docs.jax.dev, "Matmul precision": "float32 dot
# products may be computed with reduced-precision arithmetic internally (bfloat16 on TPU, TF32
# on recent GPUs)"): TF32 tensor cores on NVIDIA Ampere and later, one bfloat16 pass on TPU.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("h100 pcie", 756.0, 378.0),
    ("h100 nvl", 835.5, 417.5),
    ("h200 nvl", 835.5, 417.5),
    ("h100", 989.4, 494.7),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("h200", 989.4, 494.7),  # H200 SXM, and GH200 (the same Hopper GPU)
    ("a100", 312.0, 156.0),
    ("l40s", 362.0, 183.0),
    (r"\bl4\b", 121.0, 60.0),
    ("tpu v4", 275.0, 275.0),
    ("tpu v5 lite", 197.0, 197.0),  # v5e
    ("tpu v5e", 197.0, 197.0),
    ("tpu v5", 459.0, 459.0),  # v5p reports "TPU v5"
    ("tpu v6 lite", 918.0, 918.0),  # v6e (Trillium)
    ("tpu v6e", 918.0, 918.0),
)

# JAX precisions under which float32 matmuls run at full float32 precision: the table's fp32
# column (reduced-precision rates) does not apply then.
_FULL_F32 = ("highest", "float32", "f32_f32_f32")

_HINTON_DEFAULTS = {"alpha": 0.5, "temperature": 4.0}
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
JITTER_PIXELS = 4  # with hflip: RepDistiller's random crop (padding 4) and flip, on the device


def peak_tflops_for(device, precision: str) -> tuple[float, str] | None:
  """``(TFLOP/s, source)`` of ``device``'s peak dense matrix rate at ``precision`` from
  :data:`PEAK_TFLOPS`, or ``None`` (CPU, a device not in the table, or float32 forced to full
  precision through ``jax_default_matmul_precision``)."""
  kind = str(getattr(device, "device_kind", "")).lower()
  if getattr(device, "platform", "") == "cpu":
    return None
  default = getattr(jax.config, "jax_default_matmul_precision", None)
  if precision == "fp32" and str(default or "").lower() in _FULL_F32:
    return None
  for name, bf16, fp32 in PEAK_TFLOPS:
    if re.search(name, kind):
      rate = bf16 if precision == "bf16" else fp32
      unit = "bf16" if precision == "bf16" else ("tf32" if "tpu" not in name else "bf16 (fp32 default precision)")
      return rate, f"spec sheet: {getattr(device, 'device_kind', '')}, {unit}, dense"
  return None


def resolve_device(backend: str | None):
  """The first device of ``backend`` (``None``: JAX's default); a backend that is not present
  is a ValueError naming the ones that are."""
  try:
    return (jax.devices(backend) if backend else jax.devices())[0]
  except RuntimeError:
    seen = ", ".join(sorted({d.platform for d in jax.devices()}))
    raise ValueError(f"backend {backend!r} is not available; JAX sees: {seen}") from None


def _positive_int(name: str, value, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


@dataclasses.dataclass(frozen=True)
class _Config:
  teacher: str | None
  student: str
  method: str
  method_options: dict
  batch: int
  precision: str
  steps_per_call: int
  mode: str
  students: int
  num_classes: int
  input_shape: tuple[int, ...]
  steps: int  # steps per timed window (a multiple of steps_per_call; in epoch mode, per epoch)
  epoch_size: int | None  # training images per epoch (epoch mode)
  windows: int
  warmup: int
  augment: bool
  backend: str | None
  peak_tflops: float | None
  seed: int

  @property
  def calls(self) -> int:
    return self.steps // self.steps_per_call


def check_config(teacher: str | None = "resnet32x4", student: str = "resnet8x4", *, method: str = "hinton",
                 method_options: dict | None = None, batch: int = 64, precision: str = "fp32",
                 steps_per_call: int = 1, mode: str = "step", students: int = 1, num_classes: int = 100,
                 input_shape=None, steps: int = 60, windows: int = 3, warmup: int | None = None,
                 augment: bool | None = None, backend: str | None = None, peak_tflops: float | None = None,
                 epoch_size: int | None = None, seed: int = 0) -> _Config:
  """Checks a configuration of :func:`bench_kd` (same arguments) without building or compiling
  anything, and resolves its defaults; every problem is a ValueError."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; use one of: {', '.join(MODES)}")
  compute_dtype(precision)  # unknown precision -> ValueError
  batch = _positive_int("batch", batch)
  steps_per_call = _positive_int("steps_per_call", steps_per_call)
  students = _positive_int("students", students)
  windows = _positive_int("windows", windows)
  steps = _positive_int("steps", steps)
  num_classes = _positive_int("num_classes", num_classes, 2)
  warmup = (1 if mode == "epoch" else 5) if warmup is None else _positive_int("warmup", warmup, 0)
  if mode == "epoch":
    warmup = max(warmup, 1)  # the first epoch includes the first call: never timed
  if peak_tflops is not None and (isinstance(peak_tflops, bool) or not isinstance(peak_tflops, (int, float))
                                  or not peak_tflops > 0):
    raise ValueError(f"peak_tflops must be a positive number, got {peak_tflops!r}")
  s_spec = get_model_spec(student)  # unknown model -> ValueError
  input_shape = tuple(int(d) for d in (s_spec.input_shape if input_shape is None else input_shape))
  check_input_shape(s_spec, input_shape)
  options = {**(_HINTON_DEFAULTS if method == "hinton" else {}), **(method_options or {})}
  try:
    m = make_method(method, **options)
  except TypeError as e:
    raise ValueError(f"method {method!r}: {e}") from None
  if m.multi_teacher:
    raise ValueError(f"method {method!r} takes several teachers; the benchmark times one teacher")
  needs_teacher = m.needs_teacher
  if needs_teacher:
    if not teacher:
      raise ValueError(f"method {method!r} needs a teacher")
    check_input_shape(get_model_spec(teacher), input_shape)
  else:
    teacher = None  # e.g. supervised: the student alone
  if mode == "cached" and not needs_teacher:
    raise ValueError(f"mode 'cached' takes a teacher's cached outputs; method {method!r} uses no teacher")
  if students > 1:
    if mode != "step":
      raise ValueError(f"students={students}: K students at once are timed in mode 'step' only, not {mode!r}")
    if steps_per_call != 1:
      raise ValueError(f"students={students}: the sweep's vmapped step takes one batch per call "
                       f"(steps_per_call 1, not {steps_per_call})")
  if augment is None:
    augment = mode == "epoch"
  steps = math.ceil(steps / steps_per_call) * steps_per_call
  if mode == "epoch" and epoch_size is not None:
    epoch_size = _positive_int("epoch_size", epoch_size)
    steps = epoch_size // (batch * steps_per_call) * steps_per_call
    if steps < 1:
      raise ValueError(f"epoch_size {epoch_size} holds fewer than steps_per_call={steps_per_call} batches of {batch}")
  epoch_size = steps * batch if mode == "epoch" else None
  resolve_device(backend)  # absent backend -> ValueError
  return _Config(teacher, student, method, options, batch, precision, steps_per_call, mode, students, num_classes,
                 input_shape, steps, epoch_size, windows, warmup, bool(augment), backend,
                 None if peak_tflops is None else float(peak_tflops), int(seed))


def _flops(analysis) -> float | None:
  """``"flops"`` of a cost analysis: a dict (jax >= 0.4.3x) or a list of per-program dicts."""
  if analysis is None:
    return None
  if isinstance(analysis, dict):
    analysis = [analysis]
  total = sum(float(a.get("flops", 0.0)) for a in analysis if a)
  return total if total > 0 else None


def _program_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _environment(device) -> dict[str, Any]:
  return {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "platform": device.platform,
          "device_kind": str(getattr(device, "device_kind", "")), "device_count": len(jax.devices(device.platform)),
          "jax": jax.__version__, "flax": flax.__version__, "kdjax": kdjax.__version__,
          "python": platform.python_version(),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _random_batch(cfg: _Config, key, lead: tuple[int, ...], device, teacher_feats=None) -> dict[str, jax.Array]:
  """Random uint8 images, labels and example indices of shape ``[*lead, B, ...]`` on ``device``;
  in cached mode also the teacher's "outputs" (random float32 logits, and features if given)."""
  k_img, k_lab, k_t = jax.random.split(key, 3)
  n = int(np.prod(lead, dtype=np.int64)) * cfg.batch
  image = jax.random.randint(k_img, (*lead, cfg.batch, *cfg.input_shape), 0, 256, jnp.int32)
  batch = {"image": image.astype(jnp.uint8),
           "label": jax.random.randint(k_lab, (*lead, cfg.batch), 0, cfg.num_classes, jnp.int32),
           "index": jnp.arange(n, dtype=jnp.int32).reshape(*lead, cfg.batch)}
  if cfg.mode == "cached":
    feats = {name: jax.random.normal(jax.random.fold_in(k_t, i), (*lead, *s.shape), jnp.float32)
             for i, (name, s) in enumerate(sorted((teacher_feats or {}).items()))}
    batch["teacher"] = {"logits": jax.random.normal(k_t, (*lead, cfg.batch, cfg.num_classes), jnp.float32),
                        "feats": feats}
  return jax.device_put(batch, device)


def _time_calls(call, state, calls: int, windows: int, warmup: int):
  """Runs ``warmup`` untimed calls, then ``windows`` timed windows of ``calls`` calls; returns
  the state and each window's seconds."""
  for _ in range(warmup):
    state = call(state)
  jax.block_until_ready(state)
  times = []
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(calls):
      state = call(state)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  return state, times


def bench_kd(teacher: str | None = "resnet32x4", student: str = "resnet8x4", *, method: str = "hinton",
             method_options: dict | None = None, batch: int = 64, precision: str = "fp32", steps_per_call: int = 1,
             mode: str = "step", students: int = 1, num_classes: int = 100, input_shape=None, steps: int = 60,
             windows: int = 3, warmup: int | None = None, augment: bool | None = None, backend: str | None = None,
             peak_tflops: float | None = None, epoch_size: int | None = None, seed: int = 0) -> dict[str, Any]:
  """Times the KD train step of ``teacher -> student`` in one configuration; returns the report.

  ``method`` (with ``method_options``; default Hinton KD at alpha 0.5, T 4) is built by
  :func:`kdjax.methods.make_method`. ``precision`` is "fp32" or "bf16" (bfloat16 compute, float32
  parameters). ``steps_per_call=S`` runs ``S`` stacked batches per call as one ``lax.scan``.
  ``mode``: "step", "epoch" or "cached" (see the module docstring). ``students=K`` times K
  students at once (the sweep's vmapped step; mode "step", fp32). ``input_shape`` defaults to the
  student's designed shape. Each timed window runs ``steps`` steps (rounded up to a multiple of
  ``S``), after ``warmup`` untimed calls (default 5). In epoch mode a window is one epoch over a
  random training set of ``epoch_size`` images (default ``steps·batch``; e.g. 50,000 for
  CIFAR's; rounded down to whole stacks of ``S`` batches), after ``warmup`` untimed epochs
  (default and at least 1). ``augment`` (default: on in epoch
  mode only) is the random crop with 4-pixel padding and horizontal flips, on the device.
  ``backend`` ("cpu", "gpu", "tpu"; default JAX's) is where everything runs. ``peak_tflops``
  overrides the device's peak rate for the MFU.

  Every check (unknown model, method, precision or mode, an absent backend, ``S < 1``) is a
  ValueError raised before anything is built or compiled. Returns a JSON-able dict: the
  environment (device, versions, date), the configuration, ``compile_s``, ``first_call_s`` (or
  ``first_epoch_s``), ``images_per_s`` (median), ``window_images_per_s``, ``flops_per_image``,
  ``flops_source``, ``tflops_per_s``, ``peak_tflops``, ``peak_source``, ``mfu``,
  ``peak_memory_bytes``, ``program_memory_bytes``.
  """
  cfg = check_config(teacher, student, method=method, method_options=method_options, batch=batch,
                     precision=precision, steps_per_call=steps_per_call, mode=mode, students=students,
                     num_classes=num_classes, input_shape=input_shape, steps=steps, windows=windows, warmup=warmup,
                     augment=augment, backend=backend, peak_tflops=peak_tflops, epoch_size=epoch_size, seed=seed)
  device = resolve_device(cfg.backend)
  with jax.default_device(device):
    if cfg.students > 1:
      result = _bench_group(cfg, device)
    elif cfg.mode == "epoch":
      result = _bench_epoch(cfg, device)
    else:
      result = _bench_step(cfg, device)
  return _report(cfg, device, **result)


def _models(cfg: _Config):
  """The teacher's graphdef and variables (or ``None``s), and the student's graphdef, params, rest."""
  t_graphdef = teacher_vars = None
  if cfg.teacher:
    t_graphdef, t_params, t_rest = split_model(create_model(cfg.teacher, num_classes=cfg.num_classes,
                                                            input_shape=cfg.input_shape, seed=cfg.seed))
    teacher_vars = {"params": t_params, "rest": t_rest}
  s = split_model(create_model(cfg.student, num_classes=cfg.num_classes, input_shape=cfg.input_shape,
                               seed=cfg.seed + 1))
  return t_graphdef, teacher_vars, s


def _needs_shapes(method) -> bool:
  return method.init is not None or method.init_state is not None


def _student_state(cfg: _Config, t_graphdef, teacher_vars, student, tx, method, num_examples: int):
  graphdef, params, rest = student
  key = jax.random.key(cfg.seed + 2)
  m_params = m_state = None
  if _needs_shapes(method):
    t_shapes = (feature_shapes(t_graphdef, teacher_vars["params"], teacher_vars["rest"], cfg.input_shape)
                if t_graphdef is not None else {})
    m_params, m_state = init_method(method, jax.random.fold_in(key, 1),
                                    feature_shapes(graphdef, params, rest, cfg.input_shape), t_shapes, num_examples)
  return init_train_state(params, rest, tx, jax.random.fold_in(key, 2), m_params, m_state)


def _cached_feats(cfg: _Config, t_graphdef, teacher_vars) -> dict:
  """The teacher features a cached batch carries: none for a logit method, all of them else."""
  if cfg.mode != "cached" or method_spec(cfg.method).family in ("baseline", "logit"):
    return {}
  return feature_shapes(t_graphdef, teacher_vars["params"], teacher_vars["rest"], cfg.input_shape,
                        batch_size=cfg.batch)


def _optimizer(total_steps: int, learning_rate: float = LEARNING_RATE):
  return make_optimizer("sgd", learning_rate=learning_rate, total_steps=total_steps, momentum=MOMENTUM,
                        weight_decay=WEIGHT_DECAY, schedule="constant")


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _run_length(cfg: _Config) -> dict[str, int]:
  """The timed run's length as a method's schedule in epochs sees it: a window is an epoch."""
  return {"steps_per_epoch": cfg.steps, "epochs": cfg.windows + cfg.warmup + 1}


def _build(cfg: _Config, t_graphdef, graphdef, tx, method, steps_per_call: int):
  return make_train_step(graphdef, tx, method, teacher_graphdef=None if cfg.mode == "cached" else t_graphdef,
                         jitter_pixels=JITTER_PIXELS if cfg.augment else 0, hflip=cfg.augment,
                         precision=cfg.precision, steps_per_call=steps_per_call, cached_teacher=cfg.mode == "cached",
                         **_run_length(cfg))


def _compile_and_count(cfg: _Config, step, args, build_single):
  """Lowers and compiles ``step`` on ``args``; returns ``(compile_s, flops of one step, flops
  source, program bytes)``. For ``S > 1`` the FLOPs are those of the single-step program
  (``build_single()`` lowers it), since XLA counts a loop's body once whatever its trip count."""
  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  if cfg.steps_per_call == 1:
    flops, source = _flops(compiled.cost_analysis()), "compiled step"
  else:
    flops, source = _flops(build_single().cost_analysis()), "lowered step with steps_per_call=1"
  return compile_s, flops, source, _program_bytes(compiled)


def _bench_step(cfg: _Config, device) -> dict[str, Any]:
  t_graphdef, teacher_vars, student = _models(cfg)
  method = make_method(cfg.method, **cfg.method_options)
  tx = _optimizer(cfg.calls * (cfg.windows + cfg.warmup + 1))
  s = cfg.steps_per_call
  state = _student_state(cfg, t_graphdef, teacher_vars, student, tx, method, num_examples=s * cfg.batch)
  tv = None if cfg.mode == "cached" else teacher_vars
  lead = (s,) if s > 1 else ()
  batch = _random_batch(cfg, jax.random.key(cfg.seed + 3), lead, device, _cached_feats(cfg, t_graphdef, teacher_vars))
  state, tv = jax.device_put((state, tv), device)
  step = _build(cfg, t_graphdef, student[0], tx, method, s)

  def single():
    one = _build(cfg, t_graphdef, student[0], tx, method, 1)
    return one.lower(_abstract(state), _abstract(tv), jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                                                                   batch))

  compile_s, flops, source, program_bytes = _compile_and_count(cfg, step, (state, tv, batch), single)
  t0 = time.perf_counter()
  state, _ = step(state, tv, batch)
  jax.block_until_ready(state)
  first_call_s = time.perf_counter() - t0
  state, times = _time_calls(lambda st: step(st, tv, batch)[0], state, cfg.calls, cfg.windows, cfg.warmup)
  return {"compile_s": compile_s, "first_call_s": first_call_s, "window_s": times,
          "images_per_window": cfg.calls * s * cfg.batch, "flops_per_step": flops, "images_per_step": cfg.batch,
          "flops_source": source, "program_memory_bytes": program_bytes}


def _bench_epoch(cfg: _Config, device) -> dict[str, Any]:
  t_graphdef, teacher_vars, student = _models(cfg)
  method = make_method(cfg.method, **cfg.method_options)
  n = cfg.epoch_size
  epochs = cfg.warmup + cfg.windows
  tx = _optimizer(cfg.steps * epochs)
  state = _student_state(cfg, t_graphdef, teacher_vars, student, tx, method, num_examples=n)
  state, teacher_vars = jax.device_put((state, teacher_vars), device)
  rng = np.random.default_rng(cfg.seed)
  data = ArrayDataset("random", rng.integers(0, 256, (n, *cfg.input_shape), dtype=np.uint8),
                      rng.integers(0, cfg.num_classes, n).astype(np.int32),
                      np.zeros((1, *cfg.input_shape), np.uint8), np.zeros(1, np.int32), cfg.num_classes)
  s = cfg.steps_per_call
  step = _build(cfg, t_graphdef, student[0], tx, method, s)
  lead = (s,) if s > 1 else ()
  batch = {"image": jax.ShapeDtypeStruct((*lead, cfg.batch, *cfg.input_shape), jnp.uint8),
           "label": jax.ShapeDtypeStruct((*lead, cfg.batch), jnp.int32),
           "index": jax.ShapeDtypeStruct((*lead, cfg.batch), jnp.int32)}

  def single():
    return _build(cfg, t_graphdef, student[0], tx, method, 1).lower(
        _abstract(state), _abstract(teacher_vars), jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                                                                batch))

  compile_s, flops, source, program_bytes = _compile_and_count(cfg, step, (state, teacher_vars, batch), single)
  stamps: list[float] = []

  def stamp(st, test_x, test_y):  # fit calls it before the first step, then right after each epoch's last step
    jax.block_until_ready(st)
    stamps.append(time.perf_counter())
    return {"accuracy": 0.0, "errors": 0, "loss": 0.0}

  fit(state, step, None, data, epochs=epochs, batch_size=cfg.batch, teacher_vars=teacher_vars, seed=cfg.seed,
      progress=False, evaluate_fn=stamp, steps_per_call=s, resident_bytes=1 << 62,
      mesh=make_mesh(1, devices=[device]))  # the chosen device alone, as the step rows
  epoch_s = np.diff(stamps).tolist()
  return {"compile_s": compile_s, "first_epoch_s": epoch_s[0], "window_s": epoch_s[cfg.warmup:],
          "images_per_window": n, "flops_per_step": flops, "images_per_step": cfg.batch, "flops_source": source,
          "program_memory_bytes": program_bytes}


def _bench_group(cfg: _Config, device) -> dict[str, Any]:
  """K students at once, built as ``benchmarks/sweep_throughput.py`` builds a sweep group."""
  k = cfg.students
  base = PRESETS["cifar100_resnet32x4_resnet8x4"]
  run_cfg = dataclasses.replace(base.distilled, model=cfg.student, batch_size=cfg.batch, learning_rate=LEARNING_RATE,
                                momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, schedule="constant", decay_epochs=(),
                                jitter=JITTER_PIXELS if cfg.augment else 0, hflip=cfg.augment)
  study = dataclasses.replace(base, teacher=dataclasses.replace(base.teacher, model=cfg.teacher or base.teacher.model),
                              student=run_cfg, distilled=run_cfg)
  hparams = tuple(sorted(cfg.method_options.items()))
  runs = [Run(study, cfg.method, hparams, seed, (("seed", seed),)) for seed in range(cfg.seed, cfg.seed + k)]
  t_graphdef = teacher_vars = None
  t_shapes = {}
  if cfg.teacher:
    t_graphdef, t_params, t_rest = split_model(create_model(cfg.teacher, num_classes=cfg.num_classes,
                                                            input_shape=cfg.input_shape, seed=cfg.seed))
    teacher_vars = {"params": t_params, "rest": t_rest}
    t_shapes = feature_shapes(t_graphdef, t_params, t_rest, cfg.input_shape)
  tx = _optimizer(cfg.calls * (cfg.windows + cfg.warmup + 1), learning_rate=1.0)  # each student scales by its own rate
  graphdef, state = init_group(runs, tx, cfg.num_classes, cfg.input_shape, t_shapes, cfg.batch)
  step = group_step(graphdef, tx, runs, t_graphdef, jitter_pixels=JITTER_PIXELS if cfg.augment else 0,
                    hflip=cfg.augment, precision=cfg.precision, **_run_length(cfg))
  hp = group_hparams(runs)
  batch = _random_batch(cfg, jax.random.key(cfg.seed + 3), (), device)
  state, teacher_vars, hp = jax.device_put((state, teacher_vars, hp), device)
  compile_s, flops, source, program_bytes = _compile_and_count(cfg, step, (state, teacher_vars, batch, hp), None)
  t0 = time.perf_counter()
  state, _ = step(state, teacher_vars, batch, hp)
  jax.block_until_ready(state)
  first_call_s = time.perf_counter() - t0
  state, times = _time_calls(lambda st: step(st, teacher_vars, batch, hp)[0], state, cfg.calls, cfg.windows,
                             cfg.warmup)
  return {"compile_s": compile_s, "first_call_s": first_call_s, "window_s": times,
          "images_per_window": cfg.calls * k * cfg.batch, "flops_per_step": flops, "images_per_step": k * cfg.batch,
          "flops_source": source, "program_memory_bytes": program_bytes}


def _report(cfg: _Config, device, *, window_s, images_per_window, flops_per_step, images_per_step, flops_source,
            compile_s, program_memory_bytes, first_call_s=None, first_epoch_s=None) -> dict[str, Any]:
  rates = [images_per_window / t for t in window_s]
  images_per_s = statistics.median(rates)
  flops_per_image = None if flops_per_step is None else flops_per_step / images_per_step
  tflops = None if flops_per_image is None else flops_per_image * images_per_s / 1e12
  if cfg.peak_tflops is not None:
    peak, peak_source = cfg.peak_tflops, "given"
  else:
    peak, peak_source = peak_tflops_for(device, cfg.precision) or (None, None)
  stats = device.memory_stats() or {}
  peak_mem = stats.get("peak_bytes_in_use")
  config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()
            if k != "peak_tflops"}
  return {
      **_environment(device), **config,
      "compile_s": round(compile_s, 3),
      "first_call_s": None if first_call_s is None else round(first_call_s, 4),
      "first_epoch_s": None if first_epoch_s is None else round(first_epoch_s, 4),
      "images_per_s": round(images_per_s, 1),
      "window_images_per_s": [round(r, 1) for r in rates],
      "flops_per_image": flops_per_image,
      "flops_source": flops_source,
      "tflops_per_s": None if tflops is None else round(tflops, 6),
      "peak_tflops": peak,
      "peak_source": peak_source,
      "mfu": None if tflops is None or peak is None else round(tflops / peak, 6),
      "peak_memory_bytes": None if peak_mem is None else int(peak_mem),
      "program_memory_bytes": program_memory_bytes,
  }


# ---------------------------------------------------------------------------------------------
# Reports: relations between rows, Markdown, JSON lines.

_SAME = ("device", "teacher", "student", "method", "batch", "precision", "num_classes")


def add_ratios(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Adds, in place, what the targets compare: ``ratio_to_step`` on epoch and cached rows (their
  rate over the step-only row of the same configuration and ``steps_per_call``, one student),
  and ``speedup_over_one_student`` on rows of K > 1 students (student-images/s over the
  one-student step row of the same configuration). Rows without such a partner are left alone."""

  def find(row, **want):
    for other in reports:
      if all(other.get(k) == row.get(k) for k in _SAME) and all(other.get(k) == v for k, v in want.items()):
        return other
    return None

  for row in reports:
    if row["students"] > 1:
      one = find(row, mode="step", students=1, steps_per_call=1)
      if one:
        row["speedup_over_one_student"] = round(row["images_per_s"] / one["images_per_s"], 3)
    elif row["mode"] in ("epoch", "cached"):
      ref = find(row, mode="step", students=1, steps_per_call=row["steps_per_call"])
      if ref:
        row["ratio_to_step"] = round(row["images_per_s"] / ref["images_per_s"], 3)
  return reports


def _fmt(value, spec: str, empty: str = "–") -> str:
  return empty if value is None else format(value, spec)


def format_table(reports: list[dict[str, Any]]) -> str:
  """The reports as one Markdown table (device and versions in a line above it)."""
  if not reports:
    return "(no results)"
  head = reports[0]
  lines = [f"device {head['device']}, jax {head['jax']}, flax {head['flax']}, {head['date']}", "",
           "| mode | teacher → student | method | batch | precision | S | K | aug | compile s | images/s (median) | "
           "min – max | GFLOP/image | TFLOP/s | MFU | peak mem MiB | vs |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in reports:
    rates = r["window_images_per_s"]
    vs = ""
    if "ratio_to_step" in r:
      vs = f"{r['ratio_to_step']:.2f}× step"
    elif "speedup_over_one_student" in r:
      vs = f"{r['speedup_over_one_student']:.2f}× one student"
    gflop = None if r["flops_per_image"] is None else r["flops_per_image"] / 1e9
    mfu = "–" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    mem = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
    lines.append(
        f"| {r['mode']} | {r['teacher'] or '–'} → {r['student']} | {r['method']} | {r['batch']} | {r['precision']} | "
        f"{r['steps_per_call']} | {r['students']} | {'yes' if r['augment'] else 'no'} | {r['compile_s']:.2f} | "
        f"{r['images_per_s']:,.0f} | {min(rates):,.0f} – {max(rates):,.0f} | {_fmt(gflop, '.3f')} | "
        f"{_fmt(r['tflops_per_s'], '.2f')} | {mfu} | {_fmt(mem, ',.0f')} | {vs} |")
  return "\n".join(lines)


def to_jsonl(reports: list[dict[str, Any]]) -> str:
  """One JSON line per report."""
  return "".join(json.dumps(r) + "\n" for r in reports)


def write_jsonl(reports: list[dict[str, Any]], path: str | Path) -> None:
  """Appends the reports to ``path`` as JSON lines (creating it and its folder)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    f.write(to_jsonl(reports))


def bench_lm(teacher: str | None = "lm_small", student: str = "lm_tiny", *, method: str = "lm_kd", batch: int = 32,
             seq_len: int = 128, vocab: int = 259, students: int = 1, precision: str = "fp32", topk: int | None = None,
             steps: int = 20, windows: int = 3, warmup: int = 3, backend: str | None = None,
             peak_tflops: float | None = None, seed: int = 0) -> dict[str, Any]:
  """Times the language-model step (:func:`kdjax.train.lm.make_lm_step`, ``cohort`` of ``students``
  seeds) on random tokens already on the device: ``tokens_per_s`` counts student tokens (``K·B·L``
  per step), the median of ``windows`` windows of ``steps`` steps after ``warmup``; FLOPs are XLA's
  count of the compiled step. ``teacher=None`` times the student alone (``method="lm_sft"``)."""

  device = resolve_device(backend)
  for name, value in (("batch", batch), ("seq_len", seq_len), ("students", students), ("steps", steps),
                      ("windows", windows)):
    _positive_int(name, value)
  m = make_method(method)
  if m.needs_teacher and teacher is None:
    raise ValueError(f"method {method!r} needs a teacher")
  build = lambda name, s: split_model(create_model(name, num_classes=vocab, input_shape=(seq_len,), seed=s))
  t_graphdef = tv = None
  t_shapes = {}
  if m.needs_teacher:
    t_graphdef, t_params, t_rest = build(teacher, seed + 100)
    tv = {"params": t_params, "rest": t_rest}
    t_shapes = feature_shapes(t_graphdef, t_params, t_rest, (seq_len,))
  tx = _optimizer(steps * (windows + warmup + 1))
  states = []
  for k in range(students):
    graphdef, params, rest = build(student, seed + k)
    mp, ms = init_method(m, jax.random.key(seed + k), feature_shapes(graphdef, params, rest, (seq_len,)), t_shapes, 0)
    states.append(init_train_state(params, rest, tx, jax.random.key(seed + k), mp, ms))
  state = stack_states(states)
  tokens = jax.random.randint(jax.random.key(seed + 7), (batch, seq_len + 1), 3, vocab, jnp.int32)
  data = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "segments": jnp.ones((batch, seq_len), jnp.int32),
          "positions": jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len)),
          "mask": jnp.ones((batch, seq_len), jnp.float32)}
  state, tv, data = jax.device_put((state, tv, data), device)
  step = make_lm_step(graphdef, tx, m, teacher_graphdef=t_graphdef if m.needs_teacher else None, topk=topk,
                      precision=precision, cohort=True)
  t0 = time.perf_counter()
  compiled = step.lower(state, tv, data).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled.cost_analysis())
  state, _ = step(state, tv, data)
  state, times = _time_calls(lambda st: step(st, tv, data)[0], state, steps, windows, warmup)
  window = float(np.median(times))
  tokens_per_s = steps * students * batch * seq_len / window
  peak = (peak_tflops, "given") if peak_tflops is not None else peak_tflops_for(device, precision)
  tflops = None if flops is None else flops * steps / window / 1e12
  return {"kind": "lm", "teacher": teacher if m.needs_teacher else None, "student": student, "method": method,
          "batch": batch, "seq_len": seq_len, "students": students, "precision": precision, "topk": topk,
          "tokens_per_s": tokens_per_s, "step_ms": 1e3 * window / steps, "compile_s": compile_s,
          "flops_per_step": flops, "tflops_per_s": tflops,
          "mfu": None if tflops is None or peak is None else tflops / peak[0], **_environment(device)}


def format_lm_table(reports: list[dict[str, Any]]) -> str:
  """Markdown rows of :func:`bench_lm` reports."""
  lines = ["| teacher | student | method | top-k | K | batch x L | precision | tokens/s | step ms | TFLOP/s | MFU | "
           "compile s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in reports:
    lines.append(f"| {r['teacher'] or '–'} | {r['student']} | {r['method']} | {r['topk'] or 'all'} | {r['students']} | "
                 f"{r['batch']} x "
                 f"{r['seq_len']} | {r['precision']} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                 f"{_fmt(r['tflops_per_s'], '.3f')} | {_fmt(r['mfu'], '.1%')} | {r['compile_s']:.1f} |")
  return "\n".join(lines)
