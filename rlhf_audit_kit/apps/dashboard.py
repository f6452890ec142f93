"""AuditDashboard: the four views in one page, with the record's identity and signed snapshot.

Inline (notebook) it is a ``pn.Column`` (header + ``pn.Tabs``); served (``rlhf-audit serve`` or
``.servable()``) it sits in a ``FastListTemplate``. Tabs are built on first display (``dynamic``),
and each view loads and caches its own data on first use, so opening the dashboard is cheap.
"""
from __future__ import annotations

import functools
from typing import Any

import param

from ._common import ACCENT, esc, require_panel
from ._viewer import SourceViewer
from .annotators import AnnotatorBehaviour
from .drift import ModelDrift
from .integrity import Integrity
from .privacy import PrivacySpend

pn = require_panel()

__all__ = ["AuditDashboard"]

TITLE = "RLHF audit"


@functools.cache
def _offline_fast():
    """Panel's Fast design without its Google Fonts stylesheet, so a served page makes no request
    off the server. It keeps the class name, which Panel uses in its resource paths."""
    from panel.theme.fast import Fast as _Fast
    return type("Fast", (_Fast,), {"_resources": {**_Fast._resources, "font": {}}})


class AuditDashboard(SourceViewer):
    """Annotators, privacy, model drift and integrity of one store or bundle, in tabs.

    Parameters
    ----------
    source
        An AuditStore, a bundle or a path (a folder is a bundle, a file a store opened read-only).
    verifier
        Verifier key to trust for signature checks (default: the bundle's or the keys folder's).
    """

    verifier = param.Parameter(default=None, doc="Verifier key (string, .vkey file or keys folder) to trust.")
    active = param.Integer(default=0, bounds=(0, 3), doc="Index of the tab shown.")

    def __init__(self, source: Any = None, **params: Any):
        super().__init__(source, **params)
        self.src = self._src
        self.annotators = AnnotatorBehaviour(self.src)
        self.privacy = PrivacySpend(self.src)
        self.drift = ModelDrift(self.src)
        self.integrity = Integrity(self.src, verifier=self.verifier)
        self._tabs = None

    @property
    def views(self) -> dict[str, pn.viewable.Viewer]:
        return {"Annotators": self.annotators, "Privacy": self.privacy, "Model drift": self.drift,
                "Integrity": self.integrity}

    def header_html(self) -> str:
        """Identity of the record: kind, name, origin, size and the latest signed snapshot."""
        s = self.src
        snap = s.latest_snapshot()
        if snap is None:
            snap_txt = "no signed snapshot"
        elif snap["tree_size"] is None:
            snap_txt = "<span class='bad-note'>the latest checkpoint note does not parse</span>"
        else:
            snap_txt = (f"signed snapshot: size {snap['tree_size']:,}, root <code>{esc(snap['root_hash'][:16])}…</code>"
                        + (f", key {esc(snap.get('key_name'))}" if snap.get("key_name") else ""))
        return (f"<div class='audit-header' style='font-size:13px'><b>{esc(s.kind)}</b> <code>{esc(s.label)}</code>"
                f" · origin <code>{esc(s.origin)}</code> · {s.size:,} events · {snap_txt}</div>")

    def tabs(self) -> pn.Tabs:
        """The four views as tabs; a view is built (and loads its data) when its tab is first shown."""
        if self._tabs is None:
            self._slots = {name: pn.Column(sizing_mode="stretch_width", name=name) for name in self.views}
            self._tabs = pn.Tabs(*self._slots.values(), dynamic=True, sizing_mode="stretch_width")
            self._tabs.active = self.active
            self._fill(self.active)
            self._tabs.param.watch(lambda e: setattr(self, "active", e.new), "active")
            self.param.watch(self._on_active, "active")
        return self._tabs

    def _fill(self, index: int) -> None:
        name = list(self.views)[index]
        slot = self._slots[name]
        if not slot.objects:
            slot.objects = [self.views[name].__panel__()]

    def _on_active(self, event) -> None:
        self._fill(event.new)
        if self._tabs.active != event.new:
            self._tabs.active = event.new

    def build_all(self) -> None:
        """Build every tab now (e.g. before saving or benchmarking)."""
        self.tabs()
        for i in range(len(self.views)):
            self._fill(i)

    def __panel__(self):
        return pn.Column(pn.pane.HTML(self.header_html(), sizing_mode="stretch_width",
                                      styles={"border-bottom": f"2px solid {ACCENT}"}),
                         self.tabs(), sizing_mode="stretch_width")

    def template(self) -> pn.template.FastListTemplate:
        """The dashboard in a FastListTemplate (what ``rlhf-audit serve`` shows)."""
        # The template puts its title into the page unescaped: escape the store/bundle name here
        # (the browser tab then shows entities for a hostile name, which is harmless).
        return pn.template.FastListTemplate(
            title=f"{TITLE}: {esc(self.src.label)}", header_background=ACCENT, accent_base_color=ACCENT,
            main=[pn.pane.HTML(self.header_html(), sizing_mode="stretch_width"), self.tabs()],
            main_layout=None, theme_toggle=False, design=_offline_fast())

    def servable(self, title: str | None = None, location: bool = True, area: str = "main", target=None):
        """Serve in the template under ``panel serve``; inline (notebook) as the plain layout."""
        if pn.state.served:
            return self.template().servable(title=title)
        return super().servable(title=title, location=location, area=area, target=target)
