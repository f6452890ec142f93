"""What a record costs on object storage: bytes per event, and the S3 requests of each bundle operation.

Run: ``python benchmarks/s3_requests.py [--record demo|train] [--events 200000] [--new 10000]
[--segments 20] [--work DIR]``.

Builds a store of ``--events`` events (``demo``: the demo campaign, ~87% annotations with their texts;
``train``: ``train_step`` events of 20 metrics each, a training run's record), and prints

* bytes per event of the store (the DuckDB file) and of its bundle (all the bundle's files);
* the requests an S3 server receives (moto's, on 127.0.0.1, behind a counting WSGI layer: what
  s3fs really sends, multipart parts and listings included), by S3 operation and by price class
  (A: PUT, COPY, POST, LIST; B: GET, HEAD), with the bytes up and down, for: a new bundle's export,
  an incremental export of ``--new`` events, opening the bundle, a full and an incremental
  verification, the annotator report over the URL (demo), and after ``--segments`` more small
  exports, the same incremental export and open again (what each further segment adds);
* the manifest's bytes per segment.

Nothing leaves the loopback; the store and bundle are under ``--work`` (an ignored folder).
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ledger import SIGNER, synthetic  # noqa: E402 - the ledger benchmark's key and annotations
from rlhf_audit_kit import open_bundle  # noqa: E402
from rlhf_audit_kit.bundle_export import write_bundle  # noqa: E402 - a publication, as store.publish makes it
from rlhf_audit_kit.store import open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASS_A = ("PUT", "PUT part", "COPY", "POST", "LIST")
METRICS = [f"m/{i:02d}" for i in range(20)]


class Counting:
    """WSGI layer in front of moto: counts each request by S3 operation, and the body bytes each way."""

    def __init__(self, app):
        self.app, self.lock = app, threading.Lock()
        self.reset()

    def reset(self):
        self.ops, self.up, self.down = collections.Counter(), 0, 0

    @staticmethod
    def operation(env) -> str:
        method, qs = env["REQUEST_METHOD"], parse_qs(env.get("QUERY_STRING", ""), keep_blank_values=True)
        key = env.get("PATH_INFO", "/").lstrip("/").partition("/")[2]
        if method == "GET":
            return "GET" if key else "LIST"
        if method == "PUT":
            return "COPY" if env.get("HTTP_X_AMZ_COPY_SOURCE") else "PUT part" if "partNumber" in qs else "PUT"
        return method  # HEAD, POST (multipart start/complete, batch delete), DELETE

    def __call__(self, env, start_response):
        op = self.operation(env)
        with self.lock:
            self.ops[op] += 1
            self.up += int(env.get("CONTENT_LENGTH") or 0)
        body = self.app(env, start_response)
        try:
            for chunk in body:
                with self.lock:
                    self.down += len(chunk)
                yield chunk
        finally:
            getattr(body, "close", lambda: None)()


def moto_server():
    """moto's S3 on 127.0.0.1 behind :class:`Counting`; (server, counter, storage options)."""
    import s3fs
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    counter = Counting(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counter, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    options = {"key": "bench", "secret": "bench-secret", "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    s3fs.S3FileSystem(**options).mkdir("bench")
    counter.reset()
    return server, counter, options


def train_steps(n: int, start: int = 0) -> pl.DataFrame:
    """``n`` train_step rows of 20 noisy float metrics (a map), as a trainer logs them."""
    rng = np.random.default_rng(start)
    values = rng.normal(size=(n, len(METRICS)))
    flat = pl.DataFrame({"key": METRICS * n, "value": values.ravel()}).to_struct()
    step = np.arange(start, start + n)
    return pl.DataFrame({
        "run_id": "ppo-bench", "algorithm": "ppo", "step": step,
        "metrics": flat.reshape((n, len(METRICS))).cast(pl.List(pl.Struct({"key": pl.String, "value": pl.Float64}))),
        "epoch": step / 10_000,
        "logged_at": np.datetime64("2024-03-04T00:00:00", "us") + step.astype("timedelta64[s]"),
    })


def more(record: str, n: int, start: int) -> tuple[pl.DataFrame, str]:
    return (synthetic(n, start), "annotation") if record == "demo" else (train_steps(n, start), "train_step")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", choices=("demo", "train"), default="demo")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--new", type=int, default=10_000, help="events of the measured incremental export")
    ap.add_argument("--segments", type=int, default=20, help="further small exports (what a segment adds)")
    ap.add_argument("--work", default=str(ROOT / ".cache" / "bench-s3-requests"))  # .cache/ is git-ignored
    args = ap.parse_args(argv)
    work = Path(args.work) / args.record
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db, local = work / "store.duckdb", work / "bundle"
    rows: list[tuple[str, str, str]] = []

    # -- bytes per event: the store and its bundle
    t0 = time.perf_counter()
    store = open_store(db, pseudonymize=False, origin="bench.example/log")
    if args.record == "demo":
        from rlhf_audit_kit.demo import Campaign
        Campaign(args.events, seed=0).write_to(store, progress=False)
    else:
        for start in range(0, args.events, 100_000):
            store.extend(train_steps(min(100_000, args.events - start), start), kind="train_step")
    store.close()  # a checkpoint: the file holds everything
    size = db.stat().st_size
    store = open_store(db, pseudonymize=False)
    first = store.snapshot(SIGNER)
    first.export(local, verify=False).close()
    n = first.size
    rows.append((f"store ({args.record}, {n:,} events)", f"{size / n:,.0f} B/event", f"{size / 1e6:,.1f} MB"))
    rows.append(("bundle (one segment)", f"{folder_bytes(local) / n:,.0f} B/event",
                 f"{folder_bytes(local) / 1e6:,.1f} MB in {sum(1 for p in local.rglob('*') if p.is_file())} files"))
    print(f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    # -- requests on S3
    server, counter, options = moto_server()
    url = "s3://bench/bundle"

    def measured(what: str, fn) -> None:
        counter.reset()
        t = time.perf_counter()
        fn()
        t = time.perf_counter() - t
        ops = counter.ops
        a, b = sum(ops[k] for k in CLASS_A), ops["GET"] + ops["HEAD"]
        detail = ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))
        rows.append((what, f"{sum(ops.values())} requests",
                     f"class A {a}, B {b} ({detail}); up {counter.up / 1e6:,.2f} MB, down "
                     f"{counter.down / 1e6:,.2f} MB; {t:.2f} s"))

    def verify(**kw):
        with open_bundle(url, storage_options=options) as bundle:
            report = bundle.verify(SIGNER.verifier, workers=0, **kw)
        assert report.ok, report.message

    def publish(snap, **kw):  # what store.publish does each time: write, verify, no bundle opened after
        write_bundle(store, snap, url, verifier=SIGNER.verifier, storage_options=options, **kw)

    try:
        measured(f"publication of a new bundle ({n:,} events; verified locally before upload)",
                 lambda: publish(first))
        frame, kind = more(args.record, args.new, 10 ** 9)
        store.extend(frame, kind=kind)
        second = store.snapshot(SIGNER)
        frame, kind = more(args.record, args.new, 3 * 10 ** 9)
        store.extend(frame, kind=kind)
        third = store.snapshot(SIGNER)
        measured(f"incremental publication of {second.size - n:,} events, verify=False", lambda: publish(second,
                                                                                                       verify=False))
        measured(f"incremental publication of {third.size - second.size:,} events (verified: the default)",
                 lambda: publish(third))
        measured("open (3 segments)", lambda: open_bundle(url, storage_options=options).close())
        measured(f"open + full verify ({third.size:,} events)", verify)
        measured("open + verify(since=the previous note)", lambda: verify(since=second.note))
        if args.record == "demo":
            from rlhf_audit_kit.analysis import annotator_report
            measured("annotator_report(url)", lambda: annotator_report(url, storage_options=options))
        for snap in (second, third):
            write_bundle(store, snap, local, verifier=SIGNER.verifier, verify=False)
        manifest0 = (local / "manifest.json").stat().st_size
        for i in range(args.segments):  # small segments: what each one adds to the manifest and to an open
            frame, kind = more(args.record, 100, 2 * 10 ** 9 + 100 * i)
            store.extend(frame, kind=kind)
            prev, snap = snap, store.snapshot(SIGNER)
            write_bundle(store, snap, local, verifier=SIGNER.verifier, verify=False)
            if i < args.segments - 1:
                publish(snap, verify=False)
        segs = 3 + args.segments
        measured(f"incremental publication of {snap.size - prev.size} events onto {segs - 1} segments (verified)",
                 lambda: publish(snap))
        measured(f"open ({segs} segments)", lambda: open_bundle(url, storage_options=options).close())
        measured(f"snapshot.export(url) of nothing new onto {segs} segments (it returns the bundle opened)",
                 lambda: snap.export(url, storage_options=options).close())
        per = ((local / "manifest.json").stat().st_size - manifest0) / args.segments
        rows.append(("manifest.json per segment", f"{per:,.0f} B", f"{(local / 'manifest.json').stat().st_size:,} B "
                     f"with {segs} segments (Limits.max_manifest_bytes: 8 MiB)"))
        store.close()
    finally:
        server.shutdown()
    print(f"\nrlhf-audit-kit S3 requests ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}); "
          f"moto S3 on 127.0.0.1, s3fs defaults")
    w = max(len(r[0]) for r in rows)
    for name, fig, note in rows:
        print(f"{name:<{w}}  {fig:>16}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
