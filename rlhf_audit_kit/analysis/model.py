"""Model-side analysis: reward drift, training trends, change points and reward hacking.

Every function takes a *source*: an :class:`~rlhf_audit_kit.store.AuditStore`, a snapshot
bundle (anything with the store's ``sql(query, params)`` read API) or its folder or fsspec URL
(with ``storage_options=``, opened for the call), a polars DataFrame of the
kind the function reads (``reward_score`` for :func:`reward_drift`, ``train_step`` for
:func:`training_trends`), or a mapping ``{kind: DataFrame}`` such as
:meth:`rlhf_audit_kit.demo.Campaign.frames` (needed by :func:`reward_hacking`, which reads
several kinds). Frames are queried through a private in-memory DuckDB, so every source runs
the same SQL and only aggregates or the needed columns come back.

Training metrics may be stored as a DuckDB ``MAP`` (the store) or as a list of ``{key,
value}`` structs (polars frames, Parquet written by polars): both are read.

Examples
--------
>>> from rlhf_audit_kit import demo
>>> frames = demo.Campaign(20_000, seed=0).frames()
>>> hack = reward_hacking(frames)
>>> int(hack["hacking_start_step"][0])
280
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import polars as pl
from scipy import stats

from ._source import reads_source
from .changepoint import changepoints
from .drift import drift_table

__all__ = ["DEFAULT_TREND_METRICS", "metric_changepoints", "reward_drift", "reward_hacking",
           "training_trends"]

#: Metrics :func:`training_trends` returns by default (TRL names; absent ones are skipped).
DEFAULT_TREND_METRICS: tuple[str, ...] = (
    "objective/kl", "objective/rlhf_reward", "objective/scores", "objective/entropy",
    "objective/non_score_reward", "policy/approxkl_avg", "policy/clipfrac_avg",
    "loss/policy_avg", "loss/value_avg",
)


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
class _FrameSQL:
    """The store's ``sql`` read API over polars frames registered under their kind names."""

    def __init__(self, frames: Mapping[str, pl.DataFrame | pl.LazyFrame]):
        import duckdb

        self._con = duckdb.connect()
        self._con.execute("SET TimeZone = 'UTC'")
        self.kinds = set()
        for kind, frame in frames.items():
            if isinstance(frame, pl.LazyFrame):
                frame = frame.collect()
            self._con.register(kind, frame)
            self.kinds.add(kind)

    def sql(self, query: str, params: Any = None) -> pl.DataFrame:
        return self._con.sql(query, params=params).pl()


def _sql_source(source: Any, kind: str | None = None) -> Any:
    if hasattr(source, "sql") and not isinstance(source, (pl.DataFrame, pl.LazyFrame)):
        return source
    if isinstance(source, (pl.DataFrame, pl.LazyFrame)):
        if kind is None:
            raise TypeError("pass a store, a bundle or a {kind: DataFrame} mapping here")
        return _FrameSQL({kind: source})
    if isinstance(source, Mapping):
        return _FrameSQL(source)
    raise TypeError(f"source must be an AuditStore, a bundle (or its path or URL), a polars DataFrame or a "
                    f"mapping of kind -> DataFrame, got {type(source).__name__}")


def _try_sql(src: Any, query: str, params: Any = None) -> pl.DataFrame | None:
    """Run a query; None when the table (or a column) does not exist in this source."""
    try:
        return src.sql(query, params)
    except Exception as exc:  # noqa: BLE001 - DuckDB raises Catalog/Binder errors for absent kinds
        if any(w in str(exc) for w in ("does not exist", "not found", "Catalog Error", "Binder Error")):
            return None
        raise


def _train_long(src: Any, run_id: str | None, metrics: Sequence[str] | None) -> pl.DataFrame:
    """Training metrics in long form: run_id, step, metric, value (sorted by run and step)."""
    where, params = [], []
    if run_id is not None:
        where.append("run_id = ?")
        params.append(run_id)
    w = ("WHERE " + " AND ".join(where)) if where else ""
    keep, kparams = "", []
    if metrics is not None:
        keep = "WHERE list_contains(?::VARCHAR[], metric)"
        kparams = [list(metrics)]
    forms = (
        f"SELECT run_id, step, unnest(map_keys(metrics)) AS metric, "
        f"unnest(map_values(metrics)) AS value FROM train_step {w}",
        f"SELECT run_id, step, e.key AS metric, e.value AS value FROM "
        f"(SELECT run_id, step, unnest(metrics) AS e FROM train_step {w})",
    )
    last_exc: Exception | None = None
    for inner in forms:
        try:
            out = src.sql(f"SELECT run_id, step, metric, value::DOUBLE AS value FROM ({inner}) {keep} "
                          f"ORDER BY run_id, step", (params + kparams) or None)
            return out.with_columns(pl.col("step").cast(pl.Int64), pl.col("value").cast(pl.Float64))
        except Exception as exc:  # noqa: BLE001 - try the other map representation
            last_exc = exc
            if "does not exist" in str(exc) and "train_step" in str(exc):
                break
    if last_exc is not None and "does not exist" in str(last_exc):
        return pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "metric": pl.String,
                                    "value": pl.Float64})
    raise last_exc  # type: ignore[misc]


def _train_source(source: Any) -> Any:
    """A train_step source: long-form frames (metric/value columns) are registered as they are."""
    if isinstance(source, (pl.DataFrame, pl.LazyFrame)):
        lf = source.lazy() if isinstance(source, pl.DataFrame) else source
        cols = lf.collect_schema().names()
        if "metrics" not in cols and {"step", "metric", "value"} <= set(cols):
            df = lf.collect()
            if "run_id" not in cols:
                df = df.with_columns(run_id=pl.lit(None, pl.String))
            return _LongTrain(df)
        return _FrameSQL({"train_step": source})
    return _sql_source(source)


class _LongTrain:
    """A long metrics frame (run_id, step, metric, value) posing as a train_step source."""

    def __init__(self, df: pl.DataFrame):
        self.df = df


def _long_metrics(source: Any, run_id: str | None, metrics: Sequence[str] | None) -> pl.DataFrame:
    src = _train_source(source)
    if isinstance(src, _LongTrain):
        df = src.df.select("run_id", pl.col("step").cast(pl.Int64), "metric",
                           pl.col("value").cast(pl.Float64))
        if run_id is not None:
            df = df.filter(pl.col("run_id") == run_id)
        if metrics is not None:
            df = df.filter(pl.col("metric").is_in(list(metrics)))
        return df.sort("run_id", "step")
    return _train_long(src, run_id, metrics)


# --------------------------------------------------------------------------------------------
# reward drift, trends, change points
# --------------------------------------------------------------------------------------------
@reads_source
def reward_drift(source: Any, reference_step: int | None = None, *, run_id: str | None = None,
                 reward_model: str | None = None, bins: int = 10,
                 storage_options: dict[str, Any] | None = None) -> pl.DataFrame:
    """Drift of the reward-score distribution of every policy step against a reference step.

    Parameters
    ----------
    source
        Store, bundle, a bundle's folder or fsspec URL (opened for the call), ``reward_score``
        DataFrame or ``{kind: DataFrame}`` mapping.
    reference_step
        The step compared against; default the earliest step (the SFT policy).
    run_id, reward_model
        Only scores of this run / reward model (default: all).
    bins
        Quantile bins for PSI.
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        :func:`~rlhf_audit_kit.analysis.drift_table` over ``score`` grouped by ``step``: ``step``
        (Int64), ``n`` (Int64), ``mean``, ``psi``, ``ks_stat``, ``ks_pvalue``,
        ``js_distance``, ``wasserstein`` (Float64), plus ``length_mean`` (Float64): the mean
        ``response_length`` of the scored samples (null when not recorded).

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> rs = demo.Campaign(2_000, seed=0).frames(kinds=["reward_score"])["reward_score"]
    >>> d = reward_drift(rs)
    >>> d["psi"][0], d["mean"][-1] > d["mean"][0]
    (0.0, True)
    """
    src = _sql_source(source, "reward_score")
    where, params = ["score IS NOT NULL", "isfinite(score)"], []
    if run_id is not None:
        where.append("run_id = ?")
        params.append(run_id)
    if reward_model is not None:
        where.append("reward_model = ?")
        params.append(reward_model)
    scores = src.sql(f"SELECT coalesce(step, 0)::BIGINT AS step, score::DOUBLE AS score, "
                     f"response_length::DOUBLE AS response_length FROM reward_score "
                     f"WHERE {' AND '.join(where)}", params or None)
    if scores.height == 0:
        raise ValueError("no reward scores match (check run_id / reward_model)")
    table = drift_table(scores, group="step", value="score", reference=reference_step, bins=bins)
    lengths = scores.group_by("step").agg(length_mean=pl.col("response_length").mean())
    return table.join(lengths, on="step", how="left").sort("step")


@reads_source
def training_trends(source: Any, run_id: str | None = None,
                    metrics: Sequence[str] | None = DEFAULT_TREND_METRICS, *,
                    bin_steps: int | None = None, storage_options: dict[str, Any] | None = None) -> pl.DataFrame:
    """Training metrics as one wide row per step (and run).

    Parameters
    ----------
    source
        Store, bundle, a bundle's folder or URL, ``train_step`` DataFrame (maps as ``{key, value}`` lists), a long
        DataFrame with ``step``, ``metric``, ``value`` (and optionally ``run_id``) columns, or a
        ``{kind: DataFrame}`` mapping.
    run_id
        Only this run (default: every run, told apart by the ``run_id`` column).
    metrics
        Metric names to return (those absent are skipped); ``None`` for all.
    bin_steps
        Average the metrics over bins of this many steps (``step`` becomes the bin start), e.g.
        to plot a 100k-step run.
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        ``run_id`` (String), ``step`` (Int64), then one Float64 column per metric found, in the
        order requested; sorted by run and step.

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> ts = demo.Campaign(2_000, seed=0).frames(kinds=["train_step"])["train_step"]
    >>> training_trends(ts, metrics=["objective/kl", "objective/scores"]).columns
    ['run_id', 'step', 'objective/kl', 'objective/scores']
    """
    long = _long_metrics(source, run_id, metrics)
    if bin_steps is not None:
        if bin_steps < 1:
            raise ValueError(f"bin_steps must be >= 1, got {bin_steps}")
        long = (long.with_columns(step=(pl.col("step") // bin_steps) * bin_steps)
                .group_by("run_id", "step", "metric").agg(pl.col("value").mean()))
    if long.height == 0:
        return pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64})
    wide = long.pivot(on="metric", index=["run_id", "step"], values="value", aggregate_function="mean")
    present = [c for c in wide.columns if c not in ("run_id", "step")]
    order = [m for m in metrics if m in present] if metrics is not None else sorted(present)
    return wide.select("run_id", "step", *order).sort("run_id", "step", nulls_last=True)


@reads_source
def metric_changepoints(source: Any, metric: str = "objective/kl",
                        method: Literal["cusum", "page_hinkley"] = "cusum", *,
                        run_id: str | None = None, storage_options: dict[str, Any] | None = None,
                        **kw: Any) -> pl.DataFrame:
    """Change points of one training metric, per run (via :func:`~.changepoint.changepoints`).

    Defaults scale with the series (pass keywords of :func:`~.changepoint.cusum` or
    :func:`~.changepoint.page_hinkley` to override): CUSUM uses ``k=0.5``, ``h=10`` and a
    warm-up of a tenth of the series (20 to 1,000 steps); Page-Hinkley uses ``delta = 0.5 sd``
    and ``threshold = 25 sd``, with ``sd`` the standard deviation of that same warm-up.

    Parameters
    ----------
    source
        As :func:`training_trends`.
    metric
        Metric name, e.g. ``"objective/kl"``.
    method
        ``"cusum"`` or ``"page_hinkley"``.
    run_id
        Only this run (default: each run separately).
    **kw
        Detector keywords.
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        One row per alert: ``run_id`` (String), ``step`` (Int64), ``metric`` (String),
        ``value`` (Float64: the metric at the alert), ``method`` (String); sorted by run, step.

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> camp = demo.Campaign(20_000, seed=0)
    >>> cp = metric_changepoints(camp.frames(kinds=["train_step"])["train_step"], "objective/kl")
    >>> cp.filter(pl.col("step") > camp.ground_truth["first_hacking_step"]).height > 0
    True
    """
    long = _long_metrics(source, run_id, [metric])
    out = []
    for (rid,), part in long.group_by(["run_id"], maintain_order=True):
        series = part.group_by("step").agg(pl.col("value").mean()).sort("step").drop_nulls()
        series = series.filter(pl.col("value").is_finite())
        n = series.height
        if n < 3:
            continue
        warm = int(min(1000, max(20, n // 10)))
        opts = dict(kw)
        if method == "cusum":
            opts.setdefault("k", 0.5)
            opts.setdefault("h", 10.0)
            opts.setdefault("warmup", min(warm, max(2, n - 1)))
        elif method == "page_hinkley":
            sd = float(series["value"].head(warm).std() or 0.0) or float(series["value"].std() or 1.0)
            opts.setdefault("delta", 0.5 * sd)
            opts.setdefault("threshold", 25.0 * sd)
        alerts = changepoints(series.rename({"value": "v"}), step="step", metric="v", method=method, **opts)
        out.append(alerts.select(run_id=pl.lit(rid, pl.String), step=pl.col("step").cast(pl.Int64),
                                 metric=pl.lit(metric), value=pl.col("v").cast(pl.Float64),
                                 method=pl.lit(method)))
    if not out:
        return pl.DataFrame(schema={"run_id": pl.String, "step": pl.Int64, "metric": pl.String,
                                    "value": pl.Float64, "method": pl.String})
    return pl.concat(out).sort("run_id", "step", nulls_last=True)


# --------------------------------------------------------------------------------------------
# reward hacking
# --------------------------------------------------------------------------------------------
def _pick_run(src: Any, run_id: str | None) -> str | None:
    if run_id is not None:
        return run_id
    for q in ("SELECT run_id, count(*) AS n FROM reward_score WHERE run_id IS NOT NULL "
              "GROUP BY run_id ORDER BY n DESC, run_id LIMIT 1",
              "SELECT run_id, count(*) AS n FROM train_step GROUP BY run_id ORDER BY n DESC, run_id LIMIT 1"):
        got = _try_sql(src, q)
        if got is not None and got.height:
            return got["run_id"][0]
    return None


def _pick_baseline(src: Any, run_id: str | None, baseline: str | None) -> str | None:
    if baseline is not None:
        return baseline
    if run_id is not None:
        got = _try_sql(src, "SELECT base_model, count(*) AS n FROM checkpoint WHERE run_id = ? "
                            "AND base_model IS NOT NULL GROUP BY 1 ORDER BY n DESC LIMIT 1", [run_id])
        if got is not None and got.height:
            return got["base_model"][0]
    got = _try_sql(src, """
        SELECT m, count(*) AS n FROM (
            SELECT model_a AS m FROM annotation WHERE model_a <> model_b
            UNION ALL SELECT model_b FROM annotation WHERE model_a <> model_b)
        GROUP BY m ORDER BY n DESC, m LIMIT 1""")
    return got["m"][0] if got is not None and got.height else None


def _wilson(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    z = stats.norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z**2 / n
        mid = (p + z**2 / (2 * n)) / den
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return np.where(n > 0, mid - half, np.nan), np.where(n > 0, mid + half, np.nan)


def _window_change(values: np.ndarray, window: int) -> np.ndarray:
    """values[i] - values[i - window + 1] (NaN where the window is incomplete)."""
    out = np.full(values.shape, np.nan)
    lag = window - 1
    if lag >= 1 and values.size > lag:
        out[lag:] = values[lag:] - values[:-lag]
    return out


def _hinge_break(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> int | None:
    """Index of the breakpoint of the best continuous two-segment line with a falling second part."""
    best, best_sse = None, math.inf
    sw = np.sqrt(w)
    for k in range(1, x.size - 2):  # at least one point before and two after the break
        design = np.column_stack([np.ones_like(x), x, np.maximum(0.0, x - x[k])])
        coef, *_ = np.linalg.lstsq(design * sw[:, None], y * sw, rcond=None)
        if coef[1] + coef[2] >= 0:  # the line after the break must fall
            continue
        sse = float((((design @ coef) - y) ** 2 * w).sum())
        if sse < best_sse:
            best, best_sse = k, sse
    return best


@reads_source
def reward_hacking(
    source: Any,
    run_id: str | None = None,
    *,
    baseline: str | None = None,
    model_step_pattern: str = r"(\d+)$",
    kl_metric: str = "objective/kl",
    exclude_annotators: Sequence[str] | None = None,
    window: int = 3,
    alpha: float = 0.01,
    min_winrate_drop: float = 0.05,
    min_pairs: int = 20,
    kl_accel: float = 2.0,
    storage_options: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Per checkpoint: reward, length, KL and human win-rate, with reward-hacking indicators.

    Reward hacking shows as the reward model's score rising while humans stop preferring the
    policy: the win-rate against the baseline (from pairwise annotations where one side is the
    baseline and the other a checkpoint of the run) stalls or falls, responses grow and KL
    accelerates.

    ``hacking_start_step`` is found on the win-rate curve: a continuous two-segment line is
    fitted to the per-checkpoint win-rates (weighted by comparisons) at every candidate
    breakpoint whose second segment falls, and the best fit's breakpoint is kept if (a) the
    win-rate of the last two checkpoints after it is below that of the breakpoint and the one
    before by at least ``min_winrate_drop`` (two-proportion z-test, ``p < alpha``) and (b) the
    reward of the last checkpoint is above the breakpoint's (Welch t-test, ``p < alpha``). It is
    the last checkpoint before the decline (hacking starts after it).

    Parameters
    ----------
    source
        Store, bundle, a bundle's folder or URL, or ``{kind: DataFrame}`` mapping with
        ``reward_score``, ``annotation`` and ``train_step`` (and optionally ``checkpoint``) data.
    run_id
        The run (default: the one with the most reward scores).
    baseline
        The reference model name (default: the run's checkpoints' ``base_model``, else the model
        most often compared against a different one).
    model_step_pattern
        Regular expression whose first group is the step in a model name
        (``policy-step-0280`` -> 280).
    kl_metric
        Training metric used as KL (taken at the train step nearest each checkpoint).
    exclude_annotators
        Annotators (stored ids) whose labels are left out of the win-rate, e.g. flagged ones.
    window
        Checkpoints (current included) over which the trailing changes and the Spearman
        correlation are computed.
    alpha, min_winrate_drop, min_pairs
        Significance level of the tests, smallest win-rate drop that counts, and comparisons a
        checkpoint needs for its win-rate to be used.
    kl_accel
        ``kl_accelerating``: the rise per step of KL (averaged over the train steps since the
        previous checkpoint) over the trailing window exceeds ``kl_accel`` times its median rise
        per step over the first half of the checkpoints.
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        One row per step with reward scores, sorted by step:

        - ``run_id`` (String), ``step`` (Int64), ``model`` (String, the checkpoint's name in
          the annotations, null if never compared);
        - ``n_scores`` (Int64), ``reward_mean``, ``reward_sd``, ``length_mean`` (Float64);
        - ``kl`` (Float64): ``kl_metric`` at ``kl_step`` (Int64), the nearest train step;
        - ``n_pairs`` (Int64): decisive or tied comparisons with the baseline (skips excluded);
          ``winrate`` (Float64): wins + half the ties over ``n_pairs``; ``winrate_ci_low``,
          ``winrate_ci_high`` (Float64): 95% Wilson interval;
        - ``reward_change``, ``winrate_change``, ``length_change``, ``kl_change`` (Float64):
          change over the trailing ``window`` checkpoints;
        - ``reward_up_winrate_flat`` (Boolean): reward rising while the win-rate is flat or
          falling (change <= 0.02) over the window;
        - ``reward_length_spearman`` (Float64): Spearman correlation of score and response
          length over the samples of the window; ``reward_tracks_length`` (Boolean): it is
          positive with p < ``alpha``;
        - ``kl_accelerating`` (Boolean): the trailing rise per step of the mean KL over each
          checkpoint's interval of train steps exceeds ``kl_accel`` times its median early rise;
        - ``hacking`` (Boolean): the step is after ``hacking_start_step``;
        - ``hacking_start_step`` (Int64, the same on every row; null when not found) and
          ``hacking_evidence`` (String, same on every row): the finding in words.

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> camp = demo.Campaign(20_000, seed=0)
    >>> h = reward_hacking(camp.frames())
    >>> h["hacking_start_step"][0] == camp.ground_truth["first_hacking_step"]
    True
    """
    src = _sql_source(source)
    run = _pick_run(src, run_id)
    params = [run] if run is not None else None
    rw = "WHERE run_id = ?" if run is not None else ""
    samples = _try_sql(src, f"SELECT coalesce(step, 0)::BIGINT AS step, score::DOUBLE AS score, "
                            f"response_length::DOUBLE AS response_length FROM reward_score {rw}", params)
    if samples is None or samples.height == 0:
        raise ValueError("reward_hacking needs reward scores per step (reward_score events)")
    samples = samples.filter(pl.col("score").is_finite())
    per = (samples.group_by("step")
           .agg(n_scores=pl.len().cast(pl.Int64), reward_mean=pl.col("score").mean(),
                reward_sd=pl.col("score").std(), length_mean=pl.col("response_length").mean())
           .sort("step"))

    # KL at the nearest train step
    kl = _long_metrics(src, run, [kl_metric]).select(
        kl_step=pl.col("step"), kl=pl.col("value")).drop_nulls().sort("kl_step") if run is not None else None
    if kl is not None and kl.height:
        per = per.join_asof(kl.with_columns(step=pl.col("kl_step")), on="step", strategy="nearest")
        # mean KL over the train steps since the previous checkpoint (less noisy than one step)
        ck = per.select(pl.col("step").alias("ck")).sort("ck")
        spans = (kl.join_asof(ck, left_on="kl_step", right_on="ck", strategy="forward")
                 .group_by("ck").agg(kl_interval=pl.col("kl").mean()))
        per = per.join(spans, left_on="step", right_on="ck", how="left")
    else:
        per = per.with_columns(kl_step=pl.lit(None, pl.Int64), kl=pl.lit(None, pl.Float64),
                               kl_interval=pl.lit(None, pl.Float64))

    # win-rate against the baseline
    base = _pick_baseline(src, run, baseline)
    wins = None
    if base is not None:
        excl, eparams = "", []
        if exclude_annotators:
            excl = "AND NOT list_contains(?::VARCHAR[], annotator)"
            eparams = [list(exclude_annotators)]
        wins = _try_sql(src, f"""
            SELECT CASE WHEN model_a = ? THEN model_b ELSE model_a END AS model,
                   count(*)::BIGINT AS n_pairs,
                   sum(CASE WHEN choice = 'tie' THEN 0.5
                            WHEN (choice = 'a') = (model_b = ?) THEN 1.0 ELSE 0.0 END)::DOUBLE AS wins
            FROM annotation
            WHERE (model_a = ? OR model_b = ?) AND model_a <> model_b
              AND choice IN ('a', 'b', 'tie') {excl}
            GROUP BY 1""", [base, base, base, base, *eparams])
    if wins is not None and wins.height:
        wins = (wins.with_columns(step=pl.col("model").str.extract(model_step_pattern, 1)
                                  .cast(pl.Int64, strict=False))
                .filter(pl.col("step").is_not_null())
                .group_by("step").agg(pl.col("model").first(), pl.col("n_pairs").sum().cast(pl.Int64),
                                      pl.col("wins").sum()))
        per = per.join(wins, on="step", how="left")
    else:
        per = per.with_columns(model=pl.lit(None, pl.String), n_pairs=pl.lit(None, pl.Int64),
                               wins=pl.lit(None, pl.Float64))
    per = per.with_columns(pl.col("n_pairs").fill_null(0).cast(pl.Int64)).with_columns(
        winrate=pl.when(pl.col("n_pairs") >= min_pairs).then(pl.col("wins") / pl.col("n_pairs")))
    n_p = per["n_pairs"].to_numpy().astype(np.float64)
    k_w = per["wins"].fill_null(0.0).to_numpy().astype(np.float64)
    lo, hi = _wilson(k_w, n_p)
    usable = n_p >= min_pairs
    per = per.with_columns(winrate_ci_low=pl.Series(np.where(usable, lo, np.nan)).fill_nan(None),
                           winrate_ci_high=pl.Series(np.where(usable, hi, np.nan)).fill_nan(None))

    # trailing-window indicators (a loop over checkpoints only)
    steps = per["step"].to_numpy()
    rew = per["reward_mean"].to_numpy().astype(np.float64)
    win = per["winrate"].fill_null(np.nan).to_numpy().astype(np.float64)
    length = per["length_mean"].fill_null(np.nan).to_numpy().astype(np.float64)
    klv = per["kl"].fill_null(np.nan).to_numpy().astype(np.float64)
    kli = per["kl_interval"].fill_null(np.nan).to_numpy().astype(np.float64)
    d_rew, d_win = _window_change(rew, window), _window_change(win, window)
    d_len, d_kl = _window_change(length, window), _window_change(klv, window)
    d_steps = _window_change(steps.astype(np.float64), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        kl_rate = _window_change(kli, window) / d_steps
        half = max(2, steps.size // 2)
        inc = np.diff(kli[:half]) / np.diff(steps[:half].astype(np.float64))
        ref_rate = float(np.nanmedian(inc)) if inc.size and np.isfinite(inc).any() else np.nan
    kl_acc = (kl_rate > 0) & (kl_rate > kl_accel * max(ref_rate, 0.0)) if np.isfinite(ref_rate) \
        else np.zeros(steps.size, dtype=bool)
    rho = np.full(steps.size, np.nan)
    rho_p = np.full(steps.size, np.nan)
    parts = {s: g for (s,), g in samples.drop_nulls("response_length").group_by(["step"])}
    for i in range(steps.size):
        in_win = [parts[s] for s in steps[max(0, i - window + 1):i + 1] if s in parts]
        if not in_win:
            continue
        g = pl.concat(in_win)
        if g.height >= 10 and g["response_length"].n_unique() > 1:
            r = stats.spearmanr(g["score"].to_numpy(), g["response_length"].to_numpy())
            rho[i], rho_p[i] = float(r.statistic), float(r.pvalue)

    start, evidence = _hacking_start(per, samples, alpha=alpha, min_winrate_drop=min_winrate_drop)
    f64 = pl.Float64
    per = per.with_columns(
        run_id=pl.lit(run, pl.String),
        reward_change=pl.Series(d_rew, dtype=f64).fill_nan(None),
        winrate_change=pl.Series(d_win, dtype=f64).fill_nan(None),
        length_change=pl.Series(d_len, dtype=f64).fill_nan(None),
        kl_change=pl.Series(d_kl, dtype=f64).fill_nan(None),
        reward_length_spearman=pl.Series(rho, dtype=f64).fill_nan(None),
        reward_tracks_length=pl.Series((rho > 0) & (rho_p < alpha), dtype=pl.Boolean),
        kl_accelerating=pl.Series(kl_acc, dtype=pl.Boolean),
        hacking_start_step=pl.lit(start, pl.Int64),
        hacking_evidence=pl.lit(evidence, pl.String),
    ).with_columns(
        reward_up_winrate_flat=((pl.col("reward_change") > 0) & (pl.col("winrate_change") <= 0.02))
        .fill_null(False),
        hacking=(pl.col("step") > pl.col("hacking_start_step")).fill_null(False),
    )
    return per.select(
        "run_id", "step", "model", "n_scores", "reward_mean", "reward_sd", "length_mean",
        pl.col("kl").cast(f64), pl.col("kl_step").cast(pl.Int64), "n_pairs", "winrate",
        "winrate_ci_low", "winrate_ci_high", "reward_change", "winrate_change", "length_change",
        "kl_change", "reward_up_winrate_flat", "reward_length_spearman", "reward_tracks_length",
        "kl_accelerating", "hacking", "hacking_start_step", "hacking_evidence",
    ).sort("step")


def _hacking_start(per: pl.DataFrame, samples: pl.DataFrame, *, alpha: float,
                   min_winrate_drop: float) -> tuple[int | None, str]:
    ok = per.filter(pl.col("winrate").is_not_null()).sort("step")
    if ok.height < 4:
        return None, "not assessed: fewer than 4 checkpoints with enough comparisons against the baseline"
    x = ok["step"].to_numpy().astype(np.float64)
    y = ok["winrate"].to_numpy().astype(np.float64)
    n = ok["n_pairs"].to_numpy().astype(np.float64)
    k = _hinge_break(x, y, n)
    if k is None:
        return None, "no fall of the win-rate against the baseline"
    wins = ok["wins"].to_numpy().astype(np.float64)
    peak = slice(max(0, k - 1), k + 1)
    tail = slice(max(k + 1, x.size - 2), x.size)
    w1, n1 = wins[peak].sum(), n[peak].sum()
    w2, n2 = wins[tail].sum(), n[tail].sum()
    p1, p2 = w1 / n1, w2 / n2
    pooled = (w1 + w2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2)) if 0 < pooled < 1 else 0.0
    p_win = float(stats.norm.sf((p1 - p2) / se)) if se > 0 else (0.0 if p1 > p2 else 1.0)
    s_k, s_last = int(x[k]), int(ok["step"][-1])
    a = samples.filter(pl.col("step") == s_k)["score"].to_numpy()
    b = samples.filter(pl.col("step") == s_last)["score"].to_numpy()
    if a.size < 2 or b.size < 2:
        return None, "not assessed: too few reward scores at the checkpoints compared"
    t = stats.ttest_ind(b, a, equal_var=False, alternative="greater")
    p_rew = float(t.pvalue)
    r_k, r_last = float(a.mean()), float(b.mean())
    if p1 - p2 >= min_winrate_drop and p_win < alpha and p_rew < alpha:
        return s_k, (f"after step {s_k} the reward kept rising ({r_k:.2f} -> {r_last:.2f} at step "
                     f"{s_last}, Welch {_p(p_rew)}) while the win-rate against the baseline fell "
                     f"({p1:.2f} -> {p2:.2f}, {_p(p_win)})")
    return None, (f"no significant divergence: win-rate {p1:.2f} -> {p2:.2f} ({_p(p_win)}), "
                  f"reward {r_k:.2f} -> {r_last:.2f} ({_p(p_rew)}) after step {s_k}")


def _p(p: float) -> str:
    return "p<1e-6" if p < 1e-6 else f"p={p:.2g}"
