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

from .errors import AuditKitError, BundleError, ValidationError
from .ingest._common import SourceError

# Modules that add their own subcommands with register(subparsers).
_PLUGINS = ("rlhf_audit_kit.cli_ledger", "rlhf_audit_kit.cli_witness", "rlhf_audit_kit.apps.serve",
            "rlhf_audit_kit.report.cli")


def _cmd_init(args) -> int:
    from .store import open_store
    path = Path(args.store)
    existed = path.exists()
    with open_store(path, origin=args.origin, pseudonymize=False) as store:
        print(f"{'opened existing' if existed else 'created'} store {path} "
              f"(origin {store.origin}, {store.size} events)")
    return 0


# ingest options passed to a format's loader (the loader says which it takes)
_LOADER_OPTIONS = ("dataset", "annotator", "prompt_key", "response_a_key", "response_b_key",
                   "model_a_key", "model_b_key", "from_name", "rationale_from", "guideline_version")


def _cmd_ingest(args) -> int:
    import warnings

    from .ingest import SkippedRowsWarning, SourceError, load
    from .store import open_store
    options = {k: getattr(args, k) for k in _LOADER_OPTIONS if getattr(args, k) is not None}
    if args.format == "jsonl":  # our own rows: one JSON object per line, each with its "kind"
        if options:
            print(f"rlhf-audit: --format jsonl takes none of {', '.join(_flag(k) for k in options)}: "
                  "its rows carry their own fields", file=sys.stderr)
            return 2
        kind, frame = "event", str(args.path)
    else:
        if not Path(args.path).is_file():
            raise FileNotFoundError(f"no such file: {args.path}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedRowsWarning)
            try:  # the file is read before the store is opened: a bad file creates no store
                kind, frame = load(args.path, args.format, **options)
            except (ValidationError, SourceError):
                raise
            except ValueError as e:  # an unknown format, dataset name or option: the user's words
                print(f"rlhf-audit: {_flags_in(str(e))}", file=sys.stderr)
                return 2
        for w in caught:
            print(f"rlhf-audit: warning: {w.message} in {args.path}", file=sys.stderr)
    with open_store(args.store, keys=args.keys) as store:
        seqs = store.extend(frame, kind=None if kind == "event" else kind, progress=True)
    what = "events" if kind == "event" else f"{kind} event" + ("" if len(seqs) == 1 else "s")
    print(f"ingested {len(seqs):,} {what} from {args.path} into {args.store} "
          f"(seq {seqs.start}..{seqs.stop - 1})" if len(seqs) else f"nothing to ingest in {args.path}")
    return 0


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _flags_in(message: str) -> str:
    """A loader's message with its keyword names spelled as this command's flags."""
    for k in _LOADER_OPTIONS:
        message = message.replace(f"'{k}'", _flag(k)).replace(f" {k},", f" {_flag(k)},")
    return message


def _cmd_info(args) -> int:
    from .cli_ledger import _open_target
    with _open_target(args.store) as store:  # a store file or a bundle folder
        print(f"{'bundle' if hasattr(store, 'manifest') else 'store':<7} {store.path}")  # a folder or a URL
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
                    seed=args.seed, overwrite=args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf-audit", description="The verifiable flight recorder of an RLHF project.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create an empty audit store")
    s.add_argument("store")
    s.add_argument("--origin", help="checkpoint origin line (default rlhf-audit-kit.local/<store id>)")
    s.set_defaults(func=_cmd_init)

    from .ingest.formats import FORMATS
    s = sub.add_parser("ingest", help="ingest a file in a known format into a store",
                       description="Load a file in a public RLHF data format (or the kit's own JSON lines) "
                                   "into a store. Formats: " + "; ".join(
                                       f"{f.name} ({f.summary})" for f in FORMATS.values())
                                   + "; jsonl (the kit's own rows, each with its 'kind').")
    s.add_argument("path", help="the file (.json, .jsonl, .parquet, .csv for label-studio; .gz allowed)")
    s.add_argument("--format", required=True, choices=[*FORMATS, "jsonl"], metavar="FORMAT",
                   help=f"one of {', '.join(FORMATS)} or jsonl")
    s.add_argument("--store", required=True, help="the store file (created if missing)")
    s.add_argument("--keys", default=os.environ.get("RLHF_AUDIT_KEYS"),
                   help="keys folder holding the pseudonymisation key (default $RLHF_AUDIT_KEYS)")
    s.add_argument("--dataset", metavar="NAME",
                   help="dataset name (NAME or NAME@VERSION) recorded in every row and prefixed to its "
                        "id (default: the file's folder and name, e.g. harmless-base/test)")
    s.add_argument("--annotator", help="rater recorded in every row, for formats that name none")
    ls = s.add_argument_group("label-studio options")
    ls.add_argument("--prompt-key", help="data key of the prompt (default prompt)")
    ls.add_argument("--response-a-key", help="data key of the left item (default answer1)")
    ls.add_argument("--response-b-key", help="data key of the right item (default answer2)")
    ls.add_argument("--model-a-key", help="data key naming the left item's model")
    ls.add_argument("--model-b-key", help="data key naming the right item's model")
    ls.add_argument("--from-name", help="name of the <Pairwise> tag, when a project has several")
    ls.add_argument("--rationale-from", metavar="NAME", help="name of a <TextArea> whose text is the rationale")
    ls.add_argument("--guideline-version", help="guideline version recorded in every row")
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
    s.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo's output in --out (files the demo did not create are kept)")
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
    except SourceError as e:  # a file that is no data (LFS pointer, a line that is not JSON)
        print(f"rlhf-audit: {e}", file=sys.stderr)
        return 2
    except BundleError as e:  # a hostile bundle: one FAILED line, exit 3 as verify
        from .cli_ledger import print_failure
        return print_failure(f"FAILED [{e.damage}]: {e}", None, e.damage)
    except (AuditKitError, FileNotFoundError, PermissionError) as e:
        print(f"rlhf-audit: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
