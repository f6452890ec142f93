"""Compliance notebooks: bound to a bundle, executed offline, nbval-stable, tamper-stopping, secret-free."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import polars as pl
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key

from rlhf_audit_kit import demo
from rlhf_audit_kit.errors import SignatureError
from rlhf_audit_kit.keys import init_keys, load_signer
from rlhf_audit_kit.report import NOTICE, execute_notebook, export_compliance_notebook
from rlhf_audit_kit.store import open_store

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ROOT / "nbval_sanitize.cfg"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def campaign():
    return demo.campaign("small", seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, campaign):
    """A demo store with DP releases, snapshotted, bundled, and its compliance notebook exported."""
    tmp = tmp_path_factory.mktemp("compliance")
    keys = init_keys(tmp / "keys", "audit.example/test", no_passphrase=True)
    store = open_store(tmp / "audit.duckdb", keys=tmp / "keys", origin="audit.example/demo")
    campaign.write_to(store, progress=False)
    if hasattr(store, "privacy"):
        store.privacy.set_budget("global", 3.0, description="annotator pool statistics")
        store.privacy.release("annotator_count", epsilon=0.5)
        store.privacy.release("items_per_annotator", epsilon=0.5)
        store.privacy.release("choice_shares", epsilon=0.5)
    snap = store.snapshot(tmp / "keys")
    bundle = snap.export(tmp / "bundle")
    store.close()
    nb_path = export_compliance_notebook(bundle, tmp / "report" / "evidence.ipynb", verifier=keys.vkey)
    bundle.close()
    return {"tmp": tmp, "keys": keys, "bundle": tmp / "bundle", "notebook": nb_path,
            "html": nb_path.with_suffix(".html"), "snapshot": snap}


def _outputs_text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", ""))
            out.extend(str(v) for v in o.get("data", {}).values())
    return "\n".join(out)


def test_notebook_is_bound_to_the_bundle_and_opens_with_the_notice(exported):
    nb = nbformat.read(exported["notebook"], as_version=4)
    first_md, first_code = nb.cells[0], next(c for c in nb.cells if c.cell_type == "code")
    assert "not legal advice" in first_md.source and "not a finding that any system or model complies" in first_md.source
    assert NOTICE in first_md.source
    meta = nb.metadata["rlhf_audit_kit"]
    assert meta["vkey"] == exported["keys"].vkey
    for value in (exported["keys"].vkey, meta["origin"], meta["root_hash"], str(meta["tree_size"])):
        assert value in first_code.source
    assert "BUNDLE = '../bundle'" in first_code.source  # relative to the notebook
    text = _outputs_text(nb)
    assert "Verified: OK" in first_code.outputs[0]["text"]
    for heading in ("1. Snapshot binding", "4. Training methodology", "5. Data provenance",
                    "6. Annotators and privacy", "7. Data quality and bias", "8. Reward model",
                    "10. Human oversight", "11. Checkpoint lineage", "12. Record-keeping", "14. Crosswalk"):
        assert heading in text, heading
    assert "rollback" in text and "policy-step-" in text  # oversight decisions and checkpoints
    if any((exported["bundle"] / "segments").glob("privacy_spend-*.parquet")):
        assert "annotator_count" in text and "discrete_laplace" in text
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    assert exported["html"].is_file() and b"<table" in exported["html"].read_bytes()


def test_executed_notebook_passes_strict_nbval(exported):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--nbval",
         "--nbval-sanitize-with", str(SANITIZE), "--rootdir", str(exported["notebook"].parent),
         "-o", "addopts=", str(exported["notebook"])],
        cwd=exported["notebook"].parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def _tampered_copy(exported, tmp_path) -> tuple[Path, Path]:
    """Copy bundle and notebook side by side (the notebook names ../bundle), return both paths."""
    shutil.copytree(exported["bundle"], tmp_path / "bundle")
    (tmp_path / "report").mkdir()
    nb_copy = tmp_path / "report" / "evidence.ipynb"
    shutil.copy(exported["notebook"], nb_copy)
    return tmp_path / "bundle", nb_copy


def _rerun_fails_in_first_code_cell(nb_path: Path) -> str:
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.read(nb_path, as_version=4)
    with pytest.raises(CellExecutionError) as info:
        execute_notebook(nb, nb_path.parent, timeout=300)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    errors = [i for i, c in enumerate(nb.cells) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == [first_code], "the notebook must stop in its first code cell"
    assert all(not c.get("outputs") for c in nb.cells[first_code + 1:] if c.cell_type == "code")
    return str(info.value)


@pytest.mark.parametrize("fix_manifest", [False, True], ids=["plain", "manifest-rehashed"])
def test_one_changed_annotation_row_stops_the_notebook(exported, tmp_path, fix_manifest):
    bundle, nb_path = _tampered_copy(exported, tmp_path)
    (f,) = (bundle / "segments").glob("annotation-*.parquet")
    name = f"segments/{f.name}"
    df = pl.read_parquet(f)
    flipped = {"a": "b", "b": "a", "tie": "a", "skip": "a"}
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == 17)
                         .then(pl.col("choice").replace_strict(flipped)).otherwise(pl.col("choice")).alias("choice"))
    df.write_parquet(f)
    if fix_manifest:  # a forger who also updates the manifest is still caught (typed row != entry)
        import hashlib
        m = json.loads((bundle / "manifest.json").read_text())
        m["files"][name]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
        m["files"][name]["bytes"] = f.stat().st_size
        (bundle / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    msg = _rerun_fails_in_first_code_cell(nb_path)
    assert "IntegrityError" in msg and "INTEGRITY CHECK FAILED" in msg
    if fix_manifest:
        assert "typed-row-mismatch" in msg


def test_one_changed_log_entry_stops_the_notebook(exported, tmp_path):
    bundle, nb_path = _tampered_copy(exported, tmp_path)
    (f,) = (bundle / "segments").glob("log-*.parquet")
    df = pl.read_parquet(f)
    i = int(df.filter(pl.col("kind") == "oversight")["seq"][0])
    entry = bytes(df["entry"][i]).replace(b'"decision":"approve"', b'"decision":"reject"')
    assert entry != bytes(df["entry"][i])
    df = df.with_columns(pl.when(pl.col("seq") == i).then(pl.lit(entry)).otherwise(pl.col("entry")).alias("entry"))
    df.write_parquet(f)
    msg = _rerun_fails_in_first_code_cell(nb_path)
    assert "INTEGRITY CHECK FAILED" in msg


def test_no_raw_annotator_id_and_no_secret_in_notebook_or_html(exported, campaign):
    blobs = {p.name: p.read_bytes() for p in (exported["notebook"], exported["html"])}
    gt = campaign.ground_truth
    raw_ids = set(campaign.annotator_ids) | {a for r in demo.ROLES for a in gt[r]}
    raw_ids |= set(campaign.frames(kinds=["oversight"])["oversight"]["reviewer"].to_list())
    assert len(raw_ids) >= 24
    keys = exported["keys"].folder
    pem = (keys / "signing_key.pem").read_bytes()
    private = load_pem_private_key(pem, password=None)
    raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pseudo_hex = (keys / "pseudonym.key").read_text().strip()
    pseudo_raw = bytes.fromhex(pseudo_hex)
    pem_body = b"".join(ln for ln in pem.splitlines() if not ln.startswith(b"-----"))
    secrets = {
        "signing key PEM": pem, "signing key PEM body": pem_body,
        "raw private key": raw_private, "raw private key hex": raw_private.hex().encode(),
        "raw private key b64": base64.b64encode(raw_private),
        "pseudonym key hex": pseudo_hex.encode(), "pseudonym key raw": pseudo_raw,
        "pseudonym key b64": base64.b64encode(pseudo_raw),
    }
    assert load_signer(keys).vkey == exported["keys"].vkey  # the secrets are the ones that signed
    for name, blob in blobs.items():
        for rid in raw_ids:
            assert rid.encode() not in blob, f"raw annotator id {rid} in {name}"
            assert rid.split("@")[0].encode() not in blob, f"raw annotator id {rid} in {name}"
        for what, secret in secrets.items():
            assert secret not in blob, f"{what} in {name}"


def test_texts_only_on_request(exported, tmp_path):
    bundle = open_bundle_(exported["bundle"])
    prompt = bundle.sql("SELECT prompt FROM annotation ORDER BY seq LIMIT 1")["prompt"][0]
    bundle.close()
    assert prompt.encode() not in exported["notebook"].read_bytes()
    shutil.copytree(exported["bundle"], tmp_path / "bundle")
    p = export_compliance_notebook(tmp_path / "bundle", tmp_path / "texts.ipynb", verifier=exported["keys"].vkey,
                                   include_texts=True, html=False)
    nb = nbformat.read(p, as_version=4)
    assert "Appendix: sample of annotated texts" in _outputs_text(nb)
    assert nb.metadata["rlhf_audit_kit"]["bundle"] == "bundle"


def open_bundle_(path):
    from rlhf_audit_kit.bundle import open_bundle
    return open_bundle(path)


def test_wrong_pinned_key_writes_nothing(exported, tmp_path):
    other = init_keys(tmp_path / "other-keys", "someone.else/log", no_passphrase=True)
    out = tmp_path / "x.ipynb"
    with pytest.raises(SignatureError):
        export_compliance_notebook(exported["bundle"], out, verifier=other.vkey, execute=False, html=False)
    assert not out.exists()


def test_export_from_a_snapshot_exports_its_bundle_next_to_the_notebook(tmp_path):
    keys = init_keys(tmp_path / "keys", "audit.example/small", no_passphrase=True)
    with open_store(tmp_path / "a.duckdb", keys=tmp_path / "keys") as store:
        demo.campaign(600, seed=1).write_to(store, progress=False)
        snap = store.snapshot(tmp_path / "keys")
        p = export_compliance_notebook(snap, tmp_path / "nb" / "ev.ipynb", execute=False, html=False)
        again = export_compliance_notebook(snap, tmp_path / "nb" / "ev.ipynb", execute=False, html=False)
    assert p == again and (tmp_path / "nb" / "ev.bundle" / "manifest.json").is_file()
    nb = nbformat.read(p, as_version=4)
    assert nb.metadata["rlhf_audit_kit"]["bundle"] == "ev.bundle"
    assert nb.metadata["rlhf_audit_kit"]["vkey"] == keys.vkey


def test_cli_export_notebook(exported, tmp_path, capsys):
    from rlhf_audit_kit.cli import main
    shutil.copytree(exported["bundle"], tmp_path / "bundle")
    out = tmp_path / "cli" / "evidence.ipynb"
    rc = main(["export-notebook", str(tmp_path / "bundle"), "--out", str(out),
               "--vkey", str(exported["keys"].folder / "verifier.vkey"), "--html"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out), str(out.with_suffix(".html"))]
    assert out.is_file() and out.with_suffix(".html").is_file()
    # A garbled key is a usage error: argparse exits 2 naming --vkey, before any file is written.
    with pytest.raises(SystemExit) as exited:
        main(["export-notebook", str(tmp_path / "bundle"), "--out", str(tmp_path / "bad.ipynb"),
              "--vkey", "someone+00000000+AAAA", "--no-execute"])
    assert exited.value.code == 2
    assert "--vkey" in capsys.readouterr().err
    assert not (tmp_path / "bad.ipynb").exists()


# ------------------------------------------------------------------ a pinned key is required (17.3)
def _resign(exported, tmp_path) -> Path:
    """A bundle for the same origin signed by someone else, under the same key name: self-consistent."""
    from factories import annotation
    forger = init_keys(tmp_path / "forger-keys", "audit.example/test", no_passphrase=True)
    with open_store(tmp_path / "forged.duckdb", pseudonymize=False, origin="audit.example/demo") as store:
        store.extend([annotation(i) for i in range(30)])
        store.snapshot(tmp_path / "forger-keys").export(tmp_path / "resigned").close()
    assert forger.vkey != exported["keys"].vkey
    return tmp_path / "resigned"


def test_export_without_a_pinned_key_is_refused(exported, tmp_path, capsys):
    from rlhf_audit_kit.cli import main
    from rlhf_audit_kit.errors import KeysError
    out = tmp_path / "nb" / "x.ipynb"
    with pytest.raises(KeysError, match="verifier key you trust"):
        export_compliance_notebook(exported["bundle"], out, execute=False, html=False)
    assert not out.exists()
    rc = main(["export-notebook", str(exported["bundle"]), "--out", str(out), "--no-execute"])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "--vkey" in err and "--keys" in err and "Traceback" not in err
    rc = main(["export-notebook", str(exported["bundle"]), "--out", str(out), "--no-execute",
               "--keys", str(exported["keys"].folder)])
    assert rc == 0 and nbformat.read(out, as_version=4).metadata["rlhf_audit_kit"]["pinned"] is True


def test_a_resigned_bundle_is_refused_under_the_pinned_key_and_marked_without_one(exported, tmp_path):
    resigned = _resign(exported, tmp_path)
    with pytest.raises(SignatureError):
        export_compliance_notebook(resigned, tmp_path / "a" / "x.ipynb", verifier=exported["keys"].vkey,
                                   execute=False, html=False)
    p = export_compliance_notebook(resigned, tmp_path / "b" / "x.ipynb", trust_bundle_key=True)
    nb = nbformat.read(p, as_version=4)
    assert nb.metadata["rlhf_audit_kit"]["pinned"] is False
    title = nb.cells[0].source
    assert title.index("Nothing was pinned") < title.index("Snapshot of") and "color:#cf222e" in title
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "NOT PINNED" in first.source and first.outputs[0]["text"].startswith("Self-consistent only (NO key")
    assert "signed by (the key shipped IN the bundle; NOT pinned)" in _outputs_text(nb)
    html = p.with_suffix(".html").read_text(encoding="utf-8")
    assert html.index("Nothing was pinned") < html.index("Snapshot binding and verification")


# ------------------------------------------------------------------ the kernel (17.1)
PLANTED = """import os, pathlib
pathlib.Path(os.environ.get("MARK_DIR", "."), "planted-module-ran").write_text(repr(dict(os.environ)))
raise SystemExit("planted module imported")
"""


def test_first_code_cell_drops_the_notebook_folder_from_sys_path_before_any_import(exported):
    import ast
    nb = nbformat.read(exported["notebook"], as_version=4)
    body = ast.parse(next(c for c in nb.cells if c.cell_type == "code").source).body
    assert ast.unparse(body[0]) == "import os, sys"
    assert ast.unparse(body[1]).startswith("sys.path[:] = [p for p in sys.path if os.path.isabs(p)")
    assert "os.getcwd()" in ast.unparse(body[1])
    assert all(i > 1 for i, s in enumerate(body[1:], 1) if isinstance(s, (ast.Import, ast.ImportFrom)))


def test_planted_module_next_to_the_notebook_is_not_imported_on_rerun(exported, tmp_path, monkeypatch):
    """As JupyterLab runs it: kernel in the notebook's folder ('' on sys.path), environment inherited."""
    from factories import annotation
    from nbclient import NotebookClient
    with open_store(tmp_path / "a.duckdb", pseudonymize=False) as store:  # small: the run is what is tested
        store.extend([annotation(i) for i in range(30)])
        snap = store.snapshot(exported["keys"].folder)
        nb_path = export_compliance_notebook(snap, tmp_path / "report" / "evidence.ipynb", execute=False, html=False)
    for name in ("polars.py", "duckdb.py", "pyarrow.py"):
        (nb_path.parent / name).write_text(PLANTED)
    monkeypatch.setenv("MARK_DIR", str(tmp_path))
    nb = nbformat.read(nb_path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    assert not (tmp_path / "planted-module-ran").exists()
    assert "Verified: OK" in next(c for c in nb.cells if c.cell_type == "code").outputs[0]["text"]


def test_execute_notebook_gives_the_kernel_no_secrets_and_no_working_directory_on_sys_path(tmp_path, monkeypatch):
    from nbformat.v4 import new_code_cell, new_notebook
    (tmp_path / "polars.py").write_text(PLANTED)
    secrets = {"RLHF_AUDIT_PASSPHRASE": "hunter2", "RLHF_AUDIT_KEYS": str(tmp_path / "keys"),
               "PANEL_COOKIE_SECRET": "c00kie", "GITHUB_TOKEN": "ghp_x", "AWS_SECRET_ACCESS_KEY": "aws"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MARK_DIR", str(tmp_path))
    nb = new_notebook(cells=[new_code_cell(
        "import os, sys\nimport polars\n"
        f"print(sorted(k for k in {sorted(secrets)!r} if k in os.environ), '' in sys.path, os.getcwd() in sys.path,"
        " polars.__file__.endswith('polars/__init__.py'), os.environ['PATH'] == '' )")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    execute_notebook(nb, tmp_path, timeout=120)
    assert nb.cells[0].outputs[0]["text"].strip() == "[] False False True False"
    assert not (tmp_path / "planted-module-ran").exists()


def test_a_notebook_inside_its_bundle_folder_is_refused(exported, tmp_path):
    from rlhf_audit_kit.errors import AuditKitError
    shutil.copytree(exported["bundle"], tmp_path / "bundle")
    for target in (tmp_path / "bundle" / "evidence.ipynb", tmp_path / "bundle" / "sub" / "evidence.ipynb"):
        with pytest.raises(AuditKitError, match="inside the bundle folder"):
            export_compliance_notebook(tmp_path / "bundle", target, verifier=exported["keys"].vkey, html=False)
        assert not target.exists()
    nb = nbformat.read(exported["notebook"], as_version=4)
    nb.metadata["rlhf_audit_kit"]["bundle"] = "."
    with pytest.raises(AuditKitError, match="inside the bundle folder"):
        execute_notebook(nb, tmp_path / "bundle")


# ------------------------------------------------------------------ witnesses (issue 13)
def test_notebook_names_the_pinned_witnesses_that_cosigned_and_rechecks_the_quorum(exported, tmp_path, capsys):
    from rlhf_audit_kit.cli import main
    from rlhf_audit_kit.errors import IntegrityError
    from rlhf_audit_kit.ledger.witness import Witness, write_cosigned_note
    from rlhf_audit_kit.witness_keys import init_witness_keys, load_witness_signer
    bundle, _ = _tampered_copy(exported, tmp_path)  # an untampered copy next to report/
    witnesses = []
    for n in (1, 2):
        init_witness_keys(tmp_path / f"w{n}", f"witness.example/<w{n}>", no_passphrase=True)
        witnesses.append(Witness(tmp_path / f"w{n}" / "state", load_witness_signer(tmp_path / f"w{n}")))
    w1 = witnesses[0]
    write_cosigned_note(bundle, w1.observe_bundle(bundle, exported["keys"].vkey), w1.signer)
    out = tmp_path / "report" / "witnessed.ipynb"
    key = exported["keys"].vkey
    with pytest.raises(IntegrityError, match="1 of the 2 pinned witness"):  # default quorum: all of them
        export_compliance_notebook(bundle, out, verifier=key, witnesses=[tmp_path / "w1", tmp_path / "w2"],
                                   html=False)
    assert not out.exists()
    p = export_compliance_notebook(bundle, out, verifier=key, witnesses=[tmp_path / "w1", tmp_path / "w2"],
                                   witness_quorum=1, html=False)
    nb = nbformat.read(p, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert w1.signer.vkey in first.source and "WITNESS_QUORUM = 1" in first.source
    assert f"cosigned by the pinned witness witness.example/<w1> (key id {w1.signer.key_id.hex()})" in \
        first.outputs[0]["text"]
    section1 = next(str(o["data"]["text/markdown"]) for c in nb.cells for o in c.get("outputs", [])
                    if "1. Snapshot binding" in str(o.get("data", {}).get("text/markdown", "")))
    assert "cosigned by the pinned witness witness.example/&#60;w1&#62;" in section1 and "<w1>" not in section1
    assert "1 of the 2 pinned witness key(s) cosigned this checkpoint; 1 required" in section1
    assert nb.metadata["rlhf_audit_kit"]["witness_quorum"] == 1
    # the cosignature gone: a re-run stops in the first code cell
    shutil.rmtree(bundle / "cosignatures")
    assert "WITNESS CHECK FAILED" in _rerun_fails_in_first_code_cell(p)
    rc = main(["export-notebook", str(bundle), "--out", str(tmp_path / "report" / "cli.ipynb"), "--vkey", key,
               "--witness", str(tmp_path / "w1"), "--no-execute"])
    assert rc == 1 and "0 of the 1 pinned witness" in capsys.readouterr().err


# ------------------------------------------------------------------ bias over known display order (real data)
def test_position_bias_leaves_out_unknown_display_order_and_label_times_are_their_own(tmp_path):
    from factories import annotation
    from rlhf_audit_kit.bundle import open_bundle
    from rlhf_audit_kit.report.sections import section_bias, section_data_governance
    init_keys(tmp_path / "keys", "audit.example/order", no_passphrase=True)
    rows = ([annotation(i, choice="a" if i < 15 else "b") for i in range(20)]  # shown: 15 of 20 chose the first
            + [annotation(100 + i, choice="a", display_order_known=False, shown_at=None, submitted_at=None)
               for i in range(30)])  # a chosen-first dataset, loaded from a file: no order, no own time
    with open_store(tmp_path / "a.duckdb", pseudonymize=False, origin="audit.example/order") as store:
        store.extend(rows)
        store.snapshot(tmp_path / "keys").export(tmp_path / "bundle").close()
    with open_bundle(tmp_path / "bundle") as b:
        bias = section_bias(b)
        gov = section_data_governance(b)
    position = bias.tables["bias"].row(0, named=True)
    assert position["n"] == 20 and position["share"] == pytest.approx(0.75)
    assert "30 a/b choices of unknown display order" in bias.markdown
    g = bias.tables["by_guideline"].row(0, named=True)
    assert (g["ab_labels"], g["order_unknown"], g["share_first_shown"]) == (50, 30, 0.75)
    assert "Labels were made from 2026-01-01 12:01:00 to 2026-01-01 12:01:19 UTC." in gov.markdown
    assert "30 label(s) have no time of their own" in gov.markdown


def test_training_chart_leaves_out_missing_values_and_breaks_its_line_there():
    """A metric not logged at every step (None) or NaN must not stop the notebook: the point is left out,
    the line broken there, and the range in the legend is the logged values'."""
    import re

    from rlhf_audit_kit.report.sections import svg_lines
    svg = svg_lines({"kl": ([0, 1, 2, 3, 4, 5], [0.1, None, 0.3, float("nan"), 0.5, 0.6]),
                     "reward": ([0, 1, 2], [None, None, None])}, title="t")
    lines = re.findall(r'<polyline [^>]*points="([^"]*)"', svg)
    assert [len(p.split()) for p in lines] == [2]  # 4..5 joined; 0 and 2 are lone points
    assert svg.count("<circle ") == 2
    assert "kl (0.1 to 0.6)" in svg and "reward" not in svg
    assert svg_lines({"kl": ([0, 1], [None, None])}, title="t") == ""
