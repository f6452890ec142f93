"""Reports: compliance notebooks bound to signed snapshot bundles.

>>> from rlhf_audit_kit.report import export_compliance_notebook   # doctest: +SKIP
>>> export_compliance_notebook("bundle/", "evidence.ipynb", verifier="keys/verifier.vkey")  # doctest: +SKIP
PosixPath('evidence.ipynb')

The notebook opens with a notice (evidence support, not legal advice), verifies its bundle in the
first code cell against the key you pinned and stops if anything does not match; see
:mod:`rlhf_audit_kit.report.compliance` and, for what is verified and what is only displayed,
:mod:`rlhf_audit_kit.report.identity`.
"""
from __future__ import annotations

from .compliance import (NOTICE, TEMPLATES, build_compliance_notebook, execute_notebook,
                         export_compliance_notebook, kernel_environment, render_html)

__all__ = ["NOTICE", "TEMPLATES", "build_compliance_notebook", "execute_notebook",
           "export_compliance_notebook", "kernel_environment", "render_html"]
