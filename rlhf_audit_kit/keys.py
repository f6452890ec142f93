"""The keys folder: the checkpoint signing key and the pseudonymisation key, outside any store.

Layout (folder mode 0700)::

    signing_key.pem   Ed25519 private key, PKCS#8 PEM, encrypted with a passphrase   (0600, secret)
    pseudonym.key     32 random bytes, hex, the HMAC key for pseudonyms             (0600, secret)
    verifier.vkey     the public verifier key string name+keyid+base64, one line     (0644)
    keys.json         name, key id, vkey, creation time, encryption flag, secret files (0644)

The passphrase comes from the caller or the ``RLHF_AUDIT_PASSPHRASE`` environment variable; the
folder's default location from ``RLHF_AUDIT_KEYS``. Nothing secret is written anywhere else.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption, Encoding, NoEncryption, PrivateFormat, load_pem_private_key)

from .errors import KeysError
from .ledger.checkpoint import Signer, Verifier, validate_key_name

__all__ = ["KeysInfo", "init_keys", "load_signer", "load_verifier", "load_pseudonym_key",
           "keys_folder_from_env", "PASSPHRASE_ENV", "KEYS_ENV", "SIGNING_KEY_FILE",
           "PSEUDONYM_KEY_FILE", "VKEY_FILE", "INFO_FILE"]

PASSPHRASE_ENV = "RLHF_AUDIT_PASSPHRASE"
KEYS_ENV = "RLHF_AUDIT_KEYS"
SIGNING_KEY_FILE = "signing_key.pem"
PSEUDONYM_KEY_FILE = "pseudonym.key"
VKEY_FILE = "verifier.vkey"
INFO_FILE = "keys.json"
_FORMAT = "rlhf-audit-kit/keys/v1"


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


def init_keys(folder: str | os.PathLike, name: str, *, passphrase: str | bytes | None = None,
              no_passphrase: bool = False) -> KeysInfo:
    """Create a keys folder with a new signing key and pseudonymisation key.

    The passphrase is ``passphrase`` or ``$RLHF_AUDIT_PASSPHRASE``; without either, KeysError
    unless ``no_passphrase=True`` (the private key is then stored unencrypted, and recorded so).
    Refuses (KeysError) if the folder exists and is not empty.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "keys"
    >>> info = init_keys(d, "example.com/log", passphrase="correct horse")
    >>> load_signer(d, "correct horse").vkey == info.vkey
    True
    """
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
    if folder.exists():
        if not folder.is_dir() or any(folder.iterdir()):
            raise KeysError(f"{folder} already exists and is not an empty folder; "
                            f"refusing to overwrite keys")
    else:
        folder.mkdir(mode=0o700, parents=True)
    os.chmod(folder, 0o700)

    key = Ed25519PrivateKey.generate()
    signer = Signer(name, key)
    encryption = BestAvailableEncryption(secret) if secret is not None else NoEncryption()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    info = KeysInfo(folder=folder, name=name, key_id=signer.key_id.hex(), vkey=signer.vkey,
                    created_at=created, encrypted=secret is not None,
                    secret_files=(SIGNING_KEY_FILE, PSEUDONYM_KEY_FILE))
    meta = {"format": _FORMAT, "name": name, "key_id": info.key_id, "vkey": info.vkey,
            "algorithm": "Ed25519", "created_at": created, "encrypted": info.encrypted,
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
    encryption (someone replaced or decrypted it), or on a key that does not match ``keys.json``.
    """
    folder = Path(folder)
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

    >>> load_verifier("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").name
    'PeterNeumann'
    """
    if isinstance(vkey_or_path, Verifier):
        return vkey_or_path
    if isinstance(vkey_or_path, str):
        try:  # a vkey string first: it cannot also be a sensible path, and may be too long for one
            return Verifier.from_vkey(vkey_or_path.strip())
        except KeysError:
            pass
    path = Path(vkey_or_path)
    if path.is_dir():
        path = path / VKEY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KeysError(f"cannot read a verifier key from {path}: {e}") from None
    return Verifier.from_vkey(text.strip())


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
