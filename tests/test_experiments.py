import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_feature_kd_compares_methods_and_names_the_ones_that_do_not_fit(tmp_path, capsys):
  _load("feature_kd").main(["--seeds", "0", "--epochs", "1", "--teacher-epochs", "1",
                            "--methods", "supervised,hinton,at,sp", "--workdir", str(tmp_path)])
  table = (tmp_path / "feature_kd" / "table.md").read_text()
  assert "| `hinton` | Hinton et al. 2015 |" in table and "| `sp` |" in table
  assert "± 0.0" not in table  # one seed: no spread to show
  assert "| `at` | Zagoruyko & Komodakis 2017 (AT) | n/a: attention transfer needs NHWC feature maps" in table
  rows = json.loads((tmp_path / "feature_kd" / "results.json").read_text())["rows"]
  assert len(rows["hinton"]["runs"]) == 1 and rows["at"]["skipped"]
  assert rows["supervised"]["runs"][0]["accuracy"] > 0.8
