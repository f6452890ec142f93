"""The event kinds: their fields, types and limits, defined once.

Every kind is one typed table in the store and one entry per event in the append-only log.
The field order here is the column order of the typed table; the canonical encoding sorts keys
itself, so reordering fields here never changes a hash.

>>> from rlhf_audit_kit.schema import KINDS
>>> [f.name for f in KINDS["dataset"].fields][:3]
['name', 'version', 'source']
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# Documented limits (see docs/events.md). Ids and names are short; texts may be long.
MAX_ID_CHARS = 512
MAX_TEXT_CHARS = 1_000_000
MAX_MAP_ENTRIES = 1_000
MAX_SAFE_INT = 2**53 - 1  # RFC 8785 numbers are IEEE doubles: larger ints would not round-trip
MAX_JSON_CHARS = 1_000_000  # canonical JSON text of one json field
MAX_JSON_DEPTH = 64  # nested objects/arrays in one json field ({} is depth 1)
# Every timestamp field (UTC): the log is append-only, so a date that the readers (Python datetime,
# pandas, the dashboard, the notebooks) cannot represent would break them for good.
MIN_TIMESTAMP = dt.datetime(1970, 1, 1)
MAX_TIMESTAMP = dt.datetime(2199, 12, 31, 23, 59, 59, 999999)

CHOICES = ("a", "b", "tie", "skip")
OVERSIGHT_DECISIONS = ("approve", "reject", "halt", "rollback", "override", "flag", "note")


@dataclass(frozen=True)
class Field:
    """One field of an event kind.

    type is one of: ``id`` (short string), ``text`` (long string), ``int``, ``float``, ``ts``
    (UTC timestamp), ``bool``, ``map_float`` / ``map_int`` (string -> number), ``json`` (any
    JSON object).
    """

    name: str
    type: str
    required: bool = False
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    person: bool = False  # holds a person's id: pseudonymised on ingest
    doc: str = ""
    # Added after its kind was first recorded: an entry's data holds it only when set, so entries
    # written before it existed re-encode to the same bytes (see rlhf_audit_kit.encoding).
    omit_null: bool = False
    # A required text that may be "" (a model's empty reply is data): present, but not necessarily long.
    allow_empty: bool = False


@dataclass(frozen=True)
class Kind:
    """An event kind: its fields, the fields that must be unique, and a description."""

    name: str
    fields: tuple[Field, ...]
    unique: tuple[tuple[str, ...], ...] = ()
    doc: str = ""
    internal: bool = False  # written by the kit itself (snapshots, privacy ledger)
    field_map: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "field_map", {f.name: f for f in self.fields})

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]


def _f(name, type, required=False, **kw) -> Field:
    return Field(name, type, required, **kw)


ANNOTATION = Kind(
    "annotation",
    (
        _f("annotation_id", "id", True, doc="unique id of this judgement"),
        _f("prompt_id", "id", True),
        _f("prompt", "text", True),
        _f("response_a_id", "id", True),
        _f("response_a", "text", True, allow_empty=True, doc="may be empty: an empty reply is data"),
        _f("model_a", "id", doc="model/policy that produced response a"),
        _f("response_b_id", "id", True),
        _f("response_b", "text", True, allow_empty=True, doc="may be empty"),
        _f("model_b", "id"),
        _f("choice", "id", True, choices=CHOICES),
        _f("strength", "int", min=0, max=100, doc="optional ordinal strength of the preference"),
        _f("annotator", "id", True, person=True),
        _f("shown_at", "ts"),
        _f("submitted_at", "ts"),
        _f("guideline_version", "id"),
        _f("task_id", "id", doc="task or batch id"),
        _f("rationale", "text"),
        _f("gold_choice", "id", choices=CHOICES, doc="known answer for gold (test) items"),
        _f("score_a", "float", doc="evidence behind the choice when the source has it, e.g. SHP upvotes"),
        _f("score_b", "float"),
        _f("dataset", "id", doc="the dataset this came from: NAME or NAME@VERSION"),
        _f("display_order_known", "bool", omit_null=True,
           doc="true: response a is what the rater saw first (left/top); false: the source does not "
               "say what was shown (a/b by construction), so position statistics leave the row out; "
               "null: not recorded, taken as known"),
        _f("meta", "json", omit_null=True,
           doc="source fields with no field of their own, kept as a JSON object (e.g. tree ids, labels)"),
    ),
    unique=(("annotation_id",),),
    doc="A pairwise preference judgement by one annotator.",
)

RATING = Kind(
    "rating",
    (
        _f("rating_id", "id", True),
        _f("sample_id", "id", True, doc="the rated response"),
        _f("prompt_id", "id"),
        _f("prompt", "text"),
        _f("response", "text"),
        _f("model", "id"),
        _f("annotator", "id", True, person=True),
        _f("aspects", "map_int", True, doc="aspect name -> ordinal score, e.g. {'helpfulness': 4}"),
        _f("scale_min", "int"),
        _f("scale_max", "int"),
        _f("submitted_at", "ts"),
        _f("guideline_version", "id"),
        _f("task_id", "id"),
        _f("dataset", "id"),
        _f("rationale", "text", omit_null=True, doc="the rater's words, e.g. UltraFeedback's critique"),
        _f("meta", "json", omit_null=True, doc="source fields with no field of their own, as a JSON object"),
    ),
    unique=(("rating_id",),),
    doc="One response rated on named ordinal aspects by one annotator.",
)

REWARD_SCORE = Kind(
    "reward_score",
    (
        _f("reward_model", "id", True),
        _f("reward_model_version", "id"),
        _f("sample_id", "id", True),
        _f("prompt_id", "id"),
        _f("score", "float", True),
        _f("run_id", "id"),
        _f("step", "int", min=0, doc="policy step/checkpoint that produced the scored sample"),
        _f("response_length", "int", min=0, doc="length of the scored response (tokens or chars)"),
    ),
    doc="A reward model's score of one policy sample.",
)

TRAIN_STEP = Kind(
    "train_step",
    (
        _f("run_id", "id", True),
        _f("algorithm", "id", True, doc="ppo, dpo, grpo, kto, orpo, rloo, sft, reward_model, ..."),
        _f("step", "int", True, min=0),
        _f("metrics", "map_float", True, doc="metric name -> number; TRL names such as objective/kl"),
        _f("epoch", "float", min=0),
        _f("logged_at", "ts", omit_null=True, doc="when the trainer logged the step (UTC)"),
    ),
    unique=(("run_id", "step"),),
    doc="Metrics of one optimisation step of a training run.",
)

CHECKPOINT = Kind(
    "checkpoint",
    (
        _f("run_id", "id", True),
        _f("step", "int", True, min=0),
        _f("uri", "text", True, doc="where the artifact lives"),
        _f("content_hash", "id", True, doc="sha256:<hex> of the artifact, computed by the kit"),
        _f("size_bytes", "int", min=0),
        _f("base_model", "id"),
        _f("parent", "id", doc="checkpoint this one was trained from"),
        _f("saved_at", "ts", omit_null=True, doc="when the trainer saved the checkpoint (UTC)"),
    ),
    unique=(("run_id", "step"),),
    doc="A model checkpoint with the content hash of its files.",
)

DATASET = Kind(
    "dataset",
    (
        _f("name", "id", True),
        _f("version", "id", True),
        _f("source", "text"),
        _f("license", "id"),
        _f("row_count", "int", min=0),
        _f("content_hash", "id"),
        _f("description", "text"),
    ),
    unique=(("name", "version"),),
    doc="Registration of a dataset or annotation batch.",
)

OVERSIGHT = Kind(
    "oversight",
    (
        _f("reviewer", "id", True, person=True),
        _f("decision", "id", True, choices=OVERSIGHT_DECISIONS),
        _f("reason", "text", True),
        _f("subject_seq", "int", min=0),
        _f("subject_run", "id"),
        _f("subject_checkpoint", "id"),
        _f("role", "id"),
        _f("decided_at", "ts"),
    ),
    doc="A human oversight decision about an event, a run or a checkpoint.",
)

CUSTOM = Kind(
    "custom",
    (
        _f("name", "id", True, doc="your kind name, e.g. 'eval_result'"),
        _f("payload", "json", True),
    ),
    doc="Any JSON object under a user-chosen kind name.",
)

SNAPSHOT = Kind(
    "snapshot",
    (
        _f("origin", "text", True),
        _f("tree_size", "int", True, min=0),
        _f("root_hash", "id", True, doc="hex"),
        _f("key_name", "id", True),
        _f("key_id", "id", True),
        _f("note", "text", True, doc="the signed C2SP checkpoint note"),
    ),
    doc="A signed checkpoint of the log (written by store.snapshot).",
    internal=True,
)

PRIVACY_BUDGET = Kind(
    "privacy_budget",
    (
        _f("scope", "id", True),
        _f("epsilon", "float", True, min=0),
        _f("delta", "float", True, min=0, max=1),
        _f("description", "text"),
    ),
    doc="A privacy budget declared for a scope (written by store.privacy.set_budget).",
    internal=True,
)

PRIVACY_SPEND = Kind(
    "privacy_spend",
    (
        _f("release_id", "id", True),
        _f("scopes", "json", True, doc="{'scopes': [...]} the budgets charged"),
        _f("query", "text", True),
        _f("mechanism", "id", True),
        _f("parameters", "json", True),
        _f("epsilon", "float", True, min=0),
        _f("delta", "float", True, min=0, max=1),
        _f("result", "json", True, doc="the noisy answer released"),
    ),
    unique=(("release_id",),),
    doc="One differentially private release and its cost (written by store.privacy.release).",
    internal=True,
)

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (ANNOTATION, RATING, REWARD_SCORE, TRAIN_STEP, CHECKPOINT, DATASET, OVERSIGHT,
              CUSTOM, SNAPSHOT, PRIVACY_BUDGET, PRIVACY_SPEND)
}
USER_KINDS = tuple(k for k, v in KINDS.items() if not v.internal)
# Columns the store assigns; ignored when present in input rows so tables can be copied.
STORE_COLUMNS = ("seq", "ts", "kind", "leaf_hash", "entry")
