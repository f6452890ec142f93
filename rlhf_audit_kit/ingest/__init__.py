"""Loaders that turn public RLHF data formats into rows of the kit's event kinds.

``load(source, format, **options)`` returns ``(kind, rows)``: ``rows`` is a polars DataFrame
whose columns are that kind's fields, ready for ``store.extend(rows, kind=kind)``.

Shared conventions of every loader:

* ``prompt_id`` / ``response_*_id`` / ``sample_id`` are content ids: the first 16 hex digits of
  SHA-256 over the text's UTF-8 bytes, so the same text has the same id in every dataset.
* ``annotation_id`` / ``rating_id`` are deterministic and unique within a load, prefixed with
  ``dataset`` (or the format name), so loading the same data twice gives the same ids and the
  store's uniqueness check refuses the duplicate. Each loader documents its scheme.
* Bad input raises :class:`~rlhf_audit_kit.errors.ValidationError` naming the 0-based source
  row and the field.

>>> from rlhf_audit_kit.ingest import load
>>> t = "\\n\\nHuman: Hi\\n\\nAssistant:"
>>> kind, rows = load([{"chosen": t + " Hello!", "rejected": t + " Bye."}], "hh-rlhf")
>>> kind, rows.height, rows["task_id"][0]
('annotation', 1, 'hh-rlhf')
"""
from __future__ import annotations

from ._common import ID_HEX_CHARS, MAP_INT, content_ids
from ._hh_rlhf import load_hh_rlhf
from ._label_studio import load_label_studio
from ._shp import load_shp
from ._trl import load_trl_preference
from ._ultrafeedback import load_ultrafeedback
from .formats import FORMATS, Format, load

__all__ = [
    "FORMATS",
    "Format",
    "ID_HEX_CHARS",
    "MAP_INT",
    "content_ids",
    "load",
    "load_hh_rlhf",
    "load_label_studio",
    "load_shp",
    "load_trl_preference",
    "load_ultrafeedback",
]
