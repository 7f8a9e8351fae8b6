"""Compression: int8 per-channel quantization within half a step, sizes, unsupported layers named,
and an exported model reloading to the same predictions."""

import builtins

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.compress import (dequantize, dequantize_params, export_model, load_exported, quantize, quantize_params,
                            size_bytes)
from kdjax import compress
from kdjax.models import apply_model, create_model, split_model


def test_quantize_dequantize_error_is_at_most_half_a_step_per_channel():
  w = jax.random.normal(jax.random.key(0), (3, 3, 4, 5)) * jnp.array([0.01, 0.1, 1.0, 10.0, 0.0])  # one zero channel
  q, scale = quantize(w)
  assert q.dtype == jnp.int8 and scale.shape == (5,) and int(jnp.abs(q).max()) == 127
  err = jnp.abs(dequantize(q, scale) - w)
  assert bool(jnp.all(err <= scale / 2 + 1e-7 * jnp.abs(w).max()))
  np.testing.assert_array_equal(q[..., 4], 0)  # the zero channel stays exactly zero
  # each channel uses its own range: the largest weight of every nonzero channel maps to +-127
  assert jnp.abs(q[..., :4]).reshape(-1, 4).max(0).tolist() == [127] * 4
  with pytest.raises(ValueError, match="kernel of 2 or more dimensions"):
    quantize(jnp.ones(4))


def test_quantized_model_is_four_times_smaller_and_predicts_almost_the_same():
  graphdef, params, rest = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  qparams = quantize_params(params)
  kernels = sum(a.size for a in jax.tree.leaves(params) if a.ndim == 2)
  assert size_bytes(params) - size_bytes(qparams) == 3 * kernels - 4 * (100 + 100 + 10)  # int8 + one f32 scale each
  x = jax.random.uniform(jax.random.key(1), (64, 28, 28, 1))
  full = apply_model(graphdef, params, rest, x, train=False)[0]
  quant = apply_model(graphdef, dequantize_params(qparams), rest, x, train=False)[0]
  assert float(jnp.abs(full - quant).max()) < 0.05 * float(jnp.abs(full).max())
  assert float(jnp.mean(jnp.argmax(full, -1) == jnp.argmax(quant, -1))) > 0.9


def test_an_unsupported_layer_is_named():
  params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "mystery": {"w": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match=r"cannot quantize parameter \['mystery'\]\['w'\] of shape \(2, 2\)"):
    quantize_params(params)


def test_exported_model_reloads_and_matches_for_any_batch_size():
  graphdef, params, rest = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  blob = export_model(graphdef, params, rest, (28, 28, 1))
  run = load_exported(blob)
  for n in (1, 5):
    x = jax.random.uniform(jax.random.key(n), (n, 28, 28, 1))
    np.testing.assert_allclose(run(x), apply_model(graphdef, params, rest, x, train=False)[0], rtol=1e-5, atol=1e-6)
  for shape in (None, (28, None, 1)):
    with pytest.raises(ValueError, match="export needs the model's input shape"):
      export_model(graphdef, params, rest, shape)


def _weights():
  k = jax.random.split(jax.random.key(3), 3)
  return {"a": {"kernel": jax.random.normal(k[0], (6, 5)), "bias": jax.random.normal(k[1], (5,))},
          "b": {"kernel": 10 * jax.random.normal(k[2], (5, 4))}}


def test_magnitude_masks_zero_exactly_the_smallest_weights_globally_or_per_layer():
  from kdjax.compress import magnitude_masks
  w = _weights()
  g = magnitude_masks(w, 0.5)
  assert bool(g["a"]["bias"].all())  # biases are not pruned
  kept = jnp.concatenate([jnp.abs(w["a"]["kernel"])[g["a"]["kernel"]], jnp.abs(w["b"]["kernel"])[g["b"]["kernel"]]])
  dropped = jnp.concatenate([jnp.abs(w["a"]["kernel"])[~g["a"]["kernel"]], jnp.abs(w["b"]["kernel"])[~g["b"]["kernel"]]])
  assert dropped.size == 25 and float(dropped.max()) <= float(kept.min())  # floor(0.5 * 50), the smallest
  assert int((~g["b"]["kernel"]).sum()) < 10  # the larger layer loses less under a global threshold
  per = magnitude_masks(w, 0.5, scope="layer")
  assert int((~per["a"]["kernel"]).sum()) == 15 and int((~per["b"]["kernel"]).sum()) == 10
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match=r"sparsity must lie in \[0, 1\)"):
      magnitude_masks(w, bad)


def test_pruned_weights_stay_zero_through_momentum_and_weight_decay_and_the_schedule_is_followed():
  import optax

  from kdjax.compress import pruning, sparsity_of
  w = _weights()
  tx = pruning(optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9)), final_sparsity=0.8,
               start_step=2, end_step=10, every=2)
  state = tx.init(w)
  target = lambda z: jax.tree.map(lambda a: jnp.ones_like(a), z)  # noqa: E731
  step = jax.jit(lambda w, s: tx.update(jax.grad(lambda v: sum(jnp.sum((a - b) ** 2) for a, b in zip(
      jax.tree.leaves(v), jax.tree.leaves(target(v)))))(w), s, w))
  seen = []
  for t in range(14):
    updates, state = step(w, state)
    w = optax.apply_updates(w, updates)
    zeros = jax.tree.map(lambda a, m: a[~m], w, state.masks)
    assert all(float(jnp.abs(z).max(initial=0.0)) == 0.0 for z in jax.tree.leaves(zeros))  # exactly zero, every step
    seen.append(sparsity_of(w))
  assert seen[0] == 0.0 and seen == sorted(seen) and seen[-1] == pytest.approx(0.8, abs=0.02)
  assert 0.0 < seen[4] < 0.8  # part way through the cubic ramp
  with pytest.raises(ValueError, match="start_step <= end_step"):
    pruning(optax.sgd(0.1), final_sparsity=0.5, start_step=5, end_step=2)


def test_masks_drop_ties_in_position_order_like_a_stable_sort():
  from kdjax.compress import magnitude_masks
  rng = np.random.default_rng(0)
  w = {"a": {"kernel": rng.integers(-3, 4, (9, 7)).astype(np.float32)},  # many ties, zeros among them
       "b": {"kernel": rng.integers(-3, 4, (7, 5)).astype(np.float32) / 4}}
  flat = np.concatenate([np.abs(w["a"]["kernel"]).ravel(), np.abs(w["b"]["kernel"]).ravel()])
  for s in (0.0, 0.1, 0.37, 0.5, 0.9, 0.99):
    expected = np.ones(flat.size, bool)
    expected[np.argsort(flat, kind="stable")[:int(np.floor(s * flat.size))]] = False
    for masks in (magnitude_masks(w, s), jax.jit(lambda s: magnitude_masks(w, s))(jnp.float32(s))):
      got = np.concatenate([np.asarray(masks["a"]["kernel"]).ravel(), np.asarray(masks["b"]["kernel"]).ravel()])
      np.testing.assert_array_equal(got, expected, err_msg=f"sparsity {s}")


def test_fake_quantization_computes_with_the_int8_weights_and_passes_gradients_straight_through():
  from kdjax.compress import fake_quantize
  _, params, _ = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  jax.tree.map(np.testing.assert_array_equal, fake_quantize(params), dequantize_params(quantize_params(params)))
  cot = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape), params)
  grads = jax.grad(lambda p: sum(jnp.sum(a * c) for a, c in zip(jax.tree.leaves(fake_quantize(p)),
                                                                 jax.tree.leaves(cot))))(params)
  jax.tree.map(lambda g, c: np.testing.assert_allclose(g, c, rtol=1e-6), grads, cot)  # the identity's gradient


def test_sparse_storage_round_trips_and_takes_a_bit_per_weight_plus_the_nonzeros():
  from kdjax.compress import magnitude_masks, pack_sparse, unpack_sparse
  _, params, _ = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  pruned = jax.tree.map(lambda w, m: w * m, params, magnitude_masks(params, 0.9))
  for tree in (pruned, quantize_params(pruned)):
    packed = pack_sparse(tree)
    jax.tree.map(np.testing.assert_array_equal, unpack_sparse(packed), jax.tree.map(np.asarray, tree))
    dense = [np.asarray(a) for a in jax.tree.leaves(tree)]
    expected = sum(-(-a.size // 8) + int((a != 0).sum()) * a.itemsize + 4 * a.ndim if a.ndim >= 2 else a.nbytes
                   for a in dense)
    assert size_bytes(packed) == expected < 0.6 * size_bytes(tree)


def test_a_run_pruned_and_trained_for_int8_reports_its_int8_accuracy_and_restores(small_mnist, tmp_path):
  import dataclasses

  from kdjax.compress import sparsity_of
  from kdjax.config import TrainConfig
  from kdjax.train import evaluate, make_eval_step, restore_trained, train_student
  data = dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:600],
                             train_labels=small_mnist.train_labels[:600])
  cfg = TrainConfig(model="mlp100", epochs=2, batch_size=100, learning_rate=0.1, fake_quant=True, prune_sparsity=0.75,
                    prune_start=1, prune_end=2, prune_every=2)  # the schedule ends with the run's last step
  r = train_student(data, cfg, progress=False, checkpoint_dir=tmp_path)
  n = sum(a.size for a in jax.tree.leaves(r.params) if a.ndim == 2)
  assert sparsity_of(r.params) == np.floor(0.75 * n) / n  # exactly the schedule's end, reached at the last step
  int8 = evaluate(make_eval_step(r.graphdef), dequantize_params(quantize_params(r.params)), r.rest,
                  data.test_images, data.test_labels)
  assert r.test["errors"] == int8["errors"]  # what the run reports is the int8 model's accuracy
  again = restore_trained(tmp_path, cfg, data)  # the masks are in the optimizer state of the checkpoint
  jax.tree.map(np.testing.assert_array_equal, again.params, r.params)
  with pytest.raises(ValueError, match=r"prune_start <= prune_end <= epochs \(2\)"):
    train_student(data, dataclasses.replace(cfg, prune_end=3), progress=False)
  with pytest.raises(ValueError, match=r"prune_sparsity: sparsity must lie in \[0, 1\)"):
    train_student(data, dataclasses.replace(cfg, prune_sparsity=1.0), progress=False)
  from kdjax.train.online import train_online
  with pytest.raises(ValueError, match="online cohorts do not prune or fake-quantize"):
    train_online(data, cfg, progress=False)


# --- TFLite export (optional extra: the round trips run where TensorFlow is installed) -------------

def _tflite_model(name, input_shape):
  return split_model(create_model(name, num_classes=10, input_shape=input_shape, seed=0))


def test_tflite_unknown_input_shape_is_an_error_before_tensorflow_is_needed():
  graphdef, params, rest = _tflite_model("mlp100", (28, 28, 1))
  for shape in (None, (), (28, None, 1), (28, 0, 1), (-1, 28, 1)):
    with pytest.raises(ValueError, match="input shape"):
      compress.export_tflite(graphdef, params, rest, shape)
  with pytest.raises(ValueError, match="batch_size"):
    compress.export_tflite(graphdef, params, rest, (28, 28, 1), batch_size=0)


def test_tflite_without_tensorflow_names_the_install(monkeypatch):
  real_import = builtins.__import__

  def no_tf(name, *args, **kwargs):
    if name == "tensorflow" or name.startswith("tensorflow.") or name == "jax.experimental.jax2tf":
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_tf)
  graphdef, params, rest = _tflite_model("mlp100", (28, 28, 1))
  with pytest.raises(ImportError, match=r"pip install 'kdjax\[tflite\]'"):
    compress.export_tflite(graphdef, params, rest, (28, 28, 1))


@pytest.mark.parametrize("name,input_shape", [("mlp100", (28, 28, 1)), ("cnn16", (32, 32, 3))])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_tflite_round_trip_matches_apply_model(name, input_shape, batch_size):
  pytest.importorskip("tensorflow")
  graphdef, params, rest = _tflite_model(name, input_shape)
  x = np.random.default_rng(0).random((4, *input_shape), dtype=np.float32)
  want = np.asarray(apply_model(graphdef, params, rest, x, train=False)[0])

  run = compress.load_tflite(compress.export_tflite(graphdef, params, rest, input_shape,
                                                              batch_size=batch_size))
  got = run(x)
  assert got.shape == want.shape and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  if batch_size is None:  # any batch size, the interpreter resized back and forth
    np.testing.assert_allclose(run(x[:1]), want[:1], rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(run(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  else:
    with pytest.raises(ValueError, match="takes inputs of shape"):
      run(x[:1])


def test_tflite_dynamic_range_int8_is_smaller_and_keeps_predictions():
  pytest.importorskip("tensorflow")
  graphdef, params, rest = _tflite_model("mlp100", (28, 28, 1))
  x = np.random.default_rng(1).random((16, 28, 28, 1), dtype=np.float32)
  want = np.asarray(apply_model(graphdef, params, rest, x, train=False)[0])
  full = compress.export_tflite(graphdef, params, rest, (28, 28, 1))
  small = compress.export_tflite(graphdef, params, rest, (28, 28, 1), quantize_weights=True)
  assert len(small) < len(full) / 3
  got = compress.load_tflite(small)(x)
  np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())
