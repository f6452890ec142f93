"""Shared fixtures: real keys folders and small stores on disk; the docs site, built once."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_audit_kit import open_store
from rlhf_audit_kit.keys import init_keys


@pytest.fixture
def keys_dir(tmp_path):
    folder = tmp_path / "keys"
    init_keys(folder, "test-lab", no_passphrase=True)
    return folder


@pytest.fixture
def store(tmp_path, keys_dir):
    s = open_store(tmp_path / "audit.duckdb", keys=keys_dir)
    yield s
    s.close()


@pytest.fixture(scope="session")
def docs_site(tmp_path_factory):
    """The documentation site, built once per session by ``mkdocs build --strict`` (checked by
    tests/test_docs.py, opened offline by tests/browser/test_offline.py)."""
    for module in ("mkdocs", "mkdocs_jupyter", "mkdocstrings"):
        pytest.importorskip(module)
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out
