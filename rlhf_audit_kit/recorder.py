"""Live recording: log events as they happen; a background thread writes them in groups.

``rec.log(event)`` checks the one event at once (plain Python, a few microseconds: a bad event
raises :class:`~rlhf_audit_kit.ValidationError` naming the field, and nothing else is lost), queues
it and returns without waiting for the disk. A writer thread commits the queue through the store's
batch path (one transaction per group) when ``batch_size`` events wait or the oldest has waited
``interval`` seconds, whichever comes first. The queue is bounded: when ``max_queue`` events wait,
``log`` blocks until the writer catches up (backpressure); no event is ever dropped.

What survives a crash: every event logged before a ``flush()`` that returned is in the store
(committed: it survives ``kill -9`` and power loss as any committed DuckDB transaction does). Events
only queued (logged after the last returned ``flush``) may be lost if the process dies: at most
the events of the last ``interval`` seconds, or of the queue when the writer falls behind.
``close()``, leaving the ``with`` block, closing the store and a normal interpreter exit flush.

Errors are never swallowed. A failure in the writer thread is raised by the next ``log``,
``flush`` or ``close``: an event the store refuses (a unique key such as ``(run_id, step)`` already
written: ``log`` refuses at once only duplicates of events still queued) is left out alone and
reported as ``ValidationError`` with ``row`` = the event's index among those logged by this
recorder; any other failure stops the recorder.

>>> import tempfile, os
>>> from rlhf_audit_kit import open_store
>>> store = open_store(os.path.join(tempfile.mkdtemp(), "live.duckdb"), pseudonymize=False)
>>> with store.recorder(interval=0.05) as rec:
...     for step in range(3):
...         rec.log({"kind": "train_step", "run_id": "run-1", "algorithm": "dpo", "step": step,
...                  "metrics": {"loss": 1.0 / (step + 1), "rewards/margins": 0.1 * step}})
...     rec.flush()                      # durable from here on
>>> store.sql("SELECT count(*) AS n FROM train_step").item()
3
>>> store.close()
"""
from __future__ import annotations

import atexit
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import polars as pl
import pyarrow as pa

from .errors import AuditKitError, ValidationError
from .schema import Kind
from .single import check_event
from .validate import DTYPES, ROW, normalise

__all__ = ["Recorder"]

_ARROW_MAP = {"map_float": pa.float64(), "map_int": pa.int64()}
SMALL_GROUP = 64  # up to this many events a group is written event by event (store._append_events)


class Recorder:
    """Buffered, non-blocking logging of events into an :class:`~rlhf_audit_kit.AuditStore`.

    Make one with ``store.recorder(...)``; use it as a context manager or call :meth:`close`.

    Parameters
    ----------
    store
        The store to write to (open for writing).
    batch_size
        Events per group: the writer commits as soon as this many wait (default 8,192).
    interval
        Seconds the oldest queued event may wait before the writer commits (default 0.2).
    max_queue
        Events that may wait; beyond it ``log`` blocks until the writer catches up (default 65,536).
    kind
        Default kind for events without a ``kind`` key.
    """

    def __init__(self, store: Any, *, batch_size: int = 8_192, interval: float = 0.2, max_queue: int = 65_536,
                 kind: str | None = None):
        store._check_writable()
        if batch_size < 1 or max_queue < batch_size or interval <= 0:
            raise ValueError("need batch_size >= 1, max_queue >= batch_size and interval > 0")
        self._store = store
        self._batch, self._interval, self._max = int(batch_size), float(interval), int(max_queue)
        self._kind = kind
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[tuple[Kind, dict, int]] = []  # (kind, normal values, index among logged events)
        self._oldest = 0.0  # monotonic time the oldest queued event was logged
        self._logged = 0  # events accepted by log()
        self._done = 0  # events the writer has finished with (committed or refused)
        self._flush_to = 0  # flush() waits until _done reaches this
        self._seen: dict[tuple[str, tuple[str, ...]], set] = {}  # unique keys of the queued events
        self._refused: list[ValidationError] = []  # events the store refused, for the next call to raise
        self._fatal: BaseException | None = None
        self._closing = self._closed = False
        self._thread = threading.Thread(target=self._run, name="rlhf-audit-recorder", daemon=True)
        self._thread.start()
        store._attached.add(self)
        _OPEN.add(self)

    # ------------------------------------------------------------------ the caller's side
    def log(self, event: Mapping[str, Any], kind: str | None = None) -> None:
        """Check one event and queue it; returns without waiting for the disk (unless the queue is full)."""
        spec, values = check_event(event, kind or self._kind, row=self._logged)
        if spec.internal:
            raise ValidationError(self._logged, "kind", f"{spec.name!r} events are written by the kit itself")
        if self._store._pseudonymize and any(f.person and values[f.name] is not None for f in spec.fields):
            self._store.pseudonymizer  # no key: KeysError now, not in the writer
        with self._cond:
            while len(self._queue) >= self._max and self._fatal is None and not self._closing:
                self._cond.wait()  # backpressure: the writer is behind
            self._raise_errors("log")
            if self._closing:
                raise AuditKitError("this recorder is closed")
            keys = []
            for cols in spec.unique:
                key = tuple(values[c] for c in cols)
                if None not in key:
                    seen = self._seen.setdefault((spec.name, cols), set())
                    if key in seen:
                        raise ValidationError(self._logged, cols[0],
                                              f"duplicate {'/'.join(cols)}: already queued")
                    keys.append((seen, key))
            for seen, key in keys:
                seen.add(key)
            if not self._queue:
                self._oldest = time.monotonic()
                self._cond.notify_all()
            self._queue.append((spec, values, self._logged))
            self._logged += 1
            if len(self._queue) == self._batch:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Return once every event logged before this call is committed to the store (durable).

        Raises what the writer met since the last call; ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._raise_errors("flush")
            target = self._logged
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            while self._done < target and self._fatal is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"flush: {target - self._done} events not yet committed after {timeout} s")
                self._cond.wait(left)
            self._raise_errors("flush")

    def close(self) -> None:
        """Flush, stop the writer thread and detach from the store. Safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        try:
            self._thread.join()
            with self._cond:
                self._raise_errors("close")
        finally:
            self._closed = True
            _OPEN.discard(self)
            self._store._attached.discard(self)

    @property
    def logged(self) -> int:
        """Events accepted by :meth:`log` so far."""
        return self._logged

    @property
    def pending(self) -> int:
        """Events logged but not yet committed (or refused) by the writer."""
        return self._logged - self._done

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "failed" if self._fatal else "open"
        return f"Recorder({self._store.path.name!r}, {state}, logged={self._logged}, pending={self.pending})"

    def _raise_errors(self, where: str) -> None:
        """Raise what the writer met (the condition's lock is held)."""
        if self._fatal is not None:
            lost = self._logged - self._done
            raise AuditKitError(f"recording stopped: the writer failed ({self._fatal!r}); {lost} "
                                f"event{'' if lost == 1 else 's'} logged since the last successful commit "
                                f"{'was' if lost == 1 else 'were'} not written") from self._fatal
        if self._refused:
            first, more = self._refused[0], len(self._refused) - 1
            self._refused.clear()
            also = (f"; {more} more event{' was' if more == 1 else 's were'} refused too") if more else ""
            raise ValidationError(first.row, first.field, f"{first.reason} (event not recorded; every other "
                                                          f"event was{also}; raised by {where})")

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    n = len(self._queue)
                    if n and (n >= self._batch or self._closing or self._flush_to > self._done
                              or time.monotonic() - self._oldest >= self._interval):
                        break
                    if not n and self._closing:
                        return
                    self._cond.wait(self._oldest + self._interval - time.monotonic() if n else None)
                group = self._queue[:self._batch]
                del self._queue[:self._batch]
                self._cond.notify_all()  # room in the queue
            try:
                self._commit(group)
            except BaseException as e:  # noqa: BLE001 - handed to the caller by the next log/flush/close
                with self._cond:
                    self._fatal = e
                    self._cond.notify_all()
                return
            with self._cond:
                self._done += len(group)
                self._forget(group)
                self._cond.notify_all()

    def _forget(self, group: list[tuple[Kind, dict, int]]) -> None:
        """Drop the unique keys of written events: the store checks those itself, and the set stays small."""
        for spec, values, _ in group:
            for cols in spec.unique:
                seen = self._seen.get((spec.name, cols))
                if seen is not None:
                    seen.discard(tuple(values[c] for c in cols))

    def _commit(self, group: list[tuple[Kind, dict, int]]) -> None:
        """One transaction for the group; an event the store refuses is left out and reported."""
        while group:
            try:
                if len(group) <= SMALL_GROUP:  # a live run's usual group: skip the batch pipeline's fixed cost
                    self._store._append_events([(spec, values) for spec, values, _ in group])
                else:
                    self._store._write_validated(self._frames(group))
                return
            except ValidationError as e:
                if not 0 <= e.row < len(group):
                    raise
                refused = group.pop(e.row)
                with self._cond:
                    self._refused.append(ValidationError(refused[2], e.field, e.reason))
                    self._done += 1
                    self._forget([refused])

    @staticmethod
    def _frames(group: list[tuple[Kind, dict, int]]) -> dict[str, pl.DataFrame]:
        """Validated frames, one per kind; ``__row`` is each event's position in the group."""
        by_kind: dict[str, tuple[Kind, list[int], list[dict]]] = {}
        for i, (spec, values, _) in enumerate(group):
            entry = by_kind.get(spec.name)
            if entry is None:
                entry = by_kind[spec.name] = (spec, [], [])
            entry[1].append(i)
            entry[2].append(values)
        out = {}
        for name, (spec, rows, vals) in by_kind.items():
            cols = [pl.Series(ROW, rows, dtype=pl.Int64)]
            for f in spec.fields:
                col = [v[f.name] for v in vals]
                if f.type in _ARROW_MAP:
                    cols.append(_map_column(f.name, col, _ARROW_MAP[f.type]))
                else:
                    cols.append(pl.Series(f.name, col, dtype=DTYPES[f.type]))
            out[name] = normalise(pl.DataFrame(cols), name)[name]
        return out


def _map_column(name: str, maps: list[dict | None], value_type: pa.DataType) -> pl.Series:
    """dicts (or None) as a list of key/value structs, built from flat Arrow arrays (no dict per entry)."""
    offsets, keys, values, valid = [0], [], [], []
    for m in maps:
        if m:
            keys.extend(m)
            values.extend(m.values())
        offsets.append(len(keys))
        valid.append(m is not None)
    entries = pa.StructArray.from_arrays([pa.array(keys, pa.string()), pa.array(values, value_type)],
                                         names=["key", "value"])
    mask = None if all(valid) else pa.array([not v for v in valid])
    arr = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), entries, mask=mask)
    return pl.Series(name, arr)


_OPEN: weakref.WeakSet = weakref.WeakSet()


def _flush_at_exit() -> None:
    """An interpreter exit flushes open recorders; what fails is printed, since no caller is left."""
    for rec in list(_OPEN):
        try:
            rec.close()
        except Exception as e:  # noqa: BLE001
            print(f"rlhf-audit-kit: {rec!r} could not flush at exit: {e}", file=sys.stderr)


# The store's writes use thread pools, which refuse work once concurrent.futures' exit hook has run;
# threading's exit hooks run before it (latest first) and before plain atexit handlers.
getattr(threading, "_register_atexit", atexit.register)(_flush_at_exit)
