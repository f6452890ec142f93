"""Scale benchmark: verification on Dask, and bundles on object storage vs local disk.

Run: ``python benchmarks/scale.py [--events 2000000] [--segments 8] [--work DIR] [--reps 2]``.
Builds (or reuses, cached under ``--work``, an ignored folder) a bundle of a demo campaign exported
in ``--segments`` snapshots, so it holds that many immutable segments (Dask's unit of work). Then
prints in one run:

* local verify as a user gets it (``bundle.verify(key)``: default ``workers``, i.e. cores - 1
  forked hashing processes beside the re-encoding threads), local verify with ``workers=2``, and
  ``bundle.verify(key, scheduler=client)`` on a ``LocalCluster(n_workers=2, threads_per_worker=1)``
  of the same bundle, with the ratio (target >= 1.6 on 2 cores);
* the object storage figures (:func:`object_storage_figures`): export, open and verify of a bundle
  on a loopback S3 server vs local disk.

Wall times on a shared machine are noisy: CPU time of this process (and its forked children) and the
machine's load are shown; the Dask workers' CPU is not in this process's figure.
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

from ledger import SIGNER  # noqa: E402 - the ledger benchmark's signing key
from rlhf_audit_kit import open_bundle  # noqa: E402
from rlhf_audit_kit.store import open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cpu() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def best_of(fn, reps: int):
    """(last result, best wall seconds, CPU seconds of that run) over ``reps`` runs."""
    best = None
    for _ in range(reps):
        c0, t0 = cpu(), time.perf_counter()
        out = fn()
        t, c = time.perf_counter() - t0, cpu() - c0
        if best is None or t < best[1]:
            best = (out, t, c)
    return best


def build_bundle(work: Path, events: int, segments: int) -> Path:
    """A bundle of a demo campaign of ``events`` events in ``segments`` exports (cached in ``work``)."""
    folder = work / f"bundle-{events}-{segments}"
    if (folder / "manifest.json").exists():
        return folder
    from rlhf_audit_kit.demo import Campaign
    t0 = time.perf_counter()
    db = work / f"store-{events}-{segments}.duckdb"
    for p in (db, Path(f"{db}.wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    per = -(-events // segments)
    with open_store(db, pseudonymize=False, origin="bench.example/log") as store:
        mark = per
        for kind, frame in Campaign(events, seed=0).iter_frames(chunk_rows=per // 4 or 1):
            store.extend(frame, kind=kind)
            if store.size >= mark:
                store.snapshot(SIGNER).export(folder, verify=False).close()
                mark += per
        store.snapshot(SIGNER).export(folder, verify=False).close()
    db.unlink(missing_ok=True)
    with open_bundle(folder) as b:
        print(f"built a bundle of {b.size:,} events in {len(b.segments)} segments in "
              f"{time.perf_counter() - t0:.0f} s: {folder}")
    return folder


def verify_figures(folder: Path, reps: int) -> list[tuple[str, str, str]]:
    """Local verify (default, workers=2) vs Dask LocalCluster(2 workers) verify of one bundle."""
    rows = []

    def local(**kw):
        with open_bundle(folder) as b:
            r = b.verify(SIGNER.verifier, **kw)
        assert r.ok, r.message
        return r
    report, t_local, c_local = best_of(local, reps)
    n = report.events
    rows.append((f"local verify (default workers), {n:,} events", f"{t_local:.2f} s",
                 f"{c_local:.1f} s CPU; {n / t_local:,.0f} events/s"))
    _, t_w2, c_w2 = best_of(lambda: local(workers=2), reps)
    rows.append(("local verify, workers=2", f"{t_w2:.2f} s", f"{c_w2:.1f} s CPU; {n / t_w2:,.0f} events/s"))
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        rows.append(("Dask verify", "not run", "install the dask extra: pip install 'rlhf-audit-kit[dask]'"))
        return rows
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        local_report = report
        report, t_dask, c_dask = best_of(lambda: local(scheduler=client), reps)
        assert report.findings == local_report.findings and report.signed_root == local_report.signed_root
    with open_bundle(folder) as b:
        nseg = len(b.segments)
    rows.append((f"Dask verify, LocalCluster(2 workers x 1 thread), {nseg} segments", f"{t_dask:.2f} s",
                 f"{c_dask:.1f} s CPU in this process; {n / t_dask:,.0f} events/s"))
    rows.append(("ratio local default / Dask", f"{t_local / t_dask:.2f}x", "target >= 1.6 on 2 cores"))
    rows.append(("ratio local workers=2 / Dask", f"{t_w2 / t_dask:.2f}x", ""))
    return rows


# ---------------------------------------------------------------- HOOK: object storage figures
def object_storage_figures(folder: Path, work: Path) -> list[tuple[str, str, str]]:
    """HOOK for bundles on object storage (``open_bundle(URL)``, ``snapshot.export(URL)``).

    To fill in once ``Bundle.url`` support lands: start a loopback moto S3 server
    (``moto.server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)``), then time export, open
    and verify of a bundle on ``s3://bucket/...`` (``storage_options`` with the endpoint) against
    the same on local disk, and return rows ``(what, figure, note)`` including the ratio.
    """
    return [("object storage (S3 on loopback) vs local disk", "not measured yet",
             "hook: object_storage_figures")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench-scale"))  # .cache/ is git-ignored
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = build_bundle(work, args.events, args.segments)
    if args.build_only:
        return 0
    rows = verify_figures(folder, args.reps)
    rows += object_storage_figures(folder, work)
    print(f"\nrlhf-audit-kit scale benchmark ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    w = max(len(r[0]) for r in rows)
    for name, fig, note in rows:
        print(f"{name:<{w}}  {fig:>12}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
