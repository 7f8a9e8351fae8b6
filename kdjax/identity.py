"""A run's identity: everything that determines its result, as flat fields and one hash.

A run's result is fixed by its resolved config, its method and the method's hyperparameters, its
seeds, its teacher and its data. :func:`identity` turns those parts into flat ``"group.key"``
fields (``{"config.learning_rate": 0.05, "method.temperature": 4, "data.sha256": "..."}``) and a
hash of them; checkpoints and results files store both, and a resume compares the fields, so a
refusal names what changed (:func:`differences`). :func:`fingerprint` is the data's part: its
name, sizes, shapes and a SHA-256 of its arrays, so two datasets of the same size differ.

Plain Python and NumPy: no JAX, no other kdjax module.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "unlabelled_images",
           "teacher_train_images")


def plain(value: Any, *, strict: bool = False) -> Any:
  """``value`` as JSON stores it, with the differences that do not change a setting removed, for hashing.

  Floats with an integral value become ints (``4.0`` -> ``4``, ``-0.0`` -> ``0``), so a value written
  as ``4`` in one place and ``4.0`` in another is one value; other floats are kept (JSON writes them
  with ``repr``, the shortest text that reads back to the same float). Tuples become lists, NumPy
  scalars and arrays Python numbers and lists, dict keys strings (JSON's keys). Bools stay bools:
  ``True`` and ``1`` differ. Anything else is its ``repr``, or with ``strict`` a ``TypeError``.
  """
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping):
    return {str(k): plain(v, strict=strict) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v, strict=strict) for v in value]
  if hasattr(value, "tolist") and callable(value.tolist):  # a NumPy scalar or array
    return plain(value.tolist(), strict=strict)
  if isinstance(value, int):
    return int(value)
  if isinstance(value, float):
    return int(value) if math.isfinite(value) and value.is_integer() else value
  if strict:
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-able")
  return repr(value)


def canonical_json(value: Any, *, strict: bool = False) -> str:
  """``value`` as compact JSON with sorted keys and :func:`plain` values: the text a hash is taken of."""
  return json.dumps(plain(value, strict=strict), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def flatten(parts: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dicts as one dict of dotted keys: ``{"config": {"epochs": 5}}`` -> ``{"config.epochs": 5}``
  (lists and scalars are leaves)."""
  out: dict[str, Any] = {}
  for key, value in parts.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      out.update(flatten(value, name + "."))
    else:
      out[name] = plain(value)
  return out


def digest(fields: Mapping[str, Any]) -> str:
  """A 16-hex-character SHA-256 of ``fields`` (key order and int-or-float spelling do not matter)."""
  return hashlib.sha256(canonical_json(dict(fields)).encode("ascii")).hexdigest()[:16]


def identity(**parts: Any) -> dict[str, Any]:
  """``{"hash": ..., "fields": {...}}`` of a run made of ``parts`` (e.g. ``config=``, ``method=``,
  ``seed=``, ``data=``, ``teacher=``), the fields flattened with :func:`flatten`."""
  fields = flatten(parts)
  return {"hash": digest(fields), "fields": fields}


def differences(stored: Mapping[str, Any], current: Mapping[str, Any], limit: int = 8) -> list[str]:
  """The fields in which two identities' ``fields`` differ, as ``"name: stored -> current"`` lines
  (sorted, at most ``limit``, then how many more); a field only one side has shows ``(none)``."""
  stored, current = plain(dict(stored)), plain(dict(current))
  names = sorted(k for k in set(stored) | set(current) if stored.get(k, _NONE) != current.get(k, _NONE))

  def show(fields, k):
    v = fields.get(k, _NONE)
    text = "(none)" if v is _NONE else json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."

  lines = [f"{k}: {show(stored, k)} -> {show(current, k)}" for k in names[:limit]]
  if len(names) > limit:
    lines.append(f"... and {len(names) - limit} more")
  return lines


_NONE = object()


def array_digest(*arrays: np.ndarray) -> str:
  """A 16-hex-character SHA-256 of the arrays' shapes, dtypes and bytes."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.shape}{a.dtype.str};".encode())
    h.update(a.data)
  return h.hexdigest()[:16]


def fingerprint(data) -> dict[str, Any]:
  """The data's part of a run's identity: name, split sizes, example shape, classes and a SHA-256 of
  every array (images, labels and any extras). Computed once per dataset object."""
  cached = getattr(data, "_kdjax_fingerprint", None)
  if cached is not None:
    return dict(cached)
  present = [a for a in (getattr(data, n, None) for n in _ARRAYS) if a is not None]
  found = {"name": data.name, "train": len(data.train_labels), "test": len(data.test_labels),
           "shape": list(data.train_images.shape[1:]), "num_classes": int(data.num_classes),
           "sha256": array_digest(*present, *([np.asarray(list(data.vocab))] if data.vocab is not None else []))}
  object.__setattr__(data, "_kdjax_fingerprint", dict(found))  # a frozen dataclass: cached beside its fields
  return found
