"""Witness keys folders: a cosigning key kept with the same encryption-at-rest rules as a log's key.

A witness keys folder is a keys folder (:mod:`rlhf_audit_kit.keys`: the passphrase,
``$RLHF_AUDIT_PASSPHRASE``, file modes and key encryption are the same) with

* no pseudonymisation key (a witness sees checkpoints, never events);
* ``verifier.vkey`` holding the witness key ``name+keyid+base64(0x04 || public key)``
  (:mod:`rlhf_audit_kit.ledger.cosignature`), the key auditors pin with ``--witness``;
* ``keys.json`` marked ``"role": "witness"`` with that key as ``witness_vkey``, so a log keys
  folder is never taken for a witness's and :func:`load_witness_signer` refuses it;
* ``state/`` beside the key (by default): what the witness saw. Keep it, and back it up, with the key.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()) / "witness-keys"
>>> info = init_witness_keys(d, "witness.example/w1", no_passphrase=True)
>>> load_witness_signer(d).vkey == info.vkey == (d / "verifier.vkey").read_text().strip()
True
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import KeysError
from .keys import INFO_FILE, PSEUDONYM_KEY_FILE, SIGNING_KEY_FILE, VKEY_FILE, _load_signer, init_keys
from .ledger.checkpoint import Verifier
from .ledger.cosignature import WitnessSigner, WitnessVerifier, cosignature_vkey
from .ledger.witness import _write_atomic

__all__ = ["WitnessKeysInfo", "init_witness_keys", "load_witness_signer", "is_witness_keys", "STATE_DIR"]

STATE_DIR = "state"
ROLE = "witness"


@dataclass(frozen=True)
class WitnessKeysInfo:
    """What :func:`init_witness_keys` created (all public); ``vkey`` is the witness key (type 0x04)."""

    folder: Path
    name: str
    key_id: str
    vkey: str
    encrypted: bool

    @property
    def verifier(self) -> WitnessVerifier:
        return WitnessVerifier.from_vkey(self.vkey)


def init_witness_keys(folder: str | os.PathLike, name: str, **kw) -> WitnessKeysInfo:
    """Create a witness keys folder with a new Ed25519 cosigning key.

    Takes the keyword arguments of :func:`rlhf_audit_kit.keys.init_keys` (``passphrase``,
    ``no_passphrase``, ...) and refuses what it refuses. ``name`` is the witness's name, e.g.
    ``witness.example.org/w1``; one key serves one name.
    """
    info = init_keys(folder, name, **kw)
    folder = Path(folder)
    os.remove(folder / PSEUDONYM_KEY_FILE)  # a witness never pseudonymises: no secret it does not need
    witness_vkey = cosignature_vkey(name, Verifier.from_vkey(info.vkey).public_bytes)
    meta = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    meta.update({"role": ROLE, "witness_vkey": witness_vkey, "pseudonym_key": None,
                 "secret_files": [SIGNING_KEY_FILE], "state": STATE_DIR})
    _write_atomic(folder / VKEY_FILE, witness_vkey + "\n", 0o644)
    _write_atomic(folder / INFO_FILE, json.dumps(meta, indent=2) + "\n", 0o644)
    w = WitnessVerifier.from_vkey(witness_vkey)
    return WitnessKeysInfo(folder=folder, name=name, key_id=w.key_id.hex(), vkey=witness_vkey,
                           encrypted=info.encrypted)


def _info(folder: Path) -> dict:
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeysError(f"{folder} is not a keys folder (no {INFO_FILE})") from None
    except (OSError, ValueError) as e:
        raise KeysError(f"cannot read {folder / INFO_FILE}: {e}") from None
    return info if isinstance(info, dict) else {}


def is_witness_keys(folder: str | os.PathLike) -> bool:
    """True if ``folder`` is a witness keys folder."""
    try:
        return _info(Path(folder)).get("role") == ROLE
    except KeysError:
        return False


def load_witness_signer(folder: str | os.PathLike, passphrase: str | bytes | None = None) -> WitnessSigner:
    """The cosigning key of a witness keys folder (passphrase or ``$RLHF_AUDIT_PASSPHRASE``).

    KeysError for a log keys folder, a wrong passphrase, or a key that does not match ``keys.json``.
    """
    folder = Path(folder)
    info = _info(folder)
    if info.get("role") != ROLE:
        raise KeysError(f"{folder} is a log keys folder, not a witness keys folder: a witness cosigns with its own "
                        "key (create one with `rlhf-audit keys init DIR --name NAME --witness`)")
    key = _load_signer(folder, passphrase)  # the keys folder's decryption and checks (load_signer refuses a witness's)
    signer = WitnessSigner(key.name, key.private_key)
    if signer.vkey != info.get("witness_vkey"):
        raise KeysError(f"the witness key in {folder} does not match the witness key recorded in {INFO_FILE}")
    return signer
