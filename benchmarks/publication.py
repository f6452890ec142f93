"""Publication benchmark: full vs incremental export and verification of new events onto a big bundle.

Run: ``python benchmarks/publication.py [--events 1000000] [--new 10000] [--work DIR] [--workers N]``.
Builds (or reuses) a store of demo-campaign events, exports a signed snapshot of it as a bundle, records
``--new`` more events and signs again, then prints one table:

* export of the new snapshot: a whole new bundle vs onto the existing bundle (only the new segment,
  note and manifest; target: incremental < 5% of full), both with the default pre-publication check;
* verification of the grown bundle: full vs ``verify(since=old note)`` (open + verify; target < 5%);
* the delay from ``publish`` to a browser showing the new size (target < 5 s): measured by the hook
  :func:`publish_to_browser_delay`, which the dashboard that follows the folder fills in.

Wall times on a shared machine are noisy: CPU times are shown too.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ledger import SIGNER, build, synthetic  # noqa: E402 - the ledger benchmark's store builder
from rlhf_audit_kit import open_bundle  # noqa: E402
from rlhf_audit_kit.store import open_store  # noqa: E402


def cpu() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def timed(fn):
    c0, t0 = cpu(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, cpu() - c0


# ---------------------------------------------------------------- HOOK: publish -> browser delay
def publish_to_browser_delay(work: Path) -> float | None:
    """HOOK for the dashboard that follows a published folder (``rlhf-audit serve FOLDER``).

    A store publishes into ``work / "live"`` (``store.publish(folder, SIGNER, ...)``), a second process
    serves the folder, headless Chromium opens it; more events are recorded and published, and this
    returns the longest of the seconds from a publication to the page showing the new size
    (:func:`publication_browser.measure`; None without Playwright or Chromium).
    """
    from publication_browser import measure
    res = measure(work)
    return None if res is None else max(res["header"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--new", type=int, default=10_000)
    ap.add_argument("--work", default="/tmp/rlhf-audit-bench/publication")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = work / f"base-{args.events}.duckdb"
    if not base.exists():
        build(base, args.events)
    path = work / "grown.duckdb"  # a copy grows; the base store stays reusable
    shutil.copy(base, path)
    for name in ("old", "full", "grown"):
        shutil.rmtree(work / name, ignore_errors=True)
    rows = []
    with open_store(path, pseudonymize=False) as store:
        old = store.snapshot(SIGNER)
        _, t, c = timed(lambda: old.export(work / "old").close())
        rows.append((f"export a whole bundle, {old.size:,} events", f"{t:.2f} s", f"{c:.2f} s CPU"))
        store.extend(synthetic(args.new - 1, 10 ** 9), kind="annotation")  # + the old snapshot's event
        new = store.snapshot(SIGNER)
        assert new.size - old.size == args.new
        _, full, cf = timed(lambda: new.export(work / "full").close())
        shutil.copytree(work / "old", work / "grown")
        _, inc, ci = timed(lambda: new.export(work / "grown").close())
    rows.append((f"full export, {new.size:,} events", f"{full:.2f} s", f"{cf:.2f} s CPU"))
    rows.append((f"incremental export of {args.new:,} new events", f"{inc:.3f} s",
                 f"{ci:.3f} s CPU; {100 * inc / full:.2f}% of full (target < 5%)"))

    def verify(**kw):
        with open_bundle(work / "grown") as b:
            r = b.verify(SIGNER.verifier, workers=args.workers, **kw)
        assert r.ok, r.message
        return r
    report, vfull, cvf = timed(verify)
    rows.append((f"full verify, {report.events:,} events (open + verify)", f"{vfull:.2f} s",
                 f"{cvf:.2f} s CPU; {report.events / vfull:,.0f} events/s"))
    report, vinc, cvi = timed(lambda: verify(since=old.note))
    assert report.covered == (old.size, new.size)
    rows.append((f"verify(since=old note), seq {old.size:,}..{new.size - 1:,}", f"{vinc:.3f} s",
                 f"{cvi:.3f} s CPU; {100 * vinc / vfull:.2f}% of full (target < 5%)"))
    delay = publish_to_browser_delay(work)
    rows.append(("publish -> browser shows the new size", "not measured yet" if delay is None else f"{delay:.2f} s",
                 "target < 5 s (hook: publish_to_browser_delay)"))

    print(f"\nrlhf-audit-kit publication benchmark ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    w = max(len(r[0]) for r in rows)
    for name, fig, note in rows:
        print(f"{name:<{w}}  {fig:>16}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
