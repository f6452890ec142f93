"""Signed snapshots: a C2SP checkpoint of the log, signed with Ed25519 and recorded in the log itself.

:meth:`AuditStore.snapshot <rlhf_audit_kit.store.AuditStore.snapshot>` computes the root of the
current tree in O(log n) from the stored subtree hashes, signs the checkpoint note and appends an
internal ``snapshot`` event (origin, tree_size, root_hash, key_name, key_id, note). The snapshot
event of a checkpoint of size N therefore has ``seq == N``: it is covered by the *next* snapshot.

>>> import os, tempfile
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from rlhf_audit_kit.store import open_store
>>> from rlhf_audit_kit.ledger.checkpoint import Signer
>>> signer = Signer("example.com/log", Ed25519PrivateKey.generate())
>>> store = open_store(os.path.join(tempfile.mkdtemp(), "a.duckdb"), pseudonymize=False)
>>> _ = store.extend([{"kind": "dataset", "name": "hh", "version": "1"}])
>>> snap = store.snapshot(signer)
>>> snap.size, snap.seq, snap.verify()
(1, 1, True)
>>> store.close()
"""
from __future__ import annotations

import datetime as dt
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KeysError, SignatureError
from ..keys import load_signer
from ..store import AuditStore, _x
from .checkpoint import SIG_PREFIX, Checkpoint, Signer, Verifier, sign_checkpoint, verify_checkpoint
from .tree import TreeReader
from .verify import resolve_verifiers

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import Bundle

__all__ = ["Snapshot", "take_snapshot", "list_snapshots", "resolve_signer"]


@dataclass
class Snapshot:
    """A signed checkpoint of an audit log.

    Attributes: ``note`` (the signed C2SP note text), ``checkpoint`` (its parsed body, see
    :class:`~rlhf_audit_kit.ledger.Checkpoint`), ``verifier`` (the public key, when known),
    ``seq`` (the ``seq`` of its snapshot event in the log, None for a note outside a log),
    ``ts`` (when it was recorded), ``key_name``/``key_id`` (from the note's signature line).
    ``signature_ok`` is True/False once :meth:`verify` ran (None: not checked yet).
    """

    note: str
    checkpoint: Checkpoint
    verifier: Verifier | None = None
    seq: int | None = None
    ts: dt.datetime | None = None
    key_name: str | None = None
    key_id: str | None = None
    signature_ok: bool | None = None
    store: AuditStore | None = field(default=None, repr=False, compare=False)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_note(cls, note: str, verifier: Verifier | None = None, **kw: Any) -> Snapshot:
        """Parse a signed checkpoint note (verified when ``verifier`` is given).

        Raises :class:`SignatureError` if a verifier is given and the note does not verify under it.
        """
        text = note[:note.rfind("\n\n") + 1] if "\n\n" in note else note
        if verifier is not None:
            cp = verify_checkpoint(note, verifier)
            ok: bool | None = True
        else:
            try:
                cp = Checkpoint.parse(text)
            except ValueError as e:
                raise SignatureError(f"not a checkpoint note: {e}") from None
            ok = None
        sig = [ln for ln in note.splitlines() if ln.startswith(SIG_PREFIX)]
        name = sig[0][len(SIG_PREFIX):].split(" ", 1)[0] if sig else None
        kid = None
        if sig:
            import base64
            try:
                kid = base64.b64decode(sig[0].rsplit(" ", 1)[-1])[:4].hex()
            except ValueError:
                kid = None
        kw.setdefault("key_name", name)
        kw.setdefault("key_id", kid)
        return cls(note=note, checkpoint=cp, verifier=verifier, signature_ok=ok, **kw)

    # ---------------------------------------------------------------- properties
    @property
    def size(self) -> int:
        """Tree size the checkpoint signs (number of events covered: seq 0..size-1)."""
        return self.checkpoint.size

    @property
    def root_hash(self) -> bytes:
        return self.checkpoint.root_hash

    @property
    def origin(self) -> str:
        return self.checkpoint.origin

    @property
    def vkey(self) -> str | None:
        return self.verifier.vkey if self.verifier else None

    # ---------------------------------------------------------------- actions
    def verify(self, verifier: Any = None) -> bool:
        """Check the note's signature (only the signature; ``store.verify`` checks the data).

        Uses ``verifier`` (a Verifier, vkey string or file) or the snapshot's own verifier.
        Returns True or raises :class:`SignatureError`.
        """
        vs = resolve_verifiers(verifier if verifier is not None else self.verifier)
        try:
            cp = verify_checkpoint(self.note, vs)
        except SignatureError:
            self.signature_ok = False
            raise
        if cp != self.checkpoint:  # pragma: no cover - the note is the checkpoint's source
            self.signature_ok = False
            raise SignatureError("the snapshot's checkpoint differs from its note")
        self.signature_ok = True
        return True

    def export(self, folder: str | os.PathLike, *, verifier: Any = None, verify: bool = True,
               overwrite: bool = False, storage_options: dict | None = None) -> Bundle:
        """Write a self-contained bundle of exactly what this snapshot signs; return it opened.

        See :func:`rlhf_audit_kit.bundle.export_bundle`. ``verify`` re-verifies the written bundle
        against the snapshot's key before returning (the folder is removed if it fails). ``folder``
        may be an fsspec URL (``s3://bucket/bundle``), its file system made with ``storage_options``.
        """
        from ..bundle import export_bundle
        if self.store is None:
            raise ValueError("this snapshot is not attached to a store; export it from store.snapshots()")
        v = verifier if verifier is not None else self.verifier
        if v is None:
            raise KeysError("exporting needs the snapshot's verifier key: pass verifier=")
        return export_bundle(self.store, self, folder, verifier=resolve_verifiers(v)[0], verify=verify,
                             overwrite=overwrite, storage_options=storage_options)

    def export_compliance_notebook(self, path: str | os.PathLike, template: str = "eu-ai-act", **kw: Any):
        """Export a compliance notebook bound to this snapshot (its bundle is written beside it).

        See :func:`rlhf_audit_kit.report.compliance.export_compliance_notebook`.
        """
        from ..report.compliance import export_compliance_notebook
        return export_compliance_notebook(self, path, template=template, **kw)

    def __repr__(self) -> str:
        return (f"Snapshot(origin={self.origin!r}, size={self.size}, root={self.root_hash.hex()[:16]}…, "
                f"key={self.key_name!r}, seq={self.seq})")

    def _repr_html_(self) -> str:
        status = {True: "<span style='color:#1a7f37'>signature verified</span>",
                  False: "<span style='color:#cf222e'>signature INVALID</span>",
                  None: "<i>signature not checked</i>"}[self.signature_ok]
        rows = [("origin", html.escape(self.origin)), ("size", f"{self.size:,} events"),
                ("root", f"<code>{self.root_hash.hex()}</code>"),
                ("key", html.escape(f"{self.key_name or '?'} ({self.key_id or '?'})")),
                ("recorded", f"{self.ts:%Y-%m-%d %H:%M:%S} UTC" if self.ts else "–"),
                ("seq", "–" if self.seq is None else str(self.seq)), ("status", status)]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows)
        note = html.escape(self.note)
        return (f"<div><b>Signed snapshot</b><table>{body}</table>"
                f"<details><summary>signed note</summary><pre>{note}</pre></details></div>")


# ---------------------------------------------------------------- store side
def resolve_signer(signer: Any, store: AuditStore | None = None, passphrase: str | None = None) -> Signer:
    """A :class:`Signer`, or one loaded from a keys folder (default: the store's keys folder)."""
    if isinstance(signer, Signer):
        return signer
    folder = signer if signer is not None else (store.keys_folder if store is not None else None)
    if folder is None:
        raise KeysError("snapshot needs a signer: pass a Signer or a keys folder "
                        "(or open the store with keys=DIR / set RLHF_AUDIT_KEYS)")
    return load_signer(Path(folder), passphrase)


def take_snapshot(store: AuditStore, signer: Any = None, *, passphrase: str | None = None) -> Snapshot:
    """Sign the store's current tree and record the snapshot event; see ``AuditStore.snapshot``."""
    s = resolve_signer(signer, store, passphrase)
    with store._lock:
        store._check_writable()
        size = store.size
        root = TreeReader(store._get_nodes).root(size)
        cp = Checkpoint(store.origin, size, root)
        note = sign_checkpoint(cp, s)
        event = {"kind": "snapshot", "origin": store.origin, "tree_size": size, "root_hash": root.hex(),
                 "key_name": s.name, "key_id": s.key_id.hex(), "note": note}
        store._internal_write = True
        try:
            seq = store.extend([event])[0]
        finally:
            store._internal_write = False
        ts = _x(store._con, "SELECT ts FROM log WHERE seq = ?", [seq])[0][0]
    return Snapshot(note=note, checkpoint=cp, verifier=s.verifier, seq=seq, ts=ts, key_name=s.name,
                    key_id=s.key_id.hex(), signature_ok=True, store=store)


def list_snapshots(store: Any, verifier: Any = None) -> list[Snapshot]:
    """Every snapshot recorded in a store or bundle, oldest first (signatures checked if a key is given)."""
    v = resolve_verifiers(verifier)[0] if verifier is not None else None
    df = store.sql("SELECT seq, ts, key_name, key_id, note FROM snapshot ORDER BY seq")
    out = []
    for seq, ts, name, kid, note in df.rows():
        snap = Snapshot.from_note(note, None, seq=seq, ts=ts, key_name=name, key_id=kid,
                                  store=store if hasattr(store, "_get_nodes") else None)
        snap.verifier = v
        if v is not None:
            try:
                snap.verify(v)
            except SignatureError:
                pass
        out.append(snap)
    return out
