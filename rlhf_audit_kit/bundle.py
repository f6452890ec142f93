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
import re
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from . import encoding
from .bundle_files import (Limits, check_name, check_parquet, duckdb_path, file_digest, open_file, read_small,
                           show_name, unlisted)
from .errors import AuditKitError, BundleError, IntegrityError, KeysError
from .ledger.checkpoint import Checkpoint, Verifier
from .ledger.snapshot import Snapshot
from .ledger.verify import DuckSource, Finding, VerifyReport, resolve_verifiers, verify_source
from .reader import RecordReader, _quote, cursor_sql, typed_columns, typed_select_list
from .schema import KINDS

__all__ = ["Bundle", "open_bundle", "verify_bundle", "export_bundle", "BUNDLE_FORMAT", "is_bundle", "Limits"]

BUNDLE_FORMAT = "rlhf-audit-kit/bundle/v1"
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
    """True if ``path`` is a folder with an entry named ``manifest.json`` (of any type: opening checks it)."""
    return Path(path).is_dir() and os.path.lexists(Path(path) / MANIFEST_FILE)


# The exporter wrote the files itself: its own bundle is opened without size limits.
_OWN_EXPORT = Limits(**{f: sys.maxsize for f in Limits.__dataclass_fields__})
# Errors of decoding hostile data inside a bundle that passed the checks of opening it: a finding.
_DECODE_ERRORS = (duckdb.Error, pa.ArrowException, pl.exceptions.PolarsError, ValueError, TypeError, OverflowError)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _one_line(e: BaseException) -> str:
    return show_name(f"{type(e).__name__}: {e}".splitlines()[0], 200)


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    """The manifest, checked field by field (a hostile one must not reach the code as odd types)."""
    def bad(what: str) -> BundleError:
        return BundleError(f"{MANIFEST_FILE} {what}; refused", damage="malformed-bundle", file=MANIFEST_FILE)
    try:
        m = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise bad(f"is not UTF-8 JSON ({show_name(str(e), 120)})") from None
    if not isinstance(m, dict):
        raise bad("is not a JSON object")
    if m.get("format") != BUNDLE_FORMAT:
        raise bad(f"has bundle format '{show_name(m.get('format'), 60)}', not {BUNDLE_FORMAT}")
    for key, ok in (("origin", lambda v: isinstance(v, str) and 0 < len(v) <= 1024 and v.isprintable()),
                    ("tree_size", lambda v: type(v) is int and v >= 0),
                    ("root_hash", lambda v: isinstance(v, str) and _HEX64.fullmatch(v)),
                    ("files", lambda v: isinstance(v, dict) and v)):
        if not ok(m.get(key)):
            raise bad(f"field '{key}' is missing or malformed")
    for key in ("snapshot_seq",):
        if m.get(key) is not None and not (type(m[key]) is int and m[key] >= 0):
            raise bad(f"field '{key}' is malformed")
    for key in ("key_name", "key_id", "encoding", "store_id", "created_at"):
        if m.get(key) is not None and not (isinstance(m[key], str) and len(m[key]) <= 1024):
            raise bad(f"field '{key}' is malformed")
    tables = {"log", *KINDS}
    for name, info in m["files"].items():
        check_name(name)
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and _HEX64.fullmatch(info["sha256"])
                and all(info.get(k) is None or (type(info[k]) is int and info[k] >= 0) for k in ("bytes", "rows"))
                and isinstance(info.get("table", "log"), str) and info.get("table", "log") in tables):
            raise bad(f"entry of '{show_name(name)}' is malformed (needs sha256, bytes, rows and a known table)")
    if not any(info.get("table") == "log" for info in m["files"].values()) or NOTE_FILE not in m["files"]:
        raise bad(f"does not list a log table ({LOG_FILE}) and {NOTE_FILE}")
    return m


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
            with Bundle(tmp, limits=_OWN_EXPORT) as b:
                b.verify(verifier).raise_for_status()
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(folder, limits=_OWN_EXPORT)


# ---------------------------------------------------------------- reading
class Bundle(RecordReader):
    """A read-only snapshot bundle. Open it with :func:`open_bundle`.

    The read API mirrors the store: ``sql(query, params)`` (views ``log`` and one per kind, maps as
    DuckDB MAPs, JSON as JSON), ``table(kind)``, ``annotations()``, ..., ``counts()``, ``size``,
    ``origin``. ``snapshot`` is the bundle's signed checkpoint (unverified until you call
    :meth:`verify`).

    A bundle may come from anyone, so opening reads only the files its manifest names, each a
    regular file inside the folder (no link followed, no FIFO or device opened), and bounds every
    Parquet file's decoding cost from its footer and page headers (see :mod:`rlhf_audit_kit.bundle_files`
    and ``limits``). Anything else raises :class:`~rlhf_audit_kit.errors.BundleError` before a value
    is decoded; :meth:`verify` reports what it finds in an opened bundle as findings.
    """

    def __init__(self, path: str | os.PathLike, *, limits: Limits | None = None):
        self.path = Path(path)
        self.limits = limits or Limits()
        if not self.path.is_dir():
            raise BundleError(f"{self.path} is not a snapshot bundle folder", damage="malformed-bundle")
        # the caller's own path may hold links; inside the bundle nothing is followed
        self._root = Path(os.path.realpath(self.path))
        try:
            raw = read_small(self._root, MANIFEST_FILE, self.limits.max_manifest_bytes)
        except FileNotFoundError:
            raise BundleError(f"{self.path} is not a snapshot bundle (no {MANIFEST_FILE})") from None
        self.manifest: dict[str, Any] = _parse_manifest(raw)
        self.note: str = self._text(NOTE_FILE, required=True)
        self._vkey, self._vkey_problem = self._read_vkey()
        self.origin: str = self.manifest["origin"]
        self._lock = threading.RLock()
        self._missing = self._check_files()
        self._con = duckdb.connect(":memory:")
        try:
            self._con.execute("SET TimeZone = 'UTC'")
            self._kinds: set[str] = set()
            self._create_views()
            self._size = self._con.sql("SELECT count(*) FROM log").fetchall()[0][0]
        except duckdb.Error as e:
            self._con.close()
            raise BundleError(f"the bundle's Parquet files do not read ({_one_line(e)}); refused",
                              damage="malformed-bundle") from None
        except BaseException:
            self._con.close()
            raise
        self._verified: VerifyReport | None = None

    def _text(self, name: str, *, required: bool = False) -> str | None:
        try:
            raw = read_small(self._root, name, self.limits.max_text_bytes)
        except FileNotFoundError:
            if required:
                raise BundleError(f"{name} is missing from the bundle", damage="malformed-bundle", file=name) from None
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BundleError(f"{name} is not UTF-8 text; refused", damage="malformed-bundle", file=name) from None

    def _read_vkey(self) -> tuple[str | None, str | None]:
        """The shipped verifier key, parsed; never kept or shown raw when it is not one."""
        if VKEY_FILE not in self.manifest["files"]:
            return None, f"the bundle ships no {VKEY_FILE}"
        try:
            text = self._text(VKEY_FILE)
        except BundleError as e:
            if e.damage == "unsafe-file":
                raise
            text = ""
        if text is None:
            return None, f"{VKEY_FILE} is missing from the bundle"
        try:
            return Verifier.from_vkey(text.strip()).vkey, None
        except KeysError:
            return None, f"{VKEY_FILE} does not hold a verifier key (name+keyid+base64); its content is not shown"

    def _check_files(self) -> set[str]:
        """Check every file the manifest names before decoding any; return the missing ones.

        Refuses (BundleError) links, FIFOs, devices and folders, files and Parquet pages over the
        limits; missing files are left to :meth:`verify` (a table without its file is empty).
        """
        files, lim = self.manifest["files"], self.limits
        missing: set[str] = set()
        on_disk = decoded = 0
        for name, info in files.items():
            try:
                os.close(open_file(self._root, name))  # type and link checks; nothing is read
            except FileNotFoundError:
                missing.add(name)
                continue
            if "table" in info:
                cost = check_parquet(self._root, name, lim)
                decoded += cost.decoded_bytes
            on_disk += os.lstat(self._root / name).st_size
            if max(on_disk, decoded) > lim.max_total_bytes:
                raise BundleError(f"the bundle's files exceed {lim.max_total_bytes:,} bytes (on disk or decoded); "
                                  "refused before decoding (pass larger limits to open it)", damage="oversized",
                                  file=name)
        if any(files[n].get("table") == "log" for n in missing):
            raise BundleError(f"{LOG_FILE} is missing from the bundle", damage="malformed-bundle", file=LOG_FILE)
        return missing

    def _table_files(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for name, info in self.manifest["files"].items():
            if "table" in info and name not in self._missing:
                out.setdefault(info["table"], []).append(duckdb_path(self._root, name))
        return out

    def _create_views(self) -> None:
        from .store import typed_table_ddl
        con, tables = self._con, self._table_files()

        def source(table: str) -> str:  # explicit, glob-escaped file list: a path is taken literally
            return f"read_parquet([{', '.join(_sql_str(f) for f in tables[table])}])"
        con.execute(f"CREATE VIEW log AS SELECT seq, kind, ts, entry, leaf_hash FROM {source('log')}")
        for kind in KINDS.values():
            if kind.name not in tables:
                con.execute(typed_table_ddl(kind))  # empty, so every kind is queryable
                continue
            self._kinds.add(kind.name)
            cols = typed_columns(kind, maps="map_from_entries", json="JSON")  # Parquet back to typed rows
            con.execute(f"CREATE VIEW {_quote(kind.name)} AS SELECT {', '.join(cols)} FROM {source(kind.name)}")

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
    def vkey(self) -> str | None:
        """The shipped verifier key (``name+keyid+base64``) if ``verifier.vkey`` holds one, else None."""
        return self._vkey

    @property
    def verifier(self) -> Verifier:
        """The verifier key shipped in the bundle. Pin your own key instead when you can.

        Raises :class:`~rlhf_audit_kit.errors.BundleError` when the bundle ships no usable key; the
        message never shows the file's content.
        """
        if self._vkey is None:
            raise BundleError(self._vkey_problem or f"no {VKEY_FILE}", damage="malformed-bundle", file=VKEY_FILE)
        return Verifier.from_vkey(self._vkey)

    # ---------------------------------------------------------------- read API (as the store)
    def sql(self, query: str, params: Any = None) -> pl.DataFrame:
        """Run a query over the bundle's views and return polars. Pass user input via ``params``.

        Parquet data that does not decode (damaged pages, a bad footer) raises
        :class:`~rlhf_audit_kit.errors.BundleError`; :meth:`verify` reports it as a finding.
        """
        with self._lock:
            try:
                return cursor_sql(self._con, query, params)
            except duckdb.Error as e:
                # DuckDB's own errors about reading the files (not the query's): the bundle's data
                if type(e) in (duckdb.Error, duckdb.IOException, duckdb.InternalException) or str(self._root) in str(e):
                    raise BundleError(f"the bundle's data does not decode ({_one_line(e)}); run verify",
                                      damage="malformed-bundle") from None
                raise

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
        v = resolve_verifiers(verifier if verifier is not None else self.verifier)
        src = DuckSource(self._con, origin=self.origin, description=f"bundle {self.path}",
                         kinds=self._kinds, has_nodes=False)
        with self._lock:
            try:
                report = verify_source(src, v, extra_notes=[self.note], workers=workers)
            except _DECODE_ERRORS as e:  # hostile data past the open checks: fail closed, as a finding
                report = VerifyReport(source=src.description, events=self._size,
                                      verifier=", ".join(x.vkey for x in v))
                report.findings.append(Finding("malformed-bundle", f"the bundle's data does not decode as a "
                                                                   f"bundle ({_one_line(e)})"))
        self._check_manifest(report)
        self._verified = report
        return report

    def _check_manifest(self, report: VerifyReport) -> None:
        m = self.manifest
        problems = []
        for name, info in m["files"].items():  # names were checked when the bundle was opened
            try:
                digest, size = file_digest(self._root, name)
            except FileNotFoundError:
                problems.append(f"{name} is missing")
                continue
            except BundleError as e:  # swapped for a link or FIFO since opening
                report.findings.append(Finding(e.damage, str(e)))
                continue
            if digest != info["sha256"] or info.get("bytes", size) != size:
                problems.append(f"{name} does not match its SHA-256 in the manifest")
        if problems:
            report.findings.append(Finding("manifest-mismatch", "; ".join(problems)))
        # witnesses' cosigned notes live in cosignatures/ (read by rlhf_audit_kit.ledger.witness): not bundle files
        stray = [n for n in unlisted(self._root, [*m["files"], MANIFEST_FILE]) if n != "cosignatures"]
        if stray:
            shown = ", ".join(show_name(n) for n in stray[:10]) + (f" and {len(stray) - 10} more" if len(stray) > 10
                                                                    else "")
            report.findings.append(Finding("unlisted-file", f"the bundle holds {len(stray)} file(s) its manifest "
                                                            f"does not name (not read): {shown}"))
        if self._vkey_problem and VKEY_FILE in m["files"]:
            report.findings.append(Finding("malformed-bundle", self._vkey_problem))
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
        try:
            counts = self.counts()
        except BundleError as e:  # a display must not raise: say what is wrong instead
            counts = {f"(not readable: {e})": 0}
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{v:,}</td></tr>"
                       for k, v in counts.items())
        if self._verified is None:
            status = "<i>not verified yet: call .verify(vkey)</i>"
        elif self._verified.ok:
            status = f"<span style='color:#1a7f37'>{html.escape(self._verified.message)}</span>"
        else:
            status = f"<span style='color:#cf222e'>{html.escape(self._verified.message)}</span>"
        return (f"<div><b>Snapshot bundle</b> <code>{html.escape(str(self.path))}</code><br>"
                f"origin <code>{html.escape(self.origin)}</code> · {self._size:,} events · root "
                f"<code>{html.escape(self.manifest.get('root_hash', '')[:16])}…</code> · key "
                f"{html.escape(self.manifest.get('key_name') or '?')}<br>{status}"
                f"<table><tr><th>kind</th><th>events</th></tr>{rows}</table></div>")


def open_bundle(folder: str | os.PathLike, *, limits: Limits | None = None) -> Bundle:
    """Open a snapshot bundle read-only (nothing is verified until :meth:`Bundle.verify`).

    Raises :class:`~rlhf_audit_kit.errors.BundleError` for a bundle that cannot be read safely
    (see :class:`Bundle`); ``limits`` (:class:`~rlhf_audit_kit.bundle_files.Limits`) raises the size limits.
    """
    return Bundle(folder, limits=limits)


def verify_bundle(folder: str | os.PathLike, verifier: Any, *, workers: int | None = None,
                  limits: Limits | None = None) -> VerifyReport:
    """Open and verify a bundle against the pinned ``verifier``; never raises for a damaged bundle.

    A bundle refused when opening (:class:`~rlhf_audit_kit.errors.BundleError`) is a failed report
    with that one finding, so callers handle every hostile bundle the same way.

    >>> verify_bundle("/nonexistent", "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").damage
    'malformed-bundle'
    """
    vs = resolve_verifiers(verifier)
    try:
        bundle = Bundle(folder, limits=limits)
    except BundleError as e:
        return VerifyReport(source=f"bundle {folder}", events=0, verifier=", ".join(v.vkey for v in vs),
                            findings=[Finding(e.damage, str(e))])
    with bundle:
        return bundle.verify(vs, workers=workers)
