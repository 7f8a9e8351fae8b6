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

import os
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


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins this process to a multi-process run (``jax.distributed.initialize``). On TPU pods,
  Slurm and Kubernetes (and wherever the ``JAX_COORDINATOR_ADDRESS`` family of environment
  variables is set) every argument may be left out: JAX finds them. Elsewhere give all three.
  On the CPU backend the processes talk through Gloo."""
  given = [a is not None for a in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError("give --coordinator, --num-processes and --process-id together, or none of them (then JAX "
                     "reads them from the cluster's environment: TPU pod, Slurm, Kubernetes)")
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def is_primary() -> bool:
  """Process 0: the one that logs and writes result files."""
  return jax.process_index() == 0
