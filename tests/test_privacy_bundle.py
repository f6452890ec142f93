"""Raw annotator ids never leave the store: not in the DuckDB file, not in an exported bundle
(searched both as raw bytes and in every decompressed Parquet value), while their pseudonyms are."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from factories import annotation
from rlhf_audit_kit import load_signer, open_store
from rlhf_audit_kit.privacy.pseudonym import Pseudonymizer

RAW = [f"jane.doe.{i}@annotators.example" for i in range(5)]


def _parquet_values(path) -> bytes:
    table = pq.read_table(path)
    out = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out += [v.encode() for v in col.to_pylist() if v is not None]
        elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            out += [v for v in col.to_pylist() if v is not None]
        else:
            out.append(str(col.to_pylist()).encode())
    return b"\n".join(out)


def test_raw_ids_absent_from_store_and_bundle(tmp_path, keys_dir):
    path = tmp_path / "s.duckdb"
    with open_store(path, keys=keys_dir) as store:
        store.extend([annotation(i, annotator=RAW[i % 5]) for i in range(60)])
        store.append({"kind": "oversight", "reviewer": RAW[0], "decision": "approve", "reason": "fine",
                      "subject_run": "run-1"})
        snap = store.snapshot(load_signer(keys_dir))
        bundle_dir = tmp_path / "bundle"
        snap.export(bundle_dir)
    pseudonyms = [Pseudonymizer.from_keys_folder(keys_dir).pseudonymize(r) for r in RAW]

    files = [p for p in tmp_path.rglob("*") if p.is_file() and "keys" not in p.parts]
    raw_bytes = b"".join(p.read_bytes() for p in files)
    decoded = b"".join(_parquet_values(p) for p in bundle_dir.rglob("*.parquet"))
    for r in RAW:
        assert r.encode() not in raw_bytes
        assert r.encode() not in decoded
    for p in pseudonyms:  # positive control: the search sees the ids that are stored
        assert p.encode() in decoded
