"""A bundle's segments re-derived apart, then combined into the one report a whole verification gives.

A bundle grows by immutable segments, each its own Parquet files, so its seq ranges can be re-derived
apart: :func:`derive_segment` runs :func:`rlhf_audit_kit.ledger.verify.derive_range` (seq order, typed
rows re-encoded to entries, leaf hashes against the stored ones) over a run of consecutive segments,
keeps the range's Merkle nodes and gives back a summary: its findings, its snapshot rows and the
hashes of the maximal aligned subtrees covering it. :class:`SegmentRunner` combines the summaries into
the root at every signed size (asking for a node inside a range only when a size falls inside one)
and hands them to the checks of a whole verification (:func:`~rlhf_audit_kit.ledger.verify.conclude`),
so the report is the same: same findings, same first bad seq.

Where the ranges are derived is a backend: worker processes of this machine
(:class:`LocalBackend`, what ``bundle.verify(key)`` uses for a large bundle, holding one task's rows
at a time in each process instead of the whole log) or a Dask cluster
(:mod:`rlhf_audit_kit.bundle_dask`).

Two things depend on the whole log, not on one range: the seq column (a row moved into another
segment's range, a short segment), and typed rows filed in another segment's range. When a task
finds either, the log is verified as one range: in this process (locally), or in one task (Dask).

>>> # r = open_bundle("run-7").verify(key); r.timings["segments"], r.timings["processes"]
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from .ledger import merkle
from .ledger.checkpoint import Checkpoint, Verifier
from .ledger.levels import env_workers
from .ledger.tree import compact_range_nodes
from .ledger.verify import (DuckSource, Finding, VerifyReport, combine_findings, conclude, derive_range,
                            verify_source)
from .segments import complete_subtree

__all__ = ["SegmentRunner", "LocalBackend", "derive_segment", "task_groups"]

Node = tuple[int, int]

#: a task re-derives consecutive segments holding at least this many events (a segment is never
#: split); fewer, larger tasks pay less per-task overhead (a DuckDB connection, views, a summary)
MIN_TASK_EVENTS = 50_000
#: ... and, once it reaches this many, no more: what one task holds in memory (~5 KB per event)
MAX_TASK_EVENTS = 250_000
#: tasks per worker the grouping aims at, so that a worker finishing early finds more work (2M events
#: on 2 workers: tasks of ~62k events, ~1 GB per worker process)
TASKS_PER_WORKER = 16
#: below this many events, a local verification derives in this process (starting workers costs ~1 s)
POOL_MIN_EVENTS = 200_000


def task_groups(segments: Sequence[Any], workers: int) -> list[list[Any]]:
    """Consecutive segments grouped into tasks of about ``total / (TASKS_PER_WORKER * workers)`` events,
    at most ``MAX_TASK_EVENTS`` and at least ``MIN_TASK_EVENTS`` (which wins; a larger segment is a
    task alone).

    >>> from types import SimpleNamespace as S
    >>> [[s.start for s in g] for g in task_groups([S(start=i * 30_000, end=(i + 1) * 30_000) for i in range(5)], 2)]
    [[0, 30000], [60000, 90000], [120000]]
    """
    total = sum(s.end - s.start for s in segments)
    target = max(MIN_TASK_EVENTS, min(MAX_TASK_EVENTS, -(-total // (TASKS_PER_WORKER * max(1, workers)))))
    groups: list[list[Any]] = []
    cur: list[Any] = []
    n = 0
    for s in segments:
        cur.append(s)
        n += s.end - s.start
        if n >= target:
            groups.append(cur)
            cur, n = [], 0
    if cur:
        groups.append(cur)
    return groups


# ---------------------------------------------------------------- where the tasks run
@dataclass
class _Piece:
    """A derived seq range held where it was derived: its nodes stay there, :meth:`summary` travels."""

    start: int
    n: int = 0
    exact: bool = False  # rows of exactly [start, end), typed rows inside it: combinable
    bad: int | None = None
    findings: list[Finding] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    snapshots: pl.DataFrame | None = None
    levels: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # level -> (first index, (k, 32))
    timings: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    types: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> column -> type in its files
    cover: dict[Node, bytes] = field(default_factory=dict)  # in a summary: the subtrees covering the piece

    @property
    def end(self) -> int:
        return self.start + self.n

    def node(self, node: Node) -> bytes:
        level, i = node
        first, hashes = self.levels[level]
        if not 0 <= i - first < len(hashes):
            raise KeyError(node)
        return hashes[i - first].tobytes()

    def summary(self) -> _Piece:
        """This piece without its nodes, plus the hashes of the subtrees covering it."""
        cover = {nd: self.node(nd) for nd in _cover(self.start, self.end)} if self.error is None else {}
        return _Piece(self.start, self.n, self.exact, self.bad, self.findings, self.groups, self.snapshots,
                      timings=self.timings, error=self.error, types=self.types, cover=cover)


def _cover(start: int, end: int) -> list[Node]:
    """The maximal aligned subtrees whose leaves are exactly ``[start, end)``, left to right."""
    out = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while 1 << level > end - start:
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def _range_levels(leaves: np.ndarray, start: int) -> dict[int, tuple[int, np.ndarray]]:
    """Every complete node whose leaves lie in ``[start, start + len(leaves))`` (absolute indexes)."""
    sha = hashlib.sha256
    levels = {0: (start, leaves)}
    first, cur, level = start, leaves, 0
    while True:
        lo, hi = (first + 1) >> 1, (first + len(cur)) >> 1  # parents with both children here
        if hi <= lo:
            return levels
        buf = memoryview(np.ascontiguousarray(cur[2 * lo - first:2 * hi - first]).tobytes())
        nxt = b"".join([sha(b"\x01" + buf[64 * k:64 * k + 64]).digest() for k in range(hi - lo)])
        first, cur, level = lo, np.frombuffer(nxt, dtype=np.uint8).reshape(-1, 32), level + 1
        levels[level] = (first, cur)


def derive_segment(files: Any, tables: Mapping[str, list[tuple[str, tuple[str, ...]]]], start: int,
                   end: int | None, workers: int = 0, threads: int | None = None) -> _Piece:
    """Derive the rows of one seq range of a bundle (a task): ``files`` the bundle's
    :class:`~rlhf_audit_kit.bundle_files.BundleFiles` (or its local folder), ``tables`` table ->
    [(path, columns)] as :meth:`Bundle._table_files` gives them; ``end`` None: whatever rows are there.
    ``workers``: hashing processes (0 where the tasks themselves are the parallelism); ``threads``:
    DuckDB's threads for this task (1 where each worker thread runs one task: a Dask worker's
    ``threads_per_worker`` then means cores, not cores times DuckDB's threads)."""
    import duckdb

    from .bundle import _DECODE_ERRORS, _create_views, _sql_str
    con = files.connect() if hasattr(files, "connect") else duckdb.connect(":memory:")
    piece = _Piece(start)
    try:
        if not getattr(files, "local", True):
            files.list_files()  # DuckDB's fsspec glob finds no remote file by its exact name without a listing
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")  # a worker's stdout is no terminal
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        for table, paths in tables.items():  # the types the files hold (one view over all files casts to one)
            types = piece.types.setdefault(table, {})
            for path, _ in paths:
                for name, typ, *_ in con.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_str(path)})").fetchall():
                    if types.setdefault(name, typ) != typ:
                        types[name] = ""  # differs inside this range: never combinable
        kinds = _create_views(con, tables)
        d = derive_range(DuckSource(con, origin="", description="", kinds=kinds, has_nodes=False), start=start,
                         workers=workers, leaves_only=True)  # on a cluster, the cluster is the parallelism: 0
    except _DECODE_ERRORS as e:  # reported as a whole verification reports it
        piece.error = e
        return piece
    finally:
        con.close()
    piece.n, piece.bad, piece.findings, piece.groups, piece.timings = d.n, d.bad, d.findings, d.groups, d.timings
    piece.snapshots = d.frames.get("snapshot")
    end = start + d.n if end is None else end
    piece.exact = d.bad is None and d.n == end - start and all(
        f.height == 0 or (f["seq"].null_count() == 0 and f["seq"].min() >= start and f["seq"].max() < end)
        for f in d.frames.values())
    piece.levels = _range_levels(d.levels.level_array(0) if d.n else np.zeros((0, 32), np.uint8), start)
    return piece


def _summary(piece: _Piece) -> _Piece:
    return piece.summary()


def _nodes(piece: _Piece, wanted: Sequence[Node]) -> dict[Node, bytes]:
    return {nd: piece.node(nd) for nd in wanted}


# ---------------------------------------------------------------- where the report is made
class _SegmentTree(Mapping):
    """The tree of seq ``start..end-1`` as a node oracle: the compact range at ``start``, the subtrees
    covering each derived piece, nodes over piece boundaries hashed here, and nodes inside a piece
    fetched from the worker holding it (in batches: :meth:`prefetch`)."""

    def __init__(self, start: int, compact_range: Sequence[bytes], summaries: list[_Piece],
                 fetch: Callable[[dict[int, list[Node]]], dict[Node, bytes]]):
        self.start = start
        self.end = summaries[-1].end if summaries else start
        self._known: dict[Node, bytes] = dict(zip(compact_range_nodes(start), compact_range)) if start else {}
        for s in summaries:
            self._known.update(s.cover)
        self._starts = [s.start for s in summaries]
        self._ends = [s.end for s in summaries]
        self._fetch = fetch

    def _piece(self, a: int, b: int) -> int | None:
        k = bisect.bisect_right(self._starts, a) - 1
        return k if k >= 0 and b <= self._ends[k] else None

    def _atoms(self, node: Node, out: dict[int, set[Node]]) -> None:
        """Nodes inside one piece (by piece) that ``node`` needs and are not known yet."""
        if node in self._known:
            return
        level, i = node
        a, b = i << level, (i + 1) << level
        if level < 0 or i < 0 or b > self.end or b <= self.start:
            return  # not in this tree (before start: only the compact range, as ExtendedTree)
        k = self._piece(a, b)
        if k is not None:
            out.setdefault(k, set()).add(node)
        elif level > 0:
            self._atoms((level - 1, 2 * i), out)
            self._atoms((level - 1, 2 * i + 1), out)

    def prefetch(self, nodes: Iterable[Node]) -> None:
        wanted: dict[int, set[Node]] = {}
        for node in nodes:
            self._atoms(node, wanted)
        if wanted:
            self._known.update(self._fetch({k: sorted(v) for k, v in wanted.items()}))

    def __getitem__(self, node: Node) -> bytes:
        h = self._known.get(node)
        if h is not None:
            return h
        level, i = node
        a, b = i << level, (i + 1) << level
        if level < 0 or i < 0 or b > self.end or b <= self.start:
            raise KeyError(node)
        if self._piece(a, b) is not None:
            self.prefetch([node])
            h = self._known[node]
        elif level == 0:  # pragma: no cover - a leaf is always inside a piece
            raise KeyError(node)
        else:
            h = merkle.node_hash(self[(level - 1, 2 * i)], self[(level - 1, 2 * i + 1)])
        self._known[node] = h
        return h

    def __iter__(self) -> Iterator[Node]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


def _combinable(summaries: list[_Piece]) -> bool:
    """True if deriving the pieces apart gives what one derivation of their whole range gives: each
    decoded, holds exactly the rows of its range (log and typed), and every column has one type in
    all files (one view over all files would cast them to the first file's type, or fail)."""
    if not all(s.error is None and s.exact for s in summaries):
        return False
    seen: dict[tuple[str, str], str] = {}
    for s in summaries:
        for table, types in s.types.items():
            for name, typ in types.items():
                if not typ or seen.setdefault((table, name), typ) != typ:
                    return False
    return True


def _combine(summaries: list[_Piece]) -> list[Finding]:
    """The findings one derivation of the whole range gives, from those of exact pieces."""
    return combine_findings((s.findings, s.groups) for s in summaries)


def _note_sizes(notes: Iterable[str], snapshots: pl.DataFrame | None) -> set[int]:
    """Tree sizes the signed notes claim (unverified: only to fetch the nodes their roots need)."""
    sizes = set()
    texts = list(notes) + ([] if snapshots is None or not snapshots.height else snapshots["note"].to_list())
    for note in texts:
        try:
            sizes.add(Checkpoint.parse(note[:note.rfind("\n\n") + 1]).size)
        except (ValueError, TypeError, AttributeError):
            continue
    return sizes


def _wanted(sizes: set[int], start: int, end: int, trusted: tuple[int, bytes] | None,
            segment_ends: Iterable[tuple[int, int]]) -> set[Node]:
    """The nodes the roots, consistency proofs and segment checks of a verification will ask for."""
    ok = sorted(s for s in sizes | ({trusted[0]} if trusted else set()) if start <= s <= end)
    out: set[Node] = set()
    for s in ok:
        out |= merkle.needed_nodes_for_root(s)
    for a, b in zip(ok, ok[1:]):
        out |= merkle.needed_nodes_for_consistency(a, b)
    for s0, s1 in segment_ends:
        if s1 <= end:
            out.update(compact_range_nodes(s1))
            node = complete_subtree(s0, s1)
            if node:
                out.add(node)
    return out


class LocalBackend:
    """Tasks run on this machine: in worker processes (:class:`~rlhf_audit_kit.segment_workers.ProcessPool`,
    started at the first task and ended by :meth:`close`) or, with ``workers`` <= 1, in this process one
    after the other. Each derived range comes back whole; its nodes (64 bytes per event) wait in a
    temporary file until the report is made."""

    name = "segments"

    def __init__(self, files: Any, workers: int | None = None):
        self.files, self.workers, self.pool, self.tmp = files, workers, None, None
        self._lock, self._names = threading.Lock(), itertools.count()

    def parallelism(self) -> int:
        if self.workers is not None:
            return max(1, self.workers)
        env = env_workers()  # as for the hashing processes
        if env is not None:
            return max(1, env)
        try:
            return max(1, len(os.sched_getaffinity(0)))  # the cores this process may use (taskset, cgroups)
        except (AttributeError, OSError):
            return os.cpu_count() or 1

    def start(self, events: int, tasks: int) -> None:
        """Start the pool if it pays: more than one task, more than one worker, files it can open."""
        n = min(self.parallelism(), tasks)
        remote_memory = str(getattr(self.files, "url", "")).startswith("memory://")  # this process's only
        if n > 1 and not remote_memory and sys.executable and (self.workers is not None
                                                                or events >= POOL_MIN_EVENTS):
            from .segment_workers import ProcessPool
            self.pool = ProcessPool(n, env={"POLARS_MAX_THREADS": "1"})  # the pool is the parallelism

    def derive(self, tables: Mapping, start: int, end: int | None) -> Future:
        if self.pool is not None:
            fut = self.pool.submit(derive_segment, self.files, tables, start, end, 0, 1)  # a core a worker
            fut.add_done_callback(self._spilled)  # as each task ends, not when all have
            return fut
        fut = Future()
        fut.set_result(self._spill(derive_segment(self.files, tables, start, end)))
        return fut

    def processes(self) -> int:
        return 0 if self.pool is None else len(self.pool)

    def _spilled(self, fut: Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._spill(fut.result())

    def as_completed(self, handles: Sequence[Future]) -> Iterator[Future]:
        from concurrent.futures import as_completed
        return as_completed(handles)

    def summaries(self, handles: Sequence[Future]) -> list[_Piece]:
        return [self._spill(h.result()).summary() for h in handles]  # (_spill: done already, or waits)

    def _spill(self, piece: _Piece) -> _Piece:
        """The range's nodes (64 bytes per event) to a temporary file, read back only for the few nodes
        asked: this process holds no per-event memory, whatever the bundle's size. (A file that cannot
        be written leaves them in memory.)"""
        with self._lock:
            if not piece.levels or isinstance(next(iter(piece.levels.values()))[1], np.memmap):
                return piece
            try:
                if self.tmp is None:
                    import tempfile
                    self.tmp = tempfile.TemporaryDirectory(prefix="rlhf-audit-verify-")
                path = os.path.join(self.tmp.name, f"{next(self._names)}.nodes")
                order = sorted(piece.levels)
                with open(path, "wb") as fh:
                    for level in order:
                        piece.levels[level][1].tofile(fh)
            except OSError:
                return piece
            rows = sum(len(piece.levels[level][1]) for level in order)
            if rows:
                data = np.memmap(path, dtype=np.uint8, mode="r", shape=(rows, 32))
                at = 0
                for level in order:
                    first, arr = piece.levels[level]
                    piece.levels[level] = (first, data[at:at + len(arr)])
                    at += len(arr)
            return piece

    def nodes(self, asks: Iterable[tuple[Future, Sequence[Node]]]) -> dict[Node, bytes]:
        return {nd: h.result().node(nd) for h, wanted in asks for nd in wanted}

    def cancel(self, handles: Sequence[Future]) -> None:
        for h in handles:
            h.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


def _watched() -> bool:
    """Someone sees a progress bar: a terminal, or a notebook (not a log file or a pipe)."""
    try:
        if sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    ipython = sys.modules.get("IPython")  # a notebook: a running IPython kernel (not merely imported)
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


class SegmentRunner:
    """The deriver :meth:`Bundle._verify` calls (as it calls :func:`verify_source`): the bundle's
    segments from ``start`` on, grouped into tasks (:func:`task_groups`) run by ``backend``, their
    summaries combined. A range that makes one task is verified whole by :func:`verify_source`."""

    def __init__(self, bundle, backend, *, progress: bool | None = None):
        self.bundle, self.backend, self.progress = bundle, backend, progress

    def _wait(self, pieces: Sequence, events: Sequence[int]) -> None:
        """Wait for the tasks, with a progress bar (tqdm) for a long run: ``progress`` None shows it from
        ``POOL_MIN_EVENTS`` events on, to a terminal or in a notebook."""
        total = sum(events)
        if not (self.progress or (self.progress is None and total >= POOL_MIN_EVENTS and _watched())):
            return
        from tqdm.auto import tqdm
        size = dict(zip(map(id, pieces), events))
        with tqdm(total=total, unit="event", unit_scale=True, desc="verify", leave=False) as bar:
            for done in self.backend.as_completed(pieces):
                bar.update(size.get(id(done), 0))

    def __call__(self, source, verifiers: list[Verifier], *, extra_notes: Sequence[str] = (), workers=None,
                 start: int = 0, compact_range: Sequence[bytes] = (), trusted: tuple[int, bytes] | None = None,
                 check_tree=None) -> VerifyReport:
        t_start = time.perf_counter()
        segments = [s for s in self.bundle.segments if s.start >= start]
        groups = task_groups(segments, self.backend.parallelism())
        local = self.backend.name != "dask"

        def whole() -> VerifyReport:  # ("workers" 0 or 1: this process, so no hashing process either)
            return verify_source(source, verifiers, extra_notes=extra_notes, workers=0 if workers == 1 else workers,
                                 start=start, compact_range=compact_range, trusted=trusted, check_tree=check_tree)
        if len(groups) < 2 and local:  # nothing to split: the whole verification
            return whole()
        table_files = self.bundle._table_files
        pieces: list = []
        try:
            if hasattr(self.backend, "start"):
                self.backend.start(sum(s.end - s.start for s in segments), len(groups))
            pieces = [self.backend.derive(table_files(g), g[0].start, g[-1].end) for g in groups]
            self._wait(pieces, [g[-1].end - g[0].start for g in groups])
            summaries = self.backend.summaries(pieces)
            if len(summaries) > 1 and not _combinable(summaries):  # the result depends on the whole log: one range
                self.backend.cancel(pieces)
                if local:  # here, with hashing processes (a worker would hash alone, and send every node)
                    pieces = []
                    return whole()
                pieces = [self.backend.derive(table_files(segments), start, None)]
                summaries = self.backend.summaries(pieces)
            if summaries and summaries[0].error is not None:
                raise summaries[0].error  # data that does not decode: reported by the bundle as a whole verification
            findings = summaries[0].findings if len(summaries) == 1 else _combine(summaries)

            def fetch(wanted: dict[int, list[Node]]) -> dict[Node, bytes]:
                return self.backend.nodes([(pieces[k], nodes) for k, nodes in wanted.items()])
            tree = _SegmentTree(start, compact_range, summaries, fetch)
            frames = [s.snapshots for s in summaries if s.snapshots is not None and s.snapshots.height]
            snapshots = pl.concat(frames, how="diagonal_relaxed") if frames else None
            n = sum(s.n for s in summaries)
            tree.prefetch(_wanted(_note_sizes(extra_notes, snapshots), start, start + n, trusted,
                                  [(s.start, s.end) for s in segments]))
            timings: dict[str, float] = {}
            for s in summaries:
                for k, t in s.timings.items():
                    timings[k] = timings.get(k, 0.0) + t
            timings[self.backend.name] = time.perf_counter() - t_start
            timings["processes"] = self.backend.processes()  # deriving in parallel (0: this process)
            bad = summaries[0].bad if len(summaries) == 1 else None
            return conclude(source, verifiers, findings, snapshots, tree, start=start, n=n, bad=bad,
                            extra_notes=extra_notes, trusted=trusted, check_tree=check_tree, timings=timings,
                            t_start=t_start)
        finally:
            self.backend.cancel(pieces)
            if hasattr(self.backend, "close"):
                self.backend.close()
