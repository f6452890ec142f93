"""Follow a bundle folder while a writer publishes into it: one watcher per server, every session follows.

:class:`LiveSource` polls the folder's ``manifest.json`` (``lstat``: mtime, size, inode; and the
``cosignatures/`` folder when witnesses are pinned) about once a second, from one thread. A changed
manifest is opened as a new bundle and verified against the last checkpoint shown
(``bundle.verify(key, since=last_note)``: the newest note's signature, its consistency with the
shown one, and the new segments only; the first checkpoint is verified in full).
Only a checkpoint that verifies (and, with pinned witnesses, is cosigned by enough of them)
replaces the data the sessions show; anything else is kept as a failure, shown in red, and the
last good view stays. Sessions read :attr:`LiveSource.state`, an immutable :class:`LiveState`
replaced in one assignment, so they never see half an update.

Without a pinned key, the key the bundle shipped with the first checkpoint shown is kept for every
later one (a later bundle signed by another key fails), and the state says it is not pinned.

>>> live = LiveSource("bundle/", verifier="keys/verifier.vkey")   # doctest: +SKIP
>>> live.poll(); live.state.size, live.state.failure                # doctest: +SKIP
(1000, None)
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._data import Source, _report_to_status

__all__ = ["LiveSource", "LiveState", "Failure"]

MANIFEST = "manifest.json"
COSIGNATURES = "cosignatures"
#: A replaced source is closed this long after the swap (sessions switch within a second or two).
RETIRE_AFTER_S = 60.0


@dataclass(frozen=True)
class Failure:
    """A checkpoint that was not shown: why (``message``, with the damage kind), when it was seen
    (``at``, POSIX seconds) and the tree size it claimed (None if unknown)."""

    message: str
    at: float
    size: int | None = None


@dataclass(frozen=True)
class LiveState:
    """What every session shows. ``version`` changes when the data (``source``) changes.

    ``size``/``root``: the newest verified checkpoint; ``published``: the modification time of the
    ``manifest.json`` that published it (a file time, not signed); ``verified_at``: when the
    watcher verified it. ``failure``: the latest checkpoint that was refused (kept after a later
    good one, whose ``verified_at`` is then newer). ``pending``: a checkpoint that verified but
    waits for witness cosignatures. ``cosigners``: the pinned witnesses that cosigned the shown one.
    """

    version: int = 0
    source: Source | None = None
    size: int | None = None
    root: str | None = None
    note: str | None = None
    published: float | None = None
    verified_at: float | None = None
    message: str | None = None
    covered: tuple[int, int] | None = None
    cosigners: tuple = ()
    failure: Failure | None = None
    pending: str | None = None
    pinned: bool = False
    vkey: str | None = None

    @property
    def failing(self) -> bool:
        """True when the newest publication seen was refused (not an earlier one)."""
        return self.failure is not None and (self.verified_at is None or self.failure.at >= self.verified_at)

    def status(self):
        """The last verification as a :class:`~rlhf_audit_kit.apps._data.VerifyStatus` (None before one)."""
        if self.source is None or self.message is None:
            return None
        from ._data import VerifyStatus
        return VerifyStatus(ok=True, size=self.size or 0, message=self.message, root=self.root,
                            checked_signature=True, pinned=self.pinned)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


class LiveSource:
    """A bundle folder followed as it grows; see the module docstring.

    Parameters
    ----------
    folder
        The bundle folder a writer publishes into (``store.publish`` / ``snapshot.export``).
    verifier
        The key you trust (vkey string, ``.vkey`` file, keys folder or Verifier). Without one the
        key the bundle ships at the first read is kept, and :attr:`LiveState.pinned` is False.
    witnesses, witness_quorum
        Witness keys to name as cosigners; with witnesses, a checkpoint is shown only once
        ``witness_quorum`` of them (default: all) have cosigned it.
    interval
        Seconds between two looks at the folder.
    """

    def __init__(self, folder: str | os.PathLike, *, verifier: Any = None, witnesses: Any = None,
                 witness_quorum: int | None = None, interval: float = 1.0):
        self.folder = Path(folder)
        self.interval = float(interval)
        self._verifier = None
        if verifier is not None:
            from ..ledger.verify import resolve_verifiers
            self._verifier = resolve_verifiers(verifier)[0]  # KeysError now, not in a session
        self._pinned = verifier is not None
        self.witnesses = None
        self.witness_quorum = witness_quorum
        if witnesses:
            from ..ledger.witness import resolve_witnesses
            self.witnesses = resolve_witnesses(list(witnesses) if isinstance(witnesses, (list, tuple)) else witnesses)
            need = len(self.witnesses) if witness_quorum is None else witness_quorum
            if not 0 <= need <= len(self.witnesses):
                from ..errors import AuditKitError
                raise AuditKitError(f"a witness quorum must be between 0 and the {len(self.witnesses)} witness "
                                    f"key(s) given; got {witness_quorum}")
        elif witness_quorum:
            from ..errors import AuditKitError
            raise AuditKitError("a witness quorum needs the witness keys (--witness VKEY)")
        self.state = LiveState(pinned=self._pinned, vkey=self._verifier.vkey if self._verifier else None)
        self._seen: tuple | None = None
        self._lock = threading.Lock()
        self._retired: list[tuple[float, Source]] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._running: concurrent.futures.Future | None = None
        self._timer = None

    # ------------------------------------------------------------------ watching
    def _fingerprint(self) -> tuple | None:
        try:
            st = os.lstat(self.folder / MANIFEST)
        except OSError:
            return None
        fp: tuple = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self.witnesses:
            try:
                c = os.lstat(self.folder / COSIGNATURES)
                fp += (c.st_mtime_ns, c.st_ino)
            except OSError:
                fp += (None,)
        return fp

    def poll(self) -> bool:
        """Look at the folder once; True if the state changed. Never raises for what it reads."""
        with self._lock:  # one poll at a time (the periodic callback and a caller may overlap)
            self._close_retired()
            fp = self._fingerprint()
            if fp is None:
                if self.state.source is None and self.state.pending is None and self.state.failure is None:
                    self.state = dataclasses.replace(self.state, pending=f"waiting for a signed checkpoint in "
                                                                         f"{self.folder.name}/")
                    return True
                return False
            if fp == self._seen:
                return False
            self._seen = fp
            try:
                return self._check(fp)
            except Exception as e:  # noqa: BLE001 - whatever a hostile folder does, it is a failure, shown
                return self._fail(_one_line(e), None)

    def _check(self, fp: tuple) -> bool:
        from ..bundle import open_bundle
        from ..errors import AuditKitError
        try:
            bundle = open_bundle(self.folder)
        except (AuditKitError, OSError) as e:
            return self._fail(f"the bundle does not open: {_one_line(e)}", None)
        keep = False
        try:
            shown = self.state
            cp = bundle.checkpoint
            # without a pinned key: the shipped key, kept from the first checkpoint shown on
            key = self._verifier if self._verifier is not None else bundle.verifier
            if shown.note is not None and (cp.size, cp.root_hash.hex()) == (shown.size, shown.root):
                cosigners, problem = self._cosigners(bundle)
                if problem is None and tuple(cosigners) != shown.cosigners:
                    self.state = dataclasses.replace(shown, cosigners=tuple(cosigners))
                    return True
                return False
            report = bundle.verify(key, since=shown.note)  # since=None: the first one, verified in full
            if not report.ok:
                return self._fail(report.message, cp.size)  # the message names the damage
            cosigners, problem = self._cosigners(bundle)
            if problem is not None:
                if problem[0] == "witness-quorum":
                    self.state = dataclasses.replace(self.state, pending=f"checkpoint of size {cp.size:,} verified "
                                                                         f"but awaits cosignatures: {problem[1]}")
                    return True
                return self._fail(f"[{problem[0]}] {problem[1]}", cp.size)
            self._verifier = key
            source = Source(bundle, verifier=key, pinned=self._pinned)
            source._owned = True  # closed when retired
            old = self.state.source
            self.state = dataclasses.replace(
                self.state, version=self.state.version + 1, source=source, vkey=key.vkey, size=cp.size,
                root=cp.root_hash.hex(), note=bundle.note, published=fp[0] / 1e9, verified_at=time.time(),
                message=report.message, covered=report.covered, cosigners=tuple(cosigners), pending=None)
            keep = True
            if old is not None:
                self._retired.append((time.monotonic(), old))
            return True
        finally:
            if not keep:
                bundle.close()

    def _cosigners(self, bundle) -> tuple[list, tuple[str, str] | None]:
        """The pinned witnesses that cosigned ``bundle``'s checkpoint, and the first policy problem."""
        if not self.witnesses:
            return [], None
        from ..ledger.witness import bundle_cosignatures
        cosigs, findings = bundle_cosignatures(bundle, self.witnesses, self.witness_quorum)
        bad = next((f for f in findings if f.damage != "witness-quorum"), None) or (findings[0] if findings else None)
        return cosigs, (bad.damage, bad.message) if bad else None

    def _fail(self, message: str, size: int | None) -> bool:
        self.state = dataclasses.replace(self.state, failure=Failure(message, time.time(), size), pending=None)
        return True

    def _close_retired(self) -> None:
        now = time.monotonic()
        while self._retired and now - self._retired[0][0] > RETIRE_AFTER_S:
            _, src = self._retired.pop(0)
            try:
                src.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    # ------------------------------------------------------------------ running
    def _kick(self) -> None:
        """Start a poll in the watcher thread unless one is still running (called every interval)."""
        if self._running is not None and not self._running.done():
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rlhf-audit-watch")
        self._running = self._executor.submit(self.poll)

    def start(self) -> None:
        """Poll every :attr:`interval` seconds from the running tornado IOLoop (the server's), in one
        worker thread; stops with the loop."""
        from tornado.ioloop import PeriodicCallback
        self._timer = PeriodicCallback(self._kick, self.interval * 1000)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def __repr__(self) -> str:
        s = self.state
        return f"<LiveSource {self.folder} v{s.version} size={s.size} failing={s.failing}>"
