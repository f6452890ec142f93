"""Ingest benchmark: AuditStore.extend vs a plain DuckDB insert of the same rows, in one run.

    python benchmarks/ingest.py [--n 1000000] [--batch 250000] [--workdir DIR]

The demo campaign's annotations are written once to Parquet; then two child processes read the
same batches: one inserts them into a plain DuckDB table (no audit), the other calls
``AuditStore.extend`` (validation, pseudonymisation, canonical encoding, leaf hashing, Merkle nodes,
typed table, one transaction per batch). Each child reports its own peak memory, so the input
frame of the parent is not counted. Targets: ratio >= 0.5, extend's peak memory < 2 GB at 1M.

A third child runs the plain insert with DuckDB's row-group vacuum off, as the store runs it: batches
that are not a multiple of DuckDB's row group (122,880 rows) leave part-filled row groups, and by
default DuckDB's checkpoint merges them, rewriting most of the data. Both ratios are printed.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl


def _batches(parquet: Path, batch: int):
    # polars pushes the slice into the Parquet scan: only the row groups of each batch are read
    lf = pl.scan_parquet(parquet)
    total = lf.select(pl.len()).collect().item()
    for off in range(0, total, batch):
        yield lf.slice(off, batch).collect().rechunk()  # one chunk: the fastest DuckDB insert path


def child_plain(parquet: Path, db: Path, batch: int, vacuum: bool = True) -> dict:
    import duckdb
    con = duckdb.connect(str(db))
    if not vacuum:  # as the audit store runs DuckDB: no row-group merging at checkpoints
        con.execute("SET max_vacuum_tasks = 0")
    t0 = time.perf_counter()
    n = 0
    for part in _batches(parquet, batch):
        if n == 0:
            con.execute("CREATE TABLE annotation AS SELECT * FROM part LIMIT 0")
        con.execute("INSERT INTO annotation SELECT * FROM part")
        n += part.height
    con.close()
    return {"n": n, "seconds": time.perf_counter() - t0}


def child_audit(parquet: Path, db: Path, keys: Path, batch: int) -> dict:
    from rlhf_audit_kit import open_store
    store = open_store(db, keys=keys)
    t0 = time.perf_counter()
    n = 0
    for part in _batches(parquet, batch):
        n += len(store.extend(part, kind="annotation"))
    store.close()
    return {"n": n, "seconds": time.perf_counter() - t0}


def _run_child(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000, help="annotation events")
    ap.add_argument("--batch", type=int, default=250_000, help="rows per extend() call")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        what, *rest = args.child
        res = (child_plain(Path(rest[0]), Path(rest[1]), int(rest[2]), what == "plain") if what.startswith("plain")
               else child_audit(Path(rest[0]), Path(rest[1]), Path(rest[2]), int(rest[3])))
        res["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
        print(json.dumps(res))
        return 0

    from rlhf_audit_kit.demo import Campaign
    from rlhf_audit_kit.keys import init_keys
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rak-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    parquet = work / f"annotations-{args.n}.parquet"
    if not parquet.exists():
        t0 = time.perf_counter()
        camp = Campaign(size=int(args.n / 0.85) + 1000, seed=0)
        ann = pl.concat([f for _, f in camp.iter_frames(500_000, kinds=["annotation"])]).head(args.n)
        ann.write_parquet(parquet)
        print(f"generated {ann.height:,} demo annotations in {time.perf_counter() - t0:.1f} s")
    meta = pl.scan_parquet(parquet).select(
        pl.len().alias("n"),
        pl.sum_horizontal(pl.col("prompt", "response_a", "response_b").str.len_bytes()).mean().alias("text")).collect()
    print(f"rows {meta['n'][0]:,}, mean text {meta['text'][0]:.0f} bytes/row, batches of {args.batch:,}")
    keys = work / "keys"
    shutil.rmtree(keys, ignore_errors=True)
    init_keys(keys, "bench", no_passphrase=True)
    for name in ("plain.duckdb", "plain-novacuum.duckdb", "audit.duckdb"):
        (work / name).unlink(missing_ok=True)
        (work / (name + ".wal")).unlink(missing_ok=True)

    plain = _run_child("plain", parquet, work / "plain.duckdb", args.batch)
    novac = _run_child("plain-novacuum", parquet, work / "plain-novacuum.duckdb", args.batch)
    audit = _run_child("audit", parquet, work / "audit.duckdb", keys, args.batch)
    pr, nr, ar = (r["n"] / r["seconds"] for r in (plain, novac, audit))
    print(f"plain DuckDB insert          : {pr:>10,.0f} events/s ({plain['seconds']:.2f} s, peak {plain['peak_gb']:.2f} GB)")
    print(f"plain insert, vacuum off     : {nr:>10,.0f} events/s ({novac['seconds']:.2f} s, peak {novac['peak_gb']:.2f} GB)")
    print(f"AuditStore.extend            : {ar:>10,.0f} events/s ({audit['seconds']:.2f} s, peak {audit['peak_gb']:.2f} GB)")
    print(f"ratio extend/plain           : {ar / pr:.2f}   (target >= 0.5)")
    print(f"ratio extend/plain vacuum off: {ar / nr:.2f}   (the store also turns DuckDB's row-group vacuum off)")
    print(f"extend peak memory           : {audit['peak_gb']:.2f} GB (target < 2 GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
