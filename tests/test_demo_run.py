"""The README's main job, end to end through the CLI: demo store, keys, snapshot, verify, bundle,
compliance notebook; then independent checks of what it wrote, of the folder rules of a second run,
and of the README's two commands."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_audit_kit import open_bundle, open_store
from rlhf_audit_kit.demo_run import DEMO_ORIGIN, MARKER, run_demo
from rlhf_audit_kit.errors import AuditKitError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 3000


def _demo(out, *more, size=SIZE):
    return subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", "demo", "--size", str(size), "--out", str(out),
                           "--no-serve", *more], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run for the module: (output folder, completed process). Tests that change it copy it."""
    out = tmp_path_factory.mktemp("demo") / "out"
    res = _demo(out)
    assert res.returncode == 0, res.stderr
    return out, res


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_demo_command_builds_signs_verifies_and_exports(demo):
    out, res = demo
    assert "UNENCRYPTED" in res.stdout and "compliance notebook:" in res.stdout
    assert str((out / "compliance.ipynb").resolve()) in res.stdout
    for name in ("audit.duckdb", "keys/verifier.vkey", "bundle/manifest.json", "bundle/checkpoint.note",
                 "compliance.ipynb", "compliance.html"):
        assert (out / name).exists(), name
    vkey = (out / "keys" / "verifier.vkey").read_text().strip()
    check = subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", "verify", str(out / "bundle"), "--vkey", vkey],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "warning" not in check.stderr  # the demo's key is named after its origin (C2SP)
    with open_store(out / "audit.duckdb", read_only=True) as store:
        assert store.counts()["annotation"] > 2000
        assert store.privacy.spend_history().height == 5
        assert store.origin == DEMO_ORIGIN == vkey.split("+")[0]
        assert store.verify(vkey).ok and store.verify(vkey).warnings == []
    bundle = open_bundle(out / "bundle")
    assert bundle.verify(vkey).ok


@pytest.mark.slow
def test_demo_explains_its_numbers(demo):
    """Every count the demo prints is accounted for, one line each: campaign + privacy events = the signed
    tree size = the bundle's events; the store holds one more, the snapshot event, not yet signed."""
    out, res = demo
    text = res.stdout
    with open_store(out / "audit.duckdb", read_only=True) as store:
        counts, total = store.counts(), store.size
    campaign = sum(n for k, n in counts.items() if k not in ("privacy_budget", "privacy_spend", "snapshot"))
    privacy = counts["privacy_budget"] + counts["privacy_spend"]
    signed = campaign + privacy
    assert counts["snapshot"] == 1 and total == signed + 1
    assert f"recorded {campaign:,} campaign events" in text
    assert re.search(rf"\+ {privacy} privacy events: {counts['privacy_budget']} budget and "
                     rf"{counts['privacy_spend']} spend records", text)
    assert f"signed checkpoint (a signed tree head) of tree size {signed:,} = {campaign:,} campaign + {privacy} " \
           "privacy events" in text
    assert f"+ 1 snapshot event recording that signed checkpoint in the log: the store now holds {total:,} events" in text
    assert f"verified the store: OK: {total:,} events" in text and "1 later event(s) not yet covered" in text
    line = next(x for x in text.splitlines() if x.strip().startswith("(not yet covered"))
    assert "no signature vouches for it until the next signed checkpoint" in line and "snapshot event" in line
    assert f"OK: {signed:,} events" in text and f"the {signed:,} events its signed checkpoint covers" in text
    # a `checkpoint` event is a training checkpoint; "signed checkpoint" is only ever the signed tree head
    assert "a `checkpoint` event is a training checkpoint" in text
    bare = [x for x in text.splitlines() if re.search(r"(?<!signed )(?<!training )(?<!`)checkpoint(?!`|\.note)", x)]
    assert bare == [], bare


@pytest.mark.slow
def test_demo_refuses_its_earlier_output_without_overwrite(demo):
    out, _ = demo
    before = _digests(out)
    res = _demo(out)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "holds an earlier demo's output" in res.stderr and "--overwrite" in res.stderr
    assert _digests(out) == before


@pytest.mark.slow
def test_demo_overwrite_replaces_only_what_it_created(demo, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(demo[0], out)
    old_vkey = (out / "keys" / "verifier.vkey").read_text()
    (out / "notes.txt").write_text("mine")
    (out / "bundle" / "cosignatures").mkdir()
    (out / "bundle" / "cosignatures" / "w1").write_text("a witness's file")
    before = _digests(out)
    res = _demo(out, "--overwrite")  # a file the demo did not create lies inside its bundle: refused
    assert res.returncode == 1 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert "cosignatures was not created by the demo" in res.stderr
    assert _digests(out) == before
    shutil.rmtree(out / "bundle" / "cosignatures")
    res = _demo(out, "--overwrite", size=1000)
    assert res.returncode == 0, res.stderr
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "keys" / "verifier.vkey").read_text() != old_vkey  # new keys, new store, new bundle
    created = json.loads((out / MARKER).read_text())["created"]
    assert "notes.txt" not in created and "bundle/manifest.json" in created
    assert open_bundle(out / "bundle").verify((out / "keys" / "verifier.vkey").read_text().strip()).ok


@pytest.mark.parametrize("overwrite", [False, True])
def test_demo_refuses_a_folder_it_did_not_fill(tmp_path, overwrite):
    """Refused before anything is written; with --overwrite, still refused where the demo would replace
    something it did not create (someone's keys folder)."""
    out = tmp_path / "out"
    (out / "keys").mkdir(parents=True)
    (out / "keys" / "signing_key.pem").write_text("someone's key")
    with pytest.raises(AuditKitError, match="keys" if overwrite else "is not empty and the demo did not create"):
        run_demo(size=1000, out=out, serve=False, quiet=True, overwrite=overwrite)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["keys", "keys/signing_key.pem"]
    res = subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", "demo", "--out", str(out), "--no-serve"]
                         + ["--overwrite"] * overwrite, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert (out / "keys" / "signing_key.pem").read_text() == "someone's key"


def test_a_marker_naming_paths_outside_the_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious").write_text("keep")
    (out / MARKER).write_text(json.dumps({"format": "rlhf-audit-kit/demo-output/v1", "created": ["../precious"]}))
    with pytest.raises(AuditKitError, match="not a marker written by the demo"):
        run_demo(size=1000, out=out, serve=False, quiet=True, overwrite=True)
    assert (tmp_path / "precious").read_text() == "keep"


# ------------------------------------------------------------------------------------ the README
def _readme_first_screen():
    return (ROOT / "README.md").read_text(encoding="utf-8").split("\n---\n", 1)[0]


def _commands(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_first_screen_has_exactly_two_commands_and_the_suite_time():
    first = _readme_first_screen()
    blocks = _commands(first)
    assert len(blocks) == 2 and all(b.count("\n") == 1 for b in blocks), blocks
    assert blocks[0].startswith("pip install") and "rlhf-audit demo" in blocks[0]
    assert blocks[1].rstrip().endswith("python -m pytest")
    assert "13 minutes on 2 cores" in first and "](#tests)" in first


def test_readme_test_command_works_as_root_without_sudo_and_as_a_user(tmp_path):
    """The README's test command, run by bash with apt-get, pip and python replaced by recorders: once
    where there is no sudo (root in a container, CI), once with sudo (a user)."""
    command = _commands(_readme_first_screen())[1].strip()
    bash = shutil.which("bash")
    for with_sudo in (False, True):
        bin_dir, log = tmp_path / f"bin-{with_sudo}", tmp_path / f"log-{with_sudo}"
        bin_dir.mkdir()
        for tool in ("apt-get", "pip", "python") + (("sudo",) if with_sudo else ()):
            run = 'exec "$@"' if tool == "sudo" else "exit 0"
            (bin_dir / tool).write_text(f'#!{bash}\necho "{tool} $*" >> "{log}"\n{run}\n')
            (bin_dir / tool).chmod(0o755)
        res = subprocess.run([bash, "-c", command], env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 0, res.stderr
        calls = log.read_text().splitlines()
        installs = [c for c in calls if c.startswith("apt-get install")]
        assert installs and "chromium" in installs[0] and "fonts-liberation" in installs[0], calls
        assert calls[-1] == "python -m pytest" and any(c.startswith("pip install -e") for c in calls)
        assert any(c.startswith("sudo apt-get install") for c in calls) == with_sudo, calls


def test_readme_fast_subset_leaves_out_browser_and_slow_tests(tmp_path):
    """The README's fast command, its -m expression run by pytest over one test of each kind (the notebooks
    are left out by the path: tests/, not notebooks/)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    fast = re.search(r'`python -m pytest -m "([^"]+)" tests`', section)
    assert fast, section
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n  browser\n  slow\n")
    (tmp_path / "test_kinds.py").write_text("import pytest\n\n@pytest.mark.browser\ndef test_browser(): pass\n\n"
                                           "@pytest.mark.slow\ndef test_slow(): pass\n\ndef test_fast(): pass\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", fast.group(1), "--collect-only", "-q", "-p", "no:randomly",
                          "-p", "no:nbval", "-c", str(tmp_path / "pytest.ini"), str(tmp_path / "test_kinds.py")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert [x.split("::")[1] for x in res.stdout.splitlines() if "::" in x] == ["test_fast"], res.stdout + res.stderr


def test_ci_runs_the_readme_test_command_and_fails_on_changed_tracked_files():
    """.ci/run installs as the README says, runs its test command, then fails if the run changed a tracked
    file (e.g. docs/img/dashboard.png, refreshed only with RLHF_AUDIT_UPDATE_SCREENSHOT=1)."""
    command = _commands(_readme_first_screen())[1].strip()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [x.strip() for x in ci.splitlines()]
    pytest_cmd = command.rsplit("&& ", 1)[1]
    assert pytest_cmd in lines and 'python -m pip install -q -e ".[all,test,docs,train]"' in lines
    after = ci.split(pytest_cmd, 1)[1]
    assert "git status --porcelain --untracked-files=no" in after and "exit 1" in after
    screenshot = (ROOT / "tests" / "browser" / "test_dashboard.py").read_text(encoding="utf-8")
    copy = next(i for i, x in enumerate(screenshot.splitlines()) if '"dashboard.png"' in x)
    assert "RLHF_AUDIT_UPDATE_SCREENSHOT" in screenshot.splitlines()[copy - 1]


@pytest.mark.skipif(not (ROOT / ".git").exists() or not shutil.which("git"), reason="not a git checkout")
def test_no_tracked_file_is_ignored():
    """Nothing .gitignore lists is committed (the mkdocs-jupyter cache in .cache/ once was)."""
    res = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    assert res.returncode == 0 and res.stdout == "", res.stdout
