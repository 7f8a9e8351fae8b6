"""Joining a multi-process run that never completes (issue 20): ``initialize_distributed`` says what it waits
for, then fails within its timeout with one clear line and exit status 2, where ``jax.distributed.initialize``
alone (JAX 0.10.2 on the CPU) was silent for five minutes and then aborted the process (SIGABRT, a C++ stack
trace). Each case runs in a fresh process: a join can only be tried once per process."""

import os
import socket
import subprocess
import sys
import time

import pytest

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
CRASH_MARKERS = ("*** Check failure", "SIGABRT", "Fatal Python error", "terminate called", "Segmentation fault",
                 "Traceback", "client.h:")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(code: str, limit: float = 60) -> tuple[subprocess.CompletedProcess, float]:
  """Runs ``code`` in a fresh Python on the CPU backend; the finished process and how long it took."""
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=limit,
                        check=False)
  return proc, time.monotonic() - start


def _join(address: str, count: int, index: int, timeout_s: float) -> str:
  """Code that joins; a ``ValueError`` (bad arguments) printed as the CLI does, exit status 3."""
  return ("import sys\nfrom kdjax.parallel import initialize_distributed\n"
          f"try:\n  initialize_distributed({address!r}, {count}, {index}, timeout_s={timeout_s})\n"
          "except ValueError as e:\n  print(f'kdjax: error: {e}', file=sys.stderr)\n  sys.exit(3)\n")


def _assert_clean(proc, took, address, status=2):
  err = proc.stderr
  assert proc.returncode == status, f"exit status {proc.returncode} (negative: killed by a signal)\n{err[-3000:]}"
  assert took < 30, f"took {took:.1f} s"
  assert not [m for m in CRASH_MARKERS if m in err], err[-3000:]
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 2, err  # the notice before waiting, the error after
  assert lines[0].startswith("kdjax: waiting up to 3 s for 2 processes at " + address), err
  assert lines[1].startswith("kdjax: error: ") and address in lines[1] and "2" in lines[1], err
  assert "--distributed-timeout" in lines[1], err
  return lines[1]


@pytest.mark.slow  # the CLI case below runs by default; these two each wait out a timeout too
def test_the_coordinator_alone_fails_with_one_line_within_its_timeout():
  address = f"localhost:{_free_port()}"
  proc, took = _run(_join(address, 2, 0, 3))
  line = _assert_clean(proc, took, address)
  assert "process 0 of 2" in line and "process 1 did not connect" in line


@pytest.mark.slow  # the CLI case below runs by default; these two each wait out a timeout too
def test_a_process_that_finds_no_coordinator_fails_with_one_line_within_its_timeout():
  address = f"localhost:{_free_port()}"
  proc, took = _run(_join(address, 2, 1, 3))
  line = _assert_clean(proc, took, address)
  assert "process 1 of 2" in line and f"nothing answered at {address}" in line


def test_the_coordinator_port_taken_fails_at_once_instead_of_crashing():
  """JAX alone logs that it could not add the port, then crashes with a segmentation fault."""
  with socket.socket() as taken:
    taken.bind(("localhost", 0))
    taken.listen()
    address = f"localhost:{taken.getsockname()[1]}"
    proc, took = _run(_join(address, 2, 0, 3))
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "cannot open port" in proc.stderr and address in proc.stderr
  assert not [m for m in CRASH_MARKERS if m in proc.stderr], proc.stderr[-3000:]
  assert took < 30


def test_the_cli_prints_one_error_line_and_exits_2_when_nobody_else_joins():
  """``kdjax distill --distributed`` as the user ran it in the issue, with the timeout cut to 3 s."""
  address = f"localhost:{_free_port()}"
  argv = ["distill", "--distributed", "--coordinator", address, "--num-processes", "2", "--process-id", "0"]
  code = f"import sys\nfrom kdjax.cli import main\nsys.exit(main({argv + ['--distributed-timeout', '3']!r}))\n"
  proc, took = _run(code)
  _assert_clean(proc, took, address)
  assert proc.stdout == ""


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("nan"), float("inf")])
def test_a_timeout_that_is_not_positive_is_refused(timeout_s):
  from kdjax.parallel import initialize_distributed
  with pytest.raises(ValueError, match="--distributed-timeout must be a positive"):
    initialize_distributed("localhost:1234", 2, 0, timeout_s=timeout_s)


@pytest.mark.parametrize("address", ["localhost", "localhost:", ":1234", "localhost:http", "localhost:70000"])
def test_a_coordinator_that_is_not_host_port_is_refused(address):
  from kdjax.parallel import initialize_distributed
  with pytest.raises(ValueError, match="expected HOST:PORT"):
    initialize_distributed(address, 2, 0, timeout_s=3)
