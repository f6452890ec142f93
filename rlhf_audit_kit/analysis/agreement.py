"""Inter-annotator agreement over a long table of labels.

Every function takes a polars DataFrame with one row per (item, annotator) label. The column
names default to ``item``, ``annotator`` and ``label`` and can be renamed with the keywords
``item=``, ``annotator=`` and ``label=``. Conventions shared by all functions:

* a null label (or a NaN float label) means "not labelled" and the row is dropped;
* a null ``item`` or ``annotator`` is an error, and so is a duplicated (item, annotator) pair;
* a statistic that is undefined on the data (no pairable item, a single category, ...) is
  returned as ``nan`` rather than raised, so bootstrap replicates and per-pair tables stay
  computable (the reference packages either raise or return ``nan`` there).

All computations are vectorised (polars group-bys and sparse/dense numpy counts); the only
Python loop is over bootstrap replicates.

Examples
--------
>>> import polars as pl
>>> labels = pl.DataFrame({
...     "item": [1, 1, 1, 2, 2, 2, 3, 3, 4],
...     "annotator": ["x", "y", "z", "x", "y", "z", "x", "y", "z"],
...     "label": ["a", "a", "b", "b", "b", "b", "a", "b", "a"],
... })
>>> round(krippendorff_alpha(labels), 4)
0.0667
>>> round(percent_agreement(labels), 4)
0.4444
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl
import scipy.sparse as sp

__all__ = [
    "BootstrapCI",
    "bootstrap_ci",
    "cohen_kappa",
    "fleiss_kappa",
    "krippendorff_alpha",
    "pairwise",
    "pairwise_from_counts",
    "percent_agreement",
]

Level = Literal["nominal", "ordinal", "interval", "ratio"]
_LEVELS = ("nominal", "ordinal", "interval", "ratio")


# --------------------------------------------------------------------------------------------
# validation and encoding
# --------------------------------------------------------------------------------------------
def _prepare(labels: pl.DataFrame, item: str, annotator: str, label: str) -> pl.DataFrame:
    """Validate ``labels`` and return it as columns ``item, annotator, label`` without missing labels."""
    if isinstance(labels, pl.LazyFrame):
        labels = labels.collect()
    if not isinstance(labels, pl.DataFrame):
        raise TypeError(f"labels must be a polars DataFrame, got {type(labels).__name__}")
    for role, col in (("item", item), ("annotator", annotator), ("label", label)):
        if col not in labels.columns:
            raise ValueError(f"labels has no {role} column {col!r} (columns: {labels.columns})")
    if len({item, annotator, label}) != 3:
        raise ValueError(f"item, annotator and label must be three different columns, got "
                         f"{item!r}, {annotator!r}, {label!r}")
    # Select before renaming so that unrelated columns called "item"/"label" cannot collide.
    df = labels.select(pl.col(item).alias("item"), pl.col(annotator).alias("annotator"),
                       pl.col(label).alias("label"))
    for role, col in (("item", item), ("annotator", annotator)):
        if df[role].null_count():
            raise ValueError(f"column {col!r} contains null values")
    # Categorical comparisons/sorts are physical in some polars versions; strings are unambiguous.
    casts = [pl.col(c).cast(pl.String) for c in ("item", "annotator", "label")
             if isinstance(df.schema[c], (pl.Categorical, pl.Enum))]
    if casts:
        df = df.with_columns(casts)
    missing = pl.col("label").is_null()
    if df.schema["label"].is_float():
        missing = missing | pl.col("label").is_nan()
    df = df.filter(~missing)
    dup = df.select("item", "annotator").is_duplicated()
    if dup.any():
        first = df.filter(dup).row(0, named=True)
        raise ValueError(
            f"duplicated ({item!r}, {annotator!r}) pair: {first['item']!r}, {first['annotator']!r} "
            f"has {int(dup.sum())} rows in total; keep one label per annotator and item")
    return df


def _codes(df: pl.DataFrame, value_domain: Sequence[Any] | None, label: str
           ) -> tuple[np.ndarray, pl.Series]:
    """Integer codes of the labels (0..V-1) and the ordered value domain they index."""
    if value_domain is None:
        # Dense rank == position in the sorted unique labels, for numbers and strings alike.
        domain = df["label"].unique().sort()
        codes = (df["label"].rank("dense") - 1).cast(pl.Int64).to_numpy()
        return codes, domain
    try:
        domain = pl.Series("label", list(value_domain)).cast(df.schema["label"], strict=True)
    except Exception as exc:  # noqa: BLE001 - polars raises several types for bad casts
        raise ValueError(f"value_domain cannot be cast to the dtype of column {label!r} "
                         f"({df.schema['label']}): {exc}") from exc
    if domain.null_count() or domain.is_duplicated().any():
        raise ValueError("value_domain must hold distinct, non-null values")
    lookup = pl.DataFrame({"label": domain, "_code": np.arange(len(domain), dtype=np.int64)})
    joined = df.select("label").join(lookup, on="label", how="left", maintain_order="left")
    if joined["_code"].null_count():
        bad = joined.filter(pl.col("_code").is_null())["label"].unique().sort().head(5).to_list()
        raise ValueError(f"column {label!r} holds values outside value_domain: {bad}")
    return joined["_code"].to_numpy(), domain


def _dense_index(s: pl.Series) -> np.ndarray:
    return (s.rank("dense") - 1).cast(pl.Int64).to_numpy()


def _safe_div(num: float, den: float) -> float:
    return float(num / den) if den != 0 else float("nan")


# --------------------------------------------------------------------------------------------
# Krippendorff's alpha
# --------------------------------------------------------------------------------------------
def _distance_matrix(level: str, domain: pl.Series, n_v: np.ndarray, label: str) -> np.ndarray:
    """Squared-difference functions delta^2(c, k) of Krippendorff (2011), as a V x V matrix."""
    V = len(domain)
    if level == "nominal":
        return 1.0 - np.eye(V)
    if level == "ordinal":
        # delta(c,k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 over ranks, as the krippendorff package.
        cum = np.concatenate(([0.0], np.cumsum(n_v)))
        lo = np.minimum.outer(np.arange(V), np.arange(V))
        hi = np.maximum.outer(np.arange(V), np.arange(V))
        between = cum[hi + 1] - cum[lo]
        return (between - (n_v[:, None] + n_v[None, :]) / 2.0) ** 2
    if not domain.dtype.is_numeric():
        raise ValueError(f"level={level!r} needs a numeric column {label!r}, got {domain.dtype}")
    v = domain.cast(pl.Float64).to_numpy()
    diff = v[:, None] - v[None, :]
    if level == "interval":
        return diff**2
    total = v[:, None] + v[None, :]
    # Ratio metric ((c-k)/(c+k))^2, taken as 0 where c + k = 0 (as the krippendorff package).
    ratio = np.divide(diff, total, out=np.zeros_like(diff), where=total != 0)
    return ratio**2


def krippendorff_alpha(labels: pl.DataFrame, level: Level = "nominal",
                       value_domain: Sequence[Any] | None = None, *, item: str = "item",
                       annotator: str = "annotator", label: str = "label") -> float:
    """Krippendorff's alpha of reliability, with missing labels allowed.

    Uses the coincidence-matrix formulation of Krippendorff (2011, "Computing Krippendorff's
    Alpha-Reliability"): ``o_ck = sum_u n_uc n_uk / (m_u - 1)`` (with ``n_uc (n_uc - 1)`` on the
    diagonal) over items ``u`` with ``m_u >= 2`` labels, expected coincidences
    ``e_ck = n_c (n_k - [c == k]) / (n - 1)``, and ``alpha = 1 - sum(o * d) / sum(e * d)``.
    Items with fewer than two labels are not pairable and are ignored.

    Parameters
    ----------
    labels
        Long table, one row per (item, annotator) label.
    level
        ``"nominal"``, ``"ordinal"``, ``"interval"`` or ``"ratio"``. Interval and ratio need a
        numeric label column. The ordinal distance is rank based and uses the observed category
        frequencies, exactly as the ``krippendorff`` package.
    value_domain
        Ordered possible values (needed for a custom ordinal order such as
        ``["bad", "ok", "good"]``). Default: the categories of a ``pl.Enum`` label column in
        their declared order, else the sorted unique labels. Labels outside it raise.
    item, annotator, label
        Column names.

    Returns
    -------
    float
        Alpha, or ``nan`` when it is undefined: no item has two labels, or only one category is
        used (``krippendorff.alpha`` raises for these when the domain has one value).

    Raises
    ------
    ValueError
        Missing columns, null items/annotators, duplicated (item, annotator) pairs, an unknown
        level, a non-numeric label column for interval/ratio, labels outside ``value_domain``.

    Notes
    -----
    Memory is O(V^2) in the number of distinct labels V (the coincidence matrix).

    Examples
    --------
    >>> import polars as pl
    >>> labels = pl.DataFrame({"item": [1, 1, 2, 2, 3, 3, 3],
    ...                        "annotator": ["a", "b", "a", "b", "a", "b", "c"],
    ...                        "label": [1, 1, 2, 3, 3, 3, 3]})
    >>> round(krippendorff_alpha(labels, level="interval"), 4)
    0.8421
    """
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {_LEVELS}, got {level!r}")
    if value_domain is None and isinstance(labels, pl.DataFrame) and label in labels.columns \
            and isinstance(labels.schema[label], pl.Enum):
        # An Enum declares its order: use it as the ordinal domain (labels become strings below).
        value_domain = labels.schema[label].categories.to_list()
    df = _prepare(labels, item, annotator, label)
    if level in ("interval", "ratio") and not df.schema["label"].is_numeric():
        raise ValueError(f"level={level!r} needs a numeric column {label!r}, got {df.schema['label']}")
    if df.height == 0:
        return float("nan")
    codes, domain = _codes(df, value_domain, label)
    V = len(domain)
    rows = _dense_index(df["item"])
    # Item x value count matrix; sparse because there are many items and few labels per item.
    counts = sp.csr_matrix((np.ones(len(codes)), (rows, codes)), shape=(int(rows.max()) + 1, V))
    m_u = np.asarray(counts.sum(axis=1)).ravel()
    pairable = m_u >= 2
    if not pairable.any():
        return float("nan")
    counts = counts[pairable]
    w = 1.0 / (m_u[pairable] - 1.0)
    weighted = sp.diags(w) @ counts
    o = np.asarray((counts.T @ weighted).todense()) - np.diag(np.asarray(weighted.sum(axis=0)).ravel())
    n_v = o.sum(axis=0)
    n = n_v.sum()
    e = (np.outer(n_v, n_v) - np.diag(n_v)) / (n - 1.0)
    d = _distance_matrix(level, domain, n_v, label)
    return 1.0 - _safe_div(float((o * d).sum()), float((e * d).sum()))


# --------------------------------------------------------------------------------------------
# kappas and raw agreement
# --------------------------------------------------------------------------------------------
def fleiss_kappa(labels: pl.DataFrame, *, item: str = "item", annotator: str = "annotator",
                 label: str = "label") -> float:
    """Fleiss' kappa over the items labelled by every annotator.

    Fleiss' kappa needs the same number of ratings per item, so only the items that *all*
    annotators present in ``labels`` labelled are used (other items are silently skipped);
    use :func:`krippendorff_alpha` to use every label. Matches
    ``statsmodels.stats.inter_rater.fleiss_kappa(table, method="fleiss")`` on that table.

    Parameters
    ----------
    labels
        Long table, one row per (item, annotator) label.
    item, annotator, label
        Column names.

    Returns
    -------
    float
        Kappa, or ``nan`` when undefined (fewer than two annotators, no complete item, or a
        single category used).

    Examples
    --------
    >>> import polars as pl
    >>> labels = pl.DataFrame({"item": [1, 1, 1, 2, 2, 2, 3, 3],
    ...                        "annotator": ["a", "b", "c"] * 2 + ["a", "b"],
    ...                        "label": ["x", "x", "y", "y", "y", "y", "x", "y"]})
    >>> round(fleiss_kappa(labels), 4)  # item 3 is skipped: "c" did not label it
    0.25
    """
    df = _prepare(labels, item, annotator, label)
    n_rat = df["annotator"].n_unique()
    if n_rat < 2:
        return float("nan")
    df = df.filter(pl.len().over("item") == n_rat)
    if df.height == 0:
        return float("nan")
    codes = _dense_index(df["label"])
    rows = _dense_index(df["item"])
    n_sub, n_cat = int(rows.max()) + 1, int(codes.max()) + 1
    table = np.bincount(rows * n_cat + codes, minlength=n_sub * n_cat).reshape(n_sub, n_cat)
    table = table.astype(np.float64)
    p_cat = table.sum(axis=0) / table.sum()
    p_rat = ((table * table).sum(axis=1) - n_rat) / (n_rat * (n_rat - 1.0))
    p_mean, p_exp = p_rat.mean(), (p_cat * p_cat).sum()
    return _safe_div(p_mean - p_exp, 1.0 - p_exp)


def _kappa_from_confusion(confusion: np.ndarray, weights: str | None) -> float:
    """Cohen's kappa as ``1 - sum(w * O) / sum(w * E)`` (scikit-learn's formulation)."""
    n_cls = confusion.shape[0]
    total = confusion.sum()
    if total == 0:
        return float("nan")
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / total
    idx = np.arange(n_cls, dtype=np.float64)
    if weights is None:
        w = 1.0 - np.eye(n_cls)
    elif weights == "linear":
        w = np.abs(idx[:, None] - idx[None, :])
    else:
        w = (idx[:, None] - idx[None, :]) ** 2
    return 1.0 - _safe_div(float((w * confusion).sum()), float((w * expected).sum()))


def cohen_kappa(labels: pl.DataFrame, a: Any, b: Any,
                weights: Literal["linear", "quadratic"] | None = None, *, item: str = "item",
                annotator: str = "annotator", label: str = "label") -> float:
    """Cohen's kappa between annotators ``a`` and ``b`` over the items both labelled.

    Matches ``sklearn.metrics.cohen_kappa_score`` on the paired labels; for weighted kappa the
    categories are the sorted union of both annotators' labels and the weights use their rank
    distance ``|i - j|`` (linear) or ``(i - j)^2`` (quadratic), as scikit-learn does.

    Parameters
    ----------
    labels
        Long table, one row per (item, annotator) label.
    a, b
        The two annotators (values of the annotator column).
    weights
        ``None`` (unweighted), ``"linear"`` or ``"quadratic"``.
    item, annotator, label
        Column names.

    Returns
    -------
    float
        Kappa, or ``nan`` when undefined (no shared item, or both used one and the same label).

    Raises
    ------
    ValueError
        ``a`` or ``b`` does not occur in the annotator column, or ``weights`` is unknown.

    Examples
    --------
    >>> import polars as pl
    >>> labels = pl.DataFrame({"item": [1, 2, 3, 4, 1, 2, 3, 4],
    ...                        "annotator": ["a"] * 4 + ["b"] * 4,
    ...                        "label": [1, 2, 3, 3, 1, 2, 2, 3]})
    >>> round(cohen_kappa(labels, "a", "b"), 4)
    0.6364
    """
    if weights not in (None, "linear", "quadratic"):
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    df = _prepare(labels, item, annotator, label)
    present = set(df["annotator"].unique().to_list())
    for who in (a, b):
        if who not in present:
            raise ValueError(f"annotator {who!r} has no labels in column {annotator!r}")
    la = df.filter(pl.col("annotator") == a).select("item", "label")
    lb = df.filter(pl.col("annotator") == b).select("item", pl.col("label").alias("label_b"))
    both = la.join(lb, on="item", how="inner")
    if both.height == 0:
        return float("nan")
    # Codes over the sorted union of both label columns (scikit-learn's unique_labels order).
    union = pl.concat([both["label"], both["label_b"].rename("label")])
    codes = _dense_index(union)
    n = both.height
    n_cls = int(codes.max()) + 1
    confusion = np.bincount(codes[:n] * n_cls + codes[n:], minlength=n_cls * n_cls)
    return _kappa_from_confusion(confusion.reshape(n_cls, n_cls).astype(np.float64), weights)


def percent_agreement(labels: pl.DataFrame, *, item: str = "item", annotator: str = "annotator",
                      label: str = "label") -> float:
    """Mean pairwise percent agreement over the items with at least two labels.

    For each item with ``m >= 2`` labels, the share of its ``m (m - 1) / 2`` annotator pairs
    that gave the same label; then the mean over items (each item weighs the same, as in
    Fleiss' ``P-bar``). For two annotators this is the plain share of identical labels.

    Parameters
    ----------
    labels
        Long table, one row per (item, annotator) label.
    item, annotator, label
        Column names.

    Returns
    -------
    float
        Agreement in [0, 1], or ``nan`` if no item has two labels.

    Examples
    --------
    >>> import polars as pl
    >>> labels = pl.DataFrame({"item": [1, 1, 1, 2, 2], "annotator": ["a", "b", "c", "a", "b"],
    ...                        "label": ["x", "x", "y", "y", "y"]})
    >>> round(percent_agreement(labels), 4)  # item 1: 1 of 3 pairs agree; item 2: 1 of 1
    0.6667
    """
    df = _prepare(labels, item, annotator, label)
    per_item = (
        df.group_by("item", "label").agg(pl.len().cast(pl.Float64).alias("k"))
        .group_by("item")
        .agg(agree=(pl.col("k") * (pl.col("k") - 1)).sum(), m=pl.col("k").sum())
        .filter(pl.col("m") >= 2)
    )
    if per_item.height == 0:
        return float("nan")
    return float(per_item.select((pl.col("agree") / (pl.col("m") * (pl.col("m") - 1))).mean()).item())


def pairwise(labels: pl.DataFrame, min_overlap: int = 1, *, item: str = "item",
             annotator: str = "annotator", label: str = "label") -> pl.DataFrame:
    """Cohen's kappa and percent agreement for every pair of annotators who share items.

    A self-join on the item column gives every co-labelled (item, a, b) triple once (with
    ``a < b`` in the sort order of the annotator column); kappa is then assembled from grouped
    counts (agreements and per-annotator label margins), with no loop over pairs.

    Parameters
    ----------
    labels
        Long table, one row per (item, annotator) label.
    min_overlap
        Keep only pairs who labelled at least this many common items.
    item, annotator, label
        Column names.

    Returns
    -------
    pl.DataFrame
        One row per pair, sorted by ``annotator_a, annotator_b``:

        - ``annotator_a``, ``annotator_b`` (dtype of the annotator column): the pair, ``a < b``;
        - ``n`` (Int64): items both labelled;
        - ``kappa`` (Float64): unweighted Cohen's kappa on those items (``nan`` when both used
          one and the same label), equal to :func:`cohen_kappa`;
        - ``percent_agreement`` (Float64): share of those items with identical labels.

    Examples
    --------
    >>> import polars as pl
    >>> labels = pl.DataFrame({"item": [1, 2, 3, 1, 2, 3, 1, 2],
    ...                        "annotator": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
    ...                        "label": ["x", "y", "x", "x", "y", "y", "x", "x"]})
    >>> pairwise(labels).select("annotator_a", "annotator_b", "n", "percent_agreement")
    shape: (3, 4)
    ┌─────────────┬─────────────┬─────┬───────────────────┐
    │ annotator_a ┆ annotator_b ┆ n   ┆ percent_agreement │
    │ ---         ┆ ---         ┆ --- ┆ ---               │
    │ str         ┆ str         ┆ i64 ┆ f64               │
    ╞═════════════╪═════════════╪═════╪═══════════════════╡
    │ a           ┆ b           ┆ 3   ┆ 0.666667          │
    │ a           ┆ c           ┆ 2   ┆ 0.5               │
    │ b           ┆ c           ┆ 2   ┆ 0.5               │
    └─────────────┴─────────────┴─────┴───────────────────┘
    """
    if not isinstance(min_overlap, (int, np.integer)) or min_overlap < 1:
        raise ValueError(f"min_overlap must be a positive integer, got {min_overlap!r}")
    df = _prepare(labels, item, annotator, label)
    left = df.rename({"annotator": "annotator_a", "label": "label_a"})
    right = df.rename({"annotator": "annotator_b", "label": "label_b"})
    pairs = left.join(right, on="item", how="inner").filter(
        pl.col("annotator_a") < pl.col("annotator_b"))
    counts = pairs.group_by("annotator_a", "annotator_b", "label_a", "label_b").agg(k=pl.len())
    return pairwise_from_counts(counts, min_overlap).cast(
        {"annotator_a": df.schema["annotator"], "annotator_b": df.schema["annotator"]})


def pairwise_from_counts(counts: pl.DataFrame, min_overlap: int = 1) -> pl.DataFrame:
    """:func:`pairwise` from each pair's label contingency counts instead of the labels.

    ``counts`` has ``annotator_a``, ``annotator_b`` (``a < b``), ``label_a``, ``label_b`` and ``k``:
    the items on which ``a`` gave ``label_a`` and ``b`` gave ``label_b``. That table is small (pairs
    x labels^2), so a database can build it next to the data (a self-join on the item and a
    ``GROUP BY``) and only it crosses into Python; the result is :func:`pairwise`'s, exactly.

    Examples
    --------
    >>> import polars as pl
    >>> counts = pl.DataFrame({"annotator_a": ["a", "a"], "annotator_b": ["b", "b"],
    ...                        "label_a": ["x", "y"], "label_b": ["x", "x"], "k": [2, 1]})
    >>> pairwise_from_counts(counts)["percent_agreement"].to_list()
    [0.6666666666666666]
    """
    if not isinstance(min_overlap, (int, np.integer)) or min_overlap < 1:
        raise ValueError(f"min_overlap must be a positive integer, got {min_overlap!r}")
    key = ["annotator_a", "annotator_b"]
    k = pl.col("k").cast(pl.Float64)  # counts are integers: every sum below is exact
    stats = counts.group_by(key).agg(
        n=pl.col("k").sum().cast(pl.Int64),
        agree=k.filter(pl.col("label_a") == pl.col("label_b")).sum(),
    ).filter(pl.col("n") >= min_overlap)
    # Chance agreement sum_c r_c s_c from the two label margins of each pair.
    margin_a = counts.group_by(*key, "label_a").agg(r=k.sum())
    margin_b = counts.group_by(*key, "label_b").agg(s=k.sum())
    chance = (margin_a.join(margin_b, left_on=[*key, "label_a"], right_on=[*key, "label_b"])
              .group_by(key).agg(rs=(pl.col("r") * pl.col("s")).sum()))
    n = pl.col("n").cast(pl.Float64)
    # Same algebra as scikit-learn: kappa = 1 - (n - agree) / (n - sum_c r_c s_c / n).
    den = n - pl.col("rs").fill_null(0.0) / n
    return (
        stats.join(chance, on=key, how="left")
        .select(
            *key, "n",
            kappa=pl.when(den != 0).then(1.0 - (n - pl.col("agree")) / den).otherwise(float("nan")),
            percent_agreement=pl.col("agree") / n,
        )
        .sort(key)
    )


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
class BootstrapCI(NamedTuple):
    """A percentile bootstrap confidence interval.

    Attributes: ``estimate`` (the statistic on the full data), ``low``, ``high`` (the interval),
    ``level``, ``n_boot`` (replicates drawn) and ``n_valid`` (replicates with a finite value;
    the interval uses only those).
    """

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    n_valid: int


def bootstrap_ci(stat_fn: Callable[[pl.DataFrame], float], labels: pl.DataFrame,
                 n_boot: int = 200, level: float = 0.95, seed: int = 0, *, item: str = "item"
                 ) -> BootstrapCI:
    """Percentile bootstrap interval of an agreement statistic, resampling items.

    Items (with all their labels) are drawn with replacement; a drawn item gets a fresh integer
    id in the ``item`` column so repeated draws stay distinct items. Each replicate is one
    vectorised call of ``stat_fn``, so 200 replicates of alpha or kappa over ~10^5 labels take
    seconds. Replicates where the statistic is undefined (``nan``) are dropped and counted.

    Parameters
    ----------
    stat_fn
        Function of a labels frame returning a float, e.g. ``krippendorff_alpha`` or
        ``functools.partial(krippendorff_alpha, level="ordinal")``.
    labels
        Long table of labels (only the ``item`` column is interpreted here).
    n_boot
        Number of replicates.
    level
        Confidence level in (0, 1).
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives the same interval.
    item
        Name of the item column.

    Returns
    -------
    BootstrapCI
        ``(estimate, low, high, level, n_boot, n_valid)``.

    Examples
    --------
    >>> import polars as pl
    >>> labels = pl.DataFrame({"item": [i for i in range(20) for _ in range(2)],
    ...                        "annotator": ["a", "b"] * 20,
    ...                        "label": [i % 3 for i in range(20) for _ in range(2)]})
    >>> ci = bootstrap_ci(krippendorff_alpha, labels, n_boot=50)
    >>> ci.estimate, ci.low, ci.high
    (1.0, 1.0, 1.0)
    """
    if isinstance(labels, pl.LazyFrame):
        labels = labels.collect()
    if not isinstance(labels, pl.DataFrame):
        raise TypeError(f"labels must be a polars DataFrame, got {type(labels).__name__}")
    if item not in labels.columns:
        raise ValueError(f"labels has no item column {item!r} (columns: {labels.columns})")
    if labels[item].null_count():
        raise ValueError(f"column {item!r} contains null values")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    estimate = float(stat_fn(labels))
    # Group each item's rows contiguously so a drawn item is a slice [start, start + length).
    order = np.argsort(_dense_index(labels[item]), kind="stable")
    frame = labels[order]
    sizes = frame.group_by(item, maintain_order=True).len()["len"].to_numpy().astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    n_items = len(sizes)
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        draw = rng.integers(0, n_items, n_items)
        lengths = sizes[draw]
        offsets = np.repeat(starts[draw] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        rows = offsets + np.arange(int(lengths.sum()))
        boot = frame[rows].with_columns(pl.Series(item, np.repeat(np.arange(n_items), lengths)))
        reps[b] = float(stat_fn(boot))
    valid = reps[np.isfinite(reps)]
    if valid.size == 0:
        return BootstrapCI(estimate, float("nan"), float("nan"), level, n_boot, 0)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(valid, [tail, 1.0 - tail])
    return BootstrapCI(estimate, float(low), float(high), level, n_boot, int(valid.size))
