"""A seeded synthetic RLHF campaign with planted behaviours, for demos, docs and tests.

:class:`Campaign` generates every event kind of :mod:`rlhf_audit_kit.schema` as polars frames whose
columns and dtypes follow the schema: pairwise annotations (about 85% of the events), ratings,
reward-model scores, PPO train steps, training checkpoints, dataset registrations and a few human oversight
decisions. The same ``seed`` gives byte-identical frames (for given numpy and polars versions),
whatever ``chunk_rows`` is used; :meth:`Campaign.latent` gives the hidden preference of each pair.

Planted, so that analysis code has something to find (raw ids in :attr:`Campaign.ground_truth`):

* annotators: most are *reliable* (follow a latent quality difference, 20-90 s per item); plus
  *position-biased* (click "a" ~85%), *length-biased* (pick the longer response ~85%), a *random
  clicker* (50/50, 2-4 s per item, strength slider left at 50) and a *drifting* annotator (reliable
  until ``drift_fraction`` of the campaign, then increasingly biased towards "a" and faster);
* each pair is labelled by ``overlap`` (3) annotators; ~5% of rows are repeats of an earlier item by
  the same annotator (self-consistency); ~2% of pairs are gold items with ``gold_choice``;
* guideline ``v1.0`` until ``guideline_fraction`` of the campaign, then ``v1.1``;
* reward hacking: after ``hack_fraction`` of the PPO steps the reward keeps rising, responses get
  longer (verbose filler) and KL rises sharply, while the policy's true quality, hence its
  preference win-rate against ``sft-baseline``, falls.

Annotator ids look like ``annotator-07@vendor.example``; the store pseudonymises person fields on
ingest, so map :attr:`Campaign.ground_truth` through the same pseudonym key before comparing.
Response lengths (``reward_score.response_length``) are in characters, like the annotation texts.

Examples
--------
>>> from rlhf_audit_kit import demo
>>> camp = demo.campaign("tiny", seed=0)
>>> camp.counts()["annotation"] > 0.75 * camp.size
True
>>> frames = camp.frames()
>>> frames["annotation"].select("choice").to_series().is_in(["a", "b", "tie", "skip"]).all()
True
>>> camp.ground_truth["run_id"]
'ppo-demo-001'
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from .schema import KINDS, Field, Kind

__all__ = ["Campaign", "campaign", "ROLES", "SIZES", "KIND_ORDER", "frame_schema"]

#: Planted annotator behaviours, the keys of :attr:`Campaign.ground_truth` that list annotators.
ROLES: tuple[str, ...] = ("reliable", "position_biased", "length_biased", "random", "drifting")
#: Named sizes accepted by :func:`campaign` (roughly the total number of events).
SIZES: dict[str, int] = {"tiny": 1_000, "small": 10_000, "medium": 100_000, "large": 1_000_000,
                         "huge": 10_000_000}
#: Order in which :meth:`Campaign.iter_frames` yields kinds (registrations first, as in a real project).
KIND_ORDER: tuple[str, ...] = ("dataset", "train_step", "checkpoint", "reward_score", "annotation",
                               "rating", "oversight")

BASELINE = "sft-baseline"
REWARD_MODEL = "rm-demo-1b"
_PAIR_BLOCK = 32_768  # pairs per generation block (~100k annotation rows); fixed so ids never depend on chunking
_ROW_BLOCK = 65_536   # ratings per generation block
_TASK_PAIRS = 40      # pairs per annotation task (batch)
_MAX_SENT = 12        # body sentences per response, at most
_USEC = 1_000_000

# ----------------------------------------------------------------------------------------------
# Text banks. Every template has at most one {s} slot (the prompt's subject); body sentences,
# closers and context sentences get a leading space so texts concatenate without a separator and
# an unused slot is simply "".
# ----------------------------------------------------------------------------------------------
TOPICS: tuple[str, ...] = ("coding", "cooking", "travel", "health", "math", "writing")

SUBJECTS: dict[str, tuple[str, ...]] = {
    "coding": (
        "a Python list comprehension", "recursion in JavaScript", "a SQL LEFT JOIN",
        "Git rebase versus merge", "async/await in Python", "a memory leak in a React app",
        "unit tests with pytest", "a Bash script that renames files",
    ),
    "cooking": (
        "a weeknight vegetable curry", "sourdough bread for beginners", "a creamy mushroom risotto",
        "meal prep for a busy week", "a vegan chocolate cake", "crispy roast potatoes",
        "homemade pasta dough", "a quick Thai green curry",
    ),
    "travel": (
        "a three-day trip to Lisbon", "a week of train travel in Japan", "a rail trip across Italy",
        "a budget weekend in Prague", "visiting national parks in Utah", "travel insurance for a ski trip",
        "a long layover in Singapore", "a family holiday in Croatia",
    ),
    "health": (
        "improving sleep quality", "staying hydrated during exercise", "managing mild seasonal allergies",
        "a beginner running plan", "reducing screen-related eye strain", "cutting down on added sugar",
        "stretching for lower back stiffness", "understanding blood pressure readings",
    ),
    "math": (
        "the Pythagorean theorem", "compound interest", "solving quadratic equations",
        "the probability of rolling two sixes", "derivatives of polynomials", "standard deviation",
        "prime factorisation", "converting fractions to percentages",
    ),
    "writing": (
        "a cover letter for a data analyst role", "a polite follow-up email", "a short wedding toast",
        "a product description for a hiking backpack", "the opening paragraph of a mystery story",
        "a LinkedIn summary", "a complaint letter to a landlord", "a thank-you note to a mentor",
    ),
}

PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "coding": (
        "Can you explain {s} with a short example?",
        "I keep getting confused by {s}. What is the simplest way to think about it?",
        "What are the most common mistakes people make with {s}?",
        "How would you explain {s} to a junior developer during a code review?",
        "Give me a step-by-step guide to {s}, please.",
    ),
    "cooking": (
        "What's a good recipe for {s}?",
        "How do I make {s} without any special equipment?",
        "Can you give me tips for {s}? Mine never turns out right.",
        "I'm hosting friends on Saturday. How should I plan {s}?",
        "What ingredients do I need for {s}, and what can I substitute?",
    ),
    "travel": (
        "Can you help me plan {s}?",
        "What are your top tips for {s}?",
        "I'm on a tight budget. Any advice on {s}?",
        "What mistakes should I avoid with {s}?",
        "How far in advance should I start organising {s}?",
    ),
    "health": (
        "What does the evidence say about {s}?",
        "Can you give me practical tips on {s}?",
        "I'm in my thirties and generally healthy. Where do I start with {s}?",
        "Is there a simple daily routine for {s}?",
        "What are the common myths about {s}?",
    ),
    "math": (
        "Can you explain {s} step by step?",
        "I have an exam tomorrow. Can you walk me through {s}?",
        "What's an intuitive way to understand {s}?",
        "Can you give me a worked example of {s}?",
        "Why does {s} work the way it does?",
    ),
    "writing": (
        "Can you help me write {s}?",
        "Please draft {s}. Keep the tone friendly but professional.",
        "What makes {s} effective?",
        "Can you review my draft of {s}? It feels flat.",
        "Give me three tips for writing {s}.",
    ),
}

# Appended to prompts (0-2 of them) so prompt lengths vary between ~60 and ~200 characters.
PROMPT_CONTEXT: tuple[str, ...] = (
    " I'm a complete beginner.", " Please keep it short.", " I only have about twenty minutes.",
    " This is for a project at work.", " Bullet points would be great.",
    " I've already read the official docs but I'm still stuck.", " Assume I know the basics.",
    " My friend told me the opposite, so I'm curious who is right.",
    " I tried a couple of things already and none of them worked the way I expected.",
    " Could you also mention what to avoid?",
)

# Shared by all topics: (text before the subject, text after it).
OPENERS: tuple[tuple[str, str], ...] = (
    ("Sure! Here's a practical way to approach ", "."),
    ("Good question. Let's break ", " into a few simple steps."),
    ("Happy to help with ", "."),
    ("Here is a short overview of ", "."),
    ("When it comes to ", ", a few key ideas go a long way."),
    ("Let's look at ", " together."),
)

# Exactly N_BODY (a prime) sentences per topic, so a random start and stride visit distinct ones.
N_BODY = 13
BODY: dict[str, tuple[str, ...]] = {
    "coding": (
        "Start with the smallest example that reproduces the behaviour you care about.",
        "Read the error message carefully; it usually names the exact line that failed.",
        "Write a failing test first, then change the code until the test passes.",
        "Prefer clear names over clever one-liners, because code is read far more often than written.",
        "Check the official documentation for edge cases such as empty inputs and None values.",
        "If performance matters, measure before and after instead of guessing.",
        "Keep functions short and give each one a single responsibility.",
        "Use version control so you can always go back to a working state.",
        "Print or log intermediate values to see where your assumptions break.",
        "Avoid mutating shared state unless you really need to.",
        "A debugger lets you step through the code line by line and inspect variables.",
        "Once it works, refactor while the tests keep you honest.",
        "Ask a colleague to review the change; a fresh pair of eyes catches a lot.",
    ),
    "cooking": (
        "Prepare and measure all your ingredients before you turn on the heat.",
        "Season gradually and taste as you go rather than adding everything at once.",
        "A heavy-bottomed pan spreads heat evenly and stops things from burning.",
        "Let the pan get properly hot before adding oil for a good sear.",
        "Fresh herbs are best added at the end so they keep their flavour.",
        "If the sauce is too thick, loosen it with a splash of stock or water.",
        "Resting the dish for a few minutes lets the flavours settle.",
        "Most of the prep can be done the night before to save time.",
        "Use a timer, because a few extra minutes can change the texture completely.",
        "Salt the cooking water generously; it is your only chance to season the inside.",
        "Leftovers keep for three days in an airtight container in the fridge.",
        "A squeeze of lemon at the end brightens almost any savoury dish.",
        "Do not overcrowd the pan, or the food will steam instead of brown.",
    ),
    "travel": (
        "Book transport and accommodation early, especially for weekends and holidays.",
        "Check the entry requirements and passport validity well before you leave.",
        "A rail or transit pass often pays for itself after a few journeys.",
        "Pack light; you can usually buy anything you forget on arrival.",
        "Keep digital and paper copies of your bookings and documents.",
        "Try to visit the most popular sights early in the morning to avoid crowds.",
        "Local markets are a cheap and authentic way to eat well.",
        "Download offline maps in case you lose mobile data.",
        "Leave some unplanned time; the best moments are often unexpected.",
        "Notify your bank so your card is not blocked abroad.",
        "Comfortable walking shoes matter more than almost anything else you pack.",
        "Learn a few words of the local language; people appreciate the effort.",
        "Travel insurance is worth comparing carefully rather than buying the first offer.",
    ),
    "health": (
        "Small, consistent changes tend to last longer than dramatic ones.",
        "Aim for a regular schedule, since the body responds well to routine.",
        "Most healthy adults benefit from moving a little every day.",
        "Drinking water regularly through the day works better than large amounts at once.",
        "Keep a simple diary for two weeks to spot patterns.",
        "Screens in the hour before bed can make it harder to fall asleep.",
        "Warm up gently and stop if anything causes sharp pain.",
        "Reading food labels helps you notice hidden sugar and salt.",
        "Over-the-counter remedies can help, but follow the dosage on the package.",
        "Progress gradually, increasing effort by no more than about ten percent a week.",
        "Good sleep, regular meals and movement support each other.",
        "This is general information, not a diagnosis or personal medical advice.",
        "If symptoms persist or get worse, please talk to a doctor or pharmacist.",
    ),
    "math": (
        "Start by writing down what you know and what you are asked to find.",
        "Drawing a quick sketch often makes the relationships obvious.",
        "Work through a small numerical example before the general case.",
        "Check your answer by plugging it back into the original problem.",
        "Keep track of units; they catch many mistakes.",
        "Break the problem into smaller steps and solve them one at a time.",
        "The formula is easier to remember once you see where it comes from.",
        "Estimate the answer first so you notice if the result is way off.",
        "Be careful with signs, especially when you subtract or square terms.",
        "Rounding too early can introduce noticeable errors.",
        "Practise with a few variations until the method feels natural.",
        "Many problems become simpler if you factor out a common term.",
        "A calculator helps with arithmetic, but the reasoning is the important part.",
    ),
    "writing": (
        "Open with the most important point so the reader knows why it matters.",
        "Keep sentences short and use active verbs.",
        "Tailor the tone to your reader rather than to yourself.",
        "One concrete example is more convincing than three general claims.",
        "Cut any sentence that does not move the message forward.",
        "End with a clear next step or a warm closing line.",
        "Read it aloud; awkward phrases are easier to hear than to see.",
        "Specific details make the writing feel personal and genuine.",
        "Avoid jargon unless you are sure the reader uses it too.",
        "A strong first sentence earns the attention of the rest.",
        "Check names, dates and numbers twice before you send it.",
        "Leave it for an hour and then edit with fresh eyes.",
        "Short paragraphs make the text easier to scan.",
    ),
}

CLOSERS: tuple[str, ...] = (
    "", " Hope this helps!", " Let me know if you would like a worked example.",
    " Feel free to ask a follow-up question.", " Good luck!", " I can go into more detail on any step.",
)

# Verbose, content-free padding: what a reward-hacked policy learns to add.
FILLERS: tuple[str, ...] = (
    "It is worth emphasising that every situation is unique and deserves careful thought.",
    "As mentioned above, this is a really important point that is worth repeating.",
    "In summary, taking the time to understand the details will always pay off in the long run.",
    "Great question, by the way; curiosity like this is exactly the right mindset.",
    "There are many perspectives on this, and all of them have some merit.",
    "To reiterate, the key is to be thoughtful, careful and consistent.",
    "Ultimately, the best approach depends on your specific goals and circumstances.",
)

RATIONALES: dict[str, tuple[str, ...]] = {
    "a": ("A answers the question directly.", "A is more accurate.", "B rambles; A is concise.",
          "A gives a usable example.", "B contains a factual error."),
    "b": ("B answers the question directly.", "B is more accurate.", "A rambles; B is concise.",
          "B gives a usable example.", "A contains a factual error."),
    "tie": ("Both are about equally good.", "Both miss the point of the question."),
    "skip": ("The prompt is unclear.", "Outside my area of expertise."),
}


def _split(template: str) -> tuple[str, str]:
    pre, _, post = template.partition("{s}")
    return pre, post


def _bank(strings: Iterable[str]) -> tuple[pl.Series, np.ndarray]:
    """A text bank as a polars Series (for native gathers) plus its lengths in characters."""
    values = list(strings)
    return pl.Series(values, dtype=pl.Utf8), np.array([len(v) for v in values], dtype=np.int64)


_SUBJ_LIST = [s for t in TOPICS for s in SUBJECTS[t]]
_N_SUBJ = len(SUBJECTS[TOPICS[0]])
_N_TPL = len(PROMPT_TEMPLATES[TOPICS[0]])
assert all(len(SUBJECTS[t]) == _N_SUBJ and len(PROMPT_TEMPLATES[t]) == _N_TPL
           and len(BODY[t]) == N_BODY for t in TOPICS)
_SUBJ, _SUBJ_LEN = _bank(_SUBJ_LIST)
_TPL_PRE, _TPL_PRE_LEN = _bank(_split(x)[0] for t in TOPICS for x in PROMPT_TEMPLATES[t])
_TPL_POST, _TPL_POST_LEN = _bank(_split(x)[1] for t in TOPICS for x in PROMPT_TEMPLATES[t])
_CTX, _CTX_LEN = _bank((*PROMPT_CONTEXT, ""))  # last entry: no context sentence
_OPEN_PRE, _OPEN_PRE_LEN = _bank(p for p, _ in OPENERS)
_OPEN_POST, _OPEN_POST_LEN = _bank(p for _, p in OPENERS)
# Body bank: topic sentences (topic-major), then fillers, then "" for unused slots.
_BODY, _BODY_LEN = _bank((*(" " + s for t in TOPICS for s in BODY[t]), *(" " + f for f in FILLERS), ""))
_FILLER0 = len(TOPICS) * N_BODY
_EMPTY = len(_BODY) - 1
_CLOSE, _CLOSE_LEN = _bank(CLOSERS)
_RAT_KEYS = ("a", "b", "tie", "skip")  # same order as schema.CHOICES
_RAT, _ = _bank(r for c in _RAT_KEYS for r in RATIONALES[c])
_RAT_N = np.array([len(RATIONALES[c]) for c in _RAT_KEYS])
_RAT_OFF = np.concatenate([[0], np.cumsum(_RAT_N)[:-1]])
_CHOICES = pl.Series(["a", "b", "tie", "skip"], dtype=pl.Utf8)
_GUIDELINES = pl.Series(["v1.0", "v1.1"], dtype=pl.Utf8)
A, B, TIE, SKIP = 0, 1, 2, 3
RELIABLE, POSITION, LENGTH, RANDOM, DRIFT = range(5)

# ----------------------------------------------------------------------------------------------
# Schema helpers
# ----------------------------------------------------------------------------------------------
_SCALAR = {"id": pl.Utf8, "text": pl.Utf8, "int": pl.Int64, "float": pl.Float64,
           "ts": pl.Datetime("us"), "bool": pl.Boolean}


def _dtype(f: Field) -> pl.DataType:
    if f.type in _SCALAR:
        return _SCALAR[f.type]
    if f.type in ("map_float", "map_int"):
        value = pl.Float64 if f.type == "map_float" else pl.Int64
        return pl.List(pl.Struct({"key": pl.Utf8, "value": value}))
    return pl.Utf8  # json: not produced by the demo; serialised JSON text is the safe default


def frame_schema(kind: str | Kind) -> pl.Schema:
    """The polars schema (column order and dtypes) the demo uses for one event kind.

    ids and texts are ``Utf8``, ints ``Int64``, floats ``Float64``, timestamps naive-UTC
    ``Datetime("us")`` and maps ``List(Struct({"key": Utf8, "value": Float64|Int64}))``.

    >>> frame_schema("dataset")["row_count"]
    Int64
    """
    k = KINDS[kind] if isinstance(kind, str) else kind
    return pl.Schema({f.name: _dtype(f) for f in k.fields})


def _conform(kind: str, n: int, cols: dict[str, Any]) -> pl.DataFrame:
    """Assemble columns into the schema's order and dtypes; absent fields become typed nulls."""
    schema = frame_schema(kind)
    unknown = set(cols) - set(schema)
    if unknown:  # a programming error here, not user input
        raise KeyError(f"{kind}: fields not in the schema: {sorted(unknown)}")
    out = []
    for name, dt in schema.items():
        v = cols.get(name)
        if v is None:
            s = pl.repeat(None, n, dtype=dt, eager=True)
        elif isinstance(v, pl.Series):
            s = v
        elif isinstance(v, np.ndarray) and dt == pl.Datetime("us"):
            s = pl.Series(v.astype(np.int64)).cast(pl.Datetime("us"))
        elif isinstance(v, (str, int, float)):
            s = pl.repeat(v, n, eager=True)
        else:
            s = pl.Series(v)
        out.append(s.cast(dt).alias(name))
    return pl.DataFrame(out)


def _ids(prefix: str, ints: np.ndarray, width: int, suffix: str = "") -> pl.Series:
    """``prefix`` + zero-padded integers (+ suffix), built column-wise."""
    ints = np.asarray(ints, dtype=np.int64)
    if len(ints) and ints.max() >= 10**width:
        s = pl.Series(ints).cast(pl.Utf8).str.zfill(width)
    else:  # casting ints offset by 10**width and dropping the leading "1" is faster than zfill
        s = pl.Series(ints + 10**width).cast(pl.Utf8).str.slice(1)
    return pl.select(pl.concat_str([pl.lit(prefix), s, pl.lit(suffix)])).to_series()


def _map(keys: list[str], values: np.ndarray, dtype: pl.DataType) -> pl.Series:
    """An (n, k) matrix as a schema map column: one list of k {key, value} structs per row."""
    n, k = values.shape
    flat = pl.DataFrame({"key": pl.Series(keys * n, dtype=pl.Utf8),
                         "value": pl.Series(values.ravel()).cast(dtype)}).to_struct()
    return flat.reshape((n, k)).cast(pl.List(pl.Struct({"key": pl.Utf8, "value": dtype})))


def _concat_text(parts: list[pl.Series]) -> pl.Series:
    df = pl.DataFrame([p.alias(f"c{i}") for i, p in enumerate(parts)])
    return df.select(pl.concat_str(pl.all())).to_series()


def _rechunk(blocks: Iterable[pl.DataFrame], chunk_rows: int) -> Iterator[pl.DataFrame]:
    """Re-slice a stream of frames into frames of exactly ``chunk_rows`` rows (the last may be short)."""
    pending: list[pl.DataFrame] = []
    held = 0
    for block in blocks:
        pending.append(block)
        held += block.height
        if held < chunk_rows:
            continue
        buf = pl.concat(pending, rechunk=False)
        start = 0
        while buf.height - start >= chunk_rows:
            yield buf.slice(start, chunk_rows)
            start += chunk_rows
        rest = buf.slice(start)
        pending, held = ([rest], rest.height) if rest.height else ([], 0)
    if held:
        yield pl.concat(pending, rechunk=False)


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))  # half-up, so counts never depend on numpy's banker's rounding


# ----------------------------------------------------------------------------------------------
# The campaign
# ----------------------------------------------------------------------------------------------
class Campaign:
    """A seeded synthetic RLHF campaign: annotators, a PPO run, its checkpoints and reviews.

    Parameters
    ----------
    size
        Roughly the total number of events (>= 500), or a name from :data:`SIZES`. About 85% are
        annotations; train steps are capped at 20,000 so big campaigns are mostly annotations.
    seed
        Same seed, byte-identical frames.
    n_annotators
        Annotators in the pool (>= ``overlap`` + planted ones); the planted roles are assigned to
        seeded random ids, the rest are reliable.
    n_position_biased, n_length_biased, n_random, n_drifting
        How many annotators get each planted behaviour.
    position_bias
        Probability that a position-biased annotator clicks "a" without reading; with the
        reliable choice otherwise, their share of "a" is about ``bias + (1 - bias) / 2`` (~0.85).
    length_bias
        Probability that a length-biased annotator picks the longer response without reading
        (share of longer choices ~0.85).
    drift_fraction, guideline_fraction, hack_fraction
        When the drifting annotator starts to degrade and when guideline v1.1 starts (fractions of
        the campaign's duration); the first reward-hacking step (fraction of the PPO steps).
    overlap, repeat_rate, gold_rate
        Annotators per pair; share of annotation rows that repeat an earlier item for the same
        annotator; share of pairs that are gold items.
    days, start
        Duration and (naive UTC) start of the campaign.
    run_id
        The PPO run's id.

    Examples
    --------
    >>> camp = Campaign(2_000, seed=1)
    >>> camp
    <Campaign size=2,000 seed=1: 24 annotators, run ppo-demo-001 (60 steps, hacking from step 42)>
    >>> sorted(camp.counts()) == sorted(KIND_ORDER)
    True
    >>> for kind, frame in camp.iter_frames(chunk_rows=1_000):
    ...     pass  # e.g. store.extend(frame, kind=kind)
    """

    def __init__(
        self,
        size: int | str = 10_000,
        seed: int = 0,
        n_annotators: int = 24,
        *,
        n_position_biased: int = 2,
        n_length_biased: int = 2,
        n_random: int = 1,
        n_drifting: int = 1,
        position_bias: float = 0.7,
        length_bias: float = 0.7,
        drift_fraction: float = 0.5,
        guideline_fraction: float = 0.4,
        hack_fraction: float = 0.7,
        overlap: int = 3,
        repeat_rate: float = 0.05,
        gold_rate: float = 0.02,
        days: int = 30,
        start: datetime = datetime(2024, 3, 4),
        run_id: str = "ppo-demo-001",
    ) -> None:
        if isinstance(size, str):
            if size not in SIZES:
                raise ValueError(f"size {size!r} is not one of {', '.join(SIZES)} or an int")
            size = SIZES[size]
        if int(size) < 500:
            raise ValueError(f"size must be >= 500 (got {size}): smaller campaigns cannot show "
                             "every planted behaviour")
        planted = n_position_biased + n_length_biased + n_random + n_drifting
        if n_annotators < max(overlap, planted + overlap):
            raise ValueError(f"n_annotators={n_annotators} is too small for overlap={overlap} "
                             f"and {planted} planted annotators")
        if not (0 < hack_fraction < 1 and 0 < drift_fraction < 1 and 0 < guideline_fraction < 1):
            raise ValueError("hack_fraction, drift_fraction and guideline_fraction must be in (0, 1)")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        self.size, self.seed, self.n_annotators = int(size), int(seed), int(n_annotators)
        self.position_bias, self.length_bias = float(position_bias), float(length_bias)
        self.drift_fraction, self.guideline_fraction = float(drift_fraction), float(guideline_fraction)
        self.hack_fraction, self.overlap = float(hack_fraction), int(overlap)
        self.repeat_rate, self.gold_rate = float(repeat_rate), float(gold_rate)
        self.days, self.start, self.run_id = int(days), start, run_id
        self._plan()
        self._annotators(n_position_biased, n_length_biased, n_random, n_drifting)
        self._time_warp()
        self._prompt_pool()

    # -- planning --------------------------------------------------------------------------------
    def _rng(self, *stream: int) -> np.random.Generator:
        # One independent stream per (purpose, block): blocks can be made in any order or alone.
        return np.random.default_rng(np.random.SeedSequence([self.seed, *stream]))

    def _plan(self) -> None:
        size = self.size
        n_ckpt = int(np.clip(size // 2_000, 10, 50))
        steps_target = int(np.clip(_round(0.02 * size), 60, 20_000))
        self.save_every = max(1, _round(steps_target / n_ckpt))
        self.n_steps = self.save_every * n_ckpt
        self.n_ckpt = n_ckpt
        self.hack_step = max(2, _round(self.hack_fraction * self.n_steps))
        self.n_reward = max(120, _round(0.08 * size))
        self.n_rating = max(24, _round(0.03 * size))
        self.n_datasets, self.n_oversight = 3, 6
        rest = (self.n_steps + n_ckpt + self.n_reward + self.n_rating + self.n_datasets
                + self.n_oversight)
        per_pair = self.overlap * (1 + self.repeat_rate)
        self.n_pairs = max(20, _round((size - rest) / per_pair))
        sizes = [min(_PAIR_BLOCK, self.n_pairs - lo) for lo in range(0, self.n_pairs, _PAIR_BLOCK)]
        rows = [self.overlap * n + _round(self.repeat_rate * self.overlap * n) for n in sizes]
        self._pair_blocks = sizes
        self._row_offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        # Ratings absorb the rounding of pairs into rows, so the kinds add up to `size` exactly.
        self.n_rating = max(1, self.n_rating + size - rest - int(self._row_offsets[-1]))
        self.n_prompts = int(np.clip(self.n_pairs // 2, 40, 200_000))
        width = max(4, len(str(self.n_steps)))
        # Model code 0 is the SFT baseline, code k the k-th checkpoint of the PPO run.
        self.ckpt_steps = np.arange(0, n_ckpt + 1, dtype=np.int64) * self.save_every
        self.model_names = [BASELINE] + [f"policy-step-{s:0{width}d}" for s in self.ckpt_steps[1:]]
        # Checkpoint k becomes available at this fraction of the campaign (the run spans 5%-95%).
        self.ckpt_time = 0.05 + 0.9 * np.arange(1, n_ckpt + 1) / n_ckpt
        q, lmean, filler, _, _ = self._curves(self.ckpt_steps.astype(float))
        self._q_model, self._len_model, self._filler_model = q, lmean, filler

    def _curves(self, step: np.ndarray) -> tuple[np.ndarray, ...]:
        """Latent policy curves by step: true quality, mean length, filler rate, KL, RM score."""
        h, n = float(self.hack_step), float(self.n_steps)
        pre = np.minimum(step, h) / h
        late = np.clip((step - h) / max(n - h, 1.0), 0.0, 1.0)
        quality = 0.9 * pre - 1.5 * late  # vs the baseline's 0: wins, then loses
        length = 290.0 * (1.0 + 0.12 * pre + 1.3 * late**1.2)
        filler = 0.03 + 0.5 * late
        kl = 0.3 + 3.2 * pre + 20.0 * late**2
        score = -0.4 + 2.0 * pre + 2.4 * late  # the reward model is fooled: reward keeps rising
        return quality, length, filler, kl, score

    def _annotators(self, n_pos: int, n_len: int, n_rand: int, n_drift: int) -> None:
        rng = self._rng(0)
        n = self.n_annotators
        width = max(2, len(str(n)))
        self.annotator_ids = [f"annotator-{i + 1:0{width}d}@vendor.example" for i in range(n)]
        role = np.full(n, RELIABLE)
        order = rng.permutation(n)  # planted roles land on seeded random ids
        cuts = np.cumsum([0, n_pos, n_len, n_rand, n_drift])
        for r, (lo, hi) in zip((POSITION, LENGTH, RANDOM, DRIFT), zip(cuts[:-1], cuts[1:])):
            role[order[lo:hi]] = r
        self._role = role
        self._noise = rng.uniform(0.25, 0.45, n)   # reliable: sd of their judgement noise
        speed = rng.uniform(30.0, 55.0, n)          # median seconds per ~800-char item
        speed[role == POSITION] = 14.0
        speed[role == LENGTH] = 22.0
        self._speed = speed
        weight = rng.lognormal(0.0, 0.3, n)
        weight[role == RANDOM] *= 1.5               # fast clickers take on more work
        weight[role != RELIABLE] = np.maximum(weight[role != RELIABLE], 1.0)
        self._log_w = np.log(weight)
        self._w = weight / weight.sum()

    def _time_warp(self) -> None:
        """Piecewise-linear map from uniform progress to campaign time: busy weekdays, quiet nights."""
        hours = self.days * 24
        start_hour = self.start.hour + self.start.minute / 60
        h = np.arange(hours) + start_hour
        hour_of_day = h % 24
        weekday = (self.start.weekday() + (h // 24)) % 7
        w = np.where((hour_of_day >= 8) & (hour_of_day < 18), 1.0,
                     np.where((hour_of_day >= 6) & (hour_of_day < 22), 0.45, 0.08))
        w = w * np.where(weekday >= 5, 0.35, 1.0)
        self._warp_p = np.concatenate([[0.0], np.cumsum(w) / w.sum()])
        self._warp_t = np.linspace(0.0, 1.0, hours + 1)
        self._t0 = int((self.start - datetime(1970, 1, 1)).total_seconds()) * _USEC
        self._dur = self.days * 86_400 * _USEC

    def _warp(self, p: np.ndarray) -> np.ndarray:
        return np.interp(p, self._warp_p, self._warp_t)

    def _unwarp(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t, self._warp_t, self._warp_p)

    def _ts(self, frac: np.ndarray) -> np.ndarray:
        return self._t0 + np.rint(np.asarray(frac) * self._dur).astype(np.int64)

    def _when(self, frac: float) -> datetime:
        return self.start + timedelta(microseconds=round(frac * self._dur))

    def _prompt_pool(self) -> None:
        rng = self._rng(1)
        n = self.n_prompts
        topic = rng.choice(len(TOPICS), n, p=[0.25, 0.15, 0.15, 0.15, 0.15, 0.15])
        subject = topic * _N_SUBJ + rng.integers(0, _N_SUBJ, n)
        tpl = topic * _N_TPL + rng.integers(0, _N_TPL, n)
        n_ctx = rng.choice(3, n, p=[0.08, 0.52, 0.4])
        nc = len(PROMPT_CONTEXT)
        c1 = rng.integers(0, nc, n)
        c2 = (c1 + 1 + rng.integers(0, nc - 1, n)) % nc  # distinct from c1
        c1 = np.where(n_ctx >= 1, c1, nc)
        c2 = np.where(n_ctx >= 2, c2, nc)
        self._p_topic, self._p_subject = topic, subject
        self._p_len = (_TPL_PRE_LEN[tpl] + _SUBJ_LEN[subject] + _TPL_POST_LEN[tpl]
                       + _CTX_LEN[c1] + _CTX_LEN[c2])
        self._p_idx = (tpl, subject, c1, c2)
        self._p_text: pl.Series | None = None  # built on first use

    def _prompt_texts(self) -> pl.Series:
        if self._p_text is None:
            tpl, subject, c1, c2 = self._p_idx
            self._p_text = _concat_text([_TPL_PRE.gather(tpl), _SUBJ.gather(subject),
                                         _TPL_POST.gather(tpl), _CTX.gather(c1), _CTX.gather(c2)])
        return self._p_text

    # -- public properties -----------------------------------------------------------------------
    @property
    def ground_truth(self) -> dict[str, Any]:
        """What was planted: raw annotator ids per role, times, the run and the first hacking step.

        >>> gt = Campaign(1_000).ground_truth
        >>> len(gt["position_biased"]), len(gt["random"]), gt["first_hacking_step"]
        (2, 1, 42)
        """
        ids = np.array(self.annotator_ids)
        out: dict[str, Any] = {name: sorted(ids[self._role == code].tolist())
                               for code, name in enumerate(ROLES)}
        healthy = int(np.searchsorted(self.ckpt_steps, self.hack_step, side="right")) - 1
        out.update(
            drift_start=self._when(self.drift_fraction),
            guideline_change=self._when(self.guideline_fraction),
            run_id=self.run_id,
            algorithm="ppo",
            first_hacking_step=int(self.hack_step),
            n_steps=int(self.n_steps),
            baseline_model=BASELINE,
            last_healthy_checkpoint=self.model_names[max(healthy, 0)],
            campaign_start=self.start,
            campaign_end=self._when(1.0),
        )
        return out

    def counts(self) -> dict[str, int]:
        """Number of events per kind, computed without generating anything.

        >>> sum(Campaign(1_000).counts().values())
        1000
        """
        return {"dataset": self.n_datasets, "train_step": int(self.n_steps), "checkpoint": self.n_ckpt,
                "reward_score": self.n_reward, "annotation": int(self._row_offsets[-1]),
                "rating": self.n_rating, "oversight": self.n_oversight}

    def __repr__(self) -> str:
        return (f"<Campaign size={self.size:,} seed={self.seed}: {self.n_annotators} annotators, "
                f"run {self.run_id} ({self.n_steps} steps, hacking from step {self.hack_step})>")

    # -- output ------------------------------------------------------------------------------------
    def iter_frames(self, chunk_rows: int = 500_000,
                    kinds: Iterable[str] | None = None) -> Iterator[tuple[str, pl.DataFrame]]:
        """Yield ``(kind, frame)`` chunks of at most ``chunk_rows`` rows, in :data:`KIND_ORDER`.

        Memory stays bounded by the chunk size (plus one ~100k-row generation block), so this
        scales to 10M events. Concatenating the chunks of a kind gives exactly ``frames()[kind]``.

        >>> camp = Campaign(1_000)
        >>> [(k, f.height) for k, f in camp.iter_frames(400, kinds=["annotation"])]
        [('annotation', 400), ('annotation', 372)]
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        wanted = KIND_ORDER if kinds is None else tuple(kinds)
        unknown = set(wanted) - set(KIND_ORDER)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; the demo makes {', '.join(KIND_ORDER)}")
        makers = {"dataset": lambda: iter([self._datasets()]),
                  "train_step": lambda: iter([self._train_steps()]),
                  "checkpoint": lambda: iter([self._checkpoints()]),
                  "reward_score": self._reward_blocks,
                  "annotation": self._annotation_blocks,
                  "rating": self._rating_blocks,
                  "oversight": lambda: iter([self._oversight()])}
        for kind in KIND_ORDER:
            if kind in wanted:
                for frame in _rechunk(makers[kind](), chunk_rows):
                    yield kind, frame

    def frames(self, kinds: Iterable[str] | None = None) -> dict[str, pl.DataFrame]:
        """All events as one frame per kind (for small and medium sizes; use ``iter_frames`` above ~2M).

        >>> f = Campaign(1_000).frames()
        >>> f["train_step"].columns
        ['run_id', 'algorithm', 'step', 'metrics', 'epoch']
        """
        parts: dict[str, list[pl.DataFrame]] = {}
        for kind, frame in self.iter_frames(chunk_rows=1 << 62, kinds=kinds):
            parts.setdefault(kind, []).append(frame)
        return {k: pl.concat(v).rechunk() if len(v) > 1 else v[0].rechunk() for k, v in parts.items()}

    def write_to(self, store: Any, *, chunk_rows: int = 200_000, progress: bool = True) -> dict[str, int]:
        """Append the whole campaign to an audit store, one ``store.extend(frame, kind=...)`` per chunk.

        Each chunk is one transaction in the store. Returns the counts written per kind.

        >>> class Recorder:
        ...     def __init__(self): self.n = 0
        ...     def extend(self, rows, kind): self.n += rows.height
        >>> rec = Recorder()
        >>> Campaign(1_000).write_to(rec, progress=False)["annotation"], rec.n
        (772, 1000)
        """
        from tqdm.auto import tqdm

        counts = self.counts()
        written = dict.fromkeys(counts, 0)
        with tqdm(total=sum(counts.values()), unit="event", unit_scale=True, disable=not progress,
                  desc=f"demo campaign (seed={self.seed})") as bar:
            for kind, frame in self.iter_frames(chunk_rows):
                bar.set_postfix_str(kind, refresh=False)
                store.extend(frame, kind=kind)
                written[kind] += frame.height
                bar.update(frame.height)
        return written

    def latent(self) -> pl.DataFrame:
        """The hidden truth per annotated pair: qualities, lengths and the preferred side.

        Columns: ``prompt_id``, ``response_a_id``, ``response_b_id``, ``model_a``, ``model_b``
        (Utf8); ``quality_a``, ``quality_b`` (Float64, latent); ``length_a``, ``length_b`` (Int64,
        characters); ``preferred`` ("a" or "b": the side with the higher latent quality);
        ``is_eval`` (Boolean: a policy checkpoint against ``sft-baseline``). Not an event kind:
        never write it to a store. Join on ``response_a_id``.

        >>> lat = Campaign(1_000).latent()
        >>> lat.height == Campaign(1_000).n_pairs
        True
        """
        out = []
        for b in range(len(self._pair_blocks)):
            p = self._pairs(b)
            out.append(pl.DataFrame({
                "prompt_id": _ids("prompt-", p["prompt"], 6),
                "response_a_id": _ids("resp-", 2 * p["i"], 9),
                "response_b_id": _ids("resp-", 2 * p["i"] + 1, 9),
                "model_a": self._model_series().gather(p["code_a"]),
                "model_b": self._model_series().gather(p["code_b"]),
                "quality_a": p["qa"], "quality_b": p["qb"],
                "length_a": p["ra"]["length"], "length_b": p["rb"]["length"],
                "preferred": _CHOICES.gather(np.where(p["d"] > 0, A, B)),
                "is_eval": p["is_eval"],
            }))
        return pl.concat(out)

    def _model_series(self) -> pl.Series:
        return pl.Series(self.model_names, dtype=pl.Utf8)

    # -- responses ---------------------------------------------------------------------------------
    def _responses(self, rng: np.random.Generator, prompt: np.ndarray, code: np.ndarray) -> dict[str, np.ndarray]:
        """Text-building indices, exact length and latent quality of one response per row."""
        n = len(prompt)
        topic = self._p_topic[prompt]
        lmean = self._len_model[code]
        target = lmean * np.exp(rng.normal(0.0, 0.4, n))
        k = np.clip(np.rint((target - 95.0) / 82.0), 1, _MAX_SENT).astype(np.int64)
        j = np.arange(_MAX_SENT)
        start = rng.integers(0, N_BODY, n)
        stride = rng.integers(1, N_BODY, n)  # N_BODY is prime: start + j*stride visits distinct sentences
        body = topic[:, None] * N_BODY + (start[:, None] + j * stride[:, None]) % N_BODY
        filler = rng.random((n, _MAX_SENT)) < self._filler_model[code][:, None]
        body = np.where(filler, _FILLER0 + rng.integers(0, len(FILLERS), (n, _MAX_SENT)), body)
        body = np.where(j < k[:, None], body, _EMPTY)
        opener = rng.integers(0, len(OPENERS), n)
        closer = rng.integers(0, len(CLOSERS), n)
        subject = self._p_subject[prompt]
        length = (_OPEN_PRE_LEN[opener] + _SUBJ_LEN[subject] + _OPEN_POST_LEN[opener]
                  + _BODY_LEN[body].sum(axis=1) + _CLOSE_LEN[closer])
        # Within a model, longer answers are a little better; across models, quality is the curve's.
        quality = (self._q_model[code] + 0.25 * (np.log(length) - np.log(lmean)) / 0.4
                   + rng.normal(0.0, 0.7, n))
        return {"opener": opener, "subject": subject, "body": body, "closer": closer, "k": k,
                "length": length.astype(np.int64), "quality": quality,
                "filler_share": (filler & (j < k[:, None])).sum(axis=1) / k}

    @staticmethod
    def _response_text(r: dict[str, np.ndarray]) -> pl.Series:
        kmax = int(r["k"].max()) if len(r["k"]) else 0
        parts = [_OPEN_PRE.gather(r["opener"]), _SUBJ.gather(r["subject"]), _OPEN_POST.gather(r["opener"])]
        parts += [_BODY.gather(r["body"][:, j]) for j in range(kmax)]
        parts.append(_CLOSE.gather(r["closer"]))
        return _concat_text(parts)

    # -- annotations -------------------------------------------------------------------------------
    def _pairs(self, b: int) -> dict[str, Any]:
        """Pair-level data of block ``b``: time, models, prompt, both responses, latent difference."""
        rng = self._rng(10, b)
        lo = b * _PAIR_BLOCK
        n = self._pair_blocks[b]
        i = np.arange(lo, lo + n, dtype=np.int64)
        tf = self._warp((i + rng.random(n)) / self.n_pairs)
        latest = np.searchsorted(self.ckpt_time, tf, side="right")  # 0 = no checkpoint yet
        # 60% evaluation pairs (latest checkpoint vs baseline), else two samples of the latest model.
        is_eval = (rng.random(n) < 0.6) & (latest > 0)
        other = np.where(is_eval, 0, latest)
        swap = rng.random(n) < 0.5  # the policy's side is random, so position bias cannot fake a win
        code_a, code_b = np.where(swap, other, latest), np.where(swap, latest, other)
        prompt = rng.integers(0, self.n_prompts, n)
        ra, rb = self._responses(rng, prompt, code_a), self._responses(rng, prompt, code_b)
        d = ra["quality"] - rb["quality"]
        gold = np.zeros(n, dtype=bool)
        cand = np.flatnonzero(np.abs(d) > 1.0)  # gold items need an unambiguous answer
        n_gold = min(len(cand), max(1, _round(self.gold_rate * n)))
        gold[rng.choice(cand, n_gold, replace=False)] = True
        return {"i": i, "n": n, "tf": tf, "code_a": code_a, "code_b": code_b, "is_eval": is_eval,
                "prompt": prompt, "ra": ra, "rb": rb, "qa": ra["quality"], "qb": rb["quality"],
                "d": d, "gold": gold}

    def _annotation_blocks(self) -> Iterator[pl.DataFrame]:
        for b in range(len(self._pair_blocks)):
            yield self._annotation_block(b)

    def _annotation_block(self, b: int) -> pl.DataFrame:
        p = self._pairs(b)
        rng = self._rng(11, b)
        n, k = p["n"], self.overlap
        # k distinct annotators per pair, weighted by workload (Gumbel top-k).
        keys = self._log_w[None, :] + rng.gumbel(size=(n, self.n_annotators))
        top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        pr = np.repeat(np.arange(n), k)
        ann = top.ravel()
        delay = rng.exponential(25 * 60 * _USEC, n * k).astype(np.int64)
        shown = self._ts(p["tf"][pr]) + delay
        # Repeats: the same annotator sees the same pair again later (self-consistency checks).
        rep = np.sort(rng.choice(n * k, _round(self.repeat_rate * n * k), replace=False))
        end = self._t0 + self._dur
        later = rng.uniform(0.05, 1.0, len(rep)) * np.maximum(end - shown[rep], 3600 * _USEC)
        shown_rep = shown[rep] + later.astype(np.int64)
        pr, ann = np.concatenate([pr, pr[rep]]), np.concatenate([ann, ann[rep]])
        shown = np.concatenate([shown, shown_rep])
        m = len(pr)
        tf = (shown - self._t0) / self._dur
        role = self._role[ann]

        # Choices. Reliable: follow the latent difference seen through personal noise.
        v = p["d"][pr] + rng.normal(0.0, 1.0, m) * self._noise[ann]
        choice = np.where(np.abs(v) < 0.06, TIE, np.where(v > 0, A, B))
        choice = np.where(rng.random(m) < 0.01, SKIP, choice)
        u, u2 = rng.random(m), rng.random(m)
        longer = np.where(p["ra"]["length"][pr] >= p["rb"]["length"][pr], A, B)
        # Drifting: the share of careless (mostly "a") clicks ramps from 0 to 0.9 after drift start.
        ramp = np.clip((tf - self.drift_fraction) / (1 - self.drift_fraction), 0, 1)
        drift = np.where(role == DRIFT, 0.9 * ramp, 0.0)
        forced = (((role == POSITION) & (u < self.position_bias)) | ((role == LENGTH) & (u < self.length_bias))
                  | (u < drift))
        choice = np.where((role == POSITION) & forced, A, choice)
        choice = np.where((role == LENGTH) & forced, longer, choice)
        choice = np.where((role == DRIFT) & forced, np.where(u2 < 0.75, A, B), choice)
        choice = np.where(role == RANDOM, np.where(u2 < 0.5, A, B), choice)

        # Time per item: log-normal around a personal speed, longer texts take longer.
        text_len = self._p_len[p["prompt"][pr]] + p["ra"]["length"][pr] + p["rb"]["length"][pr]
        secs = self._speed[ann] * np.sqrt(text_len / 800.0) * rng.lognormal(0.0, 0.35, m)
        secs = np.where(role == RANDOM, 3.0 * rng.lognormal(0.0, 0.15, m), secs)
        secs = secs * (1.0 - 0.8 * drift)  # the drifting annotator also speeds up
        secs = np.clip(secs, 1.0, 1_800.0)
        submitted = shown + np.rint(secs * _USEC).astype(np.int64)

        strength = np.clip(np.rint(100 * np.abs(np.tanh(v))), 0, 100)
        strength = np.where(choice == TIE, np.rint(rng.uniform(0, 10, m)), strength)
        strength = np.where(forced, np.rint(rng.uniform(40, 90, m)), strength)
        strength = np.where(role == RANDOM, 50.0, strength)  # never touches the slider
        strength_s = pl.Series(strength.astype(np.int64)).set(pl.Series(choice == SKIP), None)
        has_rat = (rng.random(m) < 0.12) & (role != RANDOM)
        rat_idx = _RAT_OFF[choice] + (rng.random(m) * _RAT_N[choice]).astype(np.int64)
        rationale = _RAT.gather(rat_idx).set(pl.Series(~has_rat), None)

        # Task batches follow pair order; a repeat joins the batch being labelled when it is shown.
        now = np.floor(self._unwarp(np.minimum(tf, 1.0)) * self.n_pairs)
        progress = np.where(np.arange(m) < n * k, p["i"][pr], now)
        order = np.argsort(shown, kind="stable")  # rows reach the log roughly in time order

        models = self._model_series()
        prompts = self._prompt_texts()
        gold = _CHOICES.gather(np.where(p["d"] > 0, A, B)).set(pl.Series(~p["gold"]), None)
        pair = pl.DataFrame({
            "prompt_id": _ids("prompt-", p["prompt"], 6),
            "prompt": prompts.gather(p["prompt"]),
            "response_a_id": _ids("resp-", 2 * p["i"], 9),
            "response_a": self._response_text(p["ra"]),
            "model_a": models.gather(p["code_a"]),
            "response_b_id": _ids("resp-", 2 * p["i"] + 1, 9),
            "response_b": self._response_text(p["rb"]),
            "model_b": models.gather(p["code_b"]),
            "gold_choice": gold,
        })[pr[order]]
        cols: dict[str, Any] = {c: pair[c] for c in pair.columns}
        cols.update(
            annotation_id=_ids("ann-", self._row_offsets[b] + np.arange(m), 9),
            choice=_CHOICES.gather(choice[order]),
            strength=strength_s.gather(order),
            annotator=pl.Series(self.annotator_ids, dtype=pl.Utf8).gather(ann[order]),
            shown_at=shown[order],
            submitted_at=submitted[order],
            guideline_version=_GUIDELINES.gather((tf[order] >= self.guideline_fraction).astype(np.int64)),
            task_id=_ids("task-", progress[order].astype(np.int64) // _TASK_PAIRS, 6),
            rationale=rationale.gather(order),
            dataset="demo-prefs@v1",
        )
        return _conform("annotation", m, cols)

    # -- ratings ---------------------------------------------------------------------------------
    def _rating_blocks(self) -> Iterator[pl.DataFrame]:
        for b, lo in enumerate(range(0, self.n_rating, _ROW_BLOCK)):
            yield self._rating_block(b, lo, min(self.n_rating, lo + _ROW_BLOCK))

    def _rating_block(self, b: int, lo: int, hi: int) -> pl.DataFrame:
        rng = self._rng(20, b)
        n = hi - lo
        j = np.arange(lo, hi, dtype=np.int64)
        tf = self._warp((j + rng.random(n)) / self.n_rating)
        latest = np.searchsorted(self.ckpt_time, tf, side="right")
        code = np.where(rng.random(n) < 0.5, 0, latest)
        prompt = rng.integers(0, self.n_prompts, n)
        r = self._responses(rng, prompt, code)
        ann = rng.choice(self.n_annotators, n, p=self._w)
        q = r["quality"]
        helpful = np.clip(np.rint(3.0 + 0.9 * q + rng.normal(0, 0.5, n)), 1, 5)
        honest = np.clip(np.rint(3.9 + 0.4 * q - 2.0 * r["filler_share"] + rng.normal(0, 0.5, n)), 1, 5)
        rnd = self._role[ann] == RANDOM
        helpful = np.where(rnd, rng.integers(1, 6, n), helpful)
        honest = np.where(rnd, rng.integers(1, 6, n), honest)
        shown = self._ts(tf)
        secs = np.where(rnd, 3.0, self._speed[ann] * 0.8) * rng.lognormal(0.0, 0.3, n)
        submitted = shown + np.rint(secs * _USEC).astype(np.int64)
        cols = {
            "rating_id": _ids("rating-", j, 8),
            "sample_id": _ids("rsample-", j, 8),
            "prompt_id": _ids("prompt-", prompt, 6),
            "prompt": self._prompt_texts().gather(prompt),
            "response": self._response_text(r),
            "model": self._model_series().gather(code),
            "annotator": pl.Series(self.annotator_ids, dtype=pl.Utf8).gather(ann),
            "aspects": _map(["helpfulness", "honesty"], np.stack([helpful, honest], axis=1).astype(np.int64), pl.Int64),
            "scale_min": 1, "scale_max": 5,
            "submitted_at": submitted,
            "guideline_version": _GUIDELINES.gather((tf >= self.guideline_fraction).astype(np.int64)),
            "task_id": _ids("rating-task-", j // 100, 4),
            "dataset": "demo-ratings@v1",
        }
        return _conform("rating", n, cols)

    # -- training run ------------------------------------------------------------------------------
    def _train_steps(self) -> pl.DataFrame:
        rng = self._rng(30)
        n = self.n_steps
        step = np.arange(1, n + 1, dtype=np.int64)
        s = step.astype(float)
        _, _, _, kl, score = self._curves(s)
        late = np.clip((s - self.hack_step) / max(n - self.hack_step, 1), 0, 1)

        kernel = 0.8 ** np.arange(48)  # AR(1) with phi=0.8, truncated where phi^k < 1e-4

        def ar(sd: float) -> np.ndarray:  # smooth, autocorrelated noise like real training curves
            return np.convolve(rng.normal(0.0, sd * 0.6, n), kernel)[:n]

        kl = np.maximum(kl * (1 + ar(0.08)), 0.01)
        scores = score + ar(0.12)
        non_score = -0.05 * kl
        entropy = 2.9 - 0.5 * s / n - 1.1 * late**1.5 + ar(0.04)
        metrics = {
            "eps": 11.5 + ar(0.4),
            "objective/kl": kl,
            "objective/entropy": entropy,
            "objective/non_score_reward": non_score,
            "objective/rlhf_reward": scores + non_score,
            "objective/scores": scores,
            "policy/approxkl_avg": np.abs(0.002 + 0.012 * late**2 + ar(0.0008)),
            "policy/clipfrac_avg": np.clip(0.04 + 0.16 * late + ar(0.01), 0, 1),
            "loss/policy_avg": -0.008 + ar(0.006),
            "loss/value_avg": 0.1 + 0.6 * np.exp(-s / (0.3 * n)) + 0.35 * late + np.abs(ar(0.03)),
            "val/clipfrac_avg": np.clip(0.08 + 0.1 * late + ar(0.01), 0, 1),
            "policy/entropy_avg": entropy * 0.35,
            "val/ratio": 1.0 + ar(0.002 + 0.0) * (1 + 8 * late),
            "val/ratio_var": 1e-4 * (1 + 40 * late**2) * np.exp(ar(0.2)),
            "val/num_eos_tokens": np.rint(np.clip(64 * (0.97 - 0.6 * late) + ar(2.0), 0, 64)),
            "lr": 3e-6 * (1 - (s - 1) / n),
            "episode": s * 64,
        }
        values = np.stack(list(metrics.values()), axis=1)
        return _conform("train_step", n, {
            "run_id": self.run_id, "algorithm": "ppo", "step": step,
            "metrics": _map(list(metrics), values, pl.Float64),
            "epoch": s * 64 / 10_000,  # 10k training prompts per epoch
        })

    def _hashes(self, stream: int, n: int) -> list[str]:
        raw = self._rng(stream).integers(0, 256, (n, 32), dtype=np.uint8)
        return ["sha256:" + row.tobytes().hex() for row in raw]  # one per checkpoint/dataset, not per event

    def _checkpoints(self) -> pl.DataFrame:
        n = self.n_ckpt
        steps = self.ckpt_steps[1:]
        names = self.model_names[1:]
        size = 988_097_824 + self._rng(41).integers(-4096, 4096, n) * 8
        return _conform("checkpoint", n, {
            "run_id": self.run_id, "step": steps,
            "uri": pl.Series([f"s3://rlhf-demo/{self.run_id}/{m}/" for m in names]),
            "content_hash": pl.Series(self._hashes(40, n)), "size_bytes": size,
            "base_model": BASELINE, "parent": pl.Series([BASELINE] + names[:-1]),
        })

    def _reward_blocks(self) -> Iterator[pl.DataFrame]:
        groups = self.n_ckpt + 1  # step 0 (the baseline) and every checkpoint
        base, extra = divmod(self.n_reward, groups)
        first = 0
        for g in range(groups):
            n = base + (g < extra)
            if n:
                yield self._reward_group(g, first, n)
            first += n

    def _reward_group(self, g: int, first: int, n: int) -> pl.DataFrame:
        rng = self._rng(50, g)
        step = int(self.ckpt_steps[g])
        _, lmean, _, _, score = self._curves(np.array([float(step)]))
        length = np.maximum(np.rint(lmean[0] * np.exp(rng.normal(0, 0.4, n))), 20).astype(np.int64)
        # The reward model likes length: that is the loophole the policy exploits.
        scores = score[0] + 0.0025 * (length - lmean[0]) + rng.normal(0, 0.8, n)
        prompt = rng.integers(0, self.n_prompts, n)
        sample = _ids(f"{self.run_id}/step-{step:06d}/sample-", np.arange(n), 6)
        return _conform("reward_score", n, {
            "reward_model": REWARD_MODEL, "reward_model_version": "v1", "sample_id": sample,
            "prompt_id": _ids("prompt-", prompt, 6), "score": scores, "run_id": self.run_id,
            "step": np.full(n, step, dtype=np.int64), "response_length": length,
        })

    # -- registrations and oversight -------------------------------------------------------------
    def _datasets(self) -> pl.DataFrame:
        c = self.counts()
        return _conform("dataset", 3, {
            "name": pl.Series(["demo-prompts", "demo-prefs", "demo-ratings"]),
            "version": pl.Series(["2024-03", "v1", "v1"]),
            "source": pl.Series([f"synthetic: rlhf_audit_kit.demo prompt templates (seed={self.seed})",
                                 "vendor export (vendor.example), pairwise preferences",
                                 "vendor export (vendor.example), 1-5 ratings"]),
            "license": pl.Series(["CC0-1.0", "CC-BY-4.0", "CC-BY-4.0"]),
            "row_count": pl.Series([self.n_prompts, c["annotation"], c["rating"]]),
            "content_hash": pl.Series(self._hashes(42, 3)),
            "description": pl.Series([
                "Prompt pool: coding, cooking, travel, health, math and writing requests.",
                f"Pairwise preferences, {self.overlap} annotators per pair, gold and repeated items.",
                "Helpfulness and honesty ratings of single responses.",
            ]),
        })

    def _oversight(self) -> pl.DataFrame:
        gt = self.ground_truth
        k_mid = max(1, _round(0.4 * self.n_ckpt))
        k_flag = min(self.n_ckpt, int(np.searchsorted(self.ckpt_steps, self.hack_step)) + 2)
        t = [0.002, self.guideline_fraction, self.ckpt_time[k_mid - 1] + 0.005,
             self.ckpt_time[k_flag - 1] + 0.01, 0.97, 0.975]
        healthy = gt["last_healthy_checkpoint"]
        rows = [
            # The schema's subjects are a seq, a run or a checkpoint, so campaign-level decisions
            # name the run they feed (seqs are only known once the store has assigned them).
            ("reviewer-01@lab.example", "approve", "data-lead", self.run_id, None,
             "Run plan, annotation guidelines v1.0 and vendor onboarding approved; the campaign may start."),
            ("reviewer-01@lab.example", "note", "data-lead", self.run_id, None,
             "Guidelines v1.1 rolled out: clarified when to mark a tie and not to reward length for its own sake."),
            ("reviewer-02@lab.example", "approve", "safety-reviewer", self.run_id, self.model_names[k_mid],
             "Mid-run review: win-rate against sft-baseline improving and KL within budget."),
            ("reviewer-02@lab.example", "flag", "safety-reviewer", self.run_id, self.model_names[k_flag],
             f"KL rising sharply and responses much longer since step {self.hack_step}, while the "
             "win-rate against sft-baseline has stopped improving: possible reward hacking."),
            ("reviewer-03@lab.example", "halt", "run-owner", self.run_id, self.model_names[-1],
             "Training halted pending a reward-model length-bias investigation."),
            ("reviewer-03@lab.example", "rollback", "run-owner", self.run_id, healthy,
             f"Rolled back to {healthy}, the last checkpoint before the KL and length excursion."),
        ]
        cols = list(zip(*rows))
        return _conform("oversight", len(rows), {
            "reviewer": pl.Series(cols[0]), "decision": pl.Series(cols[1]), "role": pl.Series(cols[2]),
            "subject_run": pl.Series(cols[3], dtype=pl.Utf8),
            "subject_checkpoint": pl.Series(cols[4], dtype=pl.Utf8),
            "reason": pl.Series(cols[5]), "decided_at": self._ts(np.array(t)),
        })


def campaign(size: int | str = "small", seed: int = 0, **options: Any) -> Campaign:
    """Make a :class:`Campaign`; ``size`` may be a name from :data:`SIZES` (``"tiny"`` = 1,000 events).

    >>> campaign("tiny").size
    1000
    """
    return Campaign(size, seed, **options)
