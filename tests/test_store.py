"""The audit store: ingest of every input type, validation that names row and field, atomic batches,
queries, copying between stores, pseudonymisation on ingest."""
from __future__ import annotations

import datetime as dt
import json
import math

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_audit_kit import KeysError, ValidationError, hash_artifact, open_store
from rlhf_audit_kit.encoding import decode_entry
from rlhf_audit_kit.ledger import merkle
from rlhf_audit_kit.privacy.pseudonym import Pseudonymizer
from rlhf_audit_kit.schema import MAX_ID_CHARS, MAX_TEXT_CHARS

from factories import annotation


def snapshot_state(store):
    return (store.size, store.sql("select count(*) from annotation").item(),
            store.sql("select count(*) from merkle_node").item())


def test_append_returns_gap_free_seqs_and_entries_hash_to_leaves(store):
    assert store.append(annotation(0)) == 0
    assert store.extend([annotation(i) for i in range(1, 6)]) == range(1, 6)
    assert store.append({"kind": "dataset", "name": "d", "version": "1"}) == 6
    log = store.sql("select seq, entry, leaf_hash from log order by seq")
    assert log["seq"].to_list() == list(range(7))
    for e, h in zip(log["entry"], log["leaf_hash"]):
        assert merkle.leaf_hash(e) == h


@pytest.mark.parametrize("make", ["dicts", "polars", "pandas", "arrow", "jsonl", "hf"])
def test_every_input_type_gives_the_same_typed_rows(tmp_path, keys_dir, make):
    rows = [annotation(i) for i in range(5)]
    for r in rows:
        r.pop("kind")
    if make == "dicts":
        data = rows
    elif make == "polars":
        data = pl.DataFrame(rows)
    elif make == "pandas":
        data = pd.DataFrame(rows)
    elif make == "arrow":
        data = pa.Table.from_pylist(rows)
    elif make == "jsonl":
        data = tmp_path / "rows.jsonl"
        data.write_text("\n".join(json.dumps({**r, "shown_at": r["shown_at"].isoformat(),
                                              "submitted_at": r["submitted_at"].isoformat()}) for r in rows))
    else:
        datasets = pytest.importorskip("datasets")
        data = datasets.Dataset.from_list(rows)
    with open_store(tmp_path / f"{make}.duckdb", keys=keys_dir) as s:
        assert s.extend(data, kind="annotation") == range(0, 5)
        got = s.annotations().drop("ts")
    with open_store(tmp_path / "ref.duckdb", keys=keys_dir) as ref:
        ref.extend(rows, kind="annotation")
        assert got.equals(ref.annotations().drop("ts"))


BAD = [
    ("choice", "c", "must be one of"),
    ("choice", None, "missing"),
    ("prompt", 5, "expected a string"),
    ("prompt", b"\xff\xfe", "bytes are not text"),
    ("prompt", "abc\udcff", "not valid Unicode"),
    ("prompt", "", "must not be empty"),
    ("prompt", "x" * (MAX_TEXT_CHARS + 1), "exceed the limit"),
    ("annotation_id", "x" * (MAX_ID_CHARS + 1), "exceed the limit"),
    ("strength", 1.5, "expected an integer"),
    ("strength", -1, "must be >= 0"),
    ("score_a", math.nan, "finite"),
    ("score_a", math.inf, "finite"),
    ("score_a", "high", "expected a number"),
    ("shown_at", "yesterday", "ISO 8601"),
    ("submitted_at", dt.datetime(2025, 1, 1), "earlier than shown_at"),
    ("colour", "red", "unknown field"),
]


@pytest.mark.parametrize("field,value,reason", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_row_names_row_and_field_and_writes_nothing(store, field, value, reason):
    store.extend([annotation(i) for i in range(3)])
    before = snapshot_state(store)
    batch = [annotation(i) for i in range(10, 20)]
    batch[6][field] = value
    with pytest.raises(ValidationError) as ei:
        store.extend(batch)
    assert (ei.value.row, ei.value.field) == (6, field)
    assert reason in ei.value.reason
    assert snapshot_state(store) == before


def test_bad_row_in_a_dataframe_is_located(store):
    df = pl.DataFrame([{k: v for k, v in annotation(i).items() if k != "kind"} for i in range(50)])
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == 41).then(pl.lit("maybe")).otherwise(pl.col("choice"))
                         .alias("choice"))
    with pytest.raises(ValidationError) as ei:
        store.extend(df, kind="annotation")
    assert (ei.value.row, ei.value.field) == (41, "choice")
    assert store.size == 0


def test_duplicate_ids_within_batch_and_against_store(store):
    batch = [annotation(i) for i in range(5)] + [annotation(2)]
    with pytest.raises(ValidationError) as ei:
        store.extend(batch)
    assert (ei.value.row, ei.value.field) == (5, "annotation_id")
    store.extend([annotation(i) for i in range(5)])
    with pytest.raises(ValidationError) as ei:
        store.extend([annotation(9), annotation(3)])
    assert (ei.value.row, ei.value.field) == (1, "annotation_id")
    assert store.size == 5


def test_train_step_metrics_round_trip_trl_names(store):
    metrics = {"objective/kl": 0.123, "rewards/margins": -1.5e-7, "objective/rlhf_reward": 2.0,
               "policy/approxkl_avg": 1e21}
    store.append({"kind": "train_step", "run_id": "r1", "algorithm": "ppo", "step": 10, "metrics": metrics})
    assert store.event(0)["data"]["metrics"] == metrics
    long = store.train_metrics()
    assert dict(zip(long["metric"], long["value"])) == metrics
    assert store.train_steps()["metrics"][0].to_list() == [{"key": k, "value": v} for k, v in metrics.items()]
    with open_store(store.path.with_name("copy.duckdb"), pseudonymize=False) as other:
        other.extend(store.sql("select * from train_step"), kind="train_step")  # MAP column as read by polars
        assert other.entry(0)[:200] != b"" and other.event(0)["data"]["metrics"] == metrics


def test_nonfinite_metric_is_refused(store):
    with pytest.raises(ValidationError) as ei:
        store.extend([{"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": s,
                       "metrics": {"loss": 1.0 if s != 2 else math.nan}} for s in range(4)])
    assert (ei.value.row, ei.value.field) == (2, "metrics")


def test_copy_annotations_between_stores_keeps_rows_and_pseudonyms(tmp_path, keys_dir, store):
    store.extend([annotation(i) for i in range(20)])
    with open_store(tmp_path / "b.duckdb", keys=keys_dir) as b:
        copied = store.sql("select * from annotation order by seq")
        with pytest.raises(ValidationError, match="shaped like a pseudonym") as ei:
            b.extend(copied, kind="annotation")  # pseudonyms are never taken for raw ids ...
        assert (ei.value.row, ei.value.field, b.size) == (0, "annotator", 0)
        b.extend(copied, kind="annotation", pseudonymized=True)  # ... unless the caller marks them as such
        a_rows = store.annotations().drop("seq", "ts")
        assert b.annotations().drop("seq", "ts").equals(a_rows)


def test_raw_annotator_ids_never_reach_the_store(tmp_path, keys_dir):
    path = tmp_path / "p.duckdb"
    with open_store(path, keys=keys_dir) as s:
        s.extend([annotation(i, annotator=f"raw.person.{i % 4}@example.org") for i in range(40)])
        stored = set(s.annotations()["annotator"])
    p = Pseudonymizer.from_keys_folder(keys_dir)
    assert stored == {p.pseudonymize(f"raw.person.{i}@example.org") for i in range(4)}
    blob = path.read_bytes() + (path.with_name(path.name + ".wal").read_bytes()
                                if path.with_name(path.name + ".wal").exists() else b"")
    for i in range(4):
        assert f"raw.person.{i}".encode() not in blob


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHF_AUDIT_KEYS", raising=False)
    with open_store(tmp_path / "k.duckdb") as s:
        with pytest.raises(KeysError, match="pseudonymisation key"):
            s.append(annotation(0))
        assert s.size == 0
        s.append({"kind": "dataset", "name": "no-person-fields", "version": "1"})  # needs no key


def test_sql_never_mutates_and_takes_parameters(store):
    store.extend([annotation(i) for i in range(4)])
    store.sql("delete from annotation")
    store.sql("update log set kind = 'x'")
    assert store.sql("select count(*) n from annotation").item() == 4
    got = store.sql("select annotation_id from annotation where annotation_id = ?", ["ann-2' or '1'='1"])
    assert got.height == 0
    assert store.sql("select annotation_id from annotation where annotation_id = $id", {"id": "ann-2"}).height == 1


def test_reader_process_sees_committed_data(tmp_path, keys_dir):
    path = tmp_path / "r.duckdb"
    with open_store(path, keys=keys_dir) as s:
        s.extend([annotation(i) for i in range(3)])
    with open_store(path, read_only=True) as r:
        assert r.size == 3 and r.counts() == {"annotation": 3}
        with pytest.raises(Exception):
            r.append(annotation(9))


def test_rich_repr_and_accessors(store):
    store.extend([annotation(i) for i in range(3)] + [{"kind": "dataset", "name": "d", "version": "1"}])
    html = store._repr_html_()
    assert "annotation" in html and "no signed snapshot yet" in html
    assert store.annotations(lazy=True).collect().height == 3
    assert store.counts() == {"annotation": 3, "dataset": 1}


def test_hash_artifact_file_and_folder_streamed(tmp_path):
    f = tmp_path / "ckpt" / "model.safetensors"
    f.parent.mkdir()
    f.write_bytes(b"\x01" * 10_000_000)
    (f.parent / "config.json").write_text("{}")
    h_file, size = hash_artifact(f)
    assert size == 10_000_000 and h_file.startswith("sha256:")
    import hashlib
    manifest = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                       for p in sorted(f.parent.iterdir(), key=lambda p: p.name))
    assert hash_artifact(f.parent)[0] == "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


# ---- hypothesis: random corruption of one field of one row is always refused, store unchanged
FIELDS = {"choice": st.text(max_size=3).filter(lambda s: s not in ("a", "b", "tie", "skip")),
          "prompt": st.integers() | st.binary(min_size=1, max_size=4) | st.just(""),
          "strength": st.floats(allow_nan=True).filter(lambda x: not (x == x and x.is_integer() and 0 <= x <= 100)),
          "score_b": st.sampled_from([math.nan, math.inf, -math.inf, "1.0"]),
          "annotator": st.none() | st.integers(),
          "submitted_at": st.just("not a time") | st.integers()}


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(1, 30), data=st.data())
def test_any_single_bad_field_is_named_and_nothing_written(tmp_path_factory, n, data):
    path = tmp_path_factory.mktemp("h") / "h.duckdb"
    with open_store(path, pseudonymize=False) as s:
        s.extend([annotation(i) for i in range(3)])
        before = snapshot_state(s)
        row = data.draw(st.integers(0, n - 1))
        field = data.draw(st.sampled_from(sorted(FIELDS)))
        value = data.draw(FIELDS[field])
        batch = [annotation(100 + i) for i in range(n)]
        batch[row][field] = value
        with pytest.raises(ValidationError) as ei:
            s.extend(batch)
        assert (ei.value.row, ei.value.field) == (row, field)
        assert snapshot_state(s) == before


def test_decoded_entry_matches_typed_row(store):
    store.append(annotation(1, rationale="because\n\"quoted\""))
    ev = store.event(0)
    row = store.annotations().row(0, named=True)
    assert ev["data"]["rationale"] == row["rationale"] == "because\n\"quoted\""
    assert ev["data"]["annotator"] == row["annotator"]
    assert decode_entry(store.entry(0))["kind"] == "annotation"


def test_mixed_kind_batch_keeps_row_order_as_seq_and_tree_matches(store):
    from rlhf_audit_kit.ledger.tree import TreeReader
    rows = []
    for i in range(30):
        rows.append(annotation(i) if i % 3 else
                    {"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": i, "metrics": {"loss": i / 7}})
    assert store.extend(rows) == range(0, 30)
    kinds = store.sql("select kind from log order by seq")["kind"].to_list()
    assert kinds == [r["kind"] for r in rows]
    entries = store.sql("select entry from log order by seq")["entry"].to_list()
    assert TreeReader(store._get_nodes).root(30) == merkle.root(entries)
    for n in (1, 7, 16, 29):
        proof = TreeReader(store._get_nodes).inclusion_proof(n, 30)
        assert merkle.verify_inclusion(merkle.leaf_hash(entries[n]), n, 30, proof, merkle.root(entries))


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_pipeline_builds_the_same_tree(tmp_path, monkeypatch, chunk):
    """extend() encodes, hashes and inserts in chunks and grows the Merkle nodes chunk by chunk."""
    import rlhf_audit_kit.store as store_module
    from rlhf_audit_kit.ledger.checkpoint import Signer
    from rlhf_audit_kit.ledger.tree import TreeReader
    monkeypatch.setattr(store_module, "_CHUNK_ROWS", chunk)
    monkeypatch.setattr(store_module, "_TYPED_ROWS", 3 * chunk)  # typed rows go in slices between log chunks
    with open_store(tmp_path / "c.duckdb", pseudonymize=False) as s:
        s.extend([annotation(i) for i in range(37)])
        s.extend([annotation(i) for i in range(37, 100)])
        s.extend([annotation(100, kind="annotation"), {"kind": "dataset", "name": "d", "version": "1"},
                  annotation(101)])  # mixed kinds: the end-of-batch path
        entries = s.sql("select entry from log order by seq")["entry"].to_list()
        assert s.sql("select count(*) AS n, count(DISTINCT seq) AS d from annotation").row(0) == (102, 102)
        reader = TreeReader(s._get_nodes)
        for size in (1, 37, 64, 99, 100, 103):
            assert reader.root(size) == merkle.root(entries[:size])
        signer = Signer.from_seed("test.example/log", bytes(32))
        s.snapshot(signer)
        assert s.verify(signer.vkey).ok  # includes: every stored node equals the recomputed one


def test_leaf_hashes_from_every_arrow_binary_layout():
    import hashlib

    import pyarrow as pa

    from rlhf_audit_kit.store import leaf_hashes_of
    vals = [b"", b"short", b"x" * 12, b"y" * 13, b"z" * 5000]
    want = [hashlib.sha256(b"\x00" + v).digest() for v in vals]
    for t in (pa.binary(), pa.large_binary(), pa.binary_view()):
        arr = pa.array(vals, t)
        assert leaf_hashes_of(arr) == want
        assert leaf_hashes_of(arr.slice(2)) == want[2:]  # offsets into the buffers are honoured
        assert leaf_hashes_of(pa.chunked_array([arr.slice(0, 2), arr.slice(2)])) == want


def test_failure_in_a_later_chunk_writes_nothing(tmp_path, monkeypatch):
    """The encoder thread runs ahead of hashing and inserting: a failure in any chunk rolls back the batch."""
    import rlhf_audit_kit.store as store_module
    monkeypatch.setattr(store_module, "_CHUNK_ROWS", 5)
    real = store_module.encoding.encode_frame
    calls = []

    def flaky(kind, part, *a, **k):
        calls.append(part.height)
        if len(calls) == 4:
            raise RuntimeError("disk on fire")
        return real(kind, part, *a, **k)

    with open_store(tmp_path / "f.duckdb", pseudonymize=False) as s:
        s.extend([annotation(i) for i in range(7)])
        before = s.sql("select count(*) AS n from log")["n"][0], s.root()
        monkeypatch.setattr(store_module.encoding, "encode_frame", flaky)
        with pytest.raises(RuntimeError, match="disk on fire"):
            s.extend([annotation(i) for i in range(7, 40)])
        monkeypatch.setattr(store_module.encoding, "encode_frame", real)
        assert (s.sql("select count(*) AS n from log")["n"][0], s.root()) == before
        assert s.sql("select count(*) AS n from annotation")["n"][0] == 7
        assert s.sql("select count(*) AS n from merkle_node where idx >= 4 and level = 1")["n"][0] == 0
        assert s.extend([annotation(i) for i in range(7, 12)]) == range(7, 12)
        assert s.root() == merkle.root(s.sql("select entry from log order by seq")["entry"].to_list())


def test_extend_progress_bar_counts_every_row(store, capsys):
    rows = pl.DataFrame([annotation(i) for i in range(60_000)])
    store.extend(rows, progress=True)
    assert "60000/60000" in capsys.readouterr().err


def test_large_batches_keep_their_row_groups_at_checkpoint(tmp_path):
    """Each batch above one row group ends with a part-filled row group. DuckDB's default checkpoint
    would merge it with its neighbours (rewriting and recompressing them); an append-only log has
    nothing to reclaim, so the store keeps the layout and closing stays cheap."""
    import duckdb
    path = tmp_path / "rg.duckdb"
    n = 122_880 + 1000
    with open_store(path, pseudonymize=False) as s:
        for b in range(2):
            s.extend(pl.DataFrame({"name": [f"d{b}-{i}" for i in range(n)], "version": "1"}), kind="dataset")
    con = duckdb.connect(str(path), read_only=True)
    sizes = [c for (c,) in con.sql("SELECT max(count) FROM pragma_storage_info('log') "
                                   "GROUP BY row_group_id ORDER BY row_group_id").fetchall()]
    con.close()
    assert sizes == [122_880, 1000, 122_880, 1000]
