"""The handful of things to look at first: one table of findings over annotators and the model.

:func:`summary` runs :func:`~.annotators.annotator_report`, :func:`~.annotators.annotator_drift`
and :func:`~.model.reward_hacking` (each part is skipped, with a note, when its data is absent)
and turns what they flag into rows of :attr:`Summary.findings`, most severe first.

Examples
--------
>>> from rlhf_audit_kit import demo
>>> s = summary(demo.Campaign(20_000, seed=0).frames())
>>> s.findings.columns
['severity', 'area', 'subject', 'finding', 'statistic', 'value', 'threshold', 'evidence']
>>> s.findings.filter(pl.col("finding") == "reward hacking")["subject"].to_list()
['ppo-demo-001 step 280']
"""
from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from scipy import stats

from ._source import reads_source
from .annotators import annotator_drift, annotator_report
from .model import _p, _sql_source, _try_sql, reward_hacking

__all__ = ["Summary", "summary"]

SEVERITIES = ("high", "medium", "low")
_AREA_ORDER = ("model", "annotators", "annotator drift", "reward model")

# flag -> (severity, finding title, statistic column, threshold keyword)
_FLAG_INFO = {
    "random_clicker": ("high", "random clicker", "agreement_kappa", "random_kappa_max"),
    "position_bias": ("high", "position bias", "position_a_share", "position_share_min"),
    "length_bias": ("high", "length bias", "length_longer_share", "length_share_min"),
    "low_agreement": ("medium", "low agreement", "agreement", "min_agreement"),
    "low_gold_accuracy": ("medium", "low gold accuracy", "gold_accuracy", "min_gold_accuracy"),
    "inconsistent": ("low", "inconsistent on repeats", "self_consistency", "min_self_consistency"),
}
_REPORT_DEFAULTS = {"random_kappa_max": 0.20, "position_share_min": 0.65, "length_share_min": 0.70,
                    "min_agreement": 0.65, "min_gold_accuracy": 0.80, "min_self_consistency": 0.70}
_SCHEMA = {"severity": pl.String, "area": pl.String, "subject": pl.String, "finding": pl.String,
           "statistic": pl.String, "value": pl.Float64, "threshold": pl.Float64, "evidence": pl.String}


@dataclass
class Summary:
    """What :func:`summary` found, and the tables behind it.

    Attributes
    ----------
    findings
        One row per finding, most severe first: ``severity`` ("high", "medium", "low"),
        ``area`` ("model", "annotators", "annotator drift", "reward model"), ``subject`` (an
        annotator pseudonym or ``"<run> step <n>"``), ``finding`` (short title), ``statistic``
        (the column it rests on), ``value``, ``threshold`` (Float64), ``evidence`` (words).
        An annotator with several flags gets one row, for the most serious one; the others
        follow in its evidence after "| also".
    annotators, drift, hacking
        The full :func:`~.annotators.annotator_report`, :func:`~.annotators.annotator_drift` and
        :func:`~.model.reward_hacking` tables (None when that part could not run).
    notes
        Parts skipped and why, e.g. ``{"model": "no reward scores"}``, and what the data could not
        support: ``"position bias"`` counts the a/b choices left out because their display order
        is unknown, ``"annotator drift"`` the annotations without a time of their own (a loaded
        dataset file's recording time is its ingest, not the annotators' time).
    """

    findings: pl.DataFrame
    annotators: pl.DataFrame | None = None
    drift: pl.DataFrame | None = None
    hacking: pl.DataFrame | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Findings per severity."""
        got = dict(self.findings.group_by("severity").len().rows()) if self.findings.height else {}
        return {s: int(got.get(s, 0)) for s in SEVERITIES}

    def __repr__(self) -> str:
        c = self.counts()
        head = (f"<Summary: {self.findings.height} findings "
                f"({c['high']} high, {c['medium']} medium, {c['low']} low)>")
        lines = [head]
        for r in self.findings.head(12).iter_rows(named=True):
            lines.append(f"  [{r['severity']}] {r['area']}: {r['finding']} - {_short(r['subject'])}: "
                         f"{r['evidence']}")
        if self.findings.height > 12:
            lines.append(f"  ... {self.findings.height - 12} more in .findings")
        lines += [f"  (skipped {k}: {v})" for k, v in self.notes.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        c = self.counts()
        colours = {"high": "#c0392b", "medium": "#d68910", "low": "#7f8c8d"}
        rows = []
        for r in self.findings.iter_rows(named=True):
            val = "" if r["value"] is None else f"{r['value']:.3g}"
            thr = "" if r["threshold"] is None else f"{r['threshold']:.3g}"
            rows.append(
                f"<tr><td style='color:{colours.get(r['severity'], '#000')};font-weight:bold'>"
                f"{html.escape(r['severity'])}</td><td>{html.escape(r['area'])}</td>"
                f"<td><code title='{html.escape(r['subject'])}'>{html.escape(_short(r['subject']))}</code></td>"
                f"<td>{html.escape(r['finding'])}</td><td>{html.escape(r['statistic'])}</td>"
                f"<td style='text-align:right'>{val}</td><td style='text-align:right'>{thr}</td>"
                f"<td style='text-align:left'>{html.escape(r['evidence'])}</td></tr>")
        body = "".join(rows) or "<tr><td colspan=8><i>nothing to report</i></td></tr>"
        notes = "".join(f"<li>skipped {html.escape(k)}: {html.escape(v)}</li>" for k, v in self.notes.items())
        return (f"<div><b>Audit summary</b>: {self.findings.height} findings "
                f"({c['high']} high, {c['medium']} medium, {c['low']} low)"
                "<table><tr><th>severity</th><th>area</th><th>subject</th><th>finding</th>"
                "<th>statistic</th><th>value</th><th>threshold</th><th>evidence</th></tr>"
                f"{body}</table>{'<ul>' + notes + '</ul>' if notes else ''}</div>")


def _short(subject: str) -> str:
    return subject[:22] + "…" if subject.startswith("p-") and len(subject) > 23 else subject


@reads_source
def summary(
    source: Any,
    *,
    since: Any = None,
    until: Any = None,
    run_id: str | None = None,
    drift_window: Any = "7d",
    alpha: float = 0.01,
    exclude_flagged_from_winrate: bool = True,
    report_options: Mapping[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Summary:
    """Run the annotator and model analyses and list what deserves attention, worst first.

    Parameters
    ----------
    source
        Store, bundle, a bundle's folder or fsspec URL (opened once for the call), or
        ``{kind: DataFrame}`` mapping (e.g. ``demo.Campaign(...).frames()``).
    since, until
        Limit the annotator analyses to this period.
    run_id
        The training run for the model part (default: the one with the most reward scores).
    drift_window
        Window of :func:`~.annotators.annotator_drift` (``"7d"``, or a number of windows).
    alpha
        Family-wise significance level of every test.
    exclude_flagged_from_winrate
        Leave the labels of flagged annotators out of the win-rates used to detect reward
        hacking (their labels are noise or bias, not preference).
    report_options
        Further keywords of :func:`~.annotators.annotator_report` (thresholds).
    storage_options
        For a source named by an fsspec URL: its file system's options (see
        :func:`~rlhf_audit_kit.bundle.open_bundle`).

    Returns
    -------
    Summary
        ``.findings`` (see :class:`Summary`) plus the tables it came from. Severity: random
        clickers, position/length bias, drifting annotators and reward hacking are "high"; low
        agreement or gold accuracy, KL accelerating and a length-loving reward model "medium";
        inconsistency on repeats "low".

    Examples
    --------
    >>> from rlhf_audit_kit import demo
    >>> camp = demo.Campaign(20_000, seed=1)
    >>> s = summary(camp.frames())
    >>> s.counts()["high"] >= 7
    True
    """
    opts = dict(report_options or {})
    ann_source = source["annotation"] if isinstance(source, Mapping) else source
    rows: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    report = drift = hacking = None
    flagged: list[str] = []

    try:
        report = annotator_report(ann_source, since=since, until=until, alpha=alpha, **opts)
    except Exception as exc:  # noqa: BLE001 - a missing part must not hide the others
        notes["annotators"] = _why(exc)
    if report is not None and report.height:
        thresholds = {**_REPORT_DEFAULTS, **opts}
        order = list(_FLAG_INFO)
        for r in report.filter(pl.col("flags").list.len() > 0).iter_rows(named=True):
            flagged.append(r["annotator"])
            # one row per annotator: the most serious flag, the others as supporting evidence
            found = sorted(zip(r["flags"], r["flag_reason"].split("; ")), key=lambda fw: order.index(fw[0]))
            flag, why = found[0]
            severity, title, stat, thr = _FLAG_INFO[flag]
            also = "; ".join(w for _, w in found[1:])
            rows.append(dict(severity=severity, area="annotators", subject=r["annotator"],
                             finding=title, statistic=stat, value=_f(r[stat]),
                             threshold=_f(thresholds[thr]),
                             evidence=why + (f" | also {also}" if also else "")))
    elif report is not None:
        notes["annotators"] = "no annotations"
    if report is not None and report.height:
        notes.update(_unsupported(report))

    try:
        drift = annotator_drift(ann_source, window=drift_window, since=since, until=until, alpha=alpha)
    except Exception as exc:  # noqa: BLE001
        notes["annotator drift"] = _why(exc) + ("; " + notes["annotator drift"] if "annotator drift" in notes else "")
    if drift is not None and drift.height:
        for r in drift.filter("drifting").unique("annotator", keep="first").sort("annotator").iter_rows(named=True):
            rows.append(dict(severity="high", area="annotator drift", subject=r["annotator"],
                             finding="drifting annotator", statistic="agreement_change",
                             value=_f(r["agreement_change"]), threshold=-0.15,
                             evidence=r["drift_reason"]))

    src = None
    try:
        src = _sql_source(source)
        hacking = reward_hacking(src, run_id, alpha=alpha,
                                 exclude_annotators=flagged if exclude_flagged_from_winrate else None)
    except Exception as exc:  # noqa: BLE001
        notes["model"] = _why(exc)
    if hacking is not None and hacking.height:
        rows += _model_findings(hacking)
    if src is not None and hacking is not None:
        rows += _reward_length_finding(src, hacking["run_id"][0], alpha)

    findings = pl.DataFrame(rows, schema=_SCHEMA) if rows else pl.DataFrame(schema=_SCHEMA)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    area = {a: i for i, a in enumerate(_AREA_ORDER)}
    findings = (findings.with_columns(_r=pl.col("severity").replace_strict(rank, default=9),
                                      _a=pl.col("area").replace_strict(area, default=9))
                .sort("_r", "_a", "finding", "subject").drop("_r", "_a"))
    return Summary(findings=findings, annotators=report, drift=drift, hacking=hacking, notes=notes)


def _unsupported(report: pl.DataFrame) -> dict[str, str]:
    """Notes on what the annotations cannot support, with counts (nothing is plotted from them)."""
    notes = {}
    unknown, untimed = int(report["n_order_unknown"].sum()), int(report["n_untimed"].sum())
    if unknown:
        notes["position bias"] = (f"{unknown:,} a/b choices have no known display order (the source "
                                  "puts one response first by construction, e.g. HH-RLHF's chosen): "
                                  "position bias is tested on the others only")
    if untimed:
        notes["annotator drift"] = (f"{untimed:,} annotations have no time of their own (no shown_at "
                                    "or submitted_at; the recording time of a loaded file is its ingest): "
                                    "throughput, speed and drift leave them out")
    return notes


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _model_findings(h: pl.DataFrame) -> list[dict[str, Any]]:
    out = []
    run = h["run_id"][0] or "run"
    start = h["hacking_start_step"][0]
    if start is not None:
        at = h.filter(pl.col("step") == start).row(0, named=True)
        last = h.row(h.height - 1, named=True)
        drop = (at["winrate"] or 0.0) - (last["winrate"] or 0.0)
        extra = []
        if at["length_mean"] and last["length_mean"]:
            extra.append(f"mean length {at['length_mean']:.0f} -> {last['length_mean']:.0f}")
        if at["kl"] is not None and last["kl"] is not None:
            extra.append(f"KL {at['kl']:.2f} -> {last['kl']:.2f}")
        out.append(dict(severity="high", area="model", subject=f"{run} step {start}",
                        finding="reward hacking", statistic="winrate drop", value=float(drop),
                        threshold=0.05,
                        evidence=h["hacking_evidence"][0] + ("; " + ", ".join(extra) if extra else "")))
    # the first checkpoint from which KL accelerates at every later checkpoint (a sustained rise)
    flags = h["kl_accelerating"].to_list()
    tail = next((i for i in range(len(flags)) if all(flags[i:])), None) if any(flags) else None
    acc = h.slice(tail) if tail is not None and len(flags) - tail >= 2 else h.clear()
    if acc.height:
        first = acc.row(0, named=True)
        out.append(dict(severity="medium", area="model", subject=f"{run} step {first['step']}",
                        finding="KL accelerating", statistic="kl_change", value=_f(first["kl_change"]),
                        threshold=None,
                        evidence=f"KL rose {first['kl_change']:.2f} over the last checkpoints to "
                                 f"{first['kl']:.2f} at step {first['step']}, more than twice its "
                                 f"early rate, and at each of the {acc.height} checkpoints from there on"))
    return out


def _reward_length_finding(src: Any, run: str | None, alpha: float) -> list[dict[str, Any]]:
    where, params = ("WHERE run_id = ?", [run]) if run is not None else ("", None)
    got = _try_sql(src, f"SELECT coalesce(step, 0) AS step, score::DOUBLE AS s, "
                        f"response_length::DOUBLE AS l FROM reward_score {where}", params)
    if got is None:
        return []
    got = got.drop_nulls()
    # Spearman within each step (ranks standardised per step, then pooled), so that reward and
    # length rising together over training does not count: only "longer scores higher".
    z = got.with_columns(
        zs=(pl.col("s").rank() - pl.col("s").rank().mean()).over("step"),
        zl=(pl.col("l").rank() - pl.col("l").rank().mean()).over("step"),
    ).with_columns(
        zs=pl.col("zs") / pl.col("zs").std().over("step"), zl=pl.col("zl") / pl.col("zl").std().over("step"),
    ).drop_nans().drop_nulls()
    n_steps = z["step"].n_unique()
    dof = z.height - 2 * n_steps
    if dof < 30:
        return []
    rho = float((z["zs"] * z["zl"]).sum() / (z.height - n_steps))
    rho = max(-1.0, min(1.0, rho))
    t = rho * ((dof / max(1e-12, 1 - rho * rho)) ** 0.5)
    p = float(2 * stats.t.sf(abs(t), dof))
    if rho >= 0.2 and p < alpha:
        return [dict(severity="medium", area="reward model", subject=f"{run or 'run'}",
                     finding="reward favours length", statistic="spearman(score, length)", value=rho,
                     threshold=0.2,
                     evidence=f"within a policy step, longer responses get higher rewards (Spearman "
                              f"{rho:.2f} over {z.height:,} scored samples, {_p(p)}): a loophole "
                              f"the policy can exploit")]
    return []
