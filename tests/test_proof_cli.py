"""The ledger CLI end to end; proofs checked by an independent RFC 9162 verifier written here."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from rlhf_audit_kit.store import open_store

from test_snapshot_verify import events  # noqa: E402 - shared event fixtures

CLI = "rlhf_audit_kit.cli"


def run(*args, env=None, check=True):
    e = dict(os.environ, **(env or {}))
    e.pop("RLHF_AUDIT_PASSPHRASE", None) if env is None else None
    p = subprocess.run([sys.executable, "-m", CLI, *map(str, args)], capture_output=True, text=True, env=e,
                       timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stdout}\n{p.stderr}")
    return p


# ---------------------------------------------------------------- independent verification
def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def node(left: bytes, right: bytes) -> bytes:
    return sha(b"\x01" + left + right)


def rfc_verify_inclusion(leaf_index, tree_size, leaf_hash, proof, root) -> bool:
    """RFC 9162 §2.1.3.2, step by step."""
    if leaf_index >= tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc_verify_consistency(first, second, first_hash, second_hash, proof) -> bool:
    """RFC 9162 §2.1.4.2, step by step (0 < first < second)."""
    if not 0 < first < second or not proof:
        return False
    if first & (first - 1) == 0:
        proof = [first_hash] + proof
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


def open_note(note: str, vkey: str) -> tuple[str, int, bytes]:
    """C2SP signed note + tlog-checkpoint, checked with `cryptography` directly: (origin, size, root)."""
    name, key_id_hex, key_b64 = vkey.split("+", 2)
    raw = base64.b64decode(key_b64)
    assert raw[0] == 1 and len(raw) == 33
    pub = raw[1:]
    assert sha(name.encode() + b"\n\x01" + pub)[:4].hex() == key_id_hex
    text, sigs = note.split("\n\n", 1)
    text += "\n"
    line = sigs.rstrip("\n").split("\n")[0]
    assert line.startswith("\u2014 " + name + " ")
    sig = base64.b64decode(line.rsplit(" ", 1)[1])
    assert sig[:4].hex() == key_id_hex
    Ed25519PublicKey.from_public_bytes(pub).verify(sig[4:], text.encode())  # raises if forged
    origin, size, root_b64 = text.split("\n")[:3]
    return origin, int(size), base64.b64decode(root_b64)


# ---------------------------------------------------------------- the flow
@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    keys, store_path = d / "keys", d / "audit.duckdb"
    out = run("keys", "init", keys, "--name", "cli.example/log", "--no-passphrase").stdout
    vkey = (keys / "verifier.vkey").read_text().strip()
    assert vkey in out
    notes = []
    for b in range(3):
        with open_store(store_path, pseudonymize=False) as s:
            s.extend(events(2 * b) + events(2 * b + 1)[: 3 + b])
        notes.append(run("snapshot", store_path, "--keys", keys).stdout)
    return d, keys, store_path, vkey, notes


def test_keys_snapshot_verify(flow):
    d, keys, store_path, vkey, notes = flow
    sizes = [open_note(n, vkey)[1] for n in notes]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    p = run("verify", store_path, "--vkey", vkey)
    assert p.stdout.startswith("OK") and "3 signed checkpoint(s)" in p.stdout
    assert run("verify", store_path, "--vkey", keys / "verifier.vkey").stdout.startswith("OK")


@pytest.mark.parametrize("which", [0, 1, 2])
def test_inclusion_proof_verifies_independently(flow, which):
    d, keys, store_path, vkey, notes = flow
    size_n = open_note(notes[which], vkey)[1]
    seq = size_n - 1 if which else 0
    if which == 2:
        seq = size_n // 2
    data = json.loads(run("proof", "inclusion", store_path, seq, "--vkey", vkey).stdout)
    origin, size, root = open_note(data["checkpoint"], vkey)
    assert data["leaf_index"] == seq and data["tree_size"] == size and data["root_hash"] == root.hex()
    assert size > seq
    leaf = bytes.fromhex(data["leaf_hash"])
    assert leaf == sha(b"\x00" + data["entry"].encode())
    proof = [bytes.fromhex(h) for h in data["proof"]]
    assert rfc_verify_inclusion(seq, size, leaf, proof, root)
    assert not rfc_verify_inclusion(seq, size, sha(b"\x00forged"), proof, root)


def test_consistency_proof_verifies_independently(flow):
    d, keys, store_path, vkey, notes = flow
    sizes = [open_note(n, vkey)[1] for n in notes]
    for old, new in [(sizes[0], sizes[1]), (sizes[0], sizes[2]), (sizes[1], sizes[2])]:
        data = json.loads(run("proof", "consistency", store_path, old, new).stdout)
        _, s_old, r_old = open_note(data["old_checkpoint"], vkey)
        _, s_new, r_new = open_note(data["new_checkpoint"], vkey)
        assert (s_old, s_new) == (old, new) == (data["old_size"], data["new_size"])
        assert data["old_root"] == r_old.hex() and data["new_root"] == r_new.hex()
        proof = [bytes.fromhex(h) for h in data["proof"]]
        assert rfc_verify_consistency(old, new, r_old, r_new, proof)
        assert not rfc_verify_consistency(old, new, r_old, sha(b"x"), proof)


def test_proof_errors_and_tampered_note(flow):
    d, keys, store_path, vkey, notes = flow
    p = run("proof", "consistency", store_path, 1, 2, check=False)
    assert p.returncode != 0 and "signed" in p.stderr
    big = open_note(notes[-1], vkey)[1] + 1  # the last snapshot event itself: not covered yet
    p = run("proof", "inclusion", store_path, big, check=False)
    assert p.returncode != 0 and "no signed snapshot" in p.stderr
    forged = notes[0].replace("\n\n", "\n\n", 1)
    lines = forged.split("\n")
    lines[1] = str(int(lines[1]) + 1)
    with pytest.raises(InvalidSignature):
        open_note("\n".join(lines), vkey)


def test_verify_reports_first_bad_seq(flow, tmp_path):
    import duckdb
    import shutil
    d, keys, store_path, vkey, notes = flow
    bad = tmp_path / "bad.duckdb"
    shutil.copy(store_path, bad)
    con = duckdb.connect(str(bad))
    con.execute("UPDATE annotation SET prompt = prompt || '!' WHERE seq = (SELECT min(seq) FROM annotation)")
    seq = con.execute("SELECT min(seq) FROM annotation").fetchall()[0][0]
    con.close()
    p = run("verify", bad, "--vkey", vkey, check=False)
    assert p.returncode != 0
    assert f"first bad seq: {seq}; damage: typed-row-mismatch" in p.stderr


def test_verify_bundle_and_passphrase_keys(flow, tmp_path):
    d, keys, store_path, vkey, notes = flow
    from rlhf_audit_kit.ledger.verify import resolve_verifiers
    with open_store(store_path, pseudonymize=False) as s:
        snap = s.snapshots(vkey)[-1]
        snap.export(tmp_path / "bundle", verifier=resolve_verifiers(vkey)[0]).close()
    assert run("verify", tmp_path / "bundle", "--vkey", vkey).stdout.startswith("OK")
    import shutil
    store_path = shutil.copy(store_path, tmp_path / "copy.duckdb")  # a second key's snapshot goes here
    env = {"RLHF_AUDIT_PASSPHRASE": "s3cret-passphrase"}
    run("keys", "init", tmp_path / "k2", "--name", "other.example/log", env=env)
    assert b"ENCRYPTED" in (tmp_path / "k2" / "signing_key.pem").read_bytes()
    note = run("snapshot", store_path, "--keys", tmp_path / "k2", env=env).stdout
    assert open_note(note, (tmp_path / "k2" / "verifier.vkey").read_text().strip())[0]
    p = run("snapshot", store_path, "--keys", tmp_path / "k2", check=False, env={"RLHF_AUDIT_PASSPHRASE": "wrong"})
    assert p.returncode != 0 and "passphrase" in p.stderr
