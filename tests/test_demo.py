"""The synthetic campaign: determinism, schema conformance, planted behaviours, scaling."""
from __future__ import annotations

import io
import time

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rlhf_audit_kit import demo
from rlhf_audit_kit.schema import KINDS

DEMO_KINDS = demo.KIND_ORDER
AB = pl.col("choice").is_in(["a", "b"])

# Written out here, independently of demo.frame_schema, so the test is an oracle for it.
EXPECTED_DTYPE = {
    "id": pl.Utf8, "text": pl.Utf8, "int": pl.Int64, "float": pl.Float64,
    "ts": pl.Datetime("us"), "bool": pl.Boolean, "json": pl.Utf8,
    "map_float": pl.List(pl.Struct({"key": pl.Utf8, "value": pl.Float64})),
    "map_int": pl.List(pl.Struct({"key": pl.Utf8, "value": pl.Int64})),
}


@pytest.fixture(scope="module")
def tiny() -> demo.Campaign:
    return demo.Campaign(1_000, seed=0)


@pytest.fixture(scope="module")
def tiny_frames(tiny) -> dict[str, pl.DataFrame]:
    return tiny.frames()


@pytest.fixture(scope="module")
def small() -> demo.Campaign:
    return demo.Campaign(20_000, seed=3)


@pytest.fixture(scope="module")
def small_frames(small) -> dict[str, pl.DataFrame]:
    return small.frames()


def labelled(camp: demo.Campaign, frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Annotations with the planted role, the latent preference, seconds per item and the longer side."""
    gt = camp.ground_truth
    role = {a: r for r in demo.ROLES for a in gt[r]}
    latent = camp.latent().select("response_a_id", "preferred", "is_eval")
    return frames["annotation"].join(latent, on="response_a_id", how="left").with_columns(
        role=pl.col("annotator").replace_strict(role),
        secs=(pl.col("submitted_at") - pl.col("shown_at")).dt.total_microseconds() / 1e6,
        longer=pl.when(pl.col("response_a").str.len_chars() >= pl.col("response_b").str.len_chars())
        .then(pl.lit("a")).otherwise(pl.lit("b")),
    )


def metrics(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return (frames["train_step"].explode("metrics").unnest("metrics")
            .pivot("key", index="step", values="value").sort("step"))


def slope(x, y) -> float:
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def ipc_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


# -- determinism ------------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_frames(tiny_frames):
    again = demo.Campaign(1_000, seed=0).frames()
    assert list(again) == list(tiny_frames) == list(DEMO_KINDS)
    for kind in DEMO_KINDS:
        assert_frame_equal(again[kind], tiny_frames[kind])
        assert ipc_bytes(again[kind]) == ipc_bytes(tiny_frames[kind]), kind


def test_different_seed_differs(tiny_frames, tiny):
    other = demo.Campaign(1_000, seed=1)
    f = other.frames()
    for kind in ("annotation", "train_step", "reward_score", "checkpoint", "rating"):
        assert not f[kind].equals(tiny_frames[kind]), kind
    assert other.ground_truth["random"] != tiny.ground_truth["random"] or \
        other.ground_truth["position_biased"] != tiny.ground_truth["position_biased"]


def test_chunking_never_changes_the_events(tiny_frames):
    parts: dict[str, list[pl.DataFrame]] = {}
    for kind, frame in demo.Campaign(1_000, seed=0).iter_frames(chunk_rows=97):
        assert 0 < frame.height <= 97
        parts.setdefault(kind, []).append(frame)
    for kind in DEMO_KINDS:
        assert_frame_equal(pl.concat(parts[kind]), tiny_frames[kind])


def test_kinds_filter_and_order():
    camp = demo.Campaign(1_000)
    kinds = [k for k, _ in camp.iter_frames(kinds=["oversight", "dataset"])]
    assert kinds == ["dataset", "oversight"]
    assert list(camp.frames(kinds=["checkpoint"])) == ["checkpoint"]


# -- schema conformance -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", DEMO_KINDS)
def test_columns_and_dtypes_follow_the_schema(tiny_frames, kind):
    frame = tiny_frames[kind]
    fields = KINDS[kind].fields
    assert frame.columns == [f.name for f in fields]
    for f in fields:
        assert frame.schema[f.name] == EXPECTED_DTYPE[f.type], (kind, f.name)
    assert demo.frame_schema(kind) == frame.schema


@pytest.mark.parametrize("kind", DEMO_KINDS)
def test_required_fields_are_never_null(tiny_frames, kind):
    frame = tiny_frames[kind]
    assert frame.height > 0
    for f in KINDS[kind].fields:
        if f.required:
            assert frame[f.name].null_count() == 0, (kind, f.name)


@pytest.mark.parametrize("kind", DEMO_KINDS)
def test_choices_limits_and_uniqueness(small_frames, kind):
    frame = small_frames[kind]
    for f in KINDS[kind].fields:
        col = frame[f.name].drop_nulls()
        if f.choices:
            assert set(col.unique()) <= set(f.choices), (kind, f.name)
        if f.min is not None:
            assert (col >= f.min).all(), (kind, f.name)
        if f.max is not None:
            assert (col <= f.max).all(), (kind, f.name)
        if f.type == "id":
            assert (col.str.len_chars() <= 512).all()
    for key in KINDS[kind].unique:
        assert not frame.select(key).is_duplicated().any(), (kind, key)


def test_annotation_ids_unique_and_times_ordered(small_frames, small):
    a = small_frames["annotation"]
    assert a["annotation_id"].n_unique() == a.height
    assert (a["submitted_at"] >= a["shown_at"]).all()
    gt = small.ground_truth
    assert a["shown_at"].min() >= gt["campaign_start"]
    # shown_at spread over the ~30 days
    days = (a["shown_at"].max() - a["shown_at"].min()).total_seconds() / 86_400
    assert 25 <= days <= 31


def test_hashes_and_ids_look_real(tiny_frames):
    pattern = r"^sha256:[0-9a-f]{64}$"
    for kind in ("checkpoint", "dataset"):
        assert tiny_frames[kind]["content_hash"].str.contains(pattern).all()
        assert tiny_frames[kind]["content_hash"].n_unique() == tiny_frames[kind].height
    ann = tiny_frames["annotation"]["annotator"]
    assert ann.str.contains(r"^annotator-\d{2}@vendor\.example$").all()


def test_texts_are_varied_english_of_realistic_length(small_frames):
    a = small_frames["annotation"]
    p = a["prompt"].str.len_chars()
    r = pl.concat([a["response_a"], a["response_b"]]).str.len_chars()
    assert 75 <= p.quantile(0.1) and p.quantile(0.9) <= 200
    assert 100 <= r.quantile(0.05) and r.quantile(0.8) <= 600
    assert r.std() > 60  # genuine length variation
    assert a["prompt"].n_unique() > 1_000
    assert a["response_a"].n_unique() > 0.9 * a["response_a_id"].n_unique()
    assert a["response_a"].str.contains(r"^[A-Z].*[.!?]$").mean() > 0.99
    for word in ("Python", "recipe", "trip", "sleep", "theorem", "letter"):
        assert a["prompt"].str.contains(word).any(), word


# -- campaign structure -------------------------------------------------------------------------
def test_overlap_repeats_gold_ties_and_guidelines(small_frames, small):
    a = labelled(small, small_frames)
    per_pair = a.group_by("response_a_id").agg(pl.col("annotator").n_unique())
    assert per_pair["annotator"].median() == 3
    repeated = a.select(pl.struct("annotator", "response_a_id").is_duplicated()).to_series()
    assert 0.03 < repeated.mean() / 2 < 0.07  # each repeat marks two rows
    gold = a.filter(pl.col("gold_choice").is_not_null())
    assert 0.01 < gold["response_a_id"].n_unique() / per_pair.height < 0.03
    assert (gold["gold_choice"] == gold["preferred"]).all()
    shares = a["choice"].value_counts(normalize=True)
    share = dict(zip(shares["choice"], shares["proportion"]))
    assert 0.01 < share["tie"] < 0.08 and 0.002 < share["skip"] < 0.03
    change = small.ground_truth["guideline_change"]
    assert (a.filter(pl.col("shown_at") < change)["guideline_version"] == "v1.0").all()
    assert (a.filter(pl.col("shown_at") >= change)["guideline_version"] == "v1.1").all()
    assert a["task_id"].n_unique() > 100
    assert a["dataset"].unique().to_list() == ["demo-prefs@v1"]


def test_ground_truth_partitions_the_annotators(small, small_frames):
    gt = small.ground_truth
    ids = [a for r in demo.ROLES for a in gt[r]]
    assert len(ids) == len(set(ids)) == small.n_annotators
    assert [len(gt[r]) for r in demo.ROLES] == [18, 2, 2, 1, 1]
    assert set(small_frames["annotation"]["annotator"].unique()) == set(ids)
    assert gt["run_id"] == "ppo-demo-001"
    assert gt["campaign_start"] < gt["guideline_change"] < gt["drift_start"] < gt["campaign_end"]


def test_run_checkpoints_rewards_and_oversight_hang_together(tiny_frames, tiny):
    f, gt = tiny_frames, tiny.ground_truth
    ck = f["checkpoint"]
    assert ck["step"].is_sorted() and (ck["run_id"] == gt["run_id"]).all()
    names = tiny.model_names
    assert ck["parent"].to_list() == names[:-1]
    assert set(f["reward_score"]["step"].unique()) == {0, *ck["step"].to_list()}
    models = set(f["annotation"]["model_a"]) | set(f["annotation"]["model_b"])
    assert models <= set(names) and demo.BASELINE in models and len(models) > 5
    steps = f["train_step"]["step"]
    assert steps.to_list() == list(range(1, tiny.n_steps + 1))
    keys = set(f["train_step"]["metrics"].explode().struct.field("key"))
    assert {"objective/kl", "objective/entropy", "objective/rlhf_reward", "objective/scores",
            "policy/approxkl_avg", "loss/policy_avg", "loss/value_avg", "val/ratio"} <= keys
    ov = f["oversight"]
    assert {"approve", "flag", "halt", "rollback"} <= set(ov["decision"])
    assert set(ov["subject_checkpoint"].drop_nulls()) <= set(names)
    assert ov.filter(pl.col("decision") == "rollback")["subject_checkpoint"].item() == gt["last_healthy_checkpoint"]
    ds = f["dataset"].filter(pl.col("name") == "demo-prefs")
    assert ds["row_count"].item() == f["annotation"].height
    aspects = f["rating"]["aspects"].explode().struct.unnest()
    assert set(aspects["key"]) == {"helpfulness", "honesty"} and aspects["value"].is_between(1, 5).all()


# -- planted annotator behaviours -----------------------------------------------------------------
@pytest.mark.parametrize("size,seed", [(1_000, 0), (1_000, 7), (20_000, 3)])
def test_planted_annotators_visible_by_role(size, seed):
    camp = demo.Campaign(size, seed=seed)
    a = labelled(camp, camp.frames(kinds=["annotation"]))
    by = {r["role"]: r for r in a.group_by("role").agg(
        share_a=(pl.col("choice") == "a").mean(),
        longer=(pl.col("choice") == pl.col("longer")).filter(AB).mean(),
        agree=(pl.col("choice") == pl.col("preferred")).filter(AB).mean(),
        median_s=pl.col("secs").median(),
    ).iter_rows(named=True)}
    assert by["position_biased"]["share_a"] > 0.7
    assert by["length_biased"]["longer"] > 0.75
    assert by["random"]["median_s"] < 5
    assert by["reliable"]["agree"] > 0.8
    assert 20 <= by["reliable"]["median_s"] <= 90
    assert 0.35 < by["reliable"]["share_a"] < 0.65 and by["reliable"]["longer"] < 0.7


def test_planted_annotators_visible_one_by_one(small, small_frames):
    a = labelled(small, small_frames)
    per = a.group_by("annotator", "role").agg(
        n=pl.len(),
        share_a=(pl.col("choice") == "a").mean(),
        longer=(pl.col("choice") == pl.col("longer")).filter(AB).mean(),
        agree=(pl.col("choice") == pl.col("preferred")).filter(AB).mean(),
        median_s=pl.col("secs").median(),
        strength50=(pl.col("strength") == 50).mean(),
    )
    rel = per.filter(pl.col("role") == "reliable")
    assert (rel["agree"] > 0.8).all() and (rel["median_s"].is_between(20, 90)).all()
    assert (per.filter(pl.col("role") == "position_biased")["share_a"] > 0.7).all()
    assert (per.filter(pl.col("role") == "length_biased")["longer"] > 0.75).all()
    rnd = per.filter(pl.col("role") == "random")
    assert (rnd["median_s"] < 5).all() and (rnd["agree"] < 0.6).all() and (rnd["strength50"] == 1).all()
    # Every non-random annotator is slower than every random clicker.
    assert per.filter(pl.col("role") != "random")["median_s"].min() > rnd["median_s"].max()


def test_drifting_annotator_is_reliable_then_degrades(small, small_frames):
    gt = small.ground_truth
    a = labelled(small, small_frames).filter(pl.col("role") == "drifting")
    start, end = gt["drift_start"], gt["campaign_end"]
    last_quarter = start + (end - start) / 2
    before = a.filter(pl.col("shown_at") < start)
    after = a.filter(pl.col("shown_at") >= last_quarter)

    def agree(x: pl.DataFrame) -> float:
        return x.filter(AB).select((pl.col("choice") == pl.col("preferred")).mean()).item()

    assert agree(before) > 0.8
    assert agree(after) < agree(before) - 0.2
    assert after["secs"].median() < 0.7 * before["secs"].median()
    assert (after["choice"] == "a").mean() > 0.6


# -- planted reward hacking -------------------------------------------------------------------------
@pytest.mark.parametrize("size,seed", [(1_000, 0), (1_000, 7), (20_000, 3)])
def test_reward_hacking_after_the_planted_step(size, seed):
    camp = demo.Campaign(size, seed=seed)
    f = camp.frames(kinds=["train_step", "reward_score", "annotation"])
    h = camp.ground_truth["first_hacking_step"]
    assert 0.65 * camp.n_steps <= h <= 0.75 * camp.n_steps
    m = metrics(f)
    pre, post = m.filter(pl.col("step") < h), m.filter(pl.col("step") >= h)
    kl_pre, kl_post = slope(pre["step"], pre["objective/kl"]), slope(post["step"], post["objective/kl"])
    assert kl_post > 3 * kl_pre > 0
    assert slope(post["step"], post["objective/scores"]) > 0
    assert slope(post["step"], post["objective/rlhf_reward"]) > 0
    assert post["objective/kl"].tail(5).mean() > 3 * pre["objective/kl"].tail(5).mean()

    rs = f["reward_score"].group_by("step").agg(pl.col("score", "response_length").mean()).sort("step")
    rs_pre, rs_post = rs.filter(pl.col("step") <= h), rs.filter(pl.col("step") >= h)
    assert slope(rs_post["step"], rs_post["score"]) > 0
    assert slope(rs_post["step"], rs_post["response_length"]) > 3 * max(
        slope(rs_pre["step"], rs_pre["response_length"]), 0.01)

    # Win-rate of the policy against the baseline (reliable annotators): up, then down.
    a = labelled(camp, f)
    ev = a.filter(pl.col("is_eval") & (pl.col("role") == "reliable") & AB).with_columns(
        policy_step=pl.max_horizontal(
            pl.col("model_a").str.extract(r"(\d+)$").cast(pl.Int64),
            pl.col("model_b").str.extract(r"(\d+)$").cast(pl.Int64)),
        win=pl.when(pl.col("model_a") == demo.BASELINE).then(pl.col("choice") == "b")
        .otherwise(pl.col("choice") == "a"),
    )
    healthy = ev.filter(pl.col("policy_step").is_between(0.6 * h, h))["win"].mean()
    hacked = ev.filter(pl.col("policy_step") > h + 0.5 * (camp.n_steps - h))["win"].mean()
    assert healthy > 0.6 and hacked < healthy - 0.1
    # Meanwhile responses of the late policy get longer.
    lengths = a.select(pl.col("response_a").str.len_chars().alias("n"), pl.col("model_a").alias("m"))
    base = lengths.filter(pl.col("m") == demo.BASELINE)["n"].mean()
    last = lengths.filter(pl.col("m") == camp.model_names[-1])["n"].mean()
    assert last > 1.4 * base


# -- sizes, store hand-off, errors ----------------------------------------------------------------
@pytest.mark.parametrize("size", [1_000, 10_000, 200_000])
def test_size_scaling(size):
    camp = demo.Campaign(size, seed=0)
    counts = camp.counts()
    total = sum(counts.values())
    assert abs(total - size) <= 0.1 * size
    assert 0.75 <= counts["annotation"] / total <= 0.92
    assert all(n > 0 for n in counts.values())
    if size <= 200_000:  # what is generated is what counts() promised
        seen = dict.fromkeys(counts, 0)
        for kind, frame in camp.iter_frames(chunk_rows=50_000):
            seen[kind] += frame.height
        assert seen == counts


def test_named_sizes_and_repr():
    camp = demo.campaign("tiny", seed=2)
    assert camp.size == 1_000 and camp.seed == 2
    assert repr(camp).startswith("<Campaign size=1,000 seed=2: 24 annotators, run ppo-demo-001")


class FakeStore:
    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def extend(self, rows: pl.DataFrame, kind: str):
        assert isinstance(rows, pl.DataFrame)
        self.calls.append((kind, rows.height))
        return range(rows.height)


def test_write_to_extends_the_store_per_kind_in_chunks(tiny):
    store = FakeStore()
    written = tiny.write_to(store, chunk_rows=300, progress=False)
    assert written == tiny.counts()
    assert all(n <= 300 for _, n in store.calls)
    assert [k for k, _ in store.calls if k == "annotation"] == ["annotation"] * 3
    kinds_in_order = list(dict.fromkeys(k for k, _ in store.calls))
    assert kinds_in_order == list(DEMO_KINDS)


def test_write_to_shows_progress(tiny, capsys):
    tiny.write_to(FakeStore(), chunk_rows=500, progress=True)
    assert "demo campaign" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,match", [
    ({"size": 100}, "size must be >= 500"),
    ({"size": "enormous"}, "not one of"),
    ({"size": 1_000, "n_annotators": 5}, "too small"),
    ({"size": 1_000, "hack_fraction": 1.5}, "must be in"),
    ({"size": 1_000, "seed": -1}, "non-negative"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        demo.Campaign(**kwargs)


def test_bad_iter_arguments(tiny):
    with pytest.raises(ValueError, match="chunk_rows"):
        next(tiny.iter_frames(chunk_rows=0))
    with pytest.raises(ValueError, match="unknown kinds"):
        next(tiny.iter_frames(kinds=["snapshot"]))


def test_other_parameters_are_honoured():
    camp = demo.Campaign(2_000, seed=0, n_annotators=30, n_random=2, overlap=4, days=14)
    gt = camp.ground_truth
    assert len(gt["random"]) == 2 and len(gt["reliable"]) == 30 - 7
    a = camp.frames(kinds=["annotation"])["annotation"]
    assert a.group_by("response_a_id").agg(pl.col("annotator").n_unique())["annotator"].median() == 4
    assert (a["shown_at"].max() - a["shown_at"].min()).days <= 15


@pytest.mark.slow
def test_generation_speed_at_one_million_annotations(capsys):
    camp = demo.Campaign(1_160_000, seed=0)  # ~1M annotations plus the other kinds
    t0 = time.perf_counter()
    n = sum(f.height for _, f in camp.iter_frames(chunk_rows=500_000, kinds=["annotation"]))
    t_ann = time.perf_counter() - t0
    n_all = sum(f.height for _, f in camp.iter_frames(chunk_rows=500_000))
    t_all = time.perf_counter() - t0 - t_ann
    with capsys.disabled():
        print(f"\n[demo] {n:,} annotations in {t_ann:.2f} s ({n / t_ann:,.0f}/s); "
              f"all {n_all:,} events in {t_all:.2f} s")
    assert n > 990_000


# -- hand-off to the rest of the kit ---------------------------------------------------------------
def test_frames_pass_the_kits_own_validation(small_frames):
    from rlhf_audit_kit import validate
    for kind, frame in small_frames.items():
        out = validate.normalise(frame, kind=kind)
        assert out[kind].height == frame.height


def test_write_to_a_real_store(tmp_path, tiny):
    from rlhf_audit_kit import store as store_mod
    store = store_mod.open_store(tmp_path / "demo.duckdb", pseudonymize=False)
    try:
        assert tiny.write_to(store, progress=False) == tiny.counts()
        got = dict(store.sql("select kind, count(*) from log group by 1").rows())
        assert got == tiny.counts()
    finally:
        store.close()
