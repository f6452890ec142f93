"""Append-only bundles: each export onto a bundle adds one immutable segment, its note and a new manifest.

Real stores, real Ed25519 keys, real Parquet files read back by the Bundle API, polars and DuckDB.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest

from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.errors import AuditKitError, ForkError, IntegrityError, RollbackError, SignatureError
from rlhf_audit_kit.ledger import merkle
from rlhf_audit_kit.ledger.checkpoint import Signer
from rlhf_audit_kit.ledger.tree import fold_compact_range
from rlhf_audit_kit.schema import USER_KINDS
from rlhf_audit_kit.segments import complete_subtree, parse_segment_file
from rlhf_audit_kit.store import open_store

from factories import annotation
from test_snapshot_verify import OTHER, SIGNER, events  # noqa: E402 - shared fixtures

FIXTURE = Path(__file__).parent / "fixtures" / "bundle_b1e6378" / "bundle"
OLD_SIGNER = Signer.from_seed("example.org/old-bundle", bytes(range(32)))  # the fixture's (test) key


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative name."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def grow(store, n: int, at: int = 0) -> None:
    """Record events so that the next snapshot's segment holds exactly ``n`` events (the previous
    snapshot's own event is the first of them when there was one)."""
    first = store.size == 0 or store.sql("SELECT max(seq) AS s FROM snapshot")["s"][0] != store.size - 1
    store.extend([annotation(at + j) for j in range(n - (0 if first else 1))])


@pytest.fixture()
def store(tmp_path):
    with open_store(tmp_path / "a.duckdb", pseudonymize=False, origin="audit.example/log") as s:
        yield s


def test_exports_add_segments_and_never_rewrite_earlier_files(store, tmp_path):
    folder = tmp_path / "bundle"
    seen: dict[str, str] = {}
    for i in range(4):
        store.extend(events(i))
        with store.snapshot(SIGNER).export(folder) as b:
            now = digests(folder)
            for name, digest in seen.items():  # every earlier file is byte-identical (except the two replaced)
                if name not in ("manifest.json", "checkpoint.note"):
                    assert now[name] == digest, name
            assert b.verify(SIGNER.verifier, workers=0).ok
            assert [(s.start, s.end) for s in b.segments][-1] == (b.segments[-1].start, b.size)
            assert b.segments[0].start == 0 and all(a.end == c.start for a, c in zip(b.segments, b.segments[1:]))
            assert b.checkpoint_sizes == [s.end for s in b.segments]
            seen = now
    assert len(b.segments) == 4
    m = json.loads((folder / "manifest.json").read_text())
    assert m["format"] == "rlhf-audit-kit/bundle/v2" and m["note"] == f"checkpoints/{m['tree_size']:012d}.note"
    for name in m["files"]:
        if name.startswith("segments/"):
            table, start, end = parse_segment_file(name)
            assert pl.read_parquet(folder / name)["seq"].to_list() == list(range(start, end)) or table != "log"


@pytest.mark.parametrize("k", [3, 4])
def test_exports_of_one_and_around_a_power_of_two_new_events(store, tmp_path, k):
    folder = tmp_path / "bundle"
    at = 0
    for n in (5, 1, 2 ** k - 1, 2 ** k, 2 ** k + 1, 1):
        grow(store, n, at)
        at += n
        before = digests(folder) if folder.exists() else {}
        snap = store.snapshot(SIGNER)
        with snap.export(folder) as b:
            seg = b.segments[-1]
            assert seg.end - seg.start == n and seg.end == snap.size
            # the stored tree hashes are the store's: the compact range folds to the signed root
            assert fold_compact_range(seg.end, seg.compact_range) == snap.root_hash == store.root(seg.end)
            node = complete_subtree(seg.start, seg.end)
            assert (seg.subtree_root is None) == (node is None)
            if node:
                level, index = node
                entries = [bytes(e) for e in store.sql(
                    "SELECT entry FROM log WHERE seq >= ? AND seq < ? ORDER BY seq", [seg.start, seg.end])["entry"]]
                assert seg.subtree_root == merkle.root(entries) and index << level == seg.start
            assert b.verify(SIGNER.verifier, workers=0).ok
            assert b.verify(SIGNER.verifier, workers=0, since=int(seg.start) or 0).ok
        after = digests(folder)
        assert {k_: v for k_, v in after.items() if k_ in before and k_ not in ("manifest.json", "checkpoint.note")} \
            == {k_: v for k_, v in before.items() if k_ not in ("manifest.json", "checkpoint.note")}


def _refused(folder: Path, call, error, match: str) -> None:
    before = digests(folder)
    with pytest.raises(error, match=match):
        call()
    assert digests(folder) == before  # nothing written, nothing removed


def test_foreign_forged_forked_and_older_bundles_are_refused(store, tmp_path):
    folder = tmp_path / "bundle"
    store.extend(events(0))
    first = store.snapshot(SIGNER)
    first.export(folder).close()
    store.extend(events(1))
    snap = store.snapshot(SIGNER)
    # another log
    with open_store(tmp_path / "other.duckdb", pseudonymize=False, origin="audit.example/other") as other:
        other.extend(events(0))
        _refused(folder, lambda: other.snapshot(SIGNER).export(folder), AuditKitError, "holds a bundle of log")
    # the same log under another key
    _refused(folder, lambda: snap.export(folder, verifier=OTHER.verifier), SignatureError, "another key, or forged")
    # a forged note: signed by someone else, put in place of the bundle's
    forged = tmp_path / "forged"
    shutil.copytree(folder, forged)
    m = json.loads((forged / "manifest.json").read_text())
    (forged / m["note"]).write_text(OTHER.sign(first.checkpoint.body()))
    _refused(forged, lambda: snap.export(forged), SignatureError, "another key, or forged")
    # a fork: the same origin and key, another history
    with open_store(tmp_path / "fork.duckdb", pseudonymize=False, origin="audit.example/log") as fork:
        fork.extend(events(5) + events(6) + events(7))
        _refused(folder, lambda: fork.snapshot(SIGNER).export(folder), ForkError, "fork")
    # an older snapshot onto a newer bundle
    snap.export(folder).close()
    _refused(folder, lambda: first.export(folder), RollbackError, "newer checkpoint")
    # a v1 bundle (one file per table) does not grow; overwrite rewrites it as v2
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    with open_store(tmp_path / "o.duckdb", pseudonymize=False, origin="example.org/old-bundle") as o:
        o.extend(events(0))
        s = o.snapshot(OLD_SIGNER)
        _refused(old, lambda: s.export(old), AuditKitError, "v1 layout")
        with s.export(old, overwrite=True) as b:
            assert b.format.endswith("/v2") and b.verify(OLD_SIGNER.verifier, workers=0).ok


def test_cosignatures_survive_exports(store, tmp_path):
    folder = tmp_path / "bundle"
    store.extend(events(0))
    store.snapshot(SIGNER).export(folder).close()
    (folder / "cosignatures").mkdir()
    (folder / "cosignatures" / "000000000008-abcd.note").write_text("a witness's cosigned note\n")
    keep = digests(folder / "cosignatures")
    store.extend(events(1))
    with store.snapshot(SIGNER).export(folder) as b:
        assert b.verify(SIGNER.verifier, workers=0).ok
    assert digests(folder / "cosignatures") == keep
    with store.snapshot(SIGNER).export(folder, overwrite=True) as b:  # rewritten whole
        assert len(b.segments) == 1
    assert digests(folder / "cosignatures") == keep


def test_bundle_written_before_later_fields_opens_and_verifies(tmp_path):
    """A v1 bundle of commit b1e6378: no display_order_known, meta, rationale, logged_at, saved_at columns."""
    bundle = tmp_path / "old"
    shutil.copytree(FIXTURE, bundle)
    with open_bundle(bundle) as b:
        assert b.format.endswith("/v1") and b.size == 12 and len(b.segments) == 1
        report = b.verify(OLD_SIGNER.verifier, workers=0)
        assert report.ok and report.signed_size == 12, report.message
        ann = b.annotations()
        assert ann.height == 3 and ann["display_order_known"].null_count() == 3 and ann["meta"].null_count() == 3
        assert b.train_steps()["logged_at"].null_count() == 2 and b.checkpoints()["saved_at"].null_count() == 1
        assert b.sql("SELECT count(*) AS n FROM rating WHERE rationale IS NULL")["n"][0] == 1
        assert b.verify(OLD_SIGNER.verifier, workers=0, since=b.note).ok


def test_segments_with_and_without_a_later_column_read_as_one_table(store, tmp_path):
    folder = tmp_path / "bundle"
    store.extend([annotation(i) for i in range(5)])
    store.snapshot(SIGNER).export(folder).close()
    store.extend([annotation(i, meta={"src": "x"}) for i in range(5, 9)])
    store.snapshot(SIGNER).export(folder).close()
    m = json.loads((folder / "manifest.json").read_text())
    old = min(n for n in m["files"] if n.startswith("segments/annotation-"))
    con = duckdb.connect()  # rewrite the first annotation segment as an older exporter wrote it: no meta column
    con.execute(f"COPY (SELECT * EXCLUDE (meta, display_order_known) FROM read_parquet('{folder / old}')) "
                f"TO '{folder / old}.new' (FORMAT parquet)")
    con.close()
    (folder / f"{old}.new").replace(folder / old)
    data = (folder / old).read_bytes()
    m["files"][old].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(m))
    with open_bundle(folder) as b:
        assert b.verify(SIGNER.verifier, workers=0).ok
        ann = b.annotations()
        assert ann.height == 9 and ann["meta"].null_count() == 5
        assert ann.filter(pl.col("meta").is_not_null())["meta"].to_list() == ['{"src":"x"}'] * 4


def test_glob_readers_see_the_rows_of_the_bundle_api(store, tmp_path):
    """The documented readers: polars over segments/log-*.parquet, DuckDB over segments/<kind>-*.parquet."""
    folder = tmp_path / "bundle"
    for i in range(3):
        store.extend(events(i))
        store.snapshot(SIGNER).export(folder).close()
    with open_bundle(folder) as b:
        log = pl.scan_parquet(str(folder / "segments" / "log-*.parquet")).sort("seq").collect()
        assert log.equals(b.sql("SELECT seq, kind, ts, entry, leaf_hash FROM log ORDER BY seq"))
        for kind in USER_KINDS:
            files = sorted((folder / "segments").glob(f"{kind}-*.parquet"))
            assert len(files) == 3, kind
            got = duckdb.sql(f"SELECT * FROM read_parquet('{folder}/segments/{kind}-*.parquet') ORDER BY seq").pl()
            assert got.equals(b.table(kind)), kind


def test_a_reader_opened_before_an_export_still_verifies(store, tmp_path):
    folder = tmp_path / "bundle"
    store.extend(events(0))
    store.snapshot(SIGNER).export(folder).close()
    reader = open_bundle(folder)
    store.extend(events(1))
    store.snapshot(SIGNER).export(folder).close()  # published while the reader holds the older manifest
    report = reader.verify(SIGNER.verifier, workers=0)
    assert report.ok, report.message
    new = json.loads((folder / "manifest.json").read_text())["files"].keys() - reader.manifest["files"].keys()
    assert sorted(report.later_files) == sorted(new) and len(new) == 11  # 10 segment files and the note
    assert "of a later publication not read" in report.message
    (folder / "segments" / "notes.txt").write_text("not a segment")
    report = reader.verify(SIGNER.verifier, workers=0)
    assert report.damage == "unlisted-file" and "segments/notes.txt" in report.message
    reader.close()


def test_an_export_that_fails_verification_publishes_nothing(store, tmp_path):
    folder = tmp_path / "bundle"
    store.extend(events(0))
    store.snapshot(SIGNER).export(folder).close()
    store.extend(events(1))
    before = digests(folder)
    seq = int(store.sql("SELECT max(seq) AS s FROM annotation")["s"][0])
    store._con.execute("UPDATE annotation SET prompt = 'rewritten' WHERE seq = ?", [seq])  # the store is damaged
    with pytest.raises(IntegrityError, match=f"seq {seq}"):
        store.snapshot(SIGNER).export(folder)
    assert digests(folder) == before
    with open_bundle(folder) as b:
        assert b.verify(SIGNER.verifier, workers=0).ok


def test_a_growing_manifest_warns_the_publisher_and_the_reader_is_told_how_to_open_it(tmp_path, monkeypatch):
    """Each segment adds ~2 KB to manifest.json; past half the readers' default limit the exporter warns,
    and a reader refusing a large manifest names the option that opens it."""
    from rlhf_audit_kit import segments
    from rlhf_audit_kit.bundle_files import Limits
    from rlhf_audit_kit.errors import BundleError, ManifestSizeWarning
    monkeypatch.setattr(segments, "Limits", lambda: Limits(max_manifest_bytes=8000))  # as if 8 KB were the default
    with open_store(tmp_path / "a.duckdb", pseudonymize=False, origin="audit.example/log") as store:
        store.extend(events(0))
        with warnings_as_list() as seen:
            store.snapshot(SIGNER).export(tmp_path / "b").close()
        assert not [w for w in seen if issubclass(w.category, ManifestSizeWarning)]  # one segment: 3.3 KB
        store.extend(events(1))
        with pytest.warns(ManifestSizeWarning, match=r"segments, ~2 KB each\); readers refuse one over .*every="):
            store.snapshot(SIGNER).export(tmp_path / "b").close()
    with pytest.raises(BundleError, match=r"limits=Limits\(max_manifest_bytes=") as e:
        open_bundle(tmp_path / "b", limits=Limits(max_manifest_bytes=1000))
    assert e.value.damage == "oversized"
    with open_bundle(tmp_path / "b", limits=Limits(max_manifest_bytes=1 << 20)) as b:
        assert b.verify(SIGNER.verifier).ok


def warnings_as_list():
    import warnings
    return warnings.catch_warnings(record=True)
