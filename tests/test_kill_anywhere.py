"""Kill anywhere: ``kdjax distill`` SIGKILLed at random moments, then resumed, again and again, ends
with the uninterrupted run's numbers and log (each epoch once), and leaves no temporary file or
half-written checkpoint folder behind once it has started again (slow: a dozen CLI starts)."""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kdjax.workdir import LOCK_NAME, leftovers

pytestmark = pytest.mark.slow

ARGS = ["distill", "--seeds", "0", "--no-progress", "--allow-unhealthy", "--checkpoint-every", "10",
        "--set", "teacher.epochs=2", "--set", "student.epochs=2", "--set", "distilled.epochs=2",
        "--set", "teacher.batch_size=256", "--set", "student.batch_size=256", "--set", "distilled.batch_size=256"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _kdjax(workdir: Path, *extra: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "kdjax.cli", *ARGS, "--workdir", str(workdir), *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _numbers(out: Path):
  """results.json's per-run numbers and the log's lines, less the wall-clock fields."""
  runs = json.loads((out / "results.json").read_text())["runs"]
  runs = {role: [{k: v for k, v in r.items() if k != "wall_s"} for r in recs] for role, recs in runs.items()}
  lines = [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
           for line in (out / "metrics.jsonl").read_text().splitlines()]
  return runs, lines


def test_a_study_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path):
  rng = random.Random(20)
  workdir, out = tmp_path / "killed", tmp_path / "killed" / "hinton_mnist"
  kills, seen_leftovers = 0, False
  for attempt in range(20):
    saved = any(p.name.isdigit() for p in out.glob("checkpoints/*/*"))  # a complete checkpoint to resume
    proc = _kdjax(workdir, *(["--resume"] if saved else []))
    if attempt < 14:  # killed at a random moment: while starting, training, checkpointing or writing
      try:
        proc.wait(timeout=rng.uniform(1.5, 8.0))
      except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        seen_leftovers |= bool(leftovers(out))
        continue
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    break
  assert kills >= 6, f"only {kills} kills landed mid-run"
  proc = _kdjax(tmp_path / "straight")
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-2000:]
  assert _numbers(out) == _numbers(tmp_path / "straight" / "hinton_mnist")  # the same numbers, each epoch once
  assert leftovers(out) == []  # swept when a run starts (or never left)
  assert not (out / LOCK_NAME).exists()
  print(f"{kills} kills, leftovers seen after a kill: {seen_leftovers}")
