"""Small shared pieces of the apps: optional imports, labels, Wilson intervals, styling."""
from __future__ import annotations

import html
import math
from typing import Any

import polars as pl

INSTALL_HINT = "Panel apps need `pip install 'rlhf-audit-kit[apps]'`"

PLOT_OPTS: dict[str, Any] = {"height": 280, "responsive": False}
ACCENT = "#1f6f8b"


def require_panel():
    """Import panel + hvplot, or fail with the install command.

    In a notebook, importing hvplot loads BokehJS with HoloViews' own setting (from the CDN). After
    ``pn.extension(..., inline=True)`` (or ``pn.config.inline = True``) that load is inline too, so
    the notebook and its HTML export render offline and ask no third party for anything.
    """
    try:
        import holoviews as hv
        import panel as pn
        if pn.config.inline and "inline" in hv.extension.param:  # the notebook extension has it
            hv.extension.inline = True
        import hvplot.pandas  # noqa: F401
    except ModuleNotFoundError as e:  # pragma: no cover - the extra is installed in CI
        raise ModuleNotFoundError(f"{INSTALL_HINT} ({e})") from e
    return pn


def short_labels(ids: list[str]) -> dict[str, str]:
    """Short, unique display labels for long pseudonyms (``p-<key>-<hash>`` -> ``p-<hash[:6]>``)."""
    def cut(x: str, n: int) -> str:
        parts = x.split("-")
        if len(parts) >= 3 and parts[0] == "p" and len(x) > 16:
            return f"p-{parts[-1][:n]}"
        return x if len(x) <= n + 10 else x[: n + 9] + "…"
    for n in (6, 8, 12, 64):
        out = {x: cut(x, n) for x in ids}
        if len(set(out.values())) == len(out):
            return out
    return {x: x for x in ids}


def wilson(k: pl.Expr, n: pl.Expr, z: float = 1.96) -> tuple[pl.Expr, pl.Expr]:
    """Wilson score interval (lo, hi) for k successes of n, as polars expressions."""
    nf = n.cast(pl.Float64)
    p = k.cast(pl.Float64) / nf
    den = 1 + z * z / nf
    centre = (p + z * z / (2 * nf)) / den
    half = z * ((p * (1 - p) / nf + z * z / (4 * nf * nf)).sqrt()) / den
    return (centre - half).clip(0, 1), (centre + half).clip(0, 1)


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def fmt_pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def card(title: str, body_html: str, colour: str = "#444") -> str:
    return (f"<div style='border-left:4px solid {colour};padding:4px 10px;margin:2px 0'>"
            f"<div style='font-weight:600;color:{colour}'>{esc(title)}</div>{body_html}</div>")


NOT_ENOUGH = "not enough data"


def not_enough(title: str, why: str, width: int = 470, height: int = PLOT_OPTS["height"]):
    """The placeholder of a chart whose statistic cannot be computed from the data (escaped HTML)."""
    import panel as pn
    return pn.pane.HTML(card(title, f"<div class='not-enough-data' style='color:#666'>{NOT_ENOUGH}: {esc(why)}</div>",
                             "#999"), width=width, height=height)
