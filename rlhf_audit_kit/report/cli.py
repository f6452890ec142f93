"""``rlhf-audit export-notebook BUNDLE --out PATH.ipynb (--vkey VKEY | --keys DIR) [--witness VKEY ...] [--html]``.

Writes a compliance notebook bound to the bundle, executes it offline and prints its path (and the
HTML's, with ``--html``). The bundle must verify under the key you pin (``--vkey``: a vkey string or
file; ``--keys``: a keys folder), or nothing is written. There is no default: the key shipped in a
bundle proves nothing about who made it.
"""
from __future__ import annotations

import argparse

from ..errors import AuditKitError, KeysError

__all__ = ["register"]


def _cmd_export_notebook(args: argparse.Namespace) -> int:
    from .compliance import export_compliance_notebook
    if args.vkey is None and args.keys is None:
        raise KeysError("export-notebook needs the verifier key you trust: pass --vkey VKEY (a vkey string "
                        "or file) or --keys DIR (a keys folder); the key shipped in the bundle proves nothing")
    if args.vkey is not None and args.keys is not None:
        raise KeysError("pass either --vkey or --keys, not both")
    if not args.out.endswith(".ipynb"):
        raise AuditKitError(f"--out must name a .ipynb file, got {args.out}")
    if args.html and args.no_execute:
        raise AuditKitError("--html needs the executed notebook: drop --no-execute")
    path = export_compliance_notebook(args.bundle, args.out, template=args.template,
                                      verifier=args.vkey if args.vkey is not None else args.keys,
                                      include_texts=args.include_texts, html=args.html,
                                      execute=not args.no_execute, witnesses=args.witness,
                                      witness_quorum=args.witness_quorum)
    print(path)
    if args.html:
        print(path.with_suffix(".html"))
    return 0


def register(subparsers) -> None:
    """Add the ``export-notebook`` subcommand to the ``rlhf-audit`` parser."""
    from .compliance import TEMPLATES
    s = subparsers.add_parser("export-notebook",
                              help="write a compliance notebook bound to a snapshot bundle, executed")
    s.add_argument("bundle", help="snapshot bundle folder, or its URL (s3://bucket/bundle, gs://...: the notebook's "
                                  "kernel reads it with the file system's own config, e.g. AWS_PROFILE)")
    s.add_argument("--out", required=True, help="notebook to write (PATH.ipynb), outside the bundle folder")
    s.add_argument("--vkey", "--verifier", dest="vkey", metavar="VKEY", default=None,
                   help="verifier key you trust, pinned in the notebook: vkey string or .vkey file "
                        "(this or --keys is required)")
    s.add_argument("--keys", default=None, metavar="DIR", help="keys folder holding the verifier key to pin")
    s.add_argument("--witness", metavar="VKEY", action="append", default=None,
                   help="witness key you trust (string, file or witness keys folder; repeatable): the notebook "
                        "re-checks its cosignature and names it")
    s.add_argument("--witness-quorum", metavar="N", type=int, default=None,
                   help="how many of the --witness keys must have cosigned (default: all of them)")
    s.add_argument("--template", default="eu-ai-act", choices=sorted(TEMPLATES),
                   help="the notebook's template (which regulation's sections)")
    s.add_argument("--html", action="store_true", help="also render PATH.html (offline-friendly)")
    s.add_argument("--include-texts", action="store_true",
                   help="add an appendix with prompt/response texts (may hold personal data)")
    s.add_argument("--no-execute", action="store_true", help="write the notebook without running it")
    s.set_defaults(func=_cmd_export_notebook)
