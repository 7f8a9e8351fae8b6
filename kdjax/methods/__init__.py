"""Methods: which losses apply to which model outputs, plus their learnable parts.

A method is an immutable :class:`~kdjax.methods.base.Method` value; logit-level methods are in
:mod:`~kdjax.methods.logit`, feature- and relation-level ones in :mod:`~kdjax.methods.feature`,
and so on. :mod:`~kdjax.methods.registry` holds every method by name, with its paper and what
its hyperparameters mean: ``make_method(name, **hparams)`` builds any of them.
"""

from __future__ import annotations

from kdjax.methods.adversarial import Adversary, adversarial_training, ard
from kdjax.methods.base import Method, as_method, call_method, init_method, method_identity, pick_feature
from kdjax.methods.combine import combine
from kdjax.methods.contrastive import crd, crd_inbatch, crd_queue
from kdjax.methods.domain import domain_kd, grad_reverse
from kdjax.methods.feature import (activation_boundary, attention, correlation_congruence, factor_transfer,
                                   fitnet, fsp, nst, pkt, rkd, similarity_preserving, vid)
from kdjax.methods.logit import dist_kd, dkd, gkd, hinton_kd, js_kd, reverse_kd, supervised
from kdjax.methods.multi_teacher import multi_teacher_kd, per_teacher, teacher_weights
from kdjax.methods.registry import (REGISTRY, MethodSpec, format_hparams, make_method, method_hparams, method_names,
                                    method_spec, papers, parse_hparam, study_hparams, vmapped_hparams)
from kdjax.methods.review import reviewkd
from kdjax.methods.self_kd import byot, tf_kd

# Where each method comes from, in a few words: the registry's, as a dict.
PAPERS = papers()

__all__ = ["PAPERS", "REGISTRY", "Method", "MethodSpec", "activation_boundary", "as_method", "attention", "call_method",
           "combine", "correlation_congruence", "dist_kd", "dkd", "factor_transfer", "fitnet", "format_hparams", "fsp",
           "gkd", "hinton_kd", "init_method", "js_kd", "make_method", "method_hparams", "method_names", "method_spec",
           "nst", "parse_hparam", "pick_feature", "pkt", "reverse_kd", "rkd", "similarity_preserving", "study_hparams", "supervised",
           "vid", "vmapped_hparams"]
__all__ += ["crd", "crd_inbatch", "crd_queue", "reviewkd", "method_identity"]
__all__ += ["multi_teacher_kd", "per_teacher", "teacher_weights"]
__all__ += ["byot", "tf_kd"]
__all__ += ["domain_kd", "grad_reverse"]
__all__ += ["Adversary", "adversarial_training", "ard"]
