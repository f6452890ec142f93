"""The main job, end to end: ``rlhf-audit demo``.

1. create demo keys (``OUT/keys/``, unencrypted, and it says so), the key named after the store's
   origin as C2SP tlog-checkpoint asks;
2. build an audit store from the seeded synthetic campaign (``OUT/audit.duckdb``) and record a few
   differentially private releases against a privacy budget;
3. sign a checkpoint of the store's Merkle tree (a C2SP signed note, Ed25519) and verify the store;
4. export the snapshot bundle (``OUT/bundle/``) and verify the bundle;
5. export the compliance notebook (``OUT/compliance.ipynb`` and ``.html``);
6. serve the dashboard over the bundle (unless ``--no-serve``).

The demo writes only into a new or empty folder. It lists what it created in ``OUT/.rlhf-audit-demo.json``;
a second run into the same folder needs ``overwrite=True`` (``--overwrite``), which deletes only those
files: anything else in the folder is kept, and a file or folder in the demo's way that it did not
create is refused.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> run_demo(size=2000, out=out, serve=False, quiet=True)
0
>>> sorted(p.name for p in out.iterdir())
['.rlhf-audit-demo.json', 'audit.duckdb', 'bundle', 'compliance.html', 'compliance.ipynb', 'keys']
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .errors import AuditKitError

__all__ = ["run_demo", "DEMO_ORIGIN", "MARKER"]

#: The demo store's checkpoint origin, and so the name of the demo's signing key.
DEMO_ORIGIN = "rlhf-audit-kit.demo/campaign"
#: The file in the output folder listing every file and folder the demo created there.
MARKER = ".rlhf-audit-demo.json"
_MARKER_FORMAT = "rlhf-audit-kit/demo-output/v1"
_LABELS = {"checkpoint": "training checkpoint"}  # never to be read as a signed checkpoint
_OUTPUTS = ("audit.duckdb", "audit.duckdb.wal", "keys", "bundle", "compliance.ipynb", "compliance.html")


def run_demo(size: int = 20_000, out: Path | str = "rlhf-audit-demo", *, serve: bool = True, port: int = 5006,
             seed: int = 0, quiet: bool = False, overwrite: bool = False) -> int:
    from .demo import Campaign
    from .keys import INFO_FILE, PSEUDONYM_KEY_FILE, SIGNING_KEY_FILE, VKEY_FILE, init_keys, load_signer
    from .store import open_store

    say = (lambda *a, **k: None) if quiet else print
    out = Path(out)
    own = _Claims.prepare(out, overwrite)
    store_path, keys_dir, bundle_dir = out / "audit.duckdb", out / "keys", out / "bundle"

    t0 = time.perf_counter()
    own.claim("keys", *(f"keys/{f}" for f in (SIGNING_KEY_FILE, PSEUDONYM_KEY_FILE, VKEY_FILE, INFO_FILE)))
    init_keys(keys_dir, DEMO_ORIGIN, no_passphrase=True)
    say(f"[1/6] created DEMO keys in {keys_dir}, key {DEMO_ORIGIN} (named after the store's origin, as C2SP "
        "asks) -- UNENCRYPTED, for this demo only; for real work: `rlhf-audit init STORE --origin ORIGIN` "
        "then `rlhf-audit keys init DIR --store STORE` (passphrase-protected)")

    campaign = Campaign(size=size, seed=seed)
    own.claim("audit.duckdb", "audit.duckdb.wal")
    with open_store(store_path, keys=keys_dir, origin=DEMO_ORIGIN) as store:
        campaign.write_to(store, progress=not quiet)
        recorded = store.size
        say(f"[2/6] recorded {recorded:,} campaign events in {store_path} "
            f"({', '.join(f'{_LABELS.get(k, k)} {n:,}' for k, n in store.counts().items())})")
        say("      (a `checkpoint` event is a training checkpoint of the PPO run; a signed checkpoint is step 3)")
        _privacy_releases(store)
        counts = store.counts()
        say(f"      + {store.size - recorded} privacy events: {counts.get('privacy_budget', 0)} budget and "
            f"{counts.get('privacy_spend', 0)} spend records of differentially private releases against the "
            "annotator-pool budget")

        signer = load_signer(keys_dir)
        signed_size = store.size
        snap = store.snapshot(signer)
        say(f"[3/6] signed checkpoint (a signed tree head) of tree size {snap.checkpoint.size:,} = {recorded:,} "
            f"campaign + {signed_size - recorded} privacy events: root "
            f"{snap.checkpoint.root_hash.hex()[:16]}..., key {signer.vkey}")
        say(f"      + 1 snapshot event recording that signed checkpoint in the log: the store now holds "
            f"{store.size:,} events")
        report = store.verify(signer.vkey)
        report.raise_for_status()
        say(f"      verified the store: {report.message}")
        if report.events > report.signed_size:
            say("      (not yet covered by a signed checkpoint: hashed into the log and checked, but no signature "
                "vouches for it until the next signed checkpoint; here: the snapshot event itself)")
        own.claim("bundle")
        bundle = snap.export(bundle_dir)
        own.claim_tree("bundle")
    breport = bundle.verify(signer.vkey)
    breport.raise_for_status()
    say(f"[4/6] exported and verified the bundle {bundle_dir}: {breport.message}")
    say(f"      (a bundle holds exactly the {breport.signed_size:,} events its signed checkpoint covers, "
        "not the snapshot event; the signed note is bundle/checkpoint.note)")
    for w in dict.fromkeys(report.warnings + breport.warnings):  # none when the key is named after the origin
        say(f"      warning: {w}")

    own.claim("compliance.ipynb", "compliance.html")
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


class _Claims:
    """What the demo created in its output folder, kept in :data:`MARKER` (paths relative to the folder).

    A path is claimed just before the demo creates it, so an interrupted run can be overwritten too.
    """

    def __init__(self, folder: Path, created: list[str]):
        self.folder, self.created = folder, created
        self._write()

    @classmethod
    def prepare(cls, folder: Path, overwrite: bool) -> _Claims:
        """Check ``folder``, delete an earlier run's files if ``overwrite``; refuse with one line otherwise."""
        if folder.exists() and not folder.is_dir():
            raise AuditKitError(f"{folder} is a file, not a folder: choose another --out")
        owned = _read_marker(folder)
        present = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
        others = [n for n in present if n != MARKER and n not in (owned or ())]
        if not overwrite and owned is not None:
            raise AuditKitError(f"{folder} holds an earlier demo's output: pass --overwrite to replace it (only the "
                                f"files the demo created are deleted), or choose another --out")
        if not overwrite and others:
            more = f" and {len(others) - 1} more" if len(others) > 1 else ""
            raise AuditKitError(f"{folder} is not empty and the demo did not create what it holds ({others[0]!r}"
                                f"{more}): choose a new or empty folder with --out, or pass --overwrite to write "
                                "beside it (kept)")
        owned = owned or []
        foreign = [folder / n for n in others if n in _OUTPUTS] + _unclaimed(folder, owned)
        if foreign:
            raise AuditKitError(f"{foreign[0]} was not created by the demo: refusing to replace it even with "
                                "--overwrite; move it away or choose another --out")
        for rel in sorted(owned, key=lambda r: -r.count("/")):  # files and inner folders first
            path = folder / rel
            if path.is_dir():
                path.rmdir()  # empty: _unclaimed found nothing else in it
            else:
                path.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder, [])

    def claim(self, *rels: str) -> None:
        self.created += [r for r in rels if r not in self.created]
        self._write()

    def claim_tree(self, rel: str) -> None:
        """Claim everything the demo wrote under the folder ``rel``."""
        root = self.folder / rel
        self.claim(*sorted(p.relative_to(self.folder).as_posix() for p in root.rglob("*")))

    def _write(self) -> None:
        tmp = self.folder / (MARKER + ".tmp")
        tmp.write_text(json.dumps({"format": _MARKER_FORMAT, "created": self.created}, indent=1) + "\n",
                       encoding="utf-8")
        os.replace(tmp, self.folder / MARKER)


def _read_marker(folder: Path) -> list[str] | None:
    """The paths an earlier run claimed, or None without a marker; a marker naming paths outside the folder
    is refused (--overwrite deletes what it names)."""
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        created = data["created"]
        ok = data.get("format") == _MARKER_FORMAT and isinstance(created, list) and all(
            isinstance(r, str) and r and not r.startswith("/") and ".." not in r.split("/") for r in created)
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise AuditKitError(f"{path} is not a marker written by the demo: remove the folder's demo files yourself, "
                            "or choose another --out")
    return created


def _unclaimed(folder: Path, owned: list[str]) -> list[Path]:
    """Paths inside the claimed folders (and links among the claimed paths) that the demo did not create."""
    claimed, out = set(owned), []
    for rel in owned:
        path = folder / rel
        if path.is_symlink():
            out.append(path)
        elif path.is_dir():
            for dirpath, dirs, files in os.walk(path):  # does not follow links
                for name in dirs + files:
                    if (Path(dirpath) / name).relative_to(folder).as_posix() not in claimed:
                        out.append(Path(dirpath) / name)
    return sorted(out)


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
