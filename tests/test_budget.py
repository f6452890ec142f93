"""Privacy budgets and the spend ledger (rlhf_audit_kit.privacy.budget, store.privacy)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import threading
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_audit_kit import keys as keys_mod
from rlhf_audit_kit.encoding import decode_entry
from rlhf_audit_kit.errors import BudgetExceededError, ValidationError
from rlhf_audit_kit.ledger.merkle import root_from_leaf_hashes
from rlhf_audit_kit.privacy import PrivacyLedger, Release
from rlhf_audit_kit.privacy.budget import _plan, _true_answer
from rlhf_audit_kit.store import open_store

MAIN = ["w0", "w1", "w2", "w3", "w4", "w5"]
AGREE = ["g1", "g2", "g3", "g4"]


def campaign_rows(names: dict[str, str] | None = None) -> list[dict]:
    """A small campaign with hand-computable answers.

    task "main": w0 labels 12 items (a/b alternating, 10 s each, days 1..12); w1..w5 label 3 items
    each (a, tie, skip; 20/30/40 s; day 20); w5's rows are in dataset "other@1".
    task "agree": items I1..I4 labelled by g1..g4 to pin the agreement definition.
    """
    names = names or {}
    rows: list[dict] = []

    def add(annotator, item, choice, *, task="main", swap=False, secs=10, day=1, dataset="hh@1"):
        p, r1, r2 = f"p-{task}-{item}", f"r-{task}-{item}-x", f"r-{task}-{item}-y"
        a, b = (r2, r1) if swap else (r1, r2)
        shown = dt.datetime(2026, 1, day, 12, 0, 0)
        rows.append({"kind": "annotation", "annotation_id": f"ann-{len(rows):04d}", "prompt_id": p,
                     "prompt": "which is better?", "response_a_id": a, "response_a": "A",
                     "response_b_id": b, "response_b": "B", "choice": choice,
                     "annotator": names.get(annotator, annotator), "task_id": task,
                     "dataset": dataset, "shown_at": shown,
                     "submitted_at": shown + dt.timedelta(seconds=secs)})

    for i in range(12):
        add("w0", i, "ab"[i % 2], secs=10, day=1 + i)
    for w in MAIN[1:]:
        ds = "other@1" if w == "w5" else "hh@1"
        for j, (c, s) in enumerate(zip(("a", "tie", "skip"), (20, 30, 40))):
            add(w, 100 + j, c, secs=s, day=20, dataset=ds)
    # agreement items: I1 unanimous; I2 split (nobody has a strict plurality of the others);
    # I3 unanimous, g3 sees the pair swapped; I4 labelled by 4 annotators (all "a").
    for g in ("g1", "g2", "g3"):
        add(g, "I1", "a", task="agree", day=25)
    for g, c in (("g1", "a"), ("g2", "a"), ("g3", "b")):
        add(g, "I2", c, task="agree", day=25)
    add("g1", "I3", "a", task="agree", day=25)
    add("g2", "I3", "a", task="agree", day=25)
    add("g3", "I3", "b", task="agree", swap=True, day=25)
    for g in AGREE:
        add(g, "I4", "a", task="agree", day=25)
    return rows


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "audit.duckdb", pseudonymize=False)
    s.extend(campaign_rows())
    yield s
    s.close()


def exact(store, query, **params):
    return _true_answer(store, _plan(query, 1.0, 0.0, None, params))


def log_state(store):
    """(size, RFC 9162 root from the log's leaves, digest of every entry, typed spend rows)."""
    log = store.sql("SELECT seq, entry, leaf_hash FROM log ORDER BY seq")
    root = root_from_leaf_hashes([bytes(h) for h in log["leaf_hash"]])
    digest = hashlib.sha256(b"".join(bytes(e) for e in log["entry"])).hexdigest()
    n_spend = store.sql("SELECT count(*) AS n FROM privacy_spend")[0, 0]
    n_nodes = store.sql("SELECT count(*) AS n FROM merkle_node")[0, 0]
    return store.size, log.height, root, digest, n_spend, n_nodes


# ------------------------------------------------------------------------------ exact answers
def test_exact_answers_of_the_declared_queries(store):
    assert exact(store, "annotator_count", task_id="main") == 6
    assert exact(store, "annotator_count") == 10
    assert exact(store, "count", task_id="main", max_items_per_annotator=10) == 10 + 5 * 3
    assert exact(store, "count", task_id="main", max_items_per_annotator=2) == 12
    assert exact(store, "count", task_id="main", where={"choice": "a"}) == 6 + 5
    assert exact(store, "items_per_annotator", task_id="main", bins=[1, 5, 10]) == \
        {"1-4": 5, "5-9": 0, "10+": 1}
    ipa = exact(store, "items_per_annotator", task_id="main", stat="mean")
    assert sorted(ipa.tolist()) == [3, 3, 3, 3, 3, 12]
    t = exact(store, "time_per_item", task_id="main")
    assert sorted(t.tolist()) == [10, 30, 30, 30, 30, 30]
    assert exact(store, "time_per_item", task_id="main", upper=15.0).tolist().count(15.0) == 5
    shares = exact(store, "choice_shares", task_id="main")
    assert shares["a"] == pytest.approx(0.5 + 5 / 3) and shares["b"] == pytest.approx(0.5)
    assert shares["tie"] == pytest.approx(5 / 3) and shares["skip"] == pytest.approx(5 / 3)
    sample = exact(store, "choice_shares", task_id="main", contribution="sample",
                   max_items_per_annotator=2)
    assert sum(sample.values()) == 12


def test_exact_agreement_rate_definition(store):
    # I4 has 4 annotators > M=3: counts as disagreement; g4 (1 item) is in with r=1
    r = exact(store, "agreement_rate", task_id="agree", max_items_per_annotator=10,
              min_items_per_annotator=1, max_annotators_per_item=3)
    assert sorted(r.tolist()) == [0.0, 0.5, 0.5, 0.5]
    # r=2 leaves g4 out, so I4 has 3 annotators and everyone agrees on it
    r = exact(store, "agreement_rate", task_id="agree", max_items_per_annotator=10,
              min_items_per_annotator=2, max_annotators_per_item=3)
    assert sorted(r.tolist()) == [0.75, 0.75, 0.75]
    r = exact(store, "agreement_rate", task_id="agree", max_items_per_annotator=10,
              min_items_per_annotator=1, max_annotators_per_item=4)
    assert r.mean() == pytest.approx((0.75 * 3 + 1) / 4)


def test_filters(store):
    since, until = dt.datetime(2026, 1, 5), dt.datetime(2026, 1, 10)
    assert exact(store, "count", since=since, until=until) == 5  # w0's days 5..9 (until exclusive)
    assert exact(store, "annotator_count", since="2026-01-05T00:00:00Z", until=until) == 1
    assert exact(store, "annotator_count", task_id="main", dataset="hh@1") == 5
    assert exact(store, "annotator_count", dataset=["hh@1", "other@1"], task_id="main") == 6
    # values are bound parameters: an injection attempt is just a task id that matches nothing
    assert exact(store, "annotator_count", task_id="main' OR '1'='1") == 0
    assert exact(store, "count", where={"model": "x'); DROP TABLE log; --"}) == 0
    assert store.sql("SELECT count(*) AS n FROM log")[0, 0] == store.size


# ------------------------------------------------------------------------------ enforcement
def test_release_is_recorded_as_a_hashed_privacy_spend_event(store):
    store.privacy.set_budget("global", 1.0)
    size = store.size
    r = store.privacy.release("annotator_count", epsilon=0.25, task_id="main",
                              rng=np.random.default_rng(1))
    assert isinstance(r, Release) and r.seq == size and store.size == size + 1
    entry = store.entry(r.seq)
    ev = decode_entry(entry)
    assert ev["kind"] == "privacy_spend" and ev["seq"] == r.seq
    d = ev["data"]
    assert d["release_id"] == r.release_id and d["query"] == "annotator_count"
    assert d["epsilon"] == 0.25 and d["delta"] == 0 and d["mechanism"] == "discrete_laplace"
    assert d["scopes"]["scopes"] == ["global"]
    assert d["result"]["value"] == r.value
    assert d["parameters"]["filters"] == {"task_id": "main"}
    assert d["parameters"]["costs"] == [{"kind": "discrete_laplace", "noise": 4.0,
                                         "sample_rate": 1.0, "sensitivity": 1}]
    assert d["parameters"]["seeded"] is True
    leaf = store.sql("SELECT leaf_hash FROM log WHERE seq = ?", [r.seq])[0, 0]
    assert bytes(leaf) == hashlib.sha256(b"\x00" + entry).digest()
    assert "annotator_count" in r._repr_html_()


def test_budget_enforcement_and_exact_fit(store):
    p = store.privacy
    p.set_budget("global", 1.0, description="campaign total")
    p.release("annotator_count", epsilon=0.4)
    p.release("count", epsilon=0.4)
    with pytest.raises(BudgetExceededError) as ei:
        p.release("annotator_count", epsilon=0.4)
    e = ei.value
    assert e.scope == "global" and e.spent == pytest.approx(0.8) and e.requested == 0.4
    assert e.budget == (1.0, 0.0)
    msg = str(e)
    assert "'global'" in msg and "0.8" in msg and "0.4" in msg and "epsilon=1" in msg
    p.release("time_per_item", epsilon=0.2)  # exactly fills the budget (mean: two halves)
    b = p.budgets().row(0, named=True)
    assert b["epsilon_spent"] == pytest.approx(1.0) and b["releases"] == 3
    assert b["description"] == "campaign total"
    with pytest.raises(BudgetExceededError):
        p.release("annotator_count", epsilon=1e-3)
    # rounding of 1/epsilon never refuses what fits: 10 x 0.1 in a budget of 1
    p.set_budget("pool:tenths", 1.0)
    for _ in range(10):
        p.release("annotator_count", epsilon=0.1, scopes=["pool:tenths"])
    with pytest.raises(BudgetExceededError):
        p.release("annotator_count", epsilon=0.01, scopes=["pool:tenths"])


def test_refused_release_leaves_the_log_unchanged(store):
    p = store.privacy
    p.set_budget("global", 0.5)
    p.set_budget("dataset:hh@1", 10.0)
    p.release("annotator_count", epsilon=0.3, scopes=["global", "dataset:hh@1"])
    before = log_state(store)
    hist = p.spend_history()
    for kw in ({"epsilon": 0.3, "scopes": ["dataset:hh@1", "global"]},  # second scope refuses
               {"epsilon": 0.01, "scopes": ["pool:no-budget"]},
               {"epsilon": 0.1, "scopes": ["global"], "mechanism": "gaussian", "delta": 1e-6}):
        with pytest.raises(BudgetExceededError):
            p.release("annotator_count", **kw)
    assert log_state(store) == before
    assert p.spend_history().equals(hist)
    # the scope that would have fitted was not charged either
    spent = dict(p.budgets().select("scope", "epsilon_spent").iter_rows())
    assert spent["dataset:hh@1"] == pytest.approx(0.3)


def test_missing_budget_is_refused(store):
    with pytest.raises(BudgetExceededError, match="no privacy budget"):
        store.privacy.release("annotator_count", epsilon=0.1)
    assert store.sql("SELECT count(*) AS n FROM privacy_spend")[0, 0] == 0


def test_lowering_a_budget_below_the_spend(store):
    p = store.privacy
    p.set_budget("global", 1.0)
    p.release("annotator_count", epsilon=0.5)
    p.set_budget("global", 0.3)
    b = p.budgets().row(0, named=True)
    assert b["epsilon_budget"] == 0.3 and b["remaining"] == pytest.approx(-0.2)
    with pytest.raises(BudgetExceededError):
        p.release("annotator_count", epsilon=0.01)
    p.set_budget("global", 2.0)
    p.release("annotator_count", epsilon=0.5)
    assert p.budgets()["epsilon_spent"][0] == pytest.approx(1.0)


def test_gaussian_releases_use_the_accountant_at_the_budget_delta(store):
    p = store.privacy
    p.set_budget("global", 2.0, 1e-5)
    r1 = p.release("annotator_count", epsilon=1.0, delta=1e-6, mechanism="gaussian")
    r2 = p.release("annotator_count", epsilon=1.0, delta=1e-6, mechanism="gaussian")
    spent = p.budgets()["epsilon_spent"][0]
    # tight composition of two (1, 1e-6) Gaussians at delta=1e-5: well below basic composition
    assert 0 < spent < 2.0 and spent == pytest.approx(r2.charged["global"]["epsilon_spent"])
    assert isinstance(r1.value, float)
    hist = p.spend_history("global")
    assert hist["cumulative_epsilon"].to_list() == pytest.approx(
        [r1.charged["global"]["epsilon_spent"], spent])
    p.set_budget("pool:pure", 10.0)  # delta budget 0: any Gaussian is refused (epsilon(0) = inf)
    with pytest.raises(BudgetExceededError):
        p.release("annotator_count", epsilon=1.0, delta=1e-6, mechanism="gaussian",
                  scopes=["pool:pure"])


def test_what_if_previews_without_recording(store):
    p = store.privacy
    p.set_budget("global", 1.0)
    p.set_budget("pool:vendor-a", 0.2)
    p.release("annotator_count", epsilon=0.5)
    before = log_state(store)
    df = p.what_if(0.4, ["global", "pool:vendor-a", "pool:none"])
    assert log_state(store) == before
    rows = {r["scope"]: r for r in df.iter_rows(named=True)}
    assert rows["global"]["epsilon_spent"] == pytest.approx(0.5)
    assert rows["global"]["epsilon_after"] == pytest.approx(0.9) and rows["global"]["fits"]
    assert rows["pool:vendor-a"]["remaining_after"] == pytest.approx(-0.2)
    assert not rows["pool:vendor-a"]["fits"] and not rows["pool:none"]["fits"]
    g = p.what_if(0.4, "global", delta=1e-6, mechanism="gaussian", query="time_per_item")
    assert g["epsilon_after"][0] == math.inf and not g["fits"][0]  # budget delta is 0


def test_state_is_rebuilt_from_the_log_on_reopen(tmp_path):
    path = tmp_path / "audit.duckdb"
    with open_store(path, pseudonymize=False) as s:
        s.extend(campaign_rows())
        s.privacy.set_budget("global", 1.0)
        s.privacy.set_budget("global", 1.5)  # latest wins
        s.privacy.set_budget("dataset:hh@1", 1.5, 1e-5)
        for _ in range(3):
            s.privacy.release("annotator_count", epsilon=0.3, scopes=["global", "dataset:hh@1"])
        s.privacy.release("annotator_count", epsilon=0.3, delta=1e-7, mechanism="gaussian",
                          scopes=["dataset:hh@1"])
        budgets, hist = s.privacy.budgets(), s.privacy.spend_history()
    with open_store(path, pseudonymize=False) as s:
        assert isinstance(s.privacy, PrivacyLedger) and s.privacy is s.privacy
        assert s.privacy.budgets().equals(budgets)
        assert s.privacy.spend_history().equals(hist)
        assert budgets.filter(scope="global")["epsilon_budget"][0] == 1.5
        s.privacy.release("annotator_count", epsilon=0.5, scopes=["global"])
        with pytest.raises(BudgetExceededError):
            s.privacy.release("annotator_count", epsilon=0.2, scopes=["global"])


def test_spend_history_is_per_scope_and_cumulative(store):
    p = store.privacy
    p.set_budget("global", 5.0)
    p.set_budget("pool:vendor-a", 5.0)
    p.release("annotator_count", epsilon=0.5)
    p.release("annotator_count", epsilon=0.25, scopes=["global", "pool:vendor-a"])
    p.release("choice_shares", epsilon=1.0, scopes="pool:vendor-a")
    h = p.spend_history()
    assert h.columns == ["seq", "ts", "release_id", "scope", "query", "mechanism", "epsilon",
                         "delta", "cumulative_epsilon"]
    assert h.height == 4
    assert p.spend_history("global")["cumulative_epsilon"].to_list() == pytest.approx([0.5, 0.75])
    assert p.spend_history("pool:vendor-a")["cumulative_epsilon"].to_list() == pytest.approx([0.25, 1.25])
    assert "Privacy budgets" in p._repr_html_()


def test_user_cannot_write_internal_kinds(store):
    with pytest.raises(ValidationError):
        store.append({"kind": "privacy_spend", "release_id": "x", "scopes": {"scopes": ["global"]},
                      "query": "q", "mechanism": "laplace", "parameters": {}, "epsilon": 0.0,
                      "delta": 0.0, "result": {}})


def test_invalid_requests(store):
    p = store.privacy
    p.set_budget("global", 10.0)
    before = log_state(store)
    bad = [
        dict(query="SELECT 1", epsilon=1.0),
        dict(query="annotator_count", epsilon=0.0),
        dict(query="annotator_count", epsilon=float("nan")),
        dict(query="annotator_count", epsilon=1.0, delta=1e-6),  # pure mechanism with delta
        dict(query="annotator_count", epsilon=1.0, mechanism="gaussian"),  # gaussian needs delta
        dict(query="time_per_item", epsilon=1.0, mechanism="discrete_laplace"),
        dict(query="count", epsilon=1.0, where={"annotator": "x"}),
        dict(query="count", epsilon=1.0, where={"choice": "maybe"}),
        dict(query="count", epsilon=1.0, sql="1=1"),
        dict(query="items_per_annotator", epsilon=1.0, bins=[5, 1]),
        dict(query="annotator_count", epsilon=1.0, scopes=["no scope"]),
        dict(query="annotator_count", epsilon=1.0, since="yesterday"),
    ]
    for kw in bad:
        with pytest.raises(ValidationError):
            p.release(**kw)
    with pytest.raises(ValidationError):
        p.set_budget("global", -1.0)
    with pytest.raises(ValidationError):
        p.set_budget("Global!", 1.0)
    assert log_state(store) == before


# ------------------------------------------------------------------------------ noisy answers
def test_noisy_answers_differ_from_the_truth_but_are_plausible(store):
    p = store.privacy
    p.set_budget("global", 1e6)
    rng = np.random.default_rng(20260101)
    true_n = exact(store, "annotator_count", task_id="main")
    vals = [p.release("annotator_count", epsilon=1.0, task_id="main", rng=rng).value
            for _ in range(40)]
    assert all(isinstance(v, int) for v in vals)
    assert any(v != true_n for v in vals)
    # discrete Laplace of scale 1: |noise| > 12 has probability ~ 1e-5 per draw
    assert all(abs(v - true_n) <= 12 for v in vals if v > 0)
    assert abs(np.mean(vals) - true_n) < 1.0

    cnt = exact(store, "count", task_id="main", max_items_per_annotator=10)
    vals = [p.release("count", epsilon=2.0, task_id="main", max_items_per_annotator=10,
                      rng=rng).value for _ in range(20)]
    assert any(v != cnt for v in vals) and abs(np.mean(vals) - cnt) < 5  # noise scale 5

    tpi = exact(store, "time_per_item", task_id="main", upper=60.0).mean()
    r = p.release("time_per_item", epsilon=50.0, task_id="main", upper=60.0, rng=rng)
    assert r.value != tpi and abs(r.value - tpi) < 10 and 0 <= r.value <= 60
    assert r.mechanism == "laplace" and r.params["sensitivity"] == {"centred_sum": 30.0, "count": 1}

    agr = exact(store, "agreement_rate", task_id="agree", min_items_per_annotator=2).mean()
    r = p.release("agreement_rate", epsilon=200.0, task_id="agree", min_items_per_annotator=2,
                  rng=rng)
    assert r.value != agr and abs(r.value - agr) < 0.25 and 0 <= r.value <= 1

    # (own scope: the PLD of the large-epsilon Laplace releases above is slow to compose)
    p.set_budget("pool:gaussian", 10.0, 1e-3)
    g = p.release("annotator_count", epsilon=2.0, delta=1e-5, mechanism="gaussian",
                  task_id="main", rng=rng, scopes=["pool:gaussian"])
    assert isinstance(g.value, float) and g.value != true_n and abs(g.value - true_n) < 15

    sh = p.release("choice_shares", epsilon=20.0, task_id="main", rng=rng)
    assert sum(sh.value.values()) == pytest.approx(1.0)
    truth = exact(store, "choice_shares", task_id="main")
    assert sh.extra["totals"] != truth
    for c, t in truth.items():
        assert abs(sh.value[c] - t / 6) < 0.15

    h = p.release("items_per_annotator", epsilon=1.0, task_id="main", bins=[1, 5, 10], rng=rng)
    assert set(h.value) == {"1-4", "5-9", "10+"} and all(v >= 0 for v in h.value.values())


def test_many_releases_then_a_mixed_one(store):
    """Laplace releases composed with a Gaussian one in the same scope (the accountant's hardest case;
    its latency is measured by benchmarks/privacy.py)."""
    p = store.privacy
    p.set_budget("global", 1e6, 1e-5)
    for q in ("annotator_count", "agreement_rate", "choice_shares"):
        p.release(q, epsilon=0.01)
    for _ in range(30):
        p.release("annotator_count", epsilon=0.01)
    r = p.release("time_per_item", epsilon=0.01, delta=1e-7, mechanism="gaussian")
    last = p.release("annotator_count", epsilon=0.01)
    assert r.mechanism == "gaussian" and last.seq > r.seq
    assert store.sql("SELECT count(*) AS n FROM privacy_spend")["n"][0] == 35


# ------------------------------------------------------------------------------ concurrency
def _hammer(store, scope: str, epsilons: list[float], threads: int = 16):
    """Run len(epsilons) releases from ``threads`` threads at once; return (releases, refusals)."""
    per = [epsilons[i::threads] for i in range(threads)]
    out: list[Release] = []
    refused: list[BudgetExceededError] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(eps_list):
        barrier.wait()
        for e in eps_list:
            try:
                r = store.privacy.release("annotator_count", epsilon=e, scopes=[scope])
                with lock:
                    out.append(r)
            except BudgetExceededError as ex:
                with lock:
                    refused.append(ex)
            except BaseException as ex:  # noqa: BLE001
                with lock:
                    errors.append(ex)

    ts = [threading.Thread(target=worker, args=(p,)) for p in per]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    return out, refused


def _check_no_overspend(store, scope, budget, releases, refused, n_requests):
    assert len(releases) + len(refused) == n_requests
    spends = store.sql("SELECT release_id, epsilon, result::VARCHAR AS result FROM privacy_spend "
                       "WHERE list_contains(json_extract_string(scopes, '$.scopes[*]'), ?)", [scope])
    recorded = dict(zip(spends["release_id"], spends["epsilon"]))
    # every returned answer has its recorded spend, with the same value
    assert len(recorded) == len(releases)
    results = dict(zip(spends["release_id"], spends["result"]))
    for r in releases:
        assert r.release_id in recorded
        assert json.loads(results[r.release_id])["value"] == r.value
    total = sum(Fraction(e) for e in recorded.values())
    assert float(total) <= budget * (1 + 1e-9)
    # and the ledger agrees with the log
    spent = store.privacy.budgets().filter(scope=scope)["epsilon_spent"][0]
    assert spent == pytest.approx(float(total), rel=1e-9)
    # every refusal was a genuine one: it did not fit on top of what had been spent so far
    for ex in refused:
        assert ex.spent_after > budget


def test_concurrent_releases_never_overspend(store):
    store.privacy.set_budget("pool:concurrent", 2.0)
    eps = [0.05 + 0.01 * (i % 7) for i in range(80)]  # ~6.3 requested against a budget of 2
    releases, refused = _hammer(store, "pool:concurrent", eps)
    assert releases and refused
    _check_no_overspend(store, "pool:concurrent", 2.0, releases, refused, 80)
    seqs = sorted(r.seq for r in releases)
    assert len(set(seqs)) == len(seqs)


_example = iter(range(10**6))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budget=st.floats(0.2, 2.0),
       eps=st.lists(st.floats(0.01, 0.3), min_size=80, max_size=80))
def test_concurrent_releases_never_overspend_property(store, budget, eps):
    scope = f"pool:hyp-{next(_example)}"
    store.privacy.set_budget(scope, budget)
    releases, refused = _hammer(store, scope, eps)
    _check_no_overspend(store, scope, budget, releases, refused, len(eps))


# ------------------------------------------------------------------------------ raw ids
def test_raw_annotator_ids_never_reach_the_duckdb_files(tmp_path):
    folder = tmp_path / "keys"
    keys_mod.init_keys(folder, "t", no_passphrase=True)
    raw = {w: f"{w}.raw-worker-id-7731@vendor.example" for w in MAIN + AGREE}
    path = tmp_path / "audit.duckdb"
    s = open_store(path, keys=folder)
    s.extend(campaign_rows(raw))
    p = s.privacy
    p.set_budget("global", 10.0)
    # an annotator scope given with a raw id is pseudonymised before it is written
    p.set_budget(f"annotator:{raw['w0']}", 1.0)
    assert p.budgets().filter(scope=f"annotator:{raw['w0']}").height == 0
    pseudo = s.pseudonymizer.pseudonymize(raw["w0"])
    p.release("annotator_count", epsilon=0.5, scopes=["global", f"annotator:{raw['w0']}"])
    p.release("choice_shares", epsilon=0.5, task_id="main")
    p.release("agreement_rate", epsilon=0.5, task_id="agree", min_items_per_annotator=1)
    assert p.spend_history(f"annotator:{pseudo}").height == 1
    annotators = set(s.sql("SELECT DISTINCT annotator FROM annotation")["annotator"])
    assert pseudo in annotators and not annotators & set(raw.values())
    s.close()
    files = [f for f in tmp_path.iterdir() if f.name.startswith("audit.duckdb")]
    assert path in files
    blob = b"".join(f.read_bytes() for f in files)  # audit.duckdb and audit.duckdb.wal if any
    # positive control: the search does see strings the store holds
    assert pseudo.encode() in blob
    for rid in raw.values():
        for needle in (rid.encode("utf-8"), rid.encode("utf-16-le"), rid.split("@")[0].encode()):
            assert needle not in blob, needle
