"""Canonical bytes of an event: RFC 8785 (JSON Canonicalization Scheme), version 1.

An entry of the log is the UTF-8 bytes of the JCS serialisation of::

    {"data": {<every field of the kind, null when absent>}, "kind": <kind>,
     "seq": <0-based index in the log>, "ts": "<UTC time, YYYY-MM-DDTHH:MM:SS.ffffffZ>", "v": 1}

* keys sorted by UTF-16 code units, no whitespace, strings with JSON's minimal escaping and
  lowercase ``\\u00xx`` for other control characters, non-ASCII characters as raw UTF-8;
* numbers as ECMAScript prints them (``1``, ``0.5``, ``1e+21``, ``1e-7``); integers must be
  within +-(2**53 - 1) so that every JCS implementation reads them back exactly;
* timestamps as strings with exactly six fractional digits; maps (``metrics``, ``aspects``)
  as JSON objects; ``json`` fields as JSON objects;
* a field added to a kind after the kind was first recorded (``Field.omit_null``, e.g.
  ``train_step.logged_at``) is in ``data`` only when it has a value, so every entry written before
  the field existed re-encodes to the same bytes: the format stays version 1.

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

from .schema import MAX_JSON_DEPTH, MAX_SAFE_INT, Kind

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


def canonical_json(obj: Any, *, max_depth: int = MAX_JSON_DEPTH) -> str:
    """Serialise a JSON value by RFC 8785. Raises ValueError/TypeError for non-JSON values, and
    ValueError for arrays and objects nested deeper than ``max_depth`` (long before Python's
    recursion limit would end the process of a hostile input with a RecursionError).

    >>> canonical_json({"z": [1, 2.5], "a": "x\\ny"})
    '{"a":"x\\\\ny","z":[1,2.5]}'
    """
    try:
        return _canonical(obj, max_depth)
    except _TooDeep:
        raise ValueError(f"arrays/objects nested deeper than {max_depth} levels") from None


class _TooDeep(Exception):
    pass


def _canonical(obj: Any, room: int) -> str:
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
    if isinstance(obj, (dict, list, tuple)) and room <= 0:
        raise _TooDeep
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"object keys must be strings, got {type(k).__name__}")
        items = sorted(obj.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(_canonical(k, room) + ":" + _canonical(v, room - 1) for k, v in items) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_canonical(v, room - 1) for v in obj) + "]"
    raise TypeError(f"{type(obj).__name__} is not a JSON value")


def encode_event(kind: str, seq: int, ts: str, data: dict[str, Any]) -> bytes:
    """Canonical bytes of one event whose ``data`` is already in normal form (see module doc).

    >>> encode_event("custom", 0, "2026-01-01T00:00:00.000000Z", {"name": "x", "payload": {}})
    b'{"data":{"name":"x","payload":{}},"kind":"custom","seq":0,"ts":"2026-01-01T00:00:00.000000Z","v":1}'
    """
    env = {"data": data, "kind": kind, "seq": seq, "ts": ts, "v": ENCODING_VERSION}
    return canonical_json(env, max_depth=MAX_JSON_DEPTH + 2).encode("utf-8")  # + envelope and data


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


_POSITIONAL = r"^-?[0-9]+\.[0-9]+$"


def _number_series(s: pl.Series) -> pl.Series:
    """ECMAScript text of a float column, vectorised for the common case.

    polars prints the shortest round-trip digits, as Python's repr does. Where it prints a
    positional decimal (1e-4 <= |x| < 1e16) ECMAScript prints the same digits, except that an
    integral value loses its ".0" and zero has no sign. Other values (exponent form) are rare and
    are formatted one by one by :func:`es_number`.
    """
    text = s.cast(pl.Utf8)
    frame = pl.DataFrame({"x": s, "t": text})
    out = frame.select(
        pl.when(pl.col("x") == 0).then(pl.lit("0"))
        .when(pl.col("t").str.contains(_POSITIONAL)).then(pl.col("t").str.strip_suffix(".0"))
        .otherwise(None).alias(s.name)).to_series()
    todo = (out.is_null() & s.is_not_null()).arg_true()
    if len(todo):
        vals = s.gather(todo).to_list()
        out = out.scatter(todo, pl.Series([es_number(v) for v in vals], dtype=pl.Utf8))
    return out


def _map_series(s: pl.Series) -> pl.Series:
    """Canonical JSON objects of a ``list[struct{key, value}]`` column, vectorised.

    Keys sort by UTF-16 code units (RFC 8785); polars sorts by code points, which agrees unless a
    key holds characters at or above U+E000, so such rows are done one by one.
    """
    n = len(s)
    flat = (pl.DataFrame({"__i": pl.int_range(n, eager=True, dtype=pl.Int64), "m": s})
            .explode("m").filter(pl.col("m").is_not_null())
            .select("__i", pl.col("m").struct.field("key").alias("k"), pl.col("m").struct.field("value").alias("v")))
    out = pl.Series(s.name, [None] * n, dtype=pl.Utf8)
    lens = s.list.len()
    empty = (lens == 0).fill_null(False).arg_true()
    if len(empty):
        out = out.scatter(empty, pl.Series(["{}"] * len(empty), dtype=pl.Utf8))
    if flat.height:
        vtext = _number_series(flat["v"]) if flat["v"].dtype.is_float() else flat["v"].cast(pl.Utf8)
        flat = flat.with_columns(vtext.alias("vt"))
        odd_rows = flat.filter(pl.col("k").str.contains("[\ue000-\U0010ffff]"))["__i"].unique()
        joined = (flat.sort("__i", "k")
                  .group_by("__i", maintain_order=True)
                  .agg(pl.concat_str([_json_str_expr("k"), pl.lit(":"), pl.col("vt")]).str.join(",").alias("j"))
                  .with_columns(pl.concat_str([pl.lit("{"), pl.col("j"), pl.lit("}")]).alias("j")))
        out = out.scatter(joined["__i"], joined["j"])
        if len(odd_rows):
            vals = s.gather(odd_rows).to_list()
            out = out.scatter(odd_rows, pl.Series([canonical_json({e["key"]: e["value"] for e in v}) for v in vals],
                                                   dtype=pl.Utf8))
    return out


def _ts_expr(name: str) -> pl.Expr:
    return pl.col(name).dt.strftime(TS_FORMAT)


def field_json_columns(kind: Kind, df: pl.DataFrame) -> pl.DataFrame:
    """Each field of ``df`` (normalised dtypes) as its JSON text, ``null`` for missing values
    (a null, not the text, for ``omit_null`` fields)."""
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
            e = pl.concat_str([pl.lit('"'), _ts_expr(name), pl.lit('"')])
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
        exprs.append((e if f.omit_null else e.fill_null(pl.lit("null"))).alias(name))
    out = df.select(exprs) if exprs else pl.DataFrame()
    if python_cols:
        out = out.with_columns([s if kind.field_map[s.name].omit_null else s.fill_null("null")
                                for s in python_cols.values()])
    return out


_SIMPLE = ("id", "text", "int", "bool", "ts")


def _fast_path_ok(kind: Kind, df: pl.DataFrame) -> bool:
    """polars' JSON writer escapes strings exactly as RFC 8785 and prints ints and booleans the
    same way; it cannot print ECMAScript floats or our map/json fields, so those must be empty.
    It cannot leave out a key row by row either: an ``omit_null`` field is set everywhere or nowhere."""
    return all((f.type in _SIMPLE or df[f.name].null_count() == df.height)
               and (not f.omit_null or df[f.name].null_count() in (0, df.height)) for f in kind.fields)


def _data_parts(kind: Kind, names: list[str]) -> list[pl.Expr]:
    """``"name":<json>`` pieces of the data object, with their commas. An ``omit_null`` field adds
    nothing when null; the first always-present field is the anchor: omitted-when-null fields sorted
    before it carry their comma after them, the others before."""
    anchor = next(n for n in names if not kind.field_map[n].omit_null)
    parts: list[pl.Expr] = []
    before = True
    for name in names:
        key = _escape_str(name) + ":"
        if name == anchor:
            before = False
            parts += [pl.lit(key), pl.col(name)]
        elif not kind.field_map[name].omit_null:
            parts += [pl.lit("," + key), pl.col(name)]
        else:
            piece = [pl.lit(key), pl.col(name), pl.lit(",")] if before else [pl.lit("," + key), pl.col(name)]
            parts.append(pl.when(pl.col(name).is_null()).then(pl.lit("")).otherwise(pl.concat_str(piece)))
    return parts


def encode_frame(kind: Kind, df: pl.DataFrame, seq: pl.Series | pl.Expr, ts: pl.Series | str) -> pl.Series:
    """Canonical entries (Utf8) of a batch of rows of one kind, in row order.

    ``df`` has every field of the kind in its normalised dtype (see validate.normalise);
    ``seq`` gives each row's sequence number and ``ts`` the recording time (one string for the
    batch, or a Utf8 Series in TS format, one per row).
    """
    names = sorted(kind.names, key=_utf16_key)
    seq_s = seq if isinstance(seq, pl.Series) else df.select(seq).to_series()
    if _fast_path_ok(kind, df):
        names = [n for n in names if not (kind.field_map[n].omit_null and df[n].null_count() == df.height)]
        # One pass of polars' JSON writer over a nested struct laid out in canonical key order.
        types = kind.field_map
        fields = [(_ts_expr(n) if types[n].type == "ts" else pl.col(n)).alias(n) for n in names]
        frame = df.select(fields).with_columns(seq_s.alias("__seq"))
        if isinstance(ts, pl.Series):
            frame = frame.with_columns(ts.alias("__ts"))
        ts_e = pl.col("__ts") if isinstance(ts, pl.Series) else pl.lit(ts)
        envelope = pl.struct(pl.struct(names).alias("data"), pl.lit(kind.name).alias("kind"),
                             pl.col("__seq").alias("seq"), ts_e.alias("ts"),
                             pl.lit(ENCODING_VERSION, dtype=pl.Int64).alias("v"))
        return frame.select(envelope.struct.json_encode().alias("entry")).to_series()
    cols = field_json_columns(kind, df)
    parts: list[pl.Expr] = [pl.lit('{"data":{'), *_data_parts(kind, names)]
    parts.append(pl.lit('},"kind":' + _escape_str(kind.name) + ',"seq":'))
    parts.append(pl.col("__seq").cast(pl.Utf8))
    parts.append(pl.lit(',"ts":"'))
    parts.append(pl.col("__ts") if isinstance(ts, pl.Series) else pl.lit(ts))
    parts.append(pl.lit(f'","v":{ENCODING_VERSION}}}'))
    frame = cols.with_columns(seq_s.alias("__seq"))
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
        if v is None and f.omit_null:
            continue
        if v is not None:
            if f.type == "ts":
                v = v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            elif f.type in ("map_float", "map_int"):
                v = {e["key"]: e["value"] for e in v}
            elif f.type == "json":
                v = json.loads(v, parse_int=_parse_int)
        out[f.name] = v
    return out
