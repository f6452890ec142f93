"""``rlhf-audit verify --witness VKEY [--witness-quorum N]``, and witness keys kept out of log signing.

Real parts: DuckDB stores, keys folders, exported bundles, witnesses with their state folders, the CLI.
"""
from __future__ import annotations

import pytest

from rlhf_audit_kit import open_store
from rlhf_audit_kit.cli import main
from rlhf_audit_kit.errors import KeysError
from rlhf_audit_kit.keys import init_keys, load_signer
from rlhf_audit_kit.ledger.witness import Witness, write_cosigned_note
from rlhf_audit_kit.witness_keys import init_witness_keys, load_witness_signer

ORIGIN = "example.com/witnessed"


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """A bundle cosigned by witness w1 only, the log key, and two witness keys folders."""
    tmp = tmp_path_factory.mktemp("witnessed")
    init_keys(tmp / "keys", ORIGIN, no_passphrase=True)
    with open_store(tmp / "a.duckdb", origin=ORIGIN, pseudonymize=False) as store:
        store.extend([{"kind": "dataset", "name": n, "version": "1"} for n in "abc"])
        store.snapshot(load_signer(tmp / "keys")).export(tmp / "bundle").close()
    witnesses = []
    for n in (1, 2):
        init_witness_keys(tmp / f"w{n}", f"witness.example/w{n}", no_passphrase=True)
        witnesses.append(Witness(tmp / f"w{n}" / "state", load_witness_signer(tmp / f"w{n}")))
    w1 = witnesses[0]
    write_cosigned_note(tmp / "bundle", w1.observe_bundle(tmp / "bundle", tmp / "keys" / "verifier.vkey"), w1.signer)
    return tmp, witnesses


def verify(capsys, *args):
    code = main(["verify", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_one_pinned_witness_cosigned(record, capsys):
    tmp, (w1, _) = record
    code, out, err = verify(capsys, tmp / "bundle", "--vkey", tmp / "keys", "--witness", tmp / "w1")
    assert code == 0, err
    assert out.startswith("OK: ")
    assert f"cosigned by the pinned witness witness.example/w1 (key id {w1.signer.key_id.hex()}) at 20" in out
    assert " UTC" in out


def test_two_witnesses_policy(record, capsys):
    tmp, (w1, w2) = record
    args = [tmp / "bundle", "--vkey", tmp / "keys", "--witness", tmp / "w1", "--witness", w2.signer.vkey]
    code, out, err = verify(capsys, *args)  # default: all given must have cosigned; w2 has not
    assert code == 3 and "witness-quorum" in err and "1 of the 2 pinned witness(es)" in err
    code, out, err = verify(capsys, *args, "--witness-quorum", "1")
    assert code == 0 and out.count("cosigned by the pinned witness") == 1 and "witness.example/w1" in out
    code, out, err = verify(capsys, *args, "--witness-quorum", "3")
    assert code == 1 and "quorum must be between 0 and the 2" in err and "Traceback" not in err


def test_both_cosigned(tmp_path, record, capsys):
    import shutil
    tmp, (w1, w2) = record
    folder = tmp_path / "bundle"
    shutil.copytree(tmp / "bundle", folder)
    write_cosigned_note(folder, w2.observe_bundle(folder, tmp / "keys" / "verifier.vkey"), w2.signer)
    code, out, err = verify(capsys, folder, "--vkey", tmp / "keys", "--witness", tmp / "w1", "--witness", tmp / "w2")
    assert code == 0, err
    assert "witness.example/w1" in out and "witness.example/w2" in out and out.count("cosigned by") == 2


def test_a_tampered_cosignature_fails(tmp_path, record, capsys):
    import shutil
    tmp, _ = record
    folder = tmp_path / "bundle"
    shutil.copytree(tmp / "bundle", folder)
    note = next((folder / "cosignatures").iterdir())
    text = note.read_text()
    payload = text.rstrip("\n").rsplit(" ", 1)[1]
    note.write_text(text.replace(payload, payload[:30] + ("A" if payload[30] != "A" else "B") + payload[31:]))
    code, out, err = verify(capsys, folder, "--vkey", tmp / "keys", "--witness", tmp / "w1", "--witness-quorum", "0")
    assert code == 3 and "bad-cosignature" in err and "invalid cosignature by witness witness.example/w1" in err


def test_refusals_are_one_line(record, capsys):
    tmp, _ = record
    for args, message in [
        ((tmp / "a.duckdb", "--vkey", tmp / "keys", "--witness", tmp / "w1"), "not a bundle folder"),
        ((tmp / "bundle", "--vkey", tmp / "keys", "--witness-quorum", "1"), "needs the witness keys"),
        ((tmp / "bundle", "--vkey", tmp / "keys", "--witness", tmp / "keys"), "log signing key"),  # a log key
    ]:
        code, out, err = verify(capsys, *args)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err


def test_load_signer_refuses_a_witness_keys_folder(record):
    tmp, (w1, _) = record
    with pytest.raises(KeysError, match="is a witness keys folder"):
        load_signer(tmp / "w1")
    assert load_witness_signer(tmp / "w1").vkey == w1.signer.vkey  # the witness's own path still loads it
    with open_store(tmp / "b.duckdb", origin=ORIGIN, pseudonymize=False) as store:
        store.extend([{"kind": "dataset", "name": "x", "version": "1"}])
        with pytest.raises(KeysError, match="witness keys folder"):
            store.snapshot(tmp / "w1")
    assert main(["snapshot", str(tmp / "b.duckdb"), "--keys", str(tmp / "w1")]) == 1
