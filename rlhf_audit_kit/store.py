"""The audit store: one DuckDB file holding the append-only log, typed tables and Merkle nodes.

Events go in through one door, :meth:`AuditStore.extend` (and :meth:`AuditStore.append` for one
event). A batch is validated as a whole, pseudonymised, encoded to canonical bytes, hashed into
the RFC 9162 tree and written in one transaction: either every row is written or none is.

Tables (all derived from the log except ``log`` itself):

* ``log(seq, kind, ts, entry, leaf_hash)``: the truth; ``entry`` is the canonical JSON bytes
  (see :mod:`rlhf_audit_kit.encoding`), ``leaf_hash = SHA-256(0x00 || entry)``, ``seq`` 0-based,
  gap-free, equal to the leaf index.
* one typed table per kind (``annotation``, ``rating``, ...): ``seq``, ``ts`` and the kind's fields,
  for fast queries; verification re-encodes every typed row and compares it with its entry.
* ``merkle_node(level, idx, hash)``: every complete subtree of level >= 1 (those over the last
  few leaves may wait in memory until the size crosses a multiple of ``NODE_TAIL``, or the store
  closes), so the current root and any proof cost O(log n) lookups.
* ``meta``: store id, origin, encoding version.

>>> import tempfile, os
>>> from rlhf_audit_kit import open_store
>>> path = os.path.join(tempfile.mkdtemp(), "audit.duckdb")
>>> with open_store(path, pseudonymize=False) as store:
...     store.append({"kind": "dataset", "name": "hh-rlhf", "version": "1"})
0
"""
from __future__ import annotations

import datetime as dt
import hashlib
import html
import os
import re
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from . import encoding
from .errors import AuditKitError, KeysError, StoreInUseError, StoreLockedError, ValidationError
from .schema import KINDS, Kind
from .reader import RecordReader, _quote, typed_columns
from .single import check_event, entry_of
from .validate import ROW, normalise
from .ledger.levels import NODE_TAIL
from .write_lock import file_writer

STORE_FORMAT = 1
# merkle_node keeps every complete subtree (so verification can walk down a signed root to the
# damaged leaf). Roots and proofs read nodes of this level and above from an in-memory copy
# (1/128 of the leaves) and rebuild lower ones from their tile of 2**NODE_LEVEL leaf hashes, so a
# proof costs a few small range scans instead of a scan of the node table.
NODE_LEVEL = 8
DEFAULT_MEMORY_LIMIT = "2GB"
_ARROW_VIEWS = pl.CompatLevel.newest()  # polars hands strings to DuckDB as Arrow views, without a copy
_CHUNK_ROWS = 122_880  # rows per pipeline step of extend(): one DuckDB row group, so inserts write straight to the file
_TYPED_ROWS = 2 * _CHUNK_ROWS  # typed rows per insert: two row groups, which DuckDB fills on two threads
_SQL_TYPES = {"id": "VARCHAR", "text": "VARCHAR", "int": "BIGINT", "float": "DOUBLE",
              "bool": "BOOLEAN", "ts": "TIMESTAMP", "json": "JSON",
              "map_float": "MAP(VARCHAR, DOUBLE)", "map_int": "MAP(VARCHAR, BIGINT)"}


def _x(con, sql: str, params: Any = None) -> list[tuple]:
    """Execute and fetch everything: DuckDB 2 refuses new work while a result is unfinished."""
    return con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()


def typed_table_ddl(kind: Kind) -> str:
    # Long texts compress far better and faster with zstd than with DuckDB's default FSST analysis.
    cols = ", ".join(f"{_quote(f.name)} {_SQL_TYPES[f.type]}"
                     + (" USING COMPRESSION zstd" if f.type == "text" else "") for f in kind.fields)
    return f"CREATE TABLE IF NOT EXISTS {_quote(kind.name)} (seq BIGINT NOT NULL, ts TIMESTAMP NOT NULL, {cols})"


def fetch_nodes(con, wanted: Iterable[tuple[int, int]],
                upper: Mapping[tuple[int, int], bytes] | None = None) -> dict[tuple[int, int], bytes]:
    """Complete Merkle nodes (level, index) from a DuckDB connection holding ``log`` and ``merkle_node``.

    Nodes of level >= NODE_LEVEL come from ``upper`` (an in-memory copy of those rows of
    ``merkle_node``) or the table; lower ones are recomputed from their tile of at most 2**NODE_LEVEL leaf hashes, read with
    one range scan per tile (the log is stored in seq order, so each scan touches one row group).
    A node that cannot be produced is left out; the caller reports it.
    """
    from .ledger.merkle import root_from_leaf_hashes
    wanted = list(wanted)
    out: dict[tuple[int, int], bytes] = {}
    high = [(lv, i) for lv, i in wanted if lv >= NODE_LEVEL]
    if high and upper is None:
        keys = [lv * (1 << 56) + i for lv, i in high]
        upper = {(lv, i): bytes(h) for lv, i, h in _x(
            con, "SELECT level, idx, hash FROM merkle_node WHERE level::BIGINT * 72057594037927936 + idx "
                 "IN (SELECT unnest(?::BIGINT[]))", [keys])}
    for node in high:
        if node in upper:
            out[node] = upper[node]
    low = [(lv, i) for lv, i in wanted if lv < NODE_LEVEL]
    if low:
        tiles = sorted({(i << lv) >> NODE_LEVEL for lv, i in low})
        sql = " UNION ALL ".join("SELECT seq, leaf_hash FROM log WHERE seq BETWEEN ? AND ?" for _ in tiles)
        params = [v for t in tiles for v in (t << NODE_LEVEL, ((t + 1) << NODE_LEVEL) - 1)]
        leaves = {seq: bytes(h) for seq, h in _x(con, sql, params)}
        for lv, i in low:
            a, b = i << lv, (i + 1) << lv
            if all(k in leaves for k in range(a, b)):
                out[(lv, i)] = leaves[a] if lv == 0 else root_from_leaf_hashes([leaves[k] for k in range(a, b)])
    return out


_VIEW = np.dtype([("len", "<i4"), ("prefix", "V4"), ("buf", "<i4"), ("off", "<i4")])


def leaf_hashes_of(entries: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """RFC 9162 leaf hashes of binary entries, hashing straight from the Arrow buffers.

    Takes binary/large_binary arrays or binary_view arrays (what polars hands over without a copy).
    """
    if isinstance(entries, pa.ChunkedArray):
        return [h for chunk in entries.chunks for h in leaf_hashes_of(chunk)]
    leaf = hashlib.sha256(b"\x00").copy  # copying the primed state beats hashing the prefix each time
    out: list[bytes] = []
    append = out.append
    n = len(entries)
    if pa.types.is_binary_view(entries.type) or pa.types.is_string_view(entries.type):
        bufs = entries.buffers()
        vbuf = memoryview(bufs[1])
        views = np.frombuffer(bufs[1], dtype=_VIEW)[entries.offset:entries.offset + n]
        data = [memoryview(x) if x is not None else None for x in bufs[2:]]
        base = entries.offset * 16
        for i, (ln, bi, off) in enumerate(zip(views["len"].tolist(), views["buf"].tolist(), views["off"].tolist())):
            h = leaf()
            if ln <= 12:  # short values live inside the view itself
                p = base + 16 * i + 4
                h.update(vbuf[p:p + ln])
            else:
                h.update(data[bi][off:off + ln])
            append(h.digest())
        return out
    if not pa.types.is_large_binary(entries.type):
        entries = entries.cast(pa.large_binary())
    offs = np.frombuffer(entries.buffers()[1], dtype=np.int64)[entries.offset:entries.offset + n + 1]
    data = entries.buffers()[2]
    buf = memoryview(data) if data is not None else memoryview(b"")
    o = offs.tolist()
    for a, b in zip(o, o[1:]):
        h = leaf()
        h.update(buf[a:b])
        append(h.digest())
    return out


def _fixed32(hashes: list[bytes]) -> pa.Array:
    """32-byte digests as one Arrow fixed-size binary array (one join, no per-item objects)."""
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(hashes), [None, pa.py_buffer(b"".join(hashes))])


# ------------------------------------------------------------------ one writer per file per process
# DuckDB hands every connection of one process the same database, so its file lock cannot keep a second
# store object of this process off the file: this registry does. Keys are the file's identity (device and
# inode: two spellings of a path, a symbolic or a hard link are one file), or its real path while it does
# not exist yet; values hold every store object open on that file here.
_OPEN: dict[object, weakref.WeakSet] = {}
_OPEN_LOCK = threading.RLock()
_LOCK_HOLDER = re.compile(r"lock is held in (?P<prog>.*?) \(PID (?P<pid>\d+)\)")


def _file_key(path: str | os.PathLike) -> object:
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return (st.st_dev, st.st_ino)


def _open_here(key: object) -> list["AuditStore"]:
    return [s for s in list(_OPEN.get(key, ())) if s._con is not None]


def _connect(path: Path, real: str, read_only: bool):
    """duckdb.connect with the kit's errors: a lock held by another process names that process."""
    try:
        return duckdb.connect(real, read_only=read_only)
    except duckdb.IOException as e:
        msg = str(e)
        m = _LOCK_HOLDER.search(msg)
        if m or "Could not set lock" in msg:
            raise StoreLockedError(str(path), pid=int(m["pid"]) if m else None,
                                   holder=m["prog"] if m else None) from None
        raise AuditKitError(f"cannot open {path} as a store: {msg.splitlines()[0]}") from None
    except duckdb.ConnectionException as e:
        if "different configuration" not in str(e):
            raise
        raise StoreInUseError(f"{path} is open in this process by another DuckDB connection with other "
                              "settings (read-only or not); close it first", path=real) from None


def _keys_of(keys: str | os.PathLike | None) -> Path | None:
    if keys:
        return Path(keys)
    from .keys import keys_folder_from_env
    env = keys_folder_from_env()
    return Path(env) if env else None


class AuditStore(RecordReader):
    """An RLHF audit store in one DuckDB file. Create it with :func:`open_store`.

    >>> import tempfile, os
    >>> store = open_store(os.path.join(tempfile.mkdtemp(), "a.duckdb"), pseudonymize=False)
    >>> store.extend([{"kind": "dataset", "name": "shp", "version": "2"}])
    range(0, 1)
    >>> store.sql("select name, version from dataset").row(0)
    ('shp', '2')
    >>> store.close()
    """

    def __init__(self, path: str | os.PathLike, *, keys: str | os.PathLike | None = None,
                 read_only: bool = False, origin: str | None = None, pseudonymize: bool = True,
                 memory_limit: str | None = DEFAULT_MEMORY_LIMIT):
        self.path = Path(path)
        self.read_only = read_only
        self._real = os.path.realpath(self.path)
        self._lock = threading.RLock()
        self._tls = threading.local()
        self._con = None
        with _OPEN_LOCK:
            here = _open_here(_file_key(self._real))
            if here:  # the file is open here by another name (a link): DuckDB shares a database by its path
                self._real = here[0]._real
            # _rw_db: this object's DuckDB database is open for writing (a writer, or a reader beside one)
            self._rw_db = not read_only or any(s._rw_db for s in here)
            # a second writer, or a writer beside a read-only DuckDB connection (readers beside a writer are fine)
            clash = None if read_only else next((s for s in here if not (s.read_only and s._rw_db)), None)
            if clash is not None:
                what, todo = (("for writing", "open_store() with the same options returns that store; close it "
                               "first (store.close()) to open it otherwise") if not clash.read_only
                              else ("read-only", "close it first (store.close())"))
                raise StoreInUseError(f"{self.path} is already open {what} in this process as {clash!r}: {todo}",
                                      path=self._real, holder=repr(clash))
            self._con = _connect(self.path, self._real, read_only and not self._rw_db)
            try:
                self._open(read_only, origin, memory_limit if not (read_only and self._rw_db) else None)
            except BaseException:
                self._con.close()
                self._con = None
                raise
            self._key = _file_key(self._real)  # the file exists now
            _OPEN.setdefault(self._key, weakref.WeakSet()).add(self)
        self.keys_folder = _keys_of(keys)
        self._options = (None if self.keys_folder is None else os.path.realpath(self.keys_folder),
                         bool(pseudonymize), memory_limit)
        self._pseudonymize = pseudonymize
        self._node_cache: dict[tuple[int, int], bytes] | None = None
        self._append_con = None  # append's own connection (see _append_locked), made on first use
        self._pseudonymizer = None
        self._privacy = None
        self._root_parts: tuple[int, dict] | None = None  # (size, nodes giving its root): append's right edge
        self._attached: weakref.WeakSet = weakref.WeakSet()  # open Recorders and Publishers: close() ends them first

    def _open(self, read_only: bool, origin: str | None, memory_limit: str | None) -> None:
        _x(self._con, "SET TimeZone = 'UTC'")
        if memory_limit:  # DuckDB would otherwise keep up to 80% of RAM of written pages cached
            _x(self._con, "SET memory_limit = ?", [str(memory_limit)])
        if not read_only:
            # An append-only log has no deletes to reclaim; merging the part-filled row group each large
            # batch ends with would rewrite (and recompress) most of the batch at the next checkpoint:
            # ~2 s per million events, and the file grows by the rewritten half.
            _x(self._con, "SET max_vacuum_tasks = 0")
            self._create_schema(origin)
        meta = dict(_x(self._con, "SELECT key, value FROM meta"))
        if int(meta.get("format", "0")) != STORE_FORMAT:
            raise AuditKitError(f"{self.path} is not an rlhf-audit-kit store of format {STORE_FORMAT}")
        self.store_id: str = meta["store_id"]
        self.origin: str = meta["origin"]
        self._writer = None
        if read_only:
            self._committed = _x(self._con, "SELECT count(*) FROM log")[0][0]
            return
        self._writer = file_writer(self._real)
        if not self._writer.refresh(self._committed_size_and_tail):
            raise StoreInUseError(f"{self.path}: another handle of this store kept writing for a minute; "
                                  "use one store object per file (open_store returns the open one)", path=self._real)
        self._committed = self._writer.size

    def _committed_size_and_tail(self) -> int:
        """The log's size, read under the file's write lock when a writer opens. If no handle of this
        process holds the file's pending tail nodes, the ones the table lacks (a process that held
        them was killed) are recomputed from the last few leaf hashes and become pending: they go in
        with the next write that crosses a multiple of ``NODE_TAIL``, so each level stays gap-free."""
        size = _x(self._con, "SELECT count(*) FROM log")[0][0]
        w = self._writer
        tail = size // NODE_TAIL * NODE_TAIL
        if w.pending or size - tail < 2:  # held by a live handle, or no complete node over the tail
            return size
        from .ledger.merkle import root_from_leaf_hashes
        top = NODE_TAIL.bit_length() - 2  # the highest level a node inside the tail can have
        # idx >= a constant lets DuckDB skip the row groups of older nodes by their zone maps
        have = dict(_x(self._con, "SELECT level, max(idx) + 1 FROM merkle_node WHERE level BETWEEN 1 AND ? "
                                  "AND idx >= ? GROUP BY level", [top, tail >> top]))
        missing = [(lv, i) for lv in range(1, top + 1) for i in range(max(have.get(lv, 0), tail >> lv), size >> lv)]
        if missing:
            leaves = [bytes(h) for (h,) in _x(self._con, "SELECT leaf_hash FROM log WHERE seq >= ? ORDER BY seq",
                                               [tail])]
            w.pending = {(lv, i): root_from_leaf_hashes(leaves[(i << lv) - tail:((i + 1) << lv) - tail])
                         for lv, i in missing}
        return size

    def _same_options(self, path, keys, origin, pseudonymize, memory_limit) -> "AuditStore":
        """Self, if a writer open_store() call asks for this store as it is open; else StoreInUseError."""
        k = _keys_of(keys)
        asked = (None if k is None else os.path.realpath(k), bool(pseudonymize), memory_limit)
        names = ("keys", "pseudonymize", "memory_limit")
        diff = [f"{n}={a!r} (open with {o!r})" for n, a, o in zip(names, asked, self._options) if a != o]
        if origin is not None and origin != self.origin:
            diff.append(f"origin={origin!r} (the store's is {self.origin!r})")
        if diff:
            raise StoreInUseError(
                f"{path} is already open for writing in this process as {self!r} with other options: "
                f"{', '.join(diff)}; use that store, or close it first (store.close())",
                path=self._real, holder=repr(self))
        return self

    # ------------------------------------------------------------------ schema
    def _create_schema(self, origin: str | None) -> None:
        con = self._con
        _x(con, "CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        _x(con, "CREATE TABLE IF NOT EXISTS log (seq BIGINT NOT NULL, kind VARCHAR NOT NULL, "
                    "ts TIMESTAMP NOT NULL, entry BLOB NOT NULL USING COMPRESSION zstd, "
                    "leaf_hash BLOB NOT NULL USING COMPRESSION uncompressed)")
        _x(con, "CREATE TABLE IF NOT EXISTS merkle_node (level UTINYINT NOT NULL, "
                    "idx BIGINT NOT NULL, hash BLOB NOT NULL)")
        for kind in KINDS.values():
            _x(con, typed_table_ddl(kind))
        # Fields added to a kind later (omit_null) join the typed tables of stores made before them.
        have = set(_x(con, "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main'"))
        for kind in KINDS.values():
            for f in kind.fields:
                if f.omit_null and (kind.name, f.name) not in have:
                    _x(con, f"ALTER TABLE {_quote(kind.name)} ADD COLUMN {_quote(f.name)} {_SQL_TYPES[f.type]}")
        if not _x(con, "SELECT 1 FROM meta WHERE key = 'format'"):
            sid = str(uuid.uuid4())
            rows = [("format", str(STORE_FORMAT)), ("store_id", sid),
                    ("origin", origin or f"rlhf-audit-kit.local/{sid}"),
                    ("encoding", encoding.ENCODING_NAME),
                    ("created_at", dt.datetime.now(dt.timezone.utc).isoformat())]
            for row in rows:
                _x(con, "INSERT INTO meta VALUES (?, ?)", list(row))
        # (Older stores hold a table ``write_claim``: an in-database seq claim, one UPDATE per write, which
        # rlhf_audit_kit.write_lock replaced. It is left as it is and not read.)

    @property
    def _internal_write(self) -> bool:
        """True while the kit itself writes internal kinds (snapshots, privacy ledger) in this thread."""
        return getattr(self._tls, "internal", False)

    @_internal_write.setter
    def _internal_write(self, value: bool) -> None:
        self._tls.internal = bool(value)

    # ------------------------------------------------------------------ pseudonyms
    @property
    def pseudonymizer(self):
        """The keyed pseudonymiser of person fields (annotator, reviewer), from the keys folder."""
        if self._pseudonymizer is None and self._pseudonymize:
            if self.keys_folder is None:
                raise KeysError(
                    "no pseudonymisation key: annotator ids must not reach the store in the clear. "
                    "Pass open_store(path, keys=DIR) (create DIR with `rlhf-audit keys init DIR`), "
                    "set RLHF_AUDIT_KEYS, or open_store(..., pseudonymize=False) if the ids are "
                    "already pseudonyms you manage yourself.")
            from .keys import load_pseudonym_key
            from .privacy.pseudonym import Pseudonymizer
            self._pseudonymizer = Pseudonymizer(load_pseudonym_key(self.keys_folder))
        return self._pseudonymizer

    def _apply_pseudonyms(self, kind: Kind, df: pl.DataFrame, pseudonymized: bool = False) -> pl.DataFrame:
        if not self._pseudonymize:
            return df
        person = [f.name for f in kind.fields if f.person]
        if not person or all(df[c].null_count() == df.height for c in person):
            return df
        p = self.pseudonymizer
        out = []
        for c in person:
            try:
                out.append(p.apply(df[c], pseudonymized=pseudonymized).alias(c))
            except ValidationError as e:  # name the batch row, not the position in this kind's frame
                raise ValidationError(int(df[ROW][e.row]), c, e.reason) from None
        return df.with_columns(out)

    def _pseudonym_of(self, field: str, value: str, pseudonymized: bool) -> str:
        p = self.pseudonymizer
        try:
            return p.check(value) if pseudonymized else p.pseudonymize(value)
        except ValidationError as e:
            raise ValidationError(0, field, e.reason) from None

    # ------------------------------------------------------------------ writing
    def append(self, event: Mapping[str, Any], kind: str | None = None, *, pseudonymized: bool = False) -> int:
        """Validate and write one event; return its ``seq``. Durable once this returns.

        One event skips the batch pipeline: plain-Python checks (:mod:`rlhf_audit_kit.single`, the
        same rules and bytes as :meth:`extend`), the tree's cached right edge, one transaction.
        To log many events without waiting for the disk each time, use :meth:`recorder`.
        ``pseudonymized``: as for :meth:`extend`.
        """
        self._check_writable()
        spec, values = check_event(event, kind)
        if spec.internal and not self._internal_write:
            raise ValidationError(0, "kind", f"{spec.name!r} events are written by the kit itself")
        return self._append_events([(spec, values)], pseudonymized).start

    def recorder(self, **options: Any):
        """A :class:`~rlhf_audit_kit.recorder.Recorder` logging into this store from a background
        thread (see :mod:`rlhf_audit_kit.recorder` for ``options`` and what survives a crash).

        >>> import tempfile, os
        >>> store = open_store(os.path.join(tempfile.mkdtemp(), "r.duckdb"), pseudonymize=False)
        >>> with store.recorder() as rec:
        ...     rec.log({"kind": "dataset", "name": "hh", "version": "1"})
        >>> store.size
        1
        >>> store.close()
        """
        from .recorder import Recorder
        return Recorder(self, **options)

    def extend(self, rows: Any, kind: str | None = None, *, progress: bool = False,
               pseudonymized: bool = False) -> range:
        """Validate and write a batch in one transaction; return the range of ``seq`` written.

        ``rows``: a polars/pandas DataFrame, an Arrow table, a Hugging Face Dataset, an iterable
        of dicts (each with a ``kind`` unless ``kind=`` is given) or a JSONL path. Columns the store
        assigns (``seq``, ``ts``, ``kind``, ``leaf_hash``, ``entry``) are ignored, so a typed
        table of one store can be copied into another. On any invalid row nothing is written and
        :class:`~rlhf_audit_kit.ValidationError` names the row, the field and the reason.

        Person fields (annotator, reviewer) hold raw ids, which are always pseudonymised; a value
        shaped like a pseudonym (``p-<key id>-<24 hex>``) is refused, so nobody can attribute rows
        to a real annotator's visible pseudonym. ``pseudonymized=True`` says that the batch's person
        fields already hold pseudonyms made with this store's key (e.g. a typed table copied from a
        store with the same key): each must be one, and is stored as it is.

        >>> import tempfile, os
        >>> store = open_store(os.path.join(tempfile.mkdtemp(), "e.duckdb"), pseudonymize=False)
        >>> store.extend([{"kind": "dataset", "name": "hh", "version": "1"}])
        range(0, 1)
        >>> store.close()
        """
        self._check_writable()
        return self._write_validated(normalise(rows, kind), progress, pseudonymized)

    def _write_validated(self, frames: dict[str, pl.DataFrame], progress: bool = False,
                         pseudonymized: bool = False, guard: Any = None) -> range:
        """Write frames from :func:`~rlhf_audit_kit.validate.normalise` (their ``__row`` gives the
        order of the rows across kinds) in one transaction; the Recorder's writer comes in here.
        ``guard(con)``, if given, runs inside the transaction once the store is claimed (the privacy
        ledger re-checks its budgets there) and may raise to write nothing."""
        frames = {k: f for k, f in frames.items() if f.height}
        if not frames:
            return range(self._size, self._size)
        for k in frames:
            if KINDS[k].internal and not self._internal_write:
                raise ValidationError(0, "kind", f"{k!r} events are written by the kit itself")
        with self._lock:
            self._check_writable()
            return self._write(frames, progress, pseudonymized, guard)

    def _append_events(self, items: list[tuple[Kind, dict[str, Any]]], pseudonymized: bool = False) -> range:
        """Write a few events checked by :func:`~rlhf_audit_kit.single.check_event` in one transaction,
        without the batch pipeline (``append``, a Recorder's small groups): entries built one by one,
        the tree grown from its cached right edge, one insert per table. A ValidationError's row is the
        index in ``items``; on any error nothing is written."""
        with self._lock:
            self._check_writable()
            return self._append_locked(items, pseudonymized)

    def _append_locked(self, items: list[tuple[Kind, dict[str, Any]]], pseudonymized: bool) -> range:
        con = self._con
        for i, (kind, values) in enumerate(items):
            person = [f.name for f in kind.fields if f.person and values[f.name] is not None]
            if person and self._pseudonymize:
                try:
                    items[i] = (kind, {**values, **{c: self._pseudonym_of(c, values[c], pseudonymized) for c in person}})
                except ValidationError as e:
                    raise ValidationError(i, e.field, e.reason) from None
        from .ledger import merkle
        from .ledger.tree import RightEdge
        ts = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        ts_text = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        by_kind: dict[str, list[int]] = {}
        for i, (kind, _) in enumerate(items):
            by_kind.setdefault(kind.name, []).append(i)
        parts, self._root_parts = self._root_parts, None
        # Under the file's write lock nothing else writes this file, so the seq, the uniqueness checks
        # and the tree's right edge are read before the transaction begins; BEGIN then rides with the
        # first insert. A DuckDB statement costs a fixed ~0.2-0.5 ms here, most of an append's time.
        start = self._begin_write(con, len(items), begin=False)
        committed = began = None
        wcon = self._append_con
        if wcon is None:
            # A connection of its own with DuckDB's optimizer off: a VALUES insert has nothing to
            # optimise, yet planning one costs ~0.1 ms per statement (a quarter of an append here).
            # The optimizer is a setting of the connection, so the store's own queries keep it.
            wcon = self._append_con = con.cursor()
            _x(wcon, "PRAGMA disable_optimizer")
        try:
            for name, rows in by_kind.items():
                self._check_unique_values(KINDS[name], rows, [items[i][1] for i in rows])
            entries = [entry_of(kind, values, start + i, ts_text) for i, (kind, values) in enumerate(items)]
            leaves = [merkle.leaf_hash(e) for e in entries]
            if parts is None or parts[0] != start:  # another write came between: read the edge once
                parts = (start, self._get_nodes(merkle.needed_nodes_for_root(start)) if start else {})
            known = {**parts[1], **{(0, start + i): h for i, h in enumerate(leaves)}}
            for level, (first, hashes) in RightEdge(start, parts[1]).append(leaves).items():
                known.update(((level, first + i), h) for i, h in enumerate(hashes))
            nodes = [(lv, i, known[(lv, i)]) for lv, i in sorted(known) if lv and (lv, i) not in parts[1]]
            # New nodes wait (in the file's writer) until the size crosses a multiple of NODE_TAIL,
            # then go in together: most appends write two tables, not three (ledger.levels.NODE_TAIL).
            pending = {**self._writer.pending, **{(lv, i): h for lv, i, h in nodes}}
            crossed = (start + len(items)) // NODE_TAIL > start // NODE_TAIL
            stored = sorted(pending.items()) if crossed else []
            # One call to DuckDB carries BEGIN and every insert: it binds parameters to the last
            # statement of a call only, so the statements before it hold literals made only of our own
            # integers, kind names, timestamps and hex digits (an entry's bytes as hex), never of text
            # a user can shape; the typed rows, which hold user text, are the parameterised last one.
            sql = ["BEGIN TRANSACTION"]
            if stored:
                sql.append("INSERT INTO merkle_node VALUES " + ", ".join(
                    f"({int(lv)}, {int(i)}, from_hex('{bytes(h).hex()}'))" for (lv, i), h in stored))
            ts_sql = f"TIMESTAMP '{ts:%Y-%m-%d %H:%M:%S.%f}'"
            sql.append("INSERT INTO log (seq, kind, ts, entry, leaf_hash) VALUES " + ", ".join(
                f"({start + i}, '{k.name}', {ts_sql}, from_hex('{entries[i].hex()}'), from_hex('{leaves[i].hex()}'))"
                for i, (k, _) in enumerate(items)))
            typed = []
            for name, rows in by_kind.items():
                kind = KINDS[name]
                names = ", ".join(_quote(f.name) for f in kind.fields)
                # a cast only where DuckDB has no implicit one (a STRUCT of lists to a MAP): each costs planning time
                row_sql = "(?, ?, " + ", ".join(f"?::{_SQL_TYPES[f.type]}" if f.type.startswith("map_") else "?"
                                                for f in kind.fields) + ")"
                params = []
                for i in rows:
                    params += [start + i, ts]
                    for f in kind.fields:
                        v = items[i][1][f.name]
                        params.append({"key": list(v), "value": list(v.values())}
                                      if v is not None and f.type.startswith("map_") else v)
                typed.append((f"INSERT INTO {_quote(name)} (seq, ts, {names}) VALUES "
                              + ", ".join([row_sql] * len(rows)), params))
            # scalar parameters in VALUES rows: binding list parameters for unnest() costs more than
            # the insert itself for a handful of rows (measured: about half of an append's time)
            began = True
            for k, (query, params) in enumerate(typed):
                _x(wcon, "; ".join([*sql, query]) if k == 0 else query, params)
            _x(wcon, "COMMIT")
            committed = start + len(items)
            self._writer.pending = {} if crossed else pending
        except BaseException:
            if began and committed is None:
                try:
                    _x(wcon, "ROLLBACK")
                except duckdb.TransactionException:  # the failed call ended before its BEGIN took effect
                    pass
            raise
        finally:
            self._end_write(committed)
        if self._node_cache is not None:
            self._node_cache.update(((lv, i), h) for lv, i, h in nodes if lv >= NODE_LEVEL)
        self._size = end = start + len(items)
        self._root_parts = (end, {n: known[n] for n in merkle.needed_nodes_for_root(end)})
        return range(start, end)

    def _check_unique_values(self, kind: Kind, rows: list[int], values: list[dict[str, Any]]) -> None:
        """The unique keys of a few events: within them, then against the store (one query per key)."""
        for cols in kind.unique:
            keys = [(i, tuple(v[c] for c in cols)) for i, v in zip(rows, values)]
            keys = [(i, k) for i, k in keys if None not in k]
            seen: set = set()
            for i, k in keys:
                if k in seen:
                    raise ValidationError(i, cols[0], f"duplicate {'/'.join(cols)} within the batch")
                seen.add(k)
            if not keys:
                continue
            if len(keys) == 1:  # an equality lookup prunes by zone maps; a join would scan the table
                where = " AND ".join(f"{_quote(c)} = ?" for c in cols)
                if _x(self._con, f"SELECT 1 FROM {_quote(kind.name)} WHERE {where} LIMIT 1", list(keys[0][1])):
                    raise ValidationError(keys[0][0], cols[0], f"duplicate {'/'.join(cols)}: already in the store")
                continue
            fields = [kind.field_map[c] for c in cols]
            sel = ", ".join(f"unnest(?::{_SQL_TYPES[f.type]}[]) AS {_quote(f.name)}" for f in fields)
            on = " AND ".join(f"k.{_quote(c)} = t.{_quote(c)}" for c in cols)
            hit = _x(self._con, f"SELECT min(k.i) FROM (SELECT unnest(?::BIGINT[]) AS i, {sel}) k "
                                f"JOIN {_quote(kind.name)} t ON {on}",
                     [[i for i, _ in keys], *[[k[j] for _, k in keys] for j in range(len(cols))]])[0][0]
            if hit is not None:
                raise ValidationError(int(hit), cols[0], f"duplicate {'/'.join(cols)}: already in the store")

    def _check_writable(self):
        self._check_open()
        if self.read_only:
            raise AuditKitError(f"{self.path} is open read-only")

    def _check_open(self):
        if self._con is None:
            raise AuditKitError(f"{self.path} is closed; open it again with open_store()")

    def _begin_write(self, con, n: int, *, begin: bool = True) -> int:
        """Take the file's write lock and return the first seq of the next ``n`` events; with
        ``begin``, also begin the transaction (``append`` folds BEGIN into its first insert).
        Every path after this ends with :meth:`_end_write`.

        The lock is the file's, shared by every handle of it in this process
        (:mod:`rlhf_audit_kit.write_lock`): a second handle, which a reloaded module or a second copy
        of the kit can make, never writes the same seq; it is refused while another one writes, and
        reads the seq the other one left once it is done.
        """
        w = self._writer
        if not w.try_acquire():
            raise StoreInUseError(
                f"{self.path}: another handle of this store is writing at the same time; nothing was "
                "written. Use one store object per file (open_store returns the open one)", path=self._real)
        try:
            if begin:
                _x(con, "BEGIN TRANSACTION")
            size = w.size
        except BaseException:
            w.release()
            raise
        if size != self._committed:  # another handle wrote since: cached tree state is stale
            self._committed = size
            self._node_cache = None
            self._root_parts = None
        return size

    def _end_write(self, committed: int | None) -> None:
        """Release the file's write lock: ``committed`` is the new size after COMMIT, None after ROLLBACK."""
        self._writer.release(committed)

    def _check_unique(self, kind: Kind, df: pl.DataFrame) -> None:
        for cols in kind.unique:
            keys = df.select([ROW, *cols])
            self._con.register("__keys", keys)
            try:
                on = " AND ".join(f"k.{_quote(c)} = t.{_quote(c)}" for c in cols)
                hit = _x(self._con, f"SELECT min(k.{ROW}) FROM __keys k JOIN {_quote(kind.name)} t ON {on}")[0][0]
            finally:
                self._con.unregister("__keys")
            if hit is not None:
                raise ValidationError(int(hit), cols[0], f"duplicate {'/'.join(cols)}: already in the store")

    def _write(self, frames: dict[str, pl.DataFrame], progress: bool, pseudonymized: bool = False,
               guard: Any = None) -> range:
        con = self._con
        n_total = sum(f.height for f in frames.values())
        ts = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        ts_text = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        from .ledger import merkle
        from .ledger.tree import RightEdge
        # Inserts may fill row groups on several threads. Log chunks are one row group each, so the log
        # stays in seq order (verification and the tile reads rely on it for speed); typed row groups
        # may land out of order, and readers order them by seq. Reads keep DuckDB's ordered scans.
        _x(con, "SET preserve_insertion_order = false")
        bar = db = enc = None
        futures = []
        try:
            # The seq, the uniqueness checks and the tree's right edge are read under the file's lock.
            start = self._begin_write(con, n_total)
        except BaseException:
            _x(con, "SET preserve_insertion_order = true")
            raise
        committed = None
        try:
            if guard is not None:
                guard(con)
            self._insert_nodes(self._pending_table())  # before this batch's nodes: each level stays gap-free
            # seq follows the rows' order in the batch, across kinds
            if len(frames) == 1:  # rows are in batch order: seq = start + position, no join (no copy)
                seq_of_row = None
            else:  # seq follows the rows' order in the batch, across kinds
                order = pl.concat([f.select(ROW) for f in frames.values()]).sort(ROW)[ROW]
                seq_of_row = pl.DataFrame({ROW: order, "seq": pl.int_range(start, start + n_total, eager=True)})
            for kind_name, df in frames.items():
                self._check_unique(KINDS[kind_name], df)
            # Pipeline inside one transaction (a failure anywhere writes nothing): a DuckDB worker thread
            # (GIL released) inserts the typed rows, then each chunk of log entries, while this thread
            # encodes and hashes the next chunk and then computes the new Merkle nodes.
            old_parts = self._get_nodes(merkle.needed_nodes_for_root(start)) if start else {}
            if progress and n_total >= 50_000:
                from tqdm.auto import tqdm
                bar = tqdm(total=n_total, unit="event", desc="ingest")
            seq_parts, hash_parts = [], []
            new_nodes: list[pa.Table | None] = []
            # Single-kind batches are in seq order: the new Merkle nodes are computed chunk by chunk from
            # the tree's right edge (the last complete node of each level) and inserted by the worker too.
            incremental = seq_of_row is None
            edge = RightEdge(start, old_parts)
            db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhf-audit-db")
            enc = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhf-audit-encode")

            def add_nodes(by_level: dict[int, tuple[int, list[bytes]]]) -> None:
                nodes = self._nodes_table(by_level)
                new_nodes.append(nodes)
                futures.append(db.submit(self._insert_nodes, nodes))

            prepared = []
            for kind_name, df in frames.items():
                kind = KINDS[kind_name]
                df = self._apply_pseudonyms(kind, df, pseudonymized)
                df = (df.with_columns(pl.int_range(start, start + df.height, dtype=pl.Int64).alias("seq"))
                      if seq_of_row is None else df.join(seq_of_row, on=ROW, how="left"))
                prepared.append((kind, df))
            # An encoder thread (polars, GIL released) runs one chunk ahead of the hashing here. The
            # typed rows go in slices between the log chunks, so the DB thread starts at once and a
            # big batch never sits in DuckDB's buffers whole.
            chunks = [(kind, df, off) for kind, df in prepared for off in range(0, df.height, _CHUNK_ROWS)]
            encoded = [enc.submit(self._encode_chunk, k, df.slice(off, _CHUNK_ROWS), ts_text)
                       for k, df, off in chunks[:2]]
            typed_step = _CHUNK_ROWS * max(1, _TYPED_ROWS // _CHUNK_ROWS)
            for i, (kind, df, off) in enumerate(chunks):
                part = df.slice(off, _CHUNK_ROWS)
                if off % typed_step == 0:
                    typed = df.slice(off, typed_step).drop(ROW).with_columns(pl.lit(ts).cast(pl.Datetime("us")).alias("ts"))
                    futures.append(db.submit(self._insert_typed, kind, typed))
                entries = encoded[i].result()
                encoded[i] = None
                if i + 2 < len(chunks):
                    k2, df2, off2 = chunks[i + 2]
                    encoded.append(enc.submit(self._encode_chunk, k2, df2.slice(off2, _CHUNK_ROWS), ts_text))
                hashes = leaf_hashes_of(entries)
                log = pa.table({"seq": part["seq"].to_arrow(),
                                "kind": pa.array([kind.name] * part.height, pa.string()),
                                "leaf_hash": _fixed32(hashes), "entry": entries})
                if len(futures) > 2:  # bound the look-ahead: at most two chunks wait in memory
                    futures[-2].result()
                futures.append(db.submit(self._insert_log, log, ts))
                if bar is not None:
                    bar.update(part.height)
                if incremental:
                    add_nodes(edge.append(hashes))
                else:
                    seq_parts.append(part["seq"])
                    hash_parts.extend(hashes)
            if not incremental:
                seqs = pl.concat(seq_parts)
                if not seqs.is_sorted():  # mixed kinds: leaves go in seq order
                    hash_parts = [hash_parts[i] for i in seqs.arg_sort().to_list()]
                add_nodes(edge.append(hash_parts))
            for f in futures:
                f.result()
            _x(con, "COMMIT")
            committed = start + n_total
            self._writer.pending = {}
            if self._node_cache is not None:  # upper levels join the in-memory cache once committed
                for t in new_nodes:
                    if t is not None:
                        t = t.filter(pc.greater_equal(t.column("level"), NODE_LEVEL))
                        self._node_cache.update(zip(zip(t.column("level").to_pylist(), t.column("idx").to_pylist()),
                                                    t.column("hash").to_pylist()))
        except BaseException:
            self._node_cache = None  # reload from the table: the rolled-back nodes never happened
            if committed is None:
                for f in futures:
                    f.exception()  # wait: the connection must be idle before the rollback
                _x(con, "ROLLBACK")
            raise
        finally:
            self._end_write(committed)
            if enc is not None:
                enc.shutdown(wait=True, cancel_futures=True)
                db.shutdown(wait=True)
            _x(con, "SET preserve_insertion_order = true")
            if bar is not None:
                bar.close()
        self._size = start + n_total
        return range(start, self._size)

    @staticmethod
    def _encode_chunk(kind: Kind, part: pl.DataFrame, ts_text: str) -> pa.Array:
        # binary views: polars hands the entries over without a copy
        return encoding.encode_frame(kind, part, part["seq"], ts_text).cast(pl.Binary).to_arrow(
            compat_level=_ARROW_VIEWS)

    def _insert_log(self, log: pa.Table, ts: dt.datetime) -> None:
        self._con.register("__log", log)
        try:
            _x(self._con, "INSERT INTO log SELECT seq, kind, ?::TIMESTAMP, entry, leaf_hash FROM __log", [ts])
        finally:
            self._con.unregister("__log")

    def _insert_typed(self, kind: Kind, typed: pl.DataFrame) -> None:
        cols = ", ".join(typed_columns(kind, maps="map_from_entries"))
        self._con.register("__typed", typed.to_arrow(compat_level=_ARROW_VIEWS))
        try:
            _x(self._con, f"INSERT INTO {_quote(kind.name)} SELECT {cols} FROM __typed")
        finally:
            self._con.unregister("__typed")

    @staticmethod
    def _nodes_table(by_level: dict[int, tuple[int, list[bytes]]]) -> pa.Table | None:
        parts = [pa.table({"level": np.full(len(hashes), level, np.uint8),
                           "idx": np.arange(first, first + len(hashes), dtype=np.int64),
                           "hash": _fixed32(hashes)})
                 for level, (first, hashes) in by_level.items() if hashes]
        return pa.concat_tables(parts) if parts else None

    def _pending_table(self) -> pa.Table | None:
        """The file's pending tail nodes (see ``_append_locked``) as a merkle_node table, or None.
        They are a gap-free run of each level (the nodes after the stored ones), as _nodes_table takes."""
        by_level: dict[int, tuple[int, list[bytes]]] = {}
        for (lv, i), h in sorted(self._writer.pending.items()):
            by_level.setdefault(lv, (i, []))[1].append(h)
        return self._nodes_table(by_level)

    def _flush_pending(self) -> None:
        """Write the pending tail nodes in a transaction of their own (on close)."""
        w = self._writer
        if not w.lock.acquire(timeout=60):
            return  # another handle keeps writing; it stores them with its next crossing or close
        try:
            if w.pending:
                _x(self._con, "BEGIN TRANSACTION")
                try:
                    self._insert_nodes(self._pending_table())
                    _x(self._con, "COMMIT")
                except BaseException:
                    _x(self._con, "ROLLBACK")
                    raise
                w.pending = {}
        finally:
            w.lock.release()

    def _insert_nodes(self, nodes: pa.Table | None) -> None:
        if nodes is None:
            return
        self._con.register("__nodes", nodes)
        try:
            _x(self._con, "INSERT INTO merkle_node SELECT level, idx, hash FROM __nodes")
        finally:
            self._con.unregister("__nodes")

    def _get_nodes(self, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Complete Merkle nodes by (level, index): the tree oracle behind roots and proofs."""
        wanted = list(wanted)
        if self._node_cache is None or not all(n in self._node_cache for n in wanted if n[0] >= NODE_LEVEL):
            # (re)load: first use, or the tree grew through another handle (a reader beside the writer)
            self._node_cache = {(lv, i): bytes(h) for lv, i, h in
                                _x(self._con, "SELECT level, idx, hash FROM merkle_node WHERE level >= ?",
                                   [NODE_LEVEL])}
        return fetch_nodes(self._con, wanted, self._node_cache)

    # ------------------------------------------------------------------ reading
    @property
    def _size(self) -> int:
        if self.read_only and self._rw_db and self._con is not None:  # a reader beside a writer: follow it
            with self._lock:
                self._committed = _x(self._con, "SELECT count(*) FROM log")[0][0]
        return self._committed

    @_size.setter
    def _size(self, value: int) -> None:
        self._committed = value

    @property
    def size(self) -> int:
        """Number of events in the log (= the Merkle tree size)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def sql(self, query: str, params: Any = None) -> pl.DataFrame:
        """Run a query and return a polars DataFrame. Never changes the store: the query runs in a
        transaction that is rolled back, so even an UPDATE or DELETE leaves the record untouched.
        Pass user input through ``params`` (``?`` or ``$name`` placeholders), never by formatting.

        Typed tables are queryable by kind name: annotation, rating, reward_score, train_step,
        checkpoint, dataset, oversight, custom, snapshot, privacy_budget, privacy_spend; and ``log``.
        """
        with self._lock:
            self._check_open()
            cur = self._con.cursor()
            try:
                if self._rw_db:
                    cur.execute("BEGIN TRANSACTION")
                try:
                    return cur.sql(query, params=params).pl()
                finally:
                    if self._rw_db:
                        cur.execute("ROLLBACK")
            finally:
                cur.close()

    # ------------------------------------------------------------------ privacy
    @property
    def privacy(self):
        """The privacy ledger: budgets and recorded DP releases (:class:`~rlhf_audit_kit.privacy.PrivacyLedger`).

        Built once per store (rebuilt from the log's privacy events), then cached.
        """
        with self._lock:
            if self._privacy is None:
                from .privacy.budget import PrivacyLedger
                self._privacy = PrivacyLedger(self)
            return self._privacy

    # ------------------------------------------------------------------ ledger
    def root(self, size: int | None = None) -> bytes:
        """RFC 9162 root hash of the first ``size`` events (default: all), O(log n) from stored nodes."""
        from .ledger.tree import TreeReader
        with self._lock:
            size = self._size if size is None else int(size)
            if not 0 <= size <= self._size:
                raise ValueError(f"size {size} outside 0..{self._size}")
            return TreeReader(self._get_nodes).root(size)

    def snapshot(self, signer: Any = None, *, passphrase: str | None = None):
        """Sign the current tree (C2SP checkpoint, Ed25519) and record it; return the Snapshot.

        ``signer``: a :class:`~rlhf_audit_kit.ledger.Signer` or a keys folder (default: the store's
        keys folder; passphrase from ``passphrase`` or ``$RLHF_AUDIT_PASSPHRASE``). The snapshot is
        itself an internal ``snapshot`` event with ``seq == size``. See
        :mod:`rlhf_audit_kit.ledger.snapshot`.
        """
        from .ledger.snapshot import take_snapshot
        return take_snapshot(self, signer, passphrase=passphrase)

    def publish(self, folder: str | os.PathLike, signer: Any = None, *, every: float = 10.0, verify: bool = True,
                passphrase: str | None = None, storage_options: dict | None = None):
        """Sign and export into the bundle folder ``folder`` every ``every`` seconds while recording; return
        the :class:`~rlhf_audit_kit.publish.Publisher` (``stop()``, or use it as a context manager).

        Other processes read and verify ``folder`` meanwhile (a store file is open to its writer only).
        Each publication adds only the new events (``snapshot.export`` onto the folder's bundle).
        ``folder`` may be an fsspec URL (``s3://bucket/live``), its file system made with ``storage_options``.

        >>> # with store.publish("live/", keys_dir, every=5): train()
        """
        from .publish import Publisher
        return Publisher(self, folder, signer, every=every, verify=verify, passphrase=passphrase,
                         storage_options=storage_options)

    def snapshots(self, verifier: Any = None) -> list:
        """Every recorded snapshot, oldest first (signatures checked when ``verifier`` is given)."""
        from .ledger.snapshot import list_snapshots
        return list_snapshots(self, verifier)

    def verify(self, verifier_key: Any, *, checkpoints: Iterable[str] = (), workers: int | None = None):
        """Verify the whole store against the key you trust; return a VerifyReport (``.ok``,
        ``.first_bad_seq``, ``.damage``, ``.raise_for_status()``).

        ``verifier_key``: a vkey string, a file or keys folder holding one, or a Verifier.
        ``checkpoints``: signed notes kept outside the store (they reveal truncation of the log).
        See :mod:`rlhf_audit_kit.ledger.verify` for the checks.
        """
        from .ledger.verify import DuckSource, verify_source
        with self._lock:
            cur = self._con.cursor()
            try:
                # one snapshot of the file for every query: a writer beside this store (another store
                # object, e.g. a reader's) may commit between them
                cur.execute("BEGIN TRANSACTION")
                src = DuckSource(cur, origin=self.origin, description=f"store {self.path}")
                return verify_source(src, verifier_key, extra_notes=list(checkpoints), workers=workers)
            finally:
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                cur.close()

    def inclusion_proof(self, seq: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of event ``seq`` in the tree of ``size`` events (default: all).

        Check it only against the size and root of a verified signed checkpoint
        (:func:`rlhf_audit_kit.ledger.verify.verify_inclusion_against`).
        """
        from .ledger.tree import TreeReader
        with self._lock:
            size = self._size if size is None else int(size)
            if not 0 <= size <= self._size:
                raise ValueError(f"size {size} outside 0..{self._size}")
            return TreeReader(self._get_nodes).inclusion_proof(int(seq), size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from the tree of ``old_size`` to ``new_size`` events."""
        from .ledger.tree import TreeReader
        with self._lock:
            new_size = self._size if new_size is None else int(new_size)
            if not 0 <= int(old_size) <= new_size <= self._size:
                raise ValueError(f"need 0 <= old_size <= new_size <= {self._size}")
            return TreeReader(self._get_nodes).consistency_proof(int(old_size), new_size)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        try:
            for part in list(self._attached):  # Recorders flush, Publishers publish the rest (they need the lock)
                part.close()
        finally:
            with self._lock:
                if self._con is not None and self._writer is not None and self._writer.pending:
                    self._flush_pending()
                if self._append_con is not None:
                    self._append_con.close()
                    self._append_con = None
                if self._con is not None:
                    self._con.close()
                    self._con = None
            with _OPEN_LOCK:  # a closed store leaves the registry: the next open_store opens anew
                _OPEN.get(self._key, weakref.WeakSet()).discard(self)

    def __enter__(self) -> "AuditStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditStore({str(self.path)!r}, size={self._size}, origin={self.origin!r})"

    def _repr_html_(self) -> str:
        counts = self.counts()
        first, last = self.time_span() if self._size else (None, None)
        snap = self.sql("SELECT tree_size, root_hash, key_name, ts FROM snapshot ORDER BY seq DESC LIMIT 1")
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{v:,}</td></tr>"
                       for k, v in counts.items()) or "<tr><td colspan=2><i>empty</i></td></tr>"
        snap_html = ("<i>no signed snapshot yet</i>" if snap.height == 0 else
                     f"size {snap['tree_size'][0]:,}, root <code>{snap['root_hash'][0][:16]}…</code>, "
                     f"key {html.escape(snap['key_name'][0])}, at {snap['ts'][0]:%Y-%m-%d %H:%M:%S} UTC")
        span = f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC" if first else "–"
        return (f"<div><b>AuditStore</b> <code>{html.escape(str(self.path))}</code><br>"
                f"origin <code>{html.escape(self.origin)}</code> · {self._size:,} events · recorded {span}<br>"
                f"last snapshot: {snap_html}"
                f"<table><tr><th>kind</th><th>events</th></tr>{rows}</table></div>")


def open_store(path: str | os.PathLike, *, keys: str | os.PathLike | None = None, read_only: bool = False,
               origin: str | None = None, pseudonymize: bool = True,
               memory_limit: str | None = DEFAULT_MEMORY_LIMIT) -> AuditStore:
    """Open (or create) the audit store at ``path``.

    ``keys``: the keys folder (``rlhf-audit keys init``) holding the pseudonymisation key; by
    default the folder named by ``RLHF_AUDIT_KEYS``. Person fields (annotator, reviewer) are
    pseudonymised on ingest; without a key such events are refused unless ``pseudonymize=False``.
    ``read_only``: refuse writes (for reading, e.g. a dashboard). ``origin``: the
    checkpoint origin line for a new store (default ``rlhf-audit-kit.local/<store id>``).
    ``memory_limit``: DuckDB's buffer pool for this store (default 2 GB, which keeps ingest of millions of
    events in bounded memory; larger-than-memory queries spill to disk). ``None`` leaves DuckDB's default
    of 80% of RAM, faster for heavy analysis on a big machine.

    One writer per file per process (a file is known by its device and inode, so a link to it is the
    same file):

    * opening a file that is already open for writing in this process returns *that* store object
      when the options match (re-running ``store = open_store(p, keys=k)`` in a notebook is harmless),
      and raises :class:`~rlhf_audit_kit.errors.StoreInUseError` naming the open store otherwise;
      closing the store (any reference to it) closes it for all of them and leaves the registry;
    * ``read_only=True`` beside a writer of this process gives a separate reader that refuses every
      write, sees each batch the writer commits, and keeps the file open until it is closed too;
      a writer is refused while a plain read-only store of the file is open here (close it first);
    * another process holding the file raises :class:`~rlhf_audit_kit.errors.StoreLockedError`
      naming its pid; read a snapshot bundle or published folder of the store instead.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "o.duckdb")
    >>> a = open_store(path, pseudonymize=False)
    >>> open_store(path, pseudonymize=False) is a
    True
    >>> reader = open_store(path, read_only=True, pseudonymize=False)
    >>> _ = a.append({"kind": "dataset", "name": "hh", "version": "1"})
    >>> reader.size
    1
    >>> reader.close(); a.close()
    """
    if origin is not None:
        from .ledger.checkpoint import origin_problem
        problem = origin_problem(origin, strict=False)  # (spaces or '+' only make the key's name a choice)
        if problem:  # before any file is made: no checkpoint could ever carry it
            raise AuditKitError(f"origin= {problem}")
    with _OPEN_LOCK:
        if not read_only:
            writer = next((s for s in _open_here(_file_key(path)) if not s.read_only), None)
            if writer is not None:
                return writer._same_options(path, keys, origin, pseudonymize, memory_limit)
        return AuditStore(path, keys=keys, read_only=read_only, origin=origin, pseudonymize=pseudonymize,
                          memory_limit=memory_limit)
