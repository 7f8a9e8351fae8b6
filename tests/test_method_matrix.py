"""Every method on every model family: one epoch, one compiled step per family.

Each family's smallest model is distilled from a second, differently seeded
copy of itself (so every method's shape requirements hold) with all methods at
once, combined with small weights: one compile per family covers every method,
and every method's terms must come out finite and logged. Every family is also
checked on shapes alone (the full step under ``jax.eval_shape``), which is cheap. Cross-architecture
pairs (connectors bridging channel and spatial sizes) are tested with the
methods themselves.
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from harness import synthetic_data

from kdjax.methods import combine, init_method, make_method, method_names, method_spec
from kdjax.models import create_model, feature_shapes, split_model
from kdjax.models.registry import get_model_spec, model_names
from kdjax.train import fit, init_train_state, make_eval_step, make_train_step

# The smallest registered model of each family, and the image shape it is smoke-tested on.
SMALLEST = {"mlp": ("mlp800", (28, 28, 1)), "cnn": ("cnn16", (32, 32, 3)), "resnet": ("resnet8", (32, 32, 3)),
            "wrn": ("wrn_16_2", (32, 32, 3)), "vgg": ("vgg8", (32, 32, 3)), "mobilenet": ("mobilenetv2", (32, 32, 3)),
            "shufflenet": ("shufflev1", (32, 32, 3)), "resnet_imagenet": ("resnet18", (32, 32, 3))}
# Methods that need NHWC feature maps (an MLP has none; the error is tested in test_methods.py).
NEEDS_MAPS = {"at", "nst", "vid", "ft", "ab", "fsp", "reviewkd"}
# Methods that need more than the labelled batch: domain_kd needs unlabelled target-domain images (test_domain.py).
NEEDS_UNLABELLED = {"domain_kd"}
# Small-data settings: CRD's memory bank draws its negatives from the 32 training examples.
# Every other method runs at its defaults, schedules included (the step knows the run's length).
SMOKE_HPARAMS = {"hinton": dict(alpha=0.5, temperature=4.0), "crd": dict(nce_k=16), "crd_queue": dict(queue_size=16),
                 "byot": dict(num_classes=10),
                 # one PGD step: the attack is traced on every family, cheaply (both parts must attack alike)
                 "ard": dict(steps=1), "adversarial_training": dict(steps=1)}


def test_every_family_has_a_smoke_model():
  # Image models only: the matrix feeds images; text models are tested in test_text_models.py.
  families = {get_model_spec(name).family for name in model_names() if get_model_spec(name).inputs == "image"}
  assert families == set(SMALLEST)
  assert all(get_model_spec(name).family == family for family, (name, _) in SMALLEST.items())


def _setup(family, abstract: bool, teacher_model=None):
  """Student, teacher (a second seed of the same model unless given), combined method, state and
  one batch; with ``abstract`` every array is a shape only (``nnx.eval_shape`` / ``jax.eval_shape``)."""
  model, shape = SMALLEST[family]
  names = [n for n in method_names()
           if n != "supervised" and n not in NEEDS_UNLABELLED and not (family == "mlp" and n in NEEDS_MAPS)
           and method_spec(n).family != "lm"]  # language-model methods: tests/test_lm_train.py
  method = combine({n: (1e-3, make_method(n, **SMOKE_HPARAMS.get(n, {}))) for n in names})
  data = synthetic_data(shape, n=32, n_test=8)
  build = lambda seed, name=model: create_model(name, num_classes=10, input_shape=shape, seed=seed)
  build_teacher = lambda: build(1, teacher_model or model)
  t_graphdef, t_params, t_rest = split_model(nnx.eval_shape(build_teacher) if abstract else build_teacher())
  graphdef, params, rest = split_model(nnx.eval_shape(lambda: build(0)) if abstract else build(0))
  tx = optax.sgd(1e-3, momentum=0.9)

  def init(params, rest, t_params, t_rest):
    method_params, method_state = init_method(
        method, jax.random.key(2), feature_shapes(graphdef, params, rest, shape),
        feature_shapes(t_graphdef, t_params, t_rest, shape), len(data.train_labels))
    return init_train_state(params, rest, tx, jax.random.key(0), method_params, method_state)

  state = (jax.eval_shape if abstract else lambda f, *a: f(*a))(init, params, rest, t_params, t_rest)
  # One epoch of 32 examples in batches of 16: DKD's and ReviewKD's default ramps span the epoch,
  # and AB's, FSP's and FT's default init stage (a ninth of the run) its first step.
  step = make_train_step(graphdef, tx, method, teacher_graphdef=t_graphdef, steps_per_epoch=2, epochs=1)
  return names, data, graphdef, state, step, {"params": t_params, "rest": t_rest}


# Tracing every method on the two heaviest families takes 10 s each on 2 cores: they join their
# one-epoch runs in the slow set (`pytest -m slow`).
HEAVY = {"mobilenet", "shufflenet"}


@pytest.mark.parametrize("family,teacher", [pytest.param(f, None, marks=[pytest.mark.slow] if f in HEAVY else [])
                                            for f in sorted(SMALLEST)] + [("resnet", "resnet20")])
def test_every_method_fits_every_family(family, teacher):
  """The whole step (both models, every method, gradients, optimizer) traced on shapes only;
  also for a deeper teacher of the same family (the resnet_mnist preset's pair)."""
  names, data, _, state, step, teacher_vars = _setup(family, abstract=True, teacher_model=teacher)
  batch = {"image": data.train_images[:16], "label": data.train_labels[:16], "index": np.arange(16, dtype=np.int32)}
  new_state, metrics = jax.eval_shape(step, state, teacher_vars, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  for name in names:
    assert any(k.startswith(f"{name}/") for k in metrics), f"{name} logged no terms on {SMALLEST[family][0]}"
  assert all(m.shape == () for m in metrics.values())


# The real one-epoch runs: CI runs the MLP (every method that takes vectors); the families
# with feature maps compile for 10-60 s each on a 2-core CPU (the CIFAR ResNet's one step, every
# method at once, takes 10 s of its 15), so they carry the ``slow`` mark (run them with
# ``pytest -m slow``); their shapes are checked above (on every run but for the two HEAVY families), and every map method trains
# for real on the CNN pair in test_methods.py, test_feature_methods_more.py and
# test_contrastive_review.py.
@pytest.mark.parametrize("family", [f if f == "mlp" else pytest.param(f, marks=pytest.mark.slow)
                                    for f in sorted(SMALLEST)])
def test_every_method_trains_on_every_family_with_one_compiled_step(family):
  names, data, graphdef, state, step, teacher_vars = _setup(family, abstract=False)
  result = fit(state, step, make_eval_step(graphdef), data, epochs=1, batch_size=16, teacher_vars=teacher_vars,
               progress=False)
  assert step._cache_size() == 1
  record = result.history[-1]
  for name in names:
    terms = [k for k in record if k.startswith(f"train_{name}/")]
    assert terms, f"{name} logged no terms on {SMALLEST[family][0]}"
    assert all(np.isfinite(record[k]) for k in terms), {k: record[k] for k in terms}
  assert np.isfinite(record["train_loss"]) and np.isfinite(record["test_loss"])
