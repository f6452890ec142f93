"""Ledger subcommands of ``rlhf-audit``: keys, snapshot, verify, proof.

:func:`register` adds them to the main parser's subparsers (each sets ``func`` to a handler
``_cmd_x(args) -> int``)::

    rlhf-audit keys init keys/ --name example.com/audit      # passphrase: $RLHF_AUDIT_PASSPHRASE or prompt
    rlhf-audit snapshot audit.duckdb --keys keys/             # prints the signed checkpoint note
    rlhf-audit verify audit.duckdb --vkey keys/verifier.vkey  # or a bundle folder; exit 0 "OK ..."
    rlhf-audit verify bundle/ --vkey keys/verifier.vkey --witness w1.vkey --witness w2.vkey --witness-quorum 1
    rlhf-audit verify bundle/ --vkey keys/verifier.vkey --since trusted.note  # only the newer segments
    rlhf-audit proof inclusion audit.duckdb 42                # JSON: proof against a signed checkpoint
    rlhf-audit proof consistency audit.duckdb 100 250

``python -m rlhf_audit_kit.cli_ledger ...`` runs the same commands on their own.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from .errors import AuditKitError, BundleError, KeysError

__all__ = ["register", "main", "EXIT_DAMAGED"]

#: Exit status of ``verify`` (and of any command given a bundle it refuses): the record is damaged,
#: or the bundle is unsafe, oversized or malformed. 1 is for usage, key and file errors.
EXIT_DAMAGED = 3
_VERIFY_EPILOG = ("exit status: 0 verified; 3 damaged, or a bundle refused as unsafe, oversized or malformed "
                  "(one line 'FAILED ... [damage]: ...' on stderr); 1 usage, key or file errors")


def _passphrase_new() -> str:
    env = os.environ.get("RLHF_AUDIT_PASSPHRASE")
    if env:
        return env
    if not sys.stdin.isatty():
        raise KeysError("no passphrase: set RLHF_AUDIT_PASSPHRASE or run in a terminal (or --no-passphrase)")
    first = getpass.getpass("passphrase for the signing key: ")
    if not first:
        raise KeysError("the passphrase is empty")
    if getpass.getpass("repeat the passphrase: ") != first:
        raise KeysError("the passphrases differ")
    return first


def _passphrase_existing(folder: Path) -> str | None:
    env = os.environ.get("RLHF_AUDIT_PASSPHRASE")
    if env:
        return env
    try:
        info = json.loads((folder / "keys.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # load_signer reports the problem
    if not info.get("encrypted", True):
        return None
    if not sys.stdin.isatty():
        raise KeysError("the signing key is encrypted: set RLHF_AUDIT_PASSPHRASE")
    return getpass.getpass(f"passphrase for {folder}: ")


def _cmd_keys_init(args) -> int:
    from .keys import init_keys
    from .witness_keys import init_witness_keys
    witness, store = getattr(args, "witness", False), getattr(args, "store", None)
    if witness and store is not None:
        raise KeysError("--store names a log's key after its origin; a witness key is named after the witness: "
                        "--name NAME")
    if args.name is None and store is None:
        raise KeysError("name the key: --store STORE (named after its origin) or --name NAME")
    passphrase = None if args.no_passphrase else _passphrase_new()
    kw = {} if witness else {"store": store}
    info = (init_witness_keys if witness else init_keys)(
        args.dir, args.name, passphrase=passphrase, no_passphrase=args.no_passphrase, **kw)
    print(f"created keys folder {info.folder} (key {info.name}, id {info.key_id}, "
          f"{'encrypted' if info.encrypted else 'NOT encrypted'})")
    print(f"verifier key: {info.vkey}")
    return 0


def _cmd_snapshot(args) -> int:
    from .keys import load_signer
    from .store import open_store
    folder = Path(args.keys) if args.keys else None
    if folder is None:
        raise KeysError("pass --keys DIR (or set RLHF_AUDIT_KEYS)")
    signer = load_signer(folder, _passphrase_existing(folder))
    with open_store(args.store, keys=folder, pseudonymize=False) as store:
        snap = store.snapshot(signer)
    sys.stdout.write(snap.note)
    return 0


def _open_target(path: str):
    from .bundle import is_bundle, open_bundle
    from .store import open_store
    if is_bundle(path):
        return open_bundle(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such store or bundle")
    return open_store(path, read_only=True, pseudonymize=False)


def _since(value: str | None):
    """``--since``: a tree size (digits), or a file holding the signed note you trusted before."""
    if value is None or not value.strip().isdigit():
        return value
    return int(value)


def _cmd_verify(args) -> int:
    from .bundle import is_bundle, verify_bundle
    from .ledger.verify import resolve_verifiers
    verifiers = resolve_verifiers(args.vkey)
    kw = {"workers": args.workers} if args.workers is not None else {}
    since = _since(args.since)
    if args.witness_quorum is not None and not args.witness:
        raise AuditKitError("--witness-quorum needs the witness keys: pass --witness VKEY (repeatable)")
    if args.witness and not is_bundle(args.target):
        raise AuditKitError(f"--witness checks the cosignatures a bundle keeps (cosignatures/); {args.target} is "
                            "not a bundle folder (export one, let the witness cosign it, verify that)")
    cosigs = []
    if is_bundle(args.target):  # a bundle refused on opening is a failed report too
        report = verify_bundle(args.target, verifiers, since=since, **kw)
        if args.witness and report.ok:
            cosigs = _check_witnesses(args.target, args.witness, args.witness_quorum, report)
    elif since is not None:
        raise AuditKitError(f"--since verifies a bundle folder incrementally; {args.target} is not a bundle "
                            "(verify a store in full, without --since)")
    else:
        target = _open_target(args.target)
        try:
            report = target.verify(verifiers, **kw)
        finally:
            target.close()
    if report.ok:
        root = report.signed_root.hex() if report.signed_root else "-"
        print(f"{report.message}; root {root} ({report.elapsed:.2f} s)")
        _print_identity(report)
        for w in report.warnings:
            print(f"warning: {w}", file=sys.stderr)
        from .report.identity import cosigned_by
        for c in cosigs:
            print(cosigned_by(c))
        return 0
    return print_failure(report.message, report.first_bad_seq, report.damage)


def _check_witnesses(folder: str, witnesses: list[str], quorum: int | None, report) -> list:
    """The pinned witnesses that cosigned the bundle's checkpoint; policy findings go into ``report``."""
    from .bundle import open_bundle
    from .ledger.witness import bundle_cosignatures, resolve_witnesses
    with open_bundle(folder) as bundle:
        cosigs, findings = bundle_cosignatures(bundle, resolve_witnesses(witnesses), quorum)
    report.findings += findings
    return cosigs


def _print_identity(report) -> None:
    """Who signed, from the pinned keys that verified; a bundle's unsigned manifest fields marked as such."""
    from .report.identity import manifest_claims, signers
    for v in signers(report.signed_by):
        print(f"signed by the pinned key {v.name} (key id {v.key_id.hex()})")
    if report.unsigned:  # printed with repr where not plain text: a manifest is anyone's to write
        claims = manifest_claims(report.unsigned, signed_by=report.signed_by, entries_verified=True)
        names = [c.field if c.field.isprintable() and len(c.field) <= 40 else repr(c.field[:40]) for c in claims]
        more = f", ... ({len(names) - 20} more)" if len(names) > 20 else ""
        print("not verified (manifest.json fields no signature covers): " + ", ".join(names[:20]) + more)
        for c, name in zip(claims, names):
            if c.agrees is False:
                print(f"warning: manifest.json states {name} {str(c.value)[:200]!r}, which is not signed and "
                      f"{c.check}", file=sys.stderr)


def print_failure(message: str, first_bad_seq: int | None, damage: str | None) -> int:
    """Print a failed verification (one line on stderr, the seq and damage on stdout); return exit status 3."""
    print(message, file=sys.stderr)
    print(f"first bad seq: {first_bad_seq if first_bad_seq is not None else '-'}; damage: {damage}")
    return EXIT_DAMAGED


def _latest_snapshot(store, covering: int | None = None, size: int | None = None):
    df = store.sql("SELECT seq, tree_size, note FROM snapshot ORDER BY tree_size DESC, seq DESC")
    for seq, tree_size, note in df.rows():
        if (size is not None and tree_size == size) or (covering is not None and tree_size > covering):
            return tree_size, note
    return None


def _cmd_proof_inclusion(args) -> int:
    from .ledger.merkle import leaf_hash
    from .store import open_store
    with open_store(args.store, read_only=True, pseudonymize=False) as store:
        found = _latest_snapshot(store, covering=args.seq, size=args.size)
        if found is None:
            raise AuditKitError(f"no signed snapshot covers seq {args.seq}"
                                + (f" with size {args.size}" if args.size else "")
                                + ": run `rlhf-audit snapshot` first")
        size, note = found
        entry = store.entry(args.seq)
        proof = store.inclusion_proof(args.seq, size)
        root = store.root(size)
    lh = leaf_hash(entry)
    _check_note(args, note, size, root)
    out = {"leaf_index": args.seq, "tree_size": size, "leaf_hash": lh.hex(), "root_hash": root.hex(),
           "proof": [p.hex() for p in proof], "checkpoint": note, "entry": entry.decode("utf-8")}
    print(json.dumps(out, indent=2))
    return 0


def _check_note(args, note: str, size: int, root: bytes) -> None:
    """The note must be for this size and root; with --vkey its signature is checked too."""
    from .ledger.checkpoint import Checkpoint, verify_checkpoint
    from .ledger.verify import resolve_verifiers
    if getattr(args, "vkey", None):
        cp = verify_checkpoint(note, resolve_verifiers(args.vkey))
    else:
        cp = Checkpoint.parse(note[:note.rfind("\n\n") + 1])
    if cp.size != size or cp.root_hash != root:
        from .errors import IntegrityError
        raise IntegrityError(f"the store's root at size {size} differs from its signed checkpoint; "
                             "run `rlhf-audit verify`", damage="root-mismatch", checkpoint=size)


def _cmd_proof_consistency(args) -> int:
    from .store import open_store
    with open_store(args.store, read_only=True, pseudonymize=False) as store:
        old = _latest_snapshot(store, size=args.old)
        new = _latest_snapshot(store, size=args.new)
        if old is None or new is None:
            sizes = store.sql("SELECT tree_size FROM snapshot ORDER BY tree_size")["tree_size"].to_list()
            raise AuditKitError(f"consistency proofs are served between signed snapshot sizes; "
                                f"{args.old if old is None else args.new} is not one (signed sizes: {sizes})")
        proof = store.consistency_proof(args.old, args.new)
        old_root, new_root = store.root(args.old), store.root(args.new)
    _check_note(args, old[1], args.old, old_root)
    _check_note(args, new[1], args.new, new_root)
    out = {"old_size": args.old, "new_size": args.new, "old_root": old_root.hex(), "new_root": new_root.hex(),
           "proof": [p.hex() for p in proof], "old_checkpoint": old[1], "new_checkpoint": new[1]}
    print(json.dumps(out, indent=2))
    return 0


def register(subparsers) -> None:
    """Add ``keys``, ``snapshot``, ``verify`` and ``proof`` to an argparse subparsers object."""
    s = subparsers.add_parser("keys", help="manage the keys folder (signing + pseudonym keys)")
    ks = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = ks.add_parser("init", help="create a keys folder with a new Ed25519 signing key")
    k.add_argument("dir")
    k.add_argument("--name", help="key name (no spaces or '+'); default: the --store's origin, as C2SP asks")
    k.add_argument("--store", help="an existing store: name the key after its checkpoint origin")
    k.add_argument("--no-passphrase", action="store_true",
                   help="store the signing key unencrypted (tests, throwaway demos)")
    k.add_argument("--witness", action="store_true",
                   help="a witness keys folder: a cosigning key for `rlhf-audit witness` (no pseudonym key)")
    k.set_defaults(func=_cmd_keys_init)

    s = subparsers.add_parser("snapshot", help="sign the store's current tree; print the signed note")
    s.add_argument("store")
    s.add_argument("--keys", default=os.environ.get("RLHF_AUDIT_KEYS"),
                   help="keys folder (default $RLHF_AUDIT_KEYS); passphrase from $RLHF_AUDIT_PASSPHRASE")
    s.set_defaults(func=_cmd_snapshot)

    s = subparsers.add_parser("verify", help="verify a store or a snapshot bundle against a pinned key",
                              epilog=_VERIFY_EPILOG)
    s.add_argument("target", metavar="STORE_OR_BUNDLE")
    s.add_argument("--vkey", required=True, help="verifier key string, or a file / keys folder holding it")
    s.add_argument("--workers", type=int, default=None, help="hashing processes (default: cores - 1)")
    s.add_argument("--since", metavar="NOTE_FILE_OR_SIZE", default=None,
                   help="a bundle only: re-derive just the segments after a checkpoint you verified before (its "
                        "signed note file, or a tree size the bundle publishes: a size alone cannot reveal a fork); "
                        "earlier segments are not re-read")
    s.add_argument("--witness", metavar="VKEY", action="append", default=None,
                   help="a bundle only: witness key (string, file or witness keys folder) whose cosignature of the "
                        "checkpoint counts (repeatable)")
    s.add_argument("--witness-quorum", metavar="N", type=int, default=None,
                   help="how many of the --witness keys must have cosigned (default: all of them)")
    s.set_defaults(func=_cmd_verify)

    s = subparsers.add_parser("proof", help="print an RFC 9162 proof with its signed checkpoint (JSON)")
    ps = s.add_subparsers(dest="proof_command", required=True, metavar="KIND")
    p = ps.add_parser("inclusion", help="inclusion proof of event SEQ in the latest snapshot covering it")
    p.add_argument("store")
    p.add_argument("seq", type=int)
    p.add_argument("--size", type=int, default=None, help="use the snapshot of exactly this size")
    p.add_argument("--vkey", default=None, help="also check the note's signature with this key")
    p.set_defaults(func=_cmd_proof_inclusion)
    p = ps.add_parser("consistency", help="consistency proof between two signed snapshot sizes")
    p.add_argument("store")
    p.add_argument("old", type=int)
    p.add_argument("new", type=int)
    p.add_argument("--vkey", default=None, help="also check the notes' signatures with this key")
    p.set_defaults(func=_cmd_proof_consistency)


def main(argv: list[str] | None = None) -> int:
    """Run the ledger subcommands alone (``python -m rlhf_audit_kit.cli_ledger``)."""
    parser = argparse.ArgumentParser(prog="rlhf-audit")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BundleError as e:
        return print_failure(f"FAILED [{e.damage}]: {e}", None, e.damage)
    except (AuditKitError, FileNotFoundError, PermissionError) as e:
        print(f"rlhf-audit: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
