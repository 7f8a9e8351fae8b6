"""Hugging Face GPT-2 weights into kdjax's :class:`~kdjax.models.DecoderLM`.

GPT-2 (``transformers``' ``GPT2LMHeadModel`` / ``GPT2Model``) is the model DecoderLM already is: token
and learned position embeddings (``wte``, ``wpe``), pre-LN blocks (``h.{i}.ln_1``, ``attn``, ``ln_2``,
``mlp``) with biased projections, a GELU MLP, a final LayerNorm (``ln_f``) and an output tied to the
token embedding. :func:`gpt2_config_to_kwargs` turns a GPT-2 config into DecoderLM's arguments (learned
positions, ``norm_eps = layer_norm_epsilon``, the activation) and refuses, naming the field, a config
whose function DecoderLM cannot express; :func:`import_gpt2` places every tensor of a state dict on a
DecoderLM, by name; :func:`load_gpt2` does both from a local Hugging Face folder. Nothing is downloaded.

The mapping (``transformer.`` prefixed in ``GPT2LMHeadModel``'s state dict, bare in ``GPT2Model``'s):

- ``wte.weight`` ``[V, D]`` -> ``embed.embedding``; ``wpe.weight`` ``[P, D]`` -> ``pos_embed.embedding``;
- ``h.{i}.ln_1`` / ``ln_2`` ``.weight``, ``.bias`` -> ``blocks[i].ln1`` / ``ln2`` ``.scale``, ``.bias``;
- ``h.{i}.attn.c_attn.weight`` ``[D, 3D]`` (a ``Conv1D``: ``[in, out]``, Flax's layout, no transpose)
  and ``.bias`` ``[3D]``, split into thirds in the order q | k | v -> ``blocks[i].attn.query``, ``key``,
  ``value`` ``.kernel``, ``.bias`` (head ``h`` is channels ``h * dh : (h + 1) * dh`` in both);
- ``h.{i}.attn.c_proj`` -> ``blocks[i].attn.out``; ``h.{i}.mlp.c_fc`` -> ``blocks[i].fc1``;
  ``h.{i}.mlp.c_proj`` -> ``blocks[i].fc2``; ``ln_f`` -> ``ln_final``;
- ``lm_head.weight``, when present, must equal ``wte.weight`` (DecoderLM has no output matrix of its
  own); ``h.{i}.attn.bias`` and ``h.{i}.attn.masked_bias``, the causal-mask buffers that checkpoints
  written by older ``transformers`` (e.g. the Hub's ``gpt2``) carry, are skipped.

Dropout rates (``attn_pdrop``, ``resid_pdrop``, ``embd_pdrop``) act only in training; the imported model
has ``dropout_rate`` 0, the setting of a teacher.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.models.decoder import DecoderLM
from kdjax.pretrained.common import check_state_dict, load_state_dict

# GPT2Config's defaults (transformers 5.25), for the fields a hand-written config.json leaves out.
GPT2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "add_cross_attention": False,
    "tie_word_embeddings": True,
}
# transformers' activation names -> DecoderLM's (kdjax.models.decoder.ACTIVATIONS). gelu_new,
# gelu_pytorch_tanh, gelu_python_tanh and gelu_fast are one function, 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)));
# gelu and gelu_python are the exact 0.5 x (1 + erf(x / √2)).
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
                    "gelu_fast": "gelu_tanh", "gelu": "gelu_erf", "gelu_python": "gelu_erf"}
# Non-weight buffers some checkpoints hold under h.{i}.attn (the causal mask and its fill value).
_BUFFERS = ("attn.bias", "attn.masked_bias")
_PREFIX = "transformer."  # GPT2LMHeadModel's base-model prefix; GPT2Model's names are bare
CONFIG_FILE = "config.json"
# The weights files of a Hugging Face folder, in the order load_gpt2 looks for them.
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _config_dict(config) -> dict[str, Any]:
  """A GPT-2 config as a plain dict: from a mapping (config.json's contents), a ``GPT2Config`` (anything
  with ``to_dict``) or the path of a config.json."""
  if isinstance(config, (str, os.PathLike)):
    path = Path(config)
    if not path.is_file():
      raise FileNotFoundError(f"GPT-2 config file {path} does not exist")
    try:
      config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from None
  elif hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise TypeError(f"a GPT-2 config must be a dict, a GPT2Config or a config.json path, got {type(config).__name__}")
  return {**GPT2_DEFAULTS, **config}


def _positive_int(c: Mapping[str, Any], field: str) -> int:
  value = c[field]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"GPT-2 config field {field} must be a positive int, got {value!r}")
  return int(value)


def gpt2_config_to_kwargs(config) -> dict[str, Any]:
  """:class:`~kdjax.models.DecoderLM`'s constructor arguments (all but ``rngs``) for a Hugging Face GPT-2
  config (a dict read from config.json, a ``GPT2Config``, or a config.json path); missing fields take
  ``GPT2Config``'s defaults.

  ``vocab_size``; ``n_embd`` -> ``dim``; ``n_layer`` -> ``depth``; ``n_head`` -> ``num_heads``; ``n_inner``
  (None: ``4 * n_embd``) -> ``mlp_dim``; ``n_positions`` -> ``max_len``; ``positions="learned"``;
  ``layer_norm_epsilon`` -> ``norm_eps``; ``activation_function`` -> ``activation``; ``dropout_rate=0``.
  Raises ``ValueError`` naming the field for what DecoderLM cannot express: another ``model_type``, an
  activation other than GELU, ``scale_attn_weights=False`` (unscaled scores),
  ``scale_attn_by_inverse_layer_idx=True`` (scores also divided by the layer's index + 1),
  ``add_cross_attention=True``, ``tie_word_embeddings=False`` (a separate output matrix).
  ``reorder_and_upcast_attn`` is accepted either way: it changes only the precision of transformers'
  eager attention scores, which DecoderLM always computes in float32."""
  c = _config_dict(config)
  if c.get("model_type", "gpt2") != "gpt2":
    raise ValueError(f"GPT-2 config field model_type is {c['model_type']!r}; only 'gpt2' is imported")
  act = c["activation_function"]
  if act not in GPT2_ACTIVATIONS:
    raise ValueError(f"GPT-2 config field activation_function is {act!r}; DecoderLM expresses only "
                     f"{', '.join(GPT2_ACTIVATIONS)}")
  refused = {"scale_attn_weights": (True, "DecoderLM always scales attention scores by 1/sqrt(head_dim)"),
             "scale_attn_by_inverse_layer_idx": (False, "DecoderLM does not divide attention scores by the "
                                                        "layer index"),
             "add_cross_attention": (False, "DecoderLM has no cross-attention"),
             "tie_word_embeddings": (True, "DecoderLM's output is tied to the token embedding (no lm_head "
                                           "matrix of its own)")}
  for field, (wanted, why) in refused.items():
    if bool(c[field]) != wanted:
      raise ValueError(f"GPT-2 config field {field}={c[field]!r} cannot be imported: {why}")
  vocab, dim, depth, heads, max_len = (_positive_int(c, f) for f in
                                       ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions"))
  if dim % heads:
    raise ValueError(f"GPT-2 config field n_embd ({dim}) must be a multiple of n_head ({heads})")
  mlp_dim = 4 * dim if c["n_inner"] is None else _positive_int(c, "n_inner")
  eps = c["layer_norm_epsilon"]
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
    raise ValueError(f"GPT-2 config field layer_norm_epsilon must be a number > 0, got {eps!r}")
  return {"vocab_size": vocab, "dim": dim, "depth": depth, "num_heads": heads, "mlp_dim": mlp_dim,
          "max_len": max_len, "positions": "learned", "dropout_rate": 0.0, "norm_eps": float(eps),
          "activation": GPT2_ACTIVATIONS[act]}


def gpt2_shapes(model: DecoderLM, prefix: str = "") -> dict[str, tuple[int, ...]]:
  """Every weight a GPT-2 state dict holds for ``model``'s sizes: name (with ``prefix``) -> shape in
  PyTorch's layout (``Conv1D`` weights are ``[in, out]``)."""
  v, d, f, p = model.vocab_size, model.dim, model.mlp_dim, model.max_len
  shapes = {"wte.weight": (v, d), "wpe.weight": (p, d)}
  for i in range(model.depth):
    for name, shape in (("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)),
                        ("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
                        ("ln_2.weight", (d,)), ("ln_2.bias", (d,)), ("mlp.c_fc.weight", (d, f)),
                        ("mlp.c_fc.bias", (f,)), ("mlp.c_proj.weight", (f, d)), ("mlp.c_proj.bias", (d,))):
      shapes[f"h.{i}.{name}"] = shape
  shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
  return {prefix + k: s for k, s in shapes.items()}


def _values(sd: Mapping[str, np.ndarray], prefix: str, depth: int, dim: int) -> dict[tuple, np.ndarray]:
  """DecoderLM parameter path -> array, for every tensor of a checked state dict."""
  get = lambda name: np.asarray(sd[prefix + name], np.float32)
  out = {("embed", "embedding"): get("wte.weight"), ("pos_embed", "embedding"): get("wpe.weight"),
         ("ln_final", "scale"): get("ln_f.weight"), ("ln_final", "bias"): get("ln_f.bias")}
  for i in range(depth):
    h = f"h.{i}."
    w, b = get(h + "attn.c_attn.weight"), get(h + "attn.c_attn.bias")
    for j, name in enumerate(("query", "key", "value")):  # c_attn's output channels are q | k | v
      out[("blocks", i, "attn", name, "kernel")] = w[:, j * dim:(j + 1) * dim]
      out[("blocks", i, "attn", name, "bias")] = b[j * dim:(j + 1) * dim]
    for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
      out[("blocks", i, ours, "scale")] = get(h + theirs + ".weight")
      out[("blocks", i, ours, "bias")] = get(h + theirs + ".bias")
    for ours, theirs in ((("attn", "out"), "attn.c_proj"), (("fc1",), "mlp.c_fc"), (("fc2",), "mlp.c_proj")):
      out[("blocks", i, *ours, "kernel")] = get(h + theirs + ".weight")
      out[("blocks", i, *ours, "bias")] = get(h + theirs + ".bias")
  return out


def import_gpt2(state_dict: Mapping[str, np.ndarray], model: DecoderLM) -> DecoderLM:
  """Places a GPT-2 state dict's weights on ``model`` (in place; it may be abstract, from
  ``nnx.eval_shape``) and returns it.

  Names may carry ``GPT2LMHeadModel``'s ``transformer.`` prefix or be bare (``GPT2Model``). Before any
  weight is placed, one ``ValueError`` names every missing, mis-shaped (with both shapes) and unexpected
  tensor, and an ``lm_head.weight`` that is not ``wte.weight`` (an untied head) is refused. ``model``
  must have learned positions; its LayerNorm epsilon and activation are not in the weights: build it
  from the config with :func:`gpt2_config_to_kwargs`, or use :func:`load_gpt2`."""
  if not isinstance(model, DecoderLM):
    raise TypeError(f"import_gpt2 places weights on a kdjax DecoderLM, got {type(model).__name__}")
  if model.position_encoding != "learned":
    raise ValueError(f"GPT-2 has learned absolute positions (wpe); the DecoderLM has positions="
                     f"{model.position_encoding!r}: build it with positions='learned' (gpt2_config_to_kwargs does)")
  prefix = _PREFIX if any(k.startswith(_PREFIX) for k in state_dict) else ""
  expected = gpt2_shapes(model, prefix)
  if "lm_head.weight" in state_dict:
    expected["lm_head.weight"] = (model.vocab_size, model.dim)
  ignore = [f"{prefix}h.{i}.{b}" for i in range(model.depth) for b in _BUFFERS]
  check_state_dict(state_dict, expected, ignore=ignore,
                   family=f"GPT-2 model (vocab_size {model.vocab_size}, n_embd {model.dim}, n_layer {model.depth}, "
                          f"n_inner {model.mlp_dim}, n_positions {model.max_len}; names {prefix or 'without prefix'})")
  if "lm_head.weight" in state_dict:
    wte, head = (np.asarray(state_dict[k], np.float32) for k in (prefix + "wte.weight", "lm_head.weight"))
    if not np.array_equal(wte, head):
      raise ValueError(f"lm_head.weight differs from {prefix}wte.weight (max |difference| "
                       f"{float(np.max(np.abs(wte - head))):.3g}): the output head is not tied to the token "
                       "embedding, and DecoderLM has no output matrix of its own")
  values = _values(state_dict, prefix, model.depth, model.dim)
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  if set(values) != set(params):  # a DecoderLM parameter this mapping does not know, or the reverse
    unmapped = sorted(map(str, set(params) ^ set(values)))
    raise RuntimeError(f"kdjax's GPT-2 mapping and DecoderLM's parameters disagree on: {', '.join(unmapped)}")
  for path, value in values.items():
    params[path].set_value(jnp.asarray(value))
  return model


def _weights_file(directory: Path) -> Path:
  for name in WEIGHTS_FILES:
    if (directory / name).is_file():
      return directory / name
  raise FileNotFoundError(f"{directory} holds none of the weights files {', '.join(WEIGHTS_FILES)} (nothing is "
                          "downloaded: save the model there with save_pretrained, or copy its files)")


def read_gpt2_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a GPT-2 weights file (``.safetensors``, ``.bin``, ...), or of every shard a
  ``*.index.json`` (a sharded checkpoint's ``weight_map``) names."""
  path = Path(path)
  if not path.name.endswith(".index.json"):
    return load_state_dict(path)
  try:
    weight_map = json.loads(path.read_text())["weight_map"]
  except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is not a sharded checkpoint's index (JSON with a weight_map): {e!r}") from None
  tensors: dict[str, np.ndarray] = {}
  for shard in sorted(set(weight_map.values())):
    tensors.update(load_state_dict(path.parent / shard))
  return tensors


def load_gpt2(path: str | os.PathLike, *, config=None) -> DecoderLM:
  """A :class:`~kdjax.models.DecoderLM` holding a local Hugging Face GPT-2 checkpoint; nothing is downloaded.

  ``path`` is a folder (``config.json`` and one of :data:`WEIGHTS_FILES`, as ``save_pretrained`` writes
  it) or a weights file (``config.json`` read from its folder). ``config`` (a dict, a ``GPT2Config`` or a
  config.json path) replaces the folder's config.json. The model is built abstractly (no random
  initialisation) and every weight comes from the file; see :func:`gpt2_config_to_kwargs` and
  :func:`import_gpt2` for what is checked."""
  path = Path(path)
  if path.is_dir():
    directory, weights = path, _weights_file(path)
  elif path.is_file():
    directory, weights = path.parent, path
  else:
    raise FileNotFoundError(f"GPT-2 checkpoint {path} does not exist (nothing is downloaded: give a local folder "
                            "or weights file)")
  if config is None:
    config = directory / CONFIG_FILE
    if not config.is_file():
      raise FileNotFoundError(f"{directory} has no {CONFIG_FILE} beside {weights.name}: a GPT-2 teacher is a "
                              "Hugging Face folder (config.json and model.safetensors, as save_pretrained writes "
                              "it), whose config gives the LayerNorm epsilon and activation (or pass config=)")
  kwargs = gpt2_config_to_kwargs(config)
  state_dict = read_gpt2_state_dict(weights)
  model = nnx.eval_shape(lambda: DecoderLM(**kwargs, rngs=nnx.Rngs(0)))
  import_gpt2(state_dict, model)
  abstract = [p for p, v in nnx.to_flat_state(nnx.state(model)) if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
  if abstract:
    raise RuntimeError(f"load_gpt2 left DecoderLM state without a value: {', '.join(map(str, abstract))}")
  return model
