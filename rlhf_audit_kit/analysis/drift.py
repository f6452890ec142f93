"""Distribution drift of model scores (reward scores, lengths, ...) between a reference and now.

Every two-sample function takes the reference sample first and the current sample second,
as numpy arrays, polars Series or lists of numbers. Empty samples and NaN, null or infinite
values raise ``ValueError`` (drift on silently dropped values would be misleading).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref, cur = rng.normal(0, 1, 5000), rng.normal(0.5, 1, 5000)
>>> round(psi(ref, ref), 6), psi(ref, cur) > 0.1
(0.0, True)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

__all__ = ["drift_table", "js_distance", "ks", "psi", "psi_edges", "wasserstein"]

#: Floor applied to bin proportions in :func:`psi` so empty bins give a finite log ratio.
PSI_FLOOR = 1e-6

ArrayLike = np.ndarray | pl.Series | Sequence[float]


def _sample(x: Any, name: str) -> np.ndarray:
    """A finite, non-empty 1-D float64 array, or a ValueError naming the argument."""
    if isinstance(x, pl.Series):
        if x.null_count():
            raise ValueError(f"{name} contains null values")
        if not (x.dtype.is_numeric() or x.dtype == pl.Boolean):
            raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
        arr = x.cast(pl.Float64).to_numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a sequence of numbers: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN values")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains infinite values")
    return arr


def psi_edges(reference: ArrayLike, bins: int = 10) -> np.ndarray:
    """Inner bin edges of :func:`psi`: the reference quantiles ``k / bins``, ``k = 1..bins-1``.

    Quantiles use numpy's default linear interpolation. Ties in the reference can repeat an
    edge; the empty bins in between then contribute nothing to PSI.

    Examples
    --------
    >>> psi_edges([1, 2, 3, 4, 5], bins=4)
    array([2., 3., 4.])
    """
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    ref = _sample(reference, "reference")
    return np.quantile(ref, np.arange(1, bins) / bins)


def _psi_from_edges(ref: np.ndarray, cur: np.ndarray, edges: np.ndarray) -> float:
    # side="left" puts x == edge in the bin that edge closes: bins are right-closed.
    nb = len(edges) + 1
    e = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=nb) / ref.size
    a = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=nb) / cur.size
    e, a = np.maximum(e, PSI_FLOOR), np.maximum(a, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: ArrayLike, current: ArrayLike, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``.

    Binning rule (fixed, so values are comparable across runs and tools):

    1. inner edges ``q_k`` = quantile of the *reference* at ``k / bins``, ``k = 1..bins-1``
       (deciles for ``bins=10``), with numpy's default linear interpolation;
    2. right-closed bins ``(-inf, q_1], (q_1, q_2], ..., (q_{bins-1}, +inf)``;
    3. proportions ``e`` (reference) and ``a`` (current) per bin, each floored at ``1e-6``
       (no renormalisation);
    4. ``PSI = sum (a - e) * ln(a / e)``.

    Common reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.

    Parameters
    ----------
    reference, current
        Samples (numpy array, polars Series or list); finite values only.
    bins
        Number of quantile bins.

    Returns
    -------
    float
        PSI >= 0 (0 when both samples fill the bins in the same proportions).

    Examples
    --------
    >>> round(psi([1, 2, 3, 4], [1, 2, 3, 4], bins=2), 6)
    0.0
    >>> round(psi([1, 2, 3, 4], [1, 1, 1, 4], bins=2), 4)  # a = (.75, .25), e = (.5, .5)
    0.2747
    """
    ref = _sample(reference, "reference")
    cur = _sample(current, "current")
    return _psi_from_edges(ref, cur, psi_edges(ref, bins))


def ks(reference: ArrayLike, current: ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: ``(statistic, p_value)``.

    Exactly ``scipy.stats.ks_2samp(reference, current)`` (two-sided, ``method="auto"``: the
    exact distribution for small samples, the asymptotic one otherwise).

    Examples
    --------
    >>> stat, p = ks([1, 2, 3, 4], [5, 6, 7, 8])
    >>> stat, round(p, 4)
    (1.0, 0.0286)
    """
    ref = _sample(reference, "reference")
    cur = _sample(current, "current")
    res = stats.ks_2samp(ref, cur)
    return float(res.statistic), float(res.pvalue)


def _js_from_edges(ref: np.ndarray, cur: np.ndarray, edges: np.ndarray) -> float:
    lo, hi = edges[0], edges[-1]
    p = np.histogram(np.clip(ref, lo, hi), bins=edges)[0].astype(np.float64)
    q = np.histogram(np.clip(cur, lo, hi), bins=edges)[0].astype(np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0
    # x * ln(x / m) with 0 * ln(0) = 0 (scipy.special.rel_entr); m > 0 wherever p or q is.
    left = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
    right = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
    return float(np.sqrt(max(float(left.sum() + right.sum()) / 2.0, 0.0)))


def _edges(edges: Any) -> np.ndarray:
    arr = _sample(edges, "edges")
    if arr.size < 2:
        raise ValueError(f"edges needs at least 2 values, got {arr.size}")
    if np.any(np.diff(arr) < 0):
        raise ValueError("edges must be non-decreasing")
    return arr


def js_distance(reference: ArrayLike, current: ArrayLike, edges: ArrayLike) -> float:
    """Jensen-Shannon distance between the histograms of two samples over ``edges``.

    Values are clipped to ``[edges[0], edges[-1]]`` and counted with ``numpy.histogram`` (bins
    ``[e_i, e_{i+1})``, the last one closed); each histogram is normalised to sum to 1. The
    distance is ``sqrt(JS divergence)`` with natural logarithms, in ``[0, sqrt(ln 2)]``: the same
    as ``scipy.spatial.distance.jensenshannon(p, q)`` on those histograms.

    Examples
    --------
    >>> round(js_distance([0.1, 0.2], [0.8, 0.9], edges=[0, 0.5, 1]), 6)  # disjoint: sqrt(ln 2)
    0.832555
    """
    return _js_from_edges(_sample(reference, "reference"), _sample(current, "current"),
                          _edges(edges))


def wasserstein(reference: ArrayLike, current: ArrayLike) -> float:
    """First Wasserstein (earth mover's) distance between two 1-D samples.

    The integral of ``|F_ref(x) - F_cur(x)|`` over x, computed exactly from the empirical CDFs
    on the merged sorted sample; equals ``scipy.stats.wasserstein_distance``. It is in the
    units of the values (a shift of every score by ``c`` gives ``|c|``).

    Examples
    --------
    >>> wasserstein([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    1.0
    """
    u = np.sort(_sample(reference, "reference"))
    v = np.sort(_sample(current, "current"))
    grid = np.sort(np.concatenate((u, v)), kind="mergesort")
    # Both CDFs are constant on each [grid_i, grid_{i+1}); integrate the gap piecewise.
    u_cdf = np.searchsorted(u, grid[:-1], side="right") / u.size
    v_cdf = np.searchsorted(v, grid[:-1], side="right") / v.size
    return float(np.dot(np.abs(u_cdf - v_cdf), np.diff(grid)))


def drift_table(scores: pl.DataFrame, *, group: str = "step", value: str = "score",
                reference: Any = None, bins: int = 10) -> pl.DataFrame:
    """Drift of every group (e.g. checkpoint step) against a reference group.

    Parameters
    ----------
    scores
        Long table with a group column and a numeric value column.
    group
        Group column (e.g. ``"step"`` or ``"checkpoint"``).
    value
        Value column (e.g. ``"score"``).
    reference
        Group key of the reference; default the smallest key (the earliest step).
    bins
        Quantile bins for PSI (see :func:`psi`).

    Returns
    -------
    pl.DataFrame
        One row per group, sorted by the group key, the reference row included (all drift
        measures 0, p-value 1). Columns:

        - ``<group>`` (the group column, its dtype and name kept): the group key;
        - ``n`` (Int64): number of values; ``mean`` (Float64): their mean;
        - ``psi`` (Float64): :func:`psi` with the reference's quantile edges;
        - ``ks_stat``, ``ks_pvalue`` (Float64): :func:`ks`;
        - ``js_distance`` (Float64): :func:`js_distance` over the edges ``min(ref)``, the
          reference deciles (quantiles ``k / bins``), ``max(ref)``, duplicates removed (values
          outside the reference range fall in the outer bins; a constant reference gives a
          single bin, hence 0);
        - ``wasserstein`` (Float64): :func:`wasserstein`, in the units of ``value``.

    Raises
    ------
    ValueError
        A missing column, a null group key, a null/NaN/infinite value, or an unknown reference.

    Examples
    --------
    >>> import polars as pl
    >>> scores = pl.DataFrame({"step": [0] * 4 + [100] * 4,
    ...                        "score": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]})
    >>> drift_table(scores, bins=2).select("step", "n", "mean", "ks_stat", "wasserstein")
    shape: (2, 5)
    ┌──────┬─────┬──────┬─────────┬─────────────┐
    │ step ┆ n   ┆ mean ┆ ks_stat ┆ wasserstein │
    │ ---  ┆ --- ┆ ---  ┆ ---     ┆ ---         │
    │ i64  ┆ i64 ┆ f64  ┆ f64     ┆ f64         │
    ╞══════╪═════╪══════╪═════════╪═════════════╡
    │ 0    ┆ 4   ┆ 0.25 ┆ 0.0     ┆ 0.0         │
    │ 100  ┆ 4   ┆ 0.65 ┆ 1.0     ┆ 0.4         │
    └──────┴─────┴──────┴─────────┴─────────────┘
    """
    if isinstance(scores, pl.LazyFrame):
        scores = scores.collect()
    if not isinstance(scores, pl.DataFrame):
        raise TypeError(f"scores must be a polars DataFrame, got {type(scores).__name__}")
    for role, col in (("group", group), ("value", value)):
        if col not in scores.columns:
            raise ValueError(f"scores has no {role} column {col!r} (columns: {scores.columns})")
    if scores[group].null_count():
        raise ValueError(f"column {group!r} contains null values")
    if scores.height == 0:
        raise ValueError("scores is empty")
    # Validates the whole value column once (null, NaN, inf, dtype) with the column's name.
    values = _sample(scores[value], f"column {value!r}")
    keys = scores[group].unique().sort()
    ref_key = keys[0] if reference is None else reference
    if reference is not None and not keys.is_in(pl.Series([reference])).any():
        raise ValueError(f"reference {reference!r} is not a value of column {group!r}")
    gidx = (scores[group].rank("dense") - 1).cast(pl.Int64).to_numpy()
    order = np.argsort(gidx, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(gidx, minlength=len(keys)))))
    groups = [values[order[bounds[i]:bounds[i + 1]]] for i in range(len(keys))]
    ref = groups[keys.to_list().index(ref_key)]

    psi_cut = psi_edges(ref, bins)
    js_cut = np.unique(np.concatenate(([ref.min()], psi_cut, [ref.max()])))
    if js_cut.size == 1:  # constant reference: one zero-width bin holding everything
        js_cut = np.repeat(js_cut, 2)
    rows = []
    for cur in groups:  # one iteration per group; each measure is vectorised over its values
        ks_stat, ks_p = ks(ref, cur)
        rows.append((cur.size, float(cur.mean()), _psi_from_edges(ref, cur, psi_cut), ks_stat,
                     ks_p, _js_from_edges(ref, cur, js_cut), wasserstein(ref, cur)))
    cols = list(zip(*rows))
    return pl.DataFrame({
        group: keys,
        "n": pl.Series(cols[0], dtype=pl.Int64),
        **{name: pl.Series(c, dtype=pl.Float64) for name, c in zip(
            ("mean", "psi", "ks_stat", "ks_pvalue", "js_distance", "wasserstein"), cols[1:])},
    })
