"""Live recording benchmark: logging a training run, as a user would, against MLflow in one run.

    python benchmarks/recording.py [--steps 20000] [--mlflow-steps 2000] [--appends 2000]
                                   [--events 1000000] [--workdir DIR]

One ``train_step`` of 20 metrics (TRL-style names, seeded values, the same in every path) per
optimiser step. Each path runs in its own process:

* ``mlflow``: MLflow's file store, ``mlflow.log_metrics(20 metrics, step=...)``: synchronous, the
  baseline (needs ``pip install mlflow``; MLflow 3 wants ``MLFLOW_ALLOW_FILE_STORE=true``, set here).
* ``recorder``: ``Recorder.log`` of the same steps as ``train_step`` events, then ``flush()``; and
  the time from ``flush()`` to its return for one freshly logged step (the commit latency).
* ``append``: ``store.append`` of the same events, one durable transaction each.
* ``memory``: ``--events`` steps logged by one Recorder in a fresh process, peak RSS (incl. flush).

Targets (issue 12): Recorder steps/s >= 10x MLflow's, p99 of ``log`` < 0.5 ms, 1M logged events under
1 GB peak memory, ``store.append`` < 2 ms per call.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMES = ["loss", "grad_norm", "learning_rate", "epoch_frac", "rewards/chosen", "rewards/rejected",
         "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen",
         "logits/rejected", "objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
         "objective/non_score_reward", "policy/approxkl_avg", "policy/clipfrac_avg", "val/ratio"]


def metrics(step: int) -> dict[str, float]:
    rnd = random.Random(step)
    return {n: rnd.uniform(-5, 5) for n in NAMES}


def event(step: int) -> dict:
    return {"kind": "train_step", "run_id": "bench", "algorithm": "dpo", "step": step, "metrics": metrics(step),
            "epoch": step / 1000}


def stats(lat: list[float]) -> dict:
    lat = sorted(lat)
    n = len(lat)
    return {"n": n, "per_s": n / sum(lat), "p50_ms": lat[n // 2] * 1e3, "p99_ms": lat[int(n * 0.99)] * 1e3,
            "max_ms": lat[-1] * 1e3}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ the paths (each in a child process)
def run_mlflow(work: Path, steps: int) -> dict:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow
    mlflow.set_tracking_uri((work / "mlruns").as_uri())
    exp = mlflow.create_experiment("bench")
    batches = [metrics(s) for s in range(steps)]
    lat = []
    with mlflow.start_run(experiment_id=exp):
        t0 = time.perf_counter()
        for s, m in enumerate(batches):
            t = time.perf_counter()
            mlflow.log_metrics(m, step=s)
            lat.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    return {**stats(lat), "steps_per_s": steps / wall, "version": mlflow.__version__}


def run_recorder(work: Path, steps: int) -> dict:
    from rlhf_audit_kit import open_store
    store = open_store(work / "recorder.duckdb", pseudonymize=False)
    events = [event(s) for s in range(steps)]
    lat = []
    with store.recorder() as rec:
        t0 = time.perf_counter()
        for e in events:
            t = time.perf_counter()
            rec.log(e)
            lat.append(time.perf_counter() - t)
        logged = time.perf_counter() - t0
        t = time.perf_counter()
        rec.flush()
        flush_all = time.perf_counter() - t
        one = []
        for s in range(steps, steps + 50):  # flush right after one step: the commit latency
            rec.log(event(s))
            t = time.perf_counter()
            rec.flush()
            one.append(time.perf_counter() - t)
    assert store.sql("SELECT count(*) FROM train_step").item() == steps + 50
    store.close()
    return {**stats(lat), "steps_per_s": steps / logged, "durable_steps_per_s": steps / (logged + flush_all),
            "flush_all_ms": flush_all * 1e3, "flush_one_p50_ms": sorted(one)[25] * 1e3, "peak_mb": peak_mb()}


def run_append(work: Path, steps: int) -> dict:
    from rlhf_audit_kit import open_store
    store = open_store(work / "append.duckdb", pseudonymize=False)
    events = [event(s) for s in range(steps)]
    noid = [{"kind": "reward_score", "reward_model": "rm", "sample_id": f"s{s}", "score": e["metrics"]["loss"],
             "step": s} for s, e in enumerate(events)]
    out = {}
    for name, batch in (("train_step", events), ("reward_score", noid)):
        lat = []
        for e in batch:
            t = time.perf_counter()
            store.append(e)
            lat.append(time.perf_counter() - t)
        out[name] = stats(lat)
    store.close()
    return out


def run_memory(work: Path, n: int) -> dict:
    from rlhf_audit_kit import open_store
    store = open_store(work / "memory.duckdb", pseudonymize=False)
    base = peak_mb()
    t0 = time.perf_counter()
    with store.recorder() as rec:
        for s in range(n):
            rec.log(event(s))
        rec.flush()
    wall = time.perf_counter() - t0
    size = store.size
    store.close()
    return {"events": size, "durable_steps_per_s": n / wall, "peak_mb": peak_mb(), "after_import_mb": base}


PATHS = {"mlflow": run_mlflow, "recorder": run_recorder, "append": run_append, "memory": run_memory}


def child(path: str, work: str, n: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", path, "--workdir", work, "--n", str(n)],
                          capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20_000, help="steps logged by the Recorder")
    ap.add_argument("--mlflow-steps", type=int, default=2_000, help="steps logged by MLflow")
    ap.add_argument("--appends", type=int, default=2_000, help="store.append calls per kind")
    ap.add_argument("--events", type=int, default=1_000_000, help="events for the memory run")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", choices=sorted(PATHS), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="rak-recording-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.child:
        print(json.dumps(PATHS[a.child](work, a.n)))
        return 0
    for p in work.glob("*.duckdb*"):
        p.unlink()

    ml = child("mlflow", str(work), a.mlflow_steps)
    rec = child("recorder", str(work), a.steps)
    app = child("append", str(work), a.appends)
    mem = child("memory", str(work), a.events)
    print(f"one train_step of {len(NAMES)} metrics per step; each path in its own process; {work}")
    print(f"{'path':44s} {'steps/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")

    def row(name, r, rate="steps_per_s"):
        if "error" in r:
            print(f"{name:44s} failed: {r['error']}")
        else:
            print(f"{name:44s} {r[rate]:9,.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['max_ms']:8.1f}")

    row(f"MLflow {ml.get('version', '')} file store log_metrics (sync)", ml)
    row("Recorder.log (returns before the disk)", rec)
    if "error" not in rec:
        print(f"{'  durable (incl. the final flush)':44s} {rec['durable_steps_per_s']:9,.0f}")
        print(f"  flush() after {a.steps:,} steps: {rec['flush_all_ms']:.0f} ms; "
              f"flush() after one step: p50 {rec['flush_one_p50_ms']:.1f} ms")
    if "error" not in app:
        row("store.append train_step (durable, unique key)", app["train_step"], "per_s")
        row("store.append reward_score (durable, no ids)", app["reward_score"], "per_s")
    else:
        row("store.append", app)
    if "error" not in mem:
        print(f"memory: {mem['events']:,} events logged by one Recorder and flushed: peak RSS "
              f"{mem['peak_mb']:,.0f} MB ({mem['after_import_mb']:,.0f} MB after imports), "
              f"{mem['durable_steps_per_s']:,.0f} events/s")
    else:
        print(f"memory: failed: {mem['error']}")
    if not any("error" in r for r in (ml, rec, app, mem)):
        print("targets: Recorder >= 10x MLflow: "
              f"{rec['steps_per_s'] / ml['steps_per_s']:.0f}x; log p99 < 0.5 ms: {rec['p99_ms']:.3f} ms; "
              f"1M events < 1 GB: {mem['peak_mb']:,.0f} MB; append < 2 ms: "
              f"p50 {app['reward_score']['p50_ms']:.2f} ms (no ids), {app['train_step']['p50_ms']:.2f} ms (run/step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
