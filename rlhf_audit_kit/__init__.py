"""rlhf-audit-kit: the verifiable flight recorder of an RLHF project.

>>> import rlhf_audit_kit as rak
>>> sorted(rak.KINDS)[:3]
['annotation', 'checkpoint', 'custom']

Typical use::

    store = rak.open_store("audit.duckdb", keys="keys/")     # keys: rlhf-audit keys init keys/
    store.extend(rak.ingest.load("hh.jsonl", "hh-rlhf")[1], kind="annotation")
    snap = store.snapshot(rak.keys.load_signer("keys/"))     # signed C2SP checkpoint
    store.verify(snap.vkey).raise_for_status()
    bundle = snap.export("bundle/")                           # Parquet + manifest + signed note
"""
from __future__ import annotations

from importlib import import_module

from .artifacts import hash_artifact
from .errors import (AuditKitError, BudgetExceededError, IntegrityError, KeysError, SignatureError,
                     ValidationError)
from .schema import KINDS
from .store import AuditStore, open_store

__version__ = "0.1.0"

# Heavier parts load on first use, so `import rlhf_audit_kit` stays quick.
_LAZY = {
    "open_bundle": ("rlhf_audit_kit.bundle", "open_bundle"),
    "Bundle": ("rlhf_audit_kit.bundle", "Bundle"),
    "Snapshot": ("rlhf_audit_kit.ledger.snapshot", "Snapshot"),
    "VerifyReport": ("rlhf_audit_kit.ledger.verify", "VerifyReport"),
    "init_keys": ("rlhf_audit_kit.keys", "init_keys"),
    "load_signer": ("rlhf_audit_kit.keys", "load_signer"),
    "load_verifier": ("rlhf_audit_kit.keys", "load_verifier"),
    "Pseudonymizer": ("rlhf_audit_kit.privacy.pseudonym", "Pseudonymizer"),
    "summary": ("rlhf_audit_kit.analysis.summary", "summary"),
    "export_compliance_notebook": ("rlhf_audit_kit.report.compliance", "export_compliance_notebook"),
}
_SUBMODULES = ("analysis", "apps", "demo", "ingest", "keys", "ledger", "privacy", "report", "widgets",
               "encoding", "schema", "bundle")

__all__ = ["AuditStore", "open_store", "hash_artifact", "KINDS", "AuditKitError", "BudgetExceededError",
           "IntegrityError", "KeysError", "SignatureError", "ValidationError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(import_module(mod), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
