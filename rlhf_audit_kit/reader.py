"""The read API shared by a live store and a snapshot bundle.

Both hold the same tables (``log`` and one typed table per kind); everything here is written in
terms of ``self.sql(query, params)`` so the analysis, the apps and the compliance notebook take
either.

>>> import tempfile, os
>>> from rlhf_audit_kit import open_store
>>> s = open_store(os.path.join(tempfile.mkdtemp(), "r.duckdb"), pseudonymize=False)
>>> _ = s.append({"kind": "dataset", "name": "d", "version": "1"})
>>> s.datasets().select("name", "version").row(0), s.counts()
(('d', '1'), {'dataset': 1})
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl

from . import encoding
from .schema import KINDS


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def cursor_sql(con, query: str, params: Any = None) -> pl.DataFrame:
    """Run ``query`` on a fresh cursor of the DuckDB connection ``con`` and return polars (a cursor per
    call lets threads share one connection)."""
    cur = con.cursor()
    try:
        return cur.sql(query, params=params).pl()
    finally:
        cur.close()


def typed_columns(kind, *, maps: str, json: str | None = None) -> list[str]:
    """``seq``, ``ts`` and every field of ``kind`` as SQL select items, in table order.

    Map fields go through the function ``maps`` (``map_entries`` to hand polars lists of key/value
    structs, ``map_from_entries`` to build DuckDB maps from them); JSON fields are cast to ``json``.
    """
    out = ["seq", "ts"]
    for f in kind.fields:
        q = _quote(f.name)
        if f.type.startswith("map_"):
            out.append(f"{maps}({q}) AS {q}")
        elif f.type == "json" and json:
            out.append(f"{q}::{json} AS {q}")
        else:
            out.append(q)
    return out


def typed_select_list(kind) -> str:
    """Columns of a typed table as polars-friendly SQL (maps as lists of key/value structs)."""
    return ", ".join(typed_columns(kind, maps="map_entries", json="VARCHAR"))


class RecordReader:
    """Typed accessors over ``self.sql``; mixed into AuditStore and Bundle."""

    _size: int

    def sql(self, query: str, params: Any = None) -> pl.DataFrame:  # pragma: no cover - overridden
        raise NotImplementedError

    def table(self, kind: str, *, lazy: bool = False) -> pl.DataFrame | pl.LazyFrame:
        """The typed table of ``kind`` as polars (maps as lists of ``{key, value}``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        df = self.sql(f"SELECT {typed_select_list(KINDS[kind])} FROM {_quote(kind)} ORDER BY seq")
        return df.lazy() if lazy else df

    def annotations(self, *, lazy: bool = False):
        """Pairwise preference annotations (typed table ``annotation``)."""
        return self.table("annotation", lazy=lazy)

    def ratings(self, *, lazy: bool = False):
        return self.table("rating", lazy=lazy)

    def reward_scores(self, *, lazy: bool = False):
        return self.table("reward_score", lazy=lazy)

    def train_steps(self, *, lazy: bool = False):
        return self.table("train_step", lazy=lazy)

    def checkpoints(self, *, lazy: bool = False):
        return self.table("checkpoint", lazy=lazy)

    def datasets(self, *, lazy: bool = False):
        return self.table("dataset", lazy=lazy)

    def oversight(self, *, lazy: bool = False):
        return self.table("oversight", lazy=lazy)

    def train_metrics(self, run_id: str | None = None) -> pl.DataFrame:
        """Training metrics in long form: ``seq, run_id, algorithm, step, metric, value``."""
        where, params = ("WHERE run_id = ?", [run_id]) if run_id else ("", None)
        return self.sql("SELECT seq, run_id, algorithm, step, unnest(map_keys(metrics)) AS metric, "
                        f"unnest(map_values(metrics)) AS value FROM train_step {where} ORDER BY seq, metric",
                        params)

    def counts(self) -> dict[str, int]:
        """Events per kind."""
        rows = self.sql("SELECT kind, count(*) AS n FROM log GROUP BY kind ORDER BY kind").rows()
        return dict(rows)

    def time_span(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        return tuple(self.sql("SELECT min(ts), max(ts) FROM log").row(0))

    def entry(self, seq: int) -> bytes:
        """Canonical bytes of event ``seq``."""
        row = self.sql("SELECT entry FROM log WHERE seq = ?", [seq])
        if row.height == 0:
            raise IndexError(f"no event with seq {seq} (size {self._size})")
        return bytes(row["entry"][0])

    def event(self, seq: int) -> dict:
        """The decoded event ``seq``: ``{"data", "kind", "seq", "ts", "v"}``."""
        return encoding.decode_entry(self.entry(seq))

