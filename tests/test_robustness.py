"""Robustness evaluation: FGSM and PGD stay in the ε-ball and the valid range, PGD of one step from
the clean image is FGSM, attacks lower the accuracy of a trained model, corruptions do what they
say, and bad budgets are errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import TrainConfig
from kdjax.robustness import (box_blur, contrast, fgsm, gaussian_noise, model_logits, pgd, robustness_report,
                              translate)
from kdjax.train import train_student


def _linear(seed=0, d=12, k=3):
  w = jax.random.normal(jax.random.key(seed), (d, k))
  return lambda x: x.reshape(x.shape[0], -1) @ w


def _images(n=6, shape=(2, 2, 3), seed=1):
  return jax.random.uniform(jax.random.key(seed), (n, *shape))


def test_fgsm_moves_every_pixel_by_exactly_epsilon_unless_clipped_and_stays_in_range():
  f, x, y = _linear(), _images(), jnp.array([0, 1, 2, 0, 1, 2])
  x = x.at[0, 0, 0, 0].set(0.0).at[1, 0, 0, 0].set(1.0)  # pixels on the range's edges
  eps = 0.1
  adv = fgsm(f, x, y, eps)
  moved = jnp.abs(adv - x)
  assert float(moved.max()) <= eps + 1e-6 and float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
  inside = (x >= eps) & (x <= 1 - eps)  # where clipping cannot bite, a linear model moves every pixel by ε
  np.testing.assert_allclose(moved[inside], eps, atol=1e-6)
  # The step goes up the loss: the true class's logit falls for every example.
  true_logit = lambda z: jnp.take_along_axis(f(z), y[:, None], 1)[:, 0]  # noqa: E731
  assert bool(jnp.all(true_logit(adv) < true_logit(x)))


def test_pgd_of_one_step_from_the_clean_image_is_fgsm():
  f, x, y = _linear(seed=3), _images(seed=4), jnp.array([2, 1, 0, 2, 1, 0])
  for eps in (0.03, 0.2):
    np.testing.assert_allclose(pgd(f, jax.random.key(0), x, y, eps, steps=1, step_size=eps, random_start=False),
                               fgsm(f, x, y, eps), atol=1e-7)


def test_pgd_stays_in_the_ball_and_the_range_and_beats_the_clean_loss():
  import optax
  f, x, y = _linear(seed=5), _images(seed=6), jnp.array([0, 0, 1, 1, 2, 2])
  adv = pgd(f, jax.random.key(1), x, y, 0.1, steps=7)
  assert float(jnp.abs(adv - x).max()) <= 0.1 + 1e-6 and 0.0 <= float(adv.min()) and float(adv.max()) <= 1.0
  loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(f(z), y).sum()  # noqa: E731
  assert float(loss(adv)) > float(loss(x))
  other = pgd(f, jax.random.key(2), x, y, 0.1, steps=7)  # the random start is drawn from the key
  assert not np.allclose(pgd(f, jax.random.key(1), x, y, 0.1, steps=1, step_size=0.01),
                         pgd(f, jax.random.key(2), x, y, 0.1, steps=1, step_size=0.01))
  assert float(jnp.abs(other - x).max()) <= 0.1 + 1e-6


def test_bad_budgets_and_levels_are_errors():
  f, x, y = _linear(), _images(), jnp.zeros(6, jnp.int32)
  with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
    fgsm(f, x, y, -0.1)
  with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
    pgd(f, jax.random.key(0), x, y, float("nan"))
  with pytest.raises(ValueError, match="steps >= 1"):
    pgd(f, jax.random.key(0), x, y, 0.1, steps=0)
  with pytest.raises(ValueError, match="step_size must be > 0"):
    pgd(f, jax.random.key(0), x, y, 0.1, step_size=0.0)
  with pytest.raises(ValueError, match="odd integer"):
    box_blur(x, 2)
  with pytest.raises(ValueError, match="noise sigma must be >= 0"):
    gaussian_noise(jax.random.key(0), x, -1.0)


def test_corruptions():
  x = _images(2, (6, 6, 1))
  np.testing.assert_allclose(box_blur(x, 1), x)
  blurred = box_blur(x, 3)
  np.testing.assert_allclose(blurred[:, 2, 3, 0], x[:, 1:4, 2:5, 0].mean((1, 2)), rtol=1e-6)
  low = contrast(x, 0.5)
  np.testing.assert_allclose(low.std((1, 2, 3)), 0.5 * x.std((1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(low.mean((1, 2, 3)), x.mean((1, 2, 3)), rtol=1e-5)
  moved = translate(x, 2)
  np.testing.assert_array_equal(moved[:, 2:, 2:], x[:, :-2, :-2])
  assert float(jnp.abs(moved[:, :2]).max()) == 0.0
  noisy = gaussian_noise(jax.random.key(0), jnp.full((1, 64, 64, 1), 0.5), 0.1)
  assert abs(float(noisy.std()) - 0.1) < 0.01


def test_report_on_a_trained_student(small_mnist):
  data = dataclasses.replace(small_mnist, test_images=small_mnist.test_images[:200],
                             test_labels=small_mnist.test_labels[:200])
  r = train_student(data, TrainConfig(model="mlp100", epochs=2, batch_size=100, learning_rate=0.1), progress=False)
  report = robustness_report(r.graphdef, r.params, r.rest, data.test_images, data.test_labels, noise=(0.3,),
                             corruptions={"blur": (3,)}, fgsm_eps=(0.0, 0.1), pgd_eps=(0.1,), pgd_steps=5)
  assert report["clean"] == pytest.approx(r.test["accuracy"])
  assert report["fgsm 0"] == report["clean"]  # no budget, no attack
  assert report["clean"] > 0.8 and report["pgd 0.1"] <= report["fgsm 0.1"] + 0.02 and report["fgsm 0.1"] < report["clean"] - 0.2
  assert set(report) == {"clean", "noise 0.3", "blur 3", "fgsm 0", "fgsm 0.1", "pgd 0.1"}
  with pytest.raises(ValueError, match="unknown corruption 'fog'"):
    robustness_report(r.graphdef, r.params, r.rest, data.test_images, data.test_labels, corruptions={"fog": (1,)})
  with pytest.raises(ValueError, match="contrast factor must be >= 0"):  # checked before the traced runs
    robustness_report(r.graphdef, r.params, r.rest, data.test_images, data.test_labels, corruptions={"contrast": (-0.5,)})
  with pytest.raises(ValueError, match="epsilon must be a finite number >= 0"):
    robustness_report(r.graphdef, r.params, r.rest, data.test_images, data.test_labels, pgd_eps=np.array([0.1, -0.1]))
  assert model_logits(r.graphdef, r.params, r.rest)(jnp.zeros((1, 28, 28, 1))).shape == (1, 10)
