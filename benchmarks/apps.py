"""Server-side cost of the dashboard on a ~1M-annotation bundle (or store).

    python benchmarks/apps.py                      # builds ./.bench-apps/ once (~1-2 min), then measures
    python benchmarks/apps.py --source PATH        # an existing bundle folder or store file

Prints: imports; time to build the dashboard (first tab) and all four tabs into a Bokeh document
(what a new browser session costs on the server); and the time to apply filters (param change to
updated Bokeh models, medians of repeated changes). Targets: build < 3 s, filter < 500 ms.

Baseline, measured in the same run: a minimal Panel page (a title and one hvplot bar chart of the
annotations per annotator, from one grouped query of the same source) built into a Bokeh document the
same way, i.e. what any Panel view of this data costs at least.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", help="bundle folder or store file (default: build a demo)")
    ap.add_argument("--size", type=int, default=1_160_000, help="demo campaign size (events); ~1M annotations")
    ap.add_argument("--out", default=".bench-apps", help="where the demo is built (reused if present)")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    import panel as pn

    from rlhf_audit_kit.apps import AuditDashboard, as_source
    from rlhf_audit_kit.apps._demo import build_demo
    import rlhf_audit_kit.privacy  # noqa: F401  (dp-accounting; the server warms it up at start)
    import scipy.stats  # noqa: F401
    t_import = time.perf_counter() - t0

    if a.source:
        path = Path(a.source)
    else:
        out = Path(a.out)
        path = out / "bundle"
        if not path.exists():
            t, _ = timed(lambda: build_demo(out, size=a.size, seed=0))
            print(f"built demo record in {t:.1f} s ({out})")
    src = as_source(path)
    n_ann = src.count("annotation")
    print(f"source: {src.kind} {path} · {src.size:,} events · {n_ann:,} annotations")
    print(f"imports (panel, hvplot, analysis, accountant): {t_import:.2f} s")

    pn.extension("tabulator")
    import hvplot.polars  # noqa: F401

    def minimal_page():
        per = src.sql("SELECT annotator, count(*) AS n FROM annotation GROUP BY annotator ORDER BY annotator")
        return pn.Column("# Annotations per annotator", per.hvplot.bar(x="annotator", y="n")).get_root()
    minimal_page()  # warm Bokeh/hvplot once, as the dashboard's import above did for its modules
    t_base = statistics.median(timed(minimal_page)[0] for _ in range(a.repeat))
    print(f"baseline: minimal Panel page (one grouped query, one bar chart): {t_base:.2f} s")

    d = AuditDashboard(src)
    t_first, root = timed(lambda: pn.panel(d).get_root())
    print(f"build dashboard, first session (Annotators tab rendered, data loaded): {t_first:.2f} s")

    def all_tabs():
        for i in (1, 2, 3):
            d.active = i
    t_rest, _ = timed(all_tabs)
    print(f"  + the other three tabs rendered: {t_rest:.2f} s  (full dashboard {t_first + t_rest:.2f} s)")

    d2 = AuditDashboard(src)  # a second session reuses the source's cached frames
    def second():
        pn.panel(d2).get_root()
        for i in (1, 2, 3):
            d2.active = i
    t_second, _ = timed(second)
    print(f"full dashboard, a second session (cached data; what `rlhf-audit serve` gives every visitor, "
          f"since it warms the caches at start-up): {t_second:.2f} s = {t_second / t_base:.1f}x the baseline page")

    ann, drift, priv = d.annotators, d.drift, d.privacy
    flagged = ann.flagged()
    lo, hi = ann.param.time_window.bounds
    changes = {
        "annotator": [lambda w=w: setattr(ann, "annotator", w) for w in (flagged * 3)[:a.repeat]],
        "task batch": [lambda p=p: setattr(ann, "task", p) for p in
                       ("task-0001", "task-0002", "task-00", "task-0003", "")[:a.repeat]],
        "time window": [lambda k=k: setattr(ann, "time_window", (lo + (hi - lo) * k / 10, hi))
                        for k in range(1, a.repeat + 1)],
        "drift checkpoint": [lambda s=s: setattr(drift, "checkpoint", s) for s in
                             drift.param.checkpoint.objects[1:a.repeat + 1]],
        "privacy scope": [lambda s=s: setattr(priv, "scope", s) for s in
                          (priv.param.scope.objects * 3)[1:a.repeat + 1]],
    }
    worst = 0.0
    for name, fns in changes.items():
        times = [timed(f)[0] for f in fns]
        med = statistics.median(times)
        worst = max(worst, med)
        print(f"filter {name:<17} median {1000 * med:6.0f} ms = {med / t_base:4.1f}x the baseline page  "
              f"(max {1000 * max(times):.0f} ms, n={len(times)})")
    print(f"targets: build < 3 s -> first session, first tab {t_first:.2f} s (cold process), full four-tab "
          f"dashboard {t_first + t_rest:.2f} s cold / {t_second:.2f} s warm; filter < 500 ms -> worst median "
          f"{1000 * worst:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
