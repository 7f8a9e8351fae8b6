"""Scaling out and checkpoints: 1 and 8 (simulated) devices agree, two processes agree with one,
a run killed with SIGKILL resumes to the uninterrupted result, a damaged checkpoint is stepped
over (and kept), a checkpoint never restores into another architecture, NaN keeps the last good
checkpoint."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import parallel_worker as worker
from kdjax.train import NonFiniteLossError, train_teacher
from kdjax.train.checkpoint import Checkpointing, read_identity

WORKER = Path(__file__).with_name("parallel_worker.py")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}


def _worker(*args, timeout=240):
  return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=ENV)


def _result(proc, timeout=240):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def _assert_same(a, b, rtol=1e-4, atol=1e-5):
  for x, y in zip(a["params"], b["params"], strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
  for h, k in zip(a["history"], b["history"], strict=True):
    assert h.keys() == k.keys()
    for key in h:
      np.testing.assert_allclose(h[key], k[key], rtol=rtol, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def reference():
  """The run on this process's single device, never interrupted."""
  return worker.summary(worker.run())


def test_one_and_eight_simulated_devices_give_the_same_run(reference):
  out = _result(_worker("devices", 8))
  _assert_same(out["8x1"], reference)  # BatchNorm statistics, loss and metrics over the global batch
  _assert_same(out["8x2"], reference)  # stacked steps, data-parallel
  assert out["8x1"]["devices"] == 8 and out["8x1"]["replicated"]
  assert "batch_size 12 does not divide over the 8 devices of the data axis" in out["indivisible"]


def test_two_processes_agree_with_one(reference):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [_worker("process", i, 2, port) for i in range(2)]
  outs = [_result(p) for p in procs]
  assert [o["process"] for o in outs] == [0, 1] and outs[0]["devices"] == 2
  for out in outs:
    _assert_same(out, reference)


def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_result_past_a_damaged_checkpoint(reference, tmp_path):
  ckpt = tmp_path / "ckpt"
  proc = _worker("killed", ckpt, 6)  # 8 steps in all, checkpoints at steps 3, 4 (epoch end), 6; killed before step 7
  proc.communicate(timeout=240)
  assert proc.returncode == -9
  assert sorted(p.name for p in ckpt.iterdir()) == ["3", "4", "6"]
  with pytest.raises(ValueError, match=r"already holds checkpoints \(steps \[3, 4, 6\]\): resume that run"):
    worker.run(checkpointing=Checkpointing(ckpt, every_steps=3))  # a fresh run never mixes with an old one
  # The disk then damages the newest checkpoint: it must be detected, kept aside, and step 4 used.
  biggest = max((p for p in (ckpt / "6").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  size = biggest.stat().st_size
  with open(biggest, "r+b") as f:
    f.truncate(size // 2)
  with pytest.warns(UserWarning, match=r"checkpoint .*/6 could not be read .* moved to .*corrupt-6"):
    resumed = worker.run(checkpointing=Checkpointing(ckpt, every_steps=3, resume=True))
  _assert_same(worker.summary(resumed), reference, rtol=1e-6, atol=1e-7)
  assert (ckpt / "corrupt-6" / biggest.relative_to(ckpt / "6")).stat().st_size == size // 2  # kept, not lost
  assert sorted(p.name for p in ckpt.iterdir()) == ["4", "6", "8", "corrupt-6"]  # the last 3 kept
  again = worker.run(checkpointing=Checkpointing(ckpt, every_steps=3, resume=True))  # finished: trains nothing
  assert again.history == resumed.history


def test_a_non_finite_step_keeps_the_last_good_checkpoint(tmp_path):
  import jax.numpy as jnp
  ckpt = tmp_path / "ckpt"
  calls = [0]

  def nan_at_five(step):
    def wrapped(*args):
      state, m = step(*args)
      calls[0] += 1
      return state, ({**m, "loss": jnp.nan, "finite": jnp.array(False)} if calls[0] == 5 else m)
    return wrapped

  with pytest.raises(NonFiniteLossError, match="loss became nan at step 5"):
    worker.run(checkpointing=Checkpointing(ckpt, every_steps=1), wrap=nan_at_five)
  assert sorted(int(p.name) for p in ckpt.iterdir()) == [2, 3, 4]  # step 5 and later were never saved


def test_a_teacher_checkpoint_restores_only_into_its_architecture(small_mnist, tmp_path):
  from kdjax.config import TrainConfig
  from kdjax.train import restore_trained
  cfg = TrainConfig(model="mlp100", epochs=1, batch_size=500)
  data = small_mnist
  teacher = train_teacher(data, cfg, progress=False, checkpoint_dir=tmp_path / "teacher")
  assert read_identity(tmp_path / "teacher") == {"model": "mlp100", "num_classes": 10, "input_shape": [28, 28, 1]}
  restored = restore_trained(tmp_path / "teacher", cfg, data)
  for a, b in zip(jax.tree.leaves(teacher.params), jax.tree.leaves(restored.params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert restored.test == teacher.test
  with pytest.raises(ValueError, match=r"is at step 4 \(batch size 500\), not the end of the run this config "
                                       r"describes \(8 steps of 500\)"):
    restore_trained(tmp_path / "teacher", dataclasses.replace(cfg, epochs=2), data)  # an unfinished run
  with pytest.raises(ValueError, match=r"holds model mlp100, num_classes 10, input_shape \[28, 28, 1\], but this "
                                       r"run builds model mlp800"):
    restore_trained(tmp_path / "teacher", dataclasses.replace(cfg, model="mlp800"), data)


def test_distill_cli_checks_the_scale_out_and_checkpoint_flags(tmp_path, capsys):
  from kdjax.cli import main as cli
  assert cli(["distill", "--coordinator", "localhost:1234"]) == 2
  assert "go with --distributed" in capsys.readouterr().err
  assert cli(["distill", "--checkpoint-every", "-1"]) == 2
  assert "--checkpoint-every must be >= 0" in capsys.readouterr().err
  assert cli(["distill", "--teacher-checkpoint", str(tmp_path / "none"), "--workdir", str(tmp_path),
              "--no-progress"]) == 2
  assert f"no complete checkpoint in {tmp_path / 'none'}" in capsys.readouterr().err
