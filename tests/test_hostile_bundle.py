"""Hostile bundles: every malformed or malicious bundle is a one-line finding, never a traceback or a hang.

Each case copies a real exported bundle, damages it as an attacker who hands it to an auditor would,
and checks both the command (``rlhf-audit verify BUNDLE --vkey ...`` in a subprocess: one ``FAILED
... [damage]`` line on stderr, exit status 3, no traceback) and the Python API (``open_bundle``
raises :class:`BundleError`, ``verify_bundle`` returns a failed report, ``Bundle.verify`` reports
what it finds once a bundle is open).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.errors import BundleError
from rlhf_audit_kit.store import open_store

from test_snapshot_verify import SIGNER, build, events, segment_file  # noqa: E402 - shared fixtures

VKEY = SIGNER.verifier.vkey
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX file types")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    store, snaps = build(d / "a.duckdb", batches=1, snap_every=1)
    snaps[-1].export(d / "bundle").close()
    store.close()
    return d / "bundle"


@pytest.fixture()
def bundle(made, tmp_path):
    shutil.copytree(made, tmp_path / "bundle")
    return tmp_path / "bundle"


def cli(*args, timeout=60, inproc=False):
    """``rlhf-audit ARGS`` in a subprocess, or (``inproc``, for variants of a case) through ``cli.main``."""
    if not inproc:
        return subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout)
    import contextlib
    import io
    from rlhf_audit_kit.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(map(str, args)))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def verify_cli(path, vkey=VKEY, timeout=60, inproc=False):
    return cli("verify", path, "--vkey", vkey, "--workers", "0", timeout=timeout, inproc=inproc)


def assert_finding(p, damage: str, *words: str) -> str:
    """One FAILED line naming ``damage`` on stderr, exit status 3, no traceback; returns the line."""
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out
    assert p.returncode == 3, out
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAILED") and f"[{damage}]" in lines[0], out
    assert lines[0].endswith(f"damage: {damage}") and not p.stdout, out  # the failure is on stderr only
    for w in words:
        assert w in lines[0], out
    return lines[0]


def refused(path, damage: str) -> BundleError:
    """open_bundle raises BundleError(damage); verify_bundle returns the same as a failed report."""
    from rlhf_audit_kit.bundle import verify_bundle
    with pytest.raises(BundleError) as e:
        open_bundle(path)
    assert e.value.damage == damage, e.value
    assert "\n" not in str(e.value)
    report = verify_bundle(path, VKEY, workers=0)
    assert not report.ok and report.damage == damage and str(e.value) in report.message
    return e.value


def manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def write_manifest(path, m) -> None:
    (path / "manifest.json").write_text(json.dumps(m))


def relist(path, name) -> None:
    """Update the manifest's hash and size of ``name``, as an attacker making a consistent bundle would."""
    m = manifest(path)
    data = (path / name).read_bytes()
    m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    write_manifest(path, m)


# ---------------------------------------------------------------- the good case
def test_clean_bundle_and_linked_folder_verify(bundle, tmp_path):
    from rlhf_audit_kit.bundle import verify_bundle
    assert verify_cli(bundle).stdout.startswith("OK")
    link = tmp_path / "linked"
    link.symlink_to(bundle, target_is_directory=True)  # the caller's own path may hold links
    p = verify_cli(link)
    assert p.returncode == 0 and p.stdout.startswith("OK"), p.stderr
    assert verify_bundle(link, VKEY, workers=0).ok
    info = cli("info", bundle)
    assert info.returncode == 0 and "events" in info.stdout, info.stderr
    import contextlib
    import io
    from rlhf_audit_kit.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as help_text, pytest.raises(SystemExit):
        main(["verify", "--help"])
    assert "exit status" in help_text.getvalue() and "3 damaged" in help_text.getvalue()


# ---------------------------------------------------------------- files that are not regular files
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["log", "note", "checkpoint.note", "verifier.vkey", "manifest.json"])
def test_fifo_refused_without_hanging(bundle, name):
    name = {"log": segment_file(bundle, "log"), "note": manifest(bundle)["note"]}.get(name, name)
    (bundle / name).unlink()
    os.mkfifo(bundle / name)
    assert_finding(verify_cli(bundle, timeout=60), "unsafe-file", name, "FIFO")
    assert refused(bundle, "unsafe-file").file == name
    if name.startswith("segments/log-"):
        info = cli("info", bundle, timeout=60)
        assert info.returncode == 3 and "Traceback" not in info.stderr and "FIFO" in info.stderr


@pytest.fixture()
def secret(tmp_path):
    s = tmp_path / "pseudonym.key"
    s.write_text(os.urandom(32).hex())
    return s


def test_symlinked_vkey_is_not_followed_or_echoed(bundle, secret):
    (bundle / "verifier.vkey").unlink()
    (bundle / "verifier.vkey").symlink_to(secret)
    p = verify_cli(bundle)
    assert_finding(p, "unsafe-file", "verifier.vkey", "symbolic link")
    assert secret.read_text() not in p.stdout + p.stderr
    e = refused(bundle, "unsafe-file")
    assert e.file == "verifier.vkey" and secret.read_text() not in str(e)


def test_symlinked_table_and_folder_refused(bundle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    name = segment_file(bundle, "annotation")
    shutil.move(bundle / name, outside / "annotation.parquet")
    (bundle / name).symlink_to(outside / "annotation.parquet")
    assert_finding(verify_cli(bundle), "unsafe-file", name, "symbolic link")
    (bundle / name).unlink()
    shutil.move(outside / "annotation.parquet", bundle / name)
    shutil.move(bundle / "segments", outside / "segments")
    (bundle / "segments").symlink_to(outside / "segments", target_is_directory=True)  # a folder inside the bundle
    first = min(n for n in manifest(bundle)["files"] if n.startswith("segments/"))
    assert_finding(verify_cli(bundle), "unsafe-file", first, "symbolic link")
    assert refused(bundle, "unsafe-file").file == first


def test_vkey_that_is_not_a_key_is_never_echoed(bundle, secret):
    (bundle / "verifier.vkey").write_text(secret.read_text() + "\n")
    relist(bundle, "verifier.vkey")
    with open_bundle(bundle) as b:
        assert b.vkey is None
        with pytest.raises(BundleError) as e:
            b.verifier
        assert secret.read_text() not in str(e.value) and e.value.file == "verifier.vkey"
        report = b.verify(VKEY, workers=0)
        assert not report.ok and report.damage == "malformed-bundle" and "verifier.vkey" in report.message
        shown = repr(b) + b._repr_html_() + report.message
    assert secret.read_text() not in shown
    p = verify_cli(bundle)
    assert_finding(p, "malformed-bundle", "verifier.vkey")
    assert secret.read_text() not in p.stdout + p.stderr


# ---------------------------------------------------------------- names that leave the bundle
def _outside_names(tmp_path):
    (tmp_path / "outside.txt").write_text("not yours")
    host = "/etc/hostname" if os.path.exists("/etc/hostname") else str(tmp_path / "outside.txt")
    return [host, "../outside.txt", str(tmp_path / "outside.txt"), "sub/../../outside.txt", ".hidden", "a\\b"]


AUDIT = """
import sys
seen = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)) and any(w in str(args[0]) for w in sys.argv[2:]):
        seen.append(str(args[0]))
from rlhf_audit_kit import open_bundle
sys.addaudithook(hook)
try:
    with open_bundle(sys.argv[1]) as b:
        b.verify(%r, workers=0)
except Exception as e:
    print(type(e).__name__, file=sys.stderr)
print(seen)
"""


def test_manifest_names_outside_refused_before_any_access(bundle, tmp_path):
    names = _outside_names(tmp_path)
    clean = manifest(bundle)
    messages = {}
    for i, name in enumerate([*names, "/nonexistent/hostname"]):
        write_manifest(bundle, {**clean, "files": {**clean["files"], name: {"sha256": "0" * 64, "bytes": 9}}})
        line = assert_finding(verify_cli(bundle, inproc=i > 0), "unsafe-file", name)
        messages[name] = line.replace(name, "NAME")
        refused(bundle, "unsafe-file")
    # an existing and a missing file outside the bundle give the same finding
    assert messages["/nonexistent/hostname"] == messages[names[0]]
    # nothing outside the bundle is even opened, with every such name listed at once
    write_manifest(bundle, {**clean, "files": {**clean["files"], **{n: {"sha256": "0" * 64, "bytes": 9}
                                                                     for n in names}}})
    p = subprocess.run([sys.executable, "-c", AUDIT % VKEY, str(bundle), "hostname", "outside.txt"],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "[]" and "BundleError" in p.stderr, (p.stdout, p.stderr)


# ---------------------------------------------------------------- glob characters in the folder path
@pytest.mark.parametrize("folder, decoy", [("b[1]*", "b1"), ("d?'{x}", "dd'{x}")])
def test_glob_characters_in_folder_are_literal(made, tmp_path, folder, decoy):
    shutil.copytree(made, tmp_path / decoy)  # what a glob would match instead
    with open_store(tmp_path / "other.duckdb", pseudonymize=False) as store:
        store.extend(events(0)[:3])
        store.snapshot(SIGNER).export(tmp_path / folder).close()
    with open_bundle(tmp_path / folder) as b:
        assert b.size == 3 and b.verify(VKEY, workers=0).ok
        assert b.counts() == {"dataset": 1, "annotation": 1, "rating": 1}
    p = verify_cli(tmp_path / folder)
    assert p.returncode == 0 and p.stdout.startswith("OK: 3 events"), p.stdout + p.stderr


# ---------------------------------------------------------------- malformed manifest and note
def _set(m, key, value):
    m[key] = value
    return m


def _log(m) -> str:
    return next(n for n, info in m["files"].items() if info.get("table") == "log")


MALFORMED = {
    "not-json": lambda m: b"{not json",
    "not-utf8": lambda m: b"\xff\xfe{}",
    "not-an-object": lambda m: [],
    "no-origin": lambda m: {k: v for k, v in m.items() if k != "origin"},
    "files-as-list": lambda m: _set(m, "files", list(m["files"])),
    "file-entry-not-object": lambda m: _set(m, "files", {**m["files"], _log(m): "x"}),
    "sha256-not-string": lambda m: _set(m, "files", {**m["files"], _log(m): {**m["files"][_log(m)], "sha256": 5}}),
    "tree-size-string": lambda m: _set(m, "tree_size", "32"),
    "no-log": lambda m: _set(m, "files", {k: v for k, v in m["files"].items() if k != _log(m)}),
    "bad-table": lambda m: _set(m, "files", {**m["files"], _log(m): {**m["files"][_log(m)], "table": "../x"}}),
    "multi-line-format": lambda m: _set(m, "format", "x\n" * 1000),
    "table-not-a-string": lambda m: _set(m, "files", {**m["files"], _log(m): {**m["files"][_log(m)],
                                                                              "table": ["log"]}}),
    "segment-gap": lambda m: _set(m, "segments", [{**m["segments"][0], "start": 1}]),
    "segment-foreign-file": lambda m: _set(m, "segments", [{**m["segments"][0], "files": ["verifier.vkey"]}]),
    "short-compact-range": lambda m: _set(m, "segments", [{**m["segments"][0], "compact_range": []}]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_manifest_is_a_finding(bundle, case):
    new = MALFORMED[case](manifest(bundle))
    (bundle / "manifest.json").write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())
    named = case in ("not-json", "no-origin", "files-as-list")  # the reported cases run the real command
    assert_finding(verify_cli(bundle, inproc=not named), "malformed-bundle", "manifest.json")
    refused(bundle, "malformed-bundle")


@pytest.mark.parametrize("which", ["note", "checkpoint.note"])
def test_note_with_invalid_utf8_is_a_finding(bundle, which):
    name = manifest(bundle)["note"] if which == "note" else which  # the signed note, and its copy
    (bundle / name).write_bytes((bundle / name).read_bytes() + b"\xff\xfe")
    if which == "note":
        relist(bundle, name)
    assert_finding(verify_cli(bundle), "malformed-bundle", name, "UTF-8")
    assert refused(bundle, "malformed-bundle").file == name


def test_oversized_note_refused(bundle):
    (bundle / "checkpoint.note").write_text("x" * (100 << 10))
    assert_finding(verify_cli(bundle), "oversized", "checkpoint.note")
    refused(bundle, "oversized")


def test_log_that_is_not_parquet_is_a_finding(bundle):
    log = segment_file(bundle, "log")
    (bundle / log).write_bytes(b"PAR1 but not really PAR1")
    relist(bundle, log)
    assert_finding(verify_cli(bundle), "malformed-bundle", log)
    refused(bundle, "malformed-bundle")


WRONG_TYPES = {  # table, column -> an SQL expression of another type
    ("log", "seq"): "seq::VARCHAR || 'x'",
    ("annotation", "strength"): "'abc'",
    ("log", "entry"): "42",
}


@pytest.mark.parametrize("table, column", WRONG_TYPES)
def test_wrong_column_types_are_findings(bundle, table, column):
    import duckdb
    name = segment_file(bundle, table)
    f = bundle / name
    con = duckdb.connect()
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{f}')").fetchall()]
    sel = ", ".join(f"{WRONG_TYPES[table, column]} AS {c}" if c == column else f'"{c}"' for c in cols)
    con.execute(f"COPY (SELECT {sel} FROM read_parquet('{f}')) TO '{f}.new' (FORMAT parquet)")
    con.close()
    os.replace(f"{f}.new", f)
    relist(bundle, name)
    p = verify_cli(bundle, inproc=True)
    assert p.returncode == 3 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    with open_bundle(bundle) as b:
        report = b.verify(VKEY, workers=0)
    assert not report.ok and report.damage in ("malformed-bundle", "typed-row-mismatch"), report.findings


def test_damaged_page_data_is_a_finding_not_a_crash(bundle):
    """Footer and page headers intact, a page's compressed bytes garbage: found when decoded."""
    import pyarrow.parquet as pq
    from rlhf_audit_kit.bundle_files import _page_header
    log = segment_file(bundle, "log")
    f = bundle / log
    col = pq.ParquetFile(f).metadata.row_group(0).column(1)  # kind: what counts() reads
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    with open(f, "rb") as fh:
        head, n = _page_header(fh, start, f.stat().st_size)
    data = bytearray(f.read_bytes())
    data[start + n:start + n + head[3]] = b"\xff" * head[3]
    f.write_bytes(bytes(data))
    relist(bundle, log)
    with open_bundle(bundle) as b:  # the cheap checks pass
        with pytest.raises(BundleError) as e:
            b.counts()
        assert e.value.damage == "malformed-bundle"
        assert "not readable" in b._repr_html_()
        report = b.verify(VKEY, workers=0)
    assert not report.ok and report.damage == "malformed-bundle", report.findings
    assert_finding(verify_cli(bundle, inproc=True), "malformed-bundle")
    info = cli("info", bundle, inproc=True)
    assert info.returncode == 3 and "malformed-bundle" in info.stderr


# ---------------------------------------------------------------- files the manifest does not name
@pytest.mark.timeout(120)
def test_stray_files_are_findings_and_never_read(bundle, secret):
    (bundle / "polars.py").write_text("raise SystemExit('ran as code')\n")
    (bundle / "link").symlink_to(secret)
    os.mkfifo(bundle / "pipe")
    (bundle / "extra").mkdir()
    with open_bundle(bundle) as b:  # opening is fine: nothing unlisted is read
        report = b.verify(VKEY, workers=0)
    assert not report.ok and report.damage == "unlisted-file"
    for name in ("polars.py", "link", "pipe", "extra"):
        assert name in report.message
    p = verify_cli(bundle, timeout=60)
    assert_finding(p, "unlisted-file", "polars.py")
    assert secret.read_text() not in p.stdout + p.stderr
    for name in ("link", "pipe", "extra"):
        (bundle / name).unlink() if name != "extra" else (bundle / name).rmdir()
    assert_finding(verify_cli(bundle), "unlisted-file", "polars.py")  # one stray file is enough


# ---------------------------------------------------------------- decompression bomb
BOMB_BYTES = 300 << 20  # one entry over the 256 MiB page (entry) limit; the file is a few hundred KB

MAKE_BOMB = """
import duckdb, sys
duckdb.connect().execute(f"COPY (SELECT 0::BIGINT AS seq, 'custom' AS kind, TIMESTAMP '2024-01-01' AS ts, "
                         f"repeat('a', {sys.argv[2]})::BLOB AS entry, unhex(sha256('x')) AS leaf_hash) "
                         f"TO '{sys.argv[1]}' (FORMAT parquet, COMPRESSION zstd)")
"""

MEASURE = """
import resource, sys, time
from rlhf_audit_kit import open_bundle
t = time.perf_counter()
try:
    with open_bundle(sys.argv[1]) as b:
        damage = b.verify(sys.argv[2], workers=0).damage
except Exception as e:
    damage = getattr(e, "damage", type(e).__name__)
print(damage, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _lie_about_sizes(path: Path, real: list[int], fake: int = 1000) -> None:
    """Rewrite the footer's size fields ``real`` to ``fake`` (same-length varints: the file stays valid)."""
    data = bytearray(path.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - footer_len

    def varint(v, width=None):
        out = []
        while True:
            out.append(v & 0x7F | 0x80)
            v >>= 7
            if not v and (width is None or len(out) >= width):
                break
        out[-1] &= 0x7F
        return bytes(out)
    footer = bytes(data[start:-8])
    for value in real:
        old = varint(value << 1)  # zigzag of a positive i64
        assert old in footer
        footer = footer.replace(old, varint(fake << 1, len(old)))
    data[start:-8] = footer
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def bomb(made, tmp_path_factory):
    d = tmp_path_factory.mktemp("bomb")
    shutil.copytree(made, d / "bundle")
    name = segment_file(d / "bundle", "log")
    log = d / "bundle" / name
    subprocess.run([sys.executable, "-c", MAKE_BOMB, str(log), str(BOMB_BYTES)], check=True, timeout=300)
    assert log.stat().st_size < 2 << 20  # a small file ...
    import pyarrow.parquet as pq
    md = pq.ParquetFile(log).metadata
    assert md.num_rows == 1 and md.row_group(0).column(3).total_uncompressed_size > BOMB_BYTES  # ... one huge entry
    m = manifest(d / "bundle")
    m["files"][name]["rows"] = 1
    write_manifest(d / "bundle", m)
    relist(d / "bundle", name)
    shutil.copytree(d / "bundle", d / "lying")  # the same bomb whose footer claims small sizes
    sizes = [md.row_group(0).column(3).total_uncompressed_size, md.row_group(0).total_byte_size]
    _lie_about_sizes(d / "lying" / name, sizes)
    assert pq.ParquetFile(d / "lying" / name).metadata.row_group(0).column(3).total_uncompressed_size == 1000
    relist(d / "lying", name)
    return d


def _measure(path) -> tuple[str, float, int]:
    p = subprocess.run([sys.executable, "-c", MEASURE, str(path), VKEY], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    damage, seconds, rss = p.stdout.split()
    return damage, float(seconds), int(rss)


@pytest.fixture(scope="module")
def base_rss(made):
    return _measure(made)[2]


@pytest.mark.parametrize("which", ["bundle", "lying"])
def test_bomb_entry_refused_cheaply(bomb, base_rss, which):
    damage, seconds, rss = _measure(bomb / which)
    assert damage == "oversized"
    assert rss - base_rss < 64 << 20, (rss, base_rss)  # the 300 MB entry was never decoded
    assert seconds < 10
    line = assert_finding(verify_cli(bomb / which), "oversized", segment_file(bomb / which, "log"))
    assert "page" in line
    from rlhf_audit_kit.bundle_files import Limits
    with open_bundle(bomb / which, limits=Limits(max_page_bytes=1 << 30)) as b:  # a larger limit lets it in
        assert b.size == 1
