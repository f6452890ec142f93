"""C2SP tlog-checkpoint bodies and C2SP signed notes with Ed25519.

Specs: https://c2sp.org/tlog-checkpoint and https://c2sp.org/signed-note; behaviour matches
golang.org/x/mod/sumdb/note (the reference implementation), so a checkpoint signed here verifies
with Go tooling and vice versa.

A note is ``text`` (UTF-8, ends with a newline, no control characters but newline), a blank line,
then one or more lines ``"— <key name> <base64(4-byte key id || signature)>"``. The Ed25519 key id
is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; the verifier key string (vkey) is
``name+<8 hex key id>+base64(0x01 || public key)``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import html
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import KeysError, SignatureError

__all__ = ["Checkpoint", "Signer", "Verifier", "key_id", "vkey_string", "open_note",
           "verify_checkpoint", "sign_checkpoint", "validate_key_name", "split_vkey", "MAX_SIGNATURES",
           "key_name_warning"]

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash + space
MAX_SIGNATURES = 100  # as Go's note.Open; C2SP requires accepting at least 16
_SIZE_RE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_HEX_ID_RE = re.compile(r"[0-9a-f]{8}", re.ASCII)


def _b64decode(s: str) -> bytes:
    """Strict standard base64 (padding required, no stray characters); ValueError otherwise."""
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise ValueError(f"invalid base64: {e}") from None
    if base64.b64encode(raw).decode("ascii") != s:  # reject non-canonical trailing bits
        raise ValueError("non-canonical base64")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _check_text(text: str, what: str = "note text") -> None:
    """C2SP note text: ends with a newline, no control characters other than newline."""
    if not text.endswith("\n"):
        raise ValueError(f"{what} must end with a newline")
    bad = next((c for c in text if (c < " " and c != "\n") or c == "\x7f"), None)
    if bad is not None:
        raise ValueError(f"{what} contains control character {bad!r}")
    # Lone surrogates cannot be UTF-8 encoded; the signed bytes would be undefined.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None


def validate_key_name(name: str) -> None:
    """Raise KeysError unless ``name`` is a valid key name: non-empty, no '+', no whitespace.

    >>> validate_key_name("example.com/log")
    """
    if (not isinstance(name, str) or not name or "+" in name
            or any(c.isspace() for c in name) or any(c < " " for c in name)):
        raise KeysError(f"invalid key name {name!r}: need non-empty, no '+', no whitespace")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise KeysError(f"invalid key name {name!r}: not valid Unicode") from None


def origin_problem(origin: object, *, strict: bool = True) -> str | None:
    """Why ``origin`` cannot be a log's checkpoint origin, or None. It MUST be one non-empty printable
    line (a checkpoint's first line), and SHOULD (C2SP tlog-checkpoint) hold no space and no '+' (the
    signing key is named after it, and a key name may hold neither); ``strict=False`` checks only the MUST.

    >>> origin_problem("example.org/lab/rlhf") is None, origin_problem("a b", strict=False) is None
    (True, True)
    >>> origin_problem("a b")
    "'a b' is not an origin: one line without spaces or '+', e.g. example.org/my-lab/rlhf (C2SP tlog-checkpoint)"
    """
    if isinstance(origin, str) and origin and origin.isprintable() and (
            not strict or not any(c.isspace() or c == "+" for c in origin)):
        return None
    what = "one line without spaces or '+'" if strict else "one non-empty line of printable characters"
    return f"{origin!r} is not an origin: {what}, e.g. example.org/my-lab/rlhf (C2SP tlog-checkpoint)"


def key_name_warning(key_name: str, origin: str) -> str | None:
    """Why a log's key name is unusual, or None: C2SP tlog-checkpoint says it SHOULD equal the origin.

    >>> key_name_warning("example.com/log", "example.com/log") is None
    True
    >>> key_name_warning("my-lab", "example.com/log")[:40]
    "signing key name 'my-lab' is not the che"
    """
    if key_name == origin:
        return None
    return (f"signing key name {key_name!r} is not the checkpoint origin {origin!r} (C2SP tlog-checkpoint: "
            "a log's key name SHOULD match its origin; name a new key after it with "
            "`rlhf-audit keys init DIR --store STORE`)")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte Ed25519 key id: SHA-256(name || 0x0A || 0x01 || public key)[:4].

    >>> pub = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
    >>> key_id("PeterNeumann", pub).hex()
    'c74f20a3'
    """
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key
                          ).digest()[:4]


def vkey_string(name: str, public_key: bytes) -> str:
    """The verifier key string ``name+hexkeyid+base64(0x01 || public key)``.

    >>> pub = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
    >>> vkey_string("PeterNeumann", pub)
    'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW'
    """
    validate_key_name(name)
    if len(public_key) != 32:
        raise KeysError("an Ed25519 public key has 32 bytes")
    return f"{name}+{key_id(name, public_key).hex()}+{_b64(bytes([ALG_ED25519]) + public_key)}"


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- checkpoint body --------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint body: origin, tree size, root hash and optional extension lines.

    >>> cp = Checkpoint("example.com/log", 2, bytes(32))
    >>> Checkpoint.parse(cp.body()) == cp
    True
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin:
            raise ValueError("checkpoint origin must be a non-empty single line")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not (
                0 <= self.size < 2 ** 64):
            raise ValueError(f"checkpoint size must be an integer in 0..2**64-1, got {self.size!r}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise ValueError("checkpoint root hash must be 32 bytes")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for ext in self.extensions:
            if not isinstance(ext, str) or not ext or "\n" in ext:
                raise ValueError(f"checkpoint extension lines must be non-empty lines, got {ext!r}")
        _check_text(self.body(), "checkpoint body")

    def body(self) -> str:
        """The note text: ``origin\\nsize\\nbase64(root)\\n`` followed by extension lines.

        >>> Checkpoint("o", 0, bytes(32)).body()
        'o\\n0\\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\\n'
        """
        lines = [self.origin, str(self.size), _b64(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body strictly; ValueError on any deviation from the spec.

        >>> Checkpoint.parse("o\\n01\\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\\n")
        Traceback (most recent call last):
        ValueError: checkpoint size must be decimal without leading zeros, got '01'
        """
        if not isinstance(text, str):
            raise ValueError("checkpoint body must be str")
        _check_text(text, "checkpoint body")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise ValueError("checkpoint body needs origin, size and root hash lines")
        origin, size, root_b64, *extensions = lines
        if not origin:
            raise ValueError("checkpoint origin is empty")
        if not _SIZE_RE.fullmatch(size):
            raise ValueError(f"checkpoint size must be decimal without leading zeros, got {size!r}")
        root_hash = _b64decode(root_b64)
        if len(root_hash) != 32:
            raise ValueError(f"checkpoint root hash has {len(root_hash)} bytes, need 32")
        if any(not ext for ext in extensions):
            raise ValueError("checkpoint has an empty extension line")
        return cls(origin, int(size), root_hash, tuple(extensions))

    def _repr_html_(self) -> str:
        rows = [("origin", self.origin), ("size", f"{self.size:,}"),
                ("root", self.root_hash.hex())] + [("extension", e) for e in self.extensions]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th>"
                       f"<td><code>{html.escape(v)}</code></td></tr>" for k, v in rows)
        return f"<table><caption>Checkpoint</caption>{body}</table>"


# --- keys -------------------------------------------------------------------------------------

def split_vkey(vkey: str, what: str = "verifier key") -> tuple[str, str, bytes]:
    """``(name, hex key id, decoded key bytes)`` of a ``name+hexkeyid+base64`` key string; KeysError
    if malformed. The key type byte and the key id are left to the caller to check.

    >>> split_vkey("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[2][0]
    1
    """
    if not isinstance(vkey, str):
        raise KeysError(f"a {what} must be a str")
    parts = vkey.split("+", 2)  # the name has no '+', base64 may
    if len(parts) != 3:
        raise KeysError(f"malformed {what} {vkey!r}: need name+keyid+key")
    name, hex_id, key_b64 = parts
    validate_key_name(name)
    if not _HEX_ID_RE.fullmatch(hex_id):
        raise KeysError(f"malformed {what}: key id {hex_id!r} is not 8 lowercase hex")
    try:
        return name, hex_id, _b64decode(key_b64)
    except ValueError as e:
        raise KeysError(f"malformed {what}: {e}") from None


class Verifier:
    """An Ed25519 note verifier: key name, 4-byte key id and public key.

    >>> v = Verifier.from_vkey("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    >>> v.name, v.key_id.hex()
    ('PeterNeumann', 'c74f20a3')
    """

    def __init__(self, name: str, public_key: Ed25519PublicKey | bytes):
        validate_key_name(name)
        if isinstance(public_key, (bytes, bytearray)):
            if len(public_key) != 32:
                raise KeysError("an Ed25519 public key has 32 bytes")
            public_key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
        self.name = name
        self.public_key = public_key
        self.public_bytes = _raw_public(public_key)
        self.key_id = key_id(name, self.public_bytes)
        self.vkey = vkey_string(name, self.public_bytes)

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse and validate ``name+hexkeyid+base64(0x01 || pub)``; KeysError if malformed."""
        name, hex_id, raw = split_vkey(vkey)
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeysError("verifier key is not an Ed25519 key (algorithm 0x01 + 32 bytes)")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != hex_id:
            raise KeysError(f"verifier key id {hex_id} does not match its name and key "
                            f"(expected {verifier.key_id.hex()})")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            self.public_key.verify(signature, message)
            return True
        except InvalidSignature:
            return False

    def __eq__(self, other):
        return isinstance(other, Verifier) and other.vkey == self.vkey

    def __hash__(self):
        return hash(self.vkey)

    def __repr__(self):
        return f"Verifier({self.vkey!r})"


class Signer:
    """An Ed25519 note signer. The private key never appears in ``repr``.

    >>> s = Signer("example.com/log", Ed25519PrivateKey.generate())
    >>> open_note(s.sign("hello\\n"), [s.verifier])
    ('hello\\n', ['example.com/log'])
    """

    def __init__(self, name: str, private_key: Ed25519PrivateKey):
        validate_key_name(name)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise KeysError("a Signer needs an Ed25519 private key")
        self.name = name
        self._key = private_key
        self.verifier = Verifier(name, private_key.public_key())
        self.key_id = self.verifier.key_id
        self.vkey = self.verifier.vkey

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The private key object (for re-encrypting it; never log it)."""
        return self._key

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> Signer:
        """Signer from a 32-byte Ed25519 seed (RFC 8032 private key)."""
        if len(seed) != 32:
            raise KeysError("an Ed25519 seed has 32 bytes")
        return cls(name, Ed25519PrivateKey.from_private_bytes(bytes(seed)))

    @classmethod
    def from_go_skey(cls, skey: str) -> Signer:
        """Signer from a Go ``note.GenerateKey`` key: ``PRIVATE+KEY+name+hexid+base64(0x01||seed)``.

        >>> s = Signer.from_go_skey("PRIVATE+KEY+PeterNeumann+c74f20a3+"
        ...                         "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
        >>> s.vkey
        'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW'
        """
        prefix = "PRIVATE+KEY+"
        if not isinstance(skey, str) or not skey.startswith(prefix):
            raise KeysError("malformed signer key: missing PRIVATE+KEY+ prefix")
        parts = skey[len(prefix):].split("+", 2)
        if len(parts) != 3:
            raise KeysError("malformed signer key: need name+keyid+key")
        name, hex_id, key_b64 = parts
        try:
            raw = _b64decode(key_b64)
        except ValueError as e:
            raise KeysError(f"malformed signer key: {e}") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeysError("signer key is not an Ed25519 key (algorithm 0x01 + 32-byte seed)")
        signer = cls.from_seed(name, raw[1:])
        if signer.key_id.hex() != hex_id:
            raise KeysError("signer key id does not match its name and key")
        return signer

    def sign(self, text: str) -> str:
        """Sign ``text`` and return the note ``text + "\\n" + "— name base64(keyid||sig)\\n"``."""
        _check_text(text)
        sig = self._key.sign(text.encode("utf-8"))
        return f"{text}\n{SIG_PREFIX}{self.name} {_b64(self.key_id + sig)}\n"

    def __repr__(self):
        return f"Signer({self.vkey!r})"


# --- notes ------------------------------------------------------------------------------------

def open_note(note: str | bytes, verifiers: Verifier | Iterable[Verifier]
              ) -> tuple[str, list[str]]:
    """Verify a signed note; return ``(text, names of keys whose signatures verified)``.

    Follows Go's ``note.Open``: signatures by unknown (name, key id) pairs are ignored; a known
    key's bad signature rejects the note; at least one known key must verify; more than
    ``MAX_SIGNATURES`` signature lines is malformed. Raises :class:`SignatureError` otherwise.
    """
    if isinstance(note, (bytes, bytearray)):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("malformed note: not valid UTF-8") from None
    if not isinstance(note, str):
        raise SignatureError("malformed note: must be str or bytes")
    if isinstance(verifiers, Verifier):
        verifiers = [verifiers]
    known = {(v.name, v.key_id): v for v in verifiers}
    split = note.rfind("\n\n")
    if split < 0:
        raise SignatureError("malformed note: no blank line before the signatures")
    text, sigs = note[:split + 1], note[split + 2:]
    try:
        _check_text(note, "note")
    except ValueError as e:
        raise SignatureError(f"malformed note: {e}") from None
    if not sigs:
        raise SignatureError("malformed note: no signature lines")
    message = text.encode("utf-8")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise SignatureError(f"malformed note: more than {MAX_SIGNATURES} signature lines")
    verified: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise SignatureError(f"malformed note: bad signature line {line!r}")
        name, _, b64 = line[len(SIG_PREFIX):].partition(" ")
        try:
            validate_key_name(name)
            raw = _b64decode(b64)
        except (KeysError, ValueError):
            raise SignatureError(f"malformed note: bad signature line {line!r}") from None
        if len(raw) < 5:
            raise SignatureError(f"malformed note: signature too short in {line!r}")
        kid, sig = raw[:4], raw[4:]
        verifier = known.get((name, kid))
        if verifier is None or (name, kid) in seen:
            continue  # unknown signer, or a repeated signature by one key
        seen.add((name, kid))
        if not verifier.verify(message, sig):
            raise SignatureError(f"invalid signature for key {verifier.vkey.rsplit('+', 1)[0]}")
        verified.append(name)
    if not verified:
        raise SignatureError("note has no verifiable signatures by the given keys")
    return text, verified


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    """The signed note of ``checkpoint``.

    >>> s = Signer("log", Ed25519PrivateKey.generate())
    >>> verify_checkpoint(sign_checkpoint(Checkpoint("log", 0, bytes(32)), s), s.verifier).size
    0
    """
    return signer.sign(checkpoint.body())


def verify_checkpoint(note: str | bytes, verifier: Verifier | Iterable[Verifier], *,
                      origin: str | None = None) -> Checkpoint:
    """Open a signed checkpoint note and parse its body; SignatureError if it does not verify.

    ``origin``, if given, must equal the checkpoint's origin line (a note signed by the right key
    for another log is otherwise valid).
    """
    text, _ = open_note(note, verifier)
    try:
        checkpoint = Checkpoint.parse(text)
    except ValueError as e:
        raise SignatureError(f"signed note is not a valid checkpoint: {e}") from None
    if origin is not None and checkpoint.origin != origin:
        raise SignatureError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    return checkpoint
