"""Recorder: buffered live logging. Every logged event is written in order, bad events fail at once,
the writer's errors reach the caller, the queue blocks instead of dropping, and what flush()
acknowledged survives kill -9."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rlhf_audit_kit import AuditKitError, ValidationError, open_store
from rlhf_audit_kit.keys import load_signer
from rlhf_audit_kit.recorder import SMALL_GROUP


def step(i, run="r", **metrics):
    return {"kind": "train_step", "run_id": run, "algorithm": "dpo", "step": i,
            "metrics": {"loss": 1 / (i + 1), "rewards/margins": i * 0.25, **metrics}, "epoch": i / 100}


@pytest.fixture
def plain(tmp_path):
    s = open_store(tmp_path / "live.duckdb", pseudonymize=False)
    yield s
    s.close()


@pytest.mark.parametrize("batch_size", [700, SMALL_GROUP], ids=["batch-path", "small-group-path"])
def test_every_logged_event_is_written_in_order_and_verifies(tmp_path, keys_dir, batch_size):
    store = open_store(tmp_path / "a.duckdb", keys=keys_dir)
    events = []
    for i in range(3_000):
        events.append(step(i))
        if i % 500 == 0:
            events.append({"kind": "checkpoint", "run_id": "r", "step": i, "uri": f"file:///c/{i}",
                           "content_hash": "sha256:" + f"{i:064x}", "saved_at": "2026-01-01T00:00:00Z"})
            events.append({"kind": "annotation", "annotation_id": f"a{i}", "prompt_id": "p", "prompt": "q",
                           "response_a_id": "x", "response_a": "x", "response_b_id": "y", "response_b": "y",
                           "choice": "b", "annotator": "alice@example.org"})
    with store.recorder(batch_size=batch_size, interval=0.05) as rec:
        for e in events:
            rec.log(e)
        rec.flush()
        assert rec.pending == 0 and store.size == len(events)
    kinds = store.sql("SELECT kind FROM log ORDER BY seq")["kind"].to_list()
    assert kinds == [e["kind"] for e in events]
    assert store.sql("SELECT step FROM train_step ORDER BY seq")["step"].to_list() == list(range(3_000))
    assert not store.sql("SELECT annotator FROM annotation")["annotator"].str.contains("alice").any()
    store.verify(store.snapshot(load_signer(keys_dir)).vkey).raise_for_status()
    with open_store(tmp_path / "b.duckdb", keys=keys_dir) as batch:  # the same rows as one extend
        batch.extend(events)
        for kind in ("train_step", "checkpoint", "annotation"):
            assert store.table(kind).drop("ts", "seq").equals(batch.table(kind).drop("ts", "seq")), kind
    store.close()


def test_a_bad_event_fails_at_once_and_nothing_else_is_lost(plain):
    with plain.recorder(interval=0.01) as rec:
        rec.log(step(0))
        with pytest.raises(ValidationError) as e:
            rec.log({**step(1), "metrics": {"loss": float("nan")}})
        assert (e.value.row, e.value.field) == (1, "metrics") and "finite" in e.value.reason
        with pytest.raises(ValidationError, match="unknown field"):
            rec.log({**step(1), "lr": 0.1})
        with pytest.raises(ValidationError, match="written by the kit itself"):
            rec.log({"kind": "snapshot", "origin": "o", "tree_size": 0, "root_hash": "00", "key_name": "k",
                     "key_id": "i", "note": "n"})
        rec.log(step(1))
        with pytest.raises(ValidationError, match="duplicate run_id/step: already queued"):
            rec.log(step(1))  # still queued: the interval is far longer than this test's two calls
    assert plain.table("train_step")["step"].to_list() == [0, 1]


def test_an_event_the_store_refuses_is_reported_by_the_next_call_and_the_rest_is_written(plain):
    plain.append(step(5))
    rec = plain.recorder(interval=0.01)
    for i in range(10):
        rec.log(step(i))
    with pytest.raises(ValidationError) as e:
        rec.flush()
    assert e.value.row == 5 and e.value.field == "run_id" and "already in the store" in e.value.reason
    assert "every other event was" in e.value.reason
    rec.log(step(10))
    rec.close()
    assert sorted(plain.table("train_step")["step"].to_list()) == list(range(11))
    assert plain.sql("SELECT count(*) FROM train_step WHERE step = 5").item() == 1


def test_full_queue_blocks_log_and_drops_nothing(plain):
    rec = plain.recorder(batch_size=4, max_queue=8, interval=0.01)
    done = threading.Event()

    def produce():
        for i in range(40):
            rec.log(step(i))
        done.set()

    with plain._lock:  # the writer cannot commit while the store is busy
        t = threading.Thread(target=produce)
        t.start()
        time.sleep(0.5)
        assert not done.is_set() and rec.pending <= 8 + 4  # queue full (+ one group in the writer's hands)
    t.join(30)
    assert done.is_set()
    rec.close()
    assert plain.table("train_step")["step"].to_list() == list(range(40))


def test_close_wakes_a_log_blocked_on_a_full_queue(plain):
    rec = plain.recorder(batch_size=2, max_queue=2, interval=0.01)
    failed = []

    def produce():
        try:
            for i in range(10):
                rec.log(step(i))
        except AuditKitError as e:
            failed.append(str(e))

    with plain._lock:
        t = threading.Thread(target=produce)
        t.start()
        time.sleep(0.3)  # the producer is blocked: the writer holds a group it cannot commit
        closer = threading.Thread(target=rec.close)
        closer.start()
        t.join(10)
        assert failed == ["this recorder is closed"]
    closer.join(30)
    written = plain.table("train_step")["step"].to_list()
    assert written == list(range(len(written))) and rec.logged == len(written)  # every accepted event


def test_the_interval_commits_without_flush(plain):
    rec = plain.recorder(interval=0.05)
    rec.log(step(0))
    deadline = time.monotonic() + 10
    while rec.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.pending == 0
    assert plain.sql("SELECT count(*) FROM train_step").item() == 1
    rec.close()


def test_a_writer_failure_is_raised_by_every_later_call(tmp_path):
    store = open_store(tmp_path / "w.duckdb", pseudonymize=False)
    rec = store.recorder(interval=0.01)
    rec.log(step(0))
    rec.flush()
    store._con.close()  # the connection goes away under the writer
    rec.log(step(1))
    with pytest.raises(AuditKitError, match="recording stopped") as e:
        rec.flush()
    assert e.value.__cause__ is not None and "; 1 event logged since the last successful commit was not" in str(e.value)
    with pytest.raises(AuditKitError, match="recording stopped"):
        rec.log(step(2))
    with pytest.raises(AuditKitError, match="recording stopped"):
        rec.close()
    store._con = None


def test_logging_from_threads(plain):
    with plain.recorder(batch_size=100, interval=0.01) as rec:
        threads = [threading.Thread(target=lambda r=r: [rec.log(step(i, run=f"t{r}")) for i in range(500)])
                   for r in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    counts = plain.sql("SELECT run_id, count(*) AS n, count(DISTINCT step) AS d FROM train_step GROUP BY 1")
    assert sorted(counts.rows()) == [(f"t{r}", 500, 500) for r in range(4)]


def test_closing_the_store_flushes_its_recorders(tmp_path):
    path = tmp_path / "c.duckdb"
    store = open_store(path, pseudonymize=False)
    rec = store.recorder(interval=60)
    for i in range(100):
        rec.log(step(i))
    store.close()
    with pytest.raises(AuditKitError, match="closed"):
        rec.log(step(100))
    with open_store(path, pseudonymize=False) as s:
        assert s.sql("SELECT count(*) FROM train_step").item() == 100


def test_interpreter_exit_flushes(tmp_path):
    path = tmp_path / "x.duckdb"
    code = textwrap.dedent(f"""
        from rlhf_audit_kit import open_store
        store = open_store({str(path)!r}, pseudonymize=False)
        rec = store.recorder(interval=60)
        for i in range(1000):
            rec.log({{"kind": "reward_score", "reward_model": "rm", "sample_id": f"s{{i}}", "score": i}})
    """)  # no flush, no close: the atexit hook writes the queue
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with open_store(path, pseudonymize=False) as s:
        assert s.sql("SELECT count(*) FROM reward_score").item() == 1000


KILLED_WRITER = textwrap.dedent("""
    import random, sys
    from rlhf_audit_kit import open_store
    store = open_store(sys.argv[1], pseudonymize=False)
    i = store.sql("SELECT count(*) FROM train_step").item()  # continue where the last process got to
    rec = store.recorder(batch_size=128, interval=0.005)
    rnd = random.Random(int(sys.argv[2]))
    while True:
        for _ in range(rnd.randint(1, 400)):
            rec.log({"kind": "train_step", "run_id": "killed", "algorithm": "grpo", "step": i,
                     "metrics": {"loss": i / 3, "objective/kl": 0.1}})
            i += 1
        rec.flush()
        print("FLUSHED", i, flush=True)  # every event before i is acknowledged
""")


@pytest.mark.slow
def test_kill_9_keeps_every_flushed_event_and_the_store_verifies(tmp_path, keys_dir):
    path = tmp_path / "k.duckdb"
    signer = load_signer(keys_dir)
    rnd = random.Random(12)
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(round_)],
                                stdout=subprocess.PIPE, text=True)
        flushed = 0
        try:
            for _ in range(rnd.randint(1, 6)):
                line = proc.stdout.readline()
                assert line.startswith("FLUSHED"), line
                flushed = int(line.split()[1])
            time.sleep(rnd.uniform(0, 0.03))  # land the kill anywhere: logging, committing, flushing
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            for line in proc.stdout:  # acknowledgements written before the kill landed
                flushed = int(line.split()[1])
        finally:
            if proc.poll() is None:
                proc.kill()
        with open_store(path, pseudonymize=False) as s:
            steps = s.sql("SELECT step FROM train_step ORDER BY seq")["step"].to_list()
            assert len(steps) >= flushed, f"round {round_}: lost acknowledged events"
            assert steps == list(range(len(steps)))  # in order, no gap: groups commit whole, in order
            s.verify(s.snapshot(signer).vkey).raise_for_status()
