"""The LM corpus, byte tokenizer and packing (kdjax.data.corpus)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kdjax.data.corpus import (STDLIB_MODULES, ByteTokenizer, Corpus, corpus_fingerprint, lm_dataset, pack,
                               split_documents, stdlib_corpus, stdlib_licence_path, text_files_corpus)


@pytest.fixture(scope="module")
def stdlib():
  return stdlib_corpus()


def test_stdlib_corpus_loads(stdlib):
  assert stdlib.name == "python-stdlib"
  assert len(stdlib.documents) == len(STDLIB_MODULES) - len(stdlib.skipped)
  assert stdlib.num_bytes > 500_000
  assert list(STDLIB_MODULES) == sorted(STDLIB_MODULES)
  assert "Python Software Foundation License" in stdlib.licence and str(stdlib_licence_path()) in stdlib.licence
  assert "def " in stdlib.documents[0]
  small = stdlib_corpus(max_bytes=50_000)
  assert small.num_bytes == 50_000 and stdlib.documents[0].startswith(small.documents[0])


def test_fingerprint_stable_and_sensitive(stdlib):
  fp = corpus_fingerprint(stdlib)
  assert fp == corpus_fingerprint(stdlib_corpus()) == stdlib.fingerprint()
  assert fp["documents"] == len(stdlib.documents) and fp["bytes"] == stdlib.num_bytes
  docs = list(stdlib.documents)
  docs[3] = docs[3][:100] + ("X" if docs[3][100] != "X" else "Y") + docs[3][101:]
  changed = dataclasses.replace(stdlib, documents=tuple(docs))
  assert corpus_fingerprint(changed)["sha256"] != fp["sha256"]
  assert corpus_fingerprint(changed)["bytes"] == fp["bytes"]
  # document boundaries count: the same text cut elsewhere is another corpus
  a = Corpus("c", ("ab", "c"), "here", "none")
  b = Corpus("c", ("a", "bc"), "here", "none")
  assert corpus_fingerprint(a)["sha256"] != corpus_fingerprint(b)["sha256"]


def test_byte_tokenizer_round_trip():
  tok = ByteTokenizer()
  text = "naïve café — 東京 🙂\n\ttabs"
  ids = tok.encode(text)
  assert ids.dtype == np.int32 and len(ids) == len(text.encode("utf-8"))
  assert ids.min() >= 3 and ids.max() < 259
  assert tok.decode(ids) == text
  assert tok.decode(np.concatenate([[1], ids, [2, 0, 0]])) == text  # specials dropped
  assert tok.encode("A").tolist() == [ord("A") + 3]
  assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # a cut character is replaced
  assert tok.identity() == {"kind": "bytes", "vocab_size": 259, "offset": 3}
  with pytest.raises(ValueError, match="outside"):
    tok.decode([259])


def test_pack_exact():
  docs = [np.array([10, 11, 12]), np.array([20]), np.array([30, 31, 32, 33, 34])]
  # stream: 1 10 11 12 2 | 1 20 2 | 1 30 31 32 33 34 2  (15 tokens -> ceil(14 / 4) = 4 rows)
  p = pack(docs, 4)
  assert set(p) == {"tokens", "targets", "segments", "positions", "mask"}
  assert all(v.shape == (4, 4) for v in p.values())
  assert p["tokens"].dtype == np.int32 and p["mask"].dtype == np.float32
  np.testing.assert_array_equal(p["tokens"], [[1, 10, 11, 12], [2, 1, 20, 2], [1, 30, 31, 32], [33, 34, 2, 0]])
  np.testing.assert_array_equal(p["targets"], [[10, 11, 12, 2], [1, 20, 2, 1], [30, 31, 32, 33], [34, 2, 0, 0]])
  np.testing.assert_array_equal(p["segments"], [[1, 1, 1, 1], [1, 2, 2, 2], [1, 1, 1, 1], [1, 1, 1, 0]])
  # the third document spans rows 2 and 3: its part in row 3 restarts at position 0
  np.testing.assert_array_equal(p["positions"], [[0, 1, 2, 3], [0, 0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 0]])
  np.testing.assert_array_equal(p["mask"], [[1, 1, 1, 1], [0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])


def test_pack_mask_never_crosses_documents():
  rng = np.random.default_rng(1)
  docs = [rng.integers(3, 259, size=int(n)) for n in rng.integers(0, 12, size=30)]
  p = pack(docs, 7)
  stream = np.concatenate([np.concatenate([[1], d, [2]]) for d in docs])
  n = len(stream) - 1
  flat_t, flat_y = p["tokens"].reshape(-1)[:n], p["targets"].reshape(-1)[:n]
  np.testing.assert_array_equal(flat_t, stream[:-1])  # every stream token but the first is a target once
  np.testing.assert_array_equal(flat_y, stream[1:])
  m = p["mask"].reshape(-1)
  assert (m[n:] == 0).all()
  # a target counts exactly when it is not a BOS (the next document's) and not padding
  np.testing.assert_array_equal(m[:n], (flat_y != 1).astype(np.float32))
  assert ((p["mask"] == 0) | (p["segments"] > 0)).all()
  with pytest.raises(ValueError, match="seq_len"):
    pack(docs, 1)


def test_split_deterministic_and_disjoint():
  corpus = Corpus("c", tuple(f"doc {i}" for i in range(20)), "here", "none")
  train, valid = split_documents(corpus, 0.25, seed=3)
  assert (train, valid) == split_documents(corpus, 0.25, seed=3)
  assert len(valid) == 5 and len(train) == 15 and not set(train) & set(valid)
  assert set(train) | set(valid) == set(corpus.documents)
  assert split_documents(corpus, 0.25, seed=4) != (train, valid)
  with pytest.raises(ValueError, match="no validation"):
    split_documents(Corpus("c", ("a", "b"), "here", "none"), 0.1)
  with pytest.raises(ValueError, match="no training"):
    split_documents(Corpus("c", ("a", "b"), "here", "none"), 0.9)


def test_lm_dataset(stdlib):
  small = stdlib_corpus(max_bytes=200_000)
  data = lm_dataset(small, ByteTokenizer(), seq_len=64, valid_fraction=0.2)
  assert data.vocab_size == 259 and data.seq_len == 64
  assert data.train["tokens"].shape[1] == 64 and len(data.valid["tokens"]) > 0
  assert data.fingerprint["corpus"] == corpus_fingerprint(small)
  assert data.fingerprint == lm_dataset(small, seq_len=64, valid_fraction=0.2).fingerprint
  other = lm_dataset(small, seq_len=32, valid_fraction=0.2)
  assert other.fingerprint["sha256"] != data.fingerprint["sha256"]
  capped = lm_dataset(small, seq_len=64, valid_fraction=0.2, max_rows=10)
  assert len(capped.train["tokens"]) == 10 and len(capped.valid["tokens"]) == 10


def test_text_files_corpus(tmp_path):
  (tmp_path / "b.txt").write_text("second ü")
  (tmp_path / "a.txt").write_text("first")
  (tmp_path / "c.md").write_text("other")
  c = text_files_corpus(str(tmp_path / "*.txt"), name="notes")
  assert c.documents == ("first", "second ü") and c.name == "notes"
  assert text_files_corpus([tmp_path / "c.md"]).documents == ("other",)
  assert len(text_files_corpus(tmp_path).documents) == 3
  with pytest.raises(FileNotFoundError, match=r"no file matches .*\*\.rst"):
    text_files_corpus(str(tmp_path / "*.rst"))
  (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
  with pytest.raises(ValueError, match="bad.txt is not UTF-8"):
    text_files_corpus(str(tmp_path / "*.txt"))


def test_tfds_corpus_reads_records_without_tfds(monkeypatch, tmp_path):
  """tfds_corpus through a stand-in tensorflow_datasets (the real one is optional and slow to import)."""
  import sys
  import types
  calls = []

  def data_source(name, **kwargs):
    calls.append((name, kwargs))
    if name != "tiny":
      raise ValueError("not prepared")
    return [{"text": "one".encode()}, {"text": "twö".encode()}, {"text": b"three"}]

  monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(data_source=data_source))
  from kdjax.data.corpus import tfds_corpus
  c = tfds_corpus("tiny", "train", data_dir=tmp_path, max_documents=2)
  assert c.documents == ("one", "twö") and c.name == "tfds:tiny:train:2"
  assert calls[0][1]["download"] is False
  with pytest.raises(FileNotFoundError, match="not prepared .* downloads are off"):
    tfds_corpus("other", "train", data_dir=tmp_path)
  with pytest.raises(KeyError, match="no feature 'content'"):
    tfds_corpus("tiny", "train", key="content", data_dir=tmp_path)
