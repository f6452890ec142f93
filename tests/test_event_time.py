"""train_step.logged_at and checkpoint.saved_at: event times added after stores already held those kinds."""
from __future__ import annotations

import datetime as dt

from rlhf_audit_kit import open_store
from rlhf_audit_kit.keys import load_signer


def _steps(n, **extra):
    return [{"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": i,
             "metrics": {"loss": 1.0 / (i + 1)}, **extra} for i in range(n)]


def test_store_made_before_the_event_time_fields_gains_them_and_still_verifies(tmp_path, keys_dir):
    path = tmp_path / "old.duckdb"
    with open_store(path, pseudonymize=False) as s:
        s.extend(_steps(3))
        s.append({"kind": "checkpoint", "run_id": "r", "step": 2, "uri": "file:///c", "content_hash": "sha256:" + "0" * 64})
        # the layout of a store created before the fields existed
        s._con.execute("ALTER TABLE train_step DROP COLUMN logged_at")
        s._con.execute("ALTER TABLE checkpoint DROP COLUMN saved_at")
    signer = load_signer(keys_dir)
    with open_store(path, pseudonymize=False) as s:
        at = dt.datetime(2026, 5, 1, 12, 0, 0, 123456)
        s.extend([{**e, "step": e["step"] + 3} for e in _steps(2, logged_at=at)])
        s.append({"kind": "checkpoint", "run_id": "r", "step": 4, "uri": "file:///d",
                  "content_hash": "sha256:" + "1" * 64, "saved_at": at.isoformat() + "Z"})
        snap = s.snapshot(signer)
        s.verify(snap.vkey).raise_for_status()
        times = s.sql("SELECT step, logged_at FROM train_step ORDER BY step")["logged_at"].to_list()
        assert times == [None, None, None, at, at]
        assert s.sql("SELECT saved_at FROM checkpoint ORDER BY step")["saved_at"].to_list() == [None, at]
