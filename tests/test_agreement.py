"""Agreement statistics against independent oracles (krippendorff, statsmodels, scikit-learn)."""
from __future__ import annotations

import functools
import itertools
import math
import warnings

import krippendorff
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from rlhf_audit_kit.analysis import agreement as ag

TOL = 1e-9
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def close(ours: float, theirs: float) -> bool:
    if math.isnan(theirs) or math.isnan(ours):
        return math.isnan(theirs) and math.isnan(ours)
    return math.isclose(ours, theirs, rel_tol=TOL, abs_tol=TOL)


# ------------------------------------------------------------------------------------------
# random label tables
# ------------------------------------------------------------------------------------------
@st.composite
def label_tables(draw, kinds=("int", "str"), min_value=-3):
    """A long label table with random items, annotators, missingness and label set."""
    kind = draw(st.sampled_from(kinds))
    n_items = draw(st.integers(1, 12))
    n_ann = draw(st.integers(1, 5))
    values = st.integers(min_value, 6) if kind == "int" else st.sampled_from(
        ["bad", "ok", "good", "great", "é", "Z"])
    pool = draw(st.lists(values, min_size=1, max_size=5, unique=True))
    cells = draw(st.lists(st.one_of(st.none(), st.sampled_from(pool)),
                          min_size=n_items * n_ann, max_size=n_items * n_ann))
    item_ids = draw(st.sampled_from(["int", "str"]))
    rows = []
    for k, value in enumerate(cells):
        if value is None:
            continue
        i, j = divmod(k, n_ann)
        rows.append((i * 7 if item_ids == "int" else f"item-{i}", f"ann-{j}", value))
    perm = draw(st.permutations(range(len(rows))))
    rows = [rows[p] for p in perm]
    dtype = pl.Int64 if kind == "int" else pl.String
    item_dtype = pl.Int64 if item_ids == "int" else pl.String
    return pl.DataFrame(rows, schema={"item": item_dtype, "annotator": pl.String, "label": dtype},
                        orient="row")


def reliability_matrix(df: pl.DataFrame, value_col: str = "label"):
    """annotator x item matrix for the krippendorff package (nan = missing)."""
    wide = df.pivot(on="item", index="annotator", values=value_col).drop("annotator")
    if df.schema[value_col] == pl.String:
        return np.array([[np.nan if v is None else v for v in row] for row in wide.rows()],
                        dtype=object).astype(str)
    return wide.cast(pl.Float64).to_numpy()


def oracle_alpha(df: pl.DataFrame, level: str, value_domain=None) -> float:
    if df.height == 0:
        return float("nan")
    data = reliability_matrix(df)
    if value_domain is None and data.dtype.kind == "U":
        value_domain = sorted(df["label"].unique().to_list())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(krippendorff.alpha(data, value_domain=value_domain,
                                            level_of_measurement=level))
    except ValueError:  # one-value domain or no pairable unit: ours returns nan
        return float("nan")


# ------------------------------------------------------------------------------------------
# Krippendorff's alpha
# ------------------------------------------------------------------------------------------
@SETTINGS
@given(df=label_tables(), level=st.sampled_from(["nominal", "ordinal"]))
def test_alpha_nominal_ordinal_match_krippendorff(df, level):
    assert close(ag.krippendorff_alpha(df, level=level), oracle_alpha(df, level))


@SETTINGS
@given(df=label_tables(kinds=("int",), min_value=0), level=st.sampled_from(["interval", "ratio"]))
def test_alpha_interval_ratio_match_krippendorff(df, level):
    assert close(ag.krippendorff_alpha(df, level=level), oracle_alpha(df, level))


@SETTINGS
@given(df=label_tables(kinds=("int",), min_value=-3))
def test_alpha_ratio_with_zero_sums_matches_krippendorff(df):
    # c + k == 0 pairs (e.g. -2 and 2) have distance 0 in the reference implementation.
    assert close(ag.krippendorff_alpha(df, level="ratio"), oracle_alpha(df, "ratio"))


@SETTINGS
@given(df=label_tables(kinds=("str",)), data=st.data())
def test_alpha_ordinal_custom_value_domain(df, data):
    domain = data.draw(st.permutations(["bad", "ok", "good", "great", "é", "Z"]))
    ours = ag.krippendorff_alpha(df, level="ordinal", value_domain=domain)
    assert close(ours, oracle_alpha(df, "ordinal", value_domain=domain))


# Krippendorff (2011) / krippendorff package doctest data: 4 coders x 12 units.
KRIPP_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def long_from_matrix(matrix, names=("item", "annotator", "label")) -> pl.DataFrame:
    rows = [(u, f"coder{c}", v) for c, row in enumerate(matrix) for u, v in enumerate(row)
            if v is not None]
    return pl.DataFrame(rows, schema=list(names), orient="row")


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815),
                                                 ("interval", 0.849), ("ratio", 0.797)])
def test_alpha_published_values(level, expected):
    assert round(ag.krippendorff_alpha(long_from_matrix(KRIPP_2011), level=level), 3) == expected


def test_alpha_ordinal_strings_with_domain():
    words = {1: "very low", 2: "low", 3: "mid", 4: "high", 5: "very high"}
    df = long_from_matrix([[None if v is None else words[v] for v in row] for row in KRIPP_2011])
    alpha = ag.krippendorff_alpha(df, level="ordinal", value_domain=list(words.values()))
    assert round(alpha, 3) == 0.815


def test_alpha_enum_labels_use_declared_order():
    words = ["very low", "low", "mid", "high", "very high"]
    df = long_from_matrix([[None if v is None else words[v - 1] for v in row] for row in KRIPP_2011])
    as_enum = df.with_columns(pl.col("label").cast(pl.Enum(words)))
    assert round(ag.krippendorff_alpha(as_enum, level="ordinal"), 3) == 0.815
    assert close(ag.krippendorff_alpha(as_enum), ag.krippendorff_alpha(df))


def test_alpha_custom_column_names_and_extra_columns():
    df = long_from_matrix(KRIPP_2011, names=("prompt_id", "rater", "score")).with_columns(
        label=pl.lit("ignored"), item=pl.lit(0))
    ours = ag.krippendorff_alpha(df, "interval", item="prompt_id", annotator="rater", label="score")
    assert close(ours, ag.krippendorff_alpha(long_from_matrix(KRIPP_2011), "interval"))


def test_null_and_nan_labels_are_missing():
    base = long_from_matrix(KRIPP_2011)
    extra = pl.DataFrame({"item": [10, 11], "annotator": ["coder0", "coder3"],
                          "label": [None, None]}, schema=base.schema)
    assert close(ag.krippendorff_alpha(pl.concat([base, extra])), ag.krippendorff_alpha(base))
    as_float = pl.concat([base, extra]).with_columns(
        pl.col("label").cast(pl.Float64).fill_null(float("nan")))
    assert close(ag.krippendorff_alpha(as_float, "interval"),
                 ag.krippendorff_alpha(base, "interval"))


def test_alpha_undefined_cases_are_nan():
    one_category = pl.DataFrame({"item": [1, 1, 2, 2], "annotator": ["a", "b", "a", "b"],
                                 "label": ["x"] * 4})
    assert math.isnan(ag.krippendorff_alpha(one_category))
    no_pairs = pl.DataFrame({"item": [1, 2], "annotator": ["a", "b"], "label": ["x", "y"]})
    assert math.isnan(ag.krippendorff_alpha(no_pairs))
    empty = pl.DataFrame(schema={"item": pl.Int64, "annotator": pl.String, "label": pl.String})
    assert math.isnan(ag.krippendorff_alpha(empty))


def test_alpha_on_a_large_table():
    rng = np.random.default_rng(0)
    n_items, n_ann = 40_000, 5
    truth = rng.integers(0, 5, n_items)
    df = pl.DataFrame({
        "item": np.repeat(np.arange(n_items), n_ann),
        "annotator": np.tile([f"a{j}" for j in range(n_ann)], n_items),
        "label": np.where(rng.random(n_items * n_ann) < 0.8, np.repeat(truth, n_ann),
                          rng.integers(0, 5, n_items * n_ann)),
    })
    alpha = ag.krippendorff_alpha(df, level="ordinal")  # 200k labels (speed: benchmarks/analysis.py)
    assert 0.5 < alpha < 0.9
    subset = df.filter(pl.col("item") < 2000)  # the oracle is slow on the full table
    assert close(ag.krippendorff_alpha(subset, level="ordinal"), oracle_alpha(subset, "ordinal"))


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------
FUNCS = [ag.krippendorff_alpha, ag.fleiss_kappa, ag.percent_agreement, ag.pairwise]


@pytest.mark.parametrize("fn", FUNCS)
def test_duplicated_pair_raises(fn):
    df = pl.DataFrame({"item": [1, 1, 1], "annotator": ["a", "a", "b"], "label": [1, 2, 1]})
    with pytest.raises(ValueError, match="duplicated"):
        fn(df)


@pytest.mark.parametrize("fn", FUNCS)
def test_missing_column_is_named(fn):
    df = pl.DataFrame({"item": [1], "rater": ["a"], "label": [1]})
    with pytest.raises(ValueError, match="'annotator'"):
        fn(df)


@pytest.mark.parametrize("col", ["item", "annotator"])
def test_null_keys_raise(col):
    df = pl.DataFrame({"item": [1, 2], "annotator": ["a", "b"], "label": [1, 2]}).with_columns(
        pl.lit(None).cast(pl.Int64 if col == "item" else pl.String).alias(col))
    with pytest.raises(ValueError, match=f"'{col}'"):
        ag.krippendorff_alpha(df)


def test_alpha_bad_inputs():
    df = long_from_matrix(KRIPP_2011)
    with pytest.raises(ValueError, match="level"):
        ag.krippendorff_alpha(df, level="cardinal")
    with pytest.raises(ValueError, match="outside value_domain"):
        ag.krippendorff_alpha(df, level="ordinal", value_domain=[1, 2, 3])
    words = df.with_columns(pl.col("label").cast(pl.String))
    with pytest.raises(ValueError, match="numeric"):
        ag.krippendorff_alpha(words, level="interval")
    with pytest.raises(TypeError):
        ag.krippendorff_alpha(df.to_dict(as_series=False))


# ------------------------------------------------------------------------------------------
# Fleiss' kappa
# ------------------------------------------------------------------------------------------
def oracle_fleiss(df: pl.DataFrame) -> float:
    annotators = df["annotator"].unique().to_list()
    if len(annotators) < 2:
        return float("nan")
    complete = df.filter(pl.len().over("item") == len(annotators))
    if complete.height == 0:
        return float("nan")
    wide = complete.with_columns(code=pl.col("label").rank("dense").cast(pl.Int64)).pivot(
        on="annotator", index="item", values="code").drop("item")
    table, _ = aggregate_raters(wide.to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sm_fleiss_kappa(table, method="fleiss"))


@SETTINGS
@given(df=label_tables())
def test_fleiss_matches_statsmodels(df):
    assert close(ag.fleiss_kappa(df), oracle_fleiss(df))


def test_fleiss_wikipedia_example():
    # https://en.wikipedia.org/wiki/Fleiss%27_kappa: 10 subjects, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    rows = []
    for i, counts in enumerate(table):
        ratings = np.repeat(np.arange(1, 6), counts)
        rows += [(i, f"r{j}", int(v)) for j, v in enumerate(ratings)]
    df = pl.DataFrame(rows, schema=["item", "annotator", "label"], orient="row")
    assert round(ag.fleiss_kappa(df), 3) == 0.210
    assert close(ag.fleiss_kappa(df), sm_fleiss_kappa(np.array(table)))


def test_fleiss_uses_only_complete_items():
    df = pl.DataFrame({"item": [1, 1, 2, 2, 3], "annotator": ["a", "b", "a", "b", "a"],
                       "label": ["x", "x", "y", "y", "x"]})
    assert ag.fleiss_kappa(df) == 1.0
    assert math.isnan(ag.fleiss_kappa(df.filter(pl.col("annotator") == "a")))


# ------------------------------------------------------------------------------------------
# Cohen's kappa and pairwise tables
# ------------------------------------------------------------------------------------------
def oracle_cohen(df: pl.DataFrame, a, b, weights=None) -> float:
    la = df.filter(pl.col("annotator") == a).select("item", "label")
    lb = df.filter(pl.col("annotator") == b).select("item", pl.col("label").alias("label_b"))
    both = la.join(lb, on="item")
    if both.height == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cohen_kappa_score(both["label"].to_list(), both["label_b"].to_list(),
                                       weights=weights))


@SETTINGS
@given(df=label_tables(), weights=st.sampled_from([None, "linear", "quadratic"]))
def test_cohen_matches_sklearn(df, weights):
    annotators = sorted(df["annotator"].unique().to_list())
    for a, b in itertools.permutations(annotators, 2):
        assert close(ag.cohen_kappa(df, a, b, weights=weights), oracle_cohen(df, a, b, weights))


def test_cohen_errors():
    df = pl.DataFrame({"item": [1, 1], "annotator": ["a", "b"], "label": [1, 1]})
    with pytest.raises(ValueError, match="'zed'"):
        ag.cohen_kappa(df, "a", "zed")
    with pytest.raises(ValueError, match="weights"):
        ag.cohen_kappa(df, "a", "b", weights="cubic")
    assert math.isnan(ag.cohen_kappa(df, "a", "b"))  # one shared label: undefined, as sklearn


@SETTINGS
@given(df=label_tables(), min_overlap=st.integers(1, 4))
def test_pairwise_matches_per_pair_oracles(df, min_overlap):
    out = ag.pairwise(df, min_overlap=min_overlap)
    assert out.columns == ["annotator_a", "annotator_b", "n", "kappa", "percent_agreement"]
    assert out.schema["n"] == pl.Int64 and out.schema["annotator_a"] == pl.String
    expected = {}
    for a, b in itertools.combinations(sorted(df["annotator"].unique().to_list()), 2):
        la = df.filter(pl.col("annotator") == a).select("item", "label")
        lb = df.filter(pl.col("annotator") == b).select("item", pl.col("label").alias("lb"))
        both = la.join(lb, on="item")
        if both.height >= min_overlap:
            expected[(a, b)] = (both.height, oracle_cohen(df, a, b),
                                float((both["label"] == both["lb"]).mean()))
    got = {(r["annotator_a"], r["annotator_b"]): (r["n"], r["kappa"], r["percent_agreement"])
           for r in out.iter_rows(named=True)}
    assert got.keys() == expected.keys()
    assert list(got) == sorted(got)
    for key, (n, kappa, pa) in expected.items():
        assert got[key][0] == n
        assert close(got[key][1], kappa)
        assert close(got[key][2], pa)


def test_pairwise_empty_and_validation():
    df = pl.DataFrame({"item": [1, 2], "annotator": ["a", "b"], "label": [1, 1]})
    out = ag.pairwise(df)
    assert out.height == 0 and out.columns[:2] == ["annotator_a", "annotator_b"]
    with pytest.raises(ValueError, match="min_overlap"):
        ag.pairwise(df, min_overlap=0)


# ------------------------------------------------------------------------------------------
# percent agreement
# ------------------------------------------------------------------------------------------
def naive_percent_agreement(df: pl.DataFrame) -> float:
    shares = []
    for _, group in df.group_by("item"):
        labels = group["label"].to_list()
        if len(labels) < 2:
            continue
        pairs = list(itertools.combinations(labels, 2))
        shares.append(sum(x == y for x, y in pairs) / len(pairs))
    return float(np.mean(shares)) if shares else float("nan")


@SETTINGS
@given(df=label_tables())
def test_percent_agreement_matches_pair_count(df):
    assert close(ag.percent_agreement(df), naive_percent_agreement(df))


# ------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------
def simulated(n_items=300, n_ann=4, accuracy=0.7, seed=1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n_items)
    noisy = np.where(rng.random(n_items * n_ann) < accuracy, np.repeat(truth, n_ann),
                     rng.integers(0, 3, n_items * n_ann))
    keep = rng.random(n_items * n_ann) < 0.85
    return pl.DataFrame({"item": np.repeat(np.arange(n_items), n_ann)[keep],
                         "annotator": np.tile([f"a{j}" for j in range(n_ann)], n_items)[keep],
                         "label": noisy[keep]})


def test_bootstrap_ci_is_reproducible_and_brackets_estimate():
    df = simulated()
    fn = functools.partial(ag.krippendorff_alpha, level="nominal")
    ci = ag.bootstrap_ci(fn, df, n_boot=200, seed=3)
    assert ci == ag.bootstrap_ci(fn, df, n_boot=200, seed=3)
    assert ci.low < ci.estimate < ci.high and ci.high - ci.low < 0.2
    assert ci.n_boot == ci.n_valid == 200 and ci.level == 0.95
    assert ci.estimate == ag.krippendorff_alpha(df)
    assert ag.bootstrap_ci(fn, df, n_boot=50, seed=4) != ag.bootstrap_ci(fn, df, n_boot=50, seed=5)


def test_bootstrap_resamples_whole_items_with_fresh_ids():
    df = simulated(n_items=50).rename({"item": "prompt"}).with_columns(
        pl.col("prompt").cast(pl.String))
    sizes = df.group_by("prompt").len()["len"].to_list()
    seen = []

    def stat(boot: pl.DataFrame) -> float:
        seen.append(boot)
        return ag.percent_agreement(boot, item="prompt")

    ag.bootstrap_ci(stat, df, n_boot=20, item="prompt")
    for boot in seen[1:]:  # seen[0] is the full-data estimate
        assert boot["prompt"].n_unique() == 50
        assert not boot.select("prompt", "annotator").is_duplicated().any()
        assert set(boot.group_by("prompt").len()["len"].to_list()) <= set(sizes)


def test_bootstrap_drops_undefined_replicates_and_validates():
    df = pl.DataFrame({"item": [1, 1, 2, 2], "annotator": ["a", "b", "a", "b"],
                       "label": ["x", "x", "x", "y"]})
    ci = ag.bootstrap_ci(ag.krippendorff_alpha, df, n_boot=100)
    assert 0 < ci.n_valid < 100  # resamples of item 1 alone have a single category: nan
    with pytest.raises(ValueError, match="level"):
        ag.bootstrap_ci(ag.krippendorff_alpha, df, level=95)
    with pytest.raises(ValueError, match="'prompt'"):
        ag.bootstrap_ci(ag.krippendorff_alpha, df, item="prompt")


def test_public_names_exported():
    from rlhf_audit_kit import analysis

    for name in ag.__all__:
        assert getattr(analysis, name) is getattr(ag, name)
