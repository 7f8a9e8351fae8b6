"""Pure distillation losses: per-example values, float32 math, no reduction."""

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
