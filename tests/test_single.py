"""One event at a time (store.append's fast path, Recorder.log): the same errors, rows and bytes as extend."""
from __future__ import annotations

import datetime as dt
import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_audit_kit import ValidationError, open_store
from rlhf_audit_kit.keys import load_signer
from rlhf_audit_kit.ledger import merkle
from rlhf_audit_kit.ledger.levels import stored_node_bounds
from rlhf_audit_kit.ledger.tree import TreeReader
from rlhf_audit_kit.single import check_event
from rlhf_audit_kit.validate import normalise

GOOD = {
    "annotation": {"annotation_id": "a1", "prompt_id": "p", "prompt": "q", "response_a_id": "ra", "response_a": "x",
                   "response_b_id": "rb", "response_b": "y", "choice": "a", "annotator": "p-ann",
                   "shown_at": "2026-01-01T00:00:00Z", "submitted_at": "2026-01-01T02:00:05+02:00"},
    "rating": {"rating_id": "r1", "sample_id": "s", "annotator": "p-ann", "aspects": {"help": 3, "safe": 5},
               "scale_min": 1, "scale_max": 5},
    "reward_score": {"reward_model": "rm", "sample_id": "s1", "score": -0.25, "step": 3, "response_length": 12},
    "train_step": {"run_id": "r", "algorithm": "dpo", "step": 1, "metrics": {"loss": 0.69, "rewards/margins": 0},
                   "epoch": 0.5, "logged_at": dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc)},
    "checkpoint": {"run_id": "r", "step": 10, "uri": "file:///ckpt", "content_hash": "sha256:" + "a" * 64,
                   "size_bytes": 10},
    "dataset": {"name": "hh", "version": "1", "row_count": 3},
    "oversight": {"reviewer": "p-rev", "decision": "halt", "reason": "kl", "subject_run": "r"},
    "custom": {"name": "eval_result", "payload": {"acc": 0.5, "nested": [1, None, "é"]}},
}
# Values each field type must refuse, and values at the edges of the rules.
BAD = [None, "", "x" * 513, -1, 2**53, 1.5, math.nan, math.inf, True, b"bytes", "not-a-time", "\ud800",
       {"k": math.nan}, {"": 1.0}, {"k": "v"}, {1: 2.0}, {"k": None}, {}, [1], {"k": 10**400}, 2**60, 101, "zz",
       "sha256:" + "A" * 64, "2026-01-01T00:00:00", 7]


def _error(fn):
    try:
        fn()
    except ValidationError as e:
        return (e.row, e.field, e.reason)
    return None


@pytest.mark.parametrize("kind", sorted(GOOD))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_single_event_errors_equal_the_batch_errors(kind, data):
    event = dict(GOOD[kind])
    fields = sorted({*event, "kind", "unknown_field", "seq"})
    for _ in range(data.draw(st.integers(1, 2))):  # break one or two fields
        event[data.draw(st.sampled_from(fields))] = data.draw(st.sampled_from(BAD))
    batch = _error(lambda: normalise([event], kind))
    assert _error(lambda: check_event(event, kind)) == batch
    if batch is None:  # a valid event: the same typed values
        _, values = check_event(event, kind)
        row = normalise([event], kind)[kind].drop("__row").rows(named=True)[0]
        for name, v in values.items():
            if isinstance(v, dict):
                v = [{"key": k, "value": x} for k, x in v.items()]
            assert v == row[name], name


def test_unknown_and_internal_kinds():
    assert _error(lambda: check_event({"kind": "nope"})) == _error(lambda: normalise([{"kind": "nope"}]))
    assert _error(lambda: check_event({"name": "x"})) == (0, "kind", "missing: give each row a 'kind' or pass kind=")
    assert _error(lambda: check_event(["x"])) == (0, "<row>", "expected a mapping, got list")


def test_append_writes_what_extend_writes_and_verifies(tmp_path, keys_dir):
    signer = load_signer(keys_dir)
    a = open_store(tmp_path / "a.duckdb", keys=keys_dir)
    b = open_store(tmp_path / "b.duckdb", keys=keys_dir)
    events = [{"kind": k, **v} for k, v in GOOD.items()]
    events += [{"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": s, "metrics": {"loss": 1 / s}}
               for s in range(2, 40)]
    for e in events:
        a.append(e)
    b.extend(events)
    assert a.size == b.size == len(events)
    for kind in GOOD:  # identical typed rows, pseudonyms included
        assert a.table(kind).drop("ts").equals(b.table(kind).drop("ts")), kind
    ea = a.sql("SELECT kind, entry FROM log ORDER BY seq")
    eb = b.sql("SELECT kind, entry FROM log ORDER BY seq")
    assert ea["kind"].to_list() == eb["kind"].to_list()
    for x, y in zip(ea["entry"], eb["entry"]):  # equal up to the recording time
        assert x.split(b',"ts":')[0] == y.split(b',"ts":')[0]
    for s in (a, b):
        s.verify(s.snapshot(signer).vkey).raise_for_status()
        s.close()


def test_append_and_extend_interleaved_keep_one_tree(tmp_path):
    with open_store(tmp_path / "t.duckdb", pseudonymize=False) as s:
        for i in range(300):
            if i % 37 == 0:
                s.extend([{"kind": "reward_score", "reward_model": "rm", "sample_id": f"b{i}-{j}", "score": j}
                          for j in range(i % 5 + 1)])
            s.append({"kind": "reward_score", "reward_model": "rm", "sample_id": f"a{i}", "score": i / 7})
            if i % 50 == 0:
                leaves = s.sql("SELECT entry FROM log ORDER BY seq")["entry"].to_list()
                assert s.root() == merkle.root(leaves)
        leaves = s.sql("SELECT entry FROM log ORDER BY seq")["entry"].to_list()
        assert TreeReader(s._get_nodes).root(s.size) == merkle.root(leaves) == s.root()
        # each level is gap-free; only nodes over the leaves after the last multiple of NODE_TAIL may wait
        counts = s.sql("SELECT level, count(*) AS n, max(idx) + 1 AS top FROM merkle_node GROUP BY level")
        for lv, n, top in counts.iter_rows():
            low, high = stored_node_bounds(s.size, lv)
            assert n == top and low <= n <= high, (lv, n, s.size)
        size = s.size
    with open_store(tmp_path / "t.duckdb", pseudonymize=False, read_only=True) as s:  # closing stored the rest
        assert s.sql("SELECT count(*) FROM merkle_node").item() == sum(size >> lv for lv in range(1, 64))


def test_failed_append_writes_nothing(tmp_path):
    with open_store(tmp_path / "f.duckdb", pseudonymize=False) as s:
        s.append({"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": 1, "metrics": {"a": 1}})
        root = s.root()
        e = _error(lambda: s.append({"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": 1,
                                     "metrics": {"a": 2}}))
        assert e == (0, "run_id", "duplicate run_id/step: already in the store")
        with pytest.raises(ValidationError, match="written by the kit itself"):
            s.append({"kind": "snapshot", "origin": "o", "tree_size": 1, "root_hash": "00", "key_name": "k",
                      "key_id": "i", "note": "n"})
        assert s.size == 1 and s.root() == root
        assert s.sql("SELECT count(*) FROM log").item() == 1
        assert s.append({"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": 2, "metrics": {"a": 2}}) == 1
        assert s.table("train_step")["step"].to_list() == [1, 2]
        assert s.table("train_step")["metrics"].to_list()[1] == [{"key": "a", "value": 2.0}]
        assert isinstance(s.table("train_step"), pl.DataFrame)


def test_a_few_events_in_one_transaction_name_the_bad_one(tmp_path):
    with open_store(tmp_path / "m.duckdb", pseudonymize=False) as s:
        s.append({"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": 7, "metrics": {"a": 1}})
        events = [check_event({"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": i, "metrics": {"a": i}})
                  for i in (1, 2, 1)]
        assert _error(lambda: s._append_events(list(events))) == (2, "run_id", "duplicate run_id/step within the batch")
        events[2] = check_event({"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": 7, "metrics": {"a": 0}})
        assert _error(lambda: s._append_events(list(events))) == (2, "run_id", "duplicate run_id/step: already in the store")
        assert s.size == 1
        assert s._append_events(events[:2]) == range(1, 3)
        assert s.table("train_step")["step"].to_list() == [7, 1, 2]
