"""A teacher sharded FSDP-style over 8 simulated CPU devices gives the step one device gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("lm_shard_worker.py")


@pytest.mark.parametrize("method", ["lm_kd", "lm_minilm"])
def test_the_sharded_step_equals_the_unsharded_one_on_8_devices(method):
  env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
  out = subprocess.run([sys.executable, str(WORKER), method], capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["embed_devices"] == 8 and np.prod(r["embed_shard_shape"]) * 8 == np.prod(r["embed_shape"])  # 1/8 each
  np.testing.assert_allclose(r["losses_8"], r["losses_1"], rtol=1e-5)
  assert r["max_param_diff"] < 1e-5, r
