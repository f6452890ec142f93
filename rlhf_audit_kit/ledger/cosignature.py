"""C2SP tlog-cosignature/v1 with Ed25519: a witness's timestamped signature on a checkpoint.

Spec: https://c2sp.org/tlog-cosignature (v1.0.0). Byte-compatible with transparency-dev/formats
(``note.NewSignerForCosignatureV1``) and sigsum-go (``checkpoint.Cosign``); the vectors in
``tests/vectors/tlog_cosignature_public.json`` come from those projects.

A cosignature is one more signature line on a checkpoint note::

    — <witness name> base64(key ID (4) || timestamp (8, big-endian) || Ed25519 signature (64))

* key ID = ``SHA-256(name || 0x0A || 0x04 || public key)[:4]`` (type 0x04, not the 0x01 of a log
  signature, so a cosignature never verifies as a log signature and vice versa);
* signed message = ``"cosignature/v1\\ntime <timestamp>\\n"`` followed by the checkpoint body;
* witness verifier key (vkey) = ``name+<hex key ID>+base64(0x04 || public key)``.

The witness name is not part of the signed message, so one key must serve one witness name only.
Cosigning keeps every signature already on the note; verifying ignores lines by unknown keys.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from rlhf_audit_kit.ledger.checkpoint import Checkpoint, Signer
>>> log = Signer("example.com/log", Ed25519PrivateKey.generate())
>>> note = log.sign(Checkpoint("example.com/log", 3, bytes(32)).body())
>>> w = WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate())
>>> cosigned = cosign(note, w, timestamp=1700000000)
>>> [(c.name, c.timestamp) for c in verify_cosignatures(cosigned, [w.verifier])]
[('witness.example/w1', 1700000000)]
"""
from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import KeysError, SignatureError
from .checkpoint import (ALG_ED25519, MAX_SIGNATURES, SIG_PREFIX, Checkpoint, Signer, Verifier, _b64, _b64decode,
                         _check_text, split_vkey, validate_key_name)

__all__ = ["ALG_COSIGNATURE_V1", "Cosignature", "WitnessSigner", "WitnessVerifier", "cosign",
           "cosignature_key_id", "cosignature_message", "cosignature_vkey", "split_note",
           "verify_cosignatures"]

ALG_COSIGNATURE_V1 = 0x04
MAX_TIMESTAMP = 2 ** 63 - 1
_PAYLOAD_BYTES = 4 + 8 + 64


def cosignature_key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID of a cosignature key: SHA-256(name || 0x0A || 0x04 || public key)[:4].

    >>> import base64
    >>> pub = base64.b64decode("BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")[1:]
    >>> cosignature_key_id("remora.n621.de", pub).hex()
    'da77ade7'
    """
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public_key).digest()[:4]


def cosignature_vkey(name: str, public_key: bytes) -> str:
    """The witness verifier key string ``name+hexkeyid+base64(0x04 || public key)``.

    >>> import base64
    >>> pub = base64.b64decode("BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")[1:]
    >>> cosignature_vkey("remora.n621.de", pub)
    'remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2'
    """
    validate_key_name(name)
    if len(public_key) != 32:
        raise KeysError("an Ed25519 public key has 32 bytes")
    return f"{name}+{cosignature_key_id(name, public_key).hex()}+{_b64(bytes([ALG_COSIGNATURE_V1]) + public_key)}"


def _check_timestamp(timestamp: int) -> int:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"a cosignature timestamp is an integer in 0..2**63-1 (POSIX seconds), got {timestamp!r}")
    return timestamp


def cosignature_message(body: str, timestamp: int) -> bytes:
    """The bytes a witness signs: ``cosignature/v1``, ``time <timestamp>``, then the checkpoint body.

    ``body`` must be a valid C2SP checkpoint body (ValueError otherwise).

    >>> cosignature_message("o\\n0\\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\\n", 5)[:23]
    b'cosignature/v1\\ntime 5\\no'
    """
    Checkpoint.parse(body)
    return f"cosignature/v1\ntime {_check_timestamp(timestamp)}\n{body}".encode("utf-8")


def split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """A signed note's text and its signature lines as ``(key name, decoded bytes)``, in order.

    The text ends before the last blank line (as ``open_note``); SignatureError if malformed.

    >>> text, sigs = split_note("hello\\n\\n\\u2014 k AQIDBAU=\\n")
    >>> text, sigs
    ('hello\\n', [('k', b'\\x01\\x02\\x03\\x04\\x05')])
    """
    if isinstance(note, (bytes, bytearray)):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("malformed note: not valid UTF-8") from None
    if not isinstance(note, str):
        raise SignatureError("malformed note: must be str or bytes")
    try:
        _check_text(note, "note")
    except ValueError as e:
        raise SignatureError(f"malformed note: {e}") from None
    split = note.rfind("\n\n")
    if split < 0 or split + 2 == len(note):
        raise SignatureError("malformed note: no signature lines after a blank line")
    lines = note[split + 2:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise SignatureError(f"malformed note: more than {MAX_SIGNATURES} signature lines")
    out = []
    for line in lines:
        name, _, b64 = line.removeprefix(SIG_PREFIX).partition(" ")
        try:
            if not line.startswith(SIG_PREFIX):
                raise ValueError
            validate_key_name(name)
            raw = _b64decode(b64)
        except (KeysError, ValueError):
            raise SignatureError(f"malformed note: bad signature line {line[:120]!r}") from None
        if len(raw) < 5:
            raise SignatureError(f"malformed note: signature too short in {line[:120]!r}")
        out.append((name, raw))
    return note[:split + 1], out


# --- keys -------------------------------------------------------------------------------------

class WitnessVerifier:
    """A witness's public key for cosignature/v1: name, key ID (type 0x04) and Ed25519 key.

    >>> v = WitnessVerifier.from_vkey("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")
    >>> v.name, v.key_id.hex()
    ('remora.n621.de', 'da77ade7')
    """

    def __init__(self, name: str, public_key: Ed25519PublicKey | bytes):
        base = Verifier(name, public_key)  # checks the name and the 32-byte key as for a log key
        self.name, self.public_key, self.public_bytes = name, base.public_key, base.public_bytes
        self.key_id = cosignature_key_id(name, self.public_bytes)
        self.vkey = cosignature_vkey(name, self.public_bytes)

    @classmethod
    def from_vkey(cls, vkey: str) -> WitnessVerifier:
        """Parse ``name+hexkeyid+base64(0x04 || pub)``; KeysError if malformed or another key type."""
        name, hex_id, raw = split_vkey(vkey.strip() if isinstance(vkey, str) else vkey, "witness key")
        if len(raw) == 33 and raw[0] == ALG_ED25519:
            raise KeysError(f"{name}+{hex_id} is a log signing key (type 0x01), not a witness key: a witness "
                            "key has type 0x04 (see `rlhf-audit keys init DIR --name NAME --witness`)")
        if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
            raise KeysError("witness key is not an Ed25519 cosignature/v1 key (type 0x04 + 32 bytes)")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != hex_id:
            raise KeysError(f"witness key id {hex_id} does not match its name and key "
                            f"(expected {verifier.key_id.hex()})")
        return verifier

    def verify(self, body: str, timestamp: int, signature: bytes) -> bool:
        """True if ``signature`` is this key's cosignature of checkpoint ``body`` at ``timestamp``."""
        try:
            self.public_key.verify(bytes(signature), cosignature_message(body, timestamp))
            return True
        except (InvalidSignature, ValueError, TypeError):
            return False

    def __eq__(self, other):
        return isinstance(other, WitnessVerifier) and other.vkey == self.vkey

    def __hash__(self):
        return hash(self.vkey)

    def __repr__(self):
        return f"WitnessVerifier({self.vkey!r})"


class WitnessSigner:
    """A witness's Ed25519 private key, used for cosignature/v1 only.

    >>> s = WitnessSigner.from_seed("example.org/witness", bytes([17]) + bytes(31))
    >>> s.vkey
    'example.org/witness+cacf2e50+BGbguFjkYqYJ5m/nE3DIFtiEb/ED1UmaIqf+w3/bxCSn'
    """

    def __init__(self, name: str, private_key: Ed25519PrivateKey):
        if not isinstance(private_key, Ed25519PrivateKey):
            raise KeysError("a witness key is an Ed25519 private key")
        self._key = private_key
        self.verifier = WitnessVerifier(name, private_key.public_key())
        self.name, self.key_id, self.vkey = name, self.verifier.key_id, self.verifier.vkey

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> WitnessSigner:
        """A signer from a 32-byte Ed25519 seed."""
        return cls(name, Signer.from_seed(name, seed).private_key)

    def sign(self, body: str, timestamp: int) -> bytes:
        """The 76-byte signature-line payload: key ID || timestamp (big-endian) || Ed25519 signature."""
        sig = self._key.sign(cosignature_message(body, timestamp))
        return self.key_id + timestamp.to_bytes(8, "big") + sig

    def __repr__(self):
        return f"WitnessSigner({self.vkey!r})"


# --- notes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: the witness's ``name``, hex ``key_id``, ``timestamp`` and ``vkey``."""

    name: str
    key_id: str
    timestamp: int
    vkey: str

    @property
    def time(self) -> dt.datetime:
        """The cosignature's time as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.timestamp, dt.timezone.utc)


def cosign(note: str, signer: WitnessSigner, timestamp: int | None = None) -> str:
    """``note`` with ``signer``'s cosignature line appended (now, or at ``timestamp`` POSIX seconds).

    Signatures already on the note stay, except an earlier cosignature by the same key, which is
    replaced. The note's signatures are not checked here: a witness checks them first (see
    :class:`rlhf_audit_kit.ledger.witness.Witness`). ValueError if the text is not a checkpoint.
    """
    if isinstance(note, (bytes, bytearray)):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("malformed note: not valid UTF-8") from None
    text, sigs = split_note(note)
    ts = int(time.time()) if timestamp is None else _check_timestamp(timestamp)
    payload = signer.sign(text, ts)
    lines = note[len(text) + 1:-1].split("\n")
    kept = [line for line, (name, raw) in zip(lines, sigs) if (name, raw[:4]) != (signer.name, signer.key_id)]
    if len(kept) + 1 > MAX_SIGNATURES:
        raise SignatureError(f"the note already has {len(kept)} signature lines; at most {MAX_SIGNATURES} allowed")
    return text + "\n" + "".join(line + "\n" for line in kept) + f"{SIG_PREFIX}{signer.name} {_b64(payload)}\n"


def verify_cosignatures(note: str | bytes, witnesses: WitnessVerifier | Iterable[WitnessVerifier]
                        ) -> list[Cosignature]:
    """The cosignatures on ``note`` by the given witness keys that verify, one per key, in note order.

    Lines by other keys (the log's own signature, unknown witnesses) are ignored. A line by a
    given witness key that does not verify raises :class:`SignatureError` (someone altered the
    note or the line), as :func:`~rlhf_audit_kit.ledger.checkpoint.open_note` does for log keys.
    The log's signature is not checked here.
    """
    if isinstance(witnesses, WitnessVerifier):
        witnesses = [witnesses]
    known = {(w.name, w.key_id): w for w in witnesses}
    text, sigs = split_note(note)
    out: dict[str, Cosignature] = {}
    for name, raw in sigs:
        w = known.get((name, raw[:4]))
        if w is None:
            continue
        if len(raw) != _PAYLOAD_BYTES:
            raise SignatureError(f"malformed cosignature by witness {name}+{w.key_id.hex()}: "
                                 f"{len(raw)} bytes, need {_PAYLOAD_BYTES}")
        ts = int.from_bytes(raw[4:12], "big")
        if ts > MAX_TIMESTAMP or not w.verify(text, ts, raw[12:]):
            raise SignatureError(f"invalid cosignature by witness {name}+{w.key_id.hex()} (time {ts})")
        out.setdefault(w.vkey, Cosignature(name, w.key_id.hex(), ts, w.vkey))
    return list(out.values())
