"""RFC 9162 §2.1 Merkle tree: hashes, roots, inclusion and consistency proofs.

Two families of functions live here:

* over raw entries (``root``, ``inclusion_proof``, ``consistency_proof``): a literal transcription
  of the RFC's recursive definitions, O(n); the reference everything else is tested against;
* over a *node oracle* (``*_from_nodes``): the same results from the few stored subtree hashes a
  proof needs, O(log n), so a store can answer without rescanning its log.

A *complete node* ``(level, index)`` is the hash of the aligned, full subtree of leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 nodes are leaf hashes. Every subtree the
RFC recursion visits is either complete or lies on the right edge of the tree; a right-edge subtree
``[start, end)`` is folded from the complete nodes of the binary decomposition of ``end - start``.

Proof hashes are ordered leaf-to-root, as RFC 9162 PATH/PROOF emit them.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

__all__ = [
    "EMPTY_ROOT", "HASH_SIZE", "leaf_hash", "node_hash", "root", "root_from_leaf_hashes",
    "inclusion_proof", "verify_inclusion", "consistency_proof", "verify_consistency",
    "needed_nodes_for_root", "needed_nodes_for_inclusion", "needed_nodes_for_consistency",
    "root_from_nodes", "inclusion_proof_from_nodes", "consistency_proof_from_nodes",
]

_sha256 = hashlib.sha256
HASH_SIZE = 32
EMPTY_ROOT = _sha256(b"").digest()
"""Root of the empty tree: SHA-256 of the empty string."""

Node = tuple[int, int]


# --- hashing ----------------------------------------------------------------------------------

def leaf_hash(entry: bytes) -> bytes:
    """Hash of one log entry: SHA-256(0x00 || entry).

    >>> leaf_hash(b"").hex()[:16]
    '6e340b9cffb37a98'
    """
    return _sha256(b"\x00" + bytes(entry)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 || left || right).

    >>> node_hash(b"N123", b"N456").hex()[:16]
    'aa217fe888e47007'
    """
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (n >= 2): the RFC's split point k."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """Root over precomputed leaf hashes, level by level (~0.5 s per million leaves).

    Promoting the unpaired last node of a level unchanged gives exactly the RFC tree, because
    the RFC's left subtrees are always full, aligned power-of-two blocks.

    >>> root_from_leaf_hashes([leaf_hash(b"")]) == root([b""])
    True
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    sha = _sha256
    while len(level) > 1:
        it = iter(level)
        nxt = [sha(b"\x01" + left + right).digest() for left, right in zip(it, it)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root(entries: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash MTH(D[n]) of raw entries; the empty tree gives SHA-256(b"").

    >>> root([]).hex()[:16]
    'e3b0c44298fc1c14'
    """
    return root_from_leaf_hashes([leaf_hash(e) for e in entries])


# --- proofs over raw entries (literal RFC 9162 §2.1.3.1 / §2.1.4.1) ----------------------------

def _size(entries: Sequence[bytes], size: int | None) -> int:
    if size is None:
        return len(entries)
    if not 0 <= size <= len(entries):
        raise ValueError(f"size {size} outside 0..{len(entries)}")
    return size


def _path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return _path(m, hashes[:k]) + [root_from_leaf_hashes(hashes[k:])]
    return _path(m - k, hashes[k:]) + [root_from_leaf_hashes(hashes[:k])]


def inclusion_proof(entries: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """Audit path PATH(index, D[size]) of entry ``index`` in the tree of the first ``size`` entries.

    >>> e = [b"a", b"b", b"c"]
    >>> verify_inclusion(leaf_hash(b"b"), 1, 3, inclusion_proof(e, 1), root(e))
    True
    """
    n = _size(entries, size)
    if not 0 <= index < n:
        raise ValueError(f"index {index} outside 0..{n - 1}")
    return _path(index, [leaf_hash(e) for e in entries[:n]])


def _subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if complete else [root_from_leaf_hashes(hashes)]
    k = _split(n)
    if m <= k:
        return _subproof(m, hashes[:k], complete) + [root_from_leaf_hashes(hashes[k:])]
    return _subproof(m - k, hashes[k:], False) + [root_from_leaf_hashes(hashes[:k])]


def consistency_proof(entries: Sequence[bytes], old_size: int, new_size: int | None = None
                      ) -> list[bytes]:
    """Consistency proof PROOF(old_size, D[new_size]); empty when old_size is 0 or equals new_size.

    >>> e = [b"a", b"b", b"c"]
    >>> verify_consistency(2, 3, root(e[:2]), root(e), consistency_proof(e, 2))
    True
    """
    n = _size(entries, new_size)
    if not 0 <= old_size <= n:
        raise ValueError(f"old_size {old_size} outside 0..{n}")
    if old_size in (0, n):
        return []
    return _subproof(old_size, [leaf_hash(e) for e in entries[:n]], True)


# --- verification (RFC 9162 §2.1.3.2 / §2.1.4.2) ------------------------------------------------

def _is_hash(h: object) -> bool:
    return isinstance(h, (bytes, bytearray, memoryview)) and len(h) == HASH_SIZE


def _is_size(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """Check an inclusion proof (RFC 9162 §2.1.3.2). Never raises: malformed input gives False.

    >>> verify_inclusion(leaf_hash(b"x"), 0, 1, [], root([b"x"]))
    True
    >>> verify_inclusion(leaf_hash(b"x"), 1, 1, [], root([b"x"]))
    False
    """
    try:
        if not (_is_size(index) and _is_size(size) and index < size):
            return False
        if not (_is_hash(leaf_hash) and _is_hash(root)) or not all(_is_hash(p) for p in proof):
            return False
        fn, sn, r = index, size - 1, bytes(leaf_hash)
        for p in proof:
            p = bytes(p)
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                r = node_hash(p, r)
                if not fn & 1:
                    while fn and not fn & 1:
                        fn >>= 1
                        sn >>= 1
            else:
                r = node_hash(r, p)
            fn >>= 1
            sn >>= 1
        return sn == 0 and r == bytes(root)
    except Exception:  # e.g. a proof that is not iterable: malformed, so not verified
        return False


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """Check that the tree ``new_root`` of ``new_size`` extends ``old_root`` (RFC 9162 §2.1.4.2).

    Never raises: malformed input gives False. All hashes must be 32 bytes. Edge cases the RFC
    algorithm (defined for 0 < old < new) leaves open:

    * ``old_size == new_size``: the proof must be empty and the roots equal.
    * ``old_size == 0``: every tree extends the empty tree, so an empty proof is accepted, but only
      if ``old_root`` really is the empty-tree root SHA-256(b""): a size-0 checkpoint with any
      other root is not a checkpoint of an empty log. (transparency-dev rejects size 0 outright.)

    >>> verify_consistency(0, 5, EMPTY_ROOT, root([b"a"] * 5), [])
    True
    """
    try:
        if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
            return False
        if not (_is_hash(old_root) and _is_hash(new_root)) or not all(_is_hash(p) for p in proof):
            return False
        proof = [bytes(p) for p in proof]
        old_root, new_root = bytes(old_root), bytes(new_root)
        if old_size == new_size:
            return not proof and old_root == new_root and (old_size > 0 or old_root == EMPTY_ROOT)
        if old_size == 0:
            return not proof and old_root == EMPTY_ROOT
        if not proof:
            return False
        if old_size & (old_size - 1) == 0:  # exact power of two: old root is itself a node
            proof = [old_root] + proof
        fn, sn = old_size - 1, new_size - 1
        while fn & 1:
            fn >>= 1
            sn >>= 1
        fr = sr = proof[0]
        for c in proof[1:]:
            if sn == 0:
                return False
            if fn & 1 or fn == sn:
                fr = node_hash(c, fr)
                sr = node_hash(c, sr)
                if not fn & 1:
                    while fn and not fn & 1:
                        fn >>= 1
                        sn >>= 1
            else:
                sr = node_hash(sr, c)
            fn >>= 1
            sn >>= 1
        return sn == 0 and fr == old_root and sr == new_root
    except Exception:
        return False


# --- the same proofs over a node oracle -------------------------------------------------------

def _decompose(start: int, end: int) -> list[Node]:
    """Complete nodes covering the RFC subtree [start, end), largest (leftmost) first.

    Valid for the subtrees the RFC recursion visits: ``start`` is aligned to the largest block.
    """
    nodes = []
    while start < end:
        level = (end - start).bit_length() - 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def _fold(parts: list[Node], nodes: Mapping[Node, bytes]) -> bytes:
    """Hash of a right-edge subtree from its complete parts: h(p0, h(p1, ... h(pk-1, pk)))."""
    h = nodes[parts[-1]]
    for part in reversed(parts[:-1]):
        h = node_hash(nodes[part], h)
    return h


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Sibling subtrees of PATH(index, D[size]) as [start, end) ranges, leaf-to-root."""
    if not 0 <= index < size:
        raise ValueError(f"index {index} outside 0..{size - 1}")
    ranges, start, end = [], 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    return ranges[::-1]


def _consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """Subtrees of PROOF(old, D[new]) as [start, end) ranges, in proof order."""
    if not 0 <= old <= new:
        raise ValueError(f"need 0 <= old_size <= new_size, got {old}, {new}")
    if old in (0, new):
        return []
    ranges, start, end, m, complete = [], 0, new, old, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                ranges.append((start, end))
            break
        k = _split(n)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, complete = start + k, m - k, False
    return ranges[::-1]


def _needed(ranges: list[tuple[int, int]]) -> set[Node]:
    return {node for s, e in ranges for node in _decompose(s, e)}


def needed_nodes_for_root(size: int) -> set[Node]:
    """Complete nodes whose hashes give the root of a tree of ``size`` leaves (one per set bit).

    >>> sorted(needed_nodes_for_root(6))
    [(1, 2), (2, 0)]
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return set(_decompose(0, size))


def needed_nodes_for_inclusion(index: int, size: int) -> set[Node]:
    """Complete nodes needed for the inclusion proof of leaf ``index`` in a tree of ``size``.

    >>> sorted(needed_nodes_for_inclusion(0, 3))
    [(0, 1), (0, 2)]
    """
    return _needed(_inclusion_ranges(index, size))


def needed_nodes_for_consistency(old: int, new: int) -> set[Node]:
    """Complete nodes needed for the consistency proof from ``old`` to ``new`` leaves.

    >>> sorted(needed_nodes_for_consistency(3, 4))
    [(0, 2), (0, 3), (1, 0)]
    """
    return _needed(_consistency_ranges(old, new))


def root_from_nodes(size: int, nodes: Mapping[Node, bytes]) -> bytes:
    """Root of a tree of ``size`` leaves from (at least) ``needed_nodes_for_root(size)``.

    >>> lh = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]
    >>> nodes = {(1, 0): node_hash(lh[0], lh[1]), (0, 2): lh[2]}
    >>> root_from_nodes(3, nodes) == root([b"a", b"b", b"c"])
    True
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return _fold(_decompose(0, size), nodes) if size else EMPTY_ROOT


def inclusion_proof_from_nodes(index: int, size: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """Inclusion proof from (at least) ``needed_nodes_for_inclusion(index, size)``.

    >>> lh = [leaf_hash(b"a"), leaf_hash(b"b")]
    >>> inclusion_proof_from_nodes(0, 2, {(0, 1): lh[1]}) == [lh[1]]
    True
    """
    return [_fold(_decompose(s, e), nodes) for s, e in _inclusion_ranges(index, size)]


def consistency_proof_from_nodes(old: int, new: int, nodes: Mapping[Node, bytes]) -> list[bytes]:
    """Consistency proof from (at least) ``needed_nodes_for_consistency(old, new)``.

    >>> lh = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]
    >>> nodes = {(1, 0): node_hash(lh[0], lh[1]), (0, 2): lh[2]}
    >>> consistency_proof_from_nodes(2, 3, nodes) == [lh[2]]
    True
    """
    return [_fold(_decompose(s, e), nodes) for s, e in _consistency_ranges(old, new)]
