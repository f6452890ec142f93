"""Tests of the DP noise mechanisms and release helpers.

Statistical tests: every seeded test is deterministic (same seed, same verdict); their thresholds
are the false-alarm rate a *correct* sampler would have on a fresh seed: ALPHA = 1e-3 per test.
The two CSPRNG tests cannot be seeded, so they use ALPHA_UNSEEDED = 1e-6 (a flake once in a
million runs) and are still far more sensitive than any plausible bug (a wrong scale or a wrong
transform gives p-values below 1e-100 at these sample sizes).
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from rlhf_audit_kit.errors import ValidationError
from rlhf_audit_kit.privacy import (DiscreteGaussian, DiscreteLaplace, DPRelease, Gaussian, Laplace,
                                    MechanismCost, SubsampledGaussian, analytic_gaussian_delta,
                                    dp_count, dp_histogram, dp_mean, dp_sum)
from rlhf_audit_kit.privacy.mechanisms import _bernoulli_exp, _Source

ALPHA = 1e-3
ALPHA_UNSEEDED = 1e-6


def _chi2_pvalue(samples: np.ndarray, pmf, lo: int, hi: int) -> float:
    """Chi-square goodness of fit on bins lo..hi plus the two tails, against an exact pmf."""
    n = len(samples)
    support = np.arange(lo, hi + 1)
    p = np.array([pmf(k) for k in support])
    p_left = sum(pmf(k) for k in range(lo - 400, lo))
    p_right = sum(pmf(k) for k in range(hi + 1, hi + 401))
    probs = np.concatenate([[p_left], p, [p_right]])
    obs = np.concatenate([[np.sum(samples < lo)],
                          [np.sum(samples == k) for k in support], [np.sum(samples > hi)]])
    keep = probs * n >= 5  # chi-square needs expected counts >= 5: merge the rest into one bin
    exp = np.concatenate([probs[keep], [probs[~keep].sum()]]) * n
    obs = np.concatenate([obs[keep], [obs[~keep].sum()]])
    if exp[-1] < 5:
        exp[-2] += exp[-1]; obs[-2] += obs[-1]
        exp, obs = exp[:-1], obs[:-1]
    exp *= n / exp.sum()  # the 400-term tails are exact to ~1e-100
    return float(stats.chisquare(obs, exp).pvalue)


def _discrete_laplace_pmf(scale: float):
    a = math.exp(-1 / scale)
    return lambda k: (1 - a) / (1 + a) * a ** abs(k)


def _discrete_gaussian_pmf(sigma: float):
    ks = np.arange(-int(40 * sigma) - 40, int(40 * sigma) + 41)
    z = np.exp(-ks.astype(float) ** 2 / (2 * sigma**2)).sum()
    return lambda k: math.exp(-k * k / (2 * sigma**2)) / z


# ---------------------------------------------------------------- continuous samplers (KS tests)
@pytest.mark.parametrize("scale,sens,seed", [(1.0, 1.0, 1), (0.3, 1.0, 2), (2.0, 5.0, 3)])
def test_laplace_matches_scipy_ks(scale, sens, seed):
    x = Laplace(scale, sens).sample(20_000, rng=np.random.default_rng(seed))
    assert stats.kstest(x, stats.laplace(scale=scale * sens).cdf).pvalue > ALPHA


@pytest.mark.parametrize("sigma,sens,seed", [(1.0, 1.0, 4), (0.25, 1.0, 5), (3.0, 2.0, 6)])
def test_gaussian_matches_scipy_ks(sigma, sens, seed):
    x = Gaussian(sigma, sens).sample(20_001, rng=np.random.default_rng(seed))  # odd: Box-Muller pairs
    assert len(x) == 20_001
    assert stats.kstest(x, stats.norm(scale=sigma * sens).cdf).pvalue > ALPHA


def test_random_random_rng_is_supported_and_reproducible():
    a = Laplace(1.0).sample(5_000, rng=random.Random(7))
    b = Laplace(1.0).sample(5_000, rng=random.Random(7))
    assert np.array_equal(a, b)
    assert stats.kstest(a, stats.laplace().cdf).pvalue > ALPHA


def test_csprng_paths_have_the_right_distribution():
    """Unseeded (os.urandom) draws: documented false-alarm rate ALPHA_UNSEEDED."""
    assert stats.kstest(Laplace(1.5).sample(20_000), stats.laplace(scale=1.5).cdf).pvalue > ALPHA_UNSEEDED
    assert stats.kstest(Gaussian(0.5).sample(20_000), stats.norm(scale=0.5).cdf).pvalue > ALPHA_UNSEEDED


def test_unseeded_draws_differ():
    assert not np.array_equal(Laplace(1.0).sample(8), Laplace(1.0).sample(8))
    assert DiscreteLaplace(1000).sample(4).tolist() != DiscreteLaplace(1000).sample(4).tolist()


def test_open_uniforms_never_hit_0_or_1():
    src = _Source(np.random.default_rng(0))
    u = _Source.to_open_unit(np.array([0, (1 << 52) - 1], dtype=np.uint64))
    assert 0 < u[0] < u[1] < 1
    assert np.all(np.isfinite(Laplace(1.0).sample(1) * 0))
    assert np.isfinite(np.log1p(-2 * np.abs(u - 0.5))).all() and np.isfinite(np.log(u)).all()
    assert np.all(np.isfinite(np.log(src.open_uniform(1000))))


# ---------------------------------------------------------------- exact discrete samplers
@pytest.mark.parametrize("num,den,seed", [(1, 3, 1), (5, 2, 2), (0, 1, 3), (7, 1, 4)])
def test_bernoulli_exp_is_exact(num, den, seed):
    src = _Source(random.Random(seed))
    n = 20_000
    hits = sum(_bernoulli_exp(src, num, den) for _ in range(n))
    assert stats.binomtest(hits, n, math.exp(-num / den)).pvalue > ALPHA


@pytest.mark.parametrize("rng_factory", [lambda: np.random.default_rng(11), lambda: random.Random(11)])
def test_randbelow_uniform(rng_factory):
    src = _Source(rng_factory())
    x = np.array([src.randbelow(7) for _ in range(14_000)])
    assert stats.chisquare(np.bincount(x, minlength=7)).pvalue > ALPHA
    big = (1 << 80) + 12345  # beyond 2**62: the byte-rejection path
    ys = [src.randbelow(big) for _ in range(2000)]
    assert all(0 <= y < big for y in ys)
    assert stats.kstest(np.array(ys, dtype=float) / big, "uniform").pvalue > ALPHA


@pytest.mark.parametrize("scale,sens,seed", [(Fraction(2), 1, 21), (0.5, 1, 22), (Fraction(7, 3), 2, 23)])
def test_discrete_laplace_matches_exact_pmf(scale, sens, seed):
    x = DiscreteLaplace(scale, sens).sample(10_000, rng=random.Random(seed))
    s = float(Fraction(scale) * sens)
    assert _chi2_pvalue(x, _discrete_laplace_pmf(s), -int(6 * s) - 1, int(6 * s) + 1) > ALPHA


@pytest.mark.parametrize("sigma,seed", [(3, 31), (0.7, 32), (Fraction(25, 2), 33)])
def test_discrete_gaussian_matches_exact_pmf(sigma, seed):
    x = DiscreteGaussian(sigma).sample(10_000, rng=random.Random(seed))
    s = float(sigma)
    assert _chi2_pvalue(x, _discrete_gaussian_pmf(s), -int(4 * s) - 1, int(4 * s) + 1) > ALPHA


def test_discrete_samplers_with_numpy_generator_and_csprng():
    x = DiscreteGaussian(2).sample(5_000, rng=np.random.default_rng(41))
    assert _chi2_pvalue(x, _discrete_gaussian_pmf(2.0), -9, 9) > ALPHA
    y = DiscreteLaplace(1).sample(5_000)  # CSPRNG
    assert _chi2_pvalue(y, _discrete_laplace_pmf(1.0), -7, 7) > ALPHA_UNSEEDED


def test_discrete_outputs_are_python_or_numpy_ints():
    v = DiscreteLaplace(3, rng=random.Random(0)).release(10)
    assert isinstance(v, int)
    arr = DiscreteGaussian(3, rng=random.Random(0)).release([1, 2, 3])
    assert arr.dtype == np.int64 and arr.shape == (3,)


# ---------------------------------------------------------------- clamping and sensitivity
@pytest.mark.parametrize("mech", [Laplace(1.0), Gaussian(1.0)])
def test_continuous_release_clamps_before_noise(mech):
    a = mech.release(1e9, lower=-5, upper=5, rng=np.random.default_rng(3))
    b = mech.release(5.0, rng=np.random.default_rng(3))
    assert a == b
    arr = mech.release([-1e9, 0.0, 1e9], lower=-1, upper=1, rng=np.random.default_rng(4))
    ref = mech.release([-1.0, 0.0, 1.0], rng=np.random.default_rng(4))
    assert np.array_equal(arr, ref) and arr.shape == (3,)


@pytest.mark.parametrize("mech", [DiscreteLaplace(2), DiscreteGaussian(2)])
def test_discrete_release_clamps_before_noise(mech):
    assert (mech.release(10**12, lower=0, upper=10, rng=random.Random(5))
            == mech.release(10, rng=random.Random(5)))


@pytest.mark.parametrize("cls", [Laplace, Gaussian])
def test_noise_scales_with_sensitivity(cls):
    n1 = cls(1.5).release(0.0, sensitivity=1.0, rng=np.random.default_rng(9))
    n3 = cls(1.5).release(0.0, sensitivity=3.0, rng=np.random.default_rng(9))
    assert n3 == pytest.approx(3 * n1, rel=1e-12)
    assert cls(1.5, sensitivity=3.0).release(0.0, rng=np.random.default_rng(9)) == pytest.approx(n3)
    assert cls(1.5).cost() == cls(1.5, sensitivity=3.0).cost()  # cost is per unit sensitivity


def test_discrete_laplace_sensitivity_and_discrete_gaussian_must_declare_it():
    x = DiscreteLaplace(1, sensitivity=3).sample(5_000, rng=random.Random(8))
    assert _chi2_pvalue(x, _discrete_laplace_pmf(3.0), -19, 19) > ALPHA
    assert DiscreteLaplace(1).cost() == DiscreteLaplace(1, sensitivity=3).cost()
    with pytest.raises(ValidationError, match="declare sensitivity"):
        DiscreteGaussian(2).release(5, sensitivity=2)
    assert DiscreteGaussian(2, sensitivity=2).cost().sensitivity == 2


def test_empty_array_release():
    assert Laplace(1.0).release(np.array([])).shape == (0,)
    assert Gaussian(1.0).release(np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("bad", [
    lambda: Laplace(0), lambda: Laplace(-1), lambda: Laplace(float("nan")), lambda: Laplace(math.inf),
    lambda: Gaussian(0), lambda: DiscreteLaplace(0), lambda: DiscreteGaussian(-2),
    lambda: DiscreteLaplace(1, sensitivity=1.5), lambda: DiscreteLaplace("2"),
    lambda: SubsampledGaussian(1.0, 0.0), lambda: SubsampledGaussian(1.0, 1.5),
    lambda: Laplace(1.0).release(1.0, lower=2, upper=1), lambda: Laplace(1.0).release("x"),
    lambda: Laplace(1.0).release(1.0, sensitivity=0), lambda: DiscreteLaplace(1).release(1.5),
    lambda: DiscreteLaplace(1).release(1, lower=0.5), lambda: MechanismCost("cauchy", 1.0),
    lambda: Gaussian.calibrate(1.0, 0.0), lambda: Gaussian.calibrate(0.0, 1e-5),
    lambda: Laplace(1.0).release(float("nan"), lower=0, upper=1),
    lambda: Gaussian(1.0).release([1.0, float("inf")]), lambda: Laplace(1.0).release(True),
])
def test_invalid_parameters_raise_validation_error(bad):
    with pytest.raises(ValidationError):
        bad()


# ---------------------------------------------------------------- analytic Gaussian mechanism
def _hockey_stick_numeric(sigma: float, eps: float) -> float:
    """Independent oracle: integrate [p(x) - e^eps q(x)]_+ for N(0, s^2) vs N(1, s^2)."""
    p, q = stats.norm(0, sigma), stats.norm(1, sigma)
    x0 = 0.5 - eps * sigma**2  # p > e^eps q exactly for x < x0
    val, _ = integrate.quad(lambda x: p.pdf(x) - math.exp(eps) * q.pdf(x), -np.inf, x0,
                            epsabs=1e-14, epsrel=1e-10, limit=200)
    return val


@pytest.mark.parametrize("sigma,eps", [(1.0, 0.5), (1.0, 1.0), (0.5, 2.0), (3.0, 0.1), (2.0, 0.0)])
def test_analytic_delta_matches_numeric_hockey_stick(sigma, eps):
    assert analytic_gaussian_delta(sigma, eps) == pytest.approx(_hockey_stick_numeric(sigma, eps),
                                                                rel=1e-7, abs=1e-15)


@pytest.mark.parametrize("eps,delta", [(0.1, 1e-5), (1.0, 1e-5), (1.0, 1e-10), (4.0, 1e-6),
                                       (10.0, 1e-5), (0.5, 0.1)])
def test_calibrate_solves_the_balle_wang_condition(eps, delta):
    g = Gaussian.calibrate(eps, delta)
    mu = 1 / g.sigma
    closed = stats.norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * stats.norm.cdf(-mu / 2 - eps / mu)
    assert closed <= delta * (1 + 1e-9)          # private: the condition holds at sigma
    assert closed == pytest.approx(delta, rel=1e-6)  # tight: and with equality
    assert Gaussian(g.sigma * (1 - 1e-6)).delta(eps) > delta  # any less noise breaks it
    if eps < 1:  # the classical bound is valid there and is strictly looser
        assert g.sigma < math.sqrt(2 * math.log(1.25 / delta)) / eps


def test_calibrate_carries_sensitivity_and_agrees_with_dp_accounting():
    from dp_accounting.pld import accountant as pld_accountant

    g = Gaussian.calibrate(1.0, 1e-5, sensitivity=4.0)
    assert g.sensitivity == 4.0
    ref = pld_accountant.get_smallest_gaussian_noise(
        __import__("dp_accounting").pld.common.DifferentialPrivacyParameters(1.0, 1e-5), 1)
    assert g.sigma == pytest.approx(ref, rel=1e-3)


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(0.01, 20), log_delta=st.floats(-12, -1))
def test_calibrate_property(eps, log_delta):
    delta = 10**log_delta
    g = Gaussian.calibrate(eps, delta)
    assert g.delta(eps) <= delta
    assert Gaussian(g.sigma * (1 - 1e-5)).delta(eps) > delta


# ---------------------------------------------------------------- costs
def test_costs_describe_the_mechanisms():
    assert Laplace(4.0).cost() == MechanismCost("laplace", 4.0)
    assert Laplace(4.0).cost().pure_epsilon == 0.25
    assert Gaussian(2.0).cost().pure_epsilon is None
    assert SubsampledGaussian(1.1, 0.01).cost() == MechanismCost("subsampled_gaussian", 1.1, 0.01)
    assert SubsampledGaussian(1.1, 1.0).cost() == MechanismCost("gaussian", 1.1)
    assert DiscreteLaplace(Fraction(1, 2)).cost().pure_epsilon == 2.0
    for c in (Laplace(1).cost(), DiscreteGaussian(3, 2).cost(), SubsampledGaussian(1, 0.1).cost()):
        assert MechanismCost.from_dict(c.to_dict()) == c
    assert Laplace.calibrate(0.5).scale == 2.0
    assert DiscreteLaplace.calibrate(0.25).scale == 4


def test_rng_not_part_of_equality_or_repr():
    assert Laplace(1.0, rng=np.random.default_rng(0)) == Laplace(1.0)
    assert "rng" not in repr(Gaussian(1.0, rng=random.Random(0)))


# ---------------------------------------------------------------- high-level helpers
def test_dp_count():
    r = dp_count(100, 0.5, rng=random.Random(1))
    assert isinstance(r, DPRelease) and isinstance(r.value, int) and r.query == "count"
    assert r.epsilon == 0.5 and r.costs() == (MechanismCost("discrete_laplace", 2.0),)
    x = np.array([dp_count(50, 1.0, rng=random.Random(s)).value for s in range(3000)]) - 50
    assert _chi2_pvalue(x, _discrete_laplace_pmf(1.0), -7, 7) > ALPHA
    with pytest.raises(ValidationError):
        dp_count(-1, 1.0)
    with pytest.raises(ValidationError):
        dp_count(3, 0.0)


def test_dp_sum_sensitivity_and_mechanism_choice():
    r = dp_sum([1, 2, 30], -2, 5, 1.0, rng=random.Random(2))  # 30 clamps to 5
    assert isinstance(r.value, int) and r.params["sensitivity"] == 5
    assert r.mechanisms[0] == DiscreteLaplace(1, sensitivity=5)
    assert r.value == DiscreteLaplace(1, 5).release(8, rng=random.Random(2))
    rf = dp_sum([0.5, 0.25, 9.0], -1.0, 1.0, 2.0, rng=np.random.default_rng(3))
    assert isinstance(rf.value, float) and rf.mechanisms[0] == Laplace(0.5, 1.0)
    assert rf.value == Laplace(0.5, 1.0).release(1.75, rng=np.random.default_rng(3))
    with pytest.raises(ValidationError):
        dp_sum([1.0, float("nan")], 0, 1, 1.0)
    with pytest.raises(ValidationError):
        dp_sum([1, 2], 0, 0, 1.0)


def test_dp_mean_splits_budget_and_is_accurate():
    vals = np.random.default_rng(0).uniform(0, 1, 2000)
    r = dp_mean(vals, 0.0, 1.0, 1.0, rng=np.random.default_rng(1))
    assert r.params["split"] == {"sum": 0.5, "count": 0.5}
    assert sum(c.pure_epsilon for c in r.costs()) == pytest.approx(1.0)
    assert r.mechanisms[0].sensitivity == 0.5  # centred sum: (upper - lower)/2
    assert abs(r.value - vals.mean()) < 0.02
    assert 0.0 <= dp_mean([5.0], 0.0, 1.0, 0.01, rng=np.random.default_rng(2)).value <= 1.0
    with pytest.raises(ValidationError):
        dp_mean([1.0], 1.0, 1.0, 1.0)


def test_dp_histogram_keys_and_cost():
    r = dp_histogram({"a": 10, "b": 0, "tie": 3}, 1.0, rng=random.Random(4))
    assert list(r.value) == ["a", "b", "tie"] and all(isinstance(v, int) for v in r.value.values())
    assert r.costs() == (MechanismCost("discrete_laplace", 1.0),) and r.epsilon == 1.0
    arr = dp_histogram([1, 2, 3], 0.5, rng=random.Random(4)).value
    assert arr.shape == (3,)
    with pytest.raises(ValidationError):
        dp_histogram([1.5, 2], 1.0)


def test_helper_costs_compose_to_the_stated_epsilon():
    from rlhf_audit_kit.privacy import Accountant

    acc = Accountant()
    for r in (dp_count(5, 0.3), dp_sum([1.0], 0, 1, 0.2), dp_mean([0.5], 0, 1, 0.4),
              dp_histogram([1, 2], 0.1)):
        for m in r.mechanisms:
            acc.compose(m)
    assert acc.pure_epsilon() == pytest.approx(1.0, rel=1e-12)
