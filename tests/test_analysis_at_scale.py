"""The annotator and model reports read a bundle where it lives: the same frames from a store, its local
bundle (object, str or Path), the bundle on ``memory://`` and on a real S3 API (moto's server on 127.0.0.1,
through s3fs), and what comes back to Python is aggregates, not the annotation rows."""
from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import fsspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rlhf_audit_kit import analysis as A
from rlhf_audit_kit import open_bundle
from rlhf_audit_kit.demo import Campaign
from rlhf_audit_kit.errors import BundleError
from rlhf_audit_kit.store import open_store

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
def on_s3(record):
    """The bundle exported to a moto S3 server on 127.0.0.1 (its own bucket: moto's state is process-wide)."""
    import s3fs
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "analysis", "secret": "analysis-secret",
               "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}
    s3fs.S3FileSystem(**options).mkdir("analysis-at-scale")
    url = f"s3://analysis-at-scale/{uuid.uuid4().hex[:8]}/bundle"
    for snap in record[1]:
        snap.export(url, storage_options=options).close()
    yield url, options
    server.stop()


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


def _recipe_sql() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text(encoding="utf-8")
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


def test_the_spark_recipe_gives_the_kit_s_numbers(record):
    """docs/scaling.md's Spark SQL, run as it is written (DuckDB reads the same dialect here) over the bundle's
    annotation segments, gives annotator_report's position and agreement columns and agreement_matrix."""
    import duckdb

    store, _, folder, _ = record
    annotators, pairs = _recipe_sql()
    with open_bundle(folder) as bundle:
        size = bundle.verify(SIGNER.verifier, workers=0).signed_size
    con = duckdb.connect()
    con.execute(f"CREATE VIEW annotation AS SELECT * FROM read_parquet('{folder}/segments/annotation-*.parquet', "
                "union_by_name = true)")
    got = con.sql(annotators.replace(":signed_size", str(size))).pl()
    cols = ["annotator", "n_ab", "position_a_share", "agreement_n", "agreement"]
    expected = A.annotator_report(store).sort("annotator").select(cols)
    assert_frame_equal(got.select(cols), expected, check_dtypes=False, check_exact=True)
    counts = con.sql(pairs.replace(":signed_size", str(size))).pl()
    assert_frame_equal(A.pairwise_from_counts(counts, min_overlap=5), A.agreement_matrix(store, min_overlap=5),
                       check_exact=True)
