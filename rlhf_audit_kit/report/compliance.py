"""Generate a compliance notebook bound to one signed snapshot bundle, execute it and render HTML.

The notebook is built with nbformat from the section templates of
:mod:`rlhf_audit_kit.report.sections`, in the order of the compliance map (section 5):

0. notice and scope (evidence support, **not legal advice**);
1. snapshot binding and verification: the first code cell opens the bundle (path relative to the
   notebook), verifies every link (manifest hashes, typed rows, leaf hashes, root, Ed25519 signature
   against the **pinned** verifier key) and that the bundle's checkpoint is the pinned (origin,
   size, root), and with pinned witnesses that enough of them cosigned it; on any failure it
   raises and the notebook stops, showing nothing else;
2. applicability (manual input), 3. system identity, 4. training methodology, 5. data governance,
6. annotators and privacy (DP releases recorded in the log only), 7. data quality and bias (pool
level), 8. reward model and policy training record, 9. evaluation (gap unless logged),
10. human oversight, 11. checkpoint lineage, 12. record-keeping and retention, 14. crosswalk,
15. gaps and manual attestations.

The notebook pins only public values (the verifier key string, origin, size and root): no secret
is ever written. The key must be one you trust, given by you (``verifier=``): the key shipped in a
bundle proves only that the bundle is self-consistent, so a notebook made with
``trust_bundle_key=True`` says so in red at its top.

What the record holds is data, never markup: every string shown goes through
:func:`~rlhf_audit_kit.report.sections.md_escape`, and values in code cells are pinned with
``repr``. The kernel that runs the notebook imports nothing from the notebook's folder (its first
code cell drops ``''`` and the working directory from ``sys.path`` before any import, also when an
auditor re-runs it in JupyterLab), and :func:`execute_notebook` starts it without the kit's secret
environment variables. A notebook is never written inside its bundle's folder (docs/security.md).

The notebook is executed offline with nbclient; its outputs are deterministic (no wall-clock
times, sorted tables, fixed float formatting), so re-executing it gives the same outputs and
``pytest --nbval`` passes on it. The HTML rendering (nbconvert) uses plain markdown tables and an
inline SVG chart, so it reads offline.

>>> from rlhf_audit_kit.report import TEMPLATES
>>> sorted(TEMPLATES)
['eu-ai-act']
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import AuditKitError, KeysError
from .sections import NOT_PINNED, md_code

__all__ = ["export_compliance_notebook", "build_compliance_notebook", "render_html", "execute_notebook",
           "kernel_environment", "TEMPLATES", "NOTICE"]

#: The notice every compliance notebook opens with (wording of the compliance map).
NOTICE = (
    "> **Notice.** This notebook and rlhf-audit-kit support the gathering and re-verification of "
    "evidence. **They are not legal advice**, they do not decide whether an obligation applies, and "
    "a verified snapshot is **not a finding that any system or model complies** with the EU AI Act, "
    "the GDPR or any other regime. Figures are shown as recorded in the signed log; what the log "
    "does not record is listed as a gap for manual attestation."
)

_SCOPE = """
**Scope.** Regimes in view: Regulation (EU) 2024/1689 (AI Act) as amended by the Digital Omnibus on
AI, the Commission's GPAI guidance, NIST AI RMF 1.0 / NIST AI 600-1, ISO/IEC 42001:2023 Annex A and
the GDPR. Article numbers are for lookup, not quotation. Training-time records mainly evidence
Art 10, 11, 17 and Annex IV/XI; they serve Art 12 only for events such as promoting a checkpoint or
oversight actions on a deployed system.

**Role assumed (manual input):** _provider / deployer / modifier of a GPAI model / research only
(Art 2(6), 2(8)) — state which, and the risk class of the system._

**How to read this notebook.** The first code cell verifies the snapshot bundle this notebook is
bound to and stops the notebook if anything does not match. Every later figure is computed from the
verified Parquet files and names the log sequence numbers (`seq`) it comes from. Re-run it with
*Run all*; the outputs are deterministic.
"""

_APPLICABILITY = """
### 2. Applicability and timeline (manual input)

| item | date or rule | applies here? |
|---|---|---|
| Prohibitions (Art 5), AI literacy (Art 4) | 2 Feb 2025 | _manual_ |
| GPAI model obligations (Art 53-55) | 2 Aug 2025 (models already on the market: 2 Aug 2027) | _manual_ |
| General application, Art 50 transparency | 2 Aug 2026 | _manual_ |
| High-risk, Annex III (Art 6(2)) | 2 Dec 2027 after the Omnibus (2 Aug 2026 in the 2024 text) | _manual_ |
| High-risk, Annex I products (Art 6(1)) | 2 Aug 2028 after the Omnibus (2 Aug 2027 in the 2024 text) | _manual_ |
| Research exclusions | Art 2(6), 2(8): development and testing before placing on the market | _manual_ |
| Fine-tuning a GPAI model | modifier presumed a new provider above one third of the original training compute | see section 4 |
"""

_EVALUATION_GAP = """
### 9. Evaluation and testing

> **Gap:** no signed evaluation records (dataset hash, metric, value, release gate, signer role)
> are part of this snapshot unless recorded as `custom` events named `eval_*`. Annex IV 2(g) asks for
> test logs dated and signed by responsible persons: record them as events before the next snapshot,
> or attest them below.
"""

_GAPS = """
### 15. Gaps and manual attestations

No log can prove the items below. Fill them in (or attach the documents) before handing this notebook
on; the record above stays verifiable whatever is written here.

| item | attestation (manual input) |
|---|---|
| Intended purpose and foreseeable misuse of the system | _…_ |
| Role and risk class (section 2) | _…_ |
| Legal basis for processing annotators' personal data; DPIA reference | _…_ |
| Notices given to annotators and how consent withdrawals are handled | _…_ |
| Special-category data (Art 10(5) / Art 4a): processed or explicitly not processed | _…_ |
| Custody of the pseudonymisation key and of the signing key (who, where) | _…_ |
| Copyright and TDM opt-out policy for training data | _…_ |
| Compute (FLOPs, GPU-hours, energy) if not logged | _…_ |
| Evaluation and release gates if not logged (section 9) | _…_ |
| Retention period and storage of earlier checkpoints (section 12) | _…_ |

Attested by: _name, role, date_.
"""

#: Templates: name -> section plan (a list of ("md", text) / ("code", source) items).
TEMPLATES: dict[str, str] = {"eu-ai-act": "EU AI Act, with NIST AI RMF / AI 600-1, ISO/IEC 42001 and GDPR crosswalk"}


# Runs before any import: a module file in the notebook's folder (say a polars.py planted next to
# a bundle) must never shadow an installed package. sys and os are always loaded already.
_SYS_PATH_GUARD = """\
import os, sys  # noqa: E401 - loaded with the interpreter: importing them reads no file
sys.path[:] = [p for p in sys.path if os.path.isabs(p) and os.path.realpath(p) != os.path.realpath(os.getcwd())]
"""


_WITNESS_CHECK = """
# The witnesses you pinned (public keys) and how many of them must have cosigned this checkpoint.
PINNED_WITNESSES = {witnesses!r}
WITNESS_QUORUM = {quorum!r}

from rlhf_audit_kit.ledger.witness import bundle_cosignatures
from rlhf_audit_kit.report.identity import cosigned_by

cosigned, witness_findings = bundle_cosignatures(bundle, PINNED_WITNESSES, WITNESS_QUORUM)
if witness_findings:
    raise IntegrityError(f"WITNESS CHECK FAILED: {{witness_findings[0].message}}", damage=witness_findings[0].damage)
for c in cosigned:
    print(cosigned_by(c))
"""


def _first_cell(rel_bundle: str, vkey: str, origin: str, size: int, root: str, pinned: bool = True,
                witnesses: list[str] | tuple = (), quorum: int | None = None, remote: bool = False) -> str:
    key_comment = ("the verifier key you pinned" if pinned else
                   "NOT PINNED: the key shipped in the bundle itself, which proves only self-consistency")
    verified = "Verified" if pinned else "Self-consistent only (NO key was pinned)"
    where = ("the snapshot bundle's URL; its file system finds credentials in this kernel's own config (a profile, "
             "a role), never here" if remote else
             "the snapshot bundle, relative to this notebook (change it if you moved the bundle)")
    return _SYS_PATH_GUARD + f'''
# Binding and verification: this cell stops the notebook if anything does not match.
# Only public values are pinned here (the verifier key is a public key); no secret is needed.
BUNDLE = {rel_bundle!r}  # {where}
PINNED_VKEY = {vkey!r}  # {key_comment}
PINNED_ORIGIN = {origin!r}
PINNED_SIZE = {size!r}
PINNED_ROOT = {root!r}

from rlhf_audit_kit.bundle import open_bundle
from rlhf_audit_kit.errors import IntegrityError, SignatureError

bundle = open_bundle(BUNDLE)
report = bundle.verify(PINNED_VKEY, workers=0)  # manifest SHA-256s, typed rows, leaves, root, signature
if not report.ok:
    error = SignatureError if report.damage == "bad-signature" else IntegrityError
    raise error(f"INTEGRITY CHECK FAILED: the bundle {{BUNDLE!r}} does not verify under the pinned key; "
                f"nothing in this notebook can be relied on. {{report.message}}")
cp = bundle.checkpoint
if (cp.origin, cp.size, cp.root_hash.hex()) != (PINNED_ORIGIN, PINNED_SIZE, PINNED_ROOT):
    raise IntegrityError(f"INTEGRITY CHECK FAILED: the bundle's checkpoint (origin {{cp.origin!r}}, size "
                         f"{{cp.size}}, root {{cp.root_hash.hex()}}) is not the one this notebook is bound to "
                         f"(origin {{PINNED_ORIGIN!r}}, size {{PINNED_SIZE}}, root {{PINNED_ROOT}}).")
print(f"{verified}: {{report.message}}")
print(f"Bound to: origin {{cp.origin}}, size {{cp.size:,}}, root {{cp.root_hash.hex()}}")
print(f"Signed by: {{PINNED_VKEY}}")
''' + (_WITNESS_CHECK.format(witnesses=list(witnesses), quorum=len(witnesses) if quorum is None else quorum)
       if witnesses else "")


def build_compliance_notebook(bundle, *, notebook_dir: str | os.PathLike, vkey: str,
                              template: str = "eu-ai-act", include_texts: bool = False,
                              bundle_ref: str | None = None, pinned: bool = True,
                              witnesses: list[str] | tuple = (), witness_quorum: int | None = None):
    """The (unexecuted) compliance notebook of an open, verified ``bundle`` as a ``NotebookNode``.

    ``bundle_ref``: how the first cell names the bundle (default: its path relative to
    ``notebook_dir``). ``pinned=False``: ``vkey`` is the bundle's own key, not one the exporter
    trusts; the notebook then says in red at its top that nothing was pinned. ``witnesses``:
    witness vkeys pinned in the first cell, which re-checks that ``witness_quorum`` (default: all)
    of them cosigned the checkpoint; section 1 names those that did.
    """
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(sorted(TEMPLATES))}")
    cp = bundle.checkpoint
    remote = not bundle.files.local
    if bundle_ref is not None:
        ref = bundle_ref
    elif remote:  # the URL as shown: without a user:password part; storage options are never written
        ref = bundle.files.shown
    else:
        ref = Path(os.path.relpath(Path(bundle.path).resolve(), Path(notebook_dir).resolve())).as_posix()
    title = ("# Compliance evidence notebook\n\n" + ("" if pinned else NOT_PINNED + "\n\n")
             + f"Snapshot of {md_code(cp.origin)}: {cp.size:,} events, root "
             f"`{cp.root_hash.hex()}`. Template: {template} ({TEMPLATES[template]}).\n\n"
             + NOTICE + "\n" + _SCOPE)
    md, code = new_markdown_cell, new_code_cell
    cells = [
        md(title.strip()),
        code(_first_cell(ref, vkey, cp.origin, cp.size, cp.root_hash.hex(), pinned, witnesses, witness_quorum,
                         remote)),
        code("from rlhf_audit_kit.report import sections as S\n\nS.section_identity(bundle, report"
             + ("" if pinned else ", pinned=False")
             + (", cosigned=cosigned, witnesses=len(PINNED_WITNESSES), quorum=WITNESS_QUORUM" if witnesses else "")
             + ")"),
        md(_APPLICABILITY.strip()),
        code("S.section_system_identity(bundle)"),
        code("S.section_training(bundle)"),
        code("S.section_data_governance(bundle)"),
        code("S.section_annotators_privacy(bundle)"),
        code("S.section_bias(bundle)"),
        code("S.section_training_record(bundle)"),
        md(_EVALUATION_GAP.strip()),
        code("S.section_oversight(bundle)"),
        code("S.section_lineage(bundle)"),
        code("S.section_record_keeping(bundle)"),
        code("S.section_crosswalk(bundle)"),
        md(_GAPS.strip()),
    ]
    if include_texts:
        cells.append(md("The notebook was generated with `include_texts=True`: the appendix below shows "
                        "prompt and response texts from the bundle."))
        cells.append(code("S.section_texts(bundle)"))
    cells.append(code("bundle.close()"))
    nb = new_notebook(cells=cells)
    for i, c in enumerate(nb.cells):
        c["id"] = f"compliance-{i:02d}"  # stable ids: regenerating gives the same file
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["rlhf_audit_kit"] = {"template": template, "origin": cp.origin, "tree_size": cp.size,
                                     "root_hash": cp.root_hash.hex(), "vkey": vkey, "pinned": bool(pinned),
                                     **({"witnesses": list(witnesses), "witness_quorum": len(witnesses)
                                         if witness_quorum is None else witness_quorum} if witnesses else {}),
                                     "bundle": ref, "include_texts": bool(include_texts)}
    nbformat.validate(nb)
    return nb


# Environment variables a kernel never gets: the kit's own (passphrase, keys folder, ...) and
# anything named like a secret (tokens, passwords, cookie secrets, API keys, agent sockets).
_SECRET_ENV = re.compile(r"^RLHF_AUDIT_|PASS(WORD|WD|PHRASE)|SECRET|TOKEN|CREDENTIAL|PRIVATE|AUTH|"
                         r"API_?KEY|ACCESS_?KEY|SIGNING_?KEY|_KEYS?$|^KEYS?$", re.IGNORECASE)


def kernel_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a compliance notebook's kernel runs with: ``environ`` (default ``os.environ``)
    without secret-like variables, and with ``PYTHONSAFEPATH=1`` (no working directory on ``sys.path``).

    >>> sorted(kernel_environment({"PATH": "/bin", "RLHF_AUDIT_PASSPHRASE": "x", "GITHUB_TOKEN": "y"}))
    ['PATH', 'PYTHONSAFEPATH']
    """
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if not _SECRET_ENV.search(k)}
    env["PYTHONSAFEPATH"] = "1"
    return env


def _check_outside_bundle(notebook_dir: Path, bundle_dir: Path) -> None:
    nb_dir, b_dir = notebook_dir.resolve(), bundle_dir.resolve()
    if nb_dir == b_dir or b_dir in nb_dir.parents:
        raise AuditKitError(f"the notebook's folder {notebook_dir} is inside the bundle folder {bundle_dir}: "
                            "a kernel started there could import files planted in the bundle; write the "
                            "notebook elsewhere (e.g. next to the bundle)")


def execute_notebook(nb, notebook_dir: str | os.PathLike, *, timeout: int = 600,
                     kernel_name: str = "python3"):
    """Execute ``nb`` in place with nbclient, with ``notebook_dir`` as the working directory.

    The kernel gets :func:`kernel_environment` (no secrets of the kit or the caller), does not put
    its working directory on ``sys.path``, and is refused (AuditKitError) when ``notebook_dir`` lies
    inside the bundle the notebook names. Raises ``nbclient.exceptions.CellExecutionError`` when a
    cell fails (e.g. the first cell's integrity check); the cells after the failing one are then
    left without outputs.
    """
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    ref = nb.metadata.get("rlhf_audit_kit", {}).get("bundle")
    if ref:
        _check_outside_bundle(Path(notebook_dir), Path(notebook_dir) / ref)
    for c in nb.cells:  # no stale evidence: a run that stops early leaves the later cells empty
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    km = KernelManager(kernel_name=kernel_name)
    if "transport_encryption" in KernelManager.class_traits():  # jupyter_client >= 8.10
        km.transport_encryption = "auto"  # CurveZMQ where libzmq has it: evidence never crosses TCP in clear
    try:
        NotebookClient(nb, km=km, timeout=timeout, kernel_name=kernel_name,
                       extra_arguments=["--IPKernelApp.ignore_cwd=True"],  # IPython would add '' to sys.path
                       resources={"metadata": {"path": str(notebook_dir)}}).execute(env=kernel_environment())
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    for c in nb.cells:  # execution timings are wall-clock noise
        c.get("metadata", {}).pop("execution", None)
    return nb


def render_html(nb, path: str | os.PathLike) -> Path:
    """Render an executed notebook to a standalone HTML file (offline-friendly: no widgets, no CDN plots)."""
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(template_name="lab")
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb)
    # The outputs are markdown, tables and inline SVG: drop the template's CDN scripts (require.js,
    # MathJax), which would only fail to load offline.
    body = re.sub(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>', "", body)
    out = Path(path)
    out.write_text(body, encoding="utf-8")
    return out


def _resolve_vkey(verifier: Any) -> str:
    from ..ledger.verify import resolve_verifiers
    vs = resolve_verifiers(verifier)
    if len(vs) != 1:
        raise ValueError("pin exactly one verifier key")
    return vs[0].vkey


def _check_witnesses(bundle, witnesses: Any, quorum: int | None) -> list[str]:
    """The pinned witness vkeys, after checking that ``quorum`` of them cosigned ``bundle`` now."""
    if witnesses is None or (isinstance(witnesses, (list, tuple)) and not witnesses):
        if quorum is not None:
            raise AuditKitError("a witness quorum needs the witness keys (witnesses=...)")
        return []
    from ..errors import IntegrityError
    from ..ledger.witness import bundle_cosignatures, resolve_witnesses
    ws = resolve_witnesses(witnesses)
    _, findings = bundle_cosignatures(bundle, ws, quorum)
    if findings:
        raise IntegrityError(f"the bundle's checkpoint does not meet the witness policy: {findings[0].message}",
                             damage=findings[0].damage)
    return [w.vkey for w in ws]


def export_compliance_notebook(bundle_or_snapshot: Any, path: str | os.PathLike, template: str = "eu-ai-act", *,
                               verifier: Any = None, include_texts: bool = False, html: bool = True,
                               execute: bool = True, bundle_folder: str | os.PathLike | None = None,
                               timeout: int = 600, trust_bundle_key: bool = False, witnesses: Any = None,
                               witness_quorum: int | None = None) -> Path:
    """Write a compliance notebook bound to a snapshot bundle; execute it and render it to HTML.

    Parameters
    ----------
    bundle_or_snapshot
        A :class:`~rlhf_audit_kit.bundle.Bundle`, a bundle folder path, or a
        :class:`~rlhf_audit_kit.ledger.snapshot.Snapshot` attached to a store (its bundle is then
        exported first, to ``bundle_folder`` or ``<notebook name>.bundle`` next to the notebook;
        an existing bundle of the same checkpoint there is reused).
    path
        The ``.ipynb`` to write. The first code cell names the bundle by its path relative to it, or
        by its URL for a bundle on object storage (``s3://...``), which the kernel opens with the
        file system's own config: a profile or a role, since secret-like environment variables are
        not passed to it (:func:`kernel_environment`); ``storage_options`` are never written.
    template
        A key of :data:`TEMPLATES`.
    verifier
        The verifier key you trust, pinned in the notebook (a vkey string, a vkey file, a keys folder
        or a Verifier). Default for a snapshot: the key that signed it in this process. A bundle
        needs it (KeysError without it), unless ``trust_bundle_key``.
    trust_bundle_key
        Explicit opt-out for a bundle without ``verifier``: check it against the key shipped inside
        it. That proves only that the bundle is self-consistent (whoever altered it could re-sign
        it), and the notebook says so in red at its top.
    witnesses, witness_quorum
        Witness keys you trust (vkey strings, files or witness keys folders) and how many of them
        must have cosigned the bundle's checkpoint (default: all). The notebook pins their public
        keys, its first code cell re-checks the quorum (cosigned notes in the bundle's
        ``cosignatures/``), and section 1 names the witnesses that cosigned. Nothing is written
        when the quorum is not met now.
    include_texts
        Add an appendix with prompt and response texts (off by default: they may hold personal data).
    html
        Also write ``<path>.html`` (nbconvert, offline-friendly).
    execute
        Execute the notebook with nbclient and store its outputs (needed for ``html``).

    Returns
    -------
    Path
        The notebook's path.

    Raises
    ------
    IntegrityError, SignatureError
        The bundle does not verify under the pinned key, or fewer than ``witness_quorum`` pinned
        witnesses cosigned it (nothing is written).
    KeysError
        No key was pinned (and no ``trust_bundle_key``).
    AuditKitError
        ``path`` lies inside the bundle's folder (a kernel there could import planted files).
    """
    import nbformat

    from ..bundle import Bundle, is_bundle, open_bundle
    from ..ledger.snapshot import Snapshot

    path = Path(path)
    if path.suffix != ".ipynb":
        raise ValueError(f"the notebook path must end in .ipynb, got {path}")
    if html and not execute:
        raise ValueError("html=True needs execute=True (the HTML shows the outputs)")
    if verifier is not None and trust_bundle_key:
        raise ValueError("pass either verifier= (the key you trust) or trust_bundle_key=True, not both")
    path.parent.mkdir(parents=True, exist_ok=True)
    opened = None
    if isinstance(bundle_or_snapshot, Snapshot):
        snap = bundle_or_snapshot
        folder = Path(bundle_folder) if bundle_folder is not None else path.with_name(path.stem + ".bundle")
        if is_bundle(folder):
            opened = open_bundle(folder)
            same = (opened.checkpoint.size, opened.checkpoint.root_hash) == (snap.size, snap.root_hash)
            if not same:
                opened.close()
                raise AuditKitError(f"{folder} holds another snapshot's bundle; pass bundle_folder=")
        else:
            opened = snap.export(folder, verifier=verifier)
        bundle = opened
        if verifier is None:
            verifier = snap.verifier
    elif isinstance(bundle_or_snapshot, Bundle):
        bundle = bundle_or_snapshot
    elif isinstance(bundle_or_snapshot, (str, os.PathLike)):
        bundle = opened = open_bundle(bundle_or_snapshot)
    else:
        raise TypeError(f"expected a Bundle, a bundle folder or a Snapshot, got {type(bundle_or_snapshot).__name__}")
    try:
        if bundle.files.local:
            _check_outside_bundle(path.parent, Path(bundle.path))
        elif bundle.files.url.startswith("memory://"):
            raise AuditKitError(f"{bundle.files.shown} lives in this process's memory, where a notebook's kernel "
                                "cannot open it: export the snapshot to a folder or to object storage first")
        if verifier is None and not trust_bundle_key:
            raise KeysError("a compliance notebook needs the verifier key you trust: pass verifier= (a vkey "
                            "string or file, or a keys folder); the key shipped in a bundle proves nothing "
                            "about who made it (trust_bundle_key=True exports anyway, marked NOT PINNED)")
        vkey = _resolve_vkey(verifier if verifier is not None else bundle.verifier)
        # refuse to write a notebook bound to a bundle that does not verify now
        bundle.verify(vkey, workers=0).raise_for_status()
        wkeys = _check_witnesses(bundle, witnesses, witness_quorum)
        nb = build_compliance_notebook(bundle, notebook_dir=path.parent, vkey=vkey, template=template,
                                       include_texts=include_texts, pinned=verifier is not None,
                                       witnesses=wkeys, witness_quorum=witness_quorum)
    finally:
        if opened is not None:
            opened.close()
    if execute:
        execute_notebook(nb, path.parent, timeout=timeout)
    nbformat.write(nb, path)
    if html:
        render_html(nb, path.with_suffix(".html"))
    return path
