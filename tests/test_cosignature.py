"""C2SP tlog-cosignature/v1: byte-exact against sigsum-go and transparency-dev vectors, and tamper-proof."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_audit_kit.errors import KeysError, SignatureError
from rlhf_audit_kit.ledger.checkpoint import MAX_SIGNATURES, Checkpoint, Signer, open_note, verify_checkpoint
from rlhf_audit_kit.ledger.cosignature import (WitnessSigner, WitnessVerifier, cosign, cosignature_message,
                                               split_note, verify_cosignatures)

VECTORS = {c["id"]: c for c in json.loads(
    (Path(__file__).parent / "vectors" / "tlog_cosignature_public.json").read_text(encoding="utf-8"))["cases"]}
SIGSUM = VECTORS["sigsum-go-cosign"]


def _sigsum_signer() -> WitnessSigner:
    return WitnessSigner.from_seed(SIGSUM["name"], bytes.fromhex(SIGSUM["seed_hex"]))


def test_sigsum_cosignature_is_byte_exact():
    signer = _sigsum_signer()
    assert signer.key_id.hex() == SIGSUM["expected_key_id"]
    cosigned = cosign(SIGSUM["note"], signer, timestamp=SIGSUM["timestamp"])
    assert cosigned == SIGSUM["note"] + SIGSUM["expected_line"] + "\n"  # the log's line is kept, ours appended
    [c] = verify_cosignatures(cosigned, [signer.verifier])
    assert (c.name, c.key_id, c.timestamp) == (SIGSUM["name"], "cacf2e50", 1234)
    assert c.time.year == 1970


def test_sigsum_lines_by_other_keys_are_ignored():
    lines = SIGSUM["other_lines"]
    note = SIGSUM["body"] + "\n" + lines["different_key_id"] + "\n" + SIGSUM["expected_line"] + "\n" \
        + lines["different_name"] + "\n"
    [c] = verify_cosignatures(note, _sigsum_signer().verifier)
    assert c.timestamp == 1234
    assert verify_cosignatures(SIGSUM["body"] + "\n" + lines["different_name"] + "\n", _sigsum_signer().verifier) == []


def test_sigsum_cosignature_with_another_time_is_rejected():
    raw = bytearray(base64.b64decode(SIGSUM["expected_line"].split(" ")[-1]))
    raw[11] += 1  # timestamp 1235: sigsum's own "invalidating the cosignature" case
    note = SIGSUM["body"] + "\n\u2014 example.org/witness " + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(SignatureError, match="invalid cosignature by witness example.org/witness"):
        verify_cosignatures(note, _sigsum_signer().verifier)


def test_witness_vkeys_of_other_implementations():
    v = WitnessVerifier.from_vkey(VECTORS["transparency-dev-witness-vkey"]["vkey"])
    assert v.key_id.hex() == "da77ade7" and v.vkey == VECTORS["transparency-dev-witness-vkey"]["vkey"]
    with pytest.raises(KeysError, match="log signing key \\(type 0x01\\), not a witness key"):
        WitnessVerifier.from_vkey(VECTORS["transparency-dev-type-0x01-vkey"]["vkey"])
    with pytest.raises(KeysError, match="does not match its name and key"):
        WitnessVerifier.from_vkey("remora.n621.de+00000000+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")
    with pytest.raises(KeysError, match="need name\\+keyid\\+key"):
        WitnessVerifier.from_vkey("bananas.sigstore.dev+12344556")


def test_timestamps_of_published_cosignatures():
    raw = base64.b64decode(VECTORS["transparency-dev-timestamp"]["signature_b64"])
    assert int.from_bytes(raw[4:12], "big") == VECTORS["transparency-dev-timestamp"]["expected_timestamp"]
    spec = VECTORS["c2sp-spec-example"]
    text, sigs = split_note(spec["note"])
    assert Checkpoint.parse(text).size == 20852163
    [(name, raw)] = [s for s in sigs if s[0] == spec["witness"]]
    assert len(raw) == 76 and int.from_bytes(raw[4:12], "big") == spec["expected_timestamp"]


def test_message_is_the_spec_layout():
    body = SIGSUM["body"]
    assert cosignature_message(body, 1679315147) == b"cosignature/v1\ntime 1679315147\n" + body.encode()
    for bad in (-1, 2 ** 63, True, 1.5):
        with pytest.raises(ValueError, match="timestamp"):
            cosignature_message(body, bad)
    with pytest.raises(ValueError):
        cosignature_message("not a checkpoint\n", 1)


def _log_note(extensions=()) -> tuple[Signer, str]:
    log = Signer("example.com/log", Ed25519PrivateKey.generate())
    return log, log.sign(Checkpoint("example.com/log", 7, bytes(range(32)), tuple(extensions)).body())


def test_cosigned_note_still_verifies_as_the_logs_and_keys_do_not_cross():
    log, note = _log_note()
    key1 = Ed25519PrivateKey.generate()
    w1, w2 = WitnessSigner("witness.example/w1", key1), WitnessSigner("witness.example/w2", Ed25519PrivateKey.generate())
    both = cosign(cosign(note, w1, timestamp=100), w2, timestamp=200)
    assert verify_checkpoint(both, log.verifier).size == 7  # the log's signature still verifies
    assert [(c.name, c.timestamp) for c in verify_cosignatures(both, [w2.verifier, w1.verifier])] == [
        ("witness.example/w1", 100), ("witness.example/w2", 200)]
    # a witness key is not a log key: the same Ed25519 key under type 0x01 does not verify a cosignature
    as_log_key = Signer("witness.example/w1", key1).verifier
    with pytest.raises(SignatureError, match="no verifiable signatures"):
        open_note(cosign(note, w1, timestamp=1), as_log_key)
    assert verify_cosignatures(note, [WitnessVerifier("example.com/log", log.verifier.public_bytes)]) == []


def test_recosigning_replaces_the_witness_line():
    _, note = _log_note()
    w = WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate())
    again = cosign(cosign(note, w, timestamp=1), w, timestamp=2)
    assert again.count("witness.example/w1") == 1
    assert verify_cosignatures(again, w.verifier)[0].timestamp == 2


def test_extension_lines_are_covered():
    _, note = _log_note(["extension line"])
    w = WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate())
    cosigned = cosign(note, w, timestamp=5)
    with pytest.raises(SignatureError):
        verify_cosignatures(cosigned.replace("extension line", "extension lime"), w.verifier)


def test_malformed_notes_and_limits():
    w = WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate())
    for bad in ("no blank line\n", "a\n\n", "a\n\nnot a signature line\n", b"\xff\n\n"):
        with pytest.raises(SignatureError, match="malformed note"):
            cosign(bad, w, timestamp=1)
    body = Checkpoint("o", 1, bytes(32)).body()
    full = body + "\n" + "".join(f"\u2014 k{i} AQIDBAU=\n" for i in range(MAX_SIGNATURES))
    with pytest.raises(SignatureError, match="signature lines"):
        cosign(full, w, timestamp=1)
    short = cosign(body + "\n\u2014 k AQIDBAU=\n", w, timestamp=1)
    raw = base64.b64decode(short.rstrip("\n").split(" ")[-1])
    cut = short.rsplit(" ", 1)[0] + " " + base64.b64encode(raw[:40]).decode() + "\n"
    with pytest.raises(SignatureError, match="malformed cosignature .* 40 bytes"):
        verify_cosignatures(cut, w.verifier)


_W = WitnessSigner.from_seed("witness.example/w1", bytes(range(32)))
_NOTE = cosign(Signer("example.com/log", Ed25519PrivateKey.from_private_bytes(bytes(32))).sign(
    Checkpoint("example.com/log", 12345, bytes(range(32))).body()), _W, timestamp=1_700_000_000)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_tampered_byte_is_never_a_valid_cosignature(data):
    """Any byte of the checkpoint body or of the cosignature line (the log's own line is not signed by the witness)."""
    raw = bytearray(_NOTE.encode("utf-8"))
    body_end, line_start = _NOTE.index("\n\n") + 1, len(_NOTE.rsplit("\u2014", 1)[0].encode("utf-8"))
    i = data.draw(st.one_of(st.integers(0, body_end - 1), st.integers(line_start, len(raw) - 1)), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    raw[i] ^= flip
    try:
        got = verify_cosignatures(bytes(raw), _W.verifier)
    except SignatureError:
        return  # rejected
    assert got == []  # or the line no longer names this witness's key: it does not count


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2 ** 63 - 1).filter(lambda t: t != 1_700_000_000))
def test_a_cosignature_under_another_time_is_rejected(t):
    text, sigs = split_note(_NOTE)
    name, raw = sigs[-1]
    moved = raw[:4] + t.to_bytes(8, "big") + raw[12:]
    note = _NOTE.rsplit("\u2014 ", 1)[0] + f"\u2014 {name} " + base64.b64encode(moved).decode() + "\n"
    with pytest.raises(SignatureError, match="invalid cosignature"):
        verify_cosignatures(note, _W.verifier)
