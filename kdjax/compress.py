"""Compression for deployment: int8 weight quantization (post-training, or trained for with
:func:`fake_quantize`), magnitude pruning during training (:func:`pruning`) with sparse storage
(:func:`pack_sparse`), and export of a trained model as serialized StableHLO (``jax.export``).

Quantization is symmetric and per output channel: each kernel ``W[..., c]`` is stored as int8
``q = round(W / s_c)`` in ``[-127, 127]`` with one float32 scale ``s_c = max |W[..., c]| / 127``,
so ``|W − q·s_c| <= s_c / 2``. Kernels (``kernel``: Linear, Conv, the recurrent cells' Linear
layers) and embeddings are quantized; biases and normalization parameters (1-D) stay float32.

Qwix (Google's JAX quantization library) computes this scheme with its ``absmax`` calibration
scaled by 127.5/127 (:data:`QWIX_CALIBRATION`; qwix's own ``absmax`` divides by 127.5 and uses -128
too): the same int8 values, except where ``W / s_c`` is a rounding tie that the scales' last-bit
difference tips the other way (by one step: 1 of cnn16's 524,288 fc weights), and scales within
float32 rounding (tested). kdjax uses qwix where it serves and its own three lines where it does not:

- :func:`qwix_quantize` (qwix's ``PtqProvider``): an int8 *model* whose Linear and einsum layers
  hold qwix ``QArray`` weights (int8 values, float32 scales) and compute with them, so it also
  exports with int8 weights (:func:`export_model`: about 4x smaller than the float model's file).
  :func:`qwix_int8_weights` gives its weights in :func:`quantize_params`'s storage form.
- :func:`qwix_fake_quant_model` (qwix's ``QtProvider``): a model that trains as its int8 version
  computes, for quantization-aware training through kdjax's train step (as a registered model).
- The hand-written :func:`quantize`, :func:`quantize_params` and :func:`fake_quantize` stay, because
  qwix does not serve there: (1) the train step's ``fake_quant`` and the evaluation step import this
  module, and qwix is imported only where used (the accelerator image has no qwix); (2) qwix's
  post-training quantization of a convolution needs int8 activations too (weight-only int8 Conv is
  refused), and it fails inside ``nnx.scan`` (the recurrent cells); (3) an embedding lookup is no
  matmul, so qwix never quantizes it; (4) both trainings take the gradient straight through the
  rounding, but qwix's passes it back to earlier layers through a Linear layer's float weights,
  where :func:`fake_quantize` passes it through the int8 ones; (5) qwix tells a weight from an
  activation by shape where it cannot trace it to the layer's parameter, so its quantized training
  fails when a batch has its layer's kernel's shape (batch size = in = out features). qwix is
  imported only inside the functions that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.models.functional import apply_model, input_dtype, split_model

QUANTIZABLE = ("kernel", "embedding")  # the names of the weight matrices and filters that take int8


def quantize(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(q_int8, scale)`` of a kernel, one scale per output channel (the last axis)."""
  w = jnp.asarray(w, jnp.float32)
  if w.ndim < 2:
    raise ValueError(f"per-channel quantization takes a kernel of 2 or more dimensions, got shape {w.shape}")
  amax = jnp.max(jnp.abs(w), axis=tuple(range(w.ndim - 1)))
  scale = jnp.where(amax > 0, amax / 127.0, 1.0)  # an all-zero channel keeps scale 1 (q = 0)
  q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
  return q, scale.astype(jnp.float32)


def dequantize(q: jax.Array, scale: jax.Array) -> jax.Array:
  return q.astype(jnp.float32) * scale


def _names(path) -> list[str]:
  """The keys of a parameter's path (an NNX ``Param``'s ``.value`` skipped)."""
  return [n for n in (str(getattr(k, "key", getattr(k, "name", k))) for k in path) if n != "value"] or [""]


def _is_matrix(leaf) -> bool:
  """A float parameter of 2 or more dimensions: a weight matrix or filter of some layer."""
  return jnp.ndim(leaf) >= 2 and jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)


def quantize_params(params: Any) -> Any:
  """The parameter pytree with every kernel and embedding replaced by ``{"q": int8, "scale": f32}``.
  A float parameter of 2 or more dimensions under any other name belongs to a layer this
  quantizer does not know: an error naming its path."""
  def one(path, w):
    q, scale = quantize(w)
    return {"q": q, "scale": scale}

  return _map_weights(one, params)


def _map_weights(fn, params: Any) -> Any:
  """``fn(path, w)`` applied to every kernel and embedding; a float parameter of 2 or more dimensions
  under another name is an error naming its path."""
  def one(path, w):
    if not _is_matrix(w):
      return w
    if _names(path)[-1] not in QUANTIZABLE:
      raise ValueError(f"cannot quantize parameter {jax.tree_util.keystr(path)} of shape {jnp.shape(w)}: only "
                       f"{' and '.join(QUANTIZABLE)} weights (Linear, Conv, Embed layers) are supported")
    return fn(path, w)

  return jax.tree_util.tree_map_with_path(one, params)


def fake_quantize(params: Any) -> Any:
  """Quantization-aware training's view of the weights: every kernel and embedding rounded to its
  int8 value (exactly ``dequantize_params(quantize_params(params))`` in the forward pass), with a
  straight-through gradient (the rounding's derivative taken as 1, Bengio et al. 2013; the scales
  get none). A model trained on these is the model :func:`quantize_params` stores."""
  def one(path, w):
    w_q = dequantize(*quantize(w)).astype(w.dtype)
    return w + jax.lax.stop_gradient(w_q - w)

  return _map_weights(one, params)


def _is_quantized(x) -> bool:
  return isinstance(x, dict) and set(x) == {"q", "scale"}


def dequantize_params(qparams: Any) -> Any:
  """Float32 parameters back from :func:`quantize_params`, for running the model."""
  return jax.tree.map(lambda x: dequantize(x["q"], x["scale"]) if _is_quantized(x) else x, qparams,
                      is_leaf=_is_quantized)


def size_bytes(tree: Any) -> int:
  """Bytes the arrays of a pytree take (int8 weights count 1 byte each)."""
  return int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(tree)))


def _check_input_shape(input_shape: Sequence[int] | None, what: str = "export") -> tuple[int, ...]:
  if input_shape is None or not len(input_shape) or any(d is None or int(d) < 1 for d in input_shape):
    raise ValueError(f"{what} needs the model's input shape (one example, e.g. (28, 28, 1)), got {input_shape!r}")
  return tuple(int(d) for d in input_shape)


def export_model(graphdef, params, rest, input_shape: Sequence[int] | None) -> bytes:
  """The model's inference function ``x -> logits`` for inputs of ``input_shape`` (one example's
  shape; any batch size) with its weights, as serialized StableHLO (``jax.export``): it runs with
  :func:`load_exported` and JAX alone, without kdjax or the model's code."""
  input_shape = _check_input_shape(input_shape)

  def logits(x):
    return apply_model(graphdef, params, rest, x, train=False)[0]

  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, *input_shape), input_dtype(input_shape))
  return bytes(jax.export.export(jax.jit(logits))(spec).serialize())


def load_exported(blob: bytes):
  """``x -> logits`` from :func:`export_model`'s bytes."""
  exported = jax.export.deserialize(bytearray(blob))
  return exported.call


# --- int8 through qwix ---------------------------------------------------------------------------

# qwix's ``absmax`` calibration divides the largest magnitude by 127.5 (int8 values in [-128, 127]);
# scaled by 127.5/127 it divides by 127, kdjax's scheme ([-127, 127], TFLite's int8 weight range).
QWIX_CALIBRATION = {"kdjax": f"absmax,{127.5 / 127!r}", "qwix": "absmax"}


def _qwix_rules(scheme: str, op_names: tuple[str, ...]):
  import qwix
  try:
    calibration = QWIX_CALIBRATION[scheme]
  except (KeyError, TypeError):
    raise ValueError(f"unknown int8 scheme {scheme!r}; use one of: {', '.join(QWIX_CALIBRATION)}") from None
  return qwix, [qwix.QtRule(module_path=".*", op_names=op_names, weight_qtype=jnp.int8,
                            weight_calibration_method=calibration)]


def _example_input(input_shape: tuple[int, ...]) -> jax.Array:
  """One input of ``input_shape`` for qwix's first call (its values do not matter): zero pixels, or
  token id 1."""
  dtype = input_dtype(input_shape)
  return (jnp.ones if jnp.issubdtype(dtype, jnp.integer) else jnp.zeros)((1, *input_shape), dtype)


def qwix_quantize(graphdef, params, rest, input_shape: Sequence[int] | None, *, scheme: str = "kdjax"):
  """Post-training int8 weights through qwix (``qwix.PtqProvider``): ``(graphdef, qparams, rest)`` of
  a model whose Linear and einsum layers (MLPs, classifier heads, attention projections) hold each
  kernel as a qwix ``QArray`` (int8 values, a float32 scale per output channel) and compute with it.
  It runs like any kdjax model (``apply_model``, ``make_eval_step``, :func:`export_model`, whose file
  then keeps the int8 weights). ``scheme="kdjax"`` is :func:`quantize`'s scheme (the same int8
  values); ``"qwix"`` is qwix's own (scale ``max|W|/127.5``, values in [-128, 127]).

  Convolutions and embeddings keep float32 kernels (qwix quantizes a convolution's weights only with
  its activations; a lookup is no matmul); recurrent cells are an error (qwix cannot swap weights
  inside ``nnx.scan``). :func:`quantize_params` quantizes all of these. The model may be one of
  :func:`qwix_fake_quant_model` (trained for int8): qwix quantizes the float model under it."""
  input_shape = _check_input_shape(input_shape, "qwix_quantize")
  qwix, rules = _qwix_rules(scheme, ("dot_general", "einsum"))
  model = nnx.merge(graphdef, params, rest, copy=True)
  try:
    quantized = qwix.quantize_model(model, qwix.PtqProvider(rules), _example_input(input_shape), train=False)
  except (TypeError, ValueError) as e:
    raise ValueError(f"qwix could not quantize this model ({type(model).__name__}): {e}\n(qwix's int8 weights "
                     "cannot replace weights inside nnx.scan, e.g. recurrent cells); kdjax.compress.quantize_params "
                     "quantizes every kernel") from e
  return split_model(quantized)


def _is_qwix_weight(x) -> bool:
  return isinstance(x, dict) and set(x) == {"array"} and isinstance(x["array"], dict) and {
      "qvalue", "scale"} <= set(x["array"])


def qwix_int8_weights(qparams: Any) -> Any:
  """:func:`qwix_quantize`'s parameters in :func:`quantize_params`'s storage form (a plain dict):
  each qwix weight as ``{"q": int8, "scale": float32}`` (the scale without its leading size-1 axes,
  so it broadcasts against ``q``); other parameters as they are. :func:`dequantize_params`,
  :func:`pack_sparse` and :func:`size_bytes` take it."""
  tree = nnx.to_pure_dict(qparams) if isinstance(qparams, nnx.State) else qparams

  def one(x):
    if not _is_qwix_weight(x):
      return x
    array = x["array"]
    if array.get("zero_point") is not None:
      raise ValueError("qwix weight with a zero point (asymmetric calibration): kdjax stores symmetric int8 only")
    scale = jnp.asarray(array["scale"])
    while scale.ndim > 1 and scale.shape[0] == 1:
      scale = scale[0]
    return {"q": array["qvalue"], "scale": scale}

  return jax.tree.map(one, tree, is_leaf=_is_qwix_weight)


def qwix_fake_quant_model(model: nnx.Module, input_shape: Sequence[int] | None, *, scheme: str = "kdjax"):
  """``model`` training as its int8 version computes, through qwix's quantized training
  (``qwix.QtProvider``): every Linear, einsum and Conv kernel is rounded to its int8 value in the
  forward pass (:func:`fake_quantize`'s values with ``scheme="kdjax"``); embeddings are not. The
  parameters are the float model's, so kdjax's train step, optimizer and pruning take it as they
  are (build it in a registered model's ``build``). Its gradients are straight-through, as
  :func:`fake_quantize`'s (the last layer's are the same), but through a Linear layer the gradient
  goes back to earlier layers by its float weights (``fake_quantize``, and qwix through a Conv: by
  its int8 weights). qwix tells a weight from an activation by tracing it to the layer's parameter,
  or else by shape: a batch whose activation has a layer's kernel's shape (batch size = in = out
  features) fails with "lhs and rhs cannot be both weights"."""
  input_shape = _check_input_shape(input_shape, "qwix_fake_quant_model")
  qwix, rules = _qwix_rules(scheme, ("dot_general", "einsum", "conv_general_dilated"))
  return qwix.quantize_model(model, qwix.QtProvider(rules), _example_input(input_shape), train=False)


# --- Sparse storage -------------------------------------------------------------------------------

def _is_packed(x) -> bool:
  return isinstance(x, dict) and set(x) == {"bits", "values", "shape"}


def pack_sparse(tree: Any) -> Any:
  """A pruned model for storage: every array of 2 or more dimensions (float kernels, or the int8
  ``q`` of :func:`quantize_params`) as ``{"bits": its nonzero pattern, one bit per weight,
  "values": its nonzeros in row-major order, "shape"}``; other leaves as they are. It takes
  ``n/8 + nnz·itemsize`` bytes instead of ``n·itemsize``; :func:`unpack_sparse` inverts it exactly."""
  def one(a):
    a = np.asarray(a)
    if a.ndim < 2:
      return a
    nonzero = a != 0
    return {"bits": np.packbits(nonzero.ravel()), "values": a[nonzero], "shape": np.asarray(a.shape, np.int32)}

  return jax.tree.map(one, tree)


def unpack_sparse(packed: Any) -> Any:
  """The dense pytree back from :func:`pack_sparse`."""
  def one(x):
    if not _is_packed(x):
      return x
    shape = tuple(int(d) for d in x["shape"])
    nonzero = np.unpackbits(x["bits"], count=int(np.prod(shape))).astype(bool)
    dense = np.zeros(nonzero.size, x["values"].dtype)
    dense[nonzero] = x["values"]
    return dense.reshape(shape)

  return jax.tree.map(one, packed, is_leaf=_is_packed)


# --- Magnitude pruning ----------------------------------------------------------------------------

def _prunable(path, leaf) -> bool:
  """Kernels and embeddings of the model (not a distillation method's own parts: a path under a
  ``"method"`` key), like the quantizer's."""
  names = _names(path)
  return _is_matrix(leaf) and names[-1] in QUANTIZABLE and names[0] != "method"


def check_sparsity(sparsity: float) -> None:
  if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
    raise ValueError(f"sparsity must lie in [0, 1) (the fraction of weights set to zero), got {sparsity!r}")


def magnitude_masks(params: Any, sparsity, *, scope: str = "global") -> Any:
  """Boolean masks (``True`` = kept) that zero the fraction ``sparsity`` of smallest-magnitude weights
  of every kernel and embedding: over all of them together (``scope="global"``) or within each
  (``"layer"``); exactly ``floor(sparsity·n)`` weights, ties broken by position. Other parameters
  keep everything. ``sparsity`` may be traced (a schedule inside a jitted step)."""
  if scope not in ("global", "layer"):
    raise ValueError(f"unknown pruning scope {scope!r}; use 'global' or 'layer'")
  if not isinstance(sparsity, jax.Array):
    check_sparsity(sparsity)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  prunable = [_prunable(p, w) for p, w in leaves]

  def keep(magnitudes):  # True for all but the floor(sparsity * n) smallest, exactly
    # The k-th smallest magnitude by bisection on its bits (a non-negative float's bits order like
    # the float): 32 counting passes, far cheaper than a sort of n weights on a CPU. Ties at the
    # threshold are dropped in position order, as a stable sort would.
    flat = magnitudes.ravel().astype(jnp.float32)
    k = jnp.floor(sparsity * flat.size).astype(jnp.int32)
    bits = jax.lax.bitcast_convert_type(flat, jnp.int32)

    def bisect(_, bounds):  # the smallest b with count(bits <= b) >= k lies in [lo, hi]
      lo, hi = bounds
      mid = lo + (hi - lo) // 2
      enough = jnp.sum(bits <= mid) >= k
      return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    threshold, _ = jax.lax.fori_loop(0, 32, bisect, (jnp.int32(0), jnp.int32(np.iinfo(np.int32).max)))
    below, tie = bits < threshold, bits == threshold
    tie_rank = jnp.cumsum(tie) - 1
    drop = below | (tie & (tie_rank < k - jnp.sum(below)))
    return (~drop).reshape(magnitudes.shape)

  masks = [jnp.ones(jnp.shape(w), bool) for _, w in leaves]
  chosen = [i for i, p in enumerate(prunable) if p]
  if scope == "layer":
    for i in chosen:
      masks[i] = keep(jnp.abs(leaves[i][1]))
  elif chosen:
    flat = keep(jnp.concatenate([jnp.abs(leaves[i][1]).ravel() for i in chosen]))
    start = 0
    for i in chosen:
      size = leaves[i][1].size
      masks[i] = flat[start:start + size].reshape(leaves[i][1].shape)
      start += size
  return jax.tree_util.tree_unflatten(treedef, masks)


def sparsity_of(params: Any) -> float:
  """The fraction of zeros among the kernels and embeddings."""
  leaves = [w for p, w in jax.tree_util.tree_flatten_with_path(params)[0] if _prunable(p, w)]
  total = sum(w.size for w in leaves)
  return float(sum(int(jnp.sum(w == 0)) for w in leaves)) / max(total, 1)


class PruningState(NamedTuple):
  inner: Any
  masks: Any
  count: jax.Array


def pruning(tx, *, final_sparsity: float, start_step: int = 0, end_step: int = 0, every: int = 1,
            scope: str = "global"):
  """``tx`` with magnitude pruning: the optimizer state keeps a mask per weight, pruned weights get
  no gradient and an update that sets them to exactly zero, so they stay zero through any optimizer
  (momentum, weight decay). The sparsity follows Zhu & Gupta (2017)'s schedule
  ``s_t = s_f·(1 − (1 − (t − t0)/(t1 − t0))³)`` from ``start_step`` t0 to ``end_step`` t1, with the
  masks recomputed from the weights' magnitudes every ``every`` steps; ``end_step == start_step``
  is one-shot pruning at ``start_step``."""
  import optax
  check_sparsity(final_sparsity)
  if end_step < start_step or start_step < 0 or every < 1:
    raise ValueError(f"pruning needs 0 <= start_step <= end_step and every >= 1, got start_step {start_step}, "
                     f"end_step {end_step}, every {every}")

  def target(count):
    if end_step == start_step:
      return jnp.where(count >= start_step, final_sparsity, 0.0)
    frac = jnp.clip((count - start_step) / (end_step - start_step), 0.0, 1.0)
    return jnp.where(count >= start_step, final_sparsity * (1.0 - (1.0 - frac) ** 3), 0.0)

  def init(params):
    return PruningState(tx.init(params), jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params),
                        jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("pruning needs the parameters in update(updates, state, params)")
    count = state.count
    due = (count >= start_step) & (count <= end_step) & ((count - start_step) % every == 0)
    due = due | ((count == end_step) & (count >= start_step))
    masks = jax.lax.cond(due, lambda: magnitude_masks(jax.tree.map(lambda w, m: w * m, params, state.masks),
                                                       target(count), scope=scope),
                         lambda: state.masks)
    updates = jax.tree.map(lambda u, m: jnp.where(m, u, 0), updates, masks)
    inner_updates, inner = tx.update(updates, state.inner, params)
    # A pruned weight moves to exactly zero and stays there.
    final = jax.tree.map(lambda u, w, m: jnp.where(m, u, -w), inner_updates, params, masks)
    return final, PruningState(inner, masks, count + 1)

  return optax.GradientTransformation(init, update)


# --- TFLite (optional: TensorFlow) ----------------------------------------------------------------
# jax2tf wraps the inference function (weights closed over, so they become constants) as a TensorFlow
# function holding one XlaCallModule op with its StableHLO; TensorFlow's TFLite converter lowers that
# to TFLite builtin ops (FULLY_CONNECTED, CONV_2D, ...), no select-TF ops, so the flatbuffer runs on
# the plain TFLite / LiteRT interpreter. TensorFlow is imported only inside these functions.

TFLITE_HINT = "pip install 'kdjax[tflite]'  (or: pip install 'tensorflow>=2.20')"


def _import_tf():
  """``(tf, jax2tf)``; jax2tf imports TensorFlow itself, so it is only imported here too."""
  try:
    import tensorflow as tf
    from jax.experimental import jax2tf
  except ImportError as e:
    raise ImportError(f"TFLite export needs TensorFlow, which is not installed: {TFLITE_HINT}") from e
  return tf, jax2tf


def export_tflite(graphdef, params, rest, input_shape: Sequence[int] | None, *, batch_size: int | None = None,
                  quantize_weights: bool = False) -> bytes:
  """The model's inference function ``x -> logits`` for inputs of ``input_shape`` (one example's
  shape) with its weights, as a TFLite flatbuffer: run it with :func:`load_tflite`.

  ``batch_size``: None for any batch size (the input's batch dimension is dynamic; the interpreter
  is resized per call), or a fixed batch size (a static graph, without the shape arithmetic a
  dynamic batch needs). ``quantize_weights``: TFLite's dynamic-range quantization (kernels stored
  as int8 with per-channel scales, activations quantized on the fly in the matmuls and
  convolutions): about 4x smaller, logits no longer exactly those of the float model.
  """
  input_shape = _check_input_shape(input_shape)
  if batch_size is not None and not (isinstance(batch_size, int) and not isinstance(batch_size, bool)
                                     and batch_size >= 1):
    raise ValueError(f"batch_size must be None (any batch size) or a positive int, got {batch_size!r}")
  tf, jax2tf = _import_tf()

  def logits(x):
    return apply_model(graphdef, params, rest, x, train=False)[0]

  dtype = tf.as_dtype(np.dtype(input_dtype(input_shape)))
  poly = None if batch_size is not None else ["(b, ...)"]
  # Lowered for the CPU whatever JAX's default backend is: no GPU-only custom calls in the StableHLO.
  fn = jax2tf.convert(logits, polymorphic_shapes=poly, with_gradient=False,
                      native_serialization_platforms=("cpu",))
  module = tf.Module()
  module.logits = tf.function(fn, input_signature=[tf.TensorSpec((batch_size, *input_shape), dtype, name="x")],
                              autograph=False)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([module.logits.get_concrete_function()], module)
  if quantize_weights:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return bytes(converter.convert())


def _interpreter(blob: bytes):
  """LiteRT's interpreter (``ai-edge-litert``) where it is installed, else TensorFlow's (deprecated
  since TF 2.20 in its favour)."""
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    tf, _ = _import_tf()
    Interpreter = tf.lite.Interpreter
  return Interpreter(model_content=bytes(blob))


def load_tflite(blob: bytes) -> Callable[[np.ndarray], np.ndarray]:
  """``x -> logits`` (numpy arrays) from :func:`export_tflite`'s bytes, run by the TFLite
  interpreter. A model exported with a dynamic batch takes any batch size (the interpreter's input
  is resized when the batch size changes); one with a fixed batch size takes that size only. The
  callable holds one interpreter: don't call it from two threads at once."""
  interpreter = _interpreter(blob)
  (inp,) = interpreter.get_input_details()
  (out,) = interpreter.get_output_details()
  signature = tuple(int(d) for d in inp["shape_signature"])
  state = {"shape": None}

  def logits(x) -> np.ndarray:
    x = np.asarray(x, dtype=inp["dtype"])
    if x.ndim != len(signature) or any(s not in (-1, d) for s, d in zip(signature, x.shape)):
      want = tuple("any" if s == -1 else s for s in signature)
      raise ValueError(f"this TFLite model takes inputs of shape {want}, got {x.shape}")
    if state["shape"] != x.shape:
      interpreter.resize_tensor_input(inp["index"], list(x.shape))
      interpreter.allocate_tensors()
      state["shape"] = x.shape
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"]).copy()

  return logits
