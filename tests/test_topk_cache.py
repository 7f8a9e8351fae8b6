"""The on-disk top-k teacher cache (kdjax.data.topk_cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdjax.data.topk_cache import TopkCacheWriter, open_topk_cache, topk_cache_exists, write_topk_cache
from kdjax.workdir import leftovers

IDENTITY = {"teacher": "abc", "tokenizer": {"kind": "bytes", "vocab_size": 259}, "corpus": "709f", "k": 4,
            "temperature": 2.0}


def _arrays(n=23, L=5, K=4, seed=0):
  rng = np.random.default_rng(seed)
  lp = -np.sort(rng.exponential(size=(n, L, K)), axis=-1).astype(np.float32)
  ids = rng.integers(0, 259, size=(n, L, K)).astype(np.int32)
  return lp, ids


def test_round_trip_over_shards(tmp_path):
  lp, ids = _arrays()
  out = write_topk_cache(tmp_path / "c", lp, ids, identity=IDENTITY, rows_per_shard=6)
  assert topk_cache_exists(out)
  assert sorted(p.name for p in out.iterdir()) == ["manifest.json", *(f"shard-0000{i}.npz" for i in range(4))]
  manifest = json.loads((out / "manifest.json").read_text())
  assert [s["rows"] for s in manifest["shards"]] == [6, 6, 6, 5] and all(len(s["sha256"]) == 64 for s in manifest["shards"])
  cache = open_topk_cache(out, identity=dict(IDENTITY, temperature=2))  # 2 and 2.0 are one value
  assert (cache.num_rows, cache.seq_len, cache.k, len(cache)) == (23, 5, 4, 23)
  assert cache.identity["teacher"] == "abc"
  for order in (np.arange(23), np.arange(23)[::-1], np.random.default_rng(1).permutation(23),
                np.array([22, 0, 7, 7, 13, 5]), np.array([], np.int64)):
    got_lp, got_ids = cache.rows(order)
    assert got_lp.dtype == np.float32 and got_ids.dtype == np.int32
    np.testing.assert_array_equal(got_lp, lp[order])
    np.testing.assert_array_equal(got_ids, ids[order])
  with pytest.raises(IndexError):
    cache.rows(np.array([23]))
  assert not leftovers(out)


def test_float16_input_stored_as_float32(tmp_path):
  lp, ids = _arrays(n=3)
  cache = open_topk_cache(write_topk_cache(tmp_path, lp.astype(np.float16), ids, identity=IDENTITY), identity=IDENTITY)
  np.testing.assert_array_equal(cache.rows(np.arange(3))[0], lp.astype(np.float16).astype(np.float32))


def test_identity_mismatch_names_fields(tmp_path):
  lp, ids = _arrays(n=4)
  write_topk_cache(tmp_path, lp, ids, identity=IDENTITY)
  with pytest.raises(ValueError, match="another teacher") as e:
    open_topk_cache(tmp_path, identity=dict(IDENTITY, teacher="def", k=16))
  msg = str(e.value)
  assert 'teacher: "abc" -> "def"' in msg and "k: 4 -> 16" in msg and "temperature" not in msg
  with pytest.raises(ValueError, match=r"tokenizer\.vocab_size: 259 -> 300"):
    open_topk_cache(tmp_path, identity=dict(IDENTITY, tokenizer={"kind": "bytes", "vocab_size": 300}))


def test_missing_manifest_is_no_cache(tmp_path):
  lp, ids = _arrays(n=4)
  assert not topk_cache_exists(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="no finished top-k cache"):
    open_topk_cache(tmp_path / "nothing", identity=IDENTITY)
  writer = TopkCacheWriter(tmp_path, identity=IDENTITY, rows_per_shard=2)
  writer.append(lp, ids)  # two shards written, never closed: a cut write
  assert (tmp_path / "shard-00001.npz").exists() and not topk_cache_exists(tmp_path)
  with pytest.raises(FileNotFoundError, match="no finished"):
    open_topk_cache(tmp_path, identity=IDENTITY)
  writer.close()
  assert topk_cache_exists(tmp_path)
  # starting a new write ends the old cache at once
  with pytest.raises(RuntimeError), TopkCacheWriter(tmp_path, identity=IDENTITY) as w:
    w.append(lp, ids)
    raise RuntimeError("teacher crashed")
  assert not topk_cache_exists(tmp_path)


def test_damaged_or_missing_shard_named(tmp_path):
  lp, ids = _arrays()
  write_topk_cache(tmp_path, lp, ids, identity=IDENTITY, rows_per_shard=6)
  shard = tmp_path / "shard-00002.npz"
  data = bytearray(shard.read_bytes())
  data[-200] ^= 0xFF  # same size, other bytes: found when the shard is first read
  shard.write_bytes(bytes(data))
  cache = open_topk_cache(tmp_path, identity=IDENTITY)
  np.testing.assert_array_equal(cache.rows(np.array([0, 7]))[0], lp[[0, 7]])
  with pytest.raises(ValueError, match="shard-00002.npz is damaged"):
    cache.rows(np.array([13]))
  shard.write_bytes(bytes(data[:-10]))  # cut: found at open (sizes)
  with pytest.raises(ValueError, match="shard-00002.npz"):
    open_topk_cache(tmp_path, identity=IDENTITY)
  shard.unlink()
  with pytest.raises(FileNotFoundError, match="shard-00002.npz"):
    open_topk_cache(tmp_path, identity=IDENTITY)


def test_incremental_writer_equals_write(tmp_path):
  lp, ids = _arrays(n=29)
  write_topk_cache(tmp_path / "whole", lp, ids, identity=IDENTITY, rows_per_shard=8)
  with TopkCacheWriter(tmp_path / "parts", identity=IDENTITY, rows_per_shard=8) as w:
    for start, stop in ((0, 3), (3, 3), (3, 20), (20, 21), (21, 29)):
      w.append(lp[start:stop], ids[start:stop])
  def manifest(name):  # shard hashes aside: a zip entry holds its write time
    m = json.loads((tmp_path / name / "manifest.json").read_text())
    return dict(m, shards=[(s["file"], s["rows"], s["bytes"]) for s in m["shards"]])

  assert manifest("whole") == manifest("parts") and len(manifest("parts")["shards"]) == 4
  whole, parts = (open_topk_cache(tmp_path / n, identity=IDENTITY) for n in ("whole", "parts"))
  for a, b, c in zip(whole.rows(np.arange(29)), parts.rows(np.arange(29)), (lp, ids)):
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, c)
  w = TopkCacheWriter(tmp_path / "x", identity=IDENTITY)
  w.append(lp[:2], ids[:2])
  with pytest.raises(ValueError, match=r"\[L, K\]"):
    w.append(lp[:2, :3], ids[:2, :3])
  with pytest.raises(ValueError, match="NaN"):
    w.append(np.full_like(lp[:1], np.nan), ids[:1])
