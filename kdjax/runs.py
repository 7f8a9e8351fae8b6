"""What the study and the sweep share about a run: the environment it ran in, the data cut to a
subset, and the check that every configured model takes the data's inputs.

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
from kdjax.data import ArrayDataset
from kdjax.models import check_input_shape, get_model_spec

CONFIGURED_ROLES = ("teacher", "student", "distilled")  # the control is derived from the student


def environment() -> dict[str, str]:
  dev = jax.devices()[0]
  return {"kdjax": kdjax.__version__, "jax": jax.__version__, "python": platform.python_version(),
          "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')} x{jax.device_count()}",
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def check_models_fit_data(cfg: StudyConfig, data: ArrayDataset) -> None:
  for role in CONFIGURED_ROLES:
    try:
      check_input_shape(get_model_spec(getattr(cfg, role).model), data.image_shape)
    except ValueError as e:
      raise ValueError(f"{role}: {e} ({data.name})") from None


def subset_data(data: ArrayDataset, subset: int | None) -> ArrayDataset:
  """``data`` with only its first ``subset`` training images (all of them for ``None``)."""
  if subset is None:
    return data
  if not 0 < subset <= len(data.train_labels):
    raise ValueError(f"--subset must lie in [1, {len(data.train_labels)}] for {data.name}, got {subset}")
  return dataclasses.replace(data, name=f"{data.name}[:{subset}]", train_images=data.train_images[:subset],
                             train_labels=data.train_labels[:subset])
