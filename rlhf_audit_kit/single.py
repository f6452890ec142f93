"""One event at a time: plain-Python validation, normal form and canonical entry bytes.

The batch path (:func:`rlhf_audit_kit.validate.normalise`, :func:`rlhf_audit_kit.encoding.encode_frame`)
is columnar and pays polars' fixed costs on every call. A single event (``store.append``,
``Recorder.log``) is checked here in microseconds, with the same rules, the same
``ValidationError(row, field, reason)`` and the same canonical bytes: the tests check the two
paths against each other.

>>> from rlhf_audit_kit.single import check_event, entry_of
>>> kind, values = check_event({"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": 1,
...                             "metrics": {"loss": 0.5, "rewards/margins": 1}})
>>> entry_of(kind, values, 0, "2026-01-01T00:00:00.000000Z")[:88]
b'{"data":{"algorithm":"dpo","epoch":null,"metrics":{"loss":0.5,"rewards/margins":1},"run_'
>>> check_event({"kind": "train_step", "run_id": "r", "algorithm": "dpo", "step": -1, "metrics": {"a": 1}})
Traceback (most recent call last):
...
rlhf_audit_kit.errors.ValidationError: row 0, field 'step': must be >= 0; got -1
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .encoding import ENCODING_VERSION, _escape_str, _utf16_key, canonical_json
from .errors import ValidationError
from .schema import KINDS, MAX_ID_CHARS, MAX_MAP_ENTRIES, MAX_SAFE_INT, MAX_TEXT_CHARS, STORE_COLUMNS, Field, Kind
from .validate import _parse_ts, _py_value_error, _to_utc_naive, json_field_text

__all__ = ["check_event", "entry_of"]

_LIMIT = {"id": MAX_ID_CHARS, "text": MAX_TEXT_CHARS}
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*")
_TS = "%Y-%m-%dT%H:%M:%S.%fZ"
# Canonical key order of each kind's data object (RFC 8785 sorts by UTF-16 code units).
_ORDER = {k.name: sorted(k.fields, key=lambda f: _utf16_key(f.name)) for k in KINDS.values()}


def _bad(row: int, f: Field | str, reason: str) -> ValidationError:
    return ValidationError(row, f if isinstance(f, str) else f.name, reason)


def _map_values(f: Field, m: Mapping, row: int) -> dict:
    """Type-check and convert a name -> number map (errors as validate's row path gives them)."""
    out = {}
    floats = f.type == "map_float"
    for key, x in m.items():
        if not isinstance(key, str):
            raise _bad(row, f, f"map keys must be strings, got {key!r}")
        if type(x) is float if floats else type(x) is int and abs(x) <= MAX_SAFE_INT:  # the common case
            out[key] = x
            continue
        why = _py_value_error(Field(f.name, "float" if floats else "int"), x)
        if why or x is None:
            raise _bad(row, f, f"value of {key!r}: {why or 'missing'}")
        out[key] = float(x) if floats else int(x)
    return out


def _convert(f: Field, v: Any, row: int) -> Any:
    """The value of field ``f`` in normal form (UTC-naive datetimes, canonical JSON text, ...)."""
    why = _py_value_error(f, v)
    if why:
        raise _bad(row, f, why)
    t = f.type
    if t == "int":
        return int(v)
    if t == "float":
        return float(v)
    if t == "ts":
        return _parse_ts(v) if isinstance(v, str) else _to_utc_naive(v)
    if t in ("map_float", "map_int"):
        return _map_values(f, v, row)
    if t == "json":  # the batch path's limits (depth, size) and errors
        return json_field_text(v, row, f.name)
    return v


def _check_value(f: Field, v: Any, row: int) -> None:
    """The per-field rules of validate._check, in the same order."""
    if v is None:
        if f.required:
            raise _bad(row, f, "missing (required)")
        return
    t = f.type
    if t in _LIMIT:
        n = len(v)
        if n > _LIMIT[t]:
            raise _bad(row, f, f"{n} characters exceed the limit of {_LIMIT[t]}")
        if f.required and n == 0 and not getattr(f, "allow_empty", False):
            raise _bad(row, f, "must not be empty")
    if f.choices and v not in f.choices:
        raise _bad(row, f, f"must be one of {', '.join(f.choices)}; got {v!r}")
    if t in ("int", "float"):
        if t == "float" and not math.isfinite(v):
            raise _bad(row, f, f"must be a finite number; got {v!r}")
        if f.min is not None and v < f.min:
            raise _bad(row, f, f"must be >= {f.min}; got {v}")
        if f.max is not None and v > f.max:
            raise _bad(row, f, f"must be <= {f.max}; got {v}")
    elif t in ("map_float", "map_int"):
        if len(v) > MAX_MAP_ENTRIES:
            raise _bad(row, f, f"{len(v)} entries exceed the limit of {MAX_MAP_ENTRIES}")
        if f.required and not v:
            raise _bad(row, f, "must not be empty")
        for key, x in v.items():
            if not 0 < len(key) <= MAX_ID_CHARS:
                raise _bad(row, f, "map keys must have 1 to 512 characters")
            if not key.isascii():
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    raise _bad(row, f, f"map key {key!r} is not valid Unicode text") from None
            if t == "map_float" and not math.isfinite(x):
                raise _bad(row, f, f"value of {key!r} must be finite; got {x}")
            if t == "map_int" and abs(x) > MAX_SAFE_INT:
                raise _bad(row, f, f"value of {key!r} is outside +-(2**53 - 1)")


def _check_rules(kind: str, v: dict, row: int) -> None:
    """validate._check_kind_rules for one event."""
    if kind == "annotation":
        if v["shown_at"] is not None and v["submitted_at"] is not None and v["submitted_at"] < v["shown_at"]:
            raise _bad(row, "submitted_at", "is earlier than shown_at")
    elif kind == "rating":
        lo, hi = v["scale_min"], v["scale_max"]
        for key, x in v["aspects"].items():
            if (lo is not None and x < lo) or (hi is not None and x > hi):
                raise _bad(row, "aspects", f"{key}={x} is outside the scale")
    elif kind == "oversight":
        if v["subject_seq"] is None and v["subject_run"] is None and v["subject_checkpoint"] is None:
            raise _bad(row, "subject_seq", "an oversight decision needs a subject "
                       "(subject_seq, subject_run or subject_checkpoint)")
    elif kind == "checkpoint":
        if v["content_hash"] is not None and not _HASH.fullmatch(v["content_hash"]):
            raise _bad(row, "content_hash", "must be 'sha256:' + 64 lowercase hex (use rlhf_audit_kit.hash_artifact)")
    elif kind == "custom":
        if not _NAME.fullmatch(v["name"]):
            raise _bad(row, "name", "a kind name: letters, digits, _ . : -")


def check_event(event: Mapping[str, Any], kind: str | None = None, *, row: int = 0) -> tuple[Kind, dict]:
    """Validate one event; return its kind and every field's value in normal form.

    Raises :class:`~rlhf_audit_kit.ValidationError` (``row`` as given) exactly where
    :func:`rlhf_audit_kit.validate.normalise` would for a batch of this one event; uniqueness
    against the store is the store's check. Maps come back as dicts of float (int for
    ``map_int``), timestamps as UTC-naive datetimes, JSON objects as canonical JSON text.
    """
    if not isinstance(event, Mapping):
        raise _bad(row, "<row>", f"expected a mapping, got {type(event).__name__}")
    given = event.get("kind")
    name = kind or given
    if name is None:
        raise _bad(row, "kind", "missing: give each row a 'kind' or pass kind=")
    if kind and given not in (None, kind):
        raise _bad(row, "kind", f"row kind {given!r} differs from kind={kind!r}")
    spec = KINDS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise _bad(row, "kind", f"unknown kind {name!r}; known: {', '.join(KINDS)}")
    fields = spec.field_map
    for key in event:
        if key not in fields and key not in STORE_COLUMNS:
            raise _bad(row, key, f"unknown field for kind {name!r}")
    values = {}
    for f in spec.fields:  # types first, for every field, as the batch path does
        v = event.get(f.name)
        values[f.name] = None if v is None else _convert(f, v, row)
    for f in spec.fields:
        _check_value(f, values[f.name], row)
    _check_rules(name, values, row)
    return spec, values


def entry_of(kind: Kind, values: Mapping[str, Any], seq: int, ts: str) -> bytes:
    """The canonical entry (see :mod:`rlhf_audit_kit.encoding`) of one event from :func:`check_event`."""
    parts = []
    for f in _ORDER[kind.name]:
        v = values[f.name]
        if v is None:
            if f.omit_null:
                continue
            text = "null"
        elif f.type in ("id", "text"):
            text = _escape_str(v)
        elif f.type == "ts":
            text = '"' + v.strftime(_TS) + '"'
        elif f.type == "json":
            text = v  # already canonical
        elif f.type == "bool":
            text = "true" if v else "false"
        else:  # numbers and maps
            text = canonical_json(v)
        parts.append(_escape_str(f.name) + ":" + text)
    return ('{"data":{' + ",".join(parts) + '},"kind":' + _escape_str(kind.name) + ',"seq":' + str(int(seq))
            + ',"ts":"' + ts + f'","v":{ENCODING_VERSION}}}').encode("utf-8")
