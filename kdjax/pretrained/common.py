"""Reading a state dict from disk and checking it against what a model family expects."""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

# The suffixes load_state_dict reads: safetensors without PyTorch, pickled state dicts through torch.load.
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Keys under which training scripts nest the state dict (RepDistiller saves {"model": ..., "epoch": ...}).
_NESTED = ("model", "state_dict", "model_state_dict", "net")
_TOO_MANY = 12  # names listed per kind of problem before "... and N more"


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a weights file as float32/int NumPy arrays by name.

  ``.safetensors`` is read with the ``safetensors`` package (no PyTorch needed); ``.pt``, ``.pth``,
  ``.bin`` and ``.ckpt`` with ``torch.load(weights_only=True)`` on the CPU. A checkpoint that nests the
  state dict under ``model`` / ``state_dict`` (RepDistiller, Lightning) is unwrapped, and a
  ``module.`` prefix (``nn.DataParallel``) is dropped."""
  path = Path(path)
  if path.is_dir():
    raise ValueError(f"{path} is a folder: give the weights file in it (a Hugging Face folder is read by "
                     "kdjax.pretrained.gpt2.load_gpt2, which a language-model study's --teacher-weights takes)")
  if not path.is_file():
    raise FileNotFoundError(f"weights file {path} does not exist")
  suffix = path.suffix.lower()
  if suffix in SAFETENSORS_SUFFIXES:
    try:
      from safetensors import safe_open
    except ImportError:
      raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    try:
      tensors = _read_safetensors(safe_open, path)
    except Exception as e:  # safetensors' own error type: a damaged or truncated file
      raise ValueError(f"cannot read {path} as safetensors: {e}") from None
  elif suffix in TORCH_SUFFIXES:
    try:
      import torch
    except ImportError:
      raise ImportError(f"reading {path} (a PyTorch file) needs PyTorch: pip install torch, "
                        "or save the weights as .safetensors") from None
    try:  # RepDistiller's *_last.pth keep the training options as an argparse.Namespace beside the weights
      with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load's errors on a damaged file are of any type (IndexError, KeyError, ...)
      found = re.search(r"GLOBAL (\S+)", str(e))
      if isinstance(e, pickle.UnpicklingError) and found:
        raise ValueError(f"{path} holds objects other than tensors ({found.group(1)}) that torch.load(weights_only="
                         "True) does not unpickle; if you trust the file, save its state dict alone: "
                         "torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth')") from None
      raise ValueError(f"cannot read {path} as a PyTorch file ({type(e).__name__}: {str(e)[:200]})") from None
    for key in _NESTED:
      if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
        obj = obj[key]
        break
    if not isinstance(obj, Mapping):
      raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    tensors = {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, "shape")}
  else:
    raise ValueError(f"{path}: unknown weights format {suffix!r}; use one of "
                     f"{', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}")
  if tensors and all(k.startswith("module.") for k in tensors):
    tensors = {k[len("module."):]: v for k, v in tensors.items()}
  return dict(tensors)


def _read_safetensors(safe_open, path: Path) -> dict[str, np.ndarray]:
  """Every tensor as NumPy, bfloat16 ones (which NumPy cannot read) through JAX, floats as float32."""
  with safe_open(str(path), framework="numpy") as f:
    names = list(f.keys())
    bf16 = {k for k in names if f.get_slice(k).get_dtype() == "BF16"}
    tensors = {k: f.get_tensor(k) for k in names if k not in bf16}
  if bf16:
    with safe_open(str(path), framework="flax") as f:
      tensors.update({k: np.asarray(f.get_tensor(k)) for k in bf16})
  return {k: _float32(tensors[k]) for k in names}


def _float32(a: np.ndarray) -> np.ndarray:
  """Floating-point weights (bfloat16, float16, float64) as float32, the same whatever file they came in;
  integers as they are."""
  return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16" else a


def _to_numpy(t) -> np.ndarray:
  t = t.detach().cpu()
  if t.is_floating_point():
    t = t.float()  # bfloat16 / float16 weights are converted up; NumPy has no bfloat16
  return t.numpy()


def check_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], *,
                     family: str, ignore: Iterable[str] = ()) -> None:
  """Raises one ``ValueError`` naming every tensor of ``expected`` (name -> shape, in the source's
  layout) that ``state_dict`` lacks or holds with another shape, and every tensor it holds that is not
  expected (``ignore``: names allowed and skipped, e.g. BatchNorm's ``num_batches_tracked``)."""
  ignore = set(ignore)
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected and k not in ignore]
  misshaped = [f"{k} {tuple(np.shape(state_dict[k]))} (expected {tuple(expected[k])})" for k in expected
               if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(expected[k])]
  problems = [f"{what} ({len(names)}): {_listing(names)}"
              for what, names in (("missing", missing), ("mis-shaped", misshaped), ("unexpected", unexpected))
              if names]
  if problems:
    raise ValueError(f"the weights do not fit the {family}: " + "; ".join(problems))


def _listing(names: list[str]) -> str:
  shown = ", ".join(names[:_TOO_MANY])
  return shown + (f", ... and {len(names) - _TOO_MANY} more" if len(names) > _TOO_MANY else "")


def state_dict_digest(state_dict: Mapping[str, np.ndarray]) -> str:
  """SHA-256 over the names, shapes, dtypes and bytes of a state dict (in name order): the identity of
  imported weights, recorded where a run names its teacher."""
  h = hashlib.sha256()
  for name in sorted(state_dict):
    a = np.ascontiguousarray(state_dict[name])
    h.update(f"{name}|{a.shape}|{a.dtype}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()
