"""Weights from PyTorch into kdjax's vision models (kdjax.pretrained.vision).

torchvision's ResNets and RepDistiller's CIFAR zoo give, in kdjax, the logits they give in PyTorch;
RepDistiller's own models are represented by tests/data/repdistiller_keys.json (their state-dict names
and shapes, and their logits for fixed weights on a fixed input, made by running RepDistiller's code);
tests/torch_cifar_refs.py holds PyTorch modules written for these tests with RepDistiller's names.
A state dict that does not fit is refused naming every tensor, before anything is placed; ``kdjax
distill --teacher-weights`` distills from an imported teacher.
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import torch  # noqa: E402  (the test extra installs it: a missing one fails, never skips)
import torchvision  # noqa: E402

from torch_cifar_refs import REFS, manifest_input, seeded_state_dict  # noqa: E402

from kdjax.cli import main  # noqa: E402
from kdjax.models import apply_model, create_model, split_model  # noqa: E402
from kdjax.pretrained import load_state_dict, state_dict_digest  # noqa: E402
from kdjax.pretrained.vision import (INPUT_NORMS, REPDISTILLER_NAMES, import_repdistiller,  # noqa: E402
                                     import_torchvision_resnet, import_weights, repdistiller_table, supported_models,
                                     with_input_normalization)

MANIFEST = json.loads((Path(__file__).parent / "data" / "repdistiller_keys.json").read_text())["models"]
# Logits checked against RepDistiller's own in the default run: one network of each code path that
# compiles fast; the deeper and wider ones (the released teachers) in the slow set.
FAST = ("resnet8x4", "resnet32x4", "wrn_16_2", "vgg8", "vgg13", "ShuffleV2")


def _logits(model, x_nhwc):
  """kdjax ``model``'s logits in inference mode (one jitted program: faster than op by op)."""
  graphdef, params, rest = split_model(model)
  return np.asarray(jax.jit(lambda p, r, x: apply_model(graphdef, p, r, x, train=False)[0])(params, rest, x_nhwc))


def _nhwc(x_nchw):
  return np.ascontiguousarray(np.transpose(x_nchw, (0, 2, 3, 1)))


def _randomize_batch_norm(net, seed=0, size=32):
  """Random BatchNorm scales and shifts, and running statistics measured on random images (the averages of
  one training-mode pass over 16 of them): each one matters, and the logits depend on the input."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: after one pass, that pass's statistics
    net.train()(torch.randn(16, 3, size, size, generator=g))
  return net.eval()


def _state_dict(net):
  return {k: v.numpy() for k, v in net.state_dict().items()}


# torchvision's ImageNet ResNets.


@pytest.mark.parametrize("name", ["resnet18", "resnet50", pytest.param("resnet34", marks=pytest.mark.slow)])
def test_torchvision_resnet_gives_torchs_logits(name):
  torch.manual_seed(0)
  net = _randomize_batch_norm(getattr(torchvision.models, name)(weights=None, num_classes=10), size=64)
  x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  model = import_weights(net.state_dict(), name, input_shape=(64, 64, 3))  # built for fc.weight's 10 classes
  out = _logits(model, _nhwc(x))
  scale = np.abs(ref).max()
  assert np.abs(out - ref).max() <= 1e-4 * max(scale, 1.0), (np.abs(out - ref).max(), scale)
  assert out.shape == (2, 10) and np.abs(np.diff(ref, axis=0)).max() > 0.1 * scale  # the input matters


def test_torchvision_resnet_into_a_given_model_checks_its_classes():
  sd = _state_dict(torchvision.models.resnet18(weights=None))  # 1000 classes
  model = nnx.eval_shape(lambda: create_model("resnet18", num_classes=10, input_shape=(32, 32, 3)))  # shapes only
  with pytest.raises(ValueError, match=r"the weights predict 1000 classes \(fc.weight \(1000, 512\)\), but the kdjax "
                                       r"resnet18 is built for 10"):
    import_torchvision_resnet(sd, model)
  with pytest.raises(ValueError, match=r"the weights do not fit the torchvision resnet18: missing \(55\): .*; "
                                       r"mis-shaped \(46\): conv1.weight \(16, 3, 3, 3\) \(expected "
                                       r"\(64, 3, 7, 7\)\), .*"
                                       r"\(the weights look like a RepDistiller CIFAR ResNet"):
    import_weights(_state_dict(REFS["resnet8"](1000)), "resnet18")


# RepDistiller's CIFAR zoo.


@pytest.mark.parametrize("arch", sorted(REFS))
def test_reference_modules_have_repdistillers_names_and_shapes(arch):
  shapes = {k: list(v.shape) for k, v in REFS[arch](100).state_dict().items()}
  if arch in MANIFEST:
    assert shapes == MANIFEST[arch]["state_dict"]  # names, shapes and their order, as RepDistiller's models
  # the importer takes exactly these: every name of its table, and BatchNorm's counters (ignored)
  model = import_repdistiller(seeded_state_dict(shapes, 0), None, arch)
  names = {row[0] for row in repdistiller_table(model, arch)}
  assert names | {k for k in shapes if k.endswith("num_batches_tracked")} == set(shapes)


def test_every_importable_cifar_model_is_covered():
  assert set(REPDISTILLER_NAMES.values()) == set(REFS)
  assert set(REPDISTILLER_NAMES) <= set(supported_models())
  assert {"resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "resnet8x4", "resnet20", "wrn_16_2", "vgg8",
          "MobileNetV2", "ShuffleV1", "ShuffleV2"} <= set(MANIFEST)  # the released teachers and students


@pytest.mark.parametrize("arch", [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in MANIFEST])
def test_imported_repdistiller_weights_give_repdistillers_logits(arch):
  entry = MANIFEST[arch]
  model = import_repdistiller(seeded_state_dict(entry["state_dict"], 0), None, arch)
  out = _logits(model, _nhwc(manifest_input()))
  np.testing.assert_allclose(out, np.asarray(entry["logits"], np.float32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet8", pytest.param("MobileNetV2", marks=pytest.mark.slow),
                                  pytest.param("ShuffleV1", marks=pytest.mark.slow)])
def test_random_torch_weights_give_the_torch_modules_logits(arch):
  torch.manual_seed(1)
  net = _randomize_batch_norm(REFS[arch](10), seed=1)
  x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  out = _logits(import_repdistiller(net.state_dict(), None, arch), _nhwc(x))
  assert np.abs(out - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1.0)


# Errors, by name.


@pytest.fixture(scope="module")
def resnet8_weights():
  return seeded_state_dict(MANIFEST["resnet8"]["state_dict"], 0)


def test_a_missing_tensor_is_named(resnet8_weights):
  sd = dict(resnet8_weights)
  del sd["layer2.0.downsample.1.running_var"]
  with pytest.raises(ValueError, match=r"the weights do not fit the RepDistiller resnet8: missing \(1\): "
                                       r"layer2.0.downsample.1.running_var$"):
    import_repdistiller(sd, None, "resnet8")


def test_a_mis_shaped_tensor_is_named_with_both_shapes(resnet8_weights):
  sd = dict(resnet8_weights)
  sd["layer1.0.conv2.weight"] = np.zeros((16, 16, 1, 1), np.float32)
  model = create_model("resnet8", num_classes=100, input_shape=(32, 32, 3))
  before = np.asarray(model.conv1.kernel[...]).copy()
  with pytest.raises(ValueError, match=r"mis-shaped \(1\): layer1.0.conv2.weight \(16, 16, 1, 1\) \(expected "
                                       r"\(16, 16, 3, 3\)\)"):
    import_repdistiller(sd, model, "resnet8")
  np.testing.assert_array_equal(model.conv1.kernel[...], before)  # nothing placed


def test_an_extra_tensor_is_named_as_unexpected(resnet8_weights):
  sd = {**resnet8_weights, "fc2.weight": np.zeros((3, 3), np.float32)}
  with pytest.raises(ValueError, match=r"unexpected \(1\): fc2.weight"):
    import_repdistiller(sd, None, "resnet8")


def test_weights_of_another_network_are_refused_naming_the_difference():
  with pytest.raises(ValueError, match=r"RepDistiller resnet20: missing \(60\): layer1.1.conv1.weight, .*more$"):
    import_repdistiller(seeded_state_dict(MANIFEST["resnet8"]["state_dict"], 0), None, "resnet20")  # too shallow
  with pytest.raises(ValueError, match=r"RepDistiller vgg8: missing .*\(the weights look like RepDistiller's "
                                       r"ShuffleV2"):
    import_repdistiller(seeded_state_dict(MANIFEST["ShuffleV2"]["state_dict"], 0), None, "vgg8")
  with pytest.raises(ValueError, match=r"no weight import for kdjax model 'mlp800'; importable: .*resnet18.*vgg13"):
    import_weights({}, "mlp800")
  with pytest.raises(ValueError, match=r"RepDistiller's CIFAR ResNet50 .* is not in kdjax's zoo"):
    import_repdistiller({}, None, "ResNet50")
  with pytest.raises(TypeError, match=r"RepDistiller VGG weights go into a kdjax VGG, not a CifarResNet"):
    import_repdistiller({}, create_model("resnet8", num_classes=10, input_shape=(32, 32, 3)), "vgg8")


# Files.


def test_repdistiller_and_safetensors_files_load(tmp_path, resnet8_weights):
  from safetensors.numpy import save_file
  sd = {k: torch.from_numpy(np.asarray(v)) for k, v in resnet8_weights.items()}
  torch.save({"model": sd, "epoch": 240, "accuracy": 71.3}, tmp_path / "ckpt_epoch_240.pth")  # a released teacher
  torch.save({"opt": argparse.Namespace(model="resnet8", learning_rate=0.05), "model": sd}, tmp_path / "last.pth")
  save_file({k: np.asarray(v) for k, v in resnet8_weights.items()}, str(tmp_path / "resnet8.safetensors"))
  digests = set()
  for name in ("ckpt_epoch_240.pth", "last.pth", "resnet8.safetensors"):
    loaded = load_state_dict(tmp_path / name)
    assert sorted(loaded) == sorted(resnet8_weights)
    digests.add(state_dict_digest(loaded))
    model = import_weights(tmp_path / name, "resnet8")
    np.testing.assert_array_equal(model.fc.kernel[...], resnet8_weights["fc.weight"].T)
  assert len(digests) == 1
  (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match=r"cannot read .*broken.pth as a PyTorch file"):
    load_state_dict(tmp_path / "broken.pth")


def test_input_normalization_is_put_in_front():
  net = _randomize_batch_norm(REFS["resnet8"](10))
  mean, std = INPUT_NORMS["cifar100"]
  x = np.random.default_rng(2).uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    ref = net((torch.from_numpy(x) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).numpy()
  model = with_input_normalization(import_repdistiller(net.state_dict(), None, "resnet8"), "cifar100", channels=3)
  np.testing.assert_allclose(_logits(model, _nhwc(x)), ref, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"unknown input normalization 'imagenet1k'; use one of none, imagenet, "
                                       r"cifar100"):
    with_input_normalization(model, "imagenet1k")
  with pytest.raises(ValueError, match=r"one value per input channel \(1\)"):
    with_input_normalization(model, "imagenet", channels=1)


# The command line: kdjax distill --teacher-weights.


def _cifar_like(path, rng, n_train=64, n_test=48, classes=10):
  """Random 32x32 RGB images with random labels, written as an IDX directory."""
  from kdjax.data import write_idx
  from kdjax.data.idx import IDX_FILES
  path.mkdir()
  arrays = {"train_images": rng.integers(0, 256, (n_train, 32, 32, 3)),
            "train_labels": rng.integers(0, classes, n_train),
            "test_images": rng.integers(0, 256, (n_test, 32, 32, 3)), "test_labels": rng.integers(0, classes, n_test)}
  arrays["train_labels"][:classes] = np.arange(classes)  # every class present
  for key, name in IDX_FILES.items():
    write_idx(path / name, arrays[key].astype(np.uint8))
  return {k: v.astype(np.uint8) for k, v in arrays.items()}


_STUDY = ["--config", "resnet_mnist", "--seeds", "0", "--set", "num_classes=10", "--set", "teacher.model=resnet8",
          "--set", "student.model=cnn16", "--set", "distilled.model=cnn16", "--set", "augmented_control=false",
          "--set", "student.epochs=1", "--set", "distilled.epochs=1", "--set", "student.batch_size=32",
          "--set", "distilled.batch_size=32"]


def test_cli_distills_from_an_imported_teacher(tmp_path, capsys):
  data = _cifar_like(tmp_path / "data", np.random.default_rng(3))
  net = _randomize_batch_norm(REFS["resnet8"](10), seed=3)
  weights = tmp_path / "resnet8_cifar.pth"
  torch.save({"model": net.state_dict(), "epoch": 240}, weights)  # RepDistiller's checkpoint layout
  code = main(["distill", "--no-progress", "--workdir", str(tmp_path / "runs"), "--data", f"idx:{tmp_path / 'data'}",
               *_STUDY, "--teacher-weights", str(weights), "--teacher-input-norm", "cifar100",
               "--allow-unhealthy"])  # random weights: a teacher at chance, judged so
  out = capsys.readouterr().out
  assert code == 0, out
  results = json.loads((tmp_path / "runs" / "resnet_mnist" / "results.json").read_text())
  teacher = results["runs"]["teacher"][0]
  assert teacher["imported_from"] == {"path": str(weights), "sha256": state_dict_digest(load_state_dict(weights)),
                                      "input_norm": "cifar100"}
  assert teacher["identity"] == f"weights:{teacher['imported_from']['sha256']}+input_norm:cifar100"
  # The teacher's test accuracy is the PyTorch network's on the same images, normalized as RepDistiller does.
  mean, std = INPUT_NORMS["cifar100"]
  x = torch.from_numpy(data["test_images"].astype(np.float32) / 255).permute(0, 3, 1, 2)
  with torch.no_grad():
    predicted = net((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).argmax(1).numpy()
  assert teacher["accuracy"] == float(np.mean(predicted == data["test_labels"]))
  assert teacher["errors"] == int(np.sum(predicted != data["test_labels"]))
  assert "health" in teacher and len(results["runs"]["distilled"]) == 1
  lines = (tmp_path / "runs" / "resnet_mnist" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["run"] for x in lines] == ["student", "distilled"]  # the teacher was not trained


def test_cli_refuses_wrong_teacher_weights_before_training(tmp_path, capsys):
  _cifar_like(tmp_path / "data", np.random.default_rng(4))
  weights = tmp_path / "resnet8x4.pth"
  torch.save({"model": REFS["resnet8x4"](10).state_dict()}, weights)
  argv = ["distill", "--no-progress", "--workdir", str(tmp_path / "runs"), "--data", f"idx:{tmp_path / 'data'}",
          *_STUDY]
  assert main([*argv, "--teacher-weights", str(weights)]) == 2
  err = capsys.readouterr().err
  assert "do not fit the RepDistiller resnet8: mis-shaped (46): conv1.weight (32, 3, 3, 3) (expected (16, 3, 3, 3))" \
      in err, err
  assert not (tmp_path / "runs" / "resnet_mnist").exists()  # nothing trained, nothing written
  assert main([*argv, "--teacher-weights", str(weights), "--teacher-checkpoint", str(tmp_path)]) == 2
  assert "not both" in capsys.readouterr().err
  assert main(["distill", "--config", "lm_tiny", "--teacher-input-norm", "imagenet"]) == 2  # pixels only
  assert "--teacher-input-norm do not apply to a language-model study" in capsys.readouterr().err
  assert main([*argv, "--teacher-input-norm", "imagenet"]) == 2
  assert "--teacher-input-norm goes with --teacher-weights" in capsys.readouterr().err


def test_half_precision_safetensors_load_as_float32_with_the_digest_of_the_same_values(tmp_path, resnet8_weights):
  """bfloat16 (which NumPy cannot read) and float16 weights come back float32, integers as they were, so
  a file's precision changes nothing but its values' rounding."""
  import ml_dtypes
  from safetensors.numpy import save_file

  from kdjax.pretrained import load_state_dict, state_dict_digest
  rounded = {}
  for dtype, name in ((ml_dtypes.bfloat16, "bf16"), (np.float16, "f16")):
    half = {k: np.asarray(v).astype(dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else np.asarray(v)
            for k, v in resnet8_weights.items()}
    save_file(half, str(tmp_path / f"{name}.safetensors"))
    loaded = load_state_dict(tmp_path / f"{name}.safetensors")
    for k, v in half.items():
      assert loaded[k].dtype == (np.float32 if v.dtype == dtype else v.dtype), k
      np.testing.assert_array_equal(loaded[k], v.astype(loaded[k].dtype))
    rounded[name] = {k: v.astype(np.float32) if v.dtype == dtype else v for k, v in half.items()}
    assert state_dict_digest(loaded) == state_dict_digest(rounded[name])
  assert not np.array_equal(rounded["bf16"]["fc.weight"], rounded["f16"]["fc.weight"])
