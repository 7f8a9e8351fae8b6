"""Data parallelism on JAX's own machinery: a device mesh, ``NamedSharding`` and ``jit``.

The mesh has a ``"data"`` axis (the batch is split over it) and a ``"model"`` axis (size 1 for
now: room for sharding large teachers later). Student and teacher variables are replicated; each
batch is sharded over ``"data"``, and ``jit`` partitions the step from those input shardings
(GSPMD): BatchNorm's batch statistics, the loss's mean and every metric are reductions over the
whole global batch, so a run on 8 devices computes what the same run computes on one, up to the
order of floating-point sums. One device is the trivial mesh.

Over several hosts, :func:`initialize_distributed` joins the processes
(``jax.distributed.initialize``), the mesh spans every process's devices, and each process feeds
only its own rows of every global batch (:func:`host_batch`, ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"


def make_mesh(num_devices: int | None = None, *, devices=None) -> Mesh:
  """A ``("data", "model")`` mesh over the first ``num_devices`` of ``devices`` (default: every
  device of every process), all on ``"data"``. Axes are ``Auto``: ``jit`` propagates shardings."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"a mesh of {n} devices asked for, but {len(devices)} are available")
  return jax.make_mesh((n, 1), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices[:n])


def data_size(mesh: Mesh) -> int:
  return mesh.shape[DATA]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """Examples split over ``"data"``: the leading axis of a batch, or the second of a stack of
  batches (``[S, B, ...]``)."""
  return NamedSharding(mesh, P(None, DATA) if stacked else P(DATA))


def check_batch(batch_size: int, mesh: Mesh) -> None:
  """A global batch must split evenly over the data axis (and over the processes)."""
  n = data_size(mesh)
  if batch_size % n:
    raise ValueError(f"batch_size {batch_size} does not divide over the {n} devices of the data axis; use a "
                     f"multiple of {n} (e.g. {max(n, batch_size // n * n)})")


def trivial(mesh: Mesh) -> bool:
  """One device in one process: arrays stay where JAX puts them by default (uncommitted), so
  single-device code keeps compiling once, whatever it mixes with."""
  return mesh.size == 1 and jax.process_count() == 1


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``tree`` copied onto every device of ``mesh``: from host arrays on each process (every
  process must pass the same values, e.g. from the same seed), or from arrays already placed."""
  if trivial(mesh):
    return jax.device_put(tree)
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(a):
    a = np.asarray(jax.device_get(a)) if not is_key(a) else a
    if is_key(a):
      return jax.random.wrap_key_data(put(jax.random.key_data(a)), impl=jax.random.key_impl(a))
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

  return jax.tree.map(put, tree)


def is_key(a) -> bool:
  """Whether ``a`` is an array of typed PRNG keys (stored and placed as their raw key data)."""
  return jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key)


def host_batch(tree: Any, mesh: Mesh, stacked: bool = False) -> Any:
  """A global batch from host arrays holding the whole global batch on every process: each
  process hands over only its own rows (``jax.make_array_from_process_local_data``), so over
  several hosts no process sends another's data; on one process the batch is split over the
  local devices."""
  if trivial(mesh):
    return jax.device_put(tree)
  sharding = batch_sharding(mesh, stacked)
  axis = 1 if stacked else 0
  count, index = jax.process_count(), jax.process_index()

  def put(a):
    a = np.asarray(a)
    if count == 1:
      return jax.device_put(a, sharding)
    rows = a.shape[axis] // count
    local = a[:, index * rows:(index + 1) * rows] if stacked else a[index * rows:(index + 1) * rows]
    return jax.make_array_from_process_local_data(sharding, local, a.shape)

  return jax.tree.map(put, tree)


EXIT_JOIN_FAILED = 2  # the process's exit status when the processes of a distributed run do not all join


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout_s: float = 300) -> None:
  """Joins this process to a multi-process run (``jax.distributed.initialize``). On TPU pods,
  Slurm and Kubernetes (and wherever the ``JAX_COORDINATOR_ADDRESS`` family of environment
  variables is set) every argument may be left out: JAX finds them. Elsewhere give all three.
  On the CPU backend the processes talk through Gloo.

  Says on stderr what it waits for, then waits at most ``timeout_s`` seconds for every process to
  join. If they do not, it prints one ``kdjax: error:`` line (where it waited, for how many, what a
  process other than 0 saw of the coordinator, what to do) and ends the process with exit status
  :data:`EXIT_JOIN_FAILED`: JAX's own timeout aborts the process from inside the XLA runtime
  (SIGABRT and a C++ stack trace, no Python exception to catch), so a watchdog ends it first. Bad
  arguments (a timeout that is not a positive number, an address that is not HOST:PORT, a port that
  process 0 cannot open) are a ``ValueError`` before anything waits."""
  given = [a is not None for a in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError("give --coordinator, --num-processes and --process-id together, or none of them (then JAX "
                     "reads them from the cluster's environment: TPU pod, Slurm, Kubernetes)")
  if not (timeout_s > 0 and math.isfinite(timeout_s)):
    raise ValueError(f"--distributed-timeout must be a positive number of seconds, got {timeout_s}")
  if coordinator_address is not None:
    _split_address(coordinator_address)
    if process_id == 0:
      _check_port_free(coordinator_address)
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = (f"{num_processes} processes at {coordinator_address} (this is process {process_id})" if all(given)
           else "the processes of this cluster job (coordinator, count and index from its environment)")
  print(f"kdjax: waiting up to {timeout_s:g} s for {where} ...", file=sys.stderr, flush=True)
  joined = threading.Event()
  threading.Thread(target=_watchdog, args=(joined, timeout_s, coordinator_address, num_processes, process_id),
                   name="kdjax-join-watchdog", daemon=True).start()
  # JAX's own limit comes later than the watchdog's: its expiry aborts the process from C++.
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=int(math.ceil(timeout_s)) + 60)
  finally:  # joined, or failed with an exception of its own: the watchdog stands down either way
    joined.set()


def _watchdog(joined: threading.Event, timeout_s: float, address: str | None, count: int | None,
              index: int | None) -> None:
  """Until ``joined`` is set or ``timeout_s`` has passed: on a process other than 0, tries a plain TCP
  connection to the coordinator every half second (to say whether it answered at all). At the
  timeout, prints the failure in one line and ends the process (:data:`EXIT_JOIN_FAILED`)."""
  deadline = time.monotonic() + timeout_s
  seen = "silent"
  while not joined.wait(min(0.5, max(deadline - time.monotonic(), 0))):
    if time.monotonic() >= deadline:
      print(f"kdjax: error: {_join_failure(address, count, index, timeout_s, seen)}", file=sys.stderr, flush=True)
      os._exit(EXIT_JOIN_FAILED)
    if address is None or index in (None, 0) or seen == "answered":
      continue
    try:
      with socket.create_connection(_split_address(address), timeout=0.5):
        seen = "answered"
    except socket.gaierror:
      seen = "unresolved"
    except OSError:
      pass


def _split_address(address: str) -> tuple[str, int]:
  """``HOST:PORT`` (``[v6-address]:PORT`` too) as a host and a port number; a ``ValueError`` that says what
  was expected otherwise."""
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"--coordinator: expected HOST:PORT (e.g. 10.0.0.1:1234), got {address!r}")
  return host.strip("[]"), int(port)


def _check_port_free(address: str) -> None:
  """Process 0 serves the coordinator on every interface at ``address``'s port (JAX's default bind address,
  unless ``JAX_COORDINATOR_BIND_ADDRESS`` says otherwise); a ``ValueError`` if something already listens there,
  where the XLA runtime would crash (a segmentation fault) after logging that it could not add the port."""
  if os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
    return
  port = _split_address(address)[1]
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
      continue  # no IPv6 on this host: try IPv4
    with sock:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT does not count
      if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
      try:
        sock.bind((host, port))
      except OSError as e:
        raise ValueError(f"--coordinator {address}: process 0 cannot open port {port} for the coordinator "
                         f"({e.strerror or e}): another program (or an earlier run still alive) holds it; choose "
                         "another port for all the processes") from None
      return


def _join_failure(address: str | None, count: int | None, index: int | None, timeout_s: float, seen: str) -> str:
  """The message of a join that timed out: where this process waited, for whom, what a process other than 0
  saw of the coordinator (``seen``: "answered", "silent" or "unresolved") and what to do."""
  if address is None:
    return (f"the processes of this cluster job did not all join within {timeout_s:g} s; check that every "
            "process was started, or raise --distributed-timeout")
  remedy = (f"start all {count} processes (ids 0 to {count - 1}) with the same --coordinator and --num-processes, "
            f"check that {address} is process 0's host and a port it can open and the others can reach, or raise "
            "--distributed-timeout")
  if index == 0:
    missing = "process 1 did not connect" if count == 2 else f"not all of the other {count - 1} processes connected"
    return f"process 0 of {count} (the coordinator, at {address}) waited {timeout_s:g} s, but {missing}; {remedy}"
  found = {"answered": f"process 0 answered at {address}, but not all {count} processes joined",
           "unresolved": f"the host of {address} cannot be resolved"}.get(
             seen, f"nothing answered at {address} (process 0 not started, or a wrong address or port)")
  return f"process {index} of {count} could not join the distributed run within {timeout_s:g} s: {found}; {remedy}"


def is_primary() -> bool:
  """Process 0: the one that logs and writes result files."""
  return jax.process_index() == 0
