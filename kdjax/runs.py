"""What the study and the sweep share about a run: the environment it ran in, the data cut to a
subset, and the check that the data can feed every configured run (its inputs, class count and size).

Both :mod:`kdjax.study` and :mod:`kdjax.sweep` import these, so neither imports the other
(docs/architecture.md). :mod:`kdjax.study` re-exports them.
"""

from __future__ import annotations

import dataclasses
import datetime
import platform

import jax

import kdjax
from kdjax.config import StudyConfig
from kdjax.data import ArrayDataset, check_labels
from kdjax.models import check_input_shape, get_model_spec

CONFIGURED_ROLES = ("teacher", "student", "distilled")  # the control is derived from the student


def environment() -> dict[str, str]:
  dev = jax.devices()[0]
  return {"kdjax": kdjax.__version__, "jax": jax.__version__, "python": platform.python_version(),
          "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')} x{jax.device_count()}",
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def check_models_fit_data(cfg: StudyConfig, data: ArrayDataset, *,
                          trains: tuple[str, ...] = CONFIGURED_ROLES) -> None:
  """Fails before any training, naming the role or the split, unless ``data`` can feed every run of ``cfg``:

  - every configured model takes the data's inputs;
  - the data has the class count the config states (``cfg.num_classes``, None: any); data with labels
    outside it (read without the count, so inferred larger) is named as :func:`kdjax.data.check_labels` does;
  - no role in ``trains`` (the StudyConfig fields of the runs that train: for a study all three, the
    student's batch size also being its augmented control's) has a batch larger than the training split.
  """
  for role in CONFIGURED_ROLES:
    try:
      check_input_shape(get_model_spec(getattr(cfg, role).model), data.image_shape)
    except ValueError as e:
      raise ValueError(f"{role}: {e} ({data.name})") from None
  if cfg.num_classes is not None and cfg.num_classes != data.num_classes:
    for split in ("train", "test"):
      check_labels(data.name, split, getattr(data, f"{split}_labels"), cfg.num_classes)
    raise ValueError(f"num_classes is {cfg.num_classes}, but {data.name} has {data.num_classes} classes: state "
                     f"num_classes={data.num_classes} (or none, to take the data's count)")
  size = len(data.train_labels)
  for role in trains:
    batch_size = getattr(cfg, role).batch_size
    if batch_size > size:
      raise ValueError(f"{role}.batch_size {batch_size} is larger than the training set ({size} examples of "
                       f"{data.name}); lower it or use more data")


def subset_data(data: ArrayDataset, subset: int | None) -> ArrayDataset:
  """``data`` with only its first ``subset`` training images (all of them for ``None``)."""
  if subset is None:
    return data
  if not 0 < subset <= len(data.train_labels):
    raise ValueError(f"--subset must lie in [1, {len(data.train_labels)}] for {data.name}, got {subset}")
  return dataclasses.replace(data, name=f"{data.name}[:{subset}]", train_images=data.train_images[:subset],
                             train_labels=data.train_labels[:subset])
