"""Turn user input into validated, typed polars frames, one per event kind.

Input may be a polars/pandas DataFrame, an Arrow table, a Hugging Face ``datasets.Dataset``,
an iterable of dicts or a JSONL path. Checks run column by column on the whole batch (no Python
loop per row on the fast path); only when a check fails does a Python scan look for the exact
row to name. The first bad row (lowest index) is reported as
``ValidationError(row, field, reason)``.

>>> import polars as pl
>>> from rlhf_audit_kit.validate import normalise
>>> frames = normalise([{"kind": "dataset", "name": "hh", "version": "1"}])
>>> frames["dataset"].select("name", "version").row(0)
('hh', '1')
"""
from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from .encoding import _parse_int, canonical_json
from .errors import ValidationError
from .schema import (KINDS, MAX_ID_CHARS, MAX_JSON_CHARS, MAX_JSON_DEPTH, MAX_MAP_ENTRIES, MAX_SAFE_INT,
                     MAX_TEXT_CHARS, MAX_TIMESTAMP, MIN_TIMESTAMP, STORE_COLUMNS, Field, Kind)

ROW = "__row"  # original 0-based index of each row in the batch
_MAX_CHARS = {"id": MAX_ID_CHARS, "text": MAX_TEXT_CHARS}
MAP_DTYPE = {
    "map_float": pl.List(pl.Struct({"key": pl.Utf8, "value": pl.Float64})),
    "map_int": pl.List(pl.Struct({"key": pl.Utf8, "value": pl.Int64})),
}
DTYPES = {"id": pl.Utf8, "text": pl.Utf8, "int": pl.Int64, "float": pl.Float64, "bool": pl.Boolean,
          "ts": pl.Datetime("us"), "json": pl.Utf8, **MAP_DTYPE}


# ---------------------------------------------------------------- timestamp range
_TICKS_PER_S = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_EPOCH = dt.datetime(1970, 1, 1)
TS_RANGE = (f"{MIN_TIMESTAMP:%Y-%m-%dT%H:%M:%S}Z .. {MAX_TIMESTAMP:%Y-%m-%dT%H:%M:%S.%f}Z")


def ts_bounds(unit: str) -> tuple[int, int]:
    """The documented timestamp range in ``unit`` ticks (s, ms, us, ns, or d for days) since 1970."""
    lo_us = (MIN_TIMESTAMP - _EPOCH) // dt.timedelta(microseconds=1)
    hi_us = (MAX_TIMESTAMP - _EPOCH) // dt.timedelta(microseconds=1)
    per_us = {"d": 86_400 * 10**6, "s": 10**6, "ms": 10**3}.get(unit)
    if per_us:
        return -(-lo_us // per_us), hi_us // per_us
    scale = 1000 if unit == "ns" else 1
    return lo_us * scale, hi_us * scale + scale - 1


def ts_range_error(ticks: int, unit: str) -> str:
    """The reason for an out-of-range timestamp given as ``ticks`` of ``unit`` since 1970 (the
    value may be beyond what any datetime type can print)."""
    per_s = 86_400 if unit == "d" else _TICKS_PER_S[unit]
    year = 1970 + ticks / per_s / 31_556_952
    return f"timestamp out of range (about year {year:.0f}); must lie within {TS_RANGE}"


def _ts_error(v: dt.datetime) -> str | None:
    """Why a UTC-naive datetime is out of the documented range (None if it is not)."""
    if MIN_TIMESTAMP <= v <= MAX_TIMESTAMP:
        return None
    return f"timestamp {v.isoformat()} is out of range; must lie within {TS_RANGE}"


def _check_ticks(rows: pl.Series, ticks: pl.Series, unit: str, field: str) -> None:
    """Refuse the first row whose timestamp (integer ticks of ``unit``) is out of range, vectorised."""
    lo, hi = ts_bounds(unit)
    bad = ((ticks < lo) | (ticks > hi)).fill_null(False)
    _err(rows, bad, field, lambda p: ts_range_error(int(ticks[p]), unit))


def _check_arrow_times(table: Any) -> None:
    """Out-of-range timestamp columns of an Arrow table, before polars converts them: polars turns
    seconds into milliseconds by a multiplication that silently wraps around at int64."""
    import pyarrow as pa
    import pyarrow.compute as pc
    for name, col in zip(table.column_names, table.columns):
        t = col.type
        if pa.types.is_timestamp(t):
            unit, ticks = t.unit, col.cast(pa.int64())
        elif pa.types.is_date32(t):
            unit, ticks = "d", col.cast(pa.int32()).cast(pa.int64())
        elif pa.types.is_date64(t):
            unit, ticks = "ms", col.cast(pa.int64())
        else:
            continue
        lo, hi = ts_bounds(unit)
        bad = pc.fill_null(pc.or_(pc.less(ticks, lo), pc.greater(ticks, hi)), False)
        at = pc.index(bad, True).as_py()
        if at >= 0:
            raise ValidationError(at, name, ts_range_error(ticks[at].as_py(), unit))


def _check_pandas_times(frame: Any) -> None:
    """As _check_arrow_times, for the datetime64 columns of a pandas DataFrame (NaT is missing)."""
    import numpy as np
    for name in frame.columns:
        col = frame[name]
        if getattr(col.dtype, "kind", None) != "M":
            continue
        arr = col.array
        ticks = np.asarray(arr.asi8 if hasattr(arr, "asi8") else col.to_numpy().view("i8"))
        unit = str(getattr(col.dt, "unit", "ns"))
        lo, hi = ts_bounds(unit)
        bad = ((ticks < lo) | (ticks > hi)) & (ticks != np.iinfo(np.int64).min)
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise ValidationError(at, str(name), ts_range_error(int(ticks[at]), unit))


def _err(rows: pl.Series, mask: pl.Series, field: str, reason_fn) -> None:
    """Raise for the first row where ``mask`` is true; reason_fn(position) -> str."""
    idx = mask.arg_true()
    if len(idx):
        pos = int(idx[0])
        raise ValidationError(int(rows[pos]), field, reason_fn(pos))


# ---------------------------------------------------------------- input -> frame
def to_frame(rows: Any) -> pl.DataFrame | list[dict]:
    """Return a polars DataFrame for tabular input, or a list of dicts for row input."""
    if isinstance(rows, pl.DataFrame):
        return rows
    if isinstance(rows, pl.LazyFrame):
        return rows.collect()
    if isinstance(rows, (str, os.PathLike)):
        return _read_jsonl(os.fspath(rows))
    mod = type(rows).__module__
    if mod.startswith("pyarrow"):
        if hasattr(rows, "column_names"):
            _check_arrow_times(rows)
        return pl.from_arrow(rows)
    if mod.startswith("pandas"):
        if hasattr(rows, "columns"):
            _check_pandas_times(rows)
        return pl.from_pandas(rows)
    if mod.startswith("datasets"):  # Hugging Face datasets.Dataset: its Arrow table, no copy
        _check_arrow_times(rows.data.table)
        return pl.from_arrow(rows.data.table)
    if isinstance(rows, Mapping):
        return [dict(rows)]
    if isinstance(rows, Iterable):
        out = []
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise ValidationError(i, "<row>", f"expected a mapping, got {type(r).__name__}")
            out.append(r)
        return out
    raise TypeError(f"cannot ingest {type(rows).__name__}: pass a DataFrame, Arrow table, "
                    "iterable of dicts or a JSONL path")


def _read_jsonl(path: str) -> list[dict]:
    out = []
    with open(path, "rb") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValidationError(len(out), "<line>", f"line {i + 1} is not UTF-8: {e.reason}") from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValidationError(len(out), "<line>", f"line {i + 1} is not JSON: {e.msg}") from None
            except RecursionError:
                raise ValidationError(len(out), "<line>", f"line {i + 1} nests arrays/objects deeper than "
                                                          "Python can read") from None
            if not isinstance(obj, dict):
                raise ValidationError(len(out), "<line>", f"line {i + 1} is not a JSON object")
            out.append(obj)
    return out


# ---------------------------------------------------------------- dict rows -> typed columns
def _py_value_error(f: Field, v: Any) -> str | None:
    """Why a Python value cannot be a value of field f (None if it can)."""
    if v is None:
        return None
    t = f.type
    if t in ("id", "text"):
        if isinstance(v, (bytes, bytearray)):
            return "bytes are not text; decode them as UTF-8 first"
        if not isinstance(v, str):
            return f"expected a string, got {type(v).__name__}"
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode text (lone surrogate from non-UTF-8 bytes?)"
    elif t == "int":
        if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            return f"expected an integer, got {v!r}"
        if abs(v) > MAX_SAFE_INT:
            return f"integer {v!r} is outside +-(2**53 - 1)"
    elif t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"expected a number, got {type(v).__name__}"
        if isinstance(v, int) and abs(v) > MAX_SAFE_INT and not _exact_double(v):
            return f"integer {_digits(v)} has no exact float value; a float field would round it (pass a float)"
    elif t == "bool":
        if not isinstance(v, bool):
            return f"expected true or false, got {v!r}"
    elif t == "ts":
        if isinstance(v, str):
            try:
                d = _parse_ts(v)
            except (ValueError, OverflowError):  # OverflowError: a UTC offset beyond year 1 or 9999
                return f"not an ISO 8601 timestamp: {v[:40]!r}"
        elif isinstance(v, dt.datetime):
            try:
                d = _to_utc_naive(v)
            except OverflowError:
                return f"timestamp {v.isoformat()} is out of range; must lie within {TS_RANGE}"
        else:
            return f"expected a datetime or ISO 8601 string, got {type(v).__name__}"
        return _ts_error(d)
    elif t in ("map_float", "map_int"):
        if not isinstance(v, Mapping):
            return f"expected a mapping of name -> number, got {type(v).__name__}"
    elif t == "json":
        if not isinstance(v, Mapping):
            return f"expected a JSON object, got {type(v).__name__}"
    return None


def _exact_double(v: int) -> bool:
    return abs(v) < 2**1024 and float(v) == v


def _digits(v: int) -> str:
    t = str(v)
    return t if len(t) <= 40 else f"{t[:20]}... ({len(t)} digits)"


def _parse_ts(v: str) -> dt.datetime:
    d = dt.datetime.fromisoformat(v.replace("Z", "+00:00") if v.endswith(("Z", "z")) else v)
    return _to_utc_naive(d)


def _to_utc_naive(d: dt.datetime) -> dt.datetime:
    # Naive datetimes are taken as UTC (documented); aware ones are converted.
    return d.astimezone(dt.timezone.utc).replace(tzinfo=None) if d.tzinfo else d


def _column_from_values(f: Field, vals: list, rows: list[int]) -> pl.Series:
    for i, v in enumerate(vals):  # per-row type check: input is already Python objects
        why = _py_value_error(f, v)
        if why:
            raise ValidationError(rows[i], f.name, why)
    t = f.type
    if t == "ts":
        vals = [None if v is None else (_parse_ts(v) if isinstance(v, str) else _to_utc_naive(v))
                for v in vals]
    elif t in MAP_DTYPE:
        vals = [None if v is None else [{"key": k, "value": x} for k, x in v.items()] for v in vals]
        for i, v in enumerate(vals):
            for e in v or ():
                if not isinstance(e["key"], str):
                    raise ValidationError(rows[i], f.name, f"map keys must be strings, got {e['key']!r}")
                if not e["key"].isascii():
                    try:
                        e["key"].encode("utf-8")
                    except UnicodeEncodeError:
                        raise ValidationError(rows[i], f.name, f"map key {e['key']!r} is not valid Unicode "
                                                               "text (lone surrogate?)") from None
                why = _py_value_error(Field(f.name, "int" if t == "map_int" else "float"), e["value"])
                if why or e["value"] is None:
                    raise ValidationError(rows[i], f.name, f"value of {e['key']!r}: {why or 'missing'}")
    elif t == "json":
        vals = [None if v is None else json_field_text(v, rows[i], f.name) for i, v in enumerate(vals)]
    elif t == "int":
        vals = [None if v is None else int(v) for v in vals]
    elif t == "float":
        vals = [None if v is None else float(v) for v in vals]
    return pl.Series(f.name, vals, dtype=DTYPES[t], strict=False)


def json_field_text(v: Any, row: int = 0, field: str = "json") -> str:
    """Canonical JSON text of a ``json`` field value within the documented limits
    (:data:`~rlhf_audit_kit.schema.MAX_JSON_DEPTH` levels, :data:`~rlhf_audit_kit.schema.MAX_JSON_CHARS`
    characters); ValidationError(row, field, reason) otherwise."""
    try:
        text = canonical_json(v, max_depth=MAX_JSON_DEPTH)
    except (TypeError, ValueError) as e:  # UnicodeEncodeError (lone surrogate) is a ValueError
        raise ValidationError(row, field, f"not a JSON object: {e}") from None
    if len(text) > MAX_JSON_CHARS:
        raise ValidationError(row, field, f"{len(text):,} characters of JSON exceed the limit of {MAX_JSON_CHARS:,}")
    return text


def _frames_from_dicts(rows: list[dict], kind: str | None) -> dict[str, pl.DataFrame]:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        k = kind or r.get("kind")
        if k is None:
            raise ValidationError(i, "kind", "missing: give each row a 'kind' or pass kind=")
        if kind and r.get("kind") not in (None, kind):
            raise ValidationError(i, "kind", f"row kind {r.get('kind')!r} differs from kind={kind!r}")
        if k not in KINDS:
            raise ValidationError(i, "kind", f"unknown kind {k!r}; known: {', '.join(KINDS)}")
        groups.setdefault(k, []).append(i)
    frames = {}
    for k, idx in groups.items():
        spec = KINDS[k]
        for i in idx:
            for key in rows[i]:
                if key not in spec.field_map and key not in STORE_COLUMNS:
                    raise ValidationError(i, key, f"unknown field for kind {k!r}")
        cols = {f.name: _column_from_values(f, [rows[i].get(f.name) for i in idx], idx)
                for f in spec.fields}
        frames[k] = pl.DataFrame([pl.Series(ROW, idx, dtype=pl.Int64), *cols.values()])
    return frames


# ---------------------------------------------------------------- frame columns -> typed columns
def _coerce(f: Field, s: pl.Series, rows: pl.Series) -> pl.Series:
    t, dtype = f.type, s.dtype
    if dtype == pl.Null:
        return pl.Series(f.name, [None] * len(s), dtype=DTYPES[t])
    if t in ("id", "text"):
        if dtype in (pl.Categorical,) or isinstance(dtype, pl.Enum):
            return s.cast(pl.Utf8)
        if dtype == pl.Binary:
            _err(rows, s.is_not_null(), f.name, lambda p: "bytes are not text; decode them as UTF-8 first")
        if dtype != pl.Utf8:
            _err(rows, s.is_not_null(), f.name, lambda p: f"expected a string, got {dtype}")
        return s
    if t == "int":
        if dtype.is_integer():
            if dtype == pl.UInt64:
                _err(rows, s > MAX_SAFE_INT, f.name, lambda p: f"integer {s[p]} is too large")
            return s.cast(pl.Int64)
        if dtype.is_float():
            bad = s.is_not_null() & (~s.is_finite() | (s != s.floor()))
            _err(rows, bad.fill_null(False), f.name, lambda p: f"expected an integer, got {s[p]!r}")
            _err(rows, (s.abs() > MAX_SAFE_INT).fill_null(False), f.name,
                 lambda p: f"integer {s[p]!r} is outside +-(2**53 - 1)")
            return s.cast(pl.Int64)
        _err(rows, s.is_not_null(), f.name, lambda p: f"expected an integer, got {dtype}")
    if t == "float":
        if dtype.is_numeric():
            if dtype.is_integer():
                _check_exact_floats(s, rows, f.name)
            return s.cast(pl.Float64)
        _err(rows, s.is_not_null(), f.name, lambda p: f"expected a number, got {dtype}")
    if t == "bool":
        if dtype == pl.Boolean:
            return s
        _err(rows, s.is_not_null(), f.name, lambda p: f"expected true or false, got {dtype}")
    if t == "ts":
        if isinstance(dtype, (pl.Datetime, pl.Date)):  # checked in its own unit: a cast could overflow
            _check_ticks(rows, s.to_physical(), "d" if dtype == pl.Date else dtype.time_unit, f.name)
        if isinstance(dtype, pl.Datetime):
            if dtype.time_zone:
                s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
            return s.cast(pl.Datetime("us"))
        if dtype == pl.Date:
            return s.cast(pl.Datetime("us"))
        if dtype == pl.Utf8:
            vals = s.to_list()
            return _column_from_values(f, vals, rows.to_list())
        _err(rows, s.is_not_null(), f.name, lambda p: f"expected a timestamp, got {dtype}")
    if t in MAP_DTYPE:
        if isinstance(dtype, getattr(pl, "Map", ())):  # polars >= 2 reads DuckDB MAP columns as Map
            s = s.cast(pl.List(pl.Struct({"key": dtype.key, "value": dtype.value})))
            dtype = s.dtype
        if isinstance(dtype, pl.Struct):  # dicts with fixed keys: polars infers a struct
            names = [fl.name for fl in dtype.fields]
            if not names:
                return pl.Series(f.name, [None] * len(s), dtype=MAP_DTYPE[t])
            entries = [pl.struct(pl.lit(n).alias("key"), pl.col(f.name).struct.field(n).alias("value"))
                       for n in names]
            s = (pl.DataFrame(s).select(
                pl.when(pl.col(f.name).is_null()).then(None).otherwise(
                    pl.concat_list(entries).list.filter(pl.element().struct.field("value").is_not_null())
                ).alias(f.name)).to_series())
            dtype = s.dtype
        if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct) and \
                {fl.name for fl in dtype.inner.fields} == {"key", "value"}:
            inner = {fl.name: fl.dtype for fl in dtype.inner.fields}
            want = pl.Int64 if t == "map_int" else pl.Float64
            if t == "map_float" and inner["value"].is_integer():
                flat = pl.DataFrame({ROW: rows, "m": s}).explode("m").select(
                    ROW, pl.col("m").struct.field("value"))
                _check_exact_floats(flat["value"], flat[ROW], f.name)
            if inner["key"] != pl.Utf8 or not inner["value"].is_numeric() and inner["value"] != pl.Null:
                _err(rows, s.is_not_null(), f.name, lambda p: f"expected name -> number, got {dtype}")
            try:
                return s.cast(pl.List(pl.Struct({"key": pl.Utf8, "value": want})), strict=True)
            except Exception:  # noqa: BLE001 - locate the value that does not fit
                return _column_from_values(f, [None if v is None else {e["key"]: e["value"] for e in v}
                                               for v in s.to_list()], rows.to_list())
        if dtype == pl.Utf8:  # JSON text of an object
            return _column_from_values(f, _loads_column(f, s, rows), rows.to_list())
        _err(rows, s.is_not_null(), f.name, lambda p: f"expected a mapping of name -> number, got {dtype}")
    if t == "json":
        if dtype == pl.Utf8:
            vals = _loads_column(f, s, rows)
        elif isinstance(dtype, pl.Struct):
            vals = s.to_list()
        elif dtype == pl.Object:
            vals = s.to_list()
        else:
            _err(rows, s.is_not_null(), f.name, lambda p: f"expected a JSON object, got {dtype}")
        return _column_from_values(f, vals, rows.to_list())
    raise AssertionError(t)


def _check_exact_floats(s: pl.Series, rows: pl.Series, field: str) -> None:
    """Integers bound for a float field must have an exact double value (beyond 2**53 most do not)."""
    big = (s > MAX_SAFE_INT) if s.dtype.is_unsigned_integer() else ((s > MAX_SAFE_INT) | (s < -MAX_SAFE_INT))
    big = big.fill_null(False)
    if big.any():  # rare: the few candidates are checked one by one, exactly
        inexact = pl.Series([not _exact_double(v) for v in s.filter(big).to_list()])
        at = big.arg_true().filter(inexact)
        if len(at):
            p = int(at[0])
            raise ValidationError(int(rows[p]), field, f"integer {s[p]} has no exact float value; a float "
                                                      "field would round it (pass a float)")


def _loads_column(f: Field, s: pl.Series, rows: pl.Series) -> list:
    out = []
    for i, v in enumerate(s.to_list()):
        if v is None:
            out.append(None)
            continue
        if len(v) > MAX_JSON_CHARS * 4:  # whitespace aside, no longer than the limit: refuse before parsing
            raise ValidationError(int(rows[i]), f.name, f"{len(v):,} characters of JSON exceed the limit "
                                                        f"of {MAX_JSON_CHARS:,}")
        try:
            out.append(json.loads(v, parse_int=_parse_int))
        except json.JSONDecodeError as e:
            raise ValidationError(int(rows[i]), f.name, f"not JSON: {e.msg}") from None
        except RecursionError:
            raise ValidationError(int(rows[i]), f.name, f"arrays/objects nested deeper than "
                                                        f"{MAX_JSON_DEPTH} levels") from None
    return out


def _check(kind: Kind, df: pl.DataFrame) -> None:
    rows = df[ROW]
    for f in kind.fields:
        s = df[f.name]
        if f.required:
            _err(rows, s.is_null(), f.name, lambda p: "missing (required)")
        if f.type in _MAX_CHARS:
            lim = _MAX_CHARS[f.type]
            n = s.str.len_chars()
            _err(rows, (n > lim).fill_null(False), f.name,
                 lambda p: f"{n[p]} characters exceed the limit of {lim}")
            if f.required and not f.allow_empty:
                _err(rows, (n == 0).fill_null(False), f.name, lambda p: "must not be empty")
        if f.choices:
            bad = s.is_not_null() & ~s.is_in(list(f.choices))
            _err(rows, bad, f.name, lambda p: f"must be one of {', '.join(f.choices)}; got {s[p]!r}")
        if f.type in ("int", "float"):
            if f.type == "float":
                _err(rows, (~s.is_finite()).fill_null(False), f.name,
                     lambda p: f"must be a finite number; got {s[p]!r}")
            else:
                _err(rows, (s.abs() > MAX_SAFE_INT).fill_null(False), f.name,
                     lambda p: f"integer {s[p]} is outside +-(2**53 - 1)")
            if f.min is not None:
                _err(rows, (s < f.min).fill_null(False), f.name, lambda p: f"must be >= {f.min}; got {s[p]}")
            if f.max is not None:
                _err(rows, (s > f.max).fill_null(False), f.name, lambda p: f"must be <= {f.max}; got {s[p]}")
        if f.type in MAP_DTYPE:
            n = s.list.len()
            _err(rows, (n > MAX_MAP_ENTRIES).fill_null(False), f.name,
                 lambda p: f"{n[p]} entries exceed the limit of {MAX_MAP_ENTRIES}")
            if f.required:
                _err(rows, (n == 0).fill_null(False), f.name, lambda p: "must not be empty")
            flat = pl.DataFrame({ROW: rows, "m": s}).explode("m").unnest("m").drop_nulls(subset=["key"])
            if flat.height:
                klen = flat["key"].str.len_chars()
                _err(flat[ROW], (klen == 0) | (klen > MAX_ID_CHARS), f.name,
                     lambda p: "map keys must have 1 to 512 characters")
                _err(flat[ROW], flat.select(pl.struct(ROW, "key").is_duplicated()).to_series(), f.name,
                     lambda p: f"duplicate key {flat['key'][p]!r}")
                _err(flat[ROW], flat["value"].is_null(), f.name, lambda p: f"value of {flat['key'][p]!r} is missing")
                if f.type == "map_float":
                    _err(flat[ROW], ~flat["value"].is_finite(), f.name,
                         lambda p: f"value of {flat['key'][p]!r} must be finite; got {flat['value'][p]}")
                else:
                    _err(flat[ROW], flat["value"].abs() > MAX_SAFE_INT, f.name,
                         lambda p: f"value of {flat['key'][p]!r} is outside +-(2**53 - 1)")
    for cols in kind.unique:
        dup = df.select(pl.struct(list(cols)).is_duplicated() & pl.all_horizontal(
            [pl.col(c).is_not_null() for c in cols])).to_series()
        if dup.any():  # name the second occurrence: the first one is legitimate
            first_seen = df.select(pl.struct(list(cols)).is_first_distinct()).to_series()
            _err(rows, dup & ~first_seen, cols[0], lambda p: f"duplicate {'/'.join(cols)} within the batch")
    _check_kind_rules(kind, df, rows)


def _check_kind_rules(kind: Kind, df: pl.DataFrame, rows: pl.Series) -> None:
    if kind.name == "annotation":
        bad = (df["submitted_at"] < df["shown_at"]).fill_null(False)
        _err(rows, bad, "submitted_at", lambda p: "is earlier than shown_at")
    elif kind.name == "rating":
        flat = pl.DataFrame({ROW: rows, "m": df["aspects"], "lo": df["scale_min"], "hi": df["scale_max"]}) \
            .explode("m").unnest("m")
        bad = ((flat["value"] < flat["lo"]) | (flat["value"] > flat["hi"])).fill_null(False)
        _err(flat[ROW], bad, "aspects", lambda p: f"{flat['key'][p]}={flat['value'][p]} is outside the scale")
    elif kind.name == "oversight":
        none = df["subject_seq"].is_null() & df["subject_run"].is_null() & df["subject_checkpoint"].is_null()
        _err(rows, none, "subject_seq", lambda p: "an oversight decision needs a subject "
             "(subject_seq, subject_run or subject_checkpoint)")
    elif kind.name == "checkpoint":
        ok = df["content_hash"].str.contains(r"^sha256:[0-9a-f]{64}$")
        _err(rows, ~ok.fill_null(True), "content_hash", lambda p: "must be 'sha256:' + 64 lowercase hex "
             "(use rlhf_audit_kit.hash_artifact)")
    elif kind.name == "custom":
        ok = df["name"].str.contains(r"^[A-Za-z][A-Za-z0-9_.:-]*$")
        _err(rows, ~ok.fill_null(True), "name", lambda p: "a kind name: letters, digits, _ . : -")
        _err(rows, ~df["payload"].str.starts_with("{").fill_null(True), "payload", lambda p: "must be a JSON object")


def _prepare_frame(kind: Kind, df: pl.DataFrame) -> pl.DataFrame:
    if ROW not in df.columns:
        df = df.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
    rows = df[ROW]
    for c in df.columns:
        if c not in kind.field_map and c not in STORE_COLUMNS and c != ROW:
            raise ValidationError(0, c, f"unknown field for kind {kind.name!r}")
    cols = [rows]
    for f in kind.fields:
        s = df[f.name] if f.name in df.columns else pl.Series(f.name, [None] * df.height)
        cols.append(_coerce(f, s, rows).alias(f.name))
    out = pl.DataFrame(cols)
    _check(kind, out)
    return out


def normalise(rows: Any, kind: str | None = None) -> dict[str, pl.DataFrame]:
    """Validate a batch; return kind -> typed frame (with the original row index in ``__row``).

    Raises :class:`~rlhf_audit_kit.errors.ValidationError` for the first bad row.
    """
    data = to_frame(rows)
    if isinstance(data, list):
        frames = _frames_from_dicts(data, kind)
        return {k: _prepare_frame(KINDS[k], f) for k, f in frames.items()}
    if kind is None:
        if "kind" not in data.columns:
            raise ValidationError(0, "kind", "missing: pass kind= for a DataFrame without a 'kind' column")
        kinds = data["kind"].unique().to_list()
        data = data.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
        if None in kinds:
            _err(data[ROW], data["kind"].is_null(), "kind", lambda p: "missing")
        out = {}
        for k in kinds:
            if k not in KINDS:
                _err(data[ROW], data["kind"] == k, "kind", lambda p: f"unknown kind {k!r}")
            part = data.filter(pl.col("kind") == k)
            present = [c for c in part.columns if c in KINDS[k].field_map or c == ROW]
            extra = [c for c in part.columns if c not in present and c not in STORE_COLUMNS]
            for c in extra:  # a mixed frame may carry other kinds' columns: they must be empty here
                _err(part[ROW], part[c].is_not_null(), c, lambda p, c=c: f"unknown field for kind {k!r}")
            out[k] = _prepare_frame(KINDS[k], part.select(present))
        return out
    if kind not in KINDS:
        raise ValidationError(0, "kind", f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return {kind: _prepare_frame(KINDS[kind], data)}
