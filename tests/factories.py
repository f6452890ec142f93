"""Factories for valid events, shared by the tests."""
from __future__ import annotations

import datetime as dt


def annotation(i: int, **over) -> dict:
    """A valid annotation event; override any field."""
    row = {
        "kind": "annotation", "annotation_id": f"ann-{i}", "prompt_id": f"p-{i % 7}",
        "prompt": f"Question number {i}?", "response_a_id": f"ra-{i}", "response_a": "Short answer.",
        "model_a": "policy-step-0100", "response_b_id": f"rb-{i}", "response_b": "A longer answer, with detail.",
        "model_b": "sft-baseline", "choice": "ab"[i % 2], "annotator": f"alice{i % 3}@vendor.example",
        "shown_at": dt.datetime(2026, 1, 1, 12, 0, i % 60), "submitted_at": dt.datetime(2026, 1, 1, 12, 1, i % 60),
        "guideline_version": "v1", "task_id": "batch-1",
    }
    row.update(over)
    return row
