"""Methods: which losses apply to which model outputs, plus their learnable parts.

The interface is in :mod:`kdjax.methods.base`; logit-level methods are in
:mod:`~kdjax.methods.logit`, feature- and relation-level ones in
:mod:`~kdjax.methods.feature`. ``make_method(name, **hparams)`` builds any of
them by name.
"""

from __future__ import annotations

from kdjax.methods.base import Method, as_method, call_method, init_method, pick_feature
from kdjax.methods.combine import combine
from kdjax.methods.contrastive import METHODS as _CONTRASTIVE
from kdjax.methods.contrastive import crd, crd_inbatch, crd_queue
from kdjax.methods.feature import METHODS as _FEATURE
from kdjax.methods.feature import (activation_boundary, attention, correlation_congruence, factor_transfer,
                                   fitnet, fsp, nst, pkt, rkd, similarity_preserving, vid)
from kdjax.methods.logit import METHODS as _LOGIT
from kdjax.methods.logit import dist_kd, dkd, hinton_kd, js_kd, reverse_kd, supervised
from kdjax.methods.review import METHODS as _REVIEW
from kdjax.methods.review import reviewkd

_METHODS = {**_LOGIT, **_FEATURE, **_CONTRASTIVE, **_REVIEW}


def method_names() -> list[str]:
  return sorted(_METHODS)


def make_method(name: str, **hparams) -> Method:
  """Builds a registered method by name with its hyperparameters."""
  if name not in _METHODS:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
  return _METHODS[name](**hparams)


__all__ = ["Method", "activation_boundary", "as_method", "attention", "call_method", "combine", "correlation_congruence", "dist_kd", "dkd",
           "factor_transfer", "fitnet", "fsp", "hinton_kd", "init_method", "js_kd", "make_method", "method_names", "nst", "pick_feature", "pkt",
           "reverse_kd", "rkd", "similarity_preserving", "supervised", "vid"]
__all__ += ["crd", "crd_inbatch", "crd_queue", "reviewkd"]
