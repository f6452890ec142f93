"""Worker processes for a local verification: each runs one function call at a time, sent over a pipe.

A bundle's segments are re-derived in parallel on this machine by :class:`ProcessPool`. Its workers are
fresh interpreters started with ``python -P -c`` (not forked: the verifying process runs DuckDB's and
polars' threads, and a fork copies their locks in whatever state they are; not ``multiprocessing``'s
spawn either: it re-runs the caller's ``__main__`` in each worker, and a script without an
``if __name__ == "__main__"`` guard would run its own side effects again, e.g. write to a store; and
``-P``: no module is imported from the working directory, which may be a bundle someone handed over).
A call and its result travel pickled through a pipe of the worker's own (its stdout is its stderr),
each answer carrying its call's number; only this package's functions are sent, to processes this
process started.

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
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from .errors import AuditKitError

__all__ = ["ProcessPool", "serve"]

_HEADER = struct.Struct("<QQ")  # call number, length of the pickle that follows
#: the package's parent folder, put on the workers' path when it is not there already
_ROOT = str(Path(__file__).resolve().parents[1])
#: the largest answer a worker may send (a task's nodes are ~64 bytes per event)
_MAX_ANSWER = 16 << 30


def _read(stream) -> tuple[int, Any]:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    number, n = _HEADER.unpack(head)
    if n > _MAX_ANSWER:
        raise EOFError  # not our protocol: treated as the worker's end
    data = stream.read(n)
    if len(data) < n:
        raise EOFError
    return number, pickle.loads(data)


def _write(stream, number: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(number, len(data)))
    stream.write(data)
    stream.flush()


def _error(e: BaseException) -> BaseException:
    """``e`` if it pickles and unpickles, else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL))
        return e
    except Exception:  # noqa: BLE001 - whatever a hostile or odd exception does when pickled
        try:
            text = f"{type(e).__name__}: {e}"
        except Exception:  # noqa: BLE001
            text = type(e).__name__
        return RuntimeError(text[:2000])


def serve() -> None:
    """A worker's loop: read ``(number, (fn, args))``, answer ``(number, (True, result))`` or
    ``(number, (False, exception))``; end at EOF or when the caller is gone."""
    import signal
    # Ctrl-C reaches the whole process group: the caller handles it (and ends this worker), so a
    # worker must not print a KeyboardInterrupt traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the protocol gets the pipe behind fd 1 to itself; fd 1 (and so whatever any code, Python or
    # not, writes to stdout) becomes stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    while True:
        try:
            number, (fn, args) = _read(inp)
        except (EOFError, OSError):
            return
        try:
            answer: tuple = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001 - sent back to the caller, which raises it
            answer = (False, _error(e))
        try:
            try:
                _write(out, number, answer)
            except (pickle.PicklingError, TypeError, AttributeError) as e:  # a result that does not pickle
                _write(out, number, (False, RuntimeError(f"the answer does not pickle ({type(e).__name__}: {e})")))
        except OSError:  # the caller is gone (closed its end): nothing to answer to
            return


class _Shared:
    """What the feeder threads share with the pool (not the pool itself, so an unclosed pool is collected)."""

    def __init__(self) -> None:
        self.tasks: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.broken: str | None = None
        self.numbers = iter(range(1, 1 << 62))

    def fail_queued(self) -> None:
        while True:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                return
            if task is not None and task[0].set_running_or_notify_cancel():
                task[0].set_exception(AuditKitError(self.broken or "the verification workers were stopped"))


def _feed(shared: _Shared, proc: subprocess.Popen) -> None:
    """One thread per worker: hand it the next call, wait for the answer to that call."""
    while True:
        task = shared.tasks.get()
        if task is None:
            return
        fut, fn, args = task
        if not fut.set_running_or_notify_cancel():
            continue
        with shared.lock:
            number = next(shared.numbers)
        try:
            _write(proc.stdin, number, (fn, args))
            got, (ok, value) = _read(proc.stdout)
            if got != number:
                raise EOFError
        except BaseException as e:  # noqa: BLE001 - the worker's end, or a stream we no longer trust
            proc.kill()
            code = proc.wait()
            why = (f"a verification worker process ended with exit code {code} (killed, or out of memory?); run "
                   "again, or with fewer workers" if isinstance(e, (EOFError, OSError)) else
                   f"a verification worker's answer could not be read ({type(e).__name__}: {e}); it was stopped")
            with shared.lock:
                shared.broken = shared.broken or why
            fut.set_exception(AuditKitError(why))
            shared.fail_queued()  # fail fast: the caller stops at the first failed task anyway
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _shutdown(shared: _Shared, procs: list[subprocess.Popen], threads: list[threading.Thread],
              grace: float) -> None:
    """Stop the feeders and the workers: idle ones end at EOF, busy ones are killed after ``grace`` s
    in all (their results are no longer wanted)."""
    with shared.lock:
        shared.broken = shared.broken or "the verification workers were stopped"
    shared.fail_queued()
    for _ in threads:
        shared.tasks.put(None)
    for p in procs:
        try:
            p.stdin.close()
        except OSError:
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for t in threads:  # each sees its stop signal, or its worker's end
        if t is not threading.current_thread():
            t.join(timeout=5)
    for p in procs:
        p.stdout.close()


class ProcessPool:
    """``n`` worker processes of this interpreter; :meth:`submit` returns a ``concurrent.futures.Future``.

    A worker that dies (killed, out of memory) fails the call it was running, and every queued one,
    with an :class:`~rlhf_audit_kit.errors.AuditKitError` naming its exit code, and the pool takes no
    more calls; :meth:`close` (or leaving the ``with`` block, or dropping the pool) ends them all.
    """

    def __init__(self, n: int, *, env: dict[str, str] | None = None):
        if n < 1:
            raise ValueError(f"a pool needs at least one worker, not {n}")
        self._shared = _Shared()
        self._closed = False
        code = ("import sys\n"
                "if sys.path and sys.path[0] in ('', '.'): sys.path.pop(0)\n"  # (Python 3.10: no -P)
                f"if {_ROOT!r} not in sys.path: sys.path.insert(0, {_ROOT!r})\n"
                "from rlhf_audit_kit.segment_workers import serve\nserve()")
        safe = ["-P"] if sys.version_info >= (3, 11) else []  # no working directory on the path
        child_env = {**os.environ, **(env or {})}
        self._procs: list[subprocess.Popen] = []
        self._threads: list[threading.Thread] = []
        try:
            for i in range(n):
                p = subprocess.Popen([sys.executable, *safe, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=child_env)
                self._procs.append(p)
                t = threading.Thread(target=_feed, args=(self._shared, p), daemon=True,
                                     name=f"rlhf-audit-pool-{i}")
                self._threads.append(t)
                t.start()
        except BaseException:
            _shutdown(self._shared, self._procs, self._threads, 0.0)
            raise
        self._finalizer = weakref.finalize(self, _shutdown, self._shared, self._procs, self._threads, 0.0)

    def __len__(self) -> int:
        return len(self._procs)

    def submit(self, fn: Callable, *args: Any) -> Future:
        if self._closed:
            raise RuntimeError("the pool is closed")
        with self._shared.lock:
            if self._shared.broken:
                raise AuditKitError(self._shared.broken)
        fut: Future = Future()
        self._shared.tasks.put((fut, fn, args))
        return fut

    def close(self, grace: float = 1.0) -> None:
        """End the workers: idle ones at once, busy ones killed after ``grace`` seconds in all."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        _shutdown(self._shared, self._procs, self._threads, grace)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProcessPool({len(self._procs)} workers{', closed' if self._closed else ''})"
