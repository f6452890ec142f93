"""Privacy: pseudonyms for annotator ids, DP mechanisms, and the privacy accountant.

>>> from rlhf_audit_kit.privacy import Accountant, Laplace, Gaussian, SubsampledGaussian
>>> acc = Accountant()
>>> acc.compose(Laplace(scale=10.0), count=3)
>>> acc.pure_epsilon()
0.3
"""
from __future__ import annotations

from .._lazy import lazy_getattr

# Submodules load on first use: the accountant pulls in dp-accounting (about a second), which
# ingest (pseudonyms only) should not pay for.
_WHERE = {
    "Accountant": "accountant",
    "QUERIES": "budget", "WHERE_FILTERS": "budget", "PrivacyLedger": "budget", "Release": "budget",
    **{n: "mechanisms" for n in ("DiscreteGaussian", "DiscreteLaplace", "DPRelease", "Gaussian", "Laplace",
                                 "MechanismCost", "SubsampledGaussian", "analytic_gaussian_delta", "dp_count",
                                 "dp_histogram", "dp_mean", "dp_sum")},
    "Pseudonymizer": "pseudonym", "ReidentificationMap": "pseudonym",
}

__getattr__ = lazy_getattr(__name__, _WHERE, globals())

__all__ = [
    "Accountant", "Laplace", "Gaussian", "SubsampledGaussian", "DiscreteLaplace",
    "DiscreteGaussian", "MechanismCost", "DPRelease", "analytic_gaussian_delta", "dp_count",
    "dp_sum", "dp_mean", "dp_histogram", "Pseudonymizer", "ReidentificationMap",
    "PrivacyLedger", "Release", "QUERIES", "WHERE_FILTERS",
]
