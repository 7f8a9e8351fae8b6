"""Sweep grids: ``key=v1,v2`` items, expanded into runs, grouped into runs that train together.

Grid keys:

- ``method``: registered method names (``kdjax list``); default ``hinton``.
- ``seed``: integer seeds; default the preset's ``seeds``.
- ``temperature`` and ``alpha``: the KD temperature and the weight of the label term, as in the
  study config; they apply to the methods whose registry entry names such a hyperparameter
  (:class:`kdjax.methods.MethodSpec`'s ``temperature`` and ``label_weight``) and are dropped from
  the others' variants (``supervised`` at three temperatures is one variant, trained once per
  seed). Hinton-style KD (a method with a ``label_weight``) takes both from the study config
  unless the grid sets them; DKD and DIST keep their own temperature unless ``temperature`` is
  a key.
- ``method.<name>``: a hyperparameter of the method (``method.beta=4,8`` for DKD; a list-valued one
  joins its items with ``+``: ``method.layers=block1+block2,block2``); dropped from the variants of
  methods that do not take it.
- anything else: a study config key, as ``--set`` takes it (``distilled.learning_rate``,
  ``distilled.model``, ``teacher.model``, ``distilled.epochs``, ...; a tuple field's items are
  joined by ``+``: ``distilled.decay_epochs=5+8``).

Runs that differ only in seed, learning rate and the keys that set a hyperparameter the registry
lists as ``vmappable`` for their method (T and α of Hinton-style KD, DKD's/DIST's T and β; see
:func:`vmapped_keys`) form one group: one vmapped program trains them all and runs the teacher
once per batch for the group.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Sequence
from typing import Any

from kdjax.config import StudyConfig, override, validate_study
from kdjax.methods import make_method, method_hparams, method_names, method_spec, study_hparams
from kdjax.methods.registry import parse_value

VMAPPED_STUDY_KEYS = ("seed", "distilled.learning_rate")  # vmapped for every method


def vmapped_keys(method: str) -> tuple[str, ...]:
  """The grid keys whose values runs of ``method`` may differ in and still train as one vmapped
  group: the seed, the learning rate, and every key that sets a hyperparameter the method's
  registry entry lists as ``vmappable`` (``method.<h>``, and ``temperature``/``alpha`` where ``h``
  is its temperature or label weight)."""
  spec = method_spec(method)
  keys = [*VMAPPED_STUDY_KEYS]
  for h in spec.vmappable:
    keys.append(f"method.{h}")
    keys += [key for key, role in (("temperature", spec.temperature), ("alpha", spec.label_weight)) if role == h]
  return tuple(keys)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its study config, method and hyperparameters, and seed."""

  cfg: StudyConfig  # the preset with this run's study keys applied (cfg.distilled is the student's config)
  method: str
  hparams: tuple[tuple[str, Any], ...]  # the method's keyword arguments (T and α included where they apply)
  seed: int
  values: tuple[tuple[str, Any], ...]  # the grid values that apply to this run, in grid order (seed included)

  @property
  def variant(self) -> str:
    """The run's grid values except the seed: ``"method=hinton temperature=4"``."""
    return " ".join(f"{k}={_fmt(v)}" for k, v in self.values if k != "seed") or "base"

  @property
  def group_key(self) -> tuple:
    """Equal for runs that can train in one vmapped program."""
    vmapped = vmapped_keys(self.method)
    return (tuple((k, v) for k, v in self.values if k not in vmapped), self.method)

  def config(self) -> dict[str, Any]:
    """The run's full config as JSON-able data (what the results store keeps and hashes)."""
    return {"study": dataclasses.asdict(self.cfg), "method": self.method, "hparams": dict(self.hparams),
            "seed": self.seed, **{k: v for k, v in self.values}}


def _fmt(v) -> str:
  if isinstance(v, tuple):
    return "+".join(map(str, v))
  return f"{v:g}" if isinstance(v, float) else str(v)


def _typed(key: str, text: str, default) -> Any:
  """A ``method.<name>`` grid value, typed after the method's default for it (a list's items joined by '+')."""
  try:
    return parse_value(text, default, sep="+")
  except ValueError as e:
    raise ValueError(f"grid key {key!r}: {e}") from None


def parse_grid(items: Sequence[str], base: StudyConfig) -> dict[str, list]:
  """``["temperature=1,4,8", "seed=0,1"]`` → ``{"temperature": [1.0, 4.0, 8.0], "seed": [0, 1]}``, typed
  and checked against ``base``: an empty grid, a key given twice, a key with no values, an unknown
  key, a method that does not exist or a value of the wrong type fails here, naming the key, before
  any training."""
  if base.method != "hinton" or base.method_hparams:
    raise ValueError(f"sweeps take the method from the grid (method=NAME, method.HPARAM=V1,V2), not from the "
                     f"config (method {base.method!r}, hyperparameters {dict(base.method_hparams)})")
  if not items:
    raise ValueError("empty grid: give at least one key=v1,v2 (e.g. temperature=1,4,8)")
  grid: dict[str, list] = {}
  for item in items:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ValueError(f"grid item {item!r} is not of the form key=v1,v2")
    if key in grid:
      raise ValueError(f"grid key {key!r} is given twice")
    texts = [t.strip() for t in text.split(",") if t.strip()]
    if not texts:
      raise ValueError(f"grid key {key!r} has no values")
    if len(set(texts)) != len(texts):
      raise ValueError(f"grid key {key!r} repeats a value: {texts}")
    if key == "method":
      unknown = [t for t in texts if t not in method_names()]
      if unknown:
        raise ValueError(f"grid key 'method': unknown method(s) {unknown}; known: {', '.join(method_names())}")
      lm = [t for t in texts if method_spec(t).family == "lm"]
      if lm:
        raise ValueError(f"grid key 'method': {lm} distil language models; compare them with an lm_ study "
                         "(kdjax distill --config lm_stdlib)")
      grid[key] = texts
    elif key == "seed":
      try:
        grid[key] = [int(t) for t in texts]
      except ValueError:
        raise ValueError(f"grid key 'seed': seeds are integers, got {texts}") from None
    elif key.startswith("method."):
      grid[key] = texts  # typed per method in expand(), where the method is known
    else:
      values = []
      for t in texts:
        try:
          cfg = override(base, [f"{key}={t.replace('+', ',')}"])  # a tuple field's items are joined by '+'
        except ValueError as e:
          raise ValueError(f"grid key {key!r}: {e}") from None
        values.append(_get(cfg, key))
      grid[key] = values
  methods = grid.get("method", ["hinton"])
  for m in methods:
    spec = method_spec(m)
    for key, hparam in (("temperature", spec.temperature), ("alpha", spec.label_weight)):
      if hparam is not None and key in grid and f"method.{hparam}" in grid:
        raise ValueError(f"grid keys {key!r} and 'method.{hparam}' both set the {hparam} of {m}; give one of them")
  for key in (k for k in grid if k.startswith("method.")):
    name = key.split(".", 1)[1]
    if not any(name in method_hparams(m) for m in methods):
      raise ValueError(f"grid key {key!r}: none of the methods {methods} takes {name!r}")
  return grid


def _get(cfg, dotted: str):
  for part in dotted.split("."):
    cfg = getattr(cfg, part)
  return cfg


def expand(grid: dict[str, list], base: StudyConfig) -> list[Run]:
  """Every run of the grid (its cartesian product), with the keys that do not apply to a run's
  method dropped and the runs that then coincide merged; each run's study config is validated."""
  keys = list(grid)
  runs: dict[tuple, Run] = {}
  for combo in itertools.product(*(grid[k] for k in keys)):
    values = dict(zip(keys, combo))
    method = values.get("method", "hinton")
    spec = method_spec(method)
    params = method_hparams(method)
    applied: list[tuple[str, Any]] = []
    study_items = []
    hparams: dict[str, Any] = {}
    for k in keys:
      v = values[k]
      if k in ("temperature", "alpha"):
        hparam = spec.temperature if k == "temperature" else spec.label_weight
        if hparam is not None:
          study_items.append(f"{k}={v}")
          hparams[hparam] = v
          applied.append((k, v))
      elif k.startswith("method."):
        name = k.split(".", 1)[1]
        if name in params:
          default = params[name].default
          hparams[name] = _typed(k, v, None if default is inspect.Parameter.empty else default)
          applied.append((k, hparams[name]))
      elif k not in ("method", "seed"):
        study_items.append(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}")
        if k == "distilled.model":  # the sweep trains `distilled`; `student` must name the same model
          study_items.append(f"student.model={v}")
        applied.append((k, v))
      else:
        applied.append((k, v))
    cfg = override(base, study_items)
    try:
      validate_study(cfg)
    except ValueError as e:
      raise ValueError(f"grid values {dict(applied)}: {e}") from None
    # Hinton-style KD: the study's T and alpha unless the grid sets them; DKD and DIST keep their own T
    hparams = study_hparams(method, hparams, temperature=cfg.temperature, alpha=cfg.alpha)
    try:
      make_method(method, **hparams)  # the method's own checks (ranges, types), before any training
    except (ValueError, TypeError) as e:
      raise ValueError(f"grid values {dict(applied)}: {e}") from None
    seed = values.get("seed")
    seeds = [seed] if seed is not None else list(base.seeds)
    for s in seeds:
      vals = tuple(applied) if seed is not None else (*applied, ("seed", s))
      run = Run(cfg, method, tuple(sorted(hparams.items())), s, vals)
      runs.setdefault(vals, run)
  return list(runs.values())


def group_runs(runs: Sequence[Run], max_parallel: int | None = None) -> list[list[Run]]:
  """Runs that can train together (equal :attr:`Run.group_key`), in first-seen order, each group
  cut into chunks of at most ``max_parallel`` runs (the cap on students held in memory at once)."""
  if max_parallel is not None and max_parallel < 1:
    raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
  groups: dict[tuple, list[Run]] = {}
  for run in runs:
    groups.setdefault(run.group_key, []).append(run)
  cap = max_parallel or max((len(g) for g in groups.values()), default=1)
  return [g[i:i + cap] for g in groups.values() for i in range(0, len(g), cap)]
