"""Label Studio JSON exports of a pairwise-comparison project (the ``<Pairwise>`` tag)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ValidationError
from ._common import ROW, check_dataset, content_ids, dumps, finish, id_prefix, read_records

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_label_studio"]

_SELECTED = {"left": "a", "right": "b"}


def load_label_studio(source: Source, *, dataset: str | None = None, prompt_key: str = "prompt",
                      response_a_key: str = "answer1", response_b_key: str = "answer2",
                      model_a_key: str | None = None, model_b_key: str | None = None,
                      from_name: str | None = None, rationale_from: str | None = None,
                      guideline_version: str | None = None) -> pl.DataFrame:
    """Load a Label Studio JSON export of a ``<Pairwise>`` project as ``annotation`` rows.

    The export is a list of tasks ``{"id", "data": {...}, "annotations": [...]}``; each
    annotation ``{"id", "completed_by", "result", "created_at", "lead_time", "was_cancelled"}``
    holds a result ``{"type": "pairwise", "value": {"selected": "left" | "right"}}``. One row per
    (task, annotation): the left item (``data[response_a_key]``, first in the tag's ``toName``)
    is ``response_a``, so ``"left"`` -> ``"a"``, ``"right"`` -> ``"b"``.

    * ``annotator`` is ``completed_by``: the user id, or the email when the export expands the
      user into an object. The store pseudonymises it on ingest.
    * ``submitted_at`` is the annotation's ``created_at``; ``shown_at`` is ``created_at`` minus
      ``lead_time`` seconds (the time Label Studio measured on the task).
    * Cancelled (skipped) annotations, ``was_cancelled: true``, are left out: they hold no
      judgement. Drafts and predictions are ignored.
    * ``task_id`` is ``"<dataset or 'label-studio'>:<task id>"`` and ``annotation_id``
      ``"<dataset or 'label-studio'>:<task id>:<annotation id>"``: Label Studio's own ids, so a
      re-export in another order gives the same ids.

    Parameters
    ----------
    source
        Path to the export (``.json``), the parsed list of tasks, or a table of tasks.
    dataset
        ``name@version`` recorded in ``dataset`` and used as the id prefix.
    prompt_key, response_a_key, response_b_key
        Keys of ``data`` holding the prompt and the left and right items. A non-string value
        (e.g. a ``Paragraphs`` dialogue) is stored as compact JSON text.
    model_a_key, model_b_key
        Optional ``data`` keys naming the models that produced each item.
    from_name
        The Pairwise tag's ``name``, needed only when a result holds several Pairwise tags.
    rationale_from
        The ``name`` of a ``TextArea`` whose text becomes ``rationale``.
    guideline_version
        Recorded in ``guideline_version``.

    Raises
    ------
    ValidationError
        Naming the task's 0-based position in the export and the path of the bad field, e.g.
        ``annotations[0].result[0].value.selected``.

    Examples
    --------
    >>> task = {"id": 7, "data": {"prompt": "Hi", "answer1": "Hello", "answer2": "Yo"},
    ...         "annotations": [{"id": 70, "completed_by": 3, "was_cancelled": False,
    ...             "created_at": "2024-05-01T10:00:30Z", "lead_time": 30.0,
    ...             "result": [{"type": "pairwise", "from_name": "pw", "to_name": "a,b",
    ...                         "value": {"selected": "right"}}]}]}
    >>> rows = load_label_studio([task])
    >>> rows.select("annotation_id", "choice", "annotator").row(0)
    ('label-studio:7:70', 'b', '3')
    >>> rows["shown_at"][0].isoformat()
    '2024-05-01T10:00:00+00:00'
    """
    check_dataset(dataset)
    tasks = read_records(source)
    prefix = id_prefix(dataset, "label-studio")
    cols: dict[str, list[Any]] = {k: [] for k in (
        ROW, "annotation_id", "task_id", "prompt", "response_a", "response_b", "model_a", "model_b",
        "choice", "annotator", "submitted_at", "_lead", "rationale")}
    for i, task in enumerate(tasks):
        data = task.get("data")
        if not isinstance(data, dict):
            raise ValidationError(i, "data", "missing, or not an object")
        if task.get("id") is None:
            raise ValidationError(i, "id", "missing task id")
        texts = [_text(i, data, k) for k in (prompt_key, response_a_key, response_b_key)]
        models = [None if k is None or data.get(k) is None else str(data[k])
                  for k in (model_a_key, model_b_key)]
        for j, ann in enumerate(task.get("annotations") or []):
            if ann.get("was_cancelled"):
                continue
            where = f"annotations[{j}]"
            if ann.get("id") is None:
                raise ValidationError(i, f"{where}.id", "missing annotation id")
            choice, rationale = _read_result(i, where, ann.get("result"), from_name, rationale_from)
            for key, value in zip(cols, (
                    i, f"{prefix}:{task['id']}:{ann['id']}", f"{prefix}:{task['id']}", *texts, *models,
                    choice, _annotator(i, where, ann.get("completed_by")),
                    _timestamp(i, f"{where}.created_at", ann.get("created_at")),
                    _lead(i, f"{where}.lead_time", ann.get("lead_time")), rationale)):
                cols[key].append(value)

    schema = {ROW: pl.Int64, "submitted_at": pl.Datetime("us", "UTC"), "_lead": pl.Float64}
    rows = pl.DataFrame(cols, schema={k: schema.get(k, pl.String) for k in cols})
    lead_us = (pl.col("_lead") * 1_000_000).round().cast(pl.Int64)
    rows = rows.with_columns(
        shown_at=pl.col("submitted_at") - pl.duration(microseconds=lead_us),
        guideline_version=pl.lit(guideline_version, dtype=pl.String),
        dataset=pl.lit(dataset, dtype=pl.String))
    rows = content_ids(rows, {"prompt_id": "prompt", "response_a_id": "response_a",
                              "response_b_id": "response_b"})
    return finish(rows, "annotation")


def _text(i: int, data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        raise ValidationError(i, f"data.{key}", "missing (set prompt_key/response_a_key/response_b_key "
                                                "to the project's data keys)")
    return value if isinstance(value, str) else dumps(value)


def _read_result(i: int, where: str, result: Any, from_name: str | None,
                 rationale_from: str | None) -> tuple[str, str | None]:
    if not isinstance(result, list):
        raise ValidationError(i, f"{where}.result", "missing, or not a list")
    picks = [(k, r) for k, r in enumerate(result) if isinstance(r, dict) and r.get("type") == "pairwise"
             and (from_name is None or r.get("from_name") == from_name)]
    if not picks:
        raise ValidationError(i, f"{where}.result", "no Pairwise result"
                              + (f" from {from_name!r}" if from_name else ""))
    if len(picks) > 1:
        raise ValidationError(i, f"{where}.result", "several Pairwise results; pass from_name= to pick one")
    k, r = picks[0]
    selected = (r.get("value") or {}).get("selected")
    if selected not in _SELECTED:
        raise ValidationError(i, f"{where}.result[{k}].value.selected",
                              f"expected 'left' or 'right'; got {selected!r}")
    rationale = None
    if rationale_from is not None:
        texts = [t for r in result if isinstance(r, dict) and r.get("from_name") == rationale_from
                 for t in (r.get("value") or {}).get("text") or []]
        rationale = "\n".join(texts) if texts else None
    return _SELECTED[selected], rationale


def _annotator(i: int, where: str, who: Any) -> str:
    if isinstance(who, dict):  # some exports expand the user: {"id", "email", ...}
        who = who.get("email") or who.get("id")
    if who is None or who == "":
        raise ValidationError(i, f"{where}.completed_by", "missing annotator")
    return str(who)


def _timestamp(i: int, field: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(i, field, f"expected an ISO 8601 timestamp, got {value!r}")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(i, field, f"expected an ISO 8601 timestamp, got {value!r}") from None
    # Label Studio writes UTC ('Z'); a naive value is taken as UTC too.
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _lead(i: int, field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValidationError(i, field, f"expected a non-negative number of seconds, got {value!r}")
    return float(value)
