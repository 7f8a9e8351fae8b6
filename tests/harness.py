"""Shared test harness: synthetic image data and a one-epoch run of a method on a random pair."""

import jax
import numpy as np
import optax

from kdjax.data import ArrayDataset
from kdjax.methods import init_method
from kdjax.models import create_model, feature_shapes, split_model
from kdjax.train import fit, init_train_state, make_eval_step, make_train_step


def synthetic_data(shape=(32, 32, 3), n=64, n_test=32) -> ArrayDataset:
  """``n`` random uint8 images of ``shape`` with cycling labels 0..9; the first ``n_test`` are the test split."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
  labels = (np.arange(n) % 10).astype(np.int32)
  return ArrayDataset("synthetic32", images, labels, images[:n_test], labels[:n_test], 10)


def smoke(method, student="cnn16", teacher_name="cnn64", *, data=None, teacher_seed=0):
  """One epoch of ``method`` (batch 16, SGD 0.01) from a random teacher:
  ``(step, last epoch record, initial method params (copies), fit result)``."""
  data = synthetic_data() if data is None else data
  t_graphdef, t_params, t_rest = split_model(create_model(teacher_name, num_classes=10, input_shape=data.image_shape,
                                                          seed=teacher_seed))
  graphdef, params, rest = split_model(create_model(student, num_classes=10, input_shape=data.image_shape))
  method_params, method_state = init_method(method, jax.random.key(1),
                                            feature_shapes(graphdef, params, rest, data.image_shape),
                                            feature_shapes(t_graphdef, t_params, t_rest, data.image_shape),
                                            len(data.train_labels))
  initial = jax.tree.map(np.array, method_params)  # copies: the step donates the state
  tx = optax.sgd(0.01, momentum=0.9)
  step = make_train_step(graphdef, tx, method, teacher_graphdef=t_graphdef)
  state = init_train_state(params, rest, tx, jax.random.key(0), method_params, method_state)
  result = fit(state, step, make_eval_step(graphdef), data, epochs=1, batch_size=16,
               teacher_vars={"params": t_params, "rest": t_rest}, progress=False)
  return step, result.history[-1], initial, result
