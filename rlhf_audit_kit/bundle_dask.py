"""Verification of a bundle on a Dask cluster: the segments are re-derived in parallel on the workers.

``bundle.verify(key, scheduler=client)`` (a ``dask.distributed.Client`` or a scheduler address)
sends one task per run of consecutive segments (about sixteen tasks per worker thread): a worker opens
their Parquet files from the bundle's URL (:class:`~rlhf_audit_kit.bundle_files.BundleFiles`,
picklable: local folder or fsspec URL) and runs :func:`rlhf_audit_kit.segment_verify.derive_segment`
on them, the code a local verification of a large bundle runs in its own worker processes. The
worker keeps the range's Merkle nodes; only its summary and the few nodes the signed roots need come
back, and the client makes the report as a whole verification does
(:class:`~rlhf_audit_kit.segment_verify.SegmentRunner`): same findings, same first bad seq.

>>> # from dask.distributed import Client
>>> # open_bundle("s3://audit/run-7").verify(key, scheduler=Client("tcp://scheduler:8786")).ok
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from .errors import AuditKitError
from .ledger.verify import VerifyReport, resolve_verifiers
from .segment_verify import Node, SegmentRunner, _nodes, _Piece, _summary, derive_segment

__all__ = ["verify_on_dask", "derive_segment"]


class DaskBackend:
    """Tasks run on a Dask cluster; each derived range stays on the worker that derived it."""

    name = "dask"

    def __init__(self, client, files: Any):
        self.client, self.files = client, files

    def parallelism(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def start(self, events: int, tasks: int) -> None:
        pass

    def processes(self) -> int:
        return self.parallelism()

    def derive(self, tables: Mapping, start: int, end: int | None):
        # workers=0 (no hashing processes), threads=1 (a task a core), positional: submit's own workers=
        # keyword means worker restrictions
        return self.client.submit(derive_segment, self.files, tables, start, end, 0, 1, pure=False)

    def as_completed(self, handles: Sequence) -> Iterator:
        from dask.distributed import as_completed
        return as_completed(handles)

    def summaries(self, handles: Sequence) -> list[_Piece]:
        return self.client.gather([self.client.submit(_summary, h) for h in handles])

    def nodes(self, asks: Iterable[tuple[Any, Sequence[Node]]]) -> dict[Node, bytes]:
        got = self.client.gather([self.client.submit(_nodes, h, wanted, pure=False) for h, wanted in asks])
        return {nd: h for part in got for nd, h in part.items()}

    def cancel(self, handles: Sequence) -> None:
        if handles:
            self.client.cancel(list(handles))

    def close(self) -> None:
        pass


def _client(scheduler: Any) -> tuple[Any, bool]:
    """(client, whether this call made it) for a Client, a cluster or a scheduler address."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise AuditKitError("verifying on a Dask cluster (scheduler=) needs Dask: install the dask extra, "
                            "pip install 'rlhf-audit-kit[dask]'") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    if isinstance(scheduler, str) or hasattr(scheduler, "scheduler_address"):
        try:
            return Client(scheduler, set_as_default=False, timeout="20s"), True
        except (OSError, TimeoutError, ValueError) as e:
            where = scheduler if isinstance(scheduler, str) else scheduler.scheduler_address
            raise AuditKitError(f"cannot reach the Dask scheduler at {where} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else 'no answer'}); start it, or pass "
                                "the address it prints (tcp://HOST:8786)") from None
    raise AuditKitError(f"scheduler= takes a dask.distributed.Client or a scheduler address "
                        f"(tcp://HOST:8786), not {type(scheduler).__name__}")


def verify_on_dask(bundle, verifiers: Any, scheduler: Any, *, trusted: tuple[int, bytes] | None = None,
                   progress: bool | None = None) -> VerifyReport:
    """Verify ``bundle`` on the Dask cluster of ``scheduler`` (a Client or an address); the report
    is the one :meth:`Bundle.verify` gives locally. ``trusted``: (size, root) for ``since=``."""
    client, own = _client(scheduler)
    v = resolve_verifiers(verifiers)
    files = getattr(bundle, "files", None) or str(bundle._root)  # Bundle.files: local or fsspec
    run = SegmentRunner(bundle, DaskBackend(client, files), progress=progress)
    try:
        if trusted is None:
            return bundle._verify(v, bundle.segments, None, run=run)
        return bundle._verify_since(v, *trusted, None, run=run)
    finally:
        if own:
            client.close()
