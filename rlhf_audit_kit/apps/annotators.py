"""AnnotatorBehaviour: agreement, position/length bias, throughput and flagged annotators.

The annotation table is read once per source into a slim frame (one row per judgement: annotator,
task, time, choice, the two response lengths, seconds spent, an item key) and the annotator pairs
that judged the same item are joined once; every filter change re-aggregates those in polars, so a
million annotations stay on the server and only per-annotator / per-day aggregates are plotted.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import param
import polars as pl

from ..analysis.annotators import annotator_drift
from ._common import ACCENT, PLOT_OPTS, card, esc, not_enough, require_panel, short_labels, wilson
from ._viewer import SourceViewer
from ._data import Source

pn = require_panel()
import holoviews as hv  # noqa: E402

__all__ = ["AnnotatorBehaviour", "load_annotations", "annotator_pairs", "daily_pairs", "annotator_table",
           "agreement_long", "daily_throughput", "drift_changes"]

ALL = "(all annotators)"

#: Thresholds of the flags (documented in docs/dashboard.md).
FLAG_POSITION = 0.65   # lower 95% bound of the share of "a" among a/b choices
FLAG_LENGTH = 0.70     # lower 95% bound of the share of the longer response among a/b choices
FLAG_FAST_S = 6.0      # median seconds per item
FLAG_AGREEMENT = 0.60  # mean agreement with co-annotators of the same items
#: A day whose hours inside the data's time span (or the time window) usually see less than this
#: share of a day's judgements is partial (see :func:`daily_throughput`).
PARTIAL_BELOW = 0.9
#: Windows of :func:`~rlhf_audit_kit.analysis.annotator_drift`, whose verdict is the drift flag.
DRIFT_WINDOW = "7d"


# ---------------------------------------------------------------------------- data
def load_annotations(src: Source) -> pl.DataFrame:
    """One slim row per annotation: ``seq, annotator, task_id, t, choice, len_a, len_b, secs, item,
    order_known`` (``display_order_known``, null taken as known), ``timed`` (the annotation has a time
    of its own; ``t`` falls back to the recording time, which for a loaded file is the ingest)."""
    def load() -> pl.DataFrame:
        if src.count("annotation") == 0:
            return pl.DataFrame(schema={"seq": pl.Int64, "annotator": pl.Utf8, "task_id": pl.Utf8,
                                        "t": pl.Datetime("us"), "choice": pl.Utf8, "len_a": pl.Int64,
                                        "len_b": pl.Int64, "secs": pl.Float64, "item": pl.UInt64,
                                        "order_known": pl.Boolean, "timed": pl.Boolean})
        return src.sql(
            "SELECT seq, annotator, coalesce(task_id, '') AS task_id, "
            "coalesce(submitted_at, shown_at, ts) AS t, choice, "
            "strlen(response_a)::BIGINT AS len_a, strlen(response_b)::BIGINT AS len_b, "
            "date_diff('millisecond', shown_at, submitted_at) / 1000.0 AS secs, "
            "hash(prompt_id, response_a_id, response_b_id) AS item, "
            "coalesce(display_order_known, true) AS order_known, "
            "(submitted_at IS NOT NULL OR shown_at IS NOT NULL) AS timed FROM annotation")
    return src.cached("annotations/slim", load)


def annotator_pairs(ann: pl.DataFrame) -> pl.DataFrame:
    """Ordered pairs of distinct annotators who judged the same item (skips and repeats dropped):
    ``a1, a2, agree (bool), t (the later judgement), task_id`` (of the first judgement).

    Vectorised: rows sorted by item, then row i is compared with row i+k for k = 1, 2, ... while
    any item still has a k-th neighbour (items have a handful of annotators), so the cost is a sort
    and a few array passes rather than a hash join.
    """
    import numpy as np
    empty = pl.DataFrame(schema={"a1": pl.Utf8, "a2": pl.Utf8, "agree": pl.Boolean, "t": pl.Datetime("us"),
                                 "task_id": pl.Utf8})
    d = (ann.filter(pl.col("choice") != "skip").select("item", "annotator", "choice", "t", "task_id", "seq")
            .with_columns(pl.col("annotator").cast(pl.Categorical).to_physical().alias("_a"))
            .sort("item", "_a", "seq"))
    if d.height < 2:
        return empty
    item = d["item"].to_numpy()
    a = d["_a"].to_numpy()
    keep = np.ones(d.height, bool)
    keep[1:] = (item[1:] != item[:-1]) | (a[1:] != a[:-1])  # first judgement of each (item, annotator)
    d = d.filter(pl.Series(keep))
    item, a = d["item"].to_numpy(), d["_a"].to_numpy()
    choice = d["choice"].cast(pl.Categorical).to_physical().to_numpy()
    t = d["t"].to_numpy()
    ii, jj = [], []
    k = 1
    while k < len(item):
        same = np.flatnonzero(item[:-k] == item[k:])
        if same.size == 0:
            break
        ii.append(same)
        jj.append(same + k)
        k += 1
    if not ii:
        return empty
    i, j = np.concatenate(ii), np.concatenate(jj)
    i, j = np.concatenate([i, j]), np.concatenate([j, i])  # both directions
    names = d["annotator"]
    return pl.DataFrame({
        "a1": names.gather(i), "a2": names.gather(j), "agree": choice[i] == choice[j],
        "t": np.maximum(t[i], t[j]), "task_id": d["task_id"].gather(np.minimum(i, j)),
    })


def daily_pairs(pairs: pl.DataFrame) -> pl.DataFrame:
    """Pairs aggregated per annotator pair and day: ``a1, a2, t (day), n, agree`` (count of agreements)."""
    return pairs.group_by("a1", "a2", pl.col("t").dt.truncate("1d")).agg(
        pl.len().alias("n"), pl.col("agree").sum().alias("agree"))


def _filter(df: pl.DataFrame, window: tuple | None, task: str) -> pl.DataFrame:
    if window is not None and window[0] is not None:
        lo, hi = window
        df = df.filter((pl.col("t") >= pl.lit(lo)) & (pl.col("t") <= pl.lit(hi)))
    if task:
        df = df.filter(pl.col("task_id").str.starts_with(task))
    return df


def drift_changes(src: Source) -> pl.DataFrame:
    """Drifting annotators of the whole record, one row each: ``annotator, change_start,
    drift_reason``, from :func:`~rlhf_audit_kit.analysis.annotator_drift` (the function the
    notebooks use, so the dashboard and a notebook flag the same people from the same change
    point). Whole record: agreement is judged against everyone's majority. Cached per source."""
    def load() -> pl.DataFrame:
        if src.count("annotation") == 0:
            return pl.DataFrame(schema={"annotator": pl.Utf8, "change_start": pl.Datetime("us"),
                                        "drift_reason": pl.Utf8})
        d = annotator_drift(src, DRIFT_WINDOW)
        return d.filter("drifting").unique("annotator").select("annotator", "change_start", "drift_reason")
    return src.cached("annotations/drift", load)


def annotator_table(ann: pl.DataFrame, pairs: pl.DataFrame, drift: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per annotator: volume, position and length bias with Wilson 95% CIs, speed,
    agreement with co-annotators, and the reasons it is flagged; ``drift`` (:func:`drift_changes`)
    adds the drift flag of the annotators it lists."""
    if ann.height == 0:
        return pl.DataFrame(schema={"annotator": pl.Utf8, "n": pl.UInt32, "flags": pl.Utf8})
    ab = pl.col("choice").is_in(["a", "b"])
    pos = ab & pl.col("order_known")  # position bias only where the rater's display order is known
    longer_known = ab & (pl.col("len_a") != pl.col("len_b"))
    chose_longer = (pl.col("choice") == "a") == (pl.col("len_a") > pl.col("len_b"))
    stats = ann.group_by("annotator").agg(
        pl.len().alias("n"),
        pos.sum().alias("n_ab"),
        (pos & (pl.col("choice") == "a")).sum().alias("n_a"),
        (ab & ~pl.col("order_known")).sum().alias("n_order_unknown"),
        longer_known.sum().alias("n_len"),
        (longer_known & chose_longer).sum().alias("n_longer"),
        pl.col("secs").median().alias("median_s"),
        pl.col("t").min().alias("first"), pl.col("t").max().alias("last"),
    )
    if "n" in pairs.columns:
        peer = pairs.group_by("a1").agg((pl.col("agree").sum() / pl.col("n").sum()).alias("agreement"),
                                        pl.col("n").sum().alias("n_pairs")).rename({"a1": "annotator"})
    else:
        peer = pairs.group_by("a1").agg(pl.col("agree").mean().alias("agreement"),
                                        pl.len().alias("n_pairs")).rename({"a1": "annotator"})
    pa_lo, pa_hi = wilson(pl.col("n_a"), pl.col("n_ab"))
    pl_lo, pl_hi = wilson(pl.col("n_longer"), pl.col("n_len"))
    if drift is None:
        drift = pl.DataFrame(schema={"annotator": pl.Utf8, "drift_reason": pl.Utf8})
    t = (stats.join(peer, on="annotator", how="left")
              .join(drift.select("annotator", "drift_reason"), on="annotator", how="left")
              .with_columns(share_a=pl.col("n_a") / pl.col("n_ab"), share_a_lo=pa_lo, share_a_hi=pa_hi,
                            share_longer=pl.col("n_longer") / pl.col("n_len"), share_longer_lo=pl_lo,
                            share_longer_hi=pl_hi)
              # 0/0 (no a/b choice, all pairs of equal length, too few items) is "not known": null,
              # which no flag matches (NaN compares greater than any threshold in polars)
              .with_columns(pl.col(pl.Float64).fill_nan(None)))
    reasons = [
        pl.when(pl.col("share_a_lo") > FLAG_POSITION).then(
            pl.format("position bias: picks A in {}% (95% CI {}-{}%)", *(
                (pl.col(c) * 100).round(0).cast(pl.Int64) for c in ("share_a", "share_a_lo", "share_a_hi")))),
        pl.when(pl.col("share_longer_lo") > FLAG_LENGTH).then(
            pl.format("length bias: picks the longer response in {}% (95% CI {}-{}%)", *(
                (pl.col(c) * 100).round(0).cast(pl.Int64)
                for c in ("share_longer", "share_longer_lo", "share_longer_hi")))),
        pl.when(pl.col("median_s") < FLAG_FAST_S).then(
            pl.format("very fast: median {} s per item", pl.col("median_s").round(1))),
        pl.when(pl.col("agreement") < FLAG_AGREEMENT).then(
            pl.format("low agreement with co-annotators: {}%", (pl.col("agreement") * 100).round(0)
                      .cast(pl.Int64))),
        pl.when(pl.col("drift_reason") != "").then(pl.format("drift: {}", pl.col("drift_reason"))),
    ]
    t = t.with_columns(pl.concat_str(reasons, separator="; ", ignore_nulls=True).fill_null("").alias("flags"))
    labels = short_labels(t["annotator"].to_list())
    t = t.with_columns(pl.col("annotator").replace_strict(labels, return_dtype=pl.Utf8).alias("label"))
    return t.drop("drift_reason").sort("annotator")


def agreement_long(pairs: pl.DataFrame, labels: dict[str, str]) -> pl.DataFrame:
    """Pairwise agreement of annotators as a long table ``a1, a2, agreement, n`` (display labels);
    ``pairs`` is :func:`annotator_pairs` or :func:`daily_pairs`."""
    if "n" in pairs.columns:
        g = pairs.group_by("a1", "a2").agg((pl.col("agree").sum() / pl.col("n").sum()).alias("agreement"),
                                           pl.col("n").sum().alias("n"))
    else:
        g = pairs.group_by("a1", "a2").agg(pl.col("agree").mean().alias("agreement"), pl.len().alias("n"))
    return g.with_columns(pl.col("a1").replace_strict(labels, default=pl.col("a1")),
                          pl.col("a2").replace_strict(labels, default=pl.col("a2"))).sort("a1", "a2")


def daily_throughput(ann: pl.DataFrame, span: tuple | None = None, usual: pl.Series | None = None) -> pl.DataFrame:
    """Items per day and median seconds per item: ``day, items, median_s, covered, partial``.

    ``covered`` is the share of a usual day's judgements that falls in the part of the day inside
    ``span`` (the time the data covers; default: its first to its last judgement), the hours
    weighted by when judgements are made (``usual``: judgement times, default ``ann["t"]``; UTC
    hour of day, one extra count per hour), so a record starting in the quiet night is still whole.
    A day less than :data:`PARTIAL_BELOW` covered (the day a live record was taken, the edges of a
    time window) is ``partial``: its count is not comparable with whole days, so the charts mark it
    instead of joining it to the line.

    >>> import datetime as dt
    >>> t = [dt.datetime(2024, 3, 4, 0, 30), dt.datetime(2024, 3, 4, 23, 50), dt.datetime(2024, 3, 5, 6)]
    >>> d = daily_throughput(pl.DataFrame({"t": t, "secs": [10.0, 12.0, 9.0]}))
    >>> d["items"].to_list(), d["covered"].round(2).to_list(), d["partial"].to_list()
    ([2, 1], [0.96, 0.26], [False, True])
    """
    import numpy as np

    lo, hi = span if span is not None else (ann["t"].min(), ann["t"].max())
    d = (ann.group_by(pl.col("t").dt.truncate("1d").alias("day"))
            .agg(pl.len().alias("items"), pl.col("secs").median().alias("median_s"))
            .sort("day"))
    if d.height == 0 or lo is None:
        return d.with_columns(covered=pl.lit(1.0), partial=pl.lit(False))
    usual = ann["t"] if usual is None else usual
    weight = np.bincount(usual.drop_nulls().dt.hour().to_numpy(), minlength=24)[:24] + 1.0
    hour = 3_600_000_000  # us
    starts = d["day"].cast(pl.Int64).to_numpy()[:, None] + hour * np.arange(24)  # every hour of each day
    lo_us, hi_us = (pl.Series([x], dtype=pl.Datetime("us")).cast(pl.Int64)[0] for x in (lo, hi))
    inside = np.clip(np.minimum(starts + hour, hi_us) - np.maximum(starts, lo_us), 0, hour) / hour
    return d.with_columns(covered=pl.Series(inside @ weight / weight.sum())).with_columns(
        partial=pl.col("covered") < PARTIAL_BELOW)


# ---------------------------------------------------------------------------- viewer
class AnnotatorBehaviour(SourceViewer):
    """Annotator behaviour: agreement heatmap, bias with CIs, throughput, flags and drill-down.

    Parameters
    ----------
    source
        An AuditStore, a bundle or a path (see :class:`~rlhf_audit_kit.apps.Source`). Read only.

    Examples
    --------
    >>> view = AnnotatorBehaviour(store)          # doctest: +SKIP
    >>> view.annotator = view.flagged()[0]        # doctest: +SKIP
    """

    time_window = param.DateRange(default=None, doc="Only judgements submitted in this window (UTC).")
    annotator = param.Selector(default=ALL, objects=[ALL], doc="Annotator to drill into, or all of them.")
    task = param.String(default="", doc="Task batch id, or an id prefix; empty for every batch.")
    item = param.Integer(default=None, allow_None=True,
                         doc="seq of the annotation whose response pair is shown side by side.")

    def __init__(self, source: Any = None, **params: Any):
        super().__init__(source, **params)
        self._memo: dict[str, tuple[Any, Any]] = {}

    # -- data ----------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        ann = load_annotations(self._src)
        self._ann = ann
        self._pairs = self._src.cached("annotations/pairs", lambda: annotator_pairs(ann))
        self._daily_pairs = self._src.cached("annotations/daily_pairs", lambda: daily_pairs(self._pairs))
        ids = sorted(ann["annotator"].unique().to_list()) if ann.height else []
        self._labels = short_labels(ids)
        self._by_label = {v: k for k, v in self._labels.items()}
        self.param.annotator.objects = {ALL: ALL, **{self._labels[i]: i for i in ids}}
        if ann.height:
            lo = ann["t"].min().replace(hour=0, minute=0, second=0, microsecond=0)
            hi = ann["t"].max().replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
            self.param.time_window.bounds = (lo, hi)
            if self.time_window is None:
                with param.parameterized.discard_events(self):
                    self.time_window = (lo, hi)
        self._loaded = True

    def _shape(self) -> tuple:
        """Which charts have data (the others are 'not enough data' notes): fixed per layout."""
        t, ann = self.table(), self._ann
        return (self._pairs.height > 0, *(c in t.columns and t[c].drop_nulls().len() > 0
                                          for c in ("share_a", "share_longer")),
                ann.height > 0, ann["secs"].drop_nulls().len() > 0)

    def reload(self, source: Any) -> bool:
        """Newer data of the same record in place: the charts re-run (their Bokeh data is patched,
        no new plots), the tables refresh, the filters stay; a time window left at the whole range
        grows with it. False (build a new view) when a chart would switch to or from a note."""
        if self._layout is None:
            return False
        whole = self.time_window == self.param.time_window.bounds
        shape = self._shape()
        self._src, self._loaded, self._memo = source, False, {}
        self._load()
        if whole and self.param.time_window.bounds is not None:
            with param.parameterized.discard_events(self):
                self.time_window = self.param.time_window.bounds
        if self._shape() != shape:
            return False
        self.param.trigger("time_window", "task", "annotator")
        return True

    def _key(self) -> tuple:
        return (self.time_window, self.task)

    def _memoised(self, name: str, fn):
        key = self._key()
        hit = self._memo.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = fn()
        self._memo[name] = (key, value)
        return value

    def filtered(self) -> pl.DataFrame:
        """The slim annotation rows inside the time window and task filter."""
        self._load()
        return self._memoised("ann", lambda: _filter(self._ann, self.time_window, self.task))

    def filtered_pairs(self) -> pl.DataFrame:
        """Annotator pairs on shared items under the filters: per pair and day without a task filter
        (the time window then applies by day), per judgement pair with one."""
        self._load()

        def pick():
            if self.task:
                return _filter(self._pairs, self.time_window, self.task)
            w = self.time_window
            if w is not None and w[0] is not None:
                lo = w[0].replace(hour=0, minute=0, second=0, microsecond=0)
                return _filter(self._daily_pairs, (lo, w[1]), "")
            return self._daily_pairs
        return self._memoised("pairs", pick)

    def table(self) -> pl.DataFrame:
        """Per-annotator statistics and flags under the current filters (see :func:`annotator_table`);
        drift is flagged when the time window reaches the annotator's change point."""
        def make():
            drift = drift_changes(self._src)
            w = self.time_window
            if w is not None and w[1] is not None:
                drift = drift.filter(pl.col("change_start") < pl.lit(w[1]))
            return annotator_table(self.filtered(), self.filtered_pairs(), drift)
        return self._memoised("table", make)

    def flagged(self) -> list[str]:
        """Annotators flagged under the current filters."""
        t = self.table()
        return t.filter(pl.col("flags") != "")["annotator"].to_list() if "flags" in t.columns else []

    # -- charts (hv.DynamicMap over these: a filter change updates the Bokeh data in place) -------
    @param.depends("time_window", "task")
    def heatmap(self):
        """Pairwise agreement of annotators on the items both judged (hv.HeatMap)."""
        pairs = self.filtered_pairs()
        df = agreement_long(pairs, self._labels).to_pandas()
        # One order on both axes (the pair table is symmetric), so cell (i, i) is (a, a): HoloViews
        # would otherwise order each axis by first appearance and break the diagonal.
        order = sorted(set(df["a1"]) | set(df["a2"]))
        kdims = [hv.Dimension("a2", values=order), hv.Dimension("a1", values=order)]
        return hv.HeatMap(df, kdims=kdims, vdims=["agreement", "n"]).opts(
            cmap="viridis", clim=(0.3, 1.0), colorbar=True, tools=["hover"], xrotation=60,
            title="Pairwise agreement on shared items", xlabel="", ylabel="", width=470,
            height=PLOT_OPTS["height"] + 60, fontsize={"xticks": 7, "yticks": 7}, framewise=True)

    def _bias(self, col: str, title: str):
        t = self.table()
        if "share_a" in t.columns:
            d = t.select("label", pl.col(col).alias("share"), (pl.col(col) - pl.col(f"{col}_lo")).alias("lo"),
                         (pl.col(f"{col}_hi") - pl.col(col)).alias("hi"), "n",
                         (pl.col("flags") != "").alias("flagged"), pl.col("flags").alias("why")
                         ).drop_nulls("share").to_pandas()
        else:
            d = pl.DataFrame(schema={"label": pl.Utf8, "share": pl.Float64, "lo": pl.Float64, "hi": pl.Float64,
                                     "n": pl.UInt32, "flagged": pl.Boolean, "why": pl.Utf8}).to_pandas()
        d["colour"] = ["#d62728" if f else ACCENT for f in d["flagged"]]
        sel = self._labels.get(self.annotator)
        err = hv.ErrorBars(d, "label", ["share", "lo", "hi"]).opts(color="#777")
        pts = hv.Scatter(d, "label", ["share", "n", "why", "colour"]).opts(
            color="colour", size=7, tools=["hover"])
        mark = hv.Scatter(d[d["label"] == sel], "label", ["share"]).opts(
            color="#ff7f0e", size=15, fill_alpha=0.2, line_width=2)
        return (err * pts * mark * hv.HLine(0.5).opts(color="#999", line_dash="dashed")).opts(
            title=title, width=470, height=PLOT_OPTS["height"], xlabel="", ylabel="share", ylim=(0, 1),
            xrotation=60, fontsize={"xticks": 7}, framewise=True)

    @param.depends("time_window", "task", "annotator")
    def position_bias(self):
        """Share of "a" among a/b choices per annotator, Wilson 95% CI; flagged in red. Choices whose
        display order is unknown (a dataset's chosen-first a/b) are left out, and the title counts them."""
        t = self.table()
        unknown = int(t["n_order_unknown"].sum()) if "n_order_unknown" in t.columns else 0
        note = f"; {unknown:,} a/b choices of unknown display order left out" if unknown else ""
        return self._bias("share_a", f"Position bias: share of A (95% CI){note}")

    @param.depends("time_window", "task", "annotator")
    def length_bias(self):
        """Share of the longer response among a/b choices per annotator, Wilson 95% CI."""
        return self._bias("share_longer", "Length bias: share of the longer response (95% CI)")

    def _daily(self) -> pl.DataFrame:
        # Coverage is the record's (every annotator's) time span inside the window: an annotator's
        # own quiet day is real, a day the record only partly covers is not comparable.
        timed = self.filtered().filter("timed")["t"]
        lo, hi = timed.min(), timed.max()
        w = self.time_window
        if w is not None and w[0] is not None and lo is not None:
            lo, hi = max(lo, w[0]), min(hi, w[1])
        return daily_throughput(self._timed_rows().filter("timed"), (lo, hi), timed)

    def _timed_rows(self) -> pl.DataFrame:
        ann = self.filtered()
        return ann.filter(pl.col("annotator") == self.annotator) if self.annotator != ALL else ann

    def _untimed_note(self) -> str:
        """Per-day charts of annotations without a time of their own would plot the ingest day."""
        n = int((~self._timed_rows()["timed"]).sum())
        return f"; {n:,} without a time of their own not shown" if n else ""

    def _who(self) -> str:
        return "all annotators" if self.annotator == ALL else self._labels.get(self.annotator, self.annotator)

    def _per_day(self, y: str, colour: str, title: str, **opts):
        """Whole days joined by a line; partly covered days (see :func:`daily_throughput`) as
        hollow grey points off the line, with their coverage on hover, said under the axis."""
        d = self._daily().with_columns((pl.col("covered") * 100).round(0).alias("covered_pct"))
        whole, part = d.filter(~pl.col("partial")).to_pandas(), d.filter("partial").to_pandas()
        note = " · hollow: partial day, off the line" if len(part) else ""
        covered = hv.Dimension("covered_pct", label="% of a usual day covered")
        return (hv.Curve(whole, "day", y).opts(color=colour, tools=["hover"])
                * hv.Scatter(whole, "day", y).opts(color=colour, size=4)
                * hv.Scatter(part, "day", [y, covered], label="partial day").opts(
                    color="white", line_color="#888", size=7, tools=["hover"], show_legend=False)).opts(
            title=f"{title} ({self._who()}){self._untimed_note()}", xlabel=f"day (UTC){note}", width=470,
            height=230, padding=0.05, framewise=True, **opts)  # padding: an edge day's point shows whole

    @param.depends("time_window", "task", "annotator")
    def throughput(self):
        """Judgements per day (selected annotator, or all); partial days marked, not joined."""
        return self._per_day("items", ACCENT, "Throughput: items per day")

    @param.depends("time_window", "task", "annotator")
    def time_per_item(self):
        """Median seconds per judgement per day (selected annotator, or all); partial days marked."""
        return self._per_day("median_s", "#9467bd", "Time per item: median seconds", ylabel="median s per item")

    # -- tables and drill-down -----------------------------------------------------------------
    def _flag_frame(self):
        t = self.table()
        if t.height == 0 or "share_a" not in t.columns:
            return pl.DataFrame({"annotator": [], "flags": []}).to_pandas()
        return (t.select("label", "n", pl.col("share_a").round(3), pl.col("share_longer").round(3),
                         pl.col("median_s").round(1), pl.col("agreement").round(3), "flags", "annotator")
                 .sort(pl.col("flags") == "", "label").to_pandas())

    def _items_frame(self):
        if self.annotator == ALL:
            return pl.DataFrame(schema={"seq": pl.Int64}).to_pandas()
        ann = self.filtered().filter(pl.col("annotator") == self.annotator)
        return ann.select("seq", pl.col("t").alias("submitted_at"), "task_id", "choice", "len_a", "len_b",
                          pl.col("secs").round(1)).to_pandas()

    def _on_flag_click(self, event) -> None:
        ann = self._flags.value.iloc[event.row]["annotator"]
        if ann in self.param.annotator.objects:
            self.annotator = ann

    def _on_item_select(self, event) -> None:
        if event.new:
            self.item = int(self._items.value.iloc[event.new[0]]["seq"])

    def _on_item_click(self, event) -> None:
        self.item = int(self._items.value.iloc[event.row]["seq"])

    def _refresh_tables(self, *events) -> None:
        names = {e.name for e in events} if events else {"time_window", "task", "annotator"}
        if names & {"time_window", "task"}:
            self._flags.value = self._flag_frame()
        if names & {"time_window", "task", "annotator"}:
            self._items.value = self._items_frame()
            self._items.selection = []

    @param.depends("item")
    def pair(self):
        """The response pair of :attr:`item`, side by side, with the choice highlighted."""
        if self.item is None:
            return pn.pane.HTML("<i>Pick an annotator, then click one of their items to see the pair.</i>",
                                sizing_mode="stretch_width")
        row = self._src.sql("SELECT seq, annotator, task_id, choice, strength, prompt, response_a, response_b, "
                            "model_a, model_b, rationale, gold_choice, guideline_version, shown_at, submitted_at "
                            "FROM annotation WHERE seq = ?", [self.item])
        if row.height == 0:
            return pn.pane.HTML(f"<i>no annotation with seq {self.item}</i>")
        r = row.row(0, named=True)

        def side(name: str) -> str:
            chosen = r["choice"] == name
            border = "3px solid #2ca02c" if chosen else "1px solid #ccc"
            model = esc(r[f"model_{name}"] or "")
            text = esc(r[f"response_{name}"]).replace("\n", "<br>")
            return (f"<div style='flex:1;border:{border};border-radius:6px;padding:8px;min-width:0'>"
                    f"<div style='font-weight:600'>Response {name.upper()} {'&#10003; chosen' if chosen else ''}"
                    f" <span style='color:#888;font-weight:400'>{model} · {len(r[f'response_{name}'] or ''):,} chars"
                    f"</span></div><div class='pair-text' style='white-space:normal;font-size:13px'>{text}</div></div>")
        meta = (f"seq {r['seq']} · {esc(self._labels.get(r['annotator'], r['annotator']))} · task {esc(r['task_id'])}"
                f" · choice <b>{esc(r['choice'])}</b>"
                + (f" (strength {r['strength']})" if r["strength"] is not None else "")
                + (f" · gold {esc(r['gold_choice'])}" if r["gold_choice"] else "")
                + (f" · guideline {esc(r['guideline_version'])}" if r["guideline_version"] else ""))
        rationale = (f"<div style='margin-top:4px'><i>Rationale:</i> {esc(r['rationale'])}</div>"
                     if r["rationale"] else "")
        body = (f"<div class='annotation-pair'><div style='color:#555'>{meta}</div>"
                f"<div style='margin:6px 0'><b>Prompt:</b> {esc(r['prompt'])}</div>"
                f"<div style='display:flex;gap:10px'>{side('a')}{side('b')}</div>{rationale}</div>")
        return pn.pane.HTML(body, sizing_mode="stretch_width")

    @param.depends("time_window", "task", "annotator")
    def summary(self):
        ann = self.filtered()
        flagged = self.flagged()
        txt = (f"<b>{ann.height:,}</b> judgements by <b>{ann['annotator'].n_unique() if ann.height else 0}</b>"
               f" annotators in <b>{ann['task_id'].n_unique() if ann.height else 0:,}</b> task batches; "
               f"<b>{len(flagged)}</b> flagged")
        return pn.pane.HTML(card("Selection", f"<div class='ann-summary'>{txt}</div>", ACCENT),
                            sizing_mode="stretch_width")

    # -- layout --------------------------------------------------------------------------------
    def __panel__(self):
        if self._layout is not None:
            return self._layout
        self._load()
        w_ann = pn.widgets.Select.from_param(self.param.annotator, label="Annotator", width=220)
        w_task = pn.widgets.TextInput.from_param(self.param.task, label="Task batch (id or prefix)",
                                                 placeholder="e.g. task-0001", width=200)
        widgets = [w_ann, w_task]
        if self.param.time_window.bounds is not None:
            w_time = pn.widgets.DatetimeRangeSlider.from_param(
                self.param.time_window, label="Time window (UTC)", width=420, step=3_600_000)
            widgets.insert(0, w_time)
        self._flags = pn.widgets.Tabulator(self._flag_frame(), show_index=False, disabled=True, height=260,
                                           hidden_columns=["annotator"], sizing_mode="stretch_width",
                                           layout="fit_data_fill")
        self._flags.on_click(self._on_flag_click)
        self._items = pn.widgets.Tabulator(self._items_frame(), show_index=False, disabled=True,
                                           pagination="remote", page_size=10, selectable=1, height=340,
                                           sizing_mode="stretch_width", layout="fit_data_fill")
        self._items.param.watch(self._on_item_select, "selection")
        self._items.on_click(self._on_item_click)
        self.param.watch(self._refresh_tables, ["time_window", "task", "annotator"])
        # A chart whose statistic the whole record cannot give (a filter only narrows) is a note.
        has_pairs, has_a, has_longer, has_ann, has_secs = self._shape()

        def chart(fn, ok: bool, title: str, why: str, height: int = 230):
            return (pn.pane.HoloViews(hv.DynamicMap(fn), linked_axes=False) if ok
                    else not_enough(title, why, height=height))
        self._layout = pn.Column(
            pn.Row(*widgets, sizing_mode="stretch_width"),
            self.summary,
            pn.Row(chart(self.heatmap, has_pairs, "Pairwise agreement",
                         "no item was judged by two annotators", PLOT_OPTS["height"] + 60),
                   pn.Column(chart(self.position_bias, has_a, "Position bias", "no a/b choice"),
                             chart(self.length_bias, has_longer, "Length bias",
                                   "no a/b choice between responses of different lengths"))),
            pn.Row(chart(self.throughput, has_ann, "Throughput", "no annotations"),
                   chart(self.time_per_item, has_secs, "Time per item",
                         "no annotation has both shown_at and submitted_at")),
            pn.pane.Markdown("#### Annotators (flagged first; click a row to drill down)", margin=(5, 10, 0, 10)),
            self._flags,
            pn.pane.Markdown("#### Items of the selected annotator (click one to see the pair)",
                             margin=(5, 10, 0, 10)),
            pn.Row(pn.Column(self._items, width=520), self.pair, sizing_mode="stretch_width"),
            sizing_mode="stretch_width", name="Annotators")
        return self._layout
