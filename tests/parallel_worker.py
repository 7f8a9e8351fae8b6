"""Runs a small distillation in a fresh process, for tests/test_parallel.py: on several simulated
CPU devices, as one of several processes, or killed with SIGKILL mid-run. Prints one JSON line.

    python tests/parallel_worker.py devices N                      # 1 vs N devices in one process
    python tests/parallel_worker.py process ID COUNT PORT          # one of COUNT processes
    python tests/parallel_worker.py killed CKPT_DIR KILL_AFTER     # checkpoints, then SIGKILL
"""

import json
import os
import signal
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

import jax  # noqa: E402

SHAPE = (8, 8, 3)
BATCH, EPOCHS = 16, 2


def data():
  import numpy as np

  from kdjax.data.dataset import ArrayDataset
  rng = np.random.default_rng(0)
  return ArrayDataset("random", rng.integers(0, 256, (64, *SHAPE), dtype=np.uint8), rng.integers(0, 4, 64),
                      rng.integers(0, 256, (24, *SHAPE), dtype=np.uint8), rng.integers(0, 4, 24), 4)


def tiny(seed):
  """A conv + BatchNorm + dense net, the smallest model with batch statistics (cheap to compile)."""
  from flax import nnx

  class Tiny(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(SHAPE[-1], 8, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.head = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x, *, train=False, rngs=None):
      h = jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))
      f = h.mean((1, 2))
      return self.head(f), {"block1": h, "pre_logits": f}

  return Tiny(nnx.Rngs(params=seed))


def run(mesh=None, checkpointing=None, wrap=None, steps_per_call=1):
  """Distils an untrained conv + BatchNorm teacher into a student of the same shape for two epochs
  of four steps; returns the fit result."""

  from kdjax.methods import hinton_kd
  from kdjax.models import split_model
  from kdjax.train import fit, init_train_state, make_eval_step, make_optimizer, make_train_step
  tg, tp, tr = split_model(tiny(0))
  g, p, r = split_model(tiny(1))
  tx = make_optimizer("sgd", learning_rate=0.02, total_steps=100, weight_decay=5e-4)
  step = make_train_step(g, tx, hinton_kd(alpha=0.5, temperature=4.0), teacher_graphdef=tg, jitter_pixels=2,
                         hflip=True, steps_per_call=steps_per_call)
  state = init_train_state(p, r, tx, jax.random.key(3))
  return fit(state, wrap(step) if wrap else step, make_eval_step(g), data(), epochs=EPOCHS, batch_size=BATCH,
             teacher_vars={"params": tp, "rest": tr}, progress=False, mesh=mesh, checkpointing=checkpointing,
             steps_per_call=steps_per_call, seed=1)


def summary(result) -> dict:
  import numpy as np
  leaves = [np.asarray(jax.device_get(a), np.float64) for a in jax.tree.leaves((result.state.params, result.state.rest))]
  return {"params": [a.ravel()[:8].tolist() + [float(a.sum())] for a in leaves],
          "history": [{k: v for k, v in h.items() if k.startswith(("train_loss", "test_"))} for h in result.history]}


def main(argv):
  mode = argv[0]
  if mode == "devices":
    jax.config.update("jax_num_cpu_devices", int(argv[1]))
    from kdjax import parallel
    out = {}
    for n, s in ((int(argv[1]), 1), (int(argv[1]), 2)):
      result = run(parallel.make_mesh(n), steps_per_call=s)
      leaf = jax.tree.leaves(result.state.params)[0]
      out[f"{n}x{s}"] = {**summary(result), "replicated": leaf.sharding.is_fully_replicated,
                         "devices": len(leaf.sharding.device_set)}
    try:
      from kdjax.train import fit
      fit(None, None, None, data(), epochs=1, batch_size=12, mesh=parallel.make_mesh(int(argv[1])))
    except ValueError as e:
      out["indivisible"] = str(e)
  elif mode == "process":
    pid, count, port = int(argv[1]), int(argv[2]), argv[3]
    from kdjax import parallel
    parallel.initialize_distributed(f"127.0.0.1:{port}", count, pid)
    result = run()
    out = {**summary(result), "process": jax.process_index(), "devices": jax.device_count()}
  elif mode == "killed":
    from kdjax.train.checkpoint import Checkpointing
    kill_after = int(argv[2])
    calls = [0]

    def wrap(step):
      def killing(*args):
        if calls[0] == kill_after:
          os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a machine going down
        calls[0] += 1
        return step(*args)
      return killing

    run(checkpointing=Checkpointing(argv[1], every_steps=3), wrap=wrap)
    out = {"error": "was not killed"}
  else:
    raise SystemExit(f"unknown mode {mode!r}")
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
