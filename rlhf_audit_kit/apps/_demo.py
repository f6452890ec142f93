"""A small demo record for the apps' tests, notebook and benchmark: store, keys, DP releases, bundle.

>>> paths = build_demo(tmp_folder, size=5_000)      # doctest: +SKIP
>>> AuditDashboard(paths.bundle)                     # doctest: +SKIP
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoPaths", "build_demo"]


@dataclass(frozen=True)
class DemoPaths:
    folder: Path
    store: Path
    keys: Path
    bundle: Path
    vkey: str


def build_demo(folder: str | os.PathLike, *, size: int = 10_000, seed: int = 0, privacy: bool = True,
               snapshots: int = 2) -> DemoPaths:
    """Build ``folder/{keys, audit.duckdb, bundle}``: a seeded demo campaign, a few budgets and DP
    releases, ``snapshots`` signed snapshots taken as the log grows, and a bundle of the last one.
    Keys are created without a passphrase (test material only)."""
    import numpy as np

    from ..demo import Campaign
    from ..keys import init_keys, load_signer
    from ..store import open_store
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys, store_path, bundle = folder / "keys", folder / "audit.duckdb", folder / "bundle"
    info = init_keys(keys, "demo.rlhf-audit-kit.example/log", no_passphrase=True)
    signer = load_signer(keys)
    camp = Campaign(size, seed)
    with open_store(store_path, keys=keys, origin="demo.rlhf-audit-kit.example/log") as store:
        frames = list(camp.iter_frames(max(1, size // max(snapshots, 1))))
        cut = max(1, len(frames) // max(snapshots, 1))
        snap = None
        for i, (kind, frame) in enumerate(frames):
            store.extend(frame, kind=kind)
            if snapshots > 1 and (i + 1) % cut == 0 and i + 1 < len(frames):
                store.snapshot(signer)
        if privacy:
            rng = np.random.default_rng(seed)
            p = store.privacy
            p.set_budget("global", 3.0, 1e-6, description="whole campaign")
            p.set_budget("dataset:demo-prefs@v1", 1.5, description="preference data")
            p.set_budget("pool:vendor-a", 1.0, 1e-6, description="vendor A annotators")
            p.release("annotator_count", epsilon=0.2, scopes=["global"], rng=rng)
            p.release("count", epsilon=0.3, scopes=["global", "dataset:demo-prefs@v1"], rng=rng)
            p.release("choice_shares", epsilon=0.25, scopes=["global", "dataset:demo-prefs@v1"], rng=rng)
            p.release("time_per_item", epsilon=0.4, scopes=["global", "pool:vendor-a"], rng=rng)
            p.release("agreement_rate", epsilon=0.5, delta=1e-7, mechanism="gaussian",
                      scopes=["global", "pool:vendor-a"], rng=rng)
            p.release("items_per_annotator", epsilon=0.2, scopes=["dataset:demo-prefs@v1"], rng=rng)
        snap = store.snapshot(signer)
        snap.export(bundle, verifier=info.vkey)
    return DemoPaths(folder, store_path, keys, bundle, info.vkey)
