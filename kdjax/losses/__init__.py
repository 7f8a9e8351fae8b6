"""Pure distillation losses: float32 math, no reduction (per-example values, or a batch
scalar where the loss couples the examples of a batch)."""

from kdjax.losses.feature import (
    attention_map,
    attention_transfer_loss,
    correlation_congruence_loss,
    hint_loss,
    l2_normalize,
    nst_loss,
    pkt_loss,
    rkd_loss,
    similarity_preserving_loss,
)
from kdjax.losses.logit import (
    dist_loss,
    dkd_loss,
    hard_cross_entropy,
    hinton_kd_loss,
    js_divergence,
    kl_divergence,
    reverse_kl_divergence,
    soft_target_cross_entropy,
    standardize_logits,
)
from kdjax.losses.validate import check_alpha, check_temperature

__all__ = [
    "attention_map",
    "attention_transfer_loss",
    "correlation_congruence_loss",
    "hint_loss",
    "l2_normalize",
    "nst_loss",
    "pkt_loss",
    "rkd_loss",
    "similarity_preserving_loss",
    "check_alpha",
    "check_temperature",
    "dist_loss",
    "dkd_loss",
    "hard_cross_entropy",
    "hinton_kd_loss",
    "js_divergence",
    "kl_divergence",
    "reverse_kl_divergence",
    "soft_target_cross_entropy",
    "standardize_logits",
]
