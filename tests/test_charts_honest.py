"""Charts that tell the truth: one order on both heatmap axes, whole tree sizes and no millisecond
ticks on the snapshots chart, partial days marked rather than read as dips, and one drift verdict
(from its change point on) shared by the analysis, the dashboard and notebook 03."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pn = pytest.importorskip("panel")
import holoviews as hv  # noqa: E402
from bokeh.models import DatetimeTicker, GlyphRenderer, NumeralTickFormatter  # noqa: E402

from rlhf_audit_kit import demo, keys, open_store  # noqa: E402
from rlhf_audit_kit.analysis import annotator_drift  # noqa: E402
from rlhf_audit_kit.apps import AnnotatorBehaviour, Integrity, as_source  # noqa: E402
from rlhf_audit_kit.apps._demo import build_demo  # noqa: E402
from rlhf_audit_kit.privacy.pseudonym import Pseudonymizer  # noqa: E402

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "03_annotator_behaviour.ipynb"
SIZE, SEED = 10_000, 0  # notebook 03's campaign ("small", seed 0)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """The demo record (two signed snapshots taken seconds apart) and the planted drifter's pseudonym."""
    paths = build_demo(tmp_path_factory.mktemp("honest"), size=SIZE, seed=SEED, privacy=False)
    camp = demo.Campaign(SIZE, SEED)
    drifter = Pseudonymizer.from_keys_folder(paths.keys).pseudonymize(camp.ground_truth["drifting"][0])
    return paths, camp.ground_truth, drifter


def _render(element):
    return hv.render(element, backend="bokeh")


def _glyphs(fig):
    return [r for r in fig.renderers if isinstance(r, GlyphRenderer)]


# -- pairwise agreement heatmap ---------------------------------------------------------------------
def test_heatmap_axes_share_one_order(record):
    view = AnnotatorBehaviour(record[0].bundle)
    fig = _render(view.heatmap())
    xs, ys = list(fig.x_range.factors), list(fig.y_range.factors)
    assert xs == ys and len(xs) == len(set(xs)) > 2
    cells = _glyphs(fig)[0].data_source.data
    # the pair table is symmetric, so cell (a, b) sits at (i, j) and (b, a) at (j, i)
    # (HoloViews fills the grid: a pair that shared no item, and an annotator with themself, is NaN)
    at = {(x, y): v for x, y, v in zip(cells["a2"], cells["a1"], cells["zvalues"]) if v == v}
    assert len(at) > len(xs) and all(at[(y, x)] == v for (x, y), v in at.items())
    assert not any((a, a) in at for a in xs)  # the diagonal is each annotator with themself


# -- snapshots chart ---------------------------------------------------------------------------------
@pytest.mark.parametrize("snapshots", [2, 1])
def test_snapshot_axes_show_whole_sizes_and_no_milliseconds(record, tmp_path, snapshots):
    bundle = record[0].bundle if snapshots == 2 else build_demo(tmp_path, size=600, privacy=False,
                                                                 snapshots=1).bundle
    view = Integrity(bundle)
    times = view.snapshots()["ts"]
    assert (times.max() - times.min()) < dt.timedelta(seconds=30)  # close snapshots (or one)
    fig = _render(view.timeline())
    y = fig.yaxis[0]
    assert isinstance(y.formatter, NumeralTickFormatter) and "." not in y.formatter.format
    assert y.ticker.min_interval >= 1
    x = fig.xaxis[0]
    assert isinstance(x.ticker, DatetimeTicker)
    assert min(getattr(t, "min_interval", 1000) for t in x.ticker.tickers) >= 1000  # nothing under 1 s
    assert "%3N" not in x.formatter.milliseconds and "ms" not in x.formatter.milliseconds
    assert fig.x_range.end - fig.x_range.start >= dt.timedelta(minutes=2)
    assert fig.y_range.end - fig.y_range.start >= 8


# -- partial days ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cut_store(tmp_path_factory):
    """A campaign recorded from noon on its first day to noon on its last day."""
    root = tmp_path_factory.mktemp("partial")
    keys.init_keys(root / "keys", "test.rlhf-audit-kit.local/partial", no_passphrase=True)
    ann = demo.Campaign(2_000, seed=0).frames(kinds=["annotation"])["annotation"]
    lo, hi = dt.datetime(2024, 3, 4, 12), dt.datetime(2024, 3, 12, 12)
    ann = ann.filter((pl.col("shown_at") >= lo) & (pl.col("submitted_at") < hi))
    store = open_store(root / "audit.duckdb", keys=root / "keys")
    store.extend(ann, kind="annotation")
    yield store
    store.close()


def test_partial_first_and_last_days_are_marked_not_joined(cut_store):
    view = AnnotatorBehaviour(cut_store)
    view.__panel__()
    daily = view._daily()
    assert daily["partial"].to_list() == [True] + [False] * (daily.height - 2) + [True]
    assert 0.25 < daily["covered"][0] < 0.75 and 0.25 < daily["covered"][-1] < 0.75  # half a day, by work hours
    whole = set(daily["day"].to_list()[1:-1])
    for chart in (view.throughput, view.time_per_item):
        fig = _render(chart())
        assert "partial day" in fig.xaxis[0].axis_label
        line = next(r for r in _glyphs(fig) if type(r.glyph).__name__ == "Line")
        on_line = set(np.asarray(line.data_source.data["day"]).astype("datetime64[us]").tolist())
        assert on_line == whole, "the line joins the whole days only"
        marked = [r for r in _glyphs(fig) if "covered_pct" in r.data_source.data]
        assert len(marked) == 1 and len(marked[0].data_source.data["covered_pct"]) == 2
        assert marked[0].glyph.fill_color == "white"


# -- drift: one verdict from its change point on ----------------------------------------------------
def test_drift_is_marked_from_the_change_point_on(record):
    paths, gt, drifter = record
    for window in ("7d", "4d", 6):
        d = annotator_drift(as_source(paths.bundle), window)
        assert d.filter("drifting")["annotator"].unique().to_list() == [drifter]
        mine = d.filter(pl.col("annotator") == drifter)
        change = mine["change_start"][0]
        assert mine["drifting"].to_list() == (mine["window_start"] >= change).to_list()
        before = mine.filter(pl.col("window_end") <= gt["drift_start"])
        assert before.height >= 1 and not before["drifting"].any(), window
        assert "changed from" in mine["drift_reason"][0]


def test_dashboard_flags_drift_from_the_same_verdict(record):
    paths, gt, drifter = record
    d = annotator_drift(as_source(paths.bundle), "7d")
    view = AnnotatorBehaviour(paths.bundle)
    view.__panel__()
    flagged = view.table().filter(pl.col("flags").str.contains("drift: "))
    assert flagged["annotator"].to_list() == [drifter] == d.filter("drifting")["annotator"].unique().to_list()
    assert d.filter("drifting")["drift_reason"][0] in flagged["flags"][0]
    shown = view._flags.value
    assert "drift: " in shown.loc[shown["annotator"] == drifter, "flags"].iloc[0]
    # a time window that ends before the change point shows no drift
    change = d.filter("drifting")["change_start"][0]
    view.time_window = (view.param.time_window.bounds[0], change - dt.timedelta(hours=1))
    assert not view.table()["flags"].str.contains("drift: ").any()


def test_notebook_03_flags_the_drifting_annotator_from_its_change_point():
    """nbval re-runs the notebook and compares these stored outputs, so they are the notebook's own."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]

    def output_of(marker: str) -> str:
        cell = next(c for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"]))
        return "".join("".join(o.get("data", {}).get("text/plain", o.get("text", ""))) for o in cell["outputs"])

    assert "drifting" in output_of("by_role =")
    table = output_of("window_end").splitlines()
    rows = [line for line in table if line.startswith("│ ") and line.split("┆")[0].strip("│ ").isdigit()]
    flags = [line.split("┆")[-1].strip(" │") for line in rows]
    assert flags[0] == "false" and flags[-1] == "true"
    assert flags == sorted(flags, key=lambda f: f == "true")  # false until the change, true from it on
