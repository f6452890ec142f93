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

    with store.recorder() as rec:                             # live: log() never waits for the disk
        rec.log({"kind": "train_step", "run_id": "dpo-1", "algorithm": "dpo", "step": 1,
                 "metrics": {"rewards/margins": 0.4}})
"""
from __future__ import annotations

from ._lazy import lazy_getattr
from .artifacts import hash_artifact
from .errors import (AuditKitError, BudgetExceededError, BundleError, ForkError, IntegrityError, KeysError,
                     ManifestSizeWarning, SignatureError, StoreInUseError, StoreLockedError, ValidationError)
from .schema import KINDS
from .store import AuditStore, open_store

__version__ = "0.1.0"

# Heavier parts load on first use, so `import rlhf_audit_kit` stays quick.
_LAZY = {
    "open_bundle": "bundle", "Bundle": "bundle",
    "Snapshot": "ledger.snapshot", "VerifyReport": "ledger.verify",
    "init_keys": "keys", "load_signer": "keys", "load_verifier": "keys",
    "Pseudonymizer": "privacy.pseudonym",
    "summary": "analysis.summary",
    "export_compliance_notebook": "report.compliance",
    "Recorder": "recorder",
}
_SUBMODULES = ("analysis", "apps", "demo", "ingest", "keys", "ledger", "privacy", "report", "widgets",
               "encoding", "schema", "bundle", "recorder", "integrations")

__all__ = ["AuditStore", "open_store", "hash_artifact", "KINDS", "AuditKitError", "BudgetExceededError",
           "IntegrityError", "KeysError", "SignatureError", "ValidationError", "BundleError", "ForkError",
           "StoreInUseError", "StoreLockedError", "ManifestSizeWarning", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY, globals(), _SUBMODULES)