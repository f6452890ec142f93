"""The annotator and model reports read a bundle where it lives: the same frames from a store, its local
bundle (object, str or Path), the bundle on ``memory://`` and on a real S3 API (moto's server on 127.0.0.1,
through s3fs), and what comes back to Python is aggregates, not the annotation rows."""
from __future__ import annotations

import uuid

import fsspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rlhf_audit_kit import analysis as A
from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.demo import Campaign
from rlhf_audit_kit.errors import BundleError
from rlhf_audit_kit.store import open_store

from test_object_storage import s3  # noqa: F401 - the loopback S3 server fixture
from test_snapshot_verify import SIGNER

REPORTS = {
    "annotator_report": lambda src, **kw: A.annotator_report(src, **kw),
    "annotator_drift": lambda src, **kw: A.annotator_drift(src, window="7d", **kw),
    "throughput": lambda src, **kw: A.throughput(src, every="1d", **kw),
    "agreement_matrix": lambda src, **kw: A.agreement_matrix(src, **kw),
    "agreement_matrix_wide": lambda src, **kw: A.agreement_matrix(src, min_overlap=5, wide=True, **kw),
    "reward_drift": lambda src, **kw: A.reward_drift(src, **kw),
    "reward_hacking": lambda src, **kw: A.reward_hacking(src, **kw),
    "training_trends": lambda src, **kw: A.training_trends(src, bin_steps=10, **kw),
    "summary": lambda src, **kw: A.summary(src, **kw).findings,
}


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """A demo campaign in a store, exported in two segments to a local folder and to memory://."""
    d = tmp_path_factory.mktemp("at-scale")
    store = open_store(d / "a.duckdb", pseudonymize=False)
    frames = list(Campaign(6_000, seed=3).iter_frames(chunk_rows=1_500))
    snaps = []
    for i, (kind, frame) in enumerate(frames):
        store.extend(frame, kind=kind)
        if i == len(frames) // 2:
            snaps.append(store.snapshot(SIGNER))
    snaps.append(store.snapshot(SIGNER))
    memory = f"memory://at-scale-{uuid.uuid4().hex[:8]}/bundle"
    for snap in snaps:
        snap.export(d / "bundle").close()
        snap.export(memory).close()
    yield store, snaps, d / "bundle", memory
    store.close()
    fsspec.filesystem("memory").rm(memory, recursive=True)


@pytest.fixture(scope="module")
def on_s3(s3, record):  # noqa: F811 - the imported fixture
    _, snaps, _, _ = record
    url = s3.url()
    for snap in snaps:
        snap.export(url, storage_options=s3.options).close()
    return url, s3.options


@pytest.mark.parametrize("name", REPORTS)
def test_the_same_report_from_every_source(record, on_s3, name):
    store, _, folder, memory = record
    url, options = on_s3
    report = REPORTS[name]
    expected = report(store)
    assert expected.height > 0
    with open_bundle(folder) as bundle:
        assert len(bundle.segments) == 2
        assert_frame_equal(report(bundle), expected, check_exact=True)
    for where, kw in ((str(folder), {}), (memory, {}), (url, {"storage_options": options})):
        assert_frame_equal(report(where, **kw), expected, check_exact=True)


class _Counted:
    """A bundle whose query results are counted: the rows each query sends to Python."""

    def __init__(self, bundle):
        self.bundle, self.heights = bundle, []

    def sql(self, query, params=None):
        out = self.bundle.sql(query, params)
        self.heights.append(out.height)
        return out


@pytest.mark.parametrize("name", ["annotator_report", "annotator_drift", "throughput", "agreement_matrix"])
def test_annotator_reports_bring_back_aggregates_not_rows(record, name):
    """Per annotator, window, period or pair: never one row per annotation (a remote bundle's rows would
    all cross the network and fill the client's memory)."""
    _, _, _, memory = record
    with open_bundle(memory) as bundle:
        annotations = bundle.sql("SELECT count(*) AS n FROM annotation")["n"].item()
        counted = _Counted(bundle)
        REPORTS[name](counted)
    assert counted.heights and max(counted.heights) < annotations / 2, (counted.heights, annotations)


def test_sources_that_are_not_bundles(record, tmp_path):
    store, _, folder, _ = record
    with pytest.raises(TypeError, match="storage_options applies to a bundle named by a path or URL"):
        A.annotator_report(store, storage_options={"anon": True})
    with pytest.raises(BundleError, match="not a snapshot bundle"):
        A.throughput(tmp_path)
    with pytest.raises(BundleError, match="not a snapshot bundle"):
        A.reward_drift(f"memory://missing-{uuid.uuid4().hex[:8]}/bundle")
    with pytest.raises(TypeError, match="its path or URL"):
        A.annotator_drift(42)
    assert A.annotation_frame(folder).height == store.sql("SELECT count(*) AS n FROM annotation")["n"].item()
    assert isinstance(A.annotation_frame(str(folder)), pl.DataFrame)
