"""Signed snapshots, full verification and snapshot bundles on clean records."""
from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest

from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.errors import IntegrityError, KeysError, SignatureError
from rlhf_audit_kit.keys import init_keys, load_signer
from rlhf_audit_kit.ledger import merkle
from rlhf_audit_kit.ledger.checkpoint import Signer
from rlhf_audit_kit.ledger.snapshot import Snapshot
from rlhf_audit_kit.ledger.verify import (VerifyReport, compute_tree, verify_inclusion_against)
from rlhf_audit_kit.schema import USER_KINDS
from rlhf_audit_kit.store import open_store

SIGNER = Signer.from_seed("audit.example/log", bytes(range(32)))
OTHER = Signer.from_seed("audit.example/log", bytes(range(1, 33)))


def events(i: int) -> list[dict]:
    """One event of every user kind, with escapes, non-ASCII, floats, maps and JSON."""
    t = dt.datetime(2024, 5, 1, 12) + dt.timedelta(minutes=i)
    return [
        {"kind": "dataset", "name": f"hh-{i}", "version": "1", "row_count": 10 + i, "source": "hf:hh"},
        {"kind": "annotation", "annotation_id": f"a{i}", "prompt_id": f"p{i}", "prompt": f'Say "hi"\n#{i} é',
         "response_a_id": f"r{i}a", "response_a": "Hi!", "response_b_id": f"r{i}b", "response_b": "Hello.",
         "choice": "ab"[i % 2], "annotator": f"ann-{i % 3}", "strength": (60 + i) % 100, "shown_at": t,
         "submitted_at": t + dt.timedelta(seconds=30), "score_a": 0.25 + i, "rationale": "tab\there"},
        {"kind": "rating", "rating_id": f"rt{i}", "sample_id": f"s{i}", "annotator": f"ann-{i % 3}",
         "aspects": {"helpfulness": 4, "harmlessness": 5}, "scale_min": 1, "scale_max": 5},
        {"kind": "reward_score", "reward_model": "rm-1", "sample_id": f"s{i}", "score": 1.5e-7 * (i + 1),
         "step": i},
        {"kind": "train_step", "run_id": "ppo-1", "algorithm": "ppo", "step": i,
         "metrics": {"objective/kl": 0.1 * i, "loss": 1e21}, "epoch": 0.5},
        {"kind": "checkpoint", "run_id": "ppo-1", "step": i, "uri": f"s3://b/ckpt-{i}",
         "content_hash": "sha256:" + "ab" * 32, "size_bytes": 1000},
        {"kind": "oversight", "reviewer": "rev-1", "decision": "approve", "reason": "fine", "subject_seq": i,
         "decided_at": t},
        {"kind": "custom", "name": "eval_result", "payload": {"acc": 0.9, "tags": ["x", "y"], "n": i}},
    ]


def segment_file(bundle_dir, table: str) -> str:
    """The name (relative to the bundle) of the one segment file of ``table`` in a bundle exported once."""
    (found,) = (bundle_dir / "segments").glob(f"{table}-*.parquet")
    return f"segments/{found.name}"


def build(path, batches=4, snap_every=2, signer=SIGNER):
    """A store with every user kind, a snapshot after every ``snap_every`` batches."""
    store = open_store(path, pseudonymize=False)
    snaps = []
    for b in range(batches):
        store.extend(events(2 * b) + events(2 * b + 1))
        if (b + 1) % snap_every == 0:
            snaps.append(store.snapshot(signer))
    return store, snaps


@pytest.fixture()
def built(tmp_path):
    store, snaps = build(tmp_path / "a.duckdb")
    yield store, snaps
    store.close()


def test_clean_store_verifies(built):
    store, snaps = built
    assert set(store.counts()) == set(USER_KINDS) | {"snapshot"}
    for key in (SIGNER.verifier, SIGNER.vkey, [SIGNER.verifier]):
        report = store.verify(key, workers=0)
        assert report.ok, report.message
        assert report.first_bad_seq is None and report.damage is None
        assert report.checkpoints_verified == 2 and report.events == store.size
        assert report.signed_size == snaps[-1].size and report.signed_root == snaps[-1].root_hash
        assert report.raise_for_status() is report
    assert "OK" in report.message and "verified" in report._repr_html_()


def test_verify_key_from_file_and_keys_folder(tmp_path):
    keys = tmp_path / "keys"
    info = init_keys(keys, "lab.example/log", no_passphrase=True)
    store, _ = build(tmp_path / "a.duckdb", batches=2, signer=load_signer(keys))
    assert store.verify(keys).ok and store.verify(keys / "verifier.vkey").ok and store.verify(info.vkey).ok
    store.close()


def test_forked_hashing_equals_in_process(tmp_path, monkeypatch):
    import rlhf_audit_kit.ledger.levels as levels
    monkeypatch.setattr(levels, "FORK_MIN_LEAVES", 1)
    entries = [f"entry {i}".encode() * (i % 7 + 1) for i in range(1000)]
    import pyarrow as pa
    serial = compute_tree(pa.array(entries), workers=0)
    for w in (1, 2, 3):
        forked = compute_tree(pa.array(entries), workers=w)
        assert bytes(forked.buf) == bytes(serial.buf)
    for size in (1, 2, 3, 7, 512, 999, 1000):
        assert serial.root(size) == merkle.root(entries[:size])
    store, _ = build(tmp_path / "a.duckdb", batches=4)
    assert store.verify(SIGNER.verifier, workers=2).ok
    store.close()


def test_sliced_re_encoding_names_the_first_bad_row(tmp_path, monkeypatch):
    """Big typed tables are re-encoded in slices on several threads: damage in any slice is found."""
    import duckdb

    import rlhf_audit_kit.ledger.verify as v
    monkeypatch.setattr(v, "_ENCODE_CHUNK", 3)
    store, _ = build(tmp_path / "a.duckdb", batches=6, snap_every=6)
    assert store.verify(SIGNER.verifier, workers=0).ok
    seqs = store.sql("SELECT seq FROM annotation ORDER BY seq")["seq"].to_list()
    store.close()
    con = duckdb.connect(str(tmp_path / "a.duckdb"))
    con.execute("UPDATE annotation SET choice = 'tie' WHERE seq IN (?, ?)", [seqs[8], seqs[10]])
    con.close()
    with open_store(tmp_path / "a.duckdb", pseudonymize=False) as store:
        report = store.verify(SIGNER.verifier, workers=0)
    assert (report.damage, report.first_bad_seq) == ("typed-row-mismatch", seqs[8])


def test_wrong_key_is_a_bad_signature(built):
    store, snaps = built
    report = store.verify(OTHER.verifier, workers=0)
    assert not report.ok and report.damage == "bad-signature" and report.first_bad_seq == snaps[0].seq
    with pytest.raises(SignatureError):
        report.raise_for_status()
    with pytest.raises(KeysError):
        store.verify(None)


def test_snapshots_over_growth_are_consistent(tmp_path):
    store = open_store(tmp_path / "g.duckdb", pseudonymize=False)
    snaps = []
    for b in range(5):
        store.extend(events(b)[: 3 + b])
        snaps.append(store.snapshot(SIGNER))
        assert snaps[-1].seq == snaps[-1].size == store.size - 1
    assert [s.size for s in store.snapshots()] == [s.size for s in snaps]
    for old, new in zip(snaps, snaps[1:]):
        proof = store.consistency_proof(old.size, new.size)
        assert merkle.verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    for s in snaps:
        assert store.root(s.size) == s.root_hash
        for seq in (0, s.size - 1):
            lh = merkle.leaf_hash(store.entry(seq))
            cp = verify_inclusion_against(s.note, SIGNER.verifier, lh, seq, store.inclusion_proof(seq, s.size))
            assert cp.size == s.size
        with pytest.raises(IntegrityError):
            verify_inclusion_against(s.note, SIGNER.verifier, b"\0" * 32, 0, store.inclusion_proof(0, s.size))
    report = store.verify(SIGNER.verifier, workers=0)
    assert report.ok and report.checkpoints_verified == 5
    # a note kept outside for a larger size than the log: truncation is detected
    bigger = Snapshot.from_note(snaps[-1].note).checkpoint
    from rlhf_audit_kit.ledger.checkpoint import Checkpoint, sign_checkpoint
    far = sign_checkpoint(Checkpoint(bigger.origin, store.size + 5, bigger.root_hash), SIGNER)
    r = store.verify(SIGNER.verifier, checkpoints=[far], workers=0)
    assert r.damage == "truncated" and r.first_bad_seq == store.size
    store.close()


def test_snapshot_object_and_reprs(built):
    store, snaps = built
    s = snaps[-1]
    assert s.verify() is True and s.signature_ok
    with pytest.raises(SignatureError):
        s.verify(OTHER.verifier)
    assert s.signature_ok is False
    s.verify(SIGNER.vkey)
    html = s._repr_html_()
    for piece in (s.origin, f"{s.size:,}", s.root_hash.hex(), SIGNER.name, "signature verified"):
        assert piece in html
    listed = store.snapshots(SIGNER.verifier)
    assert [x.signature_ok for x in listed] == [True, True] and listed[-1].note == s.note
    assert "last snapshot" in store._repr_html_()
    assert s.note.startswith(f"{store.origin}\n{s.size}\n")


def test_snapshot_from_keys_folder_with_passphrase(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    init_keys(keys, "lab.example/log", passphrase="pw-123-long-enough")
    store = open_store(tmp_path / "a.duckdb", keys=keys, pseudonymize=False)
    store.extend(events(0))
    with pytest.raises(KeysError):
        store.snapshot()
    monkeypatch.setenv("RLHF_AUDIT_PASSPHRASE", "pw-123-long-enough")
    snap = store.snapshot()
    assert store.verify(keys).ok and snap.vkey == (keys / "verifier.vkey").read_text().strip()
    store.close()


def test_bundle_export_open_verify(built, tmp_path):
    store, snaps = built
    snap = snaps[-1]
    store.extend(events(99))  # after the snapshot: must not be in the bundle
    bundle = snap.export(tmp_path / "bundle")
    files = sorted(str(p.relative_to(tmp_path / "bundle")) for p in (tmp_path / "bundle").rglob("*"))
    log_file = segment_file(tmp_path / "bundle", "log")
    assert {"checkpoint.note", "verifier.vkey", "manifest.json", log_file, segment_file(tmp_path / "bundle", "annotation"),
            segment_file(tmp_path / "bundle", "snapshot"), f"checkpoints/{snap.size:012d}.note"} <= set(files)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["tree_size"] == snap.size == bundle.size and manifest["root_hash"] == snap.root_hash.hex()
    assert manifest["files"][log_file]["rows"] == snap.size
    log = pl.read_parquet(tmp_path / "bundle" / log_file)
    assert log["seq"].to_list() == list(range(snap.size))
    # same read API as the store, limited to the signed prefix
    for kind in USER_KINDS:
        want = store.table(kind).filter(pl.col("seq") < snap.size)
        assert bundle.table(kind).equals(want), kind
    assert bundle.counts() == dict(store.sql(
        f"select kind, count(*) n from log where seq < {snap.size} group by kind order by kind").rows())
    assert bundle.sql("select count(*) n from annotation where choice = ?", ["a"])["n"][0] >= 1
    assert bundle.train_metrics()["metric"].to_list()[:2] == ["loss", "objective/kl"]
    assert bundle.event(0)["seq"] == 0
    rep = bundle.verify(SIGNER.verifier, workers=0)
    assert rep.ok and rep.checkpoints_verified == 2 and rep.signed_size == snap.size
    assert bundle.verify().ok  # the bundle's own key: self-consistency only
    assert not bundle.verify(OTHER.verifier, workers=0).ok
    assert "FAILED" in bundle._repr_html_()
    bundle.verify(SIGNER.verifier, workers=0)
    assert "OK: " in bundle._repr_html_()
    assert bundle.snapshot.size == snap.size
    bundle.close()
    again = open_bundle(tmp_path / "bundle")
    assert again.verify(SIGNER.vkey).ok
    again.close()
    before = (tmp_path / "bundle" / "manifest.json").read_bytes()
    snap.export(tmp_path / "bundle").close()  # the same snapshot again: nothing to add, nothing rewritten
    assert (tmp_path / "bundle" / "manifest.json").read_bytes() == before
    with pytest.raises(Exception, match="newer checkpoint"):
        snaps[0].export(tmp_path / "bundle")  # an older snapshot: refused, never overwritten
    assert (tmp_path / "bundle" / "manifest.json").read_bytes() == before


def test_bundle_has_no_secret(tmp_path):
    keys = tmp_path / "keys"
    init_keys(keys, "lab.example/log", no_passphrase=True)
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
    signer = load_signer(keys)
    seed = signer.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pseudonym_hex = (keys / "pseudonym.key").read_text().strip()
    secrets = [seed, seed.hex().encode(), pseudonym_hex.encode(), bytes.fromhex(pseudonym_hex),
               (keys / "signing_key.pem").read_bytes().strip().splitlines()[1]]
    store = open_store(tmp_path / "a.duckdb", keys=keys)  # pseudonymising store
    store.extend(events(0) + events(1))
    snap = store.snapshot(signer)
    snap.export(tmp_path / "bundle").close()
    store.close()
    blobs = [p.read_bytes() for p in (tmp_path / "bundle").rglob("*") if p.is_file()] + [
        (tmp_path / "a.duckdb").read_bytes()]
    for blob in blobs:
        for secret in secrets:
            assert secret not in blob
    ann = open_bundle(tmp_path / "bundle").annotations()
    assert not ann["annotator"].str.starts_with("ann-").any()  # pseudonymised


def test_report_object():
    r = VerifyReport(source="x", events=10)
    assert r.ok and "no signed checkpoint" in r.message
    from rlhf_audit_kit.ledger.verify import Finding
    r.findings += [Finding("bad-node", "n", 8), Finding("typed-row-mismatch", "t", 3),
                   Finding("leaf-hash-mismatch", "l", 3)]
    assert (r.first_bad_seq, r.damage) == (3, "typed-row-mismatch")
    with pytest.raises(IntegrityError) as e:
        r.raise_for_status()
    assert e.value.seq == 3 and e.value.damage == "typed-row-mismatch"
    assert "DAMAGED" in r._repr_html_()
