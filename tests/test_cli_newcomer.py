"""The command line as a newcomer meets it (issue 15): a mistake is one line on stderr with a documented
exit status and never a traceback; --vkey faults named; failed first commands leave no store; exact
proof sizes; a closed pipe; plain, complete --help; counted nouns and the events' own times in info."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from factories import annotation
from rlhf_audit_kit import AuditKitError, __version__, open_store
from rlhf_audit_kit.keys import init_keys

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "tests" / "fixtures" / "formats" / "hh_rlhf.jsonl"


def cli(*args, env=None, ok=None):
    """Run ``rlhf-audit ARGS`` in a subprocess; the output never holds a traceback."""
    e = {k: v for k, v in os.environ.items() if k not in ("RLHF_AUDIT_KEYS", "RLHF_AUDIT_PASSPHRASE")}
    p = subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", *map(str, args)], capture_output=True,
                       text=True, env={**e, "COLUMNS": "100", **(env or {})}, timeout=120)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    return p


def run(capsys, *args) -> SimpleNamespace:
    """Run ``rlhf-audit ARGS`` in this process (for what a command prints, not how the process ends)."""
    from rlhf_audit_kit.cli import main
    capsys.readouterr()
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def one_line(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """A store with annotations and train steps (their own times), two signed snapshots, a bundle."""
    d = tmp_path_factory.mktemp("newcomer")
    keys = d / "keys"
    init_keys(keys, "newcomer.example/log", no_passphrase=True)
    path = d / "audit.duckdb"
    steps = [{"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": i, "metrics": {"loss": 1.0},
              "logged_at": dt.datetime(2026, 1, 3, 9, 0, i)} for i in range(2)]
    with open_store(path, keys=keys) as s:
        s.extend([annotation(i) for i in range(3)] + steps)
        first = s.snapshot(keys)
        s.extend([annotation(i) for i in range(3, 6)])
        second = s.snapshot(keys)
        second.export(d / "bundle").close()
    return SimpleNamespace(dir=d, keys=keys, vkey=(keys / "verifier.vkey").read_text().strip(), store=path,
                           bundle=d / "bundle", sizes=(first.checkpoint.size, second.checkpoint.size))


# ------------------------------------------------------------------ 1. no traceback for a mistake
def test_ingest_malformed_line_names_the_file_and_line(tmp_path):
    bad = tmp_path / "BAD.jsonl"
    good = HH.read_text().splitlines()
    bad.write_text("\n".join([good[0], '{"chosen": "x", "rejected": ', *good[1:]]) + "\n")
    p = cli("ingest", bad, "--format", "hh-rlhf", "--store", tmp_path / "X.duckdb")
    assert p.returncode == 2 and "BAD.jsonl" in one_line(p) and "line 2" in one_line(p)
    assert not (tmp_path / "X.duckdb").exists()


def test_unknown_format_is_one_line_listing_every_format(tmp_path):
    p = cli("ingest", HH, "--format", "hh", "--store", tmp_path / "X.duckdb")
    line = one_line(p)
    assert p.returncode == 2 and "'hh'" in line and "did you mean hh-rlhf" in line
    for name in ("hh-rlhf", "label-studio", "jsonl"):
        assert f"'{name}'" in line


def test_info_reads_a_bundle_folder_with_the_events_own_times(ledger, capsys):
    p = run(capsys, "info", ledger.bundle)
    assert p.returncode == 0 and p.stdout.startswith("bundle ") and f"events  {ledger.sizes[1]}" in p.stdout
    assert "span " in p.stdout and "(when the store recorded the events)" in p.stdout
    # the events' own times: 12:00:00 (first shown_at) .. 09:00:01 on Jan 3 (last logged_at)
    times = next(line for line in p.stdout.splitlines() if line.startswith("times"))
    assert "2026-01-01 12:00:00 .. 2026-01-03 09:00:01 UTC" in times
    assert "annotation.submitted_at" in times and "train_step.logged_at" in times


def test_missing_store_paths_are_named_in_the_kits_error(tmp_path):
    nowhere = tmp_path / "no" / "such" / "x.duckdb"
    p = cli("info", tmp_path / "missing.duckdb")
    assert p.returncode == 1 and "missing.duckdb" in one_line(p)
    p = cli("init", nowhere)
    assert p.returncode == 1 and str(nowhere) in one_line(p)
    with pytest.raises(AuditKitError, match=re.escape(str(nowhere))) as e:
        open_store(nowhere)
    assert not isinstance(e.value, duckdb.Error)


@pytest.mark.parametrize("origin", ["", "my lab/rlhf", "a\nb", "a+b"])
def test_init_refuses_an_origin_no_checkpoint_can_carry(tmp_path, capsys, origin):
    with pytest.raises(SystemExit) as e:
        run(capsys, "init", tmp_path / "o.duckdb", "--origin", origin)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is not an origin" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.duckdb").exists()


# ------------------------------------------------------------------ 2. a garbled --vkey
def test_garbled_vkey_is_told_apart_from_a_missing_file(ledger, tmp_path):
    from rlhf_audit_kit.cli_ledger import vkey_arg
    with pytest.raises(argparse.ArgumentTypeError, match="no file or keys folder .*none.vkey"):
        vkey_arg(str(tmp_path / "none.vkey"))
    p = cli("verify", ledger.store, "--vkey", ledger.vkey[:-6])  # copied short
    assert p.returncode == 2 and "malformed verifier key string" in one_line(p)
    assert "the third part" in one_line(p) and "No such file" not in p.stderr


@pytest.mark.parametrize("garble, says", [
    (lambda name, kid, key: f"{name}+{kid}", "three parts"),
    (lambda name, kid, key: f"{name}+{kid[:7]}+{key}", "key id (the second part)"),
    (lambda name, kid, key: f"{name}+{kid}+{key[:-4]}====", "the third part"),
    (lambda name, kid, key: f"{name}+{kid}+B{key[1:]}", "not 0x01"),
    (lambda name, kid, key: f"{name}+{'0' * 8}+{key}", "does not match its name and key"),
    (lambda name, kid, key: f"PRIVATE+KEY+{name}+{kid}+{key}", "signing (private) key"),
])
def test_vkey_faults_name_the_part(ledger, garble, says):
    from rlhf_audit_kit.cli_ledger import vkey_arg
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(says)) as e:
        vkey_arg(garble(*ledger.vkey.split("+", 2)))
    assert "PRIVATE" not in str(e.value)  # a secret key string is never echoed
    assert vkey_arg(ledger.vkey) == ledger.vkey and vkey_arg(str(ledger.keys)) == str(ledger.keys)


# ------------------------------------------------------------------ 3. exit codes, one stream
def test_every_exit_code_is_documented_in_help_and_docs():
    from rlhf_audit_kit.cli import EXIT_CODES, _parsers, build_parser
    parser = build_parser()
    text = parser.format_help()
    docs = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for code in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s+\S", text, re.M), code
        assert f"| {code} |" in docs, code
    for p in _parsers(parser):
        if p._subparsers is None:  # every command's own help says its statuses
            assert "exit status:" in p.format_help(), p.prog
    assert "| 3 |" in docs and "| 141 |" in docs


def test_a_failed_verification_is_one_line_on_stderr(ledger, tmp_path):
    bad = shutil.copy(ledger.store, tmp_path / "bad.duckdb")
    with duckdb.connect(str(bad)) as con:
        con.execute("UPDATE annotation SET prompt = prompt || '!' WHERE seq = 1")
    p = cli("verify", bad, "--vkey", ledger.vkey)
    assert p.returncode == 3 and p.stdout == ""
    line = one_line(p)
    assert line.startswith("FAILED") and line.endswith("first bad seq: 1; damage: typed-row-mismatch")


# ------------------------------------------------------------------ 4. failed first ingest
def test_a_failed_first_ingest_removes_the_store_it_created(tmp_path):
    new = tmp_path / "new.duckdb"
    p = cli("ingest", HH, "--format", "hh-rlhf", "--store", new)  # no --keys, no RLHF_AUDIT_KEYS
    assert p.returncode == 1 and "--keys DIR" in one_line(p) and "open_store" not in p.stderr
    assert not new.exists() and not list(tmp_path.glob("new.duckdb*"))



def test_a_failed_ingest_removes_only_a_store_it_created(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"kind": "dataset", "name": "b", "version": 2}) + "\n")
    new, old = tmp_path / "new.duckdb", tmp_path / "old.duckdb"
    p = run(capsys, "ingest", rows, "--format", "jsonl", "--store", new)
    assert p.returncode == 2 and "row 0, field 'version'" in one_line(p) and not new.exists()
    with open_store(old, pseudonymize=False) as s:
        s.append({"kind": "dataset", "name": "a", "version": "1"})
    assert run(capsys, "ingest", rows, "--format", "jsonl", "--store", old).returncode == 2
    with open_store(old, read_only=True, pseudonymize=False) as s:
        assert s.size == 1


# ------------------------------------------------------------------ 5. proof --size N is exact
def test_proof_inclusion_at_exactly_the_signed_size_asked(ledger, capsys):
    from rlhf_audit_kit.ledger.checkpoint import verify_checkpoint
    from rlhf_audit_kit.ledger.merkle import verify_inclusion
    from rlhf_audit_kit.ledger.verify import resolve_verifiers
    small, large = ledger.sizes
    p = run(capsys, "proof", "inclusion", ledger.store, 1, "--size", small)  # the later snapshot covers seq 1 too
    assert p.returncode == 0, p.stderr
    proof = json.loads(p.stdout)
    cp = verify_checkpoint(proof["checkpoint"], resolve_verifiers(ledger.vkey))
    assert proof["tree_size"] == cp.size == small and proof["root_hash"] == cp.root_hash.hex()
    assert verify_inclusion(bytes.fromhex(proof["leaf_hash"]), 1, small, [bytes.fromhex(h) for h in proof["proof"]],
                            cp.root_hash)
    p = run(capsys, "proof", "inclusion", ledger.store, 1, "--size", small + 1)  # never signed
    assert p.returncode == 1 and p.stdout == ""
    assert f"no signed checkpoint of size {small + 1} (signed sizes: {small}, {large})" in one_line(p)


# ------------------------------------------------------------------ 6. a closed pipe
def test_proof_into_a_closed_pipe_prints_no_traceback(ledger):
    p = subprocess.Popen([sys.executable, "-m", "rlhf_audit_kit.cli", "proof", "inclusion", str(ledger.store), "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # as `| head -1` does once it has its line (here: before the first)
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err


# ------------------------------------------------------------------ 7. --help
def test_help_of_every_subcommand_is_plain_complete_and_shows_defaults():
    from rlhf_audit_kit.cli import _parsers, build_parser
    raw_rst = re.compile(r"\*\*|``|:[a-z]+:`|::$", re.M)
    names = {}
    for p in _parsers(build_parser()):
        text = p.format_help()
        assert not raw_rst.search(text), (p.prog, raw_rst.search(text))
        formatter = p._get_formatter()
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            assert a.help, f"{p.prog}: {a.option_strings or a.dest} has no help text"
            if a.default not in (None, False) and a.default is not argparse.SUPPRESS and a.option_strings:
                assert "default" in formatter._expand_help(a), f"{p.prog} {a.option_strings}: default not shown"
            names.setdefault(p.prog, set()).update(a.option_strings)
    for command in ("verify", "serve"):
        assert {"--vkey", "--verifier"} <= names[f"rlhf-audit {command}"], command
    serve = next(p for p in _parsers(build_parser()) if p.prog == "rlhf-audit serve").format_help()
    assert "--vkey VKEY, --verifier VKEY" in serve and "AuditDashboard" in serve and ":class:" not in serve


def test_version(capsys):
    from rlhf_audit_kit.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"rlhf-audit {__version__}"


# ------------------------------------------------------------------ 8. wording
def test_ingest_counts_one_event_in_the_singular(tmp_path, capsys):
    rows = tmp_path / "one.jsonl"
    rows.write_text(json.dumps({"kind": "dataset", "name": "a", "version": "1"}) + "\n")
    p = run(capsys, "ingest", rows, "--format", "jsonl", "--store", tmp_path / "s.duckdb")
    assert p.returncode == 0 and "ingested 1 event from" in p.stdout and "1 events" not in p.stdout


def test_the_help_pasted_in_docs_cli_is_the_parsers():
    """Each ```text block of docs/cli.md that starts with 'usage: rlhf-audit' is that command's --help
    at 100 columns, so the page cannot drift from the command line."""
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```text\n(usage: rlhf-audit.*?)```", doc, re.S)
    assert len(blocks) >= 16
    for block in blocks:
        words = block.split("\n")[0].split("[")[0].split()[2:]
        command = [w for w in words if re.fullmatch(r"[a-z-]+", w)]
        p = cli(*command, "--help")
        assert p.returncode == 0 and p.stdout.strip() == block.strip(), (
            f"docs/cli.md's help of {' '.join(command) or 'rlhf-audit'} differs from the parser's")
