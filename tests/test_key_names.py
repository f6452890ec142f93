"""C2SP tlog-checkpoint: a log's key name SHOULD match its origin line.

``keys init --store`` names the key after the store's origin, ``--name`` still wins, and ``verify``
warns (without failing) when a checkpoint is signed by a key of another name.
"""
from __future__ import annotations

import json

import pytest

from rlhf_audit_kit import open_store
from rlhf_audit_kit.cli import main
from rlhf_audit_kit.errors import KeysError
from rlhf_audit_kit.keys import init_keys, load_signer, store_origin

ORIGIN = "example.com/audit"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("RLHF_AUDIT_PASSPHRASE", raising=False)
    monkeypatch.delenv("RLHF_AUDIT_KEYS", raising=False)


def _store(path, origin=None):
    with open_store(path, origin=origin, pseudonymize=False) as s:
        s.extend([{"kind": "dataset", "name": "hh", "version": "1"}])
    return path


def _signed(tmp_path, key_name):
    """A store of origin ORIGIN with one snapshot signed by a key named ``key_name``; (store path, keys)."""
    path = _store(tmp_path / "a.duckdb", ORIGIN)
    folder = tmp_path / "keys"
    init_keys(folder, key_name, no_passphrase=True)
    with open_store(path, pseudonymize=False) as s:
        s.snapshot(load_signer(folder))
    return path, folder


def test_init_keys_names_the_key_after_the_stores_origin(tmp_path):
    path = _store(tmp_path / "a.duckdb", ORIGIN)
    assert store_origin(path) == ORIGIN
    assert init_keys(tmp_path / "k1", store=path, no_passphrase=True).name == ORIGIN
    assert init_keys(tmp_path / "k2", "my-lab", store=path, no_passphrase=True).name == "my-lab"  # a name wins
    with pytest.raises(KeysError, match="no store at .*missing.duckdb"):
        init_keys(tmp_path / "k3", store=tmp_path / "missing.duckdb", no_passphrase=True)
    with pytest.raises(KeysError, match="name the key"):
        init_keys(tmp_path / "k4", no_passphrase=True)
    spaced = _store(tmp_path / "b.duckdb", "my lab")  # C2SP: an origin SHOULD have no spaces; a key name must not
    with pytest.raises(KeysError, match="the store's origin cannot name its key .*'my lab'.*give the key a name"):
        init_keys(tmp_path / "k5", store=spaced, no_passphrase=True)
    assert not any((tmp_path / k).exists() for k in ("k3", "k4", "k5"))
    assert not (tmp_path / "missing.duckdb").exists()


def test_keys_init_store_option_through_the_cli(tmp_path, capsys):
    path = tmp_path / "a.duckdb"
    assert main(["init", str(path)]) == 0  # the default origin rlhf-audit-kit.local/<store id>
    origin = store_origin(path)
    assert origin.startswith("rlhf-audit-kit.local/")
    assert main(["keys", "init", str(tmp_path / "k"), "--store", str(path), "--no-passphrase"]) == 0
    assert json.loads((tmp_path / "k" / "keys.json").read_text())["name"] == origin
    assert f"(key {origin}," in capsys.readouterr().out
    assert main(["keys", "init", str(tmp_path / "k2"), "--store", str(path), "--name", "my-lab",
                 "--no-passphrase"]) == 0
    assert json.loads((tmp_path / "k2" / "keys.json").read_text())["name"] == "my-lab"
    capsys.readouterr()
    for argv, words in ((["--no-passphrase"], ("--store STORE", "--name NAME")),
                        (["--store", str(path), "--witness", "--no-passphrase"], ("witness", "--name NAME")),
                        (["--store", str(tmp_path / "none.duckdb"), "--no-passphrase"], ("no store at", "none.duckdb"))):
        assert main(["keys", "init", str(tmp_path / "k3"), *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and all(w in err for w in words), err
        assert not (tmp_path / "k3").exists()


def test_verify_warns_when_the_key_name_is_not_the_origin(tmp_path, capsys):
    path, folder = _signed(tmp_path, "my-lab")
    with open_store(path, read_only=True, pseudonymize=False) as s:
        report = s.verify(folder)
    assert report.ok and len(report.warnings) == 1
    assert "'my-lab'" in report.warnings[0] and repr(ORIGIN) in report.warnings[0] and "SHOULD" in report.warnings[0]
    assert "warning: signing key name" in report._repr_html_()
    capsys.readouterr()
    assert main(["verify", str(path), "--vkey", str(folder / "verifier.vkey")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK") and "warning" not in out
    assert err == f"warning: {report.warnings[0]}\n"


def test_a_key_named_after_the_origin_verifies_without_warning(tmp_path, capsys):
    path, folder = _signed(tmp_path, ORIGIN)
    with open_store(path, pseudonymize=False) as s:
        report = s.verify(folder)
        bundle = s.snapshot(load_signer(folder)).export(tmp_path / "bundle")
    assert report.ok and report.warnings == []
    assert bundle.verify(folder).warnings == []
    capsys.readouterr()
    for target in (path, tmp_path / "bundle"):
        assert main(["verify", str(target), "--vkey", str(folder / "verifier.vkey")]) == 0
        assert capsys.readouterr().err == ""


def test_a_bundle_signed_by_another_name_warns_too(tmp_path):
    path, folder = _signed(tmp_path, "my-lab")
    with open_store(path, pseudonymize=False) as s:
        bundle = s.snapshot(load_signer(folder)).export(tmp_path / "bundle")
    report = bundle.verify(folder)
    assert report.ok and len(report.warnings) == 1 and "'my-lab'" in report.warnings[0]


def test_cli_flow_init_keys_snapshot_verify_has_matching_names(tmp_path, capsys):
    path, folder = tmp_path / "a.duckdb", tmp_path / "keys"
    assert main(["init", str(path), "--origin", ORIGIN]) == 0
    assert main(["keys", "init", str(folder), "--store", str(path), "--no-passphrase"]) == 0
    capsys.readouterr()
    assert main(["snapshot", str(path), "--keys", str(folder)]) == 0
    note = capsys.readouterr().out
    assert note.startswith(ORIGIN + "\n") and f"\n\u2014 {ORIGIN} " in note  # origin line and signature name
    assert main(["verify", str(path), "--vkey", str(folder / "verifier.vkey")]) == 0
    assert capsys.readouterr().err == ""


def test_open_store_refuses_an_origin_no_checkpoint_can_carry_before_making_a_file(tmp_path):
    """The command line refused these already (init --origin); from Python too, with nothing written."""
    from rlhf_audit_kit.errors import AuditKitError
    from rlhf_audit_kit.store import open_store
    for bad in ("a\nb", "", "tab\there", "end\r", "bell\x07"):
        with pytest.raises(AuditKitError, match="is not an origin: one non-empty line of printable"):
            open_store(tmp_path / "s.duckdb", origin=bad, pseudonymize=False)
        assert not (tmp_path / "s.duckdb").exists()
    with open_store(tmp_path / "s.duckdb", origin="example.org/lab/rlhf", pseudonymize=False) as store:
        assert store.origin == "example.org/lab/rlhf"
