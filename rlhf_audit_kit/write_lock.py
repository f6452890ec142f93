"""Process-wide write coordination of store files: one lock and one committed size per file.

DuckDB's file lock keeps other processes out, but inside one process every connection to a file
shares one database, and DuckDB cannot tell two handles of it apart. ``open_store`` returns the
open store for a path, yet a reloaded module or a second copy of the kit has its own registry.
So each write takes the file's lock from a table that lives outside any module (in
``sys.modules``, which a reload keeps) and reads the next seq from it: no SQL statement per write,
which is what a single ``append`` is sensitive to.

A file is known by its device and inode, so a second path to it (a symbolic or hard link) is the
same file. The committed size is re-read from the log when a handle opens (under the lock, so no
write of this process is half done then): another process may have written while none was open.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "f")
>>> open(path, "w").close()
>>> w = file_writer(path)
>>> w.refresh(lambda: 0)
True
>>> w.try_acquire(), w.size
(True, 0)
>>> w.release(10); w.size
10
"""
from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Callable

_TABLE = "rlhf_audit_kit._process_writers"  # the one name every copy of the kit agrees on


def _table() -> types.ModuleType:
    mod = sys.modules.get(_TABLE)
    if mod is None:
        fresh = types.ModuleType(_TABLE, "write locks of rlhf-audit-kit stores in this process")
        fresh.files = {}
        fresh.guard = threading.Lock()
        mod = sys.modules.setdefault(_TABLE, fresh)
    return mod


class FileWriter:
    """The write lock and committed size of one store file (held in the process-wide table).

    Copies of this module may share an instance made by another copy: only ``lock``, ``size`` and
    ``pending`` (plain attributes) are used across copies.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.size: int | None = None
        # Merkle nodes (level, idx) -> hash over the last few leaves, not yet in the file's
        # merkle_node table (see rlhf_audit_kit.ledger.levels.NODE_TAIL); changed under ``lock``.
        self.pending: dict[tuple[int, int], bytes] = {}

    def refresh(self, read_size: Callable[[], int], timeout: float = 60.0) -> bool:
        """Set the committed size from ``read_size()`` (a count of the log) while no write of this
        process is under way; False if a write held the lock for ``timeout`` seconds."""
        if not self.lock.acquire(timeout=timeout):
            return False
        try:
            self.size = int(read_size())
        finally:
            self.lock.release()
        return True

    def try_acquire(self) -> bool:
        """Take the lock for one write; False if another handle of the file is writing now."""
        return self.lock.acquire(blocking=False)

    def release(self, committed: int | None = None) -> None:
        """End a write: ``committed`` is the new size after a COMMIT, None after a rollback."""
        if committed is not None:
            self.size = int(committed)
        self.lock.release()


def file_writer(path: str | os.PathLike) -> FileWriter:
    """The :class:`FileWriter` of the file at ``path`` (which must exist), shared by this process."""
    st = os.stat(path)
    table = _table()
    with table.guard:
        return table.files.setdefault((st.st_dev, st.st_ino), FileWriter())
