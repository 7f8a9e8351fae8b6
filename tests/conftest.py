import os
from importlib.metadata import PackageNotFoundError, version

# Tests run on the CPU, whatever else the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests check values, not speed: XLA's cheapest compile settings cut the suite's time by a
# quarter (most of it is compiling). Benchmarks and real runs keep the defaults. The CPU backend's
# MLIR fusion emitters (jaxlib 0.10's default) take twice as long to compile the tests' small steps
# as the classic elemental emitters: turning them off cuts another quarter (same values, to float
# rounding). An XLA that does not know a flag stops at start-up naming it, so that flag is given only to
# the jaxlib it was measured on (0.10.x).
try:
  _jaxlib = version("jaxlib")
except PackageNotFoundError:
  _jaxlib = ""
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                      + (" --xla_cpu_use_fusion_emitters=false" if _jaxlib.startswith("0.10.") else ""))
# Many tests build the same small programs (a new jit per test compiles them again): a compilation
# cache for this run, shared by the xdist workers and the tests' subprocesses, compiles each once.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kdjax-tests-{_run}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Outputs that tests in several workers read and that take seconds to make (a finished study): made once
# per run, in a folder the xdist workers share (see the built_once fixture).
os.environ.setdefault("KDJAX_TESTS_SHARED_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kdjax-tests-{_run}-shared"))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run, so CI cannot flake on a rare draw;
# HYPOTHESIS_PROFILE=explore draws fresh ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

from kdjax.data import load_builtin  # noqa: E402


@pytest.fixture(scope="session")
def mnist():
  return load_builtin()


@pytest.fixture(scope="session")
def small_mnist(mnist):
  """2,000 training and 500 test images of the built-in subset, for quick runs."""
  import dataclasses
  return dataclasses.replace(mnist, name="mnist_small", train_images=mnist.train_images[:2000],
                             train_labels=mnist.train_labels[:2000], test_images=mnist.test_images[:500],
                             test_labels=mnist.test_labels[:500])


@pytest.fixture(scope="session")
def built_once():
  """``built_once(name, build) -> folder``: the folder ``name`` of this run's shared folder, filled by
  ``build(folder)`` the first time any xdist worker asks for it (a worker asking meanwhile waits on its lock,
  then finds it done): an expensive output made once per run instead of once per worker. Tests only read
  it; one that changes it works on a copy (``shutil.copytree``)."""
  import fcntl
  import shutil
  from pathlib import Path

  def get(name, build):
    root = Path(os.environ["KDJAX_TESTS_SHARED_DIR"])
    root.mkdir(parents=True, exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "a") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
      if not done.exists():  # a build that failed left no mark: the next asker builds again
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        build(folder)
        done.touch()
    return folder
  return get


def pytest_sessionfinish(session, exitstatus):
  """The run's compilation cache and shared folder go with the run (the controller removes them; workers
  leave them)."""
  if hasattr(session.config, "workerinput"):
    return
  import shutil
  if os.environ["JAX_COMPILATION_CACHE_DIR"].endswith(f"kdjax-tests-{_run}"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  if os.environ["KDJAX_TESTS_SHARED_DIR"].endswith(f"kdjax-tests-{_run}-shared"):
    shutil.rmtree(os.environ["KDJAX_TESTS_SHARED_DIR"], ignore_errors=True)
