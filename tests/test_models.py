import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.models import apply_model, create_model, get_model_spec, model_names, split_model


@pytest.mark.parametrize("name", ["mlp1200", "mlp800", "cnn64", "cnn16"])
def test_models_return_logits_and_named_features(name):
  spec = get_model_spec(name)
  graphdef, params, rest = split_model(create_model(name, num_classes=7, input_shape=spec.input_shape))
  x = jnp.ones((3, *spec.input_shape))
  logits, feats, _ = apply_model(graphdef, params, rest, x, train=False)
  assert logits.shape == (3, 7)
  assert {"block1", "block2", "pre_logits"} <= set(feats)
  assert all(v.shape[0] == 3 for v in feats.values())


def test_hinton_architectures_have_the_papers_sizes():
  def sizes(name):
    _, params, _ = split_model(create_model(name, num_classes=10, input_shape=(28, 28, 1)))
    return sorted(a.shape for a in jax.tree.leaves(params) if a.ndim == 2)
  assert sizes("mlp1200") == sorted([(784, 1200), (1200, 1200), (1200, 10)])
  assert sizes("mlp800") == sorted([(784, 800), (800, 800), (800, 10)])


def test_cnn_pair_widths():
  _, feats_t, _ = apply_model(*split_model(create_model("cnn64", num_classes=10, input_shape=(32, 32, 3))),
                              jnp.zeros((1, 32, 32, 3)), train=False)
  _, feats_s, _ = apply_model(*split_model(create_model("cnn16", num_classes=10, input_shape=(32, 32, 3))),
                              jnp.zeros((1, 32, 32, 3)), train=False)
  assert feats_t["block1"].shape == (1, 16, 16, 64) and feats_s["block1"].shape == (1, 16, 16, 16)


def test_teacher_dropout_is_off_in_inference_mode_and_on_in_training():
  graphdef, params, rest = split_model(create_model("mlp1200", num_classes=10, input_shape=(28, 28, 1)))
  x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
  a, _, _ = apply_model(graphdef, params, rest, x, train=False)
  b, _, _ = apply_model(graphdef, params, rest, x, train=False)
  np.testing.assert_array_equal(a, b)
  c, _, _ = apply_model(graphdef, params, rest, x, train=True, rngs=jax.random.key(1))
  assert not np.allclose(a, c)


def test_same_seed_same_init():
  p1 = split_model(create_model("mlp800", num_classes=10, input_shape=(28, 28, 1), seed=3))[1]
  p2 = split_model(create_model("mlp800", num_classes=10, input_shape=(28, 28, 1), seed=3))[1]
  p3 = split_model(create_model("mlp800", num_classes=10, input_shape=(28, 28, 1), seed=4))[1]
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  kernels = lambda p: [a for a in jax.tree.leaves(p) if a.ndim == 2]
  assert not any(np.array_equal(a, b) for a, b in zip(kernels(p1), kernels(p3)))


def test_unknown_model_is_named_with_the_alternatives():
  with pytest.raises(ValueError, match="unknown model 'resnet9000'.*mlp800"):
    create_model("resnet9000", num_classes=10, input_shape=(28, 28, 1))
  assert {"mlp1200", "mlp800", "cnn64", "cnn16"} <= set(model_names())


def test_wrong_image_shape_is_rejected():
  with pytest.raises(ValueError, match=r"expects images of shape \(28, 28, 1\).*\(32, 32, 3\)"):
    create_model("mlp800", num_classes=10, input_shape=(32, 32, 3))


def test_model_options_override_defaults_and_unknown_ones_are_named():
  m = create_model("mlp1200", num_classes=10, input_shape=(28, 28, 1), dropout_rate=0.2, input_dropout_rate=0.0)
  assert m.dropout.rate == 0.2 and m.input_dropout.rate == 0.0
  assert create_model("mlp1200", num_classes=10, input_shape=(28, 28, 1)).dropout.rate == 0.5
  with pytest.raises(ValueError, match="has no option width"):
    create_model("mlp800", num_classes=10, input_shape=(28, 28, 1), width=3)
