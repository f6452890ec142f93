"""Serving helpers shared by the tests of a served dashboard (tests/browser and tests/test_serve_security.py)."""
from __future__ import annotations

import contextlib
import socket
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_liveness(port: int, tries: int = 300) -> None:
    for _ in range(tries):
        try:
            urllib.request.urlopen(f"http://localhost:{port}/liveness", timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no server on port {port}")


@contextlib.contextmanager
def served_dashboards():
    """Yields ``start(source, **serve_kw) -> "http://localhost:PORT"``: each call serves a dashboard
    with :func:`rlhf_audit_kit.apps.serve.serve` in a thread; all are stopped on exit."""
    from panel.io.state import state

    from rlhf_audit_kit.apps.serve import serve
    threads = []

    def start(source, **kw) -> str:
        port = free_port()
        threads.append(serve(source, port=port, threaded=True, **kw))
        wait_liveness(port)
        return f"http://localhost:{port}"
    try:
        yield start
    finally:
        for t in threads:  # stop() is asynchronous: join before the reset
            t.stop()
            t.join(10)
        state.reset()
