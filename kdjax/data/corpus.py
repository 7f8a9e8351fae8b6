"""Language-model data: an offline text corpus, a byte tokenizer, fixed-length packing with document masks.

A :class:`Corpus` is a named tuple of documents (text) with where they came from and their licence:

- :func:`stdlib_corpus` (the default, offline everywhere): the source files of a fixed, sorted list
  (:data:`STDLIB_MODULES`) of 73 pure-Python modules of the Python standard library, each file one
  document, about 2.3 MB in CPython 3.11–3.13. Licence: the Python Software Foundation License
  Version 2, the ``LICENSE.txt`` in the standard library's folder (:func:`stdlib_licence_path`). A
  module missing from another Python is skipped and named in the corpus (``skipped``) and its
  fingerprint, so the fingerprint says exactly what was read;
- :func:`text_files_corpus`: local text files (UTF-8), one document per file;
- :func:`tfds_corpus`: a TFDS text dataset (tensorflow-datasets is imported only there, and
  nothing is downloaded unless asked).

:class:`ByteTokenizer` maps text to UTF-8 bytes shifted by 3 (0 padding, 1 BOS, 2 EOS; 259 ids).
:func:`pack` cuts the tokenized documents into fixed-length rows with per-row document segments,
positions and a loss mask, and :func:`lm_dataset` does all of it: split, tokenize, pack, fingerprint.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import os
import platform
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from kdjax.data.tfds_source import data_sources
from kdjax.identity import array_digest

STDLIB_MODULES: tuple[str, ...] = (
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "cmd.py", "code.py", "codecs.py",
    "collections/__init__.py", "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py",
    "datetime.py", "difflib.py", "email/__init__.py", "email/_encoded_words.py", "email/_header_value_parser.py",
    "email/_parseaddr.py", "email/_policybase.py", "email/base64mime.py", "email/charset.py",
    "email/contentmanager.py", "email/encoders.py", "email/errors.py", "email/feedparser.py", "email/generator.py",
    "email/header.py", "email/headerregistry.py", "email/iterators.py", "email/message.py", "email/parser.py",
    "email/policy.py", "email/quoprimime.py", "email/utils.py", "enum.py", "fnmatch.py", "fractions.py",
    "functools.py", "gettext.py", "glob.py", "heapq.py", "hmac.py", "html/parser.py", "http/client.py",
    "inspect.py", "ipaddress.py", "json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py",
    "logging/__init__.py", "numbers.py", "optparse.py", "pprint.py", "queue.py", "random.py", "sched.py",
    "shlex.py", "shutil.py", "statistics.py", "string.py", "tempfile.py", "textwrap.py", "threading.py",
    "tokenize.py", "traceback.py", "typing.py", "urllib/parse.py", "uuid.py", "warnings.py", "weakref.py",
)
"""The standard-library files of :func:`stdlib_corpus`, relative to the stdlib folder, sorted; all
exist in CPython 3.11, 3.12 and 3.13 (about 2.3 MB in each; the texts differ between versions)."""

STDLIB_LICENCE = ("Python Software Foundation License Version 2 (the LICENSE.txt in the Python standard "
                  "library's folder)")


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Documents of text, with where they came from (``source``) and their ``licence``.

  ``names`` names each document (a file's path relative to the source, a record's index);
  ``skipped`` lists what a fixed corpus meant to read but did not find (empty when complete).
  """

  name: str
  documents: tuple[str, ...]
  source: str
  licence: str
  names: tuple[str, ...] = ()
  skipped: tuple[str, ...] = ()

  def __post_init__(self):
    if not isinstance(self.documents, tuple) or not all(isinstance(d, str) for d in self.documents):
      raise TypeError(f"corpus {self.name!r}: documents must be a tuple of str")
    if self.names and len(self.names) != len(self.documents):
      raise ValueError(f"corpus {self.name!r}: {len(self.names)} names for {len(self.documents)} documents")

  @property
  def num_bytes(self) -> int:
    """The documents' total size in UTF-8 bytes."""
    return sum(len(d.encode("utf-8")) for d in self.documents)

  def fingerprint(self) -> dict[str, Any]:
    return corpus_fingerprint(self)


def corpus_fingerprint(corpus: Corpus) -> dict[str, Any]:
  """``{"name", "documents", "bytes", "sha256", "skipped"}``: the corpus's name, number of documents,
  total UTF-8 bytes, a 16-hex-character SHA-256 of the content with its document boundaries (each
  document's byte length, then its bytes, in order) and what a fixed corpus did not find. Where the
  corpus lies on disk (``source``) is not part of it: the same text elsewhere is the same corpus."""
  h = hashlib.sha256()
  total = 0
  for doc in corpus.documents:
    b = doc.encode("utf-8")
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)
    total += len(b)
  return {"name": corpus.name, "documents": len(corpus.documents), "bytes": total, "sha256": h.hexdigest()[:16],
          "skipped": list(corpus.skipped)}


def stdlib_dir() -> Path:
  """The folder of the running Python's standard library (``sysconfig``'s ``stdlib`` path)."""
  return Path(sysconfig.get_paths()["stdlib"])


def stdlib_licence_path() -> Path:
  """The standard library's ``LICENSE.txt`` (the Python Software Foundation License)."""
  return stdlib_dir() / "LICENSE.txt"


def stdlib_corpus(max_bytes: int | None = None) -> Corpus:
  """The source of the :data:`STDLIB_MODULES` of the running Python, one document per file, in that
  order (offline; licence: :data:`STDLIB_LICENCE`, :func:`stdlib_licence_path`).

  A file this Python lacks is skipped and listed in ``skipped`` (and the fingerprint); none found
  is an error. ``max_bytes`` keeps the first files up to that many UTF-8 bytes in all, the last one
  cut at a character boundary.
  """
  if max_bytes is not None and max_bytes < 1:
    raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
  root = stdlib_dir()
  docs, names, skipped = [], [], []
  used = 0
  for rel in STDLIB_MODULES:
    if max_bytes is not None and used >= max_bytes:
      break
    path = root / rel
    try:
      data = path.read_bytes()
    except OSError:
      skipped.append(rel)
      continue
    if max_bytes is not None and used + len(data) > max_bytes:
      data = data[:max_bytes - used]
    text = data.decode("utf-8", errors="ignore")  # only a cut last character is ever dropped
    if not text:
      break
    used += len(text.encode("utf-8"))
    docs.append(text)
    names.append(rel)
  if not docs:
    raise FileNotFoundError(f"none of the {len(STDLIB_MODULES)} standard-library source files of the stdlib "
                            f"corpus is under {root} (a Python without its .py sources?); use text_files_corpus "
                            "or tfds_corpus instead")
  version = platform.python_version()
  return Corpus(name="python-stdlib", documents=tuple(docs), source=f"{platform.python_implementation()} "
                f"{version} standard library, {root}", licence=f"{STDLIB_LICENCE}: {stdlib_licence_path()}",
                names=tuple(names), skipped=tuple(skipped))


def text_files_corpus(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike], name: str | None = None,
                      *, licence: str = "unknown (local files)") -> Corpus:
  """Local UTF-8 text files, one document per file: a glob pattern (``"notes/**/*.txt"``, recursive),
  a file, a folder (every file under it) or a list of those; files in sorted order per entry.
  A pattern or path that matches no file is an error naming it; so is a file that is not UTF-8."""
  entries = [paths_or_glob] if isinstance(paths_or_glob, (str, os.PathLike)) else list(paths_or_glob)
  if not entries:
    raise ValueError("text_files_corpus: no paths given")
  files: list[Path] = []
  for entry in entries:
    text = os.fspath(entry)
    path = Path(text).expanduser()
    if path.is_file():
      found = [path]
    elif path.is_dir():
      found = sorted(p for p in path.rglob("*") if p.is_file())
    else:
      found = sorted(Path(p) for p in globlib.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
    if not found:
      raise FileNotFoundError(f"text_files_corpus: no file matches {text!r}")
    files += found
  docs = []
  for f in files:
    try:
      docs.append(f.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
      raise ValueError(f"text_files_corpus: {f} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  source = ", ".join(os.fspath(e) for e in entries)
  return Corpus(name=name or "text-files", documents=tuple(docs), source=source, licence=licence,
                names=tuple(str(f) for f in files))


def tfds_corpus(name: str, split: str, *, key: str = "text", data_dir: str | os.PathLike | None = None,
                download: bool = False, max_documents: int | None = None) -> Corpus:
  """The ``key`` feature of TFDS dataset ``name``'s ``split`` (e.g. ``"train[:10%]"``), one document per
  record, through ``tfds.data_source`` (array_record, random access). tensorflow-datasets is imported
  here only; nothing is downloaded unless ``download=True``."""
  try:
    _, (source,), _ = data_sources(name, (split,), data_dir, download=download)
  except ModuleNotFoundError as e:
    if e.name != "tensorflow_datasets":
      raise
    raise ImportError("tfds_corpus needs tensorflow-datasets (pip install tensorflow-datasets array_record); "
                      "the offline default is stdlib_corpus()") from None
  n = len(source) if max_documents is None else min(len(source), max_documents)
  docs = []
  for i in range(n):
    record = source[i]
    if key not in record:
      raise KeyError(f"TFDS dataset {name!r} has no feature {key!r}; it has {sorted(record)}")
    value = record[key]
    docs.append(value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value))
  if not docs:
    raise ValueError(f"TFDS dataset {name!r}, split {split!r}: no records")
  return Corpus(name=f"tfds:{name}:{split}" + (f":{n}" if max_documents is not None else ""), documents=tuple(docs),
                source=f"TFDS {name} ({split}) under {data_dir}",
                licence=f"see the TFDS catalog page of {name} and its original source",
                names=tuple(str(i) for i in range(n)))


# --- Tokenizer ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """Text as UTF-8 bytes: a byte ``b`` is id ``b + 3``; 0 is padding, 1 begins a document (BOS), 2 ends
  one (EOS); 259 ids in all."""

  PAD: ClassVar[int] = 0
  BOS: ClassVar[int] = 1
  EOS: ClassVar[int] = 2
  offset: ClassVar[int] = 3
  vocab_size: ClassVar[int] = 259

  def encode(self, text: str) -> np.ndarray:
    """int32 ids of ``text``'s UTF-8 bytes (no BOS or EOS)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.offset

  def decode(self, ids) -> str:
    """The text of ``ids``, special ids dropped, invalid UTF-8 replaced by U+FFFD; an id outside
    ``[0, 259)`` is an error."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f"token ids span [{ids.min()}, {ids.max()}], outside the byte tokenizer's [0, {self.vocab_size - 1}]")
    data = (ids[ids >= self.offset] - self.offset).astype(np.uint8).tobytes()
    return data.decode("utf-8", errors="replace")

  def identity(self) -> dict[str, Any]:
    return {"kind": "bytes", "vocab_size": self.vocab_size, "offset": self.offset}


# --- Split and packing ----------------------------------------------------------------------------

def split_documents(corpus: Corpus, valid_fraction: float = 0.1, seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """``(train, valid)`` documents: ``round(n * valid_fraction)`` documents drawn by ``seed`` for
  validation, the rest for training, each side in corpus order. Disjoint (by position), the same for
  the same corpus and seed; a split that leaves either side empty is an error."""
  n = len(corpus.documents)
  if not 0 < valid_fraction < 1:
    raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
  n_valid = round(n * valid_fraction)
  if n_valid < 1 or n_valid > n - 1:
    raise ValueError(f"corpus {corpus.name!r} has {n} document(s): valid_fraction {valid_fraction} leaves "
                     f"{'no validation' if n_valid < 1 else 'no training'} document; use more documents or another "
                     "fraction")
  valid = np.zeros(n, bool)
  valid[np.random.default_rng(seed).permutation(n)[:n_valid]] = True
  return (tuple(d for d, v in zip(corpus.documents, valid) if not v),
          tuple(d for d, v in zip(corpus.documents, valid) if v))


def pack(token_docs: Sequence[np.ndarray], seq_len: int, *, bos: int = 1, eos: int = 2, pad: int = 0
         ) -> dict[str, np.ndarray]:
  """Documents of token ids as fixed-length rows for next-token prediction.

  Rules:

  - each document becomes ``[bos, *tokens, eos]``; the documents are joined, in order, into one stream;
  - row ``r`` is ``stream[r * seq_len : r * seq_len + seq_len + 1]``: ``seq_len + 1`` tokens, rows
    overlapping by one, so that every stream token but the first is a target exactly once; the last
    row is right-padded with ``pad``. ``N = ceil((len(stream) - 1) / seq_len)`` rows;
  - a document may span rows: its part in a row is a segment of that row, with positions from 0.

  Returns, each ``[N, seq_len]``:

  - ``"tokens"`` (int32): the inputs, ``row[:-1]``; ``"targets"`` (int32): ``row[1:]``;
  - ``"segments"`` (int32): the input's document, numbered 1, 2, ... in order within each row
    (0 for padding);
  - ``"positions"`` (int32): the input's position within its segment in the row (0 for padding);
  - ``"mask"`` (float32): 1 where the target is the next token of the input's document (input and
    target in the same segment, neither padding), else 0: a document's EOS target counts, the next
    document's BOS after an EOS does not, nor a padding target.
  """
  if seq_len < 2:
    raise ValueError(f"seq_len must be >= 2, got {seq_len}")
  if len(token_docs) == 0:
    raise ValueError("pack: no documents")
  parts, doc_ids = [], []
  for i, doc in enumerate(token_docs):
    doc = np.asarray(doc)
    if doc.ndim != 1:
      raise ValueError(f"pack: document {i} has shape {doc.shape}; documents are 1-D token ids")
    parts.append(np.concatenate([[bos], doc.astype(np.int64), [eos]]))
    doc_ids.append(np.full(len(doc) + 2, i, np.int64))
  stream = np.concatenate(parts)
  docs = np.concatenate(doc_ids)
  n_rows = -(-(len(stream) - 1) // seq_len)
  total = n_rows * seq_len + 1
  stream = np.concatenate([stream, np.full(total - len(stream), pad, np.int64)])
  docs = np.concatenate([docs, np.full(total - len(docs), -1, np.int64)])
  index = np.arange(n_rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
  rows, row_docs = stream[index], docs[index]
  start = np.ones_like(row_docs, bool)
  start[:, 1:] = row_docs[:, 1:] != row_docs[:, :-1]
  real = row_docs >= 0
  segments = np.where(real, np.cumsum(start & real, axis=1), 0)
  column = np.broadcast_to(np.arange(seq_len + 1), rows.shape)
  positions = np.where(real, column - np.maximum.accumulate(np.where(start, column, 0), axis=1), 0)
  mask = (segments[:, :-1] == segments[:, 1:]) & (segments[:, :-1] > 0)
  return {"tokens": rows[:, :-1].astype(np.int32), "targets": rows[:, 1:].astype(np.int32),
          "segments": segments[:, :-1].astype(np.int32), "positions": positions[:, :-1].astype(np.int32),
          "mask": mask.astype(np.float32)}


BATCH_KEYS = ("tokens", "targets", "segments", "positions", "mask")


class LMData(NamedTuple):
  """Packed language-model data (:func:`lm_dataset`): ``train`` and ``valid`` are :func:`pack` dicts."""

  train: dict[str, np.ndarray]
  valid: dict[str, np.ndarray]
  vocab_size: int
  seq_len: int
  tokenizer_identity: dict[str, Any]
  fingerprint: dict[str, Any]


def lm_dataset(corpus: Corpus, tokenizer: Any = None, *, seq_len: int, valid_fraction: float = 0.1, seed: int = 0,
               max_rows: int | None = None) -> LMData:
  """``corpus`` split by document (:func:`split_documents`), tokenized and packed (:func:`pack`) into
  rows of ``seq_len``; ``max_rows`` keeps at most that many rows of each split (the first).

  ``tokenizer`` (default :class:`ByteTokenizer`) needs ``encode(text) -> ids``, ``BOS``, ``EOS``, ``PAD``,
  ``vocab_size`` and ``identity()``. The fingerprint holds the corpus's (:func:`corpus_fingerprint`), the
  tokenizer's identity, ``seq_len``, the split, the row counts and a SHA-256 of every packed array.
  """
  tokenizer = ByteTokenizer() if tokenizer is None else tokenizer
  if max_rows is not None and max_rows < 1:
    raise ValueError(f"max_rows must be >= 1, got {max_rows}")
  train_docs, valid_docs = split_documents(corpus, valid_fraction, seed)
  kw = {"bos": int(tokenizer.BOS), "eos": int(tokenizer.EOS), "pad": int(getattr(tokenizer, "PAD", 0))}
  splits = []
  for docs in (train_docs, valid_docs):
    packed = pack([tokenizer.encode(d) for d in docs], seq_len, **kw)
    if max_rows is not None:
      packed = {k: v[:max_rows] for k, v in packed.items()}
    splits.append(packed)
  train, valid = splits
  tok_id = dict(tokenizer.identity())
  fp = {"corpus": corpus_fingerprint(corpus), "tokenizer": tok_id, "seq_len": int(seq_len),
        "split": {"valid_fraction": valid_fraction, "seed": int(seed)}, "max_rows": max_rows,
        "train_rows": len(train["tokens"]), "valid_rows": len(valid["tokens"]),
        "sha256": array_digest(*(train[k] for k in BATCH_KEYS), *(valid[k] for k in BATCH_KEYS))}
  return LMData(train=train, valid=valid, vocab_size=int(tokenizer.vocab_size), seq_len=int(seq_len),
                tokenizer_identity=tok_id, fingerprint=fp)


__all__ = ["BATCH_KEYS", "ByteTokenizer", "Corpus", "LMData", "STDLIB_LICENCE", "STDLIB_MODULES",
           "corpus_fingerprint", "lm_dataset", "pack", "split_documents", "stdlib_corpus", "stdlib_dir",
           "stdlib_licence_path", "text_files_corpus", "tfds_corpus"]
