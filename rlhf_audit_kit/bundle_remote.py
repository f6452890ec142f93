"""Exporting a bundle to object storage (an fsspec URL): the files of a local export, the manifest last.

What :mod:`rlhf_audit_kit.bundle_export` writes into a folder is written under a URL
(``s3://bucket/bundle``, ``gs://``, ``memory://``): the new segment files and notes are made in a
local staging folder, uploaded, and only then are ``checkpoint.note`` and ``manifest.json``
replaced, so a reader never meets a manifest that names a missing or partial object. An upload is
atomic on S3, GCS and Azure (:data:`~rlhf_audit_kit.bundle_files.ATOMIC_PUT`: an object appears
whole or not at all, multipart uploads too); on other file systems each file is written aside
(``.<name>.partial-<id>/`` next to the bundle) and moved into place.

A new bundle is written and verified whole in the staging folder first; an extension is checked
exactly as locally (same log, key and history) and its new segment verified from the uploaded
objects (``since`` the old checkpoint) before the manifest names it. Files that an interrupted
export left beyond the manifest's size are removed by the next one. Credentials stay with the file
system (``storage_options``, or its own environment and config): no file written holds them.

>>> # store.snapshot(signer).export("s3://audit/run-7", storage_options={"profile": "lab"})
"""
from __future__ import annotations

import os
import sys
import tempfile
import uuid
from pathlib import Path

from .bundle import _NOT_BUNDLE_FILES, _OWN_EXPORT, MANIFEST_FILE, NOTE_FILE, VKEY_FILE, Bundle
from .bundle_export import _manifest, _write_segment, _write_text, check_extension, stage_new
from .bundle_files import ATOMIC_PUT, BundleFiles
from .errors import AuditKitError
from .ledger.checkpoint import Verifier
from .ledger.snapshot import Snapshot
from .segments import CHECKPOINT_DIR, SEGMENT_DIR, later_files, manifest_bytes, parse_checkpoint_file, \
    parse_segment_file

__all__ = ["write_remote"]


def _layout(name: str) -> bool:
    """True for a name an export writes before its manifest (what an interrupted one leaves behind)."""
    return (name in (VKEY_FILE, NOTE_FILE) or parse_segment_file(name) is not None
            or parse_checkpoint_file(name) is not None)


class _Writer:
    """Puts files into the bundle at ``files``: in place where a put is atomic, else aside and moved."""

    def __init__(self, files: BundleFiles):
        self.files, self.fs = files, files.fs
        self.atomic = files.protocol in ATOMIC_PUT
        root = files.root_path.rstrip("/")
        parent, base = root.rsplit("/", 1) if "/" in root.strip("/") else (root, "bundle")
        self.aside = f"{parent}/.{base}.partial-{uuid.uuid4().hex[:8]}"  # outside the bundle: never listed

    def put(self, src: Path, name: str) -> None:
        self._place(name, lambda dest: self.fs.put_file(os.fspath(src), dest))

    def pipe(self, name: str, data: bytes) -> None:
        self._place(name, lambda dest: self.fs.pipe_file(dest, data))

    def _place(self, name: str, write) -> None:
        dest = self.files.path(name)
        if self.atomic:
            write(dest)
            return
        tmp = f"{self.aside}/{name}"
        self.fs.makedirs(self.fs._parent(tmp), exist_ok=True)
        write(tmp)
        self.fs.makedirs(self.fs._parent(dest), exist_ok=True)
        self.fs.mv(tmp, dest)

    def remove(self, names: list[str]) -> None:
        if names:
            self.fs.rm([self.files.path(n) for n in names])

    def close(self) -> None:
        if not self.atomic and self.fs.exists(self.aside):
            self.fs.rm(self.aside, recursive=True)


def write_remote(store, snapshot: Snapshot, url: str, storage_options: dict | None, *, verifier: Verifier,
                 verify: bool = True, overwrite: bool = False) -> None:
    """Write or extend the bundle of ``snapshot`` at fsspec ``url``; see the module and
    :func:`rlhf_audit_kit.bundle_export.export_bundle` (same arguments, same refusals)."""
    files = BundleFiles(url, storage_options)
    writer = _Writer(files)
    try:
        if files.exists(MANIFEST_FILE) and not overwrite:
            _extend(store, snapshot, files, writer, verifier, verify)
        else:
            _write_new(store, snapshot, files, writer, verifier, verify, overwrite)
    finally:
        writer.close()


def _write_new(store, snapshot: Snapshot, files: BundleFiles, writer: _Writer, verifier: Verifier, verify: bool,
               overwrite: bool) -> None:
    present = set(files.list_files())
    if not overwrite and any(not _layout(n) for n in present):
        raise AuditKitError(f"{files.shown} exists and is not empty (and holds no bundle); pass overwrite=True to "
                            "replace it")
    keep = _cosignatures(files, present, snapshot.origin) if overwrite else set()
    with tempfile.TemporaryDirectory(prefix="rlhf-audit-export-") as tmp:
        stage = Path(tmp)
        stage_new(store, snapshot, stage, verifier, verify)
        names = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        if not overwrite:  # leftovers of an interrupted export: no manifest ever named them
            writer.remove(sorted(present - set(names)))
        # segments, notes and key first; the note copy and the manifest (the publication) last
        for name in [n for n in names if n not in (NOTE_FILE, MANIFEST_FILE)] + [NOTE_FILE, MANIFEST_FILE]:
            writer.put(stage / name, name)
    if overwrite:  # what the old bundle held and the new one does not name
        writer.remove(sorted(n for n in present - set(names) if n not in keep))


def _cosignatures(files: BundleFiles, present: set[str], origin: str) -> set[str]:
    """The witnesses' cosigned notes to keep when a bundle of the same log is overwritten."""
    held = {n for n in present if n.split("/", 1)[0] in _NOT_BUNDLE_FILES}
    if not held or MANIFEST_FILE not in present:
        return set()
    try:
        with Bundle(files.url, storage_options=files.storage_options, limits=_OWN_EXPORT, _from=sys.maxsize) as old:
            return held if old.origin == origin else set()
    except AuditKitError:
        return set()


def _extend(store, snapshot: Snapshot, files: BundleFiles, writer: _Writer, verifier: Verifier,
            verify: bool) -> None:
    manifest, segments, old_note, old_size = check_extension(store, snapshot, files.url, verifier,
                                                             files.storage_options)
    size = int(snapshot.size)
    if old_size == size:  # the same tree: nothing to add
        return
    _remove_leftovers(files, writer, manifest)
    placed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rlhf-audit-export-") as tmp:
        stage = Path(tmp)
        try:
            seg, new = _write_segment(store, stage, old_size, size)
            new[seg.note] = _write_text(stage, seg.note, snapshot.note)
            for name in sorted(new):  # new names: no reader has them
                writer.put(stage / name, name)
                placed.append(name)
            data = manifest_bytes(_manifest(store, snapshot, verifier, {**manifest["files"], **new},
                                            [*segments, seg]))
            if verify:  # the uploaded objects, as a reader will get them
                with Bundle(files.url, storage_options=files.storage_options, limits=_OWN_EXPORT, _manifest=data,
                            _from=old_size) as b:
                    b.verify(verifier, since=old_note).raise_for_status()
            writer.pipe(NOTE_FILE, snapshot.note.encode("utf-8"))
        except BaseException:
            writer.remove(placed)  # not published: no manifest names them
            raise
    # last: the publication. Not undone if it fails: whether the put landed is unknown, and files
    # beyond the manifest's size are a later publication to readers (the next export removes them).
    writer.pipe(MANIFEST_FILE, data)


def _remove_leftovers(files: BundleFiles, writer: _Writer, manifest: dict) -> None:
    """Remove objects an interrupted export left beyond the manifest's size."""
    names = [n for n in files.list_files() if n.split("/", 1)[0] in (SEGMENT_DIR, CHECKPOINT_DIR)
             and n not in manifest["files"]]
    writer.remove(later_files(files, names, manifest["tree_size"]))
