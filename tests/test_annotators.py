"""Annotator analysis: report columns and statistics, flags on planted behaviours, drift, sources."""
from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from scipy import stats

from rlhf_audit_kit import analysis, demo, keys
from rlhf_audit_kit.analysis import annotators as A
from rlhf_audit_kit.privacy.pseudonym import Pseudonymizer
from rlhf_audit_kit.store import open_store

SIZE, SEED = 20_000, 3


# -- fixtures: one demo store per module ---------------------------------------------------------
@pytest.fixture(scope="module")
def campaign() -> demo.Campaign:
    return demo.Campaign(SIZE, seed=SEED)


@pytest.fixture(scope="module")
def built(tmp_path_factory, campaign):
    root = tmp_path_factory.mktemp("annotators")
    keys.init_keys(root / "keys", "test.rlhf-audit-kit.local/log", no_passphrase=True)
    store = open_store(root / "audit.duckdb", keys=root / "keys")
    campaign.write_to(store, progress=False)
    yield store, Pseudonymizer.from_keys_folder(root / "keys")
    store.close()


@pytest.fixture(scope="module")
def store(built):
    return built[0]


@pytest.fixture(scope="module")
def roles(built, campaign) -> dict[str, str]:
    """Stored pseudonym -> planted role."""
    ps, gt = built[1], campaign.ground_truth
    return {ps.pseudonymize(a): r for r in demo.ROLES for a in gt[r]}


@pytest.fixture(scope="module")
def report(store) -> pl.DataFrame:
    return A.annotator_report(store)


@pytest.fixture(scope="module")
def frame(built, campaign) -> pl.DataFrame:
    """The campaign's annotations as a DataFrame, ids pseudonymised like the store's."""
    ann = campaign.frames(kinds=["annotation"])["annotation"]
    return ann.with_columns(annotator=built[1].apply(ann["annotator"]))


class SqlOnly:
    """A bundle stand-in: nothing but the read API ``sql(query, params)``."""

    def __init__(self, store):
        self._store = store

    def sql(self, query, params=None):
        return self._store.sql(query, params)


def rows(**cols) -> pl.DataFrame:
    n = len(next(iter(cols.values())))
    base = {"prompt_id": ["p"] * n, "response_a_id": ["r1"] * n, "response_b_id": ["r2"] * n}
    return pl.DataFrame({**base, **cols})


# -- report: shape and documented columns --------------------------------------------------------
def test_report_has_one_row_per_annotator_and_the_documented_columns(report, store):
    assert report.height == store.sql("select count(distinct annotator) from annotation").item()
    assert report.columns == A._REPORT_COLUMNS
    doc = A.annotator_report.__doc__
    for c in report.columns:
        assert f"``{c}``" in doc, c
    assert report.schema["flags"] == pl.List(pl.String)
    assert report.schema["n"] == pl.Int64 and report.schema["agreement"] == pl.Float64
    assert int(report["n"].sum()) == store.sql("select count(*) from annotation").item()
    shares = report.select(pl.sum_horizontal("share_a", "share_b", "share_tie", "share_skip"))
    assert np.allclose(shares.to_series().to_numpy(), 1.0)


def test_flagged_annotators_come_first(report):
    n_flags = report["flags"].list.len().to_list()
    assert n_flags == sorted(n_flags, reverse=True)
    assert (report.filter(pl.col("flags").list.len() == 0)["flag_reason"] == "").all()


# -- planted behaviours ----------------------------------------------------------------------------
def test_every_planted_annotator_is_flagged_for_its_behaviour(report, roles):
    by_role = report.with_columns(role=pl.col("annotator").replace_strict(roles))
    flags = {r["annotator"]: set(r["flags"]) for r in by_role.iter_rows(named=True)}
    for a, role in roles.items():
        if role == "position_biased":
            assert "position_bias" in flags[a]
        elif role == "length_biased":
            assert "length_bias" in flags[a]
        elif role == "random":
            assert "random_clicker" in flags[a]
        elif role == "reliable":
            assert flags[a] == set(), (a, flags[a])


def test_flag_reasons_read_like_the_evidence(report, roles):
    reason = {r["annotator"]: r["flag_reason"] for r in report.iter_rows(named=True)}
    rnd = next(a for a, r in roles.items() if r == "random")
    assert "random clicker: agreement 0.5" in reason[rnd] and "median time 3 s" in reason[rnd]
    pos = next(a for a, r in roles.items() if r == "position_biased")
    assert "position bias: chose A 8" in reason[pos] and "p<1e-6" in reason[pos]
    lng = next(a for a, r in roles.items() if r == "length_biased")
    assert "length bias: chose the longer response 8" in reason[lng]


def test_statistics_separate_the_roles(report, roles):
    r = report.with_columns(role=pl.col("annotator").replace_strict(roles))
    rel = r.filter(pl.col("role") == "reliable")
    assert (rel["agreement"] > 0.8).all() and (rel["position_a_share"].is_between(0.4, 0.6)).all()
    assert (rel["length_longer_share"] < 0.7).all() and (rel["gold_accuracy"] > 0.9).all()
    rnd = r.filter(pl.col("role") == "random").row(0, named=True)
    assert rnd["time_median_s"] < 5 and rnd["time_percentile"] < 0.01 and abs(rnd["agreement_kappa"]) < 0.15
    assert (r.filter(pl.col("role") == "position_biased")["position_a_share"] > 0.75).all()


# -- the numbers against independent computations ----------------------------------------------
def test_binomial_tests_and_intervals_match_scipy(report):
    for r in report.head(6).iter_rows(named=True):
        res = stats.binomtest(round(r["position_a_share"] * r["n_ab"]), r["n_ab"], 0.5)
        assert math.isclose(r["position_p"], res.pvalue, rel_tol=1e-6, abs_tol=1e-300)
        ci = res.proportion_ci(0.95, method="exact")
        assert math.isclose(r["position_ci_low"], ci.low, rel_tol=1e-9)
        assert math.isclose(r["position_ci_high"], ci.high, rel_tol=1e-9)


def test_holm_matches_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    p = np.random.default_rng(0).uniform(0, 0.05, 30)
    assert np.allclose(A.holm(p), multipletests(p, method="holm")[1])
    assert np.isnan(A.holm([0.1, np.nan])[1])


def test_report_matches_a_polars_recomputation(store, report):
    ann = A.annotation_frame(store)
    own = ann.group_by("annotator").agg(
        n=pl.len(), med=pl.col("secs").median(),
        k_a=(pl.col("choice") == "a").sum(), n_ab=pl.col("choice").is_in(["a", "b"]).sum())
    got = report.join(own, on="annotator")
    assert (got["n"] == got["n_right"]).all() and (got["n_ab"] == got["n_ab_right"]).all()
    assert np.allclose(got["time_median_s"], got["med"])
    assert np.allclose(got["position_a_share"], got["k_a"] / got["n_ab"])


def test_leave_one_out_majority_ties_mirroring_repeats_and_gold():
    t0 = dt.datetime(2024, 1, 1)
    f = pl.DataFrame({
        "seq": range(9),
        "prompt_id": ["p"] * 9,
        # item 1 (r1, r2) is shown to z the other way round; item 2 (r3, r4)
        "response_a_id": ["r1", "r1", "r2", "r1", "r3", "r3", "r3", "r3", "r1"],
        "response_b_id": ["r2", "r2", "r1", "r2", "r4", "r4", "r4", "r4", "r2"],
        "annotator": ["x", "y", "z", "w", "x", "y", "z", "w", "x"],
        "choice": ["a", "a", "b", "b", "a", "b", "a", "b", "b"],
        "gold_choice": ["a"] * 4 + [None] * 5,
        "shown_at": [t0] * 9,
        "submitted_at": [t0 + dt.timedelta(seconds=s) for s in (10, 20, 30, 40, 10, 20, 30, 40, 50)],
        "response_a": ["xx"] * 9, "response_b": ["x"] * 9,
    })
    rep = A.annotator_report(f, min_n=1).sort("annotator")
    r = {row["annotator"]: row for row in rep.iter_rows(named=True)}
    # item 1 canonical labels: x a, y a, z a (b mirrored), w b; x's repeat ("b") is ignored
    # item 2: x a, y b, z a, w b -> every leave-one-out majority of three is decisive
    # x: item1 others (y a, z a, w b) -> a, agree; item2 others (b, a, b) -> b, disagree
    assert (r["x"]["agreement_n"], r["x"]["agreement"]) == (2, 0.5)
    # w: item1 others all a (disagree), item2 others (a, b, a) -> a (disagree)
    # z: item1 others (a, a, b) -> a (agree, z's "b" mirrored is "a"), item2 (a, b, b) -> b
    assert r["w"]["agreement"] == 0.0 and r["z"]["agreement"] == 0.5
    assert (r["x"]["n_repeated"], r["x"]["self_consistency"]) == (1, 0.0)
    assert r["z"]["gold_accuracy"] == 0.0 and (r["x"]["n_gold"], r["x"]["gold_accuracy"]) == (1, 1.0)
    assert r["x"]["time_median_s"] == 10 and r["x"]["n"] == 3
    # the response shown as "a" is always the longer one: length bias uses the choice as shown
    assert r["z"]["length_longer_share"] == 0.5 and r["x"]["length_longer_share"] == 2 / 3


def test_tied_majorities_and_skips_are_left_out():
    f = rows(annotator=["x", "y", "z", "s"], choice=["a", "a", "b", "skip"])
    rep = {r["annotator"]: r for r in A.annotator_report(f, min_n=1).iter_rows(named=True)}
    assert rep["x"]["agreement_n"] == 0   # others: y a, z b -> tie, left out
    assert rep["z"]["agreement"] == 0.0   # others: x a, y a -> a
    assert rep["s"]["share_skip"] == 1.0 and rep["s"]["n_ab"] == 0 and rep["s"]["agreement_n"] == 0


# -- sources and filters -----------------------------------------------------------------------
def test_store_bundle_and_dataframe_sources_agree(store, report, frame):
    cols = ["annotator", "n", "n_ab", "position_a_share", "n_length", "length_longer_share",
            "agreement_n", "agreement", "n_repeated", "self_consistency", "n_gold", "gold_accuracy",
            "time_median_s", "time_percentile", "flags"]
    via_sql = A.annotator_report(SqlOnly(store)).select(cols)
    via_frame = A.annotator_report(frame).select(cols)
    assert_frame_equal(report.select(cols), via_sql)
    assert_frame_equal(report.select(cols).sort("annotator"), via_frame.sort("annotator"),
                       check_exact=False, rel_tol=1e-9)


def test_filters(store, report, frame):
    some = report["annotator"].head(3).to_list()
    sub = A.annotator_report(store, annotators=some)
    assert sorted(sub["annotator"]) == sorted(some)
    assert sub.select("annotator", "n").sort("annotator").equals(
        report.filter(pl.col("annotator").is_in(some)).select("annotator", "n").sort("annotator"))
    cut = dt.datetime(2024, 3, 15)
    early = A.annotator_report(store, until=cut)
    late = A.annotator_report(frame, since="2024-03-15T00:00:00Z")
    assert int(early["n"].sum()) + int(late["n"].sum()) == int(report["n"].sum())
    tasks = store.sql("select distinct task_id from annotation order by 1 limit 5")["task_id"].to_list()
    n_tasks = store.sql("select count(*) from annotation where task_id in (select unnest(?))", [tasks]).item()
    assert int(A.annotator_report(store, task_ids=tasks)["n"].sum()) == n_tasks
    empty = A.annotator_report(store, annotators=["nobody"])
    assert empty.height == 0 and empty.columns == A._REPORT_COLUMNS


def test_bad_source_is_a_type_error():
    with pytest.raises(TypeError, match="source must be"):
        A.annotator_report([1, 2, 3])


# -- drift ------------------------------------------------------------------------------------
def test_drift_finds_the_drifting_annotator_only(store, roles):
    d = A.annotator_drift(store, window="7d")
    drifting = set(d.filter("drifting")["annotator"])
    assert {roles[a] for a in drifting} == {"drifting"}
    row = d.filter("drifting").row(0, named=True)
    assert row["agreement_change"] <= -0.15 and row["drift_p_adj"] < 0.01
    assert "agreement fell from" in row["drift_reason"]
    per = d.group_by("annotator").agg(pl.col("window").n_unique())
    assert (per["window"] >= 3).all()
    assert int(d["n"].sum()) == store.sql("select count(*) from annotation").item()


def test_drift_windows_by_count_and_duration(frame):
    d4 = A.annotator_drift(frame, window=4)
    assert sorted(d4["window"].unique()) == [0, 1, 2, 3]
    starts = d4.select("window", "window_start", "window_end").unique().sort("window")
    assert (starts["window_end"].head(3) == starts["window_start"].tail(3)).all()
    d7 = A.annotator_drift(frame, window=dt.timedelta(days=7))
    # 30 days: four full weeks, the 2-day tail is merged into the fourth
    assert d7["window"].max() == 3
    assert d7.columns == A._empty_drift().columns
    with pytest.raises(ValueError, match="duration"):
        A.annotator_drift(frame, window="a week")


# -- throughput and pairwise agreement -------------------------------------------------------------
def test_throughput_timeline(store, report):
    tl = A.throughput(store, every="1d")
    assert int(tl["n"].sum()) == int(report["n"].sum())
    last = tl.group_by("annotator").agg(pl.col("cumulative_n").max(), pl.col("n").sum())
    assert (last["cumulative_n"] == last["n"]).all()
    assert (tl["period_start"].dt.hour() == 0).all()
    weekly = A.throughput(store, every="7d")
    assert (weekly["period_start"].dt.weekday() == 1).all()  # Mondays


def test_agreement_matrix_matches_cohen_kappa(store, frame):
    m = A.agreement_matrix(store, min_overlap=20)
    assert m.columns == ["annotator_a", "annotator_b", "n", "kappa", "percent_agreement"]
    assert (m["n"] >= 20).all()
    first = m.row(0, named=True)
    labels = A.annotation_frame(frame).filter(pl.col("choice") != "skip").unique(
        ["item", "annotator"], keep="first", maintain_order=True)
    k = analysis.cohen_kappa(labels, first["annotator_a"], first["annotator_b"], item="item")
    assert math.isclose(first["kappa"], k, rel_tol=1e-9)
    wide = A.agreement_matrix(store, min_overlap=20, wide=True)
    names = wide["annotator"].to_list()
    assert wide.columns == ["annotator", *names]
    mat = wide.drop("annotator").to_numpy()
    assert np.allclose(np.diag(mat), 1.0) and np.allclose(mat, mat.T, equal_nan=True)


def test_durations():
    assert A._duration_us("1d12h") == 36 * 3_600_000_000
    assert A._duration_us("1w") == A._duration_us("7d")
    with pytest.raises(ValueError):
        A._duration_us("0d")
