"""The ``rlhf-audit witness`` subcommand: cosign a bundle's checkpoint if it extends what was seen.

::

    rlhf-audit keys init wkeys/ --name witness.example.org/w1 --witness   # once: the witness's key
    rlhf-audit witness BUNDLE --keys wkeys/ --log-vkey LOG_VKEY          # first sight pins the log key
    rlhf-audit witness BUNDLE --keys wkeys/                              # later: the pinned key is used

It writes ``BUNDLE/cosignatures/<size>-<witness key id>.note`` (the bundle's signed files stay
byte-identical). Exit status: 0 cosigned; 3 refused (a fork or rollback: both notes are printed on
stderr, keep them), or a bundle refused as unsafe; 1 key, file or state errors; 2 usage errors.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import ForkError, KeysError

__all__ = ["register"]


def _cmd_witness(args) -> int:
    from .cli_ledger import EXIT_DAMAGED, _passphrase_existing
    from .ledger.witness import Witness, write_cosigned_note
    from .witness_keys import STATE_DIR, load_witness_signer
    if not args.keys:
        raise KeysError("pass --keys DIR: the witness keys folder (rlhf-audit keys init DIR --name NAME --witness)")
    keys = Path(args.keys)
    signer = load_witness_signer(keys, _passphrase_existing(keys))
    witness = Witness(Path(args.state) if args.state else keys / STATE_DIR, signer)
    try:
        cosigned = witness.observe_bundle(args.folder, args.log_vkey)
    except ForkError as e:  # a fork or rollback: the notes are the evidence, so they are printed whole
        print(f"rlhf-audit: REFUSED [{e.damage}]: {e}", file=sys.stderr)
        return EXIT_DAMAGED
    path = write_cosigned_note(args.folder, cosigned, signer)
    from .ledger.checkpoint import Checkpoint
    from .ledger.cosignature import split_note, verify_cosignatures
    cp = Checkpoint.parse(split_note(cosigned)[0])
    c = verify_cosignatures(cosigned, [signer.verifier])[0]
    print(f"cosigned {cp.origin} size {cp.size:,} root {cp.root_hash.hex()[:16]}… as {c.name} (key id {c.key_id}) "
          f"at {c.time:%Y-%m-%d %H:%M:%S} UTC; wrote {path}")
    return 0


def register(subparsers) -> None:
    """Add ``witness`` to an argparse subparsers object."""
    s = subparsers.add_parser(
        "witness", help="cosign a bundle's checkpoint if it is consistent with what this witness saw",
        description="Check the bundle's checkpoint against the pinned log key and this witness's state (the last "
                    "checkpoint it cosigned per log), then add a C2SP tlog-cosignature in BUNDLE/cosignatures/. "
                    "A fork (two roots for one size, or a tree that does not extend the seen one) or a rollback "
                    "is refused with both notes quoted.",
        epilog="exit status: 0 cosigned; 3 refused (fork, rollback, unsafe bundle); 1 a key, file or state that "
               "cannot be read; 2 usage errors (a malformed key string); 130 interrupted (every status: "
               "rlhf-audit --help)")
    s.add_argument("folder", metavar="BUNDLE", help="the snapshot bundle folder")
    s.add_argument("--keys", metavar="DIR", required=True, help="the witness keys folder; passphrase from $RLHF_AUDIT_PASSPHRASE")
    s.add_argument("--log-vkey", metavar="VKEY", default=None,
                   help="the log's verifier key (string, file or keys folder): needed the first time this witness "
                        "sees the log, then pinned in its state")
    s.add_argument("--state", metavar="DIR", default=None, help="the witness's state folder (default KEYS/state)")
    s.set_defaults(func=_cmd_witness)
