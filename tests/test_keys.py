"""The keys folder: creation, loading, passphrases, file modes, secrets staying in their files."""
from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (BestAvailableEncryption, Encoding, NoEncryption,
                                                          PrivateFormat)

from rlhf_audit_kit import keys
from rlhf_audit_kit.errors import KeysError
from rlhf_audit_kit.ledger.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint

PASS = "correct horse battery staple"
NAME = "example.com/audit-log"
# The least cost init_keys accepts keeps these tests fast; test_default_kdf_cost_is_written checks
# the default.
_init = functools.partial(keys.init_keys, kdf_rounds=keys.MIN_KDF_ROUNDS)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    monkeypatch.delenv(keys.KEYS_ENV, raising=False)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_round_trip(tmp_path):
    folder = tmp_path / "keys"
    info = _init(folder, NAME, passphrase=PASS)
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
    _init(tmp_path / "a", NAME, passphrase=PASS.encode())
    assert keys.load_signer(tmp_path / "a", PASS).name == NAME
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "from-the-environment")
    _init(tmp_path / "b", NAME)
    assert keys.load_signer(tmp_path / "b").name == NAME
    with pytest.raises(KeysError, match="wrong passphrase"):
        keys.load_signer(tmp_path / "a")  # env passphrase is not this folder's


def test_passphrase_required(tmp_path):
    with pytest.raises(KeysError, match="passphrase"):
        _init(tmp_path / "k", NAME)
    assert not (tmp_path / "k").exists()
    with pytest.raises(KeysError):
        _init(tmp_path / "k", NAME, passphrase="")
    with pytest.raises(KeysError):
        _init(tmp_path / "k", NAME, passphrase=PASS, no_passphrase=True)
    _init(tmp_path / "k", NAME, passphrase=PASS)
    with pytest.raises(KeysError, match="passphrase"):
        keys.load_signer(tmp_path / "k")


def test_wrong_passphrase(tmp_path):
    _init(tmp_path / "k", NAME, passphrase=PASS)
    with pytest.raises(KeysError, match="wrong passphrase"):
        keys.load_signer(tmp_path / "k", "not it")


def test_no_passphrase(tmp_path, monkeypatch):
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "ignored when no_passphrase is explicit")
    info = _init(tmp_path / "k", NAME, no_passphrase=True)
    assert not info.encrypted
    pem = (tmp_path / "k" / keys.SIGNING_KEY_FILE).read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keys.load_signer(tmp_path / "k").vkey == info.vkey


def test_unencrypted_key_refused_in_encrypted_folder(tmp_path):
    folder = tmp_path / "k"
    _init(folder, NAME, passphrase=PASS)
    signer = keys.load_signer(folder, PASS)
    plain = signer.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (folder / keys.SIGNING_KEY_FILE).write_bytes(plain)
    with pytest.raises(KeysError, match="not encrypted"):
        keys.load_signer(folder, PASS)


def test_swapped_key_refused(tmp_path):
    folder = tmp_path / "k"
    _init(folder, NAME, no_passphrase=True)
    other = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                       NoEncryption())
    (folder / keys.SIGNING_KEY_FILE).write_bytes(other)
    with pytest.raises(KeysError, match="does not match"):
        keys.load_signer(folder)


def test_overwrite_refused(tmp_path):
    folder = tmp_path / "k"
    info = _init(folder, NAME, passphrase=PASS)
    with pytest.raises(KeysError, match="refusing"):
        _init(folder, NAME, passphrase=PASS)
    assert keys.load_signer(folder, PASS).vkey == info.vkey
    (tmp_path / "file").write_text("x")
    with pytest.raises(KeysError):
        _init(tmp_path / "file", NAME, passphrase=PASS)
    (tmp_path / "empty").mkdir()
    _init(tmp_path / "empty", NAME, passphrase=PASS)  # an empty folder is fine


def test_bad_name(tmp_path):
    for name in ["", "a+b", "a b"]:
        with pytest.raises(KeysError):
            _init(tmp_path / "k", name, passphrase=PASS)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_file_modes(tmp_path):
    old = os.umask(0o022)
    try:
        folder = tmp_path / "k"
        _init(folder, NAME, passphrase=PASS)
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
    _init(folder, NAME, **kw)
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


def test_default_kdf_cost_is_written(tmp_path):
    folder = tmp_path / "k"
    info = keys.init_keys(folder, NAME, passphrase=PASS)
    pem = folder / keys.SIGNING_KEY_FILE
    assert keys.kdf_rounds_of(pem) == keys.KDF_ROUNDS >= 1_000_000
    assert json.loads((folder / keys.INFO_FILE).read_text())["kdf"] == {
        "name": "pbkdf2-hmac-sha256", "rounds": keys.KDF_ROUNDS}
    assert keys.load_signer(folder, PASS).vkey == info.vkey


def test_kdf_rounds_parameter_and_floor(tmp_path):
    _init(tmp_path / "a", NAME, passphrase=PASS, kdf_rounds=23_456)
    assert keys.kdf_rounds_of(tmp_path / "a" / keys.SIGNING_KEY_FILE) == 23_456
    assert keys.load_signer(tmp_path / "a", PASS).name == NAME
    for bad in (2048, keys.MIN_KDF_ROUNDS - 1, 1.5e6):
        with pytest.raises(KeysError, match="kdf_rounds"):
            keys.init_keys(tmp_path / "b", NAME, passphrase=PASS, kdf_rounds=bad)
    assert not (tmp_path / "b").exists()


def test_kdf_rounds_of_reads_other_writers():
    key = Ed25519PrivateKey.generate()
    assert keys.kdf_rounds_of(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                BestAvailableEncryption(PASS.encode()))) == 2048
    assert keys.kdf_rounds_of(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())) is None
    assert keys.kdf_rounds_of(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nnot base64\n-----END") is None


@pytest.mark.parametrize("short", ["a", "x" * (keys.MIN_PASSPHRASE_CHARS - 1), b"pw-123"])
def test_short_passphrase_refused(tmp_path, monkeypatch, short):
    with pytest.raises(KeysError, match=f"at least {keys.MIN_PASSPHRASE_CHARS} characters"):
        _init(tmp_path / "k", NAME, passphrase=short)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, short.decode() if isinstance(short, bytes) else short)
    with pytest.raises(KeysError, match="too short"):
        _init(tmp_path / "k", NAME)
    assert not (tmp_path / "k").exists()
    _init(tmp_path / "k", NAME, passphrase="x" * keys.MIN_PASSPHRASE_CHARS)


def test_old_2048_round_key_still_loads(tmp_path):
    folder = tmp_path / "k"
    info = _init(folder, NAME, passphrase=PASS)
    key = keys.load_signer(folder, PASS).private_key
    old = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(PASS.encode()))
    assert keys.kdf_rounds_of(old) == 2048
    (folder / keys.SIGNING_KEY_FILE).write_bytes(old)
    meta = json.loads((folder / keys.INFO_FILE).read_text())
    del meta["kdf"]  # keys.json as older versions wrote it
    (folder / keys.INFO_FILE).write_text(json.dumps(meta))
    assert keys.load_signer(folder, PASS).vkey == info.vkey


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_openssl_decrypts_our_key(tmp_path):
    folder = tmp_path / "k"
    _init(folder, NAME, passphrase=PASS, kdf_rounds=12_345)
    out = subprocess.run(["openssl", "pkey", "-in", str(folder / keys.SIGNING_KEY_FILE), "-passin", "env:PW",
                          "-outform", "DER"], env={**os.environ, "PW": PASS}, capture_output=True, check=True).stdout
    seed = keys.load_signer(folder, PASS).private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    assert out.endswith(seed)
    asn1 = subprocess.run(["openssl", "asn1parse", "-in", str(folder / keys.SIGNING_KEY_FILE)],
                          capture_output=True, text=True, check=True).stdout
    assert "PBES2" in asn1 and "hmacWithSHA256" in asn1 and "aes-256-cbc" in asn1 and ":3039" in asn1


def test_load_verifier_never_quotes_a_file(tmp_path):
    _init(tmp_path / "k", NAME, no_passphrase=True)
    secret = (tmp_path / "k" / keys.PSEUDONYM_KEY_FILE).read_text().strip()
    with pytest.raises(KeysError) as e:
        keys.load_verifier(tmp_path / "k" / keys.PSEUDONYM_KEY_FILE)
    assert secret not in str(e.value) and secret[:16] not in str(e.value)
    assert "does not hold a verifier key" in str(e.value)
    with pytest.raises(KeysError, match="key id"):  # a mistyped key string is still explained
        keys.load_verifier("example.com+zzzzzzzz+AAAA")
