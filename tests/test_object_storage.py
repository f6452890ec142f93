"""Bundles on object storage: a real S3 API (moto's server on 127.0.0.1, read through s3fs) and memory://.

The S3 server runs in this process for the session, with dummy credentials; nothing leaves the
loopback. Every damage a local bundle is checked for (tests/test_tamper.py, tests/test_segments.py,
tests/test_incremental_verify.py) is done to a copy, uploaded, and verified on both sides: the
findings must be the same, with the same first bad seq.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import shutil
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import NamedTuple

import polars as pl
import pytest

from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.bundle import verify_bundle
from rlhf_audit_kit.bundle_files import BundleFiles, Limits, read_bundle_parquet
from rlhf_audit_kit.errors import AuditKitError, BundleError
from rlhf_audit_kit.segments import later_files
from rlhf_audit_kit.store import open_store

from test_snapshot_verify import OTHER, SIGNER, build, events  # noqa: E402 - shared fixtures

BUCKET = "audit-bundles"
KEY_ID = "AKIAOBJECTSTORAGETEST"
SECRET = f"s3cret-{uuid.uuid4().hex}"  # must never show up in a bundle, a repr, an error or a log


class S3(NamedTuple):
    endpoint: str
    options: dict
    fs: object

    def url(self) -> str:
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/bundle"


@pytest.fixture(scope="session")
def s3():
    import s3fs
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(BUCKET)
    yield S3(endpoint, options, fs)
    server.stop()


@pytest.fixture
def aws_env(s3, monkeypatch):
    """The command line's configuration: the AWS variables s3fs (botocore) reads, nothing on the command line."""
    import s3fs
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": s3.endpoint,
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached file system would keep an older configuration
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A store with two snapshots and its local bundle of two segments; the store stays open."""
    d = tmp_path_factory.mktemp("objstore")
    store, snaps = build(d / "a.duckdb", batches=4, snap_every=2)
    for snap in snaps:
        snap.export(d / "local").close()
    yield d, store, snaps
    store.close()


def upload(s3: S3, folder: Path) -> str:
    url = s3.url()
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    s3.fs.put([str(p) for p in paths], [f"{url}/{p.relative_to(folder).as_posix()}" for p in paths])  # concurrently
    return url


def outcome(report) -> tuple:
    return report.ok, report.damage, report.first_bad_seq, sorted((f.damage, f.seq or -1) for f in report.findings)


def verified(where, key, **kw) -> tuple:
    """The outcome of verifying ``where``, or the error it raised (a trusted note that does not verify)."""
    try:
        report = verify_bundle(where, key, workers=0, **kw)
    except AuditKitError as e:
        return ("raised", type(e).__name__), None
    return outcome(report), report


def cli(*args: str) -> tuple[int, str, str]:
    from rlhf_audit_kit.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ export, open, verify; no credentials anywhere
def test_export_open_verify_and_the_credentials_stay_out(s3, base, caplog):
    caplog.set_level(logging.DEBUG, logger="rlhf_audit_kit")
    caplog.set_level(logging.DEBUG, logger="s3fs")
    caplog.set_level(logging.DEBUG, logger="fsspec")
    d, _, snaps = base
    url = s3.url()
    snaps[0].export(url, storage_options=s3.options).close()
    with snaps[1].export(url, storage_options=s3.options) as bundle, open_bundle(d / "local") as local:
        assert (bundle.url, bundle.storage_options) == (url, s3.options)
        assert [(s.start, s.end) for s in bundle.segments] == [(s.start, s.end) for s in local.segments]
        assert bundle.counts() == local.counts() and bundle.size == local.size == snaps[1].size
        q = "SELECT * FROM annotation ORDER BY seq"
        assert bundle.sql(q).equals(local.sql(q))
        report = bundle.verify(SIGNER.verifier, workers=0)
        assert report.ok and report.checkpoints_verified >= 2, report.message
        assert bundle.verify(SIGNER.vkey, workers=0, since=snaps[0].note).covered == (snaps[0].size, snaps[1].size)
        wrong = bundle.verify(OTHER.verifier, workers=0)  # the pinned key decides, not the shipped one
        assert not wrong.ok and wrong.damage == "bad-signature"
        shown = [repr(bundle), str(bundle), bundle._repr_html_(), str(bundle.path), repr(bundle.files),
                 repr(report), report.message, str(report.findings), wrong.message]
        manifest = bundle.manifest
    # every object of the bundle, every byte
    objects = s3.fs.find(url)
    assert len(objects) == len(manifest["files"]) + 2  # + manifest.json and checkpoint.note
    for obj in objects:
        data = s3.fs.cat_file(obj)
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, obj
    for bad in (s3.url(), f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/b"):  # a missing bundle, a missing bucket
        with pytest.raises((AuditKitError, FileNotFoundError)) as caught:
            open_bundle(bad, storage_options=s3.options)
        shown.append(str(caught.value))
    assert "no manifest.json" in shown[-2]
    for text in shown + [caplog.text]:
        assert SECRET not in text and KEY_ID not in text


def test_file_urls_are_local_folders(base):
    d, _, snaps = base
    with open_bundle(f"file://{d / 'local'}") as b:  # read as a folder: no link followed, regular files only
        assert b.files.local and b.url == os.path.realpath(d / "local") and b.storage_options == {}
        assert b.verify(SIGNER.verifier, workers=0).ok


# ------------------------------------------------------------------ publishing twice, then the command line
def test_publish_twice_then_verify_since_and_info_on_the_command_line(s3, aws_env, tmp_path):
    url = s3.url()
    with open_store(tmp_path / "live.duckdb", pseudonymize=False, origin="audit.example/log") as store:
        store.extend(events(0))
        with store.publish(url, SIGNER, every=600, storage_options=s3.options) as publisher:
            first = publisher.published
            before = {o: s3.fs.info(o)["ETag"] for o in s3.fs.find(url) if "/segments/" in o}
            store.extend(events(1) + events(2))
            second = publisher.publish_now()
            assert SECRET not in repr(publisher)
    assert second.size > first.size
    assert all(s3.fs.info(o)["ETag"] == etag for o, etag in before.items())  # earlier segments untouched
    (tmp_path / "trusted.note").write_text(first.note)
    rc, out, err = cli("verify", url, "--vkey", SIGNER.vkey, "--since", str(tmp_path / "trusted.note"))
    assert rc == 0 and out.startswith("OK") and f"extends the trusted checkpoint of size {first.size}" in out, err
    rc, out, err = cli("info", url)
    assert rc == 0 and out.startswith(f"bundle  {url}") and "events" in out, err
    with open_bundle(url) as b:  # the environment's configuration, as the command line
        rc, out, err = cli("verify", url, "--vkey", OTHER.vkey)
        assert rc == 3 and "bad-signature" in out + err and b.size >= second.size
    assert SECRET not in out + err


# ------------------------------------------------------------------ readers during an export
def test_a_reader_during_exports_never_sees_a_missing_segment(s3, tmp_path):
    url = s3.url()
    with open_store(tmp_path / "w.duckdb", pseudonymize=False, origin="audit.example/log") as store:
        store.extend(events(0))
        publisher = store.publish(url, SIGNER, every=600, storage_options=s3.options)
        failures: list = []
        reading = threading.Event()

        def write() -> None:
            try:
                for i in range(1, 4):
                    store.extend(events(i))
                    reading.clear()
                    reading.wait(60)  # each export starts while a read is under way, however fast either is
                    publisher.publish_now()
            except BaseException as e:  # noqa: BLE001 - reported by the test
                failures.append(e)
        writer = threading.Thread(target=write)
        writer.start()
        sizes, reads = set(), 0
        while writer.is_alive() or reads == 0:
            reading.set()
            with open_bundle(url, storage_options=s3.options) as b:  # the manifest it reads names only whole objects
                r = b.verify(SIGNER.verifier, workers=0)
                assert r.ok, r.message  # no finding: no missing object, nothing unlisted but a later publication
                extra = b.files.unlisted([*b.manifest["files"], "manifest.json", "checkpoint.note"],
                                         expand=("segments", "checkpoints"))
                assert later_files(b.files, extra, b.size) == extra  # listed again since: still only later ones
                sizes.add(b.size)
                reads += 1
        writer.join()
        publisher.stop()
    assert not failures, failures
    assert len(sizes) >= 2 and reads >= 3, (sizes, reads)  # the reads overlapped the exports


# ------------------------------------------------------------------ the tamper cases, local and S3 alike
def _seg(folder: Path, table: str, index: int) -> Path:
    return sorted((folder / "segments").glob(f"{table}-*.parquet"))[index]


def _edit(table: str, column: str, index: int):
    def tamper(folder: Path) -> None:  # as tests/test_tamper.py::test_tamper_bundle_parquet
        path = _seg(folder, table, index)
        df = pl.read_parquet(path)
        seq = df["seq"][len(df) // 2]
        col = pl.col(column)
        if df.schema[column] == pl.Binary:
            new = (col.bin.encode("hex").str.replace("^..", "ff").str.decode("hex") if column == "leaf_hash"
                   else pl.concat_str([col.cast(pl.Utf8), pl.lit(" ")]).cast(pl.Binary))
        else:
            new = col + ("x" if df.schema[column] == pl.Utf8 else 1)
        df.with_columns(pl.when(pl.col("seq") == seq).then(new).otherwise(col).alias(column)).write_parquet(path)
    return tamper


def _delete_row(seq: int):
    def tamper(folder: Path) -> None:
        path = next(p for p in (folder / "segments").glob("log-*.parquet")
                    if int(p.stem.split("-")[1]) <= seq < int(p.stem.split("-")[2]))
        pl.read_parquet(path).filter(pl.col("seq") != seq).write_parquet(path)
    return tamper


def _note(which: str, what: str):
    def tamper(folder: Path) -> None:  # as tests/test_tamper.py::test_tamper_bundle_note
        name = json.loads((folder / "manifest.json").read_text())["note"] if which == "note" else which
        lines = (folder / name).read_text().split("\n")
        if what == "text":
            lines[1] = str(int(lines[1]) - 1)
        else:
            head, sig = lines[-2].rsplit(" ", 1)
            i = len(sig) - 10
            lines[-2] = f"{head} {sig[:i]}{'A' if sig[i] != 'A' else 'B'}{sig[i + 1:]}"
        (folder / name).write_text("\n".join(lines))
    return tamper


def _manifest_edit(folder: Path) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["files"][f"segments/{_seg(folder, 'annotation', -1).name}"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(m))


def _not_parquet(folder: Path) -> None:  # garbage, relisted with its true digest: refused before decoding
    import hashlib
    path = _seg(folder, "rating", -1)
    path.write_bytes(b"PAR1 this is not a parquet file PAR1")
    m = json.loads((folder / "manifest.json").read_text())
    m["files"][f"segments/{path.name}"].update(sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                               bytes=path.stat().st_size)
    (folder / "manifest.json").write_text(json.dumps(m))


TAMPER = {
    "log-entry-new": _edit("log", "entry", -1), "log-leaf-hash-new": _edit("log", "leaf_hash", -1),
    "log-entry-old": _edit("log", "entry", 0), "annotation-new": _edit("annotation", "response_b", -1),
    "train-step-old": _edit("train_step", "step", 0), "reward-score-new": _edit("reward_score", "score", -1),
    "deleted-row-old": _delete_row(20), "deleted-row-new": _delete_row(40),
    "note-text": _note("note", "text"), "note-signature": _note("note", "signature"),
    "note-copy-text": _note("checkpoint.note", "text"), "note-copy-signature": _note("checkpoint.note", "signature"),
    "manifest-sha": _manifest_edit, "not-parquet": _not_parquet,
    "missing-segment": lambda f: _seg(f, "custom", -1).unlink(),
    "missing-log": lambda f: _seg(f, "log", -1).unlink(),
    "unlisted-object": lambda f: (f / "segments" / "notes.txt").write_text("hello"),
}


@pytest.mark.parametrize("case", [*TAMPER, "wrong-key", "small-limits"])
def test_tampered_bundles_are_found_on_s3_as_locally(s3, base, tmp_path, case):
    d, _, snaps = base
    folder = tmp_path / "bundle"
    shutil.copytree(d / "local", folder)
    TAMPER.get(case, lambda f: None)(folder)
    url = upload(s3, folder)
    key = OTHER.verifier if case == "wrong-key" else SIGNER.verifier
    limits = Limits(max_page_bytes=64) if case == "small-limits" else None
    for since in (None, snaps[0].note):
        here, local = verified(folder, key, since=since, limits=limits)
        there, remote = verified(url, key, since=since, limits=limits, storage_options=s3.options)
        assert there == here, (since, remote and remote.findings, local and local.findings)
        assert here[0] is not True or (since is not None and case.endswith("-old"))  # old damage: found in full
    limited = [f.message for f in (remote.findings if remote else []) if f.damage == "oversized"]
    assert limited == [f.message for f in (local.findings if local else []) if f.damage == "oversized"]


# ------------------------------------------------------------------ memory://
def test_memory_urls_export_extend_verify_and_find_damage(base):
    import fsspec
    d, _, snaps = base
    url = f"memory://objstore-{uuid.uuid4().hex[:8]}/bundle"
    fs = fsspec.filesystem("memory")
    try:
        snaps[0].export(url).close()
        with snaps[1].export(url) as b:
            assert [(s.start, s.end) for s in b.segments] == [(0, snaps[0].size), (snaps[0].size, snaps[1].size)]
            assert b.verify(SIGNER.verifier, workers=0).ok
            assert b.verify(SIGNER.verifier, workers=0, since=snaps[0].note).covered == (snaps[0].size, snaps[1].size)
            name = b.segments[-1].log_file
        assert not [p for p in fs.find(f"/{url.split('://')[1].split('/')[0]}") if ".partial-" in p]  # none left aside
        local = d / "memory-copy"
        shutil.copytree(d / "local", local)
        _edit("log", "entry", -1)(local)
        fs.pipe_file(f"{url.split('://')[1]}/{name}", (local / name).read_bytes())
        here, there = verify_bundle(local, SIGNER.verifier, workers=0), verify_bundle(url, SIGNER.verifier, workers=0)
        assert not there.ok and outcome(there) == outcome(here)
        with open_bundle(url) as b:  # an object removed after opening: one line that says so, no traceback
            fs.rm_file(f"{url.split('://')[1]}/{b.segments[-1].log_file}")
            with pytest.raises(BundleError) as e:
                b.sql("SELECT max(seq) FROM log")
        assert "FileNotFoundError" in str(e.value) and "Traceback" not in str(e.value), str(e.value)
    finally:
        fs.rm(f"/{url.split('://')[1].split('/')[0]}", recursive=True)


# ------------------------------------------------------------------ what Dask workers get
def test_bundle_files_pickle_and_read_checked_segments(s3, base):
    d, _, snaps = base
    url = s3.url()
    with snaps[1].export(url, storage_options=s3.options) as b:
        files = pickle.loads(pickle.dumps(b.files))
        assert SECRET not in repr(files) and files._fs is None
        seg = b.segments[-1]
        table, digest = files.read_parquet(seg.log_file)
        assert table.num_rows == seg.end - seg.start and digest == b.manifest["files"][seg.log_file]["sha256"]
        again = read_bundle_parquet(b.url, b.storage_options, seg.log_file, b.limits, columns=["seq"])
        assert again[0].column_names == ["seq"] and again[1] == digest
        with pytest.raises(BundleError) as e:
            read_bundle_parquet(b.url, b.storage_options, seg.log_file, Limits(max_page_bytes=64))
        assert e.value.damage == "oversized"
        with pytest.raises(BundleError, match="not a plain file name"):
            BundleFiles(b.url, b.storage_options).open("../elsewhere/manifest.json")


# ------------------------------------------------------------------ serving an S3 bundle
def test_serve_an_s3_bundle(s3, aws_env, base):
    from browser.served import served_dashboards
    _, _, snaps = base
    url = s3.url()
    snaps[1].export(url, storage_options=s3.options).close()
    with served_dashboards() as start:
        base_url = start(url, verifier=SIGNER.vkey)
        with urllib.request.urlopen(base_url + "/", timeout=60) as r:
            page = r.read().decode()
        assert r.status == 200 and "<title>RLHF audit: bundle</title>" in page  # the session was built from S3
    assert SECRET not in page


def test_an_object_replaced_after_opening_is_never_read_as_the_checked_one(s3, base):
    d, _, snaps = base
    url = s3.url()
    with snaps[0].export(url, storage_options=s3.options) as b:
        name = b.segments[-1].log_file
        before = b.sql("SELECT count(*) AS n FROM log")["n"][0]
        s3.fs.put_file(str(d / "a.duckdb"), f"{url}/{name}")  # other bytes under the checked name
        with pytest.raises(OSError), b.files.open(name) as fh:  # reads are pinned to the listed ETag
            fh.read()
        assert b.sql("SELECT count(*) AS n FROM log")["n"][0] == before  # DuckDB keeps what it read and checked
        report = b.verify(SIGNER.verifier, workers=0)
    assert not report.ok and "manifest-mismatch" in {f.damage for f in report.findings}


# ---------------------------------------------------------------- witnesses and the compliance notebook
def test_witness_cosignatures_and_a_compliance_notebook_of_a_bundle_on_s3(s3, base, tmp_path, monkeypatch):
    """A cosigned note in the bundle's cosignatures/ counts on S3 as locally; the compliance notebook names
    the bundle by its URL, and its kernel opens it with a profile from its own config file: no secret
    enters the notebook, and secret-like variables are not passed to the kernel."""
    import s3fs

    from rlhf_audit_kit.ledger.witness import Witness, bundle_cosignatures, write_cosigned_note
    from rlhf_audit_kit.report.compliance import export_compliance_notebook
    from rlhf_audit_kit.witness_keys import init_witness_keys, load_witness_signer
    d, _, _ = base
    local = tmp_path / "bundle"
    shutil.copytree(d / "local", local)
    init_witness_keys(tmp_path / "w1", "witness.example/w1", no_passphrase=True)
    w1 = Witness(tmp_path / "w1" / "state", load_witness_signer(tmp_path / "w1"))
    write_cosigned_note(local, w1.observe_bundle(local, SIGNER.verifier.vkey), w1.signer)
    url = upload(s3, local)
    with open_bundle(local) as b:
        on_disk = [c.vkey for c in bundle_cosignatures(b, [w1.signer.verifier])[0]]
    with open_bundle(url, storage_options=s3.options) as b:
        cosigned, findings = bundle_cosignatures(b, [w1.signer.verifier])
        assert not findings and [c.vkey for c in cosigned] == on_disk == [w1.signer.vkey]
        assert b.verify(SIGNER.verifier).ok  # the cosignature is no unlisted file
    # the kernel's credentials: a profile in an AWS config file (AWS_SECRET_ACCESS_KEY would not reach it)
    config = tmp_path / "aws-config"
    config.write_text(f"[profile auditor]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"
                      f"region = us-east-1\nendpoint_url = {s3.endpoint}\n")
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in {"AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "auditor",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        out = tmp_path / "report" / "evidence.ipynb"
        with open_bundle(url) as b:
            p = export_compliance_notebook(b, out, verifier=SIGNER.verifier.vkey, witnesses=[w1.signer.vkey],
                                           html=False)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    text = p.read_text(encoding="utf-8")
    assert SECRET not in text and KEY_ID not in text and s3.endpoint not in text
    import nbformat
    nb = nbformat.read(p, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert f"BUNDLE = {url!r}" in first.source
    printed = "".join(o.get("text", "") for o in first.outputs)
    assert printed.startswith("Verified: OK") and "cosigned by the pinned witness witness.example/w1" in printed


def test_a_memory_bundle_has_no_compliance_notebook(base, tmp_path):
    """A kernel is another process: it cannot open this process's memory:// file system."""
    from rlhf_audit_kit.report.compliance import export_compliance_notebook
    d, _, snaps = base
    url = f"memory://compliance-{uuid.uuid4().hex[:8]}/bundle"
    snaps[-1].export(url).close()
    with open_bundle(url) as b, pytest.raises(AuditKitError, match="memory.*export the snapshot to a folder"):
        export_compliance_notebook(b, tmp_path / "n.ipynb", verifier=SIGNER.verifier.vkey, html=False)
    assert not (tmp_path / "n.ipynb").exists()
