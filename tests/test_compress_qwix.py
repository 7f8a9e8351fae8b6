"""int8 through qwix: qwix computes kdjax's int8 scheme bit for bit (scaled calibration), its
post-training int8 model predicts as kdjax's dequantized weights and exports with int8 weights, its
quantized training computes as ``fake_quantize`` and trains through kdjax's step; and where qwix
does not serve (weight-only int8 convolutions, recurrent cells, embeddings), the test says so."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import compress
from kdjax.models import apply_model, create_model, split_model

import qwix  # noqa: E402  (a dependency of kdjax: a missing one fails, never skips)


def _pure(params):
  from flax import nnx
  return nnx.to_pure_dict(params)


def _kernels(tree, prefix=()):
  """``{path: array}`` of the float arrays of 2 or more dimensions of a pure dict."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_kernels(v, (*prefix, k)))
    elif np.ndim(v) >= 2 and jnp.issubdtype(v.dtype, jnp.floating):
      out[(*prefix, k)] = v
  return out


def _assert_same_int8(q_qwix, q, w, scale, what):
  """qwix's int8 values are kdjax's ``q``, except at a rounding tie: where ``w / scale`` lies within
  float32 rounding of a half-integer, the scales' last-bit difference may round it the other way
  (by one step). Anything else (another scale, another rounding, a clip) fails."""
  diff = np.asarray(q_qwix, np.int32) - np.asarray(q, np.int32)
  assert np.abs(diff).max() <= 1, what
  ties = np.abs(np.abs(np.asarray(w / scale) % 1.0) - 0.5) < 1e-4
  assert not np.any((diff != 0) & ~ties), what
  assert np.count_nonzero(diff) <= 1e-4 * diff.size, what


def test_qwix_with_the_kdjax_calibration_gives_kdjax_int8_values_on_every_kernel_kind():
  models = [("mlp100", (28, 28, 1), {}), ("cnn16", (32, 32, 3), {}), ("bilstm", (16,), {"vocab_size": 50})]
  kernels = {}
  for name, shape, opts in models:  # Linear, Conv (HWIO), the LSTM cell's Linear layers, an embedding
    _, params, _ = split_model(create_model(name, num_classes=10, input_shape=shape, seed=0, **opts))
    kernels.update({(name, *k): v for k, v in _kernels(_pure(params)).items()})
  kernels[("zero channel",)] = jax.random.normal(jax.random.key(0), (6, 4)).at[:, 2].set(0.0)
  assert any("embedding" in k for k in kernels) and any(v.ndim == 4 for v in kernels.values())
  calibration = compress.QWIX_CALIBRATION["kdjax"]

  @jax.jit
  def both(w):  # kdjax's int8, qwix's with kdjax's calibration, qwix's with its own: one compile per shape
    out = (w.ndim - 1,)  # one scale per output channel
    ours = qwix.quantize(w, jnp.int8, channelwise_axes=out, calibration_method=calibration)
    own = qwix.quantize(w, jnp.int8, channelwise_axes=out)
    return compress.quantize(w), (ours.qvalue, ours.scale.reshape(-1), qwix.dequantize(ours)), (
        own.qvalue, own.scale.reshape(-1), qwix.dequantize(own))

  lowest = []
  for path, w in kernels.items():
    (q, scale), (q_qwix, s_qwix, deq), (q_own, s_own, deq_own) = jax.tree.map(np.asarray, both(w))
    w, half = np.asarray(w), 1e-6 * np.abs(w).max()
    _assert_same_int8(q_qwix, q, w, scale, path)  # the same int8 values (up to a tie's rounding)
    np.testing.assert_allclose(s_qwix, scale, rtol=5e-7, err_msg=str(path))  # float32 roundings apart
    assert np.all(np.abs(deq - w) <= scale / 2 + half), path  # within half a step
    assert q_qwix.min() >= -127 and np.abs(q_qwix).max() == 127, path  # the largest weight maps to +-127
    # qwix's own absmax divides by 127.5 and uses -128 too: another int8 model, also within half a step
    np.testing.assert_allclose(s_own, np.where(scale == 1.0, 1.0, scale * 127 / 127.5), rtol=1e-6, err_msg=str(path))
    assert np.all(np.abs(deq_own - w) <= s_own / 2 + half), path
    lowest.append(int(q_own.min()))
  assert min(lowest) == -128
  np.testing.assert_array_equal(compress.quantize(kernels[("zero channel",)])[0][:, 2], 0)


def test_qwix_int8_model_stores_kdjax_weights_predicts_as_them_and_exports_int8():
  graphdef, params, rest = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  qgraphdef, qparams, qrest = compress.qwix_quantize(graphdef, params, rest, (28, 28, 1))
  stored, ours = compress.qwix_int8_weights(qparams), compress.quantize_params(_pure(params))
  pure = _flat(_pure(params))
  for path, x in _flat(stored).items():
    if path[-1] == "scale":
      np.testing.assert_allclose(x, _flat(ours)[path], rtol=2e-7)
    elif path[-1] == "q":
      assert x.dtype == jnp.int8
      _assert_same_int8(x, _flat(ours)[path], pure[path[:-1]], _flat(ours)[(*path[:-1], "scale")], path)
    else:
      np.testing.assert_array_equal(x, _flat(ours)[path])
  assert compress.size_bytes(qparams) == compress.size_bytes(stored) == compress.size_bytes(ours)
  x = jax.random.uniform(jax.random.key(1), (32, 28, 28, 1))
  got = jax.jit(lambda p, x: apply_model(qgraphdef, p, qrest, x, train=False)[0])(qparams, x)
  want = apply_model(graphdef, _merge(params, compress.dequantize_params(ours)), rest, x, train=False)[0]
  np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.abs(want).max()))
  assert float(jnp.abs(got - apply_model(graphdef, params, rest, x, train=False)[0]).max()) > 1e-4  # it is int8
  blob = compress.export_model(qgraphdef, qparams, qrest, (28, 28, 1))  # the file keeps the int8 weights
  assert len(blob) < 0.3 * len(compress.export_model(graphdef, params, rest, (28, 28, 1)))
  np.testing.assert_allclose(compress.load_exported(blob)(x), want, atol=1e-4 * float(jnp.abs(want).max()))
  with pytest.raises(ValueError, match="unknown int8 scheme 'int4'"):
    compress.qwix_quantize(graphdef, params, rest, (28, 28, 1), scheme="int4")
  with pytest.raises(ValueError, match="qwix_quantize needs the model's input shape"):
    compress.qwix_quantize(graphdef, params, rest, None)


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, (*prefix, k)))
    else:
      out[(*prefix, k)] = v
  return out


def _merge(params, pure):
  """``params`` (an nnx.State) with the values of the pure dict ``pure``."""
  from flax import nnx
  params = jax.tree.map(lambda a: a, params)
  nnx.replace_by_pure_dict(params, pure)
  return params


def test_where_qwix_does_not_quantize_weights_kdjax_does():
  # A CNN: qwix quantizes the Linear layers; the convolutions keep float32 kernels, because qwix's
  # post-training quantization takes a convolution's weights to int8 only with its activations.
  shape = (32, 32, 3)
  graphdef, params, rest = split_model(create_model("cnn16", num_classes=10, input_shape=shape, seed=0))
  _, qparams, qrest = compress.qwix_quantize(graphdef, params, rest, shape)
  stored, pure = compress.qwix_int8_weights(qparams), _pure(params)
  for layer in ("conv1", "conv2"):
    np.testing.assert_array_equal(stored[layer]["kernel"], pure[layer]["kernel"])
  for layer in ("fc", "head"):
    q, scale = compress.quantize(pure[layer]["kernel"])
    _assert_same_int8(stored[layer]["kernel"]["q"], q, pure[layer]["kernel"], scale, layer)
  conv_rule = [qwix.QtRule(weight_qtype=jnp.int8, op_names=("conv_general_dilated",))]
  model = create_model("cnn16", num_classes=10, input_shape=shape, seed=0)
  with pytest.raises(ValueError, match="conv_general_dilated requires same act_qtype and weight_qtype"):
    qwix.quantize_model(model, qwix.PtqProvider(conv_rule), jnp.zeros((1, *shape)), train=False)
  # The recurrent cells run inside nnx.scan, where qwix cannot swap in int8 weights: an error naming why.
  graphdef, params, rest = split_model(create_model("bilstm", num_classes=10, input_shape=(16,), seed=0,
                                                    vocab_size=50))
  with pytest.raises(ValueError, match=r"inside nnx.scan, e.g. recurrent cells\); kdjax.compress.quantize_params"):
    compress.qwix_quantize(graphdef, params, rest, (16,))


def _fake_quant_only(params, keep):
  """kdjax's fake quantization of every kernel whose path does not contain ``keep``."""
  pure = _pure(params)
  rounded = compress.fake_quantize(pure)
  return _merge(params, jax.tree_util.tree_map_with_path(
      lambda p, r, w: w if keep in jax.tree_util.keystr(p) else r, rounded, pure))


def test_qwix_quantized_training_computes_as_fake_quantize_and_its_gradients_pass_straight_through():
  shape = (28, 28, 1)
  model = create_model("mlp100", num_classes=10, input_shape=shape, seed=0)
  graphdef, params, rest = split_model(model)
  qgraphdef, qparams, _ = split_model(compress.qwix_fake_quant_model(model, shape))
  jax.tree.map(np.testing.assert_array_equal, qparams, params)  # the float parameters, untouched
  x = jax.random.uniform(jax.random.key(1), (16, *shape))
  cot = jax.random.normal(jax.random.key(2), (16, 10))

  def loss(p, g, transform=lambda p: p):
    return jnp.sum(cot * apply_model(g, transform(p), rest, x, train=True)[0])

  step = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  (got, g_qwix), (want, g_kdjax) = step(params, qgraphdef), jax.value_and_grad(loss)(params, graphdef,
                                                                                      compress.fake_quantize)
  np.testing.assert_allclose(got, want, rtol=1e-5)  # the forward pass computes with the int8 weights
  assert abs(float(got) - float(loss(params, graphdef))) > 1e-4
  # The last layer's weights get exactly fake_quantize's straight-through gradient (x^T g, the
  # rounding's derivative taken as 1); earlier layers get it through the head's float weights in
  # qwix, its int8 weights in kdjax: close, not equal.
  np.testing.assert_allclose(g_qwix["head"]["kernel"], g_kdjax["head"]["kernel"], rtol=1e-5, atol=1e-6)
  rel = float(jnp.abs(g_qwix["hidden"][0]["kernel"] - g_kdjax["hidden"][0]["kernel"]).max()
              / jnp.abs(g_kdjax["hidden"][0]["kernel"]).max())
  assert 1e-5 < rel < 0.05
  # Under vmap (a cohort of students), each student computes with its own int8 weights.
  both = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
  logits = jax.jit(jax.vmap(lambda p: apply_model(qgraphdef, p, rest, x, train=False)[0]))(both)
  twice = apply_model(graphdef, compress.fake_quantize(jax.tree.map(lambda a: 2 * a, params)), rest, x,
                      train=False)[0]
  np.testing.assert_allclose(logits[1], twice, atol=1e-5 * float(jnp.abs(twice).max()))
  # qwix tells a weight from an activation by tracing it back to the layer's parameter, or else by
  # its shape: an activation shaped like its layer's kernel (batch = in = out features) is taken for
  # a weight, and qwix refuses the matmul.
  with pytest.raises(AssertionError, match="lhs and rhs cannot be both weights"):
    jax.eval_shape(lambda p: apply_model(qgraphdef, p, rest, jnp.zeros((100, *shape)), train=False), params)


def test_qwix_quantized_training_rounds_the_recurrent_cells_but_not_the_embedding():
  shape = (16,)
  model = create_model("bilstm", num_classes=10, input_shape=shape, seed=0, vocab_size=50)
  graphdef, params, rest = split_model(model)
  qgraphdef, _, _ = split_model(compress.qwix_fake_quant_model(model, shape))
  x = jax.random.randint(jax.random.key(1), (4, *shape), 1, 50)
  got = apply_model(qgraphdef, params, rest, x, train=False)[0]
  all_but_embedding = apply_model(graphdef, _fake_quant_only(params, "embedding"), rest, x, train=False)[0]
  every_kernel = apply_model(graphdef, compress.fake_quantize(params), rest, x, train=False)[0]
  np.testing.assert_allclose(got, all_but_embedding, atol=1e-6)
  assert float(jnp.abs(got - every_kernel).max()) > 1e-5


def test_a_qwix_quantized_model_trains_through_kdjax_and_reports_its_int8_accuracy(small_mnist, monkeypatch):
  from kdjax.config import TrainConfig
  from kdjax.models import registry
  from kdjax.train import evaluate, make_eval_step, train_student
  base = registry.get_model_spec("mlp100")

  def build(input_shape, num_classes, *, rngs):
    return compress.qwix_fake_quant_model(base.build(input_shape, num_classes, rngs=rngs), input_shape)

  monkeypatch.setitem(registry._REGISTRY, "mlp100_qwix", dataclasses.replace(base, name="mlp100_qwix", build=build))
  data = dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:600],
                             train_labels=small_mnist.train_labels[:600])
  # batch size 50: at 100, mlp100's hidden activations have its 100 x 100 kernel's shape (see above)
  cfg = TrainConfig(model="mlp100_qwix", epochs=1, batch_size=50, learning_rate=0.1, prune_sparsity=0.5)
  r = train_student(data, cfg, progress=False)
  assert compress.sparsity_of(r.params) == pytest.approx(0.5, abs=1e-3)  # kdjax's pruning, through qwix's model
  qgraphdef, qparams, qrest = compress.qwix_quantize(r.graphdef, r.params, r.rest, data.image_shape)
  int8 = evaluate(make_eval_step(qgraphdef), qparams, qrest, data.test_images, data.test_labels)
  assert r.test["errors"] == int8["errors"]  # what the run reports is the int8 model's accuracy


def test_the_experiments_agreement_pairs_only_the_kernels_both_quantize():
  """experiments/compress.py compares the two int8 models on a convolutional student too: qwix leaves the
  convolutions float, so only the dense kernels are paired (it indexed a float kernel as {"q", "scale"})."""
  import importlib.util
  from pathlib import Path

  from kdjax.compress import qwix_quantize
  from kdjax.models import create_model, split_model

  path = Path(__file__).resolve().parent.parent / "experiments" / "compress.py"
  spec = importlib.util.spec_from_file_location("compress_experiment", path)
  experiment = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(experiment)
  graphdef, params, rest = split_model(create_model("cnn16", num_classes=10, input_shape=(32, 32, 3)))
  qgraphdef, qparams, qrest = qwix_quantize(graphdef, params, rest, (32, 32, 3))
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  found = experiment._int8_agreement(params, qparams, graphdef, qgraphdef, rest, qrest, images)
  dense = sum(x.size for x in jax.tree.leaves(params) if x.ndim == 2)  # the dense kernels (the conv's are 4-D)
  assert found["int8_values"] == dense
  assert found["max_int8_difference"] <= 1 and found["max_scale_relative_difference"] < 1e-6
  # kdjax's model also rounds the convolution to int8, qwix's keeps it float: the logits differ by that alone
  assert found["max_logit"] > 0 and found["max_logit_difference"] < 2e-2 * found["max_logit"]
