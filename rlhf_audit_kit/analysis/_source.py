"""Where an analysis reads from: a store, a bundle, frames, or a bundle named by a path or an fsspec URL.

A string or path names a snapshot bundle, a local folder or a URL (``s3://bucket/run-7``,
``gs://``, ``memory://``): it is opened with :func:`~rlhf_audit_kit.bundle.open_bundle` for the
call (``storage_options`` go to its file system) and closed after. The report then runs as over
any bundle: DuckDB SQL over the bundle's segments, read through the file system registered on the
bundle's connection, so only the columns and row groups a query needs cross the network and only
aggregates come back to Python.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def reads_source(fn: F) -> F:
    """Let ``fn(source, ...)`` take a bundle's path or URL (and ``storage_options=``) as its source.

    ``fn`` declares ``storage_options`` (for its signature and docs) and receives the opened
    bundle as ``source``; ``storage_options`` with any other source is a usage error.
    """

    @functools.wraps(fn)
    def call(source: Any, *args: Any, storage_options: dict[str, Any] | None = None, **kw: Any) -> Any:
        if isinstance(source, (str, os.PathLike)):
            from ..bundle import open_bundle

            with open_bundle(source, storage_options=storage_options) as bundle:
                return fn(bundle, *args, **kw)
        if storage_options is not None:
            raise TypeError("storage_options applies to a bundle named by a path or URL, "
                            f"not to a {type(source).__name__}")
        return fn(source, *args, **kw)

    return call  # type: ignore[return-value]
