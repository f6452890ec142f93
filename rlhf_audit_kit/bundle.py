"""Snapshot bundles: a self-contained, read-only folder of what the signed snapshots of one log cover.

A bundle only grows: immutable Parquet segments of seq ranges, every published signed note, and a
manifest written last (layout: :mod:`rlhf_audit_kit.segments`). Exporting a newer snapshot of the
same log onto it (:func:`export_bundle`, ``snapshot.export(folder)``) adds the new events' segment,
its note and a new manifest; nothing earlier is rewritten. No key material ever enters a bundle.
Parquet is readable by polars, DuckDB, Spark or Trino (globs over ``segments/``: docs/bundles.md),
so a bundle is the interchange format for other processes (dashboards, auditors, bigger engines).

:func:`open_bundle` gives a :class:`Bundle` with the store's read API (``sql``, ``table``,
``annotations``, ``counts``, ...) over in-memory DuckDB views, so analysis code takes either.
:meth:`Bundle.verify` re-derives everything from the Parquet files with the same checks as
``store.verify`` (:mod:`rlhf_audit_kit.ledger.verify`) and also checks the manifest;
``verify(key, since=trusted)`` re-derives only the segments after a checkpoint you trusted before.

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
>>> first = bundle.verify(signer.verifier)
>>> _ = store.extend([{"kind": "dataset", "name": "hh", "version": "2"}])
>>> bundle.close(); bundle = store.snapshot(signer).export(os.path.join(d, "bundle"))
>>> report = bundle.verify(signer.verifier, since=first)
>>> report.ok, report.covered, bundle.size
(True, (1, 3), 3)
>>> bundle.close(); store.close()
"""
from __future__ import annotations

import html
import os
import re
import stat
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from .bundle_files import BundleFiles, Limits, check_name, is_url, local_path, show_name, shown_url
from .errors import AuditKitError, BundleError, KeysError, SignatureError
from .ledger.checkpoint import Checkpoint, Verifier, verify_checkpoint
from .ledger.merkle import EMPTY_ROOT
from .ledger.snapshot import Snapshot, list_snapshots
from .ledger.tree import ExtendedTree, compact_range_nodes
from .ledger.verify import DuckSource, Finding, VerifyReport, resolve_verifiers, verify_source
from .reader import RecordReader, _quote, cursor_sql, typed_columns
from .schema import KINDS
from .segments import (CHECKPOINT_DIR, FORMAT_V1, FORMAT_V2, SEGMENT_DIR, Segment, checkpoint_file, complete_subtree,
                       later_files, parse_segments)
from .store import _SQL_TYPES, typed_table_ddl

__all__ = ["Bundle", "open_bundle", "verify_bundle", "export_bundle", "BUNDLE_FORMAT", "is_bundle", "Limits"]

#: The format :func:`export_bundle` writes; bundles of format v1 (one file per table) still open and verify.
BUNDLE_FORMAT = FORMAT_V2
#: Manifest fields :meth:`Bundle.verify` checks (against the signed notes, the log and the files); the
#: others (key_name, key_id, store_id, encoding, ...) are statements no signature covers.
SIGNED_MANIFEST_FIELDS = frozenset({"origin", "tree_size", "root_hash", "files", "segments", "note"})
NOTE_FILE, VKEY_FILE, MANIFEST_FILE, LOG_FILE = "checkpoint.note", "verifier.vkey", "manifest.json", "log.parquet"
#: Entries of a bundle folder that are not bundle files: witnesses' cosigned notes.
_NOT_BUNDLE_FILES = ("cosignatures",)
_LOG_DDL = "CREATE TABLE log (seq BIGINT, kind VARCHAR, ts TIMESTAMP, entry BLOB, leaf_hash BLOB)"


def _sql_str(s: str | os.PathLike) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def is_bundle(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> bool:
    """True if ``path`` is a folder (or an fsspec URL) with an entry named ``manifest.json`` (of any
    type: opening checks it). For a URL, errors reaching the store (credentials, network) raise."""
    if is_url(path):
        return BundleFiles(path, storage_options).exists(MANIFEST_FILE)
    return Path(path).is_dir() and os.path.lexists(Path(path) / MANIFEST_FILE)


# The exporter wrote the files itself: its own bundle is opened without size limits.
_OWN_EXPORT = Limits(**{f: sys.maxsize for f in Limits.__dataclass_fields__})
# Errors of decoding hostile data inside a bundle that passed the checks of opening it: a finding.
_DECODE_ERRORS = (duckdb.Error, pa.ArrowException, pl.exceptions.PolarsError, ValueError, TypeError, OverflowError)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _one_line(e: BaseException) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()] or [""]
    # DuckDB passes on an fsspec file system's error as "Error: Traceback ...": its last line says what
    said = [x for x in lines[1:] if not x.startswith((" ", "\t", "LINE ")) and x.strip("^ ")]
    line = said[-1] if said and lines[0].rstrip().endswith("Traceback (most recent call last):") else lines[0]
    return show_name(f"{type(e).__name__}: {line}", 200)


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    """The manifest, checked field by field (a hostile one must not reach the code as odd types)."""
    import json

    def bad(what: str) -> BundleError:
        return BundleError(f"{MANIFEST_FILE} {what}; refused", damage="malformed-bundle", file=MANIFEST_FILE)
    try:
        m = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise bad(f"is not UTF-8 JSON ({show_name(str(e), 120)})") from None
    if not isinstance(m, dict):
        raise bad("is not a JSON object")
    if m.get("format") not in (FORMAT_V1, FORMAT_V2):
        raise bad(f"has bundle format '{show_name(m.get('format'), 60)}', not {FORMAT_V2} (or {FORMAT_V1})")
    for key, ok in (("origin", lambda v: isinstance(v, str) and 0 < len(v) <= 1024 and v.isprintable()),
                    ("tree_size", lambda v: type(v) is int and v >= 0),
                    ("root_hash", lambda v: isinstance(v, str) and _HEX64.fullmatch(v)),
                    ("files", lambda v: isinstance(v, dict) and v)):
        if not ok(m.get(key)):
            raise bad(f"field '{key}' is missing or malformed")
    for key in ("snapshot_seq",):
        if m.get(key) is not None and not (type(m[key]) is int and m[key] >= 0):
            raise bad(f"field '{key}' is malformed")
    for key in ("key_name", "key_id", "encoding", "store_id", "created_at", "note"):
        if m.get(key) is not None and not (isinstance(m[key], str) and len(m[key]) <= 1024):
            raise bad(f"field '{key}' is malformed")
    tables = {"log", *KINDS}
    for name, info in m["files"].items():
        check_name(name)
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and _HEX64.fullmatch(info["sha256"])
                and all(info.get(k) is None or (type(info[k]) is int and info[k] >= 0) for k in ("bytes", "rows"))
                and isinstance(info.get("table", "log"), str) and info.get("table", "log") in tables):
            raise bad(f"entry of '{show_name(name)}' is malformed (needs sha256, bytes, rows and a known table)")
    has_log = any(info.get("table") == "log" for info in m["files"].values())
    if m["format"] == FORMAT_V1 and (not has_log or NOTE_FILE not in m["files"]):
        raise bad(f"does not list a log table ({LOG_FILE}) and {NOTE_FILE}")
    if m["format"] == FORMAT_V2 and not has_log and m["tree_size"]:
        raise bad("does not list a log table")
    return m


def export_bundle(store, snapshot: Snapshot, folder: str | os.PathLike, *, verifier: Verifier,
                  verify: bool = True, overwrite: bool = False,
                  storage_options: dict[str, Any] | None = None) -> Bundle:
    """Write the bundle of ``snapshot`` into ``folder`` (or an fsspec URL), or extend the bundle already
    there; see :func:`rlhf_audit_kit.bundle_export.export_bundle`."""
    from .bundle_export import export_bundle as export
    return export(store, snapshot, folder, verifier=verifier, verify=verify, overwrite=overwrite,
                  storage_options=storage_options)


def _view_sql(table: str, files: Sequence[str], columns: Sequence[Sequence[str]]) -> str:
    """The SELECT of a table's view over its segment files, columns as the store has them.

    A file written before a field was added to its kind lacks that column: it reads as NULL (the
    entries of such rows have no key for it either, see ``Field.omit_null``).
    """
    have = set().union(*map(set, columns)) if columns else set()
    union = ", union_by_name = true" if len({tuple(sorted(c)) for c in columns}) > 1 else ""
    source = f"read_parquet([{', '.join(_sql_str(f) for f in files)}]{union})"
    if table == "log":
        return f"SELECT seq, kind, ts, entry, leaf_hash FROM {source}"
    kind = KINDS[table]
    items = typed_columns(kind, maps="map_from_entries", json="JSON")  # Parquet back to typed rows
    cols = [item if f.name in have else f"CAST(NULL AS {_SQL_TYPES[f.type]}) AS {_quote(f.name)}"
            for item, f in zip(items[2:], kind.fields)]
    return f"SELECT {', '.join(items[:2] + cols)} FROM {source}"


def _create_views(con, tables: Mapping[str, list[tuple[str, tuple[str, ...]]]]) -> set[str]:
    """Views ``log`` and one per kind over ``tables`` (table -> [(DuckDB path, columns)]); returns the
    kinds with files (the others are empty tables, so every kind is queryable)."""
    if "log" in tables:
        files = tables["log"]
        con.execute(f"CREATE VIEW log AS {_view_sql('log', [f for f, _ in files], [c for _, c in files])}")
    else:
        con.execute(_LOG_DDL)
    kinds = set()
    for kind in KINDS.values():
        if kind.name not in tables:
            con.execute(typed_table_ddl(kind))
            continue
        kinds.add(kind.name)
        files = tables[kind.name]
        con.execute(f"CREATE VIEW {_quote(kind.name)} AS "
                    f"{_view_sql(kind.name, [f for f, _ in files], [c for _, c in files])}")
    return kinds


# ---------------------------------------------------------------- reading
class Bundle(RecordReader):
    """A read-only snapshot bundle. Open it with :func:`open_bundle`.

    The read API mirrors the store: ``sql(query, params)`` (views ``log`` and one per kind, maps as
    DuckDB MAPs, JSON as JSON), ``table(kind)``, ``annotations()``, ..., ``counts()``, ``size``,
    ``origin``. ``snapshot`` is the bundle's newest signed checkpoint (unverified until you call
    :meth:`verify`); ``segments`` its immutable pieces.

    A bundle may come from anyone, so opening reads only the files its manifest names, each a
    regular file inside the folder (no link followed, no FIFO or device opened), and bounds every
    Parquet file's decoding cost from its footer and page headers (see :mod:`rlhf_audit_kit.bundle_files`
    and ``limits``). Anything else raises :class:`~rlhf_audit_kit.errors.BundleError` before a value
    is decoded; :meth:`verify` reports what it finds in an opened bundle as findings.

    The manifest is read once: a bundle opened while a writer extends the folder keeps reading
    (and verifying) what that manifest names, which is never rewritten.

    A bundle on object storage opens from its fsspec URL (``s3://bucket/bundle``, ``gs://``,
    ``memory://``) with the same checks, ``storage_options`` passed to the file system; ``url`` is
    that URL (or a local bundle's real path) and ``storage_options`` the options, so that other
    processes (Dask workers) can open the same files (:class:`~rlhf_audit_kit.bundle_files.BundleFiles`,
    ``files``). ``path`` is the folder (a Path), or for a URL the URL as shown (no credentials).
    """

    def __init__(self, path: str | os.PathLike, *, limits: Limits | None = None,
                 storage_options: dict[str, Any] | None = None, _manifest: bytes | None = None,
                 _from: int | None = None):
        self.limits = limits or Limits()
        self.files = BundleFiles(path, storage_options, self.limits)
        #: the fsspec URL, or the local folder's real path; and the options its file system takes
        self.url, self.storage_options = self.files.url, self.files.storage_options
        self.path: Path | str = Path(local_path(path)) if self.files.local else self.files.shown
        if self.files.local and not self.path.is_dir():
            raise BundleError(f"{self.path} is not a snapshot bundle folder", damage="malformed-bundle")
        self._candidate = _manifest is not None  # the exporter's manifest, not yet published
        try:
            raw = _manifest if _manifest is not None else self.files.read_small(MANIFEST_FILE,
                                                                                self.limits.max_manifest_bytes)
        except FileNotFoundError:
            raise BundleError(f"{self.path} is not a snapshot bundle (no {MANIFEST_FILE})") from None
        except BundleError as e:
            if e.damage != "oversized":
                raise
            raise BundleError(f"{e}; a bundle of many segments (~2 KB each) may be genuine: open it with "
                              f"limits=Limits(max_manifest_bytes=...) if you expect that many",
                              damage="oversized", file=MANIFEST_FILE) from None
        self.manifest: dict[str, Any] = _parse_manifest(raw)
        self.format: str = self.manifest["format"]
        self.segments: list[Segment] = parse_segments(self.manifest)
        self._note_file = NOTE_FILE if self.format == FORMAT_V1 else self.manifest["note"]
        self.note: str = self._text(self._note_file, required=True)
        # v2: checkpoint.note is a copy of the newest note, outside the manifest (a writer replaces it)
        self._note_copy = self._text(NOTE_FILE) if self.format == FORMAT_V2 else None
        self._vkey, self._vkey_problem = self._read_vkey()
        self.origin: str = self.manifest["origin"]
        self._lock = threading.RLock()
        self._columns: dict[str, tuple[str, ...]] = {}
        # _from (the exporter's own use): open only the segments from that seq on, the earlier ones unread
        self._from = 0 if _from is None else min(_from, self.manifest["tree_size"])
        opened = [s for s in self.segments if s.start >= self._from]
        if not self.files.local:
            self.files.list_files()  # one listing (a request per 1,000 objects) instead of one per file named
        self._missing = self._check_files(None if _from is None else [
            *(f for s in opened for f in s.files), *(n for n, i in self.manifest["files"].items() if "table" not in i)])
        self._con = self.files.connect()
        try:
            self._con.execute("SET TimeZone = 'UTC'")
            self._kinds = _create_views(self._con, self._table_files(opened))
            self._size = self._from + self._con.sql("SELECT count(*) FROM log").fetchall()[0][0]
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
            raw = self.files.read_small(name, self.limits.max_text_bytes)
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

    def _check_files(self, names: Iterable[str] | None = None) -> set[str]:
        """Check every file the manifest names (or ``names``) before decoding any; return the missing ones.

        Refuses (BundleError) links, FIFOs, devices and folders, files and Parquet pages over the
        limits; missing files are left to :meth:`verify` (a table without its file is empty).
        """
        files, lim = self.manifest["files"], self.limits
        missing: set[str] = set()
        on_disk = decoded = 0
        for name in (files if names is None else names):
            info = files[name]
            try:
                size = self.files.size(name)  # type and link checks; nothing is read
            except FileNotFoundError:
                missing.add(name)
                continue
            if "table" in info:
                cost = self.files.check_parquet(name)
                decoded += cost.decoded_bytes
                self._columns[name] = cost.columns
            on_disk += size
            if max(on_disk, decoded) > lim.max_total_bytes:
                raise BundleError(f"the bundle's files exceed {lim.max_total_bytes:,} bytes (on disk or decoded); "
                                  "refused before decoding (pass larger limits to open it)", damage="oversized",
                                  file=name)
        lost = sorted(n for n in missing if files[n].get("table") == "log")
        if lost:
            raise BundleError(f"{lost[0]} is missing from the bundle", damage="malformed-bundle", file=lost[0])
        return missing

    def _table_files(self, segments: Iterable[Segment]) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
        """Table -> [(glob-escaped path, columns)] of the present files of ``segments``, in seq order."""
        out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        info = self.manifest["files"]
        for seg in segments:
            for name in seg.files:
                if name not in self._missing:
                    out.setdefault(info[name]["table"], []).append((self.files.duckdb_path(name),
                                                                    self._columns.get(name, ())))
        return out

    # ---------------------------------------------------------------- metadata
    @property
    def size(self) -> int:
        """Events in the bundle (= the signed tree size when the bundle is intact)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def checkpoint(self) -> Checkpoint:
        """The parsed (not verified) newest checkpoint."""
        return self.snapshot.checkpoint

    @property
    def snapshot(self) -> Snapshot:
        """The bundle's newest signed snapshot (verified only after :meth:`verify`)."""
        snap = Snapshot.from_note(self.note, None, seq=self.manifest.get("snapshot_seq"))
        if self._verified is not None:
            snap.signature_ok = self._verified.ok or self._verified.damage != "bad-signature"
        return snap

    @property
    def checkpoint_sizes(self) -> list[int]:
        """Tree sizes of the signed notes the bundle publishes, oldest first (its segments' ends)."""
        return [s.end for s in self.segments] if self.format == FORMAT_V2 else [self.manifest["tree_size"]]

    def checkpoint_note(self, size: int | None = None) -> str:
        """The published signed note of tree size ``size`` (default: the newest), as stored (not verified)."""
        if size is None or size == self.manifest["tree_size"]:
            return self.note
        name = checkpoint_file(size)
        if self.format == FORMAT_V1 or name not in self.manifest["files"]:
            raise AuditKitError(f"the bundle publishes no checkpoint of size {size:,} "
                                f"(its sizes: {_sizes(self.checkpoint_sizes)})")
        return self._text(name, required=True)

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """RFC 9162 consistency proof from ``old_size`` to the bundle's size, read in O(events after it).

        Built from the compact range the manifest stores at the last segment boundary at or below
        ``old_size`` and the stored leaf hashes after it; nothing here is verified, so check the proof
        against the two signed roots (``merkle.verify_consistency``), as a witness does.

        >>> # merkle.verify_consistency(old.size, b.size, old.root_hash, b.checkpoint.root_hash,
        >>> #                           b.consistency_proof(old.size))
        """
        size = self.manifest["tree_size"]
        if not 0 <= old_size <= size:
            raise AuditKitError(f"old size {old_size:,} is outside 0..{size:,}")
        start = max([0] + [s.end for s in self.segments if s.compact_range is not None and s.end <= old_size])
        compact = next((s.compact_range for s in self.segments if s.end == start), ())
        leaves = self.sql("SELECT leaf_hash FROM log WHERE seq >= ? ORDER BY seq", [start])["leaf_hash"].to_list()
        if len(leaves) != size - start or any(not isinstance(h, bytes) or len(h) != 32 for h in leaves):
            raise BundleError(f"the bundle's log does not hold the {size - start:,} leaf hashes after seq {start:,}; "
                              "run verify", damage="malformed-bundle")
        return ExtendedTree(start, compact or (), leaves).consistency_proof(old_size, size)

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
                if type(e) in (duckdb.Error, duckdb.IOException, duckdb.InternalException) or self.url in str(e):
                    raise BundleError(f"the bundle's data does not decode ({_one_line(e)}); run verify",
                                      damage="malformed-bundle") from None
                raise

    def snapshots(self, verifier: Any = None) -> list[Snapshot]:
        """Earlier snapshots recorded inside the bundle's log, plus the bundle's own, oldest first."""
        out = list_snapshots(self, verifier)
        own = self.snapshot
        if verifier is not None:
            own.verifier = resolve_verifiers(verifier)[0]
            try:
                own.verify()
            except Exception:  # noqa: BLE001 - status shown on the object
                pass
        return out + [own]

    def export_compliance_notebook(self, path: str | os.PathLike, template: str = "eu-ai-act", **kw: Any):
        """Export a compliance notebook bound to this bundle; see
        :func:`rlhf_audit_kit.report.compliance.export_compliance_notebook`."""
        from .report.compliance import export_compliance_notebook
        return export_compliance_notebook(self, path, template=template, **kw)

    # ---------------------------------------------------------------- verification
    def verify(self, verifier: Any = None, *, workers: int | None = None, since: Any = None,
               scheduler: Any = None, progress: bool | None = None) -> VerifyReport:
        """Re-derive and check the bundle from its Parquet files; return a :class:`VerifyReport`.

        ``verifier``: the key you trust (Verifier, vkey string or file). By default the bundle's own
        ``verifier.vkey`` is used, which only proves the bundle is self-consistent: anyone can
        re-sign a forged bundle with their own key. An auditor should always pin the key.

        ``since``: a checkpoint you verified before (its signed note text or file, a
        :class:`~rlhf_audit_kit.ledger.snapshot.Snapshot`, an earlier ``VerifyReport`` of this
        bundle, or a tree size whose note the bundle publishes). Then only the segments after it
        are re-derived: the newest note's signature, the tree at the trusted size against the
        trusted root (from the compact range the manifest stores there), the new segments' typed
        rows, leaf hashes and files, and the new tree extended from that compact range against
        every newer signed root. ``report.covered`` says which seq range was re-derived; earlier
        segments are not re-read, so damage in them is found only by a full verification (the
        default). A size alone takes the trusted root from the bundle's own note of that size, so
        it cannot reveal a fork: pass the note or report you kept.

        >>> # bundle.verify(key, since=open("trusted.note").read()).covered

        ``workers``: processes of this machine that re-derive the segments in parallel, each holding
        one run of segments (50k-250k events) at a time rather than the whole log
        (:mod:`rlhf_audit_kit.segment_verify`); default: one per core for a bundle of 200,000 events
        or more, else this process; 0 or 1: this process, one run after the other. A range that
        makes one run (a small bundle, a single segment) is verified whole, with ``workers``
        hashing processes as :func:`~rlhf_audit_kit.ledger.verify.verify_source` takes them. The
        report is the same whichever way.

        ``scheduler``: a ``dask.distributed.Client`` or a scheduler address; the segments are then
        re-derived in parallel on its workers and the same report comes back
        (:func:`rlhf_audit_kit.bundle_dask.verify_on_dask`; needs the ``dask`` extra).

        ``progress``: a progress bar while segments are re-derived apart (default: for 200,000
        events or more, in a terminal or a notebook).
        """
        v = resolve_verifiers(verifier if verifier is not None else self.verifier)
        trusted = None if since is None else self._trusted(since, v)
        if scheduler is not None:
            from .bundle_dask import verify_on_dask
            report = verify_on_dask(self, v, scheduler, trusted=trusted, progress=progress)
        else:
            from .segment_verify import LocalBackend, SegmentRunner
            run = SegmentRunner(self, LocalBackend(self.files, workers), progress=progress)
            if since is None:
                if self._from:  # pragma: no cover - the exporter's partial view
                    raise AuditKitError(f"this bundle object was opened from seq {self._from:,}; open it whole "
                                        "to verify it")
                report = self._verify(v, self.segments, workers, run=run)
            else:
                report = self._verify_since(v, *trusted, workers, run=run)
        report.unsigned = {k: v for k, v in self.manifest.items() if k not in SIGNED_MANIFEST_FIELDS}
        self._verified = report
        return report

    def _trusted(self, since: Any, verifiers: list[Verifier]) -> tuple[int, bytes]:
        """(size, root) of the trusted checkpoint ``since``; raises for a checkpoint that is not one."""
        if isinstance(since, VerifyReport):
            if not since.ok:
                raise AuditKitError("since= is a failed verification report; trust only a report that passed")
            return since.signed_size, since.signed_root or EMPTY_ROOT
        if isinstance(since, bool) or not isinstance(since, (int, str, os.PathLike, Snapshot)):
            raise AuditKitError(f"since= takes a signed note, a note file, a Snapshot, a VerifyReport or a tree "
                                f"size, not {type(since).__name__}")
        if isinstance(since, int):
            if since < 0:
                raise AuditKitError(f"since= size {since} is negative")
            if since == 0:
                return 0, EMPTY_ROOT
            note = self.checkpoint_note(since)
        elif isinstance(since, Snapshot):
            note = since.note
        elif isinstance(since, str) and "\n\n" in since:
            note = since
        else:
            try:
                with open(since, "rb") as fh:
                    note = fh.read(self.limits.max_text_bytes + 1).decode("utf-8", "replace")
            except OSError as e:
                raise AuditKitError(f"since=: cannot read the trusted note {show_name(str(since))} "
                                    f"({e.strerror or type(e).__name__})") from None
        try:
            cp = verify_checkpoint(note, verifiers)
        except SignatureError as e:
            raise SignatureError(f"the trusted checkpoint (since=) does not verify under the pinned key: {e}") from None
        if cp.origin != self.origin:
            raise AuditKitError(f"the trusted checkpoint (since=) is of log {cp.origin!r}, not of this bundle's "
                                f"log {self.origin!r}")
        return cp.size, cp.root_hash

    def _verify_since(self, v: list[Verifier], trusted: int, root: bytes, workers: int | None,
                      run: Any = None) -> VerifyReport:
        """Re-derive the segments from the last boundary at or below ``trusted`` on."""
        size = self.manifest["tree_size"]
        if trusted > size:
            report = VerifyReport(source=f"bundle {self.path}", events=self._size,
                                  verifier=", ".join(x.vkey for x in v), since=trusted)
            report.findings.append(Finding("truncated", f"the bundle's newest checkpoint (size {size:,}) is older "
                                                        f"than the trusted one (size {trusted:,}): a rollback",
                                           size, trusted))
            return report
        start = max([0] + [s.end for s in self.segments if s.compact_range is not None and s.end <= trusted])
        if start < self._from:  # pragma: no cover - the exporter opens from the trusted size
            raise AuditKitError(f"this bundle object was opened from seq {self._from:,}; open it whole to verify "
                                f"from {start:,}")
        compact = next((s.compact_range for s in self.segments if s.end == start), ())
        fresh = [s for s in self.segments if s.start >= start]
        notes = [s.note for s in self.segments if s.end >= start] if self.format == FORMAT_V2 else []
        con = self.files.connect()
        try:
            con.execute("SET TimeZone = 'UTC'")
            kinds = _create_views(con, self._table_files(fresh))
            return self._verify(v, fresh, workers, con=con, kinds=kinds, notes=notes, start=start,
                                compact=compact or (), trusted=(trusted, root), run=run)
        except duckdb.Error as e:
            report = VerifyReport(source=f"bundle {self.path}", events=self._size,
                                  verifier=", ".join(x.vkey for x in v), since=trusted)
            report.findings.append(Finding("malformed-bundle", f"the bundle's new segments do not read ({_one_line(e)})"))
            return report
        finally:
            con.close()

    def _verify(self, v: list[Verifier], segments: Sequence[Segment], workers: int | None, *, con=None,
                kinds: set[str] | None = None, notes: Sequence[str] | None = None, start: int = 0,
                compact: Sequence[bytes] = (), trusted: tuple[int, bytes] | None = None,
                run: Any = None) -> VerifyReport:
        """Verify ``segments`` (all by default) through ``con``'s views, then the manifest's files of them.

        ``run``: what re-derives them, called as :func:`verify_source` (the default: the whole range at once;
        apart: :class:`~rlhf_audit_kit.segment_verify.SegmentRunner`).
        """
        full = con is None
        src = DuckSource(self._con if full else con, origin=self.origin, description=f"bundle {self.path}",
                         kinds=self._kinds if full else kinds, has_nodes=False)
        if notes is None:
            notes = [s.note for s in segments] if self.format == FORMAT_V2 else []
        texts, problems = self._notes([n for n in notes if n != self._note_file])
        with self._lock:
            try:
                report = (run or verify_source)(src, v, extra_notes=[self.note, *texts], workers=workers,
                                                start=start, compact_range=compact, trusted=trusted,
                                                check_tree=lambda tree: _check_segments(segments, tree))
            except _DECODE_ERRORS as e:  # hostile data past the open checks: fail closed, as a finding
                report = VerifyReport(source=src.description, events=self._size,
                                      verifier=", ".join(x.vkey for x in v))
                report.findings.append(Finding("malformed-bundle", f"the bundle's data does not decode as a "
                                                                   f"bundle ({_one_line(e)})"))
        report.findings += problems
        names = None if full or self.format == FORMAT_V1 else [f for s in segments for f in s.files] + list(notes)
        self._check_manifest(report, names)
        self._check_note_copy(report, v)
        return report

    def _notes(self, names: Iterable[str]) -> tuple[list[str], list[Finding]]:
        texts, problems = [], []
        for name in names:
            try:
                text = self._text(name)
            except BundleError as e:
                problems.append(Finding(e.damage, str(e)))
                continue
            if text is not None:  # a missing one is reported by the manifest check
                texts.append(text)
        return texts, problems

    def _check_manifest(self, report: VerifyReport, names: Iterable[str] | None = None) -> None:
        """Files (all, or ``names``) against their SHA-256; unlisted files; the manifest against the note."""
        m = self.manifest
        problems = []
        for name in (m["files"] if names is None else names):  # names were checked when the bundle was opened
            info = m["files"][name]
            try:
                digest, size = self.files.digest(name)
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
        listed = [*m["files"], MANIFEST_FILE] + ([NOTE_FILE] if self.format == FORMAT_V2 else [])
        # a segments/ folder the manifest names nothing in yet: look inside
        expand = (SEGMENT_DIR, CHECKPOINT_DIR) if self.format == FORMAT_V2 else ()
        stray = [n for n in self.files.unlisted(listed, expand=expand) if n not in _NOT_BUNDLE_FILES]
        if expand and self.files.local:
            stray = [x for n in stray for x in _folder_entries(self.files.root, n)]
        later = set(later_files(self.files, stray, m["tree_size"])) if self.format == FORMAT_V2 else set()
        report.later_files = sorted(later)
        stray = [n for n in stray if n not in later]
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

    def _check_note_copy(self, report: VerifyReport, verifiers: list[Verifier]) -> None:
        """``checkpoint.note`` of a v2 bundle: the newest note, or a later one (a writer published since)."""
        text = self._note_copy
        if text is None or self._candidate:
            return
        size = self.manifest["tree_size"]
        try:
            cp = verify_checkpoint(text, verifiers)
        except SignatureError as e:
            report.findings.append(Finding("bad-signature", f"{NOTE_FILE} (the copy of the newest note) does not "
                                                            f"verify: {e}", None, size))
            return
        if cp.origin != self.origin:
            report.findings.append(Finding("origin-mismatch", f"{NOTE_FILE} is a checkpoint of log {cp.origin!r}, "
                                                              f"not {self.origin!r}", None, size))
        elif cp.size > size:
            report.later_files = sorted({*report.later_files, NOTE_FILE})
        elif cp != self.checkpoint:
            report.findings.append(Finding("bundle-metadata-mismatch", f"{NOTE_FILE} is not the manifest's newest "
                                                                       f"checkpoint (size {size:,})", None, size))

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
                f"origin <code>{html.escape(self.origin)}</code> · {self._size:,} events in "
                f"{len(self.segments)} segment(s) · root "
                f"<code>{html.escape(self.manifest.get('root_hash', '')[:16])}…</code> · {key}<br>{status}"
                f"<table><tr><th>kind</th><th>events</th></tr>{rows}</table></div>")


def _folder_entries(root: Path, name: str) -> list[str]:
    """``name``, or the entries of ``name`` when it is a real ``segments``/``checkpoints`` folder (not a link)."""
    if name not in (SEGMENT_DIR, CHECKPOINT_DIR) or not stat.S_ISDIR(os.lstat(root / name).st_mode):
        return [name]
    with os.scandir(root / name) as it:
        entries = [f"{name}/{e.name}" for e in it]
    return entries  # an empty one (an export creating it) holds nothing


def _sizes(sizes: Sequence[int]) -> str:
    shown = ", ".join(f"{s:,}" for s in sizes[-10:])
    return ("..., " if len(sizes) > 10 else "") + shown


def _check_segments(segments: Sequence[Segment], tree: Mapping[tuple[int, int], bytes]) -> list[Finding]:
    """The manifest's compact ranges and subtree roots against the tree recomputed from the log."""
    out = []
    for s in segments:
        if s.compact_range is None:
            continue
        try:
            got = tuple(tree[n] for n in compact_range_nodes(s.end))
            node = complete_subtree(s.start, s.end)
            sub = tree[node] if node else None
        except (KeyError, ValueError):  # the log is shorter than the segment: reported as truncated
            continue
        if got != s.compact_range or sub != s.subtree_root:
            out.append(Finding("bad-node", f"the manifest's tree hashes of segment {s.start:,}..{s.end:,} differ from "
                                           "the ones recomputed from the log", None, s.end))
    return out


def open_bundle(folder: str | os.PathLike, *, limits: Limits | None = None,
                storage_options: dict[str, Any] | None = None) -> Bundle:
    """Open a snapshot bundle read-only (nothing is verified until :meth:`Bundle.verify`).

    ``folder``: a local folder, or an fsspec URL (``s3://bucket/bundle``, ``gs://``, ``memory://``)
    whose file system gets ``storage_options`` (credentials: from its usual environment and config).
    Raises :class:`~rlhf_audit_kit.errors.BundleError` for a bundle that cannot be read safely
    (see :class:`Bundle`); ``limits`` (:class:`~rlhf_audit_kit.bundle_files.Limits`) raises the size limits.

    >>> # open_bundle("s3://audit/run-7", storage_options={"profile": "auditor"}).verify(key)
    """
    return Bundle(folder, limits=limits, storage_options=storage_options)


def verify_bundle(folder: str | os.PathLike, verifier: Any, *, workers: int | None = None,
                  limits: Limits | None = None, since: Any = None, scheduler: Any = None,
                  storage_options: dict[str, Any] | None = None) -> VerifyReport:
    """Open and verify a bundle against the pinned ``verifier``; never raises for a damaged bundle.

    A bundle refused when opening (:class:`~rlhf_audit_kit.errors.BundleError`) is a failed report
    with that one finding, so callers handle every hostile bundle the same way. ``since``: see
    :meth:`Bundle.verify` (a ``since`` that is no trusted checkpoint of this log raises); ``scheduler``:
    verify on a Dask cluster (:meth:`Bundle.verify`). ``folder`` may be an fsspec URL (:func:`open_bundle`).

    >>> verify_bundle("/nonexistent", "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").damage
    'malformed-bundle'
    """
    vs = resolve_verifiers(verifier)
    try:
        bundle = Bundle(folder, limits=limits, storage_options=storage_options)
    except BundleError as e:
        shown = shown_url(folder) if is_url(folder) else folder
        return VerifyReport(source=f"bundle {shown}", events=0, verifier=", ".join(v.vkey for v in vs),
                            findings=[Finding(e.damage, str(e))])
    with bundle:
        return bundle.verify(vs, workers=workers, since=since, scheduler=scheduler)
