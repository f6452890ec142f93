"""Attributes a package imports on first use, so importing the package stays quick.

>>> ns = {}
>>> getter = lazy_getattr("json", {"JSONDecoder": "decoder"}, ns)
>>> getter("JSONDecoder").__name__, "JSONDecoder" in ns
('JSONDecoder', True)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, where: Mapping[str, str], namespace: dict[str, Any],
                 submodules: Iterable[str] = ()) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``.

    ``where`` maps a public name to the submodule (relative to ``package``) that defines it; the value
    is cached in ``namespace`` (the package's ``globals()``) once imported. Names in ``submodules``
    import that submodule.
    """
    submodules = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(import_module(f"{package}.{where[name]}"), name)
            namespace[name] = value
            return value
        if name in submodules:
            return import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
