"""Chatbot Arena conversations and MT-bench human judgments: two models, one judge, a winner."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ValidationError
from ._common import (ROW, clean_messages, common_prefix_len, dataset_name, dumps,
                      finish_annotations, frame_of, id_prefix, read_records)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_chatbot_arena"]

_WINNER = {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"}
_OWN = {"model_a", "model_b", "winner", "judge", "conversation_a", "conversation_b", "tstamp"}


def load_chatbot_arena(source: Source, *, dataset: str | None = None,
                       display_order_known: bool = True) -> pl.DataFrame:
    """Load pairwise human judgments of two models' conversations as ``annotation`` rows.

    The layout of ``lmsys/chatbot_arena_conversations`` and ``lmsys/mt_bench_human_judgments``:
    ``question_id``, ``model_a``, ``model_b``, ``winner`` (``"model_a"``, ``"model_b"``,
    ``"tie"``, ``"tie (bothbad)"``), ``judge`` (the rater), ``conversation_a`` /
    ``conversation_b`` (lists of ``{"role", "content"}`` messages), ``turn``, and, in the Arena
    set, ``tstamp`` (Unix seconds), ``anony``, ``language``, ``openai_moderation``,
    ``toxic_chat_tag``.

    A judgment of turn ``turn`` covers the conversations up to that turn's assistant message
    (MT-bench's files hold both turns in each row, and judge each turn in its own row). The
    prompt is what the two conversations share (their first differing message starts the
    responses, as TRL splits a conversational pair), so a multi-turn judgment keeps every turn
    it judged. Both ties are ``"tie"``; the raw ``winner`` stays in ``meta`` (so a ``"tie
    (bothbad)"`` is still told apart), with every column that has no field of its own.
    ``judge`` is the ``annotator`` (pseudonymised by the store), ``tstamp`` the ``submitted_at``.
    ``task_id`` is ``"<dataset>:<question_id>"``.

    Model A is the one the judge saw as "Model A" (the left panel of the Arena), so
    ``display_order_known`` is true by default; pass False for a copy whose a/b was re-ordered.

    Parameters
    ----------
    source
        A JSON/JSONL/Parquet path, DataFrame, ``datasets.Dataset`` or list of dicts.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name).
    display_order_known
        Recorded in ``display_order_known``.

    Returns
    -------
    polars.DataFrame
        The ``annotation`` kind's columns; ``annotation_id`` is ``"<dataset or format>:<row>"``.

    Examples
    --------
    >>> conv = lambda answer: [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
    >>> row = {"question_id": "q1", "model_a": "m1", "model_b": "m2", "winner": "tie (bothbad)",
    ...        "judge": "arena_user_1", "conversation_a": conv("Yo"), "conversation_b": conv("Hey"), "turn": 1}
    >>> load_chatbot_arena([row]).select("prompt", "response_b", "choice").row(0)
    ('[{"role":"user","content":"Hi"}]', '[{"role":"assistant","content":"Hey"}]', 'tie')
    """
    dataset = dataset_name(source, dataset)
    records = read_records(source)
    prefix = id_prefix(dataset, "chatbot-arena")
    cols: dict[str, list[Any]] = {k: [] for k in (
        ROW, "prompt", "response_a", "response_b", "model_a", "model_b", "choice", "annotator",
        "submitted_at", "task", "meta")}
    for i, r in enumerate(records):
        for k in ("model_a", "model_b", "winner", "judge", "conversation_a", "conversation_b"):
            if r.get(k) is None:
                raise ValidationError(i, k, "is missing or null")
        if r["winner"] not in _WINNER:
            raise ValidationError(i, "winner", f"expected one of {', '.join(_WINNER)}; got {r['winner']!r}")
        a, b = (_upto(_conversation(i, k, r[k]), r.get("turn")) for k in ("conversation_a", "conversation_b"))
        n = common_prefix_len(a, b)
        if n == 0 or n == len(a) or n == len(b):
            raise ValidationError(i, "conversation_b", "must share its first message(s) with conversation_a "
                                                       "and then differ")
        meta = {k: v for k, v in r.items() if k not in _OWN and v is not None}
        meta["winner"] = r["winner"]
        for key, value in zip(cols, (
                i, dumps(a[:n]), dumps(a[n:]), dumps(b[n:]), str(r["model_a"]), str(r["model_b"]),
                _WINNER[r["winner"]], str(r["judge"]), _time(i, r.get("tstamp")),
                str(r.get("question_id", i)), dumps(meta))):
            cols[key].append(value)
    schema = {ROW: pl.Int64, "submitted_at": pl.Datetime("us", "UTC")}
    rows = frame_of(cols, schema)
    rows = rows.with_columns(
        annotation_id=pl.format("{}:{}", pl.lit(prefix), pl.col(ROW)),
        task_id=pl.format("{}:{}", pl.lit(prefix), "task"), dataset=pl.lit(dataset, dtype=pl.String),
        display_order_known=pl.lit(display_order_known))
    return finish_annotations(rows)


def _conversation(i: int, field: str, value: Any) -> list[dict[str, Any]]:
    if not (isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value)):
        raise ValidationError(i, field, "expected a non-empty list of {role, content} messages")
    return clean_messages(value) or []


def _upto(conv: list[dict[str, Any]], turn: Any) -> list[dict[str, Any]]:
    """The conversation up to and including the ``turn``-th assistant message."""
    if not isinstance(turn, int) or isinstance(turn, bool) or turn < 1:
        return conv
    seen = 0
    for k, m in enumerate(conv):
        seen += m.get("role") == "assistant"
        if seen == turn:
            return conv[:k + 1]
    return conv


def _time(i: int, value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(i, "tstamp", f"expected Unix seconds, got {value!r}")
    return datetime.fromtimestamp(value, tz=timezone.utc)
