"""OpenAssistant (oasst1/oasst2) message trees: ranked sibling replies become pairwise preferences."""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ValidationError
from ._common import (ROLE_NAMES, ROW, dataset_name, dumps, finish_annotations, frame_of, id_prefix,
                      read_records)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_oasst"]

# Message fields with a place of their own (or rebuilt from the tree); the rest go to meta
_OWN = {"text", "replies", "rank", "role", "message_id", "parent_id", "model_name"}


def load_oasst(source: Source, *, dataset: str | None = None, annotator: str = "oasst:rankers") -> pl.DataFrame:
    """Load OpenAssistant message trees as ``annotation`` rows: one per pair of ranked siblings.

    Reads both layouts the project publishes:

    * tree export JSONL (``*.trees.jsonl``, ``en_100_tree.jsonl``): ``{"message_tree_id",
      "tree_state", "prompt": <message>}``, each message ``{"message_id", "text", "role"
      ("prompter" | "assistant"), "rank", "labels", "emojis", ..., "replies": [<message>]}``;
    * the flat message table of oasst1/oasst2 on the Hugging Face Hub: one row per message with
      ``message_id``, ``parent_id``, ``message_tree_id``, ``text``, ``role``, ``rank`` and the rest.

    OpenAssistant rankers order the replies to a message; ``rank`` 0 is the best. Every pair of
    ranked siblings becomes one judgement (k ranked replies give k(k-1)/2 rows): ``response_a`` is
    the reply that comes first in the tree, ``choice`` the lower rank (``"tie"`` if equal).
    Replies without a rank (unranked or deleted) take part in no pair. The rank is the consensus
    of several rankers, hence the default ``annotator``; the pairs' a/b is no display order, so
    ``display_order_known`` is false.

    The prompt is the conversation from the tree's root to the replies' parent, as a compact
    JSON message list with TRL's role names (``prompter`` -> ``user``); each response is the
    JSON list of its one message. The tree is kept: ``task_id`` is
    ``"<dataset>:<message_tree_id>"`` and ``meta`` holds ``message_tree_id``, ``parent_id`` and,
    under ``"a"`` and ``"b"``, each reply's ``message_id``, ``rank`` and every other field it
    has (``labels``, ``emojis``, ``review_count``, ``synthetic``, ...). ``model_a``/``model_b``
    are the replies' ``model_name`` where the tree names one.

    Parameters
    ----------
    source
        The tree JSONL (``.gz`` allowed), the flat table (Parquet, JSONL, DataFrame,
        ``datasets.Dataset``) or a list of dicts in either layout.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name).
    annotator
        Recorded in every row.

    Returns
    -------
    polars.DataFrame
        The ``annotation`` kind's columns; ``annotation_id`` is
        ``"<dataset or 'oasst'>:<message_id a>:<message_id b>"``.

    Examples
    --------
    >>> reply = lambda mid, text, rank: {"message_id": mid, "text": text, "role": "assistant",
    ...                                  "rank": rank, "replies": []}
    >>> tree = {"message_tree_id": "t1", "prompt": {"message_id": "t1", "text": "Hi?", "role": "prompter",
    ...         "replies": [reply("m1", "Hello!", 1), reply("m2", "Hi there!", 0)]}}
    >>> load_oasst([tree]).select("annotation_id", "choice").row(0)
    ('oasst:m1:m2', 'b')
    """
    dataset = dataset_name(source, dataset)
    records = read_records(source)
    prefix = id_prefix(dataset, "oasst")
    trees = records if not records or "prompt" in records[0] else _trees_from_rows(records)
    out: dict[str, list[Any]] = defaultdict(list)
    for i, tree in enumerate(trees):
        root = tree.get("prompt")
        if not isinstance(root, dict):
            raise ValidationError(i, "prompt", "missing, or not a message object")
        tree_id = tree.get("message_tree_id") or root.get("message_id")
        _walk(i, str(tree_id), root, [], out)
    rows = frame_of(out, {ROW: pl.Int64})
    rows = rows.with_columns(
        annotation_id=pl.format("{}:{}:{}", pl.lit(prefix), "_a", "_b"),
        task_id=pl.format("{}:{}", pl.lit(prefix), "task"), annotator=pl.lit(annotator),
        dataset=pl.lit(dataset, dtype=pl.String), display_order_known=pl.lit(False))
    return finish_annotations(rows)


def _message(m: dict[str, Any]) -> dict[str, str]:
    role = str(m.get("role"))
    return {"role": ROLE_NAMES.get(role, role), "content": m.get("text") or ""}


def _walk(i: int, tree_id: str, m: dict[str, Any], path: list[dict[str, str]],
          out: dict[str, list[Any]]) -> None:
    """Depth first, so the pairs of a tree come in the order its messages are written."""
    if not isinstance(m.get("text"), str):
        raise ValidationError(i, f"message {m.get('message_id')!r}.text", "missing, or not a string")
    conv = [*path, _message(m)]
    replies = [r for r in m.get("replies") or [] if isinstance(r, dict)]
    ranked = [r for r in replies if r.get("rank") is not None]
    prompt = dumps(conv)
    for a, b in combinations(ranked, 2):
        ra, rb = a["rank"], b["rank"]
        for key, value in ((ROW, i), ("prompt", prompt), ("response_a", dumps([_message(a)])),
                           ("response_b", dumps([_message(b)])), ("model_a", a.get("model_name")),
                           ("model_b", b.get("model_name")),
                           ("choice", "a" if ra < rb else "b" if rb < ra else "tie"),
                           ("_a", str(a.get("message_id"))), ("_b", str(b.get("message_id"))),
                           ("task", tree_id),
                           ("meta", dumps({"message_tree_id": tree_id, "parent_id": m.get("message_id"),
                                           "a": _kept(a), "b": _kept(b)}))):
            out[key].append(value)
    for r in replies:
        _walk(i, tree_id, r, conv, out)


def _kept(m: dict[str, Any]) -> dict[str, Any]:
    return {"message_id": m.get("message_id"), "rank": m.get("rank"),
            **{k: v for k, v in m.items() if k not in _OWN and v is not None}}


def _trees_from_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flat message table as trees: children under their parent, in table order."""
    for i, r in enumerate(rows):
        if not r.get("message_id"):
            raise ValidationError(i, "message_id", "missing (a flat OpenAssistant table needs message_id "
                                                   "and parent_id; a tree export has 'prompt')")
    nodes = {r["message_id"]: {**r, "replies": []} for r in rows}
    roots = []
    for i, r in enumerate(rows):
        parent = r.get("parent_id")
        if parent is None:
            roots.append(nodes[r["message_id"]])
        elif parent in nodes:
            nodes[parent]["replies"].append(nodes[r["message_id"]])
        else:
            raise ValidationError(i, "parent_id", f"parent {parent!r} is not in the table")
    return [{"message_tree_id": n.get("message_tree_id") or n["message_id"], "prompt": n} for n in roots]
