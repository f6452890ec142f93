"""The registry of source formats: ``FORMATS`` and :func:`load`.

>>> list(FORMATS)[:4]
['hh-rlhf', 'trl-preference', 'sharegpt-dpo', 'kto']
>>> FORMATS["kto"].kind
'rating'
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from ._arena import load_chatbot_arena
from ._hh_rlhf import load_hh_rlhf
from ._label_studio import load_label_studio
from ._oasst import load_oasst
from ._pku import load_pku_saferlhf
from ._sharegpt import load_sharegpt_dpo
from ._shp import load_shp
from ._summarize import load_summarize_from_feedback
from ._trl import load_trl_preference
from ._ultrafeedback import load_ultrafeedback
from ._unpaired import load_kto

if TYPE_CHECKING:
    from ._common import Source

__all__ = ["FORMATS", "Format", "load"]


@dataclass(frozen=True)
class Format:
    """A source format: its name, the event kind its rows are, and its loader.

    ``loader(source, **options)`` returns a polars DataFrame whose columns are the kind's
    fields (see :mod:`rlhf_audit_kit.schema`), in schema order.
    """

    name: str
    kind: str
    loader: Callable[..., pl.DataFrame]
    summary: str

    def __repr__(self) -> str:
        return f"<Format {self.name} -> {self.kind}>"


#: Every format, most used first (the order ``rlhf-audit ingest --help`` lists them in).
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("hh-rlhf", "annotation", load_hh_rlhf,
           "Anthropic HH-RLHF JSONL: chosen/rejected transcripts"),
    Format("trl-preference", "annotation", load_trl_preference,
           "TRL preference datasets: standard, conversational, implicit prompt; UltraFeedback-binarized"),
    Format("sharegpt-dpo", "annotation", load_sharegpt_dpo,
           "ShareGPT DPO (LLaMA-Factory, Axolotl): conversations of {from, value}, chosen, rejected"),
    Format("kto", "rating", load_kto,
           "unpaired thumbs-up/down: TRL prompt/completion/label, LLaMA-Factory KTO messages/label"),
    Format("oasst", "annotation", load_oasst,
           "OpenAssistant message trees (tree JSONL or flat oasst1/oasst2 table): ranks -> pairs"),
    Format("chatbot-arena", "annotation", load_chatbot_arena,
           "Chatbot Arena / MT-bench human judgments: model_a, model_b, winner, judge"),
    Format("pku-saferlhf", "annotation", load_pku_saferlhf,
           "PKU-SafeRLHF: separate better and safer preferences"),
    Format("summarize-from-feedback", "annotation", load_summarize_from_feedback,
           "OpenAI summarize-from-feedback comparisons: two summaries, a worker's choice"),
    Format("shp", "annotation", load_shp,
           "Stanford SHP: Reddit comment pairs with upvote-based labels"),
    Format("ultrafeedback", "rating", load_ultrafeedback,
           "UltraFeedback: per-aspect 1..5 ratings of each completion"),
    Format("label-studio", "annotation", load_label_studio,
           "Label Studio export (JSON, JSON_MIN or CSV) of a <Pairwise> project"),
)}


def load(source: Source, format: str, **options: Any) -> tuple[str, pl.DataFrame]:
    """Load ``source`` in ``format``; return ``(kind, rows)`` ready for ``store.extend``.

    Parameters
    ----------
    source
        A path (JSON, JSONL or Parquet, as the format uses; ``.gz`` allowed), a polars or pandas
        DataFrame, a pyarrow Table, a Hugging Face ``datasets.Dataset`` or a list of dicts.
    format
        A key of :data:`FORMATS`.
    **options
        Passed to the format's loader: every loader takes ``dataset="NAME"`` or
        ``"NAME@VERSION"`` (the id prefix; default for a file: its folder and name, so two
        files never share ids), and ``annotator=`` where the format names no annotator.

    Raises
    ------
    ValueError
        An unknown format, or an option the format's loader does not take.
    ValidationError
        Bad input, naming the 0-based source row and the field.
    SourceError
        A file that is no data at all (a Git LFS pointer, an unknown file type, a line that is
        not JSON), naming the file and line.

    Examples
    --------
    >>> kind, rows = load([{"prompt": "2+2?", "chosen": " 4", "rejected": " 5"}], "trl-preference",
    ...                   dataset="toy/arith@v1")
    >>> kind, rows["annotation_id"][0], rows["dataset"][0]
    ('annotation', 'toy/arith@v1:0', 'toy/arith@v1')

    Then ``store.extend(rows, kind=kind)``.
    """
    try:
        fmt = FORMATS[format]
    except KeyError:
        raise ValueError(f"unknown format {format!r}; known: {', '.join(sorted(FORMATS))}") from None
    accepted = inspect.signature(fmt.loader).parameters
    for name in options:
        if name not in accepted:
            takes = ", ".join(p for p in accepted if p != "source")
            raise ValueError(f"format {format!r} takes no option {name!r}; it takes: {takes}")
    return fmt.kind, fmt.loader(source, **options)
