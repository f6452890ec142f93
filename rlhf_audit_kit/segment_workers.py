"""Worker processes for a local verification: each runs one function call at a time, sent over a pipe.

A bundle's segments are re-derived in parallel on this machine by :class:`ProcessPool`. Its workers are
fresh interpreters started with ``python -c`` (not forked: the verifying process runs DuckDB's and
polars' threads, and a fork copies their locks in whatever state they are; not ``multiprocessing``'s
spawn either: it re-runs the caller's ``__main__`` in each worker, and a script without an
``if __name__ == "__main__"`` guard would run its own side effects again, e.g. write to a store). A
call and its result travel pickled through the worker's stdin and stdout; only this package's
functions are sent, to processes this process started.

>>> with ProcessPool(1) as pool:
...     pool.submit(divmod, 7, 2).result()
(3, 1)
"""
from __future__ import annotations

import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from .errors import AuditKitError

__all__ = ["ProcessPool", "serve"]

_HEADER = struct.Struct("<Q")
#: the package's parent folder, first on the workers' path: they import this very code
_ROOT = str(Path(__file__).resolve().parents[1])


def _read(stream) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    (n,) = _HEADER.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def _write(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def serve() -> None:
    """A worker's loop: read ``(fn, args)``, answer ``(True, result)`` or ``(False, exception)``; end at EOF."""
    import signal
    # Ctrl-C reaches the whole process group: the caller handles it (and ends this worker), so a
    # worker must not print a KeyboardInterrupt traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever the called code prints must not break the protocol
    while True:
        try:
            fn, args = _read(inp)
        except EOFError:
            return
        try:
            answer = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001 - sent back to the caller, which raises it
            answer = (False, e)
        try:
            _write(out, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as e:  # an exception that does not pickle
            _write(out, (False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]} ({e})")))


class ProcessPool:
    """``n`` worker processes of this interpreter; :meth:`submit` returns a ``concurrent.futures.Future``.

    A worker that dies (killed, out of memory) fails the call it was running with an
    :class:`~rlhf_audit_kit.errors.AuditKitError` naming its exit code; :meth:`close` (or leaving the
    ``with`` block) ends them all and fails whatever had not run.
    """

    def __init__(self, n: int, *, env: dict[str, str] | None = None):
        if n < 1:
            raise ValueError(f"a pool needs at least one worker, not {n}")
        self._tasks: queue.Queue = queue.Queue()
        self._closed = False
        code = f"import sys; sys.path.insert(0, {_ROOT!r}); from rlhf_audit_kit.segment_workers import serve; serve()"
        child_env = {**os.environ, **(env or {})}
        self._procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=child_env) for _ in range(n)]
        self._threads = [threading.Thread(target=self._feed, args=(p,), daemon=True, name=f"rlhf-audit-pool-{i}")
                         for i, p in enumerate(self._procs)]
        for t in self._threads:
            t.start()

    def __len__(self) -> int:
        return len(self._procs)

    def submit(self, fn: Callable, *args: Any) -> Future:
        if self._closed:
            raise RuntimeError("the pool is closed")
        fut: Future = Future()
        self._tasks.put((fut, fn, args))
        return fut

    def _feed(self, proc: subprocess.Popen) -> None:
        """One thread per worker: hand it the next call, wait for its answer."""
        while True:
            task = self._tasks.get()
            if task is None:
                return
            fut, fn, args = task
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                _write(proc.stdin, (fn, args))
                ok, value = _read(proc.stdout)
            except (EOFError, OSError, ValueError):
                code = proc.wait()
                fut.set_exception(AuditKitError(f"a verification worker process ended with exit code {code} "
                                                f"(killed, or out of memory?); run again, or with fewer workers"))
                self._fail_rest()
                return
            except BaseException as e:  # noqa: BLE001 - e.g. an answer that does not unpickle here
                fut.set_exception(e)
                continue
            (fut.set_result if ok else fut.set_exception)(value)

    def _fail_rest(self) -> None:
        """A worker is gone: nothing queued should wait for it."""
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            if task is None:
                self._tasks.put(None)  # another feeder's stop signal: leave it for that feeder
                return
            task[0].cancel() or task[0].done() or task[0].set_exception(
                AuditKitError("a verification worker process ended; this task did not run"))

    def close(self) -> None:
        """End the workers: those idle at once, a busy one killed (its result is no longer wanted)."""
        if self._closed:
            return
        self._closed = True
        self._fail_rest()
        for _ in self._threads:
            self._tasks.put(None)
        for p in self._procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in self._procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self._threads:  # each sees its stop signal, or its worker's end
            t.join(timeout=5)
        for p in self._procs:
            p.stdout.close()

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - a pool left open: its workers go with it
        if not getattr(self, "_closed", True):
            for p in self._procs:
                p.kill()

    def __repr__(self) -> str:
        return f"ProcessPool({len(self._procs)} workers{', closed' if self._closed else ''})"
