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

:class:`BundleFiles` applies the same checks to a bundle behind an fsspec URL (``s3://``, ``gs://``,
``memory://``): only named objects (never a prefix), byte-limited small files, the Parquet cost check
on the remote file (:func:`check_parquet_file` takes any open binary file), and a DuckDB connection
that reads only the objects listed when the bundle was opened. It pickles, for worker processes.

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

import functools
import hashlib
import io
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import AuditKitError, BundleError

__all__ = ["Limits", "check_name", "open_file", "read_small", "file_digest", "unlisted", "check_parquet",
           "check_parquet_file", "ParquetCost", "duckdb_path", "show_name", "BundleFiles", "is_url",
           "local_path", "shown_url", "read_bundle_parquet", "ATOMIC_PUT"]

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
    """Rows and decoded size of bundle Parquet file ``name`` in local folder ``root``; see
    :func:`check_parquet_file`."""
    with os.fdopen(open_file(root, name), "rb") as fh:
        return check_parquet_file(fh, os.fstat(fh.fileno()).st_size, name, limits)


def check_parquet_file(fh: BinaryIO, size: int, name: str, limits: Limits) -> ParquetCost:
    """Rows and decoded size of the Parquet file open as ``fh`` (``size`` bytes), from its footer and
    page headers only (a local file or an fsspec one: only ``seek`` and ``read`` are used).

    Raises :class:`BundleError`: ``oversized`` if a page (so a value) or the footer exceeds the
    limits, ``malformed-bundle`` if the file is not Parquet or its chunks point outside it,
    ``unsafe-file`` if a column chunk lives in another file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    def bad(msg: str, damage: str = "malformed-bundle") -> BundleError:
        return BundleError(f"{name}: {msg}; refused before decoding", damage=damage, file=name)

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


# ---------------------------------------------------------------- where a bundle lives: a folder or an fsspec URL
#: Protocols whose object PUT is atomic (an object appears whole or not at all, also for multipart
#: uploads): writers put files in place there; elsewhere they write aside and move.
ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
_GLOB = re.compile(r"[\[*?{]")
_PAGE_BLOCK = 1 << 20  # read-ahead of a remote Parquet file: page headers come a few per request
_WHOLE = 8 << 20  # a remote file this small is read with one request (each request costs a round trip)


def local_path(location: str | os.PathLike) -> str | None:
    """The local path ``location`` names (a path, or a ``file://`` URL), or None for another URL.

    >>> local_path("file:///tmp/b"), local_path("b/"), local_path("s3://bucket/b")
    ('/tmp/b', 'b/', None)
    """
    if not isinstance(location, str):
        return os.fspath(location)
    if "://" not in location:
        return location
    protocol, rest = location.split("://", 1)
    return rest if protocol in ("file", "local") else None


def is_url(location: object) -> bool:
    """True if ``location`` is an fsspec URL of a non-local file system (``s3://b/x``, ``memory://x``).

    Plain paths and ``file://`` URLs are local folders, read with every check of this module.

    >>> is_url("s3://bucket/bundle"), is_url("file:///tmp/b"), is_url("bundle/")
    (True, False, False)
    """
    return isinstance(location, str) and local_path(location) is None


def shown_url(url: str) -> str:
    """``url`` without a ``user:password@`` part: a URL may carry credentials, which are never shown.

    >>> shown_url("https://me:s3cret@host/b"), shown_url("s3://bucket/b")
    ('https://host/b', 's3://bucket/b')
    """
    return re.sub(r"(://)[^/@]*@", r"\1", url)


class BundleFiles:
    """The files of one bundle, in a local folder or behind an fsspec URL, read only as this module allows.

    A local folder (a path or a ``file://`` URL) is read with :func:`open_file` and its siblings: no
    link followed, regular files only. Any other URL (``s3://``, ``gs://``, ``memory://``) is read
    through fsspec: an object store has no links, FIFOs or devices, so a named entry must be a file
    (an object, not a prefix); manifest and notes are read with a byte limit, and every Parquet file
    is checked with :func:`check_parquet_file` before anything decodes it. ``storage_options`` go to
    the file system (credentials normally come from its own environment and config files); they are
    never shown: ``repr`` names only the URL, without a ``user:password@`` part.

    Picklable: the file system is made again from ``url`` and ``storage_options`` where the object
    is unpickled (a Dask worker), so ship this object, not an open file.

    >>> files = BundleFiles("memory://doc-example/bundle")
    >>> files.fs.pipe_file(files.path("manifest.json"), b"{}")
    >>> files.read_small("manifest.json", 100), files.url, files.local
    (b'{}', 'memory://doc-example/bundle', False)
    >>> files.read_small("manifest.json", 1)
    Traceback (most recent call last):
    ...
    rlhf_audit_kit.errors.BundleError: manifest.json has more than the 1 bytes allowed; refused
    """

    def __init__(self, location: str | os.PathLike, storage_options: dict[str, Any] | None = None,
                 limits: Limits | None = None):
        if not isinstance(location, (str, os.PathLike)):
            raise TypeError(f"a bundle location is a path or a URL, not {type(location).__name__}")
        local = local_path(location)
        self.limits = limits or Limits()
        self.local = local is not None
        self._fs: Any = None
        self._root = ""
        self._listing: dict[str, dict] | None = None
        if self.local:
            #: the local real path (the caller's own path may hold links; inside the bundle none is followed)
            self.url: str = os.path.realpath(local)
            self.storage_options: dict[str, Any] = {}
        else:
            self.url = location.rstrip("/")
            self.storage_options = dict(storage_options or {})
            if _GLOB.search(self.url.split("://", 1)[1]):  # fsspec and DuckDB would expand them
                raise AuditKitError(f"the bundle URL {shown_url(self.url)!r} holds a glob character ([, *, ?, {{); "
                                    "refused (copy the bundle under a plain name)")

    # ------------------------------------------------------------ identity
    @property
    def shown(self) -> str:
        """The location as shown to people: the local path, or the URL without credentials."""
        return self.url if self.local else shown_url(self.url)

    @property
    def root(self) -> Path:
        """The local folder (local bundles only)."""
        if not self.local:
            raise AuditKitError(f"{self.shown} is not a local folder")
        return Path(self.url)

    @property
    def protocol(self) -> str:
        """``file`` for a local folder, else the URL's protocol (``s3``, ``memory``, ...)."""
        return "file" if self.local else self.url.split("://", 1)[0].split("::")[-1]

    @property
    def fs(self) -> Any:
        """The fsspec file system (made on first use, also after unpickling)."""
        if self._fs is None:
            try:
                import fsspec.core
            except ImportError:
                raise AuditKitError(f"{self.shown}: bundles behind a URL need fsspec (and the file system's package, "
                                    "e.g. s3fs): pip install 'rlhf-audit-kit[s3]'") from None
            if self.local:
                self._fs, self._root = fsspec.filesystem("file"), self.url
            else:
                try:
                    self._fs, self._root = fsspec.core.url_to_fs(self.url, **self.storage_options)
                except (ImportError, ValueError, TypeError) as e:  # unknown protocol, missing package, bad option
                    raise AuditKitError(f"cannot open {self.shown}: {show_name(str(e), 200)}") from None
                self._root = self._root.rstrip("/")
        return self._fs

    @property
    def root_path(self) -> str:
        """The file system path of the bundle (its folder, or the URL without the protocol)."""
        self.fs
        return self._root

    def path(self, name: str) -> str:
        """The file system path of bundle file ``name`` (checked to be a plain name inside the bundle first)."""
        check_name(name)
        if self.local:
            return os.path.join(self.url, name)
        self.fs
        return f"{self._root}/{name}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None, "_listing": None}

    def __repr__(self) -> str:
        return f"BundleFiles({self.shown!r})"

    # ------------------------------------------------------------ reading (every name checked first)
    def _remote(self, name: str, call):
        """``call()`` with the file system's errors as the kit's: missing stays FileNotFoundError."""
        try:
            return call()
        except (FileNotFoundError, PermissionError, AuditKitError):
            raise
        except IsADirectoryError:
            raise BundleError(f"{name} is a folder, not a file of the bundle; refused without reading it",
                              damage="unsafe-file", file=name) from None
        except Exception as e:  # noqa: BLE001 - network, credentials, odd objects: one line, no traceback
            raise AuditKitError(f"cannot read {name} of {self.shown} ({show_name(f'{type(e).__name__}: {e}', 200)})"
                                ) from None

    def _info(self, name: str, *, fresh: bool = False) -> dict:
        full = self.path(name)
        if not fresh and self._listing is not None:  # listed after the manifest was read: absent is missing
            info = self._listing.get(full)
            if info is None:
                raise FileNotFoundError(f"{name} is missing")
        else:
            info = self._remote(name, lambda: _fresh_info(self.fs, full))
        if info.get("type") != "file":
            kind = info.get("type")
            what = "a folder" if kind == "directory" else f"an entry of type {show_name(kind, 20)}"
            raise BundleError(f"{name} is {what}, not a file of the bundle; refused without reading it",
                              damage="unsafe-file", file=name)
        if type(info.get("size")) is not int or info["size"] < 0:
            raise BundleError(f"{name} has no size; refused without reading it", damage="malformed-bundle", file=name)
        return info

    def list_files(self) -> dict[str, int]:
        """``{name: size}`` of every object under the bundle (remote only; one listing, kept for :meth:`size`)."""
        def find():
            self.fs.invalidate_cache(self._root)
            return self.fs.find(self._root, withdirs=True, detail=True)
        found = self._remote("the bundle's listing", find)
        self._listing = {k.rstrip("/"): v for k, v in found.items()}
        cut = len(self._root) + 1
        return {k[cut:]: v.get("size", 0) for k, v in self._listing.items()
                if v.get("type") == "file" and k.startswith(self._root + "/")}

    def size(self, name: str) -> int:
        """Bytes of bundle file ``name``: BundleError unless it is a regular file (an object, remotely)."""
        if self.local:
            with os.fdopen(open_file(self.root, name), "rb") as fh:
                return os.fstat(fh.fileno()).st_size
        return self._info(name)["size"]

    def exists(self, name: str) -> bool:
        """True if an entry ``name`` exists (of any type: reading it checks the type)."""
        if self.local:
            return os.path.lexists(self.path(name))
        full = self.path(name)
        try:
            self._remote(name, lambda: _fresh_info(self.fs, full))
        except FileNotFoundError:
            return False
        return True

    def is_regular(self, name: str) -> bool:
        """True if ``name`` is a regular file (lstat locally: no link followed)."""
        try:
            if self.local:
                return stat.S_ISREG(os.lstat(self.path(name)).st_mode)
            self._info(name)
            return True
        except (FileNotFoundError, BundleError):
            return False

    def open(self, name: str, *, block_size: int = _PAGE_BLOCK) -> BinaryIO:
        """Bundle file ``name`` opened for binary reading (the caller closes it); checked as :meth:`size`."""
        if self.local:
            return os.fdopen(open_file(self.root, name), "rb")
        info = self._info(name)
        return self._remote(name, lambda: _open_remote(self.fs, self.path(name), info, block_size))

    def _whole(self, name: str, size: int) -> bytes:
        """The bytes of a (small) remote file of known ``size`` in one ranged GET: a range needs no
        request to learn the size, which a file system may answer from a listing another thread made."""
        return self._remote(name, lambda: self.fs.cat_file(self.path(name), start=0, end=size)) if size else b""

    def read_small(self, name: str, limit: int) -> bytes:
        """The bytes of a small bundle file (manifest, note, key); BundleError ``oversized`` past ``limit``."""
        if self.local:
            return read_small(self.root, name, limit)
        full = self.path(name)

        def get() -> bytes:  # one ranged GET: the object as it is now (manifest and note copy are replaced)
            try:
                return self.fs.cat_file(full, start=0, end=limit + 1)
            except FileNotFoundError:
                raise
            except OSError:  # S3 answers a range over an empty object with an error
                if self._info(name, fresh=True)["size"] == 0:
                    return b""
                raise
        data = self._remote(name, get)
        if len(data) > limit:
            raise BundleError(f"{name} has more than the {limit:,} bytes allowed; refused", damage="oversized",
                              file=name)
        return data

    def digest(self, name: str) -> tuple[str, int]:
        """SHA-256 (hex) and size of bundle file ``name``."""
        if self.local:
            return file_digest(self.root, name)
        size = self.size(name)
        if size <= _WHOLE:
            data = self._whole(name, size)
            return hashlib.sha256(data).hexdigest(), len(data)
        h, n = hashlib.sha256(), 0
        with self.open(name, block_size=8 << 20) as fh:
            while chunk := self._remote(name, lambda: fh.read(1 << 22)):
                h.update(chunk)
                n += len(chunk)
        return h.hexdigest(), n

    def check_parquet(self, name: str) -> ParquetCost:
        """:func:`check_parquet_file` on bundle file ``name`` (footer and page headers only)."""
        if self.local:
            return check_parquet(self.root, name, self.limits)
        size = self.size(name)
        if size <= _WHOLE:
            data = self._whole(name, size)
            return check_parquet_file(io.BytesIO(data), len(data), name, self.limits)
        with self.open(name) as fh:
            return self._remote(name, lambda: check_parquet_file(fh, size, name, self.limits))

    def read_parquet(self, name: str, columns: list[str] | None = None) -> tuple[Any, str]:
        """``(pyarrow Table, SHA-256 hex)`` of bundle Parquet file ``name``.

        The file is read once; the very bytes decoded are first checked (:func:`check_parquet_file`)
        and hashed, so compare the digest with the manifest's: nothing can change in between.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq
        size = self.size(name)
        if size > self.limits.max_total_bytes:
            raise BundleError(f"{name} has {size:,} bytes, more than {self.limits.max_total_bytes:,}; refused",
                              damage="oversized", file=name)
        with self.open(name, block_size=8 << 20) as fh:
            data = self._remote(name, lambda: fh.read(self.limits.max_total_bytes + 1))
        check_parquet_file(io.BytesIO(data), len(data), name, self.limits)
        try:
            table = pq.read_table(pa.BufferReader(data), columns=columns)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise BundleError(f"{name} does not decode ({show_name(str(e), 120)})", file=name) from None
        return table, hashlib.sha256(data).hexdigest()

    def unlisted(self, names: Iterable[str], *, expand: Iterable[str] = ()) -> list[str]:
        """Entries under the bundle that ``names`` does not list; see :func:`unlisted`.

        Remotely from one listing: an unlisted object is named at the first level of its path that is
        not a folder of a listed name (or one of ``expand``), as :func:`unlisted` names a local entry.
        """
        if self.local:
            return unlisted(self.root, names)
        listed = set(names)
        folders = {n.rsplit("/", k)[0] for n in listed for k in range(1, n.count("/") + 1)} | set(expand)
        out = set()
        for rel in self.list_files():
            if rel in listed:
                continue
            parts = rel.split("/")
            out.add(next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) not in folders),
                         rel))
        return sorted(out)

    # ------------------------------------------------------------ DuckDB
    def duckdb_path(self, name: str) -> str:
        """The path DuckDB reads bundle file ``name`` by (glob characters escaped locally)."""
        if self.local:
            return duckdb_path(self.url, name)
        return self.fs.unstrip_protocol(self.path(name))

    def connect(self) -> Any:
        """An in-memory DuckDB connection that reads this bundle's files by :meth:`duckdb_path`.

        Remotely through :class:`_ListedFiles` (``register_filesystem``): DuckDB sees only the
        objects of the listing taken when the bundle was opened, never an extension it would load
        (or download) for the protocol on its own; what it read of a file (blocks, footers) is kept
        for the connection's later queries (segment files never change), so a verification reads
        each object about once.
        """
        import duckdb
        con = duckdb.connect(":memory:")
        try:
            if not self.local:
                for setting in ("autoinstall_known_extensions = false", "autoload_known_extensions = false",
                                "parquet_metadata_cache = true", "validate_external_file_cache = 'NO_VALIDATION'"):
                    con.execute(f"SET {setting}")
                con.register_filesystem(_listed_files_class()(self))
        except BaseException:
            con.close()
            raise
        return con


def _fresh_info(fs: Any, path: str) -> dict:
    """``fs.info`` asked of the store itself, not of a cached listing (s3fs caches listings per file
    system object, which other threads share and refill: the manifest is replaced, new files appear)."""
    try:
        return fs.info(path, refresh=True)
    except TypeError:  # a file system without the option keeps no listing cache to refresh
        return fs.info(path)


def _open_remote(fs: Any, path: str, info: dict, block_size: int) -> BinaryIO:
    """``fs.open`` for reading, given what the listing said of the file (``info``): the file system
    would otherwise look it up, from a listing cache that other threads share and refill (s3fs asks
    for it on every read), and could find a newer file missing."""
    import inspect
    kw = {"size": info["size"]} if "size" in inspect.signature(type(fs)._open).parameters else {}
    f = fs.open(path, "rb", block_size=block_size, cache_type="readahead", **kw)
    if isinstance(getattr(type(f), "details", None), property) and type(f).details.fset is not None:
        f.details = info
    if isinstance(getattr(f, "read_kw", None), dict) and info.get("ETag") and not getattr(fs, "local_expiry_check", 1):
        f.read_kw = {**f.read_kw, "IfMatch": info["ETag"]}  # s3fs: reads fail if the object was replaced since
    return f


@functools.lru_cache(maxsize=None)
def _listed_files_class() -> type:
    """:class:`_ListedFiles`, defined on first use (fsspec is imported only for a remote bundle)."""
    from fsspec import AbstractFileSystem

    class _ListedFiles(AbstractFileSystem):
        """What DuckDB may read of a remote bundle: the objects listed when it was opened.

        Metadata (glob, info, size, modified) comes from that listing, so DuckDB's many calls per
        query cost no request; files open through the bundle's own file system. A path outside
        the listing does not exist here.
        """

        cachable = False  # one per bundle: never shared through fsspec's instance cache

        def __init__(self, files: BundleFiles):
            super().__init__()
            self.protocol = files.fs.protocol  # DuckDB routes the protocol's paths here
            self._files = files

        def _entry(self, path: str) -> dict:
            info = (self._files._listing or {}).get(self._files.fs._strip_protocol(path).rstrip("/"))
            if info is None:
                raise FileNotFoundError(path)
            return info

        def info(self, path, **kwargs):
            return self._entry(path)

        def ls(self, path, detail=True, **kwargs):
            info = self._entry(path)
            return [info] if detail else [info["name"]]

        def glob(self, path, **kwargs):  # exact names only: the kit escapes nothing, it names files
            try:
                return [self._entry(path)["name"]]
            except FileNotFoundError:
                return []

        def modified(self, path):
            import datetime as dt
            info = self._entry(path)
            when = info.get("LastModified") or info.get("mtime") or info.get("created")
            if isinstance(when, dt.datetime):
                return when
            return dt.datetime.fromtimestamp(when if isinstance(when, (int, float)) else 0, dt.timezone.utc)

        def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
            if mode != "rb":
                raise PermissionError(f"{path}: a bundle is read-only")
            info = self._entry(path)
            if info.get("type") != "file":
                raise IsADirectoryError(path)
            return _open_remote(self._files.fs, info["name"], info, block_size or 8 << 20)

    return _ListedFiles


def read_bundle_parquet(url: str, storage_options: dict[str, Any] | None, name: str, limits: Limits | None = None,
                        columns: list[str] | None = None) -> tuple[Any, str]:
    """``(pyarrow Table, SHA-256 hex)`` of Parquet file ``name`` of the bundle at ``url`` (see
    :meth:`BundleFiles.read_parquet`): a plain function for a Dask worker, given what pickles well.

    >>> # client.submit(read_bundle_parquet, bundle.url, bundle.storage_options, seg.log_file, bundle.limits)
    """
    return BundleFiles(url, storage_options, limits).read_parquet(name, columns)
