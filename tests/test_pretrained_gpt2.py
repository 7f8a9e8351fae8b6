"""Hugging Face GPT-2 into kdjax's DecoderLM: the same logits as transformers' GPT2LMHeadModel (full and
right-padded batches, gelu_new and exact gelu), the same greedy continuation, a save_pretrained folder
(safetensors), a .bin with the old causal-mask buffers and a sharded checkpoint through load_gpt2, and
every refusal naming what is wrong (missing, mis-shaped, unexpected tensors, an untied head, configs
DecoderLM cannot express).

The reference is a randomly initialised GPT2LMHeadModel (2 blocks, width 64, 4 heads, V=300, context 64;
nothing downloaded) whose parameters are perturbed with noise, so no bias is zero and no LayerNorm scale
is one: a wrong split of c_attn or a swapped bias changes the logits.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kdjax.models import DecoderLM, generate, split_model
from kdjax.pretrained.gpt2 import gpt2_config_to_kwargs, import_gpt2, load_gpt2

import torch  # noqa: E402  (the test extra installs it: a missing one fails, never skips)
import transformers  # noqa: E402

V, D, DEPTH, HEADS, CTX = 300, 64, 2, 4, 64
TOL = 1e-4  # float32 on both sides; measured max |logit difference| 1.7e-6 (logits up to ~3.4)


def _hf(activation="gelu_new", seed=0):
  torch.manual_seed(seed)
  config = transformers.GPT2Config(n_layer=DEPTH, n_embd=D, n_head=HEADS, vocab_size=V, n_positions=CTX,
                                   activation_function=activation, bos_token_id=None, eos_token_id=None)
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def hf():
  return _hf()


def _state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _convert(model) -> DecoderLM:
  kdjax_model = nnx.eval_shape(lambda: DecoderLM(**gpt2_config_to_kwargs(model.config), rngs=nnx.Rngs(0)))
  return import_gpt2(_state_dict(model), kdjax_model)


def _ids(b=2, length=20, seed=0):
  return np.random.default_rng(seed).integers(0, V, (b, length))


def _hf_logits(model, ids, mask=None):
  with torch.no_grad():
    return model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask)).logits.numpy()


def _max_diff(model: DecoderLM, ref, ids, segments=None):
  logits, _ = model(jnp.asarray(ids, jnp.int32), segments=None if segments is None else jnp.asarray(segments))
  return float(np.max(np.abs(np.asarray(logits) - ref)))


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_logits_match_transformers(hf, activation):
  ref_model = hf if activation == "gelu_new" else _hf(activation)
  ids = _ids()
  ref = _hf_logits(ref_model, ids)
  model = _convert(ref_model)
  assert model.activation == {"gelu_new": "gelu_tanh", "gelu": "gelu_erf"}[activation]
  assert model.norm_eps == 1e-5 and model.blocks[0].ln1.epsilon == 1e-5
  diff = _max_diff(model, ref, ids)
  print(f"GPT-2 ({activation}) max |logit difference| vs transformers: {diff:.3g}")
  assert diff < TOL
  assert np.abs(ref).max() > 1.0  # the logits are not all near zero


def test_bare_gpt2model_names_and_padded_batch(hf):
  """GPT2Model's names (no ``transformer.`` prefix, no lm_head); a right-padded batch of a short and a
  long row: the real tokens' logits match transformers' with the attention mask."""
  model = nnx.eval_shape(lambda: DecoderLM(**gpt2_config_to_kwargs(hf.config.to_dict()), rngs=nnx.Rngs(0)))
  import_gpt2(_state_dict(hf.transformer), model)
  ids = _ids(2, 16, seed=1)
  mask = np.ones_like(ids)
  mask[0, 9:] = 0
  ref = _hf_logits(hf, ids, mask)
  logits, _ = model(jnp.asarray(ids, jnp.int32), segments=jnp.asarray(mask, jnp.int32))
  real = mask.astype(bool)
  assert float(np.max(np.abs(np.asarray(logits)[real] - ref[real]))) < TOL


def test_greedy_generation_matches_transformers(hf):
  prompt = _ids(2, 6, seed=2)
  with torch.no_grad():
    ref = hf.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                      do_sample=False, max_new_tokens=8, pad_token_id=0).numpy()
  graphdef, params, rest = split_model(_convert(hf))
  ours = generate(graphdef, params, rest, jnp.asarray(prompt, jnp.int32), jax.random.key(0), steps=8, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(ours), ref)


def test_load_gpt2_from_folders(hf, tmp_path):
  """save_pretrained's folder (safetensors, lm_head left out as tied); a pytorch_model.bin with lm_head and
  the causal-mask buffers older transformers wrote; a sharded safetensors checkpoint with its index."""
  from safetensors.numpy import save_file

  ids = _ids()
  ref = _hf_logits(hf, ids)
  hf.save_pretrained(tmp_path / "st")
  assert _max_diff(load_gpt2(tmp_path / "st"), ref, ids) < TOL
  assert _max_diff(load_gpt2(tmp_path / "st" / "model.safetensors"), ref, ids) < TOL

  (tmp_path / "bin").mkdir()
  shutil.copy(tmp_path / "st" / "config.json", tmp_path / "bin")
  sd = dict(hf.state_dict())
  for i in range(DEPTH):
    sd[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, CTX, CTX, dtype=torch.bool))
    sd[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
  torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
  assert _max_diff(load_gpt2(tmp_path / "bin"), ref, ids) < TOL

  (tmp_path / "sharded").mkdir()
  names = sorted(_state_dict(hf))
  shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
  state = _state_dict(hf)
  for shard, keys in shards.items():
    save_file({k: state[k] for k in keys}, str(tmp_path / "sharded" / shard))
  index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
  (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps(index))
  assert _max_diff(load_gpt2(tmp_path / "sharded", config=hf.config), ref, ids) < TOL

  with pytest.raises(FileNotFoundError, match="config.json"):
    load_gpt2(tmp_path / "sharded")
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    load_gpt2(tmp_path / "nowhere")


def _target(hf):
  return nnx.eval_shape(lambda: DecoderLM(**gpt2_config_to_kwargs(hf.config), rngs=nnx.Rngs(0)))


def test_bad_state_dicts_are_named(hf):
  sd = _state_dict(hf)
  before = _target(hf)
  bad = dict(sd)
  del bad["transformer.h.1.mlp.c_fc.bias"]
  bad["transformer.h.0.attn.c_attn.weight"] = np.zeros((D, 2 * D), np.float32)
  bad["transformer.h.0.crossattention.c_attn.weight"] = np.zeros((D, 2 * D), np.float32)
  with pytest.raises(ValueError) as err:
    import_gpt2(bad, before)
  msg = str(err.value)
  assert "missing (1): transformer.h.1.mlp.c_fc.bias" in msg
  assert "transformer.h.0.attn.c_attn.weight (64, 128) (expected (64, 192))" in msg
  assert "unexpected (1): transformer.h.0.crossattention.c_attn.weight" in msg
  # nothing was placed: the model is still abstract
  assert isinstance(before.embed.embedding.get_value(), jax.ShapeDtypeStruct)

  untied = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1.0})
  with pytest.raises(ValueError, match=r"lm_head.weight differs from transformer.wte.weight .*not tied"):
    import_gpt2(untied, _target(hf))
  with pytest.raises(ValueError, match=r"mis-shaped \(1\): lm_head.weight"):
    import_gpt2(dict(sd, **{"lm_head.weight": sd["lm_head.weight"][:10]}), _target(hf))

  rope = nnx.eval_shape(lambda: DecoderLM(V, dim=D, depth=DEPTH, num_heads=HEADS, mlp_dim=4 * D, max_len=CTX,
                                          rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="positions='learned'"):
    import_gpt2(sd, rope)


@pytest.mark.parametrize("field,value", [
    ("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True), ("scale_attn_weights", False),
    ("add_cross_attention", True), ("tie_word_embeddings", False), ("model_type", "gpt_neo"),
    ("layer_norm_epsilon", 0.0)])
def test_configs_kdjax_cannot_express_are_refused(hf, field, value):
  config = dict(hf.config.to_dict(), **{field: value})
  with pytest.raises(ValueError, match=field):
    gpt2_config_to_kwargs(config)


def test_config_mapping_and_defaults():
  kwargs = gpt2_config_to_kwargs({"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 259, "n_positions": 128,
                                  "reorder_and_upcast_attn": True})
  assert kwargs == {"vocab_size": 259, "dim": 32, "depth": 2, "num_heads": 4, "mlp_dim": 128, "max_len": 128,
                    "positions": "learned", "dropout_rate": 0.0, "norm_eps": 1e-5, "activation": "gelu_tanh"}
  assert gpt2_config_to_kwargs({})["dim"] == 768  # GPT2Config's defaults fill what config.json leaves out
  with pytest.raises(ValueError, match=r"n_embd \(30\) must be a multiple of n_head \(4\)"):
    gpt2_config_to_kwargs({"n_embd": 30, "n_head": 4})
  with pytest.raises(ValueError, match="unknown activation 'relu'"):
    DecoderLM(V, dim=8, depth=1, num_heads=2, mlp_dim=8, max_len=4, activation="relu", rngs=nnx.Rngs(0))



def _byte_teacher(directory):
  """A GPT-2 over the LM study's 259 byte ids (ByteTokenizer), context 16, saved with save_pretrained."""
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_layer=1, n_embd=32, n_head=2, vocab_size=259, n_positions=16, bos_token_id=None, eos_token_id=None))
  hf.save_pretrained(directory)
  return directory


def test_lm_study_teacher_must_have_the_tokenizers_vocabulary(hf, tmp_path):
  """kdjax does not distil across tokenizers: GPT-2's own vocabulary is refused, naming both sizes."""
  from kdjax.lm_study import imported_lm_teacher

  graphdef, variables, identity = imported_lm_teacher(_byte_teacher(tmp_path / "bytes"), vocab_size=259, seq_len=16)
  assert variables["params"]["embed"]["embedding"].shape == (259, 32) and len(identity) == 16
  hf.save_pretrained(tmp_path / "gpt2_300")
  with pytest.raises(ValueError, match=r"vocabulary of 300 ids, the study's tokenizer \(ByteTokenizer\) 259"):
    imported_lm_teacher(tmp_path / "gpt2_300", vocab_size=259, seq_len=16)
  with pytest.raises(ValueError, match=r"at most 16 tokens \(n_positions\), fewer than the study's seq_len 32"):
    imported_lm_teacher(tmp_path / "bytes", vocab_size=259, seq_len=32)
  # The same weights read with another head count compute other logits: another identity (and top-k cache).
  shutil.copytree(tmp_path / "bytes", tmp_path / "one_head")
  config = json.loads((tmp_path / "one_head" / "config.json").read_text())
  (tmp_path / "one_head" / "config.json").write_text(json.dumps({**config, "n_head": 1}))
  assert imported_lm_teacher(tmp_path / "one_head", vocab_size=259, seq_len=16)[2] != identity
  assert imported_lm_teacher(tmp_path / "bytes", vocab_size=259, seq_len=16)[2] == identity


@pytest.mark.slow
def test_lm_study_distils_from_an_imported_teacher(tmp_path, capsys):
  """``kdjax distill --config lm_tiny --teacher-weights FOLDER``: the imported teacher teaches a small LM study
  (nothing is trained or saved for it): 20-30 s on a CPU."""
  import json

  from kdjax.cli import main

  teacher = _byte_teacher(tmp_path / "teacher")
  rc = main(["distill", "--config", "lm_tiny", "--teacher-weights", str(teacher), "--workdir", str(tmp_path / "runs"),
             "--seeds", "0", "--no-progress", "--allow-unhealthy", "--set", "name=imported", "--set", "max_rows=16",
             "--set", "seq_len=16", "--set", "prompt_len=4", "--set", "recipes=sft,word_kd",
             "--set", "eval_batch_size=16", "--set", "student.batch_size=8"])
  assert rc == 0, capsys.readouterr().err
  out = tmp_path / "runs" / "imported"
  payload = json.loads((out / "results.json").read_text())
  assert payload["teacher"]["model"] == f"gpt2:{teacher}"
  assert "imported" in capsys.readouterr().err and not list(out.glob("teacher-*.npz"))
  assert set(payload["runs"]) == {"sft", "word_kd"}
  assert "teacher_agreement" in payload["runs"]["word_kd"][0]["final"]
