"""Publication benchmark, browser part: the delay from ``publish`` to a served dashboard showing the new size.

Run alone: ``python benchmarks/publication_browser.py [--events 100000] [--new 10000] [--rounds 3]``;
``benchmarks/publication.py`` calls :func:`measure` from its hook ``publish_to_browser_delay``.

A store records ``--events`` annotations and publishes into ``WORK/live`` (``store.publish``); a
second process serves the folder (``rlhf-audit serve WORK/live --vkey ...``) and headless Chromium
(Debian ``/usr/bin/chromium``) opens it. Each round records ``--new`` more events, publishes
(``publish_now``: sign, export the new segment, replace the manifest) and times, from the moment the
publication returned, how long the page takes to show the new size in its header and the new
number of judgements in the Annotators tab (the charts follow the header: the header is sent first).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
        "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]


def _until(page, check, timeout: float = 60.0) -> float:
    """Seconds until ``check(page)`` is true (polled every 20 ms while the page runs)."""
    t0 = time.monotonic()
    while not check(page):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the page did not update")
        page.wait_for_timeout(20)
    return time.monotonic() - t0


def _text(page, selector: str) -> str:
    try:
        return page.locator(selector).first.inner_text(timeout=1_000)
    except Exception:  # noqa: BLE001 - the pane is being re-rendered
        return ""


def measure(work: Path, *, events: int = 100_000, new: int = 10_000, rounds: int = 3) -> dict | None:
    """``{"header": [...], "charts": [...]}``: seconds from each publication to the page showing it
    (None when Playwright or Chromium is missing)."""
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        return None
    if not Path(CHROMIUM).exists():
        return None
    from ledger import SIGNER, synthetic

    from rlhf_audit_kit.store import open_store
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from browser.served import free_port, wait_liveness
    work = Path(work)
    folder, path = work / "live", work / "live.duckdb"
    shutil.rmtree(folder, ignore_errors=True)
    path.unlink(missing_ok=True)
    out: dict[str, list[float]] = {"header": [], "charts": []}
    with open_store(path, pseudonymize=False) as store:
        store.extend(synthetic(events), kind="annotation")
        publisher = store.publish(folder, SIGNER, every=3600)  # published now; rounds publish by hand
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "rlhf_audit_kit.cli", "serve", str(folder), "--port",
                                   str(port), "--vkey", SIGNER.verifier.vkey], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            wait_liveness(port, tries=1200)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1900})
                page.goto(f"http://localhost:{port}/")
                size = publisher.published.size
                _until(page, lambda pg: _text(pg, ".live-size").replace(",", "") == str(size), 300)
                judged = events
                for r in range(rounds):
                    store.extend(synthetic(new, events + r * new), kind="annotation")
                    judged += new
                    size = publisher.publish_now().size
                    t0 = time.monotonic()
                    _until(page, lambda pg: _text(pg, ".live-size").replace(",", "") == str(size))
                    out["header"].append(time.monotonic() - t0)
                    _until(page, lambda pg: f"{judged:,} judgements" in _text(pg, ".ann-summary"))
                    out["charts"].append(time.monotonic() - t0)
                browser.close()
        finally:
            publisher.stop(final=False)
            server.terminate()
            server.wait(30)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--new", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/rlhf-audit-bench/publication")
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    res = measure(Path(args.work), events=args.events, new=args.new, rounds=args.rounds)
    if res is None:
        print("not measured: Playwright or Debian chromium is missing")
        return 1
    for what, xs in res.items():
        print(f"publish -> browser shows the new {'size' if what == 'header' else 'judgements'}: median "
              f"{statistics.median(xs):.2f} s, max {max(xs):.2f} s over {len(xs)} publications of {args.new:,} "
              f"events onto {args.events:,} (target < 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
