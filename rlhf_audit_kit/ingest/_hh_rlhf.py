"""Anthropic HH-RLHF: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}`` JSONL."""
from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ..errors import ValidationError
from ._common import (ROW, common_prefix_len, dataset_name, finish_annotations, id_prefix,
                      require_columns, to_frame, with_row)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_hh_rlhf"]

MARK = "\n\nAssistant:"
# Greedy .* runs to the *last* marker. A whole-match regex with no capture groups lets the regex
# engine use its fast DFA (about 5x quicker than extract_groups on HH-sized transcripts).
_PROMPT = r"(?s)^.*\n\nAssistant:"


def load_hh_rlhf(source: Source, *, dataset: str | None = None, annotator: str = "hh-rlhf:crowd",
                 task_id: str = "hh-rlhf") -> pl.DataFrame:
    """Load Anthropic HH-RLHF transcripts as ``annotation`` rows.

    Each source row holds two full transcripts that differ only in the final assistant turn.
    The shared conversation up to and including the last ``"\\n\\nAssistant:"`` becomes
    ``prompt``; the two final turns (with their leading space, so ``prompt + response_a``
    is exactly ``chosen``) become ``response_a`` (chosen) and ``response_b`` (rejected), and
    ``choice`` is ``"a"``.

    HH-RLHF records no display order, so a/b here is *not* what a rater saw:
    ``display_order_known`` is false and position statistics leave these rows out. HH rows have
    no time of their own either (``shown_at``/``submitted_at`` stay null), so the analyses do not
    take the ingest time for the annotators' time. A final turn may be empty (a few HH rows end
    with ``"\\n\\nAssistant: "``): it is stored as it is.

    Parameters
    ----------
    source
        Path to the JSONL(.gz) file, or a DataFrame / Arrow table / ``datasets.Dataset``
        with ``chosen`` and ``rejected`` string columns.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in the ``dataset`` column and used as the id prefix
        (default for a file: its folder and name, e.g. ``"harmless-base/test"``).
    annotator
        The rater recorded for every row (the source names none).
    task_id
        Recorded in ``task_id``.

    Returns
    -------
    polars.DataFrame
        The ``annotation`` kind's columns. ``annotation_id`` is ``"<dataset or 'hh-rlhf'>:<row>"``
        (0-based source row): HH-RLHF has duplicate rows, so a content hash would not be unique.
        ``prompt_id``/``response_*_id`` are content ids (see :func:`content_ids`), the same as
        the TRL string and message layouts of the same conversation get.

    Raises
    ------
    ValidationError
        A missing transcript, one without an ``"\\n\\nAssistant:"`` turn, or a rejected
        transcript that does not share chosen's conversation.

    Examples
    --------
    >>> t = "\\n\\nHuman: Hi\\n\\nAssistant:"
    >>> rows = load_hh_rlhf([{"chosen": t + " Hello!", "rejected": t + " Go away."}])
    >>> rows.select("prompt", "response_a", "response_b", "choice").row(0)
    ('\\n\\nHuman: Hi\\n\\nAssistant:', ' Hello!', ' Go away.', 'a')
    """
    dataset = dataset_name(source, dataset)
    df = to_frame(source)
    require_columns(df, ["chosen", "rejected"])
    for c in ("chosen", "rejected"):
        if df.schema[c] not in (pl.String, pl.Null):
            raise ValidationError(0, c, f"expected a transcript string, got {df.schema[c]}")
    df = df.select(pl.col("chosen").cast(pl.String), pl.col("rejected").cast(pl.String))
    df = with_row(df)

    split = df.with_columns(prompt=pl.col("chosen").str.extract(_PROMPT, 0),
                            _prompt_b=pl.col("rejected").str.extract(_PROMPT, 0))
    ok = pl.col("prompt").is_not_null() & (pl.col("prompt") == pl.col("_prompt_b"))
    split = split.with_columns(response_a=pl.col("chosen").str.strip_prefix(pl.col("prompt")),
                               response_b=pl.col("rejected").str.strip_prefix(pl.col("prompt")))
    fast = split.filter(ok).select(ROW, "prompt", "response_a", "response_b")
    # Rare rows: missing values, no marker, or a final turn that itself contains the marker.
    rest = split.filter(~ok.fill_null(False))
    slow = _split_slow(rest[ROW].to_list(), rest["chosen"].to_list(), rest["rejected"].to_list())
    rows = pl.concat([fast, slow]).sort(ROW) if len(slow) else fast

    prefix = id_prefix(dataset, "hh-rlhf")
    rows = rows.with_columns(
        annotation_id=pl.format("{}:{}", pl.lit(prefix), pl.col(ROW)),
        choice=pl.lit("a"), annotator=pl.lit(annotator), task_id=pl.lit(task_id),
        dataset=pl.lit(dataset, dtype=pl.String), display_order_known=pl.lit(False))
    return finish_annotations(rows)


def _split_slow(rows: list[int], chosen: list[str | None], rejected: list[str | None]) -> pl.DataFrame:
    """Split rows the regex could not: the prompt ends at the last marker inside the common prefix."""
    out: dict[str, list] = {ROW: [], "prompt": [], "response_a": [], "response_b": []}
    for i, a, b in zip(rows, chosen, rejected):
        for field, text in (("chosen", a), ("rejected", b)):
            if text is None:
                raise ValidationError(i, field, "is missing or null")
            if MARK not in text:
                raise ValidationError(i, field, "transcript has no '\\n\\nAssistant:' turn")
        assert a is not None and b is not None
        k = a.rfind(MARK, 0, common_prefix_len(a, b))
        if k < 0:
            raise ValidationError(i, "rejected", "does not share chosen's conversation up to an "
                                                  "'\\n\\nAssistant:' turn")
        k += len(MARK)
        out[ROW].append(i)
        out["prompt"].append(a[:k])
        out["response_a"].append(a[k:])
        out["response_b"].append(b[k:])
    return pl.DataFrame(out, schema={ROW: pl.Int64, "prompt": pl.String, "response_a": pl.String,
                                     "response_b": pl.String})
