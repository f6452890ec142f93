"""Integrity: signed snapshots on a timeline, verification status, inclusion proofs, the verifier key.

Verification runs the store's or bundle's own ``verify(key)`` (every link: typed rows, entries,
leaves, signed roots, signatures; the first bad ``seq`` is named). It runs when asked (button) or
at first display with ``verify_on_load=True``; a million events take a few seconds. Inclusion
proofs are checked against the latest signed checkpoint, whose signature is checked with the
verifier key (given, else the one the bundle ships, marked NOT PINNED in red; pin your own key).
With ``witnesses=`` the pinned witnesses that cosigned a bundle's checkpoint are named (cosigned
notes in its ``cosignatures/`` folder), and a cosignature that does not verify is shown in red.
"""
from __future__ import annotations

import datetime as dt
import html

import param
import polars as pl

from ._common import ACCENT, card, esc, require_panel
from ._viewer import SourceViewer
from ._data import ProofResult, VerifyStatus

pn = require_panel()
import holoviews as hv  # noqa: E402

__all__ = ["Integrity", "status_html", "proof_html", "witnesses_html"]


def status_html(st: VerifyStatus | None) -> str:
    """A coloured card with the verification outcome (first bad seq when broken)."""
    if st is None:
        return card("Verification", "<i>not run yet: press <b>Verify now</b></i>", "#888")
    colour = "#2ca02c" if st.ok else "#d62728"
    title = "Verified" if st.ok else "Verification FAILED"
    extra = ""
    if not st.ok and st.first_bad_seq is not None:
        extra = f"<div class='first-bad-seq'>first bad seq: <b>{st.first_bad_seq}</b></div>"
    if st.root:
        extra += f"<div>signed root <code>{esc(st.root)}</code></div>"
    if not st.checked_signature:
        extra += "<div style='color:#b8860b'>signature not checked: no verifier key</div>"
    elif not st.pinned:
        extra += ("<div class='not-pinned' style='color:#d62728;font-weight:600'>NOT PINNED: checked against the "
                  "key shipped with the record, which proves only that it is self-consistent</div>")
    return card(title, f"<div class='verify-message'>{esc(st.message)}</div>{extra}", colour)


def proof_html(p: ProofResult | None) -> str:
    """The inclusion proof of one event: outcome, leaf hash, proof path, signed size and root."""
    if p is None:
        return "<i>Enter a seq and press <b>Prove inclusion</b>.</i>"
    colour = "#2ca02c" if p.ok else "#d62728"
    rows = ""
    if p.leaf_hash:
        path = "".join(f"<li><code>{h}</code></li>" for h in p.proof)
        rows = (f"<div>kind <b>{esc(p.kind)}</b>, logged {esc(p.ts)}</div>"
                f"<div>leaf hash <code>{p.leaf_hash}</code></div>"
                f"<div>tree size {p.tree_size:,}, signed root <code>{esc(p.root)}</code>"
                f"{' (signature verified)' if p.signed else ''}</div>"
                f"<details><summary>proof path: {len(p.proof)} hashes</summary><ol>{path}</ol></details>")
    return card(f"Inclusion of seq {p.seq}: {'verified' if p.ok else 'NOT verified'}",
                f"<div class='proof-message'>{esc(p.message)}</div>{rows}", colour)


def witnesses_html(cosigners, findings=(), pinned: int = 0) -> str:
    """The pinned witnesses that cosigned (escaped), and in red what does not verify or is missing."""
    from ..report.identity import cosigned_by
    rows = "".join(f"<li class='cosigner'>{esc(cosigned_by(c))}</li>" for c in cosigners)
    bad = "".join(f"<div class='witness-problem' style='color:#d62728'>{esc(f.damage)}: {esc(f.message)}</div>"
                  for f in findings)
    if not rows:
        rows = f"<li>none of the {pinned} pinned witness(es) cosigned this checkpoint</li>"
    return card("Witness cosignatures", f"<ul style='margin:2px 0'>{rows}</ul>{bad}",
                "#d62728" if findings else ACCENT)


_MIN_SPAN = dt.timedelta(minutes=2)


def _snapshot_axes(t0, t1, size0: int, size1: int) -> dict:
    """Axes of the snapshots chart: whole tree sizes (thousands separated, never a fraction) and
    times no finer than seconds, over at least two minutes and eight sizes, so snapshots taken
    seconds apart (or a single one) do not zoom the axes to milliseconds and fractions of an event."""
    from bokeh.models import BasicTicker, DatetimeTicker, DatetimeTickFormatter, NumeralTickFormatter

    def pad(lo, hi, least):  # 5% each side, and at least `least` wide
        lo, hi = lo - (hi - lo) * 0.05, hi + (hi - lo) * 0.05
        wide = max(hi - lo, least)
        return lo - (wide - (hi - lo)) / 2, lo - (wide - (hi - lo)) / 2 + wide
    hms = "%H:%M:%S"
    return dict(
        xlim=pad(t0, t1, _MIN_SPAN), ylim=tuple(max(0.0, y) for y in pad(size0, size1, 8)),
        # Bokeh's datetime ticker also ticks in milliseconds: leave that one out.
        xticks=DatetimeTicker(tickers=[t for t in DatetimeTicker().tickers
                                       if getattr(t, "min_interval", 1000) >= 1000]),
        xformatter=DatetimeTickFormatter(milliseconds=hms, seconds=hms, minsec=hms, minutes="%H:%M",
                                         hourmin="%H:%M", hours="%m-%d %H:%M", days="%Y-%m-%d",
                                         months="%Y-%m", years="%Y"),
        yticks=BasicTicker(min_interval=1, num_minor_ticks=0),
        yformatter=NumeralTickFormatter(format="0,0"))


class Integrity(SourceViewer):
    """Snapshots, verification, inclusion proofs and the verifier key of a store or bundle.

    Parameters
    ----------
    source
        An AuditStore, a bundle or a path. Read only.
    verifier
        Verifier key string, ``.vkey`` file or keys folder: the trust anchor (default: the key a
        bundle ships, or the store's keys folder, marked NOT PINNED).
    witnesses, witness_quorum
        Witness keys whose cosignatures of the bundle's checkpoint are named, and how many of them
        must have cosigned (default: all).
    """

    verifier = param.Parameter(default=None, doc="Verifier key (string, .vkey file or keys folder) to trust.")
    seq = param.Integer(default=0, bounds=(0, None), doc="seq of the event whose inclusion proof is looked up.")
    verify_on_load = param.Boolean(default=False, doc="Verify the whole record when first displayed.")
    status = param.Parameter(default=None, doc="Last VerifyStatus (None until verified).")
    proof = param.Parameter(default=None, doc="Last ProofResult (None until looked up).")
    witnesses = param.Parameter(default=None, doc="Witness keys (vkey strings, files or witness keys folders) "
                                                  "whose cosignatures are named.")
    witness_quorum = param.Integer(default=None, allow_None=True,
                                   doc="How many pinned witnesses must have cosigned (default: all).")
    cosigners = param.Parameter(default=None, doc="Cosignatures already checked (a live source's); "
                                                  "None: checked here from the bundle.")

    def witness_check(self) -> tuple[list, list]:
        """``(cosignatures, findings)`` of the pinned witnesses over the bundle's checkpoint."""
        if self.cosigners is not None:
            return list(self.cosigners), []
        if not self.witnesses:
            return [], []
        from ..ledger.verify import Finding
        if not self._src.is_bundle:
            return [], [Finding("witness-quorum", "cosignatures are kept in bundles (cosignatures/), not in a store")]
        from ..ledger.witness import bundle_cosignatures, resolve_witnesses
        ws = resolve_witnesses(self.witnesses)
        key = ("witnesses", tuple(w.vkey for w in ws), self.witness_quorum)
        return self._src.cached(key, lambda: bundle_cosignatures(self._src.obj, ws, self.witness_quorum))

    def cosignatures(self) -> list:
        """The pinned witnesses that cosigned the bundle's checkpoint (verified cosignatures)."""
        return self.witness_check()[0]

    def verify(self) -> VerifyStatus:
        """Verify now (cached on the source: a snapshot or bundle does not change)."""
        self.status = self._src.cached(("integrity/verify", self._src.size), self._src.verify)
        return self.status

    def prove(self, seq: int | None = None) -> ProofResult:
        """Inclusion proof of ``seq`` (default :attr:`seq`) against the latest signed checkpoint."""
        if seq is not None:
            self.seq = int(seq)
        self.proof = self._src.inclusion(self.seq)
        return self.proof

    def snapshots(self) -> pl.DataFrame:
        """Signed snapshots: those recorded in the log plus the bundle's own checkpoint."""
        snaps = self._src.snapshots().select("seq", "ts", "tree_size", "root_hash", "key_name")
        latest = self._src.latest_snapshot()
        if latest and latest.get("tree_size") is not None and latest["tree_size"] not in snaps["tree_size"].to_list():
            ts = latest.get("ts")
            if ts is None and self._src.size:
                ts = self._src.sql("SELECT max(ts) AS t FROM log")["t"][0]
            snaps = pl.concat([snaps, pl.DataFrame({
                "seq": [None], "ts": [ts], "tree_size": [latest["tree_size"]], "root_hash": [latest["root_hash"]],
                "key_name": [latest.get("key_name")]}, schema=snaps.schema)])
        return snaps.sort("tree_size")

    def timeline(self):
        """Signed tree size against the time each snapshot was taken."""
        d = self.snapshots().with_columns(pl.col("root_hash").str.slice(0, 16)).to_pandas()
        opts = dict(width=560, height=260, title="Signed snapshots (tree size over time)")
        if len(d) == 0:
            return hv.Curve([]).opts(**opts)
        return (hv.Curve(d, "ts", "tree_size").opts(interpolation="steps-post", color="#bbb")
                * hv.Scatter(d, "ts", ["tree_size", "root_hash", "key_name"]).opts(
                    size=12, color=ACCENT, tools=["hover"])).opts(
            **opts, **_snapshot_axes(d["ts"].min(), d["ts"].max(), int(d["tree_size"].min()),
                                     int(d["tree_size"].max())),
            xlabel="time (UTC)", ylabel="signed tree size")

    @param.depends("status")
    def _status_pane(self):
        return pn.pane.HTML(status_html(self.status), sizing_mode="stretch_width")

    @param.depends("cosigners")
    def _witness_pane(self):
        if not self.witnesses:
            return pn.pane.HTML("", width=0, height=0, visible=False)
        cosigs, findings = self.witness_check()
        from ..ledger.witness import resolve_witnesses
        return pn.pane.HTML(witnesses_html(cosigs, findings, len(resolve_witnesses(self.witnesses))),
                            sizing_mode="stretch_width")

    @param.depends("proof")
    def _proof_pane(self):
        return pn.pane.HTML(proof_html(self.proof), sizing_mode="stretch_width")

    def _identity_html(self) -> str:
        s = self._src
        latest = s.latest_snapshot()
        if latest is None:
            snap = "<i>no signed snapshot yet</i>"
        elif latest["tree_size"] is None:
            snap = "<i class='bad-note'>the checkpoint note does not parse</i>"
        else:
            snap = f"tree size <b>{latest['tree_size']:,}</b>, root <code>{esc(latest['root_hash'])}</code>"
        return card(f"{s.kind.capitalize()} {s.label}",
                    f"<div>origin <code>{esc(s.origin)}</code> · {s.size:,} events</div><div>latest checkpoint: {snap}</div>",
                    ACCENT)

    def __panel__(self):
        if self._layout is not None:
            return self._layout
        vkey = self._src.vkey() or ""
        verify_btn = pn.widgets.Button(label="Verify now", color="primary", width=140)
        verify_btn.on_click(lambda e: self.verify())
        seq_in = pn.widgets.IntInput.from_param(self.param.seq, label="seq", width=160)
        prove_btn = pn.widgets.Button(label="Prove inclusion", color="primary", width=160)
        prove_btn.on_click(lambda e: self.prove())
        key_box = pn.widgets.TextInput(value=vkey, label="Verifier key (pin this; give it to auditors)",
                                       disabled=False, sizing_mode="stretch_width", css_classes=["vkey"])
        copy_btn = pn.widgets.Button(label="Copy key", width=100)
        copy_btn.js_on_click(args={"k": key_box}, code="navigator.clipboard && navigator.clipboard.writeText(k.value)")
        if not vkey:
            key_box.placeholder = ((self._src.vkey_problem or "no verifier key known")
                                   + ": pass verifier=... (or --verifier) to check signatures")
        # Only a note that parses as a checkpoint is shown: never raw file content.
        latest = self._src.latest_snapshot()
        note = (latest["note"] if latest and latest["tree_size"] is not None
                else "(no signed checkpoint)" if latest is None else "(the checkpoint note does not parse)")
        if self.verify_on_load:
            self.verify()
        self._layout = pn.Column(
            pn.pane.HTML(self._identity_html(), sizing_mode="stretch_width"),
            pn.Row(pn.pane.HoloViews(self.timeline(), linked_axes=False),
                   pn.Column(pn.pane.Markdown("#### Verification"), verify_btn, self._status_pane,
                             self._witness_pane, width=560)),
            pn.Row(pn.Column(pn.pane.Markdown("#### Inclusion proof (against the latest signed checkpoint)"),
                             pn.Row(seq_in, prove_btn), self._proof_pane, width=620),
                   pn.Column(pn.pane.Markdown("#### Verifier key"), pn.Row(key_box, copy_btn, sizing_mode="stretch_width"),
                             pn.pane.Markdown("#### Latest signed checkpoint"),
                             pn.pane.HTML(f"<pre class='checkpoint-note' style='font-size:11px'>{html.escape(note)}</pre>"),
                             sizing_mode="stretch_width"), sizing_mode="stretch_width"),
            pn.pane.Markdown("#### Snapshots"),
            pn.widgets.Tabulator(self.snapshots().with_columns(
                pl.col("seq").cast(pl.Utf8).fill_null("(bundle checkpoint)")).to_pandas(), show_index=False, disabled=True, height=200,
                                 sizing_mode="stretch_width", layout="fit_data_fill"),
            sizing_mode="stretch_width", name="Integrity")
        return self._layout
