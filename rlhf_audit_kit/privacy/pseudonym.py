"""Keyed pseudonyms for raw identifiers (annotator ids, user ids) and the optional re-id map.

A pseudonym is ``"p-" + key_id + "-" + hex(HMAC-SHA256(key, raw_utf8))[:24]``:

* HMAC with a secret 32-byte key (kept in the keys folder, never in a store) so nobody without the
  key can confirm a guessed id by hashing it (plain hashes of e-mails are trivially reversible);
* 24 hex = 96 bits, so collisions are negligible (~2^-48 at 2^24 distinct ids);
* ``key_id`` = first 8 hex of SHA-256(domain tag || key) names the key without revealing it, so a
  pseudonym made under another key is recognised and refused rather than hashed a second time.

Raw ids are always pseudonymised, and a value already shaped like a pseudonym (``p-<8 hex>-<24 hex>``,
also with surrounding whitespace) is refused where a raw id is expected: otherwise a data supplier
could attribute rows to a real annotator by writing that annotator's visible pseudonym. A caller who
does hold pseudonyms made with this key says so explicitly: :meth:`Pseudonymizer.check` for one
value, ``apply(series, pseudonymized=True)`` for a column (``store.extend(..., pseudonymized=True)``).

The re-identification map (raw id <-> pseudonym) is optional and lives *encrypted* next to the key
(``reidentification.map.enc``: AES-256-GCM, key derived from the pseudonym key by HKDF-SHA256), for
the data controller who must answer a subject-access or deletion request.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import polars as pl
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import KeysError, ValidationError

__all__ = ["Pseudonymizer", "ReidentificationMap", "REID_MAP_FILE", "PSEUDONYM_PATTERN",
           "key_id_of"]

REID_MAP_FILE = "reidentification.map.enc"
# Use with fullmatch: "$" would also accept a trailing newline.
PSEUDONYM_PATTERN = re.compile(r"p-([0-9a-f]{8})-[0-9a-f]{24}")
_SHAPE = r"^\s*p-[0-9a-f]{8}-[0-9a-f]{24}\s*\z"  # (polars/Rust regex) a pseudonym, give or take whitespace
_KEY_ID_TAG = b"rlhf-audit-kit pseudonym key id"
_MAP_INFO = b"rlhf-audit-kit reidentification map v1"
_MAP_MAGIC = b"RAKREID1"  # file = magic || 12-byte nonce || AES-GCM(ciphertext || tag)


def _check_key(key: Any) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
        n = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise KeysError(f"the pseudonymisation key must be 32 bytes; got {n}")
    return bytes(key)


def key_id_of(key: bytes) -> str:
    """Public 8-hex name of a pseudonym key (a one-way, domain-separated hash of it)."""
    return hashlib.sha256(_KEY_ID_TAG + _check_key(key)).hexdigest()[:8]


class Pseudonymizer:
    """Deterministic keyed pseudonyms of raw ids.

    >>> p = Pseudonymizer(bytes(32))
    >>> a = p.pseudonymize("alice@example.org")
    >>> a
    'p-db23799b-a11a082a2048606ecfa1eb95'
    >>> p.check(a) == a                 # a pseudonym of this key, marked as one by the caller
    True
    >>> try:                            # but never taken for a raw id
    ...     p.pseudonymize(a)
    ... except ValidationError as e:
    ...     print(e.reason[:39])
    is shaped like a pseudonym (this key's)
    >>> p.apply(pl.Series(["alice@example.org", None])).to_list() == [a, None]
    True
    """

    __slots__ = ("_key", "key_id", "_prefix")

    def __init__(self, key: bytes):
        self._key = _check_key(key)
        self.key_id = key_id_of(self._key)
        self._prefix = f"p-{self.key_id}-"

    @classmethod
    def from_keys_folder(cls, folder: str | os.PathLike) -> Pseudonymizer:
        """Load the pseudonymisation key of a keys folder (see :mod:`rlhf_audit_kit.keys`)."""
        from ..keys import load_pseudonym_key  # local import: keys is a sibling module

        return cls(load_pseudonym_key(folder))

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymizer(key_id={self.key_id!r})"

    def is_pseudonym(self, value: Any) -> bool:
        """True if ``value`` is a pseudonym under *this* key; KeysError if under another key."""
        if not isinstance(value, str):
            return False
        m = PSEUDONYM_PATTERN.fullmatch(value)
        if m is None:
            return False
        if m.group(1) != self.key_id:
            raise KeysError(f"pseudonym from a different key (key id {m.group(1)}, this key is "
                            f"{self.key_id}): {value!r}; refusing to pseudonymise it again")
        return True

    def _why_not_mine(self, value: str) -> str | None:
        """Why ``value`` is not a pseudonym of this key (None if it is one)."""
        m = PSEUDONYM_PATTERN.fullmatch(value)
        if m is None:
            return f"{value[:60]!r} is not a pseudonym (p-<8 hex>-<24 hex>)"
        if m.group(1) != self.key_id:
            return (f"pseudonym of another key (key id {m.group(1)}; this store's key is {self.key_id}): "
                    f"{value!r}")
        return None

    def _why_not_raw(self, value: str) -> str:
        kid = value.strip()[2:10]
        whose = "this key's" if kid == self.key_id else f"another key's (key id {kid}; this key is {self.key_id})"
        return (f"is shaped like a pseudonym ({whose}): {value[:60]!r}. Raw ids are always pseudonymised, so "
                "a pseudonym-shaped id is refused; if these are pseudonyms made with this key, mark them as "
                "such (store.extend(..., pseudonymized=True), Pseudonymizer.check)")

    def _hash(self, raw: str) -> str:
        return self._prefix + hmac.new(self._key, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:24]

    def pseudonymize(self, raw: str) -> str:
        """The pseudonym of one raw id; ValidationError for a value shaped like a pseudonym."""
        if not isinstance(raw, str):
            raise ValidationError(0, "id", f"must be a string; got {type(raw).__name__}")
        if re.fullmatch(r"\s*p-[0-9a-f]{8}-[0-9a-f]{24}\s*", raw):
            raise ValidationError(0, "id", self._why_not_raw(raw))
        return self._hash(raw)

    def check(self, pseudonym: str) -> str:
        """``pseudonym`` itself, once checked to be a pseudonym made with this key (the explicit
        marker for a value that is already one); ValidationError otherwise."""
        why = self._why_not_mine(pseudonym) if isinstance(pseudonym, str) else (
            f"must be a string; got {type(pseudonym).__name__}")
        if why:
            raise ValidationError(0, "id", why)
        return pseudonym

    def mapping(self, raws: Iterable[str]) -> dict[str, str]:
        """raw -> pseudonym for each distinct raw id (HMAC computed once per distinct value)."""
        return {r: self.pseudonymize(r) for r in dict.fromkeys(raws)}

    def apply(self, series: pl.Series, *, remember: str | os.PathLike | None = None,
              pseudonymized: bool = False) -> pl.Series:
        """Pseudonymise a string column of raw ids: one HMAC per distinct value, nulls stay null.

        A value shaped like a pseudonym is refused. ``pseudonymized=True``: the column already holds
        pseudonyms made with this key; each is checked and the column comes back unchanged. Errors
        are ``ValidationError(position, series.name, reason)`` for the first offending position.
        With ``remember=keys_folder`` the new raw -> pseudonym pairs are added to the encrypted
        re-identification map in that folder.
        """
        if not isinstance(series, pl.Series):
            raise ValidationError(0, "series", f"must be a polars Series; got {type(series).__name__}")
        if series.dtype in (pl.Categorical, pl.Enum):
            series = series.cast(pl.String)
        if series.dtype not in (pl.String, pl.Null):
            raise ValidationError(0, series.name or "id",
                                  f"ids must be strings, got dtype {series.dtype}; cast explicitly "
                                  "so that e.g. 1 and '1.0' cannot silently diverge")
        uniques = series.drop_nulls().unique(maintain_order=True).cast(pl.String)
        # checks run on the distinct values (few annotators, many rows), then name the first row
        if pseudonymized:
            ok = uniques.str.contains(f"^{self._prefix}[0-9a-f]{{24}}\\z")
            if not ok.all():
                bad = uniques.filter(~ok)
                self._refuse(series, bad, self._why_not_mine)
            return series.cast(pl.String).alias(series.name)
        shaped = uniques.str.contains(_SHAPE)
        if shaped.any():
            self._refuse(series, uniques.filter(shaped), self._why_not_raw)
        mapping = {r: self._hash(r) for r in uniques.to_list()}
        if remember is not None and mapping:
            rmap = ReidentificationMap.load(remember, self._key)
            rmap.update({p: r for r, p in mapping.items()})
            rmap.save()
        out = series.cast(pl.String).replace_strict(mapping, default=None, return_dtype=pl.String)
        return out.alias(series.name)

    @staticmethod
    def _refuse(series: pl.Series, bad: pl.Series, why) -> None:
        pos = int(series.cast(pl.String).is_in(bad).arg_true()[0])
        raise ValidationError(pos, series.name or "id", why(series[pos]))


class ReidentificationMap:
    """The encrypted pseudonym -> raw id map kept in the keys folder (data-controller only).

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> p = Pseudonymizer(bytes(32))
    >>> ps = p.apply(pl.Series(["alice"]), remember=folder)
    >>> ReidentificationMap.load(folder, bytes(32)).lookup(ps[0])
    'alice'
    """

    def __init__(self, folder: str | os.PathLike, key: bytes,
                 entries: Mapping[str, str] | None = None):
        self.folder = Path(folder)
        self.key_id = key_id_of(key)
        self._aead = AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                                 info=_MAP_INFO).derive(_check_key(key)))
        self._entries: dict[str, str] = dict(entries or {})

    @property
    def path(self) -> Path:
        return self.folder / REID_MAP_FILE

    def _aad(self) -> bytes:
        return _MAP_INFO + b"|" + self.key_id.encode()

    @classmethod
    def load(cls, folder: str | os.PathLike, key: bytes) -> ReidentificationMap:
        """Open (decrypt) the map in ``folder``; an empty map if there is none yet."""
        m = cls(folder, key)
        try:
            blob = m.path.read_bytes()
        except FileNotFoundError:
            return m
        if not blob.startswith(_MAP_MAGIC) or len(blob) < len(_MAP_MAGIC) + 12 + 16:
            raise KeysError(f"{m.path} is not a re-identification map")
        nonce = blob[len(_MAP_MAGIC):len(_MAP_MAGIC) + 12]
        try:
            plain = m._aead.decrypt(nonce, blob[len(_MAP_MAGIC) + 12:], m._aad())
        except InvalidTag:
            raise KeysError(f"cannot decrypt {m.path}: wrong pseudonymisation key or "
                            "the file was altered") from None
        doc = json.loads(plain)
        m._entries = dict(doc["entries"])
        return m

    def save(self) -> None:
        """Encrypt and write atomically (temp file + rename), mode 0600."""
        plain = json.dumps({"version": 1, "key_id": self.key_id, "entries": self._entries},
                           sort_keys=True, separators=(",", ":")).encode()
        nonce = os.urandom(12)  # fresh per write: GCM nonces must never repeat under one key
        blob = _MAP_MAGIC + nonce + self._aead.encrypt(nonce, plain, self._aad())
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def update(self, pairs: Mapping[str, str]) -> None:
        """Add pseudonym -> raw pairs (a pseudonym already mapped to another raw id is an error)."""
        for p, r in pairs.items():
            old = self._entries.get(p)
            if old is not None and old != r:
                raise KeysError(f"pseudonym collision in the re-identification map: {p}")
            self._entries[p] = r

    def lookup(self, pseudonym: str) -> str | None:
        """The raw id behind ``pseudonym``, or None if it was never remembered."""
        return self._entries.get(pseudonym)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pseudonym: object) -> bool:
        return pseudonym in self._entries

    def __repr__(self) -> str:
        return f"ReidentificationMap({str(self.path)!r}, {len(self)} entries)"
