"""Witnesses: cosign what extends what they saw, refuse forks and rollbacks, and the verifier's quorum policy.

Real parts throughout: DuckDB stores, keys folders on disk, exported bundles, the CLI in a subprocess.
"""
from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rlhf_audit_kit import open_store
from rlhf_audit_kit.bundle import open_bundle
from rlhf_audit_kit.errors import AuditKitError, ForkError, KeysError, RollbackError, SignatureError
from rlhf_audit_kit.keys import init_keys, load_signer
from rlhf_audit_kit.ledger import merkle
from rlhf_audit_kit.ledger.checkpoint import Checkpoint, Signer
from rlhf_audit_kit.ledger.cosignature import WitnessSigner, verify_cosignatures
from rlhf_audit_kit.ledger.witness import (COSIGNATURE_DIR, Witness, bundle_cosignatures, check_witness_policy,
                                           write_cosigned_note)
from rlhf_audit_kit.witness_keys import init_witness_keys, load_witness_signer
from test_cli import cli as run_cli

ORIGIN = "example.com/witnessed-log"


@pytest.fixture(scope="module")
def log_keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("log") / "keys"
    init_keys(folder, "example.com/log", no_passphrase=True)
    return folder


def _bundle(tmp_path, log_keys, name: str, datasets: list[str]):
    """A bundle of a log of ``ORIGIN`` whose events are one dataset event per name (same key every time)."""
    with open_store(tmp_path / f"{name}.duckdb", origin=ORIGIN, pseudonymize=False) as store:
        store.extend([{"kind": "dataset", "name": d, "version": "1"} for d in datasets])
        store.snapshot(load_signer(log_keys)).export(tmp_path / name).close()
    return tmp_path / name


def _witness(tmp_path, n: int) -> Witness:
    keys = tmp_path / f"wkeys{n}"
    init_witness_keys(keys, f"witness.example/w{n}", no_passphrase=True)
    return Witness(keys / "state", load_witness_signer(keys))


def _cosign(witness: Witness, folder, log_keys=None):
    note = witness.observe_bundle(folder, None if log_keys is None else log_keys / "verifier.vkey")
    return write_cosigned_note(folder, note, witness.signer)


def test_cosigned_checkpoint_verified_with_one_and_two_witness_keys(tmp_path, log_keys):
    folder = _bundle(tmp_path, log_keys, "b", ["a", "b", "c"])
    w1, w2 = _witness(tmp_path, 1), _witness(tmp_path, 2)
    p1, p2 = _cosign(w1, folder, log_keys), _cosign(w2, folder, log_keys)
    assert p1.parent.name == COSIGNATURE_DIR and p1 != p2
    with open_bundle(folder) as b:
        assert b.verify(log_keys).ok  # the signed files are untouched; cosignatures/ is not a stray file
        cosigs, findings = bundle_cosignatures(b, [w1.signer.verifier], required=1)
        assert [c.name for c in cosigs] == ["witness.example/w1"] and findings == []
        cosigs, findings = bundle_cosignatures(b, [w1.signer.vkey, w2.signer.vkey])  # default: all of them
        assert sorted(c.name for c in cosigs) == ["witness.example/w1", "witness.example/w2"] and findings == []
    # each file is a complete C2SP cosigned checkpoint: the log's signature and the witness's line
    text = p2.read_text(encoding="utf-8")
    assert verify_cosignatures(text, w2.signer.verifier)[0].name == "witness.example/w2"


def test_missing_cosignature_under_a_policy_of_one(tmp_path, log_keys):
    folder = _bundle(tmp_path, log_keys, "b", ["a", "b"])
    w1, w2 = _witness(tmp_path, 1), _witness(tmp_path, 2)
    with open_bundle(folder) as b:
        cosigs, [f] = bundle_cosignatures(b, [w1.signer.verifier], required=1)
    assert cosigs == [] and f.damage == "witness-quorum" and "0 of the 1 pinned witness(es)" in f.message
    assert f.checkpoint == 2
    _cosign(w2, folder, log_keys)  # another witness cosigned: it does not count for w1
    with open_bundle(folder) as b:
        cosigs, [f] = bundle_cosignatures(b, [w1.signer.verifier], required=1)
        assert f.damage == "witness-quorum"
        cosigs, findings = bundle_cosignatures(b, [w1.signer.verifier, w2.signer.verifier], required=1)
        assert [c.name for c in cosigs] == ["witness.example/w2"] and findings == []
        with pytest.raises(AuditKitError, match="quorum must be between 0 and the 2"):
            bundle_cosignatures(b, [w1.signer.verifier, w2.signer.verifier], required=3)


def test_cosignature_of_another_checkpoint_does_not_count(tmp_path, log_keys):
    old = _bundle(tmp_path, log_keys, "old", ["a"])
    new = _bundle(tmp_path, log_keys, "new", ["a", "b"])
    w = _witness(tmp_path, 1)
    _cosign(w, old, log_keys)
    stale = next((old / COSIGNATURE_DIR).iterdir())
    (new / COSIGNATURE_DIR).mkdir()
    (new / COSIGNATURE_DIR / stale.name).write_bytes(stale.read_bytes())
    with open_bundle(new) as b:
        cosigs, [f] = bundle_cosignatures(b, [w.signer.verifier], required=1)
    assert cosigs == [] and f.damage == "witness-quorum"


def test_a_tampered_cosignature_is_a_finding(tmp_path, log_keys):
    folder = _bundle(tmp_path, log_keys, "b", ["a"])
    w = _witness(tmp_path, 1)
    path = _cosign(w, folder, log_keys)
    text = path.read_text(encoding="utf-8")
    line = text.rstrip("\n").rsplit("\n", 1)[1]
    payload = line.rsplit(" ", 1)[1]
    path.write_text(text.replace(payload, payload[:20] + ("A" if payload[20] != "A" else "B") + payload[21:]),
                    encoding="utf-8")
    with open_bundle(folder) as b:
        _, findings = bundle_cosignatures(b, [w.signer.verifier], required=1)
    assert [f.damage for f in findings] == ["bad-cosignature", "witness-quorum"]


def test_cosignatures_folder_that_is_a_link_is_refused_unread(tmp_path, log_keys):
    folder = _bundle(tmp_path, log_keys, "b", ["a"])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, folder / COSIGNATURE_DIR)
    with open_bundle(folder) as b:
        _, [f] = bundle_cosignatures(b, [_witness(tmp_path, 1).signer.verifier], required=1)
    assert f.damage == "unsafe-file"
    with pytest.raises(AuditKitError, match="not a folder"):
        write_cosigned_note(folder, open_bundle(folder).note, _witness(tmp_path, 2).signer)


def test_consistent_growth_is_cosigned_and_state_survives_restart(tmp_path, log_keys):
    w = _witness(tmp_path, 1)
    signer = load_signer(log_keys)
    with open_store(tmp_path / "grows.duckdb", origin=ORIGIN, pseudonymize=False) as store:
        store.extend([{"kind": "dataset", "name": d, "version": "1"} for d in "abc"])
        store.snapshot(signer).export(tmp_path / "s3").close()
        store.extend([{"kind": "dataset", "name": d, "version": "1"} for d in "de"])
        store.snapshot(signer).export(tmp_path / "s6").close()  # 3 + the snapshot event + 2
    _cosign(w, tmp_path / "s3", log_keys)
    assert w.state(ORIGIN).size == 3
    restarted = Witness(w.state_dir, load_witness_signer(tmp_path / "wkeys1"))  # a new process, same folder
    assert restarted.state(ORIGIN) == w.state(ORIGIN)
    _cosign(restarted, tmp_path / "s6")  # the log key pinned on first sight is used
    assert restarted.state(ORIGIN).size == 6
    with pytest.raises(RollbackError):  # and what it saw binds every later instance
        Witness(w.state_dir, w.signer).observe_bundle(tmp_path / "s3")


def test_fork_with_two_roots_for_one_size_is_refused_quoting_both_notes(tmp_path, log_keys):
    w = _witness(tmp_path, 1)
    honest = _bundle(tmp_path, log_keys, "honest", ["a", "b", "c"])
    forked = _bundle(tmp_path, log_keys, "forked", ["a", "b", "X"])  # same origin, key and size
    _cosign(w, honest, log_keys)
    seen = w.state(ORIGIN)
    with pytest.raises(ForkError, match="fork: two roots for size 3") as e:
        w.observe_bundle(forked)
    with open_bundle(honest) as h, open_bundle(forked) as f:
        assert e.value.seen_note == h.note and e.value.new_note == f.note
        for note in (h.note, f.note):  # both notes, line by line, in the message
            assert all(line in str(e.value) for line in note.splitlines() if line)
    assert e.value.damage == "fork" and not isinstance(e.value, RollbackError)
    assert w.state(ORIGIN) == seen and not (forked / COSIGNATURE_DIR).exists()


def test_fork_that_does_not_extend_the_seen_tree_is_refused(tmp_path, log_keys):
    w = _witness(tmp_path, 1)
    _cosign(w, _bundle(tmp_path, log_keys, "honest", ["a", "b", "c"]), log_keys)
    rewritten = _bundle(tmp_path, log_keys, "rewritten", ["a", "X", "c", "d", "e"])
    with pytest.raises(ForkError, match="size 5 is not consistent with size 3") as e:
        w.observe_bundle(rewritten)
    assert "size 3" in e.value.seen_note.split("\n")[1] or e.value.seen_note.split("\n")[1] == "3"
    assert w.state(ORIGIN).size == 3


def test_rollback_is_refused(tmp_path, log_keys):
    w = _witness(tmp_path, 1)
    _cosign(w, _bundle(tmp_path, log_keys, "big", ["a", "b", "c", "d"]), log_keys)
    with pytest.raises(RollbackError, match="rollback: size 2 is smaller than size 4") as e:
        w.observe_bundle(_bundle(tmp_path, log_keys, "small", ["a", "b"]))
    assert e.value.damage == "rollback" and "4\n" in e.value.seen_note


def test_core_observe_checks_key_and_proof(tmp_path):
    log = Signer("example.com/log", Ed25519PrivateKey.generate())
    other = Signer("example.com/log", Ed25519PrivateKey.generate())
    w = Witness(tmp_path / "state", WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate()),
                clock=lambda: 1_700_000_000.7)
    entries = [bytes([i]) for i in range(6)]

    def note(n, signer=log):
        return signer.sign(Checkpoint(ORIGIN, n, merkle.root(entries[:n])).body())
    with pytest.raises(SignatureError):
        w.observe(note(2, other), log.verifier)  # not the log's signature: nothing is pinned
    assert w.state(ORIGIN) is None
    first = w.observe(note(2), log.verifier)
    assert verify_cosignatures(first, w.signer.verifier)[0].timestamp == 1_700_000_000
    with pytest.raises(KeysError, match="pinned the log key"):
        w.observe(note(2, other), other.verifier)
    with pytest.raises(ForkError, match="consistency proof does not verify"):
        w.observe(note(6), log.verifier, merkle.consistency_proof(entries, 3, 6))  # a proof from the wrong size
    assert w.observe(note(2), log.verifier) == first  # the same checkpoint again: the same cosignature
    w.observe(note(6), log.verifier, lambda size, root: merkle.consistency_proof(entries, size, 6))
    assert w.state(ORIGIN).size == 6


def test_damaged_state_is_never_reset(tmp_path):
    log = Signer("example.com/log", Ed25519PrivateKey.generate())
    w = Witness(tmp_path / "state", WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate()))
    w.observe(log.sign(Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT).body()), log.verifier)
    [path] = [p for p in (tmp_path / "state").iterdir() if p.suffix == ".json"]
    path.write_text(path.read_text().replace('"size": 0', '"size": 9'))
    with pytest.raises(AuditKitError, match="witness state .* is damaged"):
        w.observe(log.sign(Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT).body()), log.verifier)


def test_policy_over_plain_notes():
    log = Signer("example.com/log", Ed25519PrivateKey.generate())
    w = WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate())
    from rlhf_audit_kit.ledger.cosignature import cosign
    note = log.sign(Checkpoint(ORIGIN, 1, bytes(32)).body())
    cosigs, findings = check_witness_policy([note, cosign(note, w, 5), "not a note"], [w.verifier], 1)
    assert [c.timestamp for c in cosigs] == [5] and findings == []


def test_witness_keys_folder(tmp_path, log_keys):
    info = init_witness_keys(tmp_path / "wk", "witness.example/w1", no_passphrase=True)
    assert info.vkey.split("+")[2].startswith("B")  # base64 of 0x04 || key
    assert sorted(p.name for p in (tmp_path / "wk").iterdir()) == ["keys.json", "signing_key.pem", "verifier.vkey"]
    assert oct((tmp_path / "wk" / "signing_key.pem").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(KeysError, match="not a witness keys folder"):
        load_witness_signer(log_keys)
    with pytest.raises(KeysError, match="WitnessSigner .* not a log key"):
        Witness(tmp_path / "s", load_signer(log_keys))


def test_witness_key_is_encrypted_at_rest(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHF_AUDIT_PASSPHRASE", raising=False)
    init_witness_keys(tmp_path / "wk", "witness.example/w1", passphrase="correct horse battery staple",
                      kdf_rounds=10_000)
    pem = (tmp_path / "wk" / "signing_key.pem").read_bytes()
    assert b"ENCRYPTED PRIVATE KEY" in pem
    with pytest.raises(KeysError, match="passphrase"):
        load_witness_signer(tmp_path / "wk")
    assert load_witness_signer(tmp_path / "wk", "correct horse battery staple").name == "witness.example/w1"


# ---------------------------------------------------------------- the CLI
def cli(*args, check=True):
    env = {k: v for k, v in os.environ.items() if k != "RLHF_AUDIT_PASSPHRASE"}
    return run_cli(*args, env=env, check=check)


def test_cli_witness_cosigns_and_refuses_a_fork(tmp_path, log_keys):
    wkeys = tmp_path / "wkeys"
    out = cli("keys", "init", wkeys, "--name", "witness.example/cli", "--witness", "--no-passphrase").stdout
    assert "+B" in out  # the printed key is the witness key (type 0x04)
    honest = _bundle(tmp_path, log_keys, "honest", ["a", "b"])
    out = cli("witness", honest, "--keys", wkeys, "--log-vkey", log_keys / "verifier.vkey").stdout
    assert f"cosigned {ORIGIN} size 2" in out and "as witness.example/cli" in out
    vkey = (wkeys / "verifier.vkey").read_text().strip()
    with open_bundle(honest) as b:
        assert [c.name for c in bundle_cosignatures(b, [vkey], 1)[0]] == ["witness.example/cli"]
    forked = _bundle(tmp_path, log_keys, "forked", ["a", "X"])
    res = cli("witness", forked, "--keys", wkeys, check=False)
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert res.stderr.startswith("rlhf-audit: REFUSED [fork]: fork: two roots for size 2")
    with open_bundle(honest) as h, open_bundle(forked) as f:
        assert h.note.splitlines()[2] in res.stderr and f.note.splitlines()[2] in res.stderr  # both roots quoted


@pytest.mark.parametrize("case", ["log keys as witness keys", "first sight without the log key", "no bundle"])
def test_cli_errors_are_one_line(tmp_path, log_keys, case):
    folder = _bundle(tmp_path, log_keys, "b", ["a"])
    wkeys = tmp_path / "wkeys"
    init_witness_keys(wkeys, "witness.example/w1", no_passphrase=True)
    args = {"log keys as witness keys": (folder, "--keys", log_keys, "--log-vkey", log_keys),
            "first sight without the log key": (folder, "--keys", wkeys),
            "no bundle": (tmp_path / "nothing", "--keys", wkeys, "--log-vkey", log_keys)}[case]
    res = cli("witness", *args, check=False)
    assert res.returncode in (1, 3) and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert {"log keys as witness keys": "not a witness keys folder",
            "first sight without the log key": "--log-vkey",
            "no bundle": "nothing"}[case] in res.stderr
