"""Benchmark of the analysis layer on a campaign with ~1M annotations and a 100k-step run.

Builds (once; cached in ``--workdir``) an audit store holding the demo campaign of size ~1.15M
(about 1M annotations) plus a separate 100,000-step PPO training run, then times every analysis
function on it and prints the figures next to their targets and, as the baseline measured in the same
run, one grouped scan of the table each analysis reads (what any answer from those rows costs at least).

Usage::

    python benchmarks/analysis.py --workdir /tmp/rak-bench           # build if needed, then time
    python benchmarks/analysis.py --workdir /tmp/rak-bench --repeat 3  # median of 3 runs

The cache is keyed by the campaign size and seed (``READY.json``); delete the folder to rebuild.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

BIG_RUN = "ppo-bench-100k"
TARGETS = {"annotator_report": 3.0, "annotator_drift": 2.0}


def _long_run(n_steps: int, seed: int = 0) -> pl.DataFrame:
    """A synthetic 100k-step PPO run (train_step events) with a KL excursion at 70% of the steps."""
    rng = np.random.default_rng(seed)
    s = np.arange(1, n_steps + 1, dtype=np.float64)
    h = 0.7 * n_steps
    pre, late = np.minimum(s, h) / h, np.clip((s - h) / (n_steps - h), 0, 1)

    def noise(sd: float) -> np.ndarray:
        return np.convolve(rng.normal(0, sd * 0.6, n_steps), 0.8 ** np.arange(48))[:n_steps]

    metrics = {
        "objective/kl": np.maximum((0.3 + 3.2 * pre + 20 * late**2) * (1 + noise(0.08)), 0.01),
        "objective/scores": -0.4 + 2.0 * pre + 2.4 * late + noise(0.12),
        "objective/entropy": 2.9 - 0.5 * s / n_steps - 1.1 * late**1.5 + noise(0.04),
        "policy/approxkl_avg": np.abs(0.002 + 0.012 * late**2 + noise(0.0008)),
        "policy/clipfrac_avg": np.clip(0.04 + 0.16 * late + noise(0.01), 0, 1),
        "loss/policy_avg": -0.008 + noise(0.006),
        "loss/value_avg": 0.1 + 0.35 * late + np.abs(noise(0.03)),
        "lr": 3e-6 * (1 - (s - 1) / n_steps),
    }
    metrics["objective/non_score_reward"] = -0.05 * metrics["objective/kl"]
    metrics["objective/rlhf_reward"] = metrics["objective/scores"] + metrics["objective/non_score_reward"]
    keys = list(metrics)
    values = np.stack([metrics[k] for k in keys], axis=1)
    flat = pl.DataFrame({"key": pl.Series(keys * n_steps), "value": values.ravel()}).to_struct()
    mp = flat.reshape((n_steps, len(keys))).cast(pl.List(pl.Struct({"key": pl.Utf8, "value": pl.Float64})))
    return pl.DataFrame({"run_id": BIG_RUN, "algorithm": "ppo", "step": np.arange(1, n_steps + 1),
                         "metrics": mp, "epoch": s * 64 / 10_000})


def build(workdir: Path, size: int, seed: int, steps: int) -> Path:
    """Create (or reuse) the benchmark store in ``workdir``; return its path."""
    from rlhf_audit_kit import demo, keys
    from rlhf_audit_kit.store import open_store

    path, keys_dir, ready = workdir / "audit.duckdb", workdir / "keys", workdir / "READY.json"
    want = {"size": size, "seed": seed, "steps": steps}
    if ready.exists() and json.loads(ready.read_text()) == want and path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    for p in (path, ready, Path(str(path) + ".wal")):
        if p.exists():
            p.unlink()
    if not keys_dir.exists():
        keys.init_keys(keys_dir, "bench.rlhf-audit-kit.local/log", no_passphrase=True)
    t0 = time.perf_counter()
    with open_store(path, keys=keys_dir) as store:
        demo.Campaign(size, seed).write_to(store, chunk_rows=250_000, progress=True)
        run = _long_run(steps)
        for lo in range(0, run.height, 50_000):
            store.extend(run.slice(lo, 50_000), kind="train_step")
        print(f"built {store.size:,} events in {time.perf_counter() - t0:.1f} s: {store.counts()}")
    ready.write_text(json.dumps(want))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="folder for the cached store (created if missing)")
    ap.add_argument("--size", type=int, default=1_150_000, help="demo campaign size (events)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100_000, help="steps of the long training run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median shown)")
    ap.add_argument("--build-only", action="store_true")
    args = ap.parse_args(argv)
    path = build(Path(args.workdir), args.size, args.seed, args.steps)
    if args.build_only:
        return 0
    return run_benchmarks(path, args.repeat)


def _time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_benchmarks(path: Path, repeat: int) -> int:
    """Time each analysis on the store at ``path``; print figures next to their targets."""
    from rlhf_audit_kit import analysis
    from rlhf_audit_kit.store import open_store

    store = open_store(path, read_only=True, pseudonymize=False)
    n_ann = store.sql("SELECT count(*) FROM annotation").item()
    n_steps = store.sql("SELECT count(*) FROM train_step WHERE run_id = ?", [BIG_RUN]).item()
    print(f"store {path}: {store.size:,} events, {n_ann:,} annotations, {n_steps:,}-step run "
          f"{BIG_RUN!r}; median of {repeat} runs, {os.cpu_count()} cores")
    baselines = {
        "ann": ("one grouped scan of annotation (annotator, times, choice, response lengths)",
                "SELECT annotator, count(*) AS n, avg(epoch(submitted_at) - epoch(shown_at)) AS secs, "
                "avg((choice = 'a')::INT) AS share_a, avg(length(response_a) - length(response_b)) AS len_diff "
                "FROM annotation GROUP BY annotator", None),
        "run": (f"one scan of the {n_steps:,}-step run's metrics",
                "SELECT m.key AS metric, count(*) AS n, avg(m.value) AS mean FROM "
                "(SELECT unnest(map_entries(metrics)) AS m FROM train_step WHERE run_id = ?) GROUP BY metric",
                [BIG_RUN]),
        "rew": ("one grouped scan of reward_score (per scored step: count, mean, sd)",
                "SELECT step, count(*) AS n, avg(score) AS mean, stddev(score) AS sd FROM reward_score "
                "GROUP BY step", None),
    }
    base = {}
    for key, (label, sql, params) in baselines.items():
        base[key], _ = _time(lambda: store.sql(sql, params), repeat)
        print(f"baseline {key}: {label}: {base[key]:.3f} s")
    cases = [
        ("annotator_report", "ann", lambda: analysis.annotator_report(store)),
        ("annotator_drift (7d)", "ann", lambda: analysis.annotator_drift(store, window="7d")),
        ("throughput (1d)", "ann", lambda: analysis.throughput(store, every="1d")),
        ("agreement_matrix", "ann", lambda: analysis.agreement_matrix(store, min_overlap=20)),
        ("reward_drift", "rew", lambda: analysis.reward_drift(store)),
        ("training_trends (100k steps)", "run", lambda: analysis.training_trends(store, run_id=BIG_RUN)),
        ("metric_changepoints cusum (100k)", "run",
         lambda: analysis.metric_changepoints(store, run_id=BIG_RUN)),
        ("metric_changepoints p-h (100k)", "run",
         lambda: analysis.metric_changepoints(store, method="page_hinkley", run_id=BIG_RUN)),
        ("reward_hacking", "rew", lambda: analysis.reward_hacking(store)),
        ("summary", "ann", lambda: analysis.summary(store)),
    ]
    failed = False
    print(f"{'analysis':<36} {'seconds':>8}  {'x baseline':>10}  target")
    for name, key, fn in cases:
        secs, out = _time(fn, repeat)
        target = TARGETS.get(name.split(" ")[0])
        verdict = ""
        if target is not None:
            verdict = f"< {target:.1f} s  {'ok' if secs < target else 'MISSED'}"
            failed |= secs >= target
        rows = getattr(out, "height", None)
        extra = f"  ({rows:,} rows)" if rows is not None else ""
        if name == "summary":
            extra = f"  ({out.findings.height} findings)"
        print(f"{name:<36} {secs:8.3f}  {secs / base[key]:8.1f}x {key}  {verdict}{extra}", flush=True)
    store.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
