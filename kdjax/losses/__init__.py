"""Pure distillation losses: per-example values, float32 math, no reduction."""

from kdjax.losses.logit import (
    hard_cross_entropy,
    hinton_kd_loss,
    kl_divergence,
    soft_target_cross_entropy,
)
from kdjax.losses.validate import check_alpha, check_temperature

__all__ = [
    "check_alpha",
    "check_temperature",
    "hard_cross_entropy",
    "hinton_kd_loss",
    "kl_divergence",
    "soft_target_cross_entropy",
]
