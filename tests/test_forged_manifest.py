"""A bundle's manifest states things no signature covers: they are never shown as verified.

``manifest.json`` binds origin, size, root and file hashes (checked against the signed note and the
files); ``key_name``, ``key_id``, ``store_id``, ``encoding``, ``created_at``, ``snapshot_seq`` and
anything an author adds are whatever whoever handled the bundle wrote. With every one of them forged
(the signer named "Trusted-Regulator"), the bundle still verifies under the real pinned key, and the
notebook, ``rlhf-audit verify`` and the bundle's HTML repr name the pinned key as the signer and
mark the manifest's statements as unverified (disagreements flagged); a forged ``format`` is refused.
"""
from __future__ import annotations

import json

import nbformat
import pytest

from rlhf_audit_kit.bundle import open_bundle
from rlhf_audit_kit.cli import main
from rlhf_audit_kit.errors import AuditKitError
from rlhf_audit_kit.keys import init_keys
from rlhf_audit_kit.report import export_compliance_notebook
from rlhf_audit_kit.report import sections as S
from rlhf_audit_kit.store import open_store
from factories import annotation

FORGED = {"key_name": "Trusted-Regulator", "key_id": "deadbeef", "store_id": "00000000-0000-4000-8000-000000000000",
          "encoding": "rlhf-audit-kit/jcs-v9", "created_at": "1999-01-01T00:00:00+00:00", "snapshot_seq": 7,
          "approved_by": "EU-AI-Office"}
DISAGREE = ("key_name", "key_id", "encoding")  # fields a verified fact contradicts


def _record(folder, origin=None):
    keys = init_keys(folder / "keys", "audit.example/real-signer", no_passphrase=True)
    with open_store(folder / "audit.duckdb", keys=folder / "keys", origin=origin) as store:
        store.extend([annotation(i) for i in range(12)]
                     + [{"kind": "dataset", "name": "hh", "version": "1"},
                        {"kind": "oversight", "reviewer": "rev@lab.example", "decision": "approve",
                         "reason": "ok", "subject_run": "run-1"}])
        store.snapshot(folder / "keys").export(folder / "bundle").close()
    return keys


def _forge(bundle_dir, **extra) -> None:
    path = bundle_dir / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    m.update(FORGED, **extra)
    path.write_text(json.dumps(m, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forged")
    keys = _record(tmp, origin="audit.example/forged-manifest")
    _forge(tmp / "bundle")
    return tmp, keys


def test_forged_manifest_verifies_and_the_report_names_only_the_pinned_signer(forged):
    tmp, keys = forged
    with open_bundle(tmp / "bundle") as b:
        report = b.verify(keys.vkey, workers=0)
        assert report.ok, report.message  # the fields are unsigned: changing them breaks nothing
        assert report.signed_by == [keys.vkey]
        assert {k: report.unsigned[k] for k in FORGED} == FORGED
        assert "Trusted-Regulator" not in report.message
        html = b._repr_html_()
    assert "signed by audit.example/real-signer" in html and "Trusted-Regulator" not in html


def test_unverified_bundle_repr_marks_the_manifest_key_as_unverified(forged):
    tmp, _ = forged
    with open_bundle(tmp / "bundle") as b:
        html = b._repr_html_()
    assert "key named in the manifest (not verified): Trusted-Regulator" in html


def test_notebook_shows_the_pinned_key_and_marks_the_manifest_unverified(forged):
    tmp, keys = forged
    path = export_compliance_notebook(tmp / "bundle", tmp / "report" / "evidence.ipynb", verifier=keys.vkey,
                                      html=False)
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert f"Signed by: {keys.vkey}" in first.outputs[0]["text"]
    md = next(o["data"]["text/markdown"] for c in nb.cells for o in c.get("outputs", [])
              if "### 1. Snapshot binding" in o.get("data", {}).get("text/markdown", ""))
    verified, _, unverified = md.partition("**Not verified.**")
    assert unverified, "the unsigned manifest fields must be listed apart"
    assert f"<code>audit.example/real-signer</code> (key id <code>{keys.key_id}</code>)" in verified
    for value in FORGED.values():
        assert not isinstance(value, str) or value not in verified, value
    rows = {line.split(" | ")[0]: line for line in unverified.splitlines() if line.startswith("| <code>")}
    for field, value in FORGED.items():
        row = rows[f"| {S.md_code(field)}"]
        assert S.md_escape(value if isinstance(value, str) else json.dumps(value)) in row
        assert ("**DISAGREES with the verified" in row) == (field in DISAGREE), row
    everywhere = "\n".join(str(o) for c in nb.cells for o in c.get("outputs", []))
    assert everywhere.count("Trusted-Regulator") == 1  # only in the unverified table


def test_cli_verify_names_the_pinned_signer_and_flags_the_forged_fields(forged, capsys):
    tmp, keys = forged
    rc = main(["verify", str(tmp / "bundle"), "--vkey", keys.vkey, "--workers", "0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.startswith("OK")
    assert f"signed by the pinned key audit.example/real-signer (key id {keys.key_id})" in out
    assert "Trusted-Regulator" not in out
    listed = next(line for line in out.splitlines() if line.startswith("not verified"))
    assert all(field in listed for field in FORGED)
    warnings = [line for line in err.splitlines() if line.startswith("warning: manifest.json")]  # not the key-name one
    assert sorted(w.split()[3] for w in warnings) == sorted(DISAGREE)
    assert all("not signed" in w and "DISAGREES" in w for w in warnings)
    assert any("'Trusted-Regulator'" in w and "audit.example/real-signer" in w for w in warnings)


def test_a_forged_format_is_refused(tmp_path):
    keys = _record(tmp_path)
    _forge(tmp_path / "bundle", format="rlhf-audit-kit/bundle/v9")
    with pytest.raises(AuditKitError, match="format"):
        open_bundle(tmp_path / "bundle")
    with pytest.raises(AuditKitError, match="format"):
        export_compliance_notebook(tmp_path / "bundle", tmp_path / "nb" / "e.ipynb", verifier=keys.vkey,
                                   execute=False, html=False)
    assert not (tmp_path / "nb" / "e.ipynb").exists()
    assert main(["verify", str(tmp_path / "bundle"), "--vkey", keys.vkey]) != 0


def test_store_id_is_verified_only_through_a_signed_origin(tmp_path):
    """A store's default origin names its id: then the id is a signed fact, and a forged one disagrees."""
    keys = _record(tmp_path)  # no origin: rlhf-audit-kit.local/<store id>
    with open_bundle(tmp_path / "bundle") as b:
        sid = b.manifest["store_id"]
        assert b.origin == f"rlhf-audit-kit.local/{sid}"
        ev = S.section_identity(b, b.verify(keys.vkey, workers=0))
    verified, _, unverified = ev.markdown.partition("**Not verified.**")
    assert f"| store id | {S.md_code(sid)} (named by the signed origin) |" in verified
    assert "agrees with the verified store id in the signed origin" in unverified
    _forge(tmp_path / "bundle")
    with open_bundle(tmp_path / "bundle") as b:
        ev = S.section_identity(b, b.verify(keys.vkey, workers=0))
    assert "DISAGREES with the verified store id in the signed origin" in ev.markdown
    assert FORGED["store_id"] not in ev.markdown.partition("**Not verified.**")[0]
