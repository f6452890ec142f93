"""Shared fixtures: real keys folders and small stores on disk."""
from __future__ import annotations

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
