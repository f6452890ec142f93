"""Privacy budgets and the spend ledger: differentially private releases recorded in the audit log.

``store.privacy`` is a :class:`PrivacyLedger`. It answers a fixed menu of **declared queries**
about the store's annotations with calibrated noise, and every answer it returns has been charged
to one or more **budgets** and recorded as a hashed ``privacy_spend`` event of the log *before*
it is returned: the budget check and the write happen under the store's writer lock, so
concurrent releases can never overspend, and a refused release writes nothing.

Budgets
-------
``set_budget(scope, epsilon, delta=0.0)`` records a ``privacy_budget`` event; the latest event of
a scope wins. A scope is ``"global"`` or ``"<kind>:<name>"``, e.g. ``"dataset:hh@1"``,
``"pool:vendor-a"``, ``"annotator:<pseudonym>"`` (a raw annotator id given here is pseudonymised
with the store's key before it is written, so it never reaches the store in the clear). A release
charges exactly the scopes it declares (default ``("global",)``); every scope it names must have a
budget. A budget may be lowered below what was already spent: the history stays, ``budgets()``
shows a negative ``remaining``, and every further release charging that scope is refused.

Accounting: per scope, an :class:`~rlhf_audit_kit.privacy.Accountant` composes the mechanisms of
all the scope's recorded releases plus the new one. When all of them are pure-DP (Laplace,
discrete Laplace) the spent epsilon is the exact basic composition (``pure_epsilon()``) compared
with the budget's epsilon; otherwise it is ``epsilon(delta_budget)`` (PLD, capped by RDP), which is
infinite when the budget's delta is 0. A relative tolerance of 1e-9 absorbs the rounding of
``1/epsilon`` in the mechanisms' scales (e.g. ten releases of 0.1 fit a budget of 1.0). One
release's epsilon lies within [1e-6, 1000] (``MIN_RELEASE_EPSILON``, ``MAX_RELEASE_EPSILON``).

The check and the spend are one step even across store objects: the ``privacy_spend`` event is
written in a transaction that first claims the store and then re-reads the newest privacy events;
if any arrived since the check (through a second handle of the file), the check is redone.

Queries (annotator-level adjacency)
-----------------------------------
The privacy unit is one annotator: two stores are neighbours if one has all the annotation rows of
one more annotator. Filters ``task_id``, ``dataset`` (a value or a list of values), ``since``
(inclusive) and ``until`` (exclusive) select rows on ``coalesce(submitted_at, ts)`` and apply to
every query; they depend on each row alone, so they never change a sensitivity.

=====================  ==========================================================================
query                  definition and sensitivity
=====================  ==========================================================================
annotator_count        number of distinct annotators. Sensitivity 1.
count                  number of annotation rows matching ``where`` (allow-listed filters, see
                       :data:`WHERE_FILTERS`), each annotator's rows capped at
                       ``max_items_per_annotator`` = k (default 100): ``sum_i min(n_i, k)``.
                       Sensitivity k.
items_per_annotator    ``stat="histogram"`` (default): annotators per bin of their row count over
                       the declared ``bins`` (ascending integer edges; bin i is
                       ``[edges[i], edges[i+1])``, the last is open; counts below the first edge go
                       to the first bin). One annotator is in one bin: L1 = L2 sensitivity 1.
                       ``stat="mean"``: mean row count, clamped to ``[lower, upper]`` (0, 100).
agreement_rate         mean over annotators of the share of their items on which they agree with
                       the strict plurality of the *other* annotators of the item (pairs compared
                       order-free, a/b swapped as needed; skips dropped; one row per annotator and
                       item). Other annotators' rates depend on an annotator's votes, so the
                       contribution is bounded: each annotator keeps a deterministic subset of at
                       most k = ``max_items_per_annotator`` (10) items, annotators with fewer than
                       r = ``min_items_per_annotator`` (10) items are left out, and items with more
                       than M = ``max_annotators_per_item`` (3) annotators count as disagreement.
                       Removing one annotator changes its own rate (<= 1/2 around the midpoint)
                       and, on each of its <= k items, the rate of <= M others by <= 1/r each:
                       centred-sum sensitivity ``1/2 + k*M/r`` (3.5 by default), count 1.
time_per_item          mean over annotators of their median ``submitted_at - shown_at`` in seconds,
                       clamped to ``[0, upper]`` (600); annotators without timings are left out.
                       Centred-sum sensitivity ``upper/2``, count 1.
choice_shares          shares of a/b/tie/skip. ``contribution="normalise"`` (default): each
                       annotator contributes its own shares (summing to 1), so one annotator moves
                       the totals by L1 <= 1, L2 <= 1; ``contribution="sample"``: each annotator's
                       deterministic subset of at most ``max_items_per_annotator`` = k (20) rows
                       is counted: L1 = L2 sensitivity k. The value is the normalised shares of the
                       noisy totals (negatives set to 0; post-processing), the totals are in
                       ``Release.extra``.
=====================  ==========================================================================

Deterministic subsets order an annotator's rows by ``md5(annotation_id)``, or for
``agreement_rate`` by the md5 of the item (prompt and response pair) so that annotators keep
overlapping items; either way the subset depends on the annotator's own rows only. Means spend epsilon/2 (and delta/2) on a noisy centred sum and
epsilon/2 on a noisy count of annotators (as :func:`~rlhf_audit_kit.privacy.dp_mean`); the
answer is clamped to the bounds. Counts are clamped at 0 (post-processing).

Mechanisms: ``mechanism=None`` picks ``discrete_laplace`` for integer answers (counts, integer
histograms) and ``laplace`` for real ones (means, normalised shares); ``laplace`` and
``gaussian`` (analytic Gaussian, needs ``0 < delta < 1``, calibrated to the L2 sensitivity) are
accepted everywhere, ``discrete_laplace`` only for integer answers.

>>> import tempfile, os
>>> from rlhf_audit_kit.store import open_store
>>> store = open_store(os.path.join(tempfile.mkdtemp(), "a.duckdb"), pseudonymize=False)
>>> _ = store.extend([{"kind": "annotation", "annotation_id": f"x{i}", "prompt_id": "p",
...     "prompt": "q", "response_a_id": "r1", "response_a": "A", "response_b_id": "r2",
...     "response_b": "B", "choice": "a", "annotator": f"w{i % 7}"} for i in range(70)])
>>> _ = store.privacy.set_budget("global", 1.0)
>>> r = store.privacy.release("annotator_count", epsilon=0.5)
>>> r.query, r.epsilon, store.event(r.seq)["kind"]
('annotator_count', 0.5, 'privacy_spend')
>>> store.privacy.budgets().select("scope", "epsilon_spent", "remaining").row(0)
('global', 0.5, 0.5)
>>> store.privacy.release("annotator_count", epsilon=0.6)
Traceback (most recent call last):
...
rlhf_audit_kit.errors.BudgetExceededError: release of epsilon=0.6 refused: scope 'global' has spent epsilon=0.5 of its budget epsilon=1 (delta=0); this release would bring it to 1.1
>>> store.close()
"""
from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
import sys
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import polars as pl

from ..errors import BudgetExceededError, ValidationError
from ..schema import CHOICES
from .accountant import Accountant
from .mechanisms import (RNG, DiscreteLaplace, Gaussian, Laplace, MechanismCost)

__all__ = ["PrivacyLedger", "Release", "QUERIES", "WHERE_FILTERS", "BudgetExceededError"]

#: The declared queries :meth:`PrivacyLedger.release` answers.
QUERIES: tuple[str, ...] = ("annotator_count", "count", "items_per_annotator", "agreement_rate",
                            "time_per_item", "choice_shares")
#: Allow-listed ``where`` filters of the ``count`` query: name -> what it matches.
WHERE_FILTERS: dict[str, str] = {
    "choice": "choice equals the value (a, b, tie, skip)",
    "model": "model_a or model_b equals the value",
    "guideline_version": "guideline_version equals the value",
    "prompt_id": "prompt_id equals the value",
    "is_gold": "true: rows with a gold_choice; false: rows without",
    "gold_correct": "true: choice equals gold_choice; false: gold row answered otherwise",
    "has_rationale": "true: rows with a non-empty rationale; false: rows without",
    "min_strength": "strength >= the value",
}
MECHANISMS = ("laplace", "discrete_laplace", "gaussian")
DEFAULT_BINS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_FILTERS = ("task_id", "dataset", "since", "until")
_SCOPE_RE = re.compile(r"global|[a-z][a-z0-9_.\-]*:\S.*")  # fullmatch: "$" would accept a trailing newline
_TOL = 1e-9  # relative tolerance of budget comparisons (rounding of 1/epsilon in scales)
_ATTEMPTS = 20  # budget checks redone when another handle of the store spent meanwhile
#: Epsilon of one release: smaller ones overflow the accountants (1/epsilon**2), larger ones make the
#: calibration of the Gaussian mechanism crawl, and both are meaningless as privacy.
MIN_RELEASE_EPSILON, MAX_RELEASE_EPSILON = 1e-6, 1e3


class _Moved(Exception):
    """Privacy events were written through another handle since the ledger's last sync."""


def _bad(name: str, reason: str) -> ValidationError:
    return ValidationError(0, name, reason)


def _jsonable(v: Any) -> Any:
    """numpy scalars/arrays and datetimes -> plain JSON values."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, Fraction):
        return float(v)
    if isinstance(v, dt.datetime):
        return v.isoformat()
    return v


# ------------------------------------------------------------------------------------------------
# Releases
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Release:
    """One differentially private answer, already recorded as the ``privacy_spend`` event ``seq``.

    Attributes:
        release_id: uuid4 of the release (the event's ``release_id``).
        query: the declared query name.
        value: the noisy answer (int, float or dict bin -> number).
        epsilon, delta: what the caller asked to spend.
        mechanism: ``laplace``, ``discrete_laplace`` or ``gaussian``.
        scopes: the budgets charged.
        seq: the log sequence number of the spend event.
        params: declared parameters (defaults filled in), filters and sensitivities.
        extra: further post-processed outputs (e.g. the noisy totals behind ``choice_shares``).
        charged: per scope, the accountant's spent epsilon after this release and the budget.
    """

    release_id: str
    query: str
    value: Any
    epsilon: float
    delta: float
    mechanism: str
    scopes: tuple[str, ...]
    seq: int
    params: dict = field(default_factory=dict, repr=False)
    extra: dict = field(default_factory=dict, repr=False)
    charged: dict = field(default_factory=dict, repr=False)

    def _repr_html_(self) -> str:
        esc = html.escape
        if isinstance(self.value, dict):
            val = "<table>" + "".join(
                f"<tr><td>{esc(str(k))}</td><td style='text-align:right'>{_fmt(v)}</td></tr>"
                for k, v in self.value.items()) + "</table>"
        else:
            val = f"<b>{_fmt(self.value)}</b>"
        charged = "".join(
            f"<tr><td>{esc(s)}</td><td style='text-align:right'>{_fmt(c['epsilon_spent'])}</td>"
            f"<td style='text-align:right'>{_fmt(c['epsilon_budget'])}</td></tr>"
            for s, c in self.charged.items())
        return (f"<div class='rlhf-audit-release'><b>DP release</b> <code>{esc(self.query)}</code> "
                f"&middot; {esc(self.mechanism)} &middot; &epsilon;={self.epsilon:g}, "
                f"&delta;={self.delta:g} &middot; log seq {self.seq} &middot; "
                f"<code>{esc(self.release_id)}</code><div>{val}</div>"
                f"<table><tr><th>scope</th><th>&epsilon; spent</th><th>&epsilon; budget</th></tr>"
                f"{charged}</table></div>")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


@dataclass
class _Plan:
    """A release's mechanisms, calibrated before any data is read (their cost is data-free)."""

    query: str
    mechanism: str
    epsilon: float
    delta: float
    params: dict
    filters: dict
    sensitivity: dict
    shape: str  # "int", "int_hist", "real_hist", "mean"
    mechs: dict  # role -> mechanism object

    def costs(self) -> tuple[MechanismCost, ...]:
        return tuple(m.cost() for m in self.mechs.values())


def _make(mech: str, eps: float, delta: float, l1: float, l2: float, integer: bool, rng: RNG):
    if mech == "discrete_laplace":
        if not integer or l1 != int(l1):
            raise _bad("mechanism", "discrete_laplace needs an integer answer with integer "
                       "sensitivity; use laplace or gaussian for this query")
        return DiscreteLaplace.calibrate(eps, int(l1), rng=rng)
    if mech == "laplace":
        return Laplace.calibrate(eps, float(l1), rng=rng)
    return Gaussian.calibrate(eps, delta, float(l2), rng=rng)


def _check_pos_int(params: dict, name: str) -> int:
    v = params[name]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise _bad(name, f"must be a positive integer; got {v!r}")
    return int(v)


def _check_bounds(params: dict, lo_name: str = "lower", hi_name: str = "upper") -> tuple[float, float]:
    lo, hi = params[lo_name], params[hi_name]
    for n, v in ((lo_name, lo), (hi_name, hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _bad(n, f"must be a finite number; got {v!r}")
    if not lo < hi:
        raise _bad(lo_name, f"need {lo_name} < {hi_name}; got [{lo!r}, {hi!r}]")
    return float(lo), float(hi)


_DEFAULTS: dict[str, dict[str, Any]] = {
    "annotator_count": {},
    "count": {"max_items_per_annotator": 100, "where": {}},
    "items_per_annotator": {"stat": "histogram", "bins": list(DEFAULT_BINS), "lower": 0, "upper": 100},
    "agreement_rate": {"max_items_per_annotator": 10, "min_items_per_annotator": 10,
                       "max_annotators_per_item": 3},
    "time_per_item": {"upper": 600.0},
    "choice_shares": {"contribution": "normalise", "max_items_per_annotator": 20},
}


def _plan(query: str, epsilon: Any, delta: Any, mechanism: str | None, raw: Mapping[str, Any],
          rng: RNG = None) -> _Plan:
    """Validate a release request and calibrate its mechanisms (no data is touched)."""
    if query not in QUERIES:
        raise _bad("query", f"unknown query {query!r}; declared queries: {', '.join(QUERIES)}")
    # comparisons only (NaN fails them): math.isfinite would overflow on a huge int
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (
            MIN_RELEASE_EPSILON <= epsilon <= MAX_RELEASE_EPSILON):
        raise _bad("epsilon", f"must be a number within [{MIN_RELEASE_EPSILON:g}, {MAX_RELEASE_EPSILON:g}] "
                   f"for one release; got {str(epsilon)[:40]}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
        raise _bad("delta", f"must be in [0, 1); got {delta!r}")
    eps, delta = float(epsilon), float(delta)
    filters = {k: raw[k] for k in _FILTERS if raw.get(k) is not None}
    params = dict(_DEFAULTS[query])
    for k, v in raw.items():
        if k in _FILTERS:
            continue
        if k not in params:
            known = sorted([*params, *_FILTERS])
            raise _bad(k, f"unknown parameter of {query!r}; known: {', '.join(known)}")
        params[k] = v
    _check_filters(filters)

    # shape, sensitivities
    if query == "annotator_count":
        shape, l1, l2 = "int", 1, 1
        sens = {"value": 1}
    elif query == "count":
        k = _check_pos_int(params, "max_items_per_annotator")
        where = params["where"]
        if not isinstance(where, Mapping):
            raise _bad("where", f"must be a mapping of allow-listed filters; got {where!r}")
        for name, v in where.items():
            if name not in WHERE_FILTERS:
                raise _bad("where", f"filter {name!r} is not allowed; allowed: {', '.join(WHERE_FILTERS)}")
            if name in ("is_gold", "gold_correct", "has_rationale") and not isinstance(v, bool):
                raise _bad(name, f"must be true or false; got {v!r}")
            if name == "min_strength" and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise _bad(name, f"must be a number; got {v!r}")
            if name in ("choice", "model", "guideline_version", "prompt_id") and not isinstance(v, str):
                raise _bad(name, f"must be a string; got {v!r}")
            if name == "choice" and v not in CHOICES:
                raise _bad(name, f"must be one of {', '.join(CHOICES)}; got {v!r}")
        params["where"] = dict(where)
        shape, l1, l2 = "int", k, k
        sens = {"value": k}
    elif query == "items_per_annotator":
        stat = params["stat"]
        if stat == "histogram":
            bins = params["bins"]
            if (not isinstance(bins, (list, tuple)) or not bins
                    or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) for b in bins)
                    or any(b >= c for b, c in zip(bins, bins[1:]))):
                raise _bad("bins", f"must be strictly ascending integer edges; got {bins!r}")
            params["bins"] = [int(b) for b in bins]
            shape, l1, l2 = "int_hist", 1, 1
            sens = {"histogram_l1": 1, "histogram_l2": 1}
        elif stat == "mean":
            lo, hi = _check_bounds(params)
            shape, l1, l2 = "mean", (hi - lo) / 2, (hi - lo) / 2
            sens = {"centred_sum": l1, "count": 1}
        else:
            raise _bad("stat", f"must be 'histogram' or 'mean'; got {stat!r}")
    elif query == "agreement_rate":
        k = _check_pos_int(params, "max_items_per_annotator")
        r = _check_pos_int(params, "min_items_per_annotator")
        m = _check_pos_int(params, "max_annotators_per_item")
        if m < 2:
            raise _bad("max_annotators_per_item", "must be at least 2 for any item to have a majority")
        l1 = l2 = 0.5 + k * m / r
        shape = "mean"
        sens = {"centred_sum": l1, "count": 1}
        params["lower"], params["upper"] = 0.0, 1.0
    elif query == "time_per_item":
        up = params["upper"]
        if isinstance(up, bool) or not isinstance(up, (int, float)) or not (math.isfinite(up) and up > 0):
            raise _bad("upper", f"must be a positive number of seconds; got {up!r}")
        params["lower"], params["upper"] = 0.0, float(up)
        shape, l1, l2 = "mean", up / 2, up / 2
        sens = {"centred_sum": l1, "count": 1}
    else:  # choice_shares
        contribution = params["contribution"]
        if contribution == "normalise":
            shape, l1, l2 = "real_hist", 1, 1
        elif contribution == "sample":
            k = _check_pos_int(params, "max_items_per_annotator")
            shape, l1, l2 = "int_hist", k, k
        else:
            raise _bad("contribution", f"must be 'normalise' or 'sample'; got {contribution!r}")
        sens = {"histogram_l1": l1, "histogram_l2": l2}

    integer = shape in ("int", "int_hist")
    if mechanism is None:
        mechanism = "discrete_laplace" if integer else "laplace"
    if mechanism not in MECHANISMS:
        raise _bad("mechanism", f"must be one of {', '.join(MECHANISMS)}; got {mechanism!r}")
    if mechanism == "gaussian":
        if not 0 < delta < 1:
            raise _bad("delta", "the gaussian mechanism needs 0 < delta < 1")
    elif delta != 0:
        raise _bad("delta", f"{mechanism} is pure epsilon-DP: give delta=0 (or use gaussian)")

    if shape == "mean":
        if mechanism == "discrete_laplace":
            raise _bad("mechanism", f"{query!r} has a real-valued answer; use laplace or gaussian")
        if mechanism == "laplace":
            mechs = {"sum": Laplace.calibrate(eps / 2, l1, rng=rng),
                     "count": DiscreteLaplace.calibrate(eps / 2, rng=rng)}
        else:
            mechs = {"sum": Gaussian.calibrate(eps / 2, delta / 2, l2, rng=rng),
                     "count": Gaussian.calibrate(eps / 2, delta / 2, 1.0, rng=rng)}
        params["split"] = {"sum": 0.5, "count": 0.5}
    else:
        mechs = {"value": _make(mechanism, eps, delta, l1, l2, integer, rng)}
    return _Plan(query, mechanism, eps, delta, params, filters, sens, shape, mechs)


def _check_filters(filters: dict) -> None:
    for name in ("task_id", "dataset"):
        if name in filters:
            v = filters[name]
            vals = [v] if isinstance(v, str) else v
            if not isinstance(vals, (list, tuple)) or not vals or not all(isinstance(x, str) for x in vals):
                raise _bad(name, f"must be a string or a non-empty list of strings; got {v!r}")
            filters[name] = v if isinstance(v, str) else list(v)
    for name in ("since", "until"):
        if name in filters:
            v = filters[name]
            if isinstance(v, str):
                try:
                    v = dt.datetime.fromisoformat(v.replace("Z", "+00:00") if v.endswith("Z") else v)
                except ValueError:
                    raise _bad(name, f"not an ISO 8601 timestamp: {v!r}") from None
            if not isinstance(v, dt.datetime):
                raise _bad(name, f"must be a datetime or ISO 8601 string; got {v!r}")
            if v.tzinfo is not None:
                v = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
            filters[name] = v


# ------------------------------------------------------------------------------------------------
# True answers, computed in DuckDB with parameterised SQL
# ------------------------------------------------------------------------------------------------
def _where(filters: dict, where: Mapping[str, Any] | None = None) -> tuple[str, list]:
    """WHERE clause over the ``annotation`` table; every value is a bound parameter."""
    conds, args = ["TRUE"], []
    for name in ("task_id", "dataset"):
        if name in filters:
            v = filters[name]
            if isinstance(v, str):
                conds.append(f"{name} = ?")
                args.append(v)
            else:
                conds.append(f"{name} IN (SELECT unnest(?::VARCHAR[]))")
                args.append(list(v))
    if "since" in filters:
        conds.append("coalesce(submitted_at, ts) >= ?::TIMESTAMP")
        args.append(filters["since"])
    if "until" in filters:
        conds.append("coalesce(submitted_at, ts) < ?::TIMESTAMP")
        args.append(filters["until"])
    for name, v in (where or {}).items():
        if name == "choice":
            conds.append("choice = ?"); args.append(v)
        elif name == "model":
            conds.append("(model_a = ? OR model_b = ?)"); args += [v, v]
        elif name == "guideline_version":
            conds.append("guideline_version = ?"); args.append(v)
        elif name == "prompt_id":
            conds.append("prompt_id = ?"); args.append(v)
        elif name == "is_gold":
            conds.append("(gold_choice IS NOT NULL) = ?"); args.append(v)
        elif name == "gold_correct":
            conds.append("gold_choice IS NOT NULL AND (choice = gold_choice) = ?"); args.append(v)
        elif name == "has_rationale":
            conds.append("(coalesce(length(rationale), 0) > 0) = ?"); args.append(v)
        elif name == "min_strength":
            conds.append("strength >= ?"); args.append(float(v))
    return " AND ".join(conds), args


def _true_answer(store, plan: _Plan) -> Any:
    """The exact answer's ingredients: a number, a bin -> count dict, or per-annotator values."""
    q, p = plan.query, plan.params
    if q == "annotator_count":
        w, a = _where(plan.filters)
        return int(store.sql(f"SELECT count(DISTINCT annotator) AS n FROM annotation WHERE {w}", a)[0, 0])
    if q == "count":
        w, a = _where(plan.filters, p["where"])
        df = store.sql(f"SELECT coalesce(sum(least(n, ?)), 0)::BIGINT AS n FROM (SELECT annotator, "
                       f"count(*) AS n FROM annotation WHERE {w} GROUP BY annotator)",
                       [p["max_items_per_annotator"], *a])
        return int(df[0, 0])
    if q == "items_per_annotator":
        w, a = _where(plan.filters)
        n = store.sql(f"SELECT count(*) AS n FROM annotation WHERE {w} GROUP BY annotator", a)["n"]
        n = n.to_numpy().astype(np.int64)
        if p["stat"] == "mean":
            return n.astype(np.float64)
        edges = np.asarray(p["bins"], dtype=np.int64)
        idx = np.clip(np.searchsorted(edges, n, side="right") - 1, 0, len(edges) - 1)
        counts = np.bincount(idx, minlength=len(edges)) if n.size else np.zeros(len(edges), np.int64)
        return {label: int(c) for label, c in zip(_bin_labels(p["bins"]), counts)}
    if q == "agreement_rate":
        w, a = _where(plan.filters)
        sql = f"""
        WITH base AS (
            SELECT annotator, annotation_id, prompt_id,
                   least(response_a_id, response_b_id) AS r1,
                   greatest(response_a_id, response_b_id) AS r2,
                   CASE WHEN choice = 'tie' THEN 'tie'
                        WHEN (choice = 'a') = (response_a_id <= response_b_id) THEN 'first'
                        ELSE 'second' END AS vote
            FROM annotation WHERE {w} AND choice <> 'skip'),
        dedup AS (SELECT * FROM base QUALIFY row_number() OVER (
                    PARTITION BY annotator, prompt_id, r1, r2 ORDER BY md5(annotation_id)) = 1),
        kept AS (SELECT * FROM dedup QUALIFY row_number() OVER (
                    PARTITION BY annotator ORDER BY md5(prompt_id || chr(0) || r1 || chr(0) || r2),
                    md5(annotation_id)) <= ?),
        incl AS (SELECT * FROM kept WHERE annotator IN (
                    SELECT annotator FROM kept GROUP BY annotator HAVING count(*) >= ?)),
        tally AS (SELECT prompt_id, r1, r2, count(*) AS m,
                         count(*) FILTER (WHERE vote = 'first') AS nf,
                         count(*) FILTER (WHERE vote = 'second') AS ns,
                         count(*) FILTER (WHERE vote = 'tie') AS nt
                  FROM incl GROUP BY prompt_id, r1, r2),
        per AS (SELECT i.annotator, i.vote, t.m,
                       t.nf - (i.vote = 'first')::INT AS of,
                       t.ns - (i.vote = 'second')::INT AS os,
                       t.nt - (i.vote = 'tie')::INT AS ot
                FROM incl i JOIN tally t USING (prompt_id, r1, r2))
        SELECT annotator, avg(CASE WHEN m <= ? AND (
                   (vote = 'first' AND of > os AND of > ot) OR
                   (vote = 'second' AND os > of AND os > ot) OR
                   (vote = 'tie' AND ot > of AND ot > os)) THEN 1.0 ELSE 0.0 END) AS rate
        FROM per GROUP BY annotator"""
        df = store.sql(sql, [*a, p["max_items_per_annotator"], p["min_items_per_annotator"],
                             p["max_annotators_per_item"]])
        return df["rate"].to_numpy().astype(np.float64)
    if q == "time_per_item":
        w, a = _where(plan.filters)
        df = store.sql(f"SELECT median(epoch(submitted_at - shown_at)) AS s FROM annotation WHERE {w} "
                       "AND shown_at IS NOT NULL AND submitted_at IS NOT NULL GROUP BY annotator", a)
        return np.clip(df["s"].to_numpy().astype(np.float64), 0.0, p["upper"])
    # choice_shares
    w, a = _where(plan.filters)
    if p["contribution"] == "normalise":
        df = store.sql(f"SELECT choice, sum(share) AS t FROM (SELECT choice, count(*) / "
                       f"sum(count(*)) OVER (PARTITION BY annotator) AS share FROM annotation "
                       f"WHERE {w} GROUP BY annotator, choice) GROUP BY choice", a)
        totals = dict(zip(df["choice"].to_list(), df["t"].to_list()))
        return {c: float(totals.get(c, 0.0)) for c in CHOICES}
    df = store.sql(f"SELECT choice, count(*) AS t FROM (SELECT choice FROM annotation WHERE {w} "
                   "QUALIFY row_number() OVER (PARTITION BY annotator ORDER BY md5(annotation_id)) <= ?) "
                   "GROUP BY choice", [*a, p["max_items_per_annotator"]])
    totals = dict(zip(df["choice"].to_list(), df["t"].to_list()))
    return {c: int(totals.get(c, 0)) for c in CHOICES}


def _bin_labels(edges: Sequence[int]) -> list[str]:
    out = []
    for i, lo in enumerate(edges):
        if i + 1 < len(edges):
            hi = edges[i + 1] - 1
            out.append(str(lo) if hi == lo else f"{lo}-{hi}")
        else:
            out.append(f"{lo}+")
    return out


def _noisy(plan: _Plan, truth: Any) -> tuple[Any, dict]:
    """Apply the planned mechanisms to the exact answer; return (value, extra)."""
    if plan.shape == "mean":
        lo, hi = float(plan.params["lower"]), float(plan.params["upper"])
        vals = np.clip(np.asarray(truth, dtype=np.float64), lo, hi)
        mid = (lo + hi) / 2
        s = float(plan.mechs["sum"].release(float((vals - mid).sum())))
        c = plan.mechs["count"].release(int(vals.size)) if isinstance(plan.mechs["count"], DiscreteLaplace) \
            else float(plan.mechs["count"].release(float(vals.size)))
        value = float(min(max(mid + s / max(c, 1), lo), hi))
        return value, {"noisy_count": c}
    m = plan.mechs["value"]
    if plan.shape == "int":
        v = m.release(int(truth))
        v = int(v) if isinstance(m, DiscreteLaplace) else float(v)
        return max(v, 0), {}
    keys = list(truth)
    arr = np.asarray([truth[k] for k in keys])
    noisy = m.release(arr.astype(np.int64) if isinstance(m, DiscreteLaplace) else arr.astype(np.float64))
    cast = int if isinstance(m, DiscreteLaplace) else float
    counts = {k: cast(v) for k, v in zip(keys, np.asarray(noisy).tolist())}
    if plan.query == "choice_shares":
        pos = {k: max(float(v), 0.0) for k, v in counts.items()}
        tot = sum(pos.values())
        shares = {k: (v / tot if tot > 0 else 0.0) for k, v in pos.items()}
        return shares, {"totals": counts}
    return {k: max(v, 0) for k, v in counts.items()}, {}


# ------------------------------------------------------------------------------------------------
# The ledger
# ------------------------------------------------------------------------------------------------
@dataclass
class _Budget:
    epsilon: float
    delta: float
    description: str | None
    seq: int


def _spent(acc: Accountant, delta_budget: float) -> float:
    """The accountant's spend as budgets compare it: exact pure epsilon, else epsilon(delta)."""
    pure = acc.pure_epsilon()
    return pure if pure is not None else acc.epsilon(delta_budget)


def _fits(spent: float, budget: float) -> bool:
    return spent <= budget * (1 + _TOL) + 1e-15


class PrivacyLedger:
    """Budgets and recorded DP releases of one store; get it as ``store.privacy``.

    State is rebuilt from the log's ``privacy_budget`` and ``privacy_spend`` events when the ledger
    is created and kept incrementally afterwards (one cached :class:`Accountant` per scope), so a
    release costs its query, one accountant composition per charged scope and one log write.

    >>> import tempfile, os
    >>> from rlhf_audit_kit.store import open_store
    >>> store = open_store(os.path.join(tempfile.mkdtemp(), "a.duckdb"), pseudonymize=False)
    >>> _ = store.privacy.set_budget("pool:vendor-a", 2.0, description="vendor A, 2026")
    >>> store.privacy.what_if(0.5, ["pool:vendor-a"]).select("scope", "epsilon_after", "fits").row(0)
    ('pool:vendor-a', 0.5, True)
    >>> store.close()
    """

    def __init__(self, store):
        self.store = store
        self._budgets: dict[str, _Budget] = {}
        self._acc: dict[str, Accountant] = {}
        self._history: list[dict] = []
        self._synced_budget = -1
        self._synced_spend = -1
        with store._lock:
            self._sync()

    # -- state ------------------------------------------------------------------------------------
    def _sync(self, adopt: Mapping[str, Mapping[str, Accountant]] | None = None) -> None:
        """Fold log events newer than what was seen into the cache (``adopt``: release_id ->
        already-composed accountants per scope, to reuse the trial accountants of our own write)."""
        store = self.store
        rows = store.sql("SELECT seq, scope, epsilon, delta, description FROM privacy_budget "
                         "WHERE seq > ? ORDER BY seq", [self._synced_budget])
        for seq, scope, eps, delta, desc in rows.iter_rows():
            self._budgets[scope] = _Budget(float(eps), float(delta), desc, int(seq))
            self._synced_budget = int(seq)
        rows = store.sql("SELECT seq, ts, release_id, scopes, query, mechanism, parameters, epsilon, "
                         "delta FROM privacy_spend WHERE seq > ? ORDER BY seq", [self._synced_spend])
        for seq, ts, rid, scopes_j, query, mech, params_j, eps, delta in rows.iter_rows():
            scopes_obj = json.loads(scopes_j)
            params = json.loads(params_j)
            costs = [MechanismCost.from_dict(c) for c in params.get("costs", [])]
            charged = scopes_obj.get("charged", {})
            for scope in scopes_obj.get("scopes", []):
                if adopt and rid in adopt and scope in adopt[rid]:
                    self._acc[scope] = adopt[rid][scope]
                else:
                    acc = self._acc.setdefault(scope, Accountant())
                    for c in costs:
                        acc.compose(c)
                cum = charged.get(scope, {}).get("epsilon_spent")
                if cum is None:  # not recorded: ask the accountant now
                    b = self._budgets.get(scope)
                    cum = _spent(self._acc[scope], b.delta if b else 0.0)
                self._history.append({"seq": int(seq), "ts": ts, "release_id": rid, "scope": scope,
                                      "query": query, "mechanism": mech, "epsilon": float(eps),
                                      "delta": float(delta), "cumulative_epsilon": float(cum)})
            self._synced_spend = int(seq)

    def _scope(self, scope: Any) -> str:
        if not isinstance(scope, str) or not _SCOPE_RE.fullmatch(scope) or len(scope) > 512:
            raise _bad("scope", f"must be 'global' or '<kind>:<name>' such as 'dataset:hh@1', "
                       f"'pool:vendor-a', 'annotator:<pseudonym>'; got {scope!r}")
        kind, _, name = scope.partition(":")
        if kind == "annotator" and self.store._pseudonymize:
            # "annotator:<pseudonym>" names an annotator as the store shows it (checked to be this key's);
            # anything else is a raw id, which must never reach the store in the clear
            from .pseudonym import PSEUDONYM_PATTERN
            p = self.store.pseudonymizer
            try:
                scope = "annotator:" + (p.check(name) if PSEUDONYM_PATTERN.fullmatch(name) else p.pseudonymize(name))
            except ValidationError as e:
                raise _bad("scope", e.reason) from None
        return scope

    def _scopes(self, scopes: Any) -> tuple[str, ...]:
        if isinstance(scopes, str):
            scopes = (scopes,)
        if not isinstance(scopes, (list, tuple)) or not scopes:
            raise _bad("scopes", f"must be a non-empty list of scopes; got {scopes!r}")
        return tuple(dict.fromkeys(self._scope(s) for s in scopes))

    # -- budgets ----------------------------------------------------------------------------------
    def set_budget(self, scope: str, epsilon: float, delta: float = 0.0,
                   description: str | None = None) -> int:
        """Declare the budget of ``scope``; return the seq of the ``privacy_budget`` event.

        The latest budget of a scope wins. Lowering it below what was already spent is allowed
        (the record stays as it is) but every further release charging the scope is refused.

        >>> import tempfile, os
        >>> from rlhf_audit_kit.store import open_store
        >>> store = open_store(os.path.join(tempfile.mkdtemp(), "a.duckdb"), pseudonymize=False)
        >>> store.privacy.set_budget("dataset:hh@1", 1.0, 1e-6)
        0
        >>> store.close()
        """
        scope = self._scope(scope)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (
                0 <= epsilon <= sys.float_info.max):  # comparisons: math.isfinite overflows on a huge int
            raise _bad("epsilon", f"must be a finite number >= 0; got {str(epsilon)[:40]}")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
            raise _bad("delta", f"must be in [0, 1); got {delta!r}")
        if description is not None and not isinstance(description, str):
            raise _bad("description", f"must be a string; got {description!r}")
        event = {"scope": scope, "epsilon": float(epsilon), "delta": float(delta),
                 "description": description}
        store = self.store
        with store._lock:
            self._sync()
            seq = self._write("privacy_budget", event)
            self._sync()
        return seq

    def _write(self, kind: str, event: dict, guard: Any = None) -> int:
        """Write one internal event (caller holds ``store._lock``); ``guard(con)`` runs inside the
        write transaction (see :meth:`_unchanged`)."""
        from ..validate import normalise
        store = self.store
        prev = getattr(store, "_internal_write", False)
        store._internal_write = True
        try:
            return store._write_validated(normalise([event], kind), guard=guard)[0]
        finally:
            store._internal_write = prev

    def _unchanged(self, con) -> None:
        """Inside a write transaction: raise _Moved if privacy events were written since the last
        sync (through another handle of the file), so the budget check is redone on fresh state."""
        now = con.execute("SELECT (SELECT coalesce(max(seq), -1) FROM privacy_budget), "
                          "(SELECT coalesce(max(seq), -1) FROM privacy_spend)").fetchall()[0]
        if tuple(now) != (self._synced_budget, self._synced_spend):
            raise _Moved()

    def budgets(self) -> pl.DataFrame:
        """One row per scope with a budget: ``scope, epsilon_budget, delta_budget, epsilon_spent,
        remaining, releases, description``. ``remaining`` is negative after a budget was lowered
        below the spend."""
        with self.store._lock:
            self._sync()
            rows = []
            for scope, b in sorted(self._budgets.items()):
                acc = self._acc.get(scope)
                spent = _spent(acc, b.delta) if acc is not None else 0.0
                n = sum(1 for h in self._history if h["scope"] == scope)
                rows.append((scope, b.epsilon, b.delta, spent, b.epsilon - spent, n, b.description))
        return pl.DataFrame(rows, schema={"scope": pl.String, "epsilon_budget": pl.Float64,
                                          "delta_budget": pl.Float64, "epsilon_spent": pl.Float64,
                                          "remaining": pl.Float64, "releases": pl.Int64,
                                          "description": pl.String}, orient="row")

    def spend_history(self, scope: str | None = None) -> pl.DataFrame:
        """Every charge in log order: ``seq, ts, release_id, scope, query, mechanism, epsilon,
        delta, cumulative_epsilon`` (the scope's spend as its accountant reported it right after
        the release). One row per release and charged scope."""
        with self.store._lock:
            self._sync()
            hist = list(self._history)
        if scope is not None:
            scope = self._scope(scope)
            hist = [h for h in hist if h["scope"] == scope]
        return pl.DataFrame(hist, schema={"seq": pl.Int64, "ts": pl.Datetime("us"),
                                          "release_id": pl.String, "scope": pl.String,
                                          "query": pl.String, "mechanism": pl.String,
                                          "epsilon": pl.Float64, "delta": pl.Float64,
                                          "cumulative_epsilon": pl.Float64})

    def _check(self, scopes: tuple[str, ...], costs: Iterable[MechanismCost]
               ) -> tuple[dict[str, Accountant], dict[str, dict], list[dict]]:
        """Trial accountants per scope with ``costs`` composed; (trials, charged, refusals)."""
        costs = list(costs)
        trials, charged, refused = {}, {}, []
        for scope in scopes:
            b = self._budgets.get(scope)
            base = self._acc.get(scope)
            before = _spent(base, b.delta if b else 0.0) if base is not None else 0.0
            trial = base.copy() if base is not None else Accountant()
            for c in costs:
                trial.compose(c)
            after = _spent(trial, b.delta if b else 0.0)
            trials[scope] = trial
            charged[scope] = {"epsilon_spent": after, "epsilon_before": before,
                              "epsilon_budget": b.epsilon if b else None,
                              "delta_budget": b.delta if b else None}
            if b is None or not _fits(after, b.epsilon):
                refused.append({"scope": scope, "budget": b, "before": before, "after": after})
        return trials, charged, refused

    # -- releases ---------------------------------------------------------------------------------
    def release(self, query: str, *, epsilon: float, scopes: Sequence[str] | str = ("global",),
                delta: float = 0.0, mechanism: str | None = None, rng: RNG = None,
                **params: Any) -> Release:
        """Answer a declared query with DP noise, charged to ``scopes`` and recorded in the log.

        ``params``: the query's declared bounds (see the module doc for each query and its
        sensitivity) and the filters ``task_id``, ``dataset``, ``since``, ``until``; ``count``
        takes ``where={...}`` of :data:`WHERE_FILTERS`. ``rng`` is for tests only (a seeded
        release is not private against anyone who knows the seed; the event records
        ``"seeded": true``).

        The budget check, the noise and the ``privacy_spend`` write happen under the store's
        writer lock: the answer is returned only once its spend is durable. If any scope would
        exceed its budget (or has none), :class:`BudgetExceededError` names the scope, its spend,
        the request and the budget, and nothing is written.
        """
        plan = _plan(query, epsilon, delta, mechanism, params, rng)
        scopes = self._scopes(scopes)
        store = self.store
        store._check_writable()
        with store._lock:
            for _ in range(_ATTEMPTS):
                self._sync()
                trials, charged, refused = self._check(scopes, plan.costs())
                if refused:
                    raise _refusal(plan, refused[0])
                truth = _true_answer(store, plan)
                value, extra = _noisy(plan, truth)  # an answer never released costs no privacy
                rid = str(uuid.uuid4())
                params_rec = {"params": plan.params, "filters": plan.filters,
                              "sensitivity": plan.sensitivity,
                              "costs": [c.to_dict() for c in plan.costs()],
                              "seeded": rng is not None}
                event = {"release_id": rid,
                         "scopes": {"scopes": list(scopes), "charged": charged},
                         "query": query, "mechanism": plan.mechanism,
                         "parameters": _jsonable(params_rec),
                         "epsilon": plan.epsilon, "delta": plan.delta,
                         "result": _jsonable({"value": value, "extra": extra})}
                try:  # the check above holds only if no spend came in since: re-checked in the transaction
                    seq = self._write("privacy_spend", event, guard=self._unchanged)
                    break
                except _Moved:
                    continue
            else:
                from ..errors import StoreInUseError
                raise StoreInUseError(f"{store.path}: privacy events kept arriving through another handle of "
                                      "this store; nothing was released. Use one store object per file")
            self._sync(adopt={rid: trials})
        return Release(rid, query, value, plan.epsilon, plan.delta, plan.mechanism, scopes, seq,
                       _jsonable({**plan.params, "filters": plan.filters,
                                  "sensitivity": plan.sensitivity}),
                       extra, charged)

    def what_if(self, query_epsilon: float, scopes: Sequence[str] | str = ("global",), delta: float = 0.0,
                mechanism: str | None = None, query: str | None = None, **params: Any) -> pl.DataFrame:
        """Preview what a release would cost per scope, recording nothing.

        Without ``query``, one mechanism of ``query_epsilon`` (and ``delta`` for gaussian) at
        sensitivity 1; with ``query`` (and its ``params``), exactly that release's mechanisms
        (a gaussian mean splits epsilon and delta in two, which composes differently).
        Columns: ``scope, epsilon_budget, delta_budget, epsilon_spent, epsilon_after,
        remaining_after, fits``.
        """
        if query is None:
            mech = mechanism or "laplace"
            plan = _plan("annotator_count", query_epsilon, delta,
                         "laplace" if mech == "discrete_laplace" else mech, {})
            if mech == "discrete_laplace":
                plan.mechs = {"value": DiscreteLaplace.calibrate(float(query_epsilon))}
        else:
            plan = _plan(query, query_epsilon, delta, mechanism, params)
        scopes = self._scopes(scopes)
        with self.store._lock:
            self._sync()
            _, charged, _ = self._check(scopes, plan.costs())
        rows = []
        for s, c in charged.items():
            b = c["epsilon_budget"]
            rows.append((s, b, c["delta_budget"], c["epsilon_before"], c["epsilon_spent"],
                         None if b is None else b - c["epsilon_spent"],
                         b is not None and _fits(c["epsilon_spent"], b)))
        return pl.DataFrame(rows, schema={"scope": pl.String, "epsilon_budget": pl.Float64,
                                          "delta_budget": pl.Float64, "epsilon_spent": pl.Float64,
                                          "epsilon_after": pl.Float64, "remaining_after": pl.Float64,
                                          "fits": pl.Boolean}, orient="row")

    def __repr__(self) -> str:
        return f"PrivacyLedger({len(self._budgets)} budgets, {len(self._history)} charges)"

    def _repr_html_(self) -> str:
        b = self.budgets()
        rows = "".join(
            f"<tr><td>{html.escape(r['scope'])}</td><td style='text-align:right'>{r['epsilon_spent']:.4g}</td>"
            f"<td style='text-align:right'>{r['epsilon_budget']:.4g}</td>"
            f"<td style='text-align:right'>{r['delta_budget']:.3g}</td><td style='text-align:right'>{r['releases']}</td></tr>"
            for r in b.iter_rows(named=True)) or "<tr><td colspan=5><i>no budgets</i></td></tr>"
        return ("<div class='rlhf-audit-privacy'><b>Privacy budgets</b><table><tr><th>scope</th>"
                "<th>&epsilon; spent</th><th>&epsilon; budget</th><th>&delta;</th><th>releases</th></tr>"
                f"{rows}</table></div>")


def _refusal(plan: _Plan, r: dict) -> BudgetExceededError:
    b = r["budget"]
    if b is None:
        msg = (f"release of epsilon={plan.epsilon:g} refused: no privacy budget is set for scope "
               f"{r['scope']!r} (call store.privacy.set_budget first)")
    else:
        msg = (f"release of epsilon={plan.epsilon:g}"
               f"{f', delta={plan.delta:g}' if plan.delta else ''} refused: scope {r['scope']!r} has "
               f"spent epsilon={r['before']:.6g} of its budget epsilon={b.epsilon:g} "
               f"(delta={b.delta:g}); this release would bring it to {r['after']:.6g}")
    err = BudgetExceededError(msg)
    err.scope = r["scope"]
    err.spent = r["before"]
    err.requested = plan.epsilon
    err.requested_delta = plan.delta
    err.spent_after = r["after"]
    err.budget = None if b is None else (b.epsilon, b.delta)
    return err
