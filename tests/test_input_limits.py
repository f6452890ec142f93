"""Hostile input gets a ValidationError naming row and field, and its batch writes nothing: lone
surrogates, deep or huge JSON, integers a float field would round, epsilons the accountants cannot
hold, timestamps outside the documented range on every input path, and spoofed pseudonyms."""
from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from rlhf_audit_kit import open_store
from rlhf_audit_kit.errors import ValidationError
from rlhf_audit_kit.ingest import load_label_studio
from rlhf_audit_kit.privacy.pseudonym import Pseudonymizer
from rlhf_audit_kit.schema import MAX_JSON_CHARS, MAX_JSON_DEPTH, MAX_TIMESTAMP, MIN_TIMESTAMP

from factories import annotation

I64_MAX = 2**63 - 1


@pytest.fixture
def plain(tmp_path):
    s = open_store(tmp_path / "plain.duckdb", pseudonymize=False)
    yield s
    s.close()


def _refused(store, rows, row, field, match=None, kind=None, append=False, **kw):
    """rows are refused naming (row, field) and nothing is written."""
    before = store.size
    with pytest.raises(ValidationError, match=match) as ei:
        store.append(rows, kind=kind, **kw) if append else store.extend(rows, kind=kind, **kw)
    assert (ei.value.row, ei.value.field) in ([(row, f) for f in field] if isinstance(field, tuple)
                                              else [(row, field)]), ei.value
    assert store.size == before and store.sql("SELECT count(*) AS n FROM log")["n"][0] == before
    return ei.value


def _custom(payload, name="x"):
    return {"kind": "custom", "name": name, "payload": payload}


def _nested(depth):
    v: dict = {}
    for _ in range(depth - 1):
        v = {"a": v}
    return v


# ------------------------------------------------------------------ 11.6
def test_lone_surrogate_in_a_map_key(plain):
    bad = {"kind": "train_step", "run_id": "r", "algorithm": "ppo", "step": 2, "metrics": {"ok\ud800": 1.0}}
    good = {"kind": "train_step", "run_id": "r", "algorithm": "ppo", "step": 1, "metrics": {"loss": 1.0}}
    _refused(plain, [good, bad], 1, "metrics", "not valid Unicode")
    _refused(plain, bad, 0, "metrics", "not valid Unicode", append=True)
    _refused(plain, [good, _custom({"k\udfff": 1})], 1, "payload", "surrogates")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deeply_nested_json_is_refused(plain, tmp_path, depth):
    ok = _custom(_nested(MAX_JSON_DEPTH))
    _refused(plain, [ok, _custom(_nested(depth))], 1, "payload", f"deeper than {MAX_JSON_DEPTH}")
    _refused(plain, _custom(_nested(depth)), 0, "payload", f"deeper than {MAX_JSON_DEPTH}", append=True)
    text = "[" * depth + "]" * depth
    frame = pl.DataFrame({"name": ["x", "y"], "payload": ['{"a": 1}', '{"a": ' + text + "}"]})
    _refused(plain, frame, 1, "payload", "deeper than", kind="custom")
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text(json.dumps(_custom({"a": 1})) + "\n" + '{"kind": "custom", "name": "x", "payload": {"a": '
                     + text + "}}\n")
    # the field, or the line when Python's own parser gives up first
    _refused(plain, jsonl, 1, ("payload", "<line>"), "deeper than|nests arrays/objects deeper")
    assert plain.extend([ok]) == range(0, 1)  # the limit itself is fine


def test_json_fields_have_a_size_limit(plain):
    empty = len(json.dumps({"a": ""}, separators=(",", ":")))
    at_limit = {"a": "x" * (MAX_JSON_CHARS - empty)}
    over = {"a": "x" * (MAX_JSON_CHARS - empty + 1)}
    _refused(plain, [_custom({"b": 1}), _custom(over)], 1, "payload", "exceed the limit of 1,000,000")
    _refused(plain, [_custom({"a": "x" * 10_000_000})], 0, "payload", "exceed the limit")  # 10 MB
    _refused(plain, _custom(over), 0, "payload", "exceed the limit", append=True)
    frame = pl.DataFrame({"name": ["x"], "payload": [json.dumps(over)]})
    _refused(plain, frame, 0, "payload", "exceed the limit", kind="custom")
    assert plain.extend([_custom(at_limit)]) == range(0, 1)


def _score(v, sample="s"):
    return {"kind": "reward_score", "reward_model": "rm", "sample_id": sample, "score": v}


@pytest.mark.parametrize("big", [2**53 + 1, -(2**53 + 3), 2**63 - 1, 10**400])
def test_an_integer_a_float_field_would_round_is_refused(plain, big):
    _refused(plain, [_score(1), _score(big)], 1, "score", "no exact float value")
    _refused(plain, _score(big), 0, "score", "no exact float value", append=True)
    metrics = {"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": 0, "metrics": {"m": big}}
    _refused(plain, [metrics], 0, "metrics", "no exact float value")
    if abs(big) < 2**63:
        frame = pl.DataFrame({"reward_model": ["rm", "rm"], "sample_id": ["a", "b"], "score": [3, big]})
        _refused(plain, frame, 1, "score", "no exact float value", kind="reward_score")
        nested = pl.DataFrame({"run_id": ["r"], "algorithm": ["dpo"], "step": [0],
                               "metrics": [[{"key": "m", "value": big}]]})
        _refused(plain, nested, 0, "metrics", "no exact float value", kind="train_step")


def test_integers_a_float_holds_exactly_are_kept(plain):
    unsigned = pl.DataFrame({"reward_model": ["rm"], "sample_id": ["u"],
                             "score": pl.Series([2**64 - 1], dtype=pl.UInt64)})
    _refused(plain, unsigned, 0, "score", "no exact float value", kind="reward_score")
    plain.extend([_score(2**60), _score(-(2**70), "t")])
    assert plain.sql("SELECT score FROM reward_score ORDER BY seq")["score"].to_list() == [2.0**60, -(2.0**70)]


@pytest.mark.parametrize("eps", [1e-300, 5e-324, 1e300, 10**400])
def test_extreme_epsilons_are_a_validation_error(plain, eps):
    plain.extend([annotation(i, annotator=f"w{i % 3}") for i in range(9)])
    plain.privacy.set_budget("global", 1.0)
    for call in (lambda: plain.privacy.release("annotator_count", epsilon=eps),
                 lambda: plain.privacy.release("count", epsilon=eps, mechanism="gaussian", delta=1e-6),
                 lambda: plain.privacy.what_if(eps)):
        with pytest.raises(ValidationError) as ei:
            call()
        assert ei.value.field == "epsilon" and "[1e-06, 1000]" in ei.value.reason
    assert plain.sql("SELECT count(*) AS n FROM privacy_spend")["n"][0] == 0
    with pytest.raises(ValidationError, match="finite number"):
        plain.privacy.set_budget("global", 10**400)


# ------------------------------------------------------------------ 17.6 timestamps, every input path
def _frame(n=3):
    rows = [annotation(i) for i in range(n)]
    for r in rows:
        r.pop("kind")
    return pl.DataFrame(rows)


def _years(*ticks_us):
    return pl.Series(list(ticks_us), dtype=pl.Int64).cast(pl.Datetime("us"))


Y14645, Y_4368 = 400_000_000_000_000_000, -200_000_000_000_000_000


@pytest.mark.parametrize("ticks, year", [(Y14645, "14645"), (Y_4368, "-4368")])
def test_dataframe_timestamps_out_of_range(plain, ticks, year):
    df = _frame().with_columns(_years(0, ticks, 0).alias("shown_at"))
    err = _refused(plain, df, 1, "shown_at", f"about year {year}", kind="annotation")
    assert "1970-01-01T00:00:00Z .. 2199-12-31T23:59:59.999999Z" in err.reason
    aware = _frame().with_columns(_years(0, 0, ticks).dt.replace_time_zone("UTC").alias("submitted_at"))
    _refused(plain, aware, 2, "submitted_at", f"about year {year}", kind="annotation")
    _refused(plain, df.to_pandas(), 1, "shown_at", kind="annotation")  # pandas: datetime64[us]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_int64_max_timestamps_are_refused_not_a_panic(plain, unit):
    arrow = _frame().to_arrow()
    i = arrow.column_names.index("shown_at")
    arrow = arrow.set_column(i, "shown_at", pa.array([0, I64_MAX, 0], pa.timestamp(unit)))
    _refused(plain, arrow, 1, "shown_at", "out of range", kind="annotation")
    df = _frame().with_columns(pl.Series([0, 0, I64_MAX], dtype=pl.Int64).cast(pl.Datetime(
        "ms" if unit == "s" else unit)).alias("submitted_at"))
    _refused(plain, df, 2, "submitted_at", "out of range", kind="annotation")


def test_arrow_dates_and_pandas_seconds_out_of_range(plain):
    arrow = _frame().to_arrow()
    i = arrow.column_names.index("shown_at")
    days = pa.array([0, 0, 10**8], pa.date32())
    _refused(plain, arrow.set_column(i, "shown_at", days), 2, "shown_at", "out of range", kind="annotation")
    frame = _frame().to_pandas()
    frame["shown_at"] = pd.Series([0, 2**62, 0], dtype="int64").astype("datetime64[s]")
    _refused(plain, frame, 1, "shown_at", "out of range", kind="annotation")


@pytest.mark.parametrize("value", [dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31), "1969-12-31T23:59:59Z",
                                   "2200-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00",
                                   dt.datetime(1970, 1, 1, 4, tzinfo=dt.timezone(dt.timedelta(hours=5)))])
def test_dict_and_iso_timestamps_out_of_range(plain, value):
    rows = [annotation(0), annotation(1, shown_at=None, submitted_at=value)]
    match = "not an ISO" if value == "0001-01-01T00:00:00+05:00" else "out of range; must lie within 1970"
    _refused(plain, rows, 1, "submitted_at", match)
    _refused(plain, rows[1], 0, "submitted_at", match, append=True)


def test_the_range_limits_themselves_are_accepted(plain):
    rows = [annotation(0, shown_at=MIN_TIMESTAMP, submitted_at=MAX_TIMESTAMP),
            annotation(1, shown_at="1970-01-01T00:00:00Z", submitted_at="2199-12-31T23:59:59.999999Z")]
    plain.extend(rows)
    df = _frame(2).with_columns(pl.Series([MIN_TIMESTAMP, MAX_TIMESTAMP]).alias("submitted_at"),
                                pl.lit(MIN_TIMESTAMP).alias("shown_at"),
                                pl.Series(["x0", "x1"]).alias("annotation_id"))
    plain.extend(df, kind="annotation")
    assert plain.sql("SELECT max(submitted_at) AS m FROM annotation")["m"][0] == MAX_TIMESTAMP


def _ls_task(i, lead, created="2024-05-01T10:00:30Z"):
    return {"id": i, "data": {"prompt": "Hi", "answer1": "Hello", "answer2": "Yo"},
            "annotations": [{"id": 70 + i, "completed_by": 3, "was_cancelled": False, "created_at": created,
                             "lead_time": lead, "result": [{"type": "pairwise", "from_name": "pw",
                                                            "to_name": "a,b", "value": {"selected": "right"}}]}]}


@pytest.mark.parametrize("lead, match", [(1e11, "about year -11"), (float("inf"), "not a finite"),
                                          (float("nan"), "not a finite"), (1e300, "out of range")])
def test_label_studio_lead_time_out_of_range(lead, match):
    with pytest.raises(ValidationError, match=match) as ei:
        load_label_studio([_ls_task(0, 30.0), _ls_task(1, lead)])
    assert (ei.value.row, ei.value.field) == (1, "lead_time")
    with pytest.raises(ValidationError) as ei:
        load_label_studio([_ls_task(0, 1.0, "9999-01-01T00:00:00Z")])
    assert (ei.value.row, ei.value.field) == (0, "created_at")


def test_label_studio_rows_go_through_the_store_check_too(plain):
    rows = load_label_studio([_ls_task(0, 30.0), _ls_task(1, 40.0)])
    shifted = rows.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(
        pl.col("shown_at") - pl.duration(days=400_000)).otherwise(pl.col("shown_at")).alias("shown_at"))
    _refused(plain, shifted, 1, "shown_at", "about year 929", kind="annotation")
    assert plain.extend(rows, kind="annotation") == range(0, 2)


# ------------------------------------------------------------------ 17.7 pseudonym spoofing
@pytest.fixture
def keyed(tmp_path, keys_dir):
    s = open_store(tmp_path / "keyed.duckdb", keys=keys_dir)
    yield s, Pseudonymizer.from_keys_folder(keys_dir)
    s.close()


def test_a_spoofed_pseudonym_is_refused_naming_row_and_field(keyed):
    s, p = keyed
    victim = p.pseudonymize("real.annotator@vendor.example")
    for spoof in (victim, victim + "\n", " " + victim + " "):
        err = _refused(s, [annotation(0), annotation(1, annotator=spoof)], 1, "annotator", "shaped like a pseudonym")
        assert "pseudonymized=True" in err.reason
        _refused(s, annotation(1, annotator=spoof), 0, "annotator", "shaped like a pseudonym", append=True)
    oversight = {"kind": "oversight", "reviewer": victim, "decision": "flag", "reason": "r", "subject_seq": 0}
    _refused(s, [oversight], 0, "reviewer", "shaped like a pseudonym")
    frame = _frame().with_columns(pl.Series(["a", "b", victim]).alias("annotator"))
    _refused(s, frame, 2, "annotator", "shaped like a pseudonym", kind="annotation")


def test_a_foreign_key_id_is_named(keyed):
    s, p = keyed
    foreign = Pseudonymizer(bytes(range(32))).pseudonymize("bob")
    kid = foreign.split("-")[1]
    for marked in (False, True):
        err = _refused(s, [annotation(0, annotator=p.pseudonymize("x") if marked else "x"),
                           annotation(1, annotator=foreign)], 1, "annotator", f"key id {kid}",
                       pseudonymized=marked)
        assert p.key_id in err.reason


def test_marked_pseudonyms_of_this_key_are_stored_as_they_are(keyed):
    s, p = keyed
    mine = p.pseudonymize("carol")
    assert s.extend([annotation(0, annotator=mine)], pseudonymized=True) == range(0, 1)
    assert s.append(annotation(1, annotator=mine), pseudonymized=True) == 1
    assert s.sql("SELECT DISTINCT annotator FROM annotation")["annotator"].to_list() == [mine]
    with pytest.raises(ValidationError, match="is not a pseudonym") as ei:
        s.extend([annotation(2, annotator=mine), annotation(3, annotator=mine + "\n")], pseudonymized=True)
    assert (ei.value.row, ei.value.field, s.size) == (1, "annotator", 2)


def test_budget_scopes_take_pseudonyms_of_this_key_only(keyed):
    s, p = keyed
    s.extend([annotation(i, annotator=f"w{i % 3}") for i in range(9)])
    mine = p.pseudonymize("w0")
    s.privacy.set_budget(f"annotator:{mine}", 1.0)
    s.privacy.set_budget("annotator:w1", 1.0)  # a raw id: pseudonymised before it is written
    scopes = set(s.privacy.budgets()["scope"])
    assert scopes == {f"annotator:{mine}", f"annotator:{p.pseudonymize('w1')}"}
    foreign = Pseudonymizer(bytes(range(32))).pseudonymize("w0")
    for bad, match in ((foreign, "another key"), (mine + "\n", "scope"), (mine + " ", "shaped like")):
        with pytest.raises(ValidationError, match=match):
            s.privacy.set_budget(f"annotator:{bad}", 1.0)
    assert s.sql("SELECT count(*) AS n FROM privacy_budget")["n"][0] == 2
