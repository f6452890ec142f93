"""An acknowledged batch survives kill -9 of the writing process; a partial batch never appears."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from rlhf_audit_kit import open_store
from rlhf_audit_kit.ledger import merkle
from rlhf_audit_kit.ledger.tree import TreeReader

WRITER = textwrap.dedent("""
    import sys, datetime as dt
    from rlhf_audit_kit import open_store
    path, batch = sys.argv[1], int(sys.argv[2])
    store = open_store(path, pseudonymize=False)
    b = 0
    while True:
        rows = [{"kind": "annotation", "annotation_id": f"a-{b}-{i}", "prompt_id": "p", "prompt": "q" * 200,
                 "response_a_id": "ra", "response_a": "x" * 300, "response_b_id": "rb", "response_b": "y" * 300,
                 "choice": "a", "annotator": "p-ann", "submitted_at": dt.datetime(2026, 1, 1)} for i in range(batch)]
        seqs = store.extend(rows)
        print(f"ACK {seqs.stop}", flush=True)   # the batch has returned: it must survive
        b += 1
""")


def test_sigkill_mid_ingest_keeps_every_acknowledged_batch_and_no_partial_one(tmp_path):
    path = tmp_path / "d.duckdb"
    batch = 3_000
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(batch)], stdout=subprocess.PIPE, text=True)
    acked = 0
    deadline = time.monotonic() + 120
    try:
        while acked < 4 * batch and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("ACK"):
                acked = int(line.split()[1])
        time.sleep(0.05)  # land the kill somewhere inside the next batch
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for line in proc.stdout:  # batches acknowledged before the kill landed
            if line.startswith("ACK"):
                acked = int(line.split()[1])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert acked >= 4 * batch, "writer too slow to test"

    with open_store(path, pseudonymize=False) as s:
        n = s.size
        assert n >= acked and n % batch == 0           # every acknowledged batch, no partial batch
        assert s.sql("select count(*) from annotation").item() == n
        seqs = s.sql("select seq from log order by seq")["seq"].to_list()
        assert seqs == list(range(n))
        leaves = s.sql("select entry from log order by seq")["entry"].to_list()
        assert TreeReader(s._get_nodes).root(n) == merkle.root(leaves)
        s.append({"kind": "dataset", "name": "after-crash", "version": "1"})  # still writable
