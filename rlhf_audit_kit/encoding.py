"""Canonical bytes of an event: RFC 8785 (JSON Canonicalization Scheme), version 1.

An entry of the log is the UTF-8 bytes of the JCS serialisation of::

    {"data": {<every field of the kind, null when absent>}, "kind": <kind>,
     "seq": <0-based index in the log>, "ts": "<UTC time, YYYY-MM-DDTHH:MM:SS.ffffffZ>", "v": 1}

* keys sorted by UTF-16 code units, no whitespace, strings with JSON's minimal escaping and
  lowercase ``\\u00xx`` for other control characters, non-ASCII characters as raw UTF-8;
* numbers as ECMAScript prints them (``1``, ``0.5``, ``1e+21``, ``1e-7``); integers must be
  within +-(2**53 - 1) so that every JCS implementation reads them back exactly;
* timestamps as strings with exactly six fractional digits; maps (``metrics``, ``aspects``)
  as JSON objects; ``json`` fields as JSON objects.

Because the encoding is a public standard, any JCS implementation re-creates the bytes from the
decoded JSON and anyone can recompute ``leaf_hash = SHA-256(0x00 || entry)`` without this package.
The columnar encoder (:func:`encode_frame`) builds the same bytes for a whole batch at once with
polars string kernels; a property test checks it against :func:`canonical_json` and the
independent ``rfc8785`` package.

>>> canonical_json({"b": 1.0, "a": [True, None, "é"], "c": 1e21})
'{"a":[true,null,"é"],"b":1,"c":1e+21}'
"""
from __future__ import annotations

import json
import math
from typing import Any

import polars as pl

from .schema import KINDS, MAX_SAFE_INT, Kind

ENCODING_VERSION = 1
ENCODING_NAME = "rlhf-audit-kit/jcs-v1"
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"  # polars strftime; datetime uses %f for the same digits

# JSON's minimal escaping, as JCS/ECMAScript JSON.stringify require.
_SHORT = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
_ESC_FROM = ["\\", '"'] + [chr(i) for i in range(0x20)]
_ESC_TO = ["\\\\", '\\"'] + [_SHORT.get(i, f"\\u{i:04x}") for i in range(0x20)]
_NEEDS_ESC = r'[\\"\x00-\x1f]'


def es_number(x: int | float) -> str:
    """Format a number as ECMAScript's Number.prototype.toString does (RFC 8785 section 3.2.2.3).

    >>> [es_number(v) for v in (0.0, -0.0, 1.0, 0.1, 1e21, 1.5e-7, 123456789012345680000.0)]
    ['0', '0', '1', '0.1', '1e+21', '1.5e-7', '123456789012345680000']
    """
    if isinstance(x, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(x, int):
        if abs(x) > MAX_SAFE_INT:
            # JSON readers give integral doubles such as 1e16 back as ints: print them as doubles;
            # refuse ints that no double holds, which no JCS implementation could reproduce.
            if abs(x) < 2**1024 and float(x) == x:
                return es_number(float(x))
            raise ValueError(f"integer {x} is outside +-(2**53 - 1) and not exactly a double")
        return str(x)
    if not math.isfinite(x):
        raise ValueError(f"{x!r} is not a finite number")
    if x == 0:
        return "0"
    r = repr(float(x))  # shortest round-trip digits, as ECMAScript requires
    sign = ""
    if r[0] == "-":
        sign, r = "-", r[1:]
    mant, _, exp = r.partition("e")
    ip, _, fp = mant.partition(".")
    if fp == "0":
        fp = ""
    digits = ip + fp
    point = len(ip) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        es = f"e{'+' if e > 0 else '-'}{abs(e)}"
        out = digits + es if k == 1 else digits[0] + "." + digits[1:] + es
    return sign + out


_escape_str = json.encoder.encode_basestring  # C-accelerated; escapes exactly as JCS (lowercase hex)


def _utf16_key(s: str) -> bytes:
    return s.encode("utf-16-be", "surrogatepass")


def canonical_json(obj: Any) -> str:
    """Serialise a JSON value by RFC 8785. Raises ValueError/TypeError for non-JSON values.

    >>> canonical_json({"z": [1, 2.5], "a": "x\\ny"})
    '{"a":"x\\\\ny","z":[1,2.5]}'
    """
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        obj.encode("utf-8")  # lone surrogates are not Unicode text: fail loudly
        return _escape_str(obj)
    if isinstance(obj, (int, float)):
        return es_number(obj)
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"object keys must be strings, got {type(k).__name__}")
        items = sorted(obj.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(canonical_json(k) + ":" + canonical_json(v) for k, v in items) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(canonical_json(v) for v in obj) + "]"
    raise TypeError(f"{type(obj).__name__} is not a JSON value")


def encode_event(kind: str, seq: int, ts: str, data: dict[str, Any]) -> bytes:
    """Canonical bytes of one event whose ``data`` is already in normal form (see module doc).

    >>> encode_event("custom", 0, "2026-01-01T00:00:00.000000Z", {"name": "x", "payload": {}})
    b'{"data":{"name":"x","payload":{}},"kind":"custom","seq":0,"ts":"2026-01-01T00:00:00.000000Z","v":1}'
    """
    env = {"data": data, "kind": kind, "seq": seq, "ts": ts, "v": ENCODING_VERSION}
    return canonical_json(env).encode("utf-8")


def _parse_int(text: str) -> int | float:
    # JCS numbers are doubles: an integer literal beyond 2**53 is read as the double it denotes.
    v = int(text)
    return v if abs(v) <= MAX_SAFE_INT else float(text)


def decode_entry(entry: bytes | str) -> dict[str, Any]:
    """Parse an entry back into ``{"data", "kind", "seq", "ts", "v"}``; exact inverse of encoding.

    >>> e = encode_event("custom", 3, "2026-01-01T00:00:00.000000Z", {"name": "x", "payload": {"a": 1}})
    >>> encode_event(**{k: v for k, v in decode_entry(e).items() if k != "v"}) == e
    True
    """
    obj = json.loads(entry, parse_int=_parse_int)
    if not isinstance(obj, dict) or obj.get("v") != ENCODING_VERSION:
        raise ValueError(f"not an entry of encoding version {ENCODING_VERSION}")
    return obj


# ---------------------------------------------------------------- columnar encoder
def _json_str_expr(col: str) -> pl.Expr:
    c = pl.col(col)
    # Most texts need no escaping; polars evaluates replace_many only where the regex matched.
    escaped = pl.when(c.str.contains(_NEEDS_ESC)).then(c.str.replace_many(_ESC_FROM, _ESC_TO)).otherwise(c)
    return pl.concat_str([pl.lit('"'), escaped, pl.lit('"')])


def _number_series(s: pl.Series) -> pl.Series:
    # ECMAScript number formatting has no polars kernel; format the non-null values in Python.
    vals = s.to_list()
    return pl.Series(s.name, [None if v is None else es_number(v) for v in vals], dtype=pl.Utf8)


def _map_series(s: pl.Series) -> pl.Series:
    out = []
    for entries in s.to_list():
        if entries is None:
            out.append(None)
        else:
            out.append(canonical_json({e["key"]: e["value"] for e in entries}))
    return pl.Series(s.name, out, dtype=pl.Utf8)


def field_json_columns(kind: Kind, df: pl.DataFrame) -> pl.DataFrame:
    """Each field of ``df`` (normalised dtypes) as its JSON text, ``null`` for missing values."""
    exprs: list[pl.Expr] = []
    python_cols: dict[str, pl.Series] = {}
    for f in kind.fields:
        name = f.name
        if f.type in ("id", "text"):
            e = _json_str_expr(name)
        elif f.type == "int":
            e = pl.col(name).cast(pl.Utf8)
        elif f.type == "bool":
            e = pl.when(pl.col(name)).then(pl.lit("true")).otherwise(pl.lit("false"))
            e = pl.when(pl.col(name).is_null()).then(None).otherwise(e)
        elif f.type == "ts":
            e = pl.concat_str([pl.lit('"'), pl.col(name).dt.strftime(TS_FORMAT), pl.lit('"')])
        elif f.type == "json":
            e = pl.col(name)  # already canonical JSON text (normalised at validation)
        elif f.type == "float":
            python_cols[name] = _number_series(df[name])
            continue
        elif f.type in ("map_float", "map_int"):
            python_cols[name] = _map_series(df[name])
            continue
        else:  # pragma: no cover - schema types are closed
            raise AssertionError(f.type)
        exprs.append(e.fill_null(pl.lit("null")).alias(name))
    out = df.select(exprs) if exprs else pl.DataFrame()
    if python_cols:
        out = out.with_columns([s.fill_null("null") for s in python_cols.values()])
    return out


def encode_frame(kind: Kind, df: pl.DataFrame, seq: pl.Series | pl.Expr, ts: pl.Series | str) -> pl.Series:
    """Canonical entries (Utf8) of a batch of rows of one kind, in row order.

    ``df`` has every field of the kind in its normalised dtype (see validate.normalise);
    ``seq`` gives each row's sequence number and ``ts`` the recording time (one string for the
    batch, or a Utf8 Series in TS format, one per row).
    """
    cols = field_json_columns(kind, df)
    names = sorted(kind.names, key=_utf16_key)
    parts: list[pl.Expr] = [pl.lit('{"data":{')]
    for i, name in enumerate(names):
        parts.append(pl.lit(("," if i else "") + _escape_str(name) + ":"))
        parts.append(pl.col(name))
    parts.append(pl.lit('},"kind":' + _escape_str(kind.name) + ',"seq":'))
    parts.append(pl.col("__seq").cast(pl.Utf8))
    parts.append(pl.lit(',"ts":"'))
    parts.append(pl.col("__ts") if isinstance(ts, pl.Series) else pl.lit(ts))
    parts.append(pl.lit(f'","v":{ENCODING_VERSION}}}'))
    frame = cols.with_columns(seq.alias("__seq") if isinstance(seq, pl.Series) else seq.alias("__seq"))
    if isinstance(ts, pl.Series):
        frame = frame.with_columns(ts.alias("__ts"))
    return frame.select(pl.concat_str(parts).alias("entry")).to_series()


def normal_data(kind: Kind, row: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` object of an entry for one typed row (as polars ``rows(named=True)`` gives it).

    Slow, one row at a time: the reference the columnar encoder is tested against.
    """
    out: dict[str, Any] = {}
    for f in kind.fields:
        v = row.get(f.name)
        if v is not None:
            if f.type == "ts":
                v = v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            elif f.type in ("map_float", "map_int"):
                v = {e["key"]: e["value"] for e in v}
            elif f.type == "json":
                v = json.loads(v, parse_int=_parse_int)
        out[f.name] = v
    return out
