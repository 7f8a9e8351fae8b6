"""Models: Flax NNX modules returning ``(logits, feats)``, used functionally."""

from kdjax.models.cnn import SmallCNN
from kdjax.models.functional import apply_model, feature_shapes, input_dtype, split_model
from kdjax.models.mlp import MLP
from kdjax.models.registry import (ModelSpec, check_input_shape, create_model, get_model_spec, model_names,
                                   register_model)
from kdjax.models.text import PAD_ID, RecurrentClassifier, TransformerClassifier, masked_mean, padding_mask

__all__ = [
    "MLP",
    "ModelSpec",
    "PAD_ID",
    "RecurrentClassifier",
    "SmallCNN",
    "TransformerClassifier",
    "apply_model",
    "check_input_shape",
    "create_model",
    "feature_shapes",
    "get_model_spec",
    "input_dtype",
    "masked_mean",
    "model_names",
    "padding_mask",
    "register_model",
    "split_model",
]
