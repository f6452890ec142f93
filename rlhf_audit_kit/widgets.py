"""ipywidgets helpers for notebooks: browse annotation pairs, verify a snapshot or bundle.

Both read only. ``AnnotationBrowser`` queries one page at a time (DuckDB ``LIMIT/OFFSET``), so it
works on a million annotations; ``VerifyButton`` runs the full verification on click.

>>> from rlhf_audit_kit.widgets import AnnotationBrowser, VerifyButton   # doctest: +SKIP
>>> AnnotationBrowser("bundle/")                                          # doctest: +SKIP
>>> VerifyButton("bundle/", verifier="keys/verifier.vkey")               # doctest: +SKIP
"""
from __future__ import annotations

import html
from typing import Any

try:
    import ipywidgets as w
except ModuleNotFoundError as e:  # pragma: no cover - the [apps] extra is installed in CI
    raise ModuleNotFoundError(f"Notebook widgets need `pip install 'rlhf-audit-kit[apps]'` ({e})") from e

from .apps._data import VerifyStatus, as_source

__all__ = ["AnnotationBrowser", "VerifyButton"]

ANY = "(any)"


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x)).replace("\n", "<br>")


def pair_html(r: dict) -> str:
    """One annotation as HTML: prompt, then responses A and B side by side, the choice marked."""
    def side(k: str) -> str:
        chosen = r.get("choice") == k
        border = "3px solid #2ca02c" if chosen else "1px solid #ccc"
        return (f"<div style='flex:1;border:{border};border-radius:6px;padding:6px;min-width:0'>"
                f"<b>{k.upper()}</b>{' &#10003;' if chosen else ''} <small>{_esc(r.get('model_' + k))}</small>"
                f"<div>{_esc(r.get('response_' + k))}</div></div>")
    meta = (f"seq {r.get('seq')} · annotator {_esc(r.get('annotator'))} · task {_esc(r.get('task_id'))} · "
            f"choice <b>{_esc(r.get('choice'))}</b>")
    return (f"<div class='annotation-pair' style='margin:8px 0;padding:6px;border-bottom:1px solid #eee'>"
            f"<div style='color:#555'>{meta}</div><div><b>Prompt:</b> {_esc(r.get('prompt'))}</div>"
            f"<div style='display:flex;gap:8px'>{side('a')}{side('b')}</div></div>")


class AnnotationBrowser(w.VBox):
    """Filter annotations by annotator, choice and task, and page through the pairs side by side.

    Parameters
    ----------
    source
        AuditStore, bundle or path. Read only.
    page_size
        Annotations per page.
    """

    def __init__(self, source: Any, *, page_size: int = 5):
        self.src = as_source(source)
        self.page_size = int(page_size)
        has = self.src.count("annotation") > 0
        anns = self.src.sql("SELECT DISTINCT annotator FROM annotation ORDER BY 1")["annotator"].to_list() if has else []
        self.annotator = w.Dropdown(options=[ANY, *anns], value=ANY, description="annotator")
        self.choice = w.Dropdown(options=[ANY, "a", "b", "tie", "skip"], value=ANY, description="choice")
        self.task = w.Text(value="", description="task", placeholder="task id or prefix")
        self.prev = w.Button(description="◀ prev", layout=w.Layout(width="90px"))
        self.next = w.Button(description="next ▶", layout=w.Layout(width="90px"))
        self.status = w.HTML()
        self.body = w.HTML()
        self.page = 0
        self.total = 0
        for c in (self.annotator, self.choice, self.task):
            c.observe(self._on_filter, names="value")
        self.prev.on_click(lambda b: self.go(self.page - 1))
        self.next.on_click(lambda b: self.go(self.page + 1))
        super().__init__([w.HBox([self.annotator, self.choice, self.task]),
                          w.HBox([self.prev, self.next, self.status]), self.body])
        self.refresh()

    def _where(self) -> tuple[str, list]:
        cond, params = [], []
        if self.annotator.value != ANY:
            cond.append("annotator = ?")
            params.append(self.annotator.value)
        if self.choice.value != ANY:
            cond.append("choice = ?")
            params.append(self.choice.value)
        if self.task.value.strip():
            cond.append("starts_with(coalesce(task_id, ''), ?)")
            params.append(self.task.value.strip())
        return ("WHERE " + " AND ".join(cond)) if cond else "", params

    def _on_filter(self, change) -> None:
        self.page = 0
        self.refresh()

    def go(self, page: int) -> None:
        """Show page ``page`` (clamped to the pages available)."""
        pages = max(1, -(-self.total // self.page_size))
        self.page = min(max(0, page), pages - 1)
        self.refresh(count=False)

    def rows(self) -> list[dict]:
        """The annotations on the current page."""
        if self.src.count("annotation") == 0:
            return []
        where, params = self._where()
        return self.src.sql(
            f"SELECT seq, annotator, task_id, choice, prompt, response_a, response_b, model_a, model_b "
            f"FROM annotation {where} ORDER BY seq LIMIT {self.page_size} OFFSET {self.page * self.page_size}",
            params or None).to_dicts()

    def refresh(self, count: bool = True) -> None:
        if count:
            if self.src.count("annotation") == 0:
                self.total = 0
            else:
                where, params = self._where()
                self.total = int(self.src.sql(f"SELECT count(*) AS n FROM annotation {where}", params or None)["n"][0])
        rows = self.rows()
        pages = max(1, -(-self.total // self.page_size))
        self.status.value = f"page {self.page + 1} of {pages} · {self.total:,} annotations"
        self.prev.disabled = self.page == 0
        self.next.disabled = self.page + 1 >= pages
        self.body.value = "".join(pair_html(r) for r in rows) or "<i>no annotations match</i>"


class VerifyButton(w.VBox):
    """A button that verifies a snapshot, bundle or store and shows the result (first bad seq).

    Parameters
    ----------
    snapshot_or_bundle
        A bundle, snapshot, store or path.
    verifier
        Verifier key to trust (string, ``.vkey`` file, keys folder). Without it the record's own
        key is used (a bundle's ``verifier.vkey``), which proves only self-consistency: the result
        then says NOT PINNED in red.
    """

    def __init__(self, snapshot_or_bundle: Any, verifier: Any = None):
        self.src = as_source(snapshot_or_bundle, verifier=verifier)
        self.button = w.Button(description="Verify", button_style="primary", icon="check")
        self.output = w.HTML(value=f"<i>{html.escape(self.src.kind)} {html.escape(self.src.label)}: not verified yet</i>")
        self.result: VerifyStatus | None = None
        self.button.on_click(lambda b: self.run())
        super().__init__([self.button, self.output])

    def run(self) -> VerifyStatus:
        """Verify now and show the outcome."""
        self.button.disabled = True
        self.output.value = "<i>verifying…</i>"
        try:
            from .apps.integrity import status_html
            self.result = self.src.verify()
            self.output.value = status_html(self.result)
        finally:
            self.button.disabled = False
        return self.result
