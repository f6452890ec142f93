"""Loaders that turn public RLHF data formats into rows of the kit's event kinds.

``load(source, format, **options)`` returns ``(kind, rows)``: ``rows`` is a polars DataFrame
whose columns are that kind's fields, ready for ``store.extend(rows, kind=kind)``.

Shared conventions of every loader:

* ``prompt_id`` / ``response_*_id`` / ``sample_id`` are content ids: the first 16 hex digits of
  SHA-256 over the UTF-8 bytes of the text's :func:`canonical_text` (a conversation in one form
  whether it came as an HH transcript or a message list; any other text stripped), so the same
  content has the same id in every dataset and layout.
* ``annotation_id`` / ``rating_id`` are deterministic and unique within a load, prefixed with
  ``dataset``: the ``dataset=`` option, else for a file its folder and name (e.g.
  ``"harmless-base/test"``), else the format name. Two files never share ids, and loading the
  same file twice gives the same ids, which the store refuses as duplicates. Each loader
  documents its scheme.
* ``display_order_known`` says whether a/b is what the rater saw: false for datasets that put
  the chosen response first by construction, so position statistics leave those rows out.
* Bad input raises :class:`~rlhf_audit_kit.errors.ValidationError` naming the 0-based source
  row and the field; a file that is no data (a Git LFS pointer, a line that is not JSON) raises
  :class:`SourceError` naming the file and line. Rows a loader leaves out because they hold no
  judgement are counted in a :class:`SkippedRowsWarning`.

>>> from rlhf_audit_kit.ingest import load
>>> t = "\\n\\nHuman: Hi\\n\\nAssistant:"
>>> kind, rows = load([{"chosen": t + " Hello!", "rejected": t + " Bye."}], "hh-rlhf")
>>> kind, rows.height, rows["task_id"][0]
('annotation', 1, 'hh-rlhf')
"""
from __future__ import annotations

from ._arena import load_chatbot_arena
from ._common import (ID_HEX_CHARS, MAP_INT, SkippedRowsWarning, SourceError, canonical_text,
                      content_ids, dataset_name)
from ._hh_rlhf import load_hh_rlhf
from ._label_studio import load_label_studio
from ._oasst import load_oasst
from ._pku import load_pku_saferlhf
from ._sharegpt import load_sharegpt_dpo
from ._shp import load_shp
from ._summarize import load_summarize_from_feedback
from ._trl import load_trl_preference
from ._ultrafeedback import load_ultrafeedback
from ._unpaired import load_kto
from .formats import FORMATS, Format, load

__all__ = [
    "FORMATS",
    "Format",
    "ID_HEX_CHARS",
    "MAP_INT",
    "SkippedRowsWarning",
    "SourceError",
    "canonical_text",
    "content_ids",
    "dataset_name",
    "load",
    "load_chatbot_arena",
    "load_hh_rlhf",
    "load_kto",
    "load_label_studio",
    "load_oasst",
    "load_pku_saferlhf",
    "load_sharegpt_dpo",
    "load_shp",
    "load_summarize_from_feedback",
    "load_trl_preference",
    "load_ultrafeedback",
]
