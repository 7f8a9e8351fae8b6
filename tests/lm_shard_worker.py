"""Runs the LM step on 8 simulated CPU devices, for tests/test_lm_sharding.py: two steps with the
teacher's parameters (and the student's) sharded FSDP-style over a mesh axis and the batch split over
it, against the same two steps on one device. Prints one JSON line."""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax
import numpy as np
import optax
from flax import nnx

from kdjax.methods import make_method
from kdjax.models.decoder import DecoderLM
from kdjax.models.functional import split_model
from kdjax.parallel import batch_sharding, make_mesh
from kdjax.train.lm import fsdp_shardings, make_lm_step
from kdjax.train.state import init_train_state

V, L, B = 24, 16, 8


def main(method_name: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  t_graphdef, t_params, t_rest = split_model(DecoderLM(V, dim=32, depth=2, num_heads=4, mlp_dim=64, max_len=L,
                                                       rngs=nnx.Rngs(1)))
  graphdef, params, rest = split_model(DecoderLM(V, dim=16, depth=2, num_heads=2, mlp_dim=32, max_len=L,
                                                 rngs=nnx.Rngs(0)))
  tx = optax.adam(1e-2)
  method = make_method(method_name)
  rng = np.random.default_rng(0)
  seqs = rng.integers(3, V, (2, B, L + 1)).astype(np.int32)
  batches = [{"tokens": s[:, :L], "targets": s[:, 1:], "segments": np.ones((B, L), np.int32),
              "positions": np.broadcast_to(np.arange(L), (B, L)).astype(np.int32).copy(),
              "mask": np.ones((B, L), np.float32)} for s in seqs]
  teacher = {"params": t_params, "rest": t_rest}

  def train(place_teacher, place_state, place_batch):
    fresh = lambda tree: jax.tree.map(np.array, tree)  # the state is donated: each run its own buffers
    state = place_state(init_train_state(fresh(params), fresh(rest), tx, jax.random.key(0)))
    step = make_lm_step(graphdef, tx, method, teacher_graphdef=t_graphdef)
    t_vars = place_teacher(teacher)
    losses = []
    for b in batches:
      state, metrics = step(state, t_vars, place_batch(b))
      losses.append(float(metrics["loss"]))
    return jax.device_get(state.params), losses, t_vars

  one = jax.devices()[0]
  single = lambda tree: jax.device_put(tree, one)
  p1, l1, _ = train(single, single, single)
  mesh = make_mesh(8)
  shard = lambda tree: jax.device_put(tree, fsdp_shardings(tree, mesh))
  p8, l8, t_vars = train(shard, shard, lambda b: jax.device_put(b, batch_sharding(mesh)))
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
             zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
  embed = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(t_vars["params"])[0]
           if "embed" in jax.tree_util.keystr(path)][0]
  print(json.dumps({"max_param_diff": diff, "losses_1": l1, "losses_8": l8, "embed_shape": list(embed.shape),
                    "embed_shard_shape": list(embed.addressable_shards[0].data.shape),
                    "embed_devices": len(embed.sharding.device_set)}))


if __name__ == "__main__":
  main(sys.argv[1])
