"""Stanford Human Preferences (SHP): Reddit comment pairs ranked by collective upvotes."""
from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ..errors import ValidationError
from ._common import (ROW, dataset_name, finish_annotations, first_row, id_prefix, require_columns,
                      require_strings, to_frame, with_row)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_shp"]

_TEXT = ["post_id", "history", "c_root_id_A", "c_root_id_B", "human_ref_A", "human_ref_B"]
_NUM = ["labels", "score_A", "score_B"]


def load_shp(source: Source, *, dataset: str | None = None, annotator: str = "shp:reddit",
             task_id: str | None = None) -> pl.DataFrame:
    """Load Stanford SHP rows as ``annotation`` rows.

    ``history`` (the post) becomes ``prompt``, ``human_ref_A``/``human_ref_B`` the responses,
    ``labels`` the choice (1 -> ``"a"``, 0 -> ``"b"``) and ``score_A``/``score_B`` (upvotes,
    the evidence behind the label) ``score_a``/``score_b``. The preference is collective (Reddit
    votes), so the default ``annotator`` is ``"shp:reddit"``; A/B is no display order, so
    ``display_order_known`` is false and position statistics leave these rows out.

    Ids: ``annotation_id`` is ``"<dataset or 'shp'>:<post_id>:<c_root_id_A>:<c_root_id_B>"``,
    stable under any reordering of the rows; a pair appearing twice raises. ``task_id`` defaults
    to ``"shp:<domain>"`` (e.g. ``"shp:askculinary_train"``) so analyses can both group by
    subreddit and exclude SHP by prefix. ``prompt_id``/``response_*_id`` are content hashes like
    every other loader's, so they join across datasets; the Reddit ids live in ``annotation_id``.
    ``upvote_ratio``, ``created_at_utc_*``, ``seconds_difference`` and ``score_ratio`` have no
    field in the schema and are not kept.

    Parameters
    ----------
    source
        An SHP ``*.json`` file (JSON lines, despite the name), Parquet, DataFrame, Arrow table or
        ``datasets.Dataset``.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name).
    annotator
        Recorded in ``annotator``.
    task_id
        Overrides the per-row ``"shp:<domain>"``.

    Examples
    --------
    >>> row = {"post_id": "p1", "domain": "askculinary_train", "history": "Salt?",
    ...        "c_root_id_A": "ca", "c_root_id_B": "cb", "human_ref_A": "Yes", "human_ref_B": "No",
    ...        "score_A": 12, "score_B": 3, "labels": 1}
    >>> load_shp([row]).select("annotation_id", "choice", "score_a", "task_id").row(0)
    ('shp:p1:ca:cb', 'a', 12.0, 'shp:askculinary_train')
    """
    dataset = dataset_name(source, dataset)
    df = to_frame(source)
    require_columns(df, _TEXT + _NUM)
    df = with_row(df)
    require_strings(df, _TEXT)
    for c in _NUM:
        if not df.schema[c].is_numeric():
            raise ValidationError(first_row(df, pl.col(c).is_not_null()) or 0, c,
                                  f"expected a number, got {df.schema[c]}")
        row = first_row(df, pl.col(c).is_null())
        if row is not None:
            raise ValidationError(row, c, "is missing or null")
    row = first_row(df, ~pl.col("labels").is_in([0, 1]))
    if row is not None:
        raise ValidationError(row, "labels", f"must be 1 (A preferred) or 0 (B preferred); got "
                                             f"{df['labels'][row]!r}")

    prefix = id_prefix(dataset, "shp")
    if task_id is not None:
        task = pl.lit(task_id)
    elif "domain" in df.columns:
        task = pl.concat_str(pl.lit("shp:"), pl.col("domain").cast(pl.String), ignore_nulls=False)
        task = task.fill_null(pl.lit("shp"))
    else:
        task = pl.lit("shp")
    rows = df.select(
        ROW,
        annotation_id=pl.format("{}:{}:{}:{}", pl.lit(prefix), "post_id", "c_root_id_A", "c_root_id_B"),
        prompt=pl.col("history"),
        response_a=pl.col("human_ref_A"), response_b=pl.col("human_ref_B"),
        choice=pl.when(pl.col("labels") == 1).then(pl.lit("a")).otherwise(pl.lit("b")),
        annotator=pl.lit(annotator), task_id=task,
        score_a=pl.col("score_A").cast(pl.Float64), score_b=pl.col("score_B").cast(pl.Float64),
        dataset=pl.lit(dataset, dtype=pl.String), display_order_known=pl.lit(False))
    dup = first_row(rows, pl.col("annotation_id").is_duplicated()
                    & (pl.col(ROW) != pl.col(ROW).min().over("annotation_id")))
    if dup is not None:
        raise ValidationError(dup, "annotation_id", f"duplicate comment pair {rows['annotation_id'][dup]!r}")
    return finish_annotations(rows)
