"""A large bundle verified segment by segment on this machine: grouping into tasks, the worker processes,
and what a user running a script or a notebook sees. (Every tamper case gives the whole verification's
report apart, in worker processes and on Dask: tests/test_dask_verify.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_audit_kit import open_bundle, segment_verify
from rlhf_audit_kit.errors import AuditKitError
from rlhf_audit_kit.segment_workers import ProcessPool
from rlhf_audit_kit.store import open_store

from test_snapshot_verify import SIGNER, events  # noqa: E402 - shared fixtures

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle of 4 segments (67 events)."""
    d = tmp_path_factory.mktemp("segments")
    with open_store(d / "a.duckdb", pseudonymize=False, origin="audit.example/log") as store:
        for i in range(4):
            store.extend(events(2 * i) + events(2 * i + 1))
            store.snapshot(SIGNER).export(d / "bundle").close()
    return d / "bundle"


# ---------------------------------------------------------------- tasks
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 400_000), max_size=40), st.integers(1, 64))
def test_tasks_are_consecutive_segments_each_just_reaching_the_target(sizes, workers):
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    segs = [SimpleNamespace(start=a, end=b) for a, b in zip(bounds, bounds[1:])]
    groups = segment_verify.task_groups(segs, workers)
    assert [s for g in groups for s in g] == segs  # every segment once, in order
    target = max(segment_verify.MIN_TASK_EVENTS, min(segment_verify.MAX_TASK_EVENTS, -(-bounds[-1] // (
        segment_verify.TASKS_PER_WORKER * workers))))
    for k, g in enumerate(groups):
        events = g[-1].end - g[0].start
        assert all(a.end == b.start for a, b in zip(g, g[1:]))
        if k < len(groups) - 1:
            assert events >= target  # a task ends as soon as it reaches the target ...
        assert events - (g[-1].end - g[-1].start) < target  # ... and not before


def test_a_minimum_above_the_log_makes_one_task():
    segs = [SimpleNamespace(start=i, end=i + 1) for i in range(1000)]
    old = segment_verify.MIN_TASK_EVENTS
    segment_verify.MIN_TASK_EVENTS = 10 ** 18
    try:
        assert segment_verify.task_groups(segs, 64) == [segs]
    finally:
        segment_verify.MIN_TASK_EVENTS = old


# ---------------------------------------------------------------- worker processes
def test_pool_returns_results_and_raises_the_callers_exceptions():
    with ProcessPool(2) as pool:
        futures = [pool.submit(pow, 3, k) for k in range(20)]
        assert [f.result() for f in futures] == [3 ** k for k in range(20)]
        with pytest.raises(ValueError, match="invalid literal"):
            pool.submit(int, "x").result()
        assert pool.submit(os.getpid).result() != os.getpid()  # really another process
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(pow, 2, 2)


def test_a_worker_that_dies_fails_its_task_with_its_exit_code_and_nothing_waits_forever():
    with ProcessPool(1) as pool:
        dying = pool.submit(os._exit, 7)
        queued = [pool.submit(pow, 2, k) for k in range(3)]
        with pytest.raises(AuditKitError, match="exit code 7"):
            dying.result(timeout=60)
        for f in queued:  # failed at once, not left pending
            with pytest.raises(AuditKitError):
                f.result(timeout=5)
        with pytest.raises(AuditKitError, match="exit code 7"):  # a pool without workers takes no call
            pool.submit(pow, 2, 2)


def test_closing_the_pool_ends_busy_workers_within_one_grace_period():
    import time
    pool = ProcessPool(2)
    busy = [pool.submit(time.sleep, 600) for _ in range(2)]
    time.sleep(0.3)
    t0 = time.perf_counter()
    pool.close(grace=1.0)
    assert time.perf_counter() - t0 < 10  # one deadline for all, not one per worker
    for f in busy:
        with pytest.raises(AuditKitError):
            f.result(timeout=5)
    assert all(p.poll() is not None for p in pool._procs)


def test_an_unclosed_pool_ends_its_workers_when_dropped():
    import gc
    import time
    pool = ProcessPool(1)
    proc = pool._procs[0]
    assert pool.submit(pow, 2, 2).result(timeout=60) == 4
    del pool
    gc.collect()
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is not None


def test_bytes_a_task_writes_to_stdout_do_not_reach_the_answers():
    """Anything on fd 1 (a C library's printf as much as print) goes to stderr, not into the protocol."""
    with ProcessPool(1) as pool:
        assert pool.submit(os.write, 1, b"\x00\x00garbage\n").result(timeout=60) == 10
        assert pool.submit(print, "more").result(timeout=60) is None
        assert [pool.submit(pow, 2, k).result(timeout=60) for k in (3, 5)] == [8, 32]


def test_workers_import_nothing_from_the_working_directory(tmp_path, monkeypatch):
    """The working directory may be a bundle someone handed over: a planted duckdb.py must not run."""
    marker = tmp_path / "planted-ran"
    (tmp_path / "duckdb.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.chdir(tmp_path)
    with ProcessPool(1) as pool:
        where = pool.submit(eval, "__import__('duckdb').__file__").result(timeout=60)
    assert not marker.exists() and "site-packages" in where


# ---------------------------------------------------------------- as a user runs it
def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(bundle, tmp_path):
    """multiprocessing's spawn would re-import the script in each worker and run its side effects twice."""
    marker = tmp_path / "ran.txt"
    script = tmp_path / "audit_script.py"
    script.write_text(textwrap.dedent(f"""
        from rlhf_audit_kit import open_bundle, segment_verify
        with open({str(marker)!r}, "a") as fh:
            fh.write("ran\\n")  # a side effect at module level, no __main__ guard
        segment_verify.MIN_TASK_EVENTS = 1
        with open_bundle({str(bundle)!r}) as b:
            r = b.verify({SIGNER.verifier.vkey!r}, workers=2)
        print(r.ok, "segments" in r.timings, r.events)
    """))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "True", "67"]
    assert marker.read_text() == "ran\n"


def test_default_uses_worker_processes_only_for_a_large_bundle(bundle, monkeypatch):
    monkeypatch.delenv("RLHF_AUDIT_VERIFY_WORKERS", raising=False)
    started = []

    class Spy(ProcessPool):
        def __init__(self, n, **kw):
            started.append(n)
            super().__init__(n, **kw)
    monkeypatch.setattr("rlhf_audit_kit.segment_workers.ProcessPool", Spy)
    monkeypatch.setattr(segment_verify, "MIN_TASK_EVENTS", 1)
    with open_bundle(bundle) as b:
        assert b.size == 67
        small = b.verify(SIGNER.verifier)  # 67 events: split, but derived here (workers cost ~1 s to start)
        assert small.ok and "segments" in small.timings and started == []
        monkeypatch.setattr(segment_verify, "POOL_MIN_EVENTS", 10)
        big = b.verify(SIGNER.verifier)
        assert big.ok and started == [min(len(os.sched_getaffinity(0)), 4)]
        one = b.verify(SIGNER.verifier, workers=1)  # this process, one task at a time
        assert one.ok and "segments" in one.timings and len(started) == 1
    assert (small.signed_root, small.findings) == (big.signed_root, big.findings) == (one.signed_root, one.findings)


def test_a_memory_url_bundle_is_verified_in_this_process(bundle, monkeypatch):
    """Worker processes cannot see this process's memory:// file system: the tasks run here."""
    import fsspec
    fs = fsspec.filesystem("memory")
    url = "memory://segment-verify-test/bundle"
    for p in sorted(bundle.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{url}/{p.relative_to(bundle).as_posix()}", p.read_bytes())
    monkeypatch.setattr(segment_verify, "MIN_TASK_EVENTS", 1)
    try:
        with open_bundle(url) as b:
            r = b.verify(SIGNER.verifier, workers=2)
        assert r.ok and "segments" in r.timings and r.events == 67
    finally:
        fs.rm(url, recursive=True)


def test_progress_bar_counts_events_of_a_long_run(bundle, monkeypatch, capsys):
    monkeypatch.setattr(segment_verify, "MIN_TASK_EVENTS", 1)
    with open_bundle(bundle) as b:
        assert b.verify(SIGNER.verifier, workers=0, progress=True).ok
        err = capsys.readouterr().err
        assert "verify" in err and "67" in err, err
        assert b.verify(SIGNER.verifier, workers=0).ok  # 67 events: no bar by default
        assert capsys.readouterr().err == ""
        monkeypatch.setattr(segment_verify, "POOL_MIN_EVENTS", 10)
        assert b.verify(SIGNER.verifier, workers=0).ok  # long enough, but stderr is no terminal (a log)
        assert capsys.readouterr().err == ""
        monkeypatch.setattr(segment_verify, "_watched", lambda: True)
        assert b.verify(SIGNER.verifier, workers=0).ok  # a terminal or a notebook: the bar
        assert "verify" in capsys.readouterr().err


def test_ctrl_c_is_the_callers_a_worker_neither_dies_of_it_nor_prints_a_traceback():
    import signal
    import time
    with ProcessPool(1) as pool:
        assert pool.submit(pow, 2, 3).result() == 8  # the worker is up and serving
        os.kill(pool._procs[0].pid, signal.SIGINT)  # as the terminal sends it to the process group
        time.sleep(0.2)
        assert pool._procs[0].poll() is None and pool.submit(pow, 2, 4).result() == 16


def test_the_verify_workers_variable_sets_the_default_number_of_workers(monkeypatch):
    from rlhf_audit_kit.segment_verify import LocalBackend
    monkeypatch.setenv("RLHF_AUDIT_VERIFY_WORKERS", "3")
    assert LocalBackend(None).parallelism() == 3 and LocalBackend(None, workers=2).parallelism() == 2
    monkeypatch.delenv("RLHF_AUDIT_VERIFY_WORKERS")
    assert LocalBackend(None).parallelism() == len(os.sched_getaffinity(0))
