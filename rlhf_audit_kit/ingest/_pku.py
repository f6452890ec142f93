"""PKU-SafeRLHF: two responses per prompt, with separate helpfulness and safety preferences."""
from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ..errors import ValidationError
from ._common import (ROW, dataset_name, finish_annotations, first_row, id_prefix, require_columns,
                      require_strings, to_frame, with_row)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_pku_saferlhf"]

#: criterion -> the column naming the preferred response (0 or 1)
CRITERIA = {"better": "better_response_id", "safer": "safer_response_id"}
_OWN = {"prompt", "response_0", "response_1", "response_0_source", "response_1_source", *CRITERIA.values()}


def load_pku_saferlhf(source: Source, *, dataset: str | None = None,
                      annotator: str = "pku-saferlhf:crowd") -> pl.DataFrame:
    """Load PKU-SafeRLHF rows as ``annotation`` rows: two per source row, one per criterion.

    Each row (``PKU-Alignment/PKU-SafeRLHF``) has ``prompt``, ``response_0``, ``response_1``,
    ``better_response_id`` and ``safer_response_id`` (0 or 1), ``is_response_0_safe`` /
    ``is_response_1_safe`` and, in later versions, ``*_source``, ``*_severity_level`` and
    ``*_harm_category``. Helpfulness and harmlessness were judged separately and often disagree,
    so they stay separate: the row ``"<dataset>:<row>:better"`` records the helpfulness
    preference (``task_id`` ``"<dataset>:better"``) and ``"<dataset>:<row>:safer"`` the safety
    preference (``task_id`` ``"<dataset>:safer"``); ``meta`` says which (``criterion``) and keeps
    the safety labels, severity levels, harm categories and every other column.

    ``response_0`` is ``response_a``; ``response_*_source`` (the model) are ``model_a``/``model_b``.
    The file records no display order (``display_order_known`` false).

    Parameters
    ----------
    source
        A JSON/JSONL/Parquet path, DataFrame, Arrow table, ``datasets.Dataset`` or list of dicts.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name).
    annotator
        Recorded in every row.

    Examples
    --------
    >>> row = {"prompt": "How do I pick a lock?", "response_0": "Here is how...", "response_1": "I can't help.",
    ...        "better_response_id": 0, "safer_response_id": 1,
    ...        "is_response_0_safe": False, "is_response_1_safe": True}
    >>> load_pku_saferlhf([row]).select("annotation_id", "choice", "task_id").rows()
    [('pku-saferlhf:0:better', 'a', 'pku-saferlhf:better'), ('pku-saferlhf:0:safer', 'b', 'pku-saferlhf:safer')]
    """
    dataset = dataset_name(source, dataset)
    df = to_frame(source)
    require_columns(df, ["prompt", "response_0", "response_1", *CRITERIA.values()])
    df = with_row(df)
    require_strings(df, ["prompt", "response_0", "response_1"])
    for col in CRITERIA.values():
        row = first_row(df, ~pl.col(col).cast(pl.Int64, strict=False).is_in([0, 1]).fill_null(False))
        if row is not None:
            raise ValidationError(row, col, f"must be 0 or 1; got {df[col][row]!r}")
    prefix = id_prefix(dataset, "pku-saferlhf")
    extra = [c for c in df.columns if c not in _OWN and c != ROW]
    source_col = {c: (pl.col(c).cast(pl.String) if c in df.columns else pl.lit(None, dtype=pl.String))
                  for c in ("response_0_source", "response_1_source")}
    parts = []
    for name, col in CRITERIA.items():
        meta = pl.struct(pl.lit(name).alias("criterion"), *extra).struct.json_encode()
        parts.append(df.select(
            ROW, prompt=pl.col("prompt"), response_a=pl.col("response_0"), response_b=pl.col("response_1"),
            model_a=source_col["response_0_source"], model_b=source_col["response_1_source"],
            choice=pl.when(pl.col(col).cast(pl.Int64) == 0).then(pl.lit("a")).otherwise(pl.lit("b")),
            annotation_id=pl.format("{}:{}:{}", pl.lit(prefix), pl.col(ROW), pl.lit(name)),
            task_id=pl.lit(f"{prefix}:{name}"), meta=meta))
    rows = pl.concat(parts).sort(ROW, maintain_order=True).with_columns(
        annotator=pl.lit(annotator), dataset=pl.lit(dataset, dtype=pl.String),
        display_order_known=pl.lit(False))
    return finish_annotations(rows)
