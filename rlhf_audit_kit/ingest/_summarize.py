"""OpenAI summarize-from-feedback comparisons: a labeller's choice between two summaries of a post."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ValidationError
from ._common import ROW, dataset_name, dumps, finish_annotations, frame_of, id_prefix, read_records

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_summarize_from_feedback"]

# The prompts TRL's tldr-preference conversion writes, so both give the same content ids.
TLDR = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
CNNDM = "Article:\n{article}\n\nTL;DR:"


def load_summarize_from_feedback(source: Source, *, dataset: str | None = None) -> pl.DataFrame:
    """Load comparisons of ``openai/summarize-from-feedback`` as ``annotation`` rows.

    Each JSON line of ``comparisons/*.json`` is ``{"info": {"id", "post", "title", "subreddit",
    "article", "site"}, "summaries": [{"text", "policy", "note"}, {...}], "choice": 0 | 1,
    "worker", "batch", "split", "extra": {"confidence"}}``.

    * ``prompt`` is the post as TRL's tldr-preference set writes it (``"SUBREDDIT: r/...\\n\\nTITLE:
      ...\\n\\nPOST: ...\\n\\nTL;DR:"``; ``"Article:\\n...\\n\\nTL;DR:"`` for CNN/DM articles);
    * ``response_a``/``response_b`` are ``summaries[0]``/``summaries[1]`` (their ``policy`` the
      ``model_a``/``model_b``), ``choice`` is ``"a"`` for 0 and ``"b"`` for 1;
    * ``annotator`` is ``worker`` (pseudonymised by the store), ``strength`` the labeller's
      ``extra.confidence`` (1..9), ``task_id`` ``"<dataset>:<batch>"``;
    * ``meta`` keeps ``info.id``, ``site``, ``split``, ``batch`` and the summaries' ``note``.

    The release does not say which summary the labeller saw first, so
    ``display_order_known`` is false.

    Parameters
    ----------
    source
        A ``comparisons/batch*.json`` file (JSON lines), the Hub's ``comparisons`` config, a
        DataFrame or a list of dicts.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name).

    Examples
    --------
    >>> row = {"info": {"id": "t3_x", "post": "I lost my keys.", "title": "Keys", "subreddit": "help"},
    ...        "summaries": [{"text": " Lost keys.", "policy": "sup2"}, {"text": " Keys.", "policy": "ref"}],
    ...        "choice": 1, "worker": "w7", "batch": "batch3", "split": "train", "extra": {"confidence": 8}}
    >>> load_summarize_from_feedback([row]).select("choice", "annotator", "strength", "model_b").row(0)
    ('b', 'w7', 8, 'ref')
    """
    dataset = dataset_name(source, dataset)
    records = read_records(source)
    prefix = id_prefix(dataset, "summarize-from-feedback")
    cols: dict[str, list[Any]] = {k: [] for k in (
        ROW, "prompt", "response_a", "response_b", "model_a", "model_b", "choice", "annotator",
        "strength", "batch", "meta")}
    for i, r in enumerate(records):
        info, summ = r.get("info"), r.get("summaries")
        if not isinstance(info, dict):
            raise ValidationError(i, "info", "missing, or not an object")
        if not (isinstance(summ, list) and len(summ) == 2 and all(isinstance(s, dict) for s in summ)):
            raise ValidationError(i, "summaries", "expected a list of two {text, policy} objects")
        for j, s in enumerate(summ):
            if not isinstance(s.get("text"), str):
                raise ValidationError(i, f"summaries[{j}].text", "missing, or not a string")
        if r.get("choice") not in (0, 1) or isinstance(r.get("choice"), bool):
            raise ValidationError(i, "choice", f"must be 0 or 1; got {r.get('choice')!r}")
        if not r.get("worker"):
            raise ValidationError(i, "worker", "missing labeller")
        confidence = (r.get("extra") or {}).get("confidence")
        meta = {"info_id": info.get("id"), "site": info.get("site"), "split": r.get("split"),
                "batch": r.get("batch"), "notes": [s.get("note") for s in summ]}
        for key, value in zip(cols, (
                i, _prompt(i, info), summ[0]["text"], summ[1]["text"], summ[0].get("policy"),
                summ[1].get("policy"), "ab"[r["choice"]], str(r["worker"]),
                None if confidence is None else int(confidence), r.get("batch") or "",
                dumps({k: v for k, v in meta.items() if v is not None}))):
            cols[key].append(value)
    schema = {ROW: pl.Int64, "strength": pl.Int64}
    rows = frame_of(cols, schema)
    rows = rows.with_columns(
        annotation_id=pl.format("{}:{}", pl.lit(prefix), pl.col(ROW)),
        task_id=pl.format("{}:{}", pl.lit(prefix), "batch"), dataset=pl.lit(dataset, dtype=pl.String),
        display_order_known=pl.lit(False))
    return finish_annotations(rows)


def _prompt(i: int, info: dict[str, Any]) -> str:
    if info.get("article"):
        return CNNDM.format(article=info["article"])
    missing = [k for k in ("subreddit", "title", "post") if not isinstance(info.get(k), str)]
    if missing:
        raise ValidationError(i, f"info.{missing[0]}", "missing (a post needs subreddit, title and post; "
                                                        "an article needs article)")
    return TLDR.format(subreddit=info["subreddit"], title=info["title"], post=info["post"])
