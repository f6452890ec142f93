"""summary() finds every planted behaviour (two seeds); the model analyses behind it."""
from __future__ import annotations

import polars as pl
import pytest

from rlhf_audit_kit import analysis, demo, keys
from rlhf_audit_kit.analysis import model as M
from rlhf_audit_kit.analysis.summary import Summary, summary
from rlhf_audit_kit.privacy.pseudonym import Pseudonymizer
from rlhf_audit_kit.store import open_store

SIZE = 20_000
SEEDS = (0, 1)


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def case(request, tmp_path_factory):
    """A demo store per seed, its campaign, the pseudonym -> role map and the summary."""
    seed = request.param
    root = tmp_path_factory.mktemp(f"summary{seed}")
    keys.init_keys(root / "keys", "test.rlhf-audit-kit.local/log", no_passphrase=True)
    camp = demo.Campaign(SIZE, seed=seed)
    store = open_store(root / "audit.duckdb", keys=root / "keys")
    camp.write_to(store, progress=False)
    ps = Pseudonymizer.from_keys_folder(root / "keys")
    gt = camp.ground_truth
    roles = {ps.pseudonymize(a): r for r in demo.ROLES for a in gt[r]}
    yield {"store": store, "camp": camp, "roles": roles, "summary": summary(store)}
    store.close()


def _found(s: Summary, finding: str) -> set[str]:
    return set(s.findings.filter(pl.col("finding") == finding)["subject"])


# -- the planted behaviours, at two seeds ----------------------------------------------------------
def test_every_planted_annotator_behaviour_is_found(case):
    s, roles = case["summary"], case["roles"]
    planted = {role: {a for a, r in roles.items() if r == role} for role in demo.ROLES}
    assert planted["position_biased"] <= _found(s, "position bias")
    assert planted["length_biased"] <= _found(s, "length bias")
    assert planted["random"] <= _found(s, "random clicker")
    assert planted["drifting"] <= _found(s, "drifting annotator")
    for title in ("position bias", "length bias", "random clicker", "drifting annotator"):
        assert s.findings.filter(pl.col("finding") == title)["severity"].to_list()[0] == "high"


def test_no_reliable_annotator_is_flagged(case):
    s, roles = case["summary"], case["roles"]
    reliable = {a for a, r in roles.items() if r == "reliable"}
    assert not reliable & set(s.findings["subject"])
    # the single findings are specific: each of these titles only names planted annotators
    assert {roles[a] for a in _found(s, "random clicker")} == {"random"}
    assert {roles[a] for a in _found(s, "drifting annotator")} == {"drifting"}


def test_reward_hacking_in_the_late_steps_is_found(case):
    s, gt, camp = case["summary"], case["camp"].ground_truth, case["camp"]
    hack = s.findings.filter(pl.col("finding") == "reward hacking")
    assert hack.height == 1 and hack["severity"][0] == "high" and hack["area"][0] == "model"
    step = int(hack["subject"][0].rsplit(" ", 1)[1])
    assert abs(step - gt["first_hacking_step"]) <= camp.save_every
    assert "win-rate against the baseline fell" in hack["evidence"][0]
    h = s.hacking
    assert h.filter(pl.col("step") > step)["hacking"].all()
    late = h.filter(pl.col("step") > step)
    assert late["kl_accelerating"].any() and late["reward_up_winrate_flat"].all()
    assert "KL accelerating" in set(s.findings["finding"])
    assert "reward favours length" in set(s.findings["finding"])


def test_findings_are_ordered_by_severity_and_documented(case):
    f = case["summary"].findings
    assert f.columns == ["severity", "area", "subject", "finding", "statistic", "value", "threshold",
                         "evidence"]
    rank = [("high", "medium", "low").index(x) for x in f["severity"]]
    assert rank == sorted(rank)
    assert f["area"][0] == "model"  # reward hacking leads
    assert (f["evidence"].str.len_chars() > 20).all()
    assert 8 <= f.height <= 20  # a handful, not a dump


def test_repr_and_html(case):
    s = case["summary"]
    text = repr(s)
    assert text.startswith(f"<Summary: {s.findings.height} findings (")
    assert "[high] model: reward hacking" in text
    page = s._repr_html_()
    assert page.startswith("<div><b>Audit summary</b>") and "reward hacking" in page
    assert "<script" not in page


# -- sources and missing parts ----------------------------------------------------------------------
def test_summary_over_frames_matches_the_store(case):
    camp, s = case["camp"], case["summary"]
    frames = camp.frames()
    from_frames = summary(frames)
    # ids differ (raw in the frames, pseudonyms in the store), everything else is the same
    key = ["severity", "area", "finding", "statistic", "value"]
    def norm(f):
        return f.filter(pl.col("area") != "annotators").select(key).sort(key)
    assert norm(from_frames.findings).equals(norm(s.findings))
    assert sorted(from_frames.findings["finding"]) == sorted(s.findings["finding"])


def test_summary_skips_absent_parts_with_a_note(case):
    ann = case["camp"].frames(kinds=["annotation"])
    s = summary(ann)
    assert "model" in s.notes and s.hacking is None
    assert "random clicker" in set(s.findings["finding"])
    assert "skipped model" in repr(s)


# -- the model analyses ---------------------------------------------------------------------------
def test_reward_drift(case):
    d = analysis.reward_drift(case["store"])
    assert d.columns == ["step", "n", "mean", "psi", "ks_stat", "ks_pvalue", "js_distance",
                         "wasserstein", "length_mean"]
    assert d["step"][0] == 0 and d["psi"][0] == 0.0 and d["ks_pvalue"][0] == 1.0
    assert d["mean"][-1] > d["mean"][0] and d["length_mean"][-1] > 1.5 * d["length_mean"][0]
    ref = analysis.reward_drift(case["store"], reference_step=int(d["step"][3]))
    assert ref["psi"][3] == 0.0
    with pytest.raises(ValueError, match="no reward scores"):
        analysis.reward_drift(case["store"], run_id="nope")


def test_training_trends_wide_and_binned(case):
    store, camp = case["store"], case["camp"]
    t = M.training_trends(store, metrics=["objective/kl", "objective/scores", "no/such"])
    assert t.columns == ["run_id", "step", "objective/kl", "objective/scores"]
    assert t.height == camp.n_steps and t["step"].is_sorted()
    binned = M.training_trends(store, bin_steps=100)
    assert binned["step"].to_list() == [0, 100, 200, 300, 400][: binned.height]
    frames = camp.frames(kinds=["train_step"])["train_step"]  # maps as {key, value} lists
    assert M.training_trends(frames, metrics=["objective/kl"]).equals(
        t.select("run_id", "step", "objective/kl"))
    long = store.train_metrics()
    assert M.training_trends(long, metrics=["objective/kl"]).equals(t.select("run_id", "step", "objective/kl"))


def test_metric_changepoints(case):
    gt = case["camp"].ground_truth
    for method in ("cusum", "page_hinkley"):
        cp = M.metric_changepoints(case["store"], "objective/kl", method=method)
        assert cp.columns == ["run_id", "step", "metric", "value", "method"]
        assert cp.filter(pl.col("step") > gt["first_hacking_step"]).height >= 1
    assert M.metric_changepoints(case["store"], "no/such").height == 0


def test_reward_hacking_table(case):
    store, gt = case["store"], case["camp"].ground_truth
    h = M.reward_hacking(store)
    assert h["run_id"].unique().to_list() == [gt["run_id"]]
    assert h["step"].to_list() == sorted(h["step"].to_list()) and h["step"][0] == 0
    assert h["model"][0] is None and h["winrate"][0] is None  # step 0 is the baseline itself
    assert h.schema["winrate"] == pl.Float64 and h.schema["hacking_start_step"] == pl.Int64
    ok = h.filter(pl.col("winrate").is_not_null())
    assert ((ok["winrate_ci_low"] <= ok["winrate"]) & (ok["winrate"] <= ok["winrate_ci_high"])).all()
    doc = M.reward_hacking.__doc__
    for c in h.columns:
        assert f"``{c}``" in doc, c
    # a baseline that was never compared: no win-rates, hence no finding, but the table stands
    none = M.reward_hacking(store, baseline="no-such-model")
    assert none["winrate"].null_count() == none.height and none["hacking_start_step"][0] is None


def test_public_exports():
    for name in ("summary", "annotator_report", "annotator_drift", "reward_drift", "reward_hacking"):
        assert name in analysis.__all__ and callable(getattr(analysis, name))
