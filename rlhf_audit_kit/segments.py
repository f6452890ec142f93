"""The append-only bundle layout (v2): immutable segments, every published note, a manifest written last.

Layout of a bundle folder::

    manifest.json                 names every file below with its SHA-256, bytes and rows; written last, atomically
    checkpoint.note               a copy of the newest signed note (for people and tools; not in the manifest)
    checkpoints/<size>.note       every published signed note, never rewritten
    verifier.vkey                 the signer's public key (convenience: pin your own)
    segments/log-<a>-<b>.parquet  seq, kind, ts, entry, leaf_hash of seq a..b-1 (12-digit a and b)
    segments/<kind>-<a>-<b>.parquet   typed rows of kind with seq in [a, b), only when there are any
    cosignatures/                 witnesses' cosigned notes (:mod:`rlhf_audit_kit.ledger.witness`), never exported

An export onto a bundle of an earlier snapshot adds one segment ``[old size, new size)``, its note
and a new manifest, and leaves every earlier file byte-identical. The manifest's ``segments`` list
gives, per segment, its range, its files, its note and the Merkle tree's *compact range* at its end:
the hashes of the maximal aligned power-of-two subtrees of ``[0, end)`` (one per set bit of
``end``, largest first; :func:`rlhf_audit_kit.ledger.tree.compact_range_nodes`), which fold to the
root of ``end``. Incremental verification binds the compact range at a trusted size to the trusted
root and extends it with the new segments' leaf hashes only. ``subtree_root`` is the segment's own
subtree hash when ``[start, end)`` is a complete aligned subtree.

Version 1 bundles (``log.parquet`` and ``<kind>.parquet`` at the top) read as one segment.

>>> segment_file("log", 0, 1000)
'segments/log-000000000000-000000001000.parquet'
>>> parse_segment_file("segments/annotation-000000000010-000000000020.parquet")
('annotation', 10, 20)
>>> checkpoint_file(1000)
'checkpoints/000000001000.note'
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle_files import BundleFiles, Limits, show_name
from .errors import BundleError, ManifestSizeWarning
from .ledger.tree import compact_range_nodes
from .schema import KINDS

__all__ = ["FORMAT_V1", "FORMAT_V2", "SEGMENT_DIR", "CHECKPOINT_DIR", "Segment", "segment_file",
           "parse_segment_file", "checkpoint_file", "parse_checkpoint_file", "parse_segments", "later_files",
           "write_atomic", "fsync_dir", "complete_subtree"]

FORMAT_V1 = "rlhf-audit-kit/bundle/v1"
FORMAT_V2 = "rlhf-audit-kit/bundle/v2"
SEGMENT_DIR, CHECKPOINT_DIR = "segments", "checkpoints"
MANIFEST_FILE, NOTE_FILE = "manifest.json", "checkpoint.note"
_TABLES = ("log", *KINDS)
_SEGMENT = re.compile(rf"{SEGMENT_DIR}/({'|'.join(_TABLES)})-(\d{{12,19}})-(\d{{12,19}})\.parquet")
_CHECKPOINT = re.compile(rf"{CHECKPOINT_DIR}/(\d{{12,19}})\.note")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def segment_file(table: str, start: int, end: int) -> str:
    """The name of the segment file of ``table`` holding seq ``[start, end)``."""
    return f"{SEGMENT_DIR}/{table}-{start:012d}-{end:012d}.parquet"


def parse_segment_file(name: str) -> tuple[str, int, int] | None:
    """``(table, start, end)`` of a segment file name, or None if ``name`` is not one."""
    m = _SEGMENT.fullmatch(name)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def checkpoint_file(size: int) -> str:
    """The name of the published note of tree size ``size``."""
    return f"{CHECKPOINT_DIR}/{size:012d}.note"


def parse_checkpoint_file(name: str) -> int | None:
    m = _CHECKPOINT.fullmatch(name)
    return int(m.group(1)) if m else None


def complete_subtree(start: int, end: int) -> tuple[int, int] | None:
    """The node ``(level, index)`` of ``[start, end)`` if it is a complete aligned subtree, else None.

    >>> complete_subtree(8, 12), complete_subtree(8, 11)
    ((2, 2), None)
    """
    width = end - start
    if width <= 0 or width & (width - 1) or start % width:
        return None
    level = width.bit_length() - 1
    return level, start >> level


@dataclass(frozen=True)
class Segment:
    """One immutable piece of a bundle: seq ``[start, end)``, its files, its note and its tree hashes.

    ``compact_range``: hashes of the compact range of ``[0, end)`` (None in a v1 bundle);
    ``subtree_root``: the hash of ``[start, end)`` when that is a complete aligned subtree.
    """

    start: int
    end: int
    files: tuple[str, ...]
    note: str
    compact_range: tuple[bytes, ...] | None = None
    subtree_root: bytes | None = None

    @property
    def log_file(self) -> str:
        return next(f for f in self.files if f.startswith((f"{SEGMENT_DIR}/log-", "log.")))

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "files": list(self.files), "note": self.note,
                "compact_range": [h.hex() for h in self.compact_range or ()],
                "subtree_root": self.subtree_root.hex() if self.subtree_root else None}


def _bad(what: str) -> BundleError:
    return BundleError(f"{MANIFEST_FILE} {what}; refused", damage="malformed-bundle", file=MANIFEST_FILE)


def _hex(value: Any, what: str) -> bytes:
    if not (isinstance(value, str) and _HEX64.fullmatch(value)):
        raise _bad(f"has a malformed {what}")
    return bytes.fromhex(value)


def parse_segments(m: Mapping[str, Any]) -> list[Segment]:
    """The segments of a parsed manifest, checked against its ``files`` and ``tree_size``.

    A v1 manifest is one segment ``[0, tree_size)`` over all its table files. A v2 manifest's
    segments must be contiguous from 0 to ``tree_size``, name only listed files of their own range
    (one log file each), their note ``checkpoints/<end>.note``, and hold a compact range of the
    right length; every listed table file belongs to one segment. Raises BundleError otherwise.
    """
    files, size = m["files"], m["tree_size"]
    if m["format"] == FORMAT_V1:
        tables = tuple(sorted(n for n, info in files.items() if "table" in info))
        return [Segment(0, size, tables, NOTE_FILE)] if size or tables else []
    raw = m.get("segments")
    if not isinstance(raw, list):
        raise _bad("has no 'segments' list")
    out: list[Segment] = []
    claimed: set[str] = set()
    at = 0
    for i, s in enumerate(raw):
        where = f"segment {i}"
        if not isinstance(s, dict):
            raise _bad(f"{where} is not an object")
        start, end = s.get("start"), s.get("end")
        if not (type(start) is int and type(end) is int and start == at and end > start):
            raise _bad(f"{where} does not continue the seq range at {at} (start {show_name(start, 20)}, "
                       f"end {show_name(end, 20)})")
        names = s.get("files")
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise _bad(f"{where} lists no files")
        logs = 0
        for name in names:
            info = files.get(name)
            parsed = parse_segment_file(name)
            if info is None or parsed is None or parsed != (info.get("table"), start, end) or name in claimed:
                raise _bad(f"{where} names '{show_name(name)}', which is not a listed file of its table and range")
            claimed.add(name)
            logs += parsed[0] == "log"
        if logs != 1:
            raise _bad(f"{where} does not name exactly one log file")
        note = s.get("note")
        if note != checkpoint_file(end) or note not in files or "table" in files[note]:
            raise _bad(f"{where} does not name its listed note {checkpoint_file(end)}")
        cr = s.get("compact_range")
        if not (isinstance(cr, list) and len(cr) == len(compact_range_nodes(end))):
            raise _bad(f"{where} has a compact range of the wrong length")
        sub = s.get("subtree_root")
        if (sub is None) != (complete_subtree(start, end) is None):
            raise _bad(f"{where} has a subtree root where its range is not a complete subtree, or none where it is")
        out.append(Segment(start, end, tuple(names), note, tuple(_hex(h, "compact range hash") for h in cr),
                           None if sub is None else _hex(sub, "subtree root")))
        at = end
    if at != size:
        raise _bad(f"segments end at {at:,}, not at the tree size {size:,}")
    stray = [n for n, info in files.items() if "table" in info and n not in claimed]
    if stray:
        raise _bad(f"lists table file '{show_name(stray[0])}' in no segment")
    if m.get("note") != checkpoint_file(size) or m["note"] not in files:
        raise _bad(f"does not name its newest note {checkpoint_file(size)}")
    return out


def later_files(root: Path | BundleFiles, names: Iterable[str], tree_size: int) -> list[str]:
    """Of ``names`` (unlisted entries of a bundle folder or :class:`BundleFiles`), the regular files
    of a later publication.

    Segment files starting at or after ``tree_size`` and notes of larger sizes are what an export
    writes before it replaces the manifest: a reader that opened the bundle earlier sees them. They
    are not read; anything else unlisted stays a finding. Checked with ``lstat`` (no link followed).
    """
    files = root if isinstance(root, BundleFiles) else BundleFiles(root)
    out = []
    for name in names:
        seg, cp = parse_segment_file(name), parse_checkpoint_file(name)
        if (seg is not None and seg[1] >= tree_size and seg[2] > seg[1]) or (cp is not None and cp > tree_size):
            if files.is_regular(name):
                out.append(name)
    return out


# ---------------------------------------------------------------- durable writes
def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in folder ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def write_atomic(path: Path, data: bytes, staging: Path) -> None:
    """Write ``data`` to ``path`` all at once: a staged file, fsynced, renamed over ``path``, folder fsynced.

    ``staging`` is a folder on the same file system outside the bundle, so a reader listing the
    bundle never meets a half-written file.
    """
    tmp = staging / f"{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest as written; warns (:class:`~rlhf_audit_kit.errors.ManifestSizeWarning`) past half the
    size readers accept by default, so a publisher learns it long before its readers refuse the bundle."""
    data = (json.dumps(manifest, indent=1) + "\n").encode("utf-8")
    limit = Limits().max_manifest_bytes
    if len(data) > limit // 2:
        n = len(manifest.get("segments") or ())
        warnings.warn(f"the bundle's manifest.json is {len(data) / 2**20:.1f} MiB ({n:,} segments, ~2 KB each); "
                      f"readers refuse one over {limit >> 20} MiB unless they pass open_bundle(..., "
                      "limits=Limits(max_manifest_bytes=...)): publish less often (a larger every=, see "
                      "docs/scaling.md)", ManifestSizeWarning, stacklevel=3)
    return data


def segment_entries(segments: Sequence[Segment]) -> list[dict[str, Any]]:
    return [s.to_json() for s in segments]
