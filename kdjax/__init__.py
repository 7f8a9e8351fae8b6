"""kdjax: knowledge distillation in JAX, as pure functions over pytrees."""

__version__ = "0.1.0"
