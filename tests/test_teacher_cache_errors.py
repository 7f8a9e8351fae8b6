"""The teacher cache on disk when things go wrong: a truncated or damaged file, a failing write, a
stale temporary file, a directory it cannot be written to. No model: the save, load and check
functions on small dicts of numpy arrays."""

import errno
import os
import warnings
import zipfile

import numpy as np
import pytest

from kdjax.train import teacher_cache as tc
from kdjax.train.teacher_cache import (
  cached_teacher_outputs,
  check_teacher_cache_file,
  load_teacher_cache,
  save_teacher_cache,
)


def tiny_cache(n: int = 6) -> dict:
  rng = np.random.default_rng(0)
  return {"logits": rng.normal(size=(n, 3)).astype(np.float32),
          "feats": {"block2": rng.normal(size=(n, 4, 2)).astype(np.float32)}}


def saved(tmp_path, name: str = "teacher.npz"):
  path = tmp_path / name
  save_teacher_cache(path, tiny_cache(), "f" * 16)
  return path


def assert_names_the_file(error, path, *words):
  text = str(error)
  assert str(path) in text and "\n" not in text, text
  assert "delete it and it will be recomputed, or point teacher_cache elsewhere" in text, text
  for word in words:
    assert word in text, text


def test_round_trip_and_check_of_a_good_cache(tmp_path):
  path = saved(tmp_path)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert check_teacher_cache_file(path) is True
  loaded = load_teacher_cache(path, "f" * 16)
  np.testing.assert_array_equal(loaded["logits"], tiny_cache()["logits"])
  np.testing.assert_array_equal(loaded["feats"]["block2"], tiny_cache()["feats"]["block2"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.npz"]  # no temporary file left
  with pytest.raises(ValueError, match="made by another teacher"):
    load_teacher_cache(path, "0" * 16)


def test_a_truncated_cache_is_a_value_error_naming_the_file(tmp_path):
  path = saved(tmp_path)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(ValueError) as raised:
    load_teacher_cache(path, "f" * 16)
  assert_names_the_file(raised.value, path, "is damaged", "BadZipFile")
  assert raised.value.__cause__ is None and raised.value.__suppress_context__
  with pytest.raises(ValueError) as raised:  # before any training
    check_teacher_cache_file(path)
  assert_names_the_file(raised.value, path, "is damaged", "BadZipFile")
  # The disk-cached path of a run fails the same way, before computing anything (no graphdef needed).
  with pytest.raises(ValueError, match="is damaged"):
    cached_teacher_outputs(None, {"params": np.ones(3)}, np.zeros((6, 2, 2, 1), np.uint8), path=path)
  assert path.stat().st_size > 0  # never overwritten: it may be another file given by mistake


def flip_a_data_byte(path):
  data = bytearray(path.read_bytes())
  with zipfile.ZipFile(path) as z:
    info = z.getinfo("logits.npy")
  data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 100] ^= 0xFF  # in its array data
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, words", [
  ("empty", ["EOFError"]),
  ("text", ["ValueError"]),
  ("npy", ["a single .npy array"]),
  ("no fingerprint", ["no 'fingerprint' array"]),
  ("bad crc", ["BadZipFile", "CRC"]),
  ("short feature", ["'feats/block2' has shape (2, 4), not 6 rows"]),
  ("directory", ["cannot be read", "IsADirectoryError"]),
])
def test_damaged_files_are_value_errors_naming_the_file(tmp_path, damage, words):
  path = tmp_path / "teacher.npz"
  if damage == "empty":
    path.write_bytes(b"")
  elif damage == "text":
    path.write_text("these are not the logits you are looking for\n")
  elif damage == "npy":
    with path.open("wb") as f:
      np.save(f, np.ones(3))
  elif damage == "no fingerprint":
    np.savez(path, logits=np.ones((6, 3)))
  elif damage == "bad crc":
    saved(tmp_path)
    flip_a_data_byte(path)
  elif damage == "short feature":
    np.savez(path, fingerprint=np.array("f" * 16), logits=np.ones((6, 3)), **{"feats/block2": np.ones((2, 4))})
  elif damage == "directory":
    path.mkdir()
  with pytest.raises(ValueError) as raised:
    check_teacher_cache_file(path)
  assert_names_the_file(raised.value, path, *words)
  with pytest.raises(ValueError) as raised:
    load_teacher_cache(path)
  assert_names_the_file(raised.value, path, *words)


def test_a_missing_cache_is_fine_and_the_probe_leaves_nothing(tmp_path):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert check_teacher_cache_file(tmp_path / "teacher.npz") is False
    assert check_teacher_cache_file(tmp_path / "not" / "yet" / "teacher.npz") is False
  assert list(tmp_path.iterdir()) == []  # neither the probe file nor the directories are left


def test_a_cache_that_cannot_be_written_is_found_before_training(tmp_path):
  (tmp_path / "caches").write_text("a file, not a directory")
  path = tmp_path / "caches" / "teacher.npz"
  with pytest.raises(OSError, match="cannot write the teacher cache") as raised:
    check_teacher_cache_file(path)
  assert str(path) in str(raised.value) and raised.value.errno == errno.ENOTDIR


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only dirs")
def test_a_read_only_directory_is_found_before_training(tmp_path):
  directory = tmp_path / "caches"
  directory.mkdir()
  directory.chmod(0o555)
  try:
    with pytest.raises(PermissionError, match="cannot write the teacher cache"):
      check_teacher_cache_file(directory / "teacher.npz")
  finally:
    directory.chmod(0o755)


@pytest.mark.parametrize("existing", [False, True])
def test_a_failing_write_leaves_no_temporary_file(tmp_path, monkeypatch, existing):
  path = saved(tmp_path) if existing else tmp_path / "teacher.npz"
  before = path.read_bytes() if existing else None

  def full_disk(file, *args, **kwargs):
    file.write(b"PK\x03\x04 part of an archive")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(np, "savez", full_disk)
  with pytest.raises(OSError, match="cannot write the teacher cache") as raised:
    save_teacher_cache(path, tiny_cache(), "0" * 16)
  assert raised.value.errno == errno.ENOSPC and str(path) in str(raised.value)
  assert "No space left" in str(raised.value)
  assert not tc._tmp_path(path).exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == (["teacher.npz"] if existing else [])
  if existing:
    assert path.read_bytes() == before  # the old cache is untouched


def test_a_stale_temporary_file_is_removed_on_check_and_on_save(tmp_path):
  path = tmp_path / "teacher.npz"
  stale = tc._tmp_path(path, pid=2**22 + 12345)  # a writer that is gone
  assert stale.name == f"teacher.npz.{2**22 + 12345}.tmp.npz"
  live = tc._tmp_path(path, pid=os.getppid())  # a live writer's (the test runner's parent): never removed
  stale.write_bytes(b"PK\x03\x04 cut short by a crash")
  with pytest.warns(UserWarning, match="interrupted write"):
    assert check_teacher_cache_file(path) is False
  assert not stale.exists()
  stale.write_bytes(b"PK\x03\x04 cut short by a crash")
  with pytest.warns(UserWarning, match="interrupted write"):
    save_teacher_cache(path, tiny_cache(), "f" * 16)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.npz"]
  assert check_teacher_cache_file(path) is True
  live.write_bytes(b"being written")
  assert check_teacher_cache_file(path) is True and live.exists()
