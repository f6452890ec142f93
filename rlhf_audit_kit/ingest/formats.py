"""The registry of source formats: ``FORMATS`` and :func:`load`.

>>> sorted(FORMATS)
['hh-rlhf', 'label-studio', 'shp', 'trl-preference', 'ultrafeedback']
>>> FORMATS["ultrafeedback"].kind
'rating'
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from ._hh_rlhf import load_hh_rlhf
from ._label_studio import load_label_studio
from ._shp import load_shp
from ._trl import load_trl_preference
from ._ultrafeedback import load_ultrafeedback

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["FORMATS", "Format", "load"]


@dataclass(frozen=True)
class Format:
    """A source format: its name, the event kind its rows are, and its loader.

    ``loader(source, **options)`` returns a polars DataFrame whose columns are the kind's
    fields (see :mod:`rlhf_audit_kit.schema`), in schema order.
    """

    name: str
    kind: str
    loader: Callable[..., pl.DataFrame]
    summary: str

    def __repr__(self) -> str:
        return f"<Format {self.name} -> {self.kind}>"


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("hh-rlhf", "annotation", load_hh_rlhf,
           "Anthropic HH-RLHF JSONL: chosen/rejected transcripts"),
    Format("trl-preference", "annotation", load_trl_preference,
           "TRL preference datasets: standard, conversational, implicit prompt"),
    Format("shp", "annotation", load_shp,
           "Stanford SHP: Reddit comment pairs with upvote-based labels"),
    Format("ultrafeedback", "rating", load_ultrafeedback,
           "UltraFeedback: per-aspect 1..5 ratings of each completion"),
    Format("label-studio", "annotation", load_label_studio,
           "Label Studio JSON export of a <Pairwise> project"),
)}


def load(source: Source, format: str, **options: Any) -> tuple[str, pl.DataFrame]:
    """Load ``source`` in ``format``; return ``(kind, rows)`` ready for ``store.extend``.

    Parameters
    ----------
    source
        A path (JSON, JSONL or Parquet, as the format uses; ``.gz`` allowed), a polars or pandas
        DataFrame, a pyarrow Table, a Hugging Face ``datasets.Dataset`` or a list of dicts.
    format
        A key of :data:`FORMATS`.
    **options
        Passed to the format's loader: every loader takes ``dataset="name@version"``, and
        ``annotator=`` where the format names no annotator.

    Raises
    ------
    ValueError
        An unknown format.
    ValidationError
        Bad input, naming the 0-based source row and the field.

    Examples
    --------
    >>> kind, rows = load([{"prompt": "2+2?", "chosen": " 4", "rejected": " 5"}], "trl-preference",
    ...                   dataset="toy/arith@v1")
    >>> kind, rows["annotation_id"][0], rows["dataset"][0]
    ('annotation', 'toy/arith@v1:0', 'toy/arith@v1')

    Then ``store.extend(rows, kind=kind)``.
    """
    try:
        fmt = FORMATS[format]
    except KeyError:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(sorted(FORMATS))}") from None
    return fmt.kind, fmt.loader(source, **options)
