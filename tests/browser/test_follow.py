"""A dashboard that follows a live writer: one process records and publishes a bundle, a second
serves the folder (``rlhf-audit serve FOLDER --vkey ...``), and headless Chromium watches the size
in the header grow without a reload; then a forked checkpoint, signed with the real key but not
consistent with the one shown, appears in the folder and the page shows it in red and keeps the
last good size."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import ROOT, free_port, wait_liveness, wait_until

pytestmark = pytest.mark.browser

ORIGIN = "live.example/log"
RED = "rgb(214, 39, 40)"

# The writer: records a batch of annotations every 0.5 s and publishes with ``store.publish`` (a
# signed snapshot exported onto the folder every second: only the new segment, note and manifest are
# written); prints each published size as it appears. After the first publication it waits for
# CONTROL/go; after CONTROL/stop it leaves the publisher (which publishes the rest) and prints
# "final SIZE ANNOTATIONS".
WRITER = """
import sys, time
from pathlib import Path
from factories import annotation
from rlhf_audit_kit.keys import load_signer
from rlhf_audit_kit.store import open_store

store_path, keys, folder, control = sys.argv[1:5]
control = Path(control)
with open_store(store_path, keys=keys, origin=%r, pseudonymize=False) as store:
    n = 0
    def record():
        global n
        store.extend([annotation(n + i, annotator=f"a{(n + i) %% 4}") for i in range(40)])
        n += 40
    record()
    with store.publish(folder, load_signer(keys), every=1.0) as publisher:
        shown = publisher.published.size
        print(f"published {shown}", flush=True)
        while not (control / "go").exists():
            time.sleep(0.05)
        due = time.monotonic()
        while not (control / "stop").exists():
            if time.monotonic() >= due:
                record()
                due += 0.5
            if publisher.published.size != shown:
                shown = publisher.published.size
                print(f"published {shown}", flush=True)
            time.sleep(0.02)
    print(f"final {publisher.published.size} {n}", flush=True)
""" % ORIGIN


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_AUDIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    return env


class Writer:
    """The writer subprocess; ``published`` is [(size, monotonic time the line arrived)]."""

    def __init__(self, tmp: Path, keys: Path, folder: Path):
        self.control = tmp / "control"
        self.control.mkdir()
        script = tmp / "writer.py"
        script.write_text(WRITER)
        self.proc = subprocess.Popen([sys.executable, str(script), str(tmp / "w.duckdb"), str(keys), str(folder),
                                      str(self.control)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env())
        self.published: list[tuple[int, float]] = []
        self.final: tuple[int, int] | None = None  # (size, annotations) of the last publication
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if m := re.fullmatch(r"published (\d+)\s*", line):
                self.published.append((int(m.group(1)), time.monotonic()))
            elif m := re.fullmatch(r"final (\d+) (\d+)\s*", line):
                self.final = (int(m.group(1)), int(m.group(2)))

    def wait_first(self, timeout=60):
        end = time.monotonic() + timeout
        while not self.published:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"the writer did not publish: {self.proc.stderr.read()}")
            time.sleep(0.05)

    def stop(self):
        (self.control / "stop").touch()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        assert self.proc.returncode == 0, self.proc.stderr.read()


def _shown_size(page) -> int | None:
    text = page.locator(".live-size").first.inner_text(timeout=2_000)
    return int(text.replace(",", "")) if text.strip() else None


def _fork_into(folder: Path, keys: Path, tmp: Path, size: int) -> int:
    """Publish into ``folder`` a checkpoint of the same log name, signed with the same key, of a
    different history (a fork): files copied as a writer would, the manifest replaced last."""
    from factories import annotation

    from rlhf_audit_kit.keys import load_signer
    from rlhf_audit_kit.store import open_store
    with open_store(tmp / "fork.duckdb", keys=keys, origin=ORIGIN, pseudonymize=False) as fork:
        fork.extend([annotation(i, prompt="another history") for i in range(size + 25)])
        snap = fork.snapshot(load_signer(keys))
        snap.export(tmp / "fork-bundle")
    for sub in ("segments", "checkpoints"):
        shutil.copytree(tmp / "fork-bundle" / sub, folder / sub, dirs_exist_ok=True)
    shutil.copy(tmp / "fork-bundle" / "manifest.json", folder / "manifest.json.new")
    os.replace(folder / "manifest.json.new", folder / "manifest.json")
    return snap.size


def test_dashboard_follows_a_live_writer_and_refuses_a_fork(page, tmp_path, shots):
    from rlhf_audit_kit.keys import init_keys
    keys, folder = tmp_path / "keys", tmp_path / "bundle"
    info = init_keys(keys, ORIGIN, no_passphrase=True)
    writer = Writer(tmp_path, keys, folder)
    server = None
    try:
        writer.wait_first()
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "rlhf_audit_kit.cli", "serve", str(folder), "--port", str(port),
                                   "--vkey", info.vkey], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env=_env())
        wait_liveness(port)
        url = f"http://localhost:{port}/"
        pages = [page, page.context.new_page()]  # two sessions: both follow
        for p in pages:
            p.goto(url, wait_until="commit")  # both load at once
        for p in pages:
            expect(p.locator(".live-size").first).to_have_text(f"{writer.published[0][0]:,}", timeout=30_000)
            p.evaluate("() => { window.__not_reloaded = true }")
        (writer.control / "go").touch()

        seen: dict[int, float] = {}  # size -> when the first page showed it
        def grown_twice():
            size = _shown_size(page)
            if size is not None and size not in seen:
                seen[size] = time.monotonic()
            return len(seen) >= 3
        wait_until(grown_twice, page, 30_000)
        writer.stop()
        last, judgements = writer.final
        for p in pages:  # every session reaches the last publication, header and charts, without a reload
            expect(p.locator(".live-size").first).to_have_text(f"{last:,}", timeout=10_000)
            expect(p.locator(".ann-summary").first).to_contain_text(f"{judgements:,} judgements", timeout=10_000)
            assert p.evaluate("() => window.__not_reloaded") is True
        shown = sorted(seen)
        assert shown == sorted(set(shown)) and shown[-1] > shown[0]
        published = dict(writer.published)
        delays = [seen[s] - published[s] for s in shown if s in published and s != writer.published[0][0]]
        assert delays and max(delays) < 5.0, delays  # publish -> browser within 5 s
        expect(page.locator(".live-age").first).to_have_text(re.compile(r"\d+ s"))
        page.screenshot(path=str(shots / "follow-live.png"), full_page=True)

        forged = _fork_into(folder, keys, tmp_path, last)
        assert forged > last
        for p in pages:
            failure = p.locator(".live-failure").first
            expect(failure).to_contain_text("FAILED verification", timeout=10_000)
            expect(failure).to_contain_text("inconsistent-checkpoints")
            expect(failure).to_contain_text(f"size {forged:,}")
            expect(failure).to_have_css("color", RED)  # (the header is re-rendered each second: retried)
            expect(p.locator(".live-size").first).to_have_text(f"{last:,}")  # the last good view stays
            assert p.evaluate("() => window.__not_reloaded") is True
        page.screenshot(path=str(shots / "follow-refused-fork.png"), full_page=True)
    finally:
        if writer.proc.poll() is None:
            writer.proc.kill()
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
