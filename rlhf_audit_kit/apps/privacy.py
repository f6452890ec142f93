"""PrivacySpend: budgets, burn-down per scope, the releases timeline and a what-if calculator.

Reads the ``privacy_budget`` and ``privacy_spend`` events (the ledger of
:mod:`rlhf_audit_kit.privacy.budget`) straight from the log's typed tables, so it works on a live
store and on a bundle alike. Spend is what the ledger recorded at each release (the scope's
accountant right after it); the what-if recomposes the recorded mechanism costs of a scope with
the planned release in a :class:`~rlhf_audit_kit.privacy.Accountant`, by the ledger's own rule
(exact basic composition when everything is pure DP, else ``epsilon(delta_budget)``).
"""
from __future__ import annotations

import json
import math

import param
import polars as pl

from ._common import ACCENT, card, esc, not_enough, require_panel
from ._viewer import SourceViewer
from ._data import Source

pn = require_panel()
import holoviews as hv  # noqa: E402

__all__ = ["PrivacySpend", "load_budgets", "load_charges", "what_if"]

ALL = "(all scopes)"
PLAN_MECHANISMS = ("laplace", "discrete_laplace", "gaussian", "subsampled_gaussian")
_TOL = 1e-9

_CHARGE_SCHEMA = {"seq": pl.Int64, "ts": pl.Datetime("us"), "release_id": pl.Utf8, "scope": pl.Utf8,
                  "query": pl.Utf8, "mechanism": pl.Utf8, "epsilon": pl.Float64, "delta": pl.Float64,
                  "cumulative_epsilon": pl.Float64, "costs": pl.Utf8}


def load_budgets(src: Source) -> pl.DataFrame:
    """Latest budget per scope: ``scope, epsilon_budget, delta_budget, description, seq, ts``."""
    def load():
        if src.count("privacy_budget") == 0:
            return pl.DataFrame(schema={"scope": pl.Utf8, "epsilon_budget": pl.Float64, "delta_budget": pl.Float64,
                                        "description": pl.Utf8, "seq": pl.Int64, "ts": pl.Datetime("us")})
        return src.sql("SELECT scope, epsilon AS epsilon_budget, delta AS delta_budget, description, seq, ts "
                       "FROM privacy_budget QUALIFY row_number() OVER (PARTITION BY scope ORDER BY seq DESC) = 1 "
                       "ORDER BY scope")
    return src.cached("privacy/budgets", load)


def load_charges(src: Source) -> pl.DataFrame:
    """One row per release and charged scope, in log order (see ``PrivacyLedger.spend_history``),
    plus ``costs`` (JSON list of the release's mechanism costs)."""
    def load():
        if src.count("privacy_spend") == 0:
            return pl.DataFrame(schema=_CHARGE_SCHEMA)
        rows = src.sql("SELECT seq, ts, release_id, scopes::VARCHAR AS scopes, query, mechanism, "
                       "parameters::VARCHAR AS parameters, epsilon, delta FROM privacy_spend ORDER BY seq")
        out = []
        for seq, ts, rid, scopes_j, query, mech, params_j, eps, delta in rows.iter_rows():
            scopes = json.loads(scopes_j)
            costs = json.dumps(json.loads(params_j).get("costs", []))
            charged = scopes.get("charged", {})
            for scope in scopes.get("scopes", []):
                cum = charged.get(scope, {}).get("epsilon_spent")
                out.append((seq, ts, rid, scope, query, mech, eps, delta, cum, costs))
        df = pl.DataFrame(out, schema=_CHARGE_SCHEMA, orient="row")
        # releases recorded without a cumulative figure: basic composition of their epsilons
        return df.with_columns(pl.col("cumulative_epsilon").fill_null(pl.col("epsilon").cum_sum().over("scope")))
    return src.cached("privacy/charges", load)


def _planned_cost(mechanism: str, epsilon: float, delta: float, sample_rate: float):
    from ..privacy import Gaussian, Laplace, MechanismCost
    if mechanism == "laplace":
        return Laplace.calibrate(epsilon).cost()
    if mechanism == "discrete_laplace":
        return MechanismCost("discrete_laplace", 1.0 / epsilon)
    sigma = Gaussian.calibrate(epsilon, delta).cost().noise
    if mechanism == "gaussian":
        return MechanismCost("gaussian", sigma)
    return MechanismCost("subsampled_gaussian", sigma, sample_rate=sample_rate)


def what_if(budgets: pl.DataFrame, charges: pl.DataFrame, *, mechanism: str, epsilon: float,
            delta: float = 0.0, count: int = 1, sample_rate: float = 0.01,
            scopes: list[str] | None = None) -> pl.DataFrame:
    """Cost of a planned release (``count`` applications of a mechanism calibrated to
    ``epsilon``/``delta`` at sensitivity 1) on each scope's budget.

    Returns ``scope, epsilon_budget, delta_budget, spent, planned_alone, spent_after,
    remaining_after, fits``.
    """
    from ..privacy import Accountant, MechanismCost
    cost = _planned_cost(mechanism, float(epsilon), float(delta), float(sample_rate))
    rows = []
    for b in budgets.iter_rows(named=True):
        if scopes and b["scope"] not in scopes:
            continue
        acc = Accountant()
        for costs_j in charges.filter(pl.col("scope") == b["scope"])["costs"].to_list():
            for c in json.loads(costs_j):
                acc.compose(MechanismCost.from_dict(c))
        alone = Accountant()
        alone.compose(cost, int(count))

        def spent(a) -> float:
            pure = a.pure_epsilon()
            return pure if pure is not None else a.epsilon(b["delta_budget"])
        before = spent(acc) if acc.events else 0.0
        acc.compose(cost, int(count))
        after = spent(acc)
        rows.append((b["scope"], b["epsilon_budget"], b["delta_budget"], before, spent(alone), after,
                     b["epsilon_budget"] - after,
                     bool(math.isfinite(after) and after <= b["epsilon_budget"] * (1 + _TOL) + 1e-15)))
    return pl.DataFrame(rows, schema={"scope": pl.Utf8, "epsilon_budget": pl.Float64, "delta_budget": pl.Float64,
                                      "spent": pl.Float64, "planned_alone": pl.Float64,
                                      "spent_after": pl.Float64, "remaining_after": pl.Float64,
                                      "fits": pl.Boolean}, orient="row")


class PrivacySpend(SourceViewer):
    """Privacy budgets: burn-down per scope, releases timeline, remaining budget and a what-if.

    Parameters
    ----------
    source
        An AuditStore, a bundle or a path. Read only: the what-if never records anything.
    """

    scope = param.Selector(default=ALL, objects=[ALL], doc="Budget scope to show, or all of them.")
    plan_mechanism = param.Selector(default="laplace", objects=list(PLAN_MECHANISMS),
                                    doc="Mechanism of the planned release (calibrated at sensitivity 1).")
    plan_epsilon = param.Number(default=0.1, bounds=(1e-4, 100), doc="Epsilon of one planned application.")
    plan_delta = param.Number(default=1e-6, bounds=(0, 0.1), doc="Delta of one planned application (Gaussian only).")
    plan_count = param.Integer(default=1, bounds=(1, 100_000), doc="How many times the planned release is run.")
    plan_sample_rate = param.Number(default=0.01, bounds=(1e-6, 1.0),
                                    doc="Poisson sampling rate (subsampled Gaussian only).")
    estimate = param.Boolean(default=False, doc="Show the what-if (set by the Estimate button).")

    def _load(self) -> None:
        if self._loaded:
            return
        self._budgets = load_budgets(self._src)
        self._charges = load_charges(self._src)
        scopes = sorted(set(self._budgets["scope"].to_list()) | set(self._charges["scope"].to_list()))
        self.param.scope.objects = [ALL, *scopes]
        self._loaded = True

    def _sel(self, df: pl.DataFrame) -> pl.DataFrame:
        return df if self.scope == ALL else df.filter(pl.col("scope") == self.scope)

    def remaining(self) -> pl.DataFrame:
        """Per scope: ``scope, epsilon_budget, delta_budget, epsilon_spent, remaining, releases, description``."""
        self._load()
        last = self._charges.group_by("scope").agg(pl.col("cumulative_epsilon").last().alias("epsilon_spent"),
                                                   pl.len().alias("releases"))
        t = (self._budgets.join(last, on="scope", how="full", coalesce=True)
             .with_columns(pl.col("epsilon_spent").fill_null(0.0), pl.col("releases").fill_null(0))
             .with_columns((pl.col("epsilon_budget") - pl.col("epsilon_spent")).alias("remaining"))
             .select("scope", "epsilon_budget", "delta_budget", "epsilon_spent", "remaining", "releases",
                     "description").sort("scope"))
        return self._sel(t)

    def releases(self) -> pl.DataFrame:
        """Releases (one row per release and charged scope) under the scope filter."""
        self._load()
        return self._sel(self._charges).drop("costs")

    def plan(self) -> pl.DataFrame:
        """The what-if table for the planned release (see :func:`what_if`)."""
        self._load()
        scopes = None if self.scope == ALL else [self.scope]
        return what_if(self._budgets, self._charges, mechanism=self.plan_mechanism, epsilon=self.plan_epsilon,
                       delta=self.plan_delta, count=self.plan_count, sample_rate=self.plan_sample_rate,
                       scopes=scopes)

    # -- charts --------------------------------------------------------------------------------
    @param.depends("scope")
    def burn_down(self):
        """Remaining epsilon per scope after each release (steps), budget exhausted at 0."""
        self._load()
        if self._sel(self._budgets).height == 0:
            return not_enough("Budget burn-down", "no privacy budget declared", width=560, height=300)
        ch = self._sel(self._charges).join(self._budgets.select("scope", "epsilon_budget"), on="scope", how="left")
        start = (self._sel(self._budgets).select("scope", pl.col("seq"), pl.col("epsilon_budget").alias("remaining"))
                 .with_columns(pl.lit("budget set").alias("query")))
        pts = ch.select("scope", "seq", (pl.col("epsilon_budget") - pl.col("cumulative_epsilon")).alias("remaining"),
                        "query")
        d = pl.concat([start, pts]).sort("scope", "seq").to_pandas()
        curves = {s: hv.Curve(g, "seq", ["remaining", "query"], label=s).opts(interpolation="steps-post",
                                                                              tools=["hover"], line_width=2)
                  for s, g in d.groupby("scope")} if len(d) else {}
        over = hv.NdOverlay(curves, kdims="scope") if curves else hv.Curve([])
        return (over * hv.HLine(0).opts(color="#d62728", line_dash="dashed")).opts(
            title="Budget burn-down: remaining epsilon per scope", xlabel="log seq of the release",
            ylabel="remaining epsilon", width=560, height=300, legend_position="right", framewise=True)

    @param.depends("scope")
    def timeline(self):
        """Every release: when, which mechanism, its epsilon."""
        self._load()
        if self._sel(self._charges).height == 0:
            return not_enough("Releases", "no release recorded", width=560, height=300)
        d = (self._sel(self._charges).unique("release_id", keep="first", maintain_order=True)
             .select("seq", "ts", "query", "mechanism", "epsilon", "delta").to_pandas())
        pts = hv.Scatter(d, "seq", ["epsilon", "mechanism", "query", "delta", "ts"]).opts(
            color="mechanism", cmap="Category10", size=10, tools=["hover"], legend_position="right")
        spikes = hv.Spikes(d, "seq", "epsilon").opts(color="#bbb")
        return (spikes * pts).opts(title="Releases: epsilon per release, by mechanism", width=560, height=300,
                                   xlabel="log seq", ylabel="epsilon", framewise=True)

    @param.depends("scope")
    def remaining_bars(self):
        """Spent and remaining epsilon per scope."""
        if self.remaining()["epsilon_budget"].drop_nulls().len() == 0:
            return not_enough("Remaining budget", "no privacy budget declared", width=420, height=300)
        t = self.remaining().select("scope", pl.col("epsilon_spent").alias("spent"),
                                    pl.col("remaining").clip(lower_bound=0)).to_pandas()
        long = t.melt(id_vars="scope", var_name="part", value_name="epsilon")
        return hv.Bars(long, ["scope", "part"], "epsilon").opts(
            stacked=True, cmap={"spent": "#d62728", "remaining": "#2ca02c"}, tools=["hover"],
            title="Remaining budget", width=420, height=300, xrotation=20, framewise=True)

    @param.depends("scope", "plan_mechanism", "plan_epsilon", "plan_delta", "plan_count", "plan_sample_rate",
                   "estimate")
    def plan_summary(self):
        if not self.estimate:  # the accountant (dp-accounting) is only loaded when asked for
            return pn.pane.HTML(card("What-if", "<i>set a planned release and press <b>Estimate</b></i>"),
                                sizing_mode="stretch_width")
        try:
            p = self.plan()
        except Exception as e:  # noqa: BLE001 - e.g. Gaussian with delta 0: show why
            return pn.pane.HTML(card("What-if", f"<span style='color:#d62728'>{esc(e)}</span>", "#d62728"),
                                sizing_mode="stretch_width")
        if p.height == 0:
            return pn.pane.HTML(card("What-if", "<i>no budget declared for this scope</i>"), sizing_mode="stretch_width")
        lines = []
        for r in p.iter_rows(named=True):
            ok = r["fits"]
            colour = "#2ca02c" if ok else "#d62728"
            lines.append(f"<li><b>{esc(r['scope'])}</b>: spent {r['spent']:.4g} &rarr; {r['spent_after']:.4g} of "
                         f"{r['epsilon_budget']:.4g} (this release alone {r['planned_alone']:.4g}) &mdash; "
                         f"<b style='color:{colour}'>{'fits' if ok else 'would be refused'}</b></li>")
        return pn.pane.HTML(card("What-if: planned release", f"<ul class='what-if'>{''.join(lines)}</ul>", ACCENT),
                            sizing_mode="stretch_width")

    def _refresh(self, *events) -> None:
        self._rem_table.value = self.remaining().to_pandas()
        self._rel_table.value = self.releases().to_pandas()

    def __panel__(self):
        if self._layout is not None:
            return self._layout
        self._load()
        self._rem_table = pn.widgets.Tabulator(self.remaining().to_pandas(), show_index=False, disabled=True,
                                               sizing_mode="stretch_width", layout="fit_data_fill")
        self._rel_table = pn.widgets.Tabulator(self.releases().to_pandas(), show_index=False, disabled=True,
                                               pagination="remote", page_size=10, sizing_mode="stretch_width",
                                               layout="fit_data_fill")
        self.param.watch(self._refresh, ["scope"])
        estimate_btn = pn.widgets.Button(label="Estimate", color="primary", width=200)
        estimate_btn.on_click(lambda e: setattr(self, "estimate", True))
        planner = pn.Column(
            pn.pane.Markdown("#### What-if: cost of a planned release"),
            pn.widgets.Select.from_param(self.param.plan_mechanism, label="Mechanism", width=200),
            pn.widgets.FloatInput.from_param(self.param.plan_epsilon, label="epsilon (per application)", width=200,
                                             step=0.05),
            pn.widgets.FloatInput.from_param(self.param.plan_delta, label="delta (Gaussian)", width=200, step=1e-6),
            pn.widgets.IntInput.from_param(self.param.plan_count, label="applications", width=200),
            pn.widgets.FloatInput.from_param(self.param.plan_sample_rate, label="sampling rate (subsampled)",
                                             width=200, step=0.01),
            estimate_btn,
            width=240)
        empty = self._budgets.height == 0 and self._charges.height == 0
        note = pn.pane.HTML(card("No privacy ledger", "<i>this record has no privacy budgets or releases yet "
                                 "(see <code>store.privacy</code>)</i>")) if empty else None
        self._layout = pn.Column(
            *([note] if note else []),
            pn.Row(pn.widgets.Select.from_param(self.param.scope, label="Scope", width=260)),
            # small data: plain re-render on a scope change (the number of curves changes with it)
            pn.Row(self.burn_down, self.remaining_bars),
            pn.Row(self.timeline,
                   pn.Column(planner, self.plan_summary, width=460)),
            pn.pane.Markdown("#### Budgets"), self._rem_table,
            pn.pane.Markdown("#### Releases (one row per charged scope)"), self._rel_table,
            sizing_mode="stretch_width", name="Privacy")
        return self._layout
