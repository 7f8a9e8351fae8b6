"""The speed switches change nothing beyond precision: stacked steps against single steps, the
device pipeline against a host reference, cached against live teachers; mixed precision computes
in bfloat16 on float32 parameters; bad switches fail early."""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import TrainConfig, override, validate_study
from kdjax.data.augment import augment, augment_draws
from kdjax.data.dataset import ArrayDataset
from kdjax.methods import hinton_kd, multi_teacher_kd
from flax import nnx

from kdjax.models import create_model, split_model
from kdjax.models.functional import apply_model
from kdjax.presets import PRESETS
from kdjax.train import (NonFiniteLossError, TrainedModel, distill, fit, init_train_state, make_eval_step,
                         make_optimizer, make_train_step)
from kdjax.train.teacher_cache import cache_teacher_outputs, cached_teacher_outputs, teacher_fingerprint

SHAPE = (8, 8, 3)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  return ArrayDataset("tiny", rng.integers(0, 256, (96, *SHAPE), dtype=np.uint8), rng.integers(0, 4, 96),
                      rng.integers(0, 256, (32, *SHAPE), dtype=np.uint8), rng.integers(0, 4, 32), 4)


class TinyNet(nnx.Module):
  """Conv-BatchNorm-ReLU, pooling and a classifier: the smallest model with batch statistics,
  so the equivalences below cover them while compiling in a fraction of a ResNet's time."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, width, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(width, rngs=rngs)
    self.fc = nnx.Linear(width, 4, rngs=rngs)

  def __call__(self, x, *, train: bool = False, rngs=None):
    h = jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))
    feats = {"block1": h, "pre_logits": h.mean((1, 2))}
    return self.fc(feats["pre_logits"]), feats


@pytest.fixture(scope="module")
def teacher():
  """An untrained teacher: the equivalences need no trained one."""
  graphdef, params, rest = split_model(TinyNet(16, rngs=nnx.Rngs(0)))
  return TrainedModel("tiny", 4, SHAPE, graphdef, params, rest, fit=None)


TX = make_optimizer("sgd", learning_rate=0.1, total_steps=100, weight_decay=5e-4)
STUDENT = split_model(TinyNet(8, rngs=nnx.Rngs(1)))
EVAL = make_eval_step(STUDENT[0])


@functools.cache
def _step(t_graphdef, precision, steps_per_call, jitter_pixels, hflip):  # one compile per variant for the module
  return make_train_step(STUDENT[0], TX, hinton_kd(alpha=0.5, temperature=4.0), teacher_graphdef=t_graphdef,
                         precision=precision, steps_per_call=steps_per_call, jitter_pixels=jitter_pixels,
                         hflip=hflip)


def _setup(teacher, precision="fp32", steps_per_call=1, jitter_pixels=2, hflip=True):
  step = _step(teacher.graphdef, precision, steps_per_call, jitter_pixels, hflip)
  graphdef, params, rest = STUDENT
  return graphdef, step, init_train_state(*jax.tree.map(jnp.copy, (params, rest)), TX, jax.random.key(3))


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _batches(data, s, b=16):
  idx = np.arange(s * b).reshape(s, b)
  return {"image": jnp.asarray(data.train_images[idx]), "label": jnp.asarray(data.train_labels[idx]),
          "index": jnp.asarray(idx, jnp.int32)}


def test_stacked_steps_equal_single_steps_with_the_teacher_hoisted(data, teacher):
  batches = _batches(data, 4)
  _, single, state = _setup(teacher)
  singles = []
  for i in range(4):
    state, m = single(state, teacher.variables, jax.tree.map(lambda a: a[i], batches))
    singles.append(m)
  _, stacked, state4 = _setup(teacher, steps_per_call=4)
  state4, m4 = stacked(state4, teacher.variables, batches)
  assert int(state4.step) == int(state.step) == 4
  _assert_trees_close((state.params, state.rest, state.opt_state), (state4.params, state4.rest, state4.opt_state))
  assert jax.random.key_data(state.rng).tolist() == jax.random.key_data(state4.rng).tolist()
  for k in ("loss", "kl", "ce", "accuracy", "teacher_agreement"):
    np.testing.assert_allclose(m4[k], [float(m[k]) for m in singles], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="stacked batches"):
    stacked(state4, teacher.variables, jax.tree.map(lambda a: a[0], batches))


def test_fit_with_stacked_calls_and_a_remainder_equals_single_steps(data, teacher):
  # 96 images / batch 16 = 6 steps per epoch: calls of 4 steps, then a stack of 2.
  results = []
  for s in (1, 4):
    graphdef, step, state = _setup(teacher, steps_per_call=s)
    results.append(fit(state, step, EVAL, data, epochs=2, batch_size=16, seed=5,
                       teacher_vars=teacher.variables, progress=False, steps_per_call=s))
  one, four = results
  _assert_trees_close(one.state.params, four.state.params)
  for r1, r4 in zip(one.history, four.history, strict=True):
    assert r1["step"] == r4["step"]
    np.testing.assert_allclose(r1["train_loss"], r4["train_loss"], rtol=1e-5)
    assert r1["test_errors"] == r4["test_errors"]


def test_a_non_finite_step_freezes_the_rest_of_the_stack_and_fit_names_it(data, teacher):
  bad = dataclasses.replace(teacher, params=jax.tree.map(lambda p: p * jnp.nan, teacher.params))
  graphdef, step, state = _setup(teacher, steps_per_call=4)
  before = jax.tree.map(np.asarray, state.params)
  after, m = step(state, bad.variables, _batches(data, 4))
  assert m["finite"].tolist() == [False] * 4
  _assert_trees_close(before, after.params, rtol=0, atol=0)
  graphdef, step, state = _setup(teacher, steps_per_call=4)
  with pytest.raises(NonFiniteLossError, match="at step 1 ") as err:
    fit(state, step, EVAL, data, epochs=1, batch_size=16, teacher_vars=bad.variables,
        progress=False, steps_per_call=4)
  assert err.value.metric == "loss"


def test_bf16_computes_in_bfloat16_on_float32_parameters_and_stays_close(data, teacher):
  batch = jax.tree.map(lambda a: a[0], _batches(data, 1))
  _, step32, s32 = _setup(teacher)
  graphdef, step16, s16 = _setup(teacher, precision="bf16")
  jaxpr = str(jax.make_jaxpr(step16)(s16, teacher.variables, batch))
  assert "conv_general_dilated" in jaxpr and "bf16[16,8,8,8]" in jaxpr  # the convolutions run in bfloat16
  s32, m32 = step32(s32, teacher.variables, batch)
  s16, m16 = step16(s16, teacher.variables, batch)
  assert {a.dtype for a in jax.tree.leaves((s16.params, s16.rest, s16.opt_state)) if jnp.issubdtype(a.dtype, jnp.floating)} == {jnp.dtype("float32")}
  np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=3e-2)
  assert float(m16["loss"]) != float(m32["loss"])  # it did compute differently
  logits, _, _ = apply_model(graphdef, s16.params, s16.rest, jnp.ones((2, *SHAPE)), train=False, dtype=jnp.bfloat16)
  assert logits.dtype == jnp.float32  # the losses see float32


def test_unknown_precision_and_bad_steps_per_call_fail_before_tracing(teacher):
  with pytest.raises(ValueError, match="unknown precision 'fp16'; use one of: fp32, bf16"):
    _setup(teacher, precision="fp16")
  with pytest.raises(ValueError, match="steps_per_call must be an integer >= 1"):
    _setup(teacher, steps_per_call=0)
  with pytest.raises(ValueError, match="distilled.precision|unknown precision"):
    validate_study(override(PRESETS["hinton_mnist"], ["distilled.precision=half"]))
  with pytest.raises(ValueError, match="teacher.teacher_cache: only the distilled run"):
    validate_study(override(PRESETS["hinton_mnist"], ["teacher.teacher_cache=device"]))
  with pytest.raises(ValueError, match="must be 'off', 'device' or a path ending in .npz"):
    validate_study(override(PRESETS["hinton_mnist"], ["distilled.teacher_cache=somewhere"]))


@pytest.mark.parametrize("jitter_pixels,hflip", [(4, True), (2, False), (0, True)])
def test_device_augmentation_matches_a_host_reference_of_the_same_draws(jitter_pixels, hflip):
  images = np.random.default_rng(1).integers(0, 256, (12, 6, 5, 3), dtype=np.uint8)
  key = jax.random.key(7)
  out = np.asarray(augment(key, jnp.asarray(images), jitter_pixels, hflip))
  draws = {k: np.asarray(v) for k, v in augment_draws(key, len(images), jitter_pixels, hflip).items()}
  ref = images.astype(np.float32) / 255.0
  if jitter_pixels:  # pad with zeros, crop at the drawn offsets: torchvision's RandomCrop(padding=p)
    p = jitter_pixels
    padded = np.pad(ref, ((0, 0), (p, p), (p, p), (0, 0)))
    ref = np.stack([padded[i, r:r + 6, c:c + 5] for i, (r, c) in enumerate(draws["offsets"])])
    assert draws["offsets"].min() >= 0 and draws["offsets"].max() <= 2 * p and len(np.unique(draws["offsets"])) > 1
  if hflip:
    ref = np.where(draws["flips"][:, None, None, None], ref[:, :, ::-1], ref)
    assert 0 < draws["flips"].sum() < len(images)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=0)  # x / 255 rounds alike up to an ulp


def test_streaming_from_the_host_equals_the_device_resident_pipeline(data, teacher):
  results = []
  for resident_bytes in (None, 1):
    graphdef, step, state = _setup(teacher, steps_per_call=4)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      results.append(fit(state, step, EVAL, data, epochs=1, batch_size=16, seed=2,
                         teacher_vars=teacher.variables, progress=False, steps_per_call=4,
                         resident_bytes=resident_bytes))
    streamed = [str(w.message) for w in caught if "streaming" in str(w.message)]
    assert len(streamed) == (resident_bytes is not None)
  assert "does not fit the device-resident pipeline's budget (0.0 MiB)" in streamed[0]
  _assert_trees_close(results[0].state.params, results[1].state.params, rtol=0, atol=0)


@pytest.fixture(scope="module")
def mnist_shaped():
  rng = np.random.default_rng(0)
  return ArrayDataset("tiny28", rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 64),
                      rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 16), 10)


@pytest.fixture(scope="module")
def mlp_teacher():
  graphdef, params, rest = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  return TrainedModel("mlp100", 10, (28, 28, 1), graphdef, params, rest, fit=None)


def test_cached_teacher_equals_the_live_teacher_under_a_fixed_view(mnist_shaped, mlp_teacher, tmp_path):
  data, teacher = mnist_shaped, mlp_teacher
  cfg = TrainConfig(model="mlp100", epochs=1, batch_size=16)
  live = distill(data, cfg, teacher, alpha=0.5, temperature=4.0, progress=False)
  cached = distill(data, dataclasses.replace(cfg, teacher_cache="device"), teacher, alpha=0.5, temperature=4.0,
                   progress=False)
  _assert_trees_close(live.params, cached.params, rtol=1e-5, atol=1e-6)
  assert live.test["errors"] == cached.test["errors"]

  path = tmp_path / "t.npz"
  cache = cached_teacher_outputs(teacher.graphdef, teacher.variables, data.train_images, path=path,
                                 features=("block2",))
  assert cache["logits"].shape == (64, 10) and cache["feats"]["block2"].shape == (64, 100)
  logits, feats, _ = apply_model(teacher.graphdef, teacher.params, teacher.rest,
                                 jnp.asarray(data.train_images[:5], jnp.float32) / 255.0, train=False)
  np.testing.assert_allclose(cache["logits"][:5], logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cache["feats"]["block2"][:5], feats["block2"], rtol=1e-5, atol=1e-5)
  stamp = path.stat().st_mtime_ns
  again = cached_teacher_outputs(teacher.graphdef, teacher.variables, data.train_images, path=path,
                                 features=("block2",))  # read back, not recomputed
  assert path.stat().st_mtime_ns == stamp
  np.testing.assert_array_equal(again["logits"], cache["logits"])
  other = jax.tree.map(lambda p: p * 1.01, teacher.variables)  # another teacher: recomputed and rewritten
  assert teacher_fingerprint(other, data.train_images) != teacher_fingerprint(teacher.variables, data.train_images)
  redone = cached_teacher_outputs(teacher.graphdef, other, data.train_images, path=path)
  assert not np.allclose(redone["logits"], cache["logits"])


def test_caching_under_random_augmentation_warns_and_bad_cache_setups_fail(data, teacher):
  with pytest.warns(UserWarning, match="changes the method"):
    cache_teacher_outputs(teacher.graphdef, teacher.variables, data.train_images[:8], augmented=True)
  cfg = TrainConfig(model="resnet8", epochs=1, batch_size=16, teacher_cache="device")  # fails before building
  with pytest.raises(ValueError, match="give one teacher"):
    distill(data, cfg, {"a": teacher, "b": teacher}, method=multi_teacher_kd(alpha=0.5, temperature=4.0),
            progress=False)
  with pytest.raises(ValueError, match="unknown feature 'block9' for the teacher"):
    cache_teacher_outputs(teacher.graphdef, teacher.variables, data.train_images[:8], features=("block9",))
