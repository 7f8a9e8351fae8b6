"""Adversarial methods: ARD is its formula, the step attacks the student as it is before the update
(checked against PGD run by hand), ARD with no budget is Hinton KD with the weights swapped, and the
errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import synthetic_data

from kdjax.config import TrainConfig
from kdjax.losses import hard_cross_entropy, kl_divergence
from kdjax.methods import adversarial_training, ard, combine, hinton_kd, per_teacher
from kdjax.models import create_model, split_model
from kdjax.robustness import model_logits, pgd
from kdjax.train import init_train_state, make_train_step, train_student


def test_ard_is_its_formula():
  rng = np.random.default_rng(0)
  s, s_adv, t = (rng.normal(size=(6, 10)).astype(np.float32) * k for k in (1, 2, 3))
  y = rng.integers(0, 10, 6)
  loss, terms = ard(alpha=0.8, temperature=5.0, eps=0.1)(s, {}, (t, {}), {"label": y, "adversarial_student": (s_adv, {})},
                                                         {})
  by_hand = 0.8 * 25.0 * kl_divergence(s_adv, t, 5.0) + 0.2 * hard_cross_entropy(s, y)
  np.testing.assert_allclose(loss, by_hand, rtol=1e-6)
  np.testing.assert_allclose(terms["adv_ce"], hard_cross_entropy(s_adv, y), rtol=1e-6)
  with pytest.raises(ValueError, match="needs the train step to attack the student"):
    ard(eps=0.1)(s, {}, (t, {}), {"label": y}, {})


def _mlp(seed):
  return split_model(create_model("mlp100", num_classes=10, input_shape=(28, 28, 1), seed=seed))


def _copies(*trees):
  return jax.tree.map(jnp.copy, trees)


@pytest.fixture(scope="module")
def pair():
  data = synthetic_data((28, 28, 1), n=32, n_test=8)
  batch = {"image": data.train_images[:16], "label": data.train_labels[:16]}
  return _mlp(0), _mlp(1), batch


def test_the_step_attacks_the_student_before_its_update_with_pgd(pair):
  (graphdef, params, rest), _, batch = pair
  method = adversarial_training(eps=0.1, steps=3)
  tx = optax.sgd(0.1)
  state = init_train_state(*_copies(params, rest), tx, jax.random.key(5))  # the step donates the state
  # The attack's start is drawn from the method's key: the fourth of the step's four keys.
  k_method = jax.random.split(state.rng, 4)[3]
  x = jnp.asarray(batch["image"], jnp.float32) / 255.0
  x_adv = pgd(model_logits(graphdef, params, rest), jax.random.fold_in(k_method, 1 << 20), x, batch["label"], 0.1,
              steps=3)
  expected = jnp.mean(hard_cross_entropy(model_logits(graphdef, params, rest)(x_adv), batch["label"]))
  clean = jnp.mean(hard_cross_entropy(model_logits(graphdef, params, rest)(x), batch["label"]))
  _, metrics = make_train_step(graphdef, tx, method)(state, None, batch)
  np.testing.assert_allclose(metrics["adv_ce"], expected, rtol=1e-5)
  assert float(metrics["adv_ce"]) > float(clean) + 0.05  # the attack raised the loss


def test_ard_with_no_budget_is_hinton_kd_with_the_weights_swapped(pair):
  (graphdef, params, rest), (t_graphdef, t_params, t_rest), batch = pair
  tx = optax.sgd(0.1, momentum=0.9)
  teacher = {"params": t_params, "rest": t_rest}
  out = {}
  for name, method in {"ard": ard(alpha=0.3, temperature=4.0, eps=0.0),
                       "hinton": hinton_kd(alpha=0.7, temperature=4.0)}.items():
    state = init_train_state(*_copies(params, rest), tx, jax.random.key(0))
    step = make_train_step(graphdef, tx, method, teacher_graphdef=t_graphdef)
    for _ in range(2):
      state, metrics = step(state, teacher, batch)
    out[name] = state.params
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out["ard"], out["hinton"])


def test_combine_attacks_once_for_all_parts_and_refuses_two_attacks():
  method = combine({"ard": (1.0, ard(eps=0.1, steps=2)), "kd": (0.5, hinton_kd(alpha=0.5, temperature=4.0))})
  assert method.adversary == ard(eps=0.1, steps=2).adversary and method.needs_teacher
  with pytest.raises(ValueError, match="attack the student in different ways"):
    combine({"a": (1.0, ard(eps=0.1)), "b": (1.0, adversarial_training(eps=0.2))})
  # ARD from several teachers: the student's adversarial examples are matched to each teacher
  assert per_teacher({"a": (1.0, ard(eps=0.1)), "b": (1.0, ard(eps=0.1))}).adversary == ard(eps=0.1).adversary


def test_bad_attack_settings_and_text_data_are_errors():
  for bad in (-0.1, np.float64(-0.1), np.float32("nan"), np.array([0.1, 0.2])):
    with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
      ard(eps=bad)
  with pytest.raises(ValueError, match="step_size must be > 0"):
    ard(eps=0.1, step_size=np.float64(-0.01))
  with pytest.raises(ValueError, match="PGD needs steps >= 1"):
    adversarial_training(steps=0)
  with pytest.raises(ValueError, match="step_size must be > 0"):
    ard(eps=0.1, step_size=0.0)
  from kdjax.data.text import negation_task
  text = negation_task(64, 16, seed=0)
  with pytest.raises(ValueError, match="perturb pixels .* not token ids"):
    train_student(text, TrainConfig(model="gru_small", epochs=1), method=adversarial_training(), progress=False)


def test_adversarial_training_trains_through_fit(small_mnist):
  data = dataclasses.replace(small_mnist, train_images=small_mnist.train_images[:500],
                             train_labels=small_mnist.train_labels[:500], test_images=small_mnist.test_images[:200],
                             test_labels=small_mnist.test_labels[:200])
  r = train_student(data, TrainConfig(model="mlp100", epochs=2, batch_size=50, learning_rate=0.1),
                    method=adversarial_training(eps=0.05, steps=2), progress=False)
  first, last = r.fit.history[0], r.fit.history[-1]
  assert np.isfinite(last["train_adv_ce"]) and last["train_adv_ce"] < first["train_adv_ce"]
  assert r.test["accuracy"] > 0.5
