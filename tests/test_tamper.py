"""Tamper detection: every audited table, every column, every kind of edit, named by first bad seq.

A store with every user kind and two signed snapshots is built once and closed; each case copies
the file, tampers with it through a raw DuckDB connection (as an attacker with file access would),
reopens it and verifies. The same for bundles (Parquet, note, manifest).
"""
from __future__ import annotations

import base64
import shutil

import duckdb
import polars as pl
import pytest

from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.ledger import verify as ledger_verify
from rlhf_audit_kit.ledger.checkpoint import Signer
from rlhf_audit_kit.schema import KINDS, USER_KINDS
from rlhf_audit_kit.store import open_store

from test_snapshot_verify import SIGNER, build, segment_file  # noqa: E402 - shared fixture builder

OTHER = Signer.from_seed("audit.example/log", bytes(range(1, 33)))
TABLES = ("log", *USER_KINDS, "snapshot")
LOG_COLUMNS = {"seq": "BIGINT", "kind": "VARCHAR", "ts": "TIMESTAMP", "entry": "BLOB", "leaf_hash": "BLOB"}
_SQL = {"id": "VARCHAR", "text": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN",
        "ts": "TIMESTAMP", "json": "JSON", "map_float": "MAP_FLOAT", "map_int": "MAP_INT"}


def columns(table: str) -> dict[str, str]:
    if table == "log":
        return LOG_COLUMNS
    return {"seq": "BIGINT", "ts": "TIMESTAMP", **{f.name: _SQL[f.type] for f in KINDS[table].fields}}


def changed(col: str, sqltype: str) -> str:
    """An SQL expression giving a different value of the column (also when it is NULL)."""
    q = f'"{col}"'
    return {
        "VARCHAR": f"coalesce({q}, '') || 'x'",
        "BIGINT": f"coalesce({q}, 0) + 1000" if col == "seq" else f"coalesce({q}, 0) + 1",
        "DOUBLE": f"coalesce({q}, 0) + 0.5",
        "BOOLEAN": f"NOT coalesce({q}, false)",
        "TIMESTAMP": f"coalesce({q}, TIMESTAMP '2020-01-01') + INTERVAL 1 SECOND",
        "BLOB": f"{q} || 'x'::BLOB" if col == "entry" else f"unhex(sha256({q}))",
        "JSON": "'{\"tampered\":1}'",
        "MAP_FLOAT": "MAP {'tampered': 1.5}",
        "MAP_INT": "MAP {'tampered': 2}",
    }[sqltype]


def expected_update_damage(table: str, col: str) -> str:
    if table == "log":
        return {"seq": "seq-order", "kind": "unknown-kind", "ts": "log-ts-mismatch",
                "entry": "typed-row-mismatch", "leaf_hash": "leaf-hash-mismatch"}[col]
    return "missing-typed-row" if col == "seq" else "typed-row-mismatch"


CASES = []
for _t in TABLES:
    for _pos in ("mid", "odd"):  # the middle row, and the next row with an odd seq (pair boundaries)
        for _c, _ty in columns(_t).items():
            CASES.append(pytest.param(_t, "update", _c, _pos, id=f"{_t}-update-{_c}-{_pos}"))
        for _op in ("delete", "insert", "swap"):
            CASES.append(pytest.param(_t, _op, None, _pos, id=f"{_t}-{_op}-{_pos}"))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("tamper")
    store, snaps = build(d / "base.duckdb", batches=4, snap_every=2)
    snaps[-1].export(d / "bundle").close()
    assert store.verify(SIGNER.verifier, workers=0).ok
    store.close()
    return d, [s.seq for s in snaps], [s.size for s in snaps]


@pytest.fixture()
def copy(base, tmp_path):
    d, _, _ = base
    path = tmp_path / "t.duckdb"
    shutil.copy(d / "base.duckdb", path)
    return path


def verify(path, key=SIGNER.verifier, ranged=True):
    """The store's report, checked (``ranged``) to be the same when its 66 events are derived in ranges
    of 29 (what a store of more than 400,000 events gets: bounded memory) as in one range."""
    with open_store(path, read_only=True, pseudonymize=False) as store:
        whole = store.verify(key, workers=0)
        if not ranged:
            return whole
        old = ledger_verify.RANGE_EVENTS
        ledger_verify.RANGE_EVENTS = 29  # odd: a leaf pair straddles each boundary
        try:
            ranged = store.verify(key, workers=0)
        finally:
            ledger_verify.RANGE_EVENTS = old
    assert "ranges" not in whole.timings
    assert_same_report(whole, ranged)
    return whole


def assert_same_report(a, b):
    key = lambda f: (f.damage, f.seq is None, f.seq or 0, f.checkpoint or 0, f.message)  # noqa: E731
    assert sorted(map(key, a.findings)) == sorted(map(key, b.findings)), (a.findings, b.findings)
    for attr in ("ok", "first_bad_seq", "damage", "message", "events", "signed_size", "signed_root",
                 "checkpoints_verified", "covered"):
        assert getattr(a, attr) == getattr(b, attr), attr


def rows_of(con, table):
    return [r[0] for r in con.execute(f'SELECT seq FROM "{table}" ORDER BY seq').fetchall()]


def test_untouched_store_verifies(copy):
    r = verify(copy)
    assert r.ok and r.checkpoints_verified == 2, r.message


def test_a_large_store_is_derived_in_ranges(copy, monkeypatch):
    monkeypatch.setattr(ledger_verify, "RANGE_EVENTS", 7)
    with open_store(copy, read_only=True, pseudonymize=False) as store:
        r = store.verify(SIGNER.verifier, workers=0)
        assert r.ok and r.timings["ranges"] == -(-store.size // 7), r.timings


@pytest.mark.parametrize("table, op, col, pos", CASES)
def test_tamper_store(copy, table, op, col, pos):
    con = duckdb.connect(str(copy))
    seqs = rows_of(con, table)
    assert len(seqs) >= 2, f"fixture has no rows in {table}"
    k = (len(seqs) - 1) // 2
    if pos == "odd":
        k = next((j for j in range(k, len(seqs) - 1) if seqs[j] % 2), k)
    t = seqs[k]
    q = f'"{table}"'
    if op == "update":
        con.execute(f'UPDATE {q} SET "{col}" = {changed(col, columns(table)[col])} WHERE seq = {t}')
        want = expected_update_damage(table, col)
    elif op == "delete":
        con.execute(f"DELETE FROM {q} WHERE seq = {t}")
        want = "seq-order" if table == "log" else "missing-typed-row"
    elif op == "insert":  # a forged duplicate: the log one altered, the typed one an exact copy
        if table == "log":
            con.execute(f"INSERT INTO log SELECT seq, kind, ts, entry || ' '::BLOB, leaf_hash FROM log WHERE seq = {t}")
            want = "seq-order"
        else:
            con.execute(f"INSERT INTO {q} SELECT * FROM {q} WHERE seq = {t}")
            want = "duplicate-typed-row"
    else:  # swap the seq of two rows of the table
        u = seqs[k + 1]
        con.execute(f"UPDATE {q} SET seq = CASE WHEN seq = {t} THEN {u} ELSE {t} END WHERE seq IN ({t}, {u})")
        want = None
    con.close()
    r = verify(copy, ranged=pos == "odd")  # (the row at a leaf-pair boundary: the other half checks less)
    assert not r.ok
    assert r.first_bad_seq == t, r.findings
    if want:
        assert r.damage == want, r.findings
    else:
        assert r.damage in {"typed-row-mismatch", "missing-typed-row", "typed-row-without-entry"}


def _rewrite_consistently(con, seq: int, table: str, col: str, old: str, new: str) -> None:
    """What a careful forger does: change a typed field, its entry and the leaf hash together."""
    con.execute(f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE seq = ?', [old, new, seq])
    con.execute("UPDATE log SET entry = encode(replace(decode(entry), ?, ?)) WHERE seq = ?", [old, new, seq])
    con.execute("UPDATE log SET leaf_hash = unhex(sha256('\\x00'::BLOB || entry)) WHERE seq = ?", [seq])


def test_consistent_rewrite_is_caught_by_the_signed_root(copy):
    con = duckdb.connect(str(copy))
    t = [s for s in rows_of(con, "annotation") if s % 2 == 0][1]
    old = con.execute("SELECT response_a FROM annotation WHERE seq = ?", [t]).fetchall()[0][0]
    _rewrite_consistently(con, t, "annotation", "response_a", old, old + " (edited)")
    con.close()
    r = verify(copy)
    assert r.first_bad_seq == t and r.damage == "root-mismatch", r.findings
    assert {f.damage for f in r.findings} >= {"root-mismatch", "bad-node"}


def test_altered_checkpoint_text(copy, base):
    _, snap_seqs, sizes = base
    s1 = snap_seqs[0]
    con = duckdb.connect(str(copy))
    note = con.execute("SELECT note FROM snapshot WHERE seq = ?", [s1]).fetchall()[0][0]
    root_b64 = note.split("\n")[2]
    forged = base64.b64encode(bytes(32)).decode()
    _rewrite_consistently(con, s1, "snapshot", "note", root_b64, forged)
    con.execute("UPDATE snapshot SET root_hash = ? WHERE seq = ?", ["00" * 32, s1])
    con.execute("UPDATE log SET entry = encode(replace(decode(entry), ?, ?)) WHERE seq = ?",
                [base64.b64decode(root_b64).hex(), "00" * 32, s1])
    con.execute("UPDATE log SET leaf_hash = unhex(sha256('\\x00'::BLOB || entry)) WHERE seq = ?", [s1])
    con.close()
    r = verify(copy)
    assert r.first_bad_seq == s1 and r.damage == "bad-signature", r.findings


def test_altered_signature(copy, base):
    _, snap_seqs, _ = base
    s1 = snap_seqs[0]
    con = duckdb.connect(str(copy))
    note = con.execute("SELECT note FROM snapshot WHERE seq = ?", [s1]).fetchall()[0][0]
    sig = note.rstrip("\n").rsplit(" ", 1)[1]
    i = len(sig) - 10
    bad = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1:]
    _rewrite_consistently(con, s1, "snapshot", "note", sig, bad)
    con.close()
    r = verify(copy)
    assert r.first_bad_seq == s1 and r.damage == "bad-signature", r.findings


def test_wrong_key(copy, base):
    _, snap_seqs, _ = base
    r = verify(copy, OTHER.verifier)
    assert r.first_bad_seq == snap_seqs[0] and r.damage == "bad-signature"


@pytest.mark.parametrize("op, level, idx, want", [
    ("delete", 1, 3, 6), ("delete", 3, 1, 8), ("delete", 5, 0, 0),
    ("update", 2, 2, 8), ("insert", 1, 5, 10)])
def test_tamper_merkle_node(copy, op, level, idx, want):
    con = duckdb.connect(str(copy))
    where = f"level = {level} AND idx = {idx}"
    assert con.execute(f"SELECT count(*) FROM merkle_node WHERE {where}").fetchall()[0][0] == 1
    if op == "delete":
        con.execute(f"DELETE FROM merkle_node WHERE {where}")
    elif op == "update":
        con.execute(f"UPDATE merkle_node SET hash = unhex(sha256(hash)) WHERE {where}")
    else:
        con.execute(f"INSERT INTO merkle_node SELECT level, idx, unhex(sha256(hash)) FROM merkle_node WHERE {where}")
    con.close()
    r = verify(copy)
    assert r.first_bad_seq == want and r.damage == "bad-node", r.findings


# ------------------------------------------------------------------ bundles
@pytest.fixture()
def bundle_copy(base, tmp_path):
    d, _, _ = base
    shutil.copytree(d / "bundle", tmp_path / "bundle")
    return tmp_path / "bundle"


def verify_bundle(path, key=SIGNER.verifier):
    with open_bundle(path) as b:
        return b.verify(key, workers=0)


def test_untouched_bundle_verifies(bundle_copy):
    assert verify_bundle(bundle_copy).ok


def _edit_parquet(path, seq, column, fn):
    df = pl.read_parquet(path)
    df = df.with_columns(pl.when(pl.col("seq") == seq).then(fn(pl.col(column))).otherwise(pl.col(column))
                         .alias(column))
    df.write_parquet(path)


@pytest.mark.parametrize("file, column, want", [
    ("log.parquet", "entry", "typed-row-mismatch"),
    ("log.parquet", "leaf_hash", "leaf-hash-mismatch"),
    ("annotation.parquet", "response_b", "typed-row-mismatch"),
    ("train_step.parquet", "step", "typed-row-mismatch"),
    ("reward_score.parquet", "score", "typed-row-mismatch")])
def test_tamper_bundle_parquet(bundle_copy, file, column, want):
    file = segment_file(bundle_copy, file.removesuffix(".parquet"))
    seqs = pl.read_parquet(bundle_copy / file)["seq"].to_list()
    t = seqs[len(seqs) // 2]
    dtype = pl.read_parquet_schema(bundle_copy / file)[column]
    if dtype == pl.Binary:
        fn = (lambda c: c.bin.encode("hex").str.replace("^..", "ff").str.decode("hex")) if column == "leaf_hash" \
            else (lambda c: pl.concat_str([c.cast(pl.Utf8), pl.lit(" ")]).cast(pl.Binary))
    elif dtype == pl.Utf8:
        fn = lambda c: c + "x"  # noqa: E731
    else:
        fn = lambda c: c + 1  # noqa: E731
    _edit_parquet(bundle_copy / file, t, column, fn)
    r = verify_bundle(bundle_copy)
    assert r.first_bad_seq == t and r.damage == want, r.findings
    assert "manifest-mismatch" in {f.damage for f in r.findings}


def test_bundle_deleted_log_row(bundle_copy):
    log = bundle_copy / segment_file(bundle_copy, "log")
    df = pl.read_parquet(log)
    df.filter(pl.col("seq") != 20).write_parquet(log)
    r = verify_bundle(bundle_copy)
    assert r.first_bad_seq == 20 and r.damage == "seq-order"


@pytest.mark.parametrize("what", ["text", "signature"])
@pytest.mark.parametrize("name", ["note", "checkpoint.note"])  # the signed note, and its copy
def test_tamper_bundle_note(bundle_copy, what, name):
    import json
    name = json.loads((bundle_copy / "manifest.json").read_text())["note"] if name == "note" else name
    note = (bundle_copy / name).read_text()
    lines = note.split("\n")
    if what == "text":
        lines[1] = str(int(lines[1]) - 1)
    else:
        sig = lines[-2].rsplit(" ", 1)
        i = len(sig[1]) - 10
        lines[-2] = sig[0] + " " + sig[1][:i] + ("A" if sig[1][i] != "A" else "B") + sig[1][i + 1:]
    (bundle_copy / name).write_text("\n".join(lines))
    r = verify_bundle(bundle_copy)
    assert r.damage == "bad-signature" and r.first_bad_seq is None, r.findings


def test_bundle_wrong_key(bundle_copy, base):
    _, snap_seqs, _ = base
    r = verify_bundle(bundle_copy, OTHER.verifier)
    assert r.damage == "bad-signature" and r.first_bad_seq == snap_seqs[0]


def test_bundle_manifest_edit(bundle_copy):
    import json
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["files"][segment_file(bundle_copy, "annotation")]["sha256"] = "0" * 64
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    r = verify_bundle(bundle_copy)
    assert r.damage == "manifest-mismatch" and r.first_bad_seq is None
