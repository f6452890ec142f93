"""The package's modules import each other one way: foundations, the store, sealing and export, the rest.

Read from the source with ``ast``: only imports that run when a module is imported count (module
level, including ``try``/``if`` blocks, not ``if TYPE_CHECKING``); an import inside a function
(a convenience method reaching up, e.g. ``store.snapshot()``) runs only when called and is allowed.
A module of a lower layer never imports one of a higher layer, and no module-level imports form a
circle. A new module lands in the top layer until it is placed below, so a lower module importing
it fails here.
"""
from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

import pytest

import rlhf_audit_kit

PACKAGE = Path(rlhf_audit_kit.__file__).parent

#: Lowest first. Everything not listed is in the top layer (reports, apps, command line, analysis, ...).
LAYERS: list[tuple[str, list[str]]] = [
    ("foundations: errors, schema, encoding, the pure Merkle tree and signed notes", [
        "errors", "_lazy", "schema", "encoding", "artifacts", "bundle_files", "keys", "write_lock",
        "ledger", "ledger.merkle", "ledger.tree", "ledger.levels", "ledger.checkpoint", "ledger.cosignature"]),
    ("the store", [
        "reader", "validate", "single", "store", "recorder",
        "privacy", "privacy.mechanisms", "privacy.accountant", "privacy.pseudonym", "privacy.budget"]),
    ("sealing and export", [
        "ledger.verify", "ledger.snapshot", "ledger.witness", "segments", "bundle", "bundle_export", "publish",
        "witness_keys", "segment_verify", "segment_workers"]),
]
TOP = len(LAYERS)


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_level(stmts: list[ast.stmt]) -> list[ast.stmt]:
    out = []
    for s in stmts:
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            out.append(s)
        elif isinstance(s, ast.If):
            if not (isinstance(s.test, (ast.Name, ast.Attribute)) and "TYPE_CHECKING" in ast.unparse(s.test)):
                out += _module_level(s.body) + _module_level(s.orelse)
        elif isinstance(s, ast.Try):
            out += _module_level(s.body) + _module_level(s.orelse) + _module_level(s.finalbody)
            for h in s.handlers:
                out += _module_level(h.body)
        elif isinstance(s, ast.With):
            out += _module_level(s.body)
    return out


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """Package modules ``name`` imports at module level (``from . import x`` counts as module ``x``)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in _module_level(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            targets = [a.name.removeprefix("rlhf_audit_kit").lstrip(".") for a in node.names
                       if a.name.split(".")[0] == "rlhf_audit_kit"]
        else:
            if node.level == 0:
                if not (node.module or "").startswith("rlhf_audit_kit"):
                    continue
                base = (node.module or "").removeprefix("rlhf_audit_kit").lstrip(".")
            else:
                here = name.split(".") if name else []
                parts = here if is_pkg else here[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}".lstrip(".") if f"{base}.{a.name}".lstrip(".") in modules else base
                       for a in node.names]
        out |= {t for t in targets if t in modules and t != name}
    return out


@functools.lru_cache(maxsize=1)
def _graph() -> dict[str, set[str]]:
    files = {_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(name, path, set(files)) for name, path in files.items()}


def _layer(name: str) -> int:
    return next((i for i, (_, mods) in enumerate(LAYERS) if name in mods), TOP)


def test_every_layered_module_exists_and_imports():
    graph = _graph()
    for _, modules in LAYERS:
        for m in modules:
            assert m in graph, f"{m} is listed in a layer but no such module exists"
            importlib.import_module(f"rlhf_audit_kit.{m}")


@pytest.mark.parametrize("layer", range(len(LAYERS)), ids=[d.split(":")[0] for d, _ in LAYERS])
def test_lower_layers_never_import_upper_ones(layer):
    graph = _graph()
    bad = [f"{m} imports {t} ({LAYERS[_layer(t)][0].split(':')[0] if _layer(t) < TOP else 'top layer'})"
           for m in LAYERS[layer][1] for t in sorted(graph[m]) if _layer(t) > layer]
    assert not bad, "module-level imports going up:\n" + "\n".join(bad)


def test_no_module_level_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("module-level import circle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule bites: a foundations module importing the store would be reported."""
    fake = tmp_path / "tree.py"
    fake.write_text("from __future__ import annotations\nfrom ..store import AuditStore\n"
                    "if TYPE_CHECKING:\n    from ..bundle import Bundle\n"
                    "def late():\n    from ..report import compliance\n")
    modules = set(_graph())
    assert _imports("ledger.tree", fake.rename(tmp_path / "x.py"), modules) == {"store"}
