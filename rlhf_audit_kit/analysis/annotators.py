"""Annotator behaviour: throughput, speed, choice shares, biases, agreement and drift.

Every function takes a *source*: an :class:`~rlhf_audit_kit.store.AuditStore`, a snapshot bundle
(anything with the same ``sql(query, params)`` read API over an ``annotation`` table), a bundle's
folder or fsspec URL (``"s3://audit/run-7"``, with ``storage_options=``; opened with
:func:`~rlhf_audit_kit.bundle.open_bundle` for the call), or a polars DataFrame with the columns of
the ``annotation`` kind (see :mod:`rlhf_audit_kit.schema`). With a store or a bundle only the
columns needed are read, response lengths are computed in DuckDB, so the texts never cross into
Python, and only aggregates come back (per annotator, window or pair; :func:`annotation_frame`
alone returns rows).

Common filters: ``since`` / ``until`` (on the annotation time ``coalesce(shown_at,
submitted_at)``, ``since`` inclusive, ``until`` exclusive), ``annotators`` (the ids *as stored*,
i.e. the pseudonyms) and ``task_ids``.

Conventions
-----------
* An *item* is a prompt and an unordered pair of responses: ``(prompt_id, {response_a_id,
  response_b_id})``. A pair shown the other way round is the same item, its choice mirrored
  ("a" <-> "b") for agreement and self-consistency; position statistics use the choice as shown.
* ``skip`` is not a judgement: it counts in ``n`` and ``share_skip`` and nowhere else.
* An annotation's time is its own: ``shown_at``, else ``submitted_at``. The recording time ``ts``
  is when the kit wrote the event (for a loaded dataset file, the ingest), which says nothing about
  the annotators, so rows without a time of their own (``n_untimed``) are left out of throughput,
  time filters and drift.
* Position statistics use only rows whose display order is known: a row with
  ``display_order_known`` false (a dataset that puts the chosen response first by construction)
  counts in ``n_order_unknown`` instead. A null (not recorded) is taken as known.
* Time per item is ``submitted_at - shown_at`` in seconds (rows missing either are ignored).
* One judgement recorded twice (same annotator, pair as shown, choice, ``submitted_at`` and
  ``shown_at``, in a source holding several datasets: e.g. two exports of one Label Studio
  project loaded under two dataset names) counts once; a true repeat has other times. Rows
  without ``submitted_at`` are never merged.
* Agreement compares each label with the majority of the *other* annotators of the same item
  (leave-one-out): items with at least one other label count (with two raters, the other's label
  is the majority), and items where the others' majority is tied are left out. An annotator's repeats of an item count once (the first label)
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

from ._source import reads_source
from .agreement import pairwise_from_counts

__all__ = [
    "agreement_matrix",
    "annotation_frame",
    "annotator_drift",
    "annotator_report",
    "holm",
    "throughput",
]

Source = Any  # AuditStore | bundle | pl.DataFrame | pl.LazyFrame | a bundle's path or fsspec URL
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


@reads_source
def annotation_frame(source: Source, *, since: Any = None, until: Any = None,
                     annotators: Sequence[str] | str | None = None,
                     task_ids: Sequence[str] | str | None = None,
                     models: bool = False, storage_options: dict[str, Any] | None = None) -> pl.DataFrame:
    """The slim, normalised annotation table every function of this module works on.

    Parameters
    ----------
    source
        A store, a bundle (``sql`` read API), a bundle's folder or fsspec URL (opened for the
        call) or a DataFrame of ``annotation`` rows.
    since, until
        Keep annotations with ``since <= t < until`` (datetimes or ISO strings; naive = UTC).
    annotators, task_ids
        Keep only these annotators (stored ids, i.e. pseudonyms) / tasks.
    models
        Also return ``model_a`` and ``model_b``.
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        One row per annotation, in log order:

        - ``seq`` (Int64): the log position (the row position for a frame without ``seq``);
        - ``annotator`` (String), ``choice`` (String: a, b, tie, skip, as shown);
        - ``item`` (UInt64): hash of prompt_id and the unordered response pair;
        - ``label`` (String): the choice in the item's canonical order (mirrored when the pair
          was shown with the larger response id first);
        - ``t`` (Datetime): ``coalesce(shown_at, submitted_at)``, the annotation's own time
          (null when it has none: the recording time ``ts`` is not the annotator's);
        - ``secs`` (Float64): ``submitted_at - shown_at`` in seconds (null when unknown);
        - ``len_a``, ``len_b`` (Int64): response lengths in characters (null when unknown);
        - ``gold_choice`` (String), ``task_id`` (String);
        - ``order_known`` (Boolean): ``display_order_known``, null taken as true;
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
        raise TypeError(f"source must be an AuditStore, a bundle (or its path or URL) or a polars DataFrame, "
                        f"got {type(source).__name__}")
    query, params = _slim_sql(since, until, ann_list, task_list, models=models, **_probe(source))
    df = source.sql(query + " ORDER BY seq", params or None).drop("ah")
    return df.with_columns(pl.col("seq").cast(pl.Int64), pl.col("item").cast(pl.UInt64),
                           pl.col("t").cast(pl.Datetime("us")), pl.col("secs").cast(pl.Float64))


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

    times = [pl.col(c).cast(pl.Datetime("us")) for c in ("shown_at", "submitted_at") if c in cols]
    lo = pl.min_horizontal("response_a_id", "response_b_id")
    hi = pl.max_horizontal("response_a_id", "response_b_id")
    flip = (pl.col("response_a_id") > pl.col("response_b_id")) & pl.col("choice").is_in(["a", "b"])
    secs = ((pl.col("submitted_at").cast(pl.Datetime("us")) - pl.col("shown_at").cast(pl.Datetime("us")))
            .dt.total_microseconds() / 1e6) if {"shown_at", "submitted_at"} <= cols else pl.lit(None, pl.Float64)
    exprs = [
        (pl.col("seq").cast(pl.Int64) if "seq" in cols else pl.int_range(pl.len(), dtype=pl.Int64)).alias("seq"),
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
        opt("display_order_known", pl.Boolean).cast(pl.Boolean).fill_null(True).alias("order_known"),
    ]
    if models:
        exprs += [opt("model_a", pl.String).cast(pl.String).alias("model_a"),
                  opt("model_b", pl.String).cast(pl.String).alias("model_b")]
    several = "dataset" in cols and lf.select(pl.col("dataset").fill_null("").n_unique() > 1).collect().item()
    if "submitted_at" in cols and several:  # the same judgement recorded twice counts once (_SAME_JUDGEMENT)
        if "seq" in cols:
            lf = lf.sort("seq")
        same = pl.struct([c for c in _SAME_JUDGEMENT.split(", ") if c in cols])
        lf = lf.filter(pl.col("submitted_at").is_null() | same.is_first_distinct())
    out = lf.select(exprs).collect()
    return out.sort("seq") if "seq" in cols else out


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


# --------------------------------------------------------------------------------------------
# SQL over the annotation rows of any source
# --------------------------------------------------------------------------------------------
_SLIM_COLUMNS = ("seq", "annotator", "choice", "item", "label", "t", "secs", "len_a", "len_b",
                 "gold_choice", "task_id", "order_known")


# One judgement recorded twice (two exports of one Label Studio project loaded under two dataset
# names) has the same rater, pair as shown, choice and times; a true repeat has other times.
_SAME_JUDGEMENT = "annotator, prompt_id, response_a_id, response_b_id, choice, submitted_at, shown_at"


def _probe(source: Any) -> dict[str, bool]:
    """``order``: does the annotation table have ``display_order_known`` (a store opened read-only
    or a bundle written before the field existed has not)? ``dedup``: does it hold timed rows of
    several datasets, the only way one judgement can be there twice? (The check costs ~20 ms on
    10^6 rows; the duplicate search it spares ~1 s.)"""
    cols = source.sql("SELECT * FROM annotation LIMIT 0").columns
    several = source.sql("SELECT count(DISTINCT coalesce(dataset, '')) > 1 AS x FROM annotation "
                         "WHERE submitted_at IS NOT NULL")
    return {"order": "display_order_known" in cols, "dedup": bool(several.item())}


class _Rows:
    """Runs DuckDB SQL over the slim annotation rows of a source as the CTE ``base``.

    A store or bundle runs the query itself (only aggregates come back); a polars frame is
    normalised by :func:`annotation_frame` and queried in a private in-memory DuckDB.
    """

    def __init__(self, source: Source, *, since: Any = None, until: Any = None,
                 annotators: Any = None, task_ids: Any = None):
        self._con = None
        if _is_frame(source):
            import duckdb

            slim = annotation_frame(source, since=since, until=until, annotators=annotators,
                                    task_ids=task_ids)
            self._con = duckdb.connect()
            self._con.execute("SET TimeZone = 'UTC'")
            self._con.register("__slim", slim)
            self.base, self.params = "SELECT *, hash(annotator) AS ah FROM __slim", []
        elif hasattr(source, "sql"):
            self._source = source
            self.base, self.params = _slim_sql(since, until, _as_list(annotators), _as_list(task_ids),
                                               **_probe(source))
        else:
            raise TypeError(f"source must be an AuditStore, a bundle (or its path or URL) or a polars DataFrame, "
                            f"got {type(source).__name__}")

    def run(self, ctes: str, select: str, *, base: str | None = None,
            materialize: bool = True) -> pl.DataFrame:
        # MATERIALIZED: computed once however often the CTEs read it; a single read is better
        # inlined, so DuckDB only computes the columns it needs.
        how = "AS MATERIALIZED" if materialize else "AS"
        query = f"WITH base {how} ({base or self.base}){', ' + ctes if ctes else ''}\n{select}"
        params = self.params or None
        if self._con is not None:
            return self._con.sql(query, params=params).pl()
        return self._source.sql(query, params)


def _slim_sql(since: Any, until: Any, annotators: list[str] | None,
              task_ids: list[str] | None, models: bool = False, order: bool = True,
              dedup: bool = False) -> tuple[str, list[Any]]:
    where, params = [], []
    t_expr = "coalesce(shown_at, submitted_at)"
    since_t, until_t = _ts(since), _ts(until)
    if since_t is not None:
        where.append(f"{t_expr} >= ?::TIMESTAMP")
        params.append(since_t)
    if until_t is not None:
        where.append(f"{t_expr} < ?::TIMESTAMP")
        params.append(until_t)
    if annotators is not None:
        where.append("list_contains(?::VARCHAR[], annotator)")
        params.append(annotators)
    if task_ids is not None:
        where.append("list_contains(?::VARCHAR[], task_id)")
        params.append(task_ids)
    extra = ", model_a, model_b" if models else ""
    sql = f"""
        SELECT seq, annotator, hash(annotator) AS ah, choice,
               hash(prompt_id, least(response_a_id, response_b_id),
                    greatest(response_a_id, response_b_id)) AS item,
               CASE WHEN response_a_id > response_b_id AND choice IN ('a', 'b')
                    THEN CASE choice WHEN 'a' THEN 'b' ELSE 'a' END ELSE choice END AS label,
               {t_expr}::TIMESTAMP AS t,
               (epoch_us(submitted_at) - epoch_us(shown_at)) / 1e6 AS secs,
               length(response_a)::BIGINT AS len_a, length(response_b)::BIGINT AS len_b,
               gold_choice, task_id,
               {'coalesce(display_order_known, true)' if order else 'true'} AS order_known{extra}
        FROM annotation {'WHERE ' + ' AND '.join(where) if where else ''}"""
    if dedup:  # a hash of the key: partitioning by the long id strings costs 3x more
        sql += f"""
        QUALIFY submitted_at IS NULL OR seq = min(seq) OVER (PARTITION BY hash({_SAME_JUDGEMENT}))"""
    return sql, params


def _stats_ctes(keys: Sequence[str], *, repeats: bool, time_percentile: bool) -> tuple[str, str]:
    """CTEs and the final SELECT of the per-``keys`` statistics (keys: annotator[, w]).

    The item-level work (one label per item and annotator, the leave-one-out majority, repeats)
    groups by ``hash(annotator)`` (``ah``) rather than the long pseudonym string: 64-bit keys
    hash and compare several times faster, and the names come back through ``st``.
    """
    k = ", ".join(keys)
    hk = ", ".join("ah" if c == "annotator" else c for c in keys)  # the same keys, hashed
    lab_keys = "".join(f", arg_min({c}, seq) AS {c}" for c in keys if c != "annotator")
    mx = "greatest(oa, ob, ot)"
    ctes = [f"""
    st AS (
        SELECT {k}, min(ah) AS ah, count(*) AS n, count(DISTINCT t::DATE) AS active_days,
               min(t) AS t_first, max(t) AS t_last,
               median(secs) AS time_median_s, quantile_cont(secs, 0.25) AS time_q25,
               quantile_cont(secs, 0.75) AS time_q75,
               avg((choice = 'a')::INT) AS share_a, avg((choice = 'b')::INT) AS share_b,
               avg((choice = 'tie')::INT) AS share_tie, avg((choice = 'skip')::INT) AS share_skip,
               count(*) FILTER (choice IN ('a', 'b') AND order_known) AS n_ab,
               count(*) FILTER (choice = 'a' AND order_known) AS k_a,
               count(*) FILTER (choice IN ('a', 'b') AND NOT order_known) AS n_order_unknown,
               count(*) FILTER (t IS NULL) AS n_untimed,
               count(*) FILTER (choice IN ('a', 'b') AND len_a <> len_b) AS n_length,
               count(*) FILTER (choice IN ('a', 'b') AND len_a <> len_b
                                AND (choice = 'a') = (len_a > len_b)) AS k_longer,
               count(*) FILTER (gold_choice IS NOT NULL AND choice <> 'skip') AS n_gold,
               count(*) FILTER (choice = gold_choice AND choice <> 'skip') AS gold_k
        FROM base GROUP BY {k})""", f"""
    lab AS (
        SELECT item, ah, arg_min(label, seq) AS label, count(*) AS m,
               min(label) = max(label) AS same{lab_keys}
        FROM base WHERE choice <> 'skip' GROUP BY item, ah)""", """
    cnt AS (
        SELECT item, count(*) FILTER (label = 'a') AS na, count(*) FILTER (label = 'b') AS nb,
               count(*) FILTER (label = 'tie') AS nt
        FROM lab GROUP BY item)""", f"""
    v AS (
        SELECT {hk}, label,
               CASE WHEN oa = {mx} THEN 'a' WHEN ob = {mx} THEN 'b' ELSE 'tie' END AS maj
        FROM (SELECT {hk}, label, na - (label = 'a')::INT AS oa, nb - (label = 'b')::INT AS ob,
                     nt - (label = 'tie')::INT AS ot
              FROM lab JOIN cnt USING (item))
        WHERE oa + ob + ot >= 1
          AND (oa = {mx})::INT + (ob = {mx})::INT + (ot = {mx})::INT = 1)""", f"""
    agree AS (
        SELECT {hk}, count(*) AS agreement_n, count(*) FILTER (label = maj) AS agreement_k,
               (count(*) FILTER (label = 'a') * count(*) FILTER (maj = 'a')
                + count(*) FILTER (label = 'b') * count(*) FILTER (maj = 'b')
                + count(*) FILTER (label = 'tie') * count(*) FILTER (maj = 'tie'))::DOUBLE
               / (count(*)::DOUBLE * count(*)) AS agreement_chance
        FROM v GROUP BY {hk})"""]
    joins = f" LEFT JOIN agree USING ({hk})"
    if repeats:
        ctes.append(f"""
    rep AS (
        SELECT {hk}, count(*) AS n_repeated, avg(same::INT) AS self_consistency
        FROM lab WHERE m >= 2 GROUP BY {hk})""")
        joins += f" LEFT JOIN rep USING ({hk})"
    if time_percentile:
        ctes.append("""
    tp AS (
        SELECT st.annotator, count(*) FILTER (b.secs <= st.time_median_s)::DOUBLE / count(*)
               AS time_percentile
        FROM st, base b
        WHERE b.ah <> st.ah AND b.secs IS NOT NULL
        GROUP BY st.annotator)""")
        joins += " LEFT JOIN tp USING (annotator)"
    return ",".join(ctes), f"SELECT * EXCLUDE (ah) FROM st{joins} ORDER BY {k}"


def _finish_common(out: pl.DataFrame, ci_level: float, min_n: int) -> pl.DataFrame:
    """Derived columns shared by the report and the drift table (tests and intervals)."""
    int_cols = [c for c in ("n", "n_ab", "k_a", "n_order_unknown", "n_untimed", "n_length", "k_longer",
                            "n_gold", "gold_k", "agreement_n", "agreement_k", "n_repeated", "active_days")
                if c in out.columns]
    out = out.with_columns(pl.col(int_cols).fill_null(0).cast(pl.Int64))
    n_ab, k_a = out["n_ab"].to_numpy(), out["k_a"].to_numpy()
    n_len, k_len = out["n_length"].to_numpy(), out["k_longer"].to_numpy()
    pos_p = np.where(n_ab >= min_n, _binom_two_sided(k_a, n_ab), np.nan)
    len_p = np.where(n_len >= min_n, _binom_two_sided(k_len, n_len), np.nan)
    pos_lo, pos_hi = _clopper_pearson(k_a, n_ab, ci_level)
    len_lo, len_hi = _clopper_pearson(k_len, n_len, ci_level)
    f64 = pl.Float64
    return out.with_columns(
        throughput_per_day=pl.when(pl.col("active_days") > 0)
        .then((pl.col("n") - pl.col("n_untimed")) / pl.col("active_days").cast(f64)),
        time_iqr_s=pl.col("time_q75") - pl.col("time_q25"),
        position_a_share=pl.when(pl.col("n_ab") > 0).then(pl.col("k_a") / pl.col("n_ab")),
        position_ci_low=pl.Series(pos_lo, dtype=f64),
        position_ci_high=pl.Series(pos_hi, dtype=f64),
        position_p=pl.Series(pos_p, dtype=f64),
        length_longer_share=pl.when(pl.col("n_length") > 0).then(pl.col("k_longer") / pl.col("n_length")),
        length_ci_low=pl.Series(len_lo, dtype=f64),
        length_ci_high=pl.Series(len_hi, dtype=f64),
        length_p=pl.Series(len_p, dtype=f64),
        agreement=pl.when(pl.col("agreement_n") > 0).then(pl.col("agreement_k") / pl.col("agreement_n")),
        gold_accuracy=pl.when(pl.col("n_gold") > 0).then(pl.col("gold_k") / pl.col("n_gold")),
    ).with_columns(
        agreement_kappa=pl.when(pl.col("agreement_chance") < 1)
        .then((pl.col("agreement") - pl.col("agreement_chance")) / (1 - pl.col("agreement_chance"))),
    )


# --------------------------------------------------------------------------------------------
# annotator_report
# --------------------------------------------------------------------------------------------
_REPORT_COLUMNS = [
    "annotator", "n", "throughput_per_day", "time_median_s", "time_iqr_s", "time_percentile", "n_untimed",
    "share_a", "share_b", "share_tie", "share_skip",
    "n_ab", "n_order_unknown", "position_a_share", "position_ci_low", "position_ci_high", "position_p",
    "position_p_adj",
    "n_length", "length_longer_share", "length_ci_low", "length_ci_high", "length_p", "length_p_adj",
    "agreement_n", "agreement", "agreement_chance", "agreement_kappa",
    "n_repeated", "self_consistency", "n_gold", "gold_accuracy", "flags", "flag_reason",
]


@reads_source
def annotator_report(
    source: Source,
    *,
    since: Any = None,
    until: Any = None,
    annotators: Sequence[str] | str | None = None,
    task_ids: Sequence[str] | str | None = None,
    alpha: float = 0.01,
    ci_level: float = 0.95,
    min_n: int = 30,
    position_share_min: float = 0.65,
    length_share_min: float = 0.70,
    random_kappa_max: float = 0.20,
    fast_quantile: float = 0.05,
    min_agreement: float = 0.65,
    min_self_consistency: float = 0.70,
    min_repeats: int = 10,
    min_gold_accuracy: float = 0.80,
    min_gold: int = 10,
    storage_options: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """One row per annotator: volume, speed, choice shares, biases, agreement and flags.

    Parameters
    ----------
    source
        Store, bundle, a bundle's folder or URL, or annotation DataFrame (see
        :func:`annotation_frame`).
    since, until, annotators, task_ids
        Filters (see the module docstring).
    alpha
        Family-wise significance level of each test, after Holm adjustment across annotators.
    ci_level
        Confidence level of the Clopper-Pearson intervals.
    min_n
        Annotators with fewer a/b choices (or compared labels) than this are reported but not
        tested or flagged.
    position_share_min
        Position bias flag: Holm p < ``alpha`` and share of "a" >= this (or <= 1 - this).
    length_share_min
        Length bias flag: Holm p < ``alpha`` and share choosing the longer response >= this.
        (The null is 0.5; as better answers are often somewhat longer, careful annotators
        choose the longer response 55-65% of the time, hence the effect-size threshold.)
    random_kappa_max, fast_quantile
        Random clicker flag: agreement kappa (agreement beyond the chance level of the
        annotator's own label mix) <= ``random_kappa_max`` *and* median time per item at or
        below the ``fast_quantile`` quantile of the other annotators' item times.
    min_agreement
        Low agreement flag: agreement with the leave-one-out majority below this (over at least
        ``min_n`` compared labels; not raised on top of ``random_clicker``).
    min_self_consistency, min_repeats
        Inconsistency flag: over at least ``min_repeats`` repeated items, the share labelled
        identically is *significantly* below ``min_self_consistency`` (the upper end of its
        Clopper-Pearson interval is below it), so a few unlucky repeats do not flag anyone.
    min_gold_accuracy, min_gold
        Gold flag: over at least ``min_gold`` gold labels, accuracy significantly below
        ``min_gold_accuracy`` (same rule).
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        One row per annotator, flagged annotators first (most flags first), then by id:

        - ``annotator`` (String); ``n`` (Int64): annotations, skips included;
        - ``throughput_per_day`` (Float64): annotations per active day (UTC days with >= 1),
          over the annotations with a time of their own (null when none has one);
        - ``time_median_s``, ``time_iqr_s`` (Float64): median and interquartile range of
          ``submitted_at - shown_at``; ``time_percentile`` (Float64): share of the *other*
          annotators' item times at or below this median (0.01 = faster than 99% of items);
        - ``n_untimed`` (Int64): annotations without a time of their own (no ``shown_at`` or
          ``submitted_at``), left out of throughput and drift;
        - ``share_a``, ``share_b``, ``share_tie``, ``share_skip`` (Float64): of all annotations;
        - ``n_ab`` (Int64), ``position_a_share``, ``position_ci_low``, ``position_ci_high``,
          ``position_p``, ``position_p_adj`` (Float64): share of "a" among the a/b choices whose
          display order is known, its Clopper-Pearson interval and exact binomial p-value (raw
          and Holm-adjusted); ``n_order_unknown`` (Int64): a/b choices left out because the
          source does not say which response was shown first;
        - ``n_length`` (Int64), ``length_longer_share``, ``length_ci_low``, ``length_ci_high``,
          ``length_p``, ``length_p_adj`` (Float64): the same for "chose the longer response"
          (a/b choices whose responses differ in length);
        - ``agreement_n`` (Int64), ``agreement``, ``agreement_chance``, ``agreement_kappa``
          (Float64): agreement with the leave-one-out majority, the agreement expected by chance
          from the annotator's label mix, and ``(agreement - chance) / (1 - chance)``;
        - ``n_repeated`` (Int64), ``self_consistency`` (Float64): items labelled twice or more
          (skips excluded) and the share of them labelled identically every time;
        - ``n_gold`` (Int64), ``gold_accuracy`` (Float64);
        - ``flags`` (List[String]): any of ``random_clicker``, ``position_bias``,
          ``length_bias``, ``low_agreement``, ``inconsistent``, ``low_gold_accuracy``;
        - ``flag_reason`` (String): the evidence in words, "; "-separated ("" when not flagged).

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> camp = demo.Campaign(20_000, seed=3)
    >>> rep = annotator_report(camp.frames(kinds=["annotation"])["annotation"])
    >>> flagged = rep.filter(pl.col("flags").list.len() > 0)["annotator"].to_list()
    >>> set(camp.ground_truth["random"]) <= set(flagged)
    True
    >>> set(camp.ground_truth["reliable"]) & set(flagged)
    set()
    """
    rows = _Rows(source, since=since, until=until, annotators=annotators, task_ids=task_ids)
    ctes, select = _stats_ctes(["annotator"], repeats=True, time_percentile=True)
    out = rows.run(ctes, select)
    if out.height == 0:
        return _empty_report()
    out = _finish_common(out, ci_level, min_n)
    out = out.with_columns(
        position_p_adj=pl.Series(holm(out["position_p"].to_numpy()), dtype=pl.Float64),
        length_p_adj=pl.Series(holm(out["length_p"].to_numpy()), dtype=pl.Float64),
    )
    flags, reasons = _flags(out, alpha=alpha, ci_level=ci_level, min_n=min_n,
                            position_share_min=position_share_min, length_share_min=length_share_min,
                            random_kappa_max=random_kappa_max, fast_quantile=fast_quantile,
                            min_agreement=min_agreement, min_self_consistency=min_self_consistency,
                            min_repeats=min_repeats, min_gold_accuracy=min_gold_accuracy,
                            min_gold=min_gold)
    out = out.with_columns(flags=pl.Series(flags, dtype=pl.List(pl.String)),
                           flag_reason=pl.Series(reasons, dtype=pl.String))
    return (out.select(_REPORT_COLUMNS)
            .with_columns(pl.col(c).cast(pl.Float64) for c in _REPORT_COLUMNS
                          if c not in ("annotator", "flags", "flag_reason") and not c.startswith("n"))
            .sort([pl.col("flags").list.len(), pl.col("annotator")], descending=[True, False]))


def _empty_report() -> pl.DataFrame:
    schema: dict[str, Any] = {}
    for c in _REPORT_COLUMNS:
        schema[c] = (pl.String if c in ("annotator", "flag_reason") else pl.List(pl.String) if c == "flags"
                     else pl.Int64 if c.startswith("n") else pl.Float64)
    return pl.DataFrame(schema=schema)


# --------------------------------------------------------------------------------------------
# annotator_drift
# --------------------------------------------------------------------------------------------
_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000,
             "d": _US_PER_DAY, "w": 7 * _US_PER_DAY}


def _duration_us(every: str | dt.timedelta) -> int:
    """'7d', '12h', '1w', '1d12h', '90m' or a timedelta, in microseconds."""
    if isinstance(every, dt.timedelta):
        us = int(every / dt.timedelta(microseconds=1))
    else:
        import re

        parts = re.findall(r"(\d+)\s*(us|ms|s|m|h|d|w)", str(every).strip())
        if not parts or "".join(f"{n}{u}" for n, u in parts) != str(every).replace(" ", ""):
            raise ValueError(f"cannot read the duration {every!r}; use e.g. '7d', '12h', '1w', '90m'")
        us = sum(int(n) * _UNITS_US[u] for n, u in parts)
    if us <= 0:
        raise ValueError(f"the duration must be positive, got {every!r}")
    return us


@reads_source
def annotator_drift(
    source: Source,
    window: str | dt.timedelta | int = "7d",
    *,
    since: Any = None,
    until: Any = None,
    annotators: Sequence[str] | str | None = None,
    task_ids: Sequence[str] | str | None = None,
    alpha: float = 0.01,
    ci_level: float = 0.95,
    min_window_n: int = 30,
    min_drop: float = 0.15,
    storage_options: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Key statistics per annotator per time window, and a per-annotator drift verdict.

    Windows are consecutive intervals of length ``window`` (``"7d"``, ``"1d"``, ``"12h"``, a
    timedelta) starting at the first annotation in the data (a trailing window shorter than
    half a window is merged into the one before it, so the last window is not a thin sliver),
    or ``window=k`` equal-width windows spanning it. Agreement always compares with the leave-one-out majority over *all*
    the data (so an annotator's window is judged against everyone, whenever they labelled).

    Drift verdict per annotator: their agreement in the first and the last window holding at
    least ``min_window_n`` compared labels is compared (``agreement_change``, with a
    two-proportion z-test, ``first_last_p``), and a Cochran-Armitage test for a linear trend of
    agreement over *all* their windows gives ``drift_p`` (it uses every label, so it detects a
    gradual decline sooner than the two end windows alone), Holm-adjusted across the
    annotators tested. An annotator drifts when there is a downward trend with
    ``drift_p_adj < alpha`` *and* a drop of at least ``min_drop`` between the first and the last
    window. Their change point is then the window boundary that best splits their windows into
    higher agreement before and lower agreement after (maximum binomial likelihood of the two
    segments), and ``drifting`` is true on the windows from that change point on only: the
    windows before it show the annotator as they were.

    Parameters
    ----------
    source
        Store, bundle, a bundle's folder or URL, or annotation DataFrame.
    window
        Window length or number of windows.
    since, until, annotators, task_ids
        Filters (see the module docstring).
    alpha, ci_level
        Family-wise level of the drift test; level of the intervals of the position share.
    min_window_n
        Compared labels a window needs to be a first/last window of the test.
    min_drop
        Smallest agreement drop (first minus last) that counts as drift.
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        One row per annotator and window with at least one annotation, sorted by annotator and
        window. Per window:

        - ``annotator`` (String), ``window`` (Int64, 0-based), ``window_start``,
          ``window_end`` (Datetime, exclusive; a merged last window ends after the last
          annotation);
        - ``n`` (Int64), ``throughput_per_day``, ``time_median_s``, ``share_a``, ``share_skip``,
          ``position_a_share``, ``length_longer_share`` (Float64), as in
          :func:`annotator_report`;
        - ``agreement_n`` (Int64), ``agreement``, ``agreement_kappa``, ``gold_accuracy``
          (Float64);

        and per annotator (repeated on each of its rows):

        - ``first_window``, ``last_window`` (Int64): the windows compared (null if fewer than
          two qualify);
        - ``agreement_first``, ``agreement_last``, ``agreement_change`` (Float64): last minus
          first;
        - ``first_last_p`` (Float64): two-proportion z-test of first vs last window;
        - ``drift_p``, ``drift_p_adj`` (Float64): trend test, raw and Holm-adjusted;
        - ``change_window`` (Int64), ``change_start`` (Datetime): the first window after the
          detected change point and its start (null unless the annotator drifts);
        - ``drift_reason`` (String, "" unless the annotator drifts);

        and per window again: ``drifting`` (Boolean), true on the windows from
        ``change_window`` on.

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> camp = demo.Campaign(20_000, seed=3)
    >>> d = annotator_drift(camp.frames(kinds=["annotation"])["annotation"], window="7d")
    >>> d.filter("drifting")["annotator"].unique().to_list() == camp.ground_truth["drifting"]
    True
    >>> (d.filter("drifting")["window_end"] > camp.ground_truth["drift_start"]).all()
    True
    """
    rows = _Rows(source, since=since, until=until, annotators=annotators, task_ids=task_ids)
    span = rows.run("", "SELECT epoch_us(min(t)) AS lo, epoch_us(max(t)) AS hi FROM base",
                    materialize=False)
    lo, hi = span.row(0) if span.height else (None, None)
    if lo is None:
        return _empty_drift()
    if isinstance(window, (int, np.integer)) and not isinstance(window, bool):
        if window < 1:
            raise ValueError(f"window must be a duration or a positive number of windows, got {window}")
        width = max(1, -(-(hi - lo + 1) // int(window)))  # ceil: the last event falls in window k-1
        last = int(window) - 1
    else:
        width = _duration_us(window)
        last = (hi - lo) // width
        if last >= 1 and (hi - lo) - last * width < width // 2:
            last -= 1  # merge a short trailing window into the one before it
    base = (f"SELECT *, least((epoch_us(t) - {int(lo)}) // {int(width)}, {int(last)})::BIGINT AS w "
            f"FROM ({rows.base}) AS b WHERE t IS NOT NULL")
    ctes, select = _stats_ctes(["annotator", "w"], repeats=False, time_percentile=False)
    out = rows.run(ctes, select, base=base)
    out = _finish_common(out, ci_level, min_n=1)
    origin = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(lo))
    step = dt.timedelta(microseconds=int(width))
    end = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(hi) + 1)
    out = out.with_columns(
        pl.col("w").cast(pl.Int64).alias("window"),
        (pl.lit(origin) + pl.col("w") * pl.lit(step)).cast(pl.Datetime("us")).alias("window_start"),
        pl.when(pl.col("w") == last)
        .then(pl.lit(max(origin + (last + 1) * step, end)))
        .otherwise(pl.lit(origin) + (pl.col("w") + 1) * pl.lit(step)).cast(pl.Datetime("us"))
        .alias("window_end"),
    )
    verdict = _drift_verdict(out, alpha=alpha, min_window_n=min_window_n, min_drop=min_drop)
    cols = ["annotator", "window", "window_start", "window_end", "n", "throughput_per_day",
            "time_median_s", "share_a", "share_skip", "position_a_share", "length_longer_share",
            "agreement_n", "agreement", "agreement_kappa", "gold_accuracy"]
    out = out.select(cols).join(verdict, on="annotator", how="left")
    return (out.with_columns(drifting=(pl.col("window") >= pl.col("change_window")).fill_null(False),
                             drift_reason=pl.col("drift_reason").fill_null(""))
            .select(*_empty_drift().columns).sort("annotator", "window"))


def _change_window(w: np.ndarray, k: np.ndarray, n: np.ndarray) -> int | None:
    """The window that starts the lower-agreement segment of the split of one annotator's windows
    (``w`` sorted, ``k`` of ``n`` labels agreeing) of maximum binomial likelihood, or None.

    >>> _change_window(np.arange(4), np.array([9, 9, 5, 4]), np.array([10, 10, 10, 10]))
    2
    """
    from scipy.special import xlogy

    keep = n > 0
    w, k, n = w[keep], k[keep].astype(np.float64), n[keep].astype(np.float64)
    if w.size < 2:
        return None
    k1, n1 = np.cumsum(k)[:-1], np.cumsum(n)[:-1]  # split j: windows [0, j] before, (j, end] after
    k2, n2 = k.sum() - k1, n.sum() - n1
    p1, p2 = k1 / n1, k2 / n2
    ll = xlogy(k1, p1) + xlogy(n1 - k1, 1 - p1) + xlogy(k2, p2) + xlogy(n2 - k2, 1 - p2)
    ll = np.where(p2 < p1, ll, -np.inf)  # a fall, not a rise
    return int(w[int(np.argmax(ll)) + 1]) if np.isfinite(ll).any() else None


def _trend_p(out: pl.DataFrame) -> pl.DataFrame:
    """Cochran-Armitage test for a linear trend of agreement over window index, per annotator."""
    g = out.filter(pl.col("agreement_n") > 0).with_columns(
        x=pl.col("w").cast(pl.Float64), n_=pl.col("agreement_n").cast(pl.Float64),
        k_=pl.col("agreement_k").cast(pl.Float64))
    s = g.group_by("annotator").agg(
        N=pl.col("n_").sum(), K=pl.col("k_").sum(), Sx=(pl.col("n_") * pl.col("x")).sum(),
        Sxx=(pl.col("n_") * pl.col("x") ** 2).sum(), Skx=(pl.col("k_") * pl.col("x")).sum())
    pbar = pl.col("K") / pl.col("N")
    t = pl.col("Skx") - pbar * pl.col("Sx")
    var = pbar * (1 - pbar) * (pl.col("Sxx") - pl.col("Sx") ** 2 / pl.col("N"))
    s = s.with_columns(z=pl.when(var > 0).then(t / var.sqrt()))
    z = s["z"].to_numpy().astype(np.float64)
    return s.select("annotator", trend_z=pl.Series(z, dtype=pl.Float64),
                    drift_p=pl.Series(2 * stats.norm.sf(np.abs(z)), dtype=pl.Float64))


def _drift_verdict(out: pl.DataFrame, *, alpha: float, min_window_n: int, min_drop: float) -> pl.DataFrame:
    ok = out.filter(pl.col("agreement_n") >= min_window_n).sort("annotator", "w")
    ends = ok.group_by("annotator").agg(
        first_window=pl.col("w").first().cast(pl.Int64), last_window=pl.col("w").last().cast(pl.Int64),
        n1=pl.col("agreement_n").first(), k1=pl.col("agreement_k").first(),
        n2=pl.col("agreement_n").last(), k2=pl.col("agreement_k").last(),
        s1=pl.col("position_a_share").first(), s2=pl.col("position_a_share").last(),
        m1=pl.col("time_median_s").first(), m2=pl.col("time_median_s").last(),
        start1=pl.col("window_start").first(), start2=pl.col("window_start").last(),
    ).sort("annotator").join(_trend_p(out), on="annotator", how="left")
    two = (ends["first_window"] != ends["last_window"]).to_numpy()
    p2 = np.where(two, _two_proportion(ends["k1"].to_numpy(), ends["n1"].to_numpy(),
                                       ends["k2"].to_numpy(), ends["n2"].to_numpy()), np.nan)
    p = np.where(two, ends["drift_p"].to_numpy().astype(np.float64), np.nan)
    ends = ends.with_columns(
        first_window=pl.when(pl.Series(two)).then(pl.col("first_window")),
        last_window=pl.when(pl.Series(two)).then(pl.col("last_window")),
        agreement_first=pl.col("k1") / pl.col("n1"),
        agreement_last=pl.col("k2") / pl.col("n2"),
        first_last_p=pl.Series(p2, dtype=pl.Float64),
        drift_p=pl.Series(p, dtype=pl.Float64),
        drift_p_adj=pl.Series(holm(p), dtype=pl.Float64),
    ).with_columns(agreement_change=pl.when(pl.Series(two))
                   .then(pl.col("agreement_last") - pl.col("agreement_first")))
    series = (out.filter(pl.col("agreement_n") > 0).sort("w").group_by("annotator")
              .agg("w", "agreement_k", "agreement_n", "window_start"))
    series = {r[0]: r[1:] for r in series.iter_rows()}
    changes, starts, reasons = [], [], []
    for r in ends.iter_rows(named=True):
        change, padj = r["agreement_change"], r["drift_p_adj"]
        hit = (change is not None and padj is not None and not math.isnan(padj)
               and padj < alpha and -change >= min_drop and (r["trend_z"] or 0) < 0)
        w, k, n, start = (np.array(x) for x in series[r["annotator"]])
        cw = _change_window(w, k, n) if hit else None
        changes.append(cw)
        starts.append(start[w == cw][0] if cw is not None else None)
        if cw is None:
            reasons.append("")
            continue
        after = w >= cw
        before_rate, after_rate = k[~after].sum() / n[~after].sum(), k[after].sum() / n[after].sum()
        extra = []
        if r["s1"] is not None and r["s2"] is not None and abs(r["s2"] - r["s1"]) >= 0.1:
            extra.append(f"chose A {_pct(r['s1'])} -> {_pct(r['s2'])}")
        if r["m1"] and r["m2"] and (r["m2"] < 0.75 * r["m1"] or r["m2"] > 1.33 * r["m1"]):
            extra.append(f"median time {r['m1']:.0f} s -> {r['m2']:.0f} s")
        reasons.append(
            f"agreement fell from {r['agreement_first']:.2f} (window from {r['start1']:%Y-%m-%d}, "
            f"n={r['n1']}) to {r['agreement_last']:.2f} (from {r['start2']:%Y-%m-%d}, n={r['n2']}); "
            f"downward trend {_fmt_p(padj)} (Holm); changed from {starts[-1]:%Y-%m-%d} (window {cw}): "
            f"{before_rate:.2f} before, {after_rate:.2f} since" + ("; " + ", ".join(extra) if extra else ""))
    return ends.select(
        "annotator", "first_window", "last_window", "agreement_first", "agreement_last",
        "agreement_change", "first_last_p", "drift_p", "drift_p_adj",
        change_window=pl.Series(changes, dtype=pl.Int64),
        change_start=pl.Series(starts, dtype=pl.Datetime("us")),
        drift_reason=pl.Series(reasons, dtype=pl.String))


def _empty_drift() -> pl.DataFrame:
    f, i = pl.Float64, pl.Int64
    schema = {"annotator": pl.String, "window": i, "window_start": pl.Datetime("us"),
              "window_end": pl.Datetime("us"), "n": i, "throughput_per_day": f, "time_median_s": f,
              "share_a": f, "share_skip": f, "position_a_share": f, "length_longer_share": f,
              "agreement_n": i, "agreement": f, "agreement_kappa": f, "gold_accuracy": f,
              "first_window": i, "last_window": i, "agreement_first": f, "agreement_last": f,
              "agreement_change": f, "first_last_p": f, "drift_p": f, "drift_p_adj": f, "change_window": i,
              "change_start": pl.Datetime("us"), "drift_reason": pl.String, "drifting": pl.Boolean}
    return pl.DataFrame(schema=schema)


# --------------------------------------------------------------------------------------------
# throughput and pairwise agreement
# --------------------------------------------------------------------------------------------
@reads_source
def throughput(
    source: Source,
    every: str | dt.timedelta = "1d",
    *,
    since: Any = None,
    until: Any = None,
    annotators: Sequence[str] | str | None = None,
    task_ids: Sequence[str] | str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Annotations per annotator per calendar period (a timeline for plots).

    Periods are DuckDB ``time_bucket`` intervals: days start at midnight UTC and 7-day periods on
    Mondays. Periods without annotations are absent.

    Parameters
    ----------
    source
        Store, bundle, a bundle's folder or URL, or annotation DataFrame.
    every
        Period length: ``"1d"``, ``"1h"``, ``"7d"``, ... or a timedelta.
    since, until, annotators, task_ids
        Filters (see the module docstring).
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        Sorted by annotator and period:

        - ``annotator`` (String), ``period_start`` (Datetime);
        - ``n`` (Int64): annotations in the period, ``n_skip`` (Int64): of which skips;
        - ``time_median_s`` (Float64): median time per item;
        - ``cumulative_n`` (Int64): the annotator's running total.

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> ann = demo.Campaign(2_000, seed=0).frames(kinds=["annotation"])["annotation"]
    >>> tl = throughput(ann, every="1d")
    >>> int(tl["n"].sum()) == ann.height
    True
    """
    us = _duration_us(every)
    rows = _Rows(source, since=since, until=until, annotators=annotators, task_ids=task_ids)
    out = rows.run("", f"""
        SELECT annotator, time_bucket(to_microseconds({us}::BIGINT), t) AS period_start,
               count(*) AS n, count(*) FILTER (choice = 'skip') AS n_skip,
               median(secs) AS time_median_s
        FROM base WHERE t IS NOT NULL GROUP BY ALL ORDER BY annotator, period_start""",
                   materialize=False)
    return out.with_columns(
        pl.col("period_start").cast(pl.Datetime("us")), pl.col("n", "n_skip").cast(pl.Int64),
        pl.col("time_median_s").cast(pl.Float64),
        cumulative_n=pl.col("n").cast(pl.Int64).cum_sum().over("annotator"),
    )


@reads_source
def agreement_matrix(
    source: Source,
    *,
    min_overlap: int = 1,
    wide: bool = False,
    since: Any = None,
    until: Any = None,
    annotators: Sequence[str] | str | None = None,
    task_ids: Sequence[str] | str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Pairwise Cohen's kappa between annotators (as :func:`~.agreement.pairwise` computes it).

    Items are prompt + unordered response pair, labels the (mirrored) choice among a, b, tie;
    skips are dropped and an annotator's repeat of an item counts once (the first label). The
    pairs are joined in DuckDB next to the data; only their label counts come back to Python
    (:func:`~.agreement.pairwise_from_counts`).

    Parameters
    ----------
    source
        Store, bundle, a bundle's folder or URL, or annotation DataFrame.
    min_overlap
        Keep pairs with at least this many shared items.
    wide
        Return a square matrix instead: column ``annotator`` plus one Float64 column of kappas
        per annotator (symmetric, 1.0 on the diagonal, null where a pair shares too few items).
    since, until, annotators, task_ids
        Filters (see the module docstring).
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    pl.DataFrame
        Long (default): ``annotator_a``, ``annotator_b`` (String), ``n`` (Int64),
        ``kappa``, ``percent_agreement`` (Float64), as :func:`~.agreement.pairwise`.

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> ann = demo.Campaign(2_000, seed=0).frames(kinds=["annotation"])["annotation"]
    >>> m = agreement_matrix(ann, min_overlap=5)
    >>> m.columns
    ['annotator_a', 'annotator_b', 'n', 'kappa', 'percent_agreement']
    """
    rows = _Rows(source, since=since, until=until, annotators=annotators, task_ids=task_ids)
    # The self-join runs next to the data; only each pair's label contingency counts come back.
    counts = rows.run("""labels AS MATERIALIZED (
            SELECT item, annotator, arg_min(label, seq) AS label
            FROM base WHERE choice <> 'skip' GROUP BY item, annotator)""", """
        SELECT l.annotator AS annotator_a, r.annotator AS annotator_b, l.label AS label_a,
               r.label AS label_b, count(*) AS k
        FROM labels AS l JOIN labels AS r ON l.item = r.item AND l.annotator < r.annotator
        GROUP BY ALL""", materialize=False)
    out = pairwise_from_counts(counts.cast({"annotator_a": pl.String, "annotator_b": pl.String}),
                               min_overlap=min_overlap)
    if not wide:
        return out
    names = sorted(rows.run("", "SELECT DISTINCT annotator FROM base WHERE choice <> 'skip'",
                            materialize=False)["annotator"].to_list())
    both = pl.concat([
        out.select("annotator_a", "annotator_b", "kappa"),
        out.select(pl.col("annotator_b").alias("annotator_a"), pl.col("annotator_a").alias("annotator_b"),
                   "kappa"),
        pl.DataFrame({"annotator_a": names, "annotator_b": names, "kappa": [1.0] * len(names)},
                     schema={"annotator_a": pl.String, "annotator_b": pl.String, "kappa": pl.Float64}),
    ])
    wide_df = both.pivot(on="annotator_b", index="annotator_a", values="kappa")
    missing = [n for n in names if n not in wide_df.columns]
    wide_df = wide_df.with_columns(pl.lit(None, pl.Float64).alias(n) for n in missing)
    return (pl.DataFrame({"annotator_a": names}).join(wide_df, on="annotator_a", how="left")
            .select(pl.col("annotator_a").alias("annotator"), *names))


def _upper_bound_below(rate: float | None, n: int, min_n: int, threshold: float, level: float) -> float | None:
    """The Clopper-Pearson upper bound of ``rate`` over ``n`` items if it lies below ``threshold``
    (so the shortfall is not chance), else None; None too when there are fewer than ``min_n`` items."""
    if n < min_n or rate is None:
        return None
    hi = float(_clopper_pearson(round(rate * n), n, level)[1])
    return hi if hi < threshold else None

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
            lo, hi = ((r["position_ci_low"], r["position_ci_high"]) if side == "A"
                      else (1 - r["position_ci_high"], 1 - r["position_ci_low"]))
            why.append(f"position bias: chose {side} {_pct(s)} of {r['n_ab']:,} a/b choices "
                       f"({_fmt_p(p)} Holm-adjusted, {100 * ci_level:g}% CI {lo:.2f}-{hi:.2f})")
        p = r["length_p_adj"]
        share = r["length_longer_share"]
        if (r["n_length"] >= min_n and p is not None and not math.isnan(p) and p < alpha
                and share >= length_share_min):
            f.append("length_bias")
            why.append(f"length bias: chose the longer response {_pct(share)} of {r['n_length']:,} "
                       f"times ({_fmt_p(p)} Holm-adjusted, {100 * ci_level:g}% CI "
                       f"{r['length_ci_low']:.2f}-{r['length_ci_high']:.2f})")
        if enough_agree and agr < min_agreement and "random_clicker" not in f:
            f.append("low_agreement")
            why.append(f"low agreement: {agr:.2f} with the other annotators' majority over "
                       f"{r['agreement_n']:,} items (threshold {min_agreement:.2f})")
        sc, n_rep = r["self_consistency"], r["n_repeated"]
        hi = _upper_bound_below(sc, n_rep, min_repeats, min_self_consistency, ci_level)
        if hi is not None:
            f.append("inconsistent")
            why.append(f"inconsistent: same label on only {_pct(sc)} of {n_rep} repeated items "
                       f"({100 * ci_level:g}% CI up to {hi:.2f}, below {min_self_consistency:.2f})")
        ga, n_gold = r["gold_accuracy"], r["n_gold"]
        hi = _upper_bound_below(ga, n_gold, min_gold, min_gold_accuracy, ci_level)
        if hi is not None:
            f.append("low_gold_accuracy")
            why.append(f"gold accuracy {_pct(ga)} on {n_gold} gold items ({100 * ci_level:g}% CI "
                       f"up to {hi:.2f}, below {min_gold_accuracy:.2f})")
        flags.append(f)
        reasons.append("; ".join(why))
    return flags, reasons
