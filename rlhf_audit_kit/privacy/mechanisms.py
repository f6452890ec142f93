"""Differentially private noise mechanisms and the high-level release helpers.

Conventions, shared by every mechanism and by :class:`~rlhf_audit_kit.privacy.Accountant`:

* **Adjacency** is add/remove-one *privacy unit* (one annotator: all of their rows). A query's
  ``sensitivity`` is the most its answer can move when one unit is added or removed (L1 norm for
  Laplace-type noise, L2 norm for Gaussian-type noise on vectors).
* **Noise parameters are noise multipliers**, i.e. in units of the sensitivity (as DP-SGD's
  ``noise_multiplier``): ``Laplace(scale=b)`` adds Laplace noise of scale ``b * sensitivity``, so its
  privacy cost (``epsilon = 1/b``) is a property of the mechanism object alone, never of the data.
  That is what :meth:`cost` describes to the accountant.
* **Randomness** comes from the operating system's CSPRNG (``os.urandom`` / :mod:`secrets`) unless
  an ``rng`` (a :class:`numpy.random.Generator` or a :class:`random.Random`) is given, which only
  tests and reproducible demos should do: a seeded release is not private against anyone who knows
  the seed.
* **Inputs are clamped** to the declared ``[lower, upper]`` before noise is added, so an
  out-of-range value cannot exceed the declared sensitivity.

The integer mechanisms (:class:`DiscreteLaplace`, :class:`DiscreteGaussian`) are exact samplers
(Canonne, Kamath & Steinke 2020, Algorithms 1-3): they use only integer/rational arithmetic and
uniform integers, so no floating-point artefact can leak the input (Mironov 2012 shows how the
low-order bits of a textbook floating-point Laplace sample reveal it). Prefer them for counts.
"""
from __future__ import annotations

import math
import os
import random
import secrets
from dataclasses import dataclass, field
from fractions import Fraction
from numbers import Integral, Real
from typing import Any, Mapping, Sequence, Union

import numpy as np
from scipy import optimize, special

from ..errors import ValidationError

__all__ = [
    "MechanismCost", "Laplace", "Gaussian", "SubsampledGaussian", "DiscreteLaplace",
    "DiscreteGaussian", "DPRelease", "dp_count", "dp_sum", "dp_mean", "dp_histogram",
    "analytic_gaussian_delta",
]

RNG = Union[np.random.Generator, random.Random, None]


def _bad(field_: str, reason: str) -> ValidationError:
    return ValidationError(0, field_, reason)


def _positive(name: str, x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise _bad(name, f"must be a positive number; got {x!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise _bad(name, f"must be a positive finite number; got {x!r}")
    return v


def _positive_fraction(name: str, x: Any) -> Fraction:
    if isinstance(x, bool) or not isinstance(x, (Integral, Fraction, Real)):
        raise _bad(name, f"must be a positive number; got {x!r}")
    _positive(name, x)
    return Fraction(x)  # exact: a float becomes the dyadic rational it denotes


def _positive_int(name: str, x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, Integral) or x < 1:
        raise _bad(name, f"must be a positive integer; got {x!r}")
    return int(x)


# --------------------------------------------------------------------------------------------
# Randomness: one source of uniform integers, from the CSPRNG unless a test passes an rng.
# --------------------------------------------------------------------------------------------
class _Source:
    """Uniform random integers from the CSPRNG, a numpy Generator or a random.Random."""

    def __init__(self, rng: RNG = None):
        self.rng = rng

    def randbelow(self, n: int) -> int:
        """Uniform integer in [0, n), exactly (rejection sampling, never modulo bias)."""
        rng = self.rng
        if rng is None:
            return secrets.randbelow(n)
        if isinstance(rng, random.Random):
            return rng.randrange(n)
        if n <= 1 << 62:  # numpy's bounded integers are exactly uniform (Lemire's method)
            return int(rng.integers(0, n))
        k = n.bit_length()
        nbytes = (k + 7) // 8
        while True:  # accepted with probability > 1/2 per round
            r = int.from_bytes(rng.bytes(nbytes), "little") >> (8 * nbytes - k)
            if r < n:
                return r

    def bits52(self, size: int) -> np.ndarray:
        """``size`` uniform 52-bit integers as uint64."""
        rng = self.rng
        if rng is None:
            return np.frombuffer(os.urandom(8 * size), dtype=np.uint64) >> np.uint64(12)
        if isinstance(rng, random.Random):
            return np.array([rng.getrandbits(52) for _ in range(size)], dtype=np.uint64)
        return rng.integers(0, 1 << 52, size=size, dtype=np.uint64)

    @staticmethod
    def to_open_unit(bits52: np.ndarray) -> np.ndarray:
        """Map 52-bit integers to midpoints of a 2**-52 grid: strictly inside (0, 1), so log() and
        log1p(-2|u - 1/2|) stay finite. (With 53 bits, k + 0.5 rounds up to 2**53 and u hits 1.)"""
        return (bits52.astype(np.float64) + 0.5) * 2.0**-52

    def open_uniform(self, size: int) -> np.ndarray:
        """Uniforms in the open interval (0, 1)."""
        return self.to_open_unit(self.bits52(size))


def _bernoulli_exp(src: _Source, num: int, den: int) -> bool:
    """Exact Bernoulli(exp(-num/den)) for integers num >= 0, den >= 1 (CKS 2020, Algorithm 1).

    Integers rather than Fractions: the same exact arithmetic, several times faster.
    """
    while num > den:  # exp(-gamma) = exp(-1)^floor(gamma) * exp(-frac(gamma))
        if not _bernoulli_exp(src, 1, 1):
            return False
        num -= den
    k = 1
    while src.randbelow(den * k) < num:  # Bernoulli(gamma / k)
        k += 1
    return k % 2 == 1


def _sample_discrete_laplace(src: _Source, scale: Fraction) -> int:
    """Exact sample with P[X=x] proportional to exp(-|x|/scale) (CKS 2020, Algorithm 2)."""
    t, s = scale.numerator, scale.denominator  # scale = t/s
    while True:
        u = src.randbelow(t)
        if not _bernoulli_exp(src, u, t):
            continue
        v = 0
        while _bernoulli_exp(src, 1, 1):
            v += 1
        y = (u + t * v) // s
        if src.randbelow(2) == 1:
            if y == 0:
                continue  # reject -0 so that 0 is not counted twice
            return -y
        return y


def _sample_discrete_gaussian(src: _Source, sigma2: Fraction) -> int:
    """Exact sample with P[X=x] proportional to exp(-x^2/(2 sigma2)) (CKS 2020, Algorithm 3)."""
    a, b = sigma2.numerator, sigma2.denominator  # sigma^2 = a/b
    t = math.isqrt(a * b) // b + 1  # floor(sigma) + 1
    den = 2 * a * b * t * t
    while True:
        y = _sample_discrete_laplace(src, Fraction(t))
        # gamma = (|y| - sigma^2/t)^2 / (2 sigma^2), over a common integer denominator
        if _bernoulli_exp(src, (abs(y) * b * t - a) ** 2, den):
            return y


# --------------------------------------------------------------------------------------------
# Cost descriptions for the accountant and the spend ledger.
# --------------------------------------------------------------------------------------------
_KINDS = ("laplace", "gaussian", "subsampled_gaussian", "discrete_laplace", "discrete_gaussian")


@dataclass(frozen=True)
class MechanismCost:
    """What one application of a mechanism costs, in units of sensitivity 1.

    Hashable and JSON-friendly (:meth:`to_dict`), so the accountant can group equal events and
    the spend ledger can record them.

    Attributes:
        kind: one of ``laplace``, ``gaussian``, ``subsampled_gaussian``, ``discrete_laplace``,
            ``discrete_gaussian``.
        noise: Laplace scale or Gaussian sigma, as a noise multiplier.
        sample_rate: Poisson sampling rate (1.0 unless ``subsampled_gaussian``).
        sensitivity: the integer lattice step of a discrete Gaussian (its privacy depends on it);
            1 for every other kind.

    >>> c = Laplace(scale=2.0).cost()
    >>> c.pure_epsilon, MechanismCost.from_dict(c.to_dict()) == c
    (0.5, True)
    """

    kind: str
    noise: float
    sample_rate: float = 1.0
    sensitivity: int = 1

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise _bad("kind", f"must be one of {', '.join(_KINDS)}; got {self.kind!r}")
        _positive("noise", self.noise)
        if not 0 < self.sample_rate <= 1:
            raise _bad("sample_rate", f"must be in (0, 1]; got {self.sample_rate!r}")

    @property
    def pure_epsilon(self) -> float | None:
        """epsilon of pure DP (delta = 0), or None for Gaussian-type mechanisms."""
        return 1.0 / self.noise if self.kind in ("laplace", "discrete_laplace") else None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "noise": self.noise, "sample_rate": self.sample_rate,
                "sensitivity": self.sensitivity}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MechanismCost:
        return cls(str(d["kind"]), float(d["noise"]), float(d.get("sample_rate", 1.0)),
                   int(d.get("sensitivity", 1)))


# --------------------------------------------------------------------------------------------
# Mechanisms
# --------------------------------------------------------------------------------------------
def _clamp(value: Any, lower: Any, upper: Any) -> tuple[np.ndarray, bool]:
    arr = np.asarray(value)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or arr.dtype.kind == "c":
        raise _bad("value", f"must be a real number or an array of them; got {value!r}")
    if lower is not None and upper is not None and lower > upper:
        raise _bad("lower", f"lower bound {lower!r} exceeds upper bound {upper!r}")
    if lower is not None or upper is not None:
        arr = np.clip(arr, lower, upper)
    if not np.all(np.isfinite(arr)):  # a NaN/inf answer would reveal the input; refuse
        raise _bad("value", "must be finite after clamping (declare bounds or drop NaN/inf)")
    return arr, arr.ndim == 0


class _Mechanism:
    """Shared plumbing: sensitivity resolution and rng choice."""

    sensitivity: Any
    rng: RNG

    def _pick(self, rng: RNG) -> RNG:
        return rng if rng is not None else self.rng

    def _source(self, rng: RNG) -> _Source:
        return _Source(self._pick(rng))

    def _sens(self, sensitivity: Any) -> float:
        return self.sensitivity if sensitivity is None else _positive("sensitivity", sensitivity)


@dataclass(frozen=True)
class Laplace(_Mechanism):
    """Continuous Laplace mechanism: pure ``epsilon = 1/scale``-DP for any L1 sensitivity.

    Sensitivity assumption: the query moves by at most ``sensitivity`` (L1) when one privacy unit
    is added or removed; noise of scale ``scale * sensitivity`` is added. Floating-point caveat
    (Mironov 2012): the output's low-order bits are not exactly Laplace; for integer queries use
    :class:`DiscreteLaplace`.

    >>> m = Laplace(scale=2.0, rng=np.random.default_rng(0))
    >>> round(m.release(10.0, lower=0, upper=5), 3)   # clamped to 5, then noised
    5.64
    >>> m.epsilon
    0.5
    """

    scale: float
    sensitivity: float = 1.0
    rng: RNG = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "scale", _positive("scale", self.scale))
        object.__setattr__(self, "sensitivity", _positive("sensitivity", self.sensitivity))

    @classmethod
    def calibrate(cls, epsilon: float, sensitivity: float = 1.0, *, rng: RNG = None) -> Laplace:
        """The Laplace mechanism that is exactly ``epsilon``-DP."""
        return cls(1.0 / _positive("epsilon", epsilon), sensitivity, rng)

    @property
    def epsilon(self) -> float:
        return 1.0 / self.scale

    def sample(self, size: int, *, rng: RNG = None) -> np.ndarray:
        """``size`` draws of Laplace(0, scale * sensitivity), by inverse-CDF of open uniforms."""
        u = self._source(rng).open_uniform(size) - 0.5
        return -self.scale * self.sensitivity * np.sign(u) * np.log1p(-2.0 * np.abs(u))

    def release(self, value, *, lower=None, upper=None, sensitivity=None, rng: RNG = None):
        """Clamp ``value`` (scalar or array) to [lower, upper] and add Laplace noise.

        ``sensitivity`` overrides the declared one for this release; the cost does not change,
        because the noise scales with it.
        """
        arr, scalar = _clamp(value, lower, upper)
        sens = self._sens(sensitivity)
        noise = Laplace(self.scale, sens).sample(arr.size, rng=self._pick(rng))
        noisy = arr.astype(np.float64) + noise.reshape(arr.shape)
        return float(noisy) if scalar else noisy

    def cost(self) -> MechanismCost:
        return MechanismCost("laplace", self.scale)


def analytic_gaussian_delta(sigma: float, epsilon: float) -> float:
    """Exact delta(epsilon) of the Gaussian mechanism with noise multiplier ``sigma``.

    Balle & Wang (2018), Theorem 8, with mu = 1/sigma:
    ``delta = Phi(mu/2 - eps/mu) - exp(eps) * Phi(-mu/2 - eps/mu)``. The k-fold composition is the
    same formula with ``sigma / sqrt(k)``.

    >>> round(analytic_gaussian_delta(1.0, 1.0), 4)
    0.1269
    """
    mu = 1.0 / sigma
    a = special.ndtr(mu / 2 - epsilon / mu)
    b = math.exp(epsilon + special.log_ndtr(-mu / 2 - epsilon / mu))  # log-space: e^eps may overflow
    return max(0.0, float(a - b))


@dataclass(frozen=True)
class Gaussian(_Mechanism):
    """Continuous Gaussian mechanism with noise multiplier ``sigma`` (L2 sensitivity).

    Adds N(0, (sigma * sensitivity)^2) noise. Its exact (epsilon, delta) curve is
    :func:`analytic_gaussian_delta`.

    >>> g = Gaussian.calibrate(1.0, 1e-5)
    >>> round(g.sigma, 4), g.delta(1.0) <= 1e-5
    (3.7306, True)
    """

    sigma: float
    sensitivity: float = 1.0
    rng: RNG = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "sigma", _positive("sigma", self.sigma))
        object.__setattr__(self, "sensitivity", _positive("sensitivity", self.sensitivity))

    @classmethod
    def calibrate(cls, epsilon: float, delta: float, sensitivity: float = 1.0, *,
                  rng: RNG = None) -> Gaussian:
        """Smallest noise giving (epsilon, delta)-DP: the analytic Gaussian mechanism.

        Solves ``analytic_gaussian_delta(sigma, epsilon) = delta`` for sigma by a bracketed root
        find (Balle & Wang 2018, exact via the Gaussian CDF rather than the classical
        sqrt(2 ln(1.25/delta))/epsilon tail bound), then rounds sigma up so delta is never exceeded.
        """
        eps = _positive("epsilon", epsilon)
        if not 0 < delta < 1:
            raise _bad("delta", f"must be in (0, 1); got {delta!r}")
        f = lambda s: math.log(max(analytic_gaussian_delta(s, eps), 1e-300)) - math.log(delta)
        lo, hi = 1e-3, 1.0
        while f(lo) < 0:
            lo /= 2
        while f(hi) > 0:
            hi *= 2
        s = optimize.brentq(f, lo, hi, xtol=1e-14, rtol=1e-14)
        while analytic_gaussian_delta(s, eps) > delta:
            s = math.nextafter(s, math.inf)
        return cls(s, sensitivity, rng)

    def delta(self, epsilon: float) -> float:
        """Exact delta for ``epsilon`` of one application."""
        return analytic_gaussian_delta(self.sigma, epsilon)

    def sample(self, size: int, *, rng: RNG = None) -> np.ndarray:
        """``size`` draws of N(0, (sigma*sensitivity)^2), Box-Muller on open uniforms."""
        n = (size + 1) // 2
        src = self._source(rng)
        u1, u2 = src.open_uniform(n), src.open_uniform(n)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:size]
        return self.sigma * self.sensitivity * z

    def release(self, value, *, lower=None, upper=None, sensitivity=None, rng: RNG = None):
        """Clamp ``value`` (scalar or array) to [lower, upper] and add Gaussian noise."""
        arr, scalar = _clamp(value, lower, upper)
        g = Gaussian(self.sigma, self._sens(sensitivity))
        noisy = arr.astype(np.float64) + g.sample(arr.size, rng=self._pick(rng)).reshape(arr.shape)
        return float(noisy) if scalar else noisy

    def cost(self) -> MechanismCost:
        return MechanismCost("gaussian", self.sigma)


@dataclass(frozen=True)
class SubsampledGaussian:
    """Accounting description of one DP-SGD step: Poisson sampling at ``sample_rate``, then a
    Gaussian with noise multiplier ``sigma`` on the clipped gradient sum (clip norm = sensitivity).

    No ``release``: the training framework adds the noise; the kit only accounts for it.

    >>> SubsampledGaussian(sigma=1.1, sample_rate=0.01).cost().kind
    'subsampled_gaussian'
    """

    sigma: float
    sample_rate: float

    def __post_init__(self):
        object.__setattr__(self, "sigma", _positive("sigma", self.sigma))
        if not 0 < self.sample_rate <= 1:
            raise _bad("sample_rate", f"must be in (0, 1]; got {self.sample_rate!r}")
        object.__setattr__(self, "sample_rate", float(self.sample_rate))

    def cost(self) -> MechanismCost:
        if self.sample_rate == 1.0:  # no subsampling: identical to the plain Gaussian
            return MechanismCost("gaussian", self.sigma)
        return MechanismCost("subsampled_gaussian", self.sigma, self.sample_rate)


def _int_array(value: Any, name: str) -> tuple[np.ndarray, bool]:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise _bad(name, f"must be an integer or an array of integers; got {value!r}")
    return arr, arr.ndim == 0


def _int_clamp(value, lower, upper):
    arr, scalar = _int_array(value, "value")
    for name, b in (("lower", lower), ("upper", upper)):
        if b is not None and (isinstance(b, bool) or not isinstance(b, (Integral, np.integer))):
            raise _bad(name, f"must be an integer for an integer mechanism; got {b!r}")
    if lower is not None and upper is not None and lower > upper:
        raise _bad("lower", f"lower bound {lower!r} exceeds upper bound {upper!r}")
    if lower is not None or upper is not None:
        arr = np.clip(arr, lower, upper)
    return [int(v) for v in arr.reshape(-1)], arr.shape, scalar


@dataclass(frozen=True)
class DiscreteLaplace(_Mechanism):
    """Discrete Laplace (two-sided geometric) for integer queries: P[x] ~ exp(-|x|/(scale*sens)).

    Pure ``epsilon = 1/scale``-DP for integer sensitivity ``sensitivity``; sampled exactly
    (CKS 2020, Algorithm 2) from the CSPRNG. ``scale`` may be an int, Fraction or float (a float
    is used as the exact rational it denotes).

    >>> DiscreteLaplace(scale=2, rng=random.Random(1)).release(7, lower=0, upper=10)
    5
    """

    scale: Fraction
    sensitivity: int = 1
    rng: RNG = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "scale", _positive_fraction("scale", self.scale))
        object.__setattr__(self, "sensitivity", _positive_int("sensitivity", self.sensitivity))

    @classmethod
    def calibrate(cls, epsilon: float, sensitivity: int = 1, *, rng: RNG = None) -> DiscreteLaplace:
        """The discrete Laplace mechanism that is exactly ``epsilon``-DP."""
        return cls(1 / _positive_fraction("epsilon", epsilon), sensitivity, rng)

    @property
    def epsilon(self) -> float:
        return float(1 / self.scale)

    def sample(self, size: int, *, rng: RNG = None) -> np.ndarray:
        src = self._source(rng)
        s = self.scale * self.sensitivity
        return np.array([_sample_discrete_laplace(src, s) for _ in range(size)], dtype=np.int64)

    def release(self, value, *, lower=None, upper=None, sensitivity=None, rng: RNG = None):
        """Clamp the integer ``value`` (scalar or array) to [lower, upper], add exact noise.

        A different integer ``sensitivity`` may be given per release: the discrete Laplace on the
        unit lattice is already the worst case of every epsilon-DP mechanism, so the cost holds.
        """
        vals, shape, scalar = _int_clamp(value, lower, upper)
        sens = self.sensitivity if sensitivity is None else _positive_int("sensitivity", sensitivity)
        src = self._source(rng)
        s = self.scale * sens
        out = [v + _sample_discrete_laplace(src, s) for v in vals]
        return out[0] if scalar else np.array(out, dtype=np.int64).reshape(shape)

    def cost(self) -> MechanismCost:
        return MechanismCost("discrete_laplace", float(self.scale))


@dataclass(frozen=True)
class DiscreteGaussian(_Mechanism):
    """Discrete Gaussian for integer queries: P[x] ~ exp(-x^2 / (2 (sigma*sens)^2)).

    Sampled exactly (CKS 2020, Algorithm 3). Its (epsilon, delta) curve depends on the integer
    ``sensitivity`` (the lattice step), so that is part of its :meth:`cost` and a release must use
    the declared sensitivity.

    >>> DiscreteGaussian(sigma=3, rng=random.Random(1)).release(100)
    104
    """

    sigma: Fraction
    sensitivity: int = 1
    rng: RNG = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "sigma", _positive_fraction("sigma", self.sigma))
        object.__setattr__(self, "sensitivity", _positive_int("sensitivity", self.sensitivity))

    def sample(self, size: int, *, rng: RNG = None) -> np.ndarray:
        src = self._source(rng)
        s2 = (self.sigma * self.sensitivity) ** 2
        return np.array([_sample_discrete_gaussian(src, s2) for _ in range(size)], dtype=np.int64)

    def release(self, value, *, lower=None, upper=None, sensitivity=None, rng: RNG = None):
        """Clamp the integer ``value`` (scalar or array) to [lower, upper], add exact noise."""
        if sensitivity is not None and sensitivity != self.sensitivity:
            raise _bad("sensitivity", f"a discrete Gaussian's cost depends on its sensitivity; "
                       f"declare sensitivity={sensitivity!r} on the mechanism (it has "
                       f"{self.sensitivity})")
        vals, shape, scalar = _int_clamp(value, lower, upper)
        src = self._source(rng)
        s2 = (self.sigma * self.sensitivity) ** 2
        out = [v + _sample_discrete_gaussian(src, s2) for v in vals]
        return out[0] if scalar else np.array(out, dtype=np.int64).reshape(shape)

    def cost(self) -> MechanismCost:
        return MechanismCost("discrete_gaussian", float(self.sigma), 1.0, self.sensitivity)


# --------------------------------------------------------------------------------------------
# High-level helpers (used by the spend ledger): each returns the answer and what it cost.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DPRelease:
    """A noisy answer with the mechanisms that produced it.

    Attributes:
        value: the noisy answer (int, float, array or dict, by query).
        mechanisms: the mechanisms applied, each once; compose them all into an accountant.
        epsilon: total pure-DP epsilon of this release (delta = 0).
        query: ``count``, ``sum``, ``mean`` or ``histogram``.
        params: the declared bounds, sensitivities and budget split, for the ledger.
    """

    value: Any
    mechanisms: tuple
    epsilon: float
    query: str
    params: dict

    def costs(self) -> tuple[MechanismCost, ...]:
        return tuple(m.cost() for m in self.mechanisms)


def _eps(epsilon: Any) -> float:
    return _positive("epsilon", epsilon)


def dp_count(n: int, epsilon: float, *, rng: RNG = None) -> DPRelease:
    """epsilon-DP count of privacy units (sensitivity 1) with exact discrete Laplace noise.

    The answer may be negative; clip it yourself if you must (post-processing is free).

    >>> r = dp_count(120, 1.0, rng=random.Random(3))
    >>> r.value, r.mechanisms[0].scale
    (120, Fraction(1, 1))
    """
    if isinstance(n, bool) or not isinstance(n, (Integral, np.integer)) or n < 0:
        raise _bad("n", f"must be a non-negative integer; got {n!r}")
    m = DiscreteLaplace.calibrate(_eps(epsilon), rng=rng)
    return DPRelease(m.release(int(n)), (m,), float(epsilon), "count", {"sensitivity": 1})


def _values_1d(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise _bad("values", "must be a 1-D sequence of real numbers, one per privacy unit")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise _bad("values", "must be finite (drop or impute NaN/inf before a DP release)")
    return arr


def _is_int(x: Any) -> bool:
    return isinstance(x, (Integral, np.integer)) and not isinstance(x, bool)


def dp_sum(values: Sequence[float], lower: float, upper: float, epsilon: float, *,
           rng: RNG = None) -> DPRelease:
    """epsilon-DP sum of ``values`` (one per privacy unit), each clamped to [lower, upper].

    Under add/remove-one the sum moves by at most ``max(|lower|, |upper|)``: that is the
    sensitivity. Integer values with integer bounds use the exact discrete Laplace; otherwise
    continuous Laplace.

    >>> dp_sum([1, 2, 3], 0, 5, 1.0, rng=random.Random(0)).value
    3
    """
    arr = _values_1d(values)
    if lower > upper:
        raise _bad("lower", f"lower bound {lower!r} exceeds upper bound {upper!r}")
    sens = max(abs(lower), abs(upper))
    if sens == 0:
        raise _bad("upper", "bounds [0, 0] make the sum constant; nothing to release")
    arr = np.clip(arr, lower, upper)
    eps = _eps(epsilon)
    if arr.dtype.kind in "iu" and _is_int(lower) and _is_int(upper):
        m = DiscreteLaplace.calibrate(eps, int(sens), rng=rng)
        value = m.release(int(arr.sum()))
    else:
        m = Laplace.calibrate(eps, float(sens), rng=rng)
        value = m.release(float(arr.sum()))
    return DPRelease(value, (m,), eps, "sum",
                     {"lower": lower, "upper": upper, "sensitivity": sens})


def dp_mean(values: Sequence[float], lower: float, upper: float, epsilon: float, *,
            rng: RNG = None) -> DPRelease:
    """epsilon-DP mean of ``values`` (one per privacy unit) clamped to [lower, upper].

    Budget split: epsilon/2 for a noisy *centred* sum (values minus the midpoint, sensitivity
    (upper-lower)/2 — half the noise of an uncentred sum for symmetric ranges) with Laplace, and
    epsilon/2 for a noisy count with discrete Laplace. The answer is
    ``midpoint + sum/max(count, 1)`` clamped to [lower, upper] (post-processing, free).

    >>> r = dp_mean([0.2, 0.4, 0.9] * 100, 0.0, 1.0, 1.0, rng=np.random.default_rng(0))
    >>> round(r.value, 2), r.params["split"]
    (0.5, {'sum': 0.5, 'count': 0.5})
    """
    arr = _values_1d(values).astype(np.float64)
    if not lower < upper:
        raise _bad("lower", f"need lower < upper; got [{lower!r}, {upper!r}]")
    eps = _eps(epsilon)
    mid, half = (lower + upper) / 2.0, (upper - lower) / 2.0
    centred = np.clip(arr, lower, upper) - mid
    ms = Laplace.calibrate(eps / 2, half, rng=rng)
    mc = DiscreteLaplace.calibrate(Fraction(eps) / 2, rng=rng)
    s = ms.release(float(centred.sum()))
    c = mc.release(int(arr.size))
    value = float(min(max(mid + s / max(c, 1), lower), upper))
    return DPRelease(value, (ms, mc), eps, "mean",
                     {"lower": lower, "upper": upper, "split": {"sum": 0.5, "count": 0.5},
                      "sensitivity": {"centred_sum": half, "count": 1}})


def dp_histogram(counts: Mapping[Any, int] | Sequence[int], epsilon: float, *,
                 rng: RNG = None) -> DPRelease:
    """epsilon-DP histogram: exact discrete Laplace of scale 1/epsilon on every bin.

    Assumes each privacy unit falls in at most one bin (e.g. an annotator's majority label), so
    adding or removing one changes one bin by 1: L1 sensitivity 1, and the whole histogram costs
    epsilon once, whatever the number of bins. Bins must be declared in advance (include empty
    ones): a data-dependent set of bins would leak.

    >>> dp_histogram({"a": 10, "b": 0}, 1.0, rng=random.Random(0)).value
    {'a': 10, 'b': 3}
    """
    eps = _eps(epsilon)
    m = DiscreteLaplace.calibrate(eps, rng=rng)
    if isinstance(counts, Mapping):
        keys = list(counts)
        noisy = m.release(np.asarray([counts[k] for k in keys], dtype=np.int64).reshape(-1))
        value: Any = {k: int(v) for k, v in zip(keys, noisy)}
    else:
        arr, _ = _int_array(counts, "counts")
        if arr.ndim != 1:
            raise _bad("counts", "must be 1-D")
        value = m.release(arr)
    return DPRelease(value, (m,), eps, "histogram", {"sensitivity": 1, "bins": len(value)})
