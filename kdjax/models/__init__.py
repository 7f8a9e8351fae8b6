"""Models: Flax NNX modules returning ``(logits, feats)``, used functionally."""

from kdjax.models.cnn import SmallCNN
from kdjax.models.functional import apply_model, feature_shapes, split_model
from kdjax.models.mlp import MLP
from kdjax.models.registry import (ModelSpec, check_input_shape, create_model, get_model_spec, model_names,
                                   register_model)

__all__ = [
    "MLP",
    "ModelSpec",
    "SmallCNN",
    "apply_model",
    "check_input_shape",
    "create_model",
    "feature_shapes",
    "get_model_spec",
    "model_names",
    "register_model",
    "split_model",
]
