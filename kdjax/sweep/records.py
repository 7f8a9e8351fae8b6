"""Reading sweep records (those of :mod:`kdjax.sweep.store`): grouping by variant, a record's
accuracy and config values, and the names of the two accuracies reported. Shared by the tables
(:mod:`kdjax.sweep.report`) and the plots (:mod:`kdjax.sweep.plots`).

A (variant, seed) recorded twice counts once, with its last record: a re-run replaces the earlier
result. A run's health (:mod:`kdjax.health`) decides whether it counts in means, paired differences
and plots: :func:`healthy_runs` keeps the healthy ones (all, when asked), a record judged before
verdicts existed counts as healthy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kdjax.health import is_healthy, short

METRICS = ("final", "best")
METRIC_SHORT_LABELS = {"final": "last-epoch test accuracy", "best": "best-epoch test accuracy (chosen on test set)"}


def check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def by_variant(records: Iterable[dict[str, Any]]) -> dict[str, dict[Any, dict[str, Any]]]:
  """``{variant: {seed: record}}``, variants in first-seen order, seeds in first-seen order per variant;
  of several records for one (variant, seed) the last one is kept (a re-run replaces the earlier)."""
  groups: dict[str, dict[Any, dict[str, Any]]] = {}
  for r in records:
    groups.setdefault(r["variant"], {})[r["seed"]] = r
  return groups


def healthy_runs(runs: Mapping[Any, dict[str, Any]], include_unhealthy: bool = False) -> dict[Any, dict[str, Any]]:
  """The runs (``{seed: record}``, order kept) that count in means and comparisons: the healthy ones
  (:func:`kdjax.health.is_healthy`), or all of them with ``include_unhealthy``."""
  return dict(runs) if include_unhealthy else {s: r for s, r in runs.items() if is_healthy(r)}


def unhealthy_runs(runs: Mapping[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
  """The unhealthy runs of ``{seed: record}``, order kept."""
  return {s: r for s, r in runs.items() if not is_healthy(r)}


def health_text(record: dict[str, Any]) -> str:
  """A run's verdict for a table's cell: ``"ok"`` or its problems' labels (:func:`kdjax.health.short`)."""
  return short(record.get("health"))


def count_label(n: int, left_out: int) -> str:
  """``"(n=2)"``, or ``"(n=2, 1 unhealthy left out)"`` when unhealthy runs were left out: for plot labels."""
  return f"(n={n}, {left_out} unhealthy left out)" if left_out else f"(n={n})"


def accuracy_pct(record: dict[str, Any], metric: str = "final") -> float:
  """A record's test accuracy in percent at its last (``"final"``) or best (``"best"``) epoch."""
  return 100.0 * record[metric]["accuracy"]


def variant_values(variant: str) -> dict[str, str]:
  """The ``key=value`` pairs of a variant string, in order (``"method=hinton temperature=4"``)."""
  return dict(tok.split("=", 1) for tok in variant.split() if "=" in tok)


def config_value(record: dict[str, Any], key: str) -> Any:
  """``key``'s value in a record's config (a dotted key also walks nested dicts), else its value in the
  variant string (as text), else None."""
  config = record.get("config", {})
  if key in config:
    return config[key]
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, dict) or part not in node:
      return variant_values(record.get("variant", "")).get(key)
    node = node[part]
  return node
