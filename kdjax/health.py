"""A run's health: whether its number may stand in a comparison.

Every run is judged from what its training loop already saw: the first step's loss and gradient
norm, the test accuracy before the first step, each epoch's mean training loss and gradient norm,
its test accuracy and how its test predictions spread over the classes, and the steps refused as
non-finite. A run is ``ok``, or has one or more problems:

- ``non_finite``: steps were skipped because their loss, gradient or update was not finite (a
  sweep's students skip them and go on; a single run stops at the first one instead).
- ``diverged``: an epoch's mean training loss rose above ``loss_rise`` times the first step's loss,
  or its mean gradient norm above ``grad_rise`` times the first step's, or a loss was not finite.
  A staged method (FT, AB, FSP: an init stage with another loss) is judged from the first epoch
  wholly in its last stage instead, against that epoch's levels.
- ``not_trained``: no epoch's test accuracy got ``trained_margin`` above the accuracy before the
  first step.
- ``collapsed`` (a run that did train, judged otherwise ``not_trained``): the last epoch's test
  accuracy is within ``chance_margin`` of what always predicting the commonest test class scores,
  or one class takes at least ``top_class_share`` of the test predictions.
- ``weak_teacher`` (a teacher's run, judged against the students trained alone): the teacher's
  test accuracy is no better than the students' mean plus ``teacher_spread`` sample standard
  deviations over their seeds. Distillation from it cannot be told apart from training alone.

A verdict only marks a run: it never changes a stored number. Tables, reports and plots show it
next to the number, and means, paired differences and rankings leave unhealthy runs out unless
asked to keep them (saying how many were left out).

This module is plain Python (no JAX): the study, the sweep store and the reports share it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PROBLEMS = {
    "non_finite": ("non-finite steps skipped",
                   "lower the learning rate, clip the gradient (clip_norm), or lower the distillation term's weight "
                   "(T²·weight)"),
    "diverged": ("diverged",
                 "lower the learning rate, warm it up (warmup_epochs) or clip the gradient (clip_norm); lower the "
                 "distillation term's T²·weight, or ramp it in (e.g. DKD's method.warmup_epochs)"),
    "collapsed": ("collapsed to a constant predictor",
                  "lower the learning rate; in a distilled run the distillation term may overwhelm the labels: "
                  "ramp it in (method.warmup_epochs), lower its weight or the temperature"),
    "not_trained": ("not trained",
                    "raise the learning rate or train longer; check that the labels match the inputs"),
    "weak_teacher": ("teacher no better than the student alone",
                     "train the teacher longer or take a larger one: a gain or loss from distilling it says "
                     "nothing about the method"),
}
EXIT_UNHEALTHY = 3  # `kdjax distill` and `kdjax sweep` exit with this when a run is unhealthy (2: bad input, 1: error)


@dataclasses.dataclass(frozen=True)
class HealthThresholds:
  """The thresholds of the verdicts (see the module's docstring); ``kdjax distill --set health.loss_rise=3``.

  Defaults, checked against the method zoo (docs/method_zoo.md) and the failures they must catch: a
  healthy run's epoch-mean loss stays below its first step's, so twice it is far from normal; the
  gradient norm of a healthy run grows a few times at most over its first step's (more with a
  ramped-in distillation term), so 25 times is an explosion.
  """

  loss_rise: float = 2.0
  grad_rise: float = 25.0
  chance_margin: float = 0.05  # accuracy as a fraction: within 5 points of the commonest class's share
  top_class_share: float = 0.9
  trained_margin: float = 0.02
  kept_gain: float = 0.5  # collapsed: the last epoch keeps less than this share of the best epoch's gain
  teacher_spread: float = 1.0  # standard deviations of the students alone

  def __post_init__(self):
    check_thresholds(self)


def check_thresholds(t: HealthThresholds) -> None:
  """A ValueError naming the first threshold that cannot mean what it says."""
  for name in ("loss_rise", "grad_rise"):
    value = getattr(t, name)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 1.0):
      raise ValueError(f"health.{name} must be a finite factor > 1 (a rise over the first step's value), got {value!r}")
  for name in ("chance_margin", "trained_margin", "kept_gain"):
    value = getattr(t, name)
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
      raise ValueError(f"health.{name} must lie in [0, 1) (a fraction of the test set), got {value!r}")
  if not (isinstance(t.top_class_share, (int, float)) and 0.0 < t.top_class_share <= 1.0):
    raise ValueError(f"health.top_class_share must lie in (0, 1], got {t.top_class_share!r}")
  if not (isinstance(t.teacher_spread, (int, float)) and math.isfinite(t.teacher_spread) and t.teacher_spread >= 0):
    raise ValueError(f"health.teacher_spread must be a finite number >= 0, got {t.teacher_spread!r}")


def majority_share(labels: Iterable[int]) -> float:
  """The share of the commonest label: the accuracy of always predicting it (chance, at best)."""
  counts: dict[int, int] = {}
  n = 0
  for y in labels:
    counts[int(y)] = counts.get(int(y), 0) + 1
    n += 1
  if not n:
    raise ValueError("no labels")
  return max(counts.values()) / n


def problem(kind: str, detail: str) -> dict[str, str]:
  label, remedy = PROBLEMS[kind]
  return {"kind": kind, "label": label, "detail": detail, "remedy": remedy}


def verdict(problems: Sequence[Mapping[str, str]], **measured: Any) -> dict[str, Any]:
  """A health record: ``ok``, its ``problems`` and the measurements judged (for the curious)."""
  return {"ok": not problems, "problems": list(problems), **measured}


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def judge_run(history: Sequence[Mapping[str, Any]], initial: Mapping[str, Any], *, majority: float,
              thresholds: HealthThresholds = HealthThresholds(), skipped_steps: int = 0,
              main_stage: float = 0.0) -> dict[str, Any]:
  """The health record of one run from its epoch records (``train_loss``, ``train_grad_norm``,
  ``test_accuracy``, ``test_loss``, ``test_top_class_share``; missing ones are not judged) and its
  ``initial`` metrics (``train_loss`` and ``train_grad_norm`` of the first step, ``test_accuracy``
  before it); ``majority`` is the commonest test class's share, ``skipped_steps`` the steps refused
  as non-finite. ``main_stage``: epochs done when a staged method's last objective starts
  (:attr:`kdjax.methods.Method.main_stage`); its loss is not the first step's, so divergence is
  then judged against the first epoch wholly after it, from that epoch on."""
  t = thresholds
  found = []
  measured: dict[str, Any] = {}
  if skipped_steps:
    found.append(problem("non_finite", f"{skipped_steps} non-finite steps skipped"))
  if not history:
    return verdict(found)
  # Diverged: the loss or the gradient norm far above the first step's (a staged method's: the first
  # epoch's of its last stage), or a loss that is not finite.
  reasons = []
  first_main = math.ceil(main_stage) + 1 if main_stage > 0 else None  # the first epoch wholly in the last stage
  for key, factor, name in (("loss", t.loss_rise, "training loss"), ("grad_norm", t.grad_rise, "gradient norm")):
    values = [(h["epoch"], h.get(f"train_{key}")) for h in history if f"train_{key}" in h]
    bad = [e for e, v in values if v is not None and not _finite(v)]
    if key == "loss" and bad:
      reasons.append(f"training loss not finite in epoch {bad[0]}")
      continue
    if first_main is None:
      early, since = initial.get(f"train_{key}"), "the first step's"
    else:
      values = [(e, v) for e, v in values if e >= first_main]
      early = values[0][1] if values and values[0][0] == first_main else None
      since = f"epoch {first_main}'s (the first after the init stage)"
    if not _finite(early) or early <= 0 or not values:
      continue
    epoch, peak = max(((e, v) for e, v in values if _finite(v)), key=lambda ev: ev[1], default=(None, None))
    if peak is None:
      continue
    measured[f"{key}_rise"] = round(peak / early, 3)
    if peak > factor * early:
      reasons.append(f"{name} {peak:.3g} in epoch {epoch}, {peak / early:.1f}x {since} {early:.3g}")
  last = history[-1]
  if "test_loss" in last and last["test_loss"] is not None and not _finite(last["test_loss"]):
    reasons.append(f"test loss {last['test_loss']}")
  elif _finite(last.get("test_loss")) and last["test_loss"] > 1e6:
    reasons.append(f"test loss {last['test_loss']:.3g}")
  if reasons:
    found.append(problem("diverged", "; ".join(reasons)))
  # Collapsed, or not trained: the last epoch's test predictions.
  acc = last.get("test_accuracy")
  share = last.get("test_top_class_share")
  collapsed = []
  if _finite(acc) and acc <= majority + t.chance_margin:
    collapsed.append(f"test accuracy {100 * acc:.2f}%, chance (the commonest class) {100 * majority:.2f}%")
  if _finite(share) and share >= t.top_class_share and majority < t.top_class_share:
    collapsed.append(f"one class takes {100 * share:.1f}% of the test predictions")
  start = initial.get("test_accuracy")
  best_epoch = max((h for h in history if _finite(h.get("test_accuracy"))), key=lambda h: h["test_accuracy"],
                   default=None)
  if (not collapsed and _finite(acc) and _finite(start) and best_epoch is not None
      and acc - start < t.kept_gain * (best_epoch["test_accuracy"] - start)):
    collapsed.append(f"test accuracy fell to {100 * acc:.2f}% from {100 * best_epoch['test_accuracy']:.2f}% in epoch "
                     f"{best_epoch['epoch']} (less than {100 * t.kept_gain:g}% of its gain over the start kept)")
  best = max((h["test_accuracy"] for h in history if _finite(h.get("test_accuracy"))), default=None)
  if _finite(acc) and _finite(start) and best < start + t.trained_margin:  # no epoch left the initial state
    found.append(problem("not_trained", f"test accuracy {100 * acc:.2f}% (best epoch {100 * best:.2f}%) against "
                                        f"{100 * start:.2f}% before the first step"))
  elif collapsed:  # learnt, then fell to a constant predictor
    found.append(problem("collapsed", "; ".join(collapsed)))
  return verdict(found, **measured)


def judge_teacher(teacher_accuracy: float, student_accuracies: Sequence[float],
                  thresholds: HealthThresholds = HealthThresholds()) -> dict[str, str] | None:
  """The ``weak_teacher`` problem when the teacher's test accuracy is no better than the students
  trained alone (their mean plus ``teacher_spread`` sample standard deviations), else ``None``."""
  accs = [a for a in student_accuracies if _finite(a)]
  if not accs or not _finite(teacher_accuracy):
    return None
  mean = sum(accs) / len(accs)
  std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
  if teacher_accuracy > mean + thresholds.teacher_spread * std:
    return None
  return problem("weak_teacher", f"teacher {100 * teacher_accuracy:.2f}% against the student alone's "
                                 f"{100 * mean:.2f}% ± {100 * std:.2f}% over {len(accs)} seed(s)")


def add_problem(health: Mapping[str, Any] | None, found: Mapping[str, str]) -> dict[str, Any]:
  """``health`` with one more problem."""
  health = dict(health or verdict([]))
  return {**health, "ok": False, "problems": [*health.get("problems", []), dict(found)]}


def is_healthy(record: Mapping[str, Any]) -> bool:
  """Whether a stored run (a record with a ``health`` entry) is healthy; one judged before verdicts
  existed counts as healthy."""
  health = record.get("health")
  return health is None or bool(health.get("ok", True))


def short(health: Mapping[str, Any] | None) -> str:
  """``"ok"`` or the problems' labels, for a table's cell."""
  if health is None or health.get("ok", True):
    return "ok"
  return ", ".join(p["label"] for p in health["problems"])


def warning_block(unhealthy: Sequence[tuple[str, Mapping[str, Any]]], *, excluded: bool = True) -> str:
  """The warning a command ends with: each unhealthy run (its name and health record), its
  problems with what was measured, and a likely remedy; empty when there are none."""
  if not unhealthy:
    return ""
  lines = [f"WARNING: {len(unhealthy)} unhealthy run(s)"
           + (" — left out of the means and comparisons above:" if excluded else " — kept in the means above:")]
  for name, health in unhealthy:
    for p in health["problems"]:
      lines.append(f"  {name}: {p['label']} ({p['detail']})")
      lines.append(f"    likely remedy: {p['remedy']}")
  return "\n".join(lines)
