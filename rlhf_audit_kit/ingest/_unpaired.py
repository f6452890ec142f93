"""Unpaired (KTO) feedback: one completion with a thumbs-up or thumbs-down label."""
from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ..errors import ValidationError
from ._common import (ROW, clean_messages, content_ids, dataset_name, dumps, finish, first_row,
                      id_prefix, is_messages, is_plain_messages, messages_json, require_columns,
                      text_of, to_frame, with_row)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["ASPECT", "load_kto"]

#: The one aspect of an unpaired rating: 1 desirable (thumbs up), 0 undesirable (KTO's terms)
ASPECT = "desirable"


def load_kto(source: Source, *, dataset: str | None = None, annotator: str = "kto:unknown",
             task_id: str = "kto") -> pl.DataFrame:
    """Load unpaired thumbs-up/down feedback as ``rating`` rows, one per completion.

    An unpaired label judges one completion alone, so it is a ``rating``, not a pairwise
    ``annotation``: ``aspects`` is ``{"desirable": 1}`` (good) or ``{"desirable": 0}`` (bad) on a
    0..1 scale. Two layouts:

    * TRL's unpaired preference format: ``prompt``, ``completion`` (strings, or lists of
      ``{"role", "content"}`` messages) and ``label`` (bool);
    * LLaMA-Factory's KTO format (``kto_en_demo.json``): ``messages``, a list of ``{"role",
      "content"}`` messages whose last message is the completion, and ``label`` (bool).

    Message lists are stored as compact JSON, as the TRL loader stores them, so the same
    conversation gets the same content ids in both. ``prompt`` is the messages before the last,
    ``response`` the last one (as a one-message list).

    Parameters
    ----------
    source
        A JSON/JSONL/Parquet path, DataFrame, Arrow table, ``datasets.Dataset`` or list of dicts.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name).
    annotator, task_id
        Recorded in every row (the files name no rater).

    Returns
    -------
    polars.DataFrame
        The ``rating`` kind's columns; ``rating_id`` is ``"<dataset or 'kto'>:<row>"``,
        ``sample_id`` and ``prompt_id`` content ids of the response and the prompt.

    Examples
    --------
    >>> rows = load_kto([{"prompt": "2+2?", "completion": " 4", "label": True},
    ...                  {"prompt": "2+2?", "completion": " 5", "label": False}])
    >>> rows["aspects"].to_list()
    [[{'key': 'desirable', 'value': 1}], [{'key': 'desirable', 'value': 0}]]
    """
    dataset = dataset_name(source, dataset)
    df = to_frame(source)
    pair = "messages" not in df.columns or "completion" in df.columns
    require_columns(df, ["prompt", "completion", "label"] if pair else ["messages", "label"])
    df = with_row(df)
    if df.schema["label"] != pl.Boolean:
        raise ValidationError(first_row(df, pl.col("label").is_not_null()) or 0, "label",
                              f"expected true (desirable) or false (undesirable), got {df.schema['label']}")
    for c in ("prompt", "completion", "label") if pair else ("messages", "label"):
        row = first_row(df, pl.col(c).is_null())
        if row is not None:
            raise ValidationError(row, c, "is missing or null")
    if pair:
        rows = df.select(ROW, "label", prompt=text_of(df, "prompt"), response=text_of(df, "completion"))
    else:
        rows = _split_last(df)
    prefix = id_prefix(dataset, "kto")
    rows = rows.with_columns(
        rating_id=pl.format("{}:{}", pl.lit(prefix), pl.col(ROW)), annotator=pl.lit(annotator),
        aspects=pl.concat_list(pl.struct(key=pl.lit(ASPECT), value=pl.col("label").cast(pl.Int64))),
        scale_min=pl.lit(0), scale_max=pl.lit(1), task_id=pl.lit(task_id),
        dataset=pl.lit(dataset, dtype=pl.String))
    rows = content_ids(rows, {"sample_id": "response", "prompt_id": "prompt"})
    return finish(rows, "rating")


def _split_last(df: pl.DataFrame) -> pl.DataFrame:
    dtype = df.schema["messages"]
    if not is_messages(dtype):
        raise ValidationError(0, "messages", f"expected a list of {{role, content}} messages, got {dtype}")
    row = first_row(df, pl.col("messages").list.len() < 2)
    if row is not None:
        raise ValidationError(row, "messages", "needs a prompt and a completion: at least two messages")
    msgs = pl.col("messages")
    if is_plain_messages(dtype):
        return df.select(ROW, "label", prompt=messages_json(msgs.list.slice(0, msgs.list.len() - 1)),
                         response=messages_json(msgs.list.slice(-1, 1)))
    full = [clean_messages(m) for m in df["messages"].to_list()]
    return df.select(ROW, "label").with_columns(
        prompt=pl.Series([dumps(m[:-1]) for m in full], dtype=pl.String),
        response=pl.Series([dumps(m[-1:]) for m in full], dtype=pl.String))
