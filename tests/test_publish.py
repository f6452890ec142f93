"""Publishing from a live writer: ``store.publish(folder, signer, every=...)``.

A writer process records and publishes while this process reads and verifies the folder, each
publication incrementally from the last one it verified.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.errors import AuditKitError, BundleError
from rlhf_audit_kit.store import open_store

from factories import annotation
from test_snapshot_verify import SIGNER, events  # noqa: E402 - shared fixtures

VKEY = SIGNER.verifier.vkey

WRITER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from rlhf_audit_kit.store import open_store
from factories import annotation
from test_snapshot_verify import SIGNER
store = open_store(sys.argv[1], pseudonymize=False, origin="audit.example/live")
with store.publish(sys.argv[2], SIGNER, every=0.2) as publisher:
    print("started", flush=True)
    for i in range(20):
        store.extend([annotation(5 * i + j) for j in range(5)])
        time.sleep(0.05)
print("published", publisher.published.size, publisher.publications, flush=True)
store.close()
"""


@pytest.mark.timeout(180)
def test_a_second_process_reads_the_folder_while_the_writer_records(tmp_path):
    folder = tmp_path / "live"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "w.duckdb"), str(folder),
                               str(Path(__file__).parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "started", writer.stderr.read()
        seen: list[int] = []
        trusted = None
        kept: dict[str, str] = {}
        while True:
            done = writer.poll() is not None
            with open_bundle(folder) as b:  # the store file is locked by the writer; the folder is not
                if not seen or b.size > seen[-1]:
                    report = b.verify(VKEY, workers=0, since=trusted)
                    assert report.ok, report.message
                    if trusted is not None:
                        assert report.covered == (seen[-1], b.size)
                    seen.append(b.size)
                    trusted = report
                    for seg in b.segments:  # what was published once never changes
                        for name in seg.files:
                            digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
                            assert kept.setdefault(name, digest) == digest, name
            if done:
                break
            time.sleep(0.1)
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    _, size, publications = out.split()
    assert seen[-1] == int(size) and len(seen) >= 3 and int(publications) >= len(seen)
    with open_bundle(folder) as b:
        full = b.verify(VKEY, workers=0)
        assert full.ok and full.signed_size == int(size) and full.covered == (0, int(size))
        assert b.counts()["annotation"] == 100


def test_publish_now_and_stop_publish_only_what_is_new(tmp_path):
    with open_store(tmp_path / "a.duckdb", pseudonymize=False) as store:
        store.extend(events(0))
        publisher = store.publish(tmp_path / "live", SIGNER, every=3600)
        first = publisher.published
        assert publisher.publications == 1 and first.size == 8 and publisher.running
        assert publisher.publish_now() is first and publisher.publications == 1  # nothing new
        store.extend([annotation(i) for i in range(3)])
        snap = publisher.publish_now()
        assert snap.size == first.size + 1 + 3 and publisher.publications == 2
        store.extend([annotation(i) for i in range(3, 5)])
        last = publisher.stop()
        assert not publisher.running and publisher.publications == 3 and last.size == snap.size + 1 + 2
        with open_bundle(tmp_path / "live") as b:
            assert b.size == last.size and len(b.segments) == 3 and b.verify(VKEY, workers=0, since=snap).ok
    with pytest.raises(ValueError, match="positive"):
        store.publish(tmp_path / "x", SIGNER, every=0)


def test_an_error_in_the_background_is_raised_not_swallowed(tmp_path):
    with open_store(tmp_path / "a.duckdb", pseudonymize=False) as store, \
            open_store(tmp_path / "b.duckdb", pseudonymize=False) as other:
        store.extend(events(0))
        publisher = store.publish(tmp_path / "live", SIGNER, every=0.05)
        other.extend(events(1))
        import shutil
        shutil.rmtree(tmp_path / "live")  # someone puts a bundle of another log in its place
        other.snapshot(SIGNER).export(tmp_path / "live").close()
        store.extend(events(2))
        deadline = time.monotonic() + 30
        while publisher.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not publisher.running  # it stopped at the error ...
        with pytest.raises(AuditKitError, match="holds a bundle of log"):
            publisher.publish_now()  # ... and the next call raises it
        with pytest.raises(AuditKitError, match="holds a bundle of log"):
            publisher.stop()  # still refused: nothing is written onto another log's bundle
        with open_bundle(tmp_path / "live") as b:
            assert b.origin == other.origin


def test_a_reader_never_sees_a_half_published_bundle(tmp_path):
    """Readers opening the folder at any moment of many quick publications: always a complete bundle."""
    import threading
    errors: list[BaseException] = []
    stop = threading.Event()
    sizes: list[int] = []

    def read():
        while not stop.is_set():
            try:
                with open_bundle(tmp_path / "live") as b:
                    sizes.append(b.size)
                    assert b.verify(VKEY, workers=0, since=b.segments[-1].start if b.segments else 0).ok
            except BundleError as e:  # only before the first publication
                if "not a snapshot bundle" not in str(e):
                    errors.append(e)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

    with open_store(tmp_path / "a.duckdb", pseudonymize=False) as store:
        with store.publish(tmp_path / "live", SIGNER, every=0.02):
            reader = threading.Thread(target=read)
            reader.start()
            for i in range(12):
                store.extend([annotation(i)])
                time.sleep(0.02)
        stop.set()
        reader.join()
    assert not errors, errors[0]
    assert sizes and sizes == sorted(sizes)


def test_closing_the_store_stops_its_publisher_and_publishes_the_rest(tmp_path):
    store = open_store(tmp_path / "s.duckdb", pseudonymize=False, origin="audit.example/live")
    store.extend(events(0))
    pub = store.publish(tmp_path / "live", SIGNER, every=3600)
    first = pub.published.size
    store.extend(events(1))  # recorded after the first publication, before close
    size = store.size
    store.close()
    assert not pub.running
    with open_bundle(tmp_path / "live") as b:
        assert first < b.size <= size and b.verify(SIGNER.verifier).ok
