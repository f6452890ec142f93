"""The documentation site: `mkdocs build --strict` passes, and the events reference matches schema.py.

Regenerate the generated part of docs/events.md with ``python tests/test_docs.py``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_audit_kit import schema

ROOT = Path(__file__).resolve().parents[1]
EVENTS_MD = ROOT / "docs" / "events.md"
BEGIN, END = "<!-- BEGIN GENERATED: schema.py -->", "<!-- END GENERATED: schema.py -->"
TYPE_DOC = {"id": "string, at most {id} chars", "text": "string, at most {text} chars",
            "int": "integer", "float": "number", "bool": "boolean", "ts": "UTC timestamp",
            "json": "JSON object", "map_float": "map string → number",
            "map_int": "map string → integer"}


def _limits(f: schema.Field) -> str:
    out = []
    if f.choices:
        out.append("one of " + ", ".join(f"`{c}`" for c in f.choices))
    if f.min is not None:
        out.append(f"≥ {f.min:g}")
    if f.max is not None:
        out.append(f"≤ {f.max:g}")
    if f.person:
        out.append("**person**: pseudonymised on ingest")
    return "; ".join(out)


def events_markdown() -> str:
    """The generated part of docs/events.md: one table per kind, from :mod:`rlhf_audit_kit.schema`."""
    lines = [BEGIN, ""]
    for kind in schema.KINDS.values():
        lines.append(f"### `{kind.name}`")
        lines.append("")
        doc = kind.doc + (" *Written by the kit itself; `extend` refuses it.*" if kind.internal else "")
        lines.append(doc)
        lines.append("")
        if kind.unique:
            lines.append("Unique: " + "; ".join("(" + ", ".join(f"`{c}`" for c in u) + ")"
                                                 for u in kind.unique) + ".")
            lines.append("")
        lines.append("| field | type | required | limits | description |")
        lines.append("|---|---|---|---|---|")
        for f in kind.fields:
            t = TYPE_DOC[f.type].format(id=f"{schema.MAX_ID_CHARS:,}", text=f"{schema.MAX_TEXT_CHARS:,}")
            doc = f.doc.replace("|", "\\|")
            lines.append(f"| `{f.name}` | {t} | {'yes' if f.required else ''} | {_limits(f)} | {doc} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def test_events_reference_matches_schema():
    text = EVENTS_MD.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/events.md lost its generated-section markers"
    current = text[text.index(BEGIN):text.index(END) + len(END)]
    assert current == events_markdown(), (
        "docs/events.md is out of date with schema.py: run `python tests/test_docs.py`")


@pytest.mark.slow
def test_mkdocs_build_strict(docs_site):  # the build (--strict) is the session fixture in tests/conftest.py
    out = docs_site
    assert (out / "index.html").is_file()
    assert (out / "concepts" / "index.html").is_file()
    # the executed notebooks are pages, rendered from their stored outputs
    assert (out / "notebooks" / "01_quickstart" / "index.html").is_file()
    assert (out / "reference" / "store" / "index.html").is_file()



def test_cli_page_documents_every_command():
    import argparse

    from rlhf_audit_kit.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [name for name in sub.choices if f"## `{name}`" not in text]
    assert not missing, f"docs/cli.md lacks the commands {missing}"


def test_every_notebook_is_in_the_nav_and_the_notebooks_page():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    page = (ROOT / "docs" / "notebooks.md").read_text(encoding="utf-8")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{nb.name}" in nav, nb.name
        assert f"notebooks/{nb.name}" in page, nb.name


def _rewrite() -> None:
    text = EVENTS_MD.read_text(encoding="utf-8")
    new = text[:text.index(BEGIN)] + events_markdown() + text[text.index(END) + len(END):]
    EVENTS_MD.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    _rewrite()
