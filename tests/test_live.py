"""The live source behind a dashboard that follows a bundle folder (rlhf_audit_kit.apps._live), without
a browser: real stores, keys, exports onto the folder, forks, witnesses; tests/browser/test_follow.py
runs the same against a writer process and Chromium."""
from __future__ import annotations

import os
import shutil

import pytest

pn = pytest.importorskip("panel")

from factories import annotation  # noqa: E402
from rlhf_audit_kit.apps import AuditDashboard  # noqa: E402
from rlhf_audit_kit.apps._live import LiveSource  # noqa: E402
from rlhf_audit_kit.keys import init_keys, load_signer  # noqa: E402
from rlhf_audit_kit.store import open_store  # noqa: E402

ORIGIN = "live.example/log"


class Writer:
    """A store that publishes into one bundle folder, as a training process would."""

    def __init__(self, tmp, keys, name="w", origin=ORIGIN):
        self.store = open_store(tmp / f"{name}.duckdb", keys=keys, origin=origin, pseudonymize=False)
        self.signer, self.folder, self.n = load_signer(keys), tmp / "bundle", 0

    def publish(self, k: int, folder=None, **fields) -> int:
        self.store.extend([annotation(self.n + i, annotator=f"a{(self.n + i) % 4}", **fields) for i in range(k)])
        self.n += k
        snap = self.store.snapshot(self.signer)
        snap.export(folder or self.folder).close()
        return snap.size


@pytest.fixture
def keys(tmp_path):
    init_keys(tmp_path / "keys", ORIGIN, no_passphrase=True)
    return tmp_path / "keys"


@pytest.fixture
def writer(tmp_path, keys):
    w = Writer(tmp_path, keys)
    yield w
    w.store.close()


def _fork_into(folder, tmp_path, keys, size: int) -> int:
    """A checkpoint of another history, signed with the same key, published into ``folder``."""
    fork = Writer(tmp_path, keys, name="fork")
    try:
        forked = fork.publish(size + 5, folder=tmp_path / "fork-bundle", prompt="another history")
    finally:
        fork.store.close()
    for sub in ("segments", "checkpoints"):
        shutil.copytree(tmp_path / "fork-bundle" / sub, folder / sub, dirs_exist_ok=True)
    shutil.copy(tmp_path / "fork-bundle" / "manifest.json", folder / "manifest.new")
    os.replace(folder / "manifest.new", folder / "manifest.json")
    return forked


def test_follows_new_checkpoints_verifying_only_the_new_range(writer, keys):
    first = writer.publish(30)
    live = LiveSource(writer.folder, verifier=keys / "verifier.vkey")
    assert live.poll() and live.state.size == first and live.state.pinned and live.state.failure is None
    assert not live.poll()  # nothing new: no work
    v1, src1 = live.state.version, live.state.source
    second = writer.publish(20)
    assert live.poll()
    st = live.state
    assert (st.version, st.size) == (v1 + 1, second) and st.source is not src1
    assert st.covered == (first, second)  # verified since the checkpoint shown, not from seq 0
    assert st.source.size == second and st.published and st.verified_at >= st.published - 1


def test_a_fork_is_refused_and_the_last_good_view_stays(tmp_path, writer, keys):
    good = writer.publish(30)
    live = LiveSource(writer.folder, verifier=keys / "verifier.vkey")
    live.poll()
    d = AuditDashboard(live)
    pn.panel(d).get_root()
    forked = _fork_into(writer.folder, tmp_path, keys, good)
    assert live.poll()
    st = live.state
    assert st.failing and st.size == good and st.source.size == good and st.failure.size == forked
    assert "inconsistent-checkpoints" in st.failure.message
    d.refresh()
    html = d._header.object
    assert "class='live-failure' style='color:#d62728" in html and "FAILED verification" in html
    assert f"size <b class='live-size'>{good:,}</b>" in html and d.src.size == good


def test_a_tampered_new_segment_is_refused(writer, keys):
    import pyarrow.parquet as pq
    writer.publish(10)
    live = LiveSource(writer.folder, verifier=keys / "verifier.vkey")
    live.poll()
    shown = live.state.size
    writer.publish(10)
    new = max(writer.folder.glob("segments/annotation-*.parquet"))  # the segment just published
    t = pq.read_table(new)
    prompts = t.column("prompt").to_pylist()
    prompts[0] = "rewritten after signing"
    pq.write_table(t.set_column(t.schema.get_field_index("prompt"), "prompt", [prompts]), new)
    live.poll()
    assert live.state.failing and live.state.size == shown


def test_without_a_pinned_key_the_first_key_is_kept_and_named(tmp_path, writer, keys):
    shown = writer.publish(10)
    live = LiveSource(writer.folder)
    live.poll()
    d = AuditDashboard(live)
    assert not live.state.pinned and "NOT PINNED" in d.header_html()
    assert live.state.vkey == (keys / "verifier.vkey").read_text().strip()
    # the folder is taken over by another key (and its verifier.vkey with it): refused
    init_keys(tmp_path / "other", ORIGIN, no_passphrase=True)
    shutil.rmtree(writer.folder)
    other = Writer(tmp_path, tmp_path / "other", name="other")
    try:
        other.publish(40, folder=writer.folder)
    finally:
        other.store.close()
    live.poll()
    assert live.state.failing and live.state.size == shown
    assert "bad-signature" in live.state.failure.message


def test_dashboard_keeps_the_visitors_filters_across_updates(writer, keys):
    writer.publish(40)
    live = LiveSource(writer.folder, verifier=keys / "verifier.vkey")
    live.poll()
    d = AuditDashboard(live)
    pn.panel(d).get_root()
    view = d.annotators
    view.task = "batch"
    layout = view._layout
    writer.publish(40)
    live.poll()
    assert d.refresh()
    assert d.annotators is view and view._layout is layout  # charts re-ran in place
    assert view.task == "batch" and view.filtered().height == 80
    d.active = 3  # the Integrity tab is rebuilt on the new data, with the live verification
    assert d.integrity.status.ok and "extends the trusted checkpoint" in d.integrity.status.message


def test_waits_for_a_first_checkpoint(tmp_path, keys):
    live = LiveSource(tmp_path / "not-yet", verifier=keys / "verifier.vkey")
    assert live.poll() and live.state.source is None and "waiting for a signed checkpoint" in live.state.pending
    d = AuditDashboard(live)
    pn.panel(d).get_root()
    assert "no verified checkpoint yet" in d.header_html()
    w = Writer(tmp_path, keys)
    try:
        size = w.publish(5, folder=tmp_path / "not-yet")
    finally:
        w.store.close()
    assert live.poll() and live.state.size == size
    assert d.refresh() and d.src.size == size and d.annotators._layout is not None


def test_witness_cosignatures_named_and_a_quorum_awaited(tmp_path, writer, keys):
    from rlhf_audit_kit.ledger.witness import Witness, write_cosigned_note
    from rlhf_audit_kit.witness_keys import init_witness_keys, load_witness_signer
    init_witness_keys(tmp_path / "wkeys", "witness.example/<w1>", no_passphrase=True)
    witness = Witness(tmp_path / "wkeys" / "state", load_witness_signer(tmp_path / "wkeys"))

    def cosign():
        write_cosigned_note(writer.folder, witness.observe_bundle(writer.folder, keys / "verifier.vkey"),
                            witness.signer)
    first = writer.publish(10)
    cosign()
    live = LiveSource(writer.folder, verifier=keys / "verifier.vkey", witnesses=[tmp_path / "wkeys"])
    live.poll()
    assert [c.name for c in live.state.cosigners] == ["witness.example/<w1>"]
    d = AuditDashboard(live)
    pn.panel(d).get_root()
    header = d.header_html()
    assert "cosigned by the pinned witness witness.example/&lt;w1&gt; (key id" in header and "<w1>" not in header
    writer.publish(10)  # not cosigned yet: verified, but not shown until the witness has cosigned
    assert live.poll() and live.state.size == first and "awaits cosignatures" in live.state.pending
    cosign()
    assert live.poll() and live.state.size > first and live.state.pending is None
    with pytest.raises(Exception, match="quorum"):
        LiveSource(writer.folder, witnesses=[tmp_path / "wkeys"], witness_quorum=2)
