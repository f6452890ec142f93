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

from importlib import import_module

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


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
