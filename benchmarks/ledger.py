"""Ledger benchmark: leaf hashing, full verification, root after append, proof latency.

Run: ``python benchmarks/ledger.py [--events 1000000] [--store PATH] [--workers N]``. Builds (or
reuses) a store of demo-campaign events (synthetic ~700-byte annotations if the demo generator is
unavailable), signs a snapshot, then prints one table. Figures are medians; CPU times are shown
because shared machines make wall times noisy.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf_audit_kit.ledger import merkle  # noqa: E402
from rlhf_audit_kit.ledger.checkpoint import Signer  # noqa: E402
from rlhf_audit_kit.ledger.levels import compute_tree  # noqa: E402
from rlhf_audit_kit.store import leaf_hashes_of, open_store  # noqa: E402

SIGNER = Signer.from_seed("bench.example/log", bytes(32))


def cpu() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def synthetic(n: int, start: int = 0) -> pl.DataFrame:
    i = pl.int_range(start, start + n, eager=True)
    df = pl.DataFrame({"i": i})
    return df.select(
        pl.format("ann-{}", "i").alias("annotation_id"), pl.format("prompt-{}", pl.col("i") // 3).alias("prompt_id"),
        pl.format("Explain topic {} to a beginner in a few clear sentences, with an example and caveats "
                  "about common mistakes people make when they first learn it.", pl.col("i") % 997).alias("prompt"),
        pl.format("resp-{}-a", "i").alias("response_a_id"),
        pl.format("Sure. Topic {} is best understood through a small example: start with the basic idea, "
                  "then apply it step by step, checking each intermediate result before moving on.",
                  pl.col("i") % 991).alias("response_a"),
        pl.format("resp-{}-b", "i").alias("response_b_id"),
        pl.format("Here is a short answer about topic {}: it depends on the context, but in general you "
                  "should read the documentation and try it yourself on a toy problem first.",
                  pl.col("i") % 983).alias("response_b"),
        pl.when(pl.col("i") % 2 == 0).then(pl.lit("a")).otherwise(pl.lit("b")).alias("choice"),
        pl.format("annotator-{}", pl.col("i") % 40).alias("annotator"),
        (pl.col("i") % 101).alias("strength"), pl.lit("v1.0").alias("guideline_version"))


def build(path: Path, n: int) -> None:
    t0 = time.perf_counter()
    with open_store(path, pseudonymize=False) as store:
        try:
            from rlhf_audit_kit.demo import Campaign
            Campaign(n, seed=0).write_to(store, progress=False)
            how = "demo campaign"
        except Exception as e:  # noqa: BLE001 - fall back to synthetic rows
            print(f"(demo generator unavailable: {type(e).__name__}: {str(e)[:80]}; using synthetic rows)")
            done = store.size
            while done < n:
                k = min(200_000, n - done)
                store.extend(synthetic(k, done), kind="annotation")
                done += k
            how = "synthetic annotations"
        print(f"built {store.size:,} events ({how}) in {time.perf_counter() - t0:.1f} s")


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _verify_child(path: str, workers, ranges) -> tuple[float, float, int]:
    """(wall s, peak RSS GB of this child and its hashing processes, ranges) of one store verification."""
    from rlhf_audit_kit.ledger import verify as ledger_verify
    if ranges is not None:
        ledger_verify.RANGE_EVENTS = ranges
    with open_store(path, read_only=True, pseudonymize=False) as s:
        t0 = time.perf_counter()
        r = s.verify(SIGNER.verifier, workers=workers)
        t = time.perf_counter() - t0
    assert r.ok, r.message
    rss = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1e6
    return t, rss, int(r.timings.get("ranges", 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--store", default="/tmp/rlhf-audit-bench/ledger.duckdb")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    path = Path(args.store)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        build(path, args.events)
    store = open_store(path, pseudonymize=False)
    if store.sql("SELECT count(*) AS n FROM snapshot")["n"][0] == 0:
        store.snapshot(SIGNER)
    n = store.size
    rows = []

    # 1. leaf hashing vs raw hashlib over the same bytes
    entries = store._con.sql("SELECT entry FROM log").to_arrow_table().column("entry").combine_chunks()
    nbytes = entries.buffers()[2].size if entries.buffers()[2] else 0
    blob = entries.buffers()[2].to_pybytes()
    raw = min(median_ms(lambda: hashlib.sha256(blob).digest(), 1) for _ in range(3)) / 1000
    t = min(median_ms(lambda: leaf_hashes_of(entries), 1) for _ in range(2)) / 1000
    rows.append(("leaf hashing (hashlib loop over Arrow buffer)", f"{n / t:,.0f} leaves/s",
                 f"{nbytes / t / 1e6:,.0f} MB/s vs raw SHA-256 {nbytes / raw / 1e6:,.0f} MB/s ({t / raw:.1f}x)"))
    t = min(median_ms(lambda: compute_tree(entries, workers=0), 1) for _ in range(2)) / 1000
    rows.append(("leaves + every subtree node, 1 process", f"{n / t:,.0f} leaves/s", f"{t:.2f} s"))
    if (os.cpu_count() or 1) > 1:
        t = min(median_ms(lambda: compute_tree(entries, workers=2), 1) for _ in range(2)) / 1000
        rows.append(("leaves + every subtree node, 2 forked workers", f"{n / t:,.0f} leaves/s", f"{t:.2f} s"))
    del blob, entries

    # 2. full verification
    best = None
    for _ in range(args.reps):
        c0 = cpu()
        report = store.verify(SIGNER.verifier, workers=args.workers)
        c = cpu() - c0
        assert report.ok, report.message
        if best is None or report.elapsed < best[0].elapsed:
            best = (report, c)
    report, c = best
    rows.append((f"full verify, {n:,} events", f"{report.events_per_second:,.0f} events/s",
                 f"{report.elapsed:.2f} s wall, {c:.2f} s CPU; target >= 500,000 events/s"))
    parts = {k: v for k, v in report.timings.items() if not k.startswith("typed:")}
    rows.append(("  verify phases (s)", "", ", ".join(f"{k} {v:.2f}" for k, v in parts.items())))
    kinds = {k[6:]: v for k, v in report.timings.items() if k.startswith("typed:")}
    rows.append(("  re-encode + compare per kind (s)", "", ", ".join(f"{k} {v:.2f}" for k, v in kinds.items())))
    # peak memory of one verification, in a fresh forked child each: in seq ranges (the default for
    # a store this large) and as one range (the reference)
    import multiprocessing as mp
    store.close()
    for label, ranges in (("seq ranges of 200k (default)", None), ("one range (reference)", 10 ** 18)):
        with mp.get_context("spawn").Pool(1) as pool:  # (spawn: no copy of this process's threads)
            t, rss, k = pool.apply(_verify_child, (args.store, args.workers, ranges))
        rows.append((f"  verify peak RSS, {label}", f"{rss:.2f} GB", f"{t:.2f} s wall, {k} range(s)"))
    store = open_store(path, pseudonymize=False)

    # 3. root after append, proofs at full size
    def append_and_root():
        store.append({"kind": "custom", "name": "bench", "payload": {"t": time.time()}})
        return store.root()
    rows.append(("append 1 event + new root", f"{median_ms(append_and_root, 25):.2f} ms", "median of 25"))
    rows.append(("root (O(log n) lookups)", f"{median_ms(store.root, 50):.2f} ms", "median of 50"))
    size = store.size
    import random
    rnd = random.Random(0)
    incl = median_ms(lambda: store.inclusion_proof(rnd.randrange(size), size), 200)
    cons = median_ms(lambda: store.consistency_proof(rnd.randrange(1, size), size), 200)
    rows.append(("inclusion proof at size " + f"{size:,}", f"{incl:.2f} ms", "median of 200; target < 5 ms"))
    rows.append(("consistency proof to size " + f"{size:,}", f"{cons:.2f} ms", "median of 200; target < 5 ms"))
    seq = rnd.randrange(size)
    proof = store.inclusion_proof(seq, size)
    assert merkle.verify_inclusion(merkle.leaf_hash(store.entry(seq)), seq, size, proof, store.root(size))
    store.close()

    print(f"\nrlhf-audit-kit ledger benchmark ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    w = max(len(r[0]) for r in rows)
    for name, fig, note in rows:
        print(f"{name:<{w}}  {fig:>22}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
