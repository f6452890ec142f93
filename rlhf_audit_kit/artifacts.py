"""Content hashes of model artifacts (a checkpoint file or folder), streamed.

A file's hash is ``sha256:<hex>`` of its bytes. A folder's hash is ``sha256:<hex>`` of a manifest
with one line per regular file, sorted by relative POSIX path: ``<hex sha256 of file>  <path>\\n``
(the format of ``sha256sum``), so anyone can recompute it with standard tools::

    (cd ckpt && find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum

Files are read in 4 MiB blocks, so multi-GB checkpoints never load into memory.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "w.bin"; _ = p.write_bytes(b"abc")
>>> hash_artifact(p)[0]
'sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_BLOCK = 4 << 20


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def hash_artifact(path: str | os.PathLike, *, progress: bool = False) -> tuple[str, int]:
    """Return ``("sha256:<hex>", total size in bytes)`` of a file or a folder (see module doc)."""
    p = Path(path)
    if p.is_file():
        return "sha256:" + _file_sha256(p), p.stat().st_size
    if not p.is_dir():
        raise FileNotFoundError(f"no such file or folder: {p}")
    files = sorted((f for f in p.rglob("*") if f.is_file() and not f.is_symlink()),
                   key=lambda f: f.relative_to(p).as_posix().encode("utf-8"))
    if progress:
        from tqdm.auto import tqdm
        files = tqdm(files, desc=f"hashing {p.name}", unit="file")
    manifest = hashlib.sha256()
    total = 0
    for f in files:
        manifest.update(f"{_file_sha256(f)}  {f.relative_to(p).as_posix()}\n".encode("utf-8"))
        total += f.stat().st_size
    return "sha256:" + manifest.hexdigest(), total
