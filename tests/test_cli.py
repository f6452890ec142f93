"""The rlhf-audit command: init, ingest (a real format and our JSONL), info, clear errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "formats"


def cli(*args, env=None, check=True):
    res = subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", *map(str, args)], capture_output=True,
                         text=True, env=env, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}: {res.stderr}")
    return res


def test_init_ingest_info(tmp_path, keys_dir):
    store = tmp_path / "a.duckdb"
    assert "created store" in cli("init", store).stdout
    hh = next(FIXTURES.glob("hh*"))
    out = cli("ingest", hh, "--format", "hh-rlhf", "--store", store, "--keys", keys_dir).stdout
    assert "annotation events" in out
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"kind": "dataset", "name": "hh-rlhf", "version": "2022"}) + "\n")
    assert "ingested 1 event" in cli("ingest", rows, "--format", "jsonl", "--store", store).stdout
    info = cli("info", store).stdout
    assert "annotation" in info and "dataset" in info


def test_bad_input_exits_nonzero_with_row_and_field(tmp_path):
    store = tmp_path / "b.duckdb"
    cli("init", store)
    rows = tmp_path / "bad.jsonl"
    rows.write_text(json.dumps({"kind": "dataset", "name": "a", "version": "1"}) + "\n"
                    + json.dumps({"kind": "dataset", "name": "b", "version": 2}) + "\n")
    res = cli("ingest", rows, "--format", "jsonl", "--store", store, check=False)
    assert res.returncode == 2
    assert "row 1" in res.stderr and "version" in res.stderr
    assert "events  0" in cli("info", store).stdout
