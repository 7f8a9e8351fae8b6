"""Compression: int8 per-channel quantization within half a step, sizes, unsupported layers named,
and an exported model reloading to the same predictions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.compress import (dequantize, dequantize_params, export_model, load_exported, quantize, quantize_params,
                            size_bytes)
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
