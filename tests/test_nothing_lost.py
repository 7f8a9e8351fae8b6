"""Nothing lost, nothing mislabelled: a run's identity decides what ``--resume`` may continue, logs
are never emptied by a command that then refuses, one writer per folder, an output folder that
cannot take the results fails before any training, and interrupted writes leave nothing behind."""

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import kdjax.workdir as workdir
from kdjax.cli import main
from kdjax.data import load_dataset
from kdjax.data.idx import IDX_FILES, write_idx
from kdjax.identity import differences, fingerprint, identity
from kdjax.methods import make_method, method_identity
from kdjax.train.checkpoint import save_pytree
from kdjax.train.hooks import rewind_log

SHORT = ["--seeds", "0", "--no-progress", "--allow-unhealthy", "--set", "teacher.epochs=1", "--set", "student.epochs=1",
         "--set", "distilled.epochs=1", "--set", "teacher.model=mlp100", "--set", "student.model=mlp100",
         "--set", "distilled.model=mlp100", "--set", "augmented_control=false", "--set", "teacher.batch_size=256",
         "--set", "student.batch_size=256", "--set", "distilled.batch_size=256"]


def _idx_copy(directory: Path, change_label: bool = False) -> Path:
  """The built-in subset as an idx folder named ``mnist`` (one training label changed if asked)."""
  data = load_dataset("builtin")
  directory.mkdir(parents=True)
  labels = np.array(data.train_labels, np.uint8)
  if change_label:
    labels[0] = (labels[0] + 1) % 10
  arrays = {"train_images": data.train_images[..., 0], "train_labels": labels,
            "test_images": data.test_images[..., 0], "test_labels": np.asarray(data.test_labels, np.uint8)}
  for key, stem in IDX_FILES.items():
    write_idx(directory / stem, arrays[key])
  return directory


@pytest.fixture(scope="module")
def finished(built_once, tmp_path_factory):
  """A finished study on an idx copy of the built-in data, checkpointed every 20 steps (so at step 20 and at
  the end of its 39-step epoch): (its command, root folder, out dir). Trained once per run (whichever xdist
  worker comes first); each worker's module gets its own copy of the workdir, and tests that change that
  work on a copy of it."""
  def build(folder):
    spec = f"idx:{_idx_copy(folder / 'a' / 'mnist')}"
    assert main(["distill", *SHORT, "--data", spec, "--workdir", str(folder / "w"), "--checkpoint-every", "20"]) == 0

  shared = built_once("nothing_lost_finished", build)
  root = tmp_path_factory.mktemp("finished")
  shutil.copytree(shared / "w", root / "w")
  args = ["distill", *SHORT, "--data", f"idx:{shared / 'a' / 'mnist'}", "--workdir", str(root / "w"),
          "--checkpoint-every", "20"]
  return args, root, root / "w" / "hinton_mnist"


def _digests(out: Path) -> dict[str, str]:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}


def test_a_rerun_without_resume_refuses_before_touching_anything(finished, capsys):
  args, _, out = finished
  before = _digests(out)
  assert main(args) == 2
  assert "already holds checkpoints (teacher seed 0, student seed 0" in capsys.readouterr().err
  assert _digests(out) == before  # metrics.jsonl, results.json and table.md byte for byte
  assert main(args[:-2]) == 2  # nor without the checkpoint flag
  assert _digests(out) == before


@pytest.mark.parametrize("change, field", [
    (["--set", "temperature=2"], "method.temperature: 20 -> 2"),
    (["--set", "alpha=0.9"], "method.alpha: 0.5 -> 0.9"),
    (["--set", "distilled.learning_rate=0.01"], "distilled.learning_rate: 0.05 -> 0.01"),
    (["--set", "distilled.optimizer=adam"], 'distilled.optimizer: "sgd" -> "adam"'),
    (["--set", "teacher.learning_rate=0.01"], "teacher.learning_rate: 0.1 -> 0.01"),
    (["--method", "dkd"], 'method.name: "hinton" -> "dkd"'),
])
def test_resume_refuses_a_changed_setting_by_name(finished, change, field, capsys):
  args, _, out = finished
  before = _digests(out)
  assert main([*args, "--resume", *change]) == 2
  err = capsys.readouterr().err
  assert field in err and "is of another run" in err, err
  assert _digests(out) == before


def test_resume_refuses_another_dataset_of_the_same_size(finished, capsys):
  args, root, out = finished
  other = _idx_copy(root / "b" / "mnist", change_label=True)  # same name, sizes and shapes; one label differs
  before = _digests(out)
  changed = [f"idx:{other}" if a.startswith("idx:") else a for a in args]
  assert main([*changed, "--resume"]) == 2
  err = capsys.readouterr().err
  assert "data.sha256" in err and "teacher seed 0" in err, err
  assert _digests(out) == before


def test_resume_of_a_finished_study_changes_no_number_and_no_log_line(finished, capsys):
  args, _, out = finished
  log = (out / "metrics.jsonl").read_bytes()
  results = json.loads((out / "results.json").read_text())
  assert main([*args, "--resume"]) == 0
  assert (out / "metrics.jsonl").read_bytes() == log
  again = json.loads((out / "results.json").read_text())

  def numbers(runs):  # a finished run restored reports the training time its checkpoint recorded
    return {role: [{k: v for k, v in r.items() if k != "wall_s"} for r in recs] for role, recs in runs.items()}

  assert numbers(again["runs"]) == numbers(results["runs"]) and again["data"] == results["data"]
  assert all(r["identity"] for recs in again["runs"].values() for r in recs)


def test_resume_with_nothing_saved_says_so_and_starts_only_if_asked(tmp_path, capsys):
  assert main(["distill", *SHORT, "--workdir", str(tmp_path), "--resume"]) == 2
  assert "nothing to resume" in capsys.readouterr().err
  assert not (tmp_path / "hinton_mnist").exists()  # the refusal left no trace
  assert main(["distill", *SHORT, "--workdir", str(tmp_path), "--resume-or-start"]) == 0
  out = tmp_path / "hinton_mnist"
  log = (out / "metrics.jsonl").read_bytes()
  assert len(log.splitlines()) == 3 and (out / "checkpoints" / "distilled_seed0").is_dir()
  assert main(["distill", *SHORT, "--workdir", str(tmp_path), "--resume-or-start"]) == 0  # now resumes: trains nothing
  assert (out / "metrics.jsonl").read_bytes() == log


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_no_obstacle(tmp_path, capsys):
  out = tmp_path / "hinton_mnist"
  with workdir.exclusive(out, "test"):  # held by this (live) process
    assert main(["distill", *SHORT, "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by test: pid {os.getpid()}" in err
    assert main(["sweep", "--grid", "method=supervised", "--out", str(out), "--no-progress"]) == 2
    assert "is in use by test" in capsys.readouterr().err
  assert not (out / workdir.LOCK_NAME).exists()  # released
  with pytest.raises(workdir.OutputError, match="in use"), workdir.exclusive(tmp_path / "x"):
    with workdir.exclusive(tmp_path / "x"):
      pass
  (out / workdir.LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
  with workdir.exclusive(out) as lock:  # a killed holder's file (even naming a live pid, as a restarted job's)
    assert json.loads(lock.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("command", ["distill", "sweep"])
def test_an_unwritable_folder_fails_before_training_and_leaves_nothing(tmp_path, monkeypatch, capsys, code, command):
  def refuse(fd):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(workdir.os, "fsync", refuse)  # the probe's write reaches the disk only through fsync
  out = tmp_path / "out"
  args = (["distill", *SHORT, "--workdir", str(out)] if command == "distill"
          else ["sweep", "--grid", "method=supervised", "--out", str(out), "--no-progress"])
  assert main(args) == 2
  err = capsys.readouterr().err
  assert f"cannot write to {out}" in err and os.strerror(code) in err, err
  assert "test errors" not in err
  assert [p for p in out.rglob("*")] in ([], [out / "hinton_mnist"])  # no probe, lock, log or result


def test_a_nearly_full_folder_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir.shutil, "disk_usage", lambda p: type("U", (), {"free": 2**20})())
  with pytest.raises(workdir.OutputError, match=r"only 1.0 MiB free"):
    workdir.check_writable(tmp_path)


def test_leftovers_of_interrupted_writes_are_swept_when_a_run_starts(tmp_path, capsys):
  out = tmp_path / "hinton_mnist"
  junk = [out / "teacher.npz.tmp", out / "checkpoints" / "teacher_seed0" / "12.orbax-checkpoint-tmp-1701",
          out / "results.json.tmp"]
  junk[0].parent.mkdir(parents=True)
  junk[1].mkdir(parents=True)
  (junk[1] / "part").write_bytes(b"x")
  junk[0].write_bytes(b"x")
  junk[2].write_bytes(b"x")
  assert workdir.leftovers(out) == sorted(junk)
  assert main(["distill", *SHORT, "--workdir", str(tmp_path)]) == 0
  assert workdir.leftovers(out) == []
  assert "left by an interrupted write" in capsys.readouterr().out


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  target = tmp_path / "results.json"
  target.write_text("old")

  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(workdir.os, "fsync", full)
  with pytest.raises(OSError, match=f"could not write {target}: No space left"):
    workdir.write_atomic(target, "new")
  assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
  import kdjax.train.checkpoint as ckpt
  monkeypatch.setattr(ckpt.os, "fsync", full)
  with pytest.raises(OSError, match="could not write .*teacher.npz"):
    save_pytree(tmp_path / "teacher.npz", {"w": np.zeros(3)})
  assert sorted(tmp_path.iterdir()) == [target]


def test_rewinding_a_log_drops_only_that_runs_later_epochs(tmp_path):
  log = tmp_path / "metrics.jsonl"
  lines = [{"run": "teacher", "seed": 0, "epoch": 1}, {"run": "teacher", "seed": 0, "epoch": 2},
           {"run": "student", "seed": 0, "epoch": 1}, {"run": "student", "seed": 0, "epoch": 2},
           {"run": "student", "seed": 1, "epoch": 1}]
  text = "".join(json.dumps(x) + "\n" for x in lines)
  log.write_text(text + '{"run": "student", "se')  # and a line a crash cut short
  rewind_log(log, {"run": "student", "seed": 0}, kept_epochs=1)
  kept = [lines[i] for i in (0, 1, 2, 4)]
  assert log.read_text() == "".join(json.dumps(x) + "\n" for x in kept)
  rewind_log(log, {"run": "student", "seed": 0}, kept_epochs=1)  # nothing more to drop: unchanged
  assert log.read_text() == "".join(json.dumps(x) + "\n" for x in kept)


def test_identity_names_what_differs():
  a = identity(config={"learning_rate": 0.05, "epochs": 5}, method={"name": "hinton", "temperature": 4.0}, seed=0)
  b = identity(config={"learning_rate": 0.05, "epochs": 5}, method={"name": "hinton", "temperature": 4}, seed=0)
  assert a == b  # 4.0 and 4 are one value
  c = identity(config={"learning_rate": 0.1, "epochs": 5}, method={"name": "dkd", "temperature": 4}, seed=0)
  assert c["hash"] != a["hash"]
  assert differences(a["fields"], c["fields"]) == ["config.learning_rate: 0.05 -> 0.1",
                                                    'method.name: "hinton" -> "dkd"']


def test_a_datasets_fingerprint_sees_one_changed_pixel():
  data = load_dataset("builtin")
  first = fingerprint(data)
  images = np.array(data.train_images)
  images[0, 0, 0, 0] ^= 1
  other = type(data)(**{**{f: getattr(data, f) for f in ("name", "train_labels", "test_images", "test_labels",
                                                         "num_classes")}, "train_images": images})
  changed = fingerprint(other)
  assert {k for k in first if first[k] != changed[k]} == {"sha256"}


def test_a_method_identity_holds_its_hyperparameters():
  dkd = method_identity(make_method("dkd", beta=4.0))
  assert dkd["name"] == "dkd" and dkd["beta"] == 4.0 and dkd["alpha"] == 1.0  # defaults included
  from kdjax.methods import hinton_kd
  built = method_identity(hinton_kd(alpha=0.3, temperature=2.0))  # built without a name: read from its loss
  assert built["loss"]["alpha"] == 0.3 and built["loss"]["temperature"] == 2.0
  assert method_identity(hinton_kd(alpha=0.3, temperature=3.0)) != built
  from kdjax.methods import combine  # a combination's weights and parts are in it too
  assert (method_identity(combine({"kd": (1.0, hinton_kd(alpha=0.1, temperature=4.0))}))
          != method_identity(combine({"kd": (0.5, hinton_kd(alpha=0.1, temperature=4.0))})))


def test_a_damaged_teacher_cache_fails_before_the_teacher_trains(tmp_path, capsys):
  cache = tmp_path / "teacher_outputs.npz"
  cache.write_bytes(b"PK\x03\x04 cut short")
  assert main(["distill", *SHORT, "--workdir", str(tmp_path / "w"), "--set", f"distilled.teacher_cache={cache}"]) == 2
  captured = capsys.readouterr()
  assert str(cache) in captured.err and "damaged" in captured.err, captured.err
  assert "test errors" not in captured.out and not (tmp_path / "w" / "hinton_mnist" / "metrics.jsonl").exists()


def test_a_resume_that_falls_back_to_an_older_checkpoint_logs_each_epoch_once(finished, tmp_path):
  # A copy of the module's finished study (checkpointed every 20 steps), trained as this test trained its own.
  shared_args, root, _ = finished
  shutil.copytree(root / "w", tmp_path / "w")
  args = [str(tmp_path / "w") if a == str(root / "w") else a for a in shared_args]
  out = tmp_path / "w" / "hinton_mnist"

  def lines():
    return [{k: v for k, v in json.loads(x).items() if k != "wall_s"} for x in (out / "metrics.jsonl").read_text().splitlines()]

  before = lines()
  newest = out / "checkpoints" / "distilled_seed0" / max(p.name for p in (out / "checkpoints" / "distilled_seed0").iterdir()
                                                         if p.name.isdigit())
  for f in newest.rglob("*"):  # the disk damages the finished run's newest checkpoint
    if f.is_file() and f.stat().st_size > 1000:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  with pytest.warns(UserWarning, match="could not be read"):
    assert main([*args[:-2], "--resume"]) == 0  # the distilled run retrains its last steps from an older one
  assert lines() == before  # its epoch line once, where it was
