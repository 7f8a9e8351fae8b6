"""Pretrained weights from other frameworks into kdjax's Flax models.

One function per model family maps a PyTorch state dict (or a safetensors file) onto a kdjax model,
naming every tensor explicitly; anything missing, unexpected or mis-shaped is reported by name before a
single weight is placed (:func:`check_state_dict`). Nothing is downloaded: the user brings the file.
"""

from kdjax.pretrained.common import check_state_dict, load_state_dict, state_dict_digest

__all__ = ["check_state_dict", "load_state_dict", "state_dict_digest"]
