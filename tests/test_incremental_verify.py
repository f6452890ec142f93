"""Incremental verification: ``bundle.verify(key, since=trusted)`` re-derives only the newer segments.

A bundle grown by three exports; tampering is done on copies as someone handing the folder on would.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.bundle import verify_bundle
from rlhf_audit_kit.errors import AuditKitError, SignatureError
from rlhf_audit_kit.ledger import merkle
from rlhf_audit_kit.ledger.checkpoint import Checkpoint
from rlhf_audit_kit.store import open_store

from test_snapshot_verify import OTHER, SIGNER, events  # noqa: E402 - shared fixtures

VKEY = SIGNER.verifier.vkey


def _record(path: Path, batches: list[list[dict]], folder: Path) -> list:
    """A store of ``batches``, each followed by a snapshot exported onto ``folder``; the snapshots."""
    snaps = []
    with open_store(path, pseudonymize=False, origin="audit.example/log") as store:
        for batch in batches:
            store.extend(batch)
            snap = store.snapshot(SIGNER)
            snap.export(folder).close()
            snap.store = None
            snaps.append(snap)
    return snaps


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    d = tmp_path_factory.mktemp("grown")
    snaps = _record(d / "a.duckdb", [events(0) + events(1), events(2), events(3) + events(4)], d / "bundle")
    return d, snaps


@pytest.fixture()
def copy(grown, tmp_path):
    shutil.copytree(grown[0] / "bundle", tmp_path / "bundle")
    return tmp_path / "bundle"


def _segment(folder: Path, table: str, index: int) -> Path:
    return sorted((folder / "segments").glob(f"{table}-*.parquet"))[index]


def _tamper(path: Path, seq: int | None = None, column: str = "prompt") -> int:
    """Edit one row (default: the file's first) as someone tidying up the record would; its seq."""
    df = pl.read_parquet(path)
    seq = int(df["seq"][0]) if seq is None else seq
    df.with_columns(pl.when(pl.col("seq") == seq).then(pl.col(column) + " (edited)").otherwise(pl.col(column))
                    .alias(column)).write_parquet(path)
    return seq


def test_since_rederives_only_the_new_segments(grown):
    d, snaps = grown
    first, second, third = snaps
    with open_bundle(d / "bundle") as b:
        full = b.verify(VKEY, workers=0)
        assert full.ok and full.covered == (0, third.size) and full.checkpoints_verified >= 3
        for since in (first.note, first, first.size, full.__class__(**{**full.__dict__, "signed_size": first.size,
                                                                       "signed_root": first.root_hash})):
            r = b.verify(VKEY, workers=0, since=since)
            assert r.ok, r.message
            assert r.covered == (first.size, third.size) and r.since == first.size and r.events == third.size
            assert "earlier segments not re-read" in r.message
            assert merkle.verify_consistency(first.size, third.size, first.root_hash, third.root_hash,
                                             r.consistency_proof)
        mid = b.verify(VKEY, workers=0, since=second.note)
        assert mid.ok and mid.covered == (second.size, third.size)
        # a trusted size inside a segment: re-derived from the boundary below it
        inside = b.verify(VKEY, workers=0, since=b.verify(VKEY, workers=0, since=first.note))
        assert inside.ok and inside.covered == (third.size, third.size)
        assert "nothing new" in inside.message


def test_consistency_proofs_from_the_segments(grown):
    d, snaps = grown
    with open_bundle(d / "bundle") as b, open_store(d / "a.duckdb", read_only=True, pseudonymize=False) as store:
        for old in (0, 1, snaps[0].size, snaps[0].size + 3, snaps[1].size, b.size):
            proof = b.consistency_proof(old)
            assert proof == store.consistency_proof(old, b.size)
            assert merkle.verify_consistency(old, b.size, store.root(old), b.checkpoint.root_hash, proof)
        with pytest.raises(AuditKitError, match="outside"):
            b.consistency_proof(b.size + 1)


def test_since_accepts_only_trusted_checkpoints_of_this_log(grown, tmp_path):
    d, snaps = grown
    with open_bundle(d / "bundle") as b:
        with pytest.raises(SignatureError, match="does not verify under the pinned key"):
            b.verify(VKEY, since=OTHER.sign(snaps[0].checkpoint.body()))
        with pytest.raises(AuditKitError, match="not of this bundle's log"):
            b.verify(VKEY, since=SIGNER.sign(Checkpoint("audit.example/other", 1, bytes(32)).body()))
        with pytest.raises(AuditKitError, match="publishes no checkpoint of size 5"):
            b.verify(VKEY, since=5)
        with pytest.raises(AuditKitError, match="cannot read the trusted note"):
            b.verify(VKEY, since=tmp_path / "missing.note")


def test_a_tampered_new_segment_is_found(grown, copy):
    _, (first, second, third) = grown
    seq = _tamper(_segment(copy, "annotation", 2))
    with open_bundle(copy) as b:
        r = b.verify(VKEY, workers=0, since=second.note)
        assert not r.ok and r.first_bad_seq == seq and r.damage == "typed-row-mismatch", r.findings
        assert "manifest-mismatch" in {x.damage for x in r.findings}


def test_a_tampered_old_segment_is_found_only_by_a_full_verification(grown, copy):
    _, (first, second, third) = grown
    seq = _tamper(_segment(copy, "annotation", 0))
    with open_bundle(copy) as b:
        r = b.verify(VKEY, workers=0, since=second.note)
        assert r.ok and r.covered == (second.size, third.size), r.message  # not re-read
        full = b.verify(VKEY, workers=0)
        assert not full.ok and full.first_bad_seq == seq and full.damage == "typed-row-mismatch"
        since_first = b.verify(VKEY, workers=0, since=0)  # from the start: re-derived, found
        assert not since_first.ok and since_first.first_bad_seq == seq


def _relist(folder: Path, *names: str) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    for name in names:
        data = (folder / name).read_bytes()
        m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(m))


def test_a_new_checkpoint_not_consistent_with_the_trusted_one(grown, copy, tmp_path):
    """The key signed a newest root that the segments after the trusted size do not give."""
    _, (first, second, third) = grown
    m = json.loads((copy / "manifest.json").read_text())
    wrong = Checkpoint(third.origin, third.size, hashlib.sha256(b"another history").digest())
    (copy / m["note"]).write_text(SIGNER.sign(wrong.body()))
    m["root_hash"] = wrong.root_hash.hex()
    (copy / "manifest.json").write_text(json.dumps(m))
    _relist(copy, m["note"])
    (copy / "checkpoint.note").write_text(SIGNER.sign(wrong.body()))
    r = verify_bundle(copy, VKEY, workers=0, since=second.note)
    assert not r.ok and r.damage == "root-mismatch" and third.size in {f.checkpoint for f in r.findings}, r.findings
    # a stored compact range at the trusted size that does not fold to the trusted root
    shutil.rmtree(copy)
    shutil.copytree(grown[0] / "bundle", copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["segments"][1]["compact_range"][0] = "00" * 32
    (copy / "manifest.json").write_text(json.dumps(m))
    r = verify_bundle(copy, VKEY, workers=0, since=second.note)
    trusted = [f for f in r.findings if f.damage == "inconsistent-checkpoints"]
    assert not r.ok and trusted and "does not have the trusted root" in trusted[0].message, r.findings
    assert not verify_bundle(copy, VKEY, workers=0).ok  # a full verification flags the stored hashes too


def test_a_fork_is_found_and_a_rollback_too(tmp_path):
    """Same origin and key, a shared past, then two histories: a bundle that does not extend the note kept."""
    with open_store(tmp_path / "a.duckdb", pseudonymize=False, origin="audit.example/log") as a:
        a.extend(events(0) + events(1))
        first = a.snapshot(SIGNER)
        first.export(tmp_path / "a").close()
    shutil.copy(tmp_path / "a.duckdb", tmp_path / "b.duckdb")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with open_store(tmp_path / "a.duckdb", pseudonymize=False) as a:
        a.extend(events(2))
        second = a.snapshot(SIGNER)
        second.export(tmp_path / "a").close()
    with open_store(tmp_path / "b.duckdb", pseudonymize=False) as b:
        b.extend(events(7))
        forked = b.snapshot(SIGNER)
        forked.export(tmp_path / "b").close()
        b.extend(events(8))
        later = b.snapshot(SIGNER)
        later.export(tmp_path / "b").close()
    assert forked.size == second.size and forked.root_hash != second.root_hash
    r = verify_bundle(tmp_path / "b", VKEY, workers=0, since=second.note)
    assert not r.ok and r.damage == "inconsistent-checkpoints" and "fork" in r.message, r.findings
    assert verify_bundle(tmp_path / "b", VKEY, workers=0, since=first.note).ok  # the shared past is fine
    # a size alone takes the root from the bundle's own note: it cannot reveal the fork (documented)
    assert verify_bundle(tmp_path / "b", VKEY, workers=0, since=second.size).ok
    # a verifier who saw the longer bundle is shown a shorter one
    r = verify_bundle(tmp_path / "a", VKEY, workers=0, since=later.note)
    assert not r.ok and r.damage == "truncated" and "rollback" in r.message, r.findings


def test_cli_since(grown, copy, tmp_path):
    _, (first, second, third) = grown
    note = tmp_path / "trusted.note"
    note.write_text(first.note)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", "verify", str(copy), "--vkey", VKEY,
                               "--workers", "0", *args], capture_output=True, text=True, timeout=120)
    p = cli("--since", str(note))
    assert p.returncode == 0 and p.stdout.startswith("OK") and f"re-derived seq {first.size:,}" in p.stdout, p.stderr
    p = cli("--since", str(second.size))
    assert p.returncode == 0 and f"trusted checkpoint of size {second.size:,}" in p.stdout, p.stderr
    p = cli("--since", "5")
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    _tamper(_segment(copy, "annotation", 2))
    p = cli("--since", str(note))
    assert p.returncode == 3 and p.stderr.startswith("FAILED") and "typed-row-mismatch" in p.stderr
