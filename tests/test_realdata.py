"""Real public files (../shared/realdata, provenance in its SOURCES.md) through the loaders, the CLI,
the store and the analyses: each test here failed on a real file before the fix it covers."""
from __future__ import annotations

import copy
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from rlhf_audit_kit import open_store
from rlhf_audit_kit.analysis import (agreement_matrix, annotator_drift, annotator_report, summary,
                                     throughput)
from rlhf_audit_kit.cli import main
from rlhf_audit_kit.errors import AuditKitError
from rlhf_audit_kit.ingest import (SkippedRowsWarning, load, load_hh_rlhf, load_label_studio,
                                   load_trl_preference)

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata"
HH = "hh-rlhf_harmless-base_test.jsonl.gz"
LS_FULL = "label-studio_pairwise_export_full.json"
LS_UNSELECTED = "label-studio_pairwise_export_with_unselected.json"
LS_MIN = "label-studio_pairwise_export_min.json"
LS_CSV = "label-studio_pairwise_export.csv"
#: every real file, the format it is in, and the dataset name it is loaded under
ALL_FILES = [
    (HH, "hh-rlhf", "anthropic/hh-rlhf@harmless-base-test"),
    ("dpo_en_demo.json", "sharegpt-dpo", "llama-factory/dpo_en_demo"),
    ("kto_en_demo.json", "kto", "llama-factory/kto_en_demo"),
    ("oasst_en_100_tree.jsonl", "oasst", "oasst/en_100_tree"),
    (LS_FULL, "label-studio", "ls/full"),
    (LS_UNSELECTED, "label-studio", "ls/with-unselected"),
    (LS_MIN, "label-studio", "ls/min"),
    (LS_CSV, "label-studio", "ls/csv"),
]


@pytest.fixture(scope="session")
def real() -> Path:
    """The folder of real files; missing is a failure, never a skip (CI checks it out beside the repo)."""
    if not (REAL / HH).is_file():
        pytest.fail(f"{REAL} is missing or incomplete: the real-data tests need the files listed in its "
                    "SOURCES.md next to the repository (../shared/realdata)")
    return REAL


@pytest.fixture(scope="session")
def hh_records(real) -> list[dict]:
    with gzip.open(real / HH, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def ingest(path: Path, fmt: str, store: Path, keys: Path, *extra: str) -> int:
    return cli("ingest", path, "--format", fmt, "--store", store, "--keys", keys, *extra)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "default"})


# --------------------------------------------------------------------------- wrong answers
@pytest.mark.parametrize("fmt", ["hh-rlhf", "trl-preference"])
def test_hh_display_order_is_unknown_and_raises_no_position_alarm(real, fmt, tmp_path, keys_dir):
    """HH-RLHF and TRL put the chosen response in slot A by construction: the rows say the display
    order is unknown, position bias leaves them out (with the count), and summary() raises no alarm."""
    assert ingest(real / HH, fmt, tmp_path / "s.duckdb", keys_dir) == 0
    with open_store(tmp_path / "s.duckdb", keys=keys_dir) as store:
        order = store.sql("SELECT display_order_known AS k, count(*) AS n FROM annotation GROUP BY ALL")
        assert order.rows() == [(False, 2312)]
        rep = annotator_report(store)
        assert rep.select("n_ab", "n_order_unknown", "position_a_share").row(0) == (0, 2312, None)
        s = summary(store)
    assert "position bias" not in s.findings["finding"].to_list()
    assert "2,312 a/b choices" in s.notes["position bias"]


def test_dashboard_position_bias_leaves_unknown_order_out_and_counts_it(real, tmp_path, keys_dir):
    from rlhf_audit_kit.apps._data import as_source
    from rlhf_audit_kit.apps.annotators import annotator_pairs, annotator_table, load_annotations
    assert ingest(real / HH, "hh-rlhf", tmp_path / "s.duckdb", keys_dir) == 0
    with open_store(tmp_path / "s.duckdb", keys=keys_dir) as store:
        ann = load_annotations(as_source(store))
    table = annotator_table(ann, annotator_pairs(ann))
    assert table.select("n_ab", "n_order_unknown", "share_a").row(0) == (0, 2312, None)
    assert "position bias" not in table["flags"][0]
    assert ann["timed"].sum() == 0  # the per-day charts leave them out and say so in their titles
    from rlhf_audit_kit.apps import AnnotatorBehaviour
    with open_store(tmp_path / "s.duckdb", keys=keys_dir, read_only=True) as store:
        view = AnnotatorBehaviour(store)
        titles = [p.opts.get().kwargs["title"] for p in (view.throughput(), view.position_bias())]
    assert "2,312 without a time of their own not shown" in titles[0]
    assert "2,312 a/b choices of unknown display order left out" in titles[1]


def test_a_loaded_file_has_no_annotation_time_so_no_throughput_speed_or_drift(real, tmp_path, keys_dir):
    """HH rows carry no time of their own: the recording time is the ingest, which says nothing
    about the annotators, so throughput and drift are not computed and summary() says why."""
    assert ingest(real / HH, "hh-rlhf", tmp_path / "s.duckdb", keys_dir) == 0
    with open_store(tmp_path / "s.duckdb", keys=keys_dir) as store:
        assert throughput(store).height == 0
        assert annotator_drift(store).height == 0
        rep = annotator_report(store)
        assert rep.select("n", "n_untimed", "throughput_per_day", "time_median_s").row(0) == (
            2312, 2312, None, None)
        s = summary(store)
    assert "2,312 annotations have no time of their own" in s.notes["annotator drift"]
    assert "drifting annotator" not in s.findings["finding"].to_list()


def test_agreement_is_computed_with_two_raters_per_item(real):
    """19 Label Studio tasks have two raters: agreement with the one other rater is well defined."""
    rows = load_label_studio(real / LS_FULL)
    rep = annotator_report(rows, min_n=5)
    assert rep.sort("annotator")["agreement_n"].to_list() == [19, 19]
    assert agreement_matrix(rows)["n"].to_list() == [19]
    # both raters are compared on the same 19 items, so their agreement is the same number
    assert rep["agreement"].n_unique() == 1
    assert 0 < rep["agreement"][0] < 1


def test_two_exports_of_one_project_count_each_judgement_once(real, store):
    """The JSON and JSON_MIN exports hold the same 59 judgements: loaded under two dataset names, the
    analyses see 59, not 118 (a true repeat would have other times)."""
    full = load_label_studio(real / LS_FULL, dataset="ls/full")
    both = pl.concat([full, load_label_studio(real / LS_MIN, dataset="ls/min")])
    one = annotator_report(full, min_n=5).select("n", "n_ab", "n_repeated").sort("n")
    assert annotator_report(both, min_n=5).select("n", "n_ab", "n_repeated").sort("n").equals(one)
    store.extend(both, kind="annotation")
    assert annotator_report(store, min_n=5).select("n", "n_ab", "n_repeated").sort("n").equals(one)
    assert one["n"].to_list() == [19, 40]


# --------------------------------------------------------------------------- refused or mangled
def test_trl_implicit_layout_of_hh_keeps_empty_final_turns(real, hh_records, store):
    """Four HH rows end with an empty chosen turn: that is data, stored as it is (what follows the
    last '\\n\\nAssistant:'), and the other 2,311 rows of the file load with them."""
    rows = load_trl_preference(real / HH)
    assert rows.height == 2312
    empty = rows.with_row_index().filter(pl.col("response_a").str.strip_chars() == "")["index"].to_list()
    assert len(empty) == 4 and 86 in empty
    assert hh_records[86]["chosen"].endswith("\n\nAssistant: ")
    assert rows["prompt"][86] + rows["response_a"][86] == hh_records[86]["chosen"]
    store.extend(rows, kind="annotation")
    got = store.sql("SELECT response_a FROM annotation WHERE annotation_id = ?", [rows["annotation_id"][86]])
    assert got.item() == " "


def test_trl_implicit_split_of_hh_ends_at_the_last_turn_boundary(real):
    """The common prefix must not cut mid-word ('...Assistant: D' + 'uckduckgo is'): the prompt is the
    conversation up to the last '\\n\\nAssistant:', exactly as the HH loader splits it."""
    trl, hh = load_trl_preference(real / HH), load_hh_rlhf(real / HH)
    assert trl["prompt"].str.ends_with("\n\nAssistant:").all()
    assert (trl["prompt"] == hh["prompt"]).all()
    for col in ("response_a", "response_b"):
        assert (trl[col].str.strip_chars() == hh[col].str.strip_chars()).all()


def _hh_messages(text: str) -> list[dict]:
    """An HH transcript as a TRL message list (how trl-lib/hh-rlhf-helpful-base was made)."""
    import re
    parts = re.split(r"\n\n(Human|Assistant): ?", text)[1:]
    return [{"role": "user" if parts[i] == "Human" else "assistant", "content": parts[i + 1]}
            for i in range(0, len(parts), 2)]


def test_content_ids_agree_across_hh_transcript_trl_string_and_trl_message_forms(real, hh_records):
    conv = []
    for r in hh_records:
        hh = load_hh_rlhf([r])
        prompt = _hh_messages(hh["prompt"][0])[:-1]  # the last is the empty generation turn
        conv.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": hh["response_a"][0].strip()}],
                     "rejected": [{"role": "assistant", "content": hh["response_b"][0].strip()}]})
    ids = ["prompt_id", "response_a_id", "response_b_id"]
    a = load_hh_rlhf(real / HH).select(ids)
    b = load_trl_preference(real / HH).select(ids)
    c = load_trl_preference(conv).select(ids)
    assert a.equals(b) and a.equals(c)


def test_label_studio_deselected_choice_is_skipped_with_a_count_and_a_warning(real):
    with pytest.warns(SkippedRowsWarning, match="skipped 1 annotation with no pairwise choice") as w:
        rows = load_label_studio(real / LS_UNSELECTED)
    assert w[0].message.count == 1
    assert "task 26" in str(w[0].message)
    assert rows.height == 59


def _ls_key(rows: pl.DataFrame) -> pl.DataFrame:
    cols = ["annotation_id", "task_id", "choice", "annotator", "submitted_at", "shown_at", "prompt_id",
            "response_a_id", "response_b_id", "rationale", "display_order_known"]
    return rows.select(cols).sort("annotation_id")


@pytest.mark.parametrize("name", [LS_MIN, LS_CSV])
def test_label_studio_json_min_and_csv_exports_give_the_full_exports_rows(real, name):
    full = load_label_studio(real / LS_FULL, dataset="ls", rationale_from="why")
    other = load_label_studio(real / name, dataset="ls", rationale_from="why")
    assert other.height == full.height == 59
    assert _ls_key(other).equals(_ls_key(full))
    assert full["rationale"].drop_nulls().unique().to_list() == ["safer"]


def test_label_studio_ground_truth_becomes_the_gold_choice(real, tmp_path):
    """A copy of the full export with annotation 1 (task 1) marked ground truth (the only change)."""
    tasks = json.loads((real / LS_FULL).read_text(encoding="utf-8"))
    tasks = copy.deepcopy(tasks)
    ann = next(a for a in tasks[0]["annotations"] if a["id"] == 1)
    ann["ground_truth"] = True
    rows = load_label_studio(tasks, dataset="ls")
    gold = dict(rows.select("annotation_id", "gold_choice").rows())
    choice = dict(rows.select("annotation_id", "choice").rows())
    assert gold["ls:1:41"] == choice["ls:1:1"] == "b"
    assert gold["ls:1:1"] is None  # the reference itself is not scored against itself
    assert rows.filter(pl.col("task_id") != "ls:1")["gold_choice"].null_count() == rows.height - 2


def test_cli_offers_the_label_studio_options(real, tmp_path, keys_dir):
    store = tmp_path / "s.duckdb"
    assert ingest(real / LS_FULL, "label-studio", store, keys_dir, "--from-name", "comparison",
                  "--rationale-from", "why", "--prompt-key", "prompt", "--response-a-key", "answer1",
                  "--response-b-key", "answer2", "--dataset", "ls") == 0
    with open_store(store, keys=keys_dir, read_only=True) as s:
        assert s.sql("SELECT count(*) FILTER (rationale = 'safer') AS n FROM annotation").item() == 8
    bad = run_cli("ingest", real / LS_FULL, "--format", "label-studio", "--store", tmp_path / "t.duckdb",
                  "--keys", keys_dir, "--from-name", "nope")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "no pairwise choice from 'nope'" in bad.stderr


def test_git_lfs_pointer_is_named_not_a_gzip_or_json_error(tmp_path, keys_dir):
    pointer = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 742801\n")
    for name in ("test.jsonl.gz", "dpo_en_demo.json"):
        (tmp_path / name).write_text(pointer)
        with pytest.raises(AuditKitError, match="Git LFS pointer"):
            load(tmp_path / name, "hh-rlhf")
    out = run_cli("ingest", tmp_path / "test.jsonl.gz", "--format", "hh-rlhf", "--store", tmp_path / "s.duckdb",
                  "--keys", keys_dir)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "git lfs pull" in out.stderr


def test_malformed_jsonl_line_is_named_in_one_line(tmp_path, keys_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant: c"}\n'
                   '{"chosen": "x", "rejected": \n')
    out = run_cli("ingest", bad, "--format", "hh-rlhf", "--store", tmp_path / "s.duckdb", "--keys", keys_dir)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "bad.jsonl" in out.stderr and "line 2" in out.stderr


def test_a_second_hh_file_gets_its_own_ids_and_the_same_file_twice_is_refused(real, tmp_path, keys_dir):
    other = tmp_path / "helpful-base" / "test.jsonl.gz"
    other.parent.mkdir()
    shutil.copy(real / HH, other)
    store = tmp_path / "s.duckdb"
    assert ingest(real / HH, "hh-rlhf", store, keys_dir) == 0
    assert ingest(other, "hh-rlhf", store, keys_dir) == 0
    with open_store(store, keys=keys_dir, read_only=True) as s:
        ds = dict(s.sql("SELECT dataset, count(*) FROM annotation GROUP BY ALL").rows())
    assert ds == {"realdata/hh-rlhf_harmless-base_test": 2312, "helpful-base/test": 2312}
    again = run_cli("ingest", real / HH, "--format", "hh-rlhf", "--store", store, "--keys", keys_dir)
    assert again.returncode == 2 and "duplicate" in again.stderr and "Traceback" not in again.stderr


# --------------------------------------------------------------------------- formats added
def _j(msgs: list[dict]) -> str:
    return json.dumps(msgs, ensure_ascii=False, separators=(",", ":"))


def test_sharegpt_dpo_demo_file_field_by_field(real):
    src = json.loads((real / "dpo_en_demo.json").read_text(encoding="utf-8"))
    kind, rows = load(real / "dpo_en_demo.json", "sharegpt-dpo")
    assert kind == "annotation" and rows.height == 300
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    for r, s in zip(rows.iter_rows(named=True), src):
        assert r["prompt"] == _j([{"role": role[m["from"]], "content": m["value"]} for m in s["conversations"]])
        assert r["response_a"] == _j([{"role": "assistant", "content": s["chosen"]["value"]}])
        assert r["response_b"] == _j([{"role": "assistant", "content": s["rejected"]["value"]}])
    assert sum(len(s["conversations"]) > 1 for s in src) == 186
    assert set(rows["choice"]) == {"a"} and set(rows["display_order_known"]) == {False}
    assert rows["annotation_id"][0] == "realdata/dpo_en_demo:0"


def test_kto_demo_file_is_300_thumbs_up_or_down_ratings(real):
    src = json.loads((real / "kto_en_demo.json").read_text(encoding="utf-8"))
    kind, rows = load(real / "kto_en_demo.json", "kto")
    assert kind == "rating" and rows.height == 300
    ups = rows["aspects"].list.first().struct.field("value")
    assert ups.to_list() == [int(s["label"]) for s in src] and ups.sum() == 150
    for r, s in zip(rows.iter_rows(named=True), src):
        msgs = [{"role": m["role"], "content": m["content"]} for m in s["messages"]]
        assert (r["prompt"], r["response"]) == (_j(msgs[:-1]), _j(msgs[-1:]))


def test_oasst_trees_give_one_pair_per_two_ranked_siblings(real):
    kind, rows = load(real / "oasst_en_100_tree.jsonl", "oasst")
    assert kind == "annotation" and rows.height == _oasst_pairs(real)
    meta = [json.loads(m) for m in rows["meta"]]
    # the better rank wins every pair, and every tree with a ranked pair is a task
    for m, choice in zip(meta, rows["choice"]):
        assert choice == ("a" if m["a"]["rank"] < m["b"]["rank"] else "b")
    trees = {json.loads(line)["message_tree_id"] for line in
             (real / "oasst_en_100_tree.jsonl").read_text(encoding="utf-8").splitlines()}
    assert {t.split(":", 1)[1] for t in rows["task_id"]} <= trees
    assert {m["message_tree_id"] for m in meta} == {t.split(":", 1)[1] for t in rows["task_id"]}
    assert rows["annotation_id"].is_unique().all()


# --------------------------------------------------------------------------- acceptance
def test_every_real_file_through_the_cli_into_one_store_then_snapshot_verify_and_summary(real, tmp_path,
                                                                                         keys_dir):
    store = tmp_path / "real.duckdb"
    for name, fmt, dataset in ALL_FILES:
        assert ingest(real / name, fmt, store, keys_dir, "--dataset", dataset) == 0, name
    assert cli("snapshot", store, "--keys", keys_dir) == 0
    assert cli("verify", store, "--vkey", keys_dir / "verifier.vkey") == 0
    with open_store(store, keys=keys_dir, read_only=True) as s:
        counts = s.counts()
        datasets_ = set(s.sql("SELECT DISTINCT dataset FROM annotation UNION "
                              "SELECT DISTINCT dataset FROM rating")["dataset"].to_list())
        found = summary(s)
    assert datasets_ == {d for *_, d in ALL_FILES}
    assert counts["rating"] == 300
    assert counts["annotation"] == 2312 + 300 + 4 * 59 + _oasst_pairs(real)
    assert found.findings.height == 0, found


def _oasst_pairs(real: Path) -> int:
    n = 0

    def walk(m: dict) -> None:
        nonlocal n
        k = sum(r.get("rank") is not None for r in m.get("replies", []))
        n += k * (k - 1) // 2
        for r in m.get("replies", []):
            walk(r)
    for line in (real / "oasst_en_100_tree.jsonl").read_text(encoding="utf-8").splitlines():
        walk(json.loads(line)["prompt"])
    return n
