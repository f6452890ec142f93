"""``rlhf-audit export-notebook BUNDLE --out PATH.ipynb [--vkey VKEY] [--html]``.

Writes a compliance notebook bound to the bundle, executes it offline and prints its path (and the
HTML's, with ``--html``). The bundle must verify under the pinned key (``--vkey``: a vkey string,
a vkey file or a keys folder; default the key shipped in the bundle), or nothing is written.
"""
from __future__ import annotations

import argparse

__all__ = ["register"]


def _cmd_export_notebook(args: argparse.Namespace) -> int:
    from .compliance import export_compliance_notebook
    path = export_compliance_notebook(args.bundle, args.out, template=args.template, verifier=args.vkey,
                                      include_texts=args.include_texts, html=args.html,
                                      execute=not args.no_execute)
    print(path)
    if args.html:
        print(path.with_suffix(".html"))
    return 0


def register(subparsers) -> None:
    """Add the ``export-notebook`` subcommand to the ``rlhf-audit`` parser."""
    from .compliance import TEMPLATES
    s = subparsers.add_parser("export-notebook",
                              help="write a compliance notebook bound to a snapshot bundle, executed")
    s.add_argument("bundle", help="snapshot bundle folder")
    s.add_argument("--out", required=True, help="notebook to write (PATH.ipynb)")
    s.add_argument("--vkey", default=None,
                   help="verifier key to pin: vkey string, vkey file or keys folder "
                        "(default: the key shipped in the bundle)")
    s.add_argument("--template", default="eu-ai-act", choices=sorted(TEMPLATES))
    s.add_argument("--html", action="store_true", help="also render PATH.html (offline-friendly)")
    s.add_argument("--include-texts", action="store_true",
                   help="add an appendix with prompt/response texts (may hold personal data)")
    s.add_argument("--no-execute", action="store_true", help="write the notebook without running it")
    s.set_defaults(func=_cmd_export_notebook)
