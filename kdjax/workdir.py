"""Output folders: one writer at a time, writable before any training, no leftovers.

- :func:`exclusive` holds a folder's lock (``flock`` on ``.kdjax.lock``, which names the holder's pid,
  host, start time and command) for as long as a study or sweep writes there; a second writer is
  refused, naming the holder. The kernel ends the lock with its process, so none goes stale.
- :func:`check_writable` writes, syncs and removes a probe file and checks the free space, so a
  read-only or full folder fails before anything trains, not after.
- :func:`remove_leftovers` deletes what an interrupted write leaves (``*.tmp`` files, Orbax's
  ``*.orbax-checkpoint-tmp*`` folders, probe files); it runs under the lock, as a run starts.

Every refusal is an :class:`OutputError` (a ``ValueError``: the command line prints its one line).
Plain Python: no JAX, no other kdjax module.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path

LOCK_NAME = ".kdjax.lock"
PROBE_PREFIX = ".kdjax-write-probe-"
MIN_FREE_BYTES = 16 * 2**20  # below this a folder counts as full: a checkpoint or a log line may not fit


class OutputError(ValueError):
  """An output folder that cannot be used: busy, not writable, full."""


def _holder(what: str) -> dict:
  return {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""}


def _read_lock(path: Path) -> dict:
  try:
    info = json.loads(path.read_text())
    return info if isinstance(info, dict) else {}
  except (OSError, ValueError):
    return {}


@contextlib.contextmanager
def exclusive(directory: str | os.PathLike, what: str = "kdjax"):
  """Holds ``directory``'s lock while the ``with`` body runs (creating the folder), for ``what`` (e.g.
  "kdjax sweep"): a second :func:`exclusive` on it, from any process, raises :class:`OutputError`
  naming the holder. The lock is the kernel's (``flock`` on ``.kdjax.lock``), so it ends with its
  process however that ends: a killed or restarted job never finds its own old lock in the way. The
  file holds the holder's pid, host, start time and command, for the message; it is removed on release."""
  directory = Path(directory)
  _make(directory)
  path = directory / LOCK_NAME
  mine = _holder(what)
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise OutputError(f"cannot write to {directory}: {e.strerror or e}; choose another folder") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      info = _read_lock(path)
      raise OutputError(
          f"{directory} is in use by {info.get('what', 'another kdjax command')}: pid {info.get('pid')} on "
          f"{info.get('host')}, since {info.get('started')} ({info.get('command') or 'unknown command'}); wait for it "
          "to finish or use another folder") from None
    except OSError as e:  # a filesystem without locks
      os.close(fd)
      raise OutputError(f"cannot lock {path}: {e.strerror or e}; use a folder on a local or NFS disk") from None
    try:  # the file may have been removed by its last holder between our open and our lock: take the new one
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  try:
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(mine).encode())
    yield path
  finally:
    with contextlib.suppress(OSError):
      path.unlink()  # still locked: a waiting process then finds the file gone and starts over
    os.close(fd)


def _make(directory: Path) -> None:
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OutputError(f"cannot create {directory}: {e.strerror or e}; choose another folder") from None


def check_writable(directory: str | os.PathLike, min_free: int = MIN_FREE_BYTES) -> None:
  """Fails now, with an :class:`OutputError` naming ``directory``, unless a file can be created,
  written, synced and removed there and at least ``min_free`` bytes are free. Leaves nothing behind."""
  directory = Path(directory)
  _make(directory)
  probe = directory / f"{PROBE_PREFIX}{os.getpid()}"
  try:
    with open(probe, "wb") as f:
      f.write(b"kdjax write probe\n")
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise OutputError(f"cannot write to {directory}: {e.strerror or e}"
                      + ("; free some space or choose another folder" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                         else "; choose another folder")) from None
  finally:
    with contextlib.suppress(OSError):
      probe.unlink()
  free = shutil.disk_usage(directory).free
  if free < min_free:
    raise OutputError(f"{directory} has only {free / 2**20:.1f} MiB free (a run needs at least "
                      f"{min_free / 2**20:.0f} MiB for its checkpoints and logs); free some space or choose another folder")


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Replaces ``path``'s contents with ``data`` (text is written as UTF-8) whole: written aside,
  synced, then renamed, so a crash or a full disk leaves the old file, never a cut one (and no
  temporary file)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      tmp.unlink()
    raise OSError(e.errno, f"could not write {path}: {e.strerror or e}") from None


def leftovers(directory: str | os.PathLike) -> list[Path]:
  """What interrupted writes left under ``directory``: ``*.tmp`` files (and ``*.tmp.npz``), Orbax's
  ``*.orbax-checkpoint-tmp*`` folders, write probes; not inside a sub-folder with a lock file of its
  own (another command's)."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = [d for d in dirs if not (Path(root) / d / LOCK_NAME).exists()]  # another command's folder
    for d in list(dirs):
      if ".orbax-checkpoint-tmp" in d:
        found.append(Path(root) / d)
        dirs.remove(d)
    found += [Path(root) / f for f in files
              if f.endswith((".tmp", ".tmp.npz")) or f.startswith(PROBE_PREFIX) or ".orbax-checkpoint-tmp" in f]
  return sorted(found)


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
  """Removes :func:`leftovers` (call it holding the folder's lock: nothing else is writing) and
  returns what it removed."""
  removed = []
  for path in leftovers(directory):
    with contextlib.suppress(FileNotFoundError):
      if path.is_dir():
        shutil.rmtree(path)
      else:
        path.unlink()
      removed.append(path)
  return removed
