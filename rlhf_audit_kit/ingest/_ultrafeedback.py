"""UltraFeedback: per-aspect 1..5 ratings of several completions per instruction."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import polars as pl

from ..errors import ValidationError
from ._common import (ROW, content_ids, dataset_name, finish, id_prefix, require_columns,
                      require_strings, to_frame, with_row)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_ultrafeedback"]

SCALE = (1, 5)


def load_ultrafeedback(source: Source, *, dataset: str | None = None,
                       annotator: str = "ultrafeedback:gpt-4", task_id: str = "ultrafeedback",
                       aspects: Sequence[str] | None = None) -> pl.DataFrame:
    """Load UltraFeedback-style fine-grained ratings as ``rating`` rows, one per completion.

    Each source row has ``instruction`` and ``completions``: a list of
    ``{model, response, annotations: {<aspect>: {"Rating": "4", "Rationale": ...}, ...}}``
    (openbmb/UltraFeedback's aspects are helpfulness, honesty, instruction_following and
    truthfulness). ``aspects`` becomes the map aspect -> int rating, as a
    ``list[struct{key, value}]`` column sorted by aspect name. ``"N/A"`` ratings (UltraFeedback
    gives honesty ``N/A`` for creative tasks) are left out of the map; a completion whose every
    rating is ``N/A`` yields no row, since a rating event without a rating records nothing.
    ``scale_min``/``scale_max`` are 1 and 5. The ratings are GPT-4's, hence the default
    ``annotator``. The completion's ``critique`` becomes ``rationale``; everything else it holds
    besides ``model`` and ``response`` (the per-aspect rationales in ``annotations``,
    ``overall_score``, ``fine-grained_score``, ``principle``, ``custom_system_prompt``) is kept
    in ``meta`` as it was.

    Parameters
    ----------
    source
        A JSON/JSONL/Parquet path, DataFrame, Arrow table or ``datasets.Dataset``.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name).
    annotator
        Recorded in ``annotator``.
    task_id
        Recorded in ``task_id``.
    aspects
        The aspects to keep (default: every aspect the annotations carry).

    Returns
    -------
    polars.DataFrame
        The ``rating`` kind's columns. ``rating_id`` is
        ``"<dataset or 'ultrafeedback'>:<row>:<completion index>"``; ``sample_id`` and
        ``prompt_id`` are content hashes of the response and the instruction.

    Raises
    ------
    ValidationError
        A missing column, or a rating that is neither an integer 1..5 nor ``"N/A"``; the field
        names the path, e.g. ``completions[2].annotations.honesty.Rating``.

    Examples
    --------
    >>> ann = {"helpfulness": {"Rating": "4", "Rationale": "ok"},
    ...        "honesty": {"Rating": "N/A", "Rationale": "creative"}}
    >>> rows = load_ultrafeedback([{"instruction": "Write a haiku", "completions": [
    ...     {"model": "gpt-4", "response": "Autumn moon...", "annotations": ann}]}])
    >>> rows["aspects"].to_list()
    [[{'key': 'helpfulness', 'value': 4}]]
    """
    dataset = dataset_name(source, dataset)
    df = to_frame(source)
    require_columns(df, ["instruction", "completions"])
    df = with_row(df)
    require_strings(df, ["instruction"])
    comp = df.schema["completions"]
    if not (isinstance(comp, pl.List) and isinstance(comp.inner, pl.Struct)):
        raise ValidationError(0, "completions", f"expected a list of completion objects, got {comp}")
    fields = {f.name: f.dtype for f in comp.inner.fields}
    for need in ("response", "annotations"):
        if need not in fields:
            raise ValidationError(0, f"completions[0].{need}", "missing key")
    ann = fields["annotations"]
    if not isinstance(ann, pl.Struct):
        raise ValidationError(0, "completions[0].annotations", f"expected an object of aspects, got {ann}")
    available = {f.name: f.dtype for f in ann.fields}
    names = sorted(available) if aspects is None else list(aspects)
    for a in names:
        dtype = available.get(a)
        if not (isinstance(dtype, pl.Struct) and "Rating" in {f.name for f in dtype.fields}):
            raise ValidationError(0, f"completions[0].annotations.{a}",
                                  "missing, or not an object with a 'Rating'")

    # One row per completion; _ci is its index in the instruction's list.
    long = (df.select(ROW, "instruction", "completions",
                      *(["models"] if "models" in df.columns else []),
                      _ci=pl.int_ranges(0, pl.col("completions").list.len()))
            .explode(["completions", "_ci"])
            .filter(pl.col("_ci").is_not_null()))  # polars versions differ on empty lists
    c = pl.col("completions")
    raw = {a: c.struct.field("annotations").struct.field(a).struct.field("Rating")
           .cast(pl.String).str.strip_chars() for a in names}
    long = long.with_columns(
        [raw[a].alias(f"_raw_{a}") for a in names]
        + [raw[a].cast(pl.Int64, strict=False).alias(f"_val_{a}") for a in names])
    for a in names:  # first bad rating, in source order
        r, v = pl.col(f"_raw_{a}"), pl.col(f"_val_{a}")
        bad = (r.is_not_null() & (r != "N/A")
               & (v.is_null() | (v < SCALE[0]) | (v > SCALE[1])))
        hit = long.filter(bad).select(ROW, "_ci", f"_raw_{a}").head(1)
        if len(hit):
            row, ci, got = hit.row(0)
            raise ValidationError(row, f"completions[{ci}].annotations.{a}.Rating",
                                  f"expected an integer {SCALE[0]}..{SCALE[1]} or 'N/A'; got {got!r}")
    pairs = pl.concat_list([pl.struct(key=pl.lit(a), value=pl.col(f"_val_{a}")) for a in names])
    aspect_map = pairs.list.eval(pl.element().filter(pl.element().struct.field("value").is_not_null()))

    if "model" in fields:
        model = c.struct.field("model").cast(pl.String)
    elif "models" in long.columns:
        model = pl.col("models").list.get(pl.col("_ci"), null_on_oob=True).cast(pl.String)
    else:
        model = pl.lit(None, dtype=pl.String)
    kept = [f for f in fields if f not in ("model", "response", "critique")]
    meta = pl.struct([c.struct.field(f) for f in kept]).struct.json_encode()
    rationale = (c.struct.field("critique").cast(pl.String) if "critique" in fields
                 else pl.lit(None, dtype=pl.String))
    prefix = id_prefix(dataset, "ultrafeedback")
    rows = long.select(
        ROW,
        rating_id=pl.format("{}:{}:{}", pl.lit(prefix), pl.col(ROW), pl.col("_ci")),
        prompt=pl.col("instruction"), response=c.struct.field("response").cast(pl.String),
        model=model, annotator=pl.lit(annotator), aspects=aspect_map,
        scale_min=pl.lit(SCALE[0]), scale_max=pl.lit(SCALE[1]), task_id=pl.lit(task_id),
        dataset=pl.lit(dataset, dtype=pl.String), rationale=rationale, meta=meta, _ci=pl.col("_ci"))
    missing = rows.filter(pl.col("response").is_null()).head(1)
    if len(missing):
        row, ci = missing.select(ROW, "_ci").row(0)
        raise ValidationError(row, f"completions[{ci}].response", "is missing or null")
    rows = rows.filter(pl.col("aspects").list.len() > 0)
    rows = content_ids(rows, {"sample_id": "response", "prompt_id": "prompt"})
    return finish(rows, "rating")
