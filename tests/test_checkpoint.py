"""C2SP signed notes and tlog-checkpoints: public vectors, tampering, strict parsing."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_audit_kit.errors import KeysError, SignatureError
from rlhf_audit_kit.ledger import merkle
from rlhf_audit_kit.ledger.checkpoint import (
    Checkpoint, Signer, Verifier, key_id, open_note, sign_checkpoint, verify_checkpoint,
    vkey_string)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "signed_note_public.json").read_text())
CASES = VECTORS["cases"]
SIGNING = [c for c in CASES if "sign" in c]
SIGNER = Signer.from_seed("example.com/test-log", bytes(range(32)))


def _note(case) -> str | bytes:
    return bytes.fromhex(case["note_hex"]) if "note_hex" in case else case["note"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_vector_cases(case):
    verifiers = [Verifier.from_vkey(k) for k in case["verifier_keys"]]
    if case["expect_verified"]:
        text, names = open_note(_note(case), verifiers)
        assert case["note"].startswith(text)
        known = {v.name for v in verifiers}
        assert names and set(names) <= known
        sig_lines = case["note"][len(text) + 1:].splitlines()
        assert set(names) == {line.split(" ")[1] for line in sig_lines} & known
    else:
        with pytest.raises(SignatureError):
            open_note(_note(case), verifiers)


def test_vector_detail_one_of_two_known():
    case = next(c for c in CASES if c["id"] == "go-sumdb-note-open-two-sigs-one-known")
    _, names = open_note(case["note"], [Verifier.from_vkey(k) for k in case["verifier_keys"]])
    assert names == ["PeterNeumann"]
    both = next(c for c in CASES if c["id"] == "go-sumdb-note-open-two-sigs-both-known")
    _, names = open_note(both["note"], [Verifier.from_vkey(k) for k in both["verifier_keys"]])
    assert names == ["PeterNeumann", "EnochRoot"]


@pytest.mark.parametrize("case", SIGNING, ids=lambda c: c["id"])
def test_signing_reproduced_byte_for_byte(case):
    s = case["sign"]
    from_seed = Signer.from_seed(s["name"], bytes.fromhex(s["seed_hex"]))
    from_go = Signer.from_go_skey(s["go_skey"])
    for signer in (from_seed, from_go):
        assert signer.vkey == s["expected_vkey"]
        assert signer.sign(s["text"]) == s["expected_note"]  # Ed25519 is deterministic
    assert vkey_string(s["name"], from_seed.verifier.public_bytes) == s["expected_vkey"]


def test_real_sum_golang_org_checkpoint():
    case = next(c for c in CASES if c["id"] == "real-sum.golang.org-checkpoint-2024-09-23")
    cp = verify_checkpoint(case["note"], Verifier.from_vkey(case["verifier_keys"][0]))
    assert (cp.origin, cp.size) == ("go.sum database tree", 30055305)
    assert base64.b64encode(cp.root_hash).decode() == "mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM="
    with pytest.raises(SignatureError):
        verify_checkpoint(case["note"], Verifier.from_vkey(case["verifier_keys"][0]),
                          origin="example.com/other")


# --- vkeys ------------------------------------------------------------------------------------

GOOD_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"


@pytest.mark.parametrize("bad", [
    "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   # wrong key id
    "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   # uppercase id
    "PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",     # short id
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
    "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",               # empty name
    "PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   # algorithm 0x02
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",    # bad base64
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy",       # short key
    "PeterNeumann+c74f20a3",
    "",
])
def test_bad_vkeys_rejected(bad):
    with pytest.raises(KeysError):
        Verifier.from_vkey(bad)


def test_vkey_round_trip_and_key_id():
    v = Verifier.from_vkey(GOOD_VKEY)
    assert v.vkey == GOOD_VKEY and v.key_id.hex() == "c74f20a3"
    assert key_id("PeterNeumann", v.public_bytes) == v.key_id
    assert Verifier.from_vkey(SIGNER.vkey) == SIGNER.verifier
    with pytest.raises(KeysError):
        Signer.from_go_skey("PRIVATE+KEY+PeterNeumann+c74f20a4+"
                            "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
    with pytest.raises(KeysError):
        Signer("bad+name", Ed25519PrivateKey.generate())


def test_signer_repr_hides_secret():
    seed = bytes(range(32))
    r = repr(SIGNER)
    assert seed.hex() not in r and base64.b64encode(seed).decode() not in r


# --- notes ------------------------------------------------------------------------------------

def test_sign_rejects_bad_text():
    for text in ["no newline", "ctrl \x07 char\n", "tab\there\n", "\ud800\n"]:
        with pytest.raises(ValueError):
            SIGNER.sign(text)


def test_unknown_and_wrong_keys():
    note = SIGNER.sign("hello\n")
    other = Signer.from_seed("example.com/test-log", bytes(32))  # same name, other key
    with pytest.raises(SignatureError):
        open_note(note, [other.verifier])
    with pytest.raises(SignatureError):
        open_note(note, [])
    # a second, unknown signature is ignored; a second known one is checked
    cosigned = note + other.sign("hello\n").split("\n\n", 1)[1]
    assert open_note(cosigned, [SIGNER.verifier]) == ("hello\n", [SIGNER.name])
    assert open_note(cosigned, [SIGNER.verifier, other.verifier])[1] == [SIGNER.name, other.name]


def test_text_with_blank_lines_splits_at_last():
    text = "para one\n\npara two\n"
    assert open_note(SIGNER.sign(text), SIGNER.verifier)[0] == text


def test_signature_line_limit():
    unknown = Signer.from_seed("someone-else", bytes([7]) * 32)
    sig_line = unknown.sign("x\n").split("\n\n", 1)[1]
    note = SIGNER.sign("x\n")
    assert open_note(note + sig_line * 99, SIGNER.verifier)[1] == [SIGNER.name]  # 100 lines
    with pytest.raises(SignatureError, match="more than 100"):
        open_note(note + sig_line * 100, SIGNER.verifier)


TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.just("\n"),
               max_size=80).map(lambda s: s + "\n")


@settings(max_examples=150, deadline=None)
@given(TEXT, st.data())
def test_tampering_any_byte_fails(text, data):
    note = SIGNER.sign(text).encode("utf-8")
    assert open_note(note, SIGNER.verifier)[0] == text
    i = data.draw(st.integers(0, len(note) - 1))
    delta = data.draw(st.integers(1, 255))
    tampered = note[:i] + bytes([note[i] ^ delta]) + note[i + 1:]
    with pytest.raises(SignatureError):
        open_note(tampered, SIGNER.verifier)


@settings(max_examples=50, deadline=None)
@given(TEXT, st.integers(0, 63))
def test_tampering_signature_bits_fails(text, bit):
    note = SIGNER.sign(text)
    head, line = note.rsplit("\n\u2014 ", 1)
    name, b64 = line.rstrip("\n").split(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[4 + bit] ^= 1 << (bit % 8)
    bad = f"{head}\n\u2014 {name} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(SignatureError):
        open_note(bad, SIGNER.verifier)


# --- checkpoints ------------------------------------------------------------------------------

ORIGIN = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
EXTENSION = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(ORIGIN, st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32),
       st.lists(EXTENSION, max_size=3))
def test_checkpoint_round_trip(origin, size, root_hash, extensions):
    cp = Checkpoint(origin, size, root_hash, tuple(extensions))
    body = cp.body()
    assert Checkpoint.parse(body) == cp
    assert Checkpoint.parse(body).body() == body
    assert verify_checkpoint(sign_checkpoint(cp, SIGNER), SIGNER.verifier) == cp


ROOT_B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize("body", [
    f"o\n01\n{ROOT_B64}\n",            # leading zero
    f"o\n+1\n{ROOT_B64}\n",
    f"o\n 1\n{ROOT_B64}\n",
    f"o\n1_0\n{ROOT_B64}\n",
    f"o\n\u0661\n{ROOT_B64}\n",        # Arabic-Indic digit: int() would accept it
    f"o\n-1\n{ROOT_B64}\n",
    f"o\n18446744073709551616\n{ROOT_B64}\n",  # 2**64
    f"\n1\n{ROOT_B64}\n",              # empty origin
    f"o\n1\n{ROOT_B64}",               # no final newline
    f"o\n1\n{ROOT_B64}\n\n",           # empty extension line
    f"o\n1\n{ROOT_B64}\next\n\n",
    f"o\n1\n{base64.b64encode(bytes(31)).decode()}\n",  # 31-byte root
    f"o\n1\n{ROOT_B64[:-2]}B=\n",      # non-canonical base64 (trailing bits)
    f"o\n1\n{ROOT_B64.rstrip('=')}\n",  # missing padding
    "o\n1\n",
    f"o\t\n1\n{ROOT_B64}\n",           # control character
])
def test_checkpoint_parse_strict(body):
    with pytest.raises(ValueError):
        Checkpoint.parse(body)


def test_checkpoint_constructor_validates():
    with pytest.raises(ValueError):
        Checkpoint("", 1, bytes(32))
    with pytest.raises(ValueError):
        Checkpoint("o", -1, bytes(32))
    with pytest.raises(ValueError):
        Checkpoint("o", 1, bytes(31))
    with pytest.raises(ValueError):
        Checkpoint("o", 1, bytes(32), ("",))
    with pytest.raises(ValueError):
        Checkpoint("o\nx", 1, bytes(32))


def test_checkpoint_of_real_tree_and_html():
    entries = [b"a", b"b", b"c"]
    cp = Checkpoint("example.com/log", 3, merkle.root(entries), ("ext <b>",))
    note = sign_checkpoint(cp, SIGNER)
    assert verify_checkpoint(note, [SIGNER.verifier], origin="example.com/log") == cp
    html = cp._repr_html_()
    assert merkle.root(entries).hex() in html and "&lt;b&gt;" in html


def test_signed_non_checkpoint_is_rejected():
    with pytest.raises(SignatureError, match="not a valid checkpoint"):
        verify_checkpoint(SIGNER.sign("just text\n"), SIGNER.verifier)
