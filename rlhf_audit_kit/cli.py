"""The ``rlhf-audit`` command.

Subcommands: ``init``, ``ingest``, ``info``, ``demo`` (here), ``keys``, ``snapshot``, ``verify``,
``proof`` (:mod:`rlhf_audit_kit.cli_ledger`), ``serve`` (:mod:`rlhf_audit_kit.apps.serve`) and
``export-notebook`` (:mod:`rlhf_audit_kit.report`). Errors print one line on stderr and exit
with a documented non-zero status (:data:`EXIT_CODES`), never a traceback for a user's mistake.

Example::

    rlhf-audit init audit.duckdb
    rlhf-audit keys init keys/ --name my-lab
    RLHF_AUDIT_KEYS=keys/ rlhf-audit ingest hh.jsonl --format hh-rlhf --store audit.duckdb
    rlhf-audit info audit.duckdb
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import re
import sys
import textwrap
from pathlib import Path

from .errors import AuditKitError, BundleError, ValidationError
from .ingest._common import SourceError

# Modules that add their own subcommands with register(subparsers).
_PLUGINS = ("rlhf_audit_kit.cli_ledger", "rlhf_audit_kit.cli_witness", "rlhf_audit_kit.apps.serve",
            "rlhf_audit_kit.report.cli")

#: Every exit status of ``rlhf-audit`` (shown by ``rlhf-audit --help`` and in docs/cli.md).
EXIT_CODES = {
    0: "success (verify: the record verified)",
    1: "the command could not run: a missing or unreadable file, store, bundle or key, a wrong "
       "passphrase, a locked store, a proof no signed checkpoint backs",
    2: "usage or input error: an unknown command, option or format, a malformed key string, a bad "
       "row or line in an input file (named)",
    3: "verify, witness: the record is damaged, a fork or rollback was refused, or a bundle was refused "
       "as unsafe, oversized or malformed (one FAILED line on stderr)",
    130: "interrupted (Ctrl-C)",
    141: "the output's reader went away (e.g. piped into head); the rest of the output is dropped",
}
_EPILOG = "exit status:\n" + "\n".join(f"  {code:<4}{what}" for code, what in EXIT_CODES.items())
_LEAF_EPILOG = ("exit status: 0 success; 1 the command could not run (file, store or key); 2 usage or input "
                "error; 130 interrupted (every status: rlhf-audit --help)")

_NO_KEYS = ("no pseudonymisation key: annotator ids must not reach the store in the clear. Pass --keys DIR "
            "(create DIR with `rlhf-audit keys init DIR`) or set RLHF_AUDIT_KEYS=DIR")


def plural(n: int, noun: str) -> str:
    """``n`` and ``noun``, with an s unless n is 1.

    >>> plural(1, "event"), plural(20_006, "annotation event")
    ('1 event', '20,006 annotation events')
    """
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


@contextlib.contextmanager
def _store_of_command(path, **kw):
    """open_store for a command that writes: if the command created the file and then fails, the file
    is removed again (a store that existed before is never touched)."""
    from .store import open_store
    path = Path(path)
    created = not path.exists()
    try:
        with open_store(path, **kw) as store:
            yield store
    except BaseException:
        if created:
            for f in (path, path.with_name(path.name + ".wal")):
                f.unlink(missing_ok=True)
        raise


def _origin_arg(value: str) -> str:
    """``init --origin``: one line without spaces or '+' (C2SP tlog-checkpoint; the signing key is named after it)."""
    from .ledger.checkpoint import origin_problem
    problem = origin_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _cmd_init(args) -> int:
    path = Path(args.store)
    existed = path.exists()
    with _store_of_command(path, origin=args.origin, pseudonymize=False) as store:
        print(f"{'opened existing' if existed else 'created'} store {path} "
              f"(origin {store.origin}, {plural(store.size, 'event')})")
    return 0


# ingest options passed to a format's loader (the loader says which it takes)
_LOADER_OPTIONS = ("dataset", "annotator", "prompt_key", "response_a_key", "response_b_key",
                   "model_a_key", "model_b_key", "from_name", "rationale_from", "guideline_version")


def _cmd_ingest(args) -> int:
    import warnings

    from .errors import KeysError
    from .ingest import SkippedRowsWarning, SourceError, load
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
    with _store_of_command(args.store, keys=args.keys) as store:
        try:
            seqs = store.extend(frame, kind=None if kind == "event" else kind, progress=True)
        except KeysError:
            if store.keys_folder is not None:
                raise
            raise KeysError(_NO_KEYS) from None  # the store's own message speaks of open_store(keys=)
    what = plural(len(seqs), "event" if kind == "event" else f"{kind} event")
    print(f"ingested {what} from {args.path} into {args.store} (seq {seqs.start}..{seqs.stop - 1})"
          if len(seqs) else f"nothing to ingest in {args.path}")
    return 0


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _flags_in(message: str) -> str:
    """A loader's message with its keyword names spelled as this command's flags."""
    for k in _LOADER_OPTIONS:
        message = message.replace(f"'{k}'", _flag(k)).replace(f" {k},", f" {_flag(k)},")
    return message


def _event_times(store, kinds) -> tuple | None:
    """(first, last, ["kind.field", ...]) over the events' own time fields (submitted_at, logged_at, ...)."""
    from .schema import KINDS
    parts, names = [], []
    for kind in kinds:
        fields = [f.name for f in KINDS[kind].fields if f.type == "ts"] if kind in KINDS else []
        if fields:  # names from the schema, never from the user; older stores may lack a field
            have = set(store.sql(f'SELECT * FROM "{kind}" LIMIT 0').columns)
            parts += [f'SELECT "{name}" AS t FROM "{kind}"' for name in fields if name in have]
            names += [f"{kind}.{name}" for name in fields if name in have]
    if not parts:
        return None
    first, last = store.sql(f"SELECT min(t), max(t) FROM ({' UNION ALL '.join(parts)})").row(0)
    return (first, last, names) if first is not None else None


def _when(first, last) -> str:
    return f"{first:%Y-%m-%d %H:%M:%S} .. {last:%Y-%m-%d %H:%M:%S} UTC"


def _cmd_info(args) -> int:
    from .cli_ledger import _open_target
    with _open_target(args.store) as store:  # a store file or a bundle folder
        print(f"{'bundle' if hasattr(store, 'manifest') else 'store':<7} {store.path}")  # a folder or a URL
        print(f"origin  {store.origin}")
        print(f"events  {store.size:,}")
        counts = store.counts()
        for k, n in counts.items():
            print(f"  {k:<15} {n:>12,}")
        first, last = store.time_span()
        if first:
            print(f"span    {_when(first, last)} (when the store recorded the events)")
        times = _event_times(store, counts)
        if times:
            print(f"times   {_when(*times[:2])} (the events' own times: {', '.join(times[2])})")
        snaps = store.sql("SELECT tree_size, root_hash, key_name FROM snapshot ORDER BY seq")
        for size, root, key in snaps.rows():
            print(f"snapshot size {size:,} root {root} key {key}")
    return 0


def _cmd_demo(args) -> int:
    from .demo_run import run_demo
    return run_demo(size=args.size, out=Path(args.out), serve=not args.no_serve, port=args.port,
                    seed=args.seed, overwrite=args.overwrite)


_RST = ((r":[a-z]+:`~[\w.]*?(\w+)`", r"\1"),                # :class:`~a.b.C` -> C
        (r":[a-z]+:`([^`<]*?)\s*(?:<[^>]*>)?`", r"\1"),      # :func:`a.b` -> a.b, :ref:`text <target>` -> text
        (r"``(.+?)``", r"\1"), (r"\*\*(.+?)\*\*", r"\1"), (r"::$", ":"))


def plain(text: str) -> str:
    """reStructuredText markup taken out of a docstring shown as help text.

    >>> plain("a **followed** folder, ``--vkey`` and :class:`~rlhf_audit_kit.apps.AuditDashboard`::")
    'a followed folder, --vkey and AuditDashboard:'
    """
    for pattern, repl in _RST:
        text = re.sub(pattern, repl, text, flags=re.M)
    return text


class _HelpFormatter(argparse.HelpFormatter):
    """Help as plain text: paragraphs refilled one by one (an indented list item by item), no
    reStructuredText, and each option's default shown unless its help already says it."""

    def _fill_text(self, text, width, indent):
        paragraphs = re.split(r"\n\s*\n", plain(textwrap.dedent(text)).strip())
        return "\n\n".join(self._fill_paragraph(par, width, indent) for par in paragraphs)

    @staticmethod
    def _fill_paragraph(par: str, width: int, indent: str) -> str:
        lines = par.splitlines()
        if not any(line.startswith(" ") for line in lines):
            return textwrap.fill(" ".join(par.split()), width, initial_indent=indent, subsequent_indent=indent,
                                 break_on_hyphens=False)
        out = []  # a list ("  0   success"): each item wrapped on its own, continued under its text
        for line in lines:
            lead = re.match(r"\s*\S+\s+", line)
            out.append(textwrap.fill(line, width, initial_indent=indent, break_on_hyphens=False,
                                     subsequent_indent=indent + " " * (lead.end() if lead else 0)))
        return "\n".join(out)

    def _split_lines(self, text, width):  # option help: never split a word such as hh-rlhf at its hyphen
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _get_help_string(self, action):
        text = plain(action.help or "")
        default = action.default
        if (default is not None and default is not False and default is not argparse.SUPPRESS
                and "default" not in text and (action.option_strings or action.nargs in ("?", "*"))):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: what is wrong, a likely fix, where to look."""

    def error(self, message):
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m[2])
            close = [c for c in choices if c.startswith(m[1])] or difflib.get_close_matches(m[1], choices, 1, 0.5)
            if close:
                message += f"; did you mean {close[0]}?"
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parsers(parser: argparse.ArgumentParser):
    """The parser and every subcommand's parser below it, each once."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in {id(s): s for s in action.choices.values()}.values():
                yield from _parsers(sub)


# Options that take a key string, file or keys folder, in any subcommand: a log's key, or a witness's.
_KEY_OPTIONS = {"--vkey": "log", "--verifier": "log", "--log-vkey": "log", "--witness": "witness"}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .cli_ledger import vkey_arg, witness_vkey_arg
    p = _Parser(prog="rlhf-audit", description="The verifiable flight recorder of an RLHF project.",
                epilog=_EPILOG, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init", help="create an empty audit store")
    s.add_argument("store", help="the store file to create (its folder must exist)")
    s.add_argument("--origin", type=_origin_arg,
                   help="checkpoint origin line, e.g. example.org/my-lab/rlhf (default rlhf-audit-kit.local/<store id>)")
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

    s = sub.add_parser("info", help="summarise a store or a bundle: events per kind, times, signed snapshots")
    from .cli_ledger import STORE_OR_BUNDLE_HELP
    s.add_argument("store", metavar="STORE_OR_BUNDLE", help=STORE_OR_BUNDLE_HELP)
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("demo", help="build a demo store, sign, verify, export and serve it")
    s.add_argument("--size", type=int, default=20_000, help="approximate number of events")
    s.add_argument("--out", default="rlhf-audit-demo", help="output folder")
    s.add_argument("--seed", type=int, default=0, help="random seed of the simulated campaign")
    s.add_argument("--port", type=int, default=5006, help="port of the served dashboard")
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
    for parser in _parsers(p):  # one look for every subcommand's help, one parser for every key option
        parser.formatter_class = _HelpFormatter
        if parser.epilog is None and parser._subparsers is None:  # verify, witness: their own, with 3
            parser.epilog = _LEAF_EPILOG
        for action in parser._actions:
            kinds = {_KEY_OPTIONS[o] for o in action.option_strings if o in _KEY_OPTIONS}
            if kinds and action.nargs != 0:  # keys init --witness is a flag
                action.type = witness_vkey_arg if kinds == {"witness"} else vkey_arg
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``rlhf-audit`` with ``argv``; returns the exit status (:data:`EXIT_CODES`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as an "Exception ignored" at exit
        return code
    except BrokenPipeError:  # `rlhf-audit proof ... | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
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
