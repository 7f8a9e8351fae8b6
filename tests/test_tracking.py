"""Experiment tracking (kdjax.tracking): a study run with --tensorboard writes event files that TensorBoard's
own reader loads, with the JSONL's numbers at the JSONL's steps, the resolved config and the health verdict;
with tracking off nothing of TensorBoard is imported and the results are the same; a failed run's events are
on disk; a missing tensorboardX is one line naming the install command."""

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdjax import tracking
from kdjax.cli import main
from kdjax.train.hooks import SavePoint, StepMetrics, tensorboard_log

import tensorboardX  # noqa: E402,F401  (the test extra installs it: a missing one fails, never skips)
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The cheapest study: mlp100 everywhere, one epoch of 39 steps each, no augmented control (as test_nothing_lost).
SHORT = ["--seeds", "0", "--no-progress", "--allow-unhealthy", "--set", "teacher.epochs=1", "--set", "student.epochs=1",
         "--set", "distilled.epochs=1", "--set", "teacher.model=mlp100", "--set", "student.model=mlp100",
         "--set", "distilled.model=mlp100", "--set", "augmented_control=false", "--set", "teacher.batch_size=256",
         "--set", "student.batch_size=256", "--set", "distilled.batch_size=256"]
RUNS = ("teacher_seed0", "student_seed0", "distilled_seed0")


def _read(folder: Path):
  """TensorBoard's own reader over one run's folder, every point kept."""
  acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0,
                                                                      event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def _text(acc, tag: str) -> list[tuple[int, str]]:
  return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(f"{tag}/text_summary")]


def _json_block(text: str):
  return json.loads(text.split("```json\n", 1)[1].rsplit("\n```", 1)[0])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
  """A study run with --tensorboard: its folder WORKDIR/hinton_mnist."""
  workdir = tmp_path_factory.mktemp("tracked")
  assert main(["distill", *SHORT, "--workdir", str(workdir), "--tensorboard"]) == 0
  return workdir / "hinton_mnist"


def test_a_tracked_study_writes_what_tensorboard_reads(tracked):
  results = json.loads((tracked / "results.json").read_text())
  lines = [json.loads(line) for line in (tracked / "metrics.jsonl").read_text().splitlines()]
  assert sorted(p.name for p in (tracked / "tensorboard").iterdir()) == sorted(RUNS)
  for name in RUNS:
    role = name.split("_")[0]
    acc = _read(tracked / "tensorboard" / name)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "train/grad_norm", "epoch/train_loss", "epoch/train_accuracy",
            "epoch/wall_s", "test/accuracy", "test/loss", "test/errors", "health/ok"} <= scalars, scalars
    assert set(acc.Tags()["tensors"]) == {"config/text_summary", "health/text_summary"}
    # Every number of the run's JSONL lines, under its tag, at the line's step (float32 in the event file).
    mine = [r for r in lines if r["run"] == role]
    assert mine
    for record in mine:
      expected = tracking.record_scalars(record)
      assert expected["test/accuracy"] == record["test_accuracy"]
      assert expected["epoch/train_loss"] == record["train_loss"]
      for tag, value in expected.items():
        points = {e.step: e.value for e in acc.Scalars(tag)}
        assert points[record["step"]] == pytest.approx(value, rel=1e-6), tag
    # The step's own metrics every 10th step of the 39; the epoch's mean loss lies within their range.
    losses = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(losses) == [10, 20, 30] and all(math.isfinite(v) for v in losses.values())
    # The resolved config at step 0, and the verdict (as results.json holds it) at the run's last step.
    [(step, config)] = _text(acc, "config")
    assert step == 0 and _json_block(config) == results["config"]
    health = results["runs"][role][0]["health"]
    [(step, text)] = _text(acc, "health")
    assert step == 39 and _json_block(text) == health
    assert text.startswith("**ok**" if health["ok"] else "**unhealthy**")
    assert [(e.step, e.value) for e in acc.Scalars("health/ok")] == [(39, float(health["ok"]))]


def test_tracking_off_imports_no_tensorboard_and_changes_no_result(tracked, tmp_path):
  # The same study in a fresh interpreter, tracking off (its programs come from this run's compilation cache).
  code = ("import json, sys\n"
          "from kdjax.cli import main\n"
          f"code = main(['distill', *{SHORT!r}, '--workdir', {str(tmp_path)!r}])\n"
          "print(json.dumps({'code': code, 'loaded': sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorboardX', 'tensorboard', 'tensorflow'))}))\n")
  proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report == {"code": 0, "loaded": []}
  out = tmp_path / "hinton_mnist"
  assert not (out / "tensorboard").exists()
  # Tracking is no part of a run's identity and changes no number.
  on, off = (json.loads((d / "results.json").read_text())["runs"] for d in (tracked, out))
  for role in ("teacher", "student", "distilled"):
    assert [r["identity"] for r in off[role]] == [r["identity"] for r in on[role]]
    assert [r["accuracy"] for r in off[role]] == [r["accuracy"] for r in on[role]]


def test_a_failed_run_leaves_its_events_on_disk(tmp_path, capsys):
  code = main(["distill", *SHORT, "--workdir", str(tmp_path), "--tensorboard", "--set", "teacher.learning_rate=1e12"])
  assert code == 1 and "became" in capsys.readouterr().err
  acc = _read(tmp_path / "hinton_mnist" / "tensorboard" / "teacher_seed0")
  [(step, config)] = _text(acc, "config")  # written before training, on disk although the run raised
  assert step == 0 and _json_block(config)["teacher"]["learning_rate"] == 1e12
  assert "health/text_summary" not in acc.Tags()["tensors"]  # no verdict: the study did not finish


def test_a_missing_tensorboardx_fails_first_naming_the_install(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX raises ImportError
  assert main(["distill", *SHORT, "--workdir", str(tmp_path), "--tensorboard"]) == 2
  err = capsys.readouterr().err
  assert "TensorBoard tracking needs tensorboardX" in err and "pip install 'kdjax[track]'" in err
  assert not list(tmp_path.iterdir())  # before anything was written


def test_record_tags():
  record = {"run": "student", "seed": 1, "epoch": 2, "step": 78, "train_loss": 0.5, "test_accuracy": 0.9,
            "test_errors": 200, "wall_s": 3.25, "health": ["diverged"], "train_loss/students": [0.5, 0.25],
            "note": "text", "last": True, "nested": [[1, 2], [3]], "vector": np.array([1.5, 2.5])}
  assert tracking.record_scalars(record) == {
      "epoch/train_loss": 0.5, "test/accuracy": 0.9, "test/errors": 200.0, "epoch/wall_s": 3.25,
      "epoch/train_loss/students/0": 0.5, "epoch/train_loss/students/1": 0.25, "epoch/last": 1.0,
      "epoch/vector/0": 1.5, "epoch/vector/1": 2.5}
  assert tracking.step_scalars({"loss": np.float32(0.5), "finite": np.bool_(True), "accuracy": np.array(0.75)}) == {
      "train/loss": 0.5, "train/accuracy": 0.75}
  assert tracking.run_name("method=dkd temperature=4", 0) == "method=dkd_temperature=4_seed0"
  assert tracking.health_text({"ok": True, "problems": []}).startswith("**ok**")
  with pytest.raises(ValueError, match="without an integer 'step'"):
    tracking.write_record(None, {"epoch": 1, "test_accuracy": 0.5})


def _call(first_step, losses, epoch=1):
  """A fit call's metrics as the loop hands them to a hook: ``len(losses)`` stacked steps from ``first_step``."""
  n = len(losses)
  return StepMetrics(epoch, 0, first_step, n, True, {"loss": np.array(losses, np.float32), "finite": np.ones(n, bool)},
                     None)


def test_a_resumed_run_replaces_what_the_interrupted_one_logged_past_its_checkpoint(tmp_path):
  # The interrupted run: steps 1-6 and the epoch's record at step 6; its checkpoint was at step 4.
  with contextlib.closing(tracking.open_writer(tmp_path, fresh=True)) as writer:
    hook = tensorboard_log(writer, every_steps=2)
    hook.on_step(_call(1, [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]))
    hook.on_save_point(SavePoint(6, 1, None, [], {}, 0.0, {"epoch": 1, "step": 6, "test_accuracy": 0.1}, {}))
  # The resumed run goes on from step 5 with other values (a resumed run's folder keeps its old files).
  with contextlib.closing(tracking.open_writer(tmp_path, fresh=False)) as writer:
    hook = tensorboard_log(writer, every_steps=2)
    hook.on_step(_call(5, [0.5, 0.25]))
    hook.on_save_point(SavePoint(6, 1, None, [], {}, 0.0, {"epoch": 1, "step": 6, "test_accuracy": 0.9}, {}))
    hook.close()
  acc = _read(tmp_path)
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(2, 5.0), (4, 3.0), (6, 0.25)]
  assert [(e.step, e.value) for e in acc.Scalars("test/accuracy")] == [(6, pytest.approx(0.9))]
  with pytest.raises(ValueError, match="every_steps must be >= 1"):
    tensorboard_log(None, every_steps=0)


def test_a_save_point_puts_what_was_logged_on_disk(tmp_path):
  """Each epoch end or checkpoint flushes the writer: a run killed after it (SIGKILL closes nothing) and
  resumed from that checkpoint loses no point from before it."""
  writer = tracking.open_writer(tmp_path, fresh=True)
  hook = tensorboard_log(writer, every_steps=2)
  hook.on_step(_call(1, [6.0, 5.0, 4.0, 3.0]))
  hook.on_save_point(SavePoint(4, 1, None, [], {}, 0.0, {"epoch": 1, "step": 4, "test_accuracy": 0.5}, {}))
  acc = _read(tmp_path)  # the writer is still open, and its 10-second flush has not come
  assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(2, 5.0), (4, 3.0)]
  assert [(e.step, e.value) for e in acc.Scalars("test/accuracy")] == [(4, 0.5)]
  writer.close()


def test_write_run_writes_a_stored_sweep_run(tmp_path):
  history = [{"epoch": e, "test_accuracy": 0.5 + e / 10, "train_loss": 1.0 / e, "skipped_steps": 0} for e in (1, 2)]
  health = {"ok": False, "problems": [{"kind": "diverged", "label": "diverged", "detail": "loss rose"}]}
  (tmp_path / "method=hinton_seed0").mkdir()
  (tmp_path / "method=hinton_seed0" / "notes.txt").write_text("kept")
  for _ in range(2):  # written again (a sweep run again): replaced, not doubled; other files kept
    folder = tracking.write_run(tmp_path, tracking.run_name("method=hinton", 0), history, steps_per_epoch=5,
                                config={"method": "hinton"}, health=health)
  assert (folder / "notes.txt").read_text() == "kept" and len(list(folder.glob(tracking.EVENT_FILES))) == 1
  acc = _read(folder)
  assert [(e.step, e.value) for e in acc.Scalars("test/accuracy")] == [(5, pytest.approx(0.6)),
                                                                        (10, pytest.approx(0.7))]
  assert [(e.step, e.value) for e in acc.Scalars("health/ok")] == [(10, 0.0)]
  [(step, text)] = _text(acc, "health")
  assert step == 10 and "**unhealthy**" in text and "- diverged: loss rose" in text
  assert _json_block(_text(acc, "config")[0][1]) == {"method": "hinton"}
