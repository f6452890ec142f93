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
import base64
import binascii
import getpass
import json
import os
import re
import sys
from pathlib import Path

from .errors import AuditKitError, KeysError

__all__ = ["register", "main", "vkey_arg", "witness_vkey_arg", "EXIT_DAMAGED"]

#: Exit status of ``verify`` (and of any command given a bundle it refuses): the record is damaged,
#: or the bundle is unsafe, oversized or malformed. 1: key, file or store errors; 2: usage errors.
EXIT_DAMAGED = 3
_VERIFY_EPILOG = ("exit status: 0 verified; 3 damaged, or a bundle refused as unsafe, oversized or malformed "
                  "(one line 'FAILED ... [damage]: ...; first bad seq: N; damage: KIND' on stderr); 1 a key, "
                  "file or store that cannot be read; 2 usage errors (a malformed key string); "
                  "130 interrupted (every status: rlhf-audit --help)")


def _vkey_fault(value: str, witness: bool = False) -> str | None:
    """What is wrong with a key string ``name+keyid+key`` (a log's verifier key, or with ``witness`` a
    witness's cosignature key), naming the part at fault; None if nothing."""
    from .errors import KeysError
    from .ledger.checkpoint import Verifier, validate_key_name
    from .ledger.cosignature import WitnessVerifier
    alg, what = (0x04, "witness key") if witness else (0x01, "verifier key")
    if value.startswith("PRIVATE+KEY+"):  # never quoted: it is a secret
        return f"this is a signing (private) key: pass its {what} (the keys folder's verifier.vkey)"
    parts = value.split("+", 2)  # the name has no '+', base64 may
    if len(parts) != 3:
        return f"a key string has three parts name+keyid+key, this has {len(parts)}"
    name, key_id, key = parts
    try:
        validate_key_name(name)
    except KeysError as e:
        return f"its name (the first part) is wrong: {e}"
    if not re.fullmatch(r"[0-9a-f]{8}", key_id):
        return f"its key id (the second part) {key_id!r} is not 8 lowercase hex digits"
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error:
        return "its key (the third part) is not standard padded base64 (A-Z a-z 0-9 + / =): cut short?"
    if len(raw) != 33:
        return (f"its key (the third part) holds {len(raw)} bytes; an Ed25519 {what} holds 33 "
                f"({alg:#04x}, then 32 bytes): cut short?")
    if raw[0] != alg:
        known = {0x01: "a log's verifier key", 0x04: "a witness key"}.get(raw[0])
        return (f"its key (the third part) starts with byte {raw[0]:#04x}, not {alg:#04x} ({what})"
                + (f": this is {known}" if known else ": mistyped?"))
    try:
        (WitnessVerifier if witness else Verifier).from_vkey(value)
    except KeysError as e:  # a key id of another key, or non-canonical base64
        return str(e)
    return None


def vkey_arg(value: str, *, witness: bool = False) -> str:
    """argparse type of every verifier-key option: an existing file or folder passes as it is; any other
    value must be a well-formed key string ``name+keyid+key``, else a usage error names the part at fault.

    >>> vkey_arg("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[:12]
    'PeterNeumann'
    """
    if os.path.exists(value):
        return value
    fault = _vkey_fault(value.strip(), witness)
    if fault is None:
        return value
    what = "witness key" if witness else "verifier key"
    if "+" not in value:  # a path most likely
        raise argparse.ArgumentTypeError(f"no file or keys folder {value!r}, and not a {what} string: {fault}")
    raise argparse.ArgumentTypeError(f"malformed {what} string: {fault}")


def witness_vkey_arg(value: str) -> str:
    """:func:`vkey_arg` for a witness's key (C2SP cosignature/v1, type 0x04)."""
    return vkey_arg(value, witness=True)


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
    if not Path(args.store).is_file():  # a mistyped path would otherwise become a new, signed, empty store
        raise AuditKitError(f"no store at {args.store}: create it with `rlhf-audit init {args.store}` "
                            "(or check the path)")
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
    if args.scheduler is not None:
        if not is_bundle(args.target):
            raise AuditKitError(f"--scheduler verifies a bundle's segments on a Dask cluster; {args.target} is not a "
                                "bundle (export one, or verify the store here, without --scheduler)")
        kw["scheduler"] = args.scheduler
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
    """Print a failed verification as one line on stderr (ending in the first bad seq and the damage
    kind, for scripts); return exit status 3."""
    print(f"{message}; first bad seq: {first_bad_seq if first_bad_seq is not None else '-'}; damage: {damage}",
          file=sys.stderr)
    return EXIT_DAMAGED


def _signed_snapshot(store, *, size: int | None = None, covering: int | None = None):
    """(tree size, note) of the signed snapshot of exactly ``size``, or else of the latest one covering
    seq ``covering``; None if there is none."""
    if size is not None:
        df = store.sql("SELECT tree_size, note FROM snapshot WHERE tree_size = ? ORDER BY seq DESC LIMIT 1", [size])
    else:
        df = store.sql("SELECT tree_size, note FROM snapshot WHERE tree_size > ? "
                       "ORDER BY tree_size DESC, seq DESC LIMIT 1", [covering])
    return df.row(0) if df.height else None


def _signed_sizes(store) -> str:
    sizes = store.sql("SELECT DISTINCT tree_size FROM snapshot ORDER BY tree_size")["tree_size"].to_list()
    return ", ".join(f"{n}" for n in sizes) if sizes else "none: run `rlhf-audit snapshot` first"


def _cmd_proof_inclusion(args) -> int:
    from .ledger.merkle import leaf_hash
    from .store import open_store
    with open_store(args.store, read_only=True, pseudonymize=False) as store:
        if args.size is not None and args.size <= args.seq:
            raise AuditKitError(f"a tree of size {args.size} does not hold seq {args.seq} (seqs 0..{args.size - 1})")
        found = _signed_snapshot(store, size=args.size, covering=args.seq)
        if found is None:
            raise AuditKitError((f"no signed checkpoint of size {args.size}" if args.size is not None
                                 else f"no signed snapshot covers seq {args.seq}")
                                + f" (signed sizes: {_signed_sizes(store)})")
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
        old = _signed_snapshot(store, size=args.old)
        new = _signed_snapshot(store, size=args.new)
        if old is None or new is None:
            raise AuditKitError(f"consistency proofs are served between signed snapshot sizes; "
                                f"{args.old if old is None else args.new} is not one "
                                f"(signed sizes: {_signed_sizes(store)})")
        proof = store.consistency_proof(args.old, args.new)
        old_root, new_root = store.root(args.old), store.root(args.new)
    _check_note(args, old[1], args.old, old_root)
    _check_note(args, new[1], args.new, new_root)
    out = {"old_size": args.old, "new_size": args.new, "old_root": old_root.hex(), "new_root": new_root.hex(),
           "proof": [p.hex() for p in proof], "old_checkpoint": old[1], "new_checkpoint": new[1]}
    print(json.dumps(out, indent=2))
    return 0


#: The positional of every command that reads a store or a bundle (verify, info).
STORE_OR_BUNDLE_HELP = "a store file, or a snapshot bundle: a folder or an fsspec URL (s3://, gs://, ...)"


def register(subparsers) -> None:
    """Add ``keys``, ``snapshot``, ``verify`` and ``proof`` to an argparse subparsers object."""
    s = subparsers.add_parser("keys", help="manage the keys folder (signing + pseudonym keys)")
    ks = s.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = ks.add_parser("init", help="create a keys folder with a new Ed25519 signing key")
    k.add_argument("dir", help="the keys folder to create (it must not exist yet)")
    k.add_argument("--name", help="key name (no spaces or '+'); default: the --store's origin, as C2SP asks")
    k.add_argument("--store", help="an existing store: name the key after its checkpoint origin")
    k.add_argument("--no-passphrase", action="store_true",
                   help="store the signing key unencrypted (tests, throwaway demos)")
    k.add_argument("--witness", action="store_true",
                   help="a witness keys folder: a cosigning key for `rlhf-audit witness` (no pseudonym key)")
    k.set_defaults(func=_cmd_keys_init)

    s = subparsers.add_parser("snapshot", help="sign the store's current tree; print the signed note")
    s.add_argument("store", help="the store file (it must exist)")
    s.add_argument("--keys", default=os.environ.get("RLHF_AUDIT_KEYS"),
                   help="keys folder (default $RLHF_AUDIT_KEYS); passphrase from $RLHF_AUDIT_PASSPHRASE")
    s.set_defaults(func=_cmd_snapshot)

    s = subparsers.add_parser("verify", help="verify a store or a snapshot bundle against a pinned key",
                              epilog=_VERIFY_EPILOG)
    s.add_argument("target", metavar="STORE_OR_BUNDLE", help=STORE_OR_BUNDLE_HELP)
    s.add_argument("--vkey", "--verifier", dest="vkey", metavar="VKEY", required=True,
                   help="the verifier key you trust: a key string name+keyid+key, or a file or keys folder holding it")
    s.add_argument("--workers", type=int, default=None,
                   help="processes: for a bundle of 200,000 events or more, each re-derives runs of its segments "
                        "(default: one per core; 0: all in this process); for a store or a small bundle, hashing "
                        "processes (default: cores - 1)")
    s.add_argument("--since", metavar="NOTE_FILE_OR_SIZE", default=None,
                   help="a bundle only: re-derive just the segments after a checkpoint you verified before (its "
                        "signed note file, or a tree size the bundle publishes: a size alone cannot reveal a fork); "
                        "earlier segments are not re-read")
    s.add_argument("--scheduler", metavar="ADDR", default=None,
                   help="a bundle only: re-derive its segments in parallel on the Dask cluster of this scheduler "
                        "(tcp://HOST:8786; needs the dask extra); the report is the same as here")
    s.add_argument("--witness", metavar="VKEY", action="append", default=None,
                   help="a bundle only: witness key (string, file or witness keys folder) whose cosignature of the "
                        "checkpoint counts (repeatable)")
    s.add_argument("--witness-quorum", metavar="N", type=int, default=None,
                   help="how many of the --witness keys must have cosigned (default: all of them)")
    s.set_defaults(func=_cmd_verify)

    s = subparsers.add_parser("proof", help="print an RFC 9162 proof with its signed checkpoint (JSON)")
    ps = s.add_subparsers(dest="proof_command", required=True, metavar="KIND")
    p = ps.add_parser("inclusion", help="inclusion proof of event SEQ in the latest snapshot covering it")
    p.add_argument("store", help="the store file")
    p.add_argument("seq", type=int, help="the event's sequence number (0-based)")
    p.add_argument("--size", type=int, default=None,
                   help="prove against the signed checkpoint of exactly this tree size (refused if none was signed)")
    p.add_argument("--vkey", "--verifier", dest="vkey", metavar="VKEY", default=None,
                   help="also check the note's signature with this key")
    p.set_defaults(func=_cmd_proof_inclusion)
    p = ps.add_parser("consistency", help="consistency proof between two signed snapshot sizes")
    p.add_argument("store", help="the store file")
    p.add_argument("old", type=int, help="the smaller signed tree size")
    p.add_argument("new", type=int, help="the larger signed tree size")
    p.add_argument("--vkey", "--verifier", dest="vkey", metavar="VKEY", default=None,
                   help="also check the notes' signatures with this key")
    p.set_defaults(func=_cmd_proof_consistency)


def main(argv: list[str] | None = None) -> int:
    """``python -m rlhf_audit_kit.cli_ledger ...``: the same as ``rlhf-audit ...`` (one error handling)."""
    from .cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
