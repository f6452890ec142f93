"""The ``rlhf-audit`` command.

Subcommands: ``init``, ``ingest``, ``info``, ``demo`` (here), ``keys``, ``snapshot``, ``verify``,
``proof`` (:mod:`rlhf_audit_kit.cli_ledger`), ``serve`` (:mod:`rlhf_audit_kit.apps.serve`) and
``export-notebook`` (:mod:`rlhf_audit_kit.report`). Errors print one line and exit non-zero.

Example::

    rlhf-audit init audit.duckdb
    rlhf-audit keys init keys/ --name my-lab
    RLHF_AUDIT_KEYS=keys/ rlhf-audit ingest hh.jsonl --format hh-rlhf --store audit.duckdb
    rlhf-audit info audit.duckdb
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .errors import AuditKitError, ValidationError

# Modules that add their own subcommands with register(subparsers).
_PLUGINS = ("rlhf_audit_kit.cli_ledger", "rlhf_audit_kit.apps.serve", "rlhf_audit_kit.report.cli")


def _cmd_init(args) -> int:
    from .store import open_store
    path = Path(args.store)
    existed = path.exists()
    with open_store(path, origin=args.origin, pseudonymize=False) as store:
        print(f"{'opened existing' if existed else 'created'} store {path} "
              f"(origin {store.origin}, {store.size} events)")
    return 0


def _cmd_ingest(args) -> int:
    from .ingest import load
    from .store import open_store
    if args.format == "jsonl":  # our own rows: one JSON object per line, each with its "kind"
        kind, frame = "event", str(args.path)
    else:
        kind, frame = load(args.path, args.format)
    with open_store(args.store, keys=args.keys) as store:
        seqs = store.extend(frame, kind=None if kind == "event" else kind, progress=True)
    print(f"ingested {len(seqs):,} {kind} events from {args.path} into {args.store} "
          f"(seq {seqs.start}..{seqs.stop - 1})" if len(seqs) else f"nothing to ingest in {args.path}")
    return 0


def _cmd_info(args) -> int:
    from .store import open_store
    with open_store(args.store, read_only=True, pseudonymize=False) as store:
        print(f"store   {store.path}")
        print(f"origin  {store.origin}")
        print(f"events  {store.size:,}")
        for k, n in store.counts().items():
            print(f"  {k:<15} {n:>12,}")
        first, last = store.time_span()
        if first:
            print(f"span    {first:%Y-%m-%d %H:%M:%S} .. {last:%Y-%m-%d %H:%M:%S} UTC")
        snaps = store.sql("SELECT tree_size, root_hash, key_name FROM snapshot ORDER BY seq")
        for size, root, key in snaps.rows():
            print(f"snapshot size {size:,} root {root} key {key}")
    return 0


def _cmd_demo(args) -> int:
    from .demo_run import run_demo
    return run_demo(size=args.size, out=Path(args.out), serve=not args.no_serve, port=args.port,
                    seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf-audit", description="The verifiable flight recorder of an RLHF project.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create an empty audit store")
    s.add_argument("store")
    s.add_argument("--origin", help="checkpoint origin line (default rlhf-audit-kit.local/<store id>)")
    s.set_defaults(func=_cmd_init)

    s = sub.add_parser("ingest", help="ingest a file in a known format into a store")
    s.add_argument("path")
    s.add_argument("--format", required=True,
                   help="hh-rlhf, trl-preference, shp, ultrafeedback, label-studio or jsonl (rows with a 'kind')")
    s.add_argument("--store", required=True)
    s.add_argument("--keys", default=os.environ.get("RLHF_AUDIT_KEYS"),
                   help="keys folder holding the pseudonymisation key (default $RLHF_AUDIT_KEYS)")
    s.set_defaults(func=_cmd_ingest)

    s = sub.add_parser("info", help="summarise a store")
    s.add_argument("store")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("demo", help="build a demo store, sign, verify, export and serve it")
    s.add_argument("--size", type=int, default=20_000, help="approximate number of events")
    s.add_argument("--out", default="rlhf-audit-demo", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--port", type=int, default=5006)
    s.add_argument("--no-serve", action="store_true", help="stop after exporting; do not serve the dashboard")
    s.set_defaults(func=_cmd_demo)

    for mod in _PLUGINS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):  # that part of the kit is not present
                continue
            raise
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValidationError as e:
        print(f"rlhf-audit: invalid input: {e}", file=sys.stderr)
        return 2
    except (AuditKitError, FileNotFoundError, PermissionError) as e:
        print(f"rlhf-audit: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
