"""Headless Chromium (Debian /usr/bin/chromium) + Panel server fixtures for the dashboard tests."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pn = pytest.importorskip("panel")
pytest.importorskip("playwright")
from panel.io.state import state  # noqa: E402
from .served import free_port, wait_liveness  # noqa: E402,F401 - shared with tests/test_serve_security.py

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-artifacts" / "screenshots"

if not os.path.exists(CHROMIUM):  # pragma: no cover
    if os.environ.get("CI"):  # CI installs it (.ci/run): a missing browser there is a failure
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (see .ci/run)")
    pytest.skip("Debian chromium not installed (sudo apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1900}}


@pytest.fixture
def context(context):
    context.set_default_timeout(20_000)  # first Bokeh render is slow on 2 cores
    yield context


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small demo record: store, keys, DP releases, two snapshots and a bundle."""
    from rlhf_audit_kit.apps._demo import build_demo
    return build_demo(tmp_path_factory.mktemp("demo"), size=6_000, seed=0)


@pytest.fixture(scope="session")
def shots():
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


def wait_until(fn, page, timeout=15_000):
    """Poll a Python- or JS-side condition while letting the page run."""
    end = time.monotonic() + timeout / 1000
    while True:
        try:
            if fn():
                return
        except Exception:  # noqa: BLE001 - condition not evaluable yet
            pass
        if time.monotonic() > end:
            raise TimeoutError("condition not met")
        page.wait_for_timeout(100)


@pytest.fixture
def serve_app():
    """Serve a Panel app factory in a thread; yields a function returning the URL."""
    threads = []

    def _serve(app):
        port = free_port()
        threads.append(pn.serve(app, port=port, address="127.0.0.1", threaded=True, show=False,
                                liveness=True, verbose=False, websocket_origin=f"localhost:{port}"))
        wait_liveness(port)
        return f"http://localhost:{port}"
    yield _serve
    for t in threads:
        t.stop()
        t.join(10)
    state.reset()


@pytest.fixture
def dashboard_page(page, serve_app, demo):
    """The dashboard of the demo bundle, served in-process; returns (page, dashboards, logs)."""
    from rlhf_audit_kit.apps import AuditDashboard
    made = []

    def app():
        pn.extension("tabulator")
        d = AuditDashboard(demo.bundle)
        made.append(d)
        return d.template()
    logs: list[str] = []
    page.on("console", lambda m: logs.append(m.text))
    page.goto(serve_app(app))
    wait_until(lambda: made and any("is now open" in m for m in logs), page, 30_000)
    page.locator(".audit-header").first.wait_for()
    return page, made[0], logs
