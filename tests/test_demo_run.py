"""The README's main job, end to end through the CLI: demo store, keys, snapshot, verify, bundle,
compliance notebook; then independent checks of what it wrote."""
from __future__ import annotations

import subprocess
import sys

import pytest

from rlhf_audit_kit import open_bundle, open_store


@pytest.mark.slow
def test_demo_command_builds_signs_verifies_and_exports(tmp_path):
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", "demo", "--size", "3000", "--out", str(out),
                          "--no-serve"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "UNENCRYPTED" in res.stdout and "compliance notebook:" in res.stdout
    assert str((out / "compliance.ipynb").resolve()) in res.stdout
    for name in ("audit.duckdb", "keys/verifier.vkey", "bundle/manifest.json", "bundle/checkpoint.note",
                 "compliance.ipynb", "compliance.html"):
        assert (out / name).exists(), name
    vkey = (out / "keys" / "verifier.vkey").read_text().strip()
    check = subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", "verify", str(out / "bundle"), "--vkey", vkey],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    with open_store(out / "audit.duckdb", read_only=True) as store:
        assert store.counts()["annotation"] > 2000
        assert store.privacy.spend_history().height == 5
        assert store.verify(vkey).ok
    bundle = open_bundle(out / "bundle")
    assert bundle.verify(vkey).ok
