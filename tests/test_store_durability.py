"""The sweep results store under crashes and failing writes: a last line without its newline, a
corrupt last line, a write that fails part-way (ENOSPC), an unwritable directory."""

import errno
import json
import os
import warnings

import pytest

from kdjax.sweep import store
from kdjax.sweep.store import append_record, finished_ids, load_records


def record(seed: int, **extra) -> dict:
  config = {"method": "hinton", "seed": seed}
  return {"run_id": store.run_id(config), "variant": "method=hinton", "seed": seed, "config": config, **extra}


@pytest.fixture
def strict_warnings():
  """Any warning fails the test: a healthy store reads and appends silently."""
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    yield


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path, strict_warnings):
  path = tmp_path / "results.jsonl"
  records = [record(s) for s in range(4)]
  for r in records[:3]:
    append_record(path, r)
  path.write_bytes(path.read_bytes()[:-1])  # the third record's newline never reached the disk
  assert load_records(path) == records[:3]
  assert finished_ids(path) == {r["run_id"] for r in records[:3]}
  append_record(path, records[3])  # the old store cut the third record off here: 3 records, not 4
  assert load_records(path) == records
  assert finished_ids(path) == {r["run_id"] for r in records}
  assert path.read_bytes().endswith(b"\n") and len(path.read_text().splitlines()) == 4


def test_a_single_long_record_without_its_newline_is_kept(tmp_path, strict_warnings):
  path = tmp_path / "results.jsonl"
  records = [record(0, history="x" * 200_000), record(1)]  # longer than the block read back
  path.write_text(json.dumps(records[0]))  # the only line, no newline
  append_record(path, records[1])
  assert load_records(path) == records


def test_a_cut_short_last_line_is_skipped_then_cut_off(tmp_path):
  path = tmp_path / "results.jsonl"
  records = [record(s, history="y" * 100_000) for s in range(3)]
  for r in records[:2]:
    append_record(path, r)
  line = json.dumps(records[2])
  with path.open("a") as f:
    f.write(line[:-1])  # all but the closing brace: not a JSON object
  with pytest.warns(UserWarning, match=":3: skipped"):
    assert finished_ids(path) == {r["run_id"] for r in records[:2]}
  with pytest.warns(UserWarning, match="removed an incomplete last line"):
    append_record(path, records[2])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert load_records(path) == records


def test_a_corrupt_last_line_with_its_newline_is_skipped_then_cut_off(tmp_path):
  # load_records skips a bad last line whatever its end; append must cut it too, or it would become
  # a corrupt line in the middle of the file that load_records refuses.
  path = tmp_path / "results.jsonl"
  records = [record(s) for s in range(3)]
  for r in records[:2]:
    append_record(path, r)
  with path.open("ab") as f:
    f.write(b'{"run_id": "abc", "se\x00\x00\n\n')
  with pytest.warns(UserWarning, match="skipped"):
    assert load_records(path) == records[:2]
  with pytest.warns(UserWarning, match="removed a corrupt last line"):
    append_record(path, records[2])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert load_records(path) == records


def test_blank_trailing_lines_are_left_alone(tmp_path, strict_warnings):
  path = tmp_path / "results.jsonl"
  records = [record(s) for s in range(2)]
  path.write_text(json.dumps(records[0]) + "\n\n  ")
  append_record(path, records[1])
  assert load_records(path) == records


@pytest.mark.parametrize("written", ["all but the newline", "half"])
def test_a_write_failing_part_way_leaves_no_part_of_the_record(tmp_path, monkeypatch, written):
  path = tmp_path / "results.jsonl"
  records = [record(s) for s in range(3)]
  for r in records[:2]:
    append_record(path, r)
  before = path.read_bytes()
  real_write = os.write

  def full_disk(fd, data):
    data = bytes(data)
    real_write(fd, data[:-1] if written == "all but the newline" else data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  with monkeypatch.context() as m:
    m.setattr(store.os, "write", full_disk)
    with pytest.raises(OSError, match="results.jsonl: cannot append") as raised:
      append_record(path, records[2])
  assert raised.value.errno == errno.ENOSPC and str(path) in str(raised.value)
  assert "No space left" in str(raised.value) and "resume the sweep" in str(raised.value)
  assert path.read_bytes() == before  # the fragment was taken back: no half record, no unfinished run counted
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert load_records(path) == records[:2]
    append_record(path, records[2])  # once there is room again
    assert load_records(path) == records


def test_a_failing_fsync_takes_the_record_back(tmp_path, monkeypatch):
  path = tmp_path / "results.jsonl"
  append_record(path, record(0))
  before = path.read_bytes()
  real_fsync, calls = os.fsync, []

  def failing_fsync(fd):
    calls.append(fd)
    if len(calls) == 1:
      raise OSError(errno.EIO, os.strerror(errno.EIO))
    real_fsync(fd)

  with monkeypatch.context() as m:
    m.setattr(store.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="cannot append") as raised:
      append_record(path, record(1))
  assert raised.value.errno == errno.EIO and path.read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only dirs")
def test_a_read_only_directory_raises_an_oserror_naming_the_file(tmp_path):
  directory = tmp_path / "sweep"
  directory.mkdir()
  directory.chmod(0o555)
  try:
    with pytest.raises(PermissionError, match="results.jsonl: cannot append"):
      append_record(directory / "results.jsonl", record(0))
  finally:
    directory.chmod(0o755)
  assert not (directory / "results.jsonl").exists()


def test_a_store_under_a_file_raises_an_oserror_naming_it(tmp_path):
  (tmp_path / "sweep").write_text("not a directory")
  path = tmp_path / "sweep" / "results.jsonl"
  with pytest.raises(OSError, match="results.jsonl: cannot append") as raised:
    append_record(path, record(0))
  assert str(path) in str(raised.value) and raised.value.errno in (errno.EEXIST, errno.ENOTDIR)
