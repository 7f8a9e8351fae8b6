"""The registry of methods: every method kdjax can build by name, with where it comes from and
what its hyperparameters mean to sweeps and studies.

``make_method(name, **hparams)`` builds one; ``kdjax list`` prints them all. Adding a method is
its factory (a function of keyword hyperparameters returning a :class:`~kdjax.methods.base.Method`)
and one :class:`MethodSpec` below.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kdjax.methods.adversarial import adversarial_training, ard
from kdjax.methods.base import Method
from kdjax.methods.contrastive import crd, crd_inbatch, crd_queue
from kdjax.methods.domain import domain_kd
from kdjax.methods.feature import (activation_boundary, attention, correlation_congruence, factor_transfer, fitnet, fsp,
                                   nst, pkt, rkd, similarity_preserving, vid)
from kdjax.methods.logit import dist_kd, dkd, gkd, hinton_kd, js_kd, reverse_kd, supervised
from kdjax.methods.review import reviewkd
from kdjax.methods.self_kd import byot, tf_kd
from kdjax.methods.token import lm_gkd, lm_kd, lm_minilm, lm_sft, lm_tinybert


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A registered method.

  Attributes:
    name: what ``make_method``, ``--method`` and sweeps' ``method=`` call it.
    make: the factory, keyword hyperparameters -> :class:`~kdjax.methods.base.Method`.
    paper: where it comes from, in a few words (the README's method table has the titles).
    family: ``"baseline"``, ``"logit"``, ``"feature"``, ``"relation"``, ``"contrastive"``,
      ``"review"``, ``"self"``, ``"domain"``, ``"adversarial"``, or ``"lm"`` (causal language models,
      :mod:`kdjax.methods.token`: they train with :mod:`kdjax.train.lm`, not the image step).
    temperature: the factory's KD-temperature hyperparameter, if it has one: a sweep's
      ``temperature`` key and a study's ``temperature`` apply to it.
    label_weight: the hyperparameter weighing the label term, if it has one: a sweep's ``alpha``
      key and a study's ``alpha`` apply to it. A method with one takes both its temperature and
      its label weight from the study unless they are set explicitly (Hinton-style KD); one
      without keeps its own defaults (DKD's and DIST's T, say).
    vmappable: hyperparameters that may be traced values (plain scalar factors, no Python checks
      or branches on them): a sweep trains runs differing only in these as one vmapped program.
  """

  name: str
  make: Callable[..., Method]
  paper: str
  family: str
  temperature: str | None = None
  label_weight: str | None = None
  vmappable: tuple[str, ...] = ()


# Hinton-style KD: the KD temperature and the label term's weight, both plain factors (traceable).
_KD = {"temperature": "temperature", "label_weight": "alpha", "vmappable": ("temperature", "alpha")}

REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("supervised", supervised, "cross-entropy on the labels, no teacher", "baseline"),
    MethodSpec("hinton", hinton_kd, "Hinton et al. 2015", "logit", **_KD),
    MethodSpec("reverse_kd", reverse_kd, "KD, reverse KL", "logit", **_KD),
    MethodSpec("js_kd", js_kd, "KD, Jensen-Shannon", "logit", **_KD),
    MethodSpec("gkd", gkd, "Agarwal et al. 2024 (GKD, generalized JSD with skew beta)", "logit",
               **{**_KD, "vmappable": ("temperature", "alpha", "beta")}),
    MethodSpec("dkd", dkd, "Zhao et al. 2022 (DKD)", "logit", temperature="temperature",
               vmappable=("temperature", "beta")),
    MethodSpec("dist", dist_kd, "Huang et al. 2022 (DIST)", "logit", temperature="temperature",
               vmappable=("temperature", "beta")),
    MethodSpec("fitnet", fitnet, "Romero et al. 2015 (FitNets)", "feature"),
    MethodSpec("at", attention, "Zagoruyko & Komodakis 2017 (AT)", "feature"),
    MethodSpec("nst", nst, "Huang & Wang 2017 (NST)", "feature"),
    MethodSpec("vid", vid, "Ahn et al. 2019 (VID)", "feature"),
    MethodSpec("ft", factor_transfer, "Kim et al. 2018 (FT)", "feature"),
    MethodSpec("ab", activation_boundary, "Heo et al. 2019 (AB)", "feature"),
    MethodSpec("fsp", fsp, "Yim et al. 2017 (FSP)", "feature"),
    MethodSpec("sp", similarity_preserving, "Tung & Mori 2019 (SP)", "relation"),
    MethodSpec("rkd", rkd, "Park et al. 2019 (RKD)", "relation"),
    MethodSpec("pkt", pkt, "Passalis & Tefas 2018 (PKT)", "relation"),
    MethodSpec("cc", correlation_congruence, "Peng et al. 2019 (CC)", "relation"),
    MethodSpec("crd", crd, "Tian et al. 2020 (CRD, memory bank)", "contrastive"),
    MethodSpec("crd_queue", crd_queue, "CRD with a MoCo-style queue", "contrastive"),
    MethodSpec("crd_inbatch", crd_inbatch, "CRD with in-batch negatives", "contrastive"),
    MethodSpec("reviewkd", reviewkd, "Chen et al. 2021 (ReviewKD)", "review"),
    MethodSpec("tf_kd", tf_kd, "Yuan et al. 2020 (Tf-KD, virtual teacher)", "self"),
    MethodSpec("byot", byot, "Zhang et al. 2019 (BYOT, self-distillation)", "self"),
    MethodSpec("domain_kd", domain_kd, "KD + alignment to an unlabelled domain (DAN MMD, Deep CORAL, DANN)", "domain"),
    MethodSpec("adversarial_training", adversarial_training,
               "Madry et al. 2018 (PGD adversarial training), no teacher", "adversarial"),
    MethodSpec("ard", ard, "Goldblum et al. 2020 (ARD, adversarially robust distillation)", "adversarial"),
    MethodSpec("lm_sft", lm_sft, "next-token cross-entropy, no teacher (language models)", "lm"),
    MethodSpec("lm_kd", lm_kd, "Kim & Rush 2016 (word-level KD; forward/reverse KL, JSD, TV)", "lm"),
    MethodSpec("lm_gkd", lm_gkd, "Agarwal et al. 2024 (GKD, on-policy distillation)", "lm"),
    MethodSpec("lm_minilm", lm_minilm, "Wang et al. 2021 (MiniLM-v2, self-attention relations)", "lm"),
    MethodSpec("lm_tinybert", lm_tinybert, "Jiao et al. 2020 (TinyBERT, hidden states and attention)", "lm"),
)}


def method_names() -> list[str]:
  """Every registered method's name, sorted."""
  return sorted(REGISTRY)


def method_spec(name: str) -> MethodSpec:
  """The registered method ``name``; an unknown name is a ValueError listing the known ones."""
  if name not in REGISTRY:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
  return REGISTRY[name]


def method_hparams(name: str) -> dict[str, inspect.Parameter]:
  """The hyperparameters of method ``name``: its factory's keyword parameters (with their defaults;
  ``inspect.Parameter.empty`` where one is required)."""
  return {k: p for k, p in inspect.signature(method_spec(name).make).parameters.items()
          if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def format_hparams(name: str) -> str:
  """``"alpha=0.5, beta=8.0, temperature=(required)"``: method ``name``'s hyperparameters and defaults."""
  return ", ".join(f"{k}=" + ("(required)" if p.default is p.empty else repr(p.default))
                   for k, p in method_hparams(name).items())


def make_method(name: str, **hparams) -> Method:
  """Builds registered method ``name`` with keyword hyperparameters ``hparams``. An unknown name, an
  unknown hyperparameter or a missing required one is a ValueError that lists what there is."""
  spec = method_spec(name)
  known = method_hparams(name)
  unknown = [k for k in hparams if k not in known]
  if unknown:
    raise ValueError(f"method {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; its hyperparameters: "
                     f"{format_hparams(name) or 'none'}")
  missing = [k for k, p in known.items() if p.default is p.empty and k not in hparams]
  if missing:
    raise ValueError(f"method {name!r} needs {', '.join(map(repr, missing))}; its hyperparameters: "
                     f"{format_hparams(name)}")
  resolved = {k: p.default for k, p in known.items() if p.default is not p.empty}
  resolved.update(hparams)
  return dataclasses.replace(spec.make(**hparams), identity=(("name", name), *(
      (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(resolved.items()))))


def parse_value(text: str, default, sep: str = ",") -> Any:
  """A hyperparameter's value from the command line, typed after its ``default``: a bool, a tuple
  (items joined by ``sep``), an int (a float where the text is one), a float; with no usable
  default (a required one, ``None``) a tuple if ``sep`` is in the text, a number if it reads as
  one, else the text. A value of the wrong type is a ValueError."""
  if isinstance(default, bool):
    if text.lower() in ("true", "1", "yes", "false", "0", "no"):
      return text.lower() in ("true", "1", "yes")
    raise ValueError(f"expected true or false, got {text!r}")
  if isinstance(default, tuple):  # e.g. layers: one value names several
    return tuple(part.strip() for part in text.split(sep) if part.strip())
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      pass  # an int default (e.g. 0) may take a float
  if isinstance(default, (int, float)):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"expected a number, got {text!r}") from None
  if sep in text:  # a list (e.g. reviewkd's teacher_layers, default None)
    return tuple(part.strip() for part in text.split(sep) if part.strip())
  try:  # no usable default (a required argument, None): a number if it reads as one
    return float(text)
  except ValueError:
    return text


def parse_hparam(name: str, hparam: str, text: str, sep: str = ",") -> Any:
  """Hyperparameter ``hparam`` of method ``name`` from the text ``text`` (see :func:`parse_value`);
  an unknown method or hyperparameter is a ValueError that lists what there is."""
  params = method_hparams(name)
  if hparam not in params:
    raise ValueError(f"method {name!r} has no hyperparameter {hparam!r}; its hyperparameters: "
                     f"{format_hparams(name) or 'none'}")
  default = params[hparam].default
  return parse_value(text, None if default is inspect.Parameter.empty else default, sep)


def study_hparams(name: str, hparams: Mapping[str, Any], *, temperature: float, alpha: float) -> dict[str, Any]:
  """``hparams`` with a study's (or sweep's) ``temperature`` and ``alpha`` filled in where method
  ``name`` takes them from the study: Hinton-style KD (a method with a ``label_weight``) takes its
  temperature and its label weight from the study unless ``hparams`` sets them; other methods keep
  their own defaults."""
  spec = method_spec(name)
  out = dict(hparams)
  if spec.label_weight is not None:
    out.setdefault(spec.label_weight, alpha)
    if spec.temperature is not None:
      out.setdefault(spec.temperature, temperature)
  return out


def vmapped_hparams(name: str, hparams: Mapping[str, Any] | Iterable) -> list[str]:
  """The hyperparameters among ``hparams`` (a dict, ``(name, value)`` pairs or names) that a sweep
  passes to method ``name`` as traced per-student values: those in its spec's ``vmappable``, in
  that order. Others (e.g. CRD's contrastive ``temperature``) stay Python values: their checks
  need concrete numbers."""
  if isinstance(hparams, Mapping):
    given = set(hparams)
  else:
    given = {h[0] if isinstance(h, tuple) else h for h in hparams}
  return [k for k in method_spec(name).vmappable if k in given]


def papers() -> dict[str, str]:
  """``{name: paper}`` for every registered method."""
  return {name: spec.paper for name, spec in sorted(REGISTRY.items())}
