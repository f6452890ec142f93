"""Format loaders: exact rows from fixtures in each format's public layout, errors, sources."""
from __future__ import annotations

import gzip
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import datasets
import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from rlhf_audit_kit.errors import ValidationError
from rlhf_audit_kit.ingest import (FORMATS, MAP_INT, SkippedRowsWarning, canonical_text, content_ids,
                                   dataset_name, load, load_hh_rlhf, load_label_studio, load_shp,
                                   load_trl_preference, load_ultrafeedback)
from rlhf_audit_kit.ingest._common import messages_json
from rlhf_audit_kit.schema import KINDS

FIX = Path(__file__).parent / "fixtures" / "formats"
FIXTURES = [  # (file, format)
    ("hh_rlhf.jsonl", "hh-rlhf"),
    ("trl_standard.jsonl", "trl-preference"),
    ("trl_conversational.jsonl", "trl-preference"),
    ("trl_implicit.jsonl", "trl-preference"),
    ("trl_implicit_conversational.jsonl", "trl-preference"),
    ("shp.json", "shp"),
    ("ultrafeedback.jsonl", "ultrafeedback"),
    ("label_studio.json", "label-studio"),
]
H, A = "\n\nHuman: ", "\n\nAssistant:"
UTC = timezone.utc


def cid(text: str) -> str:
    """The content id of a text already in canonical form (no surrounding space, no turns)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def records(name: str) -> list[dict]:
    text = (FIX / name).read_text(encoding="utf-8")
    if name.endswith("label_studio.json"):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def raises_at(row: int, field: str):
    """pytest.raises(ValidationError) that also checks the row and field it names."""
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(ValidationError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            err = self.info.value
            assert (err.row, err.field) == (row, field), str(err)
            assert f"row {row}" in str(err)
            return handled
    return _Check()


# --------------------------------------------------------------------------- registry, shape
def test_registry_lists_formats_and_kinds():
    assert {n: f.kind for n, f in FORMATS.items()} == {
        "hh-rlhf": "annotation", "trl-preference": "annotation", "sharegpt-dpo": "annotation",
        "kto": "rating", "oasst": "annotation", "chatbot-arena": "annotation",
        "pku-saferlhf": "annotation", "summarize-from-feedback": "annotation", "shp": "annotation",
        "ultrafeedback": "rating", "label-studio": "annotation"}
    assert repr(FORMATS["shp"]) == "<Format shp -> annotation>"


@pytest.mark.parametrize("name,fmt", FIXTURES)
def test_rows_have_the_kinds_columns_in_schema_order(name, fmt):
    kind, rows = load(FIX / name, fmt)
    assert rows.columns == KINDS[kind].names
    assert rows.height > 0
    types = {f.name: f.type for f in KINDS[kind].fields}
    for col, dtype in rows.schema.items():
        expected = {"id": pl.String, "text": pl.String, "int": pl.Int64, "float": pl.Float64,
                    "ts": pl.Datetime("us", "UTC"), "map_int": MAP_INT, "bool": pl.Boolean,
                    "json": pl.String}[types[col]]
        assert dtype == expected, col
    for f in KINDS[kind].fields:
        if f.required:
            assert rows[f.name].null_count() == 0, f.name
    id_col = "annotation_id" if kind == "annotation" else "rating_id"
    assert rows[id_col].is_unique().all()


@pytest.mark.parametrize("name,fmt", FIXTURES)
def test_hf_dataset_loads_identically_to_the_file(name, fmt):
    ds = datasets.Dataset.from_list(records(name))
    assert_frame_equal(load(ds, fmt, dataset="x")[1], load(FIX / name, fmt, dataset="x")[1])


@pytest.mark.parametrize("name,fmt", [f for f in FIXTURES if f[1] != "label-studio"])
def test_polars_pandas_arrow_parquet_and_gzip_sources_agree(name, fmt, tmp_path):
    expected = load(FIX / name, fmt, dataset="x")[1]
    frame = pl.read_ndjson(FIX / name)
    frame.write_parquet(tmp_path / "x.parquet")
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress((FIX / name).read_bytes()))
    for source in (frame, frame.lazy(), frame.to_arrow(), tmp_path / "x.parquet",
                   str(tmp_path / "x.jsonl.gz"), records(name)):
        assert_frame_equal(load(source, fmt, dataset="x")[1], expected)
    if fmt in ("hh-rlhf", "shp"):  # flat layouts round-trip through pandas
        assert_frame_equal(load(frame.to_pandas(), fmt, dataset="x")[1], expected)


def test_dataset_option_is_recorded_and_prefixes_ids():
    _, rows = load(FIX / "hh_rlhf.jsonl", "hh-rlhf", dataset="Anthropic/hh-rlhf@helpful-base-test")
    assert rows["dataset"].unique().to_list() == ["Anthropic/hh-rlhf@helpful-base-test"]
    assert rows["annotation_id"][2] == "Anthropic/hh-rlhf@helpful-base-test:2"


@pytest.mark.parametrize("bad", ["", "@v1", "name@", 3, "a:b", " hh"])
def test_dataset_must_be_name_or_name_at_version(bad):
    with pytest.raises(ValueError, match="NAME or NAME@VERSION"):
        load(FIX / "hh_rlhf.jsonl", "hh-rlhf", dataset=bad)


def test_a_files_dataset_defaults_to_its_folder_and_name(tmp_path):
    """Two files of one layout (HH's harmless-base/test.jsonl.gz, helpful-base/test.jsonl.gz) never
    share ids; data handed over in memory keeps the format as prefix and no dataset."""
    rows = load_hh_rlhf(FIX / "hh_rlhf.jsonl")
    assert set(rows["dataset"]) == {"formats/hh_rlhf"} and rows["annotation_id"][1] == "formats/hh_rlhf:1"
    assert dataset_name(tmp_path / "helpful-base" / "test.jsonl.gz", None) == "helpful-base/test"
    assert dataset_name(records("hh_rlhf.jsonl"), None) is None
    assert load_hh_rlhf(records("hh_rlhf.jsonl"))["annotation_id"][0] == "hh-rlhf:0"
    assert load(FIX / "hh_rlhf.jsonl", "hh-rlhf", dataset="hh")[1]["annotation_id"][0] == "hh:0"


def test_unknown_format_and_unreadable_sources():
    with pytest.raises(ValueError, match="unknown format 'argilla'; known: chatbot-arena, hh-rlhf"):
        load([], "argilla")
    with pytest.raises(ValueError, match="format 'hh-rlhf' takes no option 'from_name'"):
        load([], "hh-rlhf", from_name="pw")
    with pytest.raises(TypeError, match="int"):
        load(42, "hh-rlhf")
    with pytest.raises(ValueError, match="unsupported file type"):
        load(FIX / "nope.csv", "hh-rlhf")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(records("hh_rlhf.jsonl"))})
    with pytest.raises(TypeError, match=r"pass one split, e.g. ds\['train'\]"):
        load(dd, "hh-rlhf")


def test_hf_dataset_after_select_honours_its_indices():
    ds = datasets.Dataset.from_list(records("hh_rlhf.jsonl")).select([2, 0])
    rows = load_hh_rlhf(ds)
    assert rows["response_a"].to_list() == [" ありがとう (arigatō).", " Paris."]


# --------------------------------------------------------------------------- content ids
@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=20))
def test_content_ids_are_short_sha256_of_the_canonical_utf8(texts):
    out = content_ids(pl.DataFrame({"t": texts}, schema={"t": pl.String}), {"t_id": "t"})
    assert out["t_id"].to_list() == [cid(canonical_text(t)) for t in texts]
    plain = [t for t in texts if t == t.strip() and not t.startswith(("[", "\n"))]
    assert [canonical_text(t) for t in plain] == plain  # an ordinary text is hashed as it is


_PIECES = ["\n\nHuman:", "\n\nAssistant:", " ", "\n", "\t", "\u00a0", "\u3000", "\x1c", "\x00", "word", ":",
           "\n\n", "Human:", '[{"role":"user","content":" a "}]', "é"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", "\n\nHuman:", "\n\nAssistant:", '[{"role":']),
                          st.lists(st.sampled_from(_PIECES), max_size=10)), min_size=1, max_size=8))
def test_vectorised_canonical_form_equals_the_reference(parts):
    from rlhf_audit_kit.ingest._common import canonical_series
    texts = [head + "".join(body) for head, body in parts] + [None]
    assert canonical_series(pl.Series(texts)).to_list() == [None if t is None else canonical_text(t) for t in texts]


def test_canonical_text_of_one_conversation_in_three_forms():
    hh = H + "Hi there " + A + " Hello!" + H + "Bye" + A
    msgs = json.dumps([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": "Bye"}], separators=(",", ":"))
    assert canonical_text(hh) == canonical_text(msgs) == H + "Hi there" + A + " Hello!" + H + "Bye"
    # one turn is its content: a plain prompt, an HH single-turn prompt and a one-message list agree
    assert canonical_text(H + "Hi" + A) == canonical_text('[{"role":"user","content":"Hi"}]') == "Hi"
    assert canonical_text(" Hello!") == canonical_text('[{"role":"assistant","content":"Hello!"}]') == "Hello!"
    assert canonical_text('[{"role":"user","content":["not text"]}]') == '[{"role":"user","content":["not text"]}]'


def test_content_ids_keep_row_order_on_large_frames():
    texts = [f"text {i}" for i in range(50_000)]
    out = content_ids(pl.DataFrame({"t": texts}), {"t_id": "t"})
    assert out["t_id"].to_list()[::997] == [cid(t) for t in texts[::997]]


def test_same_prompt_gets_same_id_across_formats():
    trl = load_trl_preference(FIX / "trl_standard.jsonl")
    imp = load_trl_preference(FIX / "trl_implicit.jsonl")
    assert trl["prompt_id"][0] == imp["prompt_id"][0] == cid("The sky is")


# --------------------------------------------------------------------------- HH-RLHF
def test_hh_rlhf_splits_shared_prefix_at_last_assistant_turn():
    rows = load_hh_rlhf(FIX / "hh_rlhf.jsonl")
    src = records("hh_rlhf.jsonl")
    assert rows["prompt"].to_list() == [
        H + "What is the capital of France?" + A,
        H + "Can you help me bake bread?" + A + " Sure, what kind?" + H + "Sourdough, please." + A,
        H + "Wie sagt man „danke“ auf Japanisch?" + A,
        H + "Tell me a joke." + A,
    ]
    assert rows["response_a"].to_list() == [
        " Paris.", " Start with an active levain and a long, cold proof.", " ありがとう (arigatō).",
        " Why did the chicken cross the road?" + H + "Why?" + A + " To get to the other side."]
    assert rows["response_b"].to_list() == [" I don't know.", " Buy some at the store.",
                                             " Keine Ahnung.", " No."]
    for r, s in zip(rows.iter_rows(named=True), src):  # lossless: prompt + response == transcript
        assert r["prompt"] + r["response_a"] == s["chosen"]
        assert r["prompt"] + r["response_b"] == s["rejected"]
        assert r["prompt_id"] == cid(canonical_text(r["prompt"]))
        assert r["response_b_id"] == cid(r["response_b"].strip())
    assert rows["prompt_id"][0] == cid("What is the capital of France?")  # one turn: its text
    assert rows["annotation_id"].to_list() == [f"formats/hh_rlhf:{i}" for i in range(4)]
    assert rows["display_order_known"].to_list() == [False] * 4  # chosen is a by construction
    assert set(rows["choice"]) == {"a"} and set(rows["task_id"]) == {"hh-rlhf"}
    assert set(rows["annotator"]) == {"hh-rlhf:crowd"}
    assert rows["model_a"].null_count() == 4 and rows["shown_at"].null_count() == 4


def test_hh_rlhf_options():
    rows = load_hh_rlhf(FIX / "hh_rlhf.jsonl", annotator="anthropic:crowdworkers", task_id="hh-x")
    assert set(rows["annotator"]) == {"anthropic:crowdworkers"} and set(rows["task_id"]) == {"hh-x"}


@pytest.mark.parametrize("bad_row,field,reason", [
    ({"chosen": H + "Hi" + A + " Hello."}, "rejected", "missing or null"),  # missing key
    ({"chosen": H + "Hi\n\nAssistant Hello.", "rejected": H + "Hi" + A + " Go."}, "chosen", "no '"),
    ({"chosen": H + "Hi" + A + " Hello.", "rejected": H + "Hi there."}, "rejected", "no '"),
    ({"chosen": H + "Hi" + A + " Hello.", "rejected": H + "Bye" + A + " Go."}, "rejected",
     "does not share"),
])
def test_hh_rlhf_bad_rows_name_row_and_field(bad_row, field, reason):
    good = records("hh_rlhf.jsonl")
    with raises_at(2, field) as info:
        load_hh_rlhf(good[:2] + [bad_row] + good[2:])
    assert reason in info.value.reason


def test_hh_rlhf_reports_the_first_bad_row():
    good = records("hh_rlhf.jsonl")
    bad = [good[0], {"chosen": "no turns", "rejected": "no turns"}, good[1], {"chosen": H + "x"}]
    with raises_at(1, "chosen"):
        load_hh_rlhf(bad)


def test_hh_rlhf_rejects_conversational_columns():
    with raises_at(0, "chosen"):
        load_hh_rlhf(FIX / "trl_implicit_conversational.jsonl")
    with raises_at(0, "rejected"):
        load_hh_rlhf([{"chosen": "x"}])


# --------------------------------------------------------------------------- TRL
def test_trl_standard():
    rows = load_trl_preference(FIX / "trl_standard.jsonl", dataset="toy/trl@1")
    assert rows.select("annotation_id", "prompt", "response_a", "response_b", "choice").rows() == [
        ("toy/trl@1:0", "The sky is", " blue.", " green.", "a"),
        ("toy/trl@1:1", "Translate 'chat' to English:", " cat", " chat", "a")]
    assert set(rows["task_id"]) == {"trl-preference"}
    assert set(rows["annotator"]) == {"trl-preference:unknown"}


def test_trl_conversational_stores_compact_json():
    rows = load_trl_preference(FIX / "trl_conversational.jsonl")
    src = records("trl_conversational.jsonl")
    for r, s in zip(rows.iter_rows(named=True), src):
        assert r["prompt"] == json.dumps(s["prompt"], ensure_ascii=False, separators=(",", ":"))
        assert r["response_a"] == json.dumps(s["chosen"], ensure_ascii=False, separators=(",", ":"))
        assert r["response_b"] == json.dumps(s["rejected"], ensure_ascii=False, separators=(",", ":"))
    assert rows["response_b"][1] == '[{"role":"assistant","content":"Je ne sais pas.\\n\\"Désolé\\""}]'
    assert rows["prompt"][1].startswith('[{"role":"system","content":"Answer briefly."},{"role":"user"')


def test_trl_implicit_prompt_split_like_trl():
    rows = load_trl_preference(FIX / "trl_implicit.jsonl")
    assert rows.select("prompt", "response_a", "response_b").rows() == [
        ("The sky is", " blue.", " green."), ("Q: 2+2? A:", " 4", " 5")]


def test_trl_implicit_conversational_splits_at_first_differing_message():
    rows = load_trl_preference(FIX / "trl_implicit_conversational.jsonl")
    assert rows.select("prompt", "response_a", "response_b").rows() == [
        ('[{"role":"user","content":"What color is the sky?"}]',
         '[{"role":"assistant","content":"It is blue."}]',
         '[{"role":"assistant","content":"It is green."}]'),
        ('[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},'
         '{"role":"user","content":"Bye"}]',
         '[{"role":"assistant","content":"Goodbye!"}]',
         '[{"role":"assistant","content":"Whatever."}]')]
    explicit = load_trl_preference(FIX / "trl_conversational.jsonl")
    assert rows["prompt_id"][0] == explicit["prompt_id"][0]


def test_trl_messages_with_extra_keys_keep_them_in_canonical_order():
    rows = load_trl_preference([
        {"prompt": [{"content": "Hi", "role": "user", "name": "bob"}],
         "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go"}]},
        {"prompt": [{"role": "user", "content": "Yo"}],
         "chosen": [{"role": "assistant", "content": "Hey"}],
         "rejected": [{"role": "assistant", "content": "No"}]}])
    assert rows["prompt"].to_list() == ['[{"role":"user","content":"Hi","name":"bob"}]',
                                        '[{"role":"user","content":"Yo"}]']


def test_trl_mixed_string_prompt_and_conversational_completions():
    rows = load_trl_preference([{"prompt": "Review:", "chosen": [{"role": "assistant", "content": "Good"}],
                                 "rejected": [{"role": "assistant", "content": "Bad"}]}])
    assert rows.select("prompt", "response_a").row(0) == (
        "Review:", '[{"role":"assistant","content":"Good"}]')


def test_trl_scores_become_score_a_and_b():
    rows = load_trl_preference(pl.DataFrame({
        "prompt": ["p"], "chosen": ["c"], "rejected": ["r"], "score_chosen": [8.5], "score_rejected": [3]}))
    assert rows.select("score_a", "score_b").row(0) == (8.5, 3.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), st.text()), max_size=4))
def test_vectorised_message_json_matches_json_dumps(msgs):
    as_dicts = [{"role": r, "content": c} for r, c in msgs]
    frame = pl.DataFrame({"m": [as_dicts]},
                         schema={"m": pl.List(pl.Struct({"role": pl.String, "content": pl.String}))})
    got = frame.select(messages_json(pl.col("m"))).item()
    assert got == json.dumps(as_dicts, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("rows,row,field", [
    ([{"prompt": "p", "chosen": "c", "rejected": "r"}, {"prompt": "p", "chosen": "c"}], 1, "rejected"),
    ([{"prompt": "p", "chosen": "c", "rejected": "r"}, {"chosen": "c", "rejected": "r"}], 1, "prompt"),
    ([{"chosen": "Same start", "rejected": "Same end"}, {"chosen": "abc", "rejected": "xyz"}], 1, "rejected"),
    ([{"chosen": "x", "rejected": [{"role": "user", "content": "x"}]}], 0, "rejected"),
    ([{"prompt": 1, "chosen": "x", "rejected": "y"}], 0, "prompt"),
])
def test_trl_bad_rows(rows, row, field):
    with raises_at(row, field):
        load_trl_preference(rows)


def test_trl_missing_column():
    with raises_at(0, "rejected") as info:
        load_trl_preference([{"prompt": "p", "chosen": "c"}])
    assert "missing column 'rejected'" in info.value.reason


# --------------------------------------------------------------------------- SHP
def test_shp_rows():
    rows = load_shp(FIX / "shp.json", dataset="stanfordnlp/SHP@askculinary-train")
    p = "stanfordnlp/SHP@askculinary-train"
    assert rows.select("annotation_id", "choice", "score_a", "score_b", "task_id").rows() == [
        (f"{p}:himc90:fv3bmwh:fv3a2k9", "a", 24.0, 9.0, "shp:askculinary_train"),
        (f"{p}:himc90:fv3a2k9:fv3c0qq", "b", 9.0, 31.0, "shp:askculinary_train"),
        (f"{p}:k2x7ab:gdr1a1a:gdr2b2b", "a", 102.0, 7.0, "shp:askphysics_train")]
    r = rows.row(1, named=True)
    assert r["prompt"] == "Can I use olive oil instead of butter in brownies?"
    assert (r["response_a"], r["response_b"]) == ("Butter is better.",
                                                  "Olive oil brownies are fudgier — I make them weekly.")
    # the same comment has the same id in both pairs it appears in
    assert rows["response_b_id"][0] == rows["response_a_id"][1] == cid("Butter is better.")
    assert set(rows["annotator"]) == {"shp:reddit"}


def test_shp_task_id_override():
    assert set(load_shp(FIX / "shp.json", task_id="shp")["task_id"]) == {"shp"}


def test_shp_bad_rows():
    good = records("shp.json")
    with raises_at(1, "labels") as info:
        load_shp([good[0], {**good[1], "labels": 2}])
    assert "got 2" in info.value.reason
    with raises_at(2, "annotation_id"):
        load_shp([good[0], good[1], good[0]])
    with raises_at(1, "human_ref_B"):
        load_shp([good[0], {k: v for k, v in good[1].items() if k != "human_ref_B"}])
    with raises_at(0, "score_B"):
        load_shp([{k: v for k, v in g.items() if k != "score_B"} for g in good])


# --------------------------------------------------------------------------- UltraFeedback
def test_ultrafeedback_one_rating_per_completion_and_na_skipped():
    kind, rows = load(FIX / "ultrafeedback.jsonl", "ultrafeedback", dataset="openbmb/UltraFeedback@main")
    assert kind == "rating"
    assert rows["rating_id"].to_list() == [f"openbmb/UltraFeedback@main:{i}:{j}"
                                           for i in (0, 1) for j in (0, 1)]
    assert rows["model"].to_list() == ["gpt-4", "llama-2-7b-chat", "gpt-3.5-turbo", "falcon-40b-instruct"]
    assert rows["aspects"].to_list() == [
        [{"key": "helpfulness", "value": 5}, {"key": "instruction_following", "value": 5},
         {"key": "truthfulness", "value": 5}],  # honesty "N/A" left out
        [{"key": "helpfulness", "value": 2}, {"key": "instruction_following", "value": 1},
         {"key": "truthfulness", "value": 4}],
        [{"key": "helpfulness", "value": 4}, {"key": "honesty", "value": 5},
         {"key": "instruction_following", "value": 4}, {"key": "truthfulness", "value": 5}],
        [{"key": "helpfulness", "value": 1}, {"key": "honesty", "value": 2},
         {"key": "instruction_following", "value": 3}, {"key": "truthfulness", "value": 1}]]
    r = rows.row(3, named=True)
    assert (r["prompt"], r["response"]) == ("What happens if you crack your knuckles a lot?",
                                            "You will get arthritis.")
    assert (r["sample_id"], r["prompt_id"]) == (cid(r["response"]), cid(r["prompt"]))
    assert (r["scale_min"], r["scale_max"], r["annotator"], r["task_id"]) == (
        1, 5, "ultrafeedback:gpt-4", "ultrafeedback")


def _uf(ratings: dict[str, object], response: str = "r") -> dict:
    return {"model": "m", "response": response,
            "annotations": {a: {"Rating": v, "Rationale": ""} for a, v in ratings.items()}}


def test_ultrafeedback_aspect_selection_and_all_na_completion_dropped():
    src = [{"instruction": "i", "completions": [
        _uf({"helpfulness": "3", "honesty": "4"}), _uf({"helpfulness": "N/A", "honesty": "N/A"}, "s"),
        _uf({"helpfulness": "2", "honesty": "N/A"}, "t")]}, {"instruction": "j", "completions": []}]
    rows = load_ultrafeedback(src)
    assert rows["rating_id"].to_list() == ["ultrafeedback:0:0", "ultrafeedback:0:2"]
    only = load_ultrafeedback(src, aspects=["honesty"])
    assert only["aspects"].to_list() == [[{"key": "honesty", "value": 4}]]


def test_ultrafeedback_models_list_used_when_completion_has_no_model():
    rows = load_ultrafeedback([{"instruction": "i", "models": ["a", "b"], "completions": [
        {"response": "x", "annotations": {"helpfulness": {"Rating": "5"}}},
        {"response": "y", "annotations": {"helpfulness": {"Rating": "4"}}}]}])
    assert rows["model"].to_list() == ["a", "b"]


@pytest.mark.parametrize("value", ["6", "0", "four", "4.5"])
def test_ultrafeedback_bad_rating_names_row_and_path(value):
    src = records("ultrafeedback.jsonl")
    src[1]["completions"][1]["annotations"]["honesty"]["Rating"] = value
    with raises_at(1, "completions[1].annotations.honesty.Rating") as info:
        load_ultrafeedback(src)
    assert repr(value) in info.value.reason


def test_ultrafeedback_missing_pieces():
    with raises_at(0, "completions"):
        load_ultrafeedback([{"instruction": "i"}])
    with raises_at(0, "completions[0].annotations.harmlessness"):
        load_ultrafeedback(FIX / "ultrafeedback.jsonl", aspects=["harmlessness"])
    src = records("ultrafeedback.jsonl")
    src[1]["completions"][0]["response"] = None
    with raises_at(1, "completions[0].response"):
        load_ultrafeedback(src)


# --------------------------------------------------------------------------- Label Studio
def test_label_studio_rows_skip_cancelled():
    rows = load_label_studio(_ls_tasks(), rationale_from="why")
    assert rows["display_order_known"].to_list() == [True] * 3  # a was on the left
    assert rows.select("annotation_id", "task_id", "choice", "annotator").rows() == [
        ("label-studio:101:1001", "label-studio:101", "a", "7"),
        ("label-studio:101:1003", "label-studio:101", "b", "9"),  # 1002 was cancelled
        ("label-studio:102:1004", "label-studio:102", "b", "7")]
    assert rows["submitted_at"].to_list() == [
        datetime(2024, 5, 1, 10, 0, 30, 500000, UTC), datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        datetime(2024, 5, 2, 8, 15, tzinfo=UTC)]
    assert rows["shown_at"].to_list() == [  # created_at - lead_time
        datetime(2024, 5, 1, 10, 0, tzinfo=UTC), datetime(2024, 5, 1, 11, 59, 47, 750000, UTC),
        datetime(2024, 5, 2, 8, 14, 52, tzinfo=UTC)]
    assert rows["rationale"].to_list() == ["Shorter and\nstill accurate.", None, None]
    r = rows.row(2, named=True)
    assert (r["prompt"], r["response_a"], r["response_b"]) == ("2+2?", "5", "4")
    assert r["response_b_id"] == cid("4")


def test_label_studio_custom_keys_models_and_expanded_user():
    task = {"id": 5, "data": {"q": "Hi", "left": "Hello", "right": ["Yo", "!"], "ma": "m1", "mb": "m2"},
            "annotations": [{"id": 9, "completed_by": {"id": 4, "email": "ann@example.org"},
                             "was_cancelled": False, "created_at": "2024-01-01T00:00:10+00:00",
                             "lead_time": None, "result": [
                                 {"type": "pairwise", "from_name": "pw", "value": {"selected": "left"}}]}]}
    rows = load_label_studio([task], dataset="acme/pairs@2024-01", prompt_key="q", response_a_key="left",
                             response_b_key="right", model_a_key="ma", model_b_key="mb",
                             guideline_version="g2")
    r = rows.row(0, named=True)
    assert (r["annotation_id"], r["annotator"], r["model_a"], r["model_b"], r["response_b"]) == (
        "acme/pairs@2024-01:5:9", "ann@example.org", "m1", "m2", '["Yo","!"]')
    assert (r["shown_at"], r["guideline_version"], r["dataset"]) == (None, "g2", "acme/pairs@2024-01")


def _ls_tasks() -> list[dict]:
    return records("label_studio.json")


def test_label_studio_unknown_pairwise_value():
    tasks = _ls_tasks()
    tasks[1]["annotations"][0]["result"][0]["value"]["selected"] = "both"
    with raises_at(1, "annotations[0].result[0].value.selected") as info:
        load_label_studio(tasks)
    assert "got 'both'" in info.value.reason


@pytest.mark.parametrize("mutate,row,field", [
    (lambda t: t[1]["data"].pop("answer2"), 1, "data.answer2"),
    (lambda t: t[0]["annotations"][2].update(result="left"), 0, "annotations[2].result"),
    (lambda t: t[0]["annotations"][0].update(completed_by=None), 0, "annotations[0].completed_by"),
    (lambda t: t[1]["annotations"][0].update(created_at="yesterday"), 1, "annotations[0].created_at"),
    (lambda t: t[1]["annotations"][0].update(lead_time=-1), 1, "annotations[0].lead_time"),
    (lambda t: t[1]["annotations"][0]["result"].append(dict(t[1]["annotations"][0]["result"][0])), 1,
     "annotations[0].result"),
    (lambda t: t.append(t[1]), 2, "annotation_id"),
])
def test_label_studio_bad_input(mutate, row, field):
    tasks = _ls_tasks()
    mutate(tasks)
    with raises_at(row, field):
        load_label_studio(tasks)


def test_label_studio_from_name_picks_one_pairwise_tag():
    tasks = _ls_tasks()[1:]
    extra = {**tasks[0]["annotations"][0]["result"][0], "from_name": "pw2", "value": {"selected": "left"}}
    tasks[0]["annotations"][0]["result"].append(extra)
    assert load_label_studio(tasks, from_name="pw2")["choice"].to_list() == ["a"]
    assert load_label_studio(tasks, from_name="pw")["choice"].to_list() == ["b"]


def test_label_studio_annotation_without_a_choice_is_skipped_with_a_warning():
    tasks = _ls_tasks()
    tasks[0]["annotations"][0]["result"] = tasks[0]["annotations"][0]["result"][1:]  # only the TextArea
    with pytest.warns(SkippedRowsWarning, match=r"skipped 1 annotation with no pairwise choice \(task 101, "
                                                r"annotation 1001\)") as w:
        rows = load_label_studio(tasks)
    assert w[0].message.count == 1
    assert rows["annotation_id"].to_list() == ["label-studio:101:1003", "label-studio:102:1004"]
    for t in tasks:  # no annotation with a choice at all: not a pairwise project (or a wrong tag name)
        for a in t["annotations"]:
            a["result"] = [r for r in a["result"] if r["type"] != "pairwise"]
    with raises_at(0, "annotations[0].result") as info:
        load_label_studio(tasks)
    assert "no pairwise choice in any annotation" in info.value.reason


def test_an_empty_response_is_data_and_is_stored(store):
    """A transcript whose last turn is empty gives an empty response; the store keeps it."""
    rows = load_trl_preference([{"chosen": H + "Hi" + A, "rejected": H + "Hi" + A + " Hello."}], dataset="e")
    assert rows.select("prompt", "response_a", "response_b").row(0) == (H + "Hi" + A, "", " Hello.")
    store.extend(rows, kind="annotation")
    assert store.sql("SELECT response_a FROM annotation").item() == ""
    with pytest.raises(ValidationError, match="'prompt': must not be empty"):
        store.extend(rows.with_columns(annotation_id=pl.lit("e:1"), prompt=pl.lit("")), kind="annotation")


def test_ultrafeedback_keeps_critique_scores_and_aspect_rationales():
    rows = load_ultrafeedback(FIX / "ultrafeedback.jsonl")
    r = rows.row(0, named=True)
    meta = json.loads(r["meta"])
    assert r["rationale"] == records("ultrafeedback.jsonl")[0]["completions"][0]["critique"]
    assert (meta["overall_score"], meta["fine-grained_score"]) == (9.0, 4.5)
    assert meta["annotations"]["helpfulness"]["Rationale"] == "Clear and relevant."


# --------------------------------------------------------------------------- formats added for real data
def _j(msgs: list[dict]) -> str:
    """Messages as the loaders store them: compact JSON, keys role then content."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in msgs], ensure_ascii=False,
                      separators=(",", ":"))


def test_ultrafeedback_binarized_stores_the_question_once_and_ties_as_ties():
    rows = load_trl_preference(FIX / "ultrafeedback_binarized.jsonl", dataset="uf")
    src = records("ultrafeedback_binarized.jsonl")
    assert rows["prompt"].to_list() == [s["prompt"] for s in src]
    assert rows["response_a"].to_list() == [_j(s["chosen"][1:]) for s in src]  # the user turn left out
    assert rows["response_b"].to_list() == [_j(s["rejected"][1:]) for s in src]
    assert rows.select("choice", "score_a", "score_b").rows() == [("a", 9.0, 2.0), ("tie", 7.5, 7.5)]
    assert rows["response_a_id"][0] == cid("They weigh the same: one kilogram each.")


@pytest.mark.parametrize("name", ["trl_unpaired.jsonl", "trl_unpaired_conversational.jsonl"])
def test_kto_unpaired_rows_are_thumbs_up_or_down_ratings(name):
    kind, rows = load(FIX / name, "kto", dataset="toy/kto")
    src = records(name)
    assert kind == "rating"
    assert rows["rating_id"].to_list() == ["toy/kto:0", "toy/kto:1"]
    assert rows["aspects"].to_list() == [[{"key": "desirable", "value": 1}], [{"key": "desirable", "value": 0}]]
    assert rows.select("scale_min", "scale_max", "annotator", "task_id").unique().rows() == [(0, 1, "kto:unknown", "kto")]
    text = (lambda v: v) if isinstance(src[0]["prompt"], str) else _j
    assert rows["prompt"].to_list() == [text(s["prompt"]) for s in src]
    assert rows["response"].to_list() == [text(s["completion"]) for s in src]
    assert rows["sample_id"][0] == cid("blue." if "conv" not in name else "It is blue.")


def test_kto_bad_label_and_short_messages():
    with raises_at(0, "label"):
        load("kto", "kto") if False else FORMATS["kto"].loader([{"prompt": "p", "completion": "c", "label": "yes"}])
    with raises_at(1, "messages"):
        FORMATS["kto"].loader([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                "label": True}, {"messages": [{"role": "user", "content": "a"}], "label": False}])


@pytest.mark.parametrize("name", ["oasst_flat.jsonl", "oasst_tree_labels.jsonl"])
def test_oasst_ranked_siblings_become_pairs_with_tree_and_labels_kept(name):
    kind, rows = load(FIX / name, "oasst", dataset="oa")
    assert kind == "annotation"
    assert set(rows["display_order_known"]) == {False} and set(rows["annotator"]) == {"oasst:rankers"}
    meta = [json.loads(m) for m in rows["meta"]]
    if name == "oasst_flat.jsonl":
        # 3 ranked replies to the root give 3 pairs, 2 ranked replies to the follow-up give 1
        assert rows.height == 4
        assert rows["choice"].to_list() == ["a", "a", "b", "a"]  # rank 0 beats 2 and 1; 1 beats 2; 0 beats 1
        assert [(m["a"]["rank"], m["b"]["rank"]) for m in meta] == [(0, 2), (0, 1), (2, 1), (0, 1)]
        assert meta[2]["a"]["labels"] == {"name": ["spam", "quality"], "value": [0.0, 0.25], "count": [3, 3]}
        deep = rows.row(3, named=True)
        assert json.loads(deep["prompt"]) == [
            {"role": "user", "content": "Can you explain what a hash table is?"},
            {"role": "assistant", "content": "A hash table stores key-value pairs in an array, using a hash function "
                                             "to turn each key into an index."},
            {"role": "user", "content": "What happens when two keys hash to the same index?"}]
        assert meta[3]["parent_id"] == "0f1e2d3c-4b5a-6978-8a9b-acbdcedfe0f1"
        assert deep["task_id"] == "oa:6ab24d72-0181-4594-a9cd-deaf170242fb"
        assert deep["annotation_id"] == "oa:1a2b3c4d-5e6f-4a8b-9cad-becfd0e1f2a3:2b3c4d5e-6f7a-4b9c-8dbe-cfd0e1f2a3b4"
    else:  # the deleted, unranked reply takes part in no pair
        assert rows.select("choice", "response_b").row(0) == (
            "b", _j([{"role": "assistant", "content": "Cheerful, joyful, content or glad all work."}]))
        assert meta[0]["b"]["labels"] == {"spam": {"value": 0.0, "count": 3}, "helpfulness": {"value": 0.92, "count": 3}}
        assert meta[0]["b"]["emojis"] == {"+1": 4} and meta[0]["message_tree_id"] == rows["task_id"][0][3:]


def test_oasst_flat_row_with_unknown_parent():
    src = records("oasst_flat.jsonl")
    src[4]["parent_id"] = "nope"
    with raises_at(4, "parent_id"):
        FORMATS["oasst"].loader(src)


def test_chatbot_arena_and_mt_bench_judgments():
    rows = load(FIX / "chatbot_arena.jsonl", "chatbot-arena", dataset="arena")[1]
    src = records("chatbot_arena.jsonl")
    assert rows["choice"].to_list() == ["b", "tie", "a"]
    assert rows.select("model_a", "model_b").rows() == [(s["model_a"], s["model_b"]) for s in src]
    assert rows["annotator"].to_list() == [s["judge"] for s in src]
    assert rows["submitted_at"][0] == datetime.fromtimestamp(src[0]["tstamp"], UTC)
    assert rows["display_order_known"].to_list() == [True] * 3  # model A is the left panel
    assert json.loads(rows["meta"][1])["winner"] == "tie (bothbad)"
    # a two-turn conversation: the shared first question is the prompt, the rest are the responses
    assert rows["prompt"][2] == _j(src[2]["conversation_a"][:1])
    assert rows["response_b"][2] == _j(src[2]["conversation_b"][1:])
    assert rows["task_id"][0] == "arena:58210e39b3fd4441a2bd4a518bb44c2d"
    mt = load(FIX / "mt_bench_human.jsonl", "chatbot-arena", dataset="mt")[1]
    mt_src = records("mt_bench_human.jsonl")
    # turn 1 judges the first answer only; turn 2 the whole two-turn conversation
    assert mt["response_a"].to_list() == [_j(mt_src[0]["conversation_a"][1:2]), _j(mt_src[1]["conversation_a"][1:])]
    assert mt["choice"].to_list() == ["b", "tie"] and mt["submitted_at"].null_count() == 2


def test_chatbot_arena_bad_winner():
    src = records("chatbot_arena.jsonl")
    src[1]["winner"] = "model_c"
    with raises_at(1, "winner"):
        FORMATS["chatbot-arena"].loader(src)


def test_pku_saferlhf_keeps_better_and_safer_apart():
    rows = load(FIX / "pku_saferlhf.jsonl", "pku-saferlhf", dataset="pku")[1]
    assert rows.select("annotation_id", "task_id", "choice").rows() == [
        ("pku:0:better", "pku:better", "b"), ("pku:0:safer", "pku:safer", "a"),
        ("pku:1:better", "pku:better", "a"), ("pku:1:safer", "pku:safer", "a")]
    assert rows.select("model_a", "model_b").row(0) == ("Alpaca-7B", "Alpaca3-8B")
    meta = json.loads(rows["meta"][1])
    assert (meta["criterion"], meta["is_response_1_safe"], meta["response_1_severity_level"]) == ("safer", False, 2)
    assert meta["response_1_harm_category"] == {"Cybercrime": True, "Privacy Violation": True}
    assert set(rows["display_order_known"]) == {False}
    src = records("pku_saferlhf.jsonl")
    src[1]["safer_response_id"] = 2
    with raises_at(1, "safer_response_id"):
        FORMATS["pku-saferlhf"].loader(src)


def test_summarize_from_feedback_comparisons():
    rows = load(FIX / "summarize_from_feedback.jsonl", "summarize-from-feedback", dataset="tldr")[1]
    src = records("summarize_from_feedback.jsonl")
    info = src[0]["info"]
    assert rows["prompt"][0] == (f"SUBREDDIT: r/{info['subreddit']}\n\nTITLE: {info['title']}\n\n"
                                 f"POST: {info['post']}\n\nTL;DR:")  # as TRL's tldr-preference writes it
    assert rows["prompt"][1] == f"Article:\n{src[1]['info']['article']}\n\nTL;DR:"
    assert rows.select("choice", "annotator", "strength", "model_a", "model_b", "task_id").rows() == [
        ("a", src[0]["worker"], 8, "sup2", "ref", "tldr:batch3"),
        ("b", src[1]["worker"], 3, "sup4_ppo_rm4_t.7", "sup4_t.7", "tldr:cnndm0")]
    assert rows["response_a"][0] == src[0]["summaries"][0]["text"]  # stored as it is, leading space too
    assert rows["response_a_id"][0] == cid(src[0]["summaries"][0]["text"].strip())  # TRL strips it
    assert json.loads(rows["meta"][0]) == {"info_id": "t3_34xale", "split": "train", "batch": "batch3",
                                           "notes": [None, "too short"]}
    src[0]["choice"] = 2
    with raises_at(0, "choice"):
        FORMATS["summarize-from-feedback"].loader(src)


@pytest.mark.parametrize("name,fmt", [
    ("trl_unpaired.jsonl", "kto"), ("oasst_flat.jsonl", "oasst"), ("chatbot_arena.jsonl", "chatbot-arena"),
    ("pku_saferlhf.jsonl", "pku-saferlhf"), ("summarize_from_feedback.jsonl", "summarize-from-feedback"),
    ("ultrafeedback_binarized.jsonl", "trl-preference")])
def test_new_formats_go_into_a_store_and_verify(name, fmt, store, keys_dir):
    kind, rows = load(FIX / name, fmt)
    assert rows.columns == KINDS[kind].names
    store.extend(rows, kind=kind)
    assert store.counts()[kind] == rows.height
    store.snapshot()
    assert store.verify(keys_dir).ok
