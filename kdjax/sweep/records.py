"""Reading sweep records (those of :mod:`kdjax.sweep.store`): grouping by variant, a record's
accuracy and config values, and the names of the two accuracies reported. Shared by the tables
(:mod:`kdjax.sweep.report`) and the plots (:mod:`kdjax.sweep.plots`).

A (variant, seed) recorded twice counts once, with its last record: a re-run replaces the earlier
result.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
