"""Models: Flax NNX modules returning ``(logits, feats)``, used functionally."""

from kdjax.models.cnn import SmallCNN
from kdjax.models.decoder import DecoderLM, document_positions, generate, lm_apply, sequence_logprobs
from kdjax.models.functional import apply_model, feature_shapes, input_dtype, split_model
from kdjax.models.mlp import MLP
from kdjax.models.registry import (ModelSpec, check_input_shape, create_model, get_model_spec, model_names,
                                   register_model)
from kdjax.models.text import PAD_ID, RecurrentClassifier, TransformerClassifier, masked_mean, padding_mask

__all__ = [
    "DecoderLM",
    "MLP",
    "ModelSpec",
    "PAD_ID",
    "RecurrentClassifier",
    "SmallCNN",
    "TransformerClassifier",
    "apply_model",
    "check_input_shape",
    "create_model",
    "document_positions",
    "feature_shapes",
    "generate",
    "get_model_spec",
    "input_dtype",
    "lm_apply",
    "masked_mean",
    "model_names",
    "padding_mask",
    "register_model",
    "sequence_logprobs",
    "split_model",
]
