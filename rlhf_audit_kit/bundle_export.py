"""Exporting a store's signed snapshot into a bundle folder: a new bundle, or the next segment of one.

:func:`export_bundle` onto an empty or new folder writes the whole bundle into a temporary sibling
folder and renames it into place. Onto a bundle of an earlier snapshot of the same log it checks
that the bundle is of this log (origin), of this key (its newest note verifies under it) and of
this history (the store's tree at the bundle's size has the bundle's signed root, and the stored
compact range matches), then writes only the events ``[old size, new size)``: their segment files
and note (renamed in from a staging folder), the copy ``checkpoint.note`` and last the manifest
(atomically, fsynced). Earlier files stay byte-identical and ``cosignatures/`` is never touched, so
readers of the folder always see a complete bundle. Cost: O(new events) (plus a manifest line per
segment).

``folder`` may also be an fsspec URL (``s3://bucket/bundle``, ``gs://``, ``memory://``): the same
files are written there, segments and notes first and the manifest last
(:mod:`rlhf_audit_kit.bundle_remote`).

>>> import os, tempfile
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from rlhf_audit_kit.store import open_store
>>> from rlhf_audit_kit.ledger.checkpoint import Signer
>>> signer, d = Signer("example.com/log", Ed25519PrivateKey.generate()), tempfile.mkdtemp()
>>> store = open_store(os.path.join(d, "a.duckdb"), pseudonymize=False)
>>> _ = store.extend([{"kind": "dataset", "name": "hh", "version": "1"}])
>>> store.snapshot(signer).export(os.path.join(d, "b")).close()
>>> _ = store.extend([{"kind": "dataset", "name": "hh", "version": "2"}])
>>> with store.snapshot(signer).export(os.path.join(d, "b")) as b:
...     [(s.start, s.end) for s in b.segments]
[(0, 1), (1, 3)]
>>> store.close()
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import stat
import sys
import uuid
from pathlib import Path
from typing import Any

from . import encoding
from .bundle import _OWN_EXPORT, MANIFEST_FILE, NOTE_FILE, VKEY_FILE, Bundle, is_bundle
from .bundle_files import is_url, local_path
from .errors import AuditKitError, ForkError, IntegrityError, RollbackError, SignatureError
from .ledger.checkpoint import Verifier, verify_checkpoint
from .ledger.snapshot import Snapshot
from .ledger.tree import compact_range_nodes
from .reader import _quote, typed_select_list
from .schema import KINDS
from .segments import (CHECKPOINT_DIR, FORMAT_V1, FORMAT_V2, SEGMENT_DIR, Segment, checkpoint_file,
                       complete_subtree, fsync_dir, fsync_file, later_files, manifest_bytes, segment_entries,
                       segment_file, write_atomic)

__all__ = ["export_bundle", "write_bundle"]


def _sql_str(s: str | os.PathLike) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)  # hashlib releases the GIL on large chunks
            n += len(chunk)
    return h.hexdigest(), n


def _nodes(store, wanted: list[tuple[int, int]]) -> list[bytes]:
    with store._lock:  # the store's connection serves one call at a time (a writer thread may be recording)
        got = store._get_nodes(wanted)
    missing = [w for w in wanted if w not in got]
    if missing:
        raise IntegrityError(f"the store lacks Merkle node {missing[0]}; cannot export (run store.verify)",
                             damage="missing-node")
    return [got[w] for w in wanted]


def _write_segment(store, dest: Path, start: int, end: int) -> tuple[Segment, dict[str, dict[str, Any]]]:
    """Segment files of seq ``[start, end)`` into ``dest/segments/``, with their tree hashes."""
    (dest / SEGMENT_DIR).mkdir(exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    with store._lock:
        cur = store._con.cursor()
        try:
            n = cur.execute("SELECT count(*) FROM log WHERE seq >= ? AND seq < ?", [start, end]).fetchall()[0][0]
            if n != end - start:
                raise IntegrityError(f"the store has {n:,} events in seq {start:,}..{end - 1:,}, not {end - start:,}; "
                                     "cannot export the snapshot (run store.verify)", damage="truncated")
            where = f"WHERE seq >= {int(start)} AND seq < {int(end)} ORDER BY seq"
            for table, select in [("log", "seq, kind, ts, entry, leaf_hash")] + [
                    (k.name, typed_select_list(k)) for k in KINDS.values()]:
                name = segment_file(table, start, end)
                rows = cur.execute(f"COPY (SELECT {select} FROM {_quote(table)} {where}) TO {_sql_str(dest / name)} "
                                   "(FORMAT parquet, COMPRESSION zstd)").fetchall()[0][0]
                if rows or table == "log":
                    files[name] = {"rows": rows, "table": table}
                else:
                    (dest / name).unlink()
        finally:
            cur.close()
        compact = _nodes(store, compact_range_nodes(end))
        node = complete_subtree(start, end)
        sub = _nodes(store, [node])[0] if node else None
    for name, info in files.items():
        info["sha256"], info["bytes"] = _sha256_file(dest / name)
    return Segment(start, end, tuple(sorted(files)), checkpoint_file(end), tuple(compact), sub), files


def _write_text(dest: Path, name: str, text: str) -> dict[str, Any]:
    path = dest / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    digest, size = _sha256_file(path)
    return {"sha256": digest, "bytes": size}


def _manifest(store, snapshot: Snapshot, verifier: Verifier, files: dict, segments: list[Segment]) -> dict:
    return {
        "format": FORMAT_V2, "origin": snapshot.origin, "tree_size": int(snapshot.size),
        "root_hash": snapshot.root_hash.hex(), "note": checkpoint_file(snapshot.size),
        "encoding": encoding.ENCODING_NAME, "store_id": store.store_id, "snapshot_seq": snapshot.seq,
        "key_name": verifier.name, "key_id": verifier.key_id.hex(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": dict(sorted(files.items())), "segments": segment_entries(segments),
    }


def export_bundle(store, snapshot: Snapshot, folder: str | os.PathLike, *, verifier: Verifier,
                  verify: bool = True, overwrite: bool = False, storage_options: dict | None = None) -> Bundle:
    """Write the bundle of ``snapshot`` (rows with ``seq < snapshot.size``) into ``folder``; return it opened.

    ``folder`` empty or absent: a new bundle (written aside and renamed into place, so it is
    complete or absent). ``folder`` a bundle of an earlier snapshot of this log: only the new
    events are added (see the module); a bundle of another log or key, of a fork of this log, of a
    newer snapshot, or of the v1 layout is refused (AuditKitError, SignatureError, ForkError,
    RollbackError). ``overwrite``: rewrite the folder whole instead (a bundle's ``cosignatures/``
    of the same log are kept). With ``verify`` the written part is verified against ``verifier``
    before it is published (a full verification for a new bundle, one since the old checkpoint for
    an extension): IntegrityError or SignatureError if the store does not match its own snapshot.

    ``folder`` an fsspec URL: written there (:func:`rlhf_audit_kit.bundle_remote.write_remote`), its
    file system made with ``storage_options`` (which no file of the bundle ever holds).
    """
    write_bundle(store, snapshot, folder, verifier=verifier, verify=verify, overwrite=overwrite,
                 storage_options=storage_options)
    return Bundle(folder, limits=_OWN_EXPORT, storage_options=storage_options)


def write_bundle(store, snapshot: Snapshot, folder: str | os.PathLike, *, verifier: Verifier,
                 verify: bool = True, overwrite: bool = False, storage_options: dict | None = None) -> None:
    """:func:`export_bundle` without opening the result (what a publisher needs)."""
    if snapshot.origin != store.origin:
        raise AuditKitError(f"snapshot origin {snapshot.origin!r} is not this store's {store.origin!r}")
    if is_url(folder):
        from .bundle_remote import write_remote
        write_remote(store, snapshot, folder, storage_options, verifier=verifier, verify=verify, overwrite=overwrite)
        return
    folder = Path(local_path(folder))
    if is_bundle(folder) and not overwrite:
        _extend(store, snapshot, folder, verifier, verify)
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise AuditKitError(f"{folder} exists and is not empty (and holds no bundle); pass overwrite=True to "
                            "replace it")
    _write_new(store, snapshot, folder, verifier, verify)


def stage_new(store, snapshot: Snapshot, tmp: Path, verifier: Verifier, verify: bool) -> None:
    """The whole bundle of ``snapshot`` written into the empty folder ``tmp`` and, with ``verify``, verified."""
    size = int(snapshot.size)
    files: dict[str, dict[str, Any]] = {}
    segments = []
    if size:
        seg, files = _write_segment(store, tmp, 0, size)
        segments.append(seg)
    files[checkpoint_file(size)] = _write_text(tmp, checkpoint_file(size), snapshot.note)
    files[VKEY_FILE] = _write_text(tmp, VKEY_FILE, verifier.vkey + "\n")
    (tmp / NOTE_FILE).write_text(snapshot.note, encoding="utf-8")
    (tmp / MANIFEST_FILE).write_bytes(manifest_bytes(_manifest(store, snapshot, verifier, files, segments)))
    if verify:
        with Bundle(tmp, limits=_OWN_EXPORT) as b:
            b.verify(verifier).raise_for_status()


def _write_new(store, snapshot: Snapshot, folder: Path, verifier: Verifier, verify: bool) -> None:
    tmp = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        stage_new(store, snapshot, tmp, verifier, verify)
        _keep_cosignatures(folder, tmp, snapshot.origin)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _keep_cosignatures(folder: Path, tmp: Path, origin: str) -> None:
    """Copy the witnesses' ``cosignatures/`` of a bundle of the same log being overwritten (links as links)."""
    from .ledger.witness import COSIGNATURE_DIR
    src = folder / COSIGNATURE_DIR
    if not (is_bundle(folder) and src.is_dir() and not src.is_symlink()):
        return
    try:
        with Bundle(folder, limits=_OWN_EXPORT) as old:
            same = old.origin == origin
    except AuditKitError:
        same = False
    if same:
        shutil.copytree(src, tmp / COSIGNATURE_DIR, symlinks=True)


def check_extension(store, snapshot: Snapshot, folder: str | os.PathLike, verifier: Verifier,
                    storage_options: dict | None = None) -> tuple[dict, list[Segment], str, int]:
    """``(manifest, segments, note, size)`` of the bundle in ``folder`` that ``snapshot`` extends.

    Raises unless that bundle is of this log, of this key and of this history, and not newer.
    """
    with Bundle(folder, limits=_OWN_EXPORT, _from=sys.maxsize, storage_options=storage_options) as old:
        folder = old.path  # as shown: never a URL's credentials
        if old.format == FORMAT_V1:
            raise AuditKitError(f"{folder} holds a bundle of the v1 layout (one file per table), which cannot grow; "
                                "export with overwrite=True once to rewrite it as an append-only bundle")
        if old.origin != snapshot.origin:
            raise AuditKitError(f"{folder} holds a bundle of log {old.origin!r}, not of this store's log "
                                f"{snapshot.origin!r}; refused (export into another folder)")
        try:
            old_cp = verify_checkpoint(old.note, [verifier], origin=snapshot.origin)
        except SignatureError as e:
            raise SignatureError(f"{folder} holds a bundle whose checkpoint does not verify under the key "
                                 f"{verifier.name} ({e}): signed by another key, or forged; refused") from None
        manifest, segments, old_note = old.manifest, list(old.segments), old.note
    old_size, size = old_cp.size, int(snapshot.size)
    if old_size > size:
        raise RollbackError(f"{folder} holds a newer checkpoint (size {old_size:,}) than this snapshot (size "
                            f"{size:,}); refused (a bundle never goes back)", origin=snapshot.origin,
                            seen_note=old_note, new_note=snapshot.note, damage="rollback")
    if old_size > store.size or store.root(old_size) != old_cp.root_hash or (
            segments and tuple(_nodes(store, compact_range_nodes(old_size))) != segments[-1].compact_range):
        raise ForkError(f"{folder} holds a checkpoint of size {old_size:,} that this store's log does not extend "
                        "(another history of this log: a fork); refused", origin=snapshot.origin,
                        seen_note=old_note, new_note=snapshot.note)
    return manifest, segments, old_note, old_size


def _extend(store, snapshot: Snapshot, folder: Path, verifier: Verifier, verify: bool) -> None:
    manifest, segments, old_note, old_size = check_extension(store, snapshot, folder, verifier)
    size = int(snapshot.size)
    if old_size == size:  # the same tree: nothing to add
        return
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    placed: list[Path] = []
    try:
        _remove_leftovers(folder, manifest)
        seg, files = _write_segment(store, staging, old_size, size)
        files[seg.note] = _write_text(staging, seg.note, snapshot.note)
        for name in files:  # durable, then renamed into the bundle (new names: no reader has them)
            fsync_file(staging / name)
            (folder / name).parent.mkdir(exist_ok=True)
            os.replace(staging / name, folder / name)
            placed.append(folder / name)
        for sub in (SEGMENT_DIR, CHECKPOINT_DIR):
            fsync_dir(folder / sub)
        data = manifest_bytes(_manifest(store, snapshot, verifier, {**manifest["files"], **files}, [*segments, seg]))
        if verify:
            with Bundle(folder, limits=_OWN_EXPORT, _manifest=data, _from=old_size) as b:
                b.verify(verifier, since=old_note).raise_for_status()
        write_atomic(folder / NOTE_FILE, snapshot.note.encode("utf-8"), staging)
        write_atomic(folder / MANIFEST_FILE, data, staging)  # last: the publication
    except BaseException:
        for path in placed:  # not published: no manifest names them
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_leftovers(folder: Path, manifest: dict) -> None:
    """Remove files an interrupted export left beyond the manifest's size (regular files only)."""
    names = []
    for sub in (SEGMENT_DIR, CHECKPOINT_DIR):
        try:
            with os.scandir(folder / sub) as it:
                names += [f"{sub}/{e.name}" for e in it]
        except (FileNotFoundError, NotADirectoryError):
            continue
    for name in later_files(folder, [n for n in names if n not in manifest["files"]], manifest["tree_size"]):
        if stat.S_ISREG(os.lstat(folder / name).st_mode):
            os.unlink(folder / name)
