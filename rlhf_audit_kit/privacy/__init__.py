"""Privacy: pseudonyms for annotator ids, DP mechanisms, and the privacy accountant.

>>> from rlhf_audit_kit.privacy import Accountant, Laplace, Gaussian, SubsampledGaussian
>>> acc = Accountant()
>>> acc.compose(Laplace(scale=10.0), count=3)
>>> acc.pure_epsilon()
0.3
"""
from __future__ import annotations

from .accountant import Accountant
from .budget import QUERIES, WHERE_FILTERS, PrivacyLedger, Release
from .mechanisms import (DiscreteGaussian, DiscreteLaplace, DPRelease, Gaussian, Laplace,
                         MechanismCost, SubsampledGaussian, analytic_gaussian_delta, dp_count,
                         dp_histogram, dp_mean, dp_sum)
from .pseudonym import Pseudonymizer, ReidentificationMap

__all__ = [
    "Accountant", "Laplace", "Gaussian", "SubsampledGaussian", "DiscreteLaplace",
    "DiscreteGaussian", "MechanismCost", "DPRelease", "analytic_gaussian_delta", "dp_count",
    "dp_sum", "dp_mean", "dp_histogram", "Pseudonymizer", "ReidentificationMap",
    "PrivacyLedger", "Release", "QUERIES", "WHERE_FILTERS",
]
