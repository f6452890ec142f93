"""The main job, end to end: ``rlhf-audit demo``.

1. build an audit store from the seeded synthetic campaign (``OUT/audit.duckdb``);
2. create demo keys (``OUT/keys/``, unencrypted, and it says so) and record a few
   differentially private releases against a privacy budget;
3. sign a snapshot (C2SP checkpoint, Ed25519) and verify the store against it;
4. export the snapshot bundle (``OUT/bundle/``) and verify the bundle;
5. export the compliance notebook (``OUT/compliance.ipynb`` and ``.html``);
6. serve the dashboard over the bundle (unless ``--no-serve``).

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> run_demo(size=2000, out=out, serve=False, quiet=True)
0
>>> sorted(p.name for p in out.iterdir())
['audit.duckdb', 'bundle', 'compliance.html', 'compliance.ipynb', 'keys']
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path


def run_demo(size: int = 20_000, out: Path | str = "rlhf-audit-demo", *, serve: bool = True, port: int = 5006,
             seed: int = 0, quiet: bool = False) -> int:
    from .demo import Campaign
    from .keys import init_keys, load_signer
    from .store import open_store

    say = (lambda *a, **k: None) if quiet else print
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store_path, keys_dir, bundle_dir = out / "audit.duckdb", out / "keys", out / "bundle"
    for p in (store_path, Path(str(store_path) + ".wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(keys_dir, ignore_errors=True)
    shutil.rmtree(bundle_dir, ignore_errors=True)

    t0 = time.perf_counter()
    init_keys(keys_dir, "rlhf-audit-demo", no_passphrase=True)
    say(f"[1/6] created DEMO keys in {keys_dir} -- UNENCRYPTED, for this demo only; "
        "use `rlhf-audit keys init DIR --name NAME` (passphrase-protected) for real work")

    campaign = Campaign(size=size, seed=seed)
    with open_store(store_path, keys=keys_dir, origin="rlhf-audit-kit.demo/campaign") as store:
        campaign.write_to(store, progress=not quiet)
        say(f"[2/6] recorded {store.size:,} events in {store_path} "
            f"({', '.join(f'{k} {n:,}' for k, n in store.counts().items())})")
        _privacy_releases(store)
        say(f"      recorded {store.privacy.spend_history().height} differentially private releases "
            "against the annotator-pool budget")

        signer = load_signer(keys_dir)
        snap = store.snapshot(signer)
        say(f"[3/6] signed snapshot: tree size {snap.checkpoint.size:,}, root "
            f"{snap.checkpoint.root_hash.hex()[:16]}..., key {signer.vkey}")
        report = store.verify(signer.vkey)
        report.raise_for_status()
        say(f"      verified the store: {report.message}")
        bundle = snap.export(bundle_dir)
    breport = bundle.verify(signer.vkey)
    breport.raise_for_status()
    say(f"[4/6] exported and verified the bundle {bundle_dir}: {breport.message}")

    nb_path = bundle.export_compliance_notebook(out / "compliance.ipynb", verifier=signer.vkey, html=True)
    say(f"[5/6] compliance notebook: {Path(nb_path).resolve()}")
    say(f"      (HTML for readers without Jupyter: {(out / 'compliance.html').resolve()})")
    say(f"      done in {time.perf_counter() - t0:.1f} s")
    if not serve:
        say("[6/6] not serving (--no-serve). Serve later with: "
            f"rlhf-audit serve {bundle_dir} --vkey {keys_dir / 'verifier.vkey'} --port {port}")
        return 0
    from .apps.serve import serve
    say(f"[6/6] serving the dashboard over the bundle at http://localhost:{port}/  (Ctrl-C to stop)", flush=True)
    serve(bundle_dir, port=port, address="127.0.0.1", verifier=signer.vkey, show=False, warm=True)
    return 0


def _privacy_releases(store) -> None:
    """A budget for the annotator pool and the releases the compliance notebook reports."""
    ledger = store.privacy
    ledger.set_budget("pool:demo-vendors", epsilon=3.0, delta=1e-6,
                      description="annotator pool statistics released in the compliance report")
    # Noise comes from the OS CSPRNG; the compliance notebook reads the recorded answers, so it
    # stays reproducible without seeding the noise.
    for query, eps in (("annotator_count", 0.2), ("items_per_annotator", 0.5), ("agreement_rate", 0.5),
                       ("time_per_item", 0.5), ("choice_shares", 0.5)):
        ledger.release(query, epsilon=eps, scopes=("pool:demo-vendors",))
