"""The read-only data layer behind the apps: one :class:`Source` over a store or a bundle.

Every view reads through :meth:`Source.sql` (DuckDB, returns polars) and caches the compact,
already-aggregated frames it plots with :meth:`Source.cached`, so a filter change recomputes from
memory and 1M annotations never reach the browser. Nothing here writes: a store is only queried
through :meth:`AuditStore.sql` (which rolls back), a bundle through Parquet views.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..reader import cursor_sql

__all__ = ["Source", "as_source", "VerifyStatus", "ProofResult"]


@dataclass(frozen=True)
class VerifyStatus:
    """Outcome of verifying a store or bundle, as the apps and widgets display it."""

    ok: bool
    size: int
    message: str
    first_bad_seq: int | None = None
    root: str | None = None
    checked_signature: bool = False
    details: dict = field(default_factory=dict)
    pinned: bool = True  # False: the key was the record's own (shipped in the bundle, or its keys folder)


@dataclass(frozen=True)
class ProofResult:
    """An inclusion proof of one event, checked against the latest signed checkpoint."""

    seq: int
    ok: bool
    message: str
    tree_size: int | None = None
    root: str | None = None
    leaf_hash: str | None = None
    proof: tuple[str, ...] = ()
    kind: str | None = None
    ts: Any = None
    signed: bool = False


def _is_bundle(obj: Any) -> bool:
    return type(obj).__name__ in ("Bundle", "SnapshotBundle") or (
        hasattr(obj, "manifest") and hasattr(obj, "verify") and not hasattr(obj, "extend"))


class Source:
    """A store or a bundle, read only, with a per-source cache of derived frames.

    Parameters
    ----------
    obj
        An :class:`~rlhf_audit_kit.AuditStore`, a bundle (:func:`rlhf_audit_kit.open_bundle`), a
        snapshot, or a path: a folder is opened as a bundle, a file as a store (read-only).
    verifier
        Verifier key string (``name+keyid+base64``), a ``.vkey`` file or a keys folder; the trust
        anchor for signature checks. Default: the key the bundle ships (if any), which is then
        reported as not pinned.
    pinned
        Whether ``verifier`` is a key the user chose (default: True when one is given). A live
        source passes the key a bundle shipped at start-up with ``pinned=False``.
    """

    def __init__(self, obj: Any, *, verifier: Any = None, pinned: bool | None = None):
        self._lock = threading.RLock()
        self._cache: dict[Any, Any] = {}
        self._owned = False
        self._duck = None
        if isinstance(obj, Source):  # pragma: no cover - as_source short-cuts this
            obj = obj.obj
        if isinstance(obj, (str, os.PathLike)):
            obj, self._owned = _open_path(obj), True
        snap_store = getattr(obj, "store", None)
        if type(obj).__name__ == "Snapshot" and snap_store is not None:
            obj = snap_store
        self.obj = obj
        from ..store import AuditStore
        self.is_store = isinstance(obj, AuditStore)
        self.is_bundle = not self.is_store
        if self.is_bundle and not hasattr(obj, "sql"):
            self._duck = _parquet_views(obj)
        self._verifier_arg = verifier
        self._pinned = pinned

    @property
    def pinned(self) -> bool:
        """True when signatures are checked against a key the user gave (not the record's own)."""
        return self._verifier_arg is not None if self._pinned is None else self._pinned

    # ------------------------------------------------------------------ identity
    @property
    def kind(self) -> str:
        return "store" if self.is_store else "bundle"

    @property
    def location(self) -> str:
        p = getattr(self.obj, "path", None) or getattr(self.obj, "folder", None)
        return str(p) if p is not None else "(in memory)"

    @property
    def label(self) -> str:
        return Path(self.location).name or self.location

    @property
    def origin(self) -> str:
        o = getattr(self.obj, "origin", None)
        if o:
            return str(o)
        snap = self.latest_snapshot()
        return snap["origin"] if snap else "?"

    @property
    def size(self) -> int:
        s = getattr(self.obj, "size", None)
        if isinstance(s, int):
            return s
        return int(self.sql("SELECT count(*) AS n FROM log")["n"][0])

    # ------------------------------------------------------------------ queries
    def sql(self, query: str, params: Any = None) -> pl.DataFrame:
        """Run a read-only query; tables are named by event kind (and ``log``)."""
        if self._duck is not None:
            with self._lock:
                return cursor_sql(self._duck, query, params)
        return self.obj.sql(query, params)

    def tables(self) -> set[str]:
        def load():
            df = self.sql("SELECT table_name FROM information_schema.tables")
            return set(df["table_name"].to_list())
        return self.cached("__tables__", load)

    def count(self, table: str) -> int:
        if table not in self.tables():
            return 0
        return self.cached(("count", table),
                           lambda: int(self.sql(f'SELECT count(*) AS n FROM "{table}"')["n"][0]))

    def cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        """``fn()`` once per source and key (sources never change under a viewer)."""
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = fn()
        with self._lock:
            return self._cache.setdefault(key, value)

    # ------------------------------------------------------------------ ledger
    def snapshots(self) -> pl.DataFrame:
        """Signed snapshots recorded in the log (seq, ts, tree_size, root_hash, key_name, key_id, note)."""
        def load():
            if "snapshot" not in self.tables():
                return pl.DataFrame(schema={"seq": pl.Int64, "ts": pl.Datetime("us"), "tree_size": pl.Int64,
                                            "root_hash": pl.Utf8, "key_name": pl.Utf8, "key_id": pl.Utf8,
                                            "origin": pl.Utf8, "note": pl.Utf8})
            return self.sql("SELECT seq, ts, tree_size, root_hash, key_name, key_id, origin, note "
                            "FROM snapshot ORDER BY seq")
        return self.cached("snapshots", load)

    def checkpoint_note(self) -> str | None:
        """The latest signed checkpoint note: the bundle's own, else the store's latest snapshot."""
        for attr in ("checkpoint_note", "note"):
            v = getattr(self.obj, attr, None)
            if isinstance(v, str) and v.strip():
                return v
        cp = getattr(self.obj, "checkpoint", None)
        if isinstance(cp, str) and cp.strip():
            return cp
        snaps = self.snapshots()
        return snaps["note"][-1] if snaps.height else None

    def latest_snapshot(self) -> dict | None:
        note = self.checkpoint_note()
        if note is None:
            return None
        from ..ledger.checkpoint import Checkpoint
        try:
            cp = Checkpoint.parse(_note_body(note))
        except Exception:  # noqa: BLE001 - a malformed note is shown as such
            return {"origin": "?", "tree_size": None, "root_hash": None, "note": note, "ts": None}
        snaps = self.snapshots()
        ts = None
        if snaps.height:
            hit = snaps.filter(pl.col("tree_size") == cp.size)
            ts = hit["ts"][-1] if hit.height else None
        return {"origin": cp.origin, "tree_size": cp.size, "root_hash": cp.root_hash.hex(), "note": note,
                "ts": ts, "key_name": _note_key_name(note)}

    def vkey(self) -> str | None:
        """The verifier key used as trust anchor (given, else shipped with the bundle or keys folder),
        as a parsed ``name+keyid+base64`` string; None if there is none. Text that does not parse as
        a verifier key is never returned (it could be a secret key file put in its place);
        :attr:`vkey_problem` then says so, without quoting it."""
        v = self._verifier_arg
        if v is not None:
            return _vkey_from(v)
        for attr in ("vkey", "verifier_key"):
            if hasattr(self.obj, attr):  # a bundle says itself whether its verifier.vkey is a key
                vk = _parsed_vkey(getattr(self.obj, attr), self)
                folder = getattr(self.obj, "path", None) or getattr(self.obj, "folder", None)
                if vk is None and folder is not None and os.path.lexists(Path(folder) / "verifier.vkey"):
                    self.vkey_problem = _VKEY_PROBLEM
                return vk
        manifest = getattr(self.obj, "manifest", None)
        if isinstance(manifest, dict):
            for k in ("vkey", "verifier_key", "verifier"):
                if isinstance(manifest.get(k), str):
                    return _parsed_vkey(manifest[k], self)
        keys = getattr(self.obj, "keys_folder", None)
        if keys is not None and (Path(keys) / "verifier.vkey").is_file():
            return _parsed_vkey(Path(keys) / "verifier.vkey", self)
        return None

    vkey_problem: str | None = None

    def verify(self) -> VerifyStatus:
        """Verify the whole chain (typed rows, entries, leaves, signed root) and say where it breaks."""
        return _verify(self)

    def inclusion(self, seq: int) -> ProofResult:
        """Inclusion proof of event ``seq`` checked against the latest signed checkpoint."""
        return _inclusion(self, int(seq))

    def close(self) -> None:
        if self._duck is not None:
            self._duck.close()
            self._duck = None
        if self._owned and hasattr(self.obj, "close"):
            self.obj.close()

    def __repr__(self) -> str:
        return f"<Source {self.kind} {self.location}>"


def as_source(obj: Any, *, verifier: Any = None) -> Source:
    """A :class:`Source` for ``obj`` (returned unchanged if it already is one)."""
    if isinstance(obj, Source):
        if verifier is not None and obj._verifier_arg is None:
            obj._verifier_arg = verifier
        return obj
    return Source(obj, verifier=verifier)


# ---------------------------------------------------------------------- helpers
def _open_path(path: str | os.PathLike) -> Any:
    from ..bundle_files import is_url
    if is_url(path):  # a bundle on object storage (credentials from its file system's environment)
        from ..bundle import open_bundle
        return open_bundle(path)
    path = Path(path)
    if path.is_dir():
        try:
            from ..bundle import open_bundle
        except ModuleNotFoundError as e:  # pragma: no cover - bundle module not present
            raise FileNotFoundError(f"{path} is a folder but bundles are not supported here: {e}") from e
        return open_bundle(path)
    if not path.exists():
        raise FileNotFoundError(f"no store or bundle at {path}")
    from ..store import open_store
    return open_store(path, read_only=True, pseudonymize=False)


def _parquet_views(bundle: Any):
    """An in-memory DuckDB with one view per Parquet table of a bundle folder."""
    import duckdb
    folder = Path(getattr(bundle, "folder", None) or getattr(bundle, "path"))
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    tables: dict[str, list[str]] = {}
    for f in sorted(folder.rglob("*.parquet")):
        rel = f.relative_to(folder)
        name = rel.parts[-2] if len(rel.parts) > 1 and rel.parts[0] != "." and f.stem[:4] in ("part", "seg-") \
            else f.stem
        tables.setdefault(name, []).append(str(f))
    for name, files in tables.items():
        lst = ", ".join("'" + p.replace("'", "''") + "'" for p in files)
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{lst}])')
    return con


def _note_body(note: str) -> str:
    return note[:note.rfind("\n\n") + 1]


def _note_key_name(note: str) -> str | None:
    split = note.rfind("\n\n")
    if split < 0:
        return None
    for line in note[split + 2:].splitlines():
        if line.startswith("\u2014 "):
            return line[2:].split(" ", 1)[0]
    return None


def _vkey_from(v: Any) -> str:
    """The vkey string of a Verifier, vkey string, ``.vkey`` file or keys folder (KeysError if not
    one; a file's content is never quoted)."""
    from ..keys import load_verifier
    return load_verifier(v).vkey


_VKEY_PROBLEM = "the shipped verifier key is not a valid verifier key (its content is not shown)"


def _parsed_vkey(v: Any, src: Source) -> str | None:
    """``v`` (a string or a file) as a checked vkey string, else None with ``src.vkey_problem`` set."""
    from ..errors import KeysError
    from ..keys import load_verifier
    from ..ledger.checkpoint import Verifier
    if v is None or v == "":
        return None
    try:  # a string is only ever parsed, never opened as a path
        return load_verifier(v).vkey if isinstance(v, Path) else Verifier.from_vkey(str(v).strip()).vkey
    except KeysError:
        src.vkey_problem = _VKEY_PROBLEM
        return None


def _verifier(src: Source):
    from ..ledger.checkpoint import Verifier
    if isinstance(src._verifier_arg, Verifier):
        return src._verifier_arg
    vk = src.vkey()
    return Verifier.from_vkey(vk) if vk else None


def _report_to_status(report: Any, size: int, pinned: bool = True) -> VerifyStatus:
    ok = bool(getattr(report, "ok", False))
    root = getattr(report, "signed_root", None) or getattr(report, "root", None)
    if isinstance(root, bytes):
        root = root.hex()
    n = getattr(report, "events", None) or getattr(report, "size", None) or size
    details = {k: getattr(report, k) for k in ("damage", "signed_size", "checkpoints_verified", "elapsed",
                                                "verifier") if hasattr(report, k)}
    return VerifyStatus(ok=ok, size=int(n), message=str(getattr(report, "message", report)),
                        first_bad_seq=getattr(report, "first_bad_seq", None), root=root,
                        checked_signature=bool(getattr(report, "checkpoints_verified", 0)), details=details,
                        pinned=pinned)


def _verify(src: Source) -> VerifyStatus:
    """Full verification through the store's/bundle's own ``verify(key)``; without a key, the
    structural checks only (entries -> leaves -> signed root, signature not checked)."""
    from ..errors import AuditKitError
    vk = _verifier(src)
    fn = getattr(src.obj, "verify", None)
    if vk is None or not callable(fn):
        return _verify_fallback(src, vk)
    try:
        report = fn(vk)
    except AuditKitError as e:
        return VerifyStatus(ok=False, size=src.size, message=str(e), first_bad_seq=getattr(e, "seq", None),
                            pinned=src.pinned)
    return _report_to_status(report, src.size, src.pinned)


def _verify_fallback(src: Source, vk: Any) -> VerifyStatus:
    """Entries -> leaves -> root -> signature, for sources without a verify() of their own."""
    from ..ledger import merkle
    from ..ledger.checkpoint import Checkpoint, verify_checkpoint
    from ..store import leaf_hashes_of
    log = src.sql("SELECT seq, entry, leaf_hash FROM log ORDER BY seq").to_arrow()
    seqs = log.column("seq").to_pylist()
    for i, s in enumerate(seqs):
        if s != i:
            return VerifyStatus(False, len(seqs), f"log has a gap or reordering at seq {i}", first_bad_seq=i)
    computed = leaf_hashes_of(log.column("entry"))
    stored = log.column("leaf_hash").to_pylist()
    for i, (a, b) in enumerate(zip(computed, stored)):
        if a != bytes(b):
            return VerifyStatus(False, len(seqs), f"entry {i} does not hash to its leaf", first_bad_seq=i)
    note = src.checkpoint_note()
    if note is None:
        return VerifyStatus(True, len(seqs), "leaves match their entries; no signed checkpoint to check")
    if vk is not None:
        try:
            cp = verify_checkpoint(note, vk)
        except Exception as e:  # noqa: BLE001
            return VerifyStatus(False, len(seqs), f"checkpoint signature does not verify: {e}")
    else:
        cp = Checkpoint.parse(_note_body(note))
    if cp.size > len(stored):
        return VerifyStatus(False, len(seqs), f"checkpoint covers {cp.size} events but the log has {len(stored)}",
                            first_bad_seq=len(stored))
    root = merkle.root_from_leaf_hashes(computed[:cp.size])
    if root != cp.root_hash:
        return VerifyStatus(False, len(seqs), "root of the log differs from the signed root")
    return VerifyStatus(True, len(seqs), "verified" + ("" if vk else " (signature not checked: no verifier key)"),
                        root=root.hex(), checked_signature=vk is not None, pinned=src.pinned)


def _inclusion(src: Source, seq: int) -> ProofResult:
    from ..ledger import merkle
    snap = src.latest_snapshot()
    if snap is None or snap.get("tree_size") is None:
        return ProofResult(seq, False, "no signed checkpoint yet: take a snapshot first")
    size = int(snap["tree_size"])
    if not 0 <= seq < size:
        return ProofResult(seq, False, f"seq {seq} is not covered by the latest signed checkpoint "
                                       f"(tree size {size:,})", tree_size=size, root=snap["root_hash"])
    signed = False
    vk = _verifier(src)
    if vk is not None:
        from ..ledger.checkpoint import verify_checkpoint
        try:
            verify_checkpoint(snap["note"], vk)
            signed = True
        except Exception as e:  # noqa: BLE001
            return ProofResult(seq, False, f"the latest checkpoint's signature does not verify: {e}",
                               tree_size=size, root=snap["root_hash"])
    row = src.sql("SELECT kind, ts, entry, leaf_hash FROM log WHERE seq = ?", [seq])
    if row.height == 0:
        return ProofResult(seq, False, f"no event with seq {seq}")
    entry = bytes(row["entry"][0])
    leaf = merkle.leaf_hash(entry)
    proof = _proof_hashes(src, seq, size)
    root = bytes.fromhex(snap["root_hash"])
    try:
        ok = bool(merkle.verify_inclusion(leaf, seq, size, proof, root))
    except Exception:  # noqa: BLE001 - verify_inclusion may raise on mismatch
        ok = False
    msg = (f"event {seq} is included in the signed tree of size {size:,}" if ok else
           f"event {seq} does NOT verify against the signed root")
    if ok and not signed:
        msg += " (signature not checked: no verifier key)"
    return ProofResult(seq, ok, msg, tree_size=size, root=snap["root_hash"], leaf_hash=leaf.hex(),
                       proof=tuple(h.hex() for h in proof), kind=row["kind"][0], ts=row["ts"][0], signed=signed)


def _proof_hashes(src: Source, seq: int, size: int) -> list[bytes]:
    obj = src.obj
    fn = getattr(obj, "inclusion_proof", None)
    if callable(fn):
        try:
            p = fn(seq, size)
        except TypeError:
            p = fn(seq)
        hashes = getattr(p, "proof", None) or getattr(p, "hashes", None) or getattr(p, "path", None) or p
        return [h if isinstance(h, bytes) else bytes.fromhex(h) for h in hashes]
    from ..ledger import merkle
    from ..ledger.verify import compute_tree

    def tree():  # every subtree hash of the bundle's log, once per source (~1 s per 1M events)
        entries = src.sql("SELECT entry FROM log WHERE seq < ? ORDER BY seq", [size]).to_arrow().column(0)
        return compute_tree(entries)
    return merkle.inclusion_proof_from_nodes(seq, size, src.cached(("tree", size), tree))
