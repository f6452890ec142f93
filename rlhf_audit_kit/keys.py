"""The keys folder: the checkpoint signing key and the pseudonymisation key, outside any store.

Layout (folder mode 0700)::

    signing_key.pem   Ed25519 private key, PKCS#8 PEM, encrypted with a passphrase   (0600, secret)
    pseudonym.key     32 random bytes, hex, the HMAC key for pseudonyms             (0600, secret)
    verifier.vkey     the public verifier key string name+keyid+base64, one line     (0644)
    keys.json         name, key id, vkey, creation time, encryption flag, secret files (0644)

The passphrase comes from the caller or the ``RLHF_AUDIT_PASSPHRASE`` environment variable; the
folder's default location from ``RLHF_AUDIT_KEYS``. Nothing secret is written anywhere else.

The signing key is encrypted as PKCS#8 PBES2: PBKDF2-HMAC-SHA256 with :data:`KDF_ROUNDS`
iterations (about 0.5 s per try on one server core, so every guessed passphrase costs as much)
and AES-256-CBC. A new passphrase needs at least :data:`MIN_PASSPHRASE_CHARS` characters. Keys
written by older versions (2,048 iterations) still load; make a new keys folder to raise their cost.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import (
    Encoding, NoEncryption, PrivateFormat, load_pem_private_key)

from .errors import KeysError
from .ledger.checkpoint import Signer, Verifier, validate_key_name

__all__ = ["KeysInfo", "init_keys", "store_origin", "load_signer", "load_verifier", "load_pseudonym_key",
           "keys_folder_from_env", "kdf_rounds_of", "PASSPHRASE_ENV", "KEYS_ENV", "SIGNING_KEY_FILE",
           "PSEUDONYM_KEY_FILE", "VKEY_FILE", "INFO_FILE", "KDF_ROUNDS", "MIN_KDF_ROUNDS",
           "MIN_PASSPHRASE_CHARS"]

PASSPHRASE_ENV = "RLHF_AUDIT_PASSPHRASE"
KEYS_ENV = "RLHF_AUDIT_KEYS"
SIGNING_KEY_FILE = "signing_key.pem"
PSEUDONYM_KEY_FILE = "pseudonym.key"
VKEY_FILE = "verifier.vkey"
INFO_FILE = "keys.json"
_FORMAT = "rlhf-audit-kit/keys/v1"

#: PBKDF2-HMAC-SHA256 iterations protecting a new signing key: 0.5-0.7 s to load it, measured with
#: ``cryptography`` (OpenSSL 3) on the 2-core CI machine (2,048 before: ~1,000x cheaper to guess).
KDF_ROUNDS = 2_000_000
#: The least ``kdf_rounds`` :func:`init_keys` accepts (lower values exist for fast tests only).
MIN_KDF_ROUNDS = 10_000
#: Shortest passphrase accepted for a new signing key.
MIN_PASSPHRASE_CHARS = 12
_MAX_VKEY_FILE = 4096  # a verifier key is one short line; a bigger file is not one


@dataclass(frozen=True)
class KeysInfo:
    """What :func:`init_keys` created (all public)."""

    folder: Path
    name: str
    key_id: str
    vkey: str
    created_at: str
    encrypted: bool
    secret_files: tuple[str, ...]

    @property
    def verifier(self) -> Verifier:
        """The verifier of the signing key."""
        return Verifier.from_vkey(self.vkey)


def _passphrase(passphrase: str | bytes | None) -> bytes | None:
    if passphrase is None:
        passphrase = os.environ.get(PASSPHRASE_ENV) or None
    if passphrase is None:
        return None
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not passphrase:
        raise KeysError("the passphrase is empty")
    return bytes(passphrase)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` from the start (no window with wider access)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # the umask may have narrowed it; make it exactly what we document


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _seq(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


_OID_PBES2 = bytes.fromhex("06092a864886f70d01050d")       # 1.2.840.113549.1.5.13
_OID_PBKDF2 = bytes.fromhex("06092a864886f70d01050c")      # 1.2.840.113549.1.5.12
_OID_HMAC_SHA256 = bytes.fromhex("06082a864886f70d0209")   # 1.2.840.113549.2.9
_OID_AES256_CBC = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42


def _encrypted_pkcs8(key: Ed25519PrivateKey, secret: bytes, rounds: int) -> bytes:
    """PEM ``ENCRYPTED PRIVATE KEY`` (RFC 8018 PBES2: PBKDF2-HMAC-SHA256, AES-256-CBC) with an
    explicit iteration count, the layout OpenSSL and ``cryptography`` write and read; theirs is
    fixed at 2,048 iterations."""
    plain = key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
    salt, iv = secrets.token_bytes(16), secrets.token_bytes(16)
    dk = PBKDF2HMAC(hashes.SHA256(), 32, salt, rounds).derive(secret)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(dk), modes.CBC(iv)).encryptor()
    body = enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()
    rounds_der = _der(0x02, rounds.to_bytes(rounds.bit_length() // 8 + 1, "big"))
    kdf = _seq(_OID_PBKDF2, _seq(_der(0x04, salt), rounds_der, _seq(_OID_HMAC_SHA256, b"\x05\x00")))
    algo = _seq(_OID_PBES2, _seq(kdf, _seq(_OID_AES256_CBC, _der(0x04, iv))))
    b64 = base64.encodebytes(_seq(algo, _der(0x04, body))).replace(b"\n", b"")
    lines = b"\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + lines + b"\n-----END ENCRYPTED PRIVATE KEY-----\n"


def _children(der: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(tag and length bytes, body start, body end) of the DER elements in ``der[start:end]``."""
    out, end = [], len(der) if end is None else end
    while start < end:
        head, n = start, der[start + 1]
        start += 2
        if n & 0x80:
            k = n & 0x7F
            n, start = int.from_bytes(der[start:start + k], "big"), start + k
        out.append((der[head:start], start, start + n))
        start += n
    return out


def kdf_rounds_of(pem: bytes | str | os.PathLike) -> int | None:
    """PBKDF2 iterations of an encrypted PKCS#8 PEM (bytes, or a path to one); None when it is
    not a PBES2/PBKDF2-encrypted key.

    >>> kdf_rounds_of(b"-----BEGIN PRIVATE KEY-----") is None
    True
    """
    if not isinstance(pem, bytes):
        pem = Path(pem).read_bytes()
    head = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
    if head not in pem:
        return None
    try:
        der = base64.b64decode(b"".join(pem.split(head, 1)[1].split(b"-----END", 1)[0].split()))
        _, s, e = _children(der)[0]                    # EncryptedPrivateKeyInfo
        _, s, e = _children(der, s, e)[0]              # its encryptionAlgorithm
        oid, (_, s, e) = _children(der, s, e)[:2]      # PBES2, its parameters
        _, s, e = _children(der, s, e)[0]              # keyDerivationFunc
        kdf, (_, s, e) = _children(der, s, e)[:2]      # PBKDF2, its parameters
        if der[oid[1] - len(oid[0]):oid[2]] != _OID_PBES2 or der[kdf[1] - len(kdf[0]):kdf[2]] != _OID_PBKDF2:
            return None
        _, s, e = _children(der, s, e)[1]              # salt, iterationCount, ...
        return int.from_bytes(der[s:e], "big")
    except (ValueError, IndexError):
        return None


def store_origin(store: str | os.PathLike) -> str:
    """The checkpoint origin of an existing store file, read without writing to it.

    C2SP tlog-checkpoint: a log's key name SHOULD match its origin line, so this is the name to
    give the key that signs the store (``init_keys(folder, store=path)`` does).

    >>> import tempfile, pathlib
    >>> from rlhf_audit_kit import open_store
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.duckdb"
    >>> open_store(path, origin="example.com/log", pseudonymize=False).close()
    >>> store_origin(path)
    'example.com/log'
    """
    from .store import open_store
    path = Path(store)
    if not path.is_file():
        raise KeysError(f"no store at {path} to name the key after: create it first "
                        f"(`rlhf-audit init {path} --origin ORIGIN`) or give the key a name")
    with open_store(path, read_only=True, pseudonymize=False) as s:
        return s.origin


def init_keys(folder: str | os.PathLike, name: str | None = None, *, store: str | os.PathLike | None = None,
              passphrase: str | bytes | None = None, no_passphrase: bool = False,
              kdf_rounds: int = KDF_ROUNDS) -> KeysInfo:
    """Create a keys folder with a new signing key and pseudonymisation key.

    ``name``: the signing key's name; without one, the origin of the existing ``store`` file
    (:func:`store_origin`), as C2SP tlog-checkpoint asks of a log's key. An explicit ``name`` wins.
    The passphrase is ``passphrase`` or ``$RLHF_AUDIT_PASSPHRASE``; without either, KeysError
    unless ``no_passphrase=True`` (the private key is then stored unencrypted, and recorded so).
    Refuses (KeysError) if the folder exists and is not empty, or if the passphrase is shorter
    than :data:`MIN_PASSPHRASE_CHARS`. ``kdf_rounds``: PBKDF2 iterations (default
    :data:`KDF_ROUNDS`, ~0.5 s; at least :data:`MIN_KDF_ROUNDS`; lower it only for tests).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "keys"
    >>> info = init_keys(d, "example.com/log", passphrase="correct horse battery")
    >>> load_signer(d, "correct horse battery").vkey == info.vkey
    True
    """
    if name is None:
        if store is None:
            raise KeysError("name the key: pass a name, or the store whose origin names it")
        name = store_origin(store)
        try:
            validate_key_name(name)
        except KeysError as e:
            raise KeysError(f"the store's origin cannot name its key ({e}): give the key a name") from None
    validate_key_name(name)
    folder = Path(folder)
    secret = _passphrase(passphrase)
    if secret is not None and no_passphrase:
        if passphrase is not None:
            raise KeysError("give either a passphrase or no_passphrase=True, not both")
        secret = None  # an inherited environment variable yields to an explicit choice
    if secret is None and not no_passphrase:
        raise KeysError(f"a passphrase is needed to encrypt the signing key: pass one, set "
                        f"{PASSPHRASE_ENV}, or choose no_passphrase=True")
    if secret is not None and len(secret.decode("utf-8", "replace")) < MIN_PASSPHRASE_CHARS:
        raise KeysError(f"the passphrase is too short: use at least {MIN_PASSPHRASE_CHARS} "
                        f"characters (a few random words)")
    if not isinstance(kdf_rounds, int) or kdf_rounds < MIN_KDF_ROUNDS:
        raise KeysError(f"kdf_rounds must be an int of at least {MIN_KDF_ROUNDS:,}; got {kdf_rounds!r}")
    if folder.exists():
        if not folder.is_dir() or any(folder.iterdir()):
            raise KeysError(f"{folder} already exists and is not an empty folder; "
                            f"refusing to overwrite keys")
    else:
        folder.mkdir(mode=0o700, parents=True)
    os.chmod(folder, 0o700)

    key = Ed25519PrivateKey.generate()
    signer = Signer(name, key)
    pem = (_encrypted_pkcs8(key, secret, kdf_rounds) if secret is not None
           else key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info = KeysInfo(folder=folder, name=name, key_id=signer.key_id.hex(), vkey=signer.vkey,
                    created_at=created, encrypted=secret is not None,
                    secret_files=(SIGNING_KEY_FILE, PSEUDONYM_KEY_FILE))
    meta = {"format": _FORMAT, "name": name, "key_id": info.key_id, "vkey": info.vkey,
            "algorithm": "Ed25519", "created_at": created, "encrypted": info.encrypted,
            "kdf": {"name": "pbkdf2-hmac-sha256", "rounds": kdf_rounds} if info.encrypted else None,
            "signing_key": SIGNING_KEY_FILE, "pseudonym_key": PSEUDONYM_KEY_FILE,
            "verifier_key": VKEY_FILE, "secret_files": list(info.secret_files)}
    _write_new(folder / SIGNING_KEY_FILE, pem, 0o600)
    _write_new(folder / PSEUDONYM_KEY_FILE, (secrets.token_bytes(32).hex() + "\n").encode(), 0o600)
    _write_new(folder / VKEY_FILE, (signer.vkey + "\n").encode(), 0o644)
    _write_new(folder / INFO_FILE, (json.dumps(meta, indent=2) + "\n").encode(), 0o644)
    return info


def _read_info(folder: Path) -> dict:
    try:
        return json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeysError(f"{folder} is not a keys folder (no {INFO_FILE})") from None
    except (OSError, ValueError) as e:
        raise KeysError(f"cannot read {folder / INFO_FILE}: {e}") from None


def load_signer(folder: str | os.PathLike, passphrase: str | bytes | None = None) -> Signer:
    """Load the signing key of a keys folder (passphrase or ``$RLHF_AUDIT_PASSPHRASE``).

    KeysError on a wrong or missing passphrase, on an unencrypted key in a folder created with
    encryption (someone replaced or decrypted it), on a key that does not match ``keys.json``, and
    on a witness keys folder (``"role": "witness"``): a witness's key cosigns checkpoints of others'
    logs and must never sign a log (:func:`rlhf_audit_kit.witness_keys.load_witness_signer` loads it).
    """
    folder = Path(folder)
    info = _read_info(folder)
    if isinstance(info, dict) and info.get("role") == "witness":
        raise KeysError(f"{folder} is a witness keys folder: its key only cosigns checkpoints (rlhf-audit witness); "
                        "sign a log with a log keys folder (rlhf-audit keys init DIR --name ORIGIN)")
    return _load_signer(folder, passphrase)


def _load_signer(folder: Path, passphrase: str | bytes | None) -> Signer:
    """The keys folder's key, decrypted and checked against ``keys.json``, whatever the folder's role."""
    info = _read_info(folder)
    try:
        pem = (folder / SIGNING_KEY_FILE).read_bytes()
    except OSError as e:
        raise KeysError(f"cannot read the signing key: {e}") from None
    pem_encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem
    if info.get("encrypted", True):
        if not pem_encrypted:
            raise KeysError(f"{folder / SIGNING_KEY_FILE} is not encrypted but the keys folder was "
                            f"created with a passphrase; refusing to use it")
        secret = _passphrase(passphrase)
        if secret is None:
            raise KeysError(f"the signing key is encrypted: pass the passphrase or set "
                            f"{PASSPHRASE_ENV}")
    else:
        if pem_encrypted:
            raise KeysError(f"{folder / SIGNING_KEY_FILE} is encrypted but keys.json says not")
        secret = None  # created with no_passphrase: a passphrase is not needed, so not used
    try:
        key = load_pem_private_key(pem, password=secret)
    except ValueError:
        raise KeysError("wrong passphrase for the signing key (or the key file is damaged)"
                        ) from None
    except Exception as e:  # unsupported or damaged key material
        raise KeysError(f"cannot load the signing key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeysError("the signing key is not an Ed25519 key")
    signer = Signer(info.get("name", ""), key)
    if signer.vkey != info.get("vkey"):
        raise KeysError("the signing key does not match the verifier key recorded in keys.json")
    return signer


def load_verifier(vkey_or_path: str | os.PathLike) -> Verifier:
    """A verifier from a vkey string, a file holding one, or a keys folder.

    A file that does not hold a verifier key is refused without quoting it: it may be a secret
    key file given (or linked) by mistake.

    >>> load_verifier("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").name
    'PeterNeumann'
    """
    if isinstance(vkey_or_path, Verifier):
        return vkey_or_path
    if isinstance(vkey_or_path, str):
        try:  # a vkey string first: it cannot also be a sensible path, and may be too long for one
            return Verifier.from_vkey(vkey_or_path.strip())
        except KeysError:
            if "+" in vkey_or_path and not _exists(vkey_or_path):
                raise  # a mistyped key string: say what is wrong with it
    path = Path(vkey_or_path)
    if path.is_dir():
        path = path / VKEY_FILE
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_VKEY_FILE + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
        raise KeysError(f"cannot read a verifier key from {path}: {reason}") from None
    try:
        if len(data) > _MAX_VKEY_FILE:
            raise KeysError("too long")
        return Verifier.from_vkey(text.strip())
    except KeysError:
        raise KeysError(f"{path} does not hold a verifier key (one line name+keyid+base64)") from None


def _exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # e.g. a name too long for the file system
        return False


def load_pseudonym_key(folder: str | os.PathLike) -> bytes:
    """The 32-byte pseudonymisation key of a keys folder; KeysError if missing or malformed."""
    path = Path(folder) / PSEUDONYM_KEY_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except FileNotFoundError:
        raise KeysError(f"no pseudonymisation key at {path}") from None
    except (OSError, ValueError) as e:
        raise KeysError(f"cannot read the pseudonymisation key at {path}: {e}") from None
    if len(key) != 32:
        raise KeysError(f"the pseudonymisation key at {path} has {len(key)} bytes, need 32")
    return key


def keys_folder_from_env() -> Path | None:
    """The keys folder named by ``$RLHF_AUDIT_KEYS``, or None when it is unset or empty.

    >>> os.environ["RLHF_AUDIT_KEYS"] = "/srv/audit-keys"
    >>> str(keys_folder_from_env())
    '/srv/audit-keys'
    >>> del os.environ["RLHF_AUDIT_KEYS"]
    """
    value = os.environ.get(KEYS_ENV)
    return Path(value).expanduser() if value else None
