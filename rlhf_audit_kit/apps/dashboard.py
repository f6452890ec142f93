"""AuditDashboard: the four views in one page, with the record's identity and signed snapshot.

Inline (notebook) it is a ``pn.Column`` (header + ``pn.Tabs``); served (``rlhf-audit serve`` or
``.servable()``) it sits in a ``FastListTemplate``. Tabs are built on first display (``dynamic``),
and each view loads and caches its own data on first use, so opening the dashboard is cheap.

Over a :class:`~rlhf_audit_kit.apps._live.LiveSource` (what ``rlhf-audit serve BUNDLE_FOLDER``
uses) a served dashboard follows the folder: a session callback reads the shared state every half
second, swaps in the newest verified data (keeping the filters the visitor set) and updates the
header: size, root and age of the newest verified checkpoint, the witnesses that cosigned it, and
in red a checkpoint that was refused (the last good view stays) or a key that was not pinned.
"""
from __future__ import annotations

import datetime as dt
import functools
import time
from pathlib import Path
from typing import Any

import param

from ._common import ACCENT, esc, require_panel
from ._live import LiveSource
from ._viewer import SourceViewer
from .annotators import AnnotatorBehaviour
from .drift import ModelDrift
from .integrity import Integrity
from .privacy import PrivacySpend

pn = require_panel()

__all__ = ["AuditDashboard", "not_pinned_html"]

TITLE = "RLHF audit"
RED, AMBER = "#d62728", "#b8860b"
#: Parameters never carried from a view over the previous data to its successor.
_NOT_CARRIED = frozenset({"name", "source", "verifier", "status", "proof", "cosigners", "witnesses",
                          "witness_quorum", "verify_on_load"})


def not_pinned_html(live: bool = False, key_id: str | None = None) -> str:
    """The red notice of a record checked against its own key (none was pinned)."""
    kept = (f" The key read at start-up (key id <code>{esc(key_id)}</code>) is kept for every later checkpoint."
            if live and key_id else "")
    return (f"<div class='not-pinned' style='color:{RED};font-weight:600'>NOT PINNED: no verifier key was given "
            f"(--vkey or --keys). Signatures are checked against the key shipped with the record, which proves only "
            f"that it is self-consistent: whoever altered it could re-sign it.{kept}</div>")


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h" if s < 172800 else f"{s // 86400} d"


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - frames and arrays do not compare to one bool
        return a is b


@functools.cache
def _offline_fast():
    """Panel's Fast design without its Google Fonts stylesheet, so a served page makes no request
    off the server. It keeps the class name, which Panel uses in its resource paths."""
    from panel.theme.fast import Fast as _Fast
    return type("Fast", (_Fast,), {"_resources": {**_Fast._resources, "font": {}}})


class _AuditTemplate(pn.template.FastListTemplate):
    """A FastListTemplate whose first HTML says "Loading the audit record…" until the views render
    (they come over the websocket after the page has loaded; see dashboard.html)."""

    _template = Path(__file__).with_name("dashboard.html")


class AuditDashboard(SourceViewer):
    """Annotators, privacy, model drift and integrity of one store or bundle, in tabs.

    Parameters
    ----------
    source
        An AuditStore, a bundle, a path (a folder is a bundle, a file a store opened read-only), or
        a :class:`~rlhf_audit_kit.apps._live.LiveSource` to follow a folder a writer publishes into.
    verifier
        Verifier key to trust for signature checks. Without it the record's own key is used and
        the header says in red that nothing was pinned.
    witnesses, witness_quorum
        Witness keys whose cosignatures the header and the Integrity tab name.
    """

    verifier = param.Parameter(default=None, doc="Verifier key (string, .vkey file or keys folder) to trust.")
    active = param.Integer(default=0, bounds=(0, 3), doc="Index of the tab shown.")
    witnesses = param.Parameter(default=None, doc="Witness keys (vkey strings, files or witness keys folders) "
                                                  "whose cosignatures are named.")
    witness_quorum = param.Integer(default=None, allow_None=True,
                                   doc="How many pinned witnesses must have cosigned (default: all).")

    def __init__(self, source: Any = None, **params: Any):
        self.live = source if isinstance(source, LiveSource) else None
        self._state = None
        if self.live is not None:
            self._state = self.live.state
            source = self._state.source
            if self.live.witnesses and "witnesses" not in params:
                params.update(witnesses=self.live.witnesses, witness_quorum=self.live.witness_quorum)
        super().__init__(source, **params)
        self.src = self._src
        self._swap_pending = False
        self._views: dict[str, Any] = {}
        self._make_views(self.src)
        self._tabs = self._header = self._body = self._callback = None
        self._initial: dict[str, dict] = {}  # per view: its parameter values as it chose them from the data
        self._carry: dict[str, dict] = {}  # per view: what the visitor set, to apply once it is rebuilt
        self.param.watch(self._on_active, "active")

    _CLASSES = {"Annotators": ("annotators", AnnotatorBehaviour), "Privacy": ("privacy", PrivacySpend),
                "Model drift": ("drift", ModelDrift), "Integrity": ("integrity", Integrity)}

    def _new_view(self, name: str, src):
        attr, cls = self._CLASSES[name]
        if cls is Integrity:
            view = Integrity(src, verifier=self.verifier, witnesses=self.witnesses, witness_quorum=self.witness_quorum)
            if self._state is not None:
                view.status = self._state.status()
                view.cosigners = list(self._state.cosigners)
        else:
            view = cls(src)
        setattr(self, attr, view)
        self._views[name] = view
        return view

    def _make_views(self, src) -> None:
        self._views = {}
        if src is not None:
            for name in self._CLASSES:
                self._new_view(name, src)

    @property
    def views(self) -> dict[str, pn.viewable.Viewer]:
        return dict(self._views)

    # ------------------------------------------------------------------ header
    def header_html(self) -> str:
        """Identity of the record: kind, name, origin, size and the latest signed snapshot; over a
        live source the newest verified checkpoint (size, root, age), its cosigners, and in red a
        refused checkpoint. Every string from the record is escaped."""
        if self.live is not None:
            return self._live_header()
        s = self.src
        snap = s.latest_snapshot()
        if snap is None:
            snap_txt = "no signed snapshot"
        elif snap["tree_size"] is None:
            snap_txt = "<span class='bad-note'>the latest checkpoint note does not parse</span>"
        else:
            snap_txt = (f"signed snapshot: size {snap['tree_size']:,}, root <code>{esc(snap['root_hash'][:16])}…</code>"
                        + (f", key {esc(snap.get('key_name'))}" if snap.get("key_name") else ""))
        cosigned = "".join(f" · {esc(_cosigned(c))}" for c in self.integrity.cosignatures())
        return ("<div class='audit-header' style='font-size:13px'>"
                + ("" if s.pinned else not_pinned_html())
                + f"<b>{esc(s.kind)}</b> <code>{esc(s.label)}</code>"
                f" · origin <code>{esc(s.origin)}</code> · {s.size:,} events · {snap_txt}{cosigned}</div>")

    def _live_header(self) -> str:
        st = self.live.state
        now = time.time()
        out = ["<div class='audit-header' style='font-size:13px'>"]
        if not st.pinned:
            out.append(not_pinned_html(True, st.vkey.split("+")[1] if st.vkey and st.vkey.count("+") >= 2 else None))
        f = st.failure
        if f is not None:
            size = f" (size {f.size:,})" if f.size is not None else ""
            if st.failing:
                kept = ("Showing the last checkpoint that verified." if st.source is not None
                        else "Nothing is shown.")
                out.append(f"<div class='live-failure' style='color:{RED};font-weight:600'>A new checkpoint{size} "
                           f"FAILED verification at {_utc(f.at)} and is not shown: {esc(f.message)}. {kept}</div>")
            else:
                out.append(f"<div class='live-failure' style='color:{RED}'>An earlier checkpoint{size} failed "
                           f"verification at {_utc(f.at)} and was not shown: {esc(f.message)}. The checkpoint "
                           f"shown verified after it, against the last one shown before.</div>")
        if st.pending:
            out.append(f"<div class='live-pending' style='color:{AMBER}'>{esc(st.pending)}</div>")
        if st.source is None:
            out.append(f"<b>bundle</b> <code>{esc(self.live.folder.name)}</code> · no verified checkpoint yet</div>")
            return "".join(out)
        s = st.source
        age = f", published <span class='live-age'>{_age(now - st.published)}</span> ago" if st.published else ""
        cosigned = "".join(f" · {esc(_cosigned(c))}" for c in st.cosigners)
        out.append(f"<b>{esc(s.kind)}</b> <code>{esc(s.label)}</code> · origin <code>{esc(s.origin)}</code>"
                   f" · newest verified checkpoint: size <b class='live-size'>{st.size:,}</b>, root "
                   f"<code class='live-root'>{esc(st.root[:16])}…</code>{age}{cosigned}</div>")
        return "".join(out)

    def _header_pane(self):
        if self._header is None:
            self._header = pn.pane.HTML(self.header_html(), sizing_mode="stretch_width",
                                        styles={"border-bottom": f"2px solid {ACCENT}"})
        return self._header

    def _body_pane(self):
        if self._body is None:
            self._body = pn.Column(self.tabs() if self._views else self._placeholder(), sizing_mode="stretch_width")
        return self._body

    @staticmethod
    def _placeholder():
        return pn.pane.HTML("<i class='live-waiting'>No data is shown until a signed checkpoint verifies.</i>",
                            sizing_mode="stretch_width")

    # ------------------------------------------------------------------ tabs
    def tabs(self) -> pn.Tabs:
        """The four views as tabs; a view is built (and loads its data) when its tab is first shown."""
        if self._tabs is None:
            self._slots = {name: pn.Column(sizing_mode="stretch_width", name=name) for name in self.views}
            self._tabs = pn.Tabs(*self._slots.values(), dynamic=True, sizing_mode="stretch_width")
            self._tabs.active = self.active
            self._fill(self.active)
            self._tabs.param.watch(lambda e: setattr(self, "active", e.new), "active")
        return self._tabs

    def _fill(self, index: int) -> None:
        if not self._views:
            return
        name = list(self.views)[index]
        slot, view = self._slots[name], self.views[name]
        if not slot.objects:
            slot.objects = [view.__panel__()]
            self._initial[name] = dict(view.param.values())
            for k, v in self._carry.pop(name, {}).items():
                try:
                    setattr(view, k, v)
                except Exception:  # noqa: BLE001 - a choice the new data no longer offers
                    pass

    def _on_active(self, event) -> None:
        if self._tabs is None:
            return
        self._fill(event.new)
        if self._tabs.active != event.new:
            self._tabs.active = event.new

    def build_all(self) -> None:
        """Build every tab now (e.g. before saving or benchmarking)."""
        self.tabs()
        for i in range(len(self.views)):
            self._fill(i)

    # ------------------------------------------------------------------ following a live source
    def _follow(self) -> None:
        """In a served session over a live source: check the shared state every half second."""
        if self.live is None or self._callback is not None or pn.state.curdoc is None \
                or pn.state.curdoc.session_context is None:
            return
        self._callback = pn.state.add_periodic_callback(self.refresh, period=500)

    def refresh(self) -> bool:
        """Take the live source's newest state: header, cosigners and new data (filters kept).
        True if the data changed. Sessions call it periodically; call it yourself inline.

        In a served session the header (size, root, age) is sent first and the views are updated
        in a next-tick callback, so the new size shows before the charts are recomputed."""
        if self.live is None:
            return False
        st = self.live.state
        if st is not self._state:
            self._state = st
            if self._views and st.source is self.src:  # the same checkpoint, cosigned since
                self.integrity.cosigners = list(st.cosigners)
        if self._header is not None:
            html = self.header_html()
            if html != self._header.object:
                self._header.object = html
        swap = st.source is not None and st.source is not self.src
        if swap and not self._swap_pending:
            doc = pn.state.curdoc
            if self._callback is not None and doc is not None and doc.session_context is not None:
                self._swap_pending = True
                doc.add_next_tick_callback(self._swap_to_latest)
            else:
                self._swap_to_latest()
        return swap

    def _swap_to_latest(self) -> None:
        self._swap_pending = False
        src = self._state.source if self._state is not None else None
        if src is not None and src is not self.src:
            self._swap(src)

    def _user_changes(self, name: str, view) -> dict:
        """The parameters the visitor changed on a built view (compared with what it chose itself)."""
        initial = self._initial.get(name)
        if initial is None:
            return self._carry.get(name, {})
        return {k: v for k, v in view.param.values().items()
                if k not in _NOT_CARRIED and k in initial and not _same(v, initial[k])}

    def _swap(self, src) -> None:
        """Show ``src`` (newer data of the same record): a built view that can reload in place does
        (its Bokeh data is patched); the others are rebuilt, with the filters the visitor set."""
        self.src = self._src = src
        if not self._views:
            self._make_views(src)
            if self._body is not None:
                self._body.objects = [self.tabs()]
            return
        for name, view in list(self._views.items()):
            slot = self._slots.get(name) if self._tabs is not None else None
            built = slot is not None and bool(slot.objects)
            if built and view.reload(src):
                continue
            self._carry[name] = self._user_changes(name, view)
            self._initial.pop(name, None)
            self._new_view(name, src)
            if slot is not None:
                slot.objects = []
        if self._tabs is not None:
            self._fill(self._tabs.active)

    # ------------------------------------------------------------------ layouts
    def __panel__(self):
        self._follow()
        return pn.Column(self._header_pane(), self._body_pane(), sizing_mode="stretch_width")

    def template(self) -> pn.template.FastListTemplate:
        """The dashboard in a FastListTemplate (what ``rlhf-audit serve`` shows): no request leaves the
        server (no Google Fonts), and the first HTML shows a loading note until the views render."""
        # The template puts its title into the page unescaped: escape the store/bundle name here
        # (the browser tab then shows entities for a hostile name, which is harmless).
        label = self.src.label if self.src is not None else self.live.folder.name
        self._follow()
        return _AuditTemplate(
            title=f"{TITLE}: {esc(label)}", header_background=ACCENT, accent_base_color=ACCENT,
            main=[self._header_pane(), self._body_pane()],
            main_layout=None, theme_toggle=False, design=_offline_fast())

    def servable(self, title: str | None = None, location: bool = True, area: str = "main", target=None):
        """Serve in the template under ``panel serve``; inline (notebook) as the plain layout."""
        if pn.state.served:
            return self.template().servable(title=title)
        return super().servable(title=title, location=location, area=area, target=target)


def _cosigned(c) -> str:
    from ..report.identity import cosigned_by
    return cosigned_by(c)
