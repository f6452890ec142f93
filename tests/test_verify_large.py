"""Verification of a record whose entries hold more than 2 GiB (about 2M demo events): found by benchmarks/scale.py."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rlhf_audit_kit.ledger.levels import _binary


@pytest.mark.slow
def test_entries_over_2_gib_in_chunks_combine():
    """DuckDB hands the log over in chunks of 32-bit-offset binary; more than 2 GiB of them must
    still become one array (64-bit offsets), as a 2M-event bundle's entries do."""
    size = (1 << 30) + 16
    data = pa.allocate_buffer(size)  # shared by both chunks; only the combined copy is written
    chunk = pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(np.array([0, size], np.int32)), data])
    out = _binary(pa.chunked_array([chunk, chunk]))
    assert out.type == pa.large_binary() and len(out) == 2
    offsets = np.frombuffer(out.buffers()[1], dtype=np.int64)[:3]
    assert offsets.tolist() == [0, size, 2 * size]
