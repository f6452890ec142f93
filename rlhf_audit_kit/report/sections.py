"""The evidence sections of a compliance notebook, computed from a verified snapshot bundle.

Each ``section_*`` function takes an open :class:`~rlhf_audit_kit.bundle.Bundle` (already verified
by the notebook's first code cell) and returns an :class:`Evidence`: markdown text with tables,
deterministic (sorted rows, fixed float formatting, no wall-clock time, no paths), so a re-executed
notebook shows the same outputs and ``pytest --nbval`` passes on it.

What the sections never show: raw annotator ids (the bundle only holds pseudonyms, and the notebook
does not list those either), per-annotator statistics (annotator pool figures come only from the
differentially private releases recorded in the log), secrets (none are in a bundle), and prompt or
response texts (unless the notebook was generated with ``include_texts=True``).

Every table names the log sequence numbers (``seq``) its figures come from, so each figure can be
traced to signed events.

Every string from the record (names, ids, reasons, texts, the origin) is written through
:func:`md_escape` (or :func:`md_code`), whatever renders the Markdown: nbconvert's mistune, JupyterLab's
marked, GitHub. A string signed into the log is still only data: it must never become markup, a
link, an image that fetches a URL, or script in the exported HTML.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ..schema import KINDS

__all__ = [
    "Evidence", "SafeMarkdown", "md_table", "md_escape", "md_code", "fmt", "svg_lines",
    "section_identity", "section_system_identity", "section_training", "section_data_governance",
    "section_annotators_privacy", "section_bias", "section_training_record", "section_oversight",
    "section_lineage", "section_record_keeping", "section_texts", "section_crosswalk",
]


# ------------------------------------------------------------------------------ rendering
@dataclass
class Evidence:
    """Markdown evidence shown by a notebook cell; ``tables`` keeps the frames behind it."""

    markdown: str
    tables: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False)
    svg: str | None = field(default=None, repr=False)

    def _repr_markdown_(self) -> str:
        # Below its heading, the text sits in a block MathJax skips: JupyterLab typesets the
        # rendered DOM, where an escaped "$" from the record is a "$" again.
        head, sep, body = self.markdown.partition("\n") if self.markdown.startswith("#") else ("", "", self.markdown)
        return f'{head}{sep}\n<div class="tex2jax_ignore mathjax_ignore">\n\n{body}\n\n</div>'

    def __repr__(self) -> str:  # text/plain: the same words, deterministic
        return self.markdown

    def _ipython_display_(self) -> None:
        # two outputs, so that HTML renderers show both the text and the chart (one output shows
        # only its highest-priority representation)
        from IPython.display import SVG, Markdown, display
        display(Markdown(self._repr_markdown_()))
        if self.svg:
            display(SVG(self.svg))


def fmt(v: Any, digits: int = 3) -> str:
    """One cell of a table: fixed float digits, thousands separators, ISO-like UTC times."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:,.{digits}f}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x, digits) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt(x, digits)}" for k, x in v.items())
    return str(v)


# Characters that are markup in Markdown, HTML or MathJax, or start an autolink, written as numeric
# character references (every CommonMark/GFM renderer shows the character itself). Links and images
# need "[", raw HTML and autolinks "<", bare autolinks "://" or "www."; "_" between letters and
# "(", ")", "!", "'" alone are plain text and stay readable.
_MD_SPECIAL = re.compile(r"[\\`*{}\[\]#+|~<>&\"$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|:(?=/)|(?<=www)\.",
                         re.IGNORECASE)
_MD_LEAD = re.compile(r"^(\d*)((?<=\d)\.|(?<!\d)[-=\s])")  # a list item, heading underline or code block


class SafeMarkdown(str):
    """Markdown the sections built themselves (never from the record): :func:`md_table` keeps it as is."""


def md_escape(value: Any) -> str:
    """Text from the record, safe anywhere inline in Markdown: shown as written, never as markup.

    HTML, links, images, emphasis, code spans, table pipes, math and autolinks are all neutralised
    with numeric character references; line breaks become spaces.

    >>> md_escape('<img src=x onerror="alert(1)"> ![x](http://h/) `a|b` snake_case')
    '&#60;img src=x onerror=&#34;alert(1)&#34;&#62; !&#91;x&#93;(http&#58;//h/) &#96;a&#124;b&#96; snake_case'
    """
    text = _MD_SPECIAL.sub(lambda m: f"&#{ord(m.group())};", " ".join(str(value).splitlines()))
    return _MD_LEAD.sub(lambda m: f"{m.group(1)}&#{ord(m.group(2))};", text)


def md_code(value: Any) -> SafeMarkdown:
    """A string from the record in code font (``<code>``; a backtick span could be closed by the value)."""
    return SafeMarkdown(f"<code>{md_escape(value)}</code>")


def _cell(v: Any, digits: int, plain_int: bool = False) -> str:
    if isinstance(v, SafeMarkdown):
        return v
    if plain_int and isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    text = fmt(v, digits)
    # numbers and times are formatted here; anything else is text from the record
    return text if v is None or isinstance(v, (int, float, dt.datetime)) else md_escape(text)


def _is_id_column(name: str) -> bool:
    """Sequence numbers and steps are identifiers: printed without thousands separators."""
    return "seq" in name or "step" in name


def md_table(df: pl.DataFrame, *, digits: int = 3, max_rows: int | None = None) -> str:
    """A polars frame as a markdown table (rows as given; callers sort them)."""
    if df.height == 0:
        return "*(no rows)*"
    head = "| " + " | ".join(md_escape(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---:" if df[c].dtype.is_numeric() else "---" for c in df.columns) + "|"
    rows = df.rows() if max_rows is None else df.head(max_rows).rows()
    plain = [_is_id_column(c) for c in df.columns]
    body = ["| " + " | ".join(_cell(v, digits, p) for v, p in zip(r, plain)) + " |" for r in rows]
    more = [] if max_rows is None or df.height <= max_rows else [
        f"\n*… {df.height - max_rows:,} more rows not shown.*"]
    return "\n".join([head, sep, *body, *more])


#: The red notice of a notebook whose exporter pinned no key (HTML: red in every renderer that allows it).
NOT_PINNED = SafeMarkdown(
    '<div style="color:#cf222e;border:2px solid #cf222e;padding:6px 10px">'
    "<b>⚠ Nothing was pinned.</b> This notebook was generated without a verifier key you trust: it "
    "checks the bundle against the key shipped inside it, which whoever altered the bundle could "
    "have replaced. &#34;Verified&#34; below only means the bundle is self-consistent. Regenerate it "
    "with the signer's public key: <code>rlhf-audit export-notebook BUNDLE --vkey VKEY</code>.</div>")


def _kv(rows: Sequence[tuple[str, Any]], digits: int = 3, header: Sequence[str] = ("item", "value")) -> str:
    """A table of (label, value, ...) rows: labels are the sections' own words, values go through _cell."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join([k, *(_cell(v, digits) for v in vs)]) + " |" for k, *vs in rows])


def _seq_range(seqs: pl.Series) -> str:
    if seqs.len() == 0:
        return "–"
    lo, hi = int(seqs.min()), int(seqs.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _has(bundle, kind: str) -> bool:
    return bundle.sql(f'SELECT count(*) AS n FROM "{kind}"')["n"][0] > 0


def _gap(what: str) -> str:
    return f"> **Gap:** {what} Record it as events (or attest it manually in the last section)."


def svg_lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
              width: int = 640, height: int = 220, marks: Sequence[float] = ()) -> str:
    """A small static SVG line chart (one normalised panel per series), deterministic text.

    Each series is scaled to its own min..max, so curves of different units share one panel; the
    legend gives each range. ``marks`` draws vertical dashed lines at x values (e.g. alerts).
    """
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    pad_l, pad_r, pad_t, pad_b = 10, 10, 28, 22
    # a point without a value (a metric not logged at that step, NaN) is left out, and its line broken there
    series = {name: [(float(x), float(y)) if _finite(x) and _finite(y) else None for x, y in zip(xs, ys)]
              for name, (xs, ys) in series.items()}
    xs_all = [p[0] for pts in series.values() for p in pts if p is not None]
    if not xs_all:
        return ""
    x0, x1 = min(xs_all), max(xs_all)
    xspan = (x1 - x0) or 1.0
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(x: float) -> float:
        return pad_l + (x - x0) / xspan * w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>',
             f'<text x="{pad_l}" y="14" font-weight="bold">{_esc(title)}</text>']
    for m in marks:
        parts.append(f'<line x1="{px(m):.1f}" y1="{pad_t}" x2="{px(m):.1f}" y2="{pad_t + h}" '
                     'stroke="#888" stroke-dasharray="4 3"/>')
    legend_x = pad_l + 4
    for i, (name, points) in enumerate(series.items()):
        ys = [p[1] for p in points if p is not None]
        if not ys:
            continue
        lo, hi = min(ys), max(ys)
        span = (hi - lo) or 1.0
        c = colors[i % len(colors)]
        runs: list[list[tuple[float, float]]] = [[]]
        for p in points:
            if p is None:
                runs.append([])
            else:
                runs[-1].append(p)
        for run in runs:
            if len(run) == 1:  # a lone point between gaps: a dot
                x, y = run[0]
                parts.append(f'<circle cx="{px(x):.1f}" cy="{pad_t + h - (y - lo) / span * h:.1f}" r="1.5" '
                             f'fill="{c}"/>')
            elif run:
                pts = " ".join(f"{px(x):.1f},{pad_t + h - (y - lo) / span * h:.1f}" for x, y in run)
                parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>')
        label = f"{name} ({lo:.3g} to {hi:.3g})"
        parts.append(f'<text x="{legend_x}" y="{pad_t + 14 + 13 * i}" fill="{c}">{_esc(label)}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 6}">{x0:g}</text>')
    parts.append(f'<text x="{pad_l + w}" y="{height - 6}" text-anchor="end">{x1:g}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ------------------------------------------------------------------------------ 1. identity
def _signer_text(vkeys: Sequence[str]) -> SafeMarkdown:
    from .identity import signers
    keys = signers(vkeys)
    return SafeMarkdown(", ".join(f"{md_code(v.name)} (key id {md_code(v.key_id.hex())})" for v in keys)
                    if keys else "**none**: no checkpoint verified")


def section_identity(bundle, report, pinned: bool = True, cosigned: Sequence | None = None, witnesses: int = 0,
                     quorum: int | None = None) -> Evidence:
    """Snapshot binding: what was verified, under which key (Art 12, Annex IV 2(h)).

    Only verified facts are shown as such: the signer is the pinned key that verified the
    checkpoint, never the ``key_name`` the manifest states; manifest fields no signature covers
    are listed apart, marked unverified (see :mod:`rlhf_audit_kit.report.identity`).
    ``pinned=False``: the notebook checks the bundle against the key shipped inside it.
    ``cosigned``: the verified cosignatures of the ``witnesses`` pinned witness keys (of which
    ``quorum`` were required), named in the table.
    """
    from ..encoding import ENCODING_NAME
    from .identity import cosigned_by, manifest_claims, store_id_from_origin
    cp = bundle.checkpoint
    m = bundle.manifest
    files = m.get("files", {})
    snaps = bundle.sql("SELECT seq, tree_size, root_hash, key_name, key_id FROM snapshot ORDER BY seq")
    sid = store_id_from_origin(cp.origin)
    key_label = "signed by (the pinned key)" if pinned else "signed by (the key shipped IN the bundle; NOT pinned)"
    rows = [("origin", md_code(cp.origin)), ("tree size (events covered)", cp.size),
            ("root hash (SHA-256, RFC 9162)", md_code(cp.root_hash.hex())),
            (key_label, _signer_text(report.signed_by)),
            ("pinned verifier key" if pinned else "verifier key used (from the bundle)", md_code(report.verifier)),
            ("canonical encoding of every entry", SafeMarkdown(f"{md_code(ENCODING_NAME)} (each entry re-encoded "
                                                           "from its typed row and compared byte for byte)")),
            ("store id", SafeMarkdown(f"{md_code(sid)} (named by the signed origin)") if sid
             else SafeMarkdown("not signed: the origin does not name it")),
            ("files checked against the manifest", len(files)),
            ("signed checkpoints verified", report.checkpoints_verified),
            ("verification", report.message)]
    if cosigned is not None:
        need = witnesses if quorum is None else quorum
        rows += [("witness policy", f"{len(cosigned)} of the {witnesses} pinned witness key(s) cosigned this "
                                    f"checkpoint; {need} required"),
                 ("cosigned by (the pinned witnesses)",
                  SafeMarkdown("; ".join(md_escape(cosigned_by(c)) for c in cosigned) or "none"))]
    claims = manifest_claims(m, signed_by=report.signed_by, origin=cp.origin, entries_verified=report.ok)
    stated = [c.value if isinstance(c.value, str) else json.dumps(c.value) for c in claims]
    unverified = pl.DataFrame({"field": [c.field for c in claims], "value": stated, "check": [c.check for c in claims]},
                              schema=dict.fromkeys(("field", "value", "check"), pl.String))
    md = ["### 1. Snapshot binding and verification", ""]
    if not pinned:
        md += [NOT_PINNED, ""]
    md += ["This notebook is bound to one signed snapshot. Its first code cell re-derived every leaf "
           "hash from the canonical entries in the bundle's log segments, re-encoded every typed row, rebuilt the "
           "RFC 9162 root, checked the Ed25519 signature of the checkpoint note against the "
           + ("pinned verifier key" if pinned else "verifier key shipped in the bundle")
           + ", checked each file against its SHA-256 in `manifest.json`, and compared the "
           "checkpoint with the (origin, size, root) pinned when the notebook was generated.", "",
           "**Verified** (covered by the checkpoint's signature, or re-derived from the signed entries):", "",
           _kv(rows)]
    if claims:
        md += ["", "**Not verified.** These fields of `manifest.json` are covered by no signature: "
                   "whoever handled the bundle can change them. They are shown for reference only, "
                   "compared with the verified facts where there are any:", "",
               _kv([(md_code(c.field), v, SafeMarkdown(f"**{md_escape(c.check)}**") if c.agrees is False else c.check)
                    for c, v in zip(claims, stated)],
                   header=("manifest field", "value as stated (not verified)", "check"))]
    if snaps.height:
        md += ["", "Earlier signed checkpoints recorded inside the log (each verified, and each "
                   "shown by an RFC 9162 consistency proof to be a prefix of the next):", "",
               md_table(snaps.with_columns(pl.col("root_hash").str.slice(0, 16) + "…"))]
    return Evidence("\n".join(md), {"snapshots": snaps, "unverified_manifest": unverified})


# ------------------------------------------------------------------------------ 3. system identity
def section_system_identity(bundle) -> Evidence:
    """Model identity from checkpoint events (Annex IV 1, Annex XI 1.1)."""
    md = ["### 3. System and model identity", ""]
    if not _has(bundle, "checkpoint"):
        return Evidence("\n".join(md + [_gap("no checkpoint events: base model and versions are "
                                             "not evidenced by this log.")]))
    base = bundle.sql("""SELECT coalesce(base_model, '–') AS base_model, run_id, count(*) AS checkpoints,
                                min(step) AS first_step, max(step) AS last_step, min(seq) AS first_seq,
                                max(seq) AS last_seq
                         FROM checkpoint GROUP BY ALL ORDER BY base_model, run_id""")
    md += ["Base models and runs named by the checkpoint events:", "", md_table(base), "",
           "Intended purpose, model licence, software versions and the provider's identity are not "
           "events of this log: state them in *Gaps and manual attestations*."]
    return Evidence("\n".join(md), {"base_models": base})


# ------------------------------------------------------------------------------ 4. training
def section_training(bundle) -> Evidence:
    """Runs, algorithms, steps and metrics (Annex IV 2(a)-(c), Annex XI 1.2(b),(d),(e))."""
    md = ["### 4. Training methodology and compute", ""]
    if not _has(bundle, "train_step"):
        return Evidence("\n".join(md + [_gap("no train_step events: the training methodology is not "
                                             "evidenced by this log.")]))
    runs = bundle.sql("""SELECT run_id, algorithm, count(*) AS steps, min(step) AS first_step,
                                max(step) AS last_step, max(epoch) AS last_epoch,
                                min(seq) AS first_seq, max(seq) AS last_seq
                         FROM train_step GROUP BY run_id, algorithm ORDER BY run_id, algorithm""")
    metrics = bundle.sql("""SELECT run_id, list_sort(list_distinct(flatten(list(map_keys(metrics))))) AS metrics
                            FROM train_step GROUP BY run_id ORDER BY run_id""")
    md += ["Training runs recorded (one `train_step` event per optimisation step):", "", md_table(runs), "",
           "Metrics logged per run:", ""]
    for run_id, names in metrics.rows():
        md.append(f"- {md_code(run_id)}: " + ", ".join(md_code(n) for n in names))
    compute = [n for names in metrics["metrics"].to_list() for n in names
               if any(k in n.lower() for k in ("flop", "gpu", "energy", "kwh"))]
    md.append("")
    if not compute:
        md.append(_gap("no compute metric (FLOPs, GPU-hours, energy) is logged, so the one-third "
                       "compute indicator of the GPAI guidelines cannot be computed from this log."))
    else:
        md.append("Compute-related metrics present: " + ", ".join(md_code(c) for c in sorted(set(compute))) + ".")
    return Evidence("\n".join(md), {"runs": runs})


# ------------------------------------------------------------------------------ 5. data governance
def section_data_governance(bundle) -> Evidence:
    """Datasets and annotation provenance counts (Art 10(2)(a)-(e), Annex IV 2(d))."""
    md = ["### 5. Data provenance and governance", ""]
    tables: dict[str, pl.DataFrame] = {}
    if _has(bundle, "dataset"):
        ds = bundle.sql("""SELECT seq, name, version, coalesce(license, '–') AS license, row_count,
                                  coalesce(content_hash, '–') AS content_hash, coalesce(source, '–') AS source
                           FROM dataset ORDER BY name, version""")
        ds = ds.with_columns(pl.when(pl.col("content_hash").str.len_chars() > 23)
                             .then(pl.col("content_hash").str.slice(0, 23) + "…")
                             .otherwise(pl.col("content_hash")).alias("content_hash"))
        tables["datasets"] = ds
        md += ["Registered datasets (`dataset` events):", "", md_table(ds), ""]
    else:
        md += [_gap("no dataset registrations."), ""]
    if _has(bundle, "annotation"):
        prov = bundle.sql("""SELECT coalesce(dataset, '–') AS dataset,
                                    coalesce(guideline_version, '–') AS guideline_version,
                                    count(*) AS labels, count(DISTINCT prompt_id) AS prompts,
                                    count(DISTINCT task_id) AS tasks,
                                    count(*) FILTER (WHERE gold_choice IS NOT NULL) AS gold_labels,
                                    count(*) FILTER (WHERE rationale IS NOT NULL AND rationale <> '') AS with_rationale,
                                    min(seq) AS first_seq, max(seq) AS last_seq
                             FROM annotation GROUP BY ALL ORDER BY dataset, guideline_version""")
        per_item = bundle.sql("""WITH items AS (
                                     SELECT prompt_id, least(response_a_id, response_b_id) AS r1,
                                            greatest(response_a_id, response_b_id) AS r2, count(*) AS n
                                     FROM annotation GROUP BY ALL)
                                 SELECT n AS labels_per_item, count(*) AS items FROM items
                                 GROUP BY n ORDER BY n""")
        choices = bundle.sql("""SELECT choice, count(*) AS labels,
                                       round(count(*) / sum(count(*)) OVER (), 4) AS share
                                FROM annotation GROUP BY choice ORDER BY choice""")
        # the annotation's own time; ts is when it was recorded (a loaded file's rows: the ingest)
        span = bundle.sql("""SELECT min(coalesce(submitted_at, shown_at)) AS first_label,
                                    max(coalesce(submitted_at, shown_at)) AS last_label,
                                    count(*) FILTER (WHERE submitted_at IS NULL AND shown_at IS NULL) AS untimed
                             FROM annotation""")
        tables.update(provenance=prov, labels_per_item=per_item, choices=choices)
        md += ["Annotation provenance (pairwise preference labels), by dataset and guideline version:", "",
               md_table(prov), "",
               _label_span(span.row(0, named=True)), "",
               "Labels per item (an item = a prompt and an unordered pair of responses):", "",
               md_table(per_item), "", "Choices over the whole pool:", "", md_table(choices, digits=4)]
    if _has(bundle, "rating"):
        rat = bundle.sql("""SELECT coalesce(dataset, '–') AS dataset, count(*) AS ratings,
                                   count(DISTINCT sample_id) AS samples, min(seq) AS first_seq,
                                   max(seq) AS last_seq FROM rating GROUP BY ALL ORDER BY dataset""")
        tables["ratings"] = rat
        md += ["", "Ratings (`rating` events):", "", md_table(rat)]
    return Evidence("\n".join(md), tables)


def _label_span(span: dict) -> str:
    untimed = (f" {span['untimed']:,} label(s) have no time of their own (no `submitted_at` or `shown_at`; their "
               "recording time is not when they were made) and are not in this span." if span["untimed"] else "")
    if span["first_label"] is None:
        return "No label has a time of its own (`submitted_at` or `shown_at`): when they were made is not recorded."
    return f"Labels were made from {fmt(span['first_label'])} to {fmt(span['last_label'])} UTC.{untimed}"


# ------------------------------------------------------------------------------ 6. annotators and privacy
def _pseudonym_key_ids(bundle) -> list[str]:
    parts = []
    for kind in ("annotation", "rating"):
        if _has(bundle, kind):
            parts.append(f"SELECT DISTINCT split_part(annotator, '-', 2) AS k FROM {kind} "
                         "WHERE annotator LIKE 'p-%'")
    if _has(bundle, "oversight"):
        parts.append("SELECT DISTINCT split_part(reviewer, '-', 2) AS k FROM oversight WHERE reviewer LIKE 'p-%'")
    if not parts:
        return []
    return sorted(bundle.sql(" UNION ".join(parts))["k"].to_list())


def _release_value(result_json: str) -> str:
    try:
        value = json.loads(result_json).get("value")
    except (ValueError, AttributeError):
        return "?"
    if isinstance(value, dict):
        def order(k: str) -> tuple:  # histogram bins such as "2-4", "1000+" in numeric order
            lead = k.split("-")[0].rstrip("+")
            return (0, int(lead), k) if lead.isdigit() else (1, 0, k)
        return "; ".join(f"{k}: {fmt(value[k], 3)}" for k in sorted(value, key=order))
    return fmt(value, 3)


def section_annotators_privacy(bundle) -> Evidence:
    """Pseudonymisation and the DP spend ledger (Art 10(2)(b), GDPR Art 4(5)/25/32, NIST MS-2.2)."""
    md = ["### 6. Annotators and privacy", ""]
    keys = _pseudonym_key_ids(bundle)
    md += ["**Pseudonymisation.** Person fields (`annotator`, `reviewer`) were replaced on ingest by "
           "keyed pseudonyms `p-<key id>-<24 hex>` (HMAC-SHA256). The key is held in a separate keys "
           "folder and never enters the store, the bundle or this notebook. Pseudonym key id(s) "
           "observed in this snapshot: " + (", ".join(md_code(k) for k in keys) if keys else "none") + ".",
           "", "**Annotator pool statistics** are shown only as the differentially private releases "
           "recorded in the log (`privacy_spend` events, charged to declared budgets before the answer "
           "was returned). This notebook computes no per-annotator figure and no exact pool figure "
           "about the people in the record.", ""]
    tables: dict[str, pl.DataFrame] = {}
    if _has(bundle, "privacy_budget"):
        budgets = bundle.sql("""SELECT seq, scope, epsilon, delta, coalesce(description, '–') AS description
                                FROM privacy_budget ORDER BY seq""")
        tables["budgets"] = budgets
        md += ["Budgets declared (`privacy_budget` events; the latest per scope applies):", "",
               md_table(budgets, digits=4), ""]
    else:
        md += [_gap("no privacy budget is declared."), ""]
    if _has(bundle, "privacy_spend"):
        spend = bundle.sql("""SELECT seq, query, mechanism, epsilon, delta,
                                     array_to_string(list_sort(CAST(json_extract(scopes, '$.scopes') AS VARCHAR[])), ', ') AS scopes,
                                     CAST(result AS VARCHAR) AS result
                              FROM privacy_spend ORDER BY seq""")
        spend = spend.with_columns(pl.col("result").map_elements(_release_value, return_dtype=pl.String)
                                   .alias("released value (noisy)")).drop("result")
        total = bundle.sql("""SELECT s.scope, sum(p.epsilon) AS epsilon_sum, sum(p.delta) AS delta_sum,
                                     count(*) AS releases
                              FROM privacy_spend p,
                                   unnest(CAST(json_extract(p.scopes, '$.scopes') AS VARCHAR[])) AS s(scope)
                              GROUP BY s.scope ORDER BY s.scope""")
        tables.update(releases=spend, spend_by_scope=total)
        md += ["DP releases (unit of privacy: one annotator; add/remove-one adjacency):", "",
               md_table(spend, digits=4), "",
               "Spend per scope, re-summed from the events (basic composition; the accountant's "
               "tighter figure for approximate-DP releases is in each event's `scopes.charged`):", "",
               md_table(total, digits=4)]
    else:
        md.append(_gap("no differentially private release is recorded, so no annotator pool "
                       "statistic can be shown."))
    return Evidence("\n".join(md), tables)


# ------------------------------------------------------------------------------ 7. bias
def _binom_row(name: str, k: int, n: int, ref: float = 0.5) -> dict:
    from scipy import stats
    if n == 0:
        return {"measure": name, "n": 0, "share": None, "ci95_low": None, "ci95_high": None, "p_vs_0.5": None}
    t = stats.binomtest(k, n, ref)
    ci = t.proportion_ci(0.95, method="exact")
    return {"measure": name, "n": n, "share": k / n, "ci95_low": float(ci.low), "ci95_high": float(ci.high),
            "p_vs_0.5": float(t.pvalue)}


def section_bias(bundle) -> Evidence:
    """Pool-level data quality and bias (Art 10(2)(f)-(h), 10(3)), via :mod:`rlhf_audit_kit.analysis`."""
    md = ["### 7. Data quality and bias examination", ""]
    if not _has(bundle, "annotation"):
        return Evidence("\n".join(md + [_gap("no annotation events.")]))
    from ..analysis import annotators as an
    from ..analysis import krippendorff_alpha
    df = an.annotation_frame(bundle)
    ab = df.filter(pl.col("choice").is_in(["a", "b"]))
    # "a" is the first-shown response only where the display order is known (a dataset of
    # chosen/rejected pairs stored chosen-first says display_order_known = false)
    shown = ab.filter(pl.col("order_known"))
    unknown = ab.height - shown.height
    rows = [_binom_row("first-shown response chosen (position)", int((shown["choice"] == "a").sum()), shown.height)]
    lens = ab.filter(pl.col("len_a").is_not_null() & pl.col("len_b").is_not_null()
                     & (pl.col("len_a") != pl.col("len_b")))
    longer = ((lens["choice"] == "a") & (lens["len_a"] > lens["len_b"])) | (
        (lens["choice"] == "b") & (lens["len_b"] > lens["len_a"]))
    rows.append(_binom_row("longer response chosen (length)", int(longer.sum()), lens.height))
    gold = df.filter(pl.col("gold_choice").is_not_null() & (pl.col("choice") != "skip"))
    gold_row = {"measure": "gold items answered correctly", "n": gold.height,
                "share": float((gold["choice"] == gold["gold_choice"]).mean()) if gold.height else None,
                "ci95_low": None, "ci95_high": None, "p_vs_0.5": None}
    if gold.height:
        g = _binom_row("gold items answered correctly", int((gold["choice"] == gold["gold_choice"]).sum()), gold.height)
        gold_row.update(ci95_low=g["ci95_low"], ci95_high=g["ci95_high"])
    rows.append(gold_row)
    bias = pl.DataFrame(rows, schema={"measure": pl.String, "n": pl.Int64, "share": pl.Float64,
                                      "ci95_low": pl.Float64, "ci95_high": pl.Float64, "p_vs_0.5": pl.Float64})
    labels = (df.filter(pl.col("label") != "skip").unique(subset=["item", "annotator"], keep="first",
                                                            maintain_order=True)
              .select("item", "annotator", "label"))
    multi = labels.group_by("item").len().filter(pl.col("len") >= 2).height
    alpha = krippendorff_alpha(labels) if multi else None
    known = ("coalesce(display_order_known, true)"
             if "display_order_known" in bundle.sql("SELECT * FROM annotation LIMIT 0").columns else "true")
    by_guideline = bundle.sql(f"""SELECT coalesce(guideline_version, '–') AS guideline_version,
                                         count(*) AS ab_labels, count(*) FILTER (WHERE NOT {known}) AS order_unknown,
                                         round(avg(CASE WHEN choice = 'a' THEN 1.0 ELSE 0.0 END)
                                               FILTER (WHERE {known}), 4) AS share_first_shown
                                  FROM annotation WHERE choice IN ('a', 'b') GROUP BY ALL ORDER BY guideline_version""")
    excluded = (f"{unknown:,} a/b choices of unknown display order (`display_order_known` false, e.g. a dataset "
                "of chosen/rejected pairs stored chosen-first) are left out of the position measure: for them "
                "\"a\" is not the first-shown response." if unknown else
                "Every a/b choice has a known display order.")
    md += ["Computed over the whole annotator pool (never per annotator) with "
           "`rlhf_audit_kit.analysis`: exact binomial tests against 0.5 with Clopper-Pearson 95% "
           "intervals. " + excluded, "", md_table(bias, digits=4), "",
           f"Inter-annotator agreement: Krippendorff's alpha (nominal, labels a/b/tie in the item's "
           f"canonical order, first label per annotator and item) = **{fmt(alpha, 4)}** over "
           f"{multi:,} items with two or more labels.", "",
           "Position share by guideline version (a change of guidelines is a mitigation event; the share "
           "is over the choices of known display order):", "",
           md_table(by_guideline, digits=4), "",
           "Per-annotator screens (position, length, random clicking, agreement, gold accuracy) exist in "
           "`rlhf_audit_kit.analysis.annotator_report`; their results identify people, so they are not "
           "part of this document. Record any mitigation they led to (e.g. removal of an annotator's "
           "labels, re-weighting) as events."]
    return Evidence("\n".join(md), {"bias": bias, "by_guideline": by_guideline})


# ------------------------------------------------------------------------------ 8. training record
def section_training_record(bundle) -> Evidence:
    """Reward drift, KL and reward-hacking indicators (Art 15)."""
    md = ["### 8. Reward model and policy training record", ""]
    tables: dict[str, pl.DataFrame] = {}
    svg = None
    from ..analysis import changepoints, drift_table
    if _has(bundle, "reward_score"):
        rs = bundle.sql("SELECT step, score, response_length FROM reward_score WHERE step IS NOT NULL")
        if rs.height and rs["step"].n_unique() > 1:
            dtab = drift_table(rs.select("step", "score"), group="step", value="score")
            extra = (rs.group_by("step").agg(pl.col("response_length").mean().alias("mean_length"),
                                             pl.corr("score", "response_length").alias("corr_score_length"))
                     .sort("step"))
            dtab = dtab.join(extra, on="step", how="left").select(
                "step", "n", "mean", "psi", "ks_stat", "wasserstein", "mean_length", "corr_score_length")
            tables["reward_drift"] = dtab
            md += ["Reward-model scores of policy samples by step, drift against the first step "
                   "(PSI, Kolmogorov-Smirnov, Wasserstein), mean response length and the score/length "
                   "correlation:", "", md_table(dtab), ""]
    kl_name = None
    if _has(bundle, "train_step"):
        tm = bundle.train_metrics()
        names = set(tm["metric"].unique().to_list())
        kl_name = next((n for n in ("objective/kl", "kl", "train/kl", "ppo/mean_non_score_reward")
                        if n in names), None)
        rew_name = next((n for n in ("objective/scores", "objective/rlhf_reward", "reward", "rewards/chosen")
                         if n in names), None)
        per_step = None
        if kl_name:
            per_step = (tm.filter(pl.col("metric") == kl_name).group_by("step").agg(pl.col("value").mean().alias("kl"))
                        .sort("step"))
            if rew_name:
                rew = (tm.filter(pl.col("metric") == rew_name).group_by("step")
                       .agg(pl.col("value").mean().alias("reward")))
                per_step = per_step.join(rew, on="step", how="left")
            n = per_step.height
            thirds = pl.DataFrame({"phase": ["first third", "middle third", "last third"],
                                   "from_step": [per_step["step"][0], per_step["step"][n // 3],
                                                 per_step["step"][2 * n // 3]]})
            phase = per_step.with_row_index("i").with_columns(
                pl.when(pl.col("i") < n // 3).then(pl.lit("first third"))
                .when(pl.col("i") < 2 * n // 3).then(pl.lit("middle third")).otherwise(pl.lit("last third"))
                .alias("phase"))
            aggs = [pl.col("kl").mean().alias("mean_kl")]
            if "reward" in per_step.columns:
                aggs.append(pl.col("reward").mean().alias("mean_reward"))
            summary = phase.group_by("phase").agg(*aggs).join(thirds, on="phase").sort("from_step")
            summary = summary.select("phase", "from_step", *[a.meta.output_name() for a in aggs])
            alerts = changepoints(per_step.select("step", "kl"), step="step", metric="kl",
                                  method="cusum") if n >= 60 else pl.DataFrame({"step": []})
            tables.update(kl_by_phase=summary, kl_alerts=alerts)
            first_alert = int(alerts["step"][0]) if alerts.height else None
            md += [f"Policy training: `{kl_name}` (KL to the reference policy)"
                   + (f" and `{rew_name}`" if rew_name else "") + " by phase of the run:", "",
                   md_table(summary), "",
                   "CUSUM change-point alerts on the KL series (standardised on the first 50 steps): "
                   + (f"first alert at step **{first_alert}**, {alerts.height} alert(s) in total."
                      if first_alert is not None else "none.")]
            series = {"KL": (per_step["step"].to_list(), per_step["kl"].to_list())}
            if "reward" in per_step.columns:
                series["reward"] = (per_step["step"].to_list(), per_step["reward"].fill_null(0).to_list())
            if "reward_drift" in tables:
                d = tables["reward_drift"]
                series["mean response length"] = (d["step"].to_list(), d["mean_length"].to_list())
            svg = svg_lines(series, title="KL, reward and response length by step "
                            "(each scaled to its range; dashed: first KL alert)",
                            marks=[first_alert] if first_alert is not None else [])
    indicators = []
    if "reward_drift" in tables:
        d = tables["reward_drift"]
        indicators.append(("reward score, first → last step", f"{fmt(d['mean'][0])} → {fmt(d['mean'][-1])}"))
        indicators.append(("mean response length, first → last step",
                           f"{fmt(d['mean_length'][0], 1)} → {fmt(d['mean_length'][-1], 1)}"))
        indicators.append(("score/length correlation, last step", fmt(d["corr_score_length"][-1])))
    if "kl_by_phase" in tables:
        k = tables["kl_by_phase"]
        indicators.append(("mean KL, first → last third", f"{fmt(k['mean_kl'][0])} → {fmt(k['mean_kl'][-1])}"))
    if indicators:
        md += ["", "Reward-hacking indicators (rising reward together with rising length and KL, and a "
                   "growing score/length correlation, suggest the policy exploits the reward model; "
                   "confirm with held-out human preference evaluations):", "", _kv(indicators)]
    if not tables:
        md.append(_gap("no reward scores or training metrics."))
    md += ["", _gap("held-out reward-model accuracy, calibration and seed variance are not logged as "
                    "events in this snapshot.")]
    return Evidence("\n".join(md), tables, svg)


# ------------------------------------------------------------------------------ 10. oversight
def section_oversight(bundle) -> Evidence:
    """Human oversight decisions (Art 14, Annex IV 2(e), Art 17(1)(m))."""
    md = ["### 10. Human oversight decisions", ""]
    if not _has(bundle, "oversight"):
        return Evidence("\n".join(md + [_gap("no oversight decisions are recorded.")]))
    ov = bundle.sql("""SELECT seq, decided_at, decision, coalesce(role, '–') AS role,
                              coalesce(subject_run, '–') AS run, coalesce(subject_checkpoint, '–') AS checkpoint,
                              subject_seq, reason
                       FROM oversight ORDER BY coalesce(decided_at, ts), seq""")
    counts = bundle.sql("SELECT decision, count(*) AS n FROM oversight GROUP BY decision ORDER BY decision")
    md += ["Decisions in the order they were taken (reviewers are pseudonymised; their role is shown):", "",
           md_table(ov), "", "Decisions by type:", "", md_table(counts)]
    return Evidence("\n".join(md), {"oversight": ov})


# ------------------------------------------------------------------------------ 11. lineage
def section_lineage(bundle) -> Evidence:
    """Checkpoint lineage and change log (Annex IV 6, GPAI model authenticity)."""
    md = ["### 11. Checkpoint lineage and change log", ""]
    if not _has(bundle, "checkpoint"):
        return Evidence("\n".join(md + [_gap("no checkpoint events.")]))
    ck = bundle.sql("""SELECT seq, run_id, step, content_hash, size_bytes, coalesce(parent, '–') AS parent,
                              coalesce(base_model, '–') AS base_model
                       FROM checkpoint ORDER BY run_id, step""")
    md += ["Checkpoints with the content hash of their files (`sha256:` of the file, or of the "
           "`sha256sum`-style manifest of a folder):", "", md_table(ck)]
    if _has(bundle, "oversight"):
        moves = bundle.sql("""SELECT seq, decision, subject_checkpoint AS checkpoint FROM oversight
                              WHERE decision IN ('approve', 'rollback', 'halt', 'reject')
                                AND subject_checkpoint IS NOT NULL ORDER BY seq""")
        if moves.height:
            md += ["", "Promotions, halts and rollbacks naming a checkpoint:", "", md_table(moves)]
    return Evidence("\n".join(md), {"checkpoints": ck})


# ------------------------------------------------------------------------------ 12. record keeping
def section_record_keeping(bundle) -> Evidence:
    """What the log records, its time span and integrity proof (Art 12, 17-19, 26(6))."""
    from ..encoding import ENCODING_NAME
    from ..ledger import merkle
    per_kind = bundle.sql("""SELECT kind, count(*) AS events, min(seq) AS first_seq, max(seq) AS last_seq,
                                    min(ts) AS first_recorded, max(ts) AS last_recorded
                             FROM log GROUP BY kind ORDER BY kind""")
    first, last = bundle.time_span()
    md = ["### 12. Record-keeping and retention", "",
          f"Every event is one canonical entry (RFC 8785 JSON, encoding `{ENCODING_NAME}`, checked for "
          "every entry) in an append-only log, hashed into an RFC 9162 "
          "Merkle tree whose root is signed. Events per kind and recording times (UTC):", "",
          md_table(per_kind), "",
          f"The log was recorded from {fmt(first)} to {fmt(last)} UTC.", "", "What each kind records:", ""]
    for kind in per_kind["kind"].to_list():
        k = KINDS.get(kind)
        if k is not None:
            md.append(f"- `{kind}`: {k.doc} Fields: " + ", ".join(f"`{f.name}`" for f in k.fields) + ".")
    # an integrity proof a reader can recheck by hand: inclusion of the last event in the signed root
    log = bundle.sql("SELECT seq, entry FROM log ORDER BY seq")
    cp = bundle.checkpoint
    if log.height:
        entries = [bytes(e) for e in log["entry"].to_list()]
        idx = len(entries) - 1
        proof = merkle.inclusion_proof(entries, idx)
        ok = merkle.verify_inclusion(merkle.leaf_hash(entries[idx]), idx, cp.size, proof, cp.root_hash)
        md += ["", f"Integrity proof: the last event (seq {idx}) is included in the signed tree of size "
                   f"{cp.size:,} by an RFC 9162 inclusion proof of {len(proof)} hashes, which "
                   f"{'verifies' if ok else 'DOES NOT verify'} against the signed root. Leaf hash "
                   f"`{merkle.leaf_hash(entries[idx]).hex()}`; proof:", ""]
        md += [f"{i + 1}. `{h.hex()}`" for i, h in enumerate(proof)]
    md += ["", "**Retention policy (manual input):** _state the retention period of this record and of "
               "the snapshot bundles (e.g. Art 18: documentation 10 years; Art 19/26(6): system logs at "
               "least 6 months), who keeps earlier checkpoints independently, and where._", "",
           "A hash-chained log cannot show missing records at its end without an independently kept "
           "head: compare this snapshot with earlier signed checkpoints you hold."]
    return Evidence("\n".join(md), {"per_kind": per_kind})


# ------------------------------------------------------------------------------ texts (opt-in)
def section_texts(bundle, limit: int = 5) -> Evidence:
    """A few annotated prompts and responses (only when generated with ``include_texts=True``)."""
    md = ["### Appendix: sample of annotated texts", ""]
    if not _has(bundle, "annotation"):
        return Evidence("\n".join(md + ["*(no annotations)*"]))
    s = bundle.sql(f"""SELECT seq, prompt, response_a, response_b, choice FROM annotation
                       ORDER BY seq LIMIT {int(limit)}""")
    for seq, prompt, a, b, choice in s.rows():
        quoted = "\n".join("> " + md_escape(line) for line in prompt.splitlines() or [""])
        md += [f"**seq {seq}** (choice: {md_escape(choice)})", "", quoted, "",
               "- A: " + md_escape(a), "- B: " + md_escape(b), ""]
    return Evidence("\n".join(md), {"texts": s})


# ------------------------------------------------------------------------------ 14. crosswalk
CROSSWALK = (
    ("EU AI Act Art 10(2)(a)-(e)", "datasets, provenance, counts", "5", "partial"),
    ("EU AI Act Art 10(2)(f)-(g)", "position/length bias, agreement", "7", "covered"),
    ("EU AI Act Art 10(5) / Art 4a", "special-category data", "15", "needs manual input"),
    ("EU AI Act Art 12", "logging, signed checkpoints, verification", "1, 12", "covered"),
    ("EU AI Act Art 14", "oversight decisions", "10", "covered"),
    ("EU AI Act Art 15", "KL, reward drift, hacking indicators", "8", "partial"),
    ("EU AI Act Annex IV 2(a)-(c)", "runs, algorithms, steps", "4", "partial"),
    ("EU AI Act Annex IV 2(g)", "dated, signed test logs", "9", "needs manual input"),
    ("EU AI Act Annex IV 6", "checkpoint lineage", "11", "covered"),
    ("NIST AI 600-1 MS-2.8-003", "tamper-evident history", "1", "covered"),
    ("NIST AI 600-1 MS-2.2-002/-004", "pseudonymisation, DP", "6", "covered"),
    ("ISO/IEC 42001 A.6.2.8", "event logs per lifecycle phase", "12", "partial"),
    ("GDPR Art 4(5), 25, 32", "keyed pseudonyms, key held separately", "6", "covered"),
    ("GDPR Art 5(1)(e)", "storage limitation / retention", "12", "needs manual input"),
)


def section_crosswalk(bundle) -> Evidence:
    """Requirement crosswalk with coverage marks (from the compliance map)."""
    has_eval = _has(bundle, "custom") and bundle.sql(
        "SELECT count(*) AS n FROM custom WHERE name LIKE 'eval%'")["n"][0] > 0
    rows = [(r, what, sec, ("partial" if (sec == "9" and has_eval) else cov)) for r, what, sec, cov in CROSSWALK]
    df = pl.DataFrame(rows, schema=["requirement", "evidence", "section", "status"], orient="row")
    md = ["### 14. Crosswalk", "",
          "Each row says whether this log *can* evidence the item: `covered` (the events exist and are "
          "shown), `partial` (some of it), `needs manual input`. A mark is not a finding of compliance.",
          "", md_table(df)]
    return Evidence("\n".join(md), {"crosswalk": df})
