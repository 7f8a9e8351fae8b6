"""The sweep's results store: one JSON object per finished run, one per line of ``results.jsonl``.

A record holds the run's ``run_id``, its ``variant`` (the grid
values except the seed, ``"key=value"`` joined by spaces), its ``seed``, full ``config``, per-epoch
``history``, the ``final`` and ``best`` epochs' test metrics and the environment it ran in.
Lines are only ever appended, each in one write followed by ``fsync``; an append that fails (a full
disk, a read-only directory) takes back whatever part of its line it wrote and raises an ``OSError``
naming the file. A crash can at worst leave the last line cut short, and the store treats its last
line the same way everywhere: a last line that parses as a JSON object is a finished run, even
without its newline (a crash can fall between the record and its newline, or the file was edited by
hand): :func:`load_records` and :func:`finished_ids` count it and the next :func:`append_record`
adds the missing newline and keeps it. A last line that does not parse (a write cut short) is not a
finished run: :func:`load_records` skips it with a warning, and the next :func:`append_record` cuts
it off (with a warning) before writing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from kdjax.identity import canonical_json

ID_LENGTH = 12


def run_id(config: dict[str, Any]) -> str:
  """A stable 12-hex-character id of a run: the start of the SHA-256 of its config as
  :func:`kdjax.identity.canonical_json` writes it (a value JSON cannot hold is a ``TypeError``).

  The same config gives the same id whatever the key order and whether a whole number is written
  as an int or a float (``{"temperature": 4}`` and ``{"temperature": 4.0}`` are one run).
  """
  return hashlib.sha256(canonical_json(config, strict=True).encode("ascii")).hexdigest()[:ID_LENGTH]


def _is_record(line: bytes) -> bool:
  """Whether ``line`` parses as a JSON object: a complete record, as :func:`load_records` reads it."""
  try:
    return isinstance(json.loads(line.decode("utf-8")), dict)
  except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    return False


def _cut_partial_line(f, path: Path, size: int) -> int:
  """Makes the store ``path``, open unbuffered as ``f`` to read and append, end in a complete line.

  ``size`` is its size; returns the size after the repair.

  A last (non-blank) line that parses as a JSON object is a finished run and is kept: when it lacks
  its newline, the newline is added. A last line that does not parse (the remains of a write a
  crash interrupted) is cut off with a warning, just as :func:`load_records` skips it, so that it
  neither runs into the next record nor turns into a corrupt line in the middle of the file.
  """
  if size == 0:
    return 0
  fd = f.fileno()
  # Read back, in blocks, to the start of the last non-blank line.
  start, tail, block = size, b"", 1 << 16
  while start > 0:
    start = max(0, start - block)
    f.seek(start)
    tail = f.read(size - start - len(tail)) + tail
    body = tail.rstrip()
    if body and b"\n" in body:
      break
  body = tail.rstrip()
  line_start = start + body.rfind(b"\n") + 1  # 0 when the file holds a single line
  line = tail[line_start - start:].split(b"\n", 1)[0]
  if not body or _is_record(line):
    if tail.endswith(b"\n"):
      return size
    os.write(fd, b"\n")  # a complete record whose newline never made it to disk
    os.fsync(fd)
    return size + 1
  os.ftruncate(fd, line_start)
  os.fsync(fd)
  what = "an incomplete" if not tail.endswith(b"\n") else "a corrupt"
  warnings.warn(f"{path}: removed {what} last line ({size - line_start} bytes, an interrupted write) "
                f"before appending", stacklevel=3)
  return line_start


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
  """Appends ``record`` as one JSON line to ``path`` and syncs it to disk, creating the parent dirs.

  The file's last line is made complete first (:func:`_cut_partial_line`): a record without its
  newline gets it, the unparseable remains of an interrupted write are cut off. Any other line is
  never changed. When writing fails (``OSError``: a read-only directory, a full disk) the file is
  truncated back to where it was, so no part of ``record`` is left behind, and an ``OSError`` (of the
  same errno) naming the file is raised.
  """
  path = Path(path)
  line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
  if b"\n" in line[:-1]:  # cannot happen with json.dumps, but the format depends on it
    raise ValueError("a record must serialize to a single line")
  rolled_back = True
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b", buffering=0) as f:  # read (the last line) and append, unbuffered
      fd = f.fileno()
      size = _cut_partial_line(f, path, os.fstat(fd).st_size)
      try:
        view = memoryview(line)
        while view:
          view = view[os.write(fd, view):]
        os.fsync(fd)
      except OSError:
        rolled_back = False
        os.ftruncate(fd, size)  # take back the part of the line that was written
        os.fsync(fd)
        rolled_back = True
        raise
  except OSError as e:
    left = ("nothing of it was written" if rolled_back else
            "and taking back the part of it written failed too: check the last line of the file")
    message = (f"{path}: cannot append the record of run {record.get('run_id', '?')} "
               f"({type(e).__name__}: {e.strerror or e}); {left}: free some space or make the file and its "
               f"directory writable, then resume the sweep (the finished runs are kept)")
    raise (OSError(e.errno, message) if e.errno is not None else OSError(message)) from e


def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All complete records of ``path`` in file order; ``[]`` when the file does not exist.

  Blank lines are ignored. A last line that parses as a JSON object is a record, with or without
  its newline; a last line that does not (a write cut short by a crash) is skipped with a warning
  (the next :func:`append_record` cuts it off); a bad line anywhere else is corruption and raises
  ``ValueError`` naming its line number.
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
