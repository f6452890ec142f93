"""Snapshot bundles: a self-contained, read-only folder of exactly what one signed snapshot covers.

Layout::

    checkpoint.note    the signed C2SP checkpoint (origin, tree size N, root)
    verifier.vkey      the public verifier key of the signer (convenience; pin your own key)
    manifest.json      format, origin, tree size, root, encoding, created, per-file SHA-256 and rows
    log.parquet        seq, kind, ts, entry, leaf_hash for seq 0..N-1
    <kind>.parquet     one per event kind with rows (seq < N), columns as ``store.table(kind)``

No key material ever enters a bundle. Parquet is readable by polars, DuckDB, Spark or Trino, so a
bundle is the interchange format for other processes (dashboards, auditors, bigger engines).

:func:`open_bundle` gives a :class:`Bundle` with the store's read API (``sql``, ``table``,
``annotations``, ``counts``, ...) over in-memory DuckDB views, so analysis code takes either.
:meth:`Bundle.verify` re-derives everything from the Parquet files with the same checks as
``store.verify`` (:mod:`rlhf_audit_kit.ledger.verify`) and also checks the manifest.

>>> import os, tempfile
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from rlhf_audit_kit.store import open_store
>>> from rlhf_audit_kit.ledger.checkpoint import Signer
>>> signer = Signer("example.com/log", Ed25519PrivateKey.generate())
>>> d = tempfile.mkdtemp()
>>> store = open_store(os.path.join(d, "a.duckdb"), pseudonymize=False)
>>> _ = store.extend([{"kind": "dataset", "name": "hh", "version": "1"}])
>>> bundle = store.snapshot(signer).export(os.path.join(d, "bundle"))
>>> bundle.size, bundle.counts(), bundle.verify(signer.verifier).ok
(1, {'dataset': 1}, True)
>>> bundle.close(); store.close()
"""
from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from . import encoding
from .errors import AuditKitError, IntegrityError
from .ledger.checkpoint import Checkpoint, Verifier
from .ledger.snapshot import Snapshot
from .ledger.verify import DuckSource, Finding, VerifyReport, resolve_verifiers, verify_source
from .reader import RecordReader, _quote, cursor_sql, typed_columns, typed_select_list
from .schema import KINDS

__all__ = ["Bundle", "open_bundle", "export_bundle", "BUNDLE_FORMAT", "is_bundle"]

BUNDLE_FORMAT = "rlhf-audit-kit/bundle/v1"
#: Manifest fields :meth:`Bundle.verify` checks (against the signed note, the log and the files); the
#: others (key_name, key_id, store_id, encoding, ...) are statements no signature covers.
SIGNED_MANIFEST_FIELDS = frozenset({"origin", "tree_size", "root_hash", "files"})
NOTE_FILE, VKEY_FILE, MANIFEST_FILE, LOG_FILE = "checkpoint.note", "verifier.vkey", "manifest.json", "log.parquet"


def _sql_str(s: str | os.PathLike) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)  # hashlib releases the GIL on large chunks
    return h.hexdigest()


def is_bundle(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder holding a bundle manifest."""
    return (Path(path) / MANIFEST_FILE).is_file()


# ---------------------------------------------------------------- export
def export_bundle(store, snapshot: Snapshot, folder: str | os.PathLike, *, verifier: Verifier,
                  verify: bool = True, overwrite: bool = False) -> Bundle:
    """Write the bundle of ``snapshot`` (rows with ``seq < snapshot.size``) into ``folder``.

    The files are written into a temporary sibling folder and renamed into place, so a bundle
    folder is either complete or absent. Refuses an existing non-empty folder unless ``overwrite``.
    With ``verify`` the written bundle is verified against ``verifier`` first (IntegrityError or
    SignatureError if the store does not match its own snapshot).
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        if not overwrite:
            raise AuditKitError(f"{folder} exists and is not empty; pass overwrite=True to replace it")
    if snapshot.origin != store.origin:
        raise AuditKitError(f"snapshot origin {snapshot.origin!r} is not this store's {store.origin!r}")
    size = int(snapshot.size)
    tmp = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        files: dict[str, dict[str, Any]] = {}
        with store._lock:
            cur = store._con.cursor()
            try:
                n = cur.execute("SELECT count(*) FROM log WHERE seq < ?", [size]).fetchall()[0][0]
                if n != size:
                    raise IntegrityError(f"the store has {n:,} events below seq {size:,}; cannot export "
                                         "the snapshot (run store.verify)", damage="truncated")
                cur.execute(f"COPY (SELECT seq, kind, ts, entry, leaf_hash FROM log WHERE seq < {size} "
                            f"ORDER BY seq) TO {_sql_str(tmp / LOG_FILE)} (FORMAT parquet, COMPRESSION zstd)")
                files[LOG_FILE] = {"rows": n, "table": "log"}
                for kind in KINDS.values():
                    rows = cur.execute(f"SELECT count(*) FROM {_quote(kind.name)} WHERE seq < ?",
                                       [size]).fetchall()[0][0]
                    if rows:
                        name = f"{kind.name}.parquet"
                        cur.execute(f"COPY (SELECT {typed_select_list(kind)} FROM {_quote(kind.name)} "
                                    f"WHERE seq < {size} ORDER BY seq) TO {_sql_str(tmp / name)} "
                                    "(FORMAT parquet, COMPRESSION zstd)")
                        files[name] = {"rows": rows, "table": kind.name}
            finally:
                cur.close()
        (tmp / NOTE_FILE).write_text(snapshot.note, encoding="utf-8")
        (tmp / VKEY_FILE).write_text(verifier.vkey + "\n", encoding="utf-8")
        for name, info in files.items():
            info["sha256"] = _sha256_file(tmp / name)
            info["bytes"] = (tmp / name).stat().st_size
        for name in (NOTE_FILE, VKEY_FILE):
            files[name] = {"sha256": _sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
        manifest = {
            "format": BUNDLE_FORMAT, "origin": snapshot.origin, "tree_size": size,
            "root_hash": snapshot.root_hash.hex(), "encoding": encoding.ENCODING_NAME,
            "store_id": store.store_id, "snapshot_seq": snapshot.seq, "key_name": verifier.name,
            "key_id": verifier.key_id.hex(),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "files": dict(sorted(files.items())),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if verify:
            with Bundle(tmp) as b:
                b.verify(verifier).raise_for_status()
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(folder)


# ---------------------------------------------------------------- reading
class Bundle(RecordReader):
    """A read-only snapshot bundle. Open it with :func:`open_bundle`.

    The read API mirrors the store: ``sql(query, params)`` (views ``log`` and one per kind, maps as
    DuckDB MAPs, JSON as JSON), ``table(kind)``, ``annotations()``, ..., ``counts()``, ``size``,
    ``origin``. ``snapshot`` is the bundle's signed checkpoint (unverified until you call
    :meth:`verify`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.manifest: dict[str, Any] = json.loads((self.path / MANIFEST_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AuditKitError(f"{self.path} is not a snapshot bundle (no {MANIFEST_FILE})") from None
        except ValueError as e:
            raise AuditKitError(f"{self.path / MANIFEST_FILE} is not valid JSON: {e}") from None
        if self.manifest.get("format") != BUNDLE_FORMAT:
            raise AuditKitError(f"{self.path} has bundle format {self.manifest.get('format')!r}, "
                                f"not {BUNDLE_FORMAT}")
        self.note: str = (self.path / NOTE_FILE).read_text(encoding="utf-8")
        self.vkey: str = (self.path / VKEY_FILE).read_text(encoding="utf-8").strip()
        self.origin: str = self.manifest["origin"]
        self._lock = threading.RLock()
        self._con = duckdb.connect(":memory:")
        self._con.execute("SET TimeZone = 'UTC'")
        self._kinds: set[str] = set()
        self._create_views()
        self._size = self._con.sql("SELECT count(*) FROM log").fetchall()[0][0]
        self._verified: VerifyReport | None = None

    def _create_views(self) -> None:
        from .store import typed_table_ddl
        con = self._con
        con.execute(f"CREATE VIEW log AS SELECT * FROM read_parquet({_sql_str(self.path / LOG_FILE)})")
        for kind in KINDS.values():
            f = self.path / f"{kind.name}.parquet"
            if not f.is_file():
                con.execute(typed_table_ddl(kind))  # empty, so every kind is queryable
                continue
            self._kinds.add(kind.name)
            cols = typed_columns(kind, maps="map_from_entries", json="JSON")  # Parquet back to typed rows
            con.execute(f"CREATE VIEW {_quote(kind.name)} AS SELECT {', '.join(cols)} "
                        f"FROM read_parquet({_sql_str(f)})")

    # ---------------------------------------------------------------- metadata
    @property
    def size(self) -> int:
        """Events in the bundle (= the signed tree size when the bundle is intact)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def checkpoint(self) -> Checkpoint:
        """The parsed (not verified) checkpoint of ``checkpoint.note``."""
        return self.snapshot.checkpoint

    @property
    def snapshot(self) -> Snapshot:
        """The bundle's signed snapshot (verified only after :meth:`verify`)."""
        snap = Snapshot.from_note(self.note, None, seq=self.manifest.get("snapshot_seq"))
        if self._verified is not None:
            snap.signature_ok = self._verified.ok or self._verified.damage != "bad-signature"
        return snap

    @property
    def verifier(self) -> Verifier:
        """The verifier key shipped in the bundle. Pin your own key instead when you can."""
        return Verifier.from_vkey(self.vkey)

    # ---------------------------------------------------------------- read API (as the store)
    def sql(self, query: str, params: Any = None) -> pl.DataFrame:
        """Run a query over the bundle's views and return polars. Pass user input via ``params``."""
        with self._lock:
            return cursor_sql(self._con, query, params)

    def snapshots(self, verifier: Any = None) -> list[Snapshot]:
        """Earlier snapshots recorded inside the bundle's log, plus the bundle's own, oldest first."""
        from .ledger.snapshot import list_snapshots
        out = list_snapshots(self, verifier)
        own = self.snapshot
        if verifier is not None:
            own.verifier = resolve_verifiers(verifier)[0]
            try:
                own.verify()
            except Exception:  # noqa: BLE001 - status shown on the object
                pass
        return out + [own]

    # ---------------------------------------------------------------- verification
    def export_compliance_notebook(self, path: str | os.PathLike, template: str = "eu-ai-act", **kw: Any):
        """Export a compliance notebook bound to this bundle; see
        :func:`rlhf_audit_kit.report.compliance.export_compliance_notebook`."""
        from .report.compliance import export_compliance_notebook
        return export_compliance_notebook(self, path, template=template, **kw)

    def verify(self, verifier: Any = None, *, workers: int | None = None) -> VerifyReport:
        """Re-derive and check everything from the Parquet files; return a :class:`VerifyReport`.

        ``verifier``: the key you trust (Verifier, vkey string or file). By default the bundle's own
        ``verifier.vkey`` is used, which only proves the bundle is self-consistent: anyone can
        re-sign a forged bundle with their own key. An auditor should always pin the key.
        """
        v = resolve_verifiers(verifier if verifier is not None else self.vkey)
        src = DuckSource(self._con, origin=self.origin, description=f"bundle {self.path}",
                         kinds=self._kinds, has_nodes=False)
        with self._lock:
            report = verify_source(src, v, extra_notes=[self.note], workers=workers)
        self._check_manifest(report)
        report.unsigned = {k: v for k, v in self.manifest.items() if k not in SIGNED_MANIFEST_FIELDS}
        self._verified = report
        return report

    def _check_manifest(self, report: VerifyReport) -> None:
        m = self.manifest
        problems = []
        for name, info in m.get("files", {}).items():
            p = self.path / name
            if not p.is_file():
                problems.append(f"{name} is missing")
            elif _sha256_file(p) != info.get("sha256"):
                problems.append(f"{name} does not match its SHA-256 in the manifest")
            elif "rows" in info and info.get("table") in KINDS and info["table"] not in self._kinds:
                problems.append(f"{name} is not a table of the bundle")
        listed = set(m.get("files", {}))
        for p in self.path.glob("*.parquet"):
            if p.name not in listed:
                problems.append(f"{p.name} is not listed in the manifest")
        if problems:
            report.findings.append(Finding("manifest-mismatch", "; ".join(problems)))
        try:
            cp = Checkpoint.parse(self.note[:self.note.rfind("\n\n") + 1])
            meta_ok = (m.get("origin") == cp.origin and m.get("tree_size") == cp.size == self._size
                       and m.get("root_hash") == cp.root_hash.hex())
        except ValueError:
            meta_ok = True  # the note itself is reported as bad-signature
        if not meta_ok:
            report.findings.append(Finding("bundle-metadata-mismatch",
                                           "manifest, checkpoint note and log size disagree",
                                           None, m.get("tree_size")))

    # ---------------------------------------------------------------- lifecycle and display
    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Bundle({str(self.path)!r}, size={self._size}, origin={self.origin!r}, "
                f"root={self.manifest.get('root_hash', '')[:16]}…)")

    def _repr_html_(self) -> str:
        counts = self.counts()
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{v:,}</td></tr>"
                       for k, v in counts.items())
        # the signer shown is the pinned key that verified; the manifest's key_name is not signed
        signers = [Verifier.from_vkey(v).name for v in self._verified.signed_by] if self._verified else []
        key = (f"signed by {html.escape(', '.join(signers))}" if signers else
               f"key named in the manifest (not verified): {html.escape(str(self.manifest.get('key_name') or '?'))}")
        if self._verified is None:
            status = "<i>not verified yet: call .verify(vkey)</i>"
        elif self._verified.ok:
            status = f"<span style='color:#1a7f37'>{html.escape(self._verified.message)}</span>"
        else:
            status = f"<span style='color:#cf222e'>{html.escape(self._verified.message)}</span>"
        return (f"<div><b>Snapshot bundle</b> <code>{html.escape(str(self.path))}</code><br>"
                f"origin <code>{html.escape(self.origin)}</code> · {self._size:,} events · root "
                f"<code>{html.escape(self.manifest.get('root_hash', '')[:16])}…</code> · {key}<br>{status}"
                f"<table><tr><th>kind</th><th>events</th></tr>{rows}</table></div>")


def open_bundle(folder: str | os.PathLike) -> Bundle:
    """Open a snapshot bundle read-only (nothing is verified until :meth:`Bundle.verify`)."""
    return Bundle(folder)
