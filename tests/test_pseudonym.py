"""Tests of keyed pseudonyms and the encrypted re-identification map."""
from __future__ import annotations

import hashlib
import hmac
import os
import stat

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_audit_kit.errors import KeysError, ValidationError
from rlhf_audit_kit.privacy import Pseudonymizer, ReidentificationMap
from rlhf_audit_kit.privacy.pseudonym import PSEUDONYM_PATTERN, REID_MAP_FILE, key_id_of

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def _oracle(key: bytes, raw: str) -> str:
    kid = hashlib.sha256(b"rlhf-audit-kit pseudonym key id" + key).hexdigest()[:8]
    return f"p-{kid}-" + hmac.new(key, raw.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def test_format_matches_specification():
    p = Pseudonymizer(KEY)
    for raw in ("alice", "", "ünïcødé 😀", "a" * 10_000):
        assert p.pseudonymize(raw) == _oracle(KEY, raw)
        assert PSEUDONYM_PATTERN.match(p.pseudonymize(raw))


def test_key_id_is_domain_separated_and_not_the_key():
    kid = key_id_of(KEY)
    assert kid == Pseudonymizer(KEY).key_id and len(kid) == 8
    assert kid != hashlib.sha256(KEY).hexdigest()[:8]  # domain tag: not a plain hash of the key
    assert kid not in KEY.hex()
    assert key_id_of(OTHER) != kid
    assert KEY.hex() not in repr(Pseudonymizer(KEY))


@pytest.mark.parametrize("bad", [b"short", bytes(31), bytes(33), "0" * 64, None, bytearray(5)])
def test_key_must_be_32_bytes(bad):
    with pytest.raises(KeysError):
        Pseudonymizer(bad)


def test_bytearray_key_accepted():
    assert Pseudonymizer(bytearray(KEY)).pseudonymize("x") == _oracle(KEY, "x")


def test_a_pseudonym_is_never_taken_for_a_raw_id():
    # a supplier writing a real annotator's visible pseudonym must not get rows attributed to them
    p = Pseudonymizer(KEY)
    a = p.pseudonymize("bob")
    assert p.is_pseudonym(a) and not p.is_pseudonym("bob") and not p.is_pseudonym(42)
    for spoof in (a, a + "\n", " " + a, a + "\t", a + "\r\n"):
        with pytest.raises(ValidationError, match="shaped like a pseudonym") as ei:
            p.pseudonymize(spoof)
        assert ei.value.field == "id"
    with pytest.raises(ValidationError) as ei:
        p.apply(pl.Series("annotator", ["carol", "dave", a + "\n", "carol"]))
    assert (ei.value.row, ei.value.field) == (2, "annotator") and "this key's" in ei.value.reason
    assert p.apply(pl.Series([a.upper()]))[0] == _oracle(KEY, a.upper())  # not our format: a raw id


def test_marked_pseudonyms_pass_checked():
    p = Pseudonymizer(KEY)
    s = p.apply(pl.Series("annotator", ["bob", None, "carol"]))
    assert p.apply(s, pseudonymized=True).to_list() == s.to_list()
    assert p.check(s[0]) == s[0]
    for bad in ("bob", s[0] + "\n", " " + s[0]):  # "$" used to accept the trailing newline
        assert not p.is_pseudonym(bad)
        with pytest.raises(ValidationError, match="is not a pseudonym"):
            p.check(bad)
    with pytest.raises(ValidationError, match="is not a pseudonym") as ei:
        p.apply(pl.Series("reviewer", [s[0], s[2] + "\n"]), pseudonymized=True)
    assert (ei.value.row, ei.value.field) == (1, "reviewer")


def test_pseudonym_of_other_key_is_refused():
    foreign = Pseudonymizer(OTHER).pseudonymize("bob")
    p = Pseudonymizer(KEY)
    with pytest.raises(KeysError, match="pseudonym from a different key"):
        p.is_pseudonym(foreign)
    with pytest.raises(ValidationError, match=f"another key.*key id {key_id_of(OTHER)}"):
        p.pseudonymize(foreign)
    with pytest.raises(ValidationError, match=f"another key \\(key id {key_id_of(OTHER)}"):
        p.check(foreign)
    for marked in (False, True):
        with pytest.raises(ValidationError, match=key_id_of(OTHER)) as ei:
            p.apply(pl.Series("annotator", [p.pseudonymize("alice") if marked else "alice", foreign]),
                    pseudonymized=marked)
        assert (ei.value.row, ei.value.field) == (1, "annotator")


def test_apply_vectorised_nulls_and_name(monkeypatch):
    p = Pseudonymizer(KEY)
    calls = []
    orig = Pseudonymizer._hash
    monkeypatch.setattr(Pseudonymizer, "_hash", lambda self, raw: calls.append(raw) or orig(self, raw))
    s = pl.Series("annotator_id", ["a", "b", None, "a", "b", "a", None])
    out = p.apply(s)
    assert sorted(calls) == ["a", "b"]  # one HMAC per distinct value
    assert out.name == "annotator_id" and out.dtype == pl.String and out.len() == 7
    assert out.to_list() == [_oracle(KEY, "a"), _oracle(KEY, "b"), None, _oracle(KEY, "a"),
                             _oracle(KEY, "b"), _oracle(KEY, "a"), None]


def test_apply_dtypes():
    p = Pseudonymizer(KEY)
    assert p.apply(pl.Series("x", [], dtype=pl.String)).len() == 0
    assert p.apply(pl.Series("x", [None, None])).to_list() == [None, None]
    assert p.apply(pl.Series(["a"], dtype=pl.Categorical)).to_list() == [_oracle(KEY, "a")]
    with pytest.raises(ValidationError):
        p.apply(pl.Series([1, 2]))
    with pytest.raises(ValidationError):
        p.apply(["a"])
    with pytest.raises(ValidationError):
        p.pseudonymize(1)


def test_apply_works_in_a_polars_expression_pipeline():
    p = Pseudonymizer(KEY)
    df = pl.DataFrame({"annotator": ["x", "y", "x"], "score": [1, 2, 3]})
    out = df.with_columns(p.apply(df["annotator"]))
    assert out["annotator"].n_unique() == 2 and out["score"].to_list() == [1, 2, 3]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=30))
def test_apply_equals_elementwise_property(values):
    p = Pseudonymizer(KEY)
    out = p.apply(pl.Series(values, dtype=pl.String)).to_list()
    assert out == [None if v is None else _oracle(KEY, v) for v in values]


# ---------------------------------------------------------------- re-identification map
def test_reidentification_roundtrip(tmp_path):
    p = Pseudonymizer(KEY)
    s = p.apply(pl.Series(["alice", "bob", None, "alice"]), remember=tmp_path)
    m = ReidentificationMap.load(tmp_path, KEY)
    assert len(m) == 2 and m.lookup(s[0]) == "alice" and m.lookup(s[1]) == "bob"
    assert m.lookup(_oracle(KEY, "nobody")) is None and s[0] in m
    p.apply(pl.Series(["carol", "alice"]), remember=tmp_path)  # adds carol, keeps the rest
    m2 = ReidentificationMap.load(tmp_path, KEY)
    assert len(m2) == 3 and m2.lookup(_oracle(KEY, "carol")) == "carol"
    assert m2.lookup(s[1]) == "bob"


def test_reidentification_file_is_encrypted_and_private(tmp_path):
    Pseudonymizer(KEY).apply(pl.Series(["alice@example.org"]), remember=tmp_path)
    path = tmp_path / REID_MAP_FILE
    blob = path.read_bytes()
    assert b"alice" not in blob and _oracle(KEY, "alice@example.org").encode() not in blob
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_reidentification_wrong_key_or_tampering(tmp_path):
    Pseudonymizer(KEY).apply(pl.Series(["alice"]), remember=tmp_path)
    with pytest.raises(KeysError, match="cannot decrypt"):
        ReidentificationMap.load(tmp_path, OTHER)
    path = tmp_path / REID_MAP_FILE
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(KeysError):
        ReidentificationMap.load(tmp_path, KEY)
    path.write_bytes(b"garbage")
    with pytest.raises(KeysError, match="not a re-identification map"):
        ReidentificationMap.load(tmp_path, KEY)


def test_missing_map_is_empty_and_remember_only_new(tmp_path):
    assert len(ReidentificationMap.load(tmp_path / "nowhere", KEY)) == 0
    p = Pseudonymizer(KEY)
    already = p.pseudonymize("zed")
    p.apply(pl.Series([already]), remember=tmp_path, pseudonymized=True)  # nothing new: no file written
    assert not (tmp_path / REID_MAP_FILE).exists()


def test_from_keys_folder(tmp_path):
    keys = pytest.importorskip("rlhf_audit_kit.keys")
    try:
        keys.init_keys(tmp_path / "k", "test.example/log", passphrase="pw-long-enough")
    except TypeError:  # pragma: no cover - the keys module's signature may evolve
        pytest.skip("init_keys signature changed")
    p = Pseudonymizer.from_keys_folder(tmp_path / "k")
    assert p.key_id == key_id_of(keys.load_pseudonym_key(tmp_path / "k"))
