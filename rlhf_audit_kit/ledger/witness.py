"""A witness: remembers the last checkpoint it saw of each log, cosigns only checkpoints that extend it.

A :class:`Witness` keeps its state in a folder, one JSON file per log origin (size, root and the
log-signed note it last cosigned, and the log key it pinned on first sight). :meth:`Witness.observe`
checks a new checkpoint note

1. against the pinned log key (its signature must verify);
2. against the state: same size needs the same root, a larger size needs a valid RFC 9162
   consistency proof from the seen tree, a smaller size is a rollback;

then writes the new state (atomically, fsynced) and only then returns the note with the witness's
C2SP cosignature (:mod:`rlhf_audit_kit.ledger.cosignature`) appended. A contradiction raises
:class:`~rlhf_audit_kit.errors.ForkError` (or :class:`~rlhf_audit_kit.errors.RollbackError`),
whose message quotes both notes, and nothing is cosigned. The state must survive: a witness that
forgets what it saw can be shown a fork.

:meth:`Witness.observe_bundle` takes a snapshot bundle: its note, and a consistency proof computed
from its log. :func:`write_cosigned_note` stores the cosigned note in the bundle's ``cosignatures/``
folder (the bundle's signed files stay byte-identical), and :func:`check_witness_policy` /
:func:`bundle_cosignatures` are the verifier's side.

>>> import tempfile
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from rlhf_audit_kit.ledger import merkle
>>> from rlhf_audit_kit.ledger.checkpoint import Checkpoint, Signer
>>> log = Signer("example.com/log", Ed25519PrivateKey.generate())
>>> w = Witness(tempfile.mkdtemp(), WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate()))
>>> entries = [b"a", b"b", b"c"]
>>> n2 = log.sign(Checkpoint("example.com/log", 2, merkle.root(entries[:2])).body())
>>> n3 = log.sign(Checkpoint("example.com/log", 3, merkle.root(entries)).body())
>>> _ = w.observe(n2, log.verifier)
>>> cosigned = w.observe(n3, log.verifier, merkle.consistency_proof(entries, 2))
>>> [c.name for c in verify_cosignatures(cosigned, [w.signer.verifier])], w.state("example.com/log").size
(['witness.example/w1'], 3)
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..errors import AuditKitError, ForkError, IntegrityError, KeysError, RollbackError, SignatureError
from . import merkle
from .checkpoint import Checkpoint, Verifier, verify_checkpoint
from .cosignature import (Cosignature, WitnessSigner, WitnessVerifier, cosign, split_note,
                          verify_cosignatures)

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import Bundle
    from .verify import Finding

__all__ = ["Witness", "WitnessState", "COSIGNATURE_DIR", "STATE_FORMAT", "bundle_cosignatures",
           "bundle_consistency_proof", "check_witness_policy", "read_cosigned_notes", "resolve_witnesses",
           "write_cosigned_note"]

STATE_FORMAT = "rlhf-audit-kit/witness-state/v1"
COSIGNATURE_DIR = "cosignatures"
#: At most this many cosigned notes are read from one bundle (a hostile bundle may hold millions).
MAX_COSIGNED_NOTES = 1000

ProofSource = Union[Sequence[bytes], Callable[[int, bytes], Sequence[bytes]]]


@dataclass(frozen=True)
class WitnessState:
    """What a witness last cosigned for one log: ``origin``, ``size``, ``root_hash``, the log-signed
    ``note``, the pinned ``log_vkey`` and ``updated_at`` (ISO 8601 UTC)."""

    origin: str
    size: int
    root_hash: bytes
    note: str
    log_vkey: str
    updated_at: str

    def to_json(self) -> str:
        return json.dumps({"format": STATE_FORMAT, "origin": self.origin, "size": self.size,
                           "root_hash": self.root_hash.hex(), "log_vkey": self.log_vkey,
                           "updated_at": self.updated_at, "note": self.note}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> WitnessState:
        """Parse and cross-check a state file; AuditKitError if it is damaged (never silently reset)."""
        try:
            d = json.loads(text)
            if d.get("format") != STATE_FORMAT:
                raise ValueError(f"format is {str(d.get('format'))[:60]!r}, not {STATE_FORMAT}")
            state = cls(d["origin"], d["size"], bytes.fromhex(d["root_hash"]), d["note"], d["log_vkey"],
                        d["updated_at"])
            cp = Checkpoint.parse(split_note(state.note)[0])
            if (cp.origin, cp.size, cp.root_hash) != (state.origin, state.size, state.root_hash):
                raise ValueError("its note does not match its origin, size and root")
            Verifier.from_vkey(state.log_vkey)
        except (ValueError, KeyError, TypeError, AttributeError, KeysError, SignatureError) as e:
            raise AuditKitError(f"the witness state {where} is damaged ({str(e)[:200]}); refusing to go on: restore "
                                "it from a backup (deleting it makes the witness forget what it saw)") from None
        return state


def _quote(note: str) -> str:
    return "".join(f"    | {line}\n" for line in note.splitlines())


def _conflict(kind: type[ForkError], what: str, seen: WitnessState, note: str, damage: str) -> ForkError:
    msg = (f"{what} for log {seen.origin!r}; not cosigned. Keep both notes: together they are evidence "
           f"against the log.\n  note this witness cosigned before (size {seen.size:,}):\n{_quote(seen.note)}"
           f"  note shown now:\n{_quote(note)}")
    return kind(msg.rstrip("\n"), origin=seen.origin, seen_note=seen.note, new_note=note, damage=damage)


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` atomically: a new temporary file (never through a link), fsync, rename,
    fsync of the folder. A reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # not every platform can fsync a folder
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _verifier(key: Verifier | str | os.PathLike) -> Verifier:
    from ..keys import load_verifier
    return key if isinstance(key, Verifier) else load_verifier(key)


class Witness:
    """A witness with its state folder and cosigning key. One process at a time per state folder
    (a lock file enforces it on POSIX).

    ``clock`` returns the time in POSIX seconds for the cosignature timestamp.
    """

    def __init__(self, state_dir: str | os.PathLike, signer: WitnessSigner, *,
                 clock: Callable[[], float] = time.time):
        if not isinstance(signer, WitnessSigner):
            raise KeysError("a witness cosigns with a WitnessSigner (a witness keys folder), not a log key")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.signer = signer
        self.clock = clock

    def __repr__(self) -> str:
        return f"Witness({str(self.state_dir)!r}, {self.signer.vkey!r})"

    # ---------------------------------------------------------------- state
    def _path(self, origin: str) -> Path:
        return self.state_dir / f"{hashlib.sha256(origin.encode('utf-8')).hexdigest()[:32]}.json"

    def state(self, origin: str) -> WitnessState | None:
        """The last checkpoint this witness cosigned for ``origin``, or None if it never saw the log."""
        path = self._path(origin)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise AuditKitError(f"cannot read the witness state {path}: {e}") from None
        state = WitnessState.from_json(text, str(path))
        if state.origin != origin:
            raise AuditKitError(f"the witness state {path} is for origin {state.origin!r}, not {origin!r}")
        return state

    def _save(self, state: WitnessState) -> None:
        _write_atomic(self._path(state.origin), state.to_json(), 0o600)

    @contextlib.contextmanager
    def _locked(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: one witness process per state folder, by convention
            yield
            return
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # ---------------------------------------------------------------- witnessing
    def observe(self, note: str, log_key: Verifier | str | os.PathLike, consistency_proof: ProofSource = ()
                ) -> str:
        """Check ``note`` against the pinned log key and this witness's state; return it cosigned.

        ``consistency_proof``: the RFC 9162 proof from the tree this witness saw to the new one, or
        a callable ``(seen_size, seen_root) -> proof`` called under the state lock (so the proof is
        for the state it is checked against). Not needed on first sight of a log or for the same size.

        Raises SignatureError (the log's signature does not verify), KeysError (another log key than
        the one pinned for this origin), ForkError (same size with another root, or no valid
        consistency proof), RollbackError (smaller than what was cosigned). Nothing is cosigned then.
        """
        log_verifier = _verifier(log_key)
        cp = verify_checkpoint(note, log_verifier)
        with self._locked():
            seen = self.state(cp.origin)
            if seen is not None and seen.log_vkey != log_verifier.vkey:
                raise KeysError(f"this witness pinned the log key {seen.log_vkey} for origin {cp.origin!r}; "
                                f"refusing a note checked against another key ({log_verifier.vkey})")
            if seen is not None:
                self._check_extends(seen, cp, note, consistency_proof)
            if seen is None or cp.size > seen.size:
                now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                self._save(WitnessState(cp.origin, cp.size, cp.root_hash, note, log_verifier.vkey, now))
            return cosign(note, self.signer, int(self.clock()))

    @staticmethod
    def _check_extends(seen: WitnessState, cp: Checkpoint, note: str, proof: ProofSource) -> None:
        if cp.size < seen.size:
            raise _conflict(RollbackError, f"rollback: size {cp.size:,} is smaller than size {seen.size:,} "
                                           "already cosigned", seen, note, "rollback")
        if cp.size == seen.size:
            if cp.root_hash != seen.root_hash:
                raise _conflict(ForkError, f"fork: two roots for size {cp.size:,} ({seen.root_hash.hex()[:16]}… "
                                           f"cosigned before, {cp.root_hash.hex()[:16]}… now)", seen, note, "fork")
            return
        hashes = proof(seen.size, seen.root_hash) if callable(proof) else proof
        if not merkle.verify_consistency(seen.size, cp.size, seen.root_hash, cp.root_hash, list(hashes)):
            raise _conflict(ForkError, f"fork: size {cp.size:,} is not consistent with size {seen.size:,} cosigned "
                                       "before (the consistency proof does not verify)", seen, note, "fork")

    def observe_bundle(self, bundle: Bundle | str | os.PathLike, log_key: Verifier | str | os.PathLike | None = None
                       ) -> str:
        """Witness a snapshot bundle's checkpoint, with a consistency proof from the bundle's log.

        ``log_key``: the log's verifier key; needed on first sight of the log, then pinned (give it
        again or not). Never the key a bundle ships: anyone can re-sign a bundle. Returns the
        cosigned note; store it with :func:`write_cosigned_note`.
        """
        from ..bundle import open_bundle
        opened = not hasattr(bundle, "note")
        b = open_bundle(bundle) if opened else bundle
        try:
            cp = Checkpoint.parse(split_note(b.note)[0])
            if log_key is None:
                seen = self.state(cp.origin)
                if seen is None:
                    raise KeysError(f"this witness has not seen log {cp.origin!r} yet: give the log's verifier "
                                    "key to pin (--log-vkey); never take the key a bundle ships")
                log_key = seen.log_vkey
            return self.observe(b.note, log_key, lambda size, root: bundle_consistency_proof(b, size, root))
        finally:
            if opened:
                b.close()


def bundle_consistency_proof(bundle: Bundle, old_size: int, old_root: bytes) -> list[bytes]:
    """The consistency proof from ``(old_size, old_root)`` to the bundle's checkpoint, from its log.

    The bundle's leaf hashes must give its checkpoint's root (IntegrityError ``root-mismatch``
    otherwise: a damaged bundle proves nothing). If they do but their first ``old_size`` leaves do
    not give ``old_root``, the log signed a tree that rewrites what was seen: ForkError is raised
    by the caller's check, since the returned proof cannot verify. O(events after ``old_size``) when
    the bundle's stored compact ranges give a proof that verifies; O(n) only to tell a damaged
    bundle from a fork when it does not.
    """
    cp = Checkpoint.parse(split_note(bundle.note)[0])
    if hasattr(bundle, "consistency_proof") and 0 <= old_size <= cp.size:
        try:  # the proof checks itself against both roots: no need to re-read the whole log
            proof = bundle.consistency_proof(old_size)
            if merkle.verify_consistency(old_size, cp.size, old_root, cp.root_hash, proof):
                return proof
        except AuditKitError:
            pass  # fall through to the full check, which names the damage
    df = bundle.sql("SELECT seq, leaf_hash FROM log WHERE seq < ? ORDER BY seq", [cp.size])
    leaves = df["leaf_hash"].to_list()
    if len(leaves) != cp.size or (cp.size and df["seq"][-1] != cp.size - 1) or any(
            not isinstance(h, bytes) or len(h) != 32 for h in leaves):
        raise IntegrityError(f"the bundle's log does not hold the {cp.size:,} leaf hashes its checkpoint covers",
                             damage="truncated", checkpoint=cp.size)
    if merkle.root_from_leaf_hashes(leaves) != cp.root_hash:
        raise IntegrityError("the bundle's log does not give its checkpoint's root: the bundle is damaged "
                             "(run `rlhf-audit verify`)", damage="root-mismatch", checkpoint=cp.size)
    if not 0 <= old_size <= cp.size:
        return []  # a rollback: the caller refuses it before asking for a proof

    def nodes(wanted):
        return {(lvl, i): merkle.root_from_leaf_hashes(leaves[i << lvl:(i + 1) << lvl]) for lvl, i in wanted}
    return merkle.consistency_proof_from_nodes(old_size, cp.size,
                                               nodes(merkle.needed_nodes_for_consistency(old_size, cp.size)))


# ---------------------------------------------------------------- cosigned notes in a bundle folder
def write_cosigned_note(folder: str | os.PathLike, cosigned_note: str, signer: WitnessSigner | WitnessVerifier
                        ) -> Path:
    """Store ``cosigned_note`` as ``cosignatures/<size>-<witness key id>.note`` in a bundle folder.

    The file is written atomically and never through a link; the bundle's own files are untouched.
    """
    cp = Checkpoint.parse(split_note(cosigned_note)[0])
    folder = Path(folder)
    sub = folder / COSIGNATURE_DIR
    try:
        mode = os.lstat(sub).st_mode
        if not stat.S_ISDIR(mode):
            raise AuditKitError(f"{sub} exists and is not a folder (a link?); refusing to write through it")
    except FileNotFoundError:
        sub.mkdir(mode=0o755)
    path = sub / f"{cp.size}-{signer.key_id.hex()}.note"
    _write_atomic(path, cosigned_note, 0o644)
    return path


def read_cosigned_notes(bundle: Bundle) -> list[tuple[str, str]]:
    """``(file name, text)`` of the cosigned notes in a bundle's ``cosignatures/`` folder, by name.

    Read like every bundle file (:mod:`rlhf_audit_kit.bundle_files`): no link followed, no FIFO
    opened, each file size-limited; at most :data:`MAX_COSIGNED_NOTES` files. Raises BundleError
    for an unsafe entry.
    """
    from ..bundle_files import check_name, read_small
    from ..errors import BundleError
    files = getattr(bundle, "files", None)
    if files is not None and not files.local:  # object storage: the objects under cosignatures/
        prefix = COSIGNATURE_DIR + "/"
        names = sorted(n[len(prefix):] for n in files.list_files() if n.startswith(prefix) and n.endswith(".note")
                       and "/" not in n[len(prefix):] and not n[len(prefix):].startswith("."))
        root = None
    else:
        root = Path(os.path.realpath(bundle.path))
        sub = root / COSIGNATURE_DIR
        try:
            if not stat.S_ISDIR(os.lstat(sub).st_mode):
                raise BundleError(f"{COSIGNATURE_DIR} is not a folder; refused without reading it",
                                  damage="unsafe-file", file=COSIGNATURE_DIR)
        except FileNotFoundError:
            return []
        with os.scandir(sub) as it:
            names = sorted(e.name for e in it if e.name.endswith(".note") and not e.name.startswith("."))
    if len(names) > MAX_COSIGNED_NOTES:
        raise BundleError(f"{COSIGNATURE_DIR}/ holds {len(names):,} notes, more than {MAX_COSIGNED_NOTES:,}; refused",
                          damage="oversized", file=COSIGNATURE_DIR)
    out = []
    for name in names:
        rel = check_name(f"{COSIGNATURE_DIR}/{name}")
        raw = (read_small(root, rel, bundle.limits.max_text_bytes) if root is not None
               else files.read_small(rel, bundle.limits.max_text_bytes))
        try:
            out.append((rel, raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise BundleError(f"{rel} is not UTF-8 text; refused", damage="malformed-bundle", file=rel) from None
    return out


# ---------------------------------------------------------------- the verifier's side
def resolve_witnesses(keys: Any) -> list[WitnessVerifier]:
    """Witness keys from a :class:`WitnessVerifier`, a witness vkey string, a file or witness keys
    folder holding one, or a list of these.

    >>> [w.name for w in resolve_witnesses(["remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"])]
    ['remora.n621.de']
    """
    if isinstance(keys, WitnessVerifier):
        return [keys]
    if isinstance(keys, WitnessSigner):
        return [keys.verifier]
    if isinstance(keys, (list, tuple, set, frozenset)):
        return [w for k in keys for w in resolve_witnesses(k)]
    if isinstance(keys, str) and keys.count("+") >= 2 and not os.path.exists(keys):
        return [WitnessVerifier.from_vkey(keys)]
    path = Path(keys)
    if path.is_dir():
        path = path / "verifier.vkey"
    try:
        text = path.read_text(encoding="utf-8")[:4096]
    except (OSError, UnicodeDecodeError) as e:
        raise KeysError(f"cannot read a witness key from {path}: {getattr(e, 'strerror', None) or e}") from None
    return [WitnessVerifier.from_vkey(text.strip())]


def _finding(damage: str, message: str, size: int | None) -> Finding:
    from .verify import Finding
    return Finding(damage, message, None, size)


def check_witness_policy(notes: str | Iterable[str], witnesses: Any, required: int | None = None, *,
                         body: str | None = None) -> tuple[list[Cosignature], list[Finding]]:
    """Which pinned witnesses cosigned the checkpoint ``body``, and the findings of a quorum policy.

    ``notes``: cosigned note texts (a bundle's note and its ``cosignatures/`` files); those whose
    checkpoint text is not ``body`` (default: the first note's) are ignored, as cosignatures of
    another checkpoint. ``required``: how many distinct pinned witnesses must have cosigned
    (default: all of them). Findings: ``bad-cosignature`` (a pinned witness's line that does not
    verify) and ``witness-quorum`` (fewer than ``required``). Returns ``(cosignatures, findings)``.
    """
    ws = resolve_witnesses(witnesses)
    need = len(ws) if required is None else required
    if not isinstance(need, int) or isinstance(need, bool) or not 0 <= need <= len(ws):
        raise AuditKitError(f"a witness quorum must be between 0 and the {len(ws)} witness key(s) given; got {need!r}")
    notes = [notes] if isinstance(notes, str) else list(notes)
    texts = []
    for note in notes:
        try:
            texts.append(split_note(note)[0])
        except SignatureError:
            texts.append(None)  # not a note at all: nothing in it can count
    body = body if body is not None else next((t for t in texts if t is not None), None)
    size = None
    with contextlib.suppress(ValueError, TypeError):
        size = Checkpoint.parse(body).size
    found: dict[str, Cosignature] = {}
    findings: list[Finding] = []
    for note, text in zip(notes, texts):
        if text is None or text != body:
            continue
        try:
            for c in verify_cosignatures(note, ws):
                found.setdefault(c.vkey, c)
        except SignatureError as e:
            findings.append(_finding("bad-cosignature", str(e), size))
    cosigs = list(found.values())
    if len(cosigs) < need:
        names = ", ".join(f"{c.name} ({c.key_id})" for c in cosigs) or "none"
        findings.append(_finding("witness-quorum", f"{len(cosigs)} of the {len(ws)} pinned witness(es) cosigned the "
                                 f"checkpoint ({names}); the policy needs {need}", size))
    return cosigs, findings


def bundle_cosignatures(bundle: Bundle, witnesses: Any, required: int | None = None
                        ) -> tuple[list[Cosignature], list[Finding]]:
    """:func:`check_witness_policy` over a bundle: its note and the notes in ``cosignatures/``.

    Only cosignatures of the bundle's own checkpoint count. Check the bundle itself with
    ``bundle.verify(log_key)``: a cosignature vouches for a checkpoint, not for the files.
    """
    from ..errors import BundleError
    try:
        notes = [bundle.note] + [text for _, text in read_cosigned_notes(bundle)]
    except BundleError as e:
        return [], [_finding(e.damage, str(e), None)]
    return check_witness_policy(notes, witnesses, required, body=split_note(bundle.note)[0])
