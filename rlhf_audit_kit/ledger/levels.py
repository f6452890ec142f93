"""Every complete node of an RFC 9162 tree over a column of entries, hashed from the Arrow buffer.

:func:`compute_tree` gives :class:`TreeLevels` (level 0 = leaf hashes), computed by forked worker
processes writing into shared memory when there are many leaves (``workers``); it is the node
oracle full verification and the apps use. Pure hashing: no store, no bundle.

>>> t = compute_tree(pa.array([b"a", b"b", b"c"]), workers=0)
>>> t.root(3) == merkle.root([b"a", b"b", b"c"])
True
"""
from __future__ import annotations

import hashlib
import mmap
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from . import merkle

__all__ = ["TreeLevels", "compute_tree", "leaf_hashes", "FORK_MIN_LEAVES", "NODE_TAIL", "stored_node_bounds"]

#: Fewer leaves than this are hashed in this process (forking costs more than it saves).
FORK_MIN_LEAVES = 50_000

#: A store's ``merkle_node`` table holds every complete node (level >= 1) over its first
#: ``size // NODE_TAIL * NODE_TAIL`` leaves; nodes over the last few leaves may be missing (one
#: ``store.append`` writes nodes only when the size crosses a multiple of this, which saves a DuckDB
#: statement, a third of an append). Reads recompute such low nodes from the leaf hashes anyway.
NODE_TAIL = 16


def stored_node_bounds(size: int, level: int) -> tuple[int, int]:
    """How many nodes of ``level`` (>= 1) a store of ``size`` events holds: (at least, at most).

    >>> stored_node_bounds(37, 1), stored_node_bounds(37, 5)
    ((16, 18), (1, 1))
    """
    return (size // NODE_TAIL * NODE_TAIL) >> level, size >> level


def _binary(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    # 64-bit offsets before combining: chunks of more than 2 GiB of entries in total (~2M events)
    # do not fit one binary array's 32-bit offsets
    if not pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.large_binary())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


class TreeLevels(Mapping):
    """All complete nodes of a tree of ``n`` leaves, level by level, in one flat buffer.

    ``levels[(level, index)]`` is the 32-byte hash; level 0 are the leaf hashes. Usable as the node
    oracle of :func:`rlhf_audit_kit.ledger.merkle.root_from_nodes` and friends.
    """

    def __init__(self, n: int, buf: Any):
        self.n = n
        self.buf = buf
        self.counts = []
        self.offsets = []
        off, level = 0, 0
        while n >> level:
            self.counts.append(n >> level)
            self.offsets.append(off)
            off += 32 * (n >> level)
            level += 1
        self.nbytes = off

    @staticmethod
    def size_for(n: int) -> int:
        return sum(32 * (n >> lv) for lv in range(n.bit_length()))

    def level(self, level: int) -> memoryview:
        o = self.offsets[level]
        return memoryview(self.buf)[o:o + 32 * self.counts[level]]

    def level_array(self, level: int) -> np.ndarray:
        return np.frombuffer(self.buf, dtype=np.uint8, count=32 * self.counts[level],
                             offset=self.offsets[level]).reshape(-1, 32)

    def __getitem__(self, node: tuple[int, int]) -> bytes:
        level, idx = node
        if not (0 <= level < len(self.counts) and 0 <= idx < self.counts[level]):
            raise KeyError(node)
        o = self.offsets[level] + 32 * idx
        return bytes(self.buf[o:o + 32])

    def __iter__(self):
        return ((lv, i) for lv, c in enumerate(self.counts) for i in range(c))

    def __len__(self) -> int:
        return sum(self.counts)

    def root(self, size: int) -> bytes:
        return merkle.root_from_nodes(size, self)


def _hash_range(entries: pa.Array, levels: TreeLevels, lo: int, hi: int, top: int,
                order: np.ndarray | None = None) -> None:
    """Leaf hashes of leaves [lo, hi) and their complete nodes up to level ``top`` into ``levels``.

    Leaf ``i`` is entry ``order[i]`` (the row holding seq i), or entry ``i`` when ``order`` is None.
    ``lo`` must be a multiple of 2**top. The only per-event Python loop: hashing from the buffer.
    """
    sha = hashlib.sha256
    n_all = len(entries)
    offs = np.frombuffer(entries.buffers()[1], dtype=np.int64)[entries.offset:entries.offset + n_all + 1]
    data = entries.buffers()[2]
    buf = memoryview(data) if data is not None else memoryview(b"")
    if order is None:
        o = offs[lo:hi + 1].tolist()
        pairs = zip(o, o[1:])
    else:
        rows = order[lo:hi]
        pairs = zip(offs[rows].tolist(), offs[rows + 1].tolist())
    out = []
    append = out.append
    for a, b in pairs:
        h = sha(b"\x00")
        h.update(buf[a:b])
        append(h.digest())
    dst = levels.buf
    start = levels.offsets[0] + 32 * lo
    dst[start:start + 32 * len(out)] = b"".join(out)
    cur = out
    for level in range(1, top + 1):
        it = iter(cur)
        cur = [sha(b"\x01" + left + right).digest() for left, right in zip(it, it)]
        if not cur:
            break
        start = levels.offsets[level] + 32 * (lo >> level)
        dst[start:start + 32 * len(cur)] = b"".join(cur)


def _finish_levels(levels: TreeLevels, from_level: int) -> None:
    sha = hashlib.sha256
    for level in range(from_level + 1, len(levels.counts)):
        prev = levels.level(level - 1)
        m = levels.counts[level]
        cur = [sha(b"\x01" + prev[64 * i:64 * i + 64]).digest() for i in range(m)]
        o = levels.offsets[level]
        levels.buf[o:o + 32 * m] = b"".join(cur)


def env_workers() -> int | None:
    """``RLHF_AUDIT_VERIFY_WORKERS`` (a count of processes a verification may use), or None if unset or
    not a number."""
    env = os.environ.get("RLHF_AUDIT_VERIFY_WORKERS", "").strip()
    return int(env) if env.isdigit() else None


def _default_workers() -> int:
    env = env_workers()
    if env is not None:
        return env
    return max(1, (os.cpu_count() or 1) - 1) if hasattr(os, "fork") else 0


class _TreeJob:
    """Leaf hashes and every complete node of the entries, computed by forked workers.

    ``start()`` forks (or, with 0 workers or few leaves, does nothing yet); ``result()`` waits and
    returns :class:`TreeLevels`, computing in-process whatever a worker failed to deliver.
    """

    def __init__(self, entries: pa.Array, workers: int | None, order: np.ndarray | None = None, *,
                 leaves_only: bool = False):
        self.entries = entries
        self.order = order
        self.n = len(entries)
        self.leaves_only = leaves_only  # level 0 only (the buffer holds no more)
        size = max(32 * self.n if leaves_only else TreeLevels.size_for(self.n), 1)
        w = _default_workers() if workers is None else workers
        self.workers = w if (self.n >= FORK_MIN_LEAVES and hasattr(os, "fork")) else 0
        self.buf = mmap.mmap(-1, size) if self.workers else bytearray(size)
        self.levels = TreeLevels(self.n, self.buf)
        self.pids: list[tuple[int, int, int]] = []
        self.top = 0

    def start(self) -> _TreeJob:
        n, w = self.n, self.workers
        if not w or not n:
            return self
        top = max(0, (n // w).bit_length() - 1)  # blocks of 2**top leaves, about n / w each
        block = 1 << top
        nblocks = -(-n // block)
        w = min(w, nblocks)
        top = 0 if self.leaves_only else top
        self.top = top
        ranges = []
        for i in range(w):
            lo = (i * nblocks // w) * block
            hi = min(n, ((i + 1) * nblocks // w) * block)
            if lo < hi:
                ranges.append((lo, hi))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: child only hashes
            for lo, hi in ranges:
                pid = os.fork()
                if pid == 0:  # child: hash, write into shared memory, leave without cleanup
                    code = 1
                    try:
                        _hash_range(self.entries, self.levels, lo, hi, top, self.order)
                        code = 0
                    finally:
                        os._exit(code)
                self.pids.append((pid, lo, hi))
        return self

    def result(self) -> TreeLevels:
        n = self.n
        if n == 0:
            return self.levels
        if not self.pids:
            top = 0 if self.leaves_only else len(self.levels.counts) - 1
            _hash_range(self.entries, self.levels, 0, n, top, self.order)
            return self.levels
        for pid, lo, hi in self.pids:
            _, status = os.waitpid(pid, 0)
            if status != 0:  # a worker died: do its part here
                _hash_range(self.entries, self.levels, lo, hi, self.top, self.order)
        self.pids = []
        if not self.leaves_only:
            _finish_levels(self.levels, self.top)
        return self.levels


def compute_tree(entries: pa.Array | pa.ChunkedArray, workers: int | None = None) -> TreeLevels:
    """Every complete node (level 0 = leaf hashes) of the RFC 9162 tree over ``entries``.

    >>> t = compute_tree(pa.array([b"a", b"b", b"c"]), workers=0)
    >>> t.root(3) == merkle.root([b"a", b"b", b"c"]), t[(1, 0)] == merkle.node_hash(t[(0, 0)], t[(0, 1)])
    (True, True)
    """
    return _TreeJob(_binary(entries), workers).start().result()


def leaf_hashes(entries: pa.Array | pa.ChunkedArray, workers: int | None = None,
                order: np.ndarray | None = None) -> np.ndarray:
    """RFC 9162 leaf hashes of ``entries`` (in ``order`` if given) as an ``(n, 32)`` uint8 array.

    >>> bytes(leaf_hashes(pa.array([b"a"]), workers=0)[0]) == merkle.leaf_hash(b"a")
    True
    """
    job = _TreeJob(_binary(entries), workers, order, leaves_only=True).start()
    return job.result().level_array(0) if job.n else np.zeros((0, 32), dtype=np.uint8)
