"""Panel apps over a store or a bundle: one Viewer per view, and the dashboard that holds them.

Every view is a ``pn.viewable.Viewer`` that takes ``source=`` (an AuditStore, a bundle, a snapshot or
a path), never writes, renders inline after ``pn.extension("tabulator")`` and is servable::

    import panel as pn
    from rlhf_audit_kit.apps import AuditDashboard
    pn.extension("tabulator")
    AuditDashboard("bundle/")                # inline in a notebook
    AuditDashboard("bundle/").servable()     # or `rlhf-audit serve bundle/`

Panel apps need ``pip install 'rlhf-audit-kit[apps]'``.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "AnnotatorBehaviour": "annotators",
    "PrivacySpend": "privacy",
    "ModelDrift": "drift",
    "Integrity": "integrity",
    "AuditDashboard": "dashboard",
    "Source": "_data",
    "as_source": "_data",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__():
    return sorted([*globals(), *__all__])
