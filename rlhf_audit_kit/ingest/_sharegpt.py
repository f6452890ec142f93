"""ShareGPT-style DPO data (LLaMA-Factory, Axolotl): ``conversations`` of ``{from, value}`` turns."""
from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ..errors import ValidationError
from ._common import (ROW, dataset_name, finish_annotations, first_row, id_prefix, messages_json,
                      require_columns, to_frame, with_row)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_sharegpt_dpo"]


def _turns(dtype: pl.DataType) -> bool:
    return (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
            and {"from", "value"} <= {f.name for f in dtype.inner.fields})


def _turn(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Struct) and {"from", "value"} <= {f.name for f in dtype.fields}


def load_sharegpt_dpo(source: Source, *, dataset: str | None = None,
                      annotator: str = "sharegpt-dpo:unknown", task_id: str = "sharegpt-dpo") -> pl.DataFrame:
    """Load ShareGPT-style preference data as ``annotation`` rows.

    The layout of LLaMA-Factory's ``dpo_en_demo.json`` (``"formatting": "sharegpt", "ranking":
    true``) and Axolotl's ShareGPT DPO sets: ``conversations``, a list of ``{"from", "value"}``
    turns (``human``, ``gpt``, ``system``, ``function_call``, ``observation``), and ``chosen`` /
    ``rejected``, each one ``{"from", "value"}`` turn (a list of turns or a plain string works
    too). An optional ``system`` column becomes a leading system message.

    Everything is stored as TRL's conversational layout stores it: the prompt is the compact
    JSON message list of ``conversations`` with speakers renamed (``human`` -> ``user``, ``gpt``
    -> ``assistant``), each response the JSON list of its one assistant message. So the same
    data in TRL's layout gets the same content ids. ``chosen`` is ``response_a``, ``choice`` is
    ``"a"`` and ``display_order_known`` false: the file records no display order.

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
        The ``annotation`` kind's columns; ``annotation_id`` is ``"<dataset or format>:<row>"``.

    Examples
    --------
    >>> row = {"conversations": [{"from": "human", "value": "Hi"}],
    ...        "chosen": {"from": "gpt", "value": "Hello!"}, "rejected": {"from": "gpt", "value": "Go."}}
    >>> load_sharegpt_dpo([row]).select("prompt", "response_a", "choice").row(0)
    ('[{"role":"user","content":"Hi"}]', '[{"role":"assistant","content":"Hello!"}]', 'a')
    """
    dataset = dataset_name(source, dataset)
    df = to_frame(source)
    require_columns(df, ["conversations", "chosen", "rejected"])
    if not _turns(df.schema["conversations"]):
        raise ValidationError(0, "conversations", "expected a list of {from, value} turns, got "
                                                  f"{df.schema['conversations']}")
    df = with_row(df)
    for c in ("conversations", "chosen", "rejected"):
        row = first_row(df, pl.col(c).is_null())
        if row is not None:
            raise ValidationError(row, c, "is missing or null")
    prompt = messages_json(pl.col("conversations"), "from", "value", rename=True)
    if "system" in df.columns and df.schema["system"] == pl.String:
        system = pl.format('[{},', pl.struct(role=pl.lit("system"), content=pl.col("system")).struct.json_encode())
        prompt = (pl.when(pl.col("system").fill_null("") != "")
                  .then(pl.concat_str(system, prompt.str.strip_prefix("[")).str.replace(r",\]$", "]"))
                  .otherwise(prompt))
    rows = df.select(ROW, prompt.alias("prompt"), _response(df, "chosen").alias("response_a"),
                     _response(df, "rejected").alias("response_b"))
    prefix = id_prefix(dataset, "sharegpt-dpo")
    rows = rows.with_columns(
        annotation_id=pl.format("{}:{}", pl.lit(prefix), pl.col(ROW)), choice=pl.lit("a"),
        annotator=pl.lit(annotator), task_id=pl.lit(task_id), dataset=pl.lit(dataset, dtype=pl.String),
        display_order_known=pl.lit(False))
    return finish_annotations(rows)


def _response(df: pl.DataFrame, col: str) -> pl.Expr:
    dtype = df.schema[col]
    if _turn(dtype):
        return messages_json(pl.concat_list(pl.col(col)), "from", "value", rename=True)
    if _turns(dtype):
        return messages_json(pl.col(col), "from", "value", rename=True)
    if dtype == pl.String:
        return messages_json(pl.concat_list(pl.struct(role=pl.lit("assistant"), content=pl.col(col))))
    raise ValidationError(0, col, f"expected a {{from, value}} turn, a list of turns or a string, got {dtype}")
