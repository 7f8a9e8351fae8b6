import os

# Tests run on the CPU, whatever else the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests check values, not speed: XLA's cheapest compile settings cut the suite's time by a
# quarter (most of it is compiling). Benchmarks and real runs keep the defaults.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
# Many tests build the same small programs (a new jit per test compiles them again): a compilation
# cache for this run, shared by the xdist workers and the tests' subprocesses, compiles each once.
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kdjax-tests-{_run}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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


def pytest_sessionfinish(session, exitstatus):
  """The run's compilation cache goes with the run (the controller removes it; workers leave it)."""
  if not hasattr(session.config, "workerinput") and os.environ["JAX_COMPILATION_CACHE_DIR"].endswith(f"kdjax-tests-{_run}"):
    import shutil
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
