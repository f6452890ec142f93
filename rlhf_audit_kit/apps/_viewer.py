"""The base of every view: one read-only source, loaded lazily, laid out once."""
from __future__ import annotations

from typing import Any

import param

from ._common import require_panel
from ._data import as_source

pn = require_panel()


class SourceViewer(pn.viewable.Viewer):
    """A Panel Viewer over a store, bundle, path or Source, which it never writes.

    Subclasses read through ``self._src`` (opened with the subclass's ``verifier`` parameter if it has
    one), fill their data on first use (``self._loaded``) and build ``self._layout`` once.
    """

    source = param.Parameter(doc="AuditStore, bundle, path or Source to read (never written).")

    def __init__(self, source: Any = None, **params: Any):
        if source is not None:
            params["source"] = source
        super().__init__(**params)
        self._given = set(params)  # parameters the caller set (others may be chosen from the data)
        # None only for a dashboard over a live folder that has no verified checkpoint yet
        self._src = as_source(self.source, verifier=getattr(self, "verifier", None)) if self.source is not None else None
        self._loaded = False
        self._layout = None

    def reload(self, source: Any) -> bool:
        """Show newer data of the same record (a live source's next checkpoint) in place, keeping
        the layout and the filters; True if done. The default does not: the caller then builds a
        new view. A view whose charts only re-run on their parameters overrides this."""
        return False
