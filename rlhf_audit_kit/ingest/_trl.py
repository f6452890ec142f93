"""TRL preference datasets: standard, conversational and implicit-prompt layouts."""
from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from ..errors import ValidationError
from ._common import (ROW, clean_messages, common_prefix_len, dataset_name, dumps,
                      finish_annotations, first_row, id_prefix, is_messages, require_columns,
                      text_of, to_frame, with_row)
from ._hh_rlhf import MARK

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_trl_preference"]


def load_trl_preference(source: Source, *, dataset: str | None = None,
                        annotator: str = "trl-preference:unknown",
                        task_id: str = "trl-preference") -> pl.DataFrame:
    """Load a TRL preference dataset as ``annotation`` rows.

    Accepts the three layouts of TRL's "Dataset formats" guide:

    * standard: ``prompt``, ``chosen``, ``rejected`` strings;
    * conversational: each a list of ``{"role", "content"}`` messages;
    * implicit prompt: ``chosen`` and ``rejected`` only, each the full text or conversation.
      The prompt is their common prefix, split the way TRL's ``extract_prompt`` does it
      (a string prefix gives its trailing space back to the completions; a conversation
      splits at the first differing message), except that a transcript with
      ``"\\n\\nAssistant:"`` turns (HH-RLHF as TRL reads it) splits after the last such turn
      inside the common prefix, exactly as :func:`~.load_hh_rlhf` does, never mid-word.

    With a ``prompt`` column, completions that repeat the prompt's messages (UltraFeedback-
    binarized stores the whole conversation in ``chosen``/``rejected``) lose that repeated
    start, so each response holds only what was compared.

    Message lists are stored as compact JSON text,
    ``json.dumps(msgs, ensure_ascii=False, separators=(",", ":"))``, each message's keys ordered
    role, content, then any others sorted (so a file and a ``datasets.Dataset`` of the same data
    give the same text and the same content ids). Keys that are null only because another
    message had them are dropped.

    ``chosen`` becomes ``response_a`` and ``choice`` is ``"a"``: TRL datasets keep no display
    order, so ``display_order_known`` is false and position statistics leave these rows out.
    ``score_chosen``/``score_rejected`` columns, when present (UltraFeedback-binarized has them),
    become ``score_a``/``score_b``, and equal scores make the choice ``"tie"``. An empty
    completion (HH-RLHF has a few) is kept as it is.

    Parameters
    ----------
    source
        A JSON/JSONL/Parquet path, DataFrame, Arrow table or ``datasets.Dataset``.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name, see :func:`~._common.dataset_name`).
    annotator
        The rater recorded for every row (TRL datasets name none).
    task_id
        Recorded in ``task_id``.

    Returns
    -------
    polars.DataFrame
        The ``annotation`` kind's columns; ``annotation_id`` is ``"<dataset or format>:<row>"``.

    Examples
    --------
    >>> rows = load_trl_preference([{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    >>> rows.select("prompt", "response_a", "response_b").row(0)
    ('The sky is', ' blue.', ' green.')
    >>> conv = [{"prompt": [{"role": "user", "content": "Sky?"}],
    ...          "chosen": [{"role": "assistant", "content": "Blue."}],
    ...          "rejected": [{"role": "assistant", "content": "Green."}]}]
    >>> load_trl_preference(conv)["prompt"][0]
    '[{"role":"user","content":"Sky?"}]'
    """
    dataset = dataset_name(source, dataset)
    df = to_frame(source)
    require_columns(df, ["chosen", "rejected"])
    cols = [c for c in ("prompt", "chosen", "rejected") if c in df.columns]
    for c in cols:
        dtype = df.schema[c]
        if not (dtype == pl.String or is_messages(dtype)):
            raise ValidationError(0, c, "expected a string or a list of {role, content} messages, "
                                        f"got {dtype}")
    df = with_row(df)
    bad = min(((r, c) for c in cols if (r := first_row(df, pl.col(c).is_null())) is not None), default=None)
    if bad is not None:
        raise ValidationError(bad[0], bad[1], "is missing or null")

    if "prompt" in df.columns:
        df = _drop_repeated_prompt(df)
        rows = df.select(ROW, *(text_of(df, c).alias(n) for c, n in
                                (("prompt", "prompt"), ("chosen", "response_a"), ("rejected", "response_b"))))
    else:
        rows = _split_implicit(df)

    scores = [pl.col(s).cast(pl.Float64).alias(d) for s, d in
              (("score_chosen", "score_a"), ("score_rejected", "score_b")) if s in df.columns]
    if scores:
        rows = rows.with_columns(df.select(scores).get_columns())
    tie = (pl.col("score_a") == pl.col("score_b")).fill_null(False) if len(scores) == 2 else pl.lit(False)
    prefix = id_prefix(dataset, "trl-preference")
    rows = rows.with_columns(
        annotation_id=pl.format("{}:{}", pl.lit(prefix), pl.col(ROW)),
        choice=pl.when(tie).then(pl.lit("tie")).otherwise(pl.lit("a")), annotator=pl.lit(annotator),
        task_id=pl.lit(task_id), dataset=pl.lit(dataset, dtype=pl.String),
        display_order_known=pl.lit(False))
    return finish_annotations(rows)


def _drop_repeated_prompt(df: pl.DataFrame) -> pl.DataFrame:
    """Completions given as whole conversations that start with the prompt's messages lose them."""
    if not (is_messages(df.schema["chosen"]) and is_messages(df.schema["rejected"])):
        return df
    conv = is_messages(df.schema["prompt"])
    heads = [clean_messages(p) if conv else [{"role": "user", "content": p}] for p in df["prompt"].to_list()]
    out = {}
    for col in ("chosen", "rejected"):
        msgs = [clean_messages(m) for m in df[col].to_list()]
        if not any(m[:len(h)] == h for m, h in zip(msgs, heads)):
            return df
        texts = [dumps(m[len(h):] if m[:len(h)] == h else m) for m, h in zip(msgs, heads)]
        out[col] = pl.Series(col, texts, dtype=pl.String)
    return df.with_columns(out.values())


def _split_implicit(df: pl.DataFrame) -> pl.DataFrame:
    """Common-prefix split of full chosen/rejected texts or conversations (TRL's semantics)."""
    conv = is_messages(df.schema["chosen"])
    if conv != is_messages(df.schema["rejected"]):
        raise ValidationError(0, "rejected", "chosen and rejected must both be strings or both "
                                             "message lists")
    chosen, rejected = df["chosen"].to_list(), df["rejected"].to_list()
    out: dict[str, list] = {"prompt": [], "response_a": [], "response_b": []}
    for i, a, b in zip(df[ROW].to_list(), chosen, rejected):
        if conv:
            a, b = clean_messages(a), clean_messages(b)
        n = common_prefix_len(a, b)
        k = -1 if conv else a.rfind(MARK, 0, n)
        if k >= 0:  # a transcript: the prompt ends with the last assistant turn marker they share
            n = k + len(MARK)
        elif not conv and 0 < n < min(len(a), len(b)) and a[n - 1] == " ":
            n -= 1  # as TRL: the space before the differing word belongs to the completions
        if n == 0:
            raise ValidationError(i, "rejected", "shares no prefix with chosen, so there is no "
                                                 "implicit prompt; add a 'prompt' column")
        parts = (a[:n], a[n:], b[n:])
        for key, part in zip(out, parts):
            out[key].append(dumps(part) if conv else part)
    return pl.DataFrame({ROW: df[ROW], **out},
                        schema={ROW: pl.Int64, "prompt": pl.String, "response_a": pl.String,
                                "response_b": pl.String})
