"""Griffe extension for the API reference: show doctest examples as ``pycon`` code blocks.

Docstrings in rlhf_audit_kit hold runnable doctests (``>>>`` lines and their output) outside
fenced blocks. Markdown would read their brackets as links (``['a'][:3]``); this wraps every run of
doctest lines (a ``>>>`` line, its ``...`` continuations and output, up to a blank line) in a fenced
``pycon`` block, unless it is already inside a fence or an indented literal block.
"""
from __future__ import annotations

import griffe


def fence_doctests(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            out.append(line)
            i += 1
            continue
        if not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                block.append(lines[i][len(indent):])
                i += 1
            out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Wrap doctest runs of every docstring in ```pycon fences before they are parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # griffe >= 1.0
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
