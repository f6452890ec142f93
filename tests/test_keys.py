"""The keys folder: creation, loading, passphrases, file modes, secrets staying in their files."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from rlhf_audit_kit import keys
from rlhf_audit_kit.errors import KeysError
from rlhf_audit_kit.ledger.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint

PASS = "correct horse battery staple"
NAME = "example.com/audit-log"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(keys.KEYS_ENV, raising=False)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_round_trip(tmp_path):
    folder = tmp_path / "keys"
    info = keys.init_keys(folder, NAME, passphrase=PASS)
    assert info.encrypted and info.name == NAME and info.key_id == info.vkey.split("+")[1]
    signer = keys.load_signer(folder, PASS)
    assert signer.vkey == info.vkey
    for source in (info.vkey, folder, folder / keys.VKEY_FILE, str(folder)):
        assert keys.load_verifier(source) == signer.verifier
    note = sign_checkpoint(Checkpoint(NAME, 0, bytes(32)), signer)
    assert verify_checkpoint(note, keys.load_verifier(folder)).size == 0
    assert len(keys.load_pseudonym_key(folder)) == 32
    meta = json.loads((folder / keys.INFO_FILE).read_text())
    assert meta["vkey"] == info.vkey and meta["key_id"] == info.key_id and meta["encrypted"]
    assert set(meta["secret_files"]) == {keys.SIGNING_KEY_FILE, keys.PSEUDONYM_KEY_FILE}
    assert (folder / keys.VKEY_FILE).read_text() == info.vkey + "\n"
    assert b"ENCRYPTED PRIVATE KEY" in (folder / keys.SIGNING_KEY_FILE).read_bytes()


def test_bytes_passphrase_and_env(tmp_path, monkeypatch):
    keys.init_keys(tmp_path / "a", NAME, passphrase=PASS.encode())
    assert keys.load_signer(tmp_path / "a", PASS).name == NAME
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "from-env")
    keys.init_keys(tmp_path / "b", NAME)
    assert keys.load_signer(tmp_path / "b").name == NAME
    with pytest.raises(KeysError, match="wrong passphrase"):
        keys.load_signer(tmp_path / "a")  # env passphrase is not this folder's


def test_passphrase_required(tmp_path):
    with pytest.raises(KeysError, match="passphrase"):
        keys.init_keys(tmp_path / "k", NAME)
    assert not (tmp_path / "k").exists()
    with pytest.raises(KeysError):
        keys.init_keys(tmp_path / "k", NAME, passphrase="")
    with pytest.raises(KeysError):
        keys.init_keys(tmp_path / "k", NAME, passphrase=PASS, no_passphrase=True)
    keys.init_keys(tmp_path / "k", NAME, passphrase=PASS)
    with pytest.raises(KeysError, match="passphrase"):
        keys.load_signer(tmp_path / "k")


def test_wrong_passphrase(tmp_path):
    keys.init_keys(tmp_path / "k", NAME, passphrase=PASS)
    with pytest.raises(KeysError, match="wrong passphrase"):
        keys.load_signer(tmp_path / "k", "not it")


def test_no_passphrase(tmp_path, monkeypatch):
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "ignored when no_passphrase is explicit")
    info = keys.init_keys(tmp_path / "k", NAME, no_passphrase=True)
    assert not info.encrypted
    pem = (tmp_path / "k" / keys.SIGNING_KEY_FILE).read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keys.load_signer(tmp_path / "k").vkey == info.vkey


def test_unencrypted_key_refused_in_encrypted_folder(tmp_path):
    folder = tmp_path / "k"
    keys.init_keys(folder, NAME, passphrase=PASS)
    signer = keys.load_signer(folder, PASS)
    plain = signer.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (folder / keys.SIGNING_KEY_FILE).write_bytes(plain)
    with pytest.raises(KeysError, match="not encrypted"):
        keys.load_signer(folder, PASS)


def test_swapped_key_refused(tmp_path):
    folder = tmp_path / "k"
    keys.init_keys(folder, NAME, no_passphrase=True)
    other = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                       NoEncryption())
    (folder / keys.SIGNING_KEY_FILE).write_bytes(other)
    with pytest.raises(KeysError, match="does not match"):
        keys.load_signer(folder)


def test_overwrite_refused(tmp_path):
    folder = tmp_path / "k"
    info = keys.init_keys(folder, NAME, passphrase=PASS)
    with pytest.raises(KeysError, match="refusing"):
        keys.init_keys(folder, NAME, passphrase=PASS)
    assert keys.load_signer(folder, PASS).vkey == info.vkey
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeysError):
        keys.init_keys(tmp_path / "file", NAME, passphrase=PASS)
    (tmp_path / "empty").mkdir()
    keys.init_keys(tmp_path / "empty", NAME, passphrase=PASS)  # an empty folder is fine


def test_bad_name(tmp_path):
    for name in ["", "a+b", "a b"]:
        with pytest.raises(KeysError):
            keys.init_keys(tmp_path / "k", name, passphrase=PASS)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_file_modes(tmp_path):
    old = os.umask(0o022)
    try:
        folder = tmp_path / "k"
        keys.init_keys(folder, NAME, passphrase=PASS)
    finally:
        os.umask(old)
    assert _mode(folder) == 0o700
    assert _mode(folder / keys.SIGNING_KEY_FILE) == 0o600
    assert _mode(folder / keys.PSEUDONYM_KEY_FILE) == 0o600
    assert _mode(folder / keys.VKEY_FILE) == 0o644
    assert _mode(folder / keys.INFO_FILE) == 0o644


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret), base64.b64encode(secret)[:40]]


@pytest.mark.parametrize("encrypted", [True, False])
def test_secrets_only_in_their_own_files(tmp_path, encrypted):
    folder = tmp_path / "k"
    kw = {"passphrase": PASS} if encrypted else {"no_passphrase": True}
    keys.init_keys(folder, NAME, **kw)
    seed = keys.load_signer(folder, PASS if encrypted else None).private_key.private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pseudonym = keys.load_pseudonym_key(folder)
    contents = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert set(contents) == {keys.SIGNING_KEY_FILE, keys.PSEUDONYM_KEY_FILE, keys.VKEY_FILE,
                             keys.INFO_FILE}
    for fname, data in contents.items():
        for form in _forms(pseudonym):
            assert (form in data) == (fname == keys.PSEUDONYM_KEY_FILE and form ==
                                      pseudonym.hex().encode()), (fname, form)
        for form in _forms(seed):
            if fname == keys.SIGNING_KEY_FILE and not encrypted:
                continue  # an unencrypted PKCS#8 PEM holds the seed in its base64 body
            assert form not in data, fname
        assert PASS.encode() not in data


def test_pseudonym_key_errors(tmp_path):
    with pytest.raises(KeysError, match="no pseudonymisation key"):
        keys.load_pseudonym_key(tmp_path)
    (tmp_path / keys.PSEUDONYM_KEY_FILE).write_text("abcd\n")
    with pytest.raises(KeysError, match="2 bytes"):
        keys.load_pseudonym_key(tmp_path)
    (tmp_path / keys.PSEUDONYM_KEY_FILE).write_text("zz" * 32)
    with pytest.raises(KeysError):
        keys.load_pseudonym_key(tmp_path)


def test_load_verifier_errors(tmp_path):
    with pytest.raises(KeysError):
        keys.load_verifier("not a vkey")
    with pytest.raises(KeysError):
        keys.load_verifier(tmp_path)  # a folder without verifier.vkey
    with pytest.raises(KeysError):
        keys.load_signer(tmp_path)  # not a keys folder


def test_keys_folder_from_env(tmp_path, monkeypatch):
    assert keys.keys_folder_from_env() is None
    monkeypatch.setenv(keys.KEYS_ENV, str(tmp_path))
    assert keys.keys_folder_from_env() == tmp_path
