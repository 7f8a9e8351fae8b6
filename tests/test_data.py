import hashlib
import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.data import jitter, load_dataset, load_idx_dir, read_idx, write_idx
from kdjax.data.builtin import BUILTIN_SHA256


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 7).astype(np.uint8)
  write_idx(tmp_path / f"img{suffix}", images)
  write_idx(tmp_path / f"lbl{suffix}", labels)
  np.testing.assert_array_equal(read_idx(tmp_path / f"img{suffix}"), images)
  np.testing.assert_array_equal(read_idx(tmp_path / f"lbl{suffix}"), labels)


def test_idx_header_is_the_original_format(tmp_path):
  write_idx(tmp_path / "x", np.zeros((2, 3, 4), np.uint8))
  raw = (tmp_path / "x").read_bytes()
  assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:16] == bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
  assert len(raw) == 16 + 24


def test_idx_reader_rejects_bad_files(tmp_path):
  (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
  with pytest.raises(ValueError, match="not an IDX file"):
    read_idx(tmp_path / "bad")
  write_idx(tmp_path / "short", np.zeros((4, 4), np.uint8))
  (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
  with pytest.raises(ValueError, match="header says shape"):
    read_idx(tmp_path / "short")


def _write_mnist_dir(path, n_train=12, n_test=5):
  rng = np.random.default_rng(1)
  arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
            "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) % 10).astype(np.uint8)}
  path.mkdir(parents=True, exist_ok=True)
  for name, a in arrays.items():
    write_idx(path / name, a)
  return arrays


def test_idx_directory_loads_as_a_dataset(tmp_path):
  arrays = _write_mnist_dir(tmp_path / "mnist")
  d = load_dataset(f"idx:{tmp_path / 'mnist'}")
  assert d.image_shape == (28, 28, 1) and d.num_classes == 10
  np.testing.assert_array_equal(d.train_images[..., 0], arrays["train-images-idx3-ubyte.gz"])
  np.testing.assert_array_equal(d.test_labels, arrays["t10k-labels-idx1-ubyte.gz"])


def test_missing_or_empty_data_paths_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_idx_dir(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no complete IDX dataset.*train-images-idx3-ubyte"):
    load_idx_dir(tmp_path / "empty")


def test_mismatched_label_count_is_rejected(tmp_path):
  _write_mnist_dir(tmp_path / "m")
  write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
  with pytest.raises(ValueError, match="12 images but labels of shape"):
    load_idx_dir(tmp_path / "m")


def test_builtin_subset(mnist):
  blob = importlib.resources.files("kdjax.data").joinpath("mnist_subset.npz").read_bytes()
  assert len(blob) <= 2_000_000 and hashlib.sha256(blob).hexdigest() == BUILTIN_SHA256
  assert mnist.train_images.shape == (10000, 28, 28, 1) and mnist.test_images.shape == (2000, 28, 28, 1)
  assert mnist.train_images.dtype == np.uint8
  # every class is present in both splits, roughly balanced
  assert np.bincount(mnist.train_labels, minlength=10).min() > 800
  assert np.bincount(mnist.test_labels, minlength=10).min() > 150


def test_unknown_dataset_spec():
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
    load_dataset("imagenet")
  with pytest.raises(ValueError, match="unsupported TFDS dataset"):
    load_dataset("tfds:imagenet2012")


@pytest.mark.parametrize("name,shape,classes", [("mnist", (28, 28, 1), 10), ("fashion_mnist", (28, 28, 1), 10),
                                                ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)])
def test_tfds_path_under_mock_data(name, shape, classes):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    d = load_dataset(f"tfds:{name}")
  assert d.image_shape == shape and d.num_classes == classes
  assert len(d.train_labels) == 24 and d.train_images.dtype == np.uint8


def test_tfds_without_prepared_data_fails_fast(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(FileNotFoundError, match="not prepared.*downloads are off"):
    load_dataset("tfds:mnist", tfds_data_dir=str(tmp_path))


def test_jitter_translates_by_at_most_two_pixels():
  img = jnp.zeros((64, 28, 28, 1)).at[:, 14, 14, 0].set(1.0)
  out = jitter(jax.random.key(0), img, 2)
  assert out.shape == img.shape
  np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 1.0)  # content moved, not lost
  pos = np.argwhere(np.asarray(out[..., 0]) == 1.0)[:, 1:]
  shifts = pos - 14
  assert np.abs(shifts).max() <= 2
  assert len({tuple(s) for s in shifts}) > 10  # many different shifts, per image
  np.testing.assert_array_equal(out, jitter(jax.random.key(0), img, 2))  # same key, same views
  np.testing.assert_array_equal(jitter(jax.random.key(0), img, 0), img)
