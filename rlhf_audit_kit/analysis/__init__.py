"""Analysis of RLHF audit data: annotator agreement, score drift and metric change points.

Every function takes polars DataFrames (or numpy arrays / polars Series for samples) and
returns plain floats or polars DataFrames, so results can be shown in a notebook, plotted or
written back to a report unchanged.

- :mod:`~rlhf_audit_kit.analysis.agreement`: Krippendorff's alpha, Fleiss' and Cohen's kappa,
  percent agreement, per-pair tables and bootstrap intervals over a long label table.
- :mod:`~rlhf_audit_kit.analysis.drift`: PSI, KS, Jensen-Shannon and Wasserstein drift of
  scores, and a per-step drift table.
- :mod:`~rlhf_audit_kit.analysis.changepoint`: Page-Hinkley and CUSUM alerts on training metrics.
- :mod:`~rlhf_audit_kit.analysis.annotators`: per-annotator report (speed, biases, agreement,
  flags), drift over time windows, throughput and pairwise kappa, over a store, a bundle or a
  DataFrame of annotations.
- :mod:`~rlhf_audit_kit.analysis.model`: reward drift per step, training trends and change
  points, and reward hacking (reward up while the human win-rate falls).
- :mod:`~rlhf_audit_kit.analysis.summary`: :func:`summary`, the handful of findings to look at
  first.

Examples
--------
>>> import polars as pl
>>> from rlhf_audit_kit import analysis
>>> labels = pl.DataFrame({"item": [1, 1, 2, 2], "annotator": ["a", "b", "a", "b"],
...                        "label": ["x", "x", "y", "y"]})
>>> analysis.krippendorff_alpha(labels)
1.0
"""
from __future__ import annotations

from rlhf_audit_kit.analysis.agreement import (
    BootstrapCI,
    bootstrap_ci,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    pairwise,
    pairwise_from_counts,
    percent_agreement,
)
from rlhf_audit_kit.analysis.annotators import (
    agreement_matrix,
    annotation_frame,
    annotator_drift,
    annotator_report,
    throughput,
)
from rlhf_audit_kit.analysis.changepoint import changepoints, cusum, page_hinkley
from rlhf_audit_kit.analysis.drift import (
    drift_table,
    js_distance,
    ks,
    psi,
    psi_edges,
    wasserstein,
)
from rlhf_audit_kit.analysis.model import (
    metric_changepoints,
    reward_drift,
    reward_hacking,
    training_trends,
)
from rlhf_audit_kit.analysis.summary import Summary, summary

__all__ = [
    "BootstrapCI",
    "Summary",
    "agreement_matrix",
    "annotation_frame",
    "annotator_drift",
    "annotator_report",
    "bootstrap_ci",
    "changepoints",
    "cohen_kappa",
    "cusum",
    "drift_table",
    "fleiss_kappa",
    "js_distance",
    "krippendorff_alpha",
    "ks",
    "metric_changepoints",
    "page_hinkley",
    "pairwise",
    "pairwise_from_counts",
    "percent_agreement",
    "psi",
    "psi_edges",
    "reward_drift",
    "reward_hacking",
    "summary",
    "throughput",
    "training_trends",
    "wasserstein",
]
