"""Who signed a bundle, as verified, and what its manifest merely states.

:meth:`Bundle.verify <rlhf_audit_kit.bundle.Bundle.verify>` checks the manifest's ``origin``,
``tree_size``, ``root_hash`` and ``files`` (SHA-256s) against the signed checkpoint and the files
(:data:`SIGNED_MANIFEST_FIELDS`).
Every other manifest field (``key_name``, ``key_id``, ``store_id``, ``encoding``, ``created_at``,
``snapshot_seq``, or anything a bundle's author adds) is covered by no signature: whoever handles
the bundle can rewrite it. So the signer is taken from the pinned key that verified the checkpoint
(:attr:`VerifyReport.signed_by <rlhf_audit_kit.ledger.verify.VerifyReport.signed_by>`), the encoding
from the entries (each one was re-encoded and compared byte for byte), the store id from the signed
origin when the origin names it, and the rest is shown only as an unverified statement.

>>> m = {"origin": "o", "tree_size": 1, "root_hash": "00", "files": {}, "key_name": "Trusted-Regulator"}
>>> [(c.field, c.agrees) for c in manifest_claims(m, signed_by=[])]
[('key_name', None)]
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..bundle import SIGNED_MANIFEST_FIELDS
from ..encoding import ENCODING_NAME
from ..ledger.checkpoint import Verifier

__all__ = ["SIGNED_MANIFEST_FIELDS", "Claim", "cosigned_by", "manifest_claims", "signers", "store_id_from_origin"]

# A store created without an origin signs "rlhf-audit-kit.local/<store id>" (see AuditStore).
_STORE_ORIGIN = re.compile(r"rlhf-audit-kit\.local/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@dataclass(frozen=True)
class Claim:
    """One unsigned manifest field: its value as stated, and how it compares with what was verified.

    ``agrees`` is True/False when a verified value exists to compare with, None when nothing signed
    says anything about the field.
    """

    field: str
    value: Any
    agrees: bool | None
    check: str


def signers(signed_by: Sequence[str]) -> list[Verifier]:
    """The pinned keys that verified a checkpoint, from ``VerifyReport.signed_by``."""
    return [Verifier.from_vkey(v) for v in signed_by]


def cosigned_by(cosignature) -> str:
    """One verified witness cosignature in words (plain text: escape it where it is shown).

    >>> from rlhf_audit_kit.ledger.cosignature import Cosignature
    >>> cosigned_by(Cosignature("witness.example/w1", "cacf2e50", 1767225600, "witness.example/w1+cacf2e50+B..."))
    'cosigned by the pinned witness witness.example/w1 (key id cacf2e50) at 2026-01-01 00:00:00 UTC'
    """
    return (f"cosigned by the pinned witness {cosignature.name} (key id {cosignature.key_id}) at "
            f"{cosignature.time.strftime('%Y-%m-%d %H:%M:%S')} UTC")


def store_id_from_origin(origin: str) -> str | None:
    """The store id a default origin (``rlhf-audit-kit.local/<store id>``) names, else None.

    >>> store_id_from_origin("rlhf-audit-kit.local/0b7f1a2c-1d2e-4f00-8a9b-0c1d2e3f4a5b")
    '0b7f1a2c-1d2e-4f00-8a9b-0c1d2e3f4a5b'
    """
    m = _STORE_ORIGIN.fullmatch(origin or "")
    return m.group(1) if m else None


def manifest_claims(manifest: Mapping[str, Any], *, signed_by: Sequence[str], origin: str = "",
                    entries_verified: bool = False) -> list[Claim]:
    """Every manifest field no signature covers, compared with the verified facts where there are any.

    ``manifest``: the manifest, or ``VerifyReport.unsigned``; ``signed_by``: ``VerifyReport.signed_by``;
    ``origin``: the signed checkpoint's origin (to check ``store_id``); ``entries_verified``: the
    verification passed, so every entry is in :data:`~rlhf_audit_kit.encoding.ENCODING_NAME`.
    """
    keys = signers(signed_by)

    def versus(value: Any, verified: set[str], what: str) -> tuple[bool | None, str]:
        if not verified:
            return None, f"not signed; no verified {what} to compare with"
        shown = ", ".join(sorted(verified))
        return (True, f"agrees with the verified {what}") if value in verified else (
            False, f"DISAGREES with the verified {what} ({shown})")

    sid = store_id_from_origin(origin)
    out = []
    for name in sorted(set(manifest) - SIGNED_MANIFEST_FIELDS):
        value = manifest[name]
        if name == "key_name":
            agrees, check = versus(value, {v.name for v in keys}, "signing key's name")
        elif name == "key_id":
            agrees, check = versus(value, {v.key_id.hex() for v in keys}, "signing key's id")
        elif name == "encoding":
            agrees, check = versus(value, {ENCODING_NAME} if entries_verified else set(), "encoding of the entries")
        elif name == "store_id":
            agrees, check = versus(value, {sid} if sid else set(), "store id in the signed origin")
        else:
            agrees, check = None, "not signed"
        out.append(Claim(name, value, agrees, check))
    return out
