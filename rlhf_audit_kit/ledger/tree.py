"""Incremental Merkle tree maintenance over a store of complete nodes.

The store keeps level-0 nodes (leaf hashes) in its log table and every complete node of level >= 1
(see :mod:`rlhf_audit_kit.ledger.merkle`) in a node table. After an append, only the nodes that
*became* complete need hashing; with them stored, any root or proof costs O(log n) lookups.

``get_nodes`` is the store's batched lookup: given an iterable of ``(level, index)`` pairs (level 0
= leaf hashes) it returns a mapping from each pair to its 32-byte hash. Each function here calls
it at most once.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from ..errors import IntegrityError
from . import merkle

__all__ = ["GetNodes", "new_complete_nodes", "new_complete_nodes_by_level", "RightEdge", "TreeReader",
           "compact_range_nodes", "fold_compact_range", "ExtendedTree"]

GetNodes = Callable[[Iterable[tuple[int, int]]], Mapping[tuple[int, int], bytes]]


def _fetch(get_nodes: GetNodes, wanted: set[tuple[int, int]]) -> Mapping[tuple[int, int], bytes]:
    """One batched lookup; a node the store cannot produce means the store is damaged."""
    if not wanted:
        return {}
    got = get_nodes(sorted(wanted))
    missing = [n for n in sorted(wanted) if n not in got]
    if missing:
        raise IntegrityError(f"Merkle node store lacks {len(missing)} node(s), first "
                             f"(level, index) = {missing[0]}", damage="missing-node")
    return got


def new_complete_nodes_by_level(old_size: int, new_leaf_hashes: Sequence[bytes],
                                get_nodes: GetNodes) -> dict[int, tuple[int, list[bytes]]]:
    """Nodes of level >= 1 completed by appending ``new_leaf_hashes`` at ``old_size``, columnar.

    Returns ``{level: (first_index, hashes)}``: ``hashes[j]`` is node ``(level, first_index + j)``.
    This shape suits bulk inserts (no per-node tuple); :func:`new_complete_nodes` flattens it.

    At each level at most one earlier node is needed as a left sibling: node
    ``(L, (old_size >> L) - 1)`` when bit L of ``old_size`` is set, i.e. the complete parts of the
    old tree's root. They are fetched in one ``get_nodes`` call (not called if none are needed).

    >>> lh = [merkle.leaf_hash(bytes([i])) for i in range(3)]
    >>> out = new_complete_nodes_by_level(1, lh[1:], lambda ns: {(0, 0): lh[0]})
    >>> out == {1: (0, [merkle.node_hash(lh[0], lh[1])])}
    True
    """
    if old_size < 0:
        raise ValueError(f"old_size must be >= 0, got {old_size}")
    new_size = old_size + len(new_leaf_hashes)
    # Left siblings: for each level L whose nodes [old>>L+1, new>>L+1) are not all empty and
    # whose first child at level L is left of the appended range.
    wanted = set()
    level = 0
    while (new_size >> (level + 1)) > (old_size >> (level + 1)):
        if (old_size >> level) & 1:
            wanted.add((level, (old_size >> level) - 1))
        level += 1
    have = _fetch(get_nodes, wanted)

    out: dict[int, tuple[int, list[bytes]]] = {}
    sha = hashlib.sha256
    cur, first = list(new_leaf_hashes), old_size  # nodes of `level`, starting at index `first`
    level = 0
    while True:
        if first & 1:  # first node is a right child: prepend its stored left sibling
            if (level, first - 1) not in have:
                break  # no parent completes at this level or above
            cur = [have[(level, first - 1)], *cur]  # new list: `out` holds the previous one
            first -= 1
        if len(cur) < 2:
            break
        it = iter(cur)
        cur = [sha(b"\x01" + left + right).digest() for left, right in zip(it, it)]
        first >>= 1
        level += 1
        out[level] = (first, cur)
    return out


def compact_range_nodes(size: int) -> list[tuple[int, int]]:
    """The compact range of ``[0, size)``: its maximal aligned power-of-two subtrees, largest first.

    One node per set bit of ``size`` (level = the bit); their hashes fold to the root of ``size``.

    >>> compact_range_nodes(6)
    [(2, 0), (1, 2)]
    """
    return merkle._decompose(0, size)


def fold_compact_range(size: int, hashes: Sequence[bytes]) -> bytes:
    """The root of ``size`` leaves from the hashes of its compact range (:func:`compact_range_nodes` order).

    >>> lh = [merkle.leaf_hash(bytes([i])) for i in range(3)]
    >>> fold_compact_range(3, [merkle.node_hash(lh[0], lh[1]), lh[2]]) == merkle.root([b"\\x00", b"\\x01", b"\\x02"])
    True
    """
    nodes = compact_range_nodes(size)
    if len(hashes) != len(nodes):
        raise ValueError(f"a compact range of size {size} has {len(nodes)} hashes, not {len(hashes)}")
    return merkle.root_from_nodes(size, dict(zip(nodes, hashes)))


class RightEdge:
    """A growing tree's right edge: the last complete node of each level, which is all that appending
    needs to compute every node the append completes (so a long batch is hashed chunk by chunk).

    >>> lh = [merkle.leaf_hash(bytes([i])) for i in range(5)]
    >>> edge = RightEdge(0, {})
    >>> first, second = edge.append(lh[:3]), edge.append(lh[3:])
    >>> second[2] == (0, [merkle.root(bytes([i]) for i in range(4))])
    True
    """

    def __init__(self, size: int, nodes: Mapping[tuple[int, int], bytes]):
        self.size = size
        self._edge = dict(nodes)  # at least the complete parts of the tree of ``size`` leaves

    @classmethod
    def from_compact_range(cls, size: int, hashes: Sequence[bytes]) -> RightEdge:
        """The right edge of ``size`` leaves from the hashes of its compact range."""
        nodes = compact_range_nodes(size)
        if len(hashes) != len(nodes):
            raise ValueError(f"a compact range of size {size} has {len(nodes)} hashes, not {len(hashes)}")
        return cls(size, dict(zip(nodes, hashes)))

    def compact_range(self) -> list[bytes]:
        """Hashes of the compact range of the current size (its root folds from them)."""
        return [self._edge[n] for n in compact_range_nodes(self.size)]

    def root(self) -> bytes:
        """Root hash of the current size."""
        return merkle.root_from_nodes(self.size, self._edge)

    def append(self, leaf_hashes: Sequence[bytes]) -> dict[int, tuple[int, list[bytes]]]:
        """The nodes completed by appending ``leaf_hashes``, as :func:`new_complete_nodes_by_level` gives them."""
        by_level = new_complete_nodes_by_level(self.size, leaf_hashes,
                                               lambda wanted: {w: self._edge[w] for w in wanted})
        for level, (first, hashes) in by_level.items():
            if hashes:
                self._edge[(level, first + len(hashes) - 1)] = hashes[-1]
        self.size += len(leaf_hashes)
        if leaf_hashes:
            self._edge[(0, self.size - 1)] = leaf_hashes[-1]
        return by_level


class ExtendedTree(Mapping):
    """The tree of ``start + len(leaf_hashes)`` leaves known from the compact range at ``start`` and the
    leaf hashes after it: enough for the root of every size in ``[start, end]`` and for consistency
    proofs between such sizes, without the leaves before ``start``.

    A node oracle (``tree[(level, index)]``) holding the compact range at ``start`` and every node
    the appended leaves complete; O(new leaves) to build.

    >>> lh = [merkle.leaf_hash(bytes([i])) for i in range(7)]
    >>> t = ExtendedTree(3, [merkle.node_hash(lh[0], lh[1]), lh[2]], lh[3:])
    >>> t.root(5) == merkle.root([bytes([i]) for i in range(5)]), t.compact_range(4) == [t[(2, 0)]]
    (True, True)
    >>> merkle.verify_consistency(3, 7, t.root(3), t.root(7), t.consistency_proof(3, 7))
    True
    """

    def __init__(self, start: int, compact_range: Sequence[bytes], leaf_hashes: Sequence[bytes]):
        self.start, self.end = start, start + len(leaf_hashes)
        self._nodes = dict(zip(compact_range_nodes(start), compact_range))
        if len(self._nodes) != len(compact_range_nodes(start)) or len(compact_range) != len(self._nodes):
            raise ValueError(f"a compact range of size {start} has {len(self._nodes)} hashes, "
                             f"not {len(compact_range)}")
        self._leaves = leaf_hashes
        self._levels = RightEdge(start, self._nodes).append(leaf_hashes)

    def __getitem__(self, node: tuple[int, int]) -> bytes:
        level, i = node
        if level == 0 and self.start <= i < self.end:
            return bytes(self._leaves[i - self.start])
        if level in self._levels:
            first, hashes = self._levels[level]
            if first <= i < first + len(hashes):
                return hashes[i - first]
        return self._nodes[node]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        yield from self._nodes
        yield from ((0, self.start + j) for j in range(self.end - self.start))
        for level, (first, hashes) in self._levels.items():
            yield from ((level, first + j) for j in range(len(hashes)))

    def __len__(self) -> int:
        return len(self._nodes) + (self.end - self.start) + sum(len(h) for _, h in self._levels.values())

    def _check(self, *sizes: int) -> None:
        for size in sizes:
            if not self.start <= size <= self.end:
                raise ValueError(f"size {size} outside the known range {self.start}..{self.end}")

    def root(self, size: int | None = None) -> bytes:
        """Root of the first ``size`` leaves (default: all), ``start <= size <= end``."""
        size = self.end if size is None else size
        self._check(size)
        return merkle.root_from_nodes(size, self)

    def compact_range(self, size: int | None = None) -> list[bytes]:
        """Hashes of the compact range of ``size`` leaves (default: all), ``start <= size <= end``."""
        size = self.end if size is None else size
        self._check(size)
        return [self[n] for n in compact_range_nodes(size)]

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from ``old`` to ``new`` leaves, both in ``[start, end]``."""
        new = self.end if new is None else new
        self._check(old, new)
        return merkle.consistency_proof_from_nodes(old, new, self)


def new_complete_nodes(old_size: int, new_leaf_hashes: Sequence[bytes], get_nodes: GetNodes
                       ) -> list[tuple[int, int, bytes]]:
    """Every ``(level, index, hash)`` of level >= 1 completed by appending at ``old_size``.

    >>> lh = [merkle.leaf_hash(bytes([i])) for i in range(4)]
    >>> [(lvl, i) for lvl, i, _ in new_complete_nodes(0, lh, lambda ns: {})]
    [(1, 0), (1, 1), (2, 0)]
    """
    return [(level, first + j, h)
            for level, (first, hashes) in new_complete_nodes_by_level(
                old_size, new_leaf_hashes, get_nodes).items()
            for j, h in enumerate(hashes)]


class TreeReader:
    """Roots and proofs of any tree size from stored complete nodes, one batched lookup each.

    >>> lh = [merkle.leaf_hash(bytes([i])) for i in range(3)]
    >>> store = {(0, i): h for i, h in enumerate(lh)}
    >>> store.update({(lvl, i): h for lvl, i, h in new_complete_nodes(0, lh, store.__getitem__)})
    >>> reader = TreeReader(lambda ns: {n: store[n] for n in ns if n in store})
    >>> reader.root(3) == merkle.root([bytes([i]) for i in range(3)])
    True
    """

    def __init__(self, get_nodes: GetNodes):
        self.get_nodes = get_nodes

    def root(self, size: int) -> bytes:
        """Root hash of the tree of the first ``size`` leaves (SHA-256(b"") for 0)."""
        nodes = _fetch(self.get_nodes, merkle.needed_nodes_for_root(size))
        return merkle.root_from_nodes(size, nodes)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of ``size`` leaves, leaf-to-root."""
        nodes = _fetch(self.get_nodes, merkle.needed_nodes_for_inclusion(index, size))
        return merkle.inclusion_proof_from_nodes(index, size, nodes)

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """Consistency proof from the tree of ``old`` leaves to the tree of ``new`` leaves."""
        nodes = _fetch(self.get_nodes, merkle.needed_nodes_for_consistency(old, new))
        return merkle.consistency_proof_from_nodes(old, new, nodes)
