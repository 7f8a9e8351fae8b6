import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from harness import smoke

from kdjax.config import TrainConfig
from kdjax.losses import dkd_loss, hard_cross_entropy, hinton_kd_loss
from kdjax.methods import Method, make_method, method_hparams, method_names, method_spec, study_hparams, vmapped_hparams
from kdjax.models import create_model, split_model
from kdjax.train import distill, fit, init_train_state, make_eval_step, make_train_step, train_teacher

# Hinton KD has no defaults (studies supply them); every other method trains at its own.
DEFAULTS = {"hinton": dict(alpha=0.5, temperature=4.0)}
TINY = TrainConfig(model="mlp800", epochs=1, batch_size=100, learning_rate=0.05)


@pytest.fixture(scope="module")
def data(small_mnist):
  return dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:1000],
                             train_labels=small_mnist.train_labels[:1000])


@pytest.fixture(scope="module")
def teacher(data):
  return train_teacher(data, dataclasses.replace(TINY, model="mlp1200", epochs=2, learning_rate=0.1),
                       progress=False)


def _logits(seed=0, b=8, c=10):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, c)).astype(np.float32), 2 * rng.normal(size=(b, c)).astype(np.float32),
          rng.integers(0, c, b))


# Where each family of the registry is tested; every registered method is in one.
TESTED_IN = {
    "baseline": "here (supervised, the student alone)",
    "logit": "here, every method training a student (test_logit_methods.py: the losses)",
    "feature": "here and test_feature_methods_more.py", "relation": "here",
    "contrastive": "test_contrastive_review.py", "review": "test_contrastive_review.py",
    "self": "test_self_kd.py (no teacher)",
    "domain": "test_domain.py (unlabelled target-domain images in the batch)",
    "adversarial": "test_adversarial.py (the step attacks the student)",
    "lm": "test_lm_train.py (causal language models, kdjax.train.lm)",
}
LOGIT_METHODS = [n for n in method_names() if method_spec(n).family == "logit"]


def test_every_method_has_a_tested_family_a_paper_and_meaningful_hyperparameter_roles():
  from kdjax.methods import PAPERS, REGISTRY
  assert set(PAPERS) == set(REGISTRY) == set(method_names())
  assert {"hinton", "reverse_kd", "js_kd", "gkd", "dkd", "dist"} <= set(LOGIT_METHODS)
  for name, spec in REGISTRY.items():
    assert spec.name == name and spec.family in TESTED_IN and spec.paper, name
    hparams = method_hparams(name)
    roles = [h for h in (spec.temperature, spec.label_weight, *spec.vmappable) if h is not None]
    assert all(h in hparams for h in roles), (name, roles)  # the roles name the factory's own hyperparameters
    assert spec.label_weight is None or spec.temperature is not None, name
    assert isinstance(make_method(name, **DEFAULTS.get(name, {})), Method), name


def test_the_registry_says_which_hyperparameters_studies_and_sweeps_set():
  assert [n for n in method_names() if method_spec(n).label_weight] == ["gkd", "hinton", "js_kd", "reverse_kd"]
  assert [n for n in method_names() if method_spec(n).temperature] == ["dist", "dkd", "gkd", "hinton", "js_kd",
                                                                       "reverse_kd"]
  assert vmapped_hparams("hinton", {"alpha": 0.5, "temperature": 4.0, "standardize": True}) == ["temperature", "alpha"]
  assert vmapped_hparams("dkd", (("beta", 8.0), ("temperature", 4.0), ("alpha", 1.0))) == ["temperature", "beta"]
  assert vmapped_hparams("gkd", ["beta", "temperature"]) == ["temperature", "beta"]  # a plain factor; its check skips traced values
  assert vmapped_hparams("crd_inbatch", {"temperature": 0.07}) == []  # a contrastive tau, not the KD T
  assert study_hparams("hinton", {"temperature": 2.0}, temperature=20.0, alpha=0.5) == {"temperature": 2.0,
                                                                                         "alpha": 0.5}
  assert study_hparams("dkd", {"beta": 4.0}, temperature=20.0, alpha=0.5) == {"beta": 4.0}  # DKD keeps its own T


def test_make_method_names_an_unknown_or_missing_hyperparameter_and_lists_them():
  with pytest.raises(ValueError, match=r"method 'dkd' has no hyperparameter 'foo'; its hyperparameters: "
                                       r"alpha=1.0, beta=8.0, temperature=4.0, ce_weight=1.0"):
    make_method("dkd", foo=1)
  with pytest.raises(ValueError, match=r"method 'hinton' needs 'alpha', 'temperature'"):
    make_method("hinton")
  params = method_hparams("dkd")
  assert params["beta"].default == 8.0 and list(params)[:3] == ["alpha", "beta", "temperature"]
  with pytest.raises(ValueError, match="unknown method 'ofa'; known methods: .*gkd.*hinton"):
    method_hparams("ofa")


def test_a_method_is_a_small_immutable_value_not_a_pytree():
  method = make_method("crd_queue", queue_size=8)
  assert isinstance(method, Method) and method.init is not None and method.init_state is not None
  assert method.adversary is None and method.head_logits is None and not method.multi_teacher
  with pytest.raises(dataclasses.FrozenInstanceError):
    method.init = None
  assert jax.tree.leaves(method) == [method]  # configuration, never traced data
  s, t, y = _logits()
  hinton = make_method("hinton", alpha=0.3, temperature=5.0)
  batch = {"label": y, "step": 0}
  np.testing.assert_array_equal(hinton(s, {}, (t, {}), batch, {})[0], hinton.loss(s, {}, (t, {}), batch, {})[0])


def test_as_method_refuses_the_old_attribute_interface():
  from kdjax.methods import as_method

  def loss(student_logits, student_feats, teacher, batch, params):
    return student_logits.sum(-1), {}

  loss.init = lambda key, s, t: {}
  with pytest.raises(ValueError, match=r"pass init as keyword arguments"):
    as_method(loss, needs_teacher=False)
  with pytest.raises(TypeError, match="already a Method"):
    as_method(make_method("supervised"), needs_teacher=False)


# Standardization is one shared code path: two methods check it with the rest.
@pytest.mark.parametrize("name,standardize", [(n, False) for n in LOGIT_METHODS] + [("hinton", True), ("dist", True)])
def test_every_logit_method_trains_a_student_with_one_compiled_step(name, standardize, data, teacher):
  method = make_method(name, standardize=standardize, **DEFAULTS.get(name, {}))
  graphdef, params, rest = split_model(create_model("mlp800", num_classes=10, input_shape=(28, 28, 1)))
  tx = optax.sgd(0.05, momentum=0.9)
  # The run's length (1,000 images in batches of 100, 2 epochs): DKD's default ramp spans the run.
  step = make_train_step(graphdef, tx, method, teacher_graphdef=teacher.graphdef, steps_per_epoch=10, epochs=2)
  result = fit(init_train_state(params, rest, tx, jax.random.key(0)), step, make_eval_step(graphdef), data,
               epochs=2, batch_size=100, teacher_vars=teacher.variables, progress=False)
  assert step._cache_size() == 1
  record = result.history[-1]
  # 20 steps on 1,000 images from a weak teacher: above chance (0.1) is what a smoke run can ask;
  # DKD's beta=8 term (T=4) gives gradient norms around 13 that slow it down here.
  assert result.test["accuracy"] > 0.2
  assert np.isfinite(record["train_loss"]) and "train_ce" in record
  method_terms = [k for k in record if k.startswith("train_") and k not in (
      "train_loss", "train_accuracy", "train_grad_norm", "train_update_norm", "train_ce", "train_teacher_agreement")]
  assert len(method_terms) == 1 and np.isfinite(record[method_terms[0]])


def test_hinton_method_is_the_hinton_loss():
  s, t, y = _logits()
  loss_B, terms = make_method("hinton", alpha=0.3, temperature=5.0)(s, {}, (t, {}), {"label": y, "step": 0}, {})
  np.testing.assert_allclose(loss_B, hinton_kd_loss(s, t, y, alpha=0.3, temperature=5.0), rtol=1e-6)
  np.testing.assert_allclose(terms["ce"], hard_cross_entropy(s, y), rtol=1e-6)


def _dkd_parts(seed=1):
  """Logits, labels, and DKD's CE and (unramped) DKD terms at its defaults."""
  s, t, y = _logits(seed)
  return s, t, y, hard_cross_entropy(s, y), dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0)


def _dkd_at(method, s, t, y, epoch, epochs):
  """DKD's loss with the run at ``epoch`` of ``epochs`` (jitted: the epoch is traced, as in a step)."""
  return jax.jit(lambda e: method(s, {}, (t, {}), {"label": y, "epoch": e, "epochs": epochs}, {}))(
      jnp.float32(epoch))


def test_dkd_warmup_ramps_the_distillation_term_per_epoch_as_mdistiller():
  # mdistiller: min(epoch / warmup, 1) with epoch counted from 1, constant within an epoch.
  s, t, y, ce, d = _dkd_parts()
  method = make_method("dkd", warmup_epochs=20)
  for epoch, w in ((0.0, 1 / 20), (0.5, 1 / 20), (9.0, 10 / 20), (9.99, 10 / 20), (18.5, 19 / 20), (19.0, 1.0),
                   (100.0, 1.0)):
    loss, terms = _dkd_at(method, s, t, y, epoch, 240)
    np.testing.assert_allclose(loss, ce + w * d, rtol=1e-5, err_msg=f"epoch {epoch}")
  np.testing.assert_allclose(terms["ce"], ce, rtol=1e-6)
  np.testing.assert_allclose(terms["dkd"], d, rtol=1e-5)
  # Under vmap too (a sweep's students at different epochs): half-way (the 10th epoch) weighs 0.5.
  losses = jax.vmap(lambda e: method(s, {}, (t, {}), {"label": y, "epoch": e, "epochs": 240}, {})[0])(
      jnp.asarray([0.0, 9.0, 30.0]))
  np.testing.assert_allclose(losses, np.stack([ce + d / 20, ce + 0.5 * d, ce + d]), rtol=1e-5)


@pytest.mark.parametrize("epochs,ramp", [(5, 5), (40, 20), (20, 20)])
def test_dkd_default_warmup_is_the_references_20_epochs_or_the_whole_shorter_run(epochs, ramp):
  s, t, y, ce, d = _dkd_parts(2)
  method = make_method("dkd")
  for epoch in (0.0, ramp / 2, ramp - 1, ramp - 0.5, epochs - 0.5):
    w = min((np.floor(epoch) + 1) / ramp, 1.0)
    np.testing.assert_allclose(_dkd_at(method, s, t, y, epoch, epochs)[0], ce + w * d, rtol=1e-5,
                               err_msg=f"epoch {epoch} of {epochs}")
  assert float(np.mean(_dkd_at(method, s, t, y, 0.0, epochs)[0] - ce)) == pytest.approx(
      float(np.mean(d)) / ramp, rel=1e-4)  # the first epoch weighs 1/ramp


def test_dkd_warmup_longer_than_the_run_or_without_the_runs_length_is_named():
  s, t, y, ce, d = _dkd_parts(3)
  with pytest.raises(ValueError, match=r"dkd: warmup_epochs=30 is longer than the run \(10 epochs\).*"
                                       r"--set method\.warmup_epochs=N with N <= 10"):
    _dkd_at(make_method("dkd", warmup_epochs=30), s, t, y, 0.0, 10)
  loss, _ = _dkd_at(make_method("dkd", warmup_epochs=10), s, t, y, 9.0, 10)  # as long as the run: full weight last
  np.testing.assert_allclose(loss, ce + d, rtol=1e-5)
  no_length = {"label": y, "step": jnp.asarray(0)}
  for hparams in ({}, {"warmup_epochs": 5}):
    with pytest.raises(ValueError, match=r"dkd: warmup_epochs is a schedule in epochs.*"
                                         r"make_train_step\(\.\.\., steps_per_epoch=, epochs=\).*warmup_epochs=0"):
      make_method("dkd", **hparams)(s, {}, (t, {}), no_length, {})
  loss, _ = make_method("dkd", warmup_epochs=0)(s, {}, (t, {}), no_length, {})  # no ramp: no length needed
  np.testing.assert_allclose(loss, ce + d, rtol=1e-5)
  for bad in (-1, -0.5, float("nan"), True):
    with pytest.raises(ValueError, match="dkd: warmup_epochs must be None"):
      make_method("dkd", warmup_epochs=bad)


def test_dkd_warmup_longer_than_the_run_fails_a_run_before_training(data, teacher):
  with pytest.raises(ValueError, match=r"warmup_epochs=5 is longer than the run \(1 epochs\)"):
    distill(data, TINY, teacher, method=make_method("dkd", warmup_epochs=5), progress=False)


def test_standardize_makes_kd_invariant_to_teacher_logit_scale():
  s, t, y = _logits(2)
  method = make_method("hinton", alpha=0.0, temperature=2.0, standardize=True)
  a, _ = method(s, {}, (t, {}), {"label": y, "step": 0}, {})
  b, _ = method(s, {}, (3.0 * t + 1.0, {}), {"label": y, "step": 0}, {})
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  plain = make_method("hinton", alpha=0.0, temperature=2.0)
  assert not np.allclose(plain(s, {}, (t, {}), {"label": y}, {})[0], plain(s, {}, (3.0 * t, {}), {"label": y}, {})[0])


def test_unknown_method_and_ambiguous_distill_calls_are_named(data, teacher):
  with pytest.raises(ValueError, match="unknown method 'ofa'.*dkd"):
    make_method("ofa")
  with pytest.raises(ValueError, match="either a method or alpha and temperature"):
    distill(data, TINY, teacher, method=make_method("dkd"), alpha=0.5, progress=False)
  with pytest.raises(ValueError, match="needs alpha and temperature"):
    distill(data, TINY, teacher, progress=False)


def _smoke(method, student="cnn16", teacher_name="cnn64", data=None):
  """One epoch of ``method`` from a random teacher; ``(step, last record, initial method params)``."""
  step, record, initial, _ = smoke(method, student, teacher_name, data=data)
  return step, record, initial


@pytest.mark.parametrize("name", ["at", "nst", "sp", "rkd", "pkt"])
def test_feature_methods_run_on_the_cnn_pair_with_one_compiled_step(name):
  step, record, _ = _smoke(make_method(name))
  assert step._cache_size() == 1
  assert np.isfinite(record["train_loss"]) and np.isfinite(record[f"train_{name}"])
  assert record[f"train_{name}"] > 0  # a random teacher and student do not agree


def test_cc_runs_without_embeddings_when_embedding_sizes_match():
  step, record, _ = _smoke(make_method("cc", embed_dim=None))  # both pre_logits are 256-d
  assert np.isfinite(record["train_cc"])


def test_cc_embeds_both_sides_to_embed_dim_and_trains_the_embeddings(data, teacher):
  result = distill(data, TINY, teacher, method=make_method("cc", embed_dim=64), progress=False)
  emb = result.method_params["pre_logits"]
  assert emb["student"]["kernel"].shape == (800, 64) and emb["teacher"]["kernel"].shape == (1200, 64)
  from kdjax.methods import init_method
  from kdjax.models import feature_shapes
  shapes = [feature_shapes(*split_model(create_model(m, num_classes=10, input_shape=(28, 28, 1))), (28, 28, 1))
            for m in ("mlp800", "mlp1200")]
  init, _ = init_method(make_method("cc", embed_dim=64), jax.random.fold_in(jax.random.key(0), 2), *shapes, 1000)
  for side in ("student", "teacher"):  # both embeddings train (RepDistiller trains embed_s and embed_t)
    assert not np.allclose(emb[side]["kernel"], init["pre_logits"][side]["kernel"])
  assert np.isfinite(result.fit.history[-1]["train_cc"])


@pytest.mark.parametrize("name,student,teacher,message", [
    ("at", "mlp800", "mlp1200", "attention transfer needs NHWC feature maps"),
    ("nst", "mlp800", "mlp1200", "NST needs NHWC feature maps"),
    ("cc", "mlp800", "mlp1200", "correlation congruence needs equal embedding sizes: student 800, teacher 1200"),
])
def test_feature_methods_name_what_does_not_fit(name, student, teacher, message, small_mnist):
  data = dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:64],
                             train_labels=small_mnist.train_labels[:64])
  with pytest.raises(ValueError, match=message):
    _smoke(make_method(name, **({"embed_dim": None} if name == "cc" else {})), student, teacher, data)


def test_unknown_feature_lists_the_available_ones():
  with pytest.raises(ValueError, match="unknown feature 'block9' for the student; available: block1, block2, pre_logits"):
    _smoke(make_method("at", layers=("block9",)))


def test_feature_shapes_are_known_without_data():
  from kdjax.models import feature_shapes
  g, p, r = split_model(create_model("cnn16", num_classes=10, input_shape=(32, 32, 3)))
  shapes = feature_shapes(g, p, r, (32, 32, 3))
  assert {k: v.shape for k, v in shapes.items()} == {
      "block1": (2, 16, 16, 16), "block2": (2, 8, 8, 32), "pre_logits": (2, 256)}


def test_hint_loss_is_the_per_example_mse_and_stops_the_teacher_gradient():
  from kdjax.losses import hint_loss
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(4, 3, 3, 5)), rng.normal(size=(4, 3, 3, 5))
  np.testing.assert_allclose(hint_loss(s, t), ((s - t) ** 2).reshape(4, -1).mean(-1), rtol=1e-5)
  assert float(jnp.abs(jax.grad(lambda x: hint_loss(s, x).sum())(t)).max()) == 0.0
  np.testing.assert_allclose(jax.grad(lambda x: hint_loss(x, t).sum())(s), 2 * (s - t) / 45, rtol=1e-4)


def test_fitnet_trains_its_regressor_with_the_student(data, teacher):
  method = make_method("fitnet")
  result = distill(data, dataclasses.replace(TINY, epochs=3), teacher, method=method, progress=False)
  kernel = result.method_params["regressor"]["dense"]["kernel"]
  assert kernel.shape == (800, 1200)  # mlp800 block2 -> mlp1200 block2
  from kdjax.models import feature_shapes
  init = method.init(jax.random.fold_in(jax.random.key(0), 2),
                     feature_shapes(*split_model(create_model("mlp800", num_classes=10, input_shape=(28, 28, 1))),
                                    (28, 28, 1)),
                     feature_shapes(teacher.graphdef, teacher.params, teacher.rest, (28, 28, 1)))
  assert not np.allclose(kernel, init["regressor"]["dense"]["kernel"])  # the optimizer moved it
  hints = [h["train_hint"] for h in result.fit.history]
  assert hints[-1] < hints[0]


@pytest.mark.parametrize("s_layer,t_layer,kind,kernel", [
    ("block1", "block1", "valid", (1, 1, 16, 64)),  # equal sizes: a 1x1 convolution
    ("block1", "block2", "down", (3, 3, 16, 128)),  # 16x16 -> 8x8: 3x3 stride 2
    ("block2", "block1", "up", (4, 4, 32, 64)),  # 8x8 -> 16x16: 4x4 stride-2 transposed
])
def test_fitnet_regressor_bridges_spatial_sizes_as_repdistillers_convreg(s_layer, t_layer, kind, kernel):
  method = make_method("fitnet", student_layer=s_layer, teacher_layer=t_layer)
  step, record, method_params = _smoke(method)
  assert method_params["regressor"][kind]["kernel"].shape == kernel
  assert step._cache_size() == 1 and np.isfinite(record["train_hint"])


def test_fitnet_names_what_no_regressor_bridges():
  with pytest.raises(ValueError, match=r"FitNet: student pre_logits \(256,\) and teacher block1 \(16, 16, 64\) must both"):
    _smoke(make_method("fitnet", student_layer="pre_logits", teacher_layer="block1"))


def test_every_method_docstring_ends_with_its_defaults_and_their_source():
  for name in method_names():
    doc = inspect.getdoc(method_spec(name).make)
    assert doc.split("\n\n")[-1].startswith("Defaults:"), f"{name}: the docstring's last paragraph is not 'Defaults:'"
