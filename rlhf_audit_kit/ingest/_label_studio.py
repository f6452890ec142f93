"""Label Studio exports of a pairwise-comparison project (the ``<Pairwise>`` tag): JSON, JSON_MIN, CSV."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ValidationError
from ..validate import ts_bounds, ts_range_error
from ._common import (ROW, content_ids, dataset_name, dumps, finish, id_prefix, read_records,
                      skipped)

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["load_label_studio"]

_SELECTED = {"left": "a", "right": "b"}
# Keys of a JSON_MIN / CSV record that describe the annotation, not the task's data
_MIN_KEYS = {"id", "annotation_id", "annotator", "created_at", "updated_at", "lead_time"}
_COLUMNS = (ROW, "annotation_id", "task_id", "prompt", "response_a", "response_b", "model_a",
            "model_b", "choice", "annotator", "submitted_at", "_lead", "rationale", "gold_choice", "meta")


def load_label_studio(source: Source, *, dataset: str | None = None, prompt_key: str = "prompt",
                      response_a_key: str = "answer1", response_b_key: str = "answer2",
                      model_a_key: str | None = None, model_b_key: str | None = None,
                      from_name: str | None = None, rationale_from: str | None = None,
                      guideline_version: str | None = None) -> pl.DataFrame:
    """Load a Label Studio export of a ``<Pairwise>`` project as ``annotation`` rows.

    Reads the three exports a user downloads, with the same rows and ids from each:

    * JSON: a list of tasks ``{"id", "data": {...}, "annotations": [...]}``; each annotation
      ``{"id", "completed_by", "result", "created_at", "lead_time", "was_cancelled",
      "ground_truth"}`` holds a result ``{"type": "pairwise", "value": {"selected": "left" |
      "right"}}``;
    * JSON_MIN: one record per annotation, the task's data keys beside ``id`` (the task),
      ``annotation_id``, ``annotator``, ``created_at``, ``lead_time`` and one key per control
      tag (``"<from_name>": [{"selected": "right"}]``, a TextArea's text);
    * CSV: the JSON_MIN columns, with the Pairwise value as JSON text.

    One row per annotation: the left item (``data[response_a_key]``, first in the tag's
    ``toName``) is ``response_a``, so ``"left"`` -> ``"a"``, ``"right"`` -> ``"b"``, and
    ``display_order_known`` is true (the rater saw a on the left).

    * ``annotator`` is ``completed_by``: the user id, or the email when the export expands the
      user into an object. The store pseudonymises it on ingest.
    * ``submitted_at`` is the annotation's ``created_at``; ``shown_at`` is ``created_at`` minus
      ``lead_time`` seconds (the time Label Studio measured on the task).
    * Cancelled (skipped) annotations, ``was_cancelled: true``, are left out: they hold no
      judgement. So is an annotation whose pairwise choice was deselected (Label Studio lets a
      rater submit only the TextArea): it is skipped, and a
      :class:`~rlhf_audit_kit.ingest.SkippedRowsWarning` gives the count. Drafts and predictions
      are ignored.
    * An annotation marked ``ground_truth`` sets ``gold_choice`` of the task's *other*
      annotations to its choice (the reference is not scored against itself).
    * The task's other data keys (e.g. ``chosen_side``) are kept in ``meta`` as ``{"data": {...}}``.
    * ``task_id`` is ``"<dataset or 'label-studio'>:<task id>"`` and ``annotation_id``
      ``"<dataset or 'label-studio'>:<task id>:<annotation id>"``: Label Studio's own ids, so a
      re-export in another order or format gives the same ids.

    Parameters
    ----------
    source
        Path to the export (``.json`` or ``.csv``), the parsed list of tasks or records, or a
        table of them.
    dataset
        ``NAME`` or ``NAME@VERSION`` recorded in ``dataset`` and used as the id prefix (default
        for a file: its folder and name).
    prompt_key, response_a_key, response_b_key
        Keys of ``data`` holding the prompt and the left and right items. A non-string value
        (e.g. a ``Paragraphs`` dialogue) is stored as compact JSON text.
    model_a_key, model_b_key
        Optional ``data`` keys naming the models that produced each item.
    from_name
        The Pairwise tag's ``name``; needed when a result holds several Pairwise tags.
    rationale_from
        The ``name`` of a ``TextArea`` whose text becomes ``rationale``.
    guideline_version
        Recorded in ``guideline_version``.

    Raises
    ------
    ValidationError
        Naming the task's (JSON) or record's (JSON_MIN, CSV) 0-based position in the export and
        the path of the bad field, e.g. ``annotations[0].result[0].value.selected``; also when no
        annotation at all has a pairwise choice (from ``from_name``, if given).

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
    dataset = dataset_name(source, dataset)
    records = read_records(source)
    prefix = id_prefix(dataset, "label-studio")
    keys = (prompt_key, response_a_key, response_b_key, model_a_key, model_b_key)
    full = not records or "annotation_id" not in records[0] or "annotations" in records[0]
    reader = _Full if full else _Min
    cols, skips, seen = reader(prefix, keys, from_name, rationale_from).read(records)
    if not seen and records:
        tag = f" from {from_name!r}" if from_name else ""
        raise ValidationError(0, "annotations[0].result" if full else from_name or "<pairwise>",
                              f"no pairwise choice{tag} in any annotation; is this a <Pairwise> project"
                              + (" and the tag's name right?" if from_name else "?"))
    skipped(len(skips), "annotation with no pairwise choice" if len(skips) == 1
            else "annotations with no pairwise choice", skips)

    schema = {ROW: pl.Int64, "submitted_at": pl.Datetime("us", "UTC"), "_lead": pl.Float64}
    rows = pl.DataFrame(cols, schema={k: schema.get(k, pl.String) for k in cols})
    _check_times(rows)
    lead_us = (pl.col("_lead") * 1_000_000).round().cast(pl.Int64)
    rows = rows.with_columns(
        shown_at=pl.col("submitted_at") - pl.duration(microseconds=lead_us),
        guideline_version=pl.lit(guideline_version, dtype=pl.String),
        dataset=pl.lit(dataset, dtype=pl.String), display_order_known=pl.lit(True))
    rows = content_ids(rows, {"prompt_id": "prompt", "response_a_id": "response_a",
                              "response_b_id": "response_b"})
    return finish(rows, "annotation")


def _check_times(rows: pl.DataFrame) -> None:
    """created_at, and created_at - lead_time, within the store's timestamp range (vectorised): a
    lead_time of 1e11 s would otherwise date shown_at in year -1143, or overflow the cast."""
    lo, hi = ts_bounds("us")
    sub = pl.col("submitted_at").dt.epoch("us")
    shown = sub.cast(pl.Float64) - pl.col("_lead") * 1e6  # float: no overflow, inf/nan stay out of range
    for field, ticks, bad in (("created_at", sub.cast(pl.Float64), (sub < lo) | (sub > hi)),
                              ("lead_time", shown, shown.is_nan() | (shown < lo) | (shown > hi))):
        hit = rows.lazy().filter(bad.fill_null(False)).select(ROW, ticks.alias("t")).head(1).collect()
        if hit.height:
            t = hit["t"][0]
            why = ts_range_error(int(t), "us") if math.isfinite(t) else "is not a finite time"
            raise ValidationError(int(hit[ROW][0]), field, f"{why} (lead_time gives shown_at = created_at - "
                                  "lead_time)" if field == "lead_time" else why)


class _Reader:
    """Shared state of a read: the output columns, the skipped annotations, whether any had a choice."""

    def __init__(self, prefix: str, keys: tuple, from_name: str | None, rationale_from: str | None):
        self.prefix, self.keys, self.from_name, self.rationale_from = prefix, keys, from_name, rationale_from
        self.cols: dict[str, list[Any]] = {k: [] for k in _COLUMNS}
        self.skips: list[str] = []
        self.seen = False

    def task_values(self, i: int, data: dict[str, Any], where: str) -> tuple[list, list, str | None]:
        prompt_key, a_key, b_key, ma_key, mb_key = self.keys
        texts = [_text(i, data, k, where) for k in (prompt_key, a_key, b_key)]
        models = [None if k is None or data.get(k) is None else str(data[k]) for k in (ma_key, mb_key)]
        other = {k: v for k, v in data.items() if k not in self.keys}
        return texts, models, dumps({"data": other}) if other else None

    def add(self, *values: Any) -> None:
        for key, value in zip(self.cols, values):
            self.cols[key].append(value)


class _Full(_Reader):
    def read(self, tasks: list[dict[str, Any]]) -> tuple[dict, list[str], bool]:
        for i, task in enumerate(tasks):
            data = task.get("data")
            if not isinstance(data, dict):
                raise ValidationError(i, "data", "missing, or not an object (a JSON_MIN record has "
                                                 "'annotation_id' and 'annotator' instead)")
            if task.get("id") is None:
                raise ValidationError(i, "id", "missing task id")
            texts, models, meta = self.task_values(i, data, "data.")
            judged = []
            for j, ann in enumerate(task.get("annotations") or []):
                if ann.get("was_cancelled"):
                    continue
                where = f"annotations[{j}]"
                if ann.get("id") is None:
                    raise ValidationError(i, f"{where}.id", "missing annotation id")
                choice, rationale = _read_result(i, where, ann.get("result"), self.from_name,
                                                 self.rationale_from)
                if choice is None:
                    self.skips.append(f"task {task['id']}, annotation {ann['id']}")
                    continue
                self.seen = True
                judged.append((ann, choice, rationale, where))
            gold = next((c for a, c, _, _ in judged if a.get("ground_truth") is True), None)
            for ann, choice, rationale, where in judged:
                self.add(i, f"{self.prefix}:{task['id']}:{ann['id']}", f"{self.prefix}:{task['id']}", *texts,
                         *models, choice, _annotator(i, f"{where}.completed_by", ann.get("completed_by")),
                         _timestamp(i, f"{where}.created_at", ann.get("created_at")),
                         _lead(i, f"{where}.lead_time", ann.get("lead_time")), rationale,
                         None if ann.get("ground_truth") is True else gold, meta)
        return self.cols, self.skips, self.seen


class _Min(_Reader):
    """JSON_MIN and CSV: a flat record per annotation (CSV cells are text, values JSON text)."""

    def read(self, records: list[dict[str, Any]]) -> tuple[dict, list[str], bool]:
        for i, rec in enumerate(records):
            for k in ("id", "annotation_id"):
                if rec.get(k) in (None, ""):
                    raise ValidationError(i, k, "missing (a JSON_MIN or CSV export record has the task "
                                                "'id' and its 'annotation_id')")
            tags = {k: v for k, v in ((k, _cell(v)) for k, v in rec.items() if k not in _MIN_KEYS)
                    if _is_pairwise(v)}
            if self.from_name is not None:
                tags = {k: v for k, v in tags.items() if k == self.from_name}
            if len(tags) > 1:
                raise ValidationError(i, sorted(tags)[1], "several Pairwise tags; pass from_name= to pick one")
            data = {k: v for k, v in rec.items() if k not in _MIN_KEYS and k not in tags
                    and k != self.rationale_from and not _is_pairwise(_cell(v))}
            texts, models, meta = self.task_values(i, data, "")
            if not tags:
                self.skips.append(f"task {rec['id']}, annotation {rec['annotation_id']}")
                continue
            (name, value), = tags.items()
            values = value if isinstance(value, list) else [value]
            selected = values[0].get("selected") if values and isinstance(values[0], dict) else None
            if selected not in _SELECTED:
                raise ValidationError(i, name, f"expected 'left' or 'right'; got {selected!r}")
            self.seen = True
            rationale = None
            if self.rationale_from is not None:
                text = _cell(rec.get(self.rationale_from))
                text = "\n".join(text) if isinstance(text, list) else text
                rationale = text or None
            self.add(i, f"{self.prefix}:{rec['id']}:{rec['annotation_id']}", f"{self.prefix}:{rec['id']}",
                     *texts, *models, _SELECTED[selected], _annotator(i, "annotator", rec.get("annotator")),
                     _timestamp(i, "created_at", rec.get("created_at")),
                     _lead(i, "lead_time", rec.get("lead_time")),
                     rationale, None, meta)
        return self.cols, self.skips, self.seen


def _cell(value: Any) -> Any:
    """A CSV cell holding JSON (a control's value) as the value; other cells as they are."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _is_pairwise(value: Any) -> bool:
    first = value[0] if isinstance(value, list) and value else value
    return isinstance(first, dict) and "selected" in first


def _text(i: int, data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        raise ValidationError(i, f"{where}{key}", "missing (set prompt_key/response_a_key/response_b_key "
                                                  "to the project's data keys)")
    return value if isinstance(value, str) else dumps(value)


def _read_result(i: int, where: str, result: Any, from_name: str | None,
                 rationale_from: str | None) -> tuple[str | None, str | None]:
    """The choice and rationale of one annotation; choice None when it holds no pairwise choice."""
    if not isinstance(result, list):
        raise ValidationError(i, f"{where}.result", "missing, or not a list")
    picks = [(k, r) for k, r in enumerate(result) if isinstance(r, dict) and r.get("type") == "pairwise"
             and (from_name is None or r.get("from_name") == from_name)]
    if len(picks) > 1:
        raise ValidationError(i, f"{where}.result", "several Pairwise results; pass from_name= to pick one")
    rationale = None
    if rationale_from is not None:
        texts = [t for r in result if isinstance(r, dict) and r.get("from_name") == rationale_from
                 for t in (r.get("value") or {}).get("text") or []]
        rationale = "\n".join(texts) if texts else None
    if not picks:
        return None, rationale
    k, r = picks[0]
    selected = (r.get("value") or {}).get("selected")
    if selected not in _SELECTED:
        raise ValidationError(i, f"{where}.result[{k}].value.selected",
                              f"expected 'left' or 'right'; got {selected!r}")
    return _SELECTED[selected], rationale


def _annotator(i: int, field: str, who: Any) -> str:
    if isinstance(who, dict):  # some exports expand the user: {"id", "email", ...}
        who = who.get("email") or who.get("id")
    if who is None or who == "":
        raise ValidationError(i, field, "missing annotator")
    return str(who)


def _timestamp(i: int, field: str, value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(i, field, f"expected an ISO 8601 timestamp, got {value!r}")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(i, field, f"expected an ISO 8601 timestamp, got {value!r}") from None
    # Label Studio writes UTC ('Z'); a naive value is taken as UTC too.
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _lead(i: int, field: str, value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):  # a CSV cell
        try:
            value = float(value)
        except ValueError:
            raise ValidationError(i, field, f"expected a non-negative number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValidationError(i, field, f"expected a non-negative number of seconds, got {value!r}")
    return float(value)
