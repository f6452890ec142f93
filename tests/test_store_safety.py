"""One writer per store file: a second open in this process returns the open store or is refused, a
handle that bypasses the registry can never write a seq twice or overspend a privacy budget, and a
store held by another process is refused with a typed error naming that process."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from rlhf_audit_kit import store as store_mod
from rlhf_audit_kit.errors import (AuditKitError, BudgetExceededError, StoreInUseError, StoreLockedError,
                                   ValidationError)
from rlhf_audit_kit.store import open_store

from factories import annotation


def _batch(start, n):
    return [annotation(i) for i in range(start, start + n)]


def _log_is_gap_free(s):
    seqs = s.sql("SELECT seq FROM log ORDER BY seq")["seq"].to_list()
    return seqs == list(range(len(seqs))) and len(seqs) == s.size


# ------------------------------------------------------------------ one writer per file per process
def test_reopening_returns_the_open_store_and_interleaved_writes_verify(tmp_path, keys_dir):
    path = tmp_path / "audit.duckdb"
    a = open_store(path, keys=keys_dir)
    os.symlink(path, tmp_path / "link.duckdb")
    spellings = [path, str(path), tmp_path / "." / "audit.duckdb", tmp_path / "link.duckdb"]
    handles = [open_store(p, keys=keys_dir) for p in spellings]  # a notebook cell re-run, other spellings
    assert all(h is a for h in handles)
    b = handles[-1]
    assert a.extend(_batch(0, 5)) == range(0, 5)
    assert b.extend(_batch(5, 3)) == range(5, 8)  # never seq 0 twice
    assert a.append(annotation(8)) == 8
    a.snapshot(keys_dir)
    assert b.extend(_batch(9, 2)) == range(10, 12)
    assert _log_is_gap_free(a)
    a.snapshot(keys_dir)
    report = b.verify(keys_dir)
    assert report.ok, report
    a.close()


def test_other_options_are_refused_naming_the_open_store(tmp_path, keys_dir):
    path = tmp_path / "audit.duckdb"
    with open_store(path, keys=keys_dir) as a:
        for kwargs, named in (({"pseudonymize": False}, "pseudonymize"), ({"keys": tmp_path}, "keys"),
                              ({"keys": keys_dir, "origin": "other.example/log"}, "origin"),
                              ({"keys": keys_dir, "memory_limit": "1GB"}, "memory_limit")):
            with pytest.raises(StoreInUseError) as ei:
                open_store(path, **kwargs)
            msg = str(ei.value)
            assert str(path) in msg and repr(a) in msg and "close it" in msg and named in msg
            assert ei.value.path == os.path.realpath(path)
        assert open_store(path, keys=keys_dir, origin=a.origin) is a  # its own origin is no conflict


def test_a_closed_store_leaves_the_registry(tmp_path):
    path = tmp_path / "audit.duckdb"
    a = open_store(path, pseudonymize=False)
    a.close()
    with pytest.raises(AuditKitError, match="closed"):
        a.extend(_batch(0, 1))
    b = open_store(path, pseudonymize=False, memory_limit="1GB")  # other options: fine once a is closed
    assert b is not a and b.extend([{"kind": "dataset", "name": "d", "version": "1"}]) == range(0, 1)
    b.close()


def test_direct_construction_of_a_second_writer_is_refused(tmp_path):
    path = tmp_path / "audit.duckdb"
    with open_store(path, pseudonymize=False) as a:
        with pytest.raises(StoreInUseError, match="already open for writing"):
            store_mod.AuditStore(path, pseudonymize=False)
        assert a.extend([{"kind": "dataset", "name": "d", "version": "1"}]) == range(0, 1)


def test_a_reader_beside_the_writer_cannot_write_and_follows_it(tmp_path, keys_dir):
    path = tmp_path / "audit.duckdb"
    w = open_store(path, keys=keys_dir)
    w.extend(_batch(0, 4))
    r = open_store(path, read_only=True, pseudonymize=False)
    assert r is not w and r.read_only and r.size == 4
    with pytest.raises(AuditKitError, match="read-only"):
        r.extend(_batch(10, 1))
    with pytest.raises(AuditKitError, match="read-only"):
        r.privacy.release("annotator_count", epsilon=0.5)
    r.sql("DELETE FROM log")  # rolled back, as on a writer
    assert w.size == 4 and w.sql("SELECT count(*) AS n FROM log")["n"][0] == 4
    w.extend(_batch(4, 3))
    assert r.size == 7 and r.root() == w.root() and r.entry(6) == w.entry(6)
    w.snapshot(keys_dir)
    assert r.verify(keys_dir).ok
    w.close()  # the reader keeps working, and a new writer may open beside it
    assert r.size == 8
    w2 = open_store(path, keys=keys_dir)
    assert w2 is not w and w2.extend(_batch(7, 1)) == range(8, 9) and r.size == 9
    w2.close()
    r.close()


def test_a_writer_is_refused_beside_a_plain_reader_of_this_process(tmp_path):
    path = tmp_path / "audit.duckdb"
    open_store(path, pseudonymize=False).close()
    r = open_store(path, read_only=True, pseudonymize=False)
    with pytest.raises(StoreInUseError, match="read-only in this process.*close it first"):
        open_store(path, pseudonymize=False)
    r.close()
    open_store(path, pseudonymize=False).close()


# ------------------------------------------------------------------ a handle bypassing the registry
@pytest.fixture
def two_handles(tmp_path, monkeypatch):
    """Two store objects on one file, as a reloaded module or a second copy of the kit would make."""
    path = tmp_path / "audit.duckdb"
    a = open_store(path, pseudonymize=False)
    monkeypatch.setattr(store_mod, "_OPEN", {})
    b = open_store(path, pseudonymize=False)
    assert a is not b
    yield a, b
    b.close()
    a.close()


def test_a_bypassing_handle_reads_the_next_seq_inside_its_transaction(two_handles, tmp_path):
    a, b = two_handles
    assert a.extend(_batch(0, 5)) == range(0, 5)
    assert b.extend(_batch(5, 3)) == range(5, 8)  # b's size was cached at open: 0
    assert a.append(annotation(8)) == 8
    assert b.append(annotation(9)) == 9
    assert a.extend(_batch(10, 300)) == range(10, 310)  # crosses a tile of the node cache
    assert b.extend(_batch(310, 2)) == range(310, 312)
    with pytest.raises(ValidationError, match="already in the store"):
        b.extend(_batch(0, 1))  # the uniqueness check sees a's rows too
    assert a.append(annotation(312)) == 312  # a catches up inside its next write
    assert _log_is_gap_free(a) and a.root(312) == b.root(312)
    keys = tmp_path / "keys"
    from rlhf_audit_kit.keys import init_keys
    init_keys(keys, "test-lab", no_passphrase=True)
    b.snapshot(keys)
    assert a.verify(keys).ok


def test_concurrent_writes_through_two_handles_refuse_the_second(two_handles):
    a, b = two_handles
    inside, done = threading.Event(), threading.Event()
    caught = []

    def hold(con):  # runs inside a's write transaction, after the claim
        inside.set()
        done.wait(30)

    from rlhf_audit_kit.validate import normalise
    t = threading.Thread(target=lambda: a._write_validated(normalise(_batch(0, 3)), guard=hold))
    t.start()
    assert inside.wait(30)
    try:
        b.extend(_batch(100, 2))
    except StoreInUseError as e:
        caught.append(e)
    finally:
        done.set()
        t.join(30)
    assert caught and "nothing was written" in str(caught[0])
    assert a.size == 3 and _log_is_gap_free(a)
    assert b.extend(_batch(100, 2)) == range(3, 5)


def test_the_write_lock_survives_a_reload_of_the_kit(two_handles):
    """The lock table lives in sys.modules: a reloaded write_lock (as a second copy of the kit would
    have) hands out the same lock, so the handles still serialise."""
    import importlib

    from rlhf_audit_kit import write_lock
    a, b = two_handles
    assert a._writer is b._writer
    importlib.reload(write_lock)
    assert write_lock.file_writer(a._real) is a._writer
    assert a._writer.try_acquire()  # as if a copy of the kit were mid-write
    try:
        with pytest.raises(StoreInUseError, match="nothing was written"):
            b.append(annotation(0))
    finally:
        a._writer.release()
    assert b.append(annotation(0)) == 0 and a.append(annotation(1)) == 1 and _log_is_gap_free(a)


def test_a_write_by_another_process_between_opens_is_seen(tmp_path):
    """The next seq is re-read from the log whenever a store object opens the file."""
    path = tmp_path / "audit.duckdb"
    with open_store(path, pseudonymize=False) as s:
        s.extend(_batch(0, 3))
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from factories import annotation; "
            "from rlhf_audit_kit import open_store\n"
            "with open_store(sys.argv[1], pseudonymize=False) as s: s.append(annotation(3))")
    subprocess.run([sys.executable, "-c", code, str(path), os.path.dirname(__file__)], check=True)
    with open_store(path, pseudonymize=False) as s:
        assert s.append(annotation(4)) == 4 and _log_is_gap_free(s)


def _node_levels(path):
    """{level: (count, max idx + 1)} of merkle_node, read without the kit."""
    import duckdb
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {lv: (n, top) for lv, n, top in con.execute(
            "SELECT level, count(*), max(idx) + 1 FROM merkle_node GROUP BY level").fetchall()}
    finally:
        con.close()


@pytest.mark.parametrize("first", [5, 16, 37])
def test_tail_nodes_lost_with_a_killed_process_are_restored(tmp_path, keys_dir, first):
    """Appends keep the nodes over the last few leaves in memory (ledger.levels.NODE_TAIL): a
    process killed before storing them leaves a store that verifies, and the next writer stores
    them, so no level of merkle_node ever has a gap."""
    from rlhf_audit_kit.ledger.levels import NODE_TAIL, stored_node_bounds
    path = tmp_path / "audit.duckdb"
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from factories import annotation; "
            "from rlhf_audit_kit import open_store\n"
            "s = open_store(sys.argv[1], pseudonymize=False)\n"
            "for i in range(int(sys.argv[3])): s.append(annotation(i))\n"
            "os._exit(0)")  # no close, no atexit: as kill -9 after the last append returned
    subprocess.run([sys.executable, "-c", code, str(path), os.path.dirname(__file__), str(first)], check=True)
    levels = _node_levels(path)
    waited = sum(first >> lv for lv in range(1, 64)) - sum(n for n, _ in levels.values())
    assert (waited > 0) == (first % NODE_TAIL >= 2)  # stored at the crossing of a multiple of NODE_TAIL
    assert all(stored_node_bounds(first, lv)[0] <= n == top for lv, (n, top) in levels.items())
    assert _verify(path, keys_dir).findings == []  # the missing tail is not damage: nothing reads those rows
    with open_store(path, pseudonymize=False, keys=keys_dir) as s:
        assert s.size == first
        for i in range(first, first + NODE_TAIL + 3):
            s.append(annotation(i))
        s.snapshot(keys_dir)
        size = s.size
        assert s.verify(keys_dir).ok
    levels = _node_levels(path)
    assert {lv: n for lv, (n, _) in levels.items()} == {lv: size >> lv for lv in range(1, size.bit_length())}
    assert all(n == top for n, top in levels.values())
    assert _verify(path, keys_dir).ok


def _verify(path, keys):
    with open_store(path, read_only=True, pseudonymize=False) as s:
        return s.verify(keys, workers=0)


def test_a_missing_node_before_the_tail_is_still_damage(tmp_path, keys_dir):
    import duckdb

    path = tmp_path / "audit.duckdb"
    with open_store(path, pseudonymize=False) as s:
        for i in range(40):
            s.append(annotation(i))
    con = duckdb.connect(str(path))
    # the last nodes of level 1 (over seqs 30-31 and 38-39): only the ones over the tail (32-39) may be missing
    con.execute("DELETE FROM merkle_node WHERE level = 1 AND idx IN (15, 16, 17, 18, 19)")
    con.close()
    r = _verify(path, keys_dir)
    assert r.damage == "bad-node" and r.first_bad_seq == 30, r.findings


def test_a_store_made_with_the_older_write_claim_table_keeps_its_seqs(tmp_path):
    """Stores written before the process-wide lock carry a write_claim table; it is not read."""
    import duckdb
    path = tmp_path / "audit.duckdb"
    with open_store(path, pseudonymize=False) as s:
        s.extend(_batch(0, 2))
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE write_claim (next_seq BIGINT NOT NULL)")
    con.execute("INSERT INTO write_claim VALUES (0)")  # stale on purpose
    con.close()
    with open_store(path, pseudonymize=False) as s:
        assert s.append(annotation(2)) == 2 and s.extend(_batch(3, 2)) == range(3, 5) and _log_is_gap_free(s)


# ------------------------------------------------------------------ privacy budget through two handles
def _campaign(s):
    s.extend([annotation(i, annotator=f"w{i % 5}") for i in range(30)])


def test_a_budget_cannot_be_overspent_through_two_opens(tmp_path):
    path = tmp_path / "audit.duckdb"
    a = open_store(path, pseudonymize=False)
    b = open_store(path, pseudonymize=False)
    _campaign(a)
    a.privacy.set_budget("global", 1.0)
    a.privacy.release("annotator_count", epsilon=0.25)
    b.privacy.release("annotator_count", epsilon=0.75)  # fits: 1.0 in all
    with pytest.raises(BudgetExceededError):  # was 1.75: b's spend went in at a seq a's ledger had passed
        a.privacy.release("annotator_count", epsilon=0.75)
    assert a.sql("SELECT sum(epsilon) AS e FROM privacy_spend")["e"][0] == pytest.approx(1.0)
    assert _log_is_gap_free(a)
    a.close()


def test_a_budget_cannot_be_overspent_through_a_bypassing_handle(two_handles):
    a, b = two_handles
    _campaign(a)
    a.privacy.set_budget("global", 1.0)
    stale = b.privacy  # b's ledger is synced now: no spend yet
    a.privacy.release("annotator_count", epsilon=0.25)
    stale.release("annotator_count", epsilon=0.75)  # fits: 1.0 in all
    with pytest.raises(BudgetExceededError, match="spent epsilon=1"):
        a.privacy.release("annotator_count", epsilon=0.75)
    with pytest.raises(BudgetExceededError):
        stale.release("annotator_count", epsilon=0.01)
    spent = a.sql("SELECT sum(epsilon) AS e FROM privacy_spend")["e"][0]
    assert spent == pytest.approx(1.0) and _log_is_gap_free(b)


# ------------------------------------------------------------------ a store locked by another process
_HOLD = """
import sys
from rlhf_audit_kit import open_store
s = open_store(sys.argv[1], pseudonymize=False)
s.append({"kind": "dataset", "name": "d", "version": "1"})
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held_store(tmp_path):
    path = tmp_path / "held.duckdb"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield path, proc.pid
    finally:
        proc.stdin.close()
        proc.wait(30)


@pytest.mark.parametrize("read_only", [True, False])
def test_a_store_locked_by_another_process_names_its_pid(held_store, read_only):
    path, pid = held_store
    with pytest.raises(StoreLockedError) as ei:
        open_store(path, read_only=read_only, pseudonymize=False)
    e = ei.value
    assert e.pid == pid and e.path == str(path) and e.holder
    assert f"process {pid}" in str(e) and "bundle" in str(e) and "\n" not in str(e)
    assert isinstance(e, AuditKitError)


@pytest.mark.parametrize("command", ["info", "verify", "serve", "ingest"])
def test_cli_on_a_locked_store_prints_one_line_and_fails(held_store, keys_dir, tmp_path, command):
    path, pid = held_store
    args = {"info": [str(path)], "verify": [str(path), "--vkey", str(keys_dir)],
            "serve": [str(path), "--vkey", str(keys_dir), "--port", "5987"],  # fails before it listens
            "ingest": [str(tmp_path / "none.jsonl"), "--format", "jsonl", "--store", str(path)]}[command]
    (tmp_path / "none.jsonl").write_text("")
    out = subprocess.run([sys.executable, "-m", "rlhf_audit_kit.cli", command, *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"process {pid}" in lines[0] and str(path) in lines[0]


def test_a_link_to_an_open_store_is_the_same_file(tmp_path):
    """A hard or symbolic link names the same file: one writer object, and a reader through the link
    shares the writer's database (two DuckDB databases on one file in one process would diverge)."""
    a = open_store(tmp_path / "a.duckdb", pseudonymize=False)
    try:
        a.append({"kind": "dataset", "name": "x", "version": "1"})
        os.link(tmp_path / "a.duckdb", tmp_path / "hard.duckdb")
        os.symlink(tmp_path / "a.duckdb", tmp_path / "soft.duckdb")
        assert open_store(tmp_path / "hard.duckdb", pseudonymize=False) is a
        assert open_store(tmp_path / "soft.duckdb", pseudonymize=False) is a
        with pytest.raises(StoreInUseError, match="already open for writing"):
            open_store(tmp_path / "hard.duckdb", pseudonymize=True)  # other options: refused, not a 2nd writer
        reader = open_store(tmp_path / "hard.duckdb", read_only=True, pseudonymize=False)
        a.append({"kind": "dataset", "name": "y", "version": "1"})
        assert reader.size == a.size == 2
        reader.close()
    finally:
        a.close()
    with open_store(tmp_path / "hard.duckdb", pseudonymize=False) as b:
        assert b.size == 2


def test_a_reader_verifies_one_snapshot_while_the_writer_commits(tmp_path, monkeypatch):
    """A verification reads the log, then each kind's table: a batch the writer commits in between
    must not look like typed rows without log entries."""
    from rlhf_audit_kit.ledger import verify as V
    from test_snapshot_verify import SIGNER
    writer = open_store(tmp_path / "a.duckdb", pseudonymize=False)
    try:
        writer.extend([{"kind": "dataset", "name": f"d{i}", "version": "1"} for i in range(5)])
        writer.snapshot(SIGNER)
        reader = open_store(tmp_path / "a.duckdb", read_only=True, pseudonymize=False)
        log = V.DuckSource.log

        def log_then_a_commit(self):
            table = log(self)
            writer.extend([{"kind": "dataset", "name": "late", "version": "1"}])  # committed meanwhile
            return table
        monkeypatch.setattr(V.DuckSource, "log", log_then_a_commit)
        r = reader.verify(SIGNER.verifier, workers=0)
        assert r.ok and r.events == 6, r.findings
        monkeypatch.undo()
        assert reader.verify(SIGNER.verifier, workers=0).events == 7  # the next one sees it
        reader.close()
    finally:
        writer.close()
