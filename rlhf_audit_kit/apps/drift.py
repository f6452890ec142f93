"""ModelDrift: reward distributions per checkpoint vs a reference, PSI/KS/JS over checkpoints,
KL and reward over training steps with change points, and reward against response length.

Reward scores are read once per source as a slim frame (run, reward model, step, score, length);
training metrics are read per (run, metric) on demand and cached. Curves over steps are reduced to
at most ``MAX_POINTS`` bins before plotting; change points are found on the full series.
"""
from __future__ import annotations


import numpy as np
import param
import polars as pl

from ._common import ACCENT, not_enough, require_panel
from ._viewer import SourceViewer
from ._data import Source

pn = require_panel()
import holoviews as hv  # noqa: E402

__all__ = ["ModelDrift", "load_rewards", "metric_series", "downsample", "detect_changes"]

MAX_POINTS = 1_500
SAMPLE_POINTS = 1_500
KL_CANDIDATES = ("objective/kl", "kl", "train/kl", "policy/approxkl_avg")
REWARD_CANDIDATES = ("objective/scores", "objective/rlhf_reward", "reward", "rewards/mean", "train/reward")


def load_rewards(src: Source) -> pl.DataFrame:
    """Slim reward scores: ``run_id, reward_model, step, score, response_length``."""
    def load():
        if src.count("reward_score") == 0:
            return pl.DataFrame(schema={"run_id": pl.Utf8, "reward_model": pl.Utf8, "step": pl.Int64,
                                        "score": pl.Float64, "response_length": pl.Int64})
        return src.sql("SELECT coalesce(run_id, '') AS run_id, reward_model, coalesce(step, 0) AS step, score, "
                       "response_length FROM reward_score WHERE isfinite(score) ORDER BY step")
    return src.cached("drift/rewards", load)


def metric_names(src: Source) -> list[str]:
    def load():
        if src.count("train_step") == 0:
            return []
        return src.sql("SELECT DISTINCT unnest(map_keys(metrics)) AS k FROM train_step ORDER BY 1")["k"].to_list()
    return src.cached("drift/metric_names", load)


def metric_series(src: Source, run_id: str, metric: str) -> pl.DataFrame:
    """``step, value`` of one training metric of one run (finite values only), sorted by step."""
    def load():
        if not metric:
            return pl.DataFrame(schema={"step": pl.Int64, "value": pl.Float64})
        where, params = ("WHERE run_id = ?", [metric, run_id]) if run_id else ("", [metric])
        df = src.sql(f"SELECT step, metrics[?] AS value FROM train_step {where} ORDER BY step", params)
        return df.filter(pl.col("value").is_not_null() & pl.col("value").is_finite()).unique(
            "step", keep="last", maintain_order=True)
    return src.cached(("drift/metric", run_id, metric), load)


def downsample(df: pl.DataFrame, x: str = "step", y: str = "value", n: int = MAX_POINTS) -> pl.DataFrame:
    """At most ``n`` points: the mean of ``y`` over consecutive bins of rows (first ``x`` of each bin)."""
    if df.height <= n:
        return df.select(x, y)
    size = -(-df.height // n)
    return (df.with_row_index("_i").group_by((pl.col("_i") // size).alias("_b"), maintain_order=True)
              .agg(pl.col(x).first(), pl.col(y).mean()).drop("_b"))


def detect_changes(series: pl.DataFrame, method: str = "cusum") -> pl.DataFrame:
    """Change points of a ``step, value`` series: CUSUM on values standardised by a warm-up
    (h=8, k=0.5; about one false alarm per 10^4 in-control steps) or Page-Hinkley with
    ``delta = 0.5 sigma``, ``threshold = 25 sigma`` of the warm-up."""
    from ..analysis import changepoints
    n = series.height
    if n < 20:
        return series.clear()
    warm = max(10, min(200, n // 5))
    if method == "cusum":
        return changepoints(series, metric="value", method="cusum", warmup=warm, h=8.0, k=0.5)
    sd = float(np.std(series["value"].to_numpy()[:warm])) or 1.0
    return changepoints(series, metric="value", method="page_hinkley", delta=0.5 * sd, threshold=25 * sd,
                        min_instances=warm)


class ModelDrift(SourceViewer):
    """Reward and policy drift over checkpoints and training steps.

    Parameters
    ----------
    source
        An AuditStore, a bundle or a path. Read only.
    """

    run_id = param.Selector(default="", objects=[""], doc="Training run whose scores and metrics are shown.")
    reward_model = param.Selector(default="", objects=[""], doc="Reward model whose scores are compared.")
    checkpoint = param.Selector(default=0, objects=[0], doc="Checkpoint step compared with the reference.")
    reference = param.Selector(default=0, objects=[0], doc="Reference step (default: the earliest).")
    kl_metric = param.Selector(default="", objects=[""], doc="Training metric plotted as KL.")
    reward_metric = param.Selector(default="", objects=[""], doc="Training metric plotted as reward.")
    detector = param.Selector(default="cusum", objects=["cusum", "page_hinkley"],
                              doc="Change-point detector run on the full metric series.")

    # -- data ----------------------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        r = load_rewards(self._src)
        self._rewards = r
        runs = sorted(set(r["run_id"].unique().to_list()))
        if self._src.count("train_step"):
            runs = sorted(set(runs) | set(self._src.cached("drift/runs", lambda: self._src.sql(
                "SELECT DISTINCT run_id FROM train_step")["run_id"].to_list())))
        runs = runs or [""]
        self.param.run_id.objects = runs
        if self.run_id not in runs:
            self.run_id = runs[0]
        rms = sorted(r["reward_model"].unique().to_list()) or [""]
        self.param.reward_model.objects = rms
        if self.reward_model not in rms:
            self.reward_model = rms[0]
        names = metric_names(self._src) or [""]
        self.param.kl_metric.objects = names
        self.param.reward_metric.objects = names
        if self.kl_metric not in names:
            self.kl_metric = next((m for m in KL_CANDIDATES if m in names), names[0])
        if self.reward_metric not in names:
            self.reward_metric = next((m for m in REWARD_CANDIDATES if m in names), names[-1])
        self._loaded = True
        self._update_steps()
        self.param.watch(lambda e: self._update_steps(), ["run_id", "reward_model"])

    def _update_steps(self) -> None:
        steps = sorted(self.scores()["step"].unique().to_list()) or [0]
        self.param.checkpoint.objects = steps
        self.param.reference.objects = steps
        first = not getattr(self, "_steps_set", False)
        self._steps_set = True
        with param.parameterized.batch_call_watchers(self):
            if self.reference not in steps or (first and "reference" not in self._given):
                self.reference = steps[0]
            if self.checkpoint not in steps or (first and "checkpoint" not in self._given):
                self.checkpoint = steps[-1]

    def scores(self) -> pl.DataFrame:
        """Reward scores of the selected run and reward model."""
        self._load()
        return self._rewards.filter((pl.col("run_id") == self.run_id) & (pl.col("reward_model") == self.reward_model))

    def drift(self) -> pl.DataFrame:
        """:func:`rlhf_audit_kit.analysis.drift_table` of every checkpoint against the reference."""
        from ..analysis import drift_table
        s = self.scores()
        if s.height == 0:
            return pl.DataFrame(schema={"step": pl.Int64, "n": pl.Int64, "mean": pl.Float64, "psi": pl.Float64,
                                        "ks_stat": pl.Float64, "ks_pvalue": pl.Float64, "js_distance": pl.Float64,
                                        "wasserstein": pl.Float64})
        key = ("drift/table", self.run_id, self.reward_model, self.reference)
        return self._src.cached(key, lambda: drift_table(s, group="step", value="score", reference=self.reference))

    def metric(self, which: str) -> pl.DataFrame:
        self._load()
        return metric_series(self._src, self.run_id, getattr(self, which))

    def changes(self, which: str) -> pl.DataFrame:
        """Change points (``step, value``) of the KL (``"kl_metric"``) or reward metric."""
        key = ("drift/changes", self.run_id, getattr(self, which), self.detector)
        return self._src.cached(key, lambda: detect_changes(self.metric(which), self.detector))

    # -- charts --------------------------------------------------------------------------------
    @param.depends("run_id", "reward_model", "checkpoint", "reference")
    def distributions(self):
        """Histogram of the checkpoint's scores over the reference's."""
        s = self.scores()
        ref = s.filter(pl.col("step") == self.reference)["score"].to_numpy()
        cur = s.filter(pl.col("step") == self.checkpoint)["score"].to_numpy()
        both = np.concatenate([ref, cur]) if ref.size + cur.size else np.array([0.0, 1.0])
        edges = np.histogram_bin_edges(both, bins=40)
        hr, _ = np.histogram(ref, edges, density=True) if ref.size else (np.zeros(40), None)
        hc, _ = np.histogram(cur, edges, density=True) if cur.size else (np.zeros(40), None)
        return (hv.Histogram((edges, hr), kdims="score", vdims="density", label=f"reference step {self.reference}").opts(
                    color="#999", alpha=0.5, line_alpha=0)
                * hv.Histogram((edges, hc), kdims="score", vdims="density", label=f"checkpoint step {self.checkpoint}").opts(
                    color=ACCENT, alpha=0.55, line_alpha=0)).opts(
            title="Reward distribution: checkpoint vs reference", width=500, height=300,
            legend_position="top_left", framewise=True)

    @param.depends("run_id", "reward_model", "checkpoint", "reference")
    def drift_over_checkpoints(self):
        """PSI, KS statistic and Jensen-Shannon distance of every checkpoint against the reference."""
        d = self.drift().to_pandas()
        curves = [hv.Curve(d, "step", col, label=lab).opts(color=c, tools=["hover"])
                  * hv.Scatter(d, "step", col).opts(color=c, size=5)
                  for col, lab, c in (("psi", "PSI", "#d62728"), ("ks_stat", "KS", ACCENT),
                                      ("js_distance", "JS distance", "#2ca02c"))]
        return hv.Overlay([*curves, hv.VLine(float(self.checkpoint)).opts(color="#ff7f0e", line_dash="dotted")]).opts(
            title=f"Drift of reward scores vs step {self.reference}", width=500, height=300, ylabel="drift",
            legend_position="top_left", framewise=True)

    def _over_steps(self, which: str, title: str, colour: str):
        m = self.metric(which)
        cp = self.changes(which)
        d = downsample(m).to_pandas()
        curve = hv.Curve(d, "step", "value", label=getattr(self, which) or "-").opts(color=colour, tools=["hover"])
        marks = hv.Scatter(cp.to_pandas(), "step", "value", label="change point").opts(
            color="#d62728", marker="triangle", size=11, tools=["hover"])
        layers = [curve, marks]
        if which == "reward_metric":
            means = (self.scores().group_by("step").agg(pl.col("score").mean().alias("value")).sort("step")
                     .to_pandas())
            layers.append(hv.Scatter(means, "step", "value", label="mean RM score per checkpoint").opts(
                color="#ff7f0e", size=7))
        return hv.Overlay(layers).opts(title=title, width=500, height=300, legend_position="top_left",
                                       framewise=True, ylabel=getattr(self, which) or "value")

    @param.depends("run_id", "kl_metric", "detector")
    def kl_over_steps(self):
        """The KL metric over training steps, change points marked."""
        return self._over_steps("kl_metric", "KL over steps (change points marked)", "#9467bd")

    @param.depends("run_id", "reward_model", "reward_metric", "detector")
    def reward_over_steps(self):
        """The reward metric over training steps, change points and mean RM scores per checkpoint."""
        return self._over_steps("reward_metric", "Reward over steps (change points marked)", ACCENT)

    @param.depends("run_id", "reward_model", "checkpoint", "reference")
    def reward_vs_length(self):
        """Score against response length: samples of the reference and the checkpoint, with binned means."""
        s = self.scores().drop_nulls("response_length")
        layers = []
        for step, colour, lab in ((self.reference, "#999", "reference"), (self.checkpoint, ACCENT, "checkpoint")):
            g = s.filter(pl.col("step") == step)
            pts = g.sample(min(g.height, SAMPLE_POINTS), seed=0) if g.height else g
            layers.append(hv.Scatter(pts.to_pandas(), "response_length", "score", label=f"{lab} step {step}").opts(
                color=colour, alpha=0.35, size=4))
            if g.height:
                q = g.with_columns(pl.col("response_length").qcut(12, allow_duplicates=True).alias("_b"))
                means = q.group_by("_b").agg(pl.col("response_length").mean(), pl.col("score").mean()).sort(
                    "response_length").drop("_b")
            else:
                means = g.select("response_length", "score")
            layers.append(hv.Curve(means.to_pandas(), "response_length", "score").opts(color=colour, line_width=3))
        return hv.Overlay(layers).opts(title="Reward vs response length", width=500, height=300,
                                       legend_position="top_left", framewise=True, xlabel="response length")

    def _drift_frame(self):
        return self.drift().with_columns(pl.col(pl.Float64).round(4)).to_pandas()

    def __panel__(self):
        if self._layout is not None:
            return self._layout
        self._load()
        table = pn.widgets.Tabulator(self._drift_frame(), show_index=False, disabled=True, height=260,
                                     sizing_mode="stretch_width", layout="fit_data_fill")
        self.param.watch(lambda e: setattr(table, "value", self._drift_frame()),
                         ["run_id", "reward_model", "reference"])
        self._table = table
        widgets = pn.Row(
            pn.widgets.Select.from_param(self.param.run_id, label="Run", width=170),
            pn.widgets.Select.from_param(self.param.reward_model, label="Reward model", width=170),
            pn.widgets.Select.from_param(self.param.reference, label="Reference step", width=130),
            pn.widgets.Select.from_param(self.param.checkpoint, label="Checkpoint step", width=130),
            pn.widgets.Select.from_param(self.param.kl_metric, label="KL metric", width=180),
            pn.widgets.Select.from_param(self.param.reward_metric, label="Reward metric", width=180),
            pn.widgets.RadioButtonGroup.from_param(self.param.detector, label="Detector"),
            sizing_mode="stretch_width")
        # A chart the whole record has no data for (a selection only narrows it) is a note.
        scores, metrics = self._rewards.height > 0, bool(metric_names(self._src))

        def dm(f, ok: bool, title: str, why: str):
            return (pn.pane.HoloViews(hv.DynamicMap(f), linked_axes=False) if ok
                    else not_enough(title, why, width=500, height=300))
        self._layout = pn.Column(
            widgets,
            pn.Row(dm(self.distributions, scores, "Reward distribution", "no reward scores"),
                   dm(self.drift_over_checkpoints, scores, "Drift of reward scores", "no reward scores")),
            pn.Row(dm(self.kl_over_steps, metrics, "KL over steps", "no training metrics"),
                   dm(self.reward_over_steps, metrics, "Reward over steps", "no training metrics")),
            pn.Row(dm(self.reward_vs_length, scores, "Reward vs response length", "no reward scores"),
                   pn.Column(pn.pane.Markdown("#### Drift per checkpoint (vs the reference step)"), table,
                             sizing_mode="stretch_width"), sizing_mode="stretch_width"),
            sizing_mode="stretch_width", name="Model drift")
        return self._layout
