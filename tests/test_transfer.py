"""Distillation beyond one image domain: unlabelled target images and the teacher's own view travel
with the batches, text models train and distil end to end with their vocabulary saved and checked,
and the domain transforms do what they say."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import TrainConfig
from kdjax.data.augment import to_float
from kdjax.data.dataset import ArrayDataset
from kdjax.data.domains import cross_modal_pair, domain_pair, transform_images
from kdjax.data.text import negation_task
from kdjax.methods import as_method
from kdjax.models import apply_model, create_model, split_model
from kdjax.train import distill, evaluate, fit, init_train_state, make_eval_step, make_optimizer, make_train_step, restore_trained, train_teacher


def _images(n, seed, shape=(28, 28, 1)):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _probe():
  """A method that reports what it was given: the mean of logit 0 of the teacher and, on the
  unlabelled images, of the student and the teacher."""

  def method(s_logits, s_feats, teacher, batch, params):
    terms = {"t0": teacher[0][:, 0]}
    if "unlabelled_student" in batch:
      terms |= {"u0": jnp.mean(batch["unlabelled_student"][0][:, 0]), "ut0": jnp.mean(batch["unlabelled_teacher"][0][:, 0])}
    return jnp.mean(s_logits**2, -1), terms

  return as_method(method, needs_teacher=True)


def test_the_step_shows_the_teacher_its_own_view_and_both_models_the_unlabelled_images():
  g, p, r = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=1))
  tg, tp, tr = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))
  tx = make_optimizer("sgd", learning_rate=0.1, total_steps=10)
  step = make_train_step(g, tx, _probe(), teacher_graphdef=tg)
  x, x_t, x_u = _images(8, 0), _images(8, 1), _images(5, 2)
  batch = {"image": x, "label": np.zeros(8, np.int32), "index": np.arange(8), "teacher_image": x_t, "unlabelled": x_u}

  def logit0(graphdef, params, rest, images):
    return float(jnp.mean(apply_model(graphdef, params, rest, to_float(images), train=False)[0][:, 0]))

  student_u0 = logit0(g, p, r, x_u)  # before the step, which takes (donates) the student's state
  _, m = step(init_train_state(p, r, tx, jax.random.key(0)), {"params": tp, "rest": tr}, batch)
  np.testing.assert_allclose(m["t0"], logit0(tg, tp, tr, x_t), rtol=1e-5)  # not x: the teacher's own images
  assert abs(logit0(tg, tp, tr, x) - logit0(tg, tp, tr, x_t)) > 1e-3
  np.testing.assert_allclose(m["u0"], student_u0, rtol=1e-5)
  np.testing.assert_allclose(m["ut0"], logit0(tg, tp, tr, x_u), rtol=1e-5)


def test_unlabelled_batches_are_the_same_streamed_resident_and_stacked():
  rng = np.random.default_rng(0)
  data = ArrayDataset("d", _images(96, 0), rng.integers(0, 10, 96), _images(40, 1), rng.integers(0, 10, 40), 10,
                      unlabelled_images=_images(50, 2))
  tg, tp, tr = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=0))

  def run(steps_per_call=1, resident_bytes=None):
    g, p, r = split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=1))
    tx = make_optimizer("sgd", learning_rate=0.05, total_steps=12)
    from kdjax.methods import make_method
    method = make_method("domain_kd", alpha=0.5, temperature=4.0, align="mmd", target_kd_weight=0.5)
    step = make_train_step(g, tx, method, teacher_graphdef=tg, jitter_pixels=1, steps_per_call=steps_per_call)
    res = fit(init_train_state(p, r, tx, jax.random.key(3)), step, None, data, epochs=2, batch_size=16,
              teacher_vars={"params": tp, "rest": tr}, progress=False, steps_per_call=steps_per_call,
              resident_bytes=resident_bytes, evaluate_fn=lambda *a: {"accuracy": 0.0, "errors": 0, "loss": 0.0})
    return res

  base = run()
  assert base.history[0]["train_align"] > 0 and base.history[0]["train_target_kl"] > 0
  with pytest.warns(UserWarning, match="streaming its batches from the host"):
    streamed = run(resident_bytes=0)
  for other in (streamed, run(steps_per_call=4)):  # 6 steps an epoch: a stack of 4, then of 2
    for a, b in zip(jax.tree.leaves(base.state.params), jax.tree.leaves(other.state.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_domain_pair_splits_the_domains_and_names_a_shape_mismatch(mnist):
  small = dataclasses.replace(mnist, train_images=mnist.train_images[:200], train_labels=mnist.train_labels[:200],
                              test_images=mnist.test_images[:50], test_labels=mnist.test_labels[:50])
  source, transfer = domain_pair(small, "invert")
  assert len(source.train_labels) == 100 and len(transfer.unlabelled_images) == 100
  np.testing.assert_array_equal(transfer.unlabelled_images, 255 - small.train_images[100:])  # the other half
  np.testing.assert_array_equal(transfer.test_images, 255 - small.test_images)
  np.testing.assert_array_equal(transfer.train_images, source.train_images)
  cifar_like = ArrayDataset("cifar_like", _images(10, 0, (32, 32, 3)), np.arange(10) % 10, _images(4, 1, (32, 32, 3)),
                            np.arange(4), 10)
  with pytest.raises(ValueError, match=r"target domain 'cifar_like' has images of shape \(32, 32, 3\), but the "
                                       r"source .* \(28, 28, 1\)"):
    domain_pair(small, cifar_like)
  with pytest.raises(ValueError, match=r"unlabelled target-domain images have shape \(32, 32, 3\), but the training "
                                       r"images \(and so the student\) have shape \(28, 28, 1\)"):
    dataclasses.replace(transfer, unlabelled_images=_images(3, 0, (32, 32, 3)))


def test_transforms():
  x = _images(3, 0, (8, 8, 1))
  np.testing.assert_array_equal(transform_images(x, "rotate:0"), x)
  np.testing.assert_array_equal(transform_images(x, "rotate:90"), np.rot90(x, 1, axes=(1, 2)))
  low = transform_images(x, "lowres:4")
  blocks = x.astype(float).reshape(3, 2, 4, 2, 4, 1).mean(axis=(2, 4))
  np.testing.assert_array_equal(low, np.rint(blocks).repeat(4, 1).repeat(4, 2).astype(np.uint8))
  assert (transform_images(x, "noise:0") == x).all() and (transform_images(x, "noise:0.2") != x).mean() > 0.5
  for bad in ("blur", "rotate:x", "noise:-1", "lowres:2.5", "invert:1"):
    with pytest.raises(ValueError, match="unknown or malformed transform"):
      transform_images(x, bad)


def test_cross_modal_distillation_checks_the_teachers_view(mnist):
  small = dataclasses.replace(mnist, train_images=mnist.train_images[:256], train_labels=mnist.train_labels[:256],
                              test_images=mnist.test_images[:100], test_labels=mnist.test_labels[:100])
  full, view = cross_modal_pair(small, "lowres:4")
  assert (view.teacher_train_images == small.train_images).all() and not (view.train_images == small.train_images).all()
  cfg = TrainConfig(model="mlp100", epochs=1, batch_size=64)
  teacher = train_teacher(full, cfg, progress=False)
  r = distill(view, cfg, teacher, alpha=0.5, temperature=4.0, progress=False)
  cached = distill(view, dataclasses.replace(cfg, teacher_cache="device"), teacher, alpha=0.5, temperature=4.0,
                   progress=False)  # the cache is of the teacher's images too
  stacked = distill(view, dataclasses.replace(cfg, steps_per_call=4), teacher, alpha=0.5, temperature=4.0,
                    progress=False)  # the teacher hoisted over a stack of its own images
  for other in (cached, stacked):
    for a, b in zip(jax.tree.leaves(r.params), jax.tree.leaves(other.params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  blind = distill(dataclasses.replace(view, teacher_train_images=None), cfg, teacher, alpha=0.5, temperature=4.0,
                  progress=False)  # the same teacher shown the low-resolution view instead: another run
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(r.params), jax.tree.leaves(blind.params)))
  wrong = dataclasses.replace(view, teacher_train_images=_images(256, 0, (32, 32, 1)))
  with pytest.raises(ValueError, match=r"takes inputs of shape \(28, 28, 1\), but .* would show it inputs of shape "
                                       r"\(32, 32, 1\)"):
    distill(wrong, cfg, teacher, alpha=0.5, temperature=4.0, progress=False)


@pytest.fixture(scope="module")
def negation():
  return negation_task(512, 128, seed=0)


def test_text_teacher_distils_saves_its_vocabulary_and_refuses_another(negation, tmp_path):
  cfg = TrainConfig(model="gru_small", epochs=1, batch_size=64, optimizer="adam", learning_rate=3e-3)
  teacher = train_teacher(negation, cfg, progress=False, checkpoint_dir=tmp_path / "t")
  assert (tmp_path / "t" / "vocab.json").exists()
  restored = restore_trained(tmp_path / "t", cfg, negation)
  again = evaluate(make_eval_step(restored.graphdef), restored.params, restored.rest, negation.test_images,
                   negation.test_labels)  # the restored weights themselves, not the stored history
  assert again == teacher.test
  for a, b in zip(jax.tree.leaves(teacher.params), jax.tree.leaves(restored.params), strict=True):
    np.testing.assert_array_equal(a, b)
  other = negation_task(512, 128, seed=0, vocab=("<pad>", "<unk>", *reversed(negation.vocab[2:])))
  with pytest.raises(ValueError, match=r"does not match the one saved with the model"):
    restore_trained(tmp_path / "t", cfg, other)
  with pytest.raises(ValueError, match=r"reads token ids of vocabulary .* but .* ids index vocabulary"):
    distill(other, dataclasses.replace(cfg, model="gru_small"), teacher, alpha=0.5, temperature=4.0, progress=False)
  with pytest.raises(ValueError, match="jitter and flips augment images"):
    train_teacher(negation, dataclasses.replace(cfg, jitter=2), progress=False)
  with pytest.raises(ValueError, match=r"model 'mlp800' reads images .* token sequences of length 40"):
    train_teacher(negation, dataclasses.replace(cfg, model="mlp800"), progress=False)


def test_sweeps_and_online_cohorts_refuse_data_they_cannot_read_yet(negation, tmp_path):
  from kdjax.presets import PRESETS
  from kdjax.sweep import run_sweep
  from kdjax.train import train_online
  with pytest.raises(ValueError, match="sweeps take labelled images only, but dataset 'negation' has text"):
    run_sweep(PRESETS["text_negation"], ["temperature=2,4"], out_dir=tmp_path, data=negation, progress=False)
  with pytest.raises(ValueError, match="online cohorts take labelled images only, but dataset 'negation' has text"):
    train_online(negation, TrainConfig(model="gru_small"), progress=False)
