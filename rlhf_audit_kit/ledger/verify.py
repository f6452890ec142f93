"""Full verification of an audit record: store or bundle, one implementation.

Verification re-derives everything from the log and checks every link, naming the first bad ``seq``:

a. ``seq-order``: the log's ``seq`` column is exactly 0..n-1 in stored order (gaps, duplicates,
   swapped or forged sequence numbers);
b. ``typed-row-mismatch`` (and ``missing-typed-row``, ``typed-row-without-entry``,
   ``duplicate-typed-row``, ``log-ts-mismatch``, ``unknown-kind``): every typed row re-encodes
   (:func:`rlhf_audit_kit.encoding.encode_frame`) to exactly the entry of the same ``seq``, every
   entry of kind K has exactly one row in K's table, and no typed row lacks its entry;
c. ``leaf-hash-mismatch``: every entry hashes to its stored ``leaf_hash``;
d. ``root-mismatch`` / ``truncated``: the RFC 9162 root recomputed from the entries equals the root of
   every signed checkpoint (``seq`` is then the first event no matching checkpoint vouches for);
e. ``bad-signature``, ``origin-mismatch``, ``snapshot-mismatch``: every checkpoint note verifies
   under the pinned key and agrees with its snapshot event; ``inconsistent-checkpoints``: each
   checkpoint extends the earlier ones (RFC 9162 consistency proofs are generated and checked);
   ``bad-node``: the stored subtree hashes (``merkle_node``) equal the recomputed ones.

Bundles add (:mod:`rlhf_audit_kit.bundle`): ``unsafe-file`` (a link, FIFO, device or name outside
the folder, refused unread), ``oversized`` (a file or decoded Parquet page over the limits, refused
before decoding), ``malformed-bundle`` (manifest, note, key or Parquet data that does not parse),
``manifest-mismatch`` (a file missing or not matching its SHA-256), ``unlisted-file`` (a file the
manifest does not name) and ``bundle-metadata-mismatch``.

Every check runs; the report names the smallest bad ``seq`` found (ties: the earlier check above).
The work is columnar: typed rows are re-encoded per kind with polars and compared as Binary columns;
leaf hashes and all subtree hashes are computed from the Arrow buffer of the entries by forked
worker processes (``workers``) writing into shared memory while the parent re-encodes.

Sources are anything with ``log()``, ``typed(kind)``, ``nodes()``, ``origin`` and ``description``
(see :class:`DuckSource`); the store and bundles both use :class:`DuckSource`.

>>> import os, tempfile
>>> from rlhf_audit_kit.store import open_store
>>> from rlhf_audit_kit.ledger.checkpoint import Signer
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> signer = Signer("example.com/log", Ed25519PrivateKey.generate())
>>> store = open_store(os.path.join(tempfile.mkdtemp(), "a.duckdb"), pseudonymize=False)
>>> _ = store.extend([{"kind": "dataset", "name": "hh", "version": "1"}])
>>> _ = store.snapshot(signer)
>>> report = store.verify(signer.verifier)
>>> report.ok, report.events, report.checkpoints_verified
(True, 2, 1)
>>> store.close()
"""
from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
import pyarrow as pa

from .. import encoding
from ..errors import IntegrityError, KeysError, SignatureError
from ..keys import load_verifier
from ..reader import _quote, typed_select_list
from ..schema import KINDS
from ..store import fetch_nodes
from . import merkle
from .checkpoint import SIG_PREFIX, Checkpoint, Verifier, _b64decode, key_name_warning, verify_checkpoint
from .levels import TreeLevels, _binary, _finish_levels, _TreeJob, compute_tree, stored_node_bounds
from .tree import ExtendedTree, TreeReader

__all__ = ["Finding", "VerifyReport", "DuckSource", "verify_source", "derive_range", "Derived", "conclude",
           "resolve_verifiers",
           "compute_tree", "TreeLevels", "DAMAGE_KINDS", "verify_inclusion_against",
           "verify_consistency_against"]

#: Damage kinds in check order (ties on the same seq are reported in this order).
DAMAGE_KINDS: tuple[str, ...] = (
    "seq-order", "unknown-kind", "typed-row-mismatch", "missing-typed-row", "typed-row-without-entry",
    "duplicate-typed-row", "log-ts-mismatch", "leaf-hash-mismatch", "bad-signature", "origin-mismatch",
    "snapshot-mismatch", "truncated", "root-mismatch", "inconsistent-checkpoints", "bad-node",
    "unsafe-file", "oversized", "malformed-bundle", "manifest-mismatch", "unlisted-file", "bundle-metadata-mismatch",
    "bad-cosignature", "witness-quorum",
)
_ORDER = {d: i for i, d in enumerate(DAMAGE_KINDS)}
_SIG_DAMAGE = {"bad-signature"}
_TREE_DAMAGE = ("root-mismatch", "bad-node")


# ------------------------------------------------------------------------------ report
@dataclass(frozen=True)
class Finding:
    """One piece of damage: its kind, the first bad ``seq`` it implies (None if not one event)."""

    damage: str
    message: str
    seq: int | None = None
    checkpoint: int | None = None

    def sort_key(self) -> tuple:
        return (self.seq is None, self.seq if self.seq is not None else 0, _ORDER.get(self.damage, 99))


@dataclass
class VerifyReport:
    """The outcome of a verification. ``ok`` is True when nothing is damaged.

    ``first_bad_seq``/``damage``/``message`` describe the first finding (smallest ``seq``);
    ``findings`` lists every check that failed. ``signed_size`` is the largest tree size vouched for
    by a verified checkpoint, ``signed_root`` its root; events past it are checked for internal
    consistency only (nothing signed covers them yet). ``verifier`` names the pinned key(s);
    ``signed_by`` the vkeys of the pinned keys whose signature verified a checkpoint: the only
    signer identity a report vouches for. ``unsigned``: what the source states that no signature
    covers (a bundle's manifest fields other than origin, size, root and file hashes), for display
    as unverified only.

    ``covered``: the seq range ``(start, end)`` re-derived from the entries; an incremental
    verification (``since=``) starts after the trusted checkpoint, and what lies before ``start``
    was not re-read. ``since``: the trusted tree size it started from; ``consistency_proof``: the
    RFC 9162 proof from the trusted checkpoint to ``signed_size``; ``left_to_full``: signed notes
    of sizes below ``start`` whose roots only a full verification recomputes; ``later_files``:
    files of a later publication into a bundle folder (not read). ``warnings``: what is verified but
    unusual (a signing key not named after the checkpoint origin); they do not make ``ok`` False.

    >>> r = VerifyReport(source="x", events=3, checkpoints_verified=1, signed_size=3)
    >>> r.ok, r.first_bad_seq
    (True, None)
    >>> r.raise_for_status() is r
    True
    """

    source: str
    events: int
    checkpoints_verified: int = 0
    signed_size: int = 0
    signed_root: bytes | None = None
    findings: list[Finding] = field(default_factory=list)
    elapsed: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    verifier: str | None = None
    signed_by: list[str] = field(default_factory=list)
    unsigned: dict[str, Any] = field(default_factory=dict)
    covered: tuple[int, int] | None = None
    since: int | None = None
    consistency_proof: list[bytes] = field(default_factory=list)
    left_to_full: int = 0
    later_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def first(self) -> Finding | None:
        return min(self.findings, key=Finding.sort_key) if self.findings else None

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_bad_seq(self) -> int | None:
        f = self.first
        return f.seq if f else None

    @property
    def damage(self) -> str | None:
        f = self.first
        return f.damage if f else None

    @property
    def message(self) -> str:
        f = self.first
        if f is None:
            unsigned = self.events - self.signed_size
            tail = (" (no signed checkpoint: nothing is anchored to a key yet)" if not self.checkpoints_verified
                    else f"; {unsigned:,} later event(s) not yet covered by a signed checkpoint"
                    if unsigned else "")
            start, end = self.covered or (0, self.events)
            if self.since is not None:
                tail += f"; extends the trusted checkpoint of size {self.since:,}"
            if start:
                tail += (f"; re-derived seq {start:,}..{end - 1:,} ({end - start:,} events), earlier segments "
                         f"not re-read (a full verification checks them)" if end > start else
                         f"; nothing new after seq {start - 1:,} (earlier segments not re-read)")
            if self.later_files:
                tail += f"; {len(self.later_files)} file(s) of a later publication not read"
            events = f"{self.events:,} event{'' if self.events == 1 else 's'}"
            return (f"OK: {events}, {self.checkpoints_verified} signed checkpoint(s) "
                    f"verified, signed size {self.signed_size:,}{tail}")
        where = f"seq {f.seq}" if f.seq is not None else (
            f"checkpoint size {f.checkpoint}" if f.checkpoint is not None else "record")
        return f"FAILED at {where} [{f.damage}]: {f.message}"

    @property
    def events_per_second(self) -> float:
        return self.events / self.elapsed if self.elapsed > 0 else float("inf")

    def raise_for_status(self) -> VerifyReport:
        """Raise :class:`SignatureError` (bad signature) or :class:`IntegrityError`; else return self."""
        f = self.first
        if f is None:
            return self
        if f.damage in _SIG_DAMAGE:
            raise SignatureError(self.message)
        raise IntegrityError(self.message, seq=f.seq, damage=f.damage, checkpoint=f.checkpoint)

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"<VerifyReport {self.source}: {self.message}>"

    def _repr_html_(self) -> str:
        color = "#1a7f37" if self.ok else "#cf222e"
        head = (f"<div style='border-left:4px solid {color};padding-left:8px'>"
                f"<b style='color:{color}'>{'verified' if self.ok else 'DAMAGED'}</b> "
                f"<code>{html.escape(self.source)}</code><br>{html.escape(self.message)}<br>"
                f"<small>{self.events:,} events in {self.elapsed:.2f} s"
                f"{f' ({self.events_per_second:,.0f}/s)' if self.elapsed else ''}"
                f"{' · key ' + html.escape(self.verifier) if self.verifier else ''}</small>")
        head += "".join(f"<br><small>warning: {html.escape(w)}</small>" for w in self.warnings)
        if self.findings:
            rows = "".join(
                f"<tr><td>{'' if f.seq is None else f.seq}</td><td>{html.escape(f.damage)}</td>"
                f"<td>{html.escape(f.message)}</td></tr>"
                for f in sorted(self.findings, key=Finding.sort_key)[:20])
            head += f"<table><tr><th>seq</th><th>damage</th><th>detail</th></tr>{rows}</table>"
        return head + "</div>"


def resolve_verifiers(key: Any) -> list[Verifier]:
    """Verifiers from a :class:`Verifier`, a vkey string, a vkey file, a keys folder, or a list.

    >>> resolve_verifiers("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[0].name
    'PeterNeumann'
    """
    if key is None:
        raise KeysError("verification needs the verifier key you trust (vkey string, file or Verifier)")
    if isinstance(key, Verifier):
        return [key]
    if isinstance(key, (list, tuple, set, frozenset)):
        return [v for k in key for v in resolve_verifiers(k)]
    return [load_verifier(key)]


# ------------------------------------------------------------------------------ sources
class Source(Protocol):
    description: str
    origin: str

    def log(self) -> pa.Table: ...

    def typed(self, kind: str) -> pl.DataFrame: ...

    def nodes(self) -> pa.Table | None: ...


class DuckSource:
    """A DuckDB connection holding ``log``, one table or view per kind and optionally ``merkle_node``.

    ``kinds``: the kinds whose tables exist (others count as empty).
    """

    def __init__(self, con, *, origin: str, description: str, kinds: Iterable[str] | None = None,
                 has_nodes: bool = True, seqs: tuple[int, int] | None = None):
        self.con, self.origin, self.description = con, origin, description
        self.kinds = set(KINDS if kinds is None else kinds)
        self.has_nodes = has_nodes
        # only the rows of seq lo <= seq < hi (a range: see verify_source)
        self._where = "" if seqs is None else f" WHERE seq >= {int(seqs[0])} AND seq < {int(seqs[1])}"

    def log(self) -> pa.Table:
        return self.con.sql(f"SELECT seq, kind, ts, entry, leaf_hash FROM log{self._where}").to_arrow_table()

    def typed(self, kind: str) -> pl.DataFrame:
        if kind not in self.kinds:
            return pl.DataFrame()
        return self.con.sql(f"SELECT {typed_select_list(KINDS[kind])} FROM {_quote(kind)}{self._where}").pl()

    def nodes(self) -> pa.Table | None:
        if not self.has_nodes:
            return None
        return self.con.sql("SELECT level, idx, hash FROM merkle_node ORDER BY level, idx").to_arrow_table()

    def in_range(self, lo: int, hi: int) -> DuckSource:
        """The rows of seq ``lo <= seq < hi`` only (no stored nodes)."""
        return DuckSource(self.con, origin=self.origin, description=self.description, kinds=self.kinds,
                          has_nodes=False, seqs=(lo, hi))

    def exact_seqs(self, more_than: int = 0) -> int | None:
        """n if the log holds more than ``more_than`` events, its seqs are exactly 0..n-1 and every typed
        row's seq lies in that range, else None: then ranges of seq derived apart give what one
        derivation gives (see :func:`verify_source`). One query over the log, one over the typed tables."""
        n, distinct, lo, hi = self.con.sql("SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM log"
                                           ).fetchall()[0]
        if n <= more_than or distinct != n or lo != 0 or hi != n - 1:
            return None
        outside = " + ".join(f"(SELECT count(*) FROM {_quote(k)} WHERE seq IS NULL OR seq < 0 OR seq >= {int(n)})"
                             for k in sorted(self.kinds))
        if outside and self.con.sql(f"SELECT {outside}").fetchall()[0][0]:
            return None
        return int(n)

    def get_nodes(self, wanted):  # TreeReader oracle over the stored nodes
        return fetch_nodes(self.con, wanted)

    @property
    def _con(self):
        return self.con


# ------------------------------------------------------------------------------ checks
def _seq_order(seq: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, int | None]:
    """(row order by seq or None if already sorted, sorted seq, first bad seq or None).

    The log must hold each of 0..n-1 exactly once; the first bad seq is the smallest one missing,
    duplicated or out of range. (Physical row order carries no meaning in DuckDB; a swapped seq is
    caught by the seq embedded in the entry.)
    """
    n = len(seq)
    if n < 2 or bool(np.all(seq[1:] > seq[:-1])):
        order, s = None, seq
    else:
        order = np.argsort(seq, kind="stable")
        s = seq[order]
    pos = np.arange(n, dtype=np.int64)
    bad = np.flatnonzero(s != pos)
    if not len(bad):
        return order, s, None
    cand = np.where(s[bad] >= 0, np.minimum(bad, s[bad]), bad)
    return order, s, int(cand.min())


def _hash_col_array(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32) uint8 view of a column of 32-byte hashes, and a mask of malformed rows."""
    arr = _binary(col)
    n = len(arr)
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else \
        np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))
    offs = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + n + 1]
    lengths = np.diff(offs)
    bad = (lengths != 32) | ~valid
    if not bad.any():
        data = arr.buffers()[2]
        return np.frombuffer(data, dtype=np.uint8, count=32 * n, offset=int(offs[0])).reshape(n, 32), bad
    out = np.zeros((n, 32), dtype=np.uint8)
    values = arr.to_pylist()
    for i in np.flatnonzero(~bad):
        out[i] = np.frombuffer(values[i], dtype=np.uint8)
    return out, bad


def _check_typed(source: Source, lp: pl.DataFrame, log_ok: bool, findings: list[Finding],
                 timings: dict[str, float], groups: dict[int, str] | None = None) -> dict[str, pl.DataFrame]:
    """Check (b); returns the typed frames read (the snapshot frame is used for checkpoints).

    ``groups``: filled with finding index -> the kind whose check made it (``kind!`` when that
    kind's rows do not even encode, which skips its other checks), so results of seq ranges combine.
    """
    frames = {}
    groups = {} if groups is None else groups
    known = list(KINDS)
    unknown = lp.filter(~pl.col("kind").is_in(known))
    if unknown.height:
        s = int(unknown["seq"].min())
        findings.append(Finding("unknown-kind", f"log entry of unknown kind {unknown['kind'][0]!r}", s))
    for kind_name in known:
        kind = KINDS[kind_name]
        t0 = time.perf_counter()
        first = len(findings)
        typed = source.typed(kind_name)
        lk = lp.filter(pl.col("kind") == kind_name).select("seq", "ts", "entry")
        if typed.height == 0 and lk.height == 0:
            continue
        if typed.height:
            if not typed["seq"].is_sorted():
                typed = typed.sort("seq", maintain_order=True)
            frames[kind_name] = typed
            try:
                enc = _encode_typed(kind, typed)
            except Exception as e:  # a typed row that cannot even be encoded is a damaged row
                bad = _unencodable_row(kind, typed)
                findings.append(Finding("typed-row-mismatch",
                                        f"{kind_name} row cannot be encoded: {e}", bad))
                groups[first] = f"{kind_name}!"
                continue
            t_side = pl.DataFrame({"seq": typed["seq"], "t_ts": typed["ts"], "enc": enc})
        else:
            t_side = pl.DataFrame(schema={"seq": pl.Int64, "t_ts": pl.Datetime("us"), "enc": pl.Binary})
        if (log_ok and lk.height == t_side.height and lk["seq"].equals(t_side["seq"])):
            mism = (lk["entry"] != t_side["enc"]).fill_null(True)
            if mism.any():
                s = int(lk["seq"].filter(mism).min())
                findings.append(Finding("typed-row-mismatch",
                                        f"{kind_name} row does not re-encode to its log entry", s))
            ts_bad = (lk["ts"] != t_side["t_ts"]).fill_null(True)
            if ts_bad.any():
                s = int(lk["seq"].filter(ts_bad).min())
                findings.append(Finding("log-ts-mismatch", "log ts differs from the typed row's ts", s))
        else:
            _check_joined(kind_name, lk, t_side, findings)
        groups.update(dict.fromkeys(range(first, len(findings)), kind_name))
        timings[f"typed:{kind_name}"] = time.perf_counter() - t0
    return frames


_ENCODE_CHUNK = 65_536


def _encode_typed(kind, typed: pl.DataFrame) -> pl.Series:
    """Entries re-encoded from typed rows; big tables in slices on a thread per core (polars'
    JSON writer runs on one thread per call and releases the GIL)."""
    ts = typed["ts"].dt.strftime(encoding.TS_FORMAT)
    if typed.height <= _ENCODE_CHUNK:
        return encoding.encode_frame(kind, typed, typed["seq"], ts).cast(pl.Binary)
    from concurrent.futures import ThreadPoolExecutor

    def one(off: int) -> pl.Series:
        part = typed.slice(off, _ENCODE_CHUNK)
        return encoding.encode_frame(kind, part, part["seq"], ts.slice(off, _ENCODE_CHUNK)).cast(pl.Binary)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="rlhf-audit-verify") as pool:
        return pl.concat(list(pool.map(one, range(0, typed.height, _ENCODE_CHUNK))), rechunk=False)


def _unencodable_row(kind, typed: pl.DataFrame) -> int | None:
    for i in range(typed.height):  # damaged path only
        try:
            encoding.encode_frame(kind, typed[i], typed["seq"][i:i + 1],
                                  typed["ts"][i:i + 1].dt.strftime(encoding.TS_FORMAT))
        except Exception:
            return int(typed["seq"][i])
    return None


def _check_joined(kind_name: str, lk: pl.DataFrame, t_side: pl.DataFrame, findings: list[Finding]) -> None:
    dup = t_side.filter(pl.col("seq").is_duplicated())
    if dup.height:
        findings.append(Finding("duplicate-typed-row", f"two {kind_name} rows have the same seq",
                                int(dup["seq"].min())))
    j = lk.with_columns(pl.lit(True).alias("in_log")).join(
        t_side.with_columns(pl.lit(True).alias("in_typed")), on="seq", how="full", coalesce=True)
    missing = j.filter(pl.col("in_typed").is_null())
    if missing.height:
        findings.append(Finding("missing-typed-row", f"log entry of kind {kind_name} has no {kind_name} row",
                                int(missing["seq"].min())))
    orphan = j.filter(pl.col("in_log").is_null())
    if orphan.height:
        findings.append(Finding("typed-row-without-entry",
                                f"{kind_name} row has no log entry of kind {kind_name}",
                                int(orphan["seq"].min())))
    both = j.filter(pl.col("in_log") & pl.col("in_typed"))
    bad = both.filter((pl.col("entry") != pl.col("enc")).fill_null(True))
    if bad.height:
        findings.append(Finding("typed-row-mismatch", f"{kind_name} row does not re-encode to its log entry",
                                int(bad["seq"].min())))
    bad = both.filter((pl.col("ts") != pl.col("t_ts")).fill_null(True))
    if bad.height:
        findings.append(Finding("log-ts-mismatch", "log ts differs from the typed row's ts", int(bad["seq"].min())))


def combine_findings(parts: Iterable[tuple[Sequence[Finding], Sequence[str]]]) -> list[Finding]:
    """The findings one derivation of a whole seq range gives, from those of its parts derived apart
    (``(findings, groups)`` of each, see :func:`derive_range`; parts that hold exactly their seqs).

    Each check reports its smallest bad seq once per kind; a kind whose rows do not encode
    reports only that.
    """
    parts = [(list(f), list(g)) for f, g in parts]
    unencodable = {g[:-1] for _, groups in parts for g in groups if g.endswith("!")}
    best: dict[tuple[str, str], Finding] = {}
    for findings, groups in parts:
        for f, g in zip(findings, groups):
            if g.rstrip("!") in unencodable and not g.endswith("!"):
                continue
            key = (g.rstrip("!"), f.damage)
            if key not in best or (f.seq is not None and (best[key].seq is None or f.seq < best[key].seq)):
                best[key] = f
    order = {"": -1, **{k: i for i, k in enumerate(KINDS)}}
    return [f for (g, d), f in sorted(best.items(), key=lambda kv: (kv[0][1] == "leaf-hash-mismatch",
                                                                    order.get(kv[0][0], 99)))]


def _check_nodes(stored: pa.Table, tree: TreeLevels, leaf_bad: np.ndarray, findings: list[Finding]) -> None:
    """Check that ``merkle_node`` holds exactly the recomputed complete nodes of level >= 1 (those over
    the last few leaves may be missing as a suffix of each level: see ``levels.NODE_TAIL``).

    A differing node whose differing child explains it is not itself the damage; the first bad seq
    is the first leaf of the lowest unexplained differing node (or of a missing/extra node).
    """
    level = stored.column("level").to_numpy().astype(np.int64)
    idx = stored.column("idx").to_numpy().astype(np.int64)
    hashes, malformed = _hash_col_array(stored.column("hash"))
    bad_seqs: list[int] = []
    nlev = len(tree.counts)
    outside = (level < 1) | (level >= nlev)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        bad_seqs.append(max(0, int(idx[i])) << max(0, int(level[i])) if 0 <= level[i] < 63 else 0)
    bounds = np.searchsorted(level, np.arange(nlev + 1), side="left")
    below = np.flatnonzero(leaf_bad)  # differing nodes of the level below
    for lv in range(1, nlev):
        a, b = int(bounds[lv]), int(bounds[lv + 1])
        want = tree.counts[lv]
        ids = idx[a:b]
        m = min(len(ids), want)
        dev = np.flatnonzero(ids[:m] != np.arange(m))
        if len(dev):
            p = int(dev[0])
            bad_seqs.append(min(p, max(0, int(ids[p]))) << lv)
        elif not stored_node_bounds(tree.n, lv)[0] <= len(ids) <= want:  # the last few may be missing
            bad_seqs.append(m << lv)
        good = m if not len(dev) else int(dev[0])
        diff = np.flatnonzero((hashes[a:a + good] != tree.level_array(lv)[:good]).any(axis=1)
                              | malformed[a:a + good]) if good else np.zeros(0, dtype=np.int64)
        if len(diff):
            explained = np.isin(diff, below >> 1)
            if (~explained).any():
                bad_seqs.append(int(diff[~explained][0]) << lv)
        below = diff
    if bad_seqs:
        s = min(bad_seqs)
        findings.append(Finding("bad-node", "stored Merkle subtree hashes (merkle_node) differ from the "
                                            "ones recomputed from the log", s))


class _StoredNodes:
    """Lookup of stored complete nodes (level >= 1) from the merkle_node table; damaged path only."""

    def __init__(self, table: pa.Table, leaves: np.ndarray | None = None):
        self.leaves = leaves  # stored leaf hashes in seq order, (n, 32)
        level = table.column("level").to_numpy().astype(np.int64)
        self.idx = table.column("idx").to_numpy().astype(np.int64)
        self.hashes = table.column("hash").to_pylist()
        self.level = level

    def get(self, node: tuple[int, int]) -> bytes | None:
        lv, i = node
        if lv == 0:
            ok = self.leaves is not None and 0 <= i < len(self.leaves)
            return self.leaves[i].tobytes() if ok else None
        lo = np.searchsorted(self.level, lv, side="left")
        hi = np.searchsorted(self.level, lv, side="right")
        p = lo + np.searchsorted(self.idx[lo:hi], i)
        if p < hi and self.idx[p] == i and self.hashes[p] is not None:
            return bytes(self.hashes[p])
        return None


def _localize(size: int, signed_root: bytes, tree: TreeLevels, stored: _StoredNodes | None) -> int | None:
    """First leaf (to within a pair) where the log departs from a signed root, or None.

    Walks down from the signed root through *stored* subtree hashes (and stored leaf hashes),
    trusting each only if it hashes up to an already trusted one (so damaged stored nodes cannot
    mislead), and follows the leftmost child whose recomputed hash differs. When the stored leaf
    hashes were rewritten too, the damage is located to within a leaf pair.
    """
    if stored is None or size < 2:
        return None
    parts = merkle._decompose(0, size)
    got = {p: (tree[p] if p[0] == 0 else stored.get(p)) for p in parts}
    if any(v is None for v in got.values()) or merkle._fold(parts, got) != signed_root:
        return None
    for part in parts:
        if tree[part] == got[part]:
            continue
        lv, i, trusted = part[0], part[1], got[part]
        while lv > 0:
            c0, c1 = stored.get((lv - 1, 2 * i)), stored.get((lv - 1, 2 * i + 1))
            if c0 is None or c1 is None or merkle.node_hash(c0, c1) != trusted:
                break  # at level 1 (rewritten leaf hashes) this leaves a pair: 2i or 2i + 1
            if tree[(lv - 1, 2 * i)] != c0:
                lv, i, trusted = lv - 1, 2 * i, c0
            else:
                lv, i, trusted = lv - 1, 2 * i + 1, c1
        return i << lv
    return None


@dataclass
class _Cp:
    seq: int | None
    note: str
    row: dict | None


def _note_signers(note: str, verifiers: list[Verifier]) -> list[Verifier]:
    """The pinned keys with a signature line in ``note`` (call after it verified: each one was checked)."""
    known = {(v.name, v.key_id): v for v in verifiers}
    out = []
    for line in note[note.rfind("\n\n") + 2:].splitlines():
        name, _, b64 = line.removeprefix(SIG_PREFIX).partition(" ")
        try:
            v = known.get((name, _b64decode(b64)[:4]))
        except ValueError:
            continue
        if v is not None:
            out.append(v)
    return out


def _check_checkpoints(source: Source, snap: pl.DataFrame | None, extra_notes: Sequence[str],
                       verifiers: list[Verifier], tree: TreeLevels, n: int,
                       findings: list[Finding], report: VerifyReport,
                       stored_nodes: pa.Table | None = None, stored_leaves: np.ndarray | None = None) -> None:
    cps: list[_Cp] = []
    if snap is not None and snap.height:
        for row in snap.iter_rows(named=True):  # one per snapshot, not per event
            cps.append(_Cp(int(row["seq"]), row["note"], row))
    cps += [_Cp(None, note, None) for note in extra_notes]
    good: list[tuple[int, bytes, int | None]] = []
    for cp in cps:
        try:
            checkpoint = verify_checkpoint(cp.note, verifiers)
        except SignatureError as e:
            findings.append(Finding("bad-signature", f"checkpoint note does not verify: {e}", cp.seq))
            continue
        if checkpoint.origin != source.origin:
            findings.append(Finding("origin-mismatch", f"checkpoint origin {checkpoint.origin!r} is not "
                                                       f"this log's origin {source.origin!r}", cp.seq))
            continue
        if cp.row is not None:
            signer = next((v for v in verifiers if cp.note.rstrip("\n").rsplit("\n", 1)[-1]
                           .startswith(f"\u2014 {v.name} ")), None)
            row = cp.row
            wrong = [k for k, ok in (
                ("tree_size", row["tree_size"] == checkpoint.size),
                ("root_hash", row["root_hash"] == checkpoint.root_hash.hex()),
                ("origin", row["origin"] == checkpoint.origin),
                ("tree_size", checkpoint.size <= cp.seq),
                ("key_name", signer is None or row["key_name"] == signer.name),
                ("key_id", signer is None or row["key_id"] == signer.key_id.hex())) if not ok]
            if wrong:
                findings.append(Finding("snapshot-mismatch", f"snapshot event fields {sorted(set(wrong))} "
                                                             "disagree with its signed note", cp.seq))
                continue
        if checkpoint.size > n:
            findings.append(Finding("truncated", f"a signed checkpoint covers {checkpoint.size:,} events but "
                                                 f"the log has {n:,}", n, checkpoint.size))
            continue
        if checkpoint.size < getattr(tree, "start", 0):  # its tree was not recomputed here
            report.left_to_full += 1
            continue
        if merkle.root_from_nodes(checkpoint.size, tree) != checkpoint.root_hash:
            lower = max((s for s, _, _ in good if s < checkpoint.size), default=getattr(tree, "start", 0))
            where = None if not isinstance(tree, TreeLevels) else _localize(
                checkpoint.size, checkpoint.root_hash, tree,
                _StoredNodes(stored_nodes, stored_leaves) if stored_nodes is not None else None)
            lower = max(lower, where) if where is not None else lower
            findings.append(Finding("root-mismatch", f"the root recomputed from the log at size "
                                                     f"{checkpoint.size:,} differs from the signed root; "
                                                     f"events from seq {lower} on are not vouched for",
                                    lower, checkpoint.size))
            continue
        good.append((checkpoint.size, checkpoint.root_hash, cp.seq))
        for v in _note_signers(cp.note, verifiers):
            warning = key_name_warning(v.name, checkpoint.origin)
            if warning and warning not in report.warnings:
                report.warnings.append(warning)
            if v.vkey not in report.signed_by:
                report.signed_by.append(v.vkey)
    # consistency: every verified checkpoint extends the previous ones (proofs made and checked)
    good.sort(key=lambda g: g[0])
    stored_reader = None
    if getattr(source, "has_nodes", False) and hasattr(source, "get_nodes"):
        stored_reader = TreeReader(source.get_nodes)
    for (s0, r0, _), (s1, r1, q1) in zip(good, good[1:]):
        proof = merkle.consistency_proof_from_nodes(s0, s1, tree)
        if not merkle.verify_consistency(s0, s1, r0, r1, proof):
            findings.append(Finding("inconsistent-checkpoints", f"checkpoint {s1:,} does not extend "
                                                                f"checkpoint {s0:,}", q1, s1))
        elif stored_reader is not None:
            try:
                sp = stored_reader.consistency_proof(s0, s1)
                ok = merkle.verify_consistency(s0, s1, r0, r1, sp)
            except IntegrityError:
                ok = False
            if not ok:
                findings.append(Finding("bad-node", f"the store's consistency proof {s0:,} -> {s1:,} does "
                                                    "not verify", None, s1))
    report.checkpoints_verified = len(good)
    if good:
        report.signed_size, report.signed_root = good[-1][0], good[-1][1]


def _check_trusted(tree: Mapping[tuple[int, int], bytes], n: int, trusted: tuple[int, bytes],
                   report: VerifyReport) -> None:
    """The record extends the trusted checkpoint (size, root): its tree at that size has that root."""
    size, root = trusted
    report.since = size
    if size > n:
        report.findings.append(Finding("truncated", f"the log has {n:,} events, fewer than the trusted checkpoint "
                                                    f"of size {size:,} covers: a rollback", n, size))
        return
    if merkle.root_from_nodes(size, tree) != root:
        report.findings.append(Finding("inconsistent-checkpoints", f"the tree at the trusted size {size:,} does not "
                                                                   "have the trusted root: this record does not "
                                                                   "extend the checkpoint you trusted (a fork, or a "
                                                                   "rewritten history)", None, size))
        return
    new, new_root = report.signed_size, report.signed_root
    if new_root is not None and new >= size:
        proof = merkle.consistency_proof_from_nodes(size, new, tree)
        if merkle.verify_consistency(size, new, root, new_root, proof):
            report.consistency_proof = proof
        else:  # pragma: no cover - both roots were recomputed from one tree
            report.findings.append(Finding("inconsistent-checkpoints", f"checkpoint {new:,} does not extend the "
                                                                       f"trusted checkpoint {size:,}", None, new))


@dataclass
class Derived:
    """What re-deriving the events of one seq range from its rows found (:func:`derive_range`).

    ``findings``: checks (a)-(c) (seq order, typed rows, leaf hashes); ``groups[i]``: the kind whose
    typed check made ``findings[i]`` (``kind!``: its rows do not encode), or ``""``. ``levels``: the
    leaf hashes in seq order (level 0) and, unless derived with ``leaves_only``, every complete
    node; ``bad``: the first bad seq of the seq column (None if it is exactly ``start..start+n-1``);
    ``frames``: the typed rows read, by kind; ``stored_leaves``: the stored leaf hashes in seq order.
    """

    start: int
    n: int
    findings: list[Finding]
    groups: list[str]
    frames: dict[str, pl.DataFrame]
    levels: TreeLevels
    bad: int | None
    sorted_seq: np.ndarray
    leaf_bad: np.ndarray
    stored_leaves: np.ndarray | None
    stored_nodes: pa.Table | None
    timings: dict[str, float]


def derive_range(source: Source, *, start: int = 0, workers: int | None = None,
                 leaves_only: bool = False) -> Derived:
    """Re-derive the events of ``source`` (seq ``start`` on): seq order, typed rows re-encoded to
    entries, leaf hashes against the stored ones, and the tree's hashes; nothing signed is checked.

    The per-range half of :func:`verify_source`; a range's results depend on its rows only, so
    ranges can be derived apart (a bundle's segments, in worker processes or on Dask:
    :mod:`rlhf_audit_kit.segment_verify`).
    ``workers``: hashing processes (see :func:`verify_source`).
    """
    timings: dict[str, float] = {}
    findings: list[Finding] = []
    groups: dict[int, str] = {}
    t0 = time.perf_counter()
    log = source.log()
    n = log.num_rows
    entries = _binary(log.column("entry"))
    timings["read-log"] = time.perf_counter() - t0
    seq = log.column("seq").to_numpy()
    order, sorted_seq, bad = _seq_order(seq - start if start else seq)
    if start:
        sorted_seq, bad = sorted_seq + start, (None if bad is None else bad + start)
    # hashing runs in workers while we re-encode
    job = _TreeJob(entries, workers, order, leaves_only=leaves_only).start()
    if bad is not None:
        findings.append(Finding("seq-order", f"the log's seq column is not exactly {start}..{start + n - 1} "
                                             "(missing, duplicated or forged rows)", bad))
    lp = pl.from_arrow(log.select(["seq", "kind", "ts", "entry"]))
    if order is not None:
        lp = lp.sort("seq", maintain_order=True)
    t0 = time.perf_counter()
    frames = _check_typed(source, lp, bad is None, findings, timings, groups)
    timings["typed"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stored_nodes = source.nodes()
    timings["read-nodes"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    levels = job.result()
    timings["wait-hashing"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    leaf_bad = np.zeros(n, dtype=bool)
    stored = None
    if n:
        stored, malformed = _hash_col_array(log.column("leaf_hash"))
        if order is not None:
            stored, malformed = stored[order], malformed[order]
        leaf_bad = (stored != levels.level_array(0)).any(axis=1) | malformed
        diff = np.flatnonzero(leaf_bad)
        if len(diff):
            s = int(sorted_seq[diff].min())
            findings.append(Finding("leaf-hash-mismatch", "entry does not hash to its stored leaf_hash", s))
    timings["compare-hashes"] = time.perf_counter() - t0
    return Derived(start, n, findings, [groups.get(i, "") for i in range(len(findings))], frames, levels, bad,
                   sorted_seq, leaf_bad, stored, stored_nodes, timings)


def verify_source(source: Source, verifier: Any, *, extra_notes: Sequence[str] = (),
                  workers: int | None = None, start: int = 0, compact_range: Sequence[bytes] = (),
                  trusted: tuple[int, bytes] | None = None,
                  check_tree: Callable[[Mapping[tuple[int, int], bytes]], list[Finding]] | None = None
                  ) -> VerifyReport:
    """Run every check over ``source``; return a :class:`VerifyReport` (never raises for damage).

    ``extra_notes``: signed checkpoint notes held outside the log (a bundle's ``checkpoint.note``,
    or notes an auditor kept), checked like the log's own snapshots; a note for a size larger than
    the log reveals a truncated log. ``workers``: hashing processes (default: cores - 1; 0 hashes
    in this process).

    Incremental verification: with ``start`` > 0 the source holds only the events from seq
    ``start`` on, and ``compact_range`` the hashes of the tree's compact range at ``start``
    (:func:`rlhf_audit_kit.ledger.tree.compact_range_nodes`); roots of every size from ``start`` on
    are computed from it and the new leaf hashes (:class:`~rlhf_audit_kit.ledger.tree.ExtendedTree`).
    ``trusted``: the (size, root) of a checkpoint verified before; the tree at that size must have
    that root, and the report carries the consistency proof from it to the newest signed size.
    ``check_tree``: more checks over the recomputed tree (a node oracle), returning findings.
    """
    verifiers = resolve_verifiers(verifier)
    t_start = time.perf_counter()
    n = source.exact_seqs(2 * RANGE_EVENTS) if not start and hasattr(source, "in_range") else None
    if n is not None:
        return _verify_in_ranges(source, verifiers, n, extra_notes=extra_notes, workers=workers,
                                 check_tree=check_tree, t_start=t_start)
    d = derive_range(source, start=start, workers=workers, leaves_only=bool(start))
    t0 = time.perf_counter()
    tree: Mapping[tuple[int, int], bytes] = d.levels
    if start:
        flat = d.levels.level_array(0).tobytes() if d.n else b""
        tree = ExtendedTree(start, compact_range, [flat[i:i + 32] for i in range(0, len(flat), 32)])
    if d.stored_nodes is not None and not start:
        _check_nodes(d.stored_nodes, d.levels, d.leaf_bad, d.findings)
    d.timings["compare-hashes"] += time.perf_counter() - t0
    return conclude(source, verifiers, d.findings, d.frames.get("snapshot"), tree, start=start, n=d.n, bad=d.bad,
                    extra_notes=extra_notes, trusted=trusted, check_tree=check_tree, timings=d.timings,
                    stored_nodes=d.stored_nodes, stored_leaves=d.stored_leaves, t_start=t_start)


#: a log of more than twice this many events is derived this many at a time (memory: ~5 KB per event
#: of a range, 200 B per event of the whole log), see :func:`verify_source`
RANGE_EVENTS = 200_000


def _verify_in_ranges(source: Source, verifiers: list[Verifier], n: int, *, extra_notes: Sequence[str],
                      workers: int | None, check_tree, t_start: float) -> VerifyReport:
    """:func:`verify_source` of a log whose seqs are exactly 0..n-1 (``source.exact_seqs()``), derived
    ``RANGE_EVENTS`` at a time: only the leaf hashes (and the stored ones) of the whole log are kept,
    the tree is built from them, and the stored nodes and signed roots are checked as for one range."""
    timings: dict[str, float] = {}
    parts, frames = [], []
    levels = TreeLevels(n, bytearray(TreeLevels.size_for(n)))
    leaf_bad = np.zeros(n, dtype=bool)
    stored_leaves = np.zeros((n, 32), dtype=np.uint8)
    for lo in range(0, n, RANGE_EVENTS):
        hi = min(n, lo + RANGE_EVENTS)
        d = derive_range(source.in_range(lo, hi), start=lo, workers=workers, leaves_only=True)
        parts.append((d.findings, d.groups))
        if d.frames.get("snapshot") is not None:
            frames.append(d.frames["snapshot"])
        levels.buf[32 * lo:32 * hi] = d.levels.level_array(0).tobytes()
        leaf_bad[lo:hi] = d.leaf_bad
        if d.stored_leaves is not None:
            stored_leaves[lo:hi] = d.stored_leaves
        for k, t in d.timings.items():
            timings[k] = timings.get(k, 0.0) + t
    t0 = time.perf_counter()
    _finish_levels(levels, 0)
    timings["tree"] = time.perf_counter() - t0
    findings = combine_findings(parts)
    t0 = time.perf_counter()
    stored_nodes = source.nodes()
    timings["read-nodes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if stored_nodes is not None:
        _check_nodes(stored_nodes, levels, leaf_bad, findings)
    timings["compare-hashes"] = timings.get("compare-hashes", 0.0) + time.perf_counter() - t0
    timings["ranges"] = len(parts)
    snapshots = pl.concat(frames, how="diagonal_relaxed") if frames else None
    return conclude(source, verifiers, findings, snapshots, levels, start=0, n=n, bad=None,
                    extra_notes=extra_notes, check_tree=check_tree, timings=timings,
                    stored_nodes=stored_nodes, stored_leaves=stored_leaves, t_start=t_start)


def conclude(source: Source, verifiers: list[Verifier], findings: list[Finding], snapshots: pl.DataFrame | None,
             tree: Mapping[tuple[int, int], bytes], *, start: int, n: int, bad: int | None,
             extra_notes: Sequence[str] = (), trusted: tuple[int, bytes] | None = None,
             check_tree: Callable[[Mapping[tuple[int, int], bytes]], list[Finding]] | None = None,
             timings: dict[str, float] | None = None, stored_nodes: pa.Table | None = None,
             stored_leaves: np.ndarray | None = None, t_start: float | None = None) -> VerifyReport:
    """The checks over the whole record, from what re-deriving its range(s) found: ``tree`` (a node
    oracle of seq ``start..start+n-1``, see :func:`verify_source`) against the signed checkpoints
    (``snapshots``: the snapshot rows; ``extra_notes``), the trusted one, and ``check_tree``; then
    the first bad seq is named as :func:`verify_source` names it (``bad``: :attr:`Derived.bad`)."""
    timings = {} if timings is None else timings
    t_start = time.perf_counter() if t_start is None else t_start
    t0 = time.perf_counter()
    if check_tree is not None:
        findings += check_tree(tree)
    timings["compare-hashes"] = timings.get("compare-hashes", 0.0) + time.perf_counter() - t0
    report = VerifyReport(source=source.description, events=start + n, findings=findings, timings=timings,
                          verifier=", ".join(v.vkey for v in verifiers), covered=(start, start + n))
    t0 = time.perf_counter()
    _check_checkpoints(source, snapshots, list(extra_notes), verifiers, tree, start + n,
                       findings, report, stored_nodes, stored_leaves)
    if trusted is not None:
        _check_trusted(tree, start + n, trusted, report)
    timings["checkpoints"] = time.perf_counter() - t0
    # a root mismatch located to a leaf pair (2i, 2i+1): if an event check names 2i+1 but not 2i,
    # the pair's damage is 2i+1
    event_seqs = {f.seq for f in findings if f.seq is not None and f.damage not in _TREE_DAMAGE}
    findings[:] = [Finding(f.damage, f.message, f.seq + 1, f.checkpoint)
                   if f.damage in _TREE_DAMAGE and f.seq is not None and f.seq % 2 == 0
                   and f.seq not in event_seqs and f.seq + 1 in event_seqs else f for f in findings]
    if bad is not None:  # the tree is over sorted rows: from the first bad seq on, it is not the log's
        cut = bad & ~1
        findings[:] = [Finding(f.damage, f.message + " (after the seq damage: located by seq-order)", None,
                               f.checkpoint) if f.seq is not None and (
                           (f.damage == "bad-node" and f.seq >= cut)
                           or (f.damage == "root-mismatch" and (f.checkpoint or 0) > cut)) else f
                       for f in findings]
    report.elapsed = time.perf_counter() - t_start
    return report


def verify_inclusion_against(note: str, verifier: Any, leaf_hash: bytes, index: int,
                             proof: Sequence[bytes], *, origin: str | None = None) -> Checkpoint:
    """Check an inclusion proof against the size and root of a *verified* signed checkpoint.

    Raises :class:`SignatureError` if the note does not verify, :class:`IntegrityError` if the proof
    does not lead to its root; returns the checkpoint otherwise.

    >>> from rlhf_audit_kit.ledger.checkpoint import Signer, sign_checkpoint
    >>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    >>> s = Signer("log", Ed25519PrivateKey.generate())
    >>> entries = [b"a", b"b", b"c"]
    >>> note = sign_checkpoint(Checkpoint("log", 3, merkle.root(entries)), s)
    >>> verify_inclusion_against(note, s.verifier, merkle.leaf_hash(b"b"), 1,
    ...                          merkle.inclusion_proof(entries, 1)).size
    3
    """
    cp = verify_checkpoint(note, resolve_verifiers(verifier), origin=origin)
    if not merkle.verify_inclusion(leaf_hash, index, cp.size, list(proof), cp.root_hash):
        raise IntegrityError(f"inclusion proof of leaf {index} does not match the signed root of size "
                             f"{cp.size}", seq=index, damage="bad-proof", checkpoint=cp.size)
    return cp


def verify_consistency_against(old_note: str, new_note: str, verifier: Any, proof: Sequence[bytes], *,
                               origin: str | None = None) -> tuple[Checkpoint, Checkpoint]:
    """Check a consistency proof between two *verified* signed checkpoints; raise on failure."""
    vs = resolve_verifiers(verifier)
    old = verify_checkpoint(old_note, vs, origin=origin)
    new = verify_checkpoint(new_note, vs, origin=origin)
    if not merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, list(proof)):
        raise IntegrityError(f"consistency proof {old.size} -> {new.size} does not verify",
                             damage="bad-proof", checkpoint=new.size)
    return old, new
