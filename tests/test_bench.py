"""kdjax.bench and `kdjax bench`: the reports' fields and their sanity, each mode, the errors.

Tiny MLPs on the CPU, few steps: these check what is measured and reported, never a speed.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

import kdjax.bench as bench
from kdjax.bench import add_ratios, bench_kd, format_table, peak_tflops_for, to_jsonl, write_jsonl
from kdjax.cli import main

PAIR = ("mlp800", "mlp100")  # 784-800-800-10 teacher, 784-100-100-10 student: quick to compile
SMALL = dict(batch=8, steps=2, windows=2, warmup=1, num_classes=10)


def dense_flops(sizes):
  return sum(2 * a * b for a, b in zip(sizes, sizes[1:]))


# Teacher forward once, student forward and backward (about 3x its forward), per image.
TEACHER_FWD = dense_flops([784, 800, 800, 10])
STUDENT_FWD = dense_flops([784, 100, 100, 10])
ANALYTIC_KD = TEACHER_FWD + 3 * STUDENT_FWD


@pytest.fixture(scope="module")
def step_report():
  return bench_kd(*PAIR, **SMALL)


@pytest.fixture(scope="module")
def cached_report():
  return bench_kd(*PAIR, mode="cached", **SMALL)


def test_step_report_fields_and_sanity(step_report):
  r = step_report
  assert {k: r[k] for k in ("teacher", "student", "method", "batch", "precision", "steps_per_call", "mode",
                            "students", "num_classes", "steps", "windows", "augment")} == {
      "teacher": "mlp800", "student": "mlp100", "method": "hinton", "batch": 8, "precision": "fp32",
      "steps_per_call": 1, "mode": "step", "students": 1, "num_classes": 10, "steps": 2, "windows": 2,
      "augment": False}
  assert r["input_shape"] == [28, 28, 1] and r["method_options"] == {"alpha": 0.5, "temperature": 4.0}
  assert r["platform"] == "cpu" and r["device"].startswith("cpu:")
  assert r["jax"] == jax.__version__ and r["flax"] and r["date"]
  assert r["compile_s"] > 0 and r["first_call_s"] > 0 and r["first_epoch_s"] is None
  assert len(r["window_images_per_s"]) == 2 and all(x > 0 for x in r["window_images_per_s"])
  assert min(r["window_images_per_s"]) <= r["images_per_s"] <= max(r["window_images_per_s"])
  # XLA's count against the dense layers' 2·in·out (plus softmaxes, the optimizer, ...).
  assert r["flops_source"] == "compiled step"
  assert 0.5 < r["flops_per_image"] / ANALYTIC_KD < 2.0
  assert r["tflops_per_s"] == pytest.approx(r["flops_per_image"] * r["images_per_s"] / 1e12, rel=1e-2, abs=1e-4)
  assert r["mfu"] is None and r["peak_tflops"] is None  # no peak known for a CPU
  assert r["peak_memory_bytes"] is None or r["peak_memory_bytes"] > 0
  assert r["program_memory_bytes"] is None or r["program_memory_bytes"] > 0
  assert json.loads(json.dumps(r)) == r


def test_scanned_steps_count_flops_per_step_and_take_a_peak(step_report):
  r = bench_kd(*PAIR, steps_per_call=2, peak_tflops=0.5, **SMALL)
  assert r["steps_per_call"] == 2 and r["steps"] == 2 and r["images_per_s"] > 0
  assert "steps_per_call=1" in r["flops_source"]  # XLA counts a scan's body once: the single step's count
  assert r["flops_per_image"] == pytest.approx(step_report["flops_per_image"], rel=0.1)
  assert r["peak_tflops"] == 0.5 and r["peak_source"] == "given"
  assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 0.5, rel=1e-3, abs=1e-6)


def test_cached_mode_runs_no_teacher(step_report, cached_report):
  r = cached_report
  assert r["mode"] == "cached" and r["images_per_s"] > 0 and r["teacher"] == "mlp800"
  assert 0.5 < r["flops_per_image"] / (3 * STUDENT_FWD) < 2.0  # the student's work only
  assert r["flops_per_image"] < 0.5 * step_report["flops_per_image"]


def test_epoch_mode_times_whole_epochs(step_report, cached_report):
  r = bench_kd(*PAIR, mode="epoch", epoch_size=35, **SMALL)
  assert r["mode"] == "epoch" and r["augment"] is True  # crop and flip on the device by default
  assert r["epoch_size"] == 32 and r["steps"] == 4  # whole batches only
  assert r["first_epoch_s"] > 0 and r["first_call_s"] is None and r["compile_s"] > 0
  assert len(r["window_images_per_s"]) == 2 and r["images_per_s"] > 0
  assert 0.5 < r["flops_per_image"] / ANALYTIC_KD < 2.0
  reports = add_ratios([step_report, cached_report, r])
  for row in reports[1:]:
    assert row["ratio_to_step"] == pytest.approx(row["images_per_s"] / step_report["images_per_s"], rel=1e-2)
  assert "ratio_to_step" not in step_report
  table = format_table(reports)
  assert table.count("\n| ") == 4 and "| epoch | mlp800 → mlp100 | hinton | 8 | fp32 | 1 | 1 | yes |" in table
  assert "× step" in table


def test_k_students_report_student_images_and_speedup(step_report):
  r = bench_kd(*PAIR, students=2, **SMALL)
  assert r["students"] == 2 and r["images_per_s"] > 0
  # The teacher runs once for both students: fewer FLOPs per student-image than one student's step.
  assert r["flops_per_image"] < step_report["flops_per_image"]
  add_ratios([step_report, r])
  assert r["speedup_over_one_student"] == pytest.approx(r["images_per_s"] / step_report["images_per_s"], rel=1e-2)


def test_jsonl_round_trip(step_report, tmp_path):
  path = tmp_path / "out" / "bench.jsonl"
  write_jsonl([step_report], path)
  write_jsonl([step_report], path)  # appends
  lines = path.read_text().splitlines()
  assert len(lines) == 2 and json.loads(lines[0]) == step_report
  assert to_jsonl([step_report]) == lines[0] + "\n"


def test_cli_end_to_end_without_tensorflow_datasets(tmp_path):
  """`kdjax bench` writes its table and JSON lines; nothing on the bench path imports TFDS."""
  code = (
      "import sys\n"
      "class Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name.split('.')[0] in ('tensorflow_datasets', 'tensorflow'):\n"
      "      raise ImportError(name + ' is blocked')\n"
      "sys.meta_path.insert(0, Block())\n"
      "from kdjax.cli import main\n"
      "import kdjax.sweep.train\n"
      "rc = main(sys.argv[1:])\n"
      "assert not any(m.startswith('tensorflow') for m in sys.modules), 'TFDS was imported'\n"
      "sys.exit(rc)\n")
  path = tmp_path / "bench.jsonl"
  argv = ["bench", "--teacher", "mlp800", "--student", "mlp100", "--batch", "8", "--mode", "step,cached",
          "--classes", "10", "--steps", "2", "--windows", "2", "--warmup", "1", "--json", str(path)]
  proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["mode"] for r in rows] == ["step", "cached"]
  assert rows[1]["ratio_to_step"] == pytest.approx(rows[1]["images_per_s"] / rows[0]["images_per_s"], rel=1e-2)
  assert "| step | mlp800 → mlp100 | hinton | 8 | fp32 |" in proc.stdout and "× step" in proc.stdout
  assert "[2/2] mode=cached" in proc.stderr


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "fp16"}, "unknown precision 'fp16'"),
    ({"mode": "offline"}, "unknown mode 'offline'"),
    ({"steps_per_call": 0}, "steps_per_call must be an integer >= 1"),
    ({"batch": 0}, "batch must be"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"students": 2, "mode": "epoch"}, "mode 'step' only"),
    ({"students": 2, "steps_per_call": 2}, "one batch per call"),
    ({"mode": "cached", "method": "supervised"}, "uses no teacher"),
    ({"mode": "epoch", "epoch_size": 4}, "holds fewer than"),
])
def test_bad_configs_fail_before_anything_is_built(monkeypatch, kwargs, message):
  monkeypatch.setattr(bench, "_models", lambda cfg: pytest.fail("a model was built"))
  with pytest.raises(ValueError, match=message):
    bench_kd(*PAIR, **{**SMALL, **kwargs})


def test_unknown_model_fails():
  with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
    bench_kd("resnet9000", "mlp100", **SMALL)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_absent_backend_is_named(monkeypatch, backend):
  try:
    jax.devices(backend)
    pytest.skip(f"this machine has a {backend}")
  except RuntimeError:
    pass
  monkeypatch.setattr(bench, "_models", lambda cfg: pytest.fail("a model was built"))
  seen = ", ".join(sorted({d.platform for d in jax.devices()}))
  with pytest.raises(ValueError, match=f"backend '{backend}' is not available; JAX sees: {seen}"):
    bench_kd(*PAIR, backend=backend, **SMALL)


@pytest.mark.parametrize("argv,message", [
    (["--precision", "fp32,fp16"], "unknown precision 'fp16'"),
    (["--mode", "offline"], "unknown mode 'offline'"),
    (["--batch", "8,x"], "--batch: '8,x' is not a comma-separated list of integers"),
    (["--steps-per-call", "0"], "steps_per_call must be an integer >= 1"),
    (["--backend", "tpu"], "backend 'tpu' is not available"),
    (["--input-shape", "28,28"], "expected H,W,C"),
])
def test_cli_errors(capsys, argv, message):
  if "--backend" in argv:
    try:
      jax.devices("tpu")
      pytest.skip("this machine has a tpu")
    except RuntimeError:
      pass
  assert main(["bench", "--teacher", "mlp800", "--student", "mlp100", *argv]) == 2
  err = capsys.readouterr().err
  assert err.startswith("kdjax: error: ") and message in err


class FakeDevice:
  def __init__(self, kind, platform="gpu"):
    self.device_kind, self.platform = kind, platform


def test_peak_table():
  assert peak_tflops_for(FakeDevice("NVIDIA H100 80GB HBM3"), "bf16")[0] == 989.4
  assert peak_tflops_for(FakeDevice("NVIDIA H100 80GB HBM3"), "fp32")[0] == 494.7  # TF32, XLA's default
  assert peak_tflops_for(FakeDevice("NVIDIA H100 PCIe"), "bf16")[0] == 756.0
  assert peak_tflops_for(FakeDevice("NVIDIA H200"), "bf16")[0] == 989.4
  assert peak_tflops_for(FakeDevice("NVIDIA A100-SXM4-80GB"), "fp32")[0] == 156.0
  assert peak_tflops_for(FakeDevice("NVIDIA L4"), "bf16")[0] == 121.0
  assert peak_tflops_for(FakeDevice("NVIDIA L40"), "bf16") is None  # not the L4
  assert peak_tflops_for(FakeDevice("TPU v5 lite", "tpu"), "bf16")[0] == 197.0
  assert peak_tflops_for(FakeDevice("TPU v5", "tpu"), "bf16")[0] == 459.0
  assert peak_tflops_for(FakeDevice("cpu", "cpu"), "bf16") is None
  with jax.default_matmul_precision("highest"):  # float32 forced to full precision: the TF32 rate is moot
    assert peak_tflops_for(FakeDevice("NVIDIA H100 80GB HBM3"), "fp32") is None
