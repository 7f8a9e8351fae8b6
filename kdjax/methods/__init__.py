"""Methods: which losses apply to which model outputs, plus their learnable parts.

The interface is in :mod:`kdjax.methods.base`; logit-level methods are in
:mod:`~kdjax.methods.logit`, feature- and relation-level ones in
:mod:`~kdjax.methods.feature`. ``make_method(name, **hparams)`` builds any of
them by name.
"""

from __future__ import annotations

from kdjax.methods.adversarial import METHODS as _ADVERSARIAL
from kdjax.methods.adversarial import Adversary, adversarial_training, ard
from kdjax.methods.base import Method, as_method, call_method, init_method, pick_feature
from kdjax.methods.combine import combine
from kdjax.methods.contrastive import METHODS as _CONTRASTIVE
from kdjax.methods.contrastive import crd, crd_inbatch, crd_queue
from kdjax.methods.domain import METHODS as _DOMAIN
from kdjax.methods.domain import domain_kd, grad_reverse
from kdjax.methods.feature import METHODS as _FEATURE
from kdjax.methods.feature import (activation_boundary, attention, correlation_congruence, factor_transfer,
                                   fitnet, fsp, nst, pkt, rkd, similarity_preserving, vid)
from kdjax.methods.logit import METHODS as _LOGIT
from kdjax.methods.logit import dist_kd, dkd, hinton_kd, js_kd, reverse_kd, supervised
from kdjax.methods.multi_teacher import multi_teacher_kd, per_teacher, teacher_weights
from kdjax.methods.review import METHODS as _REVIEW
from kdjax.methods.review import reviewkd
from kdjax.methods.self_kd import METHODS as _SELF_KD
from kdjax.methods.self_kd import byot, tf_kd

_METHODS = {**_LOGIT, **_FEATURE, **_CONTRASTIVE, **_REVIEW, **_SELF_KD, **_DOMAIN, **_ADVERSARIAL}


# Where each method comes from, in a few words (the README's method table has the titles).
PAPERS = {
    "supervised": "cross-entropy on the labels, no teacher",
    "hinton": "Hinton et al. 2015", "reverse_kd": "KD, reverse KL", "js_kd": "KD, Jensen-Shannon",
    "dkd": "Zhao et al. 2022 (DKD)", "dist": "Huang et al. 2022 (DIST)",
    "fitnet": "Romero et al. 2015 (FitNets)", "at": "Zagoruyko & Komodakis 2017 (AT)",
    "nst": "Huang & Wang 2017 (NST)", "vid": "Ahn et al. 2019 (VID)", "ft": "Kim et al. 2018 (FT)",
    "ab": "Heo et al. 2019 (AB)", "fsp": "Yim et al. 2017 (FSP)", "sp": "Tung & Mori 2019 (SP)",
    "rkd": "Park et al. 2019 (RKD)", "pkt": "Passalis & Tefas 2018 (PKT)", "cc": "Peng et al. 2019 (CC)",
    "crd": "Tian et al. 2020 (CRD, memory bank)", "crd_queue": "CRD with a MoCo-style queue",
    "crd_inbatch": "CRD with in-batch negatives", "reviewkd": "Chen et al. 2021 (ReviewKD)",
    "tf_kd": "Yuan et al. 2020 (Tf-KD, virtual teacher)", "byot": "Zhang et al. 2019 (BYOT, self-distillation)",
    "domain_kd": "KD + alignment to an unlabelled domain (DAN MMD, Deep CORAL, DANN)",
    "adversarial_training": "Madry et al. 2018 (PGD adversarial training), no teacher",
    "ard": "Goldblum et al. 2020 (ARD, adversarially robust distillation)",
}


def method_names() -> list[str]:
  return sorted(_METHODS)


def make_method(name: str, **hparams) -> Method:
  """Builds a registered method by name with its hyperparameters."""
  if name not in _METHODS:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
  return _METHODS[name](**hparams)


__all__ = ["PAPERS", "Method", "activation_boundary", "as_method", "attention", "call_method", "combine", "correlation_congruence", "dist_kd", "dkd",
           "factor_transfer", "fitnet", "fsp", "hinton_kd", "init_method", "js_kd", "make_method", "method_names", "nst", "pick_feature", "pkt",
           "reverse_kd", "rkd", "similarity_preserving", "supervised", "vid"]
__all__ += ["crd", "crd_inbatch", "crd_queue", "reviewkd"]
__all__ += ["multi_teacher_kd", "per_teacher", "teacher_weights"]
__all__ += ["byot", "tf_kd"]
__all__ += ["domain_kd", "grad_reverse"]
__all__ += ["Adversary", "adversarial_training", "ard"]
