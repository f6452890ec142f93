"""Online change detection on training metrics (reward mean, KL, loss, ... per step).

Both detectors are the usual sequential recursions, evaluated in vectorised chunks: within a
chunk the running sums, running minima and the CUSUM (Lindley) recursion
``S_t = max(0, S_{t-1} + y_t) = Y_t - min(-S_0, min_{j<=t} Y_j)`` are cumulative numpy
operations; a chunk is cut short at an alert, the state is reset and the scan resumes after
it. A 100k-step series takes a few milliseconds (plus ~25 us per alert).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = np.r_[rng.normal(0, 1, 1000), rng.normal(2, 1, 1000)]   # shift at index 1000
>>> cusum(x, k=0.5, h=10)
[1007]
>>> page_hinkley(x, delta=0.5, threshold=25)
[1017]
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl

__all__ = ["changepoints", "cusum", "page_hinkley"]

Direction = Literal["up", "down", "both"]
# Values scanned per vectorised step: start small and double while no alert fires, so the work
# thrown away after an alert stays proportional to the distance between alerts.
_MIN_CHUNK, _MAX_CHUNK = 256, 1 << 16


def _series(values: Any, name: str = "values") -> np.ndarray:
    if isinstance(values, pl.Series):
        if values.null_count():
            raise ValueError(f"{name} contains null values")
        values = values.cast(pl.Float64).to_numpy()
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers: {exc}") from exc
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_direction(direction: str) -> None:
    if direction not in ("up", "down", "both"):
        raise ValueError(f"direction must be 'up', 'down' or 'both', got {direction!r}")


def page_hinkley(values: Any, *, delta: float = 0.005, threshold: float = 50.0,
                 direction: Direction = "both", min_instances: int = 30) -> list[int]:
    """Page-Hinkley test for a change in the mean; returns the indices where alerts fire.

    Since the last reset, with ``xbar_t`` the running mean of the values so far (``x_t``
    included):

    - up:   ``U_t = sum_{i<=t} (x_i - xbar_i - delta)``, alert when ``U_t - min_{j<=t} U_j > threshold``
    - down: ``D_t = sum_{i<=t} (x_i - xbar_i + delta)``, alert when ``max_{j<=t} D_j - D_t > threshold``

    (minimum/maximum taken with ``U_0 = D_0 = 0``; this is the online form used by river and
    scikit-multiflow, without fading). No alert fires before ``min_instances`` values since the
    last reset. After an alert every sum restarts at the next value.

    ``delta`` and ``threshold`` are in the units of the metric. ``delta`` is the magnitude of
    change tolerated (about half the smallest shift worth detecting); a shift of size ``s``
    is detected after roughly ``threshold / (s - delta)`` steps. False alarms: on stationary
    noise of standard deviation ``sigma`` the statistic is a reflected random walk, whose tail
    behaves like ``exp(-2 * delta * threshold / sigma**2)``; keep ``delta * threshold`` at
    several ``sigma**2`` (e.g. ``delta = 0.5 sigma``, ``threshold = 25 sigma`` gives no alert
    in 10^5 stationary steps in practice). The defaults (river's) suit metrics with small noise
    only; standardise the metric or use :func:`cusum` otherwise.

    Parameters
    ----------
    values
        The metric series in step order (numpy array, polars Series or list); finite values.
    delta
        Tolerated change magnitude (>= 0).
    threshold
        Alert threshold (> 0).
    direction
        ``"up"`` (increase of the mean), ``"down"`` or ``"both"``.
    min_instances
        Values needed after a reset before an alert may fire.

    Returns
    -------
    list[int]
        0-based indices of the values at which alerts fire, increasing.

    Examples
    --------
    >>> page_hinkley([0.0] * 50 + [1.0] * 50, delta=0.1, threshold=5)
    [55]
    """
    x = _series(values)
    _check_direction(direction)
    if delta < 0 or threshold <= 0:
        raise ValueError(f"need delta >= 0 and threshold > 0, got delta={delta}, threshold={threshold}")
    up, down = direction in ("up", "both"), direction in ("down", "both")
    alerts: list[int] = []
    start, n = 0, x.size
    # State since the last reset: count, sum of x, U, min U, D, max D.
    cnt, sx, u, u_min, d, d_max = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    size = _MIN_CHUNK
    while start < n:
        chunk = x[start:start + size]
        c = cnt + np.arange(1, chunk.size + 1)
        dev = chunk - (sx + np.cumsum(chunk)) / c
        uu = u + np.cumsum(dev - delta)
        dd = d + np.cumsum(dev + delta)
        uu_min = np.minimum(u_min, np.minimum.accumulate(uu))
        dd_max = np.maximum(d_max, np.maximum.accumulate(dd))
        fire = np.zeros(chunk.size, dtype=bool)
        if up:
            fire |= uu - uu_min > threshold
        if down:
            fire |= dd_max - dd > threshold
        fire &= c >= min_instances
        if fire.any():
            i = int(np.argmax(fire))
            alerts.append(start + i)
            start += i + 1
            cnt, sx, u, u_min, d, d_max = 0, 0.0, 0.0, 0.0, 0.0, 0.0
            size = _MIN_CHUNK
        else:
            cnt, sx = int(c[-1]), sx + float(chunk.sum())
            u, u_min, d, d_max = float(uu[-1]), float(uu_min[-1]), float(dd[-1]), float(dd_max[-1])
            start += chunk.size
            size = min(2 * size, _MAX_CHUNK)
    return alerts


def _warm(x: np.ndarray, start: int, warmup: int, mean: float | None, std: float | None,
          prev_std: float | None) -> tuple[float, float, int] | None:
    """In-control (mean, std) for a scan starting at ``start`` and the index monitoring resumes at."""
    if mean is not None and std is not None:
        return mean, std, start
    if start + warmup > x.size:
        return None  # too few values left to estimate a reference: stop monitoring
    window = x[start:start + warmup]
    mu = float(window.mean()) if mean is None else mean
    sd = float(window.std(ddof=1)) if std is None else std
    if sd <= 0:
        if prev_std is None:
            raise ValueError(f"the warm-up window values[{start}:{start + warmup}] has zero "
                             "variance; pass std= (the in-control standard deviation)")
        sd = prev_std  # a flat re-warm-up window (e.g. a collapsed metric): keep the last scale
    return mu, sd, start + warmup


def cusum(values: Any, *, k: float = 0.5, h: float = 5.0, warmup: int = 50,
          mean: float | None = None, std: float | None = None, rewarm: bool = True,
          direction: Direction = "both") -> list[int]:
    """Two-sided tabular CUSUM on standardised values; returns the indices where alerts fire.

    The first ``warmup`` values are the in-control reference: their mean and standard
    deviation (``ddof=1``) standardise the rest, ``z_t = (x_t - mean) / std`` (pass ``mean=``
    and/or ``std=`` to fix them instead; with both given no warm-up is used). Then

    ``S+_t = max(0, S+_{t-1} + z_t - k)``, ``S-_t = max(0, S-_{t-1} - z_t - k)``

    and an alert fires when ``S+_t > h`` (up) or ``S-_t > h`` (down). After an alert both sums
    restart at 0; with ``rewarm=True`` (default) the next ``warmup`` values also become the
    new reference, so a persistent shift alerts once rather than every ``~h / (shift - k)``
    steps. Warm-up values are never alerted on.

    ``k`` is half the shift to detect in standard deviations (0.5: a 1-sigma shift). False
    alarms on in-control Gaussian data: the two-sided in-control average run length ARL0
    (Siegmund's approximation) with ``k = 0.5`` is about 170 steps for ``h = 4``, 470 for
    ``h = 5``, 10^4 for ``h = 8``, 7 * 10^4 for ``h = 10`` and 5 * 10^5 for ``h = 12``; a
    1-sigma shift is then detected after about 8, 10, 16, 20 and 24 steps. Choose ``h`` so
    that ARL0 is well above the series length: the textbook ``h = 5`` raises a false alert
    every few hundred steps. These ARLs
    assume a known mean/std; estimates from a short warm-up lower them, so use a warm-up of a
    few hundred values (or ``mean=``/``std=``) on long series.

    Parameters
    ----------
    values
        The metric series in step order; finite values.
    k
        Reference value (allowance), in standard deviations (>= 0).
    h
        Decision interval, in standard deviations (> 0).
    warmup
        Number of values used to estimate the in-control mean/std (>= 2 when ``std`` is not
        given).
    mean, std
        Known in-control mean and standard deviation; override the warm-up estimates.
    rewarm
        Re-estimate the reference from the ``warmup`` values following each alert.
    direction
        ``"up"``, ``"down"`` or ``"both"`` (two-sided).

    Returns
    -------
    list[int]
        0-based indices of the values at which alerts fire, increasing.

    Raises
    ------
    ValueError
        Non-finite values, bad parameters, or a zero-variance first warm-up window.

    Examples
    --------
    >>> cusum([0.0, 1.0] * 25 + [3.0] * 10, warmup=50, h=5)
    [51]
    """
    x = _series(values)
    _check_direction(direction)
    if k < 0 or h <= 0:
        raise ValueError(f"need k >= 0 and h > 0, got k={k}, h={h}")
    if std is not None and std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    least = 0 if mean is not None and std is not None else (2 if std is None else 1)
    if not isinstance(warmup, (int, np.integer)) or warmup < least:
        raise ValueError(f"warmup must be an integer >= {least} here, got {warmup!r}")
    up, down = direction in ("up", "both"), direction in ("down", "both")
    alerts: list[int] = []
    ref = _warm(x, 0, warmup, mean, std, None)
    if ref is None:
        return alerts
    mu, sd, start = ref
    s_up = s_dn = 0.0
    size = _MIN_CHUNK
    while start < x.size:
        z = (x[start:start + size] - mu) / sd
        # Lindley recursion in closed form: S_t = Y_t - min(-S_0, min_{j<=t} Y_j).
        yu, yd = np.cumsum(z - k), np.cumsum(-z - k)
        su = yu - np.minimum(-s_up, np.minimum.accumulate(yu))
        sdn = yd - np.minimum(-s_dn, np.minimum.accumulate(yd))
        fire = np.zeros(z.size, dtype=bool)
        if up:
            fire |= su > h
        if down:
            fire |= sdn > h
        if fire.any():
            i = int(np.argmax(fire))
            alerts.append(start + i)
            start += i + 1
            s_up = s_dn = 0.0
            size = _MIN_CHUNK
            if rewarm:
                ref = _warm(x, start, warmup, mean, std, sd)
                if ref is None:
                    break
                mu, sd, start = ref
        else:
            s_up, s_dn = float(su[-1]), float(sdn[-1])
            start += z.size
            size = min(2 * size, _MAX_CHUNK)
    return alerts


def changepoints(frame: pl.DataFrame, *, step: str = "step", metric: str,
                 method: Literal["page_hinkley", "cusum"] = "page_hinkley", **kw: Any
                 ) -> pl.DataFrame:
    """Alert steps of a change detector run over one metric column of a per-step frame.

    Parameters
    ----------
    frame
        One row per step (e.g. the ``train_steps`` table), any row order.
    step
        Step column; sorted on before detection, must be unique.
    metric
        Metric column (e.g. ``"reward_mean"``, ``"kl"``).
    method
        ``"page_hinkley"`` or ``"cusum"``.
    **kw
        Keyword arguments of :func:`page_hinkley` or :func:`cusum`.

    Returns
    -------
    pl.DataFrame
        One row per alert, in step order, with the columns ``<step>`` and ``<metric>`` (names
        and dtypes kept): the step at which the alert fired and the metric value there.

    Raises
    ------
    ValueError
        Missing columns, null steps, duplicated steps, null/NaN metric values, unknown method.

    Examples
    --------
    >>> import polars as pl
    >>> frame = pl.DataFrame({"step": range(0, 200, 2), "kl": [0.0] * 50 + [1.0] * 50})
    >>> changepoints(frame, metric="kl", delta=0.1, threshold=5)
    shape: (1, 2)
    ┌──────┬─────┐
    │ step ┆ kl  │
    │ ---  ┆ --- │
    │ i64  ┆ f64 │
    ╞══════╪═════╡
    │ 110  ┆ 1.0 │
    └──────┴─────┘
    """
    if isinstance(frame, pl.LazyFrame):
        frame = frame.collect()
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"frame must be a polars DataFrame, got {type(frame).__name__}")
    for role, col in (("step", step), ("metric", metric)):
        if col not in frame.columns:
            raise ValueError(f"frame has no {role} column {col!r} (columns: {frame.columns})")
    detectors = {"page_hinkley": page_hinkley, "cusum": cusum}
    if method not in detectors:
        raise ValueError(f"method must be one of {sorted(detectors)}, got {method!r}")
    if frame[step].null_count():
        raise ValueError(f"column {step!r} contains null values")
    if frame[step].is_duplicated().any():
        raise ValueError(f"column {step!r} has duplicated steps; aggregate to one row per step")
    ordered = frame.select(step, metric).sort(step)
    if not ordered[metric].dtype.is_numeric():
        raise ValueError(f"column {metric!r} must be numeric, got {ordered[metric].dtype}")
    idx = detectors[method](_series(ordered[metric], f"column {metric!r}"), **kw)
    return ordered[idx] if idx else ordered.clear()
