"""The sweep's results store: one JSON object per finished run, one per line of ``results.jsonl``.

A record holds the run's ``run_id``, its ``variant`` (the grid
values except the seed, ``"key=value"`` joined by spaces), its ``seed``, full ``config``, per-epoch
``history``, the ``final`` and ``best`` epochs' test metrics and the environment it ran in.
Lines are only ever appended, each in one write followed by ``fsync``, so a crash can at worst
leave the last line cut short: :func:`load_records` skips such a line with a warning, and the
next :func:`append_record` cuts it off before writing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

ID_LENGTH = 12


def canonical(value: Any) -> Any:
  """``value`` with the differences that do not change a config removed, for hashing.

  Floats with an integral value become ints (``4.0`` -> ``4``, ``-0.0`` -> ``0``), so a value
  written as ``4`` in one place and ``4.0`` in another gives the same id; other floats are kept
  (JSON writes them with ``repr``, the shortest text that reads back to the same float). Tuples
  become lists, numpy scalars and arrays become Python numbers and lists, and dict keys become
  strings (JSON's keys). Bools stay bools: ``True`` and ``1`` are different configs.
  """
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return value
  if isinstance(value, dict):
    return {str(k): canonical(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [canonical(v) for v in value]
  if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalar or array
    return canonical(value.tolist())
  if isinstance(value, int):
    return int(value)
  if isinstance(value, float):
    if math.isfinite(value) and value.is_integer():
      return int(value)
    return value
  raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-able")


def canonical_json(config: dict[str, Any]) -> str:
  """The config as compact JSON with sorted keys and :func:`canonical` values."""
  return json.dumps(canonical(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def run_id(config: dict[str, Any]) -> str:
  """A stable 12-hex-character id of a run: the start of the SHA-256 of :func:`canonical_json`.

  The same config gives the same id whatever the key order and whether a whole number is written
  as an int or a float (``{"temperature": 4}`` and ``{"temperature": 4.0}`` are one run).
  """
  return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()[:ID_LENGTH]


def _cut_partial_line(path: Path) -> None:
  """Removes a last line without its newline: the remains of a write a crash interrupted."""
  size = path.stat().st_size
  if size == 0:
    return
  with path.open("rb+") as f:
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    # Walk back to the previous newline (lines are short, but read in blocks all the same).
    end, block = size, 1 << 16
    while end > 0:
      start = max(0, end - block)
      f.seek(start)
      chunk = f.read(end - start)
      i = chunk.rfind(b"\n")
      if i >= 0:
        keep = start + i + 1
        break
      end = start
    else:
      keep = 0
    f.seek(keep)
    partial = f.read(size - keep)
    f.truncate(keep)
    f.flush()
    os.fsync(f.fileno())
  warnings.warn(f"{path}: removed an incomplete last line ({len(partial)} bytes, an interrupted write) "
                f"before appending", stacklevel=3)


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
  """Appends ``record`` as one JSON line to ``path`` and syncs it to disk, creating the parent dirs.

  An incomplete last line left by a crash (one without its newline) is cut off first, so that it
  does not run into the new record; a complete line is never changed.
  """
  path = Path(path)
  line = json.dumps(record, ensure_ascii=False) + "\n"
  if "\n" in line[:-1]:  # cannot happen with json.dumps, but the format depends on it
    raise ValueError("a record must serialize to a single line")
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.exists():
    _cut_partial_line(path)
  with path.open("ab") as f:
    f.write(line.encode("utf-8"))
    f.flush()
    os.fsync(f.fileno())


def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All complete records of ``path`` in file order; ``[]`` when the file does not exist.

  Blank lines are ignored. A last line that is not a JSON object (a write cut short by a crash)
  is skipped with a warning; a bad line anywhere else is corruption and raises ``ValueError``
  naming its line number.
  """
  path = Path(path)
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    return []
  lines = data.split(b"\n")
  numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
  records = []
  for k, (lineno, line) in enumerate(numbered):
    try:
      record = json.loads(line.decode("utf-8"))
      if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
      if k == len(numbered) - 1:
        warnings.warn(f"{path}:{lineno}: skipped an incomplete or corrupt last line ({e}); "
                      f"that run will be redone", stacklevel=2)
        break
      raise ValueError(f"{path}:{lineno}: corrupt record ({e})") from None
    records.append(record)
  return records


def finished_ids(path: str | os.PathLike) -> set[str]:
  """The ``run_id`` of every complete record in ``path``: the runs a resumed sweep skips."""
  return {r["run_id"] for r in load_records(path) if "run_id" in r}


def epoch_metrics(entry: dict[str, Any]) -> dict[str, Any]:
  """A history entry's epoch and test metrics with the ``test_`` prefix dropped."""
  return {"epoch": entry["epoch"], **{k[len("test_"):]: v for k, v in entry.items() if k.startswith("test_")}}


def best_and_final(history: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(best, final)`` of a run's per-epoch history.

  ``final`` is the last epoch's test metrics, ``best`` those of the epoch with the highest test
  accuracy (the first such epoch on ties; a NaN accuracy never wins). Each is
  ``{"epoch", "accuracy", "errors", "loss", ...}``: every ``test_*`` field of the entry, unprefixed.
  """
  if not history:
    raise ValueError("best_and_final needs a non-empty history")

  def accuracy(entry):
    a = entry["test_accuracy"]
    return -math.inf if a is None or math.isnan(a) else a

  best = history[0]
  for entry in history[1:]:
    if accuracy(entry) > accuracy(best):
      best = entry
  return epoch_metrics(best), epoch_metrics(history[-1])
