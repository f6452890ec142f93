"""Drift measures against scipy / straightforward references, and change-point detectors."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.stats.mstats import mquantiles

from rlhf_audit_kit.analysis import changepoint as cp
from rlhf_audit_kit.analysis import drift as dr

TOL = 1e-9
SETTINGS = settings(max_examples=150, deadline=None)

# Samples on a 0.25 grid: many ties and values sitting exactly on quantile edges.
grid_samples = hnp.arrays(np.float64, st.integers(1, 60),
                          elements=st.integers(-20, 20).map(lambda v: v / 4))
float_samples = hnp.arrays(np.float64, st.integers(1, 80),
                           elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False))


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


# ------------------------------------------------------------------------------------------
# PSI
# ------------------------------------------------------------------------------------------
def naive_psi(ref: np.ndarray, cur: np.ndarray, bins: int) -> float:
    """The documented rule, written out bin by bin.

    The edges are numpy's quantiles by definition (scipy's type-7 ``mquantiles`` agrees only to
    the last ulp, which moves values sitting on an edge; see test_psi_edges_are_reference_quantiles).
    """
    inner = [float(np.quantile(ref, k / bins)) for k in range(1, bins)]
    bounds = [-np.inf, *inner, np.inf]
    total = 0.0
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        e = max(np.mean((ref > lo) & (ref <= hi)), 1e-6)
        a = max(np.mean((cur > lo) & (cur <= hi)), 1e-6)
        total += (a - e) * math.log(a / e)
    return total


@SETTINGS
@given(ref=grid_samples, cur=grid_samples, bins=st.integers(1, 12))
def test_psi_matches_bin_by_bin_reference(ref, cur, bins):
    assert close(dr.psi(ref, cur, bins=bins), naive_psi(ref, cur, bins))


@SETTINGS
@given(ref=float_samples, cur=float_samples)
def test_psi_continuous_values(ref, cur):
    assert close(dr.psi(ref, cur), naive_psi(ref, cur, 10))


def test_psi_known_values():
    ref = np.arange(1.0, 101.0)
    assert dr.psi(ref, ref) == 0.0
    assert dr.psi(ref, ref[::-1].copy()) == 0.0  # order does not matter
    # Current entirely above the reference's maximum: 9 bins at 1e-6, the last at 1.
    e = np.bincount(np.searchsorted(np.quantile(ref, np.arange(1, 10) / 10), ref), minlength=10)
    e = e / ref.size
    a = np.r_[np.full(9, 1e-6), 1.0]
    assert close(dr.psi(ref, ref + 1000), float(np.sum((a - e) * np.log(a / e))))
    # Two bins split at the median 2.5: e = (.5, .5), a = (.75, .25).
    expected = 0.25 * math.log(1.5) - 0.25 * math.log(0.5)
    assert close(dr.psi([1, 2, 3, 4], [1, 1, 1, 4], bins=2), expected)
    # Right-closed bins: a value equal to an edge falls in the lower bin.
    assert close(dr.psi([1, 2, 3], [2, 2, 2], bins=2), dr.psi([1, 2, 3], [1.5, 1.5, 1.5], bins=2))
    assert dr.psi(np.random.default_rng(0).normal(size=5000),
                  np.random.default_rng(1).normal(1, 1, 5000)) > 0.25


def test_psi_edges_are_reference_quantiles():
    ref = np.random.default_rng(2).gamma(2.0, size=1001)
    np.testing.assert_array_equal(dr.psi_edges(ref), np.quantile(ref, np.arange(1, 10) / 10))
    # Independent implementation of the same (Hyndman-Fan type 7, linear) quantile.
    type7 = mquantiles(ref, prob=np.arange(1, 5) / 5, alphap=1, betap=1)
    np.testing.assert_allclose(dr.psi_edges(ref, bins=5), type7, rtol=1e-12)
    with pytest.raises(ValueError, match="bins"):
        dr.psi(ref, ref, bins=0)


# ------------------------------------------------------------------------------------------
# KS, JS, Wasserstein
# ------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful:RuntimeWarning")
@SETTINGS
@given(ref=st.one_of(grid_samples, float_samples), cur=st.one_of(grid_samples, float_samples))
def test_ks_matches_scipy(ref, cur):
    res = stats.ks_2samp(ref, cur)
    stat, p = dr.ks(ref, cur)
    assert close(stat, res.statistic) and close(p, res.pvalue)


def test_ks_large_samples_asymptotic_and_input_types():
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(size=20_000), rng.normal(0.02, 1, 15_000)
    res = stats.ks_2samp(ref, cur)
    assert dr.ks(ref, cur) == (float(res.statistic), float(res.pvalue))
    assert dr.ks(pl.Series(ref), list(cur)) == dr.ks(ref, cur)


@SETTINGS
@given(ref=float_samples, cur=float_samples,
       edges=hnp.arrays(np.float64, st.integers(2, 12), unique=True,
                        elements=st.floats(-1.2e3, 1.2e3, allow_nan=False)).map(np.sort))
def test_js_distance_matches_scipy(ref, cur, edges):
    lo, hi = edges[0], edges[-1]
    p = np.histogram(np.clip(ref, lo, hi), bins=edges)[0]
    q = np.histogram(np.clip(cur, lo, hi), bins=edges)[0]
    assert close(dr.js_distance(ref, cur, edges), float(jensenshannon(p, q)))


def test_js_distance_known_values():
    assert dr.js_distance([0.1, 0.2], [0.8, 0.9], [0, 0.5, 1]) == pytest.approx(math.sqrt(math.log(2)))
    assert dr.js_distance([0.1, 0.9], [0.9, 0.1], [0, 0.5, 1]) == 0.0
    # Values outside the edges are clipped into the outer bins.
    assert dr.js_distance([-5.0], [0.1], [0, 0.5, 1]) == 0.0
    with pytest.raises(ValueError, match="edges"):
        dr.js_distance([1.0], [1.0], [0.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        dr.js_distance([1.0], [1.0], [1.0, 0.0])


@SETTINGS
@given(ref=st.one_of(grid_samples, float_samples), cur=st.one_of(grid_samples, float_samples))
def test_wasserstein_matches_scipy(ref, cur):
    assert close(dr.wasserstein(ref, cur), float(stats.wasserstein_distance(ref, cur)))


def test_wasserstein_shift():
    x = np.random.default_rng(4).normal(size=1000)
    assert dr.wasserstein(x, x + 0.3) == pytest.approx(0.3)


@pytest.mark.parametrize("fn", [dr.psi, dr.ks, dr.wasserstein,
                                lambda r, c: dr.js_distance(r, c, [0.0, 1.0])])
@pytest.mark.parametrize(("bad", "match"), [
    ([0.1, float("nan")], "NaN"), ([], "empty"), ([0.1, float("inf")], "infinite"),
    (pl.Series([0.1, None]), "null"), (["a", "b"], "numbers"), ([[0.1, 0.2]], "one-dimensional"),
])
def test_bad_samples_raise(fn, bad, match):
    with pytest.raises(ValueError, match=match):
        fn([0.1, 0.2, 0.3], bad)
    with pytest.raises(ValueError, match="reference"):
        fn(bad, [0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------------------
# drift table
# ------------------------------------------------------------------------------------------
def scores_frame(seed: int = 5) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    steps = [500, 0, 1000]  # out of order on purpose
    parts = [pl.DataFrame({"step": [s] * n, "score": rng.normal(s / 1000, 1, n)})
             for s, n in zip(steps, [300, 400, 350])]
    return pl.concat(parts).sample(fraction=1.0, shuffle=True, seed=seed)


def test_drift_table_matches_individual_measures():
    scores = scores_frame()
    out = dr.drift_table(scores)
    assert out.columns == ["step", "n", "mean", "psi", "ks_stat", "ks_pvalue", "js_distance",
                           "wasserstein"]
    assert out["step"].to_list() == [0, 500, 1000] and out.schema["n"] == pl.Int64
    ref = scores.filter(pl.col("step") == 0)["score"].to_numpy()
    edges = np.unique(np.r_[ref.min(), np.quantile(ref, np.arange(1, 10) / 10), ref.max()])
    for row in out.iter_rows(named=True):
        cur = scores.filter(pl.col("step") == row["step"])["score"].to_numpy()
        ks = stats.ks_2samp(ref, cur)
        p = np.histogram(np.clip(ref, edges[0], edges[-1]), edges)[0]
        q = np.histogram(np.clip(cur, edges[0], edges[-1]), edges)[0]
        assert row["n"] == cur.size and close(row["mean"], cur.mean())
        assert close(row["psi"], naive_psi(ref, cur, 10))
        assert close(row["ks_stat"], ks.statistic) and close(row["ks_pvalue"], ks.pvalue)
        assert close(row["js_distance"], float(jensenshannon(p, q)))
        assert close(row["wasserstein"], stats.wasserstein_distance(ref, cur))
    first = out.row(0, named=True)
    assert first["psi"] == first["ks_stat"] == first["js_distance"] == first["wasserstein"] == 0
    assert first["ks_pvalue"] == 1.0
    assert out["psi"][2] > out["psi"][1] > 0


def test_drift_table_reference_and_names():
    scores = scores_frame().rename({"step": "checkpoint", "score": "reward"})
    out = dr.drift_table(scores, group="checkpoint", value="reward", reference=1000, bins=5)
    assert out.filter(pl.col("checkpoint") == 1000)["psi"].item() == 0.0
    ref = scores.filter(pl.col("checkpoint") == 1000)["reward"].to_numpy()
    cur = scores.filter(pl.col("checkpoint") == 0)["reward"].to_numpy()
    assert close(out.filter(pl.col("checkpoint") == 0)["psi"].item(), naive_psi(ref, cur, 5))
    with pytest.raises(ValueError, match="reference 7"):
        dr.drift_table(scores, group="checkpoint", value="reward", reference=7)
    with pytest.raises(ValueError, match="'step'"):
        dr.drift_table(scores, value="reward")


def test_drift_table_rejects_bad_values_and_handles_constant_reference():
    scores = pl.DataFrame({"step": [0, 0, 1, 1], "score": [1.0, 1.0, 2.0, float("nan")]})
    with pytest.raises(ValueError, match="'score'.*NaN"):
        dr.drift_table(scores)
    with pytest.raises(ValueError, match="'score'.*null"):
        dr.drift_table(scores.with_columns(pl.lit(None, pl.Float64).alias("score")))
    const = dr.drift_table(scores.with_columns(pl.col("score").fill_nan(3.0)))
    assert const["js_distance"].to_list() == [0.0, 0.0]  # documented: one zero-width bin
    assert const["wasserstein"][1] == pytest.approx(1.5)


# ------------------------------------------------------------------------------------------
# change points
# ------------------------------------------------------------------------------------------
def naive_page_hinkley(x, delta, threshold, direction, min_instances):
    alerts, cnt, mean, u, u_min, d, d_max = [], 0, 0.0, 0.0, 0.0, 0.0, 0.0
    for t, v in enumerate(x):
        cnt += 1
        mean += (v - mean) / cnt
        u += v - mean - delta
        d += v - mean + delta
        u_min, d_max = min(u_min, u), max(d_max, d)
        fire = (direction in ("up", "both") and u - u_min > threshold) or (
            direction in ("down", "both") and d_max - d > threshold)
        if fire and cnt >= min_instances:
            alerts.append(t)
            cnt, mean, u, u_min, d, d_max = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    return alerts


def naive_cusum(x, k, h, warmup, direction, rewarm):
    alerts, t = [], warmup
    mu, sd = np.mean(x[:warmup]), np.std(x[:warmup], ddof=1)
    sp = sn = 0.0
    while t < len(x):
        z = (x[t] - mu) / sd
        sp, sn = max(0.0, sp + z - k), max(0.0, sn - z - k)
        if (direction != "down" and sp > h) or (direction != "up" and sn > h):
            alerts.append(t)
            sp = sn = 0.0
            if rewarm:
                if t + 1 + warmup > len(x):
                    break
                window = x[t + 1:t + 1 + warmup]
                mu, sd = np.mean(window), np.std(window, ddof=1)
                t += warmup
        t += 1
    return alerts


def jumpy(seed: int, n: int = 6000) -> np.ndarray:
    """Noise around a level that jumps up or down every 150 steps: frequent alerts in both
    directions, crossing the vectorised chunk boundaries."""
    rng = np.random.default_rng(seed)
    level = np.repeat(np.cumsum(rng.choice([-1.5, 1.5], n // 150 + 1)), 150)[:n]
    return level + rng.normal(0, 1, n)


@pytest.mark.parametrize("direction", ["up", "down", "both"])
@pytest.mark.parametrize("seed", [0, 1])
def test_page_hinkley_equals_sequential_definition(direction, seed):
    x = jumpy(seed)
    kw = dict(delta=0.05, threshold=8.0, direction=direction, min_instances=10)
    expected = naive_page_hinkley(x, **kw)
    assert len(expected) > 10
    assert cp.page_hinkley(x, **kw) == expected


@pytest.mark.parametrize("direction", ["up", "down", "both"])
@pytest.mark.parametrize("rewarm", [True, False])
def test_cusum_equals_sequential_definition(direction, rewarm):
    x = jumpy(7)
    kw = dict(k=0.25, h=4.0, warmup=30, direction=direction, rewarm=rewarm)
    expected = naive_cusum(x, **kw)
    assert len(expected) > 10
    assert cp.cusum(x, **kw) == expected


@pytest.mark.parametrize("shift", [1.0, -1.0])
def test_planted_shift_is_detected_quickly(shift):
    rng = np.random.default_rng(11)
    x = np.r_[rng.normal(0, 1, 3000), rng.normal(shift, 1, 3000)]
    both = cp.page_hinkley(x, delta=0.5, threshold=25)
    assert len(both) == 1 and 3000 <= both[0] <= 3000 + 120
    same_dir = "up" if shift > 0 else "down"
    assert cp.page_hinkley(x, delta=0.5, threshold=25, direction=same_dir) == both
    assert cp.page_hinkley(x, delta=0.5, threshold=25,
                           direction="down" if shift > 0 else "up") == []
    alerts = cp.cusum(x, k=0.5, h=12, warmup=500)
    assert len(alerts) == 1 and 3000 <= alerts[0] <= 3000 + 60
    # Without re-warm-up the fixed reference keeps alerting on the new level.
    assert len(cp.cusum(x, k=0.5, h=12, warmup=500, rewarm=False)) > 10


def test_stationary_series_raises_no_alert():
    # Tuning documented in the docstrings: PH with delta*threshold >> sigma^2, CUSUM with an
    # in-control ARL well above the series length.
    x = np.random.default_rng(12).normal(5.0, 2.0, 20_000)
    assert cp.page_hinkley(x, delta=1.0, threshold=50) == []
    assert cp.cusum(x, k=0.5, h=12, warmup=500) == []
    assert cp.cusum(x, k=0.5, h=12, mean=5.0, std=2.0) == []
    assert len(cp.cusum(x, k=0.5, h=4, warmup=500)) > 20  # the false-alarm rate of a low h


def test_detectors_find_a_shift_in_100k_steps():
    """A one-sigma shift at step 50,000 is flagged within 100 steps (speed: benchmarks/analysis.py)."""
    rng = np.random.default_rng(13)
    x = np.r_[rng.normal(0, 1, 50_000), rng.normal(1, 1, 50_000)]
    assert [i for i in cp.page_hinkley(x, delta=0.5, threshold=25) if i >= 50_000][0] < 50_100
    assert [i for i in cp.cusum(x, h=10) if i >= 50_000][0] < 50_100


def test_detector_validation():
    with pytest.raises(ValueError, match="NaN"):
        cp.page_hinkley([0.0, float("nan")])
    with pytest.raises(ValueError, match="direction"):
        cp.cusum([0.0, 1.0] * 50, direction="sideways")
    with pytest.raises(ValueError, match="zero variance"):
        cp.cusum([1.0] * 100)
    with pytest.raises(ValueError, match="threshold"):
        cp.page_hinkley([0.0], threshold=0)
    assert cp.cusum([0.0, 1.0] * 10, warmup=50) == []  # shorter than the warm-up
    assert cp.page_hinkley([]) == []


def test_cusum_flat_rewarm_keeps_previous_scale():
    x = np.r_[np.tile([0.0, 1.0], 25), np.full(200, 10.0)]
    assert cp.cusum(x, warmup=50) == [50]  # the flat re-warm-up window reuses the last std


def test_changepoints_frame():
    rng = np.random.default_rng(14)
    steps = np.arange(0, 4000, 4)
    kl = np.r_[rng.normal(0, 1, 500), rng.normal(2, 1, 500)]
    frame = pl.DataFrame({"step": steps, "kl": kl}).sample(fraction=1.0, shuffle=True, seed=1)
    out = cp.changepoints(frame, metric="kl", delta=0.5, threshold=25)
    idx = cp.page_hinkley(kl, delta=0.5, threshold=25)
    assert out.columns == ["step", "kl"] and out["step"].to_list() == [int(steps[i]) for i in idx]
    assert out["kl"].to_list() == [float(kl[i]) for i in idx]
    by_cusum = cp.changepoints(frame, metric="kl", method="cusum", h=10, warmup=200)
    assert by_cusum["step"].to_list() == [int(steps[i]) for i in cp.cusum(kl, h=10, warmup=200)]
    none = cp.changepoints(frame, metric="kl", threshold=1e9)
    assert none.height == 0 and none.schema == frame.schema
    with pytest.raises(ValueError, match="duplicated"):
        cp.changepoints(pl.concat([frame, frame.head(1)]), metric="kl")
    with pytest.raises(ValueError, match="'loss'"):
        cp.changepoints(frame, metric="loss")
    with pytest.raises(ValueError, match="method"):
        cp.changepoints(frame, metric="kl", method="bocpd")
    with pytest.raises(ValueError, match="'kl'.*NaN"):
        cp.changepoints(frame.with_columns(pl.lit(float("nan")).alias("kl")), metric="kl")
