"""Real-data ingest benchmark: Anthropic's HH-RLHF file repeated to 160k rows, through `rlhf-audit ingest`.

    python benchmarks/ingest_realdata.py [--rows 160000] [--workdir DIR] [--realdata DIR]

The harmless-base test split (``../shared/realdata/hh-rlhf_harmless-base_test.jsonl.gz``, 2,312
rows) is repeated row by row to ``--rows`` rows and written gzipped, as Anthropic ships it. Then,
each in a fresh process:

* ``cli``: ``rlhf-audit ingest FILE --format hh-rlhf --store S --keys K`` end to end (interpreter
  start, imports, reading, splitting, content ids, validation, pseudonymisation, encoding, hashing,
  Merkle nodes, one transaction), timed from outside;
* ``phases``: the same work in-process, timed in two parts: ``load`` (read + split + ids) and
  ``extend`` (the store);
* ``synthetic``: ``AuditStore.extend`` of as many demo-campaign annotations (the synthetic figure of
  ``benchmarks/ingest.py``), so the real rows/s stand beside the synthetic ones of the same run.

Rows/s of each are printed; nothing is asserted (the figures go to docs/performance.md).
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = "hh-rlhf_harmless-base_test.jsonl.gz"


def build(source: Path, rows: int, out: Path) -> int:
    lines = [line for line in gzip.decompress(source.read_bytes()).decode("utf-8").splitlines() if line.strip()]
    with gzip.open(out, "wt", encoding="utf-8", compresslevel=6) as f:
        for i in range(rows):
            f.write(lines[i % len(lines)] + "\n")
    return len(lines)


def child_phases(path: Path, db: Path, keys: Path) -> dict:
    from rlhf_audit_kit import open_store
    from rlhf_audit_kit.ingest import load
    t0 = time.perf_counter()
    kind, rows = load(path, "hh-rlhf", dataset="bench")
    t1 = time.perf_counter()
    with open_store(db, keys=keys) as store:
        n = len(store.extend(rows, kind=kind))
    t2 = time.perf_counter()
    text = sum(rows[c].str.len_bytes().sum() for c in ("prompt", "response_a", "response_b"))
    return {"n": n, "load": t1 - t0, "extend": t2 - t1, "text_bytes": int(text)}


def child_synthetic(n: int, db: Path, keys: Path) -> dict:
    from rlhf_audit_kit import demo, open_store
    camp = demo.Campaign(int(n * 1.25), seed=0)  # ~80% of a campaign's events are annotations
    ann = camp.frames(kinds=["annotation"])["annotation"].head(n)
    text = sum(ann[c].str.len_bytes().sum() for c in ("prompt", "response_a", "response_b"))
    with open_store(db, keys=keys) as store:
        t0 = time.perf_counter()
        got = len(store.extend(ann, kind="annotation"))
        return {"n": got, "extend": time.perf_counter() - t0, "text_bytes": int(text)}


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=160_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--realdata", default=str(ROOT.parent / "shared" / "realdata"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        what, *rest = a.child
        res = (child_phases(Path(rest[0]), Path(rest[1]), Path(rest[2])) if what == "phases"
               else child_synthetic(int(rest[0]), Path(rest[1]), Path(rest[2])))
        print(json.dumps(res))
        return 0
    source = Path(a.realdata) / HH
    if not source.is_file():
        print(f"missing {source}: pass --realdata DIR (the folder of ../shared/realdata)", file=sys.stderr)
        return 2
    work = Path(a.workdir or tempfile.mkdtemp(prefix="rak-ingest-real-"))
    work.mkdir(parents=True, exist_ok=True)
    from rlhf_audit_kit.keys import init_keys
    keys = work / "keys"
    if not keys.exists():
        init_keys(keys, "bench", no_passphrase=True)
    data = work / "harmless-base" / "test-x160k.jsonl.gz"
    data.parent.mkdir(exist_ok=True)
    base = build(source, a.rows, data)
    print(f"{a.rows:,} rows: {base:,} HH harmless-base test rows repeated ({data.stat().st_size / 1e6:.1f} MB gz)")

    for f in work.glob("*.duckdb*"):
        f.unlink()
    t0 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", "ingest", str(data), "--format", "hh-rlhf",
                          "--store", str(work / "cli.duckdb"), "--keys", str(keys)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if cli.returncode:
        print(cli.stderr, file=sys.stderr)
        return 1
    ph = _child("phases", str(data), str(work / "phases.duckdb"), str(keys))
    syn = _child("synthetic", str(a.rows), str(work / "synthetic.duckdb"), str(keys))
    mb = ph["text_bytes"] / ph["n"]
    print(f"{'path':<44} {'seconds':>8} {'rows/s':>9}")
    print(f"{'rlhf-audit ingest (real HH, end to end)':<44} {wall:8.2f} {a.rows / wall:9,.0f}")
    print(f"{'  load (read gz, split, content ids)':<44} {ph['load']:8.2f} {ph['n'] / ph['load']:9,.0f}")
    print(f"{'  extend (real HH rows)':<44} {ph['extend']:8.2f} {ph['n'] / ph['extend']:9,.0f}")
    print(f"{'extend (synthetic demo annotations)':<44} {syn['extend']:8.2f} {syn['n'] / syn['extend']:9,.0f}")
    print(f"text per row: real HH {mb:,.0f} B, synthetic {syn['text_bytes'] / syn['n']:,.0f} B")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
