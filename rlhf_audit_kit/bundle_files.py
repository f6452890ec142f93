"""Reading a bundle folder that may come from anyone: only regular files named by its manifest.

Every bundle file is read through :func:`open_file`, which

* refuses a name that could leave the folder (absolute, ``..``, hidden, odd characters) before any
  file system access, so "missing" and "does not match" never reveal files outside the bundle;
* never follows a symbolic link and never blocks: a link, FIFO, device, socket or folder where a
  file is named is refused from ``lstat`` alone, and the file is then opened with ``O_NOFOLLOW |
  O_NONBLOCK`` and checked again with ``fstat``.

:func:`check_parquet` bounds what decoding a Parquet file can cost before one value is decoded: it
reads the footer (length checked first) and walks every page header a decoder would read, so a
decompression bomb (one huge entry in a tiny zstd file) is refused from a few hundred bytes.
:func:`duckdb_path` escapes glob characters so DuckDB reads exactly the file named. The checks are
functions over lists of names, so a table may span many files.

>>> check_name("log.parquet")
'log.parquet'
>>> check_name("../x")
Traceback (most recent call last):
...
rlhf_audit_kit.errors.BundleError: the manifest names '../x', which is not a plain file name inside the bundle; refused (nothing was read)
>>> duckdb_path("/data/b[1]*", "log.parquet")
'/data/b[[]1][*]/log.parquet'
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError

__all__ = ["Limits", "check_name", "open_file", "read_small", "file_digest", "unlisted", "check_parquet",
           "ParquetCost", "duckdb_path", "show_name"]

_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MAX_DEPTH = 4
_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
          | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0))


@dataclass(frozen=True)
class Limits:
    """Size limits for reading a bundle. Pass larger ones to ``open_bundle(limits=)`` for a bigger bundle.

    ``max_page_bytes``: the largest decoded Parquet page, so the largest single entry or value
    (the writer puts up to ~100 MB of values in a page, plus one value). ``max_total_bytes``: all
    files on disk, and all decoded pages, each in total. ``max_manifest_bytes`` /
    ``max_text_bytes``: ``manifest.json`` / the checkpoint note and verifier key.
    """

    max_page_bytes: int = 256 << 20
    max_total_bytes: int = 64 << 30
    max_manifest_bytes: int = 8 << 20
    max_text_bytes: int = 64 << 10
    max_footer_bytes: int = 64 << 20
    max_pages: int = 1_000_000


def show_name(name: object, limit: int = 80) -> str:
    """A name as one short printable line (a hostile name may hold newlines or be huge)."""
    s = name if isinstance(name, str) else repr(name)
    s = s if s.isprintable() else repr(s)[1:-1]
    return s if len(s) <= limit else s[:limit] + "…"


def check_name(name: object) -> str:
    """``name`` if it is a plain relative file name inside a bundle (``a.parquet``, ``seg/0001.parquet``).

    Pure string check, made before any file system access: absolute paths, ``..``, hidden names,
    backslashes, drive letters and control characters are refused alike, whether or not they exist.
    """
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or len(parts) > _MAX_DEPTH or not all(_NAME_PART.fullmatch(p) for p in parts):
        raise BundleError(f"the manifest names '{show_name(name)}', which is not a plain file name inside the "
                          "bundle; refused (nothing was read)", damage="unsafe-file", file=None)
    return name


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return what
    return "not a regular file"


def _refuse(name: str, what: str) -> BundleError:
    return BundleError(f"{name} is {what}, not a regular file inside the bundle; refused without reading it "
                       "(bundles are read without following links)", damage="unsafe-file", file=name)


def open_file(root: Path, name: str) -> int:
    """A read-only descriptor of bundle file ``name`` under ``root``; the caller closes it.

    Raises :class:`BundleError` (``unsafe-file``) unless ``name`` is a safe name of a regular file
    reached through real folders only, and FileNotFoundError if it does not exist.
    """
    check_name(name)
    parts = name.split("/")
    folder = Path(root)
    for part in parts[:-1]:  # folders inside the bundle must be real folders, not links
        folder = folder / part
        mode = os.lstat(folder).st_mode
        if not stat.S_ISDIR(mode):
            raise _refuse(name, f"inside {_kind(mode)} ({part})")
    path = folder / parts[-1]
    before = os.lstat(path)
    if not stat.S_ISREG(before.st_mode):  # refused from lstat: a FIFO or device is never opened
        raise _refuse(name, _kind(before.st_mode))
    try:
        fd = os.open(path, _FLAGS)
    except OSError as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise _refuse(name, "a symbolic link (swapped in while opening)") from None  # ELOOP under O_NOFOLLOW
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise _refuse(name, "a file that changed while it was opened")
    return fd


def read_small(root: Path, name: str, limit: int) -> bytes:
    """The bytes of a small bundle file (manifest, note, key); BundleError ``oversized`` past ``limit``."""
    with os.fdopen(open_file(root, name), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(size + 1) if size <= limit else b""  # +1: a file growing while read
    if size > limit or len(data) > limit:
        raise BundleError(f"{name} has {size:,} bytes, more than the {limit:,} allowed; refused",
                          damage="oversized", file=name)
    return data


def file_digest(root: Path, name: str) -> tuple[str, int]:
    """SHA-256 (hex) and size of a bundle file, read through :func:`open_file`."""
    h = hashlib.sha256()
    n = 0
    with os.fdopen(open_file(root, name), "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)  # hashlib releases the GIL on large chunks
            n += len(chunk)
    return h.hexdigest(), n


def unlisted(root: Path, names: Iterable[str]) -> list[str]:
    """Entries under ``root`` that ``names`` does not list (files, links, pipes, folders), sorted.

    Nothing is opened or followed: folders are entered only when a listed name lies inside them.
    """
    listed = set(names)
    folders = {n.rsplit("/", k)[0] for n in listed for k in range(1, n.count("/") + 1)}
    out: list[str] = []
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(Path(root) / rel if rel else root) as it:
            for entry in it:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if name in folders and entry.is_dir(follow_symlinks=False):
                    todo.append(name)
                elif name not in listed:
                    out.append(name)
    return sorted(out)


def duckdb_path(root: str | os.PathLike, name: str) -> str:
    """The absolute path of a bundle file with glob characters escaped, so DuckDB reads exactly it."""
    path = os.path.join(os.path.abspath(root), name)
    return re.sub(r"[\[*?{]", lambda m: f"[{m.group()}]", path)


# ---------------------------------------------------------------- Parquet cost before decoding
@dataclass(frozen=True)
class ParquetCost:
    """What decoding a Parquet file would take: ``rows``, decoded bytes of all pages, largest page;
    and its top-level ``columns`` (a file written before a field existed lacks that column)."""

    rows: int
    decoded_bytes: int
    largest_page: int
    columns: tuple[str, ...] = ()


class _Short(Exception):
    """The buffer ended inside a Thrift structure: read more."""


def _varint(b: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if i >= len(b):
            raise _Short
        c = b[i]
        i += 1
        out |= (c & 0x7F) << shift
        if not c & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _skip(b: bytes, i: int, t: int, depth: int) -> int:
    """Skip one Thrift compact value of type ``t`` at ``b[i]``."""
    if depth > 16:
        raise ValueError("nesting too deep")
    if t in (1, 2):  # booleans live in the field header
        return i
    if t == 3:
        return i + 1
    if t in (4, 5, 6):
        return _varint(b, i)[1]
    if t == 7:
        return i + 8
    if t == 8:
        n, i = _varint(b, i)
        return i + n
    if t in (9, 10):  # list/set: size and element type in one byte (size 15: varint follows)
        if i >= len(b):
            raise _Short
        n, et = b[i] >> 4, b[i] & 15
        i += 1
        if n == 15:
            n, i = _varint(b, i)
        if et in (1, 2):
            return i + n  # booleans in a list take a byte each
        for _ in range(n):
            i = _skip(b, i, et, depth + 1)
            if i > len(b):
                raise _Short
        return i
    if t == 11:
        n, i = _varint(b, i)
        if n:
            if i >= len(b):
                raise _Short
            kt, vt = b[i] >> 4, b[i] & 15
            i += 1
            for _ in range(n):
                i = _skip(b, i, kt, depth + 1) if kt not in (1, 2) else i + 1
                i = _skip(b, i, vt, depth + 1) if vt not in (1, 2) else i + 1
                if i > len(b):
                    raise _Short
        return i
    if t == 12:
        return _struct(b, i, depth + 1, {})[1]
    raise ValueError(f"unknown Thrift type {t}")


def _struct(b: bytes, i: int, depth: int, want: dict) -> tuple[dict, int]:
    """Read a Thrift compact struct; keep the i32/i64 fields and sub-structs named in ``want``."""
    out: dict = {}
    last = 0
    while True:
        if i >= len(b):
            raise _Short
        head = b[i]
        i += 1
        if head == 0:
            return out, i
        t, delta = head & 15, head >> 4
        if delta:
            fid = last + delta
        else:
            v, i = _varint(b, i)
            fid = (v >> 1) ^ -(v & 1)
        last = fid
        if fid in want and want[fid] is None and t in (5, 6):  # an integer field we keep
            v, i = _varint(b, i)
            out[fid] = (v >> 1) ^ -(v & 1)
        elif isinstance(want.get(fid), dict) and t == 12:  # a sub-struct we look into
            out[fid], i = _struct(b, i, depth + 1, want[fid])
        else:
            i = _skip(b, i, t, depth)
        if i > len(b):
            raise _Short


# PageHeader: 1 type, 2 uncompressed_page_size, 3 compressed_page_size; num_values (field 1) of
# 5 data_page_header, 7 dictionary_page_header, 8 data_page_header_v2.
_PAGE_FIELDS = {1: None, 2: None, 3: None, 5: {1: None}, 7: {1: None}, 8: {1: None}}


def _page_header(fh, pos: int, end: int) -> tuple[dict, int]:
    want = 256
    while True:
        fh.seek(pos)
        buf = fh.read(min(want, end - pos))
        try:
            return _struct(buf, 0, 0, _PAGE_FIELDS)
        except _Short:
            if len(buf) < want or want >= 1 << 20:
                raise ValueError("a page header runs past the data") from None
            want *= 4


def _pages(fh, col, data_end: int) -> Iterator[int]:
    """Decoded size of every page a reader would read for column chunk ``col``.

    Follows the chunk until both its byte length and its value count are covered, so a footer
    that understates either cannot hide a page from the walk.
    """
    start = col.data_page_offset
    dict_off = col.dictionary_page_offset if col.has_dictionary_page else None
    if dict_off is not None and 4 <= dict_off < start:
        start = dict_off
    stop, want_values = start + col.total_compressed_size, col.num_values
    if col.total_compressed_size < 0 or want_values < 0:
        raise ValueError("a column chunk has a negative size or value count")
    pos, values = start, 0
    while pos < stop or values < want_values:
        if not 4 <= pos < data_end:
            raise ValueError("a column chunk points outside the file's data")
        head, n = _page_header(fh, pos, data_end)
        decoded, stored = head.get(2, -1), head.get(3, -1)
        if decoded < 0 or stored < 0:
            raise ValueError("a page header lacks its sizes")
        values += max(0, (head.get(5) or head.get(8) or {}).get(1, 0))
        yield decoded
        pos += n + stored


def check_parquet(root: Path, name: str, limits: Limits) -> ParquetCost:
    """Rows and decoded size of a bundle Parquet file, from its footer and page headers only.

    Raises :class:`BundleError`: ``oversized`` if a page (so a value) or the footer exceeds the
    limits, ``malformed-bundle`` if the file is not Parquet or its chunks point outside it,
    ``unsafe-file`` if a column chunk lives in another file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    def bad(msg: str, damage: str = "malformed-bundle") -> BundleError:
        return BundleError(f"{name}: {msg}; refused before decoding", damage=damage, file=name)

    with os.fdopen(open_file(root, name), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 12:
            raise bad("not a Parquet file")
        fh.seek(size - 8)
        tail = fh.read(8)
        if tail[4:] != b"PAR1":
            raise bad("not a Parquet file (or an encrypted one)")
        footer = int.from_bytes(tail[:4], "little")
        if footer > size - 12:
            raise bad("its footer length exceeds the file")
        if footer > limits.max_footer_bytes:
            raise bad(f"its footer has {footer:,} bytes, more than {limits.max_footer_bytes:,}", "oversized")
        try:
            fh.seek(0)
            meta = pq.ParquetFile(fh).metadata  # the footer only
        except (pa.ArrowException, OSError, ValueError) as e:
            raise bad(f"its footer does not parse ({type(e).__name__})") from None
        data_end = size - 8 - footer
        total = largest = pages = 0
        try:
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                for c in range(group.num_columns):
                    col = group.column(c)
                    if col.file_path:
                        raise bad("a column chunk refers to data in another file", "unsafe-file")
                    for decoded in _pages(fh, col, data_end):
                        pages += 1
                        largest = max(largest, decoded)
                        total += decoded
                        if decoded > limits.max_page_bytes:
                            raise bad(f"a page decodes to {decoded:,} bytes, more than the {limits.max_page_bytes:,} "
                                      "allowed for one page (one entry)", "oversized")
                        if total > limits.max_total_bytes or pages > limits.max_pages:
                            raise bad(f"its pages decode to more than {limits.max_total_bytes:,} bytes "
                                      f"or {limits.max_pages:,} pages", "oversized")
        except (ValueError, TypeError) as e:  # odd metadata values (None offsets, wrong Thrift types)
            raise bad(show_name(str(e), 120)) from None
    try:
        columns = tuple(dict.fromkeys(meta.schema.column(i).path.split(".")[0] for i in range(meta.num_columns)))
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise bad(f"its schema does not parse ({type(e).__name__})") from None
    return ParquetCost(meta.num_rows, total, largest, columns)
