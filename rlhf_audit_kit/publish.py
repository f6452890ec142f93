"""Publishing a live store: sign and export into a bundle folder on a schedule, while the store records.

DuckDB lets no other process read a store while its writer holds it. A :class:`Publisher` (from
:meth:`AuditStore.publish <rlhf_audit_kit.store.AuditStore.publish>`) makes the writer process
publish instead: every ``every`` seconds, if events were recorded since the last publication, it
signs a snapshot and exports it incrementally into ``folder`` (:mod:`rlhf_audit_kit.bundle_export`:
O(new events), earlier files never rewritten, the manifest replaced last). Other processes open,
verify (``bundle.verify(key, since=last_report)``) and read the folder meanwhile. ``folder`` may be
an fsspec URL (``s3://bucket/live``, with ``storage_options`` for its file system): each publication
then uploads the new segment and notes, and replaces the manifest last.

It runs in a background thread. An error there (a full disk, a fork refused) stops publishing
and is raised by the next :meth:`Publisher.publish_now` or :meth:`Publisher.stop`: never
swallowed. :meth:`Publisher.stop` (or leaving the ``with`` block) publishes what was recorded
since the last publication, unless an error is pending.

>>> import os, tempfile
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from rlhf_audit_kit.store import open_store
>>> from rlhf_audit_kit.ledger.checkpoint import Signer
>>> signer, d = Signer("example.com/log", Ed25519PrivateKey.generate()), tempfile.mkdtemp()
>>> store = open_store(os.path.join(d, "a.duckdb"), pseudonymize=False)
>>> with store.publish(os.path.join(d, "live"), signer, every=60) as publisher:
...     _ = store.extend([{"kind": "dataset", "name": "hh", "version": "1"}])
>>> publisher.published.size, publisher.publications
(2, 2)
>>> store.close()
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .bundle_export import write_bundle
from .bundle_files import is_url, shown_url
from .ledger.snapshot import Snapshot, resolve_signer

__all__ = ["Publisher"]


class Publisher:
    """Signs and exports a store incrementally into ``folder`` every ``every`` seconds; see the module.

    ``published``: the last published :class:`~rlhf_audit_kit.ledger.snapshot.Snapshot` (its note
    is what readers verify against); ``publications``: how many were published (the first one is
    made when the publisher starts, so the folder exists at once). ``verify``: verify each
    publication (since the previous one) before it is published. ``folder``: a folder, or an fsspec
    URL whose file system takes ``storage_options``.
    """

    def __init__(self, store, folder: str | os.PathLike, signer: Any = None, *, every: float = 10.0,
                 verify: bool = True, passphrase: str | None = None, storage_options: dict | None = None):
        if not every > 0:
            raise ValueError(f"every must be a positive number of seconds, got {every!r}")
        self.folder: Path | str = folder if is_url(folder) else Path(folder)
        self.store, self.every, self.verify = store, float(every), verify
        self.storage_options = storage_options
        self.signer = resolve_signer(signer, store, passphrase)
        self.published: Snapshot | None = None
        self.publications = 0
        self._lock = threading.Lock()  # one publication at a time
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._publish()
        self._thread = threading.Thread(target=self._run, name=f"rlhf-audit-publish {self._shown}", daemon=True)
        self._thread.start()
        store._attached.add(self)  # store.close() stops it (and publishes what is left) first

    @property
    def _shown(self) -> str:
        return shown_url(self.folder) if isinstance(self.folder, str) else str(self.folder)

    def _due(self) -> bool:
        # a publication records a snapshot event: only events after it call for another one
        return self.published is None or self.store.size > self.published.seq + 1

    def _publish(self) -> Snapshot | None:
        with self._lock:
            if self._due():
                snap = self.store.snapshot(self.signer)
                write_bundle(self.store, snap, self.folder, verifier=self.signer.verifier, verify=self.verify,
                             storage_options=self.storage_options)
                self.published = snap
                self.publications += 1
            return self.published

    def _run(self) -> None:
        while not self._stopped.wait(self.every):
            try:
                self._publish()
            except BaseException as e:  # noqa: BLE001 - kept and raised by the next call: never swallowed
                self._error = e
                return

    def _raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def running(self) -> bool:
        """True while the background thread publishes (False after :meth:`stop` or an error)."""
        return self._thread.is_alive()

    def publish_now(self) -> Snapshot | None:
        """Publish now if anything was recorded since the last publication; return the last published snapshot.

        Raises the error that stopped the background thread, if any.
        """
        self._raise_pending()
        return self._publish()

    def stop(self, *, final: bool = True) -> Snapshot | None:
        """Stop the background thread; with ``final``, publish what is left. Raises a pending error."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.store._attached.discard(self)
        self._raise_pending()
        return self._publish() if final else self.published

    def close(self) -> None:
        """Stop and publish what is left (what ``store.close()`` calls)."""
        if self.store._attached and self in self.store._attached:
            self.stop()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.stop()
        else:  # leave the caller's exception alone; a publishing error would hide it
            self._stopped.set()
            self._thread.join()
            self.store._attached.discard(self)

    def __repr__(self) -> str:
        size = self.published.size if self.published else None
        return (f"Publisher({self._shown!r}, every={self.every}s, published size={size}, "
                f"{'running' if self.running else 'stopped'})")
