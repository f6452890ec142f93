"""Typed errors of rlhf-audit-kit.

Every error the kit raises on purpose derives from :class:`AuditKitError`, so a caller
can catch the kit's errors without catching programming mistakes.
"""
from __future__ import annotations


class AuditKitError(Exception):
    """Base class of the kit's errors."""


class ValidationError(AuditKitError, ValueError):
    """An event (or a row of a batch) is invalid; nothing of its batch was written.

    Attributes:
        row: 0-based index of the first bad row in the batch (0 for a single event).
        field: the field at fault.
        reason: what is wrong, in words.

    >>> e = ValidationError(3, "choice", "must be one of a, b, tie, skip; got 'c'")
    >>> str(e)
    "row 3, field 'choice': must be one of a, b, tie, skip; got 'c'"
    """

    def __init__(self, row: int, field: str, reason: str):
        self.row, self.field, self.reason = row, field, reason
        super().__init__(f"row {row}, field {field!r}: {reason}")

    def __reduce__(self):  # keep the attributes across pickling (multiprocessing, pytest-xdist)
        return (type(self), (self.row, self.field, self.reason))


class IntegrityError(AuditKitError):
    """The audit record does not match its log, its Merkle tree or its signed checkpoints.

    Attributes:
        seq: the first bad event sequence number, or None when the damage is not in one event.
        damage: a short machine-readable kind of damage (e.g. ``"typed-row-mismatch"``).
        checkpoint: the checkpoint (tree size) at fault, if any.
    """

    def __init__(self, message: str, *, seq: int | None = None, damage: str = "integrity",
                 checkpoint: int | None = None):
        self.seq, self.damage, self.checkpoint = seq, damage, checkpoint
        super().__init__(message)


class SignatureError(AuditKitError):
    """A signed note or checkpoint does not verify under the given verifier key."""


class KeysError(AuditKitError):
    """A keys folder, key file or passphrase is missing, wrong or unusable."""


class ForkError(IntegrityError):
    """A log showed a witness a checkpoint that contradicts one the witness already saw; not cosigned.

    Two roots for one tree size, or a larger tree that does not extend the seen one (its consistency
    proof fails). The message quotes both notes. Attributes: ``origin``, ``seen_note``, ``new_note``.
    """

    def __init__(self, message: str, *, origin: str = "", seen_note: str = "", new_note: str = "",
                 damage: str = "fork"):
        super().__init__(message, damage=damage)
        self.origin, self.seen_note, self.new_note = origin, seen_note, new_note

    def __reduce__(self):
        import functools
        return (functools.partial(type(self), origin=self.origin, seen_note=self.seen_note,
                                  new_note=self.new_note, damage=self.damage), (str(self),))


class RollbackError(ForkError):
    """A checkpoint smaller than one the witness already cosigned: a witness never cosigns backwards.

    >>> e = RollbackError("size 3 < 5", origin="o", seen_note="a", new_note="b", damage="rollback")
    >>> isinstance(e, ForkError), e.damage, e.seen_note
    (True, 'rollback', 'a')
    """


class BudgetExceededError(AuditKitError):
    """A differentially private release would exceed a privacy budget; nothing was recorded."""


class BundleError(IntegrityError):
    """A snapshot bundle was refused before anything in the offending file was decoded.

    Raised by :func:`rlhf_audit_kit.bundle.open_bundle` when a bundle cannot be read safely: a file
    that is not a regular file inside the bundle folder (symbolic link, FIFO, device, folder), a
    manifest name outside the folder, a file or Parquet page over the size limits, or a malformed
    manifest or note. :func:`rlhf_audit_kit.bundle.verify_bundle` turns it into a failed report.

    Attributes: ``damage`` (``"unsafe-file"``, ``"oversized"`` or ``"malformed-bundle"``) and
    ``file`` (the bundle file at fault, if one).

    >>> e = BundleError("log.parquet is a named pipe (FIFO)", damage="unsafe-file", file="log.parquet")
    >>> e.damage, e.file, isinstance(e, IntegrityError)
    ('unsafe-file', 'log.parquet', True)
    """

    def __init__(self, message: str, *, damage: str = "malformed-bundle", file: str | None = None):
        super().__init__(message, damage=damage)
        self.file = file

    def __reduce__(self):  # keep damage and file across pickling
        import functools
        return (functools.partial(type(self), damage=self.damage, file=self.file), (str(self),))


class StoreLockedError(AuditKitError):
    """Another process holds the store's file open for writing, so it cannot be opened here.

    DuckDB lets one process write a database file, and no other process read it meanwhile.

    Attributes: ``path`` (the store file), ``pid`` (the holder's process id, or None when DuckDB did
    not say) and ``holder`` (the holder's program, or None).

    >>> e = StoreLockedError("audit.duckdb", pid=4242, holder="/usr/bin/python3")
    >>> e.pid, str(e).startswith("audit.duckdb is locked by process 4242 (/usr/bin/python3)")
    (4242, True)
    """

    def __init__(self, path: str, *, pid: int | None = None, holder: str | None = None):
        self.path, self.pid, self.holder = str(path), pid, holder
        who = f"process {pid}" + (f" ({holder})" if holder else "") if pid else "another process"
        super().__init__(
            f"{self.path} is locked by {who}, which has it open for writing: wait until that process "
            "closes the store (or stop it), or read a snapshot bundle or published folder of the store instead")

    def __reduce__(self):
        import functools
        return (functools.partial(type(self), pid=self.pid, holder=self.holder), (self.path,))


class StoreInUseError(AuditKitError):
    """The store is already open in this process in a way that conflicts with the request.

    Raised by :func:`rlhf_audit_kit.open_store` when the file is already open for writing here with
    other options, or open read-only here while a writer is asked for, and by a write that meets a
    concurrent write through a second handle of the same file. Nothing was written.

    Attributes: ``path`` (the store file, resolved) and ``holder`` (a description of the open store).
    """

    def __init__(self, message: str, *, path: str = "", holder: str = ""):
        self.path, self.holder = path, holder
        super().__init__(message)

    def __reduce__(self):
        import functools
        return (functools.partial(type(self), path=self.path, holder=self.holder), (str(self),))


class ManifestSizeWarning(UserWarning):
    """A bundle's ``manifest.json`` nears the size readers accept by default (each segment adds ~2 KB):
    publish less often, or readers pass a larger :class:`~rlhf_audit_kit.bundle_files.Limits`."""
