"""The in-memory dataset every kdjax loader returns, and its validation."""

from __future__ import annotations

import dataclasses

import numpy as np

PAD_ID = 0  # token id of padding in a text dataset (and in kdjax.models.text)


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """Images as uint8 ``[N, H, W, C]`` and integer labels ``[N]``, host memory.

  Text: with a ``vocab`` (its token strings, ``vocab[0]`` the padding), the "images" are token
  ids, int32 ``[N, L]``, right-padded with :data:`PAD_ID`; ``image_shape`` is then ``(L,)``
  (see :mod:`kdjax.data.text`).

  Two optional extras travel with the training batches:

  - ``unlabelled_images``: images of another domain with no labels (any count, the same shape):
    every training batch also carries ``batch_size`` of them, freshly paired each epoch, for
    methods that learn from unlabelled data (domain alignment, :func:`kdjax.methods.domain_kd`).
  - ``teacher_train_images``: what the teacher sees of each training example, row for row (e.g.
    the full image where the student sees a low-resolution view: cross-modal distillation); the
    teacher then runs on these instead of ``train_images``.
  """

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  vocab: tuple[str, ...] | None = None
  unlabelled_images: np.ndarray | None = None
  teacher_train_images: np.ndarray | None = None

  @property
  def image_shape(self) -> tuple[int, ...]:
    """One example's shape: ``(H, W, C)`` for images, ``(L,)`` for token sequences."""
    return tuple(self.train_images.shape[1:])

  @property
  def is_text(self) -> bool:
    return self.vocab is not None

  def __post_init__(self):
    validate_split(self.name, "train", self.train_images, self.train_labels, self.num_classes, self.vocab)
    validate_split(self.name, "test", self.test_images, self.test_labels, self.num_classes, self.vocab)
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(
          f"dataset {self.name!r}: train {'sequences' if self.is_text else 'images'} have shape "
          f"{self.train_images.shape[1:]} but test {'sequences' if self.is_text else 'images'} {self.test_images.shape[1:]}")
    if self.unlabelled_images is not None:
      u = self.unlabelled_images
      if self.is_text:
        raise ValueError(f"dataset {self.name!r}: unlabelled_images are for image data, not text")
      _check_images(f"dataset {self.name!r}, unlabelled (target-domain) images", u)
      if u.shape[1:] != self.image_shape:
        raise ValueError(
            f"dataset {self.name!r}: the unlabelled target-domain images have shape {u.shape[1:]}, but the "
            f"training images (and so the student) have shape {self.image_shape}; resize or convert the target "
            "domain to the student's input shape first")
    if self.teacher_train_images is not None:
      t = self.teacher_train_images
      if self.is_text:
        raise ValueError(f"dataset {self.name!r}: teacher_train_images are for image data, not text")
      _check_images(f"dataset {self.name!r}, the teacher's training images", t)
      if len(t) != len(self.train_labels):
        raise ValueError(f"dataset {self.name!r}: {len(t)} teacher_train_images for {len(self.train_labels)} "
                         "training examples; they must pair row for row")
      if self.unlabelled_images is not None:
        raise ValueError(f"dataset {self.name!r}: give unlabelled_images or teacher_train_images, not both")

  def require_plain_images(self, what: str) -> None:
    """Fails unless this is plain labelled images: ``what`` (e.g. "sweeps") reads no text, no
    unlabelled images and no teacher view yet."""
    extras = [name for name, on in (("text", self.is_text), ("unlabelled_images", self.unlabelled_images is not None),
                                     ("teacher_train_images", self.teacher_train_images is not None)) if on]
    if extras:
      raise ValueError(f"{what} take labelled images only, but dataset {self.name!r} has {', '.join(extras)}: "
                       "use kdjax.train.distill / train_student for it")

  def summary(self) -> str:
    what = f"sequences of length {self.image_shape[0]}, vocabulary {len(self.vocab)}" if self.is_text else \
        f"images of shape {self.image_shape}"
    extra = f", {len(self.unlabelled_images)} unlabelled" if self.unlabelled_images is not None else ""
    return (f"{self.name}: {len(self.train_labels)} train / {len(self.test_labels)} test {what}, "
            f"{self.num_classes} classes{extra}")


def _check_images(where: str, images: np.ndarray) -> None:
  if images.dtype != np.uint8:
    raise ValueError(f"{where}: images must be uint8, got {images.dtype}")
  if images.ndim != 4:
    raise ValueError(f"{where}: images must have shape [N, H, W, C], got {images.shape}")
  if len(images) == 0:
    raise ValueError(f"{where}: no images")


def check_tokens(where: str, tokens: np.ndarray, vocab_size: int | None = None) -> None:
  """Token ids must be an int32 ``[N, L]`` batch with ``N, L >= 1``, ids in ``[0, vocab_size)``, and
  no sequence all padding (a model would have nothing to read)."""
  if tokens.ndim != 2:
    raise ValueError(f"{where}: token ids must have shape [N, L], got {tokens.shape}")
  if tokens.shape[0] == 0:
    raise ValueError(f"{where}: the batch is empty (no sequences)")
  if tokens.shape[1] == 0:
    raise ValueError(f"{where}: sequences of length 0")
  if tokens.dtype != np.int32:
    raise ValueError(f"{where}: token ids must be int32, got {tokens.dtype}")
  lo, hi = int(tokens.min()), int(tokens.max())
  if lo < 0 or (vocab_size is not None and hi >= vocab_size):
    raise ValueError(f"{where}: token ids span [{lo}, {hi}], outside the vocabulary's [0, {vocab_size - 1}]")
  empty = np.flatnonzero((tokens == PAD_ID).all(axis=1))
  if len(empty):
    raise ValueError(f"{where}: {len(empty)} sequence(s) are all padding (rows {empty[:5].tolist()}"
                     f"{'...' if len(empty) > 5 else ''}): an empty text gives a model nothing to read; drop them")


def check_num_classes(num_classes: int, what: str = "num_classes") -> None:
  """A class count must be an integer >= 2 (one class leaves nothing to tell apart)."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
    raise ValueError(f"{what} must be an integer >= 2, got {num_classes!r}")


def check_labels(name: str, split: str, labels: np.ndarray, num_classes: int) -> None:
  """Fails unless every label of the ``split`` split of dataset ``name`` lies in ``[0, num_classes)``,
  naming how many do not, the first of them (its index) and its value."""
  labels = np.asarray(labels)
  outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if len(outside):
    first = int(outside[0])
    raise ValueError(
        f"dataset {name!r}, {split} split: {len(outside)} label{'' if len(outside) == 1 else 's'} outside "
        f"[0, {num_classes - 1}] (the first at index {first}: {int(labels[first])}); fix those labels, or state "
        "the class count the data has (num_classes)")


def validate_split(name: str, split: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                   vocab=None) -> None:
  """Fails, naming dataset ``name``'s ``split`` split, unless its inputs are uint8 images ``[N, H, W, C]``
  (or token ids of ``vocab``) with one integer label each, ``N >= 1``, every label in ``[0, num_classes)``."""
  where = f"dataset {name!r}, {split} split"
  if vocab is not None:
    if tuple(vocab[:2]) != ("<pad>", "<unk>"):
      raise ValueError(f"{where}: a vocabulary starts with '<pad>' (id {PAD_ID}) and '<unk>' (id 1), got "
                       f"{tuple(vocab[:2])}")
    check_tokens(where, images, len(vocab))
  else:
    if images.dtype != np.uint8:
      raise ValueError(f"{where}: images must be uint8, got {images.dtype}")
    if images.ndim != 4:
      raise ValueError(f"{where}: images must have shape [N, H, W, C], got {images.shape}")
  if labels.ndim != 1 or len(labels) != len(images):
    raise ValueError(f"{where}: {len(images)} {'sequences' if vocab is not None else 'images'} but labels of "
                     f"shape {labels.shape}")
  if len(labels) == 0:
    raise ValueError(f"{where} is empty")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{where}: labels must be integers, got {labels.dtype}")
  check_labels(name, split, labels, num_classes)
