"""Annotator behaviour: throughput, speed, choice shares, biases, agreement and drift.

Every function takes a *source*: an :class:`~rlhf_audit_kit.store.AuditStore`, a snapshot bundle
(anything with the same ``sql(query, params)`` read API over an ``annotation`` table), or a polars
DataFrame with the columns of the ``annotation`` kind (see :mod:`rlhf_audit_kit.schema`). With a
store or a bundle only the columns needed are read, and response lengths are computed in DuckDB,
so the texts never cross into Python.

Common filters: ``since`` / ``until`` (on the annotation time ``coalesce(shown_at, submitted_at,
ts)``, ``since`` inclusive, ``until`` exclusive), ``annotators`` (the ids *as stored*, i.e. the
pseudonyms) and ``task_ids``.

Conventions
-----------
* An *item* is a prompt and an unordered pair of responses: ``(prompt_id, {response_a_id,
  response_b_id})``. A pair shown the other way round is the same item, its choice mirrored
  ("a" <-> "b") for agreement and self-consistency; position statistics use the choice as shown.
* ``skip`` is not a judgement: it counts in ``n`` and ``share_skip`` and nowhere else.
* Time per item is ``submitted_at - shown_at`` in seconds (rows missing either are ignored).
* Agreement compares each label with the majority of the *other* annotators of the same item
  (leave-one-out): only items with at least two other labels count, and items where the others'
  majority is tied are left out. An annotator's repeats of an item count once (the first label)
  for agreement; repeats are what *self-consistency* measures.
* Tests are exact two-sided binomial tests against 0.5 with Clopper-Pearson intervals; because the
  same test is run once per annotator, p-values are Holm-adjusted across annotators (``*_p_adj``),
  which keeps the chance of flagging *any* unbiased annotator at most ``alpha`` without assuming
  independence (Holm is uniformly more powerful than Bonferroni under the same guarantee). A flag
  also needs a minimum effect size, so a large annotator with a tiny but "significant" lean is
  not flagged.

Examples
--------
>>> from rlhf_audit_kit import demo
>>> ann = demo.Campaign(2_000, seed=0).frames(kinds=["annotation"])["annotation"]
>>> rep = annotator_report(ann)
>>> rep.columns[:4]
['annotator', 'n', 'throughput_per_day', 'time_median_s']
>>> rep.height == ann["annotator"].n_unique()
True
"""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from .agreement import pairwise

__all__ = [
    "agreement_matrix",
    "annotation_frame",
    "annotator_drift",
    "annotator_report",
    "holm",
    "throughput",
]

Source = Any  # AuditStore | bundle | pl.DataFrame | pl.LazyFrame
_US_PER_DAY = 86_400 * 1_000_000


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _is_frame(source: Any) -> bool:
    return isinstance(source, (pl.DataFrame, pl.LazyFrame))


def _as_list(values: Any) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


def annotation_frame(source: Source, *, since: Any = None, until: Any = None,
                     annotators: Sequence[str] | str | None = None,
                     task_ids: Sequence[str] | str | None = None,
                     models: bool = False) -> pl.DataFrame:
    """The slim, normalised annotation table every function of this module works on.

    Parameters
    ----------
    source
        A store, a bundle (``sql`` read API) or a DataFrame of ``annotation`` rows.
    since, until
        Keep annotations with ``since <= t < until`` (datetimes or ISO strings; naive = UTC).
    annotators, task_ids
        Keep only these annotators (stored ids, i.e. pseudonyms) / tasks.
    models
        Also return ``model_a`` and ``model_b``.

    Returns
    -------
    pl.DataFrame
        One row per annotation, in log order:

        - ``annotator`` (String), ``choice`` (String: a, b, tie, skip, as shown);
        - ``item`` (UInt64): hash of prompt_id and the unordered response pair;
        - ``label`` (String): the choice in the item's canonical order (mirrored when the pair
          was shown with the larger response id first);
        - ``t`` (Datetime): ``coalesce(shown_at, submitted_at, ts)``;
        - ``secs`` (Float64): ``submitted_at - shown_at`` in seconds (null when unknown);
        - ``len_a``, ``len_b`` (Int64): response lengths in characters (null when unknown);
        - ``gold_choice`` (String), ``task_id`` (String);
        - ``model_a``, ``model_b`` (String) with ``models=True``.

    Examples
    --------
    >>> import polars as pl
    >>> rows = pl.DataFrame({"annotator": ["x", "y"], "choice": ["a", "b"],
    ...     "prompt_id": ["p", "p"], "response_a_id": ["r1", "r2"], "response_b_id": ["r2", "r1"],
    ...     "response_a": ["short", "longer text"], "response_b": ["longer text", "short"]})
    >>> f = annotation_frame(rows)
    >>> f["label"].to_list(), f["item"].n_unique()   # same item, shown both ways: both chose r1
    (['a', 'a'], 1)
    """
    since_t, until_t = _ts(since), _ts(until)
    ann_list, task_list = _as_list(annotators), _as_list(task_ids)
    if _is_frame(source):
        df = _frame_from_polars(source, models)
        if since_t is not None:
            df = df.filter(pl.col("t") >= since_t)
        if until_t is not None:
            df = df.filter(pl.col("t") < until_t)
        if ann_list is not None:
            df = df.filter(pl.col("annotator").is_in(ann_list))
        if task_list is not None:
            df = df.filter(pl.col("task_id").is_in(task_list))
        return df
    if not hasattr(source, "sql"):
        raise TypeError(f"source must be an AuditStore, a bundle or a polars DataFrame, "
                        f"got {type(source).__name__}")
    where, params = [], []
    t_expr = "coalesce(shown_at, submitted_at, ts)"
    if since_t is not None:
        where.append(f"{t_expr} >= ?::TIMESTAMP")
        params.append(since_t)
    if until_t is not None:
        where.append(f"{t_expr} < ?::TIMESTAMP")
        params.append(until_t)
    if ann_list is not None:
        where.append("list_contains(?::VARCHAR[], annotator)")
        params.append(ann_list)
    if task_list is not None:
        where.append("list_contains(?::VARCHAR[], task_id)")
        params.append(task_list)
    extra = ", model_a, model_b" if models else ""
    query = f"""
        SELECT annotator, choice,
               hash(prompt_id, least(response_a_id, response_b_id),
                    greatest(response_a_id, response_b_id)) AS item,
               CASE WHEN response_a_id > response_b_id AND choice IN ('a', 'b')
                    THEN CASE choice WHEN 'a' THEN 'b' ELSE 'a' END ELSE choice END AS label,
               {t_expr} AS t,
               epoch(submitted_at) - epoch(shown_at) AS secs,
               length(response_a)::BIGINT AS len_a, length(response_b)::BIGINT AS len_b,
               gold_choice, task_id{extra}
        FROM annotation {'WHERE ' + ' AND '.join(where) if where else ''}
        ORDER BY seq"""
    df = source.sql(query, params or None)
    return df.with_columns(pl.col("item").cast(pl.UInt64), pl.col("t").cast(pl.Datetime("us")),
                           pl.col("secs").cast(pl.Float64))


def _ts(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value


def _frame_from_polars(frame: pl.DataFrame | pl.LazyFrame, models: bool) -> pl.DataFrame:
    lf = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
    cols = set(lf.collect_schema().names())
    need = {"annotator", "choice", "prompt_id", "response_a_id", "response_b_id"}
    missing = need - cols
    if missing:
        raise ValueError(f"the annotation frame lacks the columns {sorted(missing)}")

    def opt(name: str, dtype: pl.DataType) -> pl.Expr:
        return pl.col(name) if name in cols else pl.lit(None, dtype=dtype)

    times = [pl.col(c).cast(pl.Datetime("us")) for c in ("shown_at", "submitted_at", "ts") if c in cols]
    lo = pl.min_horizontal("response_a_id", "response_b_id")
    hi = pl.max_horizontal("response_a_id", "response_b_id")
    flip = (pl.col("response_a_id") > pl.col("response_b_id")) & pl.col("choice").is_in(["a", "b"])
    secs = ((pl.col("submitted_at").cast(pl.Datetime("us")) - pl.col("shown_at").cast(pl.Datetime("us")))
            .dt.total_microseconds() / 1e6) if {"shown_at", "submitted_at"} <= cols else pl.lit(None, pl.Float64)
    exprs = [
        pl.col("annotator").cast(pl.String),
        pl.col("choice").cast(pl.String),
        pl.struct(pl.col("prompt_id").cast(pl.String), lo.cast(pl.String).alias("lo"),
                  hi.cast(pl.String).alias("hi")).hash(seed=0).alias("item"),
        pl.when(flip).then(pl.when(pl.col("choice") == "a").then(pl.lit("b")).otherwise(pl.lit("a")))
        .otherwise(pl.col("choice")).cast(pl.String).alias("label"),
        (pl.coalesce(times) if times else pl.lit(None, pl.Datetime("us"))).alias("t"),
        secs.cast(pl.Float64).alias("secs"),
        (pl.col("response_a").str.len_chars().cast(pl.Int64) if "response_a" in cols
         else opt("len_a", pl.Int64).cast(pl.Int64)).alias("len_a"),
        (pl.col("response_b").str.len_chars().cast(pl.Int64) if "response_b" in cols
         else opt("len_b", pl.Int64).cast(pl.Int64)).alias("len_b"),
        opt("gold_choice", pl.String).cast(pl.String).alias("gold_choice"),
        opt("task_id", pl.String).cast(pl.String).alias("task_id"),
    ]
    if models:
        exprs += [opt("model_a", pl.String).cast(pl.String).alias("model_a"),
                  opt("model_b", pl.String).cast(pl.String).alias("model_b")]
    if "seq" in cols:
        lf = lf.sort("seq")
    return lf.select(exprs).collect()


# --------------------------------------------------------------------------------------------
# statistics helpers
# --------------------------------------------------------------------------------------------
def holm(pvalues: Any) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries (untested) are kept and not counted.

    >>> holm([0.01, 0.04, 0.03, float("nan")]).round(3).tolist()
    [0.03, 0.06, 0.06, nan]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


def _binom_two_sided(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Exact two-sided binomial p-value against 0.5 (symmetric null: 2 * P(X <= min(k, n-k)))."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        p = np.minimum(1.0, 2.0 * stats.binom.cdf(np.minimum(k, n - k), n, 0.5))
    p = np.where(np.asarray(n) > 0, p, np.nan)
    # k == n/2 exactly gives cdf > 0.5: cap at 1 (done by minimum)
    return p


def _clopper_pearson(k: np.ndarray, n: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(a, k, n - k + 1), 0.0)
        hi = np.where(k < n, stats.beta.ppf(1 - a, k + 1, n - k), 1.0)
    bad = n <= 0
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def _two_proportion(k1: np.ndarray, n1: np.ndarray, k2: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Two-sided pooled z-test p-value of p1 == p2."""
    k1, n1, k2, n2 = (np.asarray(x, dtype=np.float64) for x in (k1, n1, k2, n2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (k1 + k2) / (n1 + n2)
        se = np.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
        z = (k1 / n1 - k2 / n2) / se
        out = 2 * stats.norm.sf(np.abs(z))
    return np.where((n1 > 0) & (n2 > 0) & (se > 0), out, np.where((n1 > 0) & (n2 > 0), 1.0, np.nan))


def _fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "p=n/a"
    if p < 1e-6:
        return "p<1e-6"
    return f"p={p:.2g}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


#@@MIDDLE@@

def _flags(out: pl.DataFrame, *, alpha: float, ci_level: float, min_n: int, position_share_min: float,
           length_share_min: float, random_kappa_max: float, fast_quantile: float,
           min_agreement: float, min_self_consistency: float, min_repeats: int,
           min_gold_accuracy: float, min_gold: int) -> tuple[list[list[str]], list[str]]:
    """Flags and their reasons, one list per annotator (a loop over annotators, not rows)."""
    flags: list[list[str]] = []
    reasons: list[str] = []
    for r in out.iter_rows(named=True):
        f: list[str] = []
        why: list[str] = []
        kappa, agr, tpct = r["agreement_kappa"], r["agreement"], r["time_percentile"]
        enough_agree = r["agreement_n"] >= min_n and agr is not None
        if (enough_agree and kappa is not None and kappa <= random_kappa_max
                and tpct is not None and not math.isnan(tpct) and tpct <= fast_quantile):
            f.append("random_clicker")
            why.append(f"random clicker: agreement {agr:.2f} near chance ({r['agreement_chance']:.2f}, "
                       f"kappa {kappa:.2f}) and median time {r['time_median_s']:.0f} s in the "
                       f"bottom {max(1, math.ceil(100 * tpct))}% of the other annotators' items")
        p = r["position_p_adj"]
        share = r["position_a_share"]
        if (r["n_ab"] >= min_n and p is not None and not math.isnan(p) and p < alpha
                and (share >= position_share_min or share <= 1 - position_share_min)):
            f.append("position_bias")
            side = "A" if share >= 0.5 else "B"
            s = share if side == "A" else 1 - share
            why.append(f"position bias: chose {side} {_pct(s)} of {r['n_ab']:,} a/b choices "
                       f"({_fmt_p(p)}, Holm; {100 * ci_level:g}% CI "
                       f"{r['position_ci_low']:.2f}-{r['position_ci_high']:.2f})")
        p = r["length_p_adj"]
        share = r["length_longer_share"]
        if (r["n_length"] >= min_n and p is not None and not math.isnan(p) and p < alpha
                and share >= length_share_min):
            f.append("length_bias")
            why.append(f"length bias: chose the longer response {_pct(share)} of {r['n_length']:,} "
                       f"times ({_fmt_p(p)}, Holm; CI {r['length_ci_low']:.2f}-{r['length_ci_high']:.2f})")
        if enough_agree and agr < min_agreement and "random_clicker" not in f:
            f.append("low_agreement")
            why.append(f"low agreement: {agr:.2f} with the other annotators' majority over "
                       f"{r['agreement_n']:,} items (threshold {min_agreement:.2f})")
        sc, n_rep = r["self_consistency"], r["n_repeated"]
        if n_rep >= min_repeats and sc is not None:
            hi = float(_clopper_pearson(round(sc * n_rep), n_rep, ci_level)[1])
            if hi < min_self_consistency:
                f.append("inconsistent")
                why.append(f"inconsistent: same label on only {_pct(sc)} of {n_rep} repeated items "
                           f"({100 * ci_level:g}% CI up to {hi:.2f}, below {min_self_consistency:.2f})")
        ga, n_gold = r["gold_accuracy"], r["n_gold"]
        if n_gold >= min_gold and ga is not None:
            hi = float(_clopper_pearson(round(ga * n_gold), n_gold, ci_level)[1])
            if hi < min_gold_accuracy:
                f.append("low_gold_accuracy")
                why.append(f"gold accuracy {_pct(ga)} on {n_gold} gold items ({100 * ci_level:g}% CI "
                           f"up to {hi:.2f}, below {min_gold_accuracy:.2f})")
        flags.append(f)
        reasons.append("; ".join(why))
    return flags, reasons
