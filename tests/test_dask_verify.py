"""Verification on Dask: ``bundle.verify(key, scheduler=...)`` gives the local verifier's report; so do
the segments verified apart on this machine (in this process, or in worker processes).

One real ``LocalCluster`` of 2 worker processes (tasks and results really pickled) for the module; a
bundle of 4 segments (checkpoints inside segments too) is built once, and every case damages a copy
as someone handing the folder on would, then compares the Dask report with the local one: the same
findings, the same first bad seq.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest

from rlhf_audit_kit import open_bundle, segment_verify
from rlhf_audit_kit.errors import AuditKitError
from rlhf_audit_kit.store import open_store

from test_snapshot_verify import OTHER, SIGNER, events  # noqa: E402 - shared fixtures

distributed = pytest.importorskip("dask.distributed")
VKEY = SIGNER.verifier.vkey


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("dask")
    snaps = []
    with open_store(d / "a.duckdb", pseudonymize=False, origin="audit.example/log") as store:
        for i in range(4):
            store.extend(events(2 * i) + events(2 * i + 1))
            if i % 2:
                store.snapshot(SIGNER)  # a signed size inside the next segment
            snap = store.snapshot(SIGNER)
            snap.export(d / "bundle").close()
            snap.store = None
            snaps.append(snap)
    return d / "bundle", snaps


@pytest.fixture()
def bundle(made, tmp_path):
    shutil.copytree(made[0], tmp_path / "bundle")
    return tmp_path / "bundle"


def key(f):
    return f.damage, f.seq is None, f.seq or 0, f.checkpoint or 0, f.message


def assert_same(local, dask):
    """The Dask report is the local one (elapsed time and timings aside)."""
    assert sorted(map(key, dask.findings)) == sorted(map(key, local.findings)), (dask.findings, local.findings)
    for attr in ("ok", "first_bad_seq", "damage", "message", "events", "signed_size", "signed_root",
                 "checkpoints_verified", "covered", "since", "consistency_proof", "left_to_full", "later_files",
                 "signed_by", "unsigned"):
        assert getattr(dask, attr) == getattr(local, attr), attr


@contextlib.contextmanager
def tasks_of(events: int):
    """Tasks of at least ``events`` events: 1 splits the bundle's 4 segments apart, 10**18 makes the
    whole log one range (the reference: :func:`~rlhf_audit_kit.ledger.verify.verify_source` alone)."""
    old = segment_verify.MIN_TASK_EVENTS
    segment_verify.MIN_TASK_EVENTS = events
    try:
        yield
    finally:
        segment_verify.MIN_TASK_EVENTS = old


def both(folder, client, key=VKEY, pool=False, **kw):
    """The whole verification's report = segments apart in this process (= in 2 worker processes) = Dask."""
    with open_bundle(folder) as b:
        with tasks_of(10 ** 18):
            local = b.verify(key, workers=0, **kw)
        with tasks_of(1):
            apart = b.verify(key, workers=0, **kw)
            dask = b.verify(key, scheduler=client, **kw)
            pooled = b.verify(key, workers=2, **kw) if pool else apart
        with tasks_of(20):  # two segments a task
            pairs = b.verify(key, workers=0, **kw)
    for other in (apart, dask, pooled, pairs):
        assert_same(local, other)
    assert "segments" not in local.timings
    assert "dask" in dask.timings or dask.damage == "malformed-bundle"  # (data that does not decode: no timings)
    split = apart.damage != "malformed-bundle" and "segments" in apart.timings  # (else: redone as one range)
    if split and pool:
        assert pooled.timings["processes"] == 2
    return local


# ---------------------------------------------------------------- damage, as an attacker makes it
def seg(folder: Path, table: str, k: int) -> Path:
    return sorted((folder / "segments").glob(f"{table}-*.parquet"))[k]


def seqs(path: Path) -> list[int]:
    return pl.read_parquet(path)["seq"].to_list()


def edit(path: Path, seq: int, column: str, fn) -> int:
    df = pl.read_parquet(path)
    df.with_columns(pl.when(pl.col("seq") == seq).then(fn(pl.col(column))).otherwise(pl.col(column))
                    .alias(column)).write_parquet(path)
    return seq


def mid(path: Path) -> int:
    s = seqs(path)
    return s[len(s) // 2]


def relist(folder: Path, name: str) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    data = (folder / name).read_bytes()
    m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(m))


def blob(c):
    return pl.concat_str([c.cast(pl.Utf8), pl.lit(" ")]).cast(pl.Binary)


def rehash(c):
    return c.bin.encode("hex").str.replace("^..", "ff").str.decode("hex")


def set_seq(path: Path, old: int, new: int) -> None:
    edit(path, old, "seq", lambda c: pl.lit(new, dtype=pl.Int64))


def swap_across(f: Path) -> None:
    a, b = seg(f, "log", 0), seg(f, "log", 2)
    x, y = mid(a), mid(b)
    set_seq(a, x, y)
    set_seq(b, y, x)


def drop(path: Path, seq: int) -> None:
    pl.read_parquet(path).filter(pl.col("seq") != seq).write_parquet(path)


def dup(path: Path, seq: int) -> None:
    df = pl.read_parquet(path)
    pl.concat([df, df.filter(pl.col("seq") == seq)]).write_parquet(path)


def consistent_rewrite(f: Path) -> None:
    """A typed field, its entry and its leaf hash changed together: only the signed roots catch it."""
    ann, log = seg(f, "annotation", 1), seg(f, "log", 1)
    t = mid(ann)
    old = pl.read_parquet(ann).filter(pl.col("seq") == t)["response_a"][0]
    edit(ann, t, "response_a", lambda c: c + " (edited)")
    entry = pl.read_parquet(log).filter(pl.col("seq") == t)["entry"][0].decode()
    new = entry.replace(json.dumps(old)[1:-1], json.dumps(old + " (edited)")[1:-1]).encode()
    edit(log, t, "entry", lambda c: pl.lit(new))
    edit(log, t, "leaf_hash", lambda c: pl.lit(hashlib.sha256(b"\x00" + new).digest()))


def note(f: Path, which: str, what: str) -> None:
    m = json.loads((f / "manifest.json").read_text())
    name = m["segments"][1]["note"] if which == "segment" else "checkpoint.note"
    lines = (f / name).read_text().split("\n")
    if what == "text":
        lines[1] = str(int(lines[1]) - 1)
    else:
        sig = lines[-2].rsplit(" ", 1)
        i = len(sig[1]) - 10
        lines[-2] = sig[0] + " " + sig[1][:i] + ("A" if sig[1][i] != "A" else "B") + sig[1][i + 1:]
    (f / name).write_text("\n".join(lines))


def manifest_edit(f: Path) -> None:
    m = json.loads((f / "manifest.json").read_text())
    m["files"][seg(f, "rating", 2).relative_to(f).as_posix()]["sha256"] = "0" * 64
    (f / "manifest.json").write_text(json.dumps(m))


def damaged_page(f: Path) -> None:
    import pyarrow.parquet as pq
    from rlhf_audit_kit.bundle_files import _page_header
    path = seg(f, "log", 2)
    col = pq.ParquetFile(path).metadata.row_group(0).column(3)  # entry
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    with open(path, "rb") as fh:
        head, n = _page_header(fh, start, path.stat().st_size)
    data = bytearray(path.read_bytes())
    data[start + n:start + n + head[3]] = b"\xff" * head[3]
    path.write_bytes(bytes(data))
    relist(f, path.relative_to(f).as_posix())


def retype(f: Path, table: str, k: int, column: str, expr: str) -> None:
    path = seg(f, table, k)
    con = duckdb.connect()
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()]
    sel = ", ".join(f"{expr} AS {c}" if c == column else f'"{c}"' for c in cols)
    con.execute(f"COPY (SELECT {sel} FROM read_parquet('{path}')) TO '{path}.new' (FORMAT parquet)")
    con.close()
    Path(f"{path}.new").replace(path)
    relist(f, path.relative_to(f).as_posix())


def older_exporter(f: Path) -> None:
    """The first annotation segment as an exporter before the later columns wrote it (fine)."""
    path = seg(f, "annotation", 0)
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * EXCLUDE (meta, display_order_known) FROM read_parquet('{path}')) "
                f"TO '{path}.new' (FORMAT parquet)")
    con.close()
    Path(f"{path}.new").replace(path)
    relist(f, path.relative_to(f).as_posix())


CASES = {
    "clean": lambda f: None,
    "older-exporter-columns": older_exporter,
    "log-entry": lambda f: edit(seg(f, "log", 1), mid(seg(f, "log", 1)), "entry", blob),
    "log-leaf-hash": lambda f: edit(seg(f, "log", 3), mid(seg(f, "log", 3)), "leaf_hash", rehash),
    "log-kind": lambda f: edit(seg(f, "log", 3), mid(seg(f, "log", 3)), "kind", lambda c: pl.lit("bogus")),
    "annotation-field": lambda f: edit(seg(f, "annotation", 1), mid(seg(f, "annotation", 1)), "response_b",
                                       lambda c: c + "x"),
    "typed-ts": lambda f: edit(seg(f, "rating", 2), mid(seg(f, "rating", 2)), "ts",
                               lambda c: c + pl.duration(seconds=1)),
    "two-segments": lambda f: (edit(seg(f, "annotation", 3), mid(seg(f, "annotation", 3)), "prompt", lambda c: c + "x"),
                               edit(seg(f, "rating", 1), mid(seg(f, "rating", 1)), "annotator", lambda c: c + "x")),
    "unencodable-and-later-ts": lambda f: (  # a kind that does not encode hides its other damage
        edit(seg(f, "reward_score", 1), mid(seg(f, "reward_score", 1)), "score", lambda c: pl.lit(float("nan"))),
        edit(seg(f, "reward_score", 3), mid(seg(f, "reward_score", 3)), "ts", lambda c: c + pl.duration(seconds=1)),
        edit(seg(f, "annotation", 2), mid(seg(f, "annotation", 2)), "prompt", lambda c: c + "x")),
    "delete-log-row": lambda f: drop(seg(f, "log", 1), mid(seg(f, "log", 1))),
    "delete-last-log-row-of-a-segment": lambda f: drop(seg(f, "log", 1), seqs(seg(f, "log", 1))[-1]),
    "log-seq-into-a-later-segment": lambda f: set_seq(seg(f, "log", 0), mid(seg(f, "log", 0)),
                                                      mid(seg(f, "log", 2))),
    "log-seqs-swapped-across-segments": swap_across,
    "typed-seq-into-another-segment": lambda f: set_seq(seg(f, "annotation", 1), mid(seg(f, "annotation", 1)),
                                                        mid(seg(f, "annotation", 2))),
    "delete-typed-row": lambda f: drop(seg(f, "annotation", 2), mid(seg(f, "annotation", 2))),
    "duplicate-typed-row": lambda f: dup(seg(f, "rating", 1), mid(seg(f, "rating", 1))),
    "consistent-rewrite": consistent_rewrite,
    "segment-note-text": lambda f: note(f, "segment", "text"),
    "note-copy-signature": lambda f: note(f, "copy", "signature"),
    "manifest-edit": manifest_edit,
    "unlisted-file": lambda f: (f / "segments" / "notes.txt").write_text("not a segment"),
    "damaged-page": damaged_page,
    "strength-as-text": lambda f: retype(f, "annotation", 1, "strength", "'abc'"),
    "log-seq-as-text": lambda f: retype(f, "log", 2, "seq", "seq::VARCHAR || 'x'"),
}


POOLED = ("clean", "log-entry", "typed-seq-into-another-segment", "damaged-page", "log-seq-as-text")


@pytest.mark.parametrize("case", CASES)
def test_dask_report_is_the_local_one(bundle, client, case):
    CASES[case](bundle)
    # worker processes for a few: results and decode errors really pickled through their pipes
    local = both(bundle, client, pool=case in POOLED)
    assert local.ok == (case in ("clean", "older-exporter-columns")), local.findings


def test_wrong_key(bundle, client):
    assert both(bundle, client, key=OTHER.verifier.vkey).damage == "bad-signature"


@pytest.mark.parametrize("case", ["clean", "new-segment", "old-segment", "damaged-new-page"])
def test_since(made, bundle, client, case):
    _, snaps = made
    if case == "new-segment":
        edit(seg(bundle, "annotation", 3), mid(seg(bundle, "annotation", 3)), "prompt", lambda c: c + "x")
    elif case == "old-segment":  # found only by a full verification, on Dask as here
        edit(seg(bundle, "annotation", 0), mid(seg(bundle, "annotation", 0)), "prompt", lambda c: c + "x")
    elif case == "damaged-new-page":
        damaged_page(bundle)
    for since in (snaps[1].note, snaps[1].size, snaps[1]) if case == "clean" else (snaps[1].note,):
        report = both(bundle, client, since=since)
        assert report.ok == (case in ("clean", "old-segment"))
        assert report.covered[0] == snaps[1].size if report.damage != "malformed-bundle" else report.covered is None
    if case == "clean":  # trusting the newest checkpoint: nothing new to derive
        with open_bundle(bundle) as b:
            full = b.verify(VKEY, workers=0)
            assert full.ok and b.verify(VKEY, scheduler=client, since=full).covered == (full.events, full.events)
            assert_same(b.verify(VKEY, workers=0, since=full), b.verify(VKEY, scheduler=client, since=full))


def test_scheduler_address_and_command_line(made, bundle, client):
    from rlhf_audit_kit.cli import main
    address = client.scheduler.address
    with open_bundle(bundle) as b:
        assert_same(b.verify(VKEY, workers=0), b.verify(VKEY, scheduler=address))

    def cli(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["verify", str(bundle), "--vkey", VKEY, *args])
        return code, out.getvalue(), err.getvalue()
    code, out, _ = cli("--scheduler", address)
    assert code == 0 and out.startswith("OK: "), out
    edit(seg(bundle, "annotation", 2), mid(seg(bundle, "annotation", 2)), "prompt", lambda c: c + "x")
    local, dask = cli("--workers", "0"), cli("--scheduler", address)
    assert dask[0] == local[0] == 3 and dask[2] == local[2] and "FAILED at seq" in dask[2] and "Traceback" not in dask[2]
    store = made[0].parent / "a.duckdb"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["verify", str(store), "--vkey", VKEY, "--scheduler", address])
    assert code != 0 and "--scheduler" in err.getvalue() and "not a bundle" in err.getvalue(), err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_without_dask_the_error_names_the_extra(bundle, monkeypatch):
    import sys
    with open_bundle(bundle) as b, pytest.raises(AuditKitError, match="not int"):
        b.verify(VKEY, scheduler=8786)
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if the dask extra were not installed
    with open_bundle(bundle) as b, pytest.raises(AuditKitError, match=r"rlhf-audit-kit\[dask\]"):
        b.verify(VKEY, scheduler="tcp://127.0.0.1:8786")


# ---------------------------------------------------------------- a bundle on object storage
@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (dummy credentials, nothing leaves the loopback) and its options."""
    import logging
    s3fs = pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "dask-test", "secret": "dask-test-secret", "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("dask-bundles")
    yield options, fs
    server.stop()


@pytest.mark.parametrize("case", ["clean", "two-segments", "delete-log-row"])
def test_bundle_on_s3_verified_on_dask(bundle, client, s3, case):
    """The workers open the segments from the URL (the storage options travel with the task)."""
    options, fs = s3
    CASES[case](bundle)
    url = f"s3://dask-bundles/{case}/bundle"
    paths = [p for p in sorted(bundle.rglob("*")) if p.is_file()]
    fs.put([str(p) for p in paths], [f"{url}/{p.relative_to(bundle).as_posix()}" for p in paths])
    with open_bundle(url, storage_options=options) as b:
        local, dask = b.verify(VKEY, workers=0), b.verify(VKEY, scheduler=client)
    assert_same(local, dask)
    assert "dask" in dask.timings and local.ok == (case == "clean")
    with open_bundle(bundle) as b:  # as on the local disk
        on_disk = b.verify(VKEY, workers=0)
    assert (on_disk.first_bad_seq, on_disk.damage, on_disk.signed_root) == (dask.first_bad_seq, dask.damage,
                                                                           dask.signed_root)
